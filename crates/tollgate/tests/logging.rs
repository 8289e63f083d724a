//! The process's own log lines on stderr: `--log-format json` and the
//! human-readable default.

mod common;

use std::time::Duration;

use tollgate_testkit::serde_json::{self, Value};
use tollgate_testkit::{upstream, Gateway};

/// Starts a gateway with `args`, serves one request, stops it and returns its stderr.
async fn a_short_life(args: &[&str]) -> (Gateway, String) {
    let up = upstream::echo("a");
    let mut gw = common::gateway()
        .config(&common::simple(&[up.url()], "", ""))
        .args(args)
        .start()
        .await;
    let res = gw.client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}\n{}", gw.logs());
    let stderr = gw.stderr();
    (gw, stderr)
}

fn non_empty_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .collect()
}

#[tokio::test]
async fn json_log_format_writes_one_json_object_per_line() {
    let (gw, stderr) = a_short_life(&["--log-format", "json"]).await;
    let lines = non_empty_lines(&stderr);
    assert!(lines.len() >= 2, "too few log lines:\n{stderr}");
    let events: Vec<Value> = lines
        .iter()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"))
        })
        .collect();
    for event in &events {
        let level = event["level"].as_str().unwrap_or_default();
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
            "no level: {event}"
        );
        assert!(
            event["message"].is_string() || event["fields"].is_object(),
            "no message or fields: {event}"
        );
        assert!(event["timestamp"].is_string(), "no timestamp: {event}");
    }
    let message = |event: &Value| {
        event["message"]
            .as_str()
            .or_else(|| event["fields"]["message"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let listening = events
        .iter()
        .find(|e| message(e) == "tollgate listening")
        .unwrap_or_else(|| panic!("no `tollgate listening` line:\n{stderr}"));
    assert_eq!(listening["level"], "INFO");
    let proxy = listening["proxy"]
        .as_str()
        .or_else(|| listening["fields"]["proxy"].as_str());
    assert_eq!(
        proxy,
        Some(gw.proxy_addr().to_string().as_str()),
        "{listening}"
    );
    assert!(
        events.iter().any(|e| message(e) == "stopped"),
        "no `stopped` line:\n{stderr}"
    );
    assert!(
        gw.stdout().trim().is_empty(),
        "logs on stdout: {}",
        gw.stdout()
    );
}

#[tokio::test]
async fn the_default_log_format_is_human_readable() {
    let (gw, stderr) = a_short_life(&[]).await;
    let lines = non_empty_lines(&stderr);
    assert!(lines.len() >= 2, "too few log lines:\n{stderr}");
    for line in &lines {
        assert!(
            serde_json::from_str::<Value>(line).is_err(),
            "a JSON log line by default: {line}"
        );
    }
    let listening = lines
        .iter()
        .find(|line| line.contains("tollgate listening"))
        .unwrap_or_else(|| panic!("no `tollgate listening` line:\n{stderr}"));
    assert!(listening.contains("INFO"), "{listening}");
    assert!(
        listening.contains(&gw.proxy_addr().to_string()),
        "{listening}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI colours in a log written to a file:\n{stderr}"
    );
    assert!(
        gw.stdout().trim().is_empty(),
        "logs on stdout: {}",
        gw.stdout()
    );
}
