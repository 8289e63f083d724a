//! Upstream targets, their health, and how one is chosen for a request.
//!
//! A target's state (health, ejection, in-flight count) outlives snapshots: it
//! lives in the [`TargetRegistry`], keyed by service name and URL, so a reload
//! neither forgets that a target is down nor resets its balancing.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderName};
use tollgate_config::{Balance, PassiveHealth};

/// Milliseconds since the process started, from a monotonic clock.
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One upstream target's long-lived state.
#[derive(Debug)]
pub struct TargetState {
    pub service: Arc<str>,
    /// The URL as configured; also its name in metrics.
    pub url: Arc<str>,
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix from the URL, without a trailing '/'; usually empty.
    pub base_path: String,
    /// `host:port`, as written to access records.
    pub addr_label: Arc<str>,
    /// Set by active health checks; targets start healthy.
    healthy: AtomicBool,
    /// Passive ejection: not used before this time (see [`now_ms`]).
    ejected_until_ms: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Requests being served by this target, for `least_conn`.
    pub in_flight: AtomicUsize,
    /// `Host` for requests to this target: its authority.
    pub host_header: http::HeaderValue,
    /// Keep-alive connections, used when the target speaks plain HTTP/1.1.
    pub pool: crate::pool::Http1Pool,
    /// Keep-alive connections for bodiless requests to a plain HTTP/1.1
    /// target, driven in the request's task (see `proxy::goes_lean`).
    pub(crate) lean: Arc<crate::h1_client::H1Pool>,
}

impl TargetState {
    pub(crate) fn new(service: &str, url: &str) -> Option<TargetState> {
        let uri: http::Uri = url.parse().ok()?;
        let scheme = uri.scheme()?.clone();
        let authority = match uri.port_u16() {
            Some(_) => uri.authority()?.clone(),
            None => {
                let port = if scheme == Scheme::HTTPS { 443 } else { 80 };
                format!("{}:{port}", uri.host()?).parse().ok()?
            }
        };
        let base_path = uri.path().trim_end_matches('/').to_string();
        let host_header = http::HeaderValue::from_str(authority.as_str()).ok()?;
        Some(TargetState {
            service: service.into(),
            url: url.into(),
            addr_label: authority.as_str().into(),
            scheme,
            base_path,
            healthy: AtomicBool::new(true),
            ejected_until_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            lean: Arc::new(crate::h1_client::H1Pool::new(authority.as_str().to_owned())),
            authority,
            host_header,
            pool: crate::pool::Http1Pool::default(),
        })
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        metrics::gauge!(
            tollgate_telemetry::metrics::UPSTREAM_HEALTHY,
            "service" => self.service.to_string(),
            "target" => self.url.to_string()
        )
        .set(if healthy { 1.0 } else { 0.0 });
    }

    /// Healthy and not ejected. The clock is read only for a target that
    /// has been ejected once: every pick asks, and most never were.
    pub fn available(&self) -> bool {
        if !self.is_healthy() {
            return false;
        }
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || until <= now_ms()
    }

    /// A connect failure or timeout: after `passive.failures` in a row the
    /// target is ejected for `passive.cooldown`.
    pub fn record_failure(&self, passive: &PassiveHealth) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if passive.failures > 0 && failures >= passive.failures {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            let until = now_ms() + passive.cooldown.get().as_millis() as u64;
            self.ejected_until_ms.store(until, Ordering::Relaxed);
            tracing::warn!(service = %self.service, target = %self.url, failures, "upstream target ejected");
        }
    }

    pub fn record_success(&self) {
        // Read first: the common case writes nothing, keeping the cache line shared.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }
}

/// One upstream target's state, as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetHealth {
    pub service: String,
    pub url: String,
    /// What the active health check last said (healthy until it says not).
    pub healthy: bool,
    /// Taken out by passive checks (consecutive failures) for a while.
    pub ejected: bool,
}

/// Target states by (service, url), reused across snapshots.
#[derive(Default)]
pub struct TargetRegistry {
    targets: Mutex<HashMap<(String, String), Arc<TargetState>>>,
}

impl TargetRegistry {
    /// The state of a target, created healthy on first sight.
    pub fn get(&self, service: &str, url: &str) -> Option<Arc<TargetState>> {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        let key = (service.to_string(), url.to_string());
        if let Some(state) = targets.get(&key) {
            return Some(state.clone());
        }
        let state = Arc::new(TargetState::new(service, url)?);
        state.set_healthy(true);
        targets.insert(key, state.clone());
        Some(state)
    }

    /// Every known target's health, sorted by service and URL: what the
    /// admin API's `GET /admin/v1/upstreams` reports.
    pub fn health(&self) -> Vec<TargetHealth> {
        let targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ms();
        let mut health: Vec<TargetHealth> = targets
            .iter()
            .map(|((service, url), state)| TargetHealth {
                service: service.clone(),
                url: url.clone(),
                healthy: state.is_healthy(),
                ejected: state.ejected_until_ms.load(Ordering::Relaxed) > now,
            })
            .collect();
        health.sort_by(|a, b| (&a.service, &a.url).cmp(&(&b.service, &b.url)));
        health
    }

    /// Forgets targets no longer configured.
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        targets.retain(|(service, url), _| keep(service, url));
    }
}

/// The facts about a request a balancer may use.
pub struct PickInput<'a> {
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
}

/// Chooses a target; compiled per service per snapshot.
#[derive(Debug)]
pub enum Balancer {
    /// Smooth weighted round robin over a precomputed schedule.
    RoundRobin {
        schedule: Vec<u32>,
        cursor: AtomicUsize,
    },
    /// Fewest in-flight requests relative to weight.
    LeastConn { cursor: AtomicUsize },
    /// Weighted rendezvous hashing of a header's value; round robin when absent.
    HashHeader {
        header: HeaderName,
        fallback: Box<Balancer>,
    },
    /// Weighted rendezvous hashing of the client IP.
    HashIp,
}

impl Balancer {
    pub fn new(balance: &Balance, weights: &[u32]) -> Balancer {
        match balance {
            Balance::RoundRobin => Balancer::round_robin(weights),
            Balance::LeastConn => Balancer::LeastConn {
                cursor: AtomicUsize::new(0),
            },
            Balance::HashHeader(name) => Balancer::HashHeader {
                header: HeaderName::from_bytes(name.as_bytes())
                    .unwrap_or(HeaderName::from_static("x-unset")),
                fallback: Box::new(Balancer::round_robin(weights)),
            },
            Balance::HashIp => Balancer::HashIp,
        }
    }

    fn round_robin(weights: &[u32]) -> Balancer {
        Balancer::RoundRobin {
            schedule: smooth_weighted_schedule(weights),
            cursor: AtomicUsize::new(fastrand::usize(..1024)),
        }
    }

    /// Picks an available target not in `tried` (a bit per target index).
    pub fn pick(
        &self,
        targets: &[Arc<TargetState>],
        weights: &[u32],
        input: &PickInput<'_>,
        tried: u64,
    ) -> Option<usize> {
        let usable = |i: usize| tried & (1u64 << (i % 64)) == 0 && targets[i].available();
        match self {
            Balancer::RoundRobin { schedule, cursor } => {
                let start = cursor.fetch_add(1, Ordering::Relaxed);
                (0..schedule.len())
                    .map(|k| schedule[(start + k) % schedule.len()] as usize)
                    .find(|&i| usable(i))
            }
            Balancer::LeastConn { cursor } => {
                let start = cursor.fetch_add(1, Ordering::Relaxed);
                let n = targets.len();
                let mut best: Option<(usize, u64, u64)> = None;
                for k in 0..n {
                    let i = (start + k) % n;
                    if !usable(i) {
                        continue;
                    }
                    let load = targets[i].in_flight.load(Ordering::Relaxed) as u64;
                    let weight = weights[i] as u64;
                    // load_i / weight_i < load_b / weight_b, without division.
                    if best.is_none_or(|(_, bl, bw)| load * bw < bl * weight) {
                        best = Some((i, load, weight));
                    }
                }
                best.map(|(i, _, _)| i)
            }
            Balancer::HashHeader { header, fallback } => match input.headers.get(header) {
                Some(value) => rendezvous(targets, weights, value.as_bytes(), usable),
                None => fallback.pick(targets, weights, input, tried),
            },
            Balancer::HashIp => {
                let key = match input.client_ip {
                    IpAddr::V4(ip) => ip.octets().to_vec(),
                    IpAddr::V6(ip) => ip.octets().to_vec(),
                };
                rendezvous(targets, weights, &key, usable)
            }
        }
    }
}

/// Weighted rendezvous (highest random weight) hashing: a key keeps its target
/// while that target is up, and only the keys of a failed target move.
fn rendezvous(
    targets: &[Arc<TargetState>],
    weights: &[u32],
    key: &[u8],
    usable: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, target) in targets.iter().enumerate() {
        if !usable(i) {
            continue;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        target.url.hash(&mut hasher);
        let h = hasher.finish();
        // A uniform value in (0, 1); score = -w / ln(u) gives each target a share proportional to its weight.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = -(weights[i] as f64) / u.ln();
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// nginx's smooth weighted round robin, unrolled into a schedule: weights 1 and 2
/// give `b a b`, spreading each target's turns instead of bunching them.
fn smooth_weighted_schedule(weights: &[u32]) -> Vec<u32> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let mut reduced: Vec<u64> = weights.iter().map(|w| (*w / divisor) as u64).collect();
    let mut total: u64 = reduced.iter().sum();
    const MAX_SCHEDULE: u64 = 4096;
    if total > MAX_SCHEDULE {
        for w in reduced.iter_mut() {
            *w = (*w * MAX_SCHEDULE / total).max(1);
        }
        total = reduced.iter().sum();
    }
    let mut current = vec![0i64; reduced.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&reduced) {
            *c += *w as i64;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, -(*i as i64)))
            .unwrap();
        current[best] -= total as i64;
        schedule.push(best as u32);
    }
    if schedule.is_empty() {
        schedule.push(0);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(n: usize) -> Vec<Arc<TargetState>> {
        (0..n)
            .map(|i| {
                Arc::new(TargetState::new("s", &format!("http://127.0.0.1:{}", 9000 + i)).unwrap())
            })
            .collect()
    }

    fn input(headers: &HeaderMap) -> PickInput<'_> {
        PickInput {
            headers,
            client_ip: IpAddr::from([10, 0, 0, 1]),
        }
    }

    #[test]
    fn schedule_follows_weights_smoothly() {
        assert_eq!(smooth_weighted_schedule(&[1, 2]), vec![1, 0, 1]);
        let s = smooth_weighted_schedule(&[5, 1, 1]);
        assert_eq!(s.len(), 7);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(smooth_weighted_schedule(&[10, 20]), vec![1, 0, 1]);
    }

    #[test]
    fn round_robin_skips_unavailable_and_tried() {
        let t = targets(3);
        let weights = [1, 1, 1];
        let b = Balancer::new(&Balance::RoundRobin, &weights);
        let headers = HeaderMap::new();
        t[1].set_healthy(false);
        for _ in 0..10 {
            assert_ne!(b.pick(&t, &weights, &input(&headers), 0), Some(1));
        }
        assert_eq!(b.pick(&t, &weights, &input(&headers), 0b101), None);
    }

    #[test]
    fn least_conn_prefers_idle_targets() {
        let t = targets(2);
        let weights = [1, 1];
        let b = Balancer::new(&Balance::LeastConn, &weights);
        t[0].in_flight.store(5, Ordering::Relaxed);
        let headers = HeaderMap::new();
        for _ in 0..4 {
            assert_eq!(b.pick(&t, &weights, &input(&headers), 0), Some(1));
        }
    }

    #[test]
    fn hashing_is_sticky_and_moves_only_on_failure() {
        let t = targets(4);
        let weights = [1, 1, 1, 1];
        let b = Balancer::new(&Balance::HashHeader("x-user".into()), &weights);
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "alice".parse().unwrap());
        let first = b.pick(&t, &weights, &input(&headers), 0).unwrap();
        for _ in 0..5 {
            assert_eq!(b.pick(&t, &weights, &input(&headers), 0), Some(first));
        }
        t[first].set_healthy(false);
        let second = b.pick(&t, &weights, &input(&headers), 0).unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn passive_ejection_after_consecutive_failures() {
        let t = targets(1);
        let passive = PassiveHealth {
            failures: 2,
            cooldown: tollgate_config::Duration::from_secs(60),
        };
        t[0].record_failure(&passive);
        assert!(t[0].available());
        t[0].record_failure(&passive);
        assert!(!t[0].available());
    }
}
