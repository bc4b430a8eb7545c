//! The value stored under each etcd key, and reading keys back: a record carries the instance's
//! fields and what etcd's gRPC name resolver reads (`Op`, `Addr`, `Metadata`); a value another tool
//! wrote is read as garbage, never a panic.
//!
//! A drained instance keeps its key and its fields, `"drained": true`, and `"Op": "drained"`: etcd's
//! resolver (`clientv3/naming/endpoints`) takes every readable put as an endpoint whatever its
//! `Op` says, and skips a value it cannot read, which a string `Op` is (it is a number there). A
//! drain therefore deletes the key before writing it back drained ([`super::txn`]): a resolver
//! already watching drops the endpoint on the delete and ignores the drained put.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::model::{
    DEFAULT_TTL_SECONDS, Instance, InstanceId, InstanceKey, MAX_TTL_SECONDS, MIN_TTL_SECONDS, Meta,
    ServiceName,
};

/// The JSON value stored under each key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    service: String,
    id: String,
    address: String,
    port: u16,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    meta: Meta,
    #[serde(default = "default_ttl")]
    ttl_seconds: u32,
    #[serde(default)]
    generation: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    drained: bool,
    /// etcd naming `endpoints.Update`: 0 = Add; `"drained"` for a drained instance, so the
    /// resolver cannot read the value and skips it. Written for the resolver, never read back.
    #[serde(rename = "Op", default, skip_deserializing)]
    op: serde_json::Value,
    #[serde(rename = "Addr", default)]
    addr: String,
    /// Written for the resolver, never read back (a second decoded copy of the meta).
    #[serde(rename = "Metadata", default, skip_deserializing)]
    metadata: serde_json::Value,
}

fn default_ttl() -> u32 {
    DEFAULT_TTL_SECONDS
}

impl Record {
    pub(crate) fn from_instance(i: &Instance) -> Self {
        let addr = match i.address.parse::<IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, i.port).to_string(),
            Err(_) => format!("{}:{}", i.address, i.port),
        };
        Record {
            service: i.key.service.to_string(),
            id: i.key.id.to_string(),
            address: i.address.clone(),
            port: i.port,
            tags: i.tags.clone(),
            meta: i.meta.clone(),
            ttl_seconds: i.ttl_seconds,
            generation: i.generation,
            drained: i.drained,
            op: if i.drained {
                serde_json::Value::from("drained")
            } else {
                serde_json::Value::from(0)
            },
            addr,
            metadata: serde_json::to_value(&i.meta).unwrap_or_default(),
        }
    }

    /// Decodes a value another tool may have written; garbage gives `None`, never a panic.
    pub(super) fn decode(key: &InstanceKey, value: &[u8]) -> Option<Instance> {
        let r: Record = serde_json::from_slice(value).ok()?;
        if r.service != key.service.as_str() || r.id != key.id.as_str() {
            return None;
        }
        if r.address.is_empty() || r.port == 0 {
            return None;
        }
        let ttl = if (MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&r.ttl_seconds) {
            r.ttl_seconds
        } else {
            DEFAULT_TTL_SECONDS
        };
        Some(Instance {
            key: key.clone(),
            address: r.address,
            port: r.port,
            tags: r.tags,
            meta: r.meta,
            ttl_seconds: ttl,
            generation: r.generation,
            drained: r.drained,
        })
    }
}

/// What a key under a service's directory holds.
pub(crate) enum KeyRead {
    /// A twinreg instance.
    Instance(Instance),
    /// An instance key whose value twinreg cannot read (written by another tool).
    Garbage(InstanceId),
}

/// Reads one key of the directory `dir` (`{prefix}/{service}/`); `None` for a key that cannot be
/// an instance of `service` (outside the directory, or an id the API would refuse).
pub(crate) fn decode_kv(
    dir: &str,
    service: &ServiceName,
    key: &[u8],
    value: &[u8],
) -> Option<KeyRead> {
    let id = key.strip_prefix(dir.as_bytes())?;
    let id = InstanceId::parse(std::str::from_utf8(id).ok()?).ok()?;
    let key = InstanceKey {
        service: service.clone(),
        id,
    };
    Some(match Record::decode(&key, value) {
        Some(i) => KeyRead::Instance(i),
        None => KeyRead::Garbage(key.id),
    })
}

/// The instances among a directory's keys; unreadable records are logged and skipped.
pub(super) fn decode_dir(
    dir: &str,
    service: &ServiceName,
    kvs: &[etcd_client::KeyValue],
) -> Vec<Instance> {
    let mut out = Vec::with_capacity(kvs.len());
    for kv in kvs {
        match decode_kv(dir, service, kv.key(), kv.value()) {
            Some(KeyRead::Instance(i)) => out.push(i),
            _ => tracing::warn!(
                key = %String::from_utf8_lossy(kv.key()),
                "skipping an etcd record twinreg cannot read"
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> InstanceKey {
        InstanceKey::parse("payments", "pay-1").unwrap()
    }

    #[test]
    fn record_has_resolver_fields() {
        let i = Instance {
            key: key(),
            address: "::1".into(),
            port: 8080,
            tags: vec!["v2".into()],
            meta: [("zone".to_string(), "eu-1a".to_string())].into(),
            ttl_seconds: 30,
            generation: 7,
            drained: false,
        };
        let v = serde_json::to_value(Record::from_instance(&i)).unwrap();
        assert_eq!(v["Op"], 0);
        assert!(
            v.get("drained").is_none(),
            "a live record carries no drained field"
        );
        assert_eq!(v["Addr"], "[::1]:8080");
        assert_eq!(v["Metadata"]["zone"], "eu-1a");
        assert_eq!(v["ttl_seconds"], 30);
        let back = Record::decode(&key(), &serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(back, i);
    }

    #[test]
    fn a_drained_record_is_unreadable_to_the_resolver_and_read_back_drained() {
        let i = Instance {
            drained: true,
            ..Instance::for_test("payments", "pay-1")
        };
        let v = serde_json::to_value(Record::from_instance(&i)).unwrap();
        // etcd's resolver decodes `Op` as a number (`endpoints.Operation`, a uint8): a string
        // fails its json.Unmarshal and the key is skipped.
        assert!(v["Op"].is_string(), "Op must not read as a number: {v}");
        assert_eq!(v["drained"], true);
        let back = Record::decode(&key(), &serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(back, i);
    }

    #[test]
    fn garbage_decodes_to_none() {
        for bad in [
            &b"not json"[..],
            b"{}",
            b"[1]",
            br#"{"service":"other","id":"pay-1","address":"h","port":1}"#,
        ] {
            assert!(Record::decode(&key(), bad).is_none());
        }
    }
}
