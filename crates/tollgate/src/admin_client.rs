//! The commands that reach a running node through its admin API — `apply`,
//! `export`, `import-openapi` — and print what it answered.
//!
//! Plain HTTP/1.1 with hyper: the admin listener is loopback by default,
//! and whatever sits in front of a remote one (TLS, a tunnel) is the
//! operator's choice.

use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Where the admin API is and the token to present.
pub struct Target {
    pub url: String,
    pub token: Option<String>,
}

/// What a node answered.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Target {
    pub async fn send(
        &self,
        method: http::Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Answer> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let uri = format!("{}{path_and_query}", self.url.trim_end_matches('/'));
        let mut request = http::Request::builder().method(method).uri(&uri);
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .with_context(|| format!("invalid admin URL {uri}"))?;
        let response = client
            .request(request)
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.url))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .context("the admin API's answer was cut short")?
            .to_bytes();
        Ok(Answer { status, body })
    }
}

/// Prints an error answer — every field error of a 422 on its own line —
/// and returns the exit code for it.
pub fn report_error(answer: &Answer) -> ExitCode {
    let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    let error = &body["error"];
    match error["message"].as_str() {
        Some(message) => eprintln!(
            "error {} ({}): {message}",
            answer.status,
            error["code"].as_str().unwrap_or("")
        ),
        None => eprintln!(
            "error {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        ),
    }
    if let Some(errors) = error["errors"].as_array() {
        for e in errors {
            eprintln!(
                "  {}: {}",
                e["path"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            );
        }
    }
    ExitCode::FAILURE
}

/// Prints a write's changes as a diff: `+` created, `~` updated, `-`
/// deleted, `*` other actions.
pub fn print_changes(answer: &Answer) -> ExitCode {
    let body: Value = match serde_json::from_slice(&answer.body) {
        Ok(body) => body,
        Err(_) => {
            eprintln!(
                "unexpected answer: {}",
                String::from_utf8_lossy(&answer.body)
            );
            return ExitCode::FAILURE;
        }
    };
    let changes = body["changes"].as_array().cloned().unwrap_or_default();
    for change in &changes {
        let action = change["action"].as_str().unwrap_or("");
        let sign = match action {
            "create" => "+",
            "update" => "~",
            "delete" => "-",
            _ => "*",
        };
        println!(
            "{sign} {}/{}{}",
            change["kind"].as_str().unwrap_or(""),
            change["name"].as_str().unwrap_or(""),
            if sign == "*" {
                format!(" ({action})")
            } else {
                String::new()
            }
        );
    }
    if body["dry_run"] == true {
        println!("dry run: {} change(s), nothing applied", changes.len());
    } else if changes.is_empty() {
        println!("no changes (revision {})", body["revision"]);
    } else {
        println!(
            "{} change(s) applied (revision {})",
            changes.len(),
            body["revision"]
        );
    }
    ExitCode::SUCCESS
}
