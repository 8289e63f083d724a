//! Schema migrations: numbered SQL scripts applied once each, in order, and
//! recorded in the `migrations` table. Append new ones; never edit old ones.

use rusqlite::{Connection, TransactionBehavior};

use crate::StoreError;

const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE access_records (
        id                  INTEGER PRIMARY KEY,
        ts                  TEXT    NOT NULL,
        request_id          TEXT    NOT NULL,
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
    CREATE INDEX access_records_ts ON access_records (ts);
    CREATE INDEX access_records_request_id ON access_records (request_id);
    CREATE INDEX access_records_api_ts ON access_records (api, ts);",
)];

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
