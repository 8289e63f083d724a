//! Input and output hygiene end to end: IP rules behind trusted proxies,
//! CORS, body size and JSON Schema validation, header transforms, security
//! headers, and the three policy levels.

mod common;

use std::time::Duration;

use tollgate_testkit::serde_json::{json, Value};
use tollgate_testkit::upstream;

fn config(upstream: &str) -> String {
    format!(
        r#"
trusted_proxies: [127.0.0.1/32]
policies:
  headers: {{ response: {{ set: {{ X-Level: global }} }} }}
services:
  - name: orders
    upstream: {{ targets: [{{ url: "{upstream}" }}] }}
    policies:
      ip: {{ deny: [203.0.113.0/24] }}
apis:
  - name: orders-v1
    service: orders
    match: {{ paths: [/orders] }}
    policies:
      request_size: {{ max_body: 1KiB }}
      validate:
        json_schema: {{ type: object, required: [item], properties: {{ item: {{ type: string, maxLength: 64 }} }} }}
      cors: {{ origins: ["https://app.example.com"], methods: [GET, POST], headers: [Content-Type, Authorization], max_age: 10m }}
      headers:
        request: {{ set: {{ X-Env: prod }}, remove: [Cookie], rename: {{ X-Old: X-New }} }}
        response: {{ remove: [Server, X-Powered-By], set: {{ X-Level: api }} }}
  - name: allow-list
    service: orders
    match: {{ paths: [/internal] }}
    policies:
      ip: {{ allow: [10.0.0.0/8] }}
  - name: plain
    service: orders
    match: {{ paths: [/plain] }}
"#
    )
}

/// An upstream that names itself in `Server` and `X-Powered-By`.
fn chatty_upstream() -> tollgate_testkit::Upstream {
    tollgate_testkit::Upstream::start(|req| async move {
        let mut res = upstream::echo_response("chatty", req).await;
        res.headers_mut()
            .insert("server", "nginx/1.0".parse().unwrap());
        res.headers_mut()
            .insert("x-powered-by", "PHP".parse().unwrap());
        res
    })
}

#[tokio::test]
async fn ip_rules_use_the_client_address_only_from_trusted_proxies() {
    let up = upstream::echo("u");
    // The loopback peer is trusted here: its X-Forwarded-For is believed.
    let gw = common::gateway().config(&config(&up.url())).start().await;
    let client = gw.client();
    let res = client
        .get(gw.url("/plain"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ip_denied");
    let res = client
        .get(gw.url("/plain"))
        .header("x-forwarded-for", "198.51.100.7")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // An allow list admits only its networks.
    let res = client.get(gw.url("/internal")).send().await.unwrap();
    assert_eq!(res.status(), 403);
    let res = client
        .get(gw.url("/internal"))
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.hits(), 2);

    // Not trusted: a spoofed X-Forwarded-For neither gets a client in nor out.
    let untrusted = config(&up.url()).replace("trusted_proxies: [127.0.0.1/32]", "");
    let gw = common::gateway().config(&untrusted).start().await;
    let res = gw
        .client()
        .get(gw.url("/internal"))
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        403,
        "a spoofed XFF must not pass an allow list"
    );
    let res = gw
        .client()
        .get(gw.url("/plain"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "the real peer is not in the denied network"
    );
}

#[tokio::test]
async fn cors_preflights_are_answered_and_unlisted_origins_never_reflected() {
    let up = upstream::echo("u");
    let gw = common::gateway().config(&config(&up.url())).start().await;
    let client = gw.client();
    let res = client
        .request(
            tollgate_testkit::reqwest::Method::OPTIONS,
            gw.url("/orders"),
        )
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, authorization",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert_eq!(h["access-control-max-age"], "600");
    assert!(h.contains_key("x-request-id"));

    let res = client
        .request(
            tollgate_testkit::reqwest::Method::OPTIONS,
            gw.url("/orders"),
        )
        .header("origin", "https://evil.example.net")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(!res.headers().contains_key("access-control-allow-origin"));
    let body = res.text().await.unwrap();
    assert!(body.contains("\"forbidden\""), "{body}");
    assert_eq!(up.hits(), 0, "preflights are answered by the gateway");

    // An actual request: the listed origin is echoed, an unlisted one gets nothing.
    let res = client
        .post(gw.url("/orders"))
        .header("origin", "https://app.example.com")
        .json(&json!({"item": "pen"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let res = client
        .post(gw.url("/orders"))
        .header("origin", "https://evil.example.net")
        .json(&json!({"item": "pen"}))
        .send()
        .await
        .unwrap();
    assert!(!res.headers().contains_key("access-control-allow-origin"));

    let records = gw.wait_for_records(4, Duration::from_secs(5)).await;
    assert!(records
        .iter()
        .any(|r| r["status"] == 204 && r["outcome"] == "allowed"));
    assert!(records
        .iter()
        .any(|r| r["status"] == 403 && r["outcome"] == "denied" && r["reason"] == "forbidden"));
}

#[tokio::test]
async fn bodies_are_validated_and_bounded() {
    let up = upstream::echo("u");
    let gw = common::gateway().config(&config(&up.url())).start().await;
    let client = gw.client();
    let post = |body: String, content_type: &'static str| {
        client
            .post(gw.url("/orders"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    let res = post(json!({"item": "pen"}).to_string(), "application/json")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let echo: Value = res.json().await.unwrap();
    assert_eq!(
        echo["body"],
        json!({"item": "pen"}).to_string(),
        "the body reaches upstream intact"
    );

    let res = post(
        json!({"item": "x".repeat(65)}).to_string(),
        "application/json",
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "validation_failed");
    assert_eq!(body["error"]["instance_path"], "/item");
    assert!(
        body["error"]["schema_path"]
            .as_str()
            .unwrap()
            .contains("maxLength"),
        "{body}"
    );

    let res = post(json!({"name": "pen"}).to_string(), "application/json")
        .await
        .unwrap();
    assert_eq!(res.status(), 422);

    let res = post("{\"item\": ".into(), "application/json")
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "validation_failed");

    let res = post("item=pen".into(), "application/x-www-form-urlencoded")
        .await
        .unwrap();
    assert_eq!(res.status(), 400);

    let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
    let res = post(deep, "application/json").await.unwrap();
    assert_eq!(res.status(), 400);

    let res = post(
        json!({"item": "y".repeat(2000)}).to_string(),
        "application/json",
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 413);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");

    // A body on a GET is validated too: the method is no way around the schema.
    let res = client
        .get(gw.url("/orders"))
        .header("content-type", "application/json")
        .body(json!({"name": "pen"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    // A GET without a body has nothing to validate.
    let res = client.get(gw.url("/orders")).send().await.unwrap();
    assert_eq!(res.status(), 200);

    assert_eq!(
        up.hits(),
        2,
        "only the valid body and the body-less GET went upstream"
    );
    let records = gw.wait_for_records(9, Duration::from_secs(5)).await;
    let denied: Vec<_> = records
        .iter()
        .filter(|r| r["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 7, "{records:#?}");
}

#[tokio::test]
async fn headers_are_transformed_and_security_headers_added() {
    let up = chatty_upstream();
    let gw = common::gateway().config(&config(&up.url())).start().await;
    let res = gw
        .client()
        .post(gw.url("/orders"))
        .header("cookie", "session=secret")
        .header("x-old", "value")
        .json(&json!({"item": "pen"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert!(!h.contains_key("server"));
    assert!(!h.contains_key("x-powered-by"));
    assert_eq!(
        h["x-level"], "api",
        "the API's headers policy replaces the global one"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    let echo: Value = res.json().await.unwrap();
    assert_eq!(echo["headers"]["x-env"], "prod");
    assert_eq!(echo["headers"]["x-new"], "value");
    assert!(echo["headers"].get("x-old").is_none());
    assert!(echo["headers"].get("cookie").is_none());

    // An API without its own headers policy gets the global one.
    let res = gw.client().get(gw.url("/plain")).send().await.unwrap();
    assert_eq!(res.headers()["x-level"], "global");
    assert_eq!(res.headers()["server"], "nginx/1.0");
}
