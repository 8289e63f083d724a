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
//!
//! It also says when the body may be sent on as it came, the model's name
//! excepted ([`VerbatimChat`]): rendering it again was ~5 % of the AI
//! path's instructions, to write what the client had written.

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;
use serde::{Deserialize, Deserializer};
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
    // Absent, `null` or a number: which of the two names the client wrote
    // decides whether its body suits a server (see [`VerbatimChat`]).
    #[serde(default, deserialize_with = "present")]
    max_tokens: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    max_completion_tokens: Option<Option<u64>>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    stream_options: Option<Option<PlainStreamOptions>>,
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

/// `Some` for a field written, `null` included (serde's `Option` alone
/// reads `null` as absent).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
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

/// A client's chat body that an OpenAI-style server can be sent as it
/// came, but for the model's name: a plain chat (text turns and sampling
/// fields only) whose every field such a server reads as the gateway's
/// rendering would write it. So not with a `developer` turn (rendered as
/// `system`), nor `stream_options` (the gateway asks for usage itself), nor
/// both names of the output cap. Which name the client used is kept: a
/// server that takes the other one gets a rendered body.
///
/// The one other difference from a rendering: a field written `null` is
/// sent as `null` rather than left out, which OpenAI-style servers read
/// alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerbatimChat {
    body: Bytes,
    /// The model's JSON string in `body`, quotes included.
    model: Range<usize>,
    max_tokens_key: Option<&'static str>,
    stream: bool,
}

impl VerbatimChat {
    /// The name of the output cap the client wrote (`max_tokens` or
    /// `max_completion_tokens`), `null` or not, if either.
    pub fn max_tokens_key(&self) -> Option<&'static str> {
        self.max_tokens_key
    }

    /// The body naming `model`, with `"stream_options":{"include_usage":true}`
    /// added to a streamed one when `ask_stream_usage`.
    pub fn render(&self, model: &str, ask_stream_usage: bool) -> Bytes {
        const USAGE: &[u8] = br#","stream_options":{"include_usage":true}"#;
        let body = &self.body[..];
        let mut out = Vec::with_capacity(body.len() + model.len() + USAGE.len() + 8);
        out.extend_from_slice(&body[..self.model.start]);
        serde_json::to_writer(&mut out, model).expect("a string serialises");
        if self.stream && ask_stream_usage {
            // The body is one object: its last `}` closes it, and it has
            // members (a model and messages), so a comma goes before ours.
            let close = body
                .iter()
                .rposition(|&b| b == b'}')
                .expect("an object ends with '}'");
            out.extend_from_slice(&body[self.model.end..close]);
            out.extend_from_slice(USAGE);
            out.extend_from_slice(&body[close..]);
        } else {
            out.extend_from_slice(&body[self.model.end..]);
        }
        Bytes::from(out)
    }
}

/// `body` read as a plain chat request, or `None` when the general reader
/// must read it; with the body as a [`VerbatimChat`] when it is one.
pub(super) fn parse_verbatim(
    body: &Bytes,
) -> Option<(ChatRequest, StreamOptions, Option<VerbatimChat>)> {
    let (plain, request, options) = read(body)?;
    let model = match &plain.model {
        // Borrowed: written without escapes, so these are its bytes in `body`.
        Cow::Borrowed(name) => {
            let start = name.as_ptr() as usize - body.as_ptr() as usize;
            (start - 1)..(start + name.len() + 1)
        }
        Cow::Owned(_) => return Some((request, options, None)),
    };
    let max_tokens_key = match (plain.max_tokens, plain.max_completion_tokens) {
        (Some(_), Some(_)) => return Some((request, options, None)),
        (Some(_), None) => Some("max_tokens"),
        (None, Some(_)) => Some("max_completion_tokens"),
        (None, None) => None,
    };
    let verbatim =
        (plain.stream_options.is_none() && !plain.developer_turn).then(|| VerbatimChat {
            body: body.clone(),
            model,
            max_tokens_key,
            stream: request.stream,
        });
    Some((request, options, verbatim))
}

/// `body` read as a plain chat request, or `None` when the general reader
/// must read it.
pub(super) fn parse(body: &[u8]) -> Option<(ChatRequest, StreamOptions)> {
    read(body).map(|(_, request, options)| (request, options))
}

/// What [`VerbatimChat`] needs of the plain body beyond the request.
struct Shape<'a> {
    model: Cow<'a, str>,
    max_tokens: Option<Option<u64>>,
    max_completion_tokens: Option<Option<u64>>,
    stream_options: Option<Option<PlainStreamOptions>>,
    developer_turn: bool,
}

fn read(body: &[u8]) -> Option<(Shape<'_>, ChatRequest, StreamOptions)> {
    let plain: PlainChat<'_> = crate::from_json_bytes(body)?;
    if plain.model.is_empty() || plain.messages.is_empty() {
        return None;
    }
    let developer_turn = plain
        .messages
        .iter()
        .any(|message| matches!(message.role, PlainRole::Developer));
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
        model: plain.model.to_string(),
        messages,
        max_tokens: plain
            .max_completion_tokens
            .flatten()
            .or(plain.max_tokens.flatten()),
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
            .as_ref()
            .and_then(|options| options.as_ref()?.include_usage)
            .unwrap_or(false),
    };
    let shape = Shape {
        model: plain.model,
        max_tokens: plain.max_tokens,
        max_completion_tokens: plain.max_completion_tokens,
        stream_options: plain.stream_options,
        developer_turn,
    };
    Some((shape, request, options))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::formats::openai::tests::CLIENT_CHAT;

    /// Bodies the plain reader takes: it must read them as the general one does.
    pub(crate) const PLAIN: &[&str] = &[
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
