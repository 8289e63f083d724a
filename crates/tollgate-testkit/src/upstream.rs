//! Real upstream servers on ephemeral loopback ports.
//!
//! Every [`Upstream`] is a hyper 1 server (or, for [`reset`], a raw TCP
//! listener) bound to `127.0.0.1:0`, speaking plain HTTP/1.1, h2c, or — for
//! [`tls_echo`] and [`Upstream::start_tls`] — TLS with ALPN choosing HTTP/2 or
//! HTTP/1.1. Dropping it stops accepting, closes its connections (WebSocket
//! sessions included) and frees the port; [`Upstream::stop`] does the same and
//! waits until the listener is closed.
//!
//! Constructors must be called inside a tokio runtime. The ready-made servers
//! answer `GET /healthz` themselves (200, or 503 after
//! [`Upstream::set_healthy(false)`](Upstream::set_healthy)); such checks are
//! counted by [`Upstream::health_checks`], not by [`Upstream::hits`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::body::{self, Body};
use crate::tls::TlsFiles;

/// Request bodies at least this long are left out of the echo JSON (only `body_len` is given).
pub const ECHO_BODY_LIMIT: usize = 64 * 1024;

type BoxFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
type DynHandler = Arc<dyn Fn(Request<Incoming>) -> BoxFuture + Send + Sync>;

/// How long a TLS upstream waits for a client's handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running upstream server; stops when dropped.
pub struct Upstream {
    addr: SocketAddr,
    /// `http://127.0.0.1:PORT`, or `https://NAME:PORT` for a TLS server.
    url: String,
    counters: Arc<Counters>,
    task: Option<JoinHandle<()>>,
    // Dropping the sender tells spawned sessions (WebSockets) to end.
    _stopping: watch::Sender<()>,
}

#[derive(Debug)]
struct Counters {
    hits: AtomicU64,
    connections: AtomicU64,
    health_checks: AtomicU64,
    tls_failures: AtomicU64,
    healthy: AtomicBool,
}

/// HTTP version a hyper upstream speaks on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// HTTP/1.1 with upgrades.
    Http1,
    /// HTTP/2 only: with prior knowledge (h2c) on plain TCP, or after ALPN `h2`.
    Http2,
}

/// What a hyper upstream's listener speaks.
#[derive(Clone)]
enum Wire {
    /// Plain TCP, one protocol.
    Plain(Protocol),
    /// TLS; HTTP/2 when ALPN selects `h2`, else HTTP/1.1.
    Tls(TlsAcceptor),
}

/// Put into every request's extensions: resolves once the upstream is stopped,
/// for handlers that spawn work outliving the request (as the WebSocket echo does).
#[derive(Clone, Debug)]
pub struct Stopping(watch::Receiver<()>);

impl Stopping {
    /// Resolves when the upstream that received the request is dropped or stopped.
    pub async fn wait(mut self) {
        while self.0.changed().await.is_ok() {}
    }
}

impl Upstream {
    /// An HTTP/1.1 server answering every request with `handler`; every request
    /// counts as a hit, and `/healthz` is the handler's to answer.
    ///
    /// ```no_run
    /// # async fn example() {
    /// use tollgate_testkit::{body, Upstream};
    /// let up = Upstream::start(|_req| async {
    ///     http::Response::builder().status(500).body(body::full("boom")).unwrap()
    /// });
    /// # }
    /// ```
    pub fn start<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        serve(Wire::Plain(Protocol::Http1), false, boxed(handler))
    }

    /// Like [`Upstream::start`], speaking HTTP/2 with prior knowledge only.
    pub fn start_h2c<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        serve(Wire::Plain(Protocol::Http2), false, boxed(handler))
    }

    /// Like [`Upstream::start`], over TLS with the certificate `files` and
    /// ALPN offering `alpn` (`"h2"`, `"http/1.1"`, in order of preference):
    /// a connection that negotiates `h2` speaks HTTP/2, any other HTTP/1.1.
    /// [`Upstream::url`] is `https://NAME:PORT` for the certificate's first name.
    pub fn start_tls<F, Fut>(files: &TlsFiles, alpn: &[&str], handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        serve(tls_wire(files, alpn), false, boxed(handler)).with_tls_name(files)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`; for a TLS server `https://NAME:PORT`, NAME
    /// being the certificate's first name (so use a certificate for
    /// `localhost` or `127.0.0.1`, which resolve to the server).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Requests answered so far, not counting `/healthz` checks of the ready-made
    /// servers. For [`reset`], accepted connections.
    pub fn hits(&self) -> u64 {
        self.counters.hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far (by the hyper-based servers), to see
    /// whether a client reuses keep-alive connections.
    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::SeqCst)
    }

    /// `GET /healthz` requests answered so far by a ready-made server.
    pub fn health_checks(&self) -> u64 {
        self.counters.health_checks.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed or timed out (a client that refused the
    /// certificate, or found no common ALPN protocol); always 0 without TLS.
    pub fn tls_handshake_failures(&self) -> u64 {
        self.counters.tls_failures.load(Ordering::SeqCst)
    }

    /// Whether `GET /healthz` answers 200 (true, the default) or 503.
    pub fn set_healthy(&self, healthy: bool) {
        self.counters.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Stops the server and waits until its listener is closed.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &self.url)
            .field("counters", &self.counters)
            .finish()
    }
}

/// Answers 200 with JSON describing the request: `upstream` (the name),
/// `method`, `path`, `query` (string or null), `version`, `headers` (lower-case
/// name to value, repeated values joined with `", "`), `body_len`, and `body`
/// (UTF-8, lossy) when shorter than [`ECHO_BODY_LIMIT`].
pub fn echo(name: &str) -> Upstream {
    let name: Arc<str> = name.into();
    serve(
        Wire::Plain(Protocol::Http1),
        true,
        boxed(move |req| echo_response(name.clone(), req)),
    )
}

/// Like [`echo`], speaking HTTP/2 with prior knowledge only (`"version": "HTTP/2.0"`).
pub fn h2c_echo(name: &str) -> Upstream {
    let name: Arc<str> = name.into();
    serve(
        Wire::Plain(Protocol::Http2),
        true,
        boxed(move |req| echo_response(name.clone(), req)),
    )
}

/// Like [`echo`], over TLS with the certificate `files`, its ALPN offering
/// `alpn` (`"h2"` and/or `"http/1.1"`, in order of preference): the echo's
/// `"version"` says which one the client got (`"HTTP/2.0"` or `"HTTP/1.1"`).
/// [`Upstream::url`] is `https://NAME:PORT`, NAME being the certificate's
/// first name.
///
/// ```no_run
/// # async fn example() {
/// use tollgate_testkit::{tls, upstream};
/// let cert = tls::self_signed(&["localhost"]);
/// let up = upstream::tls_echo("secure", &cert, &["h2", "http/1.1"]);
/// assert!(up.url().starts_with("https://localhost:"));
/// # }
/// ```
pub fn tls_echo(name: &str, files: &TlsFiles, alpn: &[&str]) -> Upstream {
    let name: Arc<str> = name.into();
    serve(
        tls_wire(files, alpn),
        true,
        boxed(move |req| echo_response(name.clone(), req)),
    )
    .with_tls_name(files)
}

/// An h2c server answering every request like a unary gRPC call: `200` with
/// `content-type: application/grpc`, the request body echoed back as the
/// response body, then the trailers `grpc-status: 0` and `grpc-message: ok`.
/// The request's `te` header, when present, comes back as `x-request-te`
/// (gRPC servers insist on `te: trailers`).
pub fn h2c_trailers() -> Upstream {
    serve(
        Wire::Plain(Protocol::Http2),
        true,
        boxed(grpc_like_response),
    )
}

/// An echo (named `"slow"`) that waits `delay` before reading the request and answering.
pub fn slow(delay: Duration) -> Upstream {
    serve(
        Wire::Plain(Protocol::Http1),
        true,
        boxed(move |req| async move {
            tokio::time::sleep(delay).await;
            echo_response("slow", req).await
        }),
    )
}

/// A `text/event-stream` response of `events` events, `data: event N\n\n` for
/// N in 1..=events, the first at once and then one every `gap`; then the body ends.
pub fn sse(events: usize, gap: Duration) -> Upstream {
    serve(
        Wire::Plain(Protocol::Http1),
        true,
        boxed(move |_req| async move {
            let chunks = (1..=events)
                .map(|n| Bytes::from(format!("data: event {n}\n\n")))
                .collect();
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                .body(body::paced(chunks, gap))
                .expect("static response parts are valid")
        }),
    )
}

/// A `bytes`-long body (with `Content-Length`) sent in chunks of `chunk` bytes,
/// one every `gap`; its content is [`download_content(bytes)`](download_content).
pub fn download(bytes: usize, chunk: usize, gap: Duration) -> Upstream {
    assert!(chunk > 0, "download chunk size must be positive");
    serve(
        Wire::Plain(Protocol::Http1),
        true,
        boxed(move |_req| async move {
            let content = Bytes::from(download_content(bytes));
            let chunks = (0..bytes)
                .step_by(chunk)
                .map(|start| content.slice(start..(start + chunk).min(bytes)))
                .collect();
            Response::builder()
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::CONTENT_LENGTH, bytes)
                .body(body::paced(chunks, gap))
                .expect("static response parts are valid")
        }),
    )
}

/// The body [`download`] sends: byte `i` is `b'a' + i % 26`.
pub fn download_content(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Accepts WebSocket upgrades and echoes text and binary messages back; other
/// requests get the [`echo`] JSON (named `"websocket"`).
pub fn websocket_echo() -> Upstream {
    serve(
        Wire::Plain(Protocol::Http1),
        true,
        boxed(websocket_response),
    )
}

/// A raw TCP listener that accepts each connection and closes it at once with
/// a reset (`SO_LINGER` 0). Hits count accepted connections.
pub fn reset() -> Upstream {
    let listener = bind();
    let addr = listener
        .local_addr()
        .expect("local address of a bound socket");
    let counters = Counters::new();
    let (stopping, _) = watch::channel(());
    let task_counters = counters.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                task_counters.hits.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_zero_linger();
                drop(stream);
            }
        }
    });
    Upstream {
        addr,
        url: format!("http://{addr}"),
        counters,
        task: Some(task),
        _stopping: stopping,
    }
}

/// A loopback address where nothing listens (connections are refused).
pub fn closed_port() -> SocketAddr {
    crate::port::free_addr()
}

/// The echo JSON response for `req`, for custom handlers that want to answer like [`echo`].
pub async fn echo_response(name: impl AsRef<str>, req: Request<Incoming>) -> Response<Body> {
    let (parts, incoming) = req.into_parts();
    let bytes = match incoming.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(body::full(format!("reading the request body failed: {e}")))
                .expect("static response parts are valid")
        }
    };
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let mut doc = json!({
        "upstream": name.as_ref(),
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": bytes.len(),
    });
    if bytes.len() < ECHO_BODY_LIMIT {
        doc["body"] = String::from_utf8_lossy(&bytes).into_owned().into();
    }
    body::json_response(&doc)
}

async fn grpc_like_response(req: Request<Incoming>) -> Response<Body> {
    let te = req.headers().get(header::TE).cloned();
    let bytes = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(body::full(format!("reading the request body failed: {e}")))
                .expect("static response parts are valid")
        }
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("grpc-message", HeaderValue::from_static("ok"));
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(body::with_trailers(bytes, trailers))
        .expect("static response parts are valid");
    if let Some(te) = te {
        response.headers_mut().insert("x-request-te", te);
    }
    response
}

async fn websocket_response(mut req: Request<Incoming>) -> Response<Body> {
    let wants_websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (wants_websocket, key) else {
        return echo_response("websocket", req).await;
    };
    let stopping = req.extensions().get::<Stopping>().cloned();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let session = async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            while let Some(Ok(message)) = ws.next().await {
                if matches!(message, Message::Text(_) | Message::Binary(_))
                    && ws.send(message).await.is_err()
                {
                    break;
                }
            }
        };
        match stopping {
            Some(stopping) => {
                tokio::select! {
                    () = session => {}
                    () = stopping.wait() => {}
                }
            }
            None => session.await,
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .body(body::empty())
        .expect("static response parts are valid")
}

impl Counters {
    fn new() -> Arc<Counters> {
        Arc::new(Counters {
            hits: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            health_checks: AtomicU64::new(0),
            tls_failures: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
        })
    }
}

fn boxed<F, Fut>(handler: F) -> DynHandler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(handler(req)) as BoxFuture)
}

fn bind() -> TcpListener {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener
        .set_nonblocking(true)
        .expect("set a listener non-blocking");
    TcpListener::from_std(listener).expect("register a listener with tokio (inside a runtime?)")
}

/// A TLS acceptor for `files`, offering `alpn`, with the ring provider.
fn tls_wire(files: &TlsFiles, alpn: &[&str]) -> Wire {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(files.key_der.clone()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_no_client_auth()
    .with_single_cert(vec![CertificateDer::from(files.cert_der.clone())], key)
    .expect("a generated certificate and key make a server config");
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Wire::Tls(TlsAcceptor::from(Arc::new(config)))
}

impl Upstream {
    /// Sets [`Upstream::url`] to `https://NAME:PORT` for `files`' first name.
    fn with_tls_name(mut self, files: &TlsFiles) -> Upstream {
        let name = files
            .names
            .first()
            .expect("a certificate has at least one name");
        let host = match name.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => name.clone(),
        };
        self.url = format!("https://{host}:{}", self.addr.port());
        self
    }
}

fn serve(wire: Wire, health_endpoint: bool, handler: DynHandler) -> Upstream {
    let listener = bind();
    let addr = listener
        .local_addr()
        .expect("local address of a bound socket");
    let counters = Counters::new();
    let (stopping, stopping_rx) = watch::channel(());
    let task_counters = counters.clone();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    task_counters.connections.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(accept_connection(
                        stream,
                        wire.clone(),
                        health_endpoint,
                        handler.clone(),
                        task_counters.clone(),
                        Stopping(stopping_rx.clone()),
                    ));
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    Upstream {
        addr,
        url: format!("http://{addr}"),
        counters,
        task: Some(task),
        _stopping: stopping,
    }
}

async fn accept_connection(
    stream: TcpStream,
    wire: Wire,
    health_endpoint: bool,
    handler: DynHandler,
    counters: Arc<Counters>,
    stopping: Stopping,
) {
    let _ = stream.set_nodelay(true);
    match wire {
        Wire::Plain(protocol) => {
            serve_connection(
                stream,
                protocol,
                health_endpoint,
                handler,
                counters,
                stopping,
            )
            .await
        }
        Wire::Tls(acceptor) => {
            let stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(_)) | Err(_) => {
                        counters.tls_failures.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                };
            let protocol = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                _ => Protocol::Http1,
            };
            serve_connection(
                stream,
                protocol,
                health_endpoint,
                handler,
                counters,
                stopping,
            )
            .await
        }
    }
}

async fn serve_connection<I>(
    stream: I,
    protocol: Protocol,
    health_endpoint: bool,
    handler: DynHandler,
    counters: Arc<Counters>,
    stopping: Stopping,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let handler = handler.clone();
        let counters = counters.clone();
        req.extensions_mut().insert(stopping.clone());
        async move {
            if health_endpoint && req.uri().path() == "/healthz" {
                counters.health_checks.fetch_add(1, Ordering::SeqCst);
                return Ok::<_, Infallible>(health_response(
                    counters.healthy.load(Ordering::SeqCst),
                ));
            }
            counters.hits.fetch_add(1, Ordering::SeqCst);
            Ok(handler(req).await)
        }
    });
    let _ = match protocol {
        Protocol::Http1 => {
            hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .with_upgrades()
                .await
        }
        Protocol::Http2 => {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, service)
                .await
        }
    };
}

fn health_response(healthy: bool) -> Response<Body> {
    let (status, text) = if healthy {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))
        .body(body::full(text))
        .expect("static response parts are valid")
}
