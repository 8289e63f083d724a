//! Limits while Redis is down, with real gateways and a real Redis the test
//! stops and starts again: `on_store_failure: deny` refuses with 503
//! `limit_unavailable`, `local` (the default) admits this node's share of
//! the limit (divided by the live node count: two nodes on one PostgreSQL
//! schema), and once Redis answers again the limit counts there. Without
//! `redis-server` the tests skip (they fail in CI); the two-node test also
//! skips without PostgreSQL.

mod common;

use std::time::Duration;

use tollgate_store::testing::PgSchema;
use tollgate_testkit::redis_server::RedisServer;
use tollgate_testkit::reqwest::StatusCode;
use tollgate_testkit::serde_json::Value;
use tollgate_testkit::{eventually, upstream, Gateway};

const APP_KEY: &str = "tg_redis_failover_app_key_0123456789abcdef";
/// Nodes sharing a database share their admin token and master key.
const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
const MASTER_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

async fn start(yaml: &str) -> Gateway {
    common::gateway()
        .config(yaml)
        .env("APP_KEY", APP_KEY)
        .env("TOLLGATE_MASTER_KEY", MASTER_KEY)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .start()
        .await
}

/// `GET /orders` as `app`: the status and the error code, if any.
async fn get(gateway: &Gateway) -> (StatusCode, Option<String>) {
    let res = gateway
        .client()
        .get(gateway.url("/orders"))
        .header("x-api-key", APP_KEY)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let code = if status.is_success() {
        None
    } else {
        let body: Value = res.json().await.unwrap_or(Value::Null);
        body["error"]["code"].as_str().map(str::to_owned)
    };
    (status, code)
}

/// How many of `n` requests to `gateway` pass; every other one must be a 429.
async fn admitted(gateway: &Gateway, n: usize) -> usize {
    let mut passed = 0;
    for _ in 0..n {
        match get(gateway).await {
            (StatusCode::OK, _) => passed += 1,
            (StatusCode::TOO_MANY_REQUESTS, _) => {}
            other => panic!("{other:?}\n{}", gateway.logs()),
        }
    }
    passed
}

/// Waits until `gateway` counts in Redis again (a request that is not a
/// fallback's answer: the first to pass after the restart).
async fn wait_until_counting_in_redis(gateway: &Gateway, redis: &RedisServer) {
    eventually(Duration::from_secs(10), || async {
        get(gateway).await.0 == StatusCode::OK
            && !redis.command(&["KEYS", "tollgate:rl|*"]).is_empty()
    })
    .await;
}

#[tokio::test]
async fn deny_refuses_with_503_while_redis_is_down_and_enforces_again_after() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let up = upstream::echo("orders");
    let gateway = start(&common::limited_orders(
        &format!("storage: {{ redis: '{}' }}", redis.url()),
        &up.url(),
        "{ limit: 3, window: 1m, by: consumer, on_store_failure: deny }",
    ))
    .await;
    assert_eq!(get(&gateway).await.0, StatusCode::OK);

    redis.stop();
    for _ in 0..3 {
        let (status, code) = get(&gateway).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            gateway.logs()
        );
        assert_eq!(code.as_deref(), Some("limit_unavailable"));
    }
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(r#"tollgate_counter_store_failures_total{mode="deny"}"#),
        "{metrics}"
    );
    // Logged once per outage, not per request.
    let logs = gateway.logs();
    assert_eq!(
        logs.matches("on_store_failure: deny are refused").count(),
        1,
        "{logs}"
    );

    // The new server is empty: the limit starts afresh, in Redis.
    redis.start_again();
    wait_until_counting_in_redis(&gateway, &redis).await;
    assert_eq!(admitted(&gateway, 5).await, 2);
    assert!(
        gateway
            .logs()
            .contains("the shared counter store answers again"),
        "{}",
        gateway.logs()
    );
}

#[tokio::test]
async fn local_admits_the_limit_on_a_single_node_while_redis_is_down() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let up = upstream::echo("orders");
    let gateway = start(&common::limited_orders(
        &format!("storage: {{ redis: '{}' }}", redis.url()),
        &up.url(),
        "{ limit: 3, window: 1m, by: consumer }",
    ))
    .await;
    redis.stop();
    // One live node: its share is the whole limit.
    assert_eq!(admitted(&gateway, 6).await, 3);
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(r#"tollgate_counter_store_failures_total{mode="local"}"#),
        "{metrics}"
    );

    redis.start_again();
    wait_until_counting_in_redis(&gateway, &redis).await;
    assert_eq!(admitted(&gateway, 5).await, 2);
}

#[tokio::test]
async fn local_divides_the_limit_by_the_live_nodes_while_redis_is_down() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let Some(schema) = PgSchema::create("local_divides_the_limit_by_the_live_nodes") else {
        return;
    };
    let up = upstream::echo("orders");
    let storage = |name: &str| {
        format!(
            "storage: {{ database: '{}', redis: '{}' }}\nnode: {{ name: {name} }}",
            schema.url(),
            redis.url()
        )
    };
    let limit = "{ limit: 10, window: 1m, by: consumer, on_store_failure: local }";
    let a = start(&common::limited_orders(&storage("a"), &up.url(), limit)).await;
    let b = start(&common::limited_orders(&storage("b"), &up.url(), limit)).await;
    // Both nodes have seen both heartbeats.
    for node in [&a, &b] {
        eventually(Duration::from_secs(10), || async {
            node.metrics().await.contains("tollgate_live_nodes 2")
        })
        .await;
    }

    redis.stop();
    // 10 across 2 live nodes: 5 on each, counted apart.
    assert_eq!(admitted(&a, 8).await, 5);
    assert_eq!(admitted(&b, 8).await, 5);

    // Back in Redis (empty after the restart): 10 across both nodes.
    redis.start_again();
    wait_until_counting_in_redis(&a, &redis).await;
    let mut passed = 1;
    for i in 0..20 {
        passed += admitted(if i % 2 == 0 { &a } else { &b }, 1).await;
    }
    assert_eq!(passed, 10);
}
