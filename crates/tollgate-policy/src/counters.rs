//! Where rate-limit and quota counts live: the [`CounterStore`] interface the
//! policies call on the request path, and [`MemoryCounters`], its single-node
//! implementation; [`crate::counters_redis`] shares them between nodes.
//!
//! Two kinds of counters:
//!
//! - **Rates** (GCRA, see [`crate::rate_limit`]): one number per key, its
//!   *theoretical arrival time* (TAT) in Unix microseconds. A hit moves it
//!   forward by the limit's emission interval if that keeps it within the
//!   burst tolerance of now; giving the hit back moves it back. A key whose TAT
//!   is in the past holds nothing and is dropped.
//! - **Quotas** (see [`crate::quota`]): a count per key and calendar period,
//!   with the end of the period as its expiry. They must survive a restart:
//!   [`MemoryCounters`] marks changed quota keys dirty, and the task started by
//!   [`spawn_flusher`] writes them through [`CounterPersistence`] (the binary
//!   wires the SQLite store into it) and loads them back at startup with
//!   [`MemoryCounters::restore`].
//!
//! Every method takes the caller's clock, so stores agree with one another
//! and tests can move time. Nothing here blocks or allocates on the request
//! path except the map's own copy of a key the first time it is seen; the
//! database is only touched by the flusher task, through `spawn_blocking`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

/// The maps behind the counters, keyed by strings such as
/// `rl|<scope>|<subject>`. Hashed with foldhash, seeded at random per
/// process, instead of the standard SipHash: every limited request hashes
/// its keys several times (measured: SipHash ~2,000 instructions per AI
/// call), and foldhash is several times cheaper on short keys.
pub(crate) type CounterMap<V> = DashMap<Box<str>, V, foldhash::fast::RandomState>;

/// Why a counter store could not answer. Each limit then follows its
/// `on_store_failure` ([`crate::counters_cluster`]): by default it counts in
/// the node's memory, so that a store outage does not take every API down
/// with it.
#[derive(Debug, thiserror::Error)]
#[error("counter store unavailable: {source}")]
pub struct CounterError {
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl CounterError {
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> CounterError {
        CounterError {
            source: source.into(),
        }
    }
}

/// The answer of a [`CounterStore`] method: immediate for a store in memory
/// (no allocation), a boxed future for a remote one. Dyn-compatible, and a
/// `Future` to `.await` either way.
pub enum CounterReply<'a, T> {
    /// Holds the answer until polled; `None` once taken.
    Ready(Option<Result<T, CounterError>>),
    Pending(Pin<Box<dyn Future<Output = Result<T, CounterError>> + Send + 'a>>),
}

impl<'a, T> CounterReply<'a, T> {
    pub fn ready(result: Result<T, CounterError>) -> CounterReply<'a, T> {
        CounterReply::Ready(Some(result))
    }

    pub fn boxed(
        future: impl Future<Output = Result<T, CounterError>> + Send + 'a,
    ) -> CounterReply<'a, T> {
        CounterReply::Pending(Box::pin(future))
    }
}

impl<T: Unpin> Future for CounterReply<'_, T> {
    type Output = Result<T, CounterError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            CounterReply::Ready(answer) => {
                Poll::Ready(answer.take().expect("CounterReply polled after completion"))
            }
            CounterReply::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

/// A rate as GCRA applies it: one hit every `interval_us` on average, up to
/// `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// The emission interval: the window divided by the limit (at least 1 µs).
    pub interval_us: u64,
    /// The limit: how many hits a fresh key admits at once.
    pub burst: u64,
}

impl Rate {
    /// `limit` hits per `window`.
    pub fn per_window(limit: u64, window: Duration) -> Rate {
        let burst = limit.max(1);
        let window_us = u64::try_from(window.as_micros()).unwrap_or(u64::MAX);
        Rate {
            interval_us: (window_us / burst).max(1),
            burst,
        }
    }

    /// How far ahead of now the TAT may be after a hit: `burst` intervals.
    pub fn tolerance_us(self) -> u64 {
        self.interval_us.saturating_mul(self.burst)
    }

    /// The GCRA step, shared by every store: `tat` is the key's stored TAT
    /// (`0` for a fresh key). Returns the hit's outcome; when it is allowed,
    /// its `tat` is the value to store.
    pub fn apply(self, tat: u64, now_us: u64) -> RateHit {
        self.apply_n(tat, now_us, 1)
    }

    /// [`apply`](Self::apply) for a hit that weighs `n` (tokens of an AI
    /// call): allowed when `n` more hits fit in the burst now.
    pub fn apply_n(self, tat: u64, now_us: u64, n: u64) -> RateHit {
        let base = tat.max(now_us);
        let next = base.saturating_add(self.interval_us.saturating_mul(n));
        if next - now_us > self.tolerance_us() {
            RateHit {
                allowed: false,
                tat: base,
                at_us: now_us,
            }
        } else {
            RateHit {
                allowed: true,
                tat: next,
                at_us: now_us,
            }
        }
    }
}

/// What [`CounterStore::acquire_rate`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateHit {
    pub allowed: bool,
    /// The key's TAT in Unix microseconds: after the hit when it was allowed,
    /// the one that refused it otherwise (never before `now`).
    pub tat: u64,
    /// The time the hit was judged at: what `remaining` and the waits are
    /// computed from (a store may judge at a later time than it was given).
    pub at_us: u64,
}

impl RateHit {
    /// Further hits the key admits at `now_us`.
    pub fn remaining(self, rate: Rate, now_us: u64) -> u64 {
        let headroom = (now_us.saturating_add(rate.tolerance_us())).saturating_sub(self.tat);
        (headroom / rate.interval_us).min(rate.burst)
    }

    /// Time until the key is back to a full burst.
    pub fn until_full(self, now_us: u64) -> Duration {
        Duration::from_micros(self.tat.saturating_sub(now_us))
    }

    /// Time until the key admits one more hit (zero if it does now).
    pub fn until_next(self, rate: Rate, now_us: u64) -> Duration {
        let earliest = self
            .tat
            .saturating_add(rate.interval_us)
            .saturating_sub(rate.tolerance_us());
        Duration::from_micros(earliest.saturating_sub(now_us))
    }
}

/// What [`CounterStore::acquire_quota`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaHit {
    pub allowed: bool,
    /// The count for the period, including this hit when it was allowed.
    pub count: u64,
}

/// Counters shared by the requests of every API, and later of every node.
///
/// Keys are built by the policies (scope, limit, subject; never a
/// credential). Methods map onto Redis as follows:
///
/// - [`acquire_rate`](Self::acquire_rate): one Lua script — `GET` the TAT,
///   apply [`Rate::apply`], and when allowed `SET key tat PX (tat - now)`.
/// - [`release_rate`](Self::release_rate): `DECRBY key interval` when the key
///   exists (a script, so that a key that just expired is not recreated
///   without a TTL); `DECRBY` keeps the TTL.
/// - [`acquire_quota`](Self::acquire_quota): `INCR key`, `EXPIREAT key
///   expires_at` when it returned 1, and `DECR key` when it returned more
///   than the limit (or the same in one script).
pub trait CounterStore: Send + Sync + 'static {
    /// Counts one hit against the rate-limited `key` if `rate` admits it at
    /// `now_us` (Unix microseconds), atomically.
    fn acquire_rate<'a>(
        &'a self,
        key: &'a str,
        rate: Rate,
        now_us: u64,
    ) -> CounterReply<'a, RateHit> {
        self.acquire_rate_n(key, rate, 1, now_us)
    }

    /// [`acquire_rate`](Self::acquire_rate) for a hit weighing `n` (the
    /// tokens an AI call reserves), all or nothing.
    fn acquire_rate_n<'a>(
        &'a self,
        key: &'a str,
        rate: Rate,
        n: u64,
        now_us: u64,
    ) -> CounterReply<'a, RateHit>;

    /// Counts one hit against each of `requests` (the limits of one
    /// request), all or nothing: when one refuses, none stays counted.
    /// Redis: one script over every key, one round trip however many limits
    /// apply. The default calls [`acquire_rate`](Self::acquire_rate) in turn
    /// and gives back the hits before a refusal (or an error).
    fn acquire_rates<'a>(
        &'a self,
        requests: &'a [RateRequest<'a>],
        now_us: u64,
    ) -> CounterReply<'a, RatesHit> {
        acquire_rates_one_by_one(self, requests, now_us)
    }

    /// Adds `pushed` hits that a node already admitted on its own view
    /// (`sync_interval`, see [`crate::counters_synced`]) to the
    /// rate-limited `key` unconditionally, then counts `n` more if the rate
    /// admits them (none with `n = 0`: a plain sync), atomically. The
    /// answer's TAT is the key's after both.
    fn sync_rate<'a>(
        &'a self,
        key: &'a str,
        rate: Rate,
        pushed: u64,
        n: u64,
        now_us: u64,
    ) -> CounterReply<'a, RateHit>;

    /// [`acquire_rate`](Self::acquire_rate) for a limit with a
    /// `sync_interval`: a store shared by a cluster may answer from this
    /// node's view and count in batches ([`crate::counters_synced`]); any
    /// other store counts at once.
    fn acquire_rate_synced<'a>(
        &'a self,
        key: &'a str,
        rate: Rate,
        every: Duration,
        now_us: u64,
    ) -> CounterReply<'a, RateHit> {
        let _ = every;
        self.acquire_rate(key, rate, now_us)
    }

    /// Gives back `n` hits counted against `key`: the unused part of a
    /// reservation. Redis: the same script as `release_rate`, by `n` intervals.
    fn release_rate_n<'a>(&'a self, key: &'a str, rate: Rate, n: u64) -> CounterReply<'a, ()>;

    /// Adds `amount` to the running total `key` (spend in micro-USD), which
    /// lives until `expires_at` (Unix seconds); returns the new total.
    /// Redis: `INCRBY`, and `EXPIREAT` when the key was new.
    fn add_total<'a>(&'a self, key: &'a str, amount: u64, expires_at: i64)
        -> CounterReply<'a, u64>;

    /// The running total `key` (0 when there is none). Redis: `GET`.
    fn read_total<'a>(&'a self, key: &'a str) -> CounterReply<'a, u64>;

    /// Holds `amount` (an AI call's cost bound, before it runs) against the
    /// spend `key` of a budget of `limit`: held when nothing is spent past
    /// the limit and the holds of calls in flight leave room — the first
    /// hold always does, so the last call of a budget may cross it. The
    /// spend counter lives until `expires_at`. Holds are kept apart from
    /// the spend, so that a call refused for calls in flight is told to
    /// wait ([`SpendHold::Pending`]), not that the budget is spent. Redis:
    /// one script over a hash (`s`: spent, `r`: held). The default holds
    /// nothing and only compares the spend (stores shared between nodes
    /// override it).
    fn hold_spend<'a>(
        &'a self,
        key: &'a str,
        amount: u64,
        limit: u64,
        expires_at: i64,
    ) -> CounterReply<'a, SpendHold> {
        let _ = (amount, expires_at);
        CounterReply::boxed(async move {
            let spent = self.read_total(key).await?;
            Ok(if spent >= limit {
                SpendHold::Spent(spent)
            } else {
                SpendHold::Held
            })
        })
    }

    /// Ends a hold of `held` made by [`hold_spend`](Self::hold_spend) and
    /// adds the call's real `cost` to the spend, atomically. The default
    /// adds the cost (its `hold_spend` held nothing).
    fn settle_spend<'a>(
        &'a self,
        key: &'a str,
        held: u64,
        cost: u64,
        expires_at: i64,
    ) -> CounterReply<'a, ()> {
        let _ = held;
        CounterReply::boxed(async move {
            if cost > 0 {
                self.add_total(key, cost, expires_at).await?;
            }
            Ok(())
        })
    }

    /// Gives back one hit that [`acquire_rate`](Self::acquire_rate) counted
    /// against `key`: for a request another limit refused.
    fn release_rate<'a>(&'a self, key: &'a str, rate: Rate) -> CounterReply<'a, ()> {
        self.release_rate_n(key, rate, 1)
    }

    /// Counts one hit against the quota `key` if its count is below `limit`,
    /// atomically. The counter lives until `expires_at` (Unix seconds, the
    /// end of its period).
    fn acquire_quota<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
        expires_at: i64,
    ) -> CounterReply<'a, QuotaHit>;

    /// The node-local side of a store shared by a cluster
    /// ([`ClusterCounters`](crate::counters_cluster::ClusterCounters)):
    /// where `scope: node` limits count, and where `on_store_failure: local`
    /// limits fall back. `None` (the default) for a store that is node-local
    /// already, or that has no fallback.
    fn node_local(&self) -> Option<crate::counters_cluster::NodeLocal<'_>> {
        None
    }
}

/// [`CounterStore::acquire_rates`] as calls of
/// [`CounterStore::acquire_rate`] in turn, giving back the hits before a
/// refusal (or an error): the default, and a Redis Cluster's way.
pub fn acquire_rates_one_by_one<'a, S: CounterStore + ?Sized>(
    store: &'a S,
    requests: &'a [RateRequest<'a>],
    now_us: u64,
) -> CounterReply<'a, RatesHit> {
    CounterReply::boxed(async move {
        let mut hits = Vec::with_capacity(requests.len());
        for request in requests {
            let hit = match store.acquire_rate(request.key, request.rate, now_us).await {
                Ok(hit) => hit,
                Err(error) => {
                    give_back_rates(store, &requests[..hits.len()]).await;
                    return Err(error);
                }
            };
            hits.push(hit);
            if !hit.allowed {
                give_back_rates(store, &requests[..hits.len() - 1]).await;
                return Ok(RatesHit {
                    refused: Some(hits.len() - 1),
                    hits,
                });
            }
        }
        Ok(RatesHit {
            hits,
            refused: None,
        })
    })
}

/// Gives back one hit of each of `requests`, logging what cannot be.
async fn give_back_rates<S: CounterStore + ?Sized>(store: &S, requests: &[RateRequest<'_>]) {
    for request in requests {
        if let Err(error) = store.release_rate(request.key, request.rate).await {
            tracing::debug!(%error, "cannot give back a rate-limit hit");
        }
    }
}

/// What [`CounterStore::hold_spend`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpendHold {
    /// The amount is held: the call may run.
    Held,
    /// The budget is spent (this much, at least the limit).
    Spent(u64),
    /// Calls in flight hold what remains: try again once they settle.
    Pending,
}

/// One of the limits [`CounterStore::acquire_rates`] counts a request
/// against.
#[derive(Clone, Copy, Debug)]
pub struct RateRequest<'a> {
    pub key: &'a str,
    pub rate: Rate,
}

/// What [`CounterStore::acquire_rates`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RatesHit {
    /// One per request, in order: all of them when every limit admitted the
    /// hit, else those up to the one that refused it, which is last.
    pub hits: Vec<RateHit>,
    /// The index of the request that refused the hit, if one did.
    pub refused: Option<usize>,
}

/// A quota counter as it is saved and loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistedCounter {
    pub key: String,
    /// Unix seconds: the end of the counter's period.
    pub expires_at: i64,
    pub count: u64,
}

/// Why quota counters could not be saved or loaded.
pub type PersistenceError = Box<dyn std::error::Error + Send + Sync>;

/// Durable storage for quota counters. Its methods block: they are only
/// called from `spawn_blocking`, never on a request path.
pub trait CounterPersistence: Send + Sync + 'static {
    /// The counters of periods that end after `now` (Unix seconds).
    fn load(&self, now: i64) -> Result<Vec<PersistedCounter>, PersistenceError>;

    /// Writes `counters` (replacing older counts of the same keys) and may
    /// drop the counters of periods that ended at `now` (Unix seconds).
    fn save(&self, counters: &[PersistedCounter], now: i64) -> Result<(), PersistenceError>;
}

/// How often the flusher task also drops expired entries.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A quota counter in memory.
#[derive(Debug)]
struct QuotaEntry {
    count: AtomicU64,
    /// Unix seconds.
    expires_at: i64,
    /// Changed since it was last handed to the flusher.
    dirty: AtomicBool,
}

/// The counters of one gateway node, in memory: exact under concurrency
/// (each check-and-increment is a compare-and-swap on the key's counter, under
/// a shared lock on one of the map's shards), with no global lock.
///
/// Memory stays bounded by the keys active within their windows and periods:
/// [`sweep`](Self::sweep), run every few seconds by the task of
/// [`spawn_flusher`], drops the others.
#[derive(Debug, Default)]
pub struct MemoryCounters {
    /// Rate-limited key → TAT (Unix microseconds).
    rates: CounterMap<AtomicU64>,
    /// The latest time a hit was judged at. Judging each hit at no earlier
    /// time than the hits stored before it keeps concurrent callers, who read
    /// the clock before racing to the counter, from seeing the same
    /// `remaining` twice.
    clock: AtomicU64,
    quotas: CounterMap<QuotaEntry>,
    /// Budget key → the cost bounds held by AI calls in flight
    /// ([`CounterStore::hold_spend`]); never persisted: a restart ends
    /// every call.
    holds: CounterMap<AtomicU64>,
}

impl MemoryCounters {
    pub fn new() -> MemoryCounters {
        MemoryCounters::default()
    }

    /// Loads the quota counters of current periods from `persistence`. Call
    /// once at startup, before serving; a loaded count never lowers one
    /// already counted.
    pub async fn restore(
        &self,
        persistence: Arc<dyn CounterPersistence>,
    ) -> Result<usize, PersistenceError> {
        let now = unix_seconds(SystemTime::now());
        let counters = tokio::task::spawn_blocking(move || persistence.load(now)).await??;
        let mut loaded = 0;
        for counter in counters.into_iter().filter(|c| c.expires_at > now) {
            loaded += 1;
            let entry = self
                .quotas
                .entry(counter.key.into_boxed_str())
                .or_insert_with(|| QuotaEntry {
                    count: AtomicU64::new(0),
                    expires_at: counter.expires_at,
                    dirty: AtomicBool::new(false),
                });
            entry.count.fetch_max(counter.count, Ordering::AcqRel);
        }
        Ok(loaded)
    }

    /// Drops the rate keys that are back to a full burst and the quota
    /// counters whose period has ended at `now`; returns how many it dropped.
    /// Locks one shard of each map at a time.
    pub fn sweep(&self, now: SystemTime) -> usize {
        let now_us = unix_micros(now);
        let now_s = unix_seconds(now);
        let before = self.entry_count();
        self.rates
            .retain(|_, tat| tat.load(Ordering::Acquire) > now_us);
        self.quotas.retain(|_, entry| entry.expires_at > now_s);
        before.saturating_sub(self.entry_count())
    }

    /// How many rate keys and quota counters are held.
    pub fn entry_count(&self) -> usize {
        self.rates.len() + self.quotas.len()
    }

    /// The quota counters of periods ending after `now` changed since the
    /// last call, marked clean.
    pub(crate) fn take_dirty(&self, now: i64) -> Vec<PersistedCounter> {
        let mut dirty = Vec::new();
        for entry in self.quotas.iter() {
            // Clean first, then read: an increment after the read marks the
            // entry dirty again, for the next flush.
            if entry.expires_at > now && entry.dirty.swap(false, Ordering::AcqRel) {
                dirty.push(PersistedCounter {
                    key: entry.key().to_string(),
                    expires_at: entry.expires_at,
                    count: entry.count.load(Ordering::Acquire),
                });
            }
        }
        dirty
    }

    /// Marks `counters` dirty again after a failed save.
    fn mark_dirty(&self, counters: &[PersistedCounter]) {
        for counter in counters {
            if let Some(entry) = self.quotas.get(counter.key.as_str()) {
                entry.dirty.store(true, Ordering::Release);
            }
        }
    }

    fn acquire_rate_now(&self, key: &str, rate: Rate, n: u64, now_us: u64) -> RateHit {
        let hit = |tat: &AtomicU64| {
            let mut current = tat.load(Ordering::Acquire);
            loop {
                // After the load: a hit stored before it was judged no later.
                let now_us = self.clock.fetch_max(now_us, Ordering::AcqRel).max(now_us);
                let hit = rate.apply_n(current, now_us, n);
                if !hit.allowed {
                    return hit;
                }
                match tat.compare_exchange_weak(
                    current,
                    hit.tat,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return hit,
                    Err(actual) => current = actual,
                }
            }
        };
        if let Some(tat) = self.rates.get(key) {
            return hit(&tat);
        }
        let tat = self
            .rates
            .entry(key.into())
            .or_insert_with(|| AtomicU64::new(0));
        hit(&tat)
    }

    fn sync_rate_now(&self, key: &str, rate: Rate, pushed: u64, n: u64, now_us: u64) -> RateHit {
        let step = |tat: &AtomicU64| {
            let now_us = self.clock.fetch_max(now_us, Ordering::AcqRel).max(now_us);
            let mut answer = None;
            let _ = tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                let after_push = current
                    .max(now_us)
                    .saturating_add(rate.interval_us.saturating_mul(pushed));
                let hit = match n {
                    0 => RateHit {
                        allowed: true,
                        tat: after_push,
                        at_us: now_us,
                    },
                    n => rate.apply_n(after_push, now_us, n),
                };
                answer = Some(hit);
                Some(hit.tat)
            });
            answer.expect("fetch_update calls its closure")
        };
        if let Some(tat) = self.rates.get(key) {
            return step(&tat);
        }
        let tat = self
            .rates
            .entry(key.into())
            .or_insert_with(|| AtomicU64::new(0));
        step(&tat)
    }

    fn release_rate_now(&self, key: &str, rate: Rate, n: u64) {
        if let Some(tat) = self.rates.get(key) {
            let _ = tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(rate.interval_us.saturating_mul(n)))
            });
        }
    }

    fn add_total_now(&self, key: &str, amount: u64, expires_at: i64) -> u64 {
        let add = |entry: &QuotaEntry| {
            let total = entry.count.fetch_add(amount, Ordering::AcqRel) + amount;
            entry.dirty.store(true, Ordering::Release);
            total
        };
        if let Some(entry) = self.quotas.get(key) {
            return add(&entry);
        }
        let entry = self.quotas.entry(key.into()).or_insert_with(|| QuotaEntry {
            count: AtomicU64::new(0),
            expires_at,
            dirty: AtomicBool::new(false),
        });
        add(&entry)
    }

    fn acquire_quota_now(&self, key: &str, limit: u64, expires_at: i64) -> QuotaHit {
        let hit = |entry: &QuotaEntry| match entry.count.fetch_update(
            Ordering::AcqRel,
            Ordering::Acquire,
            |count| (count < limit).then_some(count + 1),
        ) {
            Ok(before) => {
                entry.dirty.store(true, Ordering::Release);
                QuotaHit {
                    allowed: true,
                    count: before + 1,
                }
            }
            Err(count) => QuotaHit {
                allowed: false,
                count,
            },
        };
        if let Some(entry) = self.quotas.get(key) {
            return hit(&entry);
        }
        let entry = self.quotas.entry(key.into()).or_insert_with(|| QuotaEntry {
            count: AtomicU64::new(0),
            expires_at,
            dirty: AtomicBool::new(false),
        });
        hit(&entry)
    }
}

impl CounterStore for MemoryCounters {
    fn acquire_rate_n<'a>(
        &'a self,
        key: &'a str,
        rate: Rate,
        n: u64,
        now_us: u64,
    ) -> CounterReply<'a, RateHit> {
        CounterReply::ready(Ok(self.acquire_rate_now(key, rate, n, now_us)))
    }

    fn release_rate_n<'a>(&'a self, key: &'a str, rate: Rate, n: u64) -> CounterReply<'a, ()> {
        self.release_rate_now(key, rate, n);
        CounterReply::ready(Ok(()))
    }

    fn sync_rate<'a>(
        &'a self,
        key: &'a str,
        rate: Rate,
        pushed: u64,
        n: u64,
        now_us: u64,
    ) -> CounterReply<'a, RateHit> {
        CounterReply::ready(Ok(self.sync_rate_now(key, rate, pushed, n, now_us)))
    }

    fn add_total<'a>(
        &'a self,
        key: &'a str,
        amount: u64,
        expires_at: i64,
    ) -> CounterReply<'a, u64> {
        CounterReply::ready(Ok(self.add_total_now(key, amount, expires_at)))
    }

    fn read_total<'a>(&'a self, key: &'a str) -> CounterReply<'a, u64> {
        let total = self
            .quotas
            .get(key)
            .map_or(0, |entry| entry.count.load(Ordering::Acquire));
        CounterReply::ready(Ok(total))
    }

    fn hold_spend<'a>(
        &'a self,
        key: &'a str,
        amount: u64,
        limit: u64,
        _expires_at: i64,
    ) -> CounterReply<'a, SpendHold> {
        // The hold entry's shard lock orders holds and settlements of one
        // key; the spend is read under it.
        let held = self
            .holds
            .entry(key.into())
            .or_insert_with(|| AtomicU64::new(0));
        let spent = self
            .quotas
            .get(key)
            .map_or(0, |entry| entry.count.load(Ordering::Acquire));
        let holding = held.load(Ordering::Acquire);
        let answer = if spent >= limit {
            SpendHold::Spent(spent)
        } else if holding > 0 && spent.saturating_add(holding) >= limit {
            SpendHold::Pending
        } else {
            held.fetch_add(amount, Ordering::AcqRel);
            SpendHold::Held
        };
        CounterReply::ready(Ok(answer))
    }

    fn settle_spend<'a>(
        &'a self,
        key: &'a str,
        held: u64,
        cost: u64,
        expires_at: i64,
    ) -> CounterReply<'a, ()> {
        if let Some(hold) = self.holds.get_mut(key) {
            let _ = hold.fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                Some(h.saturating_sub(held))
            });
            if cost > 0 {
                self.add_total_now(key, cost, expires_at);
            }
        } else if cost > 0 {
            self.add_total_now(key, cost, expires_at);
        }
        self.holds
            .remove_if(key, |_, h| h.load(Ordering::Acquire) == 0);
        CounterReply::ready(Ok(()))
    }

    fn acquire_quota<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
        expires_at: i64,
    ) -> CounterReply<'a, QuotaHit> {
        CounterReply::ready(Ok(self.acquire_quota_now(key, limit, expires_at)))
    }
}

/// Starts the task that saves changed quota counters through `persistence`
/// every `every` (and drops expired entries every few seconds). Needs a tokio
/// runtime. The task stops when the handle is dropped; call
/// [`FlushHandle::flush`] at shutdown for the last counts.
pub fn spawn_flusher(
    counters: Arc<MemoryCounters>,
    persistence: Arc<dyn CounterPersistence>,
    every: Duration,
) -> FlushHandle {
    let flusher = Arc::new(Flusher {
        counters,
        persistence,
        serial: tokio::sync::Mutex::new(()),
    });
    let task = tokio::spawn({
        let flusher = flusher.clone();
        async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_sweep = Instant::now();
            loop {
                ticker.tick().await;
                if let Err(error) = flusher.flush().await {
                    tracing::warn!(%error, "cannot save quota counters; retrying at the next flush");
                }
                if last_sweep.elapsed() >= SWEEP_EVERY {
                    last_sweep = Instant::now();
                    let counters = flusher.counters.clone();
                    let swept =
                        tokio::task::spawn_blocking(move || counters.sweep(SystemTime::now()))
                            .await
                            .unwrap_or(0);
                    tracing::trace!(swept, "dropped expired counters");
                }
            }
        }
    });
    FlushHandle { flusher, task }
}

/// The flusher task of [`spawn_flusher`]; dropping it stops the task.
#[derive(Debug)]
pub struct FlushHandle {
    flusher: Arc<Flusher>,
    task: tokio::task::JoinHandle<()>,
}

impl FlushHandle {
    /// Saves the quota counters changed since the last flush now; returns how
    /// many it wrote. For shutdown, once requests have stopped.
    pub async fn flush(&self) -> Result<usize, PersistenceError> {
        self.flusher.flush().await
    }
}

impl Drop for FlushHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Flusher {
    counters: Arc<MemoryCounters>,
    persistence: Arc<dyn CounterPersistence>,
    /// One save at a time, so an older count never overwrites a newer one.
    serial: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher").finish_non_exhaustive()
    }
}

impl Flusher {
    async fn flush(&self) -> Result<usize, PersistenceError> {
        let _serial = self.serial.lock().await;
        let now = unix_seconds(SystemTime::now());
        let dirty: Arc<[PersistedCounter]> = self.counters.take_dirty(now).into();
        if dirty.is_empty() {
            return Ok(0);
        }
        let persistence = self.persistence.clone();
        let batch = dirty.clone();
        let saved = tokio::task::spawn_blocking(move || persistence.save(&batch, now))
            .await
            .map_err(PersistenceError::from)
            .and_then(|saved| saved);
        match saved {
            Ok(()) => Ok(dirty.len()),
            Err(error) => {
                self.counters.mark_dirty(&dirty);
                Err(error)
            }
        }
    }
}

/// Unix microseconds (0 before the epoch).
pub(crate) fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Unix seconds, rounded down.
pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Whole seconds, rounded up.
pub(crate) fn ceil_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    const T0: u64 = 1_700_000_000_000_000;

    /// Callers read the clock before racing to the counter: one that read it
    /// earlier may store its hit later. It is judged at the later time, so
    /// the `remaining` counts of a burst still go down one by one.
    #[test]
    fn a_hit_stored_after_a_later_one_is_judged_at_the_later_time() {
        let store = MemoryCounters::new();
        let rate = Rate::per_window(10, Duration::from_secs(60));
        let later = store.acquire_rate_now("k", rate, 1, T0 + 500);
        let earlier = store.acquire_rate_now("k", rate, 1, T0);
        assert_eq!(earlier.at_us, T0 + 500);
        assert_eq!(later.remaining(rate, later.at_us), 9);
        assert_eq!(earlier.remaining(rate, earlier.at_us), 8);
    }

    #[test]
    fn gcra_admits_a_burst_then_one_per_interval() {
        let store = MemoryCounters::new();
        let rate = Rate::per_window(3, Duration::from_secs(3));
        assert_eq!(rate.interval_us, 1_000_000);
        for remaining in [2, 1, 0] {
            let hit = store.acquire_rate_now("k", rate, 1, T0);
            assert!(hit.allowed);
            assert_eq!(hit.remaining(rate, T0), remaining);
        }
        let refused = store.acquire_rate_now("k", rate, 1, T0);
        assert!(!refused.allowed);
        assert_eq!(refused.until_next(rate, T0), Duration::from_secs(1));
        assert_eq!(refused.until_full(T0), Duration::from_secs(3));
        // One interval later, one more.
        assert!(store.acquire_rate_now("k", rate, 1, T0 + 1_000_000).allowed);
        assert!(!store.acquire_rate_now("k", rate, 1, T0 + 1_000_000).allowed);
    }

    #[test]
    fn weighted_hits_reserve_and_give_back_tokens() {
        // 1000 tokens a minute: a 600-token call fits, a second one does not
        // until 300 of the first are given back.
        let store = MemoryCounters::new();
        let rate = Rate::per_window(1000, Duration::from_secs(60));
        assert!(store.acquire_rate_now("t", rate, 600, T0).allowed);
        assert!(!store.acquire_rate_now("t", rate, 600, T0).allowed);
        store.release_rate_now("t", rate, 300);
        let hit = store.acquire_rate_now("t", rate, 600, T0);
        assert!(hit.allowed);
        assert_eq!(hit.remaining(rate, T0), 100);
        // More than the whole burst never fits.
        assert!(!store.acquire_rate_now("fresh", rate, 1001, T0).allowed);
    }

    #[test]
    fn totals_add_up_and_persist_like_quotas() {
        let store = MemoryCounters::new();
        let expires = 2_000_000_000;
        assert_eq!(now_or_never(store.read_total("b")), 0);
        assert_eq!(now_or_never(store.add_total("b", 1_500, expires)), 1_500);
        assert_eq!(now_or_never(store.add_total("b", 2_500, expires)), 4_000);
        assert_eq!(now_or_never(store.read_total("b")), 4_000);
        let dirty = store.take_dirty(0);
        assert!(dirty.iter().any(|c| c.key == "b" && c.count == 4_000));
    }

    /// The memory store answers at once.
    fn now_or_never<T>(reply: CounterReply<'_, T>) -> T {
        match reply {
            CounterReply::Ready(Some(answer)) => answer.expect("ok"),
            _ => panic!("the memory store answers at once"),
        }
    }

    #[test]
    fn release_gives_a_hit_back() {
        let store = MemoryCounters::new();
        let rate = Rate::per_window(1, Duration::from_secs(60));
        assert!(store.acquire_rate_now("k", rate, 1, T0).allowed);
        assert!(!store.acquire_rate_now("k", rate, 1, T0).allowed);
        store.release_rate_now("k", rate, 1);
        assert!(store.acquire_rate_now("k", rate, 1, T0).allowed);
        // Releasing an unknown key does not create it.
        store.release_rate_now("other", rate, 1);
        assert!(store.rates.get("other").is_none());
    }

    #[test]
    fn quota_counts_up_to_its_limit() {
        let store = MemoryCounters::new();
        for count in 1..=2 {
            assert_eq!(
                store.acquire_quota_now("q", 2, 100),
                QuotaHit {
                    allowed: true,
                    count
                }
            );
        }
        assert_eq!(
            store.acquire_quota_now("q", 2, 100),
            QuotaHit {
                allowed: false,
                count: 2
            }
        );
    }

    #[test]
    fn sweep_drops_full_rate_keys_and_ended_periods() {
        let store = MemoryCounters::new();
        let rate = Rate::per_window(10, Duration::from_secs(1));
        let t0 = UNIX_EPOCH + Duration::from_micros(T0);
        store.acquire_rate_now("short", rate, 1, T0);
        store.acquire_rate_now("long", Rate::per_window(1, Duration::from_secs(60)), 1, T0);
        let t0_s = unix_seconds(t0);
        store.acquire_quota_now("ended", 5, t0_s + 1);
        store.acquire_quota_now("current", 5, t0_s + 86_400);
        assert_eq!(store.entry_count(), 4);
        assert_eq!(store.sweep(t0 + Duration::from_secs(2)), 2);
        assert!(store.rates.get("long").is_some());
        assert!(store.quotas.get("current").is_some());
    }

    #[test]
    fn dirty_quota_counters_are_taken_once() {
        let store = MemoryCounters::new();
        store.acquire_quota_now("a", 5, 100);
        store.acquire_quota_now("a", 5, 100);
        store.acquire_quota_now("b", 5, 100);
        let mut dirty = store.take_dirty(0);
        dirty.sort_by(|x, y| x.key.cmp(&y.key));
        assert_eq!(
            dirty,
            [
                PersistedCounter {
                    key: "a".into(),
                    expires_at: 100,
                    count: 2
                },
                PersistedCounter {
                    key: "b".into(),
                    expires_at: 100,
                    count: 1
                },
            ]
        );
        assert!(store.take_dirty(0).is_empty());
        // A refused hit changes nothing.
        store.acquire_quota_now("c", 0, 100);
        assert!(store.take_dirty(0).is_empty());
        store.mark_dirty(&dirty[..1]);
        assert_eq!(store.take_dirty(0).len(), 1);
    }

    /// Persistence in memory, failing while `fail` is set.
    #[derive(Default)]
    struct FakePersistence {
        rows: Mutex<Vec<PersistedCounter>>,
        saves: AtomicU64,
        fail: AtomicBool,
    }

    impl CounterPersistence for FakePersistence {
        fn load(&self, now: i64) -> Result<Vec<PersistedCounter>, PersistenceError> {
            let rows = self.rows.lock().unwrap();
            Ok(rows
                .iter()
                .filter(|c| c.expires_at > now)
                .cloned()
                .collect())
        }

        fn save(&self, counters: &[PersistedCounter], _now: i64) -> Result<(), PersistenceError> {
            self.saves.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err("disk full".into());
            }
            let mut rows = self.rows.lock().unwrap();
            for counter in counters {
                rows.retain(|c| c.key != counter.key);
                rows.push(counter.clone());
            }
            Ok(())
        }
    }

    impl FakePersistence {
        fn count(&self, key: &str) -> Option<u64> {
            let rows = self.rows.lock().unwrap();
            rows.iter().find(|c| c.key == key).map(|c| c.count)
        }
    }

    fn far_future() -> i64 {
        unix_seconds(SystemTime::now()) + 86_400
    }

    #[tokio::test]
    async fn flusher_writes_dirty_counters_periodically() {
        let counters = Arc::new(MemoryCounters::new());
        let persistence = Arc::new(FakePersistence::default());
        let _flusher = spawn_flusher(
            counters.clone(),
            persistence.clone(),
            Duration::from_millis(10),
        );
        let expires_at = far_future();
        for _ in 0..3 {
            counters.acquire_quota_now("q", 10, expires_at);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while persistence.count("q") != Some(3) {
            assert!(
                Instant::now() < deadline,
                "the flusher never wrote the counter"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn flush_saves_only_what_changed_and_retries_failures() {
        let counters = Arc::new(MemoryCounters::new());
        let persistence = Arc::new(FakePersistence::default());
        // A period long enough that the task only flushes when asked.
        let flusher = spawn_flusher(
            counters.clone(),
            persistence.clone(),
            Duration::from_secs(3600),
        );
        let expires_at = far_future();
        counters.acquire_quota_now("q", 10, expires_at);
        assert_eq!(flusher.flush().await.unwrap(), 1);
        assert_eq!(persistence.count("q"), Some(1));
        // Nothing changed: no write at all.
        assert_eq!(flusher.flush().await.unwrap(), 0);
        assert_eq!(persistence.saves.load(Ordering::SeqCst), 1);

        counters.acquire_quota_now("q", 10, expires_at);
        persistence.fail.store(true, Ordering::SeqCst);
        assert!(flusher.flush().await.is_err());
        assert_eq!(persistence.count("q"), Some(1));
        persistence.fail.store(false, Ordering::SeqCst);
        assert_eq!(
            flusher.flush().await.unwrap(),
            1,
            "still dirty after the failure"
        );
        assert_eq!(persistence.count("q"), Some(2));
    }

    #[tokio::test]
    async fn restore_loads_current_periods_without_lowering_counts() {
        let persistence = Arc::new(FakePersistence::default());
        let expires_at = far_future();
        persistence.rows.lock().unwrap().extend([
            PersistedCounter {
                key: "q".into(),
                expires_at,
                count: 4,
            },
            PersistedCounter {
                key: "ended".into(),
                expires_at: 1,
                count: 9,
            },
            PersistedCounter {
                key: "lower".into(),
                expires_at,
                count: 1,
            },
        ]);
        let counters = MemoryCounters::new();
        counters.acquire_quota_now("lower", 10, expires_at);
        counters.acquire_quota_now("lower", 10, expires_at);
        assert_eq!(counters.restore(persistence).await.unwrap(), 2);
        assert!(counters.quotas.get("ended").is_none());
        // Loaded counts are not dirty: only what was counted here is.
        let dirty: Vec<_> = counters
            .take_dirty(0)
            .into_iter()
            .map(|c| (c.key, c.count))
            .collect();
        assert_eq!(dirty, [("lower".to_owned(), 2)]);
        assert_eq!(counters.acquire_quota_now("q", 5, expires_at).count, 5);
        assert!(!counters.acquire_quota_now("q", 5, expires_at).allowed);
        assert_eq!(counters.acquire_quota_now("lower", 10, expires_at).count, 3);
    }

    #[tokio::test]
    async fn memory_replies_are_ready_futures() {
        let store: Arc<dyn CounterStore> = Arc::new(MemoryCounters::new());
        let rate = Rate::per_window(1, Duration::from_secs(1));
        let reply = store.acquire_rate("k", rate, T0);
        assert!(matches!(reply, CounterReply::Ready(Some(_))));
        assert!(reply.await.unwrap().allowed);
        store.release_rate("k", rate).await.unwrap();
        assert!(store.acquire_quota("q", 1, 10).await.unwrap().allowed);
    }
}
