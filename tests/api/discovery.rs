//! Native discovery, read by the registries' own clients with twinreg out of the path: etcd's
//! gRPC naming resolver (Debian's golang-etcd-server-dev, built offline in GOPATH mode) and
//! Debian's python3-consul, against what twinreg registered. docs/discovery.md is what they prove.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::child::{Child, go};
use crate::{Env, path};

/// Where Debian's golang-etcd-server-dev puts its sources (a GOPATH).
const DEBIAN_GOPATH: &str = "/usr/share/gocode";
/// Debian's own interpreter, where python3-consul is installed.
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

fn register(
    env: &Env,
    service: &str,
    id: &str,
    address: &str,
    port: u16,
) -> impl Future<Output = ()> {
    let c = env.gw.client(service);
    let p = path(service, id);
    let b = json!({"address": address, "port": port, "ttl_seconds": 30});
    async move {
        let r = c.put_json(&p, &b).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

/// Builds tests/native/etcd_resolve.go against Debian's etcd and grpc-go sources, offline.
fn build_resolver(out: &Path) -> PathBuf {
    let resolver = Path::new(DEBIAN_GOPATH).join("src/go.etcd.io/etcd/clientv3/naming/resolver");
    assert!(
        resolver.is_dir(),
        "{} is missing: the native-discovery test builds etcd's own resolver from Debian's \
         golang-etcd-server-dev; run scripts/setup.sh --test, which installs it",
        resolver.display()
    );
    let bin = out.join("etcd_resolve");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/native/etcd_resolve.go");
    go(
        &[
            "build",
            "-o",
            bin.to_str().unwrap(),
            source.to_str().unwrap(),
        ],
        out,
        Some(DEBIAN_GOPATH),
    );
    bin
}

/// The resolver program dialing `target`: each update's addresses, one JSON list a line.
fn resolving(bin: &Path, etcd: &str, target: &str) -> Child {
    let mut cmd = Command::new(bin);
    cmd.args([etcd, target]);
    Child::spawn("etcd_resolve", cmd)
}

/// The resolver's next update.
async fn next(r: &mut Child, what: &str) -> Vec<String> {
    let line = r.expect_line(what, |_| true).await;
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[tokio::test]
async fn etcds_own_resolver_resolves_pay_beside_payments_and_follows_deregistration_and_drain() {
    let out = tempfile::tempdir().unwrap();
    let bin = tokio::task::spawn_blocking({
        let out = out.path().to_owned();
        move || build_resolver(&out)
    })
    .await
    .unwrap();
    let env = Env::start().await;
    // Loopback addresses: the resolver never dials them, but nothing here may point elsewhere.
    register(&env, "pay", "pay-1", "127.0.0.11", 7001).await;
    register(&env, "pay", "pay-2", "127.0.0.12", 7002).await;
    register(&env, "payments", "payments-1", "127.0.0.13", 7003).await;
    let etcd = env.etcd.endpoint();

    // The documented target: the prefix, the service and a trailing '/', after "etcd:///".
    let mut pay = resolving(&bin, &etcd, "etcd:////services/pay/");
    assert_eq!(
        next(&mut pay, "the update at start").await,
        ["127.0.0.11:7001", "127.0.0.12:7002"],
        "the instances of pay, and not those of payments"
    );
    // The trap docs/discovery.md warns of: without the trailing '/', the resolver's bare-prefix
    // listing takes payments' instances for pay's.
    let mut bare = resolving(&bin, &etcd, "etcd:////services/pay");
    assert_eq!(
        next(&mut bare, "the update at start").await,
        ["127.0.0.11:7001", "127.0.0.12:7002", "127.0.0.13:7003"]
    );
    drop(bare);

    let c = env.gw.client("pay");
    let r = c.delete(&path("pay", "pay-1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        next(&mut pay, "the update after the deregistration").await,
        ["127.0.0.12:7002"]
    );

    let drain = format!("{}/drain", path("pay", "pay-2"));
    let r = c.put(&drain).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        next(&mut pay, "the update after the drain").await,
        Vec::<String>::new(),
        "a drained instance leaves the resolver"
    );
    let r = c.delete(&drain).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        next(&mut pay, "the update after the undrain").await,
        ["127.0.0.12:7002"]
    );
}

#[tokio::test]
async fn python_consul_reads_the_same_instances_passing_only() {
    let python = Path::new(DEBIAN_PYTHON);
    let probe = Command::new(python)
        .args(["-c", "import consul"])
        .output()
        .unwrap_or_else(|e| panic!("{DEBIAN_PYTHON}: {e}; run scripts/setup.sh"));
    assert!(
        probe.status.success(),
        "Debian's python3-consul is not importable by {DEBIAN_PYTHON} ({}); run scripts/setup.sh, \
         which installs it",
        String::from_utf8_lossy(&probe.stderr).trim()
    );
    let env = Env::start().await;
    register(&env, "pay", "pay-1", "127.0.0.11", 7001).await;
    register(&env, "pay", "pay-2", "127.0.0.12", 7002).await;
    register(&env, "payments", "payments-1", "127.0.0.13", 7003).await;
    let r = env
        .gw
        .client("pay")
        .put(&format!("{}/drain", path("pay", "pay-2")))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let address = env.consul.address();
    let (host, port) = address
        .trim_start_matches("http://")
        .rsplit_once(':')
        .expect("host:port");
    let script = r#"
import json, sys
import consul
c = consul.Consul(host=sys.argv[1], port=int(sys.argv[2]))
out = {}
for passing in (True, False):
    _, entries = c.health.service("pay", passing=passing)
    out["passing" if passing else "all"] = sorted(
        [e["Service"]["ID"], e["Service"]["Address"], e["Service"]["Port"]] for e in entries)
print(json.dumps(out))
"#;
    let result = tokio::task::spawn_blocking({
        let (host, port) = (host.to_owned(), port.to_owned());
        move || {
            Command::new(DEBIAN_PYTHON)
                .args(["-c", script, &host, &port])
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        result.status.success(),
        "python3-consul failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    let seen: Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(
        seen["passing"],
        json!([["pay.pay-1", "127.0.0.11", 7001]]),
        "passing only: the drained pay-2 is left out, payments is not pay"
    );
    assert_eq!(
        seen["all"],
        json!([
            ["pay.pay-1", "127.0.0.11", 7001],
            ["pay.pay-2", "127.0.0.12", 7002]
        ])
    );
}
