//! A policy's refusal: the stable code, the status and the headers that go
//! with it. The proxy turns it into its `GatewayError` (one JSON body, one
//! access-record `reason`), marking the record `outcome: denied`.

use std::borrow::Cow;

use http::{HeaderName, HeaderValue, StatusCode};

#[derive(Clone, Debug)]
pub struct Denial {
    /// Stable, documented, snake_case (`invalid_credentials`, `rate_limited`, …).
    pub code: &'static str,
    pub status: StatusCode,
    /// For the client; never contains the credential that was presented.
    pub message: Cow<'static, str>,
    /// Headers for the answer: `WWW-Authenticate`, `Retry-After`, `RateLimit-*`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Extra JSON members of the error object (the failing schema path, …).
    pub details: Option<serde_json::Value>,
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $fn_name:ident => $code:literal, $status:ident;)*) => {
        impl Denial {
            $(
                #[doc = concat!("`", $code, "`")]
                $(#[$doc])*
                pub fn $fn_name(message: impl Into<Cow<'static, str>>) -> Self {
                    Denial {
                        code: $code,
                        status: StatusCode::$status,
                        message: message.into(),
                        headers: Vec::new(),
                        details: None,
                    }
                }
            )*
        }
    };
}

constructors! {
    missing_credentials => "missing_credentials", UNAUTHORIZED;
    invalid_credentials => "invalid_credentials", UNAUTHORIZED;
    expired_credentials => "expired_credentials", UNAUTHORIZED;
    forbidden => "forbidden", FORBIDDEN;
    subscription_required => "subscription_required", FORBIDDEN;
    subscription_pending => "subscription_pending", FORBIDDEN;
    subscription_rejected => "subscription_rejected", FORBIDDEN;
    subscription_revoked => "subscription_revoked", FORBIDDEN;
    ip_denied => "ip_denied", FORBIDDEN;
    /// An incident-response block of the consumer, its key or its address.
    blocked => "blocked", FORBIDDEN;
    rate_limited => "rate_limited", TOO_MANY_REQUESTS;
    quota_exceeded => "quota_exceeded", TOO_MANY_REQUESTS;
    /// A limit with `on_store_failure: deny` cannot be checked: its shared
    /// counter store (Redis) does not answer.
    limit_unavailable => "limit_unavailable", SERVICE_UNAVAILABLE;
    /// The AI spend of the period reached the `ai_budget`.
    budget_exceeded => "budget_exceeded", PAYMENT_REQUIRED;
    /// A prompt matched one of the `ai_guard`'s deny patterns.
    prompt_rejected => "prompt_rejected", BAD_REQUEST;
    /// The model is not in the `ai_guard`'s `allow_models`.
    model_not_allowed => "model_not_allowed", FORBIDDEN;
    payload_too_large => "payload_too_large", PAYLOAD_TOO_LARGE;
    unsupported_media_type => "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE;
    /// Malformed JSON, too deep, too large to validate.
    invalid_json => "validation_failed", BAD_REQUEST;
    /// Well-formed JSON the schema rejects.
    validation_failed => "validation_failed", UNPROCESSABLE_ENTITY;
    /// A dependency the policy needs (an IdP's keys, an introspection endpoint) is down.
    auth_unavailable => "auth_unavailable", SERVICE_UNAVAILABLE;
}

impl Denial {
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Whether the status is 401, the only one that carries `WWW-Authenticate`.
    pub fn is_unauthenticated(&self) -> bool {
        self.status == StatusCode::UNAUTHORIZED
    }
}
