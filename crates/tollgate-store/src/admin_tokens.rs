//! Admin API tokens: who may call the admin API, with which role.
//!
//! The store keeps a token's SHA-256, never the token: the admin API hashes
//! the bearer token a request presents and looks the hash up. A fast,
//! unsalted hash suits long random tokens, which is what the admin API issues;
//! it would not suit passwords.

use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use crate::{SqliteStore, StoreError};

/// An admin token as stored: everything but the token, of which the store
/// holds only the hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AdminToken {
    pub id: i64,
    /// Unique among admin tokens.
    pub name: String,
    /// The role of a token that belongs to no user (the bootstrap token's
    /// `super_admin`); a user's tokens have `user`, and the user's
    /// memberships decide what they may do.
    pub role: String,
    /// The user the token belongs to, if any (see `users.rs`).
    pub user_id: Option<i64>,
    /// When it was stored, in Unix seconds.
    pub created_at: i64,
    /// When [`SqliteStore::touch_admin_token`] last recorded a use, in Unix
    /// seconds.
    pub last_used_at: Option<i64>,
}

pub(crate) const COLUMNS: &str = "id, name, role, created_at, last_used_at, user_id";

pub(crate) fn admin_token(row: &rusqlite::Row<'_>) -> rusqlite::Result<AdminToken> {
    Ok(AdminToken {
        id: row.get(0)?,
        name: row.get(1)?,
        role: row.get(2)?,
        created_at: row.get(3)?,
        last_used_at: row.get(4)?,
        user_id: row.get(5)?,
    })
}

impl SqliteStore {
    /// How many admin tokens are stored.
    pub fn admin_token_count(&self) -> Result<u64, StoreError> {
        let count: i64 = self
            .lock()
            .query_row("SELECT count(*) FROM admin_tokens", [], |row| row.get(0))?;
        Ok(count.try_into().unwrap_or(0))
    }

    /// Stores a token by its SHA-256, `hash`, under a `name` no other token
    /// has ([`StoreError::AdminTokenNameTaken`] otherwise), with `role`.
    pub fn insert_admin_token(
        &self,
        name: &str,
        hash: &[u8; 32],
        role: &str,
    ) -> Result<AdminToken, StoreError> {
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let mut conn = self.lock();
        // Checked first, in the write transaction, to tell which one is
        // taken; the unique constraints stay as a backstop.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists = |sql: &str, value: &dyn rusqlite::ToSql| -> rusqlite::Result<bool> {
            Ok(tx.query_row(sql, [value], |_| Ok(())).optional()?.is_some())
        };
        if exists("SELECT 1 FROM admin_tokens WHERE name = ?1", &name)? {
            return Err(StoreError::AdminTokenNameTaken(name.to_owned()));
        }
        if exists(
            "SELECT 1 FROM admin_tokens WHERE token_hash = ?1",
            &hash.as_slice(),
        )? {
            return Err(StoreError::AdminTokenHashTaken);
        }
        let token = tx.query_row(
            &format!(
                "INSERT INTO admin_tokens (name, token_hash, role, created_at)
                 VALUES (?1, ?2, ?3, ?4) RETURNING {COLUMNS}"
            ),
            params![name, hash.as_slice(), role, created_at],
            admin_token,
        )?;
        tx.commit()?;
        Ok(token)
    }

    /// The token whose SHA-256 is `hash`, if one is stored.
    pub fn find_admin_token(&self, hash: &[u8; 32]) -> Result<Option<AdminToken>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM admin_tokens WHERE token_hash = ?1"
        ))?;
        Ok(stmt.query_row([hash.as_slice()], admin_token).optional()?)
    }

    /// Records that the token `id` was used at `at` (Unix seconds), unless a
    /// later use is already recorded. Does nothing if there is no such token
    /// (it may have just been deleted).
    pub fn touch_admin_token(&self, id: i64, at: i64) -> Result<(), StoreError> {
        let conn = self.lock();
        conn.prepare_cached(
            "UPDATE admin_tokens SET last_used_at = max(coalesce(last_used_at, ?2), ?2)
             WHERE id = ?1",
        )?
        .execute(params![id, at])?;
        Ok(())
    }
}
