//! Provider adapters: one module per provider kind, behind [`Provider`].
//! An adapter turns a canonical request into the provider's HTTP request and
//! the provider's answer, stream or error back into canonical values; it does
//! no I/O. OpenAI-compatible servers (Ollama, vLLM, DeepSeek, Groq,
//! OpenRouter…) need configuration only: the `openai` adapter with another
//! base URL.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::{Map, Value};

use crate::canonical::{
    ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse, ErrorKind, Format,
    FormatError, ProviderError, StreamEvent, Usage,
};
use crate::formats::openai::VerbatimChat;

pub mod anthropic;
pub mod azure;
pub mod gemini;
pub mod openai;
mod openai_body;
mod openai_wire;

/// The provider kinds a configuration may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    Gemini,
    Mistral,
    AzureOpenAi,
    OpenAiCompatible,
}

/// One HTTP request for a provider, ready to send.
#[derive(Clone, Debug)]
pub struct UpstreamRequest {
    pub method: Method,
    /// Absolute: the provider's base URL joined with the operation's path.
    pub url: String,
    /// Authentication (from the key), content type, version headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// Reads a provider's streamed answer: bytes in as they arrive (split
/// anywhere), canonical events out as soon as they are whole.
pub trait StreamDecoder: Send {
    /// Events completed by `chunk`. An `Err` is an error the provider sent
    /// inside the stream (Anthropic's `error` event, for one).
    fn feed(&mut self, chunk: &[u8]) -> Result<Vec<StreamEvent>, ProviderError>;
    /// Called at the end of the body: events still pending.
    fn finish(&mut self) -> Result<Vec<StreamEvent>, ProviderError>;
}

/// What an adapter knows about one provider kind.
pub trait Provider: Send + Sync {
    /// The HTTP request for a chat (streamed when `request.stream`), asking
    /// the provider to report usage in streams where it can. `model` is the
    /// provider's model name; `key` is absent for keyless local servers.
    fn chat_request(
        &self,
        request: &ChatRequest,
        model: &str,
        key: Option<&str>,
    ) -> Result<UpstreamRequest, FormatError>;

    /// The HTTP request for a chat whose client body this provider takes as
    /// it came, the model's name excepted: what [`Provider::chat_request`]
    /// would send, without rendering the body again. `None` when the body
    /// must be rendered (the default: a provider of another format).
    fn chat_request_verbatim(
        &self,
        _chat: &VerbatimChat,
        _model: &str,
        _key: Option<&str>,
    ) -> Option<Result<UpstreamRequest, FormatError>> {
        None
    }

    /// A whole (non-streamed) chat answer.
    fn chat_response(&self, body: &[u8]) -> Result<ChatResponse, ProviderError>;

    /// The client format this provider's whole chat answers are written in,
    /// if it is one a client speaks. A client speaking it gets the answer as
    /// the provider sent it, once [`Provider::chat_response`] has read it:
    /// rendering it again would cost CPU and lose what the canonical answer
    /// does not hold (several choices, logprobs, a system fingerprint).
    /// `None`: every answer is translated.
    fn native_format(&self) -> Option<Format> {
        None
    }

    /// The usage a whole chat answer in [`Provider::native_format`] reports,
    /// read without the rest of it, for an answer passed on as it came.
    /// `None` when it reports none or this quick reading does not fit it:
    /// the caller then reads it with [`Provider::chat_response`], which
    /// estimates the usage or refuses the answer as it would any other.
    fn native_usage(&self, _body: &[u8]) -> Option<Usage> {
        None
    }

    /// A decoder for a streamed chat answer.
    fn stream_decoder(&self) -> Box<dyn StreamDecoder>;

    /// `Err` when the provider has no embeddings.
    fn embeddings_request(
        &self,
        request: &EmbeddingsRequest,
        model: &str,
        key: Option<&str>,
    ) -> Result<UpstreamRequest, FormatError>;

    fn embeddings_response(&self, body: &[u8]) -> Result<EmbeddingsResponse, ProviderError>;

    /// The provider's error answer, read from its status, headers and body.
    fn error(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError;
}

/// The adapter for `kind`, sending to `base_url` (without a trailing `/`;
/// [`default_base_url`] when the configuration sets none).
pub fn adapter(kind: ProviderKind, base_url: &str) -> Box<dyn Provider> {
    let base_url = base_url.trim_end_matches('/');
    match kind {
        ProviderKind::OpenAi => Box::new(openai::OpenAi::new(base_url, openai::Dialect::OpenAi)),
        ProviderKind::OpenAiCompatible => {
            Box::new(openai::OpenAi::new(base_url, openai::Dialect::Compatible))
        }
        ProviderKind::Mistral => Box::new(openai::OpenAi::new(base_url, openai::Dialect::Mistral)),
        ProviderKind::AzureOpenAi => Box::new(azure::AzureOpenAi::new(base_url)),
        ProviderKind::Anthropic => Box::new(anthropic::Anthropic::new(base_url)),
        ProviderKind::Gemini => Box::new(gemini::Gemini::new(base_url)),
    }
}

/// The base URL a kind uses when the configuration sets none; `None` for
/// kinds that need one (`openai_compatible`, `azure_openai`).
pub fn default_base_url(kind: ProviderKind) -> Option<&'static str> {
    match kind {
        ProviderKind::OpenAi => Some("https://api.openai.com/v1"),
        ProviderKind::Anthropic => Some("https://api.anthropic.com/v1"),
        ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com/v1beta"),
        ProviderKind::Mistral => Some("https://api.mistral.ai/v1"),
        ProviderKind::AzureOpenAi | ProviderKind::OpenAiCompatible => None,
    }
}

/// The kind of failure an HTTP status means, whatever the provider.
pub fn kind_for_status(status: u16) -> ErrorKind {
    match status {
        401 => ErrorKind::Authentication,
        // 402: the account behind the key cannot pay; another key may.
        402 | 403 => ErrorKind::Permission,
        404 => ErrorKind::NotFound,
        413 => ErrorKind::TooLarge,
        429 => ErrorKind::RateLimited,
        503 | 529 => ErrorKind::Overloaded,
        408 | 500..=599 => ErrorKind::Server,
        400..=499 => ErrorKind::InvalidRequest,
        _ => ErrorKind::BadResponse,
    }
}

/// The status that stands for `kind` when a provider reports an error
/// inside a stream it opened with 200.
pub(crate) fn status_for_kind(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::InvalidRequest => 400,
        ErrorKind::Authentication => 401,
        ErrorKind::Permission => 403,
        ErrorKind::NotFound => 404,
        ErrorKind::TooLarge => 413,
        ErrorKind::RateLimited => 429,
        ErrorKind::Server => 500,
        ErrorKind::Overloaded => 529,
        ErrorKind::BadResponse => 502,
    }
}

/// How long the provider asks to wait: `retry-after-ms` (OpenAI, Azure), or
/// `Retry-After` in seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, SystemTime::now())
}

fn retry_after_at(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    let value = text("retry-after")?;
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    if let Ok(seconds) = value.parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 {
            return Some(Duration::from_secs_f64(seconds));
        }
    }
    let at = UNIX_EPOCH + Duration::from_secs(parse_http_date(value)?);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Unix seconds of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn parse_http_date(text: &str) -> Option<u64> {
    let fields: Vec<&str> = text.split_ascii_whitespace().collect();
    let [_weekday, day, month, year, time, "GMT"] = fields.as_slice() else {
        return None;
    };
    let day: u64 = day.parse().ok()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as u64 + 1;
    let year: u64 = year.parse().ok()?;
    let mut hms = time.split(':').map(|part| part.parse::<u64>().ok());
    let (hour, minute, second) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some()
        || !(1..=31).contains(&day)
        || year < 1970
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), from 1970-01-01.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// An error from a status, headers and what the adapter read of the body.
pub(crate) fn provider_error(
    status: u16,
    headers: &HeaderMap,
    kind: Option<ErrorKind>,
    message: Option<String>,
    body: &[u8],
) -> ProviderError {
    let message = message
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| fallback_message(status, body));
    ProviderError {
        status,
        kind: kind.unwrap_or_else(|| kind_for_status(status)),
        message,
        retry_after: retry_after(headers),
    }
}

/// A body no adapter could read: its start, or the status alone.
fn fallback_message(status: u16, body: &[u8]) -> String {
    const MAX: usize = 512;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let text = text.trim();
    if text.is_empty() {
        format!("the provider answered HTTP {status}")
    } else {
        format!("the provider answered HTTP {status}: {text}")
    }
}

/// A 2xx answer the adapter cannot read.
pub(crate) fn bad_response(message: impl Into<String>) -> ProviderError {
    ProviderError {
        status: 200,
        kind: ErrorKind::BadResponse,
        message: message.into(),
        retry_after: None,
    }
}

/// A body that must be JSON.
pub(crate) fn parse_json(body: &[u8], what: &str) -> Result<Value, ProviderError> {
    serde_json::from_slice(body).map_err(|e| bad_response(format!("{what} is not valid JSON: {e}")))
}

pub(crate) fn json_body(body: Map<String, Value>) -> Bytes {
    Bytes::from(serde_json::to_vec(&Value::Object(body)).expect("JSON values serialise"))
}

/// A header carrying the key: marked sensitive (kept out of `Debug` and
/// HPACK tables), and an error that never repeats it.
pub(crate) fn secret_header(
    name: &'static str,
    value: &str,
) -> Result<(HeaderName, HeaderValue), FormatError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| {
        FormatError::new("the provider key contains characters not allowed in a header")
    })?;
    value.set_sensitive(true);
    Ok((HeaderName::from_static(name), value))
}

pub(crate) fn json_content_type() -> (HeaderName, HeaderValue) {
    (
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )
}

/// A model name as a URL path segment: refused when it would change the path.
pub(crate) fn path_segment<'a>(model: &'a str, what: &str) -> Result<&'a str, FormatError> {
    let valid = !model.is_empty()
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'~'));
    if valid && model != "." && model != ".." {
        Ok(model)
    } else {
        Err(FormatError::new(format!(
            "{what} \"{model}\" cannot be used in a URL path"
        )))
    }
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn statuses_map_to_kinds() {
        let cases = [
            (400, ErrorKind::InvalidRequest),
            (401, ErrorKind::Authentication),
            (402, ErrorKind::Permission),
            (403, ErrorKind::Permission),
            (404, ErrorKind::NotFound),
            (408, ErrorKind::Server),
            (413, ErrorKind::TooLarge),
            (422, ErrorKind::InvalidRequest),
            (429, ErrorKind::RateLimited),
            (500, ErrorKind::Server),
            (502, ErrorKind::Server),
            (503, ErrorKind::Overloaded),
            (529, ErrorKind::Overloaded),
            (200, ErrorKind::BadResponse),
        ];
        for (status, kind) in cases {
            assert_eq!(kind_for_status(status), kind, "{status}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_milliseconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            retry_after_at(&headers(&[("retry-after", "7")]), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after_at(&headers(&[("retry-after", "1.5")]), now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after_at(
                &headers(&[("retry-after-ms", "250"), ("retry-after", "9")]),
                now
            ),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            retry_after_at(
                &headers(&[("retry-after", "Sun, 06 Nov 1994 08:50:07 GMT")]),
                now
            ),
            Some(Duration::from_secs(30))
        );
        // A date already past means now.
        assert_eq!(
            retry_after_at(
                &headers(&[("retry-after", "Sun, 06 Nov 1994 08:00:00 GMT")]),
                now
            ),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after_at(&headers(&[("retry-after", "soon")]), now),
            None
        );
        assert_eq!(retry_after_at(&headers(&[]), now), None);
    }

    #[test]
    fn http_dates_parse_to_unix_seconds() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(951_825_600)
        );
        assert_eq!(
            parse_http_date("Wed, 31 Dec 2025 23:59:59 GMT"),
            Some(1_767_225_599)
        );
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 PST"), None);
        assert_eq!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49 GMT"), None);
    }

    #[test]
    fn unreadable_error_bodies_keep_their_start() {
        let error = provider_error(
            502,
            &HeaderMap::new(),
            None,
            None,
            b"<html>Bad gateway</html>",
        );
        assert_eq!(error.kind, ErrorKind::Server);
        assert_eq!(
            error.message,
            "the provider answered HTTP 502: <html>Bad gateway</html>"
        );
        let long = vec![b'x'; 10_000];
        assert!(
            provider_error(500, &HeaderMap::new(), None, None, &long)
                .message
                .len()
                < 600
        );
        assert_eq!(
            provider_error(500, &HeaderMap::new(), None, None, b"").message,
            "the provider answered HTTP 500"
        );
    }

    #[test]
    fn key_headers_are_sensitive_and_their_errors_quiet() {
        let (_, value) = secret_header("x-api-key", "sk-secret").unwrap();
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("sk-secret"));
        let error = secret_header("x-api-key", "sk-secret\nInjected: 1").unwrap_err();
        assert!(!error.to_string().contains("sk-secret"));
    }

    #[test]
    fn model_names_cannot_escape_the_path() {
        assert!(path_segment("gemini-2.0-flash-001", "model").is_ok());
        for bad in ["", "..", "a/b", "a?b", "a#b", "a b", "a:b"] {
            assert!(path_segment(bad, "model").is_err(), "{bad}");
        }
    }

    #[test]
    fn adapters_exist_for_every_kind() {
        for kind in [
            ProviderKind::OpenAi,
            ProviderKind::Anthropic,
            ProviderKind::Gemini,
            ProviderKind::Mistral,
            ProviderKind::AzureOpenAi,
            ProviderKind::OpenAiCompatible,
        ] {
            let base = default_base_url(kind).unwrap_or("https://example.test/v1");
            let _ = adapter(kind, &format!("{base}/"));
        }
    }
}

/// Feeding decoders their samples cut anywhere.
#[cfg(test)]
pub(crate) mod testing {
    use super::StreamDecoder;
    use crate::canonical::{ProviderError, StreamEvent};

    fn decode(
        mut decoder: Box<dyn StreamDecoder>,
        chunks: &[&[u8]],
    ) -> Result<Vec<StreamEvent>, ProviderError> {
        let mut events = Vec::new();
        for chunk in chunks {
            events.extend(decoder.feed(chunk)?);
        }
        events.extend(decoder.finish()?);
        Ok(events)
    }

    /// The events of `sample`, after checking that every cut in two, and
    /// byte-by-byte feeding, give the same.
    pub(crate) fn decode_every_split(
        new: impl Fn() -> Box<dyn StreamDecoder>,
        sample: &[u8],
    ) -> Result<Vec<StreamEvent>, ProviderError> {
        let whole = decode(new(), &[sample]);
        for cut in 0..=sample.len() {
            let (a, b) = sample.split_at(cut);
            assert_eq!(decode(new(), &[a, b]), whole, "cut at byte {cut}");
        }
        let bytes: Vec<&[u8]> = sample.chunks(1).collect();
        assert_eq!(decode(new(), &bytes), whole, "byte by byte");
        whole
    }
}
