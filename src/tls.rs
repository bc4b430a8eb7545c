//! TLS material, loaded and parsed once at start-up: the public listener's server config (client
//! certificates required and verified against the client-CA bundle) and the client configs used to
//! reach the registries.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS material could not be loaded. Names the file, never prints key material.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {reason}")]
pub struct TlsError {
    pub what: &'static str,
    pub path: String,
    pub reason: String,
}

fn err(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError {
        what,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The process-wide crypto provider (ring). Installed once; later calls are no-ops.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(what, path, e))?;
    if certs.is_empty() {
        return Err(err(what, path, "holds no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

pub fn load_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The parse error names the PEM section, not its content, so it is safe to show.
    PrivateKeyDer::from_pem_file(path).map_err(|e| err(what, path, e))
}

pub fn load_roots(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(what, path)? {
        roots.add(cert).map_err(|e| err(what, path, e))?;
    }
    Ok(roots)
}

/// The public listener's config: mutual TLS, ALPN `h2` and `http/1.1`.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    install_crypto_provider();
    let chain = load_certs("tls.cert", cert)?;
    let key_der = load_key("tls.key", key)?;
    let roots = load_roots("tls.client_ca", client_ca)?;
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| err("tls.client_ca", client_ca, e))?;
    let mut cfg = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|e| err("tls.key", key, format!("does not match tls.cert: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client config for reaching a registry over TLS: trust `ca` (else the system's webpki roots
/// are not used — a registry CA must be configured), present `cert`/`key` when given.
pub fn registry_client_config(
    section: &'static str,
    ca: Option<&Path>,
    cert_key: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    install_crypto_provider();
    let roots = match ca {
        Some(ca) => load_roots(section, ca)?,
        None => RootCertStore::empty(),
    };
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let cfg = match cert_key {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(section, cert)?, load_key(section, key)?)
            .map_err(|e| err(section, key, format!("does not match the certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(cfg)
}
