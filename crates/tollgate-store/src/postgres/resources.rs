//! The configuration's resources, the config revision and the audit log in
//! PostgreSQL: see `crate::resources` for what they are.

use postgres::types::ToSql;
use postgres::{GenericClient, Transaction};
use serde_json::Value;

use super::PgStore;
use crate::resources::{context, now_micros};
use crate::sealing::Sealer;
use crate::{
    AuditEntry, AuditQuery, AuditRecord, ConfigState, Origin, ResourceWrite, StoreError,
    StoredResource,
};

/// Locks the `config_state` row for the rest of `tx` and returns the
/// revision: every write that must not interleave with another node's
/// takes this lock first.
pub(crate) fn lock_revision(tx: &mut Transaction<'_>) -> Result<i64, StoreError> {
    Ok(tx
        .query_one(
            "SELECT revision FROM config_state WHERE id = 1 FOR UPDATE",
            &[],
        )?
        .try_get(0)?)
}

/// Appends `entries` to the audit log inside `tx`, the transaction of the
/// change they record.
pub(crate) fn append_audit(
    tx: &mut Transaction<'_>,
    at: i64,
    revision: i64,
    entries: &[AuditEntry],
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let insert = tx.prepare(
        "INSERT INTO audit_log (at, revision, actor, client_ip, action, kind, name, diff)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )?;
    for entry in entries {
        tx.execute(
            &insert,
            &[
                &at,
                &revision,
                &entry.actor,
                &entry.client_ip,
                &entry.action,
                &entry.kind,
                &entry.name,
                &entry.diff,
            ],
        )?;
    }
    Ok(())
}

fn revision(client: &mut impl GenericClient) -> Result<i64, StoreError> {
    Ok(client
        .query_one("SELECT revision FROM config_state WHERE id = 1", &[])?
        .try_get(0)?)
}

impl PgStore {
    /// As [`crate::SqliteStore::record_audit`].
    pub fn record_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        self.with(|client| {
            let mut tx = client.transaction()?;
            let current = revision(&mut tx)?;
            append_audit(&mut tx, crate::resources::now_micros(), current, entries)?;
            tx.commit()?;
            Ok(())
        })
    }
}

impl PgStore {
    /// The config revision: bumped by every commit.
    pub fn config_revision(&self) -> Result<i64, StoreError> {
        self.with(revision)
    }

    /// Every resource with the revision they make up, read in one
    /// repeatable-read transaction (one snapshot).
    pub fn load_resources(&self, sealer: &Sealer) -> Result<ConfigState, StoreError> {
        self.with(|client| {
            let mut tx = client
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let revision = revision(&mut tx)?;
            let rows = tx.query(
                "SELECT kind, name, team, origin, body, revision, created_at, updated_at
                 FROM resources ORDER BY seq",
                &[],
            )?;
            let mut resources = Vec::with_capacity(rows.len());
            for row in rows {
                let kind: String = row.try_get(0)?;
                let name: String = row.try_get(1)?;
                let origin: String = row.try_get(3)?;
                let sealed: Vec<u8> = row.try_get(4)?;
                let plain = sealer.open(&sealed, &context(&kind, &name))?;
                let body = serde_json::from_slice(&plain).map_err(|e| {
                    StoreError::Corrupt(format!("{kind}/{name}: stored body is not JSON: {e}"))
                })?;
                resources.push(StoredResource {
                    team: row.try_get(2)?,
                    origin: Origin::parse(&origin),
                    body,
                    revision: row.try_get(5)?,
                    created_at: row.try_get(6)?,
                    updated_at: row.try_get(7)?,
                    kind,
                    name,
                });
            }
            tx.commit()?;
            Ok(ConfigState {
                revision,
                resources,
            })
        })
    }

    /// As [`crate::SqliteStore::commit`]: the `config_state` row is locked
    /// first, so the revision check and every expectation hold until the
    /// commit, whichever node writes meanwhile; the commit notifies the
    /// listening nodes (see [`super::listen`]).
    pub fn commit(
        &self,
        sealer: &Sealer,
        based_on: Option<i64>,
        writes: &[ResourceWrite],
        audit: &[AuditEntry],
    ) -> Result<i64, StoreError> {
        self.with(|client| {
            let mut tx = client.transaction()?;
            let current = lock_revision(&mut tx)?;
            if let Some(base) = based_on {
                if current != base {
                    return Err(StoreError::Stale {
                        based_on: base,
                        current,
                    });
                }
            }
            let revision = current + 1;
            tx.execute(
                "UPDATE config_state SET revision = $1 WHERE id = 1",
                &[&revision],
            )?;
            let now_micros = now_micros();
            let now = now_micros / 1_000_000;
            for write in writes {
                let found: Option<i64> = tx
                    .query_opt(
                        "SELECT revision FROM resources WHERE kind = $1 AND name = $2",
                        &[&write.kind, &write.name],
                    )?
                    .map(|row| row.try_get(0))
                    .transpose()?;
                write.check(found)?;
                match &write.body {
                    None => {
                        tx.execute(
                            "DELETE FROM resources WHERE kind = $1 AND name = $2",
                            &[&write.kind, &write.name],
                        )?;
                    }
                    Some(body) => {
                        let json = serde_json::to_vec(body).map_err(|e| {
                            StoreError::Corrupt(format!("unserialisable body: {e}"))
                        })?;
                        let sealed = sealer.seal(&json, &context(&write.kind, &write.name));
                        tx.execute(
                            "INSERT INTO resources
                                (kind, name, team, origin, body, revision, created_at, updated_at)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
                             ON CONFLICT (kind, name) DO UPDATE SET
                                team = excluded.team, origin = excluded.origin,
                                body = excluded.body, revision = excluded.revision,
                                updated_at = excluded.updated_at",
                            &[
                                &write.kind,
                                &write.name,
                                &write.team,
                                &write.origin.as_str(),
                                &sealed,
                                &revision,
                                &now,
                            ],
                        )?;
                    }
                }
            }
            append_audit(&mut tx, now_micros, revision, audit)?;
            // Delivered to the listening nodes when (and only if) this commits.
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&super::listen::CONFIG_CHANNEL, &revision.to_string()],
            )?;
            tx.commit()?;
            Ok(revision)
        })
    }

    /// Audit log entries matching `query`, newest first.
    pub fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let mut sql = String::from(
            "SELECT id, at, revision, actor, client_ip, action, kind, name, diff
             FROM audit_log WHERE true",
        );
        let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        for (column, value) in [
            ("kind", &query.kind),
            ("name", &query.name),
            ("actor", &query.actor),
            ("action", &query.action),
        ] {
            if let Some(value) = value {
                values.push(Box::new(value.clone()));
                sql.push_str(&format!(" AND {column} = ${}", values.len()));
            }
        }
        for (column, op, value) in [
            ("at", ">=", query.since),
            ("at", "<", query.until),
            ("id", "<", query.before_id),
        ] {
            if let Some(value) = value {
                values.push(Box::new(value));
                sql.push_str(&format!(" AND {column} {op} ${}", values.len()));
            }
        }
        values.push(Box::new(i64::try_from(query.limit).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", values.len()));
        self.with(|client| {
            let params: Vec<&(dyn ToSql + Sync)> = values
                .iter()
                .map(|v| v.as_ref() as &(dyn ToSql + Sync))
                .collect();
            let rows = client.query(&sql, &params)?;
            rows.iter()
                .map(|row| {
                    Ok(AuditRecord {
                        id: row.try_get(0)?,
                        at: tollgate_telemetry::record::Rfc3339::from_unix_micros(row.try_get(1)?)
                            .to_string(),
                        revision: row.try_get(2)?,
                        actor: row.try_get(3)?,
                        client_ip: row.try_get(4)?,
                        action: row.try_get(5)?,
                        kind: row.try_get(6)?,
                        name: row.try_get(7)?,
                        diff: row.try_get::<_, Option<Value>>(8)?.unwrap_or(Value::Null),
                    })
                })
                .collect()
        })
    }

    /// Seals every resource body again with `new`'s current key, in one
    /// transaction; returns how many were resealed.
    pub fn reseal_resources(&self, old: &Sealer, new: &Sealer) -> Result<usize, StoreError> {
        self.with(|client| {
            let mut tx = client.transaction()?;
            lock_revision(&mut tx)?;
            let rows = tx.query("SELECT seq, kind, name, body FROM resources", &[])?;
            for row in &rows {
                let (seq, kind, name, sealed): (i64, String, String, Vec<u8>) = (
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                );
                let context = context(&kind, &name);
                let plain = old.open(&sealed, &context)?;
                tx.execute(
                    "UPDATE resources SET body = $1 WHERE seq = $2",
                    &[&new.seal(&plain, &context), &seq],
                )?;
            }
            tx.commit()?;
            Ok(rows.len())
        })
    }

    /// One resource's stored revision, if it exists (for tests and tools).
    pub fn resource_revision(&self, kind: &str, name: &str) -> Result<Option<i64>, StoreError> {
        self.with(|client| {
            Ok(client
                .query_opt(
                    "SELECT revision FROM resources WHERE kind = $1 AND name = $2",
                    &[&kind, &name],
                )?
                .map(|row| row.try_get(0))
                .transpose()?)
        })
    }
}
