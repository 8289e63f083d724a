//! `GET /admin/v1/analytics`: access record aggregates in time buckets —
//! requests, errors, denials by reason, latency percentiles, bytes — and the
//! busiest consumers and APIs, plus, when the range holds AI calls, an `ai`
//! object of their tokens and spend by model, provider, consumer and bucket
//! (left out when it holds none), computed by the store
//! ([`Store::analytics`](tollgate_store::Store::analytics)).
//!
//! Parameters: `from` and `to` (RFC 3339 or Unix seconds, as for `/logs`;
//! the last 24 hours by default), `bucket` (`minute`, `hour` — the default —
//! or `day`), the filters `api`, `service` and `consumer`, and `top` (how
//! many consumers and APIs to rank, 0 to 100, default 10). The range is
//! widened to whole buckets, and may span at most
//! [`AnalyticsQuery::MAX_BUCKETS`]. See `docs/admin-api.md`.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::Json;
use tollgate_store::{Analytics, AnalyticsQuery, BucketWidth, StoreError};

use crate::api::{parse_time, AdminApi, ApiError};

/// The range when the request gives neither end: the day before now.
const DEFAULT_SPAN_MICROS: i64 = 24 * 3_600_000_000;
const DEFAULT_TOP: usize = 10;

pub async fn handler(
    State(api): State<AdminApi>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Analytics>, ApiError> {
    let query = parse(&params, now_micros())?;
    let store = api.store.clone();
    let answer = tokio::task::spawn_blocking(move || store.analytics(&query))
        .await
        .map_err(ApiError::internal)?
        .map_err(|error| match error {
            StoreError::TooManyBuckets { buckets, max } => ApiError::bad_request(format!(
                "the range spans {buckets} buckets, more than {max}: \
                 shorten it or use a wider bucket"
            )),
            other => ApiError::internal(other),
        })?;
    Ok(Json(answer))
}

/// The store query of a request's parameters, `now` in Unix microseconds.
fn parse(params: &HashMap<String, String>, now: i64) -> Result<AnalyticsQuery, ApiError> {
    let (mut from, mut to) = (None, None);
    let mut query = AnalyticsQuery::new(0, 0, BucketWidth::Hour);
    query.top = DEFAULT_TOP;
    for (key, value) in params {
        match key.as_str() {
            "from" => from = Some(parse_time(key, value)?),
            "to" => to = Some(parse_time(key, value)?),
            "bucket" => {
                query.bucket = BucketWidth::parse(value)
                    .ok_or_else(|| ApiError::bad_request("bucket must be minute, hour or day"))?
            }
            "api" => query.api = Some(value.clone()),
            "service" => query.service = Some(value.clone()),
            "consumer" => query.consumer = Some(value.clone()),
            "top" => {
                query.top = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n <= AnalyticsQuery::MAX_TOP)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "top must be 0 to {}",
                            AnalyticsQuery::MAX_TOP
                        ))
                    })?
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{other}`: use from, to, bucket, api, service, consumer, top"
                )))
            }
        }
    }
    query.to = to.unwrap_or(now);
    query.from = from.unwrap_or(query.to.saturating_sub(DEFAULT_SPAN_MICROS));
    if query.from >= query.to {
        return Err(ApiError::bad_request("from must be before to"));
    }
    Ok(query)
}

fn now_micros() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// `GET /admin/v1/analytics/deprecated[?from=&to=]`: for every deprecated
/// or retired API, who called it in the range (default: the last 30 days),
/// busiest first — the consumers its owners must tell before the sunset.
pub async fn deprecated_usage(
    State(api): State<AdminApi>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let now = time::OffsetDateTime::now_utc();
    let now_micros = i64::try_from(now.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX);
    let mut from = now_micros - 30 * 86_400 * 1_000_000;
    let mut to = now_micros + 1;
    for (key, value) in &params {
        match key.as_str() {
            "from" => from = parse_time(key, value)?,
            "to" => to = parse_time(key, value)?,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{other}`: use from, to"
                )))
            }
        }
    }
    let config = api.config();
    let apis: Vec<&tollgate_config::Api> = config
        .apis
        .iter()
        .filter(|a| {
            matches!(
                a.lifecycle,
                tollgate_config::Lifecycle::Deprecated | tollgate_config::Lifecycle::Retired
            )
        })
        .collect();
    let names: Vec<String> = apis.iter().map(|a| a.name.clone()).collect();
    let store = api.store.clone();
    let usage = tokio::task::spawn_blocking(move || {
        names
            .iter()
            .map(|name| store.api_usage_by_consumer(name, from, to))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let items: Vec<serde_json::Value> = apis
        .iter()
        .zip(usage)
        .map(|(api, consumers)| {
            serde_json::json!({
                "api": api.name,
                "version": api.version,
                "lifecycle": api.lifecycle,
                "sunset": api.sunset,
                "successor": api.successor,
                "requests": consumers.iter().map(|c| c.requests).sum::<u64>(),
                "consumers": consumers,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "items": items })))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_342_400_000_000;

    fn parsed(pairs: &[(&str, &str)]) -> Result<AnalyticsQuery, ApiError> {
        let params = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(&params, NOW)
    }

    #[test]
    fn defaults_to_the_last_day_by_hour() {
        let q = parsed(&[]).ok().unwrap();
        assert_eq!((q.from, q.to), (NOW - DEFAULT_SPAN_MICROS, NOW));
        assert_eq!(q.bucket, BucketWidth::Hour);
        assert_eq!(q.top, DEFAULT_TOP);
        assert!(q.api.is_none() && q.service.is_none() && q.consumer.is_none());

        // One end given: the day before `to`, or from `from` to now.
        let q = parsed(&[("to", "2026-12-01T00:00:00Z")]).ok().unwrap();
        assert_eq!(q.to - q.from, DEFAULT_SPAN_MICROS);
        let q = parsed(&[("from", "1796000000")]).ok().unwrap();
        assert_eq!((q.from, q.to), (1_796_000_000_000_000, NOW));
    }

    #[test]
    fn reads_every_parameter() {
        let q = parsed(&[
            ("from", "2026-12-03T00:00:00Z"),
            ("to", "1796342400"),
            ("bucket", "minute"),
            ("api", "orders"),
            ("service", "orders-svc"),
            ("consumer", "acme"),
            ("top", "0"),
        ])
        .ok()
        .unwrap();
        assert_eq!((q.from, q.to), (NOW - DEFAULT_SPAN_MICROS, NOW));
        assert_eq!(q.bucket, BucketWidth::Minute);
        assert_eq!(q.api.as_deref(), Some("orders"));
        assert_eq!(q.service.as_deref(), Some("orders-svc"));
        assert_eq!(q.consumer.as_deref(), Some("acme"));
        assert_eq!(q.top, 0);
    }

    #[test]
    fn refuses_bad_parameters() {
        for bad in [
            &[("bucket", "week")][..],
            &[("top", "101")],
            &[("top", "-1")],
            &[("from", "yesterday")],
            &[("to", "soon")],
            &[("from", "1796342400"), ("to", "1796342400")],
            &[("from", "1796342401"), ("to", "1796342400")],
            &[("colour", "blue")],
            &[("limit", "10")],
        ] {
            assert!(parsed(bad).is_err(), "{bad:?}");
        }
    }
}
