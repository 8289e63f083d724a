//! The snapshot cache (`storage.snapshot_cache`) and PostgreSQL outages: a
//! node writes the configuration it serves to its cache, sealed; a node
//! started while PostgreSQL is unreachable serves that cache and catches up
//! when the database returns; a running node keeps serving through a cut.
//! PostgreSQL is cut with a [`FaultProxy`] between the node and the server.
//! Skipped, saying why, without a PostgreSQL server (see
//! `tollgate_store::testing`); failing in CI.

mod common;

use std::path::Path;
use std::time::Duration;

use tollgate_store::testing::PgSchema;
use tollgate_testkit::fault_proxy::FaultProxy;
use tollgate_testkit::serde_json::{json, Value};
use tollgate_testkit::{eventually, upstream, Gateway, Upstream};

const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
/// Nodes sharing a database share their master key too.
const MASTER_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const CONSUMER_KEY: &str = "tg_consumer_key_in_the_cache_0123456789abcdef";
const PROVIDER_KEY: &str = "sk-provider-key-in-the-cache-0123456789";
/// How long a node may take to catch up after PostgreSQL returns (its
/// reconnection backs off up to 3 s; then notifications and the 1 s poll).
const CATCH_UP: Duration = Duration::from_secs(15);

/// A node on `database`, with its snapshot cache at `cache` when given.
async fn node(database: &str, name: &str, cache: Option<&Path>) -> Gateway {
    let cache = cache.map_or_else(String::new, |p| {
        format!(", snapshot_cache: '{}'", p.display())
    });
    common::gateway()
        .config(&format!(
            "storage: {{ database: '{database}'{cache} }}\nnode: {{ name: {name} }}\n"
        ))
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TOLLGATE_MASTER_KEY", MASTER_KEY)
        .start()
        .await
}

async fn admin(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let method = tollgate_testkit::reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = gw
        .client()
        .request(method, format!("{}{path}", gw.admin_url()))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(10));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let res = request.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    let body = tollgate_testkit::serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// `GET path` with the consumer's key.
async fn status(gw: &Gateway, path: &str) -> u16 {
    gw.client()
        .get(gw.url(path))
        .header("x-api-key", CONSUMER_KEY)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A consumer with a key, an AI provider with a key, and `/orders` behind
/// key auth, written through `gw`'s admin API.
async fn seed(gw: &Gateway, up: &Upstream) {
    let writes = [
        (
            "/admin/v1/consumers",
            json!({ "name": "app", "keys": [{ "value": CONSUMER_KEY }] }),
        ),
        (
            "/admin/v1/ai/providers",
            json!({ "name": "p", "kind": "openai", "keys": [PROVIDER_KEY], "base_url": up.url() }),
        ),
        (
            "/admin/v1/services",
            json!({ "name": "s", "upstream": { "targets": [{ "url": up.url() }] } }),
        ),
        (
            "/admin/v1/apis",
            json!({ "name": "orders", "service": "s", "match": { "paths": ["/orders"] },
                    "policies": { "auth": { "methods": ["key"] } } }),
        ),
    ];
    for (path, body) in writes {
        let (code, answer) = admin(gw, "POST", path, Some(body)).await;
        assert_eq!(code, 201, "{path}: {answer}");
    }
}

/// An API at `path` (named after it) on the service `s`.
fn api(path: &str) -> Value {
    json!({ "name": path.trim_start_matches('/'), "service": "s", "match": { "paths": [path] } })
}

/// (a) A node through the proxy writes its cache, sealed; (b) with
/// PostgreSQL cut, a node started on a copy of that cache serves its routes
/// and refuses changes with 503; restored, it catches up with a write made
/// on another node meanwhile and takes changes again.
#[tokio::test]
async fn a_node_started_during_an_outage_serves_its_cache_and_catches_up() {
    // A hang (seen once when these ran together) fails instead of stalling CI.
    tokio::time::timeout(
        Duration::from_secs(120),
        a_node_started_during_an_outage_serves_its_cache_and_catches_up_body(),
    )
    .await
    .expect("the test finished within 2 minutes");
}

async fn a_node_started_during_an_outage_serves_its_cache_and_catches_up_body() {
    let Some(schema) = PgSchema::create("a_node_started_during_an_outage_serves_its_cache") else {
        return;
    };
    let up = upstream::echo("u");
    let proxy = FaultProxy::start(common::pg_server(&schema.url())).await;
    let proxied = common::pg_via(&schema.url(), proxy.addr());
    let direct = node(&schema.url(), "gw-direct", None).await;
    seed(&direct, &up).await;

    let dir = tempfile::tempdir().unwrap();
    let first_cache = dir.path().join("first/last-good.snapshot");
    let first = node(&proxied, "gw-first", Some(&first_cache)).await;
    assert_eq!(status(&first, "/orders").await, 200, "{}", first.logs());
    eventually(Duration::from_secs(5), || async { first_cache.exists() }).await;
    let sealed = std::fs::read(&first_cache).unwrap();
    let text = String::from_utf8_lossy(&sealed);
    for secret in [CONSUMER_KEY, PROVIDER_KEY, "orders"] {
        assert!(
            !text.contains(secret),
            "the cache holds {secret:?} in clear"
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first_cache)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the cache is private");
    }

    proxy.cut();
    let second_cache = dir.path().join("second/last-good.snapshot");
    std::fs::create_dir_all(second_cache.parent().unwrap()).unwrap();
    std::fs::copy(&first_cache, &second_cache).unwrap();
    let second = node(&proxied, "gw-second", Some(&second_cache)).await;
    assert_eq!(status(&second, "/orders").await, 200, "{}", second.logs());
    assert_eq!(status(&second, "/orders-no-key").await, 404);
    assert!(
        second.logs().contains("from the snapshot cache"),
        "{}",
        second.logs()
    );
    let (code, body) = admin(&second, "POST", "/admin/v1/apis", Some(api("/refused"))).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");

    // Made while the second node cannot see the database.
    let (code, body) = admin(&direct, "POST", "/admin/v1/apis", Some(api("/later"))).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(status(&second, "/later").await, 404);

    proxy.restore();
    eventually(CATCH_UP, || async {
        status(&second, "/later").await == 200
    })
    .await;
    assert!(
        second
            .logs()
            .contains("no longer serving from the snapshot cache"),
        "{}",
        second.logs()
    );
    let (code, body) = admin(&second, "POST", "/admin/v1/apis", Some(api("/after"))).await;
    assert_eq!(code, 201, "{body}");
    eventually(CATCH_UP, || async {
        status(&direct, "/after").await == 200
    })
    .await;
    eventually(CATCH_UP, || async { status(&first, "/after").await == 200 }).await;
    // Dropped off the runtime: DROP SCHEMA waits for the nodes' sessions to
    // end, and those going through the fault proxy end only when its relay
    // tasks — on this runtime — run (dropping it here deadlocked now and then).
    tokio::task::spawn_blocking(move || drop(schema))
        .await
        .unwrap();
}

/// (c) A running node keeps serving its snapshot through a cut, refuses
/// changes with 503, and catches up with a write made meanwhile once
/// PostgreSQL returns.
#[tokio::test]
async fn a_running_node_keeps_serving_through_a_cut_and_catches_up() {
    // A hang (seen once when these ran together) fails instead of stalling CI.
    tokio::time::timeout(
        Duration::from_secs(120),
        a_running_node_keeps_serving_through_a_cut_and_catches_up_body(),
    )
    .await
    .expect("the test finished within 2 minutes");
}

async fn a_running_node_keeps_serving_through_a_cut_and_catches_up_body() {
    let Some(schema) = PgSchema::create("a_running_node_keeps_serving_through_a_cut") else {
        return;
    };
    let up = upstream::echo("u");
    let proxy = FaultProxy::start(common::pg_server(&schema.url())).await;
    let proxied = common::pg_via(&schema.url(), proxy.addr());
    let direct = node(&schema.url(), "gw-direct", None).await;
    seed(&direct, &up).await;
    let dir = tempfile::tempdir().unwrap();
    let cut = node(&proxied, "gw-cut", Some(&dir.path().join("cache"))).await;
    assert_eq!(status(&cut, "/orders").await, 200);

    proxy.cut();
    for _ in 0..10 {
        assert_eq!(status(&cut, "/orders").await, 200, "{}", cut.logs());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (code, body) = admin(&cut, "POST", "/admin/v1/apis", Some(api("/refused"))).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    let (code, body) = admin(&direct, "POST", "/admin/v1/apis", Some(api("/during"))).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(status(&cut, "/during").await, 404);

    proxy.restore();
    eventually(CATCH_UP, || async { status(&cut, "/during").await == 200 }).await;
    assert_eq!(status(&cut, "/orders").await, 200);
    let (code, body) = admin(&cut, "POST", "/admin/v1/apis", Some(api("/after"))).await;
    assert_eq!(code, 201, "{body}");
    // Dropped off the runtime: DROP SCHEMA waits for the nodes' sessions to
    // end, and those going through the fault proxy end only when its relay
    // tasks — on this runtime — run (dropping it here deadlocked now and then).
    tokio::task::spawn_blocking(move || drop(schema))
        .await
        .unwrap();
}

/// Without a cache, a node started while PostgreSQL is unreachable exits,
/// saying so.
#[tokio::test]
async fn without_a_cache_a_node_started_during_an_outage_exits() {
    // A hang (seen once when these ran together) fails instead of stalling CI.
    tokio::time::timeout(
        Duration::from_secs(120),
        without_a_cache_a_node_started_during_an_outage_exits_body(),
    )
    .await
    .expect("the test finished within 2 minutes");
}

async fn without_a_cache_a_node_started_during_an_outage_exits_body() {
    let Some(schema) = PgSchema::create("without_a_cache_a_node_started_during_an_outage_exits")
    else {
        return;
    };
    let proxy = FaultProxy::start(common::pg_server(&schema.url())).await;
    proxy.cut();
    let mut gw = common::gateway()
        .config(&format!(
            "storage: {{ database: '{}' }}\n",
            common::pg_via(&schema.url(), proxy.addr())
        ))
        .env("TOLLGATE_MASTER_KEY", MASTER_KEY)
        .spawn();
    let exit = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(!exit.success());
    assert!(
        gw.stderr().contains("there is no snapshot cache"),
        "{}",
        gw.stderr()
    );
    // Dropped off the runtime: DROP SCHEMA waits for the nodes' sessions to
    // end, and those going through the fault proxy end only when its relay
    // tasks — on this runtime — run (dropping it here deadlocked now and then).
    tokio::task::spawn_blocking(move || drop(schema))
        .await
        .unwrap();
}
