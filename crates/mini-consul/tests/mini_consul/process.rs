//! The process: the listening line, clean exit on SIGTERM/SIGINT, a restart starts empty,
//! HTTP/2 without TLS (prior knowledge).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::support::{Server, send};

#[tokio::test]
async fn exits_cleanly_on_sigterm_and_sigint() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut s = Server::start(&[]).await;
        assert_eq!(s.get("/v1/status/leader").await.status, 200);
        kill(Pid::from_raw(s.pid() as i32), sig).expect("signalling mini-consul");
        let status = s.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "{sig:?}: exit status {status:?}");
    }
}

#[tokio::test]
async fn a_restart_starts_empty_on_the_same_port() {
    let mut s = Server::start(&[]).await;
    s.register(json!({"Name": "web"})).await;
    let port = s.addr.port();
    let listen = format!("127.0.0.1:{port}");
    kill(Pid::from_raw(s.pid() as i32), Signal::SIGTERM).unwrap();
    assert!(s.wait_exit(Duration::from_secs(10)).success());
    let s2 = Server::start(&["--listen", &listen]).await;
    assert_eq!(s2.addr.port(), port);
    assert_eq!(s2.get_json("/v1/agent/services").await, json!({}));
    assert_eq!(
        s2.get_json("/v1/catalog/services").await,
        json!({"consul": []})
    );
}

#[tokio::test]
async fn bad_arguments_fail_to_start() {
    let out = std::process::Command::new(crate::support::binary())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            "/nonexistent.key",
        ])
        .output()
        .expect("running mini-consul");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.pem"));
    let out = std::process::Command::new(crate::support::binary())
        .args(["--listen", "127.0.0.1:0", "--tls-cert", "/x.pem"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "--tls-cert without --tls-key is refused"
    );
}

#[tokio::test]
async fn serves_h2c_with_prior_knowledge() {
    let s = Server::start(&[]).await;
    let client: crate::support::HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = http::Request::get(format!("{}/v1/catalog/services", s.base))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&client, req).await.expect("h2c");
    assert_eq!((r.status, r.version), (200, http::Version::HTTP_2));
    assert_eq!(r.json(), json!({"consul": []}));
}
