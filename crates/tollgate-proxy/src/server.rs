//! Listeners and connections: accept, TLS, HTTP/1.1 and HTTP/2 (h2c too),
//! connection limits, idle timeouts and graceful drain.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tollgate_config::Limits;
use tollgate_telemetry::{metrics as names, AccessRecord, Outcome};

use crate::body::ClientBody;
use crate::boxed::boxed_in_place;
use crate::conn_timeouts::ConnectionTimeouts;
use crate::framing::FramingGuard;
use crate::h1_server;
use crate::proxy::{ConnInfo, Proxy};

/// Connection settings taken from `limits:` at start-up.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    /// The largest request head hyper buffers (its read buffer).
    fn max_head_bytes(&self) -> usize {
        self.max_header_bytes.max(8192)
    }
}

impl From<&Limits> for ConnectionLimits {
    fn from(limits: &Limits) -> Self {
        ConnectionLimits {
            max_header_bytes: limits.max_header_bytes.as_usize(),
            max_headers: limits.max_headers,
            header_timeout: limits.header_timeout.get(),
            idle_timeout: limits.idle_timeout.get(),
        }
    }
}

/// Accepts connections until `shutdown` turns true, then lets `graceful`
/// drain the ones in progress (the caller awaits that).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    proxy: Arc<Proxy>,
    limits: ConnectionLimits,
    graceful: Arc<GracefulShutdown>,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(http_builder(&limits));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let builder = builder.clone();
        let limits = limits.clone();
        // A watcher, not a clone of `graceful`: the caller must be able to
        // take `graceful` back once the accept loops end, while connections live on.
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let stop = shutdown.clone();
        // Boxed in place: the connection's future (9.9 KB) was copied five
        // times on its way into its task and three more as it ended.
        tokio::spawn(boxed_in_place(|| async move {
            metrics::gauge!(names::ACTIVE_CONNECTIONS).increment(1.0);
            match tls {
                None => {
                    let conn = ConnInfo::new(peer, false);
                    serve_connection(stream, conn, proxy, &builder, &limits, watcher, stop).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => {
                            let mut conn = ConnInfo::new(peer, true);
                            conn.client_cert = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .map(|der| Arc::new(crate::tls::client_cert(der)));
                            serve_connection(stream, conn, proxy, &builder, &limits, watcher, stop)
                                .await
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            metrics::gauge!(names::ACTIVE_CONNECTIONS).decrement(1.0);
        }));
    }
}

fn http_builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The guard times heads (see `conn_timeouts`): hyper's timer would
        // be armed and removed again for every request.
        .header_read_timeout(None)
        .max_buf_size(limits.max_head_bytes())
        .max_headers(limits.max_headers)
        .keep_alive(true)
        .half_close(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        // No keep-alive pings: they would count as activity and defeat `idle_timeout`.
        .max_concurrent_streams(256);
    builder
}

async fn serve_connection<S>(
    stream: S,
    conn: ConnInfo,
    proxy: Arc<Proxy>,
    builder: &auto::Builder<TokioExecutor>,
    limits: &ConnectionLimits,
    // Held while the lean loop serves, so a drain waits for it too.
    watcher: Watcher,
    stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let clocks = ConnectionTimeouts::new(limits.idle_timeout, limits.header_timeout);
    let head_limits = h1_server::HeadLimits {
        max_head_bytes: limits.max_head_bytes(),
        max_headers: limits.max_headers,
    };
    let Some(handoff) = h1_server::serve(stream, &conn, &proxy, &head_limits, clocks, stop).await
    else {
        return;
    };
    let (stream, clocks, served) = h1_server::Rewound::new(handoff);
    let conn = Arc::new(conn);
    let service = {
        let proxy = proxy.clone();
        let conn = conn.clone();
        service_fn(move |req| {
            let proxy = proxy.clone();
            let conn = conn.clone();
            // Not boxed: hyper's HTTP/1 connection keeps each request's
            // future in one box of its own, reused request after request;
            // a box here cost an allocation and a copy of the future each
            // time (~800 instructions a request).
            async move { Ok::<_, Infallible>(proxy.handle(&conn, req.map(ClientBody::from)).await) }
        })
    };
    let guard = FramingGuard::new(stream, limits.max_head_bytes(), clocks).numbered_from(served);
    let io = TokioIo::new(guard);
    let connection = builder
        .serve_connection_with_upgrades(io, service)
        .into_owned();
    let connection = watcher.watch(connection);
    if let Err(error) = connection.await {
        record_connection_error(&proxy, peer, error.as_ref());
    }
}

/// Requests the HTTP library refused before the pipeline saw them (malformed
/// framing, oversized headers) still get their access record.
fn record_connection_error(
    proxy: &Proxy,
    peer: SocketAddr,
    error: &(dyn std::error::Error + 'static),
) {
    let Some(error) = error.downcast_ref::<hyper::Error>() else {
        tracing::debug!(%peer, %error, "connection error");
        return;
    };
    let (status, reason) = if error.is_parse_too_large() {
        (431, "headers_too_large")
    } else if error.is_parse() || error.is_parse_status() {
        (400, "bad_request")
    } else {
        tracing::debug!(%peer, %error, "connection closed");
        return;
    };
    let mut record = AccessRecord::new(crate::forwarding::new_id(), peer.ip());
    record.status = status;
    record.outcome = Outcome::Error;
    record.reason = Some(reason);
    proxy.access_log.record(record);
    crate::snapshot::ApiMetrics::observe_unrouted(status, Duration::ZERO);
}

/// Binds a listener with `SO_REUSEADDR`, so a restart does not wait out TIME_WAIT.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
