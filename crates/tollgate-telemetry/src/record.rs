//! The access record: one per request, whatever its fate.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Serialize, Serializer};

/// What became of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Proxied to an upstream (whatever the upstream answered).
    Allowed,
    /// Refused by a policy (auth, limits, …).
    Denied,
    /// The gateway could not serve it: no route, bad request, upstream failure.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

/// One request as it is written to every sink. Never holds a credential,
/// a cookie or a header value that could be one.
#[derive(Clone, Debug, Serialize)]
pub struct AccessRecord {
    /// When the request arrived; written as RFC 3339 UTC. Kept as a
    /// `SystemTime` so the hot path never formats a date: sinks do.
    #[serde(serialize_with = "rfc3339")]
    pub ts: SystemTime,
    pub request_id: String,
    pub client_ip: IpAddr,
    pub method: String,
    pub host: String,
    pub path: String,
    pub api: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    pub consumer: Option<Arc<str>>,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub upstream_addr: Option<Arc<str>>,
    pub latency_ms: f64,
    pub upstream_latency_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub outcome: Outcome,
    /// The error code when the gateway refused or failed the request.
    pub reason: Option<&'static str>,
}

/// Formats a time as RFC 3339 in UTC with microseconds, e.g. `2026-12-04T17:00:00.123456Z`.
pub fn format_rfc3339(ts: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(ts);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    dt.format(&format).unwrap_or_default()
}

fn rfc3339<S: Serializer>(ts: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339(*ts))
}
