//! API lifecycle and versions through the real binary: drafts are not served,
//! deprecated APIs carry `Deprecation`/`Sunset`/`Link`, retired APIs answer
//! `410 api_retired`, versions live side by side by path or by header, and a
//! reload moves an API through its life.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_testkit::reqwest;
use tollgate_testkit::serde_json::Value;
use tollgate_testkit::{body, eventually_some, http, upstream, Gateway, Upstream};

const RELOAD: Duration = Duration::from_secs(3);
const LINK_V2: &str = "</v2/orders>; rel=\"successor-version\"";

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    res.headers().get(name).map(|v| v.to_str().unwrap())
}

/// The echo upstream's name for a 200, or the error code of a gateway answer.
async fn answer(res: reqwest::Response) -> String {
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    if status == 200 {
        body["upstream"].as_str().unwrap().to_string()
    } else {
        format!("{status} {}", body["error"]["code"].as_str().unwrap())
    }
}

/// `orders-v1` on `/v1/orders` in the given lifecycle (plus `extra` fields),
/// `orders-v2` on `/v2/orders/{id}` and `/v2/orders`.
fn two_versions(v1: &Upstream, v2: &Upstream, v1_extra: &str) -> String {
    format!(
        r#"
services:
  - {{ name: v1, upstream: {{ targets: [{{ url: '{}' }}] }} }}
  - {{ name: v2, upstream: {{ targets: [{{ url: '{}' }}] }} }}
apis:
  - {{ name: orders-v1, service: v1, version: 1, match: {{ paths: [/v1/orders] }} {v1_extra} }}
  - {{ name: orders-v2, service: v2, version: 2, match: {{ paths: ["/v2/orders/{{id}}", /v2/orders] }} }}
"#,
        v1.url(),
        v2.url()
    )
}

#[tokio::test]
async fn a_draft_is_not_served_and_a_published_api_has_no_deprecation() {
    let draft = upstream::echo("draft");
    let live = upstream::echo("live");
    let config = format!(
        r#"
services:
  - {{ name: draft, upstream: {{ targets: [{{ url: '{}' }}] }} }}
  - {{ name: live, upstream: {{ targets: [{{ url: '{}' }}] }} }}
apis:
  - {{ name: next, service: draft, lifecycle: draft, sunset: 2030-01-01, match: {{ paths: [/next] }} }}
  - {{ name: live, service: live, lifecycle: published, sunset: 2030-01-01, match: {{ paths: [/live] }} }}
"#,
        draft.url(),
        live.url()
    );
    let gw = common::gateway().config(&config).start().await;
    let client = gw.client();

    let res = client.get(gw.url("/next/1")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert!(header(&res, "deprecation").is_none());
    let request_id = header(&res, "x-request-id").unwrap().to_string();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_route");
    assert_eq!(body["error"]["request_id"], request_id.as_str());
    assert_eq!(draft.hits(), 0);

    // Published is unchanged, a sunset on it included: no lifecycle header.
    let res = client.get(gw.url("/live/1")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    for name in ["deprecation", "sunset", "link"] {
        assert!(header(&res, name).is_none(), "{name} on a published API");
    }

    let records = gw.wait_for_records(2, Duration::from_secs(5)).await;
    assert_eq!(records[0]["reason"], "no_route");
    assert!(records[0]["api"].is_null(), "{:?}", records[0]);
}

#[tokio::test]
async fn a_deprecated_api_says_so_on_upstream_answers_and_gateway_errors() {
    let v1 = upstream::echo("v1");
    let v2 = upstream::echo("v2");
    let down = upstream::closed_port();
    let config = format!(
        r#"
services:
  - {{ name: v1, upstream: {{ targets: [{{ url: '{}' }}] }} }}
  - {{ name: v2, upstream: {{ targets: [{{ url: '{}' }}] }} }}
  - {{ name: down, upstream: {{ targets: [{{ url: 'http://{down}' }}] }} }}
apis:
  - name: orders-v1
    service: v1
    match: {{ paths: [/v1/orders] }}
    lifecycle: deprecated
    deprecated_at: 2026-01-01T00:00:00Z
    sunset: 2027-05-01
    successor: orders-v2
    policies: {{ request_size: {{ max_body: 16B }} }}
  - name: legacy
    service: down
    match: {{ paths: [/legacy] }}
    lifecycle: deprecated
    deprecated_at: "2025-06-30T23:59:59+00:00"
    successor: orders-v2
  - {{ name: orders-v2, service: v2, match: {{ paths: ["/v2/orders/{{id}}"] }} }}
"#,
        v1.url(),
        v2.url()
    );
    let gw = common::gateway().config(&config).start().await;
    let client = gw.client();
    let expect_v1_headers = |res: &reqwest::Response| {
        assert_eq!(header(res, "deprecation"), Some("@1767225600"));
        assert_eq!(header(res, "sunset"), Some("Sat, 01 May 2027 00:00:00 GMT"));
        assert_eq!(header(res, "link"), Some(LINK_V2));
    };

    // The upstream's answer.
    let res = client.get(gw.url("/v1/orders/7")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    expect_v1_headers(&res);
    assert_eq!(answer(res).await, "v1");

    // A policy's refusal for the same API.
    let res = client
        .post(gw.url("/v1/orders"))
        .body("x".repeat(100))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    expect_v1_headers(&res);
    assert_eq!(answer(res).await, "413 Payload Too Large payload_too_large");

    // An upstream failure, for an API deprecated without a sunset.
    let res = client.get(gw.url("/legacy")).send().await.unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(header(&res, "deprecation"), Some("@1751327999"));
    assert!(header(&res, "sunset").is_none());
    assert_eq!(header(&res, "link"), Some(LINK_V2));
    assert_eq!(answer(res).await, "502 Bad Gateway upstream_unavailable");

    // The successor itself is plain.
    let res = client.get(gw.url("/v2/orders/7")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(header(&res, "deprecation").is_none());
    assert!(header(&res, "link").is_none());
    assert_eq!(v1.hits(), 1);
}

#[tokio::test]
async fn the_successor_link_joins_the_upstreams_own_links() {
    let paged = Upstream::start(|_req| async {
        http::Response::builder()
            .header("link", "</v1/orders?page=2>; rel=\"next\"")
            .header("sunset", "Fri, 01 Jan 2100 00:00:00 GMT")
            .body(body::full("[]"))
            .unwrap()
    });
    let v2 = upstream::echo("v2");
    let gw = common::gateway()
        .config(&two_versions(
            &paged,
            &v2,
            ", lifecycle: deprecated, sunset: 2027-05-01, successor: orders-v2",
        ))
        .start()
        .await;
    let res = gw.client().get(gw.url("/v1/orders")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let links: Vec<&str> = res
        .headers()
        .get_all("link")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(links, ["</v1/orders?page=2>; rel=\"next\"", LINK_V2]);
    // The configured sunset is the one that holds.
    let sunsets: Vec<_> = res.headers().get_all("sunset").iter().collect();
    assert_eq!(sunsets, ["Sat, 01 May 2027 00:00:00 GMT"]);
}

#[tokio::test]
async fn without_deprecated_at_the_date_is_when_the_node_first_served_it_deprecated() {
    let v1 = upstream::echo("v1");
    let v2 = upstream::echo("v2");
    let before = unix_now();
    let gw = common::gateway()
        .config(&two_versions(&v1, &v2, ", lifecycle: deprecated"))
        .start()
        .await;
    let client = gw.client();
    let deprecation = |res: &reqwest::Response| -> i64 {
        let value = header(res, "deprecation").expect("a Deprecation header");
        value
            .strip_prefix('@')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not an RFC 9745 date: {value}"))
    };

    let res = client.get(gw.url("/v1/orders")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let first = deprecation(&res);
    assert!(
        (before - 1..=unix_now() + 1).contains(&first),
        "Deprecation @{first} is not between the start ({before}) and now"
    );
    assert!(header(&res, "sunset").is_none());
    assert!(header(&res, "link").is_none());

    // A reload that keeps the API deprecated keeps its date. Not a wait for a
    // condition: the clock must pass a second for a new date to be visible.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    gw.write_config(&two_versions(
        &v1,
        &v2,
        ", lifecycle: deprecated, successor: orders-v2",
    ));
    gw.sighup();
    let res = eventually_answer(&gw, "/v1/orders", |res| header(res, "link").is_some()).await;
    assert_eq!(header(&res, "link"), Some(LINK_V2));
    assert_eq!(deprecation(&res), first);
}

#[tokio::test]
async fn a_retired_api_is_gone_with_a_link_to_its_successor() {
    let v1 = upstream::echo("v1");
    let v2 = upstream::echo("v2");
    let gw = common::gateway()
        .config(&two_versions(
            &v1,
            &v2,
            ", lifecycle: retired, sunset: 2026-01-01, successor: orders-v2",
        ))
        .start()
        .await;
    let client = gw.client();

    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let res = client
            .request(method.clone(), gw.url("/v1/orders/7?x=1"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 410, "{method}");
        assert_eq!(header(&res, "content-type"), Some("application/json"));
        assert_eq!(header(&res, "link"), Some(LINK_V2));
        assert_eq!(
            header(&res, "sunset"),
            Some("Thu, 01 Jan 2026 00:00:00 GMT")
        );
        assert!(header(&res, "deprecation").is_none());
        let request_id = header(&res, "x-request-id").unwrap().to_string();
        let body: Value = res.json().await.unwrap();
        let error = &body["error"];
        assert_eq!(error["code"], "api_retired");
        assert_eq!(error["request_id"], request_id.as_str());
        assert_eq!(error["successor"]["api"], "orders-v2");
        assert_eq!(error["successor"]["link"], "/v2/orders");
        assert!(error["message"].as_str().unwrap().contains("orders-v1"));
    }
    assert_eq!(v1.hits(), 0, "a retired API's upstream is never contacted");

    let records = gw.wait_for_records(2, Duration::from_secs(5)).await;
    for record in &records {
        assert_eq!(record["status"], 410);
        assert_eq!(record["reason"], "api_retired");
        assert_eq!(record["outcome"], "error");
        assert_eq!(record["api"], "orders-v1");
    }
}

#[tokio::test]
async fn versions_side_by_side_by_path_and_by_header() {
    let ups: Vec<Upstream> = ["p1", "p2", "h1", "h2"]
        .into_iter()
        .map(upstream::echo)
        .collect();
    // The header-matching API is listed last: specificity, not order, decides.
    let config = format!(
        r#"
services:
  - {{ name: p1, upstream: {{ targets: [{{ url: '{}' }}] }} }}
  - {{ name: p2, upstream: {{ targets: [{{ url: '{}' }}] }} }}
  - {{ name: h1, upstream: {{ targets: [{{ url: '{}' }}] }} }}
  - {{ name: h2, upstream: {{ targets: [{{ url: '{}' }}] }} }}
apis:
  - {{ name: orders-v1, service: p1, version: "1", match: {{ paths: [/v1/orders] }}, lifecycle: deprecated, successor: orders-v2 }}
  - {{ name: orders-v2, service: p2, version: "2", match: {{ paths: [/v2/orders] }} }}
  - {{ name: stock-v1, service: h1, version: "1", match: {{ paths: [/stock] }}, lifecycle: deprecated, successor: stock-v2 }}
  - {{ name: stock-v2, service: h2, version: "2", match: {{ paths: [/stock], headers: {{ X-API-Version: "2" }} }} }}
"#,
        ups[0].url(),
        ups[1].url(),
        ups[2].url(),
        ups[3].url()
    );
    let gw = common::gateway().config(&config).start().await;
    let client = gw.client();
    let get = |path: &str, version: Option<&str>| {
        let mut req = client.get(gw.url(path));
        if let Some(version) = version {
            req = req.header("x-api-version", version);
        }
        req.send()
    };

    let res = get("/v1/orders/1", None).await.unwrap();
    assert_eq!(header(&res, "link"), Some(LINK_V2));
    assert_eq!(answer(res).await, "p1");
    let res = get("/v2/orders/1", None).await.unwrap();
    assert!(header(&res, "deprecation").is_none());
    assert_eq!(answer(res).await, "p2");

    let res = get("/stock/1", Some("2")).await.unwrap();
    assert!(header(&res, "deprecation").is_none());
    assert_eq!(answer(res).await, "h2");
    let res = get("/stock/1", None).await.unwrap();
    assert!(header(&res, "deprecation").is_some());
    assert_eq!(
        header(&res, "link"),
        Some("</stock>; rel=\"successor-version\"")
    );
    assert_eq!(answer(res).await, "h1");
    // Another value is not version 2.
    assert_eq!(
        answer(get("/stock/1", Some("3")).await.unwrap()).await,
        "h1"
    );
}

#[tokio::test]
async fn a_reload_moves_an_api_from_published_to_deprecated_to_retired() {
    let v1 = upstream::echo("v1");
    let v2 = upstream::echo("v2");
    let gw = common::gateway()
        .config(&two_versions(&v1, &v2, ""))
        .start()
        .await;
    let client = gw.client();
    let res = client.get(gw.url("/v1/orders")).send().await.unwrap();
    assert!(header(&res, "deprecation").is_none());
    assert_eq!(answer(res).await, "v1");

    gw.write_config(&two_versions(
        &v1,
        &v2,
        ", lifecycle: deprecated, deprecated_at: 2026-01-01, sunset: 2027-05-01, successor: orders-v2",
    ));
    gw.sighup();
    let res = eventually_answer(&gw, "/v1/orders", |res| {
        header(res, "deprecation").is_some()
    })
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "deprecation"), Some("@1767225600"));
    assert_eq!(
        header(&res, "sunset"),
        Some("Sat, 01 May 2027 00:00:00 GMT")
    );
    assert_eq!(header(&res, "link"), Some(LINK_V2));
    assert_eq!(answer(res).await, "v1");

    gw.write_config(&two_versions(
        &v1,
        &v2,
        ", lifecycle: retired, sunset: 2027-05-01, successor: orders-v2",
    ));
    gw.sighup();
    let res = eventually_answer(&gw, "/v1/orders", |res| res.status() == 410).await;
    assert_eq!(header(&res, "link"), Some(LINK_V2));
    let hits = v1.hits();
    assert_eq!(answer(res).await, "410 Gone api_retired");
    let res = client.get(gw.url("/v1/orders/2")).send().await.unwrap();
    assert_eq!(res.status(), 410);
    assert_eq!(v1.hits(), hits, "retired: the upstream is not contacted");
    // The successor kept serving throughout.
    let res = client.get(gw.url("/v2/orders/9")).send().await.unwrap();
    assert_eq!(answer(res).await, "v2");

    // Back to draft: gone from the router altogether.
    gw.write_config(&two_versions(&v1, &v2, ", lifecycle: draft"));
    gw.sighup();
    let res = eventually_answer(&gw, "/v1/orders", |res| res.status() == 404).await;
    assert_eq!(answer(res).await, "404 Not Found no_route");
}

/// Polls `GET path` until an answer satisfies `done` (a reload has taken
/// effect), and returns that answer.
#[track_caller]
fn eventually_answer<'a>(
    gw: &'a Gateway,
    path: &'a str,
    done: impl Fn(&reqwest::Response) -> bool + 'a,
) -> impl std::future::Future<Output = reqwest::Response> + 'a {
    let client = gw.client();
    let done = Arc::new(done);
    eventually_some(RELOAD, move || {
        let request = client.get(gw.url(path)).send();
        let done = done.clone();
        async move {
            let res = request.await.ok()?;
            done(&res).then_some(res)
        }
    })
}
