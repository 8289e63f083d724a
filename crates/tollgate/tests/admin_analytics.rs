//! `GET /admin/v1/analytics` through the real gateway: traffic allowed,
//! denied and failed, then its aggregates read back.

mod common;

use std::time::Duration;

use tollgate_testkit::serde_json::Value;
use tollgate_testkit::{eventually, upstream, Gateway};

const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
const ALPHA_KEY: &str = "tg_alpha_key_0123456789abcdef0123";
const BETA_KEY: &str = "tg_beta_key_0123456789abcdef01234";

fn config(upstream: &str) -> String {
    format!(
        r#"
consumers:
  - {{ name: alpha, keys: [{{ value: "{ALPHA_KEY}" }}] }}
  - {{ name: beta, keys: [{{ value: "{BETA_KEY}" }}] }}
services:
  - name: svc
    upstream: {{ targets: [{{ url: "{upstream}" }}] }}
apis:
  - name: orders
    service: svc
    match: {{ paths: [/orders] }}
    policies:
      auth: {{ methods: [key] }}
      rate_limit: [{{ limit: 3, window: 1m, by: consumer }}]
  - name: open
    service: svc
    match: {{ paths: [/open] }}
"#
    )
}

async fn admin_get(gw: &Gateway, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = gw.client().get(format!("{}{path}", gw.admin_url()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let res = request.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

/// Sends `n` requests to `path`, with `key` if any; returns their statuses.
async fn send(gw: &Gateway, path: &str, key: Option<&str>, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        let mut request = gw.client().get(gw.url(path));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        statuses.push(request.send().await.unwrap().status().as_u16());
    }
    statuses
}

/// The records of 14 requests: 9 allowed, 4 denied (2 rate limited, a
/// missing and an invalid key), 1 with no route.
async fn traffic(gw: &Gateway) {
    assert_eq!(
        send(gw, "/orders", Some(ALPHA_KEY), 5).await,
        [200, 200, 200, 429, 429]
    );
    assert_eq!(send(gw, "/orders", Some(BETA_KEY), 2).await, [200, 200]);
    assert_eq!(send(gw, "/orders", None, 1).await, [401]);
    assert_eq!(
        send(gw, "/orders", Some("tg_no_such_key_0123456789abcdef"), 1).await,
        [401]
    );
    assert_eq!(send(gw, "/open", None, 4).await, [200; 4]);
    assert_eq!(send(gw, "/nowhere", None, 1).await, [404]);
    let token = Some(ADMIN_TOKEN);
    eventually(Duration::from_secs(5), || async {
        let (_, body) = admin_get(gw, "/admin/v1/logs", token).await;
        body["items"]
            .as_array()
            .is_some_and(|items| items.len() >= 14)
    })
    .await;
}

#[tokio::test]
async fn aggregates_the_gateways_traffic() {
    let up = upstream::echo("u");
    let gw = common::gateway()
        .config(&config(&up.url()))
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .start()
        .await;
    traffic(&gw).await;
    let token = Some(ADMIN_TOKEN);

    // The last day, by hour.
    let (status, body) = admin_get(&gw, "/admin/v1/analytics", token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bucket"], "hour");
    let totals = &body["totals"];
    assert_eq!(totals["requests"], 14, "{body}");
    assert_eq!(totals["denied"], 4, "{body}");
    assert_eq!(totals["errors"], 1, "{body}");
    assert_eq!(
        totals["denials_by_reason"],
        tollgate_testkit::serde_json::json!({
            "rate_limited": 2, "missing_credentials": 1, "invalid_credentials": 1
        })
    );
    assert!(totals["bytes_out"].as_u64().unwrap() > 0, "{body}");
    let latency = &totals["latency_ms"];
    let (p50, p99) = (
        latency["p50"].as_f64().unwrap(),
        latency["p99"].as_f64().unwrap(),
    );
    assert!(0.0 <= p50 && p50 <= p99, "{body}");
    assert_eq!(
        body["top_consumers"],
        tollgate_testkit::serde_json::json!([
            { "consumer": "alpha", "requests": 5 },
            { "consumer": "beta", "requests": 2 }
        ])
    );
    assert_eq!(
        body["top_apis"],
        tollgate_testkit::serde_json::json!([
            { "api": "orders", "requests": 9 },
            { "api": "open", "requests": 4 }
        ])
    );
    // Only buckets with records, holding them all.
    let buckets = body["buckets"].as_array().unwrap();
    assert!((1..=2).contains(&buckets.len()), "{body}");
    let sum: u64 = buckets
        .iter()
        .map(|b| b["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, 14);
    assert!(buckets[0]["start"]
        .as_str()
        .unwrap()
        .ends_with(":00:00.000000Z"));

    // By minute, filtered, ranked shorter.
    let (status, body) = admin_get(
        &gw,
        "/admin/v1/analytics?bucket=minute&consumer=alpha&top=1",
        token,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["totals"]["requests"], 5, "{body}");
    assert_eq!(body["totals"]["denials_by_reason"]["rate_limited"], 2);
    assert_eq!(body["top_consumers"].as_array().unwrap().len(), 1);
    let (_, body) = admin_get(&gw, "/admin/v1/analytics?api=open&top=0", token).await;
    assert_eq!(body["totals"]["requests"], 4, "{body}");
    assert_eq!(body["totals"]["denied"], 0);
    assert_eq!(body["top_apis"], tollgate_testkit::serde_json::json!([]));

    // A range of its own, in either spelling; an old one is empty.
    let (_, body) = admin_get(
        &gw,
        "/admin/v1/analytics?from=2020-01-01T00:00:00Z&to=1577923200&bucket=day",
        token,
    )
    .await;
    assert_eq!(body["from"], "2020-01-01T00:00:00.000000Z", "{body}");
    assert_eq!(body["to"], "2020-01-02T00:00:00.000000Z", "{body}");
    assert_eq!(body["totals"]["requests"], 0);
    assert_eq!(body["totals"]["latency_ms"]["p50"], Value::Null);
    assert_eq!(body["buckets"], tollgate_testkit::serde_json::json!([]));
}

#[tokio::test]
async fn bad_parameters_are_refused_and_a_token_is_needed() {
    let up = upstream::echo("u");
    let gw = common::gateway()
        .config(&config(&up.url()))
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .start()
        .await;
    let token = Some(ADMIN_TOKEN);
    for query in [
        "bucket=week",
        "top=101",
        "top=many",
        "from=yesterday",
        "from=1796342400&to=1796342400",
        "colour=blue",
        "limit=5",
        // 10,001 minutes.
        "bucket=minute&from=0&to=600060",
    ] {
        let (status, body) = admin_get(&gw, &format!("/admin/v1/analytics?{query}"), token).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{query}: {body}");
    }
    // 10,000 minutes are allowed.
    let (status, body) = admin_get(
        &gw,
        "/admin/v1/analytics?bucket=minute&from=0&to=600000",
        token,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = admin_get(&gw, "/admin/v1/analytics", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "missing_credentials");
    let (status, body) =
        admin_get(&gw, "/admin/v1/analytics", Some("wrong-token-0123456789")).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_credentials");
}
