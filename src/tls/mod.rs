//! TLS material, loaded and parsed once at start-up and on a reload ([`reload`]): the public listener's server config (client
//! certificates required and verified against the client-CA bundle) and the client configs used to
//! reach the registries.

pub mod reload;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::NamedGroup;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, ResolvesClientCert, Resumption,
    Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::TlsConfig;
use crate::metrics::Handshakes;
use crate::registry::RegistryKind;
pub use reload::Certs;

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
    Ok(Arc::new(build_server_config(cert, key, client_ca)?))
}

fn build_server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<ServerConfig, TlsError> {
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
    Ok(cfg)
}

/// The public listener's TLS config, swapped whole on a reload: each new connection takes the
/// current one; established connections keep theirs.
pub struct ServerTls {
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads `tls.cert`, `tls.key` and `tls.client_ca`, and registers them with `certs` so a
    /// reload (SIGHUP, a changed file) replaces them.
    pub fn load(cfg: &TlsConfig, certs: &Certs) -> Result<Arc<Self>, TlsError> {
        install_crypto_provider();
        let (cert, key, ca) = (cfg.cert.clone(), cfg.key.clone(), cfg.client_ca.clone());
        let first = build_server_config(&cert, &key, &ca)?;
        let tls = Arc::new(Self {
            current: RwLock::new(Arc::new(first)),
        });
        let target = Arc::downgrade(&tls);
        certs.add(
            "server",
            vec![cert.clone(), key.clone(), ca.clone()],
            Box::new(move || {
                let next = build_server_config(&cert, &key, &ca)?;
                let expiries = vec![
                    ("server", earliest_expiry("tls.cert", &cert)?),
                    ("client_ca", earliest_expiry("tls.client_ca", &ca)?),
                ];
                if let Some(t) = target.upgrade() {
                    *t.current.write().expect("not poisoned") = Arc::new(next);
                }
                Ok(expiries)
            }),
        )?;
        Ok(tls)
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().expect("not poisoned").clone()
    }
}

/// The earliest `notAfter` (Unix seconds) among the certificates of a PEM file; an expired one
/// is an error (a reload must not put it in service).
pub fn earliest_expiry(what: &'static str, path: &Path) -> Result<i64, TlsError> {
    let mut earliest = i64::MAX;
    for der in load_certs(what, path)? {
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| err(what, path, format!("unreadable certificate: {e}")))?;
        let not_after = cert.validity().not_after.timestamp();
        earliest = earliest.min(not_after);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if earliest <= now {
        return Err(err(what, path, "holds a certificate that has expired"));
    }
    Ok(earliest)
}

fn server_verifier(
    section: &'static str,
    ca: &Path,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let roots = Arc::new(load_roots(section, ca)?);
    WebPkiServerVerifier::builder(roots)
        .build()
        .map_err(|e| err(section, ca, e))
}

fn certified_key(
    section: &'static str,
    cert: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(
        load_certs(section, cert)?,
        load_key(section, key)?,
        &provider,
    )
    .map(Arc::new)
    .map_err(|e| err(section, key, format!("does not match the certificate: {e}")))
}

/// A client config for reaching a registry over TLS: trust `ca` (the system's webpki roots are not
/// used — a registry CA must be configured), present `cert`/`key` when given. Every full
/// handshake (a server certificate verified) is counted in `handshakes`; session resumption is on
/// (rustls' in-memory cache, shared by every connection made with this config).
///
/// The CA and the client certificate are registered with `certs`: a reload swaps them inside
/// this config, so the connections opened after it use the new ones while established
/// connections carry on.
pub fn registry_client_config(
    section: &'static str,
    ca: Option<&Path>,
    cert_key: Option<(&Path, &Path)>,
    handshakes: (Handshakes, RegistryKind),
    certs: &Certs,
) -> Result<ClientConfig, TlsError> {
    install_crypto_provider();
    let (ca, cert_key) = (
        ca.map(Path::to_path_buf),
        cert_key.map(|(c, k)| (c.to_path_buf(), k.to_path_buf())),
    );
    let verifier = match &ca {
        Some(ca) => Some(Arc::new(CountingVerifier {
            inner: RwLock::new(server_verifier(section, ca)?),
            handshakes: handshakes.0,
            registry: handshakes.1,
        })),
        None => None,
    };
    let identity = match &cert_key {
        Some((cert, key)) => Some(Arc::new(ReloadableClientCert(RwLock::new(certified_key(
            section, cert, key,
        )?)))),
        None => None,
    };
    let builder = match &verifier {
        Some(v) => ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(v.clone()),
        // Only for plain http:// registries: no server can be verified with no roots.
        None => ClientConfig::builder().with_root_certificates(RootCertStore::empty()),
    };
    let mut cfg = match &identity {
        Some(id) => builder.with_client_cert_resolver(id.clone()),
        None => builder.with_no_client_auth(),
    };
    // A resumed session skips the certificates: after a reload it would keep the old identity
    // (and the old trust decision), so a reload starts the session cache afresh.
    let sessions = Arc::new(Sessions(RwLock::new(Arc::new(
        ClientSessionMemoryCache::new(SESSION_CACHE),
    ))));
    cfg.resumption = Resumption::store(sessions.clone());
    let mut paths: Vec<PathBuf> = ca.iter().cloned().collect();
    if let Some((c, k)) = &cert_key {
        paths.extend([c.clone(), k.clone()]);
    }
    if !paths.is_empty() {
        let labels = match handshakes.1 {
            RegistryKind::Etcd => ("etcd_ca", "etcd_client"),
            RegistryKind::Consul => ("consul_ca", "consul_client"),
        };
        let (verifier, identity, sessions) = (
            verifier.as_ref().map(Arc::downgrade),
            identity.as_ref().map(Arc::downgrade),
            Arc::downgrade(&sessions),
        );
        certs.add(
            section,
            paths,
            Box::new(move || {
                // Everything is read and checked before anything is swapped in.
                let mut expiries = Vec::new();
                let next_verifier = match &ca {
                    Some(ca) => {
                        expiries.push((labels.0, earliest_expiry(section, ca)?));
                        Some(server_verifier(section, ca)?)
                    }
                    None => None,
                };
                let next_identity = match &cert_key {
                    Some((cert, key)) => {
                        expiries.push((labels.1, earliest_expiry(section, cert)?));
                        Some(certified_key(section, cert, key)?)
                    }
                    None => None,
                };
                if let (Some(v), Some(next)) =
                    (verifier.as_ref().and_then(|w| w.upgrade()), next_verifier)
                {
                    *v.inner.write().expect("not poisoned") = next;
                }
                if let (Some(id), Some(next)) =
                    (identity.as_ref().and_then(|w| w.upgrade()), next_identity)
                {
                    *id.0.write().expect("not poisoned") = next;
                }
                if let Some(s) = sessions.upgrade() {
                    *s.0.write().expect("not poisoned") =
                        Arc::new(ClientSessionMemoryCache::new(SESSION_CACHE));
                }
                Ok(expiries)
            }),
        )?;
    }
    Ok(cfg)
}

/// Sessions remembered for resumption per registry client config (rustls' default size).
const SESSION_CACHE: usize = 256;

/// The session cache of a registry client config; replaced (emptied) by a reload.
#[derive(Debug)]
struct Sessions(RwLock<Arc<ClientSessionMemoryCache>>);

impl Sessions {
    fn cache(&self) -> Arc<ClientSessionMemoryCache> {
        self.0.read().expect("not poisoned").clone()
    }
}

impl ClientSessionStore for Sessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.cache().set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.cache().kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.cache().set_tls12_session(server_name, value)
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.cache().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.cache().remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.cache().insert_tls13_ticket(server_name, value)
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.cache().take_tls13_ticket(server_name)
    }
}

/// The client certificate a registry connection presents; replaced by a reload.
#[derive(Debug)]
struct ReloadableClientCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesClientCert for ReloadableClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().expect("not poisoned").clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The standard webpki verification, counting each server certificate it verifies: one per full
/// TLS handshake (a resumed session is not verified again).
#[derive(Debug)]
struct CountingVerifier {
    /// Replaced by a reload of the registry CA.
    inner: RwLock<Arc<WebPkiServerVerifier>>,
    handshakes: Handshakes,
    registry: RegistryKind,
}

impl CountingVerifier {
    fn verifier(&self) -> Arc<WebPkiServerVerifier> {
        self.inner.read().expect("not poisoned").clone()
    }
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
        self.verifier().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}
