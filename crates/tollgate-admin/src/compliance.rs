//! Compliance checks: what in a configuration goes against good policy —
//! APIs anyone may call, plain HTTP across the network, keys that never
//! expire, weak or literal secrets, idle consumers.
//!
//! [`check`] is pure (the configuration and a clock in, findings out): the
//! offline `tollgate audit FILE` and `GET /admin/v1/compliance` both run it.
//! Only the endpoint adds [`inactive_consumers`], which needs the access
//! records in the store.
//!
//! A finding names its resource and field, never a secret's value or length.
//!
//! Not checked, for want of data: a key's age (the configuration records no
//! creation date, only `expires`), deprecated APIs past their sunset (APIs
//! have no deprecation or sunset field), and admin tokens never rotated (the
//! store can find a token by its hash but not list them).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tollgate_config::{Config, Lifecycle, Secret};
use tollgate_store::{AccessQuery, Store, StoreError};

use crate::api::{AdminApi, ApiError};

/// Shortest HMAC secret accepted: HS256 needs a key at least as long as its
/// 256-bit output (RFC 7518 §3.2).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// How bad a finding is, from `low` to `critical`; ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Severity, String> {
        Severity::ALL
            .into_iter()
            .find(|severity| severity.as_str() == s)
            .ok_or_else(|| format!("unknown severity `{s}`: use low, medium, high or critical"))
    }
}

/// One thing that goes against good policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Which check found it, stable across releases: `api_without_auth`, …
    pub id: &'static str,
    pub severity: Severity,
    /// The resource, as `<kind>/<name>` with the YAML's kinds: `apis/orders-v1`.
    pub resource: String,
    pub message: String,
}

impl Finding {
    fn new(
        id: &'static str,
        severity: Severity,
        resource: String,
        message: impl Into<String>,
    ) -> Finding {
        Finding {
            id,
            severity,
            resource,
            message: message.into(),
        }
    }
}

/// Thresholds of the checks that read the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComplianceSettings {
    /// A consumer with no access record in this many days is reported.
    pub inactive_days: u32,
    /// A key issued (`created`) more than this many days ago is reported.
    pub max_key_age_days: u32,
    /// An admin token stored more than this many days ago is reported.
    pub max_token_age_days: u32,
}

impl Default for ComplianceSettings {
    fn default() -> Self {
        ComplianceSettings {
            inactive_days: 90,
            max_key_age_days: 365,
            max_token_age_days: 90,
        }
    }
}

/// How many findings there are of each severity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub critical: usize,
    pub high: usize,
    pub medium: usize,
    pub low: usize,
}

/// The findings, worst first, and their counts: the endpoint's answer and
/// `tollgate audit --format json`'s output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub counts: Counts,
}

impl Report {
    /// Sorts `findings` by severity (worst first), then resource, then check.
    pub fn new(mut findings: Vec<Finding>) -> Report {
        findings.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then_with(|| a.resource.cmp(&b.resource))
                .then_with(|| a.id.cmp(b.id))
                .then_with(|| a.message.cmp(&b.message))
        });
        let mut counts = Counts::default();
        for finding in &findings {
            *match finding.severity {
                Severity::Critical => &mut counts.critical,
                Severity::High => &mut counts.high,
                Severity::Medium => &mut counts.medium,
                Severity::Low => &mut counts.low,
            } += 1;
        }
        Report { findings, counts }
    }

    /// How many findings are at `severity` or worse.
    pub fn at_or_above(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity >= severity)
            .count()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }
}

/// [`check`] at the current time, as a report: what `tollgate audit` prints.
pub fn audit(config: &Config) -> Report {
    Report::new(check(config, OffsetDateTime::now_utc()))
}

/// Every check that needs only the configuration (and the time, for expiry).
pub fn check(config: &Config, now: OffsetDateTime) -> Vec<Finding> {
    check_with(config, now, &ComplianceSettings::default())
}

/// [`check`] with chosen thresholds.
pub fn check_with(
    config: &Config,
    now: OffsetDateTime,
    settings: &ComplianceSettings,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    check_apis(config, &mut findings);
    check_sunsets(config, now, &mut findings);
    check_upstreams(config, &mut findings);
    check_keys(config, now, settings, &mut findings);
    check_hmac_secrets(config, &mut findings);
    check_literal_secrets(config, &mut findings);
    findings
}

/// `api_without_auth`, `cors_wildcard_with_auth`,
/// `no_rate_limit_on_authenticated_api`, on each API's effective policies:
/// the API's over its service's over the top level, as the data plane applies them.
fn check_apis(config: &Config, out: &mut Vec<Finding>) {
    for api in &config.apis {
        let service_level = config
            .services
            .iter()
            .find(|service| service.name == api.service)
            .map_or_else(
                || config.policies.clone(),
                |service| service.policies.over(&config.policies),
            );
        let effective = api.policies.over(&service_level);
        let resource = format!("apis/{}", api.name);
        if effective.auth.is_none() {
            out.push(Finding::new(
                "api_without_auth",
                Severity::High,
                resource,
                "no auth policy on the API, its service or the top level: anyone can call it",
            ));
            continue;
        }
        if effective
            .cors
            .as_ref()
            .is_some_and(|cors| cors.origins.iter().any(|origin| origin == "*"))
        {
            out.push(Finding::new(
                "cors_wildcard_with_auth",
                Severity::Medium,
                resource.clone(),
                "an authenticated API allows CORS from any origin (`*`): list the origins that may call it",
            ));
        }
        if effective.rate_limit.as_ref().is_none_or(Vec::is_empty) {
            out.push(Finding::new(
                "no_rate_limit_on_authenticated_api",
                Severity::Low,
                resource,
                "an authenticated API without a rate_limit: one consumer's credential can send without bound",
            ));
        }
    }
}

/// `plain_http_upstream`: an `http://` target on anything but loopback.
fn check_upstreams(config: &Config, out: &mut Vec<Finding>) {
    for service in &config.services {
        for (t, target) in service.upstream.targets.iter().enumerate() {
            let Ok(uri) = target.url.parse::<http::Uri>() else {
                continue;
            };
            let plain = uri
                .scheme_str()
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http"));
            let Some(authority) = uri.authority().filter(|_| plain) else {
                continue;
            };
            if is_loopback(authority.host()) {
                continue;
            }
            // Host and port only: a URL's user-info may hold a password.
            let shown = match authority.port_u16() {
                Some(port) => format!("{}:{port}", authority.host()),
                None => authority.host().to_string(),
            };
            out.push(Finding::new(
                "plain_http_upstream",
                Severity::Medium,
                format!("services/{}", service.name),
                format!(
                    "upstream.targets[{t}] is plain HTTP to http://{shown}, off this host: \
                     requests and forwarded credentials cross the network unencrypted; use https://"
                ),
            ));
        }
    }
}

/// `localhost` and loopback addresses (`127.0.0.0/8`, `::1`, `::ffff:127.…`).
fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// `key_without_expiry` and `key_expired_still_configured`. Keys are named by
/// position: their values are secrets.
/// `deprecated_past_sunset`: a deprecated API still served after the
/// sunset it announced.
fn check_sunsets(config: &Config, now: OffsetDateTime, out: &mut Vec<Finding>) {
    for api in &config.apis {
        let Some(sunset) = api
            .sunset
            .filter(|_| api.lifecycle == Lifecycle::Deprecated)
        else {
            continue;
        };
        if sunset.get() <= now {
            out.push(Finding::new(
                "deprecated_past_sunset",
                Severity::Medium,
                format!("apis/{}", api.name),
                format!(
                    "deprecated with a sunset of {} and still served: retire it or announce a new sunset",
                    rfc3339(sunset.get())
                ),
            ));
        }
    }
}

fn check_keys(
    config: &Config,
    now: OffsetDateTime,
    settings: &ComplianceSettings,
    out: &mut Vec<Finding>,
) {
    let max_age = time::Duration::days(i64::from(settings.max_key_age_days));
    for consumer in &config.consumers {
        let resource = format!("consumers/{}", consumer.name);
        for (k, key) in consumer.keys.iter().enumerate() {
            if let Some(created) = key.created.filter(|created| now - *created > max_age) {
                out.push(Finding::new(
                    "key_too_old",
                    Severity::Medium,
                    resource.clone(),
                    format!(
                        "keys[{k}] was issued {} ({} days ago, more than {}): issue a new key and retire this one",
                        rfc3339(created),
                        (now - created).whole_days(),
                        settings.max_key_age_days
                    ),
                ));
            }
            match key.expires {
                None => out.push(Finding::new(
                    "key_without_expiry",
                    Severity::Medium,
                    resource.clone(),
                    format!("keys[{k}] never expires: set `expires` so a leaked key stops working"),
                )),
                Some(expires) if expires <= now => out.push(Finding::new(
                    "key_expired_still_configured",
                    Severity::Low,
                    resource.clone(),
                    format!(
                        "keys[{k}] expired at {}; remove it from the configuration",
                        rfc3339(expires)
                    ),
                )),
                Some(_) => {}
            }
        }
    }
}

/// `hs_secret_too_short`: an identity provider's HMAC secret under
/// [`MIN_HMAC_SECRET_BYTES`]. A secret that does not resolve is validation's
/// business, not this check's.
fn check_hmac_secrets(config: &Config, out: &mut Vec<Finding>) {
    for idp in &config.identity_providers {
        let Some(Ok(secret)) = idp.secret.as_ref().map(Secret::resolve) else {
            continue;
        };
        if secret.len() < MIN_HMAC_SECRET_BYTES {
            out.push(Finding::new(
                "hs_secret_too_short",
                Severity::High,
                format!("identity_providers/{}", idp.name),
                format!(
                    "`secret` is shorter than {MIN_HMAC_SECRET_BYTES} bytes: HS256 tokens signed \
                     with it can be forged by guessing it; use {MIN_HMAC_SECRET_BYTES} or more random bytes"
                ),
            ));
        }
    }
}

/// `literal_secret_in_config`: the fields [`tollgate_config::warnings`] names.
fn check_literal_secrets(config: &Config, out: &mut Vec<Finding>) {
    for warning in tollgate_config::warnings(config) {
        let (resource, field) = resource_at(config, &warning.path);
        out.push(Finding::new(
            "literal_secret_in_config",
            Severity::Low,
            resource,
            format!("{field}: {}", warning.message),
        ));
    }
}

/// `consumers[2].keys[0].value` as (`consumers/<name>`, `keys[0].value`); a
/// path that names no resource stays whole.
fn resource_at(config: &Config, path: &str) -> (String, String) {
    let (head, field) = path.split_once('.').unwrap_or((path, ""));
    let parsed = head
        .strip_suffix(']')
        .and_then(|head| head.split_once('['))
        .and_then(|(kind, index)| Some((kind, index.parse::<usize>().ok()?)));
    let name = parsed.and_then(|(kind, index)| match kind {
        "consumers" => config.consumers.get(index).map(|c| (kind, &c.name)),
        "identity_providers" => config
            .identity_providers
            .get(index)
            .map(|i| (kind, &i.name)),
        "services" => config.services.get(index).map(|s| (kind, &s.name)),
        "apis" => config.apis.get(index).map(|a| (kind, &a.name)),
        _ => None,
    });
    match name {
        Some((kind, name)) => (format!("{kind}/{name}"), field.to_string()),
        None => (path.to_string(), path.to_string()),
    }
}

/// `consumer_inactive`: each consumer not in `active` (the consumers with an
/// access record in the last `settings.inactive_days` days).
pub fn inactive_consumers(
    config: &Config,
    settings: &ComplianceSettings,
    active: &HashSet<String>,
) -> Vec<Finding> {
    config
        .consumers
        .iter()
        .filter(|consumer| !active.contains(&consumer.name))
        .map(|consumer| {
            Finding::new(
                "consumer_inactive",
                Severity::Low,
                format!("consumers/{}", consumer.name),
                format!(
                    "no access record in the last {} days: remove the consumer or its credentials if it is gone",
                    settings.inactive_days
                ),
            )
        })
        .collect()
}

/// `admin_token_not_rotated`: each admin token stored more than
/// `settings.max_token_age_days` ago (Unix seconds in `tokens`).
pub fn old_admin_tokens(
    tokens: &[tollgate_store::AdminToken],
    settings: &ComplianceSettings,
    now: OffsetDateTime,
) -> Vec<Finding> {
    let max_age = i64::from(settings.max_token_age_days) * 86_400;
    tokens
        .iter()
        .filter(|token| now.unix_timestamp() - token.created_at > max_age)
        .map(|token| {
            Finding::new(
                "admin_token_not_rotated",
                Severity::Medium,
                format!("tokens/{}", token.name),
                format!(
                    "admin token {} was stored {} days ago (more than {}): issue a new one and revoke this one (DELETE /admin/v1/tokens/{})",
                    token.id,
                    (now.unix_timestamp() - token.created_at) / 86_400,
                    settings.max_token_age_days,
                    token.id
                ),
            )
        })
        .collect()
}

/// The configured consumers with at least one access record at or after
/// `since`: one newest-first query of a single record per consumer. Blocks.
fn active_consumers(
    store: &Store,
    config: &Config,
    since: OffsetDateTime,
) -> Result<HashSet<String>, StoreError> {
    let from = i64::try_from(since.unix_timestamp_nanos() / 1000).unwrap_or(i64::MIN);
    let mut active = HashSet::new();
    for consumer in &config.consumers {
        let page = store.query_access_records(&AccessQuery {
            consumer: Some(consumer.name.clone()),
            from: Some(from),
            limit: 1,
            ..AccessQuery::default()
        })?;
        if !page.items.is_empty() {
            active.insert(consumer.name.clone());
        }
    }
    Ok(active)
}

/// A number of days, 1 to [`MAX_INACTIVE_DAYS`], for the parameter `key`.
fn days(key: &str, value: &str) -> Result<u32, ApiError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|days| (1..=MAX_INACTIVE_DAYS).contains(days))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{key} must be a number of days, 1 to {MAX_INACTIVE_DAYS}"
            ))
        })
}

/// Longest number of days a threshold takes: ten years.
const MAX_INACTIVE_DAYS: u32 = 3650;

/// `GET /admin/v1/compliance[?inactive_days=N]`: [`check`] on the live
/// configuration, plus [`inactive_consumers`] from the access records.
pub async fn handler(
    State(api): State<AdminApi>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Report>, ApiError> {
    let mut settings = ComplianceSettings::default();
    for (key, value) in &params {
        match key.as_str() {
            "inactive_days" => settings.inactive_days = days(key, value)?,
            "max_key_age_days" => settings.max_key_age_days = days(key, value)?,
            "max_token_age_days" => settings.max_token_age_days = days(key, value)?,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{other}`: use inactive_days, max_key_age_days, max_token_age_days"
                )))
            }
        }
    }
    let config = api.config();
    let now = OffsetDateTime::now_utc();
    let since = now - time::Duration::days(i64::from(settings.inactive_days));
    let store = api.store.clone();
    let live = config.clone();
    let (active, tokens) = tokio::task::spawn_blocking(move || {
        Ok::<_, StoreError>((
            active_consumers(&store, &live, since)?,
            store.list_admin_tokens()?,
        ))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let mut findings = check_with(&config, now, &settings);
    findings.extend(inactive_consumers(&config, &settings, &active));
    findings.extend(old_admin_tokens(&tokens, &settings, now));
    Ok(Json(Report::new(findings)))
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);

    fn config(yaml: &str) -> Config {
        tollgate_config::from_yaml(yaml).unwrap_or_else(|errors| panic!("{errors:?}"))
    }

    fn findings(yaml: &str) -> Vec<Finding> {
        Report::new(check(&config(yaml), NOW)).findings
    }

    /// (id, resource) of each finding.
    fn ids(findings: &[Finding]) -> Vec<(&'static str, &str)> {
        findings
            .iter()
            .map(|f| (f.id, f.resource.as_str()))
            .collect()
    }

    const SERVICE: &str =
        "services:\n  - { name: s, upstream: { targets: [{ url: 'http://127.0.0.1:9000' }] } }\n";
    const LIMITED_KEY_AUTH: &str =
        "{ auth: { methods: [key] }, rate_limit: [{ limit: 10, window: 1s }] }";

    #[test]
    fn old_keys_and_deprecated_apis_past_their_sunset_are_reported() {
        let yaml = format!(
            "{SERVICE}consumers:\n  - name: c\n    keys:\n      - {{ id: old, hash: 'sha256:{zero}', expires: '2027-01-01T00:00:00Z', created: '2025-01-01T00:00:00Z' }}\n      - {{ id: new, hash: 'sha256:{one}', expires: '2027-01-01T00:00:00Z', created: '2026-05-01T00:00:00Z' }}\n\
             apis:\n  - {{ name: gone, service: s, match: {{ paths: [/g] }}, lifecycle: deprecated, sunset: 2026-05-01, policies: {LIMITED_KEY_AUTH} }}\n\
             \x20 - {{ name: later, service: s, match: {{ paths: [/l] }}, lifecycle: deprecated, sunset: 2026-07-01, policies: {LIMITED_KEY_AUTH} }}\n",
            zero = "0".repeat(64),
            one = "1".repeat(64),
        );
        let found = findings(&yaml);
        let ids = ids(&found);
        assert!(ids.contains(&("key_too_old", "consumers/c")), "{ids:?}");
        assert_eq!(ids.iter().filter(|(id, _)| *id == "key_too_old").count(), 1);
        assert!(
            ids.contains(&("deprecated_past_sunset", "apis/gone")),
            "{ids:?}"
        );
        assert!(
            !ids.contains(&("deprecated_past_sunset", "apis/later")),
            "{ids:?}"
        );
        let strict = ComplianceSettings {
            max_key_age_days: 10,
            ..ComplianceSettings::default()
        };
        let strict = check_with(&config(&yaml), NOW, &strict);
        assert_eq!(strict.iter().filter(|f| f.id == "key_too_old").count(), 2);
    }

    #[test]
    fn an_api_without_effective_auth_is_high() {
        let found = findings(&format!(
            "{SERVICE}apis:\n  - {{ name: open, service: s, match: {{ paths: [/o] }} }}\n  - {{ name: closed, service: s, match: {{ paths: [/c] }}, policies: {LIMITED_KEY_AUTH} }}\n"
        ));
        assert_eq!(ids(&found), [("api_without_auth", "apis/open")]);
        assert_eq!(found[0].severity, Severity::High);
    }

    #[test]
    fn auth_is_inherited_from_the_service_or_the_top_level() {
        let by_service = findings(
            "services:\n  - { name: s, upstream: { targets: [{ url: 'http://localhost:9000' }] }, policies: { auth: { methods: [key] }, rate_limit: [{ limit: 1, window: 1s }] } }\napis:\n  - { name: a, service: s, match: { paths: [/] } }\n",
        );
        assert!(by_service.is_empty(), "{by_service:?}");
        let top_level = findings(&format!(
            "policies: {LIMITED_KEY_AUTH}\n{SERVICE}apis:\n  - {{ name: a, service: s, match: {{ paths: [/] }} }}\n"
        ));
        assert!(top_level.is_empty(), "{top_level:?}");
    }

    #[test]
    fn an_authenticated_api_without_a_rate_limit_is_low() {
        let found = findings(&format!(
            "{SERVICE}apis:\n  - {{ name: a, service: s, match: {{ paths: [/] }}, policies: {{ auth: {{ methods: [key] }} }} }}\n"
        ));
        assert_eq!(
            ids(&found),
            [("no_rate_limit_on_authenticated_api", "apis/a")]
        );
        assert_eq!(found[0].severity, Severity::Low);
    }

    #[test]
    fn cors_from_any_origin_on_an_authenticated_api_is_medium() {
        let found = findings(&format!(
            "policies: {{ cors: {{ origins: ['*'] }} }}\n{SERVICE}apis:\n  - {{ name: a, service: s, match: {{ paths: [/a] }}, policies: {LIMITED_KEY_AUTH} }}\n  - {{ name: b, service: s, match: {{ paths: [/b] }}, policies: {{ auth: {{ methods: [key] }}, rate_limit: [{{ limit: 1, window: 1s }}], cors: {{ origins: ['https://app.example.com'] }} }} }}\n"
        ));
        assert_eq!(ids(&found), [("cors_wildcard_with_auth", "apis/a")]);
        assert_eq!(found[0].severity, Severity::Medium);
    }

    #[test]
    fn plain_http_off_loopback_is_medium_and_shows_no_user_info() {
        let found = findings(
            "services:\n  - name: s\n    upstream:\n      targets:\n        - { url: 'http://127.0.0.1:1' }\n        - { url: 'http://localhost:2' }\n        - { url: 'http://[::1]:3' }\n        - { url: 'https://orders.internal:443' }\n        - { url: 'http://user:hunter2@orders.internal:8080' }\n        - { url: 'http://10.0.0.7' }\n",
        );
        assert_eq!(
            ids(&found),
            [
                ("plain_http_upstream", "services/s"),
                ("plain_http_upstream", "services/s")
            ]
        );
        let text = format!("{found:?}");
        assert!(text.contains("targets[4]") && text.contains("orders.internal:8080"));
        assert!(text.contains("targets[5]") && text.contains("http://10.0.0.7"));
        assert!(!text.contains("hunter2"), "{text}");
        assert!(found.iter().all(|f| f.severity == Severity::Medium));
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LocalHost",
            "127.0.0.1",
            "127.8.9.10",
            "[::1]",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "10.0.0.1",
            "[::2]",
            "localhost.example.com",
            "example.com",
            "0.0.0.0",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn keys_without_expiry_and_expired_keys() {
        let found = findings(
            "consumers:\n  - name: c\n    keys:\n      - { hash: 'sha256:0000000000000000000000000000000000000000000000000000000000000000' }\n      - { hash: 'sha256:1111111111111111111111111111111111111111111111111111111111111111', expires: '2026-01-01T00:00:00Z' }\n      - { hash: 'sha256:2222222222222222222222222222222222222222222222222222222222222222', expires: '2027-01-01T00:00:00Z' }\n",
        );
        assert_eq!(
            ids(&found),
            [
                ("key_without_expiry", "consumers/c"),
                ("key_expired_still_configured", "consumers/c")
            ]
        );
        assert!(found[0].message.contains("keys[0]"), "{}", found[0].message);
        assert!(
            found[1].message.contains("keys[1]")
                && found[1].message.contains("2026-01-01T00:00:00Z")
        );
        assert_eq!(
            (found[0].severity, found[1].severity),
            (Severity::Medium, Severity::Low)
        );
    }

    #[test]
    fn a_short_hmac_secret_is_high_and_never_shown() {
        let short = "only-twenty-byte-key";
        let long = "x".repeat(MIN_HMAC_SECRET_BYTES);
        let found = findings(&format!(
            "identity_providers:\n  - {{ name: weak, secret: '{short}' }}\n  - {{ name: strong, secret: '{long}' }}\n"
        ));
        let weak: Vec<&Finding> = found
            .iter()
            .filter(|f| f.id == "hs_secret_too_short")
            .collect();
        assert_eq!(weak.len(), 1, "{found:?}");
        assert_eq!(weak[0].resource, "identity_providers/weak");
        assert_eq!(weak[0].severity, Severity::High);
        let text = format!("{found:?}");
        assert!(!text.contains(short), "{text}");
        assert!(!text.contains(&long), "{text}");
    }

    #[test]
    fn literal_secrets_are_low_and_name_their_resource_and_field() {
        let found = findings(
            "consumers:\n  - { name: c, keys: [{ value: tg_literal_key_value_0123456789, expires: '2027-01-01T00:00:00Z' }] }\n  - { name: d, basic: { username: d, password: literal-password } }\n",
        );
        assert_eq!(
            ids(&found),
            [
                ("literal_secret_in_config", "consumers/c"),
                ("literal_secret_in_config", "consumers/d")
            ]
        );
        assert!(
            found[0].message.starts_with("keys[0].value: "),
            "{}",
            found[0].message
        );
        assert!(
            found[1].message.starts_with("basic.password: "),
            "{}",
            found[1].message
        );
        let text = format!("{found:?}");
        assert!(!text.contains("tg_literal_key") && !text.contains("literal-password"));
    }

    #[test]
    fn unknown_paths_stay_whole() {
        let config = Config::default();
        assert_eq!(
            resource_at(&config, "consumers[4].keys[0].value"),
            (
                "consumers[4].keys[0].value".into(),
                "consumers[4].keys[0].value".into()
            )
        );
    }

    #[test]
    fn consumers_without_recent_records_are_inactive() {
        let config = config("consumers:\n  - { name: busy }\n  - { name: idle }\n");
        let active = HashSet::from(["busy".to_string()]);
        let found = inactive_consumers(
            &config,
            &ComplianceSettings {
                inactive_days: 30,
                ..ComplianceSettings::default()
            },
            &active,
        );
        assert_eq!(ids(&found), [("consumer_inactive", "consumers/idle")]);
        assert!(found[0].message.contains("30 days"));
        assert_eq!(found[0].severity, Severity::Low);
    }

    #[test]
    fn the_active_set_comes_from_the_access_records() {
        let store = Store::open("sqlite::memory:").unwrap();
        let config = config("consumers:\n  - { name: a }\n");
        let active = active_consumers(&store, &config, NOW).unwrap();
        assert!(active.is_empty());
    }

    #[test]
    fn reports_sort_worst_first_and_count_every_severity() {
        let report = Report::new(vec![
            Finding::new("x", Severity::Low, "apis/a".into(), ""),
            Finding::new("y", Severity::High, "apis/b".into(), ""),
            Finding::new("z", Severity::High, "apis/a".into(), ""),
            Finding::new("w", Severity::Medium, "apis/c".into(), ""),
        ]);
        assert_eq!(
            ids(&report.findings),
            [
                ("z", "apis/a"),
                ("y", "apis/b"),
                ("w", "apis/c"),
                ("x", "apis/a")
            ]
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["counts"],
            json!({ "critical": 0, "high": 2, "medium": 1, "low": 1 })
        );
        assert_eq!(json["findings"][0]["severity"], "high");
        assert_eq!(report.at_or_above(Severity::High), 2);
        assert_eq!(report.at_or_above(Severity::Critical), 0);
        assert_eq!(report.at_or_above(Severity::Low), 4);
    }

    #[test]
    fn severities_parse_and_order() {
        assert_eq!("medium".parse::<Severity>(), Ok(Severity::Medium));
        assert!("severe".parse::<Severity>().is_err());
        assert!(Severity::Critical > Severity::High && Severity::Medium > Severity::Low);
    }
}
