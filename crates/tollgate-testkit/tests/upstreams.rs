//! The testkit's own servers and helpers, checked with real sockets.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tollgate_testkit::{body, eventually, eventually_some, raw, tls, upstream, Upstream};

const SECOND: Duration = Duration::from_secs(1);

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn echo_describes_the_request() {
    let up = upstream::echo("orders");
    let res = client()
        .post(format!("{}/a/b?x=1&y=2", up.url()))
        .header("X-Tag", "one")
        .header("x-tag", "two")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["upstream"], "orders");
    assert_eq!(doc["method"], "POST");
    assert_eq!(doc["path"], "/a/b");
    assert_eq!(doc["query"], "x=1&y=2");
    assert_eq!(doc["version"], "HTTP/1.1");
    assert_eq!(doc["headers"]["x-tag"], "one, two");
    assert_eq!(doc["headers"]["host"], up.addr().to_string());
    assert_eq!(doc["body_len"], 5);
    assert_eq!(doc["body"], "hello");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn echo_leaves_out_large_bodies_and_reports_no_query_as_null() {
    let up = upstream::echo("big");
    let doc: Value = client()
        .put(up.url())
        .body(vec![b'x'; 70_000])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["body_len"], 70_000);
    assert!(doc.get("body").is_none());
    assert_eq!(doc["query"], Value::Null);
}

#[tokio::test]
async fn healthz_follows_set_healthy_and_is_not_a_hit() {
    let up = upstream::echo("a");
    let healthz = format!("{}/healthz", up.url());
    assert_eq!(client().get(&healthz).send().await.unwrap().status(), 200);
    up.set_healthy(false);
    assert_eq!(client().get(&healthz).send().await.unwrap().status(), 503);
    assert_eq!((up.hits(), up.health_checks()), (0, 2));
}

#[tokio::test]
async fn h2c_echo_speaks_http2_prior_knowledge() {
    let up = upstream::h2c_echo("h2");
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let doc: Value = h2
        .get(format!("{}/x", up.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (doc["upstream"].as_str(), doc["version"].as_str()),
        (Some("h2"), Some("HTTP/2.0"))
    );
    // HTTP/1.1 is not served.
    assert!(client().get(up.url()).send().await.is_err());
}

#[tokio::test]
async fn sse_sends_events_with_the_gap_then_ends() {
    let gap = Duration::from_millis(100);
    let up = upstream::sse(3, gap);
    let started = Instant::now();
    let res = client().get(up.url()).send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut stream = res.bytes_stream();
    let mut text = String::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        chunks += 1;
    }
    assert_eq!(text, "data: event 1\n\ndata: event 2\n\ndata: event 3\n\n");
    assert!(chunks >= 2, "the events were streamed, not buffered");
    assert!(
        started.elapsed() >= 2 * gap,
        "two gaps separate three events"
    );
}

#[tokio::test]
async fn download_streams_the_documented_content() {
    let up = upstream::download(10_000, 3_000, Duration::from_millis(5));
    let res = client().get(up.url()).send().await.unwrap();
    assert_eq!(res.content_length(), Some(10_000));
    let bytes = res.bytes().await.unwrap();
    assert_eq!(
        bytes.as_ref(),
        upstream::download_content(10_000).as_slice()
    );
}

#[tokio::test]
async fn slow_answers_after_the_delay() {
    let up = upstream::slow(Duration::from_millis(200));
    let started = Instant::now();
    let res = client().get(up.url()).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn websocket_echo_round_trip() {
    let up = upstream::websocket_echo();
    let (mut ws, res) = tokio_tungstenite::connect_async(format!("ws://{}/chat", up.addr()))
        .await
        .unwrap();
    assert_eq!(res.status(), 101);
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("hello".into())
    );
    ws.send(Message::Binary(vec![0, 1, 2])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Binary(vec![0, 1, 2])
    );
    ws.close(None).await.unwrap();
    // A plain request gets the echo JSON.
    let doc: Value = client()
        .get(up.url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["upstream"], "websocket");
}

#[tokio::test]
async fn dropping_a_websocket_upstream_ends_its_sessions() {
    let up = upstream::websocket_echo();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", up.addr()))
        .await
        .unwrap();
    up.stop().await;
    let ended = tokio::time::timeout(5 * SECOND, ws.next()).await.unwrap();
    assert!(!matches!(
        ended,
        Some(Ok(Message::Text(_) | Message::Binary(_)))
    ));
}

#[tokio::test]
async fn custom_handler_and_stop() {
    let up = Upstream::start(|_req| async {
        http::Response::builder()
            .status(502)
            .body(body::full("nope"))
            .unwrap()
    });
    let addr = up.addr();
    let res = client().get(up.url()).send().await.unwrap();
    assert_eq!(
        (res.status().as_u16(), res.text().await.unwrap().as_str()),
        (502, "nope")
    );
    up.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn raw_send_parses_a_tiny_server_response() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 418 I'm a teapot\r\nX-Kind: Tea\r\nContent-Length: 2\r\n\r\nhi")
            .await
            .unwrap();
    });
    let res = raw::send(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 5 * SECOND).await;
    assert_eq!(res.status, Some(418));
    assert!(res.head.starts_with("HTTP/1.1 418 I'm a teapot"));
    assert_eq!(res.header("x-kind"), Some("Tea"));
    assert_eq!(res.body, b"hi");
    assert!(res.closed);
}

#[tokio::test]
async fn raw_send_reports_a_connection_left_open() {
    let up = upstream::echo("keepalive");
    let res = raw::send(
        up.addr(),
        "GET /k HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(res.status, Some(200));
    assert!(!res.closed);
    let doc: Value = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(doc["path"], "/k");
}

#[tokio::test]
async fn raw_connect_allows_dribbling_bytes() {
    let up = upstream::echo("dribble");
    let mut stream = raw::connect(up.addr()).await;
    for piece in [
        "GET /d HT",
        "TP/1.1\r\nHost: x\r\n",
        "Connection: close\r\n\r\n",
    ] {
        stream.write_all(piece.as_bytes()).await.unwrap();
    }
    let res = raw::read_until_close(&mut stream, 5 * SECOND).await;
    assert_eq!(res.status, Some(200));
    assert!(res.closed);
}

#[tokio::test]
async fn reset_and_closed_port_refuse_service() {
    let up = upstream::reset();
    let res = raw::send(up.addr(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 5 * SECOND).await;
    assert_eq!(res.status, None);
    assert!(res.closed);
    assert!(client().get(up.url()).send().await.is_err());
    eventually(5 * SECOND, || async { up.hits() >= 2 }).await;

    let closed = upstream::closed_port();
    assert!(tokio::net::TcpStream::connect(closed).await.is_err());
}

#[tokio::test]
async fn self_signed_files_and_client() {
    let files = tls::self_signed(&["localhost", "127.0.0.1"]);
    let pem = std::fs::read_to_string(&files.cert_pem_path).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(std::fs::read_to_string(&files.key_pem_path)
        .unwrap()
        .contains("PRIVATE KEY"));
    assert!(!files.cert_der.is_empty() && !files.key_der.is_empty());
    let _client = files.client();
}

#[tokio::test]
async fn eventually_returns_once_true() {
    let started = Instant::now();
    eventually(5 * SECOND, || async move {
        started.elapsed() > Duration::from_millis(50)
    })
    .await;
    let value = eventually_some(5 * SECOND, || async { Some(7) }).await;
    assert_eq!(value, 7);
}

#[tokio::test]
#[should_panic(expected = "still false after")]
async fn eventually_panics_at_the_deadline() {
    eventually(Duration::from_millis(50), || async { false }).await;
}
