//! Certificates for development and tests (rcgen): a CA, a server certificate for the local
//! host, and client certificates. `twinreg certs dev` writes them; the tests make their own at
//! test time. Nothing here is meant for production PKI.

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

/// Writes `ca.pem`, `server.pem`, `server-key.pem` and `NAME.pem`/`NAME-key.pem` per client into
/// `out`. Private keys are written with mode 0600. Returns the files written.
pub fn write_dev(out: &Path, clients: &[String]) -> Result<Vec<PathBuf>, String> {
    fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let ca = CertAuthority::new("twinreg dev CA").map_err(|e| e.to_string())?;
    let server = ca
        .server(&["localhost", "127.0.0.1", "::1"])
        .map_err(|e| e.to_string())?;
    let mut written = Vec::new();
    let mut write = |name: &str, content: &str, private: bool| -> Result<(), String> {
        let path = out.join(name);
        write_file(&path, content, private)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        written.push(path);
        Ok(())
    };
    write("ca.pem", &ca.cert_pem, false)?;
    write("server.pem", &server.cert_pem, false)?;
    write("server-key.pem", &server.key_pem, true)?;
    for name in clients {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(format!(
                "client name '{name}' cannot be used as a file name"
            ));
        }
        let c = ca
            .client(&ClientNames::cn(name))
            .map_err(|e| e.to_string())?;
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
    let _ = private;
    opts.open(path)?.write_all(content.as_bytes())
}
