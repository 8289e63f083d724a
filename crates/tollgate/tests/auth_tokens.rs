//! Bearer tokens end to end, through the real binary: every JWT algorithm
//! from JWKS, PEM keys and shared secrets; forgeries; key rotation and
//! outages of an identity provider; RFC 7662 introspection; the gateway's
//! own client-credentials token endpoint; scopes; and no token or secret in
//! any output.

mod common;

use std::time::Duration;

use tollgate_testkit::futures_util::future::join_all;
use tollgate_testkit::reqwest::{Client, Method, Response, StatusCode};
use tollgate_testkit::serde_json::{self, json, Value};
use tollgate_testkit::tokens::{self, IntrospectionServer, JwksServer, TestKey};
use tollgate_testkit::{upstream, Gateway};

const JWKS_ISS: &str = "https://idp.test";
const PEM_ISS: &str = "https://pem.test";
const HS_ISS: &str = "https://hs.test";
const HS_SECRET: &str = "hs-shared-secret-0123456789abcdef0123456789abcdef";
const INTROSPECTION_SECRET: &str = "introspection-client-secret-0123456789";
const READER_SECRET: &str = "reader-client-secret-0123456789abcdef";
const WRITER_SECRET: &str = "writer-client-secret-0123456789abcdef";

/// `text` as a YAML scalar: a JSON string is one, escapes and all.
fn yaml_str(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

fn service(upstream: &str) -> String {
    format!("services: [{{ name: orders, upstream: {{ targets: [{{ url: '{upstream}' }}] }} }}]")
}

async fn call(client: &Client, gw: &Gateway, method: Method, path: &str, token: &str) -> Response {
    client
        .request(method, gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn get(client: &Client, gw: &Gateway, token: &str) -> Response {
    call(client, gw, Method::GET, "/orders", token).await
}

/// What upstream saw of an allowed request; panics on any other answer.
async fn echoed(res: Response) -> Value {
    let status = res.status();
    let body = res.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// What a refused request was told.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: String,
    challenge: Option<String>,
}

async fn refusal(res: Response) -> Refusal {
    let status = res.status();
    let challenge = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = res.json().await.unwrap_or(Value::Null);
    Refusal {
        status,
        code: body["error"]["code"].as_str().unwrap_or("").to_owned(),
        challenge,
    }
}

/// A 401 with `code` and a Bearer challenge.
#[track_caller]
fn assert_unauthenticated(refusal: &Refusal, code: &str, case: &str) {
    assert_eq!(refusal.status, 401, "{case}: {refusal:?}");
    assert_eq!(refusal.code, code, "{case}: {refusal:?}");
    assert!(
        refusal
            .challenge
            .as_deref()
            .is_some_and(|c| c.starts_with("Bearer")),
        "{case}: {refusal:?}"
    );
}

/// What upstream learns of the caller: the consumer, its team, `sub`, and
/// never the token.
#[track_caller]
fn assert_caller(echo: &Value, consumer: &str, team: Option<&str>, sub: &str, token: &str) {
    let headers = &echo["headers"];
    assert_eq!(headers["x-consumer-name"], consumer, "{echo}");
    assert_eq!(headers["x-consumer-team"].as_str(), team, "{echo}");
    assert_eq!(headers["x-claim-sub"], sub, "{echo}");
    assert!(headers.get("authorization").is_none(), "{echo}");
    assert!(!echo.to_string().contains(token), "token leaked upstream");
}

/// Base64url without padding, decoded (JWT segments).
fn base64url_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let (mut acc, mut bits, mut out) = (0u32, 0u32, Vec::new());
    for byte in text.bytes() {
        let value = ALPHABET
            .iter()
            .position(|&a| a == byte)
            .unwrap_or_else(|| panic!("not base64url: {text}")) as u32;
        acc = (acc << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Standard base64 with padding, as HTTP Basic carries credentials.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn the_base64_helpers_agree_with_the_rfc() {
    for (plain, encoded) in [
        ("a", "YQ=="),
        ("ab", "YWI="),
        ("abc", "YWJj"),
        ("tollgate:s3cret", "dG9sbGdhdGU6czNjcmV0"),
    ] {
        assert_eq!(base64_encode(plain.as_bytes()), encoded);
    }
    assert_eq!(
        base64url_decode("eyJraWQiOiL7_yJ9"),
        b"{\"kid\":\"\xfb\xff\"}"
    );
}

/// The JSON of a JWT's header (`0`) or payload (`1`), unverified.
fn jwt_part(token: &str, index: usize) -> Value {
    let segment = token.split('.').nth(index).expect("a JWT segment");
    serde_json::from_slice(&base64url_decode(segment)).unwrap()
}

// ----- every algorithm ---------------------------------------------------

const RSA_ALGORITHMS: [&str; 6] = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"];

/// Every asymmetric algorithm with the key that signs it.
fn asymmetric() -> Vec<(&'static str, TestKey)> {
    let mut all: Vec<_> = RSA_ALGORITHMS.iter().map(|&a| (a, TestKey::Rsa)).collect();
    all.extend([
        ("ES256", TestKey::P256),
        ("ES384", TestKey::P384),
        ("EdDSA", TestKey::Ed25519),
    ]);
    all
}

fn kid_of(alg: &str) -> String {
    format!("key-{alg}")
}

#[tokio::test]
async fn every_algorithm_passes_from_jwks_pem_keys_and_a_shared_secret() {
    let up = upstream::echo("orders");
    // The JWKS lists one key per algorithm, as IdPs do: a JWK's `alg` binds it.
    let jwks = JwksServer::start(
        asymmetric()
            .into_iter()
            .map(|(alg, key)| tokens::jwk(key, &kid_of(alg), alg))
            .collect(),
    );
    let pems: Vec<String> = [TestKey::Rsa, TestKey::P256, TestKey::P384, TestKey::Ed25519]
        .into_iter()
        .map(|key| yaml_str(tokens::public_pem(key)))
        .collect();
    let config = format!(
        r#"
teams: [{{ name: payments }}]
consumers: [{{ name: mobile-app, team: payments }}]
identity_providers:
  - {{ name: corp, issuer: "{JWKS_ISS}", jwks_url: "{jwks}", consumer_claim: azp }}
  - {{ name: pem, issuer: "{PEM_ISS}", keys: [{pems}], consumer_claim: azp }}
  - {{ name: shared, issuer: "{HS_ISS}", secret: "env:HS_SECRET" }}
{service}
apis:
  - name: orders
    service: orders
    match: {{ paths: [/orders] }}
    policies: {{ auth: {{ methods: [jwt], forward_claims: [sub] }} }}
"#,
        jwks = jwks.url(),
        pems = pems.join(", "),
        service = service(&up.url()),
    );
    let gw = common::gateway()
        .config(&config)
        .env("HS_SECRET", HS_SECRET)
        .start()
        .await;
    let client = gw.client();
    let claims = |iss: &str| json!({ "iss": iss, "sub": "alice", "azp": "mobile-app", "exp": tokens::now() + 300 });

    // (case, token, consumer, team): `azp` names the registered consumer for
    // corp and pem; the shared-secret IdP uses the default `sub`.
    let mut cases = Vec::new();
    for (alg, key) in asymmetric() {
        let kid = kid_of(alg);
        cases.push((
            format!("JWKS {alg}"),
            tokens::mint(alg, key, Some(&kid), &claims(JWKS_ISS)),
            "mobile-app",
            Some("payments"),
        ));
        cases.push((
            format!("PEM {alg}"),
            tokens::mint(alg, key, None, &claims(PEM_ISS)),
            "mobile-app",
            Some("payments"),
        ));
    }
    for alg in ["HS256", "HS384", "HS512"] {
        cases.push((
            format!("secret {alg}"),
            tokens::mint_hs(alg, HS_SECRET.as_bytes(), &claims(HS_ISS)),
            "alice",
            None,
        ));
    }
    for (case, token, consumer, team) in &cases {
        let res = get(&client, &gw, token).await;
        assert_eq!(res.status(), 200, "{case}: {}", res.text().await.unwrap());
        let echo = echoed(res).await;
        assert_caller(&echo, consumer, *team, "alice", token);
    }
    assert_eq!(jwks.hits(), 1, "one fetch serves every JWKS key");
    assert_eq!(up.hits(), cases.len() as u64);

    let records = gw
        .wait_for_records(cases.len(), Duration::from_secs(5))
        .await;
    for record in &records {
        assert_eq!(record["outcome"], "allowed", "{record}");
        assert!(
            ["mobile-app", "alice"].contains(&record["consumer"].as_str().unwrap_or("")),
            "{record}"
        );
    }
}

// ----- forgeries -----------------------------------------------------------

#[tokio::test]
async fn forged_misdirected_and_untimely_tokens_are_refused_before_upstream() {
    let up = upstream::echo("orders");
    let jwks = JwksServer::start(vec![tokens::jwk(TestKey::Rsa, "r1", "RS256")]);
    let config = format!(
        r#"
identity_providers:
  - {{ name: corp, issuer: "{JWKS_ISS}", jwks_url: "{jwks}", audiences: [orders-api] }}
  - {{ name: pem, issuer: "{PEM_ISS}", keys: [{pem}] }}
{service}
apis:
  - name: orders
    service: orders
    match: {{ paths: [/orders] }}
    policies: {{ auth: {{ methods: [jwt], forward_claims: [sub] }} }}
  - name: pem-only
    service: orders
    match: {{ paths: [/pem-only] }}
    policies: {{ auth: {{ methods: [jwt], identity_providers: [pem] }} }}
"#,
        jwks = jwks.url(),
        pem = yaml_str(tokens::public_pem(TestKey::Rsa)),
        service = service(&up.url()),
    );
    let gw = common::gateway().config(&config).start().await;
    let client = gw.client();
    let now = tokens::now();
    let corp = || json!({ "iss": JWKS_ISS, "aud": "orders-api", "sub": "alice", "exp": now + 300 });
    let pem = || json!({ "iss": PEM_ISS, "sub": "alice", "exp": now + 300 });
    let rs256 = |claims: &Value| tokens::mint("RS256", TestKey::Rsa, Some("r1"), claims);
    let with = |mut claims: Value, name: &str, value: Value| {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value;
        }
        claims
    };

    // A genuine token, so that every refusal below is the forgery's doing;
    // identity headers the client sends are replaced, not trusted.
    let genuine = rs256(&corp());
    let res = client
        .get(gw.url("/orders"))
        .bearer_auth(&genuine)
        .header("x-consumer-name", "admin")
        .header("x-claim-sub", "root")
        .send()
        .await
        .unwrap();
    let echo = echoed(res).await;
    assert_eq!(echo["headers"]["x-consumer-name"], "alice");
    assert_eq!(echo["headers"]["x-claim-sub"], "alice");
    // A claim the token lacks is not forwarded, whatever the client sent.
    let res = client
        .get(gw.url("/pem-only"))
        .bearer_auth(tokens::mint("RS256", TestKey::Rsa, None, &pem()))
        .header("x-claim-sub", "root")
        .send()
        .await
        .unwrap();
    let echo = echoed(res).await;
    assert!(echo["headers"].get("x-claim-sub").is_none(), "{echo}");
    let admitted = up.hits();

    let refused = [
        ("alg none", tokens::alg_none(&corp())),
        ("alg none, PEM issuer", tokens::alg_none(&pem())),
        (
            "HS256 keyed with the RSA public key (JWKS kid)",
            tokens::hs256_signed_with_public_key(TestKey::Rsa, Some("r1"), &corp()),
        ),
        (
            "HS256 keyed with the RSA public key (PEM issuer)",
            tokens::hs256_signed_with_public_key(TestKey::Rsa, None, &pem()),
        ),
        (
            "tampered payload",
            tokens::tamper_payload(&genuine, &with(corp(), "sub", "admin".into())),
        ),
        (
            "signed by Rsa2 under the kid of Rsa",
            tokens::mint("RS256", TestKey::Rsa2, Some("r1"), &corp()),
        ),
        (
            "signed by Rsa2, PEM issuer",
            tokens::mint("RS256", TestKey::Rsa2, None, &pem()),
        ),
        (
            "PS256 under a kid whose JWK says RS256",
            tokens::mint("PS256", TestKey::Rsa, Some("r1"), &corp()),
        ),
        (
            "signature cut off",
            genuine.rsplit_once('.').unwrap().0.to_owned() + ".AAAA",
        ),
        (
            "unknown issuer",
            rs256(&with(corp(), "iss", "https://evil.test".into())),
        ),
        ("no issuer", rs256(&with(corp(), "iss", Value::Null))),
        (
            "wrong audience",
            rs256(&with(corp(), "aud", "other-api".into())),
        ),
        ("no audience", rs256(&with(corp(), "aud", Value::Null))),
        ("no exp", rs256(&with(corp(), "exp", Value::Null))),
        (
            "no sub, the claim naming the consumer",
            rs256(&with(corp(), "sub", Value::Null)),
        ),
        (
            "nbf beyond the leeway",
            rs256(&with(corp(), "nbf", (now + 300).into())),
        ),
        ("not a JWT", "a.b.c".to_owned()),
    ];
    for (case, token) in &refused {
        let r = refusal(get(&client, &gw, token).await).await;
        assert_unauthenticated(&r, "invalid_credentials", case);
    }
    let expired = rs256(&with(corp(), "exp", (now - 120).into()));
    let r = refusal(get(&client, &gw, &expired).await).await;
    assert_unauthenticated(&r, "expired_credentials", "expired");
    assert_eq!(
        r.challenge.as_deref(),
        Some(r#"Bearer realm="tollgate", error="invalid_token""#)
    );
    // An API that accepts the PEM issuer only refuses the JWKS issuer's token.
    let res = call(&client, &gw, Method::GET, "/pem-only", &genuine).await;
    assert_unauthenticated(
        &refusal(res).await,
        "invalid_credentials",
        "issuer not accepted",
    );
    assert_eq!(up.hits(), admitted, "a refused token reached upstream");

    // Within the 30 s default leeway: a token a little early or a little late passes.
    for (case, claims) in [
        (
            "nbf within the leeway",
            with(corp(), "nbf", (now + 10).into()),
        ),
        (
            "exp within the leeway",
            with(corp(), "exp", (now - 5).into()),
        ),
    ] {
        let res = get(&client, &gw, &rs256(&claims)).await;
        assert_eq!(res.status(), 200, "{case}");
    }
    let res = call(
        &client,
        &gw,
        Method::GET,
        "/pem-only",
        &tokens::mint("RS256", TestKey::Rsa, None, &pem()),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(up.hits(), admitted + 3);
}

// ----- JWKS: floods, rotation, outages -------------------------------------

#[tokio::test]
async fn a_flood_of_unknown_key_ids_costs_the_idp_one_fetch() {
    let up = upstream::echo("orders");
    let jwks = JwksServer::start(vec![tokens::jwk(TestKey::Rsa, "r1", "RS256")]);
    let config = format!(
        r#"
identity_providers: [{{ name: corp, issuer: "{JWKS_ISS}", jwks_url: "{jwks}" }}]
{service}
apis:
  - {{ name: orders, service: orders, match: {{ paths: [/orders] }}, policies: {{ auth: {{ methods: [jwt] }} }} }}
"#,
        jwks = jwks.url(),
        service = service(&up.url()),
    );
    let gw = common::gateway().config(&config).start().await;
    let client = gw.client();
    let claims = json!({ "iss": JWKS_ISS, "sub": "mallory", "exp": tokens::now() + 300 });
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let flood: Vec<String> = (0..50)
        .map(|i| {
            tokens::mint(
                "RS256",
                TestKey::Rsa,
                Some(&format!("random-{salt}-{i}")),
                &claims,
            )
        })
        .collect();
    let answers = join_all(
        flood
            .iter()
            .map(|token| async { refusal(get(&client, &gw, token).await).await }),
    )
    .await;
    for r in &answers {
        assert_unauthenticated(r, "invalid_credentials", "unknown kid");
    }
    assert!(
        jwks.hits() <= 2,
        "50 unknown kids cost {} JWKS fetches",
        jwks.hits()
    );
    assert_eq!(up.hits(), 0);

    // The genuine key still works, from the cache.
    let hits = jwks.hits();
    let good = tokens::mint("RS256", TestKey::Rsa, Some("r1"), &claims);
    assert_eq!(get(&client, &gw, &good).await.status(), 200);
    assert_eq!(jwks.hits(), hits);

    // A reload keeps the cached keys: the new API's first token costs no fetch.
    gw.write_config(&config.replace("[/orders]", "[/orders, /v2]"));
    gw.sighup();
    tollgate_testkit::eventually(Duration::from_secs(5), || async {
        call(&client, &gw, Method::GET, "/v2", &good).await.status() == 200
    })
    .await;
    assert_eq!(jwks.hits(), hits, "a reload refetched the key set");
}

/// The gateway refetches a key set at most once per 10 s per URL, so this
/// test waits that long, once, for two things at the same time: a rotation
/// at one IdP and an outage at another.
#[tokio::test]
async fn a_rotated_key_is_fetched_once_due_and_a_down_idp_keeps_serving_cached_keys() {
    let up = upstream::echo("orders");
    let rotating = JwksServer::start(vec![tokens::jwk(TestKey::Rsa, "r1", "RS256")]);
    let failing = JwksServer::start(vec![tokens::jwk(TestKey::P256, "e1", "ES256")]);
    // `failing` keys go stale after 1 s: every request after that wants a
    // refresh, and the first one due (10 s after the first fetch) meets the outage.
    let config = format!(
        r#"
identity_providers:
  - {{ name: rotating, issuer: "https://rotating.test", jwks_url: "{rotating}" }}
  - {{ name: failing, issuer: "https://failing.test", jwks_url: "{failing}", jwks_refresh: 1s }}
  - {{ name: gone, issuer: "https://gone.test", jwks_url: "http://{gone}/jwks.json" }}
{service}
apis:
  - {{ name: orders, service: orders, match: {{ paths: [/orders] }}, policies: {{ auth: {{ methods: [jwt] }} }} }}
"#,
        rotating = rotating.url(),
        failing = failing.url(),
        gone = upstream::closed_port(),
        service = service(&up.url()),
    );
    let gw = common::gateway().config(&config).start().await;
    let client = gw.client();
    let claims = |iss: &str| json!({ "iss": iss, "sub": "alice", "exp": tokens::now() + 300 });
    let old = tokens::mint(
        "RS256",
        TestKey::Rsa,
        Some("r1"),
        &claims("https://rotating.test"),
    );
    let new = tokens::mint(
        "RS256",
        TestKey::Rsa2,
        Some("r2"),
        &claims("https://rotating.test"),
    );
    let cached = tokens::mint(
        "ES256",
        TestKey::P256,
        Some("e1"),
        &claims("https://failing.test"),
    );

    // An IdP whose keys could never be fetched cannot vouch for anything.
    let unverifiable = tokens::mint(
        "RS256",
        TestKey::Rsa,
        Some("g1"),
        &claims("https://gone.test"),
    );
    let r = refusal(get(&client, &gw, &unverifiable).await).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.code, "auth_unavailable");

    // Before the rotation the new key is unknown.
    let r = refusal(get(&client, &gw, &new).await).await;
    assert_unauthenticated(&r, "invalid_credentials", "kid not published yet");
    assert_eq!(rotating.hits(), 1);
    assert_eq!(get(&client, &gw, &old).await.status(), 200);
    assert_eq!(get(&client, &gw, &cached).await.status(), 200);
    assert_eq!(failing.hits(), 1);

    rotating.set_keys(vec![
        tokens::jwk(TestKey::Rsa, "r1", "RS256"),
        tokens::jwk(TestKey::Rsa2, "r2", "RS256"),
    ]);
    failing.set_down(true);

    // Right after the rotation the gateway does not refetch yet: the
    // previous fetch was less than 10 s ago.
    let r = refusal(get(&client, &gw, &new).await).await;
    assert_unauthenticated(&r, "invalid_credentials", "refetch not due");
    assert_eq!(rotating.hits(), 1);

    let started = std::time::Instant::now();
    tollgate_testkit::eventually(Duration::from_secs(20), || async {
        let cached_status = get(&client, &gw, &cached).await.status();
        assert_eq!(cached_status, 200, "cached keys stopped serving");
        let new_status = get(&client, &gw, &new).await.status();
        new_status == 200 && failing.hits() >= 2
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "the refetch came too early for the 10 s interval"
    );
    assert_eq!(rotating.hits(), 2, "one refetch for the rotation");
    assert_eq!(failing.hits(), 2, "one refresh attempt during the outage");
    // After the failed refresh, the cached keys still serve.
    assert_eq!(get(&client, &gw, &cached).await.status(), 200);
    assert_eq!(get(&client, &gw, &old).await.status(), 200);
    assert!(
        gw.logs().contains("fetching a JWKS failed"),
        "the outage is logged"
    );
}

// ----- introspection -------------------------------------------------------

#[tokio::test]
async fn introspected_tokens_are_cached_when_active_and_unavailable_when_the_idp_is_down() {
    let up = upstream::echo("orders");
    let idp = IntrospectionServer::start("tollgate", INTROSPECTION_SECRET);
    let config = format!(
        r#"
teams: [{{ name: payments }}]
consumers: [{{ name: partner, team: payments }}]
identity_providers:
  - name: opaque
    consumer_claim: client_id
    introspection: {{ url: "{url}", client_id: tollgate, client_secret: "env:INTROSPECTION_SECRET", cache: 1m }}
{service}
apis:
  - name: orders
    service: orders
    match: {{ paths: [/orders] }}
    policies: {{ auth: {{ methods: [introspection], forward_claims: [sub] }} }}
"#,
        url = idp.url(),
        service = service(&up.url()),
    );
    let gw = common::gateway()
        .config(&config)
        .env("INTROSPECTION_SECRET", INTROSPECTION_SECRET)
        .start()
        .await;
    let client = gw.client();
    let now = tokens::now();
    let active = "opaque-active-token-0123456789abcdef";
    let revoked = "opaque-revoked-token-0123456789abcdef";
    let expired = "opaque-expired-token-0123456789abcdef";
    idp.insert(
        active,
        json!({ "active": true, "client_id": "partner", "sub": "svc-7", "scope": "orders:read", "exp": now + 300 }),
    );
    idp.insert(revoked, json!({ "active": false }));
    idp.insert(
        expired,
        json!({ "active": true, "client_id": "partner", "sub": "svc-7", "exp": now - 120 }),
    );

    let echo = echoed(get(&client, &gw, active).await).await;
    assert_caller(&echo, "partner", Some("payments"), "svc-7", active);
    assert_eq!(idp.hits(), 1);
    // The second call is answered from the cache.
    echoed(get(&client, &gw, active).await).await;
    assert_eq!(idp.hits(), 1, "an active answer is cached");

    for (case, token, code) in [
        ("inactive", revoked, "invalid_credentials"),
        (
            "unknown",
            "opaque-never-issued-0123456789",
            "invalid_credentials",
        ),
        ("expired", expired, "expired_credentials"),
    ] {
        let r = refusal(get(&client, &gw, token).await).await;
        assert_unauthenticated(&r, code, case);
    }
    assert_eq!(idp.hits(), 4);
    // An inactive answer is not cached: the token is asked about again.
    let r = refusal(get(&client, &gw, revoked).await).await;
    assert_unauthenticated(&r, "invalid_credentials", "inactive again");
    assert_eq!(idp.hits(), 5);

    idp.set_down(true);
    let unseen = "opaque-unseen-token-0123456789abcdef";
    idp.insert(
        unseen,
        json!({ "active": true, "client_id": "partner", "sub": "svc-8" }),
    );
    let r = refusal(get(&client, &gw, unseen).await).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.code, "auth_unavailable");
    // The cached answer keeps serving during the outage.
    echoed(get(&client, &gw, active).await).await;
    assert_eq!(up.hits(), 3, "only active tokens reach upstream");
}

// ----- the gateway's own client-credentials tokens -------------------------

fn token_server_config(upstream: &str) -> String {
    format!(
        r#"
teams: [{{ name: logistics }}]
oauth2_server: {{ issuer: "https://gateway.test", token_ttl: 5m }}
consumers:
  - name: reader
    team: logistics
    client_credentials: {{ client_id: reader-app, secret: "env:READER_SECRET", scopes: [orders:read] }}
  - name: writer
    client_credentials: {{ client_id: writer-app, secret: "env:WRITER_SECRET", scopes: [orders:read, orders:write] }}
{service}
apis:
  - name: orders
    service: orders
    match: {{ paths: [/orders] }}
    policies:
      auth: {{ methods: [jwt], forward_claims: [sub, client_id] }}
      acl: {{ scopes: {{ GET: [orders:read], POST: [orders:write] }} }}
"#,
        service = service(upstream),
    )
}

async fn token_server() -> (Gateway, tollgate_testkit::Upstream) {
    let up = upstream::echo("orders");
    let gw = common::gateway()
        .config(&token_server_config(&up.url()))
        .env("READER_SECRET", READER_SECRET)
        .env("WRITER_SECRET", WRITER_SECRET)
        .start()
        .await;
    (gw, up)
}

#[tokio::test]
async fn client_credentials_tokens_are_issued_published_and_honoured_with_their_scopes() {
    let (gw, up) = token_server().await;
    let client = gw.client();
    let token_url = gw.url("/oauth2/token");

    // HTTP Basic client authentication.
    let res = client
        .post(&token_url)
        .basic_auth("reader-app", Some(READER_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["expires_in"], 300);
    assert_eq!(answer["scope"], "orders:read");
    let reader = answer["access_token"].as_str().unwrap().to_owned();

    // Credentials in the form body.
    let res = client
        .post(&token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "writer-app"),
            ("client_secret", WRITER_SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["token_type"], "Bearer");
    assert!(answer["expires_in"].as_u64().is_some());
    assert_eq!(answer["scope"], "orders:read orders:write");
    let writer = answer["access_token"].as_str().unwrap().to_owned();

    // What the token says, and the published key it names.
    let header = jwt_part(&reader, 0);
    let claims = jwt_part(&reader, 1);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(claims["iss"], "https://gateway.test");
    assert_eq!(claims["sub"], "reader");
    assert_eq!(claims["client_id"], "reader-app");
    assert_eq!(claims["scope"], "orders:read");
    let exp = claims["exp"].as_i64().unwrap();
    assert!((exp - tokens::now() - 300).abs() <= 5, "{claims}");
    let res = client
        .get(gw.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let jwks: Value = res.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{jwks}");
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["crv"], "P-256");
    assert_eq!(keys[0]["kid"], header["kid"]);
    assert!(keys[0].get("d").is_none(), "the private key is published");

    // The token passes the API; its scopes drive the ACL.
    let echo = echoed(get(&client, &gw, &reader).await).await;
    assert_caller(&echo, "reader", Some("logistics"), "reader", &reader);
    assert_eq!(echo["headers"]["x-claim-client_id"], "reader-app");
    let res = call(&client, &gw, Method::POST, "/orders", &reader).await;
    let r = refusal(res).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.code, "forbidden");
    assert!(
        r.challenge
            .as_deref()
            .is_some_and(|c| c.contains(r#"error="insufficient_scope""#)),
        "{r:?}"
    );
    let res = call(&client, &gw, Method::POST, "/orders", &writer).await;
    assert_eq!(echoed(res).await["headers"]["x-consumer-name"], "writer");
    assert_eq!(up.hits(), 2);

    // A token claiming the gateway's issuer and key id but signed elsewhere.
    let kid = header["kid"].as_str().unwrap();
    let forged = tokens::mint("ES256", TestKey::P256, Some(kid), &claims);
    let r = refusal(get(&client, &gw, &forged).await).await;
    assert_unauthenticated(&r, "invalid_credentials", "forged gateway token");
    assert_eq!(up.hits(), 2);

    // Issuing a token is recorded as the consumer's.
    let records = gw.wait_for_records(7, Duration::from_secs(5)).await;
    let issued: Vec<&Value> = records
        .iter()
        .filter(|r| r["path"] == "/oauth2/token")
        .collect();
    assert_eq!(issued.len(), 2, "{records:#?}");
    assert_eq!(issued[0]["consumer"], "reader");
    assert_eq!(issued[1]["consumer"], "writer");
    assert!(issued.iter().all(|r| r["outcome"] == "allowed"));
}

#[tokio::test]
async fn the_signing_key_is_kept_in_the_data_dir_and_outlives_a_restart() {
    let up = upstream::echo("orders");
    let data = tempfile::tempdir().unwrap();
    let config = format!(
        "storage: {{ database: 'sqlite://{}/tollgate.db' }}\n{}",
        data.path().display(),
        token_server_config(&up.url())
    );
    let start = || {
        common::gateway()
            .config(&config)
            .env("READER_SECRET", READER_SECRET)
            .env("WRITER_SECRET", WRITER_SECRET)
            .start()
    };
    let mut first = start().await;
    let res = first
        .client()
        .post(first.url("/oauth2/token"))
        .basic_auth("reader-app", Some(READER_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let answer: Value = res.json().await.unwrap();
    let token = answer["access_token"].as_str().unwrap().to_owned();
    let key_path = data.path().join("oauth2-signing-key.pem");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_path).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the signing key is readable by others");
    first.sigterm();
    assert!(first.wait_exit(Duration::from_secs(10)).await.success());

    let second = start().await;
    let client = second.client();
    let echo = echoed(get(&client, &second, &token).await).await;
    assert_eq!(echo["headers"]["x-consumer-name"], "reader");
    let jwks: Value = client
        .get(second.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kid"], jwt_part(&token, 0)["kid"]);
}

#[tokio::test]
async fn the_token_endpoint_refuses_wrong_clients_grants_and_scopes() {
    let (gw, up) = token_server().await;
    let client = gw.client();
    let token_url = gw.url("/oauth2/token");
    let oauth_error = |res: Response| async move {
        let status = res.status().as_u16();
        let challenge = res
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = res.json().await.unwrap();
        assert!(body.get("access_token").is_none(), "{body}");
        (
            status,
            body["error"].as_str().unwrap_or("").to_owned(),
            challenge,
        )
    };

    for (case, id, secret) in [
        ("wrong secret", "reader-app", "not-the-reader-secret"),
        ("another client's secret", "reader-app", WRITER_SECRET),
        ("unknown client", "nobody-app", READER_SECRET),
    ] {
        let res = client
            .post(&token_url)
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        let (status, error, challenge) = oauth_error(res).await;
        assert_eq!((status, error.as_str()), (401, "invalid_client"), "{case}");
        assert!(challenge.is_some_and(|c| c.starts_with("Basic")), "{case}");
    }
    let res = client
        .post(&token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "reader-app"),
            ("client_secret", "not-the-reader-secret"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(oauth_error(res).await.1, "invalid_client");

    let res = client
        .post(&token_url)
        .basic_auth("reader-app", Some(READER_SECRET))
        .form(&[
            ("grant_type", "password"),
            ("username", "u"),
            ("password", "p"),
        ])
        .send()
        .await
        .unwrap();
    let (status, error, _) = oauth_error(res).await;
    assert_eq!((status, error.as_str()), (400, "unsupported_grant_type"));

    let res = client
        .post(&token_url)
        .basic_auth("reader-app", Some(READER_SECRET))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "orders:write"),
        ])
        .send()
        .await
        .unwrap();
    let (status, error, _) = oauth_error(res).await;
    assert_eq!((status, error.as_str()), (400, "invalid_scope"));

    let res = client.get(&token_url).send().await.unwrap();
    assert_eq!(res.status(), 405);

    // Every failed attempt is recorded, none as allowed, with no consumer.
    let records = gw.wait_for_records(7, Duration::from_secs(5)).await;
    for record in &records {
        let expected = if record["status"] == 405 {
            "error"
        } else {
            "denied"
        };
        assert_eq!(record["outcome"], expected, "{record}");
        assert!(record["consumer"].is_null(), "{record}");
    }
    assert_eq!(
        records
            .iter()
            .filter(|r| r["reason"] == "invalid_credentials")
            .count(),
        4
    );
    assert_eq!(up.hits(), 0);
}

// ----- scopes ------------------------------------------------------------------

#[tokio::test]
async fn scopes_from_a_string_or_an_array_claim_decide_per_method() {
    let up = upstream::echo("orders");
    let config = format!(
        r#"
identity_providers:
  - {{ name: str, issuer: "https://str.test", keys: [{p256}] }}
  - {{ name: arr, issuer: "https://arr.test", keys: [{ed25519}], scopes_claim: scp }}
{service}
apis:
  - name: orders
    service: orders
    match: {{ paths: [/orders] }}
    policies:
      auth: {{ methods: [jwt] }}
      acl: {{ scopes: {{ GET: [orders:read], POST: [orders:write], "*": [orders:admin] }} }}
"#,
        p256 = yaml_str(tokens::public_pem(TestKey::P256)),
        ed25519 = yaml_str(tokens::public_pem(TestKey::Ed25519)),
        service = service(&up.url()),
    );
    let gw = common::gateway().config(&config).start().await;
    let client = gw.client();

    // Granted scopes → statuses of GET, POST and DELETE (which falls to `*`).
    let matrix: [(&[&str], [u16; 3]); 7] = [
        (&[], [403, 403, 403]),
        (&["orders:read"], [200, 403, 403]),
        (&["orders:write"], [403, 200, 403]),
        (&["orders:read", "orders:write"], [200, 200, 403]),
        (&["orders:admin"], [403, 403, 200]),
        (
            &["orders:admin", "orders:read", "orders:write"],
            [200, 200, 200],
        ),
        // Scopes match exactly: no prefixes, no case folding.
        (
            &["orders:reader", "orders:read:all", "ORDERS:READ", "orders"],
            [403, 403, 403],
        ),
    ];
    let mut allowed = 0;
    for (granted, expected) in matrix {
        let exp = tokens::now() + 300;
        let string_token = {
            let mut claims = json!({ "iss": "https://str.test", "sub": "s", "exp": exp });
            if !granted.is_empty() {
                claims["scope"] = granted.join(" ").into();
            }
            tokens::mint("ES256", TestKey::P256, None, &claims)
        };
        let array_token = tokens::mint(
            "EdDSA",
            TestKey::Ed25519,
            None,
            &json!({ "iss": "https://arr.test", "sub": "a", "exp": exp, "scp": granted }),
        );
        for (form, token) in [("string", &string_token), ("array", &array_token)] {
            for (method, status) in [Method::GET, Method::POST, Method::DELETE]
                .into_iter()
                .zip(expected)
            {
                let res = call(&client, &gw, method.clone(), "/orders", token).await;
                let case = format!("{form} {granted:?} {method}");
                if status == 200 {
                    assert_eq!(res.status(), 200, "{case}");
                    allowed += 1;
                } else {
                    let r = refusal(res).await;
                    assert_eq!(
                        (r.status.as_u16(), r.code.as_str()),
                        (403, "forbidden"),
                        "{case}"
                    );
                    assert!(
                        r.challenge
                            .as_deref()
                            .is_some_and(|c| c.contains("insufficient_scope")),
                        "{case}: {r:?}"
                    );
                }
            }
        }
    }
    // The array IdP reads `scp`: scopes under `scope` grant nothing there.
    let misplaced = tokens::mint(
        "EdDSA",
        TestKey::Ed25519,
        None,
        &json!({ "iss": "https://arr.test", "sub": "a", "exp": tokens::now() + 300, "scope": "orders:read" }),
    );
    let r = refusal(get(&client, &gw, &misplaced).await).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(up.hits(), allowed);
}

// ----- no secret in any output --------------------------------------------------

#[tokio::test]
async fn no_token_or_secret_reaches_a_log_line_a_record_or_the_database() {
    let up = upstream::echo("orders");
    let jwks = JwksServer::start(vec![tokens::jwk(TestKey::Rsa, "r1", "RS256")]);
    let idp = IntrospectionServer::start("tollgate", INTROSPECTION_SECRET);
    let config = format!(
        r#"
oauth2_server: {{ issuer: "https://gateway.test" }}
consumers:
  - name: reader
    client_credentials: {{ client_id: reader-app, secret: "env:READER_SECRET" }}
identity_providers:
  - {{ name: corp, issuer: "{JWKS_ISS}", jwks_url: "{jwks}" }}
  - {{ name: shared, issuer: "{HS_ISS}", secret: "env:HS_SECRET" }}
  - name: opaque
    introspection: {{ url: "{introspection}", client_id: tollgate, client_secret: "env:INTROSPECTION_SECRET" }}
{service}
apis:
  - name: orders
    service: orders
    match: {{ paths: [/orders] }}
    policies: {{ auth: {{ methods: [jwt, introspection] }} }}
"#,
        jwks = jwks.url(),
        introspection = idp.url(),
        service = service(&up.url()),
    );
    let gw = common::gateway()
        .config(&config)
        .env("HS_SECRET", HS_SECRET)
        .env("READER_SECRET", READER_SECRET)
        .env("INTROSPECTION_SECRET", INTROSPECTION_SECRET)
        .env("TOLLGATE_LOG", "debug")
        .start()
        .await;
    let client = gw.client();
    let now = tokens::now();
    let claims = |iss: &str| json!({ "iss": iss, "sub": "alice", "exp": now + 300 });
    let wrong_hs_secret = "a-guessed-hs-secret-0123456789abcdef";
    let wrong_client_secret = "a-guessed-client-secret-0123456789";
    let opaque = "opaque-active-token-for-the-secrets-test-0123";
    let opaque_unknown = "opaque-unknown-token-for-the-secrets-test-0123";
    let opaque_during_outage = "opaque-outage-token-for-the-secrets-test-0123";
    idp.insert(opaque, json!({ "active": true, "sub": "svc" }));

    let mut tokens_used = vec![
        tokens::mint_hs("HS256", HS_SECRET.as_bytes(), &claims(HS_ISS)),
        tokens::mint_hs("HS256", wrong_hs_secret.as_bytes(), &claims(HS_ISS)),
        tokens::mint("RS256", TestKey::Rsa, Some("r1"), &claims(JWKS_ISS)),
        tokens::mint("RS256", TestKey::Rsa2, Some("r1"), &claims(JWKS_ISS)),
        tokens::mint(
            "RS256",
            TestKey::Rsa,
            Some("r1"),
            &json!({ "iss": JWKS_ISS, "sub": "alice", "exp": now - 120 }),
        ),
        tokens::alg_none(&claims(JWKS_ISS)),
        opaque.to_owned(),
        opaque_unknown.to_owned(),
    ];
    let expected = [200, 401, 200, 401, 401, 401, 200, 401];
    for (token, status) in tokens_used.iter().zip(expected) {
        assert_eq!(get(&client, &gw, token).await.status(), status);
    }
    idp.set_down(true);
    assert_eq!(get(&client, &gw, opaque_during_outage).await.status(), 503);
    tokens_used.push(opaque_during_outage.to_owned());

    // The token endpoint, with the right and a wrong secret, both ways.
    let res = client
        .post(gw.url("/oauth2/token"))
        .basic_auth("reader-app", Some(READER_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let issued: Value = res.json().await.unwrap();
    let issued = issued["access_token"].as_str().unwrap().to_owned();
    assert_eq!(get(&client, &gw, &issued).await.status(), 200);
    tokens_used.push(issued);
    let res = client
        .post(gw.url("/oauth2/token"))
        .basic_auth("reader-app", Some(wrong_client_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = client
        .post(gw.url("/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "reader-app"),
            ("client_secret", wrong_client_secret),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let records = gw.wait_for_records(13, Duration::from_secs(5)).await;
    // The database and its write-ahead log, once they hold the last record.
    let database = || {
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(gw.dir()).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("tollgate.db")
            {
                bytes.extend(std::fs::read(&path).unwrap_or_default());
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let last_id = records.last().unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    tollgate_testkit::eventually(Duration::from_secs(5), || async {
        database().contains(&last_id)
    })
    .await;
    let outputs = [
        records
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
        gw.logs(),
        database(),
    ];
    let everything = outputs.join("\n");
    assert!(
        everything.contains(" DEBUG "),
        "the gateway did not log at debug level"
    );

    let mut secrets: Vec<(String, String)> = vec![
        ("the HS secret".into(), HS_SECRET.into()),
        ("a guessed HS secret".into(), wrong_hs_secret.into()),
        ("the client secret".into(), READER_SECRET.into()),
        ("a guessed client secret".into(), wrong_client_secret.into()),
        (
            "the introspection secret".into(),
            INTROSPECTION_SECRET.into(),
        ),
        (
            "the client's Basic credentials".into(),
            base64_encode(format!("reader-app:{READER_SECRET}").as_bytes()),
        ),
        (
            "the gateway's introspection credentials".into(),
            base64_encode(format!("tollgate:{INTROSPECTION_SECRET}").as_bytes()),
        ),
    ];
    for (i, token) in tokens_used.iter().enumerate() {
        secrets.push((format!("token #{i}"), token.clone()));
        // A signature is as unique as its token: no partial token either.
        if let Some((_, signature)) = token.rsplit_once('.').filter(|(_, s)| s.len() >= 16) {
            secrets.push((format!("the signature of token #{i}"), signature.to_owned()));
        }
    }
    for (what, secret) in &secrets {
        assert!(!everything.contains(secret.as_str()), "{what} leaked");
    }
}

/// Client secrets cannot be guessed at line rate: `POST /oauth2/token` is
/// limited per client IP (`oauth2_server.rate_limit`), failures and successes alike.
#[tokio::test]
async fn the_token_endpoint_is_rate_limited_per_client_ip() {
    let up = upstream::echo("u");
    let yaml = format!(
        r#"
oauth2_server: {{ issuer: https://gateway.example.com, rate_limit: {{ limit: 3, window: 1m, by: ip }} }}
consumers:
  - name: app
    client_credentials: {{ client_id: app, secret: env:APP_SECRET }}
services:
  - {{ name: s, upstream: {{ targets: [{{ url: "{}" }}] }} }}
apis:
  - {{ name: a, service: s, match: {{ paths: [/] }} }}
"#,
        up.url()
    );
    let gw = common::gateway()
        .config(&yaml)
        .env("APP_SECRET", "the-right-client-secret-0123456789")
        .start()
        .await;
    let token = |secret: &'static str| {
        gw.client()
            .post(gw.url("/oauth2/token"))
            .basic_auth("app", Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
    };
    for guess in ["guess-1", "guess-2", "guess-3"] {
        assert_eq!(token(guess).await.unwrap().status(), 401);
    }
    let res = token("the-right-client-secret-0123456789").await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    let records = gw.wait_for_records(4, Duration::from_secs(5)).await;
    assert!(records
        .iter()
        .any(|r| r["reason"] == "rate_limited" && r["outcome"] == "denied"));
}
