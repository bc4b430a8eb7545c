//! Validated request types. Everything a client sends is parsed here exactly once; a value of
//! these types is valid by construction and nothing downstream checks it again.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A client sent something the API's rules do not allow.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: Cow<'static, str>,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub const DEFAULT_TTL_SECONDS: u32 = 30;
pub const MIN_TTL_SECONDS: u32 = 5;
pub const MAX_TTL_SECONDS: u32 = 3600;
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_SERVICE_LEN: usize = 63;
const MAX_ID_LEN: usize = 128;
const MAX_ADDRESS_LEN: usize = 253;
const MAX_TAGS: usize = 32;
const MAX_TAG_LEN: usize = 128;
const MAX_META: usize = 64;
const MAX_META_KEY_LEN: usize = 128;
const MAX_META_VALUE_LEN: usize = 512;
/// Consul refuses metadata keys with this prefix; refusing them here keeps both registries equal.
const RESERVED_META_PREFIX: &str = "consul-";

/// A service name: 1–63 of `[a-z0-9-]`, starting with a letter, ending with a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ServiceName(String);

/// An instance id: 1–128 of `[A-Za-z0-9._-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct InstanceId(String);

impl ServiceName {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Self::check(s)?;
        Ok(Self(s.to_owned()))
    }

    /// Whether `s` is a valid service name, without making one.
    pub fn check(s: &str) -> Result<(), ValidationError> {
        let bytes = s.as_bytes();
        let ok_chars = bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if s.is_empty() || s.len() > MAX_SERVICE_LEN || !ok_chars {
            return Err(ValidationError::new(
                "service",
                format!("must be 1-{MAX_SERVICE_LEN} characters of a-z, 0-9 and '-'"),
            ));
        }
        if !bytes[0].is_ascii_lowercase() {
            return Err(ValidationError::new("service", "must start with a letter"));
        }
        if bytes[bytes.len() - 1] == b'-' {
            return Err(ValidationError::new(
                "service",
                "must end with a letter or digit",
            ));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl InstanceId {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Self::check(s)?;
        Ok(Self(s.to_owned()))
    }

    /// Whether `s` is a valid instance ID, without making one.
    pub fn check(s: &str) -> Result<(), ValidationError> {
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if s.is_empty() || s.len() > MAX_ID_LEN || !ok_chars {
            return Err(ValidationError::new(
                "id",
                format!("must be 1-{MAX_ID_LEN} characters of A-Z, a-z, 0-9, '.', '_' and '-'"),
            ));
        }
        // Clients and proxies resolve these as path dot-segments: such an instance could not be
        // addressed as itself.
        if s == "." || s == ".." {
            return Err(ValidationError::new("id", "must not be '.' or '..'"));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which instance: the pair every operation is keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey {
    pub service: ServiceName,
    pub id: InstanceId,
}

impl InstanceKey {
    pub fn parse(service: &str, id: &str) -> Result<Self, ValidationError> {
        Ok(Self {
            service: ServiceName::parse(service)?,
            id: InstanceId::parse(id)?,
        })
    }
}

/// An instance key as its two parts, whether an [`InstanceKey`] or a request's `(service, id)`
/// strings: a map keyed by `InstanceKey` is looked up with the strings (`map.get::<dyn
/// KeyParts>(&(service, id))`) without building a key, two allocations, on every heartbeat.
pub trait KeyParts {
    fn parts(&self) -> (&str, &str);
}

impl KeyParts for InstanceKey {
    fn parts(&self) -> (&str, &str) {
        (self.service.as_str(), self.id.as_str())
    }
}

impl KeyParts for (&str, &str) {
    fn parts(&self) -> (&str, &str) {
        (self.0, self.1)
    }
}

/// Hashed exactly as `InstanceKey`'s derived `Hash` (each newtype hashes its string), as a
/// borrowed form must be.
impl std::hash::Hash for dyn KeyParts + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (service, id) = self.parts();
        service.hash(state);
        id.hash(state);
    }
}

impl PartialEq for dyn KeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyParts + '_ {}

impl<'a> std::borrow::Borrow<dyn KeyParts + 'a> for InstanceKey {
    fn borrow(&self) -> &(dyn KeyParts + 'a) {
        self
    }
}

impl InstanceKey {
    /// Whether `(service, id)` names a valid instance, without making its key.
    pub fn check(service: &str, id: &str) -> Result<(), ValidationError> {
        ServiceName::check(service)?;
        InstanceId::check(id)
    }
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.id)
    }
}

/// An instance's metadata: key/value pairs, sorted by key, one allocation for all of them. A
/// replica holds the record of every instance it owns, and a `BTreeMap` spends a 540-byte node
/// on even one entry (54 MB at 100,000 instances, most of a replica's memory).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta(Box<[(Box<str>, Box<str>)]>);

impl Meta {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// The entries, by key.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.into_iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<Box<str>>, V: Into<Box<str>>> FromIterator<(K, V)> for Meta {
    /// Sorted by key; of a key given twice, the last value wins (as JSON objects read).
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let sorted: BTreeMap<Box<str>, Box<str>> = iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Self(sorted.into_iter().collect())
    }
}

impl<K: Into<Box<str>>, V: Into<Box<str>>, const N: usize> From<[(K, V); N]> for Meta {
    fn from(entries: [(K, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Meta {
    type Item = (&'a str, &'a str);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Box<str>, Box<str>)>,
        fn(&'a (Box<str>, Box<str>)) -> (&'a str, &'a str),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }
}

impl IntoIterator for Meta {
    type Item = (String, String);
    type IntoIter = std::iter::Map<
        std::vec::IntoIter<(Box<str>, Box<str>)>,
        fn((Box<str>, Box<str>)) -> (String, String),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0
            .into_vec()
            .into_iter()
            .map(|(k, v)| (k.into_string(), v.into_string()))
    }
}

impl Serialize for Meta {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Meta {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<Box<str>, Box<str>>::deserialize(d)?;
        Ok(Self(map.into_iter().collect()))
    }
}

/// A validated instance record, as written to both registries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub key: InstanceKey,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: Meta,
    pub ttl_seconds: u32,
    /// Monotonic per write; stored with the record so an older write can be told from a newer.
    pub generation: u64,
    /// Taken out of rotation by an operator (`PUT …/drain`): still registered and heartbeating,
    /// but hidden from native discovery (etcd's resolver, Consul's passing queries and DNS).
    pub drained: bool,
}

impl Instance {
    /// A plain instance for unit tests: 10.0.0.1:80, no tags or meta, TTL 30 s, a new generation.
    #[cfg(test)]
    pub fn for_test(service: &str, id: &str) -> Instance {
        Instance {
            key: InstanceKey::parse(service, id).expect("a valid test key"),
            address: "10.0.0.1".into(),
            port: 80,
            tags: vec![],
            meta: Default::default(),
            ttl_seconds: 30,
            generation: next_generation(),
            drained: false,
        }
    }

    /// The same registration, ignoring the generation (which every write renews).
    pub fn same_record(&self, other: &Instance) -> bool {
        self.key == other.key
            && self.address == other.address
            && self.port == other.port
            && self.tags == other.tags
            && self.meta == other.meta
            && self.ttl_seconds == other.ttl_seconds
            && self.drained == other.drained
    }
}

/// Parses the JSON body of a register request. Unknown fields, wrong types and every limit of the
/// API's table are rejected with the offending field named.
pub fn parse_register_body(key: InstanceKey, body: &[u8]) -> Result<Instance, ValidationError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ValidationError::new("body", format!("is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ValidationError::new("body", "must be a JSON object"));
    };
    register_from_fields(key, obj)
}

/// Validates a register request's fields, however they arrived (a REST body, a gRPC message):
/// one set of rules for both fronts.
pub fn register_from_fields(
    key: InstanceKey,
    mut obj: Map<String, Value>,
) -> Result<Instance, ValidationError> {
    const KNOWN: [&str; 5] = ["address", "port", "tags", "meta", "ttl_seconds"];
    if let Some(unknown) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ValidationError::new(
            unknown.clone(),
            format!(
                "unknown field '{unknown}'; allowed fields are address, port, tags, meta, ttl_seconds"
            ),
        ));
    }
    let address = parse_address(obj.remove("address"))?;
    let port = parse_port(obj.remove("port"))?;
    let tags = parse_tags(obj.remove("tags"))?;
    let meta = parse_meta(obj.remove("meta"))?;
    let ttl_seconds = parse_ttl(obj.remove("ttl_seconds"))?;
    Ok(Instance {
        key,
        address,
        port,
        tags,
        meta,
        ttl_seconds,
        generation: next_generation(),
        drained: false,
    })
}

fn parse_address(v: Option<Value>) -> Result<String, ValidationError> {
    let field = "address";
    let s = match v {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => return Err(ValidationError::new(field, "is required")),
        Some(_) => return Err(ValidationError::new(field, "must be a string")),
    };
    if let Ok(ip) = s.parse::<IpAddr>() {
        if ip.is_unspecified() {
            return Err(ValidationError::new(
                field,
                "must be an address clients can dial, not the unspecified address",
            ));
        }
        return Ok(s);
    }
    if is_rfc1123_host(&s) {
        Ok(s)
    } else {
        Err(ValidationError::new(
            field,
            format!(
                "must be an IPv4/IPv6 literal or an RFC 1123 host name of at most {MAX_ADDRESS_LEN} characters"
            ),
        ))
    }
}

fn is_rfc1123_host(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_ADDRESS_LEN {
        return false;
    }
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// A JSON number that is a non-negative integer: `30` or `30.0` (JSON, and JSON Schema, do not
/// tell them apart; some encoders write every number as a float).
fn whole(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(f))
            .map(|f| f as u64)
    })
}

fn parse_port(v: Option<Value>) -> Result<u16, ValidationError> {
    let field = "port";
    match v {
        None | Some(Value::Null) => Err(ValidationError::new(field, "is required")),
        Some(Value::Number(n)) => match whole(&n) {
            Some(p @ 1..=65535) => Ok(p as u16),
            _ => Err(ValidationError::new(
                field,
                "must be an integer from 1 to 65535",
            )),
        },
        Some(_) => Err(ValidationError::new(
            field,
            "must be an integer from 1 to 65535",
        )),
    }
}

fn parse_ttl(v: Option<Value>) -> Result<u32, ValidationError> {
    let field = "ttl_seconds";
    let msg = format!("must be an integer from {MIN_TTL_SECONDS} to {MAX_TTL_SECONDS} (seconds)");
    match v {
        None | Some(Value::Null) => Ok(DEFAULT_TTL_SECONDS),
        Some(Value::Number(n)) => match whole(&n) {
            Some(t) if (MIN_TTL_SECONDS as u64..=MAX_TTL_SECONDS as u64).contains(&t) => {
                Ok(t as u32)
            }
            _ => Err(ValidationError::new(field, msg)),
        },
        Some(_) => Err(ValidationError::new(field, msg)),
    }
}

fn parse_tags(v: Option<Value>) -> Result<Vec<String>, ValidationError> {
    let field = "tags";
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ValidationError::new(field, "must be an array of strings")),
    };
    if items.len() > MAX_TAGS {
        return Err(ValidationError::new(
            field,
            format!("at most {MAX_TAGS} tags are allowed, got {}", items.len()),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s)
                if (1..=MAX_TAG_LEN).contains(&s.chars().count())
                    && !s.chars().any(char::is_control) =>
            {
                Ok(s)
            }
            Value::String(_) => Err(ValidationError::new(
                field,
                format!("tags[{i}] must be 1-{MAX_TAG_LEN} characters without control characters"),
            )),
            _ => Err(ValidationError::new(
                field,
                format!("tags[{i}] must be a string"),
            )),
        })
        .collect()
}

fn parse_meta(v: Option<Value>) -> Result<Meta, ValidationError> {
    let field = "meta";
    let obj: Map<String, Value> = match v {
        None | Some(Value::Null) => return Ok(Meta::default()),
        Some(Value::Object(obj)) => obj,
        Some(_) => {
            return Err(ValidationError::new(
                field,
                "must be an object of string values",
            ));
        }
    };
    if obj.len() > MAX_META {
        return Err(ValidationError::new(
            field,
            format!("at most {MAX_META} entries are allowed, got {}", obj.len()),
        ));
    }
    let mut meta = Vec::with_capacity(obj.len());
    for (k, v) in obj {
        let key_ok = (1..=MAX_META_KEY_LEN).contains(&k.len())
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !key_ok {
            return Err(ValidationError::new(
                field,
                format!(
                    "key '{}' must be 1-{MAX_META_KEY_LEN} characters of A-Z, a-z, 0-9, '_' and '-'",
                    k.escape_debug()
                ),
            ));
        }
        if k.starts_with(RESERVED_META_PREFIX) {
            return Err(ValidationError::new(
                field,
                format!(
                    "key '{k}' uses the prefix '{RESERVED_META_PREFIX}', which Consul reserves"
                ),
            ));
        }
        let Value::String(v) = v else {
            return Err(ValidationError::new(
                field,
                format!("value of '{k}' must be a string"),
            ));
        };
        if v.chars().count() > MAX_META_VALUE_LEN {
            return Err(ValidationError::new(
                field,
                format!("value of '{k}' must be at most {MAX_META_VALUE_LEN} characters"),
            ));
        }
        meta.push((k, v));
    }
    Ok(meta.into_iter().collect())
}

/// Generations are microseconds since the epoch, forced strictly increasing within a process, so
/// a later write through any replica (with clocks in rough agreement) carries a larger one.
pub fn next_generation() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_map_is_looked_up_by_the_strings() {
        let mut map = std::collections::HashMap::new();
        for (s, i) in [
            ("payments", "a"),
            ("payments", "ab"),
            ("pay", "mentsa"),
            ("b", "x"),
        ] {
            map.insert(InstanceKey::parse(s, i).unwrap(), format!("{s}/{i}"));
        }
        for (s, i) in [
            ("payments", "a"),
            ("payments", "ab"),
            ("pay", "mentsa"),
            ("b", "x"),
        ] {
            let found = map.get::<dyn KeyParts>(&(s, i));
            assert_eq!(found, Some(&format!("{s}/{i}")), "{s}/{i}");
        }
        assert!(!map.contains_key::<dyn KeyParts>(&("paymentsa", "")));
        assert!(!map.contains_key::<dyn KeyParts>(&("payments", "b")));
        assert!(InstanceKey::check("payments", "a").is_ok());
        assert_eq!(
            InstanceKey::check("Payments", "a").unwrap_err().field,
            InstanceKey::parse("Payments", "a").unwrap_err().field
        );
        assert!(InstanceKey::check("payments", "..").is_err());
    }

    fn key() -> InstanceKey {
        InstanceKey::parse("payments", "pay-1").unwrap()
    }

    #[test]
    fn meta_reads_and_writes_as_a_json_object_sorted_with_the_last_duplicate_winning() {
        let m: Meta = serde_json::from_str(r#"{"b":"2","a":"1","a":"3"}"#).unwrap();
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![("a", "3"), ("b", "2")]);
        assert_eq!(m.get("a"), Some("3"));
        assert_eq!(m.get("c"), None);
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"a":"3","b":"2"}"#);
        let built: Meta = [("b", "2"), ("a", "1"), ("a", "3")].into();
        assert_eq!(built, m);
        assert!(serde_json::from_str::<Meta>(r#"{"a":1}"#).is_err());
        assert!(Meta::default().is_empty());
    }

    fn field_of(body: &str) -> String {
        parse_register_body(key(), body.as_bytes())
            .unwrap_err()
            .field
            .to_string()
    }

    #[test]
    fn service_names() {
        for ok in ["a", "payments", "pay-1", "a1", &"a".repeat(63)] {
            assert!(ServiceName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1pay",
            "-pay",
            "pay-",
            "Pay",
            "pay_ments",
            "pay.x",
            &"a".repeat(64),
        ] {
            assert_eq!(
                ServiceName::parse(bad).unwrap_err().field,
                "service",
                "{bad}"
            );
        }
    }

    #[test]
    fn instance_ids() {
        for ok in ["pay-1", "A.b_c-9", &"x".repeat(128)] {
            assert!(InstanceId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a b", "é", ".", "..", &"x".repeat(129)] {
            assert_eq!(InstanceId::parse(bad).unwrap_err().field, "id", "{bad}");
        }
    }

    #[test]
    fn full_body_parses_with_defaults() {
        let i = parse_register_body(key(), br#"{"address":"10.0.0.5","port":8080}"#).unwrap();
        assert_eq!(i.ttl_seconds, DEFAULT_TTL_SECONDS);
        assert!(i.tags.is_empty() && i.meta.is_empty());
        let i = parse_register_body(
            key(),
            br#"{"address":"db-1.eu.example.com","port":1,"tags":["v2"],"meta":{"zone":"eu-1a"},"ttl_seconds":3600}"#,
        )
        .unwrap();
        assert_eq!(i.tags, vec!["v2"]);
        assert_eq!(i.meta.get("zone"), Some("eu-1a"));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (r#"{"port":80}"#, "address"),
            (r#"{"address":"bad_host!","port":80}"#, "address"),
            (r#"{"address":"0.0.0.0","port":80}"#, "address"),
            (r#"{"address":"10.0.0.1"}"#, "port"),
            (r#"{"address":"10.0.0.1","port":0}"#, "port"),
            (r#"{"address":"10.0.0.1","port":65536}"#, "port"),
            (r#"{"address":"10.0.0.1","port":"80"}"#, "port"),
            (
                r#"{"address":"10.0.0.1","port":80,"ttl_seconds":4}"#,
                "ttl_seconds",
            ),
            (
                r#"{"address":"10.0.0.1","port":80,"ttl_seconds":3601}"#,
                "ttl_seconds",
            ),
            (r#"{"address":"10.0.0.1","port":80,"tags":[""]}"#, "tags"),
            (
                r#"{"address":"10.0.0.1","port":80,"tags":["a\u0007"]}"#,
                "tags",
            ),
            (r#"{"address":"10.0.0.1","port":80,"tags":[1]}"#, "tags"),
            (
                r#"{"address":"10.0.0.1","port":80,"meta":{"a b":"x"}}"#,
                "meta",
            ),
            (r#"{"address":"10.0.0.1","port":80,"meta":{"k":1}}"#, "meta"),
            (
                r#"{"address":"10.0.0.1","port":80,"meta":{"consul-x":"1"}}"#,
                "meta",
            ),
            (r#"{"address":"10.0.0.1","port":80,"extra":1}"#, "extra"),
            (r#"[1,2]"#, "body"),
            (r#"{"#, "body"),
        ];
        for (body, field) in cases {
            assert_eq!(field_of(body), field, "{body}");
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let tags: Vec<String> = (0..32).map(|i| format!("t{i}")).collect();
        let body = serde_json::json!({"address":"h","port":80,"tags":tags});
        assert!(parse_register_body(key(), body.to_string().as_bytes()).is_ok());
        let tags: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
        let body = serde_json::json!({"address":"h","port":80,"tags":tags});
        assert_eq!(field_of(&body.to_string()), "tags");
        let meta: Map<String, Value> = (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
        let body = serde_json::json!({"address":"h","port":80,"meta":meta});
        assert_eq!(field_of(&body.to_string()), "meta");
        let body = serde_json::json!({"address":"h","port":80,"meta":{"k":"v".repeat(513)}});
        assert_eq!(field_of(&body.to_string()), "meta");
        let body = serde_json::json!({"address": "a".repeat(254), "port": 80});
        assert_eq!(field_of(&body.to_string()), "address");
    }

    #[test]
    fn generations_increase() {
        let a = next_generation();
        let b = next_generation();
        assert!(b > a);
    }
}
