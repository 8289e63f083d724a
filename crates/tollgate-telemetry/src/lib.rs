//! Tollgate's telemetry: the access record every request yields, the bounded
//! channel that carries records off the hot path to batched sinks, and metrics.
//!
//! Must never block or slow a request: a full channel drops the record and
//! counts it.

pub mod access_log;
pub mod metrics;
pub mod record;

pub use access_log::{AccessLog, FileSink, RecordSink};
pub use record::{AccessRecord, AiAttempt, AiUsage, Outcome};
