//! Access records in PostgreSQL: day partitions, COPY text round trips,
//! retention dropping whole days, and the outage spool. Skipped, saying
//! why, without a PostgreSQL server (see `tollgate_store::testing`).

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant, UNIX_EPOCH};

use tollgate_store::testing::PgSchema;
use tollgate_store::{PgStore, Store};
use tollgate_telemetry::{AccessRecord, AiAttempt, AiUsage, Outcome, RecordSink};

/// 2024-05-01T12:00:00Z, in Unix microseconds.
const NOON: u64 = 1_714_564_800_000_000;
const DAY: u64 = 86_400_000_000;

fn record(ts: u64, n: usize) -> AccessRecord {
    AccessRecord {
        ts: UNIX_EPOCH + Duration::from_micros(ts),
        request_id: format!("req-{n}"),
        client_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
        method: "GET".into(),
        host: "api.example.com".to_owned(),
        path: format!("/orders/{n}"),
        api: Some("orders".into()),
        service: None,
        consumer: None,
        status: 200,
        upstream_status: None,
        upstream_addr: None,
        latency_ms: 1.5,
        upstream_latency_ms: None,
        bytes_in: 0,
        bytes_out: 10,
        outcome: Outcome::Allowed,
        reason: None,
        ai: None,
    }
}

fn pg(store: &Store) -> &PgStore {
    match store {
        Store::Postgres(store) => store,
        Store::Sqlite(_) => unreachable!("a PostgreSQL schema"),
    }
}

/// The partitions of `access_records` in `schema`, by name.
fn partitions(schema: &PgSchema) -> Vec<String> {
    let mut client = postgres::Client::connect(&schema.url(), postgres::NoTls).unwrap();
    let mut names: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'access_records'::regclass",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    names.sort();
    names
}

fn exists(schema: &PgSchema, table: &str) -> bool {
    let mut client = postgres::Client::connect(&schema.url(), postgres::NoTls).unwrap();
    let found: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&table])
        .unwrap()
        .get(0);
    found.is_some()
}

/// Request ids in the database, sorted.
fn request_ids(store: &Store) -> Vec<String> {
    let mut ids: Vec<String> = store
        .recent_access_records(100_000)
        .unwrap()
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_batch_creates_the_partitions_of_its_days() {
    let Some(schema) = PgSchema::create("a_batch_creates_the_partitions_of_its_days") else {
        return;
    };
    let store = schema.open();
    // Two sinks, as two nodes: both create the same days, neither fails.
    let mut first = store.access_record_sink().unwrap();
    let mut second = store.access_record_sink().unwrap();
    let batch: Vec<AccessRecord> = (0..3).map(|n| record(NOON + n as u64 * DAY, n)).collect();
    first.write_batch(&batch).unwrap();
    second.write_batch(&batch).unwrap();
    assert_eq!(
        partitions(&schema),
        [
            "access_records_20240501",
            "access_records_20240502",
            "access_records_20240503"
        ]
    );
    assert_eq!(store.count_access_records().unwrap(), 6);
    // Ids keep growing across partitions.
    let ids: Vec<i64> = store
        .recent_access_records(10)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, [6, 5, 4, 3, 2, 1]);
}

/// Text with every character COPY's text format escapes, NUL left out,
/// and AI attempts as JSON, read back as written.
#[test]
fn escaped_text_round_trips_through_copy() {
    let Some(schema) = PgSchema::create("escaped_text_round_trips_through_copy") else {
        return;
    };
    let store = schema.open();
    let mut tricky = record(NOON, 1);
    tricky.path = "/a\tb\nc\\d\re\\N\\.\u{e9}\0".to_owned();
    tricky.request_id = "\\.".to_owned();
    tricky.consumer = Some("\\N".into());
    tricky.latency_ms = 0.1 + 0.2;
    tricky.ai = Some(Box::new(AiUsage {
        ai_provider: Some("p\tq".into()),
        ai_model: Some("m".into()),
        tokens_in: 3,
        tokens_out: u64::MAX,
        tokens_cached: 0,
        tokens_estimated: true,
        cost_usd: None,
        ttft_ms: Some(12.5),
        attempts: vec![AiAttempt {
            provider: "p\"\\\n".into(),
            model: "m".into(),
            key: 1,
            result: "200".into(),
        }],
        cache: Some("miss"),
    }));
    store
        .access_record_sink()
        .unwrap()
        .write_batch(&[tricky, record(NOON, 2)])
        .unwrap();
    let rows = store.recent_access_records(10).unwrap();
    assert_eq!(rows.len(), 2);
    let row = &rows[1];
    assert_eq!(row.path, "/a\tb\nc\\d\re\\N\\.\u{e9}");
    assert_eq!(row.request_id, "\\.");
    assert_eq!(row.consumer.as_deref(), Some("\\N"));
    assert_eq!(row.service, None);
    assert_eq!(row.latency_ms, 0.1 + 0.2);
    let ai = row.ai.as_ref().expect("AI usage");
    assert_eq!(ai.ai_provider.as_deref(), Some("p\tq"));
    assert_eq!(ai.tokens_out, i64::MAX as u64);
    assert!(ai.tokens_estimated);
    assert_eq!(ai.cost_usd, None);
    assert_eq!(ai.attempts.len(), 1);
    assert_eq!(ai.attempts[0].provider, "p\"\\\n");
    assert_eq!(rows[0].path, "/orders/2");
    assert!(rows[0].ai.is_none());
}

/// Records across three days: retention drops the two old days' tables
/// and deletes the older records of the day `before` falls in.
#[test]
fn retention_drops_whole_days() {
    let Some(schema) = PgSchema::create("retention_drops_whole_days") else {
        return;
    };
    let store = schema.open();
    let mut sink = store.access_record_sink().unwrap();
    let batch: Vec<AccessRecord> = (0..30)
        .map(|n| record(NOON + (n as u64 / 10) * DAY + n as u64, n))
        .collect();
    sink.write_batch(&batch).unwrap();
    assert_eq!(partitions(&schema).len(), 3);

    // Before the fifth record of the third day.
    let before = (NOON + 2 * DAY + 25) as i64;
    assert_eq!(store.prune_access_records(before, 100).unwrap(), 25);
    assert_eq!(partitions(&schema), ["access_records_20240503"]);
    assert!(!exists(&schema, "access_records_20240501"));
    assert!(!exists(&schema, "access_records_20240502"));
    assert_eq!(store.prune_access_records(before, 100).unwrap(), 0);
    assert_eq!(store.count_access_records().unwrap(), 5);

    // A late record of a dropped day finds its partition again.
    sink.write_batch(&[record(NOON, 99)]).unwrap();
    assert_eq!(store.count_access_records().unwrap(), 6);
    assert!(exists(&schema, "access_records_20240501"));
}

/// A sink that cannot reach PostgreSQL keeps its batches in the spool,
/// quickly (no connection attempt per batch); a sink of the next run on
/// the same spool writes them back, in order, once, then its own.
#[test]
fn the_spool_keeps_batches_through_an_outage_and_the_next_run_writes_them() {
    let Some(schema) = PgSchema::create("the_spool_keeps_batches_through_an_outage") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let down = PgStore::unconnected("postgres://postgres@127.0.0.1:1/test").unwrap();
    let mut sink = down
        .access_record_sink()
        .unwrap()
        .with_spool(&spool, 1 << 30)
        .unwrap();
    let started = Instant::now();
    for n in 0..50 {
        sink.write_batch(&[record(NOON + n as u64, n), record(NOON + DAY, 1000 + n)])
            .unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(sink.spooled_bytes() > 0);
    drop(sink);

    let store = schema.open();
    let mut sink = pg(&store)
        .access_record_sink()
        .unwrap()
        .with_spool(&spool, 1 << 30)
        .unwrap();
    sink.write_batch(&[record(NOON, 5000)]).unwrap();
    assert_eq!(sink.spooled_bytes(), 0);
    let mut expected: Vec<String> = (0..50)
        .flat_map(|n| [format!("req-{n}"), format!("req-{}", 1000 + n)])
        .chain(["req-5000".to_owned()])
        .collect();
    expected.sort();
    assert_eq!(request_ids(&store), expected);
    assert_eq!(partitions(&schema).len(), 2);
    // Written in order: the spooled records first.
    let newest = store.recent_access_records(1).unwrap();
    assert_eq!(newest[0].request_id, "req-5000");
    let segments = std::fs::read_dir(&spool).unwrap().count();
    assert_eq!(segments, 0);
}

/// Past its bound the spool drops batches (and keeps the ones before).
#[test]
fn the_spool_stays_within_its_bound() {
    let Some(schema) = PgSchema::create("the_spool_stays_within_its_bound") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let down = PgStore::unconnected("postgres://postgres@127.0.0.1:1/test").unwrap();
    let mut sink = down
        .access_record_sink()
        .unwrap()
        .with_spool(dir.path(), 4096)
        .unwrap();
    for n in 0..200 {
        sink.write_batch(&[record(NOON, n)]).unwrap();
    }
    let spooled = sink.spooled_bytes();
    assert!(spooled > 3000 && spooled <= 4096, "{spooled}");
    drop(sink);

    let store = schema.open();
    let mut sink = pg(&store)
        .access_record_sink()
        .unwrap()
        .with_spool(dir.path(), 4096)
        .unwrap();
    sink.write_batch(&[record(NOON, 5000)]).unwrap();
    let ids = request_ids(&store);
    assert!(ids.len() > 10 && ids.len() < 200, "{}", ids.len());
    // The first batches were kept, the later ones dropped.
    assert!(ids.contains(&"req-0".to_owned()));
    assert!(!ids.contains(&"req-199".to_owned()));
}

/// Without a spool, a batch written while PostgreSQL is unreachable is an
/// error (lost), and trying again waits for the back-off.
#[test]
fn without_a_spool_an_outage_is_an_error() {
    let down = PgStore::unconnected("postgres://postgres@127.0.0.1:1/test").unwrap();
    let mut sink = down.access_record_sink().unwrap();
    let started = Instant::now();
    for n in 0..20 {
        assert!(sink.write_batch(&[record(NOON, n)]).is_err());
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A spool of several segments is written back one segment per batch
/// call, the new batches queueing behind it: every record once, in order.
#[test]
fn a_large_spool_is_written_back_in_steps_and_in_order() {
    let Some(schema) = PgSchema::create("a_large_spool_is_written_back_in_steps") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let down = PgStore::unconnected("postgres://postgres@127.0.0.1:1/test").unwrap();
    let mut sink = down
        .access_record_sink()
        .unwrap()
        .with_spool(dir.path(), 1 << 30)
        .unwrap();
    let long = "x".repeat(1000);
    let mut n = 0;
    // Over two segments of 8 MiB.
    while sink.spooled_bytes() < 17 << 20 {
        let batch: Vec<AccessRecord> = (n..n + 1000)
            .map(|i| {
                let mut r = record(NOON + i as u64, i);
                r.host = long.clone();
                r
            })
            .collect();
        sink.write_batch(&batch).unwrap();
        n += 1000;
    }
    drop(sink);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);

    let store = schema.open();
    let mut sink = pg(&store)
        .access_record_sink()
        .unwrap()
        .with_spool(dir.path(), 1 << 30)
        .unwrap();
    let mut calls = 0;
    loop {
        sink.write_batch(&[record(NOON + DAY, n)]).unwrap();
        n += 1;
        calls += 1;
        if sink.spooled_bytes() == 0 {
            break;
        }
        assert!(calls < 10, "the spool is not shrinking");
    }
    // One segment per call: the three, then the one the calls' own batches
    // queued in meanwhile.
    assert_eq!(calls, 4, "one segment per call");
    let rows = store.recent_access_records(100_000).unwrap();
    assert_eq!(rows.len(), n);
    // Oldest first by id: req-0, req-1, … as written.
    let order: Vec<String> = rows.iter().rev().map(|r| r.request_id.clone()).collect();
    let expected: Vec<String> = (0..n).map(|i| format!("req-{i}")).collect();
    assert_eq!(order, expected);
}

/// Nodes racing to create the same day's partition all write their batch.
#[test]
fn sinks_racing_to_create_a_partition_all_succeed() {
    let Some(schema) = PgSchema::create("sinks_racing_to_create_a_partition") else {
        return;
    };
    let store = schema.open();
    let sinks = 4;
    let days = 5;
    let barrier = std::sync::Barrier::new(sinks);
    std::thread::scope(|scope| {
        for s in 0..sinks {
            let (store, barrier) = (&store, &barrier);
            scope.spawn(move || {
                let mut sink = store.access_record_sink().unwrap();
                for day in 0..days {
                    barrier.wait();
                    let n = s * 100 + day;
                    sink.write_batch(&[record(NOON + day as u64 * DAY, n)])
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(partitions(&schema).len(), days);
    assert_eq!(store.count_access_records().unwrap(), (sinks * days) as u64);
}
