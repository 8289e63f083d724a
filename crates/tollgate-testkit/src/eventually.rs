//! Polling for conditions that become true eventually, instead of sleeping.

use std::future::Future;
use std::panic::Location;
use std::time::Duration;

use tokio::time::Instant;

/// How long the pollers wait between two checks.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Checks `condition` until it returns `true`; panics (naming the caller's
/// line) if it is still false after `deadline`.
///
/// ```no_run
/// # async fn example(up: tollgate_testkit::Upstream) {
/// use std::time::Duration;
/// tollgate_testkit::eventually(Duration::from_secs(5), || async { up.hits() >= 3 }).await;
/// # }
/// ```
#[track_caller]
pub fn eventually<F, Fut>(deadline: Duration, mut condition: F) -> impl Future<Output = ()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let caller = Location::caller();
    async move {
        let until = Instant::now() + deadline;
        loop {
            if condition().await {
                return;
            }
            if Instant::now() >= until {
                panic!("condition at {caller} still false after {deadline:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// Like [`eventually`], for a check that yields a value once it holds:
/// returns the first `Some`.
#[track_caller]
pub fn eventually_some<T, F, Fut>(deadline: Duration, mut check: F) -> impl Future<Output = T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let caller = Location::caller();
    async move {
        let until = Instant::now() + deadline;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            if Instant::now() >= until {
                panic!("check at {caller} still None after {deadline:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}
