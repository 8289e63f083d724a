//! The configuration's resources (teams, services, APIs, consumers …) as the
//! store keeps them, the config revision, and the audit log.
//!
//! Each resource is one row: its kind and name in clear for look-ups, its
//! body (the resource's JSON, exactly the YAML file's fields) sealed under
//! the master key (see [`crate::sealing`]). Every commit bumps the one
//! config revision; a resource's `revision` is the config revision of its
//! last write and serves as its ETag. A commit writes its audit entries in
//! the same transaction, so no change is ever on record without its entry
//! or the other way round; triggers refuse any update or delete of the
//! audit log.

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use serde_json::Value;

use crate::sealing::Sealer;
use crate::{SqliteStore, StoreError};

/// Who put a resource in the store: the configuration file, which may later
/// remove what it put there, or the admin API, whose resources the file
/// never removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    File,
    Admin,
}

impl Origin {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Origin::File => "file",
            Origin::Admin => "admin",
        }
    }

    pub(crate) fn parse(text: &str) -> Origin {
        if text == "file" {
            Origin::File
        } else {
            Origin::Admin
        }
    }
}

/// A resource as stored, its body opened.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredResource {
    /// As the YAML file names its list: `services`, `apis` …
    pub kind: String,
    pub name: String,
    /// The owning team, when the resource has one.
    pub team: Option<String>,
    pub origin: Origin,
    pub body: Value,
    /// The config revision of its last write: its ETag.
    pub revision: i64,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
}

/// Every resource at one config revision, in the order they were created.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigState {
    pub revision: i64,
    pub resources: Vec<StoredResource>,
}

/// What a write expects to find, checked inside its transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Anything,
    /// Creation: no resource of that kind and name.
    Absent,
    /// An existing resource, whatever its revision (`If-Match: *`, deletes).
    Present,
    /// An existing resource at exactly this revision (`If-Match`).
    Revision(i64),
}

/// One resource created, replaced or (with no body) deleted.
#[derive(Clone, Debug)]
pub struct ResourceWrite {
    pub kind: String,
    pub name: String,
    pub team: Option<String>,
    pub origin: Origin,
    pub body: Option<Value>,
    pub expect: Expect,
}

impl ResourceWrite {
    /// Whether the write's expectation holds, `found` being the stored
    /// resource's revision (`None`: no such resource); both stores check it
    /// inside their commit's transaction.
    pub(crate) fn check(&self, found: Option<i64>) -> Result<(), StoreError> {
        let (kind, name) = (|| self.kind.clone(), || self.name.clone());
        match (self.expect, found) {
            (Expect::Absent, Some(_)) => Err(StoreError::Exists {
                kind: kind(),
                name: name(),
            }),
            (Expect::Revision(_) | Expect::Present, None) => Err(StoreError::Missing {
                kind: kind(),
                name: name(),
            }),
            (Expect::Revision(expected), Some(found)) if expected != found => {
                Err(StoreError::Conflict {
                    kind: kind(),
                    name: name(),
                    found,
                })
            }
            _ => Ok(()),
        }
    }
}

/// One line of the audit log, as a commit writes it.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    pub actor: String,
    pub client_ip: Option<String>,
    /// `create`, `update`, `delete`, `approve` …
    pub action: String,
    pub kind: String,
    pub name: String,
    /// `{"before": …, "after": …}` with secrets already redacted.
    pub diff: Value,
}

/// An audit log line as read back.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    /// RFC 3339 UTC.
    pub at: String,
    pub revision: i64,
    pub actor: String,
    pub client_ip: Option<String>,
    pub action: String,
    pub kind: String,
    pub name: String,
    pub diff: Value,
}

/// Filters for [`SqliteStore::query_audit`]; newest first.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Unix microseconds, inclusive.
    pub since: Option<i64>,
    /// Unix microseconds, exclusive.
    pub until: Option<i64>,
    /// Only entries older than this id (the previous page's `next`).
    pub before_id: Option<i64>,
    pub limit: usize,
}

pub(crate) fn context(kind: &str, name: &str) -> Vec<u8> {
    format!("{kind}/{name}").into_bytes()
}

pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Appends `entries` to the audit log inside `tx`, the transaction of the
/// change they record, at `at` (Unix microseconds) and config `revision`.
pub(crate) fn append_audit(
    tx: &rusqlite::Transaction<'_>,
    at: i64,
    revision: i64,
    entries: &[AuditEntry],
) -> Result<(), StoreError> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO audit_log (at, revision, actor, client_ip, action, kind, name, diff)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for entry in entries {
        insert.execute(params![
            at,
            revision,
            entry.actor,
            entry.client_ip,
            entry.action,
            entry.kind,
            entry.name,
            entry.diff.to_string()
        ])?;
    }
    Ok(())
}

impl SqliteStore {
    /// Appends `entries` that record no change of configuration (sign-ins)
    /// at the current revision, without bumping it.
    pub fn record_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let revision: i64 = tx.query_row(
            "SELECT revision FROM config_state WHERE id = 1",
            [],
            |row| row.get(0),
        )?;
        append_audit(&tx, now_micros(), revision, entries)?;
        tx.commit()?;
        Ok(())
    }

    /// The config revision: bumped by every commit.
    pub fn config_revision(&self) -> Result<i64, StoreError> {
        Ok(self.lock().query_row(
            "SELECT revision FROM config_state WHERE id = 1",
            [],
            |row| row.get(0),
        )?)
    }

    /// Every resource with the revision they make up, read in one transaction.
    pub fn load_resources(&self, sealer: &Sealer) -> Result<ConfigState, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let revision: i64 = tx.query_row(
            "SELECT revision FROM config_state WHERE id = 1",
            [],
            |row| row.get(0),
        )?;
        let mut resources = Vec::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT kind, name, team, origin, body, revision, created_at, updated_at
                 FROM resources ORDER BY seq",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let kind: String = row.get(0)?;
                let name: String = row.get(1)?;
                let origin: String = row.get(3)?;
                let sealed: Vec<u8> = row.get(4)?;
                let plain = sealer.open(&sealed, &context(&kind, &name))?;
                let body = serde_json::from_slice(&plain).map_err(|e| {
                    StoreError::Corrupt(format!("{kind}/{name}: stored body is not JSON: {e}"))
                })?;
                resources.push(StoredResource {
                    team: row.get(2)?,
                    origin: Origin::parse(&origin),
                    body,
                    revision: row.get(5)?,
                    created_at: row.get(6)?,
                    updated_at: row.get(7)?,
                    kind,
                    name,
                });
            }
        }
        tx.commit()?;
        Ok(ConfigState {
            revision,
            resources,
        })
    }

    /// Applies `writes` and appends `audit` in one transaction, bumping the
    /// config revision once; returns the new revision. Fails whole, with
    /// [`StoreError::Conflict`] or [`StoreError::Exists`] / [`StoreError::Missing`],
    /// when a write's expectation does not hold.
    ///
    /// `based_on`, when given, is the revision the caller checked the change
    /// against: if another writer committed since, [`StoreError::Stale`].
    pub fn commit(
        &self,
        sealer: &Sealer,
        based_on: Option<i64>,
        writes: &[ResourceWrite],
        audit: &[AuditEntry],
    ) -> Result<i64, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let revision: i64 = tx.query_row(
            "UPDATE config_state SET revision = revision + 1 WHERE id = 1 RETURNING revision",
            [],
            |row| row.get(0),
        )?;
        if let Some(base) = based_on {
            if revision != base + 1 {
                return Err(StoreError::Stale {
                    based_on: base,
                    current: revision - 1,
                });
            }
        }
        let now_micros = now_micros();
        let now = now_micros / 1_000_000;
        for write in writes {
            let current: Option<i64> = tx
                .query_row(
                    "SELECT revision FROM resources WHERE kind = ?1 AND name = ?2",
                    params![write.kind, write.name],
                    |row| row.get(0),
                )
                .optional()?;
            write.check(current)?;
            match &write.body {
                None => {
                    tx.execute(
                        "DELETE FROM resources WHERE kind = ?1 AND name = ?2",
                        params![write.kind, write.name],
                    )?;
                }
                Some(body) => {
                    let json = serde_json::to_vec(body)
                        .map_err(|e| StoreError::Corrupt(format!("unserialisable body: {e}")))?;
                    let sealed = sealer.seal(&json, &context(&write.kind, &write.name));
                    tx.execute(
                        "INSERT INTO resources
                            (kind, name, team, origin, body, revision, created_at, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
                         ON CONFLICT (kind, name) DO UPDATE SET
                            team = excluded.team, origin = excluded.origin,
                            body = excluded.body, revision = excluded.revision,
                            updated_at = excluded.updated_at",
                        params![
                            write.kind,
                            write.name,
                            write.team,
                            write.origin.as_str(),
                            sealed,
                            revision,
                            now
                        ],
                    )?;
                }
            }
        }
        append_audit(&tx, now_micros, revision, audit)?;
        tx.commit()?;
        Ok(revision)
    }

    /// Audit log entries matching `query`, newest first.
    pub fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let mut sql = String::from(
            "SELECT id, at, revision, actor, client_ip, action, kind, name, diff
             FROM audit_log WHERE 1 = 1",
        );
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        let mut text = |sql: &mut String, column: &str, value: &Option<String>| {
            if let Some(value) = value {
                values.push(value.clone().into());
                sql.push_str(&format!(" AND {column} = ?{}", values.len()));
            }
        };
        text(&mut sql, "kind", &query.kind);
        text(&mut sql, "name", &query.name);
        text(&mut sql, "actor", &query.actor);
        text(&mut sql, "action", &query.action);
        for (column, op, value) in [
            ("at", ">=", query.since),
            ("at", "<", query.until),
            ("id", "<", query.before_id),
        ] {
            if let Some(value) = value {
                values.push(value.into());
                sql.push_str(&format!(" AND {column} {op} ?{}", values.len()));
            }
        }
        values.push(i64::try_from(query.limit).unwrap_or(i64::MAX).into());
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", values.len()));
        let conn = self.lock();
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(values), |row| {
            let diff: String = row.get(8)?;
            Ok(AuditRecord {
                id: row.get(0)?,
                at: tollgate_telemetry::record::Rfc3339::from_unix_micros(row.get(1)?).to_string(),
                revision: row.get(2)?,
                actor: row.get(3)?,
                client_ip: row.get(4)?,
                action: row.get(5)?,
                kind: row.get(6)?,
                name: row.get(7)?,
                diff: serde_json::from_str(&diff).unwrap_or(Value::Null),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Seals every resource body again with `new`'s current key, in one
    /// transaction; returns how many were resealed. Bodies are opened with
    /// `old` (which may know several keys).
    pub fn reseal_resources(&self, old: &Sealer, new: &Sealer) -> Result<usize, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rows: Vec<(i64, String, String, Vec<u8>)> = {
            let mut stmt = tx.prepare("SELECT seq, kind, name, body FROM resources")?;
            let rows = stmt.query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        for (seq, kind, name, sealed) in &rows {
            let context = context(kind, name);
            let plain = old.open(sealed, &context)?;
            tx.execute(
                "UPDATE resources SET body = ?1 WHERE seq = ?2",
                params![new.seal(&plain, &context), seq],
            )?;
        }
        tx.commit()?;
        Ok(rows.len())
    }

    /// One resource's stored revision, if it exists (for tests and tools).
    pub fn resource_revision(&self, kind: &str, name: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT revision FROM resources WHERE kind = ?1 AND name = ?2",
                params![kind, name],
                |row| row.get(0),
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealing::MasterKey;
    use serde_json::json;

    fn put(kind: &str, name: &str, body: Value, expect: Expect) -> ResourceWrite {
        ResourceWrite {
            kind: kind.into(),
            name: name.into(),
            team: None,
            origin: Origin::Admin,
            body: Some(body),
            expect,
        }
    }

    fn audit(action: &str, kind: &str, name: &str) -> AuditEntry {
        AuditEntry {
            actor: "tester".into(),
            client_ip: Some("127.0.0.1".into()),
            action: action.into(),
            kind: kind.into(),
            name: name.into(),
            diff: json!({"after": {"name": name}}),
        }
    }

    #[test]
    fn commits_bump_the_revision_and_check_expectations() {
        let store = SqliteStore::open("sqlite::memory:").unwrap();
        let sealer = Sealer::new(MasterKey::generate());
        assert_eq!(store.config_revision().unwrap(), 0);
        let body = json!({"name": "orders", "upstream": {"targets": [{"url": "http://a"}]}});
        let r1 = store
            .commit(
                &sealer,
                None,
                &[put("services", "orders", body.clone(), Expect::Absent)],
                &[audit("create", "services", "orders")],
            )
            .unwrap();
        assert_eq!(r1, 1);
        let state = store.load_resources(&sealer).unwrap();
        assert_eq!(state.revision, 1);
        assert_eq!(state.resources.len(), 1);
        assert_eq!(state.resources[0].body, body);
        assert_eq!(state.resources[0].revision, 1);

        let again = store.commit(
            &sealer,
            None,
            &[put("services", "orders", body.clone(), Expect::Absent)],
            &[],
        );
        assert!(matches!(again, Err(StoreError::Exists { .. })), "{again:?}");
        let stale = store.commit(
            &sealer,
            None,
            &[put("services", "orders", body.clone(), Expect::Revision(7))],
            &[],
        );
        assert!(
            matches!(stale, Err(StoreError::Conflict { found: 1, .. })),
            "{stale:?}"
        );
        // A failed commit changes nothing, not even the revision.
        assert_eq!(store.config_revision().unwrap(), 1);
        let r2 = store
            .commit(
                &sealer,
                None,
                &[ResourceWrite {
                    body: None,
                    ..put("services", "orders", Value::Null, Expect::Revision(1))
                }],
                &[audit("delete", "services", "orders")],
            )
            .unwrap();
        assert_eq!(r2, 2);
        assert!(store.load_resources(&sealer).unwrap().resources.is_empty());
        let log = store
            .query_audit(&AuditQuery {
                limit: 10,
                ..AuditQuery::default()
            })
            .unwrap();
        let actions: Vec<_> = log
            .iter()
            .map(|e| (e.action.as_str(), e.revision))
            .collect();
        assert_eq!(actions, [("delete", 2), ("create", 1)]);
    }

    #[test]
    fn the_audit_log_is_append_only() {
        let store = SqliteStore::open("sqlite::memory:").unwrap();
        let sealer = Sealer::new(MasterKey::generate());
        store
            .commit(&sealer, Some(0), &[], &[audit("create", "teams", "a")])
            .unwrap();
        let conn = store.lock();
        assert!(conn.execute("DELETE FROM audit_log", []).is_err());
        assert!(conn
            .execute("UPDATE audit_log SET actor = 'x'", [])
            .is_err());
    }

    #[test]
    fn bodies_are_sealed_in_the_file_and_reseal_under_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&format!("sqlite://{}", path.display())).unwrap();
        let old = Sealer::new(MasterKey::generate());
        let secret = "sk-live-UPSTREAM-SECRET-123";
        let body = json!({"name": "llm", "upstream": {"auth": secret}});
        store
            .commit(
                &old,
                None,
                &[put("services", "llm", body.clone(), Expect::Absent)],
                &[],
            )
            .unwrap();
        let new = Sealer::new(MasterKey::generate());
        assert_eq!(store.reseal_resources(&old, &new).unwrap(), 1);
        assert!(store.load_resources(&old).is_err());
        assert_eq!(store.load_resources(&new).unwrap().resources[0].body, body);
        drop(store);
        let mut bytes = std::fs::read(&path).unwrap();
        if let Ok(wal) = std::fs::read(dir.path().join("t.db-wal")) {
            bytes.extend(wal);
        }
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
}
