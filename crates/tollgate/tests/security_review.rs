//! Security review: attempts to get around the policies or to make a
//! credential reach the upstream, each through the real binary. A test here
//! either proved a hole (and guards its fix) or guards a property an attacker
//! would try first.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_testkit::reqwest::header;
use tollgate_testkit::serde_json::Value;
use tollgate_testkit::{raw, upstream, Gateway, Upstream};

const ALICE_KEY: &str = "tg_alice_key_0123456789abcdefghijklmnopqrstuvwxyz";
const ALICE_PASSWORD: &str = "alice-password-never-upstream";

/// `/admin` needs a key or Basic credentials; `/` is open; both go to the same
/// upstream, so reaching `/admin` through the open API is a bypass.
fn config(upstream: &str) -> String {
    format!(
        r#"
consumers:
  - name: alice
    keys: [{{ value: env:ALICE_KEY }}]
    basic: {{ username: alice, password: env:ALICE_PASSWORD }}
services:
  - name: svc
    upstream: {{ targets: [{{ url: "{upstream}" }}] }}
apis:
  - name: admin
    service: svc
    match: {{ paths: [/admin] }}
    policies:
      auth: {{ methods: [key, basic], key_query_param: api_key }}
  - name: public
    service: svc
    match: {{ paths: [/] }}
"#
    )
}

async fn start() -> (Gateway, Upstream) {
    let up = upstream::echo("u");
    let gw = common::gateway()
        .config(&config(&up.url()))
        .env("ALICE_KEY", ALICE_KEY)
        .env("ALICE_PASSWORD", ALICE_PASSWORD)
        .start()
        .await;
    (gw, up)
}

/// A raw HTTP/1.1 GET of `target` exactly as written, with `extra` header lines.
async fn raw_get(gw: &Gateway, target: &str, extra: &str) -> raw::RawResponse {
    let request = format!("GET {target} HTTP/1.1\r\nHost: gw\r\n{extra}Connection: close\r\n\r\n");
    raw::send(gw.proxy_addr(), request, Duration::from_secs(5)).await
}

#[tokio::test]
async fn encoded_and_dotted_paths_cannot_route_around_an_apis_auth() {
    let (gw, up) = start().await;
    // `%61` is `a`: an upstream decoding unreserved escapes (RFC 3986 §6.2.2.2
    // says they are equivalent) serves `/admin/users` for `/%61dmin/users`.
    for target in [
        "/%61dmin/users",
        "/ADMIN%2fx/../%61dmin",
        "/ad%6Din",
        "//admin/users",
        "/./admin",
        "/public/../admin",
        "/public/%2e%2e/admin",
    ] {
        let res = raw_get(&gw, target, "").await;
        assert_eq!(res.status, Some(401), "{target}: {}", res.head);
    }
    assert_eq!(up.hits(), 0, "an unauthenticated request reached /admin");

    // With a key, the upstream gets the decoded path: what was routed.
    let res = raw_get(
        &gw,
        "/%61dmin/%7Eme?q=%61",
        &format!("X-API-Key: {ALICE_KEY}\r\n"),
    )
    .await;
    assert_eq!(res.status, Some(200), "{}", res.head);
    let echo: Value = tollgate_testkit::serde_json::from_slice(&res.body).unwrap();
    assert_eq!(echo["path"], "/admin/~me");
    assert_eq!(echo["query"], "q=%61", "the query is not normalised");
    // Reserved and non-ASCII escapes stay as they are.
    let res = raw_get(&gw, "/x%2Fy/caf%C3%A9", "").await;
    let echo: Value = tollgate_testkit::serde_json::from_slice(&res.body).unwrap();
    assert_eq!(echo["path"], "/x%2Fy/caf%C3%A9");

    let records = gw.wait_for_records(9, Duration::from_secs(5)).await;
    let denied = records.iter().filter(|r| r["outcome"] == "denied").count();
    assert_eq!(denied, 7, "{records:?}");
}

#[tokio::test]
async fn no_copy_of_a_credential_reaches_the_upstream() {
    let (gw, _up) = start().await;
    let client = gw.client();
    let basic = {
        use tollgate_testkit::reqwest;
        let r = reqwest::Client::new()
            .get("http://x/")
            .basic_auth("alice", Some(ALICE_PASSWORD))
            .build()
            .unwrap();
        r.headers()[header::AUTHORIZATION]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let requests = [
        // The same key in the header and in the query (SDKs that send both).
        client
            .get(gw.url(&format!("/admin?api_key={ALICE_KEY}&a=1")))
            .header("x-api-key", ALICE_KEY),
        // Basic decides; a key header rides along.
        client
            .get(gw.url("/admin"))
            .header(header::AUTHORIZATION, &basic)
            .header("x-api-key", ALICE_KEY),
        // A Bearer key decides; the query copy rides along.
        client
            .get(gw.url(&format!("/admin?api_key={ALICE_KEY}")))
            .header(header::AUTHORIZATION, format!("Bearer {ALICE_KEY}")),
        // The query parameter, and encoded or re-cased copies of its name
        // that upstream frameworks decode (or match case-insensitively).
        client.get(gw.url(&format!(
            "/admin?api_key={ALICE_KEY}&api%5Fkey={ALICE_KEY}&API_KEY={ALICE_KEY}&a=1"
        ))),
    ];
    for (i, request) in requests.into_iter().enumerate() {
        let res = request.send().await.unwrap();
        assert_eq!(res.status(), 200, "request {i}");
        let echo: Value = res.json().await.unwrap();
        assert_eq!(echo["headers"]["x-consumer-name"], "alice", "request {i}");
        let text = echo.to_string();
        assert!(
            !text.contains(ALICE_KEY) && !text.contains(&basic[6..]),
            "request {i}: a credential reached the upstream: {echo}"
        );
    }
}

#[tokio::test]
async fn identity_headers_cannot_be_spoofed_with_underscores() {
    // CGI-style upstreams (WSGI, Rack, PHP) read `X_Consumer_Team` and
    // `X-Consumer-Team` as the same `HTTP_X_CONSUMER_TEAM` variable.
    let (gw, _up) = start().await;
    for (path, key) in [("/admin", Some(ALICE_KEY)), ("/open", None)] {
        let mut request = gw
            .client()
            .get(gw.url(path))
            .header("x_consumer_team", "admins")
            .header("X_Consumer_Name", "root")
            .header("x_claim_sub", "root")
            .header("x-consumer-team", "admins");
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let res = request.send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let echo: Value = res.json().await.unwrap();
        let headers = echo["headers"].as_object().unwrap();
        for name in headers.keys() {
            let folded = name.replace('_', "-");
            assert!(
                !(folded.starts_with("x-consumer-") || folded.starts_with("x-claim-"))
                    || (name == "x-consumer-name" && headers[name] == "alice"),
                "{path}: the client's {name} reached the upstream: {echo}"
            );
        }
    }
}

#[tokio::test]
async fn method_and_path_overrides_never_reach_the_upstream() {
    // Frameworks that honour these would serve another method or path than
    // the one the gateway's routing, ACL and scopes judged.
    let (gw, _up) = start().await;
    let overrides = [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x-rewrite-url",
        "X_HTTP_Method_Override",
        "x_original_url",
    ];
    for (path, key) in [("/admin", Some(ALICE_KEY)), ("/open", None)] {
        let mut request = gw.client().get(gw.url(path)).header("x-kept", "yes");
        for name in overrides {
            request = request.header(
                name,
                if name.contains("url") {
                    "/admin/delete"
                } else {
                    "DELETE"
                },
            );
        }
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let res = request.send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let echo: Value = res.json().await.unwrap();
        let headers = echo["headers"].as_object().unwrap();
        assert_eq!(headers["x-kept"], "yes", "{path}: other headers pass");
        for name in headers.keys() {
            let folded = name.to_ascii_lowercase().replace('_', "-");
            assert!(
                !overrides
                    .iter()
                    .any(|o| o.to_ascii_lowercase().replace('_', "-") == folded),
                "{path}: the client's {name} reached the upstream: {echo}"
            );
        }
    }
}

/// An upstream that switches to any protocol asked for and then answers
/// every HTTP/1.1 request on the switched connection with its request line:
/// what an h2c-capable server does, in the simplest form.
async fn switching_upstream() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let switched = Arc::new(AtomicU64::new(0));
    let count = switched.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let mut upgraded = false;
                loop {
                    let Some(head) = read_head(&mut stream).await else {
                        return;
                    };
                    let request_line = head.lines().next().unwrap_or("").to_owned();
                    let asks_upgrade = head.to_ascii_lowercase().contains("\nupgrade:");
                    let reply = if asks_upgrade && !upgraded {
                        upgraded = true;
                        count.fetch_add(1, Ordering::SeqCst);
                        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n".to_owned()
                    } else {
                        let body = if upgraded {
                            format!("smuggled {request_line}")
                        } else {
                            format!("plain {request_line}")
                        };
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, switched)
}

async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test]
async fn only_websocket_upgrades_are_tunnelled() {
    // h2c smuggling: once the gateway tunnels an `Upgrade: h2c` handshake the
    // upstream accepted, whatever the client sends next skips every policy.
    let (addr, switched) = switching_upstream().await;
    let gw = common::gateway()
        .config(&config(&format!("http://{addr}")))
        .env("ALICE_KEY", ALICE_KEY)
        .env("ALICE_PASSWORD", ALICE_PASSWORD)
        .start()
        .await;
    let mut stream = raw::connect(gw.proxy_addr()).await;
    stream
        .write_all(
            b"GET /open HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\n\
              Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        )
        .await
        .unwrap();
    let first = read_head(&mut stream).await.unwrap();
    // Whatever the first answer, the next request must meet the gateway.
    if first.starts_with("HTTP/1.1 200") {
        let mut body = vec![0u8; content_length(&first)];
        stream.read_exact(&mut body).await.unwrap();
    }
    stream
        .write_all(b"GET /admin/secrets HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let second = raw::read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(
        !second.body_text().contains("smuggled"),
        "a request skipped the gateway: {first}\n{}\n{}",
        second.head,
        second.body_text()
    );
    assert_eq!(second.status, Some(401), "{}", second.head);
    assert_eq!(switched.load(Ordering::SeqCst), 0, "{first}");
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn websocket_upgrades_still_pass_the_policies() {
    let up = upstream::websocket_echo();
    let gw = common::gateway()
        .config(&config(&up.url()))
        .env("ALICE_KEY", ALICE_KEY)
        .env("ALICE_PASSWORD", ALICE_PASSWORD)
        .start()
        .await;
    use tollgate_testkit::tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("ws://{}/admin/ws", gw.proxy_addr());
    // Without a key: refused before the upstream.
    let refused = tollgate_testkit::tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(refused.is_err(), "an upgrade without a key was tunnelled");
    assert_eq!(up.hits(), 0);
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-api-key", ALICE_KEY.parse().unwrap());
    let (socket, response) = tollgate_testkit::tokio_tungstenite::connect_async(request)
        .await
        .expect("a keyed upgrade is tunnelled");
    assert_eq!(response.status(), 101);
    drop(socket);
}

#[tokio::test]
async fn basic_auth_answers_an_unknown_user_no_faster_than_a_wrong_password() {
    let (gw, up) = start().await;
    let client = gw.client();
    let timed = |user: &'static str| {
        let request = client
            .get(gw.url("/admin"))
            .basic_auth(user, Some("wrong-password"));
        async move {
            let started = Instant::now();
            let res = request.send().await.unwrap();
            assert_eq!(res.status(), 401);
            started.elapsed()
        }
    };
    // Median of a few, alternating, so that a busy machine hits both alike.
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        known.push(timed("alice").await);
        unknown.push(timed("nobody-by-this-name").await);
    }
    known.sort();
    unknown.sort();
    let (known, unknown) = (known[2], unknown[2]);
    assert!(
        unknown * 2 >= known,
        "an unknown user is answered in {unknown:?}, a wrong password in {known:?}: usernames can be enumerated"
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn a_preflight_never_stands_in_for_the_request_it_announces() {
    let up = upstream::echo("u");
    let yaml = config(&up.url()).replace(
        "auth: { methods: [key, basic], key_query_param: api_key }",
        "auth: { methods: [key, basic], key_query_param: api_key }\n      \
         cors: { origins: [\"https://app.example\"], methods: [GET, DELETE] }",
    );
    let gw = common::gateway()
        .config(&yaml)
        .env("ALICE_KEY", ALICE_KEY)
        .env("ALICE_PASSWORD", ALICE_PASSWORD)
        .start()
        .await;
    let client = gw.client();
    let preflight = client
        .request(
            tollgate_testkit::reqwest::Method::OPTIONS,
            gw.url("/admin/x"),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "DELETE");
    let res = preflight.send().await.unwrap();
    assert_eq!(res.status(), 204);
    // The same headers on the real request (or any other method) change nothing.
    for method in ["DELETE", "GET", "POST"] {
        let res = client
            .request(method.parse().unwrap(), gw.url("/admin/x"))
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "DELETE")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{method}");
        assert!(
            !res.headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN),
            "{method}: an unlisted origin was answered"
        );
    }
    assert_eq!(up.hits(), 0);
    let records = gw.wait_for_records(4, Duration::from_secs(5)).await;
    let outcomes: Vec<&Value> = records.iter().map(|r| &r["outcome"]).collect();
    assert_eq!(outcomes[1..], ["denied", "denied", "denied"], "{records:?}");
}
