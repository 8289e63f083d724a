//! The AI gateway's resources: LLM providers (with their keys), the models
//! clients name (targets, fallbacks, retries), prices, and what an API serves
//! (`ai` on an API: OpenAI/Anthropic endpoints, or one prompt as a REST API).

use std::collections::BTreeMap;
use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::policy::QuotaPeriod;
use crate::policy::{LimitKey, LimitScope, OnStoreFailure};
use crate::secret::Secret;
use crate::units::Duration;

/// The top-level `ai` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ai {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<AiProvider>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<AiModel>,
    /// USD per million tokens; these override the built-in table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prices: Vec<AiPrice>,
}

impl Ai {
    pub fn is_empty(&self) -> bool {
        *self == Ai::default()
    }
}

/// One LLM provider account.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AiProvider {
    pub name: String,
    pub kind: AiProviderKind,
    /// API keys (`env:NAME` or the key itself): requests are spread over
    /// them and fail over from one to the next. Empty for keyless local servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub keys: Vec<Secret>,
    /// Defaults per kind; required for `openai_compatible` and `azure_openai`
    /// (`https://NAME.openai.azure.com/openai`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// PEM file of CA certificates for an `https://` base URL, instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum AiProviderKind {
    #[serde(rename = "openai")]
    OpenAi,
    #[serde(rename = "anthropic")]
    Anthropic,
    #[serde(rename = "gemini")]
    Gemini,
    #[serde(rename = "mistral")]
    Mistral,
    #[serde(rename = "azure_openai")]
    AzureOpenAi,
    #[serde(rename = "openai_compatible")]
    OpenAiCompatible,
}

impl AiProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AiProviderKind::OpenAi => "openai",
            AiProviderKind::Anthropic => "anthropic",
            AiProviderKind::Gemini => "gemini",
            AiProviderKind::Mistral => "mistral",
            AiProviderKind::AzureOpenAi => "azure_openai",
            AiProviderKind::OpenAiCompatible => "openai_compatible",
        }
    }

    /// Kinds without a public default address.
    pub fn needs_base_url(self) -> bool {
        matches!(
            self,
            AiProviderKind::AzureOpenAi | AiProviderKind::OpenAiCompatible
        )
    }
}

/// A model name clients send, and where it is served.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AiModel {
    pub name: String,
    /// Chosen by weight for each request.
    pub targets: Vec<AiTarget>,
    /// Tried in order once every target failed with a retryable error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<AiTarget>,
    #[serde(default)]
    pub retry: AiRetry,
    /// Until the provider's response headers arrive, per attempt.
    #[serde(default = "defaults::model_timeout")]
    pub timeout: Duration,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AiTarget {
    pub provider: String,
    /// The provider's model name (for Azure, the deployment).
    pub model: String,
    #[serde(default = "defaults::weight")]
    pub weight: u32,
}

/// Which failures move a request on to the next key, target or fallback.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AiRetry {
    /// Attempts among the targets (each with its keys) before the fallbacks.
    #[serde(default = "defaults::retry_attempts")]
    pub attempts: u32,
    #[serde(default = "defaults::retry_on")]
    pub on: Vec<RetryOn>,
}

impl Default for AiRetry {
    fn default() -> Self {
        AiRetry {
            attempts: defaults::retry_attempts(),
            on: defaults::retry_on(),
        }
    }
}

/// A provider status, or `timeout` (no answer within the model's timeout,
/// or no connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryOn {
    Status(u16),
    Timeout,
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryOn::Status(status) => write!(f, "{status}"),
            RetryOn::Timeout => f.write_str("timeout"),
        }
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RetryOn::Status(status) => s.serialize_u16(*status),
            RetryOn::Timeout => s.serialize_str("timeout"),
        }
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = RetryOn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an HTTP status (400-599) or `timeout`")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RetryOn, E> {
                match u16::try_from(v) {
                    Ok(status @ 400..=599) => Ok(RetryOn::Status(status)),
                    _ => Err(E::custom(format!("{v} is not an error status (400-599)"))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RetryOn, E> {
                self.visit_u64(u64::try_from(v).map_err(|_| E::custom("not a status"))?)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RetryOn, E> {
                if v == "timeout" {
                    return Ok(RetryOn::Timeout);
                }
                match v.parse::<u64>() {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!(
                        "`{v}` is neither an HTTP status nor `timeout`"
                    ))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl schemars::JsonSchema for RetryOn {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RetryOn".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "oneOf": [
                { "type": "integer", "minimum": 400, "maximum": 599 },
                { "const": "timeout" }
            ]
        })
    }
}

/// USD per million tokens of one provider's model.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AiPrice {
    pub provider: String,
    pub model: String,
    pub input: f64,
    pub output: f64,
    /// Defaults to `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
    /// Defaults to `output`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<f64>,
}

/// What an API serves when it is an AI API (it then has no `service`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiAi {
    /// The unified endpoints served under the API's path; all of them when
    /// neither this nor `prompt` is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<AiEndpoint>,
    /// One prompt served as a plain REST endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<PromptApi>,
    /// Exact-match response cache for deterministic requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<AiCache>,
}

impl ApiAi {
    /// The endpoints served: the listed ones, or all of them for an API
    /// that is not a prompt API.
    pub fn served_endpoints(&self) -> Vec<AiEndpoint> {
        if self.endpoints.is_empty() && self.prompt.is_none() {
            AiEndpoint::ALL.to_vec()
        } else {
            self.endpoints.clone()
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AiEndpoint {
    /// `POST <path>/chat/completions` (OpenAI).
    Chat,
    /// `POST <path>/embeddings` (OpenAI).
    Embeddings,
    /// `GET <path>/models` (OpenAI): the models the caller may use.
    Models,
    /// `POST <path>/messages` (Anthropic).
    Messages,
}

impl AiEndpoint {
    pub const ALL: [AiEndpoint; 4] = [
        AiEndpoint::Chat,
        AiEndpoint::Embeddings,
        AiEndpoint::Models,
        AiEndpoint::Messages,
    ];
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptApi {
    /// A configured model or `provider/model`.
    pub model: String,
    /// `{{name}}` places a variable; a variable's value is inserted as text,
    /// it cannot add template syntax.
    pub template: String,
    /// A system prompt sent before the rendered template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Each variable's JSON Schema (`type`, `maxLength`, `enum`…); every
    /// variable is required unless its schema has a `default`.
    #[serde(default)]
    pub variables: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
}

impl PromptApi {
    /// The OpenAPI 3 description of the prompt API `api` (whose `ai.prompt`
    /// this is): one `POST` taking the variables as a JSON object.
    pub fn openapi(&self, api: &crate::Api) -> serde_json::Value {
        use serde_json::json;
        let path = api
            .matcher
            .paths
            .first()
            .map(|p| p.trim_start_matches('=').to_string())
            .unwrap_or_else(|| "/".into());
        let required: Vec<&String> = self
            .variables
            .iter()
            .filter(|(_, schema)| schema.get("default").is_none())
            .map(|(name, _)| name)
            .collect();
        let usage = json!({
            "type": "object",
            "properties": {
                "input_tokens": { "type": "integer" },
                "output_tokens": { "type": "integer" },
                "cost_usd": { "type": "number", "nullable": true }
            }
        });
        let error = json!({ "description": "An error", "content": { "application/json": { "schema": {
            "type": "object",
            "properties": { "error": { "type": "object", "properties": {
                "code": { "type": "string" }, "message": { "type": "string" }
            }}}
        }}}});
        json!({
            "openapi": "3.0.3",
            "info": {
                "title": api.name,
                "version": api.version.clone().unwrap_or_else(|| "1".into()),
                "description": format!("A prompt served by model `{}`.", self.model),
            },
            "paths": { path: { "post": {
                "operationId": api.name,
                "parameters": [{
                    "name": "stream", "in": "query", "required": false,
                    "description": "Stream the answer as server-sent events",
                    "schema": { "type": "boolean" }
                }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object",
                    "properties": self.variables,
                    "required": required,
                    "additionalProperties": false
                }}}},
                "responses": {
                    "200": { "description": "The model's answer", "content": {
                        "application/json": { "schema": {
                            "type": "object",
                            "properties": { "result": { "type": "string" }, "usage": usage },
                            "required": ["result", "usage"]
                        }},
                        "text/event-stream": { "schema": { "type": "string" } }
                    }},
                    "400": error, "401": error, "402": error, "403": error, "429": error,
                    "502": error, "503": error, "504": error
                }
            }}}
        })
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AiCache {
    pub ttl: Duration,
    /// Entries kept at most; the oldest go first.
    #[serde(default = "defaults::cache_entries")]
    pub max_entries: usize,
}

/// Token and request rates for AI calls.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AiLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub by: LimitKey,
    /// With `storage.redis`: counted for the whole cluster (`cluster`, the
    /// default) or in this node's memory (`node`).
    #[serde(default, skip_serializing_if = "LimitScope::is_cluster")]
    pub scope: LimitScope,
    /// What a `cluster` limit does while Redis does not answer (`local` when
    /// unset); refused on a `node` limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_store_failure: Option<OnStoreFailure>,
}

/// Spend cap in USD per calendar period (UTC).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AiBudget {
    pub usd: f64,
    pub period: QuotaPeriod,
    #[serde(default)]
    pub by: LimitKey,
    /// With `storage.redis`: counted for the whole cluster (`cluster`, the
    /// default) or in this node's memory (`node`).
    #[serde(default, skip_serializing_if = "LimitScope::is_cluster")]
    pub scope: LimitScope,
    /// What a `cluster` limit does while Redis does not answer (`local` when
    /// unset); refused on a `node` limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_store_failure: Option<OnStoreFailure>,
}

/// What a prompt may contain and what a call may ask for.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AiGuard {
    /// `email`, `phone`, `card`, `iban`, `secret`: masked before the prompt leaves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mask_pii: Vec<String>,
    /// Regular expressions (no backtracking); a prompt matching one is refused
    /// with 400 `prompt_rejected`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_patterns: Vec<String>,
    /// Requests asking for more output tokens are capped to this; requests
    /// asking none get it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    /// Model names (as clients send them) this API serves; empty allows all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_models: Vec<String>,
}

pub const PII_KINDS: [&str; 5] = ["email", "phone", "card", "iban", "secret"];

mod defaults {
    use crate::units::Duration;

    use super::RetryOn;

    pub fn model_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn weight() -> u32 {
        1
    }
    pub fn retry_attempts() -> u32 {
        2
    }
    pub fn retry_on() -> Vec<RetryOn> {
        [429, 500, 502, 503, 504]
            .into_iter()
            .map(RetryOn::Status)
            .chain([RetryOn::Timeout])
            .collect()
    }
    pub fn cache_entries() -> usize {
        10_000
    }
}
