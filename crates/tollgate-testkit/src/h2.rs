//! A bare HTTP/2 client connection, for what reqwest does not show: response
//! trailers, and requests sent exactly as written.

use std::net::SocketAddr;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::body::Body;

/// Sends requests on one HTTP/2 connection; clone it to send concurrently.
pub type SendRequest = http2::SendRequest<Body>;

/// Opens an HTTP/2 connection with prior knowledge (h2c) to `addr`. The
/// connection is driven by a spawned task until every [`SendRequest`] clone
/// and response is dropped or the server closes it. Requests need an absolute
/// URI (`http://ADDR/path`): HTTP/2 sends its scheme and authority.
///
/// Panics if the connection or the HTTP/2 handshake fails.
///
/// ```no_run
/// # async fn example(addr: std::net::SocketAddr) {
/// use tollgate_testkit::http_body_util::BodyExt;
/// use tollgate_testkit::{body, h2};
/// let mut sender = h2::connect_h2c(addr).await;
/// let req = http::Request::post(format!("http://{addr}/svc/Call"))
///     .header("te", "trailers")
///     .body(body::full("hi"))
///     .unwrap();
/// let res = sender.send_request(req).await.unwrap();
/// let collected = res.into_body().collect().await.unwrap();
/// let trailers = collected.trailers().cloned();
/// # }
/// ```
pub async fn connect_h2c(addr: SocketAddr) -> SendRequest {
    let stream = crate::raw::connect(addr).await;
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .unwrap_or_else(|e| panic!("HTTP/2 handshake with {addr} failed: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}
