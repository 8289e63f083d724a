//! Access records encoded for `COPY access_records (…) FROM STDIN` in
//! PostgreSQL's text format: one line per record, columns separated by
//! tabs, `\N` for NULL, and backslash, tab, newline and carriage return
//! escaped in values (`\\`, `\t`, `\n`, `\r`), so that a line ends only at
//! its record's end. The same bytes are written to the database and, while
//! it is unreachable, to the spool.

use std::io::Write;

use tollgate_telemetry::record::{unix_micros, IpText};
use tollgate_telemetry::AccessRecord;

use crate::sink::request_id_hash;

/// The columns of a line, in order: the `COPY` statement's column list.
pub(crate) const COLUMNS: &str = "ts, request_id, request_id_hash, client_ip, method, host, path, \
    api, service, consumer, status, upstream_status, upstream_addr, latency_ms, \
    upstream_latency_ms, bytes_in, bytes_out, outcome, reason, \
    ai_provider, ai_model, tokens_in, tokens_out, tokens_cached, tokens_estimated, \
    cost_usd, ttft_ms, ai_attempts, ai_cache";

/// `COPY access_records (…) FROM STDIN` (text format is the default).
pub(crate) fn copy_statement() -> String {
    format!("COPY access_records ({COLUMNS}) FROM STDIN")
}

/// Appends one line per record to `out`; returns the smallest and largest
/// `ts` (Unix microseconds) of the records, `(i64::MAX, i64::MIN)` for none.
pub(crate) fn encode(records: &[AccessRecord], out: &mut Vec<u8>) -> (i64, i64) {
    let mut range = (i64::MAX, i64::MIN);
    for record in records {
        tollgate_telemetry::access_log::pace();
        let ts = encode_one(record, out);
        range = (range.0.min(ts), range.1.max(ts));
    }
    range
}

/// Appends `record`'s line to `out`; returns its `ts`.
fn encode_one(r: &AccessRecord, out: &mut Vec<u8>) -> i64 {
    let ts = unix_micros(r.ts);
    let mut line = Line { out, first: true };
    line.int(ts);
    line.text(&r.request_id);
    line.int(request_id_hash(&r.request_id));
    line.display(IpText::from(r.client_ip));
    line.text(&r.method);
    line.text(&r.host);
    line.text(&r.path);
    line.opt_text(r.api.as_deref());
    line.opt_text(r.service.as_deref());
    line.opt_text(r.consumer.as_deref());
    line.int(i64::from(r.status));
    line.opt_int(r.upstream_status.map(i64::from));
    line.opt_text(r.upstream_addr.as_deref());
    line.float(r.latency_ms);
    line.opt_float(r.upstream_latency_ms);
    line.int(saturating_i64(r.bytes_in));
    line.int(saturating_i64(r.bytes_out));
    line.text(r.outcome.as_str());
    line.opt_text(r.reason);
    match r.ai.as_deref() {
        None => {
            for _ in 0..10 {
                line.null();
            }
        }
        Some(ai) => {
            line.opt_text(ai.ai_provider.as_deref());
            line.opt_text(ai.ai_model.as_deref());
            line.int(saturating_i64(ai.tokens_in));
            line.int(saturating_i64(ai.tokens_out));
            line.int(saturating_i64(ai.tokens_cached));
            line.text(if ai.tokens_estimated { "t" } else { "f" });
            line.opt_float(ai.cost_usd);
            line.opt_float(ai.ttft_ms);
            // Serialising a list of plain structs cannot fail.
            let attempts = serde_json::to_string(&ai.attempts).unwrap_or_else(|_| "[]".into());
            line.text(&attempts);
            line.opt_text(ai.cache);
        }
    }
    line.out.push(b'\n');
    ts
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A line being written: puts the tab between columns.
struct Line<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Line<'_> {
    fn separate(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.out.push(b'\t');
        }
    }

    fn null(&mut self) {
        self.separate();
        self.out.extend_from_slice(b"\\N");
    }

    fn int(&mut self, n: i64) {
        self.separate();
        let _ = write!(self.out, "{n}");
    }

    fn opt_int(&mut self, n: Option<i64>) {
        match n {
            Some(n) => self.int(n),
            None => self.null(),
        }
    }

    fn float(&mut self, x: f64) {
        self.separate();
        if x.is_nan() {
            self.out.extend_from_slice(b"NaN");
        } else if x.is_infinite() {
            let text: &[u8] = if x > 0.0 { b"Infinity" } else { b"-Infinity" };
            self.out.extend_from_slice(text);
        } else {
            // Rust's shortest representation that reads back exactly.
            let _ = write!(self.out, "{x:?}");
        }
    }

    fn opt_float(&mut self, x: Option<f64>) {
        match x {
            Some(x) => self.float(x),
            None => self.null(),
        }
    }

    /// Text needing no escape (an address, a number).
    fn display(&mut self, value: impl std::fmt::Display) {
        self.separate();
        let _ = write!(self.out, "{value}");
    }

    /// A text value, escaped. NUL, which no PostgreSQL text may hold (an
    /// INSERT refused it too), is left out.
    fn text(&mut self, s: &str) {
        self.separate();
        for &b in s.as_bytes() {
            match b {
                b'\\' => self.out.extend_from_slice(b"\\\\"),
                b'\t' => self.out.extend_from_slice(b"\\t"),
                b'\n' => self.out.extend_from_slice(b"\\n"),
                b'\r' => self.out.extend_from_slice(b"\\r"),
                0 => {}
                b => self.out.push(b),
            }
        }
    }

    fn opt_text(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.text(s),
            None => self.null(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_for_copy_text() {
        let mut out = Vec::new();
        let mut line = Line {
            out: &mut out,
            first: true,
        };
        line.text("a\tb\nc\\d\re\0f");
        line.null();
        line.float(f64::NAN);
        line.float(f64::NEG_INFINITY);
        line.float(0.1);
        line.int(-7);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\\tb\\nc\\\\d\\ref\t\\N\tNaN\t-Infinity\t0.1\t-7"
        );
    }
}
