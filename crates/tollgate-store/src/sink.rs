//! The access record sink that writes into SQLite.

use std::io;

use rusqlite::{params, Connection, TransactionBehavior};
use tollgate_telemetry::record::format_rfc3339;
use tollgate_telemetry::{AccessRecord, RecordSink};

const INSERT: &str = "INSERT INTO access_records (
        ts, request_id, client_ip, method, host, path, api, service, consumer,
        status, upstream_status, upstream_addr, latency_ms, upstream_latency_ms,
        bytes_in, bytes_out, outcome, reason
    ) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)";

/// Writes each batch of access records in one transaction through a cached
/// prepared statement, over a connection of its own.
pub struct SqliteRecordSink {
    conn: Connection,
    client_ip: String,
}

impl SqliteRecordSink {
    pub(crate) fn new(conn: Connection) -> SqliteRecordSink {
        SqliteRecordSink {
            conn,
            client_ip: String::with_capacity(46),
        }
    }

    fn insert(&mut self, records: &[AccessRecord]) -> rusqlite::Result<()> {
        use std::fmt::Write as _;

        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(INSERT)?;
            for r in records {
                self.client_ip.clear();
                let _ = write!(self.client_ip, "{}", r.client_ip);
                insert.execute(params![
                    format_rfc3339(r.ts),
                    r.request_id,
                    self.client_ip,
                    r.method,
                    r.host,
                    r.path,
                    r.api.as_deref(),
                    r.service.as_deref(),
                    r.consumer.as_deref(),
                    r.status,
                    r.upstream_status,
                    r.upstream_addr.as_deref(),
                    r.latency_ms,
                    r.upstream_latency_ms,
                    saturating_i64(r.bytes_in),
                    saturating_i64(r.bytes_out),
                    r.outcome.as_str(),
                    r.reason,
                ])?;
            }
        }
        tx.commit()
    }
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
