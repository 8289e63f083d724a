//! Access control end to end: the ACL matrix (consumer, group, team), the
//! four subscription states, and policy levels overriding one another.

mod common;

use tollgate_testkit::serde_json::Value;
use tollgate_testkit::upstream;

fn config(upstream: &str) -> String {
    format!(
        r#"
teams: [{{ name: payments }}, {{ name: risk }}]
consumers:
  - {{ name: partner, team: payments, groups: [partners], keys: [{{ value: "{key_partner}" }}] }}
  - {{ name: staff, team: risk, groups: [staff], keys: [{{ value: "{key_staff}" }}] }}
  - {{ name: pending, keys: [{{ value: "{key_pending}" }}] }}
  - {{ name: rejected, keys: [{{ value: "{key_rejected}" }}] }}
  - {{ name: revoked, keys: [{{ value: "{key_revoked}" }}] }}
  - {{ name: stranger, keys: [{{ value: "{key_stranger}" }}] }}
subscriptions:
  - {{ consumer: partner, service: billing, status: approved }}
  - {{ consumer: pending, service: billing, status: pending }}
  - {{ consumer: rejected, service: billing, status: rejected }}
  - {{ consumer: revoked, service: billing, status: revoked }}
policies:
  auth: {{ methods: [key] }}
services:
  - name: open
    upstream: {{ targets: [{{ url: "{upstream}" }}] }}
  - name: billing
    subscription: approval
    upstream: {{ targets: [{{ url: "{upstream}" }}] }}
apis:
  - {{ name: any, service: open, match: {{ paths: [/any] }} }}
  - name: partners-only
    service: open
    match: {{ paths: [/partners] }}
    policies: {{ acl: {{ allow_groups: [partners] }} }}
  - name: risk-team
    service: open
    match: {{ paths: [/risk] }}
    policies: {{ acl: {{ allow_teams: [risk] }} }}
  - name: named
    service: open
    match: {{ paths: [/named] }}
    policies: {{ acl: {{ allow_consumers: [staff], deny_groups: [partners] }} }}
  - name: not-partners
    service: open
    match: {{ paths: [/no-partners] }}
    policies: {{ acl: {{ deny_teams: [payments] }} }}
  - {{ name: billing, service: billing, match: {{ paths: [/billing] }} }}
"#,
        key_partner = key("partner"),
        key_staff = key("staff"),
        key_pending = key("pending"),
        key_rejected = key("rejected"),
        key_revoked = key("revoked"),
        key_stranger = key("stranger"),
    )
}

fn key(consumer: &str) -> String {
    let base = format!("tg_{consumer}_key_");
    format!("{base}{}", "0".repeat(46 - base.len()))
}

#[tokio::test]
async fn acl_matrix_and_subscription_states() {
    let up = upstream::echo("u");
    let gw = common::gateway().config(&config(&up.url())).start().await;
    let client = gw.client();
    let call = |path: &'static str, consumer: &'static str| {
        let request = client.get(gw.url(path)).header("x-api-key", key(consumer));
        async move {
            let res = request.send().await.unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap();
            let code = body["error"]["code"].as_str().unwrap_or("ok").to_string();
            (status, code)
        }
    };
    let forbidden = (403, "forbidden".to_string());
    let ok = (200, "ok".to_string());
    // Global auth with no ACL admits every authenticated consumer.
    assert_eq!(call("/any", "stranger").await, ok);
    assert_eq!(call("/partners", "partner").await, ok);
    assert_eq!(call("/partners", "staff").await, forbidden);
    assert_eq!(call("/risk", "staff").await, ok);
    assert_eq!(call("/risk", "partner").await, forbidden);
    assert_eq!(call("/named", "staff").await, ok);
    assert_eq!(call("/named", "partner").await, forbidden);
    assert_eq!(call("/no-partners", "partner").await, forbidden);
    assert_eq!(call("/no-partners", "staff").await, ok);

    assert_eq!(call("/billing", "partner").await, ok);
    for (consumer, code) in [
        ("pending", "subscription_pending"),
        ("rejected", "subscription_rejected"),
        ("revoked", "subscription_revoked"),
        ("stranger", "subscription_required"),
    ] {
        assert_eq!(
            call("/billing", consumer).await,
            (403, code.to_string()),
            "{consumer}"
        );
    }

    // The global `auth` covers APIs that declare no policy of their own.
    let res = client.get(gw.url("/any")).send().await.unwrap();
    assert_eq!(res.status(), 401);
}
