//! A Redis server of the test's own, on a free loopback port, with nothing
//! saved to disk; killed when dropped.
//!
//! ```no_run
//! use tollgate_testkit::redis_server::RedisServer;
//! let Some(mut redis) = RedisServer::start() else { return }; // skipped: no redis-server
//! // point the gateway's `storage.redis` at redis.url() …
//! redis.stop();        // an outage: the port refuses connections
//! redis.start_again(); // the same port, empty
//! ```
//!
//! The binary is `redis-server` from `PATH`, or the one
//! `TOLLGATE_TEST_REDIS_SERVER` names. Without one, [`RedisServer::start`]
//! prints why and returns `None`, so the test skips — unless `CI` is set,
//! where a missing server is a failure, not a reason to skip.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::panic::Location;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::port;

/// The variable naming the `redis-server` binary tests use.
pub const REDIS_SERVER_ENV: &str = "TOLLGATE_TEST_REDIS_SERVER";

/// How long a server may take to answer `PING` after it is spawned.
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// A running `redis-server`; killed (and waited for) on drop.
pub struct RedisServer {
    binary: PathBuf,
    addr: SocketAddr,
    /// `None` while stopped.
    child: Option<Child>,
    /// The server's working directory and log file.
    dir: tempfile::TempDir,
    /// Added to the command line (a cluster node's settings, TLS).
    extra_args: Vec<String>,
    /// The TLS port, when started with [`start_tls`](Self::start_tls).
    tls_addr: Option<SocketAddr>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`, or
    /// returns `None` after printing why when there is no `redis-server`
    /// (panics instead when `CI` is set). The message names the caller.
    #[track_caller]
    pub fn start() -> Option<RedisServer> {
        Self::start_with(Vec::new())
    }

    /// [`start`](Self::start) with `extra_args` on the command line.
    #[track_caller]
    fn start_with(extra_args: Vec<String>) -> Option<RedisServer> {
        let caller = Location::caller();
        let binary = std::env::var_os(REDIS_SERVER_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("redis-server"));
        let mut server = RedisServer {
            binary,
            addr: port::free_addr(),
            child: None,
            dir: tempfile::tempdir().expect("a temporary directory"),
            extra_args,
            tls_addr: None,
        };
        match server.spawn() {
            Ok(()) => {}
            Err(error) if std::env::var_os("CI").is_some() => panic!(
                "{caller}: {} is required in CI: {error}",
                server.binary.display()
            ),
            Err(error) => {
                eprintln!(
                    "skipping the test at {caller}: cannot run {} ({error}); \
                     install Redis or set {REDIS_SERVER_ENV}",
                    server.binary.display()
                );
                return None;
            }
        }
        // The port was free when picked; another process may take it before
        // the server binds it. Then try another.
        for _ in 0..3 {
            match server.wait_ready() {
                Ok(()) => return Some(server),
                Err(_) => {
                    server.stop();
                    server.addr = port::free_addr();
                    server
                        .spawn()
                        .unwrap_or_else(|e| panic!("cannot run redis-server again: {e}"));
                }
            }
        }
        server
            .wait_ready()
            .unwrap_or_else(|message| panic!("{message}"));
        Some(server)
    }

    /// A server that also listens with TLS (`rediss://`), presenting the
    /// certificate and key at `cert` and `key` (PEM), clients not asked for
    /// one; its plain port stays open for readiness and
    /// [`command`](Self::command). `None` as [`start`](Self::start), or when
    /// this `redis-server` was built without TLS.
    #[track_caller]
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Option<RedisServer> {
        let tls_addr = port::free_addr();
        let mut server = Self::start_with(vec![
            "--tls-port".into(),
            tls_addr.port().to_string(),
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-ca-cert-file".into(),
            cert.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ])?;
        server.tls_addr = Some(tls_addr);
        Some(server)
    }

    /// `rediss://localhost:PORT` for a server started with
    /// [`start_tls`](Self::start_tls).
    pub fn tls_url(&self) -> String {
        let addr = self.tls_addr.expect("started with start_tls");
        format!("rediss://localhost:{}", addr.port())
    }

    /// `redis://127.0.0.1:PORT`, as `storage.redis` takes it.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// The address it listens on (for a [`crate::fault_proxy`] in front).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Kills the server: connections drop and the port refuses new ones
    /// until [`start_again`](Self::start_again). Everything it held is lost.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts an empty server on the same port again and waits until it
    /// answers `PING`.
    pub fn start_again(&mut self) {
        self.stop();
        self.spawn()
            .unwrap_or_else(|error| panic!("cannot run {} again: {error}", self.binary.display()));
        self.wait_ready()
            .unwrap_or_else(|message| panic!("{message}"));
    }

    /// Sends one command (`["GET", "tollgate:k"]`) and returns its reply as
    /// text: a string or an integer as it is, nil as `""`, an error with its
    /// leading `-`, an array's elements one per line. For looking at what a
    /// gateway wrote.
    pub fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(self.addr)
            .unwrap_or_else(|e| panic!("cannot connect to redis-server on {}: {e}", self.addr));
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream
            .write_all(request.as_bytes())
            .expect("send a command to redis-server");
        read_reply(&mut BufReader::new(stream))
    }

    /// The server's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let child = Command::new(&self.binary)
            .arg("--port")
            .arg(self.addr.port().to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--databases", "1"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls `PING` until `+PONG`; the server's log if it exits or stays
    /// silent past the deadline.
    fn wait_ready(&mut self) -> Result<(), String> {
        let until = Instant::now() + READY_DEADLINE;
        loop {
            if ping(self.addr) {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(format!(
                    "redis-server on {} exited with {status}:\n{}",
                    self.addr,
                    self.logs()
                ));
            }
            if Instant::now() >= until {
                return Err(format!(
                    "redis-server on {} did not answer PING within {READY_DEADLINE:?}:\n{}",
                    self.addr,
                    self.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of the test's own: three primaries on free loopback
/// ports, the 16384 slots split between them; killed when dropped.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the three nodes, assigns the slots, introduces the nodes to
    /// one another and waits until each says `cluster_state:ok`; `None`
    /// (after printing why) as [`RedisServer::start`].
    #[track_caller]
    pub fn start() -> Option<RedisCluster> {
        let mut nodes = Vec::new();
        let mut bus_ports = Vec::new();
        for _ in 0..3 {
            let bus_port = port::free_addr().port().to_string();
            bus_ports.push(bus_port.clone());
            nodes.push(RedisServer::start_with(vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                "nodes.conf".into(),
                "--cluster-node-timeout".into(),
                "2000".into(),
                "--cluster-port".into(),
                bus_port,
            ])?);
        }
        let ranges = [(0, 5460), (5461, 10922), (10923, 16383)];
        for (node, (first, last)) in nodes.iter().zip(ranges) {
            let (first, last) = (first.to_string(), last.to_string());
            let answer = node.command(&["CLUSTER", "ADDSLOTSRANGE", &first, &last]);
            assert_eq!(answer, "OK", "CLUSTER ADDSLOTSRANGE: {answer}");
        }
        for (other, bus_port) in nodes[1..].iter().zip(&bus_ports[1..]) {
            let port = other.addr().port().to_string();
            let answer = nodes[0].command(&["CLUSTER", "MEET", "127.0.0.1", &port, bus_port]);
            assert_eq!(answer, "OK", "CLUSTER MEET: {answer}");
        }
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = nodes.iter().all(|node| {
                node.command(&["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
                    && node
                        .command(&["CLUSTER", "NODES"])
                        .lines()
                        .filter(|line| line.contains("connected"))
                        .count()
                        == 3
            });
            if ready {
                return Some(RedisCluster { nodes });
            }
            assert!(
                Instant::now() < until,
                "the Redis Cluster did not form: {}",
                nodes[0].command(&["CLUSTER", "INFO"])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every node's URL, comma-separated: how `storage.redis` names a
    /// cluster.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The keys matching `pattern` on every node, one per line.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|node| {
                node.command(&["KEYS", pattern])
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .filter(|key| !key.is_empty())
            .collect()
    }
}

/// Whether a server on `addr` answers `PING` with `+PONG`.
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut answer = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && &answer == b"+PONG\r\n"
}

/// One RESP reply, as [`RedisServer::command`] renders it.
fn read_reply(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .expect("a reply from redis-server");
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(1.min(line.len()));
    match kind {
        "+" | ":" => rest.to_owned(),
        "-" => line.to_owned(),
        "$" if rest == "-1" => String::new(),
        "$" => {
            let len: usize = rest.parse().expect("a bulk string length");
            let mut bulk = vec![0; len + 2];
            reader.read_exact(&mut bulk).expect("a bulk string");
            bulk.truncate(len);
            String::from_utf8_lossy(&bulk).into_owned()
        }
        "*" if rest == "-1" => String::new(),
        "*" => {
            let count: usize = rest.parse().expect("an array length");
            let items: Vec<String> = (0..count).map(|_| read_reply(reader)).collect();
            items.join("\n")
        }
        _ => panic!("not a RESP reply: {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_starts_stops_and_starts_again_on_its_port() {
        let Some(mut redis) = RedisServer::start() else {
            return;
        };
        assert!(redis.url().starts_with("redis://127.0.0.1:"));
        assert!(ping(redis.addr()));
        redis.stop();
        assert!(!ping(redis.addr()));
        redis.start_again();
        assert!(ping(redis.addr()));
        assert_eq!(redis.command(&["SET", "k", "v 1"]), "OK");
        assert_eq!(redis.command(&["GET", "k"]), "v 1");
        assert_eq!(redis.command(&["GET", "none"]), "");
        assert_eq!(redis.command(&["INCRBY", "n", "5"]), "5");
        let mut keys: Vec<String> = redis
            .command(&["KEYS", "*"])
            .lines()
            .map(String::from)
            .collect();
        keys.sort();
        assert_eq!(keys, ["k", "n"]);
        assert!(redis.command(&["NOPE"]).starts_with("-ERR"));
    }
}
