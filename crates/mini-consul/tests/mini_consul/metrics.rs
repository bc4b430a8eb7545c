//! `/v1/agent/metrics`: the request count a load test reads, per method and path, in Consul's
//! JSON shape and in Prometheus text.

use serde_json::json;

use crate::support::Server;

/// The `consul_api_http_count` series of the Prometheus text, as (labels, value).
fn counts(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("consul_api_http_count"))
        .filter_map(|l| {
            let (labels, n) = l.rsplit_once(' ')?;
            Some((labels.to_owned(), n.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn every_request_is_counted_by_method_and_path() {
    let s = Server::start(&[]).await;
    s.register(json!({"ID": "web1", "Name": "web", "Check": {"CheckID": "c1", "TTL": "30s"}}))
        .await;
    for _ in 0..3 {
        s.put("/v1/agent/check/pass/c1", None)
            .await
            .assert_write_ok();
    }
    assert_eq!(s.get("/v1/no/such/endpoint").await.status, 404);

    let r = s.get("/v1/agent/metrics?format=prometheus").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.header("content-type")
    );
    let c = counts(&r.body);
    let find = |labels: &str| c.iter().find(|(l, _)| l == labels).map(|(_, n)| *n);
    assert_eq!(
        find(r#"{method="PUT",path="v1_agent_check_pass_"}"#),
        Some(3),
        "{c:?}"
    );
    assert_eq!(
        find(r#"{method="PUT",path="v1_agent_service_register"}"#),
        Some(1),
        "{c:?}"
    );
    assert_eq!(find(r#"{method="GET",path="other"}"#), Some(1), "{c:?}");

    // The JSON shape counts the same requests, this one's first read included.
    let v = s.get_json("/v1/agent/metrics").await;
    let pass = v["Samples"]
        .as_array()
        .expect("Samples")
        .iter()
        .find(|s| s["Name"] == "consul.api.http" && s["Labels"]["path"] == "v1_agent_check_pass_")
        .cloned();
    assert_eq!(pass.map(|p| p["Count"].clone()), Some(json!(3)), "{v}");
    let metrics_reads = v["Samples"]
        .as_array()
        .expect("Samples")
        .iter()
        .find(|s| s["Labels"]["path"] == "v1_agent_metrics")
        .map(|s| s["Count"].clone());
    assert_eq!(metrics_reads, Some(json!(2)), "{v}");
}
