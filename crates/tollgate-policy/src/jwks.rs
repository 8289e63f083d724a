//! Remote JSON Web Key Sets (RFC 7517): fetched on first use, kept for the
//! provider's `jwks_refresh`, refetched early when a token names a key id the
//! set lacks (a rotation) — but at most once per [`MIN_REFETCH_INTERVAL`] per
//! URL, so that tokens with made-up key ids cannot hammer the provider.
//! Concurrent misses wait for one shared fetch. When the provider is down the
//! keys fetched last keep serving; only a set never fetched makes tokens
//! unverifiable ([`TokenError::Unavailable`]).
//!
//! Only signature keys of supported types are kept: RSA (2048 bits or more),
//! EC P-256 / P-384, Ed25519. Symmetric (`oct`) keys and `"use": "enc"` keys
//! are ignored, and a key with an `alg` verifies that algorithm only.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;
use serde_json::Value;

use crate::jwt::{self, HttpClient, TokenError, VerifyKey};

/// The shortest time between two fetches of one key set.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// Keys kept from one document; the rest are ignored.
const MAX_KEYS: usize = 64;

/// One URL's keys, shared by every snapshot that names the URL.
pub(crate) struct JwksCache {
    url: Uri,
    min_refetch: Duration,
    current: ArcSwapOption<KeySet>,
    last_attempt: Mutex<Option<Instant>>,
    /// Held during a fetch: concurrent misses queue here and reuse its result.
    fetching: tokio::sync::Mutex<()>,
}

pub(crate) struct KeySet {
    pub(crate) keys: Vec<VerifyKey>,
    fetched_at: Instant,
}

impl KeySet {
    fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

impl JwksCache {
    pub(crate) fn new(url: Uri, min_refetch: Duration) -> JwksCache {
        JwksCache {
            url,
            min_refetch,
            current: ArcSwapOption::empty(),
            last_attempt: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The key set to verify a token with key id `kid`: the cached one while
    /// it is younger than `refresh` and knows `kid` (or `kid` is `None`),
    /// else whatever a fetch, if one is due, leaves.
    pub(crate) async fn key_set(
        &self,
        kid: Option<&str>,
        refresh: Duration,
        http: &HttpClient,
    ) -> Result<Arc<KeySet>, TokenError> {
        if let Some(set) = self.current.load_full() {
            let fresh = set.fetched_at.elapsed() < refresh;
            if fresh && kid.is_none_or(|kid| set.has_kid(kid)) {
                return Ok(set);
            }
        }
        {
            let _flight = self.fetching.lock().await;
            // Whoever held the lock before just fetched: do not fetch again.
            if self.claim_attempt() {
                match self.fetch(http).await {
                    Ok(keys) => self.current.store(Some(Arc::new(KeySet {
                        keys,
                        fetched_at: Instant::now(),
                    }))),
                    Err(message) => tracing::warn!(
                        url = %self.url,
                        cached = self.current.load().is_some(),
                        "fetching a JWKS failed: {message}"
                    ),
                }
            }
        }
        self.current.load_full().ok_or_else(|| {
            TokenError::Unavailable(format!("no keys could be fetched from {}", self.url))
        })
    }

    /// Whether a fetch may start now; if so, records it as the last attempt.
    fn claim_attempt(&self) -> bool {
        let mut last = self
            .last_attempt
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *last {
            Some(at) if at.elapsed() < self.min_refetch => false,
            _ => {
                *last = Some(Instant::now());
                true
            }
        }
    }

    async fn fetch(&self, http: &HttpClient) -> Result<Vec<VerifyKey>, String> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(self.url.clone())
            .header(header::ACCEPT, "application/jwk-set+json, application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (status, body) = http.send(request).await?;
        if status != StatusCode::OK {
            return Err(format!("answered {status}"));
        }
        parse_key_set(&body)
    }
}

/// The usable keys of a JWKS document; unusable ones are skipped with a warning.
pub(crate) fn parse_key_set(body: &[u8]) -> Result<Vec<VerifyKey>, String> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<Value>,
    }
    let document: Document =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for value in document.keys {
        if keys.len() == MAX_KEYS {
            tracing::warn!("a JWKS holds more than {MAX_KEYS} keys; the rest are ignored");
            break;
        }
        match key_from_jwk(value) {
            Ok(Some(key)) => keys.push(key),
            Ok(None) => {}
            Err(message) => tracing::warn!("a JWKS key is ignored: {message}"),
        }
    }
    Ok(keys)
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// One JWK as a verification key; `Ok(None)` for keys that are not for
/// signatures or of no supported type, which a JWKS may legitimately hold.
fn key_from_jwk(value: Value) -> Result<Option<VerifyKey>, String> {
    let jwk: RawJwk = serde_json::from_value(value).map_err(|e| format!("malformed JWK: {e}"))?;
    if jwk.usage.as_deref().is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let declared = match jwk.alg.as_deref() {
        None => None,
        Some(name) => match name.parse::<Algorithm>() {
            Ok(alg) => Some(alg),
            // RSA-OAEP and other non-signature algorithms.
            Err(_) => return Ok(None),
        },
    };
    let field = |name: &str, value: &Option<String>| -> Result<Vec<u8>, String> {
        let text = value
            .as_deref()
            .ok_or_else(|| format!("{} JWK without `{name}`", jwk.kty))?;
        URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|_| format!("{} JWK with a malformed `{name}`", jwk.kty))
    };
    let kid = jwk.kid.clone();
    let (family, key) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => {
            let algorithms = restrict(AlgorithmFamily::Rsa.algorithms(), declared)?;
            let key = jwt::rsa_key(kid, &field("n", &jwk.n)?, &field("e", &jwk.e)?, algorithms)?;
            return Ok(Some(key));
        }
        ("EC", Some("P-256")) => (
            Algorithm::ES256,
            ec_key(&field("x", &jwk.x)?, &field("y", &jwk.y)?, 32)?,
        ),
        ("EC", Some("P-384")) => (
            Algorithm::ES384,
            ec_key(&field("x", &jwk.x)?, &field("y", &jwk.y)?, 48)?,
        ),
        ("OKP", Some("Ed25519")) => {
            let x = field("x", &jwk.x)?;
            if x.len() != 32 {
                return Err("Ed25519 JWK whose `x` is not 32 bytes".into());
            }
            (Algorithm::EdDSA, DecodingKey::from_ed_der(&x))
        }
        _ => return Ok(None),
    };
    let algorithms = restrict(&[family], declared)?;
    jwt::checked(kid, key, algorithms).map(Some)
}

/// `allowed`, or only `declared` when the JWK names an algorithm of it.
fn restrict(allowed: &[Algorithm], declared: Option<Algorithm>) -> Result<Vec<Algorithm>, String> {
    match declared {
        None => Ok(allowed.to_vec()),
        Some(alg) if allowed.contains(&alg) => Ok(vec![alg]),
        Some(alg) => Err(format!(
            "JWK whose `alg` {alg:?} does not suit its key type"
        )),
    }
}

/// An uncompressed SEC1 point from coordinates of `size` bytes each.
fn ec_key(x: &[u8], y: &[u8], size: usize) -> Result<DecodingKey, String> {
    if x.len() != size || y.len() != size {
        return Err(format!("EC JWK whose coordinates are not {size} bytes"));
    }
    let mut point = Vec::with_capacity(1 + 2 * size);
    point.push(0x04);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    Ok(DecodingKey::from_ec_der(&point))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tollgate_testkit::tokens::{self, TestKey};

    fn parse(keys: Value) -> Vec<VerifyKey> {
        parse_key_set(json!({ "keys": keys }).to_string().as_bytes()).expect("a JWKS")
    }

    #[test]
    fn supported_keys_are_kept_with_their_algorithms() {
        let keys = parse(json!([
            tokens::jwk(TestKey::Rsa, "r", "PS256"),
            tokens::jwk(TestKey::P256, "e256", "ES256"),
            tokens::jwk(TestKey::P384, "e384", "ES384"),
            tokens::jwk(TestKey::Ed25519, "d", "EdDSA"),
        ]));
        let summary: Vec<(Option<&str>, &[Algorithm])> = keys
            .iter()
            .map(|k| (k.kid.as_deref(), k.algorithms.as_slice()))
            .collect();
        assert_eq!(
            summary,
            [
                (Some("r"), &[Algorithm::PS256][..]),
                (Some("e256"), &[Algorithm::ES256][..]),
                (Some("e384"), &[Algorithm::ES384][..]),
                (Some("d"), &[Algorithm::EdDSA][..]),
            ]
        );
        let mut no_alg = tokens::jwk(TestKey::Rsa, "r", "RS256");
        no_alg.as_object_mut().unwrap().remove("alg");
        assert_eq!(parse(json!([no_alg]))[0].algorithms.len(), 6);
    }

    #[test]
    fn unusable_keys_are_skipped() {
        let mut enc = tokens::jwk(TestKey::Rsa, "enc", "RS256");
        enc["use"] = "enc".into();
        let mut wrong_curve = tokens::jwk(TestKey::P256, "c", "ES256");
        wrong_curve["crv"] = "P-384".into();
        let mut zero_rsa = tokens::jwk(TestKey::Rsa, "zero", "RS256");
        zero_rsa["n"] = "AA".into();
        let mut short_rsa = tokens::jwk(TestKey::Rsa, "short", "RS256");
        short_rsa["n"] = URL_SAFE_NO_PAD.encode([0xc5u8; 128]).into();
        let mut off_curve = tokens::jwk(TestKey::P256, "off", "ES256");
        off_curve["y"] = URL_SAFE_NO_PAD.encode([7u8; 32]).into();
        let keys = parse(json!([
            { "kty": "oct", "k": "c2VjcmV0", "kid": "hmac" },
            enc,
            zero_rsa,
            wrong_curve,
            short_rsa,
            off_curve,
            { "kty": "OKP", "crv": "Ed25519", "x": "AAAA" },
            { "kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB" },
            { "kty": "EC", "crv": "P-256", "alg": "RS256", "x": "AA", "y": "AA" },
            "not an object",
            tokens::jwk(TestKey::Rsa, "good", "RS256"),
        ]));
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("good")]);
    }

    #[test]
    fn documents_that_are_not_key_sets_are_errors() {
        assert!(parse_key_set(b"<html>").is_err());
        assert!(parse_key_set(br#"{"keys": 3}"#).is_err());
        assert!(parse_key_set(br#"{"keys": []}"#).unwrap().is_empty());
    }
}
