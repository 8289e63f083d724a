//! The web console in a real browser: a headless Chromium, driven through
//! chromedriver, against the real gateway. Screenshots of each page go to
//! `target/console-screenshots/`. Skipped without Chromium (Debian's
//! `chromium` and `chromium-driver`), a failure in CI.

mod common;

use tollgate_testkit::serde_json::{json, Value};
use tollgate_testkit::{Browser, Gateway};

const ROOT: &str = "test-admin-token-0123456789abcdef";
const PASSWORD: &str = "a long enough password";

async fn gateway() -> Gateway {
    common::gateway()
        .env("TOLLGATE_ADMIN_TOKEN", ROOT)
        .start()
        .await
}

async fn create_user(gw: &Gateway, name: &str, memberships: Value) {
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

#[tokio::test]
async fn an_admin_signs_in_to_the_console() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let gw = gateway().await;
    let admin = gw.admin_url();

    // The browser itself, before any console page: the health probe's JSON.
    browser.goto(&format!("{admin}/healthz")).await;
    // Chromium shows a JSON document's text in a `pre`.
    let text = browser.text("pre").await;
    let health: Value = tollgate_testkit::serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("/healthz is not JSON in the browser ({e}): {text}"));
    assert_eq!(health["status"], "ok", "{health}");
    browser.screenshot("healthz").await;

    create_user(
        &gw,
        "alice",
        json!([{ "team": "*", "role": "super_admin" }]),
    )
    .await;

    // Without a session, the console sends the browser to its sign-in page.
    browser.goto(&format!("{admin}/console/")).await;
    browser.wait_for_path("/console/login").await;
    browser.wait_for("form#login").await;

    // A wrong password: the same page again, saying so.
    browser
        .fill("form#login input[name=username]", "alice")
        .await;
    browser
        .fill("form#login input[name=password]", "not the password")
        .await;
    browser.click("form#login button[type=submit]").await;
    let error = browser.text(".error").await;
    assert!(!error.trim().is_empty(), "an empty .error");
    browser.wait_for_path("/console/login").await;
    assert!(
        browser.cookie("tollgate_session").await.is_none(),
        "a session after a wrong password"
    );
    browser.screenshot("login").await;

    // The right one: the dashboard.
    browser
        .fill("form#login input[name=username]", "alice")
        .await;
    browser
        .fill("form#login input[name=password]", PASSWORD)
        .await;
    browser.click("form#login button[type=submit]").await;
    browser.wait_for_path("/console/").await;
    assert_eq!(browser.text("h1").await, "Dashboard");
    browser.screenshot("dashboard").await;

    // The session cookie is out of scripts' reach and never sent cross-site.
    let session = browser
        .cookie("tollgate_session")
        .await
        .expect("a tollgate_session cookie after signing in");
    assert_eq!(session.http_only(), Some(true), "{session}");
    assert_eq!(
        session.same_site().map(|s| s.to_string()).as_deref(),
        Some("Strict"),
        "{session}"
    );

    browser.close().await;
}

/// Signs `name` in through the form, and waits for the page it lands on.
async fn sign_in(browser: &Browser, admin: &str, name: &str, landing: &str) {
    browser.goto(&format!("{admin}/console/login")).await;
    browser.fill("form#login input[name=username]", name).await;
    browser
        .fill("form#login input[name=password]", PASSWORD)
        .await;
    browser.click("form#login button[type=submit]").await;
    browser.wait_for_path(landing).await;
}

/// Submits the form `form` after filling `fields` (CSS selector → text).
async fn submit(browser: &Browser, form: &str, fields: &[(&str, &str)]) {
    for (css, text) in fields {
        browser.fill(&format!("{form} {css}"), text).await;
    }
    browser.click(&format!("{form} button[type=submit]")).await;
}

/// The issue's walk through the console, in Chromium: create a service and
/// an API, a consumer and its key (copied with the copy button), request
/// and approve a subscription, call the API through the proxy with that
/// key, find the call in the logs explorer and on the dashboard, retire the
/// API and see 410; then a developer, who lands on the portal and cannot
/// reach the admin pages. Screenshots of each main page.
#[tokio::test]
async fn the_console_walkthrough_in_a_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let up = tollgate_testkit::upstream::echo("pay");
    let gw = common::gateway()
        .config("teams: [{ name: shop }]\n")
        .env("TOLLGATE_ADMIN_TOKEN", ROOT)
        .start()
        .await;
    let admin = gw.admin_url();
    create_user(
        &gw,
        "alice",
        json!([{ "team": "*", "role": "super_admin" }]),
    )
    .await;
    create_user(&gw, "dev", json!([{ "team": "shop", "role": "developer" }])).await;
    sign_in(&browser, &admin, "alice", "/console/").await;

    browser.goto(&format!("{admin}/console/services")).await;
    browser.click("form#new-service input[name=approval]").await;
    submit(
        &browser,
        "form#new-service",
        &[
            ("input[name=name]", "pay"),
            ("input[name=team]", "shop"),
            ("input[name=url]", &up.url()),
        ],
    )
    .await;
    browser
        .text_containing(".notice", "Service pay created")
        .await;
    browser.screenshot("services").await;

    browser.goto(&format!("{admin}/console/apis")).await;
    browser.click("form#new-api input[name=key]").await;
    submit(
        &browser,
        "form#new-api",
        &[
            ("input[name=name]", "pay-v1"),
            ("input[name=service]", "pay"),
            ("input[name=path]", "/pay"),
            ("input[name=version]", "v1"),
        ],
    )
    .await;
    browser
        .text_containing(".notice", "API pay-v1 created")
        .await;
    browser.screenshot("apis").await;

    browser.goto(&format!("{admin}/console/consumers")).await;
    submit(
        &browser,
        "form#new-consumer",
        &[
            ("input[name=name]", "shop-app"),
            ("input[name=team]", "shop"),
        ],
    )
    .await;
    browser
        .click(r#"tr[data-consumer="shop-app"] form[action$="/keys"] button"#)
        .await;
    let key_field = browser.wait_for("#new-key").await;
    let key = key_field
        .prop("value")
        .await
        .unwrap()
        .expect("the key's value");
    assert!(key.len() > 20, "{key}");
    browser.click("#copy-key").await;
    // The label changes once the clipboard write settles: wait for it.
    assert_eq!(
        browser.text_containing("#copy-key", "Copied").await,
        "Copied",
        "the copy button ran"
    );
    browser.screenshot("new-key").await;

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
                .as_u16()
        }
    };
    assert_eq!(call().await, 403, "no subscription yet");

    browser
        .goto(&format!("{admin}/console/subscriptions"))
        .await;
    submit(
        &browser,
        "form#request-subscription",
        &[
            ("input[name=consumer]", "shop-app"),
            ("input[name=service]", "pay"),
            ("input[name=reason]", "checkout"),
        ],
    )
    .await;
    browser
        .wait_for(r#"tr[data-subscription="shop-app:pay"]"#)
        .await;
    browser.screenshot("subscriptions-pending").await;
    browser
        .fill(
            r#"tr[data-subscription="shop-app:pay"] input[name=comment]"#,
            "welcome",
        )
        .await;
    browser
        .click(r#"tr[data-subscription="shop-app:pay"] button[value=approve]"#)
        .await;
    browser.text_containing(".notice", "approved").await;
    tollgate_testkit::eventually(std::time::Duration::from_secs(5), || async {
        call().await == 200
    })
    .await;

    gw.wait_for_records(2, std::time::Duration::from_secs(5))
        .await;
    browser
        .goto(&format!("{admin}/console/logs?api=pay-v1&status=200"))
        .await;
    let logs = browser.text("table#logs").await;
    assert!(logs.contains("/pay") && logs.contains("shop-app"), "{logs}");
    browser.screenshot("logs").await;
    browser.click("table#logs tbody tr a").await;
    browser.wait_for("table.fields").await;
    browser.screenshot("log-detail").await;

    browser.goto(&format!("{admin}/console/?range=15m")).await;
    assert!(
        browser
            .exists("#traffic svg polyline, #traffic svg circle")
            .await,
        "a traffic chart"
    );
    assert!(browser.text("#top-apis").await.contains("pay-v1"));
    browser.screenshot("dashboard-traffic").await;

    browser.goto(&format!("{admin}/console/apis")).await;
    let row = r#"tr[data-api="pay-v1"]"#;
    browser
        .wait_for(&format!("{row} select[name=lifecycle]"))
        .await
        .select_by_value("retired")
        .await
        .unwrap();
    browser.click(&format!("{row} input[name=confirm]")).await;
    browser.click(&format!("{row} button[type=submit]")).await;
    browser.text_containing(".notice", "retired").await;
    browser.screenshot("apis-retired").await;
    tollgate_testkit::eventually(std::time::Duration::from_secs(5), || async {
        call().await == 410
    })
    .await;

    for (page, shot) in [
        ("/console/apis/pay-v1", "api-versions-and-policies"),
        ("/console/import", "openapi-import"),
        ("/console/edit/services/pay", "edit-service"),
        ("/console/portal", "portal"),
        ("/console/ai", "ai"),
        ("/console/users", "users"),
        ("/console/compliance", "compliance"),
        ("/console/blocks", "blocks"),
        ("/console/audit", "audit"),
    ] {
        browser.goto(&format!("{admin}{page}")).await;
        browser.wait_for("main h1").await;
        browser.screenshot(shot).await;
    }

    // Sign out: the console asks for a sign-in again.
    browser.click("form#logout button").await;
    browser.wait_for_path("/console/login").await;
    browser.goto(&format!("{admin}/console/apis")).await;
    browser.wait_for_path("/console/login").await;

    // A developer lands on the portal and cannot reach the admin pages.
    sign_in(&browser, &admin, "dev", "/console/portal").await;
    assert!(
        !browser.exists(r#"a[href="/console/audit"]"#).await,
        "no audit link"
    );
    browser.screenshot("developer-portal").await;
    browser.goto(&format!("{admin}/console/audit")).await;
    browser.text_containing(".error", "403").await;
    browser.goto(&format!("{admin}/console/")).await;
    browser.wait_for_path("/console/portal").await;

    browser.close().await;
}
