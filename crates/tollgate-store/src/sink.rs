//! The access record sink that writes into SQLite.

use std::io;

use rusqlite::{CachedStatement, Connection, TransactionBehavior};
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

/// Writes each batch of access records in one transaction through a cached
/// prepared statement, over a connection of its own.
pub struct SqliteRecordSink {
    conn: Connection,
}

impl SqliteRecordSink {
    pub(crate) fn new(conn: Connection) -> SqliteRecordSink {
        SqliteRecordSink { conn }
    }

    fn insert(&mut self, records: &[AccessRecord]) -> rusqlite::Result<()> {
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
        tx.commit()
    }
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
    bind_changed!(5, method, r.method.as_str());
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
    fn request_id_hash_is_fnv1a_32() {
        // Reference values of 32-bit FNV-1a.
        assert_eq!(request_id_hash(""), 0x811c_9dc5_u32 as i32 as i64);
        assert_eq!(request_id_hash("a"), 0xe40c_292c_u32 as i32 as i64);
        assert_eq!(request_id_hash("foobar"), 0xbf9c_f968_u32 as i32 as i64);
    }
}
