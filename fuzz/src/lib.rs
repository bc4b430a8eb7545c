//! What each fuzz target checks, one public function per target (`fuzz_targets/<name>.rs` calls
//! the function of the same name and counts its [`Verdict`]). A check panics when twinreg panics on the
//! input **or** when an invariant of the API or of the stored records does not hold, so libFuzzer
//! reports both as a crash.
//!
//! This file is also compiled into the main crate's `tests/fuzz_regressions.rs`, which runs every
//! input of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` through [`TARGETS`] in the
//! ordinary `cargo test`; so it may use only what that test can: `twinreg` and the main crate's
//! own dependencies, no libFuzzer, no `arbitrary`.
//!
//! The invariants, shared by the targets:
//! - [`api_rules`]: an instance the API accepted (REST or gRPC) obeys every rule of
//!   `docs/api.md`, checked here by an independent reading of those rules.
//! - [`stored_rules`]: an instance read back from a registry, however garbled the registry's
//!   contents, names the service and id it was read under (both valid) and has a non-zero port,
//!   a non-empty address and a TTL within 5-3600 s; it need not obey the API's other rules (a
//!   record another tool wrote is served as it is).
//! - [`round_trips`]: what the API accepts is the same through the other front, and reads back
//!   exactly (generation included) from what twinreg writes to etcd and to Consul.

use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;
use serde_json::{Value, json};
use twinreg::api::grpc::pb;
use twinreg::authz::Peer;
use twinreg::fuzzing;
use twinreg::model::ValidationError;
use twinreg::model::{
    Instance, InstanceId, InstanceKey, ServiceName, parse_register_body, register_from_fields,
};
use twinreg::registry::RegistryErrorKind;
use twinreg::registry::RegistryKind;

/// A target's check of one input.
pub type Check = fn(&[u8]) -> Verdict;

/// Every target: its name (of its file in `fuzz_targets/` and of its folders under `corpus/`
/// and `regressions/`) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("register_body", register_body),
    ("register_grpc", register_grpc),
    ("path", path),
    ("peer_identity", peer_identity),
    ("peer_certificate", peer_certificate),
    ("etcd_record", etcd_record),
    ("consul_health", consul_health),
];

/// The service and id the body and record targets work under.
pub const SERVICE: &str = "payments";
pub const ID: &str = "pay-1";
/// twinreg's default etcd prefix (`/services`).
pub const PREFIX: &str = twinreg::registry::etcd::DEFAULT_PREFIX;

/// What a check made of one input, counted for the run's summary ([`count`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// twinreg took it: a valid request or name, a readable record or certificate.
    Accepted,
    /// A bad input: twinreg answered it with an error, or read it as garbage.
    Refused,
    /// Not an input of the target's shape: the harness made nothing of the bytes (not UTF-8
    /// where text is needed, a certificate rcgen will not build).
    Skipped,
}

static COUNTS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Counts a verdict and returns it.
pub fn count(v: Verdict) -> Verdict {
    COUNTS[v as usize].fetch_add(1, Ordering::Relaxed);
    v
}

/// The line `scripts/fuzz.sh` reads: the inputs counted so far, by verdict.
pub fn tally() -> String {
    let [a, r, s] = COUNTS.each_ref().map(|c| c.load(Ordering::Relaxed));
    format!("twinreg-fuzz tally: accepted={a} refused={r} skipped={s}")
}

/// Prints [`tally`] when the process exits (libFuzzer calls `exit` when `-max_total_time` or
/// `-runs` is reached; a crash aborts, and prints nothing).
#[cfg(fuzzing)]
pub fn tally_at_exit() {
    extern "C" fn print() {
        eprintln!("{}", tally());
    }
    // SAFETY: `print` is a plain `extern "C" fn()` that only reads atomics and writes stderr.
    unsafe {
        libc::atexit(print);
    }
}

fn service() -> ServiceName {
    ServiceName::parse(SERVICE).expect("a valid service name")
}

fn key() -> InstanceKey {
    InstanceKey::parse(SERVICE, ID).expect("a valid key")
}

fn etcd_dir(service: &ServiceName) -> String {
    format!("{PREFIX}/{service}/")
}

// === targets ===

/// `register_body`: the bytes as the body of `PUT /v1/services/payments/instances/pay-1`
/// (`model::parse_register_body`). Accepted: [`api_rules`] and [`round_trips`]. Refused: the
/// error names a field of the API, `body`, or an unknown field the body really has.
pub fn register_body(data: &[u8]) -> Verdict {
    match parse_register_body(key(), data) {
        Ok(i) => {
            assert_eq!(i.key, key(), "the key is the one the path named");
            api_rules(&i);
            round_trips(&i);
            Verdict::Accepted
        }
        Err(e) => {
            assert!(!e.message.is_empty(), "an error without a message: {e:?}");
            let named = ["body", "address", "port", "tags", "meta", "ttl_seconds"];
            if !named.contains(&e.field.as_ref()) {
                let obj: serde_json::Map<String, Value> = serde_json::from_slice(data)
                    .unwrap_or_else(|_| panic!("field {:?} named for a non-object", e.field));
                assert!(
                    obj.contains_key(e.field.as_ref()),
                    "field {:?} is neither the API's nor the body's",
                    e.field
                );
            }
            Verdict::Refused
        }
    }
}

/// `register_grpc`: the bytes as a protobuf `RegisterRequest` (prost, as tonic decodes it), then
/// what `Register` does with it: the key, then the shared rules. Decoding then re-encoding gives
/// the same message; the answer (instance, or field and message of the error) is the one REST
/// gives for the same fields; an accepted instance passes [`api_rules`] and [`round_trips`].
/// The same bytes also go through the other request messages and the parse of what they name.
pub fn register_grpc(data: &[u8]) -> Verdict {
    other_grpc_requests(data);
    let Ok(msg) = pb::RegisterRequest::decode(data) else {
        return Verdict::Refused;
    };
    let again = pb::RegisterRequest::decode(msg.encode_to_vec().as_slice())
        .expect("a re-encoded message decodes");
    assert_eq!(again, msg, "prost round trip");
    let grpc = grpc_register(msg.clone());
    let rest = InstanceKey::parse(&msg.service, &msg.id)
        .and_then(|k| parse_register_body(k, rest_body(&msg).to_string().as_bytes()));
    match (grpc, rest) {
        (Ok(g), Ok(r)) => {
            assert!(g.same_record(&r), "gRPC {g:?} but REST {r:?}");
            api_rules(&g);
            round_trips(&g);
            Verdict::Accepted
        }
        (Err(g), Err(r)) => {
            assert_eq!(
                (&g.field, &g.message),
                (&r.field, &r.message),
                "the fronts refuse differently"
            );
            Verdict::Refused
        }
        (g, r) => panic!("gRPC {g:?} but REST {r:?}"),
    }
}

/// `Heartbeat`, `Deregister`, `ListInstances` and `Watch` requests: what they name is parsed by
/// the rules of the REST path (see [`path`]).
fn other_grpc_requests(data: &[u8]) {
    let instance = |service: &str, id: &str| {
        let parsed = InstanceKey::parse(service, id);
        assert_eq!(
            parsed.is_ok(),
            service_ok(service) && id_ok(id),
            "{service:?}/{id:?}"
        );
    };
    let service = |service: &str| {
        let parsed = ServiceName::parse(service);
        assert_eq!(parsed.is_ok(), service_ok(service), "{service:?}");
    };
    if let Ok(m) = pb::HeartbeatRequest::decode(data) {
        instance(&m.service, &m.id);
    }
    if let Ok(m) = pb::DeregisterRequest::decode(data) {
        instance(&m.service, &m.id);
    }
    if let Ok(m) = pb::ListInstancesRequest::decode(data) {
        service(&m.service);
    }
    if let Ok(m) = pb::WatchRequest::decode(data) {
        service(&m.service);
    }
}

/// `path`: the bytes (UTF-8) as the raw path segments of `/v1/services/{service}/instances/{id}`,
/// split at the first `/` (so `id` may hold more). Each parser accepts exactly what the rules of
/// `docs/api.md` allow, keeps the text unchanged, and names the right field; a parsed key is
/// safe for both registries' key layouts (round trips through etcd and Consul).
pub fn path(data: &[u8]) -> Verdict {
    let Ok(s) = std::str::from_utf8(data) else {
        return Verdict::Skipped;
    };
    let (service, id) = s.split_once('/').unwrap_or((s, ""));
    match ServiceName::parse(service) {
        Ok(n) => {
            assert!(service_ok(service), "accepted service {service:?}");
            assert_eq!(n.as_str(), service);
            assert_eq!(n.to_string(), service);
        }
        Err(e) => {
            assert!(!service_ok(service), "refused service {service:?}: {e}");
            assert_eq!(e.field, "service");
        }
    }
    match InstanceId::parse(id) {
        Ok(i) => {
            assert!(id_ok(id), "accepted id {id:?}");
            assert_eq!(i.as_str(), id);
        }
        Err(e) => {
            assert!(!id_ok(id), "refused id {id:?}: {e}");
            assert_eq!(e.field, "id");
        }
    }
    match InstanceKey::parse(service, id) {
        Ok(k) => {
            assert_eq!(k.to_string(), format!("{service}/{id}"));
            // etcd: `{prefix}/{service}/{id}`, with `.tombstones` and `.sweeper` beside the
            // services; Consul: `{service}.{id}`, split at the first '.'.
            assert!(!service.contains(['/', '.']) && !id.contains('/'));
            round_trips(&Instance {
                key: k,
                address: "10.0.0.1".into(),
                port: 80,
                tags: Vec::new(),
                meta: Default::default(),
                ttl_seconds: 30,
                generation: 1,
                // Both shapes of the etcd record (a drained one's `Op` is a string).
                drained: id.len() % 2 == 0,
            });
            Verdict::Accepted
        }
        Err(e) => {
            let field = if service_ok(service) { "id" } else { "service" };
            assert_eq!(e.field, field, "the path is checked service first");
            Verdict::Refused
        }
    }
}

/// `peer_identity`: the bytes as a client certificate (`authz::Peer::from_der`). No panic; an
/// identity is never empty; the answer does not depend on anything but the bytes.
pub fn peer_identity(data: &[u8]) -> Verdict {
    let peer = Peer::from_der(data);
    if let Some(p) = &peer {
        assert!(!p.identity.is_empty(), "an empty identity");
    }
    assert_eq!(peer, Peer::from_der(data), "not deterministic");
    if peer.is_some() {
        Verdict::Accepted
    } else {
        Verdict::Refused
    }
}

/// `peer_certificate`: a real certificate, built with rcgen from names taken from the bytes,
/// then read back by `Peer::from_der`. Layout: the first byte says whether the subject has a CN;
/// the rest, split at 0 bytes, is the CN and then up to 8 SANs, each `d<dns name>` or
/// `u<uri>` (others are ignored). The identity and the names must be exactly what
/// `src/authz.rs` promises: identity = first URI SAN, else first DNS SAN, else CN (none when
/// that is empty); names = the CN, the first DNS SAN and the last path segment of the first URI
/// SAN (later SANs name nothing).
pub fn peer_certificate(data: &[u8]) -> Verdict {
    let Some((&flags, rest)) = data.split_first() else {
        return Verdict::Skipped;
    };
    let mut fields = rest.split(|b| *b == 0);
    let Ok(cn) = std::str::from_utf8(fields.next().unwrap_or_default()) else {
        return Verdict::Skipped;
    };
    let cn = (flags & 1 == 1).then(|| cn.to_owned());
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = &cn {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn.as_str());
    }
    let (mut dns, mut uris) = (Vec::new(), Vec::new());
    for field in fields.take(8) {
        let Ok(text) = std::str::from_utf8(field.get(1..).unwrap_or_default()) else {
            return Verdict::Skipped;
        };
        let Ok(ia5) = rcgen::string::Ia5String::try_from(text) else {
            return Verdict::Skipped;
        };
        match field.first() {
            Some(b'd') => {
                dns.push(text.to_owned());
                params.subject_alt_names.push(rcgen::SanType::DnsName(ia5));
            }
            Some(b'u') => {
                uris.push(text.to_owned());
                params.subject_alt_names.push(rcgen::SanType::URI(ia5));
            }
            _ => {}
        }
    }
    let Ok(cert) = params.self_signed(signing_key()) else {
        return Verdict::Skipped;
    };
    let peer = Peer::from_der(cert.der());
    let identity = uris
        .first()
        .or(dns.first())
        .or(cn.as_ref())
        .filter(|s| !s.is_empty());
    match (&peer, identity) {
        (None, None) => Verdict::Refused,
        (Some(p), Some(id)) => {
            assert_eq!(&p.identity, id, "identity");
            let names: Vec<String> = cn
                .into_iter()
                .chain(dns.first().cloned())
                .chain(uris.first().and_then(|u| last_path_segment(u)))
                .collect();
            assert_eq!(p.names, names, "names the default rule matches");
            Verdict::Accepted
        }
        _ => panic!("read {peer:?} from a certificate of CN {cn:?}, DNS {dns:?}, URI {uris:?}"),
    }
}

/// `etcd_record`: an etcd key/value as the list and the watch read it (`decode_kv` on the
/// directory `/services/payments/`). Layout: the first byte's low bit says whether the key is
/// the rest up to the first 0 byte, or the directory followed by it (an id); the value is what
/// follows that 0 byte (nothing: a delete event's empty value). Exactly the keys directly under
/// the directory with a valid id are read; an instance read obeys [`stored_rules`] and
/// re-encodes to itself.
pub fn etcd_record(data: &[u8]) -> Verdict {
    let Some((&flags, rest)) = data.split_first() else {
        return Verdict::Skipped;
    };
    let (suffix, value) = match rest.iter().position(|b| *b == 0) {
        Some(n) => (&rest[..n], &rest[n + 1..]),
        None => (rest, &[][..]),
    };
    let service = service();
    let dir = etcd_dir(&service);
    let key = if flags & 1 == 1 {
        suffix.to_vec()
    } else {
        [dir.as_bytes(), suffix].concat()
    };
    let id = key
        .strip_prefix(dir.as_bytes())
        .and_then(|id| std::str::from_utf8(id).ok())
        .filter(|id| id_ok(id));
    match (fuzzing::etcd_decode_kv(&dir, &service, &key, value), id) {
        (None, None) => Verdict::Refused,
        (Some(Err(garbage)), Some(id)) => {
            assert_eq!(garbage.as_str(), id);
            Verdict::Refused
        }
        (Some(Ok(i)), Some(id)) => {
            stored_rules(&i, &service);
            assert_eq!(i.key.id.as_str(), id, "the id is the key's");
            let again = fuzzing::etcd_decode_kv(&dir, &service, &key, &fuzzing::etcd_encode(&i));
            assert_eq!(again, Some(Ok(i)), "re-encoded record");
            Verdict::Accepted
        }
        (got, id) => panic!("key {key:?}: read {got:?}, expected id {id:?}"),
    }
}

/// `consul_health`: the bytes as the answer of `GET /v1/health/service/payments`, as the list,
/// get, inventory and watch read it (`parse_health`). Every instance read obeys
/// [`stored_rules`], keeps its TTL and generation through the check's notes, and reads back
/// from the entry twinreg would have written for it; an answer that is a JSON array is never
/// refused whole (an entry of another shape is skipped, as etcd's unreadable records are).
pub fn consul_health(data: &[u8]) -> Verdict {
    let service = service();
    match fuzzing::consul_parse_health(&service, data) {
        Ok(entries) => {
            if let Ok(Value::Array(all)) = serde_json::from_slice::<Value>(data) {
                assert!(entries.len() <= all.len(), "more instances than entries");
            }
            let verdict = if entries.is_empty() {
                Verdict::Refused
            } else {
                Verdict::Accepted
            };
            for (i, _alive) in entries {
                stored_rules(&i, &service);
                let notes = fuzzing::consul_notes(&i, "replica-1");
                assert_eq!(
                    fuzzing::consul_parse_notes(&notes),
                    (i.ttl_seconds, i.generation),
                    "notes {notes:?}"
                );
                consul_round_trip(&i);
            }
            verdict
        }
        Err(e) => {
            assert_eq!(e.registry, RegistryKind::Consul);
            assert_eq!(e.kind, RegistryErrorKind::Unavailable);
            assert!(
                !matches!(serde_json::from_slice::<Value>(data), Ok(Value::Array(_))),
                "a JSON array refused whole: {e}"
            );
            Verdict::Refused
        }
    }
}

// === invariants ===

/// The API's rules (`docs/api.md`), read independently of `src/model.rs`.
pub fn api_rules(i: &Instance) {
    assert!(
        service_ok(i.key.service.as_str()),
        "service {:?}",
        i.key.service
    );
    assert!(id_ok(i.key.id.as_str()), "id {:?}", i.key.id);
    let a = &i.address;
    match a.parse::<IpAddr>() {
        Ok(ip) => assert!(!ip.is_unspecified(), "address {a:?}"),
        Err(_) => assert!(host_ok(a), "address {a:?}"),
    }
    assert_ne!(i.port, 0, "port");
    assert!((5..=3600).contains(&i.ttl_seconds), "ttl {}", i.ttl_seconds);
    assert!(i.tags.len() <= 32, "{} tags", i.tags.len());
    for t in &i.tags {
        let n = t.chars().count();
        assert!(
            (1..=128).contains(&n) && !t.chars().any(char::is_control),
            "tag {t:?}"
        );
    }
    assert!(i.meta.len() <= 64, "{} meta entries", i.meta.len());
    for (k, v) in &i.meta {
        let key_ok = (1..=128).contains(&k.len())
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            && !k.starts_with("consul-");
        assert!(key_ok, "meta key {k:?}");
        assert!(v.chars().count() <= 512, "meta value of {k:?}");
    }
}

/// What any instance read from a registry holds, whoever wrote the record.
pub fn stored_rules(i: &Instance, service: &ServiceName) {
    assert_eq!(&i.key.service, service, "read under another service");
    assert!(id_ok(i.key.id.as_str()), "id {:?}", i.key.id);
    assert!(!i.address.is_empty(), "empty address");
    assert_ne!(i.port, 0, "port 0");
    assert!((5..=3600).contains(&i.ttl_seconds), "ttl {}", i.ttl_seconds);
}

/// An instance the API accepted: the other front accepts the same fields with the same result,
/// and it reads back exactly from what twinreg writes to each registry.
pub fn round_trips(i: &Instance) {
    let body = json!({
        "address": i.address,
        "port": i.port,
        "tags": i.tags,
        "meta": i.meta,
        "ttl_seconds": i.ttl_seconds,
    });
    let rest = parse_register_body(i.key.clone(), body.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("REST refuses {body}: {e}"));
    // A registration is never drained (a drain is its own request).
    let registered = Instance {
        drained: false,
        ..i.clone()
    };
    assert!(rest.same_record(&registered), "REST read {rest:?}");
    let msg = pb::RegisterRequest {
        service: i.key.service.to_string(),
        id: i.key.id.to_string(),
        address: i.address.clone(),
        port: i.port.into(),
        tags: i.tags.clone(),
        meta: i.meta.clone().into_iter().collect(),
        ttl_seconds: Some(i.ttl_seconds),
    };
    let grpc = grpc_register(msg).unwrap_or_else(|e| panic!("gRPC refuses {i:?}: {e}"));
    assert!(grpc.same_record(&registered), "gRPC read {grpc:?}");

    let dir = etcd_dir(&i.key.service);
    let etcd_key = format!("{dir}{}", i.key.id);
    let value = fuzzing::etcd_encode(i);
    let back = fuzzing::etcd_decode_kv(&dir, &i.key.service, etcd_key.as_bytes(), &value);
    assert_eq!(
        back,
        Some(Ok(i.clone())),
        "etcd record {}",
        String::from_utf8_lossy(&value)
    );

    consul_round_trip(i);
}

/// The health entry Consul answers for an instance twinreg registered reads back as it.
fn consul_round_trip(i: &Instance) {
    let sid = format!("{}.{}", i.key.service, i.key.id);
    let mut entry = json!([{
        "Node": {"Node": "node-1", "Address": "127.0.0.1"},
        "Service": {
            "ID": sid,
            "Service": i.key.service,
            "Tags": i.tags,
            "Meta": i.meta,
            "Address": i.address,
            "Port": i.port,
        },
        "Checks": [
            {"CheckID": "serfHealth", "Status": "passing", "ServiceID": "", "Notes": ""},
            {
                "CheckID": format!("service:{sid}"),
                "Status": "passing",
                "ServiceID": sid,
                "Notes": fuzzing::consul_notes(i, "replica-1"),
            },
        ],
    }]);
    if i.drained {
        // Maintenance mode: critical, yet the instance is alive for twinreg (and drained).
        entry[0]["Checks"]
            .as_array_mut()
            .expect("the checks")
            .insert(
                1,
                json!({"CheckID": format!("_service_maintenance:{sid}"), "Status": "critical",
                       "ServiceID": sid, "Notes": "drained"}),
            );
    }
    let back = fuzzing::consul_parse_health(&i.key.service, entry.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("Consul answer {entry} unreadable: {e}"));
    assert_eq!(back, vec![(i.clone(), true)], "Consul entry {entry}");
}

/// The gRPC `Register` path after authorization.
fn grpc_register(msg: pb::RegisterRequest) -> Result<Instance, ValidationError> {
    let key = InstanceKey::parse(&msg.service, &msg.id)?;
    register_from_fields(key, fuzzing::grpc_register_fields(msg))
}

/// The REST body with the fields of a gRPC request (an empty address and an unset TTL are
/// proto3's "not sent": left out).
fn rest_body(msg: &pb::RegisterRequest) -> Value {
    let mut body = json!({"port": msg.port, "tags": msg.tags, "meta": msg.meta});
    if !msg.address.is_empty() {
        body["address"] = msg.address.clone().into();
    }
    if let Some(ttl) = msg.ttl_seconds {
        body["ttl_seconds"] = ttl.into();
    }
    body
}

// === the rules, as docs/api.md states them ===

/// 1-63 of `[a-z0-9-]`, starting with a letter, ending with a letter or digit.
fn service_ok(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
}

/// 1-128 of `[A-Za-z0-9._-]`.
fn id_ok(s: &str) -> bool {
    // `.` and `..` are dot-segments to HTTP clients and proxies (docs/api.md).
    (1..=128).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// An RFC 1123 host name of at most 253 characters, a trailing dot allowed.
fn host_ok(s: &str) -> bool {
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let body = s.strip_suffix('.').unwrap_or(s);
    !body.is_empty()
        && body.split('.').all(|label| {
            let b = label.as_bytes();
            (1..=63).contains(&b.len())
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The last segment of a URI's path: after `scheme://authority/`, before `?` or `#`.
fn last_path_segment(uri: &str) -> Option<String> {
    let (_, rest) = uri.split_once("://")?;
    let rest = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
    let (_, path) = rest.split_once('/')?;
    let seg = &path[path.rfind('/').map_or(0, |n| n + 1)..];
    (!seg.is_empty()).then(|| seg.to_owned())
}

/// One key pair signs every generated certificate (generating one per input would be most of
/// the work).
fn signing_key() -> &'static rcgen::KeyPair {
    static KEY: OnceLock<rcgen::KeyPair> = OnceLock::new();
    KEY.get_or_init(|| rcgen::KeyPair::generate().expect("a key pair"))
}
