//! HTTP Basic authentication against argon2-hashed passwords.
//!
//! Argon2 is slow on purpose (tens of milliseconds), which is right for a
//! password and wrong for a request path. So: hashing happens at compile time
//! and is remembered across reloads; verification runs on the blocking pool,
//! at most a few at a time (a flood of wrong passwords cannot take every
//! core); and a success is remembered for a short while under a keyed digest
//! of (stored hash, password), so a client sending the same credentials on
//! every request pays argon2 once per [`VERIFIED_TTL`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine as _;
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::denial::Denial;
use crate::identity::ConsumerInfo;

/// How long a verified (hash, password) pair is trusted without argon2.
pub const VERIFIED_TTL: Duration = Duration::from_secs(300);
/// Verified pairs remembered at most; past this the cache is cleared.
const VERIFIED_MAX: usize = 10_000;
/// Concurrent argon2 verifications.
const VERIFY_CONCURRENCY: usize = 4;
/// The salt of the work done for an unknown username (any valid salt will do).
const DECOY_SALT: &str = "dW5rbm93bi11c2VybmFtZQ";

/// State that outlives snapshots: hashes computed for configured passwords
/// and recently verified credentials.
pub struct BasicRegistry {
    /// (username, SHA-256 of the password) → PHC string, so a reload does not rehash.
    hashed: DashMap<(String, [u8; 32]), Arc<str>>,
    verified: DashMap<[u8; 32], Instant>,
    /// Random per process: the verified-cache digests are useless outside it.
    pepper: [u8; 32],
    permits: Semaphore,
}

impl Default for BasicRegistry {
    fn default() -> Self {
        let mut pepper = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut pepper)
            .expect("the system random generator failed");
        BasicRegistry {
            hashed: DashMap::new(),
            verified: DashMap::new(),
            pepper,
            permits: Semaphore::new(VERIFY_CONCURRENCY),
        }
    }
}

impl BasicRegistry {
    /// The argon2id PHC string for a configured password.
    pub fn hash_password(&self, username: &str, password: &str) -> Result<Arc<str>, String> {
        let key = (username.to_string(), Sha256::digest(password).into());
        if let Some(found) = self.hashed.get(&key) {
            return Ok(found.clone());
        }
        let mut salt = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
            .map_err(|_| "the system random generator failed".to_string())?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
        let phc: Arc<str> = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| e.to_string())?
            .to_string()
            .into();
        self.hashed.insert(key, phc.clone());
        Ok(phc)
    }
}

struct User {
    consumer: Arc<ConsumerInfo>,
    phc: Arc<str>,
}

#[derive(Default)]
pub struct BasicIndex {
    users: HashMap<String, User>,
}

impl BasicIndex {
    pub fn insert(&mut self, username: &str, phc: Arc<str>, consumer: Arc<ConsumerInfo>) {
        self.users
            .insert(username.to_string(), User { consumer, phc });
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks an `Authorization: Basic` value (without the scheme).
    pub async fn verify(
        &self,
        registry: &BasicRegistry,
        encoded: &str,
    ) -> Result<Arc<ConsumerInfo>, Denial> {
        let invalid = || Denial::invalid_credentials("the username or password is not valid");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| Denial::invalid_credentials("malformed Basic credentials"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| Denial::invalid_credentials("malformed Basic credentials"))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| Denial::invalid_credentials("malformed Basic credentials"))?;
        // An unknown username costs the same argon2 work as a wrong password,
        // under the same permits, so the answer's timing does not tell which
        // usernames exist.
        let user = self.users.get(username);
        let mut cache_key = [0u8; 32];
        if let Some(user) = user {
            let mut digest = Sha256::new();
            digest.update(registry.pepper);
            digest.update(user.phc.as_bytes());
            digest.update([0]);
            digest.update(password.as_bytes());
            cache_key = digest.finalize().into();
            if let Some(at) = registry.verified.get(&cache_key) {
                if at.elapsed() < VERIFIED_TTL {
                    return Ok(user.consumer.clone());
                }
            }
        }

        let _permit = registry
            .permits
            .acquire()
            .await
            .map_err(|_| Denial::auth_unavailable("password verification is shutting down"))?;
        let phc = user.map(|user| user.phc.clone());
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || match phc {
            Some(phc) => PasswordHash::new(&phc).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            }),
            None => {
                // What verifying does (hashing with the default parameters
                // configured passwords are hashed with), for nothing.
                let salt = SaltString::from_b64(DECOY_SALT).expect("a valid salt");
                let _ = Argon2::default().hash_password(password.as_bytes(), &salt);
                false
            }
        })
        .await
        .unwrap_or(false);
        let Some(user) = user.filter(|_| ok) else {
            return Err(invalid());
        };
        if registry.verified.len() >= VERIFIED_MAX {
            registry.verified.clear();
        }
        registry.verified.insert(cache_key, Instant::now());
        Ok(user.consumer.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    }

    #[tokio::test]
    async fn verifies_hashed_passwords() {
        let registry = BasicRegistry::default();
        let phc = registry.hash_password("mobile", "s3cret").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(!phc.contains("s3cret"));
        // Remembered: a reload does not hash again.
        assert_eq!(registry.hash_password("mobile", "s3cret").unwrap(), phc);

        let mut index = BasicIndex::default();
        index.insert("mobile", phc, Arc::new(ConsumerInfo::unregistered("m")));
        let ok = index
            .verify(&registry, &basic("mobile", "s3cret"))
            .await
            .unwrap();
        assert_eq!(&*ok.name, "m");
        // Second time from the verified cache.
        assert!(index
            .verify(&registry, &basic("mobile", "s3cret"))
            .await
            .is_ok());
        for bad in [
            basic("mobile", "wrong"),
            basic("nobody", "s3cret"),
            "%%%".into(),
        ] {
            let denial = index.verify(&registry, &bad).await.unwrap_err();
            assert_eq!(denial.code, "invalid_credentials");
        }
    }
}
