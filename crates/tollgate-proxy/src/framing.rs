//! HTTP/1.1 request framing, followed alongside hyper, so that a request
//! carrying both `Content-Length` and `Transfer-Encoding` is refused.
//!
//! hyper frames such a request by `Transfer-Encoding` and silently drops the
//! `Content-Length`, so the pipeline could never tell it apart from a plain
//! chunked request. [`FramingGuard`] sits between the socket and hyper and
//! reads every HTTP/1 request head before hyper does. When a head has both
//! headers, the guard renames the *later* of the two in place to a marker
//! name of the same length ([`TE_MARKER`] for a `Transfer-Encoding`,
//! [`CL_MARKER`] for a `Content-Length`): hyper frames the request by the one
//! left, the byte counts do not change, and the pipeline refuses the request
//! with a closing 400 because it sees a marker ([`has_conflicting_framing`]).
//! Renaming the later header means the guard only ever holds back one
//! unfinished head line, never a whole head.
//!
//! To find the next head on a keep-alive connection the guard skips bodies as
//! hyper does (Content-Length bytes, or chunked framing with extensions and
//! trailers). It stops guarding, and passes every byte through, on the
//! HTTP/2 preface, after the head of an `Upgrade` or `CONNECT` request, on a
//! head line longer than the largest head hyper accepts, and on anything it
//! cannot follow, which hyper refuses itself (and closes the connection).
//!
//! It must never change a byte count, touch a body, or hand hyper part of an
//! unfinished head line. Writes pass through untouched.
//!
//! Knowing where heads begin and end, the guard also keeps the connection's
//! clocks (`conn_timeouts::ConnectionTimeouts`): every read and write goes
//! through them, with the number of the head that is unfinished, if one is.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderMap, HeaderName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn_timeouts::ConnectionTimeouts;

/// The name a `Transfer-Encoding` header is renamed to when its head already
/// has a `Content-Length`.
pub const TE_MARKER: HeaderName = HeaderName::from_static(TE_MARKER_NAME);
/// The name a `Content-Length` header is renamed to when its head already
/// has a `Transfer-Encoding`.
pub const CL_MARKER: HeaderName = HeaderName::from_static(CL_MARKER_NAME);

const TE_MARKER_NAME: &str = "x-tollgate-te-dup";
const CL_MARKER_NAME: &str = "x-tollgate-dup";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding";
const CONTENT_LENGTH: &[u8] = b"content-length";
// Renaming in place must not change the length of the head.
const _: () = assert!(TE_MARKER_NAME.len() == TRANSFER_ENCODING.len());
const _: () = assert!(CL_MARKER_NAME.len() == CONTENT_LENGTH.len());

/// How many bytes the guard asks for when it reads into its own buffer.
const READ_CHUNK: usize = 4096;

/// Whether a request came with both `Content-Length` and `Transfer-Encoding`:
/// a marker left by [`FramingGuard`], or both headers (should a protocol
/// layer ever keep them).
pub fn has_conflicting_framing(headers: &HeaderMap) -> bool {
    headers.contains_key(TE_MARKER)
        || headers.contains_key(CL_MARKER)
        || (headers.contains_key(http::header::TRANSFER_ENCODING)
            && headers.contains_key(http::header::CONTENT_LENGTH))
}

/// An IO wrapper that marks requests framed by both `Content-Length` and
/// `Transfer-Encoding` before hyper parses them (see the module docs).
pub struct FramingGuard<S> {
    inner: S,
    framer: Framer,
    held: Held,
    clocks: ConnectionTimeouts,
}

impl<S> FramingGuard<S> {
    /// `max_head` is the largest request head hyper accepts: a head line
    /// longer than that is passed through for hyper to refuse.
    pub fn new(inner: S, max_head: usize, clocks: ConnectionTimeouts) -> Self {
        FramingGuard {
            inner,
            framer: Framer::new(max_head),
            held: Held::default(),
            clocks,
        }
    }

    /// For a connection the lean server (`h1_server`) served `heads`
    /// requests on before handing it over: heads are numbered on from
    /// there, so the clocks never take a later head for one they timed.
    pub fn numbered_from(mut self, heads: u64) -> Self {
        self.framer.heads = heads;
        self
    }

    /// The number on this connection of the request head that has begun and
    /// not ended, if one has. A new connection's first head counts from the
    /// start: a client that connects and sends nothing is timed too.
    fn unfinished_head(&self) -> Option<u64> {
        let framer = &self.framer;
        let begun = match framer.state {
            State::Headers => true,
            State::RequestLine => framer.heads == 0 || !self.held.is_empty(),
            _ => false,
        };
        begun.then_some(framer.heads)
    }

    /// `polled`, an operation on the inner stream, through the clocks.
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        // Only an operation that has to wait can time out.
        let head = if polled.is_pending() {
            self.unfinished_head()
        } else {
            None
        };
        self.clocks.track(cx, polled, head)
    }
}

/// Bytes read from the socket but not yet handed on: `buf[start..ready]` are
/// decided, `buf[ready..end]` are an unfinished head line. Allocated on the
/// first head line split across reads, and kept for the connection.
#[derive(Default)]
struct Held {
    buf: Vec<u8>,
    start: usize,
    ready: usize,
    end: usize,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Hands decided bytes to `out`; whether there were any.
    fn deliver(&mut self, out: &mut ReadBuf<'_>) -> bool {
        if self.start == self.ready {
            return false;
        }
        let n = (self.ready - self.start).min(out.remaining());
        out.put_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        if self.start == self.end {
            (self.start, self.ready, self.end) = (0, 0, 0);
        }
        true
    }

    /// Makes room for a read of at least `READ_CHUNK` bytes after `end`.
    fn make_room(&mut self) {
        if self.buf.len() - self.end >= READ_CHUNK {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            (self.ready, self.end) = (self.ready - self.start, self.end - self.start);
            self.start = 0;
        }
        if self.buf.len() - self.end < READ_CHUNK {
            let len = (self.buf.len() * 2).max(self.end + READ_CHUNK);
            self.buf.resize(len, 0);
        }
    }

    /// Keeps an unfinished head line (the buffer is empty).
    fn hold(&mut self, line: &[u8]) {
        debug_assert!(self.is_empty());
        if self.buf.len() < line.len() + READ_CHUNK {
            self.buf.resize(line.len() + READ_CHUNK, 0);
        }
        self.buf[..line.len()].copy_from_slice(line);
        (self.start, self.ready, self.end) = (0, 0, line.len());
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.held.deliver(buf) {
                return Poll::Ready(Ok(()));
            }
            if this.held.is_empty() {
                if this.framer.is_passthrough() {
                    let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
                    return this.timed(cx, polled);
                }
                // The usual case: read straight into hyper's buffer and look
                // at the new bytes there.
                let before = buf.filled().len();
                let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
                ready!(this.timed(cx, polled))?;
                let new = &mut buf.filled_mut()[before..];
                let len = new.len();
                let decided = this.framer.scan(new);
                if decided == len {
                    return Poll::Ready(Ok(()));
                }
                this.held.hold(&new[decided..]);
                buf.set_filled(before + decided);
                if decided > 0 {
                    return Poll::Ready(Ok(()));
                }
                // Nothing decided yet: returning now would read as EOF.
                continue;
            }
            // An unfinished head line is held: read the rest of it after it.
            let held = &mut this.held;
            held.make_room();
            let mut read = ReadBuf::new(&mut held.buf[held.end..]);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut read);
            let n = read.filled().len();
            ready!(this.timed(cx, polled))?;
            let held = &mut this.held;
            if n == 0 {
                // EOF in the middle of a head: hyper reports the incomplete request.
                this.framer.stop();
                held.ready = held.end;
                continue;
            }
            held.end += n;
            let decided = this.framer.scan(&mut held.buf[held.start..held.end]);
            held.ready = held.start + decided;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramingGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.timed(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.timed(cx, polled)
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

/// Where the guard is in the request stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before a request line; empty lines are skipped, as hyper does.
    RequestLine,
    /// The header lines of a head, up to the empty line.
    Headers,
    /// A body framed by Content-Length: the bytes still to come.
    Body(u64),
    Chunked(Chunk),
    /// Not guarding any more: every byte goes through.
    Passthrough,
}

/// Chunked framing, step by step as hyper's decoder takes it (CRLF only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    SizeStart,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: the end, or a trailer line.
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

/// What a head said about its framing so far.
#[derive(Clone, Copy, Debug, Default)]
struct Head {
    http11: bool,
    upgrade: bool,
    /// A `Transfer-Encoding` hyper will see.
    chunked: bool,
    /// The `Content-Length` hyper will see.
    length: Length,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Length {
    #[default]
    Absent,
    Valid(u64),
    /// hyper refuses the request.
    Invalid,
}

/// The guard's state machine over the bytes of one connection.
#[derive(Debug)]
struct Framer {
    state: State,
    head: Head,
    /// Request heads ended so far.
    heads: u64,
    max_line: usize,
    /// How much of the unfinished head line `scan` last stopped at holds no LF.
    searched: usize,
}

impl Framer {
    fn new(max_line: usize) -> Self {
        Framer {
            state: State::RequestLine,
            head: Head::default(),
            heads: 0,
            max_line,
            searched: 0,
        }
    }

    fn is_passthrough(&self) -> bool {
        self.state == State::Passthrough
    }

    fn stop(&mut self) {
        self.state = State::Passthrough;
    }

    /// Follows `bytes`, renaming headers in place, and returns how many of
    /// them may be handed on. The rest is an unfinished head line: the next
    /// call's bytes must start with it.
    fn scan(&mut self, bytes: &mut [u8]) -> usize {
        let mut pos = 0;
        let mut searched = std::mem::take(&mut self.searched);
        while pos < bytes.len() {
            match self.state {
                State::Passthrough => return bytes.len(),
                State::RequestLine | State::Headers => {
                    let from = pos + searched;
                    searched = 0;
                    let Some(lf) = memchr::memchr(b'\n', &bytes[from..]) else {
                        let unfinished = bytes.len() - pos;
                        if unfinished > self.max_line {
                            // hyper refuses a head this large.
                            self.stop();
                            return bytes.len();
                        }
                        self.searched = unfinished;
                        return pos;
                    };
                    let end = from + lf;
                    let line = &mut bytes[pos..end];
                    let line = match line {
                        [rest @ .., b'\r'] => rest,
                        line => line,
                    };
                    if self.state == State::RequestLine {
                        self.request_line(line);
                    } else {
                        self.header_line(line);
                    }
                    pos = end + 1;
                }
                State::Body(left) => {
                    let n = skip(left, bytes.len() - pos);
                    pos += n;
                    self.state = match left - n as u64 {
                        0 => State::RequestLine,
                        left => State::Body(left),
                    };
                }
                State::Chunked(Chunk::Data(left)) => {
                    let n = skip(left, bytes.len() - pos);
                    pos += n;
                    self.state = State::Chunked(match left - n as u64 {
                        0 => Chunk::DataCr,
                        left => Chunk::Data(left),
                    });
                }
                State::Chunked(chunk) => {
                    self.state = chunk_step(chunk, bytes[pos]);
                    pos += 1;
                }
            }
        }
        pos
    }

    /// A line (without its line ending) where a request line is expected.
    fn request_line(&mut self, line: &[u8]) {
        if line.is_empty() {
            return;
        }
        let first = memchr::memchr(b' ', line);
        let last = memchr::memrchr(b' ', line);
        let (Some(first), Some(last)) = (first, last) else {
            return self.stop();
        };
        // Anything else, the HTTP/2 preface (`PRI * HTTP/2.0`) included, is
        // not HTTP/1 for hyper.
        let http11 = match &line[last + 1..] {
            b"HTTP/1.1" => true,
            b"HTTP/1.0" => false,
            _ => return self.stop(),
        };
        if first == last {
            return self.stop();
        }
        self.head = Head {
            http11,
            upgrade: &line[..first] == b"CONNECT",
            ..Head::default()
        };
        self.state = State::Headers;
    }

    /// A header line (without its line ending), or the empty line ending the head.
    fn header_line(&mut self, line: &mut [u8]) {
        let Some(&first) = line.first() else {
            return self.end_of_head();
        };
        // An obs-fold continuation line, refused by hyper.
        if first == b' ' || first == b'\t' {
            return self.stop();
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return self.stop();
        };
        let (name, value) = line.split_at_mut(colon);
        let head = &mut self.head;
        if name.eq_ignore_ascii_case(TRANSFER_ENCODING) {
            if head.length == Length::Absent {
                head.chunked = true;
            } else {
                name.copy_from_slice(TE_MARKER_NAME.as_bytes());
            }
        } else if name.eq_ignore_ascii_case(CONTENT_LENGTH) {
            if head.chunked {
                name.copy_from_slice(CL_MARKER_NAME.as_bytes());
            } else {
                head.length = match (head.length, content_length_value(&value[1..])) {
                    (Length::Absent, Some(n)) => Length::Valid(n),
                    (Length::Valid(prev), Some(n)) if prev == n => Length::Valid(n),
                    _ => Length::Invalid,
                };
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            head.upgrade |= head.http11;
        }
    }

    fn end_of_head(&mut self) {
        self.heads += 1;
        let head = self.head;
        self.state = if head.upgrade {
            // What follows may be another protocol.
            State::Passthrough
        } else if head.chunked {
            State::Chunked(Chunk::SizeStart)
        } else {
            match head.length {
                Length::Valid(0) | Length::Absent => State::RequestLine,
                Length::Valid(n) => State::Body(n),
                Length::Invalid => State::Passthrough,
            }
        };
    }
}

/// How many of `available` bytes belong to a body with `left` bytes to come.
fn skip(left: u64, available: usize) -> usize {
    usize::try_from(left).map_or(available, |left| left.min(available))
}

/// A Content-Length value as hyper reads it: digits only (no sign), within
/// `u64`, the surrounding whitespace trimmed. Every reader of the header
/// in the gateway parses it here.
pub(crate) fn content_length_value(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

fn hex_digit(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// One byte of chunked framing outside chunk data. Where hyper would fail,
/// the guard stops.
fn chunk_step(chunk: Chunk, b: u8) -> State {
    use Chunk::*;
    let next = match (chunk, b) {
        (SizeStart, _) => hex_digit(b).map(Size),
        (Size(n), _) if hex_digit(b).is_some() => n
            .checked_mul(16)
            .and_then(|n| n.checked_add(hex_digit(b)?))
            .map(Size),
        (Size(n) | SizeLws(n), b' ' | b'\t') => Some(SizeLws(n)),
        (Size(n) | SizeLws(n), b';') => Some(Extension(n)),
        (Size(n) | SizeLws(n) | Extension(n), b'\r') => Some(SizeLf(n)),
        (Extension(_), b'\n') => None,
        (Extension(n), _) => Some(Extension(n)),
        (SizeLf(0), b'\n') => Some(EndCr),
        (SizeLf(n), b'\n') => Some(Data(n)),
        (DataCr, b'\r') => Some(DataLf),
        (DataLf, b'\n') => Some(SizeStart),
        (EndCr, b'\r') => Some(EndLf),
        (EndCr | Trailer, b'\n') => None,
        (Trailer, b'\r') => Some(TrailerLf),
        (EndCr | Trailer, _) => Some(Trailer),
        (TrailerLf, b'\n') => Some(EndCr),
        (EndLf, b'\n') => return State::RequestLine,
        _ => None,
    };
    next.map_or(State::Passthrough, State::Chunked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Yields its chunks one read at a time (split further if the read is
    /// smaller), then EOF.
    struct Chunks(VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut chunk) = self.0.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.0.push_front(chunk.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    const MAX_HEAD: usize = 8192;

    /// Clocks that never run out in a test.
    fn untimed() -> ConnectionTimeouts {
        let hour = std::time::Duration::from_secs(3600);
        ConnectionTimeouts::new(hour, hour)
    }

    /// Everything the guard hands on for `input` arriving split at `splits`,
    /// read `read_size` bytes at a time.
    async fn guard(input: &[u8], splits: &[usize], read_size: usize) -> Vec<u8> {
        let mut chunks = VecDeque::new();
        let mut at = 0;
        for &split in splits.iter().chain([&input.len()]) {
            // An empty read would be EOF.
            if split > at {
                chunks.push_back(input[at..split].to_vec());
                at = split;
            }
        }
        let mut guard = FramingGuard::new(Chunks(chunks), MAX_HEAD, untimed());
        let mut out = Vec::new();
        let mut buf = vec![0; read_size];
        loop {
            match guard.read(&mut buf).await.unwrap() {
                0 => return out,
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Checks the guard turns `input` into `expected` however it is split in two,
    /// byte by byte, and read through small and large buffers.
    async fn check(input: &str, expected: &str) {
        let (input, expected) = (input.as_bytes(), expected.as_bytes());
        assert_eq!(input.len(), expected.len());
        let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        for read_size in [1, 7, 64, 16 * 1024] {
            for split in 0..=input.len() {
                let out = guard(input, &[split], read_size).await;
                assert_eq!(
                    show(&out),
                    show(expected),
                    "split at {split}, reads of {read_size}"
                );
            }
        }
        let every_byte: Vec<usize> = (1..input.len()).collect();
        let out = guard(input, &every_byte, 16 * 1024).await;
        assert_eq!(show(&out), show(expected), "one byte per read");
    }

    const CL_TE: &str = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    const CL_TE_MARKED: &str = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nx-tollgate-te-dup: chunked\r\n\r\n0\r\n\r\n";

    #[tokio::test]
    async fn transfer_encoding_after_content_length_is_renamed() {
        check(CL_TE, CL_TE_MARKED).await;
    }

    #[tokio::test]
    async fn content_length_after_transfer_encoding_is_renamed() {
        check(
            "POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 4\r\n\r\n0\r\n\r\n",
            "POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\nx-tollgate-dup: 4\r\n\r\n0\r\n\r\n",
        )
        .await;
    }

    #[tokio::test]
    async fn every_later_duplicate_is_renamed_and_bare_lf_heads_are_followed() {
        check(
            "POST /a HTTP/1.1\nContent-Length: 4\nTransfer-Encoding: gzip\nTRANSFER-ENCODING: chunked\nContent-Length: 4\n\nabcd",
            "POST /a HTTP/1.1\nContent-Length: 4\nx-tollgate-te-dup: gzip\nx-tollgate-te-dup: chunked\nContent-Length: 4\n\nabcd",
        )
        .await;
    }

    /// Bodies that look like heads and trailers naming both headers are left
    /// alone; the heads after them are still found.
    #[tokio::test]
    async fn pipelined_requests_are_followed_through_their_bodies() {
        let body = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let input = format!(
            "\r\nPOST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}\
             POST /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
             5;name=\"value\"\r\nhello\r\n1A \t; ext\r\n{}\r\n\
             0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
             GET /plain HTTP/1.1\r\n\r\n\
             {CL_TE}{CL_TE}",
            body.len(),
            "z".repeat(26),
        );
        let expected = input.replacen(CL_TE, CL_TE_MARKED, 2);
        assert_ne!(input, expected);
        check(&input, &expected).await;
    }

    #[tokio::test]
    async fn http2_preface_is_passed_through() {
        let input = format!("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x04\x08{CL_TE}");
        check(&input, &input).await;
    }

    #[tokio::test]
    async fn upgrades_and_connect_are_passed_through_after_their_head() {
        for head in [
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
        ] {
            let input = format!("{head}{CL_TE}");
            check(&input, &input).await;
        }
        // Upgrade means nothing to hyper in HTTP/1.0.
        let head = "GET /ws HTTP/1.0\r\nUpgrade: websocket\r\n\r\n";
        check(&format!("{head}{CL_TE}"), &format!("{head}{CL_TE_MARKED}")).await;
    }

    #[tokio::test]
    async fn what_hyper_refuses_is_passed_through() {
        for head in [
            "POST / HTTP/1.1\r\nX-Folded: a\r\n b\r\n\r\n",
            "POST / HTTP/1.1\r\nNo colon\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\n\n",
            "GET /\r\n",
        ] {
            let input = format!("{head}{CL_TE}");
            check(&input, &input).await;
        }
    }

    #[tokio::test]
    async fn a_head_line_longer_than_max_head_is_passed_through() {
        let input = format!(
            "GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n{CL_TE}",
            "v".repeat(MAX_HEAD)
        );
        for read_size in [100, 16 * 1024] {
            assert_eq!(
                guard(input.as_bytes(), &[20], read_size).await,
                input.as_bytes()
            );
        }
        // Just under the limit, the line is held until it is complete.
        let input = format!(
            "GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n{CL_TE}",
            "v".repeat(MAX_HEAD - 100)
        );
        let expected = input.replace(CL_TE, CL_TE_MARKED);
        for read_size in [100, 16 * 1024] {
            let splits = [20, 1000, 5000];
            assert_eq!(
                guard(input.as_bytes(), &splits, read_size).await,
                expected.as_bytes()
            );
        }
    }

    #[tokio::test]
    async fn an_unfinished_head_is_handed_on_at_eof() {
        let input = "POST / HTTP/1.1\r\nContent-Len";
        check(input, input).await;
    }

    #[tokio::test]
    async fn heads_that_fit_in_one_read_allocate_nothing() {
        let input = format!("GET / HTTP/1.1\r\nHost: x\r\n\r\n{CL_TE}");
        let mut guard = FramingGuard::new(
            Chunks(VecDeque::from([input.into_bytes()])),
            MAX_HEAD,
            untimed(),
        );
        let mut buf = vec![0; 16 * 1024];
        let n = guard.read(&mut buf).await.unwrap();
        assert!(buf[..n].ends_with(CL_TE_MARKED.as_bytes()));
        assert_eq!(guard.held.buf.capacity(), 0);
    }

    #[tokio::test]
    async fn writes_pass_through() {
        let mut guard = FramingGuard::new(Vec::new(), MAX_HEAD, untimed());
        guard.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        assert_eq!(guard.inner, b"HTTP/1.1 200 OK\r\n\r\n");
    }

    /// What the head clock is told, read by read: the first head counts from
    /// the connection's start; a later one from its first byte to its end;
    /// bodies, the wait between requests and tunnels are not heads.
    #[tokio::test]
    async fn the_unfinished_head_is_numbered_from_its_first_byte_to_its_end() {
        let reads: [&[u8]; 7] = [
            b"POST /a HTTP/1.1\r\nContent-Le",
            b"ngth: 4\r\n\r\n",
            b"ab",
            b"cd",
            b"\r\nGET /b HT",
            b"TP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"any bytes",
        ];
        let chunks = reads.iter().map(|read| read.to_vec()).collect();
        let mut guard = FramingGuard::new(Chunks(chunks), MAX_HEAD, untimed());
        let mut unfinished = vec![guard.unfinished_head()];
        let mut buf = [0; 64];
        while guard.read(&mut buf).await.unwrap() > 0 {
            unfinished.push(guard.unfinished_head());
        }
        assert_eq!(
            unfinished,
            // Start; in the first head; its body; the body's end; a CRLF and
            // part of the next request line (held); an upgrade's end.
            [Some(0), Some(0), None, None, None, Some(1), None, None]
        );
    }

    /// A connection the lean server served three requests on: the wait for
    /// its fourth is the idle clock's, and that head is number 3.
    #[tokio::test]
    async fn a_handed_over_connection_numbers_its_heads_on() {
        let reads: [&[u8]; 2] = [b"GET /d HTTP/1.1\r\nHo", b"st: a\r\n\r\n"];
        let chunks = reads.iter().map(|read| read.to_vec()).collect();
        let mut guard = FramingGuard::new(Chunks(chunks), MAX_HEAD, untimed()).numbered_from(3);
        let mut unfinished = vec![guard.unfinished_head()];
        let mut buf = [0; 64];
        while guard.read(&mut buf).await.unwrap() > 0 {
            unfinished.push(guard.unfinished_head());
        }
        // Before its first byte; inside it; after its end.
        assert_eq!(unfinished, [None, Some(3), None]);
    }

    #[test]
    fn markers_and_both_headers_are_conflicting_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_LENGTH, "4".parse().unwrap());
        assert!(!has_conflicting_framing(&headers));
        headers.insert(TE_MARKER, "chunked".parse().unwrap());
        assert!(has_conflicting_framing(&headers));
        let mut headers = HeaderMap::new();
        headers.insert(http::header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        assert!(!has_conflicting_framing(&headers));
        headers.insert(CL_MARKER, "4".parse().unwrap());
        assert!(has_conflicting_framing(&headers));
        headers.remove(CL_MARKER);
        headers.insert(http::header::CONTENT_LENGTH, "4".parse().unwrap());
        assert!(has_conflicting_framing(&headers));
    }
}
