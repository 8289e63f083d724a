//! Compliance checks end to end: `GET /admin/v1/compliance` on a running
//! gateway (with the store-backed `consumer_inactive`), and `tollgate audit
//! FILE` offline, its exit codes and JSON.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use tollgate_testkit::serde_json::Value;
use tollgate_testkit::{eventually, upstream, Gateway};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
const BETA_KEY: &str = "tg_beta_key_from_the_environment_0123";
const LITERAL_KEY: &str = "tg_alpha_literal_key_0123456789abcdef";
const WEAK_SECRET: &str = "short-hmac-secret";

/// Every check fires once, and `orders-v1` (with `beta`, who calls it) is clean.
fn config(upstream: &str) -> String {
    format!(
        r#"
identity_providers:
  - {{ name: weak-idp, secret: env:WEAK_SECRET }}
consumers:
  - {{ name: alpha, keys: [{{ value: "{LITERAL_KEY}" }}] }}
  - {{ name: beta, keys: [{{ value: env:BETA_KEY, expires: "2099-01-01T00:00:00Z" }}] }}
  - name: gamma
    keys: [{{ hash: "sha256:0000000000000000000000000000000000000000000000000000000000000000", expires: "2020-01-01T00:00:00Z" }}]
services:
  - name: orders
    upstream: {{ targets: [{{ url: "{upstream}" }}] }}
  - name: legacy
    upstream: {{ targets: [{{ url: "http://10.255.255.1:8080" }}] }}
apis:
  - name: orders-v1
    service: orders
    match: {{ paths: [/orders] }}
    policies:
      auth: {{ methods: [key] }}
      rate_limit: [{{ limit: 100, window: 1s }}]
      cors: {{ origins: ["https://app.example.com"] }}
  - name: public
    service: orders
    match: {{ paths: [/public] }}
  - name: widgets
    service: legacy
    match: {{ paths: [/widgets] }}
    policies:
      auth: {{ methods: [key] }}
      cors: {{ origins: ["*"] }}
"#
    )
}

/// (id, severity, resource) of every finding the configuration above has,
/// worst first, then by resource.
const STATIC_FINDINGS: &[(&str, &str, &str)] = &[
    ("api_without_auth", "high", "apis/public"),
    ("hs_secret_too_short", "high", "identity_providers/weak-idp"),
    ("cors_wildcard_with_auth", "medium", "apis/widgets"),
    ("key_without_expiry", "medium", "consumers/alpha"),
    ("plain_http_upstream", "medium", "services/legacy"),
    ("no_rate_limit_on_authenticated_api", "low", "apis/widgets"),
    ("literal_secret_in_config", "low", "consumers/alpha"),
    ("key_expired_still_configured", "low", "consumers/gamma"),
];

fn triples(report: &Value) -> Vec<(String, String, String)> {
    report["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("no findings array: {report}"))
        .iter()
        .map(|f| {
            let field = |name: &str| f[name].as_str().unwrap_or_default().to_string();
            (field("id"), field("severity"), field("resource"))
        })
        .collect()
}

fn expected(extra: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    let mut all: Vec<(String, String, String)> = STATIC_FINDINGS
        .iter()
        .chain(extra)
        .map(|(id, severity, resource)| {
            (id.to_string(), severity.to_string(), resource.to_string())
        })
        .collect();
    let rank = |severity: &str| {
        ["critical", "high", "medium", "low"]
            .iter()
            .position(|s| *s == severity)
    };
    all.sort_by(|a, b| {
        rank(&a.1)
            .cmp(&rank(&b.1))
            .then_with(|| a.2.cmp(&b.2))
            .then_with(|| a.0.cmp(&b.0))
    });
    all
}

async fn admin_get(gw: &Gateway, path: &str) -> (u16, Value) {
    let res = gw
        .client()
        .get(format!("{}{path}", gw.admin_url()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn the_endpoint_reports_every_check_and_consumer_activity() {
    let up = upstream::echo("u");
    let gw = common::gateway()
        .config(&config(&up.url()))
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("BETA_KEY", BETA_KEY)
        .env("WEAK_SECRET", WEAK_SECRET)
        .start()
        .await;

    // Nobody has called yet: every consumer is inactive.
    let (status, report) = admin_get(&gw, "/admin/v1/compliance").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        triples(&report),
        expected(&[
            ("consumer_inactive", "low", "consumers/alpha"),
            ("consumer_inactive", "low", "consumers/beta"),
            ("consumer_inactive", "low", "consumers/gamma"),
        ]),
        "{report:#}"
    );
    assert_eq!(
        report["counts"],
        tollgate_testkit::serde_json::json!({ "critical": 0, "high": 2, "medium": 3, "low": 6 })
    );
    let inactive = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "consumer_inactive")
        .unwrap();
    assert!(
        inactive["message"].as_str().unwrap().contains("90 days"),
        "{inactive}"
    );

    // beta calls the clean API and stops being inactive.
    let res = gw
        .client()
        .get(gw.url("/orders"))
        .header("x-api-key", BETA_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    eventually(Duration::from_secs(5), || async {
        let (_, report) = admin_get(&gw, "/admin/v1/compliance?inactive_days=30").await;
        !triples(&report)
            .iter()
            .any(|(_, _, r)| r == "consumers/beta")
    })
    .await;
    let (status, report) = admin_get(&gw, "/admin/v1/compliance?inactive_days=30").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        triples(&report),
        expected(&[
            ("consumer_inactive", "low", "consumers/alpha"),
            ("consumer_inactive", "low", "consumers/gamma"),
        ]),
        "{report:#}"
    );
    assert!(
        report.to_string().contains("30 days"),
        "the threshold is the one asked for: {report}"
    );
    assert!(!triples(&report)
        .iter()
        .any(|(_, _, r)| r == "apis/orders-v1"));

    // No secret is repeated.
    let text = report.to_string();
    for secret in [LITERAL_KEY, BETA_KEY, WEAK_SECRET, ADMIN_TOKEN] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }

    for bad in [
        "?inactive_days=0",
        "?inactive_days=soon",
        "?max_key_age_days=0",
        "?max_token_age_days=0",
        "?colour=blue",
    ] {
        let (status, body) = admin_get(&gw, &format!("/admin/v1/compliance{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{body}");
        assert!(body["error"]["request_id"].is_string(), "{body}");
    }
    let res = gw
        .client()
        .get(format!("{}/admin/v1/compliance", gw.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

/// `tollgate audit FILE ARGS…` with the variables the configuration names.
fn audit(yaml: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, yaml).unwrap();
    run_audit(&file, args)
}

fn run_audit(file: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("audit")
        .arg(file)
        .args(args)
        .env("BETA_KEY", BETA_KEY)
        .env("WEAK_SECRET", WEAK_SECRET)
        .output()
        .expect("run the tollgate binary")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn audit_checks_a_file_offline_and_fails_at_the_chosen_severity() {
    let yaml = config("http://127.0.0.1:9");

    // Two high findings: the default --fail-on high fails.
    let out = audit(&yaml, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.lines()
            .next()
            .unwrap()
            .ends_with("8 finding(s): 0 critical, 2 high, 3 medium, 3 low"),
        "{text}"
    );
    assert!(text.contains("apis/public  api_without_auth: "), "{text}");
    for secret in [LITERAL_KEY, BETA_KEY, WEAK_SECRET] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let out = audit(&yaml, &["--fail-on", "critical"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    // JSON: the endpoint's shape, without the store-backed check.
    let out = audit(&yaml, &["--format", "json", "--fail-on", "critical"]);
    assert_eq!(out.status.code(), Some(0));
    let report: Value = tollgate_testkit::serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(triples(&report), expected(&[]), "{report:#}");
    assert_eq!(report["counts"]["high"], 2);
    assert_eq!(report["counts"]["critical"], 0);
}

#[test]
fn a_clean_file_passes_even_at_low_and_an_invalid_one_is_exit_2() {
    let clean = r#"
consumers:
  - { name: beta, keys: [{ value: env:BETA_KEY, expires: "2099-01-01T00:00:00Z" }] }
services:
  - name: orders
    upstream: { targets: [{ url: "http://localhost:9000" }, { url: "https://orders.example.com" }] }
apis:
  - name: orders-v1
    service: orders
    match: { paths: [/orders] }
    policies: { auth: { methods: [key] }, rate_limit: [{ limit: 10, window: 1s }] }
"#;
    let out = audit(clean, &["--fail-on", "low"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("0 finding(s)"), "{}", stdout(&out));
    let out = audit(clean, &["--format", "json", "--fail-on", "low"]);
    let report: Value = tollgate_testkit::serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["findings"], tollgate_testkit::serde_json::json!([]));

    // A file that does not validate is not audited.
    let out = audit(
        "apis:\n  - { name: a, service: nope, match: { paths: [/] } }\n",
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no service named `nope`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_audit(Path::new("/nonexistent/tollgate.yaml"), &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = audit(clean, &["--fail-on", "severe"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap refuses an unknown severity"
    );
}
