//! The access log: a bounded channel that carries [`AccessRecord`]s off the
//! request path to a dedicated thread, which writes them in batches to every
//! [`RecordSink`].
//!
//! [`AccessLog::record`] never blocks and never awaits: when the channel is
//! full the record is dropped and counted. A failing sink is logged (at most
//! once per [`ERROR_LOG_INTERVAL`]) and counted; it never stops the thread or
//! the other sinks.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::metrics::{ACCESS_LOG_DROPPED, ACCESS_LOG_SINK_ERRORS};
use crate::record::AccessRecord;

/// The most records handed to a sink in one [`RecordSink::write_batch`] call.
pub const MAX_BATCH: usize = 4096;

/// How long the thread gathers records before writing a batch. Large batches
/// make a database sink cheap (one transaction per batch), and while the
/// thread gathers it is not parked on the channel, so senders never pay for
/// waking it. Short enough that a batch is a brief burst of work on a core
/// the proxy shares: 50 ms batches measured a p99 1–2 ms worse than 10 ms
/// ones at the same throughput. A flush writes at once.
pub const LINGER: Duration = Duration::from_millis(10);

/// How often the gathering thread looks at the channel while it lingers.
const GATHER_TICK: Duration = Duration::from_millis(5);

/// The fewest records a sink writes between two pauses of [`pace`]: 8
/// records are about 20 µs of SQLite work, the longest a request waits for
/// the writer at light load.
pub const MIN_RECORDS_PER_PAUSE: u32 = 8;

/// The most records a sink writes between two pauses, about 300 µs of
/// SQLite work, reached only past ~100k records a second: each pause costs
/// the writer a sleep and the proxy a preemption, ~28 µs of CPU in all, so
/// large batches (high load) pause less often. At 32 (every 16 records,
/// since the file sink and the database sink each count), the plain proxy
/// at -c64 paused 6 times per 100 requests; at 128 (an eighth of each
/// batch at that load) 1.8 times, for 5 % less CPU a request (20.6 against
/// 21.8 µs, four alternating rounds) and the same p99.
pub const MAX_RECORDS_PER_PAUSE: u32 = 128;

/// How many records the sinks write between two pauses in a batch of
/// `batch` records: an eighth of the batch, within
/// [`MIN_RECORDS_PER_PAUSE`]..=[`MAX_RECORDS_PER_PAUSE`]. A batch holds
/// what arrived in [`LINGER`], so its size follows the request rate: at
/// light load a request waits at most for a short run of records, and at
/// high load the writer does not spend its time switching.
pub fn records_per_pause(batch: usize) -> u32 {
    u32::try_from(batch / 8)
        .unwrap_or(u32::MAX)
        .clamp(MIN_RECORDS_PER_PAUSE, MAX_RECORDS_PER_PAUSE)
}

/// How long [`pace`] sleeps. Any sleep hands the core to the proxy until a
/// timer wakes the writer (the kernel's timer slack, 50 µs by default, comes
/// on top); a longer one only slows the writer down.
pub const PACE_SLEEP: Duration = Duration::from_micros(20);

/// The writer paces itself only while fewer records than this wait in the
/// channel. Past this backlog it writes without pausing until it has caught
/// up, so that it never falls behind a saturated proxy for long. Far below
/// any sane channel size.
pub const PAUSE_BACKLOG: usize = 1024;

thread_local! {
    static SINCE_PAUSE: Cell<u32> = const { Cell::new(0) };
    /// How many records [`pace`] lets through between two pauses: set by
    /// the writer for each batch; 0, never pause, on every other thread.
    static PAUSE_EVERY: Cell<u32> = const { Cell::new(0) };
}

/// Called by a sink once per record it writes. On the writer thread, while
/// its backlog is short, every few records (see [`records_per_pause`]) it
/// sleeps for [`PACE_SLEEP`].
///
/// Why: the writer shares a core with the proxy, and between two threads
/// that both want the core the kernel switches only at its tick (4 ms here:
/// 250 Hz, no kernel preemption). A request that arrives while the writer
/// holds the core waits for the tick: at saturation that was most of the
/// proxy's p99. Pausing inside the sink keeps the batch one transaction (a
/// transaction per 64 records costs ~45 % more CPU per record in SQLite).
///
/// A sleep, not `sched_yield`: a yielding thread stays runnable behind the
/// proxy and, at saturation, got the core back only at the next tick, so it
/// fell behind and dropped records; a sleeping one is woken by its timer
/// and preempts the proxy then. Measured at -c64 (plain proxy, one core,
/// 8 s runs): p99 5.1–5.8 ms with yields (and records dropped on a fast
/// host), 2.4–3.2 ms with 20 µs sleeps every 32 records, no record dropped,
/// throughput within the runs' noise. At one connection (AI path, ~10k
/// requests per second, 100-record batches) pausing every 8 to 32 records
/// by [`records_per_pause`] rather than every 32 took the p99 from 268–407
/// µs (median 308) to 216–322 µs (median 248) in alternating 5 s runs.
pub fn pace() {
    let every = PAUSE_EVERY.get();
    if every == 0 {
        return;
    }
    SINCE_PAUSE.with(|since| {
        let n = since.get() + 1;
        if n >= every {
            since.set(0);
            std::thread::sleep(PACE_SLEEP);
        } else {
            since.set(n);
        }
    });
}

/// A failing sink is logged at most once per this interval; the failures in
/// between are counted and reported with the next log line.
pub const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Where access records go: a file, a database, a remote collector.
///
/// Sinks run on the access log thread, never on a request path, so they may
/// block on I/O; a slow sink only makes the channel fill up and records drop.
pub trait RecordSink: Send + 'static {
    /// A short name for logs and the `sink` metric label.
    fn name(&self) -> &'static str;

    /// Writes a batch of one to [`MAX_BATCH`] records, durably enough for the
    /// sink's purpose, before returning.
    fn write_batch(&mut self, records: &[AccessRecord]) -> io::Result<()>;

    /// Called about every [`IDLE_TICK`] whatever the traffic: a sink with
    /// work of its own (a spool to write back once its database returns)
    /// does it here, so that it does not wait for the next request.
    fn idle(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How often [`RecordSink::idle`] is called.
pub const IDLE_TICK: Duration = Duration::from_secs(1);

// Nearly every message is a record: boxing it to shrink the rare `Flush`
// would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Message {
    Record(AccessRecord),
    Flush(oneshot::Sender<()>),
    /// Time for [`RecordSink::idle`].
    Tick,
}

#[derive(Default)]
struct Counters {
    dropped: AtomicU64,
    sink_errors: AtomicU64,
}

/// The sending side of the access log. Cheap to clone; every clone feeds the
/// same thread. The thread ends once every clone has been dropped and the
/// records already sent have been written.
#[derive(Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<Message>,
    counters: Arc<Counters>,
}

impl AccessLog {
    /// Starts the `tollgate-access-log` thread, which writes records to every
    /// sink in batches of up to [`MAX_BATCH`] as soon as they arrive.
    ///
    /// `capacity` bounds the records waiting to be written (at least 1).
    /// If the thread cannot be started, the error is logged and every record
    /// is dropped and counted.
    pub fn start(capacity: usize, sinks: Vec<Box<dyn RecordSink>>) -> AccessLog {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            rx,
            sinks: sinks.into_iter().map(SinkSlot::new).collect(),
            counters: counters.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("tollgate-access-log".to_owned())
            .spawn(move || writer.run());
        if let Err(error) = spawned {
            tracing::error!(%error, "could not start the access log thread; access records will be dropped");
        }
        // A weak sender: the ticks stop, and do not keep the thread alive,
        // once every `AccessLog` is dropped.
        let ticks = tx.downgrade();
        let ticker = std::thread::Builder::new()
            .name("tollgate-access-log-tick".to_owned())
            .spawn(move || loop {
                std::thread::sleep(IDLE_TICK);
                let Some(tx) = ticks.upgrade() else {
                    return;
                };
                // A full channel has records to write: no tick needed.
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Message::Tick) {
                    return;
                }
            });
        if let Err(error) = ticker {
            tracing::warn!(%error, "could not start the access log ticker; spooled records wait for traffic");
        }
        AccessLog { tx, counters }
    }

    /// Queues a record for the sinks. Never blocks: when the channel is full
    /// (or the thread is gone) the record is dropped and counted.
    pub fn record(&self, record: AccessRecord) {
        if self.tx.try_send(Message::Record(record)).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(ACCESS_LOG_DROPPED).increment(1);
        }
    }

    /// Records dropped so far because the channel was full.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Batch writes that failed so far, summed over all sinks.
    pub fn sink_errors(&self) -> u64 {
        self.counters.sink_errors.load(Ordering::Relaxed)
    }

    /// Resolves once every record sent before this call has been handed to
    /// every sink (successfully or not). Waits for room in the channel rather
    /// than dropping the request. Resolves at once if the thread is gone.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).await.is_ok() {
            // An error means the thread is gone: nothing more will be written.
            let _ = written.await;
        }
    }
}

/// The receiving side, owned by the access log thread.
struct Writer {
    rx: mpsc::Receiver<Message>,
    sinks: Vec<SinkSlot>,
    counters: Arc<Counters>,
}

/// How much nicer than the process the writer thread runs. On a core it
/// shares with the proxy, a batch written at the proxy's own priority delays
/// whichever request wakes during it: at one connection that was most of the
/// p99 (AI bench path: 0.60–1.28 ms at nice 0; 0.50–0.59 ms at nice 5 and
/// 0.47–0.55 ms at nice 10, both with [`pace`]). Not nicer than 5: at nice
/// 10 the writer gets too small a share of a saturated core to keep up with
/// the proxy, and records were dropped (measured at -c64: 12 % of them on
/// the plain proxy, 3.5 % on the AI path). At nice 5 a writer that paced
/// itself with `sched_yield` still dropped 0.7–2.5 % on a fast host (~55k
/// requests per second); pacing with sleeps, none.
#[cfg(target_os = "linux")]
pub const WRITER_NICENESS: i32 = 5;

/// Lowers the calling thread's priority by [`WRITER_NICENESS`] (on Linux,
/// nice values belong to threads). Failing to is harmless and only logged.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let thread = Some(rustix::thread::gettid());
        let lowered = getpriority_process(thread)
            .and_then(|nice| setpriority_process(thread, (nice + WRITER_NICENESS).min(19)));
        if let Err(error) = lowered {
            tracing::debug!(%error, "could not lower the access log thread's priority");
        }
    }
}

impl Writer {
    fn run(mut self) {
        lower_priority();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut waiters = Vec::new();
        let mut tick = false;
        // Park on the channel only when there is nothing to write.
        while let Some(first) = self.rx.blocking_recv() {
            let started = Instant::now();
            self.take(first, &mut batch, &mut waiters, &mut tick);
            let mut open = true;
            loop {
                while batch.len() < MAX_BATCH {
                    match self.rx.try_recv() {
                        Ok(message) => self.take(message, &mut batch, &mut waiters, &mut tick),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                }
                if !open
                    || batch.len() >= MAX_BATCH
                    || !waiters.is_empty()
                    || started.elapsed() >= LINGER
                {
                    break;
                }
                std::thread::sleep(GATHER_TICK);
            }
            if !batch.is_empty() {
                PAUSE_EVERY.set(if self.rx.len() < PAUSE_BACKLOG {
                    records_per_pause(batch.len())
                } else {
                    0
                });
                for slot in &mut self.sinks {
                    slot.write(&batch, &self.counters);
                }
                batch.clear();
            }
            if std::mem::take(&mut tick) {
                for slot in &mut self.sinks {
                    slot.idle(&self.counters);
                }
            }
            // Every record sent before these flushes is in this batch or an
            // earlier one.
            for done in waiters.drain(..) {
                let _ = done.send(());
            }
            if !open {
                break;
            }
        }
    }

    fn take(
        &self,
        message: Message,
        batch: &mut Vec<AccessRecord>,
        waiters: &mut Vec<oneshot::Sender<()>>,
        tick: &mut bool,
    ) {
        match message {
            Message::Record(record) => batch.push(record),
            Message::Flush(done) => waiters.push(done),
            Message::Tick => *tick = true,
        }
    }
}

/// A sink and its error-reporting state.
struct SinkSlot {
    sink: Box<dyn RecordSink>,
    last_logged: Option<Instant>,
    unlogged_failures: u64,
}

impl SinkSlot {
    fn new(sink: Box<dyn RecordSink>) -> SinkSlot {
        SinkSlot {
            sink,
            last_logged: None,
            unlogged_failures: 0,
        }
    }

    fn write(&mut self, batch: &[AccessRecord], counters: &Counters) {
        let error = match catch_unwind(AssertUnwindSafe(|| self.sink.write_batch(batch))) {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(_) => "the sink panicked".to_owned(),
        };
        self.failed(error, batch.len(), counters);
    }

    fn idle(&mut self, counters: &Counters) {
        let error = match catch_unwind(AssertUnwindSafe(|| self.sink.idle())) {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(_) => "the sink panicked".to_owned(),
        };
        self.failed(error, 0, counters);
    }

    /// Counts and (at most once per [`ERROR_LOG_INTERVAL`]) logs a failure
    /// that lost `records`.
    fn failed(&mut self, error: String, records: usize, counters: &Counters) {
        let name = self.sink.name();
        counters.sink_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(ACCESS_LOG_SINK_ERRORS, "sink" => name).increment(1);

        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|at| now.duration_since(at) < ERROR_LOG_INTERVAL)
        {
            self.unlogged_failures += 1;
            return;
        }
        tracing::warn!(
            sink = name,
            %error,
            records,
            earlier_failures_not_logged = self.unlogged_failures,
            "access log sink failed to write a batch; its records are lost"
        );
        self.last_logged = Some(now);
        self.unlogged_failures = 0;
    }
}

/// Appends records to a file as JSON lines, one record per line.
///
/// A batch is serialized into a reused buffer and written with as few writes
/// as its size allows (one per [`FileSink::WRITE_CHUNK`]), each holding whole
/// lines.
pub struct FileSink {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
}

impl FileSink {
    /// The buffer is written out once it holds this much. A write is kernel
    /// work that a request on the writer's core cannot interrupt (this
    /// kernel has no preemption), so a whole batch in one write held
    /// requests back: at one connection on the AI path (~10k requests a
    /// second) a batch was ~100 KB, written in 0.16–0.30 ms (`strace -T`).
    /// A chunk of 32 KiB (~50 AI records, ~90 plain ones) is written in
    /// tens of microseconds, for one more system call per chunk.
    pub const WRITE_CHUNK: usize = 32 * 1024;

    /// Opens `path` for appending, creating it and its parent directories.
    pub fn open(path: impl AsRef<Path>) -> io::Result<FileSink> {
        let path = path.as_ref();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(FileSink {
            path: path.to_owned(),
            file,
            buf: Vec::with_capacity(2 * Self::WRITE_CHUNK),
        })
    }

    /// The file this sink appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl RecordSink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    fn write_batch(&mut self, records: &[AccessRecord]) -> io::Result<()> {
        self.buf.clear();
        for record in records {
            pace();
            record.write_json(&mut self.buf)?;
            self.buf.push(b'\n');
            if self.buf.len() >= Self::WRITE_CHUNK {
                self.file.write_all(&self.buf)?;
                self.buf.clear();
            }
        }
        self.file.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_pauses_once_every_records_per_pause() {
        // Runs on a thread of its own, so the count starts at zero.
        std::thread::spawn(|| {
            let since = || SINCE_PAUSE.with(Cell::get);
            // Off the writer thread (and on it, behind a long backlog) it never counts.
            for _ in 0..2 * MAX_RECORDS_PER_PAUSE {
                pace();
            }
            assert_eq!(since(), 0);
            for every in [MIN_RECORDS_PER_PAUSE, 20, MAX_RECORDS_PER_PAUSE] {
                PAUSE_EVERY.set(every);
                for round in 0..3 {
                    for n in 1..every {
                        pace();
                        assert_eq!(since(), n, "every {every}, round {round}");
                    }
                    pace();
                    assert_eq!(
                        since(),
                        0,
                        "every {every}, round {round}: the pause resets the count"
                    );
                }
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn small_batches_pause_more_often_than_large_ones() {
        assert_eq!(records_per_pause(1), MIN_RECORDS_PER_PAUSE);
        assert_eq!(records_per_pause(100), 12);
        assert_eq!(records_per_pause(200), 25);
        assert_eq!(records_per_pause(500), 62);
        assert_eq!(records_per_pause(1024), MAX_RECORDS_PER_PAUSE);
        assert_eq!(records_per_pause(MAX_BATCH), MAX_RECORDS_PER_PAUSE);
        assert_eq!(records_per_pause(usize::MAX), MAX_RECORDS_PER_PAUSE);
    }
}
