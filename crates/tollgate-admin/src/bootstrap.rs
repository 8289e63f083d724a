//! The first admin token: on first start with no admin token in the store,
//! `TOLLGATE_ADMIN_TOKEN` if set, else a generated one written to
//! `<data dir>/admin-token` (mode 0600). The file's path is logged, the token
//! never; the store keeps only its SHA-256.

use std::io::Write;
use std::path::{Path, PathBuf};

use tollgate_policy::credentials;
use tollgate_store::{Store, StoreError};

/// The environment variable that sets the first admin token.
pub const ADMIN_TOKEN_ENV: &str = "TOLLGATE_ADMIN_TOKEN";
/// Prefix of generated admin tokens, so a leaked one is recognisable.
pub const ADMIN_TOKEN_PREFIX: &str = "tga_";
/// Shortest admin token accepted from the environment.
const MIN_TOKEN_LEN: usize = 16;

/// What happened at start-up.
#[derive(Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// The store already had admin tokens.
    Existing,
    /// The token from the environment was stored.
    FromEnvironment,
    /// A token was generated and written to this file.
    Generated(PathBuf),
}

/// Makes sure the store has an admin token. `env_token` is the value of
/// [`ADMIN_TOKEN_ENV`], passed in so that tests need not touch the process's environment.
pub fn ensure_admin_token(
    store: &Store,
    data_dir: &Path,
    env_token: Option<String>,
) -> Result<Bootstrap, String> {
    let count = store.admin_token_count().map_err(|e| e.to_string())?;
    if count > 0 {
        return Ok(Bootstrap::Existing);
    }
    let (token, outcome) = match env_token.filter(|t| !t.is_empty()) {
        Some(token) if token.len() < MIN_TOKEN_LEN => {
            return Err(format!(
                "{ADMIN_TOKEN_ENV} must be at least {MIN_TOKEN_LEN} characters"
            ))
        }
        Some(token) => (token, Bootstrap::FromEnvironment),
        None => {
            let token = generate_token();
            let path = data_dir.join("admin-token");
            write_private(&path, &token)?;
            (token, Bootstrap::Generated(path))
        }
    };
    let hash = credentials::hash_key(&token);
    match store.insert_admin_token("bootstrap", &hash, "super_admin") {
        Ok(_) => Ok(outcome),
        // Another node sharing the database stored its first token between
        // our count and our insert: that one is the bootstrap token, and a
        // file of ours would hold one that opens nothing.
        Err(StoreError::AdminTokenNameTaken(_) | StoreError::AdminTokenHashTaken) => {
            if let Bootstrap::Generated(path) = &outcome {
                let _ = std::fs::remove_file(path);
            }
            Ok(Bootstrap::Existing)
        }
        Err(error) => Err(error.to_string()),
    }
}

/// `tga_` and 256 random bits, in base64url.
pub fn generate_token() -> String {
    credentials::random_token(ADMIN_TOKEN_PREFIX)
}

/// Creates `path` readable by its owner only, failing if it exists.
fn write_private(path: &Path, contents: &str) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    writeln!(file, "{contents}").map_err(|e| format!("cannot write {}: {e}", path.display()))
}
