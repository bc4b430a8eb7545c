//! TLS material, loaded and parsed once at start-up and on a reload ([`reload`]): the public listener's server config (client
//! certificates required and verified against the client-CA bundle and, when configured, its
//! CRLs; the protocol policy is in `build_server_config`) and the client configs used to reach
//! the registries.

pub mod reload;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::NamedGroup;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, ResolvesClientCert, Resumption,
    Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::crypto::CryptoProvider;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};

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

/// The public listener's config: mutual TLS, ALPN `h2` and `http/1.1`, no CRL.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    Ok(Arc::new(build_server_config(cert, key, client_ca, None)?))
}

/// The protocol versions the public listener speaks: TLS 1.3 and TLS 1.2, nothing older (rustls
/// implements nothing older either; stated so that the policy does not rest on a default).
pub const SERVER_PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The public listener's crypto provider: ring with its default cipher suites, named here rather
/// than inherited. Every one is an AEAD (AES-GCM or ChaCha20-Poly1305) with an ephemeral key
/// exchange (TLS 1.3's; ECDHE with an ECDSA or RSA signature in TLS 1.2): rustls has no CBC, RC4,
/// 3DES, NULL or export suite and no static-RSA key exchange, so nothing weaker can be negotiated.
/// Key exchange groups: X25519, P-256, P-384.
fn server_provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: rustls::crypto::ring::DEFAULT_CIPHER_SUITES.to_vec(),
        ..rustls::crypto::ring::default_provider()
    }
}

/// The certificate revocation lists of a PEM file (`-----BEGIN X509 CRL-----` blocks): at least
/// one, each readable, none past its `nextUpdate` (a CRL without one does not expire). Like an
/// expired certificate, a CRL past its `nextUpdate` is not put in service: its issuer should have
/// published a newer one, and using it would hide every revocation made since.
pub fn load_crls(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| err(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(what, path, e))?;
    if crls.is_empty() {
        return Err(err(what, path, "holds no PEM X509 CRL block"));
    }
    let now = unix_now();
    for der in &crls {
        let (_, crl) = x509_parser::parse_x509_crl(der)
            .map_err(|e| err(what, path, format!("unreadable CRL: {e}")))?;
        if let Some(next) = crl.next_update()
            && next.timestamp() <= now
        {
            return Err(err(
                what,
                path,
                format!(
                    "holds a CRL of '{}' past its nextUpdate ({next}); publish a current one",
                    crl.issuer()
                ),
            ));
        }
    }
    Ok(crls)
}

/// With CRL checking on, a client certificate whose revocation status no CRL gives is refused;
/// so a CA of the client-CA bundle without a CRL in the file would have every client it issued
/// refused. That is a configuration mistake, reported here rather than as refused handshakes.
fn check_crls_cover(
    crls: &[CertificateRevocationListDer<'_>],
    ca_certs: &[CertificateDer<'_>],
    crl_path: &Path,
) -> Result<(), TlsError> {
    let mut issuers = Vec::new();
    for der in crls {
        let (_, crl) = x509_parser::parse_x509_crl(der)
            .map_err(|e| err("tls.client_crl", crl_path, format!("unreadable CRL: {e}")))?;
        issuers.push(crl.issuer().as_raw().to_vec());
    }
    for der in ca_certs {
        let (_, ca) = x509_parser::parse_x509_certificate(der).map_err(|e| {
            err(
                "tls.client_crl",
                crl_path,
                format!("unreadable client CA: {e}"),
            )
        })?;
        if !issuers.iter().any(|i| i == ca.subject().as_raw()) {
            return Err(err(
                "tls.client_crl",
                crl_path,
                format!(
                    "holds no CRL of client CA '{}': every client certificate it issued would be \
                     refused",
                    ca.subject()
                ),
            ));
        }
    }
    Ok(())
}

/// The public listener's policy, in one place:
///
/// - TLS 1.2 and 1.3 only, AEAD suites with ephemeral key exchange only ([`server_provider`]);
/// - a client certificate is required, and accepted only if it chains to a CA of `client_ca`,
///   every certificate of the chain is within its validity period, and it is usable for client
///   authentication (an extended key usage extension, when present, must list clientAuth);
/// - with `client_crl`: checked against the CRLs for every certificate of the chain below the
///   trust anchor; revoked or of unknown status (no CRL of its issuer) is refused. A CRL that
///   passes its `nextUpdate` while in service stays in force (its revocations still hold); it is
///   not treated as an error at each handshake, which would refuse every client the moment a CRL
///   publication is late. A CRL already past its `nextUpdate` is refused at start-up and at a
///   reload ([`load_crls`]).
fn build_server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    client_crl: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    install_crypto_provider();
    let provider = Arc::new(server_provider());
    let chain = load_certs("tls.cert", cert)?;
    let key_der = load_key("tls.key", key)?;
    let ca_certs = load_certs("tls.client_ca", client_ca)?;
    let mut roots = RootCertStore::empty();
    for c in ca_certs.iter().cloned() {
        roots
            .add(c)
            .map_err(|e| err("tls.client_ca", client_ca, e))?;
    }
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(crl_path) = client_crl {
        let crls = load_crls("tls.client_crl", crl_path)?;
        check_crls_cover(&crls, &ca_certs, crl_path)?;
        // rustls' defaults, kept: the whole chain is checked, an unknown status is an error, and
        // a CRL's nextUpdate is not enforced per handshake (see above).
        verifier = verifier.with_crls(crls);
    }
    let verifier = verifier.build().map_err(|e| match e {
        VerifierBuilderError::InvalidCrl(e) => err(
            "tls.client_crl",
            client_crl.unwrap_or(client_ca),
            format!("unusable CRL: {e:?}"),
        ),
        e => err("tls.client_ca", client_ca, e),
    })?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(SERVER_PROTOCOL_VERSIONS)
        .expect("ring's default suites cover TLS 1.2 and 1.3")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|e| err("tls.key", key, format!("does not match tls.cert: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// `[tls]`, validated: the public listener's certificate, key, client CAs and CRLs.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub client_crl: Option<PathBuf>,
    /// How often certificate and key files are checked for changes (zero: only SIGHUP reloads).
    pub reload_interval: Duration,
}

pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// The public listener's TLS config, swapped whole on a reload: each new connection takes the
/// current one; established connections keep theirs.
pub struct ServerTls {
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads `tls.cert`, `tls.key`, `tls.client_ca` and `tls.client_crl` (when set), and
    /// registers them with `certs` so a reload (SIGHUP, a changed file) replaces them.
    pub fn load(cfg: &TlsSettings, certs: &Certs) -> Result<Arc<Self>, TlsError> {
        install_crypto_provider();
        let (cert, key, ca) = (cfg.cert.clone(), cfg.key.clone(), cfg.client_ca.clone());
        let crl = cfg.client_crl.clone();
        let first = build_server_config(&cert, &key, &ca, crl.as_deref())?;
        let tls = Arc::new(Self {
            current: RwLock::new(Arc::new(first)),
        });
        let target = Arc::downgrade(&tls);
        let mut paths = vec![cert.clone(), key.clone(), ca.clone()];
        paths.extend(crl.iter().cloned());
        certs.add(
            "server",
            paths,
            Box::new(move || {
                let next = build_server_config(&cert, &key, &ca, crl.as_deref())?;
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
    if earliest <= unix_now() {
        return Err(err(what, path, "holds a certificate that has expired"));
    }
    Ok(earliest)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
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
    let sessions = Arc::new(Sessions(RwLock::new(SessionCache::fresh(None))));
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
        // The first call is the start-up load (`Certs::add`): nothing to forget yet.
        let loaded = std::sync::atomic::AtomicBool::new(false);
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
                if loaded.swap(true, std::sync::atomic::Ordering::Relaxed)
                    && let Some(s) = sessions.upgrade()
                {
                    *s.0.write().expect("not poisoned") = SessionCache::fresh(Some(
                        std::time::Instant::now() + TICKETS_IGNORED_AFTER_RELOAD,
                    ));
                }
                Ok(expiries)
            }),
        )?;
    }
    Ok(cfg)
}

/// Sessions remembered for resumption per registry client config (rustls' default size).
const SESSION_CACHE: usize = 256;

/// How long after a reload sessions handed to the cache are not kept. A connection whose
/// handshake began before the reload presented the old certificate, and its session (a TLS 1.3
/// ticket comes after the handshake) would let the next connection resume that old identity,
/// and every resumed connection passes it on. A handshake to a registry is bounded by the
/// 3 s connect timeout and the ticket follows it within a round trip; connections made in this
/// window simply do full handshakes.
const TICKETS_IGNORED_AFTER_RELOAD: Duration = Duration::from_secs(10);

/// The session cache of a registry client config; replaced (emptied) by a reload.
#[derive(Debug)]
struct Sessions(RwLock<SessionCache>);

#[derive(Debug, Clone)]
struct SessionCache {
    cache: Arc<ClientSessionMemoryCache>,
    /// Until then, sessions offered to the cache are dropped (see
    /// [`TICKETS_IGNORED_AFTER_RELOAD`]).
    ignore_until: Option<std::time::Instant>,
}

impl SessionCache {
    fn fresh(ignore_until: Option<std::time::Instant>) -> Self {
        Self {
            cache: Arc::new(ClientSessionMemoryCache::new(SESSION_CACHE)),
            ignore_until,
        }
    }
}

impl Sessions {
    fn cache(&self) -> Arc<ClientSessionMemoryCache> {
        self.0.read().expect("not poisoned").cache.clone()
    }

    /// The cache to store a new session in, or none while sessions may still come from
    /// connections made before the last reload.
    fn cache_for_new_session(&self) -> Option<Arc<ClientSessionMemoryCache>> {
        let c = self.0.read().expect("not poisoned");
        match c.ignore_until {
            Some(t) if std::time::Instant::now() < t => None,
            _ => Some(c.cache.clone()),
        }
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
        if let Some(cache) = self.cache_for_new_session() {
            cache.set_tls12_session(server_name, value)
        }
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
        if let Some(cache) = self.cache_for_new_session() {
            cache.insert_tls13_ticket(server_name, value)
        }
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, SerialNumber,
    };

    use super::*;

    /// A CA (certificate PEM, issuer) made with rcgen.
    fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        (pem, Issuer::new(params, key))
    }

    /// An empty CRL of `issuer` whose nextUpdate is `next_update` from now (negative: past).
    fn crl(issuer: &Issuer<'_, KeyPair>, next_update: i64) -> String {
        let now = SystemTime::now();
        let at = |secs: i64| {
            if secs >= 0 {
                now + Duration::from_secs(secs as u64)
            } else {
                now - Duration::from_secs(secs.unsigned_abs())
            }
        };
        CertificateRevocationListParams {
            this_update: at(next_update.min(0) - 3600).into(),
            next_update: at(next_update).into(),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(issuer)
        .unwrap()
        .pem()
        .unwrap()
    }

    #[test]
    fn the_listener_speaks_tls12_and_tls13_with_aead_suites_only() {
        assert_eq!(
            SERVER_PROTOCOL_VERSIONS
                .iter()
                .map(|v| v.version)
                .collect::<Vec<_>>(),
            [
                rustls::ProtocolVersion::TLSv1_3,
                rustls::ProtocolVersion::TLSv1_2
            ]
        );
        let suites: Vec<String> = server_provider()
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(suites.len(), 9, "{suites:?}");
        for s in &suites {
            assert!(
                s.ends_with("_GCM_SHA256")
                    || s.ends_with("_GCM_SHA384")
                    || s.ends_with("_CHACHA20_POLY1305_SHA256"),
                "{s} is not an AEAD suite"
            );
            assert!(
                s.starts_with("TLS13_") || s.starts_with("TLS_ECDHE_"),
                "{s} has no ephemeral key exchange"
            );
        }
    }

    #[test]
    fn a_crl_must_be_current_and_cover_every_client_ca() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let (ca_pem, ca) = new_ca("client CA");
        let (other_pem, other) = new_ca("another CA");
        let server = crate::certs::CertAuthority::new("server CA")
            .unwrap()
            .server(&["localhost"])
            .unwrap();
        std::fs::write(p("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(p("server-key.pem"), &server.key_pem).unwrap();
        std::fs::write(p("ca.pem"), &ca_pem).unwrap();
        let build = |crl: &str| {
            std::fs::write(p("crl.pem"), crl).unwrap();
            build_server_config(
                &p("server.pem"),
                &p("server-key.pem"),
                &p("ca.pem"),
                Some(&p("crl.pem")),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        };

        assert_eq!(build(&crl(&ca, 86400)), Ok(()));
        let e = build(&crl(&other, 86400)).unwrap_err();
        assert!(
            e.starts_with("tls.client_crl ")
                && e.contains("holds no CRL of client CA 'CN=client CA'"),
            "{e}"
        );
        let e = build(&crl(&ca, -60)).unwrap_err();
        assert!(
            e.starts_with("tls.client_crl ") && e.contains("past its nextUpdate"),
            "{e}"
        );
        let e = build(&server.cert_pem).unwrap_err();
        assert!(
            e.starts_with("tls.client_crl ") && e.contains("no PEM X509 CRL block"),
            "{e}"
        );

        // A bundle of two CAs needs a CRL of each, in one file.
        std::fs::write(p("ca.pem"), format!("{ca_pem}{other_pem}")).unwrap();
        let e = build(&crl(&ca, 86400)).unwrap_err();
        assert!(
            e.contains("holds no CRL of client CA 'CN=another CA'"),
            "{e}"
        );
        assert_eq!(
            build(&format!("{}{}", crl(&ca, 86400), crl(&other, 86400))),
            Ok(())
        );
    }

    /// Drives two in-memory TLS connections until neither has anything left to send.
    fn pump(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
        loop {
            let mut moved = false;
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                moved = true;
                server.read_tls(&mut buf.as_slice()).unwrap();
                server.process_new_packets().unwrap();
            }
            buf.clear();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                moved = true;
                client.read_tls(&mut buf.as_slice()).unwrap();
                client.process_new_packets().unwrap();
            }
            if !moved {
                return;
            }
        }
    }

    /// A session ticket that reaches a connection made before a reload (TLS 1.3 tickets arrive
    /// after the handshake) must not let a connection made after it resume the old identity:
    /// the registry would go on seeing the certificate that was rotated away.
    #[test]
    fn a_ticket_arriving_after_a_reload_does_not_carry_the_old_identity_over() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let ca = crate::certs::CertAuthority::new("registry CA").unwrap();
        let server = ca.server(&["localhost"]).unwrap();
        let old = ca.client(&crate::certs::ClientNames::cn("old")).unwrap();
        let new = ca.client(&crate::certs::ClientNames::cn("new")).unwrap();
        std::fs::write(p("ca.pem"), &ca.cert_pem).unwrap();
        std::fs::write(p("client.pem"), &old.cert_pem).unwrap();
        std::fs::write(p("client-key.pem"), &old.key_pem).unwrap();
        let certs = Certs::new(crate::metrics::Metrics::new());
        let client_cfg = Arc::new(
            registry_client_config(
                "etcd",
                Some(&p("ca.pem")),
                Some((&p("client.pem"), &p("client-key.pem"))),
                (Handshakes::default(), RegistryKind::Etcd),
                &certs,
            )
            .unwrap(),
        );
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let server_cfg = Arc::new(
            ServerConfig::builder()
                .with_client_cert_verifier(
                    WebPkiClientVerifier::builder(Arc::new(roots))
                        .build()
                        .unwrap(),
                )
                .with_single_cert(
                    vec![CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
        );
        let name = ServerName::try_from("localhost").unwrap();
        let connect = || {
            (
                rustls::ClientConnection::new(client_cfg.clone(), name.clone()).unwrap(),
                rustls::ServerConnection::new(server_cfg.clone()).unwrap(),
            )
        };
        let presented = |s: &rustls::ServerConnection| s.peer_certificates().unwrap()[0].to_vec();

        // Resumption works: a second connection resumes the first one's session.
        let (mut c0, mut s0) = connect();
        pump(&mut c0, &mut s0);
        let (mut c0, mut s0) = connect();
        pump(&mut c0, &mut s0);
        assert_eq!(c0.handshake_kind(), Some(rustls::HandshakeKind::Resumed));

        // A connection on the old certificate whose handshake is done, its ticket still in flight.
        let (mut c1, mut s1) = connect();
        while c1.is_handshaking() {
            let mut buf = Vec::new();
            while c1.wants_write() {
                c1.write_tls(&mut buf).unwrap();
            }
            s1.read_tls(&mut buf.as_slice()).unwrap();
            s1.process_new_packets().unwrap();
            buf.clear();
            while s1.wants_write() {
                s1.write_tls(&mut buf).unwrap();
            }
            c1.read_tls(&mut buf.as_slice()).unwrap();
            c1.process_new_packets().unwrap();
        }
        let mut fin = Vec::new();
        while c1.wants_write() {
            c1.write_tls(&mut fin).unwrap();
        }
        s1.read_tls(&mut fin.as_slice()).unwrap();
        s1.process_new_packets().unwrap();
        assert_eq!(presented(&s1), old.der);

        // The rotation, then the ticket lands.
        std::fs::write(p("client.pem"), &new.cert_pem).unwrap();
        std::fs::write(p("client-key.pem"), &new.key_pem).unwrap();
        assert_eq!(certs.reload(true), (1, 0));
        pump(&mut c1, &mut s1);

        let (mut c2, mut s2) = connect();
        pump(&mut c2, &mut s2);
        assert!(!c2.is_handshaking() && !s2.is_handshaking());
        assert!(
            presented(&s2) == new.der,
            "a connection after the reload presented the old certificate ({:?} handshake)",
            c2.handshake_kind()
        );
    }
}
