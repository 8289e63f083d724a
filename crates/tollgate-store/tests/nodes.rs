//! The nodes' heartbeat rows on both databases, and PostgreSQL's config
//! change notifications.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::Db;
use serde_json::json;
use tollgate_store::sealing::{MasterKey, Sealer};
use tollgate_store::testing::PgSchema;
use tollgate_store::{ConfigEvent, Expect, NodeHeartbeat, Origin, ResourceWrite, Store};

fn heartbeat(name: &str, instance: &str, revision: i64) -> NodeHeartbeat {
    NodeHeartbeat {
        name: name.into(),
        instance: instance.into(),
        version: "0.1.0".into(),
        address: "127.0.0.1:8000".into(),
        revision,
        degraded: None,
        started_at: 1_000,
    }
}

/// A commit of one team, moving the store's revision.
fn commit(store: &Store, sealer: &Sealer, name: &str) -> i64 {
    store
        .commit(
            sealer,
            None,
            &[ResourceWrite {
                kind: "teams".into(),
                name: name.into(),
                team: None,
                origin: Origin::Admin,
                body: Some(json!({ "name": name })),
                expect: Expect::Anything,
            }],
            &[],
        )
        .unwrap()
}

fn heartbeats_are_upserted_and_listed_by_name(db: &Db) {
    let store = db.open();
    assert!(store.list_nodes().unwrap().is_empty());
    store
        .record_node(&heartbeat("gw-b", "i1", 0), 1_010)
        .unwrap();
    store
        .record_node(&heartbeat("gw-a", "i2", 0), 1_011)
        .unwrap();
    assert_eq!(store.find_node("gw-b").unwrap().unwrap().last_seen, 1_010);

    // The next heartbeat replaces the row.
    let mut degraded = heartbeat("gw-b", "i1", 0);
    degraded.degraded = Some("config: cannot load revision 3".into());
    store.record_node(&degraded, 1_012).unwrap();

    let nodes = store.list_nodes().unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["gw-a", "gw-b"]);
    let b = &nodes[1];
    assert_eq!(
        (b.health.as_str(), b.detail.as_deref(), b.last_seen),
        ("degraded", Some("config: cannot load revision 3"), 1_012)
    );
    assert_eq!(
        (b.version.as_str(), b.address.as_str(), b.started_at),
        ("0.1.0", "127.0.0.1:8000", 1_000)
    );
    assert_eq!(store.find_node("gw-b").unwrap().as_ref(), Some(b));
    assert_eq!(store.find_node("nobody").unwrap(), None);

    // Healthy again: the detail goes.
    store
        .record_node(&heartbeat("gw-b", "i1", 0), 1_013)
        .unwrap();
    let b = store.find_node("gw-b").unwrap().unwrap();
    assert_eq!((b.health.as_str(), b.detail), ("ok", None));

    // Another instance under the same name takes the row over.
    store
        .record_node(&heartbeat("gw-b", "i9", 0), 1_014)
        .unwrap();
    assert_eq!(store.find_node("gw-b").unwrap().unwrap().instance, "i9");

    assert_eq!(
        store.forget_nodes(1_012).unwrap(),
        1,
        "gw-a, last seen at 1011"
    );
    let names: Vec<String> = store
        .list_nodes()
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["gw-b"]);
}

/// `behind_since` is set by the first heartbeat that reports a revision
/// older than the store's, kept while it stays behind, cleared once it
/// catches up.
fn a_node_behind_the_store_is_marked_since_when(db: &Db) {
    let store = db.open();
    let sealer = Sealer::new(MasterKey::generate());
    store.record_node(&heartbeat("gw", "i", 0), 100).unwrap();
    assert_eq!(store.find_node("gw").unwrap().unwrap().behind_since, None);

    let revision = commit(&store, &sealer, "a");
    store.record_node(&heartbeat("gw", "i", 0), 102).unwrap();
    store.record_node(&heartbeat("gw", "i", 0), 104).unwrap();
    let node = store.find_node("gw").unwrap().unwrap();
    assert_eq!((node.revision, node.behind_since), (0, Some(102)));

    store
        .record_node(&heartbeat("gw", "i", revision), 106)
        .unwrap();
    assert_eq!(store.find_node("gw").unwrap().unwrap().behind_since, None);

    // A first heartbeat already behind is marked at once.
    store.record_node(&heartbeat("late", "j", 0), 107).unwrap();
    assert_eq!(
        store.find_node("late").unwrap().unwrap().behind_since,
        Some(107)
    );
}

both!(
    heartbeats_are_upserted_and_listed_by_name,
    a_node_behind_the_store_is_marked_since_when,
);

/// SQLite has one node and no notifications.
#[test]
fn sqlite_has_no_config_listener() {
    let db = Db::sqlite();
    assert!(db.open().listen_config(|_| {}).unwrap().is_none());
}

/// Waits for the next event that is not a `Changed` of another schema's
/// revision (tests run side by side, and channels are per database).
fn next_event(events: &mpsc::Receiver<ConfigEvent>, ours: &[i64]) -> ConfigEvent {
    loop {
        let event = events
            .recv_timeout(Duration::from_secs(15))
            .expect("a config event within 15 s");
        match &event {
            ConfigEvent::Changed {
                revision: Some(revision),
            } if !ours.contains(revision) => continue,
            _ => return event,
        }
    }
}

/// Commits notify the listener, a failed commit does not, and a listener
/// whose connection is killed connects again and says so.
#[test]
fn commits_notify_listeners_which_reconnect() {
    let Some(schema) = PgSchema::create("commits_notify_listeners_which_reconnect") else {
        return;
    };
    // Named, so that only this test's listener is killed below.
    let url = format!("{}&application_name={}", schema.url(), schema.name());
    let store = Store::open(&url).unwrap();
    let sealer = Sealer::new(MasterKey::generate());
    let (tx, events) = mpsc::channel();
    let listener = store
        .listen_config(move |event| {
            let _ = tx.send(event);
        })
        .unwrap()
        .expect("a listener on PostgreSQL");
    assert_eq!(next_event(&events, &[]), ConfigEvent::Listening);

    let first = commit(&store, &sealer, "a");
    assert_eq!(
        next_event(&events, &[first]),
        ConfigEvent::Changed {
            revision: Some(first)
        }
    );
    // Refused (stale): rolled back, so nothing is notified; the next
    // event about a revision of ours is the next commit's (a repeat of the
    // first's, which a listener may deliver, is skipped).
    assert!(store.commit(&sealer, Some(0), &[], &[]).is_err());
    let second = commit(&store, &sealer, "b");
    assert_eq!(
        next_event(&events, &[second]),
        ConfigEvent::Changed {
            revision: Some(second)
        }
    );

    // Kill the listening connection: the listener reports it, listens again.
    let killed = kill_listeners(&store, schema.name());
    assert!(killed >= 1, "no LISTEN connection found");
    assert!(matches!(next_event(&events, &[]), ConfigEvent::Lost { .. }));
    assert_eq!(next_event(&events, &[]), ConfigEvent::Listening);
    let third = commit(&store, &sealer, "c");
    assert_eq!(
        next_event(&events, &[third]),
        ConfigEvent::Changed {
            revision: Some(third)
        }
    );
    drop(listener);
}

/// Terminates the listening connections whose `application_name` is
/// `name`; returns how many.
fn kill_listeners(store: &Store, name: &str) -> u64 {
    let Store::Postgres(_) = store else {
        unreachable!("PostgreSQL only")
    };
    let url = std::env::var(tollgate_store::testing::POSTGRES_URL_ENV)
        .unwrap_or_else(|_| tollgate_store::testing::DEFAULT_POSTGRES_URL.to_owned());
    let name = name.to_owned();
    // The blocking client, off any runtime: this test has none.
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let rows = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = $1 AND query LIKE 'LISTEN%'",
            &[&name],
        )
        .unwrap();
    rows.len() as u64
}
