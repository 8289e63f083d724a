//! Checks for the AI gateway's resources: providers that can be reached,
//! models whose targets exist, AI APIs that serve something, and AI policies
//! that make sense.

use std::collections::HashSet;

use crate::ai::{AiProviderKind, PII_KINDS};
use crate::model::Config;
use crate::policy::Policies;

type Err<'a> = dyn FnMut(String, String) + 'a;

pub(crate) fn validate(config: &Config, err: &mut Err<'_>) {
    let ai = &config.ai;
    let mut providers = HashSet::new();
    for (i, provider) in ai.providers.iter().enumerate() {
        let at = format!("ai.providers[{i}]");
        crate::validate::check_name(&provider.name, &format!("{at}.name"), err);
        if !providers.insert(provider.name.as_str()) {
            err(
                format!("{at}.name"),
                format!("duplicate provider `{}`", provider.name),
            );
        }
        match &provider.base_url {
            Some(url) => {
                let ok = url.parse::<http::Uri>().is_ok_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https"))
                        && u.host().is_some()
                        && u.query().is_none()
                });
                if !ok {
                    err(
                        format!("{at}.base_url"),
                        "must be an http:// or https:// URL without a query".into(),
                    );
                }
            }
            None if provider.kind.needs_base_url() => err(
                format!("{at}.base_url"),
                format!("a `{}` provider needs its base_url", provider.kind.as_str()),
            ),
            None => {}
        }
        if provider.keys.is_empty() && !matches!(provider.kind, AiProviderKind::OpenAiCompatible) {
            err(
                format!("{at}.keys"),
                format!(
                    "a `{}` provider needs at least one key",
                    provider.kind.as_str()
                ),
            );
        }
        for (k, key) in provider.keys.iter().enumerate() {
            if let Err(message) = key.resolve() {
                err(format!("{at}.keys[{k}]"), message);
            }
        }
    }

    let mut models = HashSet::new();
    for (i, model) in ai.models.iter().enumerate() {
        let at = format!("ai.models[{i}]");
        if model.name.is_empty() || model.name.len() > 200 || model.name.contains('/') {
            err(
                format!("{at}.name"),
                "must be 1 to 200 characters without '/' (a '/' names provider/model)".into(),
            );
        }
        if !models.insert(model.name.as_str()) {
            err(
                format!("{at}.name"),
                format!("duplicate model `{}`", model.name),
            );
        }
        if model.targets.is_empty() {
            err(
                format!("{at}.targets"),
                "at least one target is needed".into(),
            );
        }
        if !model.targets.is_empty() && model.targets.iter().all(|t| t.weight == 0) {
            err(
                format!("{at}.targets"),
                "at least one target needs a weight above 0".into(),
            );
        }
        let lists = [("targets", &model.targets), ("fallbacks", &model.fallbacks)];
        for (list, targets) in lists {
            for (t, target) in targets.iter().enumerate() {
                if !providers.contains(target.provider.as_str()) {
                    err(
                        format!("{at}.{list}[{t}].provider"),
                        format!("no provider named `{}`", target.provider),
                    );
                }
                if target.model.is_empty() {
                    err(
                        format!("{at}.{list}[{t}].model"),
                        "must not be empty".into(),
                    );
                }
            }
        }
        if model.retry.attempts == 0 {
            err(format!("{at}.retry.attempts"), "must be at least 1".into());
        }
        if model.timeout.get().is_zero() {
            err(format!("{at}.timeout"), "must be more than 0s".into());
        }
    }

    for (i, price) in ai.prices.iter().enumerate() {
        let at = format!("ai.prices[{i}]");
        if !providers.contains(price.provider.as_str()) {
            err(
                format!("{at}.provider"),
                format!("no provider named `{}`", price.provider),
            );
        }
        let amounts = [
            ("input", Some(price.input)),
            ("output", Some(price.output)),
            ("cached_input", price.cached_input),
            ("reasoning", price.reasoning),
        ];
        for (field, amount) in amounts {
            if amount.is_some_and(|a| !a.is_finite() || a < 0.0) {
                err(
                    format!("{at}.{field}"),
                    "must be a price of 0 or more".into(),
                );
            }
        }
    }

    // A model a client may name: a configured one, or `provider/model`.
    let known_model = |name: &str| {
        models.contains(name)
            || name
                .split_once('/')
                .is_some_and(|(provider, model)| providers.contains(provider) && !model.is_empty())
    };

    for (i, consumer) in config.consumers.iter().enumerate() {
        for (m, model) in consumer.ai_models.iter().enumerate() {
            if !known_model(model) {
                err(
                    format!("consumers[{i}].ai_models[{m}]"),
                    format!("no model named `{model}`"),
                );
            }
        }
    }
    check_ai_policies(&config.policies, "policies", &known_model, err);
    for (i, service) in config.services.iter().enumerate() {
        check_ai_policies(
            &service.policies,
            &format!("services[{i}].policies"),
            &known_model,
            err,
        );
    }
    for (i, api) in config.apis.iter().enumerate() {
        let at = format!("apis[{i}]");
        check_ai_policies(&api.policies, &format!("{at}.policies"), &known_model, err);
        let Some(api_ai) = &api.ai else { continue };
        if !api.service.is_empty() {
            err(
                format!("{at}.service"),
                "an AI API (with `ai`) has no service: the providers serve it".into(),
            );
        }
        if api.strip_prefix.is_some() {
            err(
                format!("{at}.strip_prefix"),
                "has no meaning on an AI API".into(),
            );
        }
        if let Some(prompt) = &api_ai.prompt {
            if !api_ai.endpoints.is_empty() {
                err(
                    format!("{at}.ai.endpoints"),
                    "a prompt API serves its prompt only; remove endpoints or prompt".into(),
                );
            }
            if !known_model(&prompt.model) {
                err(
                    format!("{at}.ai.prompt.model"),
                    format!("no model named `{}`", prompt.model),
                );
            }
            for name in prompt.variables.keys() {
                let ok = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !ok {
                    err(
                        format!("{at}.ai.prompt.variables.{name}"),
                        "variable names are letters, digits and '_'".into(),
                    );
                }
            }
            for (name, schema) in &prompt.variables {
                if !schema.is_object() {
                    err(
                        format!("{at}.ai.prompt.variables.{name}"),
                        "must be a JSON Schema object such as { type: string }".into(),
                    );
                }
            }
            match placeholders(&prompt.template) {
                Ok(names) => {
                    for name in names {
                        if !prompt.variables.contains_key(name) {
                            err(
                                format!("{at}.ai.prompt.template"),
                                format!("`{{{{{name}}}}}` names no declared variable"),
                            );
                        }
                    }
                }
                Err(message) => err(format!("{at}.ai.prompt.template"), message),
            }
        }
        if let Some(cache) = &api_ai.cache {
            if cache.ttl.get().is_zero() {
                err(format!("{at}.ai.cache.ttl"), "must be more than 0s".into());
            }
            if cache.max_entries == 0 {
                err(
                    format!("{at}.ai.cache.max_entries"),
                    "must be at least 1".into(),
                );
            }
        }
    }
}

/// The variable names a template places, in order; `{{ name }}` with
/// optional spaces. Anything else between `{{` and `}}` is an error, so a
/// template cannot hide logic.
pub fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err("a `{{` is not closed by `}}`".into());
        };
        let name = after[..end].trim();
        let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(format!(
                "`{{{{{}}}}}`: a placeholder is one variable name",
                &after[..end]
            ));
        }
        names.push(name);
        rest = &after[end + 2..];
    }
    Ok(names)
}

fn check_ai_policies(
    policies: &Policies,
    at: &str,
    known_model: &dyn Fn(&str) -> bool,
    err: &mut Err<'_>,
) {
    if let Some(limits) = &policies.ai_limits {
        if limits.tokens_per_minute.is_none() && limits.requests_per_minute.is_none() {
            err(
                format!("{at}.ai_limits"),
                "set tokens_per_minute, requests_per_minute or both".into(),
            );
        }
        if limits.tokens_per_minute == Some(0) {
            err(
                format!("{at}.ai_limits.tokens_per_minute"),
                "must be at least 1".into(),
            );
        }
        if limits.requests_per_minute == Some(0) {
            err(
                format!("{at}.ai_limits.requests_per_minute"),
                "must be at least 1".into(),
            );
        }
        if let Err(message) =
            crate::policy::check_store_settings(limits.scope, limits.on_store_failure)
        {
            err(format!("{at}.ai_limits.on_store_failure"), message);
        }
    }
    if let Some(budget) = &policies.ai_budget {
        if !budget.usd.is_finite() || budget.usd <= 0.0 {
            err(format!("{at}.ai_budget.usd"), "must be more than 0".into());
        }
        if let Err(message) =
            crate::policy::check_store_settings(budget.scope, budget.on_store_failure)
        {
            err(format!("{at}.ai_budget.on_store_failure"), message);
        }
    }
    if let Some(guard) = &policies.ai_guard {
        for (k, kind) in guard.mask_pii.iter().enumerate() {
            if !PII_KINDS.contains(&kind.as_str()) {
                err(
                    format!("{at}.ai_guard.mask_pii[{k}]"),
                    format!("unknown kind `{kind}`: use {}", PII_KINDS.join(", ")),
                );
            }
        }
        for (k, pattern) in guard.deny_patterns.iter().enumerate() {
            if let Err(error) = regex::Regex::new(pattern) {
                err(
                    format!("{at}.ai_guard.deny_patterns[{k}]"),
                    format!("not a valid pattern: {error}"),
                );
            }
        }
        if guard.max_output_tokens == Some(0) {
            err(
                format!("{at}.ai_guard.max_output_tokens"),
                "must be at least 1".into(),
            );
        }
        for (k, model) in guard.allow_models.iter().enumerate() {
            if !known_model(model) {
                err(
                    format!("{at}.ai_guard.allow_models[{k}]"),
                    format!("no model named `{model}`"),
                );
            }
        }
    }
}
