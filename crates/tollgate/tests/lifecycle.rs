//! The process's life: hot reload (SIGHUP and file change), rejected reloads,
//! SIGTERM drain, the admin listener's metrics and probes, and the database sink.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tollgate_testkit::reqwest;
use tollgate_testkit::serde_json::Value;
use tollgate_testkit::{eventually, upstream, Gateway, Upstream};

const RELOAD: Duration = Duration::from_secs(3);

/// Services `a` and `b`, and one API `api` on `/` in front of `active`.
fn switchable(a: &Upstream, b: &Upstream, active: &str) -> String {
    format!(
        "services:\n  - {{ name: a, upstream: {{ targets: [{{ url: '{}' }}] }} }}\n  - {{ name: b, upstream: {{ targets: [{{ url: '{}' }}] }} }}\napis:\n  - {{ name: api, service: {active}, match: {{ paths: [/] }} }}\n",
        a.url(),
        b.url()
    )
}

/// The echo upstream's name for `GET path`, or `None` if it was not a 200 echo.
async fn upstream_of(client: &reqwest::Client, gw: &Gateway, path: &str) -> Option<String> {
    let res = client.get(gw.url(path)).send().await.ok()?;
    if res.status() != 200 {
        return None;
    }
    let body: Value = res.json().await.ok()?;
    body["upstream"].as_str().map(str::to_owned)
}

/// What one load client saw.
#[derive(Default)]
struct LoadReport {
    ok: usize,
    failures: Vec<String>,
    seen: HashSet<String>,
}

#[tokio::test]
async fn reload_under_load_fails_no_request() {
    let a = upstream::echo("a");
    let b = upstream::echo("b");
    let gw = common::gateway()
        .config(&switchable(&a, &b, "a"))
        .start()
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(5);
    let clients: Vec<_> = (0..6)
        .map(|n| {
            let stop = stop.clone();
            let client = gw.client();
            let url = gw.url(&format!("/load/{n}"));
            tokio::spawn(async move {
                let mut report = LoadReport::default();
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match client.get(&url).send().await {
                        Ok(res) if res.status() == 200 => match res.json::<Value>().await {
                            Ok(body) => {
                                report.ok += 1;
                                report.seen.insert(body["upstream"].to_string());
                            }
                            Err(e) => report.failures.push(format!("body: {e}")),
                        },
                        Ok(res) => report.failures.push(format!("status {}", res.status())),
                        Err(e) => report.failures.push(format!("error: {e}")),
                    }
                }
                report
            })
        })
        .collect();

    let probe = gw.client();
    let mut hits_before = (a.hits(), b.hits());
    for active in ["b", "a", "b", "a"] {
        gw.write_config(&switchable(&a, &b, active));
        gw.sighup();
        eventually(RELOAD, || async {
            upstream_of(&probe, &gw, "/probe").await.as_deref() == Some(active)
        })
        .await;
        // The load clients' traffic moves too, not only the probe's.
        let (target, before) = match active {
            "a" => (&a, hits_before.0),
            _ => (&b, hits_before.1),
        };
        eventually(RELOAD, || async { target.hits() >= before + 20 }).await;
        hits_before = (a.hits(), b.hits());
    }
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    let mut seen = HashSet::new();
    for client in clients {
        let report = client.await.unwrap();
        assert!(
            report.failures.is_empty(),
            "{} of {} requests failed: {:?}\n{}",
            report.failures.len(),
            report.ok + report.failures.len(),
            report.failures,
            gw.logs()
        );
        total += report.ok;
        seen.extend(report.seen);
    }
    assert!(total >= 100, "only {total} requests under load");
    assert_eq!(seen, HashSet::from(["\"a\"".into(), "\"b\"".into()]));
}

#[tokio::test]
async fn a_request_in_flight_during_a_reload_completes() {
    let slow = upstream::slow(Duration::from_millis(1500));
    let a = upstream::echo("a");
    let with_slow = format!(
        "services:\n  - {{ name: slow, upstream: {{ targets: [{{ url: '{}' }}] }} }}\n  - {{ name: a, upstream: {{ targets: [{{ url: '{}' }}] }} }}\napis:\n  - {{ name: slow, service: slow, match: {{ paths: [/slow] }} }}\n  - {{ name: a, service: a, match: {{ paths: [/a] }} }}\n",
        slow.url(),
        a.url()
    );
    let gw = common::gateway().config(&with_slow).start().await;

    let client = gw.client();
    let in_flight = tokio::spawn(client.get(gw.url("/slow/1")).send());
    eventually(RELOAD, || async { slow.hits() >= 1 }).await;

    // The new configuration no longer has the slow service at all.
    gw.write_config(&format!(
        "services: [{{ name: a, upstream: {{ targets: [{{ url: '{}' }}] }} }}]\napis: [{{ name: a, service: a, match: {{ paths: [/] }} }}]\n",
        a.url()
    ));
    gw.sighup();
    let probe = gw.client();
    eventually(RELOAD, || async {
        // 404 before the reload, `a` after (never the slow upstream).
        upstream_of(&probe, &gw, "/elsewhere").await.as_deref() == Some("a")
    })
    .await;
    if in_flight.is_finished() {
        panic!(
            "the slow request finished before the reload took effect: {:?}\n{}",
            in_flight.await,
            gw.logs()
        );
    }

    let res = in_flight
        .await
        .unwrap()
        .expect("the in-flight request failed");
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["upstream"], "slow");
    assert_eq!(slow.hits(), 1);
    // New requests follow the new configuration.
    assert_eq!(
        upstream_of(&probe, &gw, "/slow/2").await.as_deref(),
        Some("a")
    );
}

/// The `SigCgt` mask of `/proc/PID/status`: bit N-1 for a caught signal N.
fn caught_signals(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mask = status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .expect("a SigCgt line");
    u64::from_str_radix(mask.trim(), 16).unwrap()
}

/// The signal handlers are in place once the node says it is ready: SIGHUP
/// and SIGTERM end a process that has none, and a task spawned to install
/// them may not have run by then.
#[tokio::test]
async fn signals_sent_as_soon_as_the_node_is_ready_are_handled() {
    let a = upstream::echo("a");
    let b = upstream::echo("b");
    let gw = common::gateway()
        .config(&switchable(&a, &b, "a"))
        .start()
        .await;
    // What the kernel says the process catches, read as soon as it is
    // ready: the three handlers are installed, not about to be.
    let caught = caught_signals(gw.pid());
    for (signal, name) in [(1, "SIGHUP"), (2, "SIGINT"), (15, "SIGTERM")] {
        assert!(
            caught & (1 << (signal - 1)) != 0,
            "{name} not caught once ready"
        );
    }
    gw.sighup();
    let client = gw.client();
    eventually(RELOAD, || async {
        upstream_of(&client, &gw, "/x").await.as_deref() == Some("a")
    })
    .await;

    let mut gw = common::gateway()
        .config(&switchable(&a, &b, "a"))
        .start()
        .await;
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.success(),
        "SIGTERM ended it with {status}: not drained"
    );
}

#[tokio::test]
async fn a_changed_file_is_reloaded_without_sighup() {
    let a = upstream::echo("a");
    let b = upstream::echo("b");
    let gw = common::gateway()
        .config(&switchable(&a, &b, "a"))
        .start()
        .await;
    let client = gw.client();
    assert_eq!(upstream_of(&client, &gw, "/x").await.as_deref(), Some("a"));

    gw.write_config(&switchable(&a, &b, "b"));
    eventually(Duration::from_secs(4), || async {
        upstream_of(&client, &gw, "/x").await.as_deref() == Some("b")
    })
    .await;
}

#[tokio::test]
async fn an_invalid_file_is_rejected_and_the_old_config_keeps_serving() {
    let a = upstream::echo("a");
    let b = upstream::echo("b");
    let config = |path: &str, service: &str| {
        format!(
            "services:\n  - {{ name: a, upstream: {{ targets: [{{ url: '{}' }}] }} }}\n  - {{ name: b, upstream: {{ targets: [{{ url: '{}' }}] }} }}\napis:\n  - {{ name: orders, service: {service}, match: {{ paths: [{path}] }} }}\n",
            a.url(),
            b.url()
        )
    };
    let gw = common::gateway()
        .config(&config("/orders", "a"))
        .start()
        .await;
    let client = gw.client();

    gw.write_config(&config("orders", "b"));
    gw.sighup();
    eventually(RELOAD, || async {
        gw.logs()
            .contains("apis[0].match.paths[0]: must start with '/'")
    })
    .await;
    assert_eq!(
        upstream_of(&client, &gw, "/orders/1").await.as_deref(),
        Some("a"),
        "{}",
        gw.logs()
    );
    assert_eq!(b.hits(), 0);

    // A valid file afterwards is taken.
    gw.write_config(&config("/orders", "b"));
    gw.sighup();
    eventually(RELOAD, || async {
        upstream_of(&client, &gw, "/orders/1").await.as_deref() == Some("b")
    })
    .await;
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let slow = upstream::slow(Duration::from_secs(1));
    let mut gw = common::gateway()
        .config(&common::simple(&[slow.url()], "", ""))
        .start()
        .await;

    let in_flight = tokio::spawn(gw.client().get(gw.url("/drain")).send());
    eventually(RELOAD, || async { slow.hits() >= 1 }).await;
    gw.sigterm();

    let proxy = gw.proxy_addr();
    eventually(Duration::from_millis(500), || async {
        TcpStream::connect(proxy).await.is_err()
    })
    .await;
    assert!(
        !in_flight.is_finished(),
        "the slow request finished before the listener closed; the test proves nothing"
    );

    let res = in_flight
        .await
        .unwrap()
        .expect("the in-flight request failed during the drain");
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["upstream"], "slow");

    let status = gw.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
    // The access log was flushed before the exit.
    let records = gw.access_records().await;
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["status"], 200);
    assert_eq!(records[0]["path"], "/drain");
}

#[tokio::test]
async fn shutdown_grace_bounds_the_drain() {
    let slow = upstream::slow(Duration::from_secs(5));
    let mut gw = common::gateway()
        .config(&format!(
            "shutdown_grace: 500ms\n{}",
            common::simple(&[slow.url()], "", "")
        ))
        .start()
        .await;

    let in_flight = tokio::spawn(gw.client().get(gw.url("/stuck")).send());
    eventually(RELOAD, || async { slow.hits() >= 1 }).await;
    let signalled = Instant::now();
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(4)).await;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
    assert!(took < Duration::from_secs(2), "exit took {took:?}");
    assert!(
        took >= Duration::from_millis(400),
        "exit after {took:?}: the grace period was not waited for"
    );
    let result = in_flight.await.unwrap();
    assert!(
        result.as_ref().map_or(true, |res| res.status() != 200),
        "a request cut off by the grace period cannot have succeeded: {result:?}"
    );
}

/// The value of the sample of `name` whose labels include every one of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn admin_listener_serves_metrics_and_probes() {
    let a = upstream::echo("a");
    let gw = common::gateway()
        .config(&format!(
            "services: [{{ name: orders-svc, upstream: {{ targets: [{{ url: '{}' }}] }} }}]\napis: [{{ name: orders, service: orders-svc, match: {{ paths: [/orders] }} }}]\n",
            a.url()
        ))
        .start()
        .await;
    let client = gw.client();
    for _ in 0..3 {
        let res = client.get(gw.url("/orders/1")).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    let res = client.get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(res.status(), 404);

    let metrics = tollgate_testkit::eventually_some(RELOAD, || async {
        let metrics = gw.metrics().await;
        let counted = sample(
            &metrics,
            "tollgate_requests_total",
            &[r#"api="orders""#, r#"status="200""#],
        );
        (counted == Some(3.0)).then_some(metrics)
    })
    .await;
    let target = format!(r#"target="{}""#, a.url());
    for (name, labels, expected) in [
        (
            "tollgate_request_duration_seconds_count",
            vec![r#"api="orders""#],
            Some(3.0),
        ),
        (
            "tollgate_requests_total",
            vec![r#"api="""#, r#"status="404""#],
            Some(1.0),
        ),
        (
            "tollgate_upstream_target_healthy",
            vec![r#"service="orders-svc""#, target.as_str()],
            Some(1.0),
        ),
        ("tollgate_access_log_dropped_total", vec![], Some(0.0)),
    ] {
        assert_eq!(
            sample(&metrics, name, &labels),
            expected,
            "{name} {labels:?} in:\n{metrics}"
        );
    }
    assert!(
        sample(&metrics, "tollgate_active_connections", &[]).is_some(),
        "tollgate_active_connections missing:\n{metrics}"
    );
    assert!(
        metrics.contains("# TYPE tollgate_request_duration_seconds histogram"),
        "{metrics}"
    );

    for probe in ["/healthz", "/readyz"] {
        let res = client
            .get(format!("{}{probe}", gw.admin_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{probe}");
    }
}

#[tokio::test]
async fn access_records_also_land_in_the_database() {
    let a = upstream::echo("a");
    let mut gw = common::gateway()
        .config(&format!(
            "services: [{{ name: svc, upstream: {{ targets: [{{ url: '{}' }}] }} }}]\napis: [{{ name: api, service: svc, match: {{ paths: [/api] }} }}]\n",
            a.url()
        ))
        .start()
        .await;
    let client = gw.client();
    for n in 0..5 {
        let res = client
            .get(gw.url(&format!("/api/{n}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let res = client.get(gw.url("/elsewhere")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    gw.wait_for_records(6, RELOAD).await;

    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{}", gw.logs());

    let file_records = gw.access_records().await;
    let store = tollgate_store::SqliteStore::open(&format!(
        "sqlite://{}",
        gw.dir().join("tollgate.db").display()
    ))
    .expect("open the gateway's database");
    assert_eq!(
        store.count_access_records().unwrap(),
        file_records.len() as u64
    );
    let stored = store.recent_access_records(100).unwrap();
    let mut from_db: Vec<(String, String, u16)> = stored
        .iter()
        .map(|r| (r.request_id.clone(), r.path.clone(), r.status))
        .collect();
    let mut from_file: Vec<(String, String, u16)> = file_records
        .iter()
        .map(|r| {
            (
                r["request_id"].as_str().unwrap().to_owned(),
                r["path"].as_str().unwrap().to_owned(),
                r["status"].as_u64().unwrap() as u16,
            )
        })
        .collect();
    from_db.sort();
    from_file.sort();
    assert_eq!(from_db, from_file);
    assert_eq!(from_db.len(), 6);
    assert_eq!(stored.iter().filter(|r| r.status == 200).count(), 5);
    assert!(stored
        .iter()
        .any(|r| r.status == 404 && r.reason.as_deref() == Some("no_route")));
}
