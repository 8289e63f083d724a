//! Streaming bodies that count what passes, and the request's record that is
//! completed when the response body ends.
//!
//! Neither body buffers: frames go through as they come. The request body
//! enforces the size limit as it streams; the response body finishes the
//! access record on its last frame, on error, or when the client goes away.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use tollgate_telemetry::{AccessLog, AccessRecord, Outcome};

use crate::h1_client::{BoxError, UpstreamBody};
use crate::passed_lines::PassedLines;
use crate::snapshot::ApiMetrics;
use crate::upstream::TargetState;

/// What the request body saw, shared with the record.
#[derive(Debug, Default)]
pub struct RequestStats {
    pub bytes_in: AtomicU64,
    pub too_large: AtomicBool,
    pub client_error: AtomicBool,
}

/// A client's request body as the pipeline sees it: hyper's, or one the lean
/// HTTP/1.1 server read with its head (`h1_server`: none, or all of it, as
/// it came in the same reads; hyper's `Incoming` cannot be made outside hyper).
pub enum ClientBody {
    Whole(Full<Bytes>),
    Hyper(Incoming),
}

impl ClientBody {
    pub fn empty() -> ClientBody {
        ClientBody::Whole(Full::default())
    }

    pub fn whole(bytes: Bytes) -> ClientBody {
        ClientBody::Whole(Full::new(bytes))
    }
}

impl From<Incoming> for ClientBody {
    fn from(body: Incoming) -> ClientBody {
        ClientBody::Hyper(body)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::Whole(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            ClientBody::Hyper(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Whole(body) => body.is_end_stream(),
            ClientBody::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Whole(body) => body.size_hint(),
            ClientBody::Hyper(body) => body.size_hint(),
        }
    }
}

/// Why forwarding a request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error("client body error: {0}")]
    Client(#[from] hyper::Error),
}

/// The body sent upstream: the client's, counted and limited, or nothing.
pub struct RequestBody {
    /// A body read whole before forwarding (a policy had to look at it).
    full: Option<Bytes>,
    inner: Option<ClientBody>,
    stats: Option<Arc<RequestStats>>,
    limit: u64,
    seen: u64,
}

impl RequestBody {
    pub fn empty() -> RequestBody {
        RequestBody {
            full: None,
            inner: None,
            stats: None,
            limit: 0,
            seen: 0,
        }
    }

    pub fn streaming(inner: ClientBody, stats: Arc<RequestStats>, limit: u64) -> RequestBody {
        RequestBody {
            full: None,
            inner: Some(inner),
            stats: Some(stats),
            limit,
            seen: 0,
        }
    }

    /// A body already read (and counted) by the pipeline.
    pub fn full(bytes: Bytes) -> RequestBody {
        RequestBody {
            full: (!bytes.is_empty()).then_some(bytes),
            inner: None,
            stats: None,
            limit: 0,
            seen: 0,
        }
    }
}

/// Reads a request body whole, refusing it past `limit` bytes.
pub async fn read_limited(
    body: ClientBody,
    limit: u64,
    stats: &RequestStats,
) -> Result<Bytes, RequestBodyError> {
    let mut body = body;
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        let frame = frame.inspect_err(|_| stats.client_error.store(true, Ordering::Relaxed))?;
        if let Some(data) = frame.data_ref() {
            if (out.len() + data.len()) as u64 > limit {
                stats.too_large.store(true, Ordering::Relaxed);
                return Err(RequestBodyError::TooLarge(limit));
            }
            out.extend_from_slice(data);
            stats.bytes_in.store(out.len() as u64, Ordering::Relaxed);
        }
    }
    Ok(out.freeze())
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(full) = this.full.take() {
            return Poll::Ready(Some(Ok(Frame::data(full))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if let Some(stats) = &this.stats {
                        stats.bytes_in.store(this.seen, Ordering::Relaxed);
                        if this.seen > this.limit {
                            stats.too_large.store(true, Ordering::Relaxed);
                            this.inner = None;
                            return Poll::Ready(Some(Err(RequestBodyError::TooLarge(this.limit))));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                if let Some(stats) = &this.stats {
                    stats.client_error.store(true, Ordering::Relaxed);
                }
                this.inner = None;
                Poll::Ready(Some(Err(err.into())))
            }
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.full.is_none() && self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(full) = &self.full {
            return SizeHint::with_exact(full.len() as u64);
        }
        match &self.inner {
            Some(b) => b.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

/// Everything needed to complete and send the access record of one request.
pub struct RecordFinisher {
    pub record: AccessRecord,
    /// The request id as a header value, made once and shared by every header that carries it.
    pub request_id_header: http::HeaderValue,
    pub started: Instant,
    pub access_log: AccessLog,
    pub stats: Option<Arc<RequestStats>>,
    pub metrics: Option<Arc<ApiMetrics>>,
    /// Held while the response streams, so `least_conn` sees it as in flight.
    pub target: Option<Arc<TargetState>>,
}

impl RecordFinisher {
    fn finish(self: Box<Self>, bytes_out: u64, stream_error: bool) {
        let mut this = *self;
        let elapsed = this.started.elapsed();
        let record = &mut this.record;
        record.latency_ms = elapsed.as_secs_f64() * 1000.0;
        record.bytes_out = bytes_out;
        if let Some(stats) = &this.stats {
            record.bytes_in = stats.bytes_in.load(Ordering::Relaxed);
        }
        if stream_error && record.reason.is_none() {
            record.reason = Some("upstream_error");
            record.outcome = Outcome::Error;
        }
        match &this.metrics {
            Some(metrics) => metrics.observe(record.status, elapsed),
            None => ApiMetrics::observe_unrouted(record.status, elapsed),
        }
        if let Some(target) = this.target.take() {
            target.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        this.access_log.record(this.record);
    }
}

enum Inner {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
    Produced(Box<dyn ProducedBody>),
}

/// A body the gateway writes as it goes: the AI gateway's translated
/// answers, which read a provider's stream and write the client's format.
pub trait ProducedBody: Send {
    /// The next chunk for the client; `None` at the end.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>>;

    /// Called once, when the body ended (`finished`) or was dropped before
    /// its end: completes the request's record (tokens, cost) before it is
    /// written, and settles what the request reserved.
    fn complete(&mut self, record: &mut AccessRecord, finished: bool);
}

/// A pooled upstream connection lent to one exchange, returned when the
/// response body has been read to its end.
pub struct PooledSender {
    pub target: Arc<TargetState>,
    pub sender: crate::pool::Sender,
}

/// The body sent to the client.
pub struct ResponseBody {
    inner: Inner,
    bytes_out: u64,
    finisher: Option<Box<RecordFinisher>>,
    pooled: Option<PooledSender>,
    /// A produced body reached its end (not dropped half-way).
    produced_ended: bool,
}

impl ResponseBody {
    pub fn upstream(
        body: UpstreamBody,
        finisher: Option<Box<RecordFinisher>>,
        pooled: Option<PooledSender>,
    ) -> ResponseBody {
        ResponseBody {
            inner: Inner::Upstream(body),
            bytes_out: 0,
            finisher,
            pooled,
            produced_ended: false,
        }
    }

    /// The upstream body was read to its end: its connection may serve again.
    fn release_connection(&mut self) {
        if let Some(pooled) = self.pooled.take() {
            pooled.target.pool.checkin(pooled.sender);
        }
    }

    /// The upstream answer's header lines passed on unread, taken (see
    /// `passed_lines`): none for any other body.
    pub(crate) fn take_passed_lines(&mut self) -> PassedLines {
        match &mut self.inner {
            Inner::Upstream(body) => body.take_passed_lines(),
            Inner::Full(_) | Inner::Produced(_) => PassedLines::default(),
        }
    }

    pub fn full(bytes: Bytes, finisher: Option<Box<RecordFinisher>>) -> ResponseBody {
        ResponseBody {
            inner: Inner::Full(if bytes.is_empty() { None } else { Some(bytes) }),
            bytes_out: 0,
            finisher,
            pooled: None,
            produced_ended: false,
        }
    }

    /// A body the gateway produces; `finisher` writes the record when it ends.
    pub fn produced(
        body: Box<dyn ProducedBody>,
        finisher: Option<Box<RecordFinisher>>,
    ) -> ResponseBody {
        ResponseBody {
            inner: Inner::Produced(body),
            bytes_out: 0,
            finisher,
            pooled: None,
            produced_ended: false,
        }
    }

    /// For a tunnel: the bytes that went each way, recorded when the body drops.
    pub fn set_tunnel_bytes(&mut self, from_client: u64, to_client: u64) {
        self.bytes_out = to_client;
        if let Some(finisher) = &mut self.finisher {
            finisher.record.bytes_in = from_client;
            finisher.stats = None;
        }
    }

    fn finish(&mut self, stream_error: bool) {
        if let Some(mut finisher) = self.finisher.take() {
            if let Inner::Produced(body) = &mut self.inner {
                body.complete(&mut finisher.record, self.produced_ended && !stream_error);
            }
            finisher.finish(self.bytes_out, stream_error);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body that was empty from the start (HEAD, 204, 304) may never be polled.
        if matches!(&self.inner, Inner::Upstream(body) if body.is_end_stream()) {
            self.release_connection();
        }
        self.finish(false);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Upstream(body) => Pin::new(body).poll_frame(cx),
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Produced(body) => match body.poll_chunk(cx) {
                Poll::Ready(Some(chunk)) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                Poll::Ready(None) => {
                    this.produced_ended = true;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes_out += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.finish(true);
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(None) => {
                this.release_connection();
                this.finish(false);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(body) => body.is_end_stream(),
            Inner::Full(bytes) => bytes.is_none(),
            Inner::Produced(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(body) => body.size_hint(),
            Inner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Produced(_) => SizeHint::default(),
        }
    }
}
