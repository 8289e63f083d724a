//! The admin API's write side, seen from the data plane: CRUD per resource,
//! ETag conflicts, validation (422, nothing changed), consumer keys, the
//! subscription workflow, blocks, the audit log, secrets at rest,
//! export/apply round trips, OpenAPI import and the file/store split.

mod common;

use tollgate_testkit::serde_json::{json, Value};
use tollgate_testkit::{upstream, Gateway};

const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

async fn start(yaml: &str) -> Gateway {
    common::start_with_env(yaml, "TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN).await
}

struct Answer {
    status: u16,
    etag: Option<String>,
    body: Value,
}

async fn admin(
    gw: &Gateway,
    method: &str,
    path: &str,
    body: Option<Value>,
    if_match: Option<&str>,
) -> Answer {
    let method = tollgate_testkit::reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = gw
        .client()
        .request(method, format!("{}{path}", gw.admin_url()))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(etag) = if_match {
        request = request.header("if-match", etag);
    }
    let res = request.send().await.unwrap();
    let status = res.status().as_u16();
    let etag = res
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_string());
    let text = res.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        tollgate_testkit::serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Answer { status, etag, body }
}

async fn get(gw: &Gateway, path: &str) -> (u16, Value) {
    let res = gw.client().get(gw.url(path)).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn get_with_key(gw: &Gateway, path: &str, key: &str) -> (u16, Value) {
    let res = gw
        .client()
        .get(gw.url(path))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn service(name: &str, url: &str) -> Value {
    json!({ "name": name, "upstream": { "targets": [{ "url": url }] } })
}

fn api(name: &str, service: &str, path: &str) -> Value {
    json!({ "name": name, "service": service, "match": { "paths": [path] } })
}

#[tokio::test]
async fn resources_are_created_replaced_patched_and_deleted_with_the_data_plane_following() {
    let up = upstream::echo("u");
    let gw = start("").await;
    assert_eq!(get(&gw, "/orders").await.0, 404);

    let created = admin(
        &gw,
        "POST",
        "/admin/v1/services",
        Some(service("orders", &up.url())),
        None,
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let created = admin(
        &gw,
        "POST",
        "/admin/v1/apis",
        Some(api("orders-v1", "orders", "/orders")),
        None,
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let etag = created.etag.expect("an ETag");
    // Visible as soon as the write is answered.
    assert_eq!(get(&gw, "/orders/1").await.0, 200);

    let again = admin(
        &gw,
        "POST",
        "/admin/v1/apis",
        Some(api("orders-v1", "orders", "/x")),
        None,
    )
    .await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(again.body["error"]["code"], "already_exists");

    let read = admin(&gw, "GET", "/admin/v1/apis/orders-v1", None, None).await;
    assert_eq!(read.etag.as_deref(), Some(etag.as_str()));

    // PUT with the current ETag replaces; the old one then conflicts.
    let put = admin(
        &gw,
        "PUT",
        "/admin/v1/apis/orders-v1",
        Some(api("orders-v1", "orders", "/v1/orders")),
        Some(&etag),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_ne!(put.etag.as_deref(), Some(etag.as_str()));
    assert_eq!(get(&gw, "/orders/1").await.0, 404);
    assert_eq!(get(&gw, "/v1/orders/1").await.0, 200);
    let stale = admin(
        &gw,
        "PUT",
        "/admin/v1/apis/orders-v1",
        Some(api("orders-v1", "orders", "/stale")),
        Some(&etag),
    )
    .await;
    assert_eq!(stale.status, 412, "{}", stale.body);
    assert_eq!(stale.body["error"]["code"], "precondition_failed");
    assert!(stale.body["error"]["request_id"].is_string());
    assert_eq!(
        get(&gw, "/v1/orders/1").await.0,
        200,
        "the conflict changed nothing"
    );

    // PATCH merges (RFC 7396).
    let patched = admin(
        &gw,
        "PATCH",
        "/admin/v1/apis/orders-v1",
        Some(json!({ "match": { "paths": ["/v1/orders", "/legacy"] } })),
        None,
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.body["service"], "orders");
    assert_eq!(get(&gw, "/legacy").await.0, 200);

    // A rename through PUT is refused.
    let renamed = admin(
        &gw,
        "PUT",
        "/admin/v1/apis/orders-v1",
        Some(api("other", "orders", "/x")),
        None,
    )
    .await;
    assert_eq!(renamed.status, 422, "{}", renamed.body);

    let listed = admin(&gw, "GET", "/admin/v1/apis?service=orders", None, None).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);

    let deleted = admin(&gw, "DELETE", "/admin/v1/apis/orders-v1", None, None).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(get(&gw, "/v1/orders/1").await.0, 404);
    let gone = admin(&gw, "DELETE", "/admin/v1/apis/orders-v1", None, None).await;
    assert_eq!(gone.status, 404);
    let unknown = admin(
        &gw,
        "POST",
        "/admin/v1/widgets",
        Some(json!({"name": "w"})),
        None,
    )
    .await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn an_invalid_change_is_refused_whole_with_its_field_paths() {
    let up = upstream::echo("u");
    let gw = start(&format!(
        "services: [{{ name: orders, upstream: {{ targets: [{{ url: '{}' }}] }} }}]\n\
         apis: [{{ name: orders, service: orders, match: {{ paths: [/orders] }} }}]\n",
        up.url()
    ))
    .await;
    let audit_before = admin(&gw, "GET", "/admin/v1/audit", None, None).await;

    let bad = admin(
        &gw,
        "POST",
        "/admin/v1/apis",
        Some(json!({ "name": "bad", "service": "nowhere", "match": { "paths": ["no-slash"] } })),
        None,
    )
    .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert_eq!(bad.body["error"]["code"], "invalid_config");
    let paths: Vec<&str> = bad.body["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"apis/bad.service"), "{paths:?}");
    assert!(
        paths.iter().any(|p| p.starts_with("apis/bad.match.paths")),
        "{paths:?}"
    );

    // Deleting a service an API still uses breaks the whole: refused.
    let orphaning = admin(&gw, "DELETE", "/admin/v1/services/orders", None, None).await;
    assert_eq!(orphaning.status, 422, "{}", orphaning.body);
    // A body that does not fit the model names the field.
    let typo = admin(
        &gw,
        "POST",
        "/admin/v1/services",
        Some(json!({ "name": "s2", "upstrem": {} })),
        None,
    )
    .await;
    assert_eq!(typo.status, 422, "{}", typo.body);
    assert!(typo.body["error"]["errors"][0]["path"]
        .as_str()
        .unwrap()
        .starts_with("services/s2"));
    let not_json = gw
        .client()
        .post(format!("{}/admin/v1/services", gw.admin_url()))
        .bearer_auth(ADMIN_TOKEN)
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status().as_u16(), 400);

    // Nothing changed: still served, nothing audited.
    assert_eq!(get(&gw, "/orders").await.0, 200);
    assert_eq!(
        admin(&gw, "GET", "/admin/v1/apis/bad", None, None)
            .await
            .status,
        404
    );
    let audit_after = admin(&gw, "GET", "/admin/v1/audit", None, None).await;
    assert_eq!(audit_before.body["items"], audit_after.body["items"]);
}

const SECURED: &str = r#"
teams: [{ name: shop }]
consumers:
  - { name: alice, team: shop }
  - { name: bob, team: shop }
services:
  - name: orders
    team: shop
    subscription: approval
    upstream: { targets: [{ url: "UPSTREAM" }] }
  - name: open
    upstream: { targets: [{ url: "UPSTREAM" }] }
apis:
  - { name: orders, service: orders, match: { paths: [/orders] }, policies: { auth: { methods: [key] } } }
  - { name: open, service: open, match: { paths: [/open] }, policies: { auth: { methods: [key] } } }
"#;

async fn issue_key(gw: &Gateway, consumer: &str) -> (String, String) {
    let issued = admin(
        gw,
        "POST",
        &format!("/admin/v1/consumers/{consumer}/keys"),
        Some(json!({ "expires": "2099-01-01T00:00:00Z" })),
        None,
    )
    .await;
    assert_eq!(issued.status, 201, "{}", issued.body);
    assert_eq!(issued.body["expires"], "2099-01-01T00:00:00Z");
    (
        issued.body["id"].as_str().unwrap().to_string(),
        issued.body["key"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn keys_are_shown_once_and_stored_hashed() {
    let up = upstream::echo("u");
    let gw = start(&SECURED.replace("UPSTREAM", &up.url())).await;
    let (id, key) = issue_key(&gw, "bob").await;
    assert!(key.starts_with("tg_"));
    assert_eq!(get_with_key(&gw, "/open", &key).await.0, 200);

    let consumer = admin(&gw, "GET", "/admin/v1/consumers/bob", None, None).await;
    let text = consumer.body.to_string();
    assert!(!text.contains(&key), "{text}");
    assert!(consumer.body["keys"][0]["hash"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert_eq!(consumer.body["keys"][0]["id"], id.as_str());

    let revoked = admin(
        &gw,
        "DELETE",
        &format!("/admin/v1/consumers/bob/keys/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(revoked.status, 204);
    assert_eq!(get_with_key(&gw, "/open", &key).await.0, 401);
    let missing = admin(
        &gw,
        "DELETE",
        &format!("/admin/v1/consumers/bob/keys/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(missing.status, 404);
    let bad = admin(
        &gw,
        "POST",
        "/admin/v1/consumers/bob/keys",
        Some(json!({ "expires": "tomorrow" })),
        None,
    )
    .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    let nobody = admin(&gw, "POST", "/admin/v1/consumers/nobody/keys", None, None).await;
    assert_eq!(nobody.status, 404);
}

#[tokio::test]
async fn the_subscription_workflow_is_followed_by_the_data_plane() {
    let up = upstream::echo("u");
    let gw = start(&SECURED.replace("UPSTREAM", &up.url())).await;
    let (_, key) = issue_key(&gw, "alice").await;
    let (status, body) = get_with_key(&gw, "/orders", &key).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("subscription_required"))
    );

    let requested = admin(
        &gw,
        "POST",
        "/admin/v1/subscriptions",
        Some(json!({ "consumer": "alice", "service": "orders", "reason": "checkout" })),
        None,
    )
    .await;
    assert_eq!(requested.status, 201, "{}", requested.body);
    assert_eq!(requested.body["status"], "pending");
    let id = requested.body["id"].as_str().unwrap().to_string();
    assert_eq!(id, "alice:orders");
    let (_, body) = get_with_key(&gw, "/orders", &key).await;
    assert_eq!(body["error"]["code"], "subscription_pending");
    let pending = admin(
        &gw,
        "GET",
        "/admin/v1/subscriptions?status=pending",
        None,
        None,
    )
    .await;
    assert_eq!(pending.body["items"][0]["id"], "alice:orders");

    let approved = admin(
        &gw,
        "POST",
        &format!("/admin/v1/subscriptions/{id}/approve"),
        Some(json!({ "comment": "ok for checkout" })),
        None,
    )
    .await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    assert_eq!(approved.body["status"], "approved");
    assert_eq!(approved.body["comment"], "ok for checkout");
    assert_eq!(get_with_key(&gw, "/orders", &key).await.0, 200);

    let rejected = admin(
        &gw,
        "POST",
        &format!("/admin/v1/subscriptions/{id}/reject"),
        None,
        None,
    )
    .await;
    assert_eq!(
        rejected.status, 409,
        "an approved subscription is revoked, not rejected"
    );
    assert_eq!(rejected.body["error"]["code"], "invalid_transition");
    let revoked = admin(
        &gw,
        "POST",
        &format!("/admin/v1/subscriptions/{id}/revoke"),
        None,
        None,
    )
    .await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    let (_, body) = get_with_key(&gw, "/orders", &key).await;
    assert_eq!(body["error"]["code"], "subscription_revoked");
    let unknown = admin(
        &gw,
        "POST",
        &format!("/admin/v1/subscriptions/{id}/bless"),
        None,
        None,
    )
    .await;
    assert_eq!(unknown.status, 404);

    let audit = admin(&gw, "GET", "/admin/v1/audit?kind=subscriptions", None, None).await;
    let actions: Vec<&str> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["revoke", "approve", "create"]);
}

#[tokio::test]
async fn blocks_take_effect_at_once_and_lift_again() {
    let up = upstream::echo("u");
    let gw = start(&SECURED.replace("UPSTREAM", &up.url())).await;
    let (key_id, key) = issue_key(&gw, "bob").await;
    let (other_id, other_key) = issue_key(&gw, "bob").await;
    assert_eq!(get_with_key(&gw, "/open", &key).await.0, 200);

    for (target, denied_key, allowed_key) in [
        (json!({ "consumer": "bob" }), &key, None),
        (json!({ "key_id": key_id }), &key, Some(&other_key)),
        (json!({ "ip": "127.0.0.0/8" }), &other_key, None),
    ] {
        let mut block = target.clone();
        block["reason"] = "incident 42".into();
        let created = admin(&gw, "POST", "/admin/v1/blocks", Some(block), None).await;
        assert_eq!(created.status, 201, "{}", created.body);
        let id = created.body["id"].as_str().unwrap().to_string();
        let (status, body) = get_with_key(&gw, "/open", denied_key).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("blocked")),
            "{target}"
        );
        if let Some(allowed) = allowed_key {
            assert_eq!(get_with_key(&gw, "/open", allowed).await.0, 200, "{target}");
        }
        let lifted = admin(&gw, "DELETE", &format!("/admin/v1/blocks/{id}"), None, None).await;
        assert_eq!(lifted.status, 204);
        assert_eq!(
            get_with_key(&gw, "/open", denied_key).await.0,
            200,
            "{target}"
        );
    }
    let _ = other_id;

    // An expired block no longer applies; a block of nobody is refused.
    let expired = admin(
        &gw,
        "POST",
        "/admin/v1/blocks",
        Some(json!({ "consumer": "bob", "reason": "old", "expires": "2000-01-01T00:00:00Z" })),
        None,
    )
    .await;
    assert_eq!(expired.status, 201);
    assert_eq!(get_with_key(&gw, "/open", &key).await.0, 200);
    let typo = admin(
        &gw,
        "POST",
        "/admin/v1/blocks",
        Some(json!({ "consumer": "bobby" })),
        None,
    )
    .await;
    assert_eq!(typo.status, 422, "{}", typo.body);
    let two = admin(
        &gw,
        "POST",
        "/admin/v1/blocks",
        Some(json!({ "consumer": "bob", "ip": "10.0.0.1/32" })),
        None,
    )
    .await;
    assert_eq!(two.status, 422, "{}", two.body);
}

#[tokio::test]
async fn every_write_is_audited_with_secrets_redacted_and_the_log_cannot_be_changed() {
    let gw = start("").await;
    let secret = "client-secret-LITERAL-0123456789";
    let created = admin(
        &gw,
        "POST",
        "/admin/v1/consumers",
        Some(json!({ "name": "m2m", "client_credentials": { "client_id": "m2m", "secret": secret } })),
        None,
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["client_credentials"]["secret"], "<redacted>");
    // Put back as read: the redacted secret keeps its stored value.
    let read = admin(&gw, "GET", "/admin/v1/consumers/m2m", None, None).await;
    let mut body = read.body.clone();
    body["groups"] = json!(["batch"]);
    let put = admin(
        &gw,
        "PUT",
        "/admin/v1/consumers/m2m",
        Some(body),
        read.etag.as_deref(),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let export = gw
        .client()
        .get(format!("{}/admin/v1/export", gw.admin_url()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!export.contains(secret));
    admin(&gw, "DELETE", "/admin/v1/consumers/m2m", None, None).await;

    let audit = admin(
        &gw,
        "GET",
        "/admin/v1/audit?kind=consumers&name=m2m",
        None,
        None,
    )
    .await;
    let items = audit.body["items"].as_array().unwrap();
    let actions: Vec<&str> = items
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["delete", "update", "create"]);
    for item in items {
        assert!(!item.to_string().contains(secret), "{item}");
        assert!(item["actor"].as_str().unwrap().starts_with("bootstrap"));
        assert_eq!(item["client_ip"], "127.0.0.1");
        assert!(item["at"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(items[1]["diff"]["after"]["groups"], json!(["batch"]));
    assert_eq!(items[2]["diff"]["before"], Value::Null);
    let page = admin(&gw, "GET", "/admin/v1/audit?limit=1", None, None).await;
    assert_eq!(page.body["items"].as_array().unwrap().len(), 1);
    let next = page.body["next"].as_str().unwrap();
    let page2 = admin(
        &gw,
        "GET",
        &format!("/admin/v1/audit?limit=1&cursor={next}"),
        None,
        None,
    )
    .await;
    assert_ne!(page.body["items"][0]["id"], page2.body["items"][0]["id"]);

    for method in ["DELETE", "PUT", "PATCH", "POST"] {
        let answer = admin(&gw, method, "/admin/v1/audit", Some(json!({})), None).await;
        assert!(
            answer.status == 405 || answer.status == 404,
            "{method} /audit answered {}",
            answer.status
        );
    }
    let still = admin(
        &gw,
        "GET",
        "/admin/v1/audit?kind=consumers&name=m2m",
        None,
        None,
    )
    .await;
    assert_eq!(still.body["items"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn the_database_file_reveals_no_secret_and_no_key() {
    let gw = start("").await;
    let secret = "idp-shared-SECRET-value-0123456789abcdef";
    let created = admin(
        &gw,
        "POST",
        "/admin/v1/identity_providers",
        Some(json!({ "name": "corp", "issuer": "https://corp", "secret": secret })),
        None,
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    admin(
        &gw,
        "POST",
        "/admin/v1/consumers",
        Some(json!({ "name": "c" })),
        None,
    )
    .await;
    let (_, key) = issue_key(&gw, "c").await;
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(gw.dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.contains(".db") {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    assert!(bytes.len() > 10_000, "the database files were found");
    let contains = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!contains(secret), "the IdP secret is in the database file");
    assert!(!contains(&key), "the issued key is in the database file");
    assert!(contains("identity_providers"), "the kinds stay readable");
}

#[tokio::test]
async fn export_and_apply_round_trip_and_apply_reports_its_diff() {
    let up = upstream::echo("u");
    let gw = start(&SECURED.replace("UPSTREAM", &up.url())).await;
    let export = |gw: &Gateway| {
        let request = gw
            .client()
            .get(format!("{}/admin/v1/export", gw.admin_url()))
            .bearer_auth(ADMIN_TOKEN);
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    let yaml = export(&gw).await;
    let apply = |body: String, query: &'static str| {
        let request = gw
            .client()
            .post(format!("{}/admin/v1/apply{query}", gw.admin_url()))
            .bearer_auth(ADMIN_TOKEN)
            .body(body);
        async move {
            let res = request.send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let (status, diff) = apply(yaml.clone(), "").await;
    assert_eq!(status, 200, "{diff}");
    assert_eq!(
        diff["changes"],
        json!([]),
        "an export applies back unchanged"
    );
    assert_eq!(export(&gw).await, yaml);

    let changed = yaml.replace("/open", "/opened") + "blocks:\n- { id: b1, ip: 192.0.2.0/24 }\n";
    let (status, diff) = apply(changed.clone(), "?dry_run=true").await;
    assert_eq!(status, 200, "{diff}");
    assert_eq!(diff["dry_run"], true);
    let changes: Vec<String> = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {}/{}",
                c["action"].as_str().unwrap(),
                c["kind"].as_str().unwrap(),
                c["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(changes, ["update apis/open", "create blocks/b1"]);
    assert_eq!(
        get(&gw, "/opened").await.0,
        404,
        "a dry run changes nothing... "
    );
    let (status, _) = apply(changed, "").await;
    assert_eq!(status, 200);
    assert_eq!(
        get(&gw, "/opened").await.0,
        401,
        "...the real run does: auth answers"
    );

    // A document may name what the store holds and it does not list.
    let (status, diff) = apply(
        "apis: [{ name: extra, service: open, match: { paths: [/extra] } }]\n".into(),
        "",
    )
    .await;
    assert_eq!(status, 200, "{diff}");
    assert_eq!(get(&gw, "/extra").await.0, 200);

    // Without --prune nothing else is deleted; with it, what the document lacks is.
    let only_teams = "teams: [{ name: shop }]\n".to_string();
    let (_, diff) = apply(only_teams.clone(), "").await;
    assert_eq!(diff["changes"], json!([]));
    let (status, diff) = apply(only_teams.clone(), "?prune=true&dry_run=true").await;
    assert_eq!(status, 200, "{diff}");
    assert_eq!(diff["changes"].as_array().unwrap().len(), 8, "{diff}");
    assert!(diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["action"] == "delete"));
    assert_eq!(
        get(&gw, "/opened").await.0,
        401,
        "the dry run deleted nothing"
    );
    // Pruning what another kept resource needs is refused whole.
    let (status, diff) = apply(
        "services: [{ name: orders, team: shop, upstream: { targets: [{ url: 'http://127.0.0.1:9' }] } }]
"
            .into(),
        "?prune=true",
    )
    .await;
    assert_eq!(status, 422, "the service's team would be gone: {diff}");
    assert_eq!(get(&gw, "/opened").await.0, 401);
    let (status, diff) = apply(only_teams, "?prune=true").await;
    assert_eq!(status, 200, "{diff}");
    assert_eq!(get(&gw, "/opened").await.0, 404, "pruned");
    let (status, diff) = apply("teams: [{ name: shop }]\nservices: []\n".into(), "?prune=x").await;
    assert_eq!(status, 400, "{diff}");
    let (status, diff) = apply("services: [{ name: 1 }]".into(), "").await;
    assert_eq!(status, 422, "{diff}");
}

#[tokio::test]
async fn an_openapi_document_becomes_apis_with_validation() {
    let up = upstream::echo("u");
    let gw = start(&format!(
        "services: [{{ name: petstore, upstream: {{ targets: [{{ url: '{}' }}] }} }}]\n",
        up.url()
    ))
    .await;
    let spec = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tollgate-config/tests/fixtures/petstore3.json"
    ))
    .unwrap();
    let res = gw
        .client()
        .post(format!(
            "{}/admin/v1/import/openapi?service=petstore",
            gw.admin_url()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .body(spec.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let imported: Value = res.json().await.unwrap();
    assert!(
        imported["changes"].as_array().unwrap().len() >= 19,
        "{imported}"
    );
    let ok = gw
        .client()
        .post(gw.url("/api/v3/pet"))
        .json(&json!({ "name": "rex", "photoUrls": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let bad = gw
        .client()
        .post(gw.url("/api/v3/pet"))
        .json(&json!({ "photoUrls": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 422);
    assert_eq!(get(&gw, "/api/v3/pet/7").await.0, 200);
    let head = gw
        .client()
        .head(gw.url("/api/v3/pet/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 200, "a GET operation answers HEAD");
    let delete_pet = gw
        .client()
        .delete(gw.url("/api/v3/pet/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(delete_pet.status().as_u16(), 200);
    let patch_pet = gw
        .client()
        .patch(gw.url("/api/v3/pet/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        patch_pet.status().as_u16(),
        405,
        "PATCH is no operation of /pet/{{petId}}"
    );

    let unknown = gw
        .client()
        .post(format!(
            "{}/admin/v1/import/openapi?service=nope",
            gw.admin_url()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .body(spec)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 422);
}

#[tokio::test]
async fn the_file_removes_what_it_put_there_and_never_what_the_api_created() {
    let up = upstream::echo("u");
    let yaml = format!(
        "services: [{{ name: s, upstream: {{ targets: [{{ url: '{}' }}] }} }}]\n\
         apis: [{{ name: from-file, service: s, match: {{ paths: [/file] }} }}]\n",
        up.url()
    );
    let gw = start(&yaml).await;
    let created = admin(
        &gw,
        "POST",
        "/admin/v1/apis",
        Some(api("from-api", "s", "/api")),
        None,
    )
    .await;
    assert_eq!(created.status, 201);
    gw.write_config(&format!(
        "services: [{{ name: s, upstream: {{ targets: [{{ url: '{}' }}] }} }}]\n",
        up.url()
    ));
    tollgate_testkit::eventually(std::time::Duration::from_secs(10), || async {
        get(&gw, "/file").await.0 == 404
    })
    .await;
    assert_eq!(get(&gw, "/api").await.0, 200);
    let audit = admin(&gw, "GET", "/admin/v1/audit?name=from-file", None, None).await;
    let first = &audit.body["items"][0];
    assert_eq!(first["action"], "delete");
    assert!(
        first["actor"].as_str().unwrap().starts_with("file:"),
        "{first}"
    );
}

#[tokio::test]
async fn usage_of_deprecated_apis_is_reported_per_consumer() {
    let up = upstream::echo("u");
    let gw = start(&format!(
        r#"
consumers:
  - {{ name: alice, keys: [{{ value: "tg_alice_key_0123456789abcdef0123" }}] }}
  - {{ name: bob, keys: [{{ value: "tg_bob_key_0123456789abcdef012345" }}] }}
services: [{{ name: s, upstream: {{ targets: [{{ url: "{}" }}] }} }}]
apis:
  - {{ name: v1, service: s, match: {{ paths: [/v1] }}, lifecycle: deprecated, sunset: 2099-01-01, successor: v2, policies: {{ auth: {{ methods: [key] }} }} }}
  - {{ name: v2, service: s, match: {{ paths: [/v2] }}, policies: {{ auth: {{ methods: [key] }} }} }}
"#,
        up.url()
    ))
    .await;
    for (key, path, times) in [
        ("tg_alice_key_0123456789abcdef0123", "/v1", 3),
        ("tg_bob_key_0123456789abcdef012345", "/v1", 1),
        ("tg_bob_key_0123456789abcdef012345", "/v2", 5),
    ] {
        for _ in 0..times {
            assert_eq!(get_with_key(&gw, path, key).await.0, 200);
        }
    }
    let report = tollgate_testkit::eventually_some(std::time::Duration::from_secs(10), || async {
        let answer = admin(&gw, "GET", "/admin/v1/analytics/deprecated", None, None).await;
        (answer.body["items"][0]["requests"] == 4).then_some(answer.body)
    })
    .await;
    let items = report["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "only the deprecated API: {report}");
    assert_eq!(items[0]["api"], "v1");
    assert_eq!(items[0]["successor"], "v2");
    assert_eq!(items[0]["sunset"], "2099-01-01");
    let consumers: Vec<(&str, u64)> = items[0]["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["consumer"].as_str().unwrap(),
                c["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(consumers, [("alice", 3), ("bob", 1)]);
    assert!(items[0]["consumers"][0]["last_seen"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    let bad = admin(
        &gw,
        "GET",
        "/admin/v1/analytics/deprecated?since=x",
        None,
        None,
    )
    .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn admin_tokens_are_listed_rotated_and_reported_when_old() {
    let gw = start("").await;
    let listed = admin(&gw, "GET", "/admin/v1/tokens", None, None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let bootstrap = &listed.body["items"][0];
    assert_eq!(bootstrap["name"], "bootstrap");
    assert_eq!(bootstrap["role"], "super_admin");
    assert!(!listed.body.to_string().contains(ADMIN_TOKEN));
    let bootstrap_id = bootstrap["id"].as_i64().unwrap();

    // The only way in cannot be revoked.
    let last = admin(
        &gw,
        "DELETE",
        &format!("/admin/v1/tokens/{bootstrap_id}"),
        None,
        None,
    )
    .await;
    assert_eq!(last.status, 409, "{}", last.body);
    assert_eq!(last.body["error"]["code"], "last_super_admin");

    // Rotation: a super_admin user with a token of its own, then the bootstrap token goes.
    let user = admin(
        &gw,
        "POST",
        "/admin/v1/users",
        Some(json!({ "name": "root", "password": "a long enough password", "memberships": [{ "team": "*", "role": "super_admin" }] })),
        None,
    )
    .await;
    assert_eq!(user.status, 201, "{}", user.body);
    let issued = admin(&gw, "POST", "/admin/v1/users/root/tokens", None, None).await;
    assert_eq!(issued.status, 201, "{}", issued.body);
    let new_token = issued.body["token"].as_str().unwrap().to_string();

    // An old token is a compliance finding.
    {
        let conn = rusqlite::Connection::open(gw.dir().join("tollgate.db")).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        conn.execute(
            "UPDATE admin_tokens SET created_at = created_at - 200 * 86400 WHERE name = 'bootstrap'",
            [],
        )
        .unwrap();
    }
    let report = admin(&gw, "GET", "/admin/v1/compliance", None, None).await;
    let findings = report.body["findings"].as_array().unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f["id"] == "admin_token_not_rotated" && f["resource"] == "tokens/bootstrap"),
        "{}",
        report.body
    );
    assert!(!findings
        .iter()
        .any(|f| f["id"] == "admin_token_not_rotated" && f["resource"] != "tokens/bootstrap"));

    let revoked = gw
        .client()
        .delete(format!("{}/admin/v1/tokens/{bootstrap_id}", gw.admin_url()))
        .bearer_auth(&new_token)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status().as_u16(), 204);
    let gone = admin(&gw, "GET", "/admin/v1/tokens", None, None).await;
    assert_eq!(
        gone.status, 401,
        "the revoked token no longer opens the API"
    );
    let audit = gw
        .client()
        .get(format!("{}/admin/v1/audit?kind=tokens", gw.admin_url()))
        .bearer_auth(&new_token)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(audit["items"][0]["action"], "delete");
    assert_eq!(audit["items"][0]["name"], "bootstrap");
    assert_eq!(audit["items"][0]["actor"], "root");
}

#[tokio::test]
async fn a_team_cannot_put_its_consumers_in_a_group_another_teams_acl_allows() {
    let up = upstream::echo("u");
    let gw = start(&format!(
        r#"
teams: [{{ name: a }}, {{ name: b }}]
services: [{{ name: sb, team: b, upstream: {{ targets: [{{ url: "{}" }}] }} }}]
apis:
  - {{ name: b-api, service: sb, match: {{ paths: [/b] }}, policies: {{ auth: {{ methods: [key] }}, acl: {{ allow_groups: [partners] }} }} }}
"#,
        up.url()
    ))
    .await;
    let user = admin(
        &gw,
        "POST",
        "/admin/v1/users",
        Some(json!({ "name": "dev", "password": "a long enough password", "memberships": [{ "team": "a", "role": "team_admin" }] })),
        None,
    )
    .await;
    assert_eq!(user.status, 201, "{}", user.body);
    let token = admin(&gw, "POST", "/admin/v1/users/dev/tokens", None, None).await;
    let token = token.body["token"].as_str().unwrap().to_string();
    let as_dev = |method: &'static str, path: &'static str, body: Value| {
        let request = gw
            .client()
            .request(method.parse().unwrap(), format!("{}{path}", gw.admin_url()))
            .bearer_auth(&token)
            .json(&body);
        async move {
            let res = request.send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, body) = as_dev(
        "POST",
        "/admin/v1/consumers",
        json!({ "name": "sneaky", "team": "a", "groups": ["partners"] }),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("partners"));
    let (status, body) = as_dev(
        "POST",
        "/admin/v1/consumers",
        json!({ "name": "fine", "team": "a", "groups": ["own-group"] }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = as_dev(
        "PATCH",
        "/admin/v1/consumers/fine",
        json!({ "groups": ["own-group", "partners"] }),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // A super_admin may.
    let granted = admin(
        &gw,
        "PATCH",
        "/admin/v1/consumers/fine",
        Some(json!({ "groups": ["own-group", "partners"] })),
        None,
    )
    .await;
    assert_eq!(granted.status, 200, "{}", granted.body);
    // Keeping a group it already has is no new grant.
    let (status, body) = as_dev(
        "PATCH",
        "/admin/v1/consumers/fine",
        json!({ "groups": ["partners"] }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}
