//! The web console over plain HTTP (the browser tests drive the same pages
//! in Chromium): sign-in with CSRF, the session cookie, the dashboard and
//! the APIs page as the admin API shows them to the user's role, sign-out.

mod common;

use tollgate_testkit::reqwest::{self, header, redirect, StatusCode};
use tollgate_testkit::serde_json::json;
use tollgate_testkit::{upstream, Gateway};

const ROOT: &str = "test-admin-token-0123456789abcdef";
const PASSWORD: &str = "a long enough password";

async fn gateway() -> (Gateway, tollgate_testkit::Upstream) {
    let up = upstream::echo("orders");
    let gw = common::gateway()
        .config(&format!(
            "teams: [{{ name: shop }}]\nservices:\n  - name: orders\n    team: shop\n    upstream: {{ targets: [{{ url: '{}' }}] }}\n\
             apis:\n  - {{ name: orders-v1, service: orders, version: v1, tags: [retail], match: {{ paths: [/orders] }} }}\n",
            up.url()
        ))
        .env("TOLLGATE_ADMIN_TOKEN", ROOT)
        .start()
        .await;
    (gw, up)
}

/// A browser-like client: keeps the cookies it is given, does not follow
/// redirects (the tests look at them).
struct Browser {
    client: reqwest::Client,
    cookies: std::sync::Mutex<Vec<(String, String)>>,
}

fn browser() -> Browser {
    Browser {
        client: reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .build()
            .unwrap(),
        cookies: std::sync::Mutex::new(Vec::new()),
    }
}

impl Browser {
    fn cookie_header(&self) -> String {
        let cookies = self.cookies.lock().unwrap();
        cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep(&self, res: &reqwest::Response) {
        let mut cookies = self.cookies.lock().unwrap();
        for set in res.headers().get_all(header::SET_COOKIE) {
            let pair = set.to_str().unwrap().split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            cookies.retain(|(n, _)| n != name);
            if !value.is_empty() {
                cookies.push((name.to_string(), value.to_string()));
            }
        }
    }

    async fn get(&self, url: String) -> reqwest::Response {
        let res = self
            .client
            .get(url)
            .header(header::COOKIE, self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep(&res);
        res
    }

    async fn post(&self, url: String, form: &[(&str, &str)]) -> reqwest::Response {
        let res = self
            .client
            .post(url)
            .header(header::COOKIE, self.cookie_header())
            .form(form)
            .send()
            .await
            .unwrap();
        self.keep(&res);
        res
    }
}

async fn create_user(gw: &Gateway, name: &str, memberships: serde_json::Value) {
    let res = gw
        .client()
        .post(format!("{}/admin/v1/users", gw.admin_url()))
        .bearer_auth(ROOT)
        .json(&json!({ "name": name, "password": PASSWORD, "memberships": memberships }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
}

/// The CSRF token of a page's forms.
fn csrf_of(html: &str) -> String {
    let at =
        html.find(r#"name="csrf" value=""#).expect("a CSRF field") + r#"name="csrf" value=""#.len();
    html[at..at + 32].to_string()
}

async fn sign_in(gw: &Gateway, client: &Browser, name: &str, password: &str) -> reqwest::Response {
    let page = client
        .get(format!("{}/console/login", gw.admin_url()))
        .await
        .text()
        .await
        .unwrap();
    client
        .post(
            format!("{}/console/login", gw.admin_url()),
            &[
                ("csrf", csrf_of(&page).as_str()),
                ("username", name),
                ("password", password),
            ],
        )
        .await
}

#[tokio::test]
async fn sign_in_shows_the_dashboard_and_sign_out_ends_the_session() {
    let (gw, _up) = gateway().await;
    create_user(
        &gw,
        "alice",
        json!([{ "team": "*", "role": "super_admin" }]),
    )
    .await;
    let client = browser();
    let admin = gw.admin_url();

    // No session: to the sign-in page.
    let res = client.get(format!("{admin}/console/")).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[header::LOCATION], "/console/login");

    // The sign-in page sets the CSRF cookie and carries its token.
    let res = client.get(format!("{admin}/console/login")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let csrf_cookie = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csrf_cookie.starts_with("tollgate_csrf="), "{csrf_cookie}");
    assert!(csrf_cookie.contains("HttpOnly") && csrf_cookie.contains("SameSite=Strict"));
    let csp = res.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let page = res.text().await.unwrap();
    assert!(page.contains(r#"<form class="login" id="login""#), "{page}");

    // A form without its token (another site's) is refused.
    let res = reqwest::Client::new()
        .post(format!("{admin}/console/login"))
        .header(header::COOKIE, client.cookie_header())
        .form(&[("username", "alice"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // A wrong password: the page again, with the error.
    let res = sign_in(&gw, &client, "alice", "not the password").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let page = res.text().await.unwrap();
    assert!(
        page.contains(r#"class="error""#) && page.contains("Wrong name or password"),
        "{page}"
    );

    // The right one: a session cookie, and the dashboard.
    let res = sign_in(&gw, &client, "alice", PASSWORD).await;
    assert_eq!(
        res.status(),
        StatusCode::SEE_OTHER,
        "{}",
        res.text().await.unwrap()
    );
    assert_eq!(res.headers()[header::LOCATION], "/console/");
    let session = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(session.starts_with("tollgate_session="), "{session}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(session.contains(attribute), "{session}");
    }

    // Traffic to show.
    for _ in 0..3 {
        assert_eq!(
            gw.client()
                .get(gw.url("/orders"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    gw.wait_for_records(3, std::time::Duration::from_secs(5))
        .await;
    let res = client.get(format!("{admin}/console/?range=15m")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let page = res.text().await.unwrap();
    assert!(page.contains("<h1>Dashboard</h1>"), "{page}");
    assert!(page.contains("<svg"), "a chart drawn on the server");
    assert!(page.contains("orders-v1"), "the top APIs: {page}");
    let upstreams = page
        .split(r#"id="upstreams""#)
        .nth(1)
        .expect("upstream health");
    assert!(
        upstreams.contains("<td>orders</td>") && upstreams.contains(r#"class="target-healthy""#),
        "{upstreams}"
    );
    assert!(
        page.contains(r#"class="current" href="/console/?range=15m""#),
        "{page}"
    );

    let page = client
        .get(format!("{admin}/console/apis"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("orders-v1") && page.contains("/orders"),
        "{page}"
    );
    assert!(page.contains(r#"class="status-published""#), "{page}");

    // Sign out: the session is over.
    let res = client
        .post(
            format!("{admin}/console/logout"),
            &[("csrf", csrf_of(&page).as_str())],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let res = reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{admin}/console/"))
        .header(header::COOKIE, session.split(';').next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::SEE_OTHER,
        "the old session no longer opens the console"
    );
}

/// A developer is offered what its role allows: it lands on the portal
/// (its team's published API, documented, with a subscribe form), sees no
/// dashboard, audit or service form, and the admin pages it types in
/// answer with the API's refusal.
#[tokio::test]
async fn a_developer_sees_what_its_role_allows() {
    let (gw, _up) = gateway().await;
    create_user(&gw, "dev", json!([{ "team": "shop", "role": "developer" }])).await;
    let client = browser();
    let admin = gw.admin_url();
    assert_eq!(
        sign_in(&gw, &client, "dev", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );
    let res = client.get(format!("{admin}/console/")).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[header::LOCATION], "/console/portal");

    let page = client
        .get(format!("{admin}/console/portal"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(r#"data-team="shop""#) && page.contains(r#"id="api-orders-v1""#),
        "{page}"
    );
    // Its documentation is its OpenAPI description, rendered; the
    // document itself is a link away (the session cookie opens it).
    assert!(
        page.contains(r#"href="/admin/v1/apis/orders-v1/openapi.json""#),
        "{page}"
    );
    assert!(page.contains("<code>GET</code>"), "{page}");
    let res = reqwest::Client::new()
        .get(format!("{admin}/admin/v1/apis/orders-v1/openapi.json"))
        .header(header::COOKIE, client.cookie_header())
        .send()
        .await
        .unwrap();
    let doc: serde_json::Value = res.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0", "{doc}");
    assert_eq!(doc["tags"], json!([{ "name": "retail" }]), "{doc}");
    // By tag: orders-v1 is tagged `retail`; no API is tagged `other`.
    assert!(
        page.contains(r#"href="/console/portal?tag=retail""#),
        "{page}"
    );
    let tagged = client
        .get(format!("{admin}/console/portal?tag=retail"))
        .await
        .text()
        .await
        .unwrap();
    assert!(tagged.contains(r#"id="api-orders-v1""#), "{tagged}");
    let untagged = client
        .get(format!("{admin}/console/portal?tag=other"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!untagged.contains(r#"id="api-orders-v1""#), "{untagged}");
    assert!(
        page.contains("<code>/orders</code>"),
        "its documentation: {page}"
    );
    assert!(
        !page.contains(r#"href="/console/audit""#),
        "no audit link: {page}"
    );
    assert!(
        !page.contains(r#"href="/console/">Dashboard"#),
        "no dashboard link: {page}"
    );
    assert!(page.contains("<span class=\"who\">dev</span>"), "{page}");

    let page = client
        .get(format!("{admin}/console/services"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("New service"),
        "no form it could not use: {page}"
    );
    let page = client
        .get(format!("{admin}/console/consumers"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("New consumer"),
        "developers create consumers: {page}"
    );

    let page = client
        .get(format!("{admin}/console/audit"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(r#"class="error""#) && page.contains("403"),
        "{page}"
    );

    // What the console asks the API about the viewer.
    let res = reqwest::Client::new()
        .get(format!("{admin}/admin/v1/whoami"))
        .header(header::COOKIE, client.cookie_header())
        .send()
        .await
        .unwrap();
    let me: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        me,
        json!({ "name": "dev", "user": "dev", "global": null, "teams": { "shop": "developer" } })
    );
}

/// The text of `<input id="new-key" … value="…">` on the key page.
fn new_key_of(html: &str) -> String {
    let at = html.find(r#"id="new-key""#).expect("the new key");
    let rest = &html[at..];
    let start = rest.find(r#"value=""#).unwrap() + r#"value=""#.len();
    let end = start + rest[start..].find('"').unwrap();
    rest[start..end].to_string()
}

/// The whole workflow through the console's forms: a service that needs
/// approval and an API behind a key, a consumer and its key (shown once),
/// a subscription requested and approved, a call through the proxy with
/// that key, the call in the logs explorer and its export, and the API
/// retired (410).
#[tokio::test]
async fn the_console_runs_the_whole_workflow() {
    let (gw, up) = gateway().await;
    create_user(
        &gw,
        "alice",
        json!([{ "team": "*", "role": "super_admin" }]),
    )
    .await;
    let client = browser();
    let admin = gw.admin_url();
    assert_eq!(
        sign_in(&gw, &client, "alice", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );
    let csrf = {
        let page = client
            .get(format!("{admin}/console/services"))
            .await
            .text()
            .await
            .unwrap();
        csrf_of(&page)
    };
    let submit = |path: &'static str, fields: Vec<(&'static str, String)>| {
        let mut form: Vec<(&str, String)> = vec![("csrf", csrf.clone())];
        form.extend(fields);
        let client = &client;
        let admin = admin.clone();
        async move {
            let form: Vec<(&str, &str)> = form.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let res = client.post(format!("{admin}{path}"), &form).await;
            let location = res
                .headers()
                .get(header::LOCATION)
                .map(|l| l.to_str().unwrap().to_string());
            (res.status(), location, res.text().await.unwrap())
        }
    };

    let (status, location, _) = submit(
        "/console/services",
        vec![
            ("name", "pay".into()),
            ("url", up.url()),
            ("approval", "yes".into()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let location = location.unwrap();
    assert!(
        location.starts_with("/console/services?done="),
        "{location}"
    );
    let page = client
        .get(format!("{admin}{location}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Service pay created.")
            && page.contains(r#"<td>pay <a class="small" href="/console/edit/services/pay">"#),
        "{page}"
    );

    let (_, location, _) = submit(
        "/console/apis",
        vec![
            ("name", "pay-v1".into()),
            ("service", "pay".into()),
            ("path", "/pay".into()),
            ("key", "yes".into()),
        ],
    )
    .await;
    assert!(location.unwrap().contains("done="));

    let (_, location, _) = submit("/console/consumers", vec![("name", "shop-app".into())]).await;
    assert!(location.unwrap().contains("done="));
    let (status, _, page) = submit("/console/consumers/shop-app/keys", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let key = new_key_of(&page);
    assert!(key.len() > 20, "{key}");
    assert!(page.contains(r#"data-copy="new-key""#), "a copy button");
    // Shown once: the consumers page lists the key's id, never the key.
    let page = client
        .get(format!("{admin}/console/consumers"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!page.contains(&key));

    let call = || {
        let (client, url, key) = (gw.client(), gw.url("/pay"), key.clone());
        async move {
            client
                .get(url)
                .header("x-api-key", key)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(call().await, StatusCode::FORBIDDEN, "no subscription yet");

    let (_, location, _) = submit(
        "/console/subscriptions",
        vec![
            ("consumer", "shop-app".into()),
            ("service", "pay".into()),
            ("reason", "checkout".into()),
        ],
    )
    .await;
    assert!(location.unwrap().contains("done="));
    let page = client
        .get(format!("{admin}/console/subscriptions"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(r#"data-subscription="shop-app:pay""#),
        "in the approval queue: {page}"
    );
    let (_, location, _) = submit(
        "/console/subscriptions/shop-app:pay/decide",
        vec![("action", "approve".into()), ("comment", "welcome".into())],
    )
    .await;
    assert!(location.unwrap().contains("done="));
    tollgate_testkit::eventually(std::time::Duration::from_secs(5), || async {
        call().await == StatusCode::OK
    })
    .await;

    // The call in the logs explorer, and in its export.
    gw.wait_for_records(2, std::time::Duration::from_secs(5))
        .await;
    let page = client
        .get(format!("{admin}/console/logs?api=pay-v1&status=200"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("<code>/pay</code>") && page.contains("shop-app"),
        "{page}"
    );
    let res = client
        .get(format!("{admin}/console/logs/export?format=csv&api=pay-v1"))
        .await;
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "text/csv; charset=utf-8"
    );
    let csv = res.text().await.unwrap();
    assert!(csv.starts_with("ts,request_id,method,path"), "{csv}");
    assert!(
        csv.lines()
            .any(|l| l.contains(",/pay,pay-v1,shop-app,200,")),
        "{csv}"
    );

    // Every change is in the audit trail, by alice.
    let page = client
        .get(format!("{admin}/console/audit"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(r#"id="audit""#) && page.contains("<td>alice</td>"),
        "{page}"
    );
    assert!(
        page.contains("<td>pay-v1</td>") && page.contains("<td>shop-app</td>"),
        "{page}"
    );

    // Retire it, confirmed: 410 through the proxy.
    let (_, location, _) = submit(
        "/console/apis/pay-v1/lifecycle",
        vec![("lifecycle", "retired".into())],
    )
    .await;
    assert!(location.unwrap().contains("error="), "unconfirmed: refused");
    let (_, location, _) = submit(
        "/console/apis/pay-v1/lifecycle",
        vec![("lifecycle", "retired".into()), ("confirm", "yes".into())],
    )
    .await;
    let location = location.unwrap();
    assert!(location.contains("done="), "{location}");
    tollgate_testkit::eventually(std::time::Duration::from_secs(5), || async {
        call().await == StatusCode::GONE
    })
    .await;
}

/// A developer's writes the admin API refuses come back as the API's error,
/// and nothing changes.
#[tokio::test]
async fn a_developer_cannot_create_a_service_through_the_console() {
    let (gw, _up) = gateway().await;
    create_user(&gw, "dev", json!([{ "team": "shop", "role": "developer" }])).await;
    let client = browser();
    let admin = gw.admin_url();
    assert_eq!(
        sign_in(&gw, &client, "dev", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );
    let page = client
        .get(format!("{admin}/console/services"))
        .await
        .text()
        .await
        .unwrap();
    let res = client
        .post(
            format!("{admin}/console/services"),
            &[
                ("csrf", csrf_of(&page).as_str()),
                ("name", "evil"),
                ("url", "http://127.0.0.1:9"),
            ],
        )
        .await;
    let location = res.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    assert!(location.contains("error=403"), "{location}");
    let res = gw
        .client()
        .get(format!("{admin}/admin/v1/services/evil"))
        .bearer_auth(ROOT)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

/// The governance pages: an AI provider added with its key (never shown
/// again: the page masks it), a user and a team created, the compliance
/// findings, and a block that the proxy then enforces until it is lifted.
#[tokio::test]
async fn governance_pages_add_providers_users_and_blocks() {
    let (gw, _up) = gateway().await;
    create_user(
        &gw,
        "alice",
        json!([{ "team": "*", "role": "super_admin" }]),
    )
    .await;
    let client = browser();
    let admin = gw.admin_url();
    assert_eq!(
        sign_in(&gw, &client, "alice", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );
    let page = client
        .get(format!("{admin}/console/ai"))
        .await
        .text()
        .await
        .unwrap();
    let csrf = csrf_of(&page);
    const PROVIDER_KEY: &str = "sk-console-secret-0123456789abcdef";
    let location = post_form(
        &client,
        &admin,
        &csrf,
        "/console/ai/providers",
        &[
            ("name", "openai-main"),
            ("kind", "openai"),
            ("key", PROVIDER_KEY),
        ],
    )
    .await;
    assert!(location.contains("done="), "{location}");
    let page = client
        .get(format!("{admin}{location}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("<td>openai-main</td>") && page.contains("••••••••"),
        "{page}"
    );
    assert!(!page.contains(PROVIDER_KEY), "the key is never shown again");

    let location = post_form(
        &client,
        &admin,
        &csrf,
        "/console/teams",
        &[("name", "payments")],
    )
    .await;
    assert!(location.contains("done="), "{location}");
    let location = post_form(
        &client,
        &admin,
        &csrf,
        "/console/users",
        &[
            ("name", "bob"),
            ("password", PASSWORD),
            ("team", "payments"),
            ("role", "team_admin"),
        ],
    )
    .await;
    assert!(location.contains("done="), "{location}");
    let page = client
        .get(format!("{admin}/console/users"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("<td>bob</td>") && page.contains("team_admin in payments"),
        "{page}"
    );

    let page = client
        .get(format!("{admin}/console/compliance"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("<h1>Compliance</h1>"), "{page}");
    assert!(
        page.contains("api_without_auth"),
        "orders-v1 has no auth: {page}"
    );

    assert_eq!(
        gw.client()
            .get(gw.url("/orders"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let location = post_form(
        &client,
        &admin,
        &csrf,
        "/console/blocks",
        &[
            ("id", "incident-1"),
            ("ip", "127.0.0.1/32"),
            ("reason", "abuse"),
            ("confirm", "yes"),
        ],
    )
    .await;
    assert!(location.contains("done="), "{location}");
    tollgate_testkit::eventually(std::time::Duration::from_secs(5), || async {
        gw.client()
            .get(gw.url("/orders"))
            .send()
            .await
            .unwrap()
            .status()
            == 403
    })
    .await;
    let location = post_form(
        &client,
        &admin,
        &csrf,
        "/console/blocks/incident-1/lift",
        &[],
    )
    .await;
    assert!(location.contains("done="), "{location}");
    tollgate_testkit::eventually(std::time::Duration::from_secs(5), || async {
        gw.client()
            .get(gw.url("/orders"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
}

/// Posts a console form with its CSRF token; the redirect's location.
async fn post_form(
    client: &Browser,
    admin: &str,
    csrf: &str,
    path: &str,
    form: &[(&str, &str)],
) -> String {
    let mut fields = vec![("csrf", csrf)];
    fields.extend_from_slice(form);
    let res = client.post(format!("{admin}{path}"), &fields).await;
    res.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_string()
}

/// First run: the operator proves it holds the admin token and names the
/// first super-admin, who is then signed in; a wrong token or two different
/// passwords create nobody.
#[tokio::test]
async fn first_run_sets_up_the_super_admin() {
    let (gw, _up) = gateway().await;
    let client = browser();
    let admin = gw.admin_url();
    let page = client
        .get(format!("{admin}/console/login"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(r#"href="/console/setup""#),
        "the sign-in page points to the setup"
    );
    let page = client
        .get(format!("{admin}/console/setup"))
        .await
        .text()
        .await
        .unwrap();
    let csrf = csrf_of(&page);
    let setup = |token: &'static str, confirm: &'static str| {
        let (client, admin, csrf) = (&client, admin.clone(), csrf.clone());
        async move {
            client
                .post(
                    format!("{admin}/console/setup"),
                    &[
                        ("csrf", csrf.as_str()),
                        ("token", token),
                        ("username", "root"),
                        ("password", PASSWORD),
                        ("confirm", confirm),
                    ],
                )
                .await
        }
    };
    let res = setup("not-the-token-0123456789", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.text().await.unwrap().contains(r#"class="error""#));
    let res = setup(ROOT, "another password entirely").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = setup(ROOT, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[header::LOCATION], "/console/");
    let page = client
        .get(format!("{admin}/console/"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("<h1>Dashboard</h1>") && page.contains(">root</span>"),
        "{page}"
    );
}

/// Keys expire on the day chosen and rotate (a new key shown once, the old
/// one revoked); signing out everywhere ends the user's other sessions.
#[tokio::test]
async fn keys_rotate_and_sessions_end_everywhere() {
    let (gw, _up) = gateway().await;
    create_user(
        &gw,
        "alice",
        json!([{ "team": "*", "role": "super_admin" }]),
    )
    .await;
    let (first, second) = (browser(), browser());
    let admin = gw.admin_url();
    assert_eq!(
        sign_in(&gw, &first, "alice", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        sign_in(&gw, &second, "alice", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );

    let page = first
        .get(format!("{admin}/console/consumers"))
        .await
        .text()
        .await
        .unwrap();
    let csrf = csrf_of(&page);
    post_form(
        &first,
        &admin,
        &csrf,
        "/console/consumers",
        &[("name", "app")],
    )
    .await;
    let res = first
        .post(
            format!("{admin}/console/consumers/app/keys"),
            &[("csrf", csrf.as_str()), ("expires", "2099-01-31")],
        )
        .await;
    let page = res.text().await.unwrap();
    assert!(page.contains("It expires 2099-01-31T00:00:00Z"), "{page}");
    let old_key = new_key_of(&page);

    let listed = gw
        .client()
        .get(format!("{admin}/admin/v1/consumers/app"))
        .bearer_auth(ROOT)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let old_id = listed["keys"][0]["id"].as_str().unwrap().to_string();
    let page = first
        .get(format!("{admin}/console/consumers"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("until 2099-01-31"), "{page}");

    let res = first
        .post(
            format!("{admin}/console/consumers/app/keys/{old_id}/rotate"),
            &[("csrf", csrf.as_str())],
        )
        .await;
    let page = res.text().await.unwrap();
    assert!(page.contains(&format!("Key {old_id} is revoked")), "{page}");
    let new_key = new_key_of(&page);
    assert_ne!(new_key, old_key);
    let listed = gw
        .client()
        .get(format!("{admin}/admin/v1/consumers/app"))
        .bearer_auth(ROOT)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let ids: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "{listed}");
    assert_ne!(ids[0], old_id);

    // Sign out everywhere from the first: the second is signed out too.
    let res = first
        .post(
            format!("{admin}/console/logout"),
            &[("csrf", csrf.as_str()), ("everywhere", "true")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let res = second.get(format!("{admin}/console/")).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[header::LOCATION], "/console/login");
}

/// An API's page: its service's versions side by side, and the policies
/// editor — a valid change is saved and enforced, a refused one comes back
/// with each error at its field and the text as typed, not-YAML says where.
/// And an OpenAPI document imported, dry run first.
#[tokio::test]
async fn api_pages_edit_policies_and_import_openapi() {
    let (gw, _up) = gateway().await;
    create_user(
        &gw,
        "alice",
        json!([{ "team": "*", "role": "super_admin" }]),
    )
    .await;
    let root = |method: reqwest::Method, path: &str, body: serde_json::Value| {
        gw.client()
            .request(method, format!("{}{path}", gw.admin_url()))
            .bearer_auth(ROOT)
            .json(&body)
            .send()
    };
    let res = root(
        reqwest::Method::POST,
        "/admin/v1/apis",
        json!({ "name": "orders-v2", "service": "orders", "version": "v2", "match": { "paths": ["/v2/orders"] } }),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 201);
    let client = browser();
    let admin = gw.admin_url();
    assert_eq!(
        sign_in(&gw, &client, "alice", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );

    let page = client
        .get(format!("{admin}/console/apis/orders-v1"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"<table class="versions">"#), "{page}");
    assert!(
        page.contains(r#"href="/console/apis/orders-v2""#) && page.contains("<td>v2</td>"),
        "{page}"
    );
    let csrf = csrf_of(&page);

    // Refused: the errors at their fields, the text kept.
    let bad = "rate_limit:\n  - { limit: 0, window: 1m }\n";
    let res = client
        .post(
            format!("{admin}/console/apis/orders-v1/policies"),
            &[("csrf", csrf.as_str()), ("policies", bad)],
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = res.text().await.unwrap();
    assert!(page.contains(r#"id="policy-errors""#), "{page}");
    assert!(
        page.contains("rate_limit[0].limit</code>: must be at least 1"),
        "{page}"
    );
    assert!(
        page.contains("limit: 0, window: 1m"),
        "the text as typed: {page}"
    );

    let res = client
        .post(
            format!("{admin}/console/apis/orders-v1/policies"),
            &[("csrf", csrf.as_str()), ("policies", "rate_limit: [ {")],
        )
        .await;
    let page = res.text().await.unwrap();
    assert!(page.contains("not YAML"), "{page}");

    // Saved and served: two requests a minute.
    let good = "rate_limit:\n  - { limit: 2, window: 1m, by: ip }\n";
    let res = client
        .post(
            format!("{admin}/console/apis/orders-v1/policies"),
            &[("csrf", csrf.as_str()), ("policies", good)],
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("Policies saved."));
    tollgate_testkit::eventually(std::time::Duration::from_secs(5), || async {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(
                gw.client()
                    .get(gw.url("/orders"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16(),
            );
        }
        statuses.contains(&429)
    })
    .await;

    // OpenAPI: a dry run changes nothing; the import creates the APIs.
    let document = "openapi: 3.0.3\ninfo: { title: Pets, version: '1' }\npaths:\n  /pets:\n    get:\n      operationId: listPets\n      responses: { '200': { description: ok } }\n";
    let page = client
        .get(format!("{admin}/console/import"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"id="openapi-import""#), "{page}");
    let res = client
        .post(
            format!("{admin}/console/import"),
            &[
                ("csrf", csrf.as_str()),
                ("service", "orders"),
                ("dry_run", "true"),
                ("document", document),
            ],
        )
        .await;
    let page = res.text().await.unwrap();
    assert!(page.contains("Dry run: nothing was changed"), "{page}");
    let listed = root(reqwest::Method::GET, "/admin/v1/apis", json!(null))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !listed.contains("listPets") && !listed.contains("list-pets"),
        "{listed}"
    );
    let res = client
        .post(
            format!("{admin}/console/import"),
            &[
                ("csrf", csrf.as_str()),
                ("service", "orders"),
                ("document", document),
            ],
        )
        .await;
    let page = res.text().await.unwrap();
    assert!(page.contains("Imported:"), "{page}");
    let listed = root(reqwest::Method::GET, "/admin/v1/apis", json!(null))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listed.to_lowercase().contains("pets"), "{listed}");
}

/// The portal shows a developer its team's consumers with their use over
/// the last 30 days, asked of the analytics API service by service of its
/// team (all it may read).
#[tokio::test]
async fn the_portal_shows_my_consumers_usage() {
    let (gw, _up) = gateway().await;
    let admin = gw.admin_url();
    let root = |method: reqwest::Method, path: &str, body: serde_json::Value| {
        gw.client()
            .request(method, format!("{admin}{path}"))
            .bearer_auth(ROOT)
            .json(&body)
            .send()
    };
    let created = root(
        reqwest::Method::POST,
        "/admin/v1/consumers",
        json!({ "name": "shop-app", "team": "shop" }),
    )
    .await
    .unwrap();
    assert_eq!(created.status(), 201);
    let key: serde_json::Value = root(
        reqwest::Method::POST,
        "/admin/v1/consumers/shop-app/keys",
        json!({}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let key = key["key"].as_str().unwrap().to_string();
    let patched = gw
        .client()
        .patch(format!("{admin}/admin/v1/apis/orders-v1"))
        .bearer_auth(ROOT)
        .header(header::CONTENT_TYPE, "application/merge-patch+json")
        .body(r#"{"policies":{"auth":{"methods":["key"]}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200, "{}", patched.text().await.unwrap());
    tollgate_testkit::eventually(std::time::Duration::from_secs(5), || async {
        gw.client()
            .get(gw.url("/orders"))
            .send()
            .await
            .unwrap()
            .status()
            == 401
    })
    .await;
    for _ in 0..3 {
        let res = gw
            .client()
            .get(gw.url("/orders"))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    gw.wait_for_records(4, std::time::Duration::from_secs(5))
        .await;

    create_user(&gw, "dev", json!([{ "team": "shop", "role": "developer" }])).await;
    let client = browser();
    assert_eq!(
        sign_in(&gw, &client, "dev", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );
    let page = client
        .get(format!("{admin}/console/portal"))
        .await
        .text()
        .await
        .unwrap();
    let row = page
        .split(r#"<tr data-consumer="shop-app">"#)
        .nth(1)
        .expect("a row for shop-app")
        .split("</tr>")
        .next()
        .unwrap();
    assert!(row.contains("<td>3</td>"), "3 requests: {row}");
}

/// Any service, API or consumer edited whole as YAML: a valid change is
/// saved (and served), a refused one comes back with its errors at their
/// fields and the text as typed.
#[tokio::test]
async fn resources_are_edited_as_yaml() {
    let (gw, _up) = gateway().await;
    let other = upstream::echo("other");
    create_user(
        &gw,
        "alice",
        json!([{ "team": "*", "role": "super_admin" }]),
    )
    .await;
    let client = browser();
    let admin = gw.admin_url();
    assert_eq!(
        sign_in(&gw, &client, "alice", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );
    let page = client
        .get(format!("{admin}/console/edit/services/orders"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(r#"id="resource-editor""#) && page.contains("name: orders"),
        "{page}"
    );
    let csrf = csrf_of(&page);

    let bad = "name: orders\nteam: shop\nupstream:\n  targets: []\n";
    let res = client
        .post(
            format!("{admin}/console/edit/services/orders"),
            &[("csrf", csrf.as_str()), ("yaml", bad)],
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = res.text().await.unwrap();
    assert!(
        page.contains(r#"id="edit-errors""#) && page.contains("targets"),
        "{page}"
    );
    assert!(page.contains("targets: []"), "the text as typed: {page}");

    let good = format!(
        "name: orders\nteam: shop\nupstream:\n  targets:\n    - url: {}\n",
        other.url()
    );
    let res = client
        .post(
            format!("{admin}/console/edit/services/orders"),
            &[("csrf", csrf.as_str()), ("yaml", good.as_str())],
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("Saved."));
    tollgate_testkit::eventually(std::time::Duration::from_secs(5), || async {
        let res = gw.client().get(gw.url("/orders")).send().await.unwrap();
        res.text().await.unwrap().contains("other")
    })
    .await;

    let res = client
        .get(format!("{admin}/console/edit/users/alice"))
        .await;
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "only services, APIs and consumers"
    );
}

/// Deprecating through the console sets the sunset date and successor the
/// form names: the proxy's answers carry them.
#[tokio::test]
async fn deprecating_sets_the_sunset_and_successor() {
    let (gw, _up) = gateway().await;
    create_user(
        &gw,
        "alice",
        json!([{ "team": "*", "role": "super_admin" }]),
    )
    .await;
    let client = browser();
    let admin = gw.admin_url();
    assert_eq!(
        sign_in(&gw, &client, "alice", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );
    let page = client
        .get(format!("{admin}/console/apis"))
        .await
        .text()
        .await
        .unwrap();
    let csrf = csrf_of(&page);
    let location = post_form(
        &client,
        &admin,
        &csrf,
        "/console/apis/orders-v1/lifecycle",
        &[
            ("lifecycle", "deprecated"),
            ("sunset", "2099-06-30"),
            ("confirm", "yes"),
        ],
    )
    .await;
    assert!(location.contains("done="), "{location}");
    tollgate_testkit::eventually(std::time::Duration::from_secs(5), || async {
        let res = gw.client().get(gw.url("/orders")).send().await.unwrap();
        res.headers()
            .get("sunset")
            .is_some_and(|v| v.to_str().unwrap().contains("2099"))
    })
    .await;
}

/// Behind a TLS-terminating proxy (`X-Forwarded-Proto: https`), the
/// console's cookies are `Secure`; over plain HTTP they are not (a browser
/// would not send them back).
#[tokio::test]
async fn cookies_are_secure_behind_a_tls_proxy() {
    let (gw, _up) = gateway().await;
    create_user(
        &gw,
        "alice",
        json!([{ "team": "*", "role": "super_admin" }]),
    )
    .await;
    let admin = gw.admin_url();
    let client = reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap();
    let page = client
        .get(format!("{admin}/console/login"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let csrf_cookie = page.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csrf_cookie.ends_with("; Secure"), "{csrf_cookie}");
    let csrf = csrf_cookie.split(';').next().unwrap().to_string();
    let token = csrf_of(&page.text().await.unwrap());
    let res = client
        .post(format!("{admin}/console/login"))
        .header("x-forwarded-proto", "https")
        .header(header::COOKIE, &csrf)
        .form(&[
            ("csrf", token.as_str()),
            ("username", "alice"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let session = res.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(
        session.starts_with("tollgate_session=") && session.ends_with("; Secure"),
        "{session}"
    );

    let plain = client
        .get(format!("{admin}/console/login"))
        .send()
        .await
        .unwrap();
    let cookie = plain.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(!cookie.contains("Secure"), "{cookie}");
}

/// A team admin's dashboard shows one of its team's services at a time
/// (what the analytics API lets it read), with a picker; the range links
/// keep the service.
#[tokio::test]
async fn a_team_admin_sees_its_services_dashboard() {
    let (gw, _up) = gateway().await;
    create_user(
        &gw,
        "tom",
        json!([{ "team": "shop", "role": "team_admin" }]),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            gw.client()
                .get(gw.url("/orders"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    gw.wait_for_records(2, std::time::Duration::from_secs(5))
        .await;
    let client = browser();
    let admin = gw.admin_url();
    assert_eq!(
        sign_in(&gw, &client, "tom", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );
    let res = client.get(format!("{admin}/console/?range=15m")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("<h1>Dashboard</h1>") && page.contains(r#"id="services-picker""#),
        "{page}"
    );
    assert!(
        !page.contains(r#"class="error""#),
        "the analytics answered: {page}"
    );
    assert!(page.contains("orders-v1"), "its API's traffic: {page}");
    assert!(
        page.contains(r#"href="/console/?range=1h&amp;service=orders""#),
        "{page}"
    );
    assert!(
        page.contains(r#"<a href="/console/">Dashboard</a>"#)
            || page.contains(r#"aria-current="page"><strong>Dashboard"#),
        "{page}"
    );
}
