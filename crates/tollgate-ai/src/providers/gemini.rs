//! Google's Gemini API (`generateContent`, `streamGenerateContent?alt=sse`,
//! `batchEmbedContents`).
//!
//! Gemini names no tool calls: ids are made up on the way back
//! (`call_<response id>_<n>`, or `call_<n>`), and a tool result is sent
//! under the name of the earlier call with its id. Tool parameters go as
//! `parametersJsonSchema`, which takes JSON Schema as clients write it
//! (`parameters` refuses keywords such as `additionalProperties`).

use http::{HeaderMap, Method};
use serde_json::{json, Map, Value};

use super::{
    bad_response, json_body, json_content_type, parse_json, path_segment, provider_error,
    secret_header, status_for_kind, unix_now, Provider, StreamDecoder, UpstreamRequest,
};
use crate::canonical::{
    ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse, ErrorKind, FinishReason,
    FormatError, Image, Message, Part, ProviderError, Role, StreamEvent, ToolCall, ToolChoice,
    Usage,
};
use crate::sse::SseParser;

/// The adapter for Gemini.
#[derive(Debug)]
pub struct Gemini {
    base_url: String,
}

impl Gemini {
    pub fn new(base_url: &str) -> Gemini {
        Gemini {
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }

    fn request(
        &self,
        model: &str,
        operation: &str,
        key: Option<&str>,
        body: Map<String, Value>,
    ) -> Result<UpstreamRequest, FormatError> {
        let model = model_name(model)?;
        let mut headers = vec![json_content_type()];
        if let Some(key) = key {
            headers.push(secret_header("x-goog-api-key", key)?);
        }
        Ok(UpstreamRequest {
            method: Method::POST,
            url: format!("{}/models/{model}:{operation}", self.base_url),
            headers,
            body: json_body(body),
        })
    }
}

/// The model's name without the `models/` Gemini's own lists put before it.
fn model_name(model: &str) -> Result<&str, FormatError> {
    path_segment(
        model.strip_prefix("models/").unwrap_or(model),
        "the model name",
    )
}

impl Provider for Gemini {
    fn chat_request(
        &self,
        request: &ChatRequest,
        model: &str,
        key: Option<&str>,
    ) -> Result<UpstreamRequest, FormatError> {
        let operation = if request.stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        self.request(model, operation, key, generate_body(request)?)
    }

    fn chat_response(&self, body: &[u8]) -> Result<ChatResponse, ProviderError> {
        let root = parse_json(body, "the generateContent answer")?;
        if root["error"].is_object() {
            return Err(stream_error(&root));
        }
        let mut calls = 0;
        let read = read_candidate(&root, &mut calls);
        let finish = read.finish.unwrap_or(FinishReason::Stop);
        Ok(ChatResponse {
            id: root["responseId"].as_str().unwrap_or_default().to_owned(),
            model: root["modelVersion"].as_str().unwrap_or_default().to_owned(),
            created: unix_now(),
            message: Message::assistant(read.text, read.tool_calls),
            finish,
            usage: parse_usage(&root["usageMetadata"]),
        })
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(GeminiStreamDecoder::new())
    }

    fn embeddings_request(
        &self,
        request: &EmbeddingsRequest,
        model: &str,
        key: Option<&str>,
    ) -> Result<UpstreamRequest, FormatError> {
        let name = format!("models/{}", model_name(model)?);
        let requests: Vec<Value> = request
            .input
            .iter()
            .map(|text| {
                let mut one = Map::new();
                one.insert("model".into(), name.clone().into());
                one.insert("content".into(), json!({"parts": [{"text": text}]}));
                if let Some(dimensions) = request.dimensions {
                    one.insert("outputDimensionality".into(), dimensions.into());
                }
                Value::Object(one)
            })
            .collect();
        let mut body = Map::new();
        body.insert("requests".into(), requests.into());
        self.request(model, "batchEmbedContents", key, body)
    }

    fn embeddings_response(&self, body: &[u8]) -> Result<EmbeddingsResponse, ProviderError> {
        let root = parse_json(body, "the batchEmbedContents answer")?;
        let embeddings = root["embeddings"]
            .as_array()
            .ok_or_else(|| bad_response("the batchEmbedContents answer has no embeddings"))?;
        let data = embeddings
            .iter()
            .map(|embedding| {
                embedding["values"]
                    .as_array()
                    .and_then(|values| {
                        values
                            .iter()
                            .map(|x| x.as_f64().map(|x| x as f32))
                            .collect::<Option<Vec<f32>>>()
                    })
                    .ok_or_else(|| bad_response("an embedding is not an array of numbers"))
            })
            .collect::<Result<_, _>>()?;
        // Gemini names neither the model nor the tokens in its answer.
        Ok(EmbeddingsResponse {
            model: String::new(),
            data,
            usage: None,
        })
    }

    fn error(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
        let root: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        // The streaming endpoints answer errors as a one-element array.
        let root = match &root {
            Value::Array(items) => items.first().cloned().unwrap_or(Value::Null),
            _ => root,
        };
        let (message, kind, hint) = error_fields(&root);
        let mut error = provider_error(status, headers, kind, message, body);
        if error.retry_after.is_none() {
            error.retry_after = hint;
        }
        error
    }
}

/// `{"error":{"code","message","status","details"}}`: the message, the kind
/// its status names, and a `RetryInfo` delay.
fn error_fields(
    root: &Value,
) -> (
    Option<String>,
    Option<ErrorKind>,
    Option<std::time::Duration>,
) {
    let error = &root["error"];
    let details = error["details"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let invalid_key = details
        .iter()
        .any(|detail| detail["reason"] == "API_KEY_INVALID");
    let kind = if invalid_key {
        Some(ErrorKind::Authentication)
    } else {
        match error["status"].as_str() {
            Some("INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE") => {
                Some(ErrorKind::InvalidRequest)
            }
            Some("UNAUTHENTICATED") => Some(ErrorKind::Authentication),
            Some("PERMISSION_DENIED") => Some(ErrorKind::Permission),
            Some("NOT_FOUND") => Some(ErrorKind::NotFound),
            Some("RESOURCE_EXHAUSTED") => Some(ErrorKind::RateLimited),
            Some("UNAVAILABLE") => Some(ErrorKind::Overloaded),
            Some("INTERNAL" | "DEADLINE_EXCEEDED" | "UNKNOWN") => Some(ErrorKind::Server),
            _ => None,
        }
    };
    let hint = details
        .iter()
        .filter(|detail| {
            detail["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
        })
        .find_map(|detail| parse_duration(detail["retryDelay"].as_str()?));
    (error["message"].as_str().map(str::to_owned), kind, hint)
}

/// A protobuf duration as JSON writes it: `"37s"`, `"1.5s"`.
fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let seconds: f64 = text.strip_suffix('s')?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| std::time::Duration::from_secs_f64(seconds))
}

/// An error object inside a 200 answer or stream.
fn stream_error(root: &Value) -> ProviderError {
    let (message, kind, hint) = error_fields(root);
    let kind = kind
        .or_else(|| {
            root["error"]["code"]
                .as_u64()
                .and_then(|code| u16::try_from(code).ok())
                .map(super::kind_for_status)
        })
        .unwrap_or(ErrorKind::Server);
    ProviderError {
        status: status_for_kind(kind),
        kind,
        message: message.unwrap_or_else(|| "the provider failed mid-stream".to_owned()),
        retry_after: hint,
    }
}

// ---------------------------------------------------------------------------
// Requests

fn generate_body(request: &ChatRequest) -> Result<Map<String, Value>, FormatError> {
    let mut system = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    // Each call's name by id, as the conversation has named them so far.
    let mut call_names: Vec<(&str, &str)> = Vec::new();
    for (i, message) in request.messages.iter().enumerate() {
        let (role, parts) = match message.role {
            Role::System => {
                let text = message.joined_text();
                if !text.is_empty() {
                    system.push(json!({ "text": text }));
                }
                continue;
            }
            Role::User => ("user", content_parts(&message.content)),
            Role::Assistant => {
                let mut parts = content_parts(&message.content);
                for (j, call) in message.tool_calls.iter().enumerate() {
                    call_names.push((&call.id, &call.name));
                    let args = if call.arguments.trim().is_empty() {
                        Value::Object(Map::new())
                    } else {
                        serde_json::from_str::<Value>(&call.arguments)
                            .ok()
                            .filter(Value::is_object)
                            .ok_or_else(|| {
                                FormatError::new(format!(
                                    "messages[{i}].tool_calls[{j}].arguments: expected the JSON text of an object"
                                ))
                            })?
                    };
                    parts.push(json!({"functionCall": {"name": call.name, "args": args}}));
                }
                ("model", parts)
            }
            Role::Tool => {
                let id = message.tool_call_id.as_deref().unwrap_or_default();
                let name = call_names
                    .iter()
                    .rev()
                    .find(|(call_id, _)| *call_id == id)
                    .map(|(_, name)| *name)
                    .or(message.name.as_deref())
                    .ok_or_else(|| {
                        FormatError::new(format!(
                            "messages[{i}].tool_call_id: no earlier tool call has the id \"{id}\""
                        ))
                    })?;
                let response = function_response(&message.joined_text());
                (
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                )
            }
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some((last_role, last_parts)) if *last_role == role => last_parts.extend(parts),
            _ => contents.push((role, parts)),
        }
    }
    let mut body = Map::new();
    body.insert(
        "contents".into(),
        contents
            .into_iter()
            .map(|(role, parts)| json!({"role": role, "parts": parts}))
            .collect(),
    );
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    let mut config = Map::new();
    if let Some(max) = request.max_tokens {
        config.insert("maxOutputTokens".into(), max.into());
    }
    if let Some(temperature) = request.temperature {
        config.insert("temperature".into(), temperature.into());
    }
    if let Some(top_p) = request.top_p {
        config.insert("topP".into(), top_p.into());
    }
    if !request.stop.is_empty() {
        config.insert("stopSequences".into(), request.stop.clone().into());
    }
    if let Some(seed) = request.seed {
        config.insert("seed".into(), seed.into());
    }
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                let mut declaration = Map::new();
                declaration.insert("name".into(), tool.name.clone().into());
                if let Some(description) = &tool.description {
                    declaration.insert("description".into(), description.clone().into());
                }
                declaration.insert("parametersJsonSchema".into(), tool.parameters.clone());
                Value::Object(declaration)
            })
            .collect();
        body.insert(
            "tools".into(),
            json!([{ "functionDeclarations": declarations }]),
        );
    }
    if let Some(choice) = &request.tool_choice {
        let config = match choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
        };
        body.insert(
            "toolConfig".into(),
            json!({ "functionCallingConfig": config }),
        );
    }
    Ok(body)
}

fn content_parts(parts: &[Part]) -> Vec<Value> {
    parts
        .iter()
        .filter_map(|part| match part {
            Part::Text(text) if text.is_empty() => None,
            Part::Text(text) => Some(json!({ "text": text })),
            Part::Image(image) => Some(image_part(image)),
        })
        .collect()
}

fn image_part(image: &Image) -> Value {
    match image.as_data() {
        Some((media_type, data)) => json!({"inlineData": {"mimeType": media_type, "data": data}}),
        None => json!({"fileData": {"mimeType": media_type_of(&image.url), "fileUri": image.url}}),
    }
}

/// The image type a URL's extension names (JPEG when it names none).
fn media_type_of(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("heic") => "image/heic",
        Some("heif") => "image/heif",
        _ => "image/jpeg",
    }
}

/// A tool's answer as the object Gemini wants: a JSON object as it is,
/// anything else under `output`.
fn function_response(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(object @ Value::Object(_)) => object,
        Ok(other) => json!({ "output": other }),
        Err(_) => json!({ "output": text }),
    }
}

// ---------------------------------------------------------------------------
// Answers

/// What one candidate says.
#[derive(Default)]
struct CandidateRead {
    text: String,
    tool_calls: Vec<ToolCall>,
    finish: Option<FinishReason>,
}

/// The first candidate of an answer (or stream chunk); `calls` counts the
/// tool calls seen so far, for their made-up ids.
fn read_candidate(root: &Value, calls: &mut usize) -> CandidateRead {
    let mut read = CandidateRead::default();
    let Some(candidate) = root["candidates"].get(0) else {
        if root["promptFeedback"]["blockReason"].is_string() {
            read.finish = Some(FinishReason::ContentFilter);
        }
        return read;
    };
    let prefix = call_id_prefix(root["responseId"].as_str());
    if let Some(parts) = candidate["content"]["parts"].as_array() {
        for part in parts {
            if part["thought"] == true {
                continue;
            }
            if let Some(text) = part["text"].as_str() {
                read.text.push_str(text);
            }
            let call = &part["functionCall"];
            if call.is_object() {
                let id = call["id"]
                    .as_str()
                    .filter(|id| !id.is_empty())
                    .map_or_else(|| format!("{prefix}{calls}"), str::to_owned);
                *calls += 1;
                read.tool_calls.push(ToolCall {
                    id,
                    name: call["name"].as_str().unwrap_or_default().to_owned(),
                    arguments: match &call["args"] {
                        Value::Null => "{}".to_owned(),
                        args => args.to_string(),
                    },
                });
            }
        }
    }
    if let Some(reason) = candidate["finishReason"].as_str() {
        read.finish = Some(finish_reason(reason, !read.tool_calls.is_empty()));
    }
    read
}

/// `call_<response id>_` when the answer has an id made of safe characters,
/// else `call_`.
fn call_id_prefix(response_id: Option<&str>) -> String {
    match response_id {
        Some(id)
            if !id.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            format!("call_{id}_")
        }
        _ => "call_".to_owned(),
    }
}

fn finish_reason(reason: &str, called: bool) -> FinishReason {
    match reason {
        "STOP" if called => FinishReason::ToolCalls,
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        other => FinishReason::Other(other.to_owned()),
    }
}

/// `usageMetadata`: `candidatesTokenCount` leaves out thinking, which
/// canonical output counts.
fn parse_usage(metadata: &Value) -> Option<Usage> {
    let metadata = metadata.as_object()?;
    let count = |name: &str| metadata.get(name).and_then(Value::as_u64).unwrap_or(0);
    let reasoning = count("thoughtsTokenCount");
    Some(Usage {
        input: count("promptTokenCount"),
        output: count("candidatesTokenCount") + reasoning,
        cached_input: count("cachedContentTokenCount"),
        reasoning,
    })
}

/// Reads `streamGenerateContent?alt=sse`: every event is a whole
/// `GenerateContentResponse`.
#[derive(Debug, Default)]
pub struct GeminiStreamDecoder {
    sse: SseParser,
    started: bool,
    calls: usize,
    finished: bool,
    usage: Option<Usage>,
}

impl GeminiStreamDecoder {
    pub fn new() -> GeminiStreamDecoder {
        GeminiStreamDecoder::default()
    }

    fn data(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| bad_response(format!("a stream chunk is not valid JSON: {e}")))?;
        if chunk["error"].is_object() {
            return Err(stream_error(&chunk));
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: chunk["responseId"].as_str().unwrap_or_default().to_owned(),
                model: chunk["modelVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
        let first_call = self.calls;
        let read = read_candidate(&chunk, &mut self.calls);
        if !read.text.is_empty() {
            out.push(StreamEvent::Text(read.text));
        }
        for (offset, call) in read.tool_calls.into_iter().enumerate() {
            let index = first_call + offset;
            out.push(StreamEvent::ToolCallStart {
                index,
                id: call.id,
                name: call.name,
            });
            out.push(StreamEvent::ToolCallArgs {
                index,
                fragment: call.arguments,
            });
        }
        if let Some(usage) = parse_usage(&chunk["usageMetadata"]) {
            self.usage = Some(usage);
        }
        if let Some(finish) = read.finish {
            if !self.finished {
                self.finished = true;
                // A STOP after calls made in earlier chunks is still a tool call turn.
                let finish = match finish {
                    FinishReason::Stop if self.calls > 0 => FinishReason::ToolCalls,
                    other => other,
                };
                out.push(StreamEvent::Finish(finish));
            }
        }
        Ok(())
    }
}

impl StreamDecoder for GeminiStreamDecoder {
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
        if let Some(usage) = self.usage.take() {
            out.push(StreamEvent::Usage(usage));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::formats::anthropic::{parse_messages, tests::CLIENT_MESSAGES};
    use crate::formats::openai::parse_chat;
    use crate::formats::openai::tests::CLIENT_CHAT;
    use crate::providers::testing::decode_every_split;
    use crate::providers::{adapter, ProviderKind};

    fn gemini() -> Box<dyn Provider> {
        adapter(
            ProviderKind::Gemini,
            "https://generativelanguage.googleapis.com/v1beta",
        )
    }

    fn body_of(request: &UpstreamRequest) -> Value {
        serde_json::from_slice(&request.body).unwrap()
    }

    #[test]
    fn an_openai_client_request_becomes_a_gemini_request() {
        let request = parse_chat(CLIENT_CHAT.as_bytes()).unwrap();
        let upstream = gemini()
            .chat_request(&request, "models/gemini-2.5-flash", Some("AIza-secret"))
            .unwrap();
        assert_eq!(
            upstream.url,
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        let key = upstream
            .headers
            .iter()
            .find(|(n, _)| n == "x-goog-api-key")
            .unwrap();
        assert_eq!(key.1.to_str().unwrap(), "AIza-secret");
        assert!(!format!("{upstream:?}").contains("AIza-secret"));
        assert_eq!(
            body_of(&upstream),
            json!({
                "contents": [
                    {"role": "user", "parts": [
                        {"text": "What's the weather like in Paris? Here is a photo."},
                        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/paris.jpg"}}
                    ]},
                    {"role": "model", "parts": [
                        {"functionCall": {"name": "get_weather", "args": {"location": "Paris, France"}}}
                    ]},
                    {"role": "user", "parts": [
                        {"functionResponse": {"name": "get_weather",
                                              "response": {"temperature": 18, "unit": "celsius"}}},
                        {"text": "Thanks! And in Lyon?"}
                    ]}
                ],
                "systemInstruction": {"parts": [{"text": "You are a helpful assistant."}]},
                "generationConfig": {
                    "maxOutputTokens": 256,
                    "temperature": 0.2,
                    "topP": 0.9,
                    "stopSequences": ["\n\nUser:"],
                    "seed": 42
                },
                "tools": [{"functionDeclarations": [{
                    "name": "get_weather",
                    "description": "Current weather for a city",
                    "parametersJsonSchema": {"type": "object", "properties": {"location": {"type": "string"}},
                                             "required": ["location"], "additionalProperties": false}
                }]}],
                "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}}
            })
        );
        let mut whole = request;
        whole.stream = false;
        let upstream = gemini()
            .chat_request(&whole, "gemini-2.5-flash", None)
            .unwrap();
        assert_eq!(
            upstream.url,
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
        );
        assert!(!upstream.headers.iter().any(|(n, _)| n == "x-goog-api-key"));
    }

    #[test]
    fn an_anthropic_client_request_becomes_a_gemini_body() {
        let request = parse_messages(CLIENT_MESSAGES.as_bytes()).unwrap();
        let body = body_of(
            &gemini()
                .chat_request(&request, "gemini-2.5-pro", None)
                .unwrap(),
        );
        assert_eq!(
            body["contents"],
            json!([
                {"role": "user", "parts": [
                    {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}},
                    {"text": "What's the weather in the city on this photo?"}
                ]},
                {"role": "model", "parts": [
                    {"text": "Let me check."},
                    {"functionCall": {"name": "get_weather", "args": {"location": "Paris, France"}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"output": "18°C, sunny"}}},
                    {"text": "Is that warm?"}
                ]}
            ])
        );
        assert_eq!(
            body["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY"}})
        );
        // Anthropic-only fields (thinking, top_k) are not sent to Gemini.
        assert!(body.get("thinking").is_none());
        assert!(body.get("top_k").is_none());
    }

    #[test]
    fn tool_results_need_an_earlier_call() {
        let mut request = parse_chat(CLIENT_CHAT.as_bytes()).unwrap();
        request.messages[3].tool_call_id = Some("call_unknown".into());
        assert_eq!(
            gemini()
                .chat_request(&request, "gemini-2.5-flash", None)
                .unwrap_err()
                .0,
            "messages[3].tool_call_id: no earlier tool call has the id \"call_unknown\""
        );
        request.tool_choice = Some(ToolChoice::Tool("get_weather".into()));
        request.messages[3].tool_call_id = Some("call_abc123".into());
        let body = body_of(
            &gemini()
                .chat_request(&request, "gemini-2.5-flash", None)
                .unwrap(),
        );
        assert_eq!(
            body["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
        );
    }

    #[test]
    fn reads_an_answer_with_calls_thoughts_and_cache() {
        let body = br#"{
          "candidates": [{
            "content": {"parts": [
                {"text": "Thinking about Paris...", "thought": true},
                {"text": "Let me look that up."},
                {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}},
                {"functionCall": {"name": "get_time", "args": {}}}
              ], "role": "model"},
            "finishReason": "STOP",
            "index": 0
          }],
          "usageMetadata": {"promptTokenCount": 120, "candidatesTokenCount": 30, "totalTokenCount": 250,
                            "cachedContentTokenCount": 100, "thoughtsTokenCount": 100,
                            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 120}]},
          "modelVersion": "gemini-2.5-flash",
          "responseId": "mMWRaM_hLLWaxN8Pi6_qiQM"
        }"#;
        let response = gemini().chat_response(body).unwrap();
        assert_eq!(response.id, "mMWRaM_hLLWaxN8Pi6_qiQM");
        assert_eq!(response.model, "gemini-2.5-flash");
        assert_eq!(response.finish, FinishReason::ToolCalls);
        assert_eq!(
            response.message,
            Message {
                role: Role::Assistant,
                content: vec![Part::Text("Let me look that up.".into())],
                tool_calls: vec![
                    ToolCall {
                        id: "call_mMWRaM_hLLWaxN8Pi6_qiQM_0".into(),
                        name: "get_weather".into(),
                        arguments: r#"{"location":"Paris"}"#.into(),
                    },
                    ToolCall {
                        id: "call_mMWRaM_hLLWaxN8Pi6_qiQM_1".into(),
                        name: "get_time".into(),
                        arguments: "{}".into(),
                    },
                ],
                tool_call_id: None,
                name: None,
            }
        );
        assert_eq!(
            response.usage,
            Some(Usage {
                input: 120,
                output: 130,
                cached_input: 100,
                reasoning: 100
            })
        );
        for (reason, finish) in [
            ("MAX_TOKENS", FinishReason::Length),
            ("SAFETY", FinishReason::ContentFilter),
            ("RECITATION", FinishReason::ContentFilter),
            (
                "MALFORMED_FUNCTION_CALL",
                FinishReason::Other("MALFORMED_FUNCTION_CALL".into()),
            ),
        ] {
            let body = format!(
                r#"{{"candidates":[{{"content":{{"parts":[{{"text":"x"}}],"role":"model"}},"finishReason":"{reason}"}}]}}"#
            );
            let response = gemini().chat_response(body.as_bytes()).unwrap();
            assert_eq!(response.finish, finish);
            assert_eq!(response.message.tool_calls, vec![]);
        }
        let blocked = br#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":8,"totalTokenCount":8}}"#;
        let response = gemini().chat_response(blocked).unwrap();
        assert_eq!(response.finish, FinishReason::ContentFilter);
        assert!(response.message.content.is_empty());
    }

    /// As Gemini writes it: `\r\n` line ends.
    const STREAM: &str = concat!(
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"The weather\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"totalTokenCount\": 9,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 9}]},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"mMWRaM_hLLWaxN8Pi6_qiQM\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" in Paris is mild. \"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"totalTokenCount\": 20},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"mMWRaM_hLLWaxN8Pi6_qiQM\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"functionCall\": {\"name\": \"get_weather\",\"args\": {\"location\": \"Paris\"}}}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"totalTokenCount\": 40},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"mMWRaM_hLLWaxN8Pi6_qiQM\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 20,\"totalTokenCount\": 79,\"cachedContentTokenCount\": 4,\"thoughtsTokenCount\": 50},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"mMWRaM_hLLWaxN8Pi6_qiQM\"}\r\n\r\n",
    );

    #[test]
    fn decodes_a_stream() {
        let events = decode_every_split(|| gemini().stream_decoder(), STREAM.as_bytes()).unwrap();
        assert_eq!(
            events,
            vec![
                StreamEvent::Start {
                    id: "mMWRaM_hLLWaxN8Pi6_qiQM".into(),
                    model: "gemini-2.5-flash".into()
                },
                StreamEvent::Text("The weather".into()),
                StreamEvent::Text(" in Paris is mild. ".into()),
                StreamEvent::ToolCallStart {
                    index: 0,
                    id: "call_mMWRaM_hLLWaxN8Pi6_qiQM_0".into(),
                    name: "get_weather".into()
                },
                StreamEvent::ToolCallArgs {
                    index: 0,
                    fragment: "{\"location\":\"Paris\"}".into()
                },
                // A STOP after a call made in an earlier chunk.
                StreamEvent::Finish(FinishReason::ToolCalls),
                StreamEvent::Usage(Usage {
                    input: 9,
                    output: 70,
                    cached_input: 4,
                    reasoning: 50
                }),
            ]
        );
    }

    #[test]
    fn an_error_chunk_is_an_error() {
        let sample = "data: {\"error\": {\"code\": 503, \"message\": \"The model is overloaded. Please try again later.\", \"status\": \"UNAVAILABLE\"}}\r\n\r\n";
        let error =
            decode_every_split(|| gemini().stream_decoder(), sample.as_bytes()).unwrap_err();
        assert_eq!(error.kind, ErrorKind::Overloaded);
        assert_eq!(
            error.message,
            "The model is overloaded. Please try again later."
        );
    }

    #[test]
    fn errors_map_status_reason_and_retry_info() {
        let error = gemini().error(
            429,
            &HeaderMap::new(),
            br#"{"error": {"code": 429, "message": "You exceeded your current quota, please check your plan and billing details.", "status": "RESOURCE_EXHAUSTED",
                 "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests"}]},
                             {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]}}"#,
        );
        assert_eq!(error.kind, ErrorKind::RateLimited);
        assert_eq!(error.retry_after, Some(std::time::Duration::from_secs(37)));
        assert!(error.message.starts_with("You exceeded your current quota"));
        // A Retry-After header wins over the body's hint.
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("3"));
        let error = gemini().error(
            429,
            &headers,
            br#"{"error": {"code": 429, "message": "q", "status": "RESOURCE_EXHAUSTED", "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]}}"#,
        );
        assert_eq!(error.retry_after, Some(std::time::Duration::from_secs(3)));

        let error = gemini().error(
            400,
            &HeaderMap::new(),
            br#"[{"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
                  "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}}]"#,
        );
        assert_eq!(error.kind, ErrorKind::Authentication);
        assert_eq!(
            error.message,
            "API key not valid. Please pass a valid API key."
        );
        let error = gemini().error(
            400,
            &HeaderMap::new(),
            br#"{"error": {"code": 400, "message": "Invalid JSON payload received.", "status": "INVALID_ARGUMENT"}}"#,
        );
        assert_eq!(error.kind, ErrorKind::InvalidRequest);
        let error = gemini().error(
            404,
            &HeaderMap::new(),
            br#"{"error": {"code": 404, "message": "models/gemini-9 is not found", "status": "NOT_FOUND"}}"#,
        );
        assert_eq!(error.kind, ErrorKind::NotFound);
    }

    #[test]
    fn embeddings_go_in_one_batch() {
        let request = EmbeddingsRequest {
            model: "alias".into(),
            input: vec!["hello".into(), "world".into()],
            dimensions: Some(768),
            user: Some("u".into()),
        };
        let upstream = gemini()
            .embeddings_request(&request, "gemini-embedding-001", Some("k"))
            .unwrap();
        assert_eq!(
            upstream.url,
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-embedding-001:batchEmbedContents"
        );
        assert_eq!(
            body_of(&upstream),
            json!({"requests": [
                {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 768},
                {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "world"}]}, "outputDimensionality": 768}
            ]})
        );
        let answer = br#"{"embeddings": [{"values": [0.5, -0.25]}, {"values": [1, 0]}]}"#;
        assert_eq!(
            gemini().embeddings_response(answer).unwrap(),
            EmbeddingsResponse {
                model: String::new(),
                data: vec![vec![0.5, -0.25], vec![1.0, 0.0]],
                usage: None,
            }
        );
        assert_eq!(
            gemini().embeddings_response(b"{}").unwrap_err().kind,
            ErrorKind::BadResponse
        );
    }
}
