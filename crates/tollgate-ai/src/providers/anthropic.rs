//! Anthropic's messages API. The body is written by
//! [`crate::formats::anthropic::messages_body`]; this module adds the URL and
//! headers and reads answers, streams and errors. Anthropic has no
//! embeddings.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::Value;

use super::{
    bad_response, json_body, json_content_type, parse_json, provider_error, secret_header,
    status_for_kind, unix_now, Provider, StreamDecoder, UpstreamRequest,
};
use crate::canonical::{
    ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse, ErrorKind, FinishReason,
    Format, FormatError, Message, ProviderError, StreamEvent, ToolCall, Usage,
};
use crate::formats::anthropic::messages_body;
use crate::sse::SseParser;

/// The API version every request names.
pub const API_VERSION: &str = "2023-06-01";

/// The adapter for Anthropic.
#[derive(Debug)]
pub struct Anthropic {
    base_url: String,
}

impl Anthropic {
    pub fn new(base_url: &str) -> Anthropic {
        Anthropic {
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }
}

impl Provider for Anthropic {
    fn chat_request(
        &self,
        request: &ChatRequest,
        model: &str,
        key: Option<&str>,
    ) -> Result<UpstreamRequest, FormatError> {
        let mut body = messages_body(request)?;
        body.insert("model".into(), model.into());
        let mut headers = vec![
            json_content_type(),
            (
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static(API_VERSION),
            ),
        ];
        if let Some(key) = key {
            headers.push(secret_header("x-api-key", key)?);
        }
        Ok(UpstreamRequest {
            method: Method::POST,
            url: [self.base_url.as_str(), "/messages"].concat(),
            headers,
            body: json_body(body),
        })
    }

    fn chat_response(&self, body: &[u8]) -> Result<ChatResponse, ProviderError> {
        parse_message(body)
    }

    fn native_format(&self) -> Option<Format> {
        Some(Format::Anthropic)
    }

    fn native_usage(&self, body: &[u8]) -> Option<Usage> {
        message_usage(body)
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(AnthropicStreamDecoder::new())
    }

    fn embeddings_request(
        &self,
        _request: &EmbeddingsRequest,
        _model: &str,
        _key: Option<&str>,
    ) -> Result<UpstreamRequest, FormatError> {
        Err(FormatError::new(
            "provider kind anthropic has no embeddings",
        ))
    }

    fn embeddings_response(&self, _body: &[u8]) -> Result<EmbeddingsResponse, ProviderError> {
        Err(bad_response("provider kind anthropic has no embeddings"))
    }

    fn error(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
        let root: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let (message, kind) = error_fields(&root);
        provider_error(status, headers, kind, message, body)
    }
}

/// `{"type":"error","error":{"type","message"}}`: the message and the kind
/// its type names.
fn error_fields(root: &Value) -> (Option<String>, Option<ErrorKind>) {
    let error = &root["error"];
    let kind = match error["type"].as_str() {
        Some("invalid_request_error") => Some(ErrorKind::InvalidRequest),
        Some("authentication_error") => Some(ErrorKind::Authentication),
        Some("permission_error" | "billing_error") => Some(ErrorKind::Permission),
        Some("not_found_error") => Some(ErrorKind::NotFound),
        Some("request_too_large") => Some(ErrorKind::TooLarge),
        Some("rate_limit_error") => Some(ErrorKind::RateLimited),
        Some("api_error" | "timeout_error") => Some(ErrorKind::Server),
        Some("overloaded_error") => Some(ErrorKind::Overloaded),
        _ => None,
    };
    (error["message"].as_str().map(str::to_owned), kind)
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_owned()),
    }
}

/// Anthropic's usage counts input without the cache; canonical input is
/// everything the prompt held.
#[derive(Clone, Copy, Debug, Default)]
struct UsageParts {
    input: u64,
    cache_read: u64,
    cache_creation: u64,
    output: u64,
}

impl UsageParts {
    /// Overwrites the counts `usage` names.
    fn update(&mut self, usage: &Value) {
        let set = |field: &mut u64, name: &str| {
            if let Some(count) = usage[name].as_u64() {
                *field = count;
            }
        };
        set(&mut self.input, "input_tokens");
        set(&mut self.cache_read, "cache_read_input_tokens");
        set(&mut self.cache_creation, "cache_creation_input_tokens");
        set(&mut self.output, "output_tokens");
    }

    fn canonical(&self) -> Usage {
        Usage {
            input: self.input + self.cache_read + self.cache_creation,
            output: self.output,
            cached_input: self.cache_read,
            reasoning: 0,
        }
    }
}

fn parse_message(body: &[u8]) -> Result<ChatResponse, ProviderError> {
    let root = parse_json(body, "the message")?;
    let blocks = root["content"]
        .as_array()
        .ok_or_else(|| bad_response("the message has no content"))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or_default()),
            Some("tool_use") => tool_calls.push(ToolCall {
                id: block["id"].as_str().unwrap_or_default().to_owned(),
                name: block["name"].as_str().unwrap_or_default().to_owned(),
                arguments: match &block["input"] {
                    Value::Null => "{}".to_owned(),
                    input => input.to_string(),
                },
            }),
            // Thinking and server tool blocks have no canonical form.
            _ => {}
        }
    }
    let mut usage = UsageParts::default();
    let has_usage = root["usage"].is_object();
    usage.update(&root["usage"]);
    Ok(ChatResponse {
        id: root["id"].as_str().unwrap_or_default().to_owned(),
        model: root["model"].as_str().unwrap_or_default().to_owned(),
        created: unix_now(),
        message: Message::assistant(text, tool_calls),
        finish: finish_reason(root["stop_reason"].as_str().unwrap_or("end_turn")),
        usage: has_usage.then(|| usage.canonical()),
    })
}

/// A whole message read for its usage alone, every other field skipped:
/// what the gateway needs of a message it passes on as it came.
#[derive(serde::Deserialize)]
struct UsageOnly {
    /// Checked to be a list, the least [`parse_message`] takes.
    #[serde(default)]
    content: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(serde::Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

/// The usage a whole message reports, counted as [`parse_message`] counts
/// it; `None` when it reports none or is not one that reading takes (the
/// caller then reads it whole, and estimates or refuses as usual).
fn message_usage(body: &[u8]) -> Option<Usage> {
    let read: UsageOnly = crate::from_json_bytes(body)?;
    read.content?;
    let usage = read.usage?;
    let parts = UsageParts {
        input: usage.input_tokens.unwrap_or(0),
        cache_read: usage.cache_read_input_tokens.unwrap_or(0),
        cache_creation: usage.cache_creation_input_tokens.unwrap_or(0),
        output: usage.output_tokens.unwrap_or(0),
    };
    Some(parts.canonical())
}

/// Reads Anthropic's message stream events.
#[derive(Debug, Default)]
pub struct AnthropicStreamDecoder {
    sse: SseParser,
    usage: UsageParts,
    has_usage: bool,
    usage_sent: bool,
    /// `(content block index, tool call index)` of the tool_use blocks.
    tools: Vec<(u64, usize)>,
    finished: bool,
}

impl AnthropicStreamDecoder {
    pub fn new() -> AnthropicStreamDecoder {
        AnthropicStreamDecoder::default()
    }

    fn data(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        let event: Value = serde_json::from_str(data)
            .map_err(|e| bad_response(format!("a stream event is not valid JSON: {e}")))?;
        match event["type"].as_str().unwrap_or_default() {
            "message_start" => {
                let message = &event["message"];
                out.push(StreamEvent::Start {
                    id: message["id"].as_str().unwrap_or_default().to_owned(),
                    model: message["model"].as_str().unwrap_or_default().to_owned(),
                });
                if message["usage"].is_object() {
                    self.has_usage = true;
                    self.usage.update(&message["usage"]);
                }
            }
            "content_block_start" => {
                let block = &event["content_block"];
                match block["type"].as_str() {
                    Some("tool_use") => {
                        let index = self.tools.len();
                        self.tools
                            .push((event["index"].as_u64().unwrap_or(0), index));
                        out.push(StreamEvent::ToolCallStart {
                            index,
                            id: block["id"].as_str().unwrap_or_default().to_owned(),
                            name: block["name"].as_str().unwrap_or_default().to_owned(),
                        });
                    }
                    Some("text") => {
                        if let Some(text) = block["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push(StreamEvent::Text(text.to_owned()));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = &event["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        if let Some(text) = delta["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push(StreamEvent::Text(text.to_owned()));
                        }
                    }
                    Some("input_json_delta") => {
                        let block = event["index"].as_u64().unwrap_or(0);
                        let tool = self.tools.iter().find(|(b, _)| *b == block);
                        let fragment = delta["partial_json"].as_str().unwrap_or_default();
                        if let (Some((_, index)), false) = (tool, fragment.is_empty()) {
                            out.push(StreamEvent::ToolCallArgs {
                                index: *index,
                                fragment: fragment.to_owned(),
                            });
                        }
                    }
                    // Thinking, signatures and citations have no canonical form.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(reason) = event["delta"]["stop_reason"].as_str() {
                    self.finished = true;
                    out.push(StreamEvent::Finish(finish_reason(reason)));
                }
                if event["usage"].is_object() {
                    self.has_usage = true;
                    self.usage.update(&event["usage"]);
                }
            }
            "message_stop" => self.flush_usage(out),
            "error" => {
                let (message, kind) = error_fields(&event);
                let kind = kind.unwrap_or(ErrorKind::Server);
                return Err(ProviderError {
                    status: status_for_kind(kind),
                    kind,
                    message: message.unwrap_or_else(|| "the provider failed mid-stream".to_owned()),
                    retry_after: None,
                });
            }
            // ping, content_block_stop and events to come.
            _ => {}
        }
        Ok(())
    }

    fn flush_usage(&mut self, out: &mut Vec<StreamEvent>) {
        if self.has_usage && !self.usage_sent {
            self.usage_sent = true;
            out.push(StreamEvent::Usage(self.usage.canonical()));
        }
    }
}

impl StreamDecoder for AnthropicStreamDecoder {
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
        // A stream cut after its finish still reports what it used.
        if self.finished {
            self.flush_usage(&mut out);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use serde_json::json;

    use super::*;
    use crate::canonical::{Part, Role};
    use crate::formats::openai::parse_chat;
    use crate::formats::openai::tests::CLIENT_CHAT;
    use crate::providers::testing::decode_every_split;
    use crate::providers::{adapter, ProviderKind};

    /// The usage-only reading of a message passed on as it came counts what
    /// the whole reading counts, and leaves to it every message it would
    /// refuse or estimate.
    #[test]
    fn the_usage_only_reading_agrees_with_the_whole_one() {
        let read = [
            r#"{"id":"m1","type":"message","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":9,"output_tokens":3}}"#,
            r#"{"content":[],"usage":{"input_tokens":9,"cache_read_input_tokens":4,"cache_creation_input_tokens":2,"output_tokens":3,"service_tier":"standard","server_tool_use":{"web_search_requests":1}}}"#,
            r#"{"content":[{"type":"thinking","thinking":"..."},"odd"],"usage":{"input_tokens":1,"cache_creation_input_tokens":null}}"#,
        ];
        for body in read {
            let usage = message_usage(body.as_bytes()).unwrap_or_else(|| panic!("read: {body}"));
            assert_eq!(
                Some(usage),
                parse_message(body.as_bytes()).unwrap().usage,
                "{body}"
            );
        }
        let left_to_the_whole_reading = [
            r#"{"content":[{"type":"text","text":"x"}]}"#,
            r#"{"content":[{"type":"text","text":"x"}],"usage":null}"#,
            r#"{"content":[],"usage":{"input_tokens":1.5}}"#,
            r#"{"usage":{"input_tokens":1}}"#,
            r#"{"content":"x","usage":{"input_tokens":1}}"#,
            "not json",
        ];
        for body in left_to_the_whole_reading {
            assert_eq!(message_usage(body.as_bytes()), None, "{body}");
        }
    }

    fn anthropic() -> Box<dyn Provider> {
        adapter(ProviderKind::Anthropic, "https://api.anthropic.com/v1")
    }

    #[test]
    fn an_openai_client_request_becomes_an_anthropic_request() {
        let request = parse_chat(CLIENT_CHAT.as_bytes()).unwrap();
        let upstream = anthropic()
            .chat_request(
                &request,
                "claude-sonnet-4-5-20250929",
                Some("sk-ant-secret"),
            )
            .unwrap();
        assert_eq!(upstream.url, "https://api.anthropic.com/v1/messages");
        let header = |name: &str| {
            upstream
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        assert_eq!(header("x-api-key").as_deref(), Some("sk-ant-secret"));
        assert_eq!(header("anthropic-version").as_deref(), Some("2023-06-01"));
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        assert!(!format!("{upstream:?}").contains("sk-ant-secret"));
        let body: Value = serde_json::from_slice(&upstream.body).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "claude-sonnet-4-5-20250929",
                "max_tokens": 256,
                "system": "You are a helpful assistant.",
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "What's the weather like in Paris? Here is a photo."},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/paris.jpg"}}
                    ]},
                    {"role": "assistant", "content": [
                        {"type": "tool_use", "id": "call_abc123", "name": "get_weather", "input": {"location": "Paris, France"}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_abc123", "content": "{\"temperature\":18,\"unit\":\"celsius\"}"},
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
                "tool_choice": {"type": "auto"},
                "metadata": {"user_id": "user-1234"}
            })
        );
        // OpenAI-only fields (response_format, n) are not sent to Anthropic.
        assert!(body.get("response_format").is_none());
        assert!(body.get("stream_options").is_none());
    }

    #[test]
    fn reads_a_message_and_normalises_cached_usage() {
        let body = br#"{
          "id": "msg_01Aq9w938a90dw8q",
          "type": "message",
          "role": "assistant",
          "model": "claude-sonnet-4-5-20250929",
          "content": [
            {"type": "thinking", "thinking": "The user wants weather.", "signature": "EqQB"},
            {"type": "text", "text": "I'll check the weather in Paris."},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
             "input": {"location": "Paris, France", "unit": "celsius"}}
          ],
          "stop_reason": "tool_use",
          "stop_sequence": null,
          "usage": {"input_tokens": 50, "cache_creation_input_tokens": 200,
                    "cache_read_input_tokens": 1800, "output_tokens": 120}
        }"#;
        let response = anthropic().chat_response(body).unwrap();
        assert_eq!(response.id, "msg_01Aq9w938a90dw8q");
        assert_eq!(response.model, "claude-sonnet-4-5-20250929");
        assert_eq!(
            response.message,
            Message {
                role: Role::Assistant,
                content: vec![Part::Text("I'll check the weather in Paris.".into())],
                tool_calls: vec![ToolCall {
                    id: "toolu_01A09q90qw90lq917835lq9".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"location":"Paris, France","unit":"celsius"}"#.into(),
                }],
                tool_call_id: None,
                name: None,
            }
        );
        assert_eq!(response.finish, FinishReason::ToolCalls);
        assert_eq!(
            response.usage,
            Some(Usage {
                input: 2050,
                output: 120,
                cached_input: 1800,
                reasoning: 0
            })
        );
        for (reason, finish) in [
            ("end_turn", FinishReason::Stop),
            ("stop_sequence", FinishReason::Stop),
            ("max_tokens", FinishReason::Length),
            ("refusal", FinishReason::ContentFilter),
            ("pause_turn", FinishReason::Other("pause_turn".into())),
        ] {
            let body = format!(
                r#"{{"id":"m","model":"c","content":[{{"type":"text","text":"x"}}],"stop_reason":"{reason}","usage":{{"input_tokens":1,"output_tokens":1}}}}"#
            );
            assert_eq!(
                anthropic().chat_response(body.as_bytes()).unwrap().finish,
                finish
            );
        }
    }

    const TOOL_STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_014p7gG3wDgGV9EUtLvnow3U\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2000,\"output_tokens\":2},\"content\":[],\"stop_reason\":null}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Okay\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\", let's check the weather for San Francisco, CA:\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\":\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\" \\\"San Francisco, CA\\\"}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn decodes_a_stream_with_text_and_a_tool_call() {
        let events =
            decode_every_split(|| anthropic().stream_decoder(), TOOL_STREAM.as_bytes()).unwrap();
        assert_eq!(
            events,
            vec![
                StreamEvent::Start {
                    id: "msg_014p7gG3wDgGV9EUtLvnow3U".into(),
                    model: "claude-sonnet-4-5-20250929".into()
                },
                StreamEvent::Text("Okay".into()),
                StreamEvent::Text(", let's check the weather for San Francisco, CA:".into()),
                StreamEvent::ToolCallStart {
                    index: 0,
                    id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
                    name: "get_weather".into()
                },
                StreamEvent::ToolCallArgs {
                    index: 0,
                    fragment: "{\"location\":".into()
                },
                StreamEvent::ToolCallArgs {
                    index: 0,
                    fragment: " \"San Francisco, CA\"}".into()
                },
                StreamEvent::Finish(FinishReason::ToolCalls),
                StreamEvent::Usage(Usage {
                    input: 2572,
                    output: 89,
                    cached_input: 2000,
                    reasoning: 0
                }),
            ]
        );
    }

    #[test]
    fn tool_calls_count_from_zero_whatever_their_block_index() {
        // Thinking first: the tool_use block is block 1 but tool call 0.
        let sample = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQB\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_2\",\"name\":\"g\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":1}\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"input_tokens\":5,\"output_tokens\":30}}\n\n",
        );
        // No message_stop: the end of the body still reports the usage.
        let events =
            decode_every_split(|| anthropic().stream_decoder(), sample.as_bytes()).unwrap();
        assert_eq!(
            events[1..],
            [
                StreamEvent::ToolCallStart {
                    index: 0,
                    id: "toolu_1".into(),
                    name: "f".into()
                },
                StreamEvent::ToolCallArgs {
                    index: 0,
                    fragment: "{}".into()
                },
                StreamEvent::ToolCallStart {
                    index: 1,
                    id: "toolu_2".into(),
                    name: "g".into()
                },
                StreamEvent::ToolCallArgs {
                    index: 1,
                    fragment: "{\"a\":1}".into()
                },
                StreamEvent::Finish(FinishReason::ToolCalls),
                StreamEvent::Usage(Usage {
                    input: 5,
                    output: 30,
                    cached_input: 0,
                    reasoning: 0
                }),
            ]
        );
    }

    #[test]
    fn an_error_event_is_an_error() {
        let sample = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
            "event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n",
        );
        let error =
            decode_every_split(|| anthropic().stream_decoder(), sample.as_bytes()).unwrap_err();
        assert_eq!(error.kind, ErrorKind::Overloaded);
        assert_eq!(error.status, 529);
        assert_eq!(error.message, "Overloaded");
    }

    #[test]
    fn errors_map_type_status_and_retry_after() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("12"));
        let error = anthropic().error(
            429,
            &headers,
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#,
        );
        assert_eq!(error.kind, ErrorKind::RateLimited);
        assert_eq!(error.retry_after, Some(std::time::Duration::from_secs(12)));
        assert!(error.message.starts_with("Number of request tokens"));
        let error = anthropic().error(
            529,
            &HeaderMap::new(),
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!((error.status, error.kind), (529, ErrorKind::Overloaded));
        let error = anthropic().error(
            400,
            &HeaderMap::new(),
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#,
        );
        assert_eq!(error.kind, ErrorKind::InvalidRequest);
        assert_eq!(error.message, "max_tokens: Field required");
        let error = anthropic().error(500, &HeaderMap::new(), b"");
        assert_eq!(error.kind, ErrorKind::Server);
    }

    #[test]
    fn there_are_no_embeddings() {
        let request = EmbeddingsRequest {
            model: "m".into(),
            input: vec!["x".into()],
            dimensions: None,
            user: None,
        };
        assert_eq!(
            anthropic()
                .embeddings_request(&request, "m", Some("k"))
                .unwrap_err()
                .0,
            "provider kind anthropic has no embeddings"
        );
    }
}
