//! Prometheus metrics: the names Tollgate emits and the process-wide recorder
//! that renders them.
//!
//! The recorder has no HTTP listener of its own; the admin listener serves
//! [`render`] at `GET /metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Counter of finished requests; labels `api`, `status`.
pub const REQUESTS_TOTAL: &str = "tollgate_requests_total";
/// Histogram of request latency in seconds; label `api`.
pub const REQUEST_DURATION: &str = "tollgate_request_duration_seconds";
/// Gauge, 1 when an upstream target is healthy and 0 when not; labels `service`, `target`.
pub const UPSTREAM_HEALTHY: &str = "tollgate_upstream_target_healthy";
/// Gauge of open downstream connections.
pub const ACTIVE_CONNECTIONS: &str = "tollgate_active_connections";
/// Counter of access records dropped because the access log channel was full.
pub const ACCESS_LOG_DROPPED: &str = "tollgate_access_log_dropped_total";
/// Counter of failed access log batch writes; label `sink`.
pub const ACCESS_LOG_SINK_ERRORS: &str = "tollgate_access_log_sink_errors_total";

/// Counter of access records dropped because the PostgreSQL sink's spool
/// was at its bound (`storage.spool.max_size`) during an outage.
pub const ACCESS_SPOOL_DROPPED: &str = "tollgate_access_spool_dropped_total";
/// Gauge of the bytes in the PostgreSQL sink's spool on disk.
pub const ACCESS_SPOOL_BYTES: &str = "tollgate_access_spool_bytes";

/// Counts `records` dropped at the spool's bound ([`ACCESS_SPOOL_DROPPED`]).
pub fn count_access_spool_dropped(records: u64) {
    metrics::counter!(ACCESS_SPOOL_DROPPED).increment(records);
}

/// Sets the spool's size on disk ([`ACCESS_SPOOL_BYTES`]).
pub fn set_access_spool_bytes(bytes: u64) {
    metrics::gauge!(ACCESS_SPOOL_BYTES).set(bytes as f64);
}

/// Bucket bounds for every histogram whose name ends in `_seconds`.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often histogram storage is compacted when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the process-wide `metrics` recorder and
/// returns a handle to it. Idempotent: later calls return the same handle.
///
/// If another recorder was installed first, a warning is logged and the
/// returned handle renders only the metric descriptions.
pub fn install_prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
                .expect("SECONDS_BUCKETS is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if let Err(error) = metrics::set_global_recorder(recorder) {
                tracing::warn!(%error, "a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// The Prometheus text exposition of every metric recorded so far; empty
/// until [`install_prometheus`] has been called.
pub fn render() -> String {
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

fn describe() {
    metrics::describe_counter!(REQUESTS_TOTAL, "Requests finished, by API and status code.");
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time from request arrival to the end of the response, by API."
    );
    metrics::describe_gauge!(
        UPSTREAM_HEALTHY,
        "1 when the upstream target passes its health checks, else 0."
    );
    metrics::describe_gauge!(ACTIVE_CONNECTIONS, "Open downstream connections.");
    metrics::describe_counter!(
        ACCESS_LOG_DROPPED,
        "Access records dropped because the access log channel was full."
    );
    metrics::describe_counter!(
        ACCESS_LOG_SINK_ERRORS,
        "Access log batches an access log sink failed to write."
    );
    metrics::describe_counter!(
        ACCESS_SPOOL_DROPPED,
        "Access records dropped because the PostgreSQL outage spool was full."
    );
    metrics::describe_gauge!(
        ACCESS_SPOOL_BYTES,
        metrics::Unit::Bytes,
        "Bytes of access records in the PostgreSQL outage spool on disk."
    );
}

/// Histograms accumulate samples until rendered; without scrapes they would
/// grow without bound, so a small thread compacts them periodically.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("tollgate-metrics-upkeep".to_owned())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            handle.run_upkeep();
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "could not start the metrics upkeep thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent_and_render_shows_used_metrics() {
        let first = install_prometheus();
        let second = install_prometheus();

        metrics::counter!(REQUESTS_TOTAL, "api" => "orders", "status" => "200").increment(1);
        metrics::histogram!(REQUEST_DURATION, "api" => "orders").record(0.003);
        metrics::gauge!(UPSTREAM_HEALTHY, "service" => "orders", "target" => "10.0.0.1:80")
            .set(1.0);
        metrics::gauge!(ACTIVE_CONNECTIONS).increment(1.0);
        metrics::counter!(ACCESS_LOG_DROPPED).increment(0);

        let text = render();
        for name in [
            REQUESTS_TOTAL,
            UPSTREAM_HEALTHY,
            ACTIVE_CONNECTIONS,
            ACCESS_LOG_DROPPED,
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(
            text.contains(r#"tollgate_requests_total{api="orders",status="200"} "#),
            "{text}"
        );
        // `_seconds` histograms are rendered as histograms with our buckets.
        assert!(
            text.contains(r#"tollgate_request_duration_seconds_bucket{api="orders",le="0.0005"}"#),
            "{text}"
        );
        assert!(text.contains("# TYPE tollgate_request_duration_seconds histogram"));
        assert_eq!(first.render().is_empty(), second.render().is_empty());
    }
}
