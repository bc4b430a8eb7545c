//! The `twinreg` command line: check-config and certs dev, run as a real process.

use std::process::Command;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

fn twinreg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_twinreg"))
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
