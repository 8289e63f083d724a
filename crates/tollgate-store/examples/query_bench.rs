//! Measures filtered access-record queries over a large generated table.
//!
//! ```text
//! cargo run --release -p tollgate-store --example query_bench -- \
//!     [--rows N] [--db PATH]
//! ```
//!
//! Writes `--rows` (default 1,000,000) generated records through the SQLite
//! sink into a temporary database — or into `--db PATH`, reused as it is when
//! it already holds records — printing what the inserts cost with that
//! traffic, then times [`SqliteStore::query_access_records`] for each filter,
//! alone and combined, as the admin API's `GET /admin/v1/logs` would call it:
//! the first page (median of 5), and the pages of a walk through the results
//! (up to 200 pages). Then times [`SqliteStore::analytics`] (`GET
//! /admin/v1/analytics`) over the whole day and parts of it, with and
//! without filters (median of 5).
//!
//! The generated traffic spreads over a day: five APIs of uneven popularity
//! (one rare), 2% unrouted requests, 500 consumers of uneven activity plus
//! anonymous clients, mostly 2xx statuses with some denials (401, 403, 429)
//! and gateway errors (404, 502, 504), timestamps slightly out of order.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use tollgate_store::{AccessQuery, AnalyticsQuery, BucketWidth, SqliteStore};
use tollgate_telemetry::{AccessRecord, Outcome, RecordSink};

/// 2026-12-04T00:00:00Z, in Unix seconds: the generated day's start.
const START_SECS: u64 = 1_796_342_400;

struct Args {
    rows: usize,
    db: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        rows: 1_000_000,
        db: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next();
        match (flag.as_str(), value) {
            ("--rows", Some(v)) if v.replace('_', "").parse::<usize>().is_ok() => {
                args.rows = v.replace('_', "").parse().unwrap_or_default();
            }
            ("--db", Some(v)) => args.db = Some(v),
            _ => {
                eprintln!("usage: query_bench [--rows N] [--db PATH]");
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

    /// Uniform in `0.0..1.0`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Makes a day of gateway traffic.
struct Traffic {
    rng: Rng,
    /// Unix microseconds of the latest arrival.
    now: u64,
    /// Average microseconds between arrivals.
    gap: u64,
    /// (api, service, share of routed requests).
    apis: Vec<(Arc<str>, Arc<str>, f64)>,
    consumers: Vec<Arc<str>>,
    upstream: Arc<str>,
}

impl Traffic {
    fn new(rows: usize) -> Traffic {
        let api = |name: &str, service: &str, share| (Arc::from(name), Arc::from(service), share);
        Traffic {
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            now: START_SECS * 1_000_000,
            gap: 86_400_000_000 / rows.max(1) as u64,
            apis: vec![
                api("orders", "orders-svc", 0.40),
                api("users", "users-svc", 0.30),
                api("payments", "payments-svc", 0.20),
                api("search", "catalog-svc", 0.099),
                api("legacy-export", "catalog-svc", 0.001),
            ],
            consumers: (0..500)
                .map(|n| Arc::from(format!("consumer-{n:03}")))
                .collect(),
            upstream: Arc::from("10.0.0.1:8080"),
        }
    }

    fn next(&mut self) -> AccessRecord {
        self.now += 1 + self.rng.next() % (2 * self.gap);
        // Records reach the sink when requests end: most arrived within
        // half a second before, a few were long requests.
        let age = if self.rng.next().is_multiple_of(1000) {
            self.rng.next() % 60_000_000
        } else {
            self.rng.next() % 500_000
        };
        let ts = UNIX_EPOCH + Duration::from_micros(self.now.saturating_sub(age));
        let (hi, lo) = (self.rng.next(), self.rng.next());
        let mut r = AccessRecord {
            ts,
            request_id: format!("{hi:016x}{lo:016x}"),
            client_ip: IpAddr::V4(Ipv4Addr::new(
                10,
                0,
                self.rng.next() as u8,
                self.rng.next() as u8,
            )),
            method: "GET".into(),
            host: "api.example.com".to_owned(),
            path: "/".to_owned(),
            api: None,
            service: None,
            consumer: None,
            status: 200,
            upstream_status: None,
            upstream_addr: None,
            latency_ms: 0.2 + self.rng.unit() * 30.0,
            upstream_latency_ms: None,
            bytes_in: 0,
            bytes_out: 600 + self.rng.next() % 4000,
            outcome: Outcome::Allowed,
            reason: None,
            ai: None,
        };
        if self.rng.unit() < 0.02 {
            r.path = "/nowhere".to_owned();
            return refused(r, 404, Outcome::Error, "no_route");
        }
        let mut pick = self.rng.unit();
        let (api, service, _) = self
            .apis
            .iter()
            .find(|(_, _, share)| {
                pick -= share;
                pick < 0.0
            })
            .unwrap_or(&self.apis[0])
            .clone();
        r.path = format!("/{api}/{}", self.rng.next() % 10_000);
        r.api = Some(api);
        r.service = Some(service);
        // 30% anonymous; the others log-uniform over 500 consumers, so a
        // few are very active and most are not.
        if self.rng.unit() >= 0.3 {
            let n = (self.consumers.len() as f64).powf(self.rng.unit()) as usize - 1;
            r.consumer = Some(self.consumers[n.min(self.consumers.len() - 1)].clone());
        }
        let roll = self.rng.unit();
        let refusal = [
            (0.010, 401, Outcome::Denied, "unauthorized"),
            (0.003, 403, Outcome::Denied, "forbidden"),
            (0.015, 429, Outcome::Denied, "rate_limited"),
            (0.002, 502, Outcome::Error, "upstream_unavailable"),
            (0.001, 504, Outcome::Error, "upstream_timeout"),
        ];
        let mut threshold = 0.0;
        for (share, status, outcome, reason) in refusal {
            threshold += share;
            if roll < threshold {
                return refused(r, status, outcome, reason);
            }
        }
        let status = match self.rng.next() % 1000 {
            0..=2 => 500,
            3..=12 => 404,
            13..=52 => 201,
            53..=62 => 304,
            _ => 200,
        };
        r.status = status;
        r.upstream_status = Some(status);
        r.upstream_addr = Some(self.upstream.clone());
        r.upstream_latency_ms = Some(r.latency_ms * 0.9);
        r
    }
}

fn refused(
    mut r: AccessRecord,
    status: u16,
    outcome: Outcome,
    reason: &'static str,
) -> AccessRecord {
    r.status = status;
    r.outcome = outcome;
    r.reason = Some(reason);
    r.latency_ms = 0.05;
    r.bytes_out = 120;
    r
}

/// This thread's CPU time so far (Linux), or zero.
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|stat| stat.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

fn fill(store: &SqliteStore, rows: usize) {
    let mut sink = store.access_record_sink().expect("sink");
    let mut traffic = Traffic::new(rows);
    let (mut wall, mut cpu) = (Duration::ZERO, Duration::ZERO);
    let mut left = rows;
    while left > 0 {
        let batch: Vec<AccessRecord> = (0..left.min(1000)).map(|_| traffic.next()).collect();
        let cpu_before = thread_cpu();
        let started = Instant::now();
        sink.write_batch(&batch).expect("write_batch");
        wall += started.elapsed();
        cpu += thread_cpu().saturating_sub(cpu_before);
        left -= batch.len();
    }
    let per = |d: Duration| d.as_nanos() as f64 / rows.max(1) as f64;
    println!(
        "wrote {rows} records in batches of 1000: {:.0} ns/record wall, {:.0} ns/record CPU",
        per(wall),
        per(cpu)
    );
}

fn main() {
    let args = parse_args();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = args
        .db
        .clone()
        .unwrap_or_else(|| dir.path().join("query.db").display().to_string());
    let opened = Instant::now();
    let store = SqliteStore::open(&format!("sqlite://{path}")).expect("open");
    let opened = opened.elapsed();
    let existing = store.count_access_records().expect("count");
    if existing == 0 {
        fill(&store, args.rows);
    } else {
        println!("reusing {path}: {existing} records, opened (and migrated) in {opened:.1?}");
    }
    let end = (START_SECS + 86_400) as i64 * 1_000_000;
    let hour = 3_600_000_000;
    // A request of the middle of the day, to look up by id.
    let midday = store
        .query_access_records(&AccessQuery {
            to: Some(end - 12 * hour),
            limit: 1,
            ..AccessQuery::default()
        })
        .expect("query");
    let request_id = midday.items.first().map(|r| r.request_id.clone());

    let text = |s: &str| Some(s.to_owned());
    let q = AccessQuery::default;
    let cases: Vec<(&str, AccessQuery)> = vec![
        ("no filter", q()),
        (
            "from: the last hour",
            AccessQuery {
                from: Some(end - hour),
                ..q()
            },
        ),
        (
            "from..to: an hour, 20 hours ago",
            AccessQuery {
                from: Some(end - 20 * hour),
                to: Some(end - 19 * hour),
                ..q()
            },
        ),
        (
            "from..to: 5 minutes, 12 hours ago",
            AccessQuery {
                from: Some(end - 12 * hour),
                to: Some(end - 12 * hour + hour / 12),
                ..q()
            },
        ),
        (
            "api (40% of records)",
            AccessQuery {
                api: text("orders"),
                ..q()
            },
        ),
        (
            "api (0.1%)",
            AccessQuery {
                api: text("legacy-export"),
                ..q()
            },
        ),
        (
            "api (40%), an hour 20 hours ago",
            AccessQuery {
                api: text("orders"),
                from: Some(end - 20 * hour),
                to: Some(end - 19 * hour),
                ..q()
            },
        ),
        (
            "service (10%)",
            AccessQuery {
                service: text("catalog-svc"),
                ..q()
            },
        ),
        (
            "service (none)",
            AccessQuery {
                service: text("nope"),
                ..q()
            },
        ),
        (
            "consumer (7.6%)",
            AccessQuery {
                consumer: text("consumer-000"),
                ..q()
            },
        ),
        (
            "consumer (0.02%)",
            AccessQuery {
                consumer: text("consumer-496"),
                ..q()
            },
        ),
        (
            "consumer (none)",
            AccessQuery {
                consumer: text("nobody"),
                ..q()
            },
        ),
        (
            "consumer (0.02%), an hour 20 hours ago",
            AccessQuery {
                consumer: text("consumer-496"),
                from: Some(end - 20 * hour),
                to: Some(end - 19 * hour),
                ..q()
            },
        ),
        (
            "status 200 (89%)",
            AccessQuery {
                status: Some(200),
                ..q()
            },
        ),
        (
            "status 304 (1%)",
            AccessQuery {
                status: Some(304),
                ..q()
            },
        ),
        (
            "status 500 (0.3%)",
            AccessQuery {
                status: Some(500),
                ..q()
            },
        ),
        (
            "status 504 (0.1%)",
            AccessQuery {
                status: Some(504),
                ..q()
            },
        ),
        (
            "outcome denied (2.7%)",
            AccessQuery {
                outcome: text("denied"),
                ..q()
            },
        ),
        (
            "reason (0.1%)",
            AccessQuery {
                reason: text("upstream_timeout"),
                ..q()
            },
        ),
        (
            "request_id",
            AccessQuery {
                request_id: request_id.clone(),
                ..q()
            },
        ),
        (
            "request_id, within a minute",
            AccessQuery {
                request_id,
                from: Some(end - 12 * hour - 60_000_000),
                to: Some(end - 12 * hour + 60_000_000),
                ..q()
            },
        ),
        (
            "api + consumer + status 429",
            AccessQuery {
                api: text("payments"),
                consumer: text("consumer-003"),
                status: Some(429),
                ..q()
            },
        ),
    ];
    println!(
        "{:<40} {:>7} {:>10} {:>14}",
        "query (100 a page)", "records", "1st page", "pages: mean/max"
    );
    for (name, query) in cases {
        time(&store, name, &query);
    }

    let day = |bucket| AnalyticsQuery::new(end - 24 * hour, end, bucket);
    let analytics: Vec<(&str, AnalyticsQuery)> = vec![
        ("the day, by hour", day(BucketWidth::Hour)),
        ("the day, by minute", day(BucketWidth::Minute)),
        ("the day, in one bucket", day(BucketWidth::Day)),
        (
            "the last hour, by minute",
            AnalyticsQuery::new(end - hour, end, BucketWidth::Minute),
        ),
        (
            "an hour 20 hours ago, by minute",
            AnalyticsQuery::new(end - 20 * hour, end - 19 * hour, BucketWidth::Minute),
        ),
        (
            "6 hours, by hour",
            AnalyticsQuery::new(end - 12 * hour, end - 6 * hour, BucketWidth::Hour),
        ),
        (
            "the day, api (40%)",
            AnalyticsQuery {
                api: text("orders"),
                ..day(BucketWidth::Hour)
            },
        ),
        (
            "the day, api (0.1%)",
            AnalyticsQuery {
                api: text("legacy-export"),
                ..day(BucketWidth::Hour)
            },
        ),
        (
            "an hour, api (40%)",
            AnalyticsQuery {
                api: text("orders"),
                ..AnalyticsQuery::new(end - 20 * hour, end - 19 * hour, BucketWidth::Minute)
            },
        ),
        (
            "the day, service (10%)",
            AnalyticsQuery {
                service: text("catalog-svc"),
                ..day(BucketWidth::Hour)
            },
        ),
        (
            "the day, consumer (7.6%)",
            AnalyticsQuery {
                consumer: text("consumer-000"),
                ..day(BucketWidth::Hour)
            },
        ),
    ];
    println!(
        "\n{:<40} {:>7} {:>8} {:>10}",
        "analytics", "records", "buckets", "median"
    );
    for (name, query) in analytics {
        time_analytics(&store, name, &query);
    }
}

/// Prints the median time of an analytics query, of 5.
fn time_analytics(store: &SqliteStore, name: &str, query: &AnalyticsQuery) {
    let mut answer = None;
    let mut times: Vec<Duration> = (0..5)
        .map(|_| {
            let started = Instant::now();
            answer = Some(store.analytics(query).expect("analytics"));
            started.elapsed()
        })
        .collect();
    times.sort();
    let answer = answer.expect("ran");
    println!(
        "{name:<40} {:>7} {:>8} {:>8.1}ms",
        answer.totals.requests,
        answer.buckets.len(),
        times[2].as_secs_f64() * 1000.0
    );
}

/// Prints the median time of the query's first page, then follows its pages
/// (up to 200 of them), timing each.
fn time(store: &SqliteStore, name: &str, query: &AccessQuery) {
    let mut firsts: Vec<Duration> = (0..5)
        .map(|_| {
            let started = Instant::now();
            store.query_access_records(query).expect("query");
            started.elapsed()
        })
        .collect();
    firsts.sort();

    let (mut pages, mut records, mut total, mut max) = (0, 0, Duration::ZERO, Duration::ZERO);
    let mut query = query.clone();
    loop {
        let started = Instant::now();
        let page = store.query_access_records(&query).expect("query");
        let elapsed = started.elapsed();
        (pages, records, total, max) = (
            pages + 1,
            records + page.items.len(),
            total + elapsed,
            max.max(elapsed),
        );
        match page.next {
            Some(next) if pages < 200 => query.cursor = Some(next),
            Some(_) => break,
            None => break,
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let more = if pages == 200 { "+" } else { " " };
    println!(
        "{name:<40} {records:>6}{more} {:>8.2}ms {:>6.2}/{:.2}ms",
        ms(firsts[2]),
        ms(total / pages as u32),
        ms(max)
    );
}
