//! Decoding `PUT /v1/agent/service/register` bodies into `structs.ServiceDefinition` and
//! `structs.CheckType` equivalents, with Consul's field names, snake_case aliases, duration
//! handling and Go's error texts.

use std::collections::BTreeMap;

use crate::json::{self, J};
use crate::model::TaggedAddress;

const SERVICE_FIELDS: &[&str] = &[
    "Kind",
    "ID",
    "Name",
    "Tags",
    "Address",
    "TaggedAddresses",
    "Meta",
    "Port",
    "SocketPath",
    "Check",
    "Checks",
    "Weights",
    "Token",
    "EnableTagOverride",
    "Proxy",
    "Connect",
    "Locality",
    "enable_tag_override",
    "tagged_addresses",
];

const CHECK_FIELDS: &[&str] = &[
    "CheckID",
    "Name",
    "Status",
    "Notes",
    "ScriptArgs",
    "HTTP",
    "H2PING",
    "H2PingUseTLS",
    "Header",
    "Method",
    "Body",
    "DisableRedirects",
    "TCP",
    "TCPUseTLS",
    "UDP",
    "Interval",
    "AliasNode",
    "AliasService",
    "DockerContainerID",
    "Shell",
    "GRPC",
    "GRPCUseTLS",
    "OSService",
    "TLSServerName",
    "TLSSkipVerify",
    "Timeout",
    "TTL",
    "SuccessBeforePassing",
    "FailuresBeforeWarning",
    "FailuresBeforeCritical",
    "ProxyHTTP",
    "ProxyGRPC",
    "DeregisterCriticalServiceAfter",
    "OutputMaxSize",
    "args",
    "script_args",
    "deregister_critical_service_after",
    "docker_container_id",
    "tls_server_name",
    "tls_skip_verify",
    "grpc_use_tls",
    "h2ping_use_tls",
    "disable_redirects",
    "ServiceID",
    "service_id",
];

/// A decoded `structs.CheckType`. Durations are Go nanoseconds.
#[derive(Debug, Default, Clone)]
pub struct CheckDef {
    pub id: String,
    pub name: String,
    pub status: String,
    pub notes: String,
    pub script_args: Vec<String>,
    pub http: String,
    pub method: String,
    pub body: String,
    pub header: BTreeMap<String, Vec<String>>,
    pub tcp: String,
    /// UDP, GRPC, H2PING, OSService and Docker targets: accepted, not implemented.
    pub other_kind: Option<&'static str>,
    /// `AliasService` and `AliasNode`.
    pub alias_service: String,
    pub alias_node: String,
    pub interval: i64,
    pub timeout: i64,
    pub ttl: i64,
    pub deregister_after: i64,
    pub output_max_size: i64,
    pub failures_before_warning: i64,
    pub failures_before_critical: i64,
    /// Whether any field was set (Go drops a `Check` equal to the zero value).
    pub set: bool,
}

impl CheckDef {
    /// `CheckType.IsAlias`.
    pub fn is_alias(&self) -> bool {
        !self.alias_node.is_empty() || !self.alias_service.is_empty()
    }
}

/// A decoded `structs.ServiceDefinition`.
#[derive(Debug, Default)]
pub struct ServiceDef {
    pub id: String,
    pub name: String,
    pub address: String,
    pub tags: Option<Vec<String>>,
    pub tagged_addresses: BTreeMap<String, TaggedAddress>,
    pub meta: Option<BTreeMap<String, String>>,
    pub port: i64,
    pub socket_path: String,
    pub check: CheckDef,
    pub checks: Vec<CheckDef>,
    pub weights: Option<(i64, i64)>,
    pub enable_tag_override: bool,
    /// Fields mini-consul accepts in their empty form only (Kind, Proxy, Connect, Locality).
    pub unsupported: Vec<&'static str>,
}

fn s(v: &J, f: &str) -> Result<String, String> {
    json::string(v, f).map(Option::unwrap_or_default)
}

fn decode_check(v: &J) -> Result<CheckDef, String> {
    let mut c = CheckDef::default();
    let mut durations: [Option<&J>; 5] = [None; 5];
    for (field, value) in json::fields(v, CHECK_FIELDS, "structs.CheckType")? {
        let f = format!(".{field}");
        let duration_field = matches!(
            field,
            "Interval"
                | "Timeout"
                | "TTL"
                | "DeregisterCriticalServiceAfter"
                | "deregister_critical_service_after"
        );
        c.set |= !duration_field && !is_zero(value);
        match field {
            "CheckID" => c.id = s(value, &f)?,
            "Name" => c.name = s(value, &f)?,
            "Status" => c.status = s(value, &f)?,
            "Notes" => c.notes = s(value, &f)?,
            "ScriptArgs" | "args" | "script_args" => {
                let args = json::strings(value, &f)?.unwrap_or_default();
                if c.script_args.is_empty() {
                    c.script_args = args;
                }
            }
            "HTTP" => c.http = s(value, &f)?,
            "Method" => c.method = s(value, &f)?,
            "Body" => c.body = s(value, &f)?,
            "Header" => {
                let h = json::map(value, &f, "map[string][]string", |v| {
                    json::strings(v, &f).map(Option::unwrap_or_default)
                })?;
                c.header = h.unwrap_or_default().into_iter().collect();
            }
            "TCP" => c.tcp = s(value, &f)?,
            "UDP"
            | "GRPC"
            | "H2PING"
            | "OSService"
            | "DockerContainerID"
            | "docker_container_id" => {
                if !s(value, &f)?.is_empty() {
                    c.other_kind = Some(match field {
                        "UDP" => "UDP",
                        "GRPC" => "gRPC",
                        "H2PING" => "H2PING",
                        "OSService" => "OSService",
                        _ => "Docker",
                    });
                }
            }
            "AliasNode" => c.alias_node = s(value, &f)?,
            "AliasService" => c.alias_service = s(value, &f)?,
            "Interval" => durations[0] = Some(value),
            "Timeout" => durations[1] = Some(value),
            "TTL" => durations[2] = Some(value),
            "DeregisterCriticalServiceAfter" => durations[3] = Some(value),
            "deregister_critical_service_after" => durations[4] = Some(value),
            "OutputMaxSize" => c.output_max_size = json::int(value, &f)?.unwrap_or_default(),
            "FailuresBeforeWarning" => {
                c.failures_before_warning = json::int(value, &f)?.unwrap_or_default()
            }
            "FailuresBeforeCritical" => {
                c.failures_before_critical = json::int(value, &f)?.unwrap_or_default()
            }
            "SuccessBeforePassing" => {
                json::int(value, &f)?;
            }
            "H2PingUseTLS" | "DisableRedirects" | "TCPUseTLS" | "GRPCUseTLS" | "TLSSkipVerify"
            | "tls_skip_verify" | "grpc_use_tls" | "h2ping_use_tls" | "disable_redirects" => {
                json::boolean(value, &f)?;
            }
            _ => {
                s(value, &f)?;
            }
        }
    }
    let dcsa = non_null(durations[3]).or(non_null(durations[4]));
    for (slot, value) in [
        (0, durations[0]),
        (1, durations[1]),
        (2, durations[2]),
        (3, dcsa),
    ] {
        let Some(ns) = value.map(json::duration).transpose()?.flatten() else {
            continue;
        };
        c.set |= ns != 0;
        *[
            &mut c.interval,
            &mut c.timeout,
            &mut c.ttl,
            &mut c.deregister_after,
        ][slot] = ns;
    }
    Ok(c)
}

fn non_null(v: Option<&J>) -> Option<&J> {
    v.filter(|v| !matches!(v, J::Null))
}

/// Whether a JSON value decodes to Go's zero value (a `[]` or `{}` does not: it is non-nil).
fn is_zero(v: &J) -> bool {
    match v {
        J::Null => true,
        J::Str(s) => s.is_empty(),
        J::Int(i) => *i == 0,
        J::Float(f) => *f == 0.0,
        J::Bool(b) => !b,
        J::Arr(_) | J::Obj(_) => false,
    }
}

/// Decodes the request body; errors are the text after `Request decode failed: `.
pub fn decode(body: &[u8]) -> Result<ServiceDef, String> {
    let v = json::read_body(body)?;
    let mut d = ServiceDef::default();
    let (mut tagged_snake, mut tag_override_snake) = (None, false);
    for (field, value) in json::fields(&v, SERVICE_FIELDS, "structs.ServiceDefinition")? {
        let f = format!(".{field}");
        match field {
            "ID" => d.id = s(value, &f)?,
            "Name" => d.name = s(value, &f)?,
            "Address" => d.address = s(value, &f)?,
            "SocketPath" => d.socket_path = s(value, &f)?,
            "Token" => drop(s(value, &f)?),
            "Kind" => {
                if !s(value, &f)?.is_empty() {
                    d.unsupported.push("Kind");
                }
            }
            "Tags" => d.tags = json::strings(value, &f)?,
            "Port" => d.port = json::int(value, &f)?.unwrap_or_default(),
            "EnableTagOverride" => {
                d.enable_tag_override = json::boolean(value, &f)?.unwrap_or_default()
            }
            "enable_tag_override" => {
                tag_override_snake = json::boolean(value, &f)?.unwrap_or_default()
            }
            "Meta" => {
                d.meta = json::map(value, &f, "map[string]string", |v| s(v, &f))?
                    .map(|m| m.into_iter().collect())
            }
            "TaggedAddresses" | "tagged_addresses" => {
                let m = json::map(value, &f, "map[string]structs.ServiceAddress", |v| {
                    let mut a = TaggedAddress {
                        address: String::new(),
                        port: 0,
                    };
                    for (k, x) in json::fields(v, &["Address", "Port"], "structs.ServiceAddress")? {
                        match k {
                            "Address" => a.address = s(x, "ServiceAddress.Address")?,
                            _ => a.port = json::int(x, "ServiceAddress.Port")?.unwrap_or_default(),
                        }
                    }
                    Ok(a)
                })?
                .map(|m| m.into_iter().collect::<BTreeMap<_, _>>());
                if field == "TaggedAddresses" {
                    d.tagged_addresses = m.unwrap_or_default();
                } else {
                    tagged_snake = m;
                }
            }
            "Weights" => {
                if !matches!(value, J::Null) {
                    let mut w = (0, 0);
                    for (k, x) in json::fields(value, &["Passing", "Warning"], "structs.Weights")? {
                        let n = json::int(x, &format!("Weights.{k}"))?.unwrap_or_default();
                        if k == "Passing" { w.0 = n } else { w.1 = n }
                    }
                    d.weights = Some(w);
                }
            }
            "Check" => d.check = decode_check(value)?,
            "Checks" => match value {
                J::Null => d.checks.clear(),
                J::Arr(items) => {
                    d.checks = items.iter().map(decode_check).collect::<Result<_, _>>()?
                }
                other => {
                    return Err(format!(
                        "json: cannot unmarshal {} into Go struct field .Checks of type structs.CheckTypes",
                        other.kind()
                    ));
                }
            },
            _ => {
                let empty = matches!(value, J::Null) || matches!(value, J::Obj(p) if p.is_empty());
                if !empty {
                    d.unsupported.push(field);
                }
            }
        }
    }
    d.enable_tag_override |= tag_override_snake;
    if d.tagged_addresses.is_empty() {
        d.tagged_addresses = tagged_snake.unwrap_or_default();
    }
    Ok(d)
}
