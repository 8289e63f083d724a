//! Quotas: `limit` requests per calendar day or month (UTC), counted by
//! consumer, client IP, API or a request header like rate limits, and exactly:
//! one counter per subject and period, which survives a restart (see
//! [`crate::counters`]).
//!
//! A day ends at the next midnight UTC, a month on the first of the next
//! month at midnight UTC; the refusal's `Retry-After` says how long that is.
//!
//! Keys: `q|<scope>|<period>|<subject>`, the period written `d2025-03-01` or
//! `m2025-03`, the subject as in [`crate::rate_limit`]. The limit is not part
//! of the key, so raising or lowering it keeps the period's count.
//!
//! The pipeline checks quotas after rate limits: a request a rate limit
//! refuses does not use quota, and one the quota refuses still counts against
//! the rate limits, which keeps throttling a client that hammers on past its
//! quota.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use time::{Date, Month, OffsetDateTime};
use tollgate_config::{Quota, QuotaPeriod};

use crate::counters::{ceil_seconds, unix_seconds, CounterStore};
use crate::counters_cluster::{Fallback, Placement};
use crate::rate_limit::{LimitInput, Subject};
use crate::Denial;

/// A quota, compiled.
#[derive(Debug)]
pub struct QuotaPolicy {
    /// `q|<scope>|`
    prefix: Box<str>,
    subject: Subject,
    limit: u64,
    period: QuotaPeriod,
    placement: Placement,
}

impl QuotaPolicy {
    /// Compiles the quota declared at `scope` (`global`, `service:<name>`,
    /// `api:<name>`): every API that inherits it shares its counters.
    pub fn compile(quota: &Quota, scope: &str) -> QuotaPolicy {
        QuotaPolicy {
            prefix: format!("q|{scope}|").into_boxed_str(),
            subject: Subject::compile(&quota.by),
            limit: quota.limit,
            period: quota.period,
            placement: Placement::new(quota.scope, quota.on_store_failure),
        }
    }

    /// Counts the request against the quota of the current period. When the
    /// shared store fails, the quota follows its `on_store_failure` (see
    /// [`crate::counters_cluster`]).
    pub async fn check(
        &self,
        store: &dyn CounterStore,
        input: &LimitInput<'_>,
    ) -> Result<(), Denial> {
        self.check_at(store, input, SystemTime::now()).await
    }

    /// [`check`](Self::check) at a given time.
    pub async fn check_at(
        &self,
        store: &dyn CounterStore,
        input: &LimitInput<'_>,
        now: SystemTime,
    ) -> Result<(), Denial> {
        let period = Period::at(self.period, unix_seconds(now));
        let mut key = String::with_capacity(
            self.prefix.len() + "d2025-03-01|".len() + self.subject.max_len(input),
        );
        key.push_str(&self.prefix);
        period.write_label(&mut key);
        key.push('|');
        self.subject.write(&mut key, input);
        let first = self.placement.first(store);
        let (hit, limit) = match first.acquire_quota(&key, self.limit, period.ends_at).await {
            Ok(hit) => (hit, self.limit),
            Err(error) => match self.placement.on_failure(store, "quota", &error) {
                Fallback::Allow => return Ok(()),
                Fallback::Deny(denial) => return Err(denial),
                Fallback::Local(local) => {
                    let limit = local.share(self.limit);
                    match local.store.acquire_quota(&key, limit, period.ends_at).await {
                        Ok(hit) => (hit, limit),
                        Err(error) => {
                            tracing::warn!(%error, "the node's own counters failed");
                            return Ok(());
                        }
                    }
                }
            },
        };
        if hit.allowed {
            return Ok(());
        }
        let ends_at = UNIX_EPOCH + Duration::from_secs(period.ends_at.max(0).unsigned_abs());
        let retry_after = ceil_seconds(ends_at.duration_since(now).unwrap_or_default()).max(1);
        let per = match self.period {
            QuotaPeriod::Day => "day",
            QuotaPeriod::Month => "month",
        };
        Err(
            Denial::quota_exceeded(format!("quota exceeded: {limit} requests per {per}"))
                .with_header(http::header::RETRY_AFTER, HeaderValue::from(retry_after)),
        )
    }
}

/// The calendar period a moment falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Period {
    /// The period's first day (the first of the month for a month).
    start: Date,
    kind: QuotaPeriod,
    /// Unix seconds: midnight UTC after the period's last day.
    pub(crate) ends_at: i64,
}

impl Period {
    /// The period of `kind` that contains `now` (Unix seconds), in UTC.
    pub(crate) fn at(kind: QuotaPeriod, now: i64) -> Period {
        let today = OffsetDateTime::from_unix_timestamp(now)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .date();
        let (start, next) = match kind {
            QuotaPeriod::Day => (today, today.next_day()),
            QuotaPeriod::Month => {
                let first = today.replace_day(1).expect("every month has a first day");
                let next = match first.month() {
                    Month::December => {
                        Date::from_calendar_date(first.year() + 1, Month::January, 1)
                    }
                    month => Date::from_calendar_date(first.year(), month.next(), 1),
                };
                (first, next.ok())
            }
        };
        let ends_at = next.map_or(i64::MAX, |next| {
            next.midnight().assume_utc().unix_timestamp()
        });
        Period {
            start,
            kind,
            ends_at,
        }
    }

    /// `d2025-03-01` or `m2025-03`. Written digit by digit: `write!` with
    /// padding cost ~570 instructions on every quota and budget check.
    pub(crate) fn write_label(&self, key: &mut String) {
        key.push(match self.kind {
            QuotaPeriod::Day => 'd',
            QuotaPeriod::Month => 'm',
        });
        push_padded(key, self.start.year(), 4);
        key.push('-');
        push_padded(key, i32::from(u8::from(self.start.month())), 2);
        if self.kind == QuotaPeriod::Day {
            key.push('-');
            push_padded(key, i32::from(self.start.day()), 2);
        }
    }
}

/// `n` as `format!("{n:0width$}")` writes it.
fn push_padded(key: &mut String, n: i32, width: u32) {
    match u32::try_from(n) {
        Ok(n) if n < 10u32.pow(width) => {
            for place in (0..width).rev() {
                let digit = n / 10u32.pow(place) % 10;
                key.push(char::from(b'0' + digit as u8));
            }
        }
        // Negative years, or past 9999: never in a running gateway's clock.
        _ => {
            use std::fmt::Write as _;
            let width = width as usize;
            let _ = write!(key, "{n:0width$}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use http::{HeaderMap, StatusCode};
    use time::macros::datetime;

    use super::*;
    use crate::counters::MemoryCounters;
    use tollgate_config::LimitKey;

    fn unix(t: OffsetDateTime) -> i64 {
        t.unix_timestamp()
    }

    fn label(period: &Period) -> String {
        let mut label = String::new();
        period.write_label(&mut label);
        label
    }

    #[test]
    fn labels_are_padded_as_format_pads_them() {
        for (n, width) in [
            (0, 2),
            (7, 2),
            (12, 2),
            (31, 2),
            (5, 4),
            (999, 4),
            (2025, 4),
            (9999, 4),
            (10_000, 4),
            (-5, 4),
        ] {
            let mut padded = String::from("m");
            push_padded(&mut padded, n, width);
            assert_eq!(padded, format!("m{n:0w$}", w = width as usize));
        }
        let period = Period::at(QuotaPeriod::Month, unix(datetime!(0987-06-05 4:00 UTC)));
        assert_eq!(label(&period), "m0987-06");
    }

    #[test]
    fn days_end_at_the_next_midnight_utc() {
        for (now, start, end) in [
            (
                datetime!(2025-03-14 15:09:26 UTC),
                "d2025-03-14",
                datetime!(2025-03-15 0:00 UTC),
            ),
            // A day starts at midnight exactly, and ends one second after 23:59:59.
            (
                datetime!(2025-03-14 0:00 UTC),
                "d2025-03-14",
                datetime!(2025-03-15 0:00 UTC),
            ),
            (
                datetime!(2025-03-14 23:59:59 UTC),
                "d2025-03-14",
                datetime!(2025-03-15 0:00 UTC),
            ),
            (
                datetime!(2024-02-28 12:00 UTC),
                "d2024-02-28",
                datetime!(2024-02-29 0:00 UTC),
            ),
            (
                datetime!(2025-12-31 23:00 UTC),
                "d2025-12-31",
                datetime!(2026-01-01 0:00 UTC),
            ),
        ] {
            let period = Period::at(QuotaPeriod::Day, unix(now));
            assert_eq!(label(&period), start, "{now}");
            assert_eq!(period.ends_at, unix(end), "{now}");
        }
    }

    #[test]
    fn months_end_on_the_first_of_the_next_month_utc() {
        for (now, start, end) in [
            (
                datetime!(2025-03-14 15:09:26 UTC),
                "m2025-03",
                datetime!(2025-04-01 0:00 UTC),
            ),
            (
                datetime!(2025-03-01 0:00 UTC),
                "m2025-03",
                datetime!(2025-04-01 0:00 UTC),
            ),
            (
                datetime!(2024-02-29 23:59:59 UTC),
                "m2024-02",
                datetime!(2024-03-01 0:00 UTC),
            ),
            (
                datetime!(2025-12-31 23:59:59 UTC),
                "m2025-12",
                datetime!(2026-01-01 0:00 UTC),
            ),
        ] {
            let period = Period::at(QuotaPeriod::Month, unix(now));
            assert_eq!(label(&period), start, "{now}");
            assert_eq!(period.ends_at, unix(end), "{now}");
        }
    }

    fn quota(limit: u64, period: QuotaPeriod, by: &str) -> QuotaPolicy {
        QuotaPolicy::compile(
            &Quota {
                limit,
                period,
                by: by.parse().unwrap(),
                scope: tollgate_config::LimitScope::Cluster,
                on_store_failure: None,
            },
            "api:orders-v1",
        )
    }

    fn at(t: OffsetDateTime) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(u64::try_from(t.unix_timestamp_nanos()).unwrap())
    }

    fn input<'a>(consumer: Option<&'a str>, headers: &'a HeaderMap) -> LimitInput<'a> {
        LimitInput {
            consumer,
            client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            api: "orders",
            headers,
        }
    }

    #[tokio::test]
    async fn refuses_past_the_limit_until_the_period_ends() {
        let quota = quota(3, QuotaPeriod::Day, "consumer");
        let store = MemoryCounters::new();
        let headers = HeaderMap::new();
        let alice = input(Some("alice"), &headers);
        let now = at(datetime!(2025-03-14 23:59:58.5 UTC));
        for _ in 0..3 {
            assert!(quota.check_at(&store, &alice, now).await.is_ok());
        }
        let denial = quota.check_at(&store, &alice, now).await.unwrap_err();
        assert_eq!(denial.code, "quota_exceeded");
        assert_eq!(denial.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            denial.headers,
            [(http::header::RETRY_AFTER, HeaderValue::from(2u64))]
        );
        // Another subject has its own count; the next day starts afresh.
        assert!(quota
            .check_at(&store, &input(Some("bob"), &headers), now)
            .await
            .is_ok());
        let tomorrow = at(datetime!(2025-03-15 0:00 UTC));
        assert!(quota.check_at(&store, &alice, tomorrow).await.is_ok());
    }

    #[tokio::test]
    async fn retry_after_is_at_least_one_second() {
        let quota = quota(1, QuotaPeriod::Month, "ip");
        let store = MemoryCounters::new();
        let headers = HeaderMap::new();
        let now = at(datetime!(2025-03-31 23:59:59.999 UTC));
        assert!(quota
            .check_at(&store, &input(None, &headers), now)
            .await
            .is_ok());
        let denial = quota
            .check_at(&store, &input(None, &headers), now)
            .await
            .unwrap_err();
        assert_eq!(
            denial.headers,
            [(http::header::RETRY_AFTER, HeaderValue::from(1u64))]
        );
    }

    #[tokio::test]
    async fn counts_persist_under_a_key_per_scope_period_and_subject() {
        let quota = quota(5, QuotaPeriod::Month, "consumer");
        let store = MemoryCounters::new();
        let headers = HeaderMap::new();
        let now = at(datetime!(2025-03-14 12:00 UTC));
        quota
            .check_at(&store, &input(Some("alice"), &headers), now)
            .await
            .unwrap();
        quota
            .check_at(&store, &input(None, &headers), now)
            .await
            .unwrap();
        let mut keys: Vec<_> = store
            .take_dirty(0)
            .into_iter()
            .map(|c| (c.key, c.expires_at, c.count))
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                (
                    "q|api:orders-v1|m2025-03|consumer:alice".to_owned(),
                    unix(datetime!(2025-04-01 0:00 UTC)),
                    1
                ),
                (
                    "q|api:orders-v1|m2025-03|ip:192.0.2.7".to_owned(),
                    unix(datetime!(2025-04-01 0:00 UTC)),
                    1
                ),
            ]
        );
    }

    #[tokio::test]
    async fn each_on_store_failure_mode_when_the_shared_store_fails() {
        use tollgate_config::{LimitScope, OnStoreFailure};
        let headers = HeaderMap::new();
        let alice = input(Some("alice"), &headers);
        let now = at(datetime!(2025-03-14 12:00 UTC));
        let compile = |mode| {
            QuotaPolicy::compile(
                &Quota {
                    limit: 5,
                    period: QuotaPeriod::Day,
                    by: LimitKey::Consumer,
                    scope: LimitScope::Cluster,
                    on_store_failure: mode,
                },
                "api:orders",
            )
        };
        let passing = |quota: QuotaPolicy, store: crate::counters_cluster::ClusterCounters| async move {
            let mut passed = 0;
            let mut codes = Vec::new();
            for _ in 0..10 {
                match quota.check_at(&store, &alice, now).await {
                    Ok(()) => passed += 1,
                    Err(denial) => codes.push(denial.code),
                }
            }
            (passed, codes)
        };
        for (mode, expected) in [
            // 5 per day across 2 live nodes: 3 on this one.
            (None, (3, vec!["quota_exceeded"; 7])),
            (Some(OnStoreFailure::Allow), (10, vec![])),
            (
                Some(OnStoreFailure::Deny),
                (0, vec!["limit_unavailable"; 10]),
            ),
        ] {
            let (shared, store) = crate::counters_cluster::tests::cluster(2);
            shared.set_failing(true);
            assert_eq!(passing(compile(mode), store).await, expected, "{mode:?}");
        }
        // Healed: the shared count applies again.
        let (shared, store) = crate::counters_cluster::tests::cluster(2);
        let quota = compile(None);
        shared.set_failing(true);
        assert!(quota.check_at(&store, &alice, now).await.is_ok());
        shared.set_failing(false);
        let mut passed = 0;
        for _ in 0..10 {
            passed += usize::from(quota.check_at(&store, &alice, now).await.is_ok());
        }
        assert_eq!(passed, 5);
    }
}
