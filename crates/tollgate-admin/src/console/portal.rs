//! The developer portal: the catalogue of published APIs by team, each
//! with its documentation as the gateway knows it (paths, methods, version,
//! lifecycle, what it asks of a caller, its request schemas), a subscribe
//! form for the viewer's consumers, and the viewer's own consumers and
//! usage.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, Response};
use maud::{html, Markup};
use serde_json::Value;

use super::pages::{layout, refused};
use super::{csrf_token, items, page, viewer, Console};

#[derive(serde::Deserialize, Default)]
pub struct PortalQuery {
    /// Only the APIs of this team.
    team: Option<String>,
    /// Only the APIs with this tag.
    tag: Option<String>,
}

/// What an API asks of a caller, in words.
fn requirements(api: &Value, service: Option<&Value>) -> Vec<String> {
    let mut needs = Vec::new();
    if let Some(methods) = api["policies"]["auth"]["methods"].as_array() {
        let methods: Vec<&str> = methods.iter().filter_map(Value::as_str).collect();
        needs.push(format!("credentials: {}", methods.join(", ")));
    }
    if service.is_some_and(|s| s["subscription"] == "approval") {
        needs.push("a subscription approved by the API's team".to_string());
    }
    if let Some(limits) = api["policies"]["rate_limit"].as_array() {
        for limit in limits {
            needs.push(format!(
                "at most {} requests per {}",
                limit["limit"],
                limit["window"].as_str().unwrap_or("window")
            ));
        }
    }
    needs
}

/// An API's documentation: its OpenAPI description (`GET
/// /admin/v1/apis/<name>/openapi.json`) rendered — operations, the
/// credentials they take, their request body schema — with what the
/// gateway adds (subscription, rate limits).
fn documentation(api: &Value, service: Option<&Value>, openapi: &Value) -> Markup {
    let name = api["name"].as_str().unwrap_or_default();
    let schemes = &openapi["components"]["securitySchemes"];
    html! {
        dl.doc {
            @if let Some(description) = openapi["info"]["description"].as_str() {
                dt { "Note" } dd { (description) }
            }
            dt { "Version" } dd { (openapi["info"]["version"].as_str().unwrap_or("–")) }
            @if let Some(tags) = api["tags"].as_array().filter(|t| !t.is_empty()) {
                dt { "Tags" }
                dd { @for t in tags { span.membership { (t.as_str().unwrap_or("")) } " " } }
            }
            dt { "State" } dd { (api["lifecycle"].as_str().unwrap_or("published")) }
            dt { "Requires" }
            dd {
                @let needs = requirements(api, service);
                @if needs.is_empty() { "nothing: open" } @else {
                    ul { @for n in &needs { li { (n) } } }
                }
            }
        }
        @if let Some(paths) = openapi["paths"].as_object() {
            table.operations {
                thead { tr { th { "Method" } th { "Path" } th { "Credentials" } th { "Request body" } } }
                tbody {
                    @for (path, item) in paths {
                        @for (method, operation) in item.as_object().cloned().unwrap_or_default() {
                            tr {
                                td { code { (method.to_uppercase()) } }
                                td {
                                    code { (path) }
                                    @if let Some(d) = operation["description"].as_str() { br; span.muted { (d) } }
                                }
                                td {
                                    @for requirement in operation["security"].as_array().cloned().unwrap_or_default() {
                                        @for (scheme, _) in requirement.as_object().cloned().unwrap_or_default() {
                                            (scheme_text(&schemes[&scheme])) br;
                                        }
                                    }
                                }
                                td {
                                    @let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
                                    @if schema.is_null() { "–" } @else {
                                        details { summary { "JSON schema" } pre { (serde_json::to_string_pretty(schema).unwrap_or_default()) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        p { a href=(format!("/admin/v1/apis/{name}/openapi.json")) { "OpenAPI document (JSON)" } }
    }
}

/// A security scheme in words.
fn scheme_text(scheme: &Value) -> String {
    match (scheme["type"].as_str(), scheme["scheme"].as_str()) {
        (Some("apiKey"), _) => format!(
            "API key in the `{}` header",
            scheme["name"].as_str().unwrap_or("x-api-key")
        ),
        (Some("http"), Some("bearer")) => "a bearer token (JWT)".to_string(),
        (Some("http"), Some("basic")) => "Basic credentials".to_string(),
        (Some("mutualTLS"), _) => "a client certificate".to_string(),
        _ => "credentials".to_string(),
    }
}

pub async fn portal(
    State(console): State<Console>,
    Query(query): Query<PortalQuery>,
    headers: HeaderMap,
) -> Response<Body> {
    let viewer = match viewer(&console, &headers).await {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    let apis = console
        .call(Method::GET, "/admin/v1/apis", &headers, None, None)
        .await;
    let services = console
        .call(Method::GET, "/admin/v1/services", &headers, None, None)
        .await;
    let consumers = console
        .call(Method::GET, "/admin/v1/consumers", &headers, None, None)
        .await;
    let services: BTreeMap<String, Value> = items(&services.body)
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                s.clone(),
            )
        })
        .collect();
    // Published and deprecated APIs, by their service's team.
    let mut catalogue: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut tags: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for api in items(&apis.body).iter().cloned() {
        let state = api["lifecycle"].as_str().unwrap_or("published");
        if state != "published" && state != "deprecated" {
            continue;
        }
        let team = api["service"]
            .as_str()
            .and_then(|s| services.get(s))
            .and_then(|s| s["team"].as_str())
            .unwrap_or("(no team)")
            .to_string();
        for tag in api["tags"].as_array().into_iter().flatten() {
            if let Some(tag) = tag.as_str() {
                tags.insert(tag.to_string());
            }
        }
        if query.team.as_ref().is_some_and(|t| *t != team) {
            continue;
        }
        if let Some(tag) = &query.tag {
            let tagged = api["tags"]
                .as_array()
                .is_some_and(|tags| tags.iter().any(|t| t.as_str() == Some(tag)));
            if !tagged {
                continue;
            }
        }
        catalogue.entry(team).or_default().push(api);
    }
    // Each listed API's OpenAPI description, as the admin API makes it.
    let mut openapi: BTreeMap<String, Value> = BTreeMap::new();
    for api in catalogue.values().flatten() {
        let name = api["name"].as_str().unwrap_or_default().to_string();
        let path = format!(
            "/admin/v1/apis/{}/openapi.json",
            super::manage::encode(&name)
        );
        let answer = console.call(Method::GET, &path, &headers, None, None).await;
        openapi.insert(name, answer.body);
    }
    let mine = items(&consumers.body).to_vec();
    let usage = usage_of(&console, &headers, &viewer, &mine, &services).await;
    let (csrf, set) = csrf_token(&headers);
    let body = html! {
        h1 { "Developer portal" }
        @if !apis.status.is_success() { (refused(apis.status, &apis.body)) }
        nav.ranges aria-label="Teams" {
            a href="/console/portal" { "All" }
            @for team in catalogue.keys() {
                a href=(format!("/console/portal?team={team}")) { (team) }
            }
        }
        @if !tags.is_empty() {
            nav.ranges aria-label="Tags" {
                @for tag in &tags {
                    @let current = query.tag.as_deref() == Some(tag.as_str());
                    a class=(if current { "current" } else { "" }) href=(format!("/console/portal?tag={}", form_urlencoded::byte_serialize(tag.as_bytes()).collect::<String>())) { "#" (tag) }
                }
            }
        }
        @for (team, list) in &catalogue {
            section.panel data-team=(team) {
                h2 { "Team " (team) }
                @for api in list {
                    @let name = api["name"].as_str().unwrap_or("–");
                    @let service_name = api["service"].as_str().unwrap_or("");
                    @let service = services.get(service_name);
                    article.api id=(format!("api-{name}")) {
                        h3 { (name) }
                        (documentation(api, service, openapi.get(name).unwrap_or(&Value::Null)))
                        @if viewer.writes() && !mine.is_empty() {
                            form.inline method="post" action="/console/subscriptions" {
                                input type="hidden" name="csrf" value=(csrf);
                                input type="hidden" name="service" value=(service_name);
                                select name="consumer" aria-label="Consumer" {
                                    @for c in &mine { option { (c["name"].as_str().unwrap_or("")) } }
                                }
                                input type="text" name="reason" required placeholder="why you need it" aria-label="Reason";
                                button type="submit" { "Subscribe" }
                            }
                        }
                    }
                }
            }
        }
        @if catalogue.is_empty() {
            p.muted { "No published API yet." }
        }
        section.panel id="my-consumers" {
            h2 { "My consumers" }
            @if mine.is_empty() {
                p.muted { "None yet: create one on the " a href="/console/consumers" { "Consumers" } " page." }
            } @else {
                table id="my-usage" {
                    thead { tr { th { "Consumer" } th { "Keys" } th { "Requests (30 days)" } th { "AI tokens" } th { "AI spend" } th { "" } } }
                    tbody {
                        @for (c, u) in mine.iter().zip(&usage) {
                            @let name = c["name"].as_str().unwrap_or("");
                            tr data-consumer=(name) {
                                td { (name) }
                                td { (c["keys"].as_array().map_or(0, Vec::len)) }
                                td { (u.requests) }
                                td { (u.tokens) }
                                td { (format!("${:.4}", u.cost_usd)) }
                                td { a href=(format!("/console/logs?consumer={name}")) { "logs" } }
                            }
                        }
                    }
                }
            }
        }
    };
    page(
        layout("Portal", &csrf, "/console/portal", &viewer, body),
        set,
    )
}

/// A consumer's use of the gateway over the last 30 days.
#[derive(Debug, Default)]
struct Usage {
    requests: u64,
    tokens: u64,
    cost_usd: f64,
}

/// The most consumers and services whose usage the portal adds up (one
/// analytics call each, or one per service for a team member).
const MAX_USAGE_CONSUMERS: usize = 20;
const MAX_USAGE_SERVICES: usize = 10;

/// Each of `consumers`' usage, asked of the analytics API as the viewer may:
/// across everything for super_admins and auditors, service by service of
/// its teams for a team member.
async fn usage_of(
    console: &Console,
    headers: &HeaderMap,
    viewer: &super::Viewer,
    consumers: &[Value],
    services: &BTreeMap<String, Value>,
) -> Vec<Usage> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let range = format!("from={}&to={}&bucket=day", now - 30 * 86_400, now + 1);
    let scopes: Vec<Option<&str>> = if viewer.reads_everything() {
        vec![None]
    } else {
        services
            .keys()
            .take(MAX_USAGE_SERVICES)
            .map(|s| Some(s.as_str()))
            .collect()
    };
    let mut usage = Vec::with_capacity(consumers.len());
    for (index, consumer) in consumers.iter().enumerate() {
        let mut total = Usage::default();
        if index < MAX_USAGE_CONSUMERS {
            let name = consumer["name"].as_str().unwrap_or_default();
            for scope in &scopes {
                // (Built apart: the serializer must not live across an await.)
                let path = {
                    let mut query = form_urlencoded::Serializer::new(String::new());
                    query.append_pair("consumer", name);
                    if let Some(service) = scope {
                        query.append_pair("service", service);
                    }
                    format!("/admin/v1/analytics?{range}&{}", query.finish())
                };
                let answer = console.call(Method::GET, &path, headers, None, None).await;
                let body = &answer.body;
                total.requests += body["totals"]["requests"].as_u64().unwrap_or(0);
                total.tokens += body["ai"]["tokens_in"].as_u64().unwrap_or(0)
                    + body["ai"]["tokens_out"].as_u64().unwrap_or(0);
                total.cost_usd += body["ai"]["cost_usd"].as_f64().unwrap_or(0.0);
            }
        }
        usage.push(total);
    }
    usage
}
