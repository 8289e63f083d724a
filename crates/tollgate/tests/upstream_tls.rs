//! `https://` upstream targets (CA files, ALPN, certificate failures) and
//! gRPC-style response trailers over HTTP/2.

mod common;

use std::path::Path;
use std::time::Duration;

use tollgate_testkit::http_body_util::BodyExt;
use tollgate_testkit::reqwest::{self, StatusCode};
use tollgate_testkit::serde_json::Value;
use tollgate_testkit::{body, eventually, h2, http, tls, upstream, Gateway};

const RECORDS: Duration = Duration::from_secs(5);

/// One service per `(name, url, ca, protocol)`, each behind an API on `/NAME`.
fn services(entries: &[(&str, &str, Option<&Path>, &str)]) -> String {
    let mut yaml = String::from("services:\n");
    for (name, url, ca, protocol) in entries {
        let ca = ca.map_or(String::new(), |ca| format!(", ca: '{}'", ca.display()));
        yaml.push_str(&format!(
            "  - {{ name: {name}, upstream: {{ targets: [{{ url: '{url}'{ca} }}], protocol: {protocol} }} }}\n"
        ));
    }
    yaml.push_str("apis:\n");
    for (name, ..) in entries {
        yaml.push_str(&format!(
            "  - {{ name: {name}, service: {name}, match: {{ paths: [/{name}] }} }}\n"
        ));
    }
    yaml
}

/// Checks a JSON error answer and returns its code.
async fn error_code(res: reqwest::Response, status: StatusCode) -> String {
    assert_eq!(res.status(), status);
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    body["error"]["code"].as_str().unwrap().to_string()
}

/// GETs `path` and returns the upstream's echo JSON, checking for a 200.
async fn echo(gw: &Gateway, path: &str) -> Value {
    let res = gw.client().get(gw.url(path)).send().await.unwrap();
    assert_eq!(res.status(), 200, "GET {path}\n{}", gw.logs());
    res.json().await.unwrap()
}

#[tokio::test]
async fn https_targets_verified_against_a_ca_file_by_alpn() {
    let cert = tls::self_signed(&["localhost"]);
    let up = upstream::tls_echo("secure", &cert, &["h2", "http/1.1"]);
    let url = up.url();
    assert!(url.starts_with("https://localhost:"), "{url}");
    let ca = Some(cert.cert_pem_path.as_path());
    let gw = common::gateway()
        .config(&services(&[
            ("auto", &url, ca, "auto"),
            ("h1", &url, ca, "http1"),
            ("h2", &url, ca, "http2"),
        ]))
        .start()
        .await;

    // auto: the upstream offers h2 by ALPN, so the gateway speaks HTTP/2.
    let doc = echo(&gw, "/auto/x?q=1").await;
    assert_eq!(doc["upstream"], "secure");
    assert_eq!(doc["version"], "HTTP/2.0");
    assert_eq!(doc["path"], "/auto/x");
    assert_eq!(doc["query"], "q=1");
    assert_eq!(doc["headers"]["x-forwarded-proto"], "http");
    let res = gw
        .client()
        .post(gw.url("/auto/upload"))
        .body("through TLS and HTTP/2")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["version"], "HTTP/2.0");
    assert_eq!(doc["body"], "through TLS and HTTP/2");

    // http1: ALPN offers only http/1.1.
    let doc = echo(&gw, "/h1/y").await;
    assert_eq!(doc["version"], "HTTP/1.1");
    assert_eq!(doc["headers"]["host"], url.trim_start_matches("https://"));

    // http2 over TLS: h2 by ALPN.
    let doc = echo(&gw, "/h2/z").await;
    assert_eq!(doc["version"], "HTTP/2.0");

    assert_eq!(up.hits(), 4);
    assert_eq!(up.tls_handshake_failures(), 0);
    let records = gw.wait_for_records(4, RECORDS).await;
    let authority = url.trim_start_matches("https://");
    for record in &records {
        assert_eq!(record["status"], 200, "{record}");
        assert_eq!(record["upstream_status"], 200, "{record}");
        assert_eq!(record["outcome"], "allowed", "{record}");
        assert_eq!(record["upstream_addr"], authority, "{record}");
    }
}

#[tokio::test]
async fn an_auto_target_offering_only_http1_gets_http1() {
    let cert = tls::self_signed(&["localhost"]);
    let up = upstream::tls_echo("old", &cert, &["http/1.1"]);
    let gw = common::gateway()
        .config(&services(&[(
            "auto",
            &up.url(),
            Some(&cert.cert_pem_path),
            "auto",
        )]))
        .start()
        .await;
    let doc = echo(&gw, "/auto").await;
    assert_eq!(doc["upstream"], "old");
    assert_eq!(doc["version"], "HTTP/1.1");
}

#[tokio::test]
async fn an_untrusted_upstream_certificate_is_a_502() {
    let cert = tls::self_signed(&["localhost"]);
    let stranger = tls::self_signed(&["localhost"]);
    let up = upstream::tls_echo("secure", &cert, &["h2", "http/1.1"]);
    let url = up.url();
    let gw = common::gateway()
        .config(&services(&[
            // Only the system roots: a self-signed certificate is not among them.
            ("roots", &url, None, "auto"),
            // A CA file holding another self-signed certificate.
            ("wrong", &url, Some(&stranger.cert_pem_path), "auto"),
        ]))
        .start()
        .await;

    for path in ["/roots", "/wrong"] {
        let res = gw.client().get(gw.url(path)).send().await.unwrap();
        let code = error_code(res, StatusCode::BAD_GATEWAY).await;
        assert!(
            ["upstream_unavailable", "upstream_error"].contains(&code.as_str()),
            "{path}: {code}"
        );
        // The handshake is part of connecting: nothing was sent, the target is unavailable.
        assert_eq!(code, "upstream_unavailable", "{path}");
    }
    assert_eq!(up.hits(), 0, "a request reached the upstream");
    eventually(RECORDS, || async { up.tls_handshake_failures() >= 2 }).await;

    let records = gw.wait_for_records(2, RECORDS).await;
    for (record, api) in records.iter().zip(["roots", "wrong"]) {
        assert_eq!(record["api"], api, "{record}");
        assert_eq!(record["status"], 502, "{record}");
        assert_eq!(record["outcome"], "error", "{record}");
        assert_eq!(record["reason"], "upstream_unavailable", "{record}");
        assert_eq!(record["upstream_status"], Value::Null, "{record}");
    }
}

#[tokio::test]
async fn a_missing_ca_file_is_refused_by_validate_and_serve() {
    let cert = tls::self_signed(&["localhost"]);
    let missing = cert.cert_pem_path.with_file_name("missing-ca.pem");
    let yaml = services(&[("svc", "https://localhost:8443", Some(&missing), "auto")]);
    let mut gw = common::gateway().config(&yaml).spawn();

    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success(), "serve accepted a missing CA file");
    let stderr = gw.stderr();
    assert!(
        stderr.contains("services[0].upstream.targets"),
        "no field path in stderr:\n{stderr}"
    );
    assert!(stderr.contains("missing-ca.pem"), "{stderr}");

    // `validate` compiles the file as `serve` would, so it reads the CA file too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("validate")
        .arg(gw.config_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "validate accepted a missing CA file");
    assert!(stderr.contains("services[0].upstream.targets"), "{stderr}");
}

#[tokio::test]
async fn a_reload_with_a_missing_ca_file_keeps_the_old_config() {
    let cert = tls::self_signed(&["localhost"]);
    let up = upstream::tls_echo("secure", &cert, &["h2", "http/1.1"]);
    let good = services(&[("svc", &up.url(), Some(&cert.cert_pem_path), "auto")]);
    let gw = common::gateway().config(&good).start().await;
    assert_eq!(echo(&gw, "/svc").await["upstream"], "secure");

    let missing = cert.cert_pem_path.with_file_name("missing-ca.pem");
    let bad = services(&[("svc", &up.url(), Some(&missing), "auto")]);
    gw.write_config(&bad);
    gw.sighup();
    eventually(RECORDS, || async {
        let stderr = gw.stderr();
        stderr.contains("reload rejected") && stderr.contains("services/svc.upstream.targets")
    })
    .await;

    assert_eq!(echo(&gw, "/svc").await["upstream"], "secure");
    assert!(
        !gw.stderr().contains("configuration reloaded"),
        "{}",
        gw.logs()
    );
}

#[tokio::test]
async fn grpc_trailers_reach_an_http2_client() {
    let up = upstream::h2c_trailers();
    let gw = common::gateway()
        .config(&format!(
            "services: [{{ name: grpc, upstream: {{ targets: [{{ url: '{}' }}], protocol: http2 }} }}]\n\
             apis: [{{ name: grpc, service: grpc, match: {{ paths: [/echo.Echo] }} }}]\n",
            up.url()
        ))
        .start()
        .await;

    // A gRPC message: uncompressed flag, 4-byte length, payload.
    let message: &[u8] = b"\0\0\0\0\x05hello";
    let mut sender = h2::connect_h2c(gw.proxy_addr()).await;
    let req = http::Request::post(gw.url("/echo.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body::full(message))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(
        res.headers()["x-request-te"],
        "trailers",
        "the upstream did not get `te: trailers`"
    );
    let collected = res.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("the response has no trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
    assert_eq!(&collected.to_bytes()[..], message);

    let records = gw.wait_for_records(1, RECORDS).await;
    let record = &records[0];
    assert_eq!(record["status"], 200, "{record}");
    assert_eq!(record["upstream_status"], 200, "{record}");
    assert_eq!(record["outcome"], "allowed", "{record}");
    assert_eq!(record["bytes_in"], message.len(), "{record}");
    assert_eq!(record["bytes_out"], message.len(), "{record}");
}
