//! Free loopback addresses.
//!
//! An address is picked by binding `127.0.0.1:0` and releasing the socket, so
//! another process could in principle take it before the gateway binds it; on a
//! test machine that window is short enough to accept (and
//! [`crate::GatewayBuilder::start`] starts again on new ports when it happens).
//!
//! Within one test binary, tests run side by side as threads, and the kernel
//! may hand a released port out again at once: two gateways told the same
//! admin port would have one fail to bind while the other answers its
//! readiness probe. So a port is never handed out twice in one process.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Mutex, OnceLock};

/// One loopback address where nothing listens right now.
pub fn free_addr() -> SocketAddr {
    free_addrs(1)[0]
}

/// `n` distinct loopback addresses where nothing listens right now, none
/// handed out before by this process.
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let mut handed_out = HANDED_OUT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Sockets are held until every address is picked, so they cannot repeat
    // among themselves; ports seen before are held too and skipped.
    let mut held = Vec::new();
    let mut picked = Vec::with_capacity(n);
    while picked.len() < n {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("local address of a bound socket");
        if handed_out.insert(addr.port()) {
            picked.push(addr);
        }
        held.push(listener);
    }
    picked
}
