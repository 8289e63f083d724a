//! Pooled upstream clients, shared across snapshots.
//!
//! hyper's client keeps one pool per (scheme, authority); we keep one client
//! per distinct connection setting (CA, timeouts, protocol), so a reload that
//! does not change those settings keeps every warm connection.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tollgate_config::UpstreamProtocol;

use crate::body::RequestBody;

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub ca: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub protocol: UpstreamProtocol,
}

#[derive(Default)]
pub struct ClientRegistry {
    clients: Mutex<HashMap<ClientKey, UpstreamClient>>,
}

impl ClientRegistry {
    pub fn get(&self, key: &ClientKey) -> Result<UpstreamClient, String> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(key) {
            return Ok(client.clone());
        }
        let client = build_client(key)?;
        clients.insert(key.clone(), client.clone());
        Ok(client)
    }
}

fn build_client(key: &ClientKey) -> Result<UpstreamClient, String> {
    let roots = match &key.ca {
        Some(path) => load_ca(path)?,
        None => system_roots().clone(),
    };
    // ALPN is set by the connector builder from the protocols enabled below.
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(key.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));

    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = match key.protocol {
        UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
        UpstreamProtocol::Http2 => builder.enable_http2().wrap_connector(http),
        UpstreamProtocol::Auto => builder.enable_http1().enable_http2().wrap_connector(http),
    };
    let mut client = Client::builder(TokioExecutor::new());
    client
        .pool_idle_timeout(key.idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http1_preserve_header_case(false)
        .http2_adaptive_window(true);
    if key.protocol == UpstreamProtocol::Http2 {
        client.http2_only(true);
    }
    Ok(client.build(connector))
}

fn system_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut store = rustls::RootCertStore::empty();
        let loaded = rustls_native_certs::load_native_certs();
        for cert in loaded.certs {
            let _ = store.add(cert);
        }
        store
    })
}

fn load_ca(path: &PathBuf) -> Result<rustls::RootCertStore, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    let mut store = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("bad CA file {}: {e}", path.display()))?;
        store
            .add(cert)
            .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
    }
    if store.is_empty() {
        return Err(format!("no certificate in CA file {}", path.display()));
    }
    Ok(store)
}
