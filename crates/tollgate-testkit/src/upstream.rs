//! Real upstream servers on ephemeral loopback ports.
//!
//! Every [`Upstream`] is a hyper 1 server (or, for [`reset`], a raw TCP
//! listener) bound to `127.0.0.1:0`. Dropping it stops accepting, closes its
//! connections (WebSocket sessions included) and frees the port; [`Upstream::stop`]
//! does the same and waits until the listener is closed.
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
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::body::{self, Body};

/// Request bodies at least this long are left out of the echo JSON (only `body_len` is given).
pub const ECHO_BODY_LIMIT: usize = 64 * 1024;

type BoxFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
type DynHandler = Arc<dyn Fn(Request<Incoming>) -> BoxFuture + Send + Sync>;

/// A running upstream server; stops when dropped.
pub struct Upstream {
    addr: SocketAddr,
    counters: Arc<Counters>,
    task: Option<JoinHandle<()>>,
    // Dropping the sender tells spawned sessions (WebSockets) to end.
    _stopping: watch::Sender<()>,
}

#[derive(Debug)]
struct Counters {
    hits: AtomicU64,
    health_checks: AtomicU64,
    healthy: AtomicBool,
}

/// Wire protocol of a hyper upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// HTTP/1.1 with upgrades.
    Http1,
    /// HTTP/2 with prior knowledge (h2c), no HTTP/1.
    H2c,
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
        serve(Protocol::Http1, false, boxed(handler))
    }

    /// Like [`Upstream::start`], speaking HTTP/2 with prior knowledge only.
    pub fn start_h2c<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        serve(Protocol::H2c, false, boxed(handler))
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered so far, not counting `/healthz` checks of the ready-made
    /// servers. For [`reset`], accepted connections.
    pub fn hits(&self) -> u64 {
        self.counters.hits.load(Ordering::SeqCst)
    }

    /// `GET /healthz` requests answered so far by a ready-made server.
    pub fn health_checks(&self) -> u64 {
        self.counters.health_checks.load(Ordering::SeqCst)
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
            .field("addr", &self.addr)
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
        Protocol::Http1,
        true,
        boxed(move |req| echo_response(name.clone(), req)),
    )
}

/// Like [`echo`], speaking HTTP/2 with prior knowledge only (`"version": "HTTP/2.0"`).
pub fn h2c_echo(name: &str) -> Upstream {
    let name: Arc<str> = name.into();
    serve(
        Protocol::H2c,
        true,
        boxed(move |req| echo_response(name.clone(), req)),
    )
}

/// An echo (named `"slow"`) that waits `delay` before reading the request and answering.
pub fn slow(delay: Duration) -> Upstream {
    serve(
        Protocol::Http1,
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
        Protocol::Http1,
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
        Protocol::Http1,
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
    serve(Protocol::Http1, true, boxed(websocket_response))
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
            health_checks: AtomicU64::new(0),
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

fn serve(protocol: Protocol, health_endpoint: bool, handler: DynHandler) -> Upstream {
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
                    connections.spawn(serve_connection(
                        stream,
                        protocol,
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
        counters,
        task: Some(task),
        _stopping: stopping,
    }
}

async fn serve_connection(
    stream: TcpStream,
    protocol: Protocol,
    health_endpoint: bool,
    handler: DynHandler,
    counters: Arc<Counters>,
    stopping: Stopping,
) {
    let _ = stream.set_nodelay(true);
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
        Protocol::H2c => {
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
