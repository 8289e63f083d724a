//! Admin users, their tokens and console sessions:
//!
//! - `POST /admin/v1/users`, `GET /admin/v1/users`,
//!   `GET|PATCH|DELETE /admin/v1/users/<name>`: users, with a password (kept
//!   as an argon2id hash) and memberships (`{team, role}`; team `*` for the
//!   global roles).
//! - `POST /admin/v1/users/<name>/tokens`: an admin token of the user, shown
//!   once.
//! - `POST /admin/v1/login` (no credentials needed; rate limited per client
//!   address) and `POST /admin/v1/logout`: console sessions, by cookie.
//!
//! Who may manage whom is [`crate::authz`]'s. A password or its hash never
//! appears in an answer, a log line or the audit log; argon2 runs off the
//! async threads, a few at a time, and an unknown name costs a sign-in the
//! same work as a wrong password.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use tollgate_store::{AuditEntry, Membership, StoreError, User, UserUpdate, GLOBAL_TEAM};

use crate::api::{AdminApi, ApiError, Caller, ClientAddr};
use crate::authz::{self, Principal, Role};
use crate::bootstrap::ADMIN_TOKEN_PREFIX;

/// The route that needs no credentials.
pub const LOGIN_ROUTE: &str = "/admin/v1/login";
/// The console session's cookie.
pub const SESSION_COOKIE: &str = "tollgate_session";
/// How long a console session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Prefix of session ids.
const SESSION_PREFIX: &str = "tgs_";
/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted (argon2 takes any length; this bounds the work).
const MAX_PASSWORD_BYTES: usize = 1024;
/// Sign-in attempts admitted per client address and window.
pub const LOGIN_ATTEMPTS: u32 = 10;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Concurrent argon2 computations.
const HASHING_PERMITS: usize = 4;
/// Addresses remembered before windows that ended are forgotten.
const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// A password hash with the parameters real ones are made with
/// (`Argon2::default()`), of no password: verifying against it costs what
/// verifying against a user's does.
const DECOY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$4khMRmfKKenKYXpeOFPDSA$8ZH6EiVZAkiiWwW9YzCx+h5o1J2BHTiNwy/F1GcJW8U";

/// Password hashing and sign-in throttling, shared by the API's handlers.
pub struct Passwords {
    permits: tokio::sync::Semaphore,
    attempts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Default for Passwords {
    fn default() -> Self {
        Passwords::new()
    }
}

impl Passwords {
    pub fn new() -> Passwords {
        Passwords {
            permits: tokio::sync::Semaphore::new(HASHING_PERMITS),
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a sign-in attempt from `ip` at `now`: whether it is admitted
    /// ([`LOGIN_ATTEMPTS`] per [`LOGIN_WINDOW`]).
    pub fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        let mut attempts = self
            .attempts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if attempts.len() >= MAX_TRACKED_ADDRESSES {
            attempts.retain(|_, (start, _)| now.duration_since(*start) < LOGIN_WINDOW);
        }
        let (start, count) = attempts.entry(ip).or_insert((now, 0));
        if now.duration_since(*start) >= LOGIN_WINDOW {
            (*start, *count) = (now, 0);
        }
        *count += 1;
        *count <= LOGIN_ATTEMPTS
    }

    /// The argon2id PHC string of `password`, computed off the async threads.
    async fn hash(&self, password: String) -> Result<String, ApiError> {
        let _permit = self.permits.acquire().await.map_err(ApiError::internal)?;
        tokio::task::spawn_blocking(move || {
            let mut salt = [0u8; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
                .map_err(|_| "the system random generator failed".to_string())?;
            let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|phc| phc.to_string())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
    }

    /// Whether `password` matches `phc`; with no `phc` (no such user), the
    /// same work against [`DECOY_HASH`], and false.
    async fn verify(&self, phc: Option<String>, password: String) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| DECOY_HASH.to_string());
        let matched = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&phc).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        known && matched
    }
}

/// The session id in a request's `Cookie` headers, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    cookie(headers, SESSION_COOKIE)
}

/// The non-empty value of the cookie `name` in a request's `Cookie`
/// headers, if any.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, value)| *n == name && !value.is_empty())
        .map(|(_, value)| value.to_string())
}

fn session_cookie_header(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    ))
    .expect("a session id is a header value")
}

/// Whether the request reached the admin listener over TLS, as the
/// TLS-terminating proxy in front of it says (`X-Forwarded-Proto: https`
/// or `Forwarded: …proto=https`): cookies are then `Secure`. (A client
/// that claims it falsely only keeps its own cookie from coming back over
/// plain HTTP.)
pub fn forwarded_https(headers: &HeaderMap) -> bool {
    let says_https = |value: &str| value.trim().eq_ignore_ascii_case("https");
    headers
        .get_all("x-forwarded-proto")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(says_https))
        || headers
            .get_all(header::FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| name.eq_ignore_ascii_case("proto") && says_https(value))
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A user as the API shows it: never its password or hash.
fn shown(user: &User) -> Value {
    json!({ "name": user.name, "memberships": user.memberships })
}

/// A user as `principal` sees it: a team member sees the memberships of
/// other users in its own teams (and global roles), not which other teams
/// they belong to.
fn shown_to(principal: &Principal, user: &User) -> Value {
    if principal.reads_everything() || principal.user.as_deref() == Some(user.name.as_str()) {
        return shown(user);
    }
    let memberships: Vec<&Membership> = user
        .memberships
        .iter()
        .filter(|m| m.team == GLOBAL_TEAM || principal.is_member(&m.team))
        .collect();
    json!({ "name": user.name, "memberships": memberships })
}

fn no_user(name: &str) -> ApiError {
    ApiError::not_found(format!("no user named `{name}`"))
}

/// A store call off the async threads, its errors as the API answers them.
async fn store_call<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(|error| match error {
            StoreError::Exists { name, .. } => ApiError::new(
                StatusCode::CONFLICT,
                "already_exists",
                format!("a user named `{name}` already exists"),
            ),
            StoreError::Missing { name, .. } => no_user(&name),
            other => ApiError::internal(other),
        })
}

/// The user `name`, if `principal` may see it; 404 otherwise, as for no user.
async fn visible_user(api: &AdminApi, principal: &Principal, name: &str) -> Result<User, ApiError> {
    let store = api.store.clone();
    let lookup = name.to_string();
    store_call(move || store.find_user(&lookup))
        .await?
        .filter(|user| authz::can_see_user(principal, &user.name, &user.memberships))
        .ok_or_else(|| no_user(name))
}

fn audit_entry(
    caller: &Caller,
    addr: Option<Extension<ClientAddr>>,
    action: &str,
    name: &str,
    diff: Value,
) -> AuditEntry {
    AuditEntry {
        actor: caller.name.clone(),
        client_ip: addr.map(|Extension(ClientAddr(addr))| addr.ip().to_string()),
        action: action.to_string(),
        kind: "users".to_string(),
        name: name.to_string(),
        diff,
    }
}

/// Field errors of a user request, reported together.
#[derive(Default)]
struct Problems(Vec<Value>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0
            .push(json!({ "path": path.into(), "message": message.into() }));
    }

    fn into_result(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_user",
            format!(
                "the request was refused: {} error(s); nothing was changed",
                self.0.len()
            ),
        )
        .with_detail("errors", Value::Array(self.0)))
    }
}

/// What a create or patch asks for, its fields checked.
#[derive(Default)]
struct UserRequest {
    name: Option<String>,
    password: Option<String>,
    memberships: Option<Vec<Membership>>,
}

fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// Reads a create (`creating`) or patch body: 400 if it is not a JSON
/// object, 422 with every field at fault.
fn parse_request(body: &Bytes, creating: bool) -> Result<UserRequest, ApiError> {
    let map = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(ApiError::bad_request("the body must be a JSON object")),
        Err(e) => return Err(ApiError::bad_request(format!("the body is not JSON: {e}"))),
    };
    let mut problems = Problems::default();
    let mut request = UserRequest::default();
    for (field, value) in &map {
        match (field.as_str(), value) {
            ("name", Value::String(name)) if creating => {
                if is_valid_name(name) {
                    request.name = Some(name.clone());
                } else {
                    problems.add("name", "1 to 64 letters, digits, '.', '_', '-' or '@'");
                }
            }
            ("name", _) if creating => problems.add("name", "must be a string"),
            ("name", _) => problems.add("name", "cannot be changed (renaming is not supported)"),
            ("password", Value::String(password)) => {
                if password.chars().count() < MIN_PASSWORD_CHARS {
                    problems.add(
                        "password",
                        format!("must be at least {MIN_PASSWORD_CHARS} characters"),
                    );
                } else if password.len() > MAX_PASSWORD_BYTES {
                    problems.add(
                        "password",
                        format!("must be at most {MAX_PASSWORD_BYTES} bytes"),
                    );
                } else {
                    request.password = Some(password.clone());
                }
            }
            ("password", _) => problems.add("password", "must be a string"),
            ("memberships", Value::Array(items)) => {
                request.memberships = Some(parse_memberships(items, &mut problems));
            }
            ("memberships", _) => problems.add("memberships", "must be a list of {team, role}"),
            (other, _) => problems.add(
                other,
                "unknown field: a user has name, password and memberships",
            ),
        }
    }
    if creating {
        if !map.contains_key("name") {
            problems.add("name", "is required");
        }
        if !map.contains_key("password") {
            problems.add("password", "is required");
        }
    }
    problems.into_result()?;
    Ok(request)
}

/// `[{team, role}]`: a global role's team is `*` (or left out), a team
/// role's a team's name, each team listed once.
fn parse_memberships(items: &[Value], problems: &mut Problems) -> Vec<Membership> {
    let mut out: Vec<Membership> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = |field: &str| format!("memberships[{i}].{field}");
        let Value::Object(item) = item else {
            problems.add(
                format!("memberships[{i}]"),
                "must be an object {team, role}",
            );
            continue;
        };
        if let Some(other) = item.keys().find(|k| *k != "team" && *k != "role") {
            problems.add(at(other), "unknown field: a membership has team and role");
        }
        let role = match item.get("role").and_then(Value::as_str).map(Role::parse) {
            Some(Some(role)) => role,
            _ => {
                problems.add(
                    at("role"),
                    "must be super_admin, team_admin, developer or auditor",
                );
                continue;
            }
        };
        let team = match (item.get("team"), role.is_global()) {
            (None, true) => GLOBAL_TEAM.to_string(),
            (Some(Value::String(team)), true) if team == GLOBAL_TEAM => team.clone(),
            (_, true) => {
                problems.add(at("team"), format!("must be `*` (or left out) for {role}"));
                continue;
            }
            (Some(Value::String(team)), false) if !team.is_empty() && team != GLOBAL_TEAM => {
                team.clone()
            }
            (_, false) => {
                problems.add(at("team"), format!("{role} is held in a team: name it"));
                continue;
            }
        };
        if out.iter().any(|m| m.team == team) {
            problems.add(at("team"), "listed twice: one role per team");
            continue;
        }
        out.push(Membership {
            team,
            role: role.as_str().to_string(),
        });
    }
    out.sort();
    out
}

/// 422 for a membership in a team the live configuration does not have.
fn check_teams_exist(api: &AdminApi, memberships: &[Membership]) -> Result<(), ApiError> {
    let config = api.config();
    let mut problems = Problems::default();
    for (i, membership) in memberships.iter().enumerate() {
        let known = membership.team == GLOBAL_TEAM
            || config.teams.iter().any(|t| t.name == membership.team);
        if !known {
            problems.add(
                format!("memberships[{i}].team"),
                format!("no team named `{}`", membership.team),
            );
        }
    }
    problems.into_result()
}

/// Whether `principal` may create users at all: a super_admin, or a team_admin.
fn creates_users(principal: &Principal) -> bool {
    principal.is_super_admin() || principal.teams.values().any(|r| *r == Role::TeamAdmin)
}

/// `POST /admin/v1/users {name, password, memberships}`: 201 `{name, memberships}`.
pub async fn create(
    State(api): State<AdminApi>,
    Extension(principal): Extension<Principal>,
    Extension(caller): Extension<Caller>,
    Extension(passwords): Extension<Arc<Passwords>>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !creates_users(&principal) {
        return Err(authz::forbidden(
            "only a super_admin or a team_admin (for its teams) may create users",
        ));
    }
    let request = parse_request(&body, true)?;
    let (Some(name), Some(password)) = (request.name, request.password) else {
        return Err(ApiError::internal(
            "a checked create lacks its name or password",
        ));
    };
    let memberships = request.memberships.unwrap_or_default();
    if !authz::may_assign(&principal, &memberships) {
        return Err(authz::forbidden(
            "a team_admin gives team roles in the teams it administers, and only those",
        ));
    }
    check_teams_exist(&api, &memberships)?;
    let hash = passwords.hash(password).await?;
    let audit = audit_entry(
        &caller,
        addr,
        "create",
        &name,
        json!({ "before": null, "after": { "name": name, "memberships": memberships } }),
    );
    let store = api.store.clone();
    let user = store_call(move || store.create_user(&name, &hash, &memberships, &[audit])).await?;
    Ok((StatusCode::CREATED, Json(shown(&user))).into_response())
}

/// `GET /admin/v1/users`: the users the caller may see, by name.
pub async fn list(
    State(api): State<AdminApi>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    let store = api.store.clone();
    let users = store_call(move || store.list_users()).await?;
    let items: Vec<Value> = users
        .iter()
        .filter(|u| authz::can_see_user(&principal, &u.name, &u.memberships))
        .map(|u| shown_to(&principal, u))
        .collect();
    Ok(Json(json!({ "items": items, "next": null })))
}

/// `GET /admin/v1/users/<name>`.
pub async fn one(
    State(api): State<AdminApi>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user = visible_user(&api, &principal, &name).await?;
    Ok(Json(shown_to(&principal, &user)))
}

/// `PATCH /admin/v1/users/<name> {password?, memberships?}`: a user may
/// change its own password; whoever manages it (see
/// [`authz::may_assign`]) its password and memberships.
pub async fn patch(
    State(api): State<AdminApi>,
    Extension(principal): Extension<Principal>,
    Extension(caller): Extension<Caller>,
    Extension(passwords): Extension<Arc<Passwords>>,
    addr: Option<Extension<ClientAddr>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let current = visible_user(&api, &principal, &name).await?;
    let itself = principal.user.as_deref() == Some(name.as_str());
    let manages = authz::may_assign(&principal, &current.memberships);
    if !(itself || manages) {
        return Err(authz::forbidden(
            "only the user itself, or whoever administers all its teams, may change it",
        ));
    }
    let request = parse_request(&body, false)?;
    let memberships = request
        .memberships
        .filter(|new| *new != current.memberships);
    if let Some(new) = &memberships {
        if !(manages && authz::may_assign(&principal, new)) {
            return Err(authz::forbidden(
                "memberships are given by a super_admin, or a team_admin in the teams it \
                 administers",
            ));
        }
        check_teams_exist(&api, new)?;
    }
    let hash = match request.password {
        Some(password) => Some(passwords.hash(password).await?),
        None => None,
    };
    if hash.is_none() && memberships.is_none() {
        return Ok(Json(shown_to(&principal, &current)));
    }
    let mut before = json!({ "name": name });
    let mut after = json!({ "name": name });
    if let Some(new) = &memberships {
        before["memberships"] = json!(current.memberships);
        after["memberships"] = json!(new);
    }
    if hash.is_some() {
        after["password_changed"] = true.into();
    }
    let audit = audit_entry(
        &caller,
        addr,
        "update",
        &name,
        json!({ "before": before, "after": after }),
    );
    let store = api.store.clone();
    let user = store_call(move || {
        store.update_user(
            &name,
            &UserUpdate {
                password_hash: hash.as_deref(),
                memberships: memberships.as_deref(),
            },
            &[audit],
        )
    })
    .await?;
    Ok(Json(shown_to(&principal, &user)))
}

/// `DELETE /admin/v1/users/<name>`: 204; its tokens and sessions end with it.
pub async fn remove(
    State(api): State<AdminApi>,
    Extension(principal): Extension<Principal>,
    Extension(caller): Extension<Caller>,
    addr: Option<Extension<ClientAddr>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let current = visible_user(&api, &principal, &name).await?;
    if !authz::may_assign(&principal, &current.memberships) {
        return Err(authz::forbidden(
            "only a super_admin, or whoever administers all the user's teams, may delete it",
        ));
    }
    let audit = audit_entry(
        &caller,
        addr,
        "delete",
        &name,
        json!({ "before": shown(&current), "after": null }),
    );
    let store = api.store.clone();
    store_call(move || store.delete_user(&name, &[audit])).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /admin/v1/users/<name>/tokens`: 201 `{"token"}`, shown this once
/// (the store keeps its SHA-256), for the user itself or a super_admin.
pub async fn issue_token(
    State(api): State<AdminApi>,
    Extension(principal): Extension<Principal>,
    Extension(caller): Extension<Caller>,
    addr: Option<Extension<ClientAddr>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let user = visible_user(&api, &principal, &name).await?;
    let itself = principal.user.as_deref() == Some(user.name.as_str());
    if !(itself || principal.is_super_admin()) {
        return Err(authz::forbidden(
            "a user's tokens are issued to itself or by a super_admin",
        ));
    }
    let token = tollgate_policy::credentials::random_token(ADMIN_TOKEN_PREFIX);
    let hash = tollgate_policy::credentials::hash_key(&token);
    let token_name = format!("{name}/{:012x}", fastrand::u64(..) >> 16);
    let audit = audit_entry(
        &caller,
        addr,
        "create_token",
        &name,
        json!({ "before": null, "after": { "token": token_name } }),
    );
    let store = api.store.clone();
    store_call(move || store.insert_user_token(&name, &token_name, &hash, &[audit])).await?;
    let mut response = (StatusCode::CREATED, Json(json!({ "token": token }))).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `POST /admin/v1/login {name, password}`: 200 `{name, memberships}` and
/// the session cookie; 401 `invalid_credentials` for a wrong name or
/// password alike; 429 `rate_limited` past [`LOGIN_ATTEMPTS`] a minute
/// from one address.
pub async fn login(
    State(api): State<AdminApi>,
    Extension(passwords): Extension<Arc<Passwords>>,
    addr: Option<Extension<ClientAddr>>,
    request_headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ip = addr.map_or(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        |Extension(ClientAddr(a))| a.ip(),
    );
    if !passwords.admit(ip, Instant::now()) {
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many sign-in attempts from this address: try again in a minute",
        )
        .into_response();
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(LOGIN_WINDOW.as_secs()),
        );
        return Ok(response);
    }
    let map: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => map,
        _ => {
            return Err(ApiError::bad_request(
                "the body must be {\"name\", \"password\"}",
            ))
        }
    };
    let text = |field: &str| map.get(field).and_then(Value::as_str).map(String::from);
    let (Some(name), Some(password)) = (text("name"), text("password")) else {
        return Err(ApiError::bad_request(
            "the body must be {\"name\", \"password\"}",
        ));
    };
    let store = api.store.clone();
    let lookup = name.clone();
    let user = store_call(move || store.find_user(&lookup)).await?;
    let matched = passwords
        .verify(user.as_ref().map(|u| u.password_hash.clone()), password)
        .await;
    // Every sign-in, allowed or refused, is on record; a failed one names
    // the name tried, never the password.
    let sign_in = |action: &str| AuditEntry {
        actor: name.clone(),
        client_ip: Some(ip.to_string()),
        action: action.to_string(),
        kind: "sessions".to_string(),
        name: name.clone(),
        diff: Value::Null,
    };
    let Some(user) = user.filter(|_| matched) else {
        let store = api.store.clone();
        let entry = sign_in("login_failed");
        store_call(move || store.record_audit(&[entry])).await?;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "the name or password is not valid",
        ));
    };
    let store = api.store.clone();
    let entry = sign_in("login");
    store_call(move || store.record_audit(&[entry])).await?;
    let session = tollgate_policy::credentials::random_token(SESSION_PREFIX);
    let hash = tollgate_policy::credentials::hash_key(&session);
    let expires_at = now_unix() + SESSION_TTL.as_secs() as i64;
    let store = api.store.clone();
    let user_id = user.id;
    store_call(move || store.create_session(user_id, &hash, expires_at)).await?;
    let secure = forwarded_https(&request_headers);
    let mut response = Json(shown(&user)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::SET_COOKIE,
        session_cookie_header(&session, SESSION_TTL.as_secs(), secure),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `GET /admin/v1/whoami`: the caller as the admin API sees it — its name,
/// its user (none for a token of no user), its global role and its role in
/// each team — so that a client (the console) offers only what it may do.
pub async fn whoami(Extension(principal): Extension<Principal>) -> Json<Value> {
    let teams: Map<String, Value> = principal
        .teams
        .iter()
        .map(|(team, role)| (team.clone(), Value::from(role.as_str())))
        .collect();
    Json(serde_json::json!({
        "name": principal.name,
        "user": principal.user,
        "global": principal.global.map(|r| r.as_str()),
        "teams": teams,
    }))
}

/// `POST /admin/v1/logout[?everywhere=true]`: ends the session of the
/// request's cookie, if any — or, with `everywhere`, every session of its
/// user — and clears the cookie. 204.
pub async fn logout(
    State(api): State<AdminApi>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let everywhere = params.get("everywhere").is_some_and(|v| v == "true");
    if let Some(session) = session_cookie(&headers) {
        let hash = tollgate_policy::credentials::hash_key(&session);
        let store = api.store.clone();
        if everywhere {
            store_call(move || store.delete_sessions_of_user(&hash)).await?;
        } else {
            store_call(move || store.delete_session(&hash)).await?;
        }
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie_header("", 0, forwarded_https(&headers)),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_ins_are_limited_per_address_and_window() {
        let passwords = Passwords::new();
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let t0 = Instant::now();
        for _ in 0..LOGIN_ATTEMPTS {
            assert!(passwords.admit(a, t0));
        }
        assert!(!passwords.admit(a, t0 + Duration::from_secs(59)));
        assert!(passwords.admit(b, t0), "another address has its own count");
        assert!(passwords.admit(a, t0 + LOGIN_WINDOW), "a new window");
    }

    #[tokio::test]
    async fn passwords_hash_to_argon2id_and_the_decoy_matches_nothing() {
        let passwords = Passwords::new();
        let phc = passwords
            .hash("correct horse battery".into())
            .await
            .ok()
            .unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(DECOY_HASH.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(PasswordHash::new(DECOY_HASH).is_ok());
        assert!(
            passwords
                .verify(Some(phc.clone()), "correct horse battery".into())
                .await
        );
        assert!(
            !passwords
                .verify(Some(phc), "wrong horse battery".into())
                .await
        );
        assert!(!passwords.verify(None, "anything".into()).await);
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let body = |v: Value| Bytes::from(v.to_string());
        let paths = |r: Result<UserRequest, ApiError>| -> Vec<String> {
            match r {
                Ok(_) => Vec::new(),
                Err(e) => e
                    .detail("errors")
                    .and_then(Value::as_array)
                    .map(|errors| {
                        let mut paths: Vec<String> = errors
                            .iter()
                            .map(|e| e["path"].as_str().unwrap_or("").to_string())
                            .collect();
                        paths.sort();
                        paths
                    })
                    .unwrap_or_else(|| vec!["<not a 422>".into()]),
            }
        };
        assert_eq!(
            paths(parse_request(
                &body(json!({ "name": "ann", "password": "short" })),
                true
            )),
            ["password"]
        );
        assert_eq!(
            paths(parse_request(
                &body(json!({
                    "name": "a b",
                    "password": "long enough password",
                    "memberships": [
                        { "team": "shop", "role": "owner" },
                        { "team": "shop", "role": "auditor" },
                        { "role": "developer" },
                        { "team": "shop", "role": "developer" },
                        { "team": "shop", "role": "team_admin" },
                    ],
                    "colour": "blue",
                })),
                true
            )),
            [
                "colour",
                "memberships[0].role",
                "memberships[1].team",
                "memberships[2].team",
                "memberships[4].team",
                "name",
            ]
        );
        let ok = parse_request(
            &body(json!({
                "name": "ann@example.org",
                "password": "long enough password",
                "memberships": [{ "role": "auditor" }, { "team": "shop", "role": "developer" }],
            })),
            true,
        )
        .ok()
        .unwrap();
        assert_eq!(
            ok.memberships.unwrap(),
            [
                Membership {
                    team: "*".into(),
                    role: "auditor".into()
                },
                Membership {
                    team: "shop".into(),
                    role: "developer".into()
                },
            ]
        );
        assert_eq!(
            paths(parse_request(&body(json!({ "name": "x" })), false)),
            ["name"]
        );
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; tollgate_session=tgs_x"),
        );
        assert_eq!(session_cookie(&headers).as_deref(), Some("tgs_x"));
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("tollgate_session="),
        );
        assert_eq!(session_cookie(&headers), None);
    }
}
