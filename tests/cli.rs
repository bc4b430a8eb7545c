//! The `twinreg` command line: check-config, certs dev and certs compose, run as a real process.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

fn twinreg() -> Command {
    testkit::binaries::twinreg_command()
}

#[test]
fn certs_dev_writes_a_working_ca_server_and_clients() {
    let dir = tempfile::tempdir().unwrap();
    let out = twinreg()
        .args(["certs", "dev", "--out"])
        .arg(dir.path())
        .args(["--client", "payments", "--client", "billing"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "payments.pem",
        "payments-key.pem",
        "billing.pem",
        "billing-key.pem",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("server-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "private keys are not readable by others: {mode:o}"
        );
    }
    // The files load as the server would load them, and the client certificate names its CN.
    twinreg::tls::server_config(
        &dir.path().join("server.pem"),
        &dir.path().join("server-key.pem"),
        &dir.path().join("ca.pem"),
    )
    .expect("the dev server certificate loads");
    PrivateKeyDer::from_pem_file(dir.path().join("payments-key.pem")).unwrap();
    let cert = CertificateDer::from_pem_file(dir.path().join("payments.pem")).unwrap();
    let peer = twinreg::authz::Peer::from_der(&cert).unwrap();
    assert_eq!(peer.identity, "payments");
}

#[test]
fn check_config_names_every_bad_key_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[tls]\ncert = \"/nope/server.pem\"\nkey = \"/nope/key.pem\"\nclient_ca = \"/nope/ca.pem\"\n\
         [etcd]\nendpoints = []\n[consul]\naddress = \"consul:8500\"\ntoken = \"super-secret-token\"\n",
    )
    .unwrap();
    let out = twinreg()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "tls.cert",
        "tls.key",
        "tls.client_ca",
        "etcd.endpoints",
        "consul.address",
    ] {
        assert!(err.contains(key), "{key} not reported:\n{err}");
    }
    assert!(
        !err.contains("super-secret-token"),
        "a secret leaked:\n{err}"
    );

    let out = twinreg()
        .args(["check-config", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn check_config_accepts_the_shipped_dev_config_once_certs_exist() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    twinreg::certs::write_dev(dir.path(), &[]).unwrap();
    let out = twinreg()
        .current_dir(root)
        .args(["check-config", "--config", "config/dev.toml"])
        .env("TWINREG_TLS__CERT", dir.path().join("server.pem"))
        .env("TWINREG_TLS__KEY", dir.path().join("server-key.pem"))
        .env("TWINREG_TLS__CLIENT_CA", dir.path().join("ca.pem"))
        // The log filter shares the prefix but is not a configuration key.
        .env("TWINREG_LOG", "debug")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What `twinreg certs compose` must write: docker-compose.yml mounts these paths and
/// config/compose/ names them, so the list is spelled out here rather than taken from the code
/// under test (a rename there fails this test). Server certificates: (stem, every SAN).
const COMPOSE_SERVERS: &[(&str, &[&str])] = &[
    ("etcd/etcd-1", &["etcd-1", "localhost", "127.0.0.1"]),
    ("etcd/etcd-2", &["etcd-2", "localhost", "127.0.0.1"]),
    ("etcd/etcd-3", &["etcd-3", "localhost", "127.0.0.1"]),
    (
        "consul/server",
        &["server.dc1.consul", "consul", "localhost", "127.0.0.1"],
    ),
    (
        "twinreg/server",
        &["lb", "twinreg-1", "twinreg-2", "localhost", "127.0.0.1"],
    ),
];
/// Client certificates: (stem, CN).
const COMPOSE_CLIENTS: &[(&str, &str)] = &[
    ("twinreg/etcd-client", "twinreg"),
    ("twinreg/consul-client", "twinreg"),
    ("clients/payments", "payments"),
    ("clients/billing", "billing"),
    ("clients/ops", "ops"),
];

fn certs_compose(out: &Path, force: bool) -> std::process::Output {
    let mut cmd = twinreg();
    cmd.args(["certs", "compose", "--out"]).arg(out);
    if force {
        cmd.arg("--force");
    }
    cmd.output().unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out
}

/// The certificate and its key parse, belong together and the key is private to its owner.
fn load_pair(dir: &Path, stem: &str) -> CertificateDer<'static> {
    let cert = CertificateDer::from_pem_file(dir.join(format!("{stem}.pem")))
        .unwrap_or_else(|e| panic!("{stem}.pem: {e}"));
    let key_path = dir.join(format!("{stem}-key.pem"));
    let key =
        PrivateKeyDer::from_pem_file(&key_path).unwrap_or_else(|e| panic!("{stem}-key.pem: {e}"));
    rustls::sign::CertifiedKey::from_der(vec![cert.clone()], key, &provider())
        .unwrap_or_else(|e| panic!("{stem}-key.pem does not go with {stem}.pem: {e}"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{stem}-key.pem has mode {mode:o}");
    }
    cert
}

fn sans(cert: &CertificateDer<'_>) -> BTreeSet<String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert).unwrap();
    let mut out = BTreeSet::new();
    if let Some(san) = x.subject_alternative_name().unwrap() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => out.insert(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => out.insert(match b.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string(),
                    _ => IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string(),
                }),
                other => out.insert(format!("{other:?}")),
            };
        }
    }
    out
}

fn common_name(cert: &CertificateDer<'_>) -> String {
    let (_, x) = x509_parser::parse_x509_certificate(cert).unwrap();
    x.subject()
        .iter_common_name()
        .next()
        .expect("a CN")
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn certs_compose_writes_every_certificate_the_compose_deployment_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("certs");
    let out = certs_compose(&out_dir, false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("PRIVATE KEY") && !out.stderr.windows(7).any(|w| w == b"PRIVATE"),
        "key material printed:\n{stdout}"
    );
    assert!(stdout.contains("wrote "), "{stdout}");

    // Exactly the expected files: a renamed or missing one fails here.
    let mut expected: BTreeSet<PathBuf> = [PathBuf::from("ca.pem")].into();
    for stem in COMPOSE_SERVERS
        .iter()
        .map(|(s, _)| *s)
        .chain(COMPOSE_CLIENTS.iter().map(|(s, _)| *s))
    {
        expected.insert(format!("{stem}.pem").into());
        expected.insert(format!("{stem}-key.pem").into());
    }
    assert_eq!(files_under(&out_dir), expected);
    assert_eq!(
        twinreg::certs::compose_files()
            .into_iter()
            .collect::<BTreeSet<_>>(),
        expected,
        "compose_files() lists what write_compose writes"
    );

    let ca = CertificateDer::from_pem_file(out_dir.join("ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let roots = Arc::new(roots);
    let servers =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .unwrap();
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .unwrap();
    let now = UnixTime::now();

    for (stem, names) in COMPOSE_SERVERS {
        let cert = load_pair(&out_dir, stem);
        let want: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
        assert_eq!(sans(&cert), want, "{stem}.pem SANs");
        for name in *names {
            let sn = ServerName::try_from(name.to_string()).unwrap();
            servers
                .verify_server_cert(&cert, &[], &sn, &[], now)
                .unwrap_or_else(|e| panic!("{stem}.pem as server {name}: {e}"));
        }
        // etcd members present the same certificate to their peers, Consul to itself.
        clients
            .verify_client_cert(&cert, &[], now)
            .unwrap_or_else(|e| panic!("{stem}.pem as a client (peer) certificate: {e}"));
    }
    // A name it does not carry is refused (the check above can fail).
    let etcd1 = load_pair(&out_dir, "etcd/etcd-1");
    let other = ServerName::try_from("etcd-2").unwrap();
    assert!(
        servers
            .verify_server_cert(&etcd1, &[], &other, &[], now)
            .is_err()
    );

    for (stem, cn) in COMPOSE_CLIENTS {
        let cert = load_pair(&out_dir, stem);
        clients
            .verify_client_cert(&cert, &[], now)
            .unwrap_or_else(|e| panic!("{stem}.pem as a client certificate: {e}"));
        assert_eq!(common_name(&cert), *cn, "{stem}.pem CN");
        assert_eq!(
            twinreg::authz::Peer::from_der(&cert).unwrap().identity,
            *cn,
            "{stem}.pem identity"
        );
    }

    // The replicas' files load as `serve` loads them.
    twinreg::tls::server_config(
        &out_dir.join("twinreg/server.pem"),
        &out_dir.join("twinreg/server-key.pem"),
        &out_dir.join("ca.pem"),
    )
    .expect("twinreg's compose server certificate loads");
}

#[test]
fn certs_compose_keeps_an_existing_set_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path();
    assert!(certs_compose(out_dir, false).status.success());
    let ca = std::fs::read(out_dir.join("ca.pem")).unwrap();
    let key = std::fs::read(out_dir.join("twinreg/server-key.pem")).unwrap();

    // Again: nothing is touched (the compose `certs` service runs at every `up`).
    let out = certs_compose(out_dir, false);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kept"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(std::fs::read(out_dir.join("ca.pem")).unwrap(), ca);
    assert_eq!(
        std::fs::read(out_dir.join("twinreg/server-key.pem")).unwrap(),
        key
    );

    // An incomplete set is not silently kept: it names what is missing and the way out.
    std::fs::remove_file(out_dir.join("clients/billing.pem")).unwrap();
    let out = certs_compose(out_dir, false);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("clients/billing.pem") && err.contains("--force"),
        "{err}"
    );

    // --force issues a new CA and every certificate.
    let out = certs_compose(out_dir, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(std::fs::read(out_dir.join("ca.pem")).unwrap(), ca);
    assert!(out_dir.join("clients/billing.pem").is_file());
    load_pair(out_dir, "twinreg/server");
}
