//! Self-signed certificates written to files, and clients that trust them.

use std::path::PathBuf;
use std::sync::Arc;

use tempfile::TempDir;

/// A self-signed certificate and its private key, as PEM files in a temporary
/// directory (removed when the last clone is dropped) and in memory.
#[derive(Clone)]
pub struct TlsFiles {
    /// The names (DNS names or IP addresses) the certificate is valid for.
    pub names: Vec<String>,
    pub cert_pem_path: PathBuf,
    pub key_pem_path: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    _dir: Arc<TempDir>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("names", &self.names)
            .field("cert_pem_path", &self.cert_pem_path)
            .field("key_pem_path", &self.key_pem_path)
            .finish_non_exhaustive()
    }
}

/// Generates a self-signed certificate for `names` (strings that parse as IP
/// addresses become IP names) and writes `cert.pem` and `key.pem`.
pub fn self_signed(names: &[&str]) -> TlsFiles {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let certified = rcgen::generate_simple_self_signed(names.clone())
        .unwrap_or_else(|e| panic!("generating a certificate for {names:?} failed: {e}"));
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let cert_pem = certified.cert.pem();
    let key_pem = certified.key_pair.serialize_pem();
    let cert_pem_path = dir.path().join("cert.pem");
    let key_pem_path = dir.path().join("key.pem");
    std::fs::write(&cert_pem_path, &cert_pem).expect("write cert.pem");
    std::fs::write(&key_pem_path, &key_pem).expect("write key.pem");
    TlsFiles {
        names,
        cert_pem_path,
        key_pem_path,
        cert_pem,
        key_pem,
        cert_der: certified.cert.der().to_vec(),
        key_der: certified.key_pair.serialize_der(),
        _dir: Arc::new(dir),
    }
}

impl TlsFiles {
    /// The certificate as a reqwest trust root.
    pub fn certificate(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_der(&self.cert_der).expect("a generated certificate parses")
    }

    /// A client builder trusting only this certificate, with no proxy and no
    /// automatic redirects; add `.resolve(name, addr)` to reach a name served
    /// on a test port.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .tls_built_in_root_certs(false)
            .add_root_certificate(self.certificate())
    }

    /// A client trusting only this certificate (see [`TlsFiles::client_builder`]).
    pub fn client(&self) -> reqwest::Client {
        self.client_builder()
            .build()
            .expect("build a reqwest client")
    }
}
