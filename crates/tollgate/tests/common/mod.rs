//! Shared helpers for the gateway's integration tests.
#![allow(dead_code)]

use tollgate_testkit::{Gateway, GatewayBuilder};

pub fn gateway() -> GatewayBuilder {
    Gateway::builder(env!("CARGO_BIN_EXE_tollgate"))
}

/// A gateway running `yaml` as written, with one variable in its
/// environment (the admin token, an app's key).
pub async fn start_with_env(yaml: &str, name: &str, value: &str) -> Gateway {
    gateway().config(yaml).env(name, value).start().await
}

/// A one-service, one-API configuration in front of `urls`.
pub fn simple(urls: &[String], api_extra: &str, upstream_extra: &str) -> String {
    let targets: Vec<String> = urls.iter().map(|u| format!("{{ url: '{u}' }}")).collect();
    format!(
        "services:\n  - name: svc\n    upstream: {{ targets: [{}] {upstream_extra} }}\napis:\n  - {{ name: api, service: svc, match: {{ paths: [/] }} {api_extra} }}\n",
        targets.join(", ")
    )
}

/// A database URL with its `host:port` replaced by `addr` (a fault proxy
/// in front of the server).
pub fn pg_via(url: &str, addr: std::net::SocketAddr) -> String {
    let start = url
        .find('@')
        .map_or_else(|| url.find("://").unwrap() + 3, |at| at + 1);
    let end = start + url[start..].find('/').unwrap();
    format!("{}{addr}{}", &url[..start], &url[end..])
}

/// The PostgreSQL server's address, from a database URL.
pub fn pg_server(url: &str) -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let start = url
        .find('@')
        .map_or_else(|| url.find("://").unwrap() + 3, |at| at + 1);
    let end = start + url[start..].find('/').unwrap();
    let host = &url[start..end];
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:5432")
    };
    host.to_socket_addrs().unwrap().next().unwrap()
}

/// `method path` on `gw`'s admin API with the admin `token` (and `body` as
/// JSON): the status and the body (JSON, or the text as a JSON string).
pub async fn admin_call(
    gw: &Gateway,
    token: &str,
    method: &str,
    path: &str,
    body: Option<tollgate_testkit::serde_json::Value>,
) -> (u16, tollgate_testkit::serde_json::Value) {
    use tollgate_testkit::serde_json::Value;
    let method = tollgate_testkit::reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = gw
        .client()
        .request(method, format!("{}{path}", gw.admin_url()))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let res = request.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    let body = tollgate_testkit::serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// `head` (`storage`, `node`) plus the `app` consumer and an `orders` API
/// limited by `limit` (a `rate_limit` list's entries), behind key auth.
pub fn limited_orders(head: &str, upstream: &str, limit: &str) -> String {
    format!(
        r#"
{head}
consumers:
  - name: app
    keys: [{{ value: env:APP_KEY }}]
services:
  - name: orders
    upstream: {{ targets: [{{ url: "{upstream}" }}] }}
apis:
  - name: orders
    service: orders
    match: {{ paths: [/orders] }}
    policies:
      auth: {{ methods: [key] }}
      rate_limit: [{limit}]
"#
    )
}
