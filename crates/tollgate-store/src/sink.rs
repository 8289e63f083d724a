//! The access record sink that writes into SQLite.

use std::io;

use rusqlite::{CachedStatement, Connection, OptionalExtension, TransactionBehavior};
use tollgate_telemetry::record::{unix_micros, IpText};
use tollgate_telemetry::{AccessRecord, AiUsage, RecordSink};

// One row per statement: multi-row statements (8 to 64 rows) measured slower
// (32 rows: ~15% more instructions per record).
//
// The AI columns cost a record without AI usage ~5% more instructions, as
// SQLite writes every row to the table's full width (see migration 6); a
// second statement leaving them out, for such records, measured no cheaper.
const INSERT: &str = "INSERT INTO access_records (
        ts, request_id, request_id_hash, client_ip, method, host, path, api, service,
        consumer, status, upstream_status, upstream_addr, latency_ms, upstream_latency_ms,
        bytes_in, bytes_out, outcome, reason,
        ai_provider, ai_model, tokens_in, tokens_out, tokens_cached, tokens_estimated,
        cost_usd, ttft_ms, ai_attempts, ai_cache
    ) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
        ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29)";

/// The first of the AI columns' parameters, in [`AiUsage`]'s order.
const FIRST_AI_PARAM: usize = 20;
const AI_PARAMS: usize = 10;

/// The most records a span holds (see migration `SPANS`): a query that
/// cannot skip a span reads all of it, and a span extended by small batches
/// is rewritten with each, so spans stay short; one span a batch would
/// cost a row a record when the gateway is quiet and batches are single
/// records.
pub(crate) const SPAN_RECORDS: i64 = 1024;

/// The longest list of APIs a span keeps; past it the span says "any".
const SPAN_APIS_BYTES: usize = 2048;

/// Writes each batch of access records in one transaction through a cached
/// prepared statement, over a connection of its own, with the span that
/// covers them.
pub struct SqliteRecordSink {
    conn: Connection,
    /// [`SPAN_RECORDS`], but in tests.
    span_records: i64,
}

/// A row of `access_record_spans`.
#[derive(Clone, Debug, PartialEq)]
struct Span {
    first_id: i64,
    last_id: i64,
    min_ts: i64,
    max_ts: i64,
    /// `,a,b,` (`,` for none), or `None` for "any".
    apis: Option<String>,
}

impl Span {
    /// Adds `api` to the span's list, unless it is there or the list is
    /// full (then the span may hold any API).
    fn add_api(&mut self, api: &str) {
        let Some(apis) = &mut self.apis else {
            return;
        };
        if apis.split(',').any(|listed| listed == api) {
            return;
        }
        if apis.len() + api.len() + 1 > SPAN_APIS_BYTES {
            self.apis = None;
        } else {
            apis.push_str(api);
            apis.push(',');
        }
    }
}

impl SqliteRecordSink {
    pub(crate) fn new(conn: Connection) -> SqliteRecordSink {
        SqliteRecordSink {
            conn,
            span_records: SPAN_RECORDS,
        }
    }

    /// Spans of at most `records` records, for tests that need many.
    #[cfg(test)]
    pub(crate) fn with_span_records(self, records: i64) -> SqliteRecordSink {
        SqliteRecordSink {
            span_records: records,
            ..self
        }
    }

    fn insert(&mut self, records: &[AccessRecord]) -> rusqlite::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(INSERT)?;
            let mut previous: Option<&AccessRecord> = None;
            for r in records {
                tollgate_telemetry::access_log::pace();
                bind(&mut insert, r, previous)?;
                insert.raw_execute()?;
                previous = Some(r);
            }
        }
        // One writer in a transaction: SQLite gives each row the largest id
        // plus one, so the batch's ids are consecutive.
        let last_id = tx.last_insert_rowid();
        let first_id = last_id - (records.len() as i64 - 1);
        cover(&tx, records, first_id, last_id, self.span_records)?;
        tx.commit()
    }
}

/// Records `records`, just written as ids `first_id..=last_id`, in the
/// newest span if they follow it and it has room, or in a new one.
fn cover(
    tx: &rusqlite::Transaction<'_>,
    records: &[AccessRecord],
    first_id: i64,
    last_id: i64,
    span_records: i64,
) -> rusqlite::Result<()> {
    // Read each time rather than kept: retention deletes spans, and a
    // rollback undoes a write. A primary key's last entry: cheap.
    let newest = tx
        .prepare_cached(
            "SELECT first_id, last_id, min_ts, max_ts, apis FROM access_record_spans
             ORDER BY first_id DESC LIMIT 1",
        )?
        .query_row([], |row| {
            Ok(Span {
                first_id: row.get(0)?,
                last_id: row.get(1)?,
                min_ts: row.get(2)?,
                max_ts: row.get(3)?,
                apis: row.get(4)?,
            })
        })
        .optional()?;
    let reused = newest.as_ref().is_some_and(|span| span.last_id >= first_id);
    if reused {
        // Ids used again: retention deleted the newest records, and SQLite
        // numbers from the largest id left. No record is left above it, so
        // the spans' claims above it are empty: cut them off.
        tx.execute(
            "DELETE FROM access_record_spans WHERE first_id >= ?1",
            [first_id],
        )?;
        tx.execute(
            "UPDATE access_record_spans SET last_id = ?1 - 1 WHERE last_id >= ?1",
            [first_id],
        )?;
    }
    let extended = newest.filter(|span| {
        !reused && span.last_id + 1 == first_id && last_id - span.first_id < span_records
    });
    let sql = if extended.is_some() {
        "UPDATE access_record_spans SET last_id = ?2, min_ts = ?3, max_ts = ?4, apis = ?5
         WHERE first_id = ?1"
    } else {
        "INSERT INTO access_record_spans (first_id, last_id, min_ts, max_ts, apis)
         VALUES (?1, ?2, ?3, ?4, ?5)"
    };
    let mut span = extended.unwrap_or(Span {
        first_id,
        last_id,
        min_ts: i64::MAX,
        max_ts: i64::MIN,
        apis: Some(",".to_owned()),
    });
    span.last_id = last_id;
    let mut previous_api = None;
    for r in records {
        let ts = unix_micros(r.ts);
        span.min_ts = span.min_ts.min(ts);
        span.max_ts = span.max_ts.max(ts);
        if let Some(api) = r.api.as_deref() {
            if previous_api != Some(api) {
                span.add_api(api);
                previous_api = Some(api);
            }
        }
    }
    tx.prepare_cached(sql)?.execute(rusqlite::params![
        span.first_id,
        span.last_id,
        span.min_ts,
        span.max_ts,
        span.apis
    ])?;
    Ok(())
}

/// Binds `r` to the insert statement's parameters. Parameters stay bound
/// from one execution to the next, so a value equal to `previous`'s (the
/// record bound last, if any) is not bound again: binding text copies it,
/// and most fields repeat from one request to the next (measured: ~15% fewer
/// instructions per record). A record with no AI usage after another costs
/// one comparison for the AI columns, still bound to NULL.
fn bind(
    insert: &mut CachedStatement<'_>,
    r: &AccessRecord,
    previous: Option<&AccessRecord>,
) -> rusqlite::Result<()> {
    macro_rules! bind_changed {
        ($index:expr, $field:ident, $value:expr) => {
            if previous.map_or(true, |p| p.$field != r.$field) {
                insert.raw_bind_parameter($index, $value)?;
            }
        };
    }
    insert.raw_bind_parameter(1, unix_micros(r.ts))?;
    insert.raw_bind_parameter(2, r.request_id.as_str())?;
    insert.raw_bind_parameter(3, request_id_hash(&r.request_id))?;
    bind_changed!(4, client_ip, IpText::from(r.client_ip).as_str());
    bind_changed!(5, method, &*r.method);
    bind_changed!(6, host, r.host.as_str());
    bind_changed!(7, path, r.path.as_str());
    bind_changed!(8, api, r.api.as_deref());
    bind_changed!(9, service, r.service.as_deref());
    bind_changed!(10, consumer, r.consumer.as_deref());
    bind_changed!(11, status, r.status);
    bind_changed!(12, upstream_status, r.upstream_status);
    bind_changed!(13, upstream_addr, r.upstream_addr.as_deref());
    insert.raw_bind_parameter(14, r.latency_ms)?;
    insert.raw_bind_parameter(15, r.upstream_latency_ms)?;
    bind_changed!(16, bytes_in, saturating_i64(r.bytes_in));
    bind_changed!(17, bytes_out, saturating_i64(r.bytes_out));
    bind_changed!(18, outcome, r.outcome.as_str());
    bind_changed!(19, reason, r.reason);
    match (r.ai.as_deref(), previous.map(|p| p.ai.as_deref())) {
        // Still NULL from the record before.
        (None, Some(None)) => {}
        (None, _) => {
            for index in FIRST_AI_PARAM..FIRST_AI_PARAM + AI_PARAMS {
                insert.raw_bind_parameter(index, rusqlite::types::Null)?;
            }
        }
        (Some(ai), previous) => bind_ai(insert, ai, previous.flatten())?,
    }
    Ok(())
}

/// Binds the AI columns of a record with AI usage, those equal to
/// `previous`'s (the AI usage bound last, if any) excepted.
fn bind_ai(
    insert: &mut CachedStatement<'_>,
    ai: &AiUsage,
    previous: Option<&AiUsage>,
) -> rusqlite::Result<()> {
    macro_rules! bind_changed {
        ($index:expr, $field:ident, $value:expr) => {
            if previous.map_or(true, |p| p.$field != ai.$field) {
                insert.raw_bind_parameter(FIRST_AI_PARAM + $index, $value)?;
            }
        };
    }
    bind_changed!(0, ai_provider, ai.ai_provider.as_deref());
    bind_changed!(1, ai_model, ai.ai_model.as_deref());
    insert.raw_bind_parameter(FIRST_AI_PARAM + 2, saturating_i64(ai.tokens_in))?;
    insert.raw_bind_parameter(FIRST_AI_PARAM + 3, saturating_i64(ai.tokens_out))?;
    insert.raw_bind_parameter(FIRST_AI_PARAM + 4, saturating_i64(ai.tokens_cached))?;
    insert.raw_bind_parameter(FIRST_AI_PARAM + 5, ai.tokens_estimated)?;
    insert.raw_bind_parameter(FIRST_AI_PARAM + 6, ai.cost_usd)?;
    insert.raw_bind_parameter(FIRST_AI_PARAM + 7, ai.ttft_ms)?;
    if previous.is_none_or(|p| p.attempts != ai.attempts) {
        let attempts = serde_json::to_string(&ai.attempts)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        insert.raw_bind_parameter(FIRST_AI_PARAM + 8, attempts)?;
    }
    bind_changed!(9, cache, ai.cache);
    Ok(())
}

/// The `request_id_hash` column: 32-bit FNV-1a of the request id's bytes,
/// sign-extended, so SQLite stores it in 4 bytes. Part of the schema: never
/// change it.
pub(crate) fn request_id_hash(request_id: &str) -> i64 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in request_id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    i64::from(hash as i32)
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl RecordSink for SqliteRecordSink {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn write_batch(&mut self, records: &[AccessRecord]) -> io::Result<()> {
        self.insert(records).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_lists_each_api_once_until_its_list_is_full() {
        let mut span = Span {
            first_id: 1,
            last_id: 1,
            min_ts: 0,
            max_ts: 0,
            apis: Some(",".to_owned()),
        };
        for api in ["orders", "users", "orders", "order", "users"] {
            span.add_api(api);
        }
        // `order` is not `orders`: names are matched whole.
        assert_eq!(span.apis.as_deref(), Some(",orders,users,order,"));
        let long = "x".repeat(100);
        for i in 0..19 {
            span.add_api(&format!("{long}{i}"));
        }
        assert!(span
            .apis
            .as_ref()
            .is_some_and(|apis| apis.len() <= SPAN_APIS_BYTES));
        span.add_api(&format!("{long}19"));
        assert_eq!(span.apis, None, "full: the span may hold any API");
        span.add_api("orders");
        assert_eq!(span.apis, None);
    }

    #[test]
    fn request_id_hash_is_fnv1a_32() {
        // Reference values of 32-bit FNV-1a.
        assert_eq!(request_id_hash(""), 0x811c_9dc5_u32 as i32 as i64);
        assert_eq!(request_id_hash("a"), 0xe40c_292c_u32 as i32 as i64);
        assert_eq!(request_id_hash("foobar"), 0xbf9c_f968_u32 as i32 as i64);
    }
}
