//! Admin users, roles and tenant isolation, against a real gateway: users,
//! sign-in, sessions and tokens; the role × endpoint × team matrix; the
//! cross-team subscription flow with the data plane following; passwords
//! kept out of every answer and the audit log; sign-in throttling.

mod common;

use tollgate_testkit::serde_json::{json, Value};
use tollgate_testkit::{upstream, Gateway};

const ROOT: &str = "test-admin-token-0123456789abcdef";
const PASSWORD: &str = "correct horse battery staple";

async fn start(yaml: &str) -> Gateway {
    common::start_with_env(yaml, "TOLLGATE_ADMIN_TOKEN", ROOT).await
}

/// How a request authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    Bearer(&'a str),
    Session(&'a str),
    Anonymous,
}

struct Answer {
    status: u16,
    body: Value,
    set_cookie: Option<String>,
    retry_after: Option<String>,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// The `id` or `name` of each listed item.
    fn names(&self) -> Vec<String> {
        self.body["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i["id"].as_str().or(i["name"].as_str()))
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }
}

async fn send(
    gw: &Gateway,
    auth: Auth<'_>,
    method: &str,
    path: &str,
    body: Option<String>,
    if_match: Option<&str>,
) -> Answer {
    let method = tollgate_testkit::reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = gw
        .client()
        .request(method, format!("{}{path}", gw.admin_url()));
    request = match auth {
        Auth::Bearer(token) => request.bearer_auth(token),
        Auth::Session(id) => request.header("cookie", format!("tollgate_session={id}")),
        Auth::Anonymous => request,
    };
    if let Some(body) = body {
        request = request.body(body);
    }
    if let Some(etag) = if_match {
        request = request.header("if-match", etag);
    }
    let res = request.send().await.unwrap();
    let header = |name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (set_cookie, retry_after) = (header("set-cookie"), header("retry-after"));
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        tollgate_testkit::serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Answer {
        status,
        body,
        set_cookie,
        retry_after,
    }
}

async fn call(
    gw: &Gateway,
    auth: Auth<'_>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Answer {
    send(gw, auth, method, path, body.map(|b| b.to_string()), None).await
}

async fn root(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> Answer {
    call(gw, Auth::Bearer(ROOT), method, path, body).await
}

/// Creates the user `name` with `memberships` (as the bootstrap token) and
/// returns a token of it.
async fn user_with_token(gw: &Gateway, name: &str, memberships: Value) -> String {
    let created = root(
        gw,
        "POST",
        "/admin/v1/users",
        Some(json!({ "name": name, "password": PASSWORD, "memberships": memberships })),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let issued = root(gw, "POST", &format!("/admin/v1/users/{name}/tokens"), None).await;
    assert_eq!(issued.status, 201, "{}", issued.body);
    issued.body["token"].as_str().unwrap().to_string()
}

async fn login(gw: &Gateway, name: &str, password: &str) -> Answer {
    call(
        gw,
        Auth::Anonymous,
        "POST",
        "/admin/v1/login",
        Some(json!({ "name": name, "password": password })),
    )
    .await
}

/// The session id a sign-in's `Set-Cookie` carries.
fn session_of(answer: &Answer) -> String {
    let cookie = answer.set_cookie.as_deref().expect("a Set-Cookie");
    cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("tollgate_session=")
        .unwrap()
        .to_string()
}

async fn get_with_key(gw: &Gateway, path: &str, key: &str) -> (u16, Value) {
    let res = gw
        .client()
        .get(gw.url(path))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

const ROLES: [&str; 4] = ["root", "admina", "deva", "aud"];

/// Two teams, each with a consumer, an approval service and its API, a
/// revoked subscription, and consumers to subscribe in the matrix; a
/// service, an identity provider and a block of no team.
fn teams_config(upstream: &str) -> String {
    let mut consumers = String::new();
    for team in ["a", "b"] {
        consumers += &format!("  - {{ name: c{team}, team: {team} }}\n");
        consumers += &format!("  - {{ name: p{team}, team: {team} }}\n");
        for role in ROLES {
            consumers += &format!("  - {{ name: sub-{role}-{team}, team: {team} }}\n");
            consumers += &format!("  - {{ name: sub2-{role}-{team}, team: {team} }}\n");
        }
    }
    format!(
        r#"
teams: [{{ name: a }}, {{ name: b }}]
identity_providers:
  - {{ name: corp, issuer: "https://corp", secret: "0123456789abcdef0123456789abcdef" }}
consumers:
{consumers}
services:
  - {{ name: sa, team: a, subscription: approval, upstream: {{ targets: [{{ url: "{upstream}" }}] }} }}
  - {{ name: sb, team: b, subscription: approval, upstream: {{ targets: [{{ url: "{upstream}" }}] }} }}
  - {{ name: shared, upstream: {{ targets: [{{ url: "{upstream}" }}] }} }}
apis:
  - {{ name: api-a, service: sa, match: {{ paths: [/a] }}, policies: {{ auth: {{ methods: [key] }} }} }}
  - {{ name: api-b, service: sb, match: {{ paths: [/b] }}, policies: {{ auth: {{ methods: [key] }} }} }}
  - {{ name: api-shared, service: shared, match: {{ paths: [/shared] }} }}
subscriptions:
  - {{ id: rva, consumer: ca, service: sa, status: revoked }}
  - {{ id: rvb, consumer: cb, service: sb, status: revoked }}
  - {{ consumer: pa, service: sa, status: pending }}
  - {{ consumer: pb, service: sb, status: pending }}
blocks:
  - {{ id: blk1, ip: 192.0.2.0/24 }}
"#
    )
}

/// What one caller should get.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// This status.
    S(u16),
    /// 200, and the list holds the row's item.
    In,
    /// 200, and the list does not hold it.
    Out,
    /// 200 with access records.
    Some_,
    /// 200 with none.
    None_,
}

use Expect::{In, None_, Out, Some_, S};

/// One endpoint, called by each role ([`ROLES`]) on team `a`'s resource
/// (`a`) and team `b`'s (`b`). `{T}` in the path, body and item is the
/// team's letter, `{R}` the caller's role: names created stay unique.
///
/// Every request carries a stale `If-Match`, and subscription actions go to
/// revoked subscriptions: a write that authorization lets through stops at
/// 412 `precondition_failed` or 409 `invalid_transition`, so the rows change
/// nothing but what they create and do not depend on their order.
struct Row {
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    item: &'static str,
    a: [Expect; 4],
    b: [Expect; 4],
}

const fn row(
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    a: [Expect; 4],
    b: [Expect; 4],
) -> Row {
    Row {
        method,
        path,
        body,
        item: "",
        a,
        b,
    }
}

const fn list(path: &'static str, item: &'static str, a: [Expect; 4], b: [Expect; 4]) -> Row {
    Row {
        method: "GET",
        path,
        body: None,
        item,
        a,
        b,
    }
}

// The columns: root (super_admin), team_admin of a, developer of a, auditor.
const EVERYONE: [Expect; 4] = [S(200), S(200), S(200), S(200)];
const GLOBAL_READERS: [Expect; 4] = [S(200), S(403), S(403), S(200)];
const HIDDEN: [Expect; 4] = [S(200), S(404), S(404), S(200)];
const LISTED: [Expect; 4] = [In, In, In, In];
const UNLISTED: [Expect; 4] = [In, Out, Out, In];
const ROOT_CREATES: [Expect; 4] = [S(201), S(403), S(403), S(403)];
const ADMIN_CREATES: [Expect; 4] = [S(201), S(201), S(403), S(403)];
const MEMBER_CREATES: [Expect; 4] = [S(201), S(201), S(201), S(403)];
const ADMIN_WRITES: [Expect; 4] = [S(412), S(412), S(403), S(403)];
const ROOT_WRITES_OWN: [Expect; 4] = [S(412), S(403), S(403), S(403)];
const ROOT_WRITES_HIDDEN: [Expect; 4] = [S(412), S(404), S(404), S(403)];
const ADMIN_DECIDES: [Expect; 4] = [S(409), S(409), S(403), S(403)];
const MEMBER_REVOKES: [Expect; 4] = [S(409), S(409), S(409), S(403)];
const HIDDEN_DECISION: [Expect; 4] = [S(409), S(404), S(404), S(403)];

const SERVICE: &str =
    r#"{"name":"s{T}","team":"{T}","upstream":{"targets":[{"url":"http://127.0.0.1:9"}]}}"#;

fn matrix() -> Vec<Row> {
    vec![
        // Services: the team's, listed and read by its members only.
        list("/admin/v1/services", "s{T}", LISTED, UNLISTED),
        row("GET", "/admin/v1/services/s{T}", None, EVERYONE, HIDDEN),
        row(
            "POST",
            "/admin/v1/services",
            Some(
                r#"{"name":"new-{R}-{T}","team":"{T}","upstream":{"targets":[{"url":"http://127.0.0.1:9"}]}}"#,
            ),
            ADMIN_CREATES,
            ROOT_CREATES,
        ),
        row(
            "PUT",
            "/admin/v1/services/s{T}",
            Some(SERVICE),
            ADMIN_WRITES,
            ROOT_WRITES_HIDDEN,
        ),
        row(
            "PATCH",
            "/admin/v1/services/s{T}",
            Some("{}"),
            ADMIN_WRITES,
            ROOT_WRITES_HIDDEN,
        ),
        row(
            "DELETE",
            "/admin/v1/services/s{T}",
            None,
            ADMIN_WRITES,
            ROOT_WRITES_HIDDEN,
        ),
        // APIs: their service's team's.
        list("/admin/v1/apis", "api-{T}", LISTED, UNLISTED),
        row("GET", "/admin/v1/apis/api-{T}", None, EVERYONE, HIDDEN),
        row(
            "POST",
            "/admin/v1/apis",
            Some(r#"{"name":"new-{R}-{T}","service":"s{T}","match":{"paths":["/new-{R}-{T}"]}}"#),
            ADMIN_CREATES,
            ROOT_CREATES,
        ),
        row(
            "PUT",
            "/admin/v1/apis/api-{T}",
            Some(r#"{"name":"api-{T}","service":"s{T}","match":{"paths":["/{T}"]}}"#),
            ADMIN_WRITES,
            ROOT_WRITES_HIDDEN,
        ),
        row(
            "PATCH",
            "/admin/v1/apis/api-{T}",
            Some("{}"),
            ADMIN_WRITES,
            ROOT_WRITES_HIDDEN,
        ),
        row(
            "DELETE",
            "/admin/v1/apis/api-{T}",
            None,
            ADMIN_WRITES,
            ROOT_WRITES_HIDDEN,
        ),
        // Consumers: developers create them and manage their keys.
        list("/admin/v1/consumers", "c{T}", LISTED, UNLISTED),
        row("GET", "/admin/v1/consumers/c{T}", None, EVERYONE, HIDDEN),
        row(
            "POST",
            "/admin/v1/consumers",
            Some(r#"{"name":"new-{R}-{T}","team":"{T}"}"#),
            MEMBER_CREATES,
            ROOT_CREATES,
        ),
        row(
            "PUT",
            "/admin/v1/consumers/c{T}",
            Some(r#"{"name":"c{T}","team":"{T}"}"#),
            ADMIN_WRITES,
            ROOT_WRITES_HIDDEN,
        ),
        row(
            "PATCH",
            "/admin/v1/consumers/c{T}",
            Some(r#"{"groups":["x"]}"#),
            ADMIN_WRITES,
            ROOT_WRITES_HIDDEN,
        ),
        row(
            "DELETE",
            "/admin/v1/consumers/c{T}",
            None,
            ADMIN_WRITES,
            ROOT_WRITES_HIDDEN,
        ),
        row(
            "POST",
            "/admin/v1/consumers/c{T}/keys",
            Some("{}"),
            MEMBER_CREATES,
            [S(201), S(404), S(404), S(403)],
        ),
        row(
            "DELETE",
            "/admin/v1/consumers/c{T}/keys/k-{R}-{T}",
            None,
            [S(204), S(204), S(204), S(403)],
            [S(204), S(404), S(404), S(403)],
        ),
        // Subscriptions: requested by the consumer's team (pending only),
        // decided by the service's team_admin.
        list("/admin/v1/subscriptions", "rv{T}", LISTED, UNLISTED),
        row(
            "GET",
            "/admin/v1/subscriptions/rv{T}",
            None,
            EVERYONE,
            HIDDEN,
        ),
        row(
            "POST",
            "/admin/v1/subscriptions",
            Some(r#"{"consumer":"sub-{R}-{T}","service":"s{T}","reason":"matrix"}"#),
            MEMBER_CREATES,
            ROOT_CREATES,
        ),
        row(
            "POST",
            "/admin/v1/subscriptions",
            Some(r#"{"consumer":"sub2-{R}-{T}","service":"s{T}","status":"approved"}"#),
            ADMIN_CREATES,
            ROOT_CREATES,
        ),
        row(
            "PUT",
            "/admin/v1/subscriptions/rv{T}",
            Some(r#"{"id":"rv{T}","consumer":"c{T}","service":"s{T}","status":"revoked"}"#),
            ADMIN_WRITES,
            ROOT_WRITES_HIDDEN,
        ),
        row(
            "PATCH",
            "/admin/v1/subscriptions/rv{T}",
            Some(r#"{"comment":"x"}"#),
            ADMIN_WRITES,
            ROOT_WRITES_HIDDEN,
        ),
        row(
            "DELETE",
            "/admin/v1/subscriptions/rv{T}",
            None,
            ADMIN_WRITES,
            ROOT_WRITES_HIDDEN,
        ),
        row(
            "POST",
            "/admin/v1/subscriptions/rv{T}/approve",
            None,
            ADMIN_DECIDES,
            HIDDEN_DECISION,
        ),
        row(
            "POST",
            "/admin/v1/subscriptions/rv{T}/reject",
            None,
            ADMIN_DECIDES,
            HIDDEN_DECISION,
        ),
        row(
            "POST",
            "/admin/v1/subscriptions/rv{T}/revoke",
            None,
            MEMBER_REVOKES,
            HIDDEN_DECISION,
        ),
        // Teams: members read their own; only a super_admin changes any.
        list("/admin/v1/teams", "{T}", LISTED, UNLISTED),
        row("GET", "/admin/v1/teams/{T}", None, EVERYONE, HIDDEN),
        row(
            "POST",
            "/admin/v1/teams",
            Some(r#"{"name":"team-{R}-{T}"}"#),
            ROOT_CREATES,
            ROOT_CREATES,
        ),
        row(
            "PUT",
            "/admin/v1/teams/{T}",
            Some(r#"{"name":"{T}"}"#),
            ROOT_WRITES_OWN,
            ROOT_WRITES_HIDDEN,
        ),
        row(
            "DELETE",
            "/admin/v1/teams/{T}",
            None,
            ROOT_WRITES_OWN,
            ROOT_WRITES_HIDDEN,
        ),
        // What belongs to no team: the global roles' alone.
        list("/admin/v1/services", "shared", UNLISTED, UNLISTED),
        row("GET", "/admin/v1/services/shared", None, HIDDEN, HIDDEN),
        list("/admin/v1/identity_providers", "corp", UNLISTED, UNLISTED),
        row(
            "GET",
            "/admin/v1/identity_providers/corp",
            None,
            HIDDEN,
            HIDDEN,
        ),
        row(
            "POST",
            "/admin/v1/identity_providers",
            Some(
                r#"{"name":"idp-{R}-{T}","issuer":"https://x","secret":"0123456789abcdef0123456789abcdef"}"#,
            ),
            ROOT_CREATES,
            ROOT_CREATES,
        ),
        list("/admin/v1/blocks", "blk1", UNLISTED, UNLISTED),
        row("GET", "/admin/v1/blocks/blk1", None, HIDDEN, HIDDEN),
        row(
            "POST",
            "/admin/v1/blocks",
            Some(r#"{"id":"blk-{R}-{T}","ip":"198.51.100.0/24"}"#),
            ROOT_CREATES,
            ROOT_CREATES,
        ),
        row(
            "DELETE",
            "/admin/v1/blocks/blk1",
            None,
            ROOT_WRITES_HIDDEN,
            ROOT_WRITES_HIDDEN,
        ),
        // Logs: a team member's are its teams' services'.
        row(
            "GET",
            "/admin/v1/logs?service=s{T}",
            None,
            [Some_, Some_, Some_, Some_],
            [Some_, None_, None_, Some_],
        ),
        row(
            "GET",
            "/admin/v1/logs?service=shared",
            None,
            [Some_, None_, None_, Some_],
            [Some_, None_, None_, Some_],
        ),
        // Analytics: a team member names one of its teams' services.
        row(
            "GET",
            "/admin/v1/analytics?service=s{T}",
            None,
            EVERYONE,
            GLOBAL_READERS,
        ),
        row(
            "GET",
            "/admin/v1/analytics",
            None,
            GLOBAL_READERS,
            GLOBAL_READERS,
        ),
        // The whole configuration's views: the global roles'.
        row(
            "GET",
            "/admin/v1/audit",
            None,
            GLOBAL_READERS,
            GLOBAL_READERS,
        ),
        row(
            "GET",
            "/admin/v1/compliance",
            None,
            GLOBAL_READERS,
            GLOBAL_READERS,
        ),
        row(
            "GET",
            "/admin/v1/export",
            None,
            GLOBAL_READERS,
            GLOBAL_READERS,
        ),
        row(
            "POST",
            "/admin/v1/apply?dry_run=true",
            Some("teams: [{ name: a }, { name: b }]\n"),
            [S(200), S(403), S(403), S(403)],
            [S(200), S(403), S(403), S(403)],
        ),
        row(
            "POST",
            "/admin/v1/import/openapi?service=s{T}&dry_run=true",
            Some(
                r#"{"openapi":"3.0.3","info":{"title":"t","version":"1"},"paths":{"/imp-{R}-{T}":{"get":{"operationId":"get{R}{T}","responses":{"200":{"description":"ok"}}}}}}"#,
            ),
            [S(200), S(200), S(403), S(403)],
            [S(200), S(403), S(403), S(403)],
        ),
        // Users: a team_admin manages its teams' users; a developer sees itself.
        list("/admin/v1/users", "dev-{T}", LISTED, UNLISTED),
        row("GET", "/admin/v1/users/dev-{T}", None, EVERYONE, HIDDEN),
        row(
            "POST",
            "/admin/v1/users",
            Some(
                r#"{"name":"u-{R}-{T}","password":"long enough password","memberships":[{"team":"{T}","role":"developer"}]}"#,
            ),
            ADMIN_CREATES,
            ROOT_CREATES,
        ),
        row(
            "PATCH",
            "/admin/v1/users/dev-{T}",
            Some(r#"{"memberships":[{"team":"{T}","role":"developer"}]}"#),
            [S(200), S(200), S(200), S(403)],
            [S(200), S(404), S(404), S(403)],
        ),
        row(
            "DELETE",
            "/admin/v1/users/victim-{R}-{T}",
            None,
            [S(204), S(204), S(404), S(403)],
            [S(204), S(404), S(404), S(403)],
        ),
        row(
            "POST",
            "/admin/v1/users/dev-{T}/tokens",
            None,
            [S(201), S(403), S(201), S(403)],
            [S(201), S(404), S(404), S(403)],
        ),
    ]
}

fn fill(template: &str, team: &str, role: &str) -> String {
    template.replace("{T}", team).replace("{R}", role)
}

#[tokio::test]
async fn each_role_sees_and_changes_exactly_what_its_teams_own() {
    let up = upstream::echo("u");
    let gw = start(&teams_config(&up.url())).await;
    let admin_a = user_with_token(
        &gw,
        "admin-a",
        json!([{ "team": "a", "role": "team_admin" }]),
    )
    .await;
    let dev_a = user_with_token(&gw, "dev-a", json!([{ "team": "a", "role": "developer" }])).await;
    let auditor = user_with_token(&gw, "auditor", json!([{ "role": "auditor" }])).await;
    user_with_token(&gw, "dev-b", json!([{ "team": "b", "role": "developer" }])).await;
    for role in ROLES {
        for team in ["a", "b"] {
            let victim = root(
                &gw,
                "POST",
                "/admin/v1/users",
                Some(json!({
                    "name": format!("victim-{role}-{team}"),
                    "password": PASSWORD,
                    "memberships": [{ "team": team, "role": "developer" }],
                })),
            )
            .await;
            assert_eq!(victim.status, 201, "{}", victim.body);
            let key = root(
                &gw,
                "POST",
                &format!("/admin/v1/consumers/c{team}/keys"),
                Some(json!({ "id": format!("k-{role}-{team}") })),
            )
            .await;
            assert_eq!(key.status, 201, "{}", key.body);
        }
    }
    // Access records of each team's service and of the shared one.
    for path in ["/a", "/b", "/shared"] {
        gw.client().get(gw.url(path)).send().await.unwrap();
    }
    tollgate_testkit::eventually(std::time::Duration::from_secs(10), || {
        all_services_logged(&gw)
    })
    .await;

    let callers = [ROOT, admin_a.as_str(), dev_a.as_str(), auditor.as_str()];
    let mut failures = Vec::new();
    for row in matrix() {
        for (team, expected) in [("a", row.a), ("b", row.b)] {
            for ((role, token), expect) in ROLES.iter().zip(callers).zip(expected) {
                let path = fill(row.path, team, role);
                let body = row.body.map(|b| fill(b, team, role));
                let answer = send(
                    &gw,
                    Auth::Bearer(token),
                    row.method,
                    &path,
                    body,
                    Some("\"999999\""),
                )
                .await;
                let item = fill(row.item, team, role);
                let records = answer.body["items"].as_array().map_or(0, Vec::len);
                let ok = match expect {
                    S(status) => answer.status == status,
                    In => answer.status == 200 && answer.names().contains(&item),
                    Out => answer.status == 200 && !answer.names().contains(&item),
                    Some_ => answer.status == 200 && records > 0,
                    None_ => answer.status == 200 && records == 0,
                };
                if !ok {
                    failures.push(format!(
                        "{role:>6} {} {path} {item}: expected {expect:?}, got {} {}",
                        row.method, answer.status, answer.body
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Whether every service's request is in the access records yet.
async fn all_services_logged(gw: &Gateway) -> bool {
    for service in ["sa", "sb", "shared"] {
        let logs = root(
            gw,
            "GET",
            &format!("/admin/v1/logs?service={service}"),
            None,
        )
        .await;
        if logs.body["items"].as_array().is_none_or(Vec::is_empty) {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn another_teams_resources_answer_exactly_as_missing_ones() {
    let up = upstream::echo("u");
    let gw = start(&teams_config(&up.url())).await;
    let dev_a = user_with_token(&gw, "dev-a", json!([{ "team": "a", "role": "developer" }])).await;
    let admin_a = user_with_token(
        &gw,
        "admin-a",
        json!([{ "team": "a", "role": "team_admin" }]),
    )
    .await;
    user_with_token(&gw, "dev-b", json!([{ "team": "b", "role": "developer" }])).await;
    for token in [&dev_a, &admin_a] {
        for (method, existing, missing) in [
            ("GET", "/admin/v1/services/sb", "/admin/v1/services/zz"),
            ("PATCH", "/admin/v1/services/sb", "/admin/v1/services/zz"),
            ("DELETE", "/admin/v1/consumers/cb", "/admin/v1/consumers/zz"),
            (
                "POST",
                "/admin/v1/consumers/cb/keys",
                "/admin/v1/consumers/zz/keys",
            ),
            (
                "DELETE",
                "/admin/v1/consumers/cb/keys/k1",
                "/admin/v1/consumers/zz/keys/k1",
            ),
            (
                "POST",
                "/admin/v1/subscriptions/rvb/revoke",
                "/admin/v1/subscriptions/zz/revoke",
            ),
            ("GET", "/admin/v1/users/dev-b", "/admin/v1/users/zz"),
            ("PATCH", "/admin/v1/users/dev-b", "/admin/v1/users/zz"),
        ] {
            let body = (method != "GET" && method != "DELETE").then(|| json!({}));
            let hidden = call(&gw, Auth::Bearer(token), method, existing, body.clone()).await;
            let absent = call(&gw, Auth::Bearer(token), method, missing, body).await;
            assert_eq!(
                (hidden.status, absent.status),
                (404, 404),
                "{method} {existing}"
            );
            let name = |path: &str| path.split('/').nth(4).unwrap().to_string();
            let strip = |answer: &Answer, name: &str| {
                let mut error = answer.body["error"].clone();
                error["request_id"] = Value::Null;
                error.to_string().replace(name, "<name>")
            };
            assert_eq!(
                strip(&hidden, &name(existing)),
                strip(&absent, &name(missing)),
                "{method} {existing}"
            );
        }
    }
    // A user of both teams: team a's admin sees it in team a only, and may
    // not change it.
    user_with_token(
        &gw,
        "both",
        json!([{ "team": "a", "role": "developer" }, { "team": "b", "role": "developer" }]),
    )
    .await;
    let both = call(
        &gw,
        Auth::Bearer(&admin_a),
        "GET",
        "/admin/v1/users/both",
        None,
    )
    .await;
    assert_eq!(
        both.body,
        json!({ "name": "both", "memberships": [{ "team": "a", "role": "developer" }] })
    );
    let change = call(
        &gw,
        Auth::Bearer(&admin_a),
        "PATCH",
        "/admin/v1/users/both",
        Some(json!({ "password": "a new long password" })),
    )
    .await;
    assert_eq!((change.status, change.code()), (403, "forbidden"));

    // Lists leave them out; `team=b` finds nothing rather than failing.
    let listed = call(
        &gw,
        Auth::Bearer(&dev_a),
        "GET",
        "/admin/v1/consumers?team=b",
        None,
    )
    .await;
    assert_eq!(
        (listed.status, listed.names().len()),
        (200, 0),
        "{}",
        listed.body
    );
    let logs = call(&gw, Auth::Bearer(&dev_a), "GET", "/admin/v1/logs", None).await;
    assert_eq!(logs.status, 200);
}

#[tokio::test]
async fn writes_are_judged_on_what_the_resource_becomes() {
    let up = upstream::echo("u");
    let gw = start(&teams_config(&up.url())).await;
    let admin_a = user_with_token(
        &gw,
        "admin-a",
        json!([{ "team": "a", "role": "team_admin" }]),
    )
    .await;
    let dev_a = user_with_token(&gw, "dev-a", json!([{ "team": "a", "role": "developer" }])).await;
    let admin = Auth::Bearer(&admin_a);
    let dev = Auth::Bearer(&dev_a);
    let cases = [
        // Moving a service to a team the caller does not administer.
        (
            admin,
            "PATCH",
            "/admin/v1/services/sa",
            json!({ "team": "b" }),
            403,
        ),
        (
            admin,
            "PATCH",
            "/admin/v1/services/sa",
            json!({ "team": null }),
            403,
        ),
        // An API on another team's service, or on none: the same answer.
        (
            admin,
            "POST",
            "/admin/v1/apis",
            json!({ "name": "x", "service": "sb", "match": { "paths": ["/x"] } }),
            403,
        ),
        (
            admin,
            "POST",
            "/admin/v1/apis",
            json!({ "name": "x", "service": "nowhere", "match": { "paths": ["/x"] } }),
            403,
        ),
        (
            admin,
            "PUT",
            "/admin/v1/apis/api-a",
            json!({ "name": "api-a", "service": "sb", "match": { "paths": ["/a"] } }),
            403,
        ),
        (
            dev,
            "POST",
            "/admin/v1/consumers",
            json!({ "name": "x", "team": "b" }),
            403,
        ),
        (
            dev,
            "POST",
            "/admin/v1/consumers",
            json!({ "name": "x" }),
            403,
        ),
        // A request for another team's consumer.
        (
            dev,
            "POST",
            "/admin/v1/subscriptions",
            json!({ "consumer": "cb", "service": "sa" }),
            403,
        ),
        // Users: no role outside the caller's teams, no escalation.
        (
            admin,
            "POST",
            "/admin/v1/users",
            json!({ "name": "x", "password": PASSWORD, "memberships": [{ "team": "b", "role": "developer" }] }),
            403,
        ),
        (
            admin,
            "POST",
            "/admin/v1/users",
            json!({ "name": "x", "password": PASSWORD, "memberships": [{ "role": "super_admin" }] }),
            403,
        ),
        (
            dev,
            "PATCH",
            "/admin/v1/users/dev-a",
            json!({ "memberships": [{ "team": "a", "role": "team_admin" }] }),
            403,
        ),
        (
            admin,
            "PATCH",
            "/admin/v1/users/admin-a",
            json!({ "memberships": [{ "team": "a", "role": "team_admin" }, { "team": "b", "role": "team_admin" }] }),
            403,
        ),
        (
            dev,
            "POST",
            "/admin/v1/users/admin-a/tokens",
            json!({}),
            404,
        ),
        (
            admin,
            "POST",
            "/admin/v1/users/dev-a/tokens",
            json!({}),
            403,
        ),
    ];
    for (auth, method, path, body, status) in cases {
        let answer = call(&gw, auth, method, path, Some(body.clone())).await;
        assert_eq!(
            answer.status, status,
            "{method} {path} {body}: {}",
            answer.body
        );
        if status == 403 {
            assert_eq!(answer.code(), "forbidden", "{}", answer.body);
        }
    }
    // Within its team a team_admin changes what it likes.
    let moved = call(
        &gw,
        admin,
        "PATCH",
        "/admin/v1/apis/api-a",
        Some(json!({ "match": { "paths": ["/a2"] } })),
    )
    .await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(get_with_key(&gw, "/a2", "nope").await.0, 401, "served");
    let user = call(
        &gw,
        admin,
        "POST",
        "/admin/v1/users",
        Some(json!({ "name": "new-dev", "password": PASSWORD, "memberships": [{ "team": "a", "role": "developer" }] })),
    )
    .await;
    assert_eq!(user.status, 201, "{}", user.body);
    let gone = call(&gw, admin, "DELETE", "/admin/v1/users/new-dev", None).await;
    assert_eq!(gone.status, 204);
}

/// The ids of the pending subscriptions `auth` may see, sorted.
async fn pending(gw: &Gateway, auth: Auth<'_>) -> Vec<String> {
    let mut names = call(
        gw,
        auth,
        "GET",
        "/admin/v1/subscriptions?status=pending",
        None,
    )
    .await
    .names();
    names.sort();
    names
}

#[tokio::test]
async fn a_developer_requests_another_teams_service_and_its_team_admin_approves() {
    let up = upstream::echo("u");
    let gw = start(&teams_config(&up.url())).await;
    let dev_a = user_with_token(&gw, "dev-a", json!([{ "team": "a", "role": "developer" }])).await;
    let admin_a = user_with_token(
        &gw,
        "admin-a",
        json!([{ "team": "a", "role": "team_admin" }]),
    )
    .await;
    let admin_b = user_with_token(
        &gw,
        "admin-b",
        json!([{ "team": "b", "role": "team_admin" }]),
    )
    .await;
    let dev_b = user_with_token(&gw, "dev-b", json!([{ "team": "b", "role": "developer" }])).await;
    let (dev, admin_a, admin_b, dev_b) = (
        Auth::Bearer(&dev_a),
        Auth::Bearer(&admin_a),
        Auth::Bearer(&admin_b),
        Auth::Bearer(&dev_b),
    );

    let app = call(
        &gw,
        dev,
        "POST",
        "/admin/v1/consumers",
        Some(json!({ "name": "app", "team": "a" })),
    )
    .await;
    assert_eq!(app.status, 201, "{}", app.body);
    let key = call(
        &gw,
        dev,
        "POST",
        "/admin/v1/consumers/app/keys",
        Some(json!({})),
    )
    .await;
    assert_eq!(key.status, 201, "{}", key.body);
    let key = key.body["key"].as_str().unwrap().to_string();
    let (status, body) = get_with_key(&gw, "/b", &key).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("subscription_required"))
    );

    // A developer cannot approve its own access.
    let approved = call(
        &gw,
        dev,
        "POST",
        "/admin/v1/subscriptions",
        Some(json!({ "consumer": "app", "service": "sb", "status": "approved" })),
    )
    .await;
    assert_eq!(
        (approved.status, approved.code()),
        (403, "forbidden"),
        "{}",
        approved.body
    );
    let requested = call(
        &gw,
        dev,
        "POST",
        "/admin/v1/subscriptions",
        Some(json!({ "consumer": "app", "service": "sb", "reason": "checkout" })),
    )
    .await;
    assert_eq!(requested.status, 201, "{}", requested.body);
    assert_eq!(requested.body["status"], "pending");
    for auth in [dev, admin_a] {
        let decided = call(
            &gw,
            auth,
            "POST",
            "/admin/v1/subscriptions/app:sb/approve",
            None,
        )
        .await;
        assert_eq!(
            (decided.status, decided.code()),
            (403, "forbidden"),
            "{}",
            decided.body
        );
    }
    assert_eq!(
        get_with_key(&gw, "/b", &key).await.1["error"]["code"],
        "subscription_pending"
    );

    // Each approver lists the requests on its teams' services; the
    // requesting team sees its own consumers' requests too.
    assert_eq!(pending(&gw, admin_b).await, ["app:sb", "pb:sb"]);
    assert_eq!(pending(&gw, dev_b).await, ["app:sb", "pb:sb"]);
    assert_eq!(pending(&gw, admin_a).await, ["app:sb", "pa:sa"]);
    assert_eq!(
        pending(&gw, Auth::Bearer(ROOT)).await,
        ["app:sb", "pa:sa", "pb:sb"]
    );
    // An approver's own queue: only what it may decide.
    let gw_ref = &gw;
    let queue = |auth| async move {
        let mut names = call(
            gw_ref,
            auth,
            "GET",
            "/admin/v1/subscriptions?status=pending&awaiting=me",
            None,
        )
        .await
        .names();
        names.sort();
        names
    };
    assert_eq!(queue(admin_b).await, ["app:sb", "pb:sb"]);
    assert_eq!(queue(admin_a).await, ["pa:sa"]);
    assert!(queue(dev_b).await.is_empty(), "developers approve nothing");
    let misuse = call(&gw, admin_a, "GET", "/admin/v1/services?awaiting=me", None).await;
    assert_eq!(misuse.status, 400);
    // The consumer itself stays team a's.
    assert_eq!(
        call(&gw, admin_b, "GET", "/admin/v1/consumers/app", None)
            .await
            .status,
        404
    );

    let decided = call(
        &gw,
        admin_b,
        "POST",
        "/admin/v1/subscriptions/app:sb/approve",
        Some(json!({ "comment": "ok" })),
    )
    .await;
    assert_eq!(decided.status, 200, "{}", decided.body);
    assert_eq!(get_with_key(&gw, "/b", &key).await.0, 200);

    // The requesting side may withdraw it.
    let revoked = call(
        &gw,
        dev,
        "POST",
        "/admin/v1/subscriptions/app:sb/revoke",
        None,
    )
    .await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(
        get_with_key(&gw, "/b", &key).await.1["error"]["code"],
        "subscription_revoked"
    );

    let audit = root(
        &gw,
        "GET",
        "/admin/v1/audit?kind=subscriptions&name=app:sb",
        None,
    )
    .await;
    let trail: Vec<(String, String)> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().into(),
                e["actor"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("revoke", "dev-a"),
        ("approve", "admin-b"),
        ("create", "dev-a"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(trail, expected);
}

#[tokio::test]
async fn users_sign_in_with_a_session_and_use_their_own_tokens() {
    let up = upstream::echo("u");
    let gw = start(&teams_config(&up.url())).await;

    // Creation checks every field.
    let bad = root(
        &gw,
        "POST",
        "/admin/v1/users",
        Some(
            json!({ "name": "ann", "password": "too short", "memberships": [
            { "team": "nope", "role": "developer" }
        ] }),
        ),
    )
    .await;
    assert_eq!(
        (bad.status, bad.code()),
        (422, "invalid_user"),
        "{}",
        bad.body
    );
    assert_eq!(bad.body["error"]["errors"][0]["path"], "password");
    let nope = root(
        &gw,
        "POST",
        "/admin/v1/users",
        Some(
            json!({ "name": "ann", "password": PASSWORD, "memberships": [
            { "team": "nope", "role": "developer" }, { "team": "a", "role": "auditor" }
        ] }),
        ),
    )
    .await;
    assert_eq!(nope.status, 422, "{}", nope.body);
    let created = root(
        &gw,
        "POST",
        "/admin/v1/users",
        Some(json!({ "name": "ann", "password": PASSWORD, "memberships": [{ "team": "a", "role": "developer" }] })),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(
        created.body,
        json!({ "name": "ann", "memberships": [{ "team": "a", "role": "developer" }] })
    );
    let again = root(
        &gw,
        "POST",
        "/admin/v1/users",
        Some(json!({ "name": "ann", "password": PASSWORD })),
    )
    .await;
    assert_eq!((again.status, again.code()), (409, "already_exists"));

    // Wrong name or password: one answer.
    let wrong = login(&gw, "ann", "not the password at all").await;
    let unknown = login(&gw, "nobody", PASSWORD).await;
    assert_eq!((wrong.status, wrong.code()), (401, "invalid_credentials"));
    assert_eq!(
        wrong.body["error"]["message"],
        unknown.body["error"]["message"]
    );
    assert_eq!(unknown.status, 401);
    assert!(wrong.set_cookie.is_none());

    let signed_in = login(&gw, "ann", PASSWORD).await;
    assert_eq!(signed_in.status, 200, "{}", signed_in.body);
    assert_eq!(signed_in.body, created.body);
    let cookie = signed_in.set_cookie.clone().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let session = session_of(&signed_in);
    let mine = call(
        &gw,
        Auth::Session(&session),
        "GET",
        "/admin/v1/services",
        None,
    )
    .await;
    assert_eq!(mine.status, 200, "{}", mine.body);
    assert_eq!(mine.names(), ["sa"]);
    let refused = call(
        &gw,
        Auth::Session(&session),
        "POST",
        "/admin/v1/teams",
        Some(json!({ "name": "x" })),
    )
    .await;
    assert_eq!(refused.status, 403);

    // Its own token, shown once; another user's, not.
    let token = call(
        &gw,
        Auth::Session(&session),
        "POST",
        "/admin/v1/users/ann/tokens",
        None,
    )
    .await;
    assert_eq!(token.status, 201, "{}", token.body);
    let token = token.body["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("tga_"));

    // A change riding on the cookie must come from the admin origin itself.
    let from = |origin: Option<String>, site: Option<&'static str>| {
        let mut request = gw
            .client()
            .post(format!("{}/admin/v1/users/ann/tokens", gw.admin_url()))
            .header("cookie", format!("tollgate_session={session}"));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(site) = site {
            request = request.header("sec-fetch-site", site);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(from(Some("https://evil.example".into()), None).await, 403);
    assert_eq!(from(None, Some("cross-site")).await, 403);
    assert_eq!(from(Some(gw.admin_url()), None).await, 201);
    assert_eq!(from(None, Some("same-origin")).await, 201);

    // Sign-ins are on record, refused ones too, without the password tried.
    let signins = root(&gw, "GET", "/admin/v1/audit?kind=sessions", None).await;
    let seen: Vec<(&str, &str)> = signins.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            ("login", "ann"),
            ("login_failed", "nobody"),
            ("login_failed", "ann")
        ]
    );
    assert!(!signins.body.to_string().contains("not the password at all"));
    assert!(signins.body["items"][0]["client_ip"].is_string());
    let by_token = call(
        &gw,
        Auth::Bearer(&token),
        "GET",
        "/admin/v1/users/ann",
        None,
    )
    .await;
    assert_eq!(by_token.status, 200);
    let other = call(
        &gw,
        Auth::Session(&session),
        "POST",
        "/admin/v1/users/nobody/tokens",
        None,
    )
    .await;
    assert_eq!(other.status, 404);

    let out = call(
        &gw,
        Auth::Session(&session),
        "POST",
        "/admin/v1/logout",
        None,
    )
    .await;
    assert_eq!(out.status, 204);
    assert!(out.set_cookie.unwrap().contains("Max-Age=0"));
    let ended = call(
        &gw,
        Auth::Session(&session),
        "GET",
        "/admin/v1/services",
        None,
    )
    .await;
    assert_eq!((ended.status, ended.code()), (401, "invalid_credentials"));
    let forged = call(
        &gw,
        Auth::Session("tgs_forged"),
        "GET",
        "/admin/v1/services",
        None,
    )
    .await;
    assert_eq!(forged.status, 401);

    // A new password ends the sessions of the old one.
    let session = session_of(&login(&gw, "ann", PASSWORD).await);
    let new_password = "another long password";
    let changed = call(
        &gw,
        Auth::Session(&session),
        "PATCH",
        "/admin/v1/users/ann",
        Some(json!({ "password": new_password })),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(
        call(
            &gw,
            Auth::Session(&session),
            "GET",
            "/admin/v1/services",
            None
        )
        .await
        .status,
        401
    );
    assert_eq!(login(&gw, "ann", PASSWORD).await.status, 401);
    assert_eq!(login(&gw, "ann", new_password).await.status, 200);
    let short = root(
        &gw,
        "PATCH",
        "/admin/v1/users/ann",
        Some(json!({ "password": "short" })),
    )
    .await;
    assert_eq!(short.status, 422);
    assert_eq!(short.body["error"]["errors"][0]["path"], "password");

    // Deleting the user ends its tokens.
    assert_eq!(
        root(&gw, "DELETE", "/admin/v1/users/ann", None)
            .await
            .status,
        204
    );
    assert_eq!(
        call(&gw, Auth::Bearer(&token), "GET", "/admin/v1/services", None)
            .await
            .status,
        401
    );
    assert_eq!(
        root(&gw, "GET", "/admin/v1/users/ann", None).await.status,
        404
    );

    // Neither password nor hash is in any answer or in the audit log.
    let users = root(&gw, "GET", "/admin/v1/users", None).await;
    let audit = root(&gw, "GET", "/admin/v1/audit?kind=users", None).await;
    let actions: Vec<&str> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    // Three tokens: one by the session, two from the console's origin.
    assert_eq!(
        actions,
        [
            "delete",
            "update",
            "create_token",
            "create_token",
            "create_token",
            "create"
        ]
    );
    for text in [
        users.body.to_string(),
        audit.body.to_string(),
        created.body.to_string(),
        signed_in.body.to_string(),
    ] {
        for secret in [PASSWORD, new_password, "argon2", "password_hash"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}

#[tokio::test]
async fn sign_in_attempts_are_throttled_per_address() {
    let gw = start("teams: [{ name: a }]\n").await;
    let created = root(
        &gw,
        "POST",
        "/admin/v1/users",
        Some(json!({ "name": "ann", "password": PASSWORD })),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    for _ in 0..10 {
        assert_eq!(login(&gw, "ann", "a wrong password").await.status, 401);
    }
    // The limit holds even for the right password.
    let limited = login(&gw, "ann", PASSWORD).await;
    assert_eq!(
        (limited.status, limited.code()),
        (429, "rate_limited"),
        "{}",
        limited.body
    );
    assert_eq!(limited.retry_after.as_deref(), Some("60"));
    assert!(limited.set_cookie.is_none());
    // Tokens are not throttled.
    assert_eq!(root(&gw, "GET", "/admin/v1/users", None).await.status, 200);
}

#[tokio::test]
async fn the_bootstrap_token_stays_a_super_admin_and_login_needs_no_token() {
    let gw = start("teams: [{ name: a }]\n").await;
    let team = root(&gw, "POST", "/admin/v1/teams", Some(json!({ "name": "b" }))).await;
    assert_eq!(team.status, 201, "{}", team.body);
    let anonymous = call(&gw, Auth::Anonymous, "GET", "/admin/v1/users", None).await;
    assert_eq!(
        (anonymous.status, anonymous.code()),
        (401, "missing_credentials")
    );
    let logout = call(&gw, Auth::Anonymous, "POST", "/admin/v1/logout", None).await;
    assert_eq!(logout.status, 401);
    let malformed = send(
        &gw,
        Auth::Anonymous,
        "POST",
        "/admin/v1/login",
        Some("{".into()),
        None,
    )
    .await;
    assert_eq!(malformed.status, 400);
    // A user with no membership signs in and sees nothing.
    root(
        &gw,
        "POST",
        "/admin/v1/users",
        Some(json!({ "name": "nobody", "password": PASSWORD })),
    )
    .await;
    let session = session_of(&login(&gw, "nobody", PASSWORD).await);
    let teams = call(&gw, Auth::Session(&session), "GET", "/admin/v1/teams", None).await;
    assert_eq!((teams.status, teams.names().len()), (200, 0));
    let audit = call(&gw, Auth::Session(&session), "GET", "/admin/v1/audit", None).await;
    assert_eq!(audit.status, 403);
}
