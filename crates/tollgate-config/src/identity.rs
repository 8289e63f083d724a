//! Who may call: teams, consumers and their credentials, identity providers,
//! the gateway's own OAuth2 token endpoint, and subscriptions.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::secret::Secret;
use crate::units::Duration;

/// A tenant that owns services and consumers.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Team {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An issuer of JWTs (verified with its JWKS, PEM keys or a shared secret) or
/// an RFC 7662 introspection endpoint for opaque tokens.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityProvider {
    pub name: String,
    /// Required `iss` of its tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Public keys in PEM (RSA, EC or Ed25519), inline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// Shared secret for HS256/384/512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// Accepted `aud` values; empty accepts tokens whatever their audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// The claim whose value names the consumer.
    #[serde(default = "defaults::consumer_claim")]
    pub consumer_claim: String,
    /// The claim holding scopes: a space-separated string or an array.
    #[serde(default = "defaults::scopes_claim")]
    pub scopes_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "defaults::leeway")]
    pub leeway: Duration,
    /// How long fetched keys are used before they are fetched again.
    #[serde(default = "defaults::jwks_refresh")]
    pub jwks_refresh: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection: Option<Introspection>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Introspection {
    pub url: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// How long an active token's answer is reused.
    #[serde(default = "defaults::introspection_cache")]
    pub cache: Duration,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<ConsumerKey>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_credentials: Option<ClientCredentials>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicCredentials>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateMatch>,
    /// The AI models (as clients name them) this consumer may call; empty:
    /// any model its APIs allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ai_models: Vec<String>,
}

/// One API key: its value (from the environment or literal) or only its hash.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerKey {
    /// Names the key in blocks, logs and the admin API; keys the admin API
    /// issues always have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Secret>,
    /// `sha256:<hex>` of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[schemars(with = "Option<String>")]
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires: Option<OffsetDateTime>,
    /// When it was issued, for key-age checks.
    #[schemars(with = "Option<String>")]
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub created: Option<OffsetDateTime>,
}

/// Credentials for `POST /oauth2/token` (client-credentials grant).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCredentials {
    pub client_id: String,
    pub secret: Secret,
    /// Scopes this client may be granted; a request asking for others gets `invalid_scope`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicCredentials {
    pub username: String,
    /// The password; only its argon2 hash is kept in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// An argon2 PHC string, instead of `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
}

/// A client certificate that identifies the consumer on the TLS listener.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateMatch {
    /// The subject DN as RFC 4514 text, like `CN=mobile-app` or `CN=a,O=Example`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// SHA-256 of the DER certificate, hex (colons allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint_sha256: Option<String>,
}

/// Tollgate as a client-credentials authorization server.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Server {
    pub issuer: String,
    #[serde(default = "defaults::token_ttl")]
    pub token_ttl: Duration,
    /// `aud` of the issued tokens, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// PKCS#8 PEM file with the P-256 signing key; when absent a key is
    /// generated once and kept in the data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<PathBuf>,
    /// Token requests admitted per client IP, so client secrets cannot be
    /// guessed at line rate.
    #[serde(default = "defaults::token_rate_limit")]
    pub rate_limit: crate::policy::RateLimit,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Its address in the admin API; `<consumer>:<service>` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub consumer: String,
    pub service: String,
    pub status: SubscriptionStatus,
    /// Why the consumer asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The approver's comment on the last decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl Subscription {
    /// The id the admin API addresses it by.
    pub fn key(&self) -> String {
        match &self.id {
            Some(id) => id.clone(),
            None => format!("{}:{}", self.consumer, self.service),
        }
    }
}

/// An incident-response block: every request of a consumer, of one key, or
/// from an address range is refused with 403 `blocked` until it expires or
/// is lifted.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Block {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// A consumer key's `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub ip: Option<ipnet::IpNet>,
    #[serde(default)]
    pub reason: String,
    #[schemars(with = "Option<String>")]
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires: Option<OffsetDateTime>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Pending,
    Approved,
    Rejected,
    Revoked,
}

/// Whether a service admits any authenticated consumer or only subscribed ones.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionMode {
    #[default]
    Open,
    Approval,
}

mod defaults {
    use super::Duration;

    pub(super) fn consumer_claim() -> String {
        "sub".to_string()
    }
    pub(super) fn scopes_claim() -> String {
        "scope".to_string()
    }
    pub(super) fn leeway() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn jwks_refresh() -> Duration {
        Duration::from_secs(600)
    }
    pub(super) fn introspection_cache() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn token_ttl() -> Duration {
        Duration::from_secs(900)
    }
    pub(super) fn token_rate_limit() -> crate::policy::RateLimit {
        crate::policy::RateLimit {
            limit: 60,
            window: Duration::from_secs(60),
            by: crate::policy::LimitKey::Ip,
            scope: crate::policy::LimitScope::default(),
            on_store_failure: None,
            sync_interval: None,
        }
    }
}
