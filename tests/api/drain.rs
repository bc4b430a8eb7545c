//! Drain: an instance taken out of native discovery (etcd's gRPC resolver, Consul's passing
//! queries) stays registered and heartbeating, is listed `drained: true`, and comes back on
//! undrain. What native clients see is read from the registries themselves: etcd's keys and watch
//! events read the way etcd's resolver reads them, Consul's own health answers.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use serde_json::{Value, json};
use testkit::grpc::registry;
use tonic::Code;
use twinreg::api::grpc::pb;

use crate::{Env, body, path};

fn drain_path(service: &str, id: &str) -> String {
    format!("{}/drain", path(service, id))
}

/// What etcd's resolver (`clientv3/naming/endpoints`) makes of a value: Go's `json.Unmarshal`
/// into `{Op uint8; Addr string; Metadata interface{}}`, `None` when that fails (the key is
/// skipped), else the address.
fn resolver_reads(value: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(value).ok()?;
    let obj = v.as_object()?;
    match obj.get("Op") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= 255) => {}
        Some(_) => return None,
    }
    match obj.get("Addr") {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(a)) => Some(a.clone()),
        Some(_) => None,
    }
}

/// The addresses a resolver watching `dir` holds after a listing and then `events` (a put it
/// cannot read is skipped, keeping what it had; a delete removes the key).
fn resolver_view(
    listing: &[(String, Vec<u8>)],
    events: &[(EventType, String, Vec<u8>)],
) -> BTreeMap<String, String> {
    let mut view = BTreeMap::new();
    for (k, v) in listing {
        if let Some(a) = resolver_reads(v) {
            view.insert(k.clone(), a);
        }
    }
    for (t, k, v) in events {
        match t {
            EventType::Put => {
                if let Some(a) = resolver_reads(v) {
                    view.insert(k.clone(), a);
                }
            }
            EventType::Delete => {
                view.remove(k);
            }
        }
    }
    view
}

async fn etcd_listing(env: &Env, dir: &str) -> Vec<(String, Vec<u8>)> {
    let mut c = env.etcd.client().await;
    let r = c
        .get(dir, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    r.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            )
        })
        .collect()
}

/// IDs of `service` in Consul's `/v1/health/service/{service}?passing`.
async fn consul_passing(env: &Env, service: &str) -> Vec<String> {
    let v = env
        .consul
        .get_json(&format!("/v1/health/service/{service}?passing"))
        .await;
    let mut ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Service"]["ID"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

async fn listed(env: &Env, service: &str) -> BTreeMap<String, Value> {
    let r = env
        .gw
        .client(service)
        .get(&format!("/v1/services/{service}/instances"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["id"].as_str().unwrap().to_owned(), i.clone()))
        .collect()
}

#[tokio::test]
async fn a_drained_instance_leaves_native_discovery_keeps_heartbeating_and_comes_back() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    for (id, addr) in [("pay-1", "10.0.0.5"), ("pay-2", "10.0.0.6")] {
        let r = c.put_json(&path("payments", id), &body(addr, 8080)).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let dir = "/services/payments/";
    let listing = etcd_listing(&env, dir).await;
    let before = resolver_view(&listing, &[]);
    assert_eq!(before.len(), 2, "{before:?}");

    // A resolver already watching, from the listing on.
    let mut etcd = env.etcd.client().await;
    let rev = etcd
        .get(dir, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut stream = etcd
        .watch(
            dir,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rev + 1),
            ),
        )
        .await
        .unwrap();

    let r = c.put(&drain_path("payments", "pay-1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["drained"], true, "{}", r.text);
    assert_eq!(r.json["degraded"], false, "{}", r.text);
    assert_eq!(r.json["registries"]["etcd"]["ok"], true, "{}", r.text);
    assert_eq!(r.json["registries"]["consul"]["ok"], true, "{}", r.text);

    // etcd: the record is still there, drained, unreadable to the resolver; a watching resolver
    // saw it deleted first.
    let (value, lease) = env.etcd_record("payments", "pay-1").await.expect("kept");
    assert_ne!(lease, 0, "still on a lease");
    assert_eq!(value["drained"], true, "{value}");
    assert_eq!(value["address"], "10.0.0.5", "{value}");
    let mut events = Vec::new();
    while let Ok(Ok(Some(w))) =
        tokio::time::timeout(Duration::from_millis(500), stream.message()).await
    {
        for e in w.events() {
            let kv = e.kv().unwrap();
            events.push((
                e.event_type(),
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            ));
        }
    }
    let watching = resolver_view(&listing, &events);
    let fresh = resolver_view(&etcd_listing(&env, dir).await, &[]);
    for view in [&watching, &fresh] {
        assert_eq!(
            view.values().collect::<Vec<_>>(),
            vec!["10.0.0.6:8080"],
            "the resolver must see pay-2 only: {view:?} (events {})",
            events.len()
        );
    }

    // Consul: maintenance mode, out of the passing answer, still registered.
    assert_eq!(consul_passing(&env, "payments").await, ["payments.pay-2"]);
    let checks = env.consul.agent_checks().await;
    let m = &checks["_service_maintenance:payments.pay-1"];
    assert_eq!(m["Status"], "critical", "{m}");
    assert_eq!(m["Name"], "Service Maintenance Mode", "{m}");
    assert_eq!(m["ServiceID"], "payments.pay-1", "{m}");
    assert!(env.consul_service("payments", "pay-1").await.is_some());

    // twinreg: listed, drained, from both registries; heartbeats still answered.
    let l = listed(&env, "payments").await;
    assert_eq!(l["pay-1"]["drained"], true, "{:?}", l["pay-1"]);
    assert_eq!(l["pay-1"]["sources"], json!(["etcd", "consul"]));
    assert_eq!(l["pay-2"]["drained"], false);
    let r = c
        .put(&format!("{}/heartbeat", path("payments", "pay-1")))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["ok"], true);

    // Draining again changes nothing.
    let r = c.put(&drain_path("payments", "pay-1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(consul_passing(&env, "payments").await, ["payments.pay-2"]);

    // Undrain: back everywhere.
    let r = c.delete(&drain_path("payments", "pay-1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["drained"], false, "{}", r.text);
    let (value, _) = env.etcd_record("payments", "pay-1").await.unwrap();
    assert_eq!(value["Op"], 0, "{value}");
    assert!(value.get("drained").is_none(), "{value}");
    let fresh = resolver_view(&etcd_listing(&env, dir).await, &[]);
    assert_eq!(fresh.len(), 2, "{fresh:?}");
    assert_eq!(
        consul_passing(&env, "payments").await,
        ["payments.pay-1", "payments.pay-2"]
    );
    assert!(
        !env.consul
            .agent_checks()
            .await
            .contains_key("_service_maintenance:payments.pay-1")
    );
    assert_eq!(listed(&env, "payments").await["pay-1"]["drained"], false);

    // A new registration of a drained instance is a new record: in rotation again.
    assert_eq!(c.put(&drain_path("payments", "pay-1")).await.status, 200);
    let r = c
        .put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(listed(&env, "payments").await["pay-1"]["drained"], false);
    assert_eq!(
        consul_passing(&env, "payments").await,
        ["payments.pay-1", "payments.pay-2"]
    );
}

#[tokio::test]
async fn a_long_poll_wakes_when_an_instance_is_drained() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    let r = c
        .put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = c.get("/v1/services/payments/instances").await;
    let index = r.json["index"].as_u64().unwrap();
    let poll = {
        let c = env.gw.client("payments");
        tokio::spawn(async move {
            c.get(&format!(
                "/v1/services/payments/instances?index={index}&wait=20s"
            ))
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.put(&drain_path("payments", "pay-1")).await.status, 200);
    let r = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("the long poll answers on the drain")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_ne!(r.json["index"].as_u64().unwrap(), index);
    assert_eq!(r.json["instances"][0]["drained"], true, "{}", r.text);
}

#[tokio::test]
async fn drain_refuses_bad_input_and_writes_nothing() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    let r = c
        .put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Unknown instance: 404, and nothing is created.
    let r = c.put(&drain_path("payments", "ghost")).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.json["error"], "unknown_instance", "{}", r.text);
    assert!(env.etcd_record("payments", "ghost").await.is_none());
    assert!(env.consul_service("payments", "ghost").await.is_none());
    let r = c.delete(&drain_path("payments", "ghost")).await;
    assert_eq!(r.status, 404, "{}", r.text);

    // Another service's instance: 403.
    let other = env.gw.client("orders");
    let r = other.put(&drain_path("payments", "pay-1")).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.json["error"], "forbidden", "{}", r.text);

    // Bad names: 400 naming the field.
    let r = c.put(&drain_path("payments", "bad%20id")).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json["field"], "id", "{}", r.text);
    let r = c.put(&drain_path("Payments", "pay-1")).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json["field"], "service", "{}", r.text);

    // A body is refused, not ignored.
    let r = c
        .put_json(
            &drain_path("payments", "pay-1"),
            &json!({"reason": "deploy"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json["field"], "body", "{}", r.text);
    // An empty object is no body.
    let r = c
        .put_json(&drain_path("payments", "pay-1"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = c.delete(&drain_path("payments", "pay-1")).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Nothing the refusals touched changed.
    assert_eq!(listed(&env, "payments").await["pay-1"]["drained"], false);
    let (value, _) = env.etcd_record("payments", "pay-1").await.unwrap();
    assert_eq!(value["Op"], 0, "{value}");
}

#[tokio::test]
async fn grpc_drain_and_undrain() {
    let env = Env::start().await;
    let rest = env.gw.client("payments");
    let r = rest
        .put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut c = registry(&env.gw, "payments").await;

    let d = c
        .drain(pb::DrainRequest {
            service: "payments".into(),
            id: "pay-1".into(),
        })
        .await
        .expect("drain")
        .into_inner();
    assert!(d.drained && !d.degraded, "{d:?}");
    let l = c
        .list_instances(pb::ListInstancesRequest {
            service: "payments".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(l.instances[0].drained, "{l:?}");
    assert_eq!(consul_passing(&env, "payments").await, Vec::<String>::new());

    let u = c
        .undrain(pb::UndrainRequest {
            service: "payments".into(),
            id: "pay-1".into(),
        })
        .await
        .expect("undrain")
        .into_inner();
    assert!(!u.drained && !u.degraded, "{u:?}");
    assert_eq!(consul_passing(&env, "payments").await, ["payments.pay-1"]);

    let e = c
        .drain(pb::DrainRequest {
            service: "payments".into(),
            id: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = c
        .drain(pb::DrainRequest {
            service: "payments".into(),
            id: "bad id".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut other = registry(&env.gw, "orders").await;
    let e = other
        .undrain(pb::UndrainRequest {
            service: "payments".into(),
            id: "pay-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}
