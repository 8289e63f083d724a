//! The lean HTTP/1.1 server (`tollgate_proxy::h1_server`) and its hand-over
//! to hyper, on raw sockets: pipelining, requests with bodies in the middle
//! of a connection, HTTP/1.0, heads that come in pieces, `HEAD`, `Date`,
//! and a drain that does not wait for idle keep-alive connections.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_testkit::serde_json::{self, Value};
use tollgate_testkit::{raw, upstream, Gateway};

const WAIT: Duration = Duration::from_secs(5);

async fn echo_gateway() -> (upstream::Upstream, Gateway) {
    let echo = upstream::echo("echo");
    let gw = common::gateway()
        .config(&common::simple(&[echo.url()], "", ""))
        .start()
        .await;
    (echo, gw)
}

/// Splits what a connection received into answers framed by `Content-Length`:
/// (head, body) pairs.
fn answers(mut received: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while !received.is_empty() {
        let end = received
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| {
                panic!(
                    "an unfinished head: {:?}",
                    String::from_utf8_lossy(received)
                )
            });
        let head = String::from_utf8_lossy(&received[..end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no Content-Length in {head}"));
        let body = received[end + 4..end + 4 + length].to_vec();
        received = &received[end + 4 + length..];
        out.push((head, body));
    }
    out
}

/// Reads one answer framed by `Content-Length` from a kept-alive connection.
/// Sends `request` whole and reads its answer's JSON body.
async fn ask(stream: &mut TcpStream, request: &[u8]) -> Value {
    stream.write_all(request).await.unwrap();
    read_answer(stream).await.1
}

async fn read_answer(stream: &mut TcpStream) -> (String, Value) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("a readable connection");
        assert!(n > 0, "closed before a whole answer: {received:?}");
        received.extend_from_slice(&buf[..n]);
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .expect("a Content-Length");
            if received.len() >= end + 4 + length {
                assert_eq!(received.len(), end + 4 + length, "bytes after the answer");
                let body = serde_json::from_slice(&received[end + 4..]).unwrap();
                return (head, body);
            }
        }
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_close_when_asked() {
    let (echo, gw) = echo_gateway().await;
    let requests = "GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
                    GET /two?x=1 HTTP/1.1\r\nHost: a\r\n\r\n\
                    GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let res = raw::send(gw.proxy_addr(), requests, WAIT).await;
    assert!(
        res.closed,
        "the connection stays open after `Connection: close`"
    );
    let mut received = res.head.into_bytes();
    received.extend_from_slice(b"\r\n\r\n");
    received.extend_from_slice(&res.body);
    let answers = answers(&received);
    let paths: Vec<String> = answers
        .iter()
        .map(|(_, body)| {
            let doc: Value = serde_json::from_slice(body).unwrap();
            format!(
                "{}{}",
                doc["path"].as_str().unwrap(),
                doc["query"]
                    .as_str()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(paths, ["/one", "/two?x=1", "/three"]);
    assert!(
        answers[2].0.to_lowercase().contains("connection: close"),
        "{}",
        answers[2].0
    );
    assert!(
        !answers[0].0.to_lowercase().contains("connection: close"),
        "{}",
        answers[0].0
    );
    assert_eq!(echo.hits(), 3);
}

#[tokio::test]
async fn requests_with_bodies_in_the_middle_of_a_connection_are_served() {
    let (_echo, gw) = echo_gateway().await;
    let mut stream = raw::connect(gw.proxy_addr()).await;
    let before = ask(&mut stream, b"GET /before HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(before["path"], "/before");
    let upload = ask(
        &mut stream,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(upload["path"], "/upload");
    assert_eq!(upload["body"], "hello");
    // From here hyper serves the connection.
    let chunked = ask(&mut stream, b"PUT /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n").await;
    assert_eq!(chunked["body"], "abc");
    let after = ask(&mut stream, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(after["path"], "/after");
    // `Content-Length: 0` is a bodiless request, served as one.
    let zero = ask(
        &mut stream,
        b"DELETE /zero HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(zero["method"], "DELETE");
    assert_eq!(zero["body_len"], 0);
}

#[tokio::test]
async fn a_body_that_comes_after_its_head_is_served() {
    let (_echo, gw) = echo_gateway().await;
    let mut stream = raw::connect(gw.proxy_addr()).await;
    stream
        .write_all(b"POST /late HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(b" world").await.unwrap();
    let (_, late) = read_answer(&mut stream).await;
    assert_eq!(late["body"], "hello world");
    // A whole one on the same connection, then a bodiless one.
    let whole = ask(&mut stream, b"POST /whole HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /last HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(
        (whole["path"].as_str(), whole["body"].as_str()),
        (Some("/whole"), Some("abc"))
    );
    let (_, last) = read_answer(&mut stream).await;
    assert_eq!(last["path"], "/last");
}

#[tokio::test]
async fn a_head_that_comes_in_pieces_is_served() {
    let (_echo, gw) = echo_gateway().await;
    let mut stream = raw::connect(gw.proxy_addr()).await;
    for piece in [
        "GET /pie",
        "ces HTTP/1.1\r\nHo",
        "st: a\r\nX-Long: ",
        &"x".repeat(6000),
        "\r\n\r\n",
    ] {
        stream.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, doc) = read_answer(&mut stream).await;
    assert_eq!(doc["path"], "/pieces");
    assert_eq!(doc["headers"]["x-long"].as_str().unwrap().len(), 6000);
    // The next request on the connection, after the buffer grew.
    let next = ask(&mut stream, b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(next["path"], "/next");
}

#[tokio::test]
async fn http_1_0_requests_are_answered_and_closed() {
    let (_echo, gw) = echo_gateway().await;
    let res = raw::send(gw.proxy_addr(), "GET /old HTTP/1.0\r\n\r\n", WAIT).await;
    assert_eq!(res.status, Some(200), "{res:?}");
    assert!(res.head.starts_with("HTTP/1.0 200"), "{}", res.head);
    assert!(res.closed);
    let doc: Value = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(doc["path"], "/old");
}

#[tokio::test]
async fn head_answers_carry_the_upstreams_length_and_no_body() {
    let (_echo, gw) = echo_gateway().await;
    let mut stream = raw::connect(gw.proxy_addr()).await;
    stream
        .write_all(b"HEAD /same HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // The echo's HEAD answer says the length its GET body would have.
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        received.extend_from_slice(&buf[..n]);
    }
    let head = raw::RawResponse::parse(&received, false);
    assert_eq!(head.status, Some(200), "{head:?}");
    let length: usize = head.header("content-length").unwrap().parse().unwrap();
    assert!(length > 0, "{head:?}");
    assert!(head.body.is_empty(), "a HEAD answer with a body: {head:?}");
    // Nothing follows the head: the next answer starts right after it.
    stream
        .write_all(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (next_head, next) = read_answer(&mut stream).await;
    assert!(next_head.starts_with("http/1.1 200"), "{next_head}");
    assert_eq!(next["path"], "/next");
}

#[tokio::test]
async fn the_gateways_own_answers_carry_the_date() {
    let echo = upstream::echo("echo");
    let config = format!(
        "services:\n  - {{ name: svc, upstream: {{ targets: [{{ url: '{}' }}] }} }}\n\
         apis:\n  - {{ name: api, service: svc, match: {{ paths: [/api] }} }}\n",
        echo.url()
    );
    let gw = common::gateway().config(&config).start().await;
    let res = raw::send(
        gw.proxy_addr(),
        "GET /nowhere HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(res.status, Some(404), "{res:?}");
    assert!(res.body_text().contains("no_route"), "{res:?}");
    let date = res.header("date").expect("a Date header");
    let date = httpdate::parse_http_date(date).expect("an HTTP date");
    let skew = std::time::SystemTime::now()
        .duration_since(date)
        .unwrap_or_default();
    assert!(skew < Duration::from_secs(5), "{skew:?}");
}

#[tokio::test]
async fn a_drain_closes_idle_keep_alive_connections_at_once() {
    let (_echo, mut gw) = echo_gateway().await;
    let mut idle = raw::connect(gw.proxy_addr()).await;
    idle.write_all(b"GET /kept HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (_, doc) = read_answer(&mut idle).await;
    assert_eq!(doc["path"], "/kept");
    let signalled = tokio::time::Instant::now();
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "the drain waited {:?} for an idle connection",
        signalled.elapsed()
    );
    let closed = raw::read_until_close(&mut idle, WAIT).await;
    assert!(closed.closed && closed.head.is_empty(), "{closed:?}");
}

#[tokio::test]
async fn a_drain_lets_a_request_in_flight_finish_and_says_it_closes() {
    let slow = upstream::slow(Duration::from_millis(800));
    let mut gw = common::gateway()
        .config(&common::simple(&[slow.url()], "", ""))
        .start()
        .await;
    let mut stream = raw::connect(gw.proxy_addr()).await;
    stream
        .write_all(b"GET /in-flight HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    tollgate_testkit::eventually(WAIT, || async { slow.hits() >= 1 }).await;
    gw.sigterm();
    let res = raw::read_until_close(&mut stream, WAIT).await;
    assert_eq!(res.status, Some(200), "{res:?}");
    assert_eq!(res.header("connection"), Some("close"), "{res:?}");
    assert!(res.closed, "{res:?}");
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
}
