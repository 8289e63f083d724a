//! Access records in PostgreSQL: the sink, look-ups, pages
//! ([`PgStore::query_access_records`], same filters and cursors as
//! SQLite's) and aggregates ([`PgStore::analytics`], computed by the same
//! Rust code as SQLite's, so the same percentiles).
//!
//! PostgreSQL plans the queries itself over the same indexes; no plan is
//! forced. Ids come from a sequence: with several nodes writing, a record
//! may commit after one with a higher id, so a page read while records are
//! being written may miss a record committed just then below its cursor
//! (SQLite, with one writer at a time, cannot).

use std::io;

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{Json, ToSql};
use postgres::Client;
use tollgate_telemetry::record::{unix_micros, IpText, Rfc3339};
use tollgate_telemetry::{AccessRecord, AiAttempt, AiUsage, RecordSink};

use super::{connect, off_runtime, stored_access_record, PgStore, STORED_COLUMNS};
use crate::analytics::{
    Accumulator, AggregatedAi, AggregatedRecord, COLUMNS as AGGREGATED_COLUMNS,
};
use crate::query::{decode_cursor, encode_cursor};
use crate::sink::request_id_hash;
use crate::{
    AccessPage, AccessQuery, Analytics, AnalyticsQuery, ConsumerUsage, StoreError,
    StoredAccessRecord,
};

/// Rows per INSERT statement: [`COLUMNS_PER_ROW`] parameters each, well
/// under PostgreSQL's 65535 parameters a statement.
const ROWS_PER_INSERT: usize = 256;

const INSERT_COLUMNS: &str = "ts, request_id, request_id_hash, client_ip, method, host, path, api,
    service, consumer, status, upstream_status, upstream_addr, latency_ms, upstream_latency_ms,
    bytes_in, bytes_out, outcome, reason,
    ai_provider, ai_model, tokens_in, tokens_out, tokens_cached, tokens_estimated,
    cost_usd, ttft_ms, ai_attempts, ai_cache";
const COLUMNS_PER_ROW: usize = 29;

/// Writes each batch of access records in one transaction, as multi-row
/// INSERTs of up to [`ROWS_PER_INSERT`] records, over a connection of its
/// own (connected again if it broke).
pub struct PgRecordSink {
    config: postgres::Config,
    client: Option<Client>,
}

impl Drop for PgRecordSink {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            off_runtime(move || drop(client));
        }
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A nullable count column: 0 for NULL or a negative number.
fn count(n: Option<i64>) -> u64 {
    n.map_or(0, |n| u64::try_from(n).unwrap_or(0))
}

/// One record's values, in [`INSERT_COLUMNS`]' order.
struct RowValues<'a> {
    ts: i64,
    request_id: &'a str,
    hash: i64,
    client_ip: IpText,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    api: Option<&'a str>,
    service: Option<&'a str>,
    consumer: Option<&'a str>,
    status: i64,
    upstream_status: Option<i64>,
    upstream_addr: Option<&'a str>,
    latency_ms: f64,
    upstream_latency_ms: Option<f64>,
    bytes_in: i64,
    bytes_out: i64,
    outcome: &'static str,
    reason: Option<&'static str>,
    ai: AiValues<'a>,
}

/// The AI columns' values: all `None` (NULL) for a record without AI usage.
#[derive(Default)]
struct AiValues<'a> {
    provider: Option<&'a str>,
    model: Option<&'a str>,
    tokens_in: Option<i64>,
    tokens_out: Option<i64>,
    tokens_cached: Option<i64>,
    tokens_estimated: Option<bool>,
    cost_usd: Option<f64>,
    ttft_ms: Option<f64>,
    attempts: Option<Json<&'a [AiAttempt]>>,
    cache: Option<&'static str>,
}

impl<'a> AiValues<'a> {
    fn of(ai: Option<&'a AiUsage>) -> AiValues<'a> {
        let Some(ai) = ai else {
            return AiValues::default();
        };
        AiValues {
            provider: ai.ai_provider.as_deref(),
            model: ai.ai_model.as_deref(),
            tokens_in: Some(saturating_i64(ai.tokens_in)),
            tokens_out: Some(saturating_i64(ai.tokens_out)),
            tokens_cached: Some(saturating_i64(ai.tokens_cached)),
            tokens_estimated: Some(ai.tokens_estimated),
            cost_usd: ai.cost_usd,
            ttft_ms: ai.ttft_ms,
            attempts: Some(Json(&ai.attempts)),
            cache: ai.cache,
        }
    }
}

impl<'a> RowValues<'a> {
    fn of(r: &'a AccessRecord) -> RowValues<'a> {
        RowValues {
            ts: unix_micros(r.ts),
            request_id: &r.request_id,
            hash: request_id_hash(&r.request_id),
            client_ip: IpText::from(r.client_ip),
            method: &r.method,
            host: &r.host,
            path: &r.path,
            api: r.api.as_deref(),
            service: r.service.as_deref(),
            consumer: r.consumer.as_deref(),
            status: i64::from(r.status),
            upstream_status: r.upstream_status.map(i64::from),
            upstream_addr: r.upstream_addr.as_deref(),
            latency_ms: r.latency_ms,
            upstream_latency_ms: r.upstream_latency_ms,
            bytes_in: saturating_i64(r.bytes_in),
            bytes_out: saturating_i64(r.bytes_out),
            outcome: r.outcome.as_str(),
            reason: r.reason,
            ai: AiValues::of(r.ai.as_deref()),
        }
    }

    fn push<'b>(&'b self, client_ip: &'b String, params: &mut Vec<&'b (dyn ToSql + Sync)>) {
        params.extend_from_slice(&[
            &self.ts,
            &self.request_id,
            &self.hash,
            client_ip,
            &self.method,
            &self.host,
            &self.path,
            &self.api,
            &self.service,
            &self.consumer,
            &self.status,
            &self.upstream_status,
            &self.upstream_addr,
            &self.latency_ms,
            &self.upstream_latency_ms,
            &self.bytes_in,
            &self.bytes_out,
            &self.outcome,
            &self.reason,
            &self.ai.provider,
            &self.ai.model,
            &self.ai.tokens_in,
            &self.ai.tokens_out,
            &self.ai.tokens_cached,
            &self.ai.tokens_estimated,
            &self.ai.cost_usd,
            &self.ai.ttft_ms,
            &self.ai.attempts,
            &self.ai.cache,
        ]);
    }
}

/// `INSERT … VALUES ($1, …, $29), …` for `rows` records.
fn insert_sql(rows: usize) -> String {
    let mut sql = format!("INSERT INTO access_records ({INSERT_COLUMNS}) VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push('(');
        for column in 0..COLUMNS_PER_ROW {
            if column > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("${}", row * COLUMNS_PER_ROW + column + 1));
        }
        sql.push(')');
    }
    sql
}

impl PgRecordSink {
    fn insert(&mut self, records: &[AccessRecord]) -> Result<(), StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(connect(&self.config)?);
        }
        let client = self.client.as_mut().expect("connected above");
        let mut tx = client.transaction()?;
        let full = tx.prepare(&insert_sql(ROWS_PER_INSERT))?;
        for chunk in records.chunks(ROWS_PER_INSERT) {
            let values: Vec<RowValues<'_>> = chunk.iter().map(RowValues::of).collect();
            let ips: Vec<String> = values.iter().map(|v| v.client_ip.to_string()).collect();
            let mut params: Vec<&(dyn ToSql + Sync)> =
                Vec::with_capacity(chunk.len() * COLUMNS_PER_ROW);
            for (row, ip) in values.iter().zip(&ips) {
                row.push(ip, &mut params);
            }
            if chunk.len() == ROWS_PER_INSERT {
                tx.execute(&full, &params)?;
            } else {
                tx.execute(insert_sql(chunk.len()).as_str(), &params)?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

impl RecordSink for PgRecordSink {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn write_batch(&mut self, records: &[AccessRecord]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        off_runtime(|| self.insert(records)).map_err(io::Error::other)
    }
}

impl PgStore {
    /// A sink writing access records into this database over its own
    /// connection, for [`tollgate_telemetry::AccessLog::start`]. It connects
    /// when it first writes (and again whenever its connection broke), so a
    /// node started while the database is down gets one too.
    pub fn access_record_sink(&self) -> io::Result<PgRecordSink> {
        Ok(PgRecordSink {
            config: self.config().clone(),
            client: None,
        })
    }

    /// The `limit` most recently written access records, newest first.
    pub fn recent_access_records(
        &self,
        limit: usize,
    ) -> Result<Vec<StoredAccessRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(|client| {
            client
                .query(
                    &format!(
                        "SELECT {STORED_COLUMNS} FROM access_records ORDER BY id DESC LIMIT $1"
                    ),
                    &[&limit],
                )?
                .iter()
                .map(stored_access_record)
                .collect()
        })
    }

    /// The access records of the request `request_id`, newest first.
    pub fn access_records_by_request_id(
        &self,
        request_id: &str,
    ) -> Result<Vec<StoredAccessRecord>, StoreError> {
        let hash = request_id_hash(request_id);
        self.with(|client| {
            client
                .query(
                    &format!(
                        "SELECT {STORED_COLUMNS} FROM access_records
                         WHERE request_id_hash = $1 AND request_id = $2
                         ORDER BY id DESC"
                    ),
                    &[&hash, &request_id],
                )?
                .iter()
                .map(stored_access_record)
                .collect()
        })
    }

    /// As [`crate::SqliteStore::prune_access_records`].
    pub fn prune_access_records(&self, before: i64, batch: usize) -> Result<usize, StoreError> {
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        self.with(|client| {
            let deleted = client.execute(
                "DELETE FROM access_records WHERE id IN (
                    SELECT id FROM access_records WHERE ts < $1 ORDER BY ts LIMIT $2)",
                &[&before, &batch],
            )?;
            Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
        })
    }

    /// How many access records the database holds.
    pub fn count_access_records(&self) -> Result<u64, StoreError> {
        self.with(|client| {
            let count: i64 = client
                .query_one("SELECT count(*) FROM access_records", &[])?
                .try_get(0)?;
            Ok(count.try_into().unwrap_or(0))
        })
    }

    /// As [`crate::SqliteStore::query_access_records`]: the same filters,
    /// page sizes and cursors.
    pub fn query_access_records(&self, query: &AccessQuery) -> Result<AccessPage, StoreError> {
        let before = match &query.cursor {
            Some(cursor) => decode_cursor(cursor)?,
            None => i64::MAX,
        };
        let limit = match query.limit {
            0 => AccessQuery::DEFAULT_LIMIT,
            n => n.min(AccessQuery::MAX_LIMIT),
        };
        let mut terms: Vec<String> = Vec::new();
        let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut add = |term: &str, value: Box<dyn ToSql + Sync + Send>| {
            values.push(value);
            terms.push(term.replace('?', &format!("${}", values.len())));
        };
        if let Some(from) = query.from {
            add("ts >= ?", Box::new(from));
        }
        if let Some(to) = query.to {
            add("ts < ?", Box::new(to));
        }
        for (term, value) in [
            ("api = ?", &query.api),
            ("service = ?", &query.service),
            ("consumer = ?", &query.consumer),
            ("outcome = ?", &query.outcome),
            ("reason = ?", &query.reason),
            ("request_id = ?", &query.request_id),
            ("ai_model = ?", &query.ai_model),
            ("ai_provider = ?", &query.ai_provider),
        ] {
            if let Some(value) = value {
                add(term, Box::new(value.clone()));
            }
        }
        if let Some(request_id) = &query.request_id {
            add("request_id_hash = ?", Box::new(request_id_hash(request_id)));
        }
        if let Some(status) = query.status {
            add("status = ?", Box::new(i64::from(status)));
        }
        if let Some(services) = &query.services {
            add("service = ANY(?)", Box::new(services.clone()));
        }
        add("id < ?", Box::new(before));
        // One more than a page, to know whether there is a next one.
        add("?", Box::new(i64::try_from(limit + 1).unwrap_or(i64::MAX)));
        let limit_param = terms.pop().expect("pushed above");
        let sql = format!(
            "SELECT {STORED_COLUMNS} FROM access_records WHERE {}
             ORDER BY id DESC LIMIT {limit_param}",
            terms.join(" AND ")
        );
        let mut items: Vec<StoredAccessRecord> = self.with(|client| {
            let params: Vec<&(dyn ToSql + Sync)> = values
                .iter()
                .map(|v| v.as_ref() as &(dyn ToSql + Sync))
                .collect();
            client
                .query(&sql, &params)?
                .iter()
                .map(stored_access_record)
                .collect()
        })?;
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|last| encode_cursor(last.id))
        } else {
            None
        };
        Ok(AccessPage { items, next })
    }

    /// As [`crate::SqliteStore::api_usage_by_consumer`].
    pub fn api_usage_by_consumer(
        &self,
        api: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<ConsumerUsage>, StoreError> {
        self.with(|client| {
            client
                .query(
                    "SELECT consumer, count(*), max(ts) FROM access_records
                     WHERE api = $1 AND ts >= $2 AND ts < $3
                     GROUP BY consumer ORDER BY count(*) DESC, consumer",
                    &[&api, &from, &to],
                )?
                .iter()
                .map(|row| {
                    let requests: i64 = row.try_get(1)?;
                    Ok(ConsumerUsage {
                        consumer: row.try_get(0)?,
                        requests: requests.try_into().unwrap_or(0),
                        last_seen: Rfc3339::from_unix_micros(row.try_get(2)?).to_string(),
                    })
                })
                .collect()
        })
    }

    /// As [`crate::SqliteStore::analytics`]: the records of the range
    /// stream over a connection of its own into the same aggregation code.
    pub fn analytics(&self, query: &AnalyticsQuery) -> Result<Analytics, StoreError> {
        let buckets = query.bucket_count();
        if buckets > AnalyticsQuery::MAX_BUCKETS {
            return Err(StoreError::TooManyBuckets {
                buckets,
                max: AnalyticsQuery::MAX_BUCKETS,
            });
        }
        let (from, to) = query.range();
        let mut sql =
            format!("SELECT {AGGREGATED_COLUMNS} FROM access_records WHERE ts >= $1 AND ts < $2");
        let mut values: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(from), Box::new(to)];
        for (column, value) in [
            ("api", &query.api),
            ("service", &query.service),
            ("consumer", &query.consumer),
        ] {
            if let Some(value) = value {
                values.push(Box::new(value.clone()));
                sql.push_str(&format!(" AND {column} = ${}", values.len()));
            }
        }
        off_runtime(|| {
            let mut client = connect(self.config())?;
            let result = (|| {
                let params = values.iter().map(|v| v.as_ref() as &(dyn ToSql + Sync));
                let mut rows = client.query_raw(&sql, params)?;
                let mut acc = Accumulator::new(query);
                while let Some(row) = rows.next()? {
                    let outcome: &str = row.try_get(3)?;
                    acc.add_record(&AggregatedRecord {
                        ts: row.try_get(0)?,
                        latency_ms: row.try_get(1)?,
                        status: row.try_get(2)?,
                        outcome: outcome.as_bytes(),
                        reason: row.try_get(4)?,
                        bytes_in: u64::try_from(row.try_get::<_, i64>(5)?).unwrap_or(0),
                        bytes_out: u64::try_from(row.try_get::<_, i64>(6)?).unwrap_or(0),
                        api: row.try_get(7)?,
                        consumer: row.try_get(8)?,
                        ai: match row.try_get::<_, Option<i64>>(9)? {
                            None => None,
                            Some(tokens_in) => Some(AggregatedAi {
                                tokens_in: u64::try_from(tokens_in).unwrap_or(0),
                                tokens_out: count(row.try_get(10)?),
                                tokens_cached: count(row.try_get(11)?),
                                cost_usd: row.try_get(12)?,
                                model: row.try_get(13)?,
                                provider: row.try_get(14)?,
                            }),
                        },
                    });
                }
                Ok::<_, StoreError>(acc.finish(query))
            })();
            drop(client);
            result
        })
    }
}
