//! The request pipeline: from a parsed request to a streamed response.
//!
//! ```text
//! limits → host → normalise path → route → forwarding headers
//!   → pick target → send (retry on connect failure) → stream response back
//!   → one AccessRecord when the response body ends
//! ```
//! Every answer the gateway gives itself goes through [`GatewayError`], so the
//! JSON body, status and the record's `reason` always agree.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tollgate_telemetry::{AccessLog, AccessRecord, Outcome};

use bytes::Bytes;
use tollgate_policy::cors::Cors;
use tollgate_policy::credentials::ClientCert;
use tollgate_policy::rate_limit::RateLimitStatus;
use tollgate_policy::{ApiPolicies, Denial, Identity};

use crate::body::{
    read_limited, ClientBody, PooledSender, RecordFinisher, RequestBody, RequestBodyError,
    RequestStats, ResponseBody,
};
use crate::boxed::boxed_in_place;
use crate::error::GatewayError;
use crate::forwarding::{self, ForwardInfo, X_REQUEST_ID};
use crate::h1_client::{H1Pool, UpstreamBody};
use crate::normalize::normalize_path;
use crate::passed_lines::PassedLines;
use crate::router::{RouteMatch, RouteRequest};
use crate::snapshot::{ApiRuntime, ServiceRuntime, Snapshot};
use crate::upstream::{PickInput, TargetState};

/// What the pipeline knows about the connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer's address as forwarding headers write it.
    pub peer_forms: forwarding::PeerForms,
    /// The client certificate, verified against `listen.tls.client_ca`.
    pub client_cert: Option<Arc<ClientCert>>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        ConnInfo {
            peer,
            tls,
            peer_forms: forwarding::PeerForms::new(peer.ip()),
            client_cert: None,
        }
    }
}

/// The data plane's shared state: the live snapshot and the record channel.
pub struct Proxy {
    pub snapshot: ArcSwap<Snapshot>,
    pub access_log: AccessLog,
}

type Failure = (GatewayError, Box<RecordFinisher>);

/// The gateway's own OAuth2 endpoints, answered on the proxy listener before routing.
const TOKEN_PATH: &str = "/oauth2/token";
const JWKS_PATH: &str = "/.well-known/jwks.json";
/// Largest token request body read.
const TOKEN_BODY_LIMIT: u64 = 16 * 1024;

/// What the response phase needs from the request phases.
struct Applied<'a> {
    policies: Option<&'a ApiPolicies>,
    origin: Option<HeaderValue>,
    rate_limit: Option<RateLimitStatus>,
    /// `Deprecation`, `Sunset` and `Link` for a deprecated API.
    lifecycle_headers: &'a [(http::HeaderName, HeaderValue)],
}

impl Proxy {
    pub fn new(snapshot: Arc<Snapshot>, access_log: AccessLog) -> Proxy {
        Proxy {
            snapshot: ArcSwap::new(snapshot),
            access_log,
        }
    }

    /// Serves one request; never fails: errors become JSON answers. Every
    /// header of the answer is in its map.
    pub fn handle<'a>(
        &'a self,
        conn: &'a ConnInfo,
        req: Request<ClientBody>,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + 'a {
        let answer = self.handle_passing_lines(conn, req);
        async move {
            let mut response = answer.await;
            let lines = response.body_mut().take_passed_lines();
            lines.append_to(response.headers_mut());
            response
        }
    }

    /// [`handle`](Self::handle) for a writer that also writes the
    /// upstream's header lines passed on unread, which the answer's body
    /// holds (see `passed_lines`): the lean HTTP/1.1 server.
    ///
    /// A plain function returning a future, as is `forward`: an `async fn`
    /// keeps its arguments twice in its future (as given and as moved into
    /// its body) and every local it ever held, and hyper keeps this future
    /// for each connection. Written this way the request's state holds only
    /// what lives across an await (measured: 4.9 KB before).
    ///
    /// Inlined into its callers: called, it returned its future (2.3 KB)
    /// through a temporary that was then copied into the lean server's
    /// state, twice a request (seen as two 2,328-byte `memcpy` calls under
    /// `gdb`); inlined, the future is built where it runs. Plain path
    /// ~25,850 → 25,280 instructions a request, auth 35,050 → 34,590.
    #[inline(always)]
    pub(crate) fn handle_passing_lines<'a>(
        &'a self,
        conn: &'a ConnInfo,
        req: Request<ClientBody>,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + 'a {
        let started = Instant::now();
        let snapshot = self.snapshot.load_full();
        let peer_ip = conn.peer.ip();
        let trusted = snapshot.is_trusted(peer_ip);
        let finisher = {
            let request_id = forwarding::request_id(req.headers(), trusted);
            let client_ip = forwarding::client_ip(&snapshot, peer_ip, req.headers());
            let mut record = AccessRecord::new(request_id, client_ip);
            record.method = method_name(req.method());
            record.host = request_host(&req)
                .map(host_without_port)
                .unwrap_or_default();
            record.path = truncate(req.uri().path(), snapshot.max_uri).to_string();
            let request_id_header = HeaderValue::from_str(&record.request_id)
                .unwrap_or(HeaderValue::from_static("invalid"));
            Box::new(RecordFinisher {
                request_id_header,
                record,
                started,
                access_log: self.access_log.clone(),
                stats: None,
                metrics: None,
                target: None,
            })
        };
        async move {
            match self.forward(&snapshot, conn, trusted, finisher, req).await {
                Ok(response) => response,
                Err((error, finisher)) => {
                    let mut response = error_response(&error, finisher);
                    // HSTS belongs on every TLS answer, the gateway's own included.
                    if let (true, Some(hsts)) = (conn.tls, &snapshot.hsts) {
                        response
                            .headers_mut()
                            .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
                    }
                    response
                }
            }
        }
    }

    // Not an `async fn`, for the reason `handle` gives: its arguments would
    // be kept twice in the request's future.
    #[allow(clippy::manual_async_fn)]
    fn forward<'a>(
        &'a self,
        snapshot: &'a Snapshot,
        conn: &'a ConnInfo,
        trusted: bool,
        mut fin: Box<RecordFinisher>,
        mut req: Request<ClientBody>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, Failure>> + Send + 'a {
        async move {
            // An answer sent before the request body was read closes the
            // connection, whatever the error: the unread bytes must not be parsed
            // as the next request, and the client must not reuse a connection
            // hyper drops.
            let mut unread_body = !http_body::Body::is_end_stream(req.body());
            // Once routed, a deprecated API's headers go on every answer, errors included.
            let mut lifecycle_headers: &[(http::HeaderName, HeaderValue)] = &[];
            // An AI API's `/messages` answers errors in Anthropic's format.
            let mut anthropic_errors = false;
            macro_rules! fail {
                ($error:expr) => {{
                    let mut error = $error;
                    error.anthropic_body = anthropic_errors;
                    error
                        .extra_headers
                        .extend(lifecycle_headers.iter().cloned());
                    return Err((if unread_body { error.closing() } else { error }, fin));
                }};
            }

            // Limits and framing: what a request may not be, whatever its route.
            if let Some(pq) = req.uri().path_and_query() {
                if pq.as_str().len() > snapshot.max_uri {
                    fail!(GatewayError::uri_too_long(format!(
                        "the request target exceeds {} bytes",
                        snapshot.max_uri
                    )));
                }
            }
            let headers = req.headers();
            // hyper keeps only one of the two; the framing guard marks the other.
            if crate::framing::has_conflicting_framing(headers) {
                fail!(GatewayError::bad_request(
                    "a request may not carry both Content-Length and Transfer-Encoding"
                )
                .closing());
            }
            // Parsed once; the API's own body limit is checked against it after routing.
            let declared_length = match content_length(headers) {
                Ok(Some(length)) if length > snapshot.max_body => {
                    fail!(GatewayError::payload_too_large(format!(
                        "the request body exceeds {} bytes",
                        snapshot.max_body
                    ))
                    .closing());
                }
                Ok(length) => length,
                Err(()) => fail!(GatewayError::bad_request("invalid Content-Length").closing()),
            };

            if let Some(port) = snapshot.redirect_https_port {
                if !conn.tls {
                    return Ok(redirect_to_https(&req, port, fin));
                }
            }

            // Cheap clones (shared buffers) so that borrows outlive `req.into_parts()`.
            let uri = req.uri().clone();
            let host_value = req.headers().get(header::HOST).cloned();
            // The host the client asked for, and the `Host` value it came in
            // when it came that way (shared, where a copy would be made).
            let (host_header, host_from_header): (&str, Option<&HeaderValue>) =
                match uri.authority() {
                    Some(authority) => (authority.as_str(), None),
                    None => (
                        host_value
                            .as_ref()
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or(""),
                        host_value.as_ref(),
                    ),
                };
            let path = match normalize_path(uri.path()) {
                Ok(path) => path,
                Err(e) => fail!(GatewayError::bad_request(e.message())),
            };

            if let Some(issuer) = &snapshot.security.issuer {
                if path == TOKEN_PATH || path == JWKS_PATH {
                    return Ok(boxed_in_place(|| {
                        oauth2_endpoint(&snapshot.security, issuer, &path, req, fin)
                    })
                    .await);
                }
            }

            // A CORS preflight is routed by the method it asks about, and answered
            // by the API's `cors` policy when it has one.
            let preflight_method = Cors::is_preflight(req.method(), req.headers())
                .then(|| {
                    req.headers()
                        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
                        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
                })
                .flatten();
            let lookup = |method: &Method| {
                snapshot.router.lookup(&RouteRequest {
                    host: &fin.record.host,
                    path: &path,
                    method,
                    headers: req.headers(),
                })
            };
            let mut found = lookup(preflight_method.as_ref().unwrap_or(req.method()));
            let mut preflight = false;
            if preflight_method.is_some() {
                match found {
                    RouteMatch::Found { api }
                        if snapshot.apis[api]
                            .policies
                            .as_ref()
                            .is_some_and(|p| p.cors.is_some()) =>
                    {
                        preflight = true
                    }
                    _ => found = lookup(req.method()),
                }
            }
            let api_index = match found {
                RouteMatch::Found { api } => api,
                RouteMatch::MethodNotAllowed { allow } => {
                    let allow = HeaderValue::from_str(&allow.allow_header())
                        .unwrap_or(HeaderValue::from_static(""));
                    fail!(GatewayError::method_not_allowed(format!(
                        "{} is not allowed here",
                        req.method()
                    ))
                    .with_header(header::ALLOW, allow));
                }
                RouteMatch::NotFound => {
                    let message = format!(
                        "no API matches {} {}{}",
                        req.method(),
                        fin.record.host,
                        path
                    );
                    fail!(GatewayError::no_route(message))
                }
            };
            let api: &ApiRuntime = &snapshot.apis[api_index];
            fin.record.api = Some(api.name.clone());
            fin.record.service = api.service.as_ref().map(|s| s.name.clone());
            fin.metrics = Some(api.metrics.clone());
            lifecycle_headers = &api.lifecycle.headers;
            anthropic_errors =
                api.ai.is_some() && path.trim_end_matches('/').ends_with("/messages");

            // Only the gateway says who the caller is, and the method and path
            // judged are the ones served.
            tollgate_policy::engine::remove_forbidden_request_headers(req.headers_mut());
            let policies = api.policies.as_deref();
            let mut identity: Option<Identity> = None;
            let mut applied = Applied {
                policies,
                // Only the `cors` policy reads the request's origin back.
                origin: policies
                    .filter(|p| p.cors.is_some())
                    .and_then(|_| req.headers().get(header::ORIGIN).cloned()),
                rate_limit: None,
                lifecycle_headers,
            };
            // A retired API is answered here, before any policy: there is nothing
            // left to protect, and the caller learns where to go.
            if let Some(retired) = &api.lifecycle.retired {
                fail!(with_cors(retired.clone(), &applied));
            }
            let mut max_body = snapshot.max_body;
            macro_rules! deny {
                ($denial:expr) => {
                    fail!(denied($denial, &applied))
                };
            }
            if snapshot.security.blocks.has_ips() {
                let now = tollgate_policy::blocks::now_unix();
                if let Err(denial) = snapshot.security.blocks.check_ip(fin.record.client_ip, now) {
                    deny!(denial);
                }
            }
            if let Some(policies) = policies {
                if let Some(ip) = &policies.ip {
                    if let Err(denial) = ip.check(fin.record.client_ip) {
                        deny!(denial);
                    }
                }
                if preflight {
                    if let Some(cors) = &policies.cors {
                        match cors.preflight(req.headers()) {
                            Ok(mut headers) => {
                                headers.extend(lifecycle_headers.iter().cloned());
                                return Ok(preflight_response(headers, fin));
                            }
                            Err(denial) => deny!(denial),
                        }
                    }
                }
                if policies.needs_authorize() {
                    let (mut parts, body) = req.into_parts();
                    // Boxed: token verification's future is large (JWKS fetch, introspection)
                    // and would otherwise enlarge every request's future, with or without auth.
                    let authorized = boxed_in_place(|| {
                        policies.authorize(
                            &snapshot.security,
                            &mut parts,
                            conn.client_cert.as_deref(),
                        )
                    })
                    .await;
                    req = Request::from_parts(parts, body);
                    match authorized {
                        Ok(found) => identity = found,
                        Err(denial) => deny!(denial),
                    }
                }
                if let Some(identity) = &identity {
                    fin.record.consumer = Some(identity.consumer.name.clone());
                }
                match policies
                    .limit(
                        &snapshot.security,
                        identity.as_ref(),
                        fin.record.client_ip,
                        req.headers(),
                    )
                    .await
                {
                    Ok(status) => applied.rate_limit = status,
                    Err(denial) => deny!(denial),
                }
                if let Some(limit) = policies.max_body {
                    max_body = max_body.min(limit);
                    if declared_length.is_some_and(|n| n > limit) {
                        deny!(Denial::payload_too_large(format!(
                            "the request body exceeds {limit} bytes"
                        )));
                    }
                }
            }
            if let Some(ai_api) = &api.ai {
                let (parts, body) = req.into_parts();
                let body = (!http_body::Body::is_end_stream(&body)).then_some(body);
                let request_id = fin.request_id_header.clone();
                let request = crate::ai::handler::AiRequest {
                    runtime: &snapshot.ai,
                    api: ai_api,
                    api_name: &api.name,
                    policies,
                    counters: &snapshot.security.counters,
                    identity: identity.as_ref(),
                    client_ip: fin.record.client_ip,
                    path: &path,
                    max_body,
                };
                // Boxed: the AI handler's future is large, and would otherwise
                // enlarge every request's future, AI or not.
                let mut response =
                    boxed_in_place(|| crate::ai::handler::serve(request, parts, body, fin)).await;
                finish_headers(
                    AnswerHeaders::Map(response.headers_mut()),
                    snapshot,
                    conn,
                    request_id,
                    &applied,
                );
                return Ok(response);
            }
            let Some(service) = api.service.as_ref() else {
                fail!(GatewayError::internal("the API has no service"));
            };
            let body_limit_error = |limit: u64| {
                let message = format!("the request body exceeds {limit} bytes");
                if limit < snapshot.max_body {
                    denied(Denial::payload_too_large(message), &applied).closing()
                } else {
                    GatewayError::payload_too_large(message).closing()
                }
            };

            let upstream_path = strip_prefix(&path, api.strip_prefix.as_deref());
            let is_upgrade = is_upgrade_request(&req);
            let client_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
            let (mut parts, body) = req.into_parts();

            forwarding::remove_hop_by_hop(&mut parts.headers, is_upgrade);
            // Room for the headers added below, so the map grows at most once.
            parts.headers.reserve(8);
            forwarding::set_forwarded_headers(
                &mut parts.headers,
                &ForwardInfo {
                    peer: &conn.peer_forms,
                    trusted_peer: trusted,
                    tls: conn.tls,
                    host: host_header,
                    host_value: host_from_header,
                },
            );
            parts
                .headers
                .insert(X_REQUEST_ID.clone(), fin.request_id_header.clone());
            forwarding::ensure_traceparent(&mut parts.headers);
            if let Some(policies) = policies {
                policies.transform_request(&mut parts.headers, identity.as_ref());
            }
            if api.preserve_host && !host_header.is_empty() {
                let value = match host_from_header {
                    Some(value) => Ok(value.clone()),
                    None => HeaderValue::from_str(host_header),
                };
                if let Ok(value) = value {
                    parts.headers.insert(header::HOST, value);
                }
            } else {
                parts.headers.remove(header::HOST);
            }

            let has_body = !http_body::Body::is_end_stream(&body);
            // Only a request with a body has anything to count or limit.
            let request_stats = has_body.then(|| Arc::new(RequestStats::default()));
            fin.stats = request_stats.clone();
            let mut body = has_body.then_some(body);
            // A body a policy must read is read whole (within its bound) before anything is sent.
            let mut buffered: Option<Bytes> = None;
            if let Some(validator) = policies
                .filter(|p| p.buffers_body(&parts.method, has_body))
                .and_then(|p| p.validator.as_ref())
            {
                let bytes = match (body.take(), &request_stats) {
                    (Some(incoming), Some(stats)) => {
                        match read_limited(incoming, max_body, stats).await {
                            Ok(bytes) => bytes,
                            Err(RequestBodyError::TooLarge(limit)) => {
                                fail!(body_limit_error(limit))
                            }
                            Err(RequestBodyError::Client(_)) => fail!(GatewayError::bad_request(
                                "the request body could not be read"
                            )
                            .closing()),
                        }
                    }
                    _ => Bytes::new(),
                };
                unread_body = false;
                if let Err(denial) =
                    validator.validate(parts.headers.get(header::CONTENT_TYPE), &bytes)
                {
                    deny!(denial);
                }
                buffered = Some(bytes);
            }
            let attempts = if (!has_body || buffered.is_some()) && is_idempotent(&parts.method) {
                1 + service.retries
            } else {
                1
            };
            let version = if service.http2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            };

            let mut tried = 0u64;
            let mut last_error = None;
            for attempt in 0..attempts {
                let pick = service.pick(
                    &PickInput {
                        headers: &parts.headers,
                        client_ip: fin.record.client_ip,
                    },
                    tried,
                );
                let Some(index) = pick else { break };
                tried |= 1u64 << (index % 64);
                let target = &service.targets[index];
                let pooled = service.uses_pool(target);
                // Built in a block of its own: what goes into it is not kept
                // in the request's future while the answer is awaited.
                let outgoing = {
                    let Some(uri) = upstream_uri(target, upstream_path, &parts.uri, !pooled) else {
                        fail!(GatewayError::bad_request(
                            "the request path cannot be forwarded"
                        ));
                    };
                    let mut headers = if attempt + 1 < attempts {
                        parts.headers.clone()
                    } else {
                        std::mem::take(&mut parts.headers)
                    };
                    // The general client derives `Host` from the URI; the pool sends origin-form.
                    if pooled && !(api.preserve_host && headers.contains_key(header::HOST)) {
                        headers.insert(header::HOST, target.host_header.clone());
                    }
                    let request_body = match (&buffered, body.take(), &request_stats) {
                        (Some(bytes), _, _) => RequestBody::full(bytes.clone()),
                        (None, Some(incoming), Some(stats)) => {
                            RequestBody::streaming(incoming, stats.clone(), max_body)
                        }
                        _ => RequestBody::empty(),
                    };
                    let mut upstream_request = Request::new(request_body);
                    *upstream_request.method_mut() = parts.method.clone();
                    *upstream_request.uri_mut() = uri;
                    *upstream_request.version_mut() = version;
                    *upstream_request.headers_mut() = headers;
                    Outgoing::new(service, target, pooled, upstream_request)
                };

                fin.record.upstream_addr = Some(target.addr_label.clone());
                target.in_flight.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                let result =
                    tokio::time::timeout(service.response_timeout, outgoing.send(service, target))
                        .await;
                match result {
                    Ok(Ok((response, pooled))) => {
                        target.record_success();
                        fin.record.upstream_latency_ms =
                            Some(sent.elapsed().as_secs_f64() * 1000.0);
                        fin.target = Some(target.clone());
                        return Ok(respond(
                            snapshot,
                            conn,
                            response,
                            fin,
                            client_upgrade,
                            pooled,
                            &applied,
                        ));
                    }
                    Ok(Err(failure)) => {
                        target.in_flight.fetch_sub(1, Ordering::Relaxed);
                        // The client's own body failing is no fault of the target.
                        let stats = request_stats.as_deref();
                        if stats.is_some_and(|s| s.too_large.load(Ordering::Relaxed)) {
                            fail!(body_limit_error(max_body));
                        }
                        if stats.is_some_and(|s| s.client_error.load(Ordering::Relaxed)) {
                            fail!(
                                GatewayError::bad_request("the request body could not be read")
                                    .closing()
                            );
                        }
                        target.record_failure(&service.passive);
                        let error = failure.classify(service);
                        if !error.retryable {
                            fail!(error);
                        }
                        last_error = Some(error);
                    }
                    Err(_elapsed) => {
                        target.in_flight.fetch_sub(1, Ordering::Relaxed);
                        target.record_failure(&service.passive);
                        fail!(GatewayError::upstream_timeout(format!(
                            "the upstream of service {} did not answer within {:?}",
                            service.name, service.response_timeout
                        )));
                    }
                }
            }
            let error = last_error.unwrap_or_else(|| {
                GatewayError::no_healthy_upstream(format!(
                    "service {} has no healthy target",
                    service.name
                ))
            });
            fail!(error)
        }
    }
}

/// Turns the upstream's response into the client's, or opens a WebSocket tunnel.
fn respond(
    snapshot: &Snapshot,
    conn: &ConnInfo,
    mut response: Response<UpstreamBody>,
    mut fin: Box<RecordFinisher>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    pooled: Option<PooledSender>,
    applied: &Applied<'_>,
) -> Response<ResponseBody> {
    let status = response.status();
    fin.record.status = status.as_u16();
    fin.record.upstream_status = Some(status.as_u16());
    fin.record.outcome = Outcome::Allowed;

    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let (mut parts, _) = response.into_parts();
            forwarding::remove_hop_by_hop(&mut parts.headers, true);
            parts
                .headers
                .insert(X_REQUEST_ID.clone(), fin.request_id_header.clone());
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade, fin));
            return Response::from_parts(parts, ResponseBody::full(bytes::Bytes::new(), None));
        }
    }

    let (mut parts, mut body) = response.into_parts();
    // Policies that edit an answer's headers see all of them.
    let edits = applied
        .policies
        .is_some_and(ApiPolicies::edits_response_headers);
    if edits {
        body.take_passed_lines().append_to(&mut parts.headers);
    }
    // Lean answers come without hop-by-hop headers (see `h1_client::parse_head`):
    // this finds none in them, in one pass over the names.
    forwarding::remove_hop_by_hop(&mut parts.headers, false);
    let request_id = fin.request_id_header.clone();
    // An answer whose headers are all passed-on lines (the usual lean one)
    // gets the gateway's as lines too: no map to allocate, hash and drop.
    // None of the upstream's can clash with them, as the upstream's
    // headers of those names go to the map (see `passed_lines`).
    match body.passed_lines_mut() {
        Some(lines) if !edits && parts.headers.is_empty() => {
            finish_headers(
                AnswerHeaders::Lines(lines),
                snapshot,
                conn,
                request_id,
                applied,
            );
        }
        _ => finish_headers(
            AnswerHeaders::Map(&mut parts.headers),
            snapshot,
            conn,
            request_id,
            applied,
        ),
    }
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, ResponseBody::upstream(body, Some(fin), pooled))
}

/// Where [`finish_headers`] writes: an answer's map, or the lines passed
/// on with its body when the map holds nothing.
enum AnswerHeaders<'a> {
    Map(&'a mut http::HeaderMap),
    Lines(&'a mut PassedLines),
}

impl AnswerHeaders<'_> {
    /// Sets `name`, in place of any value it had.
    fn set(&mut self, name: &http::HeaderName, value: HeaderValue) {
        match self {
            AnswerHeaders::Map(map) => {
                map.insert(name.clone(), value);
            }
            AnswerHeaders::Lines(lines) => lines.push(name.as_str(), value.as_bytes()),
        }
    }

    /// Adds a value to those `name` has.
    fn append(&mut self, name: &http::HeaderName, value: HeaderValue) {
        match self {
            AnswerHeaders::Map(map) => {
                map.append(name.clone(), value);
            }
            AnswerHeaders::Lines(lines) => lines.push(name.as_str(), value.as_bytes()),
        }
    }
}

/// The headers the gateway sets on every answer of a routed API, the
/// upstream's or the AI gateway's: response policies, request id, rate-limit
/// status, lifecycle, `nosniff`, HSTS. Written as lines, the answer's own
/// headers hold none of these names and no policy edits them (see
/// `respond`): so each is simply added.
fn finish_headers(
    mut headers: AnswerHeaders<'_>,
    snapshot: &Snapshot,
    conn: &ConnInfo,
    request_id: HeaderValue,
    applied: &Applied<'_>,
) {
    if let AnswerHeaders::Map(map) = &mut headers {
        if let Some(policies) = applied.policies {
            policies.transform_response(applied.origin.as_ref(), map);
        }
    }
    headers.set(&X_REQUEST_ID, request_id);
    if let Some(status) = &applied.rate_limit {
        match &mut headers {
            AnswerHeaders::Map(map) => status.apply(map),
            AnswerHeaders::Lines(lines) => {
                if let Some(closest) = status.closest() {
                    for (name, n) in closest.numbers() {
                        lines.push_number(name.as_str(), n);
                    }
                }
            }
        }
    }
    // The gateway's `Deprecation` and `Sunset` replace the upstream's; its
    // `Link` joins the upstream's own links (pagination and the like).
    for (name, value) in applied.lifecycle_headers {
        if name == header::LINK {
            headers.append(name, value.clone());
        } else {
            headers.set(name, value.clone());
        }
    }
    let nosniff = HeaderValue::from_static("nosniff");
    match &mut headers {
        AnswerHeaders::Map(map) => {
            map.entry(header::X_CONTENT_TYPE_OPTIONS).or_insert(nosniff);
        }
        AnswerHeaders::Lines(_) => headers.set(&header::X_CONTENT_TYPE_OPTIONS, nosniff),
    }
    if conn.tls {
        if let Some(hsts) = &snapshot.hsts {
            headers.set(&header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
    }
}

/// Copies bytes both ways between an upgraded client and upstream, then
/// writes the request's record with what went through.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    fin: Box<RecordFinisher>,
) {
    let (client, upstream) = tokio::join!(client, upstream);
    let mut body = ResponseBody::full(bytes::Bytes::new(), Some(fin));
    match (client, upstream) {
        (Ok(client), Ok(upstream)) => {
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            if let Ok((sent, received)) =
                tokio::io::copy_bidirectional(&mut client, &mut upstream).await
            {
                body.set_tunnel_bytes(sent, received);
            }
        }
        (client, upstream) => {
            tracing::debug!(
                client_ok = client.is_ok(),
                upstream_ok = upstream.is_ok(),
                "upgrade failed"
            );
        }
    }
    drop(body);
}

/// The answer for an error, carrying the request's record to completion.
pub fn error_response(
    error: &GatewayError,
    mut fin: Box<RecordFinisher>,
) -> Response<ResponseBody> {
    fin.record.status = error.status.as_u16();
    fin.record.outcome = if error.source == crate::error::ErrorSource::Policy {
        Outcome::Denied
    } else {
        Outcome::Error
    };
    fin.record.reason = Some(error.code);
    let (parts, body) = error.into_response_parts(&fin.record.request_id);
    Response::from_parts(parts, ResponseBody::full(body, Some(fin)))
}

/// A policy's refusal, with the CORS headers a browser needs to read it.
fn denied(denial: Denial, applied: &Applied<'_>) -> GatewayError {
    let mut error = with_cors(GatewayError::from(denial), applied);
    if let Some(status) = &applied.rate_limit {
        let mut headers = http::HeaderMap::new();
        status.apply(&mut headers);
        for (name, value) in headers.iter() {
            if !error.extra_headers.iter().any(|(n, _)| n == name) {
                error.extra_headers.push((name.clone(), value.clone()));
            }
        }
    }
    error
}

/// An answer for a routed API, with the CORS headers a browser needs to read it.
fn with_cors(mut error: GatewayError, applied: &Applied<'_>) -> GatewayError {
    if let Some(policies) = applied.policies {
        let mut headers = http::HeaderMap::new();
        policies.cors_headers(applied.origin.as_ref(), &mut headers);
        for (name, value) in headers.iter() {
            error.extra_headers.push((name.clone(), value.clone()));
        }
    }
    error
}

/// The answer to an allowed CORS preflight: 204 with the policy's headers.
fn preflight_response(
    headers: http::HeaderMap,
    mut fin: Box<RecordFinisher>,
) -> Response<ResponseBody> {
    fin.record.status = 204;
    fin.record.outcome = Outcome::Allowed;
    let request_id = fin.request_id_header.clone();
    let mut response = Response::new(ResponseBody::full(Bytes::new(), Some(fin)));
    *response.status_mut() = StatusCode::NO_CONTENT;
    *response.headers_mut() = headers;
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id);
    response
}

/// `POST /oauth2/token` and `GET /.well-known/jwks.json`.
async fn oauth2_endpoint(
    security: &tollgate_policy::Security,
    issuer: &tollgate_policy::oauth2::TokenIssuer,
    path: &str,
    req: Request<ClientBody>,
    mut fin: Box<RecordFinisher>,
) -> Response<ResponseBody> {
    let method = req.method().clone();
    let (response, consumer) = if path == JWKS_PATH {
        if method != Method::GET && method != Method::HEAD {
            let error = GatewayError::method_not_allowed("use GET")
                .with_header(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return error_response(&error, fin);
        }
        (issuer.jwks_response(), None)
    } else {
        if method != Method::POST {
            let error = GatewayError::method_not_allowed("use POST")
                .with_header(header::ALLOW, HeaderValue::from_static("POST"));
            return error_response(&error, fin);
        }
        if let Some(limits) = &security.issuer_limits {
            let input = tollgate_policy::rate_limit::LimitInput {
                consumer: None,
                client_ip: fin.record.client_ip,
                api: TOKEN_PATH,
                headers: req.headers(),
            };
            if let Err(denial) = limits.check(&*security.counters, &input).await {
                return error_response(&GatewayError::from(denial), fin);
            }
        }
        let (parts, body) = req.into_parts();
        let stats = RequestStats::default();
        let bytes = match read_limited(body, TOKEN_BODY_LIMIT, &stats).await {
            Ok(bytes) => bytes,
            Err(RequestBodyError::TooLarge(_)) => {
                let error = GatewayError::payload_too_large("the token request is too large");
                return error_response(&error, fin);
            }
            Err(RequestBodyError::Client(_)) => {
                let error = GatewayError::bad_request("the request body could not be read");
                return error_response(&error.closing(), fin);
            }
        };
        fin.record.bytes_in = bytes.len() as u64;
        issuer.token_response(&parts.headers, &bytes)
    };
    let (mut parts, body) = response.into_parts();
    fin.record.status = parts.status.as_u16();
    fin.record.consumer = consumer;
    (fin.record.outcome, fin.record.reason) = match parts.status.as_u16() {
        200..=299 => (Outcome::Allowed, None),
        401 => (Outcome::Denied, Some("invalid_credentials")),
        _ => (Outcome::Denied, Some("bad_request")),
    };
    parts
        .headers
        .insert(X_REQUEST_ID.clone(), fin.request_id_header.clone());
    Response::from_parts(parts, ResponseBody::full(body, Some(fin)))
}

fn redirect_to_https(
    req: &Request<ClientBody>,
    port: u16,
    mut fin: Box<RecordFinisher>,
) -> Response<ResponseBody> {
    let host = host_without_port(request_host(req).unwrap_or("localhost"));
    let authority = if port == 443 {
        host
    } else {
        format!("{host}:{port}")
    };
    let location = format!(
        "https://{authority}{}",
        req.uri().path_and_query().map_or("/", |pq| pq.as_str())
    );
    fin.record.status = 308;
    fin.record.reason = Some("https_redirect");
    let mut response = Response::new(ResponseBody::full(bytes::Bytes::new(), Some(fin)));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// The host the client asked for: the URI's authority (HTTP/2, absolute-form)
/// or the `Host` header.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.as_str());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
}

/// Lower-case host without its port; IPv6 literals keep their brackets.
fn host_without_port(host: &str) -> String {
    let name = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.to_ascii_lowercase()
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `Err` when the header is present but not one valid number (hyper already
/// refuses differing duplicates; this catches the rest).
///
/// Read from the bytes, digit by digit: splitting the text and parsing each
/// item with `str::parse` cost ~400 instructions on every request with a body.
pub(crate) fn content_length(headers: &http::HeaderMap) -> Result<Option<u64>, ()> {
    let mut found = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let n = crate::framing::content_length_value(item).ok_or(())?;
            if found.is_some_and(|f| f != n) {
                return Err(());
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// A WebSocket handshake, the only upgrade tunnelled. Any other (`h2c`
/// above all) is forwarded as a plain request without its `Upgrade`: once a
/// tunnel is open, what goes through it meets no policy, so an upstream that
/// switched to HTTP/2 would serve requests the gateway never saw.
fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))
        && req
            .headers()
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// The method as the access record names it: a static string for the
/// standard ones (an allocation a request, freed by the writer's thread,
/// otherwise).
fn method_name(method: &Method) -> std::borrow::Cow<'static, str> {
    let name = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return method.as_str().to_owned().into(),
    };
    name.into()
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Removes `prefix` from `path` at a segment boundary; what is left starts with '/'.
fn strip_prefix<'a>(path: &'a str, prefix: Option<&str>) -> &'a str {
    if let Some(prefix) = prefix {
        if let Some(rest) = path.strip_prefix(prefix) {
            if rest.is_empty() {
                return "/";
            }
            if rest.starts_with('/') {
                return rest;
            }
        }
    }
    path
}

/// The URI sent to `target` for `path` (the client's, routed) with the
/// query of `client`, the URI the client sent as the policies left it (the
/// auth policy may have taken its credential out of the query).
fn upstream_uri(target: &TargetState, path: &str, client: &Uri, absolute: bool) -> Option<Uri> {
    let query = client.query();
    // The client's own path and query, when they go on unchanged (no prefix
    // stripped, nothing normalised, no base path): a reference count, where
    // joining and parsing them again cost ~450 instructions a request.
    if !absolute && target.base_path.is_empty() {
        if let Some(sent) = client.path_and_query().filter(|sent| sent.path() == path) {
            return Some(Uri::from(sent.clone()));
        }
    }
    let mut path_and_query = String::with_capacity(
        target.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
    );
    path_and_query.push_str(&target.base_path);
    path_and_query.push_str(path);
    if let Some(query) = query {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    if !absolute {
        return Uri::try_from(path_and_query).ok();
    }
    Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .ok()
}

/// Why an upstream exchange failed.
enum SendError {
    /// No connection could be made: nothing was sent, another target may be tried.
    Connect(String),
    /// The exchange broke after the request was (perhaps partly) sent.
    Failed(String),
}

impl From<crate::h1_client::SendError> for SendError {
    fn from(error: crate::h1_client::SendError) -> SendError {
        match error {
            crate::h1_client::SendError::Connect(error) => SendError::Connect(error),
            crate::h1_client::SendError::Broken(error) => SendError::Failed(error),
        }
    }
}

impl SendError {
    /// The gateway's answer for this failure; its `retryable` decides whether
    /// another target is tried.
    fn classify(self, service: &ServiceRuntime) -> GatewayError {
        match self {
            SendError::Connect(error) => {
                tracing::debug!(service = %service.name, %error, "upstream connect failed");
                GatewayError::upstream_unavailable(format!(
                    "cannot connect to the upstream of service {}",
                    service.name
                ))
            }
            SendError::Failed(error) => {
                tracing::debug!(service = %service.name, %error, "upstream request failed");
                GatewayError::upstream_error(format!(
                    "the upstream of service {} failed to answer",
                    service.name
                ))
            }
        }
    }
}

type Sent = Result<(Response<UpstreamBody>, Option<PooledSender>), SendError>;

/// A request on its way to one target.
enum Outgoing<'a> {
    /// The bytes of a bodiless request, for the target's lean client (see
    /// [`goes_lean`]): the request itself is not kept while its answer is
    /// awaited.
    Lean(Vec<u8>),
    /// Any other request, through hyper: boxed, as its future is large and
    /// would otherwise enlarge every request's.
    General(Pin<Box<dyn Future<Output = Sent> + Send + 'a>>),
}

impl<'a> Outgoing<'a> {
    fn new(
        service: &'a ServiceRuntime,
        target: &'a Arc<TargetState>,
        pooled: bool,
        request: Request<RequestBody>,
    ) -> Outgoing<'a> {
        if pooled && goes_lean(&request) {
            let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
            return Outgoing::Lean(H1Pool::bodiless_request(
                request.method(),
                path_and_query,
                request.headers(),
            ));
        }
        Outgoing::General(boxed_in_place(|| send(service, target, pooled, request)))
    }

    async fn send(self, service: &ServiceRuntime, target: &TargetState) -> Sent {
        match self {
            Outgoing::Lean(request) => {
                let timeouts = crate::h1_client::Timeouts {
                    connect: service.connect_timeout,
                    idle: service.idle_timeout,
                };
                let response = target.lean.send(&request, timeouts).await?;
                Ok((response, None))
            }
            Outgoing::General(sending) => sending.await,
        }
    }
}

/// Sends one request to one target through hyper's client: its HTTP/1.1
/// pool, or the general client (TLS, HTTP/2).
async fn send(
    service: &ServiceRuntime,
    target: &Arc<TargetState>,
    pooled: bool,
    request: Request<RequestBody>,
) -> Sent {
    if !pooled {
        return match service.client.request(request).await {
            Ok(response) => Ok((response.map(UpstreamBody::from), None)),
            Err(error) if error.is_connect() => Err(SendError::Connect(error.to_string())),
            Err(error) => Err(SendError::Failed(error.to_string())),
        };
    }
    let mut request = request;
    // A reused connection may have been closed by the upstream just now; hyper
    // then hands the unsent request back and it goes out on another connection.
    for _ in 0..3 {
        let (mut sender, reused) = target
            .pool
            .checkout(
                target.authority.as_str(),
                service.connect_timeout,
                service.idle_timeout,
            )
            .await
            .map_err(|e| SendError::Connect(e.to_string()))?;
        match sender.try_send_request(request).await {
            Ok(response) => {
                let pooled = PooledSender {
                    target: target.clone(),
                    sender,
                };
                return Ok((response.map(UpstreamBody::from), Some(pooled)));
            }
            Err(mut error) => match error.take_message() {
                Some(unsent) if reused => request = unsent,
                Some(_) => return Err(SendError::Connect(error.into_error().to_string())),
                None => return Err(SendError::Failed(error.into_error().to_string())),
            },
        }
    }
    Err(SendError::Connect(
        "upstream connections keep closing".into(),
    ))
}

/// Whether a request to a plain HTTP/1.1 target is sent by the lean client,
/// in the request's task (`h1_client`): one without a body, not `HEAD` or
/// `CONNECT`, asking for no protocol upgrade. hyper's client drives each
/// connection in a task of its own and hands requests and answers across;
/// here the exchange costs ~12,000 fewer instructions a request (measured
/// with `bench/lean-h1-spike`). Bodies, upgrades and `HEAD` stay with hyper.
fn goes_lean(request: &Request<RequestBody>) -> bool {
    http_body::Body::is_end_stream(request.body())
        && request.method() != Method::HEAD
        && request.method() != Method::CONNECT
        && !request.headers().contains_key(header::UPGRADE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_path_and_query_go_on_as_the_client_sent_them() {
        let target = crate::upstream::TargetState::new("s", "http://127.0.0.1:9000").unwrap();
        let based = crate::upstream::TargetState::new("s", "http://127.0.0.1:9000/base").unwrap();
        let client: Uri = "/a/b?x=1".parse().unwrap();
        let sent = upstream_uri(&target, "/a/b", &client, false).unwrap();
        assert_eq!(sent, "/a/b?x=1");
        // The client's bytes, not a copy.
        assert_eq!(
            sent.path_and_query().unwrap().as_str().as_ptr(),
            client.path_and_query().unwrap().as_str().as_ptr()
        );
        // The query as a policy left it: the auth policy's key taken out.
        let key_taken_out: Uri = "/a/b".parse().unwrap();
        assert_eq!(
            upstream_uri(&target, "/a/b", &key_taken_out, false).unwrap(),
            "/a/b"
        );
        // Anything changed is built: a base path, a prefix stripped, an
        // absolute URI for the general client.
        let built = [
            (
                upstream_uri(&based, "/a/b", &client, false),
                "/base/a/b?x=1",
            ),
            (upstream_uri(&target, "/b", &client, false), "/b?x=1"),
            (
                upstream_uri(&target, "/a/b", &client, true),
                "http://127.0.0.1:9000/a/b?x=1",
            ),
        ];
        for (uri, expected) in built {
            assert_eq!(uri.unwrap(), expected);
        }
    }

    #[test]
    fn strip_prefix_at_segment_boundaries() {
        assert_eq!(strip_prefix("/orders", Some("/orders")), "/");
        assert_eq!(strip_prefix("/orders/42", Some("/orders")), "/42");
        assert_eq!(strip_prefix("/ordersx", Some("/orders")), "/ordersx");
        assert_eq!(strip_prefix("/orders/42", None), "/orders/42");
    }

    #[test]
    fn hosts_lose_ports_and_case() {
        assert_eq!(host_without_port("API.example.com:8000"), "api.example.com");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("a.b"), "a.b");
    }

    #[test]
    fn content_length_forms() {
        let mut h = http::HeaderMap::new();
        assert_eq!(content_length(&h), Ok(None));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        assert_eq!(content_length(&h), Ok(Some(10)));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("11"));
        assert_eq!(content_length(&h), Err(()));
        let mut h = http::HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("-1"));
        assert_eq!(content_length(&h), Err(()));
        for bad in ["", " ", "+1", "1 2", "1,", "0x10", "18446744073709551616"] {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static(bad));
            assert_eq!(content_length(&h), Err(()), "{bad:?}");
        }
        for (good, n) in [
            (" 7 ", 7),
            ("7, 7", 7),
            ("007", 7),
            ("18446744073709551615", u64::MAX),
        ] {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static(good));
            assert_eq!(content_length(&h), Ok(Some(n)), "{good:?}");
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("7, 8"));
        assert_eq!(content_length(&h), Err(()));
    }
}
