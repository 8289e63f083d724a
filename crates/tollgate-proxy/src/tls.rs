//! TLS termination: certificates chosen by SNI, ALPN for HTTP/2.
//!
//! The certificate set sits behind an `ArcSwap`, so a reload that changes the
//! files serves the new certificates to new handshakes without restarting
//! the listener.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tollgate_config::{CertificateFiles, ConfigError};

/// A loaded certificate and the names it is valid for.
struct NamedCert {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// Certificates read and parsed, ready for [`SniResolver::replace`].
pub struct LoadedCertificates(Vec<NamedCert>);

impl LoadedCertificates {
    pub fn load(files: &[CertificateFiles]) -> Result<LoadedCertificates, Vec<ConfigError>> {
        Ok(LoadedCertificates(load_all(files)?))
    }
}

/// Picks the certificate for a handshake's SNI: an exact name, then a
/// wildcard, then the first certificate.
pub struct SniResolver {
    certs: ArcSwap<Vec<NamedCert>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver").finish_non_exhaustive()
    }
}

impl SniResolver {
    pub fn load(files: &[CertificateFiles]) -> Result<Arc<SniResolver>, Vec<ConfigError>> {
        Ok(Arc::new(SniResolver {
            certs: ArcSwap::from_pointee(load_all(files)?),
        }))
    }

    /// Replaces the certificates (on reload).
    pub fn reload(&self, files: &[CertificateFiles]) -> Result<(), Vec<ConfigError>> {
        self.replace(LoadedCertificates::load(files)?);
        Ok(())
    }

    /// Serves `certs` from the next handshake on.
    pub fn replace(&self, certs: LoadedCertificates) {
        self.certs.store(Arc::new(certs.0));
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        if let Some(sni) = sni.map(str::to_ascii_lowercase) {
            if let Some(cert) = certs.iter().find(|c| c.names.contains(&sni)) {
                return Some(cert.key.clone());
            }
            let wildcard = certs.iter().find(|c| {
                c.names.iter().any(|n| {
                    n.strip_prefix("*.").is_some_and(|suffix| {
                        sni.split_once('.').is_some_and(|(_, rest)| rest == suffix)
                    })
                })
            });
            if let Some(cert) = wildcard {
                return Some(cert.key.clone());
            }
        }
        certs.first().map(|c| c.key.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// The rustls configuration of the TLS listener.
pub fn server_config(
    resolver: Arc<SniResolver>,
    client_ca: Option<Arc<rustls::RootCertStore>>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        // Asked, not required: APIs without the `mtls` method stay reachable
        // without a certificate, and the `auth` policy decides per API.
        Some(roots) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load_all(files: &[CertificateFiles]) -> Result<Vec<NamedCert>, Vec<ConfigError>> {
    let mut certs = Vec::new();
    let mut errors = Vec::new();
    for (i, pair) in files.iter().enumerate() {
        match load_one(pair) {
            Ok(cert) => certs.push(cert),
            Err(message) => errors.push(ConfigError::new(
                format!("listen.tls.certificates[{i}]"),
                message,
            )),
        }
    }
    if errors.is_empty() {
        Ok(certs)
    } else {
        Err(errors)
    }
}

fn load_one(files: &CertificateFiles) -> Result<NamedCert, String> {
    let cert_pem = std::fs::read(&files.cert)
        .map_err(|e| format!("cannot read {}: {e}", files.cert.display()))?;
    let key_pem = std::fs::read(&files.key)
        .map_err(|e| format!("cannot read {}: {e}", files.key.display()))?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate file {}: {e}", files.cert.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("no certificate in {}", files.cert.display()));
    };
    let names = certificate_names(leaf.as_ref())?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("bad key file {}: {e}", files.key.display()))?
        .ok_or_else(|| format!("no private key in {}", files.key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unusable private key {}: {e}", files.key.display()))?;
    Ok(NamedCert {
        names,
        key: Arc::new(CertifiedKey::new(chain, signing_key)),
    })
}

/// The DNS names of a certificate: its subject alternative names, or its common name.
fn certificate_names(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("cannot parse certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// The CA certificates that client certificates must chain to.
pub fn load_client_roots(path: &std::path::Path) -> Result<Arc<rustls::RootCertStore>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(Arc::new(roots))
}

/// What the pipeline needs of a verified client certificate.
pub fn client_cert(der: &[u8]) -> tollgate_policy::credentials::ClientCert {
    use sha2::Digest;
    let fingerprint: [u8; 32] = sha2::Sha256::digest(der).into();
    let subject = x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert.subject().to_string())
        .unwrap_or_default();
    tollgate_policy::credentials::ClientCert {
        fingerprint,
        subject: tollgate_policy::credentials::normalize_subject(&subject),
    }
}
