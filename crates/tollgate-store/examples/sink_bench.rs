//! Measures what writing access records costs each sink, per record.
//!
//! ```text
//! cargo run --release -p tollgate-store --example sink_bench -- \
//!     [--records N] [--batch N] [--prefill N] [--ai N] [--only NAME]
//! ```
//!
//! Feeds realistic records (32 random hex request ids, path `/`, api and
//! service names, IPv4 clients, latency floats) in batches, as the access log
//! thread does, to: the SQLite sink on disk (a temporary directory), the SQLite
//! sink on an in-memory database (SQLite's own cost, without the file system),
//! the JSON-lines file sink, and the SQLite and file sinks together (what the
//! gateway runs): `sqlite-disk`, `sqlite-memory`, `file` and `sqlite+file`,
//! which `--only` picks one of. `--prefill` writes that many records into each database
//! before measuring, to see how the cost grows with the table. `--ai N` makes
//! every Nth record an AI call's (tokens, cost, two attempts); 0, the
//! default, none.
//!
//! Prints wall time and, on Linux, the thread's CPU time per record: the access
//! log thread shares its core with the proxy, so CPU time is what it takes
//! away from requests.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tollgate_store::SqliteStore;
use tollgate_telemetry::{AccessRecord, AiAttempt, AiUsage, FileSink, Outcome, RecordSink};

struct Args {
    records: usize,
    batch: usize,
    prefill: usize,
    /// Every `ai`th record is an AI call's; 0 for none.
    ai: usize,
    /// Run only the case of this name.
    only: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        records: 200_000,
        batch: 1000,
        prefill: 0,
        ai: 0,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--only" {
            args.only = it.next();
            continue;
        }
        let value = it.next().and_then(|v| v.replace('_', "").parse().ok());
        let Some(value) = value else {
            eprintln!(
                "usage: sink_bench [--records N] [--batch N] [--prefill N] [--ai N] [--only NAME]"
            );
            std::process::exit(2);
        };
        match flag.as_str() {
            "--records" => args.records = value,
            "--batch" => args.batch = value.max(1),
            "--prefill" => args.prefill = value,
            "--ai" => args.ai = value,
            _ => {
                eprintln!("unknown flag {flag}");
                std::process::exit(2);
            }
        }
    }
    args
}

/// xorshift64*: deterministic, dependency-free, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Makes records the way the gateway would see them under a benchmark.
struct Records {
    rng: Rng,
    ts: SystemTime,
    apis: Vec<(Arc<str>, Arc<str>)>,
    upstream: Arc<str>,
    /// Every `ai`th record is an AI call's; 0 for none.
    ai: usize,
    made: usize,
}

impl Records {
    fn new(ai: usize) -> Records {
        Records {
            ai,
            made: 0,
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            // 2026-12-04T17:00:00Z
            ts: UNIX_EPOCH + Duration::from_secs(1_796_403_600),
            apis: ["orders", "users", "payments", "search"]
                .iter()
                .map(|api| (Arc::from(*api), Arc::from(format!("{api}-svc"))))
                .collect(),
            upstream: Arc::from("127.0.0.1:9000"),
        }
    }

    fn next(&mut self) -> AccessRecord {
        // ~20k requests/s, arriving a little out of order.
        self.ts += Duration::from_micros(40 + self.rng.next() % 20);
        let (hi, lo) = (self.rng.next(), self.rng.next());
        let request_id = format!("{hi:016x}{lo:016x}");
        let r = self.rng.next();
        let (api, service) = self.apis[(r % self.apis.len() as u64) as usize].clone();
        let latency_ms = 0.2 + (r >> 8) as f64 / (1u64 << 56) as f64 * 3.0;
        self.made += 1;
        let ai = (self.ai > 0 && self.made.is_multiple_of(self.ai)).then(|| {
            let attempt = |key, result: &str| AiAttempt {
                provider: "openai".to_owned(),
                model: "gpt-4o-mini".to_owned(),
                key,
                result: result.to_owned(),
            };
            Box::new(AiUsage {
                ai_provider: Some("openai".to_owned()),
                ai_model: Some("gpt-4o-mini".to_owned()),
                tokens_in: 200 + r % 2000,
                tokens_out: 50 + (r >> 12) % 500,
                tokens_cached: (r >> 24) % 200,
                tokens_estimated: false,
                cost_usd: Some((r % 1000) as f64 * 1e-6),
                ttft_ms: Some(latency_ms * 0.3),
                attempts: vec![attempt(1, "429"), attempt(2, "200")],
                cache: Some("miss"),
            })
        });
        AccessRecord {
            ts: self.ts - Duration::from_micros(r % 500),
            request_id,
            client_ip: IpAddr::V4(Ipv4Addr::new(10, 0, (r >> 16) as u8, (r >> 24) as u8)),
            method: "GET".into(),
            host: "localhost:8080".to_owned(),
            path: "/".to_owned(),
            api: Some(api),
            service: Some(service),
            consumer: None,
            status: 200,
            upstream_status: Some(200),
            upstream_addr: Some(self.upstream.clone()),
            latency_ms,
            upstream_latency_ms: Some(latency_ms * 0.8),
            bytes_in: 0,
            bytes_out: 612 + (r >> 40) % 64,
            outcome: Outcome::Allowed,
            reason: None,
            ai,
        }
    }

    fn batch(&mut self, n: usize) -> Vec<AccessRecord> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// This thread's CPU time so far (Linux), or `None`.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn run(name: &str, args: &Args, sinks: &mut [&mut dyn RecordSink]) {
    if args.only.as_ref().is_some_and(|only| only != name) {
        return;
    }
    let mut records = Records::new(args.ai);
    let mut left = args.prefill;
    while left > 0 {
        let batch = records.batch(left.min(4096));
        for sink in sinks.iter_mut() {
            sink.write_batch(&batch).expect("prefill");
        }
        left -= batch.len();
    }

    let (mut wall, mut cpu, mut cpu_known) = (Duration::ZERO, Duration::ZERO, true);
    let mut written = 0;
    while written < args.records {
        let batch = records.batch(args.batch.min(args.records - written));
        let cpu_before = thread_cpu();
        let started = Instant::now();
        for sink in sinks.iter_mut() {
            sink.write_batch(&batch).expect("write_batch");
        }
        wall += started.elapsed();
        match (cpu_before, thread_cpu()) {
            (Some(before), Some(after)) => cpu += after - before,
            _ => cpu_known = false,
        }
        written += batch.len();
    }
    let per = |d: Duration| d.as_nanos() as f64 / written as f64;
    let cpu = if cpu_known {
        format!("{:>7.0} ns/record CPU", per(cpu))
    } else {
        "CPU time unknown".to_owned()
    };
    println!(
        "{name:<16} {:>7.0} ns/record wall {cpu}  ({written} records, batches of {})",
        per(wall),
        args.batch
    );
}

fn main() {
    let args = parse_args();
    if args.prefill > 0 {
        println!("each database prefilled with {} records", args.prefill);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let url = |name: &str| format!("sqlite://{}", dir.path().join(name).display());

    let store = SqliteStore::open(&url("disk.db")).expect("open");
    let mut sqlite = store.access_record_sink().expect("sink");
    run("sqlite-disk", &args, &mut [&mut sqlite]);
    drop((sqlite, store));

    let store = SqliteStore::open("sqlite::memory:").expect("open");
    let mut sqlite = store.access_record_sink().expect("sink");
    run("sqlite-memory", &args, &mut [&mut sqlite]);
    drop((sqlite, store));

    let mut file = FileSink::open(dir.path().join("file.jsonl")).expect("file");
    run("file", &args, &mut [&mut file]);
    drop(file);

    let store = SqliteStore::open(&url("both.db")).expect("open");
    let mut sqlite = store.access_record_sink().expect("sink");
    let mut file = FileSink::open(dir.path().join("both.jsonl")).expect("file");
    run("sqlite+file", &args, &mut [&mut sqlite, &mut file]);
}
