//! Policies, declared at the top level, on a service or on an API. For each
//! policy the most specific level that declares it wins, whole: an API's
//! `rate_limit` replaces the service's list, it is not merged with it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::units::{Duration, Size};

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policies {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<AclPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Vec<RateLimit>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_size: Option<RequestSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate: Option<ValidatePolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeadersPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai_limits: Option<crate::ai::AiLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai_budget: Option<crate::ai::AiBudget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai_guard: Option<crate::ai::AiGuard>,
}

impl Policies {
    /// This level's policies over `base`'s: per policy, the more specific one wins.
    pub fn over(&self, base: &Policies) -> Policies {
        fn pick<T: Clone>(own: &Option<T>, base: &Option<T>) -> Option<T> {
            own.clone().or_else(|| base.clone())
        }
        Policies {
            auth: pick(&self.auth, &base.auth),
            acl: pick(&self.acl, &base.acl),
            rate_limit: pick(&self.rate_limit, &base.rate_limit),
            quota: pick(&self.quota, &base.quota),
            ip: pick(&self.ip, &base.ip),
            request_size: pick(&self.request_size, &base.request_size),
            validate: pick(&self.validate, &base.validate),
            cors: pick(&self.cors, &base.cors),
            headers: pick(&self.headers, &base.headers),
            ai_limits: pick(&self.ai_limits, &base.ai_limits),
            ai_budget: pick(&self.ai_budget, &base.ai_budget),
            ai_guard: pick(&self.ai_guard, &base.ai_guard),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Policies::default()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthPolicy {
    /// Accepted methods; a request passes with the first one whose credential it carries.
    pub methods: Vec<AuthMethod>,
    /// Also look for the API key in this query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_query_param: Option<String>,
    /// Header carrying the API key besides `Authorization: Bearer`.
    #[serde(default = "defaults::key_header")]
    pub key_header: String,
    /// JWT claims sent upstream as `X-Claim-<Name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_claims: Vec<String>,
    /// Identity providers accepted for `jwt`/`introspection`; empty accepts all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identity_providers: Vec<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    Key,
    Jwt,
    Introspection,
    Basic,
    Mtls,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AclPolicy {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_consumers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_consumers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_teams: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_teams: Vec<String>,
    /// Scopes a JWT identity needs, per method (`*` for any method).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scopes: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub limit: u64,
    pub window: Duration,
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
    /// For very hot keys of a `cluster` limit: each node admits from its own
    /// view of the count (at most its share of what remained) and sends
    /// what it admitted to Redis in one call per interval, instead of one
    /// call per request. The limit may then be exceeded by a bounded amount
    /// (see docs/cluster.md). Unset: every request counts in Redis, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_interval: Option<Duration>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub limit: u64,
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

/// Where a limit counts when `storage.redis` is set (without it, every limit
/// counts in the node's memory).
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// In Redis, shared by every node: the limit holds for the cluster.
    #[default]
    Cluster,
    /// In this node's memory: the limit holds per node.
    Node,
}

impl LimitScope {
    pub fn is_cluster(&self) -> bool {
        *self == LimitScope::Cluster
    }
}

/// Checks a limit's `scope` and `on_store_failure` together: a `node` limit
/// never counts in Redis, so a failure mode on it is a mistake.
pub(crate) fn check_store_settings(
    scope: LimitScope,
    on_store_failure: Option<OnStoreFailure>,
) -> Result<(), String> {
    match (scope, on_store_failure) {
        (LimitScope::Node, Some(mode)) => Err(format!(
            "`on_store_failure: {}` applies to `scope: cluster` limits only; a `scope: node` limit never counts in Redis",
            mode.as_str()
        )),
        _ => Ok(()),
    }
}

/// What a `cluster` limit does while its counter store (Redis) fails.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreFailure {
    /// Count in this node's memory, the limit divided by the live node count.
    #[default]
    Local,
    /// Admit the request uncounted (fail open).
    Allow,
    /// Refuse the request with 503 `limit_unavailable` (fail closed).
    Deny,
}

impl OnStoreFailure {
    /// `local`, `allow` or `deny`: as configured, and as the metric's label.
    pub fn as_str(self) -> &'static str {
        match self {
            OnStoreFailure::Local => "local",
            OnStoreFailure::Allow => "allow",
            OnStoreFailure::Deny => "deny",
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuotaPeriod {
    Day,
    Month,
}

/// What a limit counts by. `consumer` falls back to the client IP for
/// unauthenticated requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum LimitKey {
    #[default]
    Consumer,
    Ip,
    Api,
    /// The value of a request header (lower-case name).
    Header(String),
}

impl FromStr for LimitKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "consumer" => Ok(LimitKey::Consumer),
            "ip" => Ok(LimitKey::Ip),
            "api" => Ok(LimitKey::Api),
            _ => match s.strip_prefix("header:") {
                Some(name) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                    Ok(LimitKey::Header(name.to_ascii_lowercase()))
                }
                _ => Err(format!(
                    "unknown key `{s}`: use consumer, ip, api or header:NAME"
                )),
            },
        }
    }
}

impl fmt::Display for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitKey::Consumer => f.write_str("consumer"),
            LimitKey::Ip => f.write_str("ip"),
            LimitKey::Api => f.write_str("api"),
            LimitKey::Header(name) => write!(f, "header:{name}"),
        }
    }
}

impl Serialize for LimitKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LimitKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// Client IP rules; `deny` wins over `allow`; a non-empty `allow` admits only its networks.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpPolicy {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub allow: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub deny: Vec<IpNet>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestSize {
    pub max_body: Size,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidatePolicy {
    /// A JSON Schema (draft 2020-12 unless `$schema` says otherwise) for request bodies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<serde_json::Value>,
    /// Deepest nesting of arrays and objects accepted, checked before parsing.
    #[serde(default = "defaults::max_json_depth")]
    pub max_depth: usize,
    /// Largest JSON body read for validation.
    #[serde(default = "defaults::max_json_body")]
    pub max_body: Size,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsPolicy {
    /// Exact origins (`https://app.example.com`) or `*`.
    pub origins: Vec<String>,
    #[serde(default = "defaults::cors_methods")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub credentials: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadersPolicy {
    #[serde(default)]
    pub request: HeaderOps,
    #[serde(default)]
    pub response: HeaderOps,
}

/// Applied in the order rename → remove → set.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
}

mod defaults {
    use super::Size;

    pub(super) fn key_header() -> String {
        "x-api-key".to_string()
    }
    pub(super) fn max_json_depth() -> usize {
        32
    }
    pub(super) fn max_json_body() -> Size {
        Size::mib(1)
    }
    pub(super) fn cors_methods() -> Vec<String> {
        ["GET", "HEAD", "POST"].map(String::from).to_vec()
    }
}
