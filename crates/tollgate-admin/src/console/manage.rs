//! The console's management pages: services, APIs (with their lifecycle),
//! consumers and keys, subscriptions and their approval, and the logs
//! explorer. Each write is one admin API call made with the user's session;
//! its answer comes back to the list page as a notice (`?done=`) or an
//! error (`?error=`), so a refused write shows the API's own message.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use axum::response::{IntoResponse, Redirect};
use bytes::Bytes;
use maud::{html, Markup};
use serde_json::{json, Value};

use super::pages::{layout, refused};
use super::{
    csrf_token, expired, field, filled, items, page, posted, to_login, viewer, ApiAnswer, Console,
    Viewer,
};

/// A notice or an error carried to the page a form redirects to.
#[derive(serde::Deserialize, Default)]
pub(super) struct Flash {
    done: Option<String>,
    error: Option<String>,
}

pub(super) fn flash(flash: &Flash) -> Markup {
    html! {
        @if let Some(done) = &flash.done { p.notice role="status" { (done) } }
        @if let Some(error) = &flash.error { p.error role="alert" { (error) } }
    }
}

/// Back to `to` with the answer's outcome: `done` when it succeeded, the
/// API's error message otherwise.
pub(super) fn back(to: &str, answer: &ApiAnswer, done: &str) -> Response<Body> {
    let (key, message) = if answer.status.is_success() {
        ("done", done.to_string())
    } else {
        (
            "error",
            format!(
                "{}: {}",
                answer.status.as_u16(),
                answer.body["error"]["message"]
                    .as_str()
                    .unwrap_or("the admin API refused the change")
            ),
        )
    };
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair(key, &message)
        .finish();
    Redirect::to(&format!("{to}?{query}")).into_response()
}

/// A signed-in list page: the viewer and the admin API's `path`, or the
/// sign-in page.
pub(super) async fn list(
    console: &Console,
    headers: &HeaderMap,
    path: &str,
) -> Result<(Viewer, ApiAnswer), Response<Body>> {
    let viewer = viewer(console, headers).await?;
    let answer = console.call(Method::GET, path, headers, None, None).await;
    if answer.status == StatusCode::UNAUTHORIZED {
        return Err(to_login());
    }
    Ok((viewer, answer))
}

pub(super) fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or("–")
}

fn hidden_csrf(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

// ---- services -------------------------------------------------------------

pub async fn services(
    State(console): State<Console>,
    Query(notice): Query<Flash>,
    headers: HeaderMap,
) -> Response<Body> {
    let (viewer, answer) = match list(&console, &headers, "/admin/v1/services").await {
        Ok(answer) => answer,
        Err(response) => return response,
    };
    let (csrf, set) = csrf_token(&headers);
    let body = html! {
        h1 { "Services" }
        (flash(&notice))
        @if !answer.status.is_success() { (refused(answer.status, &answer.body)) }
        section.panel {
            table id="services" {
                thead { tr { th { "Name" } th { "Team" } th { "Targets" } th { "Subscription" } } }
                tbody {
                    @for s in items(&answer.body) {
                        tr {
                            td {
                                (text(s, "name"))
                                @if viewer.manages() {
                                    " " a.small href=(format!("/console/edit/services/{}", text(s, "name"))) { "edit" }
                                }
                            }
                            td { (s["team"].as_str().unwrap_or("")) }
                            td {
                                @for t in s["upstream"]["targets"].as_array().cloned().unwrap_or_default() {
                                    code { (text(&t, "url")) } " "
                                }
                            }
                            td { (s["subscription"].as_str().unwrap_or("open")) }
                        }
                    }
                }
            }
        }
        @if viewer.manages() {
            section.panel {
                h2 { "New service" }
                form.inline id="new-service" method="post" action="/console/services" {
                    (hidden_csrf(&csrf))
                    label { "Name " input type="text" name="name" required; }
                    label { "Team " input type="text" name="team"; }
                    label { "Upstream URL " input type="url" name="url" required placeholder="http://10.0.0.5:8080"; }
                    label { input type="checkbox" name="approval" value="yes"; " Subscriptions need approval" }
                    button type="submit" { "Create service" }
                }
            }
        }
    };
    page(
        layout("Services", &csrf, "/console/services", &viewer, body),
        set,
    )
}

pub async fn create_service(
    State(console): State<Console>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let Some(fields) = posted(&headers, &body) else {
        return expired();
    };
    let name = field(&fields, "name").unwrap_or_default();
    let mut service = json!({
        "name": name,
        "upstream": { "targets": [{ "url": field(&fields, "url").unwrap_or_default() }] },
    });
    if let Some(team) = filled(&fields, "team") {
        service["team"] = json!(team);
    }
    if field(&fields, "approval") == Some("yes") {
        service["subscription"] = json!("approval");
    }
    let answer = console
        .call(
            Method::POST,
            "/admin/v1/services",
            &headers,
            None,
            Some(service),
        )
        .await;
    back(
        "/console/services",
        &answer,
        &format!("Service {name} created."),
    )
}

// ---- APIs -------------------------------------------------------------------

pub async fn apis(
    State(console): State<Console>,
    Query(notice): Query<Flash>,
    headers: HeaderMap,
) -> Response<Body> {
    let (viewer, answer) = match list(&console, &headers, "/admin/v1/apis").await {
        Ok(answer) => answer,
        Err(response) => return response,
    };
    let (csrf, set) = csrf_token(&headers);
    let body = html! {
        h1 { "APIs" }
        (flash(&notice))
        @if viewer.manages() {
            p { a href="/console/import" { "Import an OpenAPI document →" } }
        }
        @if !answer.status.is_success() {
            (refused(answer.status, &answer.body))
        } @else if items(&answer.body).is_empty() {
            p.muted { "No APIs yet." }
        } @else {
            section.panel {
                table id="apis" {
                    thead { tr { th { "Name" } th { "Service" } th { "Paths" } th { "Version" } th { "Lifecycle" } th { "Change" } } }
                    tbody {
                        @for api in items(&answer.body) {
                            @let name = text(api, "name");
                            @let lifecycle = api["lifecycle"].as_str().unwrap_or("published");
                            tr data-api=(name) {
                                td { a href=(format!("/console/apis/{name}")) { (name) } }
                                td { (text(api, "service")) }
                                td {
                                    @for path in api["match"]["paths"].as_array().cloned().unwrap_or_default() {
                                        code { (path.as_str().unwrap_or("")) } " "
                                    }
                                }
                                td { (api["version"].as_str().unwrap_or("–")) }
                                td class=(format!("status-{lifecycle}")) { (lifecycle) }
                                td {
                                    @if viewer.manages() {
                                    form.inline method="post" action=(format!("/console/apis/{name}/lifecycle")) {
                                        (hidden_csrf(&csrf))
                                        select name="lifecycle" aria-label="New state" {
                                            @for state in ["draft", "published", "deprecated", "retired"] {
                                                @if state != lifecycle { option value=(state) { (state) } }
                                            }
                                        }
                                        input type="text" name="successor" placeholder="successor (deprecate)" aria-label="Successor";
                                        input type="date" name="sunset" aria-label="Sunset date (deprecate)";
                                        label { input type="checkbox" name="confirm" value="yes" required; " confirm" }
                                        button type="submit" { "Apply" }
                                    }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if viewer.manages() {
            section.panel {
                h2 { "New API" }
                form.inline id="new-api" method="post" action="/console/apis" {
                    (hidden_csrf(&csrf))
                    label { "Name " input type="text" name="name" required; }
                    label { "Service " input type="text" name="service" required; }
                    label { "Path " input type="text" name="path" required placeholder="/orders"; }
                    label { "Version " input type="text" name="version"; }
                    label { input type="checkbox" name="key" value="yes"; " Requires an API key" }
                    button type="submit" { "Create API" }
                }
            }
        }
    };
    page(layout("APIs", &csrf, "/console/apis", &viewer, body), set)
}

pub async fn create_api(
    State(console): State<Console>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let Some(fields) = posted(&headers, &body) else {
        return expired();
    };
    let name = field(&fields, "name").unwrap_or_default();
    let mut api = json!({
        "name": name,
        "service": field(&fields, "service").unwrap_or_default(),
        "match": { "paths": [field(&fields, "path").unwrap_or_default()] },
    });
    if let Some(version) = filled(&fields, "version") {
        api["version"] = json!(version);
    }
    if field(&fields, "key") == Some("yes") {
        api["policies"] = json!({ "auth": { "methods": ["key"] } });
    }
    let answer = console
        .call(Method::POST, "/admin/v1/apis", &headers, None, Some(api))
        .await;
    back("/console/apis", &answer, &format!("API {name} created."))
}

/// A lifecycle transition, confirmed: a merge patch of the API.
pub async fn change_lifecycle(
    State(console): State<Console>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let Some(fields) = posted(&headers, &body) else {
        return expired();
    };
    if field(&fields, "confirm") != Some("yes") {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("error", "Tick confirm to change an API's lifecycle.")
            .finish();
        return Redirect::to(&format!("/console/apis?{query}")).into_response();
    }
    let lifecycle = field(&fields, "lifecycle").unwrap_or_default();
    let mut patch = json!({ "lifecycle": lifecycle });
    if let Some(successor) = filled(&fields, "successor") {
        patch["successor"] = json!(successor);
    }
    if let Some(day) = filled(&fields, "sunset") {
        patch["sunset"] = json!(format!("{day}T00:00:00Z"));
    }
    let path = format!("/admin/v1/apis/{}", encode(&name));
    let answer = console
        .call_with(
            Method::PATCH,
            &path,
            &headers,
            Some(patch),
            "application/merge-patch+json",
        )
        .await;
    back(
        "/console/apis",
        &answer,
        &format!("API {name} is now {lifecycle}."),
    )
}

// ---- consumers and keys -----------------------------------------------------

pub async fn consumers(
    State(console): State<Console>,
    Query(notice): Query<Flash>,
    headers: HeaderMap,
) -> Response<Body> {
    let (viewer, answer) = match list(&console, &headers, "/admin/v1/consumers").await {
        Ok(answer) => answer,
        Err(response) => return response,
    };
    let (csrf, set) = csrf_token(&headers);
    let body = html! {
        h1 { "Consumers" }
        (flash(&notice))
        @if !answer.status.is_success() { (refused(answer.status, &answer.body)) }
        section.panel {
            table id="consumers" {
                thead { tr { th { "Name" } th { "Team" } th { "Keys" } th { "" } } }
                tbody {
                    @for c in items(&answer.body) {
                        @let name = text(c, "name");
                        tr data-consumer=(name) {
                            td { (name) }
                            td { (c["team"].as_str().unwrap_or("")) }
                            td {
                                @for k in c["keys"].as_array().cloned().unwrap_or_default() {
                                    span.key {
                                        (k["id"].as_str().unwrap_or("key"))
                                        @if let Some(expires) = k["expires"].as_str() { " (until " (expires) ")" }
                                    }
                                    form.inline method="post" action=(format!("/console/consumers/{name}/keys/{}/rotate", k["id"].as_str().unwrap_or(""))) {
                                        (hidden_csrf(&csrf))
                                        button.small type="submit" { "Rotate" }
                                    }
                                    form.inline method="post" action=(format!("/console/consumers/{name}/keys/{}/revoke", k["id"].as_str().unwrap_or(""))) {
                                        (hidden_csrf(&csrf))
                                        button.small type="submit" { "Revoke" }
                                    }
                                    " "
                                }
                            }
                            td {
                                form.inline method="post" action=(format!("/console/consumers/{name}/keys")) {
                                    (hidden_csrf(&csrf))
                                    input type="date" name="expires" aria-label="Expires on (optional)";
                                    button type="submit" { "Issue a key" }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if viewer.writes() {
            section.panel {
                h2 { "New consumer" }
                form.inline id="new-consumer" method="post" action="/console/consumers" {
                    (hidden_csrf(&csrf))
                    label { "Name " input type="text" name="name" required; }
                    label { "Team " input type="text" name="team"; }
                    button type="submit" { "Create consumer" }
                }
            }
        }
    };
    page(
        layout("Consumers", &csrf, "/console/consumers", &viewer, body),
        set,
    )
}

pub async fn create_consumer(
    State(console): State<Console>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let Some(fields) = posted(&headers, &body) else {
        return expired();
    };
    let name = field(&fields, "name").unwrap_or_default();
    let mut consumer = json!({ "name": name });
    if let Some(team) = filled(&fields, "team") {
        consumer["team"] = json!(team);
    }
    let answer = console
        .call(
            Method::POST,
            "/admin/v1/consumers",
            &headers,
            None,
            Some(consumer),
        )
        .await;
    back(
        "/console/consumers",
        &answer,
        &format!("Consumer {name} created."),
    )
}

/// Issues a key and shows it once, on a page that is never cached.
pub async fn issue_key(
    State(console): State<Console>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let Some(fields) = posted(&headers, &body) else {
        return expired();
    };
    let mut request = json!({});
    if let Some(day) = filled(&fields, "expires") {
        request["expires"] = json!(format!("{day}T00:00:00Z"));
    }
    new_key(&console, &headers, &name, request, None).await
}

/// Rotation: a new key first (shown once), then the old one revoked, so
/// that the consumer is never without a working key.
pub async fn rotate_key(
    State(console): State<Console>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    if posted(&headers, &body).is_none() {
        return expired();
    }
    new_key(&console, &headers, &name, json!({}), Some(&id)).await
}

/// Issues a key for `name` and shows it once, on a page that is never
/// cached; then revokes `replacing`, if given.
async fn new_key(
    console: &Console,
    headers: &HeaderMap,
    name: &str,
    request: Value,
    replacing: Option<&str>,
) -> Response<Body> {
    let viewer = match viewer(console, headers).await {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    let path = format!("/admin/v1/consumers/{}/keys", encode(name));
    let answer = console
        .call(Method::POST, &path, headers, None, Some(request))
        .await;
    if !answer.status.is_success() {
        return back("/console/consumers", &answer, "");
    }
    let revoked = match replacing {
        Some(old) => {
            let path = format!("/admin/v1/consumers/{}/keys/{}", encode(name), encode(old));
            let answer = console
                .call(Method::DELETE, &path, headers, None, None)
                .await;
            Some((old, answer.status.is_success()))
        }
        None => None,
    };
    let (csrf, set) = csrf_token(headers);
    let key = answer.body["key"].as_str().unwrap_or_default();
    let body = html! {
        h1 { "A new key for " (name) }
        section.panel {
            p { "Copy it now: it is shown once and cannot be shown again." }
            p.secret {
                input id="new-key" type="text" readonly value=(key) aria-label="The new key";
                button type="button" id="copy-key" data-copy="new-key" { "Copy" }
            }
            @if let Some(expires) = answer.body["expires"].as_str() {
                p { "It expires " (expires) "." }
            }
            @match revoked {
                Some((old, true)) => p.notice { "Key " (old) " is revoked: it no longer works." },
                Some((old, false)) => p.error { "Key " (old) " could not be revoked: revoke it from the consumers page." },
                None => {},
            }
            p { a href="/console/consumers" { "Back to the consumers" } }
        }
        script src="/console/console.js" {}
    };
    page(
        layout("New key", &csrf, "/console/consumers", &viewer, body),
        set,
    )
}

pub async fn revoke_key(
    State(console): State<Console>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    if posted(&headers, &body).is_none() {
        return expired();
    }
    let path = format!("/admin/v1/consumers/{}/keys/{}", encode(&name), encode(&id));
    let answer = console
        .call(Method::DELETE, &path, &headers, None, None)
        .await;
    back(
        "/console/consumers",
        &answer,
        &format!("Key {id} of {name} revoked."),
    )
}

// ---- subscriptions ----------------------------------------------------------

pub async fn subscriptions(
    State(console): State<Console>,
    Query(notice): Query<Flash>,
    headers: HeaderMap,
) -> Response<Body> {
    let (viewer, answer) = match list(&console, &headers, "/admin/v1/subscriptions").await {
        Ok(answer) => answer,
        Err(response) => return response,
    };
    let (csrf, set) = csrf_token(&headers);
    let all = items(&answer.body);
    let pending: Vec<&Value> = all.iter().filter(|s| s["status"] == "pending").collect();
    let body = html! {
        h1 { "Subscriptions" }
        (flash(&notice))
        @if !answer.status.is_success() { (refused(answer.status, &answer.body)) }
        section.panel id="approval-queue" {
            h2 { "Waiting for approval" }
            @if pending.is_empty() {
                p.muted { "Nothing waits." }
            } @else {
                table {
                    thead { tr { th { "Consumer" } th { "Service" } th { "Reason" } th { "Decision" } } }
                    tbody {
                        @for s in &pending {
                            @let id = subscription_id(s);
                            tr data-subscription=(id) {
                                td { (text(s, "consumer")) }
                                td { (text(s, "service")) }
                                td { (s["reason"].as_str().unwrap_or("")) }
                                td {
                                    @if viewer.manages() {
                                    form.inline method="post" action=(format!("/console/subscriptions/{id}/decide")) {
                                        (hidden_csrf(&csrf))
                                        input type="text" name="comment" placeholder="comment" aria-label="Comment";
                                        button type="submit" name="action" value="approve" { "Approve" }
                                        button type="submit" name="action" value="reject" { "Reject" }
                                    }
                                    } @else {
                                        span.muted { "waits for a team admin" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section.panel {
            h2 { "All subscriptions" }
            table id="subscriptions" {
                thead { tr { th { "Consumer" } th { "Service" } th { "Status" } th { "Comment" } } }
                tbody {
                    @for s in all {
                        tr {
                            td { (text(s, "consumer")) }
                            td { (text(s, "service")) }
                            td class=(format!("sub-{}", text(s, "status"))) { (text(s, "status")) }
                            td { (s["comment"].as_str().unwrap_or("")) }
                        }
                    }
                }
            }
        }
        @if viewer.writes() {
            section.panel {
                h2 { "Request a subscription" }
                form.inline id="request-subscription" method="post" action="/console/subscriptions" {
                    (hidden_csrf(&csrf))
                    label { "Consumer " input type="text" name="consumer" required; }
                    label { "Service " input type="text" name="service" required; }
                    label { "Reason " input type="text" name="reason" required; }
                    button type="submit" { "Request" }
                }
            }
        }
    };
    page(
        layout(
            "Subscriptions",
            &csrf,
            "/console/subscriptions",
            &viewer,
            body,
        ),
        set,
    )
}

fn subscription_id(s: &Value) -> String {
    match s["id"].as_str() {
        Some(id) => id.to_string(),
        None => format!("{}:{}", text(s, "consumer"), text(s, "service")),
    }
}

pub async fn request_subscription(
    State(console): State<Console>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let Some(fields) = posted(&headers, &body) else {
        return expired();
    };
    let subscription = json!({
        "consumer": field(&fields, "consumer").unwrap_or_default(),
        "service": field(&fields, "service").unwrap_or_default(),
        "status": "pending",
        "reason": field(&fields, "reason").unwrap_or_default(),
    });
    let answer = console
        .call(
            Method::POST,
            "/admin/v1/subscriptions",
            &headers,
            None,
            Some(subscription),
        )
        .await;
    back(
        "/console/subscriptions",
        &answer,
        "Subscription requested: it waits for approval.",
    )
}

pub async fn decide_subscription(
    State(console): State<Console>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let Some(fields) = posted(&headers, &body) else {
        return expired();
    };
    let action = match field(&fields, "action") {
        Some("approve") => "approve",
        Some("reject") => "reject",
        _ => "revoke",
    };
    let mut decision = json!({});
    if let Some(comment) = filled(&fields, "comment") {
        decision["comment"] = json!(comment);
    }
    let path = format!("/admin/v1/subscriptions/{}/{action}", encode(&id));
    let answer = console
        .call(Method::POST, &path, &headers, None, Some(decision))
        .await;
    back(
        "/console/subscriptions",
        &answer,
        &format!("Subscription {id}: {action}d."),
    )
}

// ---- audit ------------------------------------------------------------------

/// The audit trail: every change, newest first (super_admins and auditors).
pub async fn audit(State(console): State<Console>, headers: HeaderMap) -> Response<Body> {
    let (viewer, answer) = match list(&console, &headers, "/admin/v1/audit?limit=200").await {
        Ok(answer) => answer,
        Err(response) => return response,
    };
    let (csrf, set) = csrf_token(&headers);
    let body = html! {
        h1 { "Audit trail" }
        @if !answer.status.is_success() {
            (refused(answer.status, &answer.body))
        } @else {
            section.panel {
                table id="audit" {
                    thead { tr { th { "Time" } th { "Actor" } th { "Action" } th { "Kind" } th { "Name" } th { "Revision" } } }
                    tbody {
                        @for e in items(&answer.body) {
                            tr {
                                td { (text(e, "at")) }
                                td { (text(e, "actor")) }
                                td { (text(e, "action")) }
                                td { (text(e, "kind")) }
                                td { (text(e, "name")) }
                                td { (e["revision"].as_i64().map(|r| r.to_string()).unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
    };
    page(layout("Audit", &csrf, "/console/audit", &viewer, body), set)
}

// ---- logs -------------------------------------------------------------------

/// The filters the logs explorer passes on to `GET /admin/v1/logs`.
const LOG_FILTERS: [&str; 8] = [
    "from",
    "to",
    "api",
    "consumer",
    "status",
    "outcome",
    "request_id",
    "cursor",
];

fn log_query(query: &[(String, String)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in query {
        if LOG_FILTERS.contains(&name.as_str()) && !value.is_empty() {
            serializer.append_pair(name, value);
        }
    }
    serializer.finish()
}

pub async fn logs(
    State(console): State<Console>,
    headers: HeaderMap,
    raw: axum::extract::RawQuery,
) -> Response<Body> {
    let query: Vec<(String, String)> = raw
        .0
        .as_deref()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let filters = log_query(&query);
    let (viewer, answer) =
        match list(&console, &headers, &format!("/admin/v1/logs?{filters}")).await {
            Ok(answer) => answer,
            Err(response) => return response,
        };
    let value = |name: &str| {
        query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (csrf, set) = csrf_token(&headers);
    let body = html! {
        h1 { "Logs" }
        form.inline id="log-filters" method="get" action="/console/logs" {
            @for name in ["api", "consumer", "status", "outcome", "request_id", "from", "to"] {
                label { (name) " " input type="text" name=(name) value=(value(name)); }
            }
            button type="submit" { "Filter" }
        }
        p {
            "Export this selection: "
            a href=(format!("/console/logs/export?format=csv&{filters}")) { "CSV" } " · "
            a href=(format!("/console/logs/export?format=jsonl&{filters}")) { "JSON lines" }
        }
        @if !answer.status.is_success() {
            (refused(answer.status, &answer.body))
        } @else {
            section.panel {
                table id="logs" {
                    thead { tr { th { "Time" } th { "Method" } th { "Path" } th { "API" } th { "Consumer" } th { "Status" } th { "Outcome" } th { "ms" } } }
                    tbody {
                        @for r in items(&answer.body) {
                            tr {
                                td { a href=(format!("/console/logs/{}", text(r, "request_id"))) { (text(r, "ts")) } }
                                td { (text(r, "method")) }
                                td { code { (text(r, "path")) } }
                                td { (r["api"].as_str().unwrap_or("")) }
                                td { (r["consumer"].as_str().unwrap_or("")) }
                                td { (r["status"].as_u64().unwrap_or(0)) }
                                td { (text(r, "outcome")) (r["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default()) }
                                td { (format!("{:.1}", r["latency_ms"].as_f64().unwrap_or(0.0))) }
                            }
                        }
                    }
                }
                @if let Some(older) = older_page(&query, answer.body["next"].as_str()) {
                    p { a href=(older) { "Older records →" } }
                }
            }
        }
    };
    page(layout("Logs", &csrf, "/console/logs", &viewer, body), set)
}

/// The link to the page after this one, when there is one.
fn older_page(query: &[(String, String)], next: Option<&str>) -> Option<String> {
    let next = next?;
    let mut more: Vec<(String, String)> = query
        .iter()
        .filter(|(n, _)| n != "cursor")
        .cloned()
        .collect();
    more.push(("cursor".to_string(), next.to_string()));
    Some(format!("/console/logs?{}", log_query(&more)))
}

/// One request's records, every field.
pub async fn log_detail(
    State(console): State<Console>,
    Path(request_id): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("request_id", &request_id)
        .finish();
    let (viewer, answer) = match list(&console, &headers, &format!("/admin/v1/logs?{query}")).await
    {
        Ok(answer) => answer,
        Err(response) => return response,
    };
    let (csrf, set) = csrf_token(&headers);
    let body = html! {
        h1 { "Request " code { (request_id) } }
        @if !answer.status.is_success() { (refused(answer.status, &answer.body)) }
        @for r in items(&answer.body) {
            section.panel {
                table.fields {
                    tbody {
                        @if let Some(fields) = r.as_object() {
                            @for (name, value) in fields {
                                tr { th { (name) } td { code { (match value { Value::String(s) => s.clone(), other => other.to_string() }) } } }
                            }
                        }
                    }
                }
            }
        }
        p { a href="/console/logs" { "← All logs" } }
    };
    page(
        layout("Request", &csrf, "/console/logs", &viewer, body),
        set,
    )
}

/// The selection as CSV or JSON lines (up to 1,000 records, the newest).
pub async fn export_logs(
    State(console): State<Console>,
    headers: HeaderMap,
    raw: axum::extract::RawQuery,
) -> Response<Body> {
    let query: Vec<(String, String)> = raw
        .0
        .as_deref()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let csv = query.iter().any(|(n, v)| n == "format" && v == "csv");
    let (_, answer) = match list(
        &console,
        &headers,
        &format!("/admin/v1/logs?limit=1000&{}", log_query(&query)),
    )
    .await
    {
        Ok(answer) => answer,
        Err(response) => return response,
    };
    if !answer.status.is_success() {
        return (answer.status, answer.body.to_string()).into_response();
    }
    let records = items(&answer.body);
    let (content_type, file, body) = if csv {
        const COLUMNS: [&str; 10] = [
            "ts",
            "request_id",
            "method",
            "path",
            "api",
            "consumer",
            "status",
            "outcome",
            "reason",
            "latency_ms",
        ];
        let mut out = COLUMNS.join(",");
        out.push('\n');
        for r in records {
            let cells: Vec<String> = COLUMNS
                .iter()
                .map(|c| match &r[*c] {
                    Value::Null => String::new(),
                    Value::String(s) => csv_cell(s),
                    other => other.to_string(),
                })
                .collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        ("text/csv; charset=utf-8", "logs.csv", out)
    } else {
        let mut out = String::new();
        for r in records {
            out.push_str(&r.to_string());
            out.push('\n');
        }
        ("application/x-ndjson", "logs.jsonl", out)
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")).expect("a header value"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A CSV cell: quoted when it holds a comma, a quote or a line break; a
/// leading `=`, `+`, `-` or `@` is prefixed with `'` so that a spreadsheet
/// does not run it as a formula.
fn csv_cell(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_string()
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

/// A path segment, percent-encoded.
pub(super) fn encode(segment: &str) -> String {
    form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=SUM(A1)"), "'=SUM(A1)");
    }

    #[test]
    fn log_filters_pass_only_known_parameters() {
        let query = vec![
            ("api".to_string(), "orders".to_string()),
            ("evil".to_string(), "x".to_string()),
            ("status".to_string(), String::new()),
        ];
        assert_eq!(log_query(&query), "api=orders");
    }
}
