//! Two real gateway processes sharing one Redis (`storage.redis`) act as one
//! gateway for counting: a rate limit admits exactly its limit across both
//! under concurrent load, an AI budget spent on one node is refused on the
//! other, and AI token limits hold across both; a node started while Redis
//! is down admits requests (with `on_store_failure: allow`) and counts once
//! it answers. The Redis
//! server is the test's own; without `redis-server` the tests skip (they fail
//! in CI).

mod common;

use std::sync::Arc;
use std::time::Duration;

use tollgate_testkit::redis_server::RedisServer;
use tollgate_testkit::reqwest::{self, StatusCode};
use tollgate_testkit::serde_json::{json, Value};
use tollgate_testkit::{eventually, futures_util, upstream, FakeKind, FakeLlm, Gateway, Reply};

const APP_KEY: &str = "tg_redis_counters_app_key_0123456789abcdef";

/// A gateway running `yaml` as written, with the `app` key in its environment.
async fn start(yaml: &str) -> Gateway {
    common::start_with_env(yaml, "APP_KEY", APP_KEY).await
}

/// A node of the pair: `yaml` plus the shared Redis and the `app` consumer.
async fn node(redis: &RedisServer, yaml: &str) -> Gateway {
    start(&format!(
        "storage: {{ redis: '{}' }}\n\
         consumers:\n  - name: app\n    keys: [{{ value: env:APP_KEY }}]\n{yaml}",
        redis.url()
    ))
    .await
}

#[tokio::test]
async fn a_rate_limit_admits_exactly_its_limit_across_two_nodes() {
    const REQUESTS: usize = 100;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let up = upstream::echo("orders");
    let yaml = common::limited_orders(
        &format!("storage: {{ redis: '{}' }}", redis.url()),
        &up.url(),
        "{ limit: 30, window: 1m, by: consumer }",
    );
    let nodes = [start(&yaml).await, start(&yaml).await];

    // Separate clients, half on each node, released together.
    let start = Arc::new(tokio::sync::Barrier::new(REQUESTS));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        let gateway = &nodes[i % 2];
        let (client, url) = (gateway.client(), gateway.url("/orders"));
        let start = start.clone();
        tasks.spawn(async move {
            start.wait().await;
            let res = client
                .get(url)
                .header("x-api-key", APP_KEY)
                .send()
                .await
                .unwrap();
            let remaining = res
                .headers()
                .get("ratelimit-remaining")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            (i % 2, res.status(), remaining)
        });
    }
    let mut replies = Vec::new();
    while let Some(reply) = tasks.join_next().await {
        replies.push(reply.unwrap());
    }

    let passed: Vec<_> = replies.iter().filter(|r| r.1 == StatusCode::OK).collect();
    assert_eq!(passed.len(), 30, "{replies:?}");
    assert!(
        replies
            .iter()
            .all(|r| r.1 == StatusCode::OK || r.1 == StatusCode::TOO_MANY_REQUESTS),
        "{replies:?}"
    );
    assert_eq!(up.hits(), 30, "no refused request may reach upstream");
    // Counting on its own, each node would have admitted 30 of its 50.
    // Between them the admitted requests saw every remaining count once:
    // one counter, not two.
    let mut remaining: Vec<u64> = passed.iter().filter_map(|r| r.2).collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..30).collect::<Vec<u64>>());

    // The counter is in Redis, under the default prefix.
    let keys = redis.command(&["KEYS", "tollgate:rl|*"]);
    assert_eq!(keys.lines().count(), 1, "{keys}");
    assert!(keys.ends_with("|consumer:app"), "{keys}");
}

fn ai_yaml(fake: &FakeLlm, policies: &str) -> String {
    format!(
        r#"
ai:
  providers:
    - {{ name: p, kind: openai, keys: [k], base_url: "{}" }}
  models:
    - {{ name: m, targets: [{{ provider: p, model: gpt-4o }}] }}
  prices:
    - {{ provider: p, model: gpt-4o, input: 1000000, output: 0 }}
apis:
  - name: llm
    match: {{ paths: [/v1] }}
    ai: {{}}
    policies:
      auth: {{ methods: [key] }}
      {policies}
"#,
        fake.base_url()
    )
}

async fn chat(gateway: &Gateway, body: &Value) -> reqwest::Response {
    gateway
        .client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(APP_KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn hello() -> Value {
    json!({ "model": "m", "messages": [{ "role": "user", "content": "hello" }] })
}

#[tokio::test]
async fn an_ai_budget_spent_on_one_node_is_refused_on_the_other() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let fake = FakeLlm::start(FakeKind::OpenAi).await;
    // 10 input tokens at $1 each: $10 a call, over the $5 budget at once.
    fake.set_default(Reply::text("ok").with_usage(Some((10, 5, 0))));
    let yaml = ai_yaml(&fake, "ai_budget: { usd: 5, period: day, by: consumer }");
    let (a, b) = (node(&redis, &yaml).await, node(&redis, &yaml).await);

    assert_eq!(chat(&a, &hello()).await.status(), 200);
    // The charge is written after the response: wait until Redis holds it.
    eventually(Duration::from_secs(5), || async {
        let keys = redis.command(&["KEYS", "tollgate:ab|*"]);
        keys.lines()
            .next()
            .is_some_and(|key| redis.command(&["HGET", key, "s"]) == "10000000")
    })
    .await;

    let res = chat(&b, &hello()).await;
    assert_eq!(res.status(), 402, "node B saw node A's spend");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
    assert_eq!(chat(&a, &hello()).await.status(), 402);
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn ai_token_limits_hold_across_two_nodes() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let fake = FakeLlm::start(FakeKind::OpenAi).await;
    fake.set_default(Reply::text("ok").with_usage(Some((10, 490, 0))));
    let yaml = ai_yaml(
        &fake,
        "ai_limits: { tokens_per_minute: 2000, by: consumer }",
    );
    let nodes = [node(&redis, &yaml).await, node(&redis, &yaml).await];
    // Each call reserves its prompt plus 500 output tokens: at most 3 fit
    // in 2000 at once, whatever the node and the concurrency.
    let mut request = hello();
    request["max_tokens"] = json!(500);
    let calls = (0..12).map(|i| chat(&nodes[i % 2], &request));
    let statuses: Vec<u16> = futures_util::future::join_all(calls)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!((1..=3).contains(&ok), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(fake.request_count(), ok);
}

#[tokio::test]
async fn a_node_starts_without_redis_admits_meanwhile_and_counts_once_it_answers() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    redis.stop();
    let up = upstream::echo("orders");
    let yaml = format!(
        r#"
services:
  - name: orders
    upstream: {{ targets: [{{ url: "{}" }}] }}
apis:
  - name: orders
    service: orders
    match: {{ paths: [/orders] }}
    policies:
      auth: {{ methods: [key] }}
      rate_limit: [{{ limit: 1, window: 1m, by: consumer, on_store_failure: allow }}]
"#,
        up.url()
    );
    let gateway = node(&redis, &yaml).await;
    assert!(
        gateway.logs().contains("Redis does not answer"),
        "{}",
        gateway.logs()
    );
    let get = || async {
        gateway
            .client()
            .get(gateway.url("/orders"))
            .header("x-api-key", APP_KEY)
            .send()
            .await
            .unwrap()
            .status()
    };
    // Fail open (`on_store_failure: allow`): the limit of 1 is not enforced
    // while Redis is away.
    for _ in 0..3 {
        assert_eq!(get().await, StatusCode::OK);
    }
    assert!(
        gateway
            .logs()
            .contains("on_store_failure: allow are not enforced"),
        "{}",
        gateway.logs()
    );

    redis.start_again();
    eventually(Duration::from_secs(10), || async {
        get().await == StatusCode::TOO_MANY_REQUESTS
    })
    .await;
}

/// `storage.redis` naming a Redis Cluster (its nodes, comma-separated): two
/// gateways count a limit exactly, with two limits per request (one call
/// per limit, their keys in different slots), and keys land on the node
/// that owns their slot.
#[tokio::test]
async fn two_nodes_count_in_a_redis_cluster() {
    let Some(cluster) = tollgate_testkit::redis_server::RedisCluster::start() else {
        return;
    };
    let up = upstream::echo("orders");
    let yaml = common::limited_orders(
        &format!("storage: {{ redis: '{}' }}", cluster.url()),
        &up.url(),
        "{ limit: 20, window: 1m, by: consumer }, { limit: 500, window: 1m, by: api }",
    );
    let nodes = [start(&yaml).await, start(&yaml).await];
    let calls = (0..60).map(|i| {
        let node = &nodes[i % 2];
        node.client()
            .get(node.url("/orders"))
            .header("x-api-key", APP_KEY)
            .send()
    });
    let statuses: Vec<u16> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        20,
        "{statuses:?}"
    );
    assert_eq!(up.hits(), 20);
    let keys = cluster.keys("tollgate:rl|*");
    assert_eq!(keys.len(), 2, "{keys:?}");
    // Each key is on the node that owns its slot: a plain GET on that node
    // answers it (any other would answer MOVED).
    for key in &keys {
        let owners = cluster
            .nodes()
            .iter()
            .filter(|node| !node.command(&["GET", key]).starts_with("-MOVED"))
            .count();
        assert_eq!(owners, 1, "{key}");
    }
}

/// `rediss://`: the gateway counts in a Redis it reaches over TLS, the
/// server's certificate checked against the CA roots (here the test's own
/// CA, given through `SSL_CERT_FILE` as an operator would extend them).
#[tokio::test]
async fn a_limit_counts_in_a_redis_reached_over_tls() {
    let tls = tollgate_testkit::tls::self_signed(&["localhost"]);
    let Some(redis) = RedisServer::start_tls(&tls.cert_pem_path, &tls.key_pem_path) else {
        return;
    };
    let up = upstream::echo("orders");
    let yaml = common::limited_orders(
        &format!("storage: {{ redis: '{}' }}", redis.tls_url()),
        &up.url(),
        "{ limit: 3, window: 1m, by: consumer, on_store_failure: deny }",
    );
    let gateway = common::gateway()
        .config(&yaml)
        .env("APP_KEY", APP_KEY)
        .env("SSL_CERT_FILE", &tls.cert_pem_path)
        .start()
        .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let res = gateway
            .client()
            .get(gateway.url("/orders"))
            .header("x-api-key", APP_KEY)
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    // `deny` would answer 503 if Redis could not be reached.
    assert_eq!(statuses, [200, 200, 200, 429, 429], "{}", gateway.logs());
    let keys = redis.command(&["KEYS", "tollgate:rl|*"]);
    assert_eq!(keys.lines().count(), 1, "{keys}");

    // Without the CA, the server's certificate is refused: no counting,
    // and `deny` refuses.
    let untrusting = common::gateway()
        .config(&yaml)
        .env("APP_KEY", APP_KEY)
        .start()
        .await;
    let res = untrusting
        .client()
        .get(untrusting.url("/orders"))
        .header("x-api-key", APP_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}
