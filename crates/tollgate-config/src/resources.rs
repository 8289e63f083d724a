//! A configuration seen as resources: the node's own settings (listeners,
//! storage, limits, global policies …), which only the file sets, and the
//! named resources the store keeps and the admin API edits one by one —
//! teams, identity providers, consumers, services, APIs, subscriptions and
//! blocks.
//!
//! [`split`] takes a configuration apart into resources; [`assemble`] puts
//! node settings and resources back together and validates the result as a
//! whole, so that a change to one resource is checked against all others.

use std::fmt;

use serde_json::Value;

use crate::{validate, Config, ConfigError};

/// A kind of resource, named as the YAML file names its list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Teams,
    IdentityProviders,
    Consumers,
    AiProviders,
    AiModels,
    /// Named `<provider>:<model>`.
    AiPrices,
    Services,
    Apis,
    Subscriptions,
    Blocks,
}

impl Kind {
    /// Every kind, in the order a configuration lists them.
    pub const ALL: [Kind; 10] = [
        Kind::Teams,
        Kind::IdentityProviders,
        Kind::Consumers,
        Kind::AiProviders,
        Kind::AiModels,
        Kind::AiPrices,
        Kind::Services,
        Kind::Apis,
        Kind::Subscriptions,
        Kind::Blocks,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Teams => "teams",
            Kind::IdentityProviders => "identity_providers",
            Kind::Consumers => "consumers",
            Kind::Services => "services",
            Kind::Apis => "apis",
            Kind::Subscriptions => "subscriptions",
            Kind::Blocks => "blocks",
            Kind::AiProviders => "ai/providers",
            Kind::AiModels => "ai/models",
            Kind::AiPrices => "ai/prices",
        }
    }

    /// Where the kind's list sits in a whole configuration's field paths
    /// (`ai.providers` for `ai/providers`).
    pub fn config_path(self) -> &'static str {
        match self {
            Kind::AiProviders => "ai.providers",
            Kind::AiModels => "ai.models",
            Kind::AiPrices => "ai.prices",
            other => other.as_str(),
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The field that names a resource of this kind: `id` for subscriptions
    /// and blocks, `name` for the rest.
    pub fn key_field(self) -> &'static str {
        match self {
            Kind::Subscriptions | Kind::Blocks => "id",
            Kind::AiPrices => "provider:model",
            _ => "name",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One resource: its kind, its name (or id) and its JSON, the YAML file's fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub kind: Kind,
    pub name: String,
    /// The team that owns it: a team itself, a service's or consumer's
    /// `team`, an API's service's team, a subscription's service's team.
    pub team: Option<String>,
    pub body: Value,
}

/// The node's settings alone: `config` without its resources.
pub fn node_settings(config: &Config) -> Config {
    Config {
        teams: Vec::new(),
        identity_providers: Vec::new(),
        consumers: Vec::new(),
        services: Vec::new(),
        apis: Vec::new(),
        subscriptions: Vec::new(),
        blocks: Vec::new(),
        ai: crate::Ai::default(),
        ..config.clone()
    }
}

/// `config`'s resources, in the order the file lists them within each kind.
/// Subscriptions without an `id` get their derived one written in.
pub fn split(config: &Config) -> Vec<Resource> {
    let mut out = Vec::new();
    let mut push = |kind: Kind, name: String, team: Option<String>, body: Value| {
        out.push(Resource {
            kind,
            name,
            team,
            body,
        })
    };
    let to_json = |value: &dyn erased::Serialize| value.to_json();
    for team in &config.teams {
        push(
            Kind::Teams,
            team.name.clone(),
            Some(team.name.clone()),
            to_json(team),
        );
    }
    for idp in &config.identity_providers {
        push(
            Kind::IdentityProviders,
            idp.name.clone(),
            None,
            to_json(idp),
        );
    }
    for consumer in &config.consumers {
        push(
            Kind::Consumers,
            consumer.name.clone(),
            consumer.team.clone(),
            to_json(consumer),
        );
    }
    for provider in &config.ai.providers {
        push(
            Kind::AiProviders,
            provider.name.clone(),
            None,
            to_json(provider),
        );
    }
    for model in &config.ai.models {
        push(Kind::AiModels, model.name.clone(), None, to_json(model));
    }
    for price in &config.ai.prices {
        push(Kind::AiPrices, price_key(price), None, to_json(price));
    }
    for service in &config.services {
        push(
            Kind::Services,
            service.name.clone(),
            service.team.clone(),
            to_json(service),
        );
    }
    let service_team = |name: &str| {
        config
            .services
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.team.clone())
    };
    for api in &config.apis {
        push(
            Kind::Apis,
            api.name.clone(),
            service_team(&api.service),
            to_json(api),
        );
    }
    for subscription in &config.subscriptions {
        let mut subscription = subscription.clone();
        let key = subscription.key();
        subscription.id = Some(key.clone());
        push(
            Kind::Subscriptions,
            key,
            service_team(&subscription.service),
            to_json(&subscription),
        );
    }
    for block in &config.blocks {
        push(Kind::Blocks, block.id.clone(), None, to_json(block));
    }
    out
}

/// `node` with `resources` in place of its own, validated as a whole.
/// Resources are appended in the order given, within their kind. A body
/// that does not deserialise is reported at `<kind>/<name>.<field>`.
pub fn assemble<'a>(
    node: &Config,
    resources: impl IntoIterator<Item = (Kind, &'a str, &'a Value)>,
) -> Result<Config, Vec<ConfigError>> {
    let mut config = node_settings(node);
    let mut errors = Vec::new();
    for (kind, name, body) in resources {
        let at = format!("{kind}/{name}");
        let result = match kind {
            Kind::Teams => decode(body).map(|v| config.teams.push(v)),
            Kind::IdentityProviders => decode(body).map(|v| config.identity_providers.push(v)),
            Kind::Consumers => decode(body).map(|v| config.consumers.push(v)),
            Kind::Services => decode(body).map(|v| config.services.push(v)),
            Kind::Apis => decode(body).map(|v| config.apis.push(v)),
            Kind::Subscriptions => decode(body).map(|v| config.subscriptions.push(v)),
            Kind::Blocks => decode(body).map(|v| config.blocks.push(v)),
            Kind::AiProviders => decode(body).map(|v| config.ai.providers.push(v)),
            Kind::AiModels => decode(body).map(|v| config.ai.models.push(v)),
            Kind::AiPrices => decode(body).map(|v| config.ai.prices.push(v)),
        };
        if let Err(error) = result {
            errors.push(ConfigError::new(join_path(&at, &error.path), error.message));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let errors = validate::validate(&config);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors
            .into_iter()
            .map(|e| ConfigError::new(resource_path(&config, &e.path), e.message))
            .collect())
    }
}

/// The team that owns `kind`/`name` in `config`, as [`Resource::team`] says.
pub fn team_of(config: &Config, kind: Kind, name: &str) -> Option<String> {
    let service_team = |service: &str| {
        config
            .services
            .iter()
            .find(|s| s.name == service)
            .and_then(|s| s.team.clone())
    };
    match kind {
        Kind::Teams => Some(name.to_string()),
        Kind::IdentityProviders
        | Kind::Blocks
        | Kind::AiProviders
        | Kind::AiModels
        | Kind::AiPrices => None,
        Kind::Consumers => config
            .consumers
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.team.clone()),
        Kind::Services => service_team(name),
        Kind::Apis => config
            .apis
            .iter()
            .find(|a| a.name == name)
            .and_then(|a| service_team(&a.service)),
        Kind::Subscriptions => config
            .subscriptions
            .iter()
            .find(|s| s.key() == name)
            .and_then(|s| service_team(&s.service)),
    }
}

/// The name of a price resource: `<provider>:<model>` (provider names have
/// no `:`, so the first one splits it).
pub fn price_key(price: &crate::AiPrice) -> String {
    format!("{}:{}", price.provider, price.model)
}

/// `body` as [`split`] writes a resource of `kind`: decoded and written
/// back, defaults filled in. Two bodies meaning the same compare equal this
/// way; `None` for a body that does not decode.
pub fn normalize(kind: Kind, body: &Value) -> Option<Value> {
    fn again<T: serde::de::DeserializeOwned + serde::Serialize>(body: &Value) -> Option<Value> {
        let typed: T = decode(body).ok()?;
        serde_json::to_value(typed).ok()
    }
    match kind {
        Kind::Teams => again::<crate::Team>(body),
        Kind::IdentityProviders => again::<crate::IdentityProvider>(body),
        Kind::Consumers => again::<crate::Consumer>(body),
        Kind::Services => again::<crate::Service>(body),
        Kind::Apis => again::<crate::Api>(body),
        Kind::Subscriptions => again::<crate::Subscription>(body),
        Kind::Blocks => again::<crate::Block>(body),
        Kind::AiProviders => again::<crate::AiProvider>(body),
        Kind::AiModels => again::<crate::AiModel>(body),
        Kind::AiPrices => again::<crate::AiPrice>(body),
    }
}

/// Deserialises one resource body, with the failing field's path.
pub fn decode<T: serde::de::DeserializeOwned>(body: &Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(body).map_err(|err| {
        let path = crate::render_path(err.path());
        ConfigError::new(path, err.into_inner().to_string())
    })
}

fn join_path(prefix: &str, path: &str) -> String {
    match path {
        "" => prefix.to_string(),
        p if p.starts_with('[') => format!("{prefix}{p}"),
        p => format!("{prefix}.{p}"),
    }
}

/// Where in `config` the resource `kind`/`name` sits: the index in its list.
pub fn position(config: &Config, kind: Kind, name: &str) -> Option<usize> {
    match kind {
        Kind::Teams => config.teams.iter().position(|r| r.name == name),
        Kind::IdentityProviders => config
            .identity_providers
            .iter()
            .position(|r| r.name == name),
        Kind::Consumers => config.consumers.iter().position(|r| r.name == name),
        Kind::Services => config.services.iter().position(|r| r.name == name),
        Kind::Apis => config.apis.iter().position(|r| r.name == name),
        Kind::Subscriptions => config.subscriptions.iter().position(|r| r.key() == name),
        Kind::Blocks => config.blocks.iter().position(|r| r.id == name),
        Kind::AiProviders => config.ai.providers.iter().position(|r| r.name == name),
        Kind::AiModels => config.ai.models.iter().position(|r| r.name == name),
        Kind::AiPrices => config.ai.prices.iter().position(|r| price_key(r) == name),
    }
}

/// Rewrites a whole-configuration error path (`apis[3].match.paths[0]`) to
/// name its resource (`apis/orders-v2.match.paths[0]`), which is what a
/// client of the admin API knows.
pub fn resource_path(config: &Config, path: &str) -> String {
    for kind in Kind::ALL {
        let Some(rest) = path
            .strip_prefix(kind.config_path())
            .and_then(|r| r.strip_prefix('['))
        else {
            continue;
        };
        let Some((index, tail)) = rest.split_once(']') else {
            continue;
        };
        let Ok(index) = index.parse::<usize>() else {
            continue;
        };
        let name = match kind {
            Kind::Teams => config.teams.get(index).map(|r| r.name.clone()),
            Kind::IdentityProviders => config.identity_providers.get(index).map(|r| r.name.clone()),
            Kind::Consumers => config.consumers.get(index).map(|r| r.name.clone()),
            Kind::Services => config.services.get(index).map(|r| r.name.clone()),
            Kind::Apis => config.apis.get(index).map(|r| r.name.clone()),
            Kind::Subscriptions => config.subscriptions.get(index).map(|r| r.key()),
            Kind::Blocks => config.blocks.get(index).map(|r| r.id.clone()),
            Kind::AiProviders => config.ai.providers.get(index).map(|r| r.name.clone()),
            Kind::AiModels => config.ai.models.get(index).map(|r| r.name.clone()),
            Kind::AiPrices => config.ai.prices.get(index).map(price_key),
        };
        if let Some(name) = name {
            return format!("{kind}/{name}{tail}");
        }
    }
    path.to_string()
}

/// Object-safe JSON conversion for the resource types, so [`split`] can
/// treat them alike.
mod erased {
    pub trait Serialize {
        fn to_json(&self) -> serde_json::Value;
    }

    impl<T: serde::Serialize> Serialize for T {
        fn to_json(&self) -> serde_json::Value {
            // The model's types serialise to JSON without fail: string keys,
            // no non-finite floats.
            serde_json::to_value(self).expect("a resource serialises to JSON")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
listen: { proxy: "127.0.0.1:9000" }
teams: [{ name: shop }]
consumers:
  - name: alice
    team: shop
    keys: [{ id: k1, hash: "sha256:0000000000000000000000000000000000000000000000000000000000000000" }]
services:
  - name: orders
    team: shop
    subscription: approval
    upstream: { targets: [{ url: "http://127.0.0.1:9001" }], timeouts: { connect: 2s } }
apis:
  - name: orders-v1
    service: orders
    match: { paths: [/v1/orders] }
subscriptions:
  - { consumer: alice, service: orders, status: approved }
blocks:
  - { id: b1, ip: 10.0.0.0/8, reason: incident }
"#;

    #[test]
    fn split_and_assemble_round_trip() {
        let config = crate::from_yaml(FILE).unwrap();
        let resources = split(&config);
        let names: Vec<String> = resources
            .iter()
            .map(|r| format!("{}/{}", r.kind, r.name))
            .collect();
        assert_eq!(
            names,
            [
                "teams/shop",
                "consumers/alice",
                "services/orders",
                "apis/orders-v1",
                "subscriptions/alice:orders",
                "blocks/b1"
            ]
        );
        assert_eq!(resources[3].team.as_deref(), Some("shop"));
        let back = assemble(
            &config,
            resources.iter().map(|r| (r.kind, r.name.as_str(), &r.body)),
        )
        .unwrap();
        let mut expected = config.clone();
        expected.subscriptions[0].id = Some("alice:orders".into());
        assert_eq!(back, expected);
        assert_eq!(node_settings(&back).listen, config.listen);
    }

    #[test]
    fn assembling_reports_paths_by_resource() {
        let config = crate::from_yaml(FILE).unwrap();
        let bad = serde_json::json!({ "name": "x", "service": "orders", "match": { "pathz": [] } });
        let errors = assemble(&config, [(Kind::Apis, "x", &bad)]).unwrap_err();
        assert!(errors[0].path.starts_with("apis/x.match"), "{errors:?}");

        // A reference that no longer resolves is an error of the whole.
        let api =
            serde_json::json!({ "name": "a", "service": "gone", "match": { "paths": ["/a"] } });
        let errors = assemble(&config, [(Kind::Apis, "a", &api)]).unwrap_err();
        let paths: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
        assert!(paths.iter().any(|p| p == "apis/a.service"), "{paths:?}");
    }

    #[test]
    fn kinds_parse_back() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("users"), None);
    }
}
