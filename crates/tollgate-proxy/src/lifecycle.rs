//! An API's lifecycle on the data plane: what a `deprecated` API's answers
//! carry and what a `retired` API answers instead of its upstream.
//!
//! Everything is computed when the snapshot is compiled: a request only
//! clones ready header values (and, for a retired API, a ready error). A
//! `draft` API never gets here: it is left out of the router.
//!
//! Headers, on every answer for a deprecated API (its upstream's and the
//! gateway's own errors):
//! - `Deprecation: @<unix seconds>` (RFC 9745): `deprecated_at`, or the time
//!   this node first compiled the API as deprecated ([`DeprecationRegistry`]);
//! - `Sunset: <IMF-fixdate>` (RFC 8594) when `sunset` is set;
//! - `Link: <PATH>; rel="successor-version"` when `successor` is set, PATH
//!   being the successor's first path up to its first `{param}`
//!   ([`successor_path`]).
//!
//! A retired API is answered `410 api_retired` with the `Sunset` and `Link`
//! headers and the successor in the error object.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use time::macros::format_description;
use time::UtcOffset;
use tollgate_config::{Api, Config, Lifecycle, PathPattern, Segment, Timestamp};

use crate::error::GatewayError;

/// RFC 9745's and RFC 8594's headers, which `http::header` does not name.
pub static DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
pub static SUNSET: HeaderName = HeaderName::from_static("sunset");

/// What a path needs escaped to sit between `<` and `>` in a `Link` header.
const LINK_TARGET: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'<').add(b'>');

/// When this node first compiled each deprecated API as deprecated, by API
/// name, for the `Deprecation` header of APIs without `deprecated_at`.
///
/// It outlives snapshots, so a reload does not move the date; it is per node
/// and in memory, so a restart (or another node) starts a new one: set
/// `deprecated_at` when the date matters.
#[derive(Default)]
pub struct DeprecationRegistry {
    first_seen: Mutex<HashMap<String, i64>>,
}

impl DeprecationRegistry {
    /// The unix second at which `api` was first seen deprecated, now if never before.
    pub fn since(&self, api: &str) -> i64 {
        let mut first_seen = self.first_seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&at) = first_seen.get(api) {
            return at;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        first_seen.insert(api.to_string(), now);
        now
    }

    /// Forgets the APIs no longer deprecated (or gone): deprecated again later,
    /// they get a new date.
    pub fn retain_deprecated(&self, config: &Config) {
        let mut first_seen = self.first_seen.lock().unwrap_or_else(|e| e.into_inner());
        first_seen.retain(|name, _| {
            config
                .apis
                .iter()
                .any(|api| api.name == *name && api.lifecycle == Lifecycle::Deprecated)
        });
    }
}

/// An API's lifecycle, compiled.
#[derive(Debug, Default)]
pub struct ApiLifecycle {
    /// Added to every answer for the API; empty unless it is deprecated.
    pub headers: Box<[(HeaderName, HeaderValue)]>,
    /// The answer to every request for a retired API.
    pub retired: Option<GatewayError>,
}

impl ApiLifecycle {
    /// Compiles `api`'s lifecycle. Drafts compile to nothing: they are not routed.
    pub fn compile(api: &Api, config: &Config, deprecations: &DeprecationRegistry) -> Self {
        let successor = api.successor.as_deref().and_then(|name| {
            let other = config.apis.iter().find(|other| other.name == name)?;
            let path = successor_path(other.matcher.paths.first()?);
            let link =
                HeaderValue::from_str(&format!("<{path}>; rel=\"successor-version\"")).ok()?;
            Some((name, path, link))
        });
        let sunset = api
            .sunset
            .and_then(|at| HeaderValue::from_str(&imf_fixdate(at)).ok());
        let mut headers = Vec::new();
        match api.lifecycle {
            Lifecycle::Draft | Lifecycle::Published => {}
            Lifecycle::Deprecated => {
                let since = match api.deprecated_at {
                    Some(at) => at.unix_seconds(),
                    None => deprecations.since(&api.name),
                };
                headers.push((DEPRECATION.clone(), since_value(since)));
                if let Some(sunset) = sunset {
                    headers.push((SUNSET.clone(), sunset));
                }
                if let Some((_, _, link)) = &successor {
                    headers.push((http::header::LINK, link.clone()));
                }
            }
            Lifecycle::Retired => {
                let mut message = format!("API {} is retired", api.name);
                let mut error = GatewayError::api_retired("");
                if let Some((name, path, link)) = successor {
                    message.push_str(&format!("; its successor is {name} at {path}"));
                    error = error.with_header(http::header::LINK, link);
                    error.details = Some(serde_json::json!({
                        "successor": { "api": name, "link": path }
                    }));
                }
                if let Some(sunset) = sunset {
                    error = error.with_header(SUNSET.clone(), sunset);
                }
                error.message = message.into();
                return ApiLifecycle {
                    headers: Box::default(),
                    retired: Some(error),
                };
            }
        }
        ApiLifecycle {
            headers: headers.into(),
            retired: None,
        }
    }
}

/// `@1767225600`: an RFC 9745 structured-field date.
fn since_value(unix_seconds: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("@{unix_seconds}")).unwrap_or(HeaderValue::from_static("@0"))
}

/// `Sat, 01 May 2027 00:00:00 GMT` (RFC 9110 IMF-fixdate).
pub fn imf_fixdate(at: Timestamp) -> String {
    let format = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    at.get()
        .to_offset(UtcOffset::UTC)
        .format(format)
        .unwrap_or_default()
}

/// The path a `Link` names for an API whose first path is `pattern`: an exact
/// path without its `=`, a prefix up to its first `{param}` (`/` if that is
/// the first segment), percent-encoded where a `Link` target needs it.
pub fn successor_path(pattern: &str) -> String {
    let path = match PathPattern::parse(pattern) {
        Ok(PathPattern::Exact(path)) => path,
        Ok(PathPattern::Prefix(segments)) => {
            let mut path = String::new();
            for segment in &segments {
                match segment {
                    Segment::Literal(literal) => {
                        path.push('/');
                        path.push_str(literal);
                    }
                    Segment::Param(_) => break,
                }
            }
            if path.is_empty() {
                path.push('/');
            }
            path
        }
        // Validation refuses a bad pattern; the raw text is the best guess.
        Err(_) => pattern.trim_start_matches('=').to_string(),
    };
    utf8_percent_encode(&path, LINK_TARGET).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor_paths_stop_at_the_first_parameter() {
        assert_eq!(successor_path("/v2/orders"), "/v2/orders");
        assert_eq!(successor_path("/v2/orders/"), "/v2/orders");
        assert_eq!(successor_path("=/v2/health"), "/v2/health");
        assert_eq!(successor_path("/v2/orders/{id}/items"), "/v2/orders");
        assert_eq!(successor_path("/{tenant}/orders"), "/");
        assert_eq!(successor_path("/"), "/");
        assert_eq!(successor_path("/v2/bestellüngen"), "/v2/bestell%C3%BCngen");
    }

    #[test]
    fn sunset_is_an_imf_fixdate_in_gmt() {
        let at: Timestamp = "2027-05-01".parse().unwrap();
        assert_eq!(imf_fixdate(at), "Sat, 01 May 2027 00:00:00 GMT");
        let at: Timestamp = "2027-05-01T02:30:05+02:00".parse().unwrap();
        assert_eq!(imf_fixdate(at), "Sat, 01 May 2027 00:30:05 GMT");
    }

    #[test]
    fn a_deprecation_date_survives_recompiles_until_the_api_is_no_longer_deprecated() {
        let registry = DeprecationRegistry::default();
        let first = registry.since("orders");
        assert_eq!(registry.since("orders"), first);
        let config = tollgate_config::from_yaml(
            "services: [{ name: s, upstream: { targets: [{ url: 'http://127.0.0.1:1' }] } }]\napis: [{ name: orders, service: s, match: { paths: [/] }, lifecycle: deprecated }]\n",
        )
        .unwrap();
        registry.retain_deprecated(&config);
        assert!(registry.first_seen.lock().unwrap().contains_key("orders"));
        registry.retain_deprecated(&tollgate_config::Config::default());
        assert!(registry.first_seen.lock().unwrap().is_empty());
    }

    #[test]
    fn deprecated_and_retired_apis_compile_their_answers() {
        let config = tollgate_config::from_yaml(
            r#"
services: [{ name: s, upstream: { targets: [{ url: "http://127.0.0.1:1" }] } }]
apis:
  - name: v1
    service: s
    match: { paths: [/v1/orders] }
    lifecycle: deprecated
    deprecated_at: 2026-01-01T00:00:00Z
    sunset: 2027-05-01
    successor: v2
  - { name: v2, service: s, match: { paths: ["/v2/orders/{id}"] } }
  - { name: v0, service: s, match: { paths: [/v0] }, lifecycle: retired, successor: v2, sunset: 2026-01-01 }
"#,
        )
        .unwrap();
        let registry = DeprecationRegistry::default();
        let v1 = ApiLifecycle::compile(&config.apis[0], &config, &registry);
        let headers: Vec<(&str, &str)> = v1
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            headers,
            [
                ("deprecation", "@1767225600"),
                ("sunset", "Sat, 01 May 2027 00:00:00 GMT"),
                ("link", "</v2/orders>; rel=\"successor-version\""),
            ]
        );
        assert!(v1.retired.is_none());

        let v2 = ApiLifecycle::compile(&config.apis[1], &config, &registry);
        assert!(v2.headers.is_empty() && v2.retired.is_none());

        let v0 = ApiLifecycle::compile(&config.apis[2], &config, &registry);
        assert!(v0.headers.is_empty());
        let retired = v0.retired.unwrap();
        assert_eq!(retired.status, http::StatusCode::GONE);
        assert_eq!(retired.code, "api_retired");
        let body: serde_json::Value = serde_json::from_slice(&retired.body("rid")).unwrap();
        assert_eq!(body["error"]["successor"]["api"], "v2");
        assert_eq!(body["error"]["successor"]["link"], "/v2/orders");
        assert_eq!(body["error"]["request_id"], "rid");
        let names: Vec<&str> = retired
            .extra_headers
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names, ["link", "sunset"]);
    }
}
