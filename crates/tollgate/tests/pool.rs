//! The HTTP/1.1 upstream pool: keep-alive reuse, connections the upstream
//! closes, idle expiry, and growth under concurrency.

mod common;

use std::time::Duration;

use tollgate_testkit::{body, http, upstream, Upstream};

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let up = upstream::echo("a");
    let gw = common::gateway()
        .config(&common::simple(&[up.url()], "", ""))
        .start()
        .await;
    let client = gw.client();
    for _ in 0..50 {
        assert_eq!(client.get(gw.url("/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(up.hits(), 50);
    assert_eq!(up.connections(), 1, "keep-alive connections are reused");
}

#[tokio::test]
async fn connections_the_upstream_closes_are_not_reused() {
    // Every answer says `Connection: close`; hyper's server then closes the socket.
    let up = Upstream::start(|_req| async {
        http::Response::builder()
            .header("connection", "close")
            .body(body::full("bye"))
            .unwrap()
    });
    let gw = common::gateway()
        .config(&common::simple(&[up.url()], "", ""))
        .start()
        .await;
    let client = gw.client();
    for _ in 0..20 {
        let res = client.get(gw.url("/")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), "bye");
    }
    assert_eq!(up.hits(), 20);
    assert_eq!(up.connections(), 20);
}

#[tokio::test]
async fn idle_connections_expire_after_timeouts_idle() {
    let up = upstream::echo("a");
    let config = common::simple(&[up.url()], "", ", timeouts: { idle: 200ms }");
    let gw = common::gateway().config(&config).start().await;
    let client = gw.client();
    assert_eq!(client.get(gw.url("/")).send().await.unwrap().status(), 200);
    assert_eq!(client.get(gw.url("/")).send().await.unwrap().status(), 200);
    assert_eq!(up.connections(), 1);
    // The scenario is the passing of time itself: outlive the idle timeout.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.get(gw.url("/")).send().await.unwrap().status(), 200);
    assert_eq!(
        up.connections(),
        2,
        "an expired idle connection is not reused"
    );
}

#[tokio::test]
async fn concurrent_requests_open_connections_then_reuse_them() {
    let up = upstream::slow(Duration::from_millis(300));
    let gw = common::gateway()
        .config(&common::simple(&[up.url()], "", ""))
        .start()
        .await;
    let client = gw.client();
    let burst: Vec<_> = (0..8)
        .map(|_| tokio::spawn(client.get(gw.url("/")).send()))
        .collect();
    for request in burst {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(up.connections(), 8, "one connection per request in flight");
    for _ in 0..5 {
        assert_eq!(client.get(gw.url("/")).send().await.unwrap().status(), 200);
    }
    assert_eq!(
        up.connections(),
        8,
        "finished connections went back to the pool"
    );
}

/// An upstream whose accept queue is full never completes a TCP handshake:
/// the connect timeout, not the response timeout, ends the attempt.
#[tokio::test]
async fn connect_timeout_ends_a_hanging_connect() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the accept queue (never accepted) until a connect no longer completes.
    let mut held = Vec::new();
    let mut hangs = false;
    for _ in 0..16 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => held.push(stream),
            _ => {
                hangs = true;
                break;
            }
        }
    }
    assert!(hangs, "could not fill the accept queue of {addr}");

    let config = common::simple(
        &[format!("http://{addr}")],
        "",
        ", timeouts: { connect: 300ms, response: 10s }",
    );
    let gw = common::gateway().config(&config).start().await;
    let started = std::time::Instant::now();
    let res = gw.client().get(gw.url("/")).send().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(res.status(), 502);
    let body: tollgate_testkit::serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_unavailable");
    assert!(
        elapsed >= Duration::from_millis(250),
        "gave up before the connect timeout: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "waited for more than the connect timeout: {elapsed:?}"
    );
    drop(listener);
}

/// Requests without a body go to the upstream through the lean client, in
/// the request's task; requests with one through hyper's. Each kind keeps
/// its own connection alive, and an answer without a body (204, an empty
/// 200) hands its connection back at once, although nothing reads it.
#[tokio::test]
async fn bodiless_and_bodied_requests_each_reuse_a_connection() {
    let up = Upstream::start(|req| async move {
        match req.uri().path() {
            "/none" => http::Response::builder()
                .status(204)
                .body(body::full(""))
                .unwrap(),
            "/empty" => http::Response::new(body::full("")),
            _ => upstream::echo_response("a", req).await,
        }
    });
    let gw = common::gateway()
        .config(&common::simple(&[up.url()], "", ""))
        .start()
        .await;
    let client = gw.client();
    for _ in 0..10 {
        let none = client.get(gw.url("/none")).send().await.unwrap();
        assert_eq!(none.status(), 204);
        let empty = client.get(gw.url("/empty")).send().await.unwrap();
        assert_eq!(empty.status(), 200);
        assert_eq!(empty.text().await.unwrap(), "");
        let echoed = client
            .post(gw.url("/echo"))
            .body("x".repeat(100))
            .send()
            .await
            .unwrap();
        assert_eq!(echoed.status(), 200);
        assert!(echoed.text().await.unwrap().contains("\"body_len\":100"));
    }
    assert_eq!(up.hits(), 30);
    assert_eq!(
        up.connections(),
        2,
        "one kept-alive connection for each client"
    );
}

/// A `HEAD` answer announces a body (`Content-Length: 100`) that never
/// comes. Such requests go through hyper's client, which knows and keeps
/// the connection; the lean client would count on those 100 bytes, and the
/// connection would be dropped unread after every `HEAD`.
#[tokio::test]
async fn head_requests_keep_their_upstream_connection() {
    let up = Upstream::start(|_req| async { http::Response::new(body::full("x".repeat(100))) });
    let gw = common::gateway()
        .config(&common::simple(&[up.url()], "", ""))
        .start()
        .await;
    let client = gw.client();
    for _ in 0..5 {
        let head = client.head(gw.url("/item")).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers()["content-length"], "100");
        let get = client.get(gw.url("/item")).send().await.unwrap();
        assert_eq!(get.text().await.unwrap().len(), 100);
    }
    assert_eq!(up.hits(), 10);
    assert_eq!(
        up.connections(),
        2,
        "one kept-alive connection for each client"
    );
}
