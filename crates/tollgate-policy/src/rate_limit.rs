//! Rate limits: `limit` requests per `window`, counted by consumer, client
//! IP, API or a request header, each list compiled once per snapshot into
//! [`RateLimits`].
//!
//! # Algorithm: GCRA
//!
//! Each key holds one number, its theoretical arrival time (TAT): a request is
//! admitted if moving the TAT forward by `window / limit` keeps it within
//! `window` of now. A fresh key admits `limit` requests at once, then one every
//! `window / limit` — a token bucket of `limit` tokens refilled over `window`.
//!
//! Why GCRA rather than a sliding-window counter (the previous fixed window's
//! count weighted by its overlap, as Kong's `sliding` and Cloudflare do):
//!
//! - **Exact.** The decision is a compare-and-swap on one integer, with no
//!   estimate: `limit` concurrent requests on a fresh key pass and the next
//!   fails, and a client that keeps to `limit` per `window` is never refused.
//!   The sliding estimate assumes the previous window's requests were spread
//!   evenly, so it refuses some compliant clients (with `limit: 1`, every
//!   second request of a client sending one per window).
//! - **The same in Redis.** One key per limit and subject, one short Lua
//!   script (`GET`, compare, `SET … PX`), the key expiring by itself when the
//!   bucket is full again; giving a request back is a `DECRBY`. The sliding
//!   counter needs two keys per subject and the same script.
//! - **Headers fall out of it.** `RateLimit-Remaining` is the headroom between
//!   the TAT and now + `window`, in intervals; `RateLimit-Reset` is the time
//!   until the TAT is reached (the bucket full again, at most `window`);
//!   `Retry-After` is the time until one interval of headroom frees up.
//!
//! The price: over any `window` a client can get up to about twice `limit`
//! (a full burst, then the refill), where the sliding counter stays near
//! `limit`. Limits are for protection, not billing — quotas count exactly.
//!
//! # Keys
//!
//! `rl|<scope>|<index>|<window ms>|<subject>`: the scope where the list was
//! declared (`global`, `service:orders`, `api:orders-v1`), so every API that
//! inherits a declaration shares its counters; the limit's position and window;
//! and the subject — `consumer:<name>`, `ip:<addr>` (also the fallback of
//! `consumer` and `header:` when there is no consumer or no header),
//! `api:<name>`, or `header:<digest>`: header values are hashed, so a
//! credential sent in a counted header never ends up in a key, and keys stay
//! short whatever a client sends.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use tollgate_config::{LimitKey, LimitScope, RateLimit};

use crate::counters::{
    ceil_seconds, unix_micros, CounterStore, Rate, RateHit, RateRequest, RatesHit,
};
use crate::counters_cluster::{Fallback, Placement};
use crate::Denial;

/// The request as limits see it.
#[derive(Clone, Copy, Debug)]
pub struct LimitInput<'a> {
    /// The authenticated consumer, if any.
    pub consumer: Option<&'a str>,
    pub client_ip: IpAddr,
    /// The matched API's name.
    pub api: &'a str,
    pub headers: &'a HeaderMap,
}

pub static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The rate limits of one API, compiled.
#[derive(Debug)]
pub struct RateLimits {
    limits: Box<[CompiledLimit]>,
}

#[derive(Debug)]
struct CompiledLimit {
    /// `rl|<scope>|<index>|<window ms>|`
    prefix: Box<str>,
    subject: Subject,
    rate: Rate,
    limit: u64,
    window: tollgate_config::Duration,
    placement: Placement,
    /// `sync_interval`: counted in batches on this node's view.
    sync: Option<std::time::Duration>,
}

/// Where a hit was counted, when not in the store the limit counts in first.
#[derive(Clone, Copy)]
enum Counted {
    /// Not counted: the store failed and the limit allows.
    Skipped,
    /// In this node's memory, at this (divided) rate.
    Local(Rate),
}

impl CompiledLimit {
    fn write_key(&self, key: &mut String, input: &LimitInput<'_>) {
        key.clear();
        key.push_str(&self.prefix);
        self.subject.write(key, input);
    }
}

impl RateLimits {
    /// Compiles the limits declared at `scope` (`global`, `service:<name>`,
    /// `api:<name>`).
    pub fn compile(limits: &[RateLimit], scope: &str) -> RateLimits {
        let limits = limits
            .iter()
            .enumerate()
            .map(|(index, limit)| CompiledLimit {
                prefix: format!("rl|{scope}|{index}|{}|", limit.window.get().as_millis())
                    .into_boxed_str(),
                subject: Subject::compile(&limit.by),
                rate: Rate::per_window(limit.limit, limit.window.get()),
                limit: limit.limit,
                window: limit.window,
                placement: Placement::new(limit.scope, limit.on_store_failure),
                sync: limit.sync_interval.map(|every| every.get()),
            })
            .collect();
        RateLimits { limits }
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Room for the longest key of `input`: the one allocation of a check.
    fn key_capacity(&self, input: &LimitInput<'_>) -> usize {
        self.limits
            .iter()
            .map(|l| l.prefix.len() + l.subject.max_len(input))
            .max()
            .unwrap_or(0)
    }

    /// Counts the request against every limit; it passes only if all admit it,
    /// and a request one limit refuses is given back to the others. When the
    /// shared store fails, each limit follows its `on_store_failure` (see
    /// [`crate::counters_cluster`]).
    pub async fn check(
        &self,
        store: &dyn CounterStore,
        input: &LimitInput<'_>,
    ) -> Result<RateLimitStatus, Denial> {
        self.check_at(store, input, SystemTime::now()).await
    }

    /// [`check`](Self::check) at a given time.
    pub async fn check_at(
        &self,
        store: &dyn CounterStore,
        input: &LimitInput<'_>,
        now: SystemTime,
    ) -> Result<RateLimitStatus, Denial> {
        if self.limits.is_empty() {
            return Ok(RateLimitStatus::default());
        }
        let now_us = unix_micros(now);
        // Several limits counted in the shared store: one round trip for
        // all. When it fails, each limit follows its `on_store_failure`
        // below without asking the store again.
        let mut shared_failure = None;
        if self.all_shared(store) {
            let keys: Vec<String> = self
                .limits
                .iter()
                .map(|limit| {
                    let mut key = String::with_capacity(self.key_capacity(input));
                    limit.write_key(&mut key, input);
                    key
                })
                .collect();
            let requests: Vec<RateRequest<'_>> = keys
                .iter()
                .zip(self.limits.iter())
                .map(|(key, limit)| RateRequest {
                    key,
                    rate: limit.rate,
                })
                .collect();
            match store.acquire_rates(&requests, now_us).await {
                Ok(answer) => return self.judge(&answer),
                Err(error) => shared_failure = Some(error),
            }
        }
        let mut key = String::with_capacity(self.key_capacity(input));
        let mut status = RateLimitStatus::default();
        // The limits counted elsewhere than where they count first; empty
        // (no allocation) while the stores answer.
        let mut elsewhere: Vec<(usize, Counted)> = Vec::new();
        for (index, limit) in self.limits.iter().enumerate() {
            limit.write_key(&mut key, input);
            let first = limit.placement.first(store);
            let shared = limit.placement.scope == LimitScope::Cluster;
            let attempt = match &shared_failure {
                Some(error) if shared => Err(error),
                _ => match limit.sync {
                    None => first.acquire_rate(&key, limit.rate, now_us).await,
                    Some(every) => {
                        first
                            .acquire_rate_synced(&key, limit.rate, every, now_us)
                            .await
                    }
                }
                .map_err(|error| {
                    shared_failure = Some(error);
                    shared_failure.as_ref().expect("set above")
                }),
            };
            let (hit, rate) = match attempt {
                Ok(hit) => (hit, limit.rate),
                Err(error) => match limit.placement.on_failure(store, "rate limit", error) {
                    Fallback::Allow => {
                        elsewhere.push((index, Counted::Skipped));
                        continue;
                    }
                    Fallback::Deny(denial) => {
                        self.give_back(store, input, &mut key, index, &elsewhere)
                            .await;
                        return Err(denial);
                    }
                    Fallback::Local(local) => {
                        let rate = local.rate(limit.limit, limit.window.get());
                        match local.store.acquire_rate(&key, rate, now_us).await {
                            Ok(hit) => {
                                elsewhere.push((index, Counted::Local(rate)));
                                (hit, rate)
                            }
                            Err(error) => {
                                tracing::warn!(%error, "the node's own counters failed");
                                elsewhere.push((index, Counted::Skipped));
                                continue;
                            }
                        }
                    }
                },
            };
            if !hit.allowed {
                self.give_back(store, input, &mut key, index, &elsewhere)
                    .await;
                return Err(refusal(limit, rate, hit));
            }
            status.keep_closest(Headroom::after(rate, hit));
        }
        Ok(status)
    }

    /// Whether every limit counts in a shared store at once (none with a
    /// `sync_interval`), and there are several: then one
    /// [`CounterStore::acquire_rates`] call counts them all.
    fn all_shared(&self, store: &dyn CounterStore) -> bool {
        self.limits.len() > 1
            && store.node_local().is_some()
            && self
                .limits
                .iter()
                .all(|limit| limit.placement.scope == LimitScope::Cluster && limit.sync.is_none())
    }

    /// The outcome of an [`CounterStore::acquire_rates`] call over every
    /// limit.
    fn judge(&self, answer: &RatesHit) -> Result<RateLimitStatus, Denial> {
        if let Some(index) = answer.refused {
            let (limit, hit) = self
                .limits
                .get(index)
                .zip(answer.hits.get(index))
                .ok_or_else(|| {
                    Denial::limit_unavailable("the counter store answered out of range")
                })?;
            return Err(refusal(limit, limit.rate, *hit));
        }
        let mut status = RateLimitStatus::default();
        for (limit, hit) in self.limits.iter().zip(&answer.hits) {
            status.keep_closest(Headroom::after(limit.rate, *hit));
        }
        Ok(status)
    }

    /// Gives back the hits counted for the limits before `index`, each
    /// where it was counted.
    async fn give_back(
        &self,
        store: &dyn CounterStore,
        input: &LimitInput<'_>,
        key: &mut String,
        index: usize,
        elsewhere: &[(usize, Counted)],
    ) {
        for (taken_index, taken) in self.limits[..index].iter().enumerate() {
            let counted = elsewhere
                .iter()
                .find(|(i, _)| *i == taken_index)
                .map(|(_, counted)| *counted);
            let (target, rate) = match counted {
                Some(Counted::Skipped) => continue,
                Some(Counted::Local(rate)) => {
                    let Some(local) = store.node_local() else {
                        continue;
                    };
                    (local.store, rate)
                }
                None => (taken.placement.first(store), taken.rate),
            };
            taken.write_key(key, input);
            if let Err(error) = target.release_rate(key, rate).await {
                tracing::debug!(%error, "cannot give back a rate-limit hit");
            }
        }
    }
}

/// The 429 for a hit `limit` refused at `rate` (its own, or its divided
/// share while the shared store fails).
fn refusal(limit: &CompiledLimit, rate: Rate, hit: RateHit) -> Denial {
    let retry_after = ceil_seconds(hit.until_next(rate, hit.at_us)).max(1);
    let headroom = Headroom {
        limit: rate.burst,
        remaining: 0,
        reset: ceil_seconds(hit.until_full(hit.at_us)).max(retry_after),
    };
    let mut denial = Denial::rate_limited(format!(
        "rate limit exceeded: {} requests per {}",
        rate.burst, limit.window
    ))
    .with_header(http::header::RETRY_AFTER, number_value(retry_after));
    for (name, value) in headroom.headers() {
        denial = denial.with_header(name.clone(), value);
    }
    denial
}

/// What a response tells the client about its rate limits: the limit closest
/// to exhaustion (fewest requests remaining), if there are any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimitStatus {
    closest: Option<Headroom>,
}

/// One limit's standing, in the terms of the `RateLimit-*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headroom {
    /// `RateLimit-Limit`: requests per window.
    pub limit: u64,
    /// `RateLimit-Remaining`: requests admitted right now.
    pub remaining: u64,
    /// `RateLimit-Reset`: seconds until all `limit` requests are available again.
    pub reset: u64,
}

impl Headroom {
    /// A limit's standing after the admitted `hit`.
    fn after(rate: Rate, hit: RateHit) -> Headroom {
        Headroom {
            limit: rate.burst,
            remaining: hit.remaining(rate, hit.at_us),
            reset: ceil_seconds(hit.until_full(hit.at_us)),
        }
    }

    /// The `RateLimit-*` headers and their numbers, for a writer that
    /// formats them itself (the proxy's passed-on lines).
    pub fn numbers(&self) -> [(&'static HeaderName, u64); 3] {
        [
            (&RATELIMIT_LIMIT, self.limit),
            (&RATELIMIT_REMAINING, self.remaining),
            (&RATELIMIT_RESET, self.reset),
        ]
    }

    fn headers(&self) -> [(&'static HeaderName, HeaderValue); 3] {
        self.numbers().map(|(name, n)| (name, number_value(n)))
    }
}

/// A header value for `n`: for the small numbers most headers carry, a copy
/// of a static one (no allocation, no reference count), from a table built
/// once.
fn number_value(n: u64) -> HeaderValue {
    const SMALL: usize = 1000;
    static TABLE: OnceLock<Box<[HeaderValue]>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut digits = String::new();
        let mut ends = Vec::with_capacity(SMALL);
        for i in 0..SMALL {
            let _ = write!(digits, "{i}");
            ends.push(digits.len());
        }
        // Leaked once per process, so that every value is `'static`.
        let digits: &'static str = Box::leak(digits.into_boxed_str());
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let value = HeaderValue::from_static(&digits[start..end]);
                start = end;
                value
            })
            .collect()
    });
    usize::try_from(n)
        .ok()
        .and_then(|i| table.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(n))
}

impl RateLimitStatus {
    /// The limit the headers describe; `None` without limits.
    pub fn closest(&self) -> Option<Headroom> {
        self.closest
    }

    /// Sets `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`
    /// (draft-ietf-httpapi-ratelimit-headers) on a response.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some(closest) = &self.closest {
            for (name, value) in closest.headers() {
                headers.insert(name.clone(), value);
            }
        }
    }

    fn keep_closest(&mut self, candidate: Headroom) {
        let closer = match &self.closest {
            None => true,
            Some(current) => {
                (candidate.remaining, std::cmp::Reverse(candidate.reset))
                    < (current.remaining, std::cmp::Reverse(current.reset))
            }
        };
        if closer {
            self.closest = Some(candidate);
        }
    }
}

/// What a limit or quota counts by, as written into its keys.
#[derive(Debug)]
pub(crate) enum Subject {
    Consumer,
    Ip,
    Api,
    /// `None` for a name that does not parse (config validation refuses it):
    /// counted by IP.
    Header(Option<HeaderName>),
}

/// Longest text of an IP address (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`).
const MAX_IP_LEN: usize = 45;

/// Hex digits of the header-value digest in keys (128 bits).
const DIGEST_HEX_LEN: usize = 32;

impl Subject {
    pub(crate) fn compile(by: &LimitKey) -> Subject {
        match by {
            LimitKey::Consumer => Subject::Consumer,
            LimitKey::Ip => Subject::Ip,
            LimitKey::Api => Subject::Api,
            LimitKey::Header(name) => Subject::Header(HeaderName::from_bytes(name.as_bytes()).ok()),
        }
    }

    /// An upper bound of what [`write`](Self::write) appends.
    pub(crate) fn max_len(&self, input: &LimitInput<'_>) -> usize {
        let ip = "ip:".len() + MAX_IP_LEN;
        match self {
            Subject::Consumer => ip.max("consumer:".len() + input.consumer.map_or(0, str::len)),
            Subject::Ip => ip,
            Subject::Api => "api:".len() + input.api.len(),
            Subject::Header(_) => ip.max("header:".len() + DIGEST_HEX_LEN),
        }
    }

    /// Appends the subject's part of a key: `consumer:<name>`, `ip:<addr>`,
    /// `api:<name>` or `header:<digest>`.
    pub(crate) fn write(&self, key: &mut String, input: &LimitInput<'_>) {
        match self {
            Subject::Consumer => match input.consumer {
                Some(consumer) => {
                    key.push_str("consumer:");
                    key.push_str(consumer);
                }
                None => write_ip(key, input.client_ip),
            },
            Subject::Ip => write_ip(key, input.client_ip),
            Subject::Api => {
                key.push_str("api:");
                key.push_str(input.api);
            }
            Subject::Header(name) => {
                let value = name
                    .as_ref()
                    .and_then(|name| input.headers.get(name))
                    .filter(|value| !value.is_empty());
                match value {
                    Some(value) => {
                        let digest = Sha256::new()
                            .chain_update(b"tollgate limit key\0")
                            .chain_update(value.as_bytes())
                            .finalize();
                        let mut hex = [0u8; DIGEST_HEX_LEN];
                        hex::encode_to_slice(&digest[..DIGEST_HEX_LEN / 2], &mut hex)
                            .expect("the buffer fits the digest");
                        key.push_str("header:");
                        key.push_str(std::str::from_utf8(&hex).expect("hex is ASCII"));
                    }
                    None => write_ip(key, input.client_ip),
                }
            }
        }
    }
}

fn write_ip(key: &mut String, ip: IpAddr) {
    key.push_str("ip:");
    // An IPv4 client seen on a dual-stack socket counts as itself.
    let _ = write!(key, "{}", ip.to_canonical());
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use http::StatusCode;

    use super::*;
    use crate::counters::MemoryCounters;

    fn limit(limit: u64, window_secs: u64, by: &str) -> RateLimit {
        RateLimit {
            limit,
            window: tollgate_config::Duration::from_secs(window_secs),
            by: by.parse().unwrap(),
            scope: tollgate_config::LimitScope::Cluster,
            on_store_failure: None,
            sync_interval: None,
        }
    }

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    /// A request from `client_ip`, as `consumer`, to `api`, with `headers`.
    struct Req {
        consumer: Option<&'static str>,
        client_ip: IpAddr,
        api: &'static str,
        headers: HeaderMap,
    }

    impl Req {
        fn new() -> Req {
            Req {
                consumer: None,
                client_ip: ip(1),
                api: "orders",
                headers: HeaderMap::new(),
            }
        }
        fn consumer(mut self, name: &'static str) -> Req {
            self.consumer = Some(name);
            self
        }
        fn ip(mut self, last: u8) -> Req {
            self.client_ip = ip(last);
            self
        }
        fn api(mut self, api: &'static str) -> Req {
            self.api = api;
            self
        }
        fn header(mut self, name: &'static str, value: &'static str) -> Req {
            self.headers.insert(name, HeaderValue::from_static(value));
            self
        }
        fn input(&self) -> LimitInput<'_> {
            LimitInput {
                consumer: self.consumer,
                client_ip: self.client_ip,
                api: self.api,
                headers: &self.headers,
            }
        }
    }

    async fn passes(limits: &RateLimits, store: &MemoryCounters, req: &Req) -> bool {
        limits.check_at(store, &req.input(), t0()).await.is_ok()
    }

    /// How many of `n` identical requests pass.
    async fn passing(limits: &RateLimits, store: &MemoryCounters, req: &Req, n: usize) -> usize {
        let mut passed = 0;
        for _ in 0..n {
            passed += usize::from(passes(limits, store, req).await);
        }
        passed
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn exactly_the_limit_passes_under_concurrency() {
        let limits = Arc::new(RateLimits::compile(&[limit(10, 60, "ip")], "global"));
        let store = Arc::new(MemoryCounters::new());
        let start = Arc::new(tokio::sync::Barrier::new(50));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (limits, store, start) = (limits.clone(), store.clone(), start.clone());
                tokio::spawn(async move {
                    let headers = HeaderMap::new();
                    let input = LimitInput {
                        consumer: None,
                        client_ip: ip(1),
                        api: "orders",
                        headers: &headers,
                    };
                    start.wait().await;
                    limits.check(&*store, &input).await.is_ok()
                })
            })
            .collect();
        let mut passed = 0;
        for task in tasks {
            passed += usize::from(task.await.unwrap());
        }
        assert_eq!(passed, 10);
    }

    #[tokio::test]
    async fn the_window_resets() {
        let limits = RateLimits::compile(&[limit(3, 10, "ip")], "global");
        let store = MemoryCounters::new();
        let input = Req::new();
        let at = |secs| t0() + Duration::from_secs(secs);
        for _ in 0..3 {
            assert!(limits.check_at(&store, &input.input(), at(0)).await.is_ok());
        }
        assert!(limits
            .check_at(&store, &input.input(), at(0))
            .await
            .is_err());
        // A third of the window gives one request back…
        assert!(limits.check_at(&store, &input.input(), at(4)).await.is_ok());
        assert!(limits
            .check_at(&store, &input.input(), at(4))
            .await
            .is_err());
        // …and a whole window with no request, the full limit.
        for _ in 0..3 {
            assert!(limits
                .check_at(&store, &input.input(), at(14))
                .await
                .is_ok());
        }
        assert!(limits
            .check_at(&store, &input.input(), at(14))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_request_refused_by_one_limit_does_not_consume_the_others() {
        // 3 per IP, 1 per consumer: a consumer's refused requests leave the
        // IP's allowance to the others.
        let limits = RateLimits::compile(&[limit(3, 60, "ip"), limit(1, 60, "consumer")], "global");
        let store = MemoryCounters::new();
        let alice = Req::new().consumer("alice");
        assert_eq!(passing(&limits, &store, &alice, 5).await, 1);
        assert!(passes(&limits, &store, &Req::new().consumer("bob")).await);
        assert!(passes(&limits, &store, &Req::new().consumer("carol")).await);
        let dave = limits
            .check_at(&store, &Req::new().consumer("dave").input(), t0())
            .await
            .unwrap_err();
        assert_eq!(dave.code, "rate_limited");
        assert!(dave
            .headers
            .contains(&(RATELIMIT_LIMIT.clone(), HeaderValue::from(3u64))));
        // Dave was refused by the IP limit, before his own was counted.
        assert!(passes(&limits, &store, &Req::new().consumer("dave").ip(2)).await);

        // Refused by the first limit: the second is not counted either.
        let limits = RateLimits::compile(&[limit(1, 60, "ip"), limit(4, 60, "api")], "global");
        let store = MemoryCounters::new();
        assert_eq!(passing(&limits, &store, &Req::new().ip(1), 5).await, 1);
        let mut others = 0;
        for client in 2..10 {
            others += usize::from(passes(&limits, &store, &Req::new().ip(client)).await);
        }
        assert_eq!(others, 3);
    }

    #[tokio::test]
    async fn counts_by_ip() {
        let limits = RateLimits::compile(&[limit(2, 60, "ip")], "global");
        let store = MemoryCounters::new();
        assert_eq!(
            passing(&limits, &store, &Req::new().consumer("a"), 3).await,
            2
        );
        assert_eq!(
            passing(&limits, &store, &Req::new().consumer("b"), 3).await,
            0
        );
        assert_eq!(passing(&limits, &store, &Req::new().ip(2), 3).await, 2);
        // An IPv4 client seen as IPv4-mapped IPv6 is the same client.
        let mapped = Req {
            client_ip: IpAddr::V6(Ipv4Addr::new(10, 0, 0, 3).to_ipv6_mapped()),
            ..Req::new()
        };
        assert_eq!(passing(&limits, &store, &mapped, 1).await, 1);
        assert_eq!(passing(&limits, &store, &Req::new().ip(3), 3).await, 1);
    }

    #[tokio::test]
    async fn counts_by_consumer_falling_back_to_ip() {
        let limits = RateLimits::compile(&[limit(2, 60, "consumer")], "global");
        let store = MemoryCounters::new();
        let alice = |last| Req::new().consumer("alice").ip(last);
        assert_eq!(passing(&limits, &store, &alice(1), 1).await, 1);
        assert_eq!(
            passing(&limits, &store, &alice(2), 3).await,
            1,
            "one consumer from two addresses"
        );
        assert_eq!(
            passing(&limits, &store, &Req::new().consumer("bob"), 3).await,
            2
        );
        // Anonymous requests count by address, apart from a consumer named
        // like the address.
        assert_eq!(
            passing(&limits, &store, &Req::new().consumer("10.0.0.9"), 3).await,
            2
        );
        assert_eq!(passing(&limits, &store, &Req::new().ip(9), 3).await, 2);
        assert_eq!(passing(&limits, &store, &Req::new().ip(8), 3).await, 2);
    }

    #[tokio::test]
    async fn counts_by_api() {
        let limits = RateLimits::compile(&[limit(2, 60, "api")], "global");
        let store = MemoryCounters::new();
        assert_eq!(passing(&limits, &store, &Req::new().ip(1), 1).await, 1);
        assert_eq!(
            passing(&limits, &store, &Req::new().ip(2).consumer("x"), 3).await,
            1
        );
        assert_eq!(
            passing(&limits, &store, &Req::new().api("billing"), 3).await,
            2
        );
    }

    #[tokio::test]
    async fn counts_by_header_falling_back_to_ip() {
        let limits = RateLimits::compile(&[limit(2, 60, "header:x-tenant")], "global");
        let store = MemoryCounters::new();
        let tenant = |value, last| Req::new().header("x-tenant", value).ip(last);
        assert_eq!(passing(&limits, &store, &tenant("acme", 1), 1).await, 1);
        assert_eq!(passing(&limits, &store, &tenant("acme", 2), 3).await, 1);
        assert_eq!(passing(&limits, &store, &tenant("globex", 1), 3).await, 2);
        // Without the header (or with an empty one): by address, apart from a
        // header whose value is that address.
        assert_eq!(passing(&limits, &store, &tenant("10.0.0.5", 5), 3).await, 2);
        assert_eq!(passing(&limits, &store, &Req::new().ip(5), 1).await, 1);
        assert_eq!(passing(&limits, &store, &tenant("", 5), 3).await, 1);
    }

    #[test]
    fn keys_name_scope_limit_and_subject_never_a_credential() {
        let limits = RateLimits::compile(
            &[
                limit(1, 60, "consumer"),
                limit(1, 1, "header:authorization"),
            ],
            "service:orders",
        );
        let req = Req::new()
            .consumer("alice")
            .header("authorization", "Bearer s3cret-token");
        let capacity = limits.key_capacity(&req.input());
        let mut key = String::with_capacity(capacity);
        limits.limits[0].write_key(&mut key, &req.input());
        assert_eq!(key, "rl|service:orders|0|60000|consumer:alice");
        limits.limits[1].write_key(&mut key, &req.input());
        assert!(key.starts_with("rl|service:orders|1|1000|header:"), "{key}");
        assert_eq!(key.len(), "rl|service:orders|1|1000|header:".len() + 32);
        assert!(!key.contains("s3cret"), "{key}");
        limits.limits[1].write_key(&mut key, &Req::new().input());
        assert_eq!(key, "rl|service:orders|1|1000|ip:10.0.0.1");
        // The longest address fits too: no key outgrows the one allocation.
        let v6 = Req {
            client_ip: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            ..Req::new()
        };
        limits.limits[1].write_key(&mut key, &v6.input());
        assert!(key.ends_with("|ip:ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert_eq!(key.capacity(), capacity, "the key buffer never grew");
    }

    #[tokio::test]
    async fn apis_inheriting_one_declaration_share_its_counters() {
        let declared = [limit(2, 60, "consumer")];
        let store = MemoryCounters::new();
        let orders = RateLimits::compile(&declared, "service:shop");
        let billing = RateLimits::compile(&declared, "service:shop");
        let elsewhere = RateLimits::compile(&declared, "api:billing-v2");
        let alice = Req::new().consumer("alice");
        assert_eq!(passing(&orders, &store, &alice, 1).await, 1);
        assert_eq!(passing(&billing, &store, &alice.api("billing"), 3).await, 1);
        let alice = Req::new().consumer("alice");
        assert_eq!(passing(&elsewhere, &store, &alice, 3).await, 2);
    }

    #[tokio::test]
    async fn headers_report_the_limit_closest_to_exhaustion() {
        let limits = RateLimits::compile(&[limit(100, 3600, "ip"), limit(5, 10, "ip")], "global");
        let store = MemoryCounters::new();
        let req = Req::new();
        let mut remaining = Vec::new();
        for _ in 0..5 {
            let status = limits.check_at(&store, &req.input(), t0()).await.unwrap();
            let mut headers = HeaderMap::new();
            status.apply(&mut headers);
            assert_eq!(headers["ratelimit-limit"], "5");
            let reset: u64 = headers["ratelimit-reset"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=10).contains(&reset), "reset {reset}");
            remaining.push(headers["ratelimit-remaining"].to_str().unwrap().to_owned());
        }
        assert_eq!(remaining, ["4", "3", "2", "1", "0"]);

        let denial = limits
            .check_at(&store, &req.input(), t0())
            .await
            .unwrap_err();
        assert_eq!(denial.status, StatusCode::TOO_MANY_REQUESTS);
        let header = |name: &str| {
            denial
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
                .unwrap()
        };
        assert_eq!(header("retry-after"), "2");
        assert_eq!(header("ratelimit-limit"), "5");
        assert_eq!(header("ratelimit-remaining"), "0");
        assert_eq!(header("ratelimit-reset"), "10");
    }

    #[tokio::test]
    async fn retry_after_is_at_least_one_second() {
        let limits = RateLimits::compile(
            &[RateLimit {
                limit: 1,
                window: tollgate_config::Duration::from_millis(100),
                by: LimitKey::Ip,
                scope: tollgate_config::LimitScope::Cluster,
                on_store_failure: None,
                sync_interval: None,
            }],
            "global",
        );
        let store = MemoryCounters::new();
        assert!(passes(&limits, &store, &Req::new()).await);
        let denial = limits
            .check_at(&store, &Req::new().input(), t0())
            .await
            .unwrap_err();
        let retry_after = denial
            .headers
            .iter()
            .find(|(name, _)| name == http::header::RETRY_AFTER)
            .map(|(_, value)| value.clone());
        assert_eq!(retry_after, Some(HeaderValue::from_static("1")));
    }

    #[test]
    fn number_values_are_decimal() {
        for n in [0, 7, 10, 99, 100, 999, 1000, 86_400, u64::MAX] {
            assert_eq!(number_value(n), n.to_string().as_str());
        }
    }

    #[tokio::test]
    async fn no_limits_no_headers() {
        let limits = RateLimits::compile(&[], "global");
        assert!(limits.is_empty());
        let status = limits
            .check(&MemoryCounters::new(), &Req::new().input())
            .await
            .unwrap();
        let mut headers = HeaderMap::new();
        status.apply(&mut headers);
        assert!(headers.is_empty());
        assert_eq!(status.closest(), None);
    }

    fn failing_over(
        limit_n: u64,
        by: &str,
        scope: tollgate_config::LimitScope,
        mode: Option<tollgate_config::OnStoreFailure>,
    ) -> RateLimit {
        RateLimit {
            scope,
            on_store_failure: mode,
            ..limit(limit_n, 60, by)
        }
    }

    /// How many of `n` requests pass against `store` (any store).
    async fn passing_in(
        limits: &RateLimits,
        store: &dyn CounterStore,
        req: &Req,
        n: usize,
    ) -> usize {
        let mut passed = 0;
        for _ in 0..n {
            passed += usize::from(limits.check_at(store, &req.input(), t0()).await.is_ok());
        }
        passed
    }

    #[tokio::test]
    async fn on_store_failure_deny_refuses_with_503_until_the_store_heals() {
        use tollgate_config::{LimitScope, OnStoreFailure};
        let (shared, store) = crate::counters_cluster::tests::cluster(3);
        let limits = RateLimits::compile(
            &[failing_over(
                3,
                "ip",
                LimitScope::Cluster,
                Some(OnStoreFailure::Deny),
            )],
            "global",
        );
        let req = Req::new();
        assert_eq!(passing_in(&limits, &store, &req, 2).await, 2);
        shared.set_failing(true);
        let denial = limits
            .check_at(&store, &req.input(), t0())
            .await
            .unwrap_err();
        assert_eq!(denial.code, "limit_unavailable");
        assert_eq!(denial.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(passing_in(&limits, &store, &req, 5).await, 0);
        // Healed: the shared count was kept, one more fits.
        shared.set_failing(false);
        assert_eq!(passing_in(&limits, &store, &req, 5).await, 1);
    }

    #[tokio::test]
    async fn on_store_failure_allow_admits_uncounted() {
        use tollgate_config::{LimitScope, OnStoreFailure};
        let (shared, store) = crate::counters_cluster::tests::cluster(3);
        let limits = RateLimits::compile(
            &[failing_over(
                2,
                "ip",
                LimitScope::Cluster,
                Some(OnStoreFailure::Allow),
            )],
            "global",
        );
        let req = Req::new();
        shared.set_failing(true);
        assert_eq!(passing_in(&limits, &store, &req, 10).await, 10);
        let status = limits.check_at(&store, &req.input(), t0()).await.unwrap();
        assert_eq!(status.closest(), None, "an uncounted limit has no headers");
        shared.set_failing(false);
        assert_eq!(passing_in(&limits, &store, &req, 10).await, 2);
    }

    #[tokio::test]
    async fn on_store_failure_local_counts_this_nodes_share() {
        use tollgate_config::LimitScope;
        // The default mode; 10 across 3 live nodes: 4 on this one.
        let (shared, store) = crate::counters_cluster::tests::cluster(3);
        let limits = RateLimits::compile(
            &[failing_over(10, "ip", LimitScope::Cluster, None)],
            "global",
        );
        let req = Req::new();
        assert_eq!(passing_in(&limits, &store, &req, 1).await, 1);
        shared.set_failing(true);
        let first = limits.check_at(&store, &req.input(), t0()).await.unwrap();
        assert_eq!(
            first.closest().map(|h| (h.limit, h.remaining)),
            Some((4, 3))
        );
        assert_eq!(passing_in(&limits, &store, &req, 10).await, 3);
        let denial = limits
            .check_at(&store, &req.input(), t0())
            .await
            .unwrap_err();
        assert_eq!(denial.code, "rate_limited");
        // Healed: back to the shared count (1 of 10 used).
        shared.set_failing(false);
        assert_eq!(passing_in(&limits, &store, &req, 20).await, 9);
    }

    #[tokio::test]
    async fn node_scope_counts_in_memory_even_with_a_shared_store() {
        use tollgate_config::LimitScope;
        let (shared, store) = crate::counters_cluster::tests::cluster(3);
        let limits =
            RateLimits::compile(&[failing_over(2, "ip", LimitScope::Node, None)], "global");
        let req = Req::new();
        assert_eq!(passing_in(&limits, &store, &req, 1).await, 1);
        assert_eq!(shared.inner.entry_count(), 0, "nothing in the shared store");
        // Not divided, and not affected by the shared store failing.
        shared.set_failing(true);
        assert_eq!(passing_in(&limits, &store, &req, 5).await, 1);
    }

    #[tokio::test]
    async fn a_refused_request_is_given_back_where_it_was_counted() {
        use tollgate_config::{LimitScope, OnStoreFailure};
        let (shared, store) = crate::counters_cluster::tests::cluster(1);
        let limits = RateLimits::compile(
            &[
                failing_over(2, "api", LimitScope::Cluster, Some(OnStoreFailure::Local)),
                failing_over(1, "ip", LimitScope::Node, None),
            ],
            "global",
        );
        shared.set_failing(true);
        assert!(passes_in(&limits, &store, &Req::new().ip(1)).await);
        // Refused by the node limit: its hit on the API's fallback counter
        // is given back, so client 2 still fits.
        assert!(!passes_in(&limits, &store, &Req::new().ip(1)).await);
        assert!(passes_in(&limits, &store, &Req::new().ip(2)).await);
        assert!(!passes_in(&limits, &store, &Req::new().ip(3)).await);
    }

    async fn passes_in(limits: &RateLimits, store: &dyn CounterStore, req: &Req) -> bool {
        limits.check_at(store, &req.input(), t0()).await.is_ok()
    }
}
