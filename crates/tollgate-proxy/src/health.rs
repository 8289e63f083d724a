//! Active health checks: one task per service that probes each target.
//!
//! Targets start healthy; `unhealthy_after` failed probes in a row take one
//! out of rotation and `healthy_after` good ones bring it back. Tasks are kept
//! across reloads while a service's check and targets stay the same.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{Request, Uri};
use tokio::task::JoinHandle;
use tollgate_config::HealthCheck;

use crate::body::RequestBody;
use crate::snapshot::{ServiceRuntime, Snapshot};
use crate::upstream::TargetState;

/// A running check: what it was started for, and its task.
struct CheckTask {
    check: HealthCheck,
    urls: Vec<Arc<str>>,
    handle: JoinHandle<()>,
}

#[derive(Default)]
pub struct HealthChecker {
    tasks: Mutex<HashMap<String, CheckTask>>,
}

impl HealthChecker {
    /// Starts, keeps or stops checks to match the snapshot.
    pub fn reconcile(&self, snapshot: &Snapshot) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let config = &snapshot.config;
        let mut wanted: HashMap<&str, &HealthCheck> = HashMap::new();
        for service in &config.services {
            if let Some(check) = &service.upstream.health_check {
                wanted.insert(service.name.as_str(), check);
            }
        }
        tasks.retain(
            |name,
             CheckTask {
                 check,
                 urls,
                 handle,
             }| {
                let keep = match (wanted.get(name.as_str()), snapshot.services.get(name)) {
                    (Some(wanted_check), Some(runtime)) => {
                        *wanted_check == check
                            && runtime
                                .targets
                                .iter()
                                .map(|t| t.url.clone())
                                .eq(urls.iter().cloned())
                    }
                    _ => false,
                };
                if !keep {
                    handle.abort();
                    // Without a check, nothing would ever bring a target back: mark them healthy.
                    if let Some(runtime) = snapshot.services.get(name) {
                        for target in &runtime.targets {
                            if !target.is_healthy() {
                                target.set_healthy(true);
                            }
                        }
                    }
                }
                keep
            },
        );
        for (name, check) in wanted {
            if tasks.contains_key(name) {
                continue;
            }
            let Some(runtime) = snapshot.services.get(name) else {
                continue;
            };
            let urls = runtime.targets.iter().map(|t| t.url.clone()).collect();
            let handle = tokio::spawn(run_checks(runtime.clone(), check.clone()));
            tasks.insert(
                name.to_string(),
                CheckTask {
                    check: check.clone(),
                    urls,
                    handle,
                },
            );
        }
    }

    pub fn stop_all(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        for (_, task) in tasks.drain() {
            task.handle.abort();
        }
    }
}

async fn run_checks(service: Arc<ServiceRuntime>, check: HealthCheck) {
    let mut counters = vec![(0u32, 0u32); service.targets.len()];
    let mut interval = tokio::time::interval(check.interval.get());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let probes = service
            .targets
            .iter()
            .map(|target| probe(&service, target, &check));
        let results = futures_util::future::join_all(probes).await;
        for ((target, ok), (successes, failures)) in
            service.targets.iter().zip(results).zip(counters.iter_mut())
        {
            if ok {
                *successes += 1;
                *failures = 0;
                if !target.is_healthy() && *successes >= check.healthy_after {
                    tracing::info!(service = %service.name, target = %target.url, "upstream target healthy again");
                    target.set_healthy(true);
                }
            } else {
                *failures += 1;
                *successes = 0;
                if target.is_healthy() && *failures >= check.unhealthy_after {
                    tracing::warn!(service = %service.name, target = %target.url, "upstream target unhealthy");
                    target.set_healthy(false);
                }
            }
        }
    }
}

/// One probe: a GET of the check path; any 2xx or 3xx within the timeout passes.
async fn probe(service: &ServiceRuntime, target: &TargetState, check: &HealthCheck) -> bool {
    let path = format!("{}{}", target.base_path, check.path);
    let Ok(uri) = Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(path)
        .build()
    else {
        return false;
    };
    let mut request = Request::new(RequestBody::empty());
    *request.uri_mut() = uri;
    request.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("tollgate-health-check"),
    );
    if service.http2 {
        *request.version_mut() = http::Version::HTTP_2;
    }
    match tokio::time::timeout(check.timeout.get(), service.client.request(request)).await {
        Ok(Ok(response)) => {
            let ok = response.status().is_success() || response.status().is_redirection();
            // Drain the body so the connection can be reused.
            let _ = http_body_util::BodyExt::collect(response.into_body()).await;
            ok
        }
        _ => false,
    }
}
