//! `sync_interval`: rate limits on very hot keys that count in Redis in
//! batches rather than once per request.
//!
//! For each such key a node keeps its view of the shared count — the key's
//! TAT as Redis last answered it — and the hits it admitted since, not yet
//! sent. Between syncs it admits a hit on its own view while that view
//! admits it and while it has admitted fewer than its **allowance**: its
//! share of what remained at the last sync, `⌊remaining / live nodes⌋`.
//! Every `sync_interval` (and at once whenever the allowance is used up) it
//! sends its batch to Redis in one call ([`CounterStore::sync_rate`]), which
//! adds the batch and answers the new count. With an allowance of 0 (less
//! than one hit per node remained) every hit counts in Redis, exactly, as
//! without `sync_interval`.
//!
//! **The error bound.** A node never holds more than its allowance unsent,
//! and an allowance is at most `⌊limit / nodes⌋`; a hit it sends was admitted
//! on a view that missed only the other nodes' unsent hits. So the cluster
//! admits at most `limit + (nodes − 1) × ⌊limit / nodes⌋` per burst, and in
//! practice no more than what the other nodes admit in one `sync_interval`
//! beyond `limit`. Hits on their way to the store (a batch, or a hit it is
//! judging) count on the view until it answers: a view that missed them
//! admitted one over the limit now and then, even on a single node. It
//! never admits fewer than `limit`: a hit is refused only on a view that
//! holds that many admitted hits, or by Redis itself.
//!
//! The node's and Redis's clocks may differ: each entry keeps the offset
//! Redis's `TIME` had to the node's clock at its last sync, and judges on
//! Redis's time.
//!
//! When a sync fails, the batch stays unsent (it goes with the next one) and
//! the hit that needed it follows its limit's `on_store_failure`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::counters::{CounterError, CounterMap, CounterStore, Rate, RateHit};

/// How often the sync task looks for keys due.
pub const TICK: Duration = Duration::from_millis(5);

/// A key nobody hit for this long (and with nothing unsent) is forgotten:
/// its next hit syncs first.
const IDLE: Duration = Duration::from_secs(2);

/// The per-key views of one node.
#[derive(Debug, Default)]
pub struct SyncedRates {
    entries: CounterMap<Mutex<View>>,
}

#[derive(Debug)]
struct View {
    rate: Rate,
    every: Duration,
    /// The key's TAT in the shared store at the last sync, in the store's
    /// time (Unix µs).
    known_tat: u64,
    /// The store's clock minus this node's, at the last sync (µs).
    offset: i64,
    /// Hits admitted on this view and not sent yet.
    unsent: u64,
    /// Hits sent and not answered yet, and hits sent to be judged by the
    /// store. The view counts them until the store's answer (which holds
    /// them) comes. Without them, a hit judged while they were out was
    /// judged on a view that missed them, and admitted one over the limit
    /// on a single node about once in 200 bursts of the unit test.
    in_flight: u64,
    /// How many unsent hits this node may hold before it syncs.
    allowance: u64,
    last_sync: Instant,
    last_used: Instant,
}

/// What a hit does after looking at its key's view.
pub enum Decision<'a> {
    /// Judged on the view: no round trip.
    Local(RateHit),
    /// Send the view's unsent hits with this one, and judge it in the store;
    /// they count on the view as in flight until [`InFlight::answered`].
    Sync(InFlight<'a>),
}

impl View {
    fn new(rate: Rate, every: Duration) -> View {
        let now = Instant::now();
        View {
            rate,
            every,
            known_tat: 0,
            offset: 0,
            unsent: 0,
            in_flight: 0,
            allowance: 0,
            last_sync: now,
            last_used: now,
        }
    }

    fn store_time(&self, now_us: u64) -> u64 {
        now_us.saturating_add_signed(self.offset)
    }

    /// Takes `sent` hits off the view's unsent ones, to send with `judged`
    /// hits (0 or 1) for the store to judge.
    fn send(&mut self, sent: u64, judged: u64) {
        self.unsent -= sent;
        self.in_flight += sent + judged;
    }

    /// What the store answered for the hits of [`View::send`]: they are in
    /// its count now (the judged one if it admitted it), or, on a failure,
    /// the sent ones are unsent again (sent with the next sync).
    fn answered(
        &mut self,
        answer: &Result<RateHit, CounterError>,
        sent: u64,
        judged: u64,
        sent_at_us: u64,
        live_nodes: usize,
    ) {
        match answer {
            Ok(hit) => {
                self.in_flight = self.in_flight.saturating_sub(sent + judged);
                self.learn(*hit, sent_at_us, u64::try_from(live_nodes).unwrap_or(1));
            }
            Err(_) => self.give_back(sent, judged),
        }
    }

    /// Hits of [`View::send`] with no answer: the sent ones are unsent again.
    fn give_back(&mut self, sent: u64, judged: u64) {
        self.in_flight = self.in_flight.saturating_sub(sent + judged);
        self.unsent += sent;
    }

    /// Takes what the store answered a sync made at node time `sent_at_us`.
    fn learn(&mut self, hit: RateHit, sent_at_us: u64, live_nodes: u64) {
        self.known_tat = self.known_tat.max(hit.tat);
        self.offset = i64::try_from(hit.at_us)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(sent_at_us).unwrap_or(i64::MAX));
        let remaining = hit.remaining(self.rate, hit.at_us);
        self.allowance = remaining / live_nodes.max(1);
        self.last_sync = Instant::now();
    }
}

impl SyncedRates {
    /// Judges one hit on `key`'s view, or says it must sync.
    pub fn decide<'a>(
        &'a self,
        key: &'a str,
        rate: Rate,
        every: Duration,
        now_us: u64,
    ) -> Decision<'a> {
        let entry = match self.entries.get(key) {
            Some(entry) => entry,
            None => self
                .entries
                .entry(key.into())
                .or_insert_with(|| Mutex::new(View::new(rate, every)))
                .downgrade(),
        };
        let mut view = entry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        view.rate = rate;
        view.every = every;
        view.last_used = Instant::now();
        let now = view.store_time(now_us);
        let counted = view.unsent + view.in_flight;
        let base = view
            .known_tat
            .max(now)
            .saturating_add(rate.interval_us.saturating_mul(counted));
        let hit = rate.apply_n(base, now, 1);
        // A view that refuses is right: it holds only hits really admitted
        // (the store's count at the last sync, and this node's since), so
        // a key over its limit costs no round trip either.
        if !hit.allowed {
            return Decision::Local(hit);
        }
        if view.unsent >= view.allowance {
            let unsent = view.unsent;
            view.send(unsent, 1);
            // Until the store answers, the node's other hits on this key
            // count in the store one by one.
            view.allowance = 0;
            return Decision::Sync(InFlight {
                rates: self,
                key,
                sent: unsent,
                judged: 1,
                answered: false,
            });
        }
        view.unsent += 1;
        Decision::Local(hit)
    }

    fn with_view(&self, key: &str, f: impl FnOnce(&mut View)) {
        if let Some(entry) = self.entries.get(key) {
            let mut view = entry
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut view);
        }
    }

    /// Sends the unsent hits of every key due (synced longer than its
    /// interval ago) and forgets idle keys.
    pub async fn sync_due(&self, store: &dyn CounterStore, live_nodes: usize, now_us: u64) {
        let mut due: Vec<(Box<str>, Rate, u64)> = Vec::new();
        self.entries.retain(|key, view| {
            let view = view
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if view.unsent == 0 && view.in_flight == 0 && view.last_used.elapsed() > IDLE {
                return false;
            }
            if view.last_sync.elapsed() >= view.every {
                let unsent = view.unsent;
                view.send(unsent, 0);
                view.allowance = view.allowance.saturating_sub(unsent);
                // Not due again before this sync answers.
                view.last_sync = Instant::now();
                due.push((key.clone(), view.rate, unsent));
            }
            true
        });
        for (key, rate, unsent) in due {
            let in_flight = InFlight {
                rates: self,
                key: &key,
                sent: unsent,
                judged: 0,
                answered: false,
            };
            let answer = store.sync_rate(&key, rate, unsent, 0, now_us).await;
            // Hits admitted while the sync was out are unsent still, and
            // part of the new allowance.
            in_flight.answered(&answer, now_us, live_nodes);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A sync's hits (the unsent ones it takes along, and the one the store
/// judges for a [`Decision::Sync`]), counted by their view until the store
/// answers. Dropped unanswered (the request, or the flusher, went away),
/// the sent hits are unsent again: they may have reached the store, and a
/// limit had rather count a hit twice than not at all.
pub struct InFlight<'a> {
    rates: &'a SyncedRates,
    key: &'a str,
    sent: u64,
    /// 1 when the store judges a hit with them, 0 for a periodic sync.
    judged: u64,
    answered: bool,
}

impl InFlight<'_> {
    /// The unsent hits this sync takes along.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// What the store answered the sync made at node time `now_us`.
    pub fn answered(
        mut self,
        answer: &Result<RateHit, CounterError>,
        now_us: u64,
        live_nodes: usize,
    ) {
        self.answered = true;
        let (sent, judged) = (self.sent, self.judged);
        self.rates.with_view(self.key, |view| {
            view.answered(answer, sent, judged, now_us, live_nodes);
        });
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.answered {
            let (sent, judged) = (self.sent, self.judged);
            self.rates
                .with_view(self.key, |view| view.give_back(sent, judged));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use crate::counters::{unix_micros, CounterReply, CounterStore, MemoryCounters, QuotaHit};
    use crate::counters::{Rate, RateHit};
    use crate::counters_cluster::ClusterCounters;

    use super::{Decision, SyncedRates, View};

    /// A shared store that counts the calls made to it.
    #[derive(Default)]
    struct Counted {
        inner: MemoryCounters,
        calls: AtomicU64,
        /// Its syncs never answer.
        stalls_syncs: bool,
    }

    impl Counted {
        fn call(&self) {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl CounterStore for Counted {
        fn acquire_rate_n<'a>(
            &'a self,
            key: &'a str,
            rate: Rate,
            n: u64,
            now_us: u64,
        ) -> CounterReply<'a, RateHit> {
            self.call();
            self.inner.acquire_rate_n(key, rate, n, now_us)
        }

        fn release_rate_n<'a>(&'a self, key: &'a str, rate: Rate, n: u64) -> CounterReply<'a, ()> {
            self.call();
            self.inner.release_rate_n(key, rate, n)
        }

        fn sync_rate<'a>(
            &'a self,
            key: &'a str,
            rate: Rate,
            pushed: u64,
            n: u64,
            now_us: u64,
        ) -> CounterReply<'a, RateHit> {
            self.call();
            if self.stalls_syncs {
                return CounterReply::boxed(std::future::pending());
            }
            self.inner.sync_rate(key, rate, pushed, n, now_us)
        }

        fn add_total<'a>(
            &'a self,
            key: &'a str,
            amount: u64,
            expires_at: i64,
        ) -> CounterReply<'a, u64> {
            self.inner.add_total(key, amount, expires_at)
        }

        fn read_total<'a>(&'a self, key: &'a str) -> CounterReply<'a, u64> {
            self.inner.read_total(key)
        }

        fn acquire_quota<'a>(
            &'a self,
            key: &'a str,
            limit: u64,
            expires_at: i64,
        ) -> CounterReply<'a, QuotaHit> {
            self.inner.acquire_quota(key, limit, expires_at)
        }
    }

    fn nodes(shared: &Arc<Counted>, count: usize) -> Vec<Arc<ClusterCounters>> {
        let live = Arc::new(AtomicUsize::new(count));
        (0..count)
            .map(|_| {
                let node = Arc::new(ClusterCounters::new(
                    shared.clone(),
                    Arc::new(MemoryCounters::new()),
                    live.clone(),
                ));
                node.spawn_sync();
                node
            })
            .collect()
    }

    fn now_us() -> u64 {
        unix_micros(SystemTime::now())
    }

    /// Hits `nodes` (round robin, many tasks at once) `hits` times; returns
    /// how many were admitted.
    async fn hammer(nodes: &[Arc<ClusterCounters>], rate: Rate, hits: usize) -> usize {
        let every = Duration::from_millis(20);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..hits {
            let node = nodes[i % nodes.len()].clone();
            tasks.spawn(async move {
                if i % 7 == 0 {
                    tokio::time::sleep(Duration::from_millis((i % 5) as u64)).await;
                }
                node.acquire_rate_synced("hot", rate, every, now_us())
                    .await
                    .unwrap()
                    .allowed
            });
        }
        let mut admitted = 0;
        while let Some(allowed) = tasks.join_next().await {
            admitted += usize::from(allowed.unwrap());
        }
        admitted
    }

    #[test]
    fn hits_out_to_the_store_count_until_answered_and_come_back_if_dropped() {
        let rates = SyncedRates::default();
        let rate = Rate::per_window(10, Duration::from_secs(60));
        let every = Duration::from_secs(60);
        let now = now_us();
        let view = |f: fn(&View) -> u64| {
            let mut value = 0;
            rates.with_view("k", |view| value = f(view));
            value
        };
        // A new key's first hit is judged by the store, and counted meanwhile.
        let Decision::Sync(first) = rates.decide("k", rate, every, now) else {
            panic!("a new key syncs first");
        };
        assert_eq!(first.sent(), 0);
        assert_eq!(view(|v| v.in_flight), 1);
        let admitted = RateHit {
            allowed: true,
            tat: now + rate.interval_us,
            at_us: now,
        };
        first.answered(&Ok(admitted), now, 1);
        assert_eq!((view(|v| v.in_flight), view(|v| v.allowance)), (0, 9));

        // Three hits on the view, then one that must sync takes them along.
        for _ in 0..3 {
            assert!(matches!(
                rates.decide("k", rate, every, now),
                Decision::Local(RateHit { allowed: true, .. })
            ));
        }
        rates.with_view("k", |v| v.allowance = 3);
        let Decision::Sync(out) = rates.decide("k", rate, every, now) else {
            panic!("the allowance is spent");
        };
        assert_eq!(out.sent(), 3);
        assert_eq!((view(|v| v.unsent), view(|v| v.in_flight)), (0, 4));
        // While they are out, the view counts them: 1 + 4 of 10, so five more.
        let mut judged = Vec::new();
        for _ in 0..5 {
            let Decision::Sync(one) = rates.decide("k", rate, every, now) else {
                panic!("no allowance while a sync is out");
            };
            judged.push(one);
        }
        assert!(matches!(
            rates.decide("k", rate, every, now),
            Decision::Local(RateHit { allowed: false, .. })
        ));
        // Dropped unanswered (the request went away): its batch is unsent
        // again, and its judged hit no longer counts.
        drop(out);
        assert_eq!((view(|v| v.unsent), view(|v| v.in_flight)), (3, 5));
    }

    /// The flusher's periodic sync holds its hits the same way: dropped
    /// before the store answers (the node shutting down), they are unsent
    /// again, not left counted as in flight for ever.
    #[tokio::test]
    async fn a_periodic_sync_dropped_unanswered_gives_its_hits_back() {
        let rates = SyncedRates::default();
        let rate = Rate::per_window(10, Duration::from_secs(60));
        let every = Duration::ZERO;
        let now = now_us();
        let Decision::Sync(first) = rates.decide("k", rate, every, now) else {
            panic!("a new key syncs first");
        };
        let admitted = RateHit {
            allowed: true,
            tat: now + rate.interval_us,
            at_us: now,
        };
        first.answered(&Ok(admitted), now, 1);
        for _ in 0..3 {
            assert!(matches!(
                rates.decide("k", rate, every, now),
                Decision::Local(RateHit { allowed: true, .. })
            ));
        }
        let stalled = Counted {
            stalls_syncs: true,
            ..Counted::default()
        };
        let sync = rates.sync_due(&stalled, 1, now);
        assert!(tokio::time::timeout(Duration::from_millis(20), sync)
            .await
            .is_err());
        assert_eq!(stalled.calls.load(Ordering::Relaxed), 1, "it was sent");
        let mut counts = (0, 0);
        rates.with_view("k", |v| counts = (v.unsent, v.in_flight));
        assert_eq!(counts, (3, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_node_admits_exactly_the_limit_in_few_calls() {
        let shared = Arc::new(Counted::default());
        let nodes = nodes(&shared, 1);
        let rate = Rate::per_window(200, Duration::from_secs(3600));
        assert_eq!(hammer(&nodes, rate, 500).await, 200);
        let calls = shared.calls.load(Ordering::Relaxed);
        // Without sync_interval: 500 calls. With it, the node admits on its
        // view and calls when its allowance is spent or the interval is up.
        assert!(calls < 100, "{calls} calls");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn three_nodes_admit_the_limit_within_the_documented_bound() {
        for _ in 0..5 {
            let shared = Arc::new(Counted::default());
            let nodes = nodes(&shared, 3);
            let limit = 90;
            let rate = Rate::per_window(limit, Duration::from_secs(3600));
            let admitted = hammer(&nodes, rate, 600).await;
            let bound = (3 - 1) * (limit as usize / 3);
            assert!(
                admitted >= limit as usize && admitted <= limit as usize + bound,
                "{admitted} admitted, bound {limit} + {bound}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn unsent_hits_reach_the_shared_store_within_an_interval() {
        let shared = Arc::new(Counted::default());
        let nodes = nodes(&shared, 1);
        let rate = Rate::per_window(1000, Duration::from_secs(3600));
        assert_eq!(hammer(&nodes, rate, 50).await, 50);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The shared key holds all 50: 950 remain.
        let hit = shared
            .inner
            .sync_rate("hot", rate, 0, 0, now_us())
            .await
            .unwrap();
        assert_eq!(hit.remaining(rate, hit.at_us), 950, "{hit:?}");
    }
}
