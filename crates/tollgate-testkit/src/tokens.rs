//! Signed tokens for tests: fixture key pairs, minting, JWKs, forgeries, and
//! real JWKS and RFC 7662 introspection servers on loopback ports.
//!
//! ```no_run
//! # async fn example() {
//! use serde_json::json;
//! use tollgate_testkit::tokens::{self, JwksServer, TestKey};
//!
//! let jwks = JwksServer::start(vec![tokens::jwk(TestKey::Rsa, "k1", "RS256")]);
//! let token = tokens::mint(
//!     "RS256",
//!     TestKey::Rsa,
//!     Some("k1"),
//!     &json!({ "iss": "https://idp.test", "sub": "alice", "exp": tokens::now() + 300 }),
//! );
//! // identity_providers: [{ name: idp, issuer: https://idp.test, jwks_url: <jwks.url()> }]
//! # let _ = (jwks.url(), token);
//! # }
//! ```
//!
//! The key pairs under `keys/` were generated once with `openssl genpkey`; they
//! are public and good for nothing but tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::body::{self, Body};
use crate::upstream::Upstream;

/// One of the fixture key pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TestKey {
    /// RSA 2048: RS256/384/512 and PS256/384/512.
    Rsa,
    /// A second RSA 2048 key, for rotation and wrong-key tests.
    Rsa2,
    /// EC P-256: ES256.
    P256,
    /// EC P-384: ES384.
    P384,
    /// Ed25519: EdDSA.
    Ed25519,
}

impl TestKey {
    /// Every fixture key.
    pub const ALL: [TestKey; 5] = [
        TestKey::Rsa,
        TestKey::Rsa2,
        TestKey::P256,
        TestKey::P384,
        TestKey::Ed25519,
    ];

    /// The private key, PKCS#8 PEM.
    pub fn private_pem(self) -> &'static str {
        match self {
            TestKey::Rsa => include_str!("../keys/rsa.pem"),
            TestKey::Rsa2 => include_str!("../keys/rsa2.pem"),
            TestKey::P256 => include_str!("../keys/p256.pem"),
            TestKey::P384 => include_str!("../keys/p384.pem"),
            TestKey::Ed25519 => include_str!("../keys/ed25519.pem"),
        }
    }

    fn encoding_key(self) -> EncodingKey {
        let pem = self.private_pem().as_bytes();
        let key = match self {
            TestKey::Rsa | TestKey::Rsa2 => EncodingKey::from_rsa_pem(pem),
            TestKey::P256 | TestKey::P384 => EncodingKey::from_ec_pem(pem),
            TestKey::Ed25519 => EncodingKey::from_ed_pem(pem),
        };
        key.unwrap_or_else(|e| panic!("fixture key {self:?} does not load: {e}"))
    }
}

/// The public key of `key`, SPKI PEM (`-----BEGIN PUBLIC KEY-----`), as an
/// identity provider's `keys:` entry takes it.
pub fn public_pem(key: TestKey) -> &'static str {
    match key {
        TestKey::Rsa => include_str!("../keys/rsa.pub.pem"),
        TestKey::Rsa2 => include_str!("../keys/rsa2.pub.pem"),
        TestKey::P256 => include_str!("../keys/p256.pub.pem"),
        TestKey::P384 => include_str!("../keys/p384.pub.pem"),
        TestKey::Ed25519 => include_str!("../keys/ed25519.pub.pem"),
    }
}

/// The current time in Unix seconds, for `exp`, `nbf` and `iat` claims.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64
}

fn algorithm(alg: &str) -> Algorithm {
    alg.parse()
        .unwrap_or_else(|_| panic!("unknown JWT algorithm `{alg}`"))
}

fn header(alg: Algorithm, kid: Option<&str>) -> Header {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    header
}

/// A JWT with `claims`, signed by `key` with `alg` (`RS256`, `PS384`,
/// `ES256`, `EdDSA`, …), `kid` in its header when given. Panics when the
/// algorithm does not suit the key.
pub fn mint(alg: &str, key: TestKey, kid: Option<&str>, claims: &Value) -> String {
    jsonwebtoken::encode(&header(algorithm(alg), kid), claims, &key.encoding_key())
        .unwrap_or_else(|e| panic!("signing with {key:?} as {alg}: {e}"))
}

/// A JWT with `claims`, signed with the shared `secret` (`HS256`, `HS384` or `HS512`).
pub fn mint_hs(alg: &str, secret: &[u8], claims: &Value) -> String {
    let key = EncodingKey::from_secret(secret).expect("a non-empty HMAC secret");
    jsonwebtoken::encode(&header(algorithm(alg), None), claims, &key)
        .unwrap_or_else(|e| panic!("signing as {alg}: {e}"))
}

/// The public JWK of `key`, with `kid`, `alg` and `"use": "sig"`, as a JWKS
/// document lists it.
pub fn jwk(key: TestKey, kid: &str, alg: &str) -> Value {
    let jwk = Jwk::from_encoding_key(&key.encoding_key(), algorithm(alg))
        .unwrap_or_else(|e| panic!("JWK of {key:?} for {alg}: {e}"));
    let mut value = serde_json::to_value(jwk).expect("a JWK serializes");
    value["kid"] = kid.into();
    value["use"] = "sig".into();
    value
}

fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("JSON serializes"))
}

/// Forgery: an unsigned token, `{"alg":"none"}` and an empty signature.
pub fn alg_none(claims: &Value) -> String {
    let header = json!({ "alg": "none", "typ": "JWT" });
    format!("{}.{}.", b64_json(&header), b64_json(claims))
}

/// Forgery (algorithm confusion): an `HS256` token whose HMAC secret is the
/// text of `key`'s public PEM, which a verifier that lets the token choose the
/// algorithm would accept.
pub fn hs256_signed_with_public_key(key: TestKey, kid: Option<&str>, claims: &Value) -> String {
    let secret = EncodingKey::from_secret(public_pem(key).as_bytes()).expect("non-empty");
    jsonwebtoken::encode(&header(Algorithm::HS256, kid), claims, &secret)
        .expect("HS256 signing does not fail")
}

/// Forgery: `token` with its payload replaced by `claims`, header and
/// signature kept.
pub fn tamper_payload(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS");
    format!("{}.{}.{}", parts[0], b64_json(claims), parts[2])
}

/// A JWKS endpoint: `GET /.well-known/jwks.json` answers `{"keys": [...]}`
/// from a key set tests can swap, or `503` while [`JwksServer::set_down`].
pub struct JwksServer {
    upstream: Upstream,
    state: Arc<JwksState>,
}

struct JwksState {
    keys: Mutex<Vec<Value>>,
    down: AtomicBool,
}

impl JwksServer {
    /// Starts serving `keys` (JWKs, see [`jwk`]). Call inside a tokio runtime.
    pub fn start(keys: Vec<Value>) -> JwksServer {
        let state = Arc::new(JwksState {
            keys: Mutex::new(keys),
            down: AtomicBool::new(false),
        });
        let handler_state = state.clone();
        let upstream = Upstream::start(move |req: Request<Incoming>| {
            let state = handler_state.clone();
            async move { state.answer(&req) }
        });
        JwksServer { upstream, state }
    }

    /// The JWKS document's URL: `http://127.0.0.1:PORT/.well-known/jwks.json`.
    pub fn url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.upstream.url())
    }

    /// Replaces the served key set (a rotation).
    pub fn set_keys(&self, keys: Vec<Value>) {
        *self.state.keys.lock().expect("JWKS state lock") = keys;
    }

    /// Whether every request is answered `503 Service Unavailable`.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Requests received so far, including those answered 503 or 404.
    pub fn hits(&self) -> u64 {
        self.upstream.hits()
    }
}

impl JwksState {
    fn answer(&self, req: &Request<Incoming>) -> Response<Body> {
        if self.down.load(Ordering::SeqCst) {
            return status(StatusCode::SERVICE_UNAVAILABLE);
        }
        if req.method() != Method::GET || req.uri().path() != "/.well-known/jwks.json" {
            return status(StatusCode::NOT_FOUND);
        }
        let keys = self.keys.lock().expect("JWKS state lock").clone();
        body::json_response(&json!({ "keys": keys }))
    }
}

/// An RFC 7662 introspection endpoint: `POST /introspect` with the form
/// field `token`, authenticated with HTTP Basic `client_id:client_secret`
/// (each form-urlencoded, RFC 6749 §2.3.1). Known tokens get the answer
/// [`inserted`](IntrospectionServer::insert) for them, others
/// `{"active": false}`; wrong client credentials get `401`.
pub struct IntrospectionServer {
    upstream: Upstream,
    state: Arc<IntrospectionState>,
}

struct IntrospectionState {
    client_id: String,
    client_secret: String,
    answers: Mutex<HashMap<String, Value>>,
    down: AtomicBool,
}

impl IntrospectionServer {
    /// Starts a server accepting the client `client_id`/`client_secret`. Call
    /// inside a tokio runtime.
    pub fn start(client_id: &str, client_secret: &str) -> IntrospectionServer {
        let state = Arc::new(IntrospectionState {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            answers: Mutex::new(HashMap::new()),
            down: AtomicBool::new(false),
        });
        let handler_state = state.clone();
        let upstream = Upstream::start(move |req: Request<Incoming>| {
            let state = handler_state.clone();
            async move { state.answer(req).await }
        });
        IntrospectionServer { upstream, state }
    }

    /// The endpoint's URL: `http://127.0.0.1:PORT/introspect`.
    pub fn url(&self) -> String {
        format!("{}/introspect", self.upstream.url())
    }

    /// Answers `response` (like `{"active": true, "sub": "alice"}`) for `token`.
    pub fn insert(&self, token: &str, response: Value) {
        self.state
            .answers
            .lock()
            .expect("introspection state lock")
            .insert(token.to_owned(), response);
    }

    /// Whether every request is answered `503 Service Unavailable`.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Requests received so far, whatever their answer.
    pub fn hits(&self) -> u64 {
        self.upstream.hits()
    }
}

impl IntrospectionState {
    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        if self.down.load(Ordering::SeqCst) {
            return status(StatusCode::SERVICE_UNAVAILABLE);
        }
        if req.method() != Method::POST || req.uri().path() != "/introspect" {
            return status(StatusCode::NOT_FOUND);
        }
        if !self.authenticated(req.headers()) {
            let mut res = body::json_response(&json!({ "error": "invalid_client" }));
            *res.status_mut() = StatusCode::UNAUTHORIZED;
            return res;
        }
        let Ok(collected) = req.into_body().collect().await else {
            return status(StatusCode::BAD_REQUEST);
        };
        let form = parse_form(&collected.to_bytes());
        let Some(token) = form.get("token") else {
            return status(StatusCode::BAD_REQUEST);
        };
        let answer = self
            .answers
            .lock()
            .expect("introspection state lock")
            .get(token)
            .cloned()
            .unwrap_or_else(|| json!({ "active": false }));
        body::json_response(&answer)
    }

    fn authenticated(&self, headers: &http::HeaderMap) -> bool {
        let Some(encoded) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
        else {
            return false;
        };
        let Ok(decoded) = STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let decoded = String::from_utf8_lossy(&decoded);
        let Some((id, secret)) = decoded.split_once(':') else {
            return false;
        };
        form_decode(id) == self.client_id && form_decode(secret) == self.client_secret
    }
}

fn status(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(body::empty())
        .expect("static response parts are valid")
}

/// `application/x-www-form-urlencoded` pairs; the last of repeated names wins.
fn parse_form(bytes: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(bytes)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(name), form_decode(value))
        })
        .collect()
}

fn form_decode(text: &str) -> String {
    fn hex(byte: u8) -> Option<u8> {
        (byte as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
