//! Test support for Tollgate: starts the real gateway binary and real upstream
//! servers on ephemeral loopback ports, so that an integration test reads like
//! the scenario it checks.
//!
//! ```no_run
//! use std::time::Duration;
//! use tollgate_testkit::{upstream, Gateway};
//!
//! # async fn example() {
//! let orders = upstream::echo("orders");
//! let gw = Gateway::builder("target/debug/tollgate") // in a test: env!("CARGO_BIN_EXE_tollgate")
//!     .config(&format!(
//!         "services: [{{ name: orders, upstream: {{ targets: [{{ url: '{}' }}] }} }}]\n\
//!          apis: [{{ name: orders, service: orders, match: {{ paths: [/orders] }} }}]",
//!         orders.url()
//!     ))
//!     .start()
//!     .await;
//! let res = gw.client().get(gw.url("/orders/7")).send().await.unwrap();
//! assert_eq!(res.status(), 200);
//! let records = gw.wait_for_records(1, Duration::from_secs(5)).await;
//! assert_eq!(records[0]["api"], "orders");
//! # }
//! ```
//!
//! What this crate must never do: sleep for a fixed time where a condition can be
//! polled ([`eventually`]), listen on anything but loopback, or outlive its test
//! (every process, server and temporary file is owned by a value whose `Drop`
//! cleans it up).

pub mod body;
pub mod browser;
mod eventually;
pub mod fake_llm;
pub mod fault_proxy;
pub mod gateway;
pub mod h2;
pub mod port;
pub mod raw;
pub mod redis_server;
pub mod tls;
pub mod tokens;
pub mod upstream;

pub use browser::Browser;
pub use eventually::{eventually, eventually_some};
pub use fake_llm::{FakeKind, FakeLlm, Reply};
pub use gateway::{Gateway, GatewayBuilder};
pub use tls::TlsFiles;
pub use upstream::Upstream;

/// Re-exported so that tests need no dependency of their own for these.
pub use {
    bytes, fantoccini, futures_util, http, http_body_util, hyper, hyper_util, reqwest, serde_json,
    serde_yaml, tokio_tungstenite,
};
