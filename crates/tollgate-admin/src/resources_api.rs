//! The admin API's resources: `GET` lists and reads, `POST` creates, `PUT`
//! replaces, `PATCH` merges (RFC 7396), `DELETE` removes — each through
//! [`ControlPlane::write`], so a change that would not validate or compile
//! is refused whole with 422 and the field paths at fault. A resource's
//! `ETag` is the config revision of its last write; `If-Match` makes a
//! write conditional (412 when it moved).
//!
//! Also here: consumer keys (the plaintext returned once), the subscription
//! workflow, the audit log, `apply`/`export` and OpenAPI import.
//!
//! Every write passes [`permission`] under the write lock, and every read
//! shows only what the caller may see ([`crate::authz`]): another team's
//! resource answers 404 exactly as a missing one does.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Extension, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use tollgate_config::resources::{self, Kind};
use tollgate_config::Config;
use tollgate_store::{AuditQuery, ConfigState, Expect, Origin, StoredResource};

use crate::api::{
    parse_limit, parse_time, redact, AdminApi, ApiError, Caller, ClientAddr, DEFAULT_LIMIT,
    REDACTED,
};
use crate::authz::{self, Directory, Principal, Refusal, Verb};
use crate::control::{self, Actor, Committed, Edit, WriteError};

type Query_ = Query<HashMap<String, String>>;

/// Most field errors a 422 lists.
const MAX_ERRORS_SHOWN: usize = 100;

/// Who writes, as the admin listener and the auth middleware established
/// it: the audit log's actor and the principal the rules judge.
pub struct Writer {
    actor: Actor,
    principal: Principal,
}

impl<S: Send + Sync> FromRequestParts<S> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Writer, ApiError> {
        let caller = parts
            .extensions
            .get::<Caller>()
            .ok_or_else(|| ApiError::internal("a write reached its handler unauthenticated"))?;
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::internal("a write reached its handler without a principal"))?;
        let client_ip = parts
            .extensions
            .get::<ClientAddr>()
            .map(|ClientAddr(addr)| addr.ip().to_string());
        Ok(Writer {
            actor: Actor {
                name: caller.name.clone(),
                client_ip,
            },
            principal,
        })
    }
}

impl Writer {
    pub(crate) fn principal(&self) -> &Principal {
        &self.principal
    }

    pub(crate) fn actor(&self) -> &Actor {
        &self.actor
    }

    /// Replaces the resource read at `revision` with `body`, recorded as
    /// `action` (`create_key`, `approve` …): the read–modify–write of the
    /// endpoints that change part of a resource.
    async fn amend(
        &self,
        api: &AdminApi,
        kind: Kind,
        name: impl Into<String>,
        revision: i64,
        body: Value,
        action: &str,
    ) -> Result<Committed, WriteError> {
        let edit = Edit::put(kind, name, body, Expect::Revision(revision)).with_action(action);
        self.write(api, &[edit], false).await
    }

    /// [`ControlPlane::write_checked`] as this caller, under its rules.
    async fn write(
        &self,
        api: &AdminApi,
        edits: &[Edit],
        dry_run: bool,
    ) -> Result<Committed, WriteError> {
        api.control
            .write_checked(&self.actor, edits, dry_run, &permission(&self.principal))
            .await
    }
}

fn kind(text: &str) -> Result<Kind, ApiError> {
    Kind::parse(text).ok_or_else(|| {
        let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        ApiError::not_found(format!(
            "no resource kind `{text}`; kinds: {}",
            kinds.join(", ")
        ))
    })
}

impl From<WriteError> for ApiError {
    fn from(error: WriteError) -> ApiError {
        match error {
            WriteError::NotFound { .. } => ApiError::not_found(error.to_string()),
            WriteError::Exists { .. } => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", error.to_string())
            }
            WriteError::Conflict { .. } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                error.to_string(),
            ),
            WriteError::Invalid(errors) => {
                // A document of a thousand broken resources is answered with
                // the first hundred errors; the message gives the count.
                let list: Vec<Value> = errors
                    .iter()
                    .take(MAX_ERRORS_SHOWN)
                    .map(|e| json!({ "path": e.path, "message": e.message }))
                    .collect();
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_config",
                    format!(
                        "the change was refused: {} error(s){}; nothing was changed",
                        errors.len(),
                        if errors.len() > list.len() {
                            format!(", the first {} listed", list.len())
                        } else {
                            String::new()
                        }
                    ),
                )
                .with_detail("errors", Value::Array(list))
            }
            WriteError::Forbidden(message) => authz::forbidden(message),
            WriteError::Unavailable(message) => ApiError::unavailable(message),
            WriteError::Internal(message) => ApiError::internal(message),
        }
    }
}

/// The check every resource write passes, under the write lock: each
/// edit's resource as it is and as it would be must be the caller's to
/// change (see [`authz::check_write`]). A resource the caller may not see
/// is reported missing, as it would be if it were.
fn permission(
    principal: &Principal,
) -> impl Fn(&Config, &ConfigState, &[Edit]) -> Result<(), WriteError> + Send + Sync + '_ {
    move |config, state, edits| {
        let directory = Directory::new(config);
        for edit in edits {
            // A create asserts absence: a taken name is the plan's 409.
            let current = match edit.expect {
                Expect::Absent => None,
                _ => find(state, edit.kind, &edit.name),
            };
            let missing =
                matches!(edit.expect, Expect::Present | Expect::Revision(_)) || edit.body.is_none();
            if current.is_none() && missing {
                // Nothing to change: missing for everyone, as the plan says.
                return Err(WriteError::NotFound {
                    kind: edit.kind,
                    name: edit.name.clone(),
                });
            }
            let before = current.map(|r| directory.owners(edit.kind, &r.body));
            let after = edit.body.as_ref().map(|b| directory.owners(edit.kind, b));
            let verb = Verb::of(
                edit.action.as_deref(),
                current.is_some(),
                edit.body.is_none(),
            );
            let refused = |refusal| match refusal {
                Refusal::NotFound => WriteError::NotFound {
                    kind: edit.kind,
                    name: edit.name.clone(),
                },
                Refusal::Forbidden(message) => WriteError::Forbidden(message),
            };
            authz::check_write(principal, edit.kind, verb, before.as_ref(), after.as_ref())
                .map_err(refused)?;
            if let (Kind::Consumers, Some(body)) = (edit.kind, &edit.body) {
                let groups = |body: &Value| -> Vec<String> {
                    body["groups"]
                        .as_array()
                        .map(|g| {
                            g.iter()
                                .filter_map(|v| v.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let had = current.map(|r| groups(&r.body)).unwrap_or_default();
                let wanted = groups(body);
                let added: Vec<&str> = wanted
                    .iter()
                    .filter(|g| !had.contains(g))
                    .map(String::as_str)
                    .collect();
                authz::check_groups(principal, config, &added).map_err(refused)?;
            }
        }
        Ok(())
    }
}

/// `verb` on `current` checked ahead of the write, so that a resource the
/// caller may not see answers `missing()` before anything else about it.
fn check_early(
    api: &AdminApi,
    principal: &Principal,
    current: &StoredResource,
    kind: Kind,
    verb: Verb,
    missing: impl FnOnce() -> ApiError,
) -> Result<(), ApiError> {
    let directory = Directory::new(&api.config());
    let owners = directory.owners(kind, &current.body);
    match authz::check_write(principal, kind, verb, Some(&owners), Some(&owners)) {
        Ok(()) => Ok(()),
        Err(Refusal::NotFound) => Err(missing()),
        Err(Refusal::Forbidden(message)) => Err(authz::forbidden(message)),
    }
}

/// `resource` if `principal` may see it; else `missing()`.
fn visible<'a>(
    api: &AdminApi,
    principal: &Principal,
    kind: Kind,
    resource: Option<&'a StoredResource>,
    missing: impl FnOnce() -> ApiError,
) -> Result<&'a StoredResource, ApiError> {
    let directory = Directory::new(&api.config());
    resource
        .filter(|r| authz::can_read(principal, &directory.owners(kind, &r.body)))
        .ok_or_else(missing)
}

fn unprocessable(path: &str, message: impl Into<String>) -> ApiError {
    WriteError::Invalid(vec![tollgate_config::ConfigError::new(path, message)]).into()
}

/// A JSON object from a request body, or 400.
fn object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("the body is not JSON: {e}"))),
    }
}

/// `If-Match: "7"` (or `W/"7"`) as an expected revision; `*` as "exists".
fn if_match(headers: &HeaderMap) -> Result<Option<Expect>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request("If-Match is not text"))?
        .trim();
    if text == "*" {
        return Ok(Some(Expect::Present));
    }
    text.trim_start_matches("W/")
        .trim_matches('"')
        .parse::<i64>()
        .map(|revision| Some(Expect::Revision(revision)))
        .map_err(|_| ApiError::bad_request("If-Match must be an ETag this API returned, or *"))
}

fn etag(revision: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).expect("digits are a header value")
}

/// A stored resource as the API shows it: secrets redacted.
fn shown(resource: &StoredResource) -> Value {
    let mut body = resource.body.clone();
    redact(&mut body);
    body
}

fn find<'a>(
    state: &'a tollgate_store::ConfigState,
    kind: Kind,
    name: &str,
) -> Option<&'a StoredResource> {
    state
        .resources
        .iter()
        .find(|r| r.kind == kind.as_str() && r.name == name)
}

/// The resource after a write, with its ETag.
fn written(api: &AdminApi, kind: Kind, name: &str, status: StatusCode) -> Response {
    let state = api.control.state();
    match find(&state, kind, name) {
        Some(resource) => {
            let mut response = (status, Json(shown(resource))).into_response();
            response
                .headers_mut()
                .insert(header::ETAG, etag(resource.revision));
            response
        }
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

/// Writes secrets shown as [`REDACTED`] back from `current`, so a resource
/// read, edited and put back keeps the secrets it was not shown.
fn restore_redacted(incoming: &mut Value, current: &Value) {
    match (incoming, current) {
        (Value::String(text), Value::String(old)) if text == REDACTED => *text = old.clone(),
        (Value::Object(new), Value::Object(old)) => {
            for (key, value) in new.iter_mut() {
                if let Some(old) = old.get(key) {
                    restore_redacted(value, old);
                }
            }
        }
        (Value::Array(new), Value::Array(old)) => {
            for (value, old) in new.iter_mut().zip(old) {
                restore_redacted(value, old);
            }
        }
        _ => {}
    }
}

/// The name a new resource's body gives itself, filling in generated ids.
fn key_of_new(kind: Kind, body: &mut Map<String, Value>) -> Result<String, ApiError> {
    match kind {
        Kind::Blocks => {
            let id = match body.get("id") {
                Some(Value::String(id)) => id.clone(),
                Some(_) => return Err(unprocessable("id", "must be a string")),
                None => format!("blk_{:012x}", fastrand::u64(..) >> 16),
            };
            body.insert("id".into(), id.clone().into());
            Ok(id)
        }
        Kind::Subscriptions => {
            body.entry("status").or_insert_with(|| "pending".into());
            let id = match body.get("id") {
                Some(Value::String(id)) => id.clone(),
                Some(_) => return Err(unprocessable("id", "must be a string")),
                None => {
                    let field = |f: &str| body.get(f).and_then(Value::as_str).unwrap_or("");
                    format!("{}:{}", field("consumer"), field("service"))
                }
            };
            body.insert("id".into(), id.clone().into());
            Ok(id)
        }
        Kind::AiPrices => price_name(body),
        _ => match body.get("name") {
            Some(Value::String(name)) if !name.is_empty() => Ok(name.clone()),
            _ => Err(unprocessable("name", "is required")),
        },
    }
}

/// A price is named `<provider>:<model>` after its two fields.
fn price_name(body: &Map<String, Value>) -> Result<String, ApiError> {
    match (body.get("provider"), body.get("model")) {
        (Some(Value::String(provider)), Some(Value::String(model))) => {
            Ok(format!("{provider}:{model}"))
        }
        _ => Err(unprocessable("provider", "provider and model are required")),
    }
}

/// `GET /admin/v1/<kind>`: `{"items", "next"}`, sorted by name, filtered by
/// any top-level field (`?team=payments`), `?limit=` and `?cursor=`.
pub async fn list(
    State(api): State<AdminApi>,
    Extension(principal): Extension<Principal>,
    Path(kind_name): Path<String>,
    Query(params): Query_,
) -> Result<Json<Value>, ApiError> {
    let kind = kind(&kind_name)?;
    let limit = match params.get("limit") {
        None => DEFAULT_LIMIT,
        Some(text) => parse_limit(text)?,
    };
    let after = match params.get("cursor") {
        None => None,
        Some(cursor) => Some(decode_cursor(cursor)?),
    };
    // `?awaiting=me` on subscriptions: those the caller may approve or
    // reject — an approver's queue, with `status=pending`.
    let awaiting_me = match params.get("awaiting").map(String::as_str) {
        None => false,
        Some("me") if kind == Kind::Subscriptions => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "awaiting=me is a filter of subscriptions",
            ))
        }
    };
    let filters: Vec<(&String, &String)> = params
        .iter()
        .filter(|(key, _)| !matches!(key.as_str(), "limit" | "cursor" | "awaiting"))
        .collect();
    let state = api.control.state();
    let directory = Directory::new(&api.config());
    let mut items: Vec<(&str, Value)> = state
        .resources
        .iter()
        .filter(|r| r.kind == kind.as_str())
        .filter(|r| authz::can_read(&principal, &directory.owners(kind, &r.body)))
        .filter(|r| {
            let owners = directory.owners(kind, &r.body);
            !awaiting_me
                || authz::check_write(
                    &principal,
                    kind,
                    authz::Verb::Approve,
                    Some(&owners),
                    Some(&owners),
                )
                .is_ok()
        })
        .map(|r| (r.name.as_str(), shown(r)))
        .collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    let mut matching = items.into_iter().filter(|(name, item)| {
        after.as_deref().is_none_or(|after| *name > after)
            && filters
                .iter()
                .all(|(field, wanted)| matches(&item[field.as_str()], wanted))
    });
    let page: Vec<(&str, Value)> = matching.by_ref().take(limit).collect();
    let next = match (matching.next(), page.last()) {
        (Some(_), Some((last, _))) => Some(encode_cursor(last)),
        _ => None,
    };
    let page: Vec<Value> = page.into_iter().map(|(_, item)| item).collect();
    Ok(Json(json!({ "items": page, "next": next })))
}

/// A filter matches a scalar field by its text, or an array field that contains it.
fn matches(field: &Value, wanted: &str) -> bool {
    match field {
        Value::String(s) => s == wanted,
        Value::Number(n) => n.to_string() == wanted,
        Value::Bool(b) => b.to_string() == wanted,
        Value::Array(items) => items.iter().any(|item| matches(item, wanted)),
        _ => false,
    }
}

fn encode_cursor(name: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(name)
}

fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| ApiError::bad_request("invalid cursor"))
}

/// `GET /admin/v1/<kind>/<name>`, with its `ETag`.
pub async fn one(
    State(api): State<AdminApi>,
    Extension(principal): Extension<Principal>,
    Path((kind_name, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let kind = kind(&kind_name)?;
    let state = api.control.state();
    let resource = visible(&api, &principal, kind, find(&state, kind, &name), || {
        ApiError::not_found(format!("no {kind} named `{name}`"))
    })?;
    let mut response = Json(shown(resource)).into_response();
    response
        .headers_mut()
        .insert(header::ETAG, etag(resource.revision));
    Ok(response)
}

/// `POST /admin/v1/<kind>`: 201 with the resource, 409 if the name is taken.
pub async fn create(
    State(api): State<AdminApi>,
    writer: Writer,
    Path(kind_name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kind = kind(&kind_name)?;
    let mut body = object(&body)?;
    let name = key_of_new(kind, &mut body)?;
    let edit = Edit::put(kind, name.clone(), Value::Object(body), Expect::Absent);
    writer.write(&api, &[edit], false).await?;
    Ok(written(&api, kind, &name, StatusCode::CREATED))
}

/// `PUT /admin/v1/<kind>/<name>`: replaces (or creates) the resource.
pub async fn replace(
    State(api): State<AdminApi>,
    writer: Writer,
    Path((kind_name, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kind = kind(&kind_name)?;
    let mut body = object(&body)?;
    if kind == Kind::AiPrices {
        // The name is the two fields: fill them in from it, or check them.
        if let Some((provider, model)) = name.split_once(':') {
            body.entry("provider").or_insert_with(|| provider.into());
            body.entry("model").or_insert_with(|| model.into());
        }
        if price_name(&body)? != name {
            return Err(unprocessable(
                "provider",
                format!("provider and model must make `{name}`, as in the URL"),
            ));
        }
    }
    let field = kind.key_field();
    match body.get(field).filter(|_| kind != Kind::AiPrices) {
        None if kind == Kind::AiPrices => {}
        None => {
            body.insert(field.into(), name.clone().into());
        }
        Some(Value::String(given)) if *given == name => {}
        Some(_) => {
            return Err(unprocessable(
                field,
                format!("must be `{name}`, as in the URL (renaming is not supported)"),
            ))
        }
    }
    let mut body = Value::Object(body);
    let state = api.control.state();
    if let Some(current) = find(&state, kind, &name) {
        restore_redacted(&mut body, &current.body);
    }
    let expect = if_match(&headers)?.unwrap_or(Expect::Anything);
    let existed = find(&state, kind, &name).is_some();
    writer
        .write(&api, &[Edit::put(kind, name.clone(), body, expect)], false)
        .await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(written(&api, kind, &name, status))
}

/// `PATCH /admin/v1/<kind>/<name>`: an RFC 7396 merge patch.
pub async fn patch(
    State(api): State<AdminApi>,
    writer: Writer,
    Path((kind_name, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kind = kind(&kind_name)?;
    let patch = Value::Object(object(&body)?);
    let state = api.control.state();
    let current = visible(
        &api,
        &writer.principal,
        kind,
        find(&state, kind, &name),
        || ApiError::not_found(format!("no {kind} named `{name}`")),
    )?;
    let mut body = current.body.clone();
    merge_patch(&mut body, &patch);
    restore_redacted(&mut body, &current.body);
    let same_name = match (kind, &body) {
        (Kind::AiPrices, Value::Object(map)) => price_name(map).ok().as_ref() == Some(&name),
        _ => body.get(kind.key_field()) == Some(&Value::String(name.clone())),
    };
    if !same_name {
        return Err(unprocessable(
            kind.key_field(),
            "cannot be changed (renaming is not supported)",
        ));
    }
    let expect = match if_match(&headers)? {
        Some(expect) => expect,
        // Without If-Match the patch still applies only to what it was computed from.
        None => Expect::Revision(current.revision),
    };
    writer
        .write(&api, &[Edit::put(kind, name.clone(), body, expect)], false)
        .await?;
    Ok(written(&api, kind, &name, StatusCode::OK))
}

/// RFC 7396: objects merge, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// `DELETE /admin/v1/<kind>/<name>`: 204.
pub async fn remove(
    State(api): State<AdminApi>,
    writer: Writer,
    Path((kind_name, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let kind = kind(&kind_name)?;
    let expect = if_match(&headers)?.unwrap_or(Expect::Present);
    writer
        .write(&api, &[Edit::delete(kind, name, expect)], false)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /admin/v1/consumers/<name>/keys` `{"expires"?, "id"?}`: issues a
/// key and returns `{"id", "key", "expires"}` — the key this once only;
/// the store keeps its SHA-256.
pub async fn create_key(
    State(api): State<AdminApi>,
    writer: Writer,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let missing = || ApiError::not_found(format!("no consumers named `{name}`"));
    let state = api.control.state();
    let current = find(&state, Kind::Consumers, &name).ok_or_else(missing)?;
    check_early(
        &api,
        &writer.principal,
        current,
        Kind::Consumers,
        Verb::CreateKey,
        missing,
    )?;
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        object(&body)?
    };
    for field in request.keys() {
        if field != "expires" && field != "id" {
            return Err(unprocessable(
                field,
                "unknown field: a key request takes expires and id",
            ));
        }
    }
    let expires = match request.get("expires") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|_| unprocessable("expires", "must be an RFC 3339 date-time"))?,
        ),
        Some(_) => return Err(unprocessable("expires", "must be an RFC 3339 date-time")),
    };
    let id = match request.get("id") {
        None => format!("key_{:012x}", fastrand::u64(..) >> 16),
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        Some(_) => return Err(unprocessable("id", "must be a non-empty string")),
    };
    let key = tollgate_policy::credentials::generate_key();
    let hash =
        tollgate_policy::credentials::format_hash(&tollgate_policy::credentials::hash_key(&key));
    let rfc3339 = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let mut entry =
        json!({ "id": id, "hash": hash, "created": rfc3339(time::OffsetDateTime::now_utc()) });
    if let Some(expires) = expires {
        entry["expires"] = rfc3339(expires).into();
    }
    let mut body = current.body.clone();
    match body.get_mut("keys") {
        Some(Value::Array(keys)) => keys.push(entry),
        _ => body["keys"] = json!([entry]),
    }
    writer
        .amend(
            &api,
            Kind::Consumers,
            name,
            current.revision,
            body,
            "create_key",
        )
        .await?;
    let answer = json!({ "id": id, "key": key, "expires": expires.map(rfc3339) });
    let mut response = (StatusCode::CREATED, Json(answer)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `DELETE /admin/v1/consumers/<name>/keys/<id>`: the key stops working.
pub async fn delete_key(
    State(api): State<AdminApi>,
    writer: Writer,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let missing = || ApiError::not_found(format!("no consumers named `{name}`"));
    let state = api.control.state();
    let current = find(&state, Kind::Consumers, &name).ok_or_else(missing)?;
    check_early(
        &api,
        &writer.principal,
        current,
        Kind::Consumers,
        Verb::DeleteKey,
        missing,
    )?;
    let mut body = current.body.clone();
    let Some(Value::Array(keys)) = body.get_mut("keys") else {
        return Err(ApiError::not_found(format!("`{name}` has no key `{id}`")));
    };
    let before = keys.len();
    keys.retain(|k| k.get("id").and_then(Value::as_str) != Some(id.as_str()));
    if keys.len() == before {
        return Err(ApiError::not_found(format!("`{name}` has no key `{id}`")));
    }
    writer
        .amend(
            &api,
            Kind::Consumers,
            name,
            current.revision,
            body,
            "delete_key",
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /admin/v1/subscriptions/<id>/approve|reject|revoke` `{"comment"?}`.
pub async fn decide_subscription(
    State(api): State<AdminApi>,
    writer: Writer,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        object(&body)?
    };
    let comment = match request.get("comment") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(_) => return Err(unprocessable("comment", "must be a string")),
    };
    let missing = || ApiError::not_found(format!("no subscription `{id}`"));
    let state = api.control.state();
    let current = visible(
        &api,
        &writer.principal,
        Kind::Subscriptions,
        find(&state, Kind::Subscriptions, &id),
        missing,
    )?;
    let status = current.body["status"].as_str().unwrap_or("");
    let (allowed_from, to, verb): (&[&str], &str, Verb) = match action.as_str() {
        "approve" => (&["pending", "rejected"], "approved", Verb::Approve),
        "reject" => (&["pending"], "rejected", Verb::Reject),
        "revoke" => (&["pending", "approved"], "revoked", Verb::Revoke),
        other => {
            return Err(ApiError::not_found(format!(
                "no subscription action `{other}`: use approve, reject or revoke"
            )))
        }
    };
    check_early(
        &api,
        &writer.principal,
        current,
        Kind::Subscriptions,
        verb,
        missing,
    )?;
    if !allowed_from.contains(&status) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_transition",
            format!("a {status} subscription cannot be {to}"),
        ));
    }
    let mut body = current.body.clone();
    body["status"] = to.into();
    match comment {
        Some(comment) => body["comment"] = comment.into(),
        None => {
            if let Value::Object(map) = &mut body {
                map.remove("comment");
            }
        }
    }
    writer
        .amend(
            &api,
            Kind::Subscriptions,
            id.clone(),
            current.revision,
            body,
            &action,
        )
        .await?;
    Ok(written(&api, Kind::Subscriptions, &id, StatusCode::OK))
}

/// `GET /admin/v1/audit`: the audit log, newest first; filters `kind`,
/// `name`, `actor`, `action`, `from`, `to`; `limit` and `cursor`.
pub async fn audit(
    State(api): State<AdminApi>,
    Query(params): Query_,
) -> Result<Json<Value>, ApiError> {
    let mut query = AuditQuery {
        limit: DEFAULT_LIMIT,
        ..AuditQuery::default()
    };
    for (key, value) in &params {
        match key.as_str() {
            "kind" => query.kind = Some(value.clone()),
            "name" => query.name = Some(value.clone()),
            "actor" => query.actor = Some(value.clone()),
            "action" => query.action = Some(value.clone()),
            "from" => query.since = Some(parse_time(key, value)?),
            "to" => query.until = Some(parse_time(key, value)?),
            "limit" => {
                query.limit = parse_limit(value)?
            }
            "cursor" => {
                query.before_id = Some(
                    value
                        .parse()
                        .map_err(|_| ApiError::bad_request("invalid cursor"))?,
                )
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{other}`: use kind, name, actor, action, from, to, limit, cursor"
                )))
            }
        }
    }
    let store = api.store.clone();
    let limit = query.limit;
    let items = tokio::task::spawn_blocking(move || store.query_audit(&query))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let next = (items.len() == limit)
        .then(|| items.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Json(json!({ "items": items, "next": next })))
}

fn flag(params: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match params.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("") | Some("true") | Some("1") => Ok(true),
        Some(_) => Err(ApiError::bad_request(format!(
            "{name} must be true or false"
        ))),
    }
}

/// `POST /admin/v1/apply?dry_run=&prune=`: makes the resources those of the
/// YAML (or JSON) document in the body — creates and updates by name, and
/// with `prune` deletes what it does not list — as one change. Node settings
/// in the document (listen, storage …) are ignored: they are the node's file's.
pub async fn apply(
    State(api): State<AdminApi>,
    writer: Writer,
    Query(params): Query_,
    body: Bytes,
) -> Result<Json<Committed>, ApiError> {
    let dry_run = flag(&params, "dry_run")?;
    let prune = flag(&params, "prune")?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the document is not UTF-8"))?;
    // Validated once merged with the store's other resources, by the write:
    // the document may name a service it does not list.
    let document = tollgate_config::parse_yaml(text).map_err(WriteError::Invalid)?;
    let state = api.control.state();
    // Secrets exported as <redacted> keep their stored values.
    let stored: HashMap<(String, String), &Value> = state
        .resources
        .iter()
        .map(|r| ((r.kind.clone(), r.name.clone()), &r.body))
        .collect();
    let mut wanted = resources::split(&document);
    for resource in &mut wanted {
        if let Some(current) =
            stored.get(&(resource.kind.as_str().to_string(), resource.name.clone()))
        {
            restore_redacted(&mut resource.body, current);
        }
    }
    let edits = control::sync_resources(&state, &wanted, Origin::Admin, prune);
    let committed = writer.write(&api, &edits, dry_run).await?;
    Ok(Json(committed))
}

/// `GET /admin/v1/export`: the resources as a YAML document that `apply`
/// takes back unchanged; literal secrets are shown as `<redacted>`, which
/// `apply` reads as "keep the stored value".
pub async fn export(State(api): State<AdminApi>) -> Result<Response, ApiError> {
    let config = api.config();
    let mut document = serde_json::Map::new();
    for resource in resources::split(&config) {
        let mut body = resource.body;
        redact(&mut body);
        // `ai/providers` is the list `providers` under `ai`, as the file writes it.
        let (section, list) = match resource.kind.config_path().split_once('.') {
            Some((section, list)) => (Some(section), list),
            None => (None, resource.kind.as_str()),
        };
        let parent = match section {
            Some(section) => document
                .entry(section)
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("an object was inserted"),
            None => &mut document,
        };
        parent
            .entry(list)
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .expect("an array was inserted")
            .push(body);
    }
    let yaml = serde_yaml::to_string(&Value::Object(document)).map_err(ApiError::internal)?;
    let mut response = yaml.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/yaml"),
    );
    Ok(response)
}

/// `POST /admin/v1/import/openapi?service=NAME[&team=T][&dry_run=true]`
/// with an OpenAPI 3 document (JSON or YAML) as the body: creates or
/// updates one API per operation on the existing service `NAME`.
pub async fn import_openapi(
    State(api): State<AdminApi>,
    writer: Writer,
    Query(params): Query_,
    body: Bytes,
) -> Result<Json<Committed>, ApiError> {
    let dry_run = flag(&params, "dry_run")?;
    let service = params
        .get("service")
        .ok_or_else(|| ApiError::bad_request("service is required"))?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the document is not UTF-8"))?;
    let apis = tollgate_config::openapi::import(
        text,
        &tollgate_config::openapi::ImportOptions {
            service,
            team: params.get("team").map(String::as_str),
        },
    )
    .map_err(WriteError::Invalid)?;
    let edits: Vec<Edit> = apis
        .iter()
        .map(|api| {
            let body = serde_json::to_value(api).expect("an API serialises to JSON");
            Edit::put(Kind::Apis, api.name.clone(), body, Expect::Anything)
        })
        .collect();
    let committed = writer.write(&api, &edits, dry_run).await?;
    Ok(Json(committed))
}

/// `GET /admin/v1/apis/<name>/openapi.json`: the generated OpenAPI
/// description of a prompt API.
pub async fn prompt_openapi(
    State(api): State<AdminApi>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let state = api.control.state();
    let resource = visible(
        &api,
        &principal,
        Kind::Apis,
        find(&state, Kind::Apis, &name),
        || ApiError::not_found(format!("no apis named `{name}`")),
    )?;
    let decoded: tollgate_config::Api =
        resources::decode(&resource.body).map_err(|e| ApiError::internal(e.to_string()))?;
    match (
        &decoded.ai,
        decoded.ai.as_ref().and_then(|ai| ai.prompt.as_ref()),
    ) {
        (_, Some(prompt)) => Ok(Json(prompt.openapi(&decoded))),
        // It serves the OpenAI and Anthropic APIs, described by their makers.
        (Some(_), None) => Err(ApiError::not_found(format!(
            "`{name}` is an AI API: it serves the OpenAI- and Anthropic-compatible endpoints"
        ))),
        (None, None) => Ok(Json(tollgate_config::describe::describe(&decoded))),
    }
}

/// The AI kinds (`ai/providers`, `ai/models`, `ai/prices`) at
/// `/admin/v1/ai/<kind>[/<name>]`: the generic handlers, the kind's `ai/`
/// put back (a path parameter is one segment).
pub mod ai_kinds {
    use super::*;

    fn ai(kind: String) -> Path<String> {
        Path(format!("ai/{kind}"))
    }

    fn ai_named((kind, name): (String, String)) -> Path<(String, String)> {
        Path((format!("ai/{kind}"), name))
    }

    pub async fn list(
        state: State<AdminApi>,
        principal: Extension<Principal>,
        Path(kind): Path<String>,
        query: Query_,
    ) -> Result<Json<Value>, ApiError> {
        super::list(state, principal, ai(kind), query).await
    }

    pub async fn create(
        state: State<AdminApi>,
        writer: Writer,
        Path(kind): Path<String>,
        body: Bytes,
    ) -> Result<Response, ApiError> {
        super::create(state, writer, ai(kind), body).await
    }

    pub async fn one(
        state: State<AdminApi>,
        principal: Extension<Principal>,
        Path(path): Path<(String, String)>,
    ) -> Result<Response, ApiError> {
        super::one(state, principal, ai_named(path)).await
    }

    pub async fn replace(
        state: State<AdminApi>,
        writer: Writer,
        Path(path): Path<(String, String)>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, ApiError> {
        super::replace(state, writer, ai_named(path), headers, body).await
    }

    pub async fn patch(
        state: State<AdminApi>,
        writer: Writer,
        Path(path): Path<(String, String)>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, ApiError> {
        super::patch(state, writer, ai_named(path), headers, body).await
    }

    pub async fn remove(
        state: State<AdminApi>,
        writer: Writer,
        Path(path): Path<(String, String)>,
        headers: HeaderMap,
    ) -> Result<StatusCode, ApiError> {
        super::remove(state, writer, ai_named(path), headers).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}}));
        let mut target = json!({"a": [1, 2]});
        merge_patch(&mut target, &json!({"a": [3]}));
        assert_eq!(target, json!({"a": [3]}));
    }

    #[test]
    fn redacted_secrets_are_restored_from_the_stored_value() {
        let stored =
            json!({"name": "c", "client_credentials": {"client_id": "c", "secret": "s3cret"}});
        let mut incoming =
            json!({"name": "c", "client_credentials": {"client_id": "c", "secret": REDACTED}});
        restore_redacted(&mut incoming, &stored);
        assert_eq!(incoming, stored);
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        assert_eq!(
            decode_cursor(&encode_cursor("orders-v1")).ok().as_deref(),
            Some("orders-v1")
        );
        assert!(decode_cursor("%%%").is_err());
    }

    #[test]
    fn if_match_reads_etags_and_star() {
        let mut headers = HeaderMap::new();
        assert_eq!(if_match(&headers).ok(), Some(None));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("\"7\""));
        assert_eq!(if_match(&headers).ok(), Some(Some(Expect::Revision(7))));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("W/\"8\""));
        assert_eq!(if_match(&headers).ok(), Some(Some(Expect::Revision(8))));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("*"));
        assert_eq!(if_match(&headers).ok(), Some(Some(Expect::Present)));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("\"abc\""));
        assert!(if_match(&headers).is_err());
    }
}
