//! The real `twinreg serve` binary as a process (for what only a process shows: its log lines,
//! its exit on a signal, its reading of the environment); [`crate::gateway`] runs twinreg
//! in-process for everything else.

use std::path::Path;
use std::time::Duration;

use http::HeaderMap;
use http_body_util::BodyExt;

use crate::binaries::twinreg_command;
use crate::eventually;
use crate::process::{Output, Process};

pub struct Serve {
    process: Process,
    /// The public (mTLS) and admin ports its configuration names.
    pub port: u16,
    pub admin: u16,
}

impl Serve {
    /// `twinreg serve --config CONFIG ARGS...` with `env` on top of a clean environment (no
    /// `TWINREG_*` from the caller), its output collected line by line. `ports` are the public
    /// and admin ports the configuration listens on.
    pub fn start(
        config: &Path,
        args: &[&str],
        env: &[(String, String)],
        ports: (u16, u16),
    ) -> Serve {
        let mut cmd = twinreg_command();
        cmd.arg("serve").arg("--config").arg(config).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Serve {
            process: Process::spawn("twinreg", cmd, Output::Lines),
            port: ports.0,
            admin: ports.1,
        }
    }

    pub async fn try_admin_get(&self, path: &str) -> Option<(u16, HeaderMap, String)> {
        let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let uri = format!("http://127.0.0.1:{}{path}", self.admin);
        let resp = client.get(uri.parse().unwrap()).await.ok()?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, headers, String::from_utf8_lossy(&body).into_owned()))
    }

    pub async fn admin_get(&self, path: &str) -> (u16, HeaderMap, String) {
        self.try_admin_get(path)
            .await
            .unwrap_or_else(|| panic!("the admin listener does not answer {path}"))
    }

    /// Waits (start-up included) until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        eventually(Duration::from_secs(30), "twinreg to be ready", || async {
            let (status, _, _) = self.try_admin_get("/readyz").await?;
            (status == 200).then_some(())
        })
        .await;
    }

    /// Waits (start-up included) until `/readyz` shows each registry in its state.
    pub async fn wait_states(&self, want: &[(&str, &str)]) {
        eventually(
            Duration::from_secs(60),
            "registry states in /readyz",
            || async {
                let (_, _, b) = self.try_admin_get("/readyz").await?;
                let v: serde_json::Value = serde_json::from_str(&b).ok()?;
                want.iter()
                    .all(|(r, s)| v["registries"][r]["state"] == *s)
                    .then_some(())
            },
        )
        .await;
    }

    /// Every line it has written so far.
    pub fn lines(&self) -> Vec<String> {
        self.process.lines()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.process.exited()
    }

    /// SIGTERM, then (once it exited, or was killed after 20 s) every line it wrote, and whether
    /// it exited with success.
    pub fn stop(self) -> (Vec<String>, bool) {
        self.exit(Some(nix::sys::signal::Signal::SIGTERM))
    }

    /// Sends `sig` now, leaving it running (see [`Serve::wait_exit`]).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        crate::signal(self.pid(), sig);
    }

    /// Waits (blocking, at most 20 s) for it to exit on its own: its lines and whether it
    /// exited with success.
    pub fn wait_exit(self) -> (Vec<String>, bool) {
        self.exit(None)
    }

    fn exit(mut self, sig: Option<nix::sys::signal::Signal>) -> (Vec<String>, bool) {
        let status = self.process.stop_within(sig, Duration::from_secs(20));
        (self.process.lines(), status.is_some_and(|s| s.success()))
    }
}

/// A `twinreg serve` process with development certificates, on free ports, pointed at `etcd` and
/// `consul`, ready, and a client holding the `payments` certificate. `server_toml` adds lines to
/// its `[server]` section. The directory holds the certificates and the configuration.
pub struct DevServe {
    pub serve: Serve,
    pub client: crate::client::TestClient,
    pub dir: tempfile::TempDir,
}

impl DevServe {
    pub async fn start(
        etcd: &crate::etcd::Etcd,
        consul: &crate::consul::Consul,
        server_toml: &str,
    ) -> DevServe {
        let dir = tempfile::tempdir().unwrap();
        twinreg::certs::write_dev(dir.path(), &["payments".into()]).unwrap();
        let (port, admin_port) = (crate::free_port(), crate::free_port());
        let d = dir.path().display();
        let config = dir.path().join("twinreg.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
                 {server_toml}\n[tls]\ncert = \"{d}/server.pem\"\nkey = \"{d}/server-key.pem\"\n\
                 client_ca = \"{d}/ca.pem\"\n[etcd]\nendpoints = [\"{}\"]\n[consul]\naddress = \"{}\"\n",
                etcd.endpoint(),
                consul.address()
            ),
        )
        .unwrap();
        let serve = Serve::start(&config, &[], &[], (port, admin_port));
        serve.wait_ready().await;
        let pem = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        let identity = twinreg::certs::Issued {
            cert_pem: pem("payments.pem"),
            key_pem: pem("payments-key.pem"),
            der: vec![],
        };
        let client = crate::client::TestClient::new(
            format!("https://127.0.0.1:{port}"),
            crate::client::tls_config(&pem("ca.pem"), Some(&identity)),
        );
        DevServe { serve, client, dir }
    }
}
