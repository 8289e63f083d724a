//! What only [`RedisCounters`] does, on a Redis server of the test's own
//! (skipped without `redis-server`, a failure in CI): key names and
//! expiries, prefixes, Redis's clock, the scripts surviving a `SCRIPT
//! FLUSH`, and an outage that fails fast and heals.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use tollgate_policy::counters::{CounterStore, Rate};
use tollgate_policy::counters_redis::{RedisCounters, RedisOptions};
use tollgate_testkit::redis_server::RedisServer;
use tollgate_testkit::{eventually, port};

fn now_s() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
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

fn store(server: &RedisServer, prefix: &str) -> RedisCounters {
    let options = RedisOptions {
        prefix: prefix.to_owned(),
        ..RedisOptions::default()
    };
    RedisCounters::new(&server.url(), options).unwrap()
}

/// A plain connection, to look at what the store wrote.
async fn inspect(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn keys_carry_the_prefix_and_expire_when_they_hold_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let counters = store(&server, "gw-a:");
    counters.prepare().await.unwrap();
    let mut redis = inspect(&server).await;

    // A rate key lives until it is back to a full burst: one interval (12 s)
    // after one hit.
    let rate = Rate::per_window(5, Duration::from_secs(60));
    let hit = counters.acquire_rate("rl|k", rate, 0).await.unwrap();
    let tat: u64 = redis.get("gw-a:rl|k").await.unwrap();
    assert_eq!(tat, hit.tat);
    let ttl_ms: i64 = redis.pttl("gw-a:rl|k").await.unwrap();
    assert!((11_000..=12_000).contains(&ttl_ms), "{ttl_ms}");
    // Giving the hit back leaves nothing to hold: the key is gone.
    counters.release_rate("rl|k", rate).await.unwrap();
    assert!(!redis.exists::<_, bool>("gw-a:rl|k").await.unwrap());

    // Quotas and totals end with their period.
    let ends_at = now_s() + 3600;
    counters.acquire_quota("q|k", 5, ends_at).await.unwrap();
    counters.add_total("ab|k", 250, ends_at).await.unwrap();
    for key in ["gw-a:q|k", "gw-a:ab|k"] {
        let ttl: i64 = redis.ttl(key).await.unwrap();
        assert!((3590..=3600).contains(&ttl), "{key}: {ttl}");
    }
    let total: u64 = redis.get("gw-a:ab|k").await.unwrap();
    assert_eq!(total, 250);

    // Another prefix, another gateway: nothing shared.
    let other = store(&server, "gw-b:");
    assert_eq!(other.read_total("ab|k").await.unwrap(), 0);
    let quota = other.acquire_quota("q|k", 5, ends_at).await.unwrap();
    assert_eq!(quota.count, 1);
    let keys: Vec<String> = redis.keys("*").await.unwrap();
    assert!(
        keys.iter()
            .all(|k| k.starts_with("gw-a:") || k.starts_with("gw-b:")),
        "{keys:?}"
    );
}

#[tokio::test]
async fn rates_are_judged_at_redis_time_not_the_callers() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let counters = store(&server, "tollgate:");
    let rate = Rate::per_window(2, Duration::from_secs(60));
    // A node whose clock runs an hour ahead gains nothing.
    let ahead = now_us() + 3_600_000_000;
    let before = now_us();
    for _ in 0..2 {
        let hit = counters.acquire_rate("k", rate, ahead).await.unwrap();
        assert!(hit.allowed);
        assert!(
            hit.at_us >= before - 1_000_000 && hit.at_us <= now_us() + 1_000_000,
            "{hit:?}"
        );
    }
    assert!(
        !counters
            .acquire_rate("k", rate, ahead)
            .await
            .unwrap()
            .allowed
    );
}

#[tokio::test]
async fn scripts_flushed_from_redis_are_sent_again() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let counters = store(&server, "tollgate:");
    counters.prepare().await.unwrap();
    let mut redis = inspect(&server).await;
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis)
        .await
        .unwrap();
    let rate = Rate::per_window(1, Duration::from_secs(60));
    assert!(counters.acquire_rate("k", rate, 0).await.unwrap().allowed);
    assert!(
        counters
            .acquire_quota("q", 1, now_s() + 60)
            .await
            .unwrap()
            .allowed
    );
    assert_eq!(counters.add_total("t", 3, now_s() + 60).await.unwrap(), 3);
    counters.release_rate("k", rate).await.unwrap();
}

#[tokio::test]
async fn an_outage_fails_fast_and_heals() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let counters = store(&server, "tollgate:");
    let rate = Rate::per_window(100, Duration::from_secs(60));
    assert!(counters.acquire_rate("k", rate, 0).await.unwrap().allowed);

    server.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let error = counters.acquire_rate("k", rate, 0).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}: {error}",
            started.elapsed()
        );
    }

    // Back (empty, as nothing is saved): counting resumes by itself.
    server.start_again();
    eventually(Duration::from_secs(10), || async {
        counters.acquire_rate("k", rate, 0).await.is_ok()
    })
    .await;
    assert!(counters.prepare().await.is_ok());
}

#[tokio::test]
async fn startup_goes_on_without_redis() {
    // Nothing listens there: start logs it and returns the store anyway.
    let url = format!("redis://{}", port::free_addr());
    let started = Instant::now();
    let counters = RedisCounters::start(&url, RedisOptions::default(), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(counters.prepare().await.is_err());
    let rate = Rate::per_window(1, Duration::from_secs(60));
    assert!(counters.acquire_rate("k", rate, 0).await.is_err());
    // A URL it cannot use is an error.
    assert!(
        RedisCounters::start("memcached://x", RedisOptions::default(), Duration::ZERO)
            .await
            .is_err()
    );
}
