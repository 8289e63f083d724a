use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant, UNIX_EPOCH};

use tollgate_store::{SqliteStore, StoreError};
use tollgate_telemetry::{AccessLog, AccessRecord, Outcome, RecordSink};

fn record(n: usize) -> AccessRecord {
    AccessRecord {
        ts: UNIX_EPOCH + Duration::from_micros(1_714_564_800_000_000 + n as u64),
        request_id: format!("{n:032x}"),
        client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        method: "POST".to_owned(),
        host: "api.example.com".to_owned(),
        path: format!("/orders/{n}"),
        api: Some("orders".into()),
        service: Some("orders-svc".into()),
        consumer: Some("acme".into()),
        status: 201,
        upstream_status: Some(201),
        upstream_addr: Some("10.0.0.1:8080".into()),
        latency_ms: 3.25,
        upstream_latency_ms: Some(2.5),
        bytes_in: 512,
        bytes_out: u64::MAX,
        outcome: Outcome::Allowed,
        reason: None,
    }
}

fn url(path: &std::path::Path) -> String {
    format!("sqlite://{}", path.display())
}

#[test]
fn creates_the_parent_directory_and_uses_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/tollgate.db");
    let store = SqliteStore::open(&url(&path)).unwrap();
    assert!(path.exists());
    assert_eq!(store.path(), Some(path.as_path()));
    assert_eq!(store.count_access_records().unwrap(), 0);

    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("t.db").display());
    let first = SqliteStore::open(&url).unwrap();
    first
        .access_record_sink()
        .unwrap()
        .write_batch(&[record(0)])
        .unwrap();
    let second = SqliteStore::open(&url).unwrap();
    assert_eq!(second.schema_version().unwrap(), 1);
    assert_eq!(second.count_access_records().unwrap(), 1);
    drop((first, second));

    let conn = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
    let applied: i64 = conn
        .query_row("SELECT count(*) FROM migrations", [], |row| row.get(0))
        .unwrap();
    assert_eq!(applied, 1);
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'access_records' ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        indexes,
        [
            "access_records_api_ts",
            "access_records_request_id",
            "access_records_ts"
        ]
    );
}

#[test]
fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    SqliteStore::open(&url(&path)).unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("INSERT INTO migrations VALUES (99, 'later')", [])
        .unwrap();
    assert!(matches!(
        SqliteStore::open(&url(&path)),
        Err(StoreError::SchemaTooNew {
            found: 99,
            known: 1
        })
    ));
}

#[test]
fn a_batch_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url(&dir.path().join("t.db"))).unwrap();
    let mut sink = store.access_record_sink().unwrap();
    assert_eq!(sink.name(), "sqlite");

    let mut denied = record(1);
    denied.client_ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
    denied.api = None;
    denied.service = None;
    denied.consumer = None;
    denied.status = 404;
    denied.upstream_status = None;
    denied.upstream_addr = None;
    denied.upstream_latency_ms = None;
    denied.outcome = Outcome::Error;
    denied.reason = Some("no_route");
    sink.write_batch(&[record(0), denied]).unwrap();

    assert_eq!(store.count_access_records().unwrap(), 2);
    let rows = store.recent_access_records(10).unwrap();
    assert_eq!(rows.len(), 2);

    let (newest, oldest) = (&rows[0], &rows[1]);
    assert!(newest.id > oldest.id);
    assert_eq!(oldest.ts, "2024-05-01T12:00:00.000000Z");
    assert_eq!(oldest.request_id, format!("{:032x}", 0));
    assert_eq!(oldest.client_ip, "192.0.2.7");
    assert_eq!(oldest.method, "POST");
    assert_eq!(oldest.host, "api.example.com");
    assert_eq!(oldest.path, "/orders/0");
    assert_eq!(oldest.api.as_deref(), Some("orders"));
    assert_eq!(oldest.service.as_deref(), Some("orders-svc"));
    assert_eq!(oldest.consumer.as_deref(), Some("acme"));
    assert_eq!(oldest.status, 201);
    assert_eq!(oldest.upstream_status, Some(201));
    assert_eq!(oldest.upstream_addr.as_deref(), Some("10.0.0.1:8080"));
    assert_eq!(oldest.latency_ms, 3.25);
    assert_eq!(oldest.upstream_latency_ms, Some(2.5));
    assert_eq!(oldest.bytes_in, 512);
    assert_eq!(oldest.bytes_out, i64::MAX as u64, "saturates");
    assert_eq!(oldest.outcome, "allowed");
    assert_eq!(oldest.reason, None);

    assert_eq!(newest.ts, "2024-05-01T12:00:00.000001Z");
    assert_eq!(newest.client_ip, "::1");
    assert_eq!(newest.api, None);
    assert_eq!(newest.upstream_status, None);
    assert_eq!(newest.upstream_latency_ms, None);
    assert_eq!(newest.outcome, "error");
    assert_eq!(newest.reason.as_deref(), Some("no_route"));

    assert_eq!(store.recent_access_records(1).unwrap(), rows[..1]);

    // Same field names as the access record's JSON form.
    let json = serde_json::to_value(&rows[0]).unwrap();
    for field in [
        "ts",
        "request_id",
        "client_ip",
        "method",
        "host",
        "path",
        "api",
        "service",
        "consumer",
        "status",
        "upstream_status",
        "upstream_addr",
        "latency_ms",
        "upstream_latency_ms",
        "bytes_in",
        "bytes_out",
        "outcome",
        "reason",
    ] {
        assert!(json.get(field).is_some(), "{field} missing from {json}");
    }
}

#[test]
fn memory_databases_are_shared_with_their_sink_but_not_each_other() {
    let store = SqliteStore::open("sqlite::memory:").unwrap();
    let other = SqliteStore::open("sqlite::memory:").unwrap();
    assert_eq!(store.path(), None);
    store
        .access_record_sink()
        .unwrap()
        .write_batch(&[record(0), record(1)])
        .unwrap();
    assert_eq!(store.count_access_records().unwrap(), 2);
    assert_eq!(other.count_access_records().unwrap(), 0);
}

#[tokio::test]
async fn the_access_log_writes_through_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url(&dir.path().join("t.db"))).unwrap();
    let log = AccessLog::start(4096, vec![Box::new(store.access_record_sink().unwrap())]);
    for n in 0..1000 {
        log.record(record(n));
    }
    log.flush().await;
    assert_eq!(log.sink_errors(), 0);
    assert_eq!(store.count_access_records().unwrap(), 1000);
    let newest = &store.recent_access_records(1).unwrap()[0];
    assert_eq!(newest.path, "/orders/999");
}

/// A rough throughput check, not a benchmark: prints records per second.
#[test]
fn bulk_insert_sanity() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&url(&dir.path().join("t.db"))).unwrap();
    let mut sink = store.access_record_sink().unwrap();
    let batch: Vec<AccessRecord> = (0..512).map(record).collect();
    let batches = 100;

    let started = Instant::now();
    for _ in 0..batches {
        sink.write_batch(&batch).unwrap();
    }
    let elapsed = started.elapsed();
    let total = batch.len() * batches;
    eprintln!(
        "inserted {total} access records in {elapsed:?} ({:.0}/s)",
        total as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(store.count_access_records().unwrap(), total as u64);
}
