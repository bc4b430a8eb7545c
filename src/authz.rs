//! Who is calling (from the client certificate) and what they may do.
//!
//! Identity: the first URI SAN, else the first DNS SAN, else the subject CN. Writes on service `S`
//! are allowed to admins, to identities granted `S`, and (default rule `name`) when `S` equals the
//! CN, the first DNS SAN, or the last path segment of the first URI SAN (docs/api.md, "Identity and authorization"). Later
//! SANs name nothing, so putting another service's name after the certificate's own cannot be used
//! to act as that service. Names are compared exactly: no case folding, no percent-decoding, no
//! prefix matching.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::model::ServiceName;
use serde::Deserialize;

/// The authenticated caller of one connection, computed once when the handshake completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The identity used for admins, grants and logs.
    pub identity: String,
    /// Service names the default rule lets this certificate act on: its CN, its first DNS SAN,
    /// the last path segment of its first URI SAN.
    pub names: Vec<String>,
}

impl Peer {
    /// Reads identity and names from a DER certificate. `None` when it cannot be parsed or names
    /// nobody (the handshake already verified it, so this is a certificate with no usable name).
    pub fn from_der(der: &[u8]) -> Option<Peer> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut uris = Vec::new();
        let mut dns = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => uris.push(u.to_string()),
                    GeneralName::DNSName(d) => dns.push(d.to_string()),
                    _ => {}
                }
            }
        }
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let identity = uris
            .first()
            .or(dns.first())
            .or(cn.as_ref())
            .cloned()
            .filter(|s| !s.is_empty())?;
        let names = cn
            .into_iter()
            .chain(dns.first().cloned())
            .chain(uris.first().and_then(|u| last_path_segment(u)))
            .collect();
        Some(Peer { identity, names })
    }
}

/// The last segment of a URI's path (`spiffe://td/ns/prod/sa/payments` → `payments`).
fn last_path_segment(uri: &str) -> Option<String> {
    let rest = uri.split_once("://").map(|(_, r)| r)?;
    let path = rest.split(['?', '#']).next()?;
    let (_authority, path) = path.split_once('/')?;
    let seg = path.rsplit('/').next()?;
    (!seg.is_empty()).then(|| seg.to_owned())
}

/// Whether a certificate may write the service it names (`authz.default_rule`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DefaultRule {
    /// The CN, the first DNS SAN or the first URI SAN's last segment names a writable service.
    #[default]
    Name,
    /// Only admins and grants.
    None,
}

/// Who may read (`authz.reads`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReadRule {
    /// Every authenticated identity.
    #[default]
    Any,
    /// Whoever may write the service.
    Owner,
}

/// Extra services one identity may write (`[[authz.grants]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub identity: String,
    pub services: Vec<ServiceName>,
}

/// `[authz]`, validated.
#[derive(Debug, Clone, Default)]
pub struct AuthzSettings {
    pub default_rule: DefaultRule,
    pub reads: ReadRule,
    pub admins: Vec<String>,
    pub grants: Vec<Grant>,
}

/// The authorization rules of the configuration, indexed for lookups.
#[derive(Debug, Clone)]
pub struct Authorizer {
    default_rule: DefaultRule,
    reads: ReadRule,
    admins: HashSet<String>,
    grants: HashMap<String, HashSet<String>>,
}

impl Authorizer {
    pub fn new(cfg: &AuthzSettings) -> Arc<Self> {
        let mut grants: HashMap<String, HashSet<String>> = HashMap::new();
        for g in &cfg.grants {
            grants
                .entry(g.identity.clone())
                .or_default()
                .extend(g.services.iter().map(|s| s.as_str().to_owned()));
        }
        Arc::new(Self {
            default_rule: cfg.default_rule,
            reads: cfg.reads,
            admins: cfg.admins.iter().cloned().collect(),
            grants,
        })
    }

    pub fn can_write(&self, peer: &Peer, service: &ServiceName) -> bool {
        self.can_write_name(peer, service.as_str())
    }

    /// [`Self::can_write`] for a name as a string (as sent: only a name granted exactly, or
    /// one of the caller's own names, passes).
    pub fn can_write_name(&self, peer: &Peer, s: &str) -> bool {
        self.admins.contains(&peer.identity)
            || self
                .grants
                .get(&peer.identity)
                .is_some_and(|set| set.contains(s))
            || (self.default_rule == DefaultRule::Name && peer.names.iter().any(|n| n == s))
    }

    pub fn can_read(&self, peer: &Peer, service: &ServiceName) -> bool {
        self.reads == ReadRule::Any || self.can_write(peer, service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, dns: &[&str], uris: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        for d in dns {
            params
                .subject_alt_names
                .push(rcgen::SanType::DnsName((*d).try_into().unwrap()));
        }
        for u in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*u).try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn svc(s: &str) -> ServiceName {
        ServiceName::parse(s).unwrap()
    }

    #[test]
    fn identity_prefers_uri_then_dns_then_cn() {
        let p = Peer::from_der(&cert(
            "cn-name",
            &["dns-name"],
            &["spiffe://td/sa/payments"],
        ))
        .unwrap();
        assert_eq!(p.identity, "spiffe://td/sa/payments");
        let p = Peer::from_der(&cert("cn-name", &["dns-name", "other"], &[])).unwrap();
        assert_eq!(p.identity, "dns-name");
        let p = Peer::from_der(&cert("cn-name", &[], &[])).unwrap();
        assert_eq!(p.identity, "cn-name");
    }

    #[test]
    fn default_rule_matches_names_exactly() {
        let a = Authorizer::new(&AuthzSettings::default());
        let p = Peer::from_der(&cert("payments", &[], &[])).unwrap();
        assert!(a.can_write(&p, &svc("payments")));
        assert!(!a.can_write(&p, &svc("pay")));
        assert!(!a.can_write(&p, &svc("payments-v2")));
        let p = Peer::from_der(&cert("x", &[], &["spiffe://td/ns/prod/sa/billing"])).unwrap();
        assert!(a.can_write(&p, &svc("billing")));
        assert!(!a.can_write(&p, &svc("prod")));
        let p = Peer::from_der(&cert("Payments", &[], &[])).unwrap();
        assert!(!a.can_write(&p, &svc("payments")));
        assert!(a.can_read(&p, &svc("payments")));
    }

    #[test]
    fn later_sans_name_nothing() {
        let a = Authorizer::new(&AuthzSettings::default());
        let uris = Peer::from_der(&cert(
            "x",
            &[],
            &["spiffe://x/billing", "spiffe://x/payments"],
        ))
        .unwrap();
        assert!(a.can_write(&uris, &svc("billing")));
        assert!(!a.can_write(&uris, &svc("payments")));
        let dns = Peer::from_der(&cert("x", &["billing", "payments"], &[])).unwrap();
        assert!(a.can_write(&dns, &svc("billing")));
        assert!(!a.can_write(&dns, &svc("payments")));
        let no_segment =
            Peer::from_der(&cert("x", &[], &["spiffe://x/", "spiffe://x/payments"])).unwrap();
        assert!(!a.can_write(&no_segment, &svc("payments")));
        // docs/api.md's rule: the CN counts beside the SANs.
        let cn = Peer::from_der(&cert("payments", &["payments.svc"], &[])).unwrap();
        assert!(a.can_write(&cn, &svc("payments")));
    }

    #[test]
    fn admins_grants_and_owner_reads() {
        let cfg = AuthzSettings {
            default_rule: DefaultRule::None,
            reads: ReadRule::Owner,
            admins: vec!["ops".into()],
            grants: vec![Grant {
                identity: "deployer".into(),
                services: vec![svc("payments")],
            }],
        };
        let a = Authorizer::new(&cfg);
        let ops = Peer::from_der(&cert("ops", &[], &[])).unwrap();
        let dep = Peer::from_der(&cert("deployer", &[], &[])).unwrap();
        let own = Peer::from_der(&cert("payments", &[], &[])).unwrap();
        assert!(a.can_write(&ops, &svc("anything")));
        assert!(a.can_write(&dep, &svc("payments")));
        assert!(!a.can_write(&dep, &svc("billing")));
        assert!(!a.can_read(&dep, &svc("billing")));
        assert!(!a.can_write(&own, &svc("payments")), "default rule is off");
    }

    #[test]
    fn uri_segments() {
        assert_eq!(last_path_segment("spiffe://td/a/b").as_deref(), Some("b"));
        assert_eq!(last_path_segment("spiffe://td/a/b/"), None);
        assert_eq!(last_path_segment("spiffe://td"), None);
    }
}
