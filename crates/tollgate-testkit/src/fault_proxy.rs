//! A TCP proxy for fault injection: put it between a gateway and one of its
//! backends (PostgreSQL, Redis, a provider) and cut, slow or restore the
//! link while the test runs.
//!
//! ```no_run
//! # async fn f() {
//! use tollgate_testkit::fault_proxy::FaultProxy;
//! let proxy = FaultProxy::start("127.0.0.1:5432".parse().unwrap()).await;
//! // point the gateway at proxy.addr() …
//! proxy.cut();      // open connections are dropped, new ones refused
//! proxy.restore();  // the backend is reachable again
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The link's state, shared with every connection's task.
struct Link {
    cut: AtomicBool,
    /// Added to every chunk forwarded, in microseconds.
    delay_us: AtomicU64,
    /// Bumped on every cut, so connections open before it end.
    generation: watch::Sender<u64>,
    accepted: AtomicU64,
}

/// A running fault-injecting proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    link: Arc<Link>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards every connection to
    /// `backend`. Call inside a tokio runtime.
    pub async fn start(backend: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let (generation, _) = watch::channel(0);
        let link = Arc::new(Link {
            cut: AtomicBool::new(false),
            delay_us: AtomicU64::new(0),
            generation,
            accepted: AtomicU64::new(0),
        });
        let shared = link.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if shared.cut.load(Ordering::SeqCst) {
                    // Refused: the peer sees the connection close at once.
                    drop(client);
                    continue;
                }
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                let link = shared.clone();
                tokio::spawn(async move {
                    let _ = client.set_nodelay(true);
                    let Ok(server) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = server.set_nodelay(true);
                    relay(client, server, link).await;
                });
            }
        });
        FaultProxy { addr, link, task }
    }

    /// Where clients connect instead of the backend.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.link.cut.store(true, Ordering::SeqCst);
        self.link.generation.send_modify(|g| *g += 1);
    }

    /// Lets connections through again (and removes any delay).
    pub fn restore(&self) {
        self.link.delay_us.store(0, Ordering::SeqCst);
        self.link.cut.store(false, Ordering::SeqCst);
    }

    /// Delays every chunk forwarded, either way, by `delay`.
    pub fn slow(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.link.delay_us.store(us, Ordering::SeqCst);
    }

    /// Connections accepted so far (refused ones not counted).
    pub fn accepted(&self) -> u64 {
        self.link.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.link.generation.send_modify(|g| *g += 1);
    }
}

/// Copies both ways until either side closes or the link is cut.
async fn relay(client: TcpStream, server: TcpStream, link: Arc<Link>) {
    let mut cut = link.generation.subscribe();
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, link.clone());
    let down = pump(server_read, client_write, link.clone());
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = cut.changed() => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: Arc<Link>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let delay = link.delay_us.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
