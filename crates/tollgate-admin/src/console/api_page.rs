//! One API's page: its settings, its versions side by side (the APIs of its
//! service), and its policies editor — YAML in a text area, replaced with
//! `PUT` (`If-Match` its ETag) and, when the admin API refuses it, shown
//! again with each error at the field it names. And the OpenAPI import.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use maud::{html, Markup};
use serde_json::{json, Value};

use super::manage::{encode, list, text};
use super::pages::{layout, refused};
use super::{csrf_token, expired, field, page, posted, viewer, Console, Viewer};

/// The page for `name`, with `editor` as the text area's content and
/// `errors` (field path, message) under it when a change was refused.
async fn render(
    console: &Console,
    headers: &HeaderMap,
    viewer: &Viewer,
    name: &str,
    editor: Option<&str>,
    errors: &[(String, String)],
    notice: Option<&str>,
) -> Response<Body> {
    let path = format!("/admin/v1/apis/{}", encode(name));
    let api = console.call(Method::GET, &path, headers, None, None).await;
    let apis = console
        .call(Method::GET, "/admin/v1/apis", headers, None, None)
        .await;
    let (csrf, set) = csrf_token(headers);
    let service = api.body["service"].as_str().unwrap_or_default();
    let mut versions: Vec<Value> = apis.body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["service"] == service)
        .collect();
    versions.sort_by(|a, b| text(a, "version").cmp(text(b, "version")));
    let policies_yaml = match editor {
        Some(text) => text.to_string(),
        None => match &api.body["policies"] {
            Value::Null => String::new(),
            policies => serde_yaml::to_string(policies).unwrap_or_default(),
        },
    };
    let body = html! {
        h1 { "API " (name) }
        @if let Some(notice) = notice { p.notice role="status" { (notice) } }
        @if !api.status.is_success() {
            (refused(api.status, &api.body))
        } @else {
            section.panel id="versions" {
                h2 { "Versions of service " (service) }
                (side_by_side(&versions, name))
            }
            section.panel id="policies" {
                h2 { "Policies" }
                @if !errors.is_empty() {
                    (refused_change("policy-errors", errors))
                }
                @if viewer.manages() {
                    form id="policies-editor" method="post" action=(format!("/console/apis/{name}/policies")) {
                        input type="hidden" name="csrf" value=(csrf);
                        textarea name="policies" rows="14" spellcheck="false" aria-label="Policies (YAML)" { (policies_yaml) }
                        p { button type="submit" { "Save policies" } " " span.muted { "YAML, as under " code { "policies:" } " in the configuration file." } }
                    }
                } @else {
                    pre { (policies_yaml) }
                }
            }
        }
        @if viewer.manages() {
            p { a href=(format!("/console/edit/apis/{name}")) { "Edit the whole API as YAML →" } }
        }
        p { a href="/console/apis" { "← All APIs" } }
    };
    let mut response = page(
        layout(&format!("API {name}"), &csrf, "/console/apis", viewer, body),
        set,
    );
    if !errors.is_empty() {
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    response
}

/// How one row of the versions table reads an API.
type Setting = fn(&Value) -> String;

/// The versions of a service as columns, one row per setting.
fn side_by_side(versions: &[Value], current: &str) -> Markup {
    let rows: [(&str, Setting); 7] = [
        ("Version", |a| {
            a["version"].as_str().unwrap_or("–").to_string()
        }),
        ("Lifecycle", |a| {
            a["lifecycle"].as_str().unwrap_or("published").to_string()
        }),
        ("Paths", |a| {
            a["match"]["paths"]
                .as_array()
                .map(|p| {
                    p.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default()
        }),
        ("Sunset", |a| {
            a["sunset"].as_str().unwrap_or("–").to_string()
        }),
        ("Successor", |a| {
            a["successor"].as_str().unwrap_or("–").to_string()
        }),
        ("Auth", |a| {
            a["policies"]["auth"]["methods"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| "–".to_string())
        }),
        ("Rate limits", |a| {
            a["policies"]["rate_limit"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .map(|l| format!("{}/{}", l["limit"], l["window"].as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| "–".to_string())
        }),
    ];
    html! {
        table.versions {
            thead {
                tr {
                    th {}
                    @for v in versions {
                        @let name = text(v, "name");
                        th class=(if name == current { "current" } else { "" }) {
                            a href=(format!("/console/apis/{name}")) { (name) }
                        }
                    }
                }
            }
            tbody {
                @for (label, value) in rows {
                    tr { th { (label) } @for v in versions { td { (value(v)) } } }
                }
            }
        }
    }
}

pub async fn api(
    State(console): State<Console>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    let viewer = match viewer(&console, &headers).await {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    render(&console, &headers, &viewer, &name, None, &[], None).await
}

/// Replaces the API's policies with the editor's YAML.
pub async fn save_policies(
    State(console): State<Console>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let Some(fields) = posted(&headers, &body) else {
        return expired();
    };
    let viewer = match viewer(&console, &headers).await {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    let yaml = field(&fields, "policies").unwrap_or_default().to_string();
    let policies: Value = if yaml.trim().is_empty() {
        json!({})
    } else {
        match serde_yaml::from_str(&yaml) {
            Ok(value) => value,
            Err(error) => {
                let errors = [not_yaml("policies", &error)];
                return render(
                    &console,
                    &headers,
                    &viewer,
                    &name,
                    Some(&yaml),
                    &errors,
                    None,
                )
                .await;
            }
        }
    };
    let path = format!("/admin/v1/apis/{}", encode(&name));
    let current = console.call(Method::GET, &path, &headers, None, None).await;
    if !current.status.is_success() {
        let errors = [(String::from("api"), api_message(&current.body))];
        return render(
            &console,
            &headers,
            &viewer,
            &name,
            Some(&yaml),
            &errors,
            None,
        )
        .await;
    }
    let mut replacement = current.body.clone();
    replacement["policies"] = policies;
    let etag = current.headers.get(header::ETAG).cloned();
    let answer = console
        .call_if_match(Method::PUT, &path, &headers, replacement, etag)
        .await;
    if answer.status.is_success() {
        return render(
            &console,
            &headers,
            &viewer,
            &name,
            None,
            &[],
            Some("Policies saved."),
        )
        .await;
    }
    let errors = field_errors(&answer.body, "api");
    render(
        &console,
        &headers,
        &viewer,
        &name,
        Some(&yaml),
        &errors,
        None,
    )
    .await
}

/// A change the admin API refused: each error at the field it names.
fn refused_change(id: &str, errors: &[(String, String)]) -> Markup {
    html! {
        div.error role="alert" {
            p { "The change was refused; nothing was changed:" }
            ul id=(id) {
                @for (field, message) in errors {
                    li { code.field { (field) } ": " (message) }
                }
            }
        }
    }
}

/// The errors of a refused change, each with its field path; the API's
/// message at `fallback` when it names none.
fn field_errors(body: &Value, fallback: &str) -> Vec<(String, String)> {
    match body["error"]["errors"].as_array() {
        Some(list) => list
            .iter()
            .map(|e| (text(e, "path").to_string(), text(e, "message").to_string()))
            .collect(),
        None => vec![(fallback.to_string(), api_message(body))],
    }
}

/// Text that is not YAML, with the line it fails on.
fn not_yaml(what: &str, error: &serde_yaml::Error) -> (String, String) {
    let at = match error.location() {
        Some(location) => format!("{what}, line {}", location.line()),
        None => what.to_string(),
    };
    (at, format!("not YAML: {error}"))
}

fn api_message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or("the admin API refused the change")
        .to_string()
}

// ---- OpenAPI import -----------------------------------------------------------

pub async fn import_page(State(console): State<Console>, headers: HeaderMap) -> Response<Body> {
    let (viewer, services) = match list(&console, &headers, "/admin/v1/services").await {
        Ok(answer) => answer,
        Err(response) => return response,
    };
    render_import(&headers, &viewer, &services.body, None, "").await
}

async fn render_import(
    headers: &HeaderMap,
    viewer: &Viewer,
    services: &Value,
    result: Option<(StatusCode, &Value, bool)>,
    document: &str,
) -> Response<Body> {
    let (csrf, set) = csrf_token(headers);
    let body = html! {
        h1 { "Import an OpenAPI document" }
        @if let Some((status, answer, dry_run)) = result {
            @if status.is_success() {
                section.panel id="import-result" {
                    p.notice { (if dry_run { "Dry run: nothing was changed. It would make these changes:" } else { "Imported:" }) }
                    pre { (serde_json::to_string_pretty(answer).unwrap_or_default()) }
                }
            } @else {
                (refused(status, answer))
                @if let Some(list) = answer["error"]["errors"].as_array() {
                    ul id="import-errors" { @for e in list { li { code.field { (text(e, "path")) } ": " (text(e, "message")) } } }
                }
            }
        }
        @if viewer.manages() {
            form id="openapi-import" method="post" action="/console/import" {
                input type="hidden" name="csrf" value=(csrf);
                p {
                    label { "Service "
                        select name="service" {
                            @for s in services["items"].as_array().cloned().unwrap_or_default() {
                                option { (text(&s, "name")) }
                            }
                        }
                    }
                    " "
                    label { input type="checkbox" name="dry_run" value="true" checked; " dry run" }
                }
                textarea name="document" rows="16" spellcheck="false" aria-label="OpenAPI 3 document (YAML or JSON)" { (document) }
                p { button type="submit" { "Import" } }
            }
        } @else {
            p.muted { "Importing needs a team admin or a super admin." }
        }
    };
    page(layout("Import", &csrf, "/console/apis", viewer, body), set)
}

pub async fn import(
    State(console): State<Console>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let Some(fields) = posted(&headers, &body) else {
        return expired();
    };
    let (viewer, services) = match list(&console, &headers, "/admin/v1/services").await {
        Ok(answer) => answer,
        Err(response) => return response,
    };
    let document = field(&fields, "document").unwrap_or_default();
    // (Built apart: the serializer must not live across an await.)
    let query = {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("service", field(&fields, "service").unwrap_or_default());
        if field(&fields, "dry_run") == Some("true") {
            query.append_pair("dry_run", "true");
        }
        query.finish()
    };
    let answer = console
        .call_raw(
            Method::POST,
            &format!("/admin/v1/import/openapi?{query}"),
            &headers,
            Bytes::copy_from_slice(document.as_bytes()),
            HeaderValue::from_static("application/yaml"),
        )
        .await;
    let dry_run = field(&fields, "dry_run") == Some("true");
    render_import(
        &headers,
        &viewer,
        &services.body,
        Some((answer.status, &answer.body, dry_run)),
        document,
    )
    .await
}

// ---- any resource, as YAML ----------------------------------------------------

/// The kinds the YAML editor edits: the team-owned resources.
const EDITABLE: [&str; 3] = ["services", "apis", "consumers"];

/// A resource as YAML in a text area, replaced with `PUT` (`If-Match` its
/// ETag); a refused change comes back with each error at its field.
async fn render_editor(
    console: &Console,
    headers: &HeaderMap,
    viewer: &Viewer,
    kind: &str,
    name: &str,
    draft: Option<(&str, &[(String, String)])>,
    notice: Option<&str>,
) -> Response<Body> {
    let (editor, errors) = match draft {
        Some((text, errors)) => (Some(text), errors),
        None => (None, &[][..]),
    };
    let path = format!("/admin/v1/{kind}/{}", encode(name));
    let current = console.call(Method::GET, &path, headers, None, None).await;
    let (csrf, set) = csrf_token(headers);
    let yaml = match editor {
        Some(text) => text.to_string(),
        None => serde_yaml::to_string(&current.body).unwrap_or_default(),
    };
    let back_to = format!("/console/{kind}");
    let body = html! {
        h1 { "Edit " (kind.trim_end_matches('s')) " " (name) }
        @if let Some(notice) = notice { p.notice role="status" { (notice) } }
        @if !errors.is_empty() {
            (refused_change("edit-errors", errors))
        }
        @if !current.status.is_success() {
            (refused(current.status, &current.body))
        } @else {
            form id="resource-editor" method="post" action=(format!("/console/edit/{kind}/{name}")) {
                input type="hidden" name="csrf" value=(csrf);
                textarea name="yaml" rows="22" spellcheck="false" aria-label="The resource (YAML)" { (yaml) }
                p { button type="submit" { "Save" } " " span.muted { "The whole resource, as in the configuration file; secrets stay " code { "<redacted>" } " unless replaced." } }
            }
        }
        p { a href=(back_to) { "← Back" } }
    };
    let mut response = page(
        layout(&format!("Edit {name}"), &csrf, &back_to, viewer, body),
        set,
    );
    if !errors.is_empty() {
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    response
}

pub async fn edit(
    State(console): State<Console>,
    Path((kind, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response<Body> {
    if !EDITABLE.contains(&kind.as_str()) {
        return (StatusCode::NOT_FOUND, "not an editable kind").into_response();
    }
    let viewer = match viewer(&console, &headers).await {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    render_editor(&console, &headers, &viewer, &kind, &name, None, None).await
}

pub async fn save(
    State(console): State<Console>,
    Path((kind, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    if !EDITABLE.contains(&kind.as_str()) {
        return (StatusCode::NOT_FOUND, "not an editable kind").into_response();
    }
    let Some(fields) = posted(&headers, &body) else {
        return expired();
    };
    let viewer = match viewer(&console, &headers).await {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    let yaml = field(&fields, "yaml").unwrap_or_default().to_string();
    let replacement: Value = match serde_yaml::from_str(&yaml) {
        Ok(value) => value,
        Err(error) => {
            let errors = [not_yaml(&kind, &error)];
            return render_editor(
                &console,
                &headers,
                &viewer,
                &kind,
                &name,
                Some((&yaml, &errors[..])),
                None,
            )
            .await;
        }
    };
    let path = format!("/admin/v1/{kind}/{}", encode(&name));
    let current = console.call(Method::GET, &path, &headers, None, None).await;
    let etag = current.headers.get(header::ETAG).cloned();
    let answer = console
        .call_if_match(Method::PUT, &path, &headers, replacement, etag)
        .await;
    if answer.status.is_success() {
        return render_editor(
            &console,
            &headers,
            &viewer,
            &kind,
            &name,
            None,
            Some("Saved."),
        )
        .await;
    }
    let errors = field_errors(&answer.body, &kind);
    render_editor(
        &console,
        &headers,
        &viewer,
        &kind,
        &name,
        Some((&yaml, &errors[..])),
        None,
    )
    .await
}
