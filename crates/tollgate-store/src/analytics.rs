//! Access record aggregates in time buckets for the admin API
//! (`GET /admin/v1/analytics`): requests, errors, denials by reason, latency
//! percentiles and bytes per minute, hour or day, and the busiest consumers
//! and APIs; and for the AI calls among them, tokens and spend by model,
//! provider, consumer and bucket ([`AiAnalytics`]).
//!
//! # One pass, no new index
//!
//! The records of the range are read once, as rows stream out of SQLite, into
//! per-bucket counters and latency histograms; nothing is sorted and no row
//! is kept. Memory is bounded by the buckets (at most
//! [`AnalyticsQuery::MAX_BUCKETS`]) times the latency bins each one uses
//! (a few hundred at most in practice, never more than its records), plus one
//! counter per distinct consumer and API.
//!
//! Aggregates need every record of the range, so an index helps only to skip
//! the records outside it; the existing ones suffice, and a covering index of
//! the aggregated columns would cost every insert on the access log thread
//! (see the schema in `migrations.rs`) to save little: SQLite spends most
//! of the time decoding the aggregated columns, whichever b-tree holds them
//! (measured in the sqlite3 shell: such an index cut a million records'
//! aggregate by a fifth and grew the database by 30%). A million records
//! aggregate in about 0.3 s (see the `query_bench` example), plus a fifth
//! for the AI columns ([`COLUMNS`]): NULL in records without AI usage, they
//! are read all the same (SQLite evaluates every column selected), and a
//! pass over the AI records alone would need an index that every insert
//! pays for (see migration 6). The range's records are read through the
//! spans (see [`crate::query`]): only the spans whose time range overlaps
//! the query's, and with an API asked for, only those whose list holds it;
//! each by a range of the primary key.
//!
//! # Latency percentiles
//!
//! Each bucket counts latencies in bins of a log-linear histogram: the bins
//! split every power of two into [`LATENCY_SUB_BINS`] equal parts, so a bin's
//! width is at most 1/64 of its lower bound. A percentile is the nearest-rank
//! one (the ⌈p·n⌉-th smallest latency), located exactly to its bin and
//! reported as the bin's midpoint, clamped to the smallest and largest
//! latency seen: within [`LATENCY_RELATIVE_ERROR`] (1/128, under 0.8%) of
//! the exact value. Latencies of zero or less (or not a number) count as 0.
//!
//! # AI spend
//!
//! Costs are summed as whole picodollars (10⁻¹² USD, each call's cost
//! rounded to one), so a sum is the same whatever order the records are
//! read in, by either database and any plan. A cost that is unknown (the
//! model has no price), negative or not a finite number is not summed: the
//! call counts as unpriced.

use std::collections::{BTreeMap, HashMap};

use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;
use serde::{Serialize, Serializer};
use tollgate_telemetry::record::Rfc3339;

use crate::query::{as_params, span_terms, SPANNED_RECORDS};
use crate::{SqliteStore, StoreError};

/// The width of a time bucket. Buckets are aligned to the Unix epoch, so to
/// UTC minutes, hours and days.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BucketWidth {
    Minute,
    Hour,
    Day,
}

impl BucketWidth {
    /// Parses `minute`, `hour` or `day`.
    pub fn parse(text: &str) -> Option<BucketWidth> {
        match text {
            "minute" => Some(BucketWidth::Minute),
            "hour" => Some(BucketWidth::Hour),
            "day" => Some(BucketWidth::Day),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BucketWidth::Minute => "minute",
            BucketWidth::Hour => "hour",
            BucketWidth::Day => "day",
        }
    }

    /// The width in microseconds.
    pub fn micros(self) -> i64 {
        match self {
            BucketWidth::Minute => 60_000_000,
            BucketWidth::Hour => 3_600_000_000,
            BucketWidth::Day => 86_400_000_000,
        }
    }
}

/// Which access records to aggregate, and how.
#[derive(Clone, Debug)]
pub struct AnalyticsQuery {
    /// The range's start, in Unix microseconds; rounded down to a bucket's
    /// start (see [`AnalyticsQuery::range`]).
    pub from: i64,
    /// The range's end (exclusive), in Unix microseconds; rounded up to a
    /// bucket's end.
    pub to: i64,
    pub bucket: BucketWidth,
    pub api: Option<String>,
    pub service: Option<String>,
    pub consumer: Option<String>,
    /// How many consumers and APIs to rank; more than
    /// [`AnalyticsQuery::MAX_TOP`] means that many.
    pub top: usize,
}

impl AnalyticsQuery {
    /// The most buckets a query may span.
    pub const MAX_BUCKETS: u64 = 10_000;
    /// The longest ranking of consumers and APIs.
    pub const MAX_TOP: usize = 100;

    /// A query of every record from `from` to `to` in `bucket`s, ranking the
    /// top 10 consumers and APIs.
    pub fn new(from: i64, to: i64, bucket: BucketWidth) -> AnalyticsQuery {
        AnalyticsQuery {
            from,
            to,
            bucket,
            api: None,
            service: None,
            consumer: None,
            top: 10,
        }
    }

    /// The range actually aggregated: `from` rounded down and `to` rounded
    /// up to whole buckets, in Unix microseconds; empty (`from == to`) when
    /// `to` is not after `from`.
    pub fn range(&self) -> (i64, i64) {
        let width = i128::from(self.bucket.micros());
        let from = i128::from(self.from).div_euclid(width) * width;
        let to = (i128::from(self.to) + width - 1).div_euclid(width) * width;
        // Within i64 but for the buckets at its ends, cut short.
        let clamp = |t: i128| t.clamp(i64::MIN.into(), i64::MAX.into()) as i64;
        let (from, to) = (clamp(from), clamp(to));
        (from, to.max(from))
    }

    /// How many buckets [`AnalyticsQuery::range`] spans.
    pub fn bucket_count(&self) -> u64 {
        let (from, to) = self.range();
        let span = i128::from(to) - i128::from(from);
        u64::try_from(
            (span + i128::from(self.bucket.micros()) - 1) / i128::from(self.bucket.micros()),
        )
        .unwrap_or(u64::MAX)
    }
}

/// Latency histogram bins per power of two (2^[`LATENCY_SUB_BIN_BITS`]).
pub const LATENCY_SUB_BINS: u32 = 1 << LATENCY_SUB_BIN_BITS;
const LATENCY_SUB_BIN_BITS: u32 = 6;
/// How far a reported latency percentile may be from the exact one,
/// relative to it: half a bin's width.
pub const LATENCY_RELATIVE_ERROR: f64 = 1.0 / (2 * LATENCY_SUB_BINS) as f64;

/// What [`SqliteStore::analytics`] answers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Analytics {
    /// The range aggregated ([`AnalyticsQuery::range`]); RFC 3339 in JSON.
    #[serde(serialize_with = "rfc3339")]
    pub from: i64,
    #[serde(serialize_with = "rfc3339")]
    pub to: i64,
    pub bucket: BucketWidth,
    pub totals: Aggregate,
    /// The buckets holding at least one record, oldest first; those with
    /// none are left out.
    pub buckets: Vec<Bucket>,
    /// The consumers with the most records, most first (ties by name);
    /// anonymous requests are not ranked.
    pub top_consumers: Vec<ConsumerCount>,
    /// The APIs with the most records, most first (ties by name); requests
    /// that matched no API are not ranked.
    pub top_apis: Vec<ApiCount>,
    /// The AI calls among the records; `None` (left out of the JSON) when
    /// there were none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ai: Option<AiAnalytics>,
}

/// What the AI calls of a range used and cost: totals, then broken down.
/// Each list is sorted by spend, most first, then by calls, most first,
/// then by name (an unknown model or provider, `null`, last).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AiAnalytics {
    #[serde(flatten)]
    pub totals: AiTotals,
    /// Every model that answered (or was tried last); `null` for calls
    /// that reached none.
    pub by_model: Vec<AiModelTotals>,
    /// Every provider, as `by_model`.
    pub by_provider: Vec<AiProviderTotals>,
    /// The [`AnalyticsQuery::top`] consumers with the most spend;
    /// anonymous calls are not ranked.
    pub by_consumer: Vec<AiConsumerTotals>,
    /// The buckets holding at least one AI call, oldest first: the spend
    /// over time.
    pub buckets: Vec<AiBucket>,
}

/// AI calls' usage and spend, over a range or a part of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AiTotals {
    /// Records of AI calls.
    pub calls: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Prompt tokens read from the provider's cache (part of `tokens_in`).
    pub tokens_cached: u64,
    /// The sum of the known costs, in US dollars (see the module's
    /// documentation): 0 when no call had a price.
    pub cost_usd: f64,
    /// Calls whose cost is unknown: counted in `calls` and the tokens, not
    /// in `cost_usd`.
    pub unpriced_calls: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AiModelTotals {
    pub model: Option<String>,
    #[serde(flatten)]
    pub totals: AiTotals,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AiProviderTotals {
    pub provider: Option<String>,
    #[serde(flatten)]
    pub totals: AiTotals,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AiConsumerTotals {
    pub consumer: String,
    #[serde(flatten)]
    pub totals: AiTotals,
}

/// One time bucket's AI calls.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AiBucket {
    /// The bucket's start; RFC 3339 in JSON.
    #[serde(serialize_with = "rfc3339")]
    pub start: i64,
    #[serde(flatten)]
    pub totals: AiTotals,
}

/// The aggregates of a bucket, or of the whole range.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Aggregate {
    /// Every record.
    pub requests: u64,
    /// Records the gateway failed (outcome `error`: no route, a bad request,
    /// an upstream failure) and proxied ones the upstream answered with a
    /// status of 500 or more.
    pub errors: u64,
    /// Records refused by a policy (outcome `denied`).
    pub denied: u64,
    /// Denied records by their reason (the error code); `unspecified` for a
    /// denial without one.
    pub denials_by_reason: BTreeMap<String, u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency_ms: Percentiles,
}

/// One time bucket's aggregates.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bucket {
    /// The bucket's start; RFC 3339 in JSON.
    #[serde(serialize_with = "rfc3339")]
    pub start: i64,
    #[serde(flatten)]
    pub aggregate: Aggregate,
}

/// Latency percentiles in milliseconds, within [`LATENCY_RELATIVE_ERROR`];
/// `None` (JSON `null`) without records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConsumerCount {
    pub consumer: String,
    pub requests: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiCount {
    pub api: String,
    pub requests: u64,
}

fn rfc3339<S: Serializer>(micros: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(Rfc3339::from_unix_micros(*micros).as_str())
}

/// One consumer's calls to one API over a time range.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConsumerUsage {
    /// `None` for calls that identified no consumer.
    pub consumer: Option<String>,
    pub requests: u64,
    /// RFC 3339 UTC of the latest call.
    pub last_seen: String,
}

impl SqliteStore {
    /// Who called `api` in `[from, to)` (Unix microseconds), busiest first:
    /// for the owners of a deprecated API, whom to tell. Reads the spans
    /// of the range that list the API.
    pub fn api_usage_by_consumer(
        &self,
        api: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<ConsumerUsage>, StoreError> {
        let conn = self.lock();
        let (span_terms, mut params) = span_terms(Some(from), Some(to), Some(api));
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT consumer, count(*), max(ts) FROM {SPANNED_RECORDS}
             WHERE {} AND api = :api AND ts >= :from AND ts < :to
             GROUP BY consumer ORDER BY count(*) DESC, consumer",
            span_terms.join(" AND ")
        ))?;
        params.extend([
            (":api", Value::Text(api.to_owned())),
            (":from", Value::Integer(from)),
            (":to", Value::Integer(to)),
        ]);
        let rows = stmt.query_map(as_params(&params).as_slice(), |row| {
            let requests: i64 = row.get(1)?;
            Ok(ConsumerUsage {
                consumer: row.get(0)?,
                requests: requests.try_into().unwrap_or(0),
                last_seen: Rfc3339::from_unix_micros(row.get(2)?).to_string(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Aggregates the access records of `query` in time buckets.
    ///
    /// Reads over a connection of its own, so other admin API requests do
    /// not wait for it. Fails with [`StoreError::TooManyBuckets`] when the
    /// range spans more than [`AnalyticsQuery::MAX_BUCKETS`].
    pub fn analytics(&self, query: &AnalyticsQuery) -> Result<Analytics, StoreError> {
        let buckets = query.bucket_count();
        if buckets > AnalyticsQuery::MAX_BUCKETS {
            return Err(StoreError::TooManyBuckets {
                buckets,
                max: AnalyticsQuery::MAX_BUCKETS,
            });
        }
        let conn = self.location.connect()?;
        aggregate(&conn, query)
    }
}

/// The SQL of `query`, and its named parameters' values.
fn statement(query: &AnalyticsQuery) -> (String, Vec<(&'static str, Value)>) {
    let (from, to) = query.range();
    let mut terms = vec!["ts >= :from", "ts < :to"];
    let mut params = vec![(":from", Value::Integer(from)), (":to", Value::Integer(to))];
    let filters = [
        ("api = :api", ":api", &query.api),
        ("service = :service", ":service", &query.service),
        ("consumer = :consumer", ":consumer", &query.consumer),
    ];
    for (term, name, value) in filters {
        if let Some(value) = value {
            terms.push(term);
            params.push((name, Value::Text(value.clone())));
        }
    }
    let (span_terms, span_params) = span_terms(Some(from), Some(to), query.api.as_deref());
    params.extend(span_params);
    let sql = format!(
        "SELECT {COLUMNS} FROM {SPANNED_RECORDS} WHERE {} AND {}",
        span_terms.join(" AND "),
        terms.join(" AND ")
    );
    (sql, params)
}

/// The columns [`Accumulator::add`] reads, in its order; `tokens_in` is
/// set for every AI record, NULL for the others.
pub(crate) const COLUMNS: &str = "ts, latency_ms, status, outcome, reason, bytes_in, bytes_out, \
     api, consumer, tokens_in, tokens_out, tokens_cached, cost_usd, ai_model, ai_provider";

/// Runs `query`.
pub(crate) fn aggregate(
    conn: &Connection,
    query: &AnalyticsQuery,
) -> Result<Analytics, StoreError> {
    let (sql, params) = statement(query);
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(as_params(&params).as_slice())?;
    let mut acc = Accumulator::new(query);
    while let Some(row) = rows.next()? {
        acc.add(row)?;
    }
    Ok(acc.finish(query))
}

/// One access record's aggregated columns ([`COLUMNS`]), as either database
/// returns them.
pub(crate) struct AggregatedRecord<'a> {
    pub ts: i64,
    pub latency_ms: f64,
    pub status: i64,
    pub outcome: &'a [u8],
    pub reason: Option<&'a str>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub api: Option<&'a str>,
    pub consumer: Option<&'a str>,
    /// `None` for a record without AI usage.
    pub ai: Option<AggregatedAi<'a>>,
}

/// An AI record's aggregated columns.
pub(crate) struct AggregatedAi<'a> {
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub tokens_cached: u64,
    pub cost_usd: Option<f64>,
    pub model: Option<&'a str>,
    pub provider: Option<&'a str>,
}

/// Aggregates records as they are read: shared by both databases, so their
/// answers (percentiles included) are computed the same way.
pub(crate) struct Accumulator {
    from: i64,
    width: i64,
    /// One per bucket of the range, created by its first record.
    buckets: Vec<Option<Box<Counts>>>,
    /// Denial reasons, numbered in the order first seen.
    reasons: Vec<Box<str>>,
    reason_ids: HashMap<Box<str>, usize>,
    consumers: HashMap<Box<str>, u64>,
    apis: HashMap<Box<str>, u64>,
    ai_models: AiBreakdown,
    ai_providers: AiBreakdown,
    ai_consumers: AiBreakdown,
}

/// A bucket's counts.
#[derive(Default)]
struct Counts {
    requests: u64,
    errors: u64,
    denied: u64,
    /// By reason id.
    denials: Vec<u64>,
    bytes_in: u64,
    bytes_out: u64,
    latency: Histogram,
    ai: AiCounts,
}

/// AI calls' counts, cost in whole picodollars: see the module's
/// documentation.
#[derive(Clone, Copy, Default)]
struct AiCounts {
    calls: u64,
    tokens_in: u64,
    tokens_out: u64,
    tokens_cached: u64,
    picodollars: u128,
    unpriced_calls: u64,
}

impl AiCounts {
    fn add(&mut self, ai: &AggregatedAi<'_>, picodollars: Option<u128>) {
        self.calls += 1;
        self.tokens_in = self.tokens_in.saturating_add(ai.tokens_in);
        self.tokens_out = self.tokens_out.saturating_add(ai.tokens_out);
        self.tokens_cached = self.tokens_cached.saturating_add(ai.tokens_cached);
        match picodollars {
            Some(p) => self.picodollars = self.picodollars.saturating_add(p),
            None => self.unpriced_calls += 1,
        }
    }

    fn merge(&mut self, other: &AiCounts) {
        self.calls += other.calls;
        self.tokens_in = self.tokens_in.saturating_add(other.tokens_in);
        self.tokens_out = self.tokens_out.saturating_add(other.tokens_out);
        self.tokens_cached = self.tokens_cached.saturating_add(other.tokens_cached);
        self.picodollars = self.picodollars.saturating_add(other.picodollars);
        self.unpriced_calls += other.unpriced_calls;
    }

    fn totals(&self) -> AiTotals {
        AiTotals {
            calls: self.calls,
            tokens_in: self.tokens_in,
            tokens_out: self.tokens_out,
            tokens_cached: self.tokens_cached,
            cost_usd: self.picodollars as f64 / PICODOLLARS_PER_USD,
            unpriced_calls: self.unpriced_calls,
        }
    }
}

const PICODOLLARS_PER_USD: f64 = 1e12;

/// A known cost in whole picodollars, or `None` for an unknown, negative
/// or non-finite one.
fn picodollars(cost_usd: Option<f64>) -> Option<u128> {
    let cost = cost_usd.filter(|c| c.is_finite() && *c >= 0.0)?;
    // Saturates at u128::MAX: far beyond any spend.
    Some((cost * PICODOLLARS_PER_USD).round() as u128)
}

/// AI counts by a name (model, provider or consumer); `None` for records
/// without one.
#[derive(Default)]
struct AiBreakdown {
    named: HashMap<Box<str>, AiCounts>,
    unnamed: AiCounts,
}

impl AiBreakdown {
    fn get(&mut self, name: Option<&str>) -> &mut AiCounts {
        let Some(name) = name else {
            return &mut self.unnamed;
        };
        if !self.named.contains_key(name) {
            self.named.insert(name.into(), AiCounts::default());
        }
        self.named.get_mut(name).expect("inserted above")
    }

    /// Names and their totals by spend, calls and name (`None` last),
    /// without the unnamed when `with_unnamed` is false.
    fn ranked(self, with_unnamed: bool) -> Vec<(Option<String>, AiTotals)> {
        let mut all: Vec<(Option<Box<str>>, AiCounts)> = self
            .named
            .into_iter()
            .map(|(name, counts)| (Some(name), counts))
            .collect();
        if with_unnamed && self.unnamed.calls > 0 {
            all.push((None, self.unnamed));
        }
        all.sort_unstable_by(|(a_name, a), (b_name, b)| {
            b.picodollars
                .cmp(&a.picodollars)
                .then(b.calls.cmp(&a.calls))
                .then_with(|| a_name.is_none().cmp(&b_name.is_none()))
                .then_with(|| a_name.cmp(b_name))
        });
        all.into_iter()
            .map(|(name, counts)| (name.map(String::from), counts.totals()))
            .collect()
    }
}

impl Accumulator {
    pub(crate) fn new(query: &AnalyticsQuery) -> Accumulator {
        let (from, _) = query.range();
        let count = usize::try_from(query.bucket_count()).unwrap_or(usize::MAX);
        Accumulator {
            from,
            width: query.bucket.micros(),
            buckets: std::iter::repeat_with(|| None).take(count).collect(),
            reasons: Vec::new(),
            reason_ids: HashMap::new(),
            consumers: HashMap::new(),
            apis: HashMap::new(),
            ai_models: AiBreakdown::default(),
            ai_providers: AiBreakdown::default(),
            ai_consumers: AiBreakdown::default(),
        }
    }

    /// Counts one row of [`COLUMNS`].
    fn add(&mut self, row: &rusqlite::Row<'_>) -> rusqlite::Result<()> {
        // As bytes: no UTF-8 check for a value compared with ASCII.
        let outcome = row.get_ref(3)?.as_bytes()?;
        self.add_record(&AggregatedRecord {
            ts: row.get(0)?,
            latency_ms: real(row.get_ref(1)?),
            status: row.get_ref(2)?.as_i64().unwrap_or(0),
            outcome,
            // Only denials are counted by reason: the others' go unread.
            reason: if outcome == b"denied" {
                row.get_ref(4)?.as_str_or_null()?
            } else {
                None
            },
            bytes_in: count(row.get_ref(5)?),
            bytes_out: count(row.get_ref(6)?),
            api: row.get_ref(7)?.as_str_or_null()?,
            consumer: row.get_ref(8)?.as_str_or_null()?,
            // The other AI columns go unread for the other records.
            ai: match row.get_ref(9)? {
                ValueRef::Null => None,
                tokens_in => Some(AggregatedAi {
                    tokens_in: count(tokens_in),
                    tokens_out: count(row.get_ref(10)?),
                    tokens_cached: count(row.get_ref(11)?),
                    cost_usd: match row.get_ref(12)? {
                        ValueRef::Null => None,
                        cost => Some(real(cost)),
                    },
                    model: row.get_ref(13)?.as_str_or_null()?,
                    provider: row.get_ref(14)?.as_str_or_null()?,
                }),
            },
        });
        Ok(())
    }

    /// Counts one record, whichever database it was read from.
    pub(crate) fn add_record(&mut self, record: &AggregatedRecord<'_>) {
        let Some(slot) = usize::try_from(record.ts.saturating_sub(self.from) / self.width)
            .ok()
            .and_then(|index| self.buckets.get_mut(index))
        else {
            // The query's range holds the buckets': unreachable.
            return;
        };
        let counts = slot.get_or_insert_with(Box::default);
        counts.requests += 1;
        counts.latency.add(record.latency_ms);
        let status = record.status;
        match record.outcome {
            b"error" => counts.errors += 1,
            b"denied" => {
                counts.denied += 1;
                let reason = record.reason.unwrap_or("unspecified");
                let id = match self.reason_ids.get(reason) {
                    Some(id) => *id,
                    None => {
                        self.reasons.push(reason.into());
                        self.reason_ids
                            .insert(reason.into(), self.reasons.len() - 1);
                        self.reasons.len() - 1
                    }
                };
                if counts.denials.len() <= id {
                    counts.denials.resize(id + 1, 0);
                }
                counts.denials[id] += 1;
            }
            _ if status >= 500 => counts.errors += 1,
            _ => {}
        }
        counts.bytes_in = counts.bytes_in.saturating_add(record.bytes_in);
        counts.bytes_out = counts.bytes_out.saturating_add(record.bytes_out);
        if let Some(ai) = &record.ai {
            let cost = picodollars(ai.cost_usd);
            counts.ai.add(ai, cost);
            self.ai_models.get(ai.model).add(ai, cost);
            self.ai_providers.get(ai.provider).add(ai, cost);
            self.ai_consumers.get(record.consumer).add(ai, cost);
        }
        for (name, totals) in [
            (record.api, &mut self.apis),
            (record.consumer, &mut self.consumers),
        ] {
            if let Some(name) = name {
                match totals.get_mut(name) {
                    Some(n) => *n += 1,
                    None => {
                        totals.insert(name.into(), 1);
                    }
                }
            }
        }
    }

    pub(crate) fn finish(self, query: &AnalyticsQuery) -> Analytics {
        let (from, to) = query.range();
        let reasons = &self.reasons;
        let mut totals = Counts::default();
        let mut buckets = Vec::new();
        let mut ai_buckets = Vec::new();
        for (index, counts) in self.buckets.into_iter().enumerate() {
            let Some(counts) = counts else { continue };
            let start = from.saturating_add((index as i64).saturating_mul(self.width));
            if counts.ai.calls > 0 {
                totals.ai.merge(&counts.ai);
                ai_buckets.push(AiBucket {
                    start,
                    totals: counts.ai.totals(),
                });
            }
            totals.requests += counts.requests;
            totals.errors += counts.errors;
            totals.denied += counts.denied;
            if totals.denials.len() < counts.denials.len() {
                totals.denials.resize(counts.denials.len(), 0);
            }
            for (total, n) in totals.denials.iter_mut().zip(&counts.denials) {
                *total += n;
            }
            totals.bytes_in = totals.bytes_in.saturating_add(counts.bytes_in);
            totals.bytes_out = totals.bytes_out.saturating_add(counts.bytes_out);
            totals.latency.merge(&counts.latency);
            buckets.push(Bucket {
                start,
                aggregate: counts.aggregate(reasons),
            });
        }
        let top = query.top.min(AnalyticsQuery::MAX_TOP);
        let ai = (totals.ai.calls > 0).then(|| AiAnalytics {
            totals: totals.ai.totals(),
            by_model: self
                .ai_models
                .ranked(true)
                .into_iter()
                .map(|(model, totals)| AiModelTotals { model, totals })
                .collect(),
            by_provider: self
                .ai_providers
                .ranked(true)
                .into_iter()
                .map(|(provider, totals)| AiProviderTotals { provider, totals })
                .collect(),
            by_consumer: self
                .ai_consumers
                .ranked(false)
                .into_iter()
                .take(top)
                .filter_map(|(consumer, totals)| {
                    Some(AiConsumerTotals {
                        consumer: consumer?,
                        totals,
                    })
                })
                .collect(),
            buckets: ai_buckets,
        });
        Analytics {
            from,
            to,
            bucket: query.bucket,
            totals: totals.aggregate(reasons),
            buckets,
            top_consumers: ranked(self.consumers, top)
                .map(|(consumer, requests)| ConsumerCount { consumer, requests })
                .collect(),
            top_apis: ranked(self.apis, top)
                .map(|(api, requests)| ApiCount { api, requests })
                .collect(),
            ai,
        }
    }
}

impl Counts {
    fn aggregate(&self, reasons: &[Box<str>]) -> Aggregate {
        Aggregate {
            requests: self.requests,
            errors: self.errors,
            denied: self.denied,
            denials_by_reason: self
                .denials
                .iter()
                .zip(reasons)
                .filter(|(n, _)| **n > 0)
                .map(|(n, reason)| (reason.to_string(), *n))
                .collect(),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            latency_ms: self.latency.percentiles(),
        }
    }
}

/// The `top` names with the highest counts, highest first, ties by name.
fn ranked(counts: HashMap<Box<str>, u64>, top: usize) -> impl Iterator<Item = (String, u64)> {
    let mut all: Vec<(Box<str>, u64)> = counts.into_iter().collect();
    all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.into_iter()
        .take(top)
        .map(|(name, n)| (name.into_string(), n))
}

/// A REAL column as a latency: 0 for NULL or text.
fn real(value: ValueRef<'_>) -> f64 {
    match value {
        ValueRef::Real(x) => x,
        ValueRef::Integer(n) => n as f64,
        _ => 0.0,
    }
}

/// An INTEGER column as a byte count: 0 for NULL, text or a negative number.
fn count(value: ValueRef<'_>) -> u64 {
    match value {
        ValueRef::Integer(n) => u64::try_from(n).unwrap_or(0),
        _ => 0,
    }
}

/// Latencies in log-linear bins (see the module's documentation): a bin is
/// a positive `f64`'s exponent and its mantissa's top
/// [`LATENCY_SUB_BIN_BITS`] bits, so its number grows with the latencies it
/// holds; bin 0 holds latencies of zero or less.
#[derive(Default)]
struct Histogram {
    bins: HashMap<u32, u64>,
    n: u64,
    /// The smallest and largest latencies counted, to clamp percentiles to.
    min: f64,
    max: f64,
}

/// How far to shift an `f64`'s bits right for its bin number.
const BIN_SHIFT: u32 = 52 - LATENCY_SUB_BIN_BITS;

impl Histogram {
    fn add(&mut self, latency_ms: f64) {
        // Zero for zero, negatives and NaN; the largest finite for infinity.
        let ms = if latency_ms > 0.0 {
            latency_ms.min(f64::MAX)
        } else {
            0.0
        };
        *self.bins.entry(bin(ms)).or_default() += 1;
        if self.n == 0 {
            (self.min, self.max) = (ms, ms);
        } else {
            self.min = self.min.min(ms);
            self.max = self.max.max(ms);
        }
        self.n += 1;
    }

    fn merge(&mut self, other: &Histogram) {
        if other.n == 0 {
            return;
        }
        for (bin, n) in &other.bins {
            *self.bins.entry(*bin).or_default() += n;
        }
        if self.n == 0 {
            (self.min, self.max) = (other.min, other.max);
        } else {
            self.min = self.min.min(other.min);
            self.max = self.max.max(other.max);
        }
        self.n += other.n;
    }

    fn percentiles(&self) -> Percentiles {
        if self.n == 0 {
            return Percentiles::default();
        }
        let mut bins: Vec<(u32, u64)> = self.bins.iter().map(|(b, n)| (*b, *n)).collect();
        bins.sort_unstable();
        let at = |p: f64| -> Option<f64> {
            // Nearest rank: the ⌈p·n⌉-th smallest, 1-based.
            let rank = ((p * self.n as f64).ceil() as u64).clamp(1, self.n);
            let mut seen = 0;
            let (bin, _) = bins.iter().find(|(_, n)| {
                seen += n;
                seen >= rank
            })?;
            Some(midpoint(*bin).clamp(self.min, self.max))
        };
        Percentiles {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
        }
    }
}

/// The bin of a latency of zero or more.
fn bin(ms: f64) -> u32 {
    // Sign bit clear, 11 exponent bits, LATENCY_SUB_BIN_BITS mantissa bits.
    (ms.to_bits() >> BIN_SHIFT) as u32
}

/// The middle of a bin's latencies.
fn midpoint(bin: u32) -> f64 {
    if bin == 0 {
        return 0.0;
    }
    let low = f64::from_bits(u64::from(bin) << BIN_SHIFT);
    let high = f64::from_bits(u64::from(bin + 1) << BIN_SHIFT);
    low + (high - low) / 2.0
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, UNIX_EPOCH};

    use tollgate_telemetry::{AccessRecord, AiUsage, Outcome, RecordSink};

    use super::*;

    /// 2024-05-01T12:00:00Z in Unix microseconds.
    const T0: i64 = 1_714_564_800_000_000;
    const HOUR: i64 = 3_600_000_000;

    /// `n` records ten seconds apart; every 13th written an hour late.
    fn store_with(n: i64) -> SqliteStore {
        let records: Vec<AccessRecord> = (0..n)
            .map(|i| {
                let late = if i % 13 == 12 { HOUR } else { 0 };
                let (api, denied) = (["orders", "users", "search"][i as usize % 3], i % 7 == 0);
                AccessRecord {
                    ts: UNIX_EPOCH + Duration::from_micros((T0 + i * 10_000_000 - late) as u64),
                    request_id: format!("r{i}"),
                    client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    method: "GET".into(),
                    host: "h".to_owned(),
                    path: "/".to_owned(),
                    api: (i % 10 != 0).then(|| api.into()),
                    service: Some("svc".into()),
                    consumer: (i % 4 != 0).then(|| format!("c{}", i % 5).into()),
                    status: if denied { 429 } else { 200 },
                    upstream_status: None,
                    upstream_addr: None,
                    latency_ms: (i % 50) as f64 * 1.5,
                    upstream_latency_ms: None,
                    bytes_in: 1,
                    bytes_out: 2,
                    outcome: if denied {
                        Outcome::Denied
                    } else {
                        Outcome::Allowed
                    },
                    reason: denied.then_some("rate_limited"),
                    // Costs whose `f64` sums depend on their order.
                    ai: (i % 3 == 0).then(|| {
                        Box::new(AiUsage {
                            ai_model: Some(["m1", "m2"][i as usize % 2].to_owned()),
                            ai_provider: Some("p".to_owned()),
                            tokens_in: i as u64,
                            cost_usd: (i % 9 != 0).then(|| 0.1 * i as f64 / 7.0),
                            ..AiUsage::default()
                        })
                    }),
                }
            })
            .collect();
        let store = SqliteStore::open("sqlite::memory:").unwrap();
        let mut sink = store.access_record_sink().unwrap();
        for batch in records.chunks(50) {
            sink.write_batch(batch).unwrap();
        }
        store
    }

    /// The range's records, read by a scan of the whole table: what the
    /// spans must give.
    fn aggregate_by_scan(conn: &Connection, query: &AnalyticsQuery) -> Analytics {
        let (from, to) = query.range();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM access_records NOT INDEXED
                 WHERE ts >= ?1 AND ts < ?2 AND (?3 IS NULL OR api = ?3)
                   AND (?4 IS NULL OR service = ?4) AND (?5 IS NULL OR consumer = ?5)"
            ))
            .unwrap();
        let mut rows = stmt
            .query(rusqlite::params![
                from,
                to,
                query.api,
                query.service,
                query.consumer
            ])
            .unwrap();
        let mut acc = Accumulator::new(query);
        while let Some(row) = rows.next().unwrap() {
            acc.add(row).unwrap();
        }
        acc.finish(query)
    }

    /// The spans give every record of the range and no other, and skip
    /// those that hold none of it.
    #[test]
    fn spans_aggregate_exactly_the_records_of_the_range() {
        // 2000 records: about 5.5 hours, in two spans.
        let store = store_with(2000);
        let conn = store.lock();
        let q = AnalyticsQuery::new;
        let mut queries = vec![
            q(T0, T0 + 6 * HOUR, BucketWidth::Minute),
            q(T0 + HOUR, T0 + 2 * HOUR, BucketWidth::Hour),
            q(T0 - HOUR, T0 + HOUR / 2, BucketWidth::Minute),
            q(T0 + 4 * HOUR, T0 + 5 * HOUR, BucketWidth::Minute),
            q(T0 + 10 * HOUR, T0 + 11 * HOUR, BucketWidth::Hour),
        ];
        for i in 0..queries.len() {
            queries.push(AnalyticsQuery {
                api: Some("orders".into()),
                consumer: Some("c1".into()),
                ..queries[i].clone()
            });
            queries.push(AnalyticsQuery {
                api: Some("none-such".into()),
                ..queries[i].clone()
            });
        }
        for query in &queries {
            let got = aggregate(&conn, query).unwrap();
            assert_eq!(got, aggregate_by_scan(&conn, query), "{query:?}");
            assert_eq!(got.ai.is_some(), got.totals.requests > 0, "{query:?}");
        }
        assert!(aggregate(&conn, &queries[0]).unwrap().totals.requests > 1900);

        let read = |query: &AnalyticsQuery| {
            let (from, to) = query.range();
            crate::query::records_read(&conn, Some(from), Some(to), query.api.as_deref())
        };
        assert_eq!(read(&queries[0]), 2000);
        // An hour at either end reads one span of the two.
        assert!(read(&queries[2]) <= 1024, "{}", read(&queries[2]));
        assert!(read(&queries[3]) <= 1000, "{}", read(&queries[3]));
        // Past the records, and an API no span lists: none.
        assert_eq!(read(&queries[4]), 0);
        assert_eq!(read(&queries[6]), 0);
    }

    #[test]
    fn spans_are_the_outer_loop_and_records_read_by_id_range() {
        let store = store_with(10);
        let conn = store.lock();
        let query = AnalyticsQuery {
            api: Some("orders".into()),
            consumer: Some("c1".into()),
            ..AnalyticsQuery::new(T0, T0 + HOUR, BucketWidth::Hour)
        };
        let (sql, params) = statement(&query);
        assert_eq!(
            crate::query::query_plan(&conn, &sql, &params),
            [
                "SCAN access_record_spans",
                "SEARCH access_records USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)"
            ]
        );
    }

    #[test]
    fn ranges_round_out_to_whole_buckets() {
        let hour = BucketWidth::Hour.micros();
        let q = |from, to| AnalyticsQuery::new(from, to, BucketWidth::Hour);
        assert_eq!(q(hour + 1, 3 * hour - 1).range(), (hour, 3 * hour));
        assert_eq!(q(hour + 1, 3 * hour - 1).bucket_count(), 2);
        assert_eq!(q(hour, 2 * hour).range(), (hour, 2 * hour));
        assert_eq!(q(hour, 2 * hour).bucket_count(), 1);
        assert_eq!(q(-1, 1).range(), (-hour, hour));
        assert_eq!(q(5 * hour, hour).bucket_count(), 0);
        assert_eq!(q(hour, hour).bucket_count(), 0);
        let all = q(i64::MIN, i64::MAX);
        assert!(all.bucket_count() > AnalyticsQuery::MAX_BUCKETS);
        let (from, to) = all.range();
        assert!(from <= i64::MIN + hour && to == i64::MAX);
    }

    #[test]
    fn bins_grow_with_latencies_and_are_narrow() {
        let mut previous = 0;
        let mut ms = 1e-4;
        while ms < 1e8 {
            let b = bin(ms);
            assert!(b >= previous, "{ms}");
            previous = b;
            let low = f64::from_bits(u64::from(b) << BIN_SHIFT);
            let high = f64::from_bits(u64::from(b + 1) << BIN_SHIFT);
            assert!(low <= ms && ms < high, "{ms}: {low}..{high}");
            let error = (midpoint(b) - ms).abs() / ms;
            assert!(error <= LATENCY_RELATIVE_ERROR, "{ms}: {error}");
            ms *= 1.001;
        }
        assert_eq!(bin(0.0), 0);
        assert_eq!(midpoint(0), 0.0);
    }

    #[test]
    fn costs_are_whole_picodollars_and_odd_ones_unpriced() {
        assert_eq!(picodollars(Some(0.1)), Some(100_000_000_000));
        assert_eq!(picodollars(Some(0.000_000_000_000_4)), Some(0));
        assert_eq!(picodollars(Some(0.0)), Some(0));
        assert_eq!(picodollars(Some(-0.0)), Some(0));
        assert_eq!(picodollars(Some(1e300)), Some(u128::MAX));
        for unknown in [None, Some(-0.01), Some(f64::NAN), Some(f64::INFINITY)] {
            assert_eq!(picodollars(unknown), None, "{unknown:?}");
        }
        let mut sum = AiCounts::default();
        for cost in [0.1, 0.2] {
            let ai = AggregatedAi {
                tokens_in: 0,
                tokens_out: 0,
                tokens_cached: 0,
                cost_usd: Some(cost),
                model: None,
                provider: None,
            };
            sum.add(&ai, picodollars(ai.cost_usd));
        }
        assert_eq!(sum.totals().cost_usd, 0.3);
    }

    #[test]
    fn odd_latencies_are_counted_without_panicking() {
        let mut h = Histogram::default();
        for ms in [f64::NAN, -1.0, -0.0, f64::INFINITY, 0.0, 5e-324, 2.5] {
            h.add(ms);
        }
        let p = h.percentiles();
        assert_eq!(p.p50, Some(0.0));
        assert_eq!(p.p99, Some(f64::MAX));
        assert_eq!(Histogram::default().percentiles(), Percentiles::default());
    }
}
