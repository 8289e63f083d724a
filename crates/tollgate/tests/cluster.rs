//! Several nodes on one PostgreSQL schema: how fast an admin write on one
//! is served by another (LISTEN/NOTIFY), and the node list — heartbeats,
//! a killed node going silent, two nodes given one name. Skipped, saying
//! why, without a PostgreSQL server (see `tollgate_store::testing`); the
//! SQLite node list test always runs.

mod common;

use std::time::{Duration, Instant};

use tollgate_store::testing::PgSchema;
use tollgate_testkit::serde_json::{json, Value};
use tollgate_testkit::{eventually_some, upstream, Gateway};

const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
/// Nodes sharing a database share their master key too.
const MASTER_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A node named `name` on `schema`.
async fn node(schema: &PgSchema, name: &str) -> Gateway {
    common::gateway()
        .config(&format!(
            "storage: {{ database: '{}' }}\nnode: {{ name: {name} }}\n",
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

/// `GET /admin/v1/nodes` on `gw`.
async fn nodes(gw: &Gateway) -> Value {
    let (code, body) = admin(gw, "GET", "/admin/v1/nodes", None).await;
    assert_eq!(code, 200, "{body}");
    body
}

/// The node list's entry named `name`, if listed.
fn entry<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
}

/// An admin write on node A is served by node B within milliseconds: B
/// listens for A's commit's notification instead of waiting for its next
/// one-second poll. Prints the delays measured over 20 writes.
#[tokio::test]
async fn an_admin_write_on_one_node_is_served_by_another_within_milliseconds() {
    let Some(schema) = PgSchema::create("an_admin_write_is_served_by_another_node") else {
        return;
    };
    let up = upstream::echo("u");
    let (a, b) = tokio::join!(node(&schema, "gw-a"), node(&schema, "gw-b"));
    let service = json!({ "name": "s", "upstream": { "targets": [{ "url": up.url() }] } });
    let (code, body) = admin(&a, "POST", "/admin/v1/services", Some(service)).await;
    assert_eq!(code, 201, "{body}");

    const WRITES: usize = 20;
    let mut delays = Vec::with_capacity(WRITES);
    for i in 0..WRITES {
        let path = format!("/p{i}");
        let api = json!({ "name": format!("p{i}"), "service": "s", "match": { "paths": [path] } });
        let (code, body) = admin(&a, "POST", "/admin/v1/apis", Some(api)).await;
        assert_eq!(code, 201, "{body}");
        // From the commit (A's answer) until B serves the new API.
        let committed = Instant::now();
        loop {
            if status(&b, &path).await == 200 {
                break;
            }
            assert!(
                committed.elapsed() < Duration::from_secs(5),
                "node b does not serve {path} 5 s after node a's write\n{}",
                b.logs()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        delays.push(committed.elapsed());
        // Writes spread over the poll's period, so a poll-only follower
        // would show its ~500 ms median.
        tokio::time::sleep(Duration::from_millis(37)).await;
    }
    delays.sort();
    let median = delays[WRITES / 2];
    let max = delays[WRITES - 1];
    eprintln!(
        "propagation from node a's admin write to node b serving it, {WRITES} writes: \
         min {:?}, median {median:?}, max {max:?}",
        delays[0]
    );
    // Loose: the point is that it is not the poll's (~500 ms median).
    assert!(median < Duration::from_millis(250), "median {median:?}");
    assert!(max < Duration::from_millis(1500), "max {max:?}");
}

/// Both nodes are listed by either, up to date and heard from; a node
/// killed with SIGKILL goes silent while the other keeps serving.
#[tokio::test]
async fn nodes_list_each_other_and_a_killed_node_goes_silent() {
    let Some(schema) = PgSchema::create("nodes_list_each_other") else {
        return;
    };
    let up = upstream::echo("u");
    let (a, mut b) = tokio::join!(node(&schema, "gw-a"), node(&schema, "gw-b"));
    let service = json!({ "name": "s", "upstream": { "targets": [{ "url": up.url() }] } });
    let (code, body) = admin(&a, "POST", "/admin/v1/services", Some(service)).await;
    assert_eq!(code, 201, "{body}");
    let api = json!({ "name": "api", "service": "s", "match": { "paths": ["/"] } });
    let (code, body) = admin(&a, "POST", "/admin/v1/apis", Some(api)).await;
    assert_eq!(code, 201, "{body}");

    // Both at the store's revision (after their next heartbeat).
    let list = eventually_some(Duration::from_secs(10), || async {
        let list = nodes(&b).await;
        let current = list["revision"].clone();
        let fresh = ["gw-a", "gw-b"]
            .iter()
            .all(|name| entry(&list, name).is_some_and(|n| n["revision"] == current));
        fresh.then_some(list)
    })
    .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
    for (name, gw) in [("gw-a", &a), ("gw-b", &b)] {
        let n = entry(&list, name).unwrap();
        assert_eq!(n["address"], gw.proxy_addr().to_string(), "{n}");
        assert_eq!(n["version"], env!("CARGO_PKG_VERSION"), "{n}");
        assert_eq!(
            (&n["health"], &n["detail"]),
            (&json!("ok"), &Value::Null),
            "{n}"
        );
        assert_eq!(
            (&n["lagging"], &n["silent"]),
            (&json!(false), &json!(false)),
            "{n}"
        );
        let (started, seen) = (
            n["started_at"].as_i64().unwrap(),
            n["last_seen"].as_i64().unwrap(),
        );
        assert!(started > 1_600_000_000 && seen >= started, "{n}");
    }
    assert_eq!(nodes(&a).await["items"].as_array().unwrap().len(), 2);

    b.kill().await;
    let killed = Instant::now();
    let list = eventually_some(Duration::from_secs(20), || async {
        let list = nodes(&a).await;
        (entry(&list, "gw-b").unwrap()["silent"] == true).then_some(list)
    })
    .await;
    eprintln!(
        "node b listed as silent {:?} after SIGKILL",
        killed.elapsed()
    );
    assert!(
        killed.elapsed() >= Duration::from_secs(8),
        "silent too early: {list}"
    );
    assert_eq!(entry(&list, "gw-a").unwrap()["silent"], false, "{list}");
    assert_eq!(status(&a, "/").await, 200);
}

/// A second node started under a live node's name warns and stays out of
/// the list; the first keeps its row.
#[tokio::test]
async fn a_second_node_of_one_name_warns_and_yields() {
    let Some(schema) = PgSchema::create("a_second_node_of_one_name_yields") else {
        return;
    };
    let first = node(&schema, "twin").await;
    eventually_some(Duration::from_secs(10), || async {
        entry(&nodes(&first).await, "twin").map(|_| ())
    })
    .await;
    let second = node(&schema, "twin").await;
    tollgate_testkit::eventually(Duration::from_secs(15), || async {
        second
            .stderr()
            .contains("another live node, started earlier")
    })
    .await;
    // Once yielded, the row is the first's at every heartbeat.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let list = nodes(&second).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(
        entry(&list, "twin").unwrap()["address"],
        first.proxy_addr().to_string(),
        "{list}"
    );
}

/// On SQLite the one node lists itself, named after the host by default.
#[tokio::test]
async fn the_node_list_on_sqlite_has_the_node_itself() {
    let gw = common::gateway()
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .start()
        .await;
    let list = eventually_some(Duration::from_secs(10), || async {
        let list = nodes(&gw).await;
        (!list["items"].as_array().unwrap().is_empty()).then_some(list)
    })
    .await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    let n = &items[0];
    assert_eq!(n["name"], tollgate_admin::nodes::hostname(), "{n}");
    assert_eq!(n["address"], gw.proxy_addr().to_string(), "{n}");
    assert_eq!(n["revision"], list["revision"], "{list}");
    assert_eq!(
        (&n["lagging"], &n["silent"]),
        (&json!(false), &json!(false)),
        "{n}"
    );
}
