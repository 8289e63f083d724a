//! The policy state the binary owns: quota counters persisted in the store,
//! and the key the OAuth2 token endpoint signs with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tollgate_config::Config;
use tollgate_policy::counters::{CounterPersistence, PersistedCounter, PersistenceError};
use tollgate_policy::oauth2::SigningKey;

/// Quota counters saved in the store (SQLite or PostgreSQL), so quotas survive a restart.
pub struct StoreCounters(pub tollgate_store::Store);

impl CounterPersistence for StoreCounters {
    fn load(&self, now: i64) -> Result<Vec<PersistedCounter>, PersistenceError> {
        let rows = self.0.load_quota_counters(now)?;
        Ok(rows
            .into_iter()
            .map(|(key, expires_at, count)| PersistedCounter {
                key,
                expires_at,
                count,
            })
            .collect())
    }

    fn save(&self, counters: &[PersistedCounter], now: i64) -> Result<(), PersistenceError> {
        let rows = counters
            .iter()
            .map(|c| (c.key.as_str(), c.expires_at, c.count));
        Ok(self.0.save_quota_counters(rows, now)?)
    }
}

/// Where node-local state lives (the master key, the bootstrap admin
/// token, the OAuth2 signing key): the directory beside the SQLite file, or
/// `./tollgate-data` for an in-memory SQLite database and for PostgreSQL,
/// whose database holds no files of the node's.
pub fn data_dir(config: &Config) -> PathBuf {
    let url = config.storage.url().unwrap_or_default();
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .filter(|p| !p.starts_with(':'))
        .map(Path::new)
        .and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty());
    path.map_or_else(|| PathBuf::from("tollgate-data"), Path::to_path_buf)
}

/// The token signing key, when `oauth2_server` is configured: the file it
/// names, or one generated once in the data directory.
pub fn signing_key(config: &Config) -> Result<Option<Arc<SigningKey>>, String> {
    let Some(server) = &config.oauth2_server else {
        return Ok(None);
    };
    let path = server
        .signing_key
        .clone()
        .unwrap_or_else(|| data_dir(config).join("oauth2-signing-key.pem"));
    SigningKey::load_or_generate(&path)
        .map(|key| Some(Arc::new(key)))
        .map_err(|e| format!("oauth2_server: signing key {}: {e}", path.display()))
}
