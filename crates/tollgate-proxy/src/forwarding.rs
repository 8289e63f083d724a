//! The headers a proxy owes its upstreams and clients: hop-by-hop removal,
//! `X-Forwarded-*` and `Forwarded`, request ids and trace context.
//!
//! Trust: only a peer listed in `trusted_proxies` may extend the forwarding
//! chain or name the request id. From anyone else, whatever the client wrote
//! in those headers is replaced by what the gateway saw.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::snapshot::Snapshot;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The hop-by-hop headers (RFC 9110 §7.6.1) a proxy never passes on.
pub(crate) static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
    header::TRAILER,
    header::TE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];
/// Bits of [`HOP_BY_HOP`]'s first two entries.
const CONNECTION_BIT: u16 = 1 << 0;
const UPGRADE_BIT: u16 = 1 << 1;

/// The options of a `Connection` header that name no other header.
const CONNECTION_OPTIONS: [&str; 3] = ["keep-alive", "close", "upgrade"];

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the
/// `Connection` header names. With `keep_upgrade`, `Connection: upgrade` and
/// `Upgrade` stay, for WebSocket handshakes.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds the hop-by-hop headers present, and only
    // those are removed: most messages carry none, or only `Connection`, and
    // each hashed removal costs more than the pass (measured: ~100
    // instructions a removal, 8 of them on every upstream answer before).
    let mut present: u16 = 0;
    for name in headers.keys() {
        if let Some(index) = hop_by_hop_index(name) {
            present |= 1 << index;
        }
    }
    if present == 0 && !keep_upgrade {
        return;
    }
    if present & CONNECTION_BIT != 0 {
        remove_connection_named(headers);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        present &= !(CONNECTION_BIT | UPGRADE_BIT);
    }
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << index) == 0 {
            continue;
        }
        // `TE: trailers` is meaningful end to end for gRPC; any other TE is hop-by-hop.
        if *name == header::TE
            && headers
                .get(header::TE)
                .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"))
        {
            continue;
        }
        headers.remove(name);
    }
}

/// The position of `name` in [`HOP_BY_HOP`]. Matched as a string: one
/// length test rules out most names, where comparing `HeaderName`s one by
/// one cost ~100 instructions a header.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    let index = match name.as_str() {
        "connection" => 0,
        "upgrade" => 1,
        "transfer-encoding" => 2,
        "trailer" => 3,
        "te" => 4,
        "proxy-authenticate" => 5,
        "proxy-authorization" => 6,
        "keep-alive" => 7,
        "proxy-connection" => 8,
        _ => return None,
    };
    debug_assert_eq!(HOP_BY_HOP[index], name);
    Some(index)
}

/// Removes the headers the `Connection` header names (its own options
/// `upgrade`, `close` and `keep-alive` aside, and never `X-Request-Id`).
fn remove_connection_named(headers: &mut HeaderMap) {
    let Some(connection) = headers.get(header::CONNECTION) else {
        return;
    };
    for name in connection_options(connection).named {
        headers.remove(&name);
    }
}

/// What a `Connection` header says.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ConnectionOptions {
    /// `close`: the connection ends after this message.
    pub close: bool,
    /// The headers it names (hop-by-hop, then), `X-Request-Id` never.
    pub named: Vec<HeaderName>,
}

pub(crate) fn connection_options(value: &HeaderValue) -> ConnectionOptions {
    let Ok(list) = value.to_str() else {
        return ConnectionOptions::default();
    };
    let is_option = |token: &str| {
        CONNECTION_OPTIONS
            .iter()
            .any(|option| token.eq_ignore_ascii_case(option))
    };
    // What nearly every message says: one option, naming no header.
    if is_option(list) {
        return ConnectionOptions {
            close: list.eq_ignore_ascii_case("close"),
            named: Vec::new(),
        };
    }
    let mut options = ConnectionOptions::default();
    for token in list.split(',').map(str::trim) {
        if token.eq_ignore_ascii_case("close") {
            options.close = true;
        } else if !is_option(token) {
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                if name != X_REQUEST_ID {
                    options.named.push(name);
                }
            }
        }
    }
    options
}

/// Whether a header is hop-by-hop by its name alone (the headers a
/// `Connection` header names aside): `TE: trailers` is end to end.
pub(crate) fn is_hop_by_hop(name: &HeaderName, value: &HeaderValue) -> bool {
    match hop_by_hop_index(name) {
        None => false,
        Some(_) if *name == header::TE => !value.as_bytes().eq_ignore_ascii_case(b"trailers"),
        Some(_) => true,
    }
}

/// The client's address: the peer itself, or, behind trusted proxies, the
/// right-most address in `X-Forwarded-For` that is not a trusted proxy.
pub fn client_ip(snapshot: &Snapshot, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    if !snapshot.is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(list) = value.to_str() else {
            return client;
        };
        for item in list.rsplit(',') {
            match item.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !snapshot.is_trusted(ip) {
                        return ip;
                    }
                }
                Err(_) => return client,
            }
        }
    }
    client
}

/// The peer's address as forwarding headers write it, computed once per connection.
#[derive(Clone, Debug)]
pub struct PeerForms {
    /// `X-Forwarded-For` element: the bare address.
    pub address: HeaderValue,
    /// `Forwarded` element start: `for=192.0.2.1` or `for="[2001:db8::1]"`.
    pub forwarded_for: String,
}

impl PeerForms {
    pub fn new(peer: IpAddr) -> PeerForms {
        let text = peer.to_string();
        let forwarded_for = match peer {
            IpAddr::V4(_) => format!("for={text}"),
            IpAddr::V6(_) => format!("for=\"[{text}]\""),
        };
        PeerForms {
            address: HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("unknown")),
            forwarded_for,
        }
    }
}

/// Request facts the forwarding headers describe.
pub struct ForwardInfo<'a> {
    pub peer: &'a PeerForms,
    pub trusted_peer: bool,
    pub tls: bool,
    /// The host the client asked for, as it wrote it (with port if any).
    pub host: &'a str,
    /// `host` as the header value it came in, when it came as `Host`:
    /// `X-Forwarded-Host` shares it instead of a copy.
    pub host_value: Option<&'a HeaderValue>,
}

/// Sets `X-Forwarded-For/-Proto/-Host` and `Forwarded`.
pub fn set_forwarded_headers(headers: &mut HeaderMap, info: &ForwardInfo<'_>) {
    let proto = if info.tls { "https" } else { "http" };
    let mut element = String::with_capacity(info.peer.forwarded_for.len() + info.host.len() + 24);
    element.push_str(&info.peer.forwarded_for);
    if !info.host.is_empty() {
        element.push_str(";host=\"");
        element.push_str(info.host);
        element.push('"');
    }
    element.push_str(";proto=");
    element.push_str(proto);
    let proto_value = HeaderValue::from_static(proto);
    if info.trusted_peer {
        let peer = info.peer.address.to_str().unwrap_or("unknown");
        append_list(headers, &X_FORWARDED_FOR, peer);
        append_list(headers, &FORWARDED, &element);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO.clone(), proto_value);
        }
        if !headers.contains_key(&X_FORWARDED_HOST) && !info.host.is_empty() {
            set_host(headers, info);
        }
    } else {
        headers.insert(X_FORWARDED_FOR.clone(), info.peer.address.clone());
        set_owned(headers, &FORWARDED, element);
        headers.insert(X_FORWARDED_PROTO.clone(), proto_value);
        if info.host.is_empty() {
            headers.remove(&X_FORWARDED_HOST);
        } else {
            set_host(headers, info);
        }
    }
}

/// `X-Forwarded-Host`: the client's `Host` value itself when the host came
/// from it (a reference count, where a copy cost ~300 instructions).
fn set_host(headers: &mut HeaderMap, info: &ForwardInfo<'_>) {
    match info.host_value {
        Some(value) => {
            headers.insert(X_FORWARDED_HOST.clone(), value.clone());
        }
        None => set(headers, &X_FORWARDED_HOST, info.host),
    }
}

fn set_owned(headers: &mut HeaderMap, name: &HeaderName, value: String) {
    match HeaderValue::try_from(value) {
        Ok(value) => {
            headers.insert(name.clone(), value);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

fn set(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(value) => {
            headers.insert(name.clone(), value);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

/// Appends to a comma-separated list header, folding multiple lines into one.
fn append_list(headers: &mut HeaderMap, name: &HeaderName, item: &str) {
    let mut joined = String::new();
    for value in headers.get_all(name) {
        if let Ok(v) = value.to_str() {
            joined.push_str(v);
            joined.push_str(", ");
        }
    }
    joined.push_str(item);
    set(headers, name, &joined);
}

/// The request id: the client's when it comes from a trusted peer and looks
/// sane, else a new random one.
pub fn request_id(headers: &HeaderMap, trusted_peer: bool) -> String {
    if trusted_peer {
        if let Some(value) = headers.get(&X_REQUEST_ID) {
            let bytes = value.as_bytes();
            if !bytes.is_empty()
                && bytes.len() <= 128
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
            {
                // Checked ASCII above, so this cannot fail.
                return String::from_utf8_lossy(bytes).into_owned();
            }
        }
    }
    new_id()
}

/// 128 random bits as 32 lower-case hex digits, written into a stack
/// buffer: `hex::encode` builds its string one `char` at a time (measured
/// ~800 instructions, against ~100 this way, on every request).
pub fn new_id() -> String {
    let mut digits = [0u8; 32];
    hex::encode_to_slice(fastrand::u128(..).to_be_bytes(), &mut digits)
        .expect("32 digits for 16 bytes");
    std::str::from_utf8(&digits)
        .expect("hex digits are ASCII")
        .to_owned()
}

/// A random number that is not zero (W3C trace and parent ids may not be),
/// drawn whole and drawn again on zero: a draw from `1..` goes through a
/// range reduction with 128-bit multiplications.
fn nonzero<T: Default + PartialEq>(draw: impl Fn() -> T) -> T {
    loop {
        let n = draw();
        if n != T::default() {
            return n;
        }
    }
}

/// Keeps a valid W3C `traceparent`; starts a new trace when there is none or it is malformed.
pub fn ensure_traceparent(headers: &mut HeaderMap) {
    if let Some(value) = headers.get(&TRACEPARENT) {
        if valid_traceparent(value.as_bytes()) {
            return;
        }
        headers.remove(&TRACEPARENT);
        headers.remove(HeaderName::from_static("tracestate"));
    }
    headers.insert(TRACEPARENT.clone(), new_traceparent());
}

/// `00-<trace id>-<parent id>-01` with random non-zero ids, written into a
/// stack buffer (one per request without a trace: `format!` cost more).
fn new_traceparent() -> HeaderValue {
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-01";
    let trace = nonzero(|| fastrand::u128(..)).to_be_bytes();
    let parent = nonzero(|| fastrand::u64(..)).to_be_bytes();
    hex::encode_to_slice(trace, &mut text[3..35]).expect("32 digits for 16 bytes");
    hex::encode_to_slice(parent, &mut text[36..52]).expect("16 digits for 8 bytes");
    HeaderValue::from_bytes(&text).expect("hex digits and dashes make a header value")
}

fn valid_traceparent(value: &[u8]) -> bool {
    // version(2)-trace_id(32)-parent_id(16)-flags(2)
    if value.len() < 55 {
        return false;
    }
    let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    hex(&value[0..2])
        && &value[0..2] != b"ff"
        && value[2] == b'-'
        && hex(&value[3..35])
        && value[3..35].iter().any(|b| *b != b'0')
        && value[35] == b'-'
        && hex(&value[36..52])
        && value[36..52].iter().any(|b| *b != b'0')
        && value[52] == b'-'
        && hex(&value[53..55])
        && (value.len() == 55 || value[0..2] != *b"00" && value[55] == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_named_ones() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
        );
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "gzip".parse().unwrap());
        h.insert("x-end-to-end", "1".parse().unwrap());
        remove_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::TE).is_none());
        assert!(h.get("x-end-to-end").is_some());
    }

    #[test]
    fn connection_options_name_no_header_and_the_request_id_is_never_named() {
        for value in [
            "Keep-Alive",
            "close",
            "UPGRADE",
            "close, x-request-id, keep-alive",
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, value.parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert(&X_REQUEST_ID, "abc".parse().unwrap());
            h.insert(
                "close",
                "an end-to-end header that happens to be called so"
                    .parse()
                    .unwrap(),
            );
            remove_hop_by_hop(&mut h, false);
            assert_eq!(h.len(), 2, "{value}: {h:?}");
            assert!(
                h.contains_key(&X_REQUEST_ID) && h.contains_key("close"),
                "{value}"
            );
        }
    }

    #[test]
    fn hop_by_hop_index_finds_each_name_and_no_other() {
        assert_eq!(
            HOP_BY_HOP[CONNECTION_BIT.trailing_zeros() as usize],
            header::CONNECTION
        );
        assert_eq!(
            HOP_BY_HOP[UPGRADE_BIT.trailing_zeros() as usize],
            header::UPGRADE
        );
        for (index, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(index), "{name}");
            let upper = HeaderName::from_bytes(name.as_str().to_uppercase().as_bytes()).unwrap();
            assert_eq!(hop_by_hop_index(&upper), Some(index), "{upper}");
        }
        for other in [
            "host",
            "tea",
            "t",
            "x-forwarded-for",
            "connections",
            "keep-alive2",
        ] {
            assert_eq!(
                hop_by_hop_index(&HeaderName::from_static(other)),
                None,
                "{other}"
            );
        }
    }

    #[test]
    fn every_hop_by_hop_header_goes_and_upgrades_keep_theirs() {
        let every = || {
            let mut h = HeaderMap::new();
            for name in &HOP_BY_HOP {
                h.append(name, "x".parse().unwrap());
            }
            h.append(header::CONNECTION, "close".parse().unwrap());
            h.insert("x-end-to-end", "1".parse().unwrap());
            h
        };
        let mut h = every();
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-end-to-end"]);

        let mut h = every();
        remove_hop_by_hop(&mut h, true);
        assert_eq!(
            h.get_all(header::CONNECTION).iter().collect::<Vec<_>>(),
            ["upgrade"]
        );
        assert_eq!(h.get(header::UPGRADE).unwrap(), "x");
        assert_eq!(
            h.len(),
            3,
            "only Connection, Upgrade and the end-to-end header: {h:?}"
        );

        // An upgrade request without hop-by-hop headers still says `Connection: upgrade`.
        let mut h = HeaderMap::new();
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn te_trailers_survives_for_grpc() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, "trailers".parse().unwrap());
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.insert("forwarded", "for=6.6.6.6".parse().unwrap());
        let peer = PeerForms::new("10.1.2.3".parse().unwrap());
        let info = ForwardInfo {
            peer: &peer,
            trusted_peer: false,
            tls: false,
            host: "api.example.com",
            host_value: None,
        };
        set_forwarded_headers(&mut h, &info);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.1.2.3");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "api.example.com");
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=10.1.2.3;host=\"api.example.com\";proto=http"
        );
    }

    #[test]
    fn trusted_chains_are_extended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.1.1.1".parse().unwrap());
        let peer = PeerForms::new("10.0.0.1".parse().unwrap());
        let info = ForwardInfo {
            peer: &peer,
            trusted_peer: true,
            tls: true,
            host: "h",
            host_value: Some(&HeaderValue::from_static("h")),
        };
        set_forwarded_headers(&mut h, &info);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "1.1.1.1, 10.0.0.1");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "h");
    }

    #[test]
    fn new_traceparents_are_valid_and_random() {
        let first = new_traceparent();
        let second = new_traceparent();
        for value in [&first, &second] {
            assert!(valid_traceparent(value.as_bytes()), "{value:?}");
            assert_eq!(value.len(), 55);
        }
        assert_ne!(first.as_bytes()[3..52], second.as_bytes()[3..52]);
        // Every digit position takes more than one value: the ids fill the
        // whole field, not only its low digits.
        let values: Vec<HeaderValue> = (0..64).map(|_| new_traceparent()).collect();
        for position in (3..35).chain(36..52) {
            let first = values[0].as_bytes()[position];
            assert!(
                values.iter().any(|v| v.as_bytes()[position] != first),
                "position {position} never changes"
            );
        }
    }

    #[test]
    fn ids_are_lower_case_hex_and_draws_are_not_zero() {
        let id = new_id();
        assert_eq!(id.len(), 32);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        // Zero is drawn again.
        let draws = std::cell::Cell::new(0);
        let n = nonzero(|| {
            draws.set(draws.get() + 1);
            if draws.get() < 3 {
                0u64
            } else {
                7
            }
        });
        assert_eq!((n, draws.get()), (7, 3));
    }

    #[test]
    fn traceparent_kept_when_valid_else_new() {
        let mut h = HeaderMap::new();
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert("traceparent", good.parse().unwrap());
        ensure_traceparent(&mut h);
        assert_eq!(h.get("traceparent").unwrap(), good);
        h.insert("traceparent", "garbage".parse().unwrap());
        ensure_traceparent(&mut h);
        assert!(valid_traceparent(h.get("traceparent").unwrap().as_bytes()));
    }

    #[test]
    fn request_ids_from_untrusted_clients_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "client-chosen".parse().unwrap());
        assert_eq!(request_id(&h, true), "client-chosen");
        let id = request_id(&h, false);
        assert_eq!(id.len(), 32);
        h.insert("x-request-id", "bad id with spaces".parse().unwrap());
        assert_eq!(request_id(&h, true).len(), 32);
    }
}
