//! The response body type upstream handlers return, and constructors for it.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use http::HeaderMap;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;

/// Error type of [`Body`]: any boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed response body, buffered or streamed.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A body with no bytes.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body holding all of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body holding `data` (no data frame when empty), then the trailers `trailers`.
pub fn with_trailers(data: impl Into<Bytes>, trailers: HeaderMap) -> Body {
    let data = data.into();
    let mut frames = Vec::with_capacity(2);
    if !data.is_empty() {
        frames.push(Ok::<_, BoxError>(Frame::data(data)));
    }
    frames.push(Ok(Frame::trailers(trailers)));
    StreamBody::new(stream::iter(frames)).boxed_unsync()
}

/// A JSON body (the `Content-Type` header is the caller's to set; see [`json_response`]).
pub fn json(value: &serde_json::Value) -> Body {
    full(serde_json::to_vec(value).expect("a JSON value always serializes"))
}

/// A `200` response with a JSON body and `Content-Type: application/json`.
pub fn json_response(value: &serde_json::Value) -> http::Response<Body> {
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(json(value))
        .expect("static response parts are valid")
}

/// A body streamed from `chunks`.
pub fn stream<S>(chunks: S) -> Body
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    StreamBody::new(chunks.map(|chunk| Ok::<_, BoxError>(Frame::data(chunk)))).boxed_unsync()
}

/// A body that yields `chunks` one by one, waiting `gap` between two chunks
/// (the first is sent at once).
pub fn paced(chunks: Vec<Bytes>, gap: Duration) -> Body {
    let chunks = stream::unfold(
        (chunks.into_iter(), true),
        move |(mut rest, first)| async move {
            let chunk = rest.next()?;
            if !first {
                tokio::time::sleep(gap).await;
            }
            Some((chunk, (rest, false)))
        },
    );
    stream(chunks)
}
