//! Semantic checks that serde cannot express: references between resources,
//! unique names, well-formed patterns and URLs. Returns every error found.

use std::collections::HashSet;

use crate::model::{Api, Config, Target};
use crate::pattern::{HostPattern, PathPattern};
use crate::ConfigError;

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

pub(crate) fn validate(config: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |path: String, message: String| errors.push(ConfigError::new(path, message));

    if config.limits.max_header_bytes.bytes() < 8192 {
        err(
            "limits.max_header_bytes".into(),
            "must be at least 8KiB".into(),
        );
    }
    if config.limits.max_headers == 0 {
        err("limits.max_headers".into(), "must be at least 1".into());
    }
    if config.limits.max_uri.bytes() < 64 {
        err("limits.max_uri".into(), "must be at least 64B".into());
    }
    if config.access_log.retention.get() < std::time::Duration::from_secs(3600) {
        err(
            "access_log.retention".into(),
            "must be at least 1h (records are pruned hourly)".into(),
        );
    }
    if let Some(tls) = &config.listen.tls {
        if tls.certificates.is_empty() {
            err(
                "listen.tls.certificates".into(),
                "at least one certificate is needed".into(),
            );
        }
        if tls.addr == config.listen.proxy || tls.addr == config.listen.admin {
            err(
                "listen.tls.addr".into(),
                "must differ from the proxy and admin addresses".into(),
            );
        }
    }
    if let Some(name) = &config.node.name {
        if name.trim().is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
            err(
                "node.name".into(),
                "must be 1 to 255 bytes, not blank, without control characters".into(),
            );
        }
    }
    if config.listen.proxy == config.listen.admin {
        err(
            "listen.admin".into(),
            "must differ from listen.proxy".into(),
        );
    }
    match config.storage.url() {
        Err(message) => err("storage.database".into(), message),
        Ok(url)
            if !(url.starts_with("sqlite://")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:")) =>
        {
            // Never repeat the URL: it may hold a password.
            err(
                "storage.database".into(),
                "must be sqlite://PATH, postgres://… or env:NAME".into(),
            )
        }
        Ok(_) => {}
    }
    if config.storage.spool.max_size.bytes() == 0 {
        err(
            "storage.spool.max_size".into(),
            "must be more than 0".into(),
        );
    }
    match config.storage.redis_url() {
        Err(message) => err("storage.redis".into(), message),
        Ok(Some(url))
            if !url.split(',').map(str::trim).all(|part| {
                [
                    "redis://",
                    "rediss://",
                    "unix://",
                    "redis+unix://",
                    "redis+cluster://",
                    "rediss+cluster://",
                ]
                .iter()
                .any(|scheme| part.starts_with(scheme))
            }) =>
        {
            // Never repeat the URL: it may hold a password.
            err(
                "storage.redis".into(),
                "must be redis://HOST:PORT, rediss://… (TLS), unix:///PATH, a Redis Cluster's nodes comma-separated (or redis+cluster://HOST:PORT), or env:NAME".into(),
            )
        }
        Ok(_) => {}
    }

    let mut service_names = HashSet::new();
    for (i, service) in config.services.iter().enumerate() {
        let at = format!("services[{i}]");
        check_name(&service.name, &format!("{at}.name"), &mut err);
        if !service_names.insert(service.name.as_str()) {
            err(
                format!("{at}.name"),
                format!("duplicate service name `{}`", service.name),
            );
        }
        let upstream = &service.upstream;
        if upstream.targets.is_empty() {
            err(
                format!("{at}.upstream.targets"),
                "at least one target is needed".into(),
            );
        }
        for (t, target) in upstream.targets.iter().enumerate() {
            check_target(target, &format!("{at}.upstream.targets[{t}]"), &mut err);
        }
        if let Some(hc) = &upstream.health_check {
            if !hc.path.starts_with('/') {
                err(
                    format!("{at}.upstream.health_check.path"),
                    "must start with '/'".into(),
                );
            }
            if hc.interval.get().is_zero() {
                err(
                    format!("{at}.upstream.health_check.interval"),
                    "must be more than 0s".into(),
                );
            }
            if hc.unhealthy_after == 0 {
                err(
                    format!("{at}.upstream.health_check.unhealthy_after"),
                    "must be at least 1".into(),
                );
            }
            if hc.healthy_after == 0 {
                err(
                    format!("{at}.upstream.health_check.healthy_after"),
                    "must be at least 1".into(),
                );
            }
        }
        if upstream.timeouts.connect.get().is_zero() {
            err(
                format!("{at}.upstream.timeouts.connect"),
                "must be more than 0s".into(),
            );
        }
        if upstream.timeouts.response.get().is_zero() {
            err(
                format!("{at}.upstream.timeouts.response"),
                "must be more than 0s".into(),
            );
        }
    }

    let mut api_names = HashSet::new();
    for (i, api) in config.apis.iter().enumerate() {
        let at = format!("apis[{i}]");
        check_name(&api.name, &format!("{at}.name"), &mut err);
        if !api_names.insert(api.name.as_str()) {
            err(
                format!("{at}.name"),
                format!("duplicate api name `{}`", api.name),
            );
        }
        if api.ai.is_none() && api.service.is_empty() {
            err(
                format!("{at}.service"),
                "required (or `ai`, for an API the AI gateway serves)".into(),
            );
        } else if api.ai.is_none() && !service_names.contains(api.service.as_str()) {
            err(
                format!("{at}.service"),
                format!("no service named `{}`", api.service),
            );
        }
        let m = &api.matcher;
        if m.paths.is_empty() {
            err(
                format!("{at}.match.paths"),
                "at least one path is needed (use / for everything)".into(),
            );
        }
        for (p, path) in m.paths.iter().enumerate() {
            if let Err(message) = PathPattern::parse(path) {
                err(format!("{at}.match.paths[{p}]"), message);
            }
        }
        for (h, host) in m.hosts.iter().enumerate() {
            if let Err(message) = HostPattern::parse(host) {
                err(format!("{at}.match.hosts[{h}]"), message);
            }
        }
        for (k, method) in m.methods.iter().enumerate() {
            if !METHODS.contains(&method.as_str()) {
                err(
                    format!("{at}.match.methods[{k}]"),
                    format!(
                        "`{method}` is not a method (use upper case: {})",
                        METHODS.join(", ")
                    ),
                );
            }
        }
        for (name, value) in &m.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                err(
                    format!("{at}.match.headers.{name}"),
                    "not a valid header name".into(),
                );
            }
            if http::HeaderValue::from_str(value).is_err() {
                err(
                    format!("{at}.match.headers.{name}"),
                    "not a valid header value".into(),
                );
            }
        }
        if let Some(prefix) = &api.strip_prefix {
            if !prefix.starts_with('/') {
                err(format!("{at}.strip_prefix"), "must start with '/'".into());
            }
        }
        check_lifecycle(config, api, &at, &mut err);
    }
    crate::validate_security::validate(config, &mut err);
    crate::validate_ai::validate(config, &mut err);
    errors
}

/// `version`, `successor` and the dates; a `sunset` is allowed at any stage.
fn check_lifecycle(config: &Config, api: &Api, at: &str, err: &mut impl FnMut(String, String)) {
    if let Some(version) = &api.version {
        if version.trim().is_empty() || version.len() > 100 {
            err(
                format!("{at}.version"),
                "must be 1 to 100 characters".into(),
            );
        }
    }
    if let Some(successor) = &api.successor {
        if *successor == api.name {
            err(
                format!("{at}.successor"),
                "an API cannot be its own successor".into(),
            );
        } else if !config.apis.iter().any(|other| other.name == *successor) {
            err(
                format!("{at}.successor"),
                format!("no API named \"{successor}\""),
            );
        }
    }
    if let (Some(deprecated_at), Some(sunset)) = (api.deprecated_at, api.sunset) {
        if sunset.get() < deprecated_at.get() {
            err(
                format!("{at}.sunset"),
                format!("must not be before deprecated_at ({deprecated_at})"),
            );
        }
    }
}

pub(crate) fn check_name(name: &str, path: &str, err: &mut dyn FnMut(String, String)) {
    let valid = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        err(
            path.to_string(),
            "names are 1 to 100 letters, digits, '-', '_' or '.'".into(),
        );
    }
}

fn check_target(target: &Target, path: &str, err: &mut impl FnMut(String, String)) {
    match target.url.parse::<http::Uri>() {
        Ok(uri) => {
            if !matches!(uri.scheme_str(), Some("http") | Some("https")) {
                err(
                    format!("{path}.url"),
                    "must be an http:// or https:// URL".into(),
                );
            }
            if uri.host().is_none_or(str::is_empty) {
                err(format!("{path}.url"), "must name a host".into());
            }
            if uri.query().is_some() {
                err(format!("{path}.url"), "must not have a query".into());
            }
        }
        Err(e) => err(format!("{path}.url"), format!("not a URL: {e}")),
    }
    if target.weight == 0 {
        err(format!("{path}.weight"), "must be at least 1".into());
    }
    if target.ca.is_some() && !target.url.starts_with("https://") {
        err(
            format!("{path}.ca"),
            "only https:// targets use a CA".into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::from_yaml;

    #[test]
    fn the_spool_has_defaults_sizes_and_a_positive_bound() {
        let config = from_yaml("{}").unwrap();
        assert_eq!(config.storage.spool.path, None);
        assert_eq!(config.storage.spool.max_size.bytes(), 1 << 30);
        let config =
            from_yaml("storage: { spool: { path: /var/spool/tg, max_size: 4KiB } }").unwrap();
        assert_eq!(
            config.storage.spool.path.as_deref(),
            Some(std::path::Path::new("/var/spool/tg"))
        );
        assert_eq!(config.storage.spool.max_size.bytes(), 4096);
        let zero = from_yaml("storage: { spool: { max_size: 0 } }").unwrap_err();
        assert_eq!(zero[0].path, "storage.spool.max_size");
        assert!(from_yaml("storage: { spool: { size: 1MiB } }").is_err());
    }

    #[test]
    fn the_redis_url_is_checked_and_never_echoed() {
        let config = crate::from_yaml("storage: { redis: 'redis://127.0.0.1:6379/0' }").unwrap();
        assert_eq!(
            config.storage.redis_url().unwrap().as_deref(),
            Some("redis://127.0.0.1:6379/0")
        );
        assert_eq!(config.storage.redis_prefix, "tollgate:");
        assert_eq!(
            crate::from_yaml("{}").unwrap().storage.redis_url(),
            Ok(None)
        );
        let bad = crate::from_yaml("storage: { redis: 'memcached://u:s3cr3t@h' }").unwrap_err();
        assert_eq!(bad[0].path, "storage.redis");
        assert!(!bad[0].message.contains("s3cr3t"), "{}", bad[0]);
        std::env::set_var(
            "TOLLGATE_TEST_REDIS_URL_4711",
            "rediss://:s3cr3t@cache:6380",
        );
        let config = crate::from_yaml(
            "storage: { redis: env:TOLLGATE_TEST_REDIS_URL_4711, redis_prefix: 'gw-a:' }",
        )
        .unwrap();
        assert_eq!(
            config.storage.redis_url().unwrap().as_deref(),
            Some("rediss://:s3cr3t@cache:6380")
        );
        let unset =
            crate::from_yaml("storage: { redis: env:TOLLGATE_TEST_REDIS_UNSET_4711 }").unwrap_err();
        assert_eq!(unset[0].path, "storage.redis");
    }

    #[test]
    fn the_database_url_may_come_from_the_environment_and_is_never_echoed() {
        let unset =
            crate::from_yaml("storage: { database: env:TOLLGATE_TEST_DB_UNSET_4711 }").unwrap_err();
        assert_eq!(unset[0].path, "storage.database");
        assert!(unset[0].message.contains("not set"), "{}", unset[0]);
        std::env::set_var("TOLLGATE_TEST_DB_URL_4711", "postgres://u:s3cr3t@h/db");
        let config =
            crate::from_yaml("storage: { database: env:TOLLGATE_TEST_DB_URL_4711 }").unwrap();
        assert_eq!(config.storage.url().unwrap(), "postgres://u:s3cr3t@h/db");
        assert_eq!(config.storage.database, "env:TOLLGATE_TEST_DB_URL_4711");
        std::env::set_var("TOLLGATE_TEST_DB_BAD_4711", "mysql://u:s3cr3t@h/db");
        let bad =
            crate::from_yaml("storage: { database: env:TOLLGATE_TEST_DB_BAD_4711 }").unwrap_err();
        assert!(!bad[0].message.contains("s3cr3t"), "{}", bad[0]);
        let literal =
            crate::from_yaml("storage: { database: 'mysql://u:s3cr3t@h/db' }").unwrap_err();
        assert!(!literal[0].message.contains("s3cr3t"), "{}", literal[0]);
    }

    #[test]
    fn every_error_is_listed_with_its_path() {
        let yaml = r#"
services:
  - name: s
    upstream: { targets: [{ url: "ftp://x" }, { url: "http://127.0.0.1:1", weight: 0 }] }
apis:
  - { name: a, service: s, match: { paths: [/ok] } }
  - { name: b, service: s, match: { paths: [/ok] } }
  - { name: c, service: nope, match: { paths: [orders], hosts: ["a.*.com"], methods: [get] } }
"#;
        let errors: Vec<String> = from_yaml(yaml)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        for expected in [
            "services[0].upstream.targets[0].url: must be an http:// or https:// URL",
            "services[0].upstream.targets[1].weight: must be at least 1",
            "apis[2].service: no service named `nope`",
            "apis[2].match.paths[0]: must start with '/'",
        ] {
            assert!(
                errors.iter().any(|e| e == expected),
                "missing `{expected}` in {errors:#?}"
            );
        }
        assert!(errors
            .iter()
            .any(|e| e.starts_with("apis[2].match.hosts[0]")));
        assert!(errors
            .iter()
            .any(|e| e.starts_with("apis[2].match.methods[0]")));
    }

    #[test]
    fn balance_forms_parse() {
        for b in [
            "round_robin",
            "least_conn",
            "hash(ip)",
            "hash(header:X-User)",
        ] {
            let yaml = format!("services:\n  - name: s\n    upstream: {{ targets: [{{url: 'http://127.0.0.1:1'}}], balance: '{b}' }}\n");
            from_yaml(&yaml).unwrap_or_else(|e| panic!("{b}: {e:?}"));
        }
        let yaml = "services:\n  - name: s\n    upstream: { targets: [{url: 'http://127.0.0.1:1'}], balance: random }\n";
        let errors = from_yaml(yaml).unwrap_err();
        assert_eq!(errors[0].path, "services[0].upstream.balance");
    }

    fn lifecycle_errors(apis: &str) -> Vec<String> {
        let yaml = format!(
            "services: [{{ name: s, upstream: {{ targets: [{{ url: 'http://127.0.0.1:1' }}] }} }}]\napis:\n{apis}"
        );
        match from_yaml(&yaml) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn lifecycle_fields_load_with_their_defaults() {
        let yaml = r#"
services: [{ name: s, upstream: { targets: [{ url: "http://127.0.0.1:1" }] } }]
apis:
  - { name: plain, service: s, match: { paths: [/a] } }
  - name: old
    service: s
    match: { paths: [/v1] }
    version: "1"
    lifecycle: deprecated
    deprecated_at: 2026-01-01T00:00:00Z
    sunset: 2027-05-01
    successor: plain
  - { name: next, service: s, match: { paths: [/v3] }, lifecycle: draft, sunset: 2030-01-01 }
"#;
        let config = from_yaml(yaml).unwrap();
        assert_eq!(config.apis[0].lifecycle, crate::Lifecycle::Published);
        assert_eq!(config.apis[0].version, None);
        let old = &config.apis[1];
        assert_eq!(old.lifecycle, crate::Lifecycle::Deprecated);
        assert_eq!(old.version.as_deref(), Some("1"));
        assert_eq!(old.successor.as_deref(), Some("plain"));
        assert_eq!(old.sunset.unwrap().to_string(), "2027-05-01");
        assert_eq!(old.deprecated_at.unwrap().unix_seconds(), 1_767_225_600);
        assert_eq!(config.apis[2].lifecycle, crate::Lifecycle::Draft);
        // The admin API shows these fields back as they were written.
        let shown = serde_json::to_value(old).unwrap();
        assert_eq!(shown["lifecycle"], "deprecated");
        assert_eq!(shown["sunset"], "2027-05-01");
        assert_eq!(shown["deprecated_at"], "2026-01-01T00:00:00Z");
        assert_eq!(shown["version"], "1");
    }

    #[test]
    fn a_successor_must_be_another_existing_api() {
        let errors = lifecycle_errors(
            "  - { name: a, service: s, match: { paths: [/a] } }\n  - { name: b, service: s, match: { paths: [/b] }, successor: x }\n  - { name: c, service: s, match: { paths: [/c] }, successor: c }\n",
        );
        assert_eq!(
            errors,
            [
                "apis[1].successor: no API named \"x\"",
                "apis[2].successor: an API cannot be its own successor",
            ]
        );
    }

    #[test]
    fn a_successor_may_come_later_in_the_file() {
        let errors = lifecycle_errors(
            "  - { name: v1, service: s, match: { paths: [/v1] }, lifecycle: retired, successor: v2 }\n  - { name: v2, service: s, match: { paths: [/v2] } }\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn bad_dates_and_lifecycles_name_their_field() {
        for (field, value) in [
            ("sunset", "next week"),
            ("sunset", "2027-02-30"),
            ("deprecated_at", "2027-05-01T00:00:00"),
            ("lifecycle", "sunsetting"),
        ] {
            let errors = lifecycle_errors(&format!(
                "  - {{ name: a, service: s, match: {{ paths: [/a] }}, {field}: '{value}' }}\n"
            ));
            assert_eq!(errors.len(), 1, "{field}: {value}: {errors:?}");
            assert!(
                errors[0].starts_with(&format!("apis[0].{field}: ")),
                "{field}: {value}: {errors:?}"
            );
        }
    }

    #[test]
    fn a_sunset_is_allowed_at_any_stage_but_not_before_the_deprecation() {
        for lifecycle in ["draft", "published", "deprecated", "retired"] {
            let errors = lifecycle_errors(&format!(
                "  - {{ name: a, service: s, match: {{ paths: [/a] }}, lifecycle: {lifecycle}, sunset: 2027-05-01 }}\n"
            ));
            assert!(errors.is_empty(), "{lifecycle}: {errors:?}");
        }
        let errors = lifecycle_errors(
            "  - { name: a, service: s, match: { paths: [/a] }, lifecycle: deprecated, deprecated_at: 2027-06-01, sunset: 2027-05-01 }\n",
        );
        assert_eq!(
            errors,
            ["apis[0].sunset: must not be before deprecated_at (2027-06-01)"]
        );
        let errors =
            lifecycle_errors("  - { name: a, service: s, match: { paths: [/a] }, version: '' }\n");
        assert_eq!(errors, ["apis[0].version: must be 1 to 100 characters"]);
    }

    #[test]
    fn a_version_is_text_or_a_whole_number() {
        let yaml = "services: [{ name: s, upstream: { targets: [{ url: 'http://127.0.0.1:1' }] } }]\napis:\n  - { name: a, service: s, match: { paths: [/a] }, version: 2 }\n  - { name: b, service: s, match: { paths: [/b] }, version: '1.10' }\n";
        let config = from_yaml(yaml).unwrap();
        assert_eq!(config.apis[0].version.as_deref(), Some("2"));
        assert_eq!(config.apis[1].version.as_deref(), Some("1.10"));
        let errors = lifecycle_errors(
            "  - { name: a, service: s, match: { paths: [/a] }, version: 1.10 }\n",
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("apis[0].version: "), "{errors:?}");
    }
}
