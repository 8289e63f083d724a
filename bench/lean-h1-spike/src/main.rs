//! A lean HTTP/1.1 reverse proxy loop, without hyper, to measure what such a
//! design costs per request on this host: each client connection's task
//! reads a head (httparse), rewrites it (hop-by-hop headers out,
//! X-Forwarded-*, a request id in), sends it on a kept-alive upstream
//! connection taken from a stack, reads the answer framed by Content-Length
//! and writes it back, all in the one task. Nothing else Tollgate does
//! (routing, policies, the access log, chunked bodies, timeouts, errors) is
//! here: it bounds from below what the proxy's own HTTP/1 path could cost.
//! Listens on 127.0.0.1:18095; the upstream is the shared bench's nginx on
//! 127.0.0.1:18080.
//!
//! With `--hyper-server` the client side is hyper's HTTP/1 server instead
//! (its parsing, header map, dispatcher and encoder), and the upstream
//! exchange stays the lean one, in the request's task: that splits the cost
//! between the two halves. With `--hyper-both` the upstream side is hyper's
//! HTTP/1 client too, as Tollgate's proxy uses it: a stack of kept-alive
//! `SendRequest`s, each connection driven by a task of its own.
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const UPSTREAM: &str = "127.0.0.1:18080";

const HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

type Pool = Rc<RefCell<Vec<TcpStream>>>;
type Senders = Rc<RefCell<Vec<SendRequest<Empty<Bytes>>>>>;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let listener = TcpListener::bind("127.0.0.1:18095").await.unwrap();
        let pool: Pool = Rc::default();
        if std::env::args().any(|arg| arg == "--hyper-server") {
            return serve_with_hyper(listener, move |req, peer_ip| {
                exchange(req, pool.clone(), peer_ip)
            })
            .await;
        }
        if std::env::args().any(|arg| arg == "--hyper-both") {
            let senders: Senders = Rc::default();
            return serve_with_hyper(listener, move |req, peer_ip| {
                forward_with_hyper(req, senders.clone(), peer_ip)
            })
            .await;
        }
        loop {
            let (sock, peer) = listener.accept().await.unwrap();
            sock.set_nodelay(true).unwrap();
            let pool = pool.clone();
            tokio::task::spawn_local(async move {
                let _ = serve(sock, peer, pool).await;
            });
        }
    });
}

/// The lean loop: one client connection, all in its task.
async fn serve(mut client: TcpStream, peer: std::net::SocketAddr, pool: Pool) -> io::Result<()> {
    let mut buf = Vec::with_capacity(8192);
    let mut out = Vec::with_capacity(4096);
    let mut ubuf = Vec::with_capacity(16384);
    let peer_ip = peer.ip().to_string();
    loop {
        let Some(head_len) = read_head(&mut client, &mut buf).await? else {
            return Ok(());
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let status = req.parse(&buf[..head_len]).map_err(io::Error::other)?;
        assert!(status.is_complete());
        let mut body_len = 0;
        let mut host: &[u8] = b"";
        out.clear();
        push_request_line(&mut out, req.method.unwrap(), req.path.unwrap());
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                body_len = content_length(h.value);
            }
            if h.name.eq_ignore_ascii_case("host") {
                host = h.value;
            } else if !is_hop(h.name) {
                push_header(&mut out, h.name.as_bytes(), h.value);
            }
        }
        let id = new_id();
        push_forwarding(&mut out, peer_ip.as_bytes(), host, &id);
        // Body (Content-Length only in this spike).
        if !fill(&mut client, &mut buf, head_len + body_len).await? {
            return Ok(());
        }
        out.extend_from_slice(&buf[head_len..head_len + body_len]);
        buf.drain(..head_len + body_len);

        let mut up = checkout(&pool).await?;
        up.write_all(&out).await?;
        ubuf.clear();
        let Some(uhead) = read_head(&mut up, &mut ubuf).await? else {
            return Ok(());
        };
        let mut rheaders = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut rheaders);
        res.parse(&ubuf[..uhead]).map_err(io::Error::other)?;
        let mut clen = 0;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(res.code.unwrap().to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(res.reason.unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for h in res.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                clen = content_length(h.value);
            }
            if !is_hop(h.name) {
                push_header(&mut out, h.name.as_bytes(), h.value);
            }
        }
        push_header(&mut out, b"x-request-id", &id);
        out.extend_from_slice(b"\r\n");
        if !fill(&mut up, &mut ubuf, uhead + clen).await? {
            return Ok(());
        }
        out.extend_from_slice(&ubuf[uhead..uhead + clen]);
        client.write_all(&out).await?;
        pool.borrow_mut().push(up);
    }
}

/// Serves clients with hyper's HTTP/1 server, each request by `forward`.
async fn serve_with_hyper<F, Fut, B, E>(listener: TcpListener, forward: F)
where
    F: Fn(Request<Incoming>, Rc<str>) -> Fut + Clone + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + 'static,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let (sock, peer) = listener.accept().await.unwrap();
        sock.set_nodelay(true).unwrap();
        let forward = forward.clone();
        tokio::task::spawn_local(async move {
            let peer_ip: Rc<str> = peer.ip().to_string().into();
            let service = hyper::service::service_fn(move |req| forward(req, peer_ip.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(sock), service)
                .await;
        });
    }
}

/// `--hyper-server`: the lean upstream exchange, in the request's task.
async fn exchange(
    req: Request<Incoming>,
    pool: Pool,
    peer_ip: Rc<str>,
) -> io::Result<Response<Full<Bytes>>> {
    let mut out = Vec::with_capacity(1024);
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    push_request_line(&mut out, req.method().as_str(), path);
    let mut host: &[u8] = b"";
    for (name, value) in req.headers() {
        if name == hyper::header::HOST {
            host = value.as_bytes();
        } else if !is_hop(name.as_str()) {
            push_header(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let id = new_id();
    push_forwarding(&mut out, peer_ip.as_bytes(), host, &id);

    let mut up = checkout(&pool).await?;
    up.write_all(&out).await?;
    let mut ubuf = Vec::with_capacity(16384);
    let Some(uhead) = read_head(&mut up, &mut ubuf).await? else {
        return Err(io::ErrorKind::UnexpectedEof.into());
    };
    let mut rheaders = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut rheaders);
    res.parse(&ubuf[..uhead]).map_err(io::Error::other)?;
    let mut answer = Response::builder().status(res.code.unwrap());
    let mut clen = 0;
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            clen = content_length(h.value);
        }
        if !is_hop(h.name) {
            answer = answer.header(h.name, h.value);
        }
    }
    answer = answer.header("x-request-id", &id[..]);
    if !fill(&mut up, &mut ubuf, uhead + clen).await? {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let body = Bytes::copy_from_slice(&ubuf[uhead..uhead + clen]);
    pool.borrow_mut().push(up);
    Ok(answer.body(Full::new(body)).unwrap())
}

/// `--hyper-both`: hyper's client, as Tollgate's plain proxy has it.
async fn forward_with_hyper(
    req: Request<Incoming>,
    senders: Senders,
    peer_ip: Rc<str>,
) -> Result<Response<Returning>, hyper::Error> {
    let (parts, _) = req.into_parts();
    let mut headers = parts.headers;
    let host = headers.remove(hyper::header::HOST);
    for name in HOP {
        headers.remove(name);
    }
    headers.insert(hyper::header::HOST, HeaderValue::from_static(UPSTREAM));
    headers.insert(
        HeaderName::from_static("x-forwarded-for"),
        HeaderValue::from_str(&peer_ip).unwrap(),
    );
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    if let Some(host) = host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    let id = HeaderValue::from_bytes(&new_id()).unwrap();
    headers.insert(HeaderName::from_static("x-request-id"), id.clone());
    let mut upstream = Request::new(Empty::new());
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = parts.uri;
    *upstream.headers_mut() = headers;

    let popped = senders.borrow_mut().pop();
    let mut sender = match popped {
        Some(sender) => sender,
        None => {
            let stream = connect().await.unwrap();
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::task::spawn_local(conn);
            sender
        }
    };
    // Ready once the connection's task has seen the last answer's end.
    sender.ready().await?;
    let response = sender.send_request(upstream).await?;
    let (mut parts, body) = response.into_parts();
    for name in HOP {
        parts.headers.remove(name);
    }
    parts
        .headers
        .insert(HeaderName::from_static("x-request-id"), id);
    let body = Returning {
        body,
        sender: Some(sender),
        senders,
    };
    Ok(Response::from_parts(parts, body))
}

/// An upstream answer's body that puts its connection back on the stack
/// once read to the end, as Tollgate's `ResponseBody` does.
struct Returning {
    body: Incoming,
    sender: Option<SendRequest<Empty<Bytes>>>,
    senders: Senders,
}

impl Returning {
    fn give_back(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.senders.borrow_mut().push(sender);
        }
    }
}

impl Drop for Returning {
    /// hyper's server may drop a body whose length it knew without polling
    /// it past its last byte.
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.give_back();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn is_hop(name: &str) -> bool {
    HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop))
}

fn content_length(value: &[u8]) -> usize {
    std::str::from_utf8(value).unwrap().trim().parse().unwrap()
}

/// 128 random bits as 32 hex digits.
fn new_id() -> [u8; 32] {
    let mut id = [0u8; 32];
    hex::encode_to_slice(fastrand::u128(..).to_be_bytes(), &mut id).unwrap();
    id
}

fn push_request_line(out: &mut Vec<u8>, method: &str, path: &str) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The headers a proxy adds to a request, and the blank line ending its head.
fn push_forwarding(out: &mut Vec<u8>, peer_ip: &[u8], host: &[u8], id: &[u8]) {
    push_header(out, b"host", UPSTREAM.as_bytes());
    push_header(out, b"x-forwarded-for", peer_ip);
    push_header(out, b"x-forwarded-proto", b"http");
    push_header(out, b"x-forwarded-host", host);
    push_header(out, b"x-request-id", id);
    out.extend_from_slice(b"\r\n");
}

async fn connect() -> io::Result<TcpStream> {
    let stream = TcpStream::connect(UPSTREAM).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A kept-alive upstream connection from the stack, or a new one.
async fn checkout(pool: &Pool) -> io::Result<TcpStream> {
    let popped = pool.borrow_mut().pop();
    match popped {
        Some(stream) => Ok(stream),
        None => connect().await,
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.reserve(8192);
    stream.read_buf(buf).await
}

/// Reads until `buf` holds a whole head; its length, or `None` at the end
/// of the stream.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    loop {
        if let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") {
            return Ok(Some(end + 4));
        }
        if read_more(stream, buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Reads until `buf` holds `len` bytes; `false` if the stream ended first.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> io::Result<bool> {
    while buf.len() < len {
        if read_more(stream, buf).await? == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}
