//! The `tollgate` binary: the command line and the wiring of the crates.

mod admin_client;
mod policy_state;
mod reload;
mod retention;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::builder::TypedValueParser as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tollgate_admin::compliance::{self, Severity};
use tollgate_admin::control::{self, Actor, ControlPlane, WriteError};
use tollgate_config::{Config, ConfigError};
use tollgate_policy::counters::{spawn_flusher, CounterPersistence, CounterStore, MemoryCounters};
use tollgate_policy::counters_redis::{RedisCounters, RedisOptions};
use tollgate_policy::PolicyRegistries;
use tollgate_proxy::{DataPlane, Listeners};
use tollgate_store::sealing::{KeySource, MasterKey, Sealer, MASTER_KEY_ENV};
use tollgate_store::snapshot_cache::SnapshotCache;
use tollgate_store::{ConfigState, Origin, Store};
use tollgate_telemetry::{AccessLog, FileSink, RecordSink};

/// mimalloc: a proxy allocates and frees many small buffers per request;
/// measured faster than the system allocator on the proxy benchmark.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Default place `serve` looks for a configuration when `--config` is not given.
const DEFAULT_CONFIG: &str = "tollgate.yaml";
/// The new key `rotate-master-key` writes before resealing, renamed over
/// the old one once every value is sealed with it.
const PENDING_MASTER_KEY_FILE: &str = "master-key.new";
/// Access records waiting to be written before new ones are dropped.
const DEFAULT_LOG_BUFFER: usize = 65_536;
/// How often changed quota counters are written to the store.
const QUOTA_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How long startup waits for `storage.redis` to answer before going on
/// without it (the connection keeps retrying in the background).
const REDIS_STARTUP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Parser)]
#[command(
    name = "tollgate",
    about = "An API gateway and AI gateway in one binary",
    disable_version_flag = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The configuration file; without it, ./tollgate.yaml if present, else defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log format: human-readable or JSON lines.
        #[arg(long, value_enum, default_value_t = LogFormat::Human)]
        log_format: LogFormat,
        /// Runtime worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Check a configuration file and list every error with its field path.
    Validate { file: PathBuf },
    /// Report what in a configuration file goes against good policy (APIs
    /// without auth, plain-HTTP upstreams, keys without expiry, weak or literal
    /// secrets …). Exit 0 when no finding is at or above --fail-on, 1 when one
    /// is, 2 when the file is not valid.
    Audit {
        /// The configuration file (its env: secrets must be set, as for `serve`).
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        /// The least severity that fails the audit.
        #[arg(
            long,
            default_value = "high",
            value_parser = clap::builder::PossibleValuesParser::new(["low", "medium", "high", "critical"])
                .try_map(|s| s.parse::<Severity>())
        )]
        fail_on: Severity,
    },
    /// Make a running node's resources those of FILE, through its admin API,
    /// and print the diff: creates and updates by name; with --prune, also
    /// deletes what FILE does not list. One change: all of it or nothing.
    Apply {
        file: PathBuf,
        /// Print what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete the resources FILE does not list.
        #[arg(long)]
        prune: bool,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Print a running node's resources as YAML that `apply` takes back
    /// unchanged (literal secrets shown as <redacted>, which `apply` keeps).
    Export {
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Create (or update) the APIs of an OpenAPI 3 document on an existing
    /// service of a running node: one API per operation, request-body schemas
    /// as validate policies.
    ImportOpenapi {
        /// The OpenAPI 3.0/3.1 document, JSON or YAML.
        spec: PathBuf,
        /// The service the APIs route to.
        #[arg(long)]
        service: String,
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Seal every stored secret under a new master key, then make it the
    /// key. Run with the node stopped. With TOLLGATE_MASTER_KEY set, the new
    /// key comes from TOLLGATE_NEW_MASTER_KEY and you update the former.
    RotateMasterKey {
        /// The node's configuration file (for its database); without it,
        /// ./tollgate.yaml if present, else the defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the version.
    Version,
}

/// Which node's admin API a command talks to.
#[derive(clap::Args)]
struct AdminTarget {
    /// The admin listener's URL.
    #[arg(
        long,
        env = "TOLLGATE_ADMIN_URL",
        default_value = "http://127.0.0.1:8001"
    )]
    admin_url: String,
    /// An admin token (or the TOLLGATE_ADMIN_TOKEN variable).
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl AdminTarget {
    fn target(self) -> admin_client::Target {
        admin_client::Target {
            url: self.admin_url,
            token: self.token,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("tollgate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Validate { file } => match tollgate_config::load_file(&file).and_then(compiles) {
            Ok(config) => {
                for warning in tollgate_config::warnings(&config) {
                    eprintln!("  warning: {warning}");
                }
                println!(
                    "{}: ok ({} services, {} apis)",
                    file.display(),
                    config.services.len(),
                    config.apis.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                print_errors(&file, &errors);
                ExitCode::from(1)
            }
        },
        Command::Audit {
            file,
            format,
            fail_on,
        } => audit(&file, format, fail_on),
        Command::Apply {
            file,
            dry_run,
            prune,
            admin,
        } => client_command(async move {
            let document =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let answer = admin
                .target()
                .send(
                    http::Method::POST,
                    &format!("/admin/v1/apply?dry_run={dry_run}&prune={prune}"),
                    Some(document),
                )
                .await?;
            Ok(if answer.status == 200 {
                admin_client::print_changes(&answer)
            } else {
                admin_client::report_error(&answer)
            })
        }),
        Command::Export { admin } => client_command(async move {
            let answer = admin
                .target()
                .send(http::Method::GET, "/admin/v1/export", None)
                .await?;
            if answer.status != 200 {
                return Ok(admin_client::report_error(&answer));
            }
            print!("{}", String::from_utf8_lossy(&answer.body));
            Ok(ExitCode::SUCCESS)
        }),
        Command::ImportOpenapi {
            spec,
            service,
            team,
            dry_run,
            admin,
        } => client_command(async move {
            let document =
                std::fs::read(&spec).with_context(|| format!("cannot read {}", spec.display()))?;
            let mut query = format!(
                "/admin/v1/import/openapi?service={}&dry_run={dry_run}",
                encode(&service)
            );
            if let Some(team) = team {
                query.push_str(&format!("&team={}", encode(&team)));
            }
            let answer = admin
                .target()
                .send(http::Method::POST, &query, Some(document))
                .await?;
            Ok(if answer.status == 200 {
                admin_client::print_changes(&answer)
            } else {
                admin_client::report_error(&answer)
            })
        }),
        Command::RotateMasterKey { config } => rotate_master_key(config.as_deref()),
        Command::Serve {
            config,
            log_format,
            workers,
        } => {
            init_logging(log_format);
            let (config, path) = match load_serve_config(config.as_deref()) {
                Ok(loaded) => loaded,
                Err(errors) => {
                    for error in &errors {
                        tracing::error!(%error, "invalid configuration");
                    }
                    return ExitCode::from(2);
                }
            };
            let runtime = match build_runtime(workers) {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, "cannot start the runtime");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config, path)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs an admin-client command on a small runtime; failures to reach the
/// node are printed, with exit code 1.
fn client_command(
    command: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Percent-encodes a query parameter's value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `tollgate rotate-master-key`: writes the new key beside the old one
/// (`master-key.new`), reseals every stored value with it in one
/// transaction, then renames it over the old key. Interrupted anywhere, the
/// node still opens everything: it reads both files (see [`open_sealer`]).
fn rotate_master_key(config: Option<&Path>) -> ExitCode {
    let result = (|| -> anyhow::Result<String> {
        let config = match load_serve_config(config) {
            Ok((config, _)) => config,
            Err(errors) => {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                anyhow::bail!("invalid configuration: {}", lines.join("; "));
            }
        };
        let data_dir = policy_state::data_dir(&config);
        let store = Store::open(&database_url(&config)?).with_context(|| {
            format!(
                "cannot open the database {}",
                tollgate_store::redact_database_url(&config.storage.database)
            )
        })?;
        let old = open_sealer(&data_dir)?;
        store
            .load_resources(&old)
            .context("the current master key does not open the stored resources")?;
        if let Ok(text) = std::env::var(MASTER_KEY_ENV) {
            if !text.trim().is_empty() {
                let new_text = std::env::var("TOLLGATE_NEW_MASTER_KEY").context(
                    "with TOLLGATE_MASTER_KEY set, give the new key in TOLLGATE_NEW_MASTER_KEY",
                )?;
                let new = Sealer::new(MasterKey::parse(&new_text)?);
                let count = store.reseal_resources(&old, &new)?;
                return Ok(format!(
                    "resealed {count} resource(s) under key {}; set TOLLGATE_MASTER_KEY to the new key before starting the node",
                    new.current().id()
                ));
            }
        }
        let pending = data_dir.join(PENDING_MASTER_KEY_FILE);
        let new_key = match std::fs::read_to_string(&pending) {
            // An interrupted rotation: finish it with the key it chose.
            Ok(text) => MasterKey::parse(&text)?,
            Err(_) => {
                let key = MasterKey::generate();
                tollgate_store::sealing::write_private(&pending, &key.encode())?;
                key
            }
        };
        let id = new_key.id();
        let count = store.reseal_resources(&old, &Sealer::new(new_key))?;
        std::fs::rename(
            &pending,
            data_dir.join(tollgate_store::sealing::MASTER_KEY_FILE),
        )
        .with_context(|| format!("cannot move {} into place", pending.display()))?;
        Ok(format!(
            "resealed {count} resource(s) under the new master key {id}"
        ))
    })();
    match result {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What only compiling finds: JSON Schemas, PEM keys, CA files. The token
/// signing key is not needed to check a file, so none is read or created.
fn compiles(config: Config) -> Result<Config, Vec<ConfigError>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| vec![ConfigError::new("", e.to_string())])?;
    let _guard = runtime.enter();
    let config = Arc::new(config);
    check_compiles(&config)?;
    Ok(Arc::unwrap_or_clone(config))
}

/// [`compiles`] inside a runtime.
fn check_compiles(config: &Arc<Config>) -> Result<(), Vec<ConfigError>> {
    let registries = PolicyRegistries::new(Arc::new(MemoryCounters::new()), None);
    match DataPlane::compile(config.clone(), registries) {
        Ok(_) => Ok(()),
        Err(errors) => {
            let errors: Vec<ConfigError> = errors
                .into_iter()
                .filter(|e| !(e.path == "oauth2_server" && config.oauth2_server.is_some()))
                .collect();
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors)
            }
        }
    }
}

/// `tollgate audit`: the compliance checks that need no store, on a file.
fn audit(file: &Path, format: ReportFormat, fail_on: Severity) -> ExitCode {
    let config = match tollgate_config::load_file(file) {
        Ok(config) => config,
        Err(errors) => {
            print_errors(file, &errors);
            return ExitCode::from(2);
        }
    };
    let report = compliance::audit(&config);
    match format {
        ReportFormat::Json => println!("{}", report.to_json()),
        ReportFormat::Text => {
            let counts = report.counts;
            println!(
                "{}: {} finding(s): {} critical, {} high, {} medium, {} low",
                file.display(),
                report.findings.len(),
                counts.critical,
                counts.high,
                counts.medium,
                counts.low
            );
            for finding in &report.findings {
                println!(
                    "  {:<8} {}  {}: {}",
                    finding.severity, finding.resource, finding.id, finding.message
                );
            }
        }
    }
    if report.at_or_above(fail_on) == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_errors(file: &Path, errors: &[ConfigError]) {
    eprintln!("{}: {} error(s)", file.display(), errors.len());
    for error in errors {
        eprintln!("  {error}");
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// `--config FILE`, else `./tollgate.yaml`, else the defaults.
fn load_serve_config(
    explicit: Option<&Path>,
) -> Result<(Config, Option<PathBuf>), Vec<ConfigError>> {
    let path = match explicit {
        Some(path) => Some(path.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
    };
    match &path {
        Some(path) => Ok((tollgate_config::load_file(path)?, Some(path.clone()))),
        None => {
            tracing::info!("no configuration file: starting with defaults");
            Ok((Config::default(), None))
        }
    }
}

fn build_runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    match workers {
        // One worker: a current-thread runtime, with no cross-thread wake-ups.
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
}

async fn serve(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    tollgate_telemetry::metrics::install_prometheus();
    let config = Arc::new(config);

    for warning in tollgate_config::warnings(&config) {
        tracing::warn!(field = %warning.path, "{}", warning.message);
    }
    // Counters: in Redis, shared by every node using it, when
    // `storage.redis` is set; else in this node's memory, with quota counts
    // saved to the store.
    let memory = Arc::new(MemoryCounters::new());
    let redis = match config
        .storage
        .redis_url()
        .map_err(|message| anyhow::anyhow!("storage.redis: {message}"))?
    {
        None => None,
        Some(url) => {
            let options = RedisOptions {
                prefix: config.storage.redis_prefix.clone(),
                ..RedisOptions::default()
            };
            let redis = RedisCounters::start(&url, options, REDIS_STARTUP_WAIT)
                .await
                .map_err(|e| anyhow::anyhow!("storage.redis: {e}"))?;
            Some(Arc::new(redis))
        }
    };
    // Published by the heartbeat task; what `on_store_failure: local` divides by.
    let live_nodes = Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let counters: Arc<dyn CounterStore> = match &redis {
        Some(redis) => {
            let cluster = Arc::new(tollgate_policy::counters_cluster::ClusterCounters::new(
                redis.clone(),
                memory.clone(),
                live_nodes.clone(),
            ));
            cluster.spawn_sync();
            cluster
        }
        None => memory.clone(),
    };
    let signing_key = policy_state::signing_key(&config).map_err(|e| anyhow::anyhow!(e))?;
    // Refuse a file that cannot compile on its own (unreadable CA files and
    // the like) before the database is created.
    check_compiles(&config).map_err(invalid_config)?;

    let url = database_url(&config)?;
    let sealer = Arc::new(open_sealer(&policy_state::data_dir(&config))?);
    let cache = snapshot_cache_path(&config, &url).map(|p| Arc::new(SnapshotCache::new(p)));
    // The store is the source of truth: the file's resources are applied to
    // it, then everything it holds is served. When it cannot be reached,
    // the snapshot cache is served until it answers.
    let (store, state, merged, from_cache) = match tollgate_store::Store::open(&url) {
        Ok(store) => {
            let (state, merged) =
                apply_file_to_store(&store, &sealer, &config, config_path.as_deref())?;
            (store, state, merged, false)
        }
        Err(error) if error.is_unavailable() => {
            let (store, state, merged) =
                open_from_cache(&url, error, cache.as_deref(), &sealer, &config)?;
            (store, state, merged, true)
        }
        Err(error) => {
            return Err(anyhow::Error::new(error).context(format!(
                "cannot open the database {}",
                tollgate_store::redact_database_url(&config.storage.database)
            )))
        }
    };
    let registries =
        PolicyRegistries::new(counters.clone(), signing_key).with_live_nodes(live_nodes.clone());
    let compiled = DataPlane::compile(Arc::new(merged), registries).map_err(invalid_config)?;
    let mut sinks: Vec<Box<dyn RecordSink>> = vec![Box::new(access_record_sink(&store, &config)?)];
    if let Some(file) = &config.access_log.file {
        let sink = FileSink::open(file)
            .with_context(|| format!("cannot open the access log {}", file.display()))?;
        sinks.push(Box::new(sink));
    }
    let access_log = AccessLog::start(
        config.access_log.buffer.unwrap_or(DEFAULT_LOG_BUFFER),
        sinks,
    );
    let persistence: Arc<dyn CounterPersistence> =
        Arc::new(policy_state::StoreCounters(store.clone()));
    // Loaded once the database answers (counts merge by maximum).
    let quota_restore =
        (redis.is_none() && from_cache).then(|| (memory.clone(), persistence.clone()));
    if redis.is_none() && !from_cache {
        let restored = memory
            .restore(persistence.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot load the quota counters: {e}"))?;
        tracing::debug!(restored, "quota counters loaded");
    }
    // With Redis the memory store stays empty: its flusher has nothing to save.
    let quota_flusher = spawn_flusher(memory, persistence, QUOTA_FLUSH_EVERY);

    let data_plane = compiled.start(access_log.clone());
    let data_plane = Arc::new(data_plane);

    let proxy_listener = tollgate_proxy::server::bind(config.listen.proxy)
        .with_context(|| format!("cannot listen on {}", config.listen.proxy))?;
    let tls_listener = match &config.listen.tls {
        Some(tls) => Some(
            tollgate_proxy::server::bind(tls.addr)
                .with_context(|| format!("cannot listen on {}", tls.addr))?,
        ),
        None => None,
    };
    let admin_listener = tollgate_proxy::server::bind(config.listen.admin)
        .with_context(|| format!("cannot listen on {}", config.listen.admin))?;
    tracing::info!(
        proxy = %config.listen.proxy,
        admin = %config.listen.admin,
        tls = ?config.listen.tls.as_ref().map(|t| t.addr),
        "tollgate listening"
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let bootstrap = if from_cache {
        // Admin tokens live in the store: checked when it answers.
        tollgate_admin::bootstrap::Bootstrap::Existing
    } else {
        tollgate_admin::bootstrap::ensure_admin_token(
            &store,
            &policy_state::data_dir(&config),
            std::env::var(tollgate_admin::bootstrap::ADMIN_TOKEN_ENV).ok(),
        )
        .map_err(|e| anyhow::anyhow!("admin token: {e}"))?
    };
    match &bootstrap {
        tollgate_admin::bootstrap::Bootstrap::Generated(path) => tracing::info!(
            path = %path.display(),
            "generated the first admin token; it is in this file (readable by this user only)"
        ),
        tollgate_admin::bootstrap::Bootstrap::FromEnvironment => tracing::info!(
            "stored the first admin token from {}",
            tollgate_admin::bootstrap::ADMIN_TOKEN_ENV
        ),
        tollgate_admin::bootstrap::Bootstrap::Existing => {}
    }
    let control = ControlPlane::new(
        store.clone(),
        sealer.clone(),
        data_plane.clone(),
        (*config).clone(),
        state,
    );
    if from_cache {
        control.store_down("the database is unreachable: serving the snapshot cache");
    }
    if let Some(cache) = cache {
        control.set_snapshot_cache(cache);
    }
    if from_cache {
        tokio::spawn(reconnect_then_follow(
            control.clone(),
            sealer.clone(),
            config.clone(),
            config_path.clone(),
            quota_restore,
            shutdown_rx.clone(),
        ));
    } else {
        tokio::spawn(control.clone().follow(shutdown_rx.clone()));
    }
    tokio::spawn(tollgate_admin::nodes::heartbeat(
        control.clone(),
        tollgate_admin::nodes::NodeIdentity::new(&config),
        live_nodes.clone(),
        shutdown_rx.clone(),
    ));
    tokio::spawn(retention::run(
        store.clone(),
        config.access_log.retention.get(),
        shutdown_rx.clone(),
    ));
    let admin_api = tollgate_admin::api::router(tollgate_admin::api::AdminApi {
        control: control.clone(),
        store: store.clone(),
    });
    let admin_state = tollgate_admin::AdminState {
        ready: ready.clone(),
        console: Some(tollgate_admin::console::router(admin_api.clone())),
        api: Some(admin_api),
    };
    let mut admin_shutdown = shutdown_rx.clone();
    let admin = tokio::spawn(tollgate_admin::serve(
        admin_listener,
        admin_state,
        async move {
            let _ = admin_shutdown.wait_for(|stop| *stop).await;
        },
    ));

    // The signal handlers are installed here, before the node says it is
    // ready, not in the tasks that wait on them: a task spawned may not have
    // run yet when the first requests are served, and until a handler is in
    // place SIGHUP, SIGTERM and SIGINT end the process at once.
    if let Some(path) = config_path {
        let hangup = listen(
            SignalKind::hangup(),
            "SIGHUP; reloading on file changes only",
        );
        tokio::spawn(reload::watch(
            path,
            control.clone(),
            shutdown_rx.clone(),
            hangup,
        ));
    }
    tokio::spawn(wait_for_termination(termination_signals(), shutdown_tx));

    ready.store(true, Ordering::SeqCst);
    let grace = config.shutdown_grace.get();
    let drained = data_plane
        .serve(
            Listeners {
                proxy: proxy_listener,
                tls: tls_listener,
            },
            shutdown_rx,
            grace,
        )
        .await;
    ready.store(false, Ordering::SeqCst);
    if drained {
        tracing::info!("all connections drained");
    } else {
        tracing::warn!(
            ?grace,
            "grace period over: closing the remaining connections"
        );
    }
    if let Err(error) = quota_flusher.flush().await {
        tracing::warn!(%error, "the last quota counts could not be saved");
    }
    access_log.flush().await;
    let _ = admin.await;
    tracing::info!("stopped");
    Ok(())
}

/// The database's access-record sink; with PostgreSQL, spooling to
/// `storage.spool.path` (default `<data dir>/access-spool`) while the
/// database is unreachable.
fn access_record_sink(
    store: &Store,
    config: &Config,
) -> anyhow::Result<tollgate_store::StoreRecordSink> {
    let Store::Postgres(pg) = store else {
        return store
            .access_record_sink()
            .context("cannot open the access-record sink");
    };
    let spool = &config.storage.spool;
    let dir = spool
        .path
        .clone()
        .unwrap_or_else(|| policy_state::data_dir(config).join(ACCESS_SPOOL_DIR));
    let sink = pg
        .access_record_sink()
        .and_then(|sink| sink.with_spool(&dir, spool.max_size.bytes()))
        .with_context(|| {
            format!(
                "cannot open the access-record spool {} (storage.spool.path)",
                dir.display()
            )
        })?;
    Ok(tollgate_store::StoreRecordSink::Postgres(Box::new(sink)))
}

/// The snapshot cache's file: `storage.snapshot_cache`, else
/// `<data dir>/last-good.snapshot` with PostgreSQL; none by default with
/// SQLite, which is local (there when the node is).
fn snapshot_cache_path(config: &Config, url: &str) -> Option<PathBuf> {
    config.storage.snapshot_cache.clone().or_else(|| {
        tollgate_store::is_postgres_url(url)
            .then(|| policy_state::data_dir(config).join(SNAPSHOT_CACHE_FILE))
    })
}

/// Start-up while the database is unreachable: the store, not connected,
/// and the snapshot cache's resources with the configuration they make
/// (validated and compiled by the caller like the store's). Without a
/// cache, or with one that does not open, start-up fails with `error`.
fn open_from_cache(
    url: &str,
    error: tollgate_store::StoreError,
    cache: Option<&SnapshotCache>,
    sealer: &Sealer,
    config: &Config,
) -> anyhow::Result<(Store, ConfigState, Config)> {
    let database = tollgate_store::redact_database_url(&config.storage.database);
    let Some(cache) = cache else {
        return Err(anyhow::Error::new(error).context(format!(
            "cannot open the database {database} (and no storage.snapshot_cache is set to serve meanwhile)"
        )));
    };
    let state = match cache.load(sealer) {
        Ok(Some(state)) => state,
        Ok(None) => {
            return Err(anyhow::Error::new(error).context(format!(
                "cannot open the database {database}, and there is no snapshot cache at {} to serve meanwhile",
                cache.path().display()
            )))
        }
        Err(cache_error) => {
            return Err(anyhow::Error::new(error).context(format!(
                "cannot open the database {database}, nor the snapshot cache {} ({cache_error})",
                cache.path().display()
            )))
        }
    };
    let merged = control::assemble(config, &state).map_err(|error| match error {
        WriteError::Invalid(errors) => invalid_config(errors),
        other => anyhow::anyhow!("{other}"),
    })?;
    let store = Store::open_unconnected(url)
        .expect("only PostgreSQL is unreachable")
        .context("storage.database")?;
    tracing::error!(
        %error,
        database = %database,
        revision = state.revision,
        cache = %cache.path().display(),
        "THE DATABASE IS UNREACHABLE: serving configuration revision {} from the snapshot cache; \
         changes are refused until it answers",
        state.revision
    );
    Ok((store, state, merged))
}

/// Retries the store (backing off up to [`RECONNECT_MAX_BACKOFF`]) until it
/// answers; then runs its migrations, applies the file's resources to it,
/// takes writes again and follows it, which brings its revision.
async fn reconnect_then_follow(
    control: Arc<ControlPlane>,
    sealer: Arc<Sealer>,
    config: Arc<Config>,
    config_path: Option<PathBuf>,
    quota_restore: Option<(Arc<MemoryCounters>, Arc<dyn CounterPersistence>)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        let store = control.store().clone();
        match tokio::task::spawn_blocking(move || store.migrate()).await {
            Ok(Ok(())) => break,
            Ok(Err(error)) => tracing::debug!(%error, "the database is still unreachable"),
            Err(error) => tracing::warn!(%error, "the reconnecting task failed"),
        }
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RECONNECT_MAX_BACKOFF);
    }
    let store = control.store().clone();
    let applied = tokio::task::spawn_blocking(move || {
        apply_file_to_store(&store, &sealer, &config, config_path.as_deref()).map(|_| ())
    })
    .await;
    match applied {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::error!("cannot apply the configuration file to the store: {error:#}")
        }
        Err(error) => tracing::error!(%error, "applying the configuration file failed"),
    }
    if let Some((memory, persistence)) = quota_restore {
        match memory.restore(persistence).await {
            Ok(restored) => tracing::debug!(restored, "quota counters loaded"),
            Err(error) => tracing::warn!(%error, "cannot load the quota counters"),
        }
    }
    control.store_up();
    tracing::warn!(
        "the database answers again: following it; no longer serving from the snapshot cache"
    );
    control.follow(shutdown).await;
}

/// The master key (`TOLLGATE_MASTER_KEY`, else `<data dir>/master-key`,
/// created on first start) and, after an interrupted rotation, the new key
/// too, so every stored value opens.
fn open_sealer(data_dir: &Path) -> anyhow::Result<Sealer> {
    let (key, source) = MasterKey::load_or_create(std::env::var(MASTER_KEY_ENV).ok(), data_dir)
        .map_err(|e| anyhow::anyhow!("master key: {e}"))?;
    match &source {
        KeySource::Created(path) => tracing::info!(
            path = %path.display(),
            key_id = %key.id(),
            "generated the master key that seals stored secrets; back this file up"
        ),
        KeySource::File(_) | KeySource::Environment => {
            tracing::debug!(key_id = %key.id(), "master key loaded")
        }
    }
    let mut sealer = Sealer::new(key);
    let pending = data_dir.join(PENDING_MASTER_KEY_FILE);
    if source != KeySource::Environment && pending.exists() {
        let text = std::fs::read_to_string(&pending)
            .with_context(|| format!("cannot read {}", pending.display()))?;
        let key =
            MasterKey::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", pending.display()))?;
        tracing::warn!(
            path = %pending.display(),
            "a master key rotation was interrupted; run `tollgate rotate-master-key` again"
        );
        sealer = sealer.also_opening(key);
    }
    Ok(sealer)
}

/// Applies the file's resources to the store (see
/// [`tollgate_admin::control::sync_edits`]) and returns what the store then
/// holds with the configuration it makes. Without a file, the store's
/// resources are served as they are.
fn apply_file_to_store(
    store: &Store,
    sealer: &Sealer,
    file: &Config,
    path: Option<&Path>,
) -> anyhow::Result<(ConfigState, Config)> {
    // Nodes sharing a database and starting together race to apply the same
    // file: the loser plans again against the winner's revision.
    for _ in 0..STARTUP_SYNC_ATTEMPTS - 1 {
        match try_apply_file_to_store(store, sealer, file, path) {
            Err(error)
                if error.chain().any(|cause| {
                    matches!(
                        cause.downcast_ref::<tollgate_store::StoreError>(),
                        Some(
                            tollgate_store::StoreError::Stale { .. }
                                | tollgate_store::StoreError::Conflict { .. }
                                | tollgate_store::StoreError::Exists { .. }
                                | tollgate_store::StoreError::Missing { .. }
                        )
                    )
                }) =>
            {
                tracing::debug!(%error, "another node changed the store meanwhile; applying the file again");
            }
            other => return other,
        }
    }
    try_apply_file_to_store(store, sealer, file, path)
}

/// The snapshot cache's file name in the data directory.
const SNAPSHOT_CACHE_FILE: &str = "last-good.snapshot";
/// The access-record spool's directory in the data directory, by default.
const ACCESS_SPOOL_DIR: &str = "access-spool";
/// The longest wait between attempts to reach the database after starting
/// without it.
const RECONNECT_MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(3);

/// How often start-up tries to apply the file when other nodes write meanwhile.
const STARTUP_SYNC_ATTEMPTS: usize = 5;

fn try_apply_file_to_store(
    store: &Store,
    sealer: &Sealer,
    file: &Config,
    path: Option<&Path>,
) -> anyhow::Result<(ConfigState, Config)> {
    let state = store
        .load_resources(sealer)
        .context("cannot read the configuration from the store")?;
    let edits = match path {
        Some(_) => control::sync_edits(&state, file, Origin::File, false),
        None => Vec::new(),
    };
    let actor = Actor {
        name: match path {
            Some(path) => format!("file:{}", path.display()),
            None => "defaults".into(),
        },
        client_ip: None,
    };
    let plan = control::plan(file, &state, &edits, &actor).map_err(|error| match error {
        WriteError::Invalid(errors) => invalid_config(errors),
        other => anyhow::anyhow!("{other}"),
    })?;
    if plan.writes.is_empty() {
        return Ok((state, plan.config));
    }
    let revision = store
        .commit(sealer, Some(state.revision), &plan.writes, &plan.audit)
        .context("cannot apply the configuration file to the store")?;
    tracing::info!(
        revision,
        changes = plan.writes.len(),
        "applied the configuration file's resources to the store"
    );
    let state = store
        .load_resources(sealer)
        .context("cannot read the configuration from the store")?;
    Ok((state, plan.config))
}

/// `storage.database`, its `env:NAME` resolved (validated at load already).
fn database_url(config: &Config) -> anyhow::Result<String> {
    config
        .storage
        .url()
        .map_err(|message| anyhow::anyhow!("storage.database: {message}"))
}

fn invalid_config(errors: Vec<ConfigError>) -> anyhow::Error {
    let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
    anyhow::anyhow!("invalid configuration:\n{}", lines.join("\n"))
}

/// A handler for `kind` from now on; `None`, logged with `what` it means,
/// if it cannot be installed.
fn listen(kind: SignalKind, what: &str) -> Option<Signal> {
    match signal(kind) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::error!(%error, "cannot listen for {what}");
            None
        }
    }
}

/// SIGTERM and SIGINT, listened for from now on (see where `serve` calls it).
fn termination_signals() -> Option<(Signal, Signal)> {
    Some((
        listen(SignalKind::terminate(), "SIGTERM")?,
        listen(SignalKind::interrupt(), "SIGINT")?,
    ))
}

/// SIGTERM or Ctrl-C: stop accepting and drain.
async fn wait_for_termination(signals: Option<(Signal, Signal)>, shutdown: watch::Sender<bool>) {
    let Some((mut term, mut interrupt)) = signals else {
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = interrupt.recv() => tracing::info!("interrupt: draining"),
    }
    let _ = shutdown.send(true);
}
