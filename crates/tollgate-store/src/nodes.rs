//! The nodes serving from the database: one row per node name, written by
//! the node itself about every two seconds (its heartbeat) and read by the
//! admin API's node list. What the rows mean — when a node lags or went
//! silent, who keeps a name two nodes share — is the admin crate's
//! (`tollgate_admin::nodes`); this module only stores them.

use rusqlite::{params, OptionalExtension};

use crate::{SqliteStore, StoreError};

/// What a node writes about itself at each heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeHeartbeat {
    /// The node's name (`node.name`), unique among the nodes of a database.
    pub name: String,
    /// Random per process start: tells a node's previous run, or another
    /// node given the same name, from this one.
    pub instance: String,
    pub version: String,
    /// The proxy listen address, as configured.
    pub address: String,
    /// The config revision the node serves.
    pub revision: i64,
    /// `None` when healthy; what is wrong when degraded.
    pub degraded: Option<String>,
    /// When the process started, in Unix seconds.
    pub started_at: i64,
}

/// A node's row, as last written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    pub instance: String,
    pub version: String,
    pub address: String,
    pub revision: i64,
    /// `ok` or `degraded`.
    pub health: String,
    /// What is degraded; `None` when `ok`.
    pub detail: Option<String>,
    /// Unix seconds.
    pub started_at: i64,
    /// Its last heartbeat, in Unix seconds.
    pub last_seen: i64,
    /// The first of its heartbeats since which it has reported a revision
    /// older than the store's (Unix seconds); `None` while it reported the
    /// latest.
    pub behind_since: Option<i64>,
}

impl NodeHeartbeat {
    pub(crate) fn health(&self) -> &'static str {
        if self.degraded.is_some() {
            "degraded"
        } else {
            "ok"
        }
    }
}

pub(crate) const COLUMNS: &str =
    "name, instance, version, address, revision, health, detail, started_at, last_seen, behind_since";

/// The heartbeat's upsert, in both dialects (`$n` and `?n` alike):
/// `behind_since` is set by the first heartbeat reporting a revision older
/// than the store's, kept while it stays behind, cleared when it is not.
pub(crate) const UPSERT: &str =
    "INSERT INTO nodes (name, instance, version, address, revision, health, detail,
                        started_at, last_seen, behind_since)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
             CASE WHEN CAST($5 AS BIGINT) < (SELECT revision FROM config_state WHERE id = 1)
                  THEN CAST($9 AS BIGINT) END)
     ON CONFLICT (name) DO UPDATE SET
         instance = excluded.instance, version = excluded.version,
         address = excluded.address, revision = excluded.revision,
         health = excluded.health, detail = excluded.detail,
         started_at = excluded.started_at, last_seen = excluded.last_seen,
         behind_since = CASE WHEN excluded.behind_since IS NULL THEN NULL
                             ELSE coalesce(nodes.behind_since, excluded.behind_since)
                        END";

fn node_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<NodeRecord> {
    Ok(NodeRecord {
        name: row.get(0)?,
        instance: row.get(1)?,
        version: row.get(2)?,
        address: row.get(3)?,
        revision: row.get(4)?,
        health: row.get(5)?,
        detail: row.get(6)?,
        started_at: row.get(7)?,
        last_seen: row.get(8)?,
        behind_since: row.get(9)?,
    })
}

impl SqliteStore {
    /// Writes `heartbeat` as its node's row, seen at `now` (Unix seconds).
    pub fn record_node(&self, heartbeat: &NodeHeartbeat, now: i64) -> Result<(), StoreError> {
        self.lock().prepare_cached(UPSERT)?.execute(params![
            heartbeat.name,
            heartbeat.instance,
            heartbeat.version,
            heartbeat.address,
            heartbeat.revision,
            heartbeat.health(),
            heartbeat.degraded,
            heartbeat.started_at,
            now,
        ])?;
        Ok(())
    }

    /// The row of the node `name`, if it ever wrote one.
    pub fn find_node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        Ok(self
            .lock()
            .prepare_cached(&format!("SELECT {COLUMNS} FROM nodes WHERE name = ?1"))?
            .query_row([name], node_record)
            .optional()?)
    }

    /// Every node's row, by name.
    pub fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM nodes ORDER BY name"))?;
        let rows = stmt.query_map([], node_record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes the rows of nodes last seen before `before` (Unix seconds);
    /// returns how many.
    pub fn forget_nodes(&self, before: i64) -> Result<usize, StoreError> {
        Ok(self
            .lock()
            .execute("DELETE FROM nodes WHERE last_seen < ?1", [before])?)
    }
}
