//! The [`CounterStore`] contract, checked against both stores with the same
//! assertions: [`MemoryCounters`] and [`RedisCounters`] on a Redis server of
//! the test's own (skipped without `redis-server`, a failure in CI).
//!
//! Both are judged on the real clock here (Redis uses its own `TIME`), so
//! the windows are long enough that the few milliseconds a test takes do not
//! refill a slot, except where refilling is the point.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_policy::counters::{
    CounterStore, MemoryCounters, QuotaHit, Rate, RateRequest, SpendHold,
};
use tollgate_policy::counters_redis::{RedisCounters, RedisOptions};
use tollgate_testkit::redis_server::{RedisCluster, RedisServer};

/// One store under test, with what it needs to live.
struct Subject {
    store: Arc<dyn CounterStore>,
    /// Set for the memory store, whose ended periods are dropped by `sweep`.
    memory: Option<Arc<MemoryCounters>>,
    _server: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
}

impl Subject {
    fn memory() -> Subject {
        let memory = Arc::new(MemoryCounters::new());
        Subject {
            store: memory.clone(),
            memory: Some(memory),
            _server: None,
            _cluster: None,
        }
    }

    /// `None` when the test is skipped (no `redis-server`).
    #[track_caller]
    fn redis() -> Option<Subject> {
        let server = RedisServer::start()?;
        let store = RedisCounters::new(&server.url(), RedisOptions::default()).unwrap();
        Some(Subject {
            store: Arc::new(store),
            memory: None,
            _server: Some(server),
            _cluster: None,
        })
    }

    /// `None` when the test is skipped (no `redis-server`).
    #[track_caller]
    fn redis_cluster() -> Option<Subject> {
        let cluster = RedisCluster::start()?;
        let store = RedisCounters::new(&cluster.url(), RedisOptions::default()).unwrap();
        Some(Subject {
            store: Arc::new(store),
            memory: None,
            _server: None,
            _cluster: Some(cluster),
        })
    }

    /// Lets the periods that ended by now be over: Redis expires keys by
    /// itself; the memory store drops them when swept.
    fn after_periods_end(&self) {
        if let Some(memory) = &self.memory {
            memory.sweep(SystemTime::now());
        }
    }
}

fn now_us() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

fn now_s() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// The end of a short period for the checks that watch one run out: at
/// least one whole second away. A period ends as its second begins (Redis's
/// `EXPIREAT`), so `now_s() + 1` may be a millisecond off, and the calls
/// meant to fall inside the period would straddle its end.
fn period_ending_soon() -> i64 {
    now_s() + 2
}

/// Sleeps until the Unix second `at` is over.
async fn sleep_past(at: i64) {
    while now_s() <= at {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each contract check runs as a test against each store.
macro_rules! contract {
    ($($check:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::$check(&super::Subject::memory()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let Some(subject) = super::Subject::redis() else {
                        return;
                    };
                    super::$check(&subject).await;
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let Some(subject) = super::Subject::redis_cluster() else {
                        return;
                    };
                    super::$check(&subject).await;
                }
            )*
        }
    };
}

contract!(
    a_fresh_key_admits_its_burst_then_refuses,
    a_released_hit_can_be_taken_again,
    releasing_an_unknown_key_gives_no_extra_hit,
    weighted_hits_reserve_and_give_back,
    spent_slots_refill_with_time,
    a_quota_counts_to_its_limit_and_restarts_with_its_period,
    totals_add_up_and_end_with_their_period,
    concurrent_hits_admit_exactly_the_limit,
    concurrent_weighted_hits_admit_exactly_what_fits,
    concurrent_quota_hits_admit_exactly_the_limit,
    concurrent_additions_are_all_counted,
    keys_are_independent,
    several_limits_count_all_or_nothing,
    several_limits_under_concurrency_admit_exactly_the_tightest,
    spend_holds_wait_for_calls_in_flight_and_settle_to_the_cost,
);

async fn a_fresh_key_admits_its_burst_then_refuses(subject: &Subject) {
    let store = &subject.store;
    let rate = Rate::per_window(5, Duration::from_secs(60));
    for expected in (0..5).rev() {
        let hit = store.acquire_rate("burst", rate, now_us()).await.unwrap();
        assert!(hit.allowed, "{hit:?}");
        assert_eq!(hit.remaining(rate, hit.at_us), expected, "{hit:?}");
        assert!(
            hit.until_full(hit.at_us) <= Duration::from_secs(60),
            "{hit:?}"
        );
    }
    let refused = store.acquire_rate("burst", rate, now_us()).await.unwrap();
    assert!(!refused.allowed, "{refused:?}");
    assert_eq!(refused.remaining(rate, refused.at_us), 0);
    // One slot frees up every 12 s; the whole burst within the minute.
    let next = refused.until_next(rate, refused.at_us);
    assert!(
        next > Duration::from_secs(11) && next <= Duration::from_secs(12),
        "{next:?}"
    );
    let full = refused.until_full(refused.at_us);
    assert!(
        full > Duration::from_secs(59) && full <= Duration::from_secs(60),
        "{full:?}"
    );
}

async fn a_released_hit_can_be_taken_again(subject: &Subject) {
    let store = &subject.store;
    let rate = Rate::per_window(1, Duration::from_secs(60));
    assert!(
        store
            .acquire_rate("k", rate, now_us())
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !store
            .acquire_rate("k", rate, now_us())
            .await
            .unwrap()
            .allowed
    );
    store.release_rate("k", rate).await.unwrap();
    assert!(
        store
            .acquire_rate("k", rate, now_us())
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !store
            .acquire_rate("k", rate, now_us())
            .await
            .unwrap()
            .allowed
    );
}

async fn releasing_an_unknown_key_gives_no_extra_hit(subject: &Subject) {
    let store = &subject.store;
    let rate = Rate::per_window(3, Duration::from_secs(60));
    store.release_rate_n("unknown", rate, 5).await.unwrap();
    let mut allowed = 0;
    for _ in 0..6 {
        if store
            .acquire_rate("unknown", rate, now_us())
            .await
            .unwrap()
            .allowed
        {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 3);
}

async fn weighted_hits_reserve_and_give_back(subject: &Subject) {
    // 1000 tokens an hour: a 600-token call fits, a second one does not
    // until 300 of the first are given back.
    let store = &subject.store;
    let rate = Rate::per_window(1000, Duration::from_secs(3600));
    assert!(
        store
            .acquire_rate_n("t", rate, 600, now_us())
            .await
            .unwrap()
            .allowed
    );
    let refused = store
        .acquire_rate_n("t", rate, 600, now_us())
        .await
        .unwrap();
    assert!(!refused.allowed);
    assert_eq!(refused.remaining(rate, refused.at_us), 400);
    store.release_rate_n("t", rate, 300).await.unwrap();
    let hit = store
        .acquire_rate_n("t", rate, 600, now_us())
        .await
        .unwrap();
    assert!(hit.allowed);
    assert_eq!(hit.remaining(rate, hit.at_us), 100);
    // More than the whole burst never fits, even on a fresh key.
    assert!(
        !store
            .acquire_rate_n("fresh", rate, 1001, now_us())
            .await
            .unwrap()
            .allowed
    );
    assert!(
        store
            .acquire_rate_n("fresh", rate, 1000, now_us())
            .await
            .unwrap()
            .allowed
    );
}

async fn spent_slots_refill_with_time(subject: &Subject) {
    // 2 per 2 s: one slot back every second.
    let store = &subject.store;
    let rate = Rate::per_window(2, Duration::from_secs(2));
    for _ in 0..2 {
        assert!(
            store
                .acquire_rate("r", rate, now_us())
                .await
                .unwrap()
                .allowed
        );
    }
    let refused = store.acquire_rate("r", rate, now_us()).await.unwrap();
    assert!(!refused.allowed);
    tokio::time::sleep(refused.until_next(rate, refused.at_us) + Duration::from_millis(20)).await;
    assert!(
        store
            .acquire_rate("r", rate, now_us())
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !store
            .acquire_rate("r", rate, now_us())
            .await
            .unwrap()
            .allowed
    );
}

async fn a_quota_counts_to_its_limit_and_restarts_with_its_period(subject: &Subject) {
    let store = &subject.store;
    let ends_at = period_ending_soon();
    for count in 1..=3 {
        assert_eq!(
            store.acquire_quota("q", 3, ends_at).await.unwrap(),
            QuotaHit {
                allowed: true,
                count
            }
        );
    }
    assert_eq!(
        store.acquire_quota("q", 3, ends_at).await.unwrap(),
        QuotaHit {
            allowed: false,
            count: 3
        }
    );
    // A refused hit is not counted: still 3, still refused.
    assert_eq!(store.acquire_quota("q", 3, ends_at).await.unwrap().count, 3);
    // A zero quota admits nothing.
    assert!(
        !store
            .acquire_quota("none", 0, ends_at)
            .await
            .unwrap()
            .allowed
    );

    sleep_past(ends_at).await;
    subject.after_periods_end();
    assert_eq!(
        store.acquire_quota("q", 3, now_s() + 60).await.unwrap(),
        QuotaHit {
            allowed: true,
            count: 1
        }
    );
}

async fn totals_add_up_and_end_with_their_period(subject: &Subject) {
    let store = &subject.store;
    let ends_at = period_ending_soon();
    assert_eq!(store.read_total("b").await.unwrap(), 0);
    assert_eq!(store.add_total("b", 1_500, ends_at).await.unwrap(), 1_500);
    assert_eq!(store.add_total("b", 2_500, ends_at).await.unwrap(), 4_000);
    assert_eq!(store.add_total("b", 0, ends_at).await.unwrap(), 4_000);
    assert_eq!(store.read_total("b").await.unwrap(), 4_000);

    sleep_past(ends_at).await;
    subject.after_periods_end();
    assert_eq!(store.read_total("b").await.unwrap(), 0);
    assert_eq!(store.add_total("b", 7, now_s() + 60).await.unwrap(), 7);
}

/// Runs `count` calls of `call` on `store` at once, each on its own Tokio
/// task (so on several threads), and returns their answers.
async fn all_at_once<T, F, Fut>(store: &Arc<dyn CounterStore>, count: usize, call: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(Arc<dyn CounterStore>) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let start = Arc::new(tokio::sync::Barrier::new(count));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let start = start.clone();
        let call = call(store.clone());
        tasks.spawn(async move {
            start.wait().await;
            call.await
        });
    }
    let mut answers = Vec::with_capacity(count);
    while let Some(answer) = tasks.join_next().await {
        answers.push(answer.unwrap());
    }
    answers
}

async fn concurrent_hits_admit_exactly_the_limit(subject: &Subject) {
    let rate = Rate::per_window(50, Duration::from_secs(3600));
    let hits = all_at_once(&subject.store, 200, move |store| async move {
        store.acquire_rate("c", rate, now_us()).await.unwrap()
    })
    .await;
    let allowed: Vec<_> = hits.iter().filter(|h| h.allowed).collect();
    assert_eq!(allowed.len(), 50);
    // Each admitted hit took one slot: between them they saw every
    // remaining count once.
    let mut remaining: Vec<u64> = allowed.iter().map(|h| h.remaining(rate, h.at_us)).collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..50).collect::<Vec<u64>>());
}

async fn concurrent_weighted_hits_admit_exactly_what_fits(subject: &Subject) {
    // 1000 tokens an hour, 40 calls of 90: 11 fit.
    let rate = Rate::per_window(1000, Duration::from_secs(3600));
    let hits = all_at_once(&subject.store, 40, move |store| async move {
        store.acquire_rate_n("w", rate, 90, now_us()).await.unwrap()
    })
    .await;
    assert_eq!(hits.iter().filter(|h| h.allowed).count(), 11);
}

async fn concurrent_quota_hits_admit_exactly_the_limit(subject: &Subject) {
    let ends_at = now_s() + 3600;
    let hits = all_at_once(&subject.store, 200, move |store| async move {
        store.acquire_quota("cq", 50, ends_at).await.unwrap()
    })
    .await;
    let mut counts: Vec<u64> = hits.iter().filter(|h| h.allowed).map(|h| h.count).collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..=50).collect::<Vec<u64>>());
    assert!(hits.iter().filter(|h| !h.allowed).all(|h| h.count == 50));
}

async fn concurrent_additions_are_all_counted(subject: &Subject) {
    let ends_at = now_s() + 3600;
    let totals = all_at_once(&subject.store, 100, move |store| async move {
        store.add_total("ct", 7, ends_at).await.unwrap()
    })
    .await;
    // Every addition saw its own running total.
    let mut totals = totals;
    totals.sort_unstable();
    assert_eq!(totals, (1..=100).map(|i| i * 7).collect::<Vec<u64>>());
    assert_eq!(subject.store.read_total("ct").await.unwrap(), 700);
}

async fn keys_are_independent(subject: &Subject) {
    let store = &subject.store;
    let rate = Rate::per_window(1, Duration::from_secs(60));
    assert!(
        store
            .acquire_rate("a", rate, now_us())
            .await
            .unwrap()
            .allowed
    );
    assert!(
        store
            .acquire_rate("b", rate, now_us())
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !store
            .acquire_rate("a", rate, now_us())
            .await
            .unwrap()
            .allowed
    );
    let ends_at = now_s() + 60;
    assert!(store.acquire_quota("qa", 1, ends_at).await.unwrap().allowed);
    assert!(store.acquire_quota("qb", 1, ends_at).await.unwrap().allowed);
    assert_eq!(store.add_total("ta", 5, ends_at).await.unwrap(), 5);
    assert_eq!(store.read_total("tb").await.unwrap(), 0);
}

/// `acquire_rates`: a hit counts against every limit or none; the refusing
/// limit is named, and the limits before it keep what they had.
async fn several_limits_count_all_or_nothing(subject: &Subject) {
    let store = &subject.store;
    let wide = Rate::per_window(10, Duration::from_secs(60));
    let narrow = Rate::per_window(2, Duration::from_secs(60));
    let requests = [
        RateRequest {
            key: "multi-wide",
            rate: wide,
        },
        RateRequest {
            key: "multi-narrow",
            rate: narrow,
        },
    ];
    for expected_narrow in [1, 0] {
        let answer = store.acquire_rates(&requests, now_us()).await.unwrap();
        assert_eq!(answer.refused, None, "{answer:?}");
        assert_eq!(answer.hits.len(), 2, "{answer:?}");
        assert!(answer.hits.iter().all(|hit| hit.allowed), "{answer:?}");
        let narrow_hit = answer.hits[1];
        assert_eq!(
            narrow_hit.remaining(narrow, narrow_hit.at_us),
            expected_narrow
        );
    }
    let refused = store.acquire_rates(&requests, now_us()).await.unwrap();
    assert_eq!(refused.refused, Some(1), "{refused:?}");
    assert_eq!(refused.hits.len(), 2, "{refused:?}");
    assert!(refused.hits[0].allowed && !refused.hits[1].allowed);
    // The refused request was not counted against the wide limit: it
    // still has 8 of its 10.
    let wide_hit = store
        .acquire_rate("multi-wide", wide, now_us())
        .await
        .unwrap();
    assert!(wide_hit.allowed);
    assert_eq!(wide_hit.remaining(wide, wide_hit.at_us), 7, "{wide_hit:?}");
    // Refused by the first limit: only it is in the answer.
    let first_full = [
        RateRequest {
            key: "multi-narrow",
            rate: narrow,
        },
        RateRequest {
            key: "multi-wide",
            rate: wide,
        },
    ];
    let answer = store.acquire_rates(&first_full, now_us()).await.unwrap();
    assert_eq!(answer.refused, Some(0), "{answer:?}");
    assert_eq!(answer.hits.len(), 1, "{answer:?}");
    let wide_hit = store
        .acquire_rate("multi-wide", wide, now_us())
        .await
        .unwrap();
    assert_eq!(wide_hit.remaining(wide, wide_hit.at_us), 6, "{wide_hit:?}");
}

/// Many requests at once under two limits admit exactly the tighter one,
/// and the wider one counts exactly the admitted requests.
async fn several_limits_under_concurrency_admit_exactly_the_tightest(subject: &Subject) {
    let wide = Rate::per_window(100, Duration::from_secs(60));
    let narrow = Rate::per_window(25, Duration::from_secs(60));
    let answers = all_at_once(&subject.store, 60, move |store| async move {
        let requests = [
            RateRequest {
                key: "conc-wide",
                rate: wide,
            },
            RateRequest {
                key: "conc-narrow",
                rate: narrow,
            },
        ];
        store.acquire_rates(&requests, now_us()).await.unwrap()
    })
    .await;
    let admitted = answers.iter().filter(|a| a.refused.is_none()).count();
    assert_eq!(admitted, 25);
    let wide_hit = subject
        .store
        .acquire_rate("conc-wide", wide, now_us())
        .await
        .unwrap();
    assert_eq!(wide_hit.remaining(wide, wide_hit.at_us), 100 - 25 - 1);
}

/// `hold_spend`/`settle_spend`: the first hold always fits; holds in flight
/// that cover what remains make the next call wait (`Pending`), not fail;
/// settling ends the hold and adds the real cost; a spent budget says so.
async fn spend_holds_wait_for_calls_in_flight_and_settle_to_the_cost(subject: &Subject) {
    let store = &subject.store;
    let ends = now_s() + 60;
    let hold = |amount| store.hold_spend("ab|hold", amount, 1_000, ends);
    // Larger than the whole budget: the first hold still fits.
    assert_eq!(hold(1_500).await.unwrap(), SpendHold::Held);
    assert_eq!(hold(10).await.unwrap(), SpendHold::Pending);
    assert_eq!(store.read_total("ab|hold").await.unwrap(), 0);
    store
        .settle_spend("ab|hold", 1_500, 400, ends)
        .await
        .unwrap();
    assert_eq!(store.read_total("ab|hold").await.unwrap(), 400);
    // 400 spent, 300 held, 300 more: 700 is below 1 000, so it fits.
    assert_eq!(hold(300).await.unwrap(), SpendHold::Held);
    assert_eq!(hold(300).await.unwrap(), SpendHold::Held);
    assert_eq!(hold(300).await.unwrap(), SpendHold::Pending);
    store.settle_spend("ab|hold", 300, 350, ends).await.unwrap();
    store.settle_spend("ab|hold", 300, 350, ends).await.unwrap();
    assert_eq!(hold(1).await.unwrap(), SpendHold::Spent(1_100));
    assert_eq!(store.read_total("ab|hold").await.unwrap(), 1_100);
}
