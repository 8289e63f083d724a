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
use std::rc::Rc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let listener = TcpListener::bind("127.0.0.1:18095").await.unwrap();
        let pool: Pool = Rc::new(RefCell::new(Vec::new()));
        if std::env::args().any(|arg| arg == "--hyper-server") {
            return hyper_server(listener, pool).await;
        }
        if std::env::args().any(|arg| arg == "--hyper-both") {
            return hyper_both(listener).await;
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

async fn serve(
    mut client: TcpStream,
    peer: std::net::SocketAddr,
    pool: Pool,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(8192);
    let mut out = Vec::with_capacity(4096);
    let mut ubuf = Vec::with_capacity(16384);
    let peer_ip = peer.ip().to_string();
    loop {
        // Read a whole head.
        let head_len = loop {
            if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break end + 4;
            }
            let n = read_more(&mut client, &mut buf).await?;
            if n == 0 {
                return Ok(());
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let status = req.parse(&buf[..head_len]).map_err(std::io::Error::other)?;
        assert!(status.is_complete());
        let mut body_len = 0usize;
        let mut host = "";
        out.clear();
        out.extend_from_slice(req.method.unwrap().as_bytes());
        out.push(b' ');
        out.extend_from_slice(req.path.unwrap().as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                body_len = std::str::from_utf8(h.value)
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
            }
            if h.name.eq_ignore_ascii_case("host") {
                host = std::str::from_utf8(h.value).unwrap();
                continue;
            }
            if HOP.iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
                continue;
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"host: 127.0.0.1:18080\r\nx-forwarded-for: ");
        out.extend_from_slice(peer_ip.as_bytes());
        out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\nx-forwarded-host: ");
        out.extend_from_slice(host.as_bytes());
        let mut id = [0u8; 32];
        hex::encode_to_slice(fastrand::u128(..).to_be_bytes(), &mut id).unwrap();
        out.extend_from_slice(b"\r\nx-request-id: ");
        out.extend_from_slice(&id);
        out.extend_from_slice(b"\r\n\r\n");
        // Body (Content-Length only in this spike).
        while buf.len() < head_len + body_len {
            if read_more(&mut client, &mut buf).await? == 0 {
                return Ok(());
            }
        }
        out.extend_from_slice(&buf[head_len..head_len + body_len]);
        buf.drain(..head_len + body_len);

        let popped = pool.borrow_mut().pop();
        let mut up = match popped {
            Some(up) => up,
            None => {
                let s = TcpStream::connect("127.0.0.1:18080").await?;
                s.set_nodelay(true)?;
                s
            }
        };
        up.write_all(&out).await?;
        ubuf.clear();
        let uhead = loop {
            if let Some(end) = memchr::memmem::find(&ubuf, b"\r\n\r\n") {
                break end + 4;
            }
            if read_more(&mut up, &mut ubuf).await? == 0 {
                return Ok(());
            }
        };
        let mut rheaders = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut rheaders);
        res.parse(&ubuf[..uhead]).map_err(std::io::Error::other)?;
        let mut clen = 0usize;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(res.code.unwrap().to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(res.reason.unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for h in res.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                clen = std::str::from_utf8(h.value)
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
            }
            if HOP.iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
                continue;
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(&id);
        out.extend_from_slice(b"\r\n\r\n");
        while ubuf.len() < uhead + clen {
            if read_more(&mut up, &mut ubuf).await? == 0 {
                return Ok(());
            }
        }
        out.extend_from_slice(&ubuf[uhead..uhead + clen]);
        client.write_all(&out).await?;
        pool.borrow_mut().push(up);
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.reserve(8192);
    s.read_buf(buf).await
}

/// Serves clients with hyper's HTTP/1 server; each request's upstream
/// exchange is the lean one, in the request's task.
async fn hyper_server(listener: TcpListener, pool: Pool) {
    use hyper::service::service_fn;
    loop {
        let (sock, peer) = listener.accept().await.unwrap();
        sock.set_nodelay(true).unwrap();
        let pool = pool.clone();
        tokio::task::spawn_local(async move {
            let peer_ip: Rc<str> = peer.ip().to_string().into();
            let service = service_fn(move |req| exchange(req, pool.clone(), peer_ip.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(sock), service)
                .await;
        });
    }
}

async fn exchange(
    req: hyper::Request<hyper::body::Incoming>,
    pool: Pool,
    peer_ip: Rc<str>,
) -> std::io::Result<hyper::Response<http_body_util::Full<bytes::Bytes>>> {
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        req.uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host: &[u8] = b"";
    for (name, value) in req.headers() {
        if name == hyper::header::HOST {
            host = value.as_bytes();
            continue;
        }
        if HOP.contains(&name.as_str()) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"host: 127.0.0.1:18080\r\nx-forwarded-for: ");
    out.extend_from_slice(peer_ip.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\nx-forwarded-host: ");
    out.extend_from_slice(host);
    let mut id = [0u8; 32];
    hex::encode_to_slice(fastrand::u128(..).to_be_bytes(), &mut id).unwrap();
    out.extend_from_slice(b"\r\nx-request-id: ");
    out.extend_from_slice(&id);
    out.extend_from_slice(b"\r\n\r\n");

    let popped = pool.borrow_mut().pop();
    let mut up = match popped {
        Some(up) => up,
        None => {
            let s = TcpStream::connect("127.0.0.1:18080").await?;
            s.set_nodelay(true)?;
            s
        }
    };
    up.write_all(&out).await?;
    let mut ubuf = Vec::with_capacity(16384);
    let uhead = loop {
        if let Some(end) = memchr::memmem::find(&ubuf, b"\r\n\r\n") {
            break end + 4;
        }
        if read_more(&mut up, &mut ubuf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    };
    let mut rheaders = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut rheaders);
    res.parse(&ubuf[..uhead]).map_err(std::io::Error::other)?;
    let mut answer = hyper::Response::builder().status(res.code.unwrap());
    let mut clen = 0usize;
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            clen = std::str::from_utf8(h.value)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
        }
        if HOP.iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
            continue;
        }
        answer = answer.header(h.name, h.value);
    }
    answer = answer.header("x-request-id", &id[..]);
    while ubuf.len() < uhead + clen {
        if read_more(&mut up, &mut ubuf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    let body = bytes::Bytes::copy_from_slice(&ubuf[uhead..uhead + clen]);
    pool.borrow_mut().push(up);
    Ok(answer.body(http_body_util::Full::new(body)).unwrap())
}

type Senders =
    Rc<RefCell<Vec<hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>>>>;

/// hyper's server and hyper's client, as Tollgate's plain proxy has them.
async fn hyper_both(listener: TcpListener) {
    use hyper::service::service_fn;
    let senders: Senders = Rc::new(RefCell::new(Vec::new()));
    loop {
        let (sock, peer) = listener.accept().await.unwrap();
        sock.set_nodelay(true).unwrap();
        let senders = senders.clone();
        tokio::task::spawn_local(async move {
            let peer_ip: Rc<str> = peer.ip().to_string().into();
            let service =
                service_fn(move |req| forward_with_hyper(req, senders.clone(), peer_ip.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(sock), service)
                .await;
        });
    }
}

async fn forward_with_hyper(
    req: hyper::Request<hyper::body::Incoming>,
    senders: Senders,
    peer_ip: Rc<str>,
) -> Result<hyper::Response<Returning>, hyper::Error> {
    use hyper::header::{HeaderName, HeaderValue};
    let (parts, _) = req.into_parts();
    let mut headers = parts.headers;
    let host = headers.remove(hyper::header::HOST);
    for name in HOP {
        headers.remove(name);
    }
    headers.insert(
        hyper::header::HOST,
        HeaderValue::from_static("127.0.0.1:18080"),
    );
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
    let mut id = [0u8; 32];
    hex::encode_to_slice(fastrand::u128(..).to_be_bytes(), &mut id).unwrap();
    let id = HeaderValue::from_bytes(&id).unwrap();
    headers.insert(HeaderName::from_static("x-request-id"), id.clone());
    let mut upstream = hyper::Request::new(http_body_util::Empty::new());
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = parts.uri;
    *upstream.headers_mut() = headers;

    let popped = senders.borrow_mut().pop();
    let mut sender = match popped {
        Some(sender) => sender,
        None => {
            let stream = TcpStream::connect("127.0.0.1:18080").await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
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
    Ok(hyper::Response::from_parts(parts, body))
}

/// An upstream answer's body that puts its connection back on the stack
/// once read to the end, as Tollgate's `ResponseBody` does.
struct Returning {
    body: hyper::body::Incoming,
    sender: Option<hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>>,
    senders: Senders,
}

impl Drop for Returning {
    /// hyper's server may drop a body whose length it knew without polling
    /// it past its last byte.
    fn drop(&mut self) {
        if hyper::body::Body::is_end_stream(&self.body) {
            if let Some(sender) = self.sender.take() {
                self.senders.borrow_mut().push(sender);
            }
        }
    }
}

impl hyper::body::Body for Returning {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if let std::task::Poll::Ready(None) = polled {
            if let Some(sender) = this.sender.take() {
                this.senders.borrow_mut().push(sender);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
