//! Access records through a PostgreSQL outage: a running gateway keeps
//! serving, its sink keeps the records in the spool on disk (within
//! `storage.spool.max_size`, dropping and counting past it), and writes
//! them to the database, once each, when it answers again. PostgreSQL is
//! cut with a [`FaultProxy`] between the node and the server. Skipped,
//! saying why, without a PostgreSQL server (see `tollgate_store::testing`);
//! failing in CI.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tollgate_store::testing::PgSchema;
use tollgate_testkit::fault_proxy::FaultProxy;
use tollgate_testkit::{eventually, eventually_some, upstream, Gateway};

const MASTER_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// How long the records may take to arrive once PostgreSQL answers (the
/// sink tries again at most once a second; then one batch per segment).
const CATCH_UP: Duration = Duration::from_secs(15);
/// Requests sent while PostgreSQL is cut.
const DURING: usize = 200;

/// A gateway on `database` in front of `upstream`, with `storage` extra.
async fn node(database: &str, upstream: &str, storage: &str) -> Gateway {
    common::gateway()
        .config(&format!(
            "storage: {{ database: '{database}'{storage} }}\n{}",
            common::simple(&[upstream.to_owned()], "", "")
        ))
        .env("TOLLGATE_MASTER_KEY", MASTER_KEY)
        .start()
        .await
}

/// `GET /` must be served; returns its request id.
async fn request(gw: &Gateway, n: usize) -> String {
    let res = gw
        .client()
        .get(gw.url(&format!("/r/{n}")))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "{}", gw.logs());
    res.headers()["x-request-id"].to_str().unwrap().to_owned()
}

/// How many records each request id has in the database.
async fn stored_ids(url: &str) -> HashMap<String, usize> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let store = tollgate_store::Store::open(&url).unwrap();
        let mut ids = HashMap::new();
        for record in store.recent_access_records(100_000).unwrap() {
            *ids.entry(record.request_id).or_default() += 1;
        }
        ids
    })
    .await
    .unwrap()
}

/// The spool's segment files.
fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect()
}

/// A metric's value on the admin listener's `/metrics`, 0 when absent.
async fn metric(gw: &Gateway, name: &str) -> f64 {
    let text = gw
        .client()
        .get(format!("{}/metrics", gw.admin_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Sends a request (its record's batch is what makes the sink try the
/// database again and write its spool back), pushing its id to `ids`,
/// until `done` says so of what is stored; returns what is stored then.
async fn catch_up(
    gw: &Gateway,
    url: &str,
    ids: &[String],
    done: impl Fn(&HashMap<String, usize>, &[String]) -> bool,
) -> HashMap<String, usize> {
    let deadline = Instant::now() + CATCH_UP;
    // No request carries the spool back: the sink's idle tick does.
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stored = stored_ids(url).await;
        if done(&stored, ids) {
            return stored;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} records stored after {CATCH_UP:?}:\n{}",
            ids.iter().filter(|id| stored.contains_key(*id)).count(),
            ids.len(),
            gw.logs()
        );
    }
}

#[tokio::test]
async fn records_of_an_outage_are_spooled_and_written_once_when_postgres_returns() {
    tokio::time::timeout(
        Duration::from_secs(120),
        records_of_an_outage_are_spooled_and_written_once_body(),
    )
    .await
    .expect("the test finished within 2 minutes");
}

async fn records_of_an_outage_are_spooled_and_written_once_body() {
    let Some(schema) = PgSchema::create("records_of_an_outage_are_spooled_and_written_once") else {
        return;
    };
    let up = upstream::echo("u");
    let proxy = FaultProxy::start(common::pg_server(&schema.url())).await;
    let gw = node(&common::pg_via(&schema.url(), proxy.addr()), &up.url(), "").await;
    // The default spool: in the data directory, beside the gateway's files.
    let spool = gw.dir().join("tollgate-data/access-spool");
    let url = schema.url();

    let mut ids = vec![request(&gw, 0).await];
    eventually(CATCH_UP, || async {
        stored_ids(&url).await.contains_key(&ids[0])
    })
    .await;

    proxy.cut();
    for n in 1..=DURING {
        ids.push(request(&gw, n).await);
    }
    eventually(Duration::from_secs(10), || async {
        !segments(&spool).is_empty()
    })
    .await;
    assert!(metric(&gw, "tollgate_access_spool_bytes").await > 0.0);

    proxy.restore();
    let stored = catch_up(&gw, &url, &ids, |stored, ids| {
        ids.iter().all(|id| stored.contains_key(id))
    })
    .await;
    for id in &ids {
        assert_eq!(stored.get(id), Some(&1), "{id} stored once");
    }
    assert_eq!(stored.len(), ids.len(), "no other record");
    assert!(segments(&spool).is_empty(), "the spool is written back");
    assert_eq!(metric(&gw, "tollgate_access_spool_bytes").await, 0.0);
    assert_eq!(
        metric(&gw, "tollgate_access_spool_dropped_total").await,
        0.0
    );
    // Warned once for the outage, told when it ended.
    let logs = gw.logs();
    assert_eq!(
        logs.matches("access records go to the spool").count(),
        1,
        "{logs}"
    );
    assert!(logs.contains("PostgreSQL answers again"), "{logs}");
    assert!(
        logs.contains("the access-record spool is written to PostgreSQL"),
        "{logs}"
    );
    // Dropped off the runtime: DROP SCHEMA waits for the node's sessions to
    // end, and those going through the fault proxy end only when its relay
    // tasks — on this runtime — run.
    tokio::task::spawn_blocking(move || drop(schema))
        .await
        .unwrap();
}

#[tokio::test]
async fn past_its_bound_the_spool_drops_and_counts_records() {
    tokio::time::timeout(
        Duration::from_secs(120),
        past_its_bound_the_spool_drops_and_counts_records_body(),
    )
    .await
    .expect("the test finished within 2 minutes");
}

async fn past_its_bound_the_spool_drops_and_counts_records_body() {
    let Some(schema) = PgSchema::create("past_its_bound_the_spool_drops_and_counts_records") else {
        return;
    };
    let up = upstream::echo("u");
    let proxy = FaultProxy::start(common::pg_server(&schema.url())).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let gw = node(
        &common::pg_via(&schema.url(), proxy.addr()),
        &up.url(),
        &format!(", spool: {{ path: '{}', max_size: 4KiB }}", spool.display()),
    )
    .await;
    let url = schema.url();
    let first = request(&gw, 0).await;
    eventually(CATCH_UP, || async {
        stored_ids(&url).await.contains_key(&first)
    })
    .await;

    proxy.cut();
    let mut during = Vec::new();
    for n in 1..=DURING {
        during.push(request(&gw, n).await);
    }
    eventually_some(Duration::from_secs(10), || async {
        let dropped = metric(&gw, "tollgate_access_spool_dropped_total").await;
        (dropped > 0.0).then_some(dropped)
    })
    .await;
    let spooled: u64 = segments(&spool)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(spooled > 0 && spooled <= 4096, "{spooled} bytes spooled");

    proxy.restore();
    // The spool is written back with no request to carry it; then a new
    // request's record goes straight to the database.
    let mut sent = during.clone();
    catch_up(&gw, &url, &sent, |_, _| segments(&spool).is_empty()).await;
    sent.push(request(&gw, 10_000).await);
    let stored = catch_up(&gw, &url, &sent, |stored, ids| {
        ids.last().is_some_and(|id| stored.contains_key(id))
    })
    .await;
    // Every request since the cut is either stored, once, or counted as
    // dropped (those sent before the sink tried again met a full spool too).
    let dropped = metric(&gw, "tollgate_access_spool_dropped_total").await as usize;
    let kept = during.iter().filter(|id| stored.contains_key(*id)).count();
    assert!(kept > 0 && dropped > 0);
    assert_eq!(
        sent.iter().filter(|id| stored.contains_key(*id)).count() + dropped,
        sent.len(),
        "kept {kept} of the outage's {DURING}, dropped {dropped}"
    );
    // Early ones were kept; once the spool was full, batches were dropped
    // (whole: a later, smaller batch may still fit).
    assert!(during[..DURING / 2]
        .iter()
        .any(|id| stored.contains_key(id)));
    assert!(stored.values().all(|n| *n == 1));
    assert!(segments(&spool).is_empty());
    tokio::task::spawn_blocking(move || drop(schema))
        .await
        .unwrap();
}
