//! TLS material, loaded and parsed once at start-up: the public listener's server config (client
//! certificates required and verified against the client-CA bundle) and the client configs used to
//! reach the registries.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::metrics::Handshakes;
use crate::registry::RegistryKind;

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

/// A client config for reaching a registry over TLS: trust `ca` (the system's webpki roots are not
/// used — a registry CA must be configured), present `cert`/`key` when given. Every full
/// handshake (a server certificate verified) is counted in `handshakes`; session resumption is on
/// (rustls' in-memory cache, shared by every connection made with this config).
pub fn registry_client_config(
    section: &'static str,
    ca: Option<&Path>,
    cert_key: Option<(&Path, &Path)>,
    handshakes: (Handshakes, RegistryKind),
) -> Result<ClientConfig, TlsError> {
    install_crypto_provider();
    let builder = match ca {
        Some(ca) => {
            let roots = Arc::new(load_roots(section, ca)?);
            let inner = WebPkiServerVerifier::builder(roots)
                .build()
                .map_err(|e| err(section, ca, e))?;
            ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(CountingVerifier {
                    inner,
                    handshakes: handshakes.0,
                    registry: handshakes.1,
                }))
        }
        // Only for plain http:// registries: no server can be verified with no roots.
        None => ClientConfig::builder().with_root_certificates(RootCertStore::empty()),
    };
    let cfg = match cert_key {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(section, cert)?, load_key(section, key)?)
            .map_err(|e| err(section, key, format!("does not match the certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(cfg)
}

/// The standard webpki verification, counting each server certificate it verifies: one per full
/// TLS handshake (a resumed session is not verified again).
#[derive(Debug)]
struct CountingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    handshakes: Handshakes,
    registry: RegistryKind,
}

impl ServerCertVerifier for CountingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.handshakes
            .record(self.registry, Some(rustls::HandshakeKind::Full));
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
