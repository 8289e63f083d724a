//! Quota counters, saved so that a restart does not hand out fresh quotas.
//!
//! Plain rows (key, end of period in Unix seconds, count): the gateway keeps
//! the counters in memory, saves the ones that changed about once a second
//! and loads them back at startup. This crate knows nothing of policies; the
//! binary adapts these methods to `tollgate_policy::counters::CounterPersistence`.

use rusqlite::{params, TransactionBehavior};

use crate::{SqliteStore, StoreError};

impl SqliteStore {
    /// The quota counters of periods that end after `now` (Unix seconds), as
    /// `(key, expires_at, count)`.
    pub fn load_quota_counters(&self, now: i64) -> Result<Vec<(String, i64, u64)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT key, expires_at, count FROM quota_counters WHERE expires_at > ?1",
        )?;
        let rows = stmt.query_map([now], |row| {
            let count: i64 = row.get(2)?;
            Ok((row.get(0)?, row.get(1)?, count.try_into().unwrap_or(0)))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Writes `(key, expires_at, count)` rows in one transaction, replacing
    /// the count of a key already saved unless it was higher (counts only
    /// grow within a period), and deletes the rows of periods that ended at
    /// `now` (Unix seconds).
    pub fn save_quota_counters<'a>(
        &self,
        counters: impl IntoIterator<Item = (&'a str, i64, u64)>,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO quota_counters (key, expires_at, count) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET
                     expires_at = excluded.expires_at,
                     count = max(count, excluded.count)",
            )?;
            for (key, expires_at, count) in counters {
                let count = i64::try_from(count).unwrap_or(i64::MAX);
                upsert.execute(params![key, expires_at, count])?;
            }
            tx.prepare_cached("DELETE FROM quota_counters WHERE expires_at <= ?1")?
                .execute([now])?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::SqliteStore;

    #[test]
    fn quota_counters_survive_reopening_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let now = 1_741_910_400; // 2025-03-14T00:00:00Z
        let tomorrow = now + 86_400;
        {
            let store = SqliteStore::open(&url).unwrap();
            assert_eq!(store.schema_version().unwrap(), crate::migrations::latest());
            store
                .save_quota_counters(
                    [
                        ("q|global|d2025-03-14|consumer:alice", tomorrow, 3),
                        ("q|global|d2025-03-14|ip:192.0.2.7", tomorrow, 1),
                        ("q|global|d2025-03-13|consumer:alice", now, 9),
                    ],
                    now - 1,
                )
                .unwrap();
            // A later save replaces the count, never with a lower one.
            store
                .save_quota_counters(
                    [
                        ("q|global|d2025-03-14|consumer:alice", tomorrow, 5),
                        ("q|global|d2025-03-14|ip:192.0.2.7", tomorrow, 0),
                    ],
                    now - 1,
                )
                .unwrap();
        }

        let store = SqliteStore::open(&url).unwrap();
        let mut loaded = store.load_quota_counters(now).unwrap();
        loaded.sort();
        assert_eq!(
            loaded,
            [
                (
                    "q|global|d2025-03-14|consumer:alice".to_owned(),
                    tomorrow,
                    5
                ),
                ("q|global|d2025-03-14|ip:192.0.2.7".to_owned(), tomorrow, 1),
            ]
        );
        // Saving at `now` deleted yesterday's row, not only skipped it.
        let rows = |store: &SqliteStore| -> i64 {
            store
                .lock()
                .query_row("SELECT count(*) FROM quota_counters", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(rows(&store), 3);
        store.save_quota_counters([], now).unwrap();
        assert_eq!(rows(&store), 2);
        assert!(store.load_quota_counters(tomorrow).unwrap().is_empty());
    }
}
