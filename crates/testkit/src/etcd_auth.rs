//! An etcd with authentication on, set up with the `etcdctl` commands docs/credentials.md gives:
//! `root` (etcd needs it to turn authentication on) and `twinreg`, whose one role grants readwrite
//! on the key prefix `/services/` and nothing else.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use twinreg::certs::CertAuthority;

use crate::etcd::Etcd;
use crate::find_binary;

/// The only keys the `twinreg` etcd role may touch: `etcd.prefix` + `/`.
pub const PREFIX: &str = "/services/";
/// The etcd user twinreg authenticates as.
pub const USER: &str = "twinreg";

/// A distinctive random secret (hex, no whitespace: `etcdctl user add --interactive=false` reads
/// the password up to the first space).
pub fn secret(label: &str) -> String {
    format!("{label}-{:032x}", rand::random::<u128>())
}

/// The etcd, and what it takes to act as root on it.
pub struct AuthEtcd {
    pub etcd: Etcd,
    etcdctl: PathBuf,
    pub root_password: String,
}

impl AuthEtcd {
    pub async fn start(password: &str) -> AuthEtcd {
        Self::start_with_args(password, &[]).await
    }

    /// [`Self::start`], with more etcd flags.
    pub async fn start_with_args(password: &str, args: &[&str]) -> AuthEtcd {
        Self::set_up(Etcd::start_with_args(args).await, password)
    }

    /// [`Self::start`] over HTTPS with `--client-cert-auth`: its `client.pem` has CN `twinreg`.
    pub async fn start_tls(ca: &CertAuthority, password: &str) -> AuthEtcd {
        Self::set_up(Etcd::start_tls(ca).await, password)
    }

    fn set_up(etcd: Etcd, password: &str) -> AuthEtcd {
        let etcdctl = find_binary("ETCDCTL_BIN", "etcdctl").unwrap_or_else(|| {
            panic!(
                "etcdctl not found: this test sets up etcd users and roles with it. Install it \
                 (apt-get install etcd-client; scripts/setup.sh does) or set ETCDCTL_BIN"
            )
        });
        let a = AuthEtcd {
            etcd,
            etcdctl,
            root_password: secret("root"),
        };
        // The commands docs/credentials.md gives, in the same order.
        let root = a.root_password.clone();
        a.ok(
            None,
            &["user", "add", "root", "--interactive=false"],
            Some(&root),
        );
        a.ok(None, &["user", "grant-role", "root", "root"], None);
        a.ok(None, &["role", "add", "twinreg"], None);
        a.ok(
            None,
            &[
                "role",
                "grant-permission",
                "twinreg",
                "--prefix=true",
                "readwrite",
                PREFIX,
            ],
            None,
        );
        a.ok(
            None,
            &["user", "add", USER, "--interactive=false"],
            Some(password),
        );
        a.ok(None, &["user", "grant-role", USER, "twinreg"], None);
        a.ok(None, &["auth", "enable"], None);
        a
    }

    /// Runs etcdctl as `user` (`None`: no credentials), feeding `stdin` a line.
    pub fn ctl(&self, user: Option<(&str, &str)>, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(&self.etcdctl);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.etcd.endpoint()));
        if let Some(t) = &self.etcd.tls {
            cmd.arg(format!("--cacert={}", t.path("ca.pem").display()))
                .arg(format!("--cert={}", t.path("client.pem").display()))
                .arg(format!("--key={}", t.path("client-key.pem").display()));
        }
        if let Some((u, p)) = user {
            cmd.arg(format!("--user={u}"))
                .arg(format!("--password={p}"));
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running etcdctl");
        if let Some(line) = stdin {
            let mut input = child.stdin.take().unwrap();
            input.write_all(format!("{line}\n").as_bytes()).unwrap();
        }
        child.wait_with_output().expect("etcdctl runs")
    }

    pub fn ok(&self, user: Option<(&str, &str)>, args: &[&str], stdin: Option<&str>) {
        let out = self.ctl(user, args, stdin);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn root(&self) -> Option<(&str, &str)> {
        Some(("root", &self.root_password))
    }

    /// Every key in etcd, read as root.
    pub fn all_keys(&self) -> Vec<String> {
        let out = self.ctl(self.root(), &["get", "", "--from-key", "--keys-only"], None);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }
}
