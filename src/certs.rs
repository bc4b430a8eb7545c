//! Certificates for development, tests and the docker-compose deployment (rcgen): a CA, server
//! certificates and client certificates. `twinreg certs dev` writes a set for the local host,
//! `twinreg certs compose` the set `docker-compose.yml` needs; the tests make their own at test
//! time. Nothing here is meant for production PKI.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A PEM certificate and its PEM private key.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

/// Names to put in a client certificate.
#[derive(Clone, Debug, Default)]
pub struct ClientNames {
    pub cn: String,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
}

impl ClientNames {
    pub fn cn(cn: &str) -> Self {
        Self {
            cn: cn.into(),
            ..Self::default()
        }
    }
}

/// A certificate authority held in memory.
pub struct CertAuthority {
    params: CertificateParams,
    key: KeyPair,
    pub cert_pem: String,
}

impl CertAuthority {
    pub fn new(name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Self {
            params,
            key,
            cert_pem,
        })
    }

    fn issue(&self, mut params: CertificateParams) -> Result<Issued, rcgen::Error> {
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        })
    }

    /// A server certificate for `names` (host names or IP literals), usable as client too (so
    /// registries can verify it when it is presented as a client certificate).
    pub fn server(&self, names: &[&str]) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(names.first().copied().unwrap_or("localhost"));
        for n in names {
            params.subject_alt_names.push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into()?),
            });
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(params)
    }

    /// A client certificate with the given names.
    pub fn client(&self, names: &ClientNames) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(&names.cn);
        for d in &names.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(d.as_str().try_into()?));
        }
        for u in &names.uris {
            params
                .subject_alt_names
                .push(SanType::URI(u.as_str().try_into()?));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Why certificates could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("issuing {what}: {source}")]
    Issue { what: String, source: rcgen::Error },
    #[error("client name '{0}' cannot be used as a file name")]
    BadClientName(String),
    #[error(
        "{} exists but {} {} missing; run again with --force to issue a new CA and every \
         certificate",
        ca.display(),
        missing.join(", "),
        if missing.len() == 1 { "is" } else { "are" }
    )]
    Incomplete { ca: PathBuf, missing: Vec<String> },
}

fn issuing(what: &str) -> impl FnOnce(rcgen::Error) -> CertsError + '_ {
    move |source| CertsError::Issue {
        what: what.to_owned(),
        source,
    }
}

fn write_checked(path: &Path, content: &str, private: bool) -> Result<(), CertsError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|source| CertsError::Io {
            action: "creating",
            path: dir.to_owned(),
            source,
        })?;
    }
    write_file(path, content, private).map_err(|source| CertsError::Io {
        action: "writing",
        path: path.to_owned(),
        source,
    })
}

/// Writes `ca.pem`, `server.pem`, `server-key.pem` and `NAME.pem`/`NAME-key.pem` per client into
/// `out`. Private keys are written with mode 0600. Returns the files written.
pub fn write_dev(out: &Path, clients: &[String]) -> Result<Vec<PathBuf>, CertsError> {
    let ca = CertAuthority::new("twinreg dev CA").map_err(issuing("the dev CA"))?;
    let server = ca
        .server(&["localhost", "127.0.0.1", "::1"])
        .map_err(issuing("the server certificate"))?;
    let mut written = Vec::new();
    let mut write = |name: &str, content: &str, private: bool| -> Result<(), CertsError> {
        let path = out.join(name);
        write_checked(&path, content, private)?;
        written.push(path);
        Ok(())
    };
    write("ca.pem", &ca.cert_pem, false)?;
    write("server.pem", &server.cert_pem, false)?;
    write("server-key.pem", &server.key_pem, true)?;
    for name in clients {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(CertsError::BadClientName(name.clone()));
        }
        let c = ca.client(&ClientNames::cn(name)).map_err(issuing(name))?;
        write(&format!("{name}.pem"), &c.cert_pem, false)?;
        write(&format!("{name}-key.pem"), &c.key_pem, true)?;
    }
    Ok(written)
}

fn write_file(path: &Path, content: &str, private: bool) -> std::io::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(path)?;
    // `mode` applies only to a file it creates: an older file being overwritten is narrowed too,
    // before the key is written into it.
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    let _ = private;
    file.write_all(content.as_bytes())
}

/// The docker-compose deployment (`docker-compose.yml`): the service names its certificates
/// carry, and the files `twinreg certs compose` writes. `tests/compose.rs` checks that the compose
/// file and the configuration in `config/compose/` agree with these.
///
/// Layout of the output directory (the compose `certs` volume, mounted at `/certs`): one
/// directory per consumer, so that each can be handed to the user that reads its keys:
///
/// - `ca.pem`: the CA every party trusts (its key is not kept: `--force` issues a new set);
/// - `etcd/etcd-N.pem`, `etcd/etcd-N-key.pem`: each member's server and peer certificate;
/// - `consul/server.pem`, `consul/server-key.pem`: Consul's server certificate;
/// - `twinreg/server.pem`, `twinreg/server-key.pem`: the replicas' public certificate, valid for
///   the load balancer's name and each replica's;
/// - `twinreg/etcd-client.pem`, `twinreg/consul-client.pem` (and `-key.pem`): what twinreg
///   presents to etcd and Consul (CN `twinreg`);
/// - `clients/NAME.pem`, `clients/NAME-key.pem`: example client certificates (CN = NAME).
pub mod compose {
    /// The etcd members' service names.
    pub const ETCD_MEMBERS: [&str; 3] = ["etcd-1", "etcd-2", "etcd-3"];
    /// The Consul server's service name.
    pub const CONSUL: &str = "consul";
    /// The name Consul's `verify_server_hostname` wants in a server certificate (datacenter dc1).
    pub const CONSUL_SERVER_NAME: &str = "server.dc1.consul";
    /// The twinreg replicas' service names.
    pub const REPLICAS: [&str; 2] = ["twinreg-1", "twinreg-2"];
    /// The load balancer's service name: what clients inside the compose network dial.
    pub const LOAD_BALANCER: &str = "lb";
    /// The one-shot service that runs `twinreg certs compose`.
    pub const CERTS: &str = "certs";
    /// Example client certificates; `ops` is an admin in `config/compose/twinreg.toml`.
    pub const CLIENTS: [&str; 3] = ["payments", "billing", "ops"];
    /// The CN of twinreg's client certificates to etcd and Consul (an etcd user of that name,
    /// should etcd authentication be turned on).
    pub const TWINREG_CLIENT_CN: &str = "twinreg";
    /// The CA certificate, relative to the output directory. Written last: when it is there,
    /// the whole set is.
    pub const CA: &str = "ca.pem";
    /// Subdirectories, one per consumer.
    pub const ETCD_DIR: &str = "etcd";
    pub const CONSUL_DIR: &str = "consul";
    pub const TWINREG_DIR: &str = "twinreg";
    pub const CLIENTS_DIR: &str = "clients";
}

/// One certificate of the compose set: where it goes and what it is for.
struct Planned {
    /// Path of the certificate relative to the output directory; the key is `<stem>-key.pem`.
    cert: String,
    kind: PlannedKind,
}

enum PlannedKind {
    /// Server (and peer/client) certificate for these names.
    Server(Vec<String>),
    /// Client certificate with this CN.
    Client(String),
}

impl Planned {
    fn key(&self) -> String {
        key_path(&self.cert)
    }
}

fn key_path(cert: &str) -> String {
    format!("{}-key.pem", cert.trim_end_matches(".pem"))
}

fn compose_plan() -> Vec<Planned> {
    use compose::*;
    let local = ["localhost", "127.0.0.1"];
    let server = |cert: String, names: Vec<&str>| Planned {
        cert,
        kind: PlannedKind::Server(names.into_iter().map(String::from).collect()),
    };
    let client = |cert: String, cn: &str| Planned {
        cert,
        kind: PlannedKind::Client(cn.into()),
    };
    let mut plan = Vec::new();
    for m in ETCD_MEMBERS {
        plan.push(server(
            format!("{ETCD_DIR}/{m}.pem"),
            [m].into_iter().chain(local).collect(),
        ));
    }
    plan.push(server(
        format!("{CONSUL_DIR}/server.pem"),
        [CONSUL_SERVER_NAME, CONSUL]
            .into_iter()
            .chain(local)
            .collect(),
    ));
    plan.push(server(
        format!("{TWINREG_DIR}/server.pem"),
        [LOAD_BALANCER]
            .into_iter()
            .chain(REPLICAS)
            .chain(local)
            .collect(),
    ));
    plan.push(client(
        format!("{TWINREG_DIR}/etcd-client.pem"),
        TWINREG_CLIENT_CN,
    ));
    plan.push(client(
        format!("{TWINREG_DIR}/consul-client.pem"),
        TWINREG_CLIENT_CN,
    ));
    for c in CLIENTS {
        plan.push(client(format!("{CLIENTS_DIR}/{c}.pem"), c));
    }
    plan
}

/// Every file `write_compose` writes, relative to its output directory, the CA last.
pub fn compose_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = compose_plan()
        .iter()
        .flat_map(|p| [PathBuf::from(&p.cert), PathBuf::from(p.key())])
        .collect();
    files.push(PathBuf::from(compose::CA));
    files
}

/// What `write_compose` did.
#[derive(Debug)]
pub enum ComposeOutcome {
    /// A new CA and every certificate: the files written.
    Written(Vec<PathBuf>),
    /// The directory already held a complete set (its `ca.pem`); nothing was touched.
    Kept,
}

/// Writes the CA and every certificate the docker-compose deployment needs into `out` (see
/// [`compose`] for the layout). Keeps an existing set (its `ca.pem` is there) unless `force`;
/// a set with a CA but missing files is an error, since the CA's key is not kept to complete it.
/// Private keys are written with mode 0600. Key contents are never printed or returned.
pub fn write_compose(out: &Path, force: bool) -> Result<ComposeOutcome, CertsError> {
    let ca_path = out.join(compose::CA);
    if !force && ca_path.exists() {
        let missing: Vec<String> = compose_files()
            .iter()
            .filter(|f| !out.join(f).is_file())
            .map(|f| f.display().to_string())
            .collect();
        if missing.is_empty() {
            return Ok(ComposeOutcome::Kept);
        }
        return Err(CertsError::Incomplete {
            ca: ca_path,
            missing,
        });
    }
    let ca = CertAuthority::new("twinreg compose CA").map_err(issuing("the compose CA"))?;
    let mut written = Vec::new();
    let mut write = |rel: &str, content: &str, private: bool| -> Result<(), CertsError> {
        let path = out.join(rel);
        write_checked(&path, content, private)?;
        written.push(path);
        Ok(())
    };
    for p in compose_plan() {
        let issued = match &p.kind {
            PlannedKind::Server(names) => {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                ca.server(&names)
            }
            PlannedKind::Client(cn) => ca.client(&ClientNames::cn(cn)),
        }
        .map_err(issuing(&p.cert))?;
        write(&p.cert, &issued.cert_pem, false)?;
        write(&p.key(), &issued.key_pem, true)?;
    }
    // Last: its presence says the set is complete.
    write(compose::CA, &ca.cert_pem, false)?;
    Ok(ComposeOutcome::Written(written))
}
