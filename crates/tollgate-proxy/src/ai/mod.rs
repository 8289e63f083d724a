//! The AI gateway's side of the data plane: providers with their keys and
//! clients, the models clients name, prices, and what each AI API serves —
//! compiled once per snapshot. [`handler`] serves requests with them.
//!
//! State that must outlive a snapshot (a key found bad, a key cooling down
//! after a 429, cached answers) lives in [`AiRegistry`], keyed by stable
//! names, so a configuration change does not forget it.

pub(crate) mod attempts;
pub(crate) mod cache;
pub(crate) mod handler;
pub(crate) mod prompt;
pub(crate) mod stream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use tollgate_ai::guard::{Guard, PiiKind};
use tollgate_ai::prices::Price;
use tollgate_ai::providers::{self, Provider, ProviderKind};
use tollgate_config::{AiEndpoint, AiProviderKind, Api, Config, ConfigError, RetryOn};

use crate::client::{ClientKey, ClientRegistry, UpstreamClient};
use crate::h1_client::H1Pool;

/// A provider key's identity across snapshots: the provider's name and the
/// key's SHA-256.
type KeyId = (String, [u8; 32]);

/// AI state that outlives snapshots.
#[derive(Default)]
pub struct AiRegistry {
    /// By provider name and the key's SHA-256 (never the key itself).
    keys: Mutex<HashMap<KeyId, Arc<KeyState>>>,
    /// By API name.
    caches: Mutex<HashMap<String, Arc<cache::ResponseCache>>>,
    /// Kept-alive connections to plain-HTTP providers, by `host:port`.
    plain_pools: Mutex<HashMap<String, Arc<H1Pool>>>,
}

impl AiRegistry {
    fn key(&self, provider: &str, secret: String, number: usize) -> Arc<KeyState> {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let state = keys
            .entry((provider.to_string(), digest))
            .or_insert_with(|| {
                Arc::new(KeyState {
                    secret: secret.clone(),
                    number,
                    bad: AtomicBool::new(false),
                    cool_until_ms: AtomicU64::new(0),
                })
            });
        if state.number == number {
            state.clone()
        } else {
            // The same key moved in the list: keep its health, new position.
            let moved = Arc::new(KeyState {
                secret,
                number,
                bad: AtomicBool::new(state.bad.load(Ordering::Relaxed)),
                cool_until_ms: AtomicU64::new(state.cool_until_ms.load(Ordering::Relaxed)),
            });
            *state = moved.clone();
            moved
        }
    }

    /// The lean client's pool for a provider at `base_url`, when it is
    /// plain `http://` (TLS providers go through hyper's client).
    fn plain_pool(&self, base_url: &str) -> Option<Arc<H1Pool>> {
        let uri: http::Uri = base_url.parse().ok()?;
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
            return None;
        }
        let authority = format!("{}:{}", uri.host()?, uri.port_u16().unwrap_or(80));
        let mut pools = self.plain_pools.lock().unwrap_or_else(|p| p.into_inner());
        Some(
            pools
                .entry(authority.clone())
                .or_insert_with(|| Arc::new(H1Pool::new(authority)))
                .clone(),
        )
    }

    fn cache(&self, api: &str, ttl: Duration, max_entries: usize) -> Arc<cache::ResponseCache> {
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        match caches.get(api) {
            Some(cache) if cache.has_settings(ttl, max_entries) => cache.clone(),
            _ => {
                let cache = Arc::new(cache::ResponseCache::new(ttl, max_entries));
                caches.insert(api.to_string(), cache.clone());
                cache
            }
        }
    }
}

/// One provider key and what the gateway learnt about it.
pub struct KeyState {
    secret: String,
    /// Its position in the provider's `keys`, from 1: what records show.
    pub number: usize,
    /// Refused by the provider (401/403): not used again until the
    /// configuration changes it.
    bad: AtomicBool,
    /// Unix milliseconds until which a 429 asked to wait.
    cool_until_ms: AtomicU64,
}

impl KeyState {
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    pub(crate) fn usable(&self, now_ms: u64) -> bool {
        !self.bad.load(Ordering::Relaxed) && self.cool_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    pub(crate) fn mark_bad(&self) {
        if !self.bad.swap(true, Ordering::Relaxed) {
            tracing::warn!(key = self.number, "provider key refused: no longer used");
        }
    }

    pub(crate) fn cool_down(&self, wait: Duration) {
        let until = now_ms().saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        self.cool_until_ms.fetch_max(until, Ordering::Relaxed);
    }
}

/// Never prints the key.
impl std::fmt::Debug for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyState(#{})", self.number)
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub struct ProviderRuntime {
    pub name: Arc<str>,
    pub kind: ProviderKind,
    pub adapter: Box<dyn Provider>,
    /// Empty for a keyless local server.
    pub keys: Vec<Arc<KeyState>>,
    pub client: UpstreamClient,
    /// For a plain-HTTP provider: the lean client, used instead of `client`.
    pub(crate) plain: Option<Arc<H1Pool>>,
}

/// Where a model is served: one provider's model.
#[derive(Clone)]
pub struct AiTargetRuntime {
    pub provider: Arc<ProviderRuntime>,
    pub model: Arc<str>,
    pub weight: u32,
    /// `X-Tollgate-Provider` and `X-Tollgate-Model` for its answers, made once.
    pub answer_headers: Arc<[(HeaderName, HeaderValue)]>,
    /// What its tokens cost (the configuration's price, else the built-in
    /// table's), looked up once per snapshot rather than per call.
    pub price: Option<Price>,
}

impl AiTargetRuntime {
    fn new(
        provider: Arc<ProviderRuntime>,
        model: &str,
        weight: u32,
        price: Option<Price>,
    ) -> AiTargetRuntime {
        let answer_headers = [
            (&handler::X_TOLLGATE_PROVIDER, &*provider.name),
            (&handler::X_TOLLGATE_MODEL, model),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name.clone(), HeaderValue::from_str(value).ok()?)))
        .collect();
        AiTargetRuntime {
            provider,
            model: model.into(),
            weight,
            answer_headers,
            price,
        }
    }
}

pub struct ModelRuntime {
    pub name: Arc<str>,
    pub targets: Vec<AiTargetRuntime>,
    pub fallbacks: Vec<AiTargetRuntime>,
    pub attempts: u32,
    pub retry_statuses: Vec<u16>,
    pub retry_timeout: bool,
    pub timeout: Duration,
}

impl ModelRuntime {
    /// `model` over `runtime`'s providers and prices.
    fn compile(model: &tollgate_config::AiModel, runtime: &AiRuntime) -> Option<ModelRuntime> {
        let resolve = |targets: &[tollgate_config::AiTarget]| -> Option<Vec<AiTargetRuntime>> {
            targets
                .iter()
                .map(|t| {
                    let provider = runtime.providers.get(&t.provider)?.clone();
                    let price = runtime.price(&provider, &t.model);
                    Some(AiTargetRuntime::new(provider, &t.model, t.weight, price))
                })
                .collect()
        };
        Some(ModelRuntime::new(
            &model.name,
            resolve(&model.targets)?,
            resolve(&model.fallbacks)?,
            &model.retry,
            model.timeout.get(),
        ))
    }

    /// The most a call with these token bounds can cost (micro-USD): at
    /// its dearest target or fallback, 0 where no price is known. What an
    /// `ai_budget` holds before the call.
    pub fn cost_bound(&self, input: u64, output: u64) -> u64 {
        let usage = tollgate_ai::Usage {
            input,
            output,
            cached_input: 0,
            reasoning: 0,
        };
        self.targets
            .iter()
            .chain(&self.fallbacks)
            .filter_map(|target| target.price.as_ref())
            .map(|price| tollgate_ai::prices::cost_micro_usd(price, &usage))
            .max()
            .unwrap_or(0)
    }

    /// A model named `provider/model` directly: that one target, with the
    /// default retry policy and timeout.
    fn direct(
        name: &str,
        provider: Arc<ProviderRuntime>,
        model: &str,
        price: Option<Price>,
    ) -> ModelRuntime {
        ModelRuntime::new(
            name,
            vec![AiTargetRuntime::new(provider, model, 1, price)],
            Vec::new(),
            &tollgate_config::AiRetry::default(),
            Duration::from_secs(60),
        )
    }

    fn new(
        name: &str,
        targets: Vec<AiTargetRuntime>,
        fallbacks: Vec<AiTargetRuntime>,
        retry: &tollgate_config::AiRetry,
        timeout: Duration,
    ) -> ModelRuntime {
        ModelRuntime {
            name: name.into(),
            targets,
            fallbacks,
            attempts: retry.attempts.max(1),
            retry_statuses: retry
                .on
                .iter()
                .filter_map(|on| match on {
                    RetryOn::Status(status) => Some(*status),
                    RetryOn::Timeout => None,
                })
                .collect(),
            retry_timeout: retry.on.contains(&RetryOn::Timeout),
            timeout,
        }
    }
}

/// The providers, models and prices of one snapshot.
#[derive(Default)]
pub struct AiRuntime {
    pub providers: HashMap<String, Arc<ProviderRuntime>>,
    pub models: HashMap<String, Arc<ModelRuntime>>,
    /// The configuration's prices, by provider name and model.
    prices: HashMap<(String, String), Price>,
}

impl AiRuntime {
    pub fn compile(
        config: &Config,
        registry: &AiRegistry,
        clients: &ClientRegistry,
        errors: &mut Vec<ConfigError>,
    ) -> AiRuntime {
        let mut runtime = AiRuntime::default();
        if !config.ai.providers.is_empty() {
            // Building the tokenizer takes a while: not in the first request.
            std::thread::spawn(tollgate_ai::tokens::warm_up);
        }
        for (i, provider) in config.ai.providers.iter().enumerate() {
            let kind = provider_kind(provider.kind);
            let base_url = provider
                .base_url
                .as_deref()
                .or_else(|| providers::default_base_url(kind))
                .unwrap_or_default();
            let mut keys = Vec::new();
            for (k, secret) in provider.keys.iter().enumerate() {
                match secret.resolve() {
                    Ok(value) => keys.push(registry.key(&provider.name, value, k + 1)),
                    Err(message) => errors.push(ConfigError::new(
                        format!("ai.providers[{i}].keys[{k}]"),
                        message,
                    )),
                }
            }
            let key = ClientKey {
                ca: provider.ca.clone(),
                connect_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(90),
                protocol: tollgate_config::UpstreamProtocol::Auto,
            };
            let client = match clients.get(&key) {
                Ok(client) => client,
                Err(message) => {
                    errors.push(ConfigError::new(format!("ai.providers[{i}].ca"), message));
                    continue;
                }
            };
            runtime.providers.insert(
                provider.name.clone(),
                Arc::new(ProviderRuntime {
                    name: provider.name.as_str().into(),
                    kind,
                    adapter: providers::adapter(kind, base_url),
                    keys,
                    client,
                    plain: registry.plain_pool(base_url),
                }),
            );
        }
        for price in &config.ai.prices {
            runtime.prices.insert(
                (price.provider.clone(), price.model.clone()),
                Price {
                    input: price.input,
                    output: price.output,
                    cached_input: price.cached_input,
                    reasoning: price.reasoning,
                },
            );
        }
        // After the prices: each target's is looked up here, once.
        for model in &config.ai.models {
            if let Some(compiled) = ModelRuntime::compile(model, &runtime) {
                runtime
                    .models
                    .insert(model.name.clone(), Arc::new(compiled));
            }
        }
        runtime
    }

    /// The model a client named: a configured one, or `provider/model`.
    pub fn resolve(&self, name: &str) -> Option<Arc<ModelRuntime>> {
        if let Some(model) = self.models.get(name) {
            return Some(model.clone());
        }
        let (provider, model) = name.split_once('/')?;
        let provider = self.providers.get(provider)?;
        (!model.is_empty()).then(|| {
            let price = self.price(provider, model);
            Arc::new(ModelRuntime::direct(name, provider.clone(), model, price))
        })
    }

    /// The price of `model` at `provider`: the configuration's, else the
    /// built-in table's; `None` when unknown.
    fn price(&self, provider: &ProviderRuntime, model: &str) -> Option<Price> {
        self.prices
            .get(&(provider.name.to_string(), model.to_string()))
            .copied()
            .or_else(|| tollgate_ai::prices::builtin(provider.kind, model))
    }
}

fn provider_kind(kind: AiProviderKind) -> ProviderKind {
    match kind {
        AiProviderKind::OpenAi => ProviderKind::OpenAi,
        AiProviderKind::Anthropic => ProviderKind::Anthropic,
        AiProviderKind::Gemini => ProviderKind::Gemini,
        AiProviderKind::Mistral => ProviderKind::Mistral,
        AiProviderKind::AzureOpenAi => ProviderKind::AzureOpenAi,
        AiProviderKind::OpenAiCompatible => ProviderKind::OpenAiCompatible,
    }
}

/// The `ai_guard` policy, compiled.
pub struct GuardRuntime {
    pub guard: Guard,
    pub max_output_tokens: Option<u64>,
    /// Empty allows every model.
    pub allow_models: Vec<String>,
}

impl GuardRuntime {
    pub fn allows(&self, model: &str) -> bool {
        self.allow_models.is_empty() || self.allow_models.iter().any(|m| m == model)
    }
}

/// What one AI API serves.
pub struct AiApi {
    pub endpoints: Vec<AiEndpoint>,
    pub prompt: Option<prompt::PromptRuntime>,
    pub cache: Option<Arc<cache::ResponseCache>>,
    pub guard: Option<GuardRuntime>,
}

impl AiApi {
    pub fn compile(
        api: &Api,
        at: &str,
        guard: Option<&tollgate_config::AiGuard>,
        registry: &AiRegistry,
        errors: &mut Vec<ConfigError>,
    ) -> Option<AiApi> {
        let ai = api.ai.as_ref()?;
        let guard = match guard {
            Some(guard) => {
                let kinds: Vec<PiiKind> = guard
                    .mask_pii
                    .iter()
                    .filter_map(|kind| kind.parse().ok())
                    .collect();
                match Guard::new(&kinds, &guard.deny_patterns) {
                    Ok(compiled) => Some(GuardRuntime {
                        guard: compiled,
                        max_output_tokens: guard.max_output_tokens,
                        allow_models: guard.allow_models.clone(),
                    }),
                    Err(message) => {
                        errors.push(ConfigError::new(
                            format!("{at}.policies.ai_guard.deny_patterns"),
                            message,
                        ));
                        None
                    }
                }
            }
            None => None,
        };
        let prompt = match &ai.prompt {
            Some(prompt) => match prompt::PromptRuntime::compile(prompt) {
                Ok(compiled) => Some(compiled),
                Err(message) => {
                    errors.push(ConfigError::new(format!("{at}.ai.prompt"), message));
                    None
                }
            },
            None => None,
        };
        Some(AiApi {
            endpoints: ai.served_endpoints(),
            prompt,
            cache: ai
                .cache
                .as_ref()
                .map(|c| registry.cache(&api.name, c.ttl.get(), c.max_entries)),
            guard,
        })
    }
}
