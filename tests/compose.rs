//! docker-compose.yml agrees with the rest of the repository, without Docker: every path it
//! mounts or builds from exists; the twinreg configuration it mounts (config/compose/twinreg.toml)
//! parses, names the etcd members and Consul at the host names and ports the compose file gives
//! them, and listens where HAProxy (config/compose/haproxy.cfg) sends traffic and health checks;
//! every certificate path in any of these files is one that `twinreg certs compose` writes, with
//! the names the caller dials; each key directory belongs to the user that reads it.
//!
//! Each check is a function over a [`Deployment`] (the repository's files, some of which a test
//! may replace). It runs once on the files as they are, and once more per deliberate mistake, to
//! show that it would catch one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_norway::Value;
use testkit::compose::{
    Compose, HaSection, Service, haproxy_sections, haproxy_time, hcl_values, param, paths_under,
    sans, url,
};
use twinreg::certs::compose as names;
use twinreg::config::Config;

const COMPOSE: &str = "docker-compose.yml";
const TWINREG_TOML: &str = "config/compose/twinreg.toml";
const HAPROXY_CFG: &str = "config/compose/haproxy.cfg";
const CONSUL_HCL: &str = "config/compose/consul.hcl";
const DOCKERFILE: &str = "Dockerfile";
const DOCKERIGNORE: &str = ".dockerignore";
/// Where the official haproxy image reads its configuration.
const HAPROXY_IMAGE_CONFIG: &str = "/usr/local/etc/haproxy/haproxy.cfg";
/// Where the official consul image's entrypoint reads configuration from (`-config-dir`).
const CONSUL_IMAGE_CONFIG_DIR: &str = "/consul/config";
/// The named volume the `certs` service writes.
const CERTS_VOLUME: &str = "certs";

type Check = Result<(), String>;

/// The repository's files, any of which a test may replace with a broken copy.
#[derive(Clone)]
struct Deployment {
    root: PathBuf,
    replaced: BTreeMap<String, String>,
}

impl Deployment {
    fn load() -> Self {
        Self {
            root: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            replaced: BTreeMap::new(),
        }
    }

    fn text(&self, rel: &str) -> Result<String, String> {
        match self.replaced.get(rel) {
            Some(t) => Ok(t.clone()),
            None => std::fs::read_to_string(self.root.join(rel))
                .map_err(|e| format!("cannot read {rel}: {e}")),
        }
    }

    /// A copy with the first `from` in `rel` replaced by `to`.
    fn with(&self, rel: &str, from: &str, to: &str) -> Self {
        let text = self.text(rel).unwrap();
        assert!(text.contains(from), "{rel} has no {from:?} to change");
        let mut copy = self.clone();
        copy.replaced
            .insert(rel.to_owned(), text.replacen(from, to, 1));
        copy
    }

    fn compose(&self) -> Result<Compose, String> {
        let text = self.text(COMPOSE)?;
        let doc: Value =
            serde_norway::from_str(&text).map_err(|e| format!("{COMPOSE} is not YAML: {e}"))?;
        Ok(Compose(doc))
    }

    /// A repository path (relative, `./` allowed) as seen by the checks.
    fn exists(&self, rel: &str) -> bool {
        let rel = rel.trim_start_matches("./");
        self.replaced.contains_key(rel) || self.root.join(rel).exists()
    }

    fn twinreg_config(&self, rel: &str) -> Result<Config, String> {
        let text = self.text(rel)?;
        Config::from_toml(&text)
            .map_err(|e| format!("{rel} does not parse as twinreg's config:\n{e}"))
    }
}

/// Collects problems; a check fails with all of them, one per line.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, p: impl Into<String>) {
        self.0.push(p.into());
    }
    fn check(&mut self, ok: bool, p: impl FnOnce() -> String) {
        if !ok {
            self.0.push(p());
        }
    }
    fn done(self) -> Check {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0.join("\n"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the checks

fn replicas(c: &Compose) -> Result<Vec<(&'static str, Service<'_>)>, String> {
    names::REPLICAS
        .iter()
        .map(|r| Ok((*r, c.service(r)?)))
        .collect()
}

/// The twinreg config a replica runs with: the host file bind-mounted at its `--config` path.
fn replica_config_file(name: &str, s: Service<'_>) -> Result<String, String> {
    let args = s.args("command");
    if args.first().map(String::as_str) != Some("serve") {
        return Err(format!(
            "{name}: command must start with `serve`, not {args:?}"
        ));
    }
    let path = s
        .flag("--config")
        .or_else(|| s.env().get("TWINREG_CONFIG").cloned())
        .ok_or_else(|| format!("{name}: `serve` has no --config"))?;
    let m = s
        .mounts()
        .into_iter()
        .find(|m| m.target == path && m.is_bind())
        .ok_or_else(|| {
            format!("{name}: nothing from the repository is mounted at --config {path}")
        })?;
    Ok(m.source.trim_start_matches("./").to_owned())
}

fn socket(key: &str, v: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|_| format!("{TWINREG_TOML}: {key} '{v}' is not IP:port"))
}

/// The certificate set `twinreg certs compose` writes, generated now.
fn generated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    twinreg::certs::write_compose(dir.path(), false).unwrap();
    dir
}

// ---------------------------------------------------------------------------------------------
// The checks

/// The services are the ones the certificates are issued for (src/certs.rs, `compose`).
fn check_services(d: &Deployment) -> Check {
    let c = d.compose()?;
    let have: BTreeSet<String> = c.services().into_keys().collect();
    let want: BTreeSet<String> = [names::CERTS, names::CONSUL, names::LOAD_BALANCER]
        .into_iter()
        .chain(names::ETCD_MEMBERS)
        .chain(names::REPLICAS)
        .map(String::from)
        .collect();
    if have != want {
        return Err(format!(
            "{COMPOSE}: services are {have:?}, but `twinreg certs compose` issues certificates \
             for {want:?} (src/certs.rs, mod compose); rename both together"
        ));
    }
    Ok(())
}

/// Every bind-mounted host path and build context/Dockerfile exists; every named volume is
/// declared; every image is pinned to a version.
fn check_paths_and_images(d: &Deployment) -> Check {
    let c = d.compose()?;
    let volumes = c.named_volumes();
    let mut p = Problems::default();
    for (name, s) in c.services() {
        for m in s.mounts() {
            if m.is_bind() {
                p.check(d.exists(&m.source), || {
                    format!(
                        "{name}: bind mount {} does not exist in the repository",
                        m.source
                    )
                });
            } else {
                p.check(volumes.contains(&m.source), || {
                    format!(
                        "{name}: volume {} is not declared under `volumes:`",
                        m.source
                    )
                });
            }
        }
        match (s.build(), s.str("image")) {
            (Some((ctx, file)), _) => {
                p.check(d.exists(&ctx), || {
                    format!("{name}: build context {ctx} does not exist")
                });
                let df = format!("{}/{file}", ctx.trim_end_matches('/'));
                p.check(d.exists(&df), || format!("{name}: {df} does not exist"));
            }
            (None, Some(image)) => {
                let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
                p.check(
                    !tag.contains('/')
                        && tag != "latest"
                        && tag.chars().any(|c| c.is_ascii_digit()),
                    || format!("{name}: image {image} is not pinned to a version"),
                );
            }
            (None, None) => p.add(format!("{name}: neither `image` nor `build`")),
        }
    }
    p.done()
}

/// The Dockerfile builds from files that exist and reach the build context, runs `twinreg`, and
/// exposes the ports the compose configuration listens on.
fn check_dockerfile(d: &Deployment) -> Check {
    let text = d.text(DOCKERFILE)?;
    let ignored: Vec<String> = d
        .text(DOCKERIGNORE)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    let cfg = d.twinreg_config(TWINREG_TOML)?;
    let mut p = Problems::default();
    for line in text.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        if tokens.first() != Some(&"COPY") || tokens.iter().any(|t| t.starts_with("--from")) {
            continue;
        }
        for src in &tokens[1..tokens.len() - 1] {
            p.check(d.exists(src), || {
                format!("{DOCKERFILE}: COPY {src}: no such file")
            });
            for pat in &ignored {
                let hit = if let Some(ext) = pat.strip_prefix("**/*") {
                    src.ends_with(ext)
                } else {
                    src.trim_end_matches('/') == pat.trim_end_matches('/')
                };
                p.check(!hit, || {
                    format!("{DOCKERFILE}: COPY {src}, but {DOCKERIGNORE} leaves it out ({pat})")
                });
            }
        }
    }
    p.check(
        text.lines()
            .any(|l| l.starts_with("ENTRYPOINT") && l.contains("\"twinreg\"")),
        || format!("{DOCKERFILE}: ENTRYPOINT is not twinreg"),
    );
    let exposed: BTreeSet<u16> = text
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().filter_map(|t| t.parse().ok()))
        .collect();
    for (key, v) in [
        ("server.listen", &cfg.server.listen),
        ("server.admin_listen", &cfg.server.admin_listen),
    ] {
        let port = socket(key, v)?.port();
        p.check(exposed.contains(&port), || {
            format!("{DOCKERFILE}: EXPOSE {exposed:?} lacks {port} ({TWINREG_TOML} {key})")
        });
    }
    p.done()
}

/// Each replica runs the shipped config, which names the etcd members and Consul at the host
/// names and ports the compose file gives them.
fn check_registry_endpoints(d: &Deployment) -> Check {
    let c = d.compose()?;
    let mut p = Problems::default();
    for (name, s) in replicas(&c)? {
        let file = replica_config_file(name, s)?;
        p.check(file == TWINREG_TOML, || {
            format!("{name}: runs {file}; this test checks {TWINREG_TOML}")
        });
        for k in s.env().keys() {
            p.check(!k.contains("__"), || {
                format!(
                    "{name}: environment {k} overrides the config file; put it in {TWINREG_TOML}"
                )
            });
        }
    }
    let cfg = d.twinreg_config(TWINREG_TOML)?;

    // etcd: every member, each at the URL it advertises and the port it listens on.
    let mut dialed = BTreeSet::new();
    for ep in &cfg.etcd.endpoints {
        let Some((scheme, host, port)) = url(ep) else {
            p.add(format!(
                "{TWINREG_TOML}: etcd.endpoints: '{ep}' is not scheme://host:port"
            ));
            continue;
        };
        dialed.insert(host.clone());
        p.check(scheme == "https", || {
            format!("{TWINREG_TOML}: etcd endpoint {ep}: the members serve https only")
        });
        let Ok(member) = c.service(&host) else {
            p.add(format!(
                "{TWINREG_TOML}: etcd endpoint {ep}: {COMPOSE} has no service {host}"
            ));
            continue;
        };
        let advertised = member.flag("--advertise-client-urls").unwrap_or_default();
        p.check(advertised.split(',').any(|a| a == ep), || {
            format!(
                "{TWINREG_TOML}: etcd endpoint {ep}: {host} advertises --advertise-client-urls={advertised}"
            )
        });
        let listen = member.flag("--listen-client-urls").unwrap_or_default();
        p.check(
            listen
                .split(',')
                .any(|l| url(l).is_some_and(|(_, _, lp)| lp == port)),
            || {
                format!(
                    "{TWINREG_TOML}: etcd endpoint {ep}: {host} listens on --listen-client-urls={listen}"
                )
            },
        );
    }
    let members: BTreeSet<String> = names::ETCD_MEMBERS.iter().map(|m| m.to_string()).collect();
    p.check(dialed == members, || {
        format!("{TWINREG_TOML}: etcd.endpoints reach {dialed:?}, the members are {members:?}")
    });
    p.check(cfg.etcd.ca.is_some(), || {
        format!("{TWINREG_TOML}: etcd.ca is required for https endpoints")
    });
    p.check(cfg.etcd.cert.is_some() && cfg.etcd.key.is_some(), || {
        format!("{TWINREG_TOML}: etcd.cert/key are required: the members use --client-cert-auth")
    });

    // Consul: the service name and the HTTPS port of config/compose/consul.hcl.
    let hcl = hcl_values(&d.text(CONSUL_HCL)?);
    let a = &cfg.consul.address;
    match url(a) {
        Some((scheme, host, port)) => {
            p.check(scheme == "https", || {
                format!("{TWINREG_TOML}: consul.address {a}: Consul serves https only")
            });
            p.check(host == names::CONSUL && c.service(&host).is_ok(), || {
                format!(
                    "{TWINREG_TOML}: consul.address {a}: the Consul service is {}",
                    names::CONSUL
                )
            });
            let https = hcl.get("ports.https").cloned().unwrap_or_default();
            p.check(https == port.to_string(), || {
                format!(
                    "{TWINREG_TOML}: consul.address {a}, but {CONSUL_HCL} has ports.https = {https}"
                )
            });
        }
        None => p.add(format!(
            "{TWINREG_TOML}: consul.address '{a}' is not https://host:port"
        )),
    }
    p.check(cfg.consul.ca.is_some(), || {
        format!("{TWINREG_TOML}: consul.ca is required for an https address")
    });
    p.check(
        hcl.get("tls.defaults.verify_incoming").map(String::as_str) != Some("true")
            || (cfg.consul.cert.is_some() && cfg.consul.key.is_some()),
        || format!("{TWINREG_TOML}: consul.cert/key are required: {CONSUL_HCL} verifies clients"),
    );
    // Consul's own CLI and health check call it at CONSUL_HTTP_ADDR.
    let consul = c.service(names::CONSUL)?;
    if let Some(addr) = consul.env().get("CONSUL_HTTP_ADDR") {
        let port = url(addr).map(|(_, _, p)| p.to_string());
        p.check(port.as_ref() == hcl.get("ports.https"), || {
            format!("{COMPOSE}: consul CONSUL_HTTP_ADDR={addr}, but {CONSUL_HCL} has ports.https = {:?}", hcl.get("ports.https"))
        });
    }
    // config/compose/consul.hcl is read from the image's config directory.
    let hcl_mounted = consul.mounts().into_iter().any(|m| {
        m.source.trim_start_matches("./") == CONSUL_HCL
            && Path::new(&m.target).parent() == Some(Path::new(CONSUL_IMAGE_CONFIG_DIR))
    });
    p.check(hcl_mounted, || {
        format!("{COMPOSE}: consul does not mount {CONSUL_HCL} into {CONSUL_IMAGE_CONFIG_DIR}/")
    });
    p.done()
}

/// HAProxy sends traffic to each replica's public port and health-checks GET /readyz on its
/// admin port; only the load balancer publishes the public port; draining outlasts the time
/// HAProxy takes to notice.
fn check_load_balancer(d: &Deployment) -> Check {
    let c = d.compose()?;
    let cfg = d.twinreg_config(TWINREG_TOML)?;
    let listen = socket("server.listen", &cfg.server.listen)?;
    let admin = socket("server.admin_listen", &cfg.server.admin_listen)?;
    let mut p = Problems::default();
    p.check(listen.ip().is_unspecified(), || {
        format!("{TWINREG_TOML}: server.listen {listen} is not reachable from the lb container (use 0.0.0.0)")
    });
    p.check(admin.ip().is_unspecified(), || {
        format!("{TWINREG_TOML}: server.admin_listen {admin} is not reachable from the lb container's health checks (use 0.0.0.0)")
    });

    let lb = c.service(names::LOAD_BALANCER)?;
    let mounted = lb.mounts().into_iter().any(|m| {
        m.source.trim_start_matches("./") == HAPROXY_CFG && m.target == HAPROXY_IMAGE_CONFIG
    });
    p.check(mounted, || {
        format!("{COMPOSE}: lb must mount {HAPROXY_CFG} at {HAPROXY_IMAGE_CONFIG}")
    });
    let lb_ports: BTreeSet<u16> = lb.ports().iter().map(|x| x.container).collect();

    let sections = haproxy_sections(&d.text(HAPROXY_CFG)?);
    let defaults_mode = sections
        .iter()
        .find(|s| s.kind == "defaults")
        .and_then(|s| s.directive("mode"))
        .map(|l| l[1].clone());
    let mode = |s: &HaSection| {
        s.directive("mode")
            .map(|l| l[1].clone())
            .or(defaults_mode.clone())
            .unwrap_or_else(|| "tcp".into())
    };
    let frontends: Vec<&HaSection> = sections
        .iter()
        .filter(|s| s.kind == "frontend" || s.kind == "listen")
        .filter(|s| {
            s.all("bind").any(|b| {
                b.get(1)
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|port| port.parse::<u16>().ok())
                    == Some(listen.port())
            })
        })
        .collect();
    let Some(front) = frontends.first() else {
        p.add(format!(
            "{HAPROXY_CFG}: no frontend binds :{}",
            listen.port()
        ));
        return p.done();
    };
    p.check(lb_ports.contains(&listen.port()), || {
        format!(
            "{COMPOSE}: lb publishes container ports {lb_ports:?}, not {} where {HAPROXY_CFG} binds",
            listen.port()
        )
    });
    p.check(mode(front) == "tcp", || {
        format!("{HAPROXY_CFG}: frontend {} is not mode tcp: client certificates would not reach twinreg", front.name)
    });
    let backend_name = front
        .directive("default_backend")
        .and_then(|l| l.get(1).cloned())
        .unwrap_or_else(|| front.name.clone());
    let Some(back) = sections
        .iter()
        .find(|s| (s.kind == "backend" || s.kind == "listen") && s.name == backend_name)
    else {
        p.add(format!("{HAPROXY_CFG}: no backend {backend_name}"));
        return p.done();
    };
    p.check(mode(back) == "tcp", || {
        format!("{HAPROXY_CFG}: backend {backend_name} is not mode tcp")
    });
    let httpchk = back
        .all("option")
        .find(|l| l.get(1).map(String::as_str) == Some("httpchk"));
    p.check(
        httpchk.is_some_and(|l| l.get(2).map(String::as_str) == Some("GET") && l.get(3).map(String::as_str) == Some("/readyz")),
        || format!("{HAPROXY_CFG}: backend {backend_name} must health-check with `option httpchk GET /readyz`"),
    );

    let defaults: Vec<String> = back
        .directive("default-server")
        .cloned()
        .unwrap_or_default();
    let mut servers = BTreeSet::new();
    // The slowest server to be marked down: inter x fall (HAProxy's defaults: 2s, 3).
    let (mut inter, mut fall) = (Duration::ZERO, 0u32);
    for line in back.all("server") {
        let name = line.get(1).cloned().unwrap_or_default();
        let addr = line.get(2).cloned().unwrap_or_default();
        let params: Vec<String> = defaults
            .iter()
            .skip(1)
            .chain(line.iter().skip(3))
            .cloned()
            .collect();
        servers.insert(name.clone());
        let (host, port) = addr.rsplit_once(':').unwrap_or((&addr, ""));
        p.check(names::REPLICAS.contains(&host), || {
            format!(
                "{HAPROXY_CFG}: server {name} points at {host}, not a replica ({:?})",
                names::REPLICAS
            )
        });
        p.check(port == listen.port().to_string(), || {
            format!("{HAPROXY_CFG}: server {name} sends to port {port}, twinreg listens on {} ({TWINREG_TOML} server.listen)", listen.port())
        });
        p.check(params.iter().any(|t| t == "check"), || {
            format!("{HAPROXY_CFG}: server {name} is not health-checked (`check`)")
        });
        let check_port = param(&params, "port").unwrap_or(port);
        p.check(check_port == admin.port().to_string(), || {
            format!(
                "{HAPROXY_CFG}: server {name} health-checks port {check_port}, /readyz is on {} ({TWINREG_TOML} server.admin_listen)",
                admin.port()
            )
        });
        let i = param(&params, "inter")
            .and_then(haproxy_time)
            .unwrap_or(Duration::from_secs(2));
        let f = param(&params, "fall")
            .and_then(|f| f.parse().ok())
            .unwrap_or(3);
        if i * f > inter * fall {
            (inter, fall) = (i, f);
        }
    }
    let want: BTreeSet<String> = names::REPLICAS.iter().map(|r| r.to_string()).collect();
    p.check(servers == want, || {
        format!("{HAPROXY_CFG}: backend {backend_name} has servers {servers:?}, the replicas are {want:?}")
    });

    // Draining: /readyz answers 503 for drain_delay before connections are refused; HAProxy
    // needs up to inter x fall to stop sending new ones.
    let drain = humantime::parse_duration(&cfg.server.drain_delay).map_err(|e| e.to_string())?;
    let grace = humantime::parse_duration(&cfg.server.shutdown_grace).map_err(|e| e.to_string())?;
    let detect = inter * fall;
    p.check(drain > detect, || {
        format!(
            "{TWINREG_TOML}: server.drain_delay {drain:?} is not longer than HAProxy takes to mark a draining replica down (inter {inter:?} x fall {fall})"
        )
    });

    for (name, s) in replicas(&c)? {
        for port in s.ports() {
            p.check(port.container != listen.port(), || {
                format!(
                    "{name}: publishes the public port {}; only lb should",
                    port.container
                )
            });
            p.check(port.container == admin.port(), || {
                format!(
                    "{name}: publishes container port {}, the admin port is {}",
                    port.container,
                    admin.port()
                )
            });
            p.check(port.host_ip.as_deref() == Some("127.0.0.1"), || {
                format!("{name}: the admin port (plain HTTP) is published beyond the host's loopback (port {})", port.host)
            });
        }
        let stop = s
            .str("stop_grace_period")
            .and_then(|v| humantime::parse_duration(&v).ok())
            .unwrap_or(Duration::from_secs(10));
        p.check(stop >= drain + grace, || {
            format!(
                "{name}: stop_grace_period {stop:?} is shorter than drain_delay + shutdown_grace ({:?}): the replica would be killed mid-drain",
                drain + grace
            )
        });
    }
    p.done()
}

/// Every path under the certificates volume, in any service's command or environment, in the
/// twinreg config and in config/compose/consul.hcl, is a file or directory `twinreg certs compose` writes; the
/// server certificates each party presents carry the names it is dialed at.
fn check_certificate_paths(d: &Deployment) -> Check {
    let c = d.compose()?;
    let dir = generated();
    let mut p = Problems::default();
    let certs = c.service(names::CERTS)?;
    let Some(out) = certs.volume_mount(CERTS_VOLUME) else {
        return Err(format!(
            "{COMPOSE}: certs does not mount the {CERTS_VOLUME} volume"
        ));
    };
    p.check(!out.read_only, || {
        format!("{COMPOSE}: certs mounts {CERTS_VOLUME} read-only")
    });
    let script = certs.args("command").join(" ");
    p.check(
        script.contains(&format!("twinreg certs compose --out {} ", out.target))
            || script.contains(&format!("twinreg certs compose --out {}\n", out.target)),
        || {
            format!(
                "{COMPOSE}: certs must run `twinreg certs compose --out {}` (its volume's mount point)",
                out.target
            )
        },
    );

    // Resolves a path inside a service's certificates mount to the generated file.
    let resolve = |svc: &str, mount: &str, path: &str| -> Result<PathBuf, String> {
        let rel = path
            .strip_prefix(mount)
            .map(|r| r.trim_start_matches('/'))
            .ok_or_else(|| {
                format!("{svc}: {path} is not under the certificates volume ({mount})")
            })?;
        let local = dir.path().join(rel);
        if local.exists() {
            Ok(local)
        } else {
            Err(format!(
                "{svc}: {path} is not written by `twinreg certs compose`"
            ))
        }
    };

    for (name, s) in c.services() {
        let Some(m) = s.volume_mount(CERTS_VOLUME) else {
            continue;
        };
        if name != names::CERTS {
            p.check(m.read_only, || {
                format!("{name}: mounts {CERTS_VOLUME} writable; only certs writes it")
            });
        }
        let mut strings = s.args("command");
        strings.extend(s.args("entrypoint"));
        strings.extend(s.env().into_values());
        if let Some(hc) = s.0.get("healthcheck") {
            strings.extend(Service(hc).args("test"));
        }
        for st in &strings {
            for path in paths_under(st, &m.target) {
                if let Err(e) = resolve(&name, &m.target, &path) {
                    p.add(e);
                }
            }
        }
    }

    // Each etcd member serves and peers with its own certificate, which names it.
    for member in names::ETCD_MEMBERS {
        let s = c.service(member)?;
        let Some(m) = s.volume_mount(CERTS_VOLUME) else {
            p.add(format!(
                "{member}: does not mount the {CERTS_VOLUME} volume"
            ));
            continue;
        };
        for flag in ["--cert-file", "--peer-cert-file"] {
            let Some(path) = s.flag(flag) else {
                p.add(format!("{member}: no {flag}"));
                continue;
            };
            if let Ok(local) = resolve(member, &m.target, &path) {
                let got = sans(&local)?;
                p.check(got.contains(member), || {
                    format!("{member}: {flag}={path} is issued for {got:?}, not {member}")
                });
            }
        }
        if let Some(ep) = s.env().get("ETCDCTL_ENDPOINTS")
            && let (Some((_, host, _)), Some(cert)) = (url(ep), s.flag("--cert-file"))
            && let Ok(local) = resolve(member, &m.target, &cert)
        {
            let got = sans(&local)?;
            p.check(got.contains(&host), || {
                format!("{member}: ETCDCTL_ENDPOINTS={ep}, but its certificate names {got:?}")
            });
        }
    }

    // Consul: config/compose/consul.hcl's files, and the names twinreg and Consul itself dial.
    let consul = c.service(names::CONSUL)?;
    match consul.volume_mount(CERTS_VOLUME) {
        None => p.add(format!("consul: does not mount the {CERTS_VOLUME} volume")),
        Some(m) => {
            let hcl = hcl_values(&d.text(CONSUL_HCL)?);
            for key in [
                "tls.defaults.ca_file",
                "tls.defaults.cert_file",
                "tls.defaults.key_file",
            ] {
                match hcl.get(key) {
                    None => p.add(format!("{CONSUL_HCL}: no {key}")),
                    Some(path) => {
                        if let Err(e) = resolve(CONSUL_HCL, &m.target, path) {
                            p.add(e);
                        }
                    }
                }
            }
            if let Some(Ok(local)) = hcl
                .get("tls.defaults.cert_file")
                .map(|path| resolve(CONSUL_HCL, &m.target, path))
            {
                let got = sans(&local)?;
                let mut want = vec![
                    names::CONSUL.to_owned(),
                    names::CONSUL_SERVER_NAME.to_owned(),
                ];
                if let Some((_, host, _)) =
                    consul.env().get("CONSUL_HTTP_ADDR").and_then(|a| url(a))
                {
                    want.push(host);
                }
                for n in want {
                    p.check(got.contains(&n), || {
                        format!(
                            "{CONSUL_HCL}: tls.defaults.cert_file is issued for {got:?}, not {n}"
                        )
                    });
                }
            }
        }
    }

    // twinreg: every file of its config comes from the volume, as each replica mounts it.
    let cfg = d.twinreg_config(TWINREG_TOML)?;
    for (name, s) in replicas(&c)? {
        let Some(m) = s.volume_mount(CERTS_VOLUME) else {
            p.add(format!("{name}: does not mount the {CERTS_VOLUME} volume"));
            continue;
        };
        let files = [
            ("tls.cert", Some(&cfg.tls.cert)),
            ("tls.key", Some(&cfg.tls.key)),
            ("tls.client_ca", Some(&cfg.tls.client_ca)),
            ("etcd.ca", cfg.etcd.ca.as_ref()),
            ("etcd.cert", cfg.etcd.cert.as_ref()),
            ("etcd.key", cfg.etcd.key.as_ref()),
            ("consul.ca", cfg.consul.ca.as_ref()),
            ("consul.cert", cfg.consul.cert.as_ref()),
            ("consul.key", cfg.consul.key.as_ref()),
        ];
        for (key, path) in files {
            let Some(path) = path else { continue };
            let path = path.display().to_string();
            if let Err(e) = resolve(name, &m.target, &path) {
                p.add(format!("{TWINREG_TOML} {key}: {e}"));
            }
        }
        if let Ok(local) = resolve(name, &m.target, &cfg.tls.cert.display().to_string()) {
            let got = sans(&local)?;
            for n in [names::LOAD_BALANCER, name, "localhost"] {
                p.check(got.contains(n), || {
                    format!("{TWINREG_TOML} tls.cert is issued for {got:?}, not {n}")
                });
            }
        }
    }

    // With the volume's paths mapped to the generated files, the config validates as `serve`
    // would validate it.
    if p.0.is_empty() {
        let mount = c
            .service(names::REPLICAS[0])?
            .volume_mount(CERTS_VOLUME)
            .map(|m| m.target)
            .unwrap_or_default();
        let map = |path: &Path| dir.path().join(path.strip_prefix(&mount).unwrap_or(path));
        let mut cfg = cfg;
        cfg.tls.cert = map(&cfg.tls.cert);
        cfg.tls.key = map(&cfg.tls.key);
        cfg.tls.client_ca = map(&cfg.tls.client_ca);
        for f in [
            &mut cfg.etcd.ca,
            &mut cfg.etcd.cert,
            &mut cfg.etcd.key,
            &mut cfg.consul.ca,
            &mut cfg.consul.cert,
            &mut cfg.consul.key,
        ] {
            *f = f.as_deref().map(map);
        }
        if let Err(e) = cfg.validate() {
            p.add(format!("{TWINREG_TOML} does not validate:\n{e}"));
        }
    }
    p.done()
}

/// The `certs` service hands each key directory to the user that reads it: twinreg's to the
/// replicas' `user` (and the Dockerfile's USER), Consul's to CONSUL_UID:CONSUL_GID; etcd runs as
/// root. Keys are 0600, so a mismatch keeps a service from starting.
fn check_key_ownership(d: &Deployment) -> Check {
    let c = d.compose()?;
    let mut p = Problems::default();
    let certs = c.service(names::CERTS)?;
    let mount = certs
        .volume_mount(CERTS_VOLUME)
        .map(|m| m.target)
        .unwrap_or_default();
    let script = certs.args("command").join("\n");
    let mut owners = BTreeMap::new();
    for line in script.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        if let ["chown", "-R", owner, path] = t.as_slice() {
            owners.insert(path.to_string(), owner.to_string());
        }
    }
    p.check(
        certs
            .str("user")
            .as_deref()
            .is_some_and(|u| u == "0" || u.starts_with("0:") || u == "root"),
        || format!("{COMPOSE}: certs must run as root to chown the key directories"),
    );
    let twinreg_dir = format!("{mount}/{}", names::TWINREG_DIR);
    let consul_dir = format!("{mount}/{}", names::CONSUL_DIR);
    let dockerfile_user = d
        .text(DOCKERFILE)?
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .map(|u| u.trim().to_owned());
    for (name, s) in replicas(&c)? {
        let user = s.str("user").or(dockerfile_user.clone());
        p.check(
            user.is_some() && user.as_ref() == owners.get(&twinreg_dir),
            || {
                format!(
                    "{name}: runs as {user:?}, but certs gives {twinreg_dir} to {:?}",
                    owners.get(&twinreg_dir)
                )
            },
        );
        p.check(user == dockerfile_user, || {
            format!("{name}: runs as {user:?}, the Dockerfile's USER is {dockerfile_user:?}")
        });
    }
    let env = c.service(names::CONSUL)?.env();
    let consul_user = match (env.get("CONSUL_UID"), env.get("CONSUL_GID")) {
        (Some(u), Some(g)) => Some(format!("{u}:{g}")),
        _ => None,
    };
    p.check(consul_user.is_some() && consul_user.as_ref() == owners.get(&consul_dir), || {
        format!(
            "consul: runs as CONSUL_UID:CONSUL_GID {consul_user:?}, but certs gives {consul_dir} to {:?}",
            owners.get(&consul_dir)
        )
    });
    for member in names::ETCD_MEMBERS {
        let user = c.service(member)?.str("user");
        p.check(
            user.is_none() || user.as_deref() == Some("0") || user.as_deref() == Some("root"),
            || format!("{member}: runs as {user:?}, but its keys belong to root"),
        );
    }
    p.done()
}

/// The etcd members form one cluster with TLS and client-certificate auth on both the client
/// and the peer side.
fn check_etcd_cluster(d: &Deployment) -> Check {
    let c = d.compose()?;
    let mut p = Problems::default();
    let mut peers = BTreeMap::new();
    for member in names::ETCD_MEMBERS {
        let s = c.service(member)?;
        p.check(s.flag("--name").as_deref() == Some(member), || {
            format!("{member}: --name is {:?}", s.flag("--name"))
        });
        let adv = s.flag("--initial-advertise-peer-urls").unwrap_or_default();
        let listen_port = s
            .flag("--listen-peer-urls")
            .and_then(|l| url(&l))
            .map(|(_, _, port)| port);
        match url(&adv) {
            Some((scheme, host, port)) => {
                p.check(scheme == "https" && host == member && Some(port) == listen_port, || {
                    format!(
                        "{member}: --initial-advertise-peer-urls={adv} does not match the service name and --listen-peer-urls port {listen_port:?}"
                    )
                });
            }
            None => p.add(format!("{member}: no --initial-advertise-peer-urls")),
        }
        peers.insert(member.to_string(), adv);
        for flag in ["--client-cert-auth", "--peer-client-cert-auth"] {
            p.check(
                s.has_arg(flag) || s.flag(flag).as_deref() == Some("true"),
                || format!("{member}: no {flag}"),
            );
        }
        for flag in [
            "--trusted-ca-file",
            "--peer-trusted-ca-file",
            "--key-file",
            "--peer-key-file",
        ] {
            p.check(s.flag(flag).is_some(), || format!("{member}: no {flag}"));
        }
        p.check(s.0.get("healthcheck").is_some(), || {
            format!("{member}: no healthcheck")
        });
    }
    let want: Vec<String> = peers.iter().map(|(n, u)| format!("{n}={u}")).collect();
    for member in names::ETCD_MEMBERS {
        let s = c.service(member)?;
        let mut got: Vec<String> = s
            .flag("--initial-cluster")
            .unwrap_or_default()
            .split(',')
            .map(String::from)
            .collect();
        got.sort();
        p.check(got == want, || {
            format!("{member}: --initial-cluster lists {got:?}, the members are {want:?}")
        });
        let token = s.flag("--initial-cluster-token");
        let first = c
            .service(names::ETCD_MEMBERS[0])?
            .flag("--initial-cluster-token");
        p.check(token == first, || {
            format!("{member}: --initial-cluster-token {token:?} differs from the other members' {first:?}")
        });
    }
    p.done()
}

/// Nothing that reads the certificates starts before the `certs` service has finished; the load
/// balancer starts after the replicas.
fn check_start_order(d: &Deployment) -> Check {
    let c = d.compose()?;
    let mut p = Problems::default();
    for (name, s) in c.services() {
        if name == names::CERTS || s.volume_mount(CERTS_VOLUME).is_none() {
            continue;
        }
        let cond = s.depends_on().get(names::CERTS).cloned();
        p.check(cond.as_deref() == Some("service_completed_successfully"), || {
            format!(
                "{name}: mounts the certificates but depends on certs with {cond:?}, not service_completed_successfully"
            )
        });
    }
    let lb = c.service(names::LOAD_BALANCER)?.depends_on();
    for r in names::REPLICAS {
        p.check(lb.contains_key(r), || format!("lb: does not depend on {r}"));
    }
    p.check(
        c.service(names::CERTS)?
            .str("restart")
            .as_deref()
            .unwrap_or("no")
            == "no",
        || "certs: a one-shot service must not restart".to_string(),
    );
    p.done()
}

// ---------------------------------------------------------------------------------------------
// The tests: each check passes on the repository, and fails on a copy with one mistake.

fn assert_ok(name: &str, r: Check) {
    if let Err(e) = r {
        panic!("{name}:\n{e}");
    }
}

/// `check` fails on `d`, with a message containing `needle`.
fn assert_catches(check: fn(&Deployment) -> Check, d: &Deployment, needle: &str) {
    match check(d) {
        Ok(()) => panic!("the mistake went unnoticed (expected a message with {needle:?})"),
        Err(e) => assert!(e.contains(needle), "expected {needle:?} in:\n{e}"),
    }
}

#[test]
fn services_are_the_ones_the_certificates_are_issued_for() {
    let d = Deployment::load();
    assert_ok("services", check_services(&d));
    assert_catches(
        check_services,
        &d.with(COMPOSE, "\n  etcd-3:\n", "\n  etcd-three:\n"),
        "rename both together",
    );
}

#[test]
fn mounted_paths_build_contexts_and_images_exist() {
    let d = Deployment::load();
    assert_ok("paths and images", check_paths_and_images(&d));
    assert_catches(
        check_paths_and_images,
        &d.with(
            COMPOSE,
            "./config/compose/consul.hcl:",
            "./config/consul.hcl:",
        ),
        "bind mount ./config/consul.hcl does not exist",
    );
    assert_catches(
        check_paths_and_images,
        &d.with(COMPOSE, "build: .", "build: ./docker"),
        "build context ./docker does not exist",
    );
    assert_catches(
        check_paths_and_images,
        &d.with(
            COMPOSE,
            "image: haproxy:2.8.14-alpine",
            "image: haproxy:latest",
        ),
        "not pinned",
    );
    assert_catches(
        check_paths_and_images,
        &d.with(
            COMPOSE,
            "      - etcd-2:/var/lib/etcd",
            "      - etcd-two:/var/lib/etcd",
        ),
        "volume etcd-two is not declared",
    );
}

#[test]
fn the_dockerfile_builds_from_what_the_context_holds() {
    let d = Deployment::load();
    assert_ok("Dockerfile", check_dockerfile(&d));
    assert_catches(
        check_dockerfile,
        &d.with(DOCKERFILE, "COPY proto proto", "COPY protos protos"),
        "COPY protos: no such file",
    );
    assert_catches(
        check_dockerfile,
        &d.with(DOCKERIGNORE, "\ntarget\n", "\ntarget\nsrc\n"),
        "leaves it out",
    );
    assert_catches(
        check_dockerfile,
        &d.with(DOCKERFILE, "EXPOSE 8443 9090", "EXPOSE 8443"),
        "lacks 9090",
    );
}

#[test]
fn twinreg_reaches_the_registries_where_compose_runs_them() {
    let d = Deployment::load();
    assert_ok("registry endpoints", check_registry_endpoints(&d));
    assert_catches(
        check_registry_endpoints,
        &d.with(TWINREG_TOML, "https://etcd-2:2379", "https://etcd-2:2380"),
        "etcd endpoint https://etcd-2:2380",
    );
    assert_catches(
        check_registry_endpoints,
        &d.with(
            TWINREG_TOML,
            "\"https://etcd-3:2379\"",
            "\"https://etcd3:2379\"",
        ),
        "has no service etcd3",
    );
    assert_catches(
        check_registry_endpoints,
        &d.with(TWINREG_TOML, "https://consul:8501", "https://consul:8500"),
        "ports.https = 8501",
    );
    assert_catches(
        check_registry_endpoints,
        &d.with(CONSUL_HCL, "https = 8501", "https = 8502"),
        "ports.https = 8502",
    );
    assert_catches(
        check_registry_endpoints,
        &d.with(
            COMPOSE,
            "--advertise-client-urls=https://etcd-1:2379",
            "--advertise-client-urls=https://etcd-1:12379",
        ),
        "etcd-1 advertises",
    );
    assert_catches(
        check_registry_endpoints,
        &d.with(
            COMPOSE,
            "\"/etc/twinreg/twinreg.toml\"]",
            "\"/etc/twinreg/config.toml\"]",
        ),
        "nothing from the repository is mounted at --config /etc/twinreg/config.toml",
    );
    assert_catches(
        check_registry_endpoints,
        &d.with(TWINREG_TOML, "[etcd]\n", "[etcd]\nendpointz = 1\n"),
        "endpointz",
    );
}

#[test]
fn the_load_balancer_sends_traffic_and_health_checks_where_twinreg_listens() {
    let d = Deployment::load();
    assert_ok("load balancer", check_load_balancer(&d));
    assert_catches(
        check_load_balancer,
        &d.with(HAPROXY_CFG, "twinreg-2:8443", "twinreg-2:8444"),
        "server twinreg-2 sends to port 8444",
    );
    assert_catches(
        check_load_balancer,
        &d.with(
            HAPROXY_CFG,
            "twinreg-1:8443 check port 9090",
            "twinreg-1:8443 check port 9091",
        ),
        "health-checks port 9091",
    );
    assert_catches(
        check_load_balancer,
        &d.with(
            HAPROXY_CFG,
            "server twinreg-2 twinreg-2:",
            "server twinreg-3 twinreg-3:",
        ),
        "points at twinreg-3",
    );
    assert_catches(
        check_load_balancer,
        &d.with(
            HAPROXY_CFG,
            "option httpchk GET /readyz",
            "option httpchk GET /healthz",
        ),
        "option httpchk GET /readyz",
    );
    assert_catches(
        check_load_balancer,
        &d.with(HAPROXY_CFG, "    mode tcp\n", "    mode http\n"),
        "is not mode tcp",
    );
    assert_catches(
        check_load_balancer,
        &d.with(
            TWINREG_TOML,
            "admin_listen = \"0.0.0.0:9090\"",
            "admin_listen = \"127.0.0.1:9090\"",
        ),
        "server.admin_listen 127.0.0.1:9090 is not reachable",
    );
    assert_catches(
        check_load_balancer,
        &d.with(
            TWINREG_TOML,
            "admin_listen = \"0.0.0.0:9090\"",
            "admin_listen = \"0.0.0.0:9095\"",
        ),
        "/readyz is on 9095",
    );
    assert_catches(
        check_load_balancer,
        &d.with(
            TWINREG_TOML,
            "listen = \"0.0.0.0:8443\"",
            "listen = \"0.0.0.0:8444\"",
        ),
        "no frontend binds :8444",
    );
    assert_catches(
        check_load_balancer,
        &d.with(COMPOSE, "\"8443:8443\"", "\"8443:8444\""),
        "lb publishes container ports",
    );
    assert_catches(
        check_load_balancer,
        &d.with(COMPOSE, "\"127.0.0.1:9091:9090\"", "\"9091:9090\""),
        "published beyond the host's loopback",
    );
    assert_catches(
        check_load_balancer,
        &d.with(
            COMPOSE,
            "\"127.0.0.1:9092:9090\"",
            "\"127.0.0.1:8443:8443\"",
        ),
        "publishes the public port 8443",
    );
    assert_catches(
        check_load_balancer,
        &d.with(TWINREG_TOML, "drain_delay = \"5s\"", "drain_delay = \"1s\""),
        "server.drain_delay",
    );
    assert_catches(
        check_load_balancer,
        &d.with(COMPOSE, "stop_grace_period: 30s", "stop_grace_period: 10s"),
        "stop_grace_period",
    );
    assert_catches(
        check_load_balancer,
        &d.with(
            COMPOSE,
            "/usr/local/etc/haproxy/haproxy.cfg",
            "/etc/haproxy/haproxy.cfg",
        ),
        "lb must mount",
    );
}

#[test]
fn every_certificate_path_is_one_certs_compose_writes() {
    let d = Deployment::load();
    assert_ok("certificate paths", check_certificate_paths(&d));
    assert_catches(
        check_certificate_paths,
        &d.with(
            TWINREG_TOML,
            "/certs/twinreg/etcd-client.pem",
            "/certs/twinreg/etcd.pem",
        ),
        "/certs/twinreg/etcd.pem is not written by `twinreg certs compose`",
    );
    assert_catches(
        check_certificate_paths,
        &d.with(
            TWINREG_TOML,
            "client_ca = \"/certs/ca.pem\"",
            "client_ca = \"/etc/ssl/ca.pem\"",
        ),
        "/etc/ssl/ca.pem is not under the certificates volume",
    );
    assert_catches(
        check_certificate_paths,
        &d.with(
            COMPOSE,
            "--cert-file=/certs/etcd/etcd-2.pem",
            "--cert-file=/certs/etcd/etcd-1.pem",
        ),
        "is issued for",
    );
    assert_catches(
        check_certificate_paths,
        &d.with(
            COMPOSE,
            "ETCDCTL_KEY: /certs/etcd/etcd-3-key.pem",
            "ETCDCTL_KEY: /certs/etcd/etcd3-key.pem",
        ),
        "/certs/etcd/etcd3-key.pem is not written",
    );
    assert_catches(
        check_certificate_paths,
        &d.with(
            CONSUL_HCL,
            "/certs/consul/server-key.pem",
            "/certs/consul/consul-key.pem",
        ),
        "/certs/consul/consul-key.pem is not written",
    );
    assert_catches(
        check_certificate_paths,
        &d.with(
            CONSUL_HCL,
            "/certs/consul/server.pem",
            "/certs/twinreg/server.pem",
        ),
        "tls.defaults.cert_file is issued for",
    );
    assert_catches(
        check_certificate_paths,
        &d.with(COMPOSE, "--out /certs", "--out /tmp/certs"),
        "--out /certs",
    );
    assert_catches(
        check_certificate_paths,
        &d.with(
            COMPOSE,
            "chown -R 10001:10001 /certs/twinreg",
            "chown -R 10001:10001 /certs/replicas",
        ),
        "/certs/replicas is not written",
    );
    assert_catches(
        check_certificate_paths,
        &d.with(
            COMPOSE,
            "      - certs:/certs:ro\n      - etcd-1:",
            "      - certs:/certs\n      - etcd-1:",
        ),
        "etcd-1: mounts certs writable",
    );
    assert_catches(
        check_certificate_paths,
        &d.with(
            TWINREG_TOML,
            "deregister_critical_after = \"1m\"",
            "deregister_critical_after = \"10s\"",
        ),
        "does not validate",
    );
}

#[test]
fn key_directories_belong_to_their_readers() {
    let d = Deployment::load();
    assert_ok("key ownership", check_key_ownership(&d));
    assert_catches(
        check_key_ownership,
        &d.with(
            COMPOSE,
            "chown -R 10002:10002 /certs/consul",
            "chown -R 100:1000 /certs/consul",
        ),
        "certs gives /certs/consul to",
    );
    assert_catches(
        check_key_ownership,
        &d.with(COMPOSE, "user: \"10001:10001\"", "user: \"1000:1000\""),
        "certs gives /certs/twinreg to",
    );
    assert_catches(
        check_key_ownership,
        &d.with(DOCKERFILE, "USER 10001:10001", "USER 10009:10009"),
        "the Dockerfile's USER",
    );
    assert_catches(
        check_key_ownership,
        &d.with(COMPOSE, "user: \"0:0\"", "user: \"10001:10001\""),
        "certs must run as root",
    );
}

#[test]
fn the_etcd_members_form_one_mutual_tls_cluster() {
    let d = Deployment::load();
    assert_ok("etcd cluster", check_etcd_cluster(&d));
    assert_catches(
        check_etcd_cluster,
        &d.with(
            COMPOSE,
            "--initial-cluster=etcd-1=https://etcd-1:2380,etcd-2=https://etcd-2:2380,etcd-3=https://etcd-3:2380",
            "--initial-cluster=etcd-1=https://etcd-1:2380,etcd-2=https://etcd-2:2380",
        ),
        "etcd-1: --initial-cluster lists",
    );
    assert_catches(
        check_etcd_cluster,
        &d.with(
            COMPOSE,
            "--initial-advertise-peer-urls=https://etcd-2:2380",
            "--initial-advertise-peer-urls=https://etcd-2:2381",
        ),
        "etcd-2: --initial-advertise-peer-urls",
    );
    assert_catches(
        check_etcd_cluster,
        &d.with(COMPOSE, "      - --peer-client-cert-auth\n", "\n"),
        "no --peer-client-cert-auth",
    );
    assert_catches(
        check_etcd_cluster,
        &d.with(COMPOSE, "--name=etcd-3", "--name=etcd3"),
        "etcd-3: --name",
    );
}

#[test]
fn nothing_starts_before_the_certificates_exist() {
    let d = Deployment::load();
    assert_ok("start order", check_start_order(&d));
    assert_catches(
        check_start_order,
        &d.with(
            COMPOSE,
            "certs:\n        condition: service_completed_successfully",
            "certs:\n        condition: service_started",
        ),
        "not service_completed_successfully",
    );
    assert_catches(
        check_start_order,
        &d.with(
            COMPOSE,
            "    restart: \"no\"",
            "    restart: unless-stopped",
        ),
        "must not restart",
    );
}
