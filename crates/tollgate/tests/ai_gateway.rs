//! The AI gateway end to end: the real gateway in front of fake providers
//! that speak each provider's wire format, driven by a real HTTP client in
//! both client formats (OpenAI chat completions, Anthropic messages).

mod common;

use std::time::Duration;

use tollgate_testkit::fake_llm::DEFAULT_USAGE;
use tollgate_testkit::serde_json::{json, Value};
use tollgate_testkit::{reqwest, FakeKind, FakeLlm, Gateway, Reply};

const APP_KEY: &str = "tg_app_key_for_ai_tests_0123456789abcdef";
const PROVIDER_KEY: &str = "sk-provider-secret-key-1";

/// A gateway with one provider of `kind` at `fake`, the model `smart` on it,
/// and an API `llm` at `/v1` behind a consumer key.
async fn gateway_for(fake: &FakeLlm, kind: &str, extra: &str) -> Gateway {
    let yaml = format!(
        r#"
consumers:
  - name: app
    keys: [{{ value: "{APP_KEY}" }}]
ai:
  providers:
    - {{ name: p, kind: {kind}, keys: ["{PROVIDER_KEY}"], base_url: "{base}" }}
  models:
    - name: smart
      targets: [{{ provider: p, model: upstream-model }}]
apis:
  - name: llm
    match: {{ paths: [/v1] }}
    ai: {{ endpoints: [chat, embeddings, models, messages] }}
    policies:
      auth: {{ methods: [key] }}
{extra}
"#,
        base = fake.base_url()
    );
    common::gateway().config(&yaml).start().await
}

fn kind_name(kind: FakeKind) -> &'static str {
    match kind {
        FakeKind::OpenAi => "openai",
        FakeKind::Mistral => "mistral",
        FakeKind::AzureOpenAi => "azure_openai",
        FakeKind::Anthropic => "anthropic",
        FakeKind::Gemini => "gemini",
    }
}

const KINDS: [FakeKind; 5] = [
    FakeKind::OpenAi,
    FakeKind::Mistral,
    FakeKind::AzureOpenAi,
    FakeKind::Anthropic,
    FakeKind::Gemini,
];

async fn post(gateway: &Gateway, path: &str, body: Value) -> reqwest::Response {
    gateway
        .client()
        .post(gateway.url(path))
        .bearer_auth(APP_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn openai_chat(stream: bool) -> Value {
    json!({
        "model": "smart",
        "stream": stream,
        "messages": [
            { "role": "system", "content": "Be brief." },
            { "role": "user", "content": "Say hello" }
        ]
    })
}

fn anthropic_messages(stream: bool) -> Value {
    json!({
        "model": "smart",
        "max_tokens": 100,
        "stream": stream,
        "system": "Be brief.",
        "messages": [{ "role": "user", "content": "Say hello" }]
    })
}

/// The `data:` payloads of an SSE body, with their event names.
fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    let mut events = Vec::new();
    for block in body.split("\n\n") {
        let mut name = None;
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.trim_start().to_string());
            }
        }
        if !data.is_empty() {
            events.push((name, data.join("\n")));
        }
    }
    events
}

/// The text of an OpenAI chat stream, and whether it ended with `[DONE]`.
fn openai_stream_text(body: &str) -> (String, bool, Option<Value>) {
    let mut text = String::new();
    let mut done = false;
    let mut usage = None;
    for (_, data) in sse_events(body) {
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(&data).unwrap();
        if let Some(t) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if !chunk["usage"].is_null() {
            usage = Some(chunk["usage"].clone());
        }
    }
    (text, done, usage)
}

fn anthropic_stream_text(body: &str) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut names = Vec::new();
    for (name, data) in sse_events(body) {
        let event: Value = serde_json::from_str(&data).unwrap();
        names.push(name.clone().unwrap_or_default());
        assert_eq!(event["type"].as_str(), name.as_deref(), "{data}");
        if event["type"] == "content_block_delta" {
            if let Some(t) = event["delta"]["text"].as_str() {
                text.push_str(t);
            }
        }
    }
    (text, names)
}

#[tokio::test]
async fn every_client_format_reaches_every_provider_kind_streamed_or_not() {
    for kind in KINDS {
        let fake = FakeLlm::start(kind).await;
        let gateway = gateway_for(&fake, kind_name(kind), "").await;
        let label = kind_name(kind);

        // OpenAI format, whole.
        let res = post(&gateway, "/v1/chat/completions", openai_chat(false)).await;
        assert_eq!(res.status(), 200, "{label}");
        assert_eq!(res.headers()["x-tollgate-provider"], "p");
        assert_eq!(res.headers()["x-tollgate-model"], "upstream-model");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["object"], "chat.completion", "{label}: {body}");
        assert_eq!(
            body["choices"][0]["message"]["content"], "echo: Say hello",
            "{label}: {body}"
        );
        assert_eq!(body["usage"]["prompt_tokens"], DEFAULT_USAGE.0, "{label}");
        assert_eq!(body["usage"]["completion_tokens"], DEFAULT_USAGE.1);

        // OpenAI format, streamed, usage asked for.
        let mut stream_request = openai_chat(true);
        stream_request["stream_options"] = json!({ "include_usage": true });
        let res = post(&gateway, "/v1/chat/completions", stream_request).await;
        assert_eq!(res.status(), 200, "{label}");
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        let (text, done, usage) = openai_stream_text(&res.text().await.unwrap());
        assert_eq!(text, "echo: Say hello", "{label}");
        assert!(done, "{label}: the stream ends with [DONE]");
        let usage = usage.unwrap_or_else(|| panic!("{label}: a usage chunk"));
        assert_eq!(usage["prompt_tokens"], DEFAULT_USAGE.0, "{label}");

        // Anthropic format, whole.
        let res = post(&gateway, "/v1/messages", anthropic_messages(false)).await;
        assert_eq!(res.status(), 200, "{label}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["type"], "message", "{label}: {body}");
        assert_eq!(body["content"][0]["text"], "echo: Say hello", "{label}");
        assert_eq!(body["stop_reason"], "end_turn", "{label}");
        assert_eq!(body["usage"]["output_tokens"], DEFAULT_USAGE.1, "{label}");

        // Anthropic format, streamed.
        let res = post(&gateway, "/v1/messages", anthropic_messages(true)).await;
        assert_eq!(res.status(), 200, "{label}");
        let (text, names) = anthropic_stream_text(&res.text().await.unwrap());
        assert_eq!(text, "echo: Say hello", "{label}");
        assert_eq!(names.first().map(String::as_str), Some("message_start"));
        assert_eq!(names.last().map(String::as_str), Some("message_stop"));
        assert!(
            names.contains(&"message_delta".to_string()),
            "{label}: {names:?}"
        );

        // The provider saw its own format, its key and its model; never the client's key.
        let requests = fake.requests();
        assert_eq!(requests.len(), 4, "{label}");
        for request in &requests {
            assert_eq!(request.key(), Some(PROVIDER_KEY), "{label}");
            let raw = format!("{:?}{}", request.headers, request.body);
            assert!(!raw.contains(APP_KEY), "{label}: the client's key leaked");
        }

        // One record per call, with tokens and the provider.
        let records = gateway.wait_for_records(4, Duration::from_secs(5)).await;
        for record in &records {
            assert_eq!(record["ai_provider"], "p", "{label}: {record}");
            assert_eq!(record["ai_model"], "upstream-model");
            assert_eq!(record["tokens_in"], DEFAULT_USAGE.0, "{label}: {record}");
            assert_eq!(record["tokens_out"], DEFAULT_USAGE.1, "{label}: {record}");
            assert_eq!(record["tokens_estimated"], false);
            assert_eq!(record["consumer"], "app");
            assert_eq!(record["attempts"].as_array().unwrap().len(), 1);
        }

        // The provider's own errors, read from its wire format, reach each
        // client in the client's format with a mapped status.
        fake.push(Reply::error(400));
        let res = post(&gateway, "/v1/chat/completions", openai_chat(false)).await;
        assert_eq!(res.status(), 400, "{label}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request", "{label}: {body}");
        assert!(body["error"]["message"].is_string(), "{label}: {body}");
        fake.push(Reply::error(404));
        let res = post(&gateway, "/v1/messages", anthropic_messages(false)).await;
        assert_eq!(res.status(), 404, "{label}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["type"], "error", "{label}: {body}");
        assert_eq!(body["error"]["type"], "not_found_error", "{label}: {body}");
        assert_eq!(body["error"]["code"], "model_not_found", "{label}: {body}");
    }
}

/// A client speaking the provider's own format gets the provider's answer as
/// it came, read for its usage but not rendered again: what the canonical
/// answer does not hold (a second choice, logprobs, a provider's own fields)
/// reaches it. A client of the other format still gets a translation, and
/// so does every client of Mistral, whose answers may hold what OpenAI's
/// clients cannot read.
#[tokio::test]
async fn a_client_of_the_providers_own_format_gets_its_answer_as_it_came() {
    let openai_answer = json!({
        "id": "chatcmpl-own",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "upstream-model-2024",
        "system_fingerprint": "fp_own",
        "service_tier": "default",
        "choices": [
            {
                "index": 0,
                "message": { "role": "assistant", "content": "first", "annotations": [] },
                "logprobs": { "content": [{ "token": "first", "logprob": -0.01, "bytes": [102], "top_logprobs": [] }] },
                "finish_reason": "stop"
            },
            {
                "index": 1,
                "message": { "role": "assistant", "content": "second" },
                "logprobs": null,
                "finish_reason": "length"
            }
        ],
        "usage": { "prompt_tokens": 21, "completion_tokens": 8, "total_tokens": 29 }
    });
    let anthropic_answer = json!({
        "id": "msg_own",
        "type": "message",
        "role": "assistant",
        "model": "upstream-model-2024",
        "content": [{ "type": "text", "text": "first", "citations": null }],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": { "input_tokens": 21, "output_tokens": 8, "service_tier": "standard" }
    });
    let cases = [
        (
            FakeKind::OpenAi,
            &openai_answer,
            "/v1/chat/completions",
            true,
        ),
        (
            FakeKind::AzureOpenAi,
            &openai_answer,
            "/v1/chat/completions",
            true,
        ),
        (
            FakeKind::Mistral,
            &openai_answer,
            "/v1/chat/completions",
            false,
        ),
        (FakeKind::Anthropic, &anthropic_answer, "/v1/messages", true),
    ];
    for (kind, answer, own_path, passed_on) in cases {
        let label = kind_name(kind);
        let fake = FakeLlm::start(kind).await;
        let gateway = gateway_for(&fake, label, "").await;
        let own_request = || match own_path {
            "/v1/messages" => anthropic_messages(false),
            _ => openai_chat(false),
        };
        fake.push(Reply::Json(answer.clone()));
        let res = post(&gateway, own_path, own_request()).await;
        assert_eq!(res.status(), 200, "{label}");
        assert_eq!(res.headers()["x-tollgate-provider"], "p", "{label}");
        let body: Value = res.json().await.unwrap();
        if passed_on {
            assert_eq!(&body, answer, "{label}");
        } else {
            assert_ne!(&body, answer, "{label}: translated");
            assert_eq!(
                body["choices"][0]["message"]["content"], "first",
                "{label}: {body}"
            );
            assert_eq!(
                body["choices"].as_array().unwrap().len(),
                1,
                "{label}: {body}"
            );
            assert!(body.get("system_fingerprint").is_none(), "{label}: {body}");
        }

        // The other format: translated, from the first choice.
        fake.push(Reply::Json(answer.clone()));
        let other = match own_path {
            "/v1/messages" => post(&gateway, "/v1/chat/completions", openai_chat(false)).await,
            _ => post(&gateway, "/v1/messages", anthropic_messages(false)).await,
        };
        assert_eq!(other.status(), 200, "{label}");
        let body: Value = other.json().await.unwrap();
        match own_path {
            "/v1/messages" => {
                assert_eq!(body["object"], "chat.completion", "{label}: {body}");
                assert_eq!(body["choices"][0]["message"]["content"], "first", "{label}");
                assert_eq!(body["usage"]["prompt_tokens"], 21, "{label}: {body}");
            }
            _ => {
                assert_eq!(body["type"], "message", "{label}: {body}");
                assert_eq!(body["content"][0]["text"], "first", "{label}: {body}");
                assert_eq!(body["usage"]["input_tokens"], 21, "{label}: {body}");
            }
        }

        // With no usage to read, the answer is read whole and its tokens
        // estimated; it still goes on as it came.
        let mut unmetered = answer.clone();
        unmetered.as_object_mut().unwrap().remove("usage");
        fake.push(Reply::Json(unmetered.clone()));
        let res = post(&gateway, own_path, own_request()).await;
        assert_eq!(res.status(), 200, "{label}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body == unmetered, passed_on, "{label}: {body}");

        // The first two calls counted from the answer's usage, the third
        // estimated.
        let records = gateway.wait_for_records(3, Duration::from_secs(5)).await;
        for record in &records[..2] {
            assert_eq!(record["tokens_in"], 21, "{label}: {record}");
            assert_eq!(record["tokens_out"], 8, "{label}: {record}");
            assert_eq!(record["tokens_estimated"], false, "{label}: {record}");
        }
        assert_eq!(
            records[2]["tokens_estimated"], true,
            "{label}: {}",
            records[2]
        );
        assert!(
            records[2]["tokens_out"].as_u64() > Some(0),
            "{label}: {}",
            records[2]
        );
    }
}

/// An answer the gateway cannot read is refused as before, not passed on.
#[tokio::test]
async fn an_unreadable_answer_in_the_clients_own_format_is_still_refused() {
    let fake = FakeLlm::start(FakeKind::OpenAi).await;
    let gateway = gateway_for(&fake, "openai", "").await;
    fake.push(Reply::Json(
        json!({ "id": "chatcmpl-empty", "choices": [] }),
    ));
    let res = post(&gateway, "/v1/chat/completions", openai_chat(false)).await;
    assert_eq!(res.status(), 502);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "provider_error", "{body}");
}

#[tokio::test]
async fn tool_calls_and_images_cross_formats() {
    for kind in [FakeKind::OpenAi, FakeKind::Anthropic, FakeKind::Gemini] {
        let label = kind_name(kind);
        let fake = FakeLlm::start(kind).await;
        let gateway = gateway_for(&fake, label, "").await;
        fake.push(Reply::tool_call("get_weather", r#"{"city":"Paris"}"#));
        let res = post(
            &gateway,
            "/v1/chat/completions",
            json!({
                "model": "smart",
                "messages": [{ "role": "user", "content": [
                    { "type": "text", "text": "Weather here?" },
                    { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBORw0KGgo=" } }
                ]}],
                "tools": [{ "type": "function", "function": {
                    "name": "get_weather",
                    "parameters": { "type": "object", "properties": { "city": { "type": "string" } } }
                }}]
            }),
        )
        .await;
        assert_eq!(res.status(), 200, "{label}");
        let body: Value = res.json().await.unwrap();
        let call = &body["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather", "{label}: {body}");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({ "city": "Paris" }), "{label}");
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls", "{label}");

        // The provider got the image and the tool in its own shape.
        let sent = fake.last_request().unwrap().body.to_string();
        assert!(sent.contains("iVBORw0KGgo="), "{label}: {sent}");
        assert!(sent.contains("get_weather"), "{label}: {sent}");

        // The same from an Anthropic client, streamed.
        fake.push(Reply::tool_call("get_weather", r#"{"city":"Oslo"}"#));
        let res = post(
            &gateway,
            "/v1/messages",
            json!({
                "model": "smart", "max_tokens": 50, "stream": true,
                "messages": [{ "role": "user", "content": "Weather in Oslo?" }],
                "tools": [{ "name": "get_weather", "input_schema": { "type": "object" } }]
            }),
        )
        .await;
        assert_eq!(res.status(), 200, "{label}");
        let body = res.text().await.unwrap();
        let mut json_args = String::new();
        let mut tool_name = None;
        for (_, data) in sse_events(&body) {
            let event: Value = serde_json::from_str(&data).unwrap();
            if event["type"] == "content_block_start"
                && event["content_block"]["type"] == "tool_use"
            {
                tool_name = event["content_block"]["name"].as_str().map(String::from);
            }
            if let Some(part) = event["delta"]["partial_json"].as_str() {
                json_args.push_str(part);
            }
        }
        assert_eq!(tool_name.as_deref(), Some("get_weather"), "{label}: {body}");
        let args: Value = serde_json::from_str(&json_args).unwrap();
        assert_eq!(args, json!({ "city": "Oslo" }), "{label}");
    }
}

/// A client's plain OpenAI body reaches an OpenAI-style provider as it came,
/// the model's name excepted: its order, spacing and escapes kept, not
/// rendered again. A body the provider reads otherwise than the client
/// wrote it (another name for the cap, a `developer` turn), a streamed one
/// (which must ask for usage) and one the guard changes are rendered.
#[tokio::test]
async fn a_plain_chat_body_reaches_an_openai_style_provider_as_it_came() {
    let fake = FakeLlm::start(FakeKind::OpenAi).await;
    // `llm` has no guard; a second API has one.
    let guarded = "  - name: guarded\n    match: { paths: [/guarded] }\n    ai: { endpoints: [chat] }\n    policies:\n      auth: { methods: [key] }\n      ai_guard: { max_output_tokens: 5 }";
    let gateway = gateway_for(&fake, "openai", guarded).await;
    let send = |path: &'static str, body: &'static str| {
        let gateway = &gateway;
        async move {
            let res = gateway
                .client()
                .post(gateway.url(path))
                .bearer_auth(APP_KEY)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "{body}");
            res.text().await.unwrap()
        }
    };
    let as_came = r#"{ "messages" : [{"role":"user","content":"Say \u0068ello"}],"model":"smart", "max_completion_tokens":7 }"#;
    send("/v1/chat/completions", as_came).await;
    let sent = fake.last_request().unwrap();
    assert_eq!(
        sent.raw_body,
        as_came.replace(r#""smart""#, r#""upstream-model""#),
        "sent as it came"
    );
    assert_eq!(sent.key(), Some(PROVIDER_KEY));

    // OpenAI takes `max_completion_tokens`: `max_tokens` is renamed.
    send(
        "/v1/chat/completions",
        r#"{"model":"smart","messages":[{"role":"user","content":"hi"}],"max_tokens":7}"#,
    )
    .await;
    let sent = fake.last_request().unwrap();
    assert_eq!(sent.body["max_completion_tokens"], 7, "{:?}", sent.raw_body);
    assert!(sent.body.get("max_tokens").is_none());

    // A `developer` turn is sent as `system`.
    send(
        "/v1/chat/completions",
        r#"{"model":"smart","messages":[{"role":"developer","content":"hi"}]}"#,
    )
    .await;
    let sent = fake.last_request().unwrap();
    assert_eq!(sent.body["messages"][0]["role"], "system");
    assert_eq!(sent.body["model"], "upstream-model");

    // A streamed body asks for the usage the gateway counts.
    let streamed = send(
        "/v1/chat/completions",
        r#"{"model":"smart","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert!(streamed.contains("[DONE]"), "{streamed}");
    let sent = fake.last_request().unwrap();
    assert_eq!(
        sent.body["stream_options"],
        json!({ "include_usage": true })
    );
    assert_eq!(sent.body["model"], "upstream-model");

    // The guard caps the output: the body sent says so.
    send(
        "/guarded/chat/completions",
        r#"{"model":"smart","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":700}"#,
    )
    .await;
    let sent = fake.last_request().unwrap();
    assert_eq!(sent.body["max_completion_tokens"], 5, "{:?}", sent.raw_body);
    assert_eq!(sent.body["model"], "upstream-model");

    let records = gateway.wait_for_records(5, Duration::from_secs(5)).await;
    for record in &records {
        assert_eq!(record["tokens_in"], DEFAULT_USAGE.0, "{record}");
    }
}
