//! The TLS upstream (ALPN), the gRPC-like trailers upstream and the h2c client.

use http_body_util::BodyExt;
use serde_json::Value;
use tollgate_testkit::{body, eventually, h2, tls, upstream};

#[tokio::test]
async fn tls_echo_speaks_what_alpn_selects() {
    let cert = tls::self_signed(&["localhost"]);
    let both = upstream::tls_echo("both", &cert, &["h2", "http/1.1"]);
    assert!(
        both.url().starts_with("https://localhost:"),
        "{}",
        both.url()
    );

    let res = cert
        .client_builder()
        .build()
        .unwrap()
        .get(format!("{}/a?x=1", both.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["upstream"], "both");
    assert_eq!(doc["version"], "HTTP/2.0");
    assert_eq!(doc["path"], "/a");

    let http1 = cert.client_builder().http1_only().build().unwrap();
    let doc: Value = http1
        .get(both.url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["version"], "HTTP/1.1");
    assert_eq!(both.hits(), 2);

    // Offering only HTTP/1.1, a client that would like h2 gets HTTP/1.1.
    let only_h1 = upstream::tls_echo("h1", &cert, &["http/1.1"]);
    let res = cert
        .client_builder()
        .build()
        .unwrap()
        .get(only_h1.url())
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_11);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["version"], "HTTP/1.1");
    assert_eq!(only_h1.tls_handshake_failures(), 0);
}

#[tokio::test]
async fn tls_echo_counts_refused_handshakes() {
    let cert = tls::self_signed(&["localhost"]);
    let other = tls::self_signed(&["localhost"]);
    let up = upstream::tls_echo("secure", &cert, &["http/1.1"]);
    let refused = other
        .client_builder()
        .build()
        .unwrap()
        .get(up.url())
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    eventually(std::time::Duration::from_secs(5), || async {
        up.tls_handshake_failures() == 1
    })
    .await;
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn h2c_trailers_answers_like_a_grpc_server() {
    let up = upstream::h2c_trailers();
    let mut sender = h2::connect_h2c(up.addr()).await;
    let req = http::Request::post(format!("{}/echo.Echo/Say", up.url()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body::full(&b"\0\0\0\0\x05hello"[..]))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()["x-request-te"], "trailers");
    let collected = res.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x05hello");
    assert_eq!(up.hits(), 1);
}
