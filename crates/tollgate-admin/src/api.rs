//! The admin REST API under `/admin/v1/`: the YAML file's resources, read
//! back by name, and the access records.
//!
//! Every request but `POST /admin/v1/login` needs `Authorization: Bearer
//! <admin token>` or a console session cookie; tokens and session ids are
//! kept as SHA-256 digests in the store. What the caller may then do is
//! [`crate::authz`]'s to say. Resources come from the live
//! configuration (what the data plane serves), with secrets redacted:
//! `env:NAME` references are shown, literal values never.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Extension, MatchedPath, Query, Request, State};
use axum::http::Method;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde_json::{json, Value};
use tollgate_config::Config;
use tollgate_store::{AccessQuery, Store, StoreError};

use crate::authz::{Directory, Principal};
use crate::control::ControlPlane;
use crate::openapi::{Operation, RouteDoc};

/// Largest page a list returns.
pub(crate) const MAX_LIMIT: usize = 1000;
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// Shown instead of a secret written in the configuration itself.
pub const REDACTED: &str = "<redacted>";

/// What the admin API reads from and writes through.
#[derive(Clone)]
pub struct AdminApi {
    pub control: Arc<ControlPlane>,
    pub store: Store,
}

impl AdminApi {
    /// The configuration the data plane serves right now.
    pub fn config(&self) -> Arc<Config> {
        self.control.config()
    }
}

/// Who called, as authenticated: the user's name, or the admin token's
/// when it belongs to no user; its `role` is the token's (`user` for a
/// user's). What the caller may do is its [`Principal`]'s.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub role: String,
}

/// The admin client's address, set by the admin listener.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// Every admin API route with its handlers and its documentation: the
/// router and `/admin/v1/openapi.json` are both built from this table.
fn routes() -> Vec<(&'static str, MethodRouter<AdminApi>, Vec<Operation>)> {
    use crate::openapi::Body::{Document, Json as Obj, None as Empty};
    use crate::resources_api as r;
    use crate::users as u;
    use axum::routing::{delete, patch as patch_route, put};
    use Method as M;
    let op = Operation::new;
    vec![
        (
            u::LOGIN_ROUTE,
            post(u::login),
            vec![op(M::POST, "Start a console session", Obj, 200)],
        ),
        (
            "/admin/v1/upstreams",
            get(crate::nodes::upstreams),
            vec![op(
                M::GET,
                "This node's upstream targets: healthy, ejected",
                Empty,
                200,
            )],
        ),
        (
            "/admin/v1/whoami",
            get(u::whoami),
            vec![op(
                M::GET,
                "The caller: name, user, global role, team roles",
                Empty,
                200,
            )],
        ),
        (
            "/admin/v1/logout",
            post(u::logout),
            vec![op(M::POST, "End the console session", Empty, 204)],
        ),
        (
            "/admin/v1/users",
            get(u::list).post(u::create),
            vec![
                op(M::GET, "List users", Empty, 200),
                op(M::POST, "Create a user", Obj, 201),
            ],
        ),
        (
            "/admin/v1/users/{name}",
            get(u::one).patch(u::patch).delete(u::remove),
            vec![
                op(M::GET, "Read a user", Empty, 200),
                op(
                    M::PATCH,
                    "Change a user's password or memberships",
                    Obj,
                    200,
                ),
                op(M::DELETE, "Delete a user", Empty, 204),
            ],
        ),
        (
            "/admin/v1/users/{name}/tokens",
            post(u::issue_token),
            vec![op(
                M::POST,
                "Issue an admin token for a user (shown once)",
                Empty,
                201,
            )],
        ),
        (
            "/admin/v1/tokens",
            get(crate::tokens::list),
            vec![op(
                M::GET,
                "List admin tokens (never the tokens themselves)",
                Empty,
                200,
            )],
        ),
        (
            "/admin/v1/tokens/{id}",
            delete(crate::tokens::remove),
            vec![op(M::DELETE, "Revoke an admin token", Empty, 204)],
        ),
        (
            "/admin/v1/logs",
            get(logs),
            vec![op(M::GET, "Query access records, newest first", Empty, 200)],
        ),
        (
            "/admin/v1/analytics",
            get(crate::analytics::handler),
            vec![op(
                M::GET,
                "Aggregate access records in time buckets",
                Empty,
                200,
            )],
        ),
        (
            "/admin/v1/analytics/deprecated",
            get(crate::analytics::deprecated_usage),
            vec![op(
                M::GET,
                "Who calls each deprecated or retired API",
                Empty,
                200,
            )],
        ),
        (
            "/admin/v1/compliance",
            get(crate::compliance::handler),
            vec![op(
                M::GET,
                "Compliance findings on the live configuration",
                Empty,
                200,
            )],
        ),
        (
            "/admin/v1/audit",
            get(r::audit),
            vec![op(M::GET, "Query the audit log, newest first", Empty, 200)],
        ),
        (
            "/admin/v1/nodes",
            get(crate::nodes::list),
            vec![op(
                M::GET,
                "The nodes sharing the store: heartbeats, lagging, silent",
                Empty,
                200,
            )],
        ),
        (
            "/admin/v1/apply",
            post(r::apply),
            vec![op(
                M::POST,
                "Make the resources those of a document (dry_run, prune)",
                Document,
                200,
            )],
        ),
        (
            "/admin/v1/export",
            get(r::export),
            vec![op(
                M::GET,
                "The resources as YAML that apply takes back",
                Empty,
                200,
            )],
        ),
        (
            "/admin/v1/import/openapi",
            post(r::import_openapi),
            vec![op(
                M::POST,
                "Create APIs from an OpenAPI 3 document",
                Document,
                200,
            )],
        ),
        (
            "/admin/v1/openapi.json",
            get(openapi_json),
            vec![op(M::GET, "This document", Empty, 200)],
        ),
        (
            "/admin/v1/consumers/{name}/keys",
            post(r::create_key),
            vec![op(M::POST, "Issue a consumer key (shown once)", Obj, 201)],
        ),
        (
            "/admin/v1/consumers/{name}/keys/{id}",
            delete(r::delete_key),
            vec![op(M::DELETE, "Revoke a consumer key", Empty, 204)],
        ),
        (
            "/admin/v1/subscriptions/{id}/{action}",
            post(r::decide_subscription),
            vec![op(
                M::POST,
                "approve, reject or revoke a subscription",
                Obj,
                200,
            )],
        ),
        (
            "/admin/v1/apis/{name}/openapi.json",
            get(r::prompt_openapi),
            vec![op(
                M::GET,
                "The OpenAPI description of an API (a prompt API's, its variables)",
                Empty,
                200,
            )],
        ),
        (
            "/admin/v1/ai/{kind}",
            get(r::ai_kinds::list).post(r::ai_kinds::create),
            vec![
                op(M::GET, "List AI providers, models or prices", Empty, 200),
                op(M::POST, "Create an AI provider, model or price", Obj, 201),
            ],
        ),
        (
            "/admin/v1/ai/{kind}/{name}",
            get(r::ai_kinds::one)
                .merge(put(r::ai_kinds::replace))
                .merge(patch_route(r::ai_kinds::patch))
                .merge(delete(r::ai_kinds::remove)),
            vec![
                op(M::GET, "Read an AI resource (keys redacted)", Empty, 200),
                op(
                    M::PUT,
                    "Replace (or create) an AI resource; If-Match",
                    Obj,
                    200,
                ),
                op(M::PATCH, "Merge patch an AI resource; If-Match", Obj, 200),
                op(M::DELETE, "Delete an AI resource; If-Match", Empty, 204),
            ],
        ),
        (
            "/admin/v1/{kind}",
            get(r::list).post(r::create),
            vec![
                op(
                    M::GET,
                    "List resources: items, next; filters by field",
                    Empty,
                    200,
                ),
                op(M::POST, "Create a resource", Obj, 201),
            ],
        ),
        (
            "/admin/v1/{kind}/{name}",
            get(r::one)
                .merge(put(r::replace))
                .merge(patch_route(r::patch))
                .merge(delete(r::remove)),
            vec![
                op(M::GET, "Read a resource, with its ETag", Empty, 200),
                op(M::PUT, "Replace (or create) a resource; If-Match", Obj, 200),
                op(
                    M::PATCH,
                    "Merge a JSON merge patch (RFC 7396); If-Match",
                    Obj,
                    200,
                ),
                op(M::DELETE, "Delete a resource; If-Match", Empty, 204),
            ],
        ),
    ]
}

/// The documentation half of [`routes`].
pub fn documented_routes() -> Vec<RouteDoc> {
    routes()
        .into_iter()
        .map(|(path, _, operations)| RouteDoc { path, operations })
        .collect()
}

async fn openapi_json() -> Json<Value> {
    Json(crate::openapi::document(&documented_routes()))
}

pub fn router(api: AdminApi) -> Router {
    let mut router = Router::new();
    for (path, handlers, _) in routes() {
        router = router.route(path, handlers);
    }
    router
        .fallback(not_found)
        // Layers run last added first: authentication, then authorization.
        .layer(middleware::from_fn_with_state(
            api.clone(),
            crate::authz::authorize,
        ))
        .layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .layer(Extension(Arc::new(crate::users::Passwords::new())))
        .with_state(api)
}

/// An admin API error, in the body every Tollgate listener uses.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Merged into the error object (`errors` for validation failures).
    details: Option<(&'static str, Value)>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub(crate) fn with_detail(mut self, field: &'static str, value: Value) -> ApiError {
        self.details = Some((field, value));
        self
    }

    /// A detail merged into the error object, for tests.
    #[cfg(test)]
    pub(crate) fn detail(&self, field: &str) -> Option<&Value> {
        self.details
            .as_ref()
            .filter(|(name, _)| *name == field)
            .map(|(_, value)| value)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// The store cannot be reached (`503 store_unavailable`).
    pub(crate) fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            message,
        )
    }

    /// A store call failed: `503` when the store cannot be reached, else
    /// an internal error.
    pub(crate) fn store(error: StoreError) -> ApiError {
        if error.is_unavailable() {
            tracing::warn!(%error, "admin API: the store is unreachable");
            ApiError::unavailable("the store is unreachable; try again later")
        } else {
            ApiError::internal(error)
        }
    }

    pub(crate) fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::error!(%error, "admin API failure");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the admin API failed; see the gateway's log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The request id is added by the admin listener, which also knows it.
        let mut body = json!({ "error": { "code": self.code, "message": self.message } });
        if let Some((field, value)) = self.details {
            body["error"][field] = value;
        }
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tollgate-admin\""),
            );
        }
        response
    }
}

/// Every `/admin/v1/` request but `/admin/v1/login` needs a known admin
/// token (`Authorization: Bearer`) or console session (the
/// [`crate::users::SESSION_COOKIE`] cookie); the [`Principal`] it stands
/// for, and the [`Caller`], go in the request's extensions.
async fn authenticate(
    State(api): State<AdminApi>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let login = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| p.as_str() == crate::users::LOGIN_ROUTE);
    if login {
        return Ok(next.run(request).await);
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        })
        .map(|(_, token)| token.trim().to_string())
        .filter(|t| !t.is_empty());
    let session = crate::users::session_cookie(request.headers());
    let store = api.store.clone();
    let (principal, role) = match (presented, session) {
        (Some(token), _) => {
            // Admin tokens are random like API keys: the same digest serves both.
            let hash = tollgate_policy::credentials::hash_key(&token);
            let found = blocking(move || {
                let Some(token) = store.find_admin_token(&hash)? else {
                    return Ok(None);
                };
                store.touch_admin_token(token.id, now_unix())?;
                let principal = match token.user_id {
                    None => Some(Principal::token(&token.name, &token.role)),
                    Some(id) => store
                        .find_user_by_id(id)?
                        .map(|user| Principal::user(&user.name, &user.memberships)),
                };
                Ok::<_, StoreError>(principal.map(|p| (p, token.role)))
            })
            .await?;
            found.ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_credentials",
                    "the admin token is not valid",
                )
            })?
        }
        (None, Some(session)) => {
            // A cookie rides along with any request a browser makes, even
            // one another site's page starts: a change must come from the
            // console's own origin (OWASP's origin check, besides the
            // cookie's SameSite=Strict).
            let safe = matches!(
                *request.method(),
                Method::GET | Method::HEAD | Method::OPTIONS
            );
            if !safe && !same_origin(request.headers()) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "cross_origin",
                    "a change with a session cookie must come from the admin listener's own origin",
                ));
            }
            let hash = tollgate_policy::credentials::hash_key(&session);
            let user = blocking(move || store.find_session_user(&hash, now_unix())).await?;
            let user = user.ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_credentials",
                    "the session has ended: sign in again",
                )
            })?;
            (
                Principal::user(&user.name, &user.memberships),
                tollgate_store::USER_TOKEN_ROLE.to_string(),
            )
        }
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_credentials",
                "the admin API needs Authorization: Bearer <admin token>",
            ))
        }
    };
    let mut request = request;
    request.extensions_mut().insert(Caller {
        name: principal.name.clone(),
        role,
    });
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

/// Runs a blocking store call off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::store)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!("no admin endpoint at {}", request.uri().path()))
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Replaces literal secrets with [`REDACTED`]; `env:NAME` references stay.
pub fn redact(value: &mut Value) {
    const SECRET_FIELDS: &[&str] = &["secret", "client_secret", "password", "password_hash"];
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                let is_secret = SECRET_FIELDS.contains(&key.as_str());
                if is_secret {
                    redact_string(field);
                } else if key == "keys" {
                    // Consumer keys: `value` is a secret, `hash` is not.
                    // AI providers' keys are strings; an identity
                    // provider's PEM public keys are not secret.
                    if let Value::Array(keys) = field {
                        for key in keys {
                            match key {
                                Value::String(text) if !text.starts_with("-----BEGIN") => {
                                    redact_string(key)
                                }
                                _ => {
                                    if let Some(value) = key.get_mut("value") {
                                        redact_string(value);
                                    }
                                }
                            }
                        }
                    }
                } else {
                    redact(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn redact_string(value: &mut Value) {
    if let Value::String(text) = value {
        if !text.starts_with("env:") {
            *text = REDACTED.to_string();
        }
    }
}

/// `GET /admin/v1/logs`: access records, newest first, filtered and paginated.
/// A team member reads only the records of their teams' services.
async fn logs(
    State(api): State<AdminApi>,
    Extension(principal): Extension<Principal>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let mut query = AccessQuery {
        services: Directory::new(&api.config()).visible_services(&principal),
        ..AccessQuery::default()
    };
    for (key, value) in &params {
        match key.as_str() {
            "from" => query.from = Some(parse_time(key, value)?),
            "to" => query.to = Some(parse_time(key, value)?),
            "api" => query.api = Some(value.clone()),
            "service" => query.service = Some(value.clone()),
            "consumer" => query.consumer = Some(value.clone()),
            "outcome" => query.outcome = Some(value.clone()),
            "reason" => query.reason = Some(value.clone()),
            "request_id" => query.request_id = Some(value.clone()),
            "ai_model" => query.ai_model = Some(value.clone()),
            "ai_provider" => query.ai_provider = Some(value.clone()),
            "status" => {
                query.status = Some(
                    value
                        .parse()
                        .map_err(|_| ApiError::bad_request("status must be a number"))?,
                )
            }
            "limit" => query.limit = parse_limit(value)?,
            "cursor" => query.cursor = Some(value.clone()),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{other}`: use from, to, api, service, consumer, status, \
                     outcome, reason, request_id, ai_model, ai_provider, limit, cursor"
                )))
            }
        }
    }
    let store = api.store.clone();
    let page = tokio::task::spawn_blocking(move || store.query_access_records(&query))
        .await
        .map_err(ApiError::internal)?
        .map_err(|error| match error {
            StoreError::InvalidCursor => ApiError::bad_request("invalid cursor"),
            other => ApiError::internal(other),
        })?;
    Ok(Json(json!({ "items": page.items, "next": page.next })))
}

/// Whether a request comes from the admin listener's own origin: its
/// `Origin` names the `Host` it was sent to; without `Origin`, a browser's
/// `Sec-Fetch-Site` says same-origin (or none: typed by the user); a client
/// that sends neither is no browser, which a cookie cannot be forged from.
fn same_origin(headers: &http::HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN) {
        let authority = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, authority)| authority);
        return authority.is_some() && authority == host;
    }
    match headers.get("sec-fetch-site").map(|v| v.as_bytes()) {
        Some(site) => site == b"same-origin" || site == b"none",
        None => true,
    }
}

/// `?limit=`: 1 to [`MAX_LIMIT`].
pub(crate) fn parse_limit(text: &str) -> Result<usize, ApiError> {
    text.parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| ApiError::bad_request(format!("limit must be 1 to {MAX_LIMIT}")))
}

/// RFC 3339 (`2026-12-04T10:00:00Z`) or Unix seconds, as Unix microseconds.
pub(crate) fn parse_time(field: &str, text: &str) -> Result<i64, ApiError> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds.saturating_mul(1_000_000));
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
        .map_err(|_| ApiError::bad_request(format!("{field} must be RFC 3339 or Unix seconds")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_secrets_are_redacted_and_references_kept() {
        let mut consumer = json!({
            "name": "m",
            "keys": [{ "value": "tg_literal" }, { "value": "env:KEY" }, { "hash": "sha256:ab" }],
            "client_credentials": { "client_id": "m", "secret": "s3cret" },
            "basic": { "username": "u", "password": "env:PW" },
        });
        redact(&mut consumer);
        assert_eq!(consumer["keys"][0]["value"], REDACTED);
        assert_eq!(consumer["keys"][1]["value"], "env:KEY");
        assert_eq!(consumer["keys"][2]["hash"], "sha256:ab");
        assert_eq!(consumer["client_credentials"]["secret"], REDACTED);
        assert_eq!(consumer["client_credentials"]["client_id"], "m");
        assert_eq!(consumer["basic"]["password"], "env:PW");
        let mut idp = json!({ "introspection": { "client_secret": "x" }, "secret": "y" });
        redact(&mut idp);
        assert_eq!(idp["introspection"]["client_secret"], REDACTED);
        assert_eq!(idp["secret"], REDACTED);
    }
}
