//! AI limits and budgets: tokens and requests per minute, USD per day or
//! month, counted by consumer, IP, API or header like every limit, in the
//! same [`CounterStore`].
//!
//! **Tokens** are reserved before the call — the prompt's estimate plus the
//! most the answer may use — and settled after it with the real count: the
//! unused part is given back. A reservation that turns out too small is
//! charged on top when the limit still has room, and otherwise forgiven (the
//! next calls pay for it through the reservation they make).
//!
//! **Spend** is checked before the call (refused with 402
//! `budget_exceeded` once the period's spend reached the budget) and charged
//! after it, in micro-USD, so one call may take the spend past the budget:
//! the call after it is refused.
//!
//! Keys: `ai|<scope>|t|<subject>` (tokens), `ai|<scope>|r|<subject>`
//! (requests), `ab|<scope>|<period>|<subject>` (spend). When the shared
//! store fails, each follows its `on_store_failure`, as rate limits do (see
//! [`crate::counters_cluster`]); a reservation or a charge is settled in the
//! store it was made in.

use std::time::{Duration, SystemTime};

use http::HeaderValue;
use tollgate_config::{AiBudget, AiLimits, QuotaPeriod};

use crate::counters::{ceil_seconds, unix_seconds, CounterStore, Rate, SpendHold};
use crate::counters_cluster::{Fallback, Placement};
use crate::quota::Period;
use crate::rate_limit::{LimitInput, Subject};
use crate::Denial;

const MINUTE: Duration = Duration::from_secs(60);

/// `ai_limits`, compiled.
#[derive(Debug)]
pub struct AiLimitsPolicy {
    /// `ai|<scope>|`
    prefix: Box<str>,
    subject: Subject,
    tokens: Option<(u64, Rate)>,
    requests: Option<(u64, Rate)>,
    placement: Placement,
}

/// Where a hit of an AI limit was counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Where {
    /// Where the limit counts first (the shared store for a `cluster` one).
    First,
    /// In this node's memory, as the shared store failed.
    Local,
}

impl Where {
    fn store(self, placement: Placement, store: &dyn CounterStore) -> &dyn CounterStore {
        match self {
            Where::First => placement.first(store),
            Where::Local => store.node_local().map_or(store, |local| local.store),
        }
    }
}

/// One hit counted: the outcome, the rate it was judged at and where.
type Counted = Option<(crate::counters::RateHit, Rate, Where)>;

/// Tokens held for one call, to settle once its usage is known.
#[derive(Debug)]
pub struct TokenReservation {
    key: String,
    rate: Rate,
    reserved: u64,
    placement: Placement,
    counted: Where,
}

impl AiLimitsPolicy {
    /// Compiles the limits declared at `scope` (`global`, `api:<name>`…).
    pub fn compile(limits: &AiLimits, scope: &str) -> AiLimitsPolicy {
        let per_minute = |limit: Option<u64>| limit.map(|l| (l, Rate::per_window(l, MINUTE)));
        AiLimitsPolicy {
            prefix: format!("ai|{scope}|").into_boxed_str(),
            subject: Subject::compile(&limits.by),
            tokens: per_minute(limits.tokens_per_minute),
            requests: per_minute(limits.requests_per_minute),
            placement: Placement::new(limits.scope, limits.on_store_failure),
        }
    }

    fn key(&self, kind: char, input: &LimitInput<'_>) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 2 + self.subject.max_len(input));
        key.push_str(&self.prefix);
        key.push(kind);
        key.push('|');
        self.subject.write(&mut key, input);
        key
    }

    /// Counts `n` hits against `key` where the limit counts, falling back
    /// per its `on_store_failure`: `Ok(None)` when the hit is not counted
    /// (the store failed and the limit allows).
    async fn acquire(
        &self,
        store: &dyn CounterStore,
        key: &str,
        (limit, rate): (u64, Rate),
        n: u64,
        now_us: u64,
    ) -> Result<Counted, Denial> {
        match self
            .placement
            .first(store)
            .acquire_rate_n(key, rate, n, now_us)
            .await
        {
            Ok(hit) => Ok(Some((hit, rate, Where::First))),
            Err(error) => match self.placement.on_failure(store, "AI limit", &error) {
                Fallback::Allow => Ok(None),
                Fallback::Deny(denial) => Err(denial),
                Fallback::Local(local) => {
                    let rate = local.rate(limit, MINUTE);
                    match local.store.acquire_rate_n(key, rate, n, now_us).await {
                        Ok(hit) => Ok(Some((hit, rate, Where::Local))),
                        Err(error) => {
                            tracing::warn!(%error, "the node's own counters failed");
                            Ok(None)
                        }
                    }
                }
            },
        }
    }

    /// Counts one request and reserves `tokens` for it; refuses with 429
    /// `rate_limited` (and `Retry-After`) when either limit has no room.
    pub async fn reserve(
        &self,
        store: &dyn CounterStore,
        input: &LimitInput<'_>,
        tokens: u64,
    ) -> Result<Option<TokenReservation>, Denial> {
        let now_us = now_us();
        let mut counted_request = None;
        if let Some((limit, rate)) = self.requests {
            let key = self.key('r', input);
            match self.acquire(store, &key, (limit, rate), 1, now_us).await? {
                Some((hit, rate, _)) if !hit.allowed => {
                    let wait = hit.until_next(rate, hit.at_us);
                    return Err(refusal(
                        format!(
                            "AI request rate exceeded: {} requests per minute",
                            rate.burst
                        ),
                        wait,
                    ));
                }
                Some((_, rate, counted)) => counted_request = Some((key, rate, counted)),
                None => {}
            }
        }
        let Some((limit, rate)) = self.tokens else {
            return Ok(None);
        };
        if tokens > limit {
            self.give_back(store, counted_request).await;
            return Err(Denial::rate_limited(format!(
                "the request may use up to {tokens} tokens, more than the limit of {limit} tokens per minute; ask for fewer output tokens"
            )));
        }
        let key = self.key('t', input);
        let hit = match self
            .acquire(store, &key, (limit, rate), tokens, now_us)
            .await
        {
            Ok(hit) => hit,
            Err(denial) => {
                self.give_back(store, counted_request).await;
                return Err(denial);
            }
        };
        match hit {
            Some((hit, rate, _)) if !hit.allowed => {
                self.give_back(store, counted_request).await;
                // Room for `tokens` comes back `tokens` intervals after the TAT
                // falls to now + tolerance.
                let needed = rate.interval_us.saturating_mul(tokens);
                let earliest = hit
                    .tat
                    .saturating_add(needed)
                    .saturating_sub(rate.tolerance_us());
                let wait = Duration::from_micros(earliest.saturating_sub(hit.at_us));
                Err(refusal(
                    format!("AI token rate exceeded: {} tokens per minute", rate.burst),
                    wait,
                ))
            }
            Some((_, rate, counted)) => Ok(Some(TokenReservation {
                key,
                rate,
                reserved: tokens,
                placement: self.placement,
                counted,
            })),
            None => Ok(None),
        }
    }

    async fn give_back(&self, store: &dyn CounterStore, counted: Option<(String, Rate, Where)>) {
        if let Some((key, rate, counted)) = counted {
            let target = counted.store(self.placement, store);
            if let Err(error) = target.release_rate(&key, rate).await {
                tracing::warn!(%error, "AI request count not given back");
            }
        }
    }
}

impl TokenReservation {
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Settles the reservation with the tokens the call really used, in
    /// the store it was made in (`store` is the one given to
    /// [`AiLimitsPolicy::reserve`]).
    pub async fn settle(self, store: &dyn CounterStore, used: u64) {
        let store = self.counted.store(self.placement, store);
        let result = if used < self.reserved {
            store
                .release_rate_n(&self.key, self.rate, self.reserved - used)
                .await
        } else if used > self.reserved {
            store
                .acquire_rate_n(&self.key, self.rate, used - self.reserved, now_us())
                .await
                .map(|_| ())
        } else {
            Ok(())
        };
        if let Err(error) = result {
            tracing::warn!(%error, "AI token reservation not settled");
        }
    }
}

/// How long an AI call waits for the calls in flight that hold a
/// budget's remainder to settle before it is refused with 429.
pub const PENDING_WAIT: Duration = Duration::from_secs(10);

/// `ai_budget`, compiled.
#[derive(Debug)]
pub struct AiBudgetPolicy {
    /// `ab|<scope>|`
    prefix: Box<str>,
    subject: Subject,
    limit_micro_usd: u64,
    usd: f64,
    period: QuotaPeriod,
    placement: Placement,
}

/// Where one call's cost is charged.
#[derive(Debug)]
pub struct BudgetCharge {
    key: String,
    expires_at: i64,
    placement: Placement,
    counted: Where,
    /// What was added to the spend before the call, settled by
    /// [`charge`](Self::charge).
    reserved: u64,
}

impl AiBudgetPolicy {
    pub fn compile(budget: &AiBudget, scope: &str) -> AiBudgetPolicy {
        AiBudgetPolicy {
            prefix: format!("ab|{scope}|").into_boxed_str(),
            subject: Subject::compile(&budget.by),
            limit_micro_usd: (budget.usd * 1e6).round() as u64,
            usd: budget.usd,
            period: budget.period,
            placement: Placement::new(budget.scope, budget.on_store_failure),
        }
    }

    /// Refuses with 402 `budget_exceeded` when the period's spend reached
    /// the budget; otherwise holds `reserve` (micro-USD: the most the call
    /// can cost, as far as the gateway can bound it) against the budget,
    /// atomically with the check, and says where to settle the call's real
    /// cost. Calls running at once on any node see each other's holds:
    /// while they hold what remains, a call waits for them to settle (up
    /// to [`PENDING_WAIT`], then 429 `rate_limited`), so that with holds
    /// that bound their calls the budget is overrun by at most the last
    /// call admitted.
    pub async fn check(
        &self,
        store: &dyn CounterStore,
        input: &LimitInput<'_>,
        reserve: u64,
    ) -> Result<Option<BudgetCharge>, Denial> {
        let now = SystemTime::now();
        let period = Period::at(self.period, unix_seconds(now));
        let mut key = String::with_capacity(
            self.prefix.len() + "d2025-03-01|".len() + self.subject.max_len(input),
        );
        key.push_str(&self.prefix);
        period.write_label(&mut key);
        key.push('|');
        self.subject.write(&mut key, input);
        let first = self.placement.first(store);
        let waiting_since = std::time::Instant::now();
        let mut pause = Duration::from_millis(5);
        let (hold, counted) = loop {
            let (hold, counted) = match first
                .hold_spend(&key, reserve, self.limit_micro_usd, period.ends_at)
                .await
            {
                Ok(hold) => (hold, Where::First),
                Err(error) => match self.placement.on_failure(store, "AI budget", &error) {
                    Fallback::Allow => return Ok(None),
                    Fallback::Deny(denial) => return Err(denial),
                    Fallback::Local(local) => match local
                        .store
                        .hold_spend(
                            &key,
                            reserve,
                            local.share(self.limit_micro_usd),
                            period.ends_at,
                        )
                        .await
                    {
                        Ok(hold) => (hold, Where::Local),
                        Err(error) => {
                            tracing::warn!(%error, "the node's own counters failed");
                            return Ok(None);
                        }
                    },
                },
            };
            if hold != SpendHold::Pending {
                break (hold, counted);
            }
            if waiting_since.elapsed() >= PENDING_WAIT {
                return Err(refusal(
                    "the AI budget's remainder is held by calls in flight".to_owned(),
                    Duration::from_secs(1),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        };
        if let SpendHold::Spent(_) = hold {
            let ends_at =
                SystemTime::UNIX_EPOCH + Duration::from_secs(period.ends_at.max(0).unsigned_abs());
            let retry_after = ceil_seconds(ends_at.duration_since(now).unwrap_or_default()).max(1);
            let per = match self.period {
                QuotaPeriod::Day => "day",
                QuotaPeriod::Month => "month",
            };
            return Err(Denial::budget_exceeded(format!(
                "the AI budget of {} USD per {per} is spent",
                self.usd
            ))
            .with_header(http::header::RETRY_AFTER, HeaderValue::from(retry_after)));
        }
        Ok(Some(BudgetCharge {
            key,
            expires_at: period.ends_at,
            placement: self.placement,
            counted,
            reserved: reserve,
        }))
    }
}

impl BudgetCharge {
    /// Ends the hold and adds the call's real cost (0 for a call that
    /// failed), where the budget was checked (`store` is the one given to
    /// [`AiBudgetPolicy::check`]); if the shared store fails now, in this
    /// node's memory under `on_store_failure: local` (the hold in Redis
    /// then stays until the period ends: the budget errs on the safe side).
    pub async fn charge(self, store: &dyn CounterStore, micro_usd: u64) {
        let target = self.counted.store(self.placement, store);
        let Err(error) = target
            .settle_spend(&self.key, self.reserved, micro_usd, self.expires_at)
            .await
        else {
            return;
        };
        if self.counted == Where::First && micro_usd > 0 {
            if let Fallback::Local(local) = self.placement.on_failure(store, "AI budget", &error) {
                if local
                    .store
                    .add_total(&self.key, micro_usd, self.expires_at)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
        }
        tracing::debug!(%error, "AI spend not counted: counter store failed");
    }
}

fn refusal(message: String, wait: Duration) -> Denial {
    Denial::rate_limited(message).with_header(
        http::header::RETRY_AFTER,
        HeaderValue::from(ceil_seconds(wait).max(1)),
    )
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use http::HeaderMap;
    use tollgate_config::LimitKey;

    use super::*;
    use crate::counters::MemoryCounters;

    fn input<'a>(consumer: &'a str, headers: &'a HeaderMap) -> LimitInput<'a> {
        LimitInput {
            consumer: Some(consumer),
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            api: "llm",
            headers,
        }
    }

    #[tokio::test]
    async fn tokens_are_reserved_then_settled() {
        let store = MemoryCounters::new();
        let headers = HeaderMap::new();
        let policy = AiLimitsPolicy::compile(
            &AiLimits {
                tokens_per_minute: Some(1000),
                requests_per_minute: None,
                by: LimitKey::Consumer,
                scope: tollgate_config::LimitScope::Cluster,
                on_store_failure: None,
            },
            "api:llm",
        );
        let first = policy
            .reserve(&store, &input("a", &headers), 800)
            .await
            .unwrap()
            .unwrap();
        // Another consumer has its own counter.
        assert!(policy
            .reserve(&store, &input("b", &headers), 800)
            .await
            .is_ok());
        let refused = policy
            .reserve(&store, &input("a", &headers), 300)
            .await
            .unwrap_err();
        assert_eq!(refused.code, "rate_limited");
        assert!(refused
            .headers
            .iter()
            .any(|(name, _)| name == http::header::RETRY_AFTER));
        // The call used 100 of its 800: 700 come back, and 300 fit again.
        first.settle(&store, 100).await;
        assert!(policy
            .reserve(&store, &input("a", &headers), 300)
            .await
            .is_ok());
        // More than the limit can never be reserved.
        let too_big = policy
            .reserve(&store, &input("c", &headers), 1001)
            .await
            .unwrap_err();
        assert!(
            too_big.message.contains("more than the limit"),
            "{too_big:?}"
        );
    }

    #[tokio::test]
    async fn a_refused_token_reservation_gives_its_request_back() {
        let store = MemoryCounters::new();
        let headers = HeaderMap::new();
        let policy = AiLimitsPolicy::compile(
            &AiLimits {
                tokens_per_minute: Some(100),
                requests_per_minute: Some(2),
                by: LimitKey::Consumer,
                scope: tollgate_config::LimitScope::Cluster,
                on_store_failure: None,
            },
            "global",
        );
        policy
            .reserve(&store, &input("a", &headers), 100)
            .await
            .unwrap();
        // Refused for tokens: the request count is given back, so one more
        // request still fits once tokens allow.
        assert!(policy
            .reserve(&store, &input("a", &headers), 50)
            .await
            .is_err());
        let small = AiLimitsPolicy::compile(
            &AiLimits {
                tokens_per_minute: None,
                requests_per_minute: Some(2),
                by: LimitKey::Consumer,
                scope: tollgate_config::LimitScope::Cluster,
                on_store_failure: None,
            },
            "global",
        );
        // Same keys as `policy`'s request counter: one hit is still free.
        assert!(small
            .reserve(&store, &input("a", &headers), 0)
            .await
            .is_ok());
        let refused = small
            .reserve(&store, &input("a", &headers), 0)
            .await
            .unwrap_err();
        assert!(refused.message.contains("2 requests per minute"));
    }

    #[tokio::test]
    async fn budgets_refuse_once_spent_and_count_concurrent_charges_exactly() {
        let store = Arc::new(MemoryCounters::new());
        let headers = HeaderMap::new();
        let policy = Arc::new(AiBudgetPolicy::compile(
            &AiBudget {
                usd: 1.0,
                period: QuotaPeriod::Month,
                by: LimitKey::Consumer,
                scope: tollgate_config::LimitScope::Cluster,
                on_store_failure: None,
            },
            "api:llm",
        ));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (store, policy) = (store.clone(), policy.clone());
            tasks.push(tokio::spawn(async move {
                let headers = HeaderMap::new();
                let charge = policy
                    .check(&*store, &input("a", &headers), 0)
                    .await
                    .unwrap()
                    .unwrap();
                charge.charge(&*store, 10_000).await;
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        // 50 × 0.01 USD: half the budget, exactly.
        let charge = policy
            .check(&*store, &input("a", &headers), 0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.read_total(&charge.key).await.unwrap(), 500_000);
        charge.charge(&*store, 600_000).await;
        let refused = policy
            .check(&*store, &input("a", &headers), 0)
            .await
            .unwrap_err();
        assert_eq!(refused.code, "budget_exceeded");
        assert_eq!(refused.status, http::StatusCode::PAYMENT_REQUIRED);
        assert!(policy
            .check(&*store, &input("b", &headers), 0)
            .await
            .is_ok());
    }

    /// Calls admitted at once hold their bound first: of 50 concurrent
    /// calls of at most 0.30 USD (costing 0.25) on a 1.10 USD budget, 4
    /// hold at once, the others wait for them to settle; one more fits
    /// (crossing the budget), then the budget is spent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_calls_hold_their_bound_and_wait_for_calls_in_flight() {
        let store: Arc<dyn CounterStore> = Arc::new(MemoryCounters::new());
        let policy = Arc::new(AiBudgetPolicy::compile(
            &AiBudget {
                usd: 1.1,
                period: QuotaPeriod::Day,
                by: LimitKey::Consumer,
                scope: tollgate_config::LimitScope::Cluster,
                on_store_failure: None,
            },
            "api:llm",
        ));
        let start = Arc::new(tokio::sync::Barrier::new(50));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (store, policy, start) = (store.clone(), policy.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                let headers = HeaderMap::new();
                start.wait().await;
                match policy.check(&*store, &input("a", &headers), 300_000).await {
                    Ok(Some(charge)) => {
                        let key = charge.key.clone();
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        charge.charge(&*store, 250_000).await;
                        Some(key)
                    }
                    Ok(None) => panic!("no charge"),
                    Err(denial) => {
                        assert_eq!(denial.code, "budget_exceeded");
                        None
                    }
                }
            }));
        }
        let mut keys = Vec::new();
        for task in tasks {
            keys.extend(task.await.unwrap());
        }
        assert_eq!(keys.len(), 5);
        assert_eq!(store.read_total(&keys[0]).await.unwrap(), 1_250_000);
    }

    #[tokio::test]
    async fn ai_limits_fall_back_to_this_nodes_share_and_settle_there() {
        use tollgate_config::{LimitScope, OnStoreFailure};
        let headers = HeaderMap::new();
        let compile = |mode| {
            AiLimitsPolicy::compile(
                &AiLimits {
                    tokens_per_minute: Some(1000),
                    requests_per_minute: Some(10),
                    by: LimitKey::Consumer,
                    scope: LimitScope::Cluster,
                    on_store_failure: mode,
                },
                "api:llm",
            )
        };
        // 1000 tokens across 2 live nodes: 500 here.
        let (shared, store) = crate::counters_cluster::tests::cluster(2);
        let policy = compile(None);
        shared.set_failing(true);
        let held = policy
            .reserve(&store, &input("a", &headers), 400)
            .await
            .unwrap()
            .unwrap();
        assert!(policy
            .reserve(&store, &input("a", &headers), 200)
            .await
            .is_err());
        // Settled in this node's memory, even once the shared store is back.
        shared.set_failing(false);
        held.settle(&store, 100).await;
        shared.set_failing(true);
        assert!(policy
            .reserve(&store, &input("a", &headers), 350)
            .await
            .unwrap()
            .is_some());

        let (shared, store) = crate::counters_cluster::tests::cluster(2);
        shared.set_failing(true);
        let denial = compile(Some(OnStoreFailure::Deny))
            .reserve(&store, &input("a", &headers), 10)
            .await
            .unwrap_err();
        assert_eq!(denial.code, "limit_unavailable");
        let allowed = compile(Some(OnStoreFailure::Allow));
        for _ in 0..20 {
            assert!(allowed
                .reserve(&store, &input("a", &headers), 900)
                .await
                .unwrap()
                .is_none());
        }
    }

    #[tokio::test]
    async fn ai_budgets_per_on_store_failure() {
        use tollgate_config::{LimitScope, OnStoreFailure};
        let headers = HeaderMap::new();
        let compile = |mode| {
            AiBudgetPolicy::compile(
                &AiBudget {
                    usd: 1.0,
                    period: QuotaPeriod::Day,
                    by: LimitKey::Consumer,
                    scope: LimitScope::Cluster,
                    on_store_failure: mode,
                },
                "api:llm",
            )
        };
        // $1 across 4 live nodes: $0.25 here; each call costs $0.10.
        let (shared, store) = crate::counters_cluster::tests::cluster(4);
        let policy = compile(None);
        shared.set_failing(true);
        let mut calls = 0;
        while let Ok(Some(charge)) = policy.check(&store, &input("a", &headers), 0).await {
            charge.charge(&store, 100_000).await;
            calls += 1;
            assert!(calls < 10);
        }
        assert_eq!(calls, 3);
        let refused = policy
            .check(&store, &input("a", &headers), 0)
            .await
            .unwrap_err();
        assert_eq!(refused.code, "budget_exceeded");
        // Healed: the shared total (nothing spent there) applies again.
        shared.set_failing(false);
        assert!(policy.check(&store, &input("a", &headers), 0).await.is_ok());

        shared.set_failing(true);
        let denial = compile(Some(OnStoreFailure::Deny))
            .check(&store, &input("a", &headers), 0)
            .await
            .unwrap_err();
        assert_eq!(denial.code, "limit_unavailable");
        assert!(compile(Some(OnStoreFailure::Allow))
            .check(&store, &input("a", &headers), 0)
            .await
            .unwrap()
            .is_none());
    }
}
