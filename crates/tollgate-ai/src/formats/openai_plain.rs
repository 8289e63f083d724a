//! The common chat request, read straight into borrowed fields.
//!
//! Nearly every request is text messages and a few sampling fields. The
//! general reader ([`super::openai::parse_chat_with_options`]) builds a
//! `serde_json::Value` tree first, so that it can name the field at fault in
//! any error, and a map and a string per field (reading the request was ~5 %
//! of the AI path's CPU in `perf`). This reader covers that shape only and
//! never decides an error: anything else (parts, images, tools, tool turns,
//! unknown fields, a repeated key, a wrong type, a missing model) makes it
//! give up, and the general reader reads the body as before. A test holds
//! the two readers to the same result.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Map;

use super::openai::StreamOptions;
use crate::canonical::{ChatRequest, Format, Message, Role};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainChat<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(borrow)]
    messages: Vec<PlainMessage<'a>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<PlainStreamOptions>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default, borrow)]
    user: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainStreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainMessage<'a> {
    role: PlainRole,
    #[serde(borrow)]
    content: Cow<'a, str>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
}

/// The roles whose turn is just text.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum PlainRole {
    System,
    Developer,
    User,
    Assistant,
}

/// `body` read as a plain chat request, or `None` when the general reader
/// must read it.
pub(super) fn parse(body: &[u8]) -> Option<(ChatRequest, StreamOptions)> {
    let plain: PlainChat<'_> = crate::from_json_bytes(body)?;
    if plain.model.is_empty() || plain.messages.is_empty() {
        return None;
    }
    let messages = plain
        .messages
        .into_iter()
        .map(|message| {
            let role = match message.role {
                PlainRole::System | PlainRole::Developer => Role::System,
                PlainRole::User => Role::User,
                PlainRole::Assistant => Role::Assistant,
            };
            let mut turn = Message::text(role, message.content.into_owned());
            turn.name = message.name.map(Cow::into_owned);
            turn
        })
        .collect();
    let request = ChatRequest {
        model: plain.model.into_owned(),
        messages,
        max_tokens: plain.max_completion_tokens.or(plain.max_tokens),
        temperature: plain.temperature,
        top_p: plain.top_p,
        stop: Vec::new(),
        stream: plain.stream.unwrap_or(false),
        tools: Vec::new(),
        tool_choice: None,
        seed: plain.seed,
        user: plain.user.map(Cow::into_owned),
        extra: Map::new(),
        extra_format: Format::OpenAi,
    };
    let options = StreamOptions {
        include_usage: plain
            .stream_options
            .and_then(|options| options.include_usage)
            .unwrap_or(false),
    };
    Some((request, options))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::openai::tests::CLIENT_CHAT;

    /// Bodies the plain reader takes: it must read them as the general one does.
    const PLAIN: &[&str] = &[
        r#"{"model":"mock-gpt","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32,"temperature":0}"#,
        r#"{"messages":[{"role":"developer","content":"be brief"},{"role":"user","content":"hi","name":"ana"},{"role":"assistant","content":""}],"model":"m"}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"caf\u00e9 \"quoted\"\n","name":null}],"stream":true,"stream_options":{"include_usage":true}}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":5,"max_completion_tokens":7,"top_p":0.5,"seed":-3,"user":"u-1"}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":null,"temperature":null,"stream":null,"stream_options":{"include_usage":null},"seed":null,"user":null}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":false,"stream_options":null,"temperature":1e0}"#,
        " \n{\"model\" : \"m\" , \"messages\" : [ {\"role\":\"user\",\"content\":\"x\"} ] }\n",
        r#"{"mod\u0065l":"m","messages":[{"role":"user","content":"x"}]}"#,
    ];

    /// Bodies the plain reader leaves to the general one, which reads them or refuses them.
    const GENERAL: &[&str] = &[
        CLIENT_CHAT,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":1}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":"\n"}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[]}"#,
        r#"{"model":"m","messages":[{"role":"tool","tool_call_id":"c","content":"x"}]}"#,
        r#"{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[]}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x","extra":1}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true,"other":1}}"#,
        r#"{"model":"m","model":"n","messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":"","messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":"m","messages":[]}"#,
        r#"{"messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":"m"}"#,
        r#"{"model":"m","messages":[{"role":"user","content":null}]}"#,
        r#"{"model":"m","messages":[{"role":"user"}]}"#,
        r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1.5}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"seed":18446744073709551615}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
        r#"{"model":7,"messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}]} trailing"#,
        r#"["model"]"#,
        "not json",
        "",
    ];

    #[test]
    fn the_plain_reader_reads_what_the_general_one_does() {
        for body in PLAIN {
            let plain = parse(body.as_bytes()).unwrap_or_else(|| panic!("not taken: {body}"));
            let general = super::super::openai::tests::parse_general(body.as_bytes())
                .unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(plain, general, "{body}");
        }
    }

    #[test]
    fn the_plain_reader_leaves_every_other_shape_and_every_error_to_the_general_one() {
        for body in GENERAL {
            assert!(parse(body.as_bytes()).is_none(), "taken: {body}");
        }
    }
}
