//! Compiling a configuration's identities and policies into what the request
//! pipeline runs, and the phases that need more than one policy.

use crate::ai_limits::{AiBudgetPolicy, AiLimitsPolicy};
use crate::blocks::Blocks;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tollgate_config::{Config, ConfigError, Policies, SubscriptionMode, SubscriptionStatus};

use crate::acl::Acl;
use crate::auth::Authenticator;
use crate::basic::{BasicIndex, BasicRegistry};
use crate::cors::Cors;
use crate::counters::CounterStore;
use crate::credentials::{self, CertIndex, ClientCert, KeyIndex};
use crate::denial::Denial;
use crate::headers::HeaderTransform;
use crate::identity::{ConsumerInfo, Identity};
use crate::introspection::Introspectors;
use crate::ip::IpRules;
use crate::jwt::{JwtVerifiers, TokenRegistry};
use crate::oauth2::{SigningKey, TokenIssuer};
use crate::quota::QuotaPolicy;
use crate::rate_limit::{LimitInput, RateLimitStatus, RateLimits};
use crate::validate::BodyValidator;

pub static X_CONSUMER_NAME: HeaderName = HeaderName::from_static("x-consumer-name");
pub static X_CONSUMER_TEAM: HeaderName = HeaderName::from_static("x-consumer-team");

/// State that outlives snapshots: key caches, counters, the signing key.
pub struct PolicyRegistries {
    pub tokens: TokenRegistry,
    pub basic: Arc<BasicRegistry>,
    pub counters: Arc<dyn CounterStore>,
    pub signing_key: Option<Arc<SigningKey>>,
    /// The nodes whose heartbeats are current (1 on a single node): what
    /// `on_store_failure: local` divides a limit by. The heartbeat task
    /// writes it; [`ClusterCounters`](crate::counters_cluster::ClusterCounters)
    /// reads the same value.
    pub live_nodes: Arc<AtomicUsize>,
}

impl PolicyRegistries {
    pub fn new(counters: Arc<dyn CounterStore>, signing_key: Option<Arc<SigningKey>>) -> Self {
        PolicyRegistries {
            tokens: TokenRegistry::default(),
            basic: Arc::new(BasicRegistry::default()),
            counters,
            signing_key,
            live_nodes: Arc::new(AtomicUsize::new(1)),
        }
    }

    /// Carries `live_nodes`, the count the heartbeat task publishes (and
    /// the counters divide by).
    pub fn with_live_nodes(mut self, live_nodes: Arc<AtomicUsize>) -> Self {
        self.live_nodes = live_nodes;
        self
    }
}

/// Everything about callers one snapshot knows: credential indexes, token
/// verifiers, subscriptions.
pub struct Security {
    pub consumers: HashMap<String, Arc<ConsumerInfo>>,
    pub keys: KeyIndex,
    pub basic: BasicIndex,
    pub basic_registry: Arc<BasicRegistry>,
    pub certs: CertIndex,
    pub jwt: JwtVerifiers,
    pub introspection: Introspectors,
    /// `POST /oauth2/token` and `GET /.well-known/jwks.json`, when configured.
    pub issuer: Option<TokenIssuer>,
    /// `oauth2_server.rate_limit`, applied to `POST /oauth2/token`.
    pub issuer_limits: Option<RateLimits>,
    subscriptions: HashMap<(String, String), SubscriptionStatus>,
    /// Incident-response blocks; consumer blocks are checked after
    /// authentication, address blocks by the proxy on every request.
    pub blocks: Blocks,
    pub counters: Arc<dyn CounterStore>,
}

/// One API's policies, resolved across the three levels and compiled.
pub struct ApiPolicies {
    pub api: Arc<str>,
    pub service: Arc<str>,
    pub ip: Option<IpRules>,
    pub cors: Option<Cors>,
    pub auth: Option<Authenticator>,
    pub acl: Option<Acl>,
    pub subscription: SubscriptionMode,
    pub rate_limits: Option<RateLimits>,
    pub quota: Option<QuotaPolicy>,
    /// The smaller of `request_size.max_body` and the validator's bound.
    pub max_body: Option<u64>,
    pub validator: Option<Arc<BodyValidator>>,
    pub request_headers: Option<HeaderTransform>,
    pub response_headers: Option<HeaderTransform>,
    pub ai_limits: Option<AiLimitsPolicy>,
    pub ai_budget: Option<AiBudgetPolicy>,
    /// Compiled by the AI gateway, which owns the guard's matchers.
    pub ai_guard: Option<tollgate_config::AiGuard>,
}

pub struct CompiledPolicies {
    pub security: Arc<Security>,
    /// By index in `config.apis`; `None` for an API without any policy.
    pub apis: Vec<Option<Arc<ApiPolicies>>>,
}

pub fn compile(
    config: &Config,
    registries: &PolicyRegistries,
) -> Result<CompiledPolicies, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let security = compile_security(config, registries, &mut errors);
    let services: HashMap<&str, (usize, &tollgate_config::Service)> = config
        .services
        .iter()
        .enumerate()
        .map(|(index, s)| (s.name.as_str(), (index, s)))
        .collect();
    // A schema is compiled once per declaration, however many APIs inherit it;
    // `None` marks one that failed (its error is reported once, at its own path).
    let mut validators: HashMap<String, Option<Arc<BodyValidator>>> = HashMap::new();
    let mut apis = Vec::with_capacity(config.apis.len());
    for (i, api) in config.apis.iter().enumerate() {
        // An AI API has no service: its policies are its own over the global ones.
        let service = match services.get(api.service.as_str()) {
            Some(&found) => Some(found),
            None if api.ai.is_some() => None,
            None => {
                apis.push(None);
                continue;
            }
        };
        let service_level = match service {
            Some((_, service)) => service.policies.over(&config.policies),
            None => config.policies.clone(),
        };
        let subscription = service.map_or(SubscriptionMode::Open, |(_, s)| s.subscription);
        let effective = api.policies.over(&service_level);
        if effective.is_empty() && subscription == SubscriptionMode::Open {
            apis.push(None);
            continue;
        }
        // Where a policy was declared: its counter scope (shared by every API
        // that inherits the declaration) and its field path.
        let declared = |pick: fn(&Policies) -> bool| {
            if pick(&api.policies) {
                (format!("api:{}", api.name), format!("apis[{i}].policies"))
            } else if let Some((index, service)) = service.filter(|(_, s)| pick(&s.policies)) {
                (
                    format!("service:{}", service.name),
                    format!("services[{index}].policies"),
                )
            } else {
                ("global".to_string(), "policies".to_string())
            }
        };
        let scope = |pick: fn(&Policies) -> bool| declared(pick).0;
        let validator = match &effective.validate {
            Some(policy) => {
                let path = declared(|p| p.validate.is_some()).1;
                validators
                    .entry(path)
                    .or_insert_with_key(|path| match BodyValidator::compile(policy) {
                        Ok(validator) => Some(Arc::new(validator)),
                        Err(message) => {
                            errors.push(ConfigError::new(
                                format!("{path}.validate.json_schema"),
                                message,
                            ));
                            None
                        }
                    })
                    .clone()
            }
            None => None,
        };
        let size_limit = effective.request_size.as_ref().map(|s| s.max_body.bytes());
        let max_body = match (size_limit, validator.as_ref().map(|v| v.max_body())) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let headers = effective.headers.as_ref();
        apis.push(Some(Arc::new(ApiPolicies {
            api: api.name.as_str().into(),
            service: service.map_or("", |(_, s)| s.name.as_str()).into(),
            ip: effective.ip.as_ref().map(IpRules::compile),
            cors: effective.cors.as_ref().map(Cors::compile),
            auth: effective.auth.as_ref().map(Authenticator::compile),
            acl: effective.acl.as_ref().map(Acl::compile),
            subscription,
            rate_limits: effective
                .rate_limit
                .as_deref()
                .map(|limits| RateLimits::compile(limits, &scope(|p| p.rate_limit.is_some())))
                .filter(|limits| !limits.is_empty()),
            quota: effective
                .quota
                .as_ref()
                .map(|quota| QuotaPolicy::compile(quota, &scope(|p| p.quota.is_some()))),
            max_body,
            validator,
            request_headers: headers
                .map(|h| HeaderTransform::compile(&h.request))
                .filter(|t| !t.is_empty()),
            response_headers: headers
                .map(|h| HeaderTransform::compile(&h.response))
                .filter(|t| !t.is_empty()),
            ai_limits: effective
                .ai_limits
                .as_ref()
                .map(|limits| AiLimitsPolicy::compile(limits, &scope(|p| p.ai_limits.is_some()))),
            ai_budget: effective
                .ai_budget
                .as_ref()
                .map(|budget| AiBudgetPolicy::compile(budget, &scope(|p| p.ai_budget.is_some()))),
            ai_guard: effective.ai_guard.clone(),
        })));
    }
    if errors.is_empty() {
        Ok(CompiledPolicies {
            security: Arc::new(security),
            apis,
        })
    } else {
        Err(errors)
    }
}

fn compile_security(
    config: &Config,
    registries: &PolicyRegistries,
    errors: &mut Vec<ConfigError>,
) -> Security {
    let blocks = Blocks::compile(&config.blocks);
    let mut consumers = HashMap::new();
    let mut keys = KeyIndex::default();
    let mut basic = BasicIndex::default();
    let mut certs = CertIndex::default();
    for (i, consumer) in config.consumers.iter().enumerate() {
        let groups: Vec<&str> = consumer.groups.iter().map(String::as_str).collect();
        let mut info = ConsumerInfo::new(&consumer.name, consumer.team.as_deref(), &groups, true);
        info.ai_models = consumer
            .ai_models
            .iter()
            .map(|m| m.as_str().into())
            .collect();
        let info = Arc::new(info);
        consumers.insert(consumer.name.clone(), info.clone());
        for (k, key) in consumer.keys.iter().enumerate() {
            let hash = match (&key.value, &key.hash) {
                (Some(value), _) => value.resolve().map(|v| credentials::hash_key(&v)),
                (None, Some(hash)) => {
                    credentials::parse_hash(hash).ok_or_else(|| "not sha256:<hex>".to_string())
                }
                (None, None) => Err("needs a value or a hash".to_string()),
            };
            match hash {
                Ok(hash) => keys.insert(
                    hash,
                    info.clone(),
                    key.expires.map(|at| at.unix_timestamp()),
                    key.id.as_deref().and_then(|id| blocks.key_block(id)),
                ),
                Err(message) => errors.push(ConfigError::new(
                    format!("consumers[{i}].keys[{k}]"),
                    message,
                )),
            }
        }
        if let Some(credentials) = &consumer.basic {
            let phc = match (&credentials.password, &credentials.password_hash) {
                (_, Some(phc)) => Ok(Arc::from(phc.as_str())),
                (Some(password), None) => password.resolve().and_then(|password| {
                    registries
                        .basic
                        .hash_password(&credentials.username, &password)
                }),
                (None, None) => Err("needs a password or a password_hash".to_string()),
            };
            match phc {
                Ok(phc) => basic.insert(&credentials.username, phc, info.clone()),
                Err(message) => {
                    errors.push(ConfigError::new(format!("consumers[{i}].basic"), message))
                }
            }
        }
        for (c, cert) in consumer.certificates.iter().enumerate() {
            if let Some(subject) = &cert.subject {
                certs.insert_subject(subject, info.clone());
            }
            if let Some(fingerprint) = &cert.fingerprint_sha256 {
                match credentials::parse_fingerprint(fingerprint) {
                    Some(fp) => certs.insert_fingerprint(fp, info.clone()),
                    None => errors.push(ConfigError::new(
                        format!("consumers[{i}].certificates[{c}].fingerprint_sha256"),
                        "must be 64 hex digits",
                    )),
                }
            }
        }
    }

    let own_key = config
        .oauth2_server
        .as_ref()
        .and(registries.signing_key.clone());
    if config.oauth2_server.is_some() && own_key.is_none() {
        errors.push(ConfigError::new(
            "oauth2_server",
            "no signing key is available to this node",
        ));
    }
    let jwt = JwtVerifiers::compile(config, &registries.tokens, own_key.as_deref()).unwrap_or_else(
        |mut e| {
            errors.append(&mut e);
            JwtVerifiers::compile(&Config::default(), &registries.tokens, None)
                .unwrap_or_else(|_| unreachable!("an empty configuration compiles"))
        },
    );
    let introspection =
        Introspectors::compile(config, &registries.tokens).unwrap_or_else(|mut e| {
            errors.append(&mut e);
            Introspectors::compile(&Config::default(), &registries.tokens)
                .unwrap_or_else(|_| unreachable!("an empty configuration compiles"))
        });
    let issuer = match (&config.oauth2_server, own_key) {
        (Some(server), Some(key)) => match TokenIssuer::compile(server, &config.consumers, key) {
            Ok(issuer) => Some(issuer),
            Err(mut e) => {
                errors.append(&mut e);
                None
            }
        },
        _ => None,
    };
    let subscriptions = config
        .subscriptions
        .iter()
        .map(|s| ((s.service.clone(), s.consumer.clone()), s.status))
        .collect();
    Security {
        consumers,
        keys,
        basic,
        basic_registry: registries.basic.clone(),
        certs,
        jwt,
        introspection,
        issuer,
        issuer_limits: config.oauth2_server.as_ref().map(|server| {
            RateLimits::compile(std::slice::from_ref(&server.rate_limit), "oauth2_server")
        }),
        subscriptions,
        blocks,
        counters: registries.counters.clone(),
    }
}

impl ApiPolicies {
    /// Whether the access phase has anything to do: authentication, or a
    /// subscription check (which refuses anonymous callers).
    pub fn needs_authorize(&self) -> bool {
        self.auth.is_some() || self.subscription == SubscriptionMode::Approval
    }

    /// Auth, then access (ACL, subscription). Strips the credential and
    /// returns who the caller is (`None` when the API has no `auth`).
    pub async fn authorize(
        &self,
        security: &Security,
        parts: &mut Parts,
        cert: Option<&ClientCert>,
    ) -> Result<Option<Identity>, Denial> {
        let identity = match &self.auth {
            Some(auth) => Some(auth.authenticate(security, parts, cert).await?),
            None => None,
        };
        if let Some(identity) = &identity {
            security
                .blocks
                .check_consumer(&identity.consumer.name, crate::blocks::now_unix())?;
        }
        if let (Some(acl), Some(identity)) = (&self.acl, &identity) {
            acl.check(identity, &parts.method)?;
        }
        if self.subscription == SubscriptionMode::Approval {
            let Some(identity) = &identity else {
                return Err(Denial::subscription_required(format!(
                    "service {} needs an approved subscription, and this API identifies no consumer",
                    self.service
                )));
            };
            let key = (self.service.to_string(), identity.consumer.name.to_string());
            match security.subscriptions.get(&key) {
                Some(SubscriptionStatus::Approved) => {}
                Some(SubscriptionStatus::Pending) => {
                    return Err(Denial::subscription_pending(format!(
                        "the subscription of {} to {} awaits approval",
                        identity.consumer.name, self.service
                    )))
                }
                Some(SubscriptionStatus::Rejected) => {
                    return Err(Denial::subscription_rejected(format!(
                        "the subscription of {} to {} was rejected",
                        identity.consumer.name, self.service
                    )))
                }
                Some(SubscriptionStatus::Revoked) => {
                    return Err(Denial::subscription_revoked(format!(
                        "the subscription of {} to {} was revoked",
                        identity.consumer.name, self.service
                    )))
                }
                None => {
                    return Err(Denial::subscription_required(format!(
                        "{} has no subscription to {}",
                        identity.consumer.name, self.service
                    )))
                }
            }
        }
        Ok(identity)
    }

    /// Rate limits, then the quota.
    pub async fn limit(
        &self,
        security: &Security,
        identity: Option<&Identity>,
        client_ip: IpAddr,
        headers: &HeaderMap,
    ) -> Result<Option<RateLimitStatus>, Denial> {
        let input = LimitInput {
            consumer: identity.map(|i| &*i.consumer.name),
            client_ip,
            api: &self.api,
            headers,
        };
        let status = match &self.rate_limits {
            Some(limits) => Some(limits.check(&*security.counters, &input).await?),
            None => None,
        };
        if let Some(quota) = &self.quota {
            quota.check(&*security.counters, &input).await?;
        }
        Ok(status)
    }

    /// What upstream learns of the caller, then the configured transforms.
    pub fn transform_request(&self, headers: &mut HeaderMap, identity: Option<&Identity>) {
        if let Some(identity) = identity {
            if let Some(value) = &identity.consumer.name_header {
                headers.insert(X_CONSUMER_NAME.clone(), value.clone());
            }
            if let Some(value) = &identity.consumer.team_header {
                headers.insert(X_CONSUMER_TEAM.clone(), value.clone());
            }
            if let (Some(auth), Some(claims)) = (&self.auth, &identity.claims) {
                for (claim, header) in &auth.forward_claims {
                    let value = match claims.get(claim) {
                        Some(serde_json::Value::String(s)) => HeaderValue::from_str(s).ok(),
                        Some(serde_json::Value::Null) | None => None,
                        Some(other) => HeaderValue::from_str(&other.to_string()).ok(),
                    };
                    if let Some(value) = value {
                        headers.insert(header.clone(), value);
                    }
                }
            }
        }
        if let Some(transform) = &self.request_headers {
            transform.apply(headers);
        }
    }

    /// Whether [`transform_response`](Self::transform_response) may change
    /// or read an answer's headers: the proxy then hands it all of them.
    pub fn edits_response_headers(&self) -> bool {
        self.response_headers.is_some() || self.cors.is_some()
    }

    /// Response transforms and CORS headers for an actual (non-preflight) request.
    pub fn transform_response(
        &self,
        origin: Option<&HeaderValue>,
        response_headers: &mut HeaderMap,
    ) {
        if let Some(transform) = &self.response_headers {
            transform.apply(response_headers);
        }
        self.cors_headers(origin, response_headers);
    }

    /// The CORS headers for a response to a request from `origin`.
    pub fn cors_headers(&self, origin: Option<&HeaderValue>, response_headers: &mut HeaderMap) {
        if let Some(cors) = &self.cors {
            cors.apply_origin(origin, response_headers);
        }
    }

    /// Whether the body must be read and validated before proxying: any
    /// request that carries a body (a GET with a body is no way around the
    /// schema), and POST, PUT and PATCH even without one.
    pub fn buffers_body(&self, method: &Method, has_body: bool) -> bool {
        self.validator.is_some()
            && (has_body || matches!(*method, Method::POST | Method::PUT | Method::PATCH))
    }
}

/// Headers a client may not send upstream, removed from every request before
/// policies run:
///
/// - those identifying a caller, which only the gateway may set, so a client
///   cannot pose as a consumer;
/// - those that make frameworks treat a request as another method or path
///   (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`,
///   `X-Original-URL`, `X-Rewrite-URL`), so the method and path the
///   gateway's routing, ACL and scopes judged are the ones served.
///
/// Spellings with `_` for `-` go too: CGI-style upstreams (WSGI, Rack, PHP)
/// read `X_Consumer_Team` as `X-Consumer-Team`.
pub fn remove_forbidden_request_headers(headers: &mut HeaderMap) {
    let forbidden: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_identity_header(name.as_str()) || is_override_header(name.as_str()))
        .cloned()
        .collect();
    for name in forbidden {
        headers.remove(name);
    }
}

/// Whether `name` asks an upstream framework for another method or path.
fn is_override_header(name: &str) -> bool {
    const OVERRIDES: [&str; 5] = [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x-rewrite-url",
    ];
    // Header names arrive lower-cased.
    OVERRIDES.iter().any(|o| {
        o.len() == name.len()
            && o.bytes()
                .zip(name.bytes())
                .all(|(o, n)| o == n || (o == b'-' && n == b'_'))
    })
}

/// `x-consumer-name`, `x-consumer-team` or `x-claim-*`, with `_` read as `-`.
fn is_identity_header(name: &str) -> bool {
    let same = |a: &[u8], b: &[u8]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x == y || (*x == b'_' && *y == b'-'))
    };
    let name = name.as_bytes();
    same(name, X_CONSUMER_NAME.as_str().as_bytes())
        || same(name, X_CONSUMER_TEAM.as_str().as_bytes())
        || name.get(..8).is_some_and(|start| same(start, b"x-claim-"))
}
