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
    (
        3,
        // For the admin API.
        //
        // Access record queries (`query.rs`) read newest first by id and page
        // by id, so their indexes are ordered by id within their prefix, with
        // `ts` after it to check a time range without reading the row:
        //
        // - `(api, id, ts)` replaces `(api, ts)`, which could serve an API's
        //   records only by sorting them all. Same insert cost: inserts land
        //   at the end of each API's range either way. Partial: unrouted
        //   requests (a scanner's flood, say) cost it nothing.
        // - Exceptional records — status 400 and over, denied or failed, or
        //   with a reason — get a partial index of every filtered column: the
        //   records an operator looks for are rare, and cost an insert here
        //   only when they happen. Queries on it read no table row that does
        //   not match. Its condition is repeated word for word in
        //   `query::EXCEPTIONAL`. Every other insert pays ~4.5% more
        //   instructions all the same (SQLite opens a cursor on each index
        //   and evaluates the condition per row): worth it for the queries
        //   operators make most.
        // - No index on `consumer`: with many consumers, their ranges' ends
        //   are many places in the index, and each batch dirties a page at
        //   most of them. With 500 consumers (the `query_bench` example's
        //   traffic) inserts cost 3.3 times as much CPU with one. Nor on
        //   `service` (+40% CPU per insert), mostly implied by `api`, nor on
        //   every `status` (+40%). Queries on those scan the table newest
        //   first, stopping at a full page: fast for a common value, up to a
        //   scan of the table (~60 ms a million records) for a rare one.
        //
        // Admin tokens are stored by their SHA-256, never themselves; see
        // `admin_tokens.rs`.
        "DROP INDEX access_records_api_ts;
        CREATE INDEX access_records_api ON access_records (api, id, ts)
            WHERE api IS NOT NULL;
        CREATE INDEX access_records_exceptional ON access_records
            (id, ts, status, outcome, reason, api, service, consumer)
            WHERE status >= 400 OR outcome <> 'allowed' OR reason IS NOT NULL;

        CREATE TABLE admin_tokens (
            id           INTEGER PRIMARY KEY,
            name         TEXT    NOT NULL UNIQUE,
            token_hash   BLOB    NOT NULL UNIQUE CHECK (length(token_hash) = 32), -- SHA-256
            role         TEXT    NOT NULL,
            created_at   INTEGER NOT NULL, -- Unix seconds, UTC
            last_used_at INTEGER           -- Unix seconds, UTC
        );",
    ),
    (
        4,
        // The configuration's resources and their audit trail; see
        // `resources.rs`. `seq` keeps the order resources were created in,
        // which is the order they are compiled in. Bodies are sealed (see
        // `sealing.rs`): only kind, name and team are in clear.
        "CREATE TABLE config_state (
            id       INTEGER PRIMARY KEY CHECK (id = 1),
            revision INTEGER NOT NULL
        );
        INSERT INTO config_state (id, revision) VALUES (1, 0);

        CREATE TABLE resources (
            seq        INTEGER PRIMARY KEY,
            kind       TEXT    NOT NULL,
            name       TEXT    NOT NULL,
            team       TEXT,
            origin     TEXT    NOT NULL CHECK (origin IN ('file', 'admin')),
            body       BLOB    NOT NULL,
            revision   INTEGER NOT NULL, -- config revision of the last write: the ETag
            created_at INTEGER NOT NULL, -- Unix seconds, UTC
            updated_at INTEGER NOT NULL,
            UNIQUE (kind, name)
        );

        CREATE TABLE audit_log (
            id        INTEGER PRIMARY KEY,
            at        INTEGER NOT NULL, -- Unix microseconds, UTC
            revision  INTEGER NOT NULL,
            actor     TEXT    NOT NULL,
            client_ip TEXT,
            action    TEXT    NOT NULL,
            kind      TEXT    NOT NULL,
            name      TEXT    NOT NULL,
            diff      TEXT    NOT NULL  -- JSON, secrets redacted
        );
        CREATE INDEX audit_log_resource ON audit_log (kind, name, id);
        CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
        CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;",
    ),
    (
        5,
        // Admin users (see `users.rs`): a password kept as an argon2id PHC
        // string, memberships (a role in a team, or a global role in team
        // `*`), admin tokens owned by a user, and console sessions by the
        // SHA-256 of their id. Deleting a user deletes its memberships,
        // tokens and sessions (foreign keys are on for every connection).
        // Tokens with no user (the bootstrap token) keep their own `role`.
        "CREATE TABLE users (
            id            INTEGER PRIMARY KEY,
            name          TEXT    NOT NULL UNIQUE,
            password_hash TEXT    NOT NULL, -- argon2id PHC string
            created_at    INTEGER NOT NULL, -- Unix seconds, UTC
            updated_at    INTEGER NOT NULL
        );

        CREATE TABLE memberships (
            user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            team    TEXT    NOT NULL, -- a team's name, or '*' for a global role
            role    TEXT    NOT NULL
                CHECK (role IN ('super_admin', 'team_admin', 'developer', 'auditor')),
            CHECK ((team = '*') = (role IN ('super_admin', 'auditor'))),
            PRIMARY KEY (user_id, team)
        ) WITHOUT ROWID;

        ALTER TABLE admin_tokens
            ADD COLUMN user_id INTEGER REFERENCES users (id) ON DELETE CASCADE;
        CREATE INDEX admin_tokens_user ON admin_tokens (user_id);

        CREATE TABLE sessions (
            id_hash    BLOB    PRIMARY KEY CHECK (length(id_hash) = 32), -- SHA-256
            user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            created_at INTEGER NOT NULL, -- Unix seconds, UTC
            expires_at INTEGER NOT NULL  -- Unix seconds, UTC
        ) WITHOUT ROWID;
        CREATE INDEX sessions_user ON sessions (user_id);",
    ),
    (
        6,
        // What an AI call used and cost (`AccessRecord::ai`), NULL in every
        // column for the other records. `tokens_in` is set for every AI
        // record (its other columns may be NULL: a model not reached, a price
        // unknown), so `tokens_in IS NOT NULL` tells AI records apart.
        // `ai_attempts` is the JSON array of the provider calls made, in
        // order; `tokens_estimated` is 0 or 1.
        //
        // Adding the columns rewrites no row: SQLite reads a row shorter
        // than the table as NULLs at its end. New rows are written to the
        // table's full width, NULLs included, so every insert pays for them:
        // ~5% more instructions per record without AI usage in the
        // `sink_bench` example (sqlite-memory, ~900 a record; less of the
        // total on disk) — the price of keeping a record in one row.
        //
        // No index. The AI aggregates ride the analytics' one pass over the
        // range's records (`analytics.rs`), which no index shortens; and a
        // partial index on `ai_model`, for the logs' filter, measured another
        // ~2.5% on every insert, AI record or not (SQLite opens a cursor on
        // each index of the table per insert). The `ai_model` and
        // `ai_provider` filters scan the table newest first, as `consumer`'s
        // does.
        "ALTER TABLE access_records ADD COLUMN ai_provider TEXT;
        ALTER TABLE access_records ADD COLUMN ai_model TEXT;
        ALTER TABLE access_records ADD COLUMN tokens_in INTEGER;
        ALTER TABLE access_records ADD COLUMN tokens_out INTEGER;
        ALTER TABLE access_records ADD COLUMN tokens_cached INTEGER;
        ALTER TABLE access_records ADD COLUMN tokens_estimated INTEGER; -- 0 or 1
        ALTER TABLE access_records ADD COLUMN cost_usd REAL; -- NULL: no known price
        ALTER TABLE access_records ADD COLUMN ttft_ms REAL;
        ALTER TABLE access_records ADD COLUMN ai_attempts TEXT; -- JSON array
        ALTER TABLE access_records ADD COLUMN ai_cache TEXT; -- hit, miss",
    ),
    (
        7,
        // The nodes serving from this database, one row per node name: each
        // node writes its own about every two seconds (its heartbeat; see
        // tollgate-admin's `nodes`), `GET /admin/v1/nodes` reads them all.
        // A handful of rows: no index but the key.
        //
        // `instance` is random per process start: it tells a node's
        // previous run from another node started under the same name.
        // `behind_since` is when a heartbeat first reported a revision older
        // than the store's (NULL while it serves the latest), so that a
        // node is flagged as lagging only when it stays behind, not for the
        // moment between a commit and its next heartbeat.
        "CREATE TABLE nodes (
            name         TEXT    PRIMARY KEY,
            instance     TEXT    NOT NULL,
            version      TEXT    NOT NULL,
            address      TEXT    NOT NULL, -- the proxy listen address
            revision     INTEGER NOT NULL, -- the config revision it serves
            health       TEXT    NOT NULL CHECK (health IN ('ok', 'degraded')),
            detail       TEXT,             -- what is degraded
            started_at   INTEGER NOT NULL, -- Unix seconds, UTC
            last_seen    INTEGER NOT NULL, -- Unix seconds, UTC
            behind_since INTEGER           -- Unix seconds, UTC
        ) WITHOUT ROWID;",
    ),
    (
        8,
        // PostgreSQL's twin puts access records in day partitions; SQLite
        // keeps one table (one node, retention deletes in batches). No
        // change: the number keeps both dialects' versions the same.
        "-- no change in SQLite",
    ),
    (
        SPANS,
        // Spans replace the `ts` and `api` indexes, which cost the access
        // log's writer ~0.8 µs a record on the proxy's core (`sink_bench`,
        // 2026-12-06: all indexes 1,700–1,880 ns of CPU a record; without
        // these two ~1,000).
        //
        // A span is a run of consecutive record ids (at most
        // `sink::SPAN_RECORDS`), written by the sink in the same
        // transaction as its records: one row per batch, or the newest
        // row updated while it is short, instead of two index entries per
        // record. It holds what queries skip by: the range of its records'
        // `ts` (request start: a long request's record lands after shorter
        // ones, so ranges overlap a little), and the APIs its records name
        // (`,orders,users,`; NULL when there were too many to list, so the
        // span may hold any). Every record is in exactly one span; queries
        // read the spans newest first and, for each that may hold matches,
        // its records by a range of the primary key (see `query.rs`).
        // Retention deletes a span with its last record.
        //
        // Spans for the records already here: one per 1,024 ids.
        "CREATE TABLE access_record_spans (
            first_id INTEGER PRIMARY KEY, -- its oldest record's id
            last_id  INTEGER NOT NULL,    -- its newest record's id
            min_ts   INTEGER NOT NULL,    -- Unix microseconds, UTC
            max_ts   INTEGER NOT NULL,
            apis     TEXT                 -- ',a,b,'; ',' none; NULL any
        );
        INSERT INTO access_record_spans (first_id, last_id, min_ts, max_ts)
            SELECT min(id), max(id), min(ts), max(ts) FROM access_records GROUP BY id >> 10;
        UPDATE access_record_spans SET apis = ',' || coalesce((
            SELECT group_concat(DISTINCT api) || ',' FROM access_records
            WHERE id BETWEEN first_id AND last_id), '');
        DROP INDEX access_records_ts;
        DROP INDEX access_records_api;",
    ),
];

/// The migration that replaced the `ts` and `api` indexes by spans.
pub(crate) const SPANS: i64 = 9;

/// The highest version this build knows.
pub(crate) fn latest() -> i64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A database written by a Tollgate that knew only migrations 1 and 2
    /// keeps its records and gains the new indexes.
    #[test]
    fn upgrades_a_database_at_version_2() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
        )
        .unwrap();
        for (version, sql) in &MIGRATIONS[..2] {
            conn.execute_batch(sql).unwrap();
            conn.execute("INSERT INTO migrations VALUES (?1, 'then')", [version])
                .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO access_records (ts, request_id, request_id_hash, client_ip, method,
                 host, path, api, status, latency_ms, bytes_in, bytes_out, outcome, reason)
             VALUES (1, 'a', 0, '::1', 'GET', 'h', '/', 'orders', 200, 1.0, 0, 0, 'allowed', NULL),
                    (2, 'b', 0, '::1', 'GET', 'h', '/', NULL, 404, 1.0, 0, 0, 'error', 'no_route');
             WITH RECURSIVE n(i) AS (SELECT 3 UNION ALL SELECT i + 1 FROM n WHERE i < 1500)
             INSERT INTO access_records (ts, request_id, request_id_hash, client_ip, method,
                 host, path, api, status, latency_ms, bytes_in, bytes_out, outcome, reason)
             SELECT 1000 - i, 'c', 0, '::1', 'GET', 'h', '/', CASE WHEN i < 1100 THEN 'users' END,
                 200, 1.0, 0, 0, 'allowed', NULL FROM n",
        )
        .unwrap();

        run(&mut conn).unwrap();
        assert_eq!(current_version(&conn).unwrap(), latest());
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |row| row.get(0)).unwrap() };
        assert_eq!(count("SELECT count(*) FROM access_records"), 1500);
        // Spans of the records there, 1,024 ids each at most.
        let spans: Vec<(i64, i64, i64, i64, Option<String>)> = conn
            .prepare("SELECT * FROM access_record_spans ORDER BY first_id")
            .unwrap()
            .query_map([], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            spans,
            [
                (
                    1,
                    1023,
                    1000 - 1023,
                    1000 - 3,
                    Some(",orders,users,".to_owned())
                ),
                (
                    1024,
                    1500,
                    1000 - 1500,
                    1000 - 1024,
                    Some(",users,".to_owned())
                )
            ]
        );
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE tbl_name = 'access_records' AND type = 'index'")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(indexes, ["access_records_exceptional"]);
        assert_eq!(count("SELECT count(*) FROM admin_tokens"), 0);
        assert_eq!(
            count("SELECT count(*) FROM sqlite_master WHERE name = 'access_records_api_ts'"),
            0
        );
        let integrity: String = conn
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(integrity, "ok");
    }

    /// A database at version 4 keeps its admin tokens, which belong to no
    /// user, and gains the users' tables.
    #[test]
    fn upgrades_a_database_at_version_4_keeping_its_tokens() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        conn.execute_batch(
            "CREATE TABLE migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
        )
        .unwrap();
        for (version, sql) in &MIGRATIONS[..4] {
            conn.execute_batch(sql).unwrap();
            conn.execute("INSERT INTO migrations VALUES (?1, 'then')", [version])
                .unwrap();
        }
        conn.execute(
            "INSERT INTO admin_tokens (name, token_hash, role, created_at)
             VALUES ('bootstrap', ?1, 'super_admin', 1)",
            [[7u8; 32].as_slice()],
        )
        .unwrap();

        run(&mut conn).unwrap();
        assert_eq!(current_version(&conn).unwrap(), latest());
        let (role, user): (String, Option<i64>) = conn
            .query_row(
                "SELECT role, user_id FROM admin_tokens WHERE name = 'bootstrap'",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!((role.as_str(), user), ("super_admin", None));
        // A global role has team '*', a team role a team.
        conn.execute_batch(
            "INSERT INTO users (id, name, password_hash, created_at, updated_at)
             VALUES (1, 'ann', '$argon2id$x', 1, 1)",
        )
        .unwrap();
        for (team, role, ok) in [
            ("*", "auditor", true),
            ("shop", "developer", true),
            ("*", "developer", false),
            ("shop", "super_admin", false),
            ("ops", "owner", false),
        ] {
            let inserted = conn.execute(
                "INSERT INTO memberships (user_id, team, role) VALUES (1, ?1, ?2)",
                [team, role],
            );
            assert_eq!(inserted.is_ok(), ok, "{team} {role}");
        }
    }

    /// A database at version 5 keeps its access records, which read back
    /// without AI usage, and gains the AI columns.
    #[test]
    fn upgrades_a_database_at_version_5_keeping_its_records() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
        )
        .unwrap();
        for (version, sql) in &MIGRATIONS[..5] {
            conn.execute_batch(sql).unwrap();
            conn.execute("INSERT INTO migrations VALUES (?1, 'then')", [version])
                .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO access_records (ts, request_id, request_id_hash, client_ip, method,
                 host, path, api, status, latency_ms, bytes_in, bytes_out, outcome, reason)
             VALUES (1, 'a', 0, '::1', 'GET', 'h', '/', 'orders', 200, 1.0, 0, 0, 'allowed', NULL),
                    (2, 'b', 0, '::1', 'GET', 'h', '/', NULL, 404, 1.0, 0, 0, 'error', 'no_route')",
        )
        .unwrap();

        run(&mut conn).unwrap();
        assert_eq!(current_version(&conn).unwrap(), latest());
        let rows: Vec<crate::StoredAccessRecord> = conn
            .prepare(&format!(
                "SELECT {} FROM access_records ORDER BY id",
                crate::STORED_COLUMNS
            ))
            .unwrap()
            .query_map([], crate::stored_access_record)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].request_id.as_str(), rows[0].status), ("a", 200));
        assert_eq!(rows[1].reason.as_deref(), Some("no_route"));
        assert!(rows.iter().all(|r| r.ai.is_none()), "{rows:#?}");

        conn.execute_batch(
            "INSERT INTO access_records (ts, request_id, request_id_hash, client_ip, method,
                 host, path, status, latency_ms, bytes_in, bytes_out, outcome,
                 ai_model, tokens_in, tokens_out, tokens_cached, tokens_estimated)
             VALUES (3, 'c', 0, '::1', 'POST', 'h', '/', 200, 1.0, 0, 0, 'allowed',
                     'gpt-4o', 10, 5, 0, 0)",
        )
        .unwrap();
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |row| row.get(0)).unwrap() };
        assert_eq!(
            count("SELECT count(*) FROM access_records WHERE tokens_in IS NOT NULL"),
            1
        );
        let integrity: String = conn
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(integrity, "ok");
    }
}
