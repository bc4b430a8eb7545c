//! The admin listener: health, readiness and Prometheus metrics.

use crate::{Env, body, path};

#[tokio::test]
async fn healthz_readyz_and_metrics() {
    let env = Env::start().await;
    let (s, _) = env.gw.admin_get("/healthz").await;
    assert_eq!(s, 200);
    let (s, b) = env.gw.readyz().await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["registries"]["etcd"]["state"], "up");

    let c = env.gw.client("payments");
    assert_eq!(
        c.put_json(&path("payments", "p"), &body("10.0.0.1", 80))
            .await
            .status,
        200
    );
    assert_eq!(
        c.put_json(&path("payments", "p"), &serde_json::json!({"port": 1}))
            .await
            .status,
        400
    );
    let (s, m) = env.gw.admin_get("/metrics").await;
    assert_eq!(s, 200);
    for needle in [
        r#"twinreg_http_requests_total{route="instance",method="PUT",status="200"} 1"#,
        r#"twinreg_http_requests_total{route="instance",method="PUT",status="400"} 1"#,
        r#"twinreg_registry_operations_total{registry="etcd",op="register",outcome="ok"} 1"#,
        r#"twinreg_registry_operations_total{registry="consul",op="register",outcome="ok"} 1"#,
        "twinreg_registry_operation_duration_seconds_bucket",
        r#"twinreg_registry_up{registry="etcd"} 1"#,
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
}

#[tokio::test]
async fn shutdown_turns_readyz_503_and_stops_serving() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    assert_eq!(
        c.put_json(&path("payments", "p"), &body("10.0.0.1", 80))
            .await
            .status,
        200
    );
    let admin = env.gw.admin;
    env.gw.stop().await;
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "admin listener closed"
    );
    // What was accepted is still in the registries.
    let key = "/services/payments/p";
    assert!(env.etcd.dump(key).await.iter().any(|(k, _, _)| k == key));
}
