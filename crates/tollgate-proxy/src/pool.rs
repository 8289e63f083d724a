//! Keep-alive connections to a plain-HTTP/1.1 upstream target: the hot path.
//!
//! hyper-util's general client serves TLS and HTTP/2 upstreams; for plain
//! HTTP/1.1 targets, the common case behind a gateway, this pool is leaner:
//! a LIFO stack of idle connections per target, no hashing of pool keys, and
//! a connection is taken *before* the request body moves, so a connect
//! failure can be retried on another target whatever the body.
//!
//! A connection returns to the stack when its response body has been read to
//! the end ([`PooledSender`] is held by the response body); one whose
//! exchange ended any other way is dropped, and hyper closes it.
//!
//! Requests without a body skip this pool: they go through the lean client
//! of `h1_client`, in the request's task, on a pool of its own per
//! target (see `proxy::goes_lean`). This one serves requests with a body,
//! upgrades and `HEAD`.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::RequestBody;

pub type Sender = http1::SendRequest<RequestBody>;

/// Idle connections kept per target, beyond which finished ones are closed.
const MAX_IDLE: usize = 256;

/// A LIFO stack of idle keep-alive connections to one target, each with
/// the time it went idle: the most recently used is reused first, and at
/// most [`MAX_IDLE`] are kept. Shared by this pool and the AI providers'
/// lean client ([`crate::h1_client`]).
#[derive(Debug)]
pub(crate) struct IdleStack<C> {
    idle: Mutex<Vec<(C, Instant)>>,
}

impl<C> Default for IdleStack<C> {
    fn default() -> Self {
        IdleStack {
            idle: Mutex::new(Vec::new()),
        }
    }
}

impl<C> IdleStack<C> {
    /// The most recently returned connection idle for less than
    /// `idle_timeout`; the older ones it finds on the way are dropped.
    pub(crate) fn pop_fresh(&self, idle_timeout: Duration) -> Option<C> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < idle_timeout {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for reuse, unless [`MAX_IDLE`] are kept already.
    pub(crate) fn push(&self, conn: C) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }
}

#[derive(Debug, Default)]
pub struct Http1Pool {
    idle: IdleStack<Sender>,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP/1 handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

impl Http1Pool {
    /// An idle connection that is still open and younger than `idle_timeout`,
    /// or a new one. The flag says whether it was reused.
    pub async fn checkout(
        &self,
        authority: &str,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<(Sender, bool), ConnectError> {
        while let Some(mut sender) = self.idle.pop_fresh(idle_timeout) {
            if sender.is_closed() {
                continue;
            }
            // The response body that freed it has ended, so the connection
            // becomes ready as soon as its task has run; an error means it closed.
            if sender.ready().await.is_ok() {
                return Ok((sender, true));
            }
        }
        Ok((connect(authority, connect_timeout).await?, false))
    }

    /// Returns a connection whose exchange completed cleanly.
    pub fn checkin(&self, sender: Sender) {
        if !sender.is_closed() {
            self.idle.push(sender);
        }
    }
}

async fn connect(authority: &str, timeout: Duration) -> Result<Sender, ConnectError> {
    let stream = match tokio::time::timeout(timeout, connect_tcp(authority)).await {
        Ok(stream) => stream?,
        Err(_) => return Err(ConnectError::Timeout(timeout)),
    };
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "upstream connection closed");
        }
    });
    Ok(sender)
}

/// Connects to `host:port`; an IP literal needs no resolver.
async fn connect_tcp(authority: &str) -> std::io::Result<TcpStream> {
    match authority.parse::<SocketAddr>() {
        Ok(addr) => TcpStream::connect(addr).await,
        Err(_) => TcpStream::connect(authority).await,
    }
}
