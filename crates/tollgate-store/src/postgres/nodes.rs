//! The nodes' heartbeat rows in PostgreSQL: see `crate::nodes`.

use super::PgStore;
use crate::nodes::{NodeHeartbeat, NodeRecord, COLUMNS, UPSERT};
use crate::StoreError;

fn node_record(row: &postgres::Row) -> Result<NodeRecord, StoreError> {
    Ok(NodeRecord {
        name: row.try_get(0)?,
        instance: row.try_get(1)?,
        version: row.try_get(2)?,
        address: row.try_get(3)?,
        revision: row.try_get(4)?,
        health: row.try_get(5)?,
        detail: row.try_get(6)?,
        started_at: row.try_get(7)?,
        last_seen: row.try_get(8)?,
        behind_since: row.try_get(9)?,
    })
}

impl PgStore {
    /// As [`crate::SqliteStore::record_node`].
    pub fn record_node(&self, heartbeat: &NodeHeartbeat, now: i64) -> Result<(), StoreError> {
        self.with(|client| {
            client.execute(
                UPSERT,
                &[
                    &heartbeat.name,
                    &heartbeat.instance,
                    &heartbeat.version,
                    &heartbeat.address,
                    &heartbeat.revision,
                    &heartbeat.health(),
                    &heartbeat.degraded,
                    &heartbeat.started_at,
                    &now,
                ],
            )?;
            Ok(())
        })
    }

    /// As [`crate::SqliteStore::find_node`].
    pub fn find_node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.with(|client| {
            client
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM nodes WHERE name = $1"),
                    &[&name],
                )?
                .map(|row| node_record(&row))
                .transpose()
        })
    }

    /// As [`crate::SqliteStore::list_nodes`].
    pub fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.with(|client| {
            client
                .query(
                    &format!("SELECT {COLUMNS} FROM nodes ORDER BY name COLLATE \"C\""),
                    &[],
                )?
                .iter()
                .map(node_record)
                .collect()
        })
    }

    /// As [`crate::SqliteStore::forget_nodes`].
    pub fn forget_nodes(&self, before: i64) -> Result<usize, StoreError> {
        self.with(|client| {
            let deleted = client.execute("DELETE FROM nodes WHERE last_seen < $1", &[&before])?;
            Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
        })
    }
}
