//! The access record: one per request, whatever its fate.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

/// What became of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Proxied to an upstream (whatever the upstream answered).
    Allowed,
    /// Refused by a policy (auth, limits, …).
    Denied,
    /// The gateway could not serve it: no route, bad request, upstream failure.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

/// One request as it is written to every sink. Never holds a credential,
/// a cookie or a header value that could be one.
#[derive(Clone, Debug, Serialize)]
pub struct AccessRecord {
    /// When the request arrived; written as RFC 3339 UTC. Kept as a
    /// `SystemTime` so the hot path never formats a date: sinks do.
    #[serde(serialize_with = "rfc3339")]
    pub ts: SystemTime,
    pub request_id: String,
    #[serde(serialize_with = "ip_text")]
    pub client_ip: IpAddr,
    /// A standard method's name is a static string: no allocation a request.
    pub method: Cow<'static, str>,
    pub host: String,
    pub path: String,
    pub api: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    pub consumer: Option<Arc<str>>,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub upstream_addr: Option<Arc<str>>,
    pub latency_ms: f64,
    pub upstream_latency_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub outcome: Outcome,
    /// The error code when the gateway refused or failed the request.
    pub reason: Option<&'static str>,
    /// For a request the AI gateway served: provider, tokens, cost; its
    /// fields are written at the record's top level.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub ai: Option<Box<AiUsage>>,
}

/// What one AI call used and cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AiUsage {
    /// The provider and its model that answered (or were tried last).
    pub ai_provider: Option<String>,
    pub ai_model: Option<String>,
    /// Prompt tokens, cached ones included.
    pub tokens_in: u64,
    /// Generated tokens, reasoning included.
    pub tokens_out: u64,
    /// Prompt tokens read from the provider's cache.
    pub tokens_cached: u64,
    /// The provider reported no usage: the counts are local estimates.
    pub tokens_estimated: bool,
    /// `None` when the model's price is unknown (never reported as 0).
    pub cost_usd: Option<f64>,
    /// Time to the first byte of the answer sent to the client.
    pub ttft_ms: Option<f64>,
    /// Every provider call made for the request, in order.
    pub attempts: Vec<AiAttempt>,
    /// `hit` or `miss` when the API has a response cache.
    pub cache: Option<&'static str>,
}

/// One call to a provider.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AiAttempt {
    pub provider: String,
    pub model: String,
    /// Which of the provider's keys (from 1, as configured); never the key.
    pub key: usize,
    /// The provider's status, or `timeout` / `connect_error` / `stream_error`.
    pub result: String,
}

impl AccessRecord {
    /// A record of a request that arrived now, with nothing known about it yet
    /// but its id and client; the pipeline fills in the rest as it goes.
    pub fn new(request_id: String, client_ip: IpAddr) -> AccessRecord {
        AccessRecord {
            ts: SystemTime::now(),
            request_id,
            client_ip,
            method: Cow::Borrowed(""),
            host: String::new(),
            path: String::new(),
            api: None,
            service: None,
            consumer: None,
            status: 0,
            upstream_status: None,
            upstream_addr: None,
            latency_ms: 0.0,
            upstream_latency_ms: None,
            bytes_in: 0,
            bytes_out: 0,
            outcome: Outcome::Allowed,
            reason: None,
            ai: None,
        }
    }
}

impl AccessRecord {
    /// Appends the record's JSON form to `out`: byte for byte what its
    /// `Serialize` impl writes through `serde_json`, faster, as field names
    /// and the time and address need no escaping. Keep the two in step
    /// (a test compares them).
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        fn str_field(out: &mut Vec<u8>, name: &[u8], value: &str) -> serde_json::Result<()> {
            out.extend_from_slice(name);
            serde_json::to_writer(out, value)
        }
        fn field<T: Serialize>(out: &mut Vec<u8>, name: &[u8], value: T) -> serde_json::Result<()> {
            out.extend_from_slice(name);
            serde_json::to_writer(out, &value)
        }

        out.extend_from_slice(b"{\"ts\":\"");
        out.extend_from_slice(Rfc3339::from(self.ts).as_str().as_bytes());
        str_field(out, b"\",\"request_id\":", &self.request_id)?;
        out.extend_from_slice(b",\"client_ip\":\"");
        out.extend_from_slice(IpText::from(self.client_ip).as_str().as_bytes());
        str_field(out, b"\",\"method\":", &self.method)?;
        str_field(out, b",\"host\":", &self.host)?;
        str_field(out, b",\"path\":", &self.path)?;
        field(out, b",\"api\":", self.api.as_deref())?;
        field(out, b",\"service\":", self.service.as_deref())?;
        field(out, b",\"consumer\":", self.consumer.as_deref())?;
        field(out, b",\"status\":", self.status)?;
        field(out, b",\"upstream_status\":", self.upstream_status)?;
        field(out, b",\"upstream_addr\":", self.upstream_addr.as_deref())?;
        field(out, b",\"latency_ms\":", self.latency_ms)?;
        field(out, b",\"upstream_latency_ms\":", self.upstream_latency_ms)?;
        field(out, b",\"bytes_in\":", self.bytes_in)?;
        field(out, b",\"bytes_out\":", self.bytes_out)?;
        field(out, b",\"outcome\":", self.outcome)?;
        field(out, b",\"reason\":", self.reason)?;
        if let Some(ai) = &self.ai {
            // Varied: the derived form, written in place, its opening brace
            // turned into a comma and its closing one dropped.
            let start = out.len();
            serde_json::to_writer(&mut *out, ai)?;
            if out.len() - start > 2 {
                out[start] = b',';
                out.pop();
            } else {
                out.truncate(start);
            }
        }
        out.push(b'}');
        Ok(())
    }
}

/// Formats a time as RFC 3339 in UTC with microseconds, e.g. `2026-12-04T17:00:00.123456Z`.
///
/// Sub-microsecond digits are truncated. Times outside years 0000–9999 are
/// clamped to that range.
pub fn format_rfc3339(ts: SystemTime) -> String {
    Rfc3339::from_unix_micros(unix_micros(ts))
        .as_str()
        .to_owned()
}

/// Microseconds since the Unix epoch, negative before it (rounded down),
/// saturating at the ends of `i64`.
pub fn unix_micros(ts: SystemTime) -> i64 {
    match ts.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => {
            // Round towards the past, as for times after the epoch.
            let before = before.duration();
            let micros = before.as_micros() + u128::from(before.subsec_nanos() % 1000 != 0);
            i64::try_from(micros).map_or(i64::MIN, |m| -m)
        }
    }
}

/// A time formatted as RFC 3339 in UTC with microseconds, on the stack:
/// formatting one allocates nothing, which matters to sinks writing
/// thousands of records per batch.
#[derive(Clone, Copy)]
pub struct Rfc3339 {
    text: [u8; Rfc3339::LEN],
}

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z in Unix microseconds.
const MIN_MICROS: i64 = -62_167_219_200_000_000;
const MAX_MICROS: i64 = 253_402_300_799_999_999;

impl Rfc3339 {
    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`
    const LEN: usize = 27;

    /// Formats microseconds since the Unix epoch (see [`unix_micros`]),
    /// clamped to years 0000–9999.
    pub fn from_unix_micros(micros: i64) -> Rfc3339 {
        let micros = micros.clamp(MIN_MICROS, MAX_MICROS);
        let (secs, frac) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
        let (days, secs_of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);

        let mut text = *b"0000-00-00T00:00:00.000000Z";
        put_digits(&mut text[0..4], year as u32);
        put_digits(&mut text[5..7], month);
        put_digits(&mut text[8..10], day);
        put_digits(&mut text[11..13], (secs_of_day / 3600) as u32);
        put_digits(&mut text[14..16], (secs_of_day / 60 % 60) as u32);
        put_digits(&mut text[17..19], (secs_of_day % 60) as u32);
        put_digits(&mut text[20..26], frac as u32);
        Rfc3339 { text }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and punctuation are ever written.
        std::str::from_utf8(&self.text).expect("RFC 3339 text is ASCII")
    }
}

impl From<SystemTime> for Rfc3339 {
    fn from(ts: SystemTime) -> Rfc3339 {
        Rfc3339::from_unix_micros(unix_micros(ts))
    }
}

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Writes `n` as decimal digits filling `out`, zero-padded on the left.
fn put_digits(out: &mut [u8], mut n: u32) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The proleptic Gregorian (year, month, day) of a count of days since
/// 1970-01-01: Howard Hinnant's `civil_from_days`
/// (<https://howardhinnant.github.io/date_algorithms.html>).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], from March
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// An IP address formatted as its `Display` form, on the stack: IPv4
/// addresses (nearly all clients) without the `fmt` machinery.
#[derive(Clone, Copy)]
pub struct IpText {
    text: [u8; IpText::MAX_LEN],
    len: u8,
}

impl IpText {
    /// `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`
    const MAX_LEN: usize = 45;

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text[..usize::from(self.len)]).expect("IP text is ASCII")
    }
}

impl From<IpAddr> for IpText {
    fn from(ip: IpAddr) -> IpText {
        let mut text = [0; IpText::MAX_LEN];
        let mut len = 0;
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text[len] = b'.';
                        len += 1;
                    }
                    if octet >= 100 {
                        text[len] = b'0' + octet / 100;
                        len += 1;
                    }
                    if octet >= 10 {
                        text[len] = b'0' + octet / 10 % 10;
                        len += 1;
                    }
                    text[len] = b'0' + octet % 10;
                    len += 1;
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write as _;
                let mut out = &mut text[..];
                write!(out, "{v6}").expect("an IPv6 address fits in 45 bytes");
                len = IpText::MAX_LEN - out.len();
            }
        }
        IpText {
            text,
            len: len as u8,
        }
    }
}

impl std::fmt::Display for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Serializes like `IpAddr`'s own `Serialize` in text formats, faster.
fn ip_text<S: Serializer>(ip: &IpAddr, s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.serialize_str(IpText::from(*ip).as_str())
    } else {
        ip.serialize(s)
    }
}

fn rfc3339<S: Serializer>(ts: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(Rfc3339::from(*ts).as_str())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// What `format_rfc3339` printed when it used the `time` crate.
    fn reference(ts: SystemTime) -> String {
        let format = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        );
        time::OffsetDateTime::from(ts).format(&format).unwrap()
    }

    fn at(micros: i64) -> SystemTime {
        let magnitude = Duration::from_micros(micros.unsigned_abs());
        if micros >= 0 {
            UNIX_EPOCH + magnitude
        } else {
            UNIX_EPOCH - magnitude
        }
    }

    fn record() -> AccessRecord {
        AccessRecord {
            ts: UNIX_EPOCH + Duration::from_micros(1_796_403_600_123_456),
            request_id: "0123456789abcdef0123456789abcdef".to_owned(),
            client_ip: IpAddr::from([192, 0, 2, 7]),
            method: "GET".into(),
            host: "api.example.com".to_owned(),
            path: "/".to_owned(),
            api: Some("orders".into()),
            service: Some("orders-svc".into()),
            consumer: Some("acme".into()),
            status: 200,
            upstream_status: Some(200),
            upstream_addr: Some("10.0.0.1:8080".into()),
            latency_ms: 1.5,
            upstream_latency_ms: Some(1.25),
            bytes_in: 10,
            bytes_out: 2048,
            outcome: Outcome::Allowed,
            reason: None,
            ai: None,
        }
    }

    #[test]
    fn write_json_is_the_serde_form() {
        let odd = "\"quoted\" back\\slash \u{1} tab\t newline\n é \u{1F600} \u{7f}";
        let mut records = vec![record()];
        let mut r = record();
        r.ts = UNIX_EPOCH - Duration::from_nanos(1);
        r.request_id = odd.to_owned();
        r.client_ip = "2001:db8::1".parse().unwrap();
        r.method = odd.to_owned().into();
        r.host = String::new();
        r.path = format!("/{odd}?q=1&r=\"2\"");
        r.api = Some(odd.into());
        r.service = None;
        r.consumer = None;
        r.status = 502;
        r.upstream_status = None;
        r.upstream_addr = None;
        r.latency_ms = 0.1 + 0.2;
        r.upstream_latency_ms = None;
        r.bytes_in = 0;
        r.bytes_out = u64::MAX;
        r.outcome = Outcome::Error;
        r.reason = Some("upstream_unavailable");
        records.push(r.clone());
        for (latency, outcome) in [
            (f64::NAN, Outcome::Denied),
            (f64::INFINITY, Outcome::Allowed),
            (-0.0, Outcome::Error),
            (1e300, Outcome::Allowed),
            (3.0, Outcome::Denied),
        ] {
            r.latency_ms = latency;
            r.upstream_latency_ms = Some(latency / 7.0);
            r.outcome = outcome;
            records.push(r.clone());
        }
        r.ai = Some(Box::new(AiUsage {
            ai_provider: Some("openai-main".into()),
            ai_model: Some(odd.into()),
            tokens_in: 12,
            tokens_out: 5,
            tokens_cached: 2,
            tokens_estimated: true,
            cost_usd: Some(0.000_125),
            ttft_ms: None,
            attempts: vec![AiAttempt {
                provider: "openai-main".into(),
                model: "gpt-4o".into(),
                key: 2,
                result: "429".into(),
            }],
            cache: Some("miss"),
        }));
        records.push(r.clone());
        for r in records {
            let mut line = Vec::new();
            r.write_json(&mut line).unwrap();
            let expected = serde_json::to_string(&r).unwrap();
            assert_eq!(String::from_utf8(line).unwrap(), expected);
        }
    }

    #[test]
    fn ip_text_is_display() {
        let mut x: u32 = 0x9e37_79b9;
        let mut ips: Vec<IpAddr> = [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            "192.0.2.7",
            "100.99.10.9",
            "::",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "fe80::1:2:3:4",
        ]
        .iter()
        .map(|ip| ip.parse().unwrap())
        .collect();
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            ips.push(IpAddr::from(x.to_be_bytes()));
        }
        for ip in ips {
            assert_eq!(IpText::from(ip).as_str(), ip.to_string());
            assert_eq!(
                serde_json::to_string(&ip).unwrap(),
                format!("\"{ip}\""),
                "serde's own form"
            );
        }
    }

    #[test]
    fn formats_known_times() {
        for (micros, text) in [
            (0, "1970-01-01T00:00:00.000000Z"),
            (1, "1970-01-01T00:00:00.000001Z"),
            (-1, "1969-12-31T23:59:59.999999Z"),
            (1_714_564_800_123_000, "2024-05-01T12:00:00.123000Z"),
            (1_796_403_600_123_456, "2026-12-04T17:00:00.123456Z"),
            (951_782_400_000_000, "2000-02-29T00:00:00.000000Z"),
            (4_107_542_399_999_999, "2100-02-28T23:59:59.999999Z"),
            (4_107_542_400_000_000, "2100-03-01T00:00:00.000000Z"),
            (MIN_MICROS, "0000-01-01T00:00:00.000000Z"),
            (MAX_MICROS, "9999-12-31T23:59:59.999999Z"),
        ] {
            assert_eq!(format_rfc3339(at(micros)), text, "{micros}");
            assert_eq!(unix_micros(at(micros)), micros);
        }
    }

    #[test]
    fn clamps_to_four_digit_years() {
        assert_eq!(
            Rfc3339::from_unix_micros(i64::MIN).as_str(),
            "0000-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            Rfc3339::from_unix_micros(i64::MAX).as_str(),
            "9999-12-31T23:59:59.999999Z"
        );
        assert_eq!(
            format_rfc3339(UNIX_EPOCH + Duration::from_secs(u64::MAX / 2)),
            "9999-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn truncates_nanoseconds_like_the_time_crate() {
        for nanos in [1, 999, 1_000, 1_001, 999_999_999, 1_500_000_001] {
            let after = UNIX_EPOCH + Duration::from_nanos(1_796_403_600_000_000_000 + nanos);
            let before = UNIX_EPOCH - Duration::from_nanos(nanos);
            for ts in [after, before] {
                assert_eq!(format_rfc3339(ts), reference(ts), "{ts:?}");
            }
        }
    }

    #[test]
    fn matches_the_time_crate() {
        const DAY: i64 = 86_400_000_000;
        // Every day around the turns of the years 1600–2500 (centuries,
        // 400-year leap rules, 1970) and around every Feb 29 of 1960–2120,
        // at a time of day that changes with the day.
        let mut days: Vec<i64> = Vec::new();
        for year in 1600..=2500 {
            let new_year = time::Date::from_calendar_date(year, time::Month::January, 1)
                .unwrap()
                .to_julian_day() as i64
                - 2_440_588;
            days.extend(new_year - 3..new_year + 3);
            if (1960..=2120).contains(&year) {
                days.extend(new_year + 55..new_year + 62);
            }
        }
        let mut cases: Vec<i64> = days
            .iter()
            .map(|&d| d * DAY + (d.rem_euclid(1000) * 86_399_999_983) % DAY)
            .collect();
        // And pseudo-random times over years 0000–9999.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push(MIN_MICROS + (x % (MAX_MICROS - MIN_MICROS) as u64) as i64);
        }
        for micros in cases {
            let ts = at(micros);
            assert_eq!(format_rfc3339(ts), reference(ts), "{micros}");
        }
    }
}
