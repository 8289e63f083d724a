//! The attempt chain of one AI call: weighted choice among the model's
//! targets and among each provider's keys, failing over on the model's
//! `retry.on` failures, then the fallbacks in order.
//!
//! - A key refused with 401/403 is marked bad and the same call goes on
//!   with the provider's next key (this does not use an attempt).
//! - A key answered with 429 cools down for the provider's `Retry-After`
//!   (1 s when it gives none).
//! - A streamed answer is committed once its first event is read: a
//!   provider that fails before that is failed over like any other; after
//!   it, the client has bytes and the stream is the answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tollgate_ai::providers::{StreamDecoder, UpstreamRequest};
use tollgate_ai::{ErrorKind, FormatError, ProviderError, StreamEvent};
use tollgate_telemetry::AiAttempt;

use super::{now_ms, AiTargetRuntime, KeyState, ModelRuntime, ProviderRuntime};
use crate::body::RequestBody;
use crate::h1_client::{SendError, Timeouts, UpstreamBody};

/// Largest whole answer read from a provider.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// Connecting to a plain-HTTP provider, and keeping its idle connections
/// (as for hyper's client of TLS providers).
const PROVIDER_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(5),
    idle: Duration::from_secs(30),
};
/// How long a key waits after a 429 without `Retry-After`.
const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(1);

/// What the chain sends: the adapter builds each target's request.
pub(crate) trait Call: Sync {
    fn request(
        &self,
        target: &AiTargetRuntime,
        key: Option<&str>,
    ) -> Result<UpstreamRequest, FormatError>;
    fn streamed(&self) -> bool;
}

/// The answer of the attempt that succeeded.
pub(crate) enum Answer {
    /// A whole body (2xx).
    Whole(Bytes),
    /// A stream whose first events are read; the rest follows on `body`.
    Stream {
        first: Vec<StreamEvent>,
        decoder: Box<dyn StreamDecoder>,
        body: UpstreamBody,
    },
}

pub(crate) struct Success {
    pub target: AiTargetRuntime,
    pub answer: Answer,
    pub attempts: Vec<AiAttempt>,
}

/// Why no attempt succeeded: the last failure, in the gateway's terms.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
    pub attempts: Vec<AiAttempt>,
    /// The provider and model tried last, for the record.
    pub last: Option<(Arc<str>, Arc<str>)>,
}

/// How one attempt ended.
enum Outcome {
    Ok(Answer),
    Provider(ProviderError),
    Timeout,
    Connect(String),
    /// The request could not be written for this provider (a format it cannot take).
    Unsendable(FormatError),
}

pub(crate) async fn run(model: &ModelRuntime, call: &dyn Call) -> Result<Success, Failure> {
    let mut attempts = Vec::new();
    let mut last_failure: Option<Failure> = None;
    let mut used = 0u32;
    let mut targets = weighted_order(&model.targets, |target| target.weight);
    targets.extend(model.fallbacks.iter().cloned());
    let primary = model.targets.len();
    for (position, target) in targets.iter().enumerate() {
        let fallback = position >= primary;
        if !fallback && used >= model.attempts {
            continue;
        }
        let keys = key_order(&target.provider);
        if keys.is_empty() && !target.provider.keys.is_empty() {
            // Every key is bad or cooling down: nothing to try here.
            last_failure.get_or_insert_with(|| Failure {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "no_provider_available",
                message: format!(
                    "every key of provider {} is refused or cooling down",
                    target.provider.name
                ),
                retry_after: None,
                attempts: Vec::new(),
                last: Some((target.provider.name.clone(), target.model.clone())),
            });
            continue;
        }
        // Each usable key in turn, or once without a key for a provider that has none.
        let key_slots = keys
            .iter()
            .copied()
            .map(Some)
            .chain(keys.is_empty().then_some(None));
        for key in key_slots {
            if !fallback && used >= model.attempts {
                break;
            }
            let outcome = attempt(model, target, key.map(|k| k.as_ref()), call).await;
            let record = |result: String| AiAttempt {
                provider: target.provider.name.to_string(),
                model: target.model.to_string(),
                key: key.map_or(0, |k| k.number),
                result,
            };
            let last = Some((target.provider.name.clone(), target.model.clone()));
            match outcome {
                Outcome::Ok(answer) => {
                    attempts.push(record("200".into()));
                    return Ok(Success {
                        target: target.clone(),
                        answer,
                        attempts,
                    });
                }
                Outcome::Provider(error) => {
                    attempts.push(record(error.status.to_string()));
                    match error.kind {
                        ErrorKind::Authentication | ErrorKind::Permission if key.is_some() => {
                            if let Some(key) = key {
                                key.mark_bad();
                            }
                            last_failure = Some(provider_failure(&error, last));
                            // The next key of the same provider; no attempt used.
                            continue;
                        }
                        ErrorKind::RateLimited => {
                            if let Some(key) = key {
                                key.cool_down(error.retry_after.unwrap_or(DEFAULT_COOL_DOWN));
                            }
                        }
                        _ => {}
                    }
                    used += 1;
                    let retryable = model.retry_statuses.contains(&error.status)
                        || (error.kind == ErrorKind::Overloaded
                            && model.retry_statuses.contains(&503));
                    let failure = provider_failure(&error, last);
                    if !retryable {
                        return Err(Failure {
                            attempts,
                            ..failure
                        });
                    }
                    last_failure = Some(failure);
                }
                Outcome::Timeout | Outcome::Connect(_) => {
                    if let Outcome::Connect(error) = &outcome {
                        tracing::debug!(provider = %target.provider.name, %error, "provider unreachable");
                    }
                    let (result, failure) = match &outcome {
                        Outcome::Timeout => (
                            "timeout",
                            Failure {
                                status: StatusCode::GATEWAY_TIMEOUT,
                                code: "provider_timeout",
                                message: format!(
                                    "provider {} did not answer within {:?}",
                                    target.provider.name, model.timeout
                                ),
                                retry_after: None,
                                attempts: Vec::new(),
                                last,
                            },
                        ),
                        _ => (
                            "connect_error",
                            Failure {
                                status: StatusCode::BAD_GATEWAY,
                                code: "provider_unavailable",
                                message: format!("cannot reach provider {}", target.provider.name),
                                retry_after: None,
                                attempts: Vec::new(),
                                last,
                            },
                        ),
                    };
                    attempts.push(record(result.into()));
                    used += 1;
                    if !model.retry_timeout {
                        return Err(Failure {
                            attempts,
                            ..failure
                        });
                    }
                    last_failure = Some(failure);
                    // Another key will not reach an unreachable host sooner.
                    break;
                }
                Outcome::Unsendable(error) => {
                    // Not this provider's fault, nor the next one's: say why.
                    return Err(Failure {
                        status: StatusCode::BAD_REQUEST,
                        code: "invalid_request",
                        message: error.0,
                        retry_after: None,
                        attempts,
                        last,
                    });
                }
            }
        }
    }
    let failure = last_failure.unwrap_or_else(|| Failure {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "no_provider_available",
        message: format!("no provider could serve model {}", model.name),
        retry_after: None,
        attempts: Vec::new(),
        last: None,
    });
    Err(Failure {
        attempts,
        ..failure
    })
}

/// A provider's error as the client sees it: its own mistakes keep their
/// status; the provider's troubles (keys, rate limits, outages) are the
/// gateway's to explain.
fn provider_failure(error: &ProviderError, last: Option<(Arc<str>, Arc<str>)>) -> Failure {
    let (status, code) = match error.kind {
        ErrorKind::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "model_not_found"),
        ErrorKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        ErrorKind::Authentication | ErrorKind::Permission => {
            (StatusCode::BAD_GATEWAY, "provider_auth_failed")
        }
        ErrorKind::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "provider_rate_limited"),
        ErrorKind::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "provider_overloaded"),
        ErrorKind::Server | ErrorKind::BadResponse => (StatusCode::BAD_GATEWAY, "provider_error"),
    };
    let message = match error.kind {
        // The provider's words about its keys are not the client's business.
        ErrorKind::Authentication | ErrorKind::Permission => {
            "the provider refused the gateway's credentials".to_string()
        }
        _ => error.message.clone(),
    };
    Failure {
        status,
        code,
        message,
        retry_after: error.retry_after,
        attempts: Vec::new(),
        last,
    }
}

async fn attempt(
    model: &ModelRuntime,
    target: &AiTargetRuntime,
    key: Option<&KeyState>,
    call: &dyn Call,
) -> Outcome {
    let upstream = match call.request(target, key.map(KeyState::secret)) {
        Ok(upstream) => upstream,
        Err(error) => return Outcome::Unsendable(error),
    };
    let deadline = tokio::time::Instant::now() + model.timeout;
    let provider = &target.provider;
    let response = match tokio::time::timeout_at(deadline, send(provider, upstream)).await {
        Err(_) => return Outcome::Timeout,
        Ok(Err(error)) => return error,
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if !status.is_success() {
        let (parts, body) = response.into_parts();
        let bytes = tokio::time::timeout_at(deadline, read_bounded(body, 1024 * 1024))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        return Outcome::Provider(
            provider
                .adapter
                .error(status.as_u16(), &parts.headers, &bytes),
        );
    }
    let mut body = response.into_body();
    if !call.streamed() {
        return match tokio::time::timeout_at(deadline, read_bounded(body, MAX_ANSWER_BYTES)).await {
            Err(_) => Outcome::Timeout,
            Ok(Err(message)) => Outcome::Provider(broken(message)),
            Ok(Ok(bytes)) => Outcome::Ok(Answer::Whole(bytes)),
        };
    }
    // Read until the first event: until then, failing over is still possible.
    let mut decoder = provider.adapter.stream_decoder();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Outcome::Timeout,
            Ok(frame) => frame,
        };
        let events = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => decoder.feed(&data),
                Err(_) => continue,
            },
            Some(Err(error)) => return Outcome::Provider(broken(error.to_string())),
            None => decoder.finish(),
        };
        match events {
            Err(error) => return Outcome::Provider(error),
            Ok(events) if !events.is_empty() => {
                return Outcome::Ok(Answer::Stream {
                    first: events,
                    decoder,
                    body,
                })
            }
            Ok(_) if http_body::Body::is_end_stream(&body) => {
                return Outcome::Provider(broken("the stream ended before any event".into()))
            }
            Ok(_) => {}
        }
    }
}

fn broken(message: String) -> ProviderError {
    ProviderError {
        status: 502,
        kind: ErrorKind::BadResponse,
        message: format!("the provider's answer broke off: {message}"),
        retry_after: None,
    }
}

async fn send(
    provider: &ProviderRuntime,
    upstream: UpstreamRequest,
) -> Result<hyper::Response<UpstreamBody>, Outcome> {
    // A plain provider's URL is read without a URI parse when it can be.
    let plain_path = provider
        .plain
        .as_ref()
        .and_then(|pool| origin_path(&upstream.url, pool.authority()));
    let uri: Option<http::Uri> = match plain_path {
        Some(_) => None,
        None => Some(
            upstream
                .url
                .parse()
                .map_err(|_| Outcome::Connect("the provider's URL is not valid".into()))?,
        ),
    };
    let path = plain_path.or_else(|| uri.as_ref()?.path_and_query().map(|p| p.as_str()));
    if let (Some(pool), Some(path)) = (&provider.plain, path) {
        return pool
            .send_call(&upstream, path, PROVIDER_TIMEOUTS)
            .await
            .map_err(|error| match error {
                SendError::Connect(message) => Outcome::Connect(message),
                SendError::Broken(message) => Outcome::Provider(broken(message)),
            });
    }
    let mut request = Request::new(RequestBody::full(upstream.body));
    *request.method_mut() = upstream.method;
    *request.uri_mut() = uri.expect("parsed: only a plain provider's URL is not");
    let headers = request.headers_mut();
    for (name, value) in upstream.headers {
        headers.insert(name, value);
    }
    match provider.client.request(request).await {
        Ok(response) => Ok(response.map(UpstreamBody::from)),
        Err(error) if error.is_connect() => Err(Outcome::Connect(error.to_string())),
        Err(error) => Err(Outcome::Provider(broken(error.to_string()))),
    }
}

/// The path and query of `url` when it is `http://{authority}` followed by
/// a path of visible ASCII characters (no fragment): what a request line
/// may carry as it is. A plain provider's URLs are its base URL and a path,
/// so this reads the path off them without parsing a URI on every call
/// (measured: ~900 instructions); any other URL is parsed.
fn origin_path<'a>(url: &'a str, authority: &str) -> Option<&'a str> {
    let path = url.strip_prefix("http://")?.strip_prefix(authority)?;
    (path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic() && b != b'#'))
        .then_some(path)
}

pub(crate) async fn read_bounded(body: UpstreamBody, limit: usize) -> Result<Bytes, String> {
    let mut body = body;
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(format!("the answer exceeds {limit} bytes"));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// `items` in a weighted random order: each next one chosen by `weight`
/// among those left; those of weight 0 come after the others, in their
/// order. One allocation, whatever the number of items.
fn weighted_order<T: Clone>(items: &[T], weight: impl Fn(&T) -> u32) -> Vec<T> {
    let mut order = items.to_vec();
    for start in 0..order.len() {
        let left = &order[start..];
        let total: u64 = left.iter().map(|item| u64::from(weight(item))).sum();
        if total == 0 {
            break;
        }
        let mut pick = fastrand::u64(0..total);
        let chosen = left
            .iter()
            .position(|item| {
                let w = u64::from(weight(item));
                if pick < w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .unwrap_or(0);
        // The chosen one to the front of those left, the others in their order.
        order[start..=start + chosen].rotate_right(1);
    }
    order
}

/// The provider's usable keys, starting at a random one: calls spread over
/// the keys, and each call can fail over to all of them.
fn key_order(provider: &ProviderRuntime) -> Vec<&Arc<KeyState>> {
    let now = now_ms();
    let mut usable: Vec<&Arc<KeyState>> = provider.keys.iter().filter(|k| k.usable(now)).collect();
    if !usable.is_empty() {
        let start = fastrand::usize(0..usable.len());
        usable.rotate_left(start);
    }
    usable
}

#[cfg(test)]
mod tests {
    use super::{origin_path, weighted_order};

    #[test]
    fn weighted_order_follows_the_weights_and_puts_weight_zero_last() {
        let weight = |item: &(char, u32)| item.1;
        let items = [('a', 3), ('z', 0), ('b', 1), ('y', 0)];
        let mut first_a = 0;
        for _ in 0..4000 {
            let order = weighted_order(&items, weight);
            let names: String = order.iter().map(|item| item.0).collect();
            assert!(names == "abzy" || names == "bazy", "{names}");
            first_a += usize::from(names.starts_with('a'));
        }
        // 3 to 1: a comes first 3 times in 4 (the bounds are ~7 standard deviations away).
        assert!(
            (2800..3200).contains(&first_a),
            "a first {first_a} times in 4000"
        );

        assert_eq!(
            weighted_order(&[('x', 0), ('y', 0)], weight),
            [('x', 0), ('y', 0)]
        );
        assert_eq!(weighted_order(&[('x', 5)], weight), [('x', 5)]);
        assert!(weighted_order(&[] as &[(char, u32)], weight).is_empty());
    }

    #[test]
    fn origin_path_reads_only_plain_urls_of_the_pool() {
        let pool = "127.0.0.1:11434";
        let path = |url| origin_path(url, pool);
        assert_eq!(
            path("http://127.0.0.1:11434/v1/chat/completions"),
            Some("/v1/chat/completions")
        );
        assert_eq!(
            path("http://127.0.0.1:11434/openai/deployments/d/chat/completions?api-version=2024-10-21"),
            Some("/openai/deployments/d/chat/completions?api-version=2024-10-21")
        );
        // Anything else is left to the URI parser.
        for other in [
            "https://127.0.0.1:11434/v1/chat/completions",
            "http://127.0.0.1:1143/v1",
            "http://127.0.0.1:114345/v1",
            "http://127.0.0.1:11434",
            "http://127.0.0.1:11434?q",
            "http://127.0.0.1:11434/v1/models/a b",
            "http://127.0.0.1:11434/v1/x\r\nHost: evil",
            "http://127.0.0.1:11434/v1#fragment",
            "http://127.0.0.1:11434/v1/caf\u{e9}",
        ] {
            assert_eq!(path(other), None, "{other}");
        }
    }
}
