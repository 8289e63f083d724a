//! Streaming, WebSocket, HTTP/2 and TLS through the real binary.
//!
//! The tests use only what `tollgate-testkit` re-exports (no futures crate):
//! bodies are read with `Response::chunk`, and the WebSocket client is
//! tungstenite's blocking one on a blocking thread.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tollgate_testkit::reqwest::{self, Version};
use tollgate_testkit::serde_json::{self, Value};
use tollgate_testkit::tokio_tungstenite::tungstenite::{self, Message};
use tollgate_testkit::{raw, tls, upstream, TlsFiles};

const RECORDS: Duration = Duration::from_secs(5);

/// A client speaking HTTP/2 with prior knowledge (h2c on the plain listener).
fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

/// The gateway's HTTP/1.1 client and an h2c one, each with its version.
fn both_protocols(gw: &tollgate_testkit::Gateway) -> [(reqwest::Client, Version); 2] {
    [
        (gw.client(), Version::HTTP_11),
        (h2c_client(), Version::HTTP_2),
    ]
}

/// A client for `https://NAME:PORT` on the gateway's TLS listener, trusting only `files`.
fn https_client(files: &TlsFiles, name: &str, addr: SocketAddr) -> reqwest::ClientBuilder {
    files.client_builder().resolve(name, addr)
}

fn https_url(name: &str, addr: SocketAddr, path: &str) -> String {
    format!("https://{name}:{}{path}", addr.port())
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk-size line");
        let line = std::str::from_utf8(&body[..line_end]).expect("an ASCII chunk-size line");
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).expect("a hex chunk size");
        body = &body[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[tokio::test]
async fn sse_events_reach_the_client_as_they_are_sent() {
    let up = upstream::sse(5, Duration::from_millis(300));
    let gw = common::gateway()
        .config(&common::simple(&[up.url()], "", ""))
        .start()
        .await;
    let started = Instant::now();
    let mut res = gw.client().get(gw.url("/events")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");

    let mut buffer = String::new();
    let mut events: Vec<(String, Duration)> = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), res.chunk())
        .await
        .expect("the stream stalled")
        .unwrap()
    {
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let event = buffer[..end].to_string();
            buffer.drain(..end + 2);
            events.push((event, started.elapsed()));
        }
    }
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        names,
        [
            "data: event 1",
            "data: event 2",
            "data: event 3",
            "data: event 4",
            "data: event 5"
        ]
    );
    assert!(buffer.is_empty(), "left over: {buffer:?}");
    let first = events[0].1;
    let last = events[4].1;
    // The upstream needs 1.2 s for all five; a buffering gateway delivers event 1 after that.
    assert!(
        first < Duration::from_secs(1),
        "event 1 arrived after {first:?}"
    );
    assert!(
        last - first >= Duration::from_millis(900),
        "events were bunched: first {first:?}, last {last:?}"
    );

    let records = gw.wait_for_records(1, RECORDS).await;
    assert_eq!(records[0]["status"], 200);
    assert_eq!(records[0]["upstream_status"], 200);
    assert_eq!(records[0]["outcome"], "allowed");
    let sent: usize = (1..=5).map(|n| format!("data: event {n}\n\n").len()).sum();
    assert_eq!(records[0]["bytes_out"], sent);
}

#[tokio::test]
async fn chunked_upload_streams_to_the_upstream_intact() {
    let up = upstream::echo("echo");
    let gw = common::gateway()
        .config(&common::simple(&[up.url()], "", ""))
        .start()
        .await;

    // A hand-written chunked request, sent chunk by chunk.
    let mut stream = raw::connect(gw.proxy_addr()).await;
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\
              Content-Type: text/plain\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut expected = String::new();
    for i in 0..8 {
        let chunk = ((b'a' + i as u8) as char).to_string().repeat(500 + i * 777);
        expected.push_str(&chunk);
        stream
            .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        stream.flush().await.unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let res = raw::read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(res.status, Some(200), "{}", res.head);
    let body = match res.header("transfer-encoding") {
        Some(te) if te.eq_ignore_ascii_case("chunked") => dechunk(&res.body),
        _ => res.body.clone(),
    };
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["method"], "POST");
    assert_eq!(doc["body_len"], expected.len());
    assert_eq!(doc["body"], expected.as_str());
    assert_eq!(
        doc["headers"]["transfer-encoding"], "chunked",
        "the gateway should stream the body on, not buffer it: {doc}"
    );

    // A larger streamed body (reqwest sends a file chunked, without a length).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upload.bin");
    let content = upstream::download_content(3 * 1024 * 1024 + 17);
    std::fs::write(&path, &content).unwrap();
    let file = tokio::fs::File::open(&path).await.unwrap();
    let res = gw
        .client()
        .put(gw.url("/upload"))
        .body(reqwest::Body::from(file))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["body_len"], content.len());

    let records = gw.wait_for_records(2, RECORDS).await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["bytes_in"], expected.len());
    assert_eq!(records[1]["bytes_in"], content.len());
    for record in &records {
        assert_eq!(record["status"], 200);
        assert_eq!(record["outcome"], "allowed");
    }
}

#[tokio::test]
async fn long_download_arrives_complete_and_exact() {
    const LEN: usize = 2 * 1024 * 1024 + 5;
    let up = upstream::download(LEN, 64 * 1024, Duration::from_millis(5));
    let gw = common::gateway()
        .config(&common::simple(&[up.url()], "", ""))
        .start()
        .await;
    let mut res = gw.client().get(gw.url("/file")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-length"], LEN.to_string().as_str());
    let mut received = Vec::with_capacity(LEN);
    let mut chunks = 0;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), res.chunk())
        .await
        .expect("the download stalled")
        .unwrap()
    {
        received.extend_from_slice(&chunk);
        chunks += 1;
    }
    assert_eq!(received.len(), LEN);
    assert!(
        received == upstream::download_content(LEN),
        "the content differs"
    );
    assert!(chunks > 1);

    let records = gw.wait_for_records(1, RECORDS).await;
    assert_eq!(records[0]["bytes_out"], LEN);
    assert_eq!(records[0]["upstream_status"], 200);
}

#[tokio::test]
async fn websocket_messages_round_trip_through_the_gateway() {
    let up = upstream::websocket_echo();
    let gw = common::gateway()
        .config(&common::simple(&[up.url()], "", ""))
        .start()
        .await;
    let addr = gw.proxy_addr();
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let session = tokio::task::spawn_blocking(move || {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (mut ws, res) = tungstenite::client(format!("ws://{addr}/chat"), stream)
            .unwrap_or_else(|e| panic!("WebSocket handshake failed: {e}"));
        assert_eq!(res.status(), 101);
        assert!(res.headers().contains_key("x-request-id"));
        ws.send(Message::Text("hello".into())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::Text("hello".into()));
        ws.send(Message::Binary(vec![0, 1, 2, 255])).unwrap();
        assert_eq!(ws.read().unwrap(), Message::Binary(vec![0, 1, 2, 255]));
        ws.send(Message::Binary(big.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::Binary(big));
        ws.close(None).unwrap();
        loop {
            match ws.read() {
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!("closing the WebSocket failed: {e}"),
            }
        }
    });
    session.await.unwrap();

    let records = gw.wait_for_records(1, RECORDS).await;
    let record = &records[0];
    assert_eq!(record["status"], 101, "{record}");
    assert_eq!(record["upstream_status"], 101);
    assert_eq!(record["outcome"], "allowed");
    assert_eq!(record["api"], "api");
    assert_eq!(record["path"], "/chat");
    assert!(record["bytes_in"].as_u64().unwrap() > 100_000, "{record}");
    assert!(record["bytes_out"].as_u64().unwrap() > 100_000, "{record}");
}

#[tokio::test]
async fn http2_from_clients_and_to_h2c_upstreams() {
    let h1 = upstream::echo("h1");
    let h2 = upstream::h2c_echo("h2");
    let config = format!(
        r#"
services:
  - {{ name: h1, upstream: {{ targets: [{{ url: '{}' }}] }} }}
  - {{ name: h2, upstream: {{ targets: [{{ url: '{}' }}], protocol: http2 }} }}
apis:
  - {{ name: h1, service: h1, match: {{ paths: [/h1] }} }}
  - {{ name: h2, service: h2, match: {{ paths: [/h2] }} }}
"#,
        h1.url(),
        h2.url()
    );
    let gw = common::gateway().config(&config).start().await;

    // h2c with prior knowledge on the plain listener.
    let h2_client = h2c_client();
    let res = h2_client.get(gw.url("/h1/x?q=1")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), Version::HTTP_2);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["upstream"], "h1");
    assert_eq!(doc["path"], "/h1/x");
    assert_eq!(doc["query"], "q=1");

    // An upstream that speaks only h2c, from an HTTP/1.1 client and an HTTP/2 one.
    let res = gw.client().get(gw.url("/h2/y")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), Version::HTTP_11);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["upstream"], "h2");
    assert_eq!(doc["version"], "HTTP/2.0");
    let res = h2_client
        .post(gw.url("/h2/z"))
        .body("over two hops of HTTP/2")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["version"], "HTTP/2.0");
    assert_eq!(doc["body"], "over two hops of HTTP/2");

    let records = gw.wait_for_records(3, RECORDS).await;
    for record in &records {
        assert_eq!(record["status"], 200, "{record}");
        assert_eq!(record["upstream_status"], 200);
    }
}

#[tokio::test]
async fn tls_serves_http1_and_http2_by_alpn() {
    let up = upstream::echo("a");
    let files = tls::self_signed(&["localhost"]);
    let gw = common::gateway()
        .config(&common::simple(&[up.url()], "", ""))
        .tls(&files)
        .start()
        .await;
    let addr = gw.tls_addr();
    let url = https_url("localhost", addr, "/secure");

    let h1 = https_client(&files, "localhost", addr)
        .http1_only()
        .build()
        .unwrap();
    let res = h1.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), Version::HTTP_11);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["path"], "/secure");
    assert_eq!(doc["headers"]["x-forwarded-proto"], "https");

    let h2 = https_client(&files, "localhost", addr).build().unwrap();
    let res = h2.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), Version::HTTP_2, "ALPN should pick h2");
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["upstream"], "a");

    // No HSTS unless configured.
    let res = h1.get(&url).send().await.unwrap();
    assert!(!res.headers().contains_key("strict-transport-security"));
}

#[tokio::test]
async fn hsts_is_sent_on_tls_responses_only() {
    let up = upstream::echo("a");
    let files = tls::self_signed(&["localhost"]);
    let config = format!(
        "listen: {{ tls: {{ hsts: 1y }} }}\n{}",
        common::simple(&[up.url()], "", "")
    );
    let gw = common::gateway().config(&config).tls(&files).start().await;
    let client = https_client(&files, "localhost", gw.tls_addr())
        .build()
        .unwrap();

    let res = client
        .get(https_url("localhost", gw.tls_addr(), "/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["strict-transport-security"],
        "max-age=31536000"
    );

    let res = gw.client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        !res.headers().contains_key("strict-transport-security"),
        "HSTS on a plain-HTTP response"
    );
}

#[tokio::test]
async fn hsts_is_sent_on_the_gateways_own_tls_answers() {
    let up = upstream::echo("a");
    let files = tls::self_signed(&["localhost"]);
    let config = format!(
        "listen: {{ tls: {{ hsts: 1y }} }}\nservices: [{{ name: a, upstream: {{ targets: [{{ url: '{}' }}] }} }}]\n\
         apis: [{{ name: only, service: a, match: {{ paths: [/only] }} }}]\n",
        up.url()
    );
    let gw = common::gateway().config(&config).tls(&files).start().await;
    let client = https_client(&files, "localhost", gw.tls_addr())
        .build()
        .unwrap();
    let res = client
        .get(https_url("localhost", gw.tls_addr(), "/elsewhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.headers()
            .get("strict-transport-security")
            .map(|v| v.to_str().unwrap()),
        Some("max-age=31536000"),
        "an error answered over TLS lacks HSTS"
    );
}

#[tokio::test]
async fn redirect_http_sends_plain_clients_to_https() {
    let up = upstream::echo("a");
    let files = tls::self_signed(&["localhost"]);
    let config = format!(
        "listen: {{ tls: {{ redirect_http: true, hsts: 1y }} }}\n{}",
        common::simple(&[up.url()], "", "")
    );
    let gw = common::gateway().config(&config).tls(&files).start().await;
    let tls_port = gw.tls_addr().port();

    let res = gw
        .client()
        .get(gw.url("/orders/7?x=1"))
        .header("host", "shop.example.com:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 308);
    assert_eq!(
        res.headers()["location"],
        format!("https://shop.example.com:{tls_port}/orders/7?x=1").as_str()
    );
    assert!(!res.headers().contains_key("strict-transport-security"));
    assert_eq!(up.hits(), 0, "a redirected request went upstream");

    // The TLS listener still serves, with HSTS.
    let client = https_client(&files, "localhost", gw.tls_addr())
        .build()
        .unwrap();
    let res = client
        .get(https_url("localhost", gw.tls_addr(), "/orders/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    assert_eq!(up.hits(), 1);

    let records = gw.wait_for_records(2, RECORDS).await;
    assert_eq!(records[0]["status"], 308);
    assert_eq!(records[0]["upstream_status"], Value::Null);
    assert_eq!(records[1]["status"], 200);
    assert_eq!(records[1]["upstream_status"], 200);
}

#[tokio::test]
async fn sni_selects_the_certificate() {
    let up = upstream::echo("a");
    let a = tls::self_signed(&["a.test"]);
    let b = tls::self_signed(&["b.test"]);
    let gw = common::gateway()
        .config(&common::simple(&[up.url()], "", ""))
        .tls(&a)
        .tls(&b)
        .start()
        .await;
    let addr = gw.tls_addr();

    // A client trusting only B reaches b.test, and not a.test (which gets A).
    let only_b = https_client(&b, "b.test", addr)
        .resolve("a.test", addr)
        .build()
        .unwrap();
    let res = only_b
        .get(https_url("b.test", addr, "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let refused = only_b.get(https_url("a.test", addr, "/")).send().await;
    assert!(
        refused.is_err(),
        "a.test was served B's certificate: {refused:?}"
    );
    let only_a = https_client(&a, "a.test", addr).build().unwrap();
    let res = only_a
        .get(https_url("a.test", addr, "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // The peer certificate itself, per name.
    let inspecting = reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .resolve("a.test", addr)
        .resolve("b.test", addr)
        .build()
        .unwrap();
    for (name, files) in [("a.test", &a), ("b.test", &b)] {
        let res = inspecting
            .get(https_url(name, addr, "/"))
            .send()
            .await
            .unwrap();
        let info = res
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .expect("TLS info");
        assert_eq!(
            info.peer_certificate(),
            Some(files.cert_der.as_slice()),
            "wrong certificate for {name}"
        );
    }
}

/// An upstream answer's headers reach the client the same over the lean
/// HTTP/1.1 server (which writes the lines no one reads as they came) and
/// over HTTP/2 (hyper, which takes them all in a map): each once, repeated
/// ones kept, the gateway's `X-Request-Id` in place of the upstream's and
/// the upstream's `Date` and `nosniff` in place of the gateway's.
#[tokio::test]
async fn upstream_headers_reach_http1_and_http2_clients_alike() {
    use tollgate_testkit::{body, http, Upstream};
    let up = Upstream::start(|_req| async {
        http::Response::builder()
            .header("server", "upstream/1.0")
            .header("x-custom", "kept")
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .header("x-request-id", "from-the-upstream")
            .header("x-content-type-options", "nosniff-upstream")
            .header("link", "</next>; rel=next")
            .body(body::full("twelve bytes"))
            .unwrap()
    });
    let gw = common::gateway()
        .config(&common::simple(&[up.url()], "", ""))
        .start()
        .await;

    for (client, version) in both_protocols(&gw) {
        let res = client.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.version(), version);
        let h = res.headers().clone();
        assert_eq!(h["server"], "upstream/1.0", "{version:?}");
        assert_eq!(h["x-custom"], "kept");
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"], "{version:?}");
        let ids: Vec<_> = h.get_all("x-request-id").iter().collect();
        assert_eq!(ids.len(), 1, "{version:?}");
        assert_ne!(ids[0], "from-the-upstream");
        assert_eq!(h.get_all("x-content-type-options").iter().count(), 1);
        assert_eq!(h["x-content-type-options"], "nosniff-upstream");
        assert_eq!(h["link"], "</next>; rel=next");
        assert_eq!(h.get_all("date").iter().count(), 1, "{version:?}");
        assert_eq!(res.text().await.unwrap(), "twelve bytes");
    }

    // On the wire: one `Date`, one `Content-Length`, nothing hop-by-hop.
    let raw = raw::send(
        gw.proxy_addr(),
        "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw.status, Some(200), "{}", raw.head);
    let lower = raw.head.to_ascii_lowercase();
    let count = |name: &str| lower.lines().filter(|l| l.starts_with(name)).count();
    assert_eq!(count("date:"), 1, "{}", raw.head);
    assert_eq!(count("content-length:"), 1, "{}", raw.head);
    assert_eq!(count("x-request-id:"), 1, "{}", raw.head);
    assert_eq!(
        count("keep-alive:") + count("transfer-encoding:"),
        0,
        "{}",
        raw.head
    );
    assert_eq!(raw.body, b"twelve bytes");
}

/// An answer whose headers are all passed on as lines gets the gateway's
/// own (`X-Request-Id`, `RateLimit-*`, `nosniff`) as lines too: once each,
/// over HTTP/1.1 and HTTP/2 alike.
#[tokio::test]
async fn the_gateways_headers_join_an_answer_passed_on_as_lines() {
    use tollgate_testkit::{body, http, Upstream};
    let up = Upstream::start(|_req| async {
        http::Response::builder()
            .header("server", "upstream/1.0")
            .header("set-cookie", "a=1")
            .body(body::full("ok"))
            .unwrap()
    });
    let api_extra = ", policies: { rate_limit: [{ limit: 100, window: 1m, by: ip }] }";
    let gw = common::gateway()
        .config(&common::simple(&[up.url()], api_extra, ""))
        .start()
        .await;
    let mut remaining = Vec::new();
    for (client, version) in both_protocols(&gw) {
        let res = client.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(res.version(), version);
        let h = res.headers().clone();
        for name in [
            "server",
            "set-cookie",
            "date",
            "x-request-id",
            "x-content-type-options",
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
        ] {
            assert_eq!(
                h.get_all(name).iter().count(),
                1,
                "{name} {version:?}: {h:?}"
            );
        }
        assert_eq!(h["ratelimit-limit"], "100");
        assert_eq!(h["x-content-type-options"], "nosniff");
        remaining.push(h["ratelimit-remaining"].to_str().unwrap().to_owned());
        assert_eq!(res.text().await.unwrap(), "ok");
    }
    assert_eq!(remaining, ["99", "98"]);
}

/// With a `cors` policy the passed-on lines go back into the answer's map
/// before the policy runs, so it sees the upstream's own CORS headers: an
/// upstream's `Access-Control-Allow-Origin: *` is replaced for an allowed
/// origin and removed for any other, its `Vary: Origin` is not doubled,
/// and its other headers stay, over HTTP/1.1 and HTTP/2 alike.
#[tokio::test]
async fn cors_sees_the_upstream_headers_passed_on_as_lines() {
    use tollgate_testkit::{body, http, Upstream};
    let up = Upstream::start(|_req| async {
        http::Response::builder()
            .header("access-control-allow-origin", "*")
            .header("vary", "origin")
            .header("x-custom", "kept")
            .body(body::full("ok"))
            .unwrap()
    });
    let api_extra = r#", policies: { cors: { origins: ["https://app.example.com"] } }"#;
    let gw = common::gateway()
        .config(&common::simple(&[up.url()], api_extra, ""))
        .start()
        .await;
    for (client, version) in both_protocols(&gw) {
        let get = |origin: &'static str| client.get(gw.url("/x")).header("origin", origin).send();
        let h = get("https://app.example.com")
            .await
            .unwrap()
            .headers()
            .clone();
        let origins: Vec<_> = h.get_all("access-control-allow-origin").iter().collect();
        assert_eq!(origins, ["https://app.example.com"], "{version:?}");
        assert_eq!(
            h.get_all("vary").iter().collect::<Vec<_>>(),
            ["origin"],
            "{version:?}"
        );
        assert_eq!(h["x-custom"], "kept", "{version:?}");

        let h = get("https://elsewhere.example")
            .await
            .unwrap()
            .headers()
            .clone();
        assert!(
            !h.contains_key("access-control-allow-origin"),
            "{version:?}: {h:?}"
        );
        assert_eq!(h["x-custom"], "kept", "{version:?}");
    }
}
