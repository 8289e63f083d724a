use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tollgate_admin::{serve, AdminState, METRICS_CONTENT_TYPE};

struct Admin {
    addr: SocketAddr,
    state: AdminState,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start() -> Admin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AdminState::new();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    Admin {
        addr,
        state,
        stop: Some(stop),
        task,
    }
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
    fn content_type(&self) -> &str {
        self.headers[http::header::CONTENT_TYPE].to_str().unwrap()
    }
}

async fn send(addr: SocketAddr, method: Method, path: &str) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, Method::GET, path).await
}

#[tokio::test]
async fn healthz_is_ok() {
    let admin = start().await;
    let reply = get(admin.addr, "/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type(), "application/json");
    assert_eq!(reply.json(), serde_json::json!({"status": "ok"}));
}

#[tokio::test]
async fn readyz_follows_the_ready_flag() {
    let admin = start().await;
    let reply = get(admin.addr, "/readyz").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json(), serde_json::json!({"status": "starting"}));

    admin.state.ready.store(true, Ordering::Release);
    let reply = get(admin.addr, "/readyz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), serde_json::json!({"status": "ready"}));
}

#[tokio::test]
async fn metrics_renders_prometheus_text() {
    tollgate_telemetry::metrics::install_prometheus();
    metrics::counter!(
        tollgate_telemetry::metrics::REQUESTS_TOTAL,
        "api" => "admin-test", "status" => "200"
    )
    .increment(3);

    let admin = start().await;
    let reply = get(admin.addr, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type(), METRICS_CONTENT_TYPE);
    assert!(
        reply
            .body
            .contains(r#"tollgate_requests_total{api="admin-test",status="200"} 3"#),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn unknown_paths_are_404_with_the_error_body() {
    let admin = start().await;
    let reply = get(admin.addr, "/nope?x=1").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.content_type(), "application/json");
    let body = reply.json();
    assert_eq!(body["error"]["code"], "not_found");
    assert!(body["error"]["message"].as_str().unwrap().contains("/nope"));
    let request_id = body["error"]["request_id"].as_str().unwrap();
    assert_eq!(request_id.len(), 32);
    assert!(request_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(reply.headers["x-request-id"], request_id);

    let other = get(admin.addr, "/nope").await.json();
    assert_ne!(other["error"]["request_id"], body["error"]["request_id"]);
}

#[tokio::test]
async fn wrong_methods_are_405() {
    let admin = start().await;
    let reply = send(admin.addr, Method::POST, "/healthz").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers[http::header::ALLOW], "GET, HEAD");
    assert_eq!(reply.json()["error"]["code"], "method_not_allowed");

    let reply = send(admin.addr, Method::HEAD, "/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.is_empty());
}

#[tokio::test]
async fn stops_accepting_on_shutdown() {
    let mut admin = start().await;
    assert_eq!(get(admin.addr, "/healthz").await.status, StatusCode::OK);

    admin.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), admin.task)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(admin.addr).await.is_err());
}
