//! Tollgate's storage: one interface, [`Store`], over two databases — the
//! embedded SQLite database ([`SqliteStore`], the default: `sqlite://path`)
//! and PostgreSQL ([`PgStore`], `postgres://…`, for several nodes sharing
//! one database) — with the same migrations (same numbers, same meaning,
//! each in its dialect), the same methods and the same semantics, tested by
//! the same suite against both. Behind it: the access record sink that
//! writes into the database, and what the admin API reads and keeps there:
//! access record queries ([`Store::query_access_records`]) and aggregates
//! ([`Store::analytics`]), the configuration's resources with their audit
//! log ([`Store::commit`]), admin tokens ([`AdminToken`]), admin users
//! with their memberships and console sessions ([`User`]), and the nodes'
//! heartbeats ([`NodeRecord`]). On PostgreSQL, config commits notify the
//! other nodes ([`Store::listen_config`]).
//!
//! [`Store`] is an enum of the two backends, not a trait object: see its
//! documentation for why.
//!
//! What must never happen:
//!
//! - **No database access on a request path.** The proxy serves from
//!   in-memory snapshots; the access log thread writes records through the
//!   sink, quota counters are saved by a flusher task, and only the admin
//!   API and the control plane read and write here. Every method blocks (on
//!   SQLite or on the PostgreSQL client): call them from `spawn_blocking`
//!   in async code.
//! - **No secret in clear.** The store never holds an admin token or
//!   session id itself, only its SHA-256, nor a password, only its argon2id
//!   hash: its methods take no other form. Resource bodies are sealed (see
//!   [`sealing`]).
//! - **No write without its audit entry**, and no update or delete of the
//!   audit log (triggers refuse them, in both databases).

mod admin_tokens;
mod analytics;
mod counters;
mod migrations;
mod nodes;
mod postgres;
mod query;
mod resources;
pub mod sealing;
mod sink;
pub mod snapshot_cache;
mod store;
pub mod testing;
mod users;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use tollgate_telemetry::record::Rfc3339;
use tollgate_telemetry::AiUsage;

pub use admin_tokens::AdminToken;
pub use analytics::{
    Aggregate, AiAnalytics, AiBucket, AiConsumerTotals, AiModelTotals, AiProviderTotals, AiTotals,
    Analytics, AnalyticsQuery, ApiCount, Bucket, BucketWidth, ConsumerCount, ConsumerUsage,
    Percentiles, LATENCY_RELATIVE_ERROR, LATENCY_SUB_BINS,
};
pub use nodes::{NodeHeartbeat, NodeRecord};
pub use postgres::{
    is_postgres_url, redact as redact_database_url, ConfigEvent, ConfigListener, PgRecordSink,
    PgStore, CONFIG_CHANNEL,
};
use query::SPANNED_RECORDS;
pub use query::{AccessPage, AccessQuery};
pub use resources::{
    AuditEntry, AuditQuery, AuditRecord, ConfigState, Expect, Origin, ResourceWrite, StoredResource,
};
pub use sink::SqliteRecordSink;
pub use store::{Store, StoreRecordSink};
pub use users::{Membership, User, UserUpdate, GLOBAL_TEAM, USER_TOKEN_ROLE};

/// How long a connection waits for another one's write lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The database page size, in bytes: access record inserts measured ~15%
/// cheaper than with SQLite's default 4096 (fewer WAL frames to write and
/// checkpoint per record); 32 KiB was no better.
const PAGE_SIZE: i64 = 16 * 1024;

/// Why the store could not be opened or queried.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the database file {path}: {source}")]
    CreateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the database is at schema version {found}, newer than this Tollgate knows ({known}); \
         refusing to use it"
    )]
    SchemaTooNew { found: i64, known: i64 },
    /// An access query's cursor is not one the store returned.
    #[error("invalid cursor")]
    InvalidCursor,
    /// An analytics query spans more buckets than it may.
    #[error("the range spans {buckets} buckets, more than {max}")]
    TooManyBuckets { buckets: u64, max: u64 },
    #[error("an admin token named {0:?} already exists")]
    AdminTokenNameTaken(String),
    /// The token itself is already stored, under another name.
    #[error("this admin token is already stored")]
    AdminTokenHashTaken,
    /// A write expected a resource at another revision (`If-Match`).
    #[error("{kind}/{name} changed since it was read (now at revision {found})")]
    Conflict {
        kind: String,
        name: String,
        found: i64,
    },
    /// Another writer committed since the caller read the configuration.
    #[error("the configuration moved from revision {based_on} to {current} meanwhile")]
    Stale { based_on: i64, current: i64 },
    #[error("{kind}/{name} already exists")]
    Exists { kind: String, name: String },
    #[error("{kind}/{name} does not exist")]
    Missing { kind: String, name: String },
    #[error(transparent)]
    Sealing(#[from] sealing::SealError),
    #[error("corrupt store: {0}")]
    Corrupt(String),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] ::postgres::Error),
}

impl StoreError {
    /// Whether the database could not be reached (refused, closed or broken
    /// connection), as opposed to refusing or failing the query: a caller
    /// may try again later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Postgres(error) => {
                error.is_closed()
                    || std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>())
            }
            _ => false,
        }
    }
}

/// Where the database lives.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Location {
    File(PathBuf),
    /// A process-private in-memory database, shared by every connection that
    /// opens this URI (SQLite's `memdb` VFS), alive while one is open.
    Memory(String),
}

impl Location {
    /// Parses `sqlite://path`, `sqlite:path` or `sqlite::memory:`.
    fn parse(url: &str) -> Result<Location, StoreError> {
        let invalid = |reason| StoreError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("sqlite:")
            .ok_or_else(|| invalid("must start with `sqlite:`"))?;
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.contains('?') {
            return Err(invalid("query parameters are not supported"));
        }
        match path {
            "" => Err(invalid("the path is empty")),
            ":memory:" => {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                Ok(Location::Memory(format!(
                    "file:/tollgate-{}-{n}?vfs=memdb",
                    std::process::id()
                )))
            }
            path => Ok(Location::File(PathBuf::from(path))),
        }
    }

    fn connect(&self) -> Result<Connection, rusqlite::Error> {
        let conn = match self {
            Location::File(path) => Connection::open(path)?,
            Location::Memory(uri) => Connection::open_with_flags(
                uri,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_URI
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?,
        };
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Takes effect only while the database is empty, before WAL mode is
        // set.
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        if let Location::File(path) = self {
            let mode = wal_mode(&conn)?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(path = %path.display(), %mode, "SQLite refused WAL journal mode");
            }
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(conn)
    }
}

/// Switches `conn` to WAL and returns the mode SQLite reports. Switching
/// needs a moment alone with the file and answers `SQLITE_BUSY` at once,
/// without the busy handler, while another process opens it too (nodes
/// starting together): retried for up to [`BUSY_TIMEOUT`], at 5–14 ms
/// intervals so openers retrying together spread out.
fn wal_mode(conn: &Connection) -> Result<String, rusqlite::Error> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)) {
            Err(rusqlite::Error::SqliteFailure(error, _))
                if error.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                let jitter = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::from(d.subsec_nanos() % 10));
                std::thread::sleep(Duration::from_millis(5 + jitter));
            }
            other => return other,
        }
    }
}

/// The embedded SQLite database (see [`Store`] for the interface callers
/// use). Cheap to clone; clones share one
/// connection for queries, and each sink gets its own.
///
/// Its methods block on SQLite: call them from `spawn_blocking` in async code.
#[derive(Clone)]
pub struct SqliteStore {
    location: Arc<Location>,
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `database_url` —
    /// `sqlite://relative/or/abs/path.db`, `sqlite:path` or `sqlite::memory:` —
    /// creating its parent directory, and runs pending migrations.
    pub fn open(database_url: &str) -> Result<SqliteStore, StoreError> {
        let location = Location::parse(database_url)?;
        if let Location::File(path) = &location {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                    path: parent.to_owned(),
                    source,
                })?;
            }
        }
        if let Location::File(path) = &location {
            create_private(path)?;
        }
        let mut conn = location.connect()?;
        migrations::run(&mut conn)?;
        Ok(SqliteStore {
            location: Arc::new(location),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The database file, or `None` for an in-memory database.
    pub fn path(&self) -> Option<&Path> {
        match &*self.location {
            Location::File(path) => Some(path),
            Location::Memory(_) => None,
        }
    }

    /// A sink writing access records into this database over its own
    /// connection, for [`tollgate_telemetry::AccessLog::start`].
    pub fn access_record_sink(&self) -> std::io::Result<SqliteRecordSink> {
        // SQLite's default page cache (2 MB): the sink appends to the
        // table, the spans and the exceptional index, so a few pages of
        // each are hot. A 16 MiB cache, sized for the indexes the spans
        // replaced, read as many pages and cost the same CPU a record, for
        // ~14 MiB more resident memory (`sink_bench --prefill 1000000`).
        let conn = self.location.connect().map_err(std::io::Error::other)?;
        Ok(SqliteRecordSink::new(conn))
    }

    /// The `limit` most recently written access records, newest first.
    pub fn recent_access_records(
        &self,
        limit: usize,
    ) -> Result<Vec<StoredAccessRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {STORED_COLUMNS} FROM access_records ORDER BY id DESC LIMIT ?1"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map([limit], stored_access_record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The access records of the request `request_id` (normally one), newest
    /// first: [`SqliteStore::query_access_records`]'s scan of the table,
    /// unpaged. Cheap for an operator's look-up, not for a request path.
    pub fn access_records_by_request_id(
        &self,
        request_id: &str,
    ) -> Result<Vec<StoredAccessRecord>, StoreError> {
        let query = query::AccessQuery {
            request_id: Some(request_id.to_owned()),
            ..Default::default()
        };
        query::run(
            &self.lock(),
            &query,
            query::Plan::Table,
            i64::MAX,
            usize::MAX,
        )
    }

    /// Deletes access records older than `before` (Unix microseconds), at
    /// most `batch` of them, in id order (about oldest first), and the spans
    /// left empty; returns how many records. Small batches keep each write
    /// transaction short, so the record sink never waits long; call again
    /// until it returns less than `batch`.
    pub fn prune_access_records(&self, before: i64, batch: usize) -> Result<usize, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let deleted = tx.execute(
            &format!(
                "DELETE FROM access_records WHERE id IN (
                SELECT id FROM {SPANNED_RECORDS}
                WHERE min_ts < ?1 AND ts < ?1 ORDER BY first_id, id LIMIT ?2)"
            ),
            rusqlite::params![before, i64::try_from(batch).unwrap_or(i64::MAX)],
        )?;
        tx.execute(
            "DELETE FROM access_record_spans WHERE min_ts < ?1 AND NOT EXISTS (
                SELECT 1 FROM access_records WHERE id BETWEEN first_id AND last_id)",
            [before],
        )?;
        tx.commit()?;
        Ok(deleted)
    }

    /// How many access records the database holds.
    pub fn count_access_records(&self) -> Result<u64, StoreError> {
        let count: i64 =
            self.lock()
                .query_row("SELECT count(*) FROM access_records", [], |row| row.get(0))?;
        Ok(count.try_into().unwrap_or(0))
    }

    /// The highest migration applied to the database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(migrations::current_version(&self.lock())?)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An access record as read back from the database: the fields of
/// [`tollgate_telemetry::AccessRecord`] under the same names, plus its row id.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredAccessRecord {
    /// Row id: increases in the order records were written.
    pub id: i64,
    /// RFC 3339 UTC with microseconds.
    pub ts: String,
    pub request_id: String,
    pub client_ip: String,
    pub method: String,
    pub host: String,
    pub path: String,
    pub api: Option<String>,
    pub service: Option<String>,
    pub consumer: Option<String>,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub upstream_addr: Option<String>,
    pub latency_ms: f64,
    pub upstream_latency_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// `allowed`, `denied` or `error`.
    pub outcome: String,
    pub reason: Option<String>,
    /// For a request the AI gateway served: what it used and cost. As in
    /// the access log's JSON lines, its fields are at the record's top
    /// level, and absent for every other record.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub ai: Option<StoredAiUsage>,
}

/// [`tollgate_telemetry::AiUsage`] as read back: the same fields under the
/// same names (`ai_attempts` and `ai_cache` in the database are `attempts`
/// and `cache` here).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StoredAiUsage {
    pub ai_provider: Option<String>,
    pub ai_model: Option<String>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub tokens_cached: u64,
    /// The provider reported no usage: the counts are local estimates.
    pub tokens_estimated: bool,
    /// `None` (JSON `null`) when the model's price is unknown.
    pub cost_usd: Option<f64>,
    pub ttft_ms: Option<f64>,
    /// Every provider call made for the request, in order.
    pub attempts: Vec<StoredAiAttempt>,
    /// `hit` or `miss` when the API has a response cache.
    pub cache: Option<String>,
}

/// [`tollgate_telemetry::AiAttempt`] as read back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAiAttempt {
    pub provider: String,
    pub model: String,
    /// Which of the provider's keys (from 1); never the key.
    pub key: usize,
    /// The provider's status, or `timeout` / `connect_error` / `stream_error`.
    pub result: String,
}

impl From<&AiUsage> for StoredAiUsage {
    /// What reading `ai` back gives, counts saturated at `i64::MAX` as the
    /// databases store them.
    fn from(ai: &AiUsage) -> StoredAiUsage {
        let count = |n: u64| n.min(i64::MAX as u64);
        StoredAiUsage {
            ai_provider: ai.ai_provider.clone(),
            ai_model: ai.ai_model.clone(),
            tokens_in: count(ai.tokens_in),
            tokens_out: count(ai.tokens_out),
            tokens_cached: count(ai.tokens_cached),
            tokens_estimated: ai.tokens_estimated,
            cost_usd: ai.cost_usd,
            ttft_ms: ai.ttft_ms,
            attempts: ai
                .attempts
                .iter()
                .map(|a| StoredAiAttempt {
                    provider: a.provider.clone(),
                    model: a.model.clone(),
                    key: a.key,
                    result: a.result.clone(),
                })
                .collect(),
            cache: ai.cache.map(str::to_owned),
        }
    }
}

/// The columns [`stored_access_record`] reads, in its order: the AI
/// columns from [`FIRST_AI_COLUMN`] on, `tokens_in` (set for every AI
/// record) third among them.
pub(crate) const STORED_COLUMNS: &str =
    "id, ts, request_id, client_ip, method, host, path, api, service,
    consumer, status, upstream_status, upstream_addr, latency_ms, upstream_latency_ms,
    bytes_in, bytes_out, outcome, reason,
    ai_provider, ai_model, tokens_in, tokens_out, tokens_cached, tokens_estimated,
    cost_usd, ttft_ms, ai_attempts, ai_cache";

/// The index of `ai_provider` in [`STORED_COLUMNS`].
pub(crate) const FIRST_AI_COLUMN: usize = 19;

fn stored_access_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredAccessRecord> {
    Ok(StoredAccessRecord {
        id: row.get(0)?,
        ts: Rfc3339::from_unix_micros(row.get(1)?).to_string(),
        request_id: row.get(2)?,
        client_ip: row.get(3)?,
        method: row.get(4)?,
        host: row.get(5)?,
        path: row.get(6)?,
        api: row.get(7)?,
        service: row.get(8)?,
        consumer: row.get(9)?,
        status: row.get(10)?,
        upstream_status: row.get(11)?,
        upstream_addr: row.get(12)?,
        latency_ms: row.get(13)?,
        upstream_latency_ms: row.get(14)?,
        bytes_in: row.get(15)?,
        bytes_out: row.get(16)?,
        outcome: row.get(17)?,
        reason: row.get(18)?,
        ai: stored_ai_usage(row)?,
    })
}

/// The AI columns of a row of [`STORED_COLUMNS`], or `None` for a record
/// without AI usage.
fn stored_ai_usage(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<StoredAiUsage>> {
    let at = FIRST_AI_COLUMN;
    let Some(tokens_in) = row.get::<_, Option<u64>>(at + 2)? else {
        return Ok(None);
    };
    let attempts = match row.get_ref(at + 8)?.as_str_or_null()? {
        Some(json) => serde_json::from_str(json).map_err(|error| {
            rusqlite::Error::FromSqlConversionFailure(
                at + 8,
                rusqlite::types::Type::Text,
                Box::new(error),
            )
        })?,
        None => Vec::new(),
    };
    Ok(Some(StoredAiUsage {
        ai_provider: row.get(at)?,
        ai_model: row.get(at + 1)?,
        tokens_in,
        tokens_out: row.get::<_, Option<u64>>(at + 3)?.unwrap_or(0),
        tokens_cached: row.get::<_, Option<u64>>(at + 4)?.unwrap_or(0),
        tokens_estimated: row.get::<_, Option<bool>>(at + 5)?.unwrap_or(false),
        cost_usd: row.get(at + 6)?,
        ttft_ms: row.get(at + 7)?,
        attempts,
        cache: row.get(at + 9)?,
    }))
}

/// Creates a missing database file readable by its owner only: it holds
/// admin token digests, quota counts and every client's access records.
/// SQLite gives its `-wal` and `-shm` files the same mode.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::CreateFile {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_database_urls() {
        let file = |p: &str| Location::File(PathBuf::from(p));
        assert_eq!(
            Location::parse("sqlite://data/t.db").unwrap(),
            file("data/t.db")
        );
        assert_eq!(
            Location::parse("sqlite:///var/lib/t.db").unwrap(),
            file("/var/lib/t.db")
        );
        assert_eq!(Location::parse("sqlite:t.db").unwrap(), file("t.db"));
        assert_eq!(
            Location::parse("sqlite:/abs/t.db").unwrap(),
            file("/abs/t.db")
        );
        for memory in ["sqlite::memory:", "sqlite://:memory:"] {
            assert!(matches!(
                Location::parse(memory).unwrap(),
                Location::Memory(_)
            ));
        }
        assert_ne!(
            Location::parse("sqlite::memory:").unwrap(),
            Location::parse("sqlite::memory:").unwrap(),
            "each in-memory store is its own database"
        );
        for bad in [
            "postgres://x",
            "t.db",
            "sqlite:",
            "sqlite://",
            "sqlite://t.db?mode=rwc",
        ] {
            assert!(
                matches!(Location::parse(bad), Err(StoreError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }
}
