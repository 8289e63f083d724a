//! The `auth` policy: find the request's credential, verify it with the
//! method it belongs to, strip it, and say who the caller is.
//!
//! Where a credential is looked for, in order: the client certificate
//! (`mtls`), `Authorization: Bearer` (a JWT-shaped token goes to `jwt`,
//! another to `key`, then `introspection`), `Authorization: Basic`, the key
//! header (`X-API-Key`), the key query parameter. The first credential found
//! decides: a wrong one is not compensated by a right one elsewhere. Once it
//! is accepted, every place the policy reads credentials from is stripped,
//! not only the one that decided.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Uri};
use tollgate_config::{AuthMethod, AuthPolicy};

use crate::credentials::ClientCert;
use crate::denial::Denial;
use crate::engine::Security;
use crate::identity::{ConsumerInfo, Identity};
use crate::jwt::VerifiedToken;

pub struct Authenticator {
    methods: Vec<AuthMethod>,
    key_header: HeaderName,
    key_query_param: Option<String>,
    /// (claim, `X-Claim-<Name>`)
    pub forward_claims: Vec<(String, HeaderName)>,
    allowed_idps: Vec<Arc<str>>,
    challenges: Vec<HeaderValue>,
}

/// Where the credential was found, so it can be stripped.
enum Found {
    Cert,
    Authorization,
    KeyHeader,
    Query,
}

impl Authenticator {
    pub fn compile(policy: &AuthPolicy) -> Authenticator {
        let has = |m: AuthMethod| policy.methods.contains(&m);
        let mut challenges = Vec::new();
        if has(AuthMethod::Key) || has(AuthMethod::Jwt) || has(AuthMethod::Introspection) {
            challenges.push(HeaderValue::from_static("Bearer realm=\"tollgate\""));
        }
        if has(AuthMethod::Basic) {
            challenges.push(HeaderValue::from_static(
                "Basic realm=\"tollgate\", charset=\"UTF-8\"",
            ));
        }
        if challenges.is_empty() {
            challenges.push(HeaderValue::from_static("Bearer realm=\"tollgate\""));
        }
        Authenticator {
            methods: policy.methods.clone(),
            key_header: HeaderName::from_bytes(policy.key_header.as_bytes())
                .unwrap_or(HeaderName::from_static("x-api-key")),
            key_query_param: policy.key_query_param.clone(),
            forward_claims: policy
                .forward_claims
                .iter()
                .filter_map(|claim| {
                    let name = format!("x-claim-{}", claim.to_ascii_lowercase());
                    Some((claim.clone(), HeaderName::from_bytes(name.as_bytes()).ok()?))
                })
                .collect(),
            allowed_idps: policy
                .identity_providers
                .iter()
                .map(|s| Arc::from(s.as_str()))
                .collect(),
            challenges,
        }
    }

    fn has(&self, method: AuthMethod) -> bool {
        self.methods.contains(&method)
    }

    /// Authenticates the request and strips the credential from it.
    pub async fn authenticate(
        &self,
        security: &Security,
        parts: &mut Parts,
        cert: Option<&ClientCert>,
    ) -> Result<Identity, Denial> {
        let result = self.identify(security, parts, cert).await;
        match result {
            Ok((identity, found)) => {
                self.strip(parts, found);
                Ok(identity)
            }
            Err(mut denial) => {
                if denial.is_unauthenticated()
                    && !denial.headers.iter().any(|(n, _)| n == WWW_AUTHENTICATE)
                {
                    for challenge in &self.challenges {
                        denial.headers.push((WWW_AUTHENTICATE, challenge.clone()));
                    }
                }
                Err(denial)
            }
        }
    }

    async fn identify(
        &self,
        security: &Security,
        parts: &Parts,
        cert: Option<&ClientCert>,
    ) -> Result<(Identity, Found), Denial> {
        if self.has(AuthMethod::Mtls) {
            if let Some(consumer) = cert.and_then(|c| security.certs.lookup(c)) {
                return Ok((plain(consumer, AuthMethod::Mtls), Found::Cert));
            }
        }
        if let Some(value) = parts.headers.get(AUTHORIZATION) {
            let value = value
                .to_str()
                .map_err(|_| Denial::invalid_credentials("malformed Authorization header"))?;
            let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
            let rest = rest.trim();
            if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
                return self
                    .bearer(security, rest)
                    .await
                    .map(|identity| (identity, Found::Authorization));
            }
            if scheme.eq_ignore_ascii_case("basic") && self.has(AuthMethod::Basic) {
                let consumer = security
                    .basic
                    .verify(&security.basic_registry, rest)
                    .await?;
                return Ok((plain(consumer, AuthMethod::Basic), Found::Authorization));
            }
            // Another scheme: fall through to the key header and query.
        }
        if self.has(AuthMethod::Key) {
            if let Some(value) = parts.headers.get(&self.key_header) {
                let key = value
                    .to_str()
                    .map_err(|_| Denial::invalid_credentials("the API key is not valid"))?;
                let consumer = security.keys.lookup(key, now_unix())?;
                return Ok((plain(consumer, AuthMethod::Key), Found::KeyHeader));
            }
            if let Some(param) = &self.key_query_param {
                if let Some(key) = query_param(&parts.uri, param) {
                    let consumer = security.keys.lookup(&key, now_unix())?;
                    return Ok((plain(consumer, AuthMethod::Key), Found::Query));
                }
            }
        }
        if self.has(AuthMethod::Mtls) && cert.is_some() {
            // A certificate the client CA vouches for, registered to no consumer.
            return Err(Denial::invalid_credentials(
                "the client certificate belongs to no consumer",
            ));
        }
        Err(Denial::missing_credentials(
            "this API needs credentials and the request carries none",
        ))
    }

    async fn bearer(&self, security: &Security, token: &str) -> Result<Identity, Denial> {
        let jwt_shaped = looks_like_jwt(token);
        if jwt_shaped && self.has(AuthMethod::Jwt) {
            let verified = security
                .jwt
                .verify(token, &self.allowed_idps)
                .await
                .map_err(|e| e.into_denial())?;
            return token_identity(security, verified, AuthMethod::Jwt);
        }
        if self.has(AuthMethod::Key) && !jwt_shaped {
            match security.keys.lookup(token, now_unix()) {
                Ok(consumer) => return Ok(plain(consumer, AuthMethod::Key)),
                Err(denial) if !self.has(AuthMethod::Introspection) => return Err(denial),
                Err(_) => {}
            }
        }
        if self.has(AuthMethod::Introspection) {
            let verified = security
                .introspection
                .verify(token, &self.allowed_idps)
                .await
                .map_err(|e| e.into_denial())?;
            return token_identity(security, verified, AuthMethod::Introspection);
        }
        Err(Denial::invalid_credentials("the bearer token is not valid"))
    }
}

fn plain(consumer: Arc<ConsumerInfo>, method: AuthMethod) -> Identity {
    Identity {
        consumer,
        method,
        claims: None,
        scopes: None,
    }
}

fn token_identity(
    security: &Security,
    token: VerifiedToken,
    method: AuthMethod,
) -> Result<Identity, Denial> {
    let Some(name) = token.consumer.as_deref().filter(|n| !n.is_empty()) else {
        return Err(Denial::invalid_credentials(
            "the token does not name a consumer",
        ));
    };
    let consumer = security
        .consumers
        .get(name)
        .cloned()
        .unwrap_or_else(|| Arc::new(ConsumerInfo::unregistered(name)));
    Ok(Identity {
        consumer,
        method,
        claims: Some(Arc::new(token.claims)),
        scopes: Some(token.scopes.into()),
    })
}

/// Three base64url segments separated by dots.
fn looks_like_jwt(token: &str) -> bool {
    let mut segments = 0;
    for segment in token.split('.') {
        segments += 1;
        if segment.is_empty()
            || !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        {
            return false;
        }
    }
    segments == 3
}

fn now_unix() -> i64 {
    crate::counters::unix_seconds(std::time::SystemTime::now())
}

fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    query_pairs(uri.query()?)
        .find_map(|(_, key, value)| (key == name).then(|| percent_decoded(value)))
}

/// The pairs of a query: where each is, its name and its value. Split with
/// `memchr` once per pair: `str` patterns cost ~170 instructions a call,
/// and a key in the query was split six times a request (~1,000 in all).
fn query_pairs(query: &str) -> impl Iterator<Item = (std::ops::Range<usize>, &str, &str)> {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start > query.len() {
            return None;
        }
        let end =
            memchr::memchr(b'&', &query.as_bytes()[start..]).map_or(query.len(), |i| start + i);
        // `&` and `=` are ASCII: slicing there keeps whole characters.
        let pair = &query[start..end];
        let (key, value) = match memchr::memchr(b'=', pair.as_bytes()) {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, ""),
        };
        let range = start..end;
        start = end + 1;
        Some((range, key, value))
    })
}

/// `text` percent-decoded. Most keys and names have no escape, and decoding
/// goes byte by byte: looking for a `%` first saved ~1,000 instructions a
/// request with its key in the query.
fn percent_decoded(text: &str) -> std::borrow::Cow<'_, str> {
    if memchr::memchr(b'%', text.as_bytes()).is_some() {
        percent_encoding::percent_decode_str(text).decode_utf8_lossy()
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

impl Authenticator {
    /// Removes the credential that decided and every other place this policy
    /// reads one from: a client that sends its key twice (header and query,
    /// as some SDKs do) must not have the second copy forwarded.
    fn strip(&self, parts: &mut Parts, found: Found) {
        let bearer = self.has(AuthMethod::Key)
            || self.has(AuthMethod::Jwt)
            || self.has(AuthMethod::Introspection);
        let ours = |value: &HeaderValue| {
            let value = value.as_bytes();
            let scheme = value.split(|&b| b == b' ').next().unwrap_or(value);
            (bearer && scheme.eq_ignore_ascii_case(b"bearer"))
                || (self.has(AuthMethod::Basic) && scheme.eq_ignore_ascii_case(b"basic"))
        };
        if matches!(found, Found::Authorization)
            || parts.headers.get_all(AUTHORIZATION).iter().any(ours)
        {
            parts.headers.remove(AUTHORIZATION);
        }
        if self.has(AuthMethod::Key) {
            parts.headers.remove(&self.key_header);
            if let Some(name) = &self.key_query_param {
                if let Some(uri) = without_query_param(&parts.uri, name) {
                    parts.uri = uri;
                }
            }
        }
    }
}

/// Whether `key`, a query pair's name, names the parameter `name`, also
/// when percent-encoded or differently cased (`api%5Fkey`, `API_KEY`):
/// upstream frameworks decode names, and some match them case-insensitively.
fn same_param(key: &str, name: &str) -> bool {
    key == name || percent_decoded(key).eq_ignore_ascii_case(name)
}

/// The URI without every pair of its query that is the parameter `name` (see [`same_param`]).
/// `None` when there is none to remove, so the common case builds nothing.
fn without_query_param(uri: &Uri, name: &str) -> Option<Uri> {
    let query = uri.query()?;
    if !query_pairs(query).any(|(_, key, _)| same_param(key, name)) {
        return None;
    }
    let mut path_and_query = String::with_capacity(uri.path().len() + 1 + query.len());
    path_and_query.push_str(uri.path());
    let mut separator = '?';
    for (range, key, _) in query_pairs(query) {
        if !same_param(key, name) {
            path_and_query.push(separator);
            path_and_query.push_str(&query[range]);
            separator = '&';
        }
    }
    // The string's own buffer becomes the URI's: parsing it as `&str`
    // copied it once more.
    let path_and_query = PathAndQuery::from_maybe_shared(Bytes::from(path_and_query)).ok()?;
    if uri.scheme().is_none() && uri.authority().is_none() {
        // An origin-form target, as HTTP/1.1 clients send: nothing else to keep.
        return Some(Uri::from(path_and_query));
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    Some(Uri::from_parts(parts).unwrap_or_else(|_| uri.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_found_and_removed() {
        let uri: Uri = "/orders?a=1&api_key=tg_x%2Dy&b=2".parse().unwrap();
        assert_eq!(query_param(&uri, "api_key").as_deref(), Some("tg_x-y"));
        let plain: Uri = "/orders?api_key=tg_plain+key".parse().unwrap();
        assert_eq!(
            query_param(&plain, "api_key").as_deref(),
            Some("tg_plain+key")
        );
        assert_eq!(query_param(&plain, "api").as_deref(), None);
        assert_eq!(
            without_query_param(&uri, "api_key").unwrap(),
            "/orders?a=1&b=2"
        );
        assert!(without_query_param(&uri, "token").is_none());
        let copies: Uri = "/o?api%5Fkey=1&API_KEY=2&api_key=3&api_keys=4"
            .parse()
            .unwrap();
        assert_eq!(
            without_query_param(&copies, "api_key").unwrap(),
            "/o?api_keys=4"
        );
        let only: Uri = "/orders?api_key=k".parse().unwrap();
        assert_eq!(without_query_param(&only, "api_key").unwrap(), "/orders");
        for (query, kept) in [
            ("api_key=1&b=2", "/o?b=2"),
            ("a=1&api_key=2", "/o?a=1"),
            ("a=1&api_key=2&api_key=3&b=4&c", "/o?a=1&b=4&c"),
            ("api_key=1&API_KEY=2", "/o"),
            ("api_key", "/o"),
            ("&api_key=1&", "/o?&"),
        ] {
            let uri: Uri = format!("http://h:1/o?{query}").parse().unwrap();
            let without = without_query_param(&uri, "api_key").unwrap();
            assert_eq!(without.path_and_query().unwrap(), kept, "{query}");
            assert_eq!(without.authority().unwrap(), "h:1", "{query}");
        }
        let empty: Uri = "/o?".parse().unwrap();
        assert!(without_query_param(&empty, "api_key").is_none());
        assert_eq!(query_param(&empty, "api_key"), None);
        let valueless: Uri = "/o?x&api_key".parse().unwrap();
        assert_eq!(query_param(&valueless, "api_key").as_deref(), Some(""));
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(!looks_like_jwt("tg_abc"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a..c"));
    }
}
