//! Routing, forwarding headers, balancing and the JSON errors, through the real binary.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use tollgate_testkit::reqwest;
use tollgate_testkit::serde_json::Value;
use tollgate_testkit::upstream;

#[tokio::test]
async fn routing_precedence_and_errors() {
    let a = upstream::echo("a");
    let b = upstream::echo("b");
    let c = upstream::echo("c");
    let d = upstream::echo("d");
    let e = upstream::echo("e");
    let config = format!(
        r#"
services:
  - {{ name: a, upstream: {{ targets: [{{ url: '{}' }}] }} }}
  - {{ name: b, upstream: {{ targets: [{{ url: '{}' }}] }} }}
  - {{ name: c, upstream: {{ targets: [{{ url: '{}' }}] }} }}
  - {{ name: d, upstream: {{ targets: [{{ url: '{}' }}] }} }}
  - {{ name: e, upstream: {{ targets: [{{ url: '{}' }}] }} }}
apis:
  - {{ name: catch-all, service: a, match: {{ paths: [/] }} }}
  - {{ name: orders, service: b, match: {{ paths: [/orders], methods: [GET, POST] }} }}
  - {{ name: order-by-id, service: c, match: {{ paths: ["/orders/{{id}}"], methods: [GET] }} }}
  - {{ name: exact, service: d, match: {{ paths: ["=/orders/export"] }} }}
  - {{ name: wildcard-host, service: e, match: {{ hosts: ["*.example.org"], paths: [/orders] }} }}
"#,
        a.url(),
        b.url(),
        c.url(),
        d.url(),
        e.url()
    );
    let gw = common::gateway().config(&config).start().await;
    let client = gw.client();
    let get = |path: &str, host: Option<&str>| {
        let mut req = client.get(gw.url(path));
        if let Some(host) = host {
            req = req.header("host", host);
        }
        req.send()
    };
    let who = |res: reqwest::Response| async move {
        let v: Value = res.json().await.unwrap();
        v["upstream"].as_str().unwrap().to_string()
    };
    assert_eq!(who(get("/orders", None).await.unwrap()).await, "b");
    assert_eq!(who(get("/orders/42", None).await.unwrap()).await, "c");
    assert_eq!(who(get("/orders/42/items", None).await.unwrap()).await, "c");
    assert_eq!(who(get("/orders/export", None).await.unwrap()).await, "d");
    assert_eq!(who(get("/orders/export/x", None).await.unwrap()).await, "c");
    assert_eq!(who(get("/ordersx", None).await.unwrap()).await, "a");
    assert_eq!(
        who(get("/orders/1", Some("shop.example.org")).await.unwrap()).await,
        "e"
    );
    assert_eq!(
        who(get("/orders/1", Some("example.org")).await.unwrap()).await,
        "c"
    );
    // Normalised before routing: `/x/../orders/7` is `/orders/7`.
    let res = client
        .get(format!("{}/x/%2e%2e/orders//7", gw.proxy_url()))
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["upstream"], "c");
    assert_eq!(v["path"], "/orders/7");

    // A method the specific routes do not take falls through to the catch-all.
    let res = client.delete(gw.url("/orders/42")).send().await.unwrap();
    assert_eq!(who(res).await, "a");

    // Climbing above the root is refused.
    let res = tollgate_testkit::raw::send(
        gw.proxy_addr(),
        b"GET /../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(res.status, Some(400));
    assert!(res.body_text().contains("bad_request"));
}

#[tokio::test]
async fn no_route_is_json_with_request_id() {
    let a = upstream::echo("a");
    let config = format!(
        "services: [{{ name: a, upstream: {{ targets: [{{ url: '{}' }}] }} }}]\napis: [{{ name: only, service: a, match: {{ paths: [/only], methods: [GET, POST] }} }}]\n",
        a.url()
    );
    let gw = common::gateway().config(&config).start().await;
    let res = gw.client().get(gw.url("/elsewhere")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-type"], "application/json");
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_route");
    assert_eq!(body["error"]["request_id"], request_id.as_str());
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/elsewhere"));

    // A path that matches, with a method no route takes: 405 with Allow.
    let res = gw.client().delete(gw.url("/only/1")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, POST");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    assert_eq!(a.hits(), 0);

    let records = gw.wait_for_records(2, Duration::from_secs(5)).await;
    assert_eq!(records.len(), 2, "one record per request: {records:?}");
    assert_eq!(records[0]["reason"], "no_route");
    assert_eq!(records[0]["outcome"], "error");
    assert_eq!(records[0]["status"], 404);
    assert_eq!(records[1]["reason"], "method_not_allowed");
}

#[tokio::test]
async fn strip_prefix_host_and_forwarding_headers() {
    let a = upstream::echo("a");
    let config = format!(
        r#"
services: [{{ name: a, upstream: {{ targets: [{{ url: '{url}' }}] }} }}]
apis:
  - {{ name: stripped, service: a, match: {{ paths: [/orders] }}, strip_prefix: /orders }}
  - {{ name: preserved, service: a, match: {{ paths: [/keep] }}, preserve_host: true }}
"#,
        url = a.url()
    );
    let gw = common::gateway().config(&config).start().await;
    let client = gw.client();
    let res = client
        .get(gw.url("/orders/42?x=1"))
        .header("host", "api.example.com")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-request-id", "spoofed")
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(
        request_id, "spoofed",
        "an untrusted client cannot choose the request id"
    );
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["path"], "/42");
    assert_eq!(v["query"], "x=1");
    let h = &v["headers"];
    assert_eq!(
        h["host"],
        a.addr().to_string(),
        "upstreams get the target's host"
    );
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "what an untrusted client sent is replaced"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example.com");
    assert_eq!(
        h["forwarded"],
        "for=127.0.0.1;host=\"api.example.com\";proto=http"
    );
    assert_eq!(h["x-request-id"], request_id.as_str());
    assert_eq!(
        h["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert!(
        h.get("x-hop").is_none(),
        "headers named by Connection are hop-by-hop"
    );
    assert!(h.get("connection").is_none());

    let v: Value = client
        .get(gw.url("/keep/x"))
        .header("host", "api.example.com")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["headers"]["host"], "api.example.com");
    assert_eq!(v["path"], "/keep/x");
    let tp = v["headers"]["traceparent"].as_str().unwrap();
    assert_eq!(
        tp.len(),
        55,
        "a trace is started when the client sent none: {tp}"
    );
}

#[tokio::test]
async fn trusted_proxies_extend_the_chain_and_keep_the_request_id() {
    let a = upstream::echo("a");
    let config = format!(
        "trusted_proxies: [127.0.0.0/8]\n{}",
        common::simple(&[a.url()], "", "")
    );
    let gw = common::gateway().config(&config).start().await;
    let res = gw
        .client()
        .get(gw.url("/"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-me-123");
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["headers"]["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    let records = gw.wait_for_records(1, Duration::from_secs(5)).await;
    assert_eq!(records[0]["client_ip"], "203.0.113.9");
    assert_eq!(records[0]["request_id"], "trace-me-123");
}

#[tokio::test]
async fn weighted_round_robin_distribution() {
    let a = upstream::echo("a");
    let b = upstream::echo("b");
    let config = format!(
        "services: [{{ name: s, upstream: {{ targets: [{{ url: '{}' }}, {{ url: '{}', weight: 2 }}] }} }}]\napis: [{{ name: x, service: s, match: {{ paths: [/] }} }}]\n",
        a.url(),
        b.url()
    );
    let gw = common::gateway().config(&config).start().await;
    let client = gw.client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        let v: Value = client
            .get(gw.url("/"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        *counts
            .entry(v["upstream"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(counts["a"], 100, "{counts:?}");
    assert_eq!(counts["b"], 200, "{counts:?}");
}

#[tokio::test]
async fn hash_balancing_is_sticky_per_header() {
    let ups: Vec<_> = (0..3).map(|i| upstream::echo(&format!("u{i}"))).collect();
    let urls: Vec<String> = ups.iter().map(|u| u.url()).collect();
    let config = common::simple(&urls, "", ", balance: 'hash(header:X-User)'");
    let gw = common::gateway().config(&config).start().await;
    let client = gw.client();
    for user in ["alice", "bob", "carol", "dave"] {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10 {
            let v: Value = client
                .get(gw.url("/"))
                .header("x-user", user)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            seen.insert(v["upstream"].as_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "{user} moved between {seen:?}");
    }
}

#[tokio::test]
async fn least_conn_avoids_the_busy_target() {
    let slow = upstream::slow(Duration::from_millis(1500));
    let fast = upstream::echo("fast");
    let config = common::simple(&[slow.url(), fast.url()], "", ", balance: least_conn");
    let gw = common::gateway().config(&config).start().await;
    let client = gw.client();
    // Occupy the slow target with a long request; then every request goes to the idle one.
    let mut pending = Vec::new();
    while slow.hits() == 0 && pending.len() < 6 {
        pending.push(tokio::spawn(client.get(gw.url("/")).send()));
        let sent = pending.len() as u64;
        tollgate_testkit::eventually(Duration::from_secs(5), || async {
            slow.hits() + fast.hits() >= sent
        })
        .await;
    }
    assert_eq!(slow.hits(), 1);
    let before = fast.hits();
    for _ in 0..5 {
        let res = client.get(gw.url("/")).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    assert_eq!(
        slow.hits(),
        1,
        "least_conn sent a request to the busy target"
    );
    assert_eq!(fast.hits(), before + 5);
    for request in pending {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
}

/// An upstream answer's hop-by-hop headers, and those its `Connection`
/// header names, stop at the gateway: for a bodiless request (the in-task
/// client parses the answer) as for one with a body (hyper's client).
#[tokio::test]
async fn answers_lose_their_hop_by_hop_headers() {
    let up = tollgate_testkit::Upstream::start(|req| async move {
        let mut res = upstream::echo_response("hops", req).await;
        let headers = res.headers_mut();
        for (name, value) in [
            ("connection", "keep-alive, x-upstream-hop"),
            ("keep-alive", "timeout=5"),
            ("x-upstream-hop", "secret"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
        ] {
            headers.insert(name, value.parse().unwrap());
        }
        res
    });
    let gw = common::gateway()
        .config(&common::simple(&[up.url()], "", ""))
        .start()
        .await;
    let client = gw.client();
    for request in [
        client.get(gw.url("/a")),
        client.post(gw.url("/a")).body("with a body"),
    ] {
        let res = request.send().await.unwrap();
        assert_eq!(res.status(), 200);
        let h = res.headers();
        assert_eq!(h["x-kept"], "yes", "end-to-end headers pass: {h:?}");
        for hop in ["keep-alive", "x-upstream-hop", "proxy-connection"] {
            assert!(h.get(hop).is_none(), "{hop} reached the client: {h:?}");
        }
        // The client's connection is the gateway's to describe.
        assert!(
            h.get("connection")
                .is_none_or(|v| v != "keep-alive, x-upstream-hop"),
            "{h:?}"
        );
    }
}
