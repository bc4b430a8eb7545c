//! Authorization edges against a live gateway, over REST and gRPC: identity spoofing through the
//! order of SANs, services whose names are prefixes of others, percent-encoded and Unicode
//! look-alike path segments, case games, dot-segments and empty segments, and ids that differ only
//! by a trailing dot or by case. Each is denied (403) or rejected (400, naming the field), or
//! matches no endpoint (404), and nothing is written.
//!
//! Not repeated here: another service's instance (billing vs payments) and `pay` registering into
//! `payments` (authz.rs); the path `Payments` and the id `pay%2F1` (validation.rs); bad names over
//! gRPC (grpc.rs).

use std::sync::Arc;

use rustls_pki_types::ServerName;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::Channel;
use twinreg::api::grpc::pb;
use twinreg::api::grpc::pb::registry_client::RegistryClient;
use twinreg::certs::ClientNames;

use crate::{Env, body, path};
use testkit::client::{TestClient, tls_config};
use testkit::gateway::{Gateway, Options};
use testkit::grpc::channel_to;

fn names(cn: &str, dns: &[&str], uris: &[&str]) -> ClientNames {
    ClientNames {
        cn: cn.into(),
        dns: dns.iter().map(|s| s.to_string()).collect(),
        uris: uris.iter().map(|s| s.to_string()).collect(),
    }
}

async fn grpc_as(gw: &Gateway, n: &ClientNames) -> RegistryClient<Channel> {
    RegistryClient::new(channel_to(gw.addr, &gw.ca.cert_pem, &gw.issue(n)).await)
}

fn reg(service: &str, id: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        service: service.into(),
        id: id.into(),
        address: "10.6.6.6".into(),
        port: 6666,
        tags: vec![],
        meta: Default::default(),
        ttl_seconds: None,
    }
}

fn md<'a>(s: &'a tonic::Status, key: &str) -> Option<&'a str> {
    s.metadata().get(key).and_then(|v| v.to_str().ok())
}

/// Percent-encodes every byte that is not unreserved, as a client sends a non-ASCII name.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The ids of `service` in etcd and in Consul are exactly `ids`: nothing else was written.
async fn holds_exactly(env: &Env, service: &str, ids: &[&str]) {
    let dir = format!("/services/{service}/");
    let mut in_etcd: Vec<String> = env
        .etcd
        .dump(&dir)
        .await
        .into_iter()
        .map(|(k, _, _)| k[dir.len()..].to_owned())
        .collect();
    let mut in_consul: Vec<String> = env
        .consul
        .agent_services()
        .await
        .into_iter()
        .filter(|(_, v)| v["Service"] == service)
        .map(|(k, _)| k[service.len() + 1..].to_owned())
        .collect();
    let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    want.sort();
    in_etcd.sort();
    in_consul.sort();
    assert_eq!(in_etcd, want, "etcd holds other {service} instances");
    assert_eq!(in_consul, want, "Consul holds other {service} instances");
}

/// Nothing at all in either registry.
async fn nothing_written(env: &Env) {
    assert!(env.etcd.instances().await.is_empty(), "etcd was written to");
    assert!(
        env.consul.instances().await.is_empty(),
        "Consul was written to"
    );
}

/// A write (register, heartbeat, deregister) on `service`/`id` by `c`: every one gets `status`.
async fn each_write(c: &TestClient, service: &str, id: &str, status: u16, field: Option<&str>) {
    let instance = format!("/v1/services/{service}/instances/{id}");
    for (method, p, b) in [
        (
            "PUT",
            instance.clone(),
            Some(serde_json::to_vec(&body("10.6.6.6", 6666)).unwrap()),
        ),
        ("PUT", format!("{instance}/heartbeat"), None),
        ("DELETE", instance.clone(), None),
    ] {
        let r = c.request(method, &p, b).await;
        assert_eq!(r.status, status, "{method} {p}: {}", r.text);
        if let Some(field) = field {
            assert_eq!(
                r.json["error"], "invalid_request",
                "{method} {p}: {}",
                r.text
            );
            assert_eq!(r.json["field"], field, "{method} {p}: {}", r.text);
        } else if status == 403 {
            assert_eq!(r.json["error"], "forbidden", "{method} {p}: {}", r.text);
        }
    }
}

/// The same over gRPC: every call fails with `code` (and names `field` when given).
async fn each_grpc_write(
    g: &mut RegistryClient<Channel>,
    service: &str,
    id: &str,
    code: Code,
    field: Option<&str>,
) {
    let errors = [
        g.register(reg(service, id)).await.map(drop).unwrap_err(),
        g.heartbeat(pb::HeartbeatRequest {
            service: service.into(),
            id: id.into(),
        })
        .await
        .map(drop)
        .unwrap_err(),
        g.deregister(pb::DeregisterRequest {
            service: service.into(),
            id: id.into(),
        })
        .await
        .map(drop)
        .unwrap_err(),
    ];
    for e in errors {
        assert_eq!(e.code(), code, "{service:?}/{id:?}: {e:?}");
        if let Some(field) = field {
            assert_eq!(md(&e, "twinreg-field"), Some(field), "{e:?}");
        }
    }
}

#[tokio::test]
async fn later_sans_cannot_make_a_certificate_another_service() {
    let env = Env::start().await;
    let owner = env.gw.client("payments");
    let r = owner
        .put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Names that come after the certificate's own (later SANs) give nothing. (The CN, the first
    // DNS SAN and the first URI SAN's last segment each name a service: docs/api.md's rule, tested in
    // tests/api/authz.rs.)
    let spoofers = [
        (
            "a later URI SAN",
            names("x", &[], &["spiffe://x/billing", "spiffe://x/payments"]),
            "spiffe://x/billing",
        ),
        (
            "a later DNS SAN",
            names("x", &["billing", "payments"], &[]),
            "billing",
        ),
        (
            "a later DNS SAN beside a URI SAN",
            names("x", &["billing", "payments"], &["spiffe://x/billing"]),
            "spiffe://x/billing",
        ),
        (
            "a URI SAN with no last segment, then one",
            names("x", &["x"], &["spiffe://x/", "spiffe://x/payments"]),
            "spiffe://x/",
        ),
        (
            "a later URI SAN whose segment is the service",
            names(
                "x",
                &[],
                &["spiffe://x/ns/billing", "spiffe://x/ns/payments"],
            ),
            "spiffe://x/ns/billing",
        ),
    ];
    for (what, n, identity) in &spoofers {
        let c = env.gw.client_with(n);
        each_write(&c, "payments", "pay-1", 403, None).await;
        let r = c
            .put_json(&path("payments", "evil"), &body("10.6.6.6", 1))
            .await;
        assert_eq!(r.status, 403, "{what}: {}", r.text);
        let msg = r.json["message"].as_str().unwrap();
        assert!(
            msg.contains(&format!("identity '{identity}'")),
            "{what}: the refusal names the identity: {msg}"
        );
        let mut g = grpc_as(&env.gw, n).await;
        each_grpc_write(&mut g, "payments", "pay-1", Code::PermissionDenied, None).await;
        each_grpc_write(&mut g, "payments", "evil", Code::PermissionDenied, None).await;
    }
    holds_exactly(&env, "payments", &["pay-1"]).await;
    // The owner's instance is untouched: same address, still renewable.
    let (rec, _) = env.etcd_record("payments", "pay-1").await.unwrap();
    assert_eq!(rec["address"], "10.0.0.5");
    assert_eq!(
        owner
            .put(&format!("{}/heartbeat", path("payments", "pay-1")))
            .await
            .status,
        200
    );

    // The other way round is the control: the first SAN is the identity and its name works,
    // and the later SANs give nothing.
    let billing_first = names("x", &[], &["spiffe://x/billing", "spiffe://x/payments"]);
    let r = env
        .gw
        .client_with(&billing_first)
        .put_json(&path("billing", "b-1"), &body("10.0.0.7", 1))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for (i, n) in [
        names("x", &[], &["spiffe://x/payments", "spiffe://x/billing"]),
        names("x", &["payments", "billing"], &[]),
        names("payments", &[], &[]),
    ]
    .iter()
    .enumerate()
    {
        let c = env.gw.client_with(n);
        let r = c
            .put_json(&path("payments", &format!("ok-{i}")), &body("10.0.0.6", 1))
            .await;
        assert_eq!(r.status, 200, "{n:?}: {}", r.text);
        let r = c
            .put_json(&path("billing", &format!("no-{i}")), &body("10.0.0.6", 1))
            .await;
        assert_eq!(r.status, 403, "{n:?}: {}", r.text);
        grpc_as(&env.gw, n)
            .await
            .register(reg("payments", &format!("ok-grpc-{i}")))
            .await
            .unwrap_or_else(|e| panic!("{n:?}: {e:?}"));
    }
    holds_exactly(
        &env,
        "payments",
        &[
            "pay-1",
            "ok-0",
            "ok-1",
            "ok-2",
            "ok-grpc-0",
            "ok-grpc-1",
            "ok-grpc-2",
        ],
    )
    .await;
    holds_exactly(&env, "billing", &["b-1"]).await;
}

#[tokio::test]
async fn a_name_that_is_a_prefix_of_another_is_another_service() {
    let env = Env::start_with(Options {
        extra_toml: "[authz]\nreads = \"owner\"\n".into(),
        ..Default::default()
    })
    .await;
    let services = ["pay", "payment", "payments", "payments-v2"];
    for s in services {
        let r = env
            .gw
            .client(s)
            .put_json(&path(s, &format!("{s}-1")), &body("10.0.0.5", 8080))
            .await;
        assert_eq!(r.status, 200, "{s}: {}", r.text);
    }
    for who in services {
        let c = env.gw.client(who);
        // A URI SAN whose last segment is the caller's name, too.
        let spiffe = env.gw.client_with(&names(
            "x",
            &[],
            &[&format!("spiffe://example.org/ns/prod/sa/{who}")],
        ));
        let mut g = testkit::grpc::registry(&env.gw, who).await;
        for other in services.iter().filter(|o| **o != who) {
            let id = format!("{other}-1");
            each_write(&c, other, &id, 403, None).await;
            each_write(&spiffe, other, &id, 403, None).await;
            each_write(&c, other, "new", 403, None).await;
            each_grpc_write(&mut g, other, &id, Code::PermissionDenied, None).await;
            // reads = "owner": listing is refused too.
            let r = c.get(&format!("/v1/services/{other}/instances")).await;
            assert_eq!(r.status, 403, "{who} listing {other}: {}", r.text);
        }
        let r = c.get("/v1/services").await;
        assert_eq!(
            r.json["services"],
            json!([{"name": who, "instances": 1}]),
            "{who}: {}",
            r.text
        );
    }
    for s in services {
        holds_exactly(&env, s, &[&format!("{s}-1")]).await;
    }
}

#[tokio::test]
async fn percent_encoded_segments_are_rejected_naming_the_field() {
    let env = Env::start().await;
    // The caller is payments: decoded, most of these would be its own service.
    let c = env.gw.client("payments");
    for service in [
        "pay%6Dents",
        "pay%6dents",
        "%70ayments",
        "%70%61%79%6d%65%6e%74%73",
        "payments%2F..%2Fbilling",
        "payments%2f..%2fbilling",
        "%2570ayments",
        "pay%256Dents",
        "payments%00",
        "payments%20",
        "%2e%2e",
    ] {
        each_write(&c, service, "a", 400, Some("service")).await;
        let r = c.get(&format!("/v1/services/{service}/instances")).await;
        assert_eq!(r.status, 400, "{service}: {}", r.text);
        assert_eq!(r.json["field"], "service", "{service}: {}", r.text);
    }
    for id in [
        "pay%2D1",
        "%70ay-1",
        "..%2F..%2Fbilling%2Fb-1",
        "a%252Fb",
        "%2e%2e",
        "%2E",
        "pay-1%00",
        "pay-1%20",
    ] {
        each_write(&c, "payments", id, 400, Some("id")).await;
    }
    // Over gRPC the same strings arrive as sent and are refused the same way.
    let mut g = testkit::grpc::registry(&env.gw, "payments").await;
    each_grpc_write(
        &mut g,
        "pay%6Dents",
        "a",
        Code::InvalidArgument,
        Some("service"),
    )
    .await;
    each_grpc_write(
        &mut g,
        "payments",
        "pay%2D1",
        Code::InvalidArgument,
        Some("id"),
    )
    .await;
    nothing_written(&env).await;
}

#[tokio::test]
async fn unicode_look_alikes_are_rejected_over_rest_and_grpc() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    let mut g = testkit::grpc::registry(&env.gw, "payments").await;
    let services = [
        "\u{0440}ayments",                                                  // Cyrillic er
        "p\u{0430}yments",                                                  // Cyrillic a
        "\u{0440}\u{0430}yments",                                           // both
        "\u{FF50}\u{FF41}\u{FF59}\u{FF4D}\u{FF45}\u{FF4E}\u{FF54}\u{FF53}", // fullwidth
        "payment\u{FF53}",                                                  // one fullwidth letter
        "payments\u{200B}",                                                 // zero-width space
        "\u{200D}payments",                                                 // zero-width joiner
        "payments\u{00AD}",                                                 // soft hyphen
        "payments\u{FE0F}",                                                 // variation selector
        "payment\u{017F}",                                                  // long s (NFKC: s)
        "payme\u{0301}nts", // NFD: e + combining acute
        "paym\u{00E9}nts",  // NFC: é
        "pay\u{2010}ments", // Unicode hyphen
    ];
    for s in services {
        each_write(&c, &encode(s), "a", 400, Some("service")).await;
        let r = c
            .get(&format!("/v1/services/{}/instances", encode(s)))
            .await;
        assert_eq!(r.status, 400, "{s:?}: {}", r.text);
        each_grpc_write(&mut g, s, "a", Code::InvalidArgument, Some("service")).await;
        let e = g
            .list_instances(pb::ListInstancesRequest { service: s.into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{s:?}: {e:?}");
    }
    for id in [
        "pay\u{2010}1",
        "pay-1\u{200B}",
        "\u{0440}ay-1",
        "\u{FF50}ay-1",
        "pay-\u{FF11}",
    ] {
        each_write(&c, "payments", &encode(id), 400, Some("id")).await;
        each_grpc_write(&mut g, "payments", id, Code::InvalidArgument, Some("id")).await;
    }
    // Raw UTF-8 in the request line, not percent-encoded: refused before it is a name.
    for s in ["p\u{0430}yments", "payments\u{200B}"] {
        let status = raw_put(&env.gw, "payments", &path(s, "a")).await;
        assert_eq!(status, 400, "raw {s:?}");
    }
    nothing_written(&env).await;
}

/// Sends `PUT target` over HTTP/1.1 with the bytes of `target` as they are (no encoding), and
/// returns the answer's status code.
async fn raw_put(gw: &Gateway, cn: &str, target: &str) -> u16 {
    let id = gw.issue(&ClientNames::cn(cn));
    let mut tls = tls_config(&gw.ca.cert_pem, Some(&id));
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut s = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let b = serde_json::to_vec(&body("10.6.6.6", 6666)).unwrap();
    let mut req = Vec::new();
    req.extend_from_slice(b"PUT ");
    req.extend_from_slice(target.as_bytes());
    req.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            b.len()
        )
        .as_bytes(),
    );
    req.extend_from_slice(&b);
    s.write_all(&req).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "no answer to the raw request");
    let head = String::from_utf8_lossy(&answer);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"))
}

#[tokio::test]
async fn case_games_are_rejected_or_denied() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    // Upper case in the path is not another spelling of a service: it is no service name.
    for service in ["PAYMENTS", "pAyments", "paymentS"] {
        each_write(&c, service, "a", 400, Some("service")).await;
        let r = c.get(&format!("/v1/services/{service}/instances")).await;
        assert_eq!(r.status, 400, "{service}: {}", r.text);
    }
    // Certificates naming the service in another case, or encoded, may not write it.
    for n in [
        names("Payments", &[], &[]),
        names("PAYMENTS", &[], &[]),
        names("x", &["Payments"], &[]),
        names("x", &[], &["spiffe://x/Payments"]),
        names("x", &[], &["spiffe://x/PAYMENTS"]),
        names("x", &[], &["spiffe://x/pay%6Dents"]),
        names("x", &[], &["spiffe://x/payments%20"]),
    ] {
        let cc = env.gw.client_with(&n);
        each_write(&cc, "payments", "a", 403, None).await;
        let mut g = grpc_as(&env.gw, &n).await;
        each_grpc_write(&mut g, "payments", "a", Code::PermissionDenied, None).await;
    }
    nothing_written(&env).await;
}

#[tokio::test]
async fn dot_segments_and_empty_segments_name_no_other_instance() {
    let env = Env::start().await;
    let payments = env.gw.client("payments");
    // `.` and `..` as an id would be resolved away by clients and proxies.
    for id in ["..", "."] {
        each_write(&payments, "payments", id, 400, Some("id")).await;
    }
    let mut g = testkit::grpc::registry(&env.gw, "payments").await;
    each_grpc_write(&mut g, "payments", "..", Code::InvalidArgument, Some("id")).await;
    // Dots and dots in the service segment.
    for service in ["..", "."] {
        each_write(&payments, service, "a", 400, Some("service")).await;
    }
    // The server does not resolve dot-segments or merge slashes: an empty segment is an empty
    // name, and a path of another shape matches no endpoint, whoever asks.
    let billing = env.gw.client("billing");
    let body_bytes = || Some(serde_json::to_vec(&body("10.6.6.6", 6666)).unwrap());
    for (p, status, field) in [
        ("/v1/services//instances/a", 400, Some("service")),
        ("/v1/services/payments/instances/", 404, None),
        ("/v1/services/billing/../payments/instances/a", 404, None),
        ("/v1/services/payments/instances/../instances/a", 404, None),
        ("/v1/services/payments/instances/a/..", 404, None),
        ("/v1/services/payments/instances/a/../b", 404, None),
        ("/v1/services/payments//instances/a", 404, None),
        ("/v1/services/payments/instances//a", 404, None),
        ("/v1/services/payments/instances/a/", 404, None),
        ("//v1/services/payments/instances/a", 404, None),
        ("/v1//services/payments/instances/a", 404, None),
        ("/v1/services/payments/./instances/a", 404, None),
    ] {
        for c in [&payments, &billing] {
            for (method, b) in [("PUT", body_bytes()), ("DELETE", None)] {
                let r = c.request(method, p, b).await;
                assert_eq!(r.status, status, "{method} {p}: {}", r.text);
                match field {
                    Some(f) => assert_eq!(r.json["field"], f, "{method} {p}: {}", r.text),
                    None => assert_eq!(r.json["error"], "not_found", "{method} {p}: {}", r.text),
                }
            }
        }
    }
    nothing_written(&env).await;
}

#[tokio::test]
async fn ids_that_differ_by_a_trailing_dot_or_case_are_other_instances() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    let ids = [
        ("pay-1", 8001),
        ("pay-1.", 8002),
        ("pay-1..", 8003),
        ("PAY-1", 8004),
        ("Pay-1", 8005),
    ];
    for (id, port) in ids {
        let r = c
            .put_json(&path("payments", id), &body("10.0.0.5", port))
            .await;
        assert_eq!(r.status, 200, "{id}: {}", r.text);
        assert_eq!(r.json["id"], id, "{}", r.text);
        assert_eq!(r.json["degraded"], false, "{id}: {}", r.text);
    }
    let check = |expect: Vec<(&'static str, u16)>| {
        let env = &env;
        let c = &c;
        async move {
            let listed = c.get("/v1/services/payments/instances").await;
            let got: Vec<(String, u64)> = listed.json["instances"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    (
                        i["id"].as_str().unwrap().to_owned(),
                        i["port"].as_u64().unwrap(),
                    )
                })
                .collect();
            let mut want: Vec<(String, u64)> = expect
                .iter()
                .map(|(i, p)| (i.to_string(), u64::from(*p)))
                .collect();
            let mut got_sorted = got.clone();
            got_sorted.sort();
            want.sort();
            assert_eq!(got_sorted, want, "{}", listed.text);
            let services = env.consul.agent_services().await;
            for (id, port) in &expect {
                let (rec, _) = env.etcd_record("payments", id).await.expect(id);
                assert_eq!(rec["id"], *id);
                assert_eq!(rec["port"], *port, "etcd {id}");
                let svc = &services[&format!("payments.{id}")];
                assert_eq!(svc["Port"], *port, "Consul {id}");
            }
            let ids: Vec<&str> = expect.iter().map(|(i, _)| *i).collect();
            holds_exactly(env, "payments", &ids).await;
        }
    };
    check(ids.to_vec()).await;

    // Deregistering one spelling leaves every other one as it was.
    for id in ["PAY-1", "pay-1."] {
        let r = c.delete(&path("payments", id)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["existed"], true, "{}", r.text);
    }
    check(vec![("pay-1", 8001), ("pay-1..", 8003), ("Pay-1", 8005)]).await;
    // A heartbeat on a deregistered spelling does not renew another one.
    for id in ["PAY-1", "pay-1."] {
        let r = c.put(&format!("{}/heartbeat", path("payments", id))).await;
        assert_eq!(r.status, 404, "{id}: {}", r.text);
    }
    let r = c
        .put(&format!("{}/heartbeat", path("payments", "pay-1")))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    check(vec![("pay-1", 8001), ("pay-1..", 8003), ("Pay-1", 8005)]).await;
}
