//! Free loopback addresses.
//!
//! An address is picked by binding `127.0.0.1:0` and releasing the socket, so
//! another process could in principle take it before the gateway binds it; on a
//! test machine that window is short enough to accept.

use std::net::{SocketAddr, TcpListener};

/// One loopback address where nothing listens right now.
pub fn free_addr() -> SocketAddr {
    free_addrs(1)[0]
}

/// `n` distinct loopback addresses where nothing listens right now (all sockets
/// are held until every address is picked, so they cannot repeat).
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address of a bound socket"))
        .collect()
}
