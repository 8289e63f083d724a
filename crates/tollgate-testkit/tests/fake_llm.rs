//! The fake LLM providers, driven with a plain HTTP client: each speaks its
//! provider's wire format.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tollgate_testkit::fake_llm::{FakeKind, FakeLlm, Reply, DEFAULT_DIMENSIONS};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// One server-sent event: its `event:` name (if any) and `data:`.
#[derive(Debug)]
struct Event {
    name: Option<String>,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// Splits an event stream on `separator` (`"\n\n"`, or `"\r\n\r\n"` for Gemini).
fn parse_events(text: &str, separator: &str) -> Vec<Event> {
    let line_end = &separator[..separator.len() / 2];
    assert!(
        text.ends_with(separator),
        "the stream ends with a whole event: {text:?}"
    );
    text.split(separator)
        .filter(|block| !block.is_empty())
        .map(|block| {
            let mut event = Event {
                name: None,
                data: String::new(),
            };
            for line in block.split(line_end) {
                if let Some(name) = line.strip_prefix("event: ") {
                    event.name = Some(name.to_owned());
                } else if let Some(data) = line.strip_prefix("data: ") {
                    event.data = data.to_owned();
                } else {
                    panic!("unexpected line {line:?} in {block:?}");
                }
            }
            event
        })
        .collect()
}

fn openai_chat(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]},
        ],
        "stream": stream,
    })
}

async fn post(url: String, key_header: (&str, &str), body: &Value) -> reqwest::Response {
    client()
        .post(url)
        .header(key_header.0, key_header.1)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn openai_answers_with_the_echo_by_default() {
    let fake = FakeLlm::start(FakeKind::OpenAi).await;
    assert!(fake.base_url().ends_with("/v1"));
    let res = post(
        format!("{}/chat/completions", fake.base_url()),
        ("authorization", "Bearer sk-one"),
        &openai_chat(false),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert!(res.headers().contains_key("x-request-id"));
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["object"], "chat.completion");
    assert_eq!(doc["model"], "gpt-4o-mini");
    assert!(doc["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(doc["created"].as_u64().unwrap() > 1_700_000_000);
    let choice = &doc["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "echo: hello there");
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(doc["usage"]["prompt_tokens"], 11);
    assert_eq!(doc["usage"]["completion_tokens"], 7);
    assert_eq!(doc["usage"]["total_tokens"], 18);
    assert_eq!(doc["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

    assert_eq!(fake.request_count(), 1);
    let recorded = fake.last_request().unwrap();
    assert_eq!(recorded.method, "POST");
    assert_eq!(recorded.path, "/v1/chat/completions");
    assert_eq!(recorded.key(), Some("sk-one"));
    assert_eq!(recorded.body["model"], "gpt-4o-mini");
    assert_eq!(recorded.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn openai_streams_chunks_and_usage_only_when_asked() {
    let fake = FakeLlm::start(FakeKind::OpenAi).await;
    let url = format!("{}/chat/completions", fake.base_url());
    fake.push(Reply::text("one two three").with_usage(Some((20, 3, 8))));
    let res = post(
        url.clone(),
        ("authorization", "Bearer k"),
        &openai_chat(true),
    )
    .await;
    assert_eq!(
        res.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let events = parse_events(&res.text().await.unwrap(), "\n\n");
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "one two three");
    let last = chunks.last().unwrap();
    assert_eq!(last["object"], "chat.completion.chunk");
    assert_eq!(last["model"], "gpt-4o-mini");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));

    fake.push(Reply::text("one two three").with_usage(Some((20, 3, 8))));
    let mut body = openai_chat(true);
    body["stream_options"] = json!({"include_usage": true});
    let text = post(url, ("authorization", "Bearer k"), &body)
        .await
        .text()
        .await
        .unwrap();
    let events = parse_events(&text, "\n\n");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 20);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 3);
    assert_eq!(
        usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"],
        8
    );
    assert!(rest
        .iter()
        .all(|c| c["usage"].is_null() && c.get("usage").is_some()));
    assert_eq!(rest.last().unwrap()["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn openai_tool_calls_whole_and_streamed() {
    let fake = FakeLlm::start(FakeKind::OpenAi).await;
    let url = format!("{}/chat/completions", fake.base_url());
    let args = r#"{"city":"Paris","unit":"c"}"#;
    fake.push(Reply::tool_call("get_weather", args));
    let doc: Value = post(
        url.clone(),
        ("authorization", "Bearer k"),
        &openai_chat(false),
    )
    .await
    .json()
    .await
    .unwrap();
    let message = &doc["choices"][0]["message"];
    assert_eq!(message["content"], Value::Null);
    assert_eq!(message["tool_calls"][0]["type"], "function");
    assert_eq!(message["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(message["tool_calls"][0]["function"]["arguments"], args);
    assert_eq!(doc["choices"][0]["finish_reason"], "tool_calls");

    fake.push(Reply::tool_call("get_weather", args));
    let text = post(url, ("authorization", "Bearer k"), &openai_chat(true))
        .await
        .text()
        .await
        .unwrap();
    let events = parse_events(&text, "\n\n");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let joined: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(joined, args);
    assert!(calls.len() >= 3, "arguments arrive in pieces");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[tokio::test]
async fn openai_embeddings_as_floats_and_base64() {
    let fake = FakeLlm::start(FakeKind::OpenAi).await;
    let url = format!("{}/embeddings", fake.base_url());
    let doc: Value = post(
        url.clone(),
        ("authorization", "Bearer k"),
        &json!({"model": "text-embedding-3-small", "input": ["a", "b"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(doc["object"], "list");
    assert_eq!(doc["model"], "text-embedding-3-small");
    assert_eq!(doc["data"][1]["index"], 1);
    assert_eq!(doc["data"][0]["object"], "embedding");
    let floats: Vec<f32> = serde_json::from_value(doc["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(floats.len(), DEFAULT_DIMENSIONS);
    assert_eq!(
        doc["usage"],
        json!({"prompt_tokens": 11, "total_tokens": 11})
    );

    let doc: Value = post(
        url,
        ("authorization", "Bearer k"),
        &json!({"model": "m", "input": "a", "dimensions": 4, "encoding_format": "base64"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(doc["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(decoded.len(), 4);
    assert_eq!(decoded, tollgate_testkit::fake_llm::fake_vector("a", 4));
}

#[tokio::test]
async fn openai_refuses_missing_and_rejected_keys_without_taking_a_reply() {
    let fake = FakeLlm::start(FakeKind::OpenAi).await;
    let url = format!("{}/chat/completions", fake.base_url());
    fake.reject_key("sk-revoked-0123456789");
    fake.push(Reply::text("queued"));

    let res = client()
        .post(&url)
        .json(&openai_chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["error"]["type"], "invalid_request_error");
    assert_eq!(doc["error"]["code"], Value::Null);

    let res = post(
        url.clone(),
        ("authorization", "Bearer sk-revoked-0123456789"),
        &openai_chat(false),
    )
    .await;
    assert_eq!(res.status(), 401);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["error"]["code"], "invalid_api_key");
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(!message.contains("sk-revoked-0123456789"), "{message}");
    assert!(message.contains("6789"), "{message}");

    let doc: Value = post(url, ("authorization", "Bearer good"), &openai_chat(false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(doc["choices"][0]["message"]["content"], "queued");
    let keys: Vec<Option<String>> = fake
        .requests()
        .iter()
        .map(|r| r.key().map(str::to_owned))
        .collect();
    assert_eq!(
        keys,
        vec![
            None,
            Some("sk-revoked-0123456789".into()),
            Some("good".into())
        ]
    );
}

#[tokio::test]
async fn errors_carry_retry_after_and_unknown_paths_are_404() {
    let fake = FakeLlm::start(FakeKind::OpenAi).await;
    fake.push(Reply::Error {
        status: 429,
        retry_after: Some(7),
    });
    fake.push(Reply::error(503));
    let url = format!("{}/chat/completions", fake.base_url());
    let res = post(
        url.clone(),
        ("authorization", "Bearer k"),
        &openai_chat(false),
    )
    .await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "7");
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["error"]["code"], "rate_limit_exceeded");
    let res = post(url, ("authorization", "Bearer k"), &openai_chat(false)).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().get("retry-after").is_none());
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["type"],
        "server_error"
    );

    let res = post(
        format!("{}/completions", fake.base_url()),
        ("authorization", "Bearer k"),
        &json!({}),
    )
    .await;
    assert_eq!(res.status(), 404);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(
        doc["error"]["message"],
        "Invalid URL (POST /v1/completions)"
    );
}

#[tokio::test]
async fn mistral_reports_usage_in_the_last_chunk_unasked() {
    let fake = FakeLlm::start(FakeKind::Mistral).await;
    let mut body = openai_chat(true);
    body["model"] = "mistral-small-latest".into();
    let text = post(
        format!("{}/chat/completions", fake.base_url()),
        ("authorization", "Bearer m"),
        &body,
    )
    .await
    .text()
    .await
    .unwrap();
    let events = parse_events(&text, "\n\n");
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": 11, "total_tokens": 18, "completion_tokens": 7})
    );
    assert_eq!(last["model"], "mistral-small-latest");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "echo: hello there");

    fake.reject_key("bad");
    let res = post(
        format!("{}/chat/completions", fake.base_url()),
        ("authorization", "Bearer bad"),
        &body,
    )
    .await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"detail": "Unauthorized"})
    );
}

#[tokio::test]
async fn azure_needs_a_deployment_path_an_api_version_and_api_key() {
    let fake = FakeLlm::start(FakeKind::AzureOpenAi).await;
    assert!(fake.base_url().ends_with("/openai"));
    let url = format!(
        "{}/deployments/prod-4o/chat/completions?api-version=2024-10-21",
        fake.base_url()
    );
    let mut body = openai_chat(false);
    body.as_object_mut().unwrap().remove("model");
    let res = post(url.clone(), ("api-key", "azure-key"), &body).await;
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["model"], "prod-4o");
    assert_eq!(doc["choices"][0]["message"]["content"], "echo: hello there");
    assert!(doc["prompt_filter_results"].is_array());
    assert_eq!(fake.last_request().unwrap().key(), Some("azure-key"));

    body["stream"] = true.into();
    let text = post(url.clone(), ("api-key", "azure-key"), &body)
        .await
        .text()
        .await
        .unwrap();
    let events = parse_events(&text, "\n\n");
    let first = events[0].json();
    assert_eq!(first["choices"], json!([]));
    assert!(first["prompt_filter_results"].is_array());
    assert_eq!(events.last().unwrap().data, "[DONE]");

    let res = post(
        format!("{}/deployments/prod-4o/chat/completions", fake.base_url()),
        ("api-key", "azure-key"),
        &body,
    )
    .await;
    assert_eq!(res.status(), 404);

    let res = post(url, ("authorization", "Bearer"), &body).await;
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], "401");
}

fn anthropic_body(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "system": "be brief",
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "hi claude"}]},
        ],
        "stream": stream,
    })
}

async fn anthropic_post(fake: &FakeLlm, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/messages", fake.base_url()))
        .header("x-api-key", "ant-key")
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn anthropic_messages_whole() {
    let fake = FakeLlm::start(FakeKind::Anthropic).await;
    fake.push(Reply::Answer {
        text: "Let me look.".into(),
        tool_call: Some(("get_weather".into(), r#"{"city":"Paris"}"#.into())),
        usage: Some((100, 20, 60)),
        chunk_delay: Duration::ZERO,
    });
    let res = anthropic_post(&fake, &anthropic_body(false)).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("request-id"));
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["type"], "message");
    assert_eq!(doc["role"], "assistant");
    assert_eq!(doc["model"], "claude-sonnet-4-5");
    assert!(doc["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(
        doc["content"][0],
        json!({"type": "text", "text": "Let me look."})
    );
    assert_eq!(doc["content"][1]["type"], "tool_use");
    assert!(doc["content"][1]["id"]
        .as_str()
        .unwrap()
        .starts_with("toolu_"));
    assert_eq!(doc["content"][1]["input"], json!({"city": "Paris"}));
    assert_eq!(doc["stop_reason"], "tool_use");
    assert_eq!(doc["stop_sequence"], Value::Null);
    assert_eq!(doc["usage"]["input_tokens"], 40);
    assert_eq!(doc["usage"]["cache_read_input_tokens"], 60);
    assert_eq!(doc["usage"]["output_tokens"], 20);

    let doc: Value = anthropic_post(&fake, &anthropic_body(false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(doc["content"][0]["text"], "echo: hi claude");
    assert_eq!(doc["stop_reason"], "end_turn");
}

#[tokio::test]
async fn anthropic_streams_the_documented_event_sequence() {
    let fake = FakeLlm::start(FakeKind::Anthropic).await;
    fake.push(Reply::Answer {
        text: "Hello there".into(),
        tool_call: Some(("lookup".into(), r#"{"q":"x"}"#.into())),
        usage: Some((30, 12, 0)),
        chunk_delay: Duration::ZERO,
    });
    let res = anthropic_post(&fake, &anthropic_body(true)).await;
    assert_eq!(
        res.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let events = parse_events(&res.text().await.unwrap(), "\n\n");
    let names: Vec<&str> = events.iter().map(|e| e.name.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    for event in &events {
        assert_eq!(event.json()["type"], event.name.as_deref().unwrap());
    }
    let start = events[0].json();
    assert_eq!(start["message"]["model"], "claude-sonnet-4-5");
    assert_eq!(start["message"]["content"], json!([]));
    assert_eq!(start["message"]["usage"]["input_tokens"], 30);
    assert_eq!(
        events[3].json()["delta"],
        json!({"type": "text_delta", "text": "Hello "})
    );
    let tool_start = events[6].json();
    assert_eq!(tool_start["index"], 1);
    assert_eq!(tool_start["content_block"]["type"], "tool_use");
    assert_eq!(tool_start["content_block"]["name"], "lookup");
    let partial: String = events[7..10]
        .iter()
        .map(|e| {
            e.json()["delta"]["partial_json"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&partial).unwrap(),
        json!({"q": "x"})
    );
    let delta = events[11].json();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta["usage"], json!({"output_tokens": 12}));
}

#[tokio::test]
async fn anthropic_errors_and_headers() {
    let fake = FakeLlm::start(FakeKind::Anthropic).await;
    let res = client()
        .post(format!("{}/messages", fake.base_url()))
        .header("x-api-key", "k")
        .json(&anthropic_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["type"], "error");
    assert_eq!(doc["error"]["type"], "invalid_request_error");

    let res = client()
        .post(format!("{}/messages", fake.base_url()))
        .header("authorization", "Bearer k")
        .header("anthropic-version", "2023-06-01")
        .json(&anthropic_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["type"],
        "authentication_error"
    );

    fake.push(Reply::Error {
        status: 529,
        retry_after: Some(3),
    });
    let res = anthropic_post(&fake, &anthropic_body(true)).await;
    assert_eq!(res.status(), 529);
    assert_eq!(res.headers()["retry-after"], "3");
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["type"],
        "overloaded_error"
    );
}

fn gemini_body() -> Value {
    json!({
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "contents": [
            {"role": "user", "parts": [{"text": "first"}]},
            {"role": "model", "parts": [{"text": "ok"}]},
            {"role": "user", "parts": [{"text": "hi "}, {"text": "gemini"}]},
        ],
    })
}

#[tokio::test]
async fn gemini_generate_content_whole_and_streamed() {
    let fake = FakeLlm::start(FakeKind::Gemini).await;
    assert!(fake.base_url().ends_with("/v1beta"));
    let res = post(
        format!(
            "{}/models/gemini-2.5-flash:generateContent",
            fake.base_url()
        ),
        ("x-goog-api-key", "g-key"),
        &gemini_body(),
    )
    .await;
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.unwrap();
    let candidate = &doc["candidates"][0];
    assert_eq!(candidate["content"]["role"], "model");
    assert_eq!(candidate["content"]["parts"][0]["text"], "echo: hi gemini");
    assert_eq!(candidate["finishReason"], "STOP");
    assert_eq!(doc["usageMetadata"]["promptTokenCount"], 11);
    assert_eq!(doc["usageMetadata"]["candidatesTokenCount"], 7);
    assert_eq!(doc["usageMetadata"]["totalTokenCount"], 18);
    assert_eq!(doc["modelVersion"], "gemini-2.5-flash");
    assert_eq!(fake.last_request().unwrap().key(), Some("g-key"));

    fake.push(Reply::Answer {
        text: "a b c".into(),
        tool_call: Some(("find".into(), r#"{"q":1}"#.into())),
        usage: Some((40, 9, 10)),
        chunk_delay: Duration::ZERO,
    });
    let res = client()
        .post(format!(
            "{}/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key=query-key",
            fake.base_url()
        ))
        .json(&gemini_body())
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let text = res.text().await.unwrap();
    assert!(!text.replace("\r\n", "").contains('\n'), "CRLF framing");
    let chunks: Vec<Value> = parse_events(&text, "\r\n\r\n")
        .iter()
        .map(Event::json)
        .collect();
    assert_eq!(chunks.len(), 4);
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["candidates"][0]["content"]["parts"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, "a b c");
    let last = chunks.last().unwrap();
    assert_eq!(
        last["candidates"][0]["content"]["parts"][0]["functionCall"],
        json!({"name": "find", "args": {"q": 1}})
    );
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert!(chunks[..3]
        .iter()
        .all(|c| c["candidates"][0].get("finishReason").is_none()));
    // Usage is cumulative; the last chunk's is the answer's.
    assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 9);
    assert_eq!(last["usageMetadata"]["cachedContentTokenCount"], 10);
    assert!(
        chunks[0]["usageMetadata"]["candidatesTokenCount"]
            .as_u64()
            .unwrap()
            < 9
    );
    assert_eq!(last["modelVersion"], "gemini-2.5-pro");
    assert_eq!(fake.last_request().unwrap().key(), Some("query-key"));
}

#[tokio::test]
async fn gemini_embeddings_and_errors() {
    let fake = FakeLlm::start(FakeKind::Gemini).await;
    let doc: Value = post(
        format!("{}/models/gemini-embedding-001:batchEmbedContents", fake.base_url()),
        ("x-goog-api-key", "g"),
        &json!({"requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}},
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 3},
        ]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let embeddings = doc["embeddings"].as_array().unwrap();
    assert_eq!(embeddings.len(), 2);
    assert_eq!(
        embeddings[0]["values"].as_array().unwrap().len(),
        DEFAULT_DIMENSIONS
    );
    assert_eq!(embeddings[1]["values"].as_array().unwrap().len(), 3);
    assert!(doc.get("usageMetadata").is_none());

    fake.reject_key("revoked");
    let res = post(
        format!(
            "{}/models/gemini-2.5-flash:generateContent",
            fake.base_url()
        ),
        ("x-goog-api-key", "revoked"),
        &gemini_body(),
    )
    .await;
    assert_eq!(res.status(), 400);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(doc["error"]["details"][0]["reason"], "API_KEY_INVALID");

    fake.push(Reply::Error {
        status: 429,
        retry_after: Some(30),
    });
    let res = post(
        format!(
            "{}/models/gemini-2.5-flash:generateContent",
            fake.base_url()
        ),
        ("x-goog-api-key", "g"),
        &gemini_body(),
    )
    .await;
    assert_eq!(res.status(), 429);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["error"]["code"], 429);
    assert_eq!(doc["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(doc["error"]["details"][0]["retryDelay"], "30s");
}

#[tokio::test]
async fn answers_without_usage_leave_it_out() {
    for kind in [FakeKind::OpenAi, FakeKind::Anthropic, FakeKind::Gemini] {
        let fake = FakeLlm::start(kind).await;
        fake.set_default(Reply::text("x y").with_usage(None));
        let (url, body, headers): (String, Value, Vec<(&str, &str)>) = match kind {
            FakeKind::Anthropic => (
                format!("{}/messages", fake.base_url()),
                anthropic_body(true),
                vec![("x-api-key", "k"), ("anthropic-version", "2023-06-01")],
            ),
            FakeKind::Gemini => (
                format!("{}/models/g:streamGenerateContent?alt=sse", fake.base_url()),
                gemini_body(),
                vec![("x-goog-api-key", "k")],
            ),
            _ => {
                let mut body = openai_chat(true);
                body["stream_options"] = json!({"include_usage": true});
                (
                    format!("{}/chat/completions", fake.base_url()),
                    body,
                    vec![("authorization", "Bearer k")],
                )
            }
        };
        let mut request = client().post(url).json(&body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let text = request.send().await.unwrap().text().await.unwrap();
        assert!(!text.contains("\"usage"), "{kind:?}: {text}");
        assert!(text.contains("\"x \""), "{kind:?}: {text}");
    }
}

#[tokio::test]
async fn streams_are_paced_event_by_event() {
    let fake = FakeLlm::start(FakeKind::OpenAi).await;
    let gap = Duration::from_millis(150);
    fake.push(Reply::text("a b c d").with_chunk_delay(gap));
    let started = Instant::now();
    let mut res = post(
        format!("{}/chat/completions", fake.base_url()),
        ("authorization", "Bearer k"),
        &openai_chat(true),
    )
    .await;
    let first = res.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(first.starts_with(b"data: "));
    assert!(
        first_at < gap,
        "the first event comes at once ({first_at:?})"
    );
    let mut chunks = 1;
    while let Some(chunk) = res.chunk().await.unwrap() {
        assert!(chunk.ends_with(b"\n\n"), "one event per write");
        chunks += 1;
    }
    // Role, four words, finish, [DONE]: six gaps.
    assert_eq!(chunks, 7);
    assert!(started.elapsed() >= gap * 6, "{:?}", started.elapsed());
}

#[tokio::test]
async fn delays_outlast_client_timeouts() {
    let fake = FakeLlm::start(FakeKind::Anthropic).await;
    fake.push(Reply::text("late").delayed(Duration::from_secs(2)));
    let started = Instant::now();
    let err = client()
        .post(format!("{}/messages", fake.base_url()))
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .timeout(Duration::from_millis(200))
        .json(&anthropic_body(false))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn stream_then_drop_cuts_the_connection_after_the_first_text() {
    let fake = FakeLlm::start(FakeKind::Anthropic).await;
    fake.push(Reply::StreamThenDrop {
        text: "partial answer".into(),
    });
    let mut res = anthropic_post(&fake, &anthropic_body(true)).await;
    assert_eq!(res.status(), 200);
    let mut received = Vec::new();
    let error = loop {
        match res.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => panic!("the stream ended cleanly"),
            Err(e) => break e,
        }
    };
    let text = String::from_utf8(received).unwrap();
    assert!(text.contains("event: message_start"), "{text}");
    assert!(text.contains("\"text\":\"partial \""), "{text}");
    assert!(!text.contains("answer"), "{text}");
    assert!(!text.contains("message_stop"), "{text}");
    assert!(error.is_body() || error.is_decode(), "{error}");

    fake.push(Reply::StreamThenDrop {
        text: "partial answer".into(),
    });
    let res = anthropic_post(&fake, &anthropic_body(false)).await;
    assert_eq!(res.status(), 200);
    assert!(res.bytes().await.is_err());
}
