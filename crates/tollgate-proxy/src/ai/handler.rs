//! Serving one AI request, once routing and the API's access policies
//! (auth, ACL, rate limits) have let it through:
//!
//! ```text
//! endpoint (by path) → read the body (bounded) → parse (client format)
//!   → guard (allowed model, deny patterns, PII masking, output cap)
//!   → resolve the model → ai_limits (reserve tokens) → ai_budget
//!   → cache → attempt chain (keys, targets, fallbacks)
//!   → translate the answer (whole or streamed) → settle tokens and cost
//! ```
//! Errors are answered in the client's own format (OpenAI or Anthropic),
//! with the gateway's stable code.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use tollgate_ai::formats::openai::VerbatimChat;
use tollgate_ai::formats::{anthropic, openai};
use tollgate_ai::prices::Price;
use tollgate_ai::{
    ChatRequest, ChatResponse, EmbeddingsRequest, Format, FormatError, StreamEvent, Usage,
};
use tollgate_config::AiEndpoint;
use tollgate_policy::ai_limits::{BudgetCharge, TokenReservation};
use tollgate_policy::counters::CounterStore;
use tollgate_policy::rate_limit::LimitInput;
use tollgate_policy::{ApiPolicies, Denial, Identity};
use tollgate_telemetry::{AccessRecord, AiAttempt, AiUsage, Outcome};

use super::attempts::{self, Answer, Call};
use super::cache::{CacheKey, CachedAnswer, ResponseCache};
use super::prompt::{self, PromptStreamRenderer};
use super::stream::{Renderer, TranslatedStream};
use super::{AiApi, AiRuntime, AiTargetRuntime, ModelRuntime};
use crate::body::{
    read_limited, ClientBody, RecordFinisher, RequestBodyError, RequestStats, ResponseBody,
};

pub static X_TOLLGATE_PROVIDER: HeaderName = HeaderName::from_static("x-tollgate-provider");
pub static X_TOLLGATE_MODEL: HeaderName = HeaderName::from_static("x-tollgate-model");
pub static X_TOLLGATE_CACHE: HeaderName = HeaderName::from_static("x-tollgate-cache");

/// Output tokens reserved for a call that sets no limit of its own.
const DEFAULT_OUTPUT_RESERVE: u64 = 1024;

/// What the handler needs from the pipeline.
pub(crate) struct AiRequest<'a> {
    pub runtime: &'a AiRuntime,
    pub api: &'a AiApi,
    pub api_name: &'a str,
    pub policies: Option<&'a ApiPolicies>,
    pub counters: &'a Arc<dyn CounterStore>,
    pub identity: Option<&'a Identity>,
    pub client_ip: IpAddr,
    pub path: &'a str,
    pub max_body: u64,
}

/// The client's format and the endpoint it called.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat(Format),
    Embeddings,
    Models,
    Prompt,
}

/// An answer the handler gives itself, in the client's format.
struct AiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    denied: bool,
}

impl AiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> AiError {
        AiError {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
            denied: false,
        }
    }

    fn invalid(message: impl Into<String>) -> AiError {
        AiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl From<Denial> for AiError {
    fn from(denial: Denial) -> AiError {
        AiError {
            status: denial.status,
            code: denial.code,
            message: denial.message.into_owned(),
            headers: denial.headers,
            denied: true,
        }
    }
}

impl From<FormatError> for AiError {
    fn from(error: FormatError) -> AiError {
        AiError::invalid(error.0)
    }
}

pub(crate) async fn serve(
    req: AiRequest<'_>,
    parts: http::request::Parts,
    body: Option<ClientBody>,
    mut fin: Box<RecordFinisher>,
) -> Response<ResponseBody> {
    let endpoint = match endpoint(req.api, &parts.method, req.path) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            let unread = body.is_some();
            let mut response = error_response(Format::OpenAi, error, fin);
            if unread {
                // The unread body must not be parsed as the next request.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return response;
        }
    };
    let format = match endpoint {
        Endpoint::Chat(format) => format,
        _ => Format::OpenAi,
    };
    match handle(&req, endpoint, &parts, body, &mut fin).await {
        Ok(response) => response(fin),
        Err(error) => error_response(format, error, fin),
    }
}

/// What [`handle`] answers with, once the record is complete.
type Respond = Box<dyn FnOnce(Box<RecordFinisher>) -> Response<ResponseBody> + Send>;

fn endpoint(api: &AiApi, method: &Method, path: &str) -> Result<Endpoint, AiError> {
    if api.prompt.is_some() {
        if method != Method::POST {
            return Err(AiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "a prompt API takes POST",
            ));
        }
        return Ok(Endpoint::Prompt);
    }
    let path = path.trim_end_matches('/');
    let (endpoint, wanted, method_ok) = if path.ends_with("/chat/completions") {
        (
            Endpoint::Chat(Format::OpenAi),
            AiEndpoint::Chat,
            method == Method::POST,
        )
    } else if path.ends_with("/messages") {
        (
            Endpoint::Chat(Format::Anthropic),
            AiEndpoint::Messages,
            method == Method::POST,
        )
    } else if path.ends_with("/embeddings") {
        (
            Endpoint::Embeddings,
            AiEndpoint::Embeddings,
            method == Method::POST,
        )
    } else if path.ends_with("/models") {
        (
            Endpoint::Models,
            AiEndpoint::Models,
            method == Method::GET || method == Method::HEAD,
        )
    } else {
        return Err(AiError::new(
            StatusCode::NOT_FOUND,
            "no_route",
            format!("no AI endpoint at {path}"),
        ));
    };
    if !api.endpoints.contains(&wanted) {
        return Err(AiError::new(
            StatusCode::NOT_FOUND,
            "no_route",
            format!("this API does not serve {path}"),
        ));
    }
    if !method_ok {
        return Err(AiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        ));
    }
    Ok(endpoint)
}

async fn handle(
    req: &AiRequest<'_>,
    endpoint: Endpoint,
    parts: &http::request::Parts,
    body: Option<ClientBody>,
    fin: &mut RecordFinisher,
) -> Result<Respond, AiError> {
    if endpoint == Endpoint::Models {
        return Ok(models(req, fin));
    }
    let limit = match endpoint {
        Endpoint::Prompt => req.max_body.min(prompt::MAX_PROMPT_BODY),
        _ => req.max_body,
    };
    let stats = RequestStats::default();
    let bytes = match body {
        Some(body) => match read_limited(body, limit, &stats).await {
            Ok(bytes) => bytes,
            Err(RequestBodyError::TooLarge(limit)) => {
                return Err(AiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("the request body exceeds {limit} bytes"),
                ))
            }
            Err(RequestBodyError::Client(_)) => {
                return Err(AiError::invalid("the request body could not be read"))
            }
        },
        None => Bytes::new(),
    };
    fin.record.bytes_in = bytes.len() as u64;
    let input = LimitInput {
        consumer: req.identity.map(|i| &*i.consumer.name),
        client_ip: req.client_ip,
        api: req.api_name,
        headers: &parts.headers,
    };
    match endpoint {
        Endpoint::Embeddings => embeddings(req, &bytes, &input, fin).await,
        Endpoint::Chat(format) => {
            let (request, include_usage, verbatim) = match format {
                Format::OpenAi => {
                    let (request, options, verbatim) = openai::parse_chat_verbatim(&bytes)?;
                    (request, options.include_usage, verbatim)
                }
                Format::Anthropic => (anthropic::parse_messages(&bytes)?, true, None),
            };
            let renderer = if request.stream {
                Some(match format {
                    Format::OpenAi => {
                        Renderer::OpenAi(openai::ChatStreamRenderer::new(include_usage))
                    }
                    Format::Anthropic => {
                        Renderer::Anthropic(anthropic::MessagesStreamRenderer::new())
                    }
                })
            } else {
                None
            };
            let chat_call = ChatCall::new(request, verbatim);
            chat(req, chat_call, endpoint, renderer, &input, fin).await
        }
        Endpoint::Prompt => {
            let prompt = req
                .api
                .prompt
                .as_ref()
                .expect("a prompt endpoint has a prompt");
            let stream = parts
                .uri
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "stream=true" || p == "stream=1"));
            let request = prompt.request(&bytes, stream).map_err(AiError::invalid)?;
            let renderer = stream.then(|| Renderer::Prompt(PromptStreamRenderer::default()));
            chat(
                req,
                ChatCall::new(request, None),
                endpoint,
                renderer,
                &input,
                fin,
            )
            .await
        }
        Endpoint::Models => unreachable!("answered above"),
    }
}

/// `GET /models`: the configured models the API's guard allows.
fn models(req: &AiRequest<'_>, fin: &mut RecordFinisher) -> Respond {
    let mut names: Vec<&str> = req
        .runtime
        .models
        .keys()
        .map(String::as_str)
        .filter(|name| model_allowed(req, name))
        .collect();
    names.sort_unstable();
    let listed: Vec<(&str, &str)> = names.iter().map(|n| (*n, "tollgate")).collect();
    let body = openai::render_models(&listed);
    fin.record.status = 200;
    fin.record.outcome = Outcome::Allowed;
    Box::new(move |fin| json_response(StatusCode::OK, body, Vec::new(), fin))
}

/// Whether the API's guard and the consumer's `ai_models` let `model` be called.
fn model_allowed(req: &AiRequest<'_>, model: &str) -> bool {
    let by_api = req.api.guard.as_ref().is_none_or(|g| g.allows(model));
    let by_consumer = req.identity.is_none_or(|identity| {
        let allowed = &identity.consumer.ai_models;
        allowed.is_empty() || allowed.iter().any(|m| &**m == model)
    });
    by_api && by_consumer
}

fn check_model(req: &AiRequest<'_>, model: &str) -> Result<(), AiError> {
    if model_allowed(req, model) {
        Ok(())
    } else {
        Err(Denial::model_not_allowed(format!("model {model} is not allowed here")).into())
    }
}

/// Checks the model allow-lists, caps output and masks the prompt.
fn guard(req: &AiRequest<'_>, call: &mut ChatCall) -> Result<(), AiError> {
    let request = &mut call.request;
    check_model(req, &request.model)?;
    let Some(guard) = &req.api.guard else {
        return Ok(());
    };
    // It may change the request: the client's body is then not what to send.
    call.verbatim = None;
    if let Some(cap) = guard.max_output_tokens {
        if request.max_tokens.is_none_or(|asked| asked > cap) {
            request.max_tokens = Some(cap);
        }
    }
    match guard.guard.check(request) {
        Ok(report) => {
            if !report.is_empty() {
                tracing::debug!(masked = report.total(), "PII masked in a prompt");
            }
            Ok(())
        }
        Err(denied) => Err(Denial::prompt_rejected(format!(
            "the prompt matches deny pattern {}",
            denied.pattern
        ))
        .into()),
    }
}

fn resolve(req: &AiRequest<'_>, name: &str) -> Result<Arc<ModelRuntime>, AiError> {
    req.runtime.resolve(name).ok_or_else(|| {
        AiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("no model named {name}"),
        )
    })
}

/// The limits and budget before a call: reserve tokens, and reserve the
/// call's cost bound (`budget_reserve`, micro-USD) against the spend.
async fn admit(
    req: &AiRequest<'_>,
    input: &LimitInput<'_>,
    tokens: u64,
    budget_reserve: u64,
) -> Result<(Option<TokenReservation>, Option<BudgetCharge>), AiError> {
    let Some(policies) = req.policies else {
        return Ok((None, None));
    };
    let counters = &**req.counters;
    let budget = match &policies.ai_budget {
        Some(budget) => budget.check(counters, input, budget_reserve).await?,
        None => None,
    };
    let reservation = match &policies.ai_limits {
        Some(limits) => limits.reserve(counters, input, tokens).await?,
        None => None,
    };
    Ok((reservation, budget))
}

/// A chat to send: the canonical request, and the client's body when a
/// provider may be sent it as it came (dropped once the guard changes the
/// request).
struct ChatCall {
    request: ChatRequest,
    verbatim: Option<VerbatimChat>,
}

impl ChatCall {
    fn new(request: ChatRequest, verbatim: Option<VerbatimChat>) -> ChatCall {
        ChatCall { request, verbatim }
    }
}

impl Call for ChatCall {
    fn request(
        &self,
        target: &AiTargetRuntime,
        key: Option<&str>,
    ) -> Result<tollgate_ai::providers::UpstreamRequest, FormatError> {
        let adapter = &target.provider.adapter;
        if let Some(verbatim) = &self.verbatim {
            if let Some(request) = adapter.chat_request_verbatim(verbatim, &target.model, key) {
                return request;
            }
        }
        adapter.chat_request(&self.request, &target.model, key)
    }

    fn streamed(&self) -> bool {
        self.request.stream
    }
}

struct EmbeddingsCall<'a> {
    request: &'a EmbeddingsRequest,
}

impl Call for EmbeddingsCall<'_> {
    fn request(
        &self,
        target: &AiTargetRuntime,
        key: Option<&str>,
    ) -> Result<tollgate_ai::providers::UpstreamRequest, FormatError> {
        target
            .provider
            .adapter
            .embeddings_request(self.request, &target.model, key)
    }

    fn streamed(&self) -> bool {
        false
    }
}

async fn chat(
    req: &AiRequest<'_>,
    mut call: ChatCall,
    endpoint: Endpoint,
    renderer: Option<Renderer>,
    input: &LimitInput<'_>,
    fin: &mut RecordFinisher,
) -> Result<Respond, AiError> {
    guard(req, &mut call)?;
    let request = &call.request;
    let model = resolve(req, &request.model)?;
    // Reserving needs a bound, not a count: the tokenizer runs only when a
    // provider reports no usage.
    let (reserve, budget_reserve) = match &req.policies {
        Some(p) if p.ai_limits.is_some() || p.ai_budget.is_some() => {
            let prompt = tollgate_ai::tokens::prompt_upper_bound(request);
            let output = request.max_tokens.unwrap_or(DEFAULT_OUTPUT_RESERVE);
            let budget_reserve = match p.ai_budget {
                Some(_) => model.cost_bound(prompt, output),
                None => 0,
            };
            (prompt + output, budget_reserve)
        }
        _ => (0, 0),
    };
    let (reservation, budget) = admit(req, input, reserve, budget_reserve).await?;
    let mut accounting = Accounting::new(req.counters.clone(), reservation, budget);

    if let Some(cache) = &req.api.cache {
        match ResponseCache::key(request) {
            Some(key) => {
                if let Some(hit) = cache.get(&key) {
                    accounting.cache_status = Some("hit");
                    accounting.provider = Some(hit.provider.clone());
                    accounting.model = Some(hit.model.clone());
                    accounting.settle_free(&mut fin.record);
                    return Ok(answer_cached(&hit, endpoint, renderer, fin));
                }
                accounting.cache_status = Some("miss");
                accounting.cache = Some((cache.clone(), key));
            }
            None => accounting.cache_status = Some("miss"),
        }
    }

    let started = fin.started;
    let outcome = attempts::run(&model, &call).await;
    accounting.prompt = Prompt::Chat(Box::new(call.request));
    let success = match outcome {
        Ok(success) => success,
        Err(failure) => {
            accounting.attempts = failure.attempts;
            if let Some((provider, model)) = failure.last {
                accounting.provider = Some(provider);
                accounting.model = Some(model);
            }
            accounting.settle_failed(&mut fin.record);
            let mut error = AiError::new(failure.status, failure.code, failure.message);
            if let Some(wait) = failure.retry_after {
                error.headers.push((
                    header::RETRY_AFTER,
                    HeaderValue::from(wait.as_secs().max(1)),
                ));
            }
            return Err(error);
        }
    };
    let target = success.target;
    accounting.served_by(&target, success.attempts, &mut fin.record);
    let headers = answer_headers(&target.answer_headers, accounting.cache_status);
    match success.answer {
        Answer::Whole(bytes) => {
            accounting.ttft_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            let adapter = &target.provider.adapter;
            let native = adapter.native_format();
            let passed_on = matches!(endpoint, Endpoint::Chat(format) if native == Some(format));
            // Passed on as it came, and not cached: its usage is all there
            // is to read.
            if passed_on && accounting.cache.is_none() {
                if let Some(usage) = adapter.native_usage(&bytes) {
                    accounting.settle(Some(usage), "", None, &mut fin.record);
                    return Ok(Box::new(move |fin| {
                        json_response(StatusCode::OK, bytes, headers, fin)
                    }));
                }
            }
            let response = adapter
                .chat_response(&bytes)
                .map_err(|e| AiError::new(StatusCode::BAD_GATEWAY, "provider_error", e.message))?;
            let text = response.message.joined_text();
            // A copy for the cache only when the API caches.
            let whole = accounting.cache.is_some().then(|| {
                (
                    response.clone(),
                    native.map(|format| (format, bytes.clone())),
                )
            });
            let usage = accounting.settle(response.usage, &text, whole, &mut fin.record);
            let cost = fin.record.ai.as_ref().and_then(|ai| ai.cost_usd);
            let body = match endpoint {
                Endpoint::Prompt => prompt::render_result(&text, &usage, cost),
                // Read above; passed on as it came.
                Endpoint::Chat(_) if passed_on => bytes,
                Endpoint::Chat(Format::Anthropic) => anthropic::render_messages(&response),
                _ => openai::render_chat(&response),
            };
            Ok(Box::new(move |fin| {
                json_response(StatusCode::OK, body, headers, fin)
            }))
        }
        Answer::Stream {
            first,
            decoder,
            body,
        } => {
            accounting.ttft_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            let renderer =
                renderer.unwrap_or_else(|| Renderer::OpenAi(openai::ChatStreamRenderer::new(true)));
            let stream = TranslatedStream::new(
                first,
                decoder,
                Some(body),
                renderer,
                accounting,
                model.timeout,
            );
            Ok(Box::new(move |fin| stream_response(stream, headers, fin)))
        }
    }
}

async fn embeddings(
    req: &AiRequest<'_>,
    bytes: &[u8],
    input: &LimitInput<'_>,
    fin: &mut RecordFinisher,
) -> Result<Respond, AiError> {
    let (request, encoding) = openai::parse_embeddings_with_encoding(bytes)?;
    check_model(req, &request.model)?;
    let model = resolve(req, &request.model)?;
    let (reserve, budget_reserve) = match &req.policies {
        Some(p) if p.ai_limits.is_some() || p.ai_budget.is_some() => {
            let bound: u64 = request
                .input
                .iter()
                .map(|i| (i.len() as u64).div_ceil(3))
                .sum();
            let budget_reserve = match p.ai_budget {
                Some(_) => model.cost_bound(bound, 0),
                None => 0,
            };
            (bound, budget_reserve)
        }
        _ => (0, 0),
    };
    let (reservation, budget) = admit(req, input, reserve, budget_reserve).await?;
    let mut accounting = Accounting::new(req.counters.clone(), reservation, budget);
    let outcome = attempts::run(&model, &EmbeddingsCall { request: &request }).await;
    accounting.prompt = Prompt::Embeddings(request.input);
    let success = match outcome {
        Ok(success) => success,
        Err(failure) => {
            accounting.attempts = failure.attempts;
            accounting.settle_failed(&mut fin.record);
            return Err(AiError::new(failure.status, failure.code, failure.message));
        }
    };
    let target = success.target;
    accounting.served_by(&target, success.attempts, &mut fin.record);
    let Answer::Whole(bytes) = success.answer else {
        return Err(AiError::new(
            StatusCode::BAD_GATEWAY,
            "provider_error",
            "unexpected stream",
        ));
    };
    let response = target
        .provider
        .adapter
        .embeddings_response(&bytes)
        .map_err(|e| AiError::new(StatusCode::BAD_GATEWAY, "provider_error", e.message))?;
    let usage = response.usage.map(|u| Usage { output: 0, ..u });
    accounting.settle(usage, "", None, &mut fin.record);
    let headers = answer_headers(&target.answer_headers, None);
    let body = openai::render_embeddings_with_encoding(&response, encoding);
    Ok(Box::new(move |fin| {
        json_response(StatusCode::OK, body, headers, fin)
    }))
}

fn answer_headers(
    served_by: &[(HeaderName, HeaderValue)],
    cache: Option<&'static str>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::with_capacity(served_by.len() + 1);
    headers.extend_from_slice(served_by);
    if let Some(cache) = cache {
        headers.push((X_TOLLGATE_CACHE.clone(), HeaderValue::from_static(cache)));
    }
    headers
}

/// A cached answer, in the client's format, streamed if it asked.
fn answer_cached(
    hit: &CachedAnswer,
    endpoint: Endpoint,
    renderer: Option<Renderer>,
    fin: &mut RecordFinisher,
) -> Respond {
    fin.record.status = 200;
    fin.record.outcome = Outcome::Allowed;
    let headers = answer_headers(&hit.answer_headers, Some("hit"));
    let response = &hit.response;
    if let Some(mut renderer) = renderer {
        let mut out = bytes::BytesMut::new();
        for event in events_of(response) {
            out.extend_from_slice(&renderer.event(&event));
        }
        out.extend_from_slice(&renderer.done());
        let body = out.freeze();
        return Box::new(move |fin| {
            let mut response = json_response(StatusCode::OK, body, headers, fin);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            response
        });
    }
    if let (Endpoint::Chat(format), Some((native, body))) = (endpoint, &hit.native) {
        if *native == format {
            let body = body.clone();
            return Box::new(move |fin| json_response(StatusCode::OK, body, headers, fin));
        }
    }
    let usage = response.usage.unwrap_or_default();
    let body = match endpoint {
        Endpoint::Chat(Format::Anthropic) => anthropic::render_messages(response),
        Endpoint::Prompt => {
            prompt::render_result(&response.message.joined_text(), &usage, Some(0.0))
        }
        _ => openai::render_chat(response),
    };
    Box::new(move |fin| json_response(StatusCode::OK, body, headers, fin))
}

/// A whole answer as the events of a stream.
fn events_of(response: &ChatResponse) -> Vec<StreamEvent> {
    let mut events = vec![StreamEvent::Start {
        id: response.id.clone(),
        model: response.model.clone(),
    }];
    let text = response.message.joined_text();
    if !text.is_empty() {
        events.push(StreamEvent::Text(text));
    }
    for (index, call) in response.message.tool_calls.iter().enumerate() {
        events.push(StreamEvent::ToolCallStart {
            index,
            id: call.id.clone(),
            name: call.name.clone(),
        });
        events.push(StreamEvent::ToolCallArgs {
            index,
            fragment: call.arguments.clone(),
        });
    }
    events.push(StreamEvent::Finish(response.finish.clone()));
    if let Some(usage) = response.usage {
        events.push(StreamEvent::Usage(usage));
    }
    events
}

fn json_response(
    status: StatusCode,
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
    fin: Box<RecordFinisher>,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body.clone(), Some(fin)));
    *response.status_mut() = status;
    let map = response.headers_mut();
    map.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    map.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    for (name, value) in headers {
        map.insert(name, value);
    }
    response
}

fn stream_response(
    stream: TranslatedStream,
    headers: Vec<(HeaderName, HeaderValue)>,
    fin: Box<RecordFinisher>,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::produced(Box::new(stream), Some(fin)));
    let map = response.headers_mut();
    map.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    map.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    for (name, value) in headers {
        map.insert(name, value);
    }
    response
}

fn error_response(
    format: Format,
    error: AiError,
    mut fin: Box<RecordFinisher>,
) -> Response<ResponseBody> {
    fin.record.status = error.status.as_u16();
    fin.record.outcome = if error.denied {
        Outcome::Denied
    } else {
        Outcome::Error
    };
    fin.record.reason = Some(error.code);
    let request_id = fin.record.request_id.clone();
    let body = match format {
        Format::Anthropic => anthropic::render_error(
            error.status.as_u16(),
            error.code,
            &error.message,
            &request_id,
        ),
        Format::OpenAi => openai::render_error(
            error.status.as_u16(),
            error.code,
            &error.message,
            &request_id,
        ),
    };
    let mut response = json_response(error.status, body, Vec::new(), fin);
    let map = response.headers_mut();
    map.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in error.headers {
        map.append(name, value);
    }
    response
}

/// The prompt, kept to count its tokens locally if the provider reports none.
pub(crate) enum Prompt {
    /// Not handed over yet (a cache hit never is).
    Pending,
    Chat(Box<ChatRequest>),
    Embeddings(Vec<String>),
}

impl Prompt {
    fn estimate(&self) -> u64 {
        match self {
            Prompt::Pending => 0,
            Prompt::Chat(request) => tollgate_ai::tokens::estimate_prompt(request),
            Prompt::Embeddings(input) => tollgate_ai::tokens::estimate_embeddings(input),
        }
    }
}

/// What a call reserved and how to settle it once its usage is known.
pub(crate) struct Accounting {
    counters: Arc<dyn CounterStore>,
    reservation: Option<TokenReservation>,
    budget: Option<BudgetCharge>,
    price: Option<Price>,
    prompt: Prompt,
    provider: Option<Arc<str>>,
    model: Option<Arc<str>>,
    attempts: Vec<AiAttempt>,
    pub(crate) ttft_ms: Option<f64>,
    /// Where to keep the answer, on a miss.
    cache: Option<(Arc<ResponseCache>, CacheKey)>,
    cache_status: Option<&'static str>,
    /// The serving target's answer headers, for a cached copy.
    answer_headers: Arc<[(HeaderName, HeaderValue)]>,
}

impl Accounting {
    fn new(
        counters: Arc<dyn CounterStore>,
        reservation: Option<TokenReservation>,
        budget: Option<BudgetCharge>,
    ) -> Accounting {
        Accounting {
            counters,
            reservation,
            budget,
            price: None,
            prompt: Prompt::Pending,
            provider: None,
            model: None,
            attempts: Vec::new(),
            ttft_ms: None,
            cache: None,
            cache_status: None,
            answer_headers: Arc::new([]),
        }
    }

    /// The call succeeded on `target` after `attempts`: its price, names
    /// and headers, and the record's upstream fields.
    fn served_by(
        &mut self,
        target: &AiTargetRuntime,
        attempts: Vec<AiAttempt>,
        record: &mut AccessRecord,
    ) {
        self.attempts = attempts;
        self.price = target.price;
        self.provider = Some(target.provider.name.clone());
        self.model = Some(target.model.clone());
        self.answer_headers = target.answer_headers.clone();
        record.upstream_addr = Some(target.provider.name.clone());
        record.upstream_status = Some(200);
        record.status = 200;
        record.outcome = Outcome::Allowed;
    }

    /// Settles with the usage the provider reported (or estimates it from
    /// the prompt and `output_text`), writes the record's AI fields, and
    /// caches `whole` when the API caches. Returns the usage counted.
    pub(crate) fn settle(
        mut self,
        reported: Option<Usage>,
        output_text: &str,
        whole: Option<(ChatResponse, Option<(Format, Bytes)>)>,
        record: &mut AccessRecord,
    ) -> Usage {
        let (usage, estimated) = match reported {
            Some(usage) => (usage, false),
            None => (
                Usage {
                    input: self.prompt.estimate(),
                    output: tollgate_ai::tokens::estimate_text(output_text),
                    cached_input: 0,
                    reasoning: 0,
                },
                true,
            ),
        };
        let cost = self
            .price
            .as_ref()
            .map(|price| tollgate_ai::prices::cost_usd(price, &usage));
        let micro = self.price.as_ref().map_or(0, |price| {
            tollgate_ai::prices::cost_micro_usd(price, &usage)
        });
        if let (Some((cache, key)), Some(whole), Some(provider), Some(model)) = (
            self.cache.take(),
            whole,
            self.provider.clone(),
            self.model.clone(),
        ) {
            let (response, native) = whole;
            cache.put(
                key,
                CachedAnswer {
                    response,
                    native,
                    provider,
                    model,
                    answer_headers: self.answer_headers.clone(),
                },
            );
        }
        self.write(record, usage, estimated, cost);
        self.spawn_settlement(usage.input + usage.output, micro);
        usage
    }

    /// A call no provider answered: everything reserved goes back.
    fn settle_failed(mut self, record: &mut AccessRecord) {
        self.write(record, Usage::default(), false, None);
        self.spawn_settlement(0, 0);
    }

    /// A cache hit: costs nothing, uses no tokens.
    fn settle_free(mut self, record: &mut AccessRecord) {
        self.write(record, Usage::default(), false, Some(0.0));
        self.spawn_settlement(0, 0);
    }

    fn write(
        &mut self,
        record: &mut AccessRecord,
        usage: Usage,
        estimated: bool,
        cost: Option<f64>,
    ) {
        record.ai = Some(Box::new(AiUsage {
            ai_provider: self.provider.as_deref().map(str::to_string),
            ai_model: self.model.as_deref().map(str::to_string),
            tokens_in: usage.input,
            tokens_out: usage.output,
            tokens_cached: usage.cached_input,
            tokens_estimated: estimated,
            cost_usd: cost,
            ttft_ms: self.ttft_ms,
            attempts: std::mem::take(&mut self.attempts),
            cache: self.cache_status,
        }));
    }

    fn spawn_settlement(&mut self, tokens: u64, micro_usd: u64) {
        let reservation = self.reservation.take();
        let budget = self.budget.take();
        if reservation.is_none() && budget.is_none() {
            return;
        }
        let counters = self.counters.clone();
        let settle = async move {
            if let Some(reservation) = reservation {
                reservation.settle(&*counters, tokens).await;
            }
            if let Some(budget) = budget {
                budget.charge(&*counters, micro_usd).await;
            }
        };
        // The memory store answers at once: settle now, so the next call
        // sees it. A remote store's answer is awaited off the request.
        let mut settle = Box::pin(settle);
        if futures_util::FutureExt::now_or_never(settle.as_mut()).is_some() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(settle);
            }
            Err(_) => tracing::warn!("AI usage not settled: no runtime"),
        }
    }
}
