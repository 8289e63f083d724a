//! The snapshot cache: the last configuration a node served, in a file of
//! its own, so that a node starting while its (PostgreSQL) database is
//! unreachable can serve it until the database answers.
//!
//! The file holds a whole [`ConfigState`] — every resource at one revision,
//! as [`crate::Store::load_resources`] returns it — sealed with the master
//! key (it holds provider keys and consumer secrets: never in clear on
//! disk). It is written atomically (a private temporary file renamed over
//! the old one), so a reader finds the previous state or the next, never
//! half of one.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::sealing::Sealer;
use crate::{ConfigState, Origin, StoredResource};

/// What the sealed blob is bound to: a blob sealed for another purpose (a
/// stored resource body) does not open as a cache.
const CONTEXT: &[u8] = b"tollgate snapshot cache v1";

/// The cache file of one node.
#[derive(Debug)]
pub struct SnapshotCache {
    path: PathBuf,
    /// The generation last written: a write that lost a race to a newer
    /// one leaves the newer on disk.
    written: Mutex<u64>,
}

impl SnapshotCache {
    pub fn new(path: impl Into<PathBuf>) -> SnapshotCache {
        SnapshotCache {
            path: path.into(),
            written: Mutex::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `state`, sealed, over the cache, unless a later `generation`
    /// was written already. Blocks: call it off the async threads.
    pub fn write(&self, sealer: &Sealer, state: &ConfigState, generation: u64) -> io::Result<()> {
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *written > generation {
            return Ok(());
        }
        let plain = serde_json::to_vec(&encode(state)).map_err(io::Error::other)?;
        let sealed = sealer.seal(&plain, CONTEXT);
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let name = self
            .path
            .file_name()
            .map_or_else(|| "snapshot".into(), |n| n.to_string_lossy().into_owned());
        let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&temp)?;
            file.write_all(&sealed)?;
            file.sync_all()?;
            std::fs::rename(&temp, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result?;
        *written = generation;
        Ok(())
    }

    /// The cached state; `Ok(None)` when there is no cache file. A file
    /// that does not open with `sealer`'s keys, or does not parse, is an
    /// error: it is never served in part.
    pub fn load(&self, sealer: &Sealer) -> io::Result<Option<ConfigState>> {
        let sealed = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let plain = sealer.open(&sealed, CONTEXT).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("does not open with the master key: {e}"),
            )
        })?;
        let value: Value = serde_json::from_slice(&plain)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        decode(&value)
            .map(Some)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a snapshot cache"))
    }
}

fn encode(state: &ConfigState) -> Value {
    let resources: Vec<Value> = state
        .resources
        .iter()
        .map(|r| {
            json!({
                "kind": r.kind,
                "name": r.name,
                "team": r.team,
                "origin": r.origin.as_str(),
                "body": r.body,
                "revision": r.revision,
                "created_at": r.created_at,
                "updated_at": r.updated_at,
            })
        })
        .collect();
    json!({ "revision": state.revision, "resources": resources })
}

fn decode(value: &Value) -> Option<ConfigState> {
    let resources = value["resources"]
        .as_array()?
        .iter()
        .map(|r| {
            Some(StoredResource {
                kind: r["kind"].as_str()?.to_string(),
                name: r["name"].as_str()?.to_string(),
                team: r["team"].as_str().map(str::to_string),
                origin: Origin::parse(r["origin"].as_str()?),
                body: r.get("body")?.clone(),
                revision: r["revision"].as_i64()?,
                created_at: r["created_at"].as_i64()?,
                updated_at: r["updated_at"].as_i64()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(ConfigState {
        revision: value["revision"].as_i64()?,
        resources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealing::MasterKey;

    #[test]
    fn a_cache_round_trips_sealed_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SnapshotCache::new(dir.path().join("sub/last-good.snapshot"));
        let sealer = Sealer::new(MasterKey::generate());
        assert!(cache.load(&sealer).unwrap().is_none());
        let state = ConfigState {
            revision: 7,
            resources: vec![StoredResource {
                kind: "consumers".into(),
                name: "alice".into(),
                team: Some("shop".into()),
                origin: Origin::File,
                body: json!({"name": "alice", "keys": ["very-secret-key"]}),
                revision: 6,
                created_at: 1,
                updated_at: 2,
            }],
        };
        cache.write(&sealer, &state, 2).unwrap();
        let bytes = std::fs::read(cache.path()).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("very-secret-key"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(cache.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(cache.load(&sealer).unwrap(), Some(state.clone()));
        // An older generation does not overwrite a newer one.
        cache.write(&sealer, &ConfigState::default(), 1).unwrap();
        assert_eq!(cache.load(&sealer).unwrap(), Some(state));
        // Another key does not open it.
        let other = Sealer::new(MasterKey::generate());
        assert!(cache.load(&other).is_err());
    }
}
