//! API keys end to end: where a key may be carried, expiry, rotation, hashed
//! keys, stripping, what upstream learns, and the records of every attempt.

mod common;

use std::time::Duration;

use tollgate_testkit::reqwest::{header, StatusCode};
use tollgate_testkit::serde_json::Value;
use tollgate_testkit::upstream;

const MOBILE_KEY: &str = "tg_mobile_current_key_0123456789abcdefghijklmnop";
const OLD_KEY: &str = "tg_mobile_old_key_rotated_out_0123456789abcdefgh";
const EXPIRED_KEY: &str = "tg_mobile_expired_key_0123456789abcdefghijklmnopq";
const HASHED_KEY: &str = "tg_web_key_stored_only_as_a_hash_0123456789abcdef";

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn config(upstream: &str) -> String {
    format!(
        r#"
teams:
  - name: payments
consumers:
  - name: mobile-app
    team: payments
    groups: [partners]
    keys:
      - value: env:MOBILE_APP_KEY
      - value: env:MOBILE_APP_OLD_KEY
        expires: 2099-01-01T00:00:00Z
      - value: env:MOBILE_APP_EXPIRED_KEY
        expires: 2020-01-01T00:00:00Z
  - name: web
    keys:
      - hash: "sha256:{hashed}"
services:
  - name: orders
    upstream: {{ targets: [{{ url: "{upstream}" }}] }}
apis:
  - name: orders-v1
    service: orders
    match: {{ paths: [/orders] }}
    policies:
      auth: {{ methods: [key], key_query_param: api_key }}
  - name: open
    service: orders
    match: {{ paths: [/open] }}
"#,
        hashed = sha256_hex(HASHED_KEY)
    )
}

async fn start() -> (tollgate_testkit::Gateway, tollgate_testkit::Upstream) {
    let up = upstream::echo("orders");
    let gw = common::gateway()
        .config(&config(&up.url()))
        .env("MOBILE_APP_KEY", MOBILE_KEY)
        .env("MOBILE_APP_OLD_KEY", OLD_KEY)
        .env("MOBILE_APP_EXPIRED_KEY", EXPIRED_KEY)
        .start()
        .await;
    (gw, up)
}

async fn error_of(
    res: tollgate_testkit::reqwest::Response,
) -> (StatusCode, Value, header::HeaderMap) {
    let status = res.status();
    let headers = res.headers().clone();
    let body: Value = res.json().await.unwrap();
    (status, body, headers)
}

#[tokio::test]
async fn a_key_is_accepted_in_each_of_its_three_places_and_stripped() {
    let (gw, _up) = start().await;
    let client = gw.client();
    let requests = [
        client
            .get(gw.url("/orders/1"))
            .header("authorization", format!("Bearer {MOBILE_KEY}")),
        client
            .get(gw.url("/orders/1"))
            .header("x-api-key", MOBILE_KEY),
        client.get(gw.url(&format!("/orders/1?a=1&api_key={MOBILE_KEY}&b=2"))),
    ];
    for request in requests {
        let res = request.send().await.unwrap();
        assert_eq!(res.status(), 200);
        let echo: Value = res.json().await.unwrap();
        let headers = &echo["headers"];
        assert_eq!(headers["x-consumer-name"], "mobile-app");
        assert_eq!(headers["x-consumer-team"], "payments");
        assert!(headers.get("authorization").is_none(), "{echo}");
        assert!(headers.get("x-api-key").is_none(), "{echo}");
        let query = echo["query"].as_str().unwrap_or("");
        assert!(!query.contains("api_key"), "{echo}");
        assert!(
            !echo.to_string().contains(MOBILE_KEY),
            "key leaked upstream: {echo}"
        );
    }
    // The query's other parameters survive.
    let res = client
        .get(gw.url(&format!("/orders?a=1&api_key={MOBILE_KEY}&b=2")))
        .send()
        .await
        .unwrap();
    let echo: Value = res.json().await.unwrap();
    assert_eq!(echo["query"], "a=1&b=2");
}

#[tokio::test]
async fn missing_wrong_and_expired_keys_get_their_own_codes() {
    let (gw, up) = start().await;
    let client = gw.client();

    let (status, body, headers) =
        error_of(client.get(gw.url("/orders")).send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "missing_credentials");
    assert!(body["error"]["request_id"].is_string());
    assert!(headers
        .get("www-authenticate")
        .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")));

    let res = client
        .get(gw.url("/orders"))
        .header("x-api-key", "tg_wrong")
        .send()
        .await
        .unwrap();
    let (status, body, headers) = error_of(res).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_credentials");
    assert!(headers.contains_key("www-authenticate"));

    let res = client
        .get(gw.url("/orders"))
        .header("x-api-key", EXPIRED_KEY)
        .send()
        .await
        .unwrap();
    let (status, body, _) = error_of(res).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "expired_credentials");
    assert_eq!(up.hits(), 0, "no denied request may reach upstream");

    // An API without auth is open, and a client cannot pose as a consumer there.
    let res = client
        .get(gw.url("/open"))
        .header("x-consumer-name", "admin")
        .header("x-claim-sub", "root")
        .send()
        .await
        .unwrap();
    let echo: Value = res.json().await.unwrap();
    assert!(echo["headers"].get("x-consumer-name").is_none(), "{echo}");
    assert!(echo["headers"].get("x-claim-sub").is_none(), "{echo}");
}

#[tokio::test]
async fn rotated_and_hashed_keys_work_side_by_side() {
    let (gw, _up) = start().await;
    let client = gw.client();
    for (key, consumer) in [
        (MOBILE_KEY, "mobile-app"),
        (OLD_KEY, "mobile-app"),
        (HASHED_KEY, "web"),
    ] {
        let res = client
            .get(gw.url("/orders"))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{consumer}");
        let echo: Value = res.json().await.unwrap();
        assert_eq!(echo["headers"]["x-consumer-name"], consumer);
    }
}

#[tokio::test]
async fn every_attempt_is_recorded_without_the_credential() {
    let (gw, _up) = start().await;
    let client = gw.client();
    client
        .get(gw.url("/orders"))
        .header("x-api-key", MOBILE_KEY)
        .send()
        .await
        .unwrap();
    client
        .get(gw.url("/orders"))
        .header("x-api-key", "tg_wrong_guess")
        .send()
        .await
        .unwrap();
    client.get(gw.url("/orders")).send().await.unwrap();
    client
        .get(gw.url(&format!("/orders?api_key={EXPIRED_KEY}")))
        .send()
        .await
        .unwrap();
    let records = gw.wait_for_records(4, Duration::from_secs(5)).await;
    let find = |reason: Option<&str>| {
        records
            .iter()
            .find(|r| r["reason"].as_str() == reason)
            .unwrap_or_else(|| panic!("no record with reason {reason:?}: {records:#?}"))
    };
    let allowed = find(None);
    assert_eq!(allowed["outcome"], "allowed");
    assert_eq!(allowed["consumer"], "mobile-app");
    for reason in [
        "invalid_credentials",
        "missing_credentials",
        "expired_credentials",
    ] {
        let record = find(Some(reason));
        assert_eq!(record["outcome"], "denied");
        assert_eq!(record["status"], 401);
    }
    // No key in any record, log line or database row.
    let everything = format!(
        "{}\n{}\n{}",
        records
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        gw.logs(),
        String::from_utf8_lossy(&std::fs::read(gw.dir().join("tollgate.db")).unwrap_or_default()),
    );
    for secret in [MOBILE_KEY, EXPIRED_KEY, "tg_wrong_guess"] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}

#[tokio::test]
async fn an_answer_before_the_body_is_read_closes_the_connection() {
    let (gw, up) = start().await;
    let res = gw
        .client()
        .post(gw.url("/orders"))
        .body("x".repeat(64 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["connection"], "close");
    // The same for the gateway's other early answers, such as no route.
    let res = gw
        .client()
        .post(gw.url("/nowhere"))
        .body("x".repeat(64 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["connection"], "close");
    // Without a body there is nothing unread: the connection stays open.
    let res = gw.client().get(gw.url("/orders")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("connection").is_none());
    assert_eq!(up.hits(), 0);
}
