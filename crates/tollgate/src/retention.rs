//! Access-record retention: deletes records older than
//! `access_log.retention` at start-up and then every hour, in small batches
//! so the record sink is never held up for long.

use std::time::Duration;

use tokio::sync::watch;
use tollgate_store::Store;

/// How often old records are looked for.
const EVERY: Duration = Duration::from_secs(3600);
/// Records deleted per transaction.
const BATCH: usize = 5_000;
/// Pause between batches, for the sink's writes to go in between.
const PAUSE: Duration = Duration::from_millis(20);

pub async fn run(store: Store, retention: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tick.tick() => {}
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let before = i64::try_from(now.saturating_sub(retention).as_micros()).unwrap_or(0);
        let mut total = 0;
        loop {
            let store = store.clone();
            let pruned =
                tokio::task::spawn_blocking(move || store.prune_access_records(before, BATCH))
                    .await;
            match pruned {
                Ok(Ok(deleted)) => {
                    total += deleted;
                    if deleted < BATCH {
                        break;
                    }
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "pruning old access records failed");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "the pruning task failed");
                    break;
                }
            }
            if *shutdown.borrow() {
                return;
            }
            tokio::time::sleep(PAUSE).await;
        }
        if total > 0 {
            tracing::info!(deleted = total, ?retention, "pruned old access records");
        }
    }
}
