//! The public listener's TLS policy (docs/security.md): TLS 1.2 and 1.3 with AEAD suites only;
//! client certificates that are expired, not yet valid, not for client authentication, not
//! issued by the client CA or revoked by `tls.client_crl` are refused; a CRL update on disk
//! applies to new connections without a restart. Every certificate and CRL is made here.
//!
//! A refused client certificate shows, with TLS 1.3, as an alert at the client's first read
//! rather than in its handshake: each attempt sends a request and reads the answer, and each
//! refusal is checked for the alert that says why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use rustls::HandshakeKind;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use twinreg::certs::{ClientNames, Issued};

use crate::Env;
use testkit::client::h2_get;
use testkit::client::tls_config;
use testkit::gateway::{Gateway, Options};
use testkit::replace_file;
use testkit::{eventually, find_binary};

const DAY: i64 = 86_400;

/// Now plus `secs` (negative: in the past).
fn at(secs: i64) -> SystemTime {
    let now = SystemTime::now();
    if secs >= 0 {
        now + Duration::from_secs(secs as u64)
    } else {
        now - Duration::from_secs(secs.unsigned_abs())
    }
}

/// A client CA made with rcgen: certificates with chosen serials, validity and usages, and CRLs.
struct ClientCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl ClientCa {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A client certificate (CN `payments`, clientAuth, valid from an hour ago for a year) with
    /// serial `serial`, changed by `edit` before it is signed.
    fn issue(&self, serial: u64, edit: impl FnOnce(&mut CertificateParams)) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "payments");
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = at(-3600).into();
        params.not_after = at(365 * DAY).into();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        edit(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A CRL (number `number`) revoking `revoked`, issued an hour before `next_update` or now,
    /// whichever is earlier.
    fn crl_until(&self, number: u64, revoked: &[u64], next_update: i64) -> String {
        CertificateRevocationListParams {
            this_update: at(next_update.min(0) - 3600).into(),
            next_update: at(next_update).into(),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: at(-60).into(),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }

    /// A CRL revoking `revoked`, current for a week.
    fn crl(&self, number: u64, revoked: &[u64]) -> String {
        self.crl_until(number, revoked, 7 * DAY)
    }
}

/// A client config presenting `identity` and trusting the gateway's server certificate.
fn client_tls(gw: &Gateway, identity: &Issued, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut tls = tls_config(&gw.ca.cert_pem, Some(identity));
    tls.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(tls)
}

/// Opens a new connection with `tls` and sends one HTTP/1.1 request on it: the status of the
/// answer and whether the TLS session was resumed, or why the connection failed (for a refused
/// client certificate: `received fatal alert: <why>`).
async fn attempt_with(gw: &Gateway, tls: Arc<rustls::ClientConfig>) -> Result<(u16, bool), String> {
    let exchange = async {
        let tcp = TcpStream::connect(gw.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut stream = TlsConnector::from(tls)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let resumed = stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
        stream
            .write_all(b"GET /v1/services HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        let text = String::from_utf8_lossy(&answer);
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
        Ok((status, resumed))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err("no answer within 10s".into()))
}

/// [`attempt_with`] on a new client config presenting `identity`: the answer's status.
async fn attempt(gw: &Gateway, identity: &Issued) -> Result<u16, String> {
    attempt_with(gw, client_tls(gw, identity, b"http/1.1"))
        .await
        .map(|(status, _)| status)
}

/// Asserts that a connection presenting `identity` is refused with `alert`.
async fn assert_refused(gw: &Gateway, identity: &Issued, alert: &str, what: &str) {
    match attempt(gw, identity).await {
        Ok(status) => panic!("{what}: must be refused, but a request was answered {status}"),
        Err(e) => assert!(
            e.contains(&format!("received fatal alert: {alert}")),
            "{what}: refused, but not with the {alert} alert: {e}"
        ),
    }
}

#[tokio::test]
async fn client_certificates_must_be_current_for_client_auth_and_from_the_client_ca() {
    let ca = ClientCa::new("tls-policy client CA");
    let env = Env::start_with(Options {
        client_ca_pem: Some(ca.pem.clone()),
        ..Options::default()
    })
    .await;
    let gw = &env.gw;

    let good = ca.issue(1, |_| {});
    assert_eq!(
        attempt(gw, &good).await,
        Ok(200),
        "a current clientAuth certificate of the client CA is accepted"
    );

    let expired = ca.issue(2, |p| {
        p.not_before = at(-30 * DAY).into();
        p.not_after = at(-DAY).into();
    });
    assert_refused(
        gw,
        &expired,
        "CertificateExpired",
        "expired (notAfter yesterday)",
    )
    .await;

    let early = ca.issue(3, |p| {
        p.not_before = at(DAY).into();
        p.not_after = at(30 * DAY).into();
    });
    assert_refused(
        gw,
        &early,
        "CertificateExpired",
        "not yet valid (notBefore tomorrow)",
    )
    .await;

    let server_only = ca.issue(4, |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    });
    assert_refused(
        gw,
        &server_only,
        "UnsupportedCertificate",
        "extended key usage serverAuth only",
    )
    .await;

    // Another CA under the very same name: the signature decides, not the issuer name (rustls
    // reports a signature that does not verify as decrypt_error). A CA of another name is
    // authz.rs' clients_without_a_trusted_certificate_fail_the_handshake.
    let impostor = ClientCa::new("tls-policy client CA").issue(1, |_| {});
    assert_refused(
        gw,
        &impostor,
        "DecryptError",
        "signed by another CA with the client CA's name",
    )
    .await;

    // No extended key usage extension at all: any usage (RFC 5280 4.2.1.12), so accepted.
    let any_usage = ca.issue(5, |p| p.extended_key_usages.clear());
    assert_eq!(
        attempt(gw, &any_usage).await,
        Ok(200),
        "a certificate without the extended key usage extension is accepted"
    );
    // The refusals were of those certificates only.
    assert_eq!(attempt(gw, &good).await, Ok(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_client_certificates_are_refused_and_a_new_crl_applies_on_reload() {
    let ca = ClientCa::new("crl client CA");
    let crl_dir = tempfile::tempdir().unwrap();
    let crl_path = crl_dir.path().join("client-crl.pem");
    std::fs::write(&crl_path, ca.crl(1, &[10])).unwrap();
    let env = Env::start_with(Options {
        client_ca_pem: Some(ca.pem.clone()),
        tls_extra: format!(
            "client_crl = \"{}\"\nreload_interval = \"200ms\"",
            crl_path.display()
        ),
        ..Options::default()
    })
    .await;
    let gw = &env.gw;
    let (revoked, second, third) = (
        ca.issue(10, |_| {}),
        ca.issue(11, |_| {}),
        ca.issue(12, |_| {}),
    );
    assert_refused(gw, &revoked, "CertificateRevoked", "serial 10, in the CRL").await;
    assert_eq!(
        attempt(gw, &second).await,
        Ok(200),
        "serial 11, not revoked"
    );
    assert_eq!(attempt(gw, &third).await, Ok(200), "serial 12, not revoked");

    // The second certificate's client: a connection kept open across the CRL update, and a
    // client config whose TLS session could be resumed (resumption skips the client
    // certificate, so a reload must not let a session of before be resumed).
    let (tcp, tls) = (
        TcpStream::connect(gw.addr).await.unwrap(),
        client_tls(gw, &second, b"h2"),
    );
    let stream = TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut kept, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    assert_eq!(h2_get(&mut kept).await, Ok(200));
    let resuming = client_tls(gw, &second, b"http/1.1");
    assert_eq!(attempt_with(gw, resuming.clone()).await, Ok((200, false)));
    assert_eq!(
        attempt_with(gw, resuming.clone()).await,
        Ok((200, true)),
        "the session is resumed while the CRL is unchanged"
    );

    // The CRL now revokes the second certificate too.
    let ok = gw.certificate_reloads("ok").await;
    replace_file(&crl_path, &ca.crl(2, &[10, 11]));
    eventually(
        Duration::from_secs(10),
        "the new CRL to refuse serial 11",
        || async { attempt(gw, &second).await.is_err().then_some(()) },
    )
    .await;
    assert_refused(
        gw,
        &second,
        "CertificateRevoked",
        "serial 11 after the reload",
    )
    .await;
    assert!(
        gw.certificate_reloads("ok").await > ok,
        "counted as a reload"
    );
    match attempt_with(gw, resuming.clone()).await {
        Ok(r) => {
            panic!("resuming a session of before the reload must not get around the CRL: {r:?}")
        }
        Err(e) => assert!(e.contains("CertificateRevoked"), "{e}"),
    }
    assert_refused(
        gw,
        &revoked,
        "CertificateRevoked",
        "serial 10 after the reload",
    )
    .await;
    assert_eq!(
        attempt(gw, &third).await,
        Ok(200),
        "serial 12 still accepted"
    );
    assert_eq!(
        h2_get(&mut kept).await,
        Ok(200),
        "the connection established before the reload stays up"
    );

    // A file that is not a CRL is rejected; the CRL in force stays.
    let rejected = gw.certificate_reloads("rejected").await;
    replace_file(
        &crl_path,
        "-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n",
    );
    eventually(
        Duration::from_secs(10),
        "the unreadable CRL to be rejected",
        || async { (gw.certificate_reloads("rejected").await > rejected).then_some(()) },
    )
    .await;
    assert_refused(
        gw,
        &second,
        "CertificateRevoked",
        "serial 11, bad CRL rejected",
    )
    .await;
    assert_eq!(attempt(gw, &third).await, Ok(200));

    // So is a CRL past its nextUpdate (this one would un-revoke serial 11).
    let rejected = gw.certificate_reloads("rejected").await;
    replace_file(&crl_path, &ca.crl_until(3, &[10], -60));
    eventually(
        Duration::from_secs(10),
        "the expired CRL to be rejected",
        || async { (gw.certificate_reloads("rejected").await > rejected).then_some(()) },
    )
    .await;
    assert_refused(
        gw,
        &second,
        "CertificateRevoked",
        "serial 11, expired CRL rejected",
    )
    .await;
    assert_eq!(attempt(gw, &third).await, Ok(200));
    assert_eq!(h2_get(&mut kept).await, Ok(200));
}

/// `openssl` from OPENSSL_BIN or PATH.
fn openssl() -> PathBuf {
    find_binary("OPENSSL_BIN", "openssl").unwrap_or_else(|| {
        panic!("the openssl command is not on PATH (nor OPENSSL_BIN set): run scripts/setup.sh")
    })
}

/// What `openssl s_client` made of a connection.
struct SClient {
    ok: bool,
    out: String,
}

impl SClient {
    /// The `New, <protocol>, Cipher is <suite>` line's protocol and suite.
    fn negotiated(&self) -> Option<(String, String)> {
        let line = self.out.lines().find(|l| l.starts_with("New, "))?;
        let (protocol, suite) = line.strip_prefix("New, ")?.split_once(", Cipher is ")?;
        Some((protocol.to_string(), suite.trim().to_string()))
    }
}

/// Runs `openssl s_client` against the gateway with `args`, presenting a client certificate of
/// the gateway's CA and verifying the server's, so only the protocol and suites decide.
/// `SECLEVEL=0` and an empty OpenSSL configuration let the client offer what it is asked to,
/// however old: a refusal must come from the server.
async fn s_client(gw: &Gateway, dir: &Path, args: &[&str]) -> SClient {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(openssl())
            .arg("s_client")
            .args(["-connect", &gw.addr.to_string()])
            .args(["-servername", "localhost", "-verify_return_error"])
            .arg("-CAfile")
            .arg(dir.join("server-ca.pem"))
            .arg("-cert")
            .arg(dir.join("client.pem"))
            .arg("-key")
            .arg(dir.join("client-key.pem"))
            .args(args)
            .env("OPENSSL_CONF", dir.join("openssl.cnf"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("openssl s_client {args:?} did not finish within 20s"))
    .expect("running openssl");
    SClient {
        ok: out.status.success(),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// How `openssl s_client` reports a handshake_failure alert received from the server.
const SERVER_REFUSED: &str = "alert handshake failure";

#[tokio::test]
async fn only_tls12_and_tls13_with_aead_suites_are_negotiated() {
    let env = Env::start().await;
    let gw = &env.gw;
    let dir = tempfile::tempdir().unwrap();
    let me = gw.issue(&ClientNames::cn("payments"));
    std::fs::write(dir.path().join("server-ca.pem"), &gw.ca.cert_pem).unwrap();
    std::fs::write(dir.path().join("client.pem"), &me.cert_pem).unwrap();
    std::fs::write(dir.path().join("client-key.pem"), &me.key_pem).unwrap();
    std::fs::write(dir.path().join("openssl.cnf"), "").unwrap();
    let legacy = "DEFAULT:@SECLEVEL=0";

    // TLS 1.1: the client offers it (the session line says so) and the server answers the hello
    // with a handshake_failure alert.
    let r = s_client(gw, dir.path(), &["-tls1_1", "-cipher", legacy]).await;
    assert!(
        !r.ok && r.out.contains("Protocol  : TLSv1.1") && r.out.contains(SERVER_REFUSED),
        "TLS 1.1 must be refused by the server:\n{}",
        r.out
    );
    // TLS 1.2 offering only CBC suites: with RSA key exchange (AES128-SHA), and with an
    // ECDHE-ECDSA key exchange the server's key could do (so only CBC decides).
    for suite in [
        "AES128-SHA",
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES128-SHA256",
    ] {
        let r = s_client(
            gw,
            dir.path(),
            &["-tls1_2", "-cipher", &format!("{suite}:@SECLEVEL=0")],
        )
        .await;
        assert!(
            !r.ok && r.out.contains(SERVER_REFUSED),
            "TLS 1.2 with only {suite} must be refused by the server:\n{}",
            r.out
        );
    }
    // TLS 1.2 with the client's default suites: an ECDHE suite with an AEAD.
    let r = s_client(gw, dir.path(), &["-tls1_2"]).await;
    assert!(r.ok, "TLS 1.2 must be accepted:\n{}", r.out);
    let (protocol, suite) = r.negotiated().expect("a negotiated suite");
    assert_eq!(protocol, "TLSv1.2");
    assert!(
        suite.starts_with("ECDHE-") && (suite.contains("-GCM-") || suite.contains("CHACHA20")),
        "{suite} is not an ECDHE AEAD suite"
    );
    // TLS 1.3.
    let r = s_client(gw, dir.path(), &["-tls1_3"]).await;
    assert!(r.ok, "TLS 1.3 must be accepted:\n{}", r.out);
    let (protocol, suite) = r.negotiated().expect("a negotiated suite");
    assert_eq!(protocol, "TLSv1.3");
    assert!(
        [
            "TLS_AES_256_GCM_SHA384",
            "TLS_AES_128_GCM_SHA256",
            "TLS_CHACHA20_POLY1305_SHA256"
        ]
        .contains(&suite.as_str()),
        "{suite}"
    );
}
