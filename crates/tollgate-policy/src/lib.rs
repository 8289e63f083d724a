//! Tollgate's security policies, each compiled once per snapshot into a value
//! the request pipeline calls in a fixed phase order:
//!
//! ```text
//! ip → cors preflight → auth → access (acl, subscription) → rate limit / quota
//!    → size / validation → (proxy) → response headers
//! ```
//!
//! Nothing here touches a database on the request path: credentials are
//! indexed by hash at compile time, counters live behind [`counters::CounterStore`]
//! (memory on one node, or Redis shared by a cluster: [`counters_redis`], with
//! each limit's scope and fallback in [`counters_cluster`]), and
//! remote key sets and introspection answers are cached.

pub mod acl;
pub mod ai_limits;
pub mod auth;
pub mod basic;
pub mod blocks;
pub mod cors;
pub mod counters;
pub mod counters_cluster;
pub mod counters_redis;
pub mod counters_synced;
pub mod credentials;
pub mod denial;
pub mod engine;
pub mod headers;
pub mod identity;
pub mod introspection;
pub mod ip;
pub mod jwks;
pub mod jwt;
pub mod oauth2;
pub mod quota;
pub mod rate_limit;
pub mod redis_link;
pub mod validate;

pub use denial::Denial;
pub use engine::{compile, ApiPolicies, CompiledPolicies, PolicyRegistries, Security};
pub use identity::{ConsumerInfo, Identity};
