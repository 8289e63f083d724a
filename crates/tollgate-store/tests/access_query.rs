//! `Store::query_access_records`, on both databases: filters, pages and cursors, through
//! the public API. (How each plan reads the table is tested in `query.rs`.)

mod common;

use common::Db;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, UNIX_EPOCH};

use tollgate_store::{AccessPage, AccessQuery, Store, StoreError};
use tollgate_telemetry::record::unix_micros;
use tollgate_telemetry::{AccessRecord, AiUsage, Outcome, RecordSink};

/// 2024-05-01T12:00:00Z in Unix microseconds.
const T0: i64 = 1_714_564_800_000_000;

/// Record `n` of a varied stream, about a second after record `n - 1`.
fn record(n: usize) -> AccessRecord {
    let (api, service) = match n % 5 {
        0 | 1 => (Some("orders"), Some("orders-svc")),
        2 => (Some("users"), Some("users-svc")),
        3 => (Some("search"), Some("catalog-svc")),
        _ => (None, None),
    };
    let consumer = [None, Some("acme"), Some("globex")][n % 3];
    let (status, outcome, reason) = match n % 7 {
        0 => (429, Outcome::Denied, Some("rate_limited")),
        1 => (502, Outcome::Error, Some("upstream_unavailable")),
        2 => (500, Outcome::Allowed, None),
        _ => (200, Outcome::Allowed, None),
    };
    // Every 11th was a long request: it arrived long before it was written.
    let late = if n % 11 == 5 { 30_000_000 } else { 0 };
    // Every 4th an AI call; every 8th of those reached no model.
    let ai = (n % 4 == 1).then(|| {
        let (provider, model) = [("openai", "gpt-4o"), ("anthropic", "claude")][n / 4 % 2];
        let reached = n % 32 != 1;
        Box::new(AiUsage {
            ai_provider: Some(provider.to_owned()),
            ai_model: reached.then(|| model.to_owned()),
            tokens_in: n as u64,
            ..AiUsage::default()
        })
    });
    AccessRecord {
        ts: UNIX_EPOCH + Duration::from_micros((T0 + n as i64 * 1_000_000 - late) as u64),
        request_id: format!("req-{n:05}"),
        client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        method: "GET".into(),
        host: "api.example.com".to_owned(),
        path: format!("/{n}"),
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
    }
}

fn store_with(db: &Db, records: &[AccessRecord]) -> Store {
    let store = db.open();
    store
        .access_record_sink()
        .unwrap()
        .write_batch(records)
        .unwrap();
    store
}

/// Every page of `query`, following `next`; checks each page's size.
fn all_pages(store: &Store, query: &AccessQuery) -> Vec<AccessPage> {
    let mut pages = Vec::new();
    let mut query = query.clone();
    loop {
        let page = store.query_access_records(&query).unwrap();
        let limit = match query.limit {
            0 => 100,
            n => n.min(1000),
        };
        assert!(page.items.len() <= limit);
        let next = page.next.clone();
        if next.is_some() {
            assert_eq!(page.items.len(), limit, "only the last page is short");
        }
        pages.push(page);
        match next {
            Some(cursor) => query.cursor = Some(cursor),
            None => return pages,
        }
    }
}

fn request_ids(pages: &[AccessPage]) -> Vec<String> {
    pages
        .iter()
        .flat_map(|page| page.items.iter().map(|r| r.request_id.clone()))
        .collect()
}

/// The request ids of the records `keep` selects, newest first.
fn expected(records: &[AccessRecord], keep: impl Fn(&AccessRecord) -> bool) -> Vec<String> {
    records
        .iter()
        .rev()
        .filter(|r| keep(r))
        .map(|r| r.request_id.clone())
        .collect()
}

fn model(r: &AccessRecord) -> Option<&str> {
    r.ai.as_ref()?.ai_model.as_deref()
}

fn provider(r: &AccessRecord) -> Option<&str> {
    r.ai.as_ref()?.ai_provider.as_deref()
}

fn each_filter_selects_its_records_newest_first(db: &Db) {
    let records: Vec<AccessRecord> = (0..300).map(record).collect();
    let store = store_with(db, &records);
    let ts = |r: &AccessRecord| unix_micros(r.ts);
    let text = |s: &str| Some(s.to_owned());
    let q = || AccessQuery {
        limit: 7,
        ..AccessQuery::default()
    };
    let (from, to) = (T0 + 100_000_000, T0 + 150_000_000);

    type Keep = Box<dyn Fn(&AccessRecord) -> bool>;
    let cases: Vec<(AccessQuery, Keep)> = vec![
        (q(), Box::new(|_| true)),
        (
            AccessQuery {
                from: Some(from),
                ..q()
            },
            Box::new(move |r| ts(r) >= from),
        ),
        (
            AccessQuery {
                to: Some(to),
                ..q()
            },
            Box::new(move |r| ts(r) < to),
        ),
        (
            AccessQuery {
                from: Some(from),
                to: Some(to),
                ..q()
            },
            Box::new(move |r| (from..to).contains(&ts(r))),
        ),
        (
            AccessQuery {
                api: text("orders"),
                ..q()
            },
            Box::new(|r| r.api.as_deref() == Some("orders")),
        ),
        (
            AccessQuery {
                service: text("catalog-svc"),
                ..q()
            },
            Box::new(|r| r.service.as_deref() == Some("catalog-svc")),
        ),
        (
            AccessQuery {
                consumer: text("acme"),
                ..q()
            },
            Box::new(|r| r.consumer.as_deref() == Some("acme")),
        ),
        (
            AccessQuery {
                status: Some(200),
                ..q()
            },
            Box::new(|r| r.status == 200),
        ),
        (
            AccessQuery {
                status: Some(500),
                ..q()
            },
            Box::new(|r| r.status == 500),
        ),
        (
            AccessQuery {
                outcome: text("allowed"),
                ..q()
            },
            Box::new(|r| r.outcome == Outcome::Allowed),
        ),
        (
            AccessQuery {
                outcome: text("denied"),
                ..q()
            },
            Box::new(|r| r.outcome == Outcome::Denied),
        ),
        (
            AccessQuery {
                reason: text("upstream_unavailable"),
                ..q()
            },
            Box::new(|r| r.reason == Some("upstream_unavailable")),
        ),
        (
            AccessQuery {
                request_id: text("req-00123"),
                ..q()
            },
            Box::new(|r| r.request_id == "req-00123"),
        ),
        (
            AccessQuery {
                ai_model: text("claude"),
                ..q()
            },
            Box::new(|r| model(r) == Some("claude")),
        ),
        (
            AccessQuery {
                ai_provider: text("openai"),
                ..q()
            },
            Box::new(|r| provider(r) == Some("openai")),
        ),
        (
            AccessQuery {
                from: Some(from),
                to: Some(to),
                ai_model: text("gpt-4o"),
                consumer: text("acme"),
                ..q()
            },
            Box::new(move |r| {
                (from..to).contains(&ts(r))
                    && model(r) == Some("gpt-4o")
                    && r.consumer.as_deref() == Some("acme")
            }),
        ),
        (
            AccessQuery {
                from: Some(from),
                to: Some(to),
                api: text("orders"),
                consumer: text("globex"),
                status: Some(429),
                outcome: text("denied"),
                reason: text("rate_limited"),
                ..q()
            },
            Box::new(move |r| {
                (from..to).contains(&ts(r))
                    && r.api.as_deref() == Some("orders")
                    && r.consumer.as_deref() == Some("globex")
                    && r.status == 429
            }),
        ),
    ];
    for (query, keep) in cases {
        let want = expected(&records, keep);
        assert!(!want.is_empty(), "a filter that matches nothing: {query:?}");
        assert_eq!(request_ids(&all_pages(&store, &query)), want, "{query:?}");
    }

    // A value no record has.
    for query in [
        AccessQuery {
            consumer: text("nobody"),
            ..q()
        },
        AccessQuery {
            status: Some(418),
            ..q()
        },
        AccessQuery {
            request_id: text("req-99999"),
            ..q()
        },
        AccessQuery {
            ai_model: text("gpt-4o"),
            ai_provider: text("anthropic"),
            ..q()
        },
        AccessQuery {
            from: Some(to),
            to: Some(from),
            ..q()
        },
    ] {
        let page = store.query_access_records(&query).unwrap();
        assert_eq!(
            page,
            AccessPage {
                items: vec![],
                next: None
            },
            "{query:?}"
        );
    }
}

fn a_filter_value_is_never_sql(db: &Db) {
    let records: Vec<AccessRecord> = (0..20).map(record).collect();
    let store = store_with(db, &records);
    for evil in ["' OR 1=1 --", "acme' OR consumer IS NULL OR '", "%", "_"] {
        let query = AccessQuery {
            consumer: Some(evil.to_owned()),
            reason: Some(evil.to_owned()),
            ..AccessQuery::default()
        };
        assert!(store.query_access_records(&query).unwrap().items.is_empty());
        let query = AccessQuery {
            request_id: Some(evil.to_owned()),
            ..AccessQuery::default()
        };
        assert!(store.query_access_records(&query).unwrap().items.is_empty());
        let query = AccessQuery {
            ai_model: Some(evil.to_owned()),
            ..AccessQuery::default()
        };
        assert!(store.query_access_records(&query).unwrap().items.is_empty());
    }
    assert_eq!(store.count_access_records().unwrap(), 20);
}

fn pages_neither_repeat_nor_skip_records_written_meanwhile(db: &Db) {
    let records: Vec<AccessRecord> = (0..95).map(record).collect();
    let store = store_with(db, &records);
    let mut sink = store.access_record_sink().unwrap();
    let mut query = AccessQuery {
        limit: 10,
        ..AccessQuery::default()
    };
    let mut seen = Vec::new();
    let mut written = records.len();
    loop {
        let page = store.query_access_records(&query).unwrap();
        seen.extend(page.items.iter().map(|r| r.request_id.clone()));
        // Newer records arrive between pages: they belong to no later page.
        let newer: Vec<AccessRecord> = (written..written + 3).map(record).collect();
        sink.write_batch(&newer).unwrap();
        written += newer.len();
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, expected(&records, |_| true));
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());
}

/// A page that ends exactly at the last record has no next.
fn a_page_ending_at_the_last_record_has_no_next(db: &Db) {
    let records: Vec<AccessRecord> = (0..20).map(record).collect();
    let store = store_with(db, &records);
    let pages = all_pages(
        &store,
        &AccessQuery {
            limit: 10,
            ..AccessQuery::default()
        },
    );
    assert_eq!(pages.len(), 2);
    assert_eq!(pages[1].items.len(), 10);
}

fn limits_default_to_100_and_stop_at_1000(db: &Db) {
    let records: Vec<AccessRecord> = (0..1100).map(record).collect();
    let store = store_with(db, &records);
    let page = |limit| {
        store
            .query_access_records(&AccessQuery {
                limit,
                ..AccessQuery::default()
            })
            .unwrap()
    };
    assert_eq!(page(0).items.len(), 100);
    assert_eq!(page(1).items.len(), 1);
    assert_eq!(page(1000).items.len(), 1000);
    let largest = page(usize::MAX);
    assert_eq!(largest.items.len(), 1000);
    assert!(largest.next.is_some());
    assert_eq!(largest.items[0].request_id, "req-01099");
}

fn a_cursor_not_from_the_store_is_an_error(db: &Db) {
    let store = store_with(db, &(0..30).map(record).collect::<Vec<_>>());
    let first = store
        .query_access_records(&AccessQuery {
            limit: 10,
            ..AccessQuery::default()
        })
        .unwrap();
    let cursor = first.next.unwrap();
    for bad in [
        String::new(),
        "%%".to_owned(),
        "garbage".to_owned(),
        format!("{cursor}0000000000000000"),
        format!(" {cursor}"),
        format!("{cursor}x"),
        cursor.replace('.', ""),
    ] {
        let query = AccessQuery {
            cursor: Some(bad.clone()),
            ..AccessQuery::default()
        };
        assert!(
            matches!(
                store.query_access_records(&query),
                Err(StoreError::InvalidCursor)
            ),
            "{bad:?}"
        );
    }
    // A cursor stays valid with other filters: it only says where to resume.
    let query = AccessQuery {
        cursor: Some(cursor),
        api: Some("orders".to_owned()),
        ..AccessQuery::default()
    };
    let rest = store.query_access_records(&query).unwrap();
    assert!(rest
        .items
        .iter()
        .all(|r| r.api.as_deref() == Some("orders")));
    assert!(rest.items[0].id < first.items[9].id);
}

fn an_empty_store_has_one_empty_page(db: &Db) {
    let store = db.open();
    for query in [
        AccessQuery::default(),
        AccessQuery {
            from: Some(T0),
            to: Some(T0 + 1),
            ..AccessQuery::default()
        },
        AccessQuery {
            api: Some("orders".to_owned()),
            status: Some(500),
            ..AccessQuery::default()
        },
    ] {
        let page = store.query_access_records(&query).unwrap();
        assert_eq!(
            page,
            AccessPage {
                items: vec![],
                next: None
            }
        );
    }
}

both!(
    each_filter_selects_its_records_newest_first,
    a_filter_value_is_never_sql,
    pages_neither_repeat_nor_skip_records_written_meanwhile,
    a_page_ending_at_the_last_record_has_no_next,
    limits_default_to_100_and_stop_at_1000,
    a_cursor_not_from_the_store_is_an_error,
    an_empty_store_has_one_empty_page,
);
