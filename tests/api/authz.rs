//! Identity from the client certificate, authorization per service, and the mTLS handshake.

use serde_json::json;

use twinreg::certs::{CertAuthority, ClientNames};

use crate::{Env, body, path};
use testkit::client::{TestClient, tls_config};
use testkit::gateway::Options;

#[tokio::test]
async fn a_service_cannot_touch_another_services_instances() {
    let env = Env::start().await;
    let payments = env.gw.client("payments");
    let billing = env.gw.client("billing");
    assert_eq!(
        payments
            .put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
            .await
            .status,
        200
    );

    for (method, p) in [
        ("PUT", format!("{}/heartbeat", path("payments", "pay-1"))),
        ("DELETE", path("payments", "pay-1")),
    ] {
        let r = billing.request(method, &p, None).await;
        assert_eq!(r.status, 403, "{method} {p}: {}", r.text);
        assert_eq!(r.json["error"], "forbidden");
        assert!(r.json["message"].as_str().unwrap().contains("billing"));
    }
    let r = billing
        .put_json(&path("payments", "evil"), &body("10.6.6.6", 1))
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(env.etcd_record("payments", "evil").await.is_none());
    assert!(env.consul_service("payments", "evil").await.is_none());
    // Prefix look-alikes are other services.
    let pay = env.gw.client("pay");
    assert_eq!(
        pay.put_json(&path("payments", "x"), &body("10.0.0.1", 1))
            .await
            .status,
        403
    );
    // The instance is untouched.
    assert!(env.etcd_record("payments", "pay-1").await.is_some());
    assert!(env.consul_service("payments", "pay-1").await.is_some());
    // Reads are open to every authenticated identity by default.
    assert_eq!(
        billing.get("/v1/services/payments/instances").await.status,
        200
    );
}

#[tokio::test]
async fn identity_from_uri_and_dns_sans_admins_grants_and_owner_reads() {
    let env = Env::start_with(Options {
        extra_toml: r#"
[authz]
reads = "owner"
admins = ["spiffe://example.org/ops/admin"]
[[authz.grants]]
identity = "deployer.example.org"
services = ["payments"]
"#
        .into(),
        ..Default::default()
    })
    .await;
    let spiffe = env.gw.client_with(&ClientNames {
        cn: "ignored".into(),
        dns: vec![],
        uris: vec!["spiffe://example.org/ns/prod/sa/payments".into()],
    });
    assert_eq!(
        spiffe
            .put_json(&path("payments", "a"), &body("10.0.0.1", 1))
            .await
            .status,
        200
    );
    let dns = env.gw.client_with(&ClientNames {
        cn: "x".into(),
        dns: vec!["payments".into()],
        uris: vec![],
    });
    assert_eq!(
        dns.put_json(&path("payments", "b"), &body("10.0.0.1", 1))
            .await
            .status,
        200
    );
    let deployer = env.gw.client_with(&ClientNames {
        cn: "x".into(),
        dns: vec!["deployer.example.org".into()],
        uris: vec![],
    });
    assert_eq!(
        deployer
            .put_json(&path("payments", "c"), &body("10.0.0.1", 1))
            .await
            .status,
        200
    );
    assert_eq!(
        deployer
            .put_json(&path("billing", "c"), &body("10.0.0.1", 1))
            .await
            .status,
        403
    );
    let admin = env.gw.client_with(&ClientNames {
        cn: "x".into(),
        dns: vec![],
        uris: vec!["spiffe://example.org/ops/admin".into()],
    });
    assert_eq!(
        admin
            .put_json(&path("billing", "d"), &body("10.0.0.1", 1))
            .await
            .status,
        200
    );
    // reads = "owner": billing's instances are not readable by payments.
    assert_eq!(
        spiffe.get("/v1/services/billing/instances").await.status,
        403
    );
    assert_eq!(
        spiffe.get("/v1/services/payments/instances").await.status,
        200
    );
    let listed = spiffe.get("/v1/services").await;
    assert_eq!(
        listed.json["services"],
        json!([{"name": "payments", "instances": 3}]),
        "{}",
        listed.text
    );
}

#[tokio::test]
async fn clients_without_a_trusted_certificate_fail_the_handshake() {
    let env = Env::start().await;
    let base = format!("https://127.0.0.1:{}", env.gw.addr.port());
    let anonymous = TestClient::new(base.clone(), tls_config(&env.gw.ca.cert_pem, None));
    let err = anonymous
        .try_request("GET", "/v1/services", None)
        .await
        .unwrap_err();
    assert!(!err.is_empty());

    let other_ca = CertAuthority::new("someone else's CA").unwrap();
    let foreign = other_ca.client(&ClientNames::cn("payments")).unwrap();
    let stranger = TestClient::new(base, tls_config(&env.gw.ca.cert_pem, Some(&foreign)));
    let r = stranger
        .try_request(
            "PUT",
            &path("payments", "x"),
            Some(body("10.0.0.1", 1).to_string().into_bytes()),
        )
        .await;
    assert!(
        r.is_err(),
        "a certificate from another CA must not be accepted: {r:?}"
    );
    assert!(env.etcd_record("payments", "x").await.is_none());
    // The trusted client still works on the same listener.
    assert_eq!(
        env.gw.client("payments").get("/v1/services").await.status,
        200
    );
}
