//! The real `tollgate` binary, started as a process on free loopback ports.
//!
//! The builder takes the test's YAML (resources and settings), adds what the
//! process needs to run in isolation — `listen` on free ports, `storage` and
//! `access_log` in a temporary directory it owns — and starts
//! `tollgate serve --config FILE`, waiting until the admin listener's
//! `/readyz` answers 200. Keys the test's YAML sets are kept: the generated
//! values only fill what is missing, mapping by mapping (so a test may set
//! `listen: { tls: { redirect_http: true } }` and still get generated ports).
//!
//! stdout and stderr go to files in that directory; [`Gateway::logs`] reads
//! them, and they are printed when a test panics while the gateway is alive.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::Location;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_yaml::{Mapping, Value};
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::port;
use crate::tls::TlsFiles;

/// How long [`GatewayBuilder::start`] waits for `/readyz` unless told otherwise.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// How many times [`GatewayBuilder::start`] tries when a chosen port was taken.
pub const START_ATTEMPTS: u32 = 3;

/// Why a gateway did not become ready.
enum NotReady {
    Exited(ExitStatus),
    /// The last thing `/readyz` said.
    Timeout(String),
}

/// Configures and starts a [`Gateway`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `.start().await`"]
pub struct GatewayBuilder {
    bin: PathBuf,
    config: String,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    certificates: Vec<TlsFiles>,
    ready_timeout: Duration,
}

/// The binary, arguments and environment of a gateway process.
#[derive(Clone, Debug)]
struct Launch {
    bin: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

impl Launch {
    /// `tollgate serve --config FILE …`, output appended to the log files.
    fn spawn(&self, config_path: &Path, stdout_path: &Path, stderr_path: &Path) -> Child {
        let open = |path: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        };
        // Node-local files a configuration leaves relative (`./tollgate-data`
        // next to a PostgreSQL store) land in the test's directory, not the
        // source tree.
        let mut command = Command::new(&self.bin);
        if let Some(dir) = config_path.parent() {
            command.current_dir(dir);
        }
        command
            .arg("serve")
            .arg("--config")
            .arg(config_path)
            .args(&self.args)
            .env("RUST_BACKTRACE", "1")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(open(stdout_path))
            .stderr(open(stderr_path))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} failed: {e}", self.bin.display()))
    }
}

/// A running gateway process; killed when dropped.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    pid: u32,
    exit: Option<ExitStatus>,
    /// The generated `listen`/`storage`/`access_log`, reapplied by [`Gateway::write_config`].
    generated: Mapping,
    proxy: SocketAddr,
    admin: SocketAddr,
    tls: Option<SocketAddr>,
    access_log: Option<PathBuf>,
    config_path: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    _certificates: Vec<TlsFiles>,
    /// What started the process, to start it again ([`Gateway::restart`]).
    launch: Launch,
    // Last, so the files outlive everything that may still read them.
    dir: TempDir,
}

impl Gateway {
    /// A builder for the binary at `bin`; tests pass `env!("CARGO_BIN_EXE_tollgate")`.
    pub fn builder(bin: impl AsRef<Path>) -> GatewayBuilder {
        GatewayBuilder {
            bin: bin.as_ref().to_owned(),
            config: String::new(),
            args: Vec::new(),
            envs: Vec::new(),
            certificates: Vec::new(),
            ready_timeout: READY_TIMEOUT,
        }
    }
}

impl GatewayBuilder {
    /// The test's YAML: resources (`services:`, `apis:` …) and settings.
    pub fn config(mut self, yaml: &str) -> Self {
        self.config = yaml.to_owned();
        self
    }

    /// An extra command-line argument after `serve --config FILE`.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Extra command-line arguments after `serve --config FILE`.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable for the process (it also inherits the test's).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Serves TLS on a free port with this certificate; call again to add more
    /// certificates (selected by SNI). Generates `listen.tls.addr` and
    /// `listen.tls.certificates` unless the test's YAML sets them.
    pub fn tls(mut self, files: &TlsFiles) -> Self {
        self.certificates.push(files.clone());
        self
    }

    /// How long to wait for `/readyz` (default [`READY_TIMEOUT`]).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Writes the config, spawns the process and waits until `/readyz` answers
    /// 200. Panics, with the process's output, if it exits or is not ready in time.
    ///
    /// Free ports are chosen before the process binds them, so a test running
    /// beside it may take one in between; a gateway that exits for that reason
    /// is started again, on new ports (up to [`START_ATTEMPTS`] times).
    pub async fn start(self) -> Gateway {
        let ready_timeout = self.ready_timeout;
        for attempt in 1.. {
            let mut gateway = self.clone().spawn();
            match gateway.wait_ready(ready_timeout).await {
                Ok(()) => return gateway,
                Err(NotReady::Exited(_))
                    if attempt < START_ATTEMPTS
                        && gateway.stderr().contains("Address already in use") =>
                {
                    continue
                }
                Err(NotReady::Exited(status)) => panic!(
                    "the gateway exited with {status} before it was ready\n{}",
                    gateway.logs()
                ),
                Err(NotReady::Timeout(last)) => panic!(
                    "the gateway was not ready within {ready_timeout:?} ({last})\n{}",
                    gateway.logs()
                ),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Writes the config and spawns the process without waiting for it to be
    /// ready: for a gateway expected to refuse its config and exit (see
    /// [`Gateway::wait_exit`] and [`Gateway::stderr`]). Call inside a tokio runtime.
    pub fn spawn(self) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-test-")
            .tempdir()
            .expect("create a temporary directory");
        let generated = self.generated(dir.path());
        let config = merged(&self.config, &generated);
        let effective = Effective::read(&config);
        let config_path = dir.path().join("tollgate.yaml");
        write_atomically(&config_path, &config);

        let stdout_path = dir.path().join("stdout.log");
        let stderr_path = dir.path().join("stderr.log");
        File::create(&stdout_path).expect("create stdout.log");
        File::create(&stderr_path).expect("create stderr.log");
        let launch = Launch {
            bin: self.bin.clone(),
            args: self.args.clone(),
            envs: self.envs.clone(),
        };
        let child = launch.spawn(&config_path, &stdout_path, &stderr_path);
        let pid = child.id().expect("a just-spawned child has a pid");

        Gateway {
            child,
            pid,
            exit: None,
            generated,
            proxy: effective.proxy,
            admin: effective.admin,
            tls: effective.tls,
            access_log: effective.access_log,
            config_path,
            stdout_path,
            stderr_path,
            _certificates: self.certificates,
            launch,
            dir,
        }
    }

    fn generated(&self, dir: &Path) -> Mapping {
        let addrs = port::free_addrs(3);
        let mut listen = Mapping::new();
        listen.insert("proxy".into(), addrs[0].to_string().into());
        listen.insert("admin".into(), addrs[1].to_string().into());
        if !self.certificates.is_empty() {
            let certificates = self
                .certificates
                .iter()
                .map(|files| {
                    let mut pair = Mapping::new();
                    pair.insert("cert".into(), path_value(&files.cert_pem_path));
                    pair.insert("key".into(), path_value(&files.key_pem_path));
                    Value::Mapping(pair)
                })
                .collect();
            let mut tls = Mapping::new();
            tls.insert("addr".into(), addrs[2].to_string().into());
            tls.insert("certificates".into(), Value::Sequence(certificates));
            listen.insert("tls".into(), Value::Mapping(tls));
        }
        let mut storage = Mapping::new();
        storage.insert(
            "database".into(),
            format!("sqlite://{}", dir.join("tollgate.db").display()).into(),
        );
        let mut access_log = Mapping::new();
        access_log.insert("file".into(), path_value(&dir.join("access.jsonl")));

        let mut generated = Mapping::new();
        generated.insert("listen".into(), Value::Mapping(listen));
        generated.insert("storage".into(), Value::Mapping(storage));
        generated.insert("access_log".into(), Value::Mapping(access_log));
        generated
    }
}

impl Gateway {
    /// `http://ADDR` of the plain proxy listener.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    /// `proxy_url()` followed by `path_and_query` (which starts with `/`).
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.proxy)
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy
    }

    /// `http://ADDR` of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The TLS listener's address. Panics if the gateway serves no TLS.
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls
            .expect("this gateway has no TLS listener (use GatewayBuilder::tls)")
    }

    /// The config file the process was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The temporary directory holding the config, database, logs and access log;
    /// tests may put their own files there.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Rewrites the config file with new YAML, with the same generated
    /// `listen`/`storage`/`access_log` filled in (atomically, by rename). The
    /// process reads it on [`Gateway::sighup`].
    pub fn write_config(&self, yaml: &str) {
        write_atomically(&self.config_path, &merged(yaml, &self.generated));
    }

    /// Sends SIGHUP (reload the config file).
    pub fn sighup(&self) {
        self.signal("HUP");
    }

    /// Sends SIGTERM (drain and exit).
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("running kill -{name} failed: {e}"));
        assert!(
            status.success(),
            "kill -{name} {} failed ({status}); has the process exited?",
            self.pid
        );
    }

    /// Kills the process with SIGKILL — a crash: no drain, no flush — and
    /// waits for it to be gone.
    pub async fn kill(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.start_kill();
            self.exit = self.child.wait().await.ok();
        }
    }

    /// Starts the process again (after it exited, or was [`Gateway::kill`]ed)
    /// on the same directory, config file and ports, with the same
    /// arguments and environment plus `extra_envs`, and waits until it is ready.
    pub async fn restart(&mut self, extra_envs: &[(&str, &str)]) {
        self.kill().await;
        let mut launch = self.launch.clone();
        launch
            .envs
            .extend(extra_envs.iter().map(|(k, v)| (k.into(), v.into())));
        self.child = launch.spawn(&self.config_path, &self.stdout_path, &self.stderr_path);
        self.pid = self.child.id().expect("a just-spawned child has a pid");
        self.exit = None;
        if let Err(error) = self.wait_ready(READY_TIMEOUT).await {
            let why = match error {
                NotReady::Exited(status) => format!("exited with {status}"),
                NotReady::Timeout(last) => format!("not ready ({last})"),
            };
            panic!("the restarted gateway {why}\n{}", self.logs());
        }
    }

    /// Waits for the process to exit. Panics, with its output, after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.exit = Some(status);
                status
            }
            Ok(Err(e)) => panic!("waiting for the gateway failed: {e}"),
            Err(_) => panic!(
                "the gateway did not exit within {timeout:?}\n{}",
                self.logs()
            ),
        }
    }

    /// The process's stdout and stderr so far, each under a heading.
    pub fn logs(&self) -> String {
        format!(
            "----- gateway stdout ({}) -----\n{}\n----- gateway stderr -----\n{}",
            self.stdout_path.display(),
            self.stdout(),
            self.stderr(),
        )
    }

    /// What the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// What the process wrote to stderr so far: its log lines.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// A client for the gateway: no proxy, no automatic redirects.
    pub fn client(&self) -> reqwest::Client {
        plain_client()
    }

    /// The admin listener's `GET /metrics` text.
    pub async fn metrics(&self) -> String {
        let res = plain_client()
            .get(format!("{}/metrics", self.admin_url()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /metrics failed: {e}\n{}", self.logs()));
        res.text().await.expect("read the /metrics body")
    }

    /// The access log's complete lines, parsed (a line still being written is
    /// left out). Empty while the file does not exist; panics on a line that is
    /// not JSON.
    pub async fn access_records(&self) -> Vec<serde_json::Value> {
        let Some(path) = &self.access_log else {
            panic!("this gateway's config has no access_log.file");
        };
        let text = match tokio::fs::read_to_string(path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("reading {} failed: {e}", path.display()),
        };
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        complete
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// Polls the access log until it has at least `n` records and returns them
    /// all; panics, with the records so far and the output, after `deadline`.
    #[track_caller]
    pub fn wait_for_records(
        &self,
        n: usize,
        deadline: Duration,
    ) -> impl Future<Output = Vec<serde_json::Value>> + '_ {
        let caller = Location::caller();
        async move {
            let until = Instant::now() + deadline;
            loop {
                let records = self.access_records().await;
                if records.len() >= n {
                    return records;
                }
                if Instant::now() >= until {
                    panic!(
                        "{caller}: wanted {n} access records within {deadline:?}, got {}: {records:#?}\n{}",
                        records.len(),
                        self.logs()
                    );
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), NotReady> {
        let client = plain_client();
        let url = format!("{}/readyz", self.admin_url());
        let until = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
                return Err(NotReady::Exited(status));
            }
            let last = match client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
            {
                Ok(res) if res.status() == reqwest::StatusCode::OK => return Ok(()),
                Ok(res) => format!("/readyz answered {}", res.status()),
                Err(e) => format!("/readyz failed: {e}"),
            };
            if Instant::now() >= until {
                return Err(NotReady::Timeout(last));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "config {}:\n{}\n{}",
                self.config_path.display(),
                std::fs::read_to_string(&self.config_path).unwrap_or_default(),
                self.logs()
            );
        }
        if self.exit.is_none() {
            let _ = self.child.start_kill();
        }
    }
}

/// The addresses and paths the process will actually use.
struct Effective {
    proxy: SocketAddr,
    admin: SocketAddr,
    tls: Option<SocketAddr>,
    access_log: Option<PathBuf>,
}

impl Effective {
    fn read(config: &Mapping) -> Effective {
        let listen = config.get("listen");
        let addr = |key: &str| listen.and_then(|l| l.get(key)).map(|v| socket_addr(key, v));
        Effective {
            proxy: addr("proxy").expect("listen.proxy is generated unless the test sets it"),
            admin: addr("admin").expect("listen.admin is generated unless the test sets it"),
            tls: listen
                .and_then(|l| l.get("tls"))
                .and_then(|tls| tls.get("addr"))
                .map(|v| socket_addr("tls.addr", v)),
            access_log: config
                .get("access_log")
                .and_then(|a| a.get("file"))
                .and_then(Value::as_str)
                .map(PathBuf::from),
        }
    }
}

/// Parses an address from the config; an unspecified IP (`0.0.0.0`) becomes loopback.
fn socket_addr(key: &str, value: &Value) -> SocketAddr {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("listen.{key} is not a string: {value:?}"));
    let mut addr: SocketAddr = text
        .parse()
        .unwrap_or_else(|e| panic!("listen.{key} {text:?} is not an address: {e}"));
    if addr.ip().is_unspecified() {
        addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    addr
}

/// The test's YAML with `generated` filling the keys it does not set.
fn merged(yaml: &str, generated: &Mapping) -> Mapping {
    let test = match serde_yaml::from_str::<Value>(yaml) {
        Ok(Value::Mapping(m)) => m,
        Ok(Value::Null) => Mapping::new(),
        Ok(other) => panic!("the test's config is not a YAML mapping: {other:?}"),
        Err(e) => panic!("the test's config is not valid YAML: {e}\n{yaml}"),
    };
    fill_missing(test, generated)
}

fn fill_missing(mut target: Mapping, defaults: &Mapping) -> Mapping {
    for (key, default) in defaults {
        match (target.get_mut(key), default) {
            (None, _) => {
                target.insert(key.clone(), default.clone());
            }
            (Some(Value::Mapping(set)), Value::Mapping(default)) => {
                *set = fill_missing(std::mem::take(set), default);
            }
            (Some(_), _) => {}
        }
    }
    target
}

fn write_atomically(path: &Path, config: &Mapping) {
    let text = serde_yaml::to_string(config).expect("a YAML mapping serializes");
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {} failed: {e}", tmp.display()));
    std::fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("renaming to {} failed: {e}", path.display()));
}

fn path_value(path: &Path) -> Value {
    Value::String(path.display().to_string())
}

fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("build a reqwest client")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Mapping {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn generated_keys_fill_only_what_the_test_leaves_out() {
        let generated = yaml(
            "listen: { proxy: '127.0.0.1:1', admin: '127.0.0.1:2' }\n\
             storage: { database: 'sqlite:///t/db' }\n\
             access_log: { file: /t/a.jsonl }",
        );
        let config = merged(
            "listen: { admin: '0.0.0.0:9' }\naccess_log: { buffer: 5 }\nservices: []",
            &generated,
        );
        assert_eq!(
            config,
            yaml(
                "listen: { admin: '0.0.0.0:9', proxy: '127.0.0.1:1' }\n\
                 access_log: { buffer: 5, file: /t/a.jsonl }\n\
                 services: []\n\
                 storage: { database: 'sqlite:///t/db' }"
            )
        );
        let effective = Effective::read(&config);
        assert_eq!(effective.admin, "127.0.0.1:9".parse().unwrap());
        assert_eq!(effective.proxy, "127.0.0.1:1".parse().unwrap());
        assert_eq!(effective.tls, None);
        assert_eq!(effective.access_log, Some(PathBuf::from("/t/a.jsonl")));
    }

    #[test]
    fn an_empty_test_config_gets_everything_generated() {
        let builder = Gateway::builder("/bin/true").tls(&crate::tls::self_signed(&["localhost"]));
        let generated = builder.generated(Path::new("/t"));
        let config = merged("", &generated);
        assert_eq!(config, generated);
        let effective = Effective::read(&config);
        assert!(effective.tls.is_some());
        assert_ne!(effective.proxy, effective.admin);
        assert_eq!(
            config["storage"]["database"].as_str(),
            Some("sqlite:///t/tollgate.db")
        );
    }
}
