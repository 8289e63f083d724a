//! The AI gateway's configuration: the issue's example loads as written, and
//! every mistake is reported at its field.

use std::path::Path;

use tollgate_config::resources::{self, Kind};
use tollgate_config::{from_yaml, AiEndpoint, AiProviderKind, RetryOn};

fn example() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/ai-gateway.yaml"),
    )
    .unwrap()
}

/// The example's secrets: literal values in place of `env:` so that tests
/// need not touch the process environment.
fn example_with_literal_keys() -> String {
    example()
        .replace("env:OPENAI_KEY_1", "sk-test-1")
        .replace("env:OPENAI_KEY_2", "sk-test-2")
        .replace("env:ANTHROPIC_KEY", "sk-ant-test")
        .replace("env:APP_KEY", "tg_app_key_0123456789abcdef0123456789")
}

fn errors(yaml: &str) -> Vec<String> {
    from_yaml(yaml)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn the_example_loads_as_written() {
    let config = from_yaml(&example_with_literal_keys()).unwrap();
    let ai = &config.ai;
    assert_eq!(ai.providers.len(), 3);
    assert_eq!(ai.providers[0].kind, AiProviderKind::OpenAi);
    assert_eq!(ai.providers[0].keys.len(), 2);
    assert_eq!(ai.providers[2].kind, AiProviderKind::OpenAiCompatible);
    let smart = &ai.models[0];
    assert_eq!(smart.targets[0].weight, 3);
    assert_eq!(smart.fallbacks[0].model, "llama3.1");
    assert_eq!(smart.retry.attempts, 2);
    assert!(smart.retry.on.contains(&RetryOn::Timeout));
    assert!(smart.retry.on.contains(&RetryOn::Status(429)));
    assert_eq!(ai.prices[0].cached_input, Some(1.25));
    let llm = &config.apis[0];
    assert!(llm.service.is_empty());
    assert_eq!(
        llm.ai.as_ref().unwrap().served_endpoints(),
        AiEndpoint::ALL.to_vec()
    );
    let policies = &llm.policies;
    assert_eq!(
        policies.ai_limits.as_ref().unwrap().tokens_per_minute,
        Some(100_000)
    );
    assert_eq!(policies.ai_budget.as_ref().unwrap().usd, 50.0);
    assert_eq!(
        policies.ai_guard.as_ref().unwrap().max_output_tokens,
        Some(4096)
    );
    let prompt = config.apis[1].ai.as_ref().unwrap().prompt.as_ref().unwrap();
    assert_eq!(prompt.model, "smart");
    assert!(prompt.variables.contains_key("text"));
}

#[test]
fn an_unset_provider_key_is_named() {
    let yaml =
        example_with_literal_keys().replace("sk-ant-test", "env:TOLLGATE_TEST_UNSET_ANTHROPIC");
    let errors = errors(&yaml);
    assert!(
        errors.contains(
            &"ai.providers[1].keys[0]: environment variable TOLLGATE_TEST_UNSET_ANTHROPIC is not set"
                .to_string()
        ),
        "{errors:?}"
    );
}

#[test]
fn mistakes_are_reported_at_their_field() {
    let yaml = r#"
ai:
  providers:
    - { name: a, kind: openai, keys: [k] }
    - { name: a, kind: openai_compatible }
    - { name: az, kind: azure_openai, keys: [k] }
    - { name: bare, kind: anthropic }
  models:
    - name: m
      targets: [{ provider: nope, model: x }]
      fallbacks: [{ provider: a, model: "" }]
      retry: { attempts: 0 }
    - name: bad/name
      targets: []
  prices:
    - { provider: ghost, model: x, input: -1, output: 1 }
apis:
  - name: llm
    service: orders
    match: { paths: [/v1] }
    ai:
      prompt: { model: unknown, template: "Hi {{who}} {{ what | upper }}", variables: { who: { type: string } } }
      endpoints: [chat]
      cache: { ttl: 0s }
    policies:
      ai_limits: { by: consumer }
      ai_budget: { usd: 0, period: month }
      ai_guard: { mask_pii: [email, dna], deny_patterns: ["(unclosed"], allow_models: [m, "a/gpt-4o", "zz/x"] }
  - name: plain
    match: { paths: [/p] }
"#;
    let errors = errors(yaml);
    let expected = [
        "ai.providers[1].name: duplicate provider `a`",
        "ai.providers[1].base_url: a `openai_compatible` provider needs its base_url",
        "ai.providers[2].base_url: a `azure_openai` provider needs its base_url",
        "ai.providers[3].keys: a `anthropic` provider needs at least one key",
        "ai.models[0].targets[0].provider: no provider named `nope`",
        "ai.models[0].fallbacks[0].model: must not be empty",
        "ai.models[0].retry.attempts: must be at least 1",
        "ai.models[1].targets: at least one target is needed",
        "ai.prices[0].provider: no provider named `ghost`",
        "ai.prices[0].input: must be a price of 0 or more",
        "apis[0].service: an AI API (with `ai`) has no service: the providers serve it",
        "apis[0].ai.endpoints: a prompt API serves its prompt only; remove endpoints or prompt",
        "apis[0].ai.prompt.model: no model named `unknown`",
        "apis[0].ai.cache.ttl: must be more than 0s",
        "apis[0].policies.ai_limits: set tokens_per_minute, requests_per_minute or both",
        "apis[0].policies.ai_budget.usd: must be more than 0",
        "apis[0].policies.ai_guard.mask_pii[1]: unknown kind `dna`: use email, phone, card, iban, secret",
        "apis[0].policies.ai_guard.allow_models[2]: no model named `zz/x`",
        "apis[1].service: required (or `ai`, for an API the AI gateway serves)",
    ];
    for line in expected {
        assert!(
            errors.iter().any(|e| e == line),
            "missing {line:?} in {errors:#?}"
        );
    }
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("ai.models[1].name: must be")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("apis[0].ai.prompt.template: `{{ what | upper }}`")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e
                .starts_with("apis[0].policies.ai_guard.deny_patterns[0]: not a valid pattern")),
        "{errors:#?}"
    );
}

#[test]
fn retry_statuses_must_be_errors() {
    let yaml = r#"
ai:
  providers: [{ name: a, kind: openai, keys: [k] }]
  models: [{ name: m, targets: [{ provider: a, model: x }], retry: { on: [200] } }]
"#;
    let errors = errors(yaml);
    assert!(
        errors[0].contains("200 is not an error status"),
        "{errors:?}"
    );
}

#[test]
fn ai_resources_split_and_assemble_with_their_names() {
    let config = from_yaml(&example_with_literal_keys()).unwrap();
    let split = resources::split(&config);
    let names: Vec<String> = split
        .iter()
        .filter(|r| r.kind.as_str().starts_with("ai/"))
        .map(|r| format!("{}/{}", r.kind, r.name))
        .collect();
    assert_eq!(
        names,
        [
            "ai/providers/openai-main",
            "ai/providers/claude",
            "ai/providers/local",
            "ai/models/smart",
            "ai/prices/openai-main:gpt-4o"
        ]
    );
    let back = resources::assemble(
        &config,
        split.iter().map(|r| (r.kind, r.name.as_str(), &r.body)),
    )
    .unwrap();
    assert_eq!(back, config);

    // An error in an AI resource names the resource.
    let mut bodies: Vec<_> = split
        .iter()
        .map(|r| (r.kind, r.name.clone(), r.body.clone()))
        .collect();
    let provider = bodies
        .iter_mut()
        .find(|(k, n, _)| *k == Kind::AiProviders && n == "local")
        .unwrap();
    provider.2["base_url"] = "ftp://x".into();
    let errors = resources::assemble(&config, bodies.iter().map(|(k, n, b)| (*k, n.as_str(), b)))
        .unwrap_err();
    assert_eq!(errors[0].path, "ai/providers/local.base_url", "{errors:?}");
}
