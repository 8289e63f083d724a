use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use tollgate_telemetry::{AccessLog, AccessRecord, FileSink, Outcome, RecordSink};

fn record(n: usize) -> AccessRecord {
    AccessRecord {
        ts: UNIX_EPOCH + Duration::from_millis(1_714_564_800_123),
        request_id: format!("req-{n}"),
        client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        method: "GET".into(),
        host: "api.example.com".to_owned(),
        path: format!("/orders/{n}"),
        api: Some("orders".into()),
        service: Some("orders-svc".into()),
        consumer: None,
        status: 200,
        upstream_status: Some(200),
        upstream_addr: Some("10.0.0.1:8080".into()),
        latency_ms: 1.5,
        upstream_latency_ms: Some(1.25),
        bytes_in: 10,
        bytes_out: 2048,
        outcome: Outcome::Allowed,
        reason: None,
        ai: None,
    }
}

/// Keeps every record it is given.
#[derive(Clone, Default)]
struct MemorySink {
    records: Arc<Mutex<Vec<AccessRecord>>>,
    batches: Arc<Mutex<Vec<usize>>>,
    delay: Duration,
}

impl MemorySink {
    fn request_ids(&self) -> Vec<String> {
        let records = self.records.lock().unwrap();
        records.iter().map(|r| r.request_id.clone()).collect()
    }
}

impl RecordSink for MemorySink {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn write_batch(&mut self, records: &[AccessRecord]) -> io::Result<()> {
        std::thread::sleep(self.delay);
        self.batches.lock().unwrap().push(records.len());
        self.records.lock().unwrap().extend_from_slice(records);
        Ok(())
    }
}

struct FailingSink;

impl RecordSink for FailingSink {
    fn name(&self) -> &'static str {
        "failing"
    }

    fn write_batch(&mut self, _: &[AccessRecord]) -> io::Result<()> {
        Err(io::Error::other("disk on fire"))
    }
}

struct PanickingSink;

impl RecordSink for PanickingSink {
    fn name(&self) -> &'static str {
        "panicking"
    }

    fn write_batch(&mut self, _: &[AccessRecord]) -> io::Result<()> {
        panic!("sink bug")
    }
}

/// Blocks inside its first batch: meets the test at the barrier once on
/// entry, then waits for the test to meet it again to leave.
struct BlockingSink {
    barrier: Arc<Barrier>,
    blocked_once: AtomicBool,
    inner: MemorySink,
}

impl RecordSink for BlockingSink {
    fn name(&self) -> &'static str {
        "blocking"
    }

    fn write_batch(&mut self, records: &[AccessRecord]) -> io::Result<()> {
        if !self.blocked_once.swap(true, Ordering::SeqCst) {
            self.barrier.wait();
            self.barrier.wait();
        }
        self.inner.write_batch(records)
    }
}

#[test]
fn a_batch_longer_than_a_write_chunk_reaches_the_file_whole_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.jsonl");
    let mut sink = FileSink::open(&path).unwrap();
    // Records of ~1 KiB: a batch of 200 spans several write chunks.
    let records: Vec<AccessRecord> = (0..200)
        .map(|n| {
            let mut r = record(n);
            r.path = format!("/orders/{n}/{}", "x".repeat(900));
            r
        })
        .collect();
    let bytes: usize = records.iter().map(|r| r.path.len()).sum();
    assert!(
        bytes > 4 * FileSink::WRITE_CHUNK,
        "the batch spans several chunks"
    );
    sink.write_batch(&records).unwrap();
    sink.write_batch(&records[..3]).unwrap();

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'));
    let ids: Vec<String> = text
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            value["request_id"].as_str().unwrap().to_owned()
        })
        .collect();
    let expected: Vec<String> = (0..200).chain(0..3).map(|n| format!("req-{n}")).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn records_reach_a_file_sink_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs/nested/access.jsonl");
    let log = AccessLog::start(1024, vec![Box::new(FileSink::open(&path).unwrap())]);

    let mut denied = record(1);
    denied.status = 401;
    denied.upstream_status = None;
    denied.upstream_addr = None;
    denied.upstream_latency_ms = None;
    denied.consumer = None;
    denied.outcome = Outcome::Denied;
    denied.reason = Some("unauthorized");
    log.record(record(0));
    log.record(denied);
    log.flush().await;

    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(text.ends_with('\n'));

    let first = &lines[0];
    assert_eq!(first["ts"], "2024-05-01T12:00:00.123000Z");
    assert_eq!(first["request_id"], "req-0");
    assert_eq!(first["client_ip"], "192.0.2.7");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["host"], "api.example.com");
    assert_eq!(first["path"], "/orders/0");
    assert_eq!(first["api"], "orders");
    assert_eq!(first["service"], "orders-svc");
    assert_eq!(first["consumer"], serde_json::Value::Null);
    assert_eq!(first["status"], 200);
    assert_eq!(first["upstream_status"], 200);
    assert_eq!(first["upstream_addr"], "10.0.0.1:8080");
    assert_eq!(first["latency_ms"], 1.5);
    assert_eq!(first["upstream_latency_ms"], 1.25);
    assert_eq!(first["bytes_in"], 10);
    assert_eq!(first["bytes_out"], 2048);
    assert_eq!(first["outcome"], "allowed");
    assert_eq!(first["reason"], serde_json::Value::Null);

    let second = &lines[1];
    assert_eq!(second["status"], 401);
    assert_eq!(second["outcome"], "denied");
    assert_eq!(second["reason"], "unauthorized");
    assert_eq!(second["upstream_status"], serde_json::Value::Null);

    // Reopening appends rather than truncating.
    drop(log);
    let log = AccessLog::start(16, vec![Box::new(FileSink::open(&path).unwrap())]);
    log.record(record(2));
    log.flush().await;
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
}

#[tokio::test]
async fn flush_waits_for_earlier_records_to_be_written() {
    let sink = MemorySink {
        delay: Duration::from_millis(20),
        ..MemorySink::default()
    };
    let log = AccessLog::start(4096, vec![Box::new(sink.clone())]);
    for n in 0..2000 {
        log.record(record(n));
    }
    log.flush().await;

    let ids = sink.request_ids();
    assert_eq!(ids.len(), 2000);
    assert_eq!(ids[0], "req-0");
    assert_eq!(ids[1999], "req-1999");
    let batches = sink.batches.lock().unwrap().clone();
    assert!(
        batches
            .iter()
            .all(|&n| (1..=tollgate_telemetry::access_log::MAX_BATCH).contains(&n)),
        "{batches:?}"
    );
    assert_eq!(log.dropped(), 0);

    // Flushing with nothing pending resolves too.
    log.flush().await;
}

#[tokio::test]
async fn a_full_channel_drops_and_counts_without_blocking() {
    tollgate_telemetry::metrics::install_prometheus();
    let capacity = 8;
    let barrier = Arc::new(Barrier::new(2));
    let inner = MemorySink::default();
    let sink = BlockingSink {
        barrier: barrier.clone(),
        blocked_once: AtomicBool::new(false),
        inner: inner.clone(),
    };
    let log = AccessLog::start(capacity, vec![Box::new(sink)]);

    // The thread takes the first record and blocks inside the sink.
    log.record(record(0));
    let waiter = barrier.clone();
    tokio::task::spawn_blocking(move || waiter.wait())
        .await
        .unwrap();

    // The channel now fills up; the rest is dropped, promptly.
    let started = std::time::Instant::now();
    for n in 1..=capacity + 5 {
        log.record(record(n));
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(log.dropped(), 5);
    let rendered = tollgate_telemetry::metrics::render();
    assert!(
        rendered.contains("tollgate_access_log_dropped_total "),
        "{rendered}"
    );

    let waiter = barrier.clone();
    tokio::task::spawn_blocking(move || waiter.wait())
        .await
        .unwrap();
    log.flush().await;

    let ids = inner.request_ids();
    assert_eq!(ids.len(), 1 + capacity);
    assert_eq!(ids.last().unwrap(), &format!("req-{capacity}"));
    assert_eq!(log.dropped(), 5);
}

#[tokio::test]
async fn a_failing_sink_does_not_stop_the_others() {
    let good = MemorySink::default();
    let log = AccessLog::start(
        1024,
        vec![
            Box::new(FailingSink),
            Box::new(PanickingSink),
            Box::new(good.clone()),
        ],
    );
    for n in 0..10 {
        log.record(record(n));
        // Separate flushes make separate batches: many failures, one thread.
        log.flush().await;
    }
    assert_eq!(good.request_ids().len(), 10);
    assert_eq!(log.sink_errors(), 20);
    assert_eq!(log.dropped(), 0);

    // Still alive afterwards.
    log.record(record(10));
    log.flush().await;
    assert_eq!(good.request_ids().len(), 11);
}

#[tokio::test]
async fn clones_share_the_thread_and_counters() {
    let sink = MemorySink::default();
    let log = AccessLog::start(64, vec![Box::new(sink.clone())]);
    let clone = log.clone();
    let task = tokio::spawn(async move {
        for n in 0..50 {
            clone.record(record(n));
        }
        clone.flush().await;
    });
    task.await.unwrap();
    log.flush().await;
    assert_eq!(sink.request_ids().len(), 50);
}

/// The writer thread runs at a lower priority than the proxy
/// (`WRITER_NICENESS` nicer, at most 19), so a batch being written does not delay the requests that wake
/// meanwhile.
#[cfg(target_os = "linux")]
#[test]
fn the_writer_thread_yields_to_the_proxy() {
    let _log = AccessLog::start(16, vec![Box::new(MemorySink::default())]);
    // Thread names are cut to 15 bytes: the writer and its ticker both show
    // as `tollgate-access`; the ticker keeps the default priority.
    let nice_values = || -> Vec<i32> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(Result::ok)
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim() == "tollgate-access")
            })
            .filter_map(|task| {
                let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
                // The fields after the command's closing parenthesis; nice is stat's 19th.
                let after = &stat[stat.rfind(')')? + 2..];
                after.split(' ').nth(16)?.parse().ok()
            })
            .collect()
    };
    let own: i32 = {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split(' ').nth(16).unwrap().parse().unwrap()
    };
    let expected = (own + tollgate_telemetry::access_log::WRITER_NICENESS).min(19);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let nice = nice_values();
        if nice.contains(&expected) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access log thread at nice {expected}: {nice:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
