//! OpenAI's chat completions, embeddings and model list, as clients write
//! and read them; also the body an OpenAI-style server takes
//! ([`chat_body`], [`embeddings_body`]), which the `openai`, `mistral`,
//! `azure_openai` and `openai_compatible` adapters send.
//!
//! Parsing is strict about the fields the gateway reads (a wrong type is a
//! [`FormatError`] naming the field, e.g. `messages[2].content`) and keeps
//! the fields it does not know in [`ChatRequest::extra`].

use std::fmt::Display;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::canonical::{
    ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse, FinishReason, Format,
    FormatError, Image, Message, Part, Role, StreamEvent, ToolCall, ToolChoice, ToolDef, Usage,
};
use crate::sse;

pub use super::openai_plain::VerbatimChat;

pub(super) type Object = Map<String, Value>;

// ---------------------------------------------------------------------------
// Chat requests

/// What a client asked of a streamed answer beyond the canonical request
/// (`stream_options`, which the gateway decides for the provider itself).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// `stream_options.include_usage`: end the stream with a usage chunk.
    pub include_usage: bool,
}

/// A client's chat completions body.
pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, FormatError> {
    parse_chat_with_options(body).map(|(request, _)| request)
}

/// A client's chat completions body, and its `stream_options` (which are
/// not kept in [`ChatRequest::extra`]).
pub fn parse_chat_with_options(body: &[u8]) -> Result<(ChatRequest, StreamOptions), FormatError> {
    // The common shape, without a `Value` tree; it never decides an error.
    if let Some(parsed) = super::openai_plain::parse(body) {
        return Ok(parsed);
    }
    parse_chat_general(body)
}

/// A client's chat completions body, its `stream_options`, and the body
/// itself when an OpenAI-style server may be sent it as it came.
pub fn parse_chat_verbatim(
    body: &Bytes,
) -> Result<(ChatRequest, StreamOptions, Option<VerbatimChat>), FormatError> {
    if let Some(parsed) = super::openai_plain::parse_verbatim(body) {
        return Ok(parsed);
    }
    parse_chat_general(body).map(|(request, options)| (request, options, None))
}

/// Reads any chat body through a `Value` tree, naming the field at fault
/// in an error.
fn parse_chat_general(body: &[u8]) -> Result<(ChatRequest, StreamOptions), FormatError> {
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
        extra_format: Format::OpenAi,
    };
    let mut options = StreamOptions::default();
    let mut model = None;
    let mut messages = None;
    let mut max_tokens = None;
    let mut max_completion_tokens = None;
    for (key, value) in root {
        if value.is_null() {
            continue;
        }
        let at = key.as_str();
        match at {
            "model" => model = Some(string(&value, at)?.to_owned()),
            "messages" => messages = Some(parse_messages(&value)?),
            "max_tokens" => max_tokens = Some(unsigned(&value, at)?),
            "max_completion_tokens" => max_completion_tokens = Some(unsigned(&value, at)?),
            "temperature" => request.temperature = Some(number(&value, at)?),
            "top_p" => request.top_p = Some(number(&value, at)?),
            "stop" => request.stop = parse_stop(&value)?,
            "stream" => request.stream = boolean(&value, at)?,
            "stream_options" => {
                let object = object(&value, at)?;
                if let Some(include) = object.get("include_usage").filter(|v| !v.is_null()) {
                    options.include_usage = boolean(include, "stream_options.include_usage")?;
                }
            }
            "tools" => request.tools = parse_tools(&value)?,
            "tool_choice" => request.tool_choice = Some(parse_tool_choice(&value)?),
            "seed" => {
                request.seed = Some(value.as_i64().ok_or_else(|| expected(at, "an integer"))?)
            }
            "user" => request.user = Some(string(&value, at)?.to_owned()),
            _ => {
                request.extra.insert(key, value);
            }
        }
    }
    request.model = model
        .filter(|m| !m.is_empty())
        .ok_or_else(|| FormatError::new("model: required"))?;
    request.messages = messages.ok_or_else(|| FormatError::new("messages: required"))?;
    if request.messages.is_empty() {
        return Err(FormatError::new("messages: must not be empty"));
    }
    request.max_tokens = max_completion_tokens.or(max_tokens);
    Ok((request, options))
}

fn parse_messages(value: &Value) -> Result<Vec<Message>, FormatError> {
    let items = array(value, "messages")?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_message(item, &format!("messages[{i}]")))
        .collect()
}

fn parse_message(value: &Value, path: &str) -> Result<Message, FormatError> {
    let obj = object(value, path)?;
    let role = required_str(obj, "role", path)?;
    let name = optional_str(obj, "name", path)?.map(str::to_owned);
    let content_path = format!("{path}.content");
    let content = obj.get("content").filter(|v| !v.is_null());
    let mut message = Message {
        role: Role::User,
        content: Vec::new(),
        tool_calls: Vec::new(),
        tool_call_id: None,
        name,
    };
    match role {
        "system" | "developer" | "user" => {
            message.role = if role == "user" {
                Role::User
            } else {
                Role::System
            };
            let content =
                content.ok_or_else(|| FormatError::new(format!("{content_path}: required")))?;
            message.content = parse_content(content, &content_path)?;
        }
        "assistant" => {
            message.role = Role::Assistant;
            if let Some(content) = content {
                message.content = parse_content(content, &content_path)?;
            }
            if let Some(calls) = obj.get("tool_calls").filter(|v| !v.is_null()) {
                let calls_path = format!("{path}.tool_calls");
                message.tool_calls = array(calls, &calls_path)?
                    .iter()
                    .enumerate()
                    .map(|(i, call)| parse_tool_call(call, &format!("{calls_path}[{i}]")))
                    .collect::<Result<_, _>>()?;
            }
            // The legacy single `function_call`: a tool call whose id is the name.
            if let Some(call) = obj.get("function_call").filter(|v| !v.is_null()) {
                let call_path = format!("{path}.function_call");
                let call = object(call, &call_path)?;
                let name = required_str(call, "name", &call_path)?;
                message.tool_calls.push(ToolCall {
                    id: name.to_owned(),
                    name: name.to_owned(),
                    arguments: arguments_text(call.get("arguments"), &call_path)?,
                });
            }
        }
        "tool" => {
            message.role = Role::Tool;
            message.tool_call_id = Some(required_str(obj, "tool_call_id", path)?.to_owned());
            if let Some(content) = content {
                message.content = parse_content(content, &content_path)?;
            }
        }
        // The legacy answer to a `function_call`: answers the call named `name`.
        "function" => {
            message.role = Role::Tool;
            let name = message
                .name
                .clone()
                .ok_or_else(|| FormatError::new(format!("{path}.name: required")))?;
            message.tool_call_id = Some(name);
            if let Some(content) = content {
                message.content = parse_content(content, &content_path)?;
            }
        }
        other => {
            return Err(FormatError::new(format!(
                "{path}.role: unknown role \"{other}\" (expected system, developer, user, assistant or tool)"
            )))
        }
    }
    Ok(message)
}

fn parse_content(value: &Value, path: &str) -> Result<Vec<Part>, FormatError> {
    match value {
        Value::String(text) => Ok(vec![Part::Text(text.clone())]),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(i, part)| parse_part(part, &format!("{path}[{i}]")))
            .collect(),
        _ => Err(expected(path, "a string or an array of parts")),
    }
}

fn parse_part(value: &Value, path: &str) -> Result<Part, FormatError> {
    let obj = object(value, path)?;
    match required_str(obj, "type", path)? {
        "text" => Ok(Part::Text(required_str(obj, "text", path)?.to_owned())),
        "refusal" => Ok(Part::Text(required_str(obj, "refusal", path)?.to_owned())),
        "image_url" => {
            let image_path = format!("{path}.image_url");
            match obj.get("image_url") {
                Some(Value::String(url)) => Ok(Part::Image(Image {
                    url: url.clone(),
                    detail: None,
                })),
                Some(Value::Object(image)) => Ok(Part::Image(Image {
                    url: required_str(image, "url", &image_path)?.to_owned(),
                    detail: optional_str(image, "detail", &image_path)?.map(str::to_owned),
                })),
                Some(_) => Err(expected(&image_path, "an object with a url")),
                None => Err(FormatError::new(format!("{image_path}: required"))),
            }
        }
        other => Err(FormatError::new(format!(
            "{path}.type: unsupported part type \"{other}\" (expected text or image_url)"
        ))),
    }
}

fn parse_tool_call(value: &Value, path: &str) -> Result<ToolCall, FormatError> {
    let obj = object(value, path)?;
    if let Some(kind) = optional_str(obj, "type", path)? {
        if kind != "function" {
            return Err(FormatError::new(format!(
                "{path}.type: unsupported tool call type \"{kind}\" (expected function)"
            )));
        }
    }
    let function_path = format!("{path}.function");
    let function = object(
        obj.get("function")
            .ok_or_else(|| FormatError::new(format!("{function_path}: required")))?,
        &function_path,
    )?;
    Ok(ToolCall {
        id: required_str(obj, "id", path)?.to_owned(),
        name: required_str(function, "name", &function_path)?.to_owned(),
        arguments: arguments_text(function.get("arguments"), &function_path)?,
    })
}

/// Arguments are JSON text; a client sending the JSON itself is forgiven.
fn arguments_text(value: Option<&Value>, path: &str) -> Result<String, FormatError> {
    match value {
        None | Some(Value::Null) => Ok("{}".to_owned()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(object @ Value::Object(_)) => Ok(object.to_string()),
        Some(_) => Err(expected(format!("{path}.arguments"), "a string")),
    }
}

fn parse_stop(value: &Value) -> Result<Vec<String>, FormatError> {
    match value {
        Value::String(stop) => Ok(vec![stop.clone()]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| string(item, &format!("stop[{i}]")).map(str::to_owned))
            .collect(),
        _ => Err(expected("stop", "a string or an array of strings")),
    }
}

fn parse_tools(value: &Value) -> Result<Vec<ToolDef>, FormatError> {
    let mut tools = Vec::new();
    for (i, item) in array(value, "tools")?.iter().enumerate() {
        let path = format!("tools[{i}]");
        let obj = object(item, &path)?;
        let kind = required_str(obj, "type", &path)?;
        if kind != "function" {
            return Err(FormatError::new(format!(
                "{path}.type: unsupported tool type \"{kind}\" (expected function)"
            )));
        }
        let function_path = format!("{path}.function");
        let function = object(
            obj.get("function")
                .ok_or_else(|| FormatError::new(format!("{function_path}: required")))?,
            &function_path,
        )?;
        let parameters = match function.get("parameters") {
            None | Some(Value::Null) => empty_schema(),
            Some(schema @ Value::Object(_)) => schema.clone(),
            Some(_) => return Err(expected(format!("{function_path}.parameters"), "an object")),
        };
        tools.push(ToolDef {
            name: required_str(function, "name", &function_path)?.to_owned(),
            description: optional_str(function, "description", &function_path)?.map(str::to_owned),
            parameters,
        });
    }
    Ok(tools)
}

/// The schema of a function without parameters.
fn empty_schema() -> Value {
    json!({"type": "object", "properties": {}})
}

fn parse_tool_choice(value: &Value) -> Result<ToolChoice, FormatError> {
    const EXPECTED: &str =
        "\"auto\", \"none\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":…}}";
    match value {
        Value::String(choice) => match choice.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            _ => Err(expected("tool_choice", EXPECTED)),
        },
        Value::Object(obj) => {
            let function = obj
                .get("function")
                .and_then(Value::as_object)
                .filter(|_| obj.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| expected("tool_choice", EXPECTED))?;
            Ok(ToolChoice::Tool(
                required_str(function, "name", "tool_choice.function")?.to_owned(),
            ))
        }
        _ => Err(expected("tool_choice", EXPECTED)),
    }
}

/// The chat completions body an OpenAI-style server takes for `request`:
/// the inverse of [`parse_chat`], [`ChatRequest::extra`] included when it
/// was written in this format. `max_tokens` is written as `max_tokens`;
/// adapters rename what their server wants otherwise.
pub fn chat_body(request: &ChatRequest) -> Map<String, Value> {
    let mut body = Map::new();
    if request.extra_format == Format::OpenAi {
        body.extend(request.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    body.insert("model".into(), request.model.clone().into());
    body.insert(
        "messages".into(),
        request.messages.iter().map(message_json).collect(),
    );
    if let Some(max_tokens) = request.max_tokens {
        body.insert("max_tokens".into(), max_tokens.into());
    }
    if let Some(temperature) = request.temperature {
        body.insert("temperature".into(), temperature.into());
    }
    if let Some(top_p) = request.top_p {
        body.insert("top_p".into(), top_p.into());
    }
    if !request.stop.is_empty() {
        body.insert("stop".into(), request.stop.clone().into());
    }
    if request.stream {
        body.insert("stream".into(), true.into());
    }
    if !request.tools.is_empty() {
        let tools = request
            .tools
            .iter()
            .map(|tool| {
                let mut function = Map::new();
                function.insert("name".into(), tool.name.clone().into());
                if let Some(description) = &tool.description {
                    function.insert("description".into(), description.clone().into());
                }
                function.insert("parameters".into(), tool.parameters.clone());
                json!({"type": "function", "function": function})
            })
            .collect();
        body.insert("tools".into(), tools);
    }
    if let Some(choice) = &request.tool_choice {
        let choice = match choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        };
        body.insert("tool_choice".into(), choice);
    }
    if let Some(seed) = request.seed {
        body.insert("seed".into(), seed.into());
    }
    if let Some(user) = &request.user {
        body.insert("user".into(), user.clone().into());
    }
    body
}

fn message_json(message: &Message) -> Value {
    let mut obj = Map::new();
    let role = match message.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    obj.insert("role".into(), role.into());
    let no_text = message.content.iter().all(|part| match part {
        Part::Text(text) => text.is_empty(),
        Part::Image(_) => false,
    });
    let content = if message.role == Role::Assistant && no_text && !message.tool_calls.is_empty() {
        Value::Null
    } else {
        content_json(&message.content)
    };
    obj.insert("content".into(), content);
    if !message.tool_calls.is_empty() {
        let calls = message
            .tool_calls
            .iter()
            .map(|call| {
                json!({
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                })
            })
            .collect();
        obj.insert("tool_calls".into(), calls);
    }
    if let Some(id) = &message.tool_call_id {
        obj.insert("tool_call_id".into(), id.clone().into());
    }
    if let Some(name) = &message.name {
        obj.insert("name".into(), name.clone().into());
    }
    Value::Object(obj)
}

/// One text part as a string, anything else as an array of parts.
fn content_json(parts: &[Part]) -> Value {
    match parts {
        [] => Value::String(String::new()),
        [Part::Text(text)] => Value::String(text.clone()),
        parts => parts
            .iter()
            .map(|part| match part {
                Part::Text(text) => json!({"type": "text", "text": text}),
                Part::Image(image) => {
                    let mut url = Map::new();
                    url.insert("url".into(), image.url.clone().into());
                    if let Some(detail) = &image.detail {
                        url.insert("detail".into(), detail.clone().into());
                    }
                    json!({"type": "image_url", "image_url": url})
                }
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------
// Chat answers

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: [CompletionChoice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageJson>,
}

#[derive(Serialize)]
struct CompletionChoice<'a> {
    index: u32,
    message: AssistantJson<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantJson<'a> {
    role: &'static str,
    content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallJson<'a>>,
}

#[derive(Serialize)]
struct ToolCallJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionJson<'a>,
}

#[derive(Serialize)]
struct FunctionJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct UsageJson {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedJson,
    completion_tokens_details: ReasoningJson,
}

#[derive(Serialize)]
struct CachedJson {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct ReasoningJson {
    reasoning_tokens: u64,
}

impl From<&Usage> for UsageJson {
    fn from(usage: &Usage) -> UsageJson {
        UsageJson {
            prompt_tokens: usage.input,
            completion_tokens: usage.output,
            total_tokens: usage.input + usage.output,
            prompt_tokens_details: CachedJson {
                cached_tokens: usage.cached_input,
            },
            completion_tokens_details: ReasoningJson {
                reasoning_tokens: usage.reasoning,
            },
        }
    }
}

/// OpenAI's name for a finish reason; reasons it does not know end as `stop`.
fn finish_reason(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::Other(other) => match other.as_str() {
            "function_call" => "function_call",
            _ => "stop",
        },
    }
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    // A whole completion is ~400 bytes: starting at `to_vec`'s 128 grew it twice.
    let mut json = Vec::with_capacity(512);
    serde_json::to_writer(&mut json, value).expect("serialising plain structs cannot fail");
    json
}

fn to_json_string(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("serialising plain structs cannot fail")
}

/// A whole chat completion, as an OpenAI client reads it.
pub fn render_chat(response: &ChatResponse) -> Bytes {
    let text = response.message.joined_text();
    let content = if text.is_empty() && !response.message.tool_calls.is_empty() {
        None
    } else {
        Some(text)
    };
    let completion = Completion {
        id: &response.id,
        object: "chat.completion",
        created: response.created,
        model: &response.model,
        choices: [CompletionChoice {
            index: 0,
            message: AssistantJson {
                role: "assistant",
                content,
                tool_calls: response
                    .message
                    .tool_calls
                    .iter()
                    .map(|call| ToolCallJson {
                        index: None,
                        id: Some(&call.id),
                        kind: Some("function"),
                        function: FunctionJson {
                            name: Some(&call.name),
                            arguments: &call.arguments,
                        },
                    })
                    .collect(),
            },
            logprobs: None,
            finish_reason: finish_reason(&response.finish),
        }],
        usage: response.usage.as_ref().map(UsageJson::from),
    };
    Bytes::from(to_json(&completion))
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: Vec<ChunkChoice<'a>>,
    /// Absent unless the client asked for usage; then `null` but on the
    /// usage chunk, as OpenAI writes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageJson>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallJson<'a>>,
}

/// Writes a canonical stream as OpenAI `chat.completion.chunk` events.
#[derive(Debug)]
pub struct ChatStreamRenderer {
    include_usage: bool,
    id: String,
    model: String,
    created: i64,
    role_sent: bool,
}

impl ChatStreamRenderer {
    /// `include_usage`: the client's `stream_options.include_usage`.
    pub fn new(include_usage: bool) -> ChatStreamRenderer {
        ChatStreamRenderer {
            include_usage,
            id: String::new(),
            model: String::new(),
            created: unix_now(),
            role_sent: false,
        }
    }

    /// The SSE frames for `event` (none for a usage the client did not ask for).
    pub fn event(&mut self, event: &StreamEvent) -> Bytes {
        match event {
            StreamEvent::Start { id, model } => {
                self.id.clone_from(id);
                self.model.clone_from(model);
                self.delta(
                    Delta {
                        content: Some(""),
                        ..Delta::default()
                    },
                    None,
                )
            }
            StreamEvent::Text(text) => self.delta(
                Delta {
                    content: Some(text),
                    ..Delta::default()
                },
                None,
            ),
            StreamEvent::ToolCallStart { index, id, name } => self.delta(
                Delta {
                    tool_calls: vec![ToolCallJson {
                        index: Some(*index),
                        id: Some(id),
                        kind: Some("function"),
                        function: FunctionJson {
                            name: Some(name),
                            arguments: "",
                        },
                    }],
                    ..Delta::default()
                },
                None,
            ),
            StreamEvent::ToolCallArgs { index, fragment } => self.delta(
                Delta {
                    tool_calls: vec![ToolCallJson {
                        index: Some(*index),
                        id: None,
                        kind: None,
                        function: FunctionJson {
                            name: None,
                            arguments: fragment,
                        },
                    }],
                    ..Delta::default()
                },
                None,
            ),
            StreamEvent::Finish(reason) => {
                self.delta(Delta::default(), Some(finish_reason(reason)))
            }
            StreamEvent::Usage(usage) => {
                if !self.include_usage {
                    return Bytes::new();
                }
                let chunk = Chunk {
                    id: &self.id,
                    object: "chat.completion.chunk",
                    created: self.created,
                    model: &self.model,
                    choices: Vec::new(),
                    usage: Some(Some(UsageJson::from(usage))),
                };
                sse::frame(None, &to_json_string(&chunk))
            }
        }
    }

    /// The end of the stream: `data: [DONE]`.
    pub fn done(&mut self) -> Bytes {
        sse::frame(None, "[DONE]")
    }

    fn delta(&mut self, mut delta: Delta<'_>, finish: Option<&'static str>) -> Bytes {
        if !self.role_sent {
            self.role_sent = true;
            delta.role = Some("assistant");
        }
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: finish,
            }],
            usage: self.include_usage.then_some(None),
        };
        sse::frame(None, &to_json_string(&chunk))
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

// ---------------------------------------------------------------------------
// Embeddings

/// How the client wants vectors written (`encoding_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EmbeddingEncoding {
    /// Arrays of numbers.
    #[default]
    Float,
    /// Base64 of the little-endian `f32`s (what OpenAI's SDKs ask for by
    /// default, and decode themselves).
    Base64,
}

/// A client's embeddings body.
pub fn parse_embeddings(body: &[u8]) -> Result<EmbeddingsRequest, FormatError> {
    parse_embeddings_with_encoding(body).map(|(request, _)| request)
}

/// A client's embeddings body and the encoding it wants the vectors in.
pub fn parse_embeddings_with_encoding(
    body: &[u8],
) -> Result<(EmbeddingsRequest, EmbeddingEncoding), FormatError> {
    let root = parse_object(body)?;
    let model = optional_str(&root, "model", "")?
        .filter(|m| !m.is_empty())
        .ok_or_else(|| FormatError::new("model: required"))?
        .to_owned();
    let input = match root.get("input") {
        None | Some(Value::Null) => return Err(FormatError::new("input: required")),
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(FormatError::new("input: must not be empty"));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(text) => Ok(text.clone()),
                    Value::Number(_) | Value::Array(_) => Err(FormatError::new(
                        "input: token arrays are not supported; send the text",
                    )),
                    _ => Err(expected(format!("input[{i}]"), "a string")),
                })
                .collect::<Result<_, _>>()?
        }
        Some(_) => return Err(expected("input", "a string or an array of strings")),
    };
    let dimensions = match root.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(value) => Some(unsigned(value, "dimensions")?),
    };
    let encoding = match optional_str(&root, "encoding_format", "")? {
        None | Some("float") => EmbeddingEncoding::Float,
        Some("base64") => EmbeddingEncoding::Base64,
        Some(_) => return Err(expected("encoding_format", "\"float\" or \"base64\"")),
    };
    let request = EmbeddingsRequest {
        model,
        input,
        dimensions,
        user: optional_str(&root, "user", "")?.map(str::to_owned),
    };
    Ok((request, encoding))
}

/// The embeddings body an OpenAI-style server takes for `request`.
pub fn embeddings_body(request: &EmbeddingsRequest) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("model".into(), request.model.clone().into());
    body.insert("input".into(), request.input.clone().into());
    if let Some(dimensions) = request.dimensions {
        body.insert("dimensions".into(), dimensions.into());
    }
    if let Some(user) = &request.user {
        body.insert("user".into(), user.clone().into());
    }
    body
}

#[derive(Serialize)]
struct EmbeddingList<'a, E: Serialize> {
    object: &'static str,
    data: Vec<EmbeddingJson<E>>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct EmbeddingJson<E: Serialize> {
    object: &'static str,
    index: usize,
    embedding: E,
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// An embeddings answer with vectors as arrays of numbers.
pub fn render_embeddings(response: &EmbeddingsResponse) -> Bytes {
    render_embeddings_with_encoding(response, EmbeddingEncoding::Float)
}

/// An embeddings answer with vectors in `encoding`.
pub fn render_embeddings_with_encoding(
    response: &EmbeddingsResponse,
    encoding: EmbeddingEncoding,
) -> Bytes {
    let input = response.usage.map_or(0, |usage| usage.input);
    let usage = EmbeddingUsage {
        prompt_tokens: input,
        total_tokens: input,
    };
    let body = match encoding {
        EmbeddingEncoding::Float => to_json(&EmbeddingList {
            object: "list",
            data: response
                .data
                .iter()
                .enumerate()
                .map(|(index, vector)| EmbeddingJson {
                    object: "embedding",
                    index,
                    embedding: vector.as_slice(),
                })
                .collect(),
            model: &response.model,
            usage,
        }),
        EmbeddingEncoding::Base64 => to_json(&EmbeddingList {
            object: "list",
            data: response
                .data
                .iter()
                .enumerate()
                .map(|(index, vector)| {
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    EmbeddingJson {
                        object: "embedding",
                        index,
                        embedding: base64::engine::general_purpose::STANDARD.encode(bytes),
                    }
                })
                .collect(),
            model: &response.model,
            usage,
        }),
    };
    Bytes::from(body)
}

// ---------------------------------------------------------------------------
// Models and errors

/// `GET /v1/models`: one entry per `(id, owned_by)`.
pub fn render_models(models: &[(&str, &str)]) -> Bytes {
    #[derive(Serialize)]
    struct Model<'a> {
        id: &'a str,
        object: &'static str,
        created: i64,
        owned_by: &'a str,
    }
    #[derive(Serialize)]
    struct List<'a> {
        object: &'static str,
        data: Vec<Model<'a>>,
    }
    let list = List {
        object: "list",
        data: models
            .iter()
            .map(|(id, owned_by)| Model {
                id,
                object: "model",
                created: 0,
                owned_by,
            })
            .collect(),
    };
    Bytes::from(to_json(&list))
}

/// An error as OpenAI writes it, its `type` chosen by `status`.
pub fn render_error(status: u16, code: &str, message: &str, request_id: &str) -> Bytes {
    let kind = match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    };
    let body = json!({
        "error": {
            "message": message,
            "type": kind,
            "param": null,
            "code": code,
            "request_id": request_id,
        }
    });
    Bytes::from(to_json(&body))
}

// ---------------------------------------------------------------------------
// Reading a client's JSON, naming the field on error (shared with the
// Anthropic format)

pub(super) fn parse_object(body: &[u8]) -> Result<Object, FormatError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(FormatError::new("body: expected a JSON object")),
        Err(e) => Err(FormatError::new(format!("body: not valid JSON: {e}"))),
    }
}

pub(super) fn expected(path: impl Display, what: &str) -> FormatError {
    FormatError::new(format!("{path}: expected {what}"))
}

pub(super) fn field_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Object, FormatError> {
    value.as_object().ok_or_else(|| expected(path, "an object"))
}

pub(super) fn array<'a>(value: &'a Value, path: &str) -> Result<&'a Vec<Value>, FormatError> {
    value.as_array().ok_or_else(|| expected(path, "an array"))
}

pub(super) fn string<'a>(value: &'a Value, path: &str) -> Result<&'a str, FormatError> {
    value.as_str().ok_or_else(|| expected(path, "a string"))
}

pub(super) fn number(value: &Value, path: &str) -> Result<f64, FormatError> {
    value.as_f64().ok_or_else(|| expected(path, "a number"))
}

pub(super) fn unsigned(value: &Value, path: &str) -> Result<u64, FormatError> {
    value
        .as_u64()
        .ok_or_else(|| expected(path, "a non-negative integer"))
}

pub(super) fn boolean(value: &Value, path: &str) -> Result<bool, FormatError> {
    value
        .as_bool()
        .ok_or_else(|| expected(path, "true or false"))
}

pub(super) fn optional_str<'a>(
    obj: &'a Object,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, FormatError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        // The path is spelled out only for an error: this runs for every
        // field of every message.
        Some(value) => value
            .as_str()
            .map(Some)
            .ok_or_else(|| expected(field_path(path, key), "a string")),
    }
}

pub(super) fn required_str<'a>(
    obj: &'a Object,
    key: &str,
    path: &str,
) -> Result<&'a str, FormatError> {
    optional_str(obj, key, path)?
        .ok_or_else(|| FormatError::new(format!("{}: required", field_path(path, key))))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The general reader alone, for comparing the plain one against it.
    pub(crate) fn parse_general(body: &[u8]) -> Result<(ChatRequest, StreamOptions), FormatError> {
        parse_chat_general(body)
    }

    /// A client's streamed request: a system prompt, an image, a tool call
    /// and its answer, tools, and fields the canonical model does not know.
    pub(crate) const CLIENT_CHAT: &str = r#"{
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [
                {"type": "text", "text": "What's the weather like in Paris? Here is a photo."},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/paris.jpg"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_abc123", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris, France\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_abc123", "content": "{\"temperature\":18,\"unit\":\"celsius\"}"},
            {"role": "user", "content": "Thanks! And in Lyon?", "name": "ana"}
        ],
        "max_tokens": 100,
        "max_completion_tokens": 256,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": "\n\nUser:",
        "stream": true,
        "stream_options": {"include_usage": true},
        "tools": [{"type": "function", "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                           "required": ["location"], "additionalProperties": false},
            "strict": true
        }}],
        "tool_choice": "auto",
        "seed": 42,
        "user": "user-1234",
        "response_format": {"type": "text"},
        "logprobs": null,
        "n": 1
    }"#;

    pub(crate) fn client_chat_expected() -> ChatRequest {
        ChatRequest {
            model: "gpt-4o".into(),
            messages: vec![
                Message::text(Role::System, "You are a helpful assistant."),
                Message {
                    role: Role::User,
                    content: vec![
                        Part::Text("What's the weather like in Paris? Here is a photo.".into()),
                        Part::Image(Image {
                            url: "data:image/png;base64,iVBORw0KGgo=".into(),
                            detail: Some("low".into()),
                        }),
                        Part::Image(Image {
                            url: "https://example.com/paris.jpg".into(),
                            detail: None,
                        }),
                    ],
                    tool_calls: vec![],
                    tool_call_id: None,
                    name: None,
                },
                Message {
                    role: Role::Assistant,
                    content: vec![],
                    tool_calls: vec![ToolCall {
                        id: "call_abc123".into(),
                        name: "get_weather".into(),
                        arguments: r#"{"location":"Paris, France"}"#.into(),
                    }],
                    tool_call_id: None,
                    name: None,
                },
                Message {
                    role: Role::Tool,
                    content: vec![Part::Text(r#"{"temperature":18,"unit":"celsius"}"#.into())],
                    tool_calls: vec![],
                    tool_call_id: Some("call_abc123".into()),
                    name: None,
                },
                Message {
                    name: Some("ana".into()),
                    ..Message::text(Role::User, "Thanks! And in Lyon?")
                },
            ],
            max_tokens: Some(256),
            temperature: Some(0.2),
            top_p: Some(0.9),
            stop: vec!["\n\nUser:".into()],
            stream: true,
            tools: vec![ToolDef {
                name: "get_weather".into(),
                description: Some("Current weather for a city".into()),
                parameters: json!({"type": "object", "properties": {"location": {"type": "string"}},
                                   "required": ["location"], "additionalProperties": false}),
            }],
            tool_choice: Some(ToolChoice::Auto),
            seed: Some(42),
            user: Some("user-1234".into()),
            extra: json!({"response_format": {"type": "text"}, "n": 1})
                .as_object()
                .unwrap()
                .clone(),
            extra_format: Format::OpenAi,
        }
    }

    fn json_of(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    fn error_of(body: &str) -> String {
        parse_chat(body.as_bytes()).unwrap_err().0
    }

    #[test]
    fn parses_a_full_client_request() {
        let (request, options) = parse_chat_with_options(CLIENT_CHAT.as_bytes()).unwrap();
        assert_eq!(request, client_chat_expected());
        assert!(options.include_usage);
        assert!(!request.extra.contains_key("stream_options"));
    }

    #[test]
    fn parses_the_other_spellings() {
        let request = parse_chat(
            br#"{"model":"m","messages":[
                {"role":"developer","content":[{"type":"text","text":"be brief"}]},
                {"role":"user","content":[{"type":"image_url","image_url":"https://x.test/a.png"}]},
                {"role":"assistant","content":"ok","function_call":{"name":"lookup","arguments":"{}"}},
                {"role":"function","name":"lookup","content":"42"}
            ],"max_tokens":7,"stop":["a","b"],
              "tool_choice":{"type":"function","function":{"name":"lookup"}}}"#,
        )
        .unwrap();
        assert_eq!(request.messages[0], Message::text(Role::System, "be brief"));
        assert_eq!(
            request.messages[1].content,
            vec![Part::Image(Image {
                url: "https://x.test/a.png".into(),
                detail: None
            })]
        );
        assert_eq!(
            request.messages[2].tool_calls,
            vec![ToolCall {
                id: "lookup".into(),
                name: "lookup".into(),
                arguments: "{}".into()
            }]
        );
        assert_eq!(request.messages[3].role, Role::Tool);
        assert_eq!(request.messages[3].tool_call_id.as_deref(), Some("lookup"));
        assert_eq!(request.max_tokens, Some(7));
        assert_eq!(request.stop, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(request.tool_choice, Some(ToolChoice::Tool("lookup".into())));
        assert!(!request.stream);
        let (_, options) = parse_chat_with_options(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        assert!(!options.include_usage);
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (r#"[1]"#, "body: expected a JSON object"),
            (r#"{"model":"m""#, "body: not valid JSON"),
            (
                r#"{"messages":[{"role":"user","content":"x"}]}"#,
                "model: required",
            ),
            (r#"{"model":"m"}"#, "messages: required"),
            (
                r#"{"model":"m","messages":[]}"#,
                "messages: must not be empty",
            ),
            (
                r#"{"model":"m","messages":{}}"#,
                "messages: expected an array",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"user","content":"b"},{"role":"user","content":3}]}"#,
                "messages[2].content: expected a string or an array of parts",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}]}"#,
                "messages[0].content: required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#,
                "messages[0].role: unknown role \"robot\"",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"input_audio"}]}]}"#,
                "messages[0].content[0].type: unsupported part type \"input_audio\"",
            ),
            (
                r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#,
                "messages[0].tool_call_id: required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"type":"function","function":{"name":"f"}}]}]}"#,
                "messages[0].tool_calls[0].id: required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
                "temperature: expected a number",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
                "max_tokens: expected a non-negative integer",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":5}"#,
                "stop: expected a string or an array of strings",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tool_choice":"sometimes"}"#,
                "tool_choice: expected",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"web_search"}]}"#,
                "tools[0].type: unsupported tool type \"web_search\"",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":"yes"}}"#,
                "stream_options.include_usage: expected true or false",
            ),
        ];
        for (body, message) in cases {
            let error = error_of(body);
            assert!(
                error.starts_with(message),
                "{body}\n  gave {error:?}\n  want {message:?}"
            );
        }
    }

    #[test]
    fn chat_body_is_the_inverse_of_parse_chat() {
        let request = client_chat_expected();
        let body = json_body_bytes(chat_body(&request));
        assert_eq!(parse_chat(&body).unwrap(), request);
        let written = json_of(&body);
        assert_eq!(written["messages"][2]["content"], Value::Null);
        assert_eq!(written["messages"][4]["content"], "Thanks! And in Lyon?");
        assert_eq!(written["max_tokens"], 256);
        assert!(written.get("stream_options").is_none());
        // Extra from another format stays home.
        let mut anthropic = request.clone();
        anthropic.extra_format = Format::Anthropic;
        assert!(chat_body(&anthropic).get("response_format").is_none());
    }

    fn json_body_bytes(body: Map<String, Value>) -> Vec<u8> {
        serde_json::to_vec(&Value::Object(body)).unwrap()
    }

    fn response(message: Message, finish: FinishReason) -> ChatResponse {
        ChatResponse {
            id: "chatcmpl-123".into(),
            model: "gpt-4o-2024-08-06".into(),
            created: 1_728_933_352,
            message,
            finish,
            usage: Some(Usage {
                input: 19,
                output: 10,
                cached_input: 8,
                reasoning: 3,
            }),
        }
    }

    #[test]
    fn renders_a_completion() {
        let text = render_chat(&response(
            Message::text(Role::Assistant, "Hi there!"),
            FinishReason::Stop,
        ));
        assert_eq!(
            json_of(&text),
            json!({
                "id": "chatcmpl-123",
                "object": "chat.completion",
                "created": 1_728_933_352,
                "model": "gpt-4o-2024-08-06",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hi there!"},
                    "logprobs": null,
                    "finish_reason": "stop"
                }],
                "usage": {
                    "prompt_tokens": 19,
                    "completion_tokens": 10,
                    "total_tokens": 29,
                    "prompt_tokens_details": {"cached_tokens": 8},
                    "completion_tokens_details": {"reasoning_tokens": 3}
                }
            })
        );
        let calls = Message {
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: r#"{"location":"Paris"}"#.into(),
            }],
            ..Message::text(Role::Assistant, "")
        };
        let mut answer = response(calls, FinishReason::ToolCalls);
        answer.usage = None;
        assert_eq!(
            json_of(&render_chat(&answer))["choices"][0],
            json!({
                "index": 0,
                "message": {"role": "assistant", "content": null, "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}
                }]},
                "logprobs": null,
                "finish_reason": "tool_calls"
            })
        );
        assert!(json_of(&render_chat(&answer)).get("usage").is_none());
        for (reason, name) in [
            (FinishReason::Length, "length"),
            (FinishReason::ContentFilter, "content_filter"),
            (FinishReason::Other("RECITATION".into()), "stop"),
        ] {
            let answer = response(Message::text(Role::Assistant, "x"), reason);
            assert_eq!(
                json_of(&render_chat(&answer))["choices"][0]["finish_reason"],
                name
            );
        }
    }

    fn stream_events() -> Vec<StreamEvent> {
        vec![
            StreamEvent::Start {
                id: "chatcmpl-9".into(),
                model: "gpt-4o".into(),
            },
            StreamEvent::Text("Hel".into()),
            StreamEvent::Text("lo".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_1".into(),
                name: "f".into(),
            },
            StreamEvent::ToolCallArgs {
                index: 0,
                fragment: "{\"a\":".into(),
            },
            StreamEvent::ToolCallArgs {
                index: 0,
                fragment: "1}".into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::Usage(Usage {
                input: 5,
                output: 7,
                cached_input: 0,
                reasoning: 2,
            }),
        ]
    }

    fn render_stream(mut renderer: ChatStreamRenderer) -> String {
        renderer.created = 1_700_000_000;
        let mut out = Vec::new();
        for event in stream_events() {
            out.extend_from_slice(&renderer.event(&event));
        }
        out.extend_from_slice(&renderer.done());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn renders_a_stream_with_usage() {
        let head = r#"{"id":"chatcmpl-9","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o","choices":[{"index":0,"delta":"#;
        let expected = [
            format!(r#"{head}{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#),
            format!(r#"{head}{{"content":"Hel"}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#),
            format!(r#"{head}{{"content":"lo"}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#),
            format!(r#"{head}{{"tool_calls":[{{"index":0,"id":"call_1","type":"function","function":{{"name":"f","arguments":""}}}}]}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#),
            format!(r#"{head}{{"tool_calls":[{{"index":0,"function":{{"arguments":"{{\"a\":"}}}}]}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#),
            format!(r#"{head}{{"tool_calls":[{{"index":0,"function":{{"arguments":"1}}"}}}}]}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#),
            format!(r#"{head}{{}},"logprobs":null,"finish_reason":"tool_calls"}}],"usage":null}}"#),
            r#"{"id":"chatcmpl-9","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":2}}}"#.to_owned(),
            "[DONE]".to_owned(),
        ];
        let expected: String = expected.iter().map(|d| format!("data: {d}\n\n")).collect();
        assert_eq!(render_stream(ChatStreamRenderer::new(true)), expected);
    }

    #[test]
    fn renders_a_stream_without_usage() {
        let text = render_stream(ChatStreamRenderer::new(false));
        let frames: Vec<&str> = text.split_terminator("\n\n").collect();
        assert_eq!(frames.len(), 8, "no usage chunk");
        assert!(!text.contains("usage"));
        assert_eq!(frames[7], "data: [DONE]");
        let chunk = json_of(frames[0].strip_prefix("data: ").unwrap().as_bytes());
        assert_eq!(chunk["choices"][0]["delta"]["role"], "assistant");
        let chunk = json_of(frames[1].strip_prefix("data: ").unwrap().as_bytes());
        assert!(chunk["choices"][0]["delta"].get("role").is_none());
    }

    #[test]
    fn embeddings_parse_and_render() {
        let (request, encoding) = parse_embeddings_with_encoding(
            br#"{"model":"text-embedding-3-small","input":["a","b"],"dimensions":256,"user":"u","encoding_format":"base64"}"#,
        )
        .unwrap();
        assert_eq!(
            request,
            EmbeddingsRequest {
                model: "text-embedding-3-small".into(),
                input: vec!["a".into(), "b".into()],
                dimensions: Some(256),
                user: Some("u".into()),
            }
        );
        assert_eq!(encoding, EmbeddingEncoding::Base64);
        let single = parse_embeddings(br#"{"model":"m","input":"hello"}"#).unwrap();
        assert_eq!(single.input, vec!["hello".to_owned()]);
        for (body, message) in [
            (
                r#"{"model":"m","input":[1,2,3]}"#,
                "input: token arrays are not supported",
            ),
            (
                r#"{"model":"m","input":[[1,2]]}"#,
                "input: token arrays are not supported",
            ),
            (r#"{"model":"m","input":[]}"#, "input: must not be empty"),
            (r#"{"model":"m"}"#, "input: required"),
            (r#"{"input":"x"}"#, "model: required"),
            (
                r#"{"model":"m","input":"x","encoding_format":"hex"}"#,
                "encoding_format: expected",
            ),
        ] {
            let error = parse_embeddings(body.as_bytes()).unwrap_err().0;
            assert!(error.starts_with(message), "{body}: {error}");
        }

        let response = EmbeddingsResponse {
            model: "text-embedding-3-small".into(),
            data: vec![vec![0.5, -1.25], vec![0.0, 2.0]],
            usage: Some(Usage {
                input: 8,
                ..Usage::default()
            }),
        };
        assert_eq!(
            json_of(&render_embeddings(&response)),
            json!({
                "object": "list",
                "data": [
                    {"object": "embedding", "index": 0, "embedding": [0.5, -1.25]},
                    {"object": "embedding", "index": 1, "embedding": [0.0, 2.0]}
                ],
                "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": 8, "total_tokens": 8}
            })
        );
        let base64 = json_of(&render_embeddings_with_encoding(
            &response,
            EmbeddingEncoding::Base64,
        ));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(base64["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let floats: Vec<f32> = bytes
            .chunks(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(floats, vec![0.5, -1.25]);
    }

    #[test]
    fn renders_models_and_errors() {
        assert_eq!(
            json_of(&render_models(&[
                ("gpt-4o", "openai"),
                ("fast", "tollgate")
            ])),
            json!({"object": "list", "data": [
                {"id": "gpt-4o", "object": "model", "created": 0, "owned_by": "openai"},
                {"id": "fast", "object": "model", "created": 0, "owned_by": "tollgate"}
            ]})
        );
        assert_eq!(
            json_of(&render_error(429, "rate_limited", "slow down", "req_1")),
            json!({"error": {"message": "slow down", "type": "rate_limit_error", "param": null,
                             "code": "rate_limited", "request_id": "req_1"}})
        );
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "invalid_request_error"),
            (502, "api_error"),
        ] {
            assert_eq!(
                json_of(&render_error(status, "c", "m", "r"))["error"]["type"],
                kind
            );
        }
    }
}
