//! The control plane's write path: every change to the configuration's
//! resources — from the admin API, `tollgate apply`, or the configuration
//! file — goes through [`ControlPlane::write`], which
//!
//! 1. applies the edits to the resources of the revision it last loaded,
//! 2. assembles them with the node's settings and validates the whole,
//! 3. compiles the data plane's next snapshot (what could fail, fails here),
//! 4. commits the edits and their audit entries in one store transaction,
//!    which bumps the config revision, and only then
//! 5. swaps the compiled snapshot in.
//!
//! A change that fails 2 or 3 is refused whole and the old snapshot keeps
//! serving; a crash before 4 completes loses only the uncommitted change.
//! Writes are serialised by one lock; a commit that finds the revision
//! moved (another node, or a file sync) reloads and plans again.
//!
//! [`ControlPlane::follow`] brings changes made by others (other nodes
//! sharing the database) to this node's data plane. On PostgreSQL every
//! commit notifies the channel `tollgate_config` and each node listens on a
//! connection of its own (see [`tollgate_store::ConfigListener`]): a change
//! is served by every node a few milliseconds after its commit. The
//! store's revision is also polled every [`FOLLOW_INTERVAL`], as a safety
//! net: while the listening connection is down (a notification sent then
//! is lost), and in case a notification never arrives. The poll stays at
//! one second even with notifications: it is one single-row read per node
//! per second, and it keeps the one-second bound without trusting the
//! listener. SQLite has no notifications (and one node): polling only.
//!
//! After every configuration it installs, the control plane writes the
//! resources and their revision to the node's snapshot cache (see
//! [`tollgate_store::snapshot_cache`]), off the request path. A node that
//! starts while its database is unreachable serves that cache: its control
//! plane is then [`ControlPlane::store_down`] — writes are refused with
//! [`WriteError::Unavailable`] — until [`ControlPlane::store_up`], after
//! which following catches it up to the store's revision.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;
use tollgate_config::resources::{self, Kind};
use tollgate_config::{Config, ConfigError};
use tollgate_proxy::DataPlane;
use tollgate_store::sealing::Sealer;
use tollgate_store::snapshot_cache::SnapshotCache;
use tollgate_store::{
    AuditEntry, ConfigEvent, ConfigListener, ConfigState, Expect, Origin, ResourceWrite, Store,
    StoreError,
};

use crate::api::redact;
use crate::nodes::Health;

/// How often [`ControlPlane::follow`] polls for other writers' changes
/// (besides waking at once on PostgreSQL's notifications).
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);
/// The [`Health`] component of serving the store's revision.
const CONFIG_HEALTH: &str = "config";
/// The [`Health`] component of listening for config notifications.
const LISTENER_HEALTH: &str = "config_notifications";
/// The [`Health`] component of serving the snapshot cache for want of the store.
const CACHE_HEALTH: &str = "snapshot_cache";

/// Who makes a change, for the audit log.
#[derive(Clone, Debug)]
pub struct Actor {
    pub name: String,
    pub client_ip: Option<String>,
}

/// One resource created, replaced or deleted (no body).
#[derive(Clone, Debug)]
pub struct Edit {
    pub kind: Kind,
    pub name: String,
    pub body: Option<Value>,
    pub expect: Expect,
    pub origin: Origin,
    /// The audit log's verb: `create`, `update`, `delete`, `approve` …;
    /// `None` derives create/update/delete from what the edit does.
    pub action: Option<String>,
}

impl Edit {
    pub fn put(kind: Kind, name: impl Into<String>, body: Value, expect: Expect) -> Edit {
        Edit {
            kind,
            name: name.into(),
            body: Some(body),
            expect,
            origin: Origin::Admin,
            action: None,
        }
    }

    pub fn delete(kind: Kind, name: impl Into<String>, expect: Expect) -> Edit {
        Edit {
            kind,
            name: name.into(),
            body: None,
            expect,
            origin: Origin::Admin,
            action: None,
        }
    }

    pub fn with_action(mut self, action: &str) -> Edit {
        self.action = Some(action.to_string());
        self
    }

    pub fn from_file(mut self) -> Edit {
        self.origin = Origin::File;
        self
    }
}

/// What a write changed, one line per resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub action: String,
    pub kind: String,
    pub name: String,
}

/// A write's result.
#[derive(Clone, Debug, Serialize)]
pub struct Committed {
    /// The config revision now served (unchanged when nothing changed or on a dry run).
    pub revision: i64,
    pub changes: Vec<Change>,
    pub dry_run: bool,
}

/// Why a write was refused.
#[derive(Debug)]
pub enum WriteError {
    NotFound {
        kind: Kind,
        name: String,
    },
    Exists {
        kind: Kind,
        name: String,
    },
    /// `If-Match` named another revision than the resource's.
    Conflict {
        kind: Kind,
        name: String,
        revision: i64,
    },
    /// The resulting configuration does not validate or compile.
    Invalid(Vec<ConfigError>),
    /// The writer may not make this change (see [`crate::authz`]).
    Forbidden(String),
    /// The store cannot be reached: nothing was changed; try again later.
    Unavailable(String),
    Internal(String),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::NotFound { kind, name } => write!(f, "no {kind} named `{name}`"),
            WriteError::Exists { kind, name } => write!(f, "{kind}/{name} already exists"),
            WriteError::Conflict {
                kind,
                name,
                revision,
            } => write!(
                f,
                "{kind}/{name} changed: it is at revision {revision} (its ETag is \"{revision}\")"
            ),
            WriteError::Invalid(errors) => {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                write!(f, "invalid configuration: {}", lines.join("; "))
            }
            WriteError::Forbidden(message)
            | WriteError::Unavailable(message)
            | WriteError::Internal(message) => f.write_str(message),
        }
    }
}

/// The edits applied to a state, checked: what to commit and what to serve.
pub struct Plan {
    pub config: Config,
    pub writes: Vec<ResourceWrite>,
    pub audit: Vec<AuditEntry>,
    pub changes: Vec<Change>,
}

/// Applies `edits` to `state`'s resources and assembles the result with
/// `node`'s settings. Pure: checks expectations against `state` and
/// validates; compiling is the caller's next step.
pub fn plan(
    node: &Config,
    state: &ConfigState,
    edits: &[Edit],
    actor: &Actor,
) -> Result<Plan, WriteError> {
    // Borrowed: only the edited bodies are copied (copying a thousand
    // resources' JSON on every write was a third of its time).
    let mut list: Vec<(Kind, &str, Cow<'_, Value>, i64)> = state
        .resources
        .iter()
        .filter_map(|r| {
            Some((
                Kind::parse(&r.kind)?,
                r.name.as_str(),
                Cow::Borrowed(&r.body),
                r.revision,
            ))
        })
        .collect();
    let mut pending = Vec::new();
    for edit in edits {
        let found = list
            .iter()
            .position(|(kind, name, _, _)| *kind == edit.kind && *name == edit.name);
        let not_found = || WriteError::NotFound {
            kind: edit.kind,
            name: edit.name.clone(),
        };
        match (edit.expect, found) {
            (Expect::Absent, Some(_)) => {
                return Err(WriteError::Exists {
                    kind: edit.kind,
                    name: edit.name.clone(),
                })
            }
            (Expect::Present | Expect::Revision(_), None) => return Err(not_found()),
            (Expect::Revision(expected), Some(i)) if list[i].3 != expected => {
                return Err(WriteError::Conflict {
                    kind: edit.kind,
                    name: edit.name.clone(),
                    revision: list[i].3,
                })
            }
            _ => {}
        }
        let before = found.map(|i| list[i].2.clone().into_owned());
        match (&edit.body, found) {
            (Some(body), Some(i)) if *list[i].2 == *body => continue,
            (Some(body), Some(i)) => list[i].2 = Cow::Borrowed(body),
            (Some(body), None) => {
                list.push((edit.kind, edit.name.as_str(), Cow::Borrowed(body), 0))
            }
            (None, Some(i)) => {
                list.remove(i);
            }
            (None, None) => return Err(not_found()),
        }
        let action = edit.action.clone().unwrap_or_else(|| {
            match (&before, &edit.body) {
                (None, _) => "create",
                (Some(_), Some(_)) => "update",
                (Some(_), None) => "delete",
            }
            .to_string()
        });
        pending.push((edit, action, before));
    }
    let config = resources::assemble(
        node,
        list.iter()
            .map(|(kind, name, body, _)| (*kind, *name, body.as_ref())),
    )
    .map_err(WriteError::Invalid)?;
    let mut writes = Vec::new();
    let mut audit = Vec::new();
    let mut changes = Vec::new();
    for (edit, action, before) in pending {
        writes.push(ResourceWrite {
            kind: edit.kind.as_str().to_string(),
            name: edit.name.clone(),
            team: resources::team_of(&config, edit.kind, &edit.name),
            origin: edit.origin,
            body: edit.body.clone(),
            expect: edit.expect,
        });
        audit.push(AuditEntry {
            actor: actor.name.clone(),
            client_ip: actor.client_ip.clone(),
            action: action.clone(),
            kind: edit.kind.as_str().to_string(),
            name: edit.name.clone(),
            diff: diff(before.as_ref(), edit.body.as_ref()),
        });
        changes.push(Change {
            action,
            kind: edit.kind.as_str().to_string(),
            name: edit.name.clone(),
        });
    }
    Ok(Plan {
        config,
        writes,
        audit,
        changes,
    })
}

/// `{"before", "after"}` with secrets redacted; only the top-level fields
/// that differ when both exist.
fn diff(before: Option<&Value>, after: Option<&Value>) -> Value {
    let redacted = |value: Option<&Value>| {
        value.cloned().map(|mut v| {
            redact(&mut v);
            v
        })
    };
    let (mut before, mut after) = (redacted(before), redacted(after));
    if let (Some(Value::Object(old)), Some(Value::Object(new))) = (&mut before, &mut after) {
        let same: Vec<String> = old
            .iter()
            .filter(|(k, v)| new.get(*k) == Some(v) && *k != "name" && *k != "id")
            .map(|(k, _)| k.clone())
            .collect();
        for key in same {
            old.remove(&key);
            new.remove(&key);
        }
    }
    json!({ "before": before, "after": after })
}

/// The edits that make the store hold a file's resources: creates and
/// updates by name, and deletes of what the file put there before and no
/// longer lists (resources created through the admin API are never
/// deleted by the file). With `prune`, every resource the file does not
/// list is deleted, whatever its origin.
pub fn sync_edits(state: &ConfigState, file: &Config, origin: Origin, prune: bool) -> Vec<Edit> {
    sync_resources(state, &resources::split(file), origin, prune)
}

/// [`sync_edits`] for resources already split out of their document.
pub fn sync_resources(
    state: &ConfigState,
    wanted: &[resources::Resource],
    origin: Origin,
    prune: bool,
) -> Vec<Edit> {
    let mut edits = Vec::new();
    for resource in wanted {
        let current = state
            .resources
            .iter()
            .find(|r| r.kind == resource.kind.as_str() && r.name == resource.name);
        // A stored body may omit defaults (an admin write sends what it
        // likes); the wanted one is as `split` writes it.
        let same = current.is_some_and(|c| {
            c.body == resource.body
                || resources::normalize(resource.kind, &c.body).as_ref() == Some(&resource.body)
        });
        if same {
            continue;
        }
        let mut edit = Edit::put(
            resource.kind,
            resource.name.clone(),
            resource.body.clone(),
            Expect::Anything,
        );
        edit.origin = origin;
        edits.push(edit);
    }
    for stored in &state.resources {
        let listed = wanted
            .iter()
            .any(|w| w.kind.as_str() == stored.kind && w.name == stored.name);
        let removable = prune || (origin == Origin::File && stored.origin == Origin::File);
        if listed || !removable {
            continue;
        }
        if let Some(kind) = Kind::parse(&stored.kind) {
            edits.push(Edit::delete(kind, stored.name.clone(), Expect::Present));
        }
    }
    // Deletes first, dependants before what they depend on; then creates
    // in the file's order. Validation sees the whole anyway.
    edits.sort_by_key(|e| match e.body {
        None => (0, std::cmp::Reverse(e.kind)),
        Some(_) => (1, std::cmp::Reverse(Kind::Teams)),
    });
    edits
}

/// A check of edits against the configuration served and its resources,
/// for [`ControlPlane::write_checked`].
pub type WriteCheck<'a> =
    dyn Fn(&Config, &ConfigState, &[Edit]) -> Result<(), WriteError> + Send + Sync + 'a;

/// The live configuration's resources and the means to change them.
pub struct ControlPlane {
    store: Store,
    sealer: Arc<Sealer>,
    data_plane: Arc<DataPlane>,
    node: ArcSwap<Config>,
    state: ArcSwap<ConfigState>,
    writes: tokio::sync::Mutex<()>,
    health: Arc<Health>,
    /// Where each installed configuration is saved, when the node has one.
    cache: OnceLock<Arc<SnapshotCache>>,
    /// Counts installs, so that the cache keeps the latest of racing writes.
    installs: AtomicU64,
    /// Whether the store was reached since start (false while a node started
    /// during an outage serves its cache).
    store_ready: AtomicBool,
}

impl ControlPlane {
    /// `state` is what `data_plane` serves, assembled with `node`.
    pub fn new(
        store: Store,
        sealer: Arc<Sealer>,
        data_plane: Arc<DataPlane>,
        node: Config,
        state: ConfigState,
    ) -> Arc<ControlPlane> {
        Arc::new(ControlPlane {
            store,
            sealer,
            data_plane,
            node: ArcSwap::from_pointee(resources::node_settings(&node)),
            state: ArcSwap::from_pointee(state),
            writes: tokio::sync::Mutex::new(()),
            health: Arc::new(Health::new()),
            cache: OnceLock::new(),
            installs: AtomicU64::new(0),
            store_ready: AtomicBool::new(true),
        })
    }

    /// Saves every configuration installed from now on to `cache`, and the
    /// one served now (unless serving from the cache: it holds that one).
    /// Call once, at start.
    pub fn set_snapshot_cache(&self, cache: Arc<SnapshotCache>) {
        if self.cache.set(cache).is_ok() && self.store_ready.load(Ordering::SeqCst) {
            self.save_snapshot(self.state.load_full());
        }
    }

    /// Marks the store unreachable: the node serves what it has (its
    /// snapshot cache), writes are refused, and its health says so.
    pub fn store_down(&self, reason: &str) {
        self.store_ready.store(false, Ordering::SeqCst);
        self.health.set(CACHE_HEALTH, reason.to_string());
    }

    /// Marks the store reachable again (after its migrations ran): writes
    /// are taken, and following brings the store's revision.
    pub fn store_up(&self) {
        self.store_ready.store(true, Ordering::SeqCst);
        self.health.clear(CACHE_HEALTH);
    }

    /// Whether the store was reached since start.
    pub fn store_ready(&self) -> bool {
        self.store_ready.load(Ordering::SeqCst)
    }

    /// Writes `state` to the snapshot cache on a blocking thread; a failure
    /// is logged (the node serves on).
    fn save_snapshot(&self, state: Arc<ConfigState>) {
        let Some(cache) = self.cache.get().cloned() else {
            return;
        };
        let generation = self.installs.fetch_add(1, Ordering::SeqCst) + 1;
        let sealer = self.sealer.clone();
        let saving = move || {
            if let Err(error) = cache.write(&sealer, &state, generation) {
                tracing::warn!(%error, path = %cache.path().display(), "cannot write the snapshot cache");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(saving)),
            Err(_) => saving(),
        }
    }

    /// This node's health, which its heartbeats report (see
    /// [`crate::nodes`]): the control plane sets its own entries, other
    /// components theirs.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// The resources of the revision served.
    pub fn state(&self) -> Arc<ConfigState> {
        self.state.load_full()
    }

    /// The configuration served.
    /// The health of the upstream targets this node proxies to.
    pub fn upstream_health(&self) -> Vec<tollgate_proxy::upstream::TargetHealth> {
        self.data_plane.upstream_health()
    }

    pub fn config(&self) -> Arc<Config> {
        self.data_plane.snapshot().config.clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Checks, commits and serves `edits` as one change; see the module docs.
    /// A dry run stops before the commit.
    pub async fn write(
        &self,
        actor: &Actor,
        edits: &[Edit],
        dry_run: bool,
    ) -> Result<Committed, WriteError> {
        let _guard = self.writes.lock().await;
        self.write_locked(actor, edits, dry_run, None, None).await
    }

    /// [`ControlPlane::write`], once `check` has accepted the edits against
    /// the configuration and resources they are planned on, under the write
    /// lock: so who may change a resource is judged on what it is when it
    /// changes (see [`crate::authz`]).
    pub async fn write_checked(
        &self,
        actor: &Actor,
        edits: &[Edit],
        dry_run: bool,
        check: &WriteCheck<'_>,
    ) -> Result<Committed, WriteError> {
        let _guard = self.writes.lock().await;
        self.write_locked(actor, edits, dry_run, None, Some(check))
            .await
    }

    /// A reloaded configuration file: its node settings and its resources
    /// (see [`sync_edits`]) served together, or neither.
    pub async fn sync_file(&self, actor: &Actor, file: &Config) -> Result<Committed, WriteError> {
        let _guard = self.writes.lock().await;
        let node = Arc::new(resources::node_settings(file));
        loop {
            let state = self.state.load_full();
            let edits = sync_edits(&state, file, Origin::File, false);
            let committed = self
                .write_locked(actor, &edits, false, Some(node.clone()), None)
                .await;
            match committed {
                // The file's view of the store was stale: plan again.
                Err(WriteError::Conflict { .. } | WriteError::NotFound { .. })
                    if self.refresh_locked().await? => {}
                other => {
                    if other.is_ok() {
                        self.node.store(node);
                    }
                    return other;
                }
            }
        }
    }

    async fn write_locked(
        &self,
        actor: &Actor,
        edits: &[Edit],
        dry_run: bool,
        new_node: Option<Arc<Config>>,
        check: Option<&WriteCheck<'_>>,
    ) -> Result<Committed, WriteError> {
        loop {
            if !self.store_ready() && !dry_run {
                return Err(WriteError::Unavailable(
                    "the store is unreachable: this node serves its snapshot cache and takes no changes until the store answers".into(),
                ));
            }
            let state = self.state.load_full();
            if let Some(check) = check {
                check(&self.config(), &state, edits)?;
            }
            let node = new_node.clone().unwrap_or_else(|| self.node.load_full());
            let plan = plan(&node, &state, edits, actor)?;
            let config = Arc::new(plan.config);
            let prepared = self
                .data_plane
                .prepare(config.clone())
                .map_err(|errors| invalid(&config, errors))?;
            if dry_run || plan.writes.is_empty() {
                if !dry_run && new_node.is_some() {
                    self.data_plane.install(prepared);
                }
                return Ok(Committed {
                    revision: state.revision,
                    changes: plan.changes,
                    dry_run,
                });
            }
            let store = self.store.clone();
            let sealer = self.sealer.clone();
            let base = state.revision;
            let writes = Arc::new(plan.writes);
            let audit = plan.audit;
            let committing = writes.clone();
            let committed =
                blocking(move || store.commit(&sealer, Some(base), &committing, &audit)).await?;
            match committed {
                Ok(revision) => {
                    self.data_plane.install(prepared);
                    // What the store now holds, without reading it back.
                    let next = Arc::new(after_commit(&state, &writes, revision));
                    self.state.store(next.clone());
                    self.save_snapshot(next);
                    return Ok(Committed {
                        revision,
                        changes: plan.changes,
                        dry_run,
                    });
                }
                Err(StoreError::Stale { .. }) => {
                    // Another writer went first: serve theirs, then plan again.
                    self.refresh_locked().await?;
                }
                Err(error) => return Err(store_error(error)),
            }
        }
    }

    /// Brings the data plane to the store's revision if another writer moved it.
    pub async fn refresh(&self) -> Result<bool, WriteError> {
        let _guard = self.writes.lock().await;
        self.refresh_locked().await
    }

    async fn refresh_locked(&self) -> Result<bool, WriteError> {
        let store = self.store.clone();
        let revision = blocking(move || store.config_revision())
            .await?
            .map_err(store_error)?;
        if revision == self.state.load().revision {
            return Ok(false);
        }
        let store = self.store.clone();
        let sealer = self.sealer.clone();
        let state = blocking(move || store.load_resources(&sealer))
            .await?
            .map_err(store_error)?;
        let node = self.node.load_full();
        let config = Arc::new(assemble(&node, &state)?);
        let prepared = self
            .data_plane
            .prepare(config.clone())
            .map_err(|errors| invalid(&config, errors))?;
        self.data_plane.install(prepared);
        tracing::info!(revision = state.revision, "configuration revision loaded");
        let state = Arc::new(state);
        self.state.store(state.clone());
        self.save_snapshot(state);
        Ok(true)
    }

    /// Follows the store's revision until shutdown: changes committed by
    /// another process reach this data plane as soon as their notification
    /// does (PostgreSQL), and within [`FOLLOW_INTERVAL`] anyway.
    pub async fn follow(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let wake = Arc::new(tokio::sync::Notify::new());
        let _listener = self.listen(wake.clone());
        let mut tick = tokio::time::interval(FOLLOW_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = tick.tick() => {}
                // Notifications arriving during a refresh leave one permit:
                // they are served by one more refresh, not lost.
                _ = wake.notified() => {}
            }
            match self.refresh().await {
                Ok(_) => self.health.clear(CONFIG_HEALTH),
                Err(error) => {
                    tracing::error!(%error, "cannot serve the store's configuration revision; the previous one keeps serving");
                    self.health.set(
                        CONFIG_HEALTH,
                        format!("cannot serve the store's revision: {error}"),
                    );
                }
            }
        }
    }

    /// Starts listening for other nodes' commits, which wake `wake`; `None`
    /// on SQLite, or when the listener cannot start (then polling only).
    fn listen(&self, wake: Arc<tokio::sync::Notify>) -> Option<ConfigListener> {
        let health = self.health.clone();
        let listening = self.store.listen_config(move |event| match event {
            // Commits made while not listening were not notified: look.
            ConfigEvent::Listening => {
                health.clear(LISTENER_HEALTH);
                wake.notify_one();
            }
            ConfigEvent::Changed { .. } => wake.notify_one(),
            ConfigEvent::Lost { error } => health.set(
                LISTENER_HEALTH,
                format!("not listening for configuration changes ({error}); polling every second"),
            ),
        });
        match listening {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "cannot start listening for configuration changes; polling every second");
                None
            }
        }
    }
}

/// `state` with `writes` committed at `revision`: what
/// [`Store::load_resources`] would now read, computed instead of read
/// (reading back and opening every sealed body cost more than the rest of a
/// write with a thousand resources).
fn after_commit(state: &ConfigState, writes: &[ResourceWrite], revision: i64) -> ConfigState {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut next = state.clone();
    next.revision = revision;
    for write in writes {
        let found = next
            .resources
            .iter()
            .position(|r| r.kind == write.kind && r.name == write.name);
        match (&write.body, found) {
            (None, Some(i)) => {
                next.resources.remove(i);
            }
            (None, None) => {}
            (Some(body), Some(i)) => {
                let resource = &mut next.resources[i];
                resource.body = body.clone();
                resource.team = write.team.clone();
                resource.origin = write.origin;
                resource.revision = revision;
                resource.updated_at = now;
            }
            (Some(body), None) => next.resources.push(tollgate_store::StoredResource {
                kind: write.kind.clone(),
                name: write.name.clone(),
                team: write.team.clone(),
                origin: write.origin,
                body: body.clone(),
                revision,
                created_at: now,
                updated_at: now,
            }),
        }
    }
    next
}

/// The resources of `state` with `node`'s settings.
pub fn assemble(node: &Config, state: &ConfigState) -> Result<Config, WriteError> {
    resources::assemble(
        node,
        state
            .resources
            .iter()
            .filter_map(|r| Some((Kind::parse(&r.kind)?, r.name.as_str(), &r.body))),
    )
    .map_err(WriteError::Invalid)
}

/// Compilation errors, with paths that name resources.
fn invalid(config: &Config, errors: Vec<ConfigError>) -> WriteError {
    WriteError::Invalid(
        errors
            .into_iter()
            .map(|e| ConfigError::new(resources::resource_path(config, &e.path), e.message))
            .collect(),
    )
}

fn store_error(error: StoreError) -> WriteError {
    let kind = |k: &str| Kind::parse(k).unwrap_or(Kind::Teams);
    match error {
        StoreError::Conflict {
            kind: k,
            name,
            found,
        } => WriteError::Conflict {
            kind: kind(&k),
            name,
            revision: found,
        },
        StoreError::Exists { kind: k, name } => WriteError::Exists {
            kind: kind(&k),
            name,
        },
        StoreError::Missing { kind: k, name } => WriteError::NotFound {
            kind: kind(&k),
            name,
        },
        other if other.is_unavailable() => WriteError::Unavailable(format!(
            "the store is unreachable ({other}); nothing was changed, try again later"
        )),
        other => WriteError::Internal(other.to_string()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, WriteError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WriteError::Internal(format!("store task failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_store::StoredResource;

    fn state(resources: &[(&str, &str, Value, Origin)]) -> ConfigState {
        ConfigState {
            revision: 3,
            resources: resources
                .iter()
                .map(|(kind, name, body, origin)| StoredResource {
                    kind: kind.to_string(),
                    name: name.to_string(),
                    team: None,
                    origin: *origin,
                    body: body.clone(),
                    revision: 2,
                    created_at: 0,
                    updated_at: 0,
                })
                .collect(),
        }
    }

    fn actor() -> Actor {
        Actor {
            name: "t".into(),
            client_ip: None,
        }
    }

    #[test]
    fn plans_check_expectations_and_validate_the_whole() {
        let node = Config::default();
        let team = json!({"name": "shop"});
        let s = state(&[("teams", "shop", team.clone(), Origin::Admin)]);
        let plan = plan(
            &node,
            &s,
            &[Edit::put(
                Kind::Teams,
                "shop",
                team.clone(),
                Expect::Anything,
            )],
            &actor(),
        )
        .unwrap();
        assert!(plan.writes.is_empty(), "an unchanged body is no write");
        assert!(matches!(
            super::plan(
                &node,
                &s,
                &[Edit::put(Kind::Teams, "shop", team.clone(), Expect::Absent)],
                &actor()
            ),
            Err(WriteError::Exists { .. })
        ));
        assert!(matches!(
            super::plan(
                &node,
                &s,
                &[Edit::put(
                    Kind::Teams,
                    "shop",
                    team.clone(),
                    Expect::Revision(1)
                )],
                &actor()
            ),
            Err(WriteError::Conflict { revision: 2, .. })
        ));
        let consumer = json!({"name": "alice", "team": "nowhere"});
        match super::plan(
            &node,
            &s,
            &[Edit::put(
                Kind::Consumers,
                "alice",
                consumer,
                Expect::Absent,
            )],
            &actor(),
        ) {
            Err(WriteError::Invalid(errors)) => {
                assert_eq!(errors[0].path, "consumers/alice.team", "{errors:?}")
            }
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn the_state_after_a_commit_is_what_the_store_reads_back() {
        let store = Store::open("sqlite::memory:").unwrap();
        let sealer = Sealer::new(tollgate_store::sealing::MasterKey::generate());
        let write = |kind: &str, name: &str, body: Option<Value>| ResourceWrite {
            kind: kind.into(),
            name: name.into(),
            team: Some("t".into()),
            origin: Origin::Admin,
            body,
            expect: Expect::Anything,
        };
        let first = [
            write("teams", "a", Some(json!({"name": "a"}))),
            write("teams", "b", Some(json!({"name": "b"}))),
            write("teams", "c", Some(json!({"name": "c"}))),
        ];
        let r1 = store.commit(&sealer, Some(0), &first, &[]).unwrap();
        let state = store.load_resources(&sealer).unwrap();
        let second = [
            write("teams", "b", None),
            write("teams", "a", Some(json!({"name": "a", "description": "x"}))),
            write("teams", "d", Some(json!({"name": "d"}))),
        ];
        let r2 = store.commit(&sealer, Some(r1), &second, &[]).unwrap();
        let mut computed = after_commit(&state, &second, r2);
        let mut read = store.load_resources(&sealer).unwrap();
        for r in computed
            .resources
            .iter_mut()
            .chain(read.resources.iter_mut())
        {
            (r.created_at, r.updated_at) = (0, 0);
        }
        assert_eq!(computed, read);
    }

    #[test]
    fn audit_diffs_redact_secrets_and_keep_only_changes() {
        let before = json!({"name": "c", "groups": ["a"], "client_credentials": {"client_id": "c", "secret": "old-secret"}});
        let after = json!({"name": "c", "groups": ["a"], "client_credentials": {"client_id": "c", "secret": "new-secret"}});
        let d = diff(Some(&before), Some(&after));
        let text = d.to_string();
        assert!(
            !text.contains("old-secret") && !text.contains("new-secret"),
            "{text}"
        );
        assert!(d["before"].get("groups").is_none());
        assert_eq!(d["after"]["name"], "c");
    }

    #[test]
    fn file_sync_prunes_only_what_the_file_put_there() {
        let file = tollgate_config::from_yaml("teams: [{ name: a }]").unwrap();
        let s = state(&[
            (
                "teams",
                "old-from-file",
                json!({"name": "old-from-file"}),
                Origin::File,
            ),
            (
                "teams",
                "from-api",
                json!({"name": "from-api"}),
                Origin::Admin,
            ),
        ]);
        let names = |edits: Vec<Edit>| -> Vec<String> {
            edits
                .iter()
                .map(|e| format!("{}{}", if e.body.is_some() { "+" } else { "-" }, e.name))
                .collect()
        };
        assert_eq!(
            names(sync_edits(&s, &file, Origin::File, false)),
            ["-old-from-file", "+a"]
        );
        assert_eq!(
            names(sync_edits(&s, &file, Origin::Admin, true)),
            ["-old-from-file", "-from-api", "+a"]
        );
        assert_eq!(names(sync_edits(&s, &file, Origin::Admin, false)), ["+a"]);
    }
}
