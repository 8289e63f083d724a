//! Shared helpers for the gateway's integration tests.
#![allow(dead_code)]

use tollgate_testkit::{Gateway, GatewayBuilder};

pub fn gateway() -> GatewayBuilder {
    Gateway::builder(env!("CARGO_BIN_EXE_tollgate"))
}

/// A one-service, one-API configuration in front of `urls`.
pub fn simple(urls: &[String], api_extra: &str, upstream_extra: &str) -> String {
    let targets: Vec<String> = urls.iter().map(|u| format!("{{ url: '{u}' }}")).collect();
    format!(
        "services:\n  - name: svc\n    upstream: {{ targets: [{}] {upstream_extra} }}\napis:\n  - {{ name: api, service: svc, match: {{ paths: [/] }} {api_extra} }}\n",
        targets.join(", ")
    )
}
