//! Tollgate's data plane.
//!
//! Serves an immutable [`Snapshot`] compiled from the configuration and
//! swapped atomically on reload; a request never waits on a database or a
//! lock that a precomputed index could avoid. Records leave through the
//! bounded access-log channel. This crate must never buffer a body it does
//! not have to, nor answer anything but a JSON error for its own refusals.

pub mod ai;
pub mod body;
mod boxed;
pub mod client;
mod conn_timeouts;
pub mod error;
pub mod forwarding;
pub mod framing;
mod h1_client;
mod h1_server;
pub mod health;
mod http_date;
pub mod lifecycle;
pub mod normalize;
mod passed_lines;
pub mod pool;
pub mod proxy;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod upstream;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tollgate_config::{Config, ConfigError};
use tollgate_telemetry::AccessLog;

pub use error::GatewayError;
pub use proxy::Proxy;
pub use snapshot::Snapshot;

/// The running data plane: the live snapshot and what outlives it.
pub struct DataPlane {
    proxy: Arc<Proxy>,
    registries: snapshot::Registries,
    health: health::HealthChecker,
    tls: Option<Arc<tls::SniResolver>>,
    /// Roots client certificates must chain to; the TLS listener asks for one when set.
    client_ca: Option<Arc<rustls::RootCertStore>>,
}

/// A compiled snapshot not yet served; see [`DataPlane::prepare`].
pub struct PreparedSnapshot {
    snapshot: Arc<Snapshot>,
    certificates: Option<tls::LoadedCertificates>,
}

/// The listeners the data plane serves, bound by the caller.
pub struct Listeners {
    pub proxy: TcpListener,
    pub tls: Option<TcpListener>,
}

/// A data plane whose first snapshot compiled, not yet serving: lets the
/// caller refuse a bad configuration before it creates anything on disk.
pub struct CompiledDataPlane {
    snapshot: Arc<Snapshot>,
    registries: snapshot::Registries,
    tls: Option<Arc<tls::SniResolver>>,
    client_ca: Option<Arc<rustls::RootCertStore>>,
}

impl CompiledDataPlane {
    /// Starts health checks and the pipeline. Must run inside a tokio runtime.
    pub fn start(self, access_log: AccessLog) -> DataPlane {
        let health = health::HealthChecker::default();
        health.reconcile(&self.snapshot);
        // Exported from the start, so that /metrics shows 0 rather than no series.
        metrics::counter!(tollgate_telemetry::metrics::ACCESS_LOG_DROPPED).increment(0);
        metrics::gauge!(tollgate_telemetry::metrics::ACTIVE_CONNECTIONS).increment(0.0);
        DataPlane {
            proxy: Arc::new(Proxy::new(self.snapshot, access_log)),
            registries: self.registries,
            health,
            tls: self.tls,
            client_ca: self.client_ca,
        }
    }
}

impl DataPlane {
    /// Compiles the first snapshot and loads the TLS certificates.
    pub fn compile(
        config: Arc<Config>,
        policy: tollgate_policy::PolicyRegistries,
    ) -> Result<CompiledDataPlane, Vec<ConfigError>> {
        let registries = snapshot::Registries::new(policy);
        let snapshot = Arc::new(Snapshot::compile(config.clone(), &registries)?);
        let tls = match &config.listen.tls {
            Some(settings) => Some(tls::SniResolver::load(&settings.certificates)?),
            None => None,
        };
        let client_ca = match config
            .listen
            .tls
            .as_ref()
            .and_then(|t| t.client_ca.as_ref())
        {
            Some(path) => Some(
                tls::load_client_roots(path)
                    .map_err(|message| vec![ConfigError::new("listen.tls.client_ca", message)])?,
            ),
            None => None,
        };
        Ok(CompiledDataPlane {
            snapshot,
            registries,
            tls,
            client_ca,
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.proxy.snapshot.load_full()
    }

    /// The health of every upstream target this node has seen configured.
    pub fn upstream_health(&self) -> Vec<upstream::TargetHealth> {
        self.registries.targets.health()
    }

    /// Compiles and swaps in a new configuration. On error the old snapshot keeps serving.
    /// Listener addresses are fixed at start-up: a change to them needs a restart.
    pub fn apply(&self, config: Arc<Config>) -> Result<(), Vec<ConfigError>> {
        let prepared = self.prepare(config)?;
        self.install(prepared);
        Ok(())
    }

    /// Compiles `config` and reads its certificates without serving them:
    /// what may fail, done before a change is committed anywhere.
    pub fn prepare(&self, config: Arc<Config>) -> Result<PreparedSnapshot, Vec<ConfigError>> {
        let snapshot = Arc::new(Snapshot::compile(config.clone(), &self.registries)?);
        let certificates = match (&self.tls, &config.listen.tls) {
            (Some(_), Some(settings)) => {
                Some(tls::LoadedCertificates::load(&settings.certificates)?)
            }
            _ => None,
        };
        Ok(PreparedSnapshot {
            snapshot,
            certificates,
        })
    }

    /// Serves a prepared snapshot from the next request on. Cannot fail.
    pub fn install(&self, prepared: PreparedSnapshot) {
        let PreparedSnapshot {
            snapshot,
            certificates,
        } = prepared;
        let config = snapshot.config.clone();
        if let (Some(resolver), Some(certificates)) = (&self.tls, certificates) {
            resolver.replace(certificates);
        }
        self.proxy.snapshot.store(snapshot.clone());
        self.health.reconcile(&snapshot);
        self.registries.deprecations.retain_deprecated(&config);
        let live: HashSet<(String, String)> = config
            .services
            .iter()
            .flat_map(|s| {
                s.upstream
                    .targets
                    .iter()
                    .map(|t| (s.name.clone(), t.url.clone()))
            })
            .collect();
        self.registries
            .targets
            .retain(|service, url| live.contains(&(service.to_string(), url.to_string())));
        let apis: HashSet<&str> = config.apis.iter().map(|a| a.name.as_str()).collect();
        self.registries.metrics.retain(|api| apis.contains(api));
    }

    /// Serves until `shutdown` turns true, then drains in-flight requests for
    /// at most `grace`. Returns whether every connection finished in time.
    pub async fn serve(
        &self,
        listeners: Listeners,
        shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) -> bool {
        let snapshot = self.snapshot();
        let limits = server::ConnectionLimits::from(&snapshot.config.limits);
        let graceful = Arc::new(GracefulShutdown::new());
        let mut accept_loops = Vec::new();
        accept_loops.push(tokio::spawn(server::serve(
            listeners.proxy,
            None,
            self.proxy.clone(),
            limits.clone(),
            graceful.clone(),
            shutdown.clone(),
        )));
        if let (Some(listener), Some(resolver)) = (listeners.tls, &self.tls) {
            match tls::server_config(resolver.clone(), self.client_ca.clone()) {
                Ok(config) => accept_loops.push(tokio::spawn(server::serve(
                    listener,
                    Some(tokio_rustls::TlsAcceptor::from(config)),
                    self.proxy.clone(),
                    limits.clone(),
                    graceful.clone(),
                    shutdown.clone(),
                ))),
                Err(error) => tracing::error!(%error, "TLS listener not started"),
            }
        }
        for accept_loop in accept_loops {
            let _ = accept_loop.await;
        }
        self.health.stop_all();
        // The accept loops have ended, so theirs were the only other handles;
        // connections hold watchers. Failing here would be a bug, not a state.
        match Arc::try_unwrap(graceful) {
            Ok(graceful) => tokio::time::timeout(grace, graceful.shutdown())
                .await
                .is_ok(),
            Err(_) => {
                tracing::error!("the drain handle is still shared: not waiting for connections");
                false
            }
        }
    }
}
