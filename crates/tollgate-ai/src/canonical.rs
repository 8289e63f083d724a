//! The canonical model: one shape for chat and embeddings requests and
//! answers, whatever format the client wrote and whatever provider serves it.
//!
//! It follows OpenAI's chat model (roles, text and image parts, tool calls as
//! JSON text) because every other format maps onto it without loss of what
//! the gateway must understand. Fields only one format knows travel in
//! [`ChatRequest::extra`], tagged with the format they came from, and reach a
//! provider of the same family unchanged.

use serde_json::{Map, Value};

/// The client-facing wire formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// OpenAI's chat completions and embeddings.
    OpenAi,
    /// Anthropic's messages.
    Anthropic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    System,
    User,
    Assistant,
    /// The result of a tool call, answering [`Message::tool_call_id`].
    Tool,
}

/// One turn of the conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Part>,
    /// The calls an assistant turn asks for.
    pub tool_calls: Vec<ToolCall>,
    /// For [`Role::Tool`]: the call this turn answers.
    pub tool_call_id: Option<String>,
    /// OpenAI's optional participant name.
    pub name: Option<String>,
}

impl Message {
    /// A turn made of one text part.
    pub fn text(role: Role, text: impl Into<String>) -> Message {
        Message {
            role,
            content: vec![Part::Text(text.into())],
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }

    /// A provider's answer turn: its text (no part when empty) and the
    /// tool calls it asks for.
    pub fn assistant(text: String, tool_calls: Vec<ToolCall>) -> Message {
        Message {
            role: Role::Assistant,
            content: if text.is_empty() {
                Vec::new()
            } else {
                vec![Part::Text(text)]
            },
            tool_calls,
            tool_call_id: None,
            name: None,
        }
    }

    /// The text parts joined, images left out.
    pub fn joined_text(&self) -> String {
        let mut text = String::new();
        for part in &self.content {
            if let Part::Text(t) = part {
                text.push_str(t);
            }
        }
        text
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Text(String),
    Image(Image),
}

/// An image, by URL: `https://…` or a `data:<media type>;base64,<data>` URL.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub url: String,
    /// OpenAI's `detail` (`low`, `high`, `auto`).
    pub detail: Option<String>,
}

impl Image {
    /// `(media type, base64 data)` for a data URL.
    pub fn as_data(&self) -> Option<(&str, &str)> {
        let rest = self.url.strip_prefix("data:")?;
        let (media_type, data) = rest.split_once(";base64,")?;
        Some((media_type, data))
    }
}

/// A tool call; `arguments` is JSON text, as OpenAI writes it.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A tool the model may call; `parameters` is a JSON Schema.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolDef {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    /// The model must call some tool.
    Required,
    /// The model must call this tool.
    Tool(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    /// The model the client named (a configured model, or `provider/model`);
    /// adapters are given the provider's model name separately.
    pub model: String,
    /// In order; system turns may appear anywhere (providers that take one
    /// system prompt get them joined).
    pub messages: Vec<Message>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub tools: Vec<ToolDef>,
    pub tool_choice: Option<ToolChoice>,
    pub seed: Option<i64>,
    /// The end user, as the client gave it (OpenAI `user`, Anthropic `metadata.user_id`).
    pub user: Option<String>,
    /// Fields the canonical model does not know, from the client's body, and
    /// the format they were written in: sent on unchanged to a provider that
    /// speaks that format (`response_format`, `logprobs`, `thinking`…).
    pub extra: Map<String, Value>,
    pub extra_format: Format,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A natural end or a stop sequence.
    Stop,
    /// The token limit.
    Length,
    ToolCalls,
    ContentFilter,
    /// A reason no mapping knows, kept as the provider wrote it.
    Other(String),
}

/// Token counts of one exchange.
///
/// `input` counts every prompt token, cached ones included (`cached_input`
/// says how many of them were read from the provider's cache); `output`
/// counts every generated token, reasoning included (`reasoning` says how
/// many). Adapters normalise to this whatever their provider reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub reasoning: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChatResponse {
    pub id: String,
    /// The model as the provider named it in its answer.
    pub model: String,
    /// Unix seconds.
    pub created: i64,
    /// The assistant's turn: text parts and tool calls.
    pub message: Message,
    pub finish: FinishReason,
    /// `None` when the provider reported none (the gateway then estimates).
    pub usage: Option<Usage>,
}

/// One step of a streamed answer, in the order a client must see them:
/// `Start`, then any of `Text` / `ToolCallStart` / `ToolCallArgs`, then
/// `Finish`, then `Usage` when the provider reported it.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    Start {
        id: String,
        model: String,
    },
    Text(String),
    /// A new tool call; `index` counts tool calls from 0 within the answer.
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// More of the JSON text of tool call `index`'s arguments.
    ToolCallArgs {
        index: usize,
        fragment: String,
    },
    Finish(FinishReason),
    Usage(Usage),
}

#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: Vec<String>,
    pub dimensions: Option<u64>,
    pub user: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingsResponse {
    pub model: String,
    /// One vector per input, in the input's order.
    pub data: Vec<Vec<f32>>,
    pub usage: Option<Usage>,
}

/// What kind of failure a provider reported, whatever its wire format:
/// decides the status the client gets and whether another key, target or
/// fallback is tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: the request itself is wrong; no other target will take it.
    InvalidRequest,
    /// 401: the provider refused the key.
    Authentication,
    /// 403
    Permission,
    /// 404: unknown model or path.
    NotFound,
    /// 413
    TooLarge,
    /// 429
    RateLimited,
    /// 500 and other 5xx.
    Server,
    /// 503, 529: the provider is overloaded.
    Overloaded,
    /// The provider answered something the adapter cannot read.
    BadResponse,
}

/// A provider's error, read from its status and body.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderError {
    /// The provider's HTTP status.
    pub status: u16,
    pub kind: ErrorKind,
    /// The provider's message: never contains the key.
    pub message: String,
    /// From `Retry-After` (seconds or HTTP date) or the provider's own hint.
    pub retry_after: Option<std::time::Duration>,
}

/// Why a client's body is refused before anything is sent (400 `invalid_request`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

impl FormatError {
    pub fn new(message: impl Into<String>) -> FormatError {
        FormatError(message.into())
    }
}
