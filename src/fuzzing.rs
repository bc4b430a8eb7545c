//! Entry points for the fuzz targets (`fuzz/`, see `docs/fuzzing.md`) and their regression test
//! (`tests/fuzz_regressions.rs`). **Not part of twinreg's API**: hidden from the docs, and free to
//! change with the private code it reaches.
//!
//! Each function is a one-line call of a private function that production uses on untrusted
//! bytes, so a fuzzer drives exactly that code; none adds behaviour of its own. The public
//! parsers (`model::parse_register_body`, `model::InstanceKey::parse`, `authz::Peer::from_der`,
//! the generated `api::grpc::pb` messages) are called directly and need nothing here.

use serde_json::{Map, Value};

use crate::api::grpc::{self, pb};
use crate::model::{Instance, InstanceId, ServiceName};
use crate::registry::RegistryError;
use crate::registry::{consul, etcd};

/// A gRPC `RegisterRequest` as the JSON object the shared validation
/// (`model::register_from_fields`) reads: what `Register` does once the caller is authorized.
pub fn grpc_register_fields(r: pb::RegisterRequest) -> Map<String, Value> {
    grpc::register_fields(r)
}

/// Reads one etcd key/value of the directory `dir` (`{prefix}/{service}/`), as the list and the
/// watch do: `None` when the key cannot be an instance of `service`, `Some(Ok)` for an instance,
/// `Some(Err(id))` for an instance key whose value twinreg cannot read (another tool's record).
pub fn etcd_decode_kv(
    dir: &str,
    service: &ServiceName,
    key: &[u8],
    value: &[u8],
) -> Option<Result<Instance, InstanceId>> {
    etcd::decode_kv(dir, service, key, value).map(|r| match r {
        etcd::KeyRead::Instance(i) => Ok(i),
        etcd::KeyRead::Garbage(id) => Err(id),
    })
}

/// The etcd value twinreg writes for an instance.
pub fn etcd_encode(i: &Instance) -> Vec<u8> {
    serde_json::to_vec(&etcd::Record::from_instance(i)).expect("a record serializes")
}

/// A `/v1/health/service/{service}` answer as the list, get, inventory and watch read it.
pub fn consul_parse_health(
    service: &ServiceName,
    body: &[u8],
) -> Result<Vec<(Instance, bool)>, RegistryError> {
    consul::parse_health(service, body)
}

/// The `Notes` twinreg writes on an instance's check, as replica `replica` holds it.
pub fn consul_notes(i: &Instance, replica: &str) -> String {
    consul::notes(i, replica)
}

/// `(ttl_seconds, generation)` read back from a check's `Notes`.
pub fn consul_parse_notes(notes: &str) -> (u32, u64) {
    consul::parse_notes(notes)
}
