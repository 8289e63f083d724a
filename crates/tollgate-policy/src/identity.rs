//! Who a request is, once authenticated.

use std::sync::Arc;

use tollgate_config::AuthMethod;

/// A consumer as the hot path needs it, built once per snapshot.
#[derive(Debug)]
pub struct ConsumerInfo {
    pub name: Arc<str>,
    pub team: Option<Arc<str>>,
    pub groups: Vec<Arc<str>>,
    /// False for a token subject that no `consumers:` entry declares: such an
    /// identity is authenticated but belongs to no team or group.
    pub registered: bool,
    /// The AI models this consumer may call (`ai_models`); empty: any its
    /// APIs allow.
    pub ai_models: Vec<Arc<str>>,
    /// `X-Consumer-Name` and `X-Consumer-Team` values, made once.
    pub name_header: Option<http::HeaderValue>,
    pub team_header: Option<http::HeaderValue>,
}

impl ConsumerInfo {
    pub fn new(name: &str, team: Option<&str>, groups: &[&str], registered: bool) -> ConsumerInfo {
        ConsumerInfo {
            name: name.into(),
            team: team.map(Into::into),
            groups: groups.iter().map(|g| (*g).into()).collect(),
            registered,
            ai_models: Vec::new(),
            name_header: http::HeaderValue::from_str(name).ok(),
            team_header: team.and_then(|t| http::HeaderValue::from_str(t).ok()),
        }
    }

    /// An identity vouched for by a trusted token issuer but not declared here.
    pub fn unregistered(name: &str) -> ConsumerInfo {
        ConsumerInfo::new(name, None, &[], false)
    }
}

#[derive(Clone, Debug)]
pub struct Identity {
    pub consumer: Arc<ConsumerInfo>,
    pub method: AuthMethod,
    /// The verified token's claims (jwt, introspection).
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// Granted scopes for token identities; `None` for keys, basic and mTLS,
    /// which per-method scope rules do not apply to.
    pub scopes: Option<Arc<[String]>>,
}
