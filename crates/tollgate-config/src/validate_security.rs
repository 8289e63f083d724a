//! Checks for identities, subscriptions and policies: references between
//! resources, credentials that resolve, policies that make sense.

use std::collections::HashSet;

use crate::identity::Consumer;
use crate::model::Config;
use crate::policy::{AuthMethod, Policies};
use crate::secret::Secret;

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

type Err<'a> = dyn FnMut(String, String) + 'a;

pub(crate) fn validate(config: &Config, err: &mut Err<'_>) {
    let mut teams = HashSet::new();
    for (i, team) in config.teams.iter().enumerate() {
        if !teams.insert(team.name.as_str()) {
            err(
                format!("teams[{i}].name"),
                format!("duplicate team `{}`", team.name),
            );
        }
        if team.name.is_empty() {
            err(format!("teams[{i}].name"), "must not be empty".into());
        }
    }

    let mut idps = HashSet::new();
    for (i, idp) in config.identity_providers.iter().enumerate() {
        let at = format!("identity_providers[{i}]");
        if !idps.insert(idp.name.as_str()) {
            err(
                format!("{at}.name"),
                format!("duplicate identity provider `{}`", idp.name),
            );
        }
        let sources = idp.jwks_url.is_some() as u8
            + (!idp.keys.is_empty()) as u8
            + idp.secret.is_some() as u8;
        if sources == 0 && idp.introspection.is_none() {
            err(
                at.clone(),
                "needs jwks_url, keys, secret or introspection".into(),
            );
        }
        if sources > 1 {
            err(at.clone(), "use one of jwks_url, keys and secret".into());
        }
        if let Some(url) = &idp.jwks_url {
            check_url(url, &format!("{at}.jwks_url"), err);
        }
        if let Some(secret) = &idp.secret {
            check_secret(secret, &format!("{at}.secret"), err);
        }
        for (k, key) in idp.keys.iter().enumerate() {
            if !key.contains("-----BEGIN") {
                err(format!("{at}.keys[{k}]"), "must be a PEM public key".into());
            }
        }
        if let Some(intro) = &idp.introspection {
            check_url(&intro.url, &format!("{at}.introspection.url"), err);
            check_secret(
                &intro.client_secret,
                &format!("{at}.introspection.client_secret"),
                err,
            );
        }
        if idp.consumer_claim.is_empty() {
            err(format!("{at}.consumer_claim"), "must not be empty".into());
        }
    }

    if let Some(server) = &config.oauth2_server {
        if server.issuer.is_empty() {
            err("oauth2_server.issuer".into(), "must not be empty".into());
        }
        if server.rate_limit.limit == 0 || server.rate_limit.window.get().as_millis() < 1 {
            err(
                "oauth2_server.rate_limit".into(),
                "limit must be at least 1 and window at least 1ms".into(),
            );
        }
        if let Err(message) = crate::policy::check_store_settings(
            server.rate_limit.scope,
            server.rate_limit.on_store_failure,
        ) {
            err("oauth2_server.rate_limit.on_store_failure".into(), message);
        }
        if server.token_ttl.get().is_zero() {
            err(
                "oauth2_server.token_ttl".into(),
                "must be more than 0s".into(),
            );
        }
    }

    let mut consumers = HashSet::new();
    let mut client_ids = HashSet::new();
    let mut usernames = HashSet::new();
    for (i, consumer) in config.consumers.iter().enumerate() {
        let at = format!("consumers[{i}]");
        if consumer.name.is_empty() {
            err(format!("{at}.name"), "must not be empty".into());
        }
        if !consumers.insert(consumer.name.as_str()) {
            err(
                format!("{at}.name"),
                format!("duplicate consumer `{}`", consumer.name),
            );
        }
        if let Some(team) = &consumer.team {
            if !teams.contains(team.as_str()) {
                err(format!("{at}.team"), format!("no team named `{team}`"));
            }
        }
        check_consumer(consumer, &at, &mut client_ids, &mut usernames, err);
    }

    let services: HashSet<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    let mut subscriptions = HashSet::new();
    for (i, sub) in config.subscriptions.iter().enumerate() {
        let at = format!("subscriptions[{i}]");
        if !consumers.contains(sub.consumer.as_str()) {
            err(
                format!("{at}.consumer"),
                format!("no consumer named `{}`", sub.consumer),
            );
        }
        if !services.contains(sub.service.as_str()) {
            err(
                format!("{at}.service"),
                format!("no service named `{}`", sub.service),
            );
        }
        if !subscriptions.insert((sub.consumer.as_str(), sub.service.as_str())) {
            err(
                at,
                format!(
                    "duplicate subscription of `{}` to `{}`",
                    sub.consumer, sub.service
                ),
            );
        }
    }

    check_blocks(config, &consumers, err);

    let has_introspection = config
        .identity_providers
        .iter()
        .any(|idp| idp.introspection.is_some());
    let ctx = PolicyContext {
        idps: &idps,
        has_introspection,
    };
    check_policies(&config.policies, "policies", &ctx, err);
    for (i, service) in config.services.iter().enumerate() {
        if let Some(team) = &service.team {
            if !teams.contains(team.as_str()) {
                err(
                    format!("services[{i}].team"),
                    format!("no team named `{team}`"),
                );
            }
        }
        check_policies(
            &service.policies,
            &format!("services[{i}].policies"),
            &ctx,
            err,
        );
    }
    for (i, api) in config.apis.iter().enumerate() {
        check_policies(&api.policies, &format!("apis[{i}].policies"), &ctx, err);
    }
}

fn check_consumer(
    consumer: &Consumer,
    at: &str,
    client_ids: &mut HashSet<String>,
    usernames: &mut HashSet<String>,
    err: &mut Err<'_>,
) {
    for (k, key) in consumer.keys.iter().enumerate() {
        let path = format!("{at}.keys[{k}]");
        match (&key.value, &key.hash) {
            (Some(value), None) => check_secret(value, &format!("{path}.value"), err),
            (None, Some(hash)) => {
                let valid = hash.strip_prefix("sha256:").is_some_and(|hex| {
                    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
                });
                if !valid {
                    err(
                        format!("{path}.hash"),
                        "must be sha256:<64 hex digits>".into(),
                    );
                }
            }
            _ => err(path, "needs exactly one of value and hash".into()),
        }
    }
    for (g, group) in consumer.groups.iter().enumerate() {
        if group.is_empty() {
            err(format!("{at}.groups[{g}]"), "must not be empty".into());
        }
    }
    if let Some(cc) = &consumer.client_credentials {
        if cc.client_id.is_empty() {
            err(
                format!("{at}.client_credentials.client_id"),
                "must not be empty".into(),
            );
        }
        if !client_ids.insert(cc.client_id.clone()) {
            err(
                format!("{at}.client_credentials.client_id"),
                format!("client_id `{}` is used by another consumer", cc.client_id),
            );
        }
        check_secret(&cc.secret, &format!("{at}.client_credentials.secret"), err);
    }
    if let Some(basic) = &consumer.basic {
        if basic.username.is_empty() || basic.username.contains(':') {
            err(
                format!("{at}.basic.username"),
                "must be non-empty and contain no ':'".into(),
            );
        }
        if !usernames.insert(basic.username.clone()) {
            err(
                format!("{at}.basic.username"),
                format!("username `{}` is used by another consumer", basic.username),
            );
        }
        match (&basic.password, &basic.password_hash) {
            (Some(password), None) => check_secret(password, &format!("{at}.basic.password"), err),
            (None, Some(hash)) => {
                if !hash.starts_with("$argon2") {
                    err(
                        format!("{at}.basic.password_hash"),
                        "must be an argon2 PHC string ($argon2id$…)".into(),
                    );
                }
            }
            _ => err(
                format!("{at}.basic"),
                "needs exactly one of password and password_hash".into(),
            ),
        }
    }
    for (c, cert) in consumer.certificates.iter().enumerate() {
        let path = format!("{at}.certificates[{c}]");
        match (&cert.subject, &cert.fingerprint_sha256) {
            (Some(subject), None) if !subject.is_empty() => {}
            (None, Some(fp)) => {
                let hex: String = fp.chars().filter(|c| *c != ':').collect();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    err(
                        format!("{path}.fingerprint_sha256"),
                        "must be 64 hex digits (colons allowed)".into(),
                    );
                }
            }
            _ => err(
                path,
                "needs exactly one of subject and fingerprint_sha256".into(),
            ),
        }
    }
}

struct PolicyContext<'a> {
    idps: &'a HashSet<&'a str>,
    has_introspection: bool,
}

fn check_policies(policies: &Policies, at: &str, ctx: &PolicyContext<'_>, err: &mut Err<'_>) {
    if let Some(auth) = &policies.auth {
        if auth.methods.is_empty() {
            err(
                format!("{at}.auth.methods"),
                "at least one method is needed".into(),
            );
        }
        if auth.methods.contains(&AuthMethod::Introspection) && !ctx.has_introspection {
            err(
                format!("{at}.auth.methods"),
                "`introspection` needs an identity provider with `introspection`".into(),
            );
        }
        for (k, name) in auth.identity_providers.iter().enumerate() {
            if !ctx.idps.contains(name.as_str()) {
                err(
                    format!("{at}.auth.identity_providers[{k}]"),
                    format!("no identity provider named `{name}`"),
                );
            }
        }
        if http::HeaderName::from_bytes(auth.key_header.as_bytes()).is_err() {
            err(
                format!("{at}.auth.key_header"),
                "not a valid header name".into(),
            );
        }
        if auth.key_query_param.as_deref() == Some("") {
            err(
                format!("{at}.auth.key_query_param"),
                "must not be empty".into(),
            );
        }
        for (c, claim) in auth.forward_claims.iter().enumerate() {
            let header = format!("x-claim-{claim}");
            if claim.is_empty() || http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                err(
                    format!("{at}.auth.forward_claims[{c}]"),
                    "must be usable in a header name".into(),
                );
            }
        }
    }
    if let Some(acl) = &policies.acl {
        for method in acl.scopes.keys() {
            if method != "*" && !METHODS.contains(&method.as_str()) {
                err(
                    format!("{at}.acl.scopes.{method}"),
                    "keys are upper-case methods or *".into(),
                );
            }
        }
    }
    if let Some(limits) = &policies.rate_limit {
        for (r, limit) in limits.iter().enumerate() {
            if limit.limit == 0 {
                err(
                    format!("{at}.rate_limit[{r}].limit"),
                    "must be at least 1".into(),
                );
            }
            if limit.window.get().as_millis() < 1 {
                err(
                    format!("{at}.rate_limit[{r}].window"),
                    "must be at least 1ms".into(),
                );
            }
            if let Err(message) =
                crate::policy::check_store_settings(limit.scope, limit.on_store_failure)
            {
                err(format!("{at}.rate_limit[{r}].on_store_failure"), message);
            }
            if let Some(every) = limit.sync_interval {
                if limit.scope == crate::policy::LimitScope::Node {
                    err(
                        format!("{at}.rate_limit[{r}].sync_interval"),
                        "applies to `scope: cluster` limits only; a `scope: node` limit counts in memory".into(),
                    );
                } else if every.get() < std::time::Duration::from_millis(10) {
                    err(
                        format!("{at}.rate_limit[{r}].sync_interval"),
                        "must be at least 10ms".into(),
                    );
                } else if every.get() >= limit.window.get() {
                    err(
                        format!("{at}.rate_limit[{r}].sync_interval"),
                        format!("must be shorter than the window ({})", limit.window),
                    );
                }
            }
        }
    }
    if let Some(quota) = &policies.quota {
        if quota.limit == 0 {
            err(format!("{at}.quota.limit"), "must be at least 1".into());
        }
        if let Err(message) =
            crate::policy::check_store_settings(quota.scope, quota.on_store_failure)
        {
            err(format!("{at}.quota.on_store_failure"), message);
        }
    }
    if let Some(size) = &policies.request_size {
        if size.max_body.bytes() == 0 {
            err(
                format!("{at}.request_size.max_body"),
                "must be more than 0B".into(),
            );
        }
    }
    if let Some(validate) = &policies.validate {
        if validate.max_depth == 0 {
            err(
                format!("{at}.validate.max_depth"),
                "must be at least 1".into(),
            );
        }
        if let Some(schema) = &validate.json_schema {
            if !(schema.is_object() || schema.is_boolean()) {
                err(
                    format!("{at}.validate.json_schema"),
                    "must be a JSON Schema object".into(),
                );
            }
        }
    }
    if let Some(cors) = &policies.cors {
        if cors.origins.is_empty() {
            err(
                format!("{at}.cors.origins"),
                "at least one origin is needed".into(),
            );
        }
        for (o, origin) in cors.origins.iter().enumerate() {
            let valid = origin == "*"
                || (origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/')
                    && origin.parse::<http::Uri>().is_ok_and(|u| {
                        u.host().is_some() && u.path_and_query().is_none_or(|p| p == "/")
                    });
            if !valid {
                err(
                    format!("{at}.cors.origins[{o}]"),
                    "must be * or scheme://host[:port]".into(),
                );
            }
        }
        if cors.credentials && cors.origins.iter().any(|o| o == "*") {
            err(
                format!("{at}.cors.credentials"),
                "cannot be combined with origin *".into(),
            );
        }
        for (m, method) in cors.methods.iter().enumerate() {
            if !METHODS.contains(&method.as_str()) {
                err(
                    format!("{at}.cors.methods[{m}]"),
                    format!("`{method}` is not an upper-case method"),
                );
            }
        }
        for (list, names) in [
            ("headers", &cors.headers),
            ("expose_headers", &cors.expose_headers),
        ] {
            for (h, name) in names.iter().enumerate() {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    err(
                        format!("{at}.cors.{list}[{h}]"),
                        "not a valid header name".into(),
                    );
                }
            }
        }
    }
    if let Some(headers) = &policies.headers {
        for (side, ops) in [
            ("request", &headers.request),
            ("response", &headers.response),
        ] {
            let path = format!("{at}.headers.{side}");
            for (from, to) in &ops.rename {
                for name in [from, to] {
                    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        err(
                            format!("{path}.rename.{from}"),
                            format!("`{name}` is not a valid header name"),
                        );
                    }
                }
            }
            for (r, name) in ops.remove.iter().enumerate() {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    err(
                        format!("{path}.remove[{r}]"),
                        "not a valid header name".into(),
                    );
                }
            }
            for (name, value) in &ops.set {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                    || http::HeaderValue::from_str(value).is_err()
                {
                    err(
                        format!("{path}.set.{name}"),
                        "not a valid header name and value".into(),
                    );
                }
            }
        }
    }
}

fn check_url(url: &str, path: &str, err: &mut Err<'_>) {
    let ok = url
        .parse::<http::Uri>()
        .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
    if !ok {
        err(
            path.to_string(),
            "must be an http:// or https:// URL".into(),
        );
    }
}

fn check_secret(secret: &Secret, path: &str, err: &mut Err<'_>) {
    if let Err(message) = secret.resolve() {
        err(path.to_string(), message);
    }
}

/// Fields that load but deserve a word: secrets written in the file itself.
pub(crate) fn warnings(config: &Config) -> Vec<crate::ConfigError> {
    let mut out = Vec::new();
    let mut literal = |secret: &Secret, path: String| {
        if secret.is_literal() {
            out.push(crate::ConfigError::new(
                path,
                "a secret written in the file; prefer env:NAME",
            ));
        }
    };
    for (i, idp) in config.identity_providers.iter().enumerate() {
        if let Some(secret) = &idp.secret {
            literal(secret, format!("identity_providers[{i}].secret"));
        }
        if let Some(intro) = &idp.introspection {
            literal(
                &intro.client_secret,
                format!("identity_providers[{i}].introspection.client_secret"),
            );
        }
    }
    for (i, consumer) in config.consumers.iter().enumerate() {
        for (k, key) in consumer.keys.iter().enumerate() {
            if let Some(value) = &key.value {
                literal(value, format!("consumers[{i}].keys[{k}].value"));
            }
        }
        if let Some(cc) = &consumer.client_credentials {
            literal(
                &cc.secret,
                format!("consumers[{i}].client_credentials.secret"),
            );
        }
        if let Some(Some(password)) = consumer.basic.as_ref().map(|b| &b.password) {
            literal(password, format!("consumers[{i}].basic.password"));
        }
    }
    out
}

/// Blocks name exactly one target, and a target that exists: a mistyped
/// consumer or key would otherwise block nothing, silently.
fn check_blocks(config: &Config, consumers: &HashSet<&str>, err: &mut Err<'_>) {
    let mut key_ids = HashSet::new();
    for (i, consumer) in config.consumers.iter().enumerate() {
        for (k, key) in consumer.keys.iter().enumerate() {
            if let Some(id) = &key.id {
                if !key_ids.insert(id.as_str()) {
                    err(
                        format!("consumers[{i}].keys[{k}].id"),
                        format!("duplicate key id `{id}`"),
                    );
                }
            }
        }
    }
    let mut ids = HashSet::new();
    for (i, block) in config.blocks.iter().enumerate() {
        let at = format!("blocks[{i}]");
        if block.id.is_empty() {
            err(format!("{at}.id"), "must not be empty".into());
        } else if !ids.insert(block.id.as_str()) {
            err(
                format!("{at}.id"),
                format!("duplicate block `{}`", block.id),
            );
        }
        let targets = block.consumer.is_some() as u8
            + block.key_id.is_some() as u8
            + block.ip.is_some() as u8;
        if targets != 1 {
            err(
                at.clone(),
                "needs exactly one of consumer, key_id and ip".into(),
            );
        }
        if let Some(consumer) = &block.consumer {
            if !consumers.contains(consumer.as_str()) {
                err(
                    format!("{at}.consumer"),
                    format!("no consumer named `{consumer}`"),
                );
            }
        }
        if let Some(key_id) = &block.key_id {
            if !key_ids.contains(key_id.as_str()) {
                err(format!("{at}.key_id"), format!("no key with id `{key_id}`"));
            }
        }
    }
}
