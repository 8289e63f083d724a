//! The PostgreSQL store: the same methods, semantics and schema (in
//! PostgreSQL's dialect, same migration numbers) as [`crate::SqliteStore`],
//! for several nodes sharing one database.
//!
//! Uses the `postgres` crate's blocking client, so its methods block like
//! the SQLite store's: call them from `spawn_blocking` in async code. That
//! client runs a small runtime of its own, which may not be entered from an
//! async task; a method called from one anyway runs on a scoped thread
//! instead of panicking (see [`off_runtime`]), at the cost of starting it.
//!
//! Where SQLite takes its database-wide write lock (`BEGIN IMMEDIATE`),
//! these transactions lock the `config_state` row (`FOR UPDATE`): config
//! commits and user writes are serialised across every node, so a
//! revision check or an expectation checked inside one still holds at its
//! commit.

mod access;
mod copy_text;
pub(crate) mod listen;
mod migrations;
mod nodes;
mod partitions;
mod resources;
mod spool;
mod users;

use std::sync::{Arc, Mutex, MutexGuard};

use postgres::types::Json;
use postgres::{Client, NoTls};

pub use access::PgRecordSink;
pub use listen::{ConfigEvent, ConfigListener, CONFIG_CHANNEL};

use crate::{StoreError, StoredAccessRecord, StoredAiAttempt, StoredAiUsage, FIRST_AI_COLUMN};
use tollgate_telemetry::record::Rfc3339;

/// A PostgreSQL database. Cheap to clone; clones share one connection for
/// queries (reconnected if it broke), and each sink and each analytics
/// query gets its own.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: postgres::Config,
    client: Mutex<Option<Client>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let client = self
            .client
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(client) = client {
            off_runtime(move || drop(client));
        }
    }
}

/// Runs `f` where the blocking client may block: here, unless this thread
/// is inside a Tokio runtime, whose tasks must not block on another runtime
/// (the client's): then on a scoped thread of its own.
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|scope| {
            scope
                .spawn(f)
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    } else {
        f()
    }
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

pub(crate) fn parse_config(url: &str) -> Result<postgres::Config, StoreError> {
    if !is_postgres_url(url) {
        return Err(StoreError::InvalidUrl {
            url: url.to_owned(),
            reason: "must start with `postgres://` or `postgresql://`",
        });
    }
    url.parse().map_err(|_| StoreError::InvalidUrl {
        url: redact(url),
        reason: "not a valid PostgreSQL connection URL",
    })
}

/// `url` without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

pub(crate) fn connect(config: &postgres::Config) -> Result<Client, postgres::Error> {
    off_runtime(|| config.connect(NoTls))
}

impl PgStore {
    /// Connects to `database_url` (`postgres://user@host:port/db?options=…`)
    /// and runs pending migrations, under an advisory lock so several nodes
    /// starting together apply each once.
    pub fn open(database_url: &str) -> Result<PgStore, StoreError> {
        let config = parse_config(database_url)?;
        let mut client = connect(&config)?;
        off_runtime(|| migrations::run(&mut client))?;
        Ok(PgStore {
            inner: Arc::new(Inner {
                config,
                client: Mutex::new(Some(client)),
            }),
        })
    }

    /// A store for `database_url` that has not connected yet (the database
    /// is unreachable): every call connects first, and fails while the
    /// database stays down. Call [`PgStore::migrate`] once it answers.
    pub fn unconnected(database_url: &str) -> Result<PgStore, StoreError> {
        Ok(PgStore {
            inner: Arc::new(Inner {
                config: parse_config(database_url)?,
                client: Mutex::new(None),
            }),
        })
    }

    /// Runs pending migrations (as [`PgStore::open`] does), connecting first.
    pub fn migrate(&self) -> Result<(), StoreError> {
        self.with(migrations::run)
    }

    /// Runs `f` on the shared connection (see [`off_runtime`]), connecting
    /// again first if the last one broke.
    pub(crate) fn with<T: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        off_runtime(|| {
            let mut guard = self.lock();
            if guard.as_ref().is_none_or(Client::is_closed) {
                *guard = Some(self.inner.config.connect(NoTls)?);
            }
            f(guard.as_mut().expect("connected above"))
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Client>> {
        self.inner
            .client
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn config(&self) -> &postgres::Config {
        &self.inner.config
    }

    /// The highest migration applied to the database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.with(|client| Ok(migrations::current_version(client)?))
    }
}

/// The columns [`stored_access_record`] reads, in its order.
pub(crate) const STORED_COLUMNS: &str = crate::STORED_COLUMNS;

pub(crate) fn stored_access_record(row: &postgres::Row) -> Result<StoredAccessRecord, StoreError> {
    let small = |n: i64| u16::try_from(n).unwrap_or(0);
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(StoredAccessRecord {
        id: row.try_get(0)?,
        ts: Rfc3339::from_unix_micros(row.try_get(1)?).to_string(),
        request_id: row.try_get(2)?,
        client_ip: row.try_get(3)?,
        method: row.try_get(4)?,
        host: row.try_get(5)?,
        path: row.try_get(6)?,
        api: row.try_get(7)?,
        service: row.try_get(8)?,
        consumer: row.try_get(9)?,
        status: small(row.try_get(10)?),
        upstream_status: row.try_get::<_, Option<i64>>(11)?.map(small),
        upstream_addr: row.try_get(12)?,
        latency_ms: row.try_get(13)?,
        upstream_latency_ms: row.try_get(14)?,
        bytes_in: count(row.try_get(15)?),
        bytes_out: count(row.try_get(16)?),
        outcome: row.try_get(17)?,
        reason: row.try_get(18)?,
        ai: stored_ai_usage(row)?,
    })
}

/// The AI columns of a row of [`STORED_COLUMNS`], or `None` for a record
/// without AI usage.
fn stored_ai_usage(row: &postgres::Row) -> Result<Option<StoredAiUsage>, StoreError> {
    let at = FIRST_AI_COLUMN;
    let count = |n: Option<i64>| n.map_or(0, |n| u64::try_from(n).unwrap_or(0));
    let Some(tokens_in) = row.try_get::<_, Option<i64>>(at + 2)? else {
        return Ok(None);
    };
    let attempts: Option<Json<Vec<StoredAiAttempt>>> = row.try_get(at + 8)?;
    Ok(Some(StoredAiUsage {
        ai_provider: row.try_get(at)?,
        ai_model: row.try_get(at + 1)?,
        tokens_in: count(Some(tokens_in)),
        tokens_out: count(row.try_get(at + 3)?),
        tokens_cached: count(row.try_get(at + 4)?),
        tokens_estimated: row.try_get::<_, Option<bool>>(at + 5)?.unwrap_or(false),
        cost_usd: row.try_get(at + 6)?,
        ttft_ms: row.try_get(at + 7)?,
        attempts: attempts.map_or_else(Vec::new, |Json(attempts)| attempts),
        cache: row.try_get(at + 9)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_redacted() {
        assert!(parse_config("postgres://postgres@127.0.0.1:5432/test").is_ok());
        assert!(parse_config("postgresql://u:p@h/db?options=-csearch_path%3Dx").is_ok());
        assert!(matches!(
            parse_config("sqlite://t.db"),
            Err(StoreError::InvalidUrl { .. })
        ));
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    /// A server that does not answer is an outage, told apart from refusals;
    /// a store opened without connecting fails until it answers.
    #[test]
    fn an_unreachable_server_is_unavailable() {
        let url = "postgres://postgres@127.0.0.1:1/test";
        let error = PgStore::open(url).err().expect("nothing listens on port 1");
        assert!(error.is_unavailable(), "{error}");
        let store = PgStore::unconnected(url).unwrap();
        assert!(store.migrate().unwrap_err().is_unavailable());
        assert!(store.config_revision().unwrap_err().is_unavailable());
        assert!(!StoreError::Corrupt("x".into()).is_unavailable());
    }

    /// Both databases know the same migrations, by number.
    #[test]
    fn both_dialects_have_every_migration() {
        assert_eq!(migrations::latest(), crate::migrations::latest());
    }
}
