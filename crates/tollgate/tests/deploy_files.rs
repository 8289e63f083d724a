//! `deploy/`: the node configuration, the systemd unit, the container image
//! and the Kubernetes manifests stay true to the binary. The configuration
//! passes `tollgate validate`; the ConfigMap embeds it verbatim; every
//! `env:` variable it names and every variable the binary reads at start-up
//! is given by the Secret and the env file; ports, probes, paths and grace
//! periods agree with the configuration; and the probe paths are served by
//! a real gateway running the deployment's node settings.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use tollgate_testkit::reqwest;
use tollgate_testkit::serde_yaml::{self, Value};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
/// Where every artifact puts the node configuration.
const CONFIG_PATH: &str = "/etc/tollgate/tollgate.yaml";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn node_config() -> Value {
    serde_yaml::from_str(&read("deploy/tollgate.yaml")).expect("deploy/tollgate.yaml is YAML")
}

/// Every YAML document of the Kubernetes manifests (empty ones skipped).
fn manifests() -> Vec<Value> {
    let text = read("deploy/kubernetes/tollgate.yaml");
    let mut documents = vec![String::new()];
    for line in text.lines() {
        if line == "---" {
            documents.push(String::new());
        } else {
            let last = documents.last_mut().unwrap();
            last.push_str(line);
            last.push('\n');
        }
    }
    documents
        .iter()
        .map(|d| serde_yaml::from_str::<Value>(d).expect("a manifest is YAML"))
        .filter(|document| !document.is_null())
        .collect()
}

fn of_kind<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents
        .iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect()
}

fn one<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(documents, kind);
    assert_eq!(found.len(), 1, "one {kind} in the manifests");
    found[0]
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is a string: {value:?}"))
}

/// The port of a `HOST:PORT` listen address.
fn port_of(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{address} has a port"))
}

/// Seconds of a duration written `30s`, `1m`.
fn seconds(duration: &str) -> u64 {
    if let Some(s) = duration.strip_suffix('s') {
        s.parse().expect("seconds")
    } else if let Some(m) = duration.strip_suffix('m') {
        m.parse::<u64>().expect("minutes") * 60
    } else {
        panic!("a duration in s or m: {duration}")
    }
}

/// The variables the node configuration reads with `env:NAME`.
fn config_env_names(config: &Value) -> BTreeSet<String> {
    let storage = &config["storage"];
    ["database", "redis"]
        .iter()
        .filter_map(|field| storage[*field].as_str())
        .filter_map(|value| value.strip_prefix("env:"))
        .map(str::to_owned)
        .collect()
}

/// What every deployment must give each node: the configuration's
/// variables, the shared master key and the first admin token.
fn required_env_names(config: &Value) -> BTreeSet<String> {
    let mut names = config_env_names(config);
    names.insert(tollgate_store::sealing::MASTER_KEY_ENV.to_owned());
    names.insert(tollgate_admin::bootstrap::ADMIN_TOKEN_ENV.to_owned());
    names
}

fn shutdown_grace(config: &Value) -> u64 {
    seconds(config["shutdown_grace"].as_str().unwrap_or("30s"))
}

#[test]
fn the_node_config_validates_with_its_variables_set() {
    let config = node_config();
    let names = config_env_names(&config);
    assert!(
        names.contains("TOLLGATE_DATABASE_URL") && names.contains("TOLLGATE_REDIS_URL"),
        "{names:?}"
    );
    let path = repo().join("deploy/tollgate.yaml");
    let out = Command::new(BIN)
        .args(["validate", path.to_str().unwrap()])
        .env(
            "TOLLGATE_DATABASE_URL",
            "postgres://tollgate:secret@127.0.0.1:5432/tollgate",
        )
        .env("TOLLGATE_REDIS_URL", "redis://127.0.0.1:6379/0")
        .output()
        .expect("run tollgate validate");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // It names only the variables it needs: without them it is refused.
    let out = Command::new(BIN)
        .args(["validate", path.to_str().unwrap()])
        .env_remove("TOLLGATE_DATABASE_URL")
        .env_remove("TOLLGATE_REDIS_URL")
        .output()
        .expect("run tollgate validate");
    assert_eq!(out.status.code(), Some(1));
    // PostgreSQL and Redis, on every interface: a node of a cluster.
    let storage = &config["storage"];
    assert!(storage["database"].as_str().unwrap().starts_with("env:"));
    assert!(storage["redis"].as_str().unwrap().starts_with("env:"));
    assert!(
        config["node"]["name"].is_null(),
        "node names default to the host's"
    );
    for listener in ["proxy", "admin"] {
        let address = str_of(&config["listen"][listener], listener);
        assert!(address.starts_with("0.0.0.0:"), "{listener}: {address}");
    }
}

#[test]
fn the_kubernetes_manifests_match_the_node_config() {
    let config_text = read("deploy/tollgate.yaml");
    let config = node_config();
    let documents = manifests();
    let kinds: Vec<&str> = documents
        .iter()
        .map(|d| str_of(&d["kind"], "kind"))
        .collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Secret",
            "Deployment",
            "Service",
            "Service",
            "PodDisruptionBudget"
        ]
    );
    for document in &documents {
        assert!(
            document["metadata"]["namespace"].is_null(),
            "no namespace in the manifests"
        );
    }

    // The ConfigMap holds deploy/tollgate.yaml verbatim.
    let config_map = one(&documents, "ConfigMap");
    let config_map_name = str_of(&config_map["metadata"]["name"], "ConfigMap name");
    assert_eq!(
        str_of(&config_map["data"]["tollgate.yaml"], "the embedded config"),
        config_text,
        "the ConfigMap's tollgate.yaml differs from deploy/tollgate.yaml"
    );

    // The Secret gives every variable a node needs, as placeholders.
    let secret = one(&documents, "Secret");
    let secret_name = str_of(&secret["metadata"]["name"], "Secret name");
    let secret_keys: BTreeSet<String> = secret["stringData"]
        .as_mapping()
        .expect("stringData")
        .iter()
        .map(|(k, v)| {
            assert!(
                str_of(v, "a Secret value").contains("CHANGE-ME"),
                "{k:?} is a marked placeholder"
            );
            str_of(k, "a Secret key").to_owned()
        })
        .collect();
    assert_eq!(secret_keys, required_env_names(&config));

    // The Deployment runs the image's entrypoint on the mounted ConfigMap,
    // with the Secret's variables.
    let deployment = one(&documents, "Deployment");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"].as_u64(), Some(3));
    let pod = &spec["template"]["spec"];
    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    assert!(
        container["command"].is_null() && container["args"].is_null(),
        "the image's entrypoint (serve --config {CONFIG_PATH}) runs as it is"
    );
    let env_from = container["envFrom"].as_sequence().expect("envFrom");
    assert!(env_from
        .iter()
        .any(|e| e["secretRef"]["name"].as_str() == Some(secret_name)));
    let config_volume = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["configMap"]["name"].as_str() == Some(config_map_name))
        .expect("a volume of the ConfigMap");
    let config_mount = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == config_volume["name"])
        .expect("the ConfigMap is mounted");
    assert!(
        config_mount["subPath"].is_null(),
        "a directory mount, so that edits reach the pod"
    );
    assert_eq!(
        Path::new(str_of(&config_mount["mountPath"], "mountPath")).join("tollgate.yaml"),
        Path::new(CONFIG_PATH)
    );
    let data_mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == Some("/var/lib/tollgate"))
        .expect("a writable working directory");
    assert!(data_mount["readOnly"].as_bool() != Some(true));

    // Container ports are the configuration's listeners.
    let port_named = |name: &str| -> u64 {
        container["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("a container port named {name}"))
    };
    let proxy_port = u64::from(port_of(str_of(&config["listen"]["proxy"], "proxy")));
    let admin_port = u64::from(port_of(str_of(&config["listen"]["admin"], "admin")));
    assert_eq!(port_named("proxy"), proxy_port);
    assert_eq!(port_named("admin"), admin_port);

    // Probes go to the admin listener, at the paths of
    // `probe_paths_are_served_by_the_gateway`.
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        let port = &get["port"];
        let port = port
            .as_u64()
            .unwrap_or_else(|| port_named(str_of(port, "a probe's port")));
        assert_eq!(port, admin_port, "{probe} on the admin listener");
    }

    // Kubernetes waits longer than the preStop pause plus the drain.
    let pre_stop: u64 = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .and_then(|c| c.last())
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > pre_stop + shutdown_grace(&config),
        "terminationGracePeriodSeconds {grace} > preStop {pre_stop} + shutdown_grace"
    );

    // Two ClusterIP Services: the proxy, and the admin listener.
    let services = of_kind(&documents, "Service");
    let labels = &spec["selector"]["matchLabels"];
    let target = |service: &Value| -> (String, String) {
        assert_eq!(&service["spec"]["selector"], labels, "selects the pods");
        let ports = service["spec"]["ports"].as_sequence().expect("ports");
        assert_eq!(ports.len(), 1);
        (
            str_of(&service["spec"]["type"], "type").to_owned(),
            str_of(&ports[0]["targetPort"], "targetPort").to_owned(),
        )
    };
    assert_eq!(target(services[0]), ("ClusterIP".into(), "proxy".into()));
    assert_eq!(target(services[1]), ("ClusterIP".into(), "admin".into()));
    let budget = one(&documents, "PodDisruptionBudget");
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], labels);
}

#[test]
fn the_systemd_unit_serves_the_config_and_outwaits_the_drain() {
    let config = node_config();
    let unit = read("deploy/systemd/tollgate.service");
    let setting = |key: &str| -> Vec<&str> {
        unit.lines()
            .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .collect()
    };
    let exec_start = setting("ExecStart");
    assert_eq!(exec_start.len(), 1);
    let args: Vec<&str> = exec_start[0].split_whitespace().collect();
    assert!(
        args.windows(3)
            .any(|w| w == ["serve", "--config", CONFIG_PATH]),
        "{exec_start:?}"
    );
    // SIGHUP reloads (reload.rs); SIGTERM drains.
    assert_eq!(setting("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(setting("KillSignal"), ["SIGTERM"]);
    let stop = seconds(setting("TimeoutStopSec")[0]);
    assert!(stop > shutdown_grace(&config), "TimeoutStopSec {stop}s");
    // ./tollgate-data lands in the state directory.
    let state = setting("StateDirectory");
    assert_eq!(state.len(), 1);
    assert_eq!(
        setting("WorkingDirectory"),
        [format!("/var/lib/{}", state[0]).as_str()]
    );
    assert_eq!(setting("EnvironmentFile"), ["/etc/tollgate/tollgate.env"]);
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "DynamicUser=yes",
    ] {
        assert!(unit.lines().any(|l| l == hardening), "{hardening}");
    }

    // The env file example names every variable a node needs.
    let example = read("deploy/systemd/tollgate.env.example");
    let names: BTreeSet<String> = example
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(name, _)| name.trim().to_owned())
        .collect();
    assert_eq!(names, required_env_names(&config));
}

#[test]
fn the_container_image_runs_serve_on_the_node_config() {
    let config = node_config();
    let file = read("deploy/container/Containerfile");
    let instruction = |name: &str| -> Vec<&str> {
        file.lines()
            .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .collect()
    };
    let entrypoint: Vec<String> =
        serde_json::from_str(instruction("ENTRYPOINT")[0]).expect("ENTRYPOINT in exec form");
    assert_eq!(
        entrypoint[..4],
        ["/usr/local/bin/tollgate", "serve", "--config", CONFIG_PATH]
    );
    assert!(instruction("COPY")
        .iter()
        .any(|c| *c == format!("deploy/tollgate.yaml {CONFIG_PATH}")));
    let exposed: BTreeSet<u16> = instruction("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .map(|p| p.parse().expect("a port"))
        .collect();
    let listening: BTreeSet<u16> = ["proxy", "admin"]
        .iter()
        .map(|l| port_of(config["listen"][*l].as_str().unwrap()))
        .collect();
    assert_eq!(exposed, listening);
    assert!(instruction("USER").iter().all(|u| !u.starts_with("root")));
    assert_eq!(instruction("WORKDIR").last(), Some(&"/var/lib/tollgate"));
    // The health check calls the admin listener at a path it serves.
    let healthcheck = file
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK"))
        .nth(1)
        .expect("a HEALTHCHECK command");
    assert!(
        healthcheck.contains(&format!(
            "http://127.0.0.1:{}/healthz",
            port_of(config["listen"]["admin"].as_str().unwrap())
        )),
        "{healthcheck}"
    );
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l == "target/"));
}

/// The gateway, run with the deployment's node settings (its own loopback
/// ports and SQLite store instead of `listen` and `storage`), answers the
/// probes the manifests and the image use: 200 at /healthz and /readyz, and
/// /metrics for the scrape annotations.
#[tokio::test]
async fn probe_paths_are_served_by_the_gateway() {
    let mut config = node_config();
    let settings = config.as_mapping_mut().expect("a mapping");
    settings.remove("listen");
    settings.remove("storage");
    let yaml = serde_yaml::to_string(&config).unwrap();
    let gateway = common::gateway().config(&yaml).start().await;

    let deployment = manifests()
        .into_iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .expect("a Deployment");
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let mut paths: BTreeSet<String> = ["startupProbe", "readinessProbe", "livenessProbe"]
        .iter()
        .map(|p| str_of(&container[*p]["httpGet"]["path"], "a probe path").to_owned())
        .collect();
    paths.insert(
        str_of(
            &pod["metadata"]["annotations"]["prometheus.io/path"],
            "path",
        )
        .to_owned(),
    );
    assert_eq!(paths.len(), 3, "{paths:?}");
    let client = reqwest::Client::new();
    for path in &paths {
        let response = client
            .get(format!("{}{path}", gateway.admin_url()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(response.status(), 200, "GET {path}");
    }
}
