//! The admin listener: health, readiness and Prometheus metrics.

use std::time::Duration;

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
    let (s, headers, m) = env.gw.admin_get_full("/metrics").await;
    assert_eq!(s, 200);
    // The body is OpenMetrics text, and says so.
    assert_eq!(
        headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(m.ends_with("# EOF\n"), "{m}");
    for needle in [
        r#"twinreg_http_requests_total{route="instance",method="PUT",status="200"} 1"#,
        r#"twinreg_request_duration_seconds_count{route="instance",method="PUT"} 2"#,
        r#"twinreg_request_duration_seconds_bucket{le="+Inf",route="instance",method="PUT"} 2"#,
        concat!(
            r#"twinreg_build_info{version=""#,
            env!("CARGO_PKG_VERSION"),
            r#"",commit=""#
        ),
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
async fn shutdown_turns_readyz_503_first_then_drains_and_stops_serving() {
    let mut env = Env::start().await;
    let c = env.gw.client("payments");
    assert_eq!(
        c.put_json(&path("payments", "p"), &body("10.0.0.1", 80))
            .await
            .status,
        200
    );
    env.gw.trigger_stop();
    // Readiness flips at once while the replica still serves (drain_delay = 300ms in tests).
    let (status, ready) = env.gw.readyz().await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["draining"], true);
    let fresh = env.gw.client("payments");
    let r = fresh
        .put_json(&path("payments", "q"), &body("10.0.0.2", 80))
        .await;
    assert_eq!(r.status, 200, "still serving while draining: {}", r.text);

    let admin = env.gw.admin;
    let public = env.gw.addr;
    let Env { etcd, consul, gw } = env;
    gw.stop().await;
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "admin listener closed"
    );
    assert!(
        tokio::net::TcpStream::connect(public).await.is_err(),
        "public listener closed"
    );
    // What was accepted is in the registries.
    for id in ["p", "q"] {
        let key = format!("/services/payments/{id}");
        assert!(
            etcd.dump(&key).await.iter().any(|(k, _, _)| *k == key),
            "{id}"
        );
        assert!(
            consul
                .agent_services()
                .await
                .contains_key(&format!("payments.{id}"))
        );
    }
}

/// The real binary and a real SIGTERM: readiness flips to 503 while it still serves, then it
/// drains and exits 0, and what it acknowledged is in the registries.
#[tokio::test]
async fn the_binary_drains_on_sigterm_and_exits_cleanly() {
    let (etcd, consul) = tokio::join!(
        testkit::etcd::Etcd::start(),
        testkit::consul::Consul::start()
    );
    let testkit::serve::DevServe {
        serve: tw,
        client: c,
        dir: _dir,
    } = testkit::serve::DevServe::start(&etcd, &consul, "drain_delay = \"1s\"").await;
    let r = c
        .put_json(&path("payments", "p"), &body("10.0.0.1", 80))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    tw.signal(nix::sys::signal::Signal::SIGTERM);
    testkit::eventually(
        Duration::from_secs(5),
        "readyz 503 while draining",
        || async {
            let (status, _, _) = tw.try_admin_get("/readyz").await?;
            (status == 503).then_some(())
        },
    )
    .await;
    let (lines, ok) = tokio::task::spawn_blocking(move || tw.wait_exit())
        .await
        .unwrap();
    assert!(
        ok,
        "twinreg did not exit 0 after SIGTERM:\n{}",
        lines.join("\n")
    );
    assert!(etcd.dump("/services/payments/p").await.len() == 1);
    assert!(consul.agent_services().await.contains_key("payments.p"));
}
