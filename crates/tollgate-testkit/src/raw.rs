//! Raw bytes on a TCP socket, for framing cases a well-behaved client cannot send.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What came back on a raw connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawResponse {
    /// The status code of the first status line, if one was received.
    pub status: Option<u16>,
    /// Everything up to the first empty line (`\r\n\r\n` excluded), or all that
    /// was received when there is none; UTF-8, lossy.
    pub head: String,
    /// The bytes after the first empty line (further responses included).
    pub body: Vec<u8>,
    /// Whether the server closed (or reset) the connection before the timeout.
    pub closed: bool,
}

impl RawResponse {
    /// Parses what a server sent; `closed` tells whether it then closed.
    pub fn parse(received: &[u8], closed: bool) -> RawResponse {
        let (head, body) = match find(received, b"\r\n\r\n") {
            Some(end) => (&received[..end], received[end + 4..].to_vec()),
            None => (received, Vec::new()),
        };
        let head = String::from_utf8_lossy(head).into_owned();
        let status = head
            .lines()
            .next()
            .filter(|line| line.starts_with("HTTP/"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|code| code.parse().ok());
        RawResponse {
            status,
            head,
            body,
            closed,
        }
    }

    /// The value of the first header named `name` (case-insensitive) in the head.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }

    /// The body as UTF-8, lossy.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Connects, writes `bytes`, and reads until the server closes the connection
/// or `timeout` has passed since the connection was made. A failed write (the
/// server closed early) is not an error: what it sent is still read.
///
/// Panics if the connection cannot be made.
pub async fn send(addr: SocketAddr, bytes: impl AsRef<[u8]>, timeout: Duration) -> RawResponse {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(addr).await;
    let _ = tokio::time::timeout_at(deadline, stream.write_all(bytes.as_ref())).await;
    read_until_close(
        &mut stream,
        deadline.saturating_duration_since(Instant::now()),
    )
    .await
}

/// A connected socket, for tests that write in pieces; finish with [`read_until_close`].
///
/// Panics if the connection cannot be made.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr} failed: {e}"));
    let _ = stream.set_nodelay(true);
    stream
}

/// Reads from `stream` until the server closes it (or resets it) or `timeout` passes.
pub async fn read_until_close(stream: &mut TcpStream, timeout: Duration) -> RawResponse {
    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_elapsed) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    };
    RawResponse::parse(&received, closed)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
