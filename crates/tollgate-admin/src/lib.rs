//! Tollgate's admin listener: liveness (`/healthz`), readiness (`/readyz`) and
//! Prometheus metrics (`/metrics`). The admin API grows here.
//!
//! Never serves proxied traffic, and never exposes a credential.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

/// The content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`serve`] waits for open connections after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

const JSON: &str = "application/json";
const REQUEST_ID: &str = "x-request-id";

/// What the admin endpoints report on. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct AdminState {
    /// Set once the gateway has loaded its configuration and bound its
    /// listeners; `/readyz` answers 503 until then.
    pub ready: Arc<AtomicBool>,
}

impl AdminState {
    /// A state that is not ready yet.
    pub fn new() -> AdminState {
        AdminState::default()
    }
}

/// Serves the admin endpoints over HTTP/1.1 on `listener` until `shutdown`
/// resolves, then stops accepting and gives open connections up to five
/// seconds to finish their requests.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "admin listener failed to accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let service = service_fn(move |request| {
            let response = respond(&state, &request);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("admin connections still open after the drain timeout");
    }
    Ok(())
}

fn respond(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let request_id = new_request_id();
    let path = request.uri().path();
    let mut response = match path {
        "/healthz" | "/readyz" | "/metrics"
            if request.method() != Method::GET && request.method() != Method::HEAD =>
        {
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                &format!("{path} accepts GET and HEAD only"),
                &request_id,
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#),
        "/readyz" if state.ready.load(Ordering::Acquire) => {
            json(StatusCode::OK, r#"{"status":"ready"}"#)
        }
        "/readyz" => json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"starting"}"#),
        "/metrics" => with_type(
            StatusCode::OK,
            METRICS_CONTENT_TYPE,
            tollgate_telemetry::metrics::render().into(),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no admin endpoint at {path}"),
            &request_id,
        ),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// A random 32-hex-digit request id.
fn new_request_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

fn json(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(status, JSON, Bytes::from_static(body.as_bytes()))
}

/// The error body every Tollgate listener uses.
fn error(status: StatusCode, code: &str, message: &str, request_id: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "error": { "code": code, "message": message, "request_id": request_id }
    });
    with_type(status, JSON, body.to_string().into())
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
