//! Configuration change notifications: every config commit sends
//! `NOTIFY tollgate_config, '<revision>'` in its transaction (so it is
//! delivered on commit, and never for a rolled-back one), and
//! [`PgStore::listen_config`] keeps one connection listening on that
//! channel, so that a node reloads as soon as another one commits instead
//! of at its next revision poll.
//!
//! The listener is a thread of its own blocking on the `postgres` crate's
//! client, like the rest of this store: no second PostgreSQL client crate,
//! and one idle thread per node is nothing. It waits in slices of [`WAIT`]
//! to notice when it is dropped, and connects again, with backoff, when
//! its connection breaks. Notifications sent while it was not listening
//! are lost: it reports [`ConfigEvent::Listening`] each time it starts
//! listening again, and the caller then checks the revision.
//!
//! PostgreSQL's channels are per database, not per schema: nodes on other
//! schemas of the same database (tests do this) wake each other up too.
//! Harmless: a wake-up only makes the node read its own schema's revision.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use super::PgStore;

/// The channel config commits notify, with the new revision as payload.
pub const CONFIG_CHANNEL: &str = "tollgate_config";

/// How long the listener waits for notifications before it checks whether
/// it was dropped: the longest it outlives its [`ConfigListener`].
const WAIT: Duration = Duration::from_millis(500);
/// The first wait before connecting again; doubled after each failure.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// The longest wait between two connection attempts.
const LAST_RETRY: Duration = Duration::from_secs(10);
/// TCP keepalives on the listening connection, which otherwise only reads:
/// a server gone without closing it is noticed within about
/// `idle + interval × retries` (25 s) instead of never.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;

/// What the listener reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigEvent {
    /// Listening, for the first time or again after [`ConfigEvent::Lost`]:
    /// commits made meanwhile were not notified.
    Listening,
    /// A config commit, with its revision (`None` if the payload is not
    /// one). Possibly another schema's: compare with the store's revision.
    Changed { revision: Option<i64> },
    /// The connection failed or broke: listening again after a backoff.
    Lost { error: String },
}

/// The listening thread: it stops (within [`WAIT`]) when this is dropped.
pub struct ConfigListener {
    stop: Arc<AtomicBool>,
}

impl Drop for ConfigListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl PgStore {
    /// Starts a thread that listens for config commits on a connection of
    /// its own and reports what happens to `on_event`, on that thread,
    /// until the returned [`ConfigListener`] is dropped.
    pub fn listen_config(
        &self,
        on_event: impl FnMut(ConfigEvent) + Send + 'static,
    ) -> std::io::Result<ConfigListener> {
        let mut config = self.config().clone();
        config
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("tollgate-config-listener".into())
            .spawn(move || run(&config, on_event, &stopped))?;
        Ok(ConfigListener { stop })
    }
}

fn run(config: &postgres::Config, mut on_event: impl FnMut(ConfigEvent), stop: &AtomicBool) {
    let mut retry = FIRST_RETRY;
    let mut failures = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let error = match listen(config) {
            Ok(mut client) => {
                if failures > 0 {
                    tracing::info!("listening for configuration changes again");
                } else {
                    tracing::debug!(
                        channel = CONFIG_CHANNEL,
                        "listening for configuration changes"
                    );
                }
                failures = 0;
                retry = FIRST_RETRY;
                on_event(ConfigEvent::Listening);
                match wait(&mut client, &mut on_event, stop) {
                    Ok(()) => return,
                    Err(error) => error,
                }
            }
            Err(error) => error.to_string(),
        };
        if stop.load(Ordering::Relaxed) {
            return;
        }
        failures += 1;
        if failures == 1 {
            tracing::warn!(
                %error,
                retry_in = ?retry,
                "not listening for configuration changes; following them by polling until \
                 the connection is back"
            );
        } else {
            tracing::debug!(%error, failures, retry_in = ?retry, "still not listening for configuration changes");
        }
        on_event(ConfigEvent::Lost { error });
        let until = Instant::now() + retry;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(WAIT.min(until.saturating_duration_since(Instant::now())));
        }
        retry = (retry * 2).min(LAST_RETRY);
    }
}

fn listen(config: &postgres::Config) -> Result<Client, postgres::Error> {
    let mut client = config.connect(NoTls)?;
    client.batch_execute(&format!("LISTEN {CONFIG_CHANNEL}"))?;
    Ok(client)
}

/// Reports notifications until `stop` (`Ok`) or the connection breaks
/// (`Err`, why).
fn wait(
    client: &mut Client,
    on_event: &mut impl FnMut(ConfigEvent),
    stop: &AtomicBool,
) -> Result<(), String> {
    while !stop.load(Ordering::Relaxed) {
        {
            let mut notifications = client.notifications();
            let mut waiting = notifications.timeout_iter(WAIT);
            // `None`: the wait ran out, or the connection closed (checked below).
            while let Some(notification) = waiting.next().map_err(|e| e.to_string())? {
                if notification.channel() == CONFIG_CHANNEL {
                    on_event(ConfigEvent::Changed {
                        revision: notification.payload().parse().ok(),
                    });
                }
            }
        }
        if client.is_closed() {
            return Err("the server closed the connection".into());
        }
    }
    Ok(())
}
