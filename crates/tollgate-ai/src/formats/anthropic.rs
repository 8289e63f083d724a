//! Anthropic's messages API, as clients write and read it; also the body
//! Anthropic takes ([`messages_body`]), which the `anthropic` adapter sends.
//!
//! A client's `tool_result` blocks become [`Role::Tool`] turns, and its
//! `tool_use` blocks tool calls whose arguments are the JSON text of their
//! `input`; the way back joins them again. Streams are rendered as the real
//! event sequence (`message_start`, content blocks, `message_delta`,
//! `message_stop`), block indexes counted across text and tool calls.

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::openai::{
    array, boolean, expected, number, object, optional_str, parse_object, required_str, string,
    unsigned,
};
use crate::canonical::{
    ChatRequest, ChatResponse, FinishReason, Format, FormatError, Image, Message, Part, Role,
    StreamEvent, ToolCall, ToolChoice, ToolDef, Usage,
};
use crate::sse;

/// What Anthropic requires when a request sets no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

// ---------------------------------------------------------------------------
// Requests

/// A client's messages body.
pub fn parse_messages(body: &[u8]) -> Result<ChatRequest, FormatError> {
    let root = parse_object(body)?;
    let mut request = ChatRequest {
        model: String::new(),
        messages: Vec::new(),
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
        extra_format: Format::Anthropic,
    };
    let mut model = None;
    let mut system = Vec::new();
    let mut turns = None;
    for (key, value) in root {
        if value.is_null() {
            continue;
        }
        let at = key.as_str();
        match at {
            "model" => model = Some(string(&value, at)?.to_owned()),
            "max_tokens" => request.max_tokens = Some(unsigned(&value, at)?),
            "system" => system = parse_system(&value)?,
            "messages" => turns = Some(parse_turns(&value)?),
            "stop_sequences" => {
                request.stop = array(&value, at)?
                    .iter()
                    .enumerate()
                    .map(|(i, stop)| string(stop, &format!("{at}[{i}]")).map(str::to_owned))
                    .collect::<Result<_, _>>()?
            }
            "temperature" => request.temperature = Some(number(&value, at)?),
            "top_p" => request.top_p = Some(number(&value, at)?),
            "stream" => request.stream = boolean(&value, at)?,
            "tools" => request.tools = parse_tools(&value)?,
            "tool_choice" => request.tool_choice = parse_tool_choice(&value)?,
            "metadata" => {
                request.user = optional_str(object(&value, at)?, "user_id", at)?.map(str::to_owned)
            }
            _ => {
                request.extra.insert(key, value);
            }
        }
    }
    request.model = model
        .filter(|m| !m.is_empty())
        .ok_or_else(|| FormatError::new("model: required"))?;
    if request.max_tokens.is_none() {
        return Err(FormatError::new("max_tokens: required"));
    }
    let turns = turns.ok_or_else(|| FormatError::new("messages: required"))?;
    if turns.is_empty() {
        return Err(FormatError::new("messages: must not be empty"));
    }
    if !system.is_empty() {
        request.messages.push(Message {
            role: Role::System,
            content: system,
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        });
    }
    request.messages.extend(turns);
    Ok(request)
}

fn parse_system(value: &Value) -> Result<Vec<Part>, FormatError> {
    match value {
        Value::String(text) => Ok(vec![Part::Text(text.clone())]),
        Value::Array(blocks) => blocks
            .iter()
            .enumerate()
            .map(|(i, block)| {
                let path = format!("system[{i}]");
                let block = object(block, &path)?;
                match required_str(block, "type", &path)? {
                    "text" => Ok(Part::Text(required_str(block, "text", &path)?.to_owned())),
                    other => Err(FormatError::new(format!(
                        "{path}.type: unsupported system block type \"{other}\" (expected text)"
                    ))),
                }
            })
            .collect(),
        _ => Err(expected("system", "a string or an array of text blocks")),
    }
}

/// The conversation: a user turn's `tool_result` blocks become tool turns,
/// in their place among its other blocks.
fn parse_turns(value: &Value) -> Result<Vec<Message>, FormatError> {
    let mut messages = Vec::new();
    for (i, turn) in array(value, "messages")?.iter().enumerate() {
        let path = format!("messages[{i}]");
        let turn = object(turn, &path)?;
        let role = match required_str(turn, "role", &path)? {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(FormatError::new(format!(
                    "{path}.role: unknown role \"{other}\" (expected user or assistant)"
                )))
            }
        };
        let content_path = format!("{path}.content");
        let blocks = match turn.get("content") {
            None | Some(Value::Null) => {
                return Err(FormatError::new(format!("{content_path}: required")))
            }
            Some(Value::String(text)) => {
                messages.push(Message::text(role, text.clone()));
                continue;
            }
            Some(Value::Array(blocks)) => blocks,
            Some(_) => {
                return Err(expected(
                    &content_path,
                    "a string or an array of content blocks",
                ))
            }
        };
        let mut current = empty_message(role);
        for (j, block) in blocks.iter().enumerate() {
            let path = format!("{content_path}[{j}]");
            let block = object(block, &path)?;
            match (role, required_str(block, "type", &path)?) {
                (_, "text") => current
                    .content
                    .push(Part::Text(required_str(block, "text", &path)?.to_owned())),
                (_, "image") => current
                    .content
                    .push(Part::Image(parse_image(block, &path)?)),
                (Role::Assistant, "tool_use") => current.tool_calls.push(ToolCall {
                    id: required_str(block, "id", &path)?.to_owned(),
                    name: required_str(block, "name", &path)?.to_owned(),
                    arguments: match block.get("input") {
                        None | Some(Value::Null) => "{}".to_owned(),
                        Some(input @ Value::Object(_)) => input.to_string(),
                        Some(_) => return Err(expected(format!("{path}.input"), "an object")),
                    },
                }),
                // Reasoning the canonical model cannot carry.
                (Role::Assistant, "thinking" | "redacted_thinking") => {}
                (Role::User, "tool_result") => {
                    if !current.content.is_empty() {
                        messages.push(std::mem::replace(&mut current, empty_message(role)));
                    }
                    messages.push(parse_tool_result(block, &path)?);
                }
                (_, other) => {
                    return Err(FormatError::new(format!(
                        "{path}.type: unsupported block type \"{other}\" in a {} turn",
                        if role == Role::User {
                            "user"
                        } else {
                            "assistant"
                        }
                    )))
                }
            }
        }
        if !current.content.is_empty() || !current.tool_calls.is_empty() || blocks.is_empty() {
            messages.push(current);
        }
    }
    Ok(messages)
}

fn empty_message(role: Role) -> Message {
    Message {
        role,
        content: Vec::new(),
        tool_calls: Vec::new(),
        tool_call_id: None,
        name: None,
    }
}

fn parse_image(block: &Map<String, Value>, path: &str) -> Result<Image, FormatError> {
    let source_path = format!("{path}.source");
    let source = object(
        block
            .get("source")
            .ok_or_else(|| FormatError::new(format!("{source_path}: required")))?,
        &source_path,
    )?;
    let url = match required_str(source, "type", &source_path)? {
        "base64" => format!(
            "data:{};base64,{}",
            required_str(source, "media_type", &source_path)?,
            required_str(source, "data", &source_path)?
        ),
        "url" => required_str(source, "url", &source_path)?.to_owned(),
        other => {
            return Err(FormatError::new(format!(
                "{source_path}.type: unsupported image source \"{other}\" (expected base64 or url)"
            )))
        }
    };
    Ok(Image { url, detail: None })
}

fn parse_tool_result(block: &Map<String, Value>, path: &str) -> Result<Message, FormatError> {
    let content_path = format!("{path}.content");
    let content = match block.get("content") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => vec![Part::Text(text.clone())],
        Some(Value::Array(blocks)) => blocks
            .iter()
            .enumerate()
            .map(|(i, inner)| {
                let path = format!("{content_path}[{i}]");
                let inner = object(inner, &path)?;
                match required_str(inner, "type", &path)? {
                    "text" => Ok(Part::Text(required_str(inner, "text", &path)?.to_owned())),
                    "image" => Ok(Part::Image(parse_image(inner, &path)?)),
                    other => Err(FormatError::new(format!(
                        "{path}.type: unsupported block type \"{other}\" in a tool result"
                    ))),
                }
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(expected(&content_path, "a string or an array of blocks")),
    };
    Ok(Message {
        role: Role::Tool,
        content,
        tool_calls: Vec::new(),
        tool_call_id: Some(required_str(block, "tool_use_id", path)?.to_owned()),
        name: None,
    })
}

fn parse_tools(value: &Value) -> Result<Vec<ToolDef>, FormatError> {
    let mut tools = Vec::new();
    for (i, tool) in array(value, "tools")?.iter().enumerate() {
        let path = format!("tools[{i}]");
        let tool = object(tool, &path)?;
        if let Some(kind) = optional_str(tool, "type", &path)? {
            if kind != "custom" {
                return Err(FormatError::new(format!(
                    "{path}.type: server tool \"{kind}\" is not supported (only tools with an input_schema)"
                )));
            }
        }
        let parameters = match tool.get("input_schema") {
            None | Some(Value::Null) => {
                return Err(FormatError::new(format!("{path}.input_schema: required")))
            }
            Some(schema @ Value::Object(_)) => schema.clone(),
            Some(_) => return Err(expected(format!("{path}.input_schema"), "an object")),
        };
        tools.push(ToolDef {
            name: required_str(tool, "name", &path)?.to_owned(),
            description: optional_str(tool, "description", &path)?.map(str::to_owned),
            parameters,
        });
    }
    Ok(tools)
}

fn parse_tool_choice(value: &Value) -> Result<Option<ToolChoice>, FormatError> {
    let choice = object(value, "tool_choice")?;
    Ok(Some(match required_str(choice, "type", "tool_choice")? {
        "auto" => ToolChoice::Auto,
        "any" => ToolChoice::Required,
        "none" => ToolChoice::None,
        "tool" => ToolChoice::Tool(required_str(choice, "name", "tool_choice")?.to_owned()),
        other => {
            return Err(FormatError::new(format!(
                "tool_choice.type: unknown type \"{other}\" (expected auto, any, tool or none)"
            )))
        }
    }))
}

/// The messages body Anthropic takes for `request`: system turns joined into
/// `system`, tool turns as `tool_result` blocks in user turns, consecutive
/// turns of one role merged, [`DEFAULT_MAX_TOKENS`] when none is set, and
/// [`ChatRequest::extra`] included when it was written in this format.
/// Fails when a tool call's arguments are not a JSON object.
pub fn messages_body(request: &ChatRequest) -> Result<Map<String, Value>, FormatError> {
    let mut body = Map::new();
    if request.extra_format == Format::Anthropic {
        body.extend(request.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    body.insert("model".into(), request.model.clone().into());
    body.insert(
        "max_tokens".into(),
        request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).into(),
    );
    let system: Vec<String> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(Message::joined_text)
        .filter(|text| !text.is_empty())
        .collect();
    if !system.is_empty() {
        body.insert("system".into(), system.join("\n\n").into());
    }
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, message) in request.messages.iter().enumerate() {
        let (role, blocks) = match message.role {
            Role::System => continue,
            Role::User => ("user", content_blocks(&message.content)),
            Role::Assistant => {
                let mut blocks = content_blocks(&message.content);
                for (j, call) in message.tool_calls.iter().enumerate() {
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": arguments_object(
                            &call.arguments,
                            &format!("messages[{i}].tool_calls[{j}].arguments"),
                        )?,
                    }));
                }
                ("assistant", blocks)
            }
            Role::Tool => {
                let mut result = Map::new();
                result.insert("type".into(), "tool_result".into());
                result.insert(
                    "tool_use_id".into(),
                    message.tool_call_id.clone().unwrap_or_default().into(),
                );
                let content = content_blocks(&message.content);
                match content.as_slice() {
                    [] => {}
                    [only] if only["type"] == "text" => {
                        result.insert("content".into(), only["text"].clone());
                    }
                    _ => {
                        result.insert("content".into(), content.into());
                    }
                }
                ("user", vec![Value::Object(result)])
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last_role, last_blocks)) if *last_role == role => last_blocks.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let messages = turns
        .into_iter()
        .map(|(role, blocks)| json!({"role": role, "content": blocks}))
        .collect();
    body.insert("messages".into(), messages);
    if let Some(temperature) = request.temperature {
        body.insert("temperature".into(), temperature.into());
    }
    if let Some(top_p) = request.top_p {
        body.insert("top_p".into(), top_p.into());
    }
    if !request.stop.is_empty() {
        body.insert("stop_sequences".into(), request.stop.clone().into());
    }
    if request.stream {
        body.insert("stream".into(), true.into());
    }
    if !request.tools.is_empty() {
        let tools = request
            .tools
            .iter()
            .map(|tool| {
                let mut out = Map::new();
                out.insert("name".into(), tool.name.clone().into());
                if let Some(description) = &tool.description {
                    out.insert("description".into(), description.clone().into());
                }
                out.insert("input_schema".into(), tool.parameters.clone());
                Value::Object(out)
            })
            .collect();
        body.insert("tools".into(), tools);
    }
    if let Some(choice) = &request.tool_choice {
        let choice = match choice {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
        };
        body.insert("tool_choice".into(), choice);
    }
    if let Some(user) = &request.user {
        body.insert("metadata".into(), json!({ "user_id": user }));
    }
    Ok(body)
}

/// Text and image blocks; Anthropic refuses empty text blocks.
fn content_blocks(parts: &[Part]) -> Vec<Value> {
    parts
        .iter()
        .filter_map(|part| match part {
            Part::Text(text) if text.is_empty() => None,
            Part::Text(text) => Some(json!({"type": "text", "text": text})),
            Part::Image(image) => Some(match image.as_data() {
                Some((media_type, data)) => json!({
                    "type": "image",
                    "source": {"type": "base64", "media_type": media_type, "data": data},
                }),
                None => json!({"type": "image", "source": {"type": "url", "url": image.url}}),
            }),
        })
        .collect()
}

/// A tool call's arguments as the object Anthropic wants (`{}` when empty).
fn arguments_object(arguments: &str, path: &str) -> Result<Value, FormatError> {
    if arguments.trim().is_empty() {
        return Ok(empty_object());
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(object @ Value::Object(_)) => Ok(object),
        _ => Err(expected(path, "the JSON text of an object")),
    }
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

// ---------------------------------------------------------------------------
// Answers

/// Anthropic's name for a finish reason; reasons it does not know end as
/// `end_turn`.
fn stop_reason(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
        FinishReason::Other(other) => match other.as_str() {
            "stop_sequence" => "stop_sequence",
            "pause_turn" => "pause_turn",
            "refusal" => "refusal",
            _ => "end_turn",
        },
    }
}

#[derive(Serialize)]
struct UsageJson {
    input_tokens: u64,
    output_tokens: u64,
    cache_read_input_tokens: u64,
}

impl From<&Usage> for UsageJson {
    fn from(usage: &Usage) -> UsageJson {
        UsageJson {
            input_tokens: usage.input.saturating_sub(usage.cached_input),
            output_tokens: usage.output,
            cache_read_input_tokens: usage.cached_input,
        }
    }
}

#[derive(Serialize)]
struct MessageJson<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<Value>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<()>,
    usage: UsageJson,
}

/// A tool call's input as a client reads it: the arguments' JSON, or the
/// text itself when the model wrote no valid JSON.
fn input_value(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return empty_object();
    }
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_owned()))
}

/// A whole message, as an Anthropic client reads it.
pub fn render_messages(response: &ChatResponse) -> Bytes {
    let mut content = Vec::new();
    let text = response.message.joined_text();
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in &response.message.tool_calls {
        content.push(json!({
            "type": "tool_use",
            "id": call.id,
            "name": call.name,
            "input": input_value(&call.arguments),
        }));
    }
    let message = MessageJson {
        id: &response.id,
        kind: "message",
        role: "assistant",
        model: &response.model,
        content,
        stop_reason: Some(stop_reason(&response.finish)),
        stop_sequence: None,
        usage: UsageJson::from(&response.usage.unwrap_or_default()),
    };
    Bytes::from(serde_json::to_vec(&message).expect("plain values serialise"))
}

/// The content block open in a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpenBlock {
    Text(usize),
    /// A tool call's block: (block index, tool call index).
    Tool(usize, usize),
}

/// Writes a canonical stream as Anthropic's messages stream events.
#[derive(Debug, Default)]
pub struct MessagesStreamRenderer {
    started: bool,
    open: Option<OpenBlock>,
    next_block: usize,
    /// Block index of each tool call, by tool call index.
    tool_blocks: Vec<(usize, usize)>,
    /// A finish waiting for its usage (which a canonical stream sends after).
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    delta_sent: bool,
    stopped: bool,
}

impl MessagesStreamRenderer {
    pub fn new() -> MessagesStreamRenderer {
        MessagesStreamRenderer::default()
    }

    /// The events for `event` (none while a finish waits for usage).
    pub fn event(&mut self, event: &StreamEvent) -> Bytes {
        let mut out = BytesMut::new();
        match event {
            StreamEvent::Start { id, model } => self.start(&mut out, id, model),
            StreamEvent::Text(text) => {
                self.start(&mut out, "", "");
                let index = match self.open {
                    Some(OpenBlock::Text(index)) => index,
                    _ => {
                        self.close_block(&mut out);
                        let index = self.open_block(&mut out, json!({"type": "text", "text": ""}));
                        self.open = Some(OpenBlock::Text(index));
                        index
                    }
                };
                push_event(
                    &mut out,
                    "content_block_delta",
                    &json!({
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": text},
                    }),
                );
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.start(&mut out, "", "");
                self.close_block(&mut out);
                let block = self.open_block(
                    &mut out,
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                );
                self.open = Some(OpenBlock::Tool(block, *index));
                self.tool_blocks.push((*index, block));
            }
            StreamEvent::ToolCallArgs { index, fragment } => {
                self.start(&mut out, "", "");
                // Sequential providers only ever add to the open block; a
                // fragment for an earlier call still names that call's block.
                let block = match self.open {
                    Some(OpenBlock::Tool(block, tool)) if tool == *index => Some(block),
                    _ => self
                        .tool_blocks
                        .iter()
                        .find(|(tool, _)| tool == index)
                        .map(|(_, block)| *block),
                };
                if let Some(block) = block {
                    push_event(
                        &mut out,
                        "content_block_delta",
                        &json!({
                            "type": "content_block_delta",
                            "index": block,
                            "delta": {"type": "input_json_delta", "partial_json": fragment},
                        }),
                    );
                }
            }
            StreamEvent::Finish(reason) => {
                self.start(&mut out, "", "");
                self.close_block(&mut out);
                self.finish = Some(reason.clone());
                if self.usage.is_some() {
                    self.message_delta(&mut out);
                }
            }
            StreamEvent::Usage(usage) => {
                self.usage = Some(*usage);
                if self.finish.is_some() {
                    self.message_delta(&mut out);
                }
            }
        }
        out.freeze()
    }

    /// The end of the stream: a `message_delta` still waiting, then
    /// `message_stop`.
    pub fn done(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        if self.stopped {
            return out.freeze();
        }
        self.start(&mut out, "", "");
        self.close_block(&mut out);
        if !self.delta_sent {
            self.message_delta(&mut out);
        }
        push_event(&mut out, "message_stop", &json!({"type": "message_stop"}));
        self.stopped = true;
        out.freeze()
    }

    fn start(&mut self, out: &mut BytesMut, id: &str, model: &str) {
        if self.started {
            return;
        }
        self.started = true;
        let message = MessageJson {
            id,
            kind: "message",
            role: "assistant",
            model,
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            usage: UsageJson {
                input_tokens: 0,
                output_tokens: 0,
                cache_read_input_tokens: 0,
            },
        };
        push_event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": message}),
        );
    }

    fn open_block(&mut self, out: &mut BytesMut, block: Value) -> usize {
        let index = self.next_block;
        self.next_block += 1;
        push_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }

    fn close_block(&mut self, out: &mut BytesMut) {
        let index = match self.open.take() {
            Some(OpenBlock::Text(index) | OpenBlock::Tool(index, _)) => index,
            None => return,
        };
        push_event(
            out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        );
    }

    fn message_delta(&mut self, out: &mut BytesMut) {
        if self.delta_sent {
            return;
        }
        self.delta_sent = true;
        let reason = self.finish.as_ref().map_or("end_turn", stop_reason);
        let usage = self.usage.unwrap_or_default();
        push_event(
            out,
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": null},
                "usage": UsageJson::from(&usage),
            }),
        );
    }
}

fn push_event(out: &mut BytesMut, event: &str, data: &impl Serialize) {
    let data = serde_json::to_string(data).expect("plain values serialise");
    out.extend_from_slice(&sse::frame(Some(event), &data));
}

/// An error as Anthropic writes it, its `type` chosen by `status`. `code`
/// has no place in Anthropic's shape; it is taken so both formats render
/// errors through one call.
///
/// The gateway's stable `code` rides along in the error object: Anthropic's
/// SDKs read `type` and `message` and ignore it, and scripts can match on it.
pub fn render_error(status: u16, code: &str, message: &str, request_id: &str) -> Bytes {
    let kind = match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    };
    let mut body =
        json!({"type": "error", "error": {"type": kind, "message": message, "code": code}});
    if !request_id.is_empty() {
        body["request_id"] = request_id.into();
    }
    Bytes::from(serde_json::to_vec(&body).expect("plain values serialise"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::canonical::Image;

    /// A client's request: system blocks, an image, thinking, a tool call,
    /// its result next to more text, tools, and fields only Anthropic knows.
    pub(crate) const CLIENT_MESSAGES: &str = r#"{
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are a weather bot.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}},
                {"type": "text", "text": "What's the weather in the city on this photo?"}
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "It looks like Paris.", "signature": "EqQBCgIYAhIM"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
                 "input": {"location": "Paris, France"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9", "content": "18°C, sunny"},
                {"type": "text", "text": "Is that warm?"}
            ]}
        ],
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "stream": false,
        "tools": [{
            "name": "get_weather",
            "description": "Get the current weather in a given location",
            "input_schema": {"type": "object",
                             "properties": {"location": {"type": "string", "description": "The city and state"}},
                             "required": ["location"]}
        }],
        "tool_choice": {"type": "any"},
        "metadata": {"user_id": "u-42"},
        "top_k": 5,
        "thinking": {"type": "enabled", "budget_tokens": 2000}
    }"#;

    pub(crate) fn client_messages_expected() -> ChatRequest {
        ChatRequest {
            model: "claude-sonnet-4-5".into(),
            messages: vec![
                Message::text(Role::System, "You are a weather bot."),
                Message {
                    role: Role::User,
                    content: vec![
                        Part::Image(Image {
                            url: "data:image/jpeg;base64,/9j/4AAQSkZJRg==".into(),
                            detail: None,
                        }),
                        Part::Text("What's the weather in the city on this photo?".into()),
                    ],
                    tool_calls: vec![],
                    tool_call_id: None,
                    name: None,
                },
                Message {
                    role: Role::Assistant,
                    content: vec![Part::Text("Let me check.".into())],
                    tool_calls: vec![ToolCall {
                        id: "toolu_01A09q90qw90lq917835lq9".into(),
                        name: "get_weather".into(),
                        arguments: r#"{"location":"Paris, France"}"#.into(),
                    }],
                    tool_call_id: None,
                    name: None,
                },
                Message {
                    role: Role::Tool,
                    content: vec![Part::Text("18°C, sunny".into())],
                    tool_calls: vec![],
                    tool_call_id: Some("toolu_01A09q90qw90lq917835lq9".into()),
                    name: None,
                },
                Message::text(Role::User, "Is that warm?"),
            ],
            max_tokens: Some(1024),
            temperature: Some(0.5),
            top_p: None,
            stop: vec!["END".into()],
            stream: false,
            tools: vec![ToolDef {
                name: "get_weather".into(),
                description: Some("Get the current weather in a given location".into()),
                parameters: json!({"type": "object",
                                   "properties": {"location": {"type": "string", "description": "The city and state"}},
                                   "required": ["location"]}),
            }],
            tool_choice: Some(ToolChoice::Required),
            seed: None,
            user: Some("u-42".into()),
            extra: json!({"top_k": 5, "thinking": {"type": "enabled", "budget_tokens": 2000}})
                .as_object()
                .unwrap()
                .clone(),
            extra_format: Format::Anthropic,
        }
    }

    fn json_of(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn parses_a_full_client_request() {
        assert_eq!(
            parse_messages(CLIENT_MESSAGES.as_bytes()).unwrap(),
            client_messages_expected()
        );
    }

    #[test]
    fn parses_the_other_spellings() {
        let request = parse_messages(
            br#"{"model":"m","max_tokens":5,"system":"Be terse.","messages":[
                {"role":"user","content":"hi"},
                {"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":{}},
                                               {"type":"tool_use","id":"t2","name":"g","input":{"x":1}}]},
                {"role":"user","content":[
                    {"type":"tool_result","tool_use_id":"t1"},
                    {"type":"tool_result","tool_use_id":"t2","is_error":true,"content":[
                        {"type":"text","text":"failed"},
                        {"type":"image","source":{"type":"url","url":"https://x.test/e.png"}}]}]}
            ],"tool_choice":{"type":"tool","name":"f"}}"#,
        )
        .unwrap();
        assert_eq!(
            request.messages[0],
            Message::text(Role::System, "Be terse.")
        );
        assert_eq!(request.messages[1], Message::text(Role::User, "hi"));
        assert_eq!(request.messages[2].tool_calls.len(), 2);
        assert_eq!(request.messages[2].tool_calls[1].arguments, r#"{"x":1}"#);
        assert_eq!(request.messages[3].role, Role::Tool);
        assert!(request.messages[3].content.is_empty());
        assert_eq!(request.messages[4].tool_call_id.as_deref(), Some("t2"));
        assert_eq!(
            request.messages[4].content,
            vec![
                Part::Text("failed".into()),
                Part::Image(Image {
                    url: "https://x.test/e.png".into(),
                    detail: None
                })
            ]
        );
        assert_eq!(request.messages.len(), 5);
        assert_eq!(request.tool_choice, Some(ToolChoice::Tool("f".into())));
    }

    #[test]
    fn refusals_name_the_field() {
        let ok_turn = r#"[{"role":"user","content":"x"}]"#;
        let cases = [
            (format!(r#"{{"model":"m","messages":{ok_turn}}}"#), "max_tokens: required"),
            (format!(r#"{{"max_tokens":1,"messages":{ok_turn}}}"#), "model: required"),
            (r#"{"model":"m","max_tokens":1,"messages":[]}"#.into(), "messages: must not be empty"),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"system","content":"x"}]}"#.into(),
                "messages[0].role: unknown role \"system\"",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":5}]}"#.into(),
                "messages[0].content: expected a string or an array of content blocks",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"tool_use","id":"a","name":"b","input":{}}]}]}"#.into(),
                "messages[0].content[0].type: unsupported block type \"tool_use\" in a user turn",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"document","source":{}}]}]}"#.into(),
                "messages[0].content[0].type: unsupported block type \"document\"",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"file","file_id":"f"}}]}]}"#.into(),
                "messages[0].content[0].source.type: unsupported image source \"file\"",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"tool_result"}]}]}"#.into(),
                "messages[0].content[0].tool_use_id: required",
            ),
            (
                format!(r#"{{"model":"m","max_tokens":1,"messages":{ok_turn},"tools":[{{"type":"web_search_20250305","name":"web_search"}}]}}"#),
                "tools[0].type: server tool \"web_search_20250305\" is not supported",
            ),
            (
                format!(r#"{{"model":"m","max_tokens":1,"messages":{ok_turn},"tools":[{{"name":"f"}}]}}"#),
                "tools[0].input_schema: required",
            ),
            (
                format!(r#"{{"model":"m","max_tokens":1,"messages":{ok_turn},"tool_choice":{{"type":"maybe"}}}}"#),
                "tool_choice.type: unknown type \"maybe\"",
            ),
            (
                format!(r#"{{"model":"m","max_tokens":1,"messages":{ok_turn},"system":7}}"#),
                "system: expected a string or an array of text blocks",
            ),
        ];
        for (body, message) in cases {
            let error = parse_messages(body.as_bytes()).unwrap_err().0;
            assert!(
                error.starts_with(message),
                "{body}\n  gave {error:?}\n  want {message:?}"
            );
        }
    }

    #[test]
    fn messages_body_joins_system_and_merges_tool_results() {
        let mut request = crate::formats::openai::tests::client_chat_expected();
        request.messages.insert(
            4,
            Message {
                tool_call_id: Some("call_def".into()),
                ..Message::text(Role::Tool, "rainy")
            },
        );
        request.messages[2].tool_calls.push(ToolCall {
            id: "call_def".into(),
            name: "get_weather".into(),
            arguments: String::new(),
        });
        request
            .messages
            .push(Message::text(Role::System, "Answer in French."));
        request.tool_choice = Some(ToolChoice::Required);
        request.max_tokens = None;
        let body = Value::Object(messages_body(&request).unwrap());
        assert_eq!(
            body,
            json!({
                "model": "gpt-4o",
                "max_tokens": 4096,
                "system": "You are a helpful assistant.\n\nAnswer in French.",
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "What's the weather like in Paris? Here is a photo."},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/paris.jpg"}}
                    ]},
                    {"role": "assistant", "content": [
                        {"type": "tool_use", "id": "call_abc123", "name": "get_weather", "input": {"location": "Paris, France"}},
                        {"type": "tool_use", "id": "call_def", "name": "get_weather", "input": {}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_abc123", "content": "{\"temperature\":18,\"unit\":\"celsius\"}"},
                        {"type": "tool_result", "tool_use_id": "call_def", "content": "rainy"},
                        {"type": "text", "text": "Thanks! And in Lyon?"}
                    ]}
                ],
                "temperature": 0.2,
                "top_p": 0.9,
                "stop_sequences": ["\n\nUser:"],
                "stream": true,
                "tools": [{
                    "name": "get_weather",
                    "description": "Current weather for a city",
                    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                                     "required": ["location"], "additionalProperties": false}
                }],
                "tool_choice": {"type": "any"},
                "metadata": {"user_id": "user-1234"}
            })
        );
    }

    #[test]
    fn messages_body_keeps_anthropic_extra_and_refuses_bad_arguments() {
        let request = client_messages_expected();
        let body = messages_body(&request).unwrap();
        assert_eq!(body["top_k"], 5);
        assert_eq!(body["thinking"]["budget_tokens"], 2000);
        assert_eq!(body["max_tokens"], 1024);
        // What a client wrote comes back the same through the canonical model.
        let again = parse_messages(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(again, request);

        let mut broken = request;
        broken.messages[2].tool_calls[0].arguments = "{\"location\":".into();
        assert_eq!(
            messages_body(&broken).unwrap_err().0,
            "messages[2].tool_calls[0].arguments: expected the JSON text of an object"
        );
    }

    #[test]
    fn renders_a_message() {
        let response = ChatResponse {
            id: "msg_01".into(),
            model: "claude-sonnet-4-5".into(),
            created: 0,
            message: Message {
                tool_calls: vec![ToolCall {
                    id: "toolu_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"location":"Paris"}"#.into(),
                }],
                ..Message::text(Role::Assistant, "Checking.")
            },
            finish: FinishReason::ToolCalls,
            usage: Some(Usage {
                input: 100,
                output: 20,
                cached_input: 60,
                reasoning: 0,
            }),
        };
        assert_eq!(
            json_of(&render_messages(&response)),
            json!({
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}}
                ],
                "stop_reason": "tool_use",
                "stop_sequence": null,
                "usage": {"input_tokens": 40, "output_tokens": 20, "cache_read_input_tokens": 60}
            })
        );
        for (reason, name) in [
            (FinishReason::Stop, "end_turn"),
            (FinishReason::Length, "max_tokens"),
            (FinishReason::ContentFilter, "refusal"),
            (FinishReason::Other("pause_turn".into()), "pause_turn"),
            (FinishReason::Other("RECITATION".into()), "end_turn"),
        ] {
            let response = ChatResponse {
                finish: reason,
                ..response.clone()
            };
            assert_eq!(json_of(&render_messages(&response))["stop_reason"], name);
        }
    }

    fn frames(bytes: &[u8]) -> Vec<(String, Value)> {
        let text = std::str::from_utf8(bytes).unwrap();
        text.split_terminator("\n\n")
            .map(|frame| {
                let (event, data) = frame.split_once('\n').unwrap();
                let event = event.strip_prefix("event: ").unwrap().to_owned();
                let data = json_of(data.strip_prefix("data: ").unwrap().as_bytes());
                assert_eq!(data["type"], event.as_str());
                (event, data)
            })
            .collect()
    }

    #[test]
    fn renders_the_event_sequence_with_interleaved_blocks() {
        let mut renderer = MessagesStreamRenderer::new();
        let mut out = Vec::new();
        let events = [
            StreamEvent::Start {
                id: "msg_1".into(),
                model: "gpt-4o".into(),
            },
            StreamEvent::Text("Let me ".into()),
            StreamEvent::Text("look.".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_a".into(),
                name: "get_weather".into(),
            },
            StreamEvent::ToolCallArgs {
                index: 0,
                fragment: "{\"location\":".into(),
            },
            StreamEvent::ToolCallArgs {
                index: 0,
                fragment: "\"Paris\"}".into(),
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "call_b".into(),
                name: "get_time".into(),
            },
            StreamEvent::ToolCallArgs {
                index: 1,
                fragment: "{}".into(),
            },
            StreamEvent::Text("Done.".into()),
            StreamEvent::Finish(FinishReason::ToolCalls),
        ];
        for event in &events {
            out.extend_from_slice(&renderer.event(event));
        }
        // The finish waits for its usage.
        assert!(!String::from_utf8_lossy(&out).contains("message_delta"));
        out.extend_from_slice(&renderer.event(&StreamEvent::Usage(Usage {
            input: 30,
            output: 12,
            cached_input: 10,
            reasoning: 0,
        })));
        out.extend_from_slice(&renderer.done());
        assert!(renderer.done().is_empty(), "done once");
        let expected = vec![
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                   "model": "gpt-4o", "content": [], "stop_reason": null, "stop_sequence": null,
                   "usage": {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "look."}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1,
                   "content_block": {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1,
                   "delta": {"type": "input_json_delta", "partial_json": "{\"location\":"}}),
            json!({"type": "content_block_delta", "index": 1,
                   "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "content_block_start", "index": 2,
                   "content_block": {"type": "tool_use", "id": "call_b", "name": "get_time", "input": {}}}),
            json!({"type": "content_block_delta", "index": 2,
                   "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
            json!({"type": "content_block_stop", "index": 2}),
            json!({"type": "content_block_start", "index": 3, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 3, "delta": {"type": "text_delta", "text": "Done."}}),
            json!({"type": "content_block_stop", "index": 3}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                   "usage": {"input_tokens": 20, "output_tokens": 12, "cache_read_input_tokens": 10}}),
            json!({"type": "message_stop"}),
        ];
        let got: Vec<Value> = frames(&out).into_iter().map(|(_, data)| data).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_finish_without_usage_is_written_at_done() {
        let mut renderer = MessagesStreamRenderer::new();
        let mut out = Vec::new();
        for event in [
            StreamEvent::Start {
                id: "m".into(),
                model: "x".into(),
            },
            StreamEvent::Text("hi".into()),
            StreamEvent::Finish(FinishReason::Length),
        ] {
            out.extend_from_slice(&renderer.event(&event));
        }
        out.extend_from_slice(&renderer.done());
        let names: Vec<String> = frames(&out).into_iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let (_, delta) = &frames(&out)[4];
        assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
        assert_eq!(delta["usage"]["output_tokens"], 0);
    }

    #[test]
    fn renders_errors() {
        assert_eq!(
            json_of(&render_error(529, "overloaded", "Overloaded", "req_9")),
            json!({"type": "error",
                   "error": {"type": "overloaded_error", "message": "Overloaded", "code": "overloaded"},
                   "request_id": "req_9"})
        );
        assert!(json_of(&render_error(400, "c", "m", ""))
            .get("request_id")
            .is_none());
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (503, "overloaded_error"),
        ] {
            assert_eq!(
                json_of(&render_error(status, "c", "m", "r"))["error"]["type"],
                kind
            );
        }
    }
}
