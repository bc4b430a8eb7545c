//! A real etcd on free loopback ports, with its own data directory.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use etcd_client::{Client, GetOptions};

use crate::process::{Output, Process};
use crate::{find_binary, free_port};

/// TLS for an etcd that requires client certificates from the test CA.
pub struct EtcdTls {
    pub dir: tempfile::TempDir,
}

impl EtcdTls {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub struct Etcd {
    bin: PathBuf,
    pub tls: Option<EtcdTls>,
    pub dir: tempfile::TempDir,
    pub client_port: u16,
    peer_port: u16,
    process: Option<Process>,
    /// More command-line flags (e.g. `--auth-token-ttl=1`).
    args: Vec<String>,
}

impl Etcd {
    pub async fn start() -> Etcd {
        Self::start_inner(None, None, &[]).await
    }

    /// Starts on a given client port (for tests that point twinreg at it before it exists).
    /// HTTPS with `--client-cert-auth`: clients need a certificate from `ca`. The directory holds
    /// `ca.pem` and a client pair `client.pem`/`client-key.pem` for twinreg.
    pub async fn start_tls(ca: &twinreg::certs::CertAuthority) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let server = ca.server(&["localhost", "127.0.0.1"]).unwrap();
        let client = ca
            .client(&twinreg::certs::ClientNames::cn("twinreg"))
            .unwrap();
        for (name, content) in [
            ("ca.pem", &ca.cert_pem),
            ("server.pem", &server.cert_pem),
            ("server-key.pem", &server.key_pem),
            ("client.pem", &client.cert_pem),
            ("client-key.pem", &client.key_pem),
        ] {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        Self::start_inner(None, Some(EtcdTls { dir }), &[]).await
    }

    pub async fn start_on(client_port: u16) -> Etcd {
        Self::start_inner(Some(client_port), None, &[]).await
    }

    /// Plain HTTP, with more command-line flags.
    pub async fn start_with_args(args: &[&str]) -> Etcd {
        Self::start_inner(None, None, args).await
    }

    /// Starts etcd on `client_port`, or on free ports. Free ports are bound and released before
    /// etcd binds them, so another test may take one in between: then etcd is started again on
    /// new ones (up to three times).
    async fn start_inner(client_port: Option<u16>, tls: Option<EtcdTls>, args: &[&str]) -> Etcd {
        let bin = find_binary("ETCD_BIN", "etcd").unwrap_or_else(|| {
            panic!(
                "etcd not found: these tests need a real etcd. Install it (apt-get install etcd-server) \
                 or set ETCD_BIN to the etcd binary"
            )
        });
        let mut e = Etcd {
            bin,
            tls,
            dir: crate::data_dir(),
            client_port: client_port.unwrap_or_else(free_port),
            peer_port: free_port(),
            process: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        for attempt in 1.. {
            match e.try_spawn().await {
                Ok(()) => return e,
                Err(log)
                    if client_port.is_none()
                        && attempt < 3
                        && log.contains("address already in use") =>
                {
                    eprintln!(
                        "etcd lost a port to another test (attempt {attempt}); starting again on new ports"
                    );
                    e.client_port = free_port();
                    e.peer_port = free_port();
                }
                Err(log) => panic!("etcd exited before answering on {}:\n{log}", e.endpoint()),
            }
        }
        unreachable!("the loop returns or panics")
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn options(&self) -> Option<etcd_client::ConnectOptions> {
        let t = self.tls.as_ref()?;
        let read = |n: &str| std::fs::read(t.path(n)).unwrap();
        Some(
            etcd_client::ConnectOptions::new().with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(read("ca.pem")))
                    .identity(etcd_client::Identity::from_pem(
                        read("client.pem"),
                        read("client-key.pem"),
                    )),
            ),
        )
    }

    async fn spawn(&mut self) {
        if let Err(log) = self.try_spawn().await {
            panic!(
                "etcd exited before answering on {}:\n{log}",
                self.endpoint()
            );
        }
    }

    /// Starts the process and waits until it answers; its log when it exited first.
    async fn try_spawn(&mut self) -> Result<(), String> {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(&self.bin);
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cert-file={}", t.path("server.pem").display()))
                .arg(format!("--key-file={}", t.path("server-key.pem").display()))
                .arg(format!("--trusted-ca-file={}", t.path("ca.pem").display()))
                .arg("--client-cert-auth");
        }
        cmd.arg("--name=t")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={}", self.endpoint()))
            .arg(format!("--advertise-client-urls={}", self.endpoint()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=t={peer}"))
            .arg("--log-level=error")
            .args(&self.args);
        let log = Output::File(self.dir.path().join("etcd.log"));
        self.process = Some(Process::spawn("etcd", cmd, log));
        let ep = self.endpoint();
        let opts = self.options();
        // Generous: many tests start servers at once on two cores.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            // Whether etcd exited comes first: when it lost its port, whatever holds the port
            // may accept the connection and never answer gRPC, so each try is bounded too.
            let process = self.process.as_mut().expect("just spawned");
            if let Some(status) = process.exited() {
                return Err(format!("({status}) {}", process.log()));
            }
            let probe = async {
                let mut c = Client::connect([ep.clone()], opts.clone()).await.ok()?;
                c.status().await.ok()
            };
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), probe).await {
                return Ok(());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd did not answer on {ep} within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn process(&self) -> &Process {
        self.process.as_ref().expect("etcd running")
    }

    pub fn pid(&self) -> u32 {
        self.process().pid()
    }

    /// SIGKILL, leaving the data directory.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Starts again on the same ports with the same data.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Starts again on the same ports with the data directory wiped: a fresh etcd, every key and
    /// lease gone.
    pub async fn restart_wiped(&mut self) {
        self.kill();
        let data = self.dir.path().join("data");
        if data.exists() {
            std::fs::remove_dir_all(&data).expect("wiping the etcd data directory");
        }
        self.spawn().await;
    }

    /// SIGSTOP: etcd keeps its sockets but answers nothing.
    pub fn freeze(&self) {
        self.process().freeze();
    }

    /// SIGCONT after [`Etcd::freeze`].
    pub fn thaw(&self) {
        self.process().thaw();
    }

    pub async fn client(&self) -> Client {
        Client::connect([self.endpoint()], self.options())
            .await
            .expect("connecting to etcd")
    }

    /// The IDs of the leases etcd holds now.
    pub async fn lease_ids(&self) -> Vec<i64> {
        let mut c = self.client().await;
        let resp = c.leases().await.expect("listing etcd's leases");
        resp.leases().iter().map(|l| l.id()).collect()
    }

    /// Every key under `prefix`, with its value.
    pub async fn dump(&self, prefix: &str) -> Vec<(String, serde_json::Value, i64)> {
        let mut c = self.client().await;
        let resp = c
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        resp.kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_owned(),
                    serde_json::from_slice(kv.value()).unwrap_or(serde_json::Value::Null),
                    kv.lease(),
                )
            })
            .collect()
    }

    /// The instance keys under the default prefix `/services/` (not the replicas'
    /// announcements, tombstones or the sweeper's election key, which live in `.`-directories).
    pub async fn instances(&self) -> Vec<(String, serde_json::Value, i64)> {
        let mut all = self.dump("/services/").await;
        all.retain(|(k, _, _)| !k["/services/".len()..].starts_with('.'));
        all
    }
}
