//! Rate limits, quotas, Basic auth and client certificates end to end, through
//! the real binary: limits count exactly under concurrency and keep one bucket
//! per subject, a request one limit refuses is given back to the others, quota
//! counts survive a restart, credentials never reach upstream or disk, and
//! every refusal is exactly one `denied` access record.
//!
//! The client certificates below were generated once with `openssl ca` (EC
//! P-256, valid 2025-01-01 to 2125-01-01): a client CA issuing `CN=mobile-app`,
//! `CN=kiosk-7` and `CN=stranger`, and a second CA issuing another
//! `CN=mobile-app`.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_testkit::reqwest::{self, header, StatusCode};
use tollgate_testkit::serde_json::Value;
use tollgate_testkit::{tls, upstream, Gateway, GatewayBuilder, Upstream};

const MOBILE_KEY: &str = "tg_limits_mobile_key_0123456789abcdefghijklmnopq";
const WEB_KEY: &str = "tg_limits_web_key_0123456789abcdefghijklmnopqrstu";

/// How long a gateway may take to drain and exit after SIGTERM.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

/// Consumers `mobile-app` and `web` with API keys, and `/orders` behind key
/// auth plus `policies` (the rest of a YAML flow mapping).
fn keyed_config(upstream: &Upstream, policies: &str) -> String {
    format!(
        r#"
consumers:
  - name: mobile-app
    keys: [{{ value: env:MOBILE_APP_KEY }}]
  - name: web
    keys: [{{ value: env:WEB_KEY }}]
services:
  - name: orders
    upstream: {{ targets: [{{ url: "{url}" }}] }}
apis:
  - name: orders
    service: orders
    match: {{ paths: [/orders] }}
    policies: {{ auth: {{ methods: [key] }}, {policies} }}
"#,
        url = upstream.url()
    )
}

fn with_keys(builder: GatewayBuilder) -> GatewayBuilder {
    builder
        .env("MOBILE_APP_KEY", MOBILE_KEY)
        .env("WEB_KEY", WEB_KEY)
}

/// A response read whole.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: header::HeaderMap,
    /// The JSON body (`Null` if it is not JSON).
    body: Value,
}

impl Reply {
    async fn read(res: reqwest::Response) -> Reply {
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.json().await.unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    /// The error code of a refusal.
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// A header that must be present and hold a number.
    fn number(&self, name: &str) -> u64 {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no numeric {name} header: {self:?}"))
    }

    /// What the echo upstream saw of a header.
    fn upstream_header(&self, name: &str) -> Option<&str> {
        self.body["headers"][name].as_str()
    }
}

async fn get_with_key(gw: &Gateway, client: &reqwest::Client, path: &str, key: &str) -> Reply {
    let res = client
        .get(gw.url(path))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    Reply::read(res).await
}

/// Stops the gateway gracefully, so that every record is written, and returns them all.
async fn stop_and_read_records(gw: &mut Gateway) -> Vec<Value> {
    gw.sigterm();
    let status = gw.wait_exit(EXIT_DEADLINE).await;
    assert!(status.success(), "exit {status}\n{}", gw.logs());
    gw.access_records().await
}

/// The records with this `reason` (`None`: the allowed ones).
fn with_reason<'a>(records: &'a [Value], reason: Option<&str>) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["reason"].as_str() == reason)
        .collect()
}

/// A refusal's record: `denied`, its status, and the consumer when one was identified.
#[track_caller]
fn assert_denied(record: &Value, reason: &str, status: u16, consumer: Option<&str>) {
    assert_eq!(record["outcome"], "denied", "{record}");
    assert_eq!(record["reason"], reason, "{record}");
    assert_eq!(record["status"], status, "{record}");
    assert_eq!(record["consumer"].as_str(), consumer, "{record}");
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address reaches
/// the gateway's loopback listener).
fn client_from(ip: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::V4(ip))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_consumer_limit_admits_exactly_its_limit_under_concurrency() {
    const CLIENTS: usize = 50;
    let up = upstream::echo("orders");
    let mut gw = with_keys(common::gateway().config(&keyed_config(
        &up,
        "rate_limit: [{ limit: 10, window: 1m, by: consumer }]",
    )))
    .start()
    .await;

    // Separate clients, so separate connections, released together.
    let start = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let client = gw.client();
        let url = gw.url("/orders");
        let start = start.clone();
        tasks.spawn(async move {
            start.wait().await;
            let res = client
                .get(url)
                .header("x-api-key", MOBILE_KEY)
                .send()
                .await
                .unwrap();
            Reply::read(res).await
        });
    }
    let mut replies = Vec::new();
    while let Some(reply) = tasks.join_next().await {
        replies.push(reply.unwrap());
    }

    let (passed, refused): (Vec<_>, Vec<_>) = replies.iter().partition(|r| r.status == 200);
    assert_eq!(passed.len(), 10, "{replies:#?}");
    assert_eq!(refused.len(), 40, "{replies:#?}");
    assert_eq!(up.hits(), 10, "no refused request may reach upstream");

    // Each success took one slot: between them they saw every remaining count once.
    let mut remaining: Vec<u64> = passed
        .iter()
        .map(|r| r.number("ratelimit-remaining"))
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..10).collect::<Vec<u64>>());
    for reply in &passed {
        assert_eq!(reply.number("ratelimit-limit"), 10);
        assert!(
            (1..=60).contains(&reply.number("ratelimit-reset")),
            "{reply:?}"
        );
        assert_eq!(reply.upstream_header("x-consumer-name"), Some("mobile-app"));
    }
    for reply in &refused {
        assert_eq!(reply.status, 429, "{reply:?}");
        assert_eq!(reply.code(), "rate_limited", "{reply:?}");
        // One slot frees up every window / limit = 6 s.
        let retry_after = reply.number("retry-after");
        assert!((1..=6).contains(&retry_after), "{reply:?}");
        assert_eq!(reply.number("ratelimit-limit"), 10);
        assert_eq!(reply.number("ratelimit-remaining"), 0);
        let reset = reply.number("ratelimit-reset");
        assert!(reset >= retry_after && reset <= 60, "{reply:?}");
    }

    // One record per request; each refusal names the consumer it counted against.
    let records = stop_and_read_records(&mut gw).await;
    assert_eq!(records.len(), CLIENTS, "{records:#?}");
    let denied = with_reason(&records, Some("rate_limited"));
    assert_eq!(denied.len(), 40);
    for record in denied {
        assert_denied(record, "rate_limited", 429, Some("mobile-app"));
    }
    let allowed = with_reason(&records, None);
    assert_eq!(allowed.len(), 10);
    for record in allowed {
        assert_eq!(record["outcome"], "allowed", "{record}");
        assert_eq!(record["consumer"], "mobile-app", "{record}");
    }
}

#[tokio::test]
async fn ip_and_header_limits_keep_a_bucket_per_subject() {
    let up = upstream::echo("svc");
    let mut gw = common::gateway()
        .config(&format!(
            r#"
services: [{{ name: svc, upstream: {{ targets: [{{ url: "{url}" }}] }} }}]
apis:
  - name: by-ip
    service: svc
    match: {{ paths: [/by-ip] }}
    policies: {{ rate_limit: [{{ limit: 2, window: 1m, by: ip }}] }}
  - name: by-tenant
    service: svc
    match: {{ paths: [/by-tenant] }}
    policies: {{ rate_limit: [{{ limit: 2, window: 1m, by: "header:X-Tenant" }}] }}
"#,
            url = up.url()
        ))
        .start()
        .await;
    let first = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let second = client_from(Ipv4Addr::new(127, 0, 0, 2));
    let statuses = |client: &reqwest::Client, path: &str, tenant: Option<&str>, n: usize| {
        let request = {
            let mut request = client.get(gw.url(path));
            if let Some(tenant) = tenant {
                request = request.header("x-tenant", tenant);
            }
            request
        };
        async move {
            let mut statuses = Vec::new();
            for _ in 0..n {
                let res = request.try_clone().unwrap().send().await.unwrap();
                statuses.push(res.status().as_u16());
            }
            statuses
        }
    };

    // By IP: each address has its own two requests.
    assert_eq!(statuses(&first, "/by-ip", None, 3).await, [200, 200, 429]);
    assert_eq!(statuses(&second, "/by-ip", None, 3).await, [200, 200, 429]);

    // By header: each tenant has its own two, whichever address it comes from.
    assert_eq!(
        statuses(&first, "/by-tenant", Some("acme"), 3).await,
        [200, 200, 429]
    );
    assert_eq!(
        statuses(&first, "/by-tenant", Some("globex"), 2).await,
        [200, 200]
    );
    assert_eq!(
        statuses(&second, "/by-tenant", Some("acme"), 1).await,
        [429]
    );
    // Without the header the client's address is the subject: a bucket of its own.
    assert_eq!(statuses(&first, "/by-tenant", None, 1).await, [200]);
    assert_eq!(up.hits(), 9);

    let records = stop_and_read_records(&mut gw).await;
    assert_eq!(records.len(), 13, "{records:#?}");
    let denied = with_reason(&records, Some("rate_limited"));
    assert_eq!(denied.len(), 4, "{records:#?}");
    for record in &denied {
        assert_denied(record, "rate_limited", 429, None);
    }
    assert!(
        denied.iter().any(|r| r["client_ip"] == "127.0.0.2"),
        "{denied:#?}"
    );
}

#[tokio::test]
async fn a_request_one_limit_refuses_is_given_back_to_the_others() {
    let up = upstream::echo("orders");
    // Three per consumer, and one per tenant.
    let mut gw = with_keys(common::gateway().config(&keyed_config(
        &up,
        r#"rate_limit: [{ limit: 3, window: 1m, by: consumer }, { limit: 1, window: 1m, by: "header:X-Tenant" }]"#,
    )))
    .start()
    .await;
    let client = gw.client();
    let send = |tenant: &str| {
        let request = client
            .get(gw.url("/orders"))
            .header("x-api-key", MOBILE_KEY)
            .header("x-tenant", tenant);
        async move { Reply::read(request.send().await.unwrap()).await }
    };

    let reply = send("t1").await;
    assert_eq!(reply.status, 200);
    // The headers describe the limit closest to exhaustion: the tenant's.
    assert_eq!(reply.number("ratelimit-limit"), 1);
    assert_eq!(reply.number("ratelimit-remaining"), 0);
    for _ in 0..4 {
        let reply = send("t1").await;
        assert_eq!(reply.status, 429, "{reply:?}");
        assert_eq!(reply.code(), "rate_limited");
        assert_eq!(
            reply.number("ratelimit-limit"),
            1,
            "the tenant limit refused"
        );
    }
    // Had those four counted against the consumer's three, these would fail.
    for tenant in ["t2", "t3"] {
        let reply = send(tenant).await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let reply = send("t4").await;
    assert_eq!(reply.status, 429, "{reply:?}");
    assert_eq!(
        reply.number("ratelimit-limit"),
        3,
        "the consumer limit refused"
    );
    assert_eq!(reply.number("ratelimit-remaining"), 0);
    assert_eq!(up.hits(), 3);

    let records = stop_and_read_records(&mut gw).await;
    assert_eq!(records.len(), 8, "{records:#?}");
    let denied = with_reason(&records, Some("rate_limited"));
    assert_eq!(denied.len(), 5, "{records:#?}");
    for record in denied {
        assert_denied(record, "rate_limited", 429, Some("mobile-app"));
    }
}

/// Seconds from now until the next midnight UTC, when a daily quota resets.
fn seconds_to_midnight_utc() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    86_400 - now % 86_400
}

#[tokio::test]
async fn quota_counts_survive_a_graceful_restart() {
    let up = upstream::echo("orders");
    let storage = tempfile::tempdir().unwrap();
    let config = format!(
        "storage: {{ database: 'sqlite://{}' }}\n{}",
        storage.path().join("t.db").display(),
        keyed_config(&up, "quota: { limit: 5, period: day, by: consumer }")
    );

    let mut first = with_keys(common::gateway().config(&config)).start().await;
    let client = first.client();
    for _ in 0..3 {
        let reply = get_with_key(&first, &client, "/orders", MOBILE_KEY).await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    // Most likely before the first periodic flush (1 s): the one at shutdown saves the count.
    let records = stop_and_read_records(&mut first).await;
    assert_eq!(with_reason(&records, None).len(), 3, "{records:#?}");

    let mut second = with_keys(common::gateway().config(&config)).start().await;
    for _ in 0..2 {
        let reply = get_with_key(&second, &client, "/orders", MOBILE_KEY).await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let reply = get_with_key(&second, &client, "/orders", MOBILE_KEY).await;
    assert_eq!(reply.status, 429, "{reply:?}");
    assert_eq!(reply.code(), "quota_exceeded", "{reply:?}");
    let retry_after = reply.number("retry-after");
    let expected = seconds_to_midnight_utc();
    assert!(
        retry_after.abs_diff(expected) <= 5,
        "Retry-After {retry_after}, {expected} s to midnight UTC"
    );
    // Another consumer has a count of its own.
    let reply = get_with_key(&second, &client, "/orders", WEB_KEY).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(up.hits(), 6);

    let records = stop_and_read_records(&mut second).await;
    assert_eq!(records.len(), 4, "{records:#?}");
    let denied = with_reason(&records, Some("quota_exceeded"));
    assert_eq!(denied.len(), 1, "{records:#?}");
    assert_denied(denied[0], "quota_exceeded", 429, Some("mobile-app"));
}

const PARTNER_PASSWORD: &str = "pw-partner-5c1e9a7f-correct";
const WRONG_PASSWORD: &str = "pw-partner-guess-0b3d8e21";

#[tokio::test]
async fn basic_auth_admits_the_right_password_and_never_writes_one_down() {
    let up = upstream::echo("reports");
    let mut gw = common::gateway()
        .config(&format!(
            r#"
consumers:
  - name: partner
    basic: {{ username: partner-user, password: env:PARTNER_PASSWORD }}
services: [{{ name: reports, upstream: {{ targets: [{{ url: "{url}" }}] }} }}]
apis:
  - name: reports
    service: reports
    match: {{ paths: [/reports] }}
    policies: {{ auth: {{ methods: [basic] }} }}
"#,
            url = up.url()
        ))
        .env("PARTNER_PASSWORD", PARTNER_PASSWORD)
        .start()
        .await;
    let client = gw.client();
    // Requests built first, to know what their Authorization headers carry.
    let basic = |user: &str, password: &str| {
        client
            .get(gw.url("/reports"))
            .basic_auth(user, Some(password))
            .build()
            .unwrap()
    };
    let right = basic("partner-user", PARTNER_PASSWORD);
    let wrong = basic("partner-user", WRONG_PASSWORD);
    let unknown = basic("someone-else", PARTNER_PASSWORD);
    let mut secrets = vec![PARTNER_PASSWORD.to_owned(), WRONG_PASSWORD.to_owned()];
    for request in [&right, &wrong, &unknown] {
        let value = request.headers()[header::AUTHORIZATION].to_str().unwrap();
        secrets.push(value["Basic ".len()..].to_owned());
    }

    let reply = Reply::read(client.execute(right).await.unwrap()).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.upstream_header("x-consumer-name"), Some("partner"));
    assert_eq!(reply.upstream_header("authorization"), None, "{reply:?}");

    for request in [wrong, unknown] {
        let reply = Reply::read(client.execute(request).await.unwrap()).await;
        assert_eq!(reply.status, 401, "{reply:?}");
        assert_eq!(reply.code(), "invalid_credentials", "{reply:?}");
        let challenge = reply.headers[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(challenge.starts_with("Basic realm="), "{challenge}");
    }
    let reply = Reply::read(client.get(gw.url("/reports")).send().await.unwrap()).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.code(), "missing_credentials", "{reply:?}");
    assert!(reply.headers[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .starts_with("Basic "));
    assert_eq!(up.hits(), 1);

    let records = stop_and_read_records(&mut gw).await;
    assert_eq!(records.len(), 4, "{records:#?}");
    assert_eq!(with_reason(&records, None)[0]["consumer"], "partner");
    let invalid = with_reason(&records, Some("invalid_credentials"));
    assert_eq!(invalid.len(), 2, "{records:#?}");
    for record in invalid {
        assert_denied(record, "invalid_credentials", 401, None);
    }
    let missing = with_reason(&records, Some("missing_credentials"));
    assert_denied(missing[0], "missing_credentials", 401, None);

    // Nothing the gateway wrote — config, logs, access log, database and its
    // journal — holds a password, right or wrong, plain or encoded.
    for entry in std::fs::read_dir(gw.dir()).unwrap() {
        let path = entry.unwrap().path();
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{secret} written to {}",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn client_certificates_identify_consumers_on_the_tls_listener() {
    let up = upstream::echo("devices");
    let server = tls::self_signed(&["localhost"]);
    let ca = tempfile::tempdir().unwrap();
    let ca_path = ca.path().join("client-ca.pem");
    std::fs::write(&ca_path, CLIENT_CA_PEM).unwrap();
    let mut gw = common::gateway()
        .config(&format!(
            r#"
listen: {{ tls: {{ client_ca: "{ca}" }} }}
consumers:
  - name: mobile-app
    certificates: [{{ subject: "CN=mobile-app" }}]
  - name: kiosk
    certificates: [{{ fingerprint_sha256: "{KIOSK_FINGERPRINT}" }}]
services: [{{ name: devices, upstream: {{ targets: [{{ url: "{url}" }}] }} }}]
apis:
  - name: devices
    service: devices
    match: {{ paths: [/devices] }}
    policies: {{ auth: {{ methods: [mtls] }} }}
  - name: status
    service: devices
    match: {{ paths: [/status] }}
"#,
            ca = ca_path.display(),
            url = up.url()
        ))
        .tls(&server)
        .start()
        .await;
    let port = gw.tls_addr().port();
    let url = |path: &str| format!("https://localhost:{port}{path}");
    let client = |identity: Option<(&str, &str)>| {
        let mut builder = server.client_builder().resolve("localhost", gw.tls_addr());
        if let Some((cert, key)) = identity {
            let pem = format!("{cert}{key}");
            builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        builder.build().unwrap()
    };
    let get = |client: reqwest::Client, path: &str| {
        let request = client.get(url(path));
        async move { request.send().await }
    };

    // By subject, and by fingerprint.
    for (identity, consumer) in [
        ((MOBILE_CERT_PEM, MOBILE_KEY_PEM), "mobile-app"),
        ((KIOSK_CERT_PEM, KIOSK_KEY_PEM), "kiosk"),
    ] {
        let res = get(client(Some(identity)), "/devices").await.unwrap();
        let reply = Reply::read(res).await;
        assert_eq!(reply.status, 200, "{consumer}: {reply:?}");
        assert_eq!(reply.upstream_header("x-consumer-name"), Some(consumer));
    }

    // The listener asks for a certificate but does not require one.
    let anonymous = client(None);
    let reply = Reply::read(get(anonymous.clone(), "/devices").await.unwrap()).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.code(), "missing_credentials", "{reply:?}");
    let res = get(anonymous, "/status").await.unwrap();
    assert_eq!(res.status(), 200);

    // A certificate of the client CA that names no consumer is a wrong credential.
    let stranger = client(Some((STRANGER_CERT_PEM, STRANGER_KEY_PEM)));
    let reply = Reply::read(get(stranger, "/devices").await.unwrap()).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.code(), "invalid_credentials", "{reply:?}");

    // The right subject from another CA does not even complete the handshake.
    let impostor = client(Some((IMPOSTOR_CERT_PEM, IMPOSTOR_KEY_PEM)));
    let refused = get(impostor, "/devices").await;
    assert!(
        refused.is_err(),
        "a certificate of an unknown CA was accepted: {refused:?}"
    );
    assert_eq!(up.hits(), 3);

    // Five requests, five records: the refused handshake never became a request.
    let records = stop_and_read_records(&mut gw).await;
    assert_eq!(records.len(), 5, "{records:#?}");
    let mut consumers: Vec<&str> = with_reason(&records, None)
        .iter()
        .filter_map(|r| r["consumer"].as_str())
        .collect();
    consumers.sort_unstable();
    assert_eq!(consumers, ["kiosk", "mobile-app"]);
    assert_denied(
        with_reason(&records, Some("missing_credentials"))[0],
        "missing_credentials",
        401,
        None,
    );
    assert_denied(
        with_reason(&records, Some("invalid_credentials"))[0],
        "invalid_credentials",
        401,
        None,
    );
}

/// The CA that client certificates must chain to (`listen.tls.client_ca`).
const CLIENT_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBeTCCAR6gAwIBAgICEAAwCgYIKoZIzj0EAwIwIjEgMB4GA1UEAwwXVG9sbGdh
dGUgVGVzdCBDbGllbnQgQ0EwIBcNMjUwMTAxMDAwMDAwWhgPMjEyNTAxMDEwMDAw
MDBaMCIxIDAeBgNVBAMMF1RvbGxnYXRlIFRlc3QgQ2xpZW50IENBMFkwEwYHKoZI
zj0CAQYIKoZIzj0DAQcDQgAE3b4pAR13zzk14TaoX7OjUQEARioh2BIOVYMJC2Ee
9gAQDz+YKZ8WPAwxddjaGEKL8XXRP2viijHzkzCo+1RKF6NCMEAwDwYDVR0TAQH/
BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYwHQYDVR0OBBYEFDV5JPdd9KRqGEvQoEw0
REHFrNZ3MAoGCCqGSM49BAMCA0kAMEYCIQDKMHQXln7NqM28jssbWBqK86b7ghRx
Kv372E4eFOtnHgIhANQPJDe15H6JvGLAmnT9aR4AjZtUmXgp/J/g9IP+vmsN
-----END CERTIFICATE-----
";

/// `CN=mobile-app`, issued by the client CA: identified by its subject.
const MOBILE_CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBnTCCAUSgAwIBAgICEAIwCgYIKoZIzj0EAwIwIjEgMB4GA1UEAwwXVG9sbGdh
dGUgVGVzdCBDbGllbnQgQ0EwIBcNMjUwMTAxMDAwMDAwWhgPMjEyNTAxMDEwMDAw
MDBaMBUxEzARBgNVBAMMCm1vYmlsZS1hcHAwWTATBgcqhkjOPQIBBggqhkjOPQMB
BwNCAASrab+6s0VyXbiRjnraB2Hi1vit2nYwoQ7fd4O/QPlDAQskH4u9nn47IkEK
4HcwqB7rQpwjdJuZ3fW2JRTGpA8oo3UwczAMBgNVHRMBAf8EAjAAMA4GA1UdDwEB
/wQEAwIHgDATBgNVHSUEDDAKBggrBgEFBQcDAjAdBgNVHQ4EFgQU+Bl3ZXhAPdqr
W5s86mrqnERR24AwHwYDVR0jBBgwFoAUNXkk9130pGoYS9CgTDREQcWs1ncwCgYI
KoZIzj0EAwIDRwAwRAIgbNjppDY2HHLrXH9O2GXBqKglXGKzET6c31mxc3QuJNMC
IH4+SXv0wGMpVTZ7CcIgJRq/dnTM1e+oHTdcn6iT1x6A
-----END CERTIFICATE-----
";
const MOBILE_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgw47kwQDiHCIbYb9C
lsvTnzT73yBT0/7YNsPWM8jYPj6hRANCAASrab+6s0VyXbiRjnraB2Hi1vit2nYw
oQ7fd4O/QPlDAQskH4u9nn47IkEK4HcwqB7rQpwjdJuZ3fW2JRTGpA8o
-----END PRIVATE KEY-----
";

/// `CN=kiosk-7`, issued by the client CA: identified by its fingerprint only.
const KIOSK_CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBmzCCAUGgAwIBAgICEAMwCgYIKoZIzj0EAwIwIjEgMB4GA1UEAwwXVG9sbGdh
dGUgVGVzdCBDbGllbnQgQ0EwIBcNMjUwMTAxMDAwMDAwWhgPMjEyNTAxMDEwMDAw
MDBaMBIxEDAOBgNVBAMMB2tpb3NrLTcwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AARqkU3pb11kSOrK11D0eyrB6aJfW5Ci0CEv5NxoE/6KjRMxleoarkiz199BbJ75
NtX+4SkucMRiuYuXvqKdzJoro3UwczAMBgNVHRMBAf8EAjAAMA4GA1UdDwEB/wQE
AwIHgDATBgNVHSUEDDAKBggrBgEFBQcDAjAdBgNVHQ4EFgQUnNs+S/AdpEZR8E6R
+d1zV3zzyRowHwYDVR0jBBgwFoAUNXkk9130pGoYS9CgTDREQcWs1ncwCgYIKoZI
zj0EAwIDSAAwRQIgEgdhJ+bnxIiS/3vzh/MYeyo58I+k5K3OO9tnIiCYiD8CIQDX
0fST0ComjtXM0pKaM2LlIdEU/n6zmgix6WAmGsf67w==
-----END CERTIFICATE-----
";
const KIOSK_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg6JHyY75+Tv7fMFLz
a68W5ise+TN1Ihh/cXoKvTfoVVehRANCAARqkU3pb11kSOrK11D0eyrB6aJfW5Ci
0CEv5NxoE/6KjRMxleoarkiz199BbJ75NtX+4SkucMRiuYuXvqKdzJor
-----END PRIVATE KEY-----
";
/// SHA-256 of [`KIOSK_CERT_PEM`]'s DER, as `openssl x509 -fingerprint -sha256` prints it.
const KIOSK_FINGERPRINT: &str =
    "57:9A:22:B1:AB:52:FD:D4:A0:09:B8:A5:E2:52:BF:2D:B6:84:77:6B:4C:BC:A3:4C:3B:27:52:3B:56:55:59:78";

/// `CN=stranger`, issued by the client CA but registered to no consumer.
const STRANGER_CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBnDCCAUKgAwIBAgICEAQwCgYIKoZIzj0EAwIwIjEgMB4GA1UEAwwXVG9sbGdh
dGUgVGVzdCBDbGllbnQgQ0EwIBcNMjUwMTAxMDAwMDAwWhgPMjEyNTAxMDEwMDAw
MDBaMBMxETAPBgNVBAMMCHN0cmFuZ2VyMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcD
QgAED6Ms0MFjT4hQvXNXPlTyLA+HNydsmz1LHIid29nm5pA2jkVJHjeDYMS/W2G4
5+dz/onQq471AXrhg5wuDPFLfKN1MHMwDAYDVR0TAQH/BAIwADAOBgNVHQ8BAf8E
BAMCB4AwEwYDVR0lBAwwCgYIKwYBBQUHAwIwHQYDVR0OBBYEFBvQjQ3kSGs4qPB/
2ExHFP006oRMMB8GA1UdIwQYMBaAFDV5JPdd9KRqGEvQoEw0REHFrNZ3MAoGCCqG
SM49BAMCA0gAMEUCIF+piZ1+t1UFDkwlyU0iHekS38Ga72dK3oKizX460z4KAiEA
4THT9oApuFolTNuqtB9HGmwoQ83B+Hmd2Qu3paWOTU0=
-----END CERTIFICATE-----
";
const STRANGER_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgui2PhSFasEvc6MLE
w6pOiuaD1/s0HLXUE25BpLZHRvWhRANCAAQPoyzQwWNPiFC9c1c+VPIsD4c3J2yb
PUsciJ3b2ebmkDaORUkeN4NgxL9bYbjn53P+idCrjvUBeuGDnC4M8Ut8
-----END PRIVATE KEY-----
";

/// `CN=mobile-app` too, but issued by another CA.
const IMPOSTOR_CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBnTCCAUOgAwIBAgICEAUwCgYIKoZIzj0EAwIwITEfMB0GA1UEAwwWVG9sbGdh
dGUgVGVzdCBSb2d1ZSBDQTAgFw0yNTAxMDEwMDAwMDBaGA8yMTI1MDEwMTAwMDAw
MFowFTETMBEGA1UEAwwKbW9iaWxlLWFwcDBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABLjLSVVvihVMYFYyGHg3tRbHQjBbg9tin7pu0t8xOZUL5n8+XsGhgzcut6po
HXRM8S9xKITAqvjU0+kOZW0LTPSjdTBzMAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/
BAQDAgeAMBMGA1UdJQQMMAoGCCsGAQUFBwMCMB0GA1UdDgQWBBRsG13rgfXZlzGy
l6m6okREY3PNOzAfBgNVHSMEGDAWgBQyCtyPo7xa5UuwTuq129kMtc+d+zAKBggq
hkjOPQQDAgNIADBFAiAB4Qpbzi9MrJhAjvrV37S1Gt2tQu1NgNWLhKeKXn6LKQIh
AJmiQMVYLbRZUoeKmU6YCzLaZMPrVvR8UyTxFNyQmcaX
-----END CERTIFICATE-----
";
const IMPOSTOR_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgkpDutAnhjItfeRAM
hfn/j3zHoOS2FdYFP0MMnFB/LFChRANCAAS4y0lVb4oVTGBWMhh4N7UWx0IwW4Pb
Yp+6btLfMTmVC+Z/Pl7BoYM3LreqaB10TPEvcSiEwKr41NPpDmVtC0z0
-----END PRIVATE KEY-----
";
