//! Tollgate as an OAuth2 authorization server for the client-credentials
//! grant (RFC 6749 §4.4): consumers with `client_credentials` exchange their
//! client id and secret for a short-lived ES256 JWT, which every API that
//! accepts `jwt` then verifies like any other issuer's (its identity-provider
//! name is [`OWN_ISSUER_NAME`](crate::jwt::OWN_ISSUER_NAME)).
//!
//! Secrets are kept only as SHA-256 digests and compared in constant time;
//! the signing key is a P-256 PKCS#8 file, generated (mode 0600) when missing.
//! Never: put a client secret in a log, a token or an error description.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tollgate_config::{ConfigError, Consumer, OAuth2Server};

use crate::jwt::VerifyKey;

/// Largest token request body read.
const MAX_REQUEST_BODY: usize = 16 * 1024;

/// How long clients may cache the JWKS document.
const JWKS_MAX_AGE_SECS: u32 = 300;

/// The gateway's token-signing key: ES256 on P-256.
pub struct SigningKey {
    encoding: EncodingKey,
    /// The uncompressed public point (65 bytes).
    point: Vec<u8>,
    kid: String,
    jwk: Value,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads the PKCS#8 PEM key at `path`, or generates one and writes it
    /// there (mode 0600, parent directories created) when the file is missing.
    pub fn load_or_generate(path: &Path) -> Result<SigningKey, String> {
        let shown = path.display();
        match std::fs::read_to_string(path) {
            Ok(pem) => {
                warn_if_readable_by_others(path);
                return SigningKey::from_pkcs8_pem(&pem).map_err(|e| format!("{shown}: {e}"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("reading {shown}: {e}")),
        }
        let document =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| "generating a P-256 key failed".to_string())?;
        let pem = pem_encode("PRIVATE KEY", document.as_ref());
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        if write_new_private_file(path, pem.as_bytes())? {
            tracing::info!(path = %shown, "generated the OAuth2 token-signing key");
            SigningKey::from_pkcs8_pem(&pem)
        } else {
            // Another process created it first: use theirs.
            let pem = std::fs::read_to_string(path).map_err(|e| format!("reading {shown}: {e}"))?;
            SigningKey::from_pkcs8_pem(&pem).map_err(|e| format!("{shown}: {e}"))
        }
    }

    /// A P-256 key from PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<SigningKey, String> {
        if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
            return Err(
                "a SEC1 key: convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt`".into(),
            );
        }
        let der = pem_decode("PRIVATE KEY", pem)
            .ok_or("expected a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----)")?;
        SigningKey::from_pkcs8_der(&der)
    }

    fn from_pkcs8_der(der: &[u8]) -> Result<SigningKey, String> {
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
                .map_err(|_| "not a P-256 (ES256) PKCS#8 key".to_string())?;
        let point = pair.public_key().as_ref().to_vec();
        let encoding = EncodingKey::from_ec_der(der);
        jsonwebtoken::crypto::sign(b"probe", &encoding, Algorithm::ES256)
            .map_err(|e| format!("the key cannot sign ES256 tokens: {e}"))?;
        let kid = hex::encode(Sha256::digest(&point))[..16].to_string();
        let jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            "use": "sig",
            "alg": "ES256",
            "kid": kid,
        });
        Ok(SigningKey {
            encoding,
            point,
            kid,
            jwk,
        })
    }

    /// The key id: the first 16 hex digits of the SHA-256 of the public point.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (`kty`, `crv`, `x`, `y`, `use`, `alg`, `kid`).
    pub fn public_jwk(&self) -> &Value {
        &self.jwk
    }

    pub(crate) fn verify_key(&self) -> VerifyKey {
        VerifyKey {
            kid: Some(self.kid.clone()),
            key: DecodingKey::from_ec_der(&self.point),
            algorithms: vec![Algorithm::ES256],
        }
    }
}

/// Writes `contents` to `path` only if it does not exist, readable by the
/// owner alone, never leaving a half-written file. `Ok(false)`: it existed.
fn write_new_private_file(path: &Path, contents: &[u8]) -> Result<bool, String> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".tmp-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let temp: PathBuf = path.with_file_name(name);
    let shown = temp.display();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&temp).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(format!("writing {shown}: {e}"));
    }
    // A hard link never replaces an existing file, unlike a rename.
    let linked = std::fs::hard_link(&temp, path);
    let outcome = match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(_) => std::fs::rename(&temp, path)
            .map(|()| true)
            .map_err(|e| format!("writing {}: {e}", path.display())),
    };
    let _ = std::fs::remove_file(&temp);
    outcome
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "the token-signing key is readable by other users; chmod 600 it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn pem_decode(label: &str, pem: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let body: String = pem[start..stop].split_whitespace().collect();
    STANDARD.decode(body).ok()
}

/// The client-credentials token endpoint and its JWKS.
pub struct TokenIssuer {
    issuer: String,
    audience: Option<String>,
    ttl: Duration,
    key: Arc<SigningKey>,
    header: Header,
    clients: HashMap<String, Client>,
}

struct Client {
    client_id: String,
    consumer: Arc<str>,
    secret_sha256: [u8; 32],
    /// Scopes it may be granted; empty: any it asks for.
    scopes: Vec<String>,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.key.kid)
            .field("clients", &self.clients.len())
            .finish()
    }
}

/// An RFC 6749 §5.2 error answer.
#[derive(Debug)]
enum OAuthError {
    InvalidRequest(&'static str),
    InvalidClient(&'static str),
    UnsupportedGrantType,
    InvalidScope(&'static str),
}

impl TokenIssuer {
    /// Indexes the consumers' `client_credentials` by client id. Errors name
    /// the field: `consumers[3].client_credentials.secret`.
    pub fn compile(
        server: &OAuth2Server,
        consumers: &[Consumer],
        key: Arc<SigningKey>,
    ) -> Result<TokenIssuer, Vec<ConfigError>> {
        let mut errors = Vec::new();
        if server.issuer.is_empty() {
            errors.push(ConfigError::new(
                "oauth2_server.issuer",
                "must not be empty",
            ));
        }
        if server.token_ttl.get().as_secs() == 0 {
            errors.push(ConfigError::new(
                "oauth2_server.token_ttl",
                "must be at least 1s",
            ));
        }
        let mut clients: HashMap<String, Client> = HashMap::new();
        for (i, consumer) in consumers.iter().enumerate() {
            let Some(cc) = &consumer.client_credentials else {
                continue;
            };
            let at = format!("consumers[{i}].client_credentials");
            if cc.client_id.is_empty() {
                errors.push(ConfigError::new(
                    format!("{at}.client_id"),
                    "must not be empty",
                ));
            } else if let Some(other) = clients.get(&cc.client_id) {
                errors.push(ConfigError::new(
                    format!("{at}.client_id"),
                    format!(
                        "client_id `{}` is also consumer `{}`'s",
                        cc.client_id, other.consumer
                    ),
                ));
            }
            for (j, scope) in cc.scopes.iter().enumerate() {
                if !is_scope_token(scope) {
                    errors.push(ConfigError::new(
                        format!("{at}.scopes[{j}]"),
                        "a scope is a non-empty word of printable ASCII without spaces, `\"` or `\\`",
                    ));
                }
            }
            match cc.secret.resolve() {
                Ok(secret) if !secret.is_empty() => {
                    clients.insert(
                        cc.client_id.clone(),
                        Client {
                            client_id: cc.client_id.clone(),
                            consumer: consumer.name.as_str().into(),
                            secret_sha256: Sha256::digest(secret.as_bytes()).into(),
                            scopes: cc.scopes.clone(),
                        },
                    );
                }
                Ok(_) => errors.push(ConfigError::new(
                    format!("{at}.secret"),
                    "must not be empty",
                )),
                Err(message) => errors.push(ConfigError::new(format!("{at}.secret"), message)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("at+jwt".into());
        header.kid = Some(key.kid.clone());
        Ok(TokenIssuer {
            issuer: server.issuer.clone(),
            audience: server.audience.clone(),
            ttl: server.token_ttl.get(),
            key,
            header,
            clients,
        })
    }

    /// Answers a token request (`POST /oauth2/token`, RFC 6749 §4.4 and §5);
    /// also returns the consumer a token was issued to.
    pub fn token_response(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> (Response<Bytes>, Option<Arc<str>>) {
        match self.issue(headers, body) {
            Ok((answer, consumer)) => (json_response(StatusCode::OK, &answer), Some(consumer)),
            Err(error) => (error.response(), None),
        }
    }

    /// `{"keys": [the public JWK]}`, cacheable for five minutes.
    pub fn jwks_response(&self) -> Response<Bytes> {
        let mut response = json_response(StatusCode::OK, &json!({ "keys": [self.key.jwk] }));
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_str(&format!("public, max-age={JWKS_MAX_AGE_SECS}"))
                .expect("a valid header value"),
        );
        response
    }

    fn issue(&self, headers: &HeaderMap, body: &[u8]) -> Result<(Value, Arc<str>), OAuthError> {
        if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
            let essence = content_type
                .to_str()
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim();
            if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
                return Err(OAuthError::InvalidRequest(
                    "the body must be application/x-www-form-urlencoded",
                ));
            }
        }
        if body.len() > MAX_REQUEST_BODY {
            return Err(OAuthError::InvalidRequest("the request body is too large"));
        }
        let form = parse_form(body)?;
        match form.get("grant_type").map(String::as_str) {
            None => return Err(OAuthError::InvalidRequest("grant_type is missing")),
            Some("client_credentials") => {}
            Some(_) => return Err(OAuthError::UnsupportedGrantType),
        }
        let client = self.authenticate(headers, &form)?;
        let scopes = granted_scopes(client, form.get("scope").map(String::as_str))?;
        let token = self.mint(client, &scopes).map_err(|e| {
            tracing::error!("signing an access token failed: {e}");
            OAuthError::InvalidRequest("the token could not be issued")
        })?;
        let mut answer = json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.ttl.as_secs(),
        });
        if !scopes.is_empty() {
            answer["scope"] = scopes.join(" ").into();
        }
        Ok((answer, client.consumer.clone()))
    }

    /// The client the request authenticates as: HTTP Basic, or the
    /// `client_id` and `client_secret` form fields (not both).
    fn authenticate(
        &self,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
    ) -> Result<&Client, OAuthError> {
        let basic = basic_credentials(headers)?;
        let (id, secret) = match (basic, form.get("client_secret")) {
            (Some(_), Some(_)) => {
                return Err(OAuthError::InvalidRequest(
                    "use one client authentication method, not both",
                ))
            }
            (Some((id, secret)), None) => {
                if form.get("client_id").is_some_and(|form_id| *form_id != id) {
                    return Err(OAuthError::InvalidRequest("two different client ids"));
                }
                (id, secret)
            }
            (None, Some(secret)) => match form.get("client_id") {
                Some(id) => (id.clone(), secret.clone()),
                None => return Err(OAuthError::InvalidClient("client_id is missing")),
            },
            (None, None) => {
                return Err(OAuthError::InvalidClient(
                    "client authentication is missing",
                ))
            }
        };
        let given: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        match self.clients.get(&id) {
            Some(client) if bool::from(given.ct_eq(&client.secret_sha256)) => Ok(client),
            _ => Err(OAuthError::InvalidClient("unknown client or wrong secret")),
        }
    }

    fn mint(
        &self,
        client: &Client,
        scopes: &[String],
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut jti = [0u8; 16];
        SystemRandom::new()
            .fill(&mut jti)
            .map_err(|_| jsonwebtoken::errors::ErrorKind::Signing("no randomness".into()))?;
        let mut claims = Map::new();
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("sub".into(), client.consumer.to_string().into());
        claims.insert("client_id".into(), client.client_id.clone().into());
        if let Some(aud) = &self.audience {
            claims.insert("aud".into(), aud.clone().into());
        }
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + self.ttl.as_secs()).into());
        claims.insert("jti".into(), hex::encode(jti).into());
        if !scopes.is_empty() {
            claims.insert("scope".into(), scopes.join(" ").into());
        }
        jsonwebtoken::encode(&self.header, &claims, &self.key.encoding)
    }
}

/// The scopes to grant: the requested ones (each allowed, when the client's
/// scopes are configured), or all the client's when none are requested.
fn granted_scopes(client: &Client, requested: Option<&str>) -> Result<Vec<String>, OAuthError> {
    let Some(requested) = requested else {
        return Ok(client.scopes.clone());
    };
    let mut granted: Vec<String> = Vec::new();
    for scope in requested.split(' ').filter(|s| !s.is_empty()) {
        if !is_scope_token(scope) {
            return Err(OAuthError::InvalidScope("malformed scope"));
        }
        if !client.scopes.is_empty() && !client.scopes.iter().any(|s| s == scope) {
            return Err(OAuthError::InvalidScope(
                "a requested scope is not allowed for this client",
            ));
        }
        if !granted.iter().any(|s| s == scope) {
            granted.push(scope.to_owned());
        }
    }
    Ok(granted)
}

/// RFC 6749 §3.3 `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// `Authorization: Basic` credentials, each part form-urldecoded (RFC 6749
/// §2.3.1); `None` without a Basic header.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().unwrap_or_default();
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let malformed = OAuthError::InvalidClient("malformed Basic credentials");
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| malformed)?;
    let text = String::from_utf8(decoded)
        .map_err(|_| OAuthError::InvalidClient("malformed Basic credentials"))?;
    let (id, secret) = text
        .split_once(':')
        .ok_or(OAuthError::InvalidClient("malformed Basic credentials"))?;
    match (form_decode(id), form_decode(secret)) {
        (Some(id), Some(secret)) => Ok(Some((id, secret))),
        _ => Err(OAuthError::InvalidClient("malformed Basic credentials")),
    }
}

/// An `application/x-www-form-urlencoded` body; a repeated parameter is an
/// error (RFC 6749 §3.2).
fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| OAuthError::InvalidRequest("the body is not UTF-8"))?;
    let mut form = HashMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(name), Some(value)) = (form_decode(name), form_decode(value)) else {
            return Err(OAuthError::InvalidRequest("malformed form encoding"));
        };
        if form.insert(name, value).is_some() {
            return Err(OAuthError::InvalidRequest("a parameter is repeated"));
        }
    }
    Ok(form)
}

/// Decodes `+` and `%XX`; `None` for a broken escape or invalid UTF-8.
fn form_decode(text: &str) -> Option<String> {
    fn hex_digit(byte: u8) -> Option<u8> {
        (byte as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let high = hex_digit(*bytes.get(i + 1)?)?;
                let low = hex_digit(*bytes.get(i + 2)?)?;
                out.push(high << 4 | low);
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

impl OAuthError {
    fn response(&self) -> Response<Bytes> {
        let (status, code, description) = match self {
            OAuthError::InvalidRequest(d) => (StatusCode::BAD_REQUEST, "invalid_request", *d),
            OAuthError::InvalidClient(d) => (StatusCode::UNAUTHORIZED, "invalid_client", *d),
            OAuthError::UnsupportedGrantType => (
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only the client_credentials grant is supported",
            ),
            OAuthError::InvalidScope(d) => (StatusCode::BAD_REQUEST, "invalid_scope", *d),
        };
        let mut response = json_response(
            status,
            &json!({ "error": code, "error_description": description }),
        );
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="tollgate""#),
            );
        }
        response
    }
}

/// A JSON answer that no cache keeps (RFC 6749 §5.1).
fn json_response(status: StatusCode, body: &Value) -> Response<Bytes> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::PRAGMA, "no-cache")
        .body(Bytes::from(body.to_string()))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{JwtVerifiers, TokenError, TokenRegistry};
    use tollgate_config::Config;
    use tollgate_testkit::tokens::TestKey;

    fn server() -> OAuth2Server {
        serde_json::from_value(
            json!({ "issuer": "https://gw.test", "token_ttl": "5m", "audience": "apis" }),
        )
        .unwrap()
    }

    fn consumers() -> Vec<Consumer> {
        serde_json::from_value(json!([
            { "name": "billing", "client_credentials": { "client_id": "billing-app", "secret": "s3cret:+&", "scopes": ["read", "write"] } },
            { "name": "open", "client_credentials": { "client_id": "open-app", "secret": "open-secret" } },
            { "name": "plain" },
        ]))
        .unwrap()
    }

    fn key() -> Arc<SigningKey> {
        Arc::new(SigningKey::from_pkcs8_pem(TestKey::P256.private_pem()).unwrap())
    }

    fn issuer(key: Arc<SigningKey>) -> TokenIssuer {
        TokenIssuer::compile(&server(), &consumers(), key).unwrap()
    }

    fn form_headers(basic: Option<(&str, &str)>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        if let Some((id, secret)) = basic {
            let value = format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")));
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        }
        headers
    }

    fn body_json(response: &Response<Bytes>) -> Value {
        serde_json::from_slice(response.body()).unwrap()
    }

    fn error_code(response: &Response<Bytes>) -> String {
        body_json(response)["error"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn issues_tokens_that_the_gateway_verifies() {
        let key = key();
        let issuer = issuer(key.clone());
        // The secret is form-urlencoded inside Basic (RFC 6749 §2.3.1).
        let (response, consumer) = issuer.token_response(
            &form_headers(Some(("billing-app", "s3cret%3A%2B%26"))),
            b"grant_type=client_credentials&scope=read",
        );
        assert_eq!(response.status(), 200, "{:?}", response.body());
        assert_eq!(consumer.as_deref(), Some("billing"));
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        let answer = body_json(&response);
        assert_eq!(answer["token_type"], "Bearer");
        assert_eq!(answer["expires_in"], 300);
        assert_eq!(answer["scope"], "read");

        let config = Config {
            oauth2_server: Some(server()),
            ..Config::default()
        };
        let verifiers =
            JwtVerifiers::compile(&config, &TokenRegistry::default(), Some(&key)).unwrap();
        assert!(!verifiers.is_empty());
        let token = answer["access_token"].as_str().unwrap();
        // Accepted even by an API that lists other providers only.
        let others: Vec<Arc<str>> = vec!["corporate-idp".into()];
        let verified = verifiers.verify(token, &others).await.unwrap();
        assert_eq!(&*verified.idp, "tollgate");
        assert_eq!(verified.consumer.as_deref(), Some("billing"));
        assert_eq!(verified.scopes, ["read"]);
        assert_eq!(verified.claims["client_id"], "billing-app");
        assert_eq!(verified.claims["aud"], "apis");
        assert_eq!(verified.claims["jti"].as_str().unwrap().len(), 32);
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(key.kid()));

        // Without `own`, the gateway does not trust its own tokens.
        let verifiers = JwtVerifiers::compile(&config, &TokenRegistry::default(), None).unwrap();
        assert!(matches!(
            verifiers.verify(token, &[]).await,
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn form_credentials_and_default_scopes() {
        let issuer = issuer(key());
        let (response, consumer) = issuer.token_response(
            &form_headers(None),
            b"grant_type=client_credentials&client_id=billing-app&client_secret=s3cret%3A%2B%26",
        );
        assert_eq!(response.status(), 200);
        assert_eq!(consumer.as_deref(), Some("billing"));
        assert_eq!(body_json(&response)["scope"], "read write");

        // A client without configured scopes gets what it asks for.
        let (response, _) = issuer.token_response(
            &form_headers(Some(("open-app", "open-secret"))),
            b"grant_type=client_credentials&scope=anything+else",
        );
        assert_eq!(response.status(), 200);
        assert_eq!(body_json(&response)["scope"], "anything else");
    }

    #[test]
    fn client_errors() {
        let issuer = issuer(key());
        let grant = b"grant_type=client_credentials".as_slice();
        for headers in [
            form_headers(Some(("billing-app", "wrong"))),
            form_headers(Some(("nobody", "s3cret:+&"))),
            form_headers(None),
        ] {
            let (response, consumer) = issuer.token_response(&headers, grant);
            assert_eq!(response.status(), 401);
            assert_eq!(error_code(&response), "invalid_client");
            assert_eq!(
                response.headers()[header::WWW_AUTHENTICATE],
                r#"Basic realm="tollgate""#
            );
            assert_eq!(consumer, None);
            assert!(!String::from_utf8_lossy(response.body()).contains("s3cret"));
        }
        let good = form_headers(Some(("open-app", "open-secret")));
        let cases: [(&[u8], &str); 6] = [
            (
                b"grant_type=password&username=a&password=b",
                "unsupported_grant_type",
            ),
            (b"scope=read", "invalid_request"),
            (
                b"grant_type=client_credentials&grant_type=client_credentials",
                "invalid_request",
            ),
            (
                b"grant_type=client_credentials&client_secret=x",
                "invalid_request",
            ),
            (
                b"grant_type=client_credentials&scope=%ZZ",
                "invalid_request",
            ),
            (
                b"grant_type=client_credentials&scope=a%22b",
                "invalid_scope",
            ),
        ];
        for (body, code) in cases {
            let (response, _) = issuer.token_response(&good, body);
            assert_eq!(response.status(), 400, "{}", String::from_utf8_lossy(body));
            assert_eq!(
                error_code(&response),
                code,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let (response, _) = issuer.token_response(
            &form_headers(Some(("billing-app", "s3cret%3A%2B%26"))),
            b"grant_type=client_credentials&scope=read+admin",
        );
        assert_eq!(error_code(&response), "invalid_scope");
        let mut json_body = good.clone();
        json_body.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let (response, _) =
            issuer.token_response(&json_body, br#"{"grant_type":"client_credentials"}"#);
        assert_eq!(error_code(&response), "invalid_request");
    }

    #[test]
    fn jwks_lists_the_public_key() {
        let key = key();
        let response = issuer(key.clone()).jwks_response();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()[header::CACHE_CONTROL],
            "public, max-age=300"
        );
        let keys = &body_json(&response)["keys"];
        assert_eq!(keys[0]["kid"], key.kid());
        assert_eq!(keys[0]["crv"], "P-256");
        assert!(keys[0].get("d").is_none());
        assert_eq!(key.kid().len(), 16);
    }

    #[test]
    fn compile_errors_name_the_field() {
        let consumers: Vec<Consumer> = serde_json::from_value(json!([
            { "name": "a", "client_credentials": { "client_id": "same", "secret": "x", "scopes": ["ok", "not ok"] } },
            { "name": "b", "client_credentials": { "client_id": "same", "secret": "env:TOLLGATE_TEST_SURELY_UNSET" } },
        ]))
        .unwrap();
        let errors = TokenIssuer::compile(&server(), &consumers, key()).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "consumers[0].client_credentials.scopes[1]",
                "consumers[1].client_credentials.client_id",
                "consumers[1].client_credentials.secret",
            ]
        );
    }

    #[test]
    fn signing_keys_persist_and_reload() {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-signing-key-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let path = dir.join("state/keys/oauth2.pem");
        let generated = SigningKey::load_or_generate(&path).unwrap();
        let reloaded = SigningKey::load_or_generate(&path).unwrap();
        assert_eq!(generated.kid(), reloaded.kid());
        assert_eq!(generated.public_jwk(), reloaded.public_jwk());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_p256_pkcs8_keys_load() {
        assert!(SigningKey::from_pkcs8_pem(TestKey::P256.private_pem()).is_ok());
        for key in [TestKey::P384, TestKey::Rsa, TestKey::Ed25519] {
            assert!(
                SigningKey::from_pkcs8_pem(key.private_pem()).is_err(),
                "{key:?}"
            );
        }
        assert!(SigningKey::from_pkcs8_pem("garbage").is_err());
    }
}
