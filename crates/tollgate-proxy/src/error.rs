//! The one error type for every answer the gateway gives itself.
//!
//! A [`GatewayError`] knows its stable `code`, its HTTP status, where the fault
//! lies and whether a retry may help. The JSON body sent to the client and the
//! access record's `reason` both come from it: one mapping, one place.

use std::borrow::Cow;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};

/// Where a failure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something the gateway will not serve.
    Downstream,
    /// The upstream failed, timed out or is unreachable.
    Upstream,
    /// The gateway itself.
    Internal,
    /// A security policy refused the request (recorded as `outcome: denied`).
    Policy,
}

#[derive(Clone, Debug)]
pub struct GatewayError {
    pub code: &'static str,
    pub status: StatusCode,
    pub source: ErrorSource,
    /// Whether trying another upstream target could succeed.
    pub retryable: bool,
    pub message: Cow<'static, str>,
    /// Close the client connection after answering (framing errors).
    pub close: bool,
    /// More headers for the answer, like `Allow` on a 405 or `WWW-Authenticate` on a 401.
    pub extra_headers: Vec<(http::HeaderName, HeaderValue)>,
    /// More members of the JSON error object (a failing schema path, …).
    pub details: Option<serde_json::Value>,
    /// Answer in Anthropic's error format: the request came to an AI API's
    /// `/messages`, whose clients read `error.type`.
    pub anthropic_body: bool,
}

macro_rules! constructors {
    ($($fn_name:ident => $code:literal, $status:ident, $source:ident, $retry:literal;)*) => {
        impl GatewayError {
            $(
                #[doc = concat!("`", $code, "`")]
                pub fn $fn_name(message: impl Into<Cow<'static, str>>) -> Self {
                    GatewayError {
                        code: $code,
                        status: StatusCode::$status,
                        source: ErrorSource::$source,
                        retryable: $retry,
                        message: message.into(),
                        close: false,
                        extra_headers: Vec::new(),
                        details: None,
                        anthropic_body: false,
                    }
                }
            )*
        }
    };
}

constructors! {
    no_route => "no_route", NOT_FOUND, Downstream, false;
    method_not_allowed => "method_not_allowed", METHOD_NOT_ALLOWED, Downstream, false;
    api_retired => "api_retired", GONE, Downstream, false;
    bad_request => "bad_request", BAD_REQUEST, Downstream, false;
    uri_too_long => "uri_too_long", URI_TOO_LONG, Downstream, false;
    headers_too_large => "headers_too_large", REQUEST_HEADER_FIELDS_TOO_LARGE, Downstream, false;
    payload_too_large => "payload_too_large", PAYLOAD_TOO_LARGE, Downstream, false;
    upstream_unavailable => "upstream_unavailable", BAD_GATEWAY, Upstream, true;
    no_healthy_upstream => "upstream_unavailable", SERVICE_UNAVAILABLE, Upstream, false;
    upstream_timeout => "upstream_timeout", GATEWAY_TIMEOUT, Upstream, false;
    upstream_error => "upstream_error", BAD_GATEWAY, Upstream, false;
    internal => "internal_error", INTERNAL_SERVER_ERROR, Internal, false;
}

impl GatewayError {
    /// Marks the error as one after which the connection must be closed.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// Adds a header to the answer.
    pub fn with_header(mut self, name: http::HeaderName, value: HeaderValue) -> Self {
        self.extra_headers.push((name, value));
        self
    }

    /// The JSON body: `{"error":{"code":…,"message":…,"request_id":…}}`, plus
    /// the details' members (which cannot replace those three).
    pub fn body(&self, request_id: &str) -> Bytes {
        if self.anthropic_body {
            return tollgate_ai::formats::anthropic::render_error(
                self.status.as_u16(),
                self.code,
                &self.message,
                request_id,
            );
        }
        let mut error = serde_json::Map::new();
        if let Some(serde_json::Value::Object(details)) = &self.details {
            for (key, value) in details {
                error.insert(key.clone(), value.clone());
            }
        }
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.as_ref().into());
        error.insert("request_id".into(), request_id.into());
        let body = serde_json::json!({ "error": error });
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }

    /// The response head and body this error is answered with.
    pub fn into_response_parts(&self, request_id: &str) -> (http::response::Parts, Bytes) {
        let body = self.body(request_id);
        let mut response = http::Response::new(());
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(value) = HeaderValue::from_str(request_id) {
            headers.insert("x-request-id", value);
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        for (name, value) in &self.extra_headers {
            headers.append(name.clone(), value.clone());
        }
        (response.into_parts().0, body)
    }
}

/// A policy's refusal keeps its code, status, headers and details.
impl From<tollgate_policy::Denial> for GatewayError {
    fn from(denial: tollgate_policy::Denial) -> Self {
        GatewayError {
            code: denial.code,
            status: denial.status,
            source: ErrorSource::Policy,
            retryable: false,
            message: denial.message,
            close: false,
            extra_headers: denial.headers,
            details: denial.details,
            anthropic_body: false,
        }
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.code,
            self.status.as_u16(),
            self.message
        )
    }
}

impl std::error::Error for GatewayError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_code_message_and_request_id() {
        let err = GatewayError::no_route("no API matches GET /x");
        let body: serde_json::Value = serde_json::from_slice(&err.body("abc")).unwrap();
        assert_eq!(body["error"]["code"], "no_route");
        assert_eq!(body["error"]["request_id"], "abc");
        assert_eq!(body["error"]["message"], "no API matches GET /x");
        assert_eq!(err.status, StatusCode::NOT_FOUND);
    }
}
