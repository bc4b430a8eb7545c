//! A 3-member etcd cluster on loopback, for tests about losing members.
//!
//! Each member is a real `etcd` process (found like [`crate::etcd`] finds it) with its own client
//! port, peer port and data directory. Members can be killed (SIGKILL, data kept) and restarted
//! with their data, frozen (SIGSTOP) and thawed (SIGCONT); the leader is found by asking each
//! member for its `status()`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use etcd_client::{Client, GetOptions};

use crate::process::{Output, Process};
use crate::{eventually, find_binary, free_port};

pub const MEMBERS: usize = 3;
/// How long one status/get round trip to a member may take in the helpers here.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub dir: tempfile::TempDir,
    process: Option<Process>,
    frozen: bool,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }
}

pub struct Cluster {
    bin: PathBuf,
    token: String,
    pub members: Vec<Member>,
}

impl Cluster {
    /// Starts three members and waits until they elected a leader and accept writes. A cluster
    /// that does not form (a member lost its port to another test between `free_port` and its
    /// bind, or the machine is very busy) is torn down and started again on new ports, up to
    /// three times.
    pub async fn start() -> Cluster {
        for attempt in 1..=3 {
            let c = Self::spawn_all();
            if c.healthy_within(Duration::from_secs(45)).await {
                return c;
            }
            eprintln!("etcd cluster did not form (attempt {attempt}); starting again on new ports");
            drop(c);
        }
        panic!("the etcd cluster did not get a leader and commit writes in three attempts");
    }

    fn spawn_all() -> Cluster {
        let bin = find_binary("ETCD_BIN", "etcd").unwrap_or_else(|| {
            panic!(
                "etcd not found: these tests need a real etcd. Install it (apt-get install etcd-server) \
                 or set ETCD_BIN to the etcd binary"
            )
        });
        let members = (0..MEMBERS)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                dir: crate::data_dir(),
                process: None,
                frozen: false,
            })
            .collect::<Vec<_>>();
        let mut c = Cluster {
            bin,
            token: format!("twinreg-test-{}", members[0].client_port),
            members,
        };
        for i in 0..MEMBERS {
            c.spawn(i);
        }
        c
    }

    async fn healthy_within(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.wait_healthy())
            .await
            .is_ok()
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) {
        assert!(
            self.members[i].process.is_none(),
            "member {i} is already running"
        );
        let initial = self.initial_cluster();
        let m = &self.members[i];
        // With an existing data directory etcd ignores the --initial-* flags and rejoins.
        let mut cmd = Command::new(&self.bin);
        cmd.arg(format!("--name={}", m.name))
            .arg(format!(
                "--data-dir={}",
                m.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={}", m.endpoint()))
            .arg(format!("--advertise-client-urls={}", m.endpoint()))
            .arg(format!("--listen-peer-urls={}", m.peer_url()))
            .arg(format!("--initial-advertise-peer-urls={}", m.peer_url()))
            .arg(format!("--initial-cluster={initial}"))
            .arg("--initial-cluster-state=new")
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg("--log-level=error");
        let process = Process::spawn(&format!("etcd member {i}"), cmd, Output::Null);
        let m = &mut self.members[i];
        m.process = Some(process);
        m.frozen = false;
    }

    /// Every member's client URL (the list twinreg is given).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// Client URLs of the members running and not frozen.
    pub fn live_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.is_running() && !m.frozen)
            .map(Member::endpoint)
            .collect()
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.members[i]
            .process
            .as_ref()
            .unwrap_or_else(|| panic!("member {i} is not running"))
            .pid()
    }

    /// One member's `status()`: (its own member ID, the leader it knows of, 0 when none).
    async fn status_of(endpoint: &str) -> Option<(u64, u64)> {
        tokio::time::timeout(CALL_TIMEOUT, async {
            let mut c = Client::connect([endpoint], None).await.ok()?;
            let s = c.status().await.ok()?;
            Some((s.header()?.member_id(), s.leader()))
        })
        .await
        .ok()
        .flatten()
    }

    /// The index of the member that is leader now, as the members that answer see it (they must
    /// agree); `None` when there is no leader or they disagree.
    pub async fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            if !m.is_running() || m.frozen {
                continue;
            }
            if let Some((id, leader)) = Self::status_of(&m.endpoint()).await {
                ids.push((i, id));
                leaders.push(leader);
            }
        }
        let first = *leaders.first()?;
        if first == 0 || leaders.iter().any(|l| *l != first) {
            return None;
        }
        ids.iter().find(|(_, id)| *id == first).map(|(i, _)| *i)
    }

    /// SIGKILL, keeping the member's data directory.
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.process = None;
        m.frozen = false;
    }

    /// Starts a killed member again with its data and waits until it answers.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        let ep = self.members[i].endpoint();
        eventually(
            Duration::from_secs(30),
            &format!("etcd member {i} to answer again"),
            || {
                let ep = ep.clone();
                async move { Self::status_of(&ep).await.map(drop) }
            },
        )
        .await;
    }

    fn member_process(&mut self, i: usize) -> &mut Process {
        self.members[i]
            .process
            .as_mut()
            .unwrap_or_else(|| panic!("member {i} is not running"))
    }

    /// SIGSTOP: the member keeps its sockets but answers nothing.
    pub fn freeze(&mut self, i: usize) {
        self.member_process(i).freeze();
        self.members[i].frozen = true;
    }

    /// SIGCONT after [`Cluster::freeze`].
    pub fn thaw(&mut self, i: usize) {
        self.member_process(i).thaw();
        self.members[i].frozen = false;
    }

    /// Waits until every running member answers, they agree on a leader, and a write through the
    /// cluster commits (a quorum is there).
    pub async fn wait_healthy(&self) {
        eventually(
            Duration::from_secs(60),
            "the etcd cluster to have a leader and commit writes",
            || async {
                for m in self.members.iter().filter(|m| m.is_running() && !m.frozen) {
                    let (_, leader) = Self::status_of(&m.endpoint()).await?;
                    if leader == 0 {
                        return None;
                    }
                }
                self.leader().await?;
                tokio::time::timeout(CALL_TIMEOUT, async {
                    let mut c = self.client().await?;
                    c.put("/_cluster_health", "ok", None).await.ok().map(drop)
                })
                .await
                .ok()
                .flatten()
            },
        )
        .await;
    }

    /// A client over the members running now, or `None` when it cannot connect.
    pub async fn client(&self) -> Option<Client> {
        let eps = self.live_endpoints();
        if eps.is_empty() {
            return None;
        }
        tokio::time::timeout(CALL_TIMEOUT, Client::connect(eps, None))
            .await
            .ok()?
            .ok()
    }

    /// Every key under `prefix` with its value and lease (a linearizable read: needs a quorum).
    pub async fn dump(&self, prefix: &str) -> Option<Vec<(String, serde_json::Value, i64)>> {
        let mut c = self.client().await?;
        let resp = tokio::time::timeout(
            CALL_TIMEOUT,
            c.get(prefix, Some(GetOptions::new().with_prefix())),
        )
        .await
        .ok()?
        .ok()?;
        Some(
            resp.kvs()
                .iter()
                .map(|kv| {
                    (
                        kv.key_str().unwrap_or_default().to_owned(),
                        serde_json::from_slice(kv.value()).unwrap_or(serde_json::Value::Null),
                        kv.lease(),
                    )
                })
                .collect(),
        )
    }
}
