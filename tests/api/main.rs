//! twinreg end to end, against a real etcd and Consul (or mini-consul) on loopback.

mod admin;
mod antientropy;
mod authz;
mod authz_edges;
mod child;
mod client_go;
mod client_python;
mod client_typescript;
mod connections;
mod credentials;
mod deploy;
mod discovery;
mod drain;
mod examples;
mod faults;
mod fencing;
mod grpc;
mod heartbeat;
mod limits;
mod logs;
mod openapi;
mod ownership;
mod register;
mod resilience;
mod rotation;
mod status;
mod tls;
mod tls_policy;
mod validation;
mod watch;

use serde_json::{Value, json};
use testkit::consul::Consul;
use testkit::etcd::Etcd;
use testkit::gateway::{Gateway, Options};

/// One scenario's servers.
pub struct Env {
    pub etcd: Etcd,
    pub consul: Consul,
    pub gw: Gateway,
}

impl Env {
    pub async fn start() -> Env {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Env {
        let (etcd, consul) = tokio::join!(Etcd::start(), Consul::start());
        let gw = Gateway::start_with(&etcd, &consul, opts).await;
        Env { etcd, consul, gw }
    }

    /// The etcd record of an instance, read directly from etcd.
    pub async fn etcd_record(&self, service: &str, id: &str) -> Option<(Value, i64)> {
        let key = format!("/services/{service}/{id}");
        self.etcd
            .dump(&key)
            .await
            .into_iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, v, lease)| (v, lease))
    }

    /// The Consul agent service of an instance, read directly from Consul.
    pub async fn consul_service(&self, service: &str, id: &str) -> Option<Value> {
        self.consul
            .agent_services()
            .await
            .remove(&format!("{service}.{id}"))
    }
}

pub fn body(address: &str, port: u16) -> Value {
    json!({"address": address, "port": port, "tags": ["v2"], "meta": {"zone": "eu-1a"}, "ttl_seconds": 30})
}

pub fn path(service: &str, id: &str) -> String {
    format!("/v1/services/{service}/instances/{id}")
}
