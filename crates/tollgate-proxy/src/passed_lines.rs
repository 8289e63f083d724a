//! An upstream answer's header lines that the gateway passes on unread.
//!
//! Most of an answer's headers (`Server`, `Content-Type`, `Cache-Control`,
//! `ETag`, cookies…) are read by no one in the gateway: they go from the
//! upstream to the client as they came. Parsing each into a `HeaderMap` (a
//! name look-up, a value copied into an allocation of its own, a hashed
//! insert, then the map's drop) cost the plain proxy's main thread ~2,800
//! of its ~30,000 instructions a request (`bench/instructions.sh plain`, an
//! nginx upstream's five headers), for nothing. The lean client keeps them instead
//! as the upstream wrote them, `Name: value` lines in one buffer, and the
//! lean server writes them out as they are.
//!
//! The lines the gateway reads or sets never go there: framing and
//! hop-by-hop headers, and those the gateway writes itself (`X-Request-Id`,
//! the rate-limit headers, `Deprecation`, `Sunset`, `nosniff`, HSTS) go to
//! the map as before, where the gateway's own value replaces the
//! upstream's. Anything that needs the whole map (hyper, which serves
//! HTTP/2 and handed-off connections; response policies that edit headers;
//! CORS) first appends the lines to it ([`PassedLines::append_to`]).

use http::{HeaderMap, HeaderName, HeaderValue};

/// Header lines as the upstream wrote them, each `Name: value\r\n`.
///
/// Kept to 32 bytes: it travels inside every lean answer's body, the AI
/// calls' too, and 48 cost those ~600 instructions a call of larger moves.
#[derive(Debug, Default)]
pub struct PassedLines {
    lines: Vec<u8>,
    /// [`HAS_DATE`], [`HAS_LENGTH`], and the `Content-Length` read from the
    /// lines in the bits below them.
    meta: u64,
}

/// A `Date` is among the lines (a server writes one of its own otherwise).
const HAS_DATE: u64 = 1 << 63;
/// A `Content-Length` is among them: a writer frames the body by it.
const HAS_LENGTH: u64 = 1 << 62;
/// Larger lengths are refused (see [`PassedLines::set_content_length`]).
const LENGTH_BITS: u64 = HAS_LENGTH - 1;

/// Where a header of an answer the gateway passes on goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Destination {
    /// Written out as it came.
    Line,
    /// As it came, and its value read: `Content-Length`.
    LineRead,
    /// Into the answer's map, as every header before: framing, hop-by-hop,
    /// and the headers the gateway sets.
    Map,
}

impl PassedLines {
    /// Room for an answer head of `head_len` bytes.
    pub(crate) fn with_capacity(head_len: usize) -> PassedLines {
        PassedLines {
            lines: Vec::with_capacity(head_len),
            meta: 0,
        }
    }

    /// Where the header `name` (as the upstream spelled it) goes: the map
    /// takes `forwarding::HOP_BY_HOP` and the headers `proxy::finish_headers`
    /// sets (a test checks both lists). Written out by length, one
    /// comparison for most names: the same look-up built from those lists
    /// at start-up cost ~185 more instructions a request.
    pub(crate) fn destination(name: &str) -> Destination {
        let is = |known: &str| name.eq_ignore_ascii_case(known);
        let to_map = match name.len() {
            2 => is("te"),
            6 => is("sunset"),
            7 => is("upgrade") || is("trailer"),
            10 => is("connection") || is("keep-alive"),
            11 => is("deprecation"),
            12 => is("x-request-id"),
            14 => {
                return if is("content-length") {
                    Destination::LineRead
                } else {
                    Destination::Line
                }
            }
            15 => is("ratelimit-limit") || is("ratelimit-reset"),
            16 => is("proxy-connection"),
            17 => is("transfer-encoding"),
            18 => is("proxy-authenticate"),
            19 => is("ratelimit-remaining") || is("proxy-authorization"),
            22 => is("x-content-type-options"),
            25 => is("strict-transport-security"),
            _ => false,
        };
        if to_map {
            Destination::Map
        } else {
            Destination::Line
        }
    }

    /// Adds a header whose name and value were checked, by `httparse` for
    /// the upstream's (a token name; a value of visible characters, spaces
    /// and tabs: what `HeaderName` and `HeaderValue` take) or as a
    /// `HeaderName` and `HeaderValue` for the gateway's: no CR or LF can
    /// reach the lines and split them.
    pub(crate) fn push(&mut self, name: &str, value: &[u8]) {
        if name.len() == 4 && name.eq_ignore_ascii_case("date") {
            self.meta |= HAS_DATE;
        }
        self.lines.extend_from_slice(name.as_bytes());
        self.lines.extend_from_slice(b": ");
        self.lines.extend_from_slice(value);
        self.lines.extend_from_slice(b"\r\n");
    }

    /// Adds a header whose value is a number.
    pub(crate) fn push_number(&mut self, name: &str, n: u64) {
        self.push(name, itoa::Buffer::new().format(n).as_bytes());
    }

    /// Records the length the lines' `Content-Length` says; `false`, and
    /// nothing recorded, past 2^62 - 1 bytes (4 EiB), which no answer has.
    pub(crate) fn set_content_length(&mut self, length: u64) -> bool {
        if length > LENGTH_BITS {
            return false;
        }
        self.meta = (self.meta & HAS_DATE) | HAS_LENGTH | length;
        true
    }

    /// The lines, each ending in CRLF.
    pub fn as_bytes(&self) -> &[u8] {
        &self.lines
    }

    pub fn content_length(&self) -> Option<u64> {
        (self.meta & HAS_LENGTH != 0).then_some(self.meta & LENGTH_BITS)
    }

    pub fn has_date(&self) -> bool {
        self.meta & HAS_DATE != 0
    }

    /// Appends the lines to `headers`, for writers and policies that take a map.
    pub fn append_to(self, headers: &mut HeaderMap) {
        // Each line is `Name:value` as checked when it was added, CRLF after.
        for line in self.lines.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let name = HeaderName::from_bytes(&line[..colon]);
            let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii_start());
            if let (Ok(name), Ok(value)) = (name, value) {
                headers.append(name, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_the_gateway_reads_or_sets_go_to_the_map() {
        for name in [
            "TE",
            "Sunset",
            "Upgrade",
            "Trailer",
            "Connection",
            "Keep-Alive",
            "Deprecation",
            "X-Request-Id",
            "RateLimit-Limit",
            "RateLimit-Reset",
            "Proxy-Connection",
            "Transfer-Encoding",
            "Proxy-Authenticate",
            "RateLimit-Remaining",
            "Proxy-Authorization",
            "X-Content-Type-Options",
            "Strict-Transport-Security",
        ] {
            assert_eq!(PassedLines::destination(name), Destination::Map, "{name}");
            let lower = name.to_ascii_lowercase();
            assert_eq!(
                PassedLines::destination(&lower),
                Destination::Map,
                "{lower}"
            );
        }
        assert_eq!(
            PassedLines::destination("Content-Length"),
            Destination::LineRead
        );
        for name in [
            "Date",
            "Server",
            "Content-Type",
            "ETag",
            "Set-Cookie",
            "Link",
            "Vary",
            "X-Requestid",
            "Content-Language",
            "RateLimit-Policy",
            "X-Content-Type-Option",
        ] {
            assert_eq!(PassedLines::destination(name), Destination::Line, "{name}");
        }
    }

    /// The hand-written names follow the lists the rest of the gateway
    /// keeps: a hop-by-hop header added to `forwarding`, or a header
    /// `finish_headers` starts to set, fails here until `destination` sends
    /// it to the map.
    #[test]
    fn the_map_takes_every_hop_by_hop_header_and_every_one_the_gateway_sets() {
        use http::header;
        use tollgate_policy::rate_limit::{RATELIMIT_LIMIT, RATELIMIT_REMAINING, RATELIMIT_RESET};

        use crate::forwarding::{HOP_BY_HOP, X_REQUEST_ID};
        use crate::lifecycle::{DEPRECATION, SUNSET};

        // What `proxy::finish_headers` sets in place of an upstream's.
        let set_by_gateway = [
            &X_REQUEST_ID,
            &RATELIMIT_LIMIT,
            &RATELIMIT_REMAINING,
            &RATELIMIT_RESET,
            &DEPRECATION,
            &SUNSET,
            &header::X_CONTENT_TYPE_OPTIONS,
            &header::STRICT_TRANSPORT_SECURITY,
        ];
        for name in HOP_BY_HOP.iter().chain(set_by_gateway) {
            assert_eq!(
                PassedLines::destination(name.as_str()),
                Destination::Map,
                "{name}"
            );
        }
    }

    #[test]
    fn lines_read_back_into_a_map_as_they_were() {
        let mut lines = PassedLines::with_capacity(64);
        lines.push("Server", b"nginx/1.22");
        lines.push("Date", b"Sun, 06 Dec 2026 11:00:00 GMT");
        lines.push("Set-Cookie", b"a=1");
        lines.push("set-cookie", b"b=2\xff");
        lines.push("Content-Length", b"5");
        assert!(lines.set_content_length(5));
        assert!(lines.has_date());
        assert_eq!(lines.content_length(), Some(5));
        assert!(lines
            .as_bytes()
            .starts_with(b"Server: nginx/1.22\r\nDate: Sun, 06 Dec 2026 11:00:00 GMT\r\n"));
        let mut map = HeaderMap::new();
        map.insert("x-request-id", HeaderValue::from_static("r1"));
        lines.append_to(&mut map);
        assert_eq!(map["server"], "nginx/1.22");
        assert_eq!(map["content-length"], "5");
        assert_eq!(map["x-request-id"], "r1");
        let cookies: Vec<&[u8]> = map
            .get_all("set-cookie")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(cookies, [&b"a=1"[..], &b"b=2\xff"[..]]);
        assert_eq!(map.len(), 6);
    }

    #[test]
    fn the_length_and_the_date_are_kept_apart() {
        let mut lines = PassedLines::default();
        assert!(lines.set_content_length(0));
        assert_eq!((lines.content_length(), lines.has_date()), (Some(0), false));
        lines.push("date", b"x");
        assert!(lines.set_content_length(LENGTH_BITS));
        assert_eq!(lines.content_length(), Some(LENGTH_BITS));
        assert!(lines.has_date());
        assert!(!lines.set_content_length(LENGTH_BITS + 1));
        assert_eq!(lines.content_length(), Some(LENGTH_BITS));
        assert_eq!(std::mem::size_of::<PassedLines>(), 32);
    }

    #[test]
    fn no_lines_no_date() {
        let lines = PassedLines::default();
        assert!(lines.as_bytes().is_empty() && !lines.has_date());
        assert!(lines.content_length().is_none());
        let mut map = HeaderMap::new();
        lines.append_to(&mut map);
        assert!(map.is_empty());
    }
}
