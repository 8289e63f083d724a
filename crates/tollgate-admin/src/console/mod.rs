//! The web console, served by the admin listener under `/console/`:
//! server-rendered pages (maud), a stylesheet embedded in the binary, no
//! JavaScript needed.
//!
//! **Only through the admin API.** Every page gets its data, and every form
//! makes its change, by calling the admin API in-process with the user's
//! own session cookie, so the console can never do more than the user's
//! role allows: the API refuses it whatever the page offers.
//!
//! **Sessions and forms.** Sign-in is the API's (`POST /admin/v1/login`:
//! argon2, rate-limited per address, audited); its session cookie is
//! `HttpOnly; SameSite=Strict`. Every form carries a CSRF token that must
//! match the `tollgate_csrf` cookie (double submit, the cookie itself
//! `SameSite=Strict`): a form posted from another site has neither.

mod api_page;
mod chart;
mod govern;
mod manage;
mod pages;
mod portal;

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode,
};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::api::ClientAddr;

/// The CSRF cookie of the double-submit pattern.
const CSRF_COOKIE: &str = "tollgate_csrf";
/// The stylesheet and the one script, embedded.
const STYLE: &str = include_str!("style.css");
const SCRIPT: &str = include_str!("console.js");

/// What the console's handlers share: the admin API to call.
#[derive(Clone)]
pub struct Console {
    api: Router,
}

/// The console's routes, calling `api` (the admin API's router) for
/// everything it shows or changes.
pub fn router(api: Router) -> Router {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(dashboard))
        .route("/console/login", get(login_page).post(login))
        .route("/console/setup", get(setup_page).post(setup))
        .route("/console/logout", post(logout))
        .route(
            "/console/services",
            get(manage::services).post(manage::create_service),
        )
        .route("/console/apis", get(manage::apis).post(manage::create_api))
        .route("/console/apis/{name}", get(api_page::api))
        .route(
            "/console/apis/{name}/policies",
            post(api_page::save_policies),
        )
        .route(
            "/console/import",
            get(api_page::import_page).post(api_page::import),
        )
        .route(
            "/console/edit/{kind}/{name}",
            get(api_page::edit).post(api_page::save),
        )
        .route(
            "/console/apis/{name}/lifecycle",
            post(manage::change_lifecycle),
        )
        .route(
            "/console/consumers",
            get(manage::consumers).post(manage::create_consumer),
        )
        .route("/console/consumers/{name}/keys", post(manage::issue_key))
        .route(
            "/console/consumers/{name}/keys/{id}/rotate",
            post(manage::rotate_key),
        )
        .route(
            "/console/consumers/{name}/keys/{id}/revoke",
            post(manage::revoke_key),
        )
        .route(
            "/console/subscriptions",
            get(manage::subscriptions).post(manage::request_subscription),
        )
        .route(
            "/console/subscriptions/{id}/decide",
            post(manage::decide_subscription),
        )
        .route("/console/logs", get(manage::logs))
        .route("/console/portal", get(portal::portal))
        .route("/console/audit", get(manage::audit))
        .route("/console/ai", get(govern::ai))
        .route("/console/ai/providers", post(govern::create_provider))
        .route(
            "/console/users",
            get(govern::users).post(govern::create_user),
        )
        .route("/console/teams", post(govern::create_team))
        .route("/console/compliance", get(govern::compliance))
        .route(
            "/console/blocks",
            get(govern::blocks).post(govern::create_block),
        )
        .route("/console/blocks/{id}/lift", post(govern::lift_block))
        .route("/console/logs/export", get(manage::export_logs))
        .route("/console/logs/{request_id}", get(manage::log_detail))
        .route("/console/style.css", get(style))
        .route("/console/console.js", get(script))
        .fallback(not_found)
        .with_state(Console { api })
}

/// The console's answer to a request for `peer`.
pub async fn handle(
    console: Router,
    peer: SocketAddr,
    mut request: Request<Body>,
) -> Response<Body> {
    request.extensions_mut().insert(ClientAddr(peer));
    match tower::ServiceExt::oneshot(console, request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// An admin API answer: status, headers, JSON body (`Null` when none).
struct ApiAnswer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Console {
    /// Calls the admin API as the browser's user (its cookies), from its
    /// address (for the sign-in rate limit and the audit log).
    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        browser: &HeaderMap,
        peer: Option<ClientAddr>,
        body: Option<Value>,
    ) -> ApiAnswer {
        let body = body.map(|body| (body, "application/json"));
        self.send(method, path_and_query, browser, None, peer, body)
            .await
    }

    /// An admin API call made with an admin token rather than the
    /// browser's session: the first-run setup, with the token the operator
    /// types in.
    async fn call_with_token(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Value,
    ) -> ApiAnswer {
        let body = Some((body, "application/json"));
        self.send(method, path, &HeaderMap::new(), Some(token), None, body)
            .await
    }

    /// [`call`](Self::call) with a body of `content_type` (a merge patch).
    async fn call_with(
        &self,
        method: Method,
        path_and_query: &str,
        browser: &HeaderMap,
        body: Option<Value>,
        content_type: &'static str,
    ) -> ApiAnswer {
        let body = body.map(|body| (body, content_type));
        self.send(method, path_and_query, browser, None, None, body)
            .await
    }

    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        browser: &HeaderMap,
        token: Option<&str>,
        peer: Option<ClientAddr>,
        body: Option<(Value, &'static str)>,
    ) -> ApiAnswer {
        let mut request = Request::builder().method(method).uri(path_and_query);
        if let Some(cookie) = browser.get(header::COOKIE) {
            request = request.header(header::COOKIE, cookie);
        }
        // Whether the browser came over TLS: the API's cookies follow.
        for name in [
            header::FORWARDED,
            HeaderName::from_static("x-forwarded-proto"),
        ] {
            for value in browser.get_all(&name) {
                request = request.header(&name, value);
            }
        }
        // A browser's own Authorization header is never passed on: only
        // `call_with_token`'s.
        // (A token that is no header value is not sent: the API answers
        // 401.)
        if let Some(value) = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
        {
            request = request.header(header::AUTHORIZATION, value);
        }
        let body = match body {
            Some((body, content_type)) => {
                request = request.header(header::CONTENT_TYPE, content_type);
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        self.execute(request.body(body), peer).await
    }

    /// `method path` with the browser's cookies, `If-Match: etag` when
    /// given, and `body` as JSON: a replacement.
    async fn call_if_match(
        &self,
        method: Method,
        path: &str,
        browser: &HeaderMap,
        body: Value,
        etag: Option<HeaderValue>,
    ) -> ApiAnswer {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(cookie) = browser.get(header::COOKIE) {
            request = request.header(header::COOKIE, cookie);
        }
        if let Some(etag) = etag {
            request = request.header(header::IF_MATCH, etag);
        }
        self.execute(request.body(Body::from(body.to_string())), None)
            .await
    }

    /// `method path` with the browser's cookies and a body as it is (a
    /// document to import).
    async fn call_raw(
        &self,
        method: Method,
        path: &str,
        browser: &HeaderMap,
        body: Bytes,
        content_type: HeaderValue,
    ) -> ApiAnswer {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, content_type);
        if let Some(cookie) = browser.get(header::COOKIE) {
            request = request.header(header::COOKIE, cookie);
        }
        self.execute(request.body(Body::from(body)), None).await
    }

    /// Runs a request through the admin API and reads its answer.
    async fn execute(
        &self,
        request: Result<Request<Body>, axum::http::Error>,
        peer: Option<ClientAddr>,
    ) -> ApiAnswer {
        let Ok(mut request) = request else {
            return ApiAnswer {
                status: StatusCode::BAD_REQUEST,
                headers: HeaderMap::new(),
                body: serde_json::json!({ "error": { "code": "bad_request", "message": "not a valid request" } }),
            };
        };
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer);
        }
        let response = match tower::ServiceExt::oneshot(self.api.clone(), request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        let bytes = http_body_util::BodyExt::collect(body)
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        ApiAnswer {
            status: parts.status,
            headers: parts.headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }
}

/// Who is signed in, as `GET /admin/v1/whoami` says: what the pages offer
/// follows it (the admin API enforces it anyway).
#[derive(Clone, Debug, Default)]
pub(super) struct Viewer {
    pub name: String,
    /// `super_admin` or `auditor`.
    pub global: Option<String>,
    /// Team → role.
    pub teams: Vec<(String, String)>,
}

impl Viewer {
    /// Reads everything: super_admins and auditors.
    pub fn reads_everything(&self) -> bool {
        self.global.is_some()
    }

    pub fn is_super_admin(&self) -> bool {
        self.global.as_deref() == Some("super_admin")
    }

    /// Creates and changes services and APIs, decides subscriptions:
    /// super_admins, and team_admins in their teams.
    pub fn manages(&self) -> bool {
        self.is_super_admin() || self.teams.iter().any(|(_, role)| role == "team_admin")
    }

    /// Creates consumers and requests subscriptions: all but auditors.
    pub fn writes(&self) -> bool {
        self.is_super_admin() || !self.teams.is_empty()
    }
}

/// The signed-in viewer, or the sign-in page when there is no valid
/// session.
pub(super) async fn viewer(
    console: &Console,
    headers: &HeaderMap,
) -> Result<Viewer, Response<Body>> {
    if crate::users::session_cookie(headers).is_none() {
        return Err(to_login());
    }
    let answer = console
        .call(Method::GET, "/admin/v1/whoami", headers, None, None)
        .await;
    if answer.status != StatusCode::OK {
        return Err(to_login());
    }
    let teams = answer.body["teams"]
        .as_object()
        .map(|teams| {
            teams
                .iter()
                .map(|(team, role)| (team.clone(), role.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    Ok(Viewer {
        name: answer.body["name"].as_str().unwrap_or_default().to_string(),
        global: answer.body["global"].as_str().map(str::to_string),
        teams,
    })
}

/// Only the headers that say how the browser reached us (TLS or not), for
/// an API call made without its cookies (a sign-in).
fn forwarding(headers: &HeaderMap) -> HeaderMap {
    let mut forwarding = HeaderMap::new();
    for name in [
        header::FORWARDED,
        HeaderName::from_static("x-forwarded-proto"),
    ] {
        for value in headers.get_all(&name) {
            forwarding.append(name.clone(), value.clone());
        }
    }
    forwarding
}

/// The browser's CSRF token, or a new one (with the cookie to set).
fn csrf_token(headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    if let Some(token) = crate::users::cookie(headers, CSRF_COOKIE).filter(|t| t.len() == 32) {
        return (token, None);
    }
    let token: String = (0..32)
        .map(|_| char::from(b"0123456789abcdef"[fastrand::usize(..16)]))
        .collect();
    let secure = if crate::users::forwarded_https(headers) {
        "; Secure"
    } else {
        ""
    };
    let header = HeaderValue::from_str(&format!(
        "{CSRF_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/console{secure}"
    ))
    .expect("hex is a header value");
    (token, Some(header))
}

/// The fields of a urlencoded form body.
fn form(body: &Bytes) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The `items` of an admin API list answer (none when it has none).
fn items(body: &Value) -> &[Value] {
    body["items"].as_array().map_or(&[], Vec::as_slice)
}

/// A field the user filled in: an input left empty means "not given".
fn filled<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    field(fields, name).filter(|value| !value.is_empty())
}

/// A posted form's fields, if its CSRF token matches the browser's
/// cookie (else answer [`expired`]).
pub(super) fn posted(headers: &HeaderMap, body: &Bytes) -> Option<Vec<(String, String)>> {
    let fields = form(body);
    csrf_ok(headers, &fields).then_some(fields)
}

/// What a console form whose CSRF token does not match answers.
pub(super) fn expired() -> Response<Body> {
    (StatusCode::FORBIDDEN, "the form expired: reload the page").into_response()
}

/// Whether a posted form's CSRF token matches the browser's cookie.
fn csrf_ok(headers: &HeaderMap, fields: &[(String, String)]) -> bool {
    match (
        crate::users::cookie(headers, CSRF_COOKIE),
        field(fields, "csrf"),
    ) {
        (Some(expected), Some(given)) => {
            expected.len() == 32 && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
        }
        _ => false,
    }
}

/// A page, with the CSRF cookie set when it is new.
fn page(markup: maud::Markup, set_csrf: Option<HeaderValue>) -> Response<Body> {
    let mut response = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response();
    let headers = response.headers_mut();
    if let Some(cookie) = set_csrf {
        headers.append(header::SET_COOKIE, cookie);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn to_login() -> Response<Body> {
    Redirect::to("/console/login").into_response()
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        STYLE,
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        SCRIPT,
    )
}

async fn not_found(headers: HeaderMap) -> Response<Body> {
    let (csrf, set) = csrf_token(&headers);
    let mut response = page(pages::not_found(&csrf), set);
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

async fn login_page(headers: HeaderMap) -> Response<Body> {
    let (csrf, set) = csrf_token(&headers);
    page(pages::login(&csrf, None), set)
}

async fn login(
    State(console): State<Console>,
    peer: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let fields = form(&body);
    let (csrf, set) = csrf_token(&headers);
    if !csrf_ok(&headers, &fields) {
        let mut response = page(
            pages::login(&csrf, Some("The form expired: please sign in again.")),
            set,
        );
        *response.status_mut() = StatusCode::FORBIDDEN;
        return response;
    }
    let credentials = serde_json::json!({
        "name": field(&fields, "username").unwrap_or_default(),
        "password": field(&fields, "password").unwrap_or_default(),
    });
    let answer = console
        .call(
            Method::POST,
            crate::users::LOGIN_ROUTE,
            &forwarding(&headers),
            peer.map(|axum::Extension(p)| p),
            Some(credentials),
        )
        .await;
    if answer.status == StatusCode::OK {
        let mut response = Redirect::to("/console/").into_response();
        for cookie in answer.headers.get_all(header::SET_COOKIE) {
            response
                .headers_mut()
                .append(header::SET_COOKIE, cookie.clone());
        }
        return response;
    }
    let message = match answer.status {
        StatusCode::TOO_MANY_REQUESTS => "Too many attempts: try again in a minute.",
        _ => "Wrong name or password.",
    };
    let mut response = page(pages::login(&csrf, Some(message)), set);
    *response.status_mut() = answer.status;
    response
}

async fn setup_page(headers: HeaderMap) -> Response<Body> {
    let (csrf, set) = csrf_token(&headers);
    page(pages::setup(&csrf, None), set)
}

/// First run: the operator proves it holds an admin token (the bootstrap
/// one, from `TOLLGATE_ADMIN_TOKEN` or `<data dir>/admin-token`) and names
/// the first super-admin and its password; then it is signed in.
async fn setup(
    State(console): State<Console>,
    peer: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let fields = form(&body);
    let (csrf, set) = csrf_token(&headers);
    let fail = |status: StatusCode, message: &str, set: Option<HeaderValue>| {
        let mut response = page(pages::setup(&csrf, Some(message)), set);
        *response.status_mut() = status;
        response
    };
    if !csrf_ok(&headers, &fields) {
        return fail(
            StatusCode::FORBIDDEN,
            "The form expired: please try again.",
            set,
        );
    }
    let name = field(&fields, "username").unwrap_or_default();
    let password = field(&fields, "password").unwrap_or_default();
    if password != field(&fields, "confirm").unwrap_or_default() {
        return fail(StatusCode::BAD_REQUEST, "The two passwords differ.", set);
    }
    let user = serde_json::json!({
        "name": name,
        "password": password,
        "memberships": [{ "role": "super_admin" }],
    });
    let created = console
        .call_with_token(
            Method::POST,
            "/admin/v1/users",
            field(&fields, "token").unwrap_or_default(),
            user,
        )
        .await;
    if created.status != StatusCode::CREATED {
        let message = created.body["error"]["message"]
            .as_str()
            .unwrap_or("the admin API refused the user")
            .to_string();
        return fail(created.status, &message, set);
    }
    let signed_in = console
        .call(
            Method::POST,
            crate::users::LOGIN_ROUTE,
            &forwarding(&headers),
            peer.map(|axum::Extension(p)| p),
            Some(serde_json::json!({ "name": name, "password": password })),
        )
        .await;
    let mut response = Redirect::to("/console/").into_response();
    for cookie in signed_in.headers.get_all(header::SET_COOKIE) {
        response
            .headers_mut()
            .append(header::SET_COOKIE, cookie.clone());
    }
    response
}

async fn logout(State(console): State<Console>, headers: HeaderMap, body: Bytes) -> Response<Body> {
    let Some(fields) = posted(&headers, &body) else {
        return expired();
    };
    let path = match field(&fields, "everywhere") {
        Some("true") => "/admin/v1/logout?everywhere=true",
        _ => "/admin/v1/logout",
    };
    let answer = console.call(Method::POST, path, &headers, None, None).await;
    let mut response = to_login();
    for cookie in answer.headers.get_all(header::SET_COOKIE) {
        response
            .headers_mut()
            .append(header::SET_COOKIE, cookie.clone());
    }
    response
}

/// The dashboard's time ranges: label, seconds, bucket.
const RANGES: [(&str, i64, &str); 5] = [
    ("15m", 15 * 60, "minute"),
    ("1h", 3600, "minute"),
    ("24h", 24 * 3600, "hour"),
    ("7d", 7 * 24 * 3600, "hour"),
    ("30d", 30 * 24 * 3600, "day"),
];

#[derive(serde::Deserialize)]
struct DashboardQuery {
    range: Option<String>,
    /// A team admin's dashboard is one of its team's services at a time.
    service: Option<String>,
}

async fn dashboard(
    State(console): State<Console>,
    Query(query): Query<DashboardQuery>,
    headers: HeaderMap,
) -> Response<Body> {
    let viewer = match viewer(&console, &headers).await {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    // Super_admins and auditors see every team's traffic; a team admin one
    // of its team's services at a time (what the analytics API lets it
    // read); developers start at the portal.
    let (scope, services) = if viewer.reads_everything() {
        (None, Vec::new())
    } else if viewer.manages() {
        let listed = console
            .call(Method::GET, "/admin/v1/services", &headers, None, None)
            .await;
        let services: Vec<String> = listed.body["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|s| s["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let chosen = query
            .service
            .clone()
            .filter(|s| services.contains(s))
            .or_else(|| services.first().cloned());
        match chosen {
            Some(service) => (Some(service), services),
            None => return Redirect::to("/console/portal").into_response(),
        }
    } else {
        return Redirect::to("/console/portal").into_response();
    };
    let range = RANGES
        .iter()
        .find(|(label, _, _)| Some(*label) == query.range.as_deref())
        .copied()
        .unwrap_or(RANGES[1]);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut path = format!(
        "/admin/v1/analytics?from={}&to={}&bucket={}&top=100",
        now - range.1,
        now + 1,
        range.2
    );
    if let Some(service) = &scope {
        path.push_str("&service=");
        path.push_str(&manage::encode(service));
    }
    let analytics = console.call(Method::GET, &path, &headers, None, None).await;
    let consumers = console
        .call(Method::GET, "/admin/v1/consumers", &headers, None, None)
        .await;
    let teams = pages::spend_by_team(&analytics.body["ai"]["by_consumer"], &consumers.body);
    let upstreams = console
        .call(Method::GET, "/admin/v1/upstreams", &headers, None, None)
        .await;
    if analytics.status == StatusCode::UNAUTHORIZED {
        return to_login();
    }
    let nodes = console
        .call(Method::GET, "/admin/v1/nodes", &headers, None, None)
        .await;
    let (csrf, set) = csrf_token(&headers);
    page(
        pages::dashboard(
            &csrf,
            &viewer,
            range.0,
            &RANGES.map(|r| r.0),
            &pages::Report {
                analytics: &analytics.body,
                status: analytics.status,
                nodes: &nodes.body,
                teams: &teams,
                upstreams: &upstreams.body,
                service: scope.as_deref(),
                services: &services,
            },
        ),
        set,
    )
}
