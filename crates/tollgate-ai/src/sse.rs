//! Server-Sent Events, both ways: [`SseParser`] reads a provider's stream as
//! it arrives (bytes split anywhere, any of the three line ends), [`frame`]
//! writes one event for a client.
//!
//! The parser follows the WHATWG event-stream rules the gateway needs:
//! `event:` and `data:` fields (several `data:` lines join with `\n`),
//! comments (`:`) and `id:` / `retry:` ignored, an event dispatched on a
//! blank line, a leading byte-order mark skipped. It must never buffer
//! without bound: one event larger than its limit is an error.

use bytes::{BufMut, Bytes, BytesMut};

/// The default bound on one event (its data and the line being read).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `None` when absent (the spec's `message`).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Why a stream cannot be read as Server-Sent Events.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("a server-sent event exceeds {limit} bytes")]
    TooLarge { limit: usize },
}

/// An incremental event-stream reader.
#[derive(Debug)]
pub struct SseParser {
    /// The bytes of the line not yet ended.
    line: Vec<u8>,
    /// The current event's fields so far.
    event: Option<String>,
    data: String,
    has_data: bool,
    /// The last byte seen was `\r`: a `\n` right after it ends nothing new.
    after_cr: bool,
    /// Still at the very start of the stream (where a BOM may stand).
    at_start: bool,
    max_event_bytes: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new()
    }
}

impl SseParser {
    /// A parser bounding events to [`DEFAULT_MAX_EVENT_BYTES`].
    pub fn new() -> SseParser {
        SseParser::with_limit(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A parser refusing any event (data plus the pending line) larger than
    /// `max_event_bytes`.
    pub fn with_limit(max_event_bytes: usize) -> SseParser {
        SseParser {
            line: Vec::new(),
            event: None,
            data: String::new(),
            has_data: false,
            after_cr: false,
            at_start: true,
            max_event_bytes,
        }
    }

    /// The events completed by `chunk`.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut events = Vec::new();
        let mut rest = chunk;
        if self.after_cr && !rest.is_empty() {
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
            self.after_cr = false;
        }
        while let Some(end) = memchr::memchr2(b'\n', b'\r', rest) {
            self.end_line(&rest[..end], &mut events)?;
            if rest[end] == b'\r' {
                match rest.get(end + 1) {
                    Some(b'\n') => rest = &rest[end + 2..],
                    Some(_) => rest = &rest[end + 1..],
                    None => {
                        self.after_cr = true;
                        rest = &[];
                    }
                }
            } else {
                rest = &rest[end + 1..];
            }
        }
        self.push_line_bytes(rest)?;
        Ok(events)
    }

    /// The end of the stream: a last line without its line end is read, and
    /// an event still pending is dispatched (the spec drops it; providers
    /// that omit the final blank line are common enough to be lenient).
    pub fn finish(&mut self) -> Result<Vec<SseEvent>, SseError> {
        let mut events = Vec::new();
        if !self.line.is_empty() {
            self.end_line(&[], &mut events)?;
        }
        self.dispatch(&mut events);
        self.after_cr = false;
        Ok(events)
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.check_room(bytes.len())?;
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// Whether `more` bytes of the line fit the event's bound.
    fn check_room(&self, more: usize) -> Result<(), SseError> {
        if more > 0 && self.line.len() + more + self.data.len() > self.max_event_bytes {
            return Err(SseError::TooLarge {
                limit: self.max_event_bytes,
            });
        }
        Ok(())
    }

    /// A line has ended, `tail` its last bytes (any before them wait in
    /// `self.line`). A line that came whole in one chunk, as most do, is
    /// read where it lies rather than copied into `self.line` first.
    fn end_line(&mut self, tail: &[u8], events: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if self.line.is_empty() {
            self.check_room(tail.len())?;
            self.apply_line(tail, events);
        } else {
            self.push_line_bytes(tail)?;
            let line = std::mem::take(&mut self.line);
            self.apply_line(&line, events);
            // Its allocation serves the next partial line.
            self.line = line;
            self.line.clear();
        }
        Ok(())
    }

    /// Applies one whole line, dispatching on a blank one.
    fn apply_line(&mut self, line: &[u8], events: &mut Vec<SseEvent>) {
        let mut line = line;
        if self.at_start {
            self.at_start = false;
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(events);
            return;
        }
        if line[0] != b':' {
            let (name, value) = match line.iter().position(|b| *b == b':') {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &b""[..]),
            };
            match name {
                b"data" => {
                    if self.has_data {
                        self.data.push('\n');
                    }
                    push_text(&mut self.data, value);
                    self.has_data = true;
                }
                b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
                _ => {}
            }
        }
    }

    fn dispatch(&mut self, events: &mut Vec<SseEvent>) {
        let event = self.event.take();
        if self.has_data {
            self.has_data = false;
            events.push(SseEvent {
                event,
                data: std::mem::take(&mut self.data),
            });
        }
    }
}

/// Appends `bytes` as text, invalid UTF-8 replaced: checked in one pass
/// when valid, as nearly every provider's is (the lossy reading walks it in
/// chunks, several times slower).
fn push_text(out: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => out.push_str(text),
        Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
    }
}

/// One event as a client reads it: `event: <event>\n` when given, a `data:`
/// line per line of `data`, and the blank line that dispatches it.
pub fn frame(event: Option<&str>, data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 16 + event.map_or(0, |e| e.len() + 8));
    if let Some(event) = event {
        out.put_slice(b"event: ");
        out.put_slice(event.as_bytes());
        out.put_u8(b'\n');
    }
    // Every line end a reader knows splits a data line, so none can end
    // the `data:` field early and start another.
    let data = match memchr::memchr(b'\r', data.as_bytes()) {
        Some(_) => std::borrow::Cow::Owned(data.replace("\r\n", "\n")),
        None => std::borrow::Cow::Borrowed(data),
    };
    let data = data.as_bytes();
    let mut start = 0;
    for end in memchr::memchr2_iter(b'\n', b'\r', data) {
        data_line(&mut out, &data[start..end]);
        start = end + 1;
    }
    data_line(&mut out, &data[start..]);
    out.put_u8(b'\n');
    out.freeze()
}

fn data_line(out: &mut BytesMut, line: &[u8]) {
    out.put_slice(b"data: ");
    out.put_slice(line);
    out.put_u8(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for chunk in chunks {
            events.extend(parser.feed(chunk).unwrap());
        }
        events.extend(parser.finish().unwrap());
        events
    }

    /// Every way of cutting `input` in two, and byte by byte, gives `expected`.
    fn assert_split_invariant(input: &[u8], expected: &[SseEvent]) {
        assert_eq!(parse_all(&[input]), expected, "whole");
        for cut in 0..=input.len() {
            let (a, b) = input.split_at(cut);
            assert_eq!(parse_all(&[a, b]), expected, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(parse_all(&bytes), expected, "byte by byte");
    }

    #[test]
    fn reads_events_with_every_line_end() {
        let expected = vec![
            ev(Some("message_start"), "{\"a\":1}"),
            ev(None, "line one\nline two"),
            ev(None, ""),
        ];
        for end in ["\n", "\r\n", "\r"] {
            let input = format!(
                "event: message_start{end}data: {{\"a\":1}}{end}{end}: a comment{end}id: 7{end}retry: 100{end}data:line one{end}data: line two{end}{end}data{end}{end}"
            );
            assert_split_invariant(input.as_bytes(), &expected);
        }
    }

    #[test]
    fn mixed_line_ends_and_a_cr_at_a_chunk_boundary() {
        let input = b"data: a\r\rdata: b\r\n\r\ndata: c\n\r\n";
        assert_split_invariant(input, &[ev(None, "a"), ev(None, "b"), ev(None, "c")]);
        // `\r` then `\r\n`: the second `\r` is a blank line, not eaten.
        let mut parser = SseParser::new();
        assert!(parser.feed(b"data: x\r").unwrap().is_empty());
        assert!(parser.feed(b"").unwrap().is_empty());
        assert_eq!(parser.feed(b"\n").unwrap(), vec![]);
        assert_eq!(parser.feed(b"\r\n").unwrap(), vec![ev(None, "x")]);
    }

    #[test]
    fn only_one_space_after_the_colon_is_dropped() {
        assert_eq!(
            parse_all(&[b"data:  two spaces\n\n"]),
            vec![ev(None, " two spaces")]
        );
    }

    #[test]
    fn events_without_data_are_not_dispatched_and_event_names_reset() {
        let input = b"event: ping\n\ndata: after\n\n";
        assert_eq!(parse_all(&[input]), vec![ev(None, "after")]);
    }

    #[test]
    fn a_leading_bom_is_skipped_once() {
        let input = b"\xEF\xBB\xBFdata: x\n\n";
        assert_split_invariant(input, &[ev(None, "x")]);
    }

    #[test]
    fn finish_reads_a_last_event_without_its_blank_line() {
        assert_eq!(parse_all(&[b"data: [DONE]"]), vec![ev(None, "[DONE]")]);
        assert_eq!(parse_all(&[b"data: [DONE]\n"]), vec![ev(None, "[DONE]")]);
        assert!(parse_all(&[b": keep-alive\n"]).is_empty());
    }

    #[test]
    fn multibyte_text_split_inside_a_character() {
        let input = "data: héllo → 世界\n\n".as_bytes();
        assert_split_invariant(input, &[ev(None, "héllo → 世界")]);
    }

    #[test]
    fn an_oversized_event_is_an_error() {
        let mut parser = SseParser::with_limit(16);
        assert!(parser.feed(b"data: 0123456789\n").is_ok());
        assert_eq!(
            parser.feed(b"data: 0123456789\n"),
            Err(SseError::TooLarge { limit: 16 })
        );
        // A line that never ends is bounded too.
        let mut parser = SseParser::with_limit(16);
        assert!(parser.feed(b"data: 01234").is_ok());
        assert!(parser.feed(b"567890123456").is_err());
        // The bound is per event: many small events are fine.
        let mut parser = SseParser::with_limit(16);
        for _ in 0..100 {
            assert_eq!(parser.feed(b"data: 0123456789\n\n").unwrap().len(), 1);
        }
    }

    #[test]
    fn frame_writes_event_and_data_lines() {
        assert_eq!(
            frame(None, "{\"a\":1}"),
            Bytes::from_static(b"data: {\"a\":1}\n\n")
        );
        assert_eq!(
            frame(Some("message_stop"), "{}"),
            Bytes::from_static(b"event: message_stop\ndata: {}\n\n")
        );
        assert_eq!(
            frame(None, "a\nb"),
            Bytes::from_static(b"data: a\ndata: b\n\n")
        );
        assert_eq!(
            frame(None, "a\r\nb\revent: x"),
            Bytes::from_static(b"data: a\ndata: b\ndata: event: x\n\n")
        );
        // What frame writes, the parser reads back.
        let framed = frame(Some("x"), "one\ntwo");
        assert_eq!(parse_all(&[&framed]), vec![ev(Some("x"), "one\ntwo")]);
    }
}
