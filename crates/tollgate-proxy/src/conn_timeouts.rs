//! The clocks of a client connection, `limits.idle_timeout` and
//! `limits.header_timeout`, kept by one timer per connection that ticks,
//! rather than by a timer armed and removed for every request.
//!
//! hyper's own header-read timeout boxes a new timer for every request head,
//! puts it in the timer wheel and takes it out again: ~1,500 instructions a
//! request, 3.7 % of a proxied request's. Here reads and writes only note
//! that they happened, and whoever sees where each request head begins and
//! ends says which head (if any) is unfinished: the lean HTTP/1.1 server
//! (`h1_server`), then, on a connection it hands to hyper,
//! [`FramingGuard`](crate::framing::FramingGuard). A timer ticking at a
//! quarter of the shorter timeout looks at both. Ticks measure time, not
//! timestamps: a timeout fires between its length and a quarter more, and
//! a busy connection reads no clock per request.
//!
//! What the head clock times is nginx's `client_header_timeout`: a new
//! connection must send its first head within the timeout, and every later
//! head must end within it of its first byte. The wait between keep-alive
//! requests is the idle timeout's (nginx's `keepalive_timeout`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Ticks per shorter timeout.
const TICKS_PER_TIMEOUT: u32 = 4;

/// One connection's idle and head timeouts.
pub struct ConnectionTimeouts {
    tick: Duration,
    /// Quiet ticks after which the connection is idle.
    idle_ticks: u32,
    /// Ticks one head may be seen unfinished before it is too late.
    head_ticks: u32,
    /// Whether anything was read or written since the last tick.
    active: bool,
    quiet: u32,
    /// The unfinished head seen at the last tick, and at how many ticks in a row.
    head: Option<u64>,
    head_seen: u32,
    timer: Pin<Box<Sleep>>,
    /// The task the timer will wake, once polled. Until it fires, polling
    /// it again from that task changes nothing, and a busy connection would
    /// pay for it on every read and write that has to wait.
    armed_for: Option<Waker>,
}

impl ConnectionTimeouts {
    /// Starts the clocks: must be called within a Tokio runtime.
    pub fn new(idle: Duration, header: Duration) -> Self {
        let tick = (idle.min(header) / TICKS_PER_TIMEOUT).max(Duration::from_millis(1));
        ConnectionTimeouts {
            tick,
            idle_ticks: ticks_in(idle, tick),
            head_ticks: ticks_in(header, tick),
            active: false,
            quiet: 0,
            head: None,
            head_seen: 0,
            timer: Box::pin(tokio::time::sleep(tick)),
            armed_for: None,
        }
    }

    /// Passes on the outcome of a read or a write on the connection. One that
    /// made progress counts as activity; one that did not fails instead once
    /// the connection has been idle too long, or `head` (the head unfinished
    /// now, by its number on the connection) has taken too long.
    pub fn track<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
        head: Option<u64>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                self.active = true;
                Poll::Ready(result)
            }
            Poll::Pending => match self.poll_expired(cx, head) {
                Some(error) => Poll::Ready(Err(error)),
                None => Poll::Pending,
            },
        }
    }

    /// Counts the ticks due; the error of the first clock that ran out.
    fn poll_expired(&mut self, cx: &mut Context<'_>, head: Option<u64>) -> Option<io::Error> {
        let armed = self
            .armed_for
            .as_ref()
            .is_some_and(|task| task.will_wake(cx.waker()));
        if armed && !self.timer.is_elapsed() {
            return None;
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            if std::mem::take(&mut self.active) {
                self.quiet = 0;
            } else {
                self.quiet += 1;
                if self.quiet >= self.idle_ticks {
                    return Some(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                }
            }
            // A head first seen at this tick began after the last one: once
            // seen `head_ticks` ticks more, it has been unfinished that long.
            if head.is_some() && head == self.head {
                self.head_seen += 1;
            } else {
                self.head = head;
                self.head_seen = u32::from(head.is_some());
            }
            if self.head_seen > self.head_ticks {
                return Some(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head timeout",
                ));
            }
            let next = Instant::now() + self.tick;
            self.timer.as_mut().reset(next);
        }
        if !armed {
            self.armed_for = Some(cx.waker().clone());
        }
        None
    }
}

/// Whole ticks in `timeout`, rounded up: a clock that runs out after that
/// many has run at least `timeout`.
fn ticks_in(timeout: Duration, tick: Duration) -> u32 {
    let ticks = timeout.as_nanos().div_ceil(tick.as_nanos());
    u32::try_from(ticks).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    const IDLE: Duration = Duration::from_secs(60);
    const HEADER: Duration = Duration::from_secs(10);

    /// How long after `from` (the connection's start) `clocks` fail a read
    /// that never makes progress, while `head` is unfinished; `None` if they
    /// have not within `limit`. Time is Tokio's paused clock.
    async fn fails_after(
        clocks: &mut ConnectionTimeouts,
        head: Option<u64>,
        limit: Duration,
        from: Instant,
    ) -> Option<(Duration, io::Error)> {
        let outcome = tokio::time::timeout(
            limit,
            poll_fn(|cx| clocks.track::<()>(cx, Poll::Pending, head)),
        )
        .await;
        outcome
            .ok()
            .map(|result| (from.elapsed(), result.unwrap_err()))
    }

    /// The progress of a read, through `track`.
    fn progress(clocks: &mut ConnectionTimeouts) {
        let waker = std::task::Waker::noop();
        let outcome = clocks.track(&mut Context::from_waker(waker), Poll::Ready(Ok(())), None);
        assert!(matches!(outcome, Poll::Ready(Ok(()))));
    }

    #[test]
    fn ticks_round_up() {
        let tick = Duration::from_millis(2500);
        assert_eq!(ticks_in(Duration::from_secs(10), tick), 4);
        assert_eq!(ticks_in(Duration::from_secs(60), tick), 24);
        assert_eq!(ticks_in(Duration::from_millis(10_001), tick), 5);
        assert_eq!(ticks_in(Duration::MAX, Duration::from_millis(1)), u32::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_is_idle_after_the_idle_timeout_and_not_a_quarter_later() {
        let start = Instant::now();
        let mut clocks = ConnectionTimeouts::new(IDLE, HEADER);
        let (after, error) = fails_after(&mut clocks, None, IDLE * 2, start)
            .await
            .expect("an idle connection is closed");
        assert!(after >= IDLE && after <= IDLE + HEADER / 4, "{after:?}");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(error.to_string(), "idle timeout");
    }

    /// Polled once, the timer is not polled again by the same task until it
    /// fires; a connection handed to another task (an upgrade's tunnel) must
    /// have it wake that task instead.
    #[tokio::test(start_paused = true)]
    async fn clocks_handed_to_another_task_wake_that_task() {
        let start = Instant::now();
        let mut clocks = ConnectionTimeouts::new(IDLE, HEADER);
        assert!(
            fails_after(&mut clocks, None, Duration::from_secs(1), start)
                .await
                .is_none()
        );
        let failed =
            tokio::spawn(async move { fails_after(&mut clocks, None, IDLE * 2, start).await })
                .await
                .unwrap();
        let (after, _) = failed.expect("the idle timeout fires in the new task");
        assert!(after >= IDLE && after <= IDLE + HEADER / 4, "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn progress_keeps_a_connection_from_being_idle() {
        let start = Instant::now();
        let mut clocks = ConnectionTimeouts::new(IDLE, HEADER);
        for _ in 0..10 {
            assert!(fails_after(&mut clocks, None, IDLE / 2, start)
                .await
                .is_none());
            progress(&mut clocks);
        }
        // Five idle timeouts have passed, none of them quiet.
        assert!(start.elapsed() >= IDLE * 5);
        let (after, _) = fails_after(&mut clocks, None, IDLE * 2, start)
            .await
            .expect("idle once quiet");
        assert!(after >= IDLE * 6, "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unfinished_head_times_out_after_the_header_timeout_even_while_bytes_come() {
        let start = Instant::now();
        let mut clocks = ConnectionTimeouts::new(IDLE, HEADER);
        // Head 3 dribbles in: progress every second, never finished.
        let mut seen = None;
        for _ in 0..20 {
            if let Some(failed) =
                fails_after(&mut clocks, Some(3), Duration::from_secs(1), start).await
            {
                seen = Some(failed);
                break;
            }
            progress(&mut clocks);
        }
        let (after, error) = seen.expect("the head timed out");
        assert!(after >= HEADER && after <= HEADER + HEADER / 4, "{after:?}");
        assert_eq!(error.to_string(), "request head timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn each_head_has_its_own_clock() {
        let start = Instant::now();
        let mut clocks = ConnectionTimeouts::new(IDLE, HEADER);
        // Heads 0, 1, 2… each unfinished for 8 s of a 10 s timeout.
        for head in 0..5 {
            assert!(
                fails_after(&mut clocks, Some(head), Duration::from_secs(8), start)
                    .await
                    .is_none(),
                "head {head}"
            );
            progress(&mut clocks);
        }
        // No head unfinished: only the idle clock runs.
        assert!(fails_after(&mut clocks, None, IDLE - HEADER, start)
            .await
            .is_none());
    }
}
