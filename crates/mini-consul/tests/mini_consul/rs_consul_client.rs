//! The server checked against an independent client: rs-consul's catalog and health calls,
//! over plain HTTP (with and without ACLs) and over mutual TLS.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rs_consul::{Config, Consul, ConsulError, GetServiceNodesRequest, QueryOptions};
use serde_json::json;

use crate::support::{Pki, Server, path_str};

fn client(address: String, token: Option<&str>) -> Consul {
    Consul::new(Config {
        address,
        token: token.map(str::to_owned),
        ..Default::default()
    })
}

fn nodes_request(service: &str, passing: bool) -> GetServiceNodesRequest<'_> {
    GetServiceNodesRequest {
        service,
        passing,
        ..Default::default()
    }
}

async fn register_fleet(s: &Server) {
    s.register(
        json!({"Name": "web", "ID": "web-1", "Address": "10.0.0.1", "Port": 8080, "Tags": ["v1"],
                      "Check": {"TTL": "60s", "Status": "passing"}}),
    )
    .await;
    s.register(
        json!({"Name": "web", "ID": "web-2", "Address": "10.0.0.2", "Port": 8081,
                      "Check": {"TTL": "60s"}}),
    )
    .await;
    s.register(json!({"Name": "db", "Port": 5432})).await;
}

#[tokio::test]
async fn catalog_and_health_through_rs_consul() {
    let s = Server::start(&[]).await;
    register_fleet(&s).await;
    let consul = client(s.base.clone(), None);

    let names = consul
        .get_all_registered_service_names(None)
        .await
        .expect("catalog/services");
    let mut got = names.response.clone();
    got.sort();
    assert_eq!(got, ["consul", "db", "web"]);
    assert!(names.index > 0, "rs-consul read X-Consul-Index");

    let all = consul
        .get_service_nodes(nodes_request("web", false), None)
        .await
        .expect("health/service");
    assert!(all.index > 0);
    let mut seen: Vec<(String, String, u16, Vec<String>)> = all
        .response
        .iter()
        .map(|n| {
            (
                n.service.id.clone(),
                n.service.address.clone(),
                n.service.port,
                n.service.tags.clone(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                "web-1".to_owned(),
                "10.0.0.1".to_owned(),
                8080,
                vec!["v1".to_owned()]
            ),
            ("web-2".to_owned(), "10.0.0.2".to_owned(), 8081, vec![]),
        ]
    );
    assert!(
        all.response
            .iter()
            .all(|n| n.node.node == "mini-consul" && n.node.datacenter == "dc1")
    );

    let passing = consul
        .get_service_nodes(nodes_request("web", true), None)
        .await
        .unwrap();
    let ids: Vec<&str> = passing
        .response
        .iter()
        .map(|n| n.service.id.as_str())
        .collect();
    assert_eq!(ids, ["web-1"], "web-2's TTL check is still critical");
    let addrs = consul
        .get_service_addresses_and_ports("web", None)
        .await
        .unwrap();
    assert_eq!(addrs, [("10.0.0.1".to_owned(), 8080)]);

    // rs-consul's blocking options: nothing changes, so the same index comes back after the wait.
    let t0 = Instant::now();
    let opts = QueryOptions {
        index: Some(all.index),
        wait: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let again = consul
        .get_service_nodes(nodes_request("web", false), Some(opts))
        .await
        .unwrap();
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_eq!(again.index, all.index);
}

#[tokio::test]
async fn rs_consul_with_acl_tokens() {
    let s = Server::with_acl("root-token").await;
    register_fleet(&s).await;

    let admin = client(s.base.clone(), Some("root-token"));
    let names = admin.get_all_registered_service_names(None).await.unwrap();
    assert_eq!(names.response.len(), 3);
    assert_eq!(
        admin
            .get_service_nodes(nodes_request("web", false), None)
            .await
            .unwrap()
            .response
            .len(),
        2
    );

    // rs-consul sends an empty token when it has none: the anonymous token, filtered to nothing.
    let anonymous = client(s.base.clone(), None);
    assert!(
        anonymous
            .get_all_registered_service_names(None)
            .await
            .unwrap()
            .response
            .is_empty()
    );
    assert!(
        anonymous
            .get_service_nodes(nodes_request("web", false), None)
            .await
            .unwrap()
            .response
            .is_empty()
    );

    let wrong = client(s.base.clone(), Some("nope"));
    match wrong.get_all_registered_service_names(None).await {
        Err(ConsulError::UnexpectedResponseCode(code, body)) => {
            assert_eq!(
                (code.as_u16(), body.as_deref()),
                (403, Some("ACL not found"))
            );
        }
        other => panic!("expected 403 ACL not found, got {other:?}"),
    }
}

#[tokio::test]
async fn rs_consul_over_mutual_tls() {
    let pki = Pki::new("mini-consul test CA");
    let server = pki.issue("server", true);
    let leaf = pki.issue("client", false);
    let s = Server::start(&[
        "--tls-cert",
        path_str(&server.cert_path),
        "--tls-key",
        path_str(&server.key_path),
        "--tls-client-ca",
        path_str(&pki.ca_path()),
    ])
    .await;

    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(leaf.chain.clone(), leaf.key.clone_key())
        .unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let https: rs_consul::HttpsClient =
        Client::builder(TokioExecutor::new()).build::<_, BoxBody<Bytes, Infallible>>(connector);
    let consul = Consul::new_with_client(
        Config {
            address: format!("https://localhost:{}", s.addr.port()),
            token: None,
            ..Default::default()
        },
        https,
    );
    let names = consul
        .get_all_registered_service_names(None)
        .await
        .expect("catalog over mTLS");
    assert_eq!(names.response, ["consul"]);
    assert!(names.index > 0);
    let nodes = consul
        .get_service_nodes(nodes_request("consul", true), None)
        .await
        .unwrap();
    assert_eq!(nodes.response.len(), 1);
    assert_eq!(nodes.response[0].service.port, 8300);
}
