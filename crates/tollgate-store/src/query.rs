//! Access record queries for the admin API (`GET /admin/v1/logs`): filters,
//! newest first, keyset pages.
//!
//! Records are read in id order (the order they were written), newest first;
//! a page's cursor is the last id it returned, and the next page starts below
//! it, so pages never repeat or skip a record, however many are written
//! meanwhile. Filter values are always bound as parameters; the SQL text
//! depends only on which filters are set and on the plan chosen for them.
//!
//! # Plans
//!
//! The sink's insert speed limits the indexes (see the schema in
//! `migrations.rs`), so each query is steered to one of three plans, each
//! of which reads in id order:
//!
//! - A filter only exceptional records match (status 400 and over, an outcome
//!   other than `allowed`, a reason): the partial index of those records,
//!   which holds every filtered column, so no table row is read that does not
//!   match.
//! - No time range and no API: the table, newest first, stopping at a full
//!   page: fast for a common value, up to a scan of the table (~90 ms for a
//!   million records) for a rare one. A request id is such a filter, its
//!   hash compared first.
//! - Anything else: the spans (migration 9), newest first, and the records of
//!   each span that may hold matches — its time range overlaps the query's,
//!   its list of APIs holds the query's — by a range of the primary key,
//!   newest first, stopping at a full page. A time range or an API thus
//!   skips whole spans of up to `sink::SPAN_RECORDS` records; other filters
//!   read every record of the spans left until a page is full.
//!
//! Against the `ts` and `(api, id, ts)` indexes the spans replaced, a time
//! range costs a step of a scan (~60 ns) a record read instead of ~130–270
//! ns through the index and a sort of its ids; a rare API's page costs a
//! scan of the spans it appears in instead of its index entries alone. See
//! the `query_bench` example.

use rusqlite::types::Value;
use rusqlite::{Connection, ToSql};
use serde::Serialize;

use crate::{sink, stored_access_record, SqliteStore, StoreError, StoredAccessRecord};

/// Which access records to read: every filter set must match (an unset one
/// matches anything).
#[derive(Clone, Debug, Default)]
pub struct AccessQuery {
    /// Records at or after this time, in Unix microseconds.
    pub from: Option<i64>,
    /// Records before this time, in Unix microseconds.
    pub to: Option<i64>,
    pub api: Option<String>,
    pub service: Option<String>,
    /// Records of any of these services (an empty list matches none): the
    /// admin API scopes a team member's queries to their teams' services.
    pub services: Option<Vec<String>>,
    pub consumer: Option<String>,
    pub status: Option<u16>,
    /// `allowed`, `denied` or `error`.
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    /// Records of AI calls answered (or last tried) by this model.
    pub ai_model: Option<String>,
    /// Records of AI calls answered (or last tried) by this provider.
    pub ai_provider: Option<String>,
    /// The page size: 0 means [`AccessQuery::DEFAULT_LIMIT`]; larger than
    /// [`AccessQuery::MAX_LIMIT`] means that.
    pub limit: usize,
    /// [`AccessPage::next`] of the previous page, to read the one after it.
    pub cursor: Option<String>,
}

impl AccessQuery {
    /// The page size when [`AccessQuery::limit`] is 0.
    pub const DEFAULT_LIMIT: usize = 100;
    /// The largest page size.
    pub const MAX_LIMIT: usize = 1000;
}

/// One page of access records, newest first.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AccessPage {
    pub items: Vec<StoredAccessRecord>,
    /// The cursor of the next page, or `None` if this one is the last.
    pub next: Option<String>,
}

impl SqliteStore {
    /// The page of access records matching `query`, newest first.
    ///
    /// Fails with [`StoreError::InvalidCursor`] when `query.cursor` is not a
    /// cursor this store returned.
    pub fn query_access_records(&self, query: &AccessQuery) -> Result<AccessPage, StoreError> {
        let before = match &query.cursor {
            Some(cursor) => decode_cursor(cursor)?,
            None => i64::MAX,
        };
        let limit = match query.limit {
            0 => AccessQuery::DEFAULT_LIMIT,
            n => n.min(AccessQuery::MAX_LIMIT),
        };
        let conn = self.lock();
        // One more than a page, to know whether there is a next one.
        let mut items = run(&conn, query, choose_plan(query), before, limit + 1)?;
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|last| encode_cursor(last.id))
        } else {
            None
        };
        Ok(AccessPage { items, next })
    }
}

/// How a query reads the table: see the module's documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    Exceptional,
    Spans,
    Table,
}

/// The records with their spans, each span's records by a range of the
/// primary key: the spans are the outer loop (`CROSS JOIN` keeps SQLite
/// from reordering it), so that [`NEWEST_FIRST`] reads in id order with no
/// sort.
pub(crate) const SPANNED_RECORDS: &str =
    "access_record_spans CROSS JOIN access_records NOT INDEXED ON id BETWEEN first_id AND last_id";

/// The order of [`SPANNED_RECORDS`] that is id order, newest first: spans
/// hold disjoint ranges of ids.
const NEWEST_FIRST: &str = "first_id DESC, id DESC";

/// The spans' terms that skip spans without a match of `from`, `to` and
/// `api`, and the value of `:listed_api` when `api` is set (`:from` and
/// `:to` are bound for the records' own terms).
pub(crate) fn span_terms(
    from: Option<i64>,
    to: Option<i64>,
    api: Option<&str>,
) -> (Vec<&'static str>, Vec<(&'static str, Value)>) {
    let mut terms = Vec::new();
    let mut params = Vec::new();
    if from.is_some() {
        terms.push("max_ts >= :from");
    }
    if to.is_some() {
        terms.push("min_ts < :to");
    }
    if let Some(api) = api {
        terms.push("(apis IS NULL OR instr(apis, :listed_api) > 0)");
        params.push((":listed_api", Value::Text(format!(",{api},"))));
    }
    (terms, params)
}

/// The index of exceptional records, and its condition: a query that uses it
/// repeats the condition word for word (SQLite uses a partial index only for
/// queries whose conditions imply its own) — harmless, as the filter that
/// chose the plan implies it. Never change it: it is part of migration 3.
const EXCEPTIONAL: &str = "status >= 400 OR outcome <> 'allowed' OR reason IS NOT NULL";

/// Whether every record `query` can match is exceptional (see [`EXCEPTIONAL`]).
fn only_exceptional(query: &AccessQuery) -> bool {
    query.status.is_some_and(|status| status >= 400)
        || query.outcome.as_deref().is_some_and(|o| o != "allowed")
        || query.reason.is_some()
}

/// Chooses the plan for `query`.
pub(crate) fn choose_plan(query: &AccessQuery) -> Plan {
    if only_exceptional(query) {
        Plan::Exceptional
    } else if query.from.is_none() && query.to.is_none() && query.api.is_none() {
        // No span can be skipped: a scan of the table reads the same
        // records without a step per span (a scan finding nothing, 15–45 %
        // faster).
        Plan::Table
    } else {
        Plan::Spans
    }
}

/// Named parameters as rusqlite takes them.
pub(crate) fn as_params<'a>(params: &'a [(&'a str, Value)]) -> Vec<(&'a str, &'a dyn ToSql)> {
    params
        .iter()
        .map(|(name, value)| (*name, value as &dyn ToSql))
        .collect()
}

/// Runs `query` with `plan`, returning up to `limit` records below `before`.
pub(crate) fn run(
    conn: &Connection,
    query: &AccessQuery,
    plan: Plan,
    before: i64,
    limit: usize,
) -> Result<Vec<StoredAccessRecord>, StoreError> {
    let (sql, params) = statement(query, plan, before, limit);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(as_params(&params).as_slice(), stored_access_record)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The SQL of `query` with `plan`, and its named parameters' values.
fn statement(
    query: &AccessQuery,
    plan: Plan,
    before: i64,
    limit: usize,
) -> (String, Vec<(&'static str, Value)>) {
    let mut terms: Vec<&str> = Vec::new();
    let mut params: Vec<(&'static str, Value)> = Vec::new();
    let text = |s: &Option<String>| s.clone().map(Value::Text);
    let filters = [
        ("ts >= :from", ":from", query.from.map(Value::Integer)),
        ("ts < :to", ":to", query.to.map(Value::Integer)),
        ("api = :api", ":api", text(&query.api)),
        ("service = :service", ":service", text(&query.service)),
        ("consumer = :consumer", ":consumer", text(&query.consumer)),
        (
            "status = :status",
            ":status",
            query.status.map(|s| Value::Integer(s.into())),
        ),
        ("outcome = :outcome", ":outcome", text(&query.outcome)),
        ("reason = :reason", ":reason", text(&query.reason)),
        (
            "request_id_hash = :request_id_hash",
            ":request_id_hash",
            query
                .request_id
                .as_deref()
                .map(|id| Value::Integer(sink::request_id_hash(id))),
        ),
        (
            "request_id = :request_id",
            ":request_id",
            text(&query.request_id),
        ),
        ("ai_model = :ai_model", ":ai_model", text(&query.ai_model)),
        (
            "ai_provider = :ai_provider",
            ":ai_provider",
            text(&query.ai_provider),
        ),
    ];
    for (term, name, value) in filters {
        if let Some(value) = value {
            terms.push(term);
            params.push((name, value));
        }
    }
    if let Some(services) = &query.services {
        // One parameter, a JSON array, whatever the list's length: the SQL
        // text stays the same and the statement cache keeps working.
        terms.push("service IN (SELECT value FROM json_each(:services))");
        params.push((
            ":services",
            Value::Text(serde_json::Value::from(services.clone()).to_string()),
        ));
    }
    terms.push("id < :before");
    params.push((":before", Value::Integer(before)));
    params.push((
        ":limit",
        Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)),
    ));

    let columns = crate::STORED_COLUMNS;
    let sql = match plan {
        Plan::Exceptional => format!(
            "SELECT {columns} FROM access_records INDEXED BY access_records_exceptional
             WHERE ({EXCEPTIONAL}) AND {} ORDER BY id DESC LIMIT :limit",
            terms.join(" AND ")
        ),
        Plan::Table => format!(
            "SELECT {columns} FROM access_records NOT INDEXED
             WHERE {} ORDER BY id DESC LIMIT :limit",
            terms.join(" AND ")
        ),
        Plan::Spans => {
            let (mut span_terms, span_params) =
                span_terms(query.from, query.to, query.api.as_deref());
            span_terms.push("first_id < :before");
            params.extend(span_params);
            format!(
                "SELECT {columns} FROM {SPANNED_RECORDS}
                 WHERE {} AND {} ORDER BY {NEWEST_FIRST} LIMIT :limit",
                span_terms.join(" AND "),
                terms.join(" AND ")
            )
        }
    };
    (sql, params)
}

/// Cursors are opaque to clients; inside, a version and the last id, in hex.
const CURSOR_PREFIX: &str = "1.";

pub(crate) fn encode_cursor(id: i64) -> String {
    format!("{CURSOR_PREFIX}{id:x}")
}

pub(crate) fn decode_cursor(cursor: &str) -> Result<i64, StoreError> {
    cursor
        .strip_prefix(CURSOR_PREFIX)
        .filter(|hex| {
            (1..=16).contains(&hex.len())
                && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .and_then(|id| i64::try_from(id).ok())
        .filter(|id| *id > 0)
        .ok_or(StoreError::InvalidCursor)
}

/// The steps of SQLite's plan for `sql` with `params` (`EXPLAIN QUERY
/// PLAN`'s detail column), for tests that check a query's plan.
#[cfg(test)]
pub(crate) fn query_plan(conn: &Connection, sql: &str, params: &[(&str, Value)]) -> Vec<String> {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    stmt.query_map(as_params(params).as_slice(), |row| row.get(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// How many records a query over `from`..`to` and `api` reads through
/// the spans, whatever its other filters: what the spans fail to skip.
#[cfg(test)]
pub(crate) fn records_read(
    conn: &Connection,
    from: Option<i64>,
    to: Option<i64>,
    api: Option<&str>,
) -> i64 {
    let (mut terms, mut params) = span_terms(from, to, api);
    terms.push("1");
    params.extend(from.map(|from| (":from", Value::Integer(from))));
    params.extend(to.map(|to| (":to", Value::Integer(to))));
    conn.query_row(
        &format!(
            "SELECT count(*) FROM {SPANNED_RECORDS} WHERE {}",
            terms.join(" AND ")
        ),
        as_params(&params).as_slice(),
        |row| row.get(0),
    )
    .unwrap()
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, UNIX_EPOCH};

    use tollgate_telemetry::record::unix_micros;
    use tollgate_telemetry::{AccessRecord, AiUsage, Outcome, RecordSink};

    use super::*;

    /// 2024-05-01T12:00:00Z in Unix microseconds.
    const T0: i64 = 1_714_564_800_000_000;

    /// `n` records a second apart, of every kind a filter tells apart; some
    /// written late (a long request's), some retries of the one before.
    fn records(n: usize) -> Vec<AccessRecord> {
        let kinds: [(u16, Outcome, Option<&'static str>); 10] = [
            (201, Outcome::Allowed, None),
            (304, Outcome::Allowed, None),
            (308, Outcome::Allowed, Some("https_redirect")),
            (404, Outcome::Allowed, None),
            (500, Outcome::Allowed, None),
            (200, Outcome::Error, Some("upstream_error")),
            (401, Outcome::Denied, Some("missing_credentials")),
            (429, Outcome::Denied, Some("rate_limited")),
            (404, Outcome::Error, Some("no_route")),
            (502, Outcome::Error, Some("upstream_unavailable")),
        ];
        let mut state = 0x2545_f491_u64;
        let mut next = move |m: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 33) as usize % m
        };
        let mut out: Vec<AccessRecord> = Vec::with_capacity(n);
        for i in 0..n {
            let late = if i % 17 == 3 { 40 } else { 0 };
            let micros = T0 + i as i64 * 1_000_000 - late * 1_000_000 - next(900) as i64;
            let (api, service) = [
                (Some("orders"), Some("orders-svc")),
                (Some("users"), Some("users-svc")),
                (Some("search"), Some("catalog-svc")),
                (Some("export"), Some("catalog-svc")),
                (None, None),
            ][[0, 0, 0, 1, 1, 2, 3, 4][next(8)]];
            let consumer = [None, Some("acme"), Some("globex"), Some("initech")][next(4)];
            let (status, outcome, reason) = if next(3) == 0 {
                kinds[next(kinds.len())]
            } else {
                (200, Outcome::Allowed, None)
            };
            let request_id = match out.last() {
                Some(previous) if i % 23 == 0 => previous.request_id.clone(),
                _ => format!("req-{i:05}"),
            };
            // One in five an AI call, some with neither model nor provider.
            let ai = match next(10) {
                0 => Some(("gpt-4o", "openai")),
                1 => Some(("claude", "anthropic")),
                _ => None,
            }
            .map(|(model, provider)| {
                let known = i % 11 != 0;
                Box::new(AiUsage {
                    ai_provider: known.then(|| provider.to_owned()),
                    ai_model: known.then(|| model.to_owned()),
                    tokens_in: i as u64,
                    ..AiUsage::default()
                })
            });
            out.push(AccessRecord {
                ts: UNIX_EPOCH + Duration::from_micros(micros as u64),
                request_id,
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
                latency_ms: 1.0,
                upstream_latency_ms: None,
                bytes_in: 0,
                bytes_out: 0,
                outcome,
                reason,
                ai,
            });
        }
        out
    }

    /// A store holding `records`, written `batch` at a time into spans of
    /// at most `span_records`.
    fn store_with(records: &[AccessRecord], batch: usize, span_records: i64) -> SqliteStore {
        let store = SqliteStore::open("sqlite::memory:").unwrap();
        let mut sink = store
            .access_record_sink()
            .unwrap()
            .with_span_records(span_records);
        for batch in records.chunks(batch) {
            sink.write_batch(batch).unwrap();
        }
        store
    }

    fn matches(q: &AccessQuery, r: &AccessRecord) -> bool {
        let ts = unix_micros(r.ts);
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|want| have == Some(want))
        };
        q.from.is_none_or(|from| ts >= from)
            && q.to.is_none_or(|to| ts < to)
            && eq(&q.api, r.api.as_deref())
            && eq(&q.service, r.service.as_deref())
            && q.services.as_ref().is_none_or(|services| {
                r.service
                    .as_deref()
                    .is_some_and(|s| services.iter().any(|wanted| wanted == s))
            })
            && eq(&q.consumer, r.consumer.as_deref())
            && q.status.is_none_or(|status| status == r.status)
            && eq(&q.outcome, Some(r.outcome.as_str()))
            && eq(&q.reason, r.reason)
            && eq(&q.request_id, Some(&r.request_id))
            && eq(
                &q.ai_model,
                r.ai.as_ref().and_then(|ai| ai.ai_model.as_deref()),
            )
            && eq(
                &q.ai_provider,
                r.ai.as_ref().and_then(|ai| ai.ai_provider.as_deref()),
            )
    }

    /// The ids `query` should return, newest first: the sink wrote
    /// `records` as ids 1, 2, ….
    fn expected(records: &[AccessRecord], query: &AccessQuery) -> Vec<i64> {
        (1..=records.len() as i64)
            .rev()
            .filter(|id| matches(query, &records[*id as usize - 1]))
            .collect()
    }

    /// Every page of `query` with `plan`, `limit` records at a time.
    fn walk(store: &SqliteStore, query: &AccessQuery, plan: Plan, limit: usize) -> Vec<i64> {
        let (mut ids, mut before) = (Vec::new(), i64::MAX);
        loop {
            let page = run(&store.lock(), query, plan, before, limit).unwrap();
            ids.extend(page.iter().map(|r| r.id));
            match page.last() {
                Some(last) if page.len() == limit => before = last.id,
                _ => return ids,
            }
        }
    }

    fn ts_of(records: &[AccessRecord], i: usize) -> i64 {
        unix_micros(records[i].ts)
    }

    /// Queries with every filter, alone and together.
    fn queries(records: &[AccessRecord]) -> Vec<AccessQuery> {
        let q = AccessQuery::default;
        let text = |s: &str| Some(s.to_owned());
        let mut all = vec![q()];
        for (from, to) in [
            (Some(ts_of(records, 100)), Some(ts_of(records, 160))),
            (Some(ts_of(records, 100)), None),
            (None, Some(ts_of(records, 300))),
            (Some(ts_of(records, 500)), Some(ts_of(records, 400))),
        ] {
            all.push(AccessQuery { from, to, ..q() });
            all.push(AccessQuery {
                from,
                to,
                consumer: text("acme"),
                ..q()
            });
            all.push(AccessQuery {
                from,
                to,
                api: text("orders"),
                ..q()
            });
            all.push(AccessQuery {
                from,
                to,
                status: Some(429),
                ..q()
            });
            all.push(AccessQuery {
                from,
                to,
                ai_model: text("claude"),
                ..q()
            });
            all.push(AccessQuery {
                from,
                to,
                request_id: Some(records[120].request_id.clone()),
                ..q()
            });
        }
        for api in ["orders", "export", "nope"] {
            all.push(AccessQuery {
                api: text(api),
                ..q()
            });
        }
        for service in ["catalog-svc", "nope"] {
            all.push(AccessQuery {
                service: text(service),
                ..q()
            });
        }
        for services in [
            &["catalog-svc", "users-svc"][..],
            &["orders-svc", "nope"],
            &[],
        ] {
            let services = Some(services.iter().map(|s| s.to_string()).collect());
            all.push(AccessQuery {
                services: services.clone(),
                ..q()
            });
            all.push(AccessQuery {
                services: services.clone(),
                api: text("orders"),
                ..q()
            });
            all.push(AccessQuery {
                services,
                from: Some(ts_of(records, 100)),
                to: Some(ts_of(records, 160)),
                status: Some(429),
                ..q()
            });
        }
        for consumer in ["acme", "nope"] {
            all.push(AccessQuery {
                consumer: text(consumer),
                ..q()
            });
        }
        for model in ["gpt-4o", "claude", "nope"] {
            all.push(AccessQuery {
                ai_model: text(model),
                ..q()
            });
            all.push(AccessQuery {
                ai_model: text(model),
                consumer: text("acme"),
                ..q()
            });
            all.push(AccessQuery {
                ai_model: text(model),
                status: Some(429),
                ..q()
            });
        }
        for provider in ["openai", "anthropic", "nope"] {
            all.push(AccessQuery {
                ai_provider: text(provider),
                ..q()
            });
        }
        all.push(AccessQuery {
            ai_model: text("gpt-4o"),
            ai_provider: text("anthropic"),
            ..q()
        });
        for status in [200, 304, 308, 404, 500, 502, 999] {
            all.push(AccessQuery {
                status: Some(status),
                ..q()
            });
        }
        for outcome in ["allowed", "denied", "error", "nope"] {
            all.push(AccessQuery {
                outcome: text(outcome),
                ..q()
            });
        }
        for reason in ["https_redirect", "upstream_error", "no_route", "nope"] {
            all.push(AccessQuery {
                reason: text(reason),
                ..q()
            });
        }
        for i in [0, 22, 23, 299] {
            all.push(AccessQuery {
                request_id: Some(records[i].request_id.clone()),
                ..q()
            });
        }
        all.push(AccessQuery {
            request_id: text("no-such-request"),
            ..q()
        });
        all.push(AccessQuery {
            api: text("orders"),
            consumer: text("globex"),
            status: Some(200),
            outcome: text("allowed"),
            ..q()
        });
        all.push(AccessQuery {
            api: text("search"),
            service: text("catalog-svc"),
            outcome: text("denied"),
            reason: text("rate_limited"),
            status: Some(429),
            ..q()
        });
        all.push(AccessQuery {
            from: Some(ts_of(records, 50)),
            to: Some(ts_of(records, 250)),
            consumer: text("initech"),
            outcome: text("error"),
            ..q()
        });
        all
    }

    /// Each plan's answer is the filters' answer, page after page, however
    /// the records were cut into spans; the plan chosen only changes how
    /// fast it comes.
    #[test]
    fn every_plan_returns_exactly_the_matching_records() {
        let records = records(600);
        for store in [
            store_with(&records, 500, sink::SPAN_RECORDS),
            store_with(&records, 23, 64),
            store_with(&records, 1, 5),
        ] {
            for query in queries(&records) {
                let want = expected(&records, &query);
                let mut plans = vec![Plan::Spans, Plan::Table];
                if only_exceptional(&query) {
                    plans.push(Plan::Exceptional);
                }
                for plan in plans {
                    for limit in [1, 7, 1000] {
                        assert_eq!(
                            walk(&store, &query, plan, limit),
                            want,
                            "{plan:?}, limit {limit}: {query:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn plans_read_in_id_order_with_no_sort() {
        let records = records(300);
        let store = store_with(&records, 23, 64);
        let text = |s: &str| Some(s.to_owned());
        let spans = [
            "SEARCH access_record_spans USING INTEGER PRIMARY KEY (rowid<?)",
            "SEARCH access_records USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)",
        ];
        let cases = [
            (
                Plan::Exceptional,
                AccessQuery {
                    status: Some(500),
                    consumer: text("acme"),
                    ..Default::default()
                },
                &["SEARCH access_records USING INDEX access_records_exceptional (id<?)"][..],
            ),
            (
                Plan::Spans,
                AccessQuery {
                    request_id: text("r"),
                    from: Some(1),
                    ..Default::default()
                },
                &spans[..],
            ),
            (
                Plan::Spans,
                AccessQuery {
                    api: text("orders"),
                    to: Some(1),
                    ..Default::default()
                },
                &spans[..],
            ),
            (
                Plan::Spans,
                AccessQuery {
                    consumer: text("acme"),
                    services: Some(vec!["a".into()]),
                    ..Default::default()
                },
                &spans[..],
            ),
            (
                Plan::Table,
                AccessQuery {
                    request_id: text("r"),
                    ..Default::default()
                },
                &["SEARCH access_records USING INTEGER PRIMARY KEY (rowid<?)"][..],
            ),
        ];
        for (plan, query, want) in cases {
            let (sql, params) = statement(&query, plan, 10, 10);
            let steps = query_plan(&store.lock(), &sql, &params);
            // The services' list is a subquery of its own: leave it out.
            let steps: Vec<&String> = steps
                .iter()
                .filter(|s| !s.contains("json_each") && !s.starts_with("LIST SUBQUERY"))
                .collect();
            assert_eq!(steps, want, "{plan:?}");
        }
    }

    /// How many records the spans make `query` read, page size aside.
    fn reads(store: &SqliteStore, query: &AccessQuery) -> i64 {
        records_read(&store.lock(), query.from, query.to, query.api.as_deref())
    }

    #[test]
    fn spans_skip_what_cannot_match() {
        let records = records(2000);
        let store = store_with(&records, 23, 64);
        let text = |s: &str| Some(s.to_owned());
        let at = |i| Some(ts_of(&records, i));
        let q = AccessQuery::default;
        assert_eq!(reads(&store, &q()), 2000);
        // Ten old records: the spans around them, and the records written
        // late (40 s) may put one more in.
        let ten = AccessQuery {
            from: at(100),
            to: at(110),
            ..q()
        };
        let read = reads(&store, &ten);
        assert!((10..=3 * 64).contains(&read), "{read}");
        let recent = AccessQuery {
            from: at(1990),
            ..q()
        };
        let read = reads(&store, &recent);
        assert!((10..=2 * 64).contains(&read), "{read}");
        let nope = AccessQuery {
            api: text("nope"),
            ..q()
        };
        assert_eq!(reads(&store, &nope), 0);
        let orders = AccessQuery {
            api: text("orders"),
            ..q()
        };
        assert_eq!(reads(&store, &orders), 2000);

        for (query, plan) in [
            (q(), Plan::Table),
            (ten, Plan::Spans),
            (orders, Plan::Spans),
            (
                AccessQuery {
                    status: Some(200),
                    ..q()
                },
                Plan::Table,
            ),
            (
                AccessQuery {
                    request_id: text("r"),
                    ..q()
                },
                Plan::Table,
            ),
            (
                AccessQuery {
                    status: Some(500),
                    ..q()
                },
                Plan::Exceptional,
            ),
            (
                AccessQuery {
                    outcome: text("denied"),
                    ..q()
                },
                Plan::Exceptional,
            ),
            (
                AccessQuery {
                    request_id: text("r"),
                    reason: text("no_route"),
                    ..q()
                },
                Plan::Exceptional,
            ),
        ] {
            assert_eq!(choose_plan(&query), plan, "{query:?}");
        }
    }

    /// A span whose records name more APIs than its list holds is read for
    /// any API.
    #[test]
    fn a_span_naming_too_many_apis_is_read_for_any() {
        let mut records = records(60);
        for (i, r) in records.iter_mut().enumerate() {
            r.api = Some(format!("{}-{i}", "a".repeat(90)).into());
        }
        let store = store_with(&records, 60, 64);
        let apis: Option<String> = store
            .lock()
            .query_row("SELECT apis FROM access_record_spans", [], |row| row.get(0))
            .unwrap();
        assert_eq!(apis, None);
        let query = AccessQuery {
            api: records[7].api.as_deref().map(str::to_owned),
            ..Default::default()
        };
        let want = expected(&records, &query);
        assert_eq!(want.len(), 1);
        assert_eq!(walk(&store, &query, Plan::Spans, 10), want);
    }

    #[test]
    fn cursors_round_trip_and_reject_anything_else() {
        for id in [1, 9, 0xabc, i64::MAX] {
            assert_eq!(decode_cursor(&encode_cursor(id)).unwrap(), id);
        }
        for bad in [
            "",
            "1.",
            "1.0",
            "2.10",
            "10",
            "1.-5",
            "1.+5",
            "1.ABC",
            "1. 5",
            "1.8000000000000000",
            "1.10000000000000000",
            "1.zz",
            "%%",
        ] {
            assert!(
                matches!(decode_cursor(bad), Err(StoreError::InvalidCursor)),
                "{bad:?}"
            );
        }
    }
}
