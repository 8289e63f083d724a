//! The configuration document: node settings and the resources it serves.
//!
//! Every struct denies unknown fields so that a typo is an error, not a setting
//! silently ignored. Defaults live here, next to the field, and are listed in
//! `docs/configuration.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::ai::{Ai, ApiAi};
use crate::identity::{
    Block, Consumer, IdentityProvider, OAuth2Server, Subscription, SubscriptionMode, Team,
};
use crate::policy::Policies;
use crate::units::{Duration, Size, Timestamp};

/// One YAML document: the node's settings and its resources.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub storage: Storage,
    /// This node among the nodes sharing a database.
    #[serde(default, skip_serializing_if = "NodeSettings::is_empty")]
    pub node: NodeSettings,
    #[serde(default)]
    pub access_log: AccessLog,
    #[serde(default)]
    pub limits: Limits,
    /// Peers whose `X-Forwarded-*`, `Forwarded` and `X-Request-Id` headers are believed.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub trusted_proxies: Vec<IpNet>,
    /// How long SIGTERM waits for in-flight requests before the process exits.
    #[serde(default = "defaults::shutdown_grace")]
    pub shutdown_grace: Duration,
    /// Global policies; a service's or an API's own replace them one by one.
    #[serde(default, skip_serializing_if = "Policies::is_empty")]
    pub policies: Policies,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<Team>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identity_providers: Vec<IdentityProvider>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<Consumer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_server: Option<OAuth2Server>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<Subscription>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<Block>,
    /// LLM providers, the models clients name, and prices.
    #[serde(default, skip_serializing_if = "Ai::is_empty")]
    pub ai: Ai,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub apis: Vec<Api>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    #[serde(default = "defaults::proxy_addr")]
    pub proxy: SocketAddr,
    #[serde(default = "defaults::admin_addr")]
    pub admin: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsListen>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            proxy: defaults::proxy_addr(),
            admin: defaults::admin_addr(),
            tls: None,
        }
    }
}

/// `node:`: who this node is among the nodes sharing a database.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// The node's name in the node list (`GET /admin/v1/nodes`), unique
    /// among the nodes of one database. Default: the host's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl NodeSettings {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsListen {
    pub addr: SocketAddr,
    /// Certificate chains; the one whose names match the client's SNI is served,
    /// the first one when none matches.
    pub certificates: Vec<CertificateFiles>,
    /// When true, the plain proxy listener answers every request with a redirect to HTTPS.
    #[serde(default)]
    pub redirect_http: bool,
    /// `Strict-Transport-Security` max-age sent on TLS responses; absent means no header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<Duration>,
    /// PEM file of CAs that client certificates (the `mtls` auth method) must chain to.
    /// Without it the listener asks for no client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// `sqlite://PATH` (embedded default) or `postgres://USER@HOST:PORT/DB`
    /// (several nodes sharing one database; node-local files then live in
    /// `./tollgate-data`), or `env:NAME` for a URL with a password in it.
    #[serde(default = "defaults::database")]
    pub database: String,
    /// `redis://HOST:PORT[/DB]`, `rediss://…` (TLS), `unix:///PATH`, a
    /// Redis Cluster's nodes comma-separated (or one as
    /// `redis+cluster://HOST:PORT`), or `env:NAME` for a URL with a
    /// password in it: rate limits, quotas, AI
    /// token limits and budgets then count in this Redis, shared by every
    /// node that uses it. Without it each node counts on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    /// Put before every key written to `redis`, so that several gateways can
    /// share one server.
    #[serde(default = "defaults::redis_prefix")]
    pub redis_prefix: String,
    /// Where the node keeps the last configuration it served, sealed with
    /// the master key, to serve it when it starts while the database is
    /// unreachable. Default with PostgreSQL: `<data dir>/last-good.snapshot`;
    /// with SQLite (local: it is there or the node cannot start) none
    /// unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_cache: Option<std::path::PathBuf>,
    /// Where access records wait, on disk, while PostgreSQL is unreachable
    /// (with SQLite, unused).
    #[serde(default)]
    pub spool: SpoolSettings,
}

/// The access-record spool (`storage.spool`): with PostgreSQL, batches of
/// access records written while the database is unreachable go to files in
/// this directory, and to the database once it answers.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpoolSettings {
    /// The spool's directory. Default: `<data dir>/access-spool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The most the spool holds on disk; batches past it are dropped and
    /// counted (`tollgate_access_spool_dropped_total`).
    #[serde(default = "defaults::spool_max_size")]
    pub max_size: Size,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings {
            path: None,
            max_size: defaults::spool_max_size(),
        }
    }
}

impl Storage {
    /// The database URL: `database` itself, or the value of the variable an
    /// `env:NAME` names (an error message when it is unset or empty).
    pub fn url(&self) -> Result<String, String> {
        match self.database.strip_prefix("env:") {
            Some(name) => crate::Secret::Env(name.trim().to_string()).resolve(),
            None => Ok(self.database.clone()),
        }
    }

    /// The Redis URL, if `redis` is set: itself, or the value of the
    /// variable an `env:NAME` names (an error message when it is unset or
    /// empty).
    pub fn redis_url(&self) -> Result<Option<String>, String> {
        let Some(redis) = &self.redis else {
            return Ok(None);
        };
        match redis.strip_prefix("env:") {
            Some(name) => crate::Secret::Env(name.trim().to_string())
                .resolve()
                .map(Some),
            None => Ok(Some(redis.clone())),
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            database: defaults::database(),
            redis: None,
            redis_prefix: defaults::redis_prefix(),
            snapshot_cache: None,
            spool: SpoolSettings::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// A JSON-lines file that receives every access record, besides the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Records waiting to be written; past this, new records are dropped and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer: Option<usize>,
    /// How long access records are kept in the database; older ones are
    /// deleted in the background. The audit log is never pruned.
    #[serde(default = "defaults::access_retention")]
    pub retention: Duration,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog {
            file: None,
            buffer: None,
            retention: defaults::access_retention(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "defaults::max_uri")]
    pub max_uri: Size,
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: Size,
    #[serde(default = "defaults::max_headers")]
    pub max_headers: usize,
    #[serde(default = "defaults::max_body")]
    pub max_body: Size,
    #[serde(default = "defaults::header_timeout")]
    pub header_timeout: Duration,
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uri: defaults::max_uri(),
            max_header_bytes: defaults::max_header_bytes(),
            max_headers: defaults::max_headers(),
            max_body: defaults::max_body(),
            header_timeout: defaults::header_timeout(),
            idle_timeout: defaults::idle_timeout(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// `approval`: only consumers with an approved subscription may call its APIs.
    #[serde(default)]
    pub subscription: SubscriptionMode,
    pub upstream: Upstream,
    #[serde(default, skip_serializing_if = "Policies::is_empty")]
    pub policies: Policies,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub targets: Vec<Target>,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Further attempts on another target after a connect failure, for idempotent
    /// requests without a body.
    #[serde(default)]
    pub retries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub passive_health: PassiveHealth,
    /// `http1`, `http2` (prior knowledge, for h2c/gRPC upstreams) or `auto`
    /// (HTTP/2 when TLS ALPN offers it, else HTTP/1.1).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub url: String,
    #[serde(default = "defaults::weight")]
    pub weight: u32,
    /// PEM file of CA certificates to verify an `https://` target against, instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
    HashHeader(String),
    HashIp,
}

impl FromStr for Balance {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round_robin" => Ok(Balance::RoundRobin),
            "least_conn" => Ok(Balance::LeastConn),
            "hash(ip)" => Ok(Balance::HashIp),
            _ => {
                if let Some(name) = s
                    .strip_prefix("hash(header:")
                    .and_then(|rest| rest.strip_suffix(')'))
                {
                    if http::HeaderName::from_bytes(name.as_bytes()).is_ok() {
                        return Ok(Balance::HashHeader(name.to_ascii_lowercase()));
                    }
                    return Err(format!("`{name}` is not a valid header name"));
                }
                Err(format!(
                    "unknown balance `{s}`: use round_robin, least_conn, hash(header:NAME) or hash(ip)"
                ))
            }
        }
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Balance::RoundRobin => f.write_str("round_robin"),
            Balance::LeastConn => f.write_str("least_conn"),
            Balance::HashHeader(name) => write!(f, "hash(header:{name})"),
            Balance::HashIp => f.write_str("hash(ip)"),
        }
    }
}

impl Serialize for Balance {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Balance {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Auto,
    Http1,
    Http2,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default = "defaults::connect_timeout")]
    pub connect: Duration,
    /// Until the upstream's response headers arrive.
    #[serde(default = "defaults::response_timeout")]
    pub response: Duration,
    /// How long an unused pooled upstream connection is kept.
    #[serde(default = "defaults::upstream_idle_timeout")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: defaults::connect_timeout(),
            response: defaults::response_timeout(),
            idle: defaults::upstream_idle_timeout(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: String,
    #[serde(default = "defaults::health_interval")]
    pub interval: Duration,
    #[serde(default = "defaults::health_timeout")]
    pub timeout: Duration,
    #[serde(default = "defaults::unhealthy_after")]
    pub unhealthy_after: u32,
    #[serde(default = "defaults::healthy_after")]
    pub healthy_after: u32,
}

/// Passive ejection: a target that fails `failures` times in a row (connect
/// errors, timeouts) is taken out of rotation for `cooldown`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealth {
    #[serde(default = "defaults::passive_failures")]
    pub failures: u32,
    #[serde(default = "defaults::passive_cooldown")]
    pub cooldown: Duration,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            failures: defaults::passive_failures(),
            cooldown: defaults::passive_cooldown(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Api {
    pub name: String,
    /// The service it proxies to; an AI API (`ai` set) has none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(rename = "match")]
    pub matcher: Match,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<String>,
    /// Send the client's `Host` upstream instead of the target's.
    #[serde(default)]
    pub preserve_host: bool,
    #[serde(default, skip_serializing_if = "Policies::is_empty")]
    pub policies: Policies,
    /// Informational (`"2"`, `"2024-06"`); the admin API shows it, routing ignores it.
    /// A whole number may be written without quotes.
    #[serde(
        default,
        deserialize_with = "version_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub version: Option<String>,
    /// Where the API is in its life; see `docs/versions.md`.
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// When the API will stop (or stopped) being served: the `Sunset` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sunset: Option<Timestamp>,
    /// The API that replaces this one: its first path is sent as the
    /// `Link: <…>; rel="successor-version"` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<String>,
    /// When the API was deprecated: the `Deprecation` header. Without it, a
    /// deprecated API's header carries the time this node first served it as such.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated_at: Option<Timestamp>,
    /// Served by the AI gateway instead of a service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai: Option<ApiAi>,
    /// Labels for the developer portal's catalogue (`payments`, `beta`);
    /// routing ignores them. An imported OpenAPI operation keeps its tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// `version: 2` and `version: "2"` alike; `version: 1.10` would silently be
/// `1.1`, so a number with a fraction must be quoted.
fn version_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct VersionVisitor;
    impl de::Visitor<'_> for VersionVisitor {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a version such as \"2\" or \"2024-06\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(E::custom(
                "write a version with a fraction in quotes (\"1.10\"), or it reads as a number",
            ))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(VersionVisitor)
}

/// The stages of an API's life. Each one changes how the gateway answers for it.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Not served: requests get what an unmatched request gets (`404 no_route`).
    Draft,
    /// Served.
    #[default]
    Published,
    /// Served, with `Deprecation`, `Sunset` and `Link` headers on every answer.
    Deprecated,
    /// Answered by the gateway with `410 api_retired`; the upstream is never contacted.
    Retired,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Exact host names or `*.suffix` wildcards; empty matches any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Prefix paths (`/orders`), with `{param}` segments, or exact paths (`=/health`).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Empty matches any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Request headers that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Default values, one function per field so serde and `Default` share them.
pub mod defaults {
    use super::*;

    pub fn proxy_addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8000))
    }
    pub fn admin_addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8001))
    }
    pub fn database() -> String {
        "sqlite://tollgate-data/tollgate.db".to_string()
    }
    pub fn redis_prefix() -> String {
        "tollgate:".to_string()
    }
    pub fn spool_max_size() -> Size {
        Size::mib(1024)
    }
    pub fn shutdown_grace() -> Duration {
        Duration::from_secs(30)
    }
    pub fn access_retention() -> Duration {
        Duration::from_secs(30 * 86_400)
    }
    pub fn max_uri() -> Size {
        Size::kib(8)
    }
    pub fn max_header_bytes() -> Size {
        Size::kib(32)
    }
    pub fn max_headers() -> usize {
        100
    }
    pub fn max_body() -> Size {
        Size::mib(10)
    }
    pub fn header_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn weight() -> u32 {
        1
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn response_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn upstream_idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn health_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn health_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn unhealthy_after() -> u32 {
        3
    }
    pub fn healthy_after() -> u32 {
        2
    }
    pub fn passive_failures() -> u32 {
        3
    }
    pub fn passive_cooldown() -> Duration {
        Duration::from_secs(10)
    }
}
