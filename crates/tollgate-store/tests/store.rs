use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant, UNIX_EPOCH};

mod common;

use common::Db;
use tollgate_store::{SqliteStore, Store, StoreError, StoredAiAttempt, StoredAiUsage};
use tollgate_telemetry::{AccessLog, AccessRecord, AiAttempt, AiUsage, Outcome, RecordSink};

fn record(n: usize) -> AccessRecord {
    AccessRecord {
        ts: UNIX_EPOCH + Duration::from_micros(1_714_564_800_000_000 + n as u64),
        request_id: format!("{n:032x}"),
        client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        method: "POST".into(),
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
        ai: None,
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
    assert_eq!(second.schema_version().unwrap(), 9);
    assert_eq!(second.count_access_records().unwrap(), 1);
    drop((first, second));

    let conn = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
    let applied: i64 = conn
        .query_row("SELECT count(*) FROM migrations", [], |row| row.get(0))
        .unwrap();
    assert_eq!(applied, 9);
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'access_records' ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // No index on request_id, nor on consumer, and spans instead of time
    // and API indexes: see the schema's comments.
    assert_eq!(indexes, ["access_records_exceptional"]);
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
            known: 9
        })
    ));
}

fn a_batch_round_trips(db: &Db) {
    let store = db.open();
    let mut sink = store.access_record_sink().unwrap();
    assert_eq!(sink.name(), store.backend());

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

/// The sink binds only the values that changed since the record before:
/// every field must still land in its own row.
fn fields_repeated_or_changed_between_records_round_trip(db: &Db) {
    let store = db.open();
    let mut sink = store.access_record_sink().unwrap();
    let mut records = Vec::new();
    for n in 0..12 {
        let mut r = record(n);
        r.path = format!("/{}", n / 3);
        if n % 2 == 1 {
            r.client_ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
            r.api = None;
            r.upstream_status = None;
            r.reason = Some("no_route");
        }
        if n % 4 == 0 {
            r.method = "GET".into();
            r.consumer = None;
            r.bytes_out = 7;
            r.outcome = Outcome::Denied;
        }
        records.push(r);
    }
    // Two batches: the second starts with fields equal to the first's last.
    sink.write_batch(&records[..5]).unwrap();
    sink.write_batch(&records[5..]).unwrap();

    let mut rows = store.recent_access_records(100).unwrap();
    rows.reverse();
    assert_eq!(rows.len(), records.len());
    for (row, r) in rows.iter().zip(&records) {
        let api = r.api.as_deref().map(str::to_owned);
        let consumer = r.consumer.as_deref().map(str::to_owned);
        assert_eq!(row.request_id, r.request_id);
        assert_eq!(row.client_ip, r.client_ip.to_string(), "{}", r.request_id);
        assert_eq!(row.method, r.method, "{}", r.request_id);
        assert_eq!(row.path, r.path, "{}", r.request_id);
        assert_eq!(row.api, api, "{}", r.request_id);
        assert_eq!(row.consumer, consumer, "{}", r.request_id);
        assert_eq!(row.upstream_status, r.upstream_status, "{}", r.request_id);
        assert_eq!(row.bytes_out, r.bytes_out.min(i64::MAX as u64));
        assert_eq!(row.outcome, r.outcome.as_str(), "{}", r.request_id);
        assert_eq!(row.reason.as_deref(), r.reason, "{}", r.request_id);
    }
}

/// Every field of an AI call's usage, odd values included.
fn ai_usage(n: usize) -> AiUsage {
    AiUsage {
        ai_provider: Some("openai-main".to_owned()),
        ai_model: Some(format!("gpt-4o-\"{n}\" é")),
        tokens_in: 1200 + n as u64,
        tokens_out: 345,
        tokens_cached: 1024,
        tokens_estimated: true,
        cost_usd: Some(0.004_275),
        ttft_ms: Some(812.5),
        attempts: vec![
            AiAttempt {
                provider: "openai-main".to_owned(),
                model: "gpt-4o".to_owned(),
                key: 1,
                result: "429".to_owned(),
            },
            AiAttempt {
                provider: "openai-main".to_owned(),
                model: "gpt-4o".to_owned(),
                key: 2,
                result: "200".to_owned(),
            },
        ],
        cache: Some("miss"),
    }
}

/// The fields of an AI call's usage in an access record's JSON form.
const AI_FIELDS: [&str; 10] = [
    "ai_provider",
    "ai_model",
    "tokens_in",
    "tokens_out",
    "tokens_cached",
    "tokens_estimated",
    "cost_usd",
    "ttft_ms",
    "attempts",
    "cache",
];

fn ai_records_round_trip_with_every_field(db: &Db) {
    let store = db.open();
    let mut sink = store.access_record_sink().unwrap();
    let mut full = record(0);
    full.ai = Some(Box::new(ai_usage(0)));
    // Nothing known but the counts: no provider reached, no price.
    let mut bare = record(1);
    bare.ai = Some(Box::new(AiUsage {
        tokens_in: u64::MAX,
        ..AiUsage::default()
    }));
    let plain = record(2);
    sink.write_batch(&[full.clone(), bare.clone(), plain.clone()])
        .unwrap();

    let mut rows = store.recent_access_records(10).unwrap();
    rows.reverse();
    let ai = rows[0].ai.as_ref().expect("the AI call's usage");
    assert_eq!(ai.ai_provider.as_deref(), Some("openai-main"));
    assert_eq!(ai.ai_model.as_deref(), Some("gpt-4o-\"0\" é"));
    assert_eq!(
        (ai.tokens_in, ai.tokens_out, ai.tokens_cached),
        (1200, 345, 1024)
    );
    assert!(ai.tokens_estimated);
    assert_eq!(ai.cost_usd, Some(0.004_275));
    assert_eq!(ai.ttft_ms, Some(812.5));
    assert_eq!(
        ai.attempts,
        [
            StoredAiAttempt {
                provider: "openai-main".to_owned(),
                model: "gpt-4o".to_owned(),
                key: 1,
                result: "429".to_owned(),
            },
            StoredAiAttempt {
                provider: "openai-main".to_owned(),
                model: "gpt-4o".to_owned(),
                key: 2,
                result: "200".to_owned(),
            },
        ]
    );
    assert_eq!(ai.cache.as_deref(), Some("miss"));
    assert_eq!(
        rows[1].ai,
        Some(StoredAiUsage {
            tokens_in: i64::MAX as u64,
            ..StoredAiUsage::default()
        }),
        "saturated, and nothing else known"
    );
    assert_eq!(rows[2].ai, None);

    // In JSON, the AI fields are the access log line's, at the top level,
    // and absent from a record without AI usage.
    for (row, r) in rows.iter().zip([&full, &bare, &plain]) {
        let got = serde_json::to_value(row).unwrap();
        let mut line = Vec::new();
        r.write_json(&mut line).unwrap();
        let want: serde_json::Value = serde_json::from_slice(&line).unwrap();
        for field in AI_FIELDS {
            match &r.ai {
                None => assert!(got.get(field).is_none(), "{field} in {got}"),
                Some(ai) if field == "tokens_in" && ai.tokens_in == u64::MAX => {
                    assert_eq!(got[field], i64::MAX)
                }
                Some(_) => assert_eq!(got.get(field), want.get(field), "{field}: {got}"),
            }
        }
    }
    assert_eq!(
        serde_json::to_value(&rows[1]).unwrap()["cost_usd"],
        serde_json::Value::Null,
        "an unknown cost is null, not 0"
    );
    let found = store
        .access_records_by_request_id(&full.request_id)
        .unwrap();
    assert_eq!(found, rows[..1]);
}

/// The SQLite sink binds only what changed since the record before: AI
/// records among others, in runs and alone, across batches, each read back
/// with its own AI usage or none.
fn ai_usage_repeated_or_changed_between_records_round_trips(db: &Db) {
    let store = db.open();
    let mut sink = store.access_record_sink().unwrap();
    let mut records = Vec::new();
    for n in 0..16 {
        let mut r = record(n);
        if [1, 2, 3, 5, 8, 9, 12, 15].contains(&n) {
            let mut ai = ai_usage(n / 2);
            if n % 3 == 0 {
                ai.cost_usd = None;
                ai.ttft_ms = None;
                ai.attempts.pop();
                ai.cache = None;
                ai.ai_provider = None;
                ai.tokens_estimated = false;
            }
            r.ai = Some(Box::new(ai));
        }
        records.push(r);
    }
    sink.write_batch(&records[..3]).unwrap();
    sink.write_batch(&records[3..9]).unwrap();
    sink.write_batch(&records[9..]).unwrap();

    let mut rows = store.recent_access_records(100).unwrap();
    rows.reverse();
    assert_eq!(rows.len(), records.len());
    for (row, r) in rows.iter().zip(&records) {
        let want = r.ai.as_deref().map(StoredAiUsage::from);
        assert_eq!(row.ai, want, "{}", r.request_id);
    }
}

fn looks_up_records_by_request_id(db: &Db) {
    let store = db.open();
    let mut sink = store.access_record_sink().unwrap();
    let mut retried = record(7);
    retried.status = 503;
    sink.write_batch(&(0..100).map(record).collect::<Vec<_>>())
        .unwrap();
    sink.write_batch(&[retried]).unwrap();

    let found = store
        .access_records_by_request_id(&format!("{:032x}", 7))
        .unwrap();
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!(
        (found[0].status, found[1].status),
        (503, 201),
        "newest first"
    );
    assert_eq!(found[1].path, "/orders/7");
    assert_eq!(found[1].ts, "2024-05-01T12:00:00.000007Z");
    assert!(store
        .access_records_by_request_id("no-such-request")
        .unwrap()
        .is_empty());
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

/// From inside a Tokio runtime, as the gateway calls it (the PostgreSQL
/// client must not block a runtime thread: see `PgStore`).
fn the_access_log_writes_through_the_sink(db: &Db) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(access_log_writes_through_the_sink(db));
}

async fn access_log_writes_through_the_sink(db: &Db) {
    let store = db.open();
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
fn bulk_insert_sanity(db: &Db) {
    let store = db.open();
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
        "{}: inserted {total} access records in {elapsed:?} ({:.0}/s)",
        store.backend(),
        total as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(store.count_access_records().unwrap(), total as u64);
}

#[cfg(unix)]
#[test]
fn a_new_database_and_its_wal_are_readable_by_the_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("tollgate.db");
    let store = tollgate_store::SqliteStore::open(&format!("sqlite://{}", path.display())).unwrap();
    store.admin_token_count().unwrap();
    store
        .insert_admin_token("t", &[7u8; 32], "super_admin")
        .unwrap();
    for file in ["tollgate.db", "tollgate.db-wal"] {
        let mode = std::fs::metadata(dir.path().join("data").join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
}

/// Opening again applies nothing twice and keeps what was written.
fn migrations_apply_once(db: &Db) {
    let first = db.open();
    first
        .access_record_sink()
        .unwrap()
        .write_batch(&[record(0)])
        .unwrap();
    let second = db.open();
    assert_eq!(second.schema_version().unwrap(), 9);
    assert_eq!(second.count_access_records().unwrap(), 1);
}

/// Nodes starting together: each open waits for the migrations' lock, and
/// every one finds the schema complete.
fn nodes_opening_together_migrate_once(db: &Db) {
    let url = db.url();
    let stores: Vec<Store> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| Store::open(&url).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for store in &stores {
        assert_eq!(store.schema_version().unwrap(), 9);
        assert_eq!(store.config_revision().unwrap(), 0);
    }
}

fn records_are_pruned_oldest_first(db: &Db) {
    let store = db.open();
    store
        .access_record_sink()
        .unwrap()
        .write_batch(&(0..10).map(record).collect::<Vec<_>>())
        .unwrap();
    let before = 1_714_564_800_000_000 + 6;
    assert_eq!(store.prune_access_records(before, 4).unwrap(), 4);
    assert_eq!(store.prune_access_records(before, 4).unwrap(), 2);
    assert_eq!(store.prune_access_records(before, 4).unwrap(), 0);
    assert_eq!(store.count_access_records().unwrap(), 4);
    let oldest = store.recent_access_records(10).unwrap().pop().unwrap();
    assert_eq!(oldest.path, "/orders/6");

    // The newest record pruned (a long request's, written last with the
    // oldest time): SQLite numbers the next ones from the largest id left.
    // Each record is found once all the same, by any query.
    let mut sink = store.access_record_sink().unwrap();
    let mut late = record(10);
    late.ts = UNIX_EPOCH + Duration::from_secs(1);
    sink.write_batch(&[late]).unwrap();
    assert_eq!(store.prune_access_records(before, 4).unwrap(), 1);
    sink.write_batch(&(20..25).map(record).collect::<Vec<_>>())
        .unwrap();
    let paths = |store: &Store| -> Vec<String> {
        let page = store
            .query_access_records(&tollgate_store::AccessQuery::default())
            .unwrap();
        page.items.into_iter().map(|r| r.path).collect()
    };
    let want =
        |ns: &[usize]| -> Vec<String> { ns.iter().rev().map(|n| format!("/orders/{n}")).collect() };
    assert_eq!(paths(&store), want(&[6, 7, 8, 9, 20, 21, 22, 23, 24]));
    let found = store
        .access_records_by_request_id(&format!("{:032x}", 20))
        .unwrap();
    assert_eq!(found.len(), 1, "{found:#?}");

    // Everything pruned: ids start again from 1.
    assert_eq!(store.prune_access_records(i64::MAX, 100).unwrap(), 9);
    assert_eq!(store.count_access_records().unwrap(), 0);
    sink.write_batch(&(30..32).map(record).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(paths(&store), want(&[30, 31]));
}

#[test]
fn postgres_refuses_a_newer_schema() {
    let Some(schema) = tollgate_store::testing::PgSchema::create("postgres_refuses_a_newer_schema")
    else {
        return;
    };
    schema.open();
    let mut client = postgres::Client::connect(&schema.url(), postgres::NoTls).unwrap();
    client
        .execute("INSERT INTO migrations (version) VALUES (99)", &[])
        .unwrap();
    assert!(matches!(
        Store::open(&schema.url()),
        Err(StoreError::SchemaTooNew {
            found: 99,
            known: 9
        })
    ));
}

#[test]
fn unreachable_postgres_is_an_error_not_a_hang() {
    let started = Instant::now();
    let error = Store::open("postgres://postgres@127.0.0.1:1/test?connect_timeout=2");
    assert!(matches!(error, Err(StoreError::Postgres(_))));
    assert!(started.elapsed() < Duration::from_secs(5));
}

both!(
    a_batch_round_trips,
    fields_repeated_or_changed_between_records_round_trip,
    ai_records_round_trip_with_every_field,
    ai_usage_repeated_or_changed_between_records_round_trips,
    looks_up_records_by_request_id,
    the_access_log_writes_through_the_sink,
    bulk_insert_sanity,
    migrations_apply_once,
    nodes_opening_together_migrate_once,
    records_are_pruned_oldest_first,
);
