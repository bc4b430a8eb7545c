//! Registries over TLS with client certificates, and Consul with an ACL token from a file.

use twinreg::certs::CertAuthority;

use crate::{body, path};
use testkit::consul::Consul;
use testkit::etcd::Etcd;
use testkit::gateway::{Gateway, Options};

const TOKEN: &str = "3f6a1c2e-7d40-4b8e-9a11-5c0ffee0cafe";

pub(crate) struct Secure {
    pub etcd: Etcd,
    pub consul: Consul,
    pub gw: Gateway,
    _secrets: tempfile::TempDir,
}

/// etcd and Consul both requiring client certificates from one CA; twinreg given `token`.
async fn secure_env(token: &str) -> Secure {
    secure_env_with(token, Options::default()).await
}

/// [`secure_env`], with `base` giving the options other than the registries' TLS settings.
pub(crate) async fn secure_env_with(token: &str, base: Options) -> Secure {
    let ca = CertAuthority::new("registry CA").unwrap();
    let (etcd, consul) = tokio::join!(Etcd::start_tls(&ca), Consul::start_secure(&ca, TOKEN));
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("consul-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let e = etcd.tls.as_ref().unwrap();
    let c = consul.secure.as_ref().unwrap();
    let opts = Options {
        etcd_extra: format!(
            "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            e.path("ca.pem").display(),
            e.path("client.pem").display(),
            e.path("client-key.pem").display()
        ),
        consul_extra: format!(
            "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\ntoken_file = \"{}\"\n",
            c.path("ca.pem").display(),
            c.path("client.pem").display(),
            c.path("client-key.pem").display(),
            token_file.display()
        ),
        ..base
    };
    let gw = Gateway::launch(vec![etcd.endpoint()], consul.address(), opts).await;
    Secure {
        etcd,
        consul,
        gw,
        _secrets: secrets,
    }
}

#[tokio::test]
async fn registers_through_tls_registries_with_client_certificates_and_an_acl_token() {
    let env = secure_env(TOKEN).await;
    env.gw.wait_both_up().await;
    let c = env.gw.client("payments");
    let r = c
        .put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["degraded"], false, "{}", r.text);
    let key = "/services/payments/pay-1";
    assert!(env.etcd.dump(key).await.iter().any(|(k, _, _)| k == key));
    assert!(
        env.consul
            .agent_services()
            .await
            .contains_key("payments.pay-1")
    );
    let hb = c
        .put(&format!("{}/heartbeat", path("payments", "pay-1")))
        .await;
    assert_eq!(hb.status, 200, "{}", hb.text);
    assert_eq!(hb.json["degraded"], false, "{}", hb.text);
    let d = c.delete(&path("payments", "pay-1")).await;
    assert_eq!(d.json["existed"], true, "{}", d.text);
    assert!(env.consul.instances().await.is_empty());
}

#[tokio::test]
async fn a_wrong_consul_token_is_reported_without_being_revealed() {
    let wrong = "0badc0de-0000-4000-8000-000000000000";
    let env = secure_env(wrong).await;
    testkit::eventually(std::time::Duration::from_secs(30), "etcd up", || async {
        (env.gw.readyz().await.1["registries"]["etcd"]["state"] == "up").then_some(())
    })
    .await;
    let c = env.gw.client("payments");
    let r = c
        .put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["degraded"], true, "{}", r.text);
    assert_eq!(r.json["registries"]["consul"]["ok"], false);
    assert!(!r.text.contains(wrong), "the token leaked: {}", r.text);
    let (_, metrics) = env.gw.admin_get("/metrics").await;
    assert!(!metrics.contains(wrong));
    assert!(env.consul.instances().await.is_empty());
}
