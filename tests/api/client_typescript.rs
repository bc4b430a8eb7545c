//! The TypeScript client library in clients/typescript (`@twinreg/client`): its types are what
//! openapi-typescript generates from docs/openapi.json, it builds with its pinned TypeScript, its
//! retry logic passes its own unit tests, and its `Client`, `watch` and `KeepAlive` keep an
//! instance alive against a live twinreg.
//!
//! The package is copied under the target directory and installed there (`npm ci`, from npm's
//! cache when it has the lockfile's packages, else from the registry), so no test writes
//! node_modules into the source tree. Node 18 or newer and npm are needed: Debian's `nodejs` and
//! `npm` (scripts/setup.sh --test); a missing one fails the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;

use crate::child::{
    Child, Registration, kept_alive_past_ttl, wait_registered_in_both, with_index, write_certs,
};
use crate::{Env, path};
use testkit::{eventually, find_binary, signal};

const PACKAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/typescript");
const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
const GENERATED: &str = "src/generated/openapi.ts";

/// The driver's own service and instance; its certificate's CN names the service.
const SERVICE: &str = "orders";
const ID: &str = "ord-1";
const PEER: &str = "billing";
/// A service the driver's certificate may not write.
const OTHER: &str = "payments";
const TTL: u64 = 5;

/// The instance the driver registers.
fn registration() -> Registration {
    Registration {
        service: SERVICE,
        id: ID,
        address: "127.0.0.1",
        port: 9000,
        ttl: TTL,
        tags: json!(["typescript"]),
        meta: json!({"lang": "typescript"}),
    }
}

/// node and npm: from NODE_BIN / NPM_BIN, else PATH; a missing one or a Node older than 18 fails
/// the test, naming the Debian packages.
struct Node {
    node: PathBuf,
    npm: PathBuf,
}

impl Node {
    fn find() -> Node {
        let find = |var: &str, name: &str| {
            find_binary(var, name).unwrap_or_else(|| {
                panic!(
                    "`{name}` is not on PATH (nor set in {var}); the TypeScript client's test needs \
                     Node.js 18 or newer and npm: run scripts/setup.sh --test, which installs \
                     Debian's `nodejs` and `npm` packages"
                )
            })
        };
        let node = Node {
            node: find("NODE_BIN", "node"),
            npm: find("NPM_BIN", "npm"),
        };
        let version = node.output(Command::new(&node.node).arg("--version"), "node --version");
        let major: u32 = version
            .trim()
            .trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        assert!(
            major >= 18,
            "{} is Node {}: the TypeScript client needs 18 or newer (Debian's `nodejs`)",
            node.node.display(),
            version.trim()
        );
        node
    }

    /// `cmd` with `node`'s directory first on PATH, so npm's scripts run the same node.
    fn command(&self, program: &Path, dir: &Path) -> Command {
        let mut cmd = Command::new(program);
        let bin = self.node.parent().expect("node's directory");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let paths = std::iter::once(bin.to_path_buf()).chain(std::env::split_paths(&path));
        cmd.current_dir(dir)
            .env("PATH", std::env::join_paths(paths).unwrap())
            .env("npm_config_update_notifier", "false")
            .env("npm_config_audit", "false")
            .env("npm_config_fund", "false")
            .stdin(Stdio::null());
        cmd
    }

    fn npm(&self, dir: &Path, args: &[&str]) -> Command {
        let mut cmd = self.command(&self.npm, dir);
        cmd.args(args);
        cmd
    }

    /// Runs `cmd` and returns its stdout, failing the test (with both streams) unless it succeeds.
    fn output(&self, cmd: &mut Command, what: &str) -> String {
        let out = run(cmd, what);
        assert!(
            out.status.success(),
            "`{what}` failed ({}):\n{}",
            out.status,
            streams(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn run(cmd: &mut Command, what: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("starting `{what}`: {e}"))
}

fn streams(out: &Output) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Copies the package's sources (not node_modules or dist) into `to`.
fn copy_package(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "node_modules" || name == "dist" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type().unwrap().is_dir() {
            copy_package(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// A copy of clients/typescript under the target directory with its dependencies installed from
/// the lockfile and the library built to dist/.
fn built_package(node: &Node) -> tempfile::TempDir {
    let tmp = tempfile::Builder::new()
        .prefix("client-typescript-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let dir = tmp.path();
    copy_package(Path::new(PACKAGE), dir);

    let started = Instant::now();
    node.output(
        &mut node.npm(dir, &["ci", "--prefer-offline", "--no-audit", "--no-fund"]),
        "npm ci --prefer-offline",
    );
    let installed = started.elapsed();
    node.output(&mut node.npm(dir, &["run", "build"]), "npm run build");
    eprintln!(
        "clients/typescript: npm ci {installed:.1?}, npm run build {:.1?}",
        started.elapsed() - installed
    );
    for file in [
        "index.js",
        "index.d.ts",
        "client.js",
        "keepalive.js",
        "watch.js",
    ] {
        assert!(
            dir.join("dist").join(file).is_file(),
            "npm run build wrote no dist/{file}"
        );
    }
    tmp
}

/// `npm run generate -- --check` of the committed types in the source tree (read, never written)
/// against a description: its exit status and output.
fn generate_check(node: &Node, dir: &Path, spec: &Path) -> Output {
    run(
        node.npm(dir, &["run", "generate", "--", "--check", "--spec"])
            .arg(spec)
            .arg("--out")
            .arg(Path::new(PACKAGE).join(GENERATED)),
        "npm run generate -- --check",
    )
}

#[tokio::test]
async fn typescript_client_is_generated_from_the_description_and_keeps_an_instance_alive() {
    let node = Node::find();
    let pkg = built_package(&node);
    let dir = pkg.path();
    let started = Instant::now();

    // The committed types are exactly a fresh generation from the committed description, by the
    // pinned openapi-typescript.
    let out = generate_check(&node, dir, Path::new(SPEC));
    assert!(
        out.status.success(),
        "clients/typescript/{GENERATED} is not what openapi-typescript generates from \
         docs/openapi.json: run `npm run generate` in clients/typescript and commit it\n{}",
        streams(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is up to date"),
        "{}",
        streams(&out)
    );
    // ... and the check notices a description that changed (so it can fail): one more schema.
    let mut changed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(SPEC).unwrap()).unwrap();
    changed["components"]["schemas"]["AddedByTheTest"] =
        json!({"type": "object", "properties": {"x": {"type": "string"}}});
    let changed_spec = dir.join("changed-openapi.json");
    std::fs::write(&changed_spec, changed.to_string()).unwrap();
    let out = generate_check(&node, dir, &changed_spec);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("run `npm run generate`"),
        "the check passed a description that differs from the generated types\n{}",
        streams(&out)
    );

    // The runtime's retry logic (no network).
    let out = run(&mut node.npm(dir, &["test"]), "npm test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("# fail 0") && !text.contains("# pass 0"),
        "npm test (test/unit.test.mjs) failed ({})\n{}",
        out.status,
        streams(&out)
    );

    let checked = started.elapsed();
    live(&node, dir).await;
    eprintln!(
        "clients/typescript: generation checks and unit tests {checked:.1?}, live {:.1?}",
        started.elapsed() - checked
    );
}

/// One of the driver's `error <label>: ...` lines, split into its fields.
fn error_fields(line: &str) -> (String, String) {
    let (head, message) = line
        .split_once(" message=")
        .unwrap_or_else(|| panic!("no message in {line:?}"));
    (head.to_owned(), message.to_owned())
}

async fn live(node: &Node, dir: &Path) {
    let env = Env::start().await;
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_certs(&env, certs.path(), SERVICE);

    // A peer instance, registered with the test's own client, before the driver starts.
    let peer = env.gw.client(PEER);
    let r = peer
        .put_json(
            &path(PEER, "bill-1"),
            &json!({"address": "10.0.0.5", "port": 8080}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let mut cmd = node.command(&node.node, dir);
    cmd.arg("test/live.mjs")
        .env(
            "TWREG_URL",
            format!("https://127.0.0.1:{}", env.gw.addr.port()),
        )
        .env("TWREG_CERT", &cert)
        .env("TWREG_KEY", &key)
        .env("TWREG_CA", &ca)
        .env("TWREG_SERVICE", SERVICE)
        .env("TWREG_ID", ID)
        .env("TWREG_ADDRESS", "127.0.0.1")
        .env("TWREG_PORT", "9000")
        .env("TWREG_TTL", TTL.to_string())
        .env("TWREG_WATCH", PEER)
        .env("TWREG_OTHER", OTHER);
    let mut ex = Child::spawn("node test/live.mjs", cmd);

    // KeepAlive registers, and says so through its events.
    ex.expect("state registering").await;
    ex.expect(&format!(
        "registered {SERVICE}/{ID} ttl={TTL}s degraded=false count=1"
    ))
    .await;
    ex.expect("state registered").await;
    wait_registered_in_both(
        &env,
        "the driver's instance in etcd and Consul",
        &registration(),
    )
    .await;

    // It lists itself, from both registries.
    ex.expect(&format!(
        "listed {SERVICE}: {ID} 127.0.0.1:9000 drained=false sources=etcd,consul"
    ))
    .await;

    // Port 0: a TwinregError naming the code and the field, not a bare status.
    let line = ex
        .expect_line("the port-0 error", |l| l.starts_with("error port-0:"))
        .await;
    let (head, message) = error_fields(&line);
    assert_eq!(
        head,
        "error port-0: class=TwinregError instanceof=true code=invalid_request field=port \
         status=400 retryable=false",
        "{}",
        ex.transcript()
    );
    assert!(
        message.starts_with("invalid_request (field \"port\"): port: "),
        "{message}"
    );
    assert!(!message.starts_with("400"), "{message}");
    // Another service's instance: forbidden.
    let line = ex
        .expect_line("the other-service error", |l| {
            l.starts_with("error other-service:")
        })
        .await;
    let (head, message) = error_fields(&line);
    assert_eq!(
        head,
        "error other-service: class=TwinregError instanceof=true code=forbidden field=- \
         status=403 retryable=false",
        "{}",
        ex.transcript()
    );
    assert!(message.starts_with("forbidden: "), "{message}");
    // Neither wrote anything.
    assert!(
        env.etcd_record(SERVICE, &format!("{ID}-bad"))
            .await
            .is_none()
    );
    assert!(env.etcd_record(OTHER, ID).await.is_none());

    // Drain and undrain: the answer and the list agree.
    ex.expect(&format!("drained {SERVICE}/{ID} drained=true listed=true"))
        .await;
    ex.expect(&format!(
        "drained {SERVICE}/{ID} drained=false listed=false"
    ))
    .await;
    ex.expect(&format!("services: {PEER}=1 {SERVICE}=1")).await;
    ex.expect("ready").await;
    let (record, _) = env.etcd_record(SERVICE, ID).await.unwrap();
    assert_ne!(record["drained"], true, "still drained in etcd: {record}");

    // The watch: the peer as it was at start, then a second peer instance.
    ex.expect_line("the peer's first instance", |l| {
        with_index(
            l,
            &format!("peer {PEER}: 1 instances [bill-1 10.0.0.5:8080]"),
        )
    })
    .await;
    let r = peer
        .put_json(
            &path(PEER, "bill-2"),
            &json!({"address": "10.0.0.6", "port": 8081}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    ex.expect_line("the peer's second instance", |l| {
        with_index(
            l,
            &format!("peer {PEER}: 2 instances [bill-1 10.0.0.5:8080, bill-2 10.0.0.6:8081]"),
        )
    })
    .await;

    // Heartbeats (every ttl/3) keep it alive well past its TTL, without registering again.
    let seen = kept_alive_past_ttl(&env, &mut ex, SERVICE, ID, TTL).await;
    let beats = seen
        .iter()
        .filter(|l| **l == format!("heartbeat {SERVICE}/{ID} degraded=false"))
        .count();
    assert!(
        beats >= 3,
        "{beats} heartbeats in {}s at ttl/3 of {TTL}s\n{}",
        TTL + 3,
        ex.transcript()
    );

    // Deregistered behind its back: the next heartbeat gets 404 unknown_instance and the
    // KeepAlive registers again.
    let owner = env.gw.client(SERVICE);
    let r = owner.delete(&path(SERVICE, ID)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    ex.expect(&format!(
        "registered {SERVICE}/{ID} ttl={TTL}s degraded=false count=2"
    ))
    .await;
    wait_registered_in_both(
        &env,
        "the instance back in etcd and Consul",
        &registration(),
    )
    .await;

    // SIGTERM: it stops, deregisters, says so and exits 0; the gateway no longer lists it.
    signal(ex.id(), Signal::SIGTERM);
    let status = ex.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "exit status {status}\n{}",
        ex.transcript()
    );
    ex.expect("state stopping").await;
    ex.expect(&format!("deregistered {SERVICE}/{ID} existed=true"))
        .await;
    ex.expect("state stopped").await;
    ex.expect("stopped deregistered=true").await;
    let listed = env
        .gw
        .client(PEER)
        .get(&format!("/v1/services/{SERVICE}/instances"))
        .await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(listed.json["instances"], json!([]), "{}", listed.text);
    eventually(
        Duration::from_secs(10),
        "the instance gone from etcd and Consul",
        || async {
            (env.etcd_record(SERVICE, ID).await.is_none()
                && env.consul_service(SERVICE, ID).await.is_none())
            .then_some(())
        },
    )
    .await;

    // No key material in anything it printed.
    let all = ex.transcript();
    assert!(
        !all.contains("PRIVATE KEY"),
        "key material in output\n{all}"
    );
}
