//! Tollgate's admin listener: liveness (`/healthz`), readiness (`/readyz`),
//! Prometheus metrics (`/metrics`) — open, for probes and scrapers on the
//! admin network — and the admin API under `/admin/v1/`, which always needs
//! an admin token or a console session (see [`api`]; only sign-in itself
//! does not), and allows each caller what its roles allow (see [`authz`]).
//!
//! Never serves proxied traffic, and never exposes a credential.

pub mod analytics;
pub mod api;
pub mod authz;
pub mod bootstrap;
pub mod compliance;
pub mod console;
pub mod control;
pub mod nodes;
pub mod openapi;
mod resources_api;
mod tokens;
pub mod users;

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
    /// The admin API's routes; `None` serves only the probes and metrics.
    pub api: Option<axum::Router>,
    /// The web console's routes ([`console::router`]), under `/console/`.
    pub console: Option<axum::Router>,
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
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, peer),
                Err(error) => {
                    tracing::warn!(%error, "admin listener failed to accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(dispatch(&state, peer, request).await) }
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

/// `/admin/v1/…` to the API, the rest to the probes and metrics; every answer
/// carries an `X-Request-Id`, and every error body its request id.
async fn dispatch(
    state: &AdminState,
    peer: std::net::SocketAddr,
    mut request: Request<Incoming>,
) -> Response<axum::body::Body> {
    let path = request.uri().path();
    if path == "/console" || path.starts_with("/console/") {
        if let Some(console) = state.console.clone() {
            let request_id = new_request_id();
            let response = console::handle(console, peer, request.map(axum::body::Body::new)).await;
            return with_request_id(response, &request_id).await;
        }
    }
    let is_api = path == "/admin/v1" || path.starts_with("/admin/v1/");
    let Some(router) = state.api.clone().filter(|_| is_api) else {
        return respond(state, &request).map(axum::body::Body::new);
    };
    let request_id = new_request_id();
    request.extensions_mut().insert(api::ClientAddr(peer));
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = match tower::ServiceExt::oneshot(router, request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    // Refused admin requests are on record in the log (writes and sign-ins
    // also in the audit log); the credential never is.
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        tracing::warn!(
            %request_id,
            %method,
            %path,
            client = %peer.ip(),
            status = status.as_u16(),
            "admin request refused"
        );
    }
    with_request_id(response, &request_id).await
}

/// Adds the request id to the header and, for errors, to the JSON error object.
async fn with_request_id(
    response: Response<axum::body::Body>,
    request_id: &str,
) -> Response<axum::body::Body> {
    let (mut parts, body) = response.into_parts();
    if let Ok(value) = HeaderValue::from_str(request_id) {
        parts.headers.insert(REQUEST_ID, value);
    }
    if !(parts.status.is_client_error() || parts.status.is_server_error()) {
        return Response::from_parts(parts, body);
    }
    let bytes = match http_body_util::BodyExt::collect(body).await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(mut value) if value["error"].is_object() => {
            value["error"]["request_id"] = request_id.into();
            let bytes = Bytes::from(value.to_string());
            parts.headers.remove(http::header::CONTENT_LENGTH);
            bytes
        }
        _ => bytes,
    };
    Response::from_parts(parts, axum::body::Body::from(body))
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
