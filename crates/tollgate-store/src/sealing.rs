//! Secrets at rest: every stored resource body is sealed with AES-256-GCM
//! under the node's master key, so the database file alone reveals neither
//! an upstream credential nor anything else a resource holds.
//!
//! Whole bodies are sealed rather than chosen fields: a secret added to the
//! model later is covered without anyone remembering to list it, and the
//! admin API filters resources in memory, never by SQL on their fields.
//!
//! A sealed blob is `[1][key id: 4][nonce: 12][ciphertext + tag]`. The key id
//! (the first bytes of a SHA-256 of the key) says which key sealed it, so a
//! store caught half-way through `rotate-master-key` still opens with both
//! keys at hand. The resource's kind and name are the associated data: a
//! blob moved to another row does not open.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// The environment variable that holds the master key (32 bytes, base64 or hex).
pub const MASTER_KEY_ENV: &str = "TOLLGATE_MASTER_KEY";
/// The key file's name in the data directory.
pub const MASTER_KEY_FILE: &str = "master-key";

const FORMAT_VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

/// Why a master key could not be read or a blob opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the master key must be 32 bytes in base64 or hex")]
    BadKey,
    #[error("cannot read or create the master key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("a stored value was sealed with a master key this node does not have (key id {0})")]
    UnknownKey(String),
    #[error("a stored value does not open with the master key: wrong key or tampered data")]
    Tampered,
}

/// An AES-256-GCM key and its id.
pub struct MasterKey {
    raw: [u8; 32],
    id: [u8; KEY_ID_LEN],
    key: LessSafeKey,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", hex::encode(self.id))
    }
}

impl MasterKey {
    pub fn from_bytes(raw: [u8; 32]) -> MasterKey {
        let digest = ring::digest::digest(&ring::digest::SHA256, &raw);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &raw).expect("a 32-byte key is an AES-256 key"),
        );
        MasterKey { raw, id, key }
    }

    /// 32 bytes from the system's secure generator.
    pub fn generate() -> MasterKey {
        let mut raw = [0u8; 32];
        SystemRandom::new()
            .fill(&mut raw)
            .expect("the system random generator failed");
        MasterKey::from_bytes(raw)
    }

    /// 32 bytes written as base64 (standard or URL-safe, padded or not) or 64 hex digits.
    pub fn parse(text: &str) -> Result<MasterKey, SealError> {
        let text = text.trim();
        let decoded = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).ok()
        } else {
            use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
            STANDARD
                .decode(text)
                .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
                .ok()
        };
        let raw: [u8; 32] = decoded
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(SealError::BadKey)?;
        Ok(MasterKey::from_bytes(raw))
    }

    /// The key in standard base64, as the key file holds it.
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.raw)
    }

    /// Hex of the key id, safe to log.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    /// `TOLLGATE_MASTER_KEY` when given (`env_key`), else the key file in
    /// `data_dir`, created (mode 0600) with a new key when missing.
    pub fn load_or_create(
        env_key: Option<String>,
        data_dir: &Path,
    ) -> Result<(MasterKey, KeySource), SealError> {
        if let Some(text) = env_key.filter(|t| !t.trim().is_empty()) {
            return Ok((MasterKey::parse(&text)?, KeySource::Environment));
        }
        let path = data_dir.join(MASTER_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((MasterKey::parse(&text)?, KeySource::File(path))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = MasterKey::generate();
                write_private(&path, &key.encode())?;
                Ok((key, KeySource::Created(path)))
            }
            Err(e) => Err(SealError::KeyFile {
                path,
                reason: e.to_string(),
            }),
        }
    }
}

/// Where the master key came from.
#[derive(Debug, PartialEq, Eq)]
pub enum KeySource {
    Environment,
    File(PathBuf),
    /// A new key was generated and written to this file.
    Created(PathBuf),
}

/// Seals with one key; opens with it or any older one it was given.
#[derive(Debug)]
pub struct Sealer {
    current: MasterKey,
    older: Vec<MasterKey>,
}

impl Sealer {
    pub fn new(current: MasterKey) -> Sealer {
        Sealer {
            current,
            older: Vec::new(),
        }
    }

    /// Also opens blobs sealed with `key` (an interrupted rotation's old key).
    pub fn also_opening(mut self, key: MasterKey) -> Sealer {
        if key.id != self.current.id {
            self.older.push(key);
        }
        self
    }

    pub fn current(&self) -> &MasterKey {
        &self.current
    }

    /// Seals `plaintext`, bound to `context` (the row it belongs to).
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system random generator failed");
        let mut blob = Vec::with_capacity(HEADER_LEN + plaintext.len() + AES_256_GCM.tag_len());
        blob.push(FORMAT_VERSION);
        blob.extend_from_slice(&self.current.id);
        blob.extend_from_slice(&nonce);
        let mut sealed = plaintext.to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut sealed,
            )
            .expect("AES-GCM sealing of an in-memory buffer cannot fail");
        blob.extend_from_slice(&sealed);
        blob
    }

    /// Opens a blob [`Sealer::seal`] made with the same `context`.
    pub fn open(&self, blob: &[u8], context: &[u8]) -> Result<Vec<u8>, SealError> {
        if blob.len() < HEADER_LEN || blob[0] != FORMAT_VERSION {
            return Err(SealError::Tampered);
        }
        let id = &blob[1..1 + KEY_ID_LEN];
        let key = std::iter::once(&self.current)
            .chain(&self.older)
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(hex::encode(id)))?;
        let nonce: [u8; NONCE_LEN] = blob[1 + KEY_ID_LEN..HEADER_LEN]
            .try_into()
            .map_err(|_| SealError::Tampered)?;
        let mut data = blob[HEADER_LEN..].to_vec();
        let plain = key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut data,
            )
            .map_err(|_| SealError::Tampered)?;
        Ok(plain.to_vec())
    }
}

/// Creates `path` (and its directory) readable by its owner only.
pub fn write_private(path: &Path, contents: &str) -> Result<(), SealError> {
    let fail = |e: std::io::Error| SealError::KeyFile {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(fail)?;
    writeln!(file, "{contents}").map_err(fail)?;
    file.sync_all().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_bound_to_their_row() {
        let sealer = Sealer::new(MasterKey::generate());
        let blob = sealer.seal(b"sk-upstream-secret", b"services/orders");
        assert!(!blob.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            sealer.open(&blob, b"services/orders").unwrap(),
            b"sk-upstream-secret"
        );
        assert!(matches!(
            sealer.open(&blob, b"services/other"),
            Err(SealError::Tampered)
        ));
        let mut tampered = blob.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(
            sealer.open(&tampered, b"services/orders"),
            Err(SealError::Tampered)
        ));
        let other = Sealer::new(MasterKey::generate());
        assert!(matches!(
            other.open(&blob, b"services/orders"),
            Err(SealError::UnknownKey(_))
        ));
    }

    #[test]
    fn an_older_key_still_opens_what_it_sealed() {
        let old = MasterKey::generate();
        let old_copy = MasterKey::from_bytes(old.raw);
        let blob = Sealer::new(old).seal(b"x", b"k");
        let rotated = Sealer::new(MasterKey::generate()).also_opening(old_copy);
        assert_eq!(rotated.open(&blob, b"k").unwrap(), b"x");
    }

    #[test]
    fn parses_keys_in_base64_and_hex() {
        let key = MasterKey::generate();
        assert_eq!(MasterKey::parse(&key.encode()).unwrap().id, key.id);
        assert_eq!(MasterKey::parse(&hex::encode(key.raw)).unwrap().id, key.id);
        for bad in ["", "short", &"a".repeat(63), "!!!"] {
            assert!(MasterKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn creates_the_key_file_once_private() {
        let dir = tempfile::tempdir().unwrap();
        let (first, source) = MasterKey::load_or_create(None, dir.path()).unwrap();
        assert!(matches!(source, KeySource::Created(_)));
        let (again, source) = MasterKey::load_or_create(None, dir.path()).unwrap();
        assert!(matches!(source, KeySource::File(_)));
        assert_eq!(first.id, again.id);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(MASTER_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let env = MasterKey::generate();
        let (from_env, source) = MasterKey::load_or_create(Some(env.encode()), dir.path()).unwrap();
        assert_eq!(source, KeySource::Environment);
        assert_eq!(from_env.id, env.id);
    }
}
