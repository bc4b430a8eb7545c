//! HTTP and TCP checks: run every Interval (after a random stagger), passing on success.

use std::time::Duration;

use serde_json::json;

use crate::support::{Server, eventually};

#[tokio::test]
async fn tcp_and_http_checks_run() {
    let s = Server::start(&[]).await;
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_addr = open.local_addr().unwrap().to_string();
    let closed_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let leader = format!("{}/v1/status/leader", s.base);
    let missing = format!("{}/v1/agent/nope", s.base);
    s.register(json!({"Name": "probed", "Checks": [
        {"CheckID": "tcp-up", "TCP": open_addr, "Interval": "1s"},
        {"CheckID": "tcp-down", "TCP": closed_addr, "Interval": "1s", "Status": "passing"},
        {"CheckID": "http-up", "HTTP": leader, "Interval": "1s", "Timeout": "2s"},
        {"CheckID": "http-down", "HTTP": missing, "Interval": "1s", "Status": "passing"}
    ]}))
    .await;
    let checks = s.get_json("/v1/agent/checks").await;
    assert_eq!(checks["tcp-up"]["Type"], "tcp");
    assert_eq!(checks["tcp-up"]["Interval"], "1s");
    assert_eq!(checks["http-up"]["Type"], "http");
    assert_eq!(checks["http-up"]["Timeout"], "2s");
    assert_eq!(
        checks["tcp-up"]["Status"], "critical",
        "non-TTL checks start critical too"
    );

    let want = [
        (
            "tcp-up",
            "passing",
            format!("TCP connect {open_addr}: Success"),
        ),
        (
            "tcp-down",
            "critical",
            format!("dial tcp {closed_addr}: connect: connection refused"),
        ),
        (
            "http-up",
            "passing",
            format!("HTTP GET {leader}: 200 OK Output: \"127.0.0.1:8300\"\n"),
        ),
        (
            "http-down",
            "critical",
            format!(
                "HTTP GET {missing}: 404 Not Found Output: Invalid URL path: not a recognized HTTP API endpoint\n"
            ),
        ),
    ];
    for (id, status, output) in want {
        eventually(Duration::from_secs(10), id, || async {
            let c = s.check(id).await;
            (c["Status"] == status && c["Output"] == output.as_str()).then_some(())
        })
        .await;
    }
    drop(open);
}
