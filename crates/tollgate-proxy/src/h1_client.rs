//! A lean HTTP/1.1 client for plain `http://` upstreams: AI providers (local
//! model servers, sidecars, the plain hop of a mesh) and the plain proxy's
//! requests without a body. The exchange runs in the calling task.
//!
//! hyper's client drives each connection in a task of its own and hands the
//! request over, and the answer back one frame at a time, each after the
//! reader asks for it. That costs the plain proxy ~12,000 instructions a
//! request (`bench/lean-h1-spike`; −14 % of the proxy's main thread when
//! its `GET`s moved here). And a stream whose events all arrived in one
//! read still left the gateway in one write per event: between two frames
//! the reader found the channel empty and sent what it had. Here the
//! request's task reads the socket itself, so whatever arrived together is
//! decoded, translated and written together, and nothing waits for more.
//!
//! Requests sent this way are whole (an AI call's JSON body) or have no
//! body, so a request is one write. Answers are framed by `Content-Length`,
//! chunked encoding or the end of the connection; heads are parsed by
//! `httparse`, chunk sizes too. Trailers are read and dropped. Requests
//! with a streamed body, upgrades and `HEAD` go through hyper's client.
//!
//! A kept-alive connection can be closed by the server just as a request
//! goes out. A reused connection that fails before any byte of an answer
//! arrived is therefore tried once more on a new connection; the server
//! cannot have answered, and (closing an idle connection) did not read the
//! request. Idle connections are dropped after the caller's idle timeout,
//! and one the server closed (or sent bytes on) while idle is never reused.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tollgate_ai::providers::UpstreamRequest;

use crate::forwarding;
use crate::passed_lines::{Destination, PassedLines};
use crate::pool::IdleStack;

/// The largest answer head (status line and headers) read.
const MAX_HEAD: usize = 64 * 1024;
/// The most headers an answer may carry.
const MAX_HEADERS: usize = 128;
/// Headers the gateway may add to an answer before it goes out.
const ADDED_HEADERS: usize = 6;
/// Bytes of the lines the gateway may add to an answer passed on as lines
/// (`proxy::finish_headers`): `X-Request-Id` (48 with a generated id), the
/// three `RateLimit-*` (~90), `nosniff` (33), HSTS (~55).
const GATEWAY_LINES_ROOM: usize = 256;
/// How much is read at once.
const READ_SIZE: usize = 16 * 1024;

/// How long a new connection may take, and an idle one be kept.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub idle: Duration,
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Idle connections to one address (`host:port`).
#[derive(Debug)]
pub struct H1Pool {
    authority: String,
    idle: IdleStack<Idle>,
}

/// An idle connection and its read buffer: kept together, the buffer's
/// allocation serves the connection's next answer too (once the last
/// answer's body, which shares it, is gone) instead of a new 16 KiB one
/// for every exchange.
#[derive(Debug)]
struct Idle {
    stream: TcpStream,
    buf: BytesMut,
}

/// Which of an answer's headers its caller reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AnswerHeaders {
    /// Every end-to-end header: the proxy passes them on.
    All,
    /// Only a failed answer's (status 300 and over): an AI call reads an
    /// error's `Retry-After` and the like, and answers a success with
    /// headers of its own. A provider sends a dozen or more headers (rate
    /// limits, timings, cookies) that would each be parsed and copied into
    /// a map for nothing.
    OnFailure,
}

/// Why an exchange failed: before the provider was reached, or after.
#[derive(Debug)]
pub enum SendError {
    Connect(String),
    Broken(String),
}

impl H1Pool {
    pub fn new(authority: String) -> H1Pool {
        H1Pool {
            authority,
            idle: IdleStack::default(),
        }
    }

    /// The `host:port` it connects to.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// An idle connection the server has not closed, if any.
    fn take_idle(&self, idle_timeout: Duration) -> Option<Idle> {
        while let Some(idle) = self.idle.pop_fresh(idle_timeout) {
            // Idle means silent: end of stream or stray bytes rule it out.
            // The readiness tokio has seen answers this without a syscall.
            match idle.stream.try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(idle),
                _ => continue,
            }
        }
        None
    }

    async fn connect(&self, timeout: Duration) -> Result<TcpStream, SendError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| SendError::Connect(format!("connect timed out after {timeout:?}")))?
            .map_err(|e| SendError::Connect(format!("connect failed: {e}")))?;
        stream
            .set_nodelay(true)
            .map_err(|e| SendError::Connect(e.to_string()))?;
        Ok(stream)
    }

    /// Sends an AI call (whose URL is on this pool's address) and reads
    /// the answer's head; the body follows as it is read.
    pub async fn send_call(
        self: &Arc<Self>,
        request: &UpstreamRequest,
        path_and_query: &str,
        timeouts: Timeouts,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let bytes = self.encode(request, path_and_query);
        self.send_reading(&bytes, timeouts, AnswerHeaders::OnFailure)
            .await
    }

    /// The whole of a request without a body, not `HEAD` (whose answer has
    /// no body whatever its head says), written from `method`,
    /// `path_and_query` and `headers` as they are: the caller sets `Host`.
    /// The plain proxy's bodiless requests go this way, in the request's
    /// task. Written before anything is awaited, so that the request's
    /// future holds these bytes, not the request they came from.
    pub fn bodiless_request(
        method: &http::Method,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Vec<u8> {
        debug_assert!(method != http::Method::HEAD);
        let mut head = Vec::with_capacity(512);
        write_head(&mut head, method, path_and_query, headers);
        head.extend_from_slice(b"\r\n");
        head
    }

    /// Sends `request` (head and whole body, as written; not a `HEAD`
    /// request, whose answer would have no body whatever its head says) and
    /// reads the answer's head; the body follows as it is read.
    pub async fn send(
        self: &Arc<Self>,
        request: &[u8],
        timeouts: Timeouts,
    ) -> Result<Response<UpstreamBody>, SendError> {
        self.send_reading(request, timeouts, AnswerHeaders::All)
            .await
    }

    async fn send_reading(
        self: &Arc<Self>,
        request: &[u8],
        timeouts: Timeouts,
        headers: AnswerHeaders,
    ) -> Result<Response<UpstreamBody>, SendError> {
        if let Some(idle) = self.take_idle(timeouts.idle) {
            match self.exchange(idle.stream, idle.buf, request, headers).await {
                Err(Exchange::Unanswered(_)) => {}
                Err(Exchange::Failed(error)) => return Err(error),
                Ok(response) => return Ok(response),
            }
        }
        let stream = self.connect(timeouts.connect).await?;
        match self
            .exchange(stream, BytesMut::new(), request, headers)
            .await
        {
            Ok(response) => Ok(response),
            Err(Exchange::Unanswered(error) | Exchange::Failed(error)) => Err(error),
        }
    }

    fn encode(&self, request: &UpstreamRequest, path_and_query: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + request.body.len());
        let headers = request.headers.iter().map(|(name, value)| (name, value));
        write_head(
            &mut out,
            &request.method,
            path_and_query,
            headers.filter(|(name, _)| !is_framing(name)),
        );
        write_header(&mut out, "host", self.authority.as_bytes());
        let mut digits = itoa::Buffer::new();
        let length = digits.format(request.body.len());
        write_header(&mut out, "content-length", length.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&request.body);
        out
    }

    async fn exchange(
        self: &Arc<Self>,
        mut stream: TcpStream,
        // Empty: a kept-alive connection's buffer, or a new one.
        mut buf: BytesMut,
        request: &[u8],
        headers: AnswerHeaders,
    ) -> Result<Response<UpstreamBody>, Exchange> {
        let broken =
            |e: io::Error| SendError::Broken(format!("the provider connection failed: {e}"));
        if let Err(error) = stream.write_all(request).await {
            return Err(Exchange::Unanswered(broken(error)));
        }
        loop {
            let read = match read_more(&mut stream, &mut buf).await {
                Ok(read) => read,
                Err(error) if buf.is_empty() => return Err(Exchange::Unanswered(broken(error))),
                Err(error) => return Err(Exchange::Failed(broken(error))),
            };
            if read == 0 {
                let error =
                    SendError::Broken("the provider closed the connection before answering".into());
                return Err(if buf.is_empty() {
                    Exchange::Unanswered(error)
                } else {
                    Exchange::Failed(error)
                });
            }
            match parse_head(&buf, headers).map_err(Exchange::Failed)? {
                None if buf.len() > MAX_HEAD => {
                    return Err(Exchange::Failed(SendError::Broken(
                        "the provider's answer head is too large".into(),
                    )))
                }
                None => continue,
                Some(head) if head.status.is_informational() => {
                    buf.advance(head.length);
                    // What followed the 1xx head may already be the answer.
                    if let Some(head) = parse_head(&buf, headers).map_err(Exchange::Failed)? {
                        return self.respond(stream, buf, head);
                    }
                }
                Some(head) => return self.respond(stream, buf, head),
            }
        }
    }

    fn respond(
        self: &Arc<Self>,
        stream: TcpStream,
        mut buf: BytesMut,
        head: Head,
    ) -> Result<Response<UpstreamBody>, Exchange> {
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            // Upgrades go through hyper; a 101 here answers nothing asked.
            return Err(Exchange::Failed(SendError::Broken(
                "the upstream switched protocols unasked".into(),
            )));
        }
        buf.advance(head.length);
        let mut body = LeanBody {
            stream: Some(stream),
            buf,
            framing: head.framing,
            reusable: head.reusable,
            pool: self.clone(),
            passed: head.passed,
        };
        // An empty body (204, 304, `Content-Length: 0`) may never be polled:
        // its connection serves again at once.
        if matches!(body.framing, Framing::Length(0)) {
            body.release();
        }
        let mut response = Response::new(UpstreamBody(Inner::Lean(body)));
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers;
        Ok(response)
    }
}

/// Writes a request line and `headers`, each on its own line; the blank
/// line that ends the head is the caller's.
fn write_head<'a>(
    out: &mut Vec<u8>,
    method: &http::Method,
    path_and_query: &str,
    headers: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        write_header(out, name.as_str(), value.as_bytes());
    }
}

fn write_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

enum Exchange {
    /// Nothing of an answer arrived: a reused connection may be replaced.
    Unanswered(SendError),
    Failed(SendError),
}

/// Whether an answer's header is one that says how its body is framed or
/// whether its connection ends (`name` as the provider spelled it).
fn frames_or_ends(name: &str) -> bool {
    ["transfer-encoding", "content-length", "connection"]
        .iter()
        .any(|framing| name.eq_ignore_ascii_case(framing))
}

/// Headers the client writes itself.
fn is_framing(name: &HeaderName) -> bool {
    name == http::header::HOST
        || name == http::header::CONTENT_LENGTH
        || name == http::header::TRANSFER_ENCODING
        || name == http::header::CONNECTION
}

async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    use tokio::io::AsyncReadExt;
    buf.reserve(READ_SIZE);
    stream.read_buf(buf).await
}

struct Head {
    status: StatusCode,
    headers: HeaderMap,
    /// The end-to-end headers no one reads, when the caller passes them on.
    passed: PassedLines,
    framing: Framing,
    reusable: bool,
    /// Bytes of the head, blank line included.
    length: usize,
}

/// Reads a `Content-Length` value into `seen`, the answer's length so far:
/// digits only (RFC 9110 §8.6), spaces around them allowed, and the same
/// number as any `Content-Length` before it.
fn read_content_length(value: &[u8], seen: &mut Option<u64>) -> Result<u64, String> {
    let length = crate::framing::content_length_value(value)
        .ok_or_else(|| "a bad Content-Length".to_owned())?;
    if seen.is_some_and(|l| l != length) {
        return Err("two different Content-Length".into());
    }
    *seen = Some(length);
    Ok(length)
}

/// The answer's head once `buf` holds all of it.
fn parse_head(buf: &[u8], wanted: AnswerHeaders) -> Result<Option<Head>, SendError> {
    let bad =
        |why: String| SendError::Broken(format!("the provider's answer is not HTTP/1.1: {why}"));
    // Uninitialised: filling 128 empty headers cost ~500 instructions an answer.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut headers,
    );
    let length = match parsed {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(bad(error.to_string())),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| bad("no status".into()))?;
    let keep = wanted == AnswerHeaders::All || !status.is_success();
    // The proxy passes on as lines what no one reads (see `passed_lines`);
    // the map holds the rest, and the headers the gateway adds.
    // With room for the gateway's own lines: growing the buffer for them
    // cost a reallocation and a copy of the lines a request (~250
    // instructions).
    let mut passed = (wanted == AnswerHeaders::All)
        .then(|| PassedLines::with_capacity(length + GATEWAY_LINES_ROOM));
    // Room for the headers the gateway adds (request id, `nosniff`, rate
    // limits): growing the map on the way out cost ~700 instructions. An
    // empty map does not allocate, nor does one left empty because every
    // header went to the lines: the gateway then adds its own as lines.
    let mut map = match (keep, &passed) {
        (true, None) => HeaderMap::with_capacity(response.headers.len() + ADDED_HEADERS),
        (true, Some(_)) | (false, _) => HeaderMap::new(),
    };
    let mut reusable = response.version == Some(1);
    let mut chunked = false;
    let mut content_length = None;
    // Headers a `Connection` header names besides its options: rare.
    let mut connection_named: Vec<HeaderName> = Vec::new();
    for header in response.headers.iter() {
        // Headers no one reads are not checked beyond httparse's syntax:
        // only those that frame the answer or end the connection matter.
        if !keep && !frames_or_ends(header.name) {
            continue;
        }
        if let Some(passed) = &mut passed {
            match PassedLines::destination(header.name) {
                Destination::Line => {
                    passed.push(header.name, header.value);
                    continue;
                }
                Destination::LineRead => {
                    let length =
                        read_content_length(header.value, &mut content_length).map_err(bad)?;
                    if !passed.set_content_length(length) {
                        return Err(bad("a Content-Length past 4 EiB".into()));
                    }
                    passed.push(header.name, header.value);
                    continue;
                }
                Destination::Map => {}
            }
        }
        let name = HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| bad(format!("a bad header name {:?}", header.name)))?;
        let value = HeaderValue::from_bytes(header.value)
            .map_err(|_| bad(format!("a bad value for {name}")))?;
        if name == http::header::TRANSFER_ENCODING {
            chunked = value
                .to_str()
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if name == http::header::CONTENT_LENGTH {
            read_content_length(value.as_bytes(), &mut content_length).map_err(bad)?;
        } else if name == http::header::CONNECTION {
            let options = forwarding::connection_options(&value);
            reusable &= !options.close;
            if keep {
                connection_named.extend(options.named);
            }
        }
        // Hop-by-hop headers (RFC 9110 §7.6.1) never reach the map: leaving
        // them out here costs less than removing them after (~750
        // instructions an answer with `Connection: keep-alive`).
        if keep && !forwarding::is_hop_by_hop(&name, &value) {
            map.append(name, value);
        }
    }
    if !connection_named.is_empty() {
        // Rare: the headers it names may be among the lines.
        if let Some(passed) = passed.take() {
            passed.append_to(&mut map);
        }
        for name in connection_named {
            map.remove(name);
        }
    }
    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Length(0)
    } else if chunked {
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3).
        reusable &= content_length.is_none();
        Framing::Chunked(Chunk::Size)
    } else if let Some(length) = content_length {
        Framing::Length(length)
    } else {
        reusable = false;
        Framing::Close
    };
    Ok(Some(Head {
        status,
        headers: map,
        passed: passed.unwrap_or_default(),
        framing,
        reusable,
        length,
    }))
}

#[derive(Debug)]
enum Framing {
    /// Bytes of body left.
    Length(u64),
    Chunked(Chunk),
    /// Until the provider closes the connection.
    Close,
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Bytes left of the current chunk's data.
    Data(u64),
    /// Expecting the CRLF that ends a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines, up to an empty line.
    Trailers,
}

/// An upstream's answer body: hyper's (TLS, HTTP/2, requests with a body)
/// or the lean client's.
pub struct UpstreamBody(Inner);

enum Inner {
    Hyper(Incoming),
    Lean(LeanBody),
}

impl From<Incoming> for UpstreamBody {
    fn from(body: Incoming) -> UpstreamBody {
        UpstreamBody(Inner::Hyper(body))
    }
}

struct LeanBody {
    stream: Option<TcpStream>,
    /// Read but not yet decoded.
    buf: BytesMut,
    framing: Framing,
    reusable: bool,
    pool: Arc<H1Pool>,
    /// The answer's header lines passed on unread: they travel with the
    /// body, which every writer of the answer holds, rather than in the
    /// response's extensions (two allocations an answer).
    passed: PassedLines,
}

impl LeanBody {
    /// Decodes what `buf` holds: the body bytes in it (all of them, across
    /// chunks) and whether the body ended.
    fn decode(&mut self) -> Result<(Option<Bytes>, bool), BoxError> {
        match &mut self.framing {
            Framing::Length(left) => {
                let take = (*left).min(self.buf.len() as u64) as usize;
                *left -= take as u64;
                let data = (take > 0).then(|| self.buf.split_to(take).freeze());
                Ok((data, *left == 0))
            }
            Framing::Close => {
                let data = (!self.buf.is_empty()).then(|| self.buf.split().freeze());
                Ok((data, false))
            }
            Framing::Chunked(state) => {
                let mut out = BytesMut::new();
                let mut ended = false;
                loop {
                    match *state {
                        Chunk::Size => match httparse::parse_chunk_size(&self.buf) {
                            Ok(httparse::Status::Complete((used, 0))) => {
                                self.buf.advance(used);
                                *state = Chunk::Trailers;
                            }
                            Ok(httparse::Status::Complete((used, size))) => {
                                self.buf.advance(used);
                                *state = Chunk::Data(size);
                            }
                            Ok(httparse::Status::Partial) if self.buf.len() > MAX_HEAD => {
                                return Err("a chunk-size line is too long".into())
                            }
                            Ok(httparse::Status::Partial) => break,
                            Err(_) => return Err("a bad chunk-size line".into()),
                        },
                        Chunk::Data(left) => {
                            let take = left.min(self.buf.len() as u64) as usize;
                            if take == 0 {
                                break;
                            }
                            if out.is_empty() {
                                out = self.buf.split_to(take);
                            } else {
                                out.extend_from_slice(&self.buf.split_to(take));
                            }
                            *state = match left - take as u64 {
                                0 => Chunk::DataEnd,
                                left => Chunk::Data(left),
                            };
                        }
                        Chunk::DataEnd => {
                            if self.buf.len() < 2 {
                                break;
                            }
                            if &self.buf[..2] != b"\r\n" {
                                return Err("a chunk's data is not followed by CRLF".into());
                            }
                            self.buf.advance(2);
                            *state = Chunk::Size;
                        }
                        Chunk::Trailers => {
                            let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                                if self.buf.len() > MAX_HEAD {
                                    return Err("the trailers are too long".into());
                                }
                                break;
                            };
                            self.buf.advance(end + 2);
                            if end == 0 {
                                ended = true;
                                break;
                            }
                        }
                    }
                }
                Ok(((!out.is_empty()).then(|| out.freeze()), ended))
            }
        }
    }

    /// The body ended: its connection serves the next call, unless the
    /// provider said otherwise or sent more than the answer.
    fn release(&mut self) {
        if let Some(stream) = self.stream.take() {
            if self.reusable && self.buf.is_empty() {
                let buf = std::mem::take(&mut self.buf);
                self.pool.idle.push(Idle { stream, buf });
            }
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            // The body ended (or failed) once its connection is gone.
            if self.stream.is_none() {
                return Poll::Ready(None);
            }
            let (data, ended) = match self.decode() {
                Ok(decoded) => decoded,
                Err(error) => {
                    self.stream = None;
                    return Poll::Ready(Some(Err(error)));
                }
            };
            if ended {
                self.release();
            }
            if let Some(data) = data {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if ended {
                return Poll::Ready(None);
            }
            let Some(stream) = self.stream.as_mut() else {
                return Poll::Ready(None);
            };
            self.buf.reserve(READ_SIZE);
            match stream.try_read_buf(&mut self.buf) {
                Ok(0) if matches!(self.framing, Framing::Close) => {
                    self.stream = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.stream = None;
                    return Poll::Ready(Some(Err(
                        "the provider closed the connection mid-answer".into()
                    )));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(error) = ready!(stream.poll_read_ready(cx)) {
                        self.stream = None;
                        return Poll::Ready(Some(Err(error.into())));
                    }
                }
                Err(error) => {
                    self.stream = None;
                    return Poll::Ready(Some(Err(error.into())));
                }
            }
        }
    }
}

impl UpstreamBody {
    /// The answer's header lines passed on unread (see `passed_lines`),
    /// taken: none for hyper's answers and the AI calls'.
    pub(crate) fn take_passed_lines(&mut self) -> PassedLines {
        self.passed_lines_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The lines passed on with the answer, to add to: a lean answer's only.
    pub(crate) fn passed_lines_mut(&mut self) -> Option<&mut PassedLines> {
        match &mut self.0 {
            Inner::Hyper(_) => None,
            Inner::Lean(body) => Some(&mut body.passed),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.0 {
            Inner::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Inner::Lean(body) => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Hyper(body) => body.is_end_stream(),
            Inner::Lean(body) => {
                body.stream.is_none() || matches!(body.framing, Framing::Length(0))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Hyper(body) => body.size_hint(),
            Inner::Lean(body) => match body.framing {
                Framing::Length(left) => SizeHint::with_exact(left),
                _ => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::Method;
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        connect: Duration::from_secs(5),
        idle: Duration::from_secs(30),
    };

    /// How the test server answers each request on a connection.
    #[derive(Clone)]
    struct Script {
        /// The answer, written piece by piece with a pause between pieces.
        pieces: Vec<&'static [u8]>,
        /// Close the connection after each answer.
        close: bool,
    }

    /// A server answering every request with `script`; counts connections.
    async fn server(script: Script) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let script = script.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // One request: a head, then its Content-Length body.
                        let mut chunk = [0u8; 4096];
                        let end = loop {
                            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break end + 4;
                            }
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < end + length {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..end + length);
                        for piece in &script.pieces {
                            stream.write_all(piece).await.unwrap();
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        if script.close {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn request(addr: &str) -> UpstreamRequest {
        UpstreamRequest {
            method: Method::POST,
            url: format!("http://{addr}/v1/chat/completions"),
            headers: vec![(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body: Bytes::from_static(b"{\"model\":\"m\"}"),
        }
    }

    async fn call(pool: &Arc<H1Pool>, addr: &str) -> Result<(u16, Bytes), String> {
        let response = pool
            .send_call(&request(addr), "/v1/chat/completions", TIMEOUTS)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    /// An AI call's request: the client's own `Host` and `Content-Length`,
    /// whatever headers the provider gave; a proxied bodiless request: its
    /// headers as they are, nothing added.
    #[test]
    fn heads_are_written_as_each_caller_needs() {
        let pool = H1Pool::new("127.0.0.1:9".into());
        let mut call = request("127.0.0.1:9");
        call.headers.push((
            http::header::CONTENT_LENGTH,
            HeaderValue::from_static("999"),
        ));
        call.headers
            .push((http::header::HOST, HeaderValue::from_static("elsewhere")));
        assert_eq!(
            String::from_utf8(pool.encode(&call, "/v1/chat/completions")).unwrap(),
            "POST /v1/chat/completions HTTP/1.1\r\ncontent-type: application/json\r\n\
             host: 127.0.0.1:9\r\ncontent-length: 13\r\n\r\n{\"model\":\"m\"}"
        );

        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, HeaderValue::from_static("api.example"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let mut head = Vec::new();
        write_head(&mut head, &Method::GET, "/orders?page=2", &headers);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /orders?page=2 HTTP/1.1\r\nhost: api.example\r\nx-a: 1\r\nx-a: 2\r\n"
        );
    }

    /// An answer without a body is never polled by a proxy that knows its
    /// length; its connection serves the next request all the same.
    #[tokio::test]
    async fn an_empty_answer_frees_its_connection_unread() {
        let (addr, accepted) = server(Script {
            pieces: vec![b"HTTP/1.1 204 No Content\r\n\r\n"],
            close: false,
        })
        .await;
        let pool = Arc::new(H1Pool::new(addr));
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, HeaderValue::from_static("x"));
        for _ in 0..3 {
            let request = H1Pool::bodiless_request(&Method::GET, "/", &headers);
            let response = pool.send(&request, TIMEOUTS).await.unwrap();
            assert_eq!(response.status(), 204);
            assert!(response.body().is_end_stream());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn chunked_answers_split_anywhere_with_extensions_and_trailers() {
        let (addr, accepted) = server(Script {
            pieces: vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Enc",
                b"oding: chunked\r\n\r\n5;ext=1\r",
                b"\nhel",
                b"lo\r\n6\r\n world\r",
                b"\n0\r\nX-Trailer: t\r\n",
                b"\r\n",
            ],
            close: false,
        })
        .await;
        let pool = Arc::new(H1Pool::new(addr.clone()));
        for _ in 0..3 {
            assert_eq!(
                call(&pool, &addr).await.unwrap(),
                (200, Bytes::from("hello world"))
            );
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one kept-alive connection"
        );
        // Issue 5: TCP_NODELAY on every socket, so no event waits for Nagle.
        let idle = pool
            .idle
            .pop_fresh(Duration::MAX)
            .expect("one idle connection");
        assert!(pool.idle.pop_fresh(Duration::MAX).is_none(), "only one");
        assert!(
            idle.stream.nodelay().unwrap(),
            "TCP_NODELAY on the provider socket"
        );
        assert!(
            idle.buf.capacity() > 0,
            "the read buffer stays with its idle connection"
        );
    }

    #[tokio::test]
    async fn events_that_arrive_together_are_read_as_one_frame() {
        let (addr, _) = server(Script {
            pieces: vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab\n\r\n3\r\ncd\n\r\n0\r\n\r\n"],
            close: false,
        })
        .await;
        let pool = Arc::new(H1Pool::new(addr.clone()));
        let response = pool
            .send_call(&request(&addr), "/v1/chat/completions", TIMEOUTS)
            .await
            .unwrap();
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, Bytes::from("ab\ncd\n"));
        assert!(body.frame().await.is_none());
    }

    /// Hop-by-hop headers, and those `Connection` names (never the
    /// request id), are left out of the head as it is parsed; `TE:
    /// trailers` is end to end; `close` among several options still ends
    /// the connection's reuse.
    #[test]
    fn hop_by_hop_headers_are_left_out_of_the_head() {
        let head = parse_head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret, X-Request-Id\r\n\
              Keep-Alive: timeout=5\r\nX-Secret: s\r\nTE: trailers\r\nUpgrade: h2c\r\n\
              Proxy-Connection: x\r\nTransfer-Encoding: chunked\r\nX-Kept: k\r\n\
              X-Request-Id: r\r\n\r\n",
            AnswerHeaders::All,
        )
        .unwrap()
        .unwrap();
        let mut names: Vec<_> = head.headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-kept", "x-request-id"]);
        assert!(head.reusable);
        assert!(matches!(head.framing, Framing::Chunked(_)));

        let head = parse_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: X-A, Close\r\nX-A: a\r\n\r\n",
            AnswerHeaders::All,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            head.headers.keys().map(|n| n.as_str()).collect::<Vec<_>>(),
            ["content-length"]
        );
        assert!(!head.reusable);
    }

    /// The proxy's answers keep the headers no one reads as the upstream
    /// wrote them, in order; those the gateway reads or sets go to the map,
    /// `Content-Length` is read from the lines.
    #[test]
    fn headers_no_one_reads_are_passed_on_as_lines() {
        let head = parse_head(
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 06 Dec 2026 11:00:00 GMT\r\n\
              Content-Type: application/json\r\nContent-Length: 12\r\n\
              Connection: keep-alive\r\nX-Request-Id: up\r\nRateLimit-Limit: 5\r\n\
              Set-Cookie: a=1\r\nset-cookie: b=2\r\n\r\n",
            AnswerHeaders::All,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            std::str::from_utf8(head.passed.as_bytes()).unwrap(),
            "Server: nginx\r\nDate: Sun, 06 Dec 2026 11:00:00 GMT\r\n\
             Content-Type: application/json\r\nContent-Length: 12\r\n\
             Set-Cookie: a=1\r\nset-cookie: b=2\r\n"
        );
        assert!(head.passed.has_date());
        assert_eq!(head.passed.content_length(), Some(12));
        assert!(matches!(head.framing, Framing::Length(12)));
        assert!(head.reusable);
        let mut names: Vec<_> = head.headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["ratelimit-limit", "x-request-id"]);

        // Read back into a map, they are what the map alone would have held.
        let mut all = head.headers;
        head.passed.append_to(&mut all);
        assert_eq!(all["server"], "nginx");
        assert_eq!(all["content-length"], "12");
        assert_eq!(all.get_all("set-cookie").iter().count(), 2);
        assert_eq!(all.len(), 8);
    }

    /// A bad or contradicting `Content-Length` fails the answer whether the
    /// header is passed on as a line or read into the map.
    #[test]
    fn a_bad_content_length_fails_either_way() {
        for wanted in [AnswerHeaders::All, AnswerHeaders::OnFailure] {
            for head in [
                &b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..],
                b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            ] {
                assert!(parse_head(head, wanted).is_err(), "{wanted:?}");
            }
            let head = parse_head(
                b"HTTP/1.1 200 OK\r\ncontent-length:  3 \r\nContent-Length: 3\r\n\r\n",
                wanted,
            )
            .unwrap()
            .unwrap();
            assert!(matches!(head.framing, Framing::Length(3)));
        }
    }

    /// An AI call's successful answer keeps no header, yet is framed and
    /// its connection kept or closed as its headers say, whatever their
    /// case; a failed one keeps them all, for its `Retry-After`.
    #[test]
    fn an_ai_call_reads_the_headers_of_a_failure_only() {
        let success = |head: &[u8]| parse_head(head, AnswerHeaders::OnFailure).unwrap().unwrap();
        let head = success(
            b"HTTP/1.1 200 OK\r\nx-ratelimit-remaining-requests: 9\r\nSet-Cookie: a=b\r\n\
              TRANSFER-ENCODING: chunked\r\n\r\n",
        );
        assert!(head.headers.is_empty());
        assert!(matches!(head.framing, Framing::Chunked(_)));
        assert!(head.reusable);
        let head = success(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nConnection: close\r\n\r\n");
        assert!(head.headers.is_empty());
        assert!(matches!(head.framing, Framing::Length(12)));
        assert!(!head.reusable);
        // Framing headers are still checked.
        assert!(parse_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            AnswerHeaders::OnFailure
        )
        .is_err());

        let failure = parse_head(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 2\r\n\r\n",
            AnswerHeaders::OnFailure,
        )
        .unwrap()
        .unwrap();
        assert_eq!(failure.headers["retry-after"], "7");
        assert!(matches!(failure.framing, Framing::Length(2)));
    }

    #[tokio::test]
    async fn content_length_and_close_delimited_answers() {
        let (addr, accepted) = server(Script {
            pieces: vec![
                b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\nab",
                b"cd",
            ],
            close: false,
        })
        .await;
        let pool = Arc::new(H1Pool::new(addr.clone()));
        assert_eq!(
            call(&pool, &addr).await.unwrap(),
            (201, Bytes::from("abcd"))
        );
        assert_eq!(
            call(&pool, &addr).await.unwrap(),
            (201, Bytes::from("abcd"))
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        let (addr, accepted) = server(Script {
            pieces: vec![b"HTTP/1.1 200 OK\r\n\r\nuntil", b" the end"],
            close: true,
        })
        .await;
        let pool = Arc::new(H1Pool::new(addr.clone()));
        assert_eq!(
            call(&pool, &addr).await.unwrap(),
            (200, Bytes::from("until the end"))
        );
        assert_eq!(
            call(&pool, &addr).await.unwrap(),
            (200, Bytes::from("until the end"))
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "never reused");
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_replaced() {
        let (addr, accepted) = server(Script {
            pieces: vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
            close: true,
        })
        .await;
        let pool = Arc::new(H1Pool::new(addr.clone()));
        for _ in 0..3 {
            assert_eq!(call(&pool, &addr).await.unwrap(), (200, Bytes::from("ok")));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_informational_head_is_skipped() {
        let (addr, _) = server(Script {
            pieces: vec![
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            ],
            close: false,
        })
        .await;
        let pool = Arc::new(H1Pool::new(addr.clone()));
        assert_eq!(call(&pool, &addr).await.unwrap(), (200, Bytes::from("ok")));
    }

    #[tokio::test]
    async fn broken_answers_are_errors() {
        for pieces in [
            vec![&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..]],
            vec![&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc"[..]],
            vec![&b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"[..]],
        ] {
            let (addr, _) = server(Script {
                pieces,
                close: true,
            })
            .await;
            let pool = Arc::new(H1Pool::new(addr.clone()));
            assert!(call(&pool, &addr).await.is_err());
        }
        for pieces in [
            vec![&b"NOT HTTP\r\n\r\n"[..]],
            vec![&b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"[..]],
        ] {
            let (addr, _) = server(Script {
                pieces,
                close: true,
            })
            .await;
            let pool = Arc::new(H1Pool::new(addr.clone()));
            assert!(matches!(
                pool.send_call(&request(&addr), "/", TIMEOUTS).await,
                Err(SendError::Broken(_))
            ));
        }
        // Nobody listening: a connect error, which the attempt chain fails over.
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let pool = Arc::new(H1Pool::new(addr.clone()));
        assert!(matches!(
            pool.send_call(&request(&addr), "/", TIMEOUTS).await,
            Err(SendError::Connect(_))
        ));
    }
}
