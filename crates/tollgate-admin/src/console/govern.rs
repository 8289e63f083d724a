//! The console's governance pages: AI providers and models (keys masked,
//! never shown again), users and teams, compliance findings, and blocks for
//! incident response. Writes go through the admin API with the viewer's
//! session, like every other page.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, Response};
use bytes::Bytes;
use maud::{html, Markup};
use serde_json::{json, Value};

use super::manage::{back, flash, list, text, Flash};
use super::pages::{layout, refused};
use super::{csrf_token, expired, field, filled, items, page, posted, Console};

fn hidden_csrf(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

// ---- AI providers and models -----------------------------------------------

pub async fn ai(
    State(console): State<Console>,
    Query(notice): Query<Flash>,
    headers: HeaderMap,
) -> Response<Body> {
    let (viewer, providers) = match list(&console, &headers, "/admin/v1/ai/providers").await {
        Ok(answer) => answer,
        Err(response) => return response,
    };
    let models = console
        .call(Method::GET, "/admin/v1/ai/models", &headers, None, None)
        .await;
    let (csrf, set) = csrf_token(&headers);
    let body = html! {
        h1 { "AI providers and models" }
        (flash(&notice))
        @if !providers.status.is_success() { (refused(providers.status, &providers.body)) }
        section.panel {
            h2 { "Providers" }
            table id="ai-providers" {
                thead { tr { th { "Name" } th { "Kind" } th { "Base URL" } th { "Keys" } } }
                tbody {
                    @for p in items(&providers.body) {
                        tr {
                            td { (text(p, "name")) }
                            td { (text(p, "kind")) }
                            td { (p["base_url"].as_str().unwrap_or("default")) }
                            // Never the key: the API redacts it, and the page
                            // shows only how many there are.
                            td { @for _ in p["keys"].as_array().cloned().unwrap_or_default() { span.masked { "••••••••" } " " } }
                        }
                    }
                }
            }
        }
        section.panel {
            h2 { "Models" }
            table id="ai-models" {
                thead { tr { th { "Name" } th { "Targets" } th { "Fallbacks" } } }
                tbody {
                    @for m in items(&models.body) {
                        tr {
                            td { (text(m, "name")) }
                            td { (targets(&m["targets"])) }
                            td { (targets(&m["fallbacks"])) }
                        }
                    }
                }
            }
        }
        @if viewer.is_super_admin() {
            section.panel {
                h2 { "New provider" }
                form.inline id="new-provider" method="post" action="/console/ai/providers" {
                    (hidden_csrf(&csrf))
                    label { "Name " input type="text" name="name" required; }
                    label { "Kind "
                        select name="kind" {
                            @for kind in ["openai", "anthropic", "gemini", "mistral", "azure_openai", "openai_compatible"] {
                                option { (kind) }
                            }
                        }
                    }
                    label { "Base URL " input type="url" name="base_url"; }
                    label { "Key " input type="password" name="key" autocomplete="off" required; }
                    button type="submit" { "Add provider" }
                }
                p.muted { "The key is sealed at rest and never shown again." }
            }
        }
    };
    page(layout("AI", &csrf, "/console/ai", &viewer, body), set)
}

fn targets(list: &Value) -> String {
    list.as_array()
        .map(|targets| {
            targets
                .iter()
                .map(|t| format!("{}/{}", text(t, "provider"), text(t, "model")))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

pub async fn create_provider(
    State(console): State<Console>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let Some(fields) = posted(&headers, &body) else {
        return expired();
    };
    let name = field(&fields, "name").unwrap_or_default();
    let mut provider = json!({
        "name": name,
        "kind": field(&fields, "kind").unwrap_or_default(),
        "keys": [field(&fields, "key").unwrap_or_default()],
    });
    if let Some(url) = filled(&fields, "base_url") {
        provider["base_url"] = json!(url);
    }
    let answer = console
        .call(
            Method::POST,
            "/admin/v1/ai/providers",
            &headers,
            None,
            Some(provider),
        )
        .await;
    back("/console/ai", &answer, &format!("Provider {name} added."))
}

// ---- users and teams --------------------------------------------------------

pub async fn users(
    State(console): State<Console>,
    Query(notice): Query<Flash>,
    headers: HeaderMap,
) -> Response<Body> {
    let (viewer, users) = match list(&console, &headers, "/admin/v1/users").await {
        Ok(answer) => answer,
        Err(response) => return response,
    };
    let teams = console
        .call(Method::GET, "/admin/v1/teams", &headers, None, None)
        .await;
    let (csrf, set) = csrf_token(&headers);
    let body = html! {
        h1 { "Users and teams" }
        (flash(&notice))
        @if !users.status.is_success() { (refused(users.status, &users.body)) }
        section.panel {
            h2 { "Users" }
            table id="users" {
                thead { tr { th { "Name" } th { "Memberships" } } }
                tbody {
                    @for u in items(&users.body) {
                        tr {
                            td { (text(u, "name")) }
                            td {
                                @for m in u["memberships"].as_array().cloned().unwrap_or_default() {
                                    span.membership { (m["role"].as_str().unwrap_or("")) " in " (m["team"].as_str().unwrap_or("*")) } " "
                                }
                            }
                        }
                    }
                }
            }
        }
        section.panel {
            h2 { "Teams" }
            ul id="teams" { @for t in items(&teams.body) { li { (text(t, "name")) } } }
        }
        @if viewer.manages() {
            section.panel {
                h2 { "New user" }
                form.inline id="new-user" method="post" action="/console/users" {
                    (hidden_csrf(&csrf))
                    label { "Name " input type="text" name="name" required; }
                    label { "Password " input type="password" name="password" autocomplete="new-password" required minlength="12"; }
                    label { "Team " input type="text" name="team" placeholder="* for a global role"; }
                    label { "Role "
                        select name="role" {
                            @for role in ["developer", "team_admin", "auditor", "super_admin"] { option { (role) } }
                        }
                    }
                    button type="submit" { "Create user" }
                }
            }
        }
        @if viewer.is_super_admin() {
            section.panel {
                h2 { "New team" }
                form.inline id="new-team" method="post" action="/console/teams" {
                    (hidden_csrf(&csrf))
                    label { "Name " input type="text" name="name" required; }
                    button type="submit" { "Create team" }
                }
            }
        }
    };
    page(layout("Users", &csrf, "/console/users", &viewer, body), set)
}

pub async fn create_user(
    State(console): State<Console>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let Some(fields) = posted(&headers, &body) else {
        return expired();
    };
    let name = field(&fields, "name").unwrap_or_default();
    let role = field(&fields, "role").unwrap_or("developer");
    let team = field(&fields, "team")
        .filter(|t| !t.is_empty())
        .unwrap_or("*");
    let user = json!({
        "name": name,
        "password": field(&fields, "password").unwrap_or_default(),
        "memberships": [{ "team": team, "role": role }],
    });
    let answer = console
        .call(Method::POST, "/admin/v1/users", &headers, None, Some(user))
        .await;
    back("/console/users", &answer, &format!("User {name} created."))
}

pub async fn create_team(
    State(console): State<Console>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let Some(fields) = posted(&headers, &body) else {
        return expired();
    };
    let name = field(&fields, "name").unwrap_or_default();
    let answer = console
        .call(
            Method::POST,
            "/admin/v1/teams",
            &headers,
            None,
            Some(json!({ "name": name })),
        )
        .await;
    back("/console/users", &answer, &format!("Team {name} created."))
}

// ---- compliance -------------------------------------------------------------

pub async fn compliance(State(console): State<Console>, headers: HeaderMap) -> Response<Body> {
    let (viewer, report) = match list(&console, &headers, "/admin/v1/compliance").await {
        Ok(answer) => answer,
        Err(response) => return response,
    };
    let (csrf, set) = csrf_token(&headers);
    let findings = report.body["findings"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let body = html! {
        h1 { "Compliance" }
        @if !report.status.is_success() {
            (refused(report.status, &report.body))
        } @else {
            section.cards {
                @for severity in ["critical", "high", "medium", "low"] {
                    div.card {
                        div.label { (severity) }
                        div.value { (report.body["counts"][severity].as_u64().unwrap_or(0)) }
                    }
                }
            }
            section.panel {
                @if findings.is_empty() {
                    p.muted { "No findings." }
                } @else {
                    table id="findings" {
                        thead { tr { th { "Severity" } th { "Finding" } th { "Resource" } th { "What" } } }
                        tbody {
                            @for f in &findings {
                                tr {
                                    td class=(format!("severity-{}", text(f, "severity"))) { (text(f, "severity")) }
                                    td { code { (text(f, "id")) } }
                                    td { (text(f, "resource")) }
                                    td { (text(f, "message")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(
        layout("Compliance", &csrf, "/console/compliance", &viewer, body),
        set,
    )
}

// ---- blocks -----------------------------------------------------------------

pub async fn blocks(
    State(console): State<Console>,
    Query(notice): Query<Flash>,
    headers: HeaderMap,
) -> Response<Body> {
    let (viewer, answer) = match list(&console, &headers, "/admin/v1/blocks").await {
        Ok(answer) => answer,
        Err(response) => return response,
    };
    let (csrf, set) = csrf_token(&headers);
    let body = html! {
        h1 { "Blocks" }
        p.muted { "Incident response: every request of a consumer, a key or an address is refused (403 blocked) while its block lasts." }
        (flash(&notice))
        @if !answer.status.is_success() { (refused(answer.status, &answer.body)) }
        section.panel {
            table id="blocks" {
                thead { tr { th { "Id" } th { "Consumer" } th { "Key" } th { "Address" } th { "Reason" } th { "Until" } th { "" } } }
                tbody {
                    @for b in items(&answer.body) {
                        @let id = text(b, "id");
                        tr {
                            td { (id) }
                            td { (b["consumer"].as_str().unwrap_or("")) }
                            td { (b["key_id"].as_str().unwrap_or("")) }
                            td { (b["ip"].as_str().unwrap_or("")) }
                            td { (b["reason"].as_str().unwrap_or("")) }
                            td { (b["expires"].as_str().unwrap_or("until lifted")) }
                            td {
                                @if viewer.is_super_admin() {
                                    form.inline method="post" action=(format!("/console/blocks/{id}/lift")) {
                                        (hidden_csrf(&csrf))
                                        button.small type="submit" { "Lift" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if viewer.is_super_admin() {
            section.panel {
                h2 { "Block" }
                form.inline id="new-block" method="post" action="/console/blocks" {
                    (hidden_csrf(&csrf))
                    label { "Id " input type="text" name="id" required; }
                    label { "Consumer " input type="text" name="consumer"; }
                    label { "Address " input type="text" name="ip" placeholder="203.0.113.7/32"; }
                    label { "Reason " input type="text" name="reason" required; }
                    label { input type="checkbox" name="confirm" value="yes" required; " confirm" }
                    button type="submit" { "Block" }
                }
            }
        }
    };
    page(
        layout("Blocks", &csrf, "/console/blocks", &viewer, body),
        set,
    )
}

pub async fn create_block(
    State(console): State<Console>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let Some(fields) = posted(&headers, &body) else {
        return expired();
    };
    if field(&fields, "confirm") != Some("yes") {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("error", "Tick confirm to block.")
            .finish();
        return axum::response::IntoResponse::into_response(axum::response::Redirect::to(
            &format!("/console/blocks?{query}"),
        ));
    }
    let id = field(&fields, "id").unwrap_or_default();
    let mut block = json!({ "id": id, "reason": field(&fields, "reason").unwrap_or_default() });
    if let Some(consumer) = filled(&fields, "consumer") {
        block["consumer"] = json!(consumer);
    }
    if let Some(ip) = filled(&fields, "ip") {
        block["ip"] = json!(ip);
    }
    let answer = console
        .call(
            Method::POST,
            "/admin/v1/blocks",
            &headers,
            None,
            Some(block),
        )
        .await;
    back("/console/blocks", &answer, &format!("Block {id} in force."))
}

pub async fn lift_block(
    State(console): State<Console>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    if posted(&headers, &body).is_none() {
        return expired();
    }
    let path = format!("/admin/v1/blocks/{}", super::manage::encode(&id));
    let answer = console
        .call(Method::DELETE, &path, &headers, None, None)
        .await;
    back("/console/blocks", &answer, &format!("Block {id} lifted."))
}
