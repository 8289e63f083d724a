//! Opaque bearer tokens checked with the identity provider's RFC 7662
//! introspection endpoint: `POST` of the form `token=…`, authenticated with
//! HTTP Basic `client_id:client_secret`.
//!
//! An active answer is reused for the provider's `introspection.cache`, never
//! beyond the token's `exp`; inactive answers are not kept, so a token
//! activated a moment later is not refused for long. Answers are cached by
//! the SHA-256 of the token, never by the token itself, in a
//! [`TokenRegistry`] that survives reloads.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use dashmap::DashMap;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tollgate_config::{Config, ConfigError, IdentityProvider, Introspection};

use crate::jwt::{
    self, keep_weightier, verified_token, HttpClient, TokenError, TokenRegistry, VerifiedToken,
};

/// Answers kept per endpoint; beyond it, expired ones are swept and, if that
/// is not enough, new answers are not cached.
const MAX_CACHED_ANSWERS: usize = 10_000;

/// Every introspection endpoint of one configuration snapshot.
pub struct Introspectors {
    endpoints: Vec<Endpoint>,
}

struct Endpoint {
    idp: Arc<str>,
    url: Uri,
    /// `Basic base64(client_id:client_secret)`, marked sensitive.
    authorization: HeaderValue,
    cache_for: Duration,
    cache: Arc<AnswerCache>,
    http: HttpClient,
    issuer: Option<String>,
    audiences: Vec<String>,
    leeway: i64,
    consumer_claim: String,
    scopes_claim: String,
}

/// Active answers of one endpoint by SHA-256 of the token.
#[derive(Default)]
pub(crate) struct AnswerCache {
    entries: DashMap<[u8; 32], CachedAnswer>,
}

struct CachedAnswer {
    token: VerifiedToken,
    until: Instant,
}

impl fmt::Debug for Introspectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.endpoints.iter().map(|e| &e.idp))
            .finish()
    }
}

impl Introspectors {
    /// Compiles the identity providers with `introspection`. Errors name the
    /// field: `identity_providers[2].introspection.client_secret`.
    pub fn compile(
        config: &Config,
        registry: &TokenRegistry,
    ) -> Result<Introspectors, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut endpoints = Vec::new();
        for (i, idp) in config.identity_providers.iter().enumerate() {
            if let Some(introspection) = &idp.introspection {
                let at = format!("identity_providers[{i}].introspection");
                match Endpoint::compile(idp, introspection, &at, registry) {
                    Ok(endpoint) => endpoints.push(endpoint),
                    Err(mut e) => errors.append(&mut e),
                }
            }
        }
        if errors.is_empty() {
            Ok(Introspectors { endpoints })
        } else {
            Err(errors)
        }
    }

    /// Whether no provider has an introspection endpoint.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Asks the endpoints of the providers in `allowed` (empty: all), in
    /// configuration order, until one says the token is active.
    pub async fn verify(
        &self,
        token: &str,
        allowed: &[Arc<str>],
    ) -> Result<VerifiedToken, TokenError> {
        if token.is_empty() || token.len() > jwt::MAX_TOKEN_LEN {
            return Err(TokenError::invalid("malformed token"));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut outcome = None;
        let endpoints = self
            .endpoints
            .iter()
            .filter(|e| allowed.is_empty() || allowed.iter().any(|name| **name == *e.idp));
        for endpoint in endpoints {
            match endpoint.verify(token, &digest).await {
                Ok(verified) => return Ok(verified),
                Err(e) => keep_weightier(&mut outcome, e),
            }
        }
        Err(outcome.unwrap_or_else(|| {
            TokenError::invalid("no introspection endpoint is accepted by this API")
        }))
    }
}

impl Endpoint {
    fn compile(
        idp: &IdentityProvider,
        introspection: &Introspection,
        at: &str,
        registry: &TokenRegistry,
    ) -> Result<Endpoint, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let url = jwt::parse_url(&introspection.url)
            .map_err(|message| errors.push(ConfigError::new(format!("{at}.url"), message)))
            .ok();
        let secret = introspection
            .client_secret
            .resolve()
            .map_err(|message| {
                errors.push(ConfigError::new(format!("{at}.client_secret"), message))
            })
            .ok();
        let (Some(url), Some(secret)) = (url, secret) else {
            return Err(errors);
        };
        // RFC 6749 §2.3.1: both parts form-urlencoded before Basic encoding.
        let credentials = format!(
            "{}:{}",
            form_encode(&introspection.client_id),
            form_encode(&secret)
        );
        let mut authorization =
            HeaderValue::try_from(format!("Basic {}", STANDARD.encode(credentials)))
                .expect("base64 is a valid header value");
        authorization.set_sensitive(true);
        let cache = registry.answers(format!("{} {}", introspection.url, introspection.client_id));
        Ok(Endpoint {
            idp: idp.name.as_str().into(),
            url,
            authorization,
            cache_for: introspection.cache.get(),
            cache,
            http: registry.http(),
            issuer: idp.issuer.clone(),
            audiences: idp.audiences.clone(),
            leeway: idp.leeway.get().as_secs() as i64,
            consumer_claim: idp.consumer_claim.clone(),
            scopes_claim: idp.scopes_claim.clone(),
        })
    }

    async fn verify(&self, token: &str, digest: &[u8; 32]) -> Result<VerifiedToken, TokenError> {
        if let Some(cached) = self.cache.entries.get(digest) {
            if cached.until > Instant::now() {
                return Ok(cached.token.clone());
            }
        }
        let answer = self.ask(token).await?;
        let (verified, exp) = self.judge(answer, unix_now())?;
        let mut cache_for = self.cache_for;
        if let Some(exp) = exp {
            let left = exp.saturating_sub(unix_now()).max(0) as u64;
            cache_for = cache_for.min(Duration::from_secs(left));
        }
        if !cache_for.is_zero() {
            self.cache.insert(*digest, verified.clone(), cache_for);
        }
        Ok(verified)
    }

    async fn ask(&self, token: &str) -> Result<Map<String, Value>, TokenError> {
        let form = format!("token={}&token_type_hint=access_token", form_encode(token));
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(header::AUTHORIZATION, self.authorization.clone())
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| TokenError::Unavailable(e.to_string()))?;
        let unavailable = |message: String| {
            tracing::warn!(idp = %self.idp, url = %self.url, "token introspection failed: {message}");
            TokenError::Unavailable(format!("introspection at {}: {message}", self.url))
        };
        let (status, body) = self.http.send(request).await.map_err(unavailable)?;
        if status != StatusCode::OK {
            return Err(unavailable(format!("answered {status}")));
        }
        match serde_json::from_slice(&body) {
            Ok(Value::Object(answer)) => Ok(answer),
            _ => Err(unavailable("the answer is not a JSON object".into())),
        }
    }

    /// Whether an answer vouches for the token at `now`; also its `exp`.
    fn judge(
        &self,
        answer: Map<String, Value>,
        now: i64,
    ) -> Result<(VerifiedToken, Option<i64>), TokenError> {
        if answer.get("active") != Some(&Value::Bool(true)) {
            return Err(TokenError::invalid("the token is not active"));
        }
        let time = |name: &str| -> Result<Option<i64>, TokenError> {
            match answer.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(value) => value
                    .as_f64()
                    .filter(|t| t.is_finite())
                    .map(|t| Some(t as i64))
                    .ok_or_else(|| TokenError::Invalid(format!("the `{name}` claim is malformed"))),
            }
        };
        let exp = time("exp")?;
        if exp.is_some_and(|exp| exp < now - self.leeway) {
            return Err(TokenError::Expired);
        }
        if time("nbf")?.is_some_and(|nbf| nbf > now + self.leeway) {
            return Err(TokenError::invalid("it is not valid yet (nbf)"));
        }
        if let (Some(expected), Some(iss)) = (&self.issuer, answer.get("iss")) {
            if iss.as_str() != Some(expected) {
                return Err(TokenError::invalid("wrong issuer (iss)"));
            }
        }
        if !self.audiences.is_empty() {
            let matches = |aud: &Value| {
                aud.as_str()
                    .is_some_and(|a| self.audiences.iter().any(|x| x == a))
            };
            let ok = match answer.get("aud") {
                Some(Value::Array(items)) => items.iter().any(matches),
                Some(aud) => matches(aud),
                None => false,
            };
            if !ok {
                return Err(TokenError::invalid("wrong audience (aud)"));
            }
        }
        let verified = verified_token(
            self.idp.clone(),
            &self.consumer_claim,
            &self.scopes_claim,
            answer,
        );
        Ok((verified, exp))
    }
}

impl AnswerCache {
    fn insert(&self, digest: [u8; 32], token: VerifiedToken, ttl: Duration) {
        let now = Instant::now();
        if self.entries.len() >= MAX_CACHED_ANSWERS {
            self.entries.retain(|_, answer| answer.until > now);
            if self.entries.len() >= MAX_CACHED_ANSWERS {
                return;
            }
        }
        self.entries.insert(
            digest,
            CachedAnswer {
                token,
                until: now + ttl,
            },
        );
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &byte in value.as_bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push_str(&format!("{byte:02X}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::tests::{config_with, idp};
    use serde_json::json;
    use tollgate_testkit::tokens::{self, IntrospectionServer};

    fn introspectors(url: &str, extra: Value) -> (Introspectors, TokenRegistry) {
        let mut value = json!({
            "name": "opaque",
            "introspection": { "url": url, "client_id": "gateway", "client_secret": "s3cret&+=", "cache": "1m" },
        });
        for (k, v) in extra.as_object().unwrap() {
            value[k] = v.clone();
        }
        let registry = TokenRegistry::default();
        let compiled = Introspectors::compile(&config_with(vec![idp(value)]), &registry).unwrap();
        (compiled, registry)
    }

    #[tokio::test]
    async fn active_tokens_are_verified_and_cached() {
        let server = IntrospectionServer::start("gateway", "s3cret&+=");
        let (v, _registry) = introspectors(&server.url(), json!({}));
        server.insert(
            "opaque-1",
            json!({ "active": true, "sub": "alice", "scope": "a b", "exp": tokens::now() + 300 }),
        );
        let verified = v.verify("opaque-1", &[]).await.unwrap();
        assert_eq!(&*verified.idp, "opaque");
        assert_eq!(verified.consumer.as_deref(), Some("alice"));
        assert_eq!(verified.scopes, ["a", "b"]);
        assert_eq!(server.hits(), 1);
        // The second time the cache answers, even with the endpoint down.
        server.set_down(true);
        assert_eq!(v.verify("opaque-1", &[]).await.unwrap(), verified);
        assert_eq!(server.hits(), 1);
    }

    #[tokio::test]
    async fn inactive_tokens_are_invalid_and_not_cached() {
        let server = IntrospectionServer::start("gateway", "s3cret&+=");
        let (v, _registry) = introspectors(&server.url(), json!({}));
        assert!(matches!(
            v.verify("unknown", &[]).await,
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            v.verify("unknown", &[]).await,
            Err(TokenError::Invalid(_))
        ));
        assert_eq!(server.hits(), 2);
        server.insert("unknown", json!({ "active": true, "sub": "bob" }));
        assert!(v.verify("unknown", &[]).await.is_ok());
    }

    #[tokio::test]
    async fn expired_and_mismatched_answers() {
        let server = IntrospectionServer::start("gateway", "s3cret&+=");
        let (v, _registry) = introspectors(
            &server.url(),
            json!({ "issuer": "https://idp.test", "audiences": ["orders"] }),
        );
        let now = tokens::now();
        server.insert(
            "expired",
            json!({ "active": true, "sub": "a", "aud": "orders", "exp": now - 100 }),
        );
        server.insert(
            "other-iss",
            json!({ "active": true, "sub": "a", "aud": "orders", "iss": "https://evil.test" }),
        );
        server.insert(
            "other-aud",
            json!({ "active": true, "sub": "a", "aud": ["billing"] }),
        );
        server.insert("no-aud", json!({ "active": true, "sub": "a" }));
        server.insert("good", json!({ "active": true, "sub": "a", "aud": ["x", "orders"], "iss": "https://idp.test" }));
        assert_eq!(v.verify("expired", &[]).await, Err(TokenError::Expired));
        for token in ["other-iss", "other-aud", "no-aud"] {
            assert!(
                matches!(v.verify(token, &[]).await, Err(TokenError::Invalid(_))),
                "{token}"
            );
        }
        assert!(v.verify("good", &[]).await.is_ok());
        // Not allowed for this API.
        let others: Vec<Arc<str>> = vec!["someone-else".into()];
        assert!(matches!(
            v.verify("good", &others).await,
            Err(TokenError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn the_cache_never_outlives_exp() {
        let server = IntrospectionServer::start("gateway", "s3cret&+=");
        let (v, _registry) = introspectors(&server.url(), json!({ "leeway": "0s" }));
        server.insert(
            "short",
            json!({ "active": true, "sub": "a", "exp": tokens::now() + 1 }),
        );
        assert!(v.verify("short", &[]).await.is_ok());
        tollgate_testkit::eventually(Duration::from_secs(5), || async {
            v.verify("short", &[]).await == Err(TokenError::Expired)
        })
        .await;
        assert!(server.hits() >= 2);
    }

    #[tokio::test]
    async fn endpoint_down_or_rejecting_us_is_unavailable() {
        let server = IntrospectionServer::start("gateway", "s3cret&+=");
        server.insert("t", json!({ "active": true, "sub": "a" }));
        server.set_down(true);
        let (v, _registry) = introspectors(&server.url(), json!({}));
        let err = v.verify("t", &[]).await.unwrap_err();
        assert!(matches!(err, TokenError::Unavailable(_)));
        assert_eq!(err.into_denial().status, 503);

        let closed = format!(
            "http://{}/introspect",
            tollgate_testkit::upstream::closed_port()
        );
        let (v, _registry) = introspectors(&closed, json!({}));
        assert!(matches!(
            v.verify("t", &[]).await,
            Err(TokenError::Unavailable(_))
        ));

        let wrong_client = IntrospectionServer::start("gateway", "another secret");
        wrong_client.insert("t", json!({ "active": true, "sub": "a" }));
        let (v, _registry) = introspectors(&wrong_client.url(), json!({}));
        assert!(matches!(
            v.verify("t", &[]).await,
            Err(TokenError::Unavailable(_))
        ));
    }

    #[test]
    fn compile_errors_name_the_field() {
        let config = config_with(vec![idp(json!({
            "name": "bad",
            "introspection": { "url": "not a url", "client_id": "c", "client_secret": "env:TOLLGATE_TEST_SURELY_UNSET" },
        }))]);
        let errors = Introspectors::compile(&config, &TokenRegistry::default()).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "identity_providers[0].introspection.url",
                "identity_providers[0].introspection.client_secret"
            ]
        );
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b+c&d=é"), "a+b%2Bc%26d%3D%C3%A9");
        assert_eq!(form_encode("A-z.0_9*~"), "A-z.0_9*%7E");
    }
}
