//! The admin API's read side: admin authentication, resources by name with
//! secrets redacted, pagination and filters, and the access records.

mod common;

use std::time::Duration;

use tollgate_testkit::serde_json::Value;
use tollgate_testkit::{eventually, upstream, Gateway};

const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

fn config(upstream: &str) -> String {
    format!(
        r#"
teams: [{{ name: payments }}, {{ name: risk }}]
consumers:
  - {{ name: alpha, team: payments, keys: [{{ value: "tg_alpha_literal_key_0123456789abcdef" }}] }}
  - {{ name: beta, team: payments, keys: [{{ value: env:BETA_KEY }}] }}
  - {{ name: gamma, team: risk, basic: {{ username: g, password: "gamma-password-literal" }} }}
services:
  - name: orders
    team: payments
    upstream: {{ targets: [{{ url: "{upstream}" }}] }}
apis:
  - name: orders-v1
    service: orders
    match: {{ paths: [/orders] }}
    policies: {{ auth: {{ methods: [key] }} }}
"#
    )
}

async fn start() -> (Gateway, tollgate_testkit::Upstream) {
    let up = upstream::echo("u");
    let gw = common::gateway()
        .config(&config(&up.url()))
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("BETA_KEY", "tg_beta_key_from_the_environment_0123")
        .start()
        .await;
    (gw, up)
}

async fn admin_get(gw: &Gateway, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = gw.client().get(format!("{}{path}", gw.admin_url()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let res = request.send().await.unwrap();
    let status = res.status().as_u16();
    assert!(res.headers().contains_key("x-request-id"));
    (status, res.json().await.unwrap())
}

#[tokio::test]
async fn the_admin_api_always_needs_a_token() {
    let (gw, _up) = start().await;
    let (status, body) = admin_get(&gw, "/admin/v1/consumers", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "missing_credentials");
    assert!(body["error"]["request_id"].is_string(), "{body}");
    let (status, body) =
        admin_get(&gw, "/admin/v1/consumers", Some("wrong-token-0123456789")).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_credentials");
    // Unknown paths under /admin/v1 are refused before anything is revealed.
    let (status, _) = admin_get(&gw, "/admin/v1/nothing/here/at/all", None).await;
    assert_eq!(status, 401);
    // The probes stay open.
    let res = gw
        .client()
        .get(format!("{}/readyz", gw.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(!gw.logs().contains(ADMIN_TOKEN));
    // Every refusal is in the log, with its request id, never the token tried.
    tollgate_testkit::eventually(Duration::from_secs(5), || async {
        gw.stderr().matches("admin request refused").count() == 3
    })
    .await;
    assert!(gw.stderr().contains("path=/admin/v1/consumers"));
    assert!(!gw.logs().contains("wrong-token-0123456789"));
}

#[tokio::test]
async fn resources_are_listed_by_name_with_secrets_redacted() {
    let (gw, _up) = start().await;
    let token = Some(ADMIN_TOKEN);
    let (status, body) = admin_get(&gw, "/admin/v1/consumers", token).await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta", "gamma"]);
    assert!(body["next"].is_null());
    let text = body.to_string();
    assert!(!text.contains("tg_alpha_literal_key"), "{text}");
    assert!(!text.contains("gamma-password-literal"), "{text}");
    assert!(
        text.contains("env:BETA_KEY"),
        "references are shown: {text}"
    );

    // Pages of one, by cursor, without gaps or repeats.
    let mut seen = Vec::new();
    let mut path = "/admin/v1/consumers?limit=1".to_string();
    loop {
        let (status, page) = admin_get(&gw, &path, token).await;
        assert_eq!(status, 200, "{page}");
        seen.push(page["items"][0]["name"].as_str().unwrap().to_string());
        match page["next"].as_str() {
            Some(cursor) => path = format!("/admin/v1/consumers?limit=1&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ["alpha", "beta", "gamma"]);

    // Filters by field.
    let (_, body) = admin_get(&gw, "/admin/v1/consumers?team=risk", token).await;
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    assert_eq!(body["items"][0]["name"], "gamma");

    let (status, body) = admin_get(&gw, "/admin/v1/services/orders", token).await;
    assert_eq!(status, 200);
    assert_eq!(body["team"], "payments");
    let (status, body) = admin_get(&gw, "/admin/v1/apis/orders-v1", token).await;
    assert_eq!(status, 200);
    assert_eq!(body["policies"]["auth"]["methods"][0], "key");
    let (status, body) = admin_get(&gw, "/admin/v1/services/nope", token).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = admin_get(&gw, "/admin/v1/widgets", token).await;
    assert_eq!(status, 404);
    let (status, body) = admin_get(&gw, "/admin/v1/consumers?limit=0", token).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = admin_get(&gw, "/admin/v1/consumers?cursor=%25%25", token).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn access_records_are_queried_by_filter_newest_first() {
    let (gw, _up) = start().await;
    let client = gw.client();
    for _ in 0..3 {
        let res = client
            .get(gw.url("/orders"))
            .header("x-api-key", "tg_beta_key_from_the_environment_0123")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let res = client.get(gw.url("/orders")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let denied_id = res.headers()["x-request-id"].to_str().unwrap().to_string();

    let token = Some(ADMIN_TOKEN);
    eventually(Duration::from_secs(5), || async {
        let (_, body) = admin_get(&gw, "/admin/v1/logs", token).await;
        body["items"]
            .as_array()
            .is_some_and(|items| items.len() >= 4)
    })
    .await;
    let (status, body) = admin_get(&gw, "/admin/v1/logs?consumer=beta", token).await;
    assert_eq!(status, 200, "{body}");
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items
        .iter()
        .all(|r| r["consumer"] == "beta" && r["outcome"] == "allowed"));
    assert!(
        items[0]["id"].as_i64() > items[1]["id"].as_i64(),
        "newest first"
    );

    let (_, body) = admin_get(&gw, "/admin/v1/logs?outcome=denied", token).await;
    assert_eq!(body["items"][0]["reason"], "missing_credentials");
    assert_eq!(body["items"][0]["request_id"], denied_id.as_str());
    let (_, body) = admin_get(
        &gw,
        &format!("/admin/v1/logs?request_id={denied_id}"),
        token,
    )
    .await;
    assert_eq!(body["items"].as_array().unwrap().len(), 1);

    let (_, page) = admin_get(&gw, "/admin/v1/logs?limit=2", token).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next"].as_str().unwrap();
    let (_, rest) = admin_get(
        &gw,
        &format!("/admin/v1/logs?limit=2&cursor={cursor}"),
        token,
    )
    .await;
    assert!(rest["items"][0]["id"].as_i64() < page["items"][1]["id"].as_i64());

    let (status, _) = admin_get(&gw, "/admin/v1/logs?from=yesterday", token).await;
    assert_eq!(status, 400);
    let (status, _) = admin_get(&gw, "/admin/v1/logs?colour=blue", token).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn without_the_variable_a_token_is_generated_into_a_private_file() {
    let up = upstream::echo("u");
    let gw = common::gateway()
        .config(&config(&up.url()))
        .env("BETA_KEY", "tg_beta_key_from_the_environment_0123")
        .start()
        .await;
    let path = gw.dir().join("admin-token");
    let token = std::fs::read_to_string(&path).unwrap().trim().to_string();
    assert!(token.starts_with("tga_") && token.len() > 40, "{token}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (status, _) = admin_get(&gw, "/admin/v1/teams", Some(&token)).await;
    assert_eq!(status, 200);
    let logs = gw.logs();
    assert!(
        logs.contains("admin-token"),
        "the file's path is logged:\n{logs}"
    );
    assert!(!logs.contains(&token), "the token is never logged");
    let db = std::fs::read(gw.dir().join("tollgate.db")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(&token));
}

/// The OpenAPI document lists exactly the routes the admin listener serves:
/// every documented operation reaches a handler (not the fallback, not 405),
/// and every other method on a documented path is 405.
#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let (gw, _up) = start().await;
    let (status, doc) = admin_get(&gw, "/admin/v1/openapi.json", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for expected in [
        "/admin/v1/services/{name}",
        "/admin/v1/consumers/{name}/keys",
        "/admin/v1/subscriptions/{id}/{action}",
        "/admin/v1/audit",
        "/admin/v1/users/{name}/tokens",
        "/admin/v1/openapi.json",
    ] {
        assert!(paths.contains_key(expected), "{expected} is not documented");
    }
    let client = gw.client();
    let all = ["GET", "POST", "PUT", "PATCH", "DELETE"];
    let mut probed = 0;
    for (path, item) in paths {
        let concrete = path
            .replace("{name}", "no-such-thing")
            .replace("{id}", "no-such-thing")
            .replace("{action}", "approve");
        let documented: Vec<String> = item
            .as_object()
            .unwrap()
            .keys()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        for method in all {
            let res = client
                .request(
                    method.parse().unwrap(),
                    format!("{}{concrete}", gw.admin_url()),
                )
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body(if method == "GET" || method == "DELETE" {
                    ""
                } else {
                    "{}"
                })
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            let message = body["error"]["message"].as_str().unwrap_or("");
            if documented.iter().any(|m| m == method) {
                assert_ne!(
                    status, 405,
                    "{method} {concrete}: documented but not routed"
                );
                assert!(
                    !message.starts_with("no admin endpoint"),
                    "{method} {concrete}: documented but not routed ({status} {body})"
                );
                probed += 1;
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {concrete}: routed but not documented"
                );
            }
        }
    }
    assert!(probed > 50, "only {probed} operations probed");
}
