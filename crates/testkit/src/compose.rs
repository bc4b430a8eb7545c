//! Readers of the deployment's files, for the tests that check them against each other without
//! Docker: docker-compose.yml (services, mounts, ports, commands, environment, dependencies),
//! HAProxy's configuration, Consul's HCL, URLs, and the names a certificate is issued for.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_norway::Value;

/// docker-compose.yml, parsed.
pub struct Compose(pub Value);

/// One entry of a service's `volumes`.
pub struct Mount {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

impl Mount {
    pub fn is_bind(&self) -> bool {
        self.source.starts_with('.') || self.source.starts_with('/')
    }
}

/// One entry of a service's `ports`.
pub struct Port {
    pub host_ip: Option<String>,
    pub host: u16,
    pub container: u16,
}

impl Compose {
    pub fn services(&self) -> BTreeMap<String, Service<'_>> {
        self.0
            .get("services")
            .and_then(Value::as_mapping)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), Service(v))))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn service(&self, name: &str) -> Result<Service<'_>, String> {
        self.0
            .get("services")
            .and_then(|s| s.get(name))
            .map(Service)
            .ok_or_else(|| format!("docker-compose.yml has no service {name}"))
    }

    pub fn named_volumes(&self) -> BTreeSet<String> {
        self.0
            .get("volumes")
            .and_then(Value::as_mapping)
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One service of the compose file.
#[derive(Clone, Copy)]
pub struct Service<'a>(pub &'a Value);

impl Service<'_> {
    pub fn str(&self, key: &str) -> Option<String> {
        self.0.get(key).and_then(Value::as_str).map(String::from)
    }

    /// `command` or `entrypoint` as a list of arguments.
    pub fn args(&self, key: &str) -> Vec<String> {
        match self.0.get(key) {
            Some(Value::Sequence(s)) => s
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            Some(Value::String(s)) => s.split_whitespace().map(String::from).collect(),
            _ => Vec::new(),
        }
    }

    /// The value after `--flag=` or `--flag` in `command`.
    pub fn flag(&self, flag: &str) -> Option<String> {
        let args = self.args("command");
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
                return Some(v.to_owned());
            }
            if a == flag {
                return it.next().cloned();
            }
        }
        None
    }

    pub fn has_arg(&self, arg: &str) -> bool {
        self.args("command").iter().any(|a| a == arg)
    }

    pub fn env(&self) -> BTreeMap<String, String> {
        match self.0.get("environment") {
            Some(Value::Mapping(m)) => m
                .iter()
                .filter_map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => String::new(),
                    };
                    Some((k.as_str()?.to_owned(), v))
                })
                .collect(),
            Some(Value::Sequence(s)) => s
                .iter()
                .filter_map(|v| {
                    let (k, v) = v.as_str()?.split_once('=')?;
                    Some((k.to_owned(), v.to_owned()))
                })
                .collect(),
            _ => BTreeMap::new(),
        }
    }

    pub fn mounts(&self) -> Vec<Mount> {
        let Some(list) = self.0.get("volumes").and_then(Value::as_sequence) else {
            return Vec::new();
        };
        list.iter()
            .filter_map(|v| match v {
                Value::String(s) => {
                    let parts: Vec<&str> = s.split(':').collect();
                    Some(Mount {
                        source: parts.first()?.to_string(),
                        target: parts.get(1)?.to_string(),
                        read_only: parts
                            .get(2)
                            .is_some_and(|m| m.split(',').any(|o| o == "ro")),
                    })
                }
                Value::Mapping(_) => Some(Mount {
                    source: v.get("source")?.as_str()?.to_owned(),
                    target: v.get("target")?.as_str()?.to_owned(),
                    read_only: v.get("read_only").and_then(Value::as_bool).unwrap_or(false),
                }),
                _ => None,
            })
            .collect()
    }

    /// Where this service mounts the named volume `volume`.
    pub fn volume_mount(&self, volume: &str) -> Option<Mount> {
        self.mounts().into_iter().find(|m| m.source == volume)
    }

    pub fn ports(&self) -> Vec<Port> {
        let Some(list) = self.0.get("ports").and_then(Value::as_sequence) else {
            return Vec::new();
        };
        list.iter()
            .filter_map(|v| {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                let s = s.trim_end_matches("/tcp");
                let parts: Vec<&str> = s.split(':').collect();
                let (ip, host, container) = match parts.as_slice() {
                    [c] => (None, *c, *c),
                    [h, c] => (None, *h, *c),
                    [ip, h, c] => (Some(ip.to_string()), *h, *c),
                    _ => return None,
                };
                Some(Port {
                    host_ip: ip,
                    host: host.parse().ok()?,
                    container: container.parse().ok()?,
                })
            })
            .collect()
    }

    pub fn depends_on(&self) -> BTreeMap<String, String> {
        match self.0.get("depends_on") {
            Some(Value::Mapping(m)) => m
                .iter()
                .filter_map(|(k, v)| {
                    let cond = v
                        .get("condition")
                        .and_then(Value::as_str)
                        .unwrap_or("service_started");
                    Some((k.as_str()?.to_owned(), cond.to_owned()))
                })
                .collect(),
            Some(Value::Sequence(s)) => s
                .iter()
                .filter_map(|v| Some((v.as_str()?.to_owned(), "service_started".to_owned())))
                .collect(),
            _ => BTreeMap::new(),
        }
    }

    /// `build` as (context, Dockerfile path relative to the context).
    pub fn build(&self) -> Option<(String, String)> {
        match self.0.get("build")? {
            Value::String(c) => Some((c.clone(), "Dockerfile".into())),
            m @ Value::Mapping(_) => Some((
                m.get("context")?.as_str()?.to_owned(),
                m.get("dockerfile")
                    .and_then(Value::as_str)
                    .unwrap_or("Dockerfile")
                    .to_owned(),
            )),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading config/compose/haproxy.cfg and config/compose/consul.hcl

pub struct HaSection {
    pub kind: String,
    pub name: String,
    pub lines: Vec<Vec<String>>,
}

pub fn haproxy_sections(text: &str) -> Vec<HaSection> {
    let mut out: Vec<HaSection> = Vec::new();
    for raw in text.lines() {
        let line = raw.split('#').next().unwrap_or("");
        let tokens: Vec<String> = line.split_whitespace().map(String::from).collect();
        if tokens.is_empty() {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            out.push(HaSection {
                kind: tokens[0].clone(),
                name: tokens.get(1).cloned().unwrap_or_default(),
                lines: Vec::new(),
            });
        } else if let Some(s) = out.last_mut() {
            s.lines.push(tokens);
        }
    }
    out
}

impl HaSection {
    pub fn directive(&self, name: &str) -> Option<&Vec<String>> {
        self.lines.iter().find(|l| l[0] == name)
    }
    pub fn all(&self, name: &str) -> impl Iterator<Item = &Vec<String>> {
        self.lines.iter().filter(move |l| l[0] == name)
    }
}

/// The value after `key` among a server line's parameters.
pub fn param<'a>(tokens: &'a [String], key: &str) -> Option<&'a str> {
    tokens
        .iter()
        .position(|t| t == key)
        .and_then(|i| tokens.get(i + 1))
        .map(String::as_str)
}

/// An HAProxy time: a number of milliseconds, or with a unit (`1s`, `500ms`).
pub fn haproxy_time(v: &str) -> Option<Duration> {
    if v.chars().all(|c| c.is_ascii_digit()) {
        return v.parse().ok().map(Duration::from_millis);
    }
    humantime::parse_duration(v).ok()
}

/// `key = value` pairs of an HCL file, keyed by their block path (`tls.defaults.ca_file`).
pub fn hcl_values(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut blocks: Vec<String> = Vec::new();
    for raw in text.lines() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if let Some(name) = line.strip_suffix('{') {
            blocks.push(name.trim().to_owned());
        } else if line == "}" {
            blocks.pop();
        } else if let Some((k, v)) = line.split_once('=') {
            let key = blocks
                .iter()
                .map(String::as_str)
                .chain([k.trim()])
                .collect::<Vec<_>>()
                .join(".");
            out.insert(key, v.trim().trim_matches('"').to_owned());
        }
    }
    out
}

/// (scheme, host, port) of a URL.
pub fn url(v: &str) -> Option<(String, String, u16)> {
    let u: http::Uri = v.parse().ok()?;
    Some((
        u.scheme_str()?.to_owned(),
        u.host()?.to_owned(),
        u.port_u16()?,
    ))
}

/// Every path under `mount` that a string names (`--cert-file=/certs/x.pem`, `/certs/dir`, ...).
pub fn paths_under(s: &str, mount: &str) -> Vec<String> {
    s.split(|c: char| c.is_whitespace() || matches!(c, '=' | ',' | '"' | '\''))
        .filter(|t| *t == mount || t.starts_with(&format!("{mount}/")))
        .map(String::from)
        .collect()
}

pub fn sans(pem_path: &Path) -> Result<BTreeSet<String>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(pem_path)
        .map_err(|e| format!("{}: {e}", pem_path.display()))?;
    let (_, x) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    let mut out = BTreeSet::new();
    if let Some(san) = x.subject_alternative_name().map_err(|e| e.to_string())? {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    out.insert(d.to_string());
                }
                x509_parser::extensions::GeneralName::IPAddress(b) if b.len() == 4 => {
                    let ip: [u8; 4] = (*b).try_into().unwrap();
                    out.insert(std::net::IpAddr::from(ip).to_string());
                }
                _ => {}
            }
        }
    }
    Ok(out)
}
