//! The nodes sharing a store: each node's heartbeat and `GET
//! /admin/v1/nodes`.
//!
//! Every [`HEARTBEAT_EVERY`] a node writes its row — name, version, proxy
//! address, the config revision it serves, its [`Health`] — from a
//! background task ([`heartbeat`]), never from a request path; a store
//! failure is logged and the next beat tries again. The node list flags a
//! node as
//!
//! - `silent` when its last heartbeat is more than [`SILENT_AFTER`] old
//!   (stopped, killed, cut off from the store), and
//! - `lagging` when it serves a revision older than the store's and has
//!   for more than [`LAG_GRACE`]: by its heartbeats since then, or, when
//!   the store moved after its last one, by how long it has not been heard
//!   from. A node normally catches up within milliseconds of a commit
//!   (see [`crate::control`]), well before its next heartbeat says so.
//!
//! After each beat the task counts the nodes that are not silent (this one
//! included, at least 1) into the `live_nodes` it was given: what limits
//! with `on_store_failure: local` divide by while Redis is down (see
//! `tollgate_policy::counters_cluster`), also the `tollgate_live_nodes`
//! gauge. A failed count keeps the last one.
//!
//! Rows of nodes silent for [`FORGET_AFTER`] are deleted (by any node's
//! heartbeat task), so that nodes named after short-lived hosts do not
//! pile up.
//!
//! Two live nodes given the same name share one row. The one that started
//! later, once it sees the other write the row between two of its own
//! heartbeats, logs a warning and stops writing it (repeating the warning
//! every minute) until the other goes silent; the earlier one logs one
//! warning and keeps its row. A node restarted under its name (a new
//! process) takes its row over at once: its previous run no longer writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::watch;
use tollgate_config::Config;
use tollgate_store::{NodeHeartbeat, NodeRecord, Store, StoreError};

use crate::api::{AdminApi, ApiError};
use crate::control::ControlPlane;

/// How often a node writes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// A node not heard from for longer is `silent`.
pub const SILENT_AFTER: Duration = Duration::from_secs(10);
/// A node behind the store's revision for longer is `lagging`.
pub const LAG_GRACE: Duration = Duration::from_secs(5);
/// Rows of nodes silent for longer are deleted.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How often a node that yielded its name to another says so again.
const REWARN_EVERY: Duration = Duration::from_secs(60);
/// Old rows are deleted every this many heartbeats (a minute).
const FORGET_EVERY_BEATS: u32 = 30;

/// What is wrong with this node, by component: reported in its heartbeat
/// (`degraded` with the details), `ok` when nothing is. Components set and
/// clear their own entry.
#[derive(Debug, Default)]
pub struct Health {
    problems: Mutex<BTreeMap<&'static str, String>>,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    /// Records what is wrong with `component`, replacing what it said before.
    pub fn set(&self, component: &'static str, detail: impl Into<String>) {
        self.lock().insert(component, detail.into());
    }

    /// `component` is fine again.
    pub fn clear(&self, component: &'static str) {
        self.lock().remove(component);
    }

    /// `None` when nothing is wrong; else every problem, as
    /// `component: detail`, joined by `; `.
    pub fn degraded(&self) -> Option<String> {
        let problems = self.lock();
        (!problems.is_empty()).then(|| {
            problems
                .iter()
                .map(|(component, detail)| format!("{component}: {detail}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        self.problems
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Who this node is, for its heartbeats.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    pub name: String,
    /// The proxy listen address, as configured.
    pub address: String,
    pub version: String,
    /// Unique per process start, and ordered by it: the start time in
    /// microseconds, then a random part, in fixed-width hex.
    pub instance: String,
    /// Unix seconds.
    pub started_at: i64,
}

impl NodeIdentity {
    /// `node.name` (default: [`hostname`]) and `listen.proxy`, started now.
    pub fn new(config: &Config) -> NodeIdentity {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        NodeIdentity {
            name: config.node.name.clone().unwrap_or_else(hostname),
            address: config.listen.proxy.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            instance: format!("{:016x}{:08x}", started.as_micros(), fastrand::u32(..)),
            started_at: i64::try_from(started.as_secs()).unwrap_or(i64::MAX),
        }
    }
}

/// The host's name (`gethostname`), else the `HOSTNAME` variable, else
/// `tollgate`.
pub fn hostname() -> String {
    whoami::hostname()
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "tollgate".to_string())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Writes this node's heartbeat every [`HEARTBEAT_EVERY`] until shutdown,
/// the first at once, and publishes the live node count into `live_nodes`.
pub async fn heartbeat(
    control: Arc<ControlPlane>,
    node: NodeIdentity,
    live_nodes: Arc<AtomicUsize>,
    mut shutdown: watch::Receiver<bool>,
) {
    tracing::info!(node = %node.name, instance = %node.instance, "node heartbeats started");
    let mut beats = Beats {
        node,
        wrote: false,
        yielded_since: None,
        failing: false,
        count: 0,
    };
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tick.tick() => {}
        }
        let store = control.store().clone();
        let revision = control.state().revision;
        let degraded = control.health().degraded();
        let mut moved = beats;
        let live = live_nodes.clone();
        let done = tokio::task::spawn_blocking(move || {
            moved.beat(&store, revision, degraded);
            match count_live(&store, unix_now()) {
                Ok(count) => {
                    live.store(count, Ordering::Relaxed);
                    metrics::gauge!("tollgate_live_nodes").set(count as f64);
                }
                Err(error) => tracing::debug!(%error, "cannot count the live nodes"),
            }
            moved
        })
        .await;
        beats = match done {
            Ok(beats) => beats,
            Err(error) => {
                tracing::error!(%error, "the heartbeat task failed");
                return;
            }
        };
    }
}

/// The heartbeat task's state between beats.
struct Beats {
    node: NodeIdentity,
    /// Whether this process has written the row (since it last took it).
    wrote: bool,
    /// Set while another live node of the same name keeps the row: when
    /// this node last warned about it.
    yielded_since: Option<Instant>,
    /// Whether the last beat failed (logged once per outage).
    failing: bool,
    count: u32,
}

impl Beats {
    fn beat(&mut self, store: &Store, revision: i64, degraded: Option<String>) {
        let now = unix_now();
        match self.try_beat(store, revision, degraded, now) {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!("node heartbeats written again");
            }
            Ok(()) => {}
            Err(error) if !self.failing => {
                self.failing = true;
                tracing::warn!(%error, "cannot write this node's heartbeat; retrying every {HEARTBEAT_EVERY:?}");
            }
            Err(error) => tracing::debug!(%error, "cannot write this node's heartbeat"),
        }
        self.count = self.count.wrapping_add(1);
        if self.count % FORGET_EVERY_BEATS == 1 {
            let before = now - secs(FORGET_AFTER);
            match store.forget_nodes(before) {
                Ok(0) => {}
                Ok(forgotten) => tracing::info!(forgotten, "forgot nodes silent for a day"),
                Err(error) => {
                    tracing::debug!(%error, "cannot delete the rows of long-silent nodes")
                }
            }
        }
    }

    fn try_beat(
        &mut self,
        store: &Store,
        revision: i64,
        degraded: Option<String>,
        now: i64,
    ) -> Result<(), StoreError> {
        let node = &self.node;
        let held_by_other = store
            .find_node(&node.name)?
            .filter(|row| row.instance != node.instance);
        match (held_by_other, self.yielded_since) {
            // Yielded to a node that still lives.
            (Some(other), Some(warned)) if !silent(&other, now) => {
                if warned.elapsed() >= REWARN_EVERY {
                    warn_yielding(node, &other);
                    self.yielded_since = Some(Instant::now());
                }
                return Ok(());
            }
            (_, Some(_)) => {
                tracing::info!(node = %node.name, "the other node of this name went silent: this node heartbeats under it now");
                self.yielded_since = None;
            }
            // Written by another process since this one's last heartbeat:
            // two live nodes have this name. (Before this process's first
            // write, the row may be its previous run's: no conclusion.)
            (Some(other), None) if self.wrote => {
                // The instance ids order nodes by start: the earlier keeps the name.
                if other.instance < node.instance {
                    warn_yielding(node, &other);
                    self.yielded_since = Some(Instant::now());
                    self.wrote = false;
                    return Ok(());
                }
                tracing::warn!(
                    node = %node.name,
                    other_address = %other.address,
                    other_started_at = other.started_at,
                    "another node started later under this node's name; it stops heartbeating \
                     while this one lives. Give every node its own node.name"
                );
            }
            _ => {}
        }
        let heartbeat = NodeHeartbeat {
            name: node.name.clone(),
            instance: node.instance.clone(),
            version: node.version.clone(),
            address: node.address.clone(),
            revision,
            degraded,
            started_at: node.started_at,
        };
        store.record_node(&heartbeat, now)?;
        self.wrote = true;
        Ok(())
    }
}

fn warn_yielding(node: &NodeIdentity, other: &NodeRecord) {
    tracing::warn!(
        node = %node.name,
        other_address = %other.address,
        other_started_at = other.started_at,
        "another live node, started earlier, has this node's name: this node does not \
         heartbeat (and is not in the node list) until that one goes silent. Give every \
         node its own node.name"
    );
}

fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// The nodes not silent at `now`, at least 1 (this one, even when its own
/// heartbeat could not be written).
fn count_live(store: &Store, now: i64) -> Result<usize, StoreError> {
    let nodes = store.list_nodes()?;
    Ok(nodes
        .iter()
        .filter(|node| !silent(node, now))
        .count()
        .max(1))
}

fn silent(node: &NodeRecord, now: i64) -> bool {
    now - node.last_seen > secs(SILENT_AFTER)
}

/// Whether `node` serves an older revision than `current` and has for
/// longer than [`LAG_GRACE`] (see the module docs).
fn lagging(node: &NodeRecord, current: i64, now: i64) -> bool {
    let behind_since = node.behind_since.unwrap_or(node.last_seen);
    node.revision < current && now - behind_since > secs(LAG_GRACE)
}

/// `GET /admin/v1/nodes`: every node's last heartbeat, flagged, with the
/// store's revision.
pub(crate) async fn list(
    State(api): State<AdminApi>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    if let Some(other) = params.keys().next() {
        return Err(ApiError::bad_request(format!(
            "unknown parameter `{other}`: this endpoint takes none"
        )));
    }
    let store = api.store.clone();
    let (nodes, revision) = crate::api::blocking(move || {
        Ok::<_, StoreError>((store.list_nodes()?, store.config_revision()?))
    })
    .await?;
    let now = unix_now();
    let items: Vec<Value> = nodes
        .iter()
        .map(|node| {
            json!({
                "name": node.name,
                "version": node.version,
                "address": node.address,
                "revision": node.revision,
                "health": node.health,
                "detail": node.detail,
                "started_at": node.started_at,
                "last_seen": node.last_seen,
                "lagging": lagging(node, revision, now),
                "silent": silent(node, now),
            })
        })
        .collect();
    Ok(Json(json!({ "items": items, "revision": revision })))
}

/// `GET /admin/v1/upstreams`: this node's view of the health of each
/// upstream target of the services the caller sees — healthy (the active
/// check) and ejected (the passive one).
pub async fn upstreams(
    axum::extract::State(api): axum::extract::State<crate::api::AdminApi>,
    axum::extract::Extension(principal): axum::extract::Extension<crate::authz::Principal>,
) -> axum::Json<serde_json::Value> {
    let config = api.control.config();
    let directory = crate::authz::Directory::new(&config);
    let items: Vec<serde_json::Value> = api
        .control
        .upstream_health()
        .into_iter()
        .filter(|t| directory.sees_service(&principal, &t.service))
        .map(|t| {
            serde_json::json!({
                "service": t.service,
                "target": t.url,
                "healthy": t.healthy,
                "ejected": t.ejected,
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "items": items }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(revision: i64, last_seen: i64, behind_since: Option<i64>) -> NodeRecord {
        NodeRecord {
            name: "gw".into(),
            instance: "i".into(),
            version: "0".into(),
            address: "127.0.0.1:8000".into(),
            revision,
            health: "ok".into(),
            detail: None,
            started_at: 0,
            last_seen,
            behind_since,
        }
    }

    #[test]
    fn silent_and_lagging_follow_the_documented_rules() {
        assert!(!silent(&row(1, 100, None), 110));
        assert!(silent(&row(1, 100, None), 111));

        // Up to date, or behind only since a recent heartbeat: not lagging.
        assert!(!lagging(&row(3, 100, None), 3, 200));
        assert!(!lagging(&row(2, 100, Some(98)), 3, 103));
        assert!(lagging(&row(2, 100, Some(98)), 3, 104));
        // Behind, and not heard from since: judged from its last heartbeat.
        assert!(!lagging(&row(2, 100, None), 3, 105));
        assert!(lagging(&row(2, 100, None), 3, 106));
    }

    #[test]
    fn health_lists_every_problem_until_cleared() {
        let health = Health::new();
        assert_eq!(health.degraded(), None);
        health.set("notifications", "connection refused");
        health.set("config", "revision 4 does not compile");
        assert_eq!(
            health.degraded().as_deref(),
            Some("config: revision 4 does not compile; notifications: connection refused")
        );
        health.clear("config");
        health.clear("notifications");
        assert_eq!(health.degraded(), None);
    }

    #[test]
    fn the_default_name_is_the_hosts() {
        let name = hostname();
        assert!(
            !name.is_empty() && !name.contains(char::is_whitespace),
            "{name:?}"
        );
        let config = Config::default();
        assert_eq!(NodeIdentity::new(&config).name, name);
        let named = tollgate_config::from_yaml("node: { name: gw-1 }").unwrap();
        let node = NodeIdentity::new(&named);
        assert_eq!(
            (node.name.as_str(), node.address.as_str()),
            ("gw-1", "127.0.0.1:8000")
        );
    }

    #[test]
    fn a_blank_or_odd_name_is_refused() {
        for yaml in [
            "node: { name: '' }",
            "node: { name: '  ' }",
            "node: { name: \"a\\nb\" }",
        ] {
            let errors = tollgate_config::from_yaml(yaml).unwrap_err();
            assert_eq!(errors[0].path, "node.name", "{yaml}: {errors:?}");
        }
        assert!(tollgate_config::from_yaml("node: { unknown: 1 }").is_err());
    }

    /// Two processes of one name: the later one yields the row to the
    /// earlier, and takes it once the earlier has gone silent.
    #[test]
    fn the_later_of_two_nodes_of_one_name_yields() {
        let store = Store::open("sqlite::memory:").unwrap();
        let identity = |instance: &str, started_at| NodeIdentity {
            name: "gw".into(),
            address: format!("{instance}:8000"),
            version: "0".into(),
            instance: instance.into(),
            started_at,
        };
        let beats = |node| Beats {
            node,
            wrote: false,
            yielded_since: None,
            failing: false,
            count: 0,
        };
        let (mut first, mut second) = (beats(identity("a", 10)), beats(identity("b", 20)));
        let holder = || store.find_node("gw").unwrap().unwrap().instance;
        first.try_beat(&store, 0, None, 100).unwrap();
        second.try_beat(&store, 0, None, 101).unwrap();
        assert_eq!(
            holder(),
            "b",
            "a first write takes the row: it may be a restart"
        );
        first.try_beat(&store, 0, None, 102).unwrap();
        assert!(
            first.yielded_since.is_none(),
            "the earlier node keeps its row"
        );
        second.try_beat(&store, 0, None, 103).unwrap();
        assert!(second.yielded_since.is_some(), "the later node yields");
        assert_eq!(holder(), "a", "and does not write");
        first.try_beat(&store, 0, None, 104).unwrap();
        second.try_beat(&store, 0, None, 105).unwrap();
        assert_eq!(holder(), "a", "a yielded node writes nothing");

        // `a` dies; once silent, `b` takes the row and keeps it.
        second.try_beat(&store, 0, None, 114).unwrap();
        assert_eq!(holder(), "a");
        second.try_beat(&store, 0, None, 115).unwrap();
        assert_eq!(holder(), "b");
        assert!(second.yielded_since.is_none());
        second.try_beat(&store, 0, None, 117).unwrap();
        assert_eq!(holder(), "b");
    }
}
