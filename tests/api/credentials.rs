//! Registry credentials, with the real `twinreg serve --log-json` binary: an etcd with
//! authentication on and a role limited to the key prefix, a Consul with ACLs and the token given
//! in the configuration, in a file and in the environment. Every log line, every answer (body and
//! headers, REST and gRPC), `/metrics`, `/readyz`, the status page and `check-config`'s output is
//! searched for the secrets; wrong credentials are reported by registry, with what to check, and
//! never revealed.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tonic::Code;
use tonic_types::StatusExt;
use twinreg::api::grpc::pb;
use twinreg::api::grpc::pb::registry_client::RegistryClient;
use twinreg::certs::{CertAuthority, ClientNames};

use crate::{body, path};
use testkit::binaries::twinreg_command;
use testkit::client::{Resp, TestClient, tls_config};
use testkit::consul::Consul;
use testkit::etcd_auth::{AuthEtcd, PREFIX, USER, secret};
use testkit::gateway::{Gateway, Options};
use testkit::grpc::channel_to;
use testkit::secrets::Grep;
use testkit::serve::Serve;
use testkit::{eventually, free_port};

/// A Consul token shaped like a real SecretID (a UUID), random.
fn consul_token() -> String {
    let r = rand::random::<u128>();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        r >> 96,
        (r >> 80) & 0xffff,
        (r >> 68) & 0xfff,
        (r >> 56) & 0xfff,
        r & 0xffff_ffff_ffff
    )
}

/// How twinreg is given the Consul token.
#[derive(Debug, Clone, Copy)]
enum TokenVia {
    /// `consul.token` in the file.
    Config,
    /// `consul.token_file`, a 0600 file holding the token and a newline.
    File,
    /// `TWINREG_CONSUL__TOKEN`.
    Env,
}

/// What every run shares: a registry-side CA for Consul's TLS and twinreg's own CA.
struct Setup {
    auth: AuthEtcd,
    consul: Consul,
    /// twinreg's listener certificate and the CA its clients' certificates come from.
    ca: CertAuthority,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn start(etcd_password: &str, consul_token: &str) -> Setup {
        let registry_ca = CertAuthority::new("registry CA").unwrap();
        let (auth, consul) = tokio::join!(
            AuthEtcd::start(etcd_password),
            Consul::start_secure(&registry_ca, consul_token)
        );
        let ca = CertAuthority::new("twinreg client CA").unwrap();
        let server = ca.server(&["localhost", "127.0.0.1"]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in [
            ("ca.pem", &ca.cert_pem),
            ("server.pem", &server.cert_pem),
            ("server-key.pem", &server.key_pem),
        ] {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        Setup {
            auth,
            consul,
            ca,
            dir,
        }
    }

    /// The longest base64 line of twinreg's Consul client key: a secret too.
    fn consul_key_line(&self) -> String {
        let key = self.consul.secure.as_ref().unwrap().path("client-key.pem");
        std::fs::read_to_string(key)
            .unwrap()
            .lines()
            .max_by_key(|l| l.len())
            .unwrap()
            .to_owned()
    }

    /// Writes a configuration for one run and returns it with the environment the run needs.
    /// `etcd_password.1` false passes the password as `TWINREG_ETCD__PASSWORD` instead of in the
    /// file; `token.1` says how the Consul token is given.
    fn config(
        &self,
        name: &str,
        ports: (u16, u16),
        etcd_password: (&str, bool),
        token: (&str, TokenVia),
    ) -> (PathBuf, Vec<(String, String)>) {
        let p = |n: &str| self.dir.path().join(n).display().to_string();
        let c = self.consul.secure.as_ref().unwrap();
        let mut env = Vec::new();
        let mut etcd = format!(
            "endpoints = [\"{}\"]\nusername = \"{USER}\"\n",
            self.auth.etcd.endpoint()
        );
        match etcd_password {
            (pw, true) => etcd.push_str(&format!("password = \"{pw}\"\n")),
            (pw, false) => env.push(("TWINREG_ETCD__PASSWORD".into(), pw.into())),
        }
        let mut consul = format!(
            "address = \"{}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            self.consul.address(),
            c.path("ca.pem").display(),
            c.path("client.pem").display(),
            c.path("client-key.pem").display()
        );
        match token {
            (t, TokenVia::Config) => consul.push_str(&format!("token = \"{t}\"\n")),
            (t, TokenVia::File) => {
                let file = self.dir.path().join(format!("{name}.consul-token"));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&file)
                    .unwrap();
                writeln!(f, "{t}").unwrap();
                consul.push_str(&format!("token_file = \"{}\"\n", file.display()));
            }
            (t, TokenVia::Env) => env.push(("TWINREG_CONSUL__TOKEN".into(), t.into())),
        }
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\n\
             shutdown_grace = \"2s\"\ndrain_delay = \"0s\"\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n\
             [etcd]\n{etcd}[consul]\n{consul}\
             [anti_entropy]\ninterval = \"1s\"\n",
            ports.0,
            ports.1,
            p("server.pem"),
            p("server-key.pem"),
            p("ca.pem"),
        );
        let file = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, toml).unwrap();
        (file, env)
    }

    fn client(&self, port: u16, cn: &str) -> TestClient {
        let id = self.ca.client(&ClientNames::cn(cn)).unwrap();
        TestClient::new(
            format!("https://127.0.0.1:{port}"),
            tls_config(&self.ca.cert_pem, Some(&id)),
        )
    }

    async fn grpc(&self, port: u16, cn: &str) -> RegistryClient<tonic::transport::Channel> {
        let id = self.ca.client(&ClientNames::cn(cn)).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        RegistryClient::new(channel_to(addr, &self.ca.cert_pem, &id).await)
    }
}

/// A `twinreg` command (`check-config` here) with a clean environment plus `env`.
fn twinreg(args: &[&str], config: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = twinreg_command();
    cmd.args(args).arg("--config").arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// `twinreg serve --log-json` at debug level, its output collected line by line.
fn serve(config: &Path, env: &[(String, String)], ports: (u16, u16)) -> Serve {
    let mut env = env.to_vec();
    env.push(("TWINREG_LOG".into(), "debug".into()));
    Serve::start(config, &["--log-json"], &env, ports)
}

/// Register, heartbeat, list, long poll, deregister over REST, the same over gRPC, and some
/// refusals, each answer searched; then what landed in etcd, read as root.
async fn exercise(s: &Setup, tw: &Serve, grep: &mut Grep, id: &str) {
    let c = s.client(tw.port, "payments");
    let instance = path("payments", id);
    let r = c.put_json(&instance, &body("10.0.0.5", 8080)).await;
    grep.resp("register", &r);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["degraded"], false, "{}", r.text);
    let r = c.put(&format!("{instance}/heartbeat")).await;
    grep.resp("heartbeat", &r);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["degraded"], false, "{}", r.text);
    let r = c.get("/v1/services/payments/instances").await;
    grep.resp("list", &r);
    assert_eq!(r.status, 200, "{}", r.text);
    let listed = r.json["instances"].as_array().unwrap();
    let mine = listed.iter().find(|i| i["id"] == id).expect("listed");
    assert_eq!(
        mine["sources"],
        serde_json::json!(["etcd", "consul"]),
        "{}",
        r.text
    );
    for reg in ["etcd", "consul"] {
        assert_eq!(r.json["registries"][reg]["ok"], true, "{}", r.text);
    }
    let index = r.json["index"].as_u64().unwrap();
    let r = c.get("/v1/services").await;
    grep.resp("services", &r);
    assert_eq!(r.status, 200, "{}", r.text);
    // A long poll runs the registries' watches with the same credentials: both feed it once
    // their watches are up.
    for attempt in 1.. {
        let r = c
            .get(&format!(
                "/v1/services/payments/instances?index={index}&wait=1s"
            ))
            .await;
        grep.resp("long poll", &r);
        assert_eq!(r.status, 200, "{}", r.text);
        if ["etcd", "consul"]
            .iter()
            .all(|reg| r.json["registries"][reg]["ok"] == true)
        {
            break;
        }
        assert!(attempt < 20, "both watches feeding: {}", r.text);
    }

    // Refusals and failures have bodies too.
    let r = s
        .client(tw.port, "billing")
        .put_json(&instance, &body("10.6.6.6", 1))
        .await;
    grep.resp("forbidden", &r);
    assert_eq!(r.status, 403, "{}", r.text);
    let r = c
        .put_json(&path("payments", "bad*id"), &body("10.0.0.5", 1))
        .await;
    grep.resp("invalid", &r);
    assert_eq!(r.status, 400, "{}", r.text);
    let r = c
        .put(&format!(
            "{}/heartbeat",
            path("payments", "never-registered")
        ))
        .await;
    grep.resp("unknown instance", &r);
    assert_eq!(r.status, 404, "{}", r.text);

    // gRPC, to the same subprocess.
    let mut g = s.grpc(tw.port, "payments").await;
    let gid = format!("{id}-grpc");
    let resp = g
        .register(pb::RegisterRequest {
            service: "payments".into(),
            id: gid.clone(),
            address: "10.0.0.6".into(),
            port: 8080,
            tags: vec![],
            meta: Default::default(),
            ttl_seconds: None,
        })
        .await
        .expect("gRPC register");
    grep.debug("gRPC register", &resp);
    assert!(resp.get_ref().registries.values().all(|o| o.ok), "{resp:?}");
    let resp = g
        .heartbeat(pb::HeartbeatRequest {
            service: "payments".into(),
            id: gid.clone(),
        })
        .await
        .expect("gRPC heartbeat");
    grep.debug("gRPC heartbeat", &resp);
    let resp = g
        .list_instances(pb::ListInstancesRequest {
            service: "payments".into(),
        })
        .await
        .expect("gRPC list");
    grep.debug("gRPC list", &resp);
    let e = s
        .grpc(tw.port, "billing")
        .await
        .deregister(pb::DeregisterRequest {
            service: "payments".into(),
            id: gid.clone(),
        })
        .await
        .unwrap_err();
    grep.debug("gRPC forbidden", &e);
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let resp = g
        .deregister(pb::DeregisterRequest {
            service: "payments".into(),
            id: gid.clone(),
        })
        .await
        .expect("gRPC deregister");
    grep.debug("gRPC deregister", &resp);
    assert!(resp.get_ref().existed, "{resp:?}");

    let r = c.delete(&instance).await;
    grep.resp("deregister", &r);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["existed"], true, "{}", r.text);
    assert_eq!(r.json["degraded"], false, "{}", r.text);

    // Everything twinreg wrote is under the prefix: the instance is gone, its tombstone is there,
    // and the sweeper's election key (anti-entropy every second) too.
    let tomb = format!("{PREFIX}.tombstones/payments/{id}");
    let keys = eventually(Duration::from_secs(20), "the sweeper's key", || {
        let keys = s.auth.all_keys();
        let has = keys.iter().any(|k| k == &format!("{PREFIX}.sweeper"));
        async move { has.then_some(keys) }
    })
    .await;
    assert!(keys.contains(&tomb), "{keys:?}");
    assert!(
        !keys.contains(&format!("{PREFIX}payments/{id}")),
        "{keys:?}"
    );
    assert!(
        keys.iter().all(|k| k.starts_with(PREFIX)),
        "a key outside {PREFIX}: {keys:?}"
    );
    assert!(
        !s.consul
            .agent_services()
            .await
            .contains_key(&format!("payments.{id}"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_credentials_three_ways_and_no_secret_anywhere() {
    let password = secret("etcdpw");
    let token = consul_token();
    let s = Setup::start(&password, &token).await;
    let key_line = s.consul_key_line();
    let mut grep = Grep::new(&[
        ("etcd password", &password),
        ("Consul token", &token),
        ("Consul client key", &key_line),
    ]);

    // The role is really limited to the prefix: twinreg's own credentials cannot write elsewhere.
    let me = Some((USER, password.as_str()));
    for args in [
        &["put", "/other/x", "y"][..],
        &["put", "/services", "y"],
        &["put", "/servicesx/y", "y"],
        &["get", "/", "--prefix", "--keys-only"],
        &["user", "list"],
        &[
            "role",
            "grant-permission",
            "twinreg",
            "readwrite",
            "/other/",
        ],
    ] {
        let out = s.auth.ctl(me, args, None);
        assert!(
            !out.status.success(),
            "etcdctl {args:?} as twinreg must fail: {out:?}"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("permission denied"), "{args:?}: {err}");
    }
    s.auth
        .ok(me, &["get", PREFIX, "--prefix", "--keys-only"], None);
    // And without credentials nothing at all.
    let out = s.auth.ctl(None, &["get", PREFIX, "--prefix"], None);
    assert!(!out.status.success(), "{out:?}");

    for (run, via, etcd_in_file) in [
        ("config", TokenVia::Config, true),
        ("file", TokenVia::File, false),
        ("env", TokenVia::Env, true),
    ] {
        let ports = (free_port(), free_port());
        let (config, env) = s.config(run, ports, (&password, etcd_in_file), (&token, via));
        let out = twinreg(&["check-config"], &config, &env).output().unwrap();
        grep.output(&format!("check-config ({run})"), &out);
        assert!(out.status.success(), "{via:?}: {out:?}");

        let tw = serve(&config, &env, ports);
        tw.wait_states(&[("etcd", "up"), ("consul", "up")]).await;
        exercise(&s, &tw, &mut grep, &format!("pay-{run}")).await;
        grep.admin(&tw).await;
        let (lines, _) = tw.stop();
        assert!(
            lines.iter().any(|l| l.contains("\"level\":\"DEBUG\"")),
            "{via:?}: debug logging was on"
        );
        assert!(
            lines.iter().any(|l| l.contains("\"status\":200")),
            "{via:?}: the requests were logged"
        );
        grep.log(&format!("the log ({run})"), &lines);
    }

    // check-config refusing a configuration says which key, not the value.
    let ports = (free_port(), free_port());
    let (config, mut env) = s.config("both", ports, (&password, true), (&token, TokenVia::File));
    env.push(("TWINREG_CONSUL__TOKEN".into(), token.clone()));
    let out = twinreg(&["check-config"], &config, &env).output().unwrap();
    grep.output("check-config (token and token_file)", &out);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("consul.token_file"));
    // A password that looks like a number reaches serde as one: refused, by key, not shown.
    let digits = format!("{}", rand::random::<u64>() | (1 << 62));
    let (config, env) = s.config(
        "digits",
        ports,
        (&digits, false),
        (&token, TokenVia::Config),
    );
    let out = twinreg(&["check-config"], &config, &env).output().unwrap();
    let mut digits_grep = Grep::new(&[("numeric etcd password", &digits)]);
    digits_grep.output("check-config (numeric password)", &out);
    grep.output("check-config (numeric password)", &out);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("etcd.password") && err.contains("must be a string"),
        "{err}"
    );

    eprintln!(
        "searched {} log lines and {} answers and outputs for the secrets",
        grep.lines, grep.answers
    );
    assert!(grep.lines >= 100, "only {} log lines", grep.lines);
    assert!(grep.answers >= 60, "only {} answers", grep.answers);
}

/// Registers `id` until the answer contains every one of `want` (until the registry's pool has
/// tried to connect and been refused), searching every answer; returns the last.
async fn register_until(
    c: &TestClient,
    grep: &mut Grep,
    what: &str,
    id: &str,
    want: &[&str],
) -> Resp {
    for attempt in 1.. {
        let r = c
            .put_json(&path("payments", id), &body("10.0.0.5", 8080))
            .await;
        grep.resp(what, &r);
        if want.iter().all(|w| r.text.contains(w)) {
            return r;
        }
        assert!(attempt < 100, "{what}: never said {want:?}: {}", r.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_named_with_what_to_check_and_never_shown() {
    let password = secret("etcdpw");
    let token = consul_token();
    let s = Setup::start(&password, &token).await;
    let wrong_password = secret("wrongpw");
    let wrong_token = consul_token();
    let mut grep = Grep::new(&[
        ("etcd password", &password),
        ("wrong etcd password", &wrong_password),
        ("Consul token", &token),
        ("wrong Consul token", &wrong_token),
    ]);
    let etcd_hint = "etcd.password";
    let consul_hint = "consul.token";

    // A wrong etcd password: Consul takes the writes, etcd's error says what to check.
    let ports = (free_port(), free_port());
    let (config, env) = s.config(
        "bad-etcd",
        ports,
        (&wrong_password, true),
        (&token, TokenVia::Config),
    );
    let tw = serve(&config, &env, ports);
    tw.wait_states(&[("consul", "up")]).await;
    let c = s.client(tw.port, "payments");
    let r = register_until(
        &c,
        &mut grep,
        "register, wrong etcd password",
        "pay-1",
        &["authentication failed", etcd_hint],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["degraded"], true, "{}", r.text);
    assert_eq!(r.json["registries"]["consul"]["ok"], true, "{}", r.text);
    let e = r.json["registries"]["etcd"]["error"].as_str().unwrap();
    assert!(
        e.contains("etcd") && e.contains("authentication failed") && e.contains(etcd_hint),
        "{e}"
    );
    let (status, _, ready) = tw.admin_get("/readyz").await;
    assert_eq!(status, 200, "Consul alone is enough to be ready: {ready}");
    grep.admin(&tw).await;
    let (lines, _) = tw.stop();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("registry not reachable yet") && l.contains(etcd_hint)),
        "the log says what to check"
    );
    grep.log("the log (wrong etcd password)", &lines);

    // A wrong Consul token, from a file: etcd takes the writes.
    let ports = (free_port(), free_port());
    let (config, env) = s.config(
        "bad-consul",
        ports,
        (&password, true),
        (&wrong_token, TokenVia::File),
    );
    let tw = serve(&config, &env, ports);
    tw.wait_states(&[("etcd", "up")]).await;
    let c = s.client(tw.port, "payments");
    let r = register_until(
        &c,
        &mut grep,
        "register, wrong Consul token",
        "pay-2",
        &["403", consul_hint],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["degraded"], true, "{}", r.text);
    assert_eq!(r.json["registries"]["etcd"]["ok"], true, "{}", r.text);
    let e = r.json["registries"]["consul"]["error"].as_str().unwrap();
    assert!(
        e.contains("consul") && e.contains("403") && e.contains(consul_hint),
        "{e}"
    );
    grep.admin(&tw).await;
    let (lines, _) = tw.stop();
    grep.log("the log (wrong Consul token)", &lines);

    // Both wrong, the token from the environment: 503 naming both, REST and gRPC.
    let ports = (free_port(), free_port());
    let (config, env) = s.config(
        "bad-both",
        ports,
        (&wrong_password, false),
        (&wrong_token, TokenVia::Env),
    );
    let tw = serve(&config, &env, ports);
    tw.wait_states(&[]).await;
    let c = s.client(tw.port, "payments");
    let r = register_until(
        &c,
        &mut grep,
        "register, both wrong",
        "pay-3",
        &["authentication failed", etcd_hint, "403", consul_hint],
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json["error"], "unavailable", "{}", r.text);
    assert!(r.headers.contains_key("retry-after"));
    let regs = &r.json["registries"];
    let etcd_err = regs["etcd"]["error"].as_str().unwrap_or_default();
    let consul_err = regs["consul"]["error"].as_str().unwrap_or_default();
    assert!(etcd_err.contains(etcd_hint), "{}", r.text);
    assert!(consul_err.contains(consul_hint), "{}", r.text);
    let e = s
        .grpc(tw.port, "payments")
        .await
        .register(pb::RegisterRequest {
            service: "payments".into(),
            id: "pay-3".into(),
            address: "10.0.0.5".into(),
            port: 8080,
            tags: vec![],
            meta: Default::default(),
            ttl_seconds: None,
        })
        .await
        .unwrap_err();
    grep.debug("gRPC register, both wrong", &e);
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // Each registry's outcome is in the status's google.rpc ErrorInfo.
    let info = e.get_details_error_info().expect("an ErrorInfo");
    assert!(
        info.metadata["registry.etcd"].contains(etcd_hint)
            && info.metadata["registry.consul"].contains(consul_hint),
        "{e:?}"
    );
    // etcd never connected. (Consul answers `status/leader` whatever the token, and a refusal
    // counts as an answer, so `/readyz` may still say ready: the outcomes say why writes fail.)
    let (_, _, ready) = tw.admin_get("/readyz").await;
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_ne!(ready["registries"]["etcd"]["state"], "up", "{ready}");
    grep.admin(&tw).await;
    let (lines, _) = tw.stop();
    grep.log("the log (both wrong)", &lines);

    // Nothing was written with the wrong credentials; the right ones wrote what they took.
    let keys = s.auth.all_keys();
    assert!(
        keys.contains(&format!("{PREFIX}payments/pay-2")),
        "{keys:?}"
    );
    assert!(
        !keys
            .iter()
            .any(|k| k.ends_with("/pay-1") || k.ends_with("/pay-3"))
    );
    let services = s.consul.agent_services().await;
    assert!(services.contains_key("payments.pay-1"), "{services:?}");
    assert!(!services.contains_key("payments.pay-2"));
    assert!(!services.contains_key("payments.pay-3"));
    eprintln!(
        "searched {} log lines and {} answers for the secrets",
        grep.lines, grep.answers
    );
    assert!(grep.lines >= 30 && grep.answers >= 15);
}

/// etcd forgets an auth token unused for `--auth-token-ttl` (300 s by default; a JWT token lapses
/// at its `ttl` however much it is used): twinreg authenticates again and retries, instead of
/// failing every call on that connection with "invalid auth token" until it is restarted.
#[tokio::test]
async fn expired_etcd_auth_tokens_are_renewed() {
    let password = secret("etcdpw");
    let (auth, consul) = tokio::join!(
        AuthEtcd::start_with_args(&password, &["--auth-token-ttl=1"]),
        Consul::start()
    );
    let gw = Gateway::launch(
        vec![auth.etcd.endpoint()],
        consul.address(),
        Options {
            etcd_extra: format!("username = \"{USER}\"\npassword = \"{password}\"\n"),
            ..Default::default()
        },
    )
    .await;
    gw.wait_both_up().await;
    let c = gw.client("payments");
    // Each pooled connection's token lapses between uses: more than a second apart.
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let r = c
            .put_json(
                &path("payments", &format!("pay-{i}")),
                &body("10.0.0.5", 8080),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["registries"]["etcd"]["ok"], true, "{i}: {}", r.text);
        let r = c
            .put(&format!(
                "{}/heartbeat",
                path("payments", &format!("pay-{i}"))
            ))
            .await;
        assert_eq!(r.json["registries"]["etcd"]["ok"], true, "{i}: {}", r.text);
    }
    let keys = auth.all_keys();
    assert!(
        keys.contains(&format!("{PREFIX}payments/pay-5")),
        "{keys:?}"
    );
}

/// With `--client-cert-auth`, etcd takes the user from the client certificate's CN when no
/// password is sent: twinreg given only `etcd.cert`/`etcd.key` (CN `twinreg`) is the user
/// `twinreg`, limited to its role's prefix like with a password.
#[tokio::test]
async fn an_etcd_client_certificate_is_the_twinreg_user() {
    let ca = CertAuthority::new("registry CA").unwrap();
    let unused = secret("unused");
    let (auth, consul) = tokio::join!(AuthEtcd::start_tls(&ca, &unused), Consul::start());
    let t = auth.etcd.tls.as_ref().unwrap();
    let gw = Gateway::launch(
        vec![auth.etcd.endpoint()],
        consul.address(),
        Options {
            etcd_extra: format!(
                "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                t.path("ca.pem").display(),
                t.path("client.pem").display(),
                t.path("client-key.pem").display()
            ),
            ..Default::default()
        },
    )
    .await;
    gw.wait_both_up().await;
    let c = gw.client("payments");
    let instance = path("payments", "pay-1");
    let r = c.put_json(&instance, &body("10.0.0.5", 8080)).await;
    assert_eq!(r.json["degraded"], false, "{}", r.text);
    let r = c.put(&format!("{instance}/heartbeat")).await;
    assert_eq!(r.json["degraded"], false, "{}", r.text);
    let r = c.delete(&instance).await;
    assert_eq!(r.json["degraded"], false, "{}", r.text);
    assert!(
        auth.all_keys()
            .contains(&format!("{PREFIX}.tombstones/payments/pay-1"))
    );
    // The certificate alone, no password: the same user, the same limits.
    let out = auth.ctl(None, &["put", "/other/x", "y"], None);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
    auth.ok(None, &["get", PREFIX, "--prefix", "--keys-only"], None);
}
