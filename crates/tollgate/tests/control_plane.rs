//! The control plane from the outside: `tollgate apply`/`export`/
//! `import-openapi` against a running node, a SIGKILL in the middle of a
//! stream of writes, and master-key rotation.

mod common;

use std::process::Output;
use std::time::Duration;

use tollgate_testkit::serde_json::{json, Value};
use tollgate_testkit::{upstream, Gateway};

const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

async fn start(yaml: &str) -> Gateway {
    common::start_with_env(yaml, "TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN).await
}

/// Runs the `tollgate` binary with `args` against `gw`'s admin API.
async fn tollgate(gw: &Gateway, args: &[&str], token: Option<&str>) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .args(args)
        .env("TOLLGATE_ADMIN_URL", gw.admin_url())
        .env_remove("TOLLGATE_ADMIN_TOKEN");
    if let Some(token) = token {
        command.env("TOLLGATE_ADMIN_TOKEN", token);
    }
    command.output().await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn status(gw: &Gateway, path: &str) -> u16 {
    gw.client()
        .get(gw.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn apply_export_and_import_from_the_command_line() {
    let up = upstream::echo("u");
    let gw = start("").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("resources.yaml");
    std::fs::write(
        &file,
        format!(
            "services: [{{ name: shop, upstream: {{ targets: [{{ url: '{}' }}] }} }}]\n\
             apis: [{{ name: cart, service: shop, match: {{ paths: [/cart] }} }}]\n",
            up.url()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let dry = tollgate(&gw, &["apply", file, "--dry-run"], Some(ADMIN_TOKEN)).await;
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert_eq!(
        text(&dry.stdout),
        "+ services/shop\n+ apis/cart\ndry run: 2 change(s), nothing applied\n"
    );
    assert_eq!(status(&gw, "/cart").await, 404);
    let applied = tollgate(&gw, &["apply", file], Some(ADMIN_TOKEN)).await;
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    assert!(text(&applied.stdout).ends_with("2 change(s) applied (revision 1)\n"));
    assert_eq!(status(&gw, "/cart").await, 200);

    let export = tollgate(&gw, &["export"], Some(ADMIN_TOKEN)).await;
    assert!(export.status.success(), "{}", text(&export.stderr));
    let exported = dir.path().join("export.yaml");
    std::fs::write(&exported, &export.stdout).unwrap();
    let again = tollgate(
        &gw,
        &["apply", exported.to_str().unwrap(), "--prune"],
        Some(ADMIN_TOKEN),
    )
    .await;
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout), "no changes (revision 1)\n");

    let spec = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tollgate-config/tests/fixtures/petstore3.json"
    );
    let imported = tollgate(
        &gw,
        &["import-openapi", spec, "--service", "shop"],
        Some(ADMIN_TOKEN),
    )
    .await;
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    assert!(
        text(&imported.stdout).contains("+ apis/shop-addPet\n"),
        "{}",
        text(&imported.stdout)
    );
    assert_eq!(status(&gw, "/api/v3/pet/1").await, 200);

    // Refusals: every field error on its own line, exit 1, nothing changed.
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apis: [{ name: bad, service: nowhere, match: { paths: [nope] } }]\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.yaml");
    let refused = tollgate(&gw, &["apply", bad.to_str().unwrap()], Some(ADMIN_TOKEN)).await;
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("error 422 (invalid_config)"), "{stderr}");
    assert!(stderr.contains("  apis/bad.service: "), "{stderr}");
    assert!(stderr.contains("  apis/bad.match.paths[0]: "), "{stderr}");
    let anonymous = tollgate(&gw, &["export"], None).await;
    assert_eq!(anonymous.status.code(), Some(1));
    assert!(text(&anonymous.stderr).contains("missing_credentials"));
    let unreachable = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "export",
            "--admin-url",
            "http://127.0.0.1:9",
            "--token",
            "x",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(text(&unreachable.stderr).contains("cannot reach the admin API"));
}

#[tokio::test]
async fn a_node_killed_during_a_stream_of_writes_keeps_every_acknowledged_change() {
    let up = upstream::echo("u");
    let mut gw = start(&format!(
        "services: [{{ name: s, upstream: {{ targets: [{{ url: '{}' }}] }} }}]\n",
        up.url()
    ))
    .await;
    let client = gw.client();
    let admin = gw.admin_url();
    let writer = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        for i in 0.. {
            let api = json!({ "name": format!("a{i}"), "service": "s", "match": { "paths": [format!("/p{i}")] } });
            let sent = client
                .post(format!("{admin}/admin/v1/apis"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&api)
                .send()
                .await;
            match sent {
                Ok(res) if res.status().as_u16() == 201 => acknowledged.push(i),
                _ => return (acknowledged, i),
            }
        }
        unreachable!()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.kill().await;
    let (acknowledged, in_flight) = writer.await.unwrap();
    assert!(
        acknowledged.len() >= 3,
        "only {} writes before the kill",
        acknowledged.len()
    );

    gw.restart(&[]).await;
    let res = gw
        .client()
        .get(format!("{}/admin/v1/apis?limit=1000", gw.admin_url()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let listed: Value = res.json().await.unwrap();
    let mut stored: Vec<u32> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap()[1..].parse().unwrap())
        .collect();
    stored.sort_unstable();
    // Every acknowledged write is there; at most the one in flight besides.
    let mut expected = acknowledged.clone();
    if stored.len() == expected.len() + 1 {
        expected.push(in_flight);
    }
    assert_eq!(stored, expected);
    for i in &stored {
        assert_eq!(status(&gw, &format!("/p{i}")).await, 200, "/p{i}");
    }
    // The node goes on taking writes at the next revision.
    let res = gw
        .client()
        .post(format!("{}/admin/v1/apis", gw.admin_url()))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "name": "after", "service": "s", "match": { "paths": ["/after"] } }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
}

#[tokio::test]
async fn the_master_key_rotates_and_only_the_right_key_opens_the_store() {
    let mut gw = start("").await;
    let res = gw
        .client()
        .post(format!("{}/admin/v1/identity_providers", gw.admin_url()))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "name": "corp", "issuer": "https://corp", "secret": "a-shared-secret-of-32-bytes-or-more!" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    gw.sigterm();
    gw.wait_exit(Duration::from_secs(10)).await;

    let key_file = gw.dir().join("master-key");
    let before = std::fs::read_to_string(&key_file).unwrap();
    let config = gw.config_path().to_str().unwrap().to_string();
    let rotate = |env: Option<(&'static str, String)>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        command
            .args(["rotate-master-key", "--config", &config])
            .env_remove("TOLLGATE_MASTER_KEY");
        if let Some((k, v)) = env {
            command.env(k, v);
        }
        command.output()
    };
    // A wrong key opens nothing and changes nothing.
    let wrong = rotate(Some(("TOLLGATE_MASTER_KEY", "0".repeat(64))))
        .await
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        text(&wrong.stderr).contains("master key"),
        "{}",
        text(&wrong.stderr)
    );

    let rotated = rotate(None).await.unwrap();
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));
    assert!(text(&rotated.stdout).contains("resealed 1 resource(s)"));
    let after = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(before, after);
    assert!(!gw.dir().join("master-key.new").exists());

    gw.restart(&[]).await;
    let res = gw
        .client()
        .get(format!(
            "{}/admin/v1/identity_providers/corp",
            gw.admin_url()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let idp: Value = res.json().await.unwrap();
    assert_eq!(idp["secret"], "<redacted>");
}

#[tokio::test]
async fn the_database_url_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("via-env.db");
    let gw = common::gateway()
        .config("storage: { database: env:TOLLGATE_TEST_DATABASE }\n")
        .env(
            "TOLLGATE_TEST_DATABASE",
            format!("sqlite://{}", db.display()),
        )
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .start()
        .await;
    assert!(db.exists(), "the database is where the variable says");
    assert!(
        dir.path().join("master-key").exists(),
        "node files live beside it"
    );
    let mut refused = common::gateway()
        .config("storage: { database: env:TOLLGATE_TEST_DATABASE_UNSET }\n")
        .spawn();
    assert_eq!(
        refused.wait_exit(Duration::from_secs(10)).await.code(),
        Some(2)
    );
    assert!(refused.stderr().contains(
        "storage.database: environment variable TOLLGATE_TEST_DATABASE_UNSET is not set"
    ));
    drop(gw);
}
