//! The command line: `version`, `validate`, the quickstart example as shipped,
//! and `serve` finding its configuration in the working directory.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tollgate_testkit::reqwest;
use tollgate_testkit::serde_json::Value;
use tollgate_testkit::{eventually, port, upstream};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn quickstart_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart.yaml")
}

fn tollgate(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run the tollgate binary")
}

/// `tollgate validate` on `yaml`: exit code and stderr lines, trimmed.
fn validate(yaml: &str) -> (Option<i32>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = tollgate(&["validate", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code(),
        stderr.lines().map(|l| l.trim().to_owned()).collect(),
    )
}

#[test]
fn version_prints_the_version() {
    let out = tollgate(&["version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("tollgate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_quickstart_example_is_valid() {
    let out = tollgate(&["validate", quickstart_path().to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok (1 services, 1 apis)"), "{stdout}");
}

#[test]
fn validate_lists_every_semantic_error_with_its_path() {
    let (code, lines) = validate(
        r#"
services:
  - name: orders
    upstream: { targets: [{ url: "http://127.0.0.1:9001", weight: 0 }] }
apis:
  - { name: a, service: orders, match: { paths: [/a] } }
  - { name: b, service: payments, match: { paths: [/b] } }
  - { name: c, service: orders, match: { paths: [orders], methods: [get] } }
"#,
    );
    assert_eq!(code, Some(1), "{lines:#?}");
    assert!(lines[0].ends_with("4 error(s)"), "{lines:#?}");
    for expected in [
        "services[0].upstream.targets[0].weight: must be at least 1",
        "apis[1].service: no service named `payments`",
        "apis[2].match.paths[0]: must start with '/'",
    ] {
        assert!(
            lines.iter().any(|l| l == expected),
            "missing `{expected}` in {lines:#?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("apis[2].match.methods[0]: `get` is not a method")),
        "{lines:#?}"
    );
}

#[test]
fn validate_stops_at_the_first_structural_error() {
    // An unknown field; the bad path and the missing service are not reached.
    let (code, lines) = validate(
        "services:\n  - name: orders\n    upstrem: { targets: [] }\napis:\n  - { name: a, service: nope, match: { paths: [x] } }\n",
    );
    assert_eq!(code, Some(1), "{lines:#?}");
    assert!(lines[0].ends_with("1 error(s)"), "{lines:#?}");
    assert!(
        lines[1].starts_with("services[0]") && lines[1].contains("unknown field `upstrem`"),
        "{lines:#?}"
    );

    // A bad duration.
    let (code, lines) = validate(
        "services:\n  - name: orders\n    upstream: { targets: [{ url: 'http://127.0.0.1:1' }], timeouts: { connect: 2 parsecs } }\n",
    );
    assert_eq!(code, Some(1), "{lines:#?}");
    assert!(lines[0].ends_with("1 error(s)"), "{lines:#?}");
    assert!(
        lines[1].starts_with("services[0].upstream.timeouts.connect: "),
        "{lines:#?}"
    );

    // A missing file.
    let out = tollgate(&["validate", "/nonexistent/tollgate.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[tokio::test]
async fn the_quickstart_behaves_as_described() {
    let one = upstream::echo("one");
    let two = upstream::echo("two");
    let data = tempfile::tempdir().unwrap();
    let listen = port::free_addrs(2);
    let text = std::fs::read_to_string(quickstart_path()).unwrap();
    let mut config = text.clone();
    for (from, to) in [
        ("127.0.0.1:8000", listen[0].to_string()),
        ("127.0.0.1:8001", listen[1].to_string()),
        ("127.0.0.1:9001", one.addr().to_string()),
        ("127.0.0.1:9002", two.addr().to_string()),
        ("tollgate-data", data.path().display().to_string()),
    ] {
        assert!(config.contains(from), "the quickstart no longer has {from}");
        config = config.replace(from, &to);
    }
    let gw = common::gateway().config(&config).start().await;
    assert_eq!(gw.proxy_addr(), listen[0]);
    assert_eq!(gw.admin_addr(), listen[1]);
    let client = gw.client();
    let get = |path: &str, host: &str| {
        client
            .get(gw.url(path))
            .header("host", host.to_owned())
            .send()
    };

    let res = get("/orders/42", "api.example.com").await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["path"], "/42", "{body}");
    assert_eq!(body["method"], "GET");

    let res = get("/orders/7", "x.example.org").await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["path"], "/7", "{body}");

    let res = get("/orders/42", "example.org").await.unwrap();
    assert_eq!(res.status(), 404);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_route", "{body}");

    let res = client
        .delete(gw.url("/orders/42"))
        .header("host", "api.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, POST");

    // Weights 1 and 2, round robin: exactly 10 and 20 of 30 in a row.
    let mut counts: HashMap<String, usize> = HashMap::new();
    for n in 0..30 {
        let res = get(&format!("/orders/{n}"), "api.example.com")
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        *counts
            .entry(body["upstream"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(counts.get("one"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("two"), Some(&20), "{counts:?}");

    let records = gw.wait_for_records(34, Duration::from_secs(5)).await;
    assert_eq!(records.len(), 34, "{records:#?}");
    assert!(data.path().join("access.log").exists());
    assert!(data.path().join("tollgate.db").exists());
    assert_eq!(records[0]["api"], "orders-v1");
    assert_eq!(records[0]["service"], "orders");
    assert_eq!(records[0]["host"], "api.example.com");
    assert_eq!(records[0]["path"], "/orders/42");
    assert_eq!(records[2]["reason"], "no_route");
    assert_eq!(records[3]["reason"], "method_not_allowed");
}

/// A `tollgate serve` process with no `--config`, run in `dir`; killed on drop.
struct ServeInDir {
    child: tokio::process::Child,
    admin: SocketAddr,
    logs: PathBuf,
}

impl ServeInDir {
    async fn start(dir: &Path, admin: SocketAddr) -> ServeInDir {
        let logs = dir.join("stderr.log");
        let child = tokio::process::Command::new(BIN)
            .arg("serve")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&logs).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start tollgate serve");
        let mut serve = ServeInDir { child, admin, logs };
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let readyz = format!("http://{}/readyz", serve.admin);
        eventually(Duration::from_secs(10), || async {
            client
                .get(&readyz)
                .send()
                .await
                .is_ok_and(|res| res.status() == 200)
        })
        .await;
        assert!(
            serve.child.try_wait().unwrap().is_none(),
            "{}",
            serve.logs()
        );
        serve
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.logs).unwrap_or_default()
    }

    /// SIGTERM, then the exit code.
    async fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().expect("still running");
        let killed = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit within 5s after SIGTERM\n{}", self.logs()))
            .unwrap();
        status.code()
    }
}

fn port_is_free(addr: &str) -> bool {
    TcpListener::bind(addr).is_ok()
}

#[tokio::test]
async fn serve_without_a_config_starts_with_defaults() {
    let busy: Vec<&str> = ["127.0.0.1:8000", "127.0.0.1:8001"]
        .into_iter()
        .filter(|addr| !port_is_free(addr))
        .collect();
    if !busy.is_empty() {
        eprintln!("skipped: the default addresses {busy:?} are in use on this machine");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeInDir::start(dir.path(), "127.0.0.1:8001".parse().unwrap()).await;

    let res = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get("http://127.0.0.1:8000/anything")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_route", "{body}");
    assert!(
        dir.path().join("tollgate-data/tollgate.db").exists(),
        "the default database is ./tollgate-data/tollgate.db"
    );
    let logs = serve.logs();
    assert!(logs.contains("starting with defaults"), "{logs}");
    assert_eq!(serve.terminate().await, Some(0));
}

#[tokio::test]
async fn serve_reads_tollgate_yaml_in_the_working_directory() {
    let a = upstream::echo("a");
    let dir = tempfile::tempdir().unwrap();
    let listen = port::free_addrs(2);
    std::fs::write(
        dir.path().join("tollgate.yaml"),
        format!(
            "listen: {{ proxy: '{}', admin: '{}' }}\nservices: [{{ name: a, upstream: {{ targets: [{{ url: '{}' }}] }} }}]\napis: [{{ name: a, service: a, match: {{ paths: [/] }} }}]\n",
            listen[0],
            listen[1],
            a.url()
        ),
    )
    .unwrap();
    let serve = ServeInDir::start(dir.path(), listen[1]).await;

    let res = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{}/hello", listen[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["upstream"], "a");
    assert_eq!(body["path"], "/hello");
    assert!(dir.path().join("tollgate-data/tollgate.db").exists());
    assert_eq!(serve.terminate().await, Some(0));
}

#[test]
fn validate_compiles_policies_and_names_the_field_of_a_bad_schema() {
    let (code, lines) = validate(
        r#"
services:
  - name: orders
    upstream: { targets: [{ url: "http://127.0.0.1:9001" }] }
apis:
  - name: orders-v1
    service: orders
    match: { paths: [/orders] }
    policies:
      validate: { json_schema: { type: objekt } }
"#,
    );
    assert_eq!(code, Some(1), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("apis[0].policies.validate.json_schema: ")),
        "{lines:#?}"
    );
}

#[test]
fn a_bad_global_schema_is_reported_once_at_its_own_path() {
    let (code, lines) = validate(
        r#"
policies:
  validate: { json_schema: { type: objekt } }
services:
  - name: orders
    upstream: { targets: [{ url: "http://127.0.0.1:9001" }] }
apis:
  - { name: a, service: orders, match: { paths: [/a] } }
  - { name: b, service: orders, match: { paths: [/b] } }
"#,
    );
    assert_eq!(code, Some(1), "{lines:#?}");
    let schema_errors: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("validate.json_schema"))
        .collect();
    assert_eq!(schema_errors.len(), 1, "{lines:#?}");
    assert!(
        schema_errors[0].starts_with("policies.validate.json_schema: "),
        "{lines:#?}"
    );
}
