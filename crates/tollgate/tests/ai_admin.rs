//! AI resources through the admin API: providers (keys redacted on every
//! read, kept on a round trip, sealed at rest), models and prices at
//! `/admin/v1/ai/<kind>`, served by the data plane as soon as written.

mod common;

use std::time::Duration;

use tollgate_testkit::serde_json::{json, Value};
use tollgate_testkit::{FakeKind, FakeLlm, Gateway};

const ADMIN_TOKEN: &str = "test-admin-token-ai-0123456789abcdef";
const APP_KEY: &str = "tg_app_key_ai_admin_0123456789abcdef";
const PROVIDER_KEY: &str = "sk-provider-key-never-shown-0123456789";

async fn admin(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    common::admin_call(gw, ADMIN_TOKEN, method, path, body).await
}

#[tokio::test]
async fn providers_models_and_prices_are_managed_and_served_without_showing_keys() {
    let fake = FakeLlm::start(FakeKind::OpenAi).await;
    let gw = common::gateway()
        .config(&format!(
            r#"
consumers:
  - name: app
    keys: [{{ value: "{APP_KEY}" }}]
apis:
  - name: llm
    match: {{ paths: [/v1] }}
    ai: {{}}
    policies: {{ auth: {{ methods: [key] }} }}
"#
        ))
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .start()
        .await;

    let (status, body) = admin(
        &gw,
        "POST",
        "/admin/v1/ai/providers",
        Some(json!({ "name": "oa", "kind": "openai", "keys": [PROVIDER_KEY], "base_url": fake.base_url() })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // A model naming a provider that does not exist is refused at its field.
    let (status, body) = admin(
        &gw,
        "POST",
        "/admin/v1/ai/models",
        Some(json!({ "name": "smart", "targets": [{ "provider": "ghost", "model": "x" }] })),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string()
            .contains("ai/models/smart.targets[0].provider"),
        "{body}"
    );
    let (status, body) = admin(
        &gw,
        "POST",
        "/admin/v1/ai/models",
        Some(json!({ "name": "smart", "targets": [{ "provider": "oa", "model": "gpt-4o" }] })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = admin(
        &gw,
        "PUT",
        "/admin/v1/ai/prices/oa:gpt-4o",
        Some(json!({ "input": 1.0, "output": 2.0 })),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // Reads never show the key.
    let (status, body) = admin(&gw, "GET", "/admin/v1/ai/providers/oa", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["keys"][0], "<redacted>", "{body}");
    let (_, list) = admin(&gw, "GET", "/admin/v1/ai/providers", None).await;
    assert!(!list.to_string().contains(PROVIDER_KEY), "{list}");
    let (_, exported) = admin(&gw, "GET", "/admin/v1/export", None).await;
    let exported = exported.as_str().unwrap_or_default().to_string();
    assert!(
        exported.contains("ai:") && exported.contains("providers:"),
        "{exported}"
    );
    assert!(!exported.contains(PROVIDER_KEY), "{exported}");
    // The export applies back unchanged, redacted key included.
    let res = gw
        .client()
        .post(format!("{}/admin/v1/apply", gw.admin_url()))
        .bearer_auth(ADMIN_TOKEN)
        .body(exported.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let diff: Value = res.json().await.unwrap();
    assert_eq!(diff["changes"], json!([]), "{diff}");

    // What was written is served at once, with the key that was never shown.
    let chat = || {
        gw.client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(APP_KEY)
            .json(&json!({ "model": "smart", "messages": [{ "role": "user", "content": "hi" }] }))
            .send()
    };
    let res = chat().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(fake.last_request().unwrap().key(), Some(PROVIDER_KEY));

    // A read-edit-write round trip keeps the redacted key.
    let (_, mut provider) = admin(&gw, "GET", "/admin/v1/ai/providers/oa", None).await;
    provider["base_url"] = json!(format!("{}/", fake.base_url()));
    let (status, body) = admin(&gw, "PUT", "/admin/v1/ai/providers/oa", Some(provider)).await;
    assert_eq!(status, 200, "{body}");
    let res = chat().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(fake.last_request().unwrap().key(), Some(PROVIDER_KEY));

    // The configured price applies: 11 × 1.0 + 7 × 2.0 per million.
    let records = gw.wait_for_records(2, Duration::from_secs(5)).await;
    let cost = records[1]["cost_usd"].as_f64().unwrap();
    assert!((cost - 25.0 / 1e6).abs() < 1e-12, "{}", records[1]);

    // Sealed at rest: the database file never holds the key in clear.
    let db = std::fs::read(gw.dir().join("tollgate.db")).unwrap_or_default();
    let wal = std::fs::read(gw.dir().join("tollgate.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(
            !bytes
                .windows(PROVIDER_KEY.len())
                .any(|w| w == PROVIDER_KEY.as_bytes()),
            "the provider key is in the database in clear"
        );
    }
    // The audit log names the change, never the key.
    let (_, audit) = admin(&gw, "GET", "/admin/v1/audit", None).await;
    assert!(audit.to_string().contains("ai/providers"), "{audit}");
    assert!(!audit.to_string().contains(PROVIDER_KEY), "{audit}");

    // A prompt API's OpenAPI description is generated from its variables.
    let (status, body) = admin(
        &gw,
        "POST",
        "/admin/v1/apis",
        Some(json!({ "name": "summarise", "match": { "paths": ["/summarise"], "methods": ["POST"] },
            "ai": { "prompt": { "model": "smart", "template": "Summarise in {{words}} words: {{text}}",
                "variables": { "text": { "type": "string", "maxLength": 10000 },
                               "words": { "type": "integer", "default": 20 } } } } })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, doc) = admin(&gw, "GET", "/admin/v1/apis/summarise/openapi.json", None).await;
    assert_eq!(status, 200, "{doc}");
    let post = &doc["paths"]["/summarise"]["post"];
    let schema = &post["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(schema["required"], json!(["text"]), "{doc}");
    assert_eq!(schema["properties"]["text"]["maxLength"], 10000);
    assert_eq!(schema["additionalProperties"], false);
    assert!(post["responses"]["200"].is_object());
    let (status, _) = admin(&gw, "GET", "/admin/v1/apis/llm/openapi.json", None).await;
    assert_eq!(status, 404);

    // Deleting the model stops it being served.
    let (status, _) = admin(&gw, "DELETE", "/admin/v1/apis/summarise", None).await;
    assert_eq!(status, 204);
    let (status, _) = admin(&gw, "DELETE", "/admin/v1/ai/models/smart", None).await;
    assert_eq!(status, 204);
    let res = chat().await.unwrap();
    assert_eq!(res.status(), 404);
}
