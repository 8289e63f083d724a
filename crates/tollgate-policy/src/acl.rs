//! Access control: who, among the authenticated, may call an API.
//!
//! Deny lists win. When any allow list is set, the identity must match one
//! of them (its consumer, one of its groups, or its team). Scopes apply to
//! token identities only (JWT, introspection): keys, Basic and mTLS carry none.

use std::collections::{HashMap, HashSet};

use http::Method;
use tollgate_config::AclPolicy;

use crate::denial::Denial;
use crate::identity::Identity;

pub struct Acl {
    allow_consumers: HashSet<String>,
    deny_consumers: HashSet<String>,
    allow_groups: HashSet<String>,
    deny_groups: HashSet<String>,
    allow_teams: HashSet<String>,
    deny_teams: HashSet<String>,
    scopes: HashMap<Method, Vec<String>>,
    any_method_scopes: Vec<String>,
}

fn set(list: &[String]) -> HashSet<String> {
    list.iter().cloned().collect()
}

impl Acl {
    pub fn compile(policy: &AclPolicy) -> Acl {
        let mut scopes = HashMap::new();
        let mut any_method_scopes = Vec::new();
        for (method, needed) in &policy.scopes {
            if method == "*" {
                any_method_scopes = needed.clone();
            } else if let Ok(method) = Method::from_bytes(method.as_bytes()) {
                scopes.insert(method, needed.clone());
            }
        }
        Acl {
            allow_consumers: set(&policy.allow_consumers),
            deny_consumers: set(&policy.deny_consumers),
            allow_groups: set(&policy.allow_groups),
            deny_groups: set(&policy.deny_groups),
            allow_teams: set(&policy.allow_teams),
            deny_teams: set(&policy.deny_teams),
            scopes,
            any_method_scopes,
        }
    }

    pub fn check(&self, identity: &Identity, method: &Method) -> Result<(), Denial> {
        let consumer = &identity.consumer;
        let in_groups =
            |list: &HashSet<String>| consumer.groups.iter().any(|g| list.contains(&**g));
        let in_team = |list: &HashSet<String>| {
            consumer
                .team
                .as_ref()
                .is_some_and(|team| list.contains(&**team))
        };
        let denied = self.deny_consumers.contains(&*consumer.name)
            || in_groups(&self.deny_groups)
            || in_team(&self.deny_teams);
        if denied {
            return Err(Denial::forbidden(format!(
                "consumer {} may not call this API",
                consumer.name
            )));
        }
        let has_allow = !(self.allow_consumers.is_empty()
            && self.allow_groups.is_empty()
            && self.allow_teams.is_empty());
        let allowed = self.allow_consumers.contains(&*consumer.name)
            || in_groups(&self.allow_groups)
            || in_team(&self.allow_teams);
        if has_allow && !allowed {
            return Err(Denial::forbidden(format!(
                "consumer {} may not call this API",
                consumer.name
            )));
        }

        if let Some(granted) = &identity.scopes {
            // HEAD reveals what GET would: without its own rule it needs GET's scopes.
            let needed = self
                .scopes
                .get(method)
                .or_else(|| {
                    (*method == Method::HEAD)
                        .then(|| self.scopes.get(&Method::GET))
                        .flatten()
                })
                .unwrap_or(&self.any_method_scopes);
            if let Some(missing) = needed.iter().find(|s| !granted.contains(s)) {
                return Err(Denial::forbidden(format!(
                    "the token lacks the scope {missing} needed for {method}"
                ))
                .with_header(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_str(&format!(
                        "Bearer realm=\"tollgate\", error=\"insufficient_scope\", scope=\"{}\"",
                        needed.join(" ")
                    ))
                    .unwrap_or(http::HeaderValue::from_static("Bearer realm=\"tollgate\"")),
                ));
            }
        }
        Ok(())
    }
}

/// Shared by tests of the policies that need an identity.
#[cfg(test)]
pub(crate) fn test_identity(
    name: &str,
    team: Option<&str>,
    groups: &[&str],
    scopes: Option<&[&str]>,
) -> Identity {
    Identity {
        consumer: std::sync::Arc::new(crate::identity::ConsumerInfo::new(name, team, groups, true)),
        method: tollgate_config::AuthMethod::Key,
        claims: None,
        scopes: scopes.map(|s| s.iter().map(|s| s.to_string()).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(yaml: &str) -> Acl {
        Acl::compile(&serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn matrix() {
        let partners = test_identity("m", Some("payments"), &["partners"], None);
        let other = test_identity("o", Some("risk"), &["staff"], None);
        let get = Method::GET;

        let by_group = acl("allow_groups: [partners]");
        assert!(by_group.check(&partners, &get).is_ok());
        assert_eq!(by_group.check(&other, &get).unwrap_err().code, "forbidden");

        let by_team = acl("allow_teams: [risk]");
        assert!(by_team.check(&other, &get).is_ok());
        assert!(by_team.check(&partners, &get).is_err());

        let by_consumer = acl("allow_consumers: [o]\nallow_groups: [partners]");
        assert!(by_consumer.check(&other, &get).is_ok());
        assert!(by_consumer.check(&partners, &get).is_ok());

        let deny_wins = acl("allow_groups: [partners]\ndeny_consumers: [m]");
        assert!(deny_wins.check(&partners, &get).is_err());
        let deny_team = acl("deny_teams: [payments]");
        assert!(deny_team.check(&partners, &get).is_err());
        assert!(deny_team.check(&other, &get).is_ok());
        let deny_group = acl("deny_groups: [staff]");
        assert!(deny_group.check(&other, &get).is_err());

        assert!(acl("{}").check(&other, &get).is_ok());
    }

    #[test]
    fn scopes_per_method_for_tokens_only() {
        let rules = acl("scopes: { POST: [orders:write], GET: [orders:read] }");
        let reader = test_identity("r", None, &[], Some(&["orders:read"]));
        assert!(rules.check(&reader, &Method::GET).is_ok());
        let denial = rules.check(&reader, &Method::POST).unwrap_err();
        assert_eq!(denial.code, "forbidden");
        assert!(denial.message.contains("orders:write"));
        // HEAD without a rule of its own needs GET's scopes.
        let nobody = test_identity("n", None, &[], Some(&[]));
        assert!(rules.check(&nobody, &Method::HEAD).is_err());
        assert!(rules.check(&reader, &Method::HEAD).is_ok());
        // No rule for DELETE and no `*`: nothing needed.
        assert!(rules.check(&reader, &Method::DELETE).is_ok());
        // A key identity has no scopes to check.
        let key = test_identity("k", None, &[], None);
        assert!(rules.check(&key, &Method::POST).is_ok());

        let any = acl("scopes: { '*': [admin] }");
        assert!(any.check(&reader, &Method::DELETE).is_err());
    }
}
