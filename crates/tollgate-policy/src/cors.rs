//! Cross-origin resource sharing: answering preflights and marking actual
//! responses.
//!
//! The gateway owns CORS for an API that declares the policy: a preflight is
//! answered here (never forwarded), and on actual responses the upstream's
//! `Access-Control-Allow-Origin`, `-Allow-Credentials` and `-Expose-Headers`
//! are replaced by the policy's, or removed for an origin it does not list.
//!
//! An origin is only ever echoed back when it is listed; with `*` (which config
//! validation never combines with credentials) the answer is a literal `*` and
//! never carries `Access-Control-Allow-Credentials`.

use std::borrow::Cow;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tollgate_config::policy::CorsPolicy;

use crate::denial::Denial;

/// Request headers a browser may list in a preflight that every policy
/// accepts: the CORS-safelisted ones, which a browser only preflights when
/// their value is unusual (`Content-Type: application/json`).
const SAFELISTED_HEADERS: [&str; 4] = [
    "accept",
    "accept-language",
    "content-language",
    "content-type",
];

const PREFLIGHT_VARY: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);
const ANY_ORIGIN: HeaderValue = HeaderValue::from_static("*");
const TRUE: HeaderValue = HeaderValue::from_static("true");
const VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");

/// Longest method or header name quoted back in a denial message.
const MAX_QUOTED: usize = 64;

/// A compiled [`CorsPolicy`]; every answer header value is built here, once.
#[derive(Clone, Debug)]
pub struct Cors {
    any_origin: bool,
    /// Listed origins, lower-case, default ports dropped.
    origins: Vec<Box<str>>,
    methods: Vec<Method>,
    /// Configured request headers, lower-case.
    headers: Vec<HeaderName>,
    /// Only when origins are listed (never with `*`).
    credentials: bool,
    allow_methods: HeaderValue,
    /// The configured headers and the safelisted ones.
    allow_headers: HeaderValue,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
}

impl Cors {
    pub fn compile(p: &CorsPolicy) -> Cors {
        let any_origin = p.origins.iter().any(|o| o == "*");
        let origins = if any_origin {
            Vec::new()
        } else {
            p.origins.iter().map(|o| normalize_origin(o)).collect()
        };
        let methods: Vec<Method> = p
            .methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
            .collect();
        let headers: Vec<HeaderName> = p
            .headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();

        let mut allowed: Vec<&str> = headers.iter().map(HeaderName::as_str).collect();
        for safe in SAFELISTED_HEADERS {
            if !allowed.contains(&safe) {
                allowed.push(safe);
            }
        }
        let expose: Vec<&str> = p
            .expose_headers
            .iter()
            .map(String::as_str)
            .filter(|h| HeaderName::from_bytes(h.as_bytes()).is_ok())
            .collect();

        Cors {
            any_origin,
            origins,
            allow_methods: list_value(methods.iter().map(Method::as_str)),
            methods,
            allow_headers: list_value(allowed.iter().copied()),
            headers,
            credentials: p.credentials && !any_origin,
            expose_headers: (!expose.is_empty()).then(|| list_value(expose.iter().copied())),
            max_age: p.max_age.map(|d| HeaderValue::from(d.get().as_secs())),
        }
    }

    /// An `OPTIONS` request carrying `Origin` and `Access-Control-Request-Method`.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(ORIGIN)
            && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The headers of a `204` answer to a preflight, or `forbidden` (403)
    /// naming what was refused: the origin, the method or a request header.
    pub fn preflight(&self, headers: &HeaderMap) -> Result<HeaderMap, Denial> {
        let Some(origin) = headers.get(ORIGIN).filter(|o| self.origin_allowed(o)) else {
            return Err(Denial::forbidden(
                "CORS preflight refused: origin is not allowed",
            ));
        };

        let method = headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        match method {
            Some(method) if self.methods.contains(&method) => {}
            Some(method) => {
                return Err(Denial::forbidden(format!(
                    "CORS preflight refused: method `{}` is not allowed",
                    quoted(method.as_str())
                )))
            }
            None => {
                return Err(Denial::forbidden(
                    "CORS preflight refused: Access-Control-Request-Method is not a method",
                ))
            }
        }

        for value in headers.get_all(ACCESS_CONTROL_REQUEST_HEADERS) {
            let Ok(list) = value.to_str() else {
                return Err(Denial::forbidden(
                    "CORS preflight refused: Access-Control-Request-Headers is not readable",
                ));
            };
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if !self.header_allowed(name) {
                    return Err(Denial::forbidden(format!(
                        "CORS preflight refused: request header `{}` is not allowed",
                        quoted(name)
                    )));
                }
            }
        }

        let mut answer = HeaderMap::with_capacity(8);
        answer.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin));
        answer.insert(ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
        answer.insert(ACCESS_CONTROL_ALLOW_HEADERS, self.allow_headers.clone());
        if let Some(max_age) = &self.max_age {
            answer.insert(ACCESS_CONTROL_MAX_AGE, max_age.clone());
        }
        if self.credentials {
            answer.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
        answer.insert(VARY, PREFLIGHT_VARY);
        Ok(answer)
    }

    /// Marks the response to an actual (non-preflight) request. A listed
    /// origin gets `Access-Control-Allow-Origin`, `-Allow-Credentials` and
    /// `-Expose-Headers`; any other request gets none of them (an upstream's
    /// are removed). `Vary: Origin` is appended unless origins are `*`.
    pub fn apply(&self, request_headers: &HeaderMap, response_headers: &mut HeaderMap) {
        self.apply_origin(request_headers.get(ORIGIN), response_headers);
    }

    /// [`Self::apply`] given only the request's `Origin` header.
    pub fn apply_origin(&self, origin: Option<&HeaderValue>, response_headers: &mut HeaderMap) {
        if !self.any_origin && !varies_by_origin(response_headers) {
            response_headers.append(VARY, VARY_ORIGIN);
        }
        let Some(origin) = origin.filter(|o| self.origin_allowed(o)) else {
            response_headers.remove(ACCESS_CONTROL_ALLOW_ORIGIN);
            response_headers.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
            response_headers.remove(ACCESS_CONTROL_EXPOSE_HEADERS);
            return;
        };
        response_headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin));
        if self.credentials {
            response_headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        } else {
            response_headers.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
        }
        match &self.expose_headers {
            Some(expose) => {
                response_headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
            }
            None => {
                response_headers.remove(ACCESS_CONTROL_EXPOSE_HEADERS);
            }
        }
    }

    fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        self.any_origin
            || self
                .origins
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
    }

    /// Call only for an allowed origin.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin {
            ANY_ORIGIN
        } else {
            origin.clone()
        }
    }

    fn header_allowed(&self, name: &str) -> bool {
        SAFELISTED_HEADERS
            .iter()
            .any(|s| s.eq_ignore_ascii_case(name))
            || self
                .headers
                .iter()
                .any(|h| h.as_str().eq_ignore_ascii_case(name))
    }
}

/// Lower-case, without the scheme's default port: the form browsers send.
fn normalize_origin(origin: &str) -> Box<str> {
    let origin = origin.to_ascii_lowercase();
    let trimmed = if origin.starts_with("https://") {
        origin.strip_suffix(":443")
    } else if origin.starts_with("http://") {
        origin.strip_suffix(":80")
    } else {
        None
    };
    trimmed.unwrap_or(&origin).into()
}

/// `a, b, c` as one header value; entries that cannot be in a value are dropped.
fn list_value<'a>(items: impl Iterator<Item = &'a str>) -> HeaderValue {
    let joined = items
        .filter(|i| HeaderValue::from_str(i).is_ok())
        .collect::<Vec<_>>()
        .join(", ");
    HeaderValue::from_str(&joined).unwrap_or(HeaderValue::from_static(""))
}

/// Whether a `Vary` value already lists `Origin` (or `*`).
fn varies_by_origin(headers: &HeaderMap) -> bool {
    headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.eq_ignore_ascii_case("origin"))
        })
    })
}

/// A client-supplied name, cut short for a message.
fn quoted(name: &str) -> Cow<'_, str> {
    match name.char_indices().nth(MAX_QUOTED) {
        Some((end, _)) => Cow::Owned(format!("{}…", &name[..end])),
        None => Cow::Borrowed(name),
    }
}

#[cfg(test)]
mod tests {
    use tollgate_config::Duration;

    use super::*;

    fn policy(origins: &[&str]) -> CorsPolicy {
        CorsPolicy {
            origins: origins.iter().map(|s| s.to_string()).collect(),
            methods: ["GET", "POST", "PUT"].map(String::from).to_vec(),
            headers: ["Authorization", "X-Request-Id"].map(String::from).to_vec(),
            expose_headers: ["X-RateLimit-Remaining"].map(String::from).to_vec(),
            credentials: false,
            max_age: Some(Duration::from_secs(600)),
        }
    }

    fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    fn get(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
        headers.get(name).map(|v| v.to_str().unwrap())
    }

    const APP: &str = "https://app.example.com";

    #[test]
    fn recognises_preflights() {
        let full = request(&[("origin", APP), ("access-control-request-method", "PUT")]);
        assert!(Cors::is_preflight(&Method::OPTIONS, &full));
        assert!(!Cors::is_preflight(&Method::GET, &full));
        let no_acrm = request(&[("origin", APP)]);
        assert!(!Cors::is_preflight(&Method::OPTIONS, &no_acrm));
        let no_origin = request(&[("access-control-request-method", "PUT")]);
        assert!(!Cors::is_preflight(&Method::OPTIONS, &no_origin));
    }

    #[test]
    fn allowed_preflight_answers_every_header() {
        let mut p = policy(&[APP, "https://other.example.com"]);
        p.credentials = true;
        let cors = Cors::compile(&p);
        let answer = cors
            .preflight(&request(&[
                ("origin", APP),
                ("access-control-request-method", "PUT"),
                (
                    "access-control-request-headers",
                    "authorization,Content-Type, x-request-id",
                ),
            ]))
            .unwrap();
        assert_eq!(get(&answer, ACCESS_CONTROL_ALLOW_ORIGIN), Some(APP));
        assert_eq!(
            get(&answer, ACCESS_CONTROL_ALLOW_METHODS),
            Some("GET, POST, PUT")
        );
        assert_eq!(
            get(&answer, ACCESS_CONTROL_ALLOW_HEADERS),
            Some("authorization, x-request-id, accept, accept-language, content-language, content-type")
        );
        assert_eq!(get(&answer, ACCESS_CONTROL_MAX_AGE), Some("600"));
        assert_eq!(get(&answer, ACCESS_CONTROL_ALLOW_CREDENTIALS), Some("true"));
        assert_eq!(
            get(&answer, VARY),
            Some("Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
        );
        assert!(!answer.contains_key(ACCESS_CONTROL_EXPOSE_HEADERS));
    }

    #[test]
    fn preflight_without_credentials_or_max_age_omits_them() {
        let mut p = policy(&[APP]);
        p.max_age = None;
        let cors = Cors::compile(&p);
        let answer = cors
            .preflight(&request(&[
                ("origin", APP),
                ("access-control-request-method", "GET"),
            ]))
            .unwrap();
        assert!(!answer.contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));
        assert!(!answer.contains_key(ACCESS_CONTROL_MAX_AGE));
    }

    #[test]
    fn origins_compare_case_insensitively_and_without_default_port() {
        let cors = Cors::compile(&policy(&["https://App.Example.com:443"]));
        let answer = cors
            .preflight(&request(&[
                ("origin", APP),
                ("access-control-request-method", "GET"),
            ]))
            .unwrap();
        // The request's own origin is echoed.
        assert_eq!(get(&answer, ACCESS_CONTROL_ALLOW_ORIGIN), Some(APP));
    }

    #[test]
    fn unlisted_origin_is_forbidden_and_not_reflected() {
        let cors = Cors::compile(&policy(&[APP]));
        for origin in [
            "https://evil.example",
            "null",
            "https://app.example.com.evil",
        ] {
            let denial = cors
                .preflight(&request(&[
                    ("origin", origin),
                    ("access-control-request-method", "GET"),
                ]))
                .unwrap_err();
            assert_eq!(denial.status, http::StatusCode::FORBIDDEN);
            assert_eq!(denial.code, "forbidden");
            assert!(denial.message.contains("origin"), "{}", denial.message);
            assert!(denial.headers.is_empty(), "no CORS header on a refusal");
        }
    }

    #[test]
    fn unlisted_method_is_forbidden() {
        let cors = Cors::compile(&policy(&[APP]));
        let denial = cors
            .preflight(&request(&[
                ("origin", APP),
                ("access-control-request-method", "DELETE"),
            ]))
            .unwrap_err();
        assert_eq!(denial.status, http::StatusCode::FORBIDDEN);
        assert!(
            denial.message.contains("method `DELETE`"),
            "{}",
            denial.message
        );
        assert!(denial.headers.is_empty());

        // Methods are case-sensitive.
        let denial = cors
            .preflight(&request(&[
                ("origin", APP),
                ("access-control-request-method", "put"),
            ]))
            .unwrap_err();
        assert!(denial.message.contains("method"));
    }

    #[test]
    fn unlisted_request_header_is_forbidden() {
        let cors = Cors::compile(&policy(&[APP]));
        let denial = cors
            .preflight(&request(&[
                ("origin", APP),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "authorization"),
                ("access-control-request-headers", "x-secret, content-type"),
            ]))
            .unwrap_err();
        assert_eq!(denial.status, http::StatusCode::FORBIDDEN);
        assert!(
            denial.message.contains("header `x-secret`"),
            "{}",
            denial.message
        );
    }

    #[test]
    fn safelisted_headers_are_always_allowed() {
        let mut p = policy(&[APP]);
        p.headers.clear();
        let cors = Cors::compile(&p);
        let answer = cors
            .preflight(&request(&[
                ("origin", APP),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type,accept"),
            ]))
            .unwrap();
        assert_eq!(
            get(&answer, ACCESS_CONTROL_ALLOW_HEADERS),
            Some("accept, accept-language, content-language, content-type")
        );
    }

    #[test]
    fn any_origin_answers_star() {
        let cors = Cors::compile(&policy(&["*"]));
        let answer = cors
            .preflight(&request(&[
                ("origin", "https://anyone.example"),
                ("access-control-request-method", "GET"),
            ]))
            .unwrap();
        assert_eq!(get(&answer, ACCESS_CONTROL_ALLOW_ORIGIN), Some("*"));
        assert!(!answer.contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));

        let mut response = HeaderMap::new();
        cors.apply(
            &request(&[("origin", "https://anyone.example")]),
            &mut response,
        );
        assert_eq!(get(&response, ACCESS_CONTROL_ALLOW_ORIGIN), Some("*"));
        assert!(!response.contains_key(VARY), "`*` does not vary by origin");
    }

    #[test]
    fn any_origin_never_reflects_with_credentials() {
        // Config validation rejects this combination; compile stays safe anyway.
        let mut p = policy(&["*"]);
        p.credentials = true;
        let cors = Cors::compile(&p);
        let answer = cors
            .preflight(&request(&[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "GET"),
            ]))
            .unwrap();
        assert_eq!(get(&answer, ACCESS_CONTROL_ALLOW_ORIGIN), Some("*"));
        assert!(!answer.contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));
    }

    #[test]
    fn apply_marks_a_listed_origin() {
        let mut p = policy(&[APP]);
        p.credentials = true;
        let cors = Cors::compile(&p);
        let mut response = HeaderMap::new();
        cors.apply(&request(&[("origin", APP)]), &mut response);
        assert_eq!(get(&response, ACCESS_CONTROL_ALLOW_ORIGIN), Some(APP));
        assert_eq!(
            get(&response, ACCESS_CONTROL_ALLOW_CREDENTIALS),
            Some("true")
        );
        assert_eq!(
            get(&response, ACCESS_CONTROL_EXPOSE_HEADERS),
            Some("X-RateLimit-Remaining")
        );
        assert_eq!(get(&response, VARY), Some("Origin"));
        // Preflight-only headers do not appear on actual responses.
        assert!(!response.contains_key(ACCESS_CONTROL_ALLOW_METHODS));
    }

    #[test]
    fn apply_gives_an_unlisted_origin_nothing() {
        let mut p = policy(&[APP]);
        p.credentials = true;
        let cors = Cors::compile(&p);
        let mut response = HeaderMap::new();
        // An upstream that reflects origins itself is overruled.
        response.insert(
            ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        response.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        cors.apply(
            &request(&[("origin", "https://evil.example")]),
            &mut response,
        );
        assert!(!response.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        assert!(!response.contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));
        assert!(!response.contains_key(ACCESS_CONTROL_EXPOSE_HEADERS));
        assert_eq!(get(&response, VARY), Some("Origin"));

        // No Origin at all: still Vary, so a cache keeps the two apart.
        let mut response = HeaderMap::new();
        cors.apply(&HeaderMap::new(), &mut response);
        assert_eq!(response.len(), 1);
        assert_eq!(get(&response, VARY), Some("Origin"));
    }

    #[test]
    fn apply_appends_to_an_upstream_vary() {
        let cors = Cors::compile(&policy(&[APP]));
        let mut response = HeaderMap::new();
        response.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        cors.apply(&request(&[("origin", APP)]), &mut response);
        let vary: Vec<_> = response.get_all(VARY).iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "Origin"]);

        // Already listed (any case, inside a list): not repeated.
        let mut response = HeaderMap::new();
        response.insert(VARY, HeaderValue::from_static("accept-encoding, origin"));
        cors.apply(&request(&[("origin", APP)]), &mut response);
        assert_eq!(response.get_all(VARY).iter().count(), 1);
    }

    #[test]
    fn long_names_are_cut_in_messages() {
        let name = "x".repeat(500);
        assert_eq!(quoted(&name).chars().count(), MAX_QUOTED + 1);
        assert_eq!(quoted("x-short"), "x-short");
    }
}
