//! A lean HTTP/1.1 server for the requests nearly all traffic is made of:
//! HTTP/1.1, no upgrade, and no body or a small one that came whole with its
//! head (an API call's JSON, a chat completion's prompt). It reads heads with
//! `httparse`, runs the pipeline in the connection's own task and writes
//! each answer in one go.
//!
//! hyper's server (behind hyper-util's protocol detection and the
//! [`FramingGuard`](crate::framing::FramingGuard)) cost ~8,000 instructions
//! a proxied request more than this loop (`bench/lean-h1-spike`): protocol
//! detection and its rewind, the guard's second scan of every head, hyper's
//! dispatcher and its per-request state.
//!
//! Anything else is hyper's. The first request this loop would not serve
//! as simply (a chunked body, or one still to come, `Upgrade`, `CONNECT`,
//! `Expect`, HTTP/1.0, the HTTP/2
//! preface, a head it cannot parse or that is too large) hands the whole
//! connection over: hyper gets the bytes read so far, then the socket, and
//! keeps the connection to its end. hyper so answers every malformed or
//! oversized head exactly as before, and every framing rule for bodies stays
//! in one place.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::body::{ClientBody, ResponseBody};
use crate::conn_timeouts::ConnectionTimeouts;
use crate::forwarding;
use crate::passed_lines::PassedLines;
use crate::proxy::{ConnInfo, Proxy};

/// What the connection reads into at first; it grows up to the largest head.
const INITIAL_READ: usize = 4096;
/// Room in a request's header map for the headers the pipeline adds
/// (forwarding headers, request id, `traceparent`): it then grows at most once.
const ADDED_HEADERS: usize = 8;
/// The most write buffer a connection keeps between requests: what one
/// large answer grew it to is given back.
const KEEP_WRITE: usize = 8 * 1024;
/// Answer bytes gathered before they are written, and the size from which a
/// body's data is written as it is rather than copied.
const WRITE_GATHER: usize = 16 * 1024;
/// A body's length has at most this many digits here (under 10 GB); a
/// longer one is hyper's to frame or refuse.
const MAX_BODY_DIGITS: usize = 10;
/// Header slots on the stack: a head with more goes to hyper.
const MAX_SLOTS: usize = 128;
/// The HTTP/2 connection preface begins so; nothing HTTP/1 does.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// A connection this loop gives to hyper: the socket, the bytes read from it
/// and not yet served, and its clocks.
pub struct Handoff<S> {
    pub stream: S,
    pub unread: Vec<u8>,
    pub clocks: ConnectionTimeouts,
    /// Requests served before.
    pub heads: u64,
}

/// The connection's limits this loop needs.
pub struct HeadLimits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
}

/// A request head, parsed.
struct Head {
    request: Request<ClientBody>,
    /// The client asked to close after this request.
    close: bool,
}

// A head is moved once, from the parser to the pipeline: boxed, it would
// cost an allocation a request.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Head(Head),
    /// Not all of the head has come yet.
    Partial,
    /// For hyper to serve (see the module docs).
    Hyper,
}

struct Connection<S> {
    stream: S,
    /// `buf[start..end]` is read and not yet served.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: Vec<u8>,
    clocks: ConnectionTimeouts,
    /// Requests served so far: the number of the next head.
    heads: u64,
}

/// Serves the connection until it ends (`None`), or until hyper must take
/// it over (`Some`). `shutdown` turning true ends it between two requests.
pub async fn serve<S>(
    stream: S,
    conn: &ConnInfo,
    proxy: &Proxy,
    limits: &HeadLimits,
    clocks: ConnectionTimeouts,
    shutdown: watch::Receiver<bool>,
) -> Option<Handoff<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut c = Connection {
        stream,
        buf: vec![0; INITIAL_READ],
        start: 0,
        end: 0,
        out: Vec::with_capacity(1024),
        clocks,
        heads: 0,
    };
    let mut waiter = shutdown.clone();
    let mut stopping = pin!(waiter.wait_for(|stop| *stop));
    loop {
        let head = loop {
            match parse(&c.buf[c.start..c.end], c.heads == 0, limits) {
                Ok((Parsed::Head(head), length)) => {
                    c.start += length;
                    break head;
                }
                Ok((Parsed::Partial, _)) if c.end - c.start < limits.max_head_bytes => {}
                Ok(_) | Err(()) => return Some(c.hand_off()),
            }
            if c.start == c.end {
                (c.start, c.end) = (0, 0);
            }
            // The read first: the stop is looked at only while the
            // connection waits. Polling it first cost a lock of the watch's
            // waiters (~150 instructions) on every request; a request read
            // as the stop comes is served, and its answer closes.
            let read = tokio::select! {
                biased;
                read = c.read(limits.max_head_bytes) => read,
                _ = &mut stopping => return None,
            };
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        };
        c.heads += 1;
        let is_head = head.request.method() == Method::HEAD;
        let response = proxy.handle_passing_lines(conn, head.request).await;
        // Shutting down: this answer is the connection's last, and says so.
        let stop = *shutdown.borrow();
        match c.respond(response, is_head, head.close || stop).await {
            Ok(true) => c.trim_buffers(),
            Ok(false) | Err(_) => {
                let _ = poll_fn(|cx| Pin::new(&mut c.stream).poll_shutdown(cx)).await;
                return None;
            }
        }
    }
}

/// Parses the head at the start of `buf`, and says how long it is.
fn parse(buf: &[u8], first: bool, limits: &HeadLimits) -> Result<(Parsed, usize), ()> {
    if buf.is_empty() {
        return Ok((Parsed::Partial, 0));
    }
    // The HTTP/2 preface (h2c with prior knowledge, or h2 over TLS).
    if first {
        let n = buf.len().min(H2_PREFACE_START.len());
        if buf[..n] == H2_PREFACE_START[..n] {
            return Ok((Parsed::Hyper, 0));
        }
    }
    // Uninitialised: filling the slots costs more than parsing a short head.
    // A head with more headers than there are slots is hyper's to refuse.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_SLOTS];
    let slots = &mut slots[..limits.max_headers.min(MAX_SLOTS)];
    let mut parsed = httparse::Request::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        slots,
    ) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok((Parsed::Partial, 0)),
        Err(_) => return Err(()),
    };
    if parsed.version != Some(1) {
        return Ok((Parsed::Hyper, length));
    }
    let method = match parsed.method.map(str::as_bytes) {
        Some(b"GET") => Method::GET,
        Some(b"HEAD") => Method::HEAD,
        Some(b"CONNECT") | None => return Ok((Parsed::Hyper, length)),
        Some(other) => Method::from_bytes(other).map_err(|_| ())?,
    };
    // A body is read with its head only when it came whole with it:
    // waiting for one is hyper's.
    let body_length = match declared_length(parsed.headers) {
        Ok(body_length) if length + body_length <= buf.len() => body_length,
        _ => return Ok((Parsed::Hyper, length)),
    };
    // The target, the header values and the body share one copy of the
    // request, as hyper's head does, rather than each being copied on its
    // own (an allocation each).
    let copy = Bytes::copy_from_slice(&buf[..length + body_length]);
    let shared = |part: &[u8]| {
        let at = part.as_ptr() as usize - buf.as_ptr() as usize;
        copy.slice(at..at + part.len())
    };
    let uri = match parsed.path {
        Some(path) => Uri::from_maybe_shared(shared(path.as_bytes())).map_err(|_| ())?,
        None => return Err(()),
    };
    let mut headers = HeaderMap::with_capacity(parsed.headers.len() + ADDED_HEADERS);
    let mut close = false;
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| ())?;
        let value = HeaderValue::from_maybe_shared(shared(h.value)).map_err(|_| ())?;
        if name == header::CONNECTION {
            close |= forwarding::connection_options(&value).close;
        } else if name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::EXPECT
        {
            return Ok((Parsed::Hyper, length));
        }
        headers.append(name, value);
    }
    let body = match body_length {
        0 => ClientBody::empty(),
        _ => ClientBody::whole(copy.slice(length..)),
    };
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Ok((Parsed::Head(Head { request, close }), length + body_length))
}

/// The body's length by `Content-Length` (0 without one). `Err` for
/// anything but one header of digits: hyper frames or refuses the rest.
fn declared_length(headers: &[httparse::Header<'_>]) -> Result<usize, ()> {
    let mut declared = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| h.value);
    let Some(digits) = declared.next() else {
        return Ok(0);
    };
    if declared.next().is_some() || digits.len() > MAX_BODY_DIGITS {
        return Err(());
    }
    let length = crate::framing::content_length_value(digits).ok_or(())?;
    usize::try_from(length).map_err(|_| ())
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Reads more of the next head; 0 at the end of the stream.
    async fn read(&mut self, max_head: usize) -> io::Result<usize> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            } else {
                let len = (self.buf.len() * 2).min(max_head.max(self.buf.len() + 1));
                self.buf.resize(len, 0);
            }
        }
        // A new connection's first head is timed from the start; a later
        // one from its first byte (`conn_timeouts`).
        let head = (self.heads == 0 || self.start < self.end).then_some(self.heads);
        poll_fn(|cx| {
            let mut read = ReadBuf::new(&mut self.buf[self.end..]);
            let polled = Pin::new(&mut self.stream)
                .poll_read(cx, &mut read)
                .map_ok(|()| read.filled().len());
            let polled = self.clocks.track(cx, polled, head);
            if let Poll::Ready(Ok(n)) = polled {
                self.end += n;
            }
            polled
        })
        .await
    }

    /// Gives back what a large head or answer grew the buffers to, so an
    /// idle connection holds a few KB whatever it once served.
    fn trim_buffers(&mut self) {
        if self.out.capacity() > KEEP_WRITE {
            self.out = Vec::with_capacity(1024);
        }
        if self.start == self.end && self.buf.len() > INITIAL_READ {
            self.buf = vec![0; INITIAL_READ];
            (self.start, self.end) = (0, 0);
        }
    }

    fn hand_off(mut self) -> Handoff<S> {
        self.buf.truncate(self.end);
        self.buf.drain(..self.start);
        Handoff {
            stream: self.stream,
            unread: self.buf,
            clocks: self.clocks,
            heads: self.heads,
        }
    }

    /// Writes the answer; whether the connection may serve another request.
    async fn respond(
        &mut self,
        response: Response<ResponseBody>,
        is_head: bool,
        mut close: bool,
    ) -> io::Result<bool> {
        let (parts, mut body) = response.into_parts();
        let lines = body.take_passed_lines();
        let mut body = pin!(body);
        close |= parts
            .headers
            .get(header::CONNECTION)
            .is_some_and(|value| forwarding::connection_options(value).close);
        let status = parts.status;
        let bodiless = is_head
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        // An answer that cannot say its own length has no other framing.
        let declared = match lines.content_length() {
            Some(length) => Some(length),
            None => crate::proxy::content_length(&parts.headers)
                .map_err(|()| io::Error::other("a bad Content-Length in an answer"))?,
        };
        let mut framing = match declared.or(body.size_hint().exact()) {
            Some(length) => Framing::Length(length),
            None => Framing::Chunked,
        };
        self.out.clear();
        encode_head(&mut self.out, status, &lines, &parts.headers);
        match framing {
            // A HEAD's or a 304's headers are the GET's, as the pipeline gave them.
            _ if bodiless => {}
            Framing::Length(length) if declared.is_none() => {
                self.out.extend_from_slice(b"content-length: ");
                self.out
                    .extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
                self.out.extend_from_slice(b"\r\n");
            }
            Framing::Length(_) => {}
            Framing::Chunked => self
                .out
                .extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        if close {
            self.out.extend_from_slice(b"connection: close\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        if bodiless {
            // Left unread: an upstream body that is not empty closes its own
            // connection when dropped.
            self.flush().await?;
            return Ok(!close);
        }
        loop {
            // Whatever is ready now goes out with the head; the bytes
            // gathered are written once the body has to wait.
            let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    self.flush().await?;
                    poll_fn(|cx| body.as_mut().poll_frame(cx)).await
                }
            };
            let data = match frame {
                None => break,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    // Trailers: HTTP/1.1 clients rarely ask for them; dropped as hyper does.
                    Err(_) => continue,
                },
                Some(Err(error)) => {
                    // The answer cannot be completed: the client must see it cut short.
                    self.flush().await?;
                    return Err(io::Error::other(error));
                }
            };
            self.body_data(&mut framing, data).await?;
        }
        match framing {
            Framing::Chunked => self.out.extend_from_slice(b"0\r\n\r\n"),
            // Shorter than it said: the client can only tell by the connection's end.
            Framing::Length(left) => close |= left > 0,
        }
        self.flush().await?;
        Ok(!close)
    }

    /// One data frame of an answer's body, framed.
    async fn body_data(&mut self, framing: &mut Framing, mut data: Bytes) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        match framing {
            Framing::Length(left) => {
                // Past its declared length an answer is cut there.
                data.truncate(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= data.len() as u64;
            }
            Framing::Chunked => {
                let mut size = [0u8; 16];
                let size = hex_size(data.len(), &mut size);
                self.out.extend_from_slice(size);
                self.out.extend_from_slice(b"\r\n");
            }
        }
        if self.out.len() + data.len() <= WRITE_GATHER {
            self.out.extend_from_slice(&data);
        } else {
            self.flush().await?;
            self.write_all_of(&data).await?;
        }
        if matches!(framing, Framing::Chunked) {
            self.out.extend_from_slice(b"\r\n");
        }
        Ok(())
    }

    /// Writes the gathered bytes.
    async fn flush(&mut self) -> io::Result<()> {
        let out = std::mem::take(&mut self.out);
        let written = self.write_all_of(&out).await;
        self.out = out;
        self.out.clear();
        written?;
        poll_fn(|cx| {
            let polled = Pin::new(&mut self.stream).poll_flush(cx);
            self.clocks.track(cx, polled, None)
        })
        .await
    }

    async fn write_all_of(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = poll_fn(|cx| {
                let polled = Pin::new(&mut self.stream).poll_write(cx, bytes);
                self.clocks.track(cx, polled, None)
            })
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

enum Framing {
    /// Bytes of body left to write.
    Length(u64),
    Chunked,
}

/// The status line and the answer's headers, the upstream's lines passed
/// on unread first, with `Date` unless it has one.
fn encode_head(out: &mut Vec<u8>, status: StatusCode, lines: &PassedLines, headers: &HeaderMap) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(lines.as_bytes());
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !lines.has_date() && !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        crate::http_date::now(|date| out.extend_from_slice(date));
        out.extend_from_slice(b"\r\n");
    }
}

/// `n` in hexadecimal, as a chunk's size line says it.
fn hex_size(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// A connection handed to hyper: the bytes the lean loop read and did not
/// serve come first, then the socket's.
pub struct Rewound<S> {
    unread: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Rewound<S> {
    /// The connection to hand hyper, its clocks, and how many requests it served.
    pub fn new(handoff: Handoff<S>) -> (Rewound<S>, ConnectionTimeouts, u64) {
        let rewound = Rewound {
            unread: handoff.unread,
            at: 0,
            inner: handoff.stream,
        };
        (rewound, handoff.clocks, handoff.heads)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.unread.len() {
            let n = (this.unread.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.unread[this.at..this.at + n]);
            this.at += n;
            if this.at == this.unread.len() {
                this.unread = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_head_bytes: 8192,
        max_headers: 4,
    };

    fn parsed(head: &str, first: bool) -> Result<Parsed, ()> {
        parse(head.as_bytes(), first, &LIMITS).map(|(parsed, _)| parsed)
    }

    fn is_hyper(head: &str) -> bool {
        matches!(parsed(head, true), Ok(Parsed::Hyper))
    }

    #[test]
    fn bodiless_http_1_1_requests_are_served_here() {
        let head = "GET /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nGET /next";
        let (parsed, length) = parse(head.as_bytes(), true, &LIMITS).unwrap();
        let Parsed::Head(head) = parsed else {
            panic!("not served here")
        };
        assert_eq!(
            length,
            "GET /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".len()
        );
        assert_eq!(head.request.uri(), "/a?b=c");
        assert_eq!(head.request.headers()["host"], "x");
        assert!(!head.close);
        assert_eq!(head.request.body().size_hint().exact(), Some(0));
        // A body that came whole with its head is read with it, in the length.
        let posted = "POST / HTTP/1.1\r\nContent-Length: 0012\r\n\r\nhello, world";
        let (parsed, length) = parse(posted.as_bytes(), false, &LIMITS).unwrap();
        let Parsed::Head(posted_head) = parsed else {
            panic!("not served here")
        };
        assert_eq!(posted_head.request.body().size_hint().exact(), Some(12));
        assert_eq!(length, posted.len());
        // One still to come is hyper's to wait for.
        assert!(is_hyper(
            "POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\nhello"
        ));
        let closing = parsed_head("DELETE / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n");
        assert_eq!(closing.request.method(), Method::DELETE);
        assert!(closing.close);
    }

    fn parsed_head(head: &str) -> Head {
        match parsed(head, false) {
            Ok(Parsed::Head(head)) => head,
            _ => panic!("not served here: {head:?}"),
        }
    }

    #[test]
    fn everything_else_is_handed_to_hyper() {
        for head in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nContent-Length: 12345678901\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET /chat HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            // Maybe the preface: hyper looks.
            "PR",
        ] {
            assert!(is_hyper(head), "{head:?}");
        }
        // The preface only opens a connection.
        assert!(matches!(parsed("PR", false), Ok(Parsed::Partial)));
    }

    #[test]
    fn heads_it_cannot_parse_are_errors_for_hyper_to_answer() {
        for head in [
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n",
            "G\u{1}T / HTTP/1.1\r\n\r\n",
        ] {
            assert!(parsed(head, true).is_err(), "{head:?}");
        }
        assert!(matches!(
            parsed("GET / HTTP/1.1\r\nHost:", true),
            Ok(Parsed::Partial)
        ));
    }

    #[tokio::test]
    async fn buffers_grown_by_one_request_are_given_back() {
        let (stream, _peer) = tokio::io::duplex(64);
        let clocks = ConnectionTimeouts::new(
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(10),
        );
        let mut c = Connection {
            stream,
            buf: vec![0; 16 * 1024],
            start: 100,
            end: 100,
            out: Vec::with_capacity(32 * 1024),
            clocks,
            heads: 1,
        };
        c.trim_buffers();
        assert_eq!(c.buf.len(), INITIAL_READ);
        assert_eq!((c.start, c.end), (0, 0));
        assert!(c.out.capacity() <= KEEP_WRITE);
        // Bytes of the next request are kept, and so is a buffer in use.
        c.buf = vec![0; 16 * 1024];
        (c.start, c.end) = (10, 20);
        c.trim_buffers();
        assert_eq!(c.buf.len(), 16 * 1024);
        assert_eq!((c.start, c.end), (10, 20));
    }

    #[test]
    fn chunk_sizes_are_hexadecimal() {
        let mut buf = [0; 16];
        assert_eq!(hex_size(0, &mut buf), b"0");
        assert_eq!(hex_size(255, &mut buf), b"ff");
        assert_eq!(hex_size(0x1a2b3, &mut buf), b"1a2b3");
        assert_eq!(hex_size(usize::MAX, &mut buf), b"ffffffffffffffff");
    }

    #[test]
    fn heads_have_a_status_line_and_a_date() {
        let mut out = Vec::new();
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        encode_head(
            &mut out,
            StatusCode::NOT_FOUND,
            &PassedLines::default(),
            &headers,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 404 Not Found\r\nx-a: 1\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n"), "{text}");
        headers.insert(header::DATE, HeaderValue::from_static("then"));
        let mut out = Vec::new();
        encode_head(&mut out, StatusCode::OK, &PassedLines::default(), &headers);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: then\r\n");
    }
}
