//! Upstream failures, retries, timeouts, health checks and the records they leave.

mod common;

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;
use tollgate_testkit::reqwest::{self, StatusCode};
use tollgate_testkit::serde_json::Value;
use tollgate_testkit::{eventually, upstream, Gateway};

const RECORDS: Duration = Duration::from_secs(5);

/// Checks a JSON error answer and returns its code.
async fn error_code(res: reqwest::Response, status: StatusCode) -> String {
    assert_eq!(res.status(), status);
    assert_eq!(res.headers()["content-type"], "application/json");
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["request_id"], request_id.as_str(), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    body["error"]["code"].as_str().unwrap().to_string()
}

/// A record of a request the gateway answered itself.
fn assert_error_record(record: &Value, status: u16, reason: &str) {
    assert_eq!(record["status"], status, "{record}");
    assert_eq!(record["outcome"], "error", "{record}");
    assert_eq!(record["reason"], reason, "{record}");
    assert_eq!(record["upstream_status"], Value::Null, "{record}");
    assert_eq!(record["api"], "api", "{record}");
    assert_eq!(record["service"], "svc", "{record}");
}

/// A record of a request proxied to `upstream_addr`.
fn assert_proxied_record(record: &Value, status: u16, upstream_addr: &str) {
    assert_eq!(record["status"], status, "{record}");
    assert_eq!(record["upstream_status"], status, "{record}");
    assert_eq!(record["outcome"], "allowed", "{record}");
    assert_eq!(record["reason"], Value::Null, "{record}");
    assert_eq!(record["upstream_addr"], upstream_addr, "{record}");
    assert!(record["upstream_latency_ms"].is_number(), "{record}");
}

/// Waits for `n` records and checks that no more than `n` were written.
async fn exactly_records(gw: &Gateway, n: usize) -> Vec<Value> {
    let records = gw.wait_for_records(n, RECORDS).await;
    assert_eq!(records.len(), n, "{records:#?}");
    records
}

/// The value of `tollgate_upstream_target_healthy` for `target`, if exported.
fn target_healthy(metrics: &str, target: &str) -> Option<f64> {
    let label = format!("target=\"{target}\"");
    metrics
        .lines()
        .filter(|line| {
            line.starts_with("tollgate_upstream_target_healthy{") && line.contains(&label)
        })
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn upstream_down_is_a_json_502() {
    let down = format!("http://{}", upstream::closed_port());
    let gw = common::gateway()
        .config(&common::simple(&[down], "", ""))
        .start()
        .await;
    let res = gw.client().get(gw.url("/a")).send().await.unwrap();
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(
        error_code(res, StatusCode::BAD_GATEWAY).await,
        "upstream_unavailable"
    );

    let records = exactly_records(&gw, 1).await;
    assert_error_record(&records[0], 502, "upstream_unavailable");
    assert_eq!(records[0]["request_id"], request_id.as_str());
}

#[tokio::test]
async fn connect_failures_are_retried_for_gets_but_not_for_bodies() {
    let echo = upstream::echo("echo");
    let down = format!("http://{}", upstream::closed_port());
    // Passive ejection is out of the way so the down target stays in rotation.
    let config = common::simple(
        &[down, echo.url()],
        "",
        ", retries: 1, passive_health: { failures: 1000, cooldown: 1s }",
    );
    let gw = common::gateway().config(&config).start().await;
    let client = gw.client();
    for i in 0..10 {
        let res = client
            .get(gw.url(&format!("/get/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            200,
            "GET {i} was not retried on the other target"
        );
    }
    assert_eq!(echo.hits(), 10);

    let mut failed = 0;
    for i in 0..4 {
        let res = client
            .post(gw.url(&format!("/post/{i}")))
            .body("a body that cannot be replayed")
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            continue;
        }
        assert_eq!(
            error_code(res, StatusCode::BAD_GATEWAY).await,
            "upstream_unavailable"
        );
        failed += 1;
    }
    // Round robin alternates: half the POSTs meet the down target and are not retried.
    assert_eq!(failed, 2, "POSTs with a body were retried");
    assert_eq!(echo.hits(), 12);

    let records = exactly_records(&gw, 14).await;
    let echo_addr = echo.addr().to_string();
    for record in &records[..10] {
        assert_proxied_record(record, 200, &echo_addr);
    }
    let errors: Vec<&Value> = records[10..]
        .iter()
        .filter(|r| r["status"] != 200)
        .collect();
    assert_eq!(errors.len(), 2);
    for record in errors {
        assert_error_record(record, 502, "upstream_unavailable");
        assert_eq!(record["method"], "POST");
    }
}

#[tokio::test]
async fn a_slow_upstream_times_out_with_504() {
    let slow = upstream::slow(Duration::from_secs(3));
    let config = common::simple(&[slow.url()], "", ", timeouts: { response: 500ms }");
    let gw = common::gateway().config(&config).start().await;
    let started = Instant::now();
    let res = gw.client().get(gw.url("/slow")).send().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(
        error_code(res, StatusCode::GATEWAY_TIMEOUT).await,
        "upstream_timeout"
    );
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(2500),
        "answered after {elapsed:?}"
    );

    let records = exactly_records(&gw, 1).await;
    assert_error_record(&records[0], 504, "upstream_timeout");
    assert_eq!(
        records[0]["upstream_addr"],
        slow.addr().to_string().as_str()
    );
}

#[tokio::test]
async fn a_resetting_upstream_is_a_502() {
    let reset = upstream::reset();
    let gw = common::gateway()
        .config(&common::simple(&[reset.url()], "", ""))
        .start()
        .await;
    let res = gw.client().get(gw.url("/r")).send().await.unwrap();
    let code = error_code(res, StatusCode::BAD_GATEWAY).await;
    assert!(
        code == "upstream_error" || code == "upstream_unavailable",
        "code {code}"
    );
    assert!(reset.hits() >= 1, "the upstream was never reached");

    let records = exactly_records(&gw, 1).await;
    assert_error_record(&records[0], 502, &code);
}

#[tokio::test]
async fn active_health_checks_take_a_target_out_and_back() {
    let a = upstream::echo("a");
    let b = upstream::echo("b");
    let config = common::simple(
        &[a.url(), b.url()],
        "",
        ", health_check: { path: /healthz, interval: 200ms, unhealthy_after: 2, healthy_after: 2 }",
    );
    let gw = common::gateway().config(&config).start().await;
    let client = gw.client();
    let get = || async {
        let res = client.get(gw.url("/")).send().await.unwrap();
        assert_eq!(res.status(), 200);
    };
    for _ in 0..4 {
        get().await;
    }
    assert_eq!(a.hits(), 2);
    assert_eq!(b.hits(), 2);
    eventually(Duration::from_secs(5), || async { b.health_checks() >= 2 }).await;

    b.set_healthy(false);
    // Out of rotation once a few requests in a row skip it.
    eventually(Duration::from_secs(5), || async {
        let before = b.hits();
        for _ in 0..4 {
            get().await;
        }
        b.hits() == before
    })
    .await;
    let before = b.hits();
    for _ in 0..10 {
        get().await;
    }
    assert_eq!(b.hits(), before, "an unhealthy target got traffic");

    let metrics = gw.metrics().await;
    assert_eq!(target_healthy(&metrics, &b.url()), Some(0.0), "{metrics}");
    assert_eq!(target_healthy(&metrics, &a.url()), Some(1.0), "{metrics}");

    b.set_healthy(true);
    eventually(Duration::from_secs(5), || async {
        let before = b.hits();
        get().await;
        get().await;
        b.hits() > before
    })
    .await;
    let metrics = gw.metrics().await;
    assert_eq!(target_healthy(&metrics, &b.url()), Some(1.0), "{metrics}");

    // Health probes are not requests: one record per proxied request only.
    let proxied = (a.hits() + b.hits()) as usize;
    let records = exactly_records(&gw, proxied).await;
    assert!(records
        .iter()
        .all(|r| r["status"] == 200 && r["upstream_status"] == 200));
}

#[tokio::test]
async fn passive_ejection_after_one_failure() {
    let echo = upstream::echo("echo");
    let down = format!("http://{}", upstream::closed_port());
    let config = common::simple(
        &[down, echo.url()],
        "",
        ", passive_health: { failures: 1, cooldown: 30s }",
    );
    let gw = common::gateway().config(&config).start().await;
    let client = gw.client();
    // Round robin sends one of the first two requests to the down target.
    let mut failures = 0;
    for _ in 0..2 {
        let res = client.get(gw.url("/")).send().await.unwrap();
        if res.status() != 200 {
            assert_eq!(
                error_code(res, StatusCode::BAD_GATEWAY).await,
                "upstream_unavailable"
            );
            failures += 1;
        }
    }
    assert_eq!(failures, 1);
    for i in 0..10 {
        let res = client.get(gw.url("/")).send().await.unwrap();
        assert_eq!(res.status(), 200, "request {i} after the ejection");
    }
    assert_eq!(echo.hits(), 11);

    let records = exactly_records(&gw, 12).await;
    let failed: Vec<&Value> = records.iter().filter(|r| r["status"] != 200).collect();
    assert_eq!(failed.len(), 1);
    assert_error_record(failed[0], 502, "upstream_unavailable");
}

/// The files in `dir` a record may have been written to: the access log and the database.
fn record_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("access") || name.starts_with("tollgate.db") {
            files.push((name, std::fs::read(entry.path()).unwrap()));
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn records_never_hold_credentials() {
    let echo = upstream::echo("echo");
    let down = format!("http://{}", upstream::closed_port());
    let config = format!(
        r#"
services:
  - {{ name: svc, upstream: {{ targets: [{{ url: '{}' }}] }} }}
  - {{ name: down, upstream: {{ targets: [{{ url: '{down}' }}] }} }}
apis:
  - {{ name: api, service: svc, match: {{ paths: [/ok] }} }}
  - {{ name: down, service: down, match: {{ paths: [/down] }} }}
"#,
        echo.url()
    );
    let gw = common::gateway().config(&config).start().await;
    let secret = format!(
        "s3cret{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let client = gw.client();
    let mut last_request_id = String::new();
    for path in ["/ok/a", "/down/b", "/nowhere"] {
        let res = client
            .get(gw.url(&format!("{path}?api_key={secret}&page=2")))
            .header("authorization", format!("Bearer {secret}"))
            .header("cookie", format!("session={secret}; theme=dark"))
            .header("x-api-key", secret.as_str())
            .send()
            .await
            .unwrap();
        last_request_id = res.headers()["x-request-id"].to_str().unwrap().to_string();
        let _ = res.bytes().await.unwrap();
    }
    let doc: Value = client
        .get(gw.url(&format!("/ok/c?api_key={secret}")))
        .basic_auth("user", Some(&secret))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["headers"]["authorization"].is_string(),
        "the upstream gets the client's credentials"
    );

    let records = exactly_records(&gw, 4).await;
    assert_eq!(records[0]["status"], 200);
    assert_eq!(records[0]["outcome"], "allowed");
    assert_eq!(records[1]["reason"], "upstream_unavailable");
    assert_eq!(records[2]["reason"], "no_route");
    assert_eq!(records[2]["outcome"], "error");
    for record in &records {
        assert!(!record.to_string().contains(&secret), "{record}");
    }
    // The database has them too (a control that the search below sees records at all).
    eventually(Duration::from_secs(5), || async {
        record_files(gw.dir()).iter().any(|(name, bytes)| {
            name.starts_with("tollgate.db") && contains(bytes, &last_request_id)
        })
    })
    .await;
    for (name, bytes) in record_files(gw.dir()) {
        assert!(!contains(&bytes, &secret), "{name} holds a credential");
    }
}
