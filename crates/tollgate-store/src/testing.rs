//! Databases for tests, of this crate and of the others: a fresh
//! PostgreSQL schema per test, dropped when the test ends.
//!
//! Tests of the PostgreSQL path use a real server:
//! `TOLLGATE_TEST_POSTGRES` if set, else
//! `postgres://postgres@127.0.0.1:5432/test`. Without one, a test skips
//! (returns early, saying why on stderr) — unless `CI` is set, where a
//! missing server is a failure, not a reason to skip.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::postgres::{connect, off_runtime, parse_config};
use crate::{Store, StoreError};

/// The variable naming the PostgreSQL server tests use.
pub const POSTGRES_URL_ENV: &str = "TOLLGATE_TEST_POSTGRES";
/// The server tests use when [`POSTGRES_URL_ENV`] is not set.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A schema of its own for one test; dropped, with everything in it, on drop.
pub struct PgSchema {
    base: String,
    schema: String,
}

impl PgSchema {
    /// Creates a fresh schema, or returns `None` after printing why when no
    /// server answers (panics instead when `CI` is set). `test` names the
    /// caller in that message.
    pub fn create(test: &str) -> Option<PgSchema> {
        let base =
            std::env::var(POSTGRES_URL_ENV).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let schema = format!(
            "tollgate_test_{}_{}_{nanos:08x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let created = parse_config(&base).and_then(|config| {
            off_runtime(|| {
                let mut client = connect(&config)?;
                client.batch_execute(&format!("CREATE SCHEMA {schema}"))?;
                Ok::<_, StoreError>(())
            })
        });
        match created {
            Ok(()) => Some(PgSchema { base, schema }),
            Err(error) if std::env::var_os("CI").is_some() => {
                panic!("{test}: PostgreSQL at {base} is required in CI: {error}")
            }
            Err(error) => {
                eprintln!(
                    "skipping {test}: no PostgreSQL at {base} ({error}); set {POSTGRES_URL_ENV}"
                );
                None
            }
        }
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.schema
    }

    /// The server's URL with every connection's `search_path` set to the
    /// schema, as a gateway's `storage.database` takes it.
    pub fn url(&self) -> String {
        let separator = if self.base.contains('?') { '&' } else { '?' };
        format!(
            "{}{separator}options=-csearch_path%3D{}",
            self.base, self.schema
        )
    }

    /// Opens the store in the schema (migrating it).
    pub fn open(&self) -> Store {
        Store::open(&self.url()).expect("open the PostgreSQL store")
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let dropped = parse_config(&self.base).and_then(|config| {
            off_runtime(|| {
                let mut client = connect(&config)?;
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))?;
                Ok::<_, StoreError>(())
            })
        });
        if let Err(error) = dropped {
            eprintln!("could not drop the test schema {}: {error}", self.schema);
        }
    }
}
