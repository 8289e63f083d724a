//! API keys and client-certificate identities, indexed at compile time.
//!
//! Keys are never kept in clear: the index holds SHA-256 digests. A key is
//! 256 random bits, so a fast hash is enough (no dictionary to attack), and
//! lookups cost one SHA-256 and one constant-time comparison.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::denial::Denial;
use crate::identity::ConsumerInfo;

/// Prefix of generated keys, so a leaked key is recognisable in a scanner.
pub const KEY_PREFIX: &str = "tg_";

/// A new API key: `tg_` and 256 random bits in base64url.
pub fn generate_key() -> String {
    random_token(KEY_PREFIX)
}

/// `prefix` and 256 bits from the system generator, in base64url: API keys
/// and admin tokens alike, so a leaked one is recognisable by its prefix.
pub fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system random generator failed");
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// `sha256:<hex>` as the configuration writes a stored key.
pub fn format_hash(hash: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(hash))
}

pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex_digits = text.strip_prefix("sha256:")?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut out).ok()?;
    Some(out)
}

struct KeyEntry {
    hash: [u8; 32],
    consumer: Arc<ConsumerInfo>,
    /// Unix seconds after which the key is refused.
    expires: Option<i64>,
    /// An incident-response block of this key, if any.
    blocked: Option<KeyBlock>,
}

/// A block of one key: refused with 403 `blocked` until `until` (Unix
/// seconds), or until lifted.
#[derive(Clone, Copy, Debug)]
pub struct KeyBlock {
    pub until: Option<i64>,
}

/// Every consumer key of a snapshot.
#[derive(Default)]
pub struct KeyIndex {
    /// By the digest's first 8 bytes; the full digest is compared in constant time.
    /// Those bytes are already uniform: foldhash mixes them far cheaper than SipHash.
    buckets: HashMap<u64, Vec<KeyEntry>, foldhash::fast::RandomState>,
}

impl KeyIndex {
    pub fn insert(
        &mut self,
        hash: [u8; 32],
        consumer: Arc<ConsumerInfo>,
        expires: Option<i64>,
        blocked: Option<KeyBlock>,
    ) {
        self.buckets
            .entry(bucket(&hash))
            .or_default()
            .push(KeyEntry {
                hash,
                consumer,
                expires,
                blocked,
            });
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The consumer a presented key belongs to.
    pub fn lookup(&self, presented: &str, now_unix: i64) -> Result<Arc<ConsumerInfo>, Denial> {
        let hash = hash_key(presented);
        let entry = self
            .buckets
            .get(&bucket(&hash))
            .and_then(|entries| entries.iter().find(|entry| same_digest(&entry.hash, &hash)));
        match entry {
            None => Err(Denial::invalid_credentials("the API key is not valid")),
            Some(entry) if entry.expires.is_some_and(|at| at <= now_unix) => {
                Err(Denial::expired_credentials("the API key has expired"))
            }
            Some(entry)
                if entry
                    .blocked
                    .is_some_and(|b| b.until.is_none_or(|at| now_unix < at)) =>
            {
                Err(Denial::blocked("this API key is blocked"))
            }
            Some(entry) => Ok(entry.consumer.clone()),
        }
    }
}

/// Constant-time equality of two digests, a 64-bit word at a time:
/// `subtle`'s slice comparison goes byte by byte, each byte behind its own
/// optimisation barrier (~340 instructions a key, against ~40).
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let word = |d: &[u8; 32], i: usize| {
        u64::from_le_bytes(d[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
    };
    let same = (0..4).fold(Choice::from(1), |same, i| {
        same & word(a, i).ct_eq(&word(b, i))
    });
    bool::from(same)
}

fn bucket(hash: &[u8; 32]) -> u64 {
    u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"))
}

/// What the TLS listener learnt of a client certificate that chained to the
/// configured client CA.
#[derive(Clone, Debug)]
pub struct ClientCert {
    /// SHA-256 of the DER certificate.
    pub fingerprint: [u8; 32],
    /// The subject DN, normalised by [`normalize_subject`].
    pub subject: String,
}

/// `CN=a, O=b` and `CN=a,O=b` are the same subject; attribute types are
/// case-insensitive, values are not.
pub fn normalize_subject(subject: &str) -> String {
    subject
        .split(',')
        .map(|rdn| {
            let rdn = rdn.trim();
            match rdn.split_once('=') {
                Some((kind, value)) => {
                    format!("{}={}", kind.trim().to_ascii_uppercase(), value.trim())
                }
                None => rdn.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(digits, &mut out).ok()?;
    Some(out)
}

/// Consumers identified by client certificate.
#[derive(Default)]
pub struct CertIndex {
    by_fingerprint: HashMap<[u8; 32], Arc<ConsumerInfo>>,
    by_subject: HashMap<String, Arc<ConsumerInfo>>,
}

impl CertIndex {
    pub fn insert_fingerprint(&mut self, fingerprint: [u8; 32], consumer: Arc<ConsumerInfo>) {
        self.by_fingerprint.insert(fingerprint, consumer);
    }

    pub fn insert_subject(&mut self, subject: &str, consumer: Arc<ConsumerInfo>) {
        self.by_subject.insert(normalize_subject(subject), consumer);
    }

    pub fn lookup(&self, cert: &ClientCert) -> Option<Arc<ConsumerInfo>> {
        self.by_fingerprint
            .get(&cert.fingerprint)
            .or_else(|| self.by_subject.get(&cert.subject))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(name: &str) -> Arc<ConsumerInfo> {
        Arc::new(ConsumerInfo::unregistered(name))
    }

    #[test]
    fn digests_differing_in_any_byte_differ() {
        let a = hash_key("some key");
        assert!(same_digest(&a, &a.clone()));
        for at in 0..32 {
            let mut b = a;
            b[at] ^= 0x80;
            assert!(!same_digest(&a, &b), "byte {at}");
        }
    }

    #[test]
    fn generated_keys_are_prefixed_and_distinct() {
        let a = generate_key();
        let b = generate_key();
        assert!(a.starts_with("tg_") && a.len() == 3 + 43, "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn lookup_by_hash_with_expiry_and_rotation() {
        let mut index = KeyIndex::default();
        index.insert(hash_key("old"), consumer("a"), Some(100), None);
        index.insert(hash_key("new"), consumer("a"), None, None);
        index.insert(
            hash_key("blocked"),
            consumer("a"),
            None,
            Some(KeyBlock { until: Some(200) }),
        );
        assert_eq!(index.lookup("blocked", 150).unwrap_err().code, "blocked");
        assert!(index.lookup("blocked", 200).is_ok());
        index.insert(
            parse_hash(&format_hash(&hash_key("c"))).unwrap(),
            consumer("c"),
            None,
            None,
        );
        assert_eq!(&*index.lookup("new", 50).unwrap().name, "a");
        assert_eq!(&*index.lookup("old", 50).unwrap().name, "a");
        assert_eq!(
            index.lookup("old", 100).unwrap_err().code,
            "expired_credentials"
        );
        assert_eq!(&*index.lookup("c", 0).unwrap().name, "c");
        assert_eq!(
            index.lookup("nope", 0).unwrap_err().code,
            "invalid_credentials"
        );
    }

    #[test]
    fn subjects_compare_normalised() {
        let mut index = CertIndex::default();
        index.insert_subject("cn=mobile-app, O=Example", consumer("m"));
        let cert = ClientCert {
            fingerprint: [0; 32],
            subject: normalize_subject("CN=mobile-app,O=Example"),
        };
        assert_eq!(&*index.lookup(&cert).unwrap().name, "m");
        assert!(parse_fingerprint(&format!("{}ab", "ab:".repeat(31))).is_some());
        assert!(parse_fingerprint("ab:cd").is_none());
    }
}
