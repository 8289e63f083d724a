//! [`Store`]: the one storage interface, over either database.

use std::io;
use std::path::Path;

use tollgate_telemetry::{AccessRecord, RecordSink};

use crate::postgres::{is_postgres_url, PgRecordSink, PgStore};
use crate::sealing::Sealer;
use crate::{
    AccessPage, AccessQuery, AdminToken, Analytics, AnalyticsQuery, AuditEntry, AuditQuery,
    AuditRecord, ConfigEvent, ConfigListener, ConfigState, ConsumerUsage, Membership,
    NodeHeartbeat, NodeRecord, ResourceWrite, SqliteRecordSink, SqliteStore, StoreError,
    StoredAccessRecord, User, UserUpdate,
};

/// The store, in SQLite or PostgreSQL, as its URL says. Cheap to clone.
///
/// An enum, not a trait: there are two backends and no others planned, the
/// callers want a concrete, clonable type (no `Arc<dyn …>` and no generic
/// parameter threaded through the admin API and the binary), and a method
/// added to one backend but not the other fails to compile here.
#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Delegates each listed method to the backend.
macro_rules! delegate {
    ($(
        $(#[$doc:meta])*
        pub fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;
    )*) => {$(
        $(#[$doc])*
        pub fn $name(&self $(, $arg: $ty)*) -> $ret {
            match self {
                Store::Sqlite(store) => store.$name($($arg),*),
                Store::Postgres(store) => store.$name($($arg),*),
            }
        }
    )*};
}

impl Store {
    /// Opens the database at `database_url` and runs pending migrations:
    /// `postgres://…` (or `postgresql://…`) is PostgreSQL, anything else
    /// SQLite (`sqlite://path`, `sqlite:path`, `sqlite::memory:`).
    pub fn open(database_url: &str) -> Result<Store, StoreError> {
        if is_postgres_url(database_url) {
            Ok(Store::Postgres(PgStore::open(database_url)?))
        } else {
            Ok(Store::Sqlite(SqliteStore::open(database_url)?))
        }
    }

    /// [`Store::open`] without connecting, for a PostgreSQL database that is
    /// unreachable now: calls fail until it answers; [`Store::migrate`]
    /// then does what `open` would have. `None` for SQLite, which is local
    /// and opens or fails for good.
    pub fn open_unconnected(database_url: &str) -> Option<Result<Store, StoreError>> {
        is_postgres_url(database_url)
            .then(|| PgStore::unconnected(database_url).map(Store::Postgres))
    }

    /// Runs pending migrations (done by [`Store::open`]; needed after
    /// [`Store::open_unconnected`]).
    pub fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(store) => store.migrate(),
        }
    }

    /// The database file, for SQLite on disk; `None` otherwise.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Store::Sqlite(store) => store.path(),
            Store::Postgres(_) => None,
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// A sink writing access records into this database over its own
    /// connection, for [`tollgate_telemetry::AccessLog::start`].
    pub fn access_record_sink(&self) -> io::Result<StoreRecordSink> {
        Ok(match self {
            Store::Sqlite(store) => StoreRecordSink::Sqlite(store.access_record_sink()?),
            Store::Postgres(store) => {
                StoreRecordSink::Postgres(Box::new(store.access_record_sink()?))
            }
        })
    }

    /// Listens for other nodes' config commits on PostgreSQL (see
    /// [`PgStore::listen_config`]); `None` on SQLite, which has no
    /// notifications (and one node).
    pub fn listen_config(
        &self,
        on_event: impl FnMut(ConfigEvent) + Send + 'static,
    ) -> io::Result<Option<ConfigListener>> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Postgres(store) => store.listen_config(on_event).map(Some),
        }
    }

    /// As [`SqliteStore::save_quota_counters`].
    pub fn save_quota_counters<'a>(
        &self,
        counters: impl IntoIterator<Item = (&'a str, i64, u64)>,
        now: i64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => store.save_quota_counters(counters, now),
            Store::Postgres(store) => store.save_quota_counters(counters, now),
        }
    }

    delegate! {
        /// The `limit` most recently written access records, newest first.
        pub fn recent_access_records(&self, limit: usize) -> Result<Vec<StoredAccessRecord>, StoreError>;
        /// The access records of the request `request_id`, newest first.
        pub fn access_records_by_request_id(&self, request_id: &str) -> Result<Vec<StoredAccessRecord>, StoreError>;
        /// Deletes access records older than `before` (Unix microseconds),
        /// oldest first, and returns how many: up to `batch` on SQLite; on
        /// PostgreSQL whole day partitions are dropped first, so it may
        /// return more.
        pub fn prune_access_records(&self, before: i64, batch: usize) -> Result<usize, StoreError>;
        /// How many access records the database holds.
        pub fn count_access_records(&self) -> Result<u64, StoreError>;
        /// The highest migration applied to the database.
        pub fn schema_version(&self) -> Result<i64, StoreError>;
        /// A page of access records, newest first (see [`AccessQuery`]).
        pub fn query_access_records(&self, query: &AccessQuery) -> Result<AccessPage, StoreError>;
        /// Who called `api` in `[from, to)`, busiest first.
        pub fn api_usage_by_consumer(&self, api: &str, from: i64, to: i64) -> Result<Vec<ConsumerUsage>, StoreError>;
        /// Access record aggregates in time buckets.
        pub fn analytics(&self, query: &AnalyticsQuery) -> Result<Analytics, StoreError>;
        /// The config revision: bumped by every commit.
        pub fn config_revision(&self) -> Result<i64, StoreError>;
        /// Every resource with the revision they make up.
        pub fn load_resources(&self, sealer: &Sealer) -> Result<ConfigState, StoreError>;
        /// Applies `writes` and appends `audit` in one transaction: see
        /// [`SqliteStore::commit`].
        pub fn commit(&self, sealer: &Sealer, based_on: Option<i64>, writes: &[ResourceWrite], audit: &[AuditEntry]) -> Result<i64, StoreError>;
        /// Appends audit entries that record no configuration change (sign-ins).
        pub fn record_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError>;
        /// Audit log entries matching `query`, newest first.
        pub fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
        /// Seals every resource body again under `new`, in one transaction.
        pub fn reseal_resources(&self, old: &Sealer, new: &Sealer) -> Result<usize, StoreError>;
        /// One resource's stored revision, if it exists.
        pub fn resource_revision(&self, kind: &str, name: &str) -> Result<Option<i64>, StoreError>;
        /// How many admin tokens are stored.
        pub fn admin_token_count(&self) -> Result<u64, StoreError>;
        /// Every admin token (never the token itself), oldest first.
        pub fn list_admin_tokens(&self) -> Result<Vec<AdminToken>, StoreError>;
        /// Deletes the admin token `id` with its audit entries; `false` when there was none.
        pub fn delete_admin_token(&self, id: i64, audit: &[AuditEntry]) -> Result<bool, StoreError>;
        /// Stores an admin token by its SHA-256.
        pub fn insert_admin_token(&self, name: &str, hash: &[u8; 32], role: &str) -> Result<AdminToken, StoreError>;
        /// The token whose SHA-256 is `hash`, if one is stored.
        pub fn find_admin_token(&self, hash: &[u8; 32]) -> Result<Option<AdminToken>, StoreError>;
        /// Records a use of the token `id` at `at` (Unix seconds).
        pub fn touch_admin_token(&self, id: i64, at: i64) -> Result<(), StoreError>;
        /// The quota counters of periods that end after `now`.
        pub fn load_quota_counters(&self, now: i64) -> Result<Vec<(String, i64, u64)>, StoreError>;
        /// Stores a new user and its `audit` entries.
        pub fn create_user(&self, name: &str, password_hash: &str, memberships: &[Membership], audit: &[AuditEntry]) -> Result<User, StoreError>;
        /// The user named `name`, with its memberships.
        pub fn find_user(&self, name: &str) -> Result<Option<User>, StoreError>;
        /// The user `id`, with its memberships.
        pub fn find_user_by_id(&self, id: i64) -> Result<Option<User>, StoreError>;
        /// Every user, sorted by name.
        pub fn list_users(&self) -> Result<Vec<User>, StoreError>;
        /// Changes the user `name` as `update` says.
        pub fn update_user(&self, name: &str, update: &UserUpdate<'_>, audit: &[AuditEntry]) -> Result<User, StoreError>;
        /// Deletes the user `name` with its memberships, tokens and sessions.
        pub fn delete_user(&self, name: &str, audit: &[AuditEntry]) -> Result<(), StoreError>;
        /// Stores an admin token of the user `user` by its SHA-256.
        pub fn insert_user_token(&self, user: &str, token_name: &str, hash: &[u8; 32], audit: &[AuditEntry]) -> Result<AdminToken, StoreError>;
        /// Writes a node's heartbeat row, seen at `now` (Unix seconds).
        pub fn record_node(&self, heartbeat: &NodeHeartbeat, now: i64) -> Result<(), StoreError>;
        /// The row of the node `name`.
        pub fn find_node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError>;
        /// Every node's row, by name.
        pub fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
        /// Deletes the rows of nodes last seen before `before`; returns how many.
        pub fn forget_nodes(&self, before: i64) -> Result<usize, StoreError>;
        /// Starts a console session of the user `user_id`.
        pub fn create_session(&self, user_id: i64, hash: &[u8; 32], expires_at: i64) -> Result<(), StoreError>;
        /// The user of an unexpired session, by its id's SHA-256.
        pub fn find_session_user(&self, hash: &[u8; 32], now: i64) -> Result<Option<User>, StoreError>;
        /// Ends a session; whether there was one.
        pub fn delete_session(&self, hash: &[u8; 32]) -> Result<bool, StoreError>;
        /// Ends every session of the user whose session this is ("sign out
        /// everywhere"); how many ended.
        pub fn delete_sessions_of_user(&self, hash: &[u8; 32]) -> Result<usize, StoreError>;
    }
}

impl From<SqliteStore> for Store {
    fn from(store: SqliteStore) -> Store {
        Store::Sqlite(store)
    }
}

impl From<PgStore> for Store {
    fn from(store: PgStore) -> Store {
        Store::Postgres(store)
    }
}

/// The access record sink of either database.
pub enum StoreRecordSink {
    Sqlite(SqliteRecordSink),
    /// Boxed: its connection's configuration is large; one sink per node.
    Postgres(Box<PgRecordSink>),
}

impl RecordSink for StoreRecordSink {
    fn name(&self) -> &'static str {
        match self {
            StoreRecordSink::Sqlite(sink) => sink.name(),
            StoreRecordSink::Postgres(sink) => sink.name(),
        }
    }

    fn write_batch(&mut self, records: &[AccessRecord]) -> io::Result<()> {
        match self {
            StoreRecordSink::Sqlite(sink) => sink.write_batch(records),
            StoreRecordSink::Postgres(sink) => sink.write_batch(records),
        }
    }

    fn idle(&mut self) -> io::Result<()> {
        match self {
            StoreRecordSink::Sqlite(sink) => sink.idle(),
            StoreRecordSink::Postgres(sink) => sink.idle(),
        }
    }
}
