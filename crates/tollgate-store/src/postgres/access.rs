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
//!
//! Records live in day partitions (see `partitions`); the sink writes each
//! batch with one `COPY` (see `copy_text`), and keeps batches in a spool on
//! disk while the database is unreachable (see `spool`).

use std::collections::{BTreeSet, HashSet};
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, NoTls};
use tollgate_telemetry::record::{unix_micros, Rfc3339};
use tollgate_telemetry::{AccessRecord, RecordSink};

use super::spool::Spool;
use super::{
    connect, copy_text, migrations, off_runtime, partitions, stored_access_record, PgStore,
    STORED_COLUMNS,
};
use crate::analytics::{
    Accumulator, AggregatedAi, AggregatedRecord, COLUMNS as AGGREGATED_COLUMNS,
};
use crate::query::{decode_cursor, encode_cursor};
use crate::sink::request_id_hash;
use crate::{
    AccessPage, AccessQuery, Analytics, AnalyticsQuery, ConsumerUsage, StoreError,
    StoredAccessRecord,
};

/// The longest the sink waits for PostgreSQL to accept a connection: while
/// it is down, the access-log thread waits this long at most once per
/// [`RETRY_EVERY`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection whose sent data goes unacknowledged this long is broken (a
/// server gone without a word, a network cut without a reset): the sink
/// then spools instead of waiting for TCP to give up, which takes minutes.
/// Where the system has `TCP_USER_TIMEOUT` (Linux).
const UNACKNOWLEDGED_TIMEOUT: Duration = Duration::from_secs(10);

/// While PostgreSQL is unreachable the sink tries again at most this often;
/// batches in between go straight to the spool.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Why a batch did not reach the database. Classified once, where it
/// happens: an outage sends the batch to the spool, a refusal loses it.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// No connection, or it broke, or the schema is not migrated yet: try
    /// again later.
    #[error("PostgreSQL is unreachable: {0}")]
    Unreachable(Box<dyn std::error::Error + Send + Sync>),
    /// PostgreSQL answered and refused the batch: trying again would fail
    /// again.
    #[error("PostgreSQL refused the access records: {0}")]
    Refused(postgres::Error),
}

impl From<postgres::Error> for WriteError {
    fn from(error: postgres::Error) -> WriteError {
        let outage = match error.code() {
            // Not an answer of the server: I/O, closed connection, timeout.
            None => true,
            Some(code) => {
                let code = code.code();
                // Connection exceptions, shutdowns, too many connections.
                code.starts_with("08") || code.starts_with("57P") || code == "53300"
            }
        };
        if outage || error.is_closed() {
            WriteError::Unreachable(Box::new(error))
        } else {
            WriteError::Refused(error)
        }
    }
}

impl WriteError {
    /// An error writing COPY data: the connection's, or the server's
    /// refusal passed along.
    fn from_copy(error: io::Error) -> WriteError {
        match error.into_inner() {
            Some(inner) => match inner.downcast::<postgres::Error>() {
                Ok(error) => WriteError::from(*error),
                Err(other) => WriteError::Unreachable(other),
            },
            None => WriteError::Unreachable("the COPY data could not be sent".into()),
        }
    }
}

/// The outage the sink is in: PostgreSQL did not answer its last try.
struct Outage {
    last_try: Instant,
    /// Records written to the spool, and dropped at its bound, meanwhile.
    spooled: u64,
    dropped: u64,
}

/// One batch, encoded.
struct Batch<'a> {
    records: usize,
    payload: &'a [u8],
    min_ts: i64,
    max_ts: i64,
    days: BTreeSet<i64>,
}

/// Writes each batch of access records with one `COPY` in one transaction,
/// after creating the day partitions it needs, over a connection of its own
/// (connected again if it broke, with a short timeout).
///
/// While PostgreSQL is unreachable it tries again at most once per
/// [`RETRY_EVERY`], and, given a spool ([`PgRecordSink::with_spool`]), keeps
/// the batches there, within the spool's bound, and returns `Ok`. Once the
/// database answers it writes the spool back, oldest segment first, one
/// segment per batch call (so the access-log thread is never held long);
/// new batches go to the spool behind it until it is empty, to keep order.
/// A spool left by a previous run is written back the same way, starting
/// with the first batch written.
///
/// Each segment is written in one transaction and deleted after its commit:
/// a crash between the two writes that segment's records twice.
pub struct PgRecordSink {
    config: postgres::Config,
    client: Option<Client>,
    /// Days whose partition is known to exist.
    partitions: HashSet<i64>,
    spool: Option<Spool>,
    outage: Option<Outage>,
    /// Whether the spool's bound was reached since it was last empty (logged once).
    spool_full: bool,
    /// Reused for each batch's COPY text.
    buffer: Vec<u8>,
}

impl Drop for PgRecordSink {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            off_runtime(move || drop(client));
        }
    }
}

/// A nullable count column: 0 for NULL or a negative number.
fn count(n: Option<i64>) -> u64 {
    n.map_or(0, |n| u64::try_from(n).unwrap_or(0))
}

impl PgRecordSink {
    /// Keeps batches in a spool in `dir` (created if missing) while
    /// PostgreSQL is unreachable, up to `max_bytes` on disk; past that,
    /// batches are dropped and counted. Segments a previous run left there
    /// are written back once the database answers.
    pub fn with_spool(mut self, dir: &Path, max_bytes: u64) -> io::Result<PgRecordSink> {
        let spool = Spool::open(dir, max_bytes)?;
        tollgate_telemetry::metrics::set_access_spool_bytes(spool.bytes());
        if !spool.is_empty() {
            tracing::info!(
                spool = %dir.display(),
                bytes = spool.bytes(),
                "access records left in the spool by a previous run will be written to PostgreSQL"
            );
        }
        self.spool = Some(spool);
        Ok(self)
    }

    /// Bytes in the spool, 0 without one.
    pub fn spooled_bytes(&self) -> u64 {
        self.spool.as_ref().map_or(0, Spool::bytes)
    }

    fn write(&mut self, batch: &Batch<'_>) -> io::Result<()> {
        if self
            .outage
            .as_ref()
            .is_some_and(|o| o.last_try.elapsed() < RETRY_EVERY)
        {
            return self.spool_batch(batch, None);
        }
        match self.try_write(batch) {
            Ok(written) => {
                if let Some(outage) = self.outage.take() {
                    tracing::info!(
                        spooled = outage.spooled,
                        dropped = outage.dropped,
                        "PostgreSQL answers again: access records are written to it"
                    );
                }
                if written {
                    Ok(())
                } else {
                    // Behind the spool still being written back.
                    self.spool_batch(batch, None)
                }
            }
            Err(WriteError::Unreachable(error)) => {
                self.client = None;
                if self.outage.is_none() {
                    match &self.spool {
                        Some(spool) => tracing::warn!(
                            %error,
                            spool = %spool.dir().display(),
                            "PostgreSQL is unreachable: access records go to the spool until it answers"
                        ),
                        None => tracing::warn!(
                            %error,
                            "PostgreSQL is unreachable: access records are lost until it answers"
                        ),
                    }
                }
                let outage = self.outage.get_or_insert(Outage {
                    last_try: Instant::now(),
                    spooled: 0,
                    dropped: 0,
                });
                outage.last_try = Instant::now();
                self.spool_batch(batch, Some(error))
            }
            Err(refused @ WriteError::Refused(_)) => Err(io::Error::other(refused)),
        }
    }

    /// Puts the batch in the spool; what would take the spool past its bound
    /// is dropped and counted. Without a spool, the batch is lost: an error.
    fn spool_batch(
        &mut self,
        batch: &Batch<'_>,
        error: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> io::Result<()> {
        let Some(spool) = &mut self.spool else {
            return Err(match error {
                Some(error) => io::Error::other(WriteError::Unreachable(error)),
                None => io::Error::other("PostgreSQL is unreachable; trying again shortly"),
            });
        };
        let records = batch.records as u64;
        let spooled = spool.append_within_bound(batch.min_ts, batch.max_ts, batch.payload)?;
        let dropped = records.saturating_sub(spooled);
        if spooled > 0 {
            tollgate_telemetry::metrics::set_access_spool_bytes(spool.bytes());
        }
        if let Some(outage) = &mut self.outage {
            outage.spooled += spooled;
            outage.dropped += dropped;
        }
        if dropped > 0 {
            tollgate_telemetry::metrics::count_access_spool_dropped(dropped);
            if !std::mem::replace(&mut self.spool_full, true) {
                tracing::warn!(
                    spool = %spool.dir().display(),
                    bytes = spool.bytes(),
                    "the access-record spool is full: access records are dropped until PostgreSQL answers"
                );
            }
        }
        Ok(())
    }

    /// Writes the next spool segment, if any, then the batch unless the
    /// spool still holds more (`Ok(false)`: the batch goes behind it).
    fn try_write(&mut self, batch: &Batch<'_>) -> Result<bool, WriteError> {
        self.connect()?;
        if self.spool.as_ref().is_some_and(|s| !s.is_empty()) {
            self.replay_one()?;
            if self.spool.as_ref().is_some_and(|s| !s.is_empty()) {
                return Ok(false);
            }
        }
        self.copy(batch.payload, &batch.days)?;
        Ok(true)
    }

    /// Connects unless connected, and learns which partitions exist.
    fn connect(&mut self) -> Result<(), WriteError> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        self.client = None;
        let mut client = self
            .config
            .connect(NoTls)
            .map_err(|e| WriteError::Unreachable(Box::new(e)))?;
        // A node started during an outage migrates once the database
        // answers; until then the table may not be partitioned yet.
        let version = migrations::current_version(&mut client).map_err(WriteError::from)?;
        if version < migrations::PARTITIONED_ACCESS_RECORDS {
            return Err(WriteError::Unreachable(
                format!("the database schema is at version {version}, not migrated yet").into(),
            ));
        }
        self.partitions = partitions::existing(&mut client)?
            .into_iter()
            .map(|(day, _)| day)
            .collect();
        self.client = Some(client);
        Ok(())
    }

    /// Writes the oldest spool segment in one transaction, then deletes it.
    /// A segment PostgreSQL refuses is set aside, logged, and skipped.
    fn replay_one(&mut self) -> Result<(), WriteError> {
        let spool = self.spool.as_mut().expect("called with a spool");
        let (seq, frames) = match spool.oldest() {
            Ok(Some(oldest)) => oldest,
            Ok(None) => return Ok(()),
            Err(error) => {
                return Err(WriteError::Unreachable(
                    format!(
                        "cannot read the spool at {}: {error}",
                        spool.dir().display()
                    )
                    .into(),
                ))
            }
        };
        let mut days = BTreeSet::new();
        let mut payload = Vec::with_capacity(frames.iter().map(|f| f.payload.len()).sum());
        for frame in &frames {
            let (first, last) = (
                partitions::day_of(frame.min_ts),
                partitions::day_of(frame.max_ts),
            );
            if first == last {
                days.insert(first);
            } else {
                days.extend(partitions::days_in_payload(&frame.payload));
            }
            payload.extend_from_slice(&frame.payload);
        }
        let written = self.copy(&payload, &days);
        let spool = self.spool.as_mut().expect("called with a spool");
        let done = match written {
            Ok(()) => spool.remove(seq).map(|()| None),
            Err(WriteError::Refused(error)) => {
                let aside = spool.set_aside(seq);
                tracing::error!(
                    %error,
                    set_aside = ?aside.as_ref().map(|p| p.display().to_string()),
                    "PostgreSQL refused a spooled segment of access records; it is set aside"
                );
                aside.map(Some)
            }
            Err(unreachable) => return Err(unreachable),
        };
        if let Err(error) = done {
            // Not deleted: it would be written again; better stop replaying.
            tracing::error!(%error, spool = %spool.dir().display(), "cannot delete a written spool segment");
            return Err(WriteError::Unreachable(Box::new(error)));
        }
        tollgate_telemetry::metrics::set_access_spool_bytes(spool.bytes());
        if spool.is_empty() {
            self.spool_full = false;
            tracing::info!(spool = %spool.dir().display(), "the access-record spool is written to PostgreSQL");
        }
        Ok(())
    }

    /// `COPY`s `payload` in one transaction, creating the partitions of
    /// `days` not known to exist first. A partition dropped meanwhile (by
    /// another node's retention) makes the COPY fail for want of one: the
    /// partitions are then created again and the COPY tried once more.
    fn copy(&mut self, payload: &[u8], days: &BTreeSet<i64>) -> Result<(), WriteError> {
        let mut retried = false;
        loop {
            let client = self.client.as_mut().expect("connected first");
            let missing: Vec<i64> = days
                .iter()
                .filter(|day| !self.partitions.contains(day))
                .copied()
                .collect();
            match copy_in(client, payload, &missing) {
                Ok(()) => {
                    self.partitions.extend(missing);
                    return Ok(());
                }
                Err(WriteError::Refused(error))
                    if !retried && error.code() == Some(&SqlState::CHECK_VIOLATION) =>
                {
                    retried = true;
                    for day in days {
                        self.partitions.remove(day);
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }
}

fn copy_in(client: &mut Client, payload: &[u8], missing: &[i64]) -> Result<(), WriteError> {
    let mut tx = client.transaction()?;
    partitions::create(&mut tx, missing.iter().copied())?;
    let mut writer = tx.copy_in(&copy_text::copy_statement())?;
    writer.write_all(payload).map_err(WriteError::from_copy)?;
    writer.finish()?;
    tx.commit()?;
    Ok(())
}

/// Drops the partition `name`, returning how many rows it held; 0 when
/// another node dropped it first.
fn drop_partition(client: &mut Client, name: &str) -> Result<u64, StoreError> {
    let mut tx = client.transaction()?;
    let rows: i64 = match tx.query_one(&format!("SELECT count(*) FROM {name}"), &[]) {
        Ok(row) => row.try_get(0)?,
        Err(error) if error.code() == Some(&SqlState::UNDEFINED_TABLE) => return Ok(0),
        Err(error) => return Err(error.into()),
    };
    tx.batch_execute(&format!("DROP TABLE IF EXISTS {name}"))?;
    tx.commit()?;
    tracing::info!(partition = name, rows, "dropped a day of access records");
    Ok(u64::try_from(rows).unwrap_or(0))
}

impl RecordSink for PgRecordSink {
    fn name(&self) -> &'static str {
        "postgres"
    }

    /// Writes the spool back (a segment per call) once the database
    /// answers, even when no request comes to carry it.
    fn idle(&mut self) -> io::Result<()> {
        if self.spool.as_ref().is_none_or(|s| s.is_empty())
            || self
                .outage
                .as_ref()
                .is_some_and(|o| o.last_try.elapsed() < RETRY_EVERY)
        {
            return Ok(());
        }
        let replayed = off_runtime(|| self.connect().and_then(|()| self.replay_one()));
        match replayed {
            Ok(()) => {
                if let Some(outage) = self.outage.take() {
                    tracing::info!(
                        spooled = outage.spooled,
                        dropped = outage.dropped,
                        "PostgreSQL answers again: access records are written to it"
                    );
                }
                Ok(())
            }
            Err(WriteError::Unreachable(_)) => {
                self.client = None;
                if let Some(outage) = &mut self.outage {
                    outage.last_try = Instant::now();
                }
                Ok(())
            }
            Err(refused @ WriteError::Refused(_)) => Err(io::Error::other(refused)),
        }
    }

    fn write_batch(&mut self, records: &[AccessRecord]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut payload = std::mem::take(&mut self.buffer);
        payload.clear();
        let (min_ts, max_ts) = copy_text::encode(records, &mut payload);
        let batch = Batch {
            records: records.len(),
            payload: &payload,
            min_ts,
            max_ts,
            days: records
                .iter()
                .map(|r| partitions::day_of(unix_micros(r.ts)))
                .collect(),
        };
        let written = off_runtime(|| self.write(&batch));
        self.buffer = payload;
        written
    }
}

impl PgStore {
    /// A sink writing access records into this database over its own
    /// connection, for [`tollgate_telemetry::AccessLog::start`]. It connects
    /// when it first writes (and again whenever its connection broke), so a
    /// node started while the database is down gets one too. Without a
    /// spool ([`PgRecordSink::with_spool`]), batches written while the
    /// database is unreachable fail and are lost.
    pub fn access_record_sink(&self) -> io::Result<PgRecordSink> {
        let mut config = self.config().clone();
        if config
            .get_connect_timeout()
            .is_none_or(|t| *t > CONNECT_TIMEOUT)
        {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(UNACKNOWLEDGED_TIMEOUT);
        }
        Ok(PgRecordSink {
            config,
            client: None,
            partitions: HashSet::new(),
            spool: None,
            outage: None,
            spool_full: false,
            buffer: Vec::new(),
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

    /// Removes the access records older than `before` (Unix microseconds):
    /// first every day partition wholly older (`DROP TABLE`, each in a
    /// transaction of its own, its rows counted first), then up to `batch`
    /// of the remaining older records (those of the day `before` falls in),
    /// oldest first, as SQLite's does. Returns how many records were
    /// removed: the dropped partitions' rows plus the deleted ones, so it
    /// may exceed `batch`; fewer than `batch` means none older is left.
    pub fn prune_access_records(&self, before: i64, batch: usize) -> Result<usize, StoreError> {
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        self.with(|client| {
            let mut removed: u64 = 0;
            for (day, name) in partitions::existing(client)? {
                if partitions::bounds(day).1 > before {
                    break;
                }
                removed += drop_partition(client, &name)?;
            }
            let deleted = client.execute(
                "DELETE FROM access_records WHERE (id, ts) IN (
                    SELECT id, ts FROM access_records WHERE ts < $1 ORDER BY ts LIMIT $2)",
                &[&before, &batch],
            )?;
            Ok(usize::try_from(removed + deleted).unwrap_or(usize::MAX))
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
