//! Local token estimates, for budgets and rate limits checked before a
//! request is sent and for answers whose provider reported no usage.
//!
//! Counts use OpenAI's `o200k_base` encoding (GPT-4o, GPT-4.1, o-series,
//! GPT-5) whatever the provider: other providers' tokenizers are not public or
//! not small, and differ from it by some percent on ordinary text. A
//! provider's own usage report always replaces an estimate.
//!
//! The encoding is built once per process, on first use (about a hundred
//! milliseconds); [`warm_up`] pays that at startup instead of in a request.

use std::sync::LazyLock;

use serde_json::json;
use tiktoken_rs::CoreBPE;

use crate::canonical::{ChatRequest, Part, Role};

/// Tokens every message costs besides its content (`<|start|>role<|message|>…<|end|>`).
pub const TOKENS_PER_MESSAGE: u64 = 3;
/// Tokens a message's participant `name` costs besides its text.
pub const TOKENS_PER_NAME: u64 = 1;
/// Tokens that prime the reply (`<|start|>assistant<|message|>`).
pub const REPLY_PRIMING_TOKENS: u64 = 3;
/// An image sent with `detail: low`: OpenAI's fixed base cost.
pub const IMAGE_TOKENS_LOW_DETAIL: u64 = 85;
/// Any other image: what a 1024×1024 picture costs at high detail (85 + 4 tiles × 170),
/// since the size is unknown without decoding it.
pub const IMAGE_TOKENS: u64 = 765;
/// Framing of one tool call in an assistant turn, besides its name and arguments.
const TOKENS_PER_TOOL_CALL: u64 = 3;
/// Framing of the tool definitions block, besides the definitions' JSON.
const TOOLS_OVERHEAD_TOKENS: u64 = 12;

static O200K_BASE: LazyLock<CoreBPE> = LazyLock::new(|| {
    tiktoken_rs::o200k_base().expect("the o200k_base ranks bundled with tiktoken-rs load")
});

/// Builds the encoding now, so that the first estimate does not pay for it.
pub fn warm_up() {
    LazyLock::force(&O200K_BASE);
}

/// Tokens of `text` alone, special tokens read as plain text.
pub fn estimate_text(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    O200K_BASE.encode_ordinary(text).len() as u64
}

/// Tokens of an embeddings request's inputs (embeddings add no framing).
pub fn estimate_embeddings(inputs: &[String]) -> u64 {
    inputs.iter().map(|input| estimate_text(input)).sum()
}

/// Prompt tokens of a chat request, following OpenAI's counting recipe: per
/// message its framing, role, name, text, and tool calls' names and
/// arguments; a fixed cost per image ([`IMAGE_TOKENS_LOW_DETAIL`] for
/// `detail: low`, else [`IMAGE_TOKENS`]); the tool definitions as JSON; and
/// the reply's priming. Close to what OpenAI bills for text (within a few
/// tokens), an estimate for everything else.
pub fn estimate_prompt(request: &ChatRequest) -> u64 {
    let mut tokens = REPLY_PRIMING_TOKENS;
    for message in &request.messages {
        tokens += TOKENS_PER_MESSAGE + estimate_text(role_name(message.role));
        if let Some(name) = &message.name {
            tokens += TOKENS_PER_NAME + estimate_text(name);
        }
        for part in &message.content {
            tokens += match part {
                Part::Text(text) => estimate_text(text),
                Part::Image(image) if image.detail.as_deref() == Some("low") => {
                    IMAGE_TOKENS_LOW_DETAIL
                }
                Part::Image(_) => IMAGE_TOKENS,
            };
        }
        for call in &message.tool_calls {
            tokens += TOKENS_PER_TOOL_CALL + estimate_text(&call.name);
            tokens += estimate_text(&call.arguments);
        }
        if let Some(id) = &message.tool_call_id {
            tokens += estimate_text(id);
        }
    }
    if !request.tools.is_empty() {
        tokens += TOOLS_OVERHEAD_TOKENS;
        for tool in &request.tools {
            let definition = json!({
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
            });
            tokens += estimate_text(&definition.to_string());
        }
    }
    tokens
}

/// A quick upper bound of [`estimate_prompt`], for reserving tokens before
/// a call without running the tokenizer on the request path: a token is
/// rarely shorter than 3 bytes of UTF-8 (CJK characters are 3 bytes and
/// about one token each; English averages 4 bytes a token). The reservation
/// is settled with the provider's count, so erring high costs nothing.
pub fn prompt_upper_bound(request: &ChatRequest) -> u64 {
    let mut bytes = 0usize;
    let mut tokens = REPLY_PRIMING_TOKENS;
    for message in &request.messages {
        tokens += TOKENS_PER_MESSAGE + 1 + TOKENS_PER_NAME;
        bytes += message.name.as_ref().map_or(0, String::len);
        for part in &message.content {
            match part {
                Part::Text(text) => bytes += text.len(),
                Part::Image(_) => tokens += IMAGE_TOKENS,
            }
        }
        for call in &message.tool_calls {
            tokens += TOKENS_PER_TOOL_CALL;
            bytes += call.name.len() + call.arguments.len();
        }
        bytes += message.tool_call_id.as_ref().map_or(0, String::len);
    }
    if !request.tools.is_empty() {
        tokens += TOOLS_OVERHEAD_TOKENS;
        for tool in &request.tools {
            bytes += tool.name.len()
                + tool.description.as_ref().map_or(0, String::len)
                + tool.parameters.to_string().len();
        }
    }
    tokens + (bytes as u64).div_ceil(3)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map};

    use super::*;
    use crate::canonical::{Format, Image, Message, ToolCall, ToolDef};

    fn request(messages: Vec<Message>) -> ChatRequest {
        ChatRequest {
            model: "gpt-4o".into(),
            messages,
            max_tokens: None,
            temperature: None,
            top_p: None,
            stop: Vec::new(),
            stream: false,
            tools: Vec::new(),
            tool_choice: None,
            seed: None,
            user: None,
            extra: Map::new(),
            extra_format: Format::OpenAi,
        }
    }

    #[test]
    fn the_upper_bound_is_above_the_estimate() {
        for text in [
            "Say hello in one short sentence.",
            "東京の天気はどうですか？明日は雨が降りますか？",
            "Ünïcödé ñ 😀😀 mixed text, with numbers 1234567890",
            "",
        ] {
            let request = request(vec![
                Message::text(Role::System, "You are a helpful assistant."),
                Message::text(Role::User, text),
            ]);
            assert!(
                prompt_upper_bound(&request) >= estimate_prompt(&request),
                "{text}: {} < {}",
                prompt_upper_bound(&request),
                estimate_prompt(&request)
            );
        }
    }

    fn named(role: Role, name: &str, text: &str) -> Message {
        Message {
            name: Some(name.into()),
            ..Message::text(role, text)
        }
    }

    #[test]
    fn known_text_counts() {
        assert_eq!(estimate_text(""), 0);
        assert_eq!(estimate_text("hello world"), 2);
        assert_eq!(estimate_text("Hello, world!"), 4);
        // OpenAI cookbook: [83, 8251, 2488, 382, 2212, 0] in o200k_base.
        assert_eq!(estimate_text("tiktoken is great!"), 6);
        // Special tokens in user text are plain text, not one control token.
        assert!(estimate_text("<|endoftext|>") > 1);
    }

    #[test]
    fn embeddings_add_no_framing() {
        let inputs = vec!["hello world".to_owned(), "Hello, world!".to_owned()];
        assert_eq!(estimate_embeddings(&inputs), 6);
        assert_eq!(estimate_embeddings(&[]), 0);
    }

    #[test]
    fn one_message_is_text_plus_framing() {
        // 3 (message) + 1 ("user") + 2 ("hello world") + 3 (priming).
        let req = request(vec![Message::text(Role::User, "hello world")]);
        assert_eq!(estimate_prompt(&req), 9);
        assert_eq!(estimate_prompt(&request(Vec::new())), 3);
    }

    /// The example of OpenAI's cookbook ("How to count tokens with
    /// tiktoken"), for which the API reports 124 prompt tokens on gpt-4o.
    #[test]
    fn matches_the_openai_cookbook_example() {
        let req = request(vec![
            Message::text(
                Role::System,
                "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
            ),
            named(Role::System, "example_user", "New synergies will help drive top-line growth."),
            named(
                Role::System,
                "example_assistant",
                "Things working well together will increase revenue.",
            ),
            named(
                Role::System,
                "example_user",
                "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",
            ),
            named(
                Role::System,
                "example_assistant",
                "Let's talk later when we're less busy about how to do better.",
            ),
            Message::text(
                Role::User,
                "This late pivot means we don't have time to boil the ocean for the client deliverable.",
            ),
        ]);
        assert_eq!(estimate_prompt(&req), 124);
    }

    #[test]
    fn images_cost_a_fixed_estimate() {
        let image = |detail: Option<&str>| {
            Part::Image(Image {
                url: "https://example.com/cat.png".into(),
                detail: detail.map(Into::into),
            })
        };
        let mut message = Message::text(Role::User, "hello world");
        let text_only = estimate_prompt(&request(vec![message.clone()]));
        message.content.push(image(Some("low")));
        message.content.push(image(None));
        message.content.push(image(Some("high")));
        assert_eq!(
            estimate_prompt(&request(vec![message])),
            text_only + IMAGE_TOKENS_LOW_DETAIL + 2 * IMAGE_TOKENS
        );
    }

    #[test]
    fn tool_calls_and_definitions_count() {
        let mut assistant = Message::text(Role::Assistant, "");
        assistant.content.clear();
        assistant.tool_calls.push(ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        });
        let without_call = estimate_prompt(&request(vec![Message {
            tool_calls: Vec::new(),
            ..assistant.clone()
        }]));
        let with_call = estimate_prompt(&request(vec![assistant]));
        assert_eq!(
            with_call - without_call,
            TOKENS_PER_TOOL_CALL
                + estimate_text("get_weather")
                + estimate_text(r#"{"city":"Paris"}"#)
        );

        let mut req = request(vec![Message::text(Role::User, "hello world")]);
        let before = estimate_prompt(&req);
        req.tools.push(ToolDef {
            name: "get_weather".into(),
            description: Some("The weather in a city".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
        });
        let after = estimate_prompt(&req);
        assert!(
            after > before + TOOLS_OVERHEAD_TOKENS + 10,
            "{before} → {after}"
        );
    }

    #[test]
    fn long_text_scales() {
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(1000);
        let tokens = estimate_text(&text);
        assert!((9_000..=11_000).contains(&tokens), "{tokens}");
    }
}
