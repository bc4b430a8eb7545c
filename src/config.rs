//! Configuration: a TOML file, overridden by `TWINREG_*` environment variables
//! (`TWINREG_ETCD__ENDPOINTS='["http://10.0.0.1:2379"]'`, `TWINREG_CONSUL__TOKEN=...`), then
//! validated as a whole so that every bad key is reported at once, by name.
//!
//! This module composes: it reads the raw keys ([`Config`]) and hands each part of twinreg its
//! own validated settings type ([`Settings`] holds them: `server::ServerSettings`,
//! `tls::TlsSettings`, `authz::AuthzSettings`, `registry::etcd::EtcdSettings`, and so on), with
//! the defaults those parts define. Nothing below imports from here, and nothing keeps the raw
//! input once it is validated.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::antientropy::SweepSettings;
use crate::authz::{AuthzSettings, DefaultRule, ReadRule};
use crate::breaker::BreakerSettings;
use crate::limits::Limits;
use crate::registry::consul::{ConsulSettings, MIN_DEREGISTER_CRITICAL_AFTER};
use crate::registry::etcd::EtcdSettings;
use crate::repair::RepairSettings;
use crate::replicate::{HeartbeatSettings, MAX_COALESCE_FRACTION};
use crate::secret::Secret;
use crate::server::ServerSettings;
use crate::tls::TlsSettings;
use crate::watch::WatchSettings;

pub const ENV_PREFIX: &str = "TWINREG_";

/// A duration as the configuration writes it: `"30s"`, `"1m"`, `"500ms"`.
fn text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub tls: TlsConfig,
    #[serde(default)]
    pub authz: AuthzConfig,
    pub etcd: EtcdConfig,
    pub consul: ConsulConfig,
    #[serde(default)]
    pub breaker: BreakerConfig,
    #[serde(default)]
    pub repair: RepairConfig,
    #[serde(default)]
    pub anti_entropy: AntiEntropyConfig,
    #[serde(default)]
    pub heartbeat: HeartbeatConfig,
    #[serde(default)]
    pub watch: WatchConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// What a hostile or broken client may take from the public listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// An HTTP/1 client must send its request headers within this, e.g. `"10s"` (slowloris).
    pub header_read_timeout: String,
    /// A keep-alive HTTP/1 connection with no request for this long is closed, e.g. `"90s"`.
    pub idle_timeout: String,
    /// A request body must arrive within this once the headers did (a slow body gets 408).
    pub body_read_timeout: String,
    /// A request (other than a long poll or a watch stream) is answered within this, else 503.
    pub request_timeout: String,
    /// Connections open at once on the public listener; more are closed at once.
    pub max_connections: usize,
    /// Connections open at once from one IP address; more are closed at once.
    pub max_connections_per_ip: usize,
    /// Concurrent streams (requests) per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Requests per second one identity (client certificate) may make, sustained; more get 429
    /// with Retry-After. 0 turns the limit off.
    pub requests_per_second: u32,
    /// Requests one identity may make at once above the sustained rate.
    pub burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        use crate::limits::*;
        Self {
            header_read_timeout: text(DEFAULT_HEADER_READ_TIMEOUT),
            idle_timeout: text(DEFAULT_IDLE_TIMEOUT),
            body_read_timeout: text(DEFAULT_BODY_READ_TIMEOUT),
            request_timeout: text(DEFAULT_REQUEST_TIMEOUT),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            requests_per_second: DEFAULT_REQUESTS_PER_SECOND,
            burst: DEFAULT_BURST,
        }
    }
}

/// Watches (gRPC `Watch`) and REST long polls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// How often a watch stream gets a PROGRESS frame, and how often the upstream watches prove
    /// the registries still answer, e.g. `"10s"` (1 s to 5 min).
    pub progress_interval: String,
    /// How long a service's upstream watches stay open after its last watcher left, so a
    /// reconnecting watcher resumes instead of starting over, e.g. `"60s"`.
    pub linger: String,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            progress_interval: text(crate::watch::DEFAULT_PROGRESS_INTERVAL),
            linger: text(crate::watch::DEFAULT_LINGER),
        }
    }
}

/// Heartbeat coalescing: a registry whose copy of an instance was refreshed less than
/// `ttl × coalesce_fraction` ago is not called again for a heartbeat (its lease or TTL check still
/// has more than `1 - coalesce_fraction` of its life left).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    pub coalesce: bool,
    pub coalesce_fraction: f64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            // Off by default: docs/api.md promises that a heartbeat restores a copy a registry lost,
            // and a coalesced heartbeat does that only after the window. Turned on for scale.
            coalesce: false,
            coalesce_fraction: 1.0 / 3.0,
        }
    }
}

/// The periodic sweep that makes the registries agree.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AntiEntropyConfig {
    pub enabled: bool,
    /// Time between sweeps, e.g. `"30s"`.
    pub interval: String,
}

impl Default for AntiEntropyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: text(crate::antientropy::DEFAULT_INTERVAL),
        }
    }
}

/// The background repairer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepairConfig {
    /// Cap on repair writes per second to each registry (recovery after an outage is paced).
    pub max_writes_per_second: u32,
}

impl Default for RepairConfig {
    fn default() -> Self {
        Self {
            max_writes_per_second: crate::repair::DEFAULT_MAX_WRITES_PER_SECOND,
        }
    }
}

/// The circuit breaker in front of each registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failed calls (timeouts, unreachable) that open the breaker.
    pub consecutive_failures: u32,
    /// How long it stays open before a background probe tries the registry again, e.g. `"2s"`;
    /// each failed probe doubles it, up to 10 s.
    pub open_for: String,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: crate::breaker::DEFAULT_CONSECUTIVE_FAILURES,
            open_for: text(crate::breaker::DEFAULT_OPEN_FOR),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub admin_listen: String,
    /// How long in-flight requests and pending repairs get after SIGTERM, e.g. `"10s"`.
    pub shutdown_grace: String,
    /// After SIGTERM, how long `/readyz` reports 503 while the listener still accepts, so a load
    /// balancer stops sending new connections first, e.g. `"2s"`.
    pub drain_delay: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: crate::server::DEFAULT_LISTEN.into(),
            admin_listen: crate::server::DEFAULT_ADMIN_LISTEN.into(),
            shutdown_grace: text(crate::server::DEFAULT_SHUTDOWN_GRACE),
            drain_delay: text(crate::server::DEFAULT_DRAIN_DELAY),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    /// Certificate revocation lists (PEM, one or more `X509 CRL` blocks) client certificates are
    /// checked against. When set, a client certificate whose status no CRL in the file gives is
    /// refused, so the file needs a CRL from every CA in `client_ca` (see docs/security.md).
    /// Reloaded with the certificates.
    #[serde(default)]
    pub client_crl: Option<PathBuf>,
    /// How often the certificate and key files (these and the registries') are checked for
    /// changes, e.g. `"10s"`; `"0s"` turns the check off (SIGHUP still reloads).
    #[serde(default = "default_tls_reload_interval")]
    pub reload_interval: String,
}

fn default_tls_reload_interval() -> String {
    text(crate::tls::DEFAULT_RELOAD_INTERVAL)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzConfig {
    pub default_rule: DefaultRule,
    pub reads: ReadRule,
    pub admins: Vec<String>,
    pub grants: Vec<Grant>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub identity: String,
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulConfig {
    pub address: String,
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    #[serde(default = "default_deregister_after")]
    pub deregister_critical_after: String,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn default_prefix() -> String {
    crate::registry::etcd::DEFAULT_PREFIX.into()
}
fn default_timeout_ms() -> u64 {
    crate::registry::DEFAULT_TIMEOUT.as_millis() as u64
}
fn default_pool_size() -> usize {
    crate::registry::DEFAULT_POOL_SIZE
}
fn default_deregister_after() -> String {
    text(crate::registry::consul::DEFAULT_DEREGISTER_CRITICAL_AFTER)
}

/// One problem with the configuration, naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// All problems found, one per line.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The configuration after validation: each part's own settings, every value parsed and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub tls: TlsSettings,
    pub authz: AuthzSettings,
    pub etcd: EtcdSettings,
    pub consul: ConsulSettings,
    pub breaker: BreakerSettings,
    pub repair: RepairSettings,
    pub anti_entropy: SweepSettings,
    pub heartbeat: HeartbeatSettings,
    pub watch: WatchSettings,
    pub limits: Limits,
}

impl Config {
    /// Reads `path` and applies `TWINREG_*` overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Self::from_figment(
            Figment::new()
                .merge(Toml::file_exact(path))
                // TWINREG_LOG is the log filter (see main.rs), not a configuration key.
                .merge(Env::prefixed(ENV_PREFIX).ignore(&["LOG"]).split("__")),
        )
    }

    /// Parses a TOML document (no environment), for tests and tools.
    pub fn from_toml(toml: &str) -> Result<Config, ConfigErrors> {
        Self::from_figment(Figment::new().merge(Toml::string(toml)))
    }

    fn from_figment(f: Figment) -> Result<Config, ConfigErrors> {
        f.extract().map_err(|e| {
            ConfigErrors(
                e.into_iter()
                    .map(|e| ConfigProblem {
                        key: if e.path.is_empty() {
                            "(file)".into()
                        } else {
                            e.path.join(".")
                        },
                        message: e.kind.to_string(),
                    })
                    .collect(),
            )
        })
    }

    /// Checks every key and reports all problems, not just the first.
    pub fn validate(self) -> Result<Settings, ConfigErrors> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, message: String| {
            problems.push(ConfigProblem {
                key: key.into(),
                message,
            })
        };
        let listen = parse_addr("server.listen", &self.server.listen, &mut bad);
        let admin_listen = parse_addr("server.admin_listen", &self.server.admin_listen, &mut bad);
        let any = Duration::ZERO..=Duration::MAX;
        let drain_delay = parse_duration(
            "server.drain_delay",
            &self.server.drain_delay,
            any.clone(),
            &mut bad,
        );
        let shutdown_grace = parse_duration(
            "server.shutdown_grace",
            &self.server.shutdown_grace,
            any.clone(),
            &mut bad,
        );

        for (key, path) in [
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("tls.client_ca", &self.tls.client_ca),
        ] {
            check_file(key, path, &mut bad);
        }
        if let Some(crl) = &self.tls.client_crl {
            // Parsed, not only looked for: a file that is not a CRL or one already past its
            // nextUpdate would stop `serve` at start-up, so `check-config` says so first.
            if let Err(e) = crate::tls::load_crls("tls.client_crl", crl) {
                bad("tls.client_crl", format!("{}: {}", e.path, e.reason));
            }
        }

        if self.etcd.endpoints.is_empty() {
            bad("etcd.endpoints", "must list at least one endpoint".into());
        }
        for (i, ep) in self.etcd.endpoints.iter().enumerate() {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                bad(
                    &format!("etcd.endpoints[{i}]"),
                    format!("'{ep}' must start with http:// or https://"),
                );
            }
        }
        let p = &self.etcd.prefix;
        if !p.starts_with('/') || p.ends_with('/') || p.len() < 2 {
            bad(
                "etcd.prefix",
                format!("'{p}' must start with '/' and not end with '/' (e.g. \"/services\")"),
            );
        }
        if self.etcd.ca.is_none()
            && self
                .etcd
                .endpoints
                .iter()
                .any(|e| e.starts_with("https://"))
        {
            bad(
                "etcd.ca",
                "https:// endpoints need the CA that signed etcd's server certificate".into(),
            );
        }
        check_timeout("etcd.timeout_ms", self.etcd.timeout_ms, &mut bad);
        check_pool("etcd.pool_size", self.etcd.pool_size, &mut bad);
        check_client_tls(
            "etcd",
            &self.etcd.ca,
            &self.etcd.cert,
            &self.etcd.key,
            &mut bad,
        );
        if self.etcd.username.is_some() != self.etcd.password.is_some() {
            bad(
                "etcd.password",
                "etcd.username and etcd.password must be set together".into(),
            );
        }

        let a = &self.consul.address;
        if !(a.starts_with("http://") || a.starts_with("https://")) || a.ends_with('/') {
            bad(
                "consul.address",
                format!("'{a}' must be http:// or https:// host:port with no trailing '/'"),
            );
        }
        if self.consul.ca.is_none() && a.starts_with("https://") {
            bad(
                "consul.ca",
                "an https:// address needs the CA that signed Consul's server certificate".into(),
            );
        }
        check_timeout("consul.timeout_ms", self.consul.timeout_ms, &mut bad);
        check_pool("consul.pool_size", self.consul.pool_size, &mut bad);
        check_client_tls(
            "consul",
            &self.consul.ca,
            &self.consul.cert,
            &self.consul.key,
            &mut bad,
        );
        let consul_token = match (&self.consul.token, &self.consul.token_file) {
            (Some(_), Some(_)) => {
                bad(
                    "consul.token_file",
                    "set consul.token or consul.token_file, not both".into(),
                );
                None
            }
            (Some(t), None) => Some(t.clone()),
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(t) if !t.trim().is_empty() => Some(Secret::new(t.trim())),
                Ok(_) => {
                    bad("consul.token_file", format!("{} is empty", path.display()));
                    None
                }
                Err(e) => {
                    bad(
                        "consul.token_file",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            },
            (None, None) => None,
        };
        // Consul's minimum is 1m.
        let deregister_critical_after = parse_duration(
            "consul.deregister_critical_after",
            &self.consul.deregister_critical_after,
            MIN_DEREGISTER_CRITICAL_AFTER..=Duration::MAX,
            &mut bad,
        );

        let f = self.heartbeat.coalesce_fraction;
        if !(f > 0.0 && f <= MAX_COALESCE_FRACTION) {
            bad(
                "heartbeat.coalesce_fraction",
                format!(
                    "{f} must be above 0 and at most {MAX_COALESCE_FRACTION} (a lease must keep \
                     at least half its TTL); set heartbeat.coalesce = false to turn coalescing off"
                ),
            );
        }

        let l = &self.limits;
        let positive = Duration::from_millis(100)..=Duration::MAX;
        let header_read_timeout = parse_duration(
            "limits.header_read_timeout",
            &l.header_read_timeout,
            positive.clone(),
            &mut bad,
        );
        let idle_timeout = parse_duration(
            "limits.idle_timeout",
            &l.idle_timeout,
            Duration::from_secs(1)..=Duration::MAX,
            &mut bad,
        );
        let body_read_timeout = parse_duration(
            "limits.body_read_timeout",
            &l.body_read_timeout,
            positive.clone(),
            &mut bad,
        );
        let request_timeout = parse_duration(
            "limits.request_timeout",
            &l.request_timeout,
            positive,
            &mut bad,
        );
        for (key, v) in [
            ("limits.max_connections", l.max_connections),
            ("limits.max_connections_per_ip", l.max_connections_per_ip),
            (
                "limits.max_concurrent_streams",
                l.max_concurrent_streams as usize,
            ),
        ] {
            if v == 0 {
                bad(key, "must be at least 1".into());
            }
        }
        if l.requests_per_second > 0 && l.burst == 0 {
            bad(
                "limits.burst",
                "must be at least 1 when requests_per_second is set".into(),
            );
        }
        let tls_reload_interval = parse_duration(
            "tls.reload_interval",
            &self.tls.reload_interval,
            any.clone(),
            &mut bad,
        );
        let progress_interval = parse_duration(
            "watch.progress_interval",
            &self.watch.progress_interval,
            Duration::from_secs(1)..=Duration::from_secs(300),
            &mut bad,
        );
        let linger = parse_duration("watch.linger", &self.watch.linger, any.clone(), &mut bad);
        let anti_entropy_interval = parse_duration(
            "anti_entropy.interval",
            &self.anti_entropy.interval,
            Duration::from_millis(100)..=Duration::MAX,
            &mut bad,
        );
        if !(1..=100_000).contains(&self.repair.max_writes_per_second) {
            bad(
                "repair.max_writes_per_second",
                format!(
                    "{} must be from 1 to 100000",
                    self.repair.max_writes_per_second
                ),
            );
        }
        if !(1..=1000).contains(&self.breaker.consecutive_failures) {
            bad(
                "breaker.consecutive_failures",
                format!(
                    "{} must be from 1 to 1000",
                    self.breaker.consecutive_failures
                ),
            );
        }
        let breaker_open_for = parse_duration(
            "breaker.open_for",
            &self.breaker.open_for,
            Duration::from_millis(100)..=crate::breaker::MAX_OPEN,
            &mut bad,
        );

        let mut grants = Vec::new();
        for (i, g) in self.authz.grants.iter().enumerate() {
            if g.identity.is_empty() {
                bad(
                    &format!("authz.grants[{i}].identity"),
                    "must not be empty".into(),
                );
            }
            let mut services = Vec::new();
            for s in &g.services {
                match crate::model::ServiceName::parse(s) {
                    Ok(name) => services.push(name),
                    Err(e) => bad(
                        &format!("authz.grants[{i}].services"),
                        format!("'{s}' is not a valid service name: {}", e.message),
                    ),
                }
            }
            grants.push(crate::authz::Grant {
                identity: g.identity.clone(),
                services,
            });
        }

        if !problems.is_empty() {
            return Err(ConfigErrors(problems));
        }
        let Config {
            tls,
            authz,
            etcd,
            consul,
            breaker,
            repair,
            anti_entropy,
            heartbeat,
            limits,
            ..
        } = self;
        Ok(Settings {
            server: ServerSettings {
                listen: listen.expect("checked"),
                admin_listen: admin_listen.expect("checked"),
                shutdown_grace: shutdown_grace.expect("checked"),
                drain_delay: drain_delay.expect("checked"),
            },
            tls: TlsSettings {
                cert: tls.cert,
                key: tls.key,
                client_ca: tls.client_ca,
                client_crl: tls.client_crl,
                reload_interval: tls_reload_interval.expect("checked"),
            },
            authz: AuthzSettings {
                default_rule: authz.default_rule,
                reads: authz.reads,
                admins: authz.admins,
                grants,
            },
            etcd: EtcdSettings {
                endpoints: etcd.endpoints,
                prefix: etcd.prefix,
                timeout: Duration::from_millis(etcd.timeout_ms),
                pool_size: etcd.pool_size,
                ca: etcd.ca,
                cert: etcd.cert,
                key: etcd.key,
                username: etcd.username,
                password: etcd.password,
            },
            consul: ConsulSettings {
                address: consul.address,
                token: consul_token,
                timeout: Duration::from_millis(consul.timeout_ms),
                pool_size: consul.pool_size,
                deregister_critical_after: deregister_critical_after.expect("checked"),
                ca: consul.ca,
                cert: consul.cert,
                key: consul.key,
            },
            breaker: BreakerSettings {
                consecutive_failures: breaker.consecutive_failures,
                open_for: breaker_open_for.expect("checked"),
            },
            repair: RepairSettings {
                max_writes_per_second: repair.max_writes_per_second,
            },
            anti_entropy: SweepSettings {
                enabled: anti_entropy.enabled,
                interval: anti_entropy_interval.expect("checked"),
            },
            heartbeat: HeartbeatSettings {
                coalesce: heartbeat.coalesce.then_some(heartbeat.coalesce_fraction),
            },
            watch: WatchSettings {
                progress_interval: progress_interval.expect("checked"),
                linger: linger.expect("checked"),
            },
            limits: Limits {
                header_read_timeout: header_read_timeout.expect("checked"),
                idle_timeout: idle_timeout.expect("checked"),
                body_read_timeout: body_read_timeout.expect("checked"),
                request_timeout: request_timeout.expect("checked"),
                max_connections: limits.max_connections,
                max_connections_per_ip: limits.max_connections_per_ip,
                max_concurrent_streams: limits.max_concurrent_streams,
                requests_per_second: limits.requests_per_second,
                burst: limits.burst,
            },
        })
    }
}

/// A duration such as `"30s"` or `"1m"`, within `range`; reports the key otherwise.
fn parse_duration(
    key: &str,
    v: &str,
    range: std::ops::RangeInclusive<Duration>,
    bad: &mut impl FnMut(&str, String),
) -> Option<Duration> {
    let fmt = |d: &Duration| humantime::format_duration(*d).to_string();
    match humantime::parse_duration(v) {
        Ok(d) if range.contains(&d) => Some(d),
        Ok(_) if *range.end() == Duration::MAX => {
            bad(
                key,
                format!("'{v}' must be at least {}", fmt(range.start())),
            );
            None
        }
        Ok(_) => {
            let (lo, hi) = (fmt(range.start()), fmt(range.end()));
            bad(key, format!("'{v}' must be from {lo} to {hi}"));
            None
        }
        Err(e) => {
            bad(
                key,
                format!("'{v}': {e} (use a number with a unit, e.g. \"30s\" or \"2m\")"),
            );
            None
        }
    }
}

fn parse_addr(key: &str, v: &str, bad: &mut impl FnMut(&str, String)) -> Option<SocketAddr> {
    v.parse()
        .map_err(|_| bad(key, format!("'{v}' is not an IP:port address")))
        .ok()
}

fn check_file(key: &str, path: &Path, bad: &mut impl FnMut(&str, String)) {
    if let Err(e) = std::fs::metadata(path) {
        bad(key, format!("cannot read {}: {e}", path.display()));
    }
}

fn check_timeout(key: &str, v: u64, bad: &mut impl FnMut(&str, String)) {
    if !(10..=60_000).contains(&v) {
        bad(key, format!("{v} must be from 10 to 60000 (milliseconds)"));
    }
}

fn check_pool(key: &str, v: usize, bad: &mut impl FnMut(&str, String)) {
    if !(1..=64).contains(&v) {
        bad(key, format!("{v} must be from 1 to 64"));
    }
}

fn check_client_tls(
    section: &str,
    ca: &Option<PathBuf>,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    bad: &mut impl FnMut(&str, String),
) {
    if cert.is_some() != key.is_some() {
        bad(
            &format!("{section}.key"),
            format!("{section}.cert and {section}.key must be set together"),
        );
    }
    for (name, path) in [("ca", ca), ("cert", cert), ("key", key)] {
        if let Some(p) = path {
            check_file(&format!("{section}.{name}"), p, bad);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        for f in ["s.pem", "s-key.pem", "ca.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let d = dir.path().display().to_string();
        let tls = format!(
            "[tls]\ncert = \"{d}/s.pem\"\nkey = \"{d}/s-key.pem\"\nclient_ca = \"{d}/ca.pem\"\n"
        );
        (dir, tls)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let (_d, tls) = files();
        let toml = format!(
            "{tls}[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n[consul]\naddress = \"http://127.0.0.1:8500\"\n"
        );
        let s = Config::from_toml(&toml).unwrap().validate().unwrap();
        assert_eq!(s.server.listen.to_string(), crate::server::DEFAULT_LISTEN);
        assert_eq!(s.etcd.prefix, "/services");
        assert_eq!(s.etcd.timeout, Duration::from_millis(1500));
        assert_eq!(s.consul.deregister_critical_after, Duration::from_secs(60));
        assert_eq!(s.authz.default_rule, DefaultRule::Name);
        assert_eq!(s.tls.reload_interval, Duration::from_secs(10));
        assert_eq!(s.breaker.open_for, Duration::from_secs(2));
        assert_eq!(s.watch.linger, Duration::from_secs(60));
    }

    #[test]
    fn every_bad_key_is_reported() {
        let (_d, tls) = files();
        let toml = format!(
            "[server]\nlisten = \"nope\"\n{tls}[etcd]\nendpoints = [\"10.0.0.1:2379\"]\nprefix = \"services/\"\ntimeout_ms = 0\n[consul]\naddress = \"127.0.0.1:8500\"\ntoken = \"s3cret-token\"\ntoken_file = \"/x\"\nderegister_critical_after = \"10s\"\n"
        );
        let errs = Config::from_toml(&toml).unwrap().validate().unwrap_err();
        let keys: Vec<&str> = errs.0.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "server.listen",
            "etcd.endpoints[0]",
            "etcd.prefix",
            "etcd.timeout_ms",
            "consul.address",
            "consul.token_file",
            "consul.deregister_critical_after",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        assert!(!errs.to_string().contains("s3cret-token"));
    }

    #[test]
    fn a_missing_or_unusable_client_crl_is_named() {
        let (d, tls) = files();
        let check = |crl: &str| {
            let toml = format!(
                "{tls}client_crl = \"{crl}\"\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n[consul]\naddress = \"http://127.0.0.1:8500\"\n"
            );
            let errs = Config::from_toml(&toml).unwrap().validate().unwrap_err();
            assert_eq!(errs.0.len(), 1, "{errs}");
            assert_eq!(errs.0[0].key, "tls.client_crl", "{errs}");
            errs.0[0].message.clone()
        };
        let missing = d.path().join("nope.pem").display().to_string();
        let m = check(&missing);
        assert!(m.contains(&missing) && m.contains("No such file"), "{m}");
        // files() wrote "x": not a CRL.
        let m = check(&d.path().join("ca.pem").display().to_string());
        assert!(m.contains("no PEM X509 CRL block"), "{m}");
    }

    #[test]
    fn unknown_key_is_named() {
        let errs = Config::from_toml("[etcd]\nendpointz = []\n").unwrap_err();
        assert!(errs.to_string().contains("endpointz"), "{errs}");
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_refused_without_being_shown() {
        let (_d, tls) = files();
        for value in [
            "918273645",
            "-918273645",
            "9182.73645",
            "true",
            "[918273645]",
        ] {
            let toml = format!(
                "{tls}[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\nusername = \"u\"\n\
                 password = {value}\n[consul]\naddress = \"http://127.0.0.1:8500\"\n"
            );
            let errs = Config::from_toml(&toml).unwrap_err().to_string();
            assert!(errs.contains("etcd.password"), "{errs}");
            assert!(errs.contains("must be a string"), "{errs}");
            for leak in ["918273645", "9182.73645"] {
                assert!(!errs.contains(leak), "{value}: {errs}");
            }
        }
        let toml = format!(
            "{tls}[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n[consul]\n\
             address = \"http://127.0.0.1:8500\"\ntoken = \"s3cret\"\n"
        );
        let s = Config::from_toml(&toml).unwrap().validate().unwrap();
        assert_eq!(s.consul.token.unwrap().expose(), "s3cret");
    }
}
