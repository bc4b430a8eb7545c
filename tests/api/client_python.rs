//! The Python client library (`clients/python`: distribution `twinreg-client`, import `twinreg`),
//! pip-installed into a fresh virtual environment made by Debian's /usr/bin/python3, then run
//! against a live twinreg by `clients/python/tests/live_driver.py`: errors carry twinreg's code
//! and field, `KeepAlive` registers, heartbeats, registers again after a 404 and deregisters when
//! closed on SIGTERM, and `watch` reports a peer service's changes. The driver prints what the
//! library did; this file decides whether that is right.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;

use crate::child::{
    Child, Registration, kept_alive_past_ttl, wait_registered_in_both, with_index, write_certs,
};
use crate::{Env, path};
use testkit::{eventually, signal};

/// Debian's interpreter (with python3-venv), as scripts/setup.sh installs it.
const PYTHON: &str = "/usr/bin/python3";
/// The driver's own service (its certificate's CN) and instance.
const SERVICE: &str = "orders";
const ID: &str = "ord-py-1";
/// The peer it watches; its certificate may not write this service (the 403 case).
const PEER: &str = "billing";
const TTL: u64 = 5;

/// The instance the driver registers.
fn registration() -> Registration {
    Registration {
        service: SERVICE,
        id: ID,
        address: "127.0.0.1",
        port: 9000,
        ttl: TTL,
        tags: json!(["py"]),
        meta: json!({"lang": "python"}),
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The virtual environment's interpreter, with `clients/python` pip-installed into it. Made once
/// per test process, in `CARGO_TARGET_TMPDIR/client-python/run-<pid>`.
fn venv_python() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(make_venv)
}

fn make_venv() -> PathBuf {
    assert!(
        Path::new(PYTHON).is_file(),
        "{PYTHON} is missing: the Python client tests need Debian's python3 and python3-venv \
         (run scripts/setup.sh)"
    );
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("client-python");
    std::fs::create_dir_all(&root).unwrap();
    remove_stale_runs(&root);
    let dir = root.join(format!("run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // Built from a copy, so that pip's in-tree build leaves nothing in the repository.
    let src = dir.join("src");
    copy_tree(&repo().join("clients/python"), &src);

    let venv = dir.join("venv");
    let made = run(Command::new(PYTHON).args(["-m", "venv"]).arg(&venv));
    assert!(
        made.status.success(),
        "`{PYTHON} -m venv` failed ({}); install Debian's python3-venv (scripts/setup.sh):\n{}",
        made.status,
        String::from_utf8_lossy(&made.stderr)
    );
    let python = venv.join("bin/python");

    // Offline when Debian's python3-wheel is there: setuptools older than 70.1 (bookworm has 66)
    // needs `wheel` to build one, and the venv has none. Only that package is made visible to
    // the build; what runs later sees the venv alone.
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        "--disable-pip-version-check",
    ]);
    let how = match wheel_shim(&dir.join("shim")) {
        Some(shim) => {
            pip.args(["--no-build-isolation", "--no-index"])
                .env("PYTHONPATH", shim);
            "offline, --no-build-isolation with Debian's python3-wheel"
        }
        None => {
            eprintln!(
                "client_python: {PYTHON} cannot import `wheel` (Debian's python3-wheel); \
                 installing with build isolation, setuptools and wheel from PyPI"
            );
            "with build isolation from PyPI (python3-wheel is missing)"
        }
    };
    let installed = run(pip.arg(&src));
    assert!(
        installed.status.success(),
        "pip install of clients/python ({how}) failed ({}): an offline install needs Debian's \
         python3-wheel, otherwise PyPI must be reachable\n--- stdout ---\n{}\n--- stderr ---\n{}",
        installed.status,
        String::from_utf8_lossy(&installed.stdout),
        String::from_utf8_lossy(&installed.stderr)
    );
    python
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// A directory holding only Debian's `wheel` package and its metadata (symlinks), for
/// PYTHONPATH during the build; `None` when /usr/bin/python3 cannot import it.
fn wheel_shim(shim: &Path) -> Option<PathBuf> {
    let probe = run(Command::new(PYTHON).args([
        "-I",
        "-c",
        "import os, wheel; print(os.path.dirname(os.path.dirname(os.path.abspath(wheel.__file__))))",
    ]));
    if !probe.status.success() {
        return None;
    }
    let parent = PathBuf::from(String::from_utf8(probe.stdout).unwrap().trim());
    std::fs::create_dir_all(shim).unwrap();
    let mut linked = 0;
    for entry in std::fs::read_dir(&parent).unwrap().map(Result::unwrap) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let metadata = name.starts_with("wheel-")
            && (name.ends_with(".egg-info") || name.ends_with(".dist-info"));
        if name == "wheel" || metadata {
            std::os::unix::fs::symlink(entry.path(), shim.join(&name)).unwrap();
            linked += 1;
        }
    }
    // The package and its metadata (setuptools finds `bdist_wheel` through the entry points).
    (linked >= 2).then(|| shim.to_path_buf())
}

/// Copies `from` to `to`, leaving out what a build or an interpreter left behind.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().map(Result::unwrap) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if matches!(name.as_str(), "__pycache__" | "build" | "dist") || name.ends_with(".egg-info")
        {
            continue;
        }
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&entry.path(), &to.join(&name));
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// Removes the environments of earlier test processes that are no longer running.
fn remove_stale_runs(root: &Path) {
    for entry in std::fs::read_dir(root).unwrap().map(Result::unwrap) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("run-")
            .and_then(|p| p.parse::<u32>().ok())
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[test]
fn python_client_unit_tests_pass_against_the_installed_package() {
    let python = venv_python();
    let tests = repo().join("clients/python/tests");
    // -I: neither PYTHONPATH nor the working directory; -B: no __pycache__ in the repository.
    let out = run(Command::new(python)
        .args(["-I", "-B", "-m", "unittest", "discover", "-v", "-s"])
        .arg(&tests)
        .arg("-t")
        .arg(&tests));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "unit tests failed ({}):\n{stderr}",
        out.status
    );
    let ran: u32 = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no `Ran N tests` line:\n{stderr}"));
    assert!(ran >= 20, "only {ran} unit tests ran:\n{stderr}");

    // Installed from the venv, standard library only: no dependency declared.
    let out = run(Command::new(python).args([
        "-I",
        "-c",
        "import twinreg, importlib.metadata as m; \
         print(twinreg.__file__); print(m.requires('twinreg-client'))",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let module = lines.next().unwrap_or_default();
    let venv = python.parent().unwrap().parent().unwrap();
    assert!(
        Path::new(module).starts_with(venv),
        "twinreg imported from {module}, not from the venv {}",
        venv.display()
    );
    assert_eq!(lines.next(), Some("None"), "runtime dependencies declared");
}

#[tokio::test]
async fn python_client_keeps_an_instance_alive_watches_and_deregisters() {
    let python = tokio::task::spawn_blocking(venv_python).await.unwrap();
    let env = Env::start().await;
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_certs(&env, certs.path(), SERVICE);

    // A peer instance before the driver starts.
    let peer = env.gw.client(PEER);
    let r = peer
        .put_json(
            &path(PEER, "bill-1"),
            &json!({"address": "10.0.0.5", "port": 8080}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let mut cmd = Command::new(python);
    cmd.args(["-I", "-B"])
        .arg(repo().join("clients/python/tests/live_driver.py"))
        .arg("--url")
        .arg(format!("https://127.0.0.1:{}", env.gw.addr.port()))
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg("--ca")
        .arg(&ca)
        .args([
            "--service",
            SERVICE,
            "--id",
            ID,
            "--peer",
            PEER,
            "--other",
            PEER,
        ])
        .args(["--ttl", &TTL.to_string()]);
    let mut d = Child::spawn("the Python driver", cmd);

    // The installed package, not the source tree.
    let module = d
        .expect_line("the module line", |l| l.starts_with("module "))
        .await;
    let venv = python.parent().unwrap().parent().unwrap();
    assert!(
        Path::new(module.trim_start_matches("module ")).starts_with(venv),
        "{module}: not the venv's {}\n{}",
        venv.display(),
        d.transcript()
    );
    d.expect_exact("version ", "version 0.1.0 0.1.0").await;

    // Errors name twinreg's code and field, as attributes and in their text.
    d.expect_exact(
        "error port ",
        "error port type=InvalidRequestError code=invalid_request field=port status=400 \
         retryable=False permanent=True",
    )
    .await;
    let text = d
        .expect_line("str port", |l| l.starts_with("str port "))
        .await;
    assert!(
        text.contains("invalid_request")
            && text.contains("field port")
            && text.contains("1 to 65535"),
        "{text}"
    );
    d.expect_exact(
        "error service ",
        "error service type=InvalidRequestError code=invalid_request field=service status=400 \
         retryable=False permanent=True",
    )
    .await;
    d.expect_exact(
        "error forbidden ",
        "error forbidden type=ForbiddenError code=forbidden field=None status=403 \
         retryable=False permanent=True",
    )
    .await;
    let text = d
        .expect_line("str forbidden", |l| l.starts_with("str forbidden "))
        .await;
    assert!(
        text.contains(": forbidden") && text.contains("HTTP 403"),
        "{text}"
    );
    d.expect_exact(
        "error unknown ",
        "error unknown type=UnknownInstanceError code=unknown_instance field=None status=404 \
         retryable=False permanent=False",
    )
    .await;
    // Four requests without a body, one kept-alive connection.
    d.expect_exact(
        "error reuse ",
        "error reuse type=UnknownInstanceError code=unknown_instance field=None status=404 \
         retryable=False permanent=False",
    )
    .await;
    d.expect_exact("keepalive ", "keepalive requests=4 connections=1")
        .await;
    // Nothing listening: a transport error, not a TwinregError.
    d.expect_exact(
        "transport-error ",
        "transport-error type=TransportError cause=ConnectionRefusedError twinreg_error=False",
    )
    .await;

    // KeepAlive registered it, in both registries.
    let registered = format!("registered {SERVICE}/{ID} ttl={TTL}s count=1 degraded=false");
    d.expect_exact(&format!("registered {SERVICE}/{ID} "), &registered)
        .await;
    wait_registered_in_both(
        &env,
        "the driver's instance in etcd and Consul",
        &registration(),
    )
    .await;

    // It lists itself, counts the services, drains and undrains itself.
    let listed = d
        .expect_line("its listing", |l| l.starts_with("listed "))
        .await;
    assert!(
        with_index(
            &listed,
            &format!("listed {SERVICE}: {ID} 127.0.0.1:9000 drained=False")
        ),
        "{listed}\n{}",
        d.transcript()
    );
    d.expect_exact("services ", &format!("services {PEER}=1 {SERVICE}=1"))
        .await;
    d.expect_exact(
        "drain ",
        &format!("drain {SERVICE}/{ID} drained=True listed_drained=True"),
    )
    .await;
    d.expect_exact(
        "undrain ",
        &format!("undrain {SERVICE}/{ID} drained=False listed_drained=False"),
    )
    .await;
    d.expect_line("ready", |l| l == "ready").await;

    // The watch: the peer as it was, then each change.
    let peer_line =
        |listing: &'static str| move |l: &str| with_index(l, &format!("peer {PEER}: {listing}"));
    d.expect_line(
        "the peer's first instance",
        peer_line("1 instances [bill-1 10.0.0.5:8080]"),
    )
    .await;
    let r = peer
        .put_json(
            &path(PEER, "bill-2"),
            &json!({"address": "10.0.0.6", "port": 8081}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    d.expect_line(
        "the peer's second instance",
        peer_line("2 instances [bill-1 10.0.0.5:8080, bill-2 10.0.0.6:8081]"),
    )
    .await;

    // Heartbeats every ttl/3 keep it alive well past its TTL, without registering again.
    let since = kept_alive_past_ttl(&env, &mut d, SERVICE, ID, TTL).await;
    let beats = since.iter().filter(|l| l.starts_with("heartbeat ")).count();
    assert!(
        beats >= 3,
        "{beats} heartbeats in {}s with a {TTL}s TTL\n{}",
        TTL + 3,
        d.transcript()
    );

    // Deregistered behind its back: the next heartbeat gets 404 unknown_instance and KeepAlive
    // registers again.
    let r = env.gw.client(SERVICE).delete(&path(SERVICE, ID)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["existed"], true, "{}", r.text);
    d.expect_exact(
        &format!("registered {SERVICE}/{ID} "),
        &format!("registered {SERVICE}/{ID} ttl={TTL}s count=2 degraded=false"),
    )
    .await;
    wait_registered_in_both(
        &env,
        "the instance back in etcd and Consul",
        &registration(),
    )
    .await;

    // A peer instance leaves: the watch says so.
    let r = peer.delete(&path(PEER, "bill-1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    d.expect_line(
        "the peer without bill-1",
        peer_line("1 instances [bill-2 10.0.0.6:8081]"),
    )
    .await;

    // SIGTERM: the driver leaves the `with KeepAlive` block, which deregisters, and exits 0.
    signal(d.id(), Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "exit status {status}\n{}", d.transcript());
    d.expect_exact(
        &format!("deregistered {SERVICE}/{ID} "),
        &format!("deregistered {SERVICE}/{ID} existed=True"),
    )
    .await;
    let closed = d.expect_line("closed", |l| l.starts_with("closed ")).await;
    let heartbeats: u32 = closed
        .split_whitespace()
        .find_map(|w| w.strip_prefix("heartbeats=")?.parse().ok())
        .unwrap_or_else(|| panic!("{closed}"));
    assert!(heartbeats >= 3, "{closed}");
    assert_eq!(
        closed,
        format!("closed ok=True registered_count=2 heartbeats={heartbeats} registered=False"),
        "{}",
        d.transcript()
    );

    // Gone, as twinreg and both registries see it.
    let listing = env
        .gw
        .client(PEER)
        .get(&format!("/v1/services/{SERVICE}/instances"))
        .await;
    assert_eq!(listing.status, 200, "{}", listing.text);
    assert_eq!(listing.json["instances"], json!([]), "{}", listing.text);
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

    let all = d.transcript();
    assert!(
        !all.contains("PRIVATE KEY"),
        "key material in output\n{all}"
    );
    assert!(!all.contains("Traceback"), "a Python traceback\n{all}");
}
