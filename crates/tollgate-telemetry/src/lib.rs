//! tollgate-telemetry
