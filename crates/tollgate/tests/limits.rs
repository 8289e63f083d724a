//! Request limits, timeouts and HTTP/1.1 framing (request smuggling), through
//! the real binary: oversized and malformed requests go over raw TCP, and every
//! refusal must leave exactly one access record and never reach the upstream.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tollgate_testkit::serde_json::{self, Value};
use tollgate_testkit::{raw, upstream, Gateway, Upstream};

/// How long a raw exchange may take before the test gives up on the server closing.
const RAW_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to wait for an access record.
const RECORD_DEADLINE: Duration = Duration::from_secs(5);

/// `limits` (a YAML line, may be empty) and one API, `/api`, in front of `upstream`.
/// Other paths have no route, which the record markers use.
fn config(upstream: &Upstream, limits: &str) -> String {
    format!(
        "{limits}\n\
         services: [{{ name: svc, upstream: {{ targets: [{{ url: '{}' }}] }} }}]\n\
         apis: [{{ name: api, service: svc, match: {{ paths: [/api] }} }}]\n",
        upstream.url()
    )
}

/// An upstream that answers like `echo` and also counts the requests whose body
/// it received completely (`hits` counts every request head it saw).
fn completing_upstream() -> (Upstream, Arc<AtomicU64>) {
    let completed = Arc::new(AtomicU64::new(0));
    let counter = completed.clone();
    let up = Upstream::start(move |req| {
        let counter = counter.clone();
        async move {
            let res = upstream::echo_response("completing", req).await;
            if res.status().is_success() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            res
        }
    });
    (up, completed)
}

/// Reads the access log in steps: each step ends with a marker request (a 404
/// on a path no API matches) so that "exactly one record" can be checked
/// without sleeping.
struct Records<'a> {
    gw: &'a Gateway,
    seen: usize,
    markers: usize,
}

impl<'a> Records<'a> {
    fn new(gw: &'a Gateway) -> Self {
        Records {
            gw,
            seen: 0,
            markers: 0,
        }
    }

    /// The records written since the last call, the marker's left out.
    async fn step(&mut self) -> Vec<Value> {
        self.markers += 1;
        let marker = format!("/marker-{}", self.markers);
        let res = self
            .gw
            .client()
            .get(self.gw.url(&marker))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "marker request {marker}");
        let records = tollgate_testkit::eventually_some(RECORD_DEADLINE, || async {
            let records = self.gw.access_records().await;
            records[self.seen.min(records.len())..]
                .iter()
                .any(|r| r["path"] == marker.as_str())
                .then_some(records)
        })
        .await;
        let new = records[self.seen..]
            .iter()
            .filter(|r| r["path"] != marker.as_str())
            .cloned()
            .collect();
        self.seen = records.len();
        new
    }

    /// Asserts that exactly one record was written since the last step, for a
    /// refused request with `status` and `reason`.
    async fn expect_one_error(&mut self, case: &str, status: u16, reason: &str) {
        let records = self.step().await;
        assert_eq!(
            records.len(),
            1,
            "{case}: expected exactly one record, got {records:#?}"
        );
        let record = &records[0];
        assert_eq!(record["status"], status, "{case}: {record}");
        assert_eq!(record["outcome"], "error", "{case}: {record}");
        assert_eq!(record["reason"], reason, "{case}: {record}");
    }

    /// Asserts that exactly one record was written since the last step, with `status`.
    async fn expect_one(&mut self, case: &str, status: u16) {
        let records = self.step().await;
        assert_eq!(
            records.len(),
            1,
            "{case}: expected exactly one record, got {records:#?}"
        );
        assert_eq!(records[0]["status"], status, "{case}: {}", records[0]);
    }
}

/// The JSON error body of a raw response.
fn error_code(res: &raw::RawResponse) -> String {
    let body: Value = serde_json::from_slice(&res.body)
        .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {res:?}"));
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn uri_longer_than_max_uri_is_414_json_and_never_forwarded() {
    let up = upstream::echo("up");
    let gw = common::gateway().config(&config(&up, "")).start().await;
    let mut records = Records::new(&gw);
    let client = gw.client();

    // The default max_uri is 8KiB of request target.
    let too_long = format!("/api/{}", "a".repeat(8192 - "/api/".len() + 1));
    assert_eq!(too_long.len(), 8193);
    let res = client.get(gw.url(&too_long)).send().await.unwrap();
    assert_eq!(res.status(), 414);
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "uri_too_long", "{body}");
    assert_eq!(up.hits(), 0, "a refused request reached the upstream");
    records
        .expect_one_error("8193-byte URI", 414, "uri_too_long")
        .await;

    // The query counts too.
    let long_query = format!("/api/q?{}", "b".repeat(8192));
    let res = client.get(gw.url(&long_query)).send().await.unwrap();
    assert_eq!(res.status(), 414);
    assert_eq!(up.hits(), 0, "a refused request reached the upstream");
    records
        .expect_one_error("long query", 414, "uri_too_long")
        .await;

    // Exactly at the limit is served.
    let at_limit = &too_long[..8192];
    let res = client.get(gw.url(at_limit)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.hits(), 1);
    records.expect_one("8192-byte URI", 200).await;
}

/// A request with `count` headers in all (Host included), closing after the response.
fn with_headers(count: usize) -> String {
    let mut request = String::from("GET /api/headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 2..count {
        request.push_str(&format!("X-Header-{i}: {i}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// A request whose head is about `bytes` long, closing after the response.
fn with_header_bytes(bytes: usize) -> String {
    let start = "GET /api/big HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: ";
    let filler = bytes.saturating_sub(start.len() + 4);
    format!("{start}{}\r\n\r\n", "v".repeat(filler))
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_431_with_default_limits() {
    let up = upstream::echo("up");
    let gw = common::gateway().config(&config(&up, "")).start().await;
    let mut records = Records::new(&gw);

    // Defaults: max_headers 100, max_header_bytes 32KiB.
    for (case, request) in [
        ("101 headers", with_headers(101)),
        ("150 headers", with_headers(150)),
        ("33KiB of headers", with_header_bytes(33 * 1024)),
        ("64KiB of headers", with_header_bytes(64 * 1024)),
    ] {
        let res = raw::send(gw.proxy_addr(), &request, RAW_TIMEOUT).await;
        assert_eq!(res.status, Some(431), "{case}: {res:?}");
        assert!(res.closed, "{case}: the connection stayed open");
        assert_eq!(
            up.hits(),
            0,
            "{case}: a refused request reached the upstream"
        );
        records
            .expect_one_error(case, 431, "headers_too_large")
            .await;
    }

    // Well under the defaults is served.
    for (case, request) in [
        ("50 headers", with_headers(50)),
        ("24KiB of headers", with_header_bytes(24 * 1024)),
    ] {
        let before = up.hits();
        let res = raw::send(gw.proxy_addr(), &request, RAW_TIMEOUT).await;
        assert_eq!(res.status, Some(200), "{case}: {}", res.head);
        assert_eq!(up.hits(), before + 1, "{case}");
        records.expect_one(case, 200).await;
    }
}

#[tokio::test]
async fn max_headers_and_max_header_bytes_are_configurable() {
    let up = upstream::echo("up");
    let gw = common::gateway()
        .config(&config(
            &up,
            "limits: { max_headers: 20, max_header_bytes: 8KiB }",
        ))
        .start()
        .await;
    let mut records = Records::new(&gw);

    for (case, request, status) in [
        ("20 headers", with_headers(20), 200),
        ("21 headers", with_headers(21), 431),
        ("7KiB of headers", with_header_bytes(7 * 1024), 200),
        ("9KiB of headers", with_header_bytes(9 * 1024), 431),
    ] {
        let before = up.hits();
        let res = raw::send(gw.proxy_addr(), &request, RAW_TIMEOUT).await;
        assert_eq!(res.status, Some(status), "{case}: {}", res.head);
        assert!(res.closed, "{case}: the connection stayed open");
        if status == 200 {
            assert_eq!(up.hits(), before + 1, "{case}");
            records.expect_one(case, 200).await;
        } else {
            assert_eq!(
                up.hits(),
                before,
                "{case}: a refused request reached the upstream"
            );
            records
                .expect_one_error(case, 431, "headers_too_large")
                .await;
        }
    }
}

#[tokio::test]
async fn content_length_over_max_body_is_413_before_the_body_is_read() {
    let up = upstream::echo("up");
    let gw = common::gateway()
        .config(&config(&up, "limits: { max_body: 1KiB }"))
        .start()
        .await;
    let mut records = Records::new(&gw);

    // Only the head is sent: the answer must not wait for the body, and must
    // not invite it with a 100 Continue either.
    for (case, request) in [
        (
            "Content-Length 1025",
            "POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n",
        ),
        (
            "Content-Length 1025 with Expect: 100-continue",
            "POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\nExpect: 100-continue\r\n\r\n",
        ),
        (
            "Content-Length 10GiB",
            "PUT /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10737418240\r\n\r\n",
        ),
    ] {
        let res = raw::send(gw.proxy_addr(), request, RAW_TIMEOUT).await;
        assert_eq!(res.status, Some(413), "{case}: {res:?}");
        assert_eq!(error_code(&res), "payload_too_large", "{case}");
        assert!(res.closed, "{case}: the connection stayed open with an unread body");
        assert_eq!(up.hits(), 0, "{case}: a refused request reached the upstream");
        records.expect_one_error(case, 413, "payload_too_large").await;
    }

    // Exactly max_body is served.
    let res = gw
        .client()
        .post(gw.url("/api/upload"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["body_len"], 1024);
    records.expect_one("Content-Length 1024", 200).await;
}

/// A chunked request of `chunks` chunks of 512 bytes, closing after the response.
fn chunked_upload(chunks: usize) -> Vec<u8> {
    let mut request =
        b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..chunks {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b'y'; 512]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

#[tokio::test]
async fn chunked_body_growing_past_max_body_is_413() {
    let (up, completed) = completing_upstream();
    let gw = common::gateway()
        .config(&config(&up, "limits: { max_body: 1KiB }"))
        .start()
        .await;
    let mut records = Records::new(&gw);

    let res = raw::send(gw.proxy_addr(), chunked_upload(3), RAW_TIMEOUT).await;
    assert_eq!(res.status, Some(413), "{res:?}");
    assert_eq!(error_code(&res), "payload_too_large");
    assert!(res.closed, "the connection stayed open");
    assert_eq!(
        completed.load(Ordering::SeqCst),
        0,
        "the upstream got the whole oversized body"
    );
    records
        .expect_one_error("1536 chunked bytes", 413, "payload_too_large")
        .await;

    // Exactly max_body, chunked, is served.
    let res = raw::send(gw.proxy_addr(), chunked_upload(2), RAW_TIMEOUT).await;
    assert_eq!(res.status, Some(200), "{}", res.head);
    let v: Value = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(v["body_len"], 1024);
    assert_eq!(completed.load(Ordering::SeqCst), 1);
    records.expect_one("1024 chunked bytes", 200).await;
}

/// Connects, sends `sent` (the start of a head, or nothing), and checks the
/// gateway closes the connection once `header_timeout` (1 s) has passed,
/// not before, and sends nothing upstream.
async fn closed_by_header_timeout(sent: &[u8]) {
    let up = upstream::echo("up");
    let gw = common::gateway()
        .config(&config(&up, "limits: { header_timeout: 1s }"))
        .start()
        .await;

    let started = Instant::now();
    let mut stream = raw::connect(gw.proxy_addr()).await;
    stream.write_all(sent).await.unwrap();
    let res = raw::read_until_close(&mut stream, Duration::from_secs(4)).await;
    let elapsed = started.elapsed();
    assert!(res.closed, "still open after {elapsed:?}: {res:?}");
    assert!(res.status.is_none_or(|s| s == 408), "{res:?}");
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed after only {elapsed:?}"
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn header_timeout_closes_a_connection_that_never_finishes_its_head() {
    closed_by_header_timeout(b"GET /api/x HTTP/1.1\r\n").await;
}

/// The first head's clock runs from the connection's start.
#[tokio::test]
async fn header_timeout_closes_a_new_connection_that_sends_nothing() {
    closed_by_header_timeout(b"").await;
}

#[tokio::test]
async fn header_timeout_is_not_extended_by_a_dribbling_client() {
    let up = upstream::echo("up");
    let gw = common::gateway()
        .config(&config(&up, "limits: { header_timeout: 1s }"))
        .start()
        .await;

    let started = Instant::now();
    let deadline = started + Duration::from_secs(4);
    let mut stream = raw::connect(gw.proxy_addr()).await;
    stream.write_all(b"GET /api/x HTTP/1.1\r\n").await.unwrap();
    // One header line every 200ms: always active, never done.
    let mut pace = tokio::time::interval(Duration::from_millis(200));
    let mut buf = [0u8; 1024];
    let mut received = Vec::new();
    let closed = loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break true,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            },
            _ = pace.tick() => {
                if stream.write_all(b"X-Dribble: 1\r\n").await.is_err() {
                    break true;
                }
            }
            () = tokio::time::sleep_until(deadline) => break false,
        }
    };
    let elapsed = started.elapsed();
    let res = raw::RawResponse::parse(&received, closed);
    assert!(
        closed,
        "a dribbling client kept its connection for {elapsed:?}"
    );
    assert!(res.status.is_none_or(|s| s == 408), "{res:?}");
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed after only {elapsed:?}: {res:?}"
    );
    assert_eq!(up.hits(), 0);
}

/// Sends one request on `stream` and reads its whole answer (framed by
/// `Content-Length`), leaving the connection open.
async fn exchange(stream: &mut tokio::net::TcpStream, request: &str) -> raw::RawResponse {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(RAW_TIMEOUT, stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        received.extend_from_slice(&buf[..read]);
        let res = raw::RawResponse::parse(&received, read == 0);
        let whole = res.status.is_some()
            && res
                .header("content-length")
                .and_then(|len| len.parse::<usize>().ok())
                .is_some_and(|len| res.body.len() >= len);
        if whole || read == 0 {
            return res;
        }
    }
}

/// The head clock times heads, not what follows them: neither an upstream
/// slower than `header_timeout` nor a keep-alive wait longer than it closes
/// the connection (the wait is `idle_timeout`'s to bound, as nginx's
/// `keepalive_timeout` is).
#[tokio::test]
async fn header_timeout_times_only_the_head_not_the_answer_nor_the_keep_alive_wait() {
    let up = upstream::slow(Duration::from_millis(1500));
    let gw = common::gateway()
        .config(&config(&up, "limits: { header_timeout: 1s }"))
        .start()
        .await;

    let mut stream = raw::connect(gw.proxy_addr()).await;
    let request = "GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n";
    let first = exchange(&mut stream, request).await;
    assert_eq!(first.status, Some(200), "{first:?}");
    assert!(!first.closed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = exchange(&mut stream, request).await;
    assert_eq!(second.status, Some(200), "{second:?}");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn idle_timeout_closes_a_silent_keep_alive_connection() {
    let up = upstream::echo("up");
    // header_timeout stays at its default (10s), so only idle_timeout can close it in time.
    let gw = common::gateway()
        .config(&config(&up, "limits: { idle_timeout: 1s }"))
        .start()
        .await;

    let mut stream = raw::connect(gw.proxy_addr()).await;
    stream
        .write_all(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let res = raw::read_until_close(&mut stream, Duration::from_secs(4)).await;
    let elapsed = started.elapsed();
    assert_eq!(res.status, Some(200), "{res:?}");
    assert_ne!(
        res.header("connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("close"),
        "the response itself closed the connection"
    );
    assert!(
        res.closed,
        "an idle keep-alive connection is still open after {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed after only {elapsed:?}"
    );
    assert_eq!(up.hits(), 1);
    // The idle close is no request: only the one served is recorded.
    Records::new(&gw).expect_one("idle connection", 200).await;
}

/// Where a malformed request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {
    /// The head: answered 400 before routing, the upstream sees nothing.
    Head,
    /// The chunked body, after the head was accepted: the upstream may see the
    /// head but never a complete request, and the client never gets a 2xx.
    Body,
}

#[tokio::test]
async fn malformed_framing_is_400_and_never_reaches_the_upstream() {
    let (up, completed) = completing_upstream();
    let gw = common::gateway().config(&config(&up, "")).start().await;
    let mut records = Records::new(&gw);

    let head = |lines: &str| format!("POST /api/smuggle HTTP/1.1\r\nHost: x\r\n{lines}\r\n");
    // Left out because hyper accepts them, safely: bare LF line endings in the
    // head (the request is parsed as if they were CRLF) and
    // `Transfer-Encoding: gzip, chunked` (framed as chunked; the coding is
    // hop-by-hop and the body is re-framed upstream). Content-Length together
    // with Transfer-Encoding has its own test below.
    let cases: Vec<(&str, String, Refused)> = vec![
        (
            "duplicate differing Content-Length",
            head("Content-Length: 5\r\nContent-Length: 6\r\n") + "hello!",
            Refused::Head,
        ),
        (
            "Content-Length list",
            head("Content-Length: 5, 6\r\n") + "hello!",
            Refused::Head,
        ),
        (
            "Content-Length not a number",
            head("Content-Length: five\r\n") + "hello",
            Refused::Head,
        ),
        (
            "negative Content-Length",
            head("Content-Length: -5\r\n") + "hello",
            Refused::Head,
        ),
        (
            "signed Content-Length",
            head("Content-Length: +5\r\n") + "hello",
            Refused::Head,
        ),
        (
            "Content-Length overflowing u64",
            head("Content-Length: 99999999999999999999999\r\n"),
            Refused::Head,
        ),
        (
            "Transfer-Encoding without chunked",
            head("Transfer-Encoding: gzip\r\n") + "0\r\n\r\n",
            Refused::Head,
        ),
        (
            "Transfer-Encoding with chunked not last",
            head("Transfer-Encoding: chunked, gzip\r\n") + "0\r\n\r\n",
            Refused::Head,
        ),
        (
            "second Transfer-Encoding line without chunked",
            head("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n") + "0\r\n\r\n",
            Refused::Head,
        ),
        (
            "unknown Transfer-Encoding",
            head("Transfer-Encoding: xchunked\r\n") + "0\r\n\r\n",
            Refused::Head,
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            "POST /api/smuggle HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_string(),
            Refused::Head,
        ),
        (
            "obs-fold continuation line",
            head("X-Folded: a\r\n b\r\nContent-Length: 0\r\n"),
            Refused::Head,
        ),
        (
            "whitespace before the colon",
            head("Content-Length : 5\r\n") + "hello",
            Refused::Head,
        ),
        (
            "bare CR in a header value",
            head("X-A: a\rb\r\n"),
            Refused::Head,
        ),
        (
            "NUL in a header value",
            head("X-A: a\0b\r\n"),
            Refused::Head,
        ),
        ("space in a header name", head("X A: b\r\n"), Refused::Head),
        (
            "malformed chunk size",
            head("Transfer-Encoding: chunked\r\n") + "zz\r\nhello\r\n0\r\n\r\n",
            Refused::Body,
        ),
        (
            "chunk size overflowing u64",
            head("Transfer-Encoding: chunked\r\n") + "fffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
            Refused::Body,
        ),
        (
            "chunk data longer than its size",
            head("Transfer-Encoding: chunked\r\n") + "5\r\nhello, world\r\n0\r\n\r\n",
            Refused::Body,
        ),
        (
            "bare LF in chunked framing",
            head("Transfer-Encoding: chunked\r\n") + "5\nhello\n0\n\n",
            Refused::Body,
        ),
    ];

    let mut failures = Vec::new();
    for (case, request, refused) in &cases {
        let hits = up.hits();
        let res = raw::send(gw.proxy_addr(), request, RAW_TIMEOUT).await;
        let ok = match refused {
            Refused::Head => res.status == Some(400) && res.closed && up.hits() == hits,
            Refused::Body => matches!(res.status, Some(400) | None) && res.closed,
        };
        if !ok {
            failures.push(format!(
                "{case}: status {:?}, closed {}, upstream hits {} -> {}\n  {}",
                res.status,
                res.closed,
                hits,
                up.hits(),
                res.head.replace("\r\n", "\n  ")
            ));
        }
        assert_eq!(
            completed.load(Ordering::SeqCst),
            0,
            "{case}: the upstream got a complete request"
        );
        let records_now = records.step().await;
        let one_error = records_now.len() == 1
            && records_now[0]["status"] == 400
            && records_now[0]["outcome"] == "error"
            && records_now[0]["reason"] == "bad_request";
        if !one_error {
            failures.push(format!(
                "{case}: expected one 400 bad_request record, got {records_now:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400_and_closed() {
    let (up, completed) = completing_upstream();
    let gw = common::gateway().config(&config(&up, "")).start().await;
    let mut records = Records::new(&gw);

    // The classic CL.TE / TE.CL desync: a front end and a back end that frame
    // the body differently see a second, smuggled request in it.
    let smuggled = "GET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut failures = Vec::new();
    for (case, headers) in [
        (
            "Content-Length then Transfer-Encoding",
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "Transfer-Encoding then Content-Length",
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
        ),
    ] {
        let (hits, complete) = (up.hits(), completed.load(Ordering::SeqCst));
        let request =
            format!("POST /api/smuggle HTTP/1.1\r\nHost: x\r\n{headers}\r\n0\r\n\r\n{smuggled}");
        let res = raw::send(gw.proxy_addr(), &request, RAW_TIMEOUT).await;
        let responses = 1 + String::from_utf8_lossy(&res.body)
            .matches("HTTP/1.1 ")
            .count();
        let records_now = records.step().await;
        let one_error = records_now.len() == 1
            && records_now[0]["status"] == 400
            && records_now[0]["outcome"] == "error"
            && records_now[0]["reason"] == "bad_request";
        if res.status != Some(400)
            || !res.closed
            || responses != 1
            || up.hits() != hits
            || !one_error
        {
            failures.push(format!(
                "{case}: status {:?}, closed {}, responses {responses}, upstream hits +{}, \
                 complete upstream requests +{}, records {records_now:?}",
                res.status,
                res.closed,
                up.hits() - hits,
                completed.load(Ordering::SeqCst) - complete,
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
