//! Counting for a cluster: [`ClusterCounters`] pairs the store every node
//! shares (Redis) with this node's [`MemoryCounters`], and [`Placement`]
//! decides, per limit, where a hit is counted:
//!
//! - `scope: node`: always in this node's memory;
//! - `scope: cluster` (the default): in the shared store, and while it fails,
//!   per the limit's `on_store_failure`:
//!   - `local` (the default): in this node's memory, the limit divided by the
//!     live node count (rounded up, at least 1), which the heartbeat task
//!     publishes;
//!   - `allow`: not counted, the request admitted (fail open);
//!   - `deny`: refused with 503 `limit_unavailable` (fail closed).
//!
//! Every fallback increments `tollgate_counter_store_failures_total{mode}`;
//! the outage is logged when it starts, each mode once per outage, and the
//! recovery once. Healing needs nothing: every hit tries the shared store
//! first, and the first one it answers ends the outage.
//!
//! Without a shared store the node's memory is the only store: it never
//! fails, and `scope` and `on_store_failure` change nothing.
//!
//! What this module must never do: block a request on the fallback, or log
//! per request during an outage.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tollgate_config::{LimitScope, OnStoreFailure};

use crate::counters::{
    CounterError, CounterReply, CounterStore, MemoryCounters, QuotaHit, Rate, RateHit, RateRequest,
    RatesHit, SpendHold,
};
use crate::counters_synced::{Decision, SyncedRates};
use crate::Denial;

/// The metric every fallback increments, labelled by `mode`.
pub const FAILURES_METRIC: &str = "tollgate_counter_store_failures_total";

/// A shared store (Redis) and this node's memory, with the live node count.
pub struct ClusterCounters {
    shared: Arc<dyn CounterStore>,
    local: Arc<MemoryCounters>,
    live_nodes: Arc<AtomicUsize>,
    outage: Outage,
    /// The views of `sync_interval` limits' keys.
    synced: SyncedRates,
}

impl std::fmt::Debug for ClusterCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCounters")
            .field("live_nodes", &self.live_nodes.load(Ordering::Relaxed))
            .field("down", &self.outage.down.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ClusterCounters {
    /// `live_nodes` is read on each fallback: the heartbeat task keeps it
    /// current (values below 1 count as 1).
    pub fn new(
        shared: Arc<dyn CounterStore>,
        local: Arc<MemoryCounters>,
        live_nodes: Arc<AtomicUsize>,
    ) -> ClusterCounters {
        ClusterCounters {
            shared,
            local,
            live_nodes,
            outage: Outage::default(),
            synced: SyncedRates::default(),
        }
    }

    /// Starts the task that sends the batches of `sync_interval` limits
    /// every interval; it ends when the counters are dropped.
    pub fn spawn_sync(self: &Arc<Self>) {
        let counters = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::counters_synced::TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(counters) = counters.upgrade() else {
                    return;
                };
                if counters.synced.is_empty() {
                    continue;
                }
                let live_nodes = counters.live_nodes();
                let now_us = crate::counters::unix_micros(std::time::SystemTime::now());
                // Through the cluster store itself: its outages are observed
                // as a request's are.
                counters
                    .synced
                    .sync_due(&*counters, live_nodes, now_us)
                    .await;
            }
        });
    }

    fn live_nodes(&self) -> usize {
        self.live_nodes.load(Ordering::Relaxed).max(1)
    }

    /// Whether the shared store failed on its last call.
    pub fn is_down(&self) -> bool {
        self.outage.down.load(Ordering::Acquire)
    }

    /// `reply`, observed on completion to track the outage.
    fn watch<'a, T>(&'a self, reply: CounterReply<'a, T>) -> CounterReply<'a, T>
    where
        T: Send + Unpin + 'a,
    {
        match reply {
            CounterReply::Ready(Some(result)) => {
                self.outage.observe(&result);
                CounterReply::Ready(Some(result))
            }
            CounterReply::Ready(None) => CounterReply::Ready(None),
            CounterReply::Pending(future) => CounterReply::boxed(async move {
                let result = future.await;
                self.outage.observe(&result);
                result
            }),
        }
    }
}

impl CounterStore for ClusterCounters {
    fn acquire_rate_n<'a>(
        &'a self,
        key: &'a str,
        rate: Rate,
        n: u64,
        now_us: u64,
    ) -> CounterReply<'a, RateHit> {
        self.watch(self.shared.acquire_rate_n(key, rate, n, now_us))
    }

    fn release_rate_n<'a>(&'a self, key: &'a str, rate: Rate, n: u64) -> CounterReply<'a, ()> {
        self.watch(self.shared.release_rate_n(key, rate, n))
    }

    fn acquire_rates<'a>(
        &'a self,
        requests: &'a [RateRequest<'a>],
        now_us: u64,
    ) -> CounterReply<'a, RatesHit> {
        self.watch(self.shared.acquire_rates(requests, now_us))
    }

    fn sync_rate<'a>(
        &'a self,
        key: &'a str,
        rate: Rate,
        pushed: u64,
        n: u64,
        now_us: u64,
    ) -> CounterReply<'a, RateHit> {
        self.watch(self.shared.sync_rate(key, rate, pushed, n, now_us))
    }

    fn acquire_rate_synced<'a>(
        &'a self,
        key: &'a str,
        rate: Rate,
        every: Duration,
        now_us: u64,
    ) -> CounterReply<'a, RateHit> {
        match self.synced.decide(key, rate, every, now_us) {
            Decision::Local(hit) => CounterReply::ready(Ok(hit)),
            Decision::Sync(in_flight) => CounterReply::boxed(async move {
                let answer = self.sync_rate(key, rate, in_flight.sent(), 1, now_us).await;
                in_flight.answered(&answer, now_us, self.live_nodes());
                answer
            }),
        }
    }

    fn add_total<'a>(
        &'a self,
        key: &'a str,
        amount: u64,
        expires_at: i64,
    ) -> CounterReply<'a, u64> {
        self.watch(self.shared.add_total(key, amount, expires_at))
    }

    fn read_total<'a>(&'a self, key: &'a str) -> CounterReply<'a, u64> {
        self.watch(self.shared.read_total(key))
    }

    fn hold_spend<'a>(
        &'a self,
        key: &'a str,
        amount: u64,
        limit: u64,
        expires_at: i64,
    ) -> CounterReply<'a, SpendHold> {
        self.watch(self.shared.hold_spend(key, amount, limit, expires_at))
    }

    fn settle_spend<'a>(
        &'a self,
        key: &'a str,
        held: u64,
        cost: u64,
        expires_at: i64,
    ) -> CounterReply<'a, ()> {
        self.watch(self.shared.settle_spend(key, held, cost, expires_at))
    }

    fn acquire_quota<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
        expires_at: i64,
    ) -> CounterReply<'a, QuotaHit> {
        self.watch(self.shared.acquire_quota(key, limit, expires_at))
    }

    fn node_local(&self) -> Option<NodeLocal<'_>> {
        Some(NodeLocal {
            store: &*self.local,
            live_nodes: self.live_nodes(),
            outage: Some(&self.outage),
        })
    }
}

/// The node-local side of a [`ClusterCounters`], as a policy sees it.
#[derive(Clone, Copy)]
pub struct NodeLocal<'a> {
    pub store: &'a dyn CounterStore,
    /// The live node count when it was asked for (at least 1).
    pub live_nodes: usize,
    outage: Option<&'a Outage>,
}

/// The shared store's state, for logging once per outage.
#[derive(Debug, Default)]
struct Outage {
    down: AtomicBool,
    /// Per [`OnStoreFailure`]: whether its fallback was logged this outage.
    logged: [AtomicBool; 3],
}

impl Outage {
    fn observe<T>(&self, result: &Result<T, CounterError>) {
        match result {
            Ok(_) => {
                if self.down.load(Ordering::Acquire) && self.down.swap(false, Ordering::AcqRel) {
                    for logged in &self.logged {
                        logged.store(false, Ordering::Release);
                    }
                    tracing::info!("the shared counter store answers again: limits count in it");
                }
            }
            Err(error) => {
                if !self.down.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        %error,
                        "the shared counter store fails: each limit follows its on_store_failure until it answers"
                    );
                }
            }
        }
    }

    /// Whether this mode's fallback is the first of the outage.
    fn first(&self, mode: OnStoreFailure) -> bool {
        let index = match mode {
            OnStoreFailure::Local => 0,
            OnStoreFailure::Allow => 1,
            OnStoreFailure::Deny => 2,
        };
        !self.logged[index].swap(true, Ordering::AcqRel)
    }
}

/// Where one limit counts, per its `scope` and `on_store_failure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub scope: LimitScope,
    pub on_failure: OnStoreFailure,
}

impl Placement {
    pub fn new(scope: LimitScope, on_failure: Option<OnStoreFailure>) -> Placement {
        Placement {
            scope,
            on_failure: on_failure.unwrap_or_default(),
        }
    }

    /// The store the limit counts in first: the node's memory for a `node`
    /// limit, `store` itself otherwise.
    pub fn first<'a>(&self, store: &'a dyn CounterStore) -> &'a dyn CounterStore {
        match self.scope {
            LimitScope::Node => store.node_local().map_or(store, |local| local.store),
            LimitScope::Cluster => store,
        }
    }

    /// What to do after `store` (as given to [`first`](Self::first)) failed
    /// for the limit named `limit` (`rate_limit`, `quota`…): meters it, logs
    /// it once per outage.
    pub fn on_failure<'a>(
        &self,
        store: &'a dyn CounterStore,
        limit: &'static str,
        error: &CounterError,
    ) -> Fallback<'a> {
        let local = store.node_local();
        // A store with no node-local side (never the case in a gateway) has
        // nowhere to fall back to: it fails open.
        let mode = match (self.on_failure, local) {
            (OnStoreFailure::Local, None) => OnStoreFailure::Allow,
            (mode, _) => mode,
        };
        metrics::counter!(FAILURES_METRIC, "mode" => mode.as_str()).increment(1);
        let first = local
            .and_then(|local| local.outage)
            .is_none_or(|outage| outage.first(mode));
        if first {
            match mode {
                OnStoreFailure::Local => tracing::warn!(
                    limit,
                    %error,
                    live_nodes = local.map_or(1, |l| l.live_nodes),
                    "limits count in this node's memory, divided by the live node count, until the shared counter store answers"
                ),
                OnStoreFailure::Allow => tracing::warn!(
                    limit,
                    %error,
                    "limits with on_store_failure: allow are not enforced until the shared counter store answers"
                ),
                OnStoreFailure::Deny => tracing::warn!(
                    limit,
                    %error,
                    "requests under limits with on_store_failure: deny are refused (503) until the shared counter store answers"
                ),
            }
        } else {
            tracing::debug!(limit, %error, mode = mode.as_str(), "counter store failed");
        }
        match (mode, local) {
            (OnStoreFailure::Local, Some(local)) => Fallback::Local(Divided {
                store: local.store,
                nodes: local.live_nodes,
            }),
            (OnStoreFailure::Deny, _) => Fallback::Deny(Denial::limit_unavailable(format!(
                "the {limit} cannot be checked: its counter store does not answer"
            ))),
            _ => Fallback::Allow,
        }
    }
}

/// What a limit does once its store failed.
pub enum Fallback<'a> {
    /// Admit, uncounted.
    Allow,
    /// Refuse with this denial.
    Deny(Denial),
    /// Count in this node's memory, the limit divided.
    Local(Divided<'a>),
}

/// This node's memory, and the live node count a limit is divided by.
#[derive(Clone, Copy)]
pub struct Divided<'a> {
    pub store: &'a dyn CounterStore,
    pub nodes: usize,
}

impl Divided<'_> {
    /// This node's share of `limit`: rounded up, at least 1.
    pub fn share(&self, limit: u64) -> u64 {
        let nodes = u64::try_from(self.nodes.max(1)).unwrap_or(u64::MAX);
        limit.div_ceil(nodes).max(1)
    }

    /// This node's share of `limit` per `window`, as a rate.
    pub fn rate(&self, limit: u64, window: Duration) -> Rate {
        Rate::per_window(self.share(limit), window)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A store that fails while told to, for the policies' tests: in front
    /// of a memory store standing for Redis.
    #[derive(Default)]
    pub(crate) struct Flaky {
        pub(crate) inner: MemoryCounters,
        pub(crate) failing: AtomicBool,
    }

    impl Flaky {
        pub(crate) fn set_failing(&self, failing: bool) {
            self.failing.store(failing, Ordering::SeqCst);
        }

        fn check(&self) -> Result<(), CounterError> {
            if self.failing.load(Ordering::SeqCst) {
                Err(CounterError::new("connection refused (test)"))
            } else {
                Ok(())
            }
        }
    }

    impl CounterStore for Flaky {
        fn acquire_rate_n<'a>(
            &'a self,
            key: &'a str,
            rate: Rate,
            n: u64,
            now_us: u64,
        ) -> CounterReply<'a, RateHit> {
            match self.check() {
                Ok(()) => self.inner.acquire_rate_n(key, rate, n, now_us),
                Err(error) => CounterReply::ready(Err(error)),
            }
        }

        fn release_rate_n<'a>(&'a self, key: &'a str, rate: Rate, n: u64) -> CounterReply<'a, ()> {
            match self.check() {
                Ok(()) => self.inner.release_rate_n(key, rate, n),
                Err(error) => CounterReply::ready(Err(error)),
            }
        }

        fn add_total<'a>(
            &'a self,
            key: &'a str,
            amount: u64,
            expires_at: i64,
        ) -> CounterReply<'a, u64> {
            match self.check() {
                Ok(()) => self.inner.add_total(key, amount, expires_at),
                Err(error) => CounterReply::ready(Err(error)),
            }
        }

        fn read_total<'a>(&'a self, key: &'a str) -> CounterReply<'a, u64> {
            match self.check() {
                Ok(()) => self.inner.read_total(key),
                Err(error) => CounterReply::ready(Err(error)),
            }
        }

        fn sync_rate<'a>(
            &'a self,
            key: &'a str,
            rate: Rate,
            pushed: u64,
            n: u64,
            now_us: u64,
        ) -> CounterReply<'a, RateHit> {
            match self.check() {
                Ok(()) => self.inner.sync_rate(key, rate, pushed, n, now_us),
                Err(error) => CounterReply::ready(Err(error)),
            }
        }

        fn acquire_quota<'a>(
            &'a self,
            key: &'a str,
            limit: u64,
            expires_at: i64,
        ) -> CounterReply<'a, QuotaHit> {
            match self.check() {
                Ok(()) => self.inner.acquire_quota(key, limit, expires_at),
                Err(error) => CounterReply::ready(Err(error)),
            }
        }
    }

    /// A cluster store over a [`Flaky`] "Redis", with `nodes` live nodes.
    pub(crate) fn cluster(nodes: usize) -> (Arc<Flaky>, ClusterCounters) {
        let shared = Arc::new(Flaky::default());
        let store = ClusterCounters::new(
            shared.clone(),
            Arc::new(MemoryCounters::new()),
            Arc::new(AtomicUsize::new(nodes)),
        );
        (shared, store)
    }

    #[test]
    fn shares_round_up_and_never_reach_zero() {
        let local = MemoryCounters::new();
        let divided = |nodes| Divided {
            store: &local,
            nodes,
        };
        assert_eq!(divided(3).share(10), 4);
        assert_eq!(divided(2).share(10), 5);
        assert_eq!(divided(0).share(10), 10);
        assert_eq!(divided(5).share(1), 1);
    }

    #[tokio::test]
    async fn an_outage_starts_on_a_failure_and_ends_on_a_success() {
        let (shared, store) = cluster(2);
        let rate = Rate::per_window(5, Duration::from_secs(60));
        assert!(store.acquire_rate("k", rate, 1).await.is_ok());
        assert!(!store.is_down());
        shared.set_failing(true);
        assert!(store.acquire_rate("k", rate, 1).await.is_err());
        assert!(store.is_down());
        let local = store.node_local().unwrap();
        assert_eq!(local.live_nodes, 2);
        let outage = local.outage.unwrap();
        assert!(outage.first(OnStoreFailure::Local));
        assert!(!outage.first(OnStoreFailure::Local), "logged once");
        assert!(outage.first(OnStoreFailure::Deny));
        shared.set_failing(false);
        assert!(store.read_total("t").await.is_ok());
        assert!(!store.is_down());
        assert!(
            outage.first(OnStoreFailure::Local),
            "a new outage logs again"
        );
    }
}
