//! Hot reload: on SIGHUP, or when the configuration file's content changes,
//! apply its node settings and resources through the control plane (its
//! resources go to the store, audited). An invalid file is logged and
//! ignored; the running configuration keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::Signal;
use tokio::sync::watch;
use tollgate_admin::control::{Actor, ControlPlane};

/// How often the file is checked for changes.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Reloads on `hangup` (SIGHUP, listened for by the caller before the node
/// says it is ready; `None` if it could not be) and on a changed file.
pub async fn watch(
    path: PathBuf,
    control: Arc<ControlPlane>,
    mut shutdown: watch::Receiver<bool>,
    mut hangup: Option<Signal>,
) {
    let mut last = std::fs::read(&path).ok();
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = poll.tick() => false,
            Some(_) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let current = match tokio::fs::read(&path).await {
            Ok(current) => current,
            Err(error) => {
                if forced {
                    tracing::error!(path = %path.display(), %error, "reload failed: cannot read the configuration");
                }
                continue;
            }
        };
        if !forced && last.as_deref() == Some(current.as_slice()) {
            continue;
        }
        last = Some(current.clone());
        reload(&path, &current, &control).await;
    }
}

async fn reload(path: &std::path::Path, content: &[u8], control: &ControlPlane) {
    let text = String::from_utf8_lossy(content);
    let config = match tollgate_config::from_yaml(&text) {
        Ok(config) => config,
        Err(errors) => {
            for error in &errors {
                tracing::error!(path = %path.display(), %error, "reload rejected: invalid configuration; the previous one keeps serving");
            }
            return;
        }
    };
    let running = control.config();
    if config.listen != running.listen || config.storage != running.storage {
        tracing::warn!("listen and storage changes take effect after a restart");
    }
    let actor = Actor {
        name: format!("file:{}", path.display()),
        client_ip: None,
    };
    match control.sync_file(&actor, &config).await {
        Ok(committed) => tracing::info!(
            path = %path.display(),
            revision = committed.revision,
            changes = committed.changes.len(),
            "configuration reloaded"
        ),
        Err(tollgate_admin::control::WriteError::Invalid(errors)) => {
            for error in &errors {
                tracing::error!(path = %path.display(), %error, "reload rejected; the previous configuration keeps serving");
            }
        }
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "reload failed; the previous configuration keeps serving")
        }
    }
}
