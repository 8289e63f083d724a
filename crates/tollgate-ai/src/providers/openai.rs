//! OpenAI's chat completions and embeddings wire format, for OpenAI itself,
//! Mistral and OpenAI-compatible servers ([`Dialect`] says where they
//! differ); Azure OpenAI reuses it with its own URLs and key header
//! ([`super::azure`]).

use std::borrow::Cow;

use bytes::Bytes;

use http::{HeaderMap, Method};
use serde_json::{Map, Value};

use super::openai_body::ChatBody;
use super::openai_wire;
use super::{
    bad_response, json_body, json_content_type, parse_json, provider_error, secret_header,
    status_for_kind, unix_now, Provider, StreamDecoder, UpstreamRequest,
};
use crate::canonical::{
    ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse, ErrorKind, FinishReason,
    Format, FormatError, Message, ProviderError, StreamEvent, ToolCall, Usage,
};
use crate::formats::openai::{embeddings_body, VerbatimChat};
use crate::sse::SseParser;

/// Where OpenAI-style servers disagree on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// api.openai.com: `max_completion_tokens` (reasoning models refuse
    /// `max_tokens`), usage in streams on request.
    OpenAi,
    /// Azure OpenAI: `max_tokens`, usage in streams on request.
    Azure,
    /// Other servers speaking OpenAI's format (vLLM, Ollama, Groq…): the
    /// classic `max_tokens`, usage in streams on request.
    Compatible,
    /// Mistral: `max_tokens`, `random_seed`, no `user`, tool call ids of
    /// nine letters and digits, usage in the last chunk unasked (it refuses
    /// `stream_options`).
    Mistral,
}

impl Dialect {
    /// The name the output cap goes by.
    pub(crate) fn max_tokens_key(self) -> &'static str {
        match self {
            // Reasoning models refuse `max_tokens`.
            Dialect::OpenAi => "max_completion_tokens",
            Dialect::Azure | Dialect::Compatible | Dialect::Mistral => "max_tokens",
        }
    }

    /// `chat`, naming `model`, when this server takes it as the client
    /// wrote it: Mistral never does (its seed, `user` and call ids differ).
    pub(crate) fn verbatim_body(self, chat: &VerbatimChat, model: &str) -> Option<Bytes> {
        let takes = self != Dialect::Mistral
            && chat
                .max_tokens_key()
                .is_none_or(|key| key == self.max_tokens_key());
        takes.then(|| chat.render(model, true))
    }
}

/// The adapter for OpenAI, Mistral and OpenAI-compatible servers.
#[derive(Debug)]
pub struct OpenAi {
    base_url: String,
    dialect: Dialect,
}

impl OpenAi {
    pub fn new(base_url: &str, dialect: Dialect) -> OpenAi {
        OpenAi {
            base_url: base_url.trim_end_matches('/').to_owned(),
            dialect,
        }
    }

    /// The chat completions request carrying `body`.
    fn chat_upstream(
        &self,
        body: Bytes,
        key: Option<&str>,
    ) -> Result<UpstreamRequest, FormatError> {
        let mut headers = Vec::with_capacity(2);
        headers.push(json_content_type());
        if let Some(key) = key {
            headers.push(secret_header("authorization", &["Bearer ", key].concat())?);
        }
        Ok(UpstreamRequest {
            method: Method::POST,
            url: [self.base_url.as_str(), "/chat/completions"].concat(),
            headers,
            body,
        })
    }
}

impl Provider for OpenAi {
    fn chat_request(
        &self,
        request: &ChatRequest,
        model: &str,
        key: Option<&str>,
    ) -> Result<UpstreamRequest, FormatError> {
        self.chat_upstream(chat_request_json(request, model, self.dialect), key)
    }

    fn chat_request_verbatim(
        &self,
        chat: &VerbatimChat,
        model: &str,
        key: Option<&str>,
    ) -> Option<Result<UpstreamRequest, FormatError>> {
        let body = self.dialect.verbatim_body(chat, model)?;
        Some(self.chat_upstream(body, key))
    }

    fn chat_response(&self, body: &[u8]) -> Result<ChatResponse, ProviderError> {
        parse_chat_response(body)
    }

    fn native_format(&self) -> Option<Format> {
        match self.dialect {
            Dialect::OpenAi | Dialect::Azure | Dialect::Compatible => Some(Format::OpenAi),
            // Its answers may hold what OpenAI's clients do not read (content
            // as a list of chunks, for one): they are translated.
            Dialect::Mistral => None,
        }
    }

    fn native_usage(&self, body: &[u8]) -> Option<Usage> {
        self.native_format()?;
        openai_wire::completion_usage(body)
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(OpenAiStreamDecoder::new())
    }

    fn embeddings_request(
        &self,
        request: &EmbeddingsRequest,
        model: &str,
        key: Option<&str>,
    ) -> Result<UpstreamRequest, FormatError> {
        let mut headers = vec![json_content_type()];
        if let Some(key) = key {
            headers.push(secret_header("authorization", &["Bearer ", key].concat())?);
        }
        Ok(UpstreamRequest {
            method: Method::POST,
            url: [self.base_url.as_str(), "/embeddings"].concat(),
            headers,
            body: json_body(embeddings_request_body(request, model, self.dialect)),
        })
    }

    fn embeddings_response(&self, body: &[u8]) -> Result<EmbeddingsResponse, ProviderError> {
        parse_embeddings_response(body)
    }

    fn error(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
        parse_error(status, headers, body)
    }
}

/// The chat body for `dialect`, naming `model`, as JSON.
pub(crate) fn chat_request_json(request: &ChatRequest, model: &str, dialect: Dialect) -> Bytes {
    let body = ChatBody {
        request,
        model,
        dialect,
    };
    // Room for a short conversation: starting at `to_vec`'s 128 grew it
    // twice or more on every call.
    let mut json = Vec::with_capacity(1024);
    serde_json::to_writer(&mut json, &body).expect("a chat body serialises");
    Bytes::from(json)
}

/// The chat body for `dialect`, naming `model`, built as a `Value` tree:
/// the reference that [`chat_request_json`] is tested against.
#[cfg(test)]
pub(crate) fn chat_request_body(
    request: &ChatRequest,
    model: &str,
    dialect: Dialect,
) -> Map<String, Value> {
    let mut body = crate::formats::openai::chat_body(request);
    body.insert("model".into(), model.into());
    match dialect {
        Dialect::OpenAi => {
            if let Some(max) = body.remove("max_tokens") {
                body.insert("max_completion_tokens".into(), max);
            }
        }
        Dialect::Azure | Dialect::Compatible => {}
        Dialect::Mistral => {
            if let Some(seed) = body.remove("seed") {
                body.insert("random_seed".into(), seed);
            }
            body.remove("user");
            if let Some(Value::Array(messages)) = body.get_mut("messages") {
                for message in messages {
                    rewrite_ids_for_mistral(message);
                }
            }
        }
    }
    if request.stream && dialect != Dialect::Mistral {
        body.insert(
            "stream_options".into(),
            serde_json::json!({"include_usage": true}),
        );
    }
    body
}

/// Mistral refuses tool call ids other than nine letters and digits; others
/// are replaced by a digest, the same for a call and its answer.
#[cfg(test)]
fn rewrite_ids_for_mistral(message: &mut Value) {
    if let Some(Value::Array(calls)) = message.get_mut("tool_calls") {
        for call in calls {
            if let Some(Value::String(id)) = call.get_mut("id") {
                *id = mistral_call_id(id);
            }
        }
    }
    if let Some(Value::String(id)) = message.get_mut("tool_call_id") {
        *id = mistral_call_id(id);
    }
}

pub(super) fn mistral_call_id(id: &str) -> String {
    if id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return id.to_owned();
    }
    // FNV-1a, written in base 62.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    const DIGITS: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    (0..9)
        .map(|_| {
            let digit = DIGITS[(hash % 62) as usize] as char;
            hash /= 62;
            digit
        })
        .collect()
}

pub(crate) fn embeddings_request_body(
    request: &EmbeddingsRequest,
    model: &str,
    dialect: Dialect,
) -> Map<String, Value> {
    let mut body = embeddings_body(request);
    body.insert("model".into(), model.into());
    if dialect == Dialect::Mistral {
        if let Some(dimensions) = body.remove("dimensions") {
            body.insert("output_dimension".into(), dimensions);
        }
        body.remove("user");
    }
    body
}

/// OpenAI's finish reasons.
fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "stop" => FinishReason::Stop,
        "length" | "model_length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_owned()),
    }
}

/// OpenAI's usage: `prompt_tokens` already counts cached tokens and
/// `completion_tokens` reasoning ones. DeepSeek reports its cache hits as
/// `prompt_cache_hit_tokens`.
pub(crate) fn parse_usage(usage: &Value) -> Option<Usage> {
    let usage = usage.as_object()?;
    let count = |value: &Value| value.as_u64().unwrap_or(0);
    let cached = usage
        .get("prompt_tokens_details")
        .and_then(|d| d.get("cached_tokens"))
        .or_else(|| usage.get("prompt_cache_hit_tokens"))
        .map_or(0, count);
    Some(Usage {
        input: usage.get("prompt_tokens").map_or(0, count),
        output: usage.get("completion_tokens").map_or(0, count),
        cached_input: cached,
        reasoning: usage
            .get("completion_tokens_details")
            .and_then(|d| d.get("reasoning_tokens"))
            .map_or(0, count),
    })
}

/// Text of a message's `content`: a string, or (Mistral) an array of parts
/// whose text ones count.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|part| part["type"] == "text")
            .filter_map(|part| part["text"].as_str())
            .collect(),
        _ => String::new(),
    }
}

fn arguments_text(arguments: &Value) -> String {
    match arguments {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub(crate) fn parse_chat_response(body: &[u8]) -> Result<ChatResponse, ProviderError> {
    match openai_wire::completion(body).and_then(typed_chat_response) {
        Some(response) => Ok(response),
        None => parse_chat_response_general(body),
    }
}

/// [`parse_chat_response`] through a `Value`: any answer the typed view
/// does not fit, and the reason one is refused.
fn parse_chat_response_general(body: &[u8]) -> Result<ChatResponse, ProviderError> {
    let root = parse_json(body, "the chat completion")?;
    let choice = root["choices"]
        .get(0)
        .filter(|c| c.is_object())
        .ok_or_else(|| bad_response("the chat completion has no choices"))?;
    let message = &choice["message"];
    let mut text = content_text(&message["content"]);
    if text.is_empty() {
        if let Some(refusal) = message["refusal"].as_str() {
            text = refusal.to_owned();
        }
    }
    let tool_calls = message["tool_calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .enumerate()
                .map(|(i, call)| ToolCall {
                    id: call["id"]
                        .as_str()
                        .map_or_else(|| format!("call_{i}"), str::to_owned),
                    name: call["function"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    arguments: arguments_text(&call["function"]["arguments"]),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ChatResponse {
        id: root["id"].as_str().unwrap_or_default().to_owned(),
        model: root["model"].as_str().unwrap_or_default().to_owned(),
        created: root["created"].as_i64().unwrap_or_else(unix_now),
        message: Message::assistant(text, tool_calls),
        finish: finish_reason(choice["finish_reason"].as_str().unwrap_or("stop")),
        usage: parse_usage(&root["usage"]),
    })
}

/// [`parse_chat_response`] from the typed view; `None` when it has no
/// choice (the general reading says why).
fn typed_chat_response(root: openai_wire::Completion<'_>) -> Option<ChatResponse> {
    let choice = root.choices?.into_iter().next()?;
    let (mut text, refusal, calls) = match choice.message {
        Some(turn) => (
            turn.content.map(|c| c.text()).unwrap_or_default(),
            turn.refusal,
            turn.tool_calls.unwrap_or_default(),
        ),
        None => (String::new(), None, Vec::new()),
    };
    if text.is_empty() {
        if let Some(refusal) = refusal {
            text = refusal.into_owned();
        }
    }
    let tool_calls = calls
        .into_iter()
        .enumerate()
        .map(|(i, call)| {
            let (name, arguments) = match call.function {
                Some(f) => (f.name, f.arguments),
                None => (None, None),
            };
            ToolCall {
                id: call.id.map_or_else(|| format!("call_{i}"), Cow::into_owned),
                name: name.map(Cow::into_owned).unwrap_or_default(),
                arguments: arguments.map(Cow::into_owned).unwrap_or_default(),
            }
        })
        .collect();
    Some(ChatResponse {
        id: root.id.map(Cow::into_owned).unwrap_or_default(),
        model: root.model.map(Cow::into_owned).unwrap_or_default(),
        created: root.created.unwrap_or_else(unix_now),
        message: Message::assistant(text, tool_calls),
        finish: finish_reason(choice.finish_reason.as_deref().unwrap_or("stop")),
        usage: root.usage.map(|u| u.usage()),
    })
}

pub(crate) fn parse_embeddings_response(body: &[u8]) -> Result<EmbeddingsResponse, ProviderError> {
    let root = parse_json(body, "the embeddings answer")?;
    let items = root["data"]
        .as_array()
        .ok_or_else(|| bad_response("the embeddings answer has no data"))?;
    let mut indexed = Vec::with_capacity(items.len());
    for (position, item) in items.iter().enumerate() {
        let vector = item["embedding"]
            .as_array()
            .ok_or_else(|| bad_response("an embedding is not an array of numbers"))?
            .iter()
            .map(|x| x.as_f64().map(|x| x as f32))
            .collect::<Option<Vec<f32>>>()
            .ok_or_else(|| bad_response("an embedding is not an array of numbers"))?;
        let index = item["index"].as_u64().map_or(position, |i| i as usize);
        indexed.push((index, vector));
    }
    indexed.sort_by_key(|(index, _)| *index);
    Ok(EmbeddingsResponse {
        model: root["model"].as_str().unwrap_or_default().to_owned(),
        data: indexed.into_iter().map(|(_, vector)| vector).collect(),
        usage: parse_usage(&root["usage"]),
    })
}

/// `{"error":{"message","type","code"}}`, Mistral's `{"message", "type"}` or
/// a validation `{"detail"}`.
pub(crate) fn parse_error(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let root: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let (message, kind) = error_fields(&root);
    provider_error(status, headers, kind, message, body)
}

/// The message and (when its type says more than a status) the kind of an
/// OpenAI-style error object.
fn error_fields(root: &Value) -> (Option<String>, Option<ErrorKind>) {
    let error = if root["error"].is_object() {
        &root["error"]
    } else {
        root
    };
    let message = match (&error["message"], &root["error"], &root["detail"]) {
        (Value::String(m), _, _) => Some(m.clone()),
        (_, Value::String(m), _) => Some(m.clone()),
        (_, _, Value::String(m)) => Some(m.clone()),
        (m @ (Value::Array(_) | Value::Object(_)), _, _) => Some(m.to_string()),
        (_, _, detail @ (Value::Array(_) | Value::Object(_))) => Some(detail.to_string()),
        _ => None,
    };
    let kind = match error["type"].as_str().or_else(|| error["code"].as_str()) {
        Some("server_error") => Some(ErrorKind::Server),
        Some("insufficient_quota" | "rate_limit_exceeded") => Some(ErrorKind::RateLimited),
        Some("invalid_api_key") => Some(ErrorKind::Authentication),
        _ => None,
    };
    (message, kind)
}

/// Reads OpenAI's `chat.completion.chunk` events.
#[derive(Debug, Default)]
pub struct OpenAiStreamDecoder {
    sse: SseParser,
    started: bool,
    /// `(upstream index, canonical index)` of the tool calls begun.
    tools: Vec<(u64, usize)>,
    usage: Option<Usage>,
    done: bool,
}

impl OpenAiStreamDecoder {
    pub fn new() -> OpenAiStreamDecoder {
        OpenAiStreamDecoder::default()
    }

    fn data(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        if self.done {
            return Ok(());
        }
        if data.trim() == "[DONE]" {
            self.done = true;
            self.flush_usage(out);
            return Ok(());
        }
        if let Some(chunk) = openai_wire::completion(data.as_bytes()) {
            if chunk.error.is_none() {
                self.typed_chunk(chunk, out);
                return Ok(());
            }
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| bad_response(format!("a stream chunk is not valid JSON: {e}")))?;
        if chunk["error"].is_object() {
            let (message, kind) = error_fields(&chunk);
            let kind = kind.unwrap_or(ErrorKind::Server);
            return Err(ProviderError {
                status: status_for_kind(kind),
                kind,
                message: message.unwrap_or_else(|| "the provider failed mid-stream".to_owned()),
                retry_after: None,
            });
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: chunk["id"].as_str().unwrap_or_default().to_owned(),
                model: chunk["model"].as_str().unwrap_or_default().to_owned(),
            });
        }
        // One choice is asked for; any other is ignored.
        let choice = chunk["choices"].as_array().and_then(|choices| {
            choices
                .iter()
                .find(|c| c["index"].as_u64().unwrap_or(0) == 0)
        });
        if let Some(choice) = choice {
            let delta = &choice["delta"];
            let text = content_text(&delta["content"]);
            if !text.is_empty() {
                out.push(StreamEvent::Text(text));
            }
            if let Some(calls) = delta["tool_calls"].as_array() {
                for (position, call) in calls.iter().enumerate() {
                    self.tool_call(call, position, out);
                }
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                out.push(StreamEvent::Finish(finish_reason(reason)));
            }
        }
        if let Some(usage) = parse_usage(&chunk["usage"]) {
            self.usage = Some(usage);
        }
        Ok(())
    }

    /// [`Self::data`] for a chunk that fits the typed view.
    fn typed_chunk(&mut self, chunk: openai_wire::Completion<'_>, out: &mut Vec<StreamEvent>) {
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: chunk.id.map(Cow::into_owned).unwrap_or_default(),
                model: chunk.model.map(Cow::into_owned).unwrap_or_default(),
            });
        }
        // One choice is asked for; any other is ignored.
        let choice = chunk
            .choices
            .and_then(|choices| choices.into_iter().find(|c| c.index.unwrap_or(0) == 0));
        if let Some(choice) = choice {
            if let Some(delta) = choice.delta {
                let text = delta.content.map(|c| c.text()).unwrap_or_default();
                if !text.is_empty() {
                    out.push(StreamEvent::Text(text));
                }
                for (position, call) in delta.tool_calls.unwrap_or_default().into_iter().enumerate()
                {
                    let upstream = call.index.unwrap_or(position as u64);
                    let (name, arguments) = match call.function {
                        Some(f) => (f.name, f.arguments),
                        None => (None, None),
                    };
                    let index = self.tool_index(upstream, out, || {
                        (call.id.map(Cow::into_owned), name.map(Cow::into_owned))
                    });
                    if let Some(fragment) = arguments.filter(|a| !a.is_empty()) {
                        out.push(StreamEvent::ToolCallArgs {
                            index,
                            fragment: fragment.into_owned(),
                        });
                    }
                }
            }
            if let Some(reason) = choice.finish_reason {
                out.push(StreamEvent::Finish(finish_reason(&reason)));
            }
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.usage());
        }
    }

    /// The canonical index of upstream tool call `upstream`; the first time
    /// it is seen, a start event with its id and name (from `begin`).
    fn tool_index(
        &mut self,
        upstream: u64,
        out: &mut Vec<StreamEvent>,
        begin: impl FnOnce() -> (Option<String>, Option<String>),
    ) -> usize {
        if let Some((_, index)) = self.tools.iter().find(|(u, _)| *u == upstream) {
            return *index;
        }
        let index = self.tools.len();
        self.tools.push((upstream, index));
        let (id, name) = begin();
        out.push(StreamEvent::ToolCallStart {
            index,
            id: id.unwrap_or_else(|| format!("call_{index}")),
            name: name.unwrap_or_default(),
        });
        index
    }

    fn tool_call(&mut self, call: &Value, position: usize, out: &mut Vec<StreamEvent>) {
        let upstream = call["index"].as_u64().unwrap_or(position as u64);
        let index = self.tool_index(upstream, out, || {
            (
                call["id"].as_str().map(str::to_owned),
                call["function"]["name"].as_str().map(str::to_owned),
            )
        });
        let fragment = arguments_text(&call["function"]["arguments"]);
        if !fragment.is_empty() {
            out.push(StreamEvent::ToolCallArgs { index, fragment });
        }
    }

    fn flush_usage(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some(usage) = self.usage.take() {
            out.push(StreamEvent::Usage(usage));
        }
    }
}

impl StreamDecoder for OpenAiStreamDecoder {
    fn feed(&mut self, chunk: &[u8]) -> Result<Vec<StreamEvent>, ProviderError> {
        let events = self
            .sse
            .feed(chunk)
            .map_err(|e| bad_response(e.to_string()))?;
        let mut out = Vec::new();
        for event in events {
            self.data(&event.data, &mut out)?;
        }
        Ok(out)
    }

    fn finish(&mut self) -> Result<Vec<StreamEvent>, ProviderError> {
        let events = self.sse.finish().map_err(|e| bad_response(e.to_string()))?;
        let mut out = Vec::new();
        for event in events {
            self.data(&event.data, &mut out)?;
        }
        self.flush_usage(&mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use serde_json::json;

    use super::*;
    use crate::canonical::Role;
    use crate::formats::anthropic::tests::CLIENT_MESSAGES;
    use crate::formats::openai::tests::client_chat_expected;
    use crate::providers::testing::decode_every_split;
    use crate::providers::{adapter, ProviderKind};

    fn body_of(request: &UpstreamRequest) -> Value {
        serde_json::from_slice(&request.body).unwrap()
    }

    /// The bodies a provider call sends are the `Value`-tree bodies the
    /// adapters built before, field for field, in every dialect.
    #[test]
    fn the_borrowing_chat_body_writes_what_the_value_tree_did() {
        use crate::canonical::{Image, Part, ToolChoice};
        let full = client_chat_expected();
        let mut minimal = Message::text(Role::User, "hi");
        minimal.name = Some("ana".into());
        let mut requests = vec![
            full.clone(),
            crate::formats::anthropic::parse_messages(CLIENT_MESSAGES.as_bytes()).unwrap(),
            ChatRequest {
                messages: vec![minimal],
                stream: false,
                tools: Vec::new(),
                tool_choice: Some(ToolChoice::Tool("get_weather".into())),
                seed: None,
                user: None,
                max_tokens: None,
                ..full.clone()
            },
        ];
        // An assistant turn with text and calls, one with empty text and
        // calls, images with and without detail, an empty content, other
        // tool choices, and a client field the body also writes itself.
        let mut odd = full.clone();
        odd.messages.push(Message::assistant(
            "let me look".into(),
            vec![ToolCall {
                id: "abcdefghi".into(),
                name: "f".into(),
                arguments: "{}".into(),
            }],
        ));
        odd.messages.push(Message::assistant(
            String::new(),
            vec![ToolCall {
                id: "call_\u{e9}\"quoted\"".into(),
                name: "g".into(),
                arguments: "{\"a\":[1,2]}".into(),
            }],
        ));
        odd.messages.push(Message {
            role: Role::User,
            content: vec![Part::Image(Image {
                url: "https://x/y.png".into(),
                detail: None,
            })],
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        });
        odd.messages.push(Message {
            role: Role::System,
            content: Vec::new(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        });
        odd.extra.insert("random_seed".into(), json!(7));
        odd.extra.insert("max_completion_tokens".into(), json!(9));
        odd.temperature = Some(f64::NAN);
        for choice in [ToolChoice::None, ToolChoice::Required] {
            requests.push(ChatRequest {
                tool_choice: Some(choice),
                ..odd.clone()
            });
        }
        requests.push(odd);
        for (i, request) in requests.iter().enumerate() {
            for dialect in [
                Dialect::OpenAi,
                Dialect::Azure,
                Dialect::Compatible,
                Dialect::Mistral,
            ] {
                let written: Value =
                    serde_json::from_slice(&chat_request_json(request, "the-model", dialect))
                        .unwrap();
                let reference = Value::Object(chat_request_body(request, "the-model", dialect));
                assert_eq!(written, reference, "request {i}, {dialect:?}");
            }
        }
    }

    /// `value` as a server reads it: without the object members that are
    /// `null` or `"stream": false` (the default), and with `0` and `0.0`
    /// one number.
    fn as_read(value: Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .filter(|(k, v)| {
                        let default = v.is_null() || (k == "stream" && v == false);
                        !default
                    })
                    .map(|(k, v)| (k, as_read(v)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.into_iter().map(as_read).collect()),
            Value::Number(n) => n.as_f64().unwrap().into(),
            other => other,
        }
    }

    fn verbatim_of(body: &str) -> Option<VerbatimChat> {
        let body = Bytes::copy_from_slice(body.as_bytes());
        crate::formats::openai::parse_chat_verbatim(&body)
            .unwrap()
            .2
    }

    const DIALECTS: [Dialect; 4] = [
        Dialect::OpenAi,
        Dialect::Azure,
        Dialect::Compatible,
        Dialect::Mistral,
    ];

    /// Plain bodies that go as they came, beyond the plain reader's own.
    const VERBATIM: &[&str] = &[
        r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_completion_tokens":9,"stream":true} "#,
        r#"{"model":"m","messages":[{"role":"system","content":"caf\u00e9 \"q\"\n"},{"role":"user","content":"x","name":null}],"max_tokens":null,"temperature":null,"top_p":0.5,"seed":null,"user":null,"stream":false}"#,
        r#"{"model":"m","messages":[{"role":"assistant","content":"","name":"bot"}],"temperature":1e0,"seed":-3,"user":"u-1","max_tokens":4}"#,
    ];

    /// A client's body sent as it came, the model's name excepted, is the
    /// body the rendering would send, to every server that takes it as it
    /// is, but for a field written `null` or `"stream": false` (sent, where
    /// the rendering leaves it out) and a number's spelling (`0` rendered
    /// `0.0`).
    #[test]
    fn a_body_sent_as_it_came_is_what_the_rendering_would_send() {
        let plain = crate::formats::openai_plain::tests::PLAIN;
        let mut sent_as_it_came = 0;
        for body in plain.iter().chain(VERBATIM) {
            let Some(verbatim) = verbatim_of(body) else {
                continue;
            };
            let request = crate::formats::openai::parse_chat(body.as_bytes()).unwrap();
            for dialect in DIALECTS {
                // A name to escape, and longer than the client's.
                let model = "the \"model\" \u{e9}";
                let Some(sent) = dialect.verbatim_body(&verbatim, model) else {
                    continue;
                };
                sent_as_it_came += 1;
                let sent: Value = serde_json::from_slice(&sent)
                    .unwrap_or_else(|e| panic!("{body}, {dialect:?}: {e}"));
                let rendered = Value::Object(chat_request_body(&request, model, dialect));
                assert_eq!(as_read(sent), as_read(rendered), "{body}, {dialect:?}");
            }
        }
        // Three of the plain reader's bodies and the four above, to the one
        // to three servers that take each.
        assert_eq!(sent_as_it_came, 16);
    }

    #[test]
    fn only_bodies_every_server_reads_as_rendered_go_as_they_came() {
        for body in [
            // A `developer` turn (rendered `system`), both names of the cap,
            // `stream_options` (the gateway asks for usage itself), a model
            // name with an escape, and what the plain reader leaves alone.
            r#"{"model":"m","messages":[{"role":"developer","content":"x"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1,"max_completion_tokens":2}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":null,"max_completion_tokens":2}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false},"messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"m","stream":true,"stream_options":null,"messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"m\u0031","messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]}"#,
        ] {
            assert_eq!(verbatim_of(body), None, "{body}");
        }
        // Each server takes its own name of the cap, or none; Mistral never.
        let takes = |body: &str| {
            let verbatim = verbatim_of(body).unwrap();
            DIALECTS.map(|dialect| dialect.verbatim_body(&verbatim, "x").is_some())
        };
        let turn = r#""messages":[{"role":"user","content":"x"}]"#;
        // OpenAI, Azure, compatible, Mistral.
        assert_eq!(
            takes(&format!(r#"{{"model":"m",{turn}}}"#)),
            [true, true, true, false]
        );
        assert_eq!(
            takes(&format!(r#"{{"model":"m",{turn},"max_tokens":5}}"#)),
            [false, true, true, false]
        );
        assert_eq!(
            takes(&format!(
                r#"{{"model":"m",{turn},"max_completion_tokens":null}}"#
            )),
            [true, false, false, false]
        );
    }

    #[test]
    fn a_body_sent_as_it_came_keeps_its_bytes_and_a_streamed_one_asks_for_usage() {
        // The AI benchmark's body, as wrk sends it.
        let bench = r#"{"model":"mock-gpt","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32,"temperature":0}"#;
        let sent = Dialect::Compatible
            .verbatim_body(&verbatim_of(bench).unwrap(), "llama")
            .unwrap();
        assert_eq!(sent, bench.replace(r#""mock-gpt""#, r#""llama""#));

        let streamed = "{ \"stream\" : true, \"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"}\"}] }\n";
        let sent = Dialect::OpenAi
            .verbatim_body(&verbatim_of(streamed).unwrap(), "gpt")
            .unwrap();
        assert_eq!(
            sent,
            "{ \"stream\" : true, \"model\":\"gpt\",\"messages\":[{\"role\":\"user\",\"content\":\"}\"}] ,\"stream_options\":{\"include_usage\":true}}\n"
        );
    }

    /// A body sent as it came goes where a rendered one goes, with the same
    /// headers (the key among them), for every kind that takes it; the
    /// other kinds render it.
    #[test]
    fn a_body_sent_as_it_came_goes_where_a_rendered_one_goes() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#;
        let verbatim = verbatim_of(body).unwrap();
        let request = crate::formats::openai::parse_chat(body.as_bytes()).unwrap();
        for (kind, base, takes) in [
            (ProviderKind::OpenAi, "https://api.openai.com/v1", true),
            (
                ProviderKind::OpenAiCompatible,
                "http://127.0.0.1:11434/v1",
                true,
            ),
            (
                ProviderKind::AzureOpenAi,
                "https://res.openai.azure.com/openai",
                true,
            ),
            (ProviderKind::Mistral, "https://api.mistral.ai/v1", false),
            (
                ProviderKind::Anthropic,
                "https://api.anthropic.com/v1",
                false,
            ),
            (
                ProviderKind::Gemini,
                "https://generativelanguage.googleapis.com/v1beta",
                false,
            ),
        ] {
            let provider = adapter(kind, base);
            let sent = provider.chat_request_verbatim(&verbatim, "gpt-4o", Some("sk-1"));
            assert_eq!(sent.is_some(), takes, "{kind:?}");
            let Some(sent) = sent else { continue };
            let sent = sent.unwrap();
            let rendered = provider
                .chat_request(&request, "gpt-4o", Some("sk-1"))
                .unwrap();
            assert_eq!(sent.method, rendered.method, "{kind:?}");
            assert_eq!(sent.url, rendered.url, "{kind:?}");
            assert_eq!(sent.headers, rendered.headers, "{kind:?}");
            assert_eq!(
                &sent.body[..],
                br#"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}"#,
                "{kind:?}"
            );
        }
    }

    fn header_of<'a>(request: &'a UpstreamRequest, name: &str) -> Option<&'a str> {
        request
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().unwrap())
    }

    #[test]
    fn openai_requests_carry_the_key_and_ask_for_stream_usage() {
        let openai = adapter(ProviderKind::OpenAi, "https://api.openai.com/v1");
        let request = openai
            .chat_request(
                &client_chat_expected(),
                "gpt-4o-2024-08-06",
                Some("sk-test-123"),
            )
            .unwrap();
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.url, "https://api.openai.com/v1/chat/completions");
        assert_eq!(
            header_of(&request, "authorization"),
            Some("Bearer sk-test-123")
        );
        assert_eq!(
            header_of(&request, "content-type"),
            Some("application/json")
        );
        assert!(
            !format!("{request:?}").contains("sk-test-123"),
            "the key stays out of Debug"
        );
        let body = body_of(&request);
        assert_eq!(body["model"], "gpt-4o-2024-08-06");
        assert_eq!(body["max_completion_tokens"], 256);
        assert!(body.get("max_tokens").is_none());
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
        assert_eq!(body["response_format"], json!({"type": "text"}));
        assert_eq!(body["seed"], 42);
        assert_eq!(body["user"], "user-1234");

        let mut whole = client_chat_expected();
        whole.stream = false;
        let body = body_of(&openai.chat_request(&whole, "gpt-4o", None).unwrap());
        assert!(body.get("stream_options").is_none());
        assert!(body.get("stream").is_none());
    }

    #[test]
    fn keyless_compatible_servers_get_no_authorization() {
        let local = adapter(ProviderKind::OpenAiCompatible, "http://127.0.0.1:11434/v1/");
        let request = local
            .chat_request(&client_chat_expected(), "llama3.2", None)
            .unwrap();
        assert_eq!(request.url, "http://127.0.0.1:11434/v1/chat/completions");
        assert_eq!(header_of(&request, "authorization"), None);
        let body = body_of(&request);
        assert_eq!(body["max_tokens"], 256);
        assert!(body.get("max_completion_tokens").is_none());
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn mistral_gets_its_own_spellings_and_call_ids() {
        let mistral = adapter(ProviderKind::Mistral, "https://api.mistral.ai/v1");
        let request = mistral
            .chat_request(&client_chat_expected(), "mistral-large-latest", Some("k"))
            .unwrap();
        let body = body_of(&request);
        assert!(body.get("stream_options").is_none());
        assert!(body.get("user").is_none());
        assert!(body.get("seed").is_none());
        assert_eq!(body["random_seed"], 42);
        assert_eq!(body["max_tokens"], 256);
        let call_id = body["messages"][2]["tool_calls"][0]["id"].as_str().unwrap();
        assert_eq!(call_id.len(), 9);
        assert!(call_id.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(body["messages"][3]["tool_call_id"], call_id);
        assert_ne!(
            mistral_call_id("call_abc123"),
            mistral_call_id("call_abc124")
        );
        assert_eq!(mistral_call_id("ZB0Hk2EvV"), "ZB0Hk2EvV");
    }

    #[test]
    fn an_anthropic_client_request_becomes_an_openai_body() {
        let request =
            crate::formats::anthropic::parse_messages(CLIENT_MESSAGES.as_bytes()).unwrap();
        let openai = adapter(ProviderKind::OpenAi, "https://api.openai.com/v1");
        let body = body_of(&openai.chat_request(&request, "gpt-4o", Some("k")).unwrap());
        assert_eq!(
            body,
            json!({
                "model": "gpt-4o",
                "messages": [
                    {"role": "system", "content": "You are a weather bot."},
                    {"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg=="}},
                        {"type": "text", "text": "What's the weather in the city on this photo?"}
                    ]},
                    {"role": "assistant", "content": "Let me check.", "tool_calls": [{
                        "id": "toolu_01A09q90qw90lq917835lq9", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris, France\"}"}
                    }]},
                    {"role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9", "content": "18°C, sunny"},
                    {"role": "user", "content": "Is that warm?"}
                ],
                "max_completion_tokens": 1024,
                "temperature": 0.5,
                "stop": ["END"],
                "tools": [{"type": "function", "function": {
                    "name": "get_weather",
                    "description": "Get the current weather in a given location",
                    "parameters": {"type": "object",
                                   "properties": {"location": {"type": "string", "description": "The city and state"}},
                                   "required": ["location"]}
                }}],
                "tool_choice": "required",
                "user": "u-42"
            })
        );
    }

    /// The typed reading and the general one agree on every answer the
    /// typed view fits, and the general one takes the others.
    #[test]
    fn typed_and_general_readings_agree() {
        let fitting = [
            r#"{"id":"c1","model":"gpt-4o","created":1700000000,"choices":[{"index":0,"message":{"role":"assistant","content":"Hi \"there\""},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":1}}}"#,
            r#"{"id":"c2","model":"m","created":1,"choices":[{"message":{"content":null,"refusal":"no","tool_calls":[{"id":"t1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}},{"function":{"name":"g"}}]},"finish_reason":"tool_calls"}]}"#,
            r#"{"id":"c3","created":2,"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"image_url"},{"type":"text","text":"b"}]},"finish_reason":null}],"usage":{"prompt_tokens":5,"prompt_cache_hit_tokens":2}}"#,
            r#"{"created":3,"choices":[{"message":{"content":"x"},"finish_reason":"length"}],"usage":{"prompt_tokens_details":{"cached_tokens":null},"prompt_cache_hit_tokens":7}}"#,
            r#"{"created":4,"choices":[{"message":{"content":"x"}}],"usage":null,"extra":{"deep":[1,2,{"x":"y"}]}}"#,
        ];
        for body in fitting {
            let typed = openai_wire::completion(body.as_bytes())
                .and_then(typed_chat_response)
                .unwrap_or_else(|| panic!("the typed view fits {body}"));
            assert_eq!(
                typed,
                parse_chat_response_general(body.as_bytes()).unwrap(),
                "{body}"
            );
        }
        let odd = [
            r#"{"created":5,"choices":[{"message":{"content":"x","tool_calls":[{"function":{"name":"f","arguments":{"a":1}}}]}}]}"#,
            r#"{"created":6,"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":1.5}}"#,
        ];
        for body in odd {
            assert!(openai_wire::completion(body.as_bytes())
                .and_then(typed_chat_response)
                .is_none());
            assert_eq!(
                parse_chat_response(body.as_bytes()).unwrap(),
                parse_chat_response_general(body.as_bytes()).unwrap()
            );
        }
        assert!(parse_chat_response(br#"{"choices":[]}"#).is_err());
    }

    /// The usage-only reading of an answer passed on as it came counts what
    /// the whole reading counts, and leaves to it every answer it would
    /// refuse or estimate.
    #[test]
    fn the_usage_only_reading_agrees_with_the_whole_one() {
        let read = [
            r#"{"id":"c1","model":"gpt-4o","created":1700000000,"choices":[{"index":0,"message":{"role":"assistant","content":"Hi \"there\""},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":1}}}"#,
            r#"{"id":"c3","created":2,"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"image_url"}]},"finish_reason":null},"second"],"usage":{"prompt_tokens":5,"prompt_cache_hit_tokens":2}}"#,
            r#"{"usage":{"prompt_tokens_details":{"cached_tokens":null},"prompt_cache_hit_tokens":7},"choices":[{}],"system_fingerprint":"fp","extra":{"deep":[1,2,{"x":"y"}]}}"#,
            r#"{"choices":[{"message":{"content":"x","tool_calls":[{"function":{"name":"f","arguments":{"a":1}}}]}}],"usage":{"prompt_tokens":2,"completion_tokens":1}}"#,
        ];
        for body in read {
            let usage = openai_wire::completion_usage(body.as_bytes())
                .unwrap_or_else(|| panic!("read: {body}"));
            assert_eq!(
                Some(usage),
                parse_chat_response(body.as_bytes()).unwrap().usage,
                "{body}"
            );
        }
        let left_to_the_whole_reading = [
            // No usage: the whole reading estimates it from the text.
            r#"{"choices":[{"message":{"content":"x"}}]}"#,
            r#"{"choices":[{"message":{"content":"x"}}],"usage":null}"#,
            // Usage it does not fit.
            r#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":1.5}}"#,
            // Refused by the whole reading.
            r#"{"choices":[],"usage":{"prompt_tokens":1}}"#,
            r#"{"choices":["x"],"usage":{"prompt_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":1}}"#,
            r#"{"choices":[{}],"usage":{"prompt_tokens":1}"#,
            "not json",
        ];
        for body in left_to_the_whole_reading {
            assert_eq!(
                openai_wire::completion_usage(body.as_bytes()),
                None,
                "{body}"
            );
        }
    }

    #[test]
    fn reads_a_completion_with_cached_and_reasoning_tokens() {
        let body = br#"{
          "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
          "object": "chat.completion",
          "created": 1741570283,
          "model": "o3-mini-2025-01-31",
          "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": null, "refusal": null,
              "tool_calls": [{"id": "call_12345xyz", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris, France\"}"}}],
              "annotations": []},
            "logprobs": null,
            "finish_reason": "tool_calls"
          }],
          "usage": {
            "prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 32, "audio_tokens": 0,
              "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
          },
          "service_tier": "default",
          "system_fingerprint": "fp_fc9f1d7035"
        }"#;
        let openai = adapter(ProviderKind::OpenAi, "https://api.openai.com/v1");
        let response = openai.chat_response(body).unwrap();
        assert_eq!(
            response,
            ChatResponse {
                id: "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG".into(),
                model: "o3-mini-2025-01-31".into(),
                created: 1_741_570_283,
                message: Message {
                    role: Role::Assistant,
                    content: vec![],
                    tool_calls: vec![ToolCall {
                        id: "call_12345xyz".into(),
                        name: "get_weather".into(),
                        arguments: r#"{"location":"Paris, France"}"#.into(),
                    }],
                    tool_call_id: None,
                    name: None,
                },
                finish: FinishReason::ToolCalls,
                usage: Some(Usage {
                    input: 1117,
                    output: 46,
                    cached_input: 1024,
                    reasoning: 32,
                }),
            }
        );
        let deepseek = br#"{"id":"x","model":"deepseek-chat","created":1,
            "choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":100,"completion_tokens":5,"total_tokens":105,
                     "prompt_cache_hit_tokens":64,"prompt_cache_miss_tokens":36}}"#;
        let response = openai.chat_response(deepseek).unwrap();
        assert_eq!(response.message, Message::text(Role::Assistant, "hi"));
        assert_eq!(response.usage.unwrap().cached_input, 64);
        assert_eq!(
            openai.chat_response(b"{\"choices\":[]}").unwrap_err().kind,
            ErrorKind::BadResponse
        );
        assert_eq!(
            openai.chat_response(b"<html>").unwrap_err().kind,
            ErrorKind::BadResponse
        );
    }

    const OPENAI_TEXT_STREAM: &str = concat!(
        "data: {\"id\":\"chatcmpl-AyPvA\",\"object\":\"chat.completion.chunk\",\"created\":1738960000,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_4691090a87\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-AyPvA\",\"object\":\"chat.completion.chunk\",\"created\":1738960000,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_4691090a87\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-AyPvA\",\"object\":\"chat.completion.chunk\",\"created\":1738960000,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_4691090a87\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" thère!\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-AyPvA\",\"object\":\"chat.completion.chunk\",\"created\":1738960000,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_4691090a87\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-AyPvA\",\"object\":\"chat.completion.chunk\",\"created\":1738960000,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_4691090a87\",\"choices\":[],\"usage\":{\"prompt_tokens\":1200,\"completion_tokens\":300,\"total_tokens\":1500,\"prompt_tokens_details\":{\"cached_tokens\":1024,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":128,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n",
        "data: [DONE]\n\n",
    );

    const OPENAI_TOOL_STREAM: &str = concat!(
        "data: {\"id\":\"chatcmpl-B1\",\"object\":\"chat.completion.chunk\",\"created\":1738960001,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_DdmO9pD3xa9XTPNJ32zg2hcA\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}],\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-B1\",\"object\":\"chat.completion.chunk\",\"created\":1738960001,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"lo\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-B1\",\"object\":\"chat.completion.chunk\",\"created\":1738960001,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"cation\\\": \\\"Paris\\\"}\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-B1\",\"object\":\"chat.completion.chunk\",\"created\":1738960001,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_7pTq3\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-B1\",\"object\":\"chat.completion.chunk\",\"created\":1738960001,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"arguments\":\"{}\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-B1\",\"object\":\"chat.completion.chunk\",\"created\":1738960001,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: [DONE]\n\n",
    );

    const MISTRAL_STREAM: &str = concat!(
        "data: {\"id\":\"cmpl-e5cc70bb28c444948073e77776eb30ef\",\"object\":\"chat.completion.chunk\",\"created\":1702256327,\"model\":\"mistral-small-latest\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"cmpl-e5cc70bb28c444948073e77776eb30ef\",\"object\":\"chat.completion.chunk\",\"created\":1702256327,\"model\":\"mistral-small-latest\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"id\":\"ZB0Hk2EvV\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"location\\\": \\\"Paris\\\"}\"},\"index\":0}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"cmpl-e5cc70bb28c444948073e77776eb30ef\",\"object\":\"chat.completion.chunk\",\"created\":1702256327,\"model\":\"mistral-small-latest\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"tool_calls\"}],\"usage\":{\"prompt_tokens\":70,\"total_tokens\":92,\"completion_tokens\":22}}\n\n",
        "data: [DONE]\n\n",
    );

    fn decoder() -> Box<dyn StreamDecoder> {
        adapter(ProviderKind::OpenAi, "https://api.openai.com/v1").stream_decoder()
    }

    #[test]
    fn decodes_a_text_stream_with_a_usage_chunk() {
        let events = decode_every_split(decoder, OPENAI_TEXT_STREAM.as_bytes()).unwrap();
        assert_eq!(
            events,
            vec![
                StreamEvent::Start {
                    id: "chatcmpl-AyPvA".into(),
                    model: "gpt-4o-2024-08-06".into()
                },
                StreamEvent::Text("Hello".into()),
                StreamEvent::Text(" thère!".into()),
                StreamEvent::Finish(FinishReason::Stop),
                StreamEvent::Usage(Usage {
                    input: 1200,
                    output: 300,
                    cached_input: 1024,
                    reasoning: 128
                }),
            ]
        );
    }

    #[test]
    fn decodes_streamed_tool_calls() {
        let events = decode_every_split(decoder, OPENAI_TOOL_STREAM.as_bytes()).unwrap();
        assert_eq!(
            events,
            vec![
                StreamEvent::Start {
                    id: "chatcmpl-B1".into(),
                    model: "gpt-4o-mini".into()
                },
                StreamEvent::ToolCallStart {
                    index: 0,
                    id: "call_DdmO9pD3xa9XTPNJ32zg2hcA".into(),
                    name: "get_weather".into()
                },
                StreamEvent::ToolCallArgs {
                    index: 0,
                    fragment: "{\"lo".into()
                },
                StreamEvent::ToolCallArgs {
                    index: 0,
                    fragment: "cation\": \"Paris\"}".into()
                },
                StreamEvent::ToolCallStart {
                    index: 1,
                    id: "call_7pTq3".into(),
                    name: "get_time".into()
                },
                StreamEvent::ToolCallArgs {
                    index: 1,
                    fragment: "{}".into()
                },
                StreamEvent::Finish(FinishReason::ToolCalls),
            ]
        );
    }

    #[test]
    fn decodes_mistral_usage_in_the_last_chunk() {
        let mistral =
            || adapter(ProviderKind::Mistral, "https://api.mistral.ai/v1").stream_decoder();
        let events = decode_every_split(mistral, MISTRAL_STREAM.as_bytes()).unwrap();
        assert_eq!(
            events,
            vec![
                StreamEvent::Start {
                    id: "cmpl-e5cc70bb28c444948073e77776eb30ef".into(),
                    model: "mistral-small-latest".into()
                },
                StreamEvent::ToolCallStart {
                    index: 0,
                    id: "ZB0Hk2EvV".into(),
                    name: "get_weather".into()
                },
                StreamEvent::ToolCallArgs {
                    index: 0,
                    fragment: "{\"location\": \"Paris\"}".into()
                },
                StreamEvent::Finish(FinishReason::ToolCalls),
                StreamEvent::Usage(Usage {
                    input: 70,
                    output: 22,
                    cached_input: 0,
                    reasoning: 0
                }),
            ]
        );
        // Without [DONE], the end of the body still reports the usage.
        let cut = MISTRAL_STREAM.trim_end_matches("data: [DONE]\n\n");
        let events = decode_every_split(mistral, cut.as_bytes()).unwrap();
        assert!(matches!(events.last(), Some(StreamEvent::Usage(_))));
    }

    #[test]
    fn an_error_inside_a_stream_is_an_error() {
        let sample = concat!(
            "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
            "data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n",
        );
        let error = decode_every_split(decoder, sample.as_bytes()).unwrap_err();
        assert_eq!(error.kind, ErrorKind::Server);
        assert_eq!(
            error.message,
            "The server had an error while processing your request."
        );
        let error = decode_every_split(decoder, b"data: {not json}\n\n").unwrap_err();
        assert_eq!(error.kind, ErrorKind::BadResponse);
    }

    #[test]
    fn errors_map_status_body_and_retry_after() {
        let openai = adapter(ProviderKind::OpenAi, "https://api.openai.com/v1");
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("20"));
        let error = openai.error(
            429,
            &headers,
            br#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29000.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(error.status, 429);
        assert_eq!(error.kind, ErrorKind::RateLimited);
        assert!(error.message.starts_with("Rate limit reached for gpt-4o"));
        assert_eq!(error.retry_after, Some(std::time::Duration::from_secs(20)));

        let error = openai.error(
            401,
            &HeaderMap::new(),
            br#"{"error":{"message":"Incorrect API key provided: sk-abc***xyz.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
        );
        assert_eq!(error.kind, ErrorKind::Authentication);
        assert_eq!(error.retry_after, None);

        let error = openai.error(
            400,
            &HeaderMap::new(),
            br#"{"error":{"message":"Unsupported parameter: 'max_tokens'","type":"invalid_request_error","param":"max_tokens","code":"unsupported_parameter"}}"#,
        );
        assert_eq!(error.kind, ErrorKind::InvalidRequest);
        assert_eq!(error.message, "Unsupported parameter: 'max_tokens'");

        // Mistral's flat errors and validation details.
        let mistral = adapter(ProviderKind::Mistral, "https://api.mistral.ai/v1");
        let error = mistral.error(
            422,
            &HeaderMap::new(),
            br#"{"object":"error","message":{"detail":[{"type":"extra_forbidden","loc":["body","user"],"msg":"Extra inputs are not permitted"}]},"type":"invalid_request_error","param":null,"code":null}"#,
        );
        assert_eq!(error.kind, ErrorKind::InvalidRequest);
        assert!(error.message.contains("Extra inputs are not permitted"));
        let error = mistral.error(
            401,
            &HeaderMap::new(),
            br#"{"message":"Unauthorized","request_id":"c0ffee"}"#,
        );
        assert_eq!(
            (error.kind, error.message.as_str()),
            (ErrorKind::Authentication, "Unauthorized")
        );
        let error = mistral.error(503, &HeaderMap::new(), b"upstream connect error");
        assert_eq!(error.kind, ErrorKind::Overloaded);
        assert!(error.message.contains("upstream connect error"));
    }

    #[test]
    fn embeddings_requests_and_answers() {
        let request = EmbeddingsRequest {
            model: "alias".into(),
            input: vec!["hello".into(), "world".into()],
            dimensions: Some(256),
            user: Some("u".into()),
        };
        let openai = adapter(ProviderKind::OpenAi, "https://api.openai.com/v1");
        let upstream = openai
            .embeddings_request(&request, "text-embedding-3-small", Some("k"))
            .unwrap();
        assert_eq!(upstream.url, "https://api.openai.com/v1/embeddings");
        assert_eq!(
            body_of(&upstream),
            json!({"model": "text-embedding-3-small", "input": ["hello", "world"], "dimensions": 256, "user": "u"})
        );
        let mistral = adapter(ProviderKind::Mistral, "https://api.mistral.ai/v1");
        let body = body_of(
            &mistral
                .embeddings_request(&request, "mistral-embed", Some("k"))
                .unwrap(),
        );
        assert_eq!(
            body,
            json!({"model": "mistral-embed", "input": ["hello", "world"], "output_dimension": 256})
        );
        let answer = br#"{"object":"list","data":[
            {"object":"embedding","index":1,"embedding":[0.25,-0.5]},
            {"object":"embedding","index":0,"embedding":[1.0,0.0]}],
            "model":"text-embedding-3-small","usage":{"prompt_tokens":4,"total_tokens":4}}"#;
        assert_eq!(
            openai.embeddings_response(answer).unwrap(),
            EmbeddingsResponse {
                model: "text-embedding-3-small".into(),
                data: vec![vec![1.0, 0.0], vec![0.25, -0.5]],
                usage: Some(Usage {
                    input: 4,
                    ..Usage::default()
                }),
            }
        );
        assert_eq!(
            openai
                .embeddings_response(br#"{"data":[{"embedding":"AAAA"}]}"#)
                .unwrap_err()
                .kind,
            ErrorKind::BadResponse
        );
    }
}
