//! Admin tokens, admin users with their memberships and sessions, and quota
//! counters in PostgreSQL: see `crate::admin_tokens`, `crate::users` and
//! `crate::counters` for what they are.

use postgres::error::SqlState;
use postgres::{GenericClient, Row};

use super::resources::{append_audit, lock_revision};
use super::PgStore;
use crate::resources::now_micros;
use crate::{AdminToken, AuditEntry, Membership, StoreError, User, UserUpdate, USER_TOKEN_ROLE};

const TOKEN_COLUMNS: &str = crate::admin_tokens::COLUMNS;

fn admin_token(row: &Row) -> Result<AdminToken, StoreError> {
    Ok(AdminToken {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        role: row.try_get(2)?,
        created_at: row.try_get(3)?,
        last_used_at: row.try_get(4)?,
        user_id: row.try_get(5)?,
    })
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

fn is_unique_violation(error: &postgres::Error) -> bool {
    error.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// The user `id`'s row and memberships.
fn load(client: &mut impl GenericClient, id: i64) -> Result<Option<User>, StoreError> {
    let Some(row) = client.query_opt(
        "SELECT id, name, password_hash, created_at, updated_at FROM users WHERE id = $1",
        &[&id],
    )?
    else {
        return Ok(None);
    };
    let memberships = client
        .query(
            "SELECT team, role FROM memberships WHERE user_id = $1 ORDER BY team",
            &[&id],
        )?
        .iter()
        .map(|row| {
            Ok(Membership {
                team: row.try_get(0)?,
                role: row.try_get(1)?,
            })
        })
        .collect::<Result<_, postgres::Error>>()?;
    Ok(Some(User {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        password_hash: row.try_get(2)?,
        memberships,
        created_at: row.try_get(3)?,
        updated_at: row.try_get(4)?,
    }))
}

fn id_of(client: &mut impl GenericClient, name: &str) -> Result<Option<i64>, StoreError> {
    Ok(client
        .query_opt("SELECT id FROM users WHERE name = $1", &[&name])?
        .map(|row| row.try_get(0))
        .transpose()?)
}

fn insert_memberships(
    client: &mut impl GenericClient,
    user_id: i64,
    memberships: &[Membership],
) -> Result<(), StoreError> {
    for membership in memberships {
        client.execute(
            "INSERT INTO memberships (user_id, team, role) VALUES ($1, $2, $3)",
            &[&user_id, &membership.team, &membership.role],
        )?;
    }
    Ok(())
}

impl PgStore {
    /// How many admin tokens are stored.
    pub fn admin_token_count(&self) -> Result<u64, StoreError> {
        self.with(|client| {
            let count: i64 = client
                .query_one("SELECT count(*) FROM admin_tokens", &[])?
                .try_get(0)?;
            Ok(count.try_into().unwrap_or(0))
        })
    }

    /// As [`crate::SqliteStore::list_admin_tokens`].
    pub fn list_admin_tokens(&self) -> Result<Vec<AdminToken>, StoreError> {
        self.with(|client| {
            client
                .query(
                    &format!("SELECT {TOKEN_COLUMNS} FROM admin_tokens ORDER BY id"),
                    &[],
                )?
                .iter()
                .map(admin_token)
                .collect()
        })
    }

    /// As [`crate::SqliteStore::delete_admin_token`].
    pub fn delete_admin_token(&self, id: i64, audit: &[AuditEntry]) -> Result<bool, StoreError> {
        self.with(|client| {
            let mut tx = client.transaction()?;
            let revision = lock_revision(&mut tx)?;
            if tx.execute("DELETE FROM admin_tokens WHERE id = $1", &[&id])? == 0 {
                return Ok(false);
            }
            append_audit(&mut tx, now_micros(), revision, audit)?;
            tx.commit()?;
            Ok(true)
        })
    }

    /// As [`crate::SqliteStore::insert_admin_token`].
    pub fn insert_admin_token(
        &self,
        name: &str,
        hash: &[u8; 32],
        role: &str,
    ) -> Result<AdminToken, StoreError> {
        let created_at = now_secs();
        self.with(|client| {
            let mut tx = client.transaction()?;
            lock_revision(&mut tx)?;
            if tx
                .query_opt("SELECT 1 FROM admin_tokens WHERE name = $1", &[&name])?
                .is_some()
            {
                return Err(StoreError::AdminTokenNameTaken(name.to_owned()));
            }
            if tx
                .query_opt(
                    "SELECT 1 FROM admin_tokens WHERE token_hash = $1",
                    &[&hash.as_slice()],
                )?
                .is_some()
            {
                return Err(StoreError::AdminTokenHashTaken);
            }
            let row = tx.query_one(
                &format!(
                    "INSERT INTO admin_tokens (name, token_hash, role, created_at)
                     VALUES ($1, $2, $3, $4) RETURNING {TOKEN_COLUMNS}"
                ),
                &[&name, &hash.as_slice(), &role, &created_at],
            )?;
            let token = admin_token(&row)?;
            tx.commit()?;
            Ok(token)
        })
    }

    /// The token whose SHA-256 is `hash`, if one is stored.
    pub fn find_admin_token(&self, hash: &[u8; 32]) -> Result<Option<AdminToken>, StoreError> {
        self.with(|client| {
            client
                .query_opt(
                    &format!("SELECT {TOKEN_COLUMNS} FROM admin_tokens WHERE token_hash = $1"),
                    &[&hash.as_slice()],
                )?
                .map(|row| admin_token(&row))
                .transpose()
        })
    }

    /// As [`crate::SqliteStore::touch_admin_token`].
    pub fn touch_admin_token(&self, id: i64, at: i64) -> Result<(), StoreError> {
        self.with(|client| {
            client.execute(
                "UPDATE admin_tokens SET last_used_at = greatest(coalesce(last_used_at, $2), $2)
                 WHERE id = $1",
                &[&id, &at],
            )?;
            Ok(())
        })
    }

    /// As [`crate::SqliteStore::load_quota_counters`].
    pub fn load_quota_counters(&self, now: i64) -> Result<Vec<(String, i64, u64)>, StoreError> {
        self.with(|client| {
            client
                .query(
                    "SELECT key, expires_at, count FROM quota_counters WHERE expires_at > $1",
                    &[&now],
                )?
                .iter()
                .map(|row| {
                    let count: i64 = row.try_get(2)?;
                    Ok((
                        row.try_get(0)?,
                        row.try_get(1)?,
                        count.try_into().unwrap_or(0),
                    ))
                })
                .collect()
        })
    }

    /// As [`crate::SqliteStore::save_quota_counters`]: several nodes may
    /// save the same key; the highest count wins.
    pub fn save_quota_counters<'a>(
        &self,
        counters: impl IntoIterator<Item = (&'a str, i64, u64)>,
        now: i64,
    ) -> Result<(), StoreError> {
        let rows: Vec<(&str, i64, i64)> = counters
            .into_iter()
            .map(|(key, expires_at, count)| {
                (key, expires_at, i64::try_from(count).unwrap_or(i64::MAX))
            })
            .collect();
        self.with(|client| {
            let mut tx = client.transaction()?;
            let upsert = tx.prepare(
                "INSERT INTO quota_counters (key, expires_at, count) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET
                     expires_at = excluded.expires_at,
                     count = greatest(quota_counters.count, excluded.count)",
            )?;
            for (key, expires_at, count) in &rows {
                tx.execute(&upsert, &[key, expires_at, count])?;
            }
            tx.execute("DELETE FROM quota_counters WHERE expires_at <= $1", &[&now])?;
            tx.commit()?;
            Ok(())
        })
    }

    /// As [`crate::SqliteStore::create_user`].
    pub fn create_user(
        &self,
        name: &str,
        password_hash: &str,
        memberships: &[Membership],
        audit: &[AuditEntry],
    ) -> Result<User, StoreError> {
        self.with(|client| {
            let mut tx = client.transaction()?;
            let revision = lock_revision(&mut tx)?;
            if id_of(&mut tx, name)?.is_some() {
                return Err(StoreError::Exists {
                    kind: "users".into(),
                    name: name.into(),
                });
            }
            let now = now_secs();
            let id: i64 = tx
                .query_one(
                    "INSERT INTO users (name, password_hash, created_at, updated_at)
                     VALUES ($1, $2, $3, $3) RETURNING id",
                    &[&name, &password_hash, &now],
                )?
                .try_get(0)?;
            insert_memberships(&mut tx, id, memberships)?;
            append_audit(&mut tx, now_micros(), revision, audit)?;
            let user = load(&mut tx, id)?.ok_or_else(|| missing(name))?;
            tx.commit()?;
            Ok(user)
        })
    }

    /// The user named `name`, with its memberships.
    pub fn find_user(&self, name: &str) -> Result<Option<User>, StoreError> {
        self.with(|client| {
            let mut tx = client.build_transaction().read_only(true).start()?;
            let user = match id_of(&mut tx, name)? {
                Some(id) => load(&mut tx, id)?,
                None => None,
            };
            tx.commit()?;
            Ok(user)
        })
    }

    /// The user `id`, with its memberships.
    pub fn find_user_by_id(&self, id: i64) -> Result<Option<User>, StoreError> {
        self.with(|client| {
            let mut tx = client.build_transaction().read_only(true).start()?;
            let user = load(&mut tx, id)?;
            tx.commit()?;
            Ok(user)
        })
    }

    /// Every user, sorted by name.
    pub fn list_users(&self) -> Result<Vec<User>, StoreError> {
        self.with(|client| {
            let mut tx = client
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let ids: Vec<i64> = tx
                .query("SELECT id FROM users ORDER BY name", &[])?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?;
            let mut users = Vec::with_capacity(ids.len());
            for id in ids {
                users.extend(load(&mut tx, id)?);
            }
            tx.commit()?;
            Ok(users)
        })
    }

    /// As [`crate::SqliteStore::update_user`].
    pub fn update_user(
        &self,
        name: &str,
        update: &UserUpdate<'_>,
        audit: &[AuditEntry],
    ) -> Result<User, StoreError> {
        self.with(|client| {
            let mut tx = client.transaction()?;
            let revision = lock_revision(&mut tx)?;
            let id = id_of(&mut tx, name)?.ok_or_else(|| missing(name))?;
            if let Some(hash) = update.password_hash {
                tx.execute(
                    "UPDATE users SET password_hash = $2 WHERE id = $1",
                    &[&id, &hash],
                )?;
                tx.execute("DELETE FROM sessions WHERE user_id = $1", &[&id])?;
            }
            if let Some(memberships) = update.memberships {
                tx.execute("DELETE FROM memberships WHERE user_id = $1", &[&id])?;
                insert_memberships(&mut tx, id, memberships)?;
            }
            tx.execute(
                "UPDATE users SET updated_at = $2 WHERE id = $1",
                &[&id, &now_secs()],
            )?;
            append_audit(&mut tx, now_micros(), revision, audit)?;
            let user = load(&mut tx, id)?.ok_or_else(|| missing(name))?;
            tx.commit()?;
            Ok(user)
        })
    }

    /// As [`crate::SqliteStore::delete_user`].
    pub fn delete_user(&self, name: &str, audit: &[AuditEntry]) -> Result<(), StoreError> {
        self.with(|client| {
            let mut tx = client.transaction()?;
            let revision = lock_revision(&mut tx)?;
            if tx.execute("DELETE FROM users WHERE name = $1", &[&name])? == 0 {
                return Err(missing(name));
            }
            append_audit(&mut tx, now_micros(), revision, audit)?;
            tx.commit()?;
            Ok(())
        })
    }

    /// As [`crate::SqliteStore::insert_user_token`].
    pub fn insert_user_token(
        &self,
        user: &str,
        token_name: &str,
        hash: &[u8; 32],
        audit: &[AuditEntry],
    ) -> Result<AdminToken, StoreError> {
        self.with(|client| {
            let mut tx = client.transaction()?;
            let revision = lock_revision(&mut tx)?;
            let id = id_of(&mut tx, user)?.ok_or_else(|| missing(user))?;
            let row = tx
                .query_one(
                    &format!(
                        "INSERT INTO admin_tokens (name, token_hash, role, created_at, user_id)
                         VALUES ($1, $2, $3, $4, $5) RETURNING {TOKEN_COLUMNS}"
                    ),
                    &[
                        &token_name,
                        &hash.as_slice(),
                        &USER_TOKEN_ROLE,
                        &now_secs(),
                        &id,
                    ],
                )
                .map_err(|error| {
                    if is_unique_violation(&error) {
                        StoreError::AdminTokenNameTaken(token_name.to_owned())
                    } else {
                        error.into()
                    }
                })?;
            let token = admin_token(&row)?;
            append_audit(&mut tx, now_micros(), revision, audit)?;
            tx.commit()?;
            Ok(token)
        })
    }

    /// As [`crate::SqliteStore::create_session`].
    pub fn create_session(
        &self,
        user_id: i64,
        hash: &[u8; 32],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let now = now_secs();
        self.with(|client| {
            let mut tx = client.transaction()?;
            tx.execute("DELETE FROM sessions WHERE expires_at <= $1", &[&now])?;
            tx.execute(
                "INSERT INTO sessions (id_hash, user_id, created_at, expires_at)
                 VALUES ($1, $2, $3, $4)",
                &[&hash.as_slice(), &user_id, &now, &expires_at],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// As [`crate::SqliteStore::find_session_user`].
    pub fn find_session_user(&self, hash: &[u8; 32], now: i64) -> Result<Option<User>, StoreError> {
        self.with(|client| {
            let mut tx = client.build_transaction().read_only(true).start()?;
            let user_id: Option<i64> = tx
                .query_opt(
                    "SELECT user_id FROM sessions WHERE id_hash = $1 AND expires_at > $2",
                    &[&hash.as_slice(), &now],
                )?
                .map(|row| row.try_get(0))
                .transpose()?;
            let user = match user_id {
                Some(id) => load(&mut tx, id)?,
                None => None,
            };
            tx.commit()?;
            Ok(user)
        })
    }

    /// Ends the session whose id's SHA-256 is `hash`; whether there was one.
    pub fn delete_session(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        self.with(|client| {
            Ok(client.execute(
                "DELETE FROM sessions WHERE id_hash = $1",
                &[&hash.as_slice()],
            )? > 0)
        })
    }

    /// As [`crate::SqliteStore::delete_sessions_of_user`].
    pub fn delete_sessions_of_user(&self, hash: &[u8; 32]) -> Result<usize, StoreError> {
        self.with(|client| {
            let deleted = client.execute(
                "DELETE FROM sessions WHERE user_id = (SELECT user_id FROM sessions WHERE id_hash = $1)",
                &[&hash.as_slice()],
            )?;
            Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
        })
    }
}
