//! The console's pages, as maud templates over the admin API's JSON.
//! Every value shown is escaped by maud; nothing is trusted as HTML.

use axum::http::StatusCode;
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

use super::chart;

/// Who may use a section of the console.
#[derive(Clone, Copy)]
enum Audience {
    /// Super_admins and auditors.
    Global,
    /// Those who read a dashboard: super_admins, auditors, team admins.
    Dashboards,
    /// Everyone signed in.
    Everyone,
}

/// The console's sections, in the top bar.
const NAV: [(&str, &str, Audience); 12] = [
    ("/console/", "Dashboard", Audience::Dashboards),
    ("/console/portal", "Portal", Audience::Everyone),
    ("/console/services", "Services", Audience::Everyone),
    ("/console/apis", "APIs", Audience::Everyone),
    ("/console/consumers", "Consumers", Audience::Everyone),
    (
        "/console/subscriptions",
        "Subscriptions",
        Audience::Everyone,
    ),
    ("/console/logs", "Logs", Audience::Everyone),
    ("/console/ai", "AI", Audience::Everyone),
    ("/console/users", "Users", Audience::Everyone),
    ("/console/compliance", "Compliance", Audience::Global),
    ("/console/blocks", "Blocks", Audience::Global),
    ("/console/audit", "Audit", Audience::Global),
];

/// The frame of every signed-in page: the top bar with the navigation and
/// the sign-out form.
pub(super) fn layout(
    title: &str,
    csrf: &str,
    current: &str,
    viewer: &super::Viewer,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Tollgate" }
                link rel="stylesheet" href="/console/style.css";
            }
            body {
                header.top {
                    a.brand href="/console/" { "Tollgate" }
                    nav {
                        @for (href, label, audience) in NAV {
                            @if matches!(audience, Audience::Global) && !viewer.reads_everything() {
                            } @else if matches!(audience, Audience::Dashboards) && !(viewer.reads_everything() || viewer.manages()) {
                            } @else if href == current {
                                a href=(href) aria-current="page" { strong { (label) } }
                            } @else {
                                a href=(href) { (label) }
                            }
                        }
                    }
                    @if !viewer.name.is_empty() {
                        span.who { (viewer.name) }
                    }
                    form id="logout" method="post" action="/console/logout" {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" { "Sign out" }
                        " "
                        button type="submit" name="everywhere" value="true" title="End every session of this user" { "everywhere" }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The sign-in page, with an error when the last attempt failed.
pub fn login(csrf: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in · Tollgate" }
                link rel="stylesheet" href="/console/style.css";
            }
            body {
                main {
                    form.login id="login" method="post" action="/console/login" {
                        h1 { "Sign in to Tollgate" }
                        @if let Some(error) = error {
                            p.error role="alert" { (error) }
                        }
                        input type="hidden" name="csrf" value=(csrf);
                        label for="username" { "Name" }
                        input id="username" type="text" name="username" autocomplete="username" required autofocus;
                        label for="password" { "Password" }
                        input id="password" type="password" name="password" autocomplete="current-password" required;
                        button type="submit" { "Sign in" }
                        p.muted { "First run? " a href="/console/setup" { "Set up the first super-admin" } "." }
                    }
                }
            }
        }
    }
}

/// The first-run page: the admin token, then the first super-admin.
pub fn setup(csrf: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "First run · Tollgate" }
                link rel="stylesheet" href="/console/style.css";
            }
            body {
                main {
                    form.login id="setup" method="post" action="/console/setup" {
                        h1 { "Set up Tollgate" }
                        p.muted {
                            "Paste the admin token (the file " code { "tollgate-data/admin-token" }
                            ", or " code { "TOLLGATE_ADMIN_TOKEN" } "), then choose the first super-admin's name and password."
                        }
                        @if let Some(error) = error {
                            p.error role="alert" { (error) }
                        }
                        input type="hidden" name="csrf" value=(csrf);
                        label for="token" { "Admin token" }
                        input id="token" type="password" name="token" autocomplete="off" required;
                        label for="username" { "Name" }
                        input id="username" type="text" name="username" autocomplete="username" required;
                        label for="password" { "Password" }
                        input id="password" type="password" name="password" autocomplete="new-password" required minlength="12";
                        label for="confirm" { "Password again" }
                        input id="confirm" type="password" name="confirm" autocomplete="new-password" required minlength="12";
                        button type="submit" { "Create and sign in" }
                    }
                }
            }
        }
    }
}

pub fn not_found(csrf: &str) -> Markup {
    layout(
        "Not found",
        csrf,
        "",
        &super::Viewer::default(),
        html! {
            h1 { "Not found" }
            p { "There is no such page. " a href="/console/" { "Back to the dashboard" } }
        },
    )
}

/// An API error shown on a page: the API's message for the user's role.
pub(super) fn refused(status: StatusCode, body: &Value) -> Markup {
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("the admin API refused the request");
    html! {
        p.error role="alert" { (status.as_u16()) ": " (message) }
    }
}

fn number(value: &Value) -> f64 {
    value.as_f64().unwrap_or(0.0)
}

fn percent(part: f64, whole: f64) -> String {
    if whole > 0.0 {
        format!("{:.1} %", part * 100.0 / whole)
    } else {
        "–".to_string()
    }
}

fn card(label: &str, value: String) -> Markup {
    html! {
        div.card {
            div.label { (label) }
            div.value { (value) }
        }
    }
}

/// What the dashboard shows, as the admin API answered.
pub struct Report<'a> {
    pub analytics: &'a Value,
    /// The analytics' status: a refusal is shown as such.
    pub status: StatusCode,
    pub nodes: &'a Value,
    pub teams: &'a [TeamSpend],
    /// `GET /admin/v1/upstreams`.
    pub upstreams: &'a Value,
    /// The service a team admin's dashboard shows, if scoped, and the
    /// services it may pick from.
    pub service: Option<&'a str>,
    pub services: &'a [String],
}

/// The dashboard: totals, traffic and latency over time, top APIs and
/// consumers, AI usage and spend, and the nodes.
pub fn dashboard(
    csrf: &str,
    viewer: &super::Viewer,
    range: &str,
    ranges: &[&str],
    report: &Report<'_>,
) -> Markup {
    let Report {
        analytics,
        status,
        nodes,
        teams,
        upstreams,
        service,
        services,
    } = *report;
    // The range links keep the service a team admin looks at.
    let scoped = |range: &str| match service {
        Some(service) => format!(
            "/console/?range={range}&service={}",
            form_urlencoded::byte_serialize(service.as_bytes()).collect::<String>()
        ),
        None => format!("/console/?range={range}"),
    };
    let totals = &analytics["totals"];
    let requests = number(&totals["requests"]);
    let buckets = every_bucket(analytics);
    let series = |field: &str| -> Vec<f64> {
        buckets
            .iter()
            .map(|b| b.map_or(0.0, |b| number(&b[field])))
            .collect()
    };
    let latency = |q: &str| -> Vec<f64> {
        buckets
            .iter()
            .map(|b| b.map_or(0.0, |b| number(&b["latency_ms"][q])))
            .collect()
    };
    let ai = &analytics["ai"];
    layout(
        "Dashboard",
        csrf,
        "/console/",
        viewer,
        html! {
            h1 { "Dashboard" }
            @if let Some(current) = service {
                nav.ranges id="services-picker" aria-label="Service" {
                    @for s in services {
                        @let href = format!(
                            "/console/?range={range}&service={}",
                            form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                        );
                        a class=(if s == current { "current" } else { "" }) href=(href) { (s) }
                    }
                }
            }
            nav.ranges aria-label="Time range" {
                @for label in ranges {
                    @if *label == range {
                        a.current href=(scoped(label)) { (label) }
                    } @else {
                        a href=(scoped(label)) { (label) }
                    }
                }
            }
            @if status != StatusCode::OK {
                (refused(status, analytics))
            } @else {
                section.cards {
                    (card("Requests", chart::format_value(requests)))
                    (card("Error rate", percent(number(&totals["errors"]), requests)))
                    (card("Denied", percent(number(&totals["denied"]), requests)))
                    (card("p50 latency", format!("{:.1} ms", number(&totals["latency_ms"]["p50"]))))
                    (card("p99 latency", format!("{:.1} ms", number(&totals["latency_ms"]["p99"]))))
                    (card("AI tokens", chart::format_value(number(&ai["tokens_in"]) + number(&ai["tokens_out"]))))
                    (card("AI spend", format!("${:.2}", number(&ai["cost_usd"]))))
                }
                section.panel id="traffic" {
                    (chart::lines(
                        "Requests over time",
                        buckets.len(),
                        &[
                            ("requests", "#1f6feb", series("requests")),
                            ("errors", "#cf222e", series("errors")),
                            ("denied", "#9a6700", series("denied")),
                        ],
                    ))
                }
                section.panel id="latency" {
                    (chart::lines(
                        "Latency (ms)",
                        buckets.len(),
                        &[("p50", "#1a7f37", latency("p50")), ("p99", "#8250df", latency("p99"))],
                    ))
                }
                section.panel id="top-apis" {
                    h2 { "Top APIs" }
                    (ranking(&analytics["top_apis"], "api", "API"))
                }
                section.panel id="top-consumers" {
                    h2 { "Top consumers" }
                    (ranking(&analytics["top_consumers"], "consumer", "Consumer"))
                }
                section.panel id="ai-models" {
                    h2 { "AI usage by model" }
                    @let models = ai["by_model"].as_array().cloned().unwrap_or_default();
                    @if models.is_empty() {
                        p.muted { "No AI calls in this range." }
                    } @else {
                        table {
                            thead { tr { th { "Model" } th { "Calls" } th { "Tokens in" } th { "Tokens out" } th { "Spend" } } }
                            tbody {
                                @for m in &models {
                                    tr {
                                        td { (m["model"].as_str().unwrap_or("–")) }
                                        td { (number(&m["calls"])) }
                                        td { (number(&m["tokens_in"])) }
                                        td { (number(&m["tokens_out"])) }
                                        td { (format!("${:.4}", number(&m["cost_usd"]))) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section.panel id="ai-teams" {
                h2 { "AI spend by team" }
                @if teams.is_empty() {
                    p.muted { "No AI calls in this range." }
                } @else {
                    table {
                        thead { tr { th { "Team" } th { "Calls" } th { "Tokens" } th { "Spend" } } }
                        tbody {
                            @for t in teams {
                                tr {
                                    td { (t.team) }
                                    td { (t.calls) }
                                    td { (t.tokens) }
                                    td { (format!("${:.4}", t.cost_usd)) }
                                }
                            }
                        }
                    }
                    p.muted { "From the 100 consumers that spent most in the range." }
                }
            }
            section.panel id="upstreams" {
                h2 { "Upstream health" }
                @let targets = upstreams["items"].as_array().cloned().unwrap_or_default();
                @if targets.is_empty() {
                    p.muted { "No upstream target yet." }
                } @else {
                    table {
                        thead { tr { th { "Service" } th { "Target" } th { "State" } } }
                        tbody {
                            @for t in &targets {
                                @let state = if t["ejected"] == true { "ejected" } else if t["healthy"] == true { "healthy" } else { "unhealthy" };
                                tr {
                                    td { (t["service"].as_str().unwrap_or("")) }
                                    td { code { (t["target"].as_str().unwrap_or("")) } }
                                    td class=(format!("target-{state}")) { (state) }
                                }
                            }
                        }
                    }
                    p.muted { "As this node sees them: active health checks and passive ejection." }
                }
            }
            section.panel id="nodes" {
                h2 { "Nodes" }
                @let items = nodes["items"].as_array().cloned().unwrap_or_default();
                @if items.is_empty() {
                    p.muted { "No node list for this role." }
                } @else {
                    table {
                        thead { tr { th { "Node" } th { "Address" } th { "Version" } th { "Health" } th { "State" } } }
                        tbody {
                            @for n in &items {
                                tr {
                                    td { (n["name"].as_str().unwrap_or("–")) }
                                    td { (n["address"].as_str().unwrap_or("–")) }
                                    td { (n["version"].as_str().unwrap_or("–")) }
                                    td { (n["health"].as_str().unwrap_or("–")) }
                                    td {
                                        @if n["silent"] == true { "silent" }
                                        @else if n["lagging"] == true { "lagging" }
                                        @else { "live" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The range's buckets in order, each with its analytics entry or `None`
/// for a bucket without requests (which the API leaves out), so that a
/// chart's points sit at their times.
fn every_bucket(analytics: &Value) -> Vec<Option<&Value>> {
    let parse = |v: &Value| {
        v.as_str().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
    };
    let width = match analytics["bucket"].as_str() {
        Some("minute") => 60,
        Some("day") => 86_400,
        _ => 3_600,
    };
    let listed: Vec<&Value> = analytics["buckets"]
        .as_array()
        .map(|b| b.iter().collect())
        .unwrap_or_default();
    let (Some(from), Some(to)) = (parse(&analytics["from"]), parse(&analytics["to"])) else {
        return listed.into_iter().map(Some).collect();
    };
    let count = ((to - from).whole_seconds() / width).clamp(1, 2_000);
    (0..count)
        .map(|i| {
            let start = from + time::Duration::seconds(i * width);
            listed
                .iter()
                .find(|b| parse(&b["start"]) == Some(start))
                .copied()
        })
        .collect()
}

/// One team's AI usage in the range.
#[derive(Debug, Default, PartialEq)]
pub struct TeamSpend {
    pub team: String,
    pub calls: u64,
    pub tokens: u64,
    pub cost_usd: f64,
}

/// AI usage by team: the analytics' consumers (`ai.by_consumer`) summed
/// by their team (from the consumers list; `(no team)` otherwise), the
/// dearest first.
pub fn spend_by_team(by_consumer: &Value, consumers: &Value) -> Vec<TeamSpend> {
    let team_of = |name: &str| {
        consumers["items"]
            .as_array()
            .and_then(|items| items.iter().find(|c| c["name"] == name))
            .and_then(|c| c["team"].as_str())
            .unwrap_or("(no team)")
            .to_string()
    };
    let mut teams: Vec<TeamSpend> = Vec::new();
    for entry in by_consumer.as_array().cloned().unwrap_or_default() {
        let team = team_of(entry["consumer"].as_str().unwrap_or_default());
        let index = match teams.iter().position(|t| t.team == team) {
            Some(index) => index,
            None => {
                teams.push(TeamSpend {
                    team,
                    ..TeamSpend::default()
                });
                teams.len() - 1
            }
        };
        let spend = &mut teams[index];
        spend.calls += entry["calls"].as_u64().unwrap_or(0);
        spend.tokens +=
            entry["tokens_in"].as_u64().unwrap_or(0) + entry["tokens_out"].as_u64().unwrap_or(0);
        spend.cost_usd += entry["cost_usd"].as_f64().unwrap_or(0.0);
    }
    teams.sort_by(|a, b| b.cost_usd.total_cmp(&a.cost_usd).then(a.team.cmp(&b.team)));
    teams
}

/// A top-N table of `{<key>, requests}` entries.
fn ranking(entries: &Value, key: &str, heading: &str) -> Markup {
    let entries = entries.as_array().cloned().unwrap_or_default();
    html! {
        @if entries.is_empty() {
            p.muted { "No requests in this range." }
        } @else {
            table {
                thead { tr { th { (heading) } th { "Requests" } } }
                tbody {
                    @for e in &entries {
                        tr {
                            td { (e[key].as_str().unwrap_or("(none)")) }
                            td { (number(&e["requests"])) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn spend_is_summed_by_the_consumers_team() {
        let by_consumer = json!([
            { "consumer": "a1", "calls": 2, "tokens_in": 10, "tokens_out": 5, "cost_usd": 0.5 },
            { "consumer": "b1", "calls": 1, "tokens_in": 1, "tokens_out": 1, "cost_usd": 2.0 },
            { "consumer": "a2", "calls": 1, "tokens_in": 4, "tokens_out": 0, "cost_usd": 0.25 },
            { "consumer": "x", "calls": 1, "tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0 }
        ]);
        let consumers = json!({ "items": [
            { "name": "a1", "team": "alpha" }, { "name": "a2", "team": "alpha" }, { "name": "b1", "team": "beta" }
        ]});
        let teams = spend_by_team(&by_consumer, &consumers);
        let summary: Vec<(&str, u64, u64, f64)> = teams
            .iter()
            .map(|t| (t.team.as_str(), t.calls, t.tokens, t.cost_usd))
            .collect();
        assert_eq!(
            summary,
            [
                ("beta", 1, 2, 2.0),
                ("alpha", 3, 19, 0.75),
                ("(no team)", 1, 0, 0.0)
            ]
        );
    }
}
