//! The compiled, immutable view of the configuration that the hot path serves.
//!
//! A request loads the current snapshot once and uses it to the end, so a
//! reload never changes the rules under a request in flight. Compiling does
//! all the work a request would otherwise repeat: parsing patterns, building
//! balancers, resolving clients, registering metric handles.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use metrics::{Counter, Histogram};
use tollgate_config::{Config, ConfigError, Lifecycle, PassiveHealth, UpstreamProtocol};
use tollgate_policy::{ApiPolicies, PolicyRegistries, Security};
use tollgate_telemetry::metrics as names;

use crate::client::{ClientKey, ClientRegistry, UpstreamClient};
use crate::lifecycle::{ApiLifecycle, DeprecationRegistry};
use crate::router::{RouteSpec, Router};
use crate::upstream::{Balancer, PickInput, TargetRegistry, TargetState};

/// State that outlives snapshots, keyed by stable names.
pub struct Registries {
    pub targets: TargetRegistry,
    pub clients: ClientRegistry,
    /// Counters, key caches and the token signing key.
    pub policy: PolicyRegistries,
    /// When each deprecated API without `deprecated_at` was first compiled as deprecated.
    pub deprecations: DeprecationRegistry,
    /// Each API's metric handles, registered once and reused by every
    /// snapshot: registering costs a registry look-up per status, which
    /// dominated compiling a thousand APIs.
    pub metrics: ApiMetricsRegistry,
    /// Provider keys' health and the AI response caches.
    pub ai: crate::ai::AiRegistry,
}

/// [`ApiMetrics`] by API name.
#[derive(Default)]
pub struct ApiMetricsRegistry {
    by_api: std::sync::Mutex<std::collections::HashMap<String, Arc<ApiMetrics>>>,
}

impl ApiMetricsRegistry {
    pub fn get(&self, api: &str) -> Arc<ApiMetrics> {
        let mut by_api = self.by_api.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(metrics) = by_api.get(api) {
            return metrics.clone();
        }
        let metrics = Arc::new(ApiMetrics::new(api));
        by_api.insert(api.to_string(), metrics.clone());
        metrics
    }

    /// Forgets the APIs `keep` says are gone.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.by_api
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|api, _| keep(api));
    }
}

impl Registries {
    pub fn new(policy: PolicyRegistries) -> Registries {
        Registries {
            targets: TargetRegistry::default(),
            clients: ClientRegistry::default(),
            policy,
            deprecations: DeprecationRegistry::default(),
            metrics: ApiMetricsRegistry::default(),
            ai: crate::ai::AiRegistry::default(),
        }
    }
}

pub struct Snapshot {
    pub router: Router,
    pub apis: Vec<ApiRuntime>,
    pub services: HashMap<String, Arc<ServiceRuntime>>,
    pub max_uri: usize,
    pub max_body: u64,
    pub trusted_proxies: Vec<IpNet>,
    /// `Strict-Transport-Security` for TLS responses.
    pub hsts: Option<HeaderValue>,
    /// When set, plain-HTTP requests are redirected to HTTPS on this port.
    pub redirect_https_port: Option<u16>,
    /// Credential indexes, token verifiers, subscriptions.
    pub security: Arc<Security>,
    /// The configuration this snapshot was compiled from.
    pub config: Arc<Config>,
    /// LLM providers, models and prices.
    pub ai: Arc<crate::ai::AiRuntime>,
}

pub struct ApiRuntime {
    pub name: Arc<str>,
    /// `None` for an AI API, which `ai` serves.
    pub service: Option<Arc<ServiceRuntime>>,
    pub ai: Option<Arc<crate::ai::AiApi>>,
    pub strip_prefix: Option<String>,
    pub preserve_host: bool,
    pub metrics: Arc<ApiMetrics>,
    /// `None` when no policy applies: the pipeline then skips every policy phase.
    pub policies: Option<Arc<ApiPolicies>>,
    /// A deprecated API's headers, a retired API's answer.
    pub lifecycle: ApiLifecycle,
}

pub struct ServiceRuntime {
    pub name: Arc<str>,
    pub targets: Vec<Arc<TargetState>>,
    pub weights: Vec<u32>,
    pub balancer: Balancer,
    pub client: UpstreamClient,
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub retries: u32,
    pub passive: PassiveHealth,
    pub http2: bool,
}

impl ServiceRuntime {
    /// Whether requests to this target go through the lean HTTP/1.1 pool
    /// (plain `http://` targets not forced to HTTP/2).
    pub fn uses_pool(&self, target: &TargetState) -> bool {
        !self.http2 && target.scheme == http::uri::Scheme::HTTP
    }

    pub fn pick(&self, input: &PickInput<'_>, tried: u64) -> Option<usize> {
        self.balancer
            .pick(&self.targets, &self.weights, input, tried)
    }
}

/// Metric handles registered once per API, so recording costs no lookup.
pub struct ApiMetrics {
    api: Arc<str>,
    duration: Histogram,
    /// Counters for the statuses most responses have; others go through the registry.
    common: Vec<(u16, Counter)>,
}

const COMMON_STATUSES: [u16; 16] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 405, 429, 500, 502, 503, 504,
];

impl ApiMetrics {
    fn new(api: &str) -> ApiMetrics {
        let label = api.to_string();
        ApiMetrics {
            api: api.into(),
            duration: metrics::histogram!(names::REQUEST_DURATION, "api" => label.clone()),
            common: COMMON_STATUSES
                .iter()
                .map(|&status| {
                    (
                        status,
                        metrics::counter!(names::REQUESTS_TOTAL, "api" => label.clone(), "status" => status.to_string()),
                    )
                })
                .collect(),
        }
    }

    pub fn observe(&self, status: u16, elapsed: Duration) {
        self.duration.record(elapsed.as_secs_f64());
        match self.common.iter().find(|(s, _)| *s == status) {
            Some((_, counter)) => counter.increment(1),
            None => metrics::counter!(names::REQUESTS_TOTAL, "api" => self.api.to_string(), "status" => status.to_string())
                .increment(1),
        }
    }

    /// For requests no API took (no route, malformed).
    pub fn observe_unrouted(status: u16, elapsed: Duration) {
        metrics::histogram!(names::REQUEST_DURATION, "api" => "").record(elapsed.as_secs_f64());
        metrics::counter!(names::REQUESTS_TOTAL, "api" => "", "status" => status.to_string())
            .increment(1);
    }
}

impl Snapshot {
    /// Compiles a validated configuration. Fails only on what validation
    /// cannot see (unreadable CA files and the like), with field paths.
    pub fn compile(
        config: Arc<Config>,
        registries: &Registries,
    ) -> Result<Snapshot, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut services = HashMap::new();
        for (i, service) in config.services.iter().enumerate() {
            let upstream = &service.upstream;
            let mut targets = Vec::new();
            let mut weights = Vec::new();
            let mut ca = None;
            for (t, target) in upstream.targets.iter().enumerate() {
                match registries.targets.get(&service.name, &target.url) {
                    Some(state) => {
                        targets.push(state);
                        weights.push(target.weight.max(1));
                    }
                    None => errors.push(ConfigError::new(
                        format!("services[{i}].upstream.targets[{t}].url"),
                        "not a usable URL",
                    )),
                }
                if target.ca.is_some() {
                    if ca.is_some() && ca != target.ca {
                        errors.push(ConfigError::new(
                            format!("services[{i}].upstream.targets[{t}].ca"),
                            "all targets of a service must use the same CA file",
                        ));
                    }
                    ca = target.ca.clone();
                }
            }
            if targets.len() > 64 {
                errors.push(ConfigError::new(
                    format!("services[{i}].upstream.targets"),
                    "at most 64 targets per service",
                ));
            }
            let key = ClientKey {
                ca,
                connect_timeout: upstream.timeouts.connect.get(),
                idle_timeout: upstream.timeouts.idle.get(),
                protocol: upstream.protocol,
            };
            let client = match registries.clients.get(&key) {
                Ok(client) => client,
                Err(message) => {
                    errors.push(ConfigError::new(
                        format!("services[{i}].upstream.targets"),
                        message,
                    ));
                    continue;
                }
            };
            let runtime = ServiceRuntime {
                name: service.name.as_str().into(),
                balancer: Balancer::new(&upstream.balance, &weights),
                targets,
                weights,
                client,
                response_timeout: upstream.timeouts.response.get(),
                connect_timeout: upstream.timeouts.connect.get(),
                idle_timeout: upstream.timeouts.idle.get(),
                retries: upstream.retries,
                passive: upstream.passive_health.clone(),
                http2: upstream.protocol == UpstreamProtocol::Http2,
            };
            services.insert(service.name.clone(), Arc::new(runtime));
        }

        let mut compiled_policies = match tollgate_policy::compile(&config, &registries.policy) {
            Ok(compiled) => Some(compiled),
            Err(mut policy_errors) => {
                errors.append(&mut policy_errors);
                None
            }
        };
        let ai = crate::ai::AiRuntime::compile(
            &config,
            &registries.ai,
            &registries.clients,
            &mut errors,
        );
        let mut apis = Vec::new();
        let mut specs = Vec::new();
        for (i, api) in config.apis.iter().enumerate() {
            let service = services.get(&api.service).cloned();
            if service.is_none() && api.ai.is_none() {
                // A service that failed to compile has its own error already.
                if !config.services.iter().any(|s| s.name == api.service) {
                    errors.push(ConfigError::new(
                        format!("apis[{i}].service"),
                        format!("no service named `{}`", api.service),
                    ));
                }
                continue;
            }
            // A draft is compiled (so its errors show) but not routed: its
            // requests get what any unmatched request gets.
            let policies = compiled_policies
                .as_mut()
                .and_then(|c| c.apis.get_mut(i).and_then(Option::take));
            let ai_api = crate::ai::AiApi::compile(
                api,
                &format!("apis[{i}]"),
                policies.as_ref().and_then(|p| p.ai_guard.as_ref()),
                &registries.ai,
                &mut errors,
            )
            .map(Arc::new);
            if api.lifecycle == Lifecycle::Draft {
                continue;
            }
            let headers = api
                .matcher
                .headers
                .iter()
                .filter_map(|(name, value)| {
                    Some((
                        HeaderName::from_bytes(name.as_bytes()).ok()?,
                        HeaderValue::from_str(value).ok()?,
                    ))
                })
                .collect();
            specs.push(RouteSpec {
                api: apis.len(),
                hosts: &api.matcher.hosts,
                paths: &api.matcher.paths,
                methods: &api.matcher.methods,
                headers,
            });
            apis.push(ApiRuntime {
                name: api.name.as_str().into(),
                service,
                ai: ai_api,
                strip_prefix: api
                    .strip_prefix
                    .as_ref()
                    .map(|p| p.trim_end_matches('/').to_string())
                    .filter(|p| !p.is_empty()),
                preserve_host: api.preserve_host,
                metrics: registries.metrics.get(&api.name),
                policies,
                lifecycle: ApiLifecycle::compile(api, &config, &registries.deprecations),
            });
        }
        let security = match compiled_policies {
            Some(compiled) if errors.is_empty() => compiled.security,
            _ => return Err(errors),
        };
        let router = Router::new(specs);
        let tls = config.listen.tls.as_ref();
        let snapshot = Snapshot {
            router,
            apis,
            services,
            max_uri: config.limits.max_uri.as_usize(),
            max_body: config.limits.max_body.bytes(),
            trusted_proxies: config.trusted_proxies.clone(),
            hsts: tls.and_then(|t| t.hsts).and_then(|d| {
                HeaderValue::from_str(&format!("max-age={}", d.get().as_secs())).ok()
            }),
            redirect_https_port: tls.filter(|t| t.redirect_http).map(|t| t.addr.port()),
            security,
            config: config.clone(),
            ai: Arc::new(ai),
        };
        Ok(snapshot)
    }

    pub fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        !self.trusted_proxies.is_empty() && self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}
