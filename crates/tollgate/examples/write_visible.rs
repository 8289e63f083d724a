//! Admin write → visible on the data plane: how long from sending
//! `POST /admin/v1/apis` until the new API answers on the proxy listener,
//! on the embedded SQLite store, with a configuration of `--apis` APIs
//! already in place (a write compiles the whole snapshot, so its size
//! matters).
//!
//! ```text
//! cargo build --release --bin tollgate
//! cargo run --release -p tollgate --example write_visible -- --apis 1000 --writes 300
//! ```

use std::time::{Duration, Instant};

use tollgate_testkit::serde_json::json;
use tollgate_testkit::{upstream, Gateway};

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let apis = arg("--apis", 1000);
    let writes = arg("--writes", 300);
    let bin = std::env::var("TOLLGATE_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/release/tollgate").to_string()
    });
    let up = upstream::echo("u");
    let gw = Gateway::builder(&bin)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TOLLGATE_LOG", "warn")
        .config(&format!(
            "services: [{{ name: s, upstream: {{ targets: [{{ url: '{}' }}] }} }}]\n",
            up.url()
        ))
        .start()
        .await;
    let client = gw.client();
    let admin = gw.admin_url();

    let mut document = String::from("apis:\n");
    for i in 0..apis {
        document.push_str(&format!(
            "- {{ name: base{i}, service: s, match: {{ paths: [/base/{i}] }}, policies: {{ rate_limit: [{{ limit: 100, window: 1s }}] }} }}\n"
        ));
    }
    let started = Instant::now();
    let res = client
        .post(format!("{admin}/admin/v1/apply"))
        .bearer_auth(ADMIN_TOKEN)
        .body(document)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "{}", res.text().await.unwrap());
    println!("loaded {apis} APIs in one apply: {:?}", started.elapsed());

    let mut acknowledged = Vec::with_capacity(writes);
    let mut visible = Vec::with_capacity(writes);
    for i in 0..writes {
        let path = format!("/new/{i}");
        let started = Instant::now();
        let res = client
            .post(format!("{admin}/admin/v1/apis"))
            .bearer_auth(ADMIN_TOKEN)
            .json(
                &json!({ "name": format!("new{i}"), "service": "s", "match": { "paths": [path] } }),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201);
        acknowledged.push(started.elapsed());
        loop {
            let res = client.get(gw.url(&path)).send().await.unwrap();
            if res.status().as_u16() == 200 {
                break;
            }
        }
        visible.push(started.elapsed());
    }
    acknowledged.sort();
    visible.sort();
    for (what, times) in [("acknowledged", &acknowledged), ("visible", &visible)] {
        println!(
            "{what:>12}: median {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}  ({} writes over {} APIs)",
            percentile(times, 0.5),
            percentile(times, 0.99),
            times[times.len() - 1],
            writes,
            apis
        );
    }
}
