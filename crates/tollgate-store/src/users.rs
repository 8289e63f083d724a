//! Admin users: who signs in to the admin API and its console, with which
//! memberships — a role in a team, or a global role — their admin tokens and
//! their console sessions.
//!
//! The store keeps a password as the argon2id PHC string its caller made
//! (off the async threads: hashing is slow on purpose), and a session id or
//! token as its SHA-256, never the secret itself. Every change to a user is
//! written with its audit entry in one transaction. Deleting a user deletes
//! its memberships, tokens and sessions (foreign keys, see migration 5).

use std::fmt;

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::admin_tokens::{admin_token, COLUMNS as TOKEN_COLUMNS};
use crate::resources::{append_audit, now_micros, AuditEntry};
use crate::{AdminToken, SqliteStore, StoreError};

/// The team of a membership in a global role (`super_admin`, `auditor`).
pub const GLOBAL_TEAM: &str = "*";

/// The `role` column of a user's admin tokens: what they may do is the
/// user's memberships, read at each request.
pub const USER_TOKEN_ROLE: &str = "user";

/// A role in a team, or (team [`GLOBAL_TEAM`]) a global role.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Membership {
    pub team: String,
    /// `super_admin`, `team_admin`, `developer` or `auditor`.
    pub role: String,
}

/// A user as stored. Never serialised: it holds the password's hash.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub name: String,
    /// The argon2id PHC string of the password.
    pub password_hash: String,
    /// Sorted by team.
    pub memberships: Vec<Membership>,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("password_hash", &"<redacted>")
            .field("memberships", &self.memberships)
            .finish()
    }
}

/// What [`SqliteStore::update_user`] changes; `None` keeps it.
#[derive(Clone, Copy, Debug, Default)]
pub struct UserUpdate<'a> {
    /// A new password's PHC string: the user's sessions end with the old one.
    pub password_hash: Option<&'a str>,
    /// Replaces every membership.
    pub memberships: Option<&'a [Membership]>,
}

fn now_secs() -> i64 {
    now_micros() / 1_000_000
}

fn missing(name: &str) -> StoreError {
    StoreError::Missing {
        kind: "users".into(),
        name: name.into(),
    }
}

/// The user `id`'s row and memberships, read on `conn` (a transaction or not).
fn load(conn: &rusqlite::Connection, id: i64) -> Result<Option<User>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT id, name, password_hash, created_at, updated_at FROM users WHERE id = ?1",
        )?
        .query_row([id], |row| {
            Ok(User {
                id: row.get(0)?,
                name: row.get(1)?,
                password_hash: row.get(2)?,
                memberships: Vec::new(),
                created_at: row.get(3)?,
                updated_at: row.get(4)?,
            })
        })
        .optional()?;
    let Some(mut user) = row else {
        return Ok(None);
    };
    let mut stmt =
        conn.prepare_cached("SELECT team, role FROM memberships WHERE user_id = ?1 ORDER BY team")?;
    let rows = stmt.query_map([id], |row| {
        Ok(Membership {
            team: row.get(0)?,
            role: row.get(1)?,
        })
    })?;
    user.memberships = rows.collect::<Result<_, _>>()?;
    Ok(Some(user))
}

fn id_of(conn: &rusqlite::Connection, name: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id FROM users WHERE name = ?1")?
        .query_row([name], |row| row.get(0))
        .optional()?)
}

fn insert_memberships(
    conn: &rusqlite::Connection,
    user_id: i64,
    memberships: &[Membership],
) -> Result<(), StoreError> {
    let mut insert =
        conn.prepare_cached("INSERT INTO memberships (user_id, team, role) VALUES (?1, ?2, ?3)")?;
    for membership in memberships {
        insert.execute(params![user_id, membership.team, membership.role])?;
    }
    Ok(())
}

/// The config revision, which user writes record in their audit entries
/// without bumping it: they change who may act, not what is served.
fn revision(conn: &rusqlite::Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT revision FROM config_state WHERE id = 1",
        [],
        |row| row.get(0),
    )?)
}

impl SqliteStore {
    /// Stores a new user and its `audit` entries; [`StoreError::Exists`]
    /// if the name is taken.
    pub fn create_user(
        &self,
        name: &str,
        password_hash: &str,
        memberships: &[Membership],
        audit: &[AuditEntry],
    ) -> Result<User, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if id_of(&tx, name)?.is_some() {
            return Err(StoreError::Exists {
                kind: "users".into(),
                name: name.into(),
            });
        }
        let now = now_secs();
        let id: i64 = tx.query_row(
            "INSERT INTO users (name, password_hash, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?3) RETURNING id",
            params![name, password_hash, now],
            |row| row.get(0),
        )?;
        insert_memberships(&tx, id, memberships)?;
        append_audit(&tx, now_micros(), revision(&tx)?, audit)?;
        let user = load(&tx, id)?.ok_or_else(|| missing(name))?;
        tx.commit()?;
        Ok(user)
    }

    /// The user named `name`, with its memberships.
    pub fn find_user(&self, name: &str) -> Result<Option<User>, StoreError> {
        let conn = self.lock();
        match id_of(&conn, name)? {
            Some(id) => load(&conn, id),
            None => Ok(None),
        }
    }

    /// The user `id`, with its memberships.
    pub fn find_user_by_id(&self, id: i64) -> Result<Option<User>, StoreError> {
        load(&self.lock(), id)
    }

    /// Every user, sorted by name.
    pub fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let ids: Vec<i64> = {
            let mut stmt = tx.prepare_cached("SELECT id FROM users ORDER BY name")?;
            let rows = stmt.query_map([], |row| row.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut users = Vec::with_capacity(ids.len());
        for id in ids {
            users.extend(load(&tx, id)?);
        }
        tx.commit()?;
        Ok(users)
    }

    /// Changes the user `name` as `update` says, with its `audit` entries;
    /// [`StoreError::Missing`] if there is no such user. A new password
    /// ends the user's sessions.
    pub fn update_user(
        &self,
        name: &str,
        update: &UserUpdate<'_>,
        audit: &[AuditEntry],
    ) -> Result<User, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id = id_of(&tx, name)?.ok_or_else(|| missing(name))?;
        let now = now_secs();
        if let Some(hash) = update.password_hash {
            tx.execute(
                "UPDATE users SET password_hash = ?2 WHERE id = ?1",
                params![id, hash],
            )?;
            tx.execute("DELETE FROM sessions WHERE user_id = ?1", [id])?;
        }
        if let Some(memberships) = update.memberships {
            tx.execute("DELETE FROM memberships WHERE user_id = ?1", [id])?;
            insert_memberships(&tx, id, memberships)?;
        }
        tx.execute(
            "UPDATE users SET updated_at = ?2 WHERE id = ?1",
            params![id, now],
        )?;
        append_audit(&tx, now_micros(), revision(&tx)?, audit)?;
        let user = load(&tx, id)?.ok_or_else(|| missing(name))?;
        tx.commit()?;
        Ok(user)
    }

    /// Deletes the user `name` with its memberships, tokens and sessions,
    /// and appends its `audit` entries; [`StoreError::Missing`] if there is
    /// no such user.
    pub fn delete_user(&self, name: &str, audit: &[AuditEntry]) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let deleted = tx.execute("DELETE FROM users WHERE name = ?1", [name])?;
        if deleted == 0 {
            return Err(missing(name));
        }
        append_audit(&tx, now_micros(), revision(&tx)?, audit)?;
        tx.commit()?;
        Ok(())
    }

    /// Every admin token (never the token itself), oldest first.
    pub fn list_admin_tokens(&self) -> Result<Vec<AdminToken>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {TOKEN_COLUMNS} FROM admin_tokens ORDER BY id"
        ))?;
        let rows = stmt.query_map([], admin_token)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes the admin token `id` with its `audit` entries; `false` when
    /// there was none.
    pub fn delete_admin_token(&self, id: i64, audit: &[AuditEntry]) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if tx.execute("DELETE FROM admin_tokens WHERE id = ?1", [id])? == 0 {
            return Ok(false);
        }
        append_audit(&tx, now_micros(), revision(&tx)?, audit)?;
        tx.commit()?;
        Ok(true)
    }

    /// Stores an admin token of the user `user` by its SHA-256, `hash`,
    /// under `token_name`, with its `audit` entries.
    pub fn insert_user_token(
        &self,
        user: &str,
        token_name: &str,
        hash: &[u8; 32],
        audit: &[AuditEntry],
    ) -> Result<AdminToken, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id = id_of(&tx, user)?.ok_or_else(|| missing(user))?;
        let token = tx
            .query_row(
                &format!(
                    "INSERT INTO admin_tokens (name, token_hash, role, created_at, user_id)
                     VALUES (?1, ?2, ?3, ?4, ?5) RETURNING {TOKEN_COLUMNS}"
                ),
                params![token_name, hash.as_slice(), USER_TOKEN_ROLE, now_secs(), id],
                admin_token,
            )
            .map_err(|error| match error {
                rusqlite::Error::SqliteFailure(e, _)
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::AdminTokenNameTaken(token_name.to_owned())
                }
                other => other.into(),
            })?;
        append_audit(&tx, now_micros(), revision(&tx)?, audit)?;
        tx.commit()?;
        Ok(token)
    }

    /// Starts a console session of the user `user_id`, known by the SHA-256
    /// of its id, until `expires_at` (Unix seconds). Ended sessions are
    /// deleted on the way.
    pub fn create_session(
        &self,
        user_id: i64,
        hash: &[u8; 32],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let now = now_secs();
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now])?;
        tx.execute(
            "INSERT INTO sessions (id_hash, user_id, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![hash.as_slice(), user_id, now, expires_at],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The user of the session whose id's SHA-256 is `hash`, if it has not
    /// ended by `now` (Unix seconds).
    pub fn find_session_user(&self, hash: &[u8; 32], now: i64) -> Result<Option<User>, StoreError> {
        let conn = self.lock();
        let user_id: Option<i64> = conn
            .prepare_cached("SELECT user_id FROM sessions WHERE id_hash = ?1 AND expires_at > ?2")?
            .query_row(params![hash.as_slice(), now], |row| row.get(0))
            .optional()?;
        match user_id {
            Some(id) => load(&conn, id),
            None => Ok(None),
        }
    }

    /// Ends the session whose id's SHA-256 is `hash`; whether there was one.
    pub fn delete_session(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        let deleted = self
            .lock()
            .execute("DELETE FROM sessions WHERE id_hash = ?1", [hash.as_slice()])?;
        Ok(deleted > 0)
    }

    /// Ends every session of the user whose session's id hashes to `hash`;
    /// how many ended.
    pub fn delete_sessions_of_user(&self, hash: &[u8; 32]) -> Result<usize, StoreError> {
        Ok(self.lock().execute(
            "DELETE FROM sessions WHERE user_id = (SELECT user_id FROM sessions WHERE id_hash = ?1)",
            [hash.as_slice()],
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AuditQuery;
    use serde_json::json;

    fn member(team: &str, role: &str) -> Membership {
        Membership {
            team: team.into(),
            role: role.into(),
        }
    }

    fn audit(action: &str, name: &str) -> AuditEntry {
        AuditEntry {
            actor: "tester".into(),
            client_ip: None,
            action: action.into(),
            kind: "users".into(),
            name: name.into(),
            diff: json!({ "after": { "name": name } }),
        }
    }

    #[test]
    fn users_are_created_changed_and_deleted_with_their_audit_entries() {
        let store = SqliteStore::open("sqlite::memory:").unwrap();
        let memberships = [member("shop", "team_admin"), member("*", "auditor")];
        let ann = store
            .create_user(
                "ann",
                "$argon2id$one",
                &memberships,
                &[audit("create", "ann")],
            )
            .unwrap();
        assert_eq!(
            ann.memberships,
            [member("*", "auditor"), member("shop", "team_admin")]
        );
        assert!(!format!("{ann:?}").contains("argon2"), "{ann:?}");
        assert!(matches!(
            store.create_user("ann", "$argon2id$two", &[], &[]),
            Err(StoreError::Exists { .. })
        ));
        // A membership the schema refuses fails the whole write.
        assert!(store
            .create_user(
                "bob",
                "h",
                &[member("*", "developer")],
                &[audit("create", "bob")]
            )
            .is_err());
        assert!(store.find_user("bob").unwrap().is_none());

        let changed = store
            .update_user(
                "ann",
                &UserUpdate {
                    password_hash: Some("$argon2id$new"),
                    memberships: Some(&[member("ops", "developer")]),
                },
                &[audit("update", "ann")],
            )
            .unwrap();
        assert_eq!(changed.password_hash, "$argon2id$new");
        assert_eq!(changed.memberships, [member("ops", "developer")]);
        assert_eq!(store.find_user_by_id(ann.id).unwrap(), Some(changed));
        assert!(matches!(
            store.update_user("nobody", &UserUpdate::default(), &[]),
            Err(StoreError::Missing { .. })
        ));
        assert_eq!(store.list_users().unwrap().len(), 1);

        store.delete_user("ann", &[audit("delete", "ann")]).unwrap();
        assert!(store.find_user("ann").unwrap().is_none());
        assert!(matches!(
            store.delete_user("ann", &[]),
            Err(StoreError::Missing { .. })
        ));
        let log = store
            .query_audit(&AuditQuery {
                kind: Some("users".into()),
                limit: 10,
                ..AuditQuery::default()
            })
            .unwrap();
        let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["delete", "update", "create"]);
    }

    #[test]
    fn tokens_and_sessions_belong_to_their_user_and_go_with_it() {
        let store = SqliteStore::open("sqlite::memory:").unwrap();
        let ann = store
            .create_user("ann", "h1", &[member("shop", "developer")], &[])
            .unwrap();
        let token = store
            .insert_user_token("ann", "ann/1", &[1; 32], &[audit("create_token", "ann")])
            .unwrap();
        assert_eq!(token.user_id, Some(ann.id));
        assert_eq!(token.role, USER_TOKEN_ROLE);
        assert_eq!(
            store.find_admin_token(&[1; 32]).unwrap().unwrap().user_id,
            Some(ann.id)
        );
        assert!(matches!(
            store.insert_user_token("ann", "ann/1", &[2; 32], &[]),
            Err(StoreError::AdminTokenNameTaken(_))
        ));

        let now = now_secs();
        store.create_session(ann.id, &[3; 32], now + 60).unwrap();
        store.create_session(ann.id, &[4; 32], now - 1).unwrap();
        assert_eq!(
            store
                .find_session_user(&[3; 32], now)
                .unwrap()
                .unwrap()
                .name,
            "ann"
        );
        assert!(
            store.find_session_user(&[4; 32], now).unwrap().is_none(),
            "ended"
        );
        assert!(store.delete_session(&[3; 32]).unwrap());
        assert!(store.find_session_user(&[3; 32], now).unwrap().is_none());

        // A new password ends the sessions; deleting the user, its tokens.
        store.create_session(ann.id, &[5; 32], now + 60).unwrap();
        store
            .update_user(
                "ann",
                &UserUpdate {
                    password_hash: Some("h2"),
                    memberships: None,
                },
                &[],
            )
            .unwrap();
        assert!(store.find_session_user(&[5; 32], now).unwrap().is_none());
        store.create_session(ann.id, &[6; 32], now + 60).unwrap();
        store.delete_user("ann", &[]).unwrap();
        assert!(store.find_admin_token(&[1; 32]).unwrap().is_none());
        assert!(store.find_session_user(&[6; 32], now).unwrap().is_none());
        let orphans: i64 = store
            .lock()
            .query_row(
                "SELECT (SELECT count(*) FROM memberships) + (SELECT count(*) FROM sessions)",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(orphans, 0);
    }
}
