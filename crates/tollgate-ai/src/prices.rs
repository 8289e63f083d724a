//! Prices of models, in USD per million tokens, and the cost of an exchange.
//!
//! [`builtin`] knows the list prices of well-known models so that costs are
//! reported without configuration; a configured price always wins over it.
//! The table holds the standard (not batch, not priority) list prices that
//! OpenAI (platform.openai.com/docs/pricing), Anthropic
//! (docs.claude.com/en/docs/about-claude/pricing), Google
//! (ai.google.dev/gemini-api/docs/pricing) and Mistral (mistral.ai/pricing)
//! published as of December 2025. Prices change: treat the table as a
//! default, not as a bill.
//!
//! What the table leaves out:
//! - Anthropic's cache writes (1.25× the input price): [`Usage`] has no
//!   field for them, so they are priced as ordinary input.
//! - Long-context tiers: Gemini 2.5 Pro and Gemini 3 Pro charge more for
//!   prompts over 200k tokens, Claude Sonnet 4/4.5 for prompts over 200k
//!   tokens with the 1M context beta; the table has the standard tier.
//! - Audio, image generation and tool fees (web search…).

use crate::canonical::Usage;
use crate::providers::ProviderKind;

/// A model's price in USD per million tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Price {
    /// Every input token not read from a cache.
    pub input: f64,
    /// Every generated token not counted as reasoning.
    pub output: f64,
    /// Input tokens read from the provider's prompt cache; [`Price::input`] when `None`.
    pub cached_input: Option<f64>,
    /// Reasoning ("thinking") tokens; [`Price::output`] when `None`.
    pub reasoning: Option<f64>,
}

impl Price {
    /// A price with no cache discount and reasoning billed as output.
    pub const fn new(input: f64, output: f64) -> Price {
        Price {
            input,
            output,
            cached_input: None,
            reasoning: None,
        }
    }

    /// `self` with cached input tokens at `cached_input`.
    pub const fn with_cached_input(mut self, cached_input: f64) -> Price {
        self.cached_input = Some(cached_input);
        self
    }

    /// The price of a cached input token, per million.
    pub fn cached_input_price(&self) -> f64 {
        self.cached_input.unwrap_or(self.input)
    }

    /// The price of a reasoning token, per million.
    pub fn reasoning_price(&self) -> f64 {
        self.reasoning.unwrap_or(self.output)
    }
}

/// The built-in list price of `model` served by a provider of `provider_kind`,
/// `None` for a model the table does not know (and always for
/// `openai_compatible`, whose servers set their own prices). Azure OpenAI uses
/// OpenAI's model names and prices.
///
/// A model matches the longest table entry it starts with, provided what
/// follows is a version suffix: `-` and then a date or build number
/// (`gpt-4o-2024-08-06`, `claude-sonnet-4-5-20250929`, `mistral-large-2411`,
/// `gemini-2.0-flash-001`), `-latest`, or `-preview`/`-exp` and dates
/// (`gemini-2.5-flash-preview-05-20`). So `gpt-4o-mini` is never priced as
/// `gpt-4o`, and a variant with other pricing (`gpt-4o-realtime-preview`,
/// `gemini-2.5-flash-image`) is unknown rather than priced wrongly.
pub fn builtin(provider_kind: ProviderKind, model: &str) -> Option<Price> {
    let table: &[(&str, Price)] = match provider_kind {
        ProviderKind::OpenAi | ProviderKind::AzureOpenAi => OPENAI,
        ProviderKind::Anthropic => ANTHROPIC,
        ProviderKind::Gemini => GEMINI,
        ProviderKind::Mistral => MISTRAL,
        ProviderKind::OpenAiCompatible => return None,
    };
    let model = model.trim();
    let model = match provider_kind {
        // Gemini's own resource names read `models/gemini-2.5-flash`.
        ProviderKind::Gemini => model.strip_prefix("models/").unwrap_or(model),
        _ => model,
    };
    // Azure spells GPT-3.5 without the dot.
    let azure_name;
    let model = if provider_kind == ProviderKind::AzureOpenAi && model.starts_with("gpt-35") {
        azure_name = model.replacen("gpt-35", "gpt-3.5", 1);
        azure_name.as_str()
    } else {
        model
    };
    table
        .iter()
        .filter(|(name, _)| model.strip_prefix(name).is_some_and(is_version_suffix))
        .max_by_key(|(name, _)| name.len())
        .map(|(_, price)| *price)
}

/// Whether `rest` (what follows a table entry in a model name) only names a
/// version of that entry: empty, or `-` segments that are dates and build
/// numbers (the first of at least three digits), `latest`, `preview` or `exp`.
fn is_version_suffix(rest: &str) -> bool {
    if rest.is_empty() {
        return true;
    }
    let Some(rest) = rest.strip_prefix('-') else {
        return false;
    };
    let mut segments = rest.split('-');
    let first = segments.next().unwrap_or_default();
    let first_ok = matches!(first, "latest" | "preview" | "exp")
        || (first.len() >= 3 && first.bytes().all(|b| b.is_ascii_digit()));
    first_ok
        && segments.all(|s| {
            matches!(s, "latest" | "preview" | "exp")
                || (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// The cost in USD of `usage` at `price`:
/// `((input − cached) · input + cached · cached_input + (output − reasoning) · output
/// + reasoning · reasoning_price) / 10⁶`.
pub fn cost_usd(price: &Price, usage: &Usage) -> f64 {
    let cached = usage.cached_input.min(usage.input);
    let reasoning = usage.reasoning.min(usage.output);
    ((usage.input - cached) as f64 * price.input
        + cached as f64 * price.cached_input_price()
        + (usage.output - reasoning) as f64 * price.output
        + reasoning as f64 * price.reasoning_price())
        / 1e6
}

/// [`cost_usd`] in micro-USD (millionths of a dollar), rounded up, for
/// integer counters. Computed exactly: prices are taken to a millionth of a
/// micro-USD per token (list prices have far fewer decimals), so
/// `1000` tokens at `0.15` cost exactly `150`, not `151`.
pub fn cost_micro_usd(price: &Price, usage: &Usage) -> u64 {
    // A price per million tokens is micro-USD per token; in pico-USD per
    // token it is an integer for every list price.
    fn pico(per_million: f64) -> u128 {
        if per_million.is_finite() && per_million > 0.0 {
            (per_million * 1e6).round() as u128
        } else {
            0
        }
    }
    let cached = usage.cached_input.min(usage.input);
    let reasoning = usage.reasoning.min(usage.output);
    let total_pico = u128::from(usage.input - cached) * pico(price.input)
        + u128::from(cached) * pico(price.cached_input_price())
        + u128::from(usage.output - reasoning) * pico(price.output)
        + u128::from(reasoning) * pico(price.reasoning_price());
    u64::try_from(total_pico.div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

const fn p(input: f64, output: f64) -> Price {
    Price::new(input, output)
}

const fn pc(input: f64, cached_input: f64, output: f64) -> Price {
    Price::new(input, output).with_cached_input(cached_input)
}

/// OpenAI (and Azure OpenAI): standard tier; cached input as listed.
const OPENAI: &[(&str, Price)] = &[
    ("gpt-5", pc(1.25, 0.125, 10.0)),
    ("gpt-5-chat-latest", pc(1.25, 0.125, 10.0)),
    ("gpt-5-mini", pc(0.25, 0.025, 2.0)),
    ("gpt-5-nano", pc(0.05, 0.005, 0.40)),
    ("gpt-5.1", pc(1.25, 0.125, 10.0)),
    ("gpt-5.1-chat-latest", pc(1.25, 0.125, 10.0)),
    ("gpt-4.1", pc(2.0, 0.50, 8.0)),
    ("gpt-4.1-mini", pc(0.40, 0.10, 1.60)),
    ("gpt-4.1-nano", pc(0.10, 0.025, 0.40)),
    ("gpt-4o", pc(2.50, 1.25, 10.0)),
    // The first gpt-4o snapshot kept its launch price.
    ("gpt-4o-2024-05-13", p(5.0, 15.0)),
    ("chatgpt-4o-latest", p(5.0, 15.0)),
    ("gpt-4o-mini", pc(0.15, 0.075, 0.60)),
    ("o1", pc(15.0, 7.50, 60.0)),
    ("o1-mini", pc(1.10, 0.55, 4.40)),
    ("o1-pro", p(150.0, 600.0)),
    ("o3", pc(2.0, 0.50, 8.0)),
    ("o3-mini", pc(1.10, 0.55, 4.40)),
    ("o3-pro", p(20.0, 80.0)),
    ("o4-mini", pc(1.10, 0.275, 4.40)),
    ("gpt-4-turbo", p(10.0, 30.0)),
    ("gpt-4", p(30.0, 60.0)),
    ("gpt-3.5-turbo", p(0.50, 1.50)),
    ("text-embedding-3-small", p(0.02, 0.0)),
    ("text-embedding-3-large", p(0.13, 0.0)),
    ("text-embedding-ada-002", p(0.10, 0.0)),
];

/// Anthropic: cached input is a cache read (0.1× input).
const ANTHROPIC: &[(&str, Price)] = &[
    ("claude-opus-4-5", pc(5.0, 0.50, 25.0)),
    ("claude-opus-4-1", pc(15.0, 1.50, 75.0)),
    ("claude-opus-4", pc(15.0, 1.50, 75.0)),
    ("claude-opus-4-0", pc(15.0, 1.50, 75.0)),
    ("claude-sonnet-4-5", pc(3.0, 0.30, 15.0)),
    ("claude-sonnet-4", pc(3.0, 0.30, 15.0)),
    ("claude-sonnet-4-0", pc(3.0, 0.30, 15.0)),
    ("claude-haiku-4-5", pc(1.0, 0.10, 5.0)),
    ("claude-3-7-sonnet", pc(3.0, 0.30, 15.0)),
    ("claude-3-5-sonnet", pc(3.0, 0.30, 15.0)),
    ("claude-3-5-haiku", pc(0.80, 0.08, 4.0)),
    ("claude-3-opus", pc(15.0, 1.50, 75.0)),
    ("claude-3-haiku", pc(0.25, 0.03, 1.25)),
];

/// Gemini API (paid tier, prompts up to 200k tokens); thinking is billed as output.
const GEMINI: &[(&str, Price)] = &[
    ("gemini-3-pro", pc(2.0, 0.20, 12.0)),
    ("gemini-2.5-pro", pc(1.25, 0.125, 10.0)),
    ("gemini-2.5-flash", pc(0.30, 0.03, 2.50)),
    ("gemini-2.5-flash-lite", pc(0.10, 0.01, 0.40)),
    ("gemini-2.0-flash", pc(0.10, 0.025, 0.40)),
    ("gemini-2.0-flash-lite", p(0.075, 0.30)),
    ("gemini-embedding-001", p(0.15, 0.0)),
];

/// Mistral: `-latest` aliases priced as the model they named in December 2025.
const MISTRAL: &[(&str, Price)] = &[
    // Mistral Large 3 (2512) is `mistral-large-latest`; Large 2.x kept its price.
    ("mistral-large", p(0.50, 1.50)),
    ("mistral-large-2411", p(2.0, 6.0)),
    ("mistral-large-2407", p(2.0, 6.0)),
    ("mistral-medium", p(0.40, 2.0)),
    ("mistral-small", p(0.10, 0.30)),
    ("magistral-medium", p(2.0, 5.0)),
    ("magistral-small", p(0.50, 1.50)),
    ("codestral", p(0.30, 0.90)),
    ("pixtral-large", p(2.0, 6.0)),
    ("ministral-8b", p(0.10, 0.10)),
    ("ministral-3b", p(0.04, 0.04)),
    ("open-mistral-nemo", p(0.15, 0.15)),
    ("mistral-embed", p(0.10, 0.0)),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64, cached_input: u64, reasoning: u64) -> Usage {
        Usage {
            input,
            output,
            cached_input,
            reasoning,
        }
    }

    #[test]
    fn exact_names_are_found() {
        assert_eq!(
            builtin(ProviderKind::OpenAi, "gpt-4o"),
            Some(pc(2.50, 1.25, 10.0))
        );
        assert_eq!(
            builtin(ProviderKind::Anthropic, "claude-sonnet-4-5"),
            Some(pc(3.0, 0.30, 15.0))
        );
        assert_eq!(
            builtin(ProviderKind::Gemini, "gemini-2.5-flash"),
            Some(pc(0.30, 0.03, 2.50))
        );
        assert_eq!(
            builtin(ProviderKind::Mistral, "mistral-small-latest"),
            Some(p(0.10, 0.30))
        );
        assert_eq!(
            builtin(ProviderKind::OpenAi, "text-embedding-3-small"),
            Some(p(0.02, 0.0))
        );
    }

    #[test]
    fn dated_snapshots_match_their_family() {
        let gpt4o = builtin(ProviderKind::OpenAi, "gpt-4o");
        assert_eq!(builtin(ProviderKind::OpenAi, "gpt-4o-2024-08-06"), gpt4o);
        assert_eq!(builtin(ProviderKind::OpenAi, "gpt-4o-2024-11-20"), gpt4o);
        assert_eq!(
            builtin(ProviderKind::OpenAi, "o3-mini-2025-01-31"),
            builtin(ProviderKind::OpenAi, "o3-mini")
        );
        assert_eq!(
            builtin(ProviderKind::Anthropic, "claude-sonnet-4-5-20250929"),
            builtin(ProviderKind::Anthropic, "claude-sonnet-4-5")
        );
        assert_eq!(
            builtin(ProviderKind::Anthropic, "claude-3-5-haiku-latest"),
            Some(pc(0.80, 0.08, 4.0))
        );
        assert_eq!(
            builtin(ProviderKind::Gemini, "gemini-2.0-flash-001"),
            builtin(ProviderKind::Gemini, "gemini-2.0-flash")
        );
        assert_eq!(
            builtin(ProviderKind::Gemini, "gemini-2.5-flash-preview-05-20"),
            builtin(ProviderKind::Gemini, "gemini-2.5-flash")
        );
        assert_eq!(
            builtin(ProviderKind::Gemini, "models/gemini-2.5-pro"),
            builtin(ProviderKind::Gemini, "gemini-2.5-pro")
        );
    }

    #[test]
    fn the_longest_entry_wins() {
        assert_eq!(
            builtin(ProviderKind::OpenAi, "gpt-4o-mini"),
            Some(pc(0.15, 0.075, 0.60))
        );
        assert_eq!(
            builtin(ProviderKind::OpenAi, "gpt-4o-mini-2024-07-18"),
            Some(pc(0.15, 0.075, 0.60))
        );
        assert_eq!(
            builtin(ProviderKind::OpenAi, "gpt-4.1-nano-2025-04-14"),
            Some(pc(0.10, 0.025, 0.40))
        );
        // A dated snapshot listed on its own beats its family.
        assert_eq!(
            builtin(ProviderKind::OpenAi, "gpt-4o-2024-05-13"),
            Some(p(5.0, 15.0))
        );
        assert_eq!(
            builtin(ProviderKind::Mistral, "mistral-large-2411"),
            Some(p(2.0, 6.0))
        );
        assert_eq!(
            builtin(ProviderKind::Gemini, "gemini-2.5-flash-lite"),
            Some(pc(0.10, 0.01, 0.40))
        );
        assert_eq!(
            builtin(ProviderKind::Anthropic, "claude-opus-4-1-20250805"),
            Some(pc(15.0, 1.50, 75.0))
        );
        assert_eq!(
            builtin(ProviderKind::Anthropic, "claude-opus-4-5-20251101"),
            Some(pc(5.0, 0.50, 25.0))
        );
    }

    #[test]
    fn variants_with_other_prices_and_unknown_models_have_none() {
        for model in [
            "gpt-4o-realtime-preview",
            "gpt-4o-audio-preview-2024-12-17",
            "gpt-4ox",
            "o3-deep-research",
            "my-finetune",
            "",
        ] {
            assert_eq!(builtin(ProviderKind::OpenAi, model), None, "{model}");
        }
        // A new minor version is not its predecessor.
        assert_eq!(builtin(ProviderKind::Anthropic, "claude-opus-4-7"), None);
        assert_eq!(
            builtin(ProviderKind::Gemini, "gemini-2.5-flash-image-preview"),
            None
        );
        assert_eq!(builtin(ProviderKind::Gemini, "gpt-4o"), None);
    }

    #[test]
    fn azure_uses_openai_names_and_compatible_servers_have_no_builtins() {
        assert_eq!(
            builtin(ProviderKind::AzureOpenAi, "gpt-4o"),
            builtin(ProviderKind::OpenAi, "gpt-4o")
        );
        assert_eq!(
            builtin(ProviderKind::AzureOpenAi, "gpt-35-turbo"),
            Some(p(0.50, 1.50))
        );
        assert_eq!(builtin(ProviderKind::OpenAiCompatible, "gpt-4o"), None);
    }

    #[test]
    fn cost_counts_cached_and_reasoning_tokens_at_their_prices() {
        let price = Price {
            input: 2.0,
            output: 8.0,
            cached_input: Some(0.5),
            reasoning: Some(10.0),
        };
        // 600 fresh input, 400 cached, 150 visible output, 50 reasoning.
        let cost = cost_usd(&price, &usage(1000, 200, 400, 50));
        let expected = (600.0 * 2.0 + 400.0 * 0.5 + 150.0 * 8.0 + 50.0 * 10.0) / 1e6;
        assert!((cost - expected).abs() < 1e-12, "{cost} != {expected}");
    }

    #[test]
    fn defaults_price_cached_as_input_and_reasoning_as_output() {
        let price = p(3.0, 15.0);
        let with_details = cost_usd(&price, &usage(1000, 500, 300, 200));
        let without = cost_usd(&price, &usage(1000, 500, 0, 0));
        assert!((with_details - without).abs() < 1e-12);
        assert!((without - (3000.0 + 7500.0) / 1e6).abs() < 1e-12);
    }

    #[test]
    fn inconsistent_usage_does_not_underflow() {
        let price = pc(1.0, 0.1, 2.0);
        // More cached than input, more reasoning than output: clamped.
        let cost = cost_usd(&price, &usage(10, 5, 50, 9));
        assert!((cost - (10.0 * 0.1 + 5.0 * 2.0) / 1e6).abs() < 1e-15);
        assert_eq!(cost_micro_usd(&price, &usage(10, 5, 50, 9)), 11);
    }

    #[test]
    fn micro_usd_is_exact_and_rounds_up() {
        let mini = pc(0.15, 0.075, 0.60);
        // 0.15 · 1000 is 150.00000000000003 in floating point: still 150.
        assert_eq!(cost_micro_usd(&mini, &usage(1000, 0, 0, 0)), 150);
        assert_eq!(cost_micro_usd(&mini, &usage(1000, 1000, 0, 0)), 750);
        // 1 token at 0.15 µUSD is a fraction: rounded up.
        assert_eq!(cost_micro_usd(&mini, &usage(1, 0, 0, 0)), 1);
        assert_eq!(cost_micro_usd(&mini, &usage(0, 0, 0, 0)), 0);
        // 1000 cached at 0.075 = 75.
        assert_eq!(cost_micro_usd(&mini, &usage(1000, 0, 1000, 0)), 75);
        let nano = pc(0.05, 0.005, 0.40);
        assert_eq!(cost_micro_usd(&nano, &usage(0, 0, 0, 0)), 0);
        assert_eq!(cost_micro_usd(&nano, &usage(200, 0, 200, 0)), 1);
        assert_eq!(cost_micro_usd(&nano, &usage(201, 0, 201, 0)), 2);
        // Agrees with cost_usd.
        let opus = pc(15.0, 1.50, 75.0);
        let u = usage(123_457, 9_876, 100_000, 1_000);
        let micro = cost_micro_usd(&opus, &u);
        let usd = cost_usd(&opus, &u);
        assert!((micro as f64 - usd * 1e6).abs() < 1.0, "{micro} vs {usd}");
    }

    #[test]
    fn micro_usd_saturates() {
        let price = p(1e9, 1e9);
        assert_eq!(
            cost_micro_usd(&price, &usage(u64::MAX, u64::MAX, 0, 0)),
            u64::MAX
        );
    }

    #[test]
    fn every_table_entry_is_reachable_by_its_own_name() {
        for (kind, table) in [
            (ProviderKind::OpenAi, OPENAI),
            (ProviderKind::Anthropic, ANTHROPIC),
            (ProviderKind::Gemini, GEMINI),
            (ProviderKind::Mistral, MISTRAL),
        ] {
            for (name, price) in table {
                assert_eq!(builtin(kind, name), Some(*price), "{name}");
                assert!(price.input >= 0.0 && price.output >= 0.0);
                assert!(price.cached_input_price() <= price.input, "{name}");
            }
        }
    }
}
