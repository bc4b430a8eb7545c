//! The gRPC front (`twinreg.v1.Registry`, health, reflection) on the same mutual-TLS listener as
//! REST, with a tonic client; what it writes is checked by reading etcd and Consul directly.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;
use twinreg::api::grpc::pb;
use twinreg::api::grpc::pb::registry_client::RegistryClient;

use crate::{Env, body, path};
use testkit::grpc::{channel, registry};
use testkit::{eventually, metric};

fn register_req(service: &str, id: &str, address: &str, port: u32) -> pb::RegisterRequest {
    pb::RegisterRequest {
        service: service.into(),
        id: id.into(),
        address: address.into(),
        port,
        tags: vec!["v2".into()],
        meta: HashMap::from([("zone".into(), "eu-1a".into())]),
        ttl_seconds: None,
    }
}

fn hb(service: &str, id: &str) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest {
        service: service.into(),
        id: id.into(),
    }
}

fn dereg(service: &str, id: &str) -> pb::DeregisterRequest {
    pb::DeregisterRequest {
        service: service.into(),
        id: id.into(),
    }
}

fn list(service: &str) -> pb::ListInstancesRequest {
    pb::ListInstancesRequest {
        service: service.into(),
    }
}

fn md<'a>(s: &'a Status, key: &str) -> Option<&'a str> {
    s.metadata().get(key).and_then(|v| v.to_str().ok())
}

/// Each registry's outcome (`ok` or its error), from the status's google.rpc `ErrorInfo`; the
/// message carries no JSON.
fn registries_in(s: &Status) -> HashMap<String, String> {
    assert!(!s.message().contains('{'), "JSON in the message: {s:?}");
    let info = s
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo: {s:?}"));
    assert_eq!(info.domain, "twinreg");
    info.metadata
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("registry.")?.to_owned(), v)))
        .collect()
}

fn assert_both_ok(registries: &HashMap<String, pb::RegistryOutcome>, what: &str) {
    assert_eq!(registries.len(), 2, "{what}: {registries:?}");
    for name in ["etcd", "consul"] {
        let o = &registries[name];
        assert!(o.ok, "{what}: {name}: {o:?}");
        assert!(o.error.is_empty(), "{what}: {name}: {o:?}");
    }
}

#[tokio::test]
async fn grpc_and_rest_share_one_listener_register_list_heartbeat_deregister() {
    let env = Env::start().await;
    let mut c = registry(&env.gw, "payments").await;
    let rest = env.gw.client("payments");

    // Register over gRPC; ttl_seconds unset means 30.
    let r = c
        .register(register_req("payments", "pay-1", "10.0.0.5", 8080))
        .await
        .expect("register")
        .into_inner();
    assert!(r.registered);
    assert_eq!((r.service.as_str(), r.id.as_str()), ("payments", "pay-1"));
    assert_eq!(r.ttl_seconds, 30);
    assert!(!r.degraded, "{r:?}");
    assert_both_ok(&r.registries, "register");

    let (value, lease) = env
        .etcd_record("payments", "pay-1")
        .await
        .expect("etcd holds the key");
    assert_ne!(lease, 0);
    assert_eq!(value["address"], "10.0.0.5");
    assert_eq!(value["port"], 8080);
    assert_eq!(value["tags"], json!(["v2"]));
    assert_eq!(value["meta"], json!({"zone": "eu-1a"}));
    assert_eq!(value["ttl_seconds"], 30);
    let mut etcd = env.etcd.client().await;
    assert_eq!(
        etcd.lease_time_to_live(lease, None)
            .await
            .unwrap()
            .granted_ttl(),
        i64::from(twinreg::registry::etcd::lease_ttl(30))
    );
    let svc = env
        .consul_service("payments", "pay-1")
        .await
        .expect("consul holds the service");
    assert_eq!(svc["Address"], "10.0.0.5");
    assert_eq!(svc["Port"], 8080);
    assert_eq!(svc["Tags"], json!(["v2"]));
    assert_eq!(svc["Meta"], json!({"zone": "eu-1a"}));

    // REST on the same port, alongside the open gRPC channel: one more instance, explicit TTL.
    let r = rest
        .put_json(&path("payments", "pay-2"), &body("10.0.0.6", 9090))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let l = c
        .list_instances(list("payments"))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(l.service, "payments");
    assert_both_ok(&l.registries, "list");
    let ids: Vec<&str> = l.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["pay-1", "pay-2"], "{l:?}");
    let i = &l.instances[0];
    assert_eq!(i.address, "10.0.0.5");
    assert_eq!(i.port, 8080);
    assert_eq!(i.tags, ["v2"]);
    assert_eq!(i.meta, HashMap::from([("zone".into(), "eu-1a".into())]));
    assert_eq!(i.ttl_seconds, 30);
    assert_eq!(i.sources, ["etcd", "consul"]);
    assert_eq!(l.instances[1].port, 9090);
    // The same set gives the same index over REST.
    let r = rest.get("/v1/services/payments/instances").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["index"], l.index, "{}", r.text);
    assert_eq!(r.json["instances"][0]["sources"], json!(["etcd", "consul"]));

    // Heartbeat: OK for a known instance, NOT_FOUND with each registry's outcome otherwise.
    let h = c
        .heartbeat(hb("payments", "pay-1"))
        .await
        .expect("heartbeat")
        .into_inner();
    assert!(h.ok && !h.degraded, "{h:?}");
    assert_both_ok(&h.registries, "heartbeat");
    let e = c.heartbeat(hb("payments", "nobody")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("register it again"), "{e:?}");
    let registries = registries_in(&e);
    for name in ["etcd", "consul"] {
        assert_eq!(registries[name], "unknown instance", "{e:?}");
    }
    assert_eq!(md(&e, "twinreg-error"), Some("unknown_instance"));
    assert_eq!(
        e.get_details_error_info().unwrap().reason,
        "UNKNOWN_INSTANCE"
    );

    // Deregister, idempotently; gone from both registries and from the list.
    let d = c
        .deregister(dereg("payments", "pay-1"))
        .await
        .expect("deregister")
        .into_inner();
    assert!(d.deregistered && d.existed && !d.degraded, "{d:?}");
    assert_both_ok(&d.registries, "deregister");
    assert!(env.etcd_record("payments", "pay-1").await.is_none());
    assert!(env.consul_service("payments", "pay-1").await.is_none());
    let d = c
        .deregister(dereg("payments", "pay-1"))
        .await
        .expect("deregister again")
        .into_inner();
    assert!(d.deregistered && !d.existed, "{d:?}");
    let l = c
        .list_instances(list("payments"))
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<&str> = l.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["pay-2"]);
    // REST still answers after all that gRPC traffic, on the same connection pool and port.
    let r = rest.get("/v1/services/payments/instances").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["index"], l.index, "{}", r.text);
    // A REST call carrying no gRPC content type to a gRPC path is REST's 404, not gRPC.
    let r = rest
        .request("POST", "/twinreg.v1.Registry/ListInstances", None)
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.json["error"], "not_found");

    // gRPC calls are counted like REST ones, with the gRPC status code by name in its own
    // label (the HTTP status of a gRPC answer is 200), and unary calls are timed.
    let (_, m) = env.gw.admin_get("/metrics").await;
    let count = |route: &str, code: &str| {
        metric(
            &m,
            "twinreg_http_requests_total",
            &[
                ("route", route),
                ("method", "POST"),
                ("status", "200"),
                ("grpc_code", code),
            ],
        )
    };
    assert_eq!(count("grpc.Register", "OK"), 1.0, "{m}");
    assert_eq!(count("grpc.ListInstances", "OK"), 2.0, "{m}");
    assert_eq!(count("grpc.Heartbeat", "OK"), 1.0, "{m}");
    assert_eq!(count("grpc.Heartbeat", "NOT_FOUND"), 1.0, "{m}");
    assert_eq!(count("grpc.Deregister", "OK"), 2.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "twinreg_request_duration_seconds_count",
            &[("route", "grpc.Heartbeat"), ("method", "POST")],
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "twinreg_http_requests_total",
            &[("route", "instance"), ("method", "PUT"), ("status", "200")]
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn grpc_invalid_input_names_the_field_like_rest_and_writes_nothing() {
    let env = Env::start().await;
    let mut c = registry(&env.gw, "payments").await;
    let rest = env.gw.client("payments");

    let with = |f: &dyn Fn(&mut pb::RegisterRequest)| {
        let mut r = register_req("payments", "pay-1", "10.0.0.5", 8080);
        f(&mut r);
        r
    };
    // (request, field, the REST body of the same request when there is one)
    let cases: Vec<(pb::RegisterRequest, &str, Option<serde_json::Value>)> = vec![
        (
            with(&|r| r.port = 0),
            "port",
            Some(json!({"address": "10.0.0.5", "port": 0})),
        ),
        (
            with(&|r| r.port = 70000),
            "port",
            Some(json!({"address": "10.0.0.5", "port": 70000})),
        ),
        (
            with(&|r| r.ttl_seconds = Some(2)),
            "ttl_seconds",
            Some(json!({"address": "10.0.0.5", "port": 8080, "ttl_seconds": 2})),
        ),
        (
            with(&|r| r.address = "not an address".into()),
            "address",
            Some(json!({"address": "not an address", "port": 8080})),
        ),
        (
            with(&|r| {
                r.meta.insert("bad key".into(), "v".into());
            }),
            "meta",
            Some(json!({"address": "10.0.0.5", "port": 8080, "meta": {"bad key": "v"}})),
        ),
        (with(&|r| r.address = String::new()), "address", None),
        (with(&|r| r.service = "Pay_ments".into()), "service", None),
        (with(&|r| r.id = "a/b".into()), "id", None),
    ];
    for (req, field, rest_body) in cases {
        let what = format!("{req:?}");
        let e = c.register(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(
            e.message().starts_with(&format!("{field}: ")),
            "{what}: the message must name {field}: {e:?}"
        );
        assert_eq!(md(&e, "twinreg-field"), Some(field), "{what}: {e:?}");
        assert_eq!(md(&e, "twinreg-error"), Some("invalid_request"), "{what}");
        // google.rpc.BadRequest names the field, as any gRPC client library reads it.
        let bad = e
            .get_details_bad_request()
            .unwrap_or_else(|| panic!("{what}: no BadRequest: {e:?}"));
        assert_eq!(bad.field_violations[0].field, field, "{what}");
        if let Some(b) = rest_body {
            let r = rest.put_json(&path("payments", "pay-1"), &b).await;
            assert_eq!(r.status, 400, "{}", r.text);
            assert_eq!(
                r.json["message"],
                e.message(),
                "{what}: REST and gRPC differ"
            );
        }
    }
    let e = c
        .register(with(&|r| r.address = String::new()))
        .await
        .unwrap_err();
    assert_eq!(e.message(), "address: is required");

    // A message over the 64 KiB cap.
    let big = with(&|r| {
        r.meta.insert("big".into(), "x".repeat(70 * 1024));
    });
    let e = c.register(big).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("64 KiB"), "{e:?}");
    assert_eq!(md(&e, "twinreg-error"), Some("payload_too_large"));

    // A bad service name on the other RPCs too.
    let e = c.heartbeat(hb("-x", "pay-1")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("service: "), "{e:?}");
    let e = c.list_instances(list("")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("service: "), "{e:?}");

    assert!(env.etcd.instances().await.is_empty());
    assert!(env.consul.instances().await.is_empty());
    // The channel still works after all those errors.
    c.register(register_req("payments", "pay-1", "10.0.0.5", 8080))
        .await
        .expect("a valid register after invalid ones");
}

#[tokio::test]
async fn grpc_permission_denied_for_another_services_instance() {
    let env = Env::start().await;
    let mut payments = registry(&env.gw, "payments").await;
    let mut billing = registry(&env.gw, "billing").await;
    payments
        .register(register_req("payments", "pay-1", "10.0.0.5", 8080))
        .await
        .expect("register");

    let e = billing
        .heartbeat(hb("payments", "pay-1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("'billing'"), "{e:?}");
    let e = billing
        .deregister(dereg("payments", "pay-1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = billing
        .register(register_req("payments", "evil", "10.6.6.6", 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(md(&e, "twinreg-error"), Some("forbidden"));

    assert!(env.etcd_record("payments", "pay-1").await.is_some());
    assert!(env.consul_service("payments", "pay-1").await.is_some());
    assert!(env.etcd_record("payments", "evil").await.is_none());
    assert!(env.consul_service("payments", "evil").await.is_none());
    // Reads are open to every authenticated identity by default.
    let l = billing
        .list_instances(list("payments"))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(l.instances.len(), 1);
}

#[tokio::test]
async fn grpc_unavailable_when_both_registries_are_down_and_health_follows() {
    let mut env = Env::start().await;
    let ch = channel(&env.gw, "payments").await;
    let mut c = RegistryClient::new(ch.clone());
    let mut health = HealthClient::new(ch);
    c.register(register_req("payments", "pay-1", "10.0.0.5", 8080))
        .await
        .expect("register");

    env.etcd.kill();
    env.consul.kill();
    let e = c
        .register(register_req("payments", "pay-2", "10.0.0.6", 8080))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let registries = registries_in(&e);
    // Wait as long as the status's RetryInfo says (the REST Retry-After).
    let retry = e
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap_or_else(|| panic!("no RetryInfo: {e:?}"));
    assert!((1..=4).contains(&retry.as_secs()), "{retry:?}");
    for name in ["etcd", "consul"] {
        assert!(
            registries
                .get(name)
                .is_some_and(|s| !s.is_empty() && s != "ok"),
            "{e:?}"
        );
    }
    let secs: u64 = md(&e, "retry-after")
        .expect("retry-after metadata")
        .parse()
        .unwrap();
    assert!((1..=4).contains(&secs), "{e:?}");
    let e = c.list_instances(list("payments")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e = c.heartbeat(hb("payments", "pay-1")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    // With no registry up, the health service says NOT_SERVING.
    eventually(Duration::from_secs(15), "health NOT_SERVING", || {
        let mut health = health.clone();
        async move {
            let s = health
                .check(HealthCheckRequest {
                    service: "twinreg.v1.Registry".into(),
                })
                .await
                .ok()?
                .into_inner()
                .status;
            (s == ServingStatus::NotServing as i32).then_some(())
        }
    })
    .await;
    let s = health
        .check(HealthCheckRequest { service: "".into() })
        .await
        .expect("health check")
        .into_inner()
        .status;
    assert_eq!(s, ServingStatus::NotServing as i32);
}

#[tokio::test]
async fn grpc_health_serving_reflection_lists_the_services_and_shutdown_turns_not_serving() {
    use tonic_reflection::pb::v1 as refl;
    use tonic_reflection::pb::v1alpha as refl_alpha;

    let mut env = Env::start().await;
    let ch = channel(&env.gw, "payments").await;
    let mut health = HealthClient::new(ch.clone());
    for service in ["", "twinreg.v1.Registry"] {
        eventually(
            Duration::from_secs(10),
            &format!("health of {service:?} SERVING"),
            || {
                let mut health = health.clone();
                async move {
                    let s = health
                        .check(HealthCheckRequest {
                            service: service.into(),
                        })
                        .await
                        .ok()?
                        .into_inner()
                        .status;
                    (s == ServingStatus::Serving as i32).then_some(())
                }
            },
        )
        .await;
    }
    let e = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Reflection, v1 and v1alpha: the service list, and the descriptor grpcurl fetches.
    let mut v1 = refl::server_reflection_client::ServerReflectionClient::new(ch.clone());
    let req = |m| refl::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let mut answers = v1
        .server_reflection_info(futures::stream::iter([
            req(refl::server_reflection_request::MessageRequest::ListServices(String::new())),
            req(
                refl::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "twinreg.v1.Registry".into(),
                ),
            ),
        ]))
        .await
        .expect("reflection v1")
        .into_inner();
    use refl::server_reflection_response::MessageResponse as R;
    match answers.message().await.unwrap().unwrap().message_response {
        Some(R::ListServicesResponse(l)) => {
            let names: Vec<&str> = l.service.iter().map(|s| s.name.as_str()).collect();
            for want in ["twinreg.v1.Registry", "grpc.health.v1.Health"] {
                assert!(names.contains(&want), "{want} missing from {names:?}");
            }
        }
        other => panic!("expected a service list, got {other:?}"),
    }
    match answers.message().await.unwrap().unwrap().message_response {
        Some(R::FileDescriptorResponse(f)) => {
            let fd = f.file_descriptor_proto.concat();
            let has = |s: &[u8]| fd.windows(s.len()).any(|w| w == s);
            assert!(has(b"twinreg/v1/registry.proto"), "descriptor: {fd:?}");
            assert!(has(b"ListInstances") && has(b"RegistryOutcome"));
        }
        other => panic!("expected a file descriptor, got {other:?}"),
    }
    let mut alpha = refl_alpha::server_reflection_client::ServerReflectionClient::new(ch.clone());
    let mut answers = alpha
        .server_reflection_info(futures::stream::iter([
            refl_alpha::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(
                    refl_alpha::server_reflection_request::MessageRequest::ListServices(
                        String::new(),
                    ),
                ),
            },
        ]))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    match answers.message().await.unwrap().unwrap().message_response {
        Some(refl_alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
            assert!(
                l.service.iter().any(|s| s.name == "twinreg.v1.Registry"),
                "{l:?}"
            );
        }
        other => panic!("expected a service list, got {other:?}"),
    }
    drop(answers);

    // A health watch opened before shutdown sees NOT_SERVING as soon as shutdown starts.
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "twinreg.v1.Registry".into(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let first = watch.message().await.unwrap().unwrap().status;
    assert_eq!(first, ServingStatus::Serving as i32);
    env.gw.trigger_stop();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("a status change within 5 s of shutdown")
        .expect("the watch stream")
        .expect("a status");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
}
