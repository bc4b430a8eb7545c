//! The cluster's members as the status page shows them ([`Registry::cluster_members`]): etcd's
//! member list and each member's own status (its version, database size, raft term, and the
//! leader it knows of), both asked of every configured endpoint at once, through the pooled
//! connection to it (no new connection, handshake or authentication). Every read gives up at the
//! page's deadline, so a dead or frozen member costs the page that deadline and no more, and is
//! listed as unreachable; the member list is taken from the first endpoint that answered it.
//!
//! A status is matched to its member by the member ID in its answer's header, so an endpoint
//! named differently from the URLs the member advertises (a DNS name, a load balancer) still
//! counts; an endpoint that did not answer is matched by its URL. A member no configured endpoint
//! reaches is listed without a status (twinreg does not dial members it was not given).
//!
//! [`Registry::cluster_members`]: crate::registry::Registry::cluster_members

use std::future::Future;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::{Instant, timeout_at};

use super::errors::to_err;
use super::{Etcd, EtcdConn, KIND};
use crate::registry::{ClusterMember, RegistryError};

/// One member as the member list gives it.
#[derive(Debug, Clone)]
pub(super) struct Listing {
    pub id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
    pub learner: bool,
}

impl From<&etcd_client::Member> for Listing {
    fn from(m: &etcd_client::Member) -> Self {
        Self {
            id: m.id(),
            name: m.name().to_owned(),
            client_urls: m.client_urls().to_vec(),
            peer_urls: m.peer_urls().to_vec(),
            learner: m.is_learner(),
        }
    }
}

/// What one member's status said.
#[derive(Debug, Clone)]
pub(super) struct Read {
    /// The member that answered (from the header); `None` when the answer had no header.
    pub id: Option<u64>,
    /// The leader it knows of; 0 when none.
    pub leader: u64,
    pub term: u64,
    pub version: String,
    pub db_size: i64,
    pub errors: Vec<String>,
}

impl From<&etcd_client::StatusResponse> for Read {
    fn from(s: &etcd_client::StatusResponse) -> Self {
        Self {
            id: s.header().map(|h| h.member_id()),
            leader: s.leader(),
            term: s.raft_term(),
            version: s.version().to_owned(),
            db_size: s.db_size(),
            errors: s.errors().to_vec(),
        }
    }
}

impl Etcd {
    /// Asks every configured endpoint at once for the member list and for its member's status,
    /// each read given up after `within`; the member list is the first endpoint's that answered
    /// (a member list is served by any member, without a quorum).
    pub(super) async fn members_within(
        &self,
        within: Duration,
    ) -> Result<Vec<ClusterMember>, RegistryError> {
        let deadline = Instant::now() + within;
        let ask = |member: usize| async move {
            let conn = match by(deadline, within, self.pinned(member)).await {
                Ok(conn) => conn,
                Err(e) => return (Err(e.clone()), Err(e)),
            };
            let (mut a, mut b) = (conn.client.clone(), conn.client);
            let list = by(deadline, within, async move {
                let resp = a.member_list().await.map_err(to_err)?;
                Ok(resp.members().iter().map(Listing::from).collect::<Vec<_>>())
            });
            let status = by(deadline, within, async move {
                let resp = b.status().await.map_err(to_err)?;
                Ok(Read::from(&resp))
            });
            tokio::join!(list, status)
        };
        let asked = join_all((0..self.authorities.len()).map(ask)).await;
        let mut lists = Vec::new();
        let mut statuses = Vec::new();
        for (authority, (list, status)) in self.authorities.iter().zip(asked) {
            lists.push((authority, list));
            statuses.push((authority.clone(), status));
        }
        let list = match lists.iter().find_map(|(_, l)| l.as_ref().ok()) {
            Some(list) => list,
            None => {
                let why: Vec<String> = lists
                    .iter()
                    .filter_map(|(a, l)| Some(format!("{a}: {}", l.as_ref().err()?)))
                    .collect();
                let mut e = lists
                    .iter()
                    .find_map(|(_, l)| l.as_ref().err().cloned())
                    .unwrap_or_else(|| RegistryError::unavailable(KIND, "no etcd endpoint"));
                e.message = format!("etcd member list: {}", why.join("; "));
                return Err(e);
            }
        };
        Ok(assemble(list, &statuses))
    }

    /// A pooled connection to the `member`-th configured endpoint. Each is pinned to its endpoint
    /// for its life (it reconnects to that endpoint), so it asks that endpoint's member.
    async fn pinned(&self, member: usize) -> Result<EtcdConn, RegistryError> {
        let conn = self.pool.client_where(|c| c.member == member).await?;
        if conn.member != member {
            return Err(RegistryError::unreachable(
                KIND,
                "etcd: no open connection to this endpoint",
            ));
        }
        Ok(conn)
    }
}

/// `read`, given up at `deadline` (`within` after it started).
async fn by<T>(
    deadline: Instant,
    within: Duration,
    read: impl Future<Output = Result<T, RegistryError>>,
) -> Result<T, RegistryError> {
    match timeout_at(deadline, read).await {
        Ok(r) => r,
        Err(_) => Err(RegistryError::timeout(KIND, within)),
    }
}

/// Each listed member with its status: the one whose answer names it, else the outcome at an
/// endpoint its client URLs name. The leader is the one the newest term's answers name.
pub(super) fn assemble(
    list: &[Listing],
    statuses: &[(String, Result<Read, RegistryError>)],
) -> Vec<ClusterMember> {
    let leader = statuses
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .max_by_key(|r| r.term)
        .map(|r| r.leader)
        .filter(|l| *l != 0);
    let mut members: Vec<ClusterMember> = list
        .iter()
        .map(|m| {
            let at_its_url = |endpoint: &str| {
                m.client_urls
                    .iter()
                    .any(|u| authority(u).as_deref() == Some(endpoint))
            };
            let answered = statuses.iter().find_map(|(endpoint, r)| match r {
                Ok(read) if read.id == Some(m.id) => Some(read),
                Ok(read) if read.id.is_none() && at_its_url(endpoint) => Some(read),
                _ => None,
            });
            let failed = statuses.iter().find_map(|(endpoint, r)| match r {
                Err(e) if at_its_url(endpoint) => Some(e),
                _ => None,
            });
            let (reachable, error) = match (answered, failed) {
                (Some(_), _) => (Some(true), None),
                (None, Some(e)) => (Some(false), Some(e.to_string())),
                (None, None) => (
                    None,
                    Some(
                        "not asked: none of etcd.endpoints reaches this member, so its status \
                         was not read"
                            .to_owned(),
                    ),
                ),
            };
            ClusterMember {
                name: m.name.clone(),
                id: format!("{:x}", m.id),
                client_urls: m.client_urls.iter().map(|u| shown(u)).collect(),
                peer_urls: m.peer_urls.iter().map(|u| shown(u)).collect(),
                leader: leader == Some(m.id),
                learner: m.learner,
                reachable,
                version: answered.map(|r| r.version.clone()),
                db_size_bytes: answered.map(|r| r.db_size),
                raft_term: answered.map(|r| r.term),
                reported_errors: answered.map(|r| r.errors.clone()).unwrap_or_default(),
                error,
            }
        })
        .collect();
    // By name (as `etcdctl member list` does not promise any order), unnamed ones last.
    members.sort_by(|a, b| {
        (a.name.is_empty(), &a.name, &a.id).cmp(&(b.name.is_empty(), &b.name, &b.id))
    });
    members
}

/// A URL's `host:port` (the form endpoints are compared in), the port defaulted by scheme.
fn authority(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    Some(format!("{host}:{port}"))
}

/// A URL as the page shows it: without user info, query or fragment, which could carry a
/// credential (etcd does not put any there, but what a member advertises is not twinreg's to
/// vouch for).
fn shown(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match scheme {
        Some(s) => format!("{s}://{host}{path}"),
        None => format!("{host}{path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(id: u64, name: &str, port: u16) -> Listing {
        Listing {
            id,
            name: name.into(),
            client_urls: vec![format!("http://127.0.0.1:{port}")],
            peer_urls: vec![format!("http://127.0.0.1:{}", port + 1)],
            learner: false,
        }
    }

    fn read(id: u64, leader: u64, term: u64) -> Result<Read, RegistryError> {
        Ok(Read {
            id: Some(id),
            leader,
            term,
            version: "3.5.17".into(),
            db_size: 20480,
            errors: vec![],
        })
    }

    #[test]
    fn each_member_gets_its_own_status_or_says_why_not() {
        let list = [
            listed(0xa1, "m1", 2000),
            listed(0xb2, "m0", 2010),
            listed(0xc3, "m2", 2020),
            Listing {
                learner: true,
                ..listed(0xd4, "m3", 2030)
            },
        ];
        let statuses = [
            // m1's endpoint is a load balancer's name: its answer is matched by the member ID.
            ("lb.internal:2379".to_owned(), read(0xa1, 0xb2, 7)),
            ("127.0.0.1:2010".to_owned(), read(0xb2, 0xb2, 7)),
            // A member left behind in an old term still thinks m2 leads.
            ("127.0.0.1:2020".to_owned(), read(0xc3, 0xc3, 6)),
            (
                "127.0.0.1:2030".to_owned(),
                Err(RegistryError::unreachable(KIND, "etcd: transport error")),
            ),
        ];
        let got = assemble(&list, &statuses);
        let names: Vec<&str> = got.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["m0", "m1", "m2", "m3"]);
        let by = |n: &str| got.iter().find(|m| m.name == n).unwrap();
        assert_eq!(by("m0").id, "b2");
        assert!(by("m0").leader, "the newest term's leader: {got:?}");
        assert_eq!(got.iter().filter(|m| m.leader).count(), 1, "{got:?}");
        assert_eq!(by("m1").reachable, Some(true));
        assert_eq!(by("m1").version.as_deref(), Some("3.5.17"));
        assert_eq!(by("m1").db_size_bytes, Some(20480));
        let dead = by("m3");
        assert!(dead.learner);
        assert_eq!(dead.reachable, Some(false));
        assert_eq!(dead.error.as_deref(), Some("etcd: transport error"));
        assert_eq!((dead.version.as_ref(), dead.db_size_bytes), (None, None));

        // A member no endpoint reaches is listed, not asked.
        let list = [listed(0xa1, "m1", 2000), listed(0xe5, "far", 3000)];
        let got = assemble(&list, &statuses[..2]);
        let far = got.iter().find(|m| m.name == "far").unwrap();
        assert_eq!(far.reachable, None);
        assert!(
            far.error.as_deref().unwrap().starts_with("not asked"),
            "{far:?}"
        );

        // Nobody answered: no leader is made up.
        let got = assemble(&list, &statuses[3..]);
        assert!(got.iter().all(|m| !m.leader && m.reachable != Some(true)));
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(shown("https://10.0.0.1:2379"), "https://10.0.0.1:2379");
        assert_eq!(
            shown("https://root:hunter2@etcd-0.etcd:2379/x?token=abc#f"),
            "https://etcd-0.etcd:2379/x"
        );
        assert_eq!(shown("user:pw@host:1"), "host:1");
        assert_eq!(shown("unix://etcd.sock"), "unix://etcd.sock");
        assert_eq!(
            authority("http://127.0.0.1:2379").as_deref(),
            Some("127.0.0.1:2379")
        );
        assert_eq!(authority("https://[::1]").as_deref(), Some("::1:443"));
        assert_eq!(authority("http://etcd").as_deref(), Some("etcd:80"));
    }
}
