//! JWT bearer tokens: which issuer a token claims, which of that issuer's keys
//! signed it, and whether its claims hold.
//!
//! A token is routed to an identity provider by its (unverified) `iss`; a
//! provider without `issuer` takes the tokens no issuer claims. Only then is
//! the signature checked, with the provider's keys alone and only with the
//! algorithms of each key's family: the token's `alg` header chooses among
//! them but can never turn a public key into an HMAC secret, and `none` is not
//! an algorithm here. `exp` is required; `exp`, `nbf`, `iss` and (when the
//! provider lists audiences) `aud` are checked with the provider's leeway.
//!
//! Remote key sets ([`crate::jwks`]) and introspection answers
//! ([`crate::introspection`]) are cached in a [`TokenRegistry`], which
//! outlives configuration snapshots: a reload neither refetches keys nor
//! drops answers.
//!
//! Never: log or echo a token, accept a key from a token header (`jwk`,
//! `jku`, `x5u`), or let a flood of unknown key ids reach an identity
//! provider more than once per [`jwks::MIN_REFETCH_INTERVAL`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use dashmap::DashMap;
use http::{header, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use tollgate_config::{Config, ConfigError, IdentityProvider};

use crate::denial::Denial;
use crate::introspection::AnswerCache;
use crate::jwks::{self, JwksCache};
use crate::oauth2::SigningKey;

/// The identity-provider name of tokens issued by Tollgate's own OAuth2 server.
pub const OWN_ISSUER_NAME: &str = "tollgate";

/// Longest bearer token looked at; longer ones are refused unparsed.
pub(crate) const MAX_TOKEN_LEN: usize = 32 * 1024;

/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// Every signature algorithm, each with its own precomputed [`Validation`].
const ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// A token whose signature and claims were checked.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedToken {
    /// The identity provider that vouches for it ([`OWN_ISSUER_NAME`] for ours).
    pub idp: Arc<str>,
    /// The value of the provider's `consumer_claim`, when it is a string.
    pub consumer: Option<String>,
    /// The provider's `scopes_claim`: a space-separated string or an array of strings.
    pub scopes: Vec<String>,
    pub claims: Map<String, Value>,
}

/// Why a token was refused. Messages describe the problem, never the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Forged, malformed, for someone else, not yet valid: a 401.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Genuine but past its `exp` (after the leeway): a 401.
    #[error("the token has expired")]
    Expired,
    /// The identity provider needed to check it cannot be reached: a 503.
    /// The message is for logs (it may name internal URLs), not for clients.
    #[error("token verification unavailable: {0}")]
    Unavailable(String),
}

impl TokenError {
    pub(crate) fn invalid(message: impl Into<String>) -> TokenError {
        TokenError::Invalid(message.into())
    }

    /// How much this error says about the token, to pick one among several
    /// providers' answers: an expiry (the signature held) beats an outage,
    /// which beats a mismatch.
    pub(crate) fn weight(&self) -> u8 {
        match self {
            TokenError::Expired => 2,
            TokenError::Unavailable(_) => 1,
            TokenError::Invalid(_) => 0,
        }
    }

    pub fn into_denial(self) -> Denial {
        let challenge =
            HeaderValue::from_static(r#"Bearer realm="tollgate", error="invalid_token""#);
        match self {
            TokenError::Invalid(reason) => {
                Denial::invalid_credentials(format!("the bearer token is not valid: {reason}"))
                    .with_header(header::WWW_AUTHENTICATE, challenge)
            }
            TokenError::Expired => Denial::expired_credentials("the bearer token has expired")
                .with_header(header::WWW_AUTHENTICATE, challenge),
            TokenError::Unavailable(_) => Denial::auth_unavailable(
                "the identity provider needed to check the token cannot be reached",
            ),
        }
    }
}

/// Keeps the better of two errors (see [`TokenError::weight`]); the first
/// wins ties.
pub(crate) fn keep_weightier(kept: &mut Option<TokenError>, new: TokenError) {
    if kept.as_ref().is_none_or(|k| new.weight() > k.weight()) {
        *kept = Some(new);
    }
}

/// Token state that outlives configuration snapshots: JWKS caches by URL,
/// introspection answer caches by endpoint, one HTTP client for both.
pub struct TokenRegistry {
    jwks: DashMap<String, Arc<JwksCache>>,
    answers: DashMap<String, Arc<AnswerCache>>,
    http: OnceLock<HttpClient>,
    jwks_min_refetch: Duration,
}

impl Default for TokenRegistry {
    fn default() -> Self {
        TokenRegistry::with_jwks_refetch_interval(jwks::MIN_REFETCH_INTERVAL)
    }
}

impl fmt::Debug for TokenRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRegistry")
            .field("jwks_urls", &self.jwks.len())
            .field("introspection_endpoints", &self.answers.len())
            .field("jwks_min_refetch", &self.jwks_min_refetch)
            .finish()
    }
}

impl TokenRegistry {
    /// A registry whose JWKS caches refetch at most once per `interval`
    /// (instead of [`jwks::MIN_REFETCH_INTERVAL`]); for tests.
    #[doc(hidden)]
    pub fn with_jwks_refetch_interval(interval: Duration) -> TokenRegistry {
        TokenRegistry {
            jwks: DashMap::new(),
            answers: DashMap::new(),
            http: OnceLock::new(),
            jwks_min_refetch: interval,
        }
    }

    /// The shared client, built on first use (it reads the system's roots).
    pub(crate) fn http(&self) -> HttpClient {
        self.http.get_or_init(HttpClient::new).clone()
    }

    pub(crate) fn jwks(&self, url: &str, parsed: Uri) -> Arc<JwksCache> {
        self.jwks
            .entry(url.to_owned())
            .or_insert_with(|| Arc::new(JwksCache::new(parsed, self.jwks_min_refetch)))
            .clone()
    }

    pub(crate) fn answers(&self, endpoint: String) -> Arc<AnswerCache> {
        self.answers.entry(endpoint).or_default().clone()
    }
}

/// How long a JWKS or introspection request may take, connection included.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document or introspection answer read.
pub(crate) const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// HTTP and HTTPS (system roots) client for identity providers.
#[derive(Clone)]
pub(crate) struct HttpClient(Client<HttpsConnector<HttpConnector>, Full<Bytes>>);

impl HttpClient {
    fn new() -> HttpClient {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        if !native.errors.is_empty() {
            tracing::warn!(errors = ?native.errors, "some system root certificates did not load");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            tracing::warn!(
                ignored,
                "no system root certificates: HTTPS identity providers will fail"
            );
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        HttpClient(client)
    }

    /// Sends `request` and reads the answer, within [`FETCH_TIMEOUT`] and
    /// [`MAX_RESPONSE_BYTES`]. Redirects are not followed.
    pub(crate) async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), String> {
        let exchange = async {
            let response = self.0.request(request).await.map_err(|e| {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    message.push_str(": ");
                    message.push_str(&cause.to_string());
                    source = cause.source();
                }
                message
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the response: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(FETCH_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")))
    }
}

/// Parses an identity provider URL: absolute `http` or `https` with a host.
pub(crate) fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must be an http:// or https:// URL".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    Ok(uri)
}

/// A public key (or HMAC secret) and the algorithms it may verify.
pub(crate) struct VerifyKey {
    /// `None` matches every token `kid`.
    pub(crate) kid: Option<String>,
    pub(crate) key: DecodingKey,
    pub(crate) algorithms: Vec<Algorithm>,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    pub(crate) fn hmac(secret: &[u8]) -> Result<VerifyKey, String> {
        let key = DecodingKey::from_secret(secret).map_err(|_| "must not be empty".to_string())?;
        Ok(VerifyKey {
            kid: None,
            key,
            algorithms: AlgorithmFamily::Hmac.algorithms().to_vec(),
        })
    }

    /// An SPKI (`PUBLIC KEY`) or PKCS#1 (`RSA PUBLIC KEY`) PEM public key:
    /// RSA (2048 bits or more), EC P-256 / P-384, or Ed25519.
    pub(crate) fn from_pem(pem: &str) -> Result<VerifyKey, String> {
        const EXPECTED: &str =
            "expected a PEM public key (RSA, EC P-256/P-384 or Ed25519), `-----BEGIN PUBLIC KEY-----`";
        if pem.contains("PRIVATE KEY-----") {
            return Err("is a private key: give the public key only".into());
        }
        if !pem.contains("-----BEGIN PUBLIC KEY-----")
            && !pem.contains("-----BEGIN RSA PUBLIC KEY-----")
        {
            return Err(EXPECTED.into());
        }
        let bytes = pem.trim().as_bytes();
        if let Ok(der) = DecodingKey::from_rsa_pem(bytes) {
            let pkcs1 = der.try_get_as_bytes().map_err(|e| e.to_string())?;
            let utils = &jsonwebtoken::crypto::CryptoProvider::try_get_default()
                .expect("jsonwebtoken's rust_crypto provider is compiled in")
                .key_utils;
            let (n, e) = (utils.rsa_pub_components_from_public_key)(pkcs1)
                .map_err(|e| format!("unreadable RSA key: {e}"))?;
            return rsa_key(None, &n, &e, AlgorithmFamily::Rsa.algorithms().to_vec());
        }
        if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
            let point = key.try_get_as_bytes().map_err(|e| e.to_string())?;
            let alg = match point.len() {
                65 => Algorithm::ES256,
                97 => Algorithm::ES384,
                _ => return Err("unsupported EC curve: use P-256 or P-384".into()),
            };
            return checked(None, key, vec![alg]);
        }
        if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
            if key.try_get_as_bytes().map(<[u8]>::len) != Ok(32) {
                return Err("unsupported EdDSA curve: use Ed25519".into());
            }
            return checked(None, key, vec![Algorithm::EdDSA]);
        }
        Err(EXPECTED.into())
    }

    fn matches(&self, kid: Option<&str>, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
            && match (&self.kid, kid) {
                (Some(own), Some(wanted)) => own == wanted,
                _ => true,
            }
    }
}

/// An RSA key from its big-endian modulus and exponent, refused below [`MIN_RSA_BITS`].
pub(crate) fn rsa_key(
    kid: Option<String>,
    n: &[u8],
    e: &[u8],
    algorithms: Vec<Algorithm>,
) -> Result<VerifyKey, String> {
    let n = strip_leading_zeros(n);
    if n.is_empty() {
        return Err("RSA key without a modulus".into());
    }
    let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA key of {bits} bits: at least {MIN_RSA_BITS} are required"
        ));
    }
    let e = strip_leading_zeros(e);
    if e.is_empty() || e.len() > 8 {
        return Err("RSA key with an unusable exponent".into());
    }
    Ok(VerifyKey {
        kid,
        key: DecodingKey::from_rsa_raw_components(n, e),
        algorithms,
    })
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    &bytes[zeros..]
}

/// `key` if the crypto provider accepts it for `algorithms[0]` (a point on
/// the curve, a valid Ed25519 key).
pub(crate) fn checked(
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
) -> Result<VerifyKey, String> {
    let alg = algorithms[0];
    // Building the verifier parses the key; the dummy signature just fails.
    jsonwebtoken::crypto::verify("AA", b"", &key, alg)
        .map_err(|e| format!("unusable {alg:?} key: {e}"))?;
    Ok(VerifyKey {
        kid,
        key,
        algorithms,
    })
}

/// Every JWT issuer of one configuration snapshot.
pub struct JwtVerifiers {
    issuers: Vec<JwtIssuer>,
    /// `iss` value → indexes into `issuers`.
    by_issuer: HashMap<String, Vec<usize>>,
    /// Providers without `issuer`, tried when no issuer matches.
    without_issuer: Vec<usize>,
}

struct JwtIssuer {
    name: Arc<str>,
    /// Ours: accepted by every API whatever its `identity_providers`.
    always_allowed: bool,
    keys: Vec<VerifyKey>,
    remote: Option<RemoteKeys>,
    /// One per entry of [`ALGORITHMS`], in the same order.
    validations: Vec<Validation>,
    consumer_claim: String,
    scopes_claim: String,
}

struct RemoteKeys {
    cache: Arc<JwksCache>,
    refresh: Duration,
    http: HttpClient,
}

impl fmt::Debug for JwtVerifiers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.issuers.iter().map(|i| &i.name))
            .finish()
    }
}

/// How one key's attempt at a token ended.
enum Attempt {
    Verified(Map<String, Value>),
    /// Not this key: the next one may be.
    WrongKey,
    Refused(TokenError),
}

impl JwtVerifiers {
    /// Compiles the identity providers with `jwks_url`, `keys` or `secret`,
    /// and, when `own` is given and `oauth2_server` configured, Tollgate's own
    /// issuer. Errors name the field: `identity_providers[0].keys[1]`.
    pub fn compile(
        config: &Config,
        registry: &TokenRegistry,
        own: Option<&SigningKey>,
    ) -> Result<JwtVerifiers, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut issuers = Vec::new();
        let mut iss_values = Vec::new();
        for (i, idp) in config.identity_providers.iter().enumerate() {
            let at = format!("identity_providers[{i}]");
            if idp.jwks_url.is_none() && idp.keys.is_empty() && idp.secret.is_none() {
                continue;
            }
            if let Some(issuer) = compile_idp(idp, &at, registry, &mut errors) {
                issuers.push(issuer);
                iss_values.push(idp.issuer.clone());
            }
        }
        if let (Some(server), Some(key)) = (&config.oauth2_server, own) {
            let audiences: Vec<String> = server.audience.iter().cloned().collect();
            issuers.push(JwtIssuer {
                name: OWN_ISSUER_NAME.into(),
                always_allowed: true,
                keys: vec![key.verify_key()],
                remote: None,
                validations: validations(Some(&server.issuer), &audiences, 30),
                consumer_claim: "sub".into(),
                scopes_claim: "scope".into(),
            });
            iss_values.push(Some(server.issuer.clone()));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut by_issuer: HashMap<String, Vec<usize>> = HashMap::new();
        let mut without_issuer = Vec::new();
        for (index, iss) in iss_values.into_iter().enumerate() {
            match iss {
                Some(iss) => by_issuer.entry(iss).or_default().push(index),
                None => without_issuer.push(index),
            }
        }
        Ok(JwtVerifiers {
            issuers,
            by_issuer,
            without_issuer,
        })
    }

    /// Whether no JWT issuer is configured.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Verifies `token` against the issuer its `iss` names, if that issuer is
    /// in `allowed` (identity-provider names; empty allows all; Tollgate's own
    /// issuer is always allowed).
    pub async fn verify(
        &self,
        token: &str,
        allowed: &[Arc<str>],
    ) -> Result<VerifiedToken, TokenError> {
        let (header, iss) = peek(token)?;
        let candidates = iss
            .as_deref()
            .and_then(|iss| self.by_issuer.get(iss))
            .unwrap_or(&self.without_issuer);
        if candidates.is_empty() {
            return Err(TokenError::invalid(
                "no identity provider trusts its issuer",
            ));
        }
        let mut outcome = None;
        for &index in candidates {
            let issuer = &self.issuers[index];
            let allowed_here = issuer.always_allowed
                || allowed.is_empty()
                || allowed.iter().any(|name| **name == *issuer.name);
            if !allowed_here {
                keep_weightier(
                    &mut outcome,
                    TokenError::invalid("its issuer is not accepted by this API"),
                );
                continue;
            }
            match issuer.verify(token, &header).await {
                Ok(claims) => {
                    return Ok(verified_token(
                        issuer.name.clone(),
                        &issuer.consumer_claim,
                        &issuer.scopes_claim,
                        claims,
                    ))
                }
                Err(e) => keep_weightier(&mut outcome, e),
            }
        }
        Err(outcome
            .unwrap_or_else(|| TokenError::invalid("no identity provider trusts its issuer")))
    }
}

fn compile_idp(
    idp: &IdentityProvider,
    at: &str,
    registry: &TokenRegistry,
    errors: &mut Vec<ConfigError>,
) -> Option<JwtIssuer> {
    let before = errors.len();
    let mut keys = Vec::new();
    for (k, pem) in idp.keys.iter().enumerate() {
        match VerifyKey::from_pem(pem) {
            Ok(key) => keys.push(key),
            Err(message) => errors.push(ConfigError::new(format!("{at}.keys[{k}]"), message)),
        }
    }
    if let Some(secret) = &idp.secret {
        match secret.resolve().and_then(|s| VerifyKey::hmac(s.as_bytes())) {
            Ok(key) => keys.push(key),
            Err(message) => errors.push(ConfigError::new(format!("{at}.secret"), message)),
        }
    }
    let mut remote = None;
    if let Some(url) = &idp.jwks_url {
        match parse_url(url) {
            Ok(parsed) => {
                remote = Some(RemoteKeys {
                    cache: registry.jwks(url, parsed),
                    refresh: idp.jwks_refresh.get(),
                    http: registry.http(),
                })
            }
            Err(message) => errors.push(ConfigError::new(format!("{at}.jwks_url"), message)),
        }
    }
    if idp.consumer_claim.is_empty() {
        errors.push(ConfigError::new(
            format!("{at}.consumer_claim"),
            "must not be empty",
        ));
    }
    if errors.len() > before {
        return None;
    }
    Some(JwtIssuer {
        name: idp.name.as_str().into(),
        always_allowed: false,
        keys,
        remote,
        validations: validations(
            idp.issuer.as_deref(),
            &idp.audiences,
            idp.leeway.get().as_secs(),
        ),
        consumer_claim: idp.consumer_claim.clone(),
        scopes_claim: idp.scopes_claim.clone(),
    })
}

/// One [`Validation`] per entry of [`ALGORITHMS`], each allowing only that algorithm.
fn validations(issuer: Option<&str>, audiences: &[String], leeway: u64) -> Vec<Validation> {
    ALGORITHMS
        .iter()
        .map(|&alg| {
            let mut v = Validation::new(alg);
            v.leeway = leeway;
            v.validate_exp = true;
            v.validate_nbf = true;
            let mut required = vec!["exp"];
            if let Some(issuer) = issuer {
                v.set_issuer(&[issuer]);
                required.push("iss");
            }
            if audiences.is_empty() {
                // Whatever `aud` the token carries is not ours to judge.
                v.validate_aud = false;
            } else {
                v.set_audience(audiences);
                required.push("aud");
            }
            v.set_required_spec_claims(&required);
            v
        })
        .collect()
}

impl JwtIssuer {
    async fn verify(&self, token: &str, header: &Header) -> Result<Map<String, Value>, TokenError> {
        let alg = header.alg;
        let kid = header.kid.as_deref();
        let validation = ALGORITHMS
            .iter()
            .position(|&a| a == alg)
            .map(|i| &self.validations[i])
            .ok_or_else(|| TokenError::invalid("unsupported algorithm"))?;
        let mut tried = false;
        for key in self.keys.iter().filter(|k| k.matches(kid, alg)) {
            tried = true;
            match attempt(token, key, validation) {
                Attempt::Verified(claims) => return Ok(claims),
                Attempt::Refused(e) => return Err(e),
                Attempt::WrongKey => {}
            }
        }
        // A key set never holds HMAC secrets: HS* tokens never cause a fetch.
        if let Some(remote) = self
            .remote
            .as_ref()
            .filter(|_| alg.family() != AlgorithmFamily::Hmac)
        {
            let set = match remote
                .cache
                .key_set(kid, remote.refresh, &remote.http)
                .await
            {
                Ok(set) => set,
                Err(e) if !tried => return Err(e),
                Err(_) => return Err(TokenError::invalid("the signature does not verify")),
            };
            for key in set.keys.iter().filter(|k| k.matches(kid, alg)) {
                tried = true;
                match attempt(token, key, validation) {
                    Attempt::Verified(claims) => return Ok(claims),
                    Attempt::Refused(e) => return Err(e),
                    Attempt::WrongKey => {}
                }
            }
        }
        Err(TokenError::invalid(match (tried, kid) {
            (true, _) => "the signature does not verify",
            (false, Some(_)) => "no key of its issuer has its key id (kid) and algorithm",
            (false, None) => "no key of its issuer is for its algorithm",
        }))
    }
}

fn attempt(token: &str, key: &VerifyKey, validation: &Validation) -> Attempt {
    match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
        Ok(data) => Attempt::Verified(data.claims),
        Err(e) => match e.into_kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::Signing(_)
            | ErrorKind::Provider(_) => Attempt::WrongKey,
            ErrorKind::ExpiredSignature => Attempt::Refused(TokenError::Expired),
            ErrorKind::ImmatureSignature => {
                Attempt::Refused(TokenError::invalid("it is not valid yet (nbf)"))
            }
            ErrorKind::InvalidIssuer => Attempt::Refused(TokenError::invalid("wrong issuer (iss)")),
            ErrorKind::InvalidAudience => {
                Attempt::Refused(TokenError::invalid("wrong audience (aud)"))
            }
            ErrorKind::MissingRequiredClaim(claim) => Attempt::Refused(TokenError::Invalid(
                format!("the `{claim}` claim is missing"),
            )),
            ErrorKind::InvalidClaimFormat(claim) => Attempt::Refused(TokenError::Invalid(format!(
                "the `{claim}` claim is malformed"
            ))),
            _ => Attempt::Refused(TokenError::invalid("malformed token")),
        },
    }
}

/// The header and the claimed `iss` of a token whose signature is not checked yet.
fn peek(token: &str) -> Result<(Header, Option<String>), TokenError> {
    #[derive(Deserialize)]
    struct Unverified {
        #[serde(default)]
        iss: Option<String>,
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::invalid("too long"));
    }
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::invalid("not a JWT"));
    };
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| TokenError::invalid("malformed header or unsupported algorithm"))?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::invalid("malformed payload"))?;
    let claims: Unverified =
        serde_json::from_slice(&payload).map_err(|_| TokenError::invalid("malformed payload"))?;
    Ok((header, claims.iss))
}

/// A [`VerifiedToken`] from checked claims.
pub(crate) fn verified_token(
    idp: Arc<str>,
    consumer_claim: &str,
    scopes_claim: &str,
    claims: Map<String, Value>,
) -> VerifiedToken {
    let consumer = match claims.get(consumer_claim) {
        Some(Value::String(name)) => Some(name.clone()),
        _ => None,
    };
    let scopes = match claims.get(scopes_claim) {
        Some(Value::String(list)) => list.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    VerifiedToken {
        idp,
        consumer,
        scopes,
        claims,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use tollgate_testkit::tokens::{self, JwksServer, TestKey};

    pub(crate) const ISS: &str = "https://idp.test";

    pub(crate) fn idp(value: Value) -> IdentityProvider {
        serde_json::from_value(value).expect("a valid identity provider")
    }

    pub(crate) fn config_with(idps: Vec<IdentityProvider>) -> Config {
        Config {
            identity_providers: idps,
            ..Config::default()
        }
    }

    fn claims() -> Value {
        json!({ "iss": ISS, "sub": "alice", "exp": tokens::now() + 300, "scope": "read write" })
    }

    fn pem_verifiers(keys: &[TestKey]) -> JwtVerifiers {
        let pems: Vec<&str> = keys.iter().map(|&k| tokens::public_pem(k)).collect();
        let config = config_with(vec![idp(
            json!({ "name": "pem", "issuer": ISS, "keys": pems }),
        )]);
        JwtVerifiers::compile(&config, &TokenRegistry::default(), None).expect("compiles")
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn verify(v: &JwtVerifiers, token: &str) -> Result<VerifiedToken, TokenError> {
        rt().block_on(v.verify(token, &[]))
    }

    fn assert_invalid(result: Result<VerifiedToken, TokenError>) {
        match result {
            Err(TokenError::Invalid(_)) => {}
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn every_asymmetric_algorithm_verifies() {
        let v = pem_verifiers(&[TestKey::Rsa, TestKey::P256, TestKey::P384, TestKey::Ed25519]);
        let cases = [
            ("RS256", TestKey::Rsa),
            ("RS384", TestKey::Rsa),
            ("RS512", TestKey::Rsa),
            ("PS256", TestKey::Rsa),
            ("PS384", TestKey::Rsa),
            ("PS512", TestKey::Rsa),
            ("ES256", TestKey::P256),
            ("ES384", TestKey::P384),
            ("EdDSA", TestKey::Ed25519),
        ];
        for (alg, key) in cases {
            let token = tokens::mint(alg, key, Some("any"), &claims());
            let verified = verify(&v, &token).unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(&*verified.idp, "pem");
            assert_eq!(verified.consumer.as_deref(), Some("alice"));
            assert_eq!(verified.scopes, ["read", "write"]);
            assert_eq!(verified.claims["iss"], ISS);
        }
    }

    #[test]
    fn every_hmac_algorithm_verifies_with_the_secret_only() {
        let config = config_with(vec![idp(
            json!({ "name": "hs", "issuer": ISS, "secret": "0123456789abcdef0123456789abcdef" }),
        )]);
        let v = JwtVerifiers::compile(&config, &TokenRegistry::default(), None).unwrap();
        for alg in ["HS256", "HS384", "HS512"] {
            let token = tokens::mint_hs(alg, b"0123456789abcdef0123456789abcdef", &claims());
            assert!(verify(&v, &token).is_ok(), "{alg}");
            let wrong = tokens::mint_hs(alg, b"another secret", &claims());
            assert_invalid(verify(&v, &wrong));
        }
        // An asymmetric token cannot use the secret.
        assert_invalid(verify(
            &v,
            &tokens::mint("RS256", TestKey::Rsa, None, &claims()),
        ));
    }

    #[test]
    fn forgeries_are_invalid() {
        let v = pem_verifiers(&[TestKey::Rsa]);
        assert_invalid(verify(&v, &tokens::alg_none(&claims())));
        assert_invalid(verify(
            &v,
            &tokens::hs256_signed_with_public_key(TestKey::Rsa, None, &claims()),
        ));
        let genuine = tokens::mint("RS256", TestKey::Rsa, None, &claims());
        let mut elevated = claims();
        elevated["sub"] = "admin".into();
        assert_invalid(verify(&v, &tokens::tamper_payload(&genuine, &elevated)));
        // Signed by another key.
        assert_invalid(verify(
            &v,
            &tokens::mint("RS256", TestKey::Rsa2, None, &claims()),
        ));
        // A broken signature.
        let (signed, _) = genuine.rsplit_once('.').unwrap();
        assert_invalid(verify(&v, &format!("{signed}.AAAA")));
        assert_invalid(verify(&v, "not a token"));
        assert_invalid(verify(&v, "a.b.c"));
    }

    #[test]
    fn time_claims() {
        let v = pem_verifiers(&[TestKey::P256]);
        let now = tokens::now();
        let mint = |claims: Value| tokens::mint("ES256", TestKey::P256, None, &claims);

        let expired = mint(json!({ "iss": ISS, "sub": "a", "exp": now - 120 }));
        assert_eq!(verify(&v, &expired), Err(TokenError::Expired));
        // Within the 30s default leeway.
        let just_expired = mint(json!({ "iss": ISS, "sub": "a", "exp": now - 5 }));
        assert!(verify(&v, &just_expired).is_ok());

        assert_invalid(verify(&v, &mint(json!({ "iss": ISS, "sub": "a" }))));
        assert_invalid(verify(
            &v,
            &mint(json!({ "iss": ISS, "sub": "a", "exp": "soon" })),
        ));

        let future = mint(json!({ "iss": ISS, "sub": "a", "exp": now + 600, "nbf": now + 300 }));
        assert_invalid(verify(&v, &future));
        let nearly = mint(json!({ "iss": ISS, "sub": "a", "exp": now + 600, "nbf": now + 10 }));
        assert!(verify(&v, &nearly).is_ok());
    }

    #[test]
    fn issuer_and_audience() {
        let config = config_with(vec![idp(json!({
            "name": "strict", "issuer": ISS, "audiences": ["orders", "billing"],
            "keys": [tokens::public_pem(TestKey::Rsa)],
        }))]);
        let v = JwtVerifiers::compile(&config, &TokenRegistry::default(), None).unwrap();
        let exp = tokens::now() + 300;
        let mint = |claims: Value| tokens::mint("RS256", TestKey::Rsa, None, &claims);

        assert!(verify(
            &v,
            &mint(json!({ "iss": ISS, "sub": "a", "exp": exp, "aud": "orders" }))
        )
        .is_ok());
        assert!(verify(
            &v,
            &mint(json!({ "iss": ISS, "sub": "a", "exp": exp, "aud": ["x", "billing"] }))
        )
        .is_ok());
        assert_invalid(verify(
            &v,
            &mint(json!({ "iss": ISS, "sub": "a", "exp": exp, "aud": "other" })),
        ));
        assert_invalid(verify(
            &v,
            &mint(json!({ "iss": ISS, "sub": "a", "exp": exp })),
        ));
        // No provider for this issuer, and none without an issuer.
        assert_invalid(verify(
            &v,
            &mint(json!({ "iss": "https://evil.test", "sub": "a", "exp": exp, "aud": "orders" })),
        ));
        assert_invalid(verify(
            &v,
            &mint(json!({ "sub": "a", "exp": exp, "aud": "orders" })),
        ));
    }

    #[test]
    fn a_provider_without_issuer_takes_unclaimed_tokens_and_allowed_filters() {
        let config = config_with(vec![
            idp(json!({ "name": "a", "issuer": ISS, "keys": [tokens::public_pem(TestKey::Rsa)] })),
            idp(
                json!({ "name": "b", "keys": [tokens::public_pem(TestKey::P256)],
                         "consumer_claim": "client_id", "scopes_claim": "scp" }),
            ),
        ]);
        let v = JwtVerifiers::compile(&config, &TokenRegistry::default(), None).unwrap();
        let exp = tokens::now() + 300;
        let b_token = tokens::mint(
            "ES256",
            TestKey::P256,
            None,
            &json!({ "iss": "https://other.test", "client_id": "svc", "scp": ["x", "y"], "exp": exp }),
        );
        let verified = verify(&v, &b_token).unwrap();
        assert_eq!(&*verified.idp, "b");
        assert_eq!(verified.consumer.as_deref(), Some("svc"));
        assert_eq!(verified.scopes, ["x", "y"]);

        let a_token = tokens::mint("RS256", TestKey::Rsa, None, &claims());
        let only_b: Vec<Arc<str>> = vec!["b".into()];
        assert_invalid(rt().block_on(v.verify(&a_token, &only_b)));
        let only_a: Vec<Arc<str>> = vec!["a".into()];
        assert!(rt().block_on(v.verify(&a_token, &only_a)).is_ok());
    }

    #[test]
    fn compile_errors_name_the_field() {
        let config = config_with(vec![
            idp(json!({
                "name": "bad", "issuer": ISS,
                "keys": [tokens::public_pem(TestKey::Rsa), "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
                         TestKey::P256.private_pem()],
            })),
            idp(json!({ "name": "url", "jwks_url": "ftp://x/keys" })),
        ]);
        let errors = JwtVerifiers::compile(&config, &TokenRegistry::default(), None).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "identity_providers[0].keys[1]",
                "identity_providers[0].keys[2]",
                "identity_providers[1].jwks_url"
            ]
        );
        assert!(errors[1].message.contains("private key"));
        assert!(!errors[1].message.contains("BEGIN"));
    }

    #[test]
    fn denials() {
        let invalid = TokenError::invalid("wrong audience (aud)").into_denial();
        assert_eq!(invalid.code, "invalid_credentials");
        assert_eq!(invalid.status, 401);
        assert_eq!(
            invalid.headers[0].1,
            r#"Bearer realm="tollgate", error="invalid_token""#
        );
        let expired = TokenError::Expired.into_denial();
        assert_eq!(expired.code, "expired_credentials");
        assert_eq!(expired.headers[0].0, header::WWW_AUTHENTICATE);
        let down = TokenError::Unavailable("http://10.0.0.1/jwks: refused".into()).into_denial();
        assert_eq!(down.status, 503);
        assert!(!down.message.contains("10.0.0.1"));
    }

    fn jwks_config(url: &str, refresh: &str) -> Config {
        config_with(vec![idp(json!({
            "name": "remote", "issuer": ISS, "jwks_url": url, "jwks_refresh": refresh,
        }))])
    }

    #[tokio::test]
    async fn jwks_keys_by_kid_and_rotation() {
        let server = JwksServer::start(vec![
            tokens::jwk(TestKey::Rsa, "r1", "RS256"),
            tokens::jwk(TestKey::P256, "e1", "ES256"),
            tokens::jwk(TestKey::Ed25519, "d1", "EdDSA"),
        ]);
        let registry = TokenRegistry::with_jwks_refetch_interval(Duration::from_millis(50));
        let v = JwtVerifiers::compile(&jwks_config(&server.url(), "10m"), &registry, None).unwrap();
        assert_eq!(server.hits(), 0, "fetched lazily");
        for (alg, key, kid) in [
            ("RS256", TestKey::Rsa, "r1"),
            ("ES256", TestKey::P256, "e1"),
            ("EdDSA", TestKey::Ed25519, "d1"),
        ] {
            let token = tokens::mint(alg, key, Some(kid), &claims());
            assert!(v.verify(&token, &[]).await.is_ok(), "{alg}");
        }
        assert_eq!(server.hits(), 1, "one fetch serves every key");
        // The JWK says RS256: a PS256 token under the same kid is refused.
        let ps = tokens::mint("PS256", TestKey::Rsa, Some("r1"), &claims());
        assert!(matches!(
            v.verify(&ps, &[]).await,
            Err(TokenError::Invalid(_))
        ));
        // Algorithm confusion: HS256 keyed with the public key, under a JWKS kid.
        let confused = tokens::hs256_signed_with_public_key(TestKey::Rsa, Some("r1"), &claims());
        assert!(matches!(
            v.verify(&confused, &[]).await,
            Err(TokenError::Invalid(_))
        ));
        assert_eq!(server.hits(), 1);
        // A kid of one key with the signature of another.
        let swapped = tokens::mint("RS256", TestKey::Rsa2, Some("r1"), &claims());
        assert!(matches!(
            v.verify(&swapped, &[]).await,
            Err(TokenError::Invalid(_))
        ));

        // Rotation: the IdP publishes r2; a token under r2 triggers a refetch.
        server.set_keys(vec![tokens::jwk(TestKey::Rsa2, "r2", "RS256")]);
        let rotated = tokens::mint("RS256", TestKey::Rsa2, Some("r2"), &claims());
        tollgate_testkit::eventually(Duration::from_secs(5), || async {
            v.verify(&rotated, &[]).await.is_ok()
        })
        .await;
        // A new snapshot shares the registry's cache: no fetch on reload.
        let hits = server.hits();
        let reloaded =
            JwtVerifiers::compile(&jwks_config(&server.url(), "10m"), &registry, None).unwrap();
        assert!(reloaded.verify(&rotated, &[]).await.is_ok());
        assert_eq!(server.hits(), hits);
    }

    #[tokio::test]
    async fn a_flood_of_unknown_kids_fetches_once_per_interval() {
        let server = JwksServer::start(vec![tokens::jwk(TestKey::Rsa, "r1", "RS256")]);
        let registry = TokenRegistry::default();
        let v = Arc::new(
            JwtVerifiers::compile(&jwks_config(&server.url(), "10m"), &registry, None).unwrap(),
        );
        let flood = |n: usize| {
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let v = v.clone();
                    let token = tokens::mint(
                        "RS256",
                        TestKey::Rsa,
                        Some(&format!("random-{i}-{}", fastrand::u64(..))),
                        &claims(),
                    );
                    tokio::spawn(async move { v.verify(&token, &[]).await })
                })
                .collect();
            async move {
                for task in tasks {
                    assert!(matches!(task.await.unwrap(), Err(TokenError::Invalid(_))));
                }
            }
        };
        flood(50).await;
        assert_eq!(server.hits(), 1, "concurrent misses share one fetch");
        flood(50).await;
        assert_eq!(server.hits(), 1, "no refetch within the interval");
        let good = tokens::mint("RS256", TestKey::Rsa, Some("r1"), &claims());
        assert!(v.verify(&good, &[]).await.is_ok());
        assert_eq!(server.hits(), 1);
    }

    #[tokio::test]
    async fn a_down_idp_is_served_from_cache() {
        let server = JwksServer::start(vec![tokens::jwk(TestKey::P384, "e1", "ES384")]);
        let registry = TokenRegistry::with_jwks_refetch_interval(Duration::ZERO);
        // Keys go stale at once: every request tries to refresh them.
        let v = JwtVerifiers::compile(&jwks_config(&server.url(), "1ms"), &registry, None).unwrap();
        let token = tokens::mint("ES384", TestKey::P384, Some("e1"), &claims());
        assert!(v.verify(&token, &[]).await.is_ok());
        server.set_down(true);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(v.verify(&token, &[]).await.is_ok());
        assert!(v.verify(&token, &[]).await.is_ok());
        assert!(server.hits() >= 3, "refreshes were attempted");
    }

    #[tokio::test]
    async fn oversized_or_malformed_key_sets_are_unavailable() {
        let huge = tollgate_testkit::Upstream::start(|_req| async {
            let filler = "x".repeat(2 * MAX_RESPONSE_BYTES);
            tollgate_testkit::body::json_response(&json!({ "keys": [], "filler": filler }))
        });
        let html = tollgate_testkit::Upstream::start(|_req| async {
            http::Response::new(tollgate_testkit::body::full("<html>not keys</html>"))
        });
        let token = tokens::mint("RS256", TestKey::Rsa, Some("r1"), &claims());
        for url in [huge.url(), html.url()] {
            let v =
                JwtVerifiers::compile(&jwks_config(&url, "10m"), &TokenRegistry::default(), None)
                    .unwrap();
            assert!(
                matches!(v.verify(&token, &[]).await, Err(TokenError::Unavailable(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn verification_futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let config = jwks_config("http://127.0.0.1:9/jwks.json", "10m");
        let registry = TokenRegistry::default();
        let jwt = JwtVerifiers::compile(&config, &registry, None).unwrap();
        assert_send(&jwt.verify("a.b.c", &[]));
        let introspection =
            crate::introspection::Introspectors::compile(&config, &registry).unwrap();
        assert_send(&introspection.verify("opaque", &[]));
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TokenRegistry>();
        assert_send_sync::<JwtVerifiers>();
        assert_send_sync::<crate::introspection::Introspectors>();
        assert_send_sync::<crate::oauth2::TokenIssuer>();
    }

    #[tokio::test]
    async fn never_fetched_and_down_is_unavailable() {
        let server = JwksServer::start(vec![]);
        server.set_down(true);
        let registry = TokenRegistry::default();
        let v = JwtVerifiers::compile(&jwks_config(&server.url(), "10m"), &registry, None).unwrap();
        let token = tokens::mint("RS256", TestKey::Rsa, Some("r1"), &claims());
        assert!(matches!(
            v.verify(&token, &[]).await,
            Err(TokenError::Unavailable(_))
        ));

        let closed = format!(
            "http://{}/jwks.json",
            tollgate_testkit::upstream::closed_port()
        );
        let v = JwtVerifiers::compile(&jwks_config(&closed, "10m"), &registry, None).unwrap();
        let err = v.verify(&token, &[]).await.unwrap_err();
        assert!(matches!(err, TokenError::Unavailable(_)), "{err:?}");
        assert_eq!(err.into_denial().status, 503);
    }
}
