//! Schema migrations: numbered SQL scripts applied once each, in order, and
//! recorded in the `migrations` table. Append new ones; never edit old ones.

use rusqlite::{Connection, TransactionBehavior};

use crate::StoreError;

const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        // Written by the access log thread on the core the proxy runs on, so
        // every insert is kept cheap (measure with the `sink_bench` example):
        //
        // - `ts` is Unix microseconds (INTEGER): no date formatting per insert,
        //   and a smaller key for the time indexes.
        // - Only indexes whose inserts land at their end: `ts` grows with time,
        //   and `(api, ts)` grows at the end of each API's range.
        // - No index on `request_id`: request ids are random, and inserts at
        //   random places in a large index dirty about one page per record, which
        //   each commit writes to the WAL and each checkpoint again to the
        //   database. With 2M records in the table, inserts cost ~30 µs a record
        //   with an index on `request_id`, ~25 µs with one on a 32-bit hash of
        //   it, ~3 µs with neither.
        //   Instead `request_id_hash` (FNV-1a, see `sink::request_id_hash`) rides
        //   at the end of the `ts` index, which stays append-only: a lookup by
        //   request id scans that index (~25 bytes a record, a sixth of the
        //   table; ~0.1 s for 2M records) instead of the table, or only a time
        //   range of it when the time is known. See
        //   `SqliteStore::access_records_by_request_id`.
        "CREATE TABLE access_records (
        id                  INTEGER PRIMARY KEY,
        ts                  INTEGER NOT NULL, -- Unix microseconds, UTC
        request_id          TEXT    NOT NULL,
        request_id_hash     INTEGER NOT NULL, -- sink::request_id_hash(request_id)
        client_ip           TEXT    NOT NULL,
        method              TEXT    NOT NULL,
        host                TEXT    NOT NULL,
        path                TEXT    NOT NULL,
        api                 TEXT,
        service             TEXT,
        consumer            TEXT,
        status              INTEGER NOT NULL,
        upstream_status     INTEGER,
        upstream_addr       TEXT,
        latency_ms          REAL    NOT NULL,
        upstream_latency_ms REAL,
        bytes_in            INTEGER NOT NULL,
        bytes_out           INTEGER NOT NULL,
        outcome             TEXT    NOT NULL,
        reason              TEXT
    );
    CREATE INDEX access_records_ts ON access_records (ts, request_id_hash);
    CREATE INDEX access_records_api_ts ON access_records (api, ts);",
    ),
    (
        2,
        // Quota counts, so that a restart does not hand out a fresh quota.
        // Written by the gateway's flusher task (about once a second, only
        // the keys that changed), read once at startup. One row per key and
        // period: the period is part of the key (`q|<scope>|d2025-03-14|<subject>`),
        // and `expires_at` is its end; rows of ended periods are deleted as
        // counts are saved (hence the index).
        "CREATE TABLE quota_counters (
            key        TEXT    PRIMARY KEY,
            expires_at INTEGER NOT NULL, -- Unix seconds, UTC: the end of the period
            count      INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX quota_counters_expires_at ON quota_counters (expires_at);",
    ),
];

/// The highest version this build knows.
fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
}

/// Applies every migration newer than the database's version, in one
/// transaction that holds the write lock, so concurrent openers do not race.
pub(crate) fn run(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS migrations (
            version    INTEGER PRIMARY KEY,
            applied_at TEXT NOT NULL
        )",
    )?;
    let current = current_version(&tx)?;
    if current > latest() {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known: latest(),
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO migrations (version, applied_at)
             VALUES (?1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            [version],
        )?;
        tracing::info!(version, "applied database migration");
    }
    tx.commit()?;
    Ok(())
}

pub(crate) fn current_version(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.query_row(
        "SELECT coalesce(max(version), 0) FROM migrations",
        [],
        |row| row.get(0),
    )
}
