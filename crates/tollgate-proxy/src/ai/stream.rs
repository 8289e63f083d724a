//! A provider's stream, translated event by event into the client's format
//! as it arrives: nothing is held back beyond one provider event.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Body;
use tollgate_ai::formats::{anthropic, openai};
use tollgate_ai::providers::StreamDecoder;
use tollgate_ai::{ChatResponse, FinishReason, Message, Part, Role, StreamEvent, ToolCall, Usage};
use tollgate_telemetry::AccessRecord;

use super::handler::Accounting;
use super::prompt::PromptStreamRenderer;
use crate::body::ProducedBody;
use crate::h1_client::UpstreamBody;

/// The client's stream format.
pub(crate) enum Renderer {
    OpenAi(openai::ChatStreamRenderer),
    Anthropic(anthropic::MessagesStreamRenderer),
    Prompt(PromptStreamRenderer),
}

impl Renderer {
    pub(crate) fn event(&mut self, event: &StreamEvent) -> Bytes {
        match self {
            Renderer::OpenAi(r) => r.event(event),
            Renderer::Anthropic(r) => r.event(event),
            Renderer::Prompt(r) => r.event(event),
        }
    }

    pub(crate) fn done(&mut self) -> Bytes {
        match self {
            Renderer::OpenAi(r) => r.done(),
            Renderer::Anthropic(r) => r.done(),
            Renderer::Prompt(r) => r.done(),
        }
    }
}

/// Gathers a stream's events into the whole answer: for the response cache
/// and for estimating tokens when the provider reported none.
#[derive(Default)]
pub(crate) struct Collector {
    pub id: String,
    pub model: String,
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish: Option<FinishReason>,
    pub usage: Option<Usage>,
}

impl Collector {
    pub fn add(&mut self, event: &StreamEvent) {
        match event {
            StreamEvent::Start { id, model } => {
                self.id.clone_from(id);
                self.model.clone_from(model);
            }
            StreamEvent::Text(text) => self.text.push_str(text),
            StreamEvent::ToolCallStart { index, id, name } => {
                if self.tool_calls.len() <= *index {
                    self.tool_calls.resize(
                        index + 1,
                        ToolCall {
                            id: String::new(),
                            name: String::new(),
                            arguments: String::new(),
                        },
                    );
                }
                self.tool_calls[*index].id.clone_from(id);
                self.tool_calls[*index].name.clone_from(name);
            }
            StreamEvent::ToolCallArgs { index, fragment } => {
                if let Some(call) = self.tool_calls.get_mut(*index) {
                    call.arguments.push_str(fragment);
                }
            }
            StreamEvent::Finish(reason) => self.finish = Some(reason.clone()),
            StreamEvent::Usage(usage) => self.usage = Some(*usage),
        }
    }

    /// The whole answer, when the stream finished.
    pub fn response(&self) -> Option<ChatResponse> {
        Some(ChatResponse {
            id: self.id.clone(),
            model: self.model.clone(),
            created: 0,
            message: Message {
                role: Role::Assistant,
                content: if self.text.is_empty() {
                    Vec::new()
                } else {
                    vec![Part::Text(self.text.clone())]
                },
                tool_calls: self.tool_calls.clone(),
                tool_call_id: None,
                name: None,
            },
            finish: self.finish.clone()?,
            usage: self.usage,
        })
    }

    /// The generated text, tool calls included, for estimating output tokens.
    pub fn output_text(&self) -> String {
        let mut text = self.text.clone();
        for call in &self.tool_calls {
            text.push_str(&call.name);
            text.push_str(&call.arguments);
        }
        text
    }
}

/// Bytes gathered into one write at most, when a provider sends faster
/// than the client reads.
const MAX_COALESCED: usize = 64 * 1024;

/// The translated stream sent to the client.
pub(crate) struct TranslatedStream {
    pending: VecDeque<StreamEvent>,
    decoder: Box<dyn StreamDecoder>,
    body: Option<UpstreamBody>,
    renderer: Renderer,
    collector: Collector,
    accounting: Option<Accounting>,
    /// The provider's stream failed after the first byte.
    broken: bool,
    done: bool,
    /// How long the provider may stay silent mid-stream (the model's
    /// `timeout`), and when that runs out.
    idle: Duration,
    idle_deadline: Pin<Box<tokio::time::Sleep>>,
}

impl TranslatedStream {
    pub fn new(
        first: Vec<StreamEvent>,
        decoder: Box<dyn StreamDecoder>,
        body: Option<UpstreamBody>,
        renderer: Renderer,
        accounting: Accounting,
        idle: Duration,
    ) -> TranslatedStream {
        TranslatedStream {
            idle,
            idle_deadline: Box::pin(tokio::time::sleep(idle)),
            pending: first.into(),
            decoder,
            body,
            renderer,
            collector: Collector::default(),
            accounting: Some(accounting),
            broken: false,
            done: false,
        }
    }

    fn render(&mut self, events: impl IntoIterator<Item = StreamEvent>) -> BytesMut {
        let mut out = BytesMut::new();
        for event in events {
            self.collector.add(&event);
            out.extend_from_slice(&self.renderer.event(&event));
        }
        out
    }

    fn end(&mut self, events: Vec<StreamEvent>) -> Bytes {
        self.done = true;
        let mut out = self.render(events);
        if !self.broken {
            out.extend_from_slice(&self.renderer.done());
        }
        out.freeze()
    }
}

impl ProducedBody for TranslatedStream {
    /// Everything the provider has sent so far, translated: what arrived
    /// together leaves together (one write, not one per event), and nothing
    /// waits for more.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut out = BytesMut::new();
        if !self.pending.is_empty() {
            let events: Vec<StreamEvent> = self.pending.drain(..).collect();
            out = self.render(events);
        }
        let ready = |out: BytesMut| Poll::Ready((!out.is_empty()).then(|| out.freeze()));
        loop {
            if self.done || out.len() >= MAX_COALESCED {
                return ready(out);
            }
            let Some(body) = self.body.as_mut() else {
                out.extend_from_slice(&self.end(Vec::new()));
                continue;
            };
            let events = match Pin::new(body).poll_frame(cx) {
                Poll::Pending if !out.is_empty() => return ready(out),
                Poll::Pending => {
                    if self.idle_deadline.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    tracing::debug!(idle = ?self.idle, "provider stream went silent");
                    self.broken = true;
                    Ok(Vec::new())
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = tokio::time::Instant::now() + self.idle;
                    self.idle_deadline.as_mut().reset(deadline);
                    match frame.into_data() {
                        Ok(data) => self.decoder.feed(&data),
                        Err(_) => continue,
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    tracing::debug!(%error, "provider stream broke off");
                    self.broken = true;
                    Ok(Vec::new())
                }
                Poll::Ready(None) => {
                    self.body = None;
                    self.decoder.finish()
                }
            };
            let events = match events {
                Ok(events) => events,
                Err(error) => {
                    tracing::debug!(
                        status = error.status,
                        "provider reported an error mid-stream"
                    );
                    self.broken = true;
                    Vec::new()
                }
            };
            if self.broken || self.body.is_none() {
                out.extend_from_slice(&self.end(events));
                continue;
            }
            let rendered = self.render(events);
            out.extend_from_slice(&rendered);
        }
    }

    fn complete(&mut self, record: &mut AccessRecord, finished: bool) {
        if let Some(accounting) = self.accounting.take() {
            let whole = (finished && !self.broken)
                .then(|| self.collector.response())
                .flatten()
                .map(|response| (response, None));
            accounting.settle(
                self.collector.usage,
                &self.collector.output_text(),
                whole,
                record,
            );
        }
        if self.broken || !finished {
            record.reason.get_or_insert(if self.broken {
                "provider_stream_error"
            } else {
                "client_closed"
            });
        }
    }
}
