//! `examples/security.yaml`, the security issue's contract, loaded as shipped
//! (only addresses and the data directory substituted) and driven through
//! each policy it declares.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use tollgate_testkit::serde_json::{json, Value};
use tollgate_testkit::tokens::{self, IntrospectionServer, JwksServer, TestKey};
use tollgate_testkit::{futures_util, port, reqwest, upstream};

const MOBILE_APP_KEY: &str = "tg_example_mobile_app_key_0123456789abcdefghijk";
const MOBILE_APP_SECRET: &str = "example-client-secret-0123456789";
const MOBILE_APP_PASSWORD: &str = "example-password-0123456789";
const INTROSPECT_SECRET: &str = "example-introspection-secret";

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/security.yaml")
}

const ENV: [(&str, &str); 4] = [
    ("MOBILE_APP_KEY", MOBILE_APP_KEY),
    ("MOBILE_APP_SECRET", MOBILE_APP_SECRET),
    ("MOBILE_APP_PASSWORD", MOBILE_APP_PASSWORD),
    ("INTROSPECT_SECRET", INTROSPECT_SECRET),
];

#[test]
fn the_example_validates_with_its_secrets_and_names_each_missing_one() {
    let path = example_path();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["validate", path.to_str().unwrap()])
        .envs(ENV)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["validate", path.to_str().unwrap()])
        .envs(ENV.iter().filter(|(k, _)| *k != "MOBILE_APP_KEY").copied())
        .env_remove("MOBILE_APP_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("consumers[0].keys[0].value: environment variable MOBILE_APP_KEY is not set"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_example_behaves_as_described() {
    let orders = upstream::echo("orders");
    let jwks = JwksServer::start(vec![tokens::jwk(TestKey::Rsa, "corp-1", "RS256")]);
    let introspection = IntrospectionServer::start("tollgate", INTROSPECT_SECRET);
    let data = tempfile::tempdir().unwrap();
    let listen = port::free_addrs(2);
    let jwks_addr = jwks
        .url()
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let introspection_addr = introspection
        .url()
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut config = std::fs::read_to_string(example_path()).unwrap();
    for (from, to) in [
        ("127.0.0.1:8000", listen[0].to_string()),
        ("127.0.0.1:8001", listen[1].to_string()),
        ("127.0.0.1:9001", orders.addr().to_string()),
        ("127.0.0.1:9100", jwks_addr),
        ("127.0.0.1:9101", introspection_addr),
        ("tollgate-data", data.path().display().to_string()),
    ] {
        assert!(config.contains(from), "the example no longer has {from}");
        config = config.replace(from, &to);
    }
    let mut builder = common::gateway().config(&config);
    for (key, value) in ENV {
        builder = builder.env(key, value);
    }
    let gw = builder.start().await;
    let client = gw.client();
    let code = |body: &Value| body["error"]["code"].as_str().unwrap_or("").to_string();

    // No credential.
    let res = client.get(gw.url("/orders")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(code(&res.json().await.unwrap()), "missing_credentials");

    // The key, from `Authorization: Bearer`, `X-API-Key` or `?api_key=`; headers transformed.
    for request in [
        client.get(gw.url("/orders")).bearer_auth(MOBILE_APP_KEY),
        client
            .get(gw.url("/orders"))
            .header("x-api-key", MOBILE_APP_KEY),
        client.get(gw.url(&format!("/orders?api_key={MOBILE_APP_KEY}"))),
    ] {
        let res = request.header("cookie", "session=1").send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers().contains_key("ratelimit-limit"));
        assert_eq!(res.headers()["x-content-type-options"], "nosniff");
        let echo: Value = res.json().await.unwrap();
        assert_eq!(echo["headers"]["x-consumer-name"], "mobile-app");
        assert_eq!(echo["headers"]["x-consumer-team"], "payments");
        assert_eq!(echo["headers"]["x-env"], "prod");
        assert!(echo["headers"].get("cookie").is_none());
        assert!(!echo.to_string().contains(MOBILE_APP_KEY));
    }

    // Validation and size on POST.
    let post = |body: String| {
        client
            .post(gw.url("/orders"))
            .header("x-api-key", MOBILE_APP_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(
        post(json!({"item": "pen"}).to_string())
            .await
            .unwrap()
            .status(),
        200
    );
    let res = post(json!({"item": 5}).to_string()).await.unwrap();
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.unwrap();
    assert_eq!(code(&body), "validation_failed");
    assert_eq!(body["error"]["instance_path"], "/item");
    // The 413 comes from Content-Length, before the body is read: the client
    // may still be writing its 2 MiB when the connection closes, and then
    // sees a broken pipe instead of the answer. The record says what happened.
    match post(format!("{{\"item\": \"{}\"}}", "x".repeat(2 << 20))).await {
        Ok(res) => assert_eq!(res.status(), 413),
        Err(error) => assert!(error.is_request(), "{error}"),
    }

    // A JWT from corp-idp: the consumer from `client_id`, scopes per method, `sub` forwarded.
    let claims = |scope: &str| {
        json!({
            "iss": "https://idp.example.com",
            "aud": "orders-api",
            "sub": "user-42",
            "client_id": "mobile-app",
            "scope": scope,
            "exp": tokens::now() + 300,
        })
    };
    let reader = tokens::mint(
        "RS256",
        TestKey::Rsa,
        Some("corp-1"),
        &claims("orders:read"),
    );
    let res = client
        .get(gw.url("/orders"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let echo: Value = res.json().await.unwrap();
    assert_eq!(echo["headers"]["x-claim-sub"], "user-42");
    assert_eq!(echo["headers"]["x-consumer-name"], "mobile-app");
    let res = client
        .post(gw.url("/orders"))
        .bearer_auth(&reader)
        .json(&json!({"item": "pen"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(code(&res.json().await.unwrap()), "forbidden");
    let writer = tokens::mint(
        "RS256",
        TestKey::Rsa,
        Some("corp-1"),
        &claims("orders:read orders:write"),
    );
    let res = client
        .post(gw.url("/orders"))
        .bearer_auth(&writer)
        .json(&json!({"item": "pen"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut wrong_audience = claims("orders:read");
    wrong_audience["aud"] = "other-api".into();
    let token = tokens::mint("RS256", TestKey::Rsa, Some("corp-1"), &wrong_audience);
    let res = client
        .get(gw.url("/orders"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(code(&res.json().await.unwrap()), "invalid_credentials");

    // The gateway's own client-credentials tokens pass the `jwt` method; they
    // carry no scope here, so the ACL's per-method scopes refuse them.
    let res = client
        .post(gw.url("/oauth2/token"))
        .basic_auth("mobile-app", Some(MOBILE_APP_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let token: Value = res.json().await.unwrap();
    let access_token = token["access_token"].as_str().unwrap().to_string();
    let res = client
        .get(gw.url("/orders"))
        .bearer_auth(&access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(code(&res.json().await.unwrap()), "forbidden");
    let jwks_doc: Value = client
        .get(gw.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks_doc["keys"][0]["kty"], "EC");

    // CORS preflight and a forbidden origin.
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, gw.url("/orders"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    assert_eq!(
        preflight("https://app.example.com").await.unwrap().status(),
        204
    );
    let res = preflight("https://evil.example.net").await.unwrap();
    assert_eq!(res.status(), 403);
    assert!(!res.headers().contains_key("access-control-allow-origin"));

    // 10 per second by consumer: once the bucket is full again, a burst of 20
    // is cut to 10 (one more may refill while the burst is in flight).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let burst: Vec<_> = (0..20)
        .map(|_| {
            client
                .get(gw.url("/orders"))
                .header("x-api-key", MOBILE_APP_KEY)
                .send()
        })
        .collect();
    let statuses: Vec<u16> = futures_util::future::join_all(burst)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    let passed = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert!((10..=12).contains(&passed), "{statuses:?}");

    // No secret in the process's output, the records or the database.
    let records = gw
        .wait_for_records(20, std::time::Duration::from_secs(5))
        .await;
    let everything = format!(
        "{}\n{}\n{}",
        records
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
        gw.logs(),
        String::from_utf8_lossy(
            &std::fs::read(data.path().join("tollgate.db")).unwrap_or_default()
        ),
    );
    for secret in [MOBILE_APP_KEY, MOBILE_APP_SECRET, &reader, &access_token] {
        assert!(!everything.contains(secret), "a secret leaked");
    }
    assert!(records
        .iter()
        .any(|r| r["reason"] == "rate_limited" && r["consumer"] == "mobile-app"));
    assert!(records
        .iter()
        .any(|r| r["reason"] == "payload_too_large" && r["status"] == 413));
    drop(introspection);
}

#[test]
fn a_literal_secret_loads_with_a_warning_that_does_not_repeat_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        r#"
consumers:
  - name: c
    keys: [{ value: "tg_literal_secret_in_the_file_0123456789" }]
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["validate", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: consumers[0].keys[0].value: a secret written in the file"),
        "{stderr}"
    );
    assert!(!stderr.contains("tg_literal_secret"), "{stderr}");
}
