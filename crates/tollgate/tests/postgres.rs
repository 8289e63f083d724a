//! Whole gateways on PostgreSQL (`storage.database: postgres://…`), each
//! test in a schema of its own: admin writes followed by the data plane, a
//! SIGKILL during a stream of writes, and two nodes sharing one database.
//! Skipped, saying why, without a PostgreSQL server (see
//! `tollgate_store::testing`); CI has one.

mod common;

use std::time::{Duration, Instant};

use tollgate_store::testing::PgSchema;
use tollgate_testkit::serde_json::{json, Value};
use tollgate_testkit::{upstream, Gateway};

const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
/// Nodes sharing a database share their master key too.
const MASTER_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

async fn start(schema: &PgSchema, yaml: &str) -> Gateway {
    common::gateway()
        .config(&format!(
            "storage: {{ database: '{}' }}\n{yaml}",
            schema.url()
        ))
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TOLLGATE_MASTER_KEY", MASTER_KEY)
        .start()
        .await
}

async fn admin(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    common::admin_call(gw, ADMIN_TOKEN, method, path, body).await
}

async fn status(gw: &Gateway, path: &str) -> u16 {
    gw.client()
        .get(gw.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn service(name: &str, url: &str) -> Value {
    json!({ "name": name, "upstream": { "targets": [{ "url": url }] } })
}

fn api(name: &str, service: &str, path: &str) -> Value {
    json!({ "name": name, "service": service, "match": { "paths": [path] } })
}

/// Polls `path` on `gw` until it answers `want`, for up to `within`.
async fn until_status(gw: &Gateway, path: &str, want: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = status(gw, path).await;
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{path}: {got}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn resources_are_created_patched_and_deleted_on_postgres() {
    let Some(schema) = PgSchema::create("resources_are_created_patched_and_deleted_on_postgres")
    else {
        return;
    };
    let up = upstream::echo("u");
    let gw = start(&schema, "").await;
    assert_eq!(status(&gw, "/orders").await, 404);
    let (code, body) = admin(
        &gw,
        "POST",
        "/admin/v1/services",
        Some(service("orders", &up.url())),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = admin(
        &gw,
        "POST",
        "/admin/v1/apis",
        Some(api("orders-v1", "orders", "/orders")),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(status(&gw, "/orders/1").await, 200);
    let (code, body) = admin(
        &gw,
        "POST",
        "/admin/v1/apis",
        Some(api("orders-v1", "orders", "/x")),
    )
    .await;
    assert_eq!(code, 409, "{body}");

    let patch = json!({ "match": { "paths": ["/v2/orders"] } });
    let (code, body) = admin(&gw, "PATCH", "/admin/v1/apis/orders-v1", Some(patch)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(status(&gw, "/v2/orders").await, 200);
    assert_eq!(status(&gw, "/orders").await, 404);

    let (code, _) = admin(&gw, "DELETE", "/admin/v1/apis/orders-v1", None).await;
    assert_eq!(code, 204);
    assert_eq!(status(&gw, "/v2/orders").await, 404);
    let (code, audit) = admin(&gw, "GET", "/admin/v1/audit?kind=apis", None).await;
    assert_eq!(code, 200, "{audit}");
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["delete", "update", "create"]);

    // Access records land in PostgreSQL too.
    let store = schema.open();
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.count_access_records().unwrap() == 0 {
        assert!(Instant::now() < deadline, "no access record in PostgreSQL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_node_on_postgres_killed_during_writes_keeps_every_acknowledged_change() {
    let Some(schema) = PgSchema::create("a_node_on_postgres_killed_during_writes") else {
        return;
    };
    let up = upstream::echo("u");
    let mut gw = start(
        &schema,
        &format!(
            "services: [{{ name: s, upstream: {{ targets: [{{ url: '{}' }}] }} }}]\n",
            up.url()
        ),
    )
    .await;
    let client = gw.client();
    let admin_url = gw.admin_url();
    let writer = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        for i in 0.. {
            let sent = client
                .post(format!("{admin_url}/admin/v1/apis"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&api(&format!("a{i}"), "s", &format!("/p{i}")))
                .send()
                .await;
            match sent {
                Ok(res) if res.status().as_u16() == 201 => acknowledged.push(i),
                _ => return (acknowledged, i),
            }
        }
        unreachable!()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.kill().await;
    let (acknowledged, in_flight) = writer.await.unwrap();
    assert!(
        acknowledged.len() >= 3,
        "only {} writes",
        acknowledged.len()
    );

    gw.restart(&[]).await;
    let (code, listed) = admin(&gw, "GET", "/admin/v1/apis?limit=1000", None).await;
    assert_eq!(code, 200, "{listed}");
    let mut stored: Vec<u32> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap()[1..].parse().unwrap())
        .collect();
    stored.sort_unstable();
    let mut expected = acknowledged.clone();
    if stored.len() == expected.len() + 1 {
        expected.push(in_flight);
    }
    assert_eq!(stored, expected);
    for i in &stored {
        assert_eq!(status(&gw, &format!("/p{i}")).await, 200, "/p{i}");
    }
}

#[tokio::test]
async fn two_nodes_sharing_a_database_serve_each_others_writes() {
    let Some(schema) = PgSchema::create("two_nodes_sharing_a_database") else {
        return;
    };
    let up = upstream::echo("u");
    let (a, b) = tokio::join!(start(&schema, ""), start(&schema, ""));

    let (code, body) = admin(
        &a,
        "POST",
        "/admin/v1/services",
        Some(service("s", &up.url())),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = admin(&a, "POST", "/admin/v1/apis", Some(api("from-a", "s", "/a"))).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(status(&a, "/a").await, 200);
    let waited = until_status(&b, "/a", 200, Duration::from_secs(3)).await;
    eprintln!("node b served node a's write after {waited:?}");

    let (code, body) = admin(&b, "POST", "/admin/v1/apis", Some(api("from-b", "s", "/b"))).await;
    assert_eq!(code, 201, "{body}");
    until_status(&a, "/b", 200, Duration::from_secs(3)).await;

    let (code, _) = admin(&b, "DELETE", "/admin/v1/apis/from-a", None).await;
    assert_eq!(code, 204);
    until_status(&a, "/a", 404, Duration::from_secs(3)).await;
}

#[tokio::test]
async fn the_master_key_rotates_on_postgres() {
    let Some(schema) = PgSchema::create("the_master_key_rotates_on_postgres") else {
        return;
    };
    let mut gw = start(&schema, "").await;
    let (code, body) = admin(
        &gw,
        "POST",
        "/admin/v1/identity_providers",
        Some(json!({ "name": "corp", "issuer": "https://corp", "secret": "a-shared-secret-of-32-bytes-or-more!" })),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    gw.sigterm();
    gw.wait_exit(Duration::from_secs(10)).await;

    const NEW_KEY: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    let rotated = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "rotate-master-key",
            "--config",
            gw.config_path().to_str().unwrap(),
        ])
        .env("TOLLGATE_MASTER_KEY", MASTER_KEY)
        .env("TOLLGATE_NEW_MASTER_KEY", NEW_KEY)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&rotated.stdout);
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    assert!(stdout.contains("resealed 1 resource(s)"), "{stdout}");

    // The old key opens nothing any more; the new one everything.
    let old_again = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "rotate-master-key",
            "--config",
            gw.config_path().to_str().unwrap(),
        ])
        .env("TOLLGATE_MASTER_KEY", MASTER_KEY)
        .env("TOLLGATE_NEW_MASTER_KEY", NEW_KEY)
        .output()
        .await
        .unwrap();
    assert_eq!(old_again.status.code(), Some(1));
    gw.restart(&[("TOLLGATE_MASTER_KEY", NEW_KEY)]).await;
    let (code, idp) = admin(&gw, "GET", "/admin/v1/identity_providers/corp", None).await;
    assert_eq!(code, 200, "{idp}");
    assert_eq!(idp["secret"], "<redacted>");
}

#[tokio::test]
async fn ai_resources_on_postgres_are_sealed_and_served_by_every_node() {
    let Some(schema) = PgSchema::create("ai_resources_on_postgres") else {
        return;
    };
    const PROVIDER_KEY: &str = "sk-postgres-provider-key-0123456789";
    const APP_KEY: &str = "tg_pg_ai_app_key_0123456789abcdefgh";
    let fake = tollgate_testkit::FakeLlm::start(tollgate_testkit::FakeKind::Anthropic).await;
    let yaml = format!(
        "consumers:\n  - {{ name: app, keys: [{{ value: '{APP_KEY}' }}] }}\n\
         apis:\n  - {{ name: llm, match: {{ paths: [/v1] }}, ai: {{}}, policies: {{ auth: {{ methods: [key] }} }} }}\n"
    );
    let (a, b) = tokio::join!(start(&schema, &yaml), start(&schema, &yaml));
    let (code, body) = admin(
        &a,
        "POST",
        "/admin/v1/ai/providers",
        Some(json!({ "name": "claude", "kind": "anthropic", "keys": [PROVIDER_KEY], "base_url": fake.base_url() })),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = admin(
        &a,
        "POST",
        "/admin/v1/ai/models",
        Some(json!({ "name": "smart", "targets": [{ "provider": "claude", "model": "claude-sonnet-4-5" }] })),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = admin(
        &b,
        "PATCH",
        "/admin/v1/ai/models/smart",
        Some(json!({ "timeout": "30s" })),
    )
    .await;
    // Node b may not have caught up yet: then it refuses the unknown name.
    assert!(code == 200 || code == 404, "{code} {body}");

    // Node b serves the model within a few seconds, with the sealed key.
    let chat = |gw: &Gateway| {
        gw.client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(APP_KEY)
            .json(&json!({ "model": "smart", "messages": [{ "role": "user", "content": "hi" }] }))
            .send()
    };
    let started = Instant::now();
    loop {
        let res = chat(&b).await.unwrap();
        if res.status() == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "node b: {}",
            res.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fake.last_request().unwrap().key(), Some(PROVIDER_KEY));
    let (_, read) = admin(&b, "GET", "/admin/v1/ai/providers/claude", None).await;
    assert_eq!(read["keys"][0], "<redacted>", "{read}");

    // In the database the key is sealed: no row holds it in clear.
    let url = schema.url();
    let rows = tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client.query("SELECT body FROM resources", &[]).unwrap()
    })
    .await
    .unwrap();
    assert!(rows.len() >= 3);
    for row in rows {
        let body: Vec<u8> = row.get(0);
        assert!(
            !body
                .windows(PROVIDER_KEY.len())
                .any(|w| w == PROVIDER_KEY.as_bytes()),
            "a provider key in clear"
        );
    }
}
