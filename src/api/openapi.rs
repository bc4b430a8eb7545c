//! The REST API's OpenAPI 3.1 description, generated from the handlers' own types and their
//! `#[utoipa::path]` annotations in [`super::http`]: served on the admin listener at
//! `/openapi.json`, printed by `twinreg openapi`, and committed as `docs/openapi.json` (a test
//! fails when the two differ).
//!
//! What the handlers build by hand rather than derive (the per-registry outcomes, serialized by
//! `replicate::Outcome`, and the register body, validated field by field by
//! `model::register_from_fields` for its error messages) is described here by types that only
//! describe; the schemathesis run in the test suite holds every answer to this description.

use std::collections::BTreeMap;

use utoipa::openapi::security::SecurityScheme;
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToSchema};

use super::error::ErrorCode;
use super::http;

/// The description, with this build's version.
pub fn spec() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// [`spec`] as pretty JSON with a final newline (what `docs/openapi.json` holds).
pub fn json() -> String {
    let mut s = spec()
        .to_pretty_json()
        .expect("the OpenAPI description serializes");
    s.push('\n');
    s
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "twinreg",
        description = "Service registration written to etcd and Consul at once. Every request \
            needs a client certificate (mutual TLS); REST and gRPC share the port. Errors are \
            `{\"error\", \"message\", \"field\"}` with the codes listed in `Error`. See docs/api.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    servers((url = "https://localhost:8443", description = "a replica, or the load balancer in front of them")),
    paths(
        http::register,
        http::deregister,
        http::heartbeat,
        http::drain,
        http::undrain,
        http::services,
        http::list,
    ),
    components(schemas(ErrorCode, ErrorBody, RegistryOutcome, RegisterBody)),
    modifiers(&MutualTls),
    security(("mutual_tls" = [])),
    tags((name = "instances", description = "Register, heartbeat, drain and deregister an instance; list a service's instances.")),
)]
struct ApiDoc;

/// Mutual TLS: OpenAPI 3.1's `mutualTLS` scheme, required by every operation.
struct MutualTls;

impl Modify for MutualTls {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let scheme = SecurityScheme::MutualTls {
            description: Some(
                "A client certificate issued by a CA in the server's client-CA bundle. The \
                 caller's identity (first URI SAN, else first DNS SAN, else CN) decides what it \
                 may write."
                    .to_owned(),
            ),
            extensions: None,
        };
        components.add_security_scheme("mutual_tls", scheme);
    }
}

/// An error answer.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorCode,
    /// What went wrong and what to do, for a person.
    pub message: String,
    /// The request field at fault, for `invalid_request`.
    pub field: Option<String>,
    /// Each registry's outcome, when the request reached them (503 `unavailable`, 404
    /// `unknown_instance`).
    #[schema(value_type = Option<BTreeMap<String, RegistryOutcome>>)]
    pub registries: Option<()>,
}

/// What one registry did with the request. `etcd` and `consul` are the keys of `registries`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RegistryOutcome {
    pub ok: bool,
    /// When `ok`: how long the registry took (0 when no call was needed).
    pub latency_ms: Option<u64>,
    /// When not `ok`: why, e.g. "timed out after 1500 ms".
    pub error: Option<String>,
    /// A heartbeat found the instance missing in this registry and wrote it back.
    pub restored: Option<bool>,
    /// A heartbeat needed no call to this registry (every heartbeat to the owning replica).
    pub coalesced: Option<bool>,
}

/// The register body. Unknown fields are rejected (400 naming the field); `null` is the same as
/// leaving a field out.
#[derive(ToSchema, serde::Deserialize)]
#[allow(dead_code)]
// Read by utoipa: `additionalProperties: false`.
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    #[schema(schema_with = address_schema)]
    pub address: String,
    #[schema(minimum = 1, maximum = 65535, example = 8080)]
    pub port: u16,
    #[schema(schema_with = tags_schema)]
    pub tags: Option<Vec<String>>,
    #[schema(schema_with = meta_schema)]
    pub meta: Option<BTreeMap<String, String>>,
    /// 5–3600; 30 when not given.
    #[schema(minimum = 5, maximum = 3600, default = 30)]
    pub ttl_seconds: Option<u32>,
}

/// A schema written as JSON: for rules utoipa's attributes cannot state (alternatives, a
/// negated pattern, property-name patterns).
fn schema(v: serde_json::Value) -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    serde_json::from_value(v).expect("a valid schema")
}

/// A host name of RFC 1123 labels, a trailing dot allowed, and not `0.0.0.0` (which parses as
/// the unspecified address): the address rule of `model::parse_address`.
const HOST: &str = "^(?!0\\.0\\.0\\.0$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\\.?$";

fn address_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    schema(serde_json::json!({
        "description": "An IPv4/IPv6 literal (not the unspecified 0.0.0.0 or ::) or an RFC 1123 \
            host name (a trailing dot allowed), at most 253 characters.",
        "example": "10.0.0.5",
        "anyOf": [
            // IPv6, not all zeros (the unspecified address).
            {"type": "string", "format": "ipv6", "pattern": "^(?![0:]+$)"},
            // Host names, which include IPv4 literals.
            {"type": "string", "minLength": 1, "maxLength": 253, "pattern": HOST},
        ],
    }))
}

fn tags_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    schema(serde_json::json!({
        "type": ["array", "null"],
        "description": "At most 32 tags, each 1-128 characters without control characters.",
        "maxItems": 32,
        // Control characters are Unicode's Cc: U+0000-001F and U+007F-009F.
        "items": {"type": "string", "minLength": 1, "maxLength": 128,
                  "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"},
    }))
}

fn meta_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    schema(serde_json::json!({
        "type": ["object", "null"],
        "description": "At most 64 entries; keys 1-128 of [A-Za-z0-9_-], not starting with \
            consul- (Consul reserves it); values at most 512 characters.",
        "maxProperties": 64,
        "propertyNames": {"type": "string", "pattern": "^(?!consul-)[A-Za-z0-9_-]{1,128}$"},
        "additionalProperties": {"type": "string", "maxLength": 512},
    }))
}

/// A content index: any 64-bit unsigned integer.
pub fn index_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    schema(serde_json::json!({"type": "integer", "minimum": 0, "maximum": u64::MAX}))
}

/// The error answers of a register.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum RegisterErrors {
    /// `invalid_request`: a path or body field breaks the API's rules (`field` names it);
    /// nothing was written.
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// `forbidden`: the caller's identity may not write this service.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// `request_timeout`: the body did not arrive within `limits.body_read_timeout`.
    #[response(status = 408)]
    Timeout(ErrorBody),
    /// `payload_too_large`: a body over 64 KiB.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// `rate_limited`: the identity is over its request budget; retry after `Retry-After`.
    #[response(status = 429, headers(("Retry-After" = u64, description = "seconds")))]
    RateLimited(ErrorBody),
    /// `unavailable`: no registry accepted it (`registries` says why) or the request ran out
    /// of time; retry after `Retry-After`.
    #[response(status = 503, headers(("Retry-After" = u64, description = "seconds")))]
    Unavailable(ErrorBody),
}

/// The error answers of a write to an existing instance (heartbeat, deregister, drain).
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum InstanceErrors {
    /// `invalid_request`: the path (or a drain's body) breaks the API's rules (`field` names
    /// it); nothing was written.
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// `forbidden`: the caller's identity may not write this service.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// `unknown_instance`: no registry knows the instance (register it again). A deregister
    /// never answers 404: it is idempotent.
    #[response(status = 404)]
    Unknown(ErrorBody),
    /// `request_timeout`: a drain's body did not arrive within `limits.body_read_timeout`.
    #[response(status = 408)]
    Timeout(ErrorBody),
    /// `payload_too_large`: a drain's body over 64 KiB.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// `rate_limited`: the identity is over its request budget; retry after `Retry-After`.
    #[response(status = 429, headers(("Retry-After" = u64, description = "seconds")))]
    RateLimited(ErrorBody),
    /// `unavailable`: no registry could be reached (`registries` says why) or the request ran
    /// out of time; retry after `Retry-After`.
    #[response(status = 503, headers(("Retry-After" = u64, description = "seconds")))]
    Unavailable(ErrorBody),
}

/// The error answers of a read.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum ReadErrors {
    /// `invalid_request`: the service name, `index` or `wait` breaks the API's rules (`field`
    /// names it).
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// `forbidden`: reads are restricted (`authz.reads = "owner"`) and the identity may not
    /// read this service.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// `rate_limited`: the identity is over its request budget; retry after `Retry-After`.
    #[response(status = 429, headers(("Retry-After" = u64, description = "seconds")))]
    RateLimited(ErrorBody),
    /// `unavailable`: no registry answered; retry after `Retry-After`.
    #[response(status = 503, headers(("Retry-After" = u64, description = "seconds")))]
    Unavailable(ErrorBody),
}

/// An instance's path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct InstancePath {
    /// The service: 1–63 characters `[a-z0-9-]`, starting with a letter, ending with a letter or
    /// digit.
    #[param(pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", example = "payments")]
    pub service: String,
    /// The instance: 1–128 characters `[A-Za-z0-9._-]`, not `.` or `..`.
    #[param(pattern = "^[A-Za-z0-9._-]{1,128}$", example = "pay-1")]
    pub id: String,
}

/// A service's path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct ServicePath {
    /// 1–63 characters `[a-z0-9-]`, starting with a letter, ending with a letter or digit.
    #[param(pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", example = "payments")]
    pub service: String,
}

/// A list's long poll.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct LongPoll {
    /// The `index` of an earlier answer: wait until the set differs from it. 0 or absent: answer
    /// at once.
    #[param(schema_with = index_schema)]
    pub index: Option<u64>,
    /// How long to wait at most: a duration with units (`30s`, `2m`, `1m30s`); at most, and by
    /// default, 5 minutes. Only an `index` makes the list wait, but a `wait` that is not a
    /// duration is refused even without one.
    #[param(pattern = "^([0-9]{1,9}(ms|s|m|h))+$", example = "30s")]
    pub wait: Option<String>,
}

#[cfg(test)]
mod tests {
    use crate::model::{MAX_TTL_SECONDS, MIN_TTL_SECONDS};

    #[test]
    fn the_description_states_the_models_limits() {
        let doc: serde_json::Value = serde_json::from_str(&super::json()).unwrap();
        let body = &doc["components"]["schemas"]["RegisterBody"]["properties"];
        assert_eq!(body["ttl_seconds"]["minimum"], MIN_TTL_SECONDS);
        assert_eq!(body["ttl_seconds"]["maximum"], MAX_TTL_SECONDS);
        assert_eq!(doc["openapi"], "3.1.0");
        // Every operation says what each of its error answers is.
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let answers = op["responses"].as_object().unwrap();
                for status in ["403", "429", "503"] {
                    if path == "/v1/services" && status == "403" {
                        continue;
                    }
                    assert!(
                        answers.contains_key(status),
                        "{method} {path} does not describe {status}"
                    );
                }
            }
        }
    }
}
