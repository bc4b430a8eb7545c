//! The request log of the real `twinreg serve` binary: one JSON line per request with its request
//! ID, identity, service, instance and each registry's outcome, and no secret anywhere.

use std::time::Duration;

use serde_json::Value;
use twinreg::certs::{CertAuthority, ClientNames};

use crate::{body, path};
use testkit::client::{TestClient, tls_config};
use testkit::consul::Consul;
use testkit::etcd::Etcd;
use testkit::serve::Serve;
use testkit::{eventually, free_port};

const TOKEN: &str = "s3cret-consul-token-5f1b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_one_json_line_with_its_id_identity_target_and_outcomes() {
    let (etcd, consul) = tokio::join!(Etcd::start(), Consul::start());
    let dir = tempfile::tempdir().unwrap();
    let ca = CertAuthority::new("log test CA").unwrap();
    let server = ca.server(&["localhost", "127.0.0.1"]).unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(p("server.pem"), &server.cert_pem).unwrap();
    std::fs::write(p("server-key.pem"), &server.key_pem).unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
         [tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n\
         [etcd]\nendpoints = [\"{}\"]\n[consul]\naddress = \"{}\"\ntoken = \"{TOKEN}\"\n",
        p("server.pem").display(),
        p("server-key.pem").display(),
        p("ca.pem").display(),
        etcd.endpoint(),
        consul.address()
    );
    std::fs::write(p("twinreg.toml"), config).unwrap();
    let env = [("TWINREG_LOG".to_string(), "debug".to_string())];
    let tw = Serve::start(&p("twinreg.toml"), &["--log-json"], &env, (port, admin));

    let id = ca.client(&ClientNames::cn("payments")).unwrap();
    let c = TestClient::new(
        format!("https://127.0.0.1:{port}"),
        tls_config(&ca.cert_pem, Some(&id)),
    );
    // Both registries up before the request that is checked, so both outcomes are "ok".
    eventually(Duration::from_secs(30), "twinreg ready", || async {
        let r = c
            .try_request(
                "PUT",
                &path("payments", "warm-up"),
                Some(serde_json::to_vec(&body("10.0.0.1", 80)).unwrap()),
            )
            .await
            .ok()?;
        (r.status == 200 && r.json["degraded"] == false).then_some(())
    })
    .await;
    let r = c
        .request_with(
            "PUT",
            &path("payments", "pay-1"),
            Some(serde_json::to_vec(&body("10.0.0.5", 8080)).unwrap()),
            &[("x-request-id", "req-42.a")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.headers["x-request-id"], "req-42.a", "the ID comes back");
    // A request without an ID gets one; a forged one (spaces, too long) is replaced.
    let r = c.get("/v1/services/payments/instances").await;
    let generated = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(!generated.is_empty());
    let forged = "x".repeat(65);
    let r = c
        .request_with("GET", "/v1/services", None, &[("x-request-id", &forged)])
        .await;
    assert_ne!(r.headers["x-request-id"], forged.as_str());

    let line = eventually(Duration::from_secs(10), "the request's log line", || {
        let found = tw
            .lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["fields"]["request_id"] == "req-42.a");
        async move { found }
    })
    .await;
    let f = &line["fields"];
    assert_eq!(f["identity"], "payments");
    assert_eq!(f["service"], "payments");
    assert_eq!(f["instance"], "pay-1");
    assert_eq!(f["status"], 200);
    assert_eq!(f["method"], "PUT");
    let registries = f["registries"].as_str().unwrap();
    assert!(
        registries.contains("etcd=ok/") && registries.contains("consul=ok/"),
        "{registries}"
    );
    assert_eq!(line["level"], "INFO");
    let (lines, _) = tw.stop();
    assert!(
        lines
            .iter()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "every line is JSON"
    );
    assert!(
        lines.iter().any(|l| l.contains(&generated)),
        "generated IDs are logged too"
    );
    assert!(
        !lines.iter().any(|l| l.contains(TOKEN)),
        "the Consul token never appears in the log"
    );
}
