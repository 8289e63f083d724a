//! Request body validation: a JSON body, no deeper than `max_depth`, that a
//! JSON Schema accepts.
//!
//! Checks run cheapest first and each stops the request:
//!
//! 1. size: more than `max_body` bytes → `413 payload_too_large`;
//! 2. `Content-Type` not JSON (`application/json` or `*/*+json`, parameters
//!    allowed; a missing one is not JSON) → `400 validation_failed`;
//! 3. nesting deeper than `max_depth`, found by a byte scan *before* parsing,
//!    so a deeply nested body never reaches the (recursive) parser → 400;
//! 4. not well-formed JSON → 400 with the line and column;
//! 5. rejected by the schema → `422 validation_failed` with the failing
//!    instance and schema paths.
//!
//! The schema is draft 2020-12 unless its `$schema` names another draft.
//! Remote `$ref`s are never fetched (jsonschema is built without its
//! resolvers): a schema needing one fails to compile, at config load.
//!
//! Messages never carry more than [`MAX_MESSAGE`] characters of the client's
//! input: schema error messages quote instance values, so a long one is
//! rewritten with the value masked, then cut.

use std::fmt::{self, Write as _};

use http::HeaderValue;
use jsonschema::{ValidationError, Validator};
use serde_json::{json, Value};
use tollgate_config::policy::ValidatePolicy;
use tollgate_config::Size;

use crate::denial::Denial;

/// Schema errors reported in `details.errors`.
pub const MAX_ERRORS: usize = 10;
/// Longest message (or instance path) taken from a schema error, in bytes.
pub const MAX_MESSAGE: usize = 200;

/// A compiled [`ValidatePolicy`].
#[derive(Clone, Debug)]
pub struct BodyValidator {
    schema: Option<Validator>,
    max_depth: usize,
    max_body: Size,
}

impl BodyValidator {
    /// Compiles the schema; the error is a message for the config's author.
    pub fn compile(p: &ValidatePolicy) -> Result<BodyValidator, String> {
        let schema = match &p.json_schema {
            None => None,
            Some(schema) => Some(jsonschema::options().build(schema).map_err(|e| {
                let at = e.instance_path();
                if at.is_empty() {
                    format!("invalid JSON Schema: {e}")
                } else {
                    format!("invalid JSON Schema at {at}: {e}")
                }
            })?),
        };
        Ok(BodyValidator {
            schema,
            max_depth: p.max_depth,
            max_body: p.max_body,
        })
    }

    /// The largest body, in bytes, the pipeline should buffer for [`Self::validate`].
    pub fn max_body(&self) -> u64 {
        self.max_body.bytes()
    }

    pub fn validate(&self, content_type: Option<&HeaderValue>, body: &[u8]) -> Result<(), Denial> {
        if body.len() as u64 > self.max_body.bytes() {
            return Err(Denial::payload_too_large(format!(
                "request body is larger than {}, the most that is validated",
                self.max_body
            )));
        }
        if !is_json(content_type) {
            return Err(Denial::invalid_json("expected a JSON body"));
        }
        if nests_deeper_than(body, self.max_depth) {
            return Err(Denial::invalid_json(format!(
                "request body nests arrays and objects deeper than {} levels",
                self.max_depth
            )));
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            Denial::invalid_json(format!("request body is not valid JSON: {e}"))
                .with_details(json!({ "line": e.line(), "column": e.column() }))
        })?;
        let Some(schema) = &self.schema else {
            return Ok(());
        };
        if schema.is_valid(&value) {
            return Ok(());
        }
        Err(schema_denial(schema, &value))
    }
}

fn schema_denial(schema: &Validator, value: &Value) -> Denial {
    let errors: Vec<ValidationError<'_>> = schema.iter_errors(value).take(MAX_ERRORS).collect();
    let Some(first) = errors.first() else {
        // `is_valid` said no; an error list should agree. Refuse anyway.
        return Denial::validation_failed("request body failed validation");
    };
    let instance_path = bounded_path(first);
    let message = error_message(first);
    let summary = if instance_path.is_empty() {
        format!("request body failed validation: {message}")
    } else {
        format!("request body failed validation at {instance_path}: {message}")
    };
    let list: Vec<Value> = errors
        .iter()
        .map(|e| {
            json!({
                "instance_path": bounded_path(e),
                "schema_path": e.schema_path().as_str(),
                "message": error_message(e),
            })
        })
        .collect();
    Denial::validation_failed(summary).with_details(json!({
        "instance_path": instance_path,
        "schema_path": first.schema_path().as_str(),
        "errors": list,
    }))
}

/// The error's message, with the instance masked when quoting it would run
/// past [`MAX_MESSAGE`], and cut there in any case.
fn error_message(error: &ValidationError<'_>) -> String {
    let mut out = Bounded::new();
    if write!(out, "{error}").is_ok() {
        return out.text;
    }
    let mut out = Bounded::new();
    let _ = write!(out, "{}", error.masked());
    out.finish()
}

/// The instance's JSON pointer; property names come from the client, so it
/// is cut too.
fn bounded_path(error: &ValidationError<'_>) -> String {
    let mut out = Bounded::new();
    let _ = out.write_str(error.instance_path().as_str());
    out.finish()
}

/// A `fmt::Write` that stops the formatting (with an error) once it holds
/// [`MAX_MESSAGE`] bytes, so a huge instance is never rendered whole.
struct Bounded {
    text: String,
    cut: bool,
}

impl Bounded {
    fn new() -> Self {
        Bounded {
            text: String::new(),
            cut: false,
        }
    }

    fn finish(mut self) -> String {
        if self.cut {
            self.text.push('…');
        }
        self.text
    }
}

impl fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = MAX_MESSAGE - self.text.len();
        if s.len() <= room {
            self.text.push_str(s);
            return Ok(());
        }
        let mut end = room;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.text.push_str(&s[..end]);
        self.cut = true;
        Err(fmt::Error)
    }
}

/// `application/json`, or any `type/subtype+json`; parameters (`; charset=…`)
/// are allowed. Case-insensitive.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(value) = content_type else {
        return false;
    };
    let essence = value.as_bytes().split(|&b| b == b';').next().unwrap_or(&[]);
    let essence = essence.trim_ascii();
    let Some(slash) = essence.iter().position(|&b| b == b'/') else {
        return false;
    };
    let (kind, subtype) = (&essence[..slash], &essence[slash + 1..]);
    if kind.is_empty() {
        return false;
    }
    (kind.eq_ignore_ascii_case(b"application") && subtype.eq_ignore_ascii_case(b"json"))
        || (subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

/// Whether `[` and `{` outside strings nest deeper than `max` anywhere in
/// `body`. Linear, no allocation, no recursion; it does not check that the
/// body is JSON (the parser does that next).
fn nests_deeper_than(body: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    const JSON: HeaderValue = HeaderValue::from_static("application/json");

    fn validator(schema: Option<Value>) -> BodyValidator {
        BodyValidator::compile(&ValidatePolicy {
            json_schema: schema,
            max_depth: 32,
            max_body: Size::mib(1),
        })
        .unwrap()
    }

    fn item_schema() -> Value {
        json!({
            "type": "object",
            "required": ["item", "quantity"],
            "properties": {
                "item": { "type": "string", "maxLength": 8 },
                "quantity": { "type": "integer", "minimum": 1 }
            }
        })
    }

    #[test]
    fn accepts_a_valid_body() {
        let v = validator(Some(item_schema()));
        assert_eq!(v.max_body(), 1024 * 1024);
        v.validate(Some(&JSON), br#"{"item":"tea","quantity":2}"#)
            .unwrap();
        // Parameters and +json types.
        for ct in [
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/vnd.api+json",
            "application/problem+json;v=1",
        ] {
            v.validate(
                Some(&HeaderValue::from_static(ct)),
                br#"{"item":"tea","quantity":2}"#,
            )
            .unwrap_or_else(|d| panic!("{ct}: {}", d.message));
        }
    }

    #[test]
    fn without_a_schema_only_well_formed_json_is_needed() {
        let v = validator(None);
        v.validate(Some(&JSON), b"[1, {\"a\": null}]").unwrap();
        assert_eq!(
            v.validate(Some(&JSON), b"[1,").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn missing_required_property() {
        let v = validator(Some(item_schema()));
        let denial = v.validate(Some(&JSON), br#"{"item":"tea"}"#).unwrap_err();
        assert_eq!(denial.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(denial.code, "validation_failed");
        assert!(denial.message.contains("quantity"), "{}", denial.message);
        let details = denial.details.unwrap();
        assert_eq!(details["instance_path"], "");
        assert_eq!(details["schema_path"], "/required");
    }

    #[test]
    fn max_length_violation_names_both_paths() {
        let v = validator(Some(item_schema()));
        let denial = v
            .validate(Some(&JSON), br#"{"item":"a very long item","quantity":1}"#)
            .unwrap_err();
        assert_eq!(denial.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            denial
                .message
                .starts_with("request body failed validation at /item: "),
            "{}",
            denial.message
        );
        let details = denial.details.unwrap();
        assert_eq!(details["instance_path"], "/item");
        assert!(details["schema_path"]
            .as_str()
            .unwrap()
            .contains("maxLength"));
        let errors = details["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0]["instance_path"], "/item");
        assert!(errors[0]["message"].as_str().unwrap().contains("longer"));
    }

    #[test]
    fn reports_at_most_ten_errors() {
        let v = validator(Some(
            json!({ "type": "array", "items": { "type": "string" } }),
        ));
        let body = serde_json::to_vec(&(0..50).collect::<Vec<_>>()).unwrap();
        let denial = v.validate(Some(&JSON), &body).unwrap_err();
        let details = denial.details.unwrap();
        assert_eq!(details["errors"].as_array().unwrap().len(), MAX_ERRORS);
        assert_eq!(details["instance_path"], "/0");
        assert_eq!(details["schema_path"], "/items/type");
    }

    #[test]
    fn huge_values_are_not_echoed() {
        let v = validator(Some(json!({ "type": "object" })));
        let long = format!("[\"{}\"]", "x".repeat(100_000));
        let denial = v.validate(Some(&JSON), long.as_bytes()).unwrap_err();
        assert!(denial.message.len() < 2 * MAX_MESSAGE, "{}", denial.message);
        assert!(
            denial.message.contains("is not of type"),
            "{}",
            denial.message
        );
        let details = serde_json::to_string(&denial.details).unwrap();
        assert!(details.len() < 4 * MAX_MESSAGE, "{details}");

        // A long property name in the instance path is cut too.
        let v = validator(Some(
            json!({ "additionalProperties": { "type": "string" } }),
        ));
        let body = format!("{{\"{}\": 1}}", "k".repeat(10_000));
        let denial = v.validate(Some(&JSON), body.as_bytes()).unwrap_err();
        assert!(denial.message.len() < 3 * MAX_MESSAGE, "{}", denial.message);
        let path = denial.details.unwrap()["instance_path"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            path.ends_with('…') && path.len() <= MAX_MESSAGE + 3,
            "{path}"
        );
    }

    #[test]
    fn malformed_json_reports_line_and_column() {
        let v = validator(Some(item_schema()));
        let denial = v
            .validate(Some(&JSON), b"{\n  \"item\": \"tea\",\n  oops\n}")
            .unwrap_err();
        assert_eq!(denial.status, StatusCode::BAD_REQUEST);
        assert_eq!(denial.code, "validation_failed");
        assert!(denial.message.contains("line 3"), "{}", denial.message);
        let details = denial.details.unwrap();
        assert_eq!(details["line"], 3);
        assert_eq!(details["column"], 3);
    }

    #[test]
    fn wrong_or_missing_content_type() {
        let v = validator(Some(item_schema()));
        let body = br#"{"item":"tea","quantity":2}"#;
        for ct in [
            Some(HeaderValue::from_static("text/plain")),
            Some(HeaderValue::from_static(
                "application/x-www-form-urlencoded",
            )),
            Some(HeaderValue::from_static("application/jsonp")),
            Some(HeaderValue::from_static("+json")),
            Some(HeaderValue::from_static("/+json")),
            None,
        ] {
            let denial = v.validate(ct.as_ref(), body).unwrap_err();
            assert_eq!(denial.status, StatusCode::BAD_REQUEST, "{ct:?}");
            assert_eq!(denial.message, "expected a JSON body");
        }
    }

    #[test]
    fn depth_bomb_is_refused_before_parsing() {
        let v = validator(None);
        let bomb = vec![b'['; 100_000];
        let denial = v.validate(Some(&JSON), &bomb).unwrap_err();
        assert_eq!(denial.status, StatusCode::BAD_REQUEST);
        assert!(
            denial.message.contains("deeper than 32"),
            "{}",
            denial.message
        );

        let objects = "{\"a\":".repeat(100_000);
        let denial = v.validate(Some(&JSON), objects.as_bytes()).unwrap_err();
        assert!(denial.message.contains("deeper"), "{}", denial.message);
    }

    #[test]
    fn depth_counts_only_outside_strings() {
        assert!(!nests_deeper_than(br#"["[[[[[", "{{{{"]"#, 1));
        assert!(!nests_deeper_than(br#"["\"[[[", "\\", {}]"#, 2));
        assert!(nests_deeper_than(br#"["\\", [[]]]"#, 2));
        assert!(!nests_deeper_than(b"[[]] [[]] [[]]", 2));
        assert!(nests_deeper_than(b"[[[]]]", 2));
        // Exactly at the limit passes the scan and the parser.
        let v = validator(None);
        let at_limit = format!("{}{}", "[".repeat(32), "]".repeat(32));
        v.validate(Some(&JSON), at_limit.as_bytes()).unwrap();
        let over = format!("{}{}", "[".repeat(33), "]".repeat(33));
        assert!(v.validate(Some(&JSON), over.as_bytes()).is_err());
    }

    #[test]
    fn oversize_body_is_413_before_anything_else() {
        let v = BodyValidator::compile(&ValidatePolicy {
            json_schema: Some(item_schema()),
            max_depth: 32,
            max_body: Size(16),
        })
        .unwrap();
        assert_eq!(v.max_body(), 16);
        let denial = v.validate(None, &[b'x'; 17]).unwrap_err();
        assert_eq!(denial.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(denial.code, "payload_too_large");
        v.validate(Some(&JSON), b"{}").unwrap_err(); // 422, but not 413
    }

    #[test]
    fn defaults_to_draft_2020_12() {
        // `prefixItems` exists only from 2020-12 on.
        let v = validator(Some(json!({ "prefixItems": [{ "type": "string" }] })));
        let denial = v.validate(Some(&JSON), b"[1]").unwrap_err();
        assert_eq!(denial.status, StatusCode::UNPROCESSABLE_ENTITY);
        // `$schema` picks another draft, where it means nothing.
        let v = validator(Some(json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "prefixItems": [{ "type": "string" }]
        })));
        v.validate(Some(&JSON), b"[1]").unwrap();
    }

    #[test]
    fn bad_schemas_and_remote_refs_fail_to_compile() {
        let compile = |schema: Value| {
            BodyValidator::compile(&ValidatePolicy {
                json_schema: Some(schema),
                max_depth: 32,
                max_body: Size::mib(1),
            })
        };
        let err = compile(json!({ "type": "no-such-type" })).unwrap_err();
        assert!(err.starts_with("invalid JSON Schema"), "{err}");
        let err = compile(json!({ "$ref": "https://example.com/schema.json" })).unwrap_err();
        assert!(err.starts_with("invalid JSON Schema"), "{err}");
    }
}
