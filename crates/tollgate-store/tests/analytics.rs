//! `Store::analytics`, on both databases, through the public API, against a brute-force
//! computation over the same generated records. (Which plan reads the table
//! is tested in `analytics.rs`.)

mod common;

use common::Db;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, UNIX_EPOCH};

use tollgate_store::{
    AiTotals, Analytics, AnalyticsQuery, BucketWidth, Percentiles, Store, StoreError,
    LATENCY_RELATIVE_ERROR,
};
use tollgate_telemetry::record::unix_micros;
use tollgate_telemetry::{AccessRecord, AiUsage, Outcome, RecordSink};

/// 2024-05-01T12:00:00Z in Unix microseconds.
const T0: i64 = 1_714_564_800_000_000;
const HOUR: i64 = 3_600_000_000;

/// xorshift64*: deterministic test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `n` records over about three days, with quiet hours (so some buckets are
/// empty), some written long after they arrived, latencies from
/// microseconds to minutes (and a few odd ones), every outcome.
fn records(n: usize) -> Vec<AccessRecord> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let apis = [
        (Some("orders"), Some("orders-svc")),
        (Some("orders"), Some("orders-svc")),
        (Some("users"), Some("users-svc")),
        (Some("search"), Some("catalog-svc")),
        (Some("export"), Some("catalog-svc")),
        (None, None),
    ];
    let consumers = [
        None,
        Some("acme"),
        Some("acme"),
        Some("globex"),
        Some("initech"),
        Some("umbrella"),
    ];
    let mut now = T0 + 17 * 60_000_000;
    let mut out = Vec::with_capacity(n);
    // Apart, so the other fields are those they always were.
    let mut ai_rng = Rng(0x2545_f491_4f6c_dd1d);
    for i in 0..n {
        now += rng.below(110_000_000) as i64;
        // Nothing between 03:00 and 05:00.
        let hour_of_day = (now / HOUR) % 24;
        if (3..5).contains(&hour_of_day) {
            now += 2 * HOUR;
        }
        // Every 37th arrived up to two hours before it was written (outside
        // the quiet hours).
        let mut late = if i % 37 == 36 {
            rng.below(2 * HOUR as u64) as i64
        } else {
            0
        };
        if (3..5).contains(&((now - late) / HOUR % 24)) {
            late = 0;
        }
        let (api, service) = apis[rng.below(apis.len() as u64) as usize];
        let consumer = consumers[rng.below(consumers.len() as u64) as usize];
        let (status, outcome, reason) = match rng.below(20) {
            0 => (429, Outcome::Denied, Some("rate_limited")),
            1 => (401, Outcome::Denied, Some("missing_credentials")),
            2 => (403, Outcome::Denied, Some("forbidden")),
            3 => (403, Outcome::Denied, None),
            4 => (502, Outcome::Error, Some("upstream_unavailable")),
            5 => (404, Outcome::Error, Some("no_route")),
            6 => (500, Outcome::Allowed, None),
            7 => (503, Outcome::Allowed, None),
            8 => (404, Outcome::Allowed, None),
            _ => (200, Outcome::Allowed, None),
        };
        let latency_ms = match i % 101 {
            0 => 0.0,
            1 => -1.0,
            2 => 250_000.0,
            _ => 10f64.powf(rng.unit() * 6.0 - 2.0),
        };
        out.push(AccessRecord {
            ts: UNIX_EPOCH + Duration::from_micros((now - late) as u64),
            request_id: format!("req-{i:05}"),
            client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            method: "GET".into(),
            host: "api.example.com".to_owned(),
            path: format!("/{i}"),
            api: api.map(Into::into),
            service: service.map(Into::into),
            consumer: consumer.map(Into::into),
            status,
            upstream_status: None,
            upstream_addr: None,
            latency_ms,
            upstream_latency_ms: None,
            bytes_in: rng.below(5000),
            bytes_out: rng.below(50_000),
            outcome,
            reason,
            ai: ai_usage(&mut ai_rng),
        });
    }
    out
}

/// The models, with the provider of each, some calls reach; `None` for a
/// call that reached none.
const MODELS: [(Option<&str>, Option<&str>); 5] = [
    (Some("gpt-4o"), Some("openai")),
    (Some("gpt-4o"), Some("openai")),
    (Some("gpt-4o-mini"), Some("openai")),
    (Some("claude-sonnet"), Some("anthropic")),
    (None, None),
];

/// One record in three an AI call: costs in whole microdollars, one in
/// five of them unknown.
fn ai_usage(rng: &mut Rng) -> Option<Box<AiUsage>> {
    if rng.below(3) != 0 {
        return None;
    }
    let (model, provider) = MODELS[rng.below(MODELS.len() as u64) as usize];
    let tokens_in = rng.below(20_000);
    Some(Box::new(AiUsage {
        ai_provider: provider.map(str::to_owned),
        ai_model: model.map(str::to_owned),
        tokens_in,
        tokens_out: rng.below(4000),
        tokens_cached: rng.below(tokens_in + 1),
        tokens_estimated: rng.below(7) == 0,
        cost_usd: (rng.below(5) != 0).then(|| rng.below(90_000) as f64 / 1e6),
        ttft_ms: Some(rng.unit() * 900.0),
        ..AiUsage::default()
    }))
}

fn store_with(db: &Db, records: &[AccessRecord]) -> Store {
    let store = db.open();
    let mut sink = store.access_record_sink().unwrap();
    for batch in records.chunks(500) {
        sink.write_batch(batch).unwrap();
    }
    store
}

/// A bucket (or the totals), computed the slow way.
#[derive(Default)]
struct Expected {
    requests: u64,
    errors: u64,
    denied: u64,
    denials_by_reason: BTreeMap<String, u64>,
    bytes_in: u64,
    bytes_out: u64,
    latencies: Vec<f64>,
    ai: ExpectedAi,
}

/// AI calls' totals, computed the slow way: costs in whole microdollars.
#[derive(Clone, Debug, Default, PartialEq)]
struct ExpectedAi {
    calls: u64,
    tokens_in: u64,
    tokens_out: u64,
    tokens_cached: u64,
    microdollars: u64,
    unpriced_calls: u64,
}

impl ExpectedAi {
    fn add(&mut self, ai: &AiUsage) {
        self.calls += 1;
        self.tokens_in += ai.tokens_in;
        self.tokens_out += ai.tokens_out;
        self.tokens_cached += ai.tokens_cached;
        match ai.cost_usd {
            Some(cost) => self.microdollars += (cost * 1e6).round() as u64,
            None => self.unpriced_calls += 1,
        }
    }

    /// What the analytics should say: the exact sum of the costs, as the
    /// nearest `f64` to it.
    fn totals(&self) -> AiTotals {
        AiTotals {
            calls: self.calls,
            tokens_in: self.tokens_in,
            tokens_out: self.tokens_out,
            tokens_cached: self.tokens_cached,
            cost_usd: self.microdollars as f64 / 1e6,
            unpriced_calls: self.unpriced_calls,
        }
    }
}

/// Names and their totals by spend, calls, then name (`None` last).
fn ai_ranking(by: HashMap<Option<String>, ExpectedAi>) -> Vec<(Option<String>, AiTotals)> {
    let mut all: Vec<(Option<String>, ExpectedAi)> = by.into_iter().collect();
    all.sort_by(|(a_name, a), (b_name, b)| {
        b.microdollars
            .cmp(&a.microdollars)
            .then(b.calls.cmp(&a.calls))
            .then(a_name.is_none().cmp(&b_name.is_none()))
            .then(a_name.cmp(b_name))
    });
    all.into_iter()
        .map(|(name, ai)| (name, ai.totals()))
        .collect()
}

impl Expected {
    fn add(&mut self, r: &AccessRecord) {
        self.requests += 1;
        match r.outcome {
            Outcome::Error => self.errors += 1,
            Outcome::Allowed if r.status >= 500 => self.errors += 1,
            Outcome::Denied => {
                self.denied += 1;
                *self
                    .denials_by_reason
                    .entry(r.reason.unwrap_or("unspecified").to_owned())
                    .or_default() += 1;
            }
            Outcome::Allowed => {}
        }
        self.bytes_in += r.bytes_in;
        self.bytes_out += r.bytes_out;
        self.latencies.push(r.latency_ms.max(0.0));
        if let Some(ai) = &r.ai {
            self.ai.add(ai);
        }
    }

    /// Checks `got` against these records.
    fn check(mut self, got: &tollgate_store::Aggregate, what: &str) {
        assert_eq!(got.requests, self.requests, "{what}: requests");
        assert_eq!(got.errors, self.errors, "{what}: errors");
        assert_eq!(got.denied, self.denied, "{what}: denied");
        assert_eq!(got.denials_by_reason, self.denials_by_reason, "{what}");
        assert_eq!(got.bytes_in, self.bytes_in, "{what}: bytes_in");
        assert_eq!(got.bytes_out, self.bytes_out, "{what}: bytes_out");
        self.latencies.sort_by(f64::total_cmp);
        let exact = |p: f64| {
            let n = self.latencies.len();
            let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
            self.latencies[rank - 1]
        };
        let Percentiles { p50, p95, p99 } = got.latency_ms;
        for (p, value) in [(0.50, p50), (0.95, p95), (0.99, p99)] {
            let value = value.unwrap_or_else(|| panic!("{what}: no p{p}"));
            let want = exact(p);
            assert!(
                (value - want).abs() <= want * LATENCY_RELATIVE_ERROR,
                "{what}: p{p} is {value}, exactly {want}"
            );
        }
    }
}

fn matches(q: &AnalyticsQuery, r: &AccessRecord) -> bool {
    let (from, to) = q.range();
    let ts = unix_micros(r.ts);
    let eq = |want: &Option<String>, have: Option<&str>| {
        want.as_deref().is_none_or(|want| have == Some(want))
    };
    from <= ts
        && ts < to
        && eq(&q.api, r.api.as_deref())
        && eq(&q.service, r.service.as_deref())
        && eq(&q.consumer, r.consumer.as_deref())
}

/// The `top` names of `names` by count, most first, ties by name.
fn ranking<'a>(names: impl Iterator<Item = &'a str>, top: usize) -> Vec<(String, u64)> {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for name in names {
        *counts.entry(name).or_default() += 1;
    }
    let mut all: Vec<(String, u64)> = counts.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(top);
    all
}

fn check(records: &[AccessRecord], got: &Analytics, q: &AnalyticsQuery) {
    let what = format!("{q:?}");
    let (from, to) = q.range();
    assert_eq!((got.from, got.to), (from, to), "{what}");
    assert_eq!(got.bucket, q.bucket);
    let width = q.bucket.micros();
    let matching: Vec<&AccessRecord> = records.iter().filter(|r| matches(q, r)).collect();

    let mut totals = Expected::default();
    let mut buckets: BTreeMap<i64, Expected> = BTreeMap::new();
    for r in &matching {
        totals.add(r);
        let ts = unix_micros(r.ts);
        buckets
            .entry(ts.div_euclid(width) * width)
            .or_default()
            .add(r);
    }
    if matching.is_empty() {
        assert_eq!(got.totals.requests, 0, "{what}");
        assert_eq!(got.totals.latency_ms, Percentiles::default(), "{what}");
    } else {
        totals.check(&got.totals, &format!("{what}: totals"));
    }
    // Exactly the buckets with records, oldest first.
    let starts: Vec<i64> = got.buckets.iter().map(|b| b.start).collect();
    let want: Vec<i64> = buckets.keys().copied().collect();
    assert_eq!(starts, want, "{what}");
    for (bucket, (start, expected)) in got.buckets.iter().zip(buckets) {
        expected.check(&bucket.aggregate, &format!("{what}: bucket {start}"));
    }

    let consumers = ranking(matching.iter().filter_map(|r| r.consumer.as_deref()), q.top);
    let got_consumers: Vec<(String, u64)> = got
        .top_consumers
        .iter()
        .map(|c| (c.consumer.clone(), c.requests))
        .collect();
    assert_eq!(got_consumers, consumers, "{what}");
    let apis = ranking(matching.iter().filter_map(|r| r.api.as_deref()), q.top);
    let got_apis: Vec<(String, u64)> = got
        .top_apis
        .iter()
        .map(|a| (a.api.clone(), a.requests))
        .collect();
    assert_eq!(got_apis, apis, "{what}");

    check_ai(&matching, got, q, &what);
}

/// The AI totals, their breakdowns and series: exact sums.
fn check_ai(matching: &[&AccessRecord], got: &Analytics, q: &AnalyticsQuery, what: &str) {
    let width = q.bucket.micros();
    let mut totals = ExpectedAi::default();
    let mut by_model: HashMap<Option<String>, ExpectedAi> = HashMap::new();
    let mut by_provider: HashMap<Option<String>, ExpectedAi> = HashMap::new();
    let mut by_consumer: HashMap<Option<String>, ExpectedAi> = HashMap::new();
    let mut buckets: BTreeMap<i64, ExpectedAi> = BTreeMap::new();
    for r in matching {
        let Some(ai) = &r.ai else { continue };
        totals.add(ai);
        by_model.entry(ai.ai_model.clone()).or_default().add(ai);
        by_provider
            .entry(ai.ai_provider.clone())
            .or_default()
            .add(ai);
        if let Some(consumer) = &r.consumer {
            by_consumer
                .entry(Some(consumer.to_string()))
                .or_default()
                .add(ai);
        }
        let ts = unix_micros(r.ts);
        buckets
            .entry(ts.div_euclid(width) * width)
            .or_default()
            .add(ai);
    }
    let Some(ai) = &got.ai else {
        assert_eq!(totals.calls, 0, "{what}: no AI totals");
        return;
    };
    assert!(totals.calls > 0, "{what}: AI totals without AI calls");
    assert_eq!(ai.totals, totals.totals(), "{what}: AI totals");
    let models: Vec<(Option<String>, AiTotals)> = ai
        .by_model
        .iter()
        .map(|m| (m.model.clone(), m.totals.clone()))
        .collect();
    assert_eq!(models, ai_ranking(by_model), "{what}: by model");
    let providers: Vec<(Option<String>, AiTotals)> = ai
        .by_provider
        .iter()
        .map(|p| (p.provider.clone(), p.totals.clone()))
        .collect();
    assert_eq!(providers, ai_ranking(by_provider), "{what}: by provider");
    let consumers: Vec<(Option<String>, AiTotals)> = ai
        .by_consumer
        .iter()
        .map(|c| (Some(c.consumer.clone()), c.totals.clone()))
        .collect();
    let mut want = ai_ranking(by_consumer);
    want.truncate(q.top.min(AnalyticsQuery::MAX_TOP));
    assert_eq!(consumers, want, "{what}: by consumer");
    let series: Vec<(i64, AiTotals)> = ai
        .buckets
        .iter()
        .map(|b| (b.start, b.totals.clone()))
        .collect();
    let want: Vec<(i64, AiTotals)> = buckets
        .into_iter()
        .map(|(start, ai)| (start, ai.totals()))
        .collect();
    assert_eq!(series, want, "{what}: AI buckets");
}

fn aggregates_equal_a_brute_force_count(db: &Db) {
    let records = records(6000);
    let store = store_with(db, &records);
    let first = records.iter().map(|r| unix_micros(r.ts)).min().unwrap();
    let last = records.iter().map(|r| unix_micros(r.ts)).max().unwrap();
    let text = |s: &str| Some(s.to_owned());
    let mut queries = Vec::new();
    for bucket in [BucketWidth::Minute, BucketWidth::Hour, BucketWidth::Day] {
        // Everything, unaligned ends.
        queries.push(AnalyticsQuery::new(first - 7, last + 1, bucket));
    }
    let q = AnalyticsQuery::new;
    let mid = first + 30 * HOUR + 123_456;
    queries.extend([
        // An hour, a few hours, more than half of it.
        q(mid, mid + HOUR, BucketWidth::Minute),
        q(mid, mid + 5 * HOUR, BucketWidth::Hour),
        q(first + 2 * HOUR, last - 2 * HOUR, BucketWidth::Hour),
        // Before and after every record.
        q(first - 10 * HOUR, first - 2 * HOUR, BucketWidth::Hour),
        q(last + 2 * HOUR, last + 3 * HOUR, BucketWidth::Minute),
    ]);
    let filtered = [
        ("api", "orders"),
        ("api", "export"),
        ("api", "nope"),
        ("service", "catalog-svc"),
        ("consumer", "acme"),
        ("consumer", "nobody"),
    ];
    for (field, value) in filtered {
        for (from, to) in [(first, last + 1), (mid, mid + 3 * HOUR)] {
            let mut query = q(from, to, BucketWidth::Hour);
            match field {
                "api" => query.api = text(value),
                "service" => query.service = text(value),
                _ => query.consumer = text(value),
            }
            queries.push(query);
        }
    }
    queries.push(AnalyticsQuery {
        api: text("orders"),
        consumer: text("globex"),
        service: text("orders-svc"),
        ..q(first, last + 1, BucketWidth::Day)
    });
    for top in [0, 1, 2, 100, 1000] {
        queries.push(AnalyticsQuery {
            top,
            ..q(first, last + 1, BucketWidth::Day)
        });
    }
    for query in queries {
        let got = store.analytics(&query).unwrap();
        check(&records, &got, &query);
    }
}

fn quiet_hours_leave_no_bucket(db: &Db) {
    let records = records(3000);
    let store = store_with(db, &records);
    let first = records.iter().map(|r| unix_micros(r.ts)).min().unwrap();
    let got = store
        .analytics(&AnalyticsQuery::new(
            first,
            first + 48 * HOUR,
            BucketWidth::Hour,
        ))
        .unwrap();
    let hours: Vec<i64> = got.buckets.iter().map(|b| b.start / HOUR % 24).collect();
    assert!(!hours.contains(&3) && !hours.contains(&4), "{hours:?}");
    assert!(hours.contains(&2) && hours.contains(&5), "{hours:?}");
    assert!(got.buckets.iter().all(|b| b.aggregate.requests > 0));
}

fn an_empty_range_has_no_buckets_and_null_percentiles(db: &Db) {
    let store = db.open();
    let got = store
        .analytics(&AnalyticsQuery::new(T0, T0 + HOUR, BucketWidth::Minute))
        .unwrap();
    assert!(got.buckets.is_empty());
    assert!(got.top_consumers.is_empty() && got.top_apis.is_empty());
    assert_eq!(got.totals.requests, 0);
    let json = serde_json::to_value(&got).unwrap();
    assert_eq!(json["totals"]["latency_ms"]["p99"], serde_json::Value::Null);
    assert!(got.ai.is_none() && json.get("ai").is_none(), "{json}");
    assert_eq!(json["from"], "2024-05-01T12:00:00.000000Z");
    assert_eq!(json["to"], "2024-05-01T13:00:00.000000Z");
}

fn too_many_buckets_are_refused(db: &Db) {
    let store = db.open();
    let minute = BucketWidth::Minute.micros();
    let max = AnalyticsQuery::MAX_BUCKETS as i64;
    let at_most = AnalyticsQuery::new(T0, T0 + max * minute, BucketWidth::Minute);
    assert_eq!(at_most.bucket_count(), AnalyticsQuery::MAX_BUCKETS);
    store.analytics(&at_most).unwrap();
    // One more minute, if only a microsecond of it.
    let over = AnalyticsQuery::new(T0, T0 + max * minute + 1, BucketWidth::Minute);
    assert!(matches!(
        store.analytics(&over),
        Err(StoreError::TooManyBuckets { buckets, max: _ }) if buckets == AnalyticsQuery::MAX_BUCKETS + 1
    ));
    let forever = AnalyticsQuery::new(i64::MIN, i64::MAX, BucketWidth::Day);
    assert!(matches!(
        store.analytics(&forever),
        Err(StoreError::TooManyBuckets { .. })
    ));
}

/// The JSON the admin API sends: times in RFC 3339, a bucket's aggregates
/// beside its start.
fn serializes_as_the_admin_api_documents(db: &Db) {
    let records = records(200);
    let store = store_with(db, &records);
    let got = store
        .analytics(&AnalyticsQuery::new(
            T0 + 1,
            T0 + 6 * HOUR,
            BucketWidth::Hour,
        ))
        .unwrap();
    let json = serde_json::to_value(&got).unwrap();
    assert_eq!(json["bucket"], "hour");
    assert_eq!(json["from"], "2024-05-01T12:00:00.000000Z");
    assert_eq!(json["to"], "2024-05-01T18:00:00.000000Z");
    let bucket = &json["buckets"][0];
    assert_eq!(bucket["start"], "2024-05-01T12:00:00.000000Z");
    for field in ["requests", "errors", "denied", "bytes_in", "bytes_out"] {
        assert!(bucket[field].is_u64(), "{field}: {bucket}");
        assert!(json["totals"][field].is_u64(), "{field}");
    }
    assert!(bucket["denials_by_reason"].is_object());
    assert!(bucket["latency_ms"]["p95"].is_f64(), "{bucket}");
    assert!(json["top_consumers"][0]["consumer"].is_string());
    assert!(json["top_consumers"][0]["requests"].is_u64());
    assert!(json["top_apis"][0]["api"].is_string());

    let ai = &json["ai"];
    let counts = [
        "calls",
        "tokens_in",
        "tokens_out",
        "tokens_cached",
        "unpriced_calls",
    ];
    for (list, name) in [
        ("by_model", "model"),
        ("by_provider", "provider"),
        ("by_consumer", "consumer"),
        ("buckets", "start"),
    ] {
        let first = &ai[list][0];
        assert!(first[name].is_string(), "{list}: {first}");
        for field in counts {
            assert!(first[field].is_u64(), "{list}.{field}: {first}");
        }
        assert!(first["cost_usd"].is_f64(), "{list}: {first}");
    }
    for field in counts {
        assert!(ai[field].is_u64(), "{field}: {ai}");
    }
    assert!(ai["cost_usd"].is_f64(), "{ai}");
    assert_eq!(ai["buckets"][0]["start"], "2024-05-01T12:00:00.000000Z");
}

/// Costs whose `f64` sum is not exact (0.1 + 0.2) are summed exactly;
/// unknown ones are counted, not summed; every breakdown adds up.
fn ai_spend_is_summed_exactly(db: &Db) {
    let call = |n: usize, consumer: Option<&str>, model: &str, provider: &str, cost| {
        let mut r = records(n + 1).pop().unwrap();
        r.ts = UNIX_EPOCH + Duration::from_micros((T0 + n as i64 * 60_000_000) as u64);
        r.consumer = consumer.map(Into::into);
        r.ai = Some(Box::new(AiUsage {
            ai_provider: Some(provider.to_owned()),
            ai_model: Some(model.to_owned()),
            tokens_in: 100 * (n as u64 + 1),
            tokens_out: 10,
            tokens_cached: n as u64,
            cost_usd: cost,
            ..AiUsage::default()
        }));
        r
    };
    let mut plain = records(1).pop().unwrap();
    plain.ts = UNIX_EPOCH + Duration::from_micros(T0 as u64);
    plain.ai = None;
    let calls = [
        call(0, Some("acme"), "gpt-4o", "openai", Some(0.1)),
        call(1, Some("acme"), "gpt-4o", "openai", Some(0.2)),
        call(2, Some("globex"), "claude", "anthropic", None),
        call(3, None, "claude", "openai", Some(0.05)),
        call(70, Some("globex"), "gpt-4o", "azure", Some(0.0)),
        plain,
    ];
    let store = store_with(db, &calls);
    let got = store
        .analytics(&AnalyticsQuery::new(T0, T0 + 2 * HOUR, BucketWidth::Hour))
        .unwrap();
    assert_eq!(got.totals.requests, 6);
    let ai = got.ai.expect("AI totals");
    let totals = |calls, tokens_in, tokens_cached, cost_usd, unpriced_calls| AiTotals {
        calls,
        tokens_in,
        tokens_out: 10 * calls,
        tokens_cached,
        cost_usd,
        unpriced_calls,
    };
    assert_eq!(ai.totals, totals(5, 8100, 76, 0.35, 1));
    let models: Vec<_> = ai
        .by_model
        .iter()
        .map(|m| (m.model.as_deref().unwrap(), m.totals.clone()))
        .collect();
    assert_eq!(
        models,
        [
            ("gpt-4o", totals(3, 7400, 71, 0.3, 0)),
            ("claude", totals(2, 700, 5, 0.05, 1)),
        ]
    );
    let providers: Vec<_> = ai
        .by_provider
        .iter()
        .map(|p| (p.provider.as_deref().unwrap(), p.totals.clone()))
        .collect();
    assert_eq!(
        providers,
        [
            ("openai", totals(3, 700, 4, 0.35, 0)),
            // No spend, one call each: by name.
            ("anthropic", totals(1, 300, 2, 0.0, 1)),
            ("azure", totals(1, 7100, 70, 0.0, 0)),
        ]
    );
    let consumers: Vec<_> = ai
        .by_consumer
        .iter()
        .map(|c| (c.consumer.as_str(), c.totals.clone()))
        .collect();
    assert_eq!(
        consumers,
        [
            ("acme", totals(2, 300, 1, 0.3, 0)),
            ("globex", totals(2, 7400, 72, 0.0, 1)),
        ]
    );
    let series: Vec<_> = ai
        .buckets
        .iter()
        .map(|b| (b.start, b.totals.clone()))
        .collect();
    assert_eq!(
        series,
        [
            (T0, totals(4, 1000, 6, 0.35, 1)),
            (T0 + HOUR, totals(1, 7100, 70, 0.0, 0)),
        ]
    );
}

/// Records, but no AI call among them: no `ai`.
fn a_range_without_ai_calls_has_no_ai_totals(db: &Db) {
    let plain: Vec<AccessRecord> = records(200)
        .into_iter()
        .map(|r| AccessRecord { ai: None, ..r })
        .collect();
    let store = store_with(db, &plain);
    let got = store
        .analytics(&AnalyticsQuery::new(T0, T0 + 6 * HOUR, BucketWidth::Hour))
        .unwrap();
    assert!(got.totals.requests > 0);
    assert!(got.ai.is_none());
    assert!(serde_json::to_value(&got).unwrap().get("ai").is_none());
}

both!(
    aggregates_equal_a_brute_force_count,
    quiet_hours_leave_no_bucket,
    an_empty_range_has_no_buckets_and_null_percentiles,
    too_many_buckets_are_refused,
    serializes_as_the_admin_api_documents,
    ai_spend_is_summed_exactly,
    a_range_without_ai_calls_has_no_ai_totals,
);
