//! [`RedisCounters`]: the [`CounterStore`] of a cluster, where every node's
//! rate limits, quotas, AI token limits and budgets count in one Redis.
//!
//! Each method is one round trip and atomic: a Lua script (sent once with
//! `SCRIPT LOAD`, then called by its SHA-1 with `EVALSHA`, re-sent by itself
//! when Redis answers `NOSCRIPT` after a restart or a `SCRIPT FLUSH`), or a
//! plain `GET`. Every key touched is named in `KEYS`, so a script runs where
//! its keys live; the one script over several keys (all the rate limits of
//! a request) is not used on a Redis Cluster, where the keys may live in
//! different slots: there each limit is one call.
//!
//! **Which clock.** Rates are judged at Redis's own `TIME`, not at the
//! caller's `now_us`: the nodes' clocks differ by milliseconds or worse, and
//! a node whose clock runs ahead would see every key as refilled early. The
//! time a hit was judged at comes back in [`RateHit::at_us`], so the
//! `RateLimit-*` and `Retry-After` headers are computed on the same clock as
//! the TAT. Quota and total expiries are the caller's period ends
//! (`EXPIREAT`, Unix seconds), as the periods are calendar ones.
//!
//! **Numbers.** Lua numbers are doubles: exact up to 2^53, which holds a TAT
//! in microseconds for the next 200 years, and costs up to 285 years of
//! microseconds. Arguments are capped there; TATs are written with
//! `%.0f`, never in exponent notation.
//!
//! **Failures.** A Redis that is down, slow (beyond
//! [`RedisOptions::response_timeout`]) or answers an error gives a
//! [`CounterError`]; each limit then follows its `on_store_failure` (see
//! [`crate::counters_cluster`]). The
//! connection is re-established in the background; a command issued while
//! it is down waits for at most two connection attempts of
//! [`RedisOptions::connect_timeout`] each (a refused connection fails at
//! once), never through a long back-off.
//!
//! What this module must never do: put a credential or a URL's password in
//! an error, a log line or a `Debug` output.

use std::time::Duration;

use redis::Script;

use crate::counters::{
    CounterError, CounterReply, CounterStore, QuotaHit, Rate, RateHit, RateRequest, RatesHit,
    SpendHold,
};
use crate::redis_link::{Link, LinkOptions};

/// The key prefix when none is configured.
pub const DEFAULT_PREFIX: &str = "tollgate:";

/// The largest integer a Lua number (a double) holds exactly.
const LUA_EXACT: u64 = (1 << 53) - 1;

/// GCRA with weight: `KEYS[1]` holds the TAT (Unix µs); `ARGV[1]` is the
/// hit's cost (interval × n, µs), `ARGV[2]` the tolerance (interval × burst,
/// µs). Returns `{allowed, tat, now}`, as [`Rate::apply_n`] would at Redis's
/// `TIME`; an allowed hit stores its TAT with a millisecond expiry at the
/// moment the key is back to a full burst.
const RATE_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local base = math.max(tat, now)
local after = base + tonumber(ARGV[1])
if after - now > tonumber(ARGV[2]) then
  return {0, base, now}
end
if after > now then
  redis.call('SET', KEYS[1], string.format('%.0f', after),
    'PX', string.format('%.0f', math.ceil((after - now) / 1000)))
end
return {1, after, now}
";

/// [`RATE_SCRIPT`] over several keys at once, all or nothing: `KEYS[i]`
/// with cost `ARGV[2i-1]` and tolerance `ARGV[2i]`. Nothing is written
/// unless every key admits the hit. Returns `{refused, now, tat…}`:
/// `refused` is the 1-based index of the key that refused (0 when none),
/// followed by each key's TAT after the hit, up to the refusing key, whose
/// TAT is the one that refused.
const RATES_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local result = {0, now}
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  local base = math.max(tat, now)
  local after = base + tonumber(ARGV[2 * i - 1])
  if after - now > tonumber(ARGV[2 * i]) then
    result[1] = i
    result[i + 2] = base
    return result
  end
  result[i + 2] = after
end
for i = 1, #KEYS do
  local after = result[i + 2]
  if after > now then
    redis.call('SET', KEYS[i], string.format('%.0f', after),
      'PX', string.format('%.0f', math.ceil((after - now) / 1000)))
  end
end
return result
";

/// A node's batch and one more hit (`sync_interval`): adds `ARGV[1]` µs
/// (the hits the node admitted on its own view) to the TAT in `KEYS[1]`
/// unconditionally, then applies a hit costing `ARGV[2]` µs (0: none) with
/// tolerance `ARGV[3]`, as [`RATE_SCRIPT`]. Returns `{allowed, tat, now}`.
const SYNC_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local pushed = math.max(tat, now) + tonumber(ARGV[1])
local allowed = 1
local after = pushed + tonumber(ARGV[2])
if tonumber(ARGV[2]) > 0 and after - now > tonumber(ARGV[3]) then
  allowed = 0
  after = pushed
end
if after > now then
  redis.call('SET', KEYS[1], string.format('%.0f', after),
    'PX', string.format('%.0f', math.ceil((after - now) / 1000)))
end
return {allowed, after, now}
";

/// Gives back `ARGV[1]` µs of the TAT in `KEYS[1]`, only if the key exists
/// (a key that just expired is not recreated), never below now; a key left
/// with nothing is deleted. Returns 1 when there was a key.
const RELEASE_SCRIPT: &str = r"
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then
  return 0
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local after = math.max(tat - tonumber(ARGV[1]), now)
if after <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.0f', after),
    'PX', string.format('%.0f', math.ceil((after - now) / 1000)))
end
return 1
";

/// Counts one hit in `KEYS[1]` if its count is below `ARGV[1]`; a new
/// counter expires at `ARGV[2]` (Unix seconds). A refused hit writes
/// nothing. Returns `{allowed, count}`.
const QUOTA_SCRIPT: &str = r"
local count = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if count >= tonumber(ARGV[1]) then
  return {0, count}
end
count = redis.call('INCR', KEYS[1])
if redis.call('TTL', KEYS[1]) == -1 then
  redis.call('EXPIREAT', KEYS[1], ARGV[2])
end
return {1, count}
";

/// Adds `ARGV[1]` to the total in `KEYS[1]`; a new total expires at
/// `ARGV[2]` (Unix seconds). Returns the new total.
const TOTAL_SCRIPT: &str = r"
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('TTL', KEYS[1]) == -1 then
  redis.call('EXPIREAT', KEYS[1], ARGV[2])
end
return total
";

/// A budget's spend in `KEYS[1]`, a hash: `s` spent, `r` held by calls in
/// flight. Holds `ARGV[1]` when nothing is spent past `ARGV[2]` and the
/// holds leave room (the first hold always does); a new key expires at
/// `ARGV[3]`. Returns `{answer, spent}`: 1 held, 0 spent, 2 pending.
const HOLD_SCRIPT: &str = r"
local spent = tonumber(redis.call('HGET', KEYS[1], 's') or '0') or 0
local held = tonumber(redis.call('HGET', KEYS[1], 'r') or '0') or 0
local limit = tonumber(ARGV[2])
if spent >= limit then
  return {0, spent}
end
if held > 0 and spent + held >= limit then
  return {2, spent}
end
redis.call('HINCRBY', KEYS[1], 'r', ARGV[1])
if redis.call('TTL', KEYS[1]) == -1 then
  redis.call('EXPIREAT', KEYS[1], ARGV[3])
end
return {1, spent}
";

/// Ends a hold of `ARGV[1]` (never below 0) and adds the cost `ARGV[2]`
/// to the spend of `KEYS[1]`; a new key expires at `ARGV[3]`.
const SETTLE_SCRIPT: &str = r"
local held = tonumber(redis.call('HGET', KEYS[1], 'r') or '0') or 0
redis.call('HSET', KEYS[1], 'r', math.max(held - tonumber(ARGV[1]), 0))
redis.call('HINCRBY', KEYS[1], 's', ARGV[2])
if redis.call('TTL', KEYS[1]) == -1 then
  redis.call('EXPIREAT', KEYS[1], ARGV[3])
end
return 1
";

/// A total: a plain counter, or a budget's hash (its spend).
const READ_TOTAL_SCRIPT: &str = r"
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  return tonumber(redis.call('HGET', KEYS[1], 's') or '0') or 0
end
return tonumber(redis.call('GET', KEYS[1]) or '0') or 0
";

/// How [`RedisCounters`] names its keys and how long it waits for Redis.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Put before every key, so that several gateways (or other programs)
    /// can share one Redis: [`DEFAULT_PREFIX`] unless configured.
    pub prefix: String,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// How long a command may wait for its answer; past it the command fails
    /// (and the limit follows its `on_store_failure`).
    pub response_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> RedisOptions {
        RedisOptions {
            prefix: DEFAULT_PREFIX.to_owned(),
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(500),
        }
    }
}

/// Counters in Redis, shared by every node that uses the same server and
/// prefix. Cheap to share: one multiplexed connection, re-established in the
/// background when it drops, carries every node's commands.
pub struct RedisCounters {
    connection: Link,
    prefix: Box<str>,
    rate: Script,
    rates: Script,
    sync: Script,
    release: Script,
    quota: Script,
    total: Script,
    hold: Script,
    settle: Script,
    read_total: Script,
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the connection: its client holds the URL, password included.
        f.debug_struct("RedisCounters")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisCounters {
    /// A store for `url` (`redis://`, `rediss://` for TLS checked against
    /// the system's CA roots, or `unix://` for a socket; a Redis Cluster as
    /// its nodes comma-separated or `redis+cluster://`, see
    /// [`crate::redis_link`]). Connects lazily, on
    /// the first command or [`prepare`](Self::prepare); must be called
    /// within a Tokio runtime. Fails only on a URL it cannot use.
    pub fn new(url: &str, options: RedisOptions) -> Result<RedisCounters, CounterError> {
        let connection = Link::new(
            url,
            LinkOptions {
                connect_timeout: options.connect_timeout,
                response_timeout: options.response_timeout,
            },
        )?;
        Ok(RedisCounters {
            connection,
            prefix: options.prefix.into_boxed_str(),
            rate: Script::new(RATE_SCRIPT),
            rates: Script::new(RATES_SCRIPT),
            sync: Script::new(SYNC_SCRIPT),
            release: Script::new(RELEASE_SCRIPT),
            quota: Script::new(QUOTA_SCRIPT),
            total: Script::new(TOTAL_SCRIPT),
            hold: Script::new(HOLD_SCRIPT),
            settle: Script::new(SETTLE_SCRIPT),
            read_total: Script::new(READ_TOTAL_SCRIPT),
        })
    }

    /// [`new`](Self::new), then [`prepare`](Self::prepare) for at most
    /// `wait`: a gateway's startup. A Redis that does not answer is logged,
    /// not an error: the connection keeps trying, and until it succeeds each
    /// limit follows its `on_store_failure`. Fails only on a URL it cannot use.
    pub async fn start(
        url: &str,
        options: RedisOptions,
        wait: Duration,
    ) -> Result<RedisCounters, CounterError> {
        let store = RedisCounters::new(url, options)?;
        let redis = redact_url(url);
        match tokio::time::timeout(wait, store.prepare()).await {
            Ok(Ok(())) => tracing::info!(
                %redis,
                prefix = %store.prefix,
                "rate limits, quotas and AI limits count in Redis"
            ),
            Ok(Err(error)) => tracing::warn!(
                %redis,
                %error,
                "Redis does not answer: starting anyway; limits follow their on_store_failure until it does"
            ),
            Err(_) => tracing::warn!(
                %redis,
                ?wait,
                "Redis did not answer in time: starting anyway; limits follow their on_store_failure until it does"
            ),
        }
        Ok(store)
    }

    /// Connects (if not yet connected) and loads the scripts, in one round
    /// trip: at startup, to learn whether Redis answers.
    pub async fn prepare(&self) -> Result<(), CounterError> {
        let mut pipe = redis::pipe();
        for source in [
            RATE_SCRIPT,
            RATES_SCRIPT,
            SYNC_SCRIPT,
            RELEASE_SCRIPT,
            QUOTA_SCRIPT,
            TOTAL_SCRIPT,
            HOLD_SCRIPT,
            SETTLE_SCRIPT,
            READ_TOTAL_SCRIPT,
        ] {
            pipe.cmd("SCRIPT").arg("LOAD").arg(source);
        }
        let mut connection = self.connection.connection().await?;
        let hashes: Vec<String> = if self.connection.is_cluster() {
            // A cluster sends each `SCRIPT LOAD` to every primary: one
            // command at a time, as a pipeline goes to one node.
            let mut hashes = Vec::new();
            for command in pipe.cmd_iter() {
                hashes.push(
                    command
                        .query_async(&mut connection)
                        .await
                        .map_err(CounterError::new)?,
                );
            }
            hashes
        } else {
            pipe.query_async(&mut connection)
                .await
                .map_err(CounterError::new)?
        };
        let expected = [
            &self.rate,
            &self.rates,
            &self.sync,
            &self.release,
            &self.quota,
            &self.total,
            &self.hold,
            &self.settle,
            &self.read_total,
        ];
        if hashes
            .iter()
            .zip(expected)
            .any(|(loaded, script)| loaded != script.get_hash())
        {
            return Err(CounterError::new(
                "Redis loaded the counter scripts under unexpected hashes",
            ));
        }
        Ok(())
    }

    /// The prefix of every key this store writes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.prefix.len() + key.len());
        full.push_str(&self.prefix);
        full.push_str(key);
        full
    }
}

/// [`RATES_SCRIPT`]'s answer for `count` keys.
fn rates_hit(answer: &[i64], count: usize) -> Result<RatesHit, CounterError> {
    let malformed = || CounterError::new("Redis answered the rates script with a malformed reply");
    let (&refused, rest) = answer.split_first().ok_or_else(malformed)?;
    let (&now, tats) = rest.split_first().ok_or_else(malformed)?;
    let refused = usize::try_from(refused).map_err(|_| malformed())?;
    let expected = if refused == 0 { count } else { refused };
    if refused > count || tats.len() != expected {
        return Err(malformed());
    }
    let hits = tats
        .iter()
        .enumerate()
        .map(|(index, &tat)| RateHit {
            allowed: index + 1 != refused,
            tat: unsigned(tat),
            at_us: unsigned(now),
        })
        .collect();
    Ok(RatesHit {
        hits,
        refused: refused.checked_sub(1),
    })
}

/// A number as a script argument: capped where Lua stays exact.
fn lua_arg(value: u64) -> u64 {
    value.min(LUA_EXACT)
}

/// An integer a script returned, as the unsigned value it stands for.
fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl CounterStore for RedisCounters {
    /// Judged at Redis's `TIME`: `now_us` is not used (see the module docs).
    fn acquire_rate_n<'a>(
        &'a self,
        key: &'a str,
        rate: Rate,
        n: u64,
        _now_us: u64,
    ) -> CounterReply<'a, RateHit> {
        CounterReply::boxed(async move {
            let mut connection = self.connection.connection().await?;
            let (allowed, tat, at): (i64, i64, i64) = self
                .rate
                .key(self.key(key))
                .arg(lua_arg(rate.interval_us.saturating_mul(n)))
                .arg(lua_arg(rate.tolerance_us()))
                .invoke_async(&mut connection)
                .await
                .map_err(CounterError::new)?;
            Ok(RateHit {
                allowed: allowed == 1,
                tat: unsigned(tat),
                at_us: unsigned(at),
            })
        })
    }

    /// Judged at Redis's `TIME`, as [`acquire_rate_n`](Self::acquire_rate_n).
    fn sync_rate<'a>(
        &'a self,
        key: &'a str,
        rate: Rate,
        pushed: u64,
        n: u64,
        _now_us: u64,
    ) -> CounterReply<'a, RateHit> {
        CounterReply::boxed(async move {
            let mut connection = self.connection.connection().await?;
            let (allowed, tat, at): (i64, i64, i64) = self
                .sync
                .key(self.key(key))
                .arg(lua_arg(rate.interval_us.saturating_mul(pushed)))
                .arg(lua_arg(rate.interval_us.saturating_mul(n)))
                .arg(lua_arg(rate.tolerance_us()))
                .invoke_async(&mut connection)
                .await
                .map_err(CounterError::new)?;
            Ok(RateHit {
                allowed: allowed == 1,
                tat: unsigned(tat),
                at_us: unsigned(at),
            })
        })
    }

    /// One script over every key: one round trip for all the limits of a
    /// request.
    fn acquire_rates<'a>(
        &'a self,
        requests: &'a [RateRequest<'a>],
        _now_us: u64,
    ) -> CounterReply<'a, RatesHit> {
        if self.connection.is_cluster() {
            // The keys may live in different slots, which one script
            // cannot touch: one call per limit.
            return crate::counters::acquire_rates_one_by_one(self, requests, _now_us);
        }
        CounterReply::boxed(async move {
            let mut invocation = self.rates.prepare_invoke();
            for request in requests {
                invocation
                    .key(self.key(request.key))
                    .arg(lua_arg(request.rate.interval_us))
                    .arg(lua_arg(request.rate.tolerance_us()));
            }
            let mut connection = self.connection.connection().await?;
            let answer: Vec<i64> = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(CounterError::new)?;
            rates_hit(&answer, requests.len())
        })
    }

    fn release_rate_n<'a>(&'a self, key: &'a str, rate: Rate, n: u64) -> CounterReply<'a, ()> {
        CounterReply::boxed(async move {
            let mut connection = self.connection.connection().await?;
            let _existed: i64 = self
                .release
                .key(self.key(key))
                .arg(lua_arg(rate.interval_us.saturating_mul(n)))
                .invoke_async(&mut connection)
                .await
                .map_err(CounterError::new)?;
            Ok(())
        })
    }

    fn add_total<'a>(
        &'a self,
        key: &'a str,
        amount: u64,
        expires_at: i64,
    ) -> CounterReply<'a, u64> {
        CounterReply::boxed(async move {
            let mut connection = self.connection.connection().await?;
            let total: i64 = self
                .total
                .key(self.key(key))
                .arg(lua_arg(amount))
                .arg(expires_at)
                .invoke_async(&mut connection)
                .await
                .map_err(CounterError::new)?;
            Ok(unsigned(total))
        })
    }

    fn hold_spend<'a>(
        &'a self,
        key: &'a str,
        amount: u64,
        limit: u64,
        expires_at: i64,
    ) -> CounterReply<'a, SpendHold> {
        CounterReply::boxed(async move {
            let mut connection = self.connection.connection().await?;
            let (answer, spent): (i64, i64) = self
                .hold
                .key(self.key(key))
                .arg(lua_arg(amount))
                .arg(lua_arg(limit))
                .arg(expires_at)
                .invoke_async(&mut connection)
                .await
                .map_err(CounterError::new)?;
            Ok(match answer {
                1 => SpendHold::Held,
                2 => SpendHold::Pending,
                _ => SpendHold::Spent(unsigned(spent)),
            })
        })
    }

    fn settle_spend<'a>(
        &'a self,
        key: &'a str,
        held: u64,
        cost: u64,
        expires_at: i64,
    ) -> CounterReply<'a, ()> {
        CounterReply::boxed(async move {
            let mut connection = self.connection.connection().await?;
            let _: i64 = self
                .settle
                .key(self.key(key))
                .arg(lua_arg(held))
                .arg(lua_arg(cost))
                .arg(expires_at)
                .invoke_async(&mut connection)
                .await
                .map_err(CounterError::new)?;
            Ok(())
        })
    }

    fn read_total<'a>(&'a self, key: &'a str) -> CounterReply<'a, u64> {
        CounterReply::boxed(async move {
            let mut connection = self.connection.connection().await?;
            let total: i64 = self
                .read_total
                .key(self.key(key))
                .invoke_async(&mut connection)
                .await
                .map_err(CounterError::new)?;
            Ok(unsigned(total))
        })
    }

    fn acquire_quota<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
        expires_at: i64,
    ) -> CounterReply<'a, QuotaHit> {
        CounterReply::boxed(async move {
            let mut connection = self.connection.connection().await?;
            let (allowed, count): (i64, i64) = self
                .quota
                .key(self.key(key))
                .arg(lua_arg(limit))
                .arg(expires_at)
                .invoke_async(&mut connection)
                .await
                .map_err(CounterError::new)?;
            Ok(QuotaHit {
                allowed: allowed == 1,
                count: unsigned(count),
            })
        })
    }
}

/// `url` with the password (if any) replaced by `***`, for log lines.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        // A cluster's nodes: each redacted.
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None if userinfo.is_empty() => String::new(),
        // `redis://SECRET@host`: a password alone, with no user name.
        None => "***".to_owned(),
    };
    format!("{scheme}://{user}@{}", &rest[at + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_for_logs() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("rediss://app:s3cr3t@cache:6380/2"),
            "rediss://app:***@cache:6380/2"
        );
        assert_eq!(
            redact_url("redis://s3cr3t@cache/0?x=@"),
            "redis://***@cache/0?x=@"
        );
        assert_eq!(redact_url("redis://@cache"), "redis://@cache");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            redact_url("redis://:pw@a:7000,redis://:pw@b:7001"),
            "redis://:***@a:7000,redis://:***@b:7001"
        );
    }

    #[test]
    fn arguments_stay_exact_in_lua() {
        assert_eq!(lua_arg(u64::MAX), LUA_EXACT);
        assert_eq!(lua_arg(60_000_000), 60_000_000);
        assert_eq!(unsigned(-1), 0);
    }

    #[tokio::test]
    async fn a_bad_url_is_refused_and_debug_hides_the_password() {
        assert!(RedisCounters::new("http://x", RedisOptions::default()).is_err());
        let store =
            RedisCounters::new("redis://u:s3cr3t@127.0.0.1:1", RedisOptions::default()).unwrap();
        let debug = format!("{store:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert_eq!(store.prefix(), DEFAULT_PREFIX);
    }
}
