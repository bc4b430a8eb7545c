//! Validating a decoded registration in Consul's order and with its texts (weights, meta, check
//! types, statuses), and turning it into the service and checks the state holds (IDs, names,
//! tagged addresses and DeregisterCriticalServiceAfter defaults).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::decode::{CheckDef, ServiceDef};
use crate::http::ApiError;
use crate::model::{CRITICAL, CheckSpec, PASSING, Probe, Service, TaggedAddress, WARNING};

/// `ipaddr.IsAny`.
pub fn is_any_address(a: &str) -> bool {
    matches!(a, "0.0.0.0" | "::" | "[::]")
}

fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), String> {
    if meta.len() > 64 {
        return Err("Node metadata cannot contain more than 64 key/value pairs".into());
    }
    for (k, v) in meta {
        let reason = if k.is_empty() {
            "Key cannot be blank".to_owned()
        } else if !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            "Key contains invalid characters".to_owned()
        } else if k.len() > 128 {
            "Key is too long (limit: 128 characters)".to_owned()
        } else if k.starts_with("consul-") {
            "Key prefix 'consul-' is reserved for internal use".to_owned()
        } else if v.len() > 512 {
            "Value is too long (limit: 512 characters)".to_owned()
        } else {
            continue;
        };
        return Err(format!(
            "Couldn't load metadata pair ('{k}', '{v}'): {reason}"
        ));
    }
    Ok(())
}

/// `CheckType.Validate`.
fn validate_check(c: &CheckDef) -> Result<(), String> {
    let interval_check = !c.script_args.is_empty()
        || !c.http.is_empty()
        || !c.tcp.is_empty()
        || c.other_kind.is_some();
    if c.interval > 0 && c.ttl > 0 {
        return Err("Interval and TTL cannot both be specified".into());
    }
    if interval_check && c.interval <= 0 {
        return Err(
            "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks".into(),
        );
    }
    if interval_check && c.is_alias() {
        return Err("Interval cannot be set for Alias checks".into());
    }
    if c.is_alias() && c.ttl > 0 {
        return Err("TTL must be not be set for Alias checks".into());
    }
    if !interval_check && !c.is_alias() && c.ttl <= 0 {
        return Err("TTL must be > 0 for TTL checks".into());
    }
    if c.output_max_size < 0 {
        return Err("MaxOutputMaxSize must be positive".into());
    }
    if c.failures_before_warning > c.failures_before_critical {
        return Err("FailuresBeforeWarning can't be higher than FailuresBeforeCritical".into());
    }
    Ok(())
}

/// A validated registration. `deferred` is an error Consul raises only after the ACL check.
pub struct Registration {
    pub service: Service,
    pub checks: Vec<CheckSpec>,
    pub deferred: Option<ApiError>,
}

/// Validates in Consul's order (after the name, address and token checks done by the caller).
pub fn validate(d: ServiceDef) -> Result<Registration, ApiError> {
    if let Some((p, w)) = d.weights {
        let e = if p < 1 {
            "Passing must be greater than 0"
        } else if w < 0 {
            "Warning must be greater or equal than 0"
        } else if p > 65535 || w > 65535 {
            "DNS Weight must be between 0 and 65535"
        } else {
            ""
        };
        if !e.is_empty() {
            return Err(ApiError::bad_request(format!("Invalid Weights: {e}")));
        }
    }
    if let Some(meta) = &d.meta {
        validate_meta(meta)
            .map_err(|e| ApiError::bad_request(format!("Invalid Service Meta: {e}")))?;
    }
    if let Some(field) = d.unsupported.first() {
        return Err(ApiError::bad_request(format!(
            "Validation failed: mini-consul does not implement {field} (only typical services)"
        )));
    }
    let defs: Vec<CheckDef> = d
        .check
        .set
        .then(|| d.check.clone())
        .into_iter()
        .chain(d.checks)
        .collect();
    for c in &defs {
        validate_check(c).map_err(|e| ApiError::bad_request(format!("Invalid check: {e}")))?;
    }
    if defs
        .iter()
        .any(|c| !c.status.is_empty() && ![PASSING, WARNING, CRITICAL].contains(&c.status.as_str()))
    {
        return Err(ApiError::bad_request(
            "Status for checks must 'passing', 'warning', 'critical'",
        ));
    }

    let id = if d.id.is_empty() {
        d.name.clone()
    } else {
        d.id
    };
    let mut deferred = None;
    let mut checks = Vec::new();
    let many = defs.len() > 1;
    for (i, c) in defs.into_iter().enumerate() {
        let probe = if c.ttl > 0 {
            Probe::Ttl
        } else if !c.http.is_empty() {
            Probe::Http {
                url: c.http,
                method: c.method,
                header: c.header,
                body: c.body,
            }
        } else if !c.tcp.is_empty() {
            Probe::Tcp { address: c.tcp }
        } else if !c.script_args.is_empty() || c.other_kind.is_some() {
            deferred.get_or_insert(match c.other_kind {
                None => ApiError::internal("Scripts are disabled on this agent from remote calls; to enable, configure 'enable_script_checks' to true"),
                Some(kind) => ApiError::bad_request(format!("mini-consul does not implement {kind} checks")),
            });
            continue;
        } else {
            // What validation leaves: an alias check (with no TTL, HTTP, TCP, script...). An
            // `Interval` alone is accepted and ignored, as Consul does.
            Probe::Alias {
                service: c.alias_service,
                node: c.alias_node,
            }
        };
        // An alias check's status is derived from the aliased service: a given one is ignored.
        let status =
            (!c.status.is_empty() && !matches!(probe, Probe::Alias { .. })).then_some(c.status);
        let default_id = if many {
            format!("service:{id}:{}", i + 1)
        } else {
            format!("service:{id}")
        };
        checks.push(CheckSpec {
            id: if c.id.is_empty() { default_id } else { c.id },
            name: if c.name.is_empty() {
                format!("Service '{}' check", d.name)
            } else {
                c.name
            },
            notes: c.notes,
            status,
            probe,
            ttl: c.ttl,
            interval: c.interval,
            timeout: c.timeout,
            // DeregisterCriticalServiceAfter: 0 turns it off; below the 1m minimum it is raised.
            deregister_after: (c.deregister_after > 0)
                .then(|| crate::duration::to_std(c.deregister_after).max(Duration::from_secs(60))),
            output_max_size: if c.output_max_size > 0 {
                c.output_max_size as usize
            } else {
                4096
            },
        });
    }

    let mut tagged = d.tagged_addresses;
    if let Ok(ip) = d.address.parse::<IpAddr>() {
        let (lan, wan) = if ip.is_ipv4() {
            ("lan_ipv4", "wan_ipv4")
        } else {
            ("lan_ipv6", "wan_ipv6")
        };
        for k in [lan, wan] {
            tagged.entry(k.to_owned()).or_insert_with(|| TaggedAddress {
                address: d.address.clone(),
                port: d.port,
            });
        }
    }
    let service = Service {
        id,
        name: d.name,
        tags: d.tags.unwrap_or_default(),
        address: d.address,
        tagged_addresses: tagged,
        meta: d.meta,
        port: d.port,
        socket_path: d.socket_path,
        weights: d.weights.unwrap_or((1, 1)),
        enable_tag_override: d.enable_tag_override,
        create_index: 0,
        modify_index: 0,
    };
    Ok(Registration {
        service,
        checks,
        deferred,
    })
}
