//! Fake LLM providers for end-to-end tests of the AI gateway.
//!
//! A [`FakeLlm`] is a real HTTP/1.1 server on an ephemeral `127.0.0.1` port
//! (an [`Upstream`]) speaking one provider's wire format as its public API
//! reference describes it, so that the gateway's adapters are exercised
//! against the bytes they meet in production:
//!
//! | [`FakeKind`] | Operations | Authentication |
//! |---|---|---|
//! | `OpenAi` | `POST /v1/chat/completions` (streamed with `data: [DONE]`; a usage chunk only when `stream_options.include_usage`), `POST /v1/embeddings` (float or `base64`) | `Authorization: Bearer` |
//! | `Mistral` | the same paths; usage always in the last stream chunk, with the finish reason; tool calls whole in one chunk | `Authorization: Bearer` |
//! | `AzureOpenAi` | `POST /openai/deployments/{deployment}/chat/completions` and `…/embeddings`, `api-version` required; streams open with a `prompt_filter_results` chunk with no choices | `api-key` |
//! | `Anthropic` | `POST /v1/messages`, streamed as `message_start`, `content_block_start`, `ping`, `content_block_delta`…, `content_block_stop`, `message_delta`, `message_stop` | `x-api-key` and `anthropic-version` |
//! | `Gemini` | `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent?alt=sse` (CRLF-framed events, cumulative `usageMetadata` in every chunk; without `alt=sse`, a JSON array), `:embedContent`, `:batchEmbedContents` | `x-goog-api-key` or `?key=` |
//!
//! Each request takes the next queued [`Reply`] ([`FakeLlm::push`]), or the
//! default one: the answer `echo: <text of the last user message>` with usage
//! 11 in, 7 out ([`DEFAULT_USAGE`]). Requests that fail authentication or name
//! an unknown path get the provider's own error and take no reply from the
//! queue. Every request is recorded ([`FakeLlm::requests`]).
//!
//! Usage in a [`Reply`] is the gateway's canonical usage: `in` counts every
//! prompt token, cached ones included. Each fake writes it its provider's way
//! (Anthropic's `input_tokens` leaves out `cache_read_input_tokens`).
//!
//! Where the real providers differ from a naive expectation, the fakes do too:
//! Gemini refuses a bad key with `400 INVALID_ARGUMENT` (reason
//! `API_KEY_INVALID`), not 401, and a missing key with `403`; Gemini gives its
//! retry hint as a `RetryInfo` detail (`"retryDelay": "30s"`), not a
//! `Retry-After` header; Gemini reports a function call with finish reason
//! `STOP`; Gemini embeddings carry no usage.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::stream;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};

use crate::body::{self, Body, BoxError};
use crate::upstream::Upstream;

/// Usage of the default reply: `(in, out, cached)`.
pub const DEFAULT_USAGE: (u64, u64, u64) = (11, 7, 0);

/// Dimensions of a fake embedding when the request names none.
pub const DEFAULT_DIMENSIONS: usize = 8;

/// How long a [`Reply::StreamThenDrop`] waits after its first chunk before
/// dropping the connection, so that the chunk is flushed first.
const DROP_AFTER: Duration = Duration::from_millis(100);

/// The provider a [`FakeLlm`] imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FakeKind {
    OpenAi,
    Mistral,
    AzureOpenAi,
    Anthropic,
    Gemini,
}

/// What the fake answers to one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A successful answer in the provider's format, streamed when the
    /// request asked. Embeddings requests get vectors and `usage.0` as their
    /// prompt tokens.
    Answer {
        text: String,
        /// `(name, JSON arguments)`; for Anthropic and Gemini the arguments
        /// must be a JSON object (anything else becomes `{}`).
        tool_call: Option<(String, String)>,
        /// `(in, out, cached)`; `None` leaves usage out of the answer
        /// entirely (to test the gateway's estimates).
        usage: Option<(u64, u64, u64)>,
        /// Pause between two streamed events (the first is sent at once).
        chunk_delay: Duration,
    },
    /// An error in the provider's format with this status and, when set, a
    /// retry hint in seconds (a `Retry-After` header; Gemini: `RetryInfo`).
    Error {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Waits before answering (for timeouts).
    Delay(Duration, Box<Reply>),
    /// Sends the response head and the stream up to and including the first
    /// text event (half the body when not streamed), then drops the
    /// connection.
    StreamThenDrop { text: String },
    /// A 200 answer whose body is this document, whatever was asked: an
    /// answer with what the other replies never write (several choices,
    /// fields of a provider's own).
    Json(Value),
}

impl Reply {
    /// An answer of `text` with [`DEFAULT_USAGE`], not paced.
    pub fn text(text: impl Into<String>) -> Reply {
        Reply::Answer {
            text: text.into(),
            tool_call: None,
            usage: Some(DEFAULT_USAGE),
            chunk_delay: Duration::ZERO,
        }
    }

    /// An answer calling the tool `name` with `arguments` (JSON text), no
    /// text, [`DEFAULT_USAGE`].
    pub fn tool_call(name: impl Into<String>, arguments: impl Into<String>) -> Reply {
        Reply::Answer {
            text: String::new(),
            tool_call: Some((name.into(), arguments.into())),
            usage: Some(DEFAULT_USAGE),
            chunk_delay: Duration::ZERO,
        }
    }

    /// An error with this status and no retry hint.
    pub fn error(status: u16) -> Reply {
        Reply::Error {
            status,
            retry_after: None,
        }
    }

    /// For an [`Reply::Answer`], the same with `usage`; other replies are unchanged.
    pub fn with_usage(mut self, usage: Option<(u64, u64, u64)>) -> Reply {
        if let Reply::Answer { usage: u, .. } = &mut self {
            *u = usage;
        }
        self
    }

    /// For an [`Reply::Answer`], the same with `delay` between streamed events.
    pub fn with_chunk_delay(mut self, delay: Duration) -> Reply {
        if let Reply::Answer { chunk_delay, .. } = &mut self {
            *chunk_delay = delay;
        }
        self
    }

    /// This reply, after waiting `delay`.
    pub fn delayed(self, delay: Duration) -> Reply {
        Reply::Delay(delay, Box::new(self))
    }
}

/// A request the fake received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// Path and query, as sent.
    pub path: String,
    pub headers: HeaderMap,
    /// The body as JSON; `Null` when empty or not JSON.
    pub body: Value,
    /// The body's bytes, as sent.
    pub raw_body: bytes::Bytes,
    key: Option<String>,
}

impl Recorded {
    /// The API key the request authenticated with, from the header (or, for
    /// Gemini, the `key` query parameter) its provider reads.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// A header's value, when present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A running fake provider; stops when dropped.
pub struct FakeLlm {
    kind: FakeKind,
    upstream: Upstream,
    state: Arc<State>,
}

struct State {
    kind: FakeKind,
    replies: Mutex<VecDeque<Reply>>,
    default: Mutex<Option<Reply>>,
    requests: Mutex<Vec<Recorded>>,
    rejected_keys: Mutex<HashSet<String>>,
    /// Serve requests without a key, as a local server (Ollama, vLLM) does.
    keyless: std::sync::atomic::AtomicBool,
    sequence: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FakeLlm {
    /// Starts a fake `kind` provider on `127.0.0.1:0` (inside a tokio runtime).
    pub async fn start(kind: FakeKind) -> FakeLlm {
        let state = Arc::new(State {
            kind,
            replies: Mutex::new(VecDeque::new()),
            default: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
            rejected_keys: Mutex::new(HashSet::new()),
            keyless: std::sync::atomic::AtomicBool::new(false),
            sequence: AtomicU64::new(1),
        });
        let handler_state = state.clone();
        let upstream = Upstream::start(move |req| handle(handler_state.clone(), req));
        FakeLlm {
            kind,
            upstream,
            state,
        }
    }

    pub fn kind(&self) -> FakeKind {
        self.kind
    }

    /// The base URL to configure for the provider: `http://127.0.0.1:PORT/v1`
    /// (OpenAI, Mistral, Anthropic), `…/v1beta` (Gemini), `…/openai` (Azure).
    pub fn base_url(&self) -> String {
        let suffix = match self.kind {
            FakeKind::OpenAi | FakeKind::Mistral | FakeKind::Anthropic => "/v1",
            FakeKind::Gemini => "/v1beta",
            FakeKind::AzureOpenAi => "/openai",
        };
        format!("{}{suffix}", self.upstream.url())
    }

    /// `http://127.0.0.1:PORT`, without the API's path prefix.
    pub fn url(&self) -> String {
        self.upstream.url()
    }

    /// Queues a reply; replies are taken one per request, in order.
    pub fn push(&self, reply: Reply) {
        lock(&self.state.replies).push_back(reply);
    }

    /// The reply used when the queue is empty, instead of the echo.
    pub fn set_default(&self, reply: Reply) {
        *lock(&self.state.default) = Some(reply);
    }

    /// Serves requests that carry no key, as a local server does.
    pub fn allow_keyless(&self) {
        self.state
            .keyless
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Requests authenticating with `key` get the provider's invalid-key error.
    pub fn reject_key(&self, key: &str) {
        lock(&self.state.rejected_keys).insert(key.to_owned());
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.requests).clone()
    }

    /// The last request received.
    pub fn last_request(&self) -> Option<Recorded> {
        lock(&self.state.requests).last().cloned()
    }

    /// How many requests were received.
    pub fn request_count(&self) -> usize {
        lock(&self.state.requests).len()
    }
}

impl std::fmt::Debug for FakeLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeLlm")
            .field("kind", &self.kind)
            .field("url", &self.upstream.url())
            .finish()
    }
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Chat(Streaming),
    Embeddings,
    /// Gemini's `embedContent` (`batch: false`) and `batchEmbedContents`.
    GeminiEmbed {
        batch: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Streaming {
    No,
    Sse,
    /// Gemini's `streamGenerateContent` without `alt=sse`.
    JsonArray,
}

/// One request being answered.
struct Exchange {
    kind: FakeKind,
    operation: Operation,
    model: String,
    body: Value,
    /// OpenAI's `stream_options.include_usage`.
    include_usage: bool,
    /// Unique within the fake, for ids.
    sequence: u64,
}

/// The parts of an [`Reply::Answer`] a format renders.
struct Answer<'a> {
    text: &'a str,
    tool_call: Option<(&'a str, &'a str)>,
    usage: Option<(u64, u64, u64)>,
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let (parts, incoming) = req.into_parts();
    let bytes = incoming
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let kind = state.kind;
    let key = api_key(kind, &parts.headers, parts.uri.query());
    lock(&state.requests).push(Recorded {
        method: parts.method.clone(),
        path: path.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
        raw_body: bytes.clone(),
        key: key.clone(),
    });

    match &key {
        None if state.keyless.load(std::sync::atomic::Ordering::Relaxed) => {}
        None => return auth_error(kind, None),
        Some(key) if lock(&state.rejected_keys).contains(key) => {
            return auth_error(kind, Some(key))
        }
        Some(_) => {}
    }
    if kind == FakeKind::Anthropic && !parts.headers.contains_key("anthropic-version") {
        return error_body(
            kind,
            400,
            None,
            "anthropic-version: header is required",
            None,
        );
    }
    let Some((operation, model)) = route(kind, &parts.method, &parts.uri, &body) else {
        return not_found(kind, &parts.method, parts.uri.path());
    };

    let queued = lock(&state.replies).pop_front();
    let mut reply = queued
        .or_else(|| lock(&state.default).clone())
        .unwrap_or_else(|| Reply::text(format!("echo: {}", last_user_text(kind, &body))));
    let exchange = Exchange {
        kind,
        operation,
        model,
        include_usage: body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        body,
        sequence: state.sequence.fetch_add(1, Ordering::SeqCst),
    };
    loop {
        match reply {
            Reply::Delay(delay, inner) => {
                tokio::time::sleep(delay).await;
                reply = *inner;
            }
            Reply::Error {
                status,
                retry_after,
            } => {
                let message = default_error_message(kind, status, &exchange.model);
                return error_body(kind, status, retry_after, &message, None);
            }
            Reply::Answer {
                text,
                tool_call,
                usage,
                chunk_delay,
            } => {
                let answer = Answer {
                    text: &text,
                    tool_call: tool_call
                        .as_ref()
                        .map(|(name, args)| (name.as_str(), args.as_str())),
                    usage,
                };
                return answer_response(&exchange, &answer, chunk_delay);
            }
            Reply::StreamThenDrop { text } => {
                let answer = Answer {
                    text: &text,
                    tool_call: None,
                    usage: None,
                };
                return dropped_response(&exchange, &answer);
            }
            Reply::Json(document) => {
                return json_response(&exchange, StatusCode::OK, &document);
            }
        }
    }
}

/// The key a request authenticates with, where its provider reads it.
fn api_key(kind: FakeKind, headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let header_value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let bearer = || {
        header_value("authorization").and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        })
    };
    match kind {
        FakeKind::OpenAi | FakeKind::Mistral => bearer(),
        FakeKind::AzureOpenAi => header_value("api-key").or_else(bearer),
        FakeKind::Anthropic => header_value("x-api-key"),
        FakeKind::Gemini => header_value("x-goog-api-key").or_else(|| query_param(query, "key")),
    }
    .filter(|key| !key.is_empty())
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_owned())
    })
}

/// The operation and model a request names, `None` for an unknown path.
fn route(
    kind: FakeKind,
    method: &Method,
    uri: &http::Uri,
    body: &Value,
) -> Option<(Operation, String)> {
    if method != Method::POST {
        return None;
    }
    let path = uri.path();
    let body_model = || body["model"].as_str().unwrap_or_default().to_owned();
    let body_streams = || {
        if body["stream"].as_bool() == Some(true) {
            Streaming::Sse
        } else {
            Streaming::No
        }
    };
    match kind {
        FakeKind::OpenAi | FakeKind::Mistral => match path {
            "/v1/chat/completions" => Some((Operation::Chat(body_streams()), body_model())),
            "/v1/embeddings" => Some((Operation::Embeddings, body_model())),
            _ => None,
        },
        FakeKind::AzureOpenAi => {
            query_param(uri.query(), "api-version").filter(|v| !v.is_empty())?;
            let rest = path.strip_prefix("/openai/deployments/")?;
            let (deployment, operation) = rest.split_once('/')?;
            let operation = match operation {
                "chat/completions" => Operation::Chat(body_streams()),
                "embeddings" => Operation::Embeddings,
                _ => return None,
            };
            let model = body["model"].as_str().unwrap_or(deployment).to_owned();
            Some((operation, model))
        }
        FakeKind::Anthropic => {
            (path == "/v1/messages").then(|| (Operation::Chat(body_streams()), body_model()))
        }
        FakeKind::Gemini => {
            let rest = path.strip_prefix("/v1beta/models/")?;
            let (model, method) = rest.rsplit_once(':')?;
            let operation = match method {
                "generateContent" => Operation::Chat(Streaming::No),
                "streamGenerateContent" => {
                    if query_param(uri.query(), "alt").as_deref() == Some("sse") {
                        Operation::Chat(Streaming::Sse)
                    } else {
                        Operation::Chat(Streaming::JsonArray)
                    }
                }
                "embedContent" => Operation::GeminiEmbed { batch: false },
                "batchEmbedContents" => Operation::GeminiEmbed { batch: true },
                _ => return None,
            };
            Some((operation, model.to_owned()))
        }
    }
}

/// The text of the last user turn, in the request's format.
fn last_user_text(kind: FakeKind, body: &Value) -> String {
    // Text parts: OpenAI's and Anthropic's `{"type": "text", "text": …}`,
    // Gemini's `{"text": …}`.
    let joined = |parts: &Value| -> String {
        match parts {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter(|p| p.get("type").is_none_or(|t| t == "text"))
                .filter_map(|p| p["text"].as_str())
                .collect(),
            _ => String::new(),
        }
    };
    match kind {
        FakeKind::Gemini => body["contents"]
            .as_array()
            .and_then(|contents| {
                contents
                    .iter()
                    .rev()
                    .find(|c| c["role"].as_str().is_none_or(|role| role == "user"))
            })
            .map(|c| joined(&c["parts"]))
            .unwrap_or_default(),
        _ => body["messages"]
            .as_array()
            .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "user"))
            .map(|m| joined(&m["content"]))
            .unwrap_or_default(),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn request_id(exchange: &Exchange) -> String {
    format!("req_fake{:06}", exchange.sequence)
}

// ---------------------------------------------------------------------------
// Answers

fn answer_response(
    exchange: &Exchange,
    answer: &Answer<'_>,
    chunk_delay: Duration,
) -> Response<Body> {
    match exchange.operation {
        Operation::Chat(Streaming::No) => {
            json_response(exchange, StatusCode::OK, &chat_json(exchange, answer))
        }
        Operation::Chat(Streaming::Sse) => {
            let (events, _) = chat_events(exchange, answer);
            stream_response(exchange, paced(events, chunk_delay, false))
        }
        Operation::Chat(Streaming::JsonArray) => {
            let chunks = gemini_chunks(exchange, answer);
            let array = Value::Array(chunks);
            json_response(exchange, StatusCode::OK, &array)
        }
        Operation::Embeddings => json_response(
            exchange,
            StatusCode::OK,
            &embeddings_json(exchange, answer.usage),
        ),
        Operation::GeminiEmbed { batch } => json_response(
            exchange,
            StatusCode::OK,
            &gemini_embeddings_json(&exchange.body, batch),
        ),
    }
}

fn dropped_response(exchange: &Exchange, answer: &Answer<'_>) -> Response<Body> {
    match exchange.operation {
        Operation::Chat(Streaming::Sse) => {
            let (mut events, first_content) = chat_events(exchange, answer);
            events.truncate(first_content + 1);
            stream_response(exchange, paced(events, Duration::ZERO, true))
        }
        _ => {
            let whole = match exchange.operation {
                Operation::Embeddings | Operation::GeminiEmbed { .. } => {
                    embeddings_json(exchange, None)
                }
                _ => chat_json(exchange, answer),
            };
            let mut bytes = serde_json::to_vec(&whole).expect("JSON serializes");
            bytes.truncate(bytes.len() / 2);
            stream_response(
                exchange,
                paced(vec![Bytes::from(bytes)], Duration::ZERO, true),
            )
        }
    }
}

/// A body of `chunks`, the first at once and then one every `gap`; when
/// `drop`, the connection is then dropped (an error ends the body).
fn paced(chunks: Vec<Bytes>, gap: Duration, drop: bool) -> Body {
    let mut items: Vec<Result<Bytes, BoxError>> = chunks.into_iter().map(Ok).collect();
    if drop {
        items.push(Err("the fake provider drops the connection".into()));
    }
    let frames = stream::unfold(
        (items.into_iter(), true),
        move |(mut rest, first)| async move {
            let item = rest.next()?;
            let pause = if item.is_err() { DROP_AFTER } else { gap };
            if !first && !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            Some((item.map(Frame::data), (rest, false)))
        },
    );
    StreamBody::new(frames).boxed_unsync()
}

fn stream_response(exchange: &Exchange, body: Body) -> Response<Body> {
    let content_type = match exchange.operation {
        Operation::Chat(Streaming::Sse) => match exchange.kind {
            FakeKind::Gemini => "text/event-stream",
            _ => "text/event-stream; charset=utf-8",
        },
        _ => "application/json",
    };
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .expect("static response parts are valid");
    add_request_id(exchange.kind, &request_id(exchange), response.headers_mut());
    response
}

fn json_response(exchange: &Exchange, status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body::json(value))
        .expect("static response parts are valid");
    add_request_id(exchange.kind, &request_id(exchange), response.headers_mut());
    response
}

fn add_request_id(kind: FakeKind, id: &str, headers: &mut HeaderMap) {
    let name = match kind {
        FakeKind::Anthropic => "request-id",
        FakeKind::OpenAi | FakeKind::AzureOpenAi => "x-request-id",
        FakeKind::Mistral | FakeKind::Gemini => return,
    };
    if let Ok(value) = header::HeaderValue::from_str(id) {
        headers.insert(name, value);
    }
}

fn chat_json(exchange: &Exchange, answer: &Answer<'_>) -> Value {
    match exchange.kind {
        FakeKind::OpenAi | FakeKind::Mistral | FakeKind::AzureOpenAi => {
            openai_chat_json(exchange, answer)
        }
        FakeKind::Anthropic => anthropic_json(exchange, answer),
        FakeKind::Gemini => gemini_json(exchange, answer),
    }
}

/// SSE frames of a streamed answer, and the index of the first one carrying
/// content (text, else the tool call, else the finish).
fn chat_events(exchange: &Exchange, answer: &Answer<'_>) -> (Vec<Bytes>, usize) {
    match exchange.kind {
        FakeKind::OpenAi | FakeKind::Mistral | FakeKind::AzureOpenAi => {
            openai_events(exchange, answer)
        }
        FakeKind::Anthropic => anthropic_events(exchange, answer),
        FakeKind::Gemini => {
            let chunks = gemini_chunks(exchange, answer);
            let frames = chunks
                .iter()
                .map(|chunk| Bytes::from(format!("data: {chunk}\r\n\r\n")))
                .collect();
            (frames, 0)
        }
    }
}

/// `text` in stream pieces: words with their trailing space.
fn pieces(text: &str) -> Vec<&str> {
    text.split_inclusive(' ').collect()
}

/// `text` in two pieces (one when too short), split at a character boundary.
fn halves(text: &str) -> Vec<&str> {
    let mut middle = text.len() / 2;
    while !text.is_char_boundary(middle) {
        middle += 1;
    }
    let (a, b) = text.split_at(middle);
    [a, b].into_iter().filter(|s| !s.is_empty()).collect()
}

fn tool_call_id(exchange: &Exchange) -> String {
    match exchange.kind {
        FakeKind::Anthropic => format!("toolu_fake{:06}", exchange.sequence),
        FakeKind::Mistral => format!("fake{:05}", exchange.sequence),
        _ => format!("call_fake{:06}", exchange.sequence),
    }
}

/// Tool arguments as the JSON object Anthropic and Gemini send.
fn arguments_object(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => value,
        _ => json!({}),
    }
}

// --- OpenAI, Mistral, Azure OpenAI ---

fn openai_usage(kind: FakeKind, (input, output, cached): (u64, u64, u64)) -> Value {
    match kind {
        FakeKind::Mistral => json!({
            "prompt_tokens": input,
            "total_tokens": input + output,
            "completion_tokens": output,
        }),
        _ => json!({
            "prompt_tokens": input,
            "completion_tokens": output,
            "total_tokens": input + output,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0
            }
        }),
    }
}

fn openai_id(exchange: &Exchange) -> String {
    match exchange.kind {
        FakeKind::Mistral => format!("cmpl-fake{:06}", exchange.sequence),
        _ => format!("chatcmpl-fake{:06}", exchange.sequence),
    }
}

fn azure_filter_results() -> Value {
    let safe = json!({"filtered": false, "severity": "safe"});
    json!({
        "hate": safe, "self_harm": safe, "sexual": safe, "violence": safe,
    })
}

fn openai_chat_json(exchange: &Exchange, answer: &Answer<'_>) -> Value {
    let kind = exchange.kind;
    let finish = if answer.tool_call.is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    let mut message = match kind {
        FakeKind::Mistral => json!({
            "role": "assistant",
            "content": answer.text,
            "tool_calls": null,
            "prefix": false,
        }),
        _ => json!({
            "role": "assistant",
            "content": if answer.text.is_empty() && answer.tool_call.is_some() {
                Value::Null
            } else {
                Value::from(answer.text)
            },
            "refusal": null,
            "annotations": [],
        }),
    };
    if let Some((name, arguments)) = answer.tool_call {
        message["tool_calls"] = json!([{
            "id": tool_call_id(exchange),
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }]);
    }
    let mut choice = json!({"index": 0, "message": message, "finish_reason": finish});
    if kind != FakeKind::Mistral {
        choice["logprobs"] = Value::Null;
    }
    if kind == FakeKind::AzureOpenAi {
        choice["content_filter_results"] = azure_filter_results();
    }
    let mut doc = json!({
        "id": openai_id(exchange),
        "object": "chat.completion",
        "created": now(),
        "model": exchange.model,
        "choices": [choice],
    });
    if kind != FakeKind::Mistral {
        doc["system_fingerprint"] = "fp_fake".into();
    }
    if kind == FakeKind::OpenAi {
        doc["service_tier"] = "default".into();
    }
    if kind == FakeKind::AzureOpenAi {
        doc["prompt_filter_results"] =
            json!([{"prompt_index": 0, "content_filter_results": azure_filter_results()}]);
    }
    if let Some(usage) = answer.usage {
        doc["usage"] = openai_usage(kind, usage);
    }
    doc
}

fn openai_events(exchange: &Exchange, answer: &Answer<'_>) -> (Vec<Bytes>, usize) {
    let kind = exchange.kind;
    let mistral = kind == FakeKind::Mistral;
    let id = openai_id(exchange);
    let created = now();
    // OpenAI and Azure report usage in streams only when asked, in a last
    // chunk of its own; every chunk before it then carries `"usage": null`.
    let usage_chunk = !mistral && exchange.include_usage && answer.usage.is_some();
    let chunk = |delta: Value, finish: Value| {
        let mut choice =
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish});
        if kind == FakeKind::AzureOpenAi {
            choice["content_filter_results"] = json!({});
        }
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": exchange.model,
            "choices": [choice],
        });
        if !mistral {
            c["system_fingerprint"] = "fp_fake".into();
        }
        if kind == FakeKind::OpenAi {
            c["service_tier"] = "default".into();
        }
        if usage_chunk {
            c["usage"] = Value::Null;
        }
        c
    };
    let mut chunks = Vec::new();
    if kind == FakeKind::AzureOpenAi {
        chunks.push(json!({
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": azure_filter_results()}],
        }));
    }
    chunks.push(if mistral {
        chunk(json!({"role": "assistant", "content": ""}), Value::Null)
    } else {
        chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            Value::Null,
        )
    });
    let mut first_content = None;
    for piece in pieces(answer.text) {
        first_content.get_or_insert(chunks.len());
        chunks.push(chunk(json!({"content": piece}), Value::Null));
    }
    if let Some((name, arguments)) = answer.tool_call {
        first_content.get_or_insert(chunks.len());
        let call_id = tool_call_id(exchange);
        if mistral {
            chunks.push(chunk(
                json!({"tool_calls": [{
                    "id": call_id,
                    "function": {"name": name, "arguments": arguments},
                    "index": 0,
                }]}),
                Value::Null,
            ));
        } else {
            chunks.push(chunk(
                json!({"tool_calls": [{
                    "index": 0,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }]}),
                Value::Null,
            ));
            for piece in halves(arguments) {
                chunks.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                    Value::Null,
                ));
            }
        }
    }
    let finish = if answer.tool_call.is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    let first_content = first_content.unwrap_or(chunks.len());
    if mistral {
        let mut last = chunk(json!({"content": ""}), finish.into());
        if let Some(usage) = answer.usage {
            last["usage"] = openai_usage(kind, usage);
        }
        chunks.push(last);
    } else {
        chunks.push(chunk(json!({}), finish.into()));
        if let (true, Some(usage)) = (usage_chunk, answer.usage) {
            let mut last = chunk(json!({}), Value::Null);
            last["choices"] = json!([]);
            last["usage"] = openai_usage(kind, usage);
            chunks.push(last);
        }
    }
    let mut frames: Vec<Bytes> = chunks
        .iter()
        .map(|c| Bytes::from(format!("data: {c}\n\n")))
        .collect();
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    (frames, first_content)
}

fn embeddings_json(exchange: &Exchange, usage: Option<(u64, u64, u64)>) -> Value {
    let inputs: Vec<String> = match &exchange.body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if items.iter().all(Value::is_number) => {
            vec![Value::Array(items.clone()).to_string()]
        }
        Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map_or_else(|| item.to_string(), str::to_owned)
            })
            .collect(),
        _ => Vec::new(),
    };
    let dimensions = exchange.body["dimensions"]
        .as_u64()
        .map_or(DEFAULT_DIMENSIONS, |d| d as usize);
    let base64 = exchange.body["encoding_format"] == "base64";
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = fake_vector(input, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Value::from(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let mut doc = json!({"object": "list", "data": data, "model": exchange.model});
    if exchange.kind == FakeKind::Mistral {
        doc["id"] = format!("embd-fake{:06}", exchange.sequence).into();
    }
    if let Some((input, _, _)) = usage {
        doc["usage"] = match exchange.kind {
            FakeKind::Mistral => {
                json!({"prompt_tokens": input, "total_tokens": input, "completion_tokens": 0})
            }
            _ => json!({"prompt_tokens": input, "total_tokens": input}),
        };
    }
    doc
}

/// A deterministic vector for `text`: the same text always gets the same one.
pub fn fake_vector(text: &str, dimensions: usize) -> Vec<f32> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (0..dimensions as u64)
        .map(|i| {
            // splitmix64 of the hash and the index.
            let mut z = hash.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

// --- Anthropic ---

/// Anthropic's usage: `input_tokens` leaves out the tokens read from the cache.
fn anthropic_usage((input, _, cached): (u64, u64, u64), output_tokens: u64) -> Value {
    json!({
        "input_tokens": input.saturating_sub(cached),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    })
}

fn anthropic_stop_reason(answer: &Answer<'_>) -> &'static str {
    if answer.tool_call.is_some() {
        "tool_use"
    } else {
        "end_turn"
    }
}

fn anthropic_json(exchange: &Exchange, answer: &Answer<'_>) -> Value {
    let mut content = Vec::new();
    if !answer.text.is_empty() || answer.tool_call.is_none() {
        content.push(json!({"type": "text", "text": answer.text}));
    }
    if let Some((name, arguments)) = answer.tool_call {
        content.push(json!({
            "type": "tool_use",
            "id": tool_call_id(exchange),
            "name": name,
            "input": arguments_object(arguments),
        }));
    }
    let mut doc = json!({
        "id": format!("msg_fake{:06}", exchange.sequence),
        "type": "message",
        "role": "assistant",
        "model": exchange.model,
        "content": content,
        "stop_reason": anthropic_stop_reason(answer),
        "stop_sequence": null,
    });
    if let Some(usage) = answer.usage {
        doc["usage"] = anthropic_usage(usage, usage.1);
    }
    doc
}

fn anthropic_events(exchange: &Exchange, answer: &Answer<'_>) -> (Vec<Bytes>, usize) {
    let mut events: Vec<(&str, Value)> = Vec::new();
    let mut message = json!({
        "id": format!("msg_fake{:06}", exchange.sequence),
        "type": "message",
        "role": "assistant",
        "model": exchange.model,
        "content": [],
        "stop_reason": null,
        "stop_sequence": null,
    });
    if let Some(usage) = answer.usage {
        message["usage"] = anthropic_usage(usage, 1);
    }
    events.push((
        "message_start",
        json!({"type": "message_start", "message": message}),
    ));
    let mut index = 0;
    let mut pinged = false;
    let mut first_content = None;
    let mut start_block = |events: &mut Vec<(&str, Value)>, index: usize, block: Value| {
        events.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        if !pinged {
            events.push(("ping", json!({"type": "ping"})));
            pinged = true;
        }
    };
    if !answer.text.is_empty() || answer.tool_call.is_none() {
        start_block(&mut events, index, json!({"type": "text", "text": ""}));
        for piece in pieces(answer.text) {
            first_content.get_or_insert(events.len());
            events.push((
                "content_block_delta",
                json!({
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "text_delta", "text": piece},
                }),
            ));
        }
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    }
    if let Some((name, arguments)) = answer.tool_call {
        first_content.get_or_insert(events.len());
        start_block(
            &mut events,
            index,
            json!({"type": "tool_use", "id": tool_call_id(exchange), "name": name, "input": {}}),
        );
        let compact = arguments_object(arguments).to_string();
        for piece in std::iter::once("").chain(halves(&compact)) {
            events.push((
                "content_block_delta",
                json!({
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                }),
            ));
        }
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    let first_content = first_content.unwrap_or(events.len());
    let mut delta = json!({
        "type": "message_delta",
        "delta": {"stop_reason": anthropic_stop_reason(answer), "stop_sequence": null},
    });
    if let Some((_, output, _)) = answer.usage {
        delta["usage"] = json!({"output_tokens": output});
    }
    events.push(("message_delta", delta));
    events.push(("message_stop", json!({"type": "message_stop"})));
    let frames = events
        .iter()
        .map(|(name, data)| Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
        .collect();
    (frames, first_content)
}

// --- Gemini ---

fn gemini_usage((input, _, cached): (u64, u64, u64), candidates: u64) -> Value {
    let mut usage = json!({
        "promptTokenCount": input,
        "candidatesTokenCount": candidates,
        "totalTokenCount": input + candidates,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": input}],
    });
    if cached > 0 {
        usage["cachedContentTokenCount"] = cached.into();
    }
    usage
}

fn gemini_response(
    exchange: &Exchange,
    parts: Vec<Value>,
    finish: bool,
    usage: Option<Value>,
) -> Value {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    if finish {
        candidate["finishReason"] = "STOP".into();
    }
    let mut doc = json!({"candidates": [candidate]});
    if let Some(usage) = usage {
        doc["usageMetadata"] = usage;
    }
    doc["modelVersion"] = exchange.model.clone().into();
    doc["responseId"] = format!("fake{:06}", exchange.sequence).into();
    doc
}

fn gemini_function_call(name: &str, arguments: &str) -> Value {
    json!({"functionCall": {"name": name, "args": arguments_object(arguments)}})
}

fn gemini_json(exchange: &Exchange, answer: &Answer<'_>) -> Value {
    let mut parts = Vec::new();
    if !answer.text.is_empty() || answer.tool_call.is_none() {
        parts.push(json!({"text": answer.text}));
    }
    if let Some((name, arguments)) = answer.tool_call {
        parts.push(gemini_function_call(name, arguments));
    }
    let usage = answer.usage.map(|usage| gemini_usage(usage, usage.1));
    gemini_response(exchange, parts, true, usage)
}

/// The responses of a streamed Gemini answer: one per text piece, then the
/// function call; the last has the finish reason. Usage, when reported, is
/// in every chunk and cumulative (the last one is the answer's).
fn gemini_chunks(exchange: &Exchange, answer: &Answer<'_>) -> Vec<Value> {
    let mut parts: Vec<Value> = pieces(answer.text)
        .into_iter()
        .map(|piece| json!({"text": piece}))
        .collect();
    if let Some((name, arguments)) = answer.tool_call {
        parts.push(gemini_function_call(name, arguments));
    }
    if parts.is_empty() {
        parts.push(json!({"text": ""}));
    }
    let count = parts.len() as u64;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let i = i as u64;
            let usage = answer
                .usage
                .map(|usage| gemini_usage(usage, usage.1 * (i + 1) / count));
            gemini_response(exchange, vec![part], i + 1 == count, usage)
        })
        .collect()
}

fn gemini_embeddings_json(body: &Value, batch: bool) -> Value {
    let embed = |request: &Value| {
        let text: String = request["content"]["parts"]
            .as_array()
            .map(|parts| parts.iter().filter_map(|p| p["text"].as_str()).collect())
            .unwrap_or_default();
        let dimensions = request["outputDimensionality"]
            .as_u64()
            .map_or(DEFAULT_DIMENSIONS, |d| d as usize);
        json!({"values": fake_vector(&text, dimensions)})
    };
    if batch {
        let embeddings: Vec<Value> = body["requests"]
            .as_array()
            .map(|requests| requests.iter().map(embed).collect())
            .unwrap_or_default();
        json!({"embeddings": embeddings})
    } else {
        json!({"embedding": embed(body)})
    }
}

// ---------------------------------------------------------------------------
// Errors

fn default_error_message(kind: FakeKind, status: u16, model: &str) -> String {
    match (kind, status) {
        (FakeKind::OpenAi | FakeKind::AzureOpenAi | FakeKind::Mistral, 429) => format!(
            "Rate limit reached for {model} in organization org-fake on tokens per min (TPM): Limit 30000, Used 30000, Requested 100. Please try again in 1s."
        ),
        (FakeKind::OpenAi | FakeKind::AzureOpenAi, 500) => {
            "The server had an error while processing your request. Sorry about that!".into()
        }
        (FakeKind::OpenAi | FakeKind::AzureOpenAi, 503) => {
            "The engine is currently overloaded, please try again later.".into()
        }
        (FakeKind::OpenAi | FakeKind::AzureOpenAi, 404) => format!(
            "The model `{model}` does not exist or you do not have access to it."
        ),
        (FakeKind::Anthropic, 429) => "Number of request tokens has exceeded your per-minute rate limit (https://docs.claude.com/en/api/rate-limits); see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later.".into(),
        (FakeKind::Anthropic, 529) => "Overloaded".into(),
        (FakeKind::Anthropic, 500) => "Internal server error".into(),
        (FakeKind::Gemini, 429) => "Resource has been exhausted (e.g. check quota).".into(),
        (FakeKind::Gemini, 503) => "The model is overloaded. Please try again later.".into(),
        (FakeKind::Gemini, 500) => "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting".into(),
        (FakeKind::Gemini, 404) => format!(
            "models/{model} is not found for API version v1beta, or is not supported for generateContent."
        ),
        (_, status) => format!(
            "fake {} error {status}",
            StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("provider")
        ),
    }
}

/// An error response in `kind`'s format. `detail` overrides the error type
/// or code the status implies (`invalid_api_key`, `API_KEY_INVALID`…).
fn error_body(
    kind: FakeKind,
    status: u16,
    retry_after: Option<u64>,
    message: &str,
    detail: Option<&str>,
) -> Response<Body> {
    let status_code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let doc = match kind {
        FakeKind::OpenAi => {
            let error_type = match status {
                429 => "tokens",
                500..=599 => "server_error",
                _ => "invalid_request_error",
            };
            let code = detail.map(Value::from).unwrap_or(match status {
                429 => "rate_limit_exceeded".into(),
                404 => "model_not_found".into(),
                _ => Value::Null,
            });
            json!({"error": {"message": message, "type": error_type, "param": null, "code": code}})
        }
        FakeKind::AzureOpenAi => {
            let code = detail.map_or_else(|| status.to_string(), str::to_owned);
            json!({"error": {"code": code, "message": message}})
        }
        FakeKind::Mistral => {
            if status == 401 {
                json!({"detail": "Unauthorized"})
            } else {
                let (error_type, code) = match status {
                    429 => ("rate_limited", Value::from("1300")),
                    500..=599 => ("internal_server_error", Value::Null),
                    _ => ("invalid_request_error", Value::Null),
                };
                json!({"object": "error", "message": message, "type": error_type, "param": null, "code": code})
            }
        }
        FakeKind::Anthropic => {
            let error_type = detail.unwrap_or(match status {
                400 => "invalid_request_error",
                401 => "authentication_error",
                402 => "billing_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                504 => "timeout_error",
                529 => "overloaded_error",
                _ => "api_error",
            });
            json!({
                "type": "error",
                "error": {"type": error_type, "message": message},
                "request_id": "req_fake_error",
            })
        }
        FakeKind::Gemini => {
            let grpc_status = match status {
                400 => "INVALID_ARGUMENT",
                401 => "UNAUTHENTICATED",
                403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND",
                429 => "RESOURCE_EXHAUSTED",
                499 => "CANCELLED",
                500 => "INTERNAL",
                503 => "UNAVAILABLE",
                504 => "DEADLINE_EXCEEDED",
                _ => "UNKNOWN",
            };
            let mut error = json!({"code": status, "message": message, "status": grpc_status});
            let mut details = Vec::new();
            if let Some(reason) = detail {
                details.push(json!({
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": reason,
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }));
            }
            if let Some(seconds) = retry_after {
                details.push(json!({
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": format!("{seconds}s"),
                }));
            }
            if !details.is_empty() {
                error["details"] = Value::Array(details);
            }
            json!({"error": error})
        }
    };
    let mut builder = Response::builder()
        .status(status_code)
        .header(header::CONTENT_TYPE, "application/json");
    if let (Some(seconds), false) = (retry_after, kind == FakeKind::Gemini) {
        builder = builder.header(header::RETRY_AFTER, seconds.to_string());
        if kind == FakeKind::AzureOpenAi {
            builder = builder.header("retry-after-ms", (seconds * 1000).to_string());
        }
    }
    builder
        .body(body::json(&doc))
        .expect("static response parts are valid")
}

/// The provider's answer to a missing (`None`) or refused key.
fn auth_error(kind: FakeKind, key: Option<&str>) -> Response<Body> {
    match (kind, key) {
        (FakeKind::OpenAi, None) => error_body(kind, 401, None, "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username and password. You can obtain an API key from https://platform.openai.com/account/api-keys.", None),
        (FakeKind::OpenAi, Some(key)) => error_body(
            kind,
            401,
            None,
            &format!(
                "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                redact(key)
            ),
            Some("invalid_api_key"),
        ),
        (FakeKind::AzureOpenAi, _) => error_body(kind, 401, None, "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.", None),
        (FakeKind::Mistral, _) => error_body(kind, 401, None, "Unauthorized", None),
        (FakeKind::Anthropic, None) => error_body(kind, 401, None, "x-api-key header is required", None),
        (FakeKind::Anthropic, Some(_)) => error_body(kind, 401, None, "invalid x-api-key", None),
        (FakeKind::Gemini, None) => error_body(kind, 403, None, "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.", None),
        (FakeKind::Gemini, Some(_)) => error_body(
            kind,
            400,
            None,
            "API key not valid. Please pass a valid API key.",
            Some("API_KEY_INVALID"),
        ),
    }
}

/// A key as OpenAI quotes it in errors: the start and the last four characters.
fn redact(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

fn not_found(kind: FakeKind, method: &Method, path: &str) -> Response<Body> {
    match kind {
        FakeKind::OpenAi => error_body(
            kind,
            404,
            None,
            &format!("Invalid URL ({method} {path})"),
            None,
        ),
        FakeKind::AzureOpenAi => error_body(kind, 404, None, "Resource not found", None),
        FakeKind::Mistral => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body::json(&json!({"detail": "Not Found"})))
            .expect("static response parts are valid"),
        FakeKind::Anthropic => error_body(kind, 404, None, "Not Found", None),
        FakeKind::Gemini => error_body(
            kind,
            404,
            None,
            &format!("The requested URL {path} was not found on this server."),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_redacted_like_openai_does() {
        assert_eq!(redact("sk-abcdefghijkl"), "sk-********ijkl");
        assert_eq!(redact("short"), "*****");
    }

    #[test]
    fn halves_split_at_character_boundaries() {
        assert_eq!(halves("{\"a\":\"é\"}"), vec!["{\"a\":", "\"é\"}"]);
        assert_eq!(halves("x"), vec!["x"]);
        assert!(halves("").is_empty());
    }

    #[test]
    fn vectors_are_deterministic() {
        assert_eq!(fake_vector("hi", 4), fake_vector("hi", 4));
        assert_ne!(fake_vector("hi", 4), fake_vector("ho", 4));
        assert!(fake_vector("hi", 64)
            .iter()
            .all(|x| (-1.0..=1.0).contains(x)));
    }
}
