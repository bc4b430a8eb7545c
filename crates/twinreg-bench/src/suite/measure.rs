//! One suite run: the servers, the measurements in order, and the report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::SuiteError;
use super::plan::{Plan, Progress, targets};
use super::servers::{self, Server, wait_ready};

/// The servers of a run and where its files go.
pub struct Run<'a> {
    plan: &'a Plan,
    dir: PathBuf,
    certs: PathBuf,
    logs: PathBuf,
    bench: PathBuf,
    twinreg: PathBuf,
    etcd: Server,
    /// Kept alive for the run; stopped on drop.
    _consul: Server,
    _echo: Server,
    a: Server,
    b: Server,
    consul_kind: String,
    /// Base URL of the Consul agent, and the curl flags that reach it.
    consul_url: String,
    curl_tls: Vec<String>,
    progress: Progress,
    /// One line per measurement, as `twinreg-bench run/baseline` printed it.
    results: Vec<Value>,
    errors: Vec<String>,
    /// Per-round values of a measure (medians are reported).
    kept: BTreeMap<&'static str, Vec<f64>>,
}

fn secs(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl<'a> Run<'a> {
    /// Checks the ports, writes certificates and configuration, starts every server and waits
    /// until each answers.
    pub fn start(plan: &'a Plan) -> Result<Run<'a>, SuiteError> {
        let mut progress = Progress::new(plan.steps());
        progress.step("start the servers");
        servers::check_ports_free()?;
        let dir = match &plan.dir {
            Some(d) => d.clone(),
            None => std::env::temp_dir().join(format!("twinreg-bench.{}", std::process::id())),
        };
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| SuiteError::Setup(e.to_string()))?;
        eprintln!("bench: working in {}", dir.display());
        let certs = dir.join("certs");
        // One client certificate per service a scenario uses: the default authorization rule
        // lets a client write the service its certificate names, so no admin grant changes the
        // path measured.
        twinreg::certs::write_dev(&certs, &["bench".into(), "paced".into(), "rss".into()])
            .map_err(|e| SuiteError::Setup(e.to_string()))?;
        let etcd_bin = servers::find("ETCD_BIN", "etcd").ok_or_else(|| {
            SuiteError::Setup("etcd not found: install etcd-server or set ETCD_BIN".into())
        })?;
        let bench = std::env::current_exe().map_err(|e| SuiteError::Setup(e.to_string()))?;
        let twinreg = servers::sibling("twinreg")?;
        let c = |n: &str| certs.join(n).display().to_string();
        let curl_tls = vec![
            "--cacert".into(),
            c("ca.pem"),
            "--cert".into(),
            c("server.pem"),
            "--key".into(),
            c("server-key.pem"),
        ];
        // Both registries speak mutual TLS, as in production (the server certificate doubles as
        // the client certificate of twinreg and of the baseline), so handshakes can be counted.
        let mut cmd = Command::new(&etcd_bin);
        let (ep, pp) = (servers::ETCD_PORT, servers::ETCD_PEER_PORT);
        cmd.args(["--name", "bench", "--data-dir"])
            .arg(dir.join("etcd"))
            .arg(format!("--listen-client-urls=https://127.0.0.1:{ep}"))
            .arg(format!("--advertise-client-urls=https://127.0.0.1:{ep}"))
            .arg(format!("--cert-file={}", c("server.pem")))
            .arg(format!("--key-file={}", c("server-key.pem")))
            .arg(format!("--trusted-ca-file={}", c("ca.pem")))
            .arg("--client-cert-auth")
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{pp}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{pp}"
            ))
            .arg(format!("--initial-cluster=bench=http://127.0.0.1:{pp}"))
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{}",
                servers::ETCD_METRICS_PORT
            ));
        let etcd = Server::spawn("etcd", cmd, &logs)?;
        wait_ready(
            &format!("https://127.0.0.1:{ep}/health"),
            &curl_tls,
            "etcd",
            &logs,
            Duration::from_secs(30),
        )?;

        let cp = servers::CONSUL_PORT;
        let (consul, consul_url, consul_kind) = match std::env::var("CONSUL_BIN") {
            Ok(bin) => {
                let mut cmd = Command::new(&bin);
                cmd.args([
                    "agent",
                    "-dev",
                    "-bind",
                    "127.0.0.1",
                    "-client",
                    "127.0.0.1",
                ])
                .args([
                    "-http-port",
                    &cp.to_string(),
                    "-dns-port",
                    "-1",
                    "-grpc-port",
                    "-1",
                ])
                .args([
                    "-server-port",
                    "18300",
                    "-serf-lan-port",
                    "18301",
                    "-serf-wan-port",
                    "18302",
                ])
                // Cumulative request counts on /v1/agent/metrics?format=prometheus.
                .args(["-hcl", "telemetry { prometheus_retention_time = \"1h\" }"]);
                (
                    Server::spawn("consul", cmd, &logs)?,
                    format!("http://127.0.0.1:{cp}"),
                    format!("consul ({bin})"),
                )
            }
            Err(_) => {
                let mut cmd = Command::new(servers::sibling("mini-consul")?);
                cmd.args(["--listen", &format!("127.0.0.1:{cp}")])
                    .args([
                        "--tls-cert",
                        &c("server.pem"),
                        "--tls-key",
                        &c("server-key.pem"),
                    ])
                    .args(["--tls-client-ca", &c("ca.pem")]);
                (
                    Server::spawn("consul", cmd, &logs)?,
                    format!("https://127.0.0.1:{cp}"),
                    "mini-consul over mutual TLS".into(),
                )
            }
        };
        wait_ready(
            &format!("{consul_url}/v1/status/leader"),
            &curl_tls,
            "consul",
            &logs,
            Duration::from_secs(30),
        )?;

        let mut cmd = Command::new(&bench);
        cmd.args([
            "echo",
            "--listen",
            &format!("127.0.0.1:{}", servers::ECHO_PORT),
        ])
        .args([
            "--cert",
            &c("server.pem"),
            "--key",
            &c("server-key.pem"),
            "--client-ca",
            &c("ca.pem"),
        ]);
        let echo = Server::spawn("echo", cmd, &logs)?;

        let config = |name: &str, ports: (u16, u16)| -> Result<PathBuf, SuiteError> {
            let path = dir.join(format!("{name}.toml"));
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\n\
                 drain_delay = \"0s\"\nshutdown_grace = \"2s\"\n\n\
                 [tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{ca}\"\n\n\
                 [etcd]\nendpoints = [\"https://127.0.0.1:{ep}\"]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\n\
                 [consul]\naddress = \"{consul_url}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\n\
                 # The load generator is one identity; the per-identity rate limit would measure itself.\n\
                 [limits]\nrequests_per_second = 0\nmax_concurrent_streams = 1024\n",
                ports.0,
                ports.1,
                cert = c("server.pem"),
                key = c("server-key.pem"),
                ca = c("ca.pem"),
            );
            std::fs::write(&path, text).map_err(|e| SuiteError::Setup(e.to_string()))?;
            Ok(path)
        };
        let a_cfg = config("a", servers::A)?;
        let b_cfg = config("b", servers::B)?;
        config("c", servers::C)?;
        let check = Command::new(&twinreg)
            .args(["check-config", "--config"])
            .arg(&a_cfg)
            .output()
            .map_err(|e| SuiteError::Setup(e.to_string()))?;
        if !check.status.success() {
            return Err(SuiteError::Setup(format!(
                "the generated configuration is refused: {}",
                String::from_utf8_lossy(&check.stderr)
            )));
        }
        let serve = |name: &str, cfg: &Path| -> Result<Server, SuiteError> {
            let mut cmd = Command::new(&twinreg);
            cmd.args(["serve", "--config"]).arg(cfg);
            Server::spawn(name, cmd, &logs)
        };
        let a = serve("twinreg-a", &a_cfg)?;
        let b = serve("twinreg-b", &b_cfg)?;
        for (name, ports) in [("twinreg-a", servers::A), ("twinreg-b", servers::B)] {
            wait_ready(
                &format!("http://127.0.0.1:{}/readyz", ports.1),
                &[],
                name,
                &logs,
                Duration::from_secs(30),
            )?;
        }
        Ok(Run {
            plan,
            dir,
            certs,
            logs,
            bench,
            twinreg,
            etcd,
            _consul: consul,
            _echo: echo,
            a,
            b,
            consul_kind,
            consul_url,
            curl_tls,
            progress,
            results: Vec::new(),
            errors: Vec::new(),
            kept: BTreeMap::new(),
        })
    }

    fn cert(&self, name: &str) -> String {
        self.certs.join(name).display().to_string()
    }

    /// `twinreg-bench run` against twinreg (`port`) or the echo server, as client `who`.
    fn run_args(&self, port: u16, label: &str, who: &str) -> Vec<String> {
        let p = self.plan;
        vec![
            "run".into(),
            "--url".into(),
            format!("https://127.0.0.1:{port}"),
            "--label".into(),
            label.into(),
            "--ca".into(),
            self.cert("ca.pem"),
            "--cert".into(),
            self.cert(&format!("{who}.pem")),
            "--key".into(),
            self.cert(&format!("{who}-key.pem")),
            "--concurrency".into(),
            p.concurrency.to_string(),
            "--instances".into(),
            p.instances.to_string(),
            "--duration".into(),
            secs(p.duration),
            "--warmup".into(),
            secs(p.warmup),
        ]
    }

    /// The flags that reach the run's etcd over mutual TLS.
    fn etcd_args(&self) -> [String; 8] {
        [
            "--etcd".into(),
            format!("https://127.0.0.1:{}", servers::ETCD_PORT),
            "--etcd-ca".into(),
            self.cert("ca.pem"),
            "--etcd-cert".into(),
            self.cert("server.pem"),
            "--etcd-key".into(),
            self.cert("server-key.pem"),
        ]
    }

    fn baseline_args(&self) -> Vec<String> {
        let p = self.plan;
        let mut args = vec!["baseline".into()];
        args.extend(self.etcd_args());
        args.extend([
            "--concurrency".into(),
            p.concurrency.to_string(),
            "--instances".into(),
            p.instances.to_string(),
            "--duration".into(),
            secs(p.duration),
            "--warmup".into(),
            secs(p.warmup),
        ]);
        args
    }

    /// One measurement (a child `twinreg-bench`), its report line kept and summarised.
    fn bench(&mut self, measure: &str, round: u32, args: &[String]) -> Result<Value, SuiteError> {
        let mut v = self.child(args)?;
        v["measure"] = measure.into();
        v["round"] = round.into();
        let errors = v["errors"].as_u64().unwrap_or(0);
        if errors > 0 {
            let sample: String = v["error_sample"].to_string().chars().take(300).collect();
            self.errors.push(format!(
                "{measure} round {round}: {errors} errors, e.g. {sample}"
            ));
        }
        eprintln!(
            "  {measure:<32} {:>10.0} ops/s  p50 {:>7} µs  p99 {:>8} µs  errors {errors}",
            v["ops_per_sec"].as_f64().unwrap_or(0.0),
            v["p50_us"],
            v["p99_us"],
        );
        self.results.push(v.clone());
        Ok(v)
    }

    fn keep(&mut self, key: &'static str, v: &Value, field: &str) {
        if let Some(x) = v[field].as_f64() {
            self.kept.entry(key).or_default().push(x);
        }
    }

    fn median(&self, key: &str) -> Option<f64> {
        let mut v = self.kept.get(key)?.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    }

    /// Every measurement in order, then the report.
    pub fn all(mut self) -> Result<String, SuiteError> {
        let p = self.plan;
        let handshakes_start =
            metric_sum(servers::A.1, "twinreg_registry_tls_handshakes_total", &[]);
        let c1 = [
            "--concurrency".to_owned(),
            "1".into(),
            "--instances".into(),
            p.c1_instances.to_string(),
        ];
        let a = servers::A.0;
        for round in 1..=p.rounds {
            let r = format!("round {round}/{}", p.rounds);
            let base = self.baseline_args();
            let tw = self.run_args(a, "twinreg", "bench");
            let echo = self.run_args(servers::ECHO_PORT, "echo", "bench");
            let with = |mut v: Vec<String>, more: &[&str]| {
                v.extend(more.iter().map(|s| s.to_string()));
                v
            };
            let steps: Vec<(&str, &str, Vec<String>, &'static str, &'static str)> = vec![
                (
                    "register c64 baseline",
                    "register_c64_baseline",
                    with(base.clone(), &["--op", "register"]),
                    "reg_ops_base",
                    "reg_p99_base",
                ),
                (
                    "register c64 twinreg",
                    "register_c64_twinreg",
                    with(tw.clone(), &["--op", "register"]),
                    "reg_ops_a",
                    "reg_p99_a",
                ),
            ];
            for (name, measure, args, ops, p99) in steps {
                self.progress.step(&format!("{r}: {name}"));
                let v = self.bench(measure, round, &args)?;
                self.keep(ops, &v, "ops_per_sec");
                self.keep(p99, &v, "p99_us");
            }
            // (b) echo and twinreg in turn, `heartbeat_pairs` times: each pair's ratio is kept.
            // The first twinreg run registers the instances; the later ones find them alive.
            for pair in 1..=p.heartbeat_pairs {
                let of = format!("({pair}/{})", p.heartbeat_pairs);
                let op: &[&str] = if pair == 1 {
                    &["--op", "heartbeat"]
                } else {
                    &["--op", "heartbeat", "--setup", "skip"]
                };
                self.progress.step(&format!("{r}: heartbeat c64 echo {of}"));
                let e = self.bench("heartbeat_c64_echo", round, &with(echo.clone(), op))?;
                self.progress
                    .step(&format!("{r}: heartbeat c64 twinreg {of}"));
                let t = self.bench("heartbeat_c64_twinreg", round, &with(tw.clone(), op))?;
                self.keep("hb_ops_echo", &e, "ops_per_sec");
                self.keep("hb_p99_echo", &e, "p99_us");
                self.keep("hb_ops_a", &t, "ops_per_sec");
                self.keep("hb_p99_a", &t, "p99_us");
                if let (Some(e), Some(t)) = (e["ops_per_sec"].as_f64(), t["ops_per_sec"].as_f64())
                    && e > 0.0
                {
                    self.kept.entry("hb_ops_ratio").or_default().push(t / e);
                }
            }
            let c1_steps: Vec<(&str, &str, Vec<String>, &'static str)> = vec![
                (
                    "register c1 baseline",
                    "register_c1_baseline",
                    [
                        base.clone(),
                        c1.to_vec(),
                        vec!["--op".into(), "register".into()],
                    ]
                    .concat(),
                    "reg1_p50_base",
                ),
                (
                    "register c1 twinreg",
                    "register_c1_twinreg",
                    [
                        tw.clone(),
                        c1.to_vec(),
                        vec!["--op".into(), "register".into()],
                    ]
                    .concat(),
                    "reg1_p50_a",
                ),
                (
                    "heartbeat c1 baseline",
                    "heartbeat_c1_baseline",
                    [base, c1.to_vec(), vec!["--op".into(), "heartbeat".into()]].concat(),
                    "hb1_p50_base",
                ),
                (
                    "heartbeat c1 twinreg",
                    "heartbeat_c1_twinreg",
                    [tw, c1.to_vec(), vec!["--op".into(), "heartbeat".into()]].concat(),
                    "hb1_p50_a",
                ),
            ];
            for (name, measure, args, key) in c1_steps {
                self.progress.step(&format!("{r}: {name}"));
                let v = self.bench(measure, round, &args)?;
                self.keep(key, &v, "p50_us");
            }
        }

        // (d) start-up: spawn to /readyz 200.
        self.progress.step("start-up to /readyz");
        let mut cmd = Command::new(&self.twinreg);
        cmd.args(["serve", "--config"]).arg(self.dir.join("c.toml"));
        let started = Instant::now();
        let c = Server::spawn("twinreg-c", cmd, &self.logs)?;
        let startup = wait_ready(
            &format!("http://127.0.0.1:{}/readyz", servers::C.1),
            &[],
            "twinreg-c",
            &self.logs,
            Duration::from_secs(30),
        )
        .ok()
        .map(|_| started.elapsed());
        c.stop();
        eprintln!("  start-up to /readyz: {startup:?}");

        // (f) frozen etcd: register p99 on A before and while etcd is stopped.
        self.progress.step("register p99, etcd frozen");
        let reg = [
            self.run_args(a, "twinreg", "bench"),
            vec!["--op".into(), "register".into()],
        ]
        .concat();
        let healthy = self.bench("frozen_healthy", 0, &reg)?;
        self.etcd.freeze();
        let opening = [
            reg.clone(),
            vec![
                "--duration".into(),
                secs(p.freeze_open),
                "--warmup".into(),
                "0s".into(),
            ],
        ]
        .concat();
        self.bench("frozen_breaker_opening", 0, &opening)?;
        let breaker = metric_sum(
            servers::A.1,
            "twinreg_breaker_state",
            &["registry=\"etcd\""],
        );
        let frozen = self.bench("frozen_etcd", 0, &reg)?;
        self.etcd.thaw();
        self.settle(servers::A.1, "twinreg-a");
        self.settle(servers::B.1, "twinreg-b");

        // (e) registry operations per client heartbeat, on B.
        self.progress.step(&format!(
            "registry ops per heartbeat ({} instances)",
            p.paced_instances
        ));
        let paced = self.paced_args("paced", p.paced_instances, p.paced_interval);
        self.bench(
            "paced_register",
            0,
            &[
                paced.clone(),
                vec![
                    "--op".into(),
                    "register".into(),
                    "--setup".into(),
                    "only".into(),
                ],
            ]
            .concat(),
        )?;
        let (per_hb, paced_rate, sent) = self.ops_per_heartbeat(&paced)?;

        // (g) RSS of B with many instances.
        self.progress
            .step(&format!("RSS with {} instances", p.rss_instances));
        let rss_args = self.paced_args("rss", p.rss_instances, p.rss_interval);
        self.bench(
            "rss_register",
            0,
            &[
                rss_args.clone(),
                vec![
                    "--op".into(),
                    "register".into(),
                    "--setup".into(),
                    "only".into(),
                ],
            ]
            .concat(),
        )?;
        let hb = [
            rss_args,
            vec![
                "--op".into(),
                "heartbeat".into(),
                "--setup".into(),
                "skip".into(),
                "--reregister".into(),
                "--duration".into(),
                secs(p.rss_duration),
            ],
        ]
        .concat();
        self.bench("rss_heartbeat", 0, &hb)?;
        let rss = self.b.rss_mib();
        let leases_held = [servers::A.1, servers::B.1]
            .map(|admin| metric_sum(admin, "twinreg_leases_held", &[]).unwrap_or(0.0));

        // (i) B is SIGKILLed under those heartbeats, which move to A; then they stop.
        self.progress.step(&format!(
            "replica killed under {} instances",
            p.rss_instances
        ));
        let live = self.liveness(p.rss_instances, p.rss_interval)?;
        let rss_a = self.a.rss_mib();
        let consul_passing = self.consul_passing("rss");

        // (h) TLS handshakes to the registries, on A.
        let handshakes_end = metric_sum(servers::A.1, "twinreg_registry_tls_handshakes_total", &[]);
        let mut handshakes_idle = "not run (set IDLE_SECONDS)".to_owned();
        if let Some(idle) = p.idle {
            self.progress
                .step(&format!("idle {}", humantime::format_duration(idle)));
            std::thread::sleep(idle);
            let burst = [
                self.run_args(a, "twinreg", "bench"),
                vec![
                    "--op".into(),
                    "register".into(),
                    "--duration".into(),
                    "5s".into(),
                    "--warmup".into(),
                    "0s".into(),
                ],
            ]
            .concat();
            self.bench("idle_burst", 0, &burst)?;
            handshakes_idle = delta(
                handshakes_end,
                metric_sum(servers::A.1, "twinreg_registry_tls_handshakes_total", &[]),
            );
        }

        let raw = self.dir.join("results.jsonl");
        let mut f = std::fs::File::create(&raw).map_err(|e| SuiteError::Measure(e.to_string()))?;
        for r in &self.results {
            let _ = writeln!(f, "{r}");
        }

        let m = |k: &str| self.median(k);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n## twinreg bench ({} round(s), medians; {} runs at concurrency {} unless said)\n",
            p.rounds,
            secs(p.duration),
            p.concurrency
        );
        let row = |out: &mut String, cols: [&str; 5]| {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                cols[0], cols[1], cols[2], cols[3], cols[4]
            );
        };
        let c = p.concurrency;
        row(
            &mut out,
            [
                "measure",
                "baseline / ceiling",
                "twinreg",
                "ratio",
                "target",
            ],
        );
        row(&mut out, ["---", "---", "---", "---", "---"]);
        // The heartbeat ratio is the median of each alternating pair's own ratio.
        let pair_ratio = || {
            let n = self.kept.get("hb_ops_ratio").map_or(0, Vec::len);
            m("hb_ops_ratio").map(|r| format!("{r:.2}× (median of {n} pairs)"))
        };
        let pairs: [(&str, &str, &str, &str, Option<String>); 4] = [
            (
                "register ops/s, c{c} (etcd direct)",
                "reg_ops_base",
                "reg_ops_a",
                targets::REGISTER_OPS,
                None,
            ),
            (
                "register p99 µs, c{c}",
                "reg_p99_base",
                "reg_p99_a",
                targets::NONE,
                None,
            ),
            (
                "heartbeat ops/s, c{c} (echo)",
                "hb_ops_echo",
                "hb_ops_a",
                targets::HEARTBEAT_OPS,
                pair_ratio(),
            ),
            (
                "heartbeat p99 µs, c{c} (echo)",
                "hb_p99_echo",
                "hb_p99_a",
                targets::NONE,
                None,
            ),
        ];
        for (name, base, tw, target, shown) in pairs {
            row(
                &mut out,
                [
                    &name.replace("{c}", &c.to_string()),
                    &num(m(base)),
                    &num(m(tw)),
                    &shown.unwrap_or_else(|| ratio(m(tw), m(base))),
                    target,
                ],
            );
        }
        for (name, base, tw) in [
            (
                "register p50, c1 (etcd direct)",
                "reg1_p50_base",
                "reg1_p50_a",
            ),
            (
                "heartbeat p50, c1 (etcd keep-alive)",
                "hb1_p50_base",
                "hb1_p50_a",
            ),
        ] {
            let plus = match (m(base), m(tw)) {
                (Some(b), Some(t)) => format!("{t:.0} µs ({:+.0} µs)", t - b),
                _ => "n/a".into(),
            };
            row(
                &mut out,
                [
                    name,
                    &format!("{} µs", num(m(base))),
                    &plus,
                    &ratio(m(tw), m(base)),
                    targets::C1_P50,
                ],
            );
        }
        let startup = startup.map_or("n/a".into(), |d| format!("{} ms", d.as_millis()));
        row(
            &mut out,
            [
                "start-up, spawn to /readyz 200",
                "—",
                &startup,
                "—",
                targets::STARTUP,
            ],
        );
        row(
            &mut out,
            [
                &format!(
                    "registry requests per client heartbeat ({} inst., ttl {}, every ttl/3), from etcd's and Consul's own counts",
                    p.paced_instances,
                    secs(p.paced_interval * 3)
                ),
                "—",
                &format!("{per_hb}; sent {paced_rate} over {sent} heartbeats"),
                "—",
                targets::OPS_PER_HEARTBEAT,
            ],
        );
        let (fb, fd) = (healthy["p99_us"].as_f64(), frozen["p99_us"].as_f64());
        row(
            &mut out,
            [
                &format!(
                    "register p99 µs, c{c}, etcd frozen (healthy; breaker {})",
                    num(breaker)
                ),
                &num(fb),
                &num(fd),
                &ratio(fd, fb),
                targets::FROZEN,
            ],
        );
        let rss = rss.map_or("n/a".into(), |(now, peak)| {
            format!("{now:.1} MiB ({peak:.1} MiB)")
        });
        row(
            &mut out,
            [
                &format!("RSS, {} instances heartbeating (peak)", p.rss_instances),
                "—",
                &rss,
                "—",
                targets::RSS,
            ],
        );
        let rss_a = rss_a.map_or("n/a".into(), |(now, peak)| {
            format!("{now:.1} MiB ({peak:.1} MiB)")
        });
        row(
            &mut out,
            [
                &format!(
                    "RSS of the survivor after taking over {} instances and expiring them (peak)",
                    p.rss_instances
                ),
                "—",
                &rss_a,
                "—",
                targets::RSS,
            ],
        );
        row(
            &mut out,
            [
                &format!(
                    "etcd leases held with {} instances registered (twinreg-a, twinreg-b)",
                    p.rss_instances
                ),
                "—",
                &format!(
                    "{} in etcd ({:.0}, {:.0}); {} TTL classes",
                    live["etcd_leases_at_start"],
                    leases_held[0],
                    leases_held[1],
                    twinreg::registry::etcd::LEASE_TTLS.len()
                ),
                "—",
                targets::LEASES,
            ],
        );
        row(
            &mut out,
            [
                &format!(
                    "replica SIGKILLed under {} instances heartbeating: lost / deleted / heartbeat errors after",
                    p.rss_instances
                ),
                "—",
                &format!(
                    "{} / {} / {} of {}",
                    live["lost"],
                    live["deleted_while_heartbeating"],
                    live["errors_after_kill"],
                    live["heartbeats_after_kill"]
                ),
                "—",
                targets::LOST,
            ],
        );
        let ms = |k: &str| {
            live[k]
                .as_i64()
                .map_or("n/a".into(), |v| format!("{v:+} ms"))
        };
        row(
            &mut out,
            [
                &format!(
                    "expiry after the last heartbeat, {} instances stopping at once, past ttl {}: p50 / p99 / max (never expired)",
                    p.rss_instances,
                    secs(p.rss_interval * 3)
                ),
                "—",
                &format!(
                    "{} / {} / {} ({}); Consul passing after: {}",
                    ms("expiry_late_ms_p50"),
                    ms("expiry_late_ms_p99"),
                    ms("expiry_late_ms_max"),
                    live["never_expired"],
                    consul_passing.map_or("n/a".into(), |n| n.to_string())
                ),
                "—",
                targets::EXPIRY,
            ],
        );
        row(
            &mut out,
            [
                "registry TLS handshakes: at start-up / during runs / after idle + burst",
                "—",
                &format!(
                    "{} / {} / {handshakes_idle}",
                    num(handshakes_start),
                    delta(handshakes_start, handshakes_end)
                ),
                "—",
                targets::HANDSHAKES,
            ],
        );
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines().find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
                })
            })
            .unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let _ = writeln!(
            out,
            "\nMachine: {cores} cores, {cpu}; Consul: {}.",
            self.consul_kind
        );
        let _ = writeln!(out, "Command: {}", p.command);
        if !self.errors.is_empty() {
            let _ = writeln!(out, "\nRuns with errors:");
            for e in &self.errors {
                let _ = writeln!(out, "- {e}");
            }
        }
        let _ = writeln!(
            out,
            "\nRaw results: {} (logs in {})",
            raw.display(),
            self.logs.display()
        );
        Ok(out)
    }

    /// `run` args for a paced scenario on B as client `who`: each instance heartbeats every
    /// `interval`, a third of its TTL, as clients are told to.
    fn paced_args(&self, who: &str, instances: u64, interval: Duration) -> Vec<String> {
        let mut v = self.run_args(servers::B.0, "twinreg-b", who);
        let ttl = (interval.as_secs() * 3).max(3);
        v.extend([
            "--service".into(),
            who.into(),
            "--instances".into(),
            instances.to_string(),
            "--ttl".into(),
            ttl.to_string(),
            "--interval".into(),
            secs(interval),
        ]);
        v
    }

    /// (e): keeps the paced instances heartbeating until B is in its steady state (no 404 for two
    /// intervals, no breaker open, no repair pending), then counts the registry operations B
    /// makes per client heartbeat over a measured paced run.
    fn ops_per_heartbeat(&mut self, paced: &[String]) -> Result<(String, String, u64), SuiteError> {
        let p = self.plan;
        let admin = servers::B.1;
        let keepalive = [
            paced.to_vec(),
            vec![
                "--op".into(),
                "heartbeat".into(),
                "--setup".into(),
                "skip".into(),
                "--reregister".into(),
                "--duration".into(),
                "1h".into(),
            ],
        ]
        .concat();
        let mut bg: Child = Command::new(&self.bench)
            .args(&keepalive)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| SuiteError::Measure(e.to_string()))?;
        let four04 = || {
            metric_sum(
                admin,
                "twinreg_http_requests_total",
                &["route=\"heartbeat\"", "status=\"404\""],
            )
        };
        let need = 2 * p.paced_interval.as_secs().max(1);
        let (mut steady, mut last) = (0u64, None);
        let deadline = Instant::now() + p.settle_max;
        while Instant::now() < deadline && steady <= need {
            std::thread::sleep(Duration::from_secs(1));
            let now = four04();
            steady = if now == last && quiet(admin) {
                steady + 1
            } else {
                0
            };
            last = now;
        }
        if steady == 0 {
            eprintln!(
                "bench: twinreg-b did not reach a steady state in {}",
                secs(p.settle_max)
            );
        }
        let _ = bg.kill();
        let _ = bg.wait();
        // What the registries themselves served (every replica's background work included:
        // lease keep-alives, announcements, the Consul replica check, watches and blocking
        // queries), and what twinreg counts of its own registry operations.
        let counts = |run: &Self| {
            [
                run.etcd_requests(),
                run.consul_requests(),
                [servers::A.1, servers::B.1]
                    .iter()
                    .filter_map(|&a| metric_sum(a, "twinreg_registry_operations_total", &[]))
                    .reduce(|x, y| x + y),
            ]
        };
        let before = counts(self);
        let measured = [
            paced.to_vec(),
            vec![
                "--op".into(),
                "heartbeat".into(),
                "--setup".into(),
                "skip".into(),
                "--reregister".into(),
                "--duration".into(),
                secs(p.paced_duration),
            ],
        ]
        .concat();
        let v = self.bench("paced_heartbeat", 0, &measured)?;
        let after = counts(self);
        let sent = v["ops"].as_u64().unwrap_or(0) + v["errors"].as_u64().unwrap_or(0);
        let per = |i: usize| match (before[i], after[i]) {
            (Some(b), Some(a)) if sent > 0 => format!("{:.4}", (a - b) / sent as f64),
            _ => "n/a".to_owned(),
        };
        let text = format!(
            "etcd {}, Consul {} (twinreg's own count of registry operations: {})",
            per(0),
            per(1),
            per(2)
        );
        let rate = format!(
            "{:.0}/s of {:.0}/s scheduled",
            v["ops_per_sec"].as_f64().unwrap_or(0.0),
            v["scheduled_per_sec"].as_f64().unwrap_or(0.0)
        );
        eprintln!(
            "  registry heartbeat operations per client heartbeat: {text} over {sent} heartbeats"
        );
        Ok((text, rate, sent))
    }

    /// gRPC messages etcd received (unary calls and stream messages alike), from its `/metrics`.
    fn etcd_requests(&self) -> Option<f64> {
        let text = http_get(servers::ETCD_METRICS_PORT, "/metrics")?;
        Some(sum_series(&text, "grpc_server_msg_received_total"))
    }

    /// HTTP requests the Consul agent served, from its Prometheus metrics.
    fn consul_requests(&self) -> Option<f64> {
        let text = self.curl(&format!(
            "{}/v1/agent/metrics?format=prometheus",
            self.consul_url
        ))?;
        Some(sum_series(&text, "consul_api_http_count"))
    }

    /// Instances of `service` Consul reports passing.
    fn consul_passing(&self, service: &str) -> Option<usize> {
        let text = self.curl(&format!(
            "{}/v1/health/service/{service}?passing",
            self.consul_url
        ))?;
        serde_json::from_str::<Vec<Value>>(&text)
            .ok()
            .map(|v| v.len())
    }

    /// A GET through curl with the registries' TLS flags; the body of a 2xx answer.
    fn curl(&self, url: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-sSf", "--max-time", "30"])
            .args(&self.curl_tls)
            .arg(url)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// (i): `twinreg-bench liveness` on the `rss` instances registered on B: heartbeats at
    /// ttl/3 through B, B SIGKILLed, the heartbeats moved to A for four TTLs, then stopped and
    /// each expiry timed.
    fn liveness(&mut self, instances: u64, interval: Duration) -> Result<Value, SuiteError> {
        let ttl = (interval.as_secs() * 3).max(3);
        let mut args: Vec<String> = vec![
            "liveness".into(),
            "--url".into(),
            format!("https://127.0.0.1:{}", servers::B.0),
            "--failover-url".into(),
            format!("https://127.0.0.1:{}", servers::A.0),
            "--kill-pid".into(),
            self.b.pid().to_string(),
            "--ca".into(),
            self.cert("ca.pem"),
            "--cert".into(),
            self.cert("rss.pem"),
            "--key".into(),
            self.cert("rss-key.pem"),
        ];
        args.extend(self.etcd_args());
        args.extend([
            "--service".into(),
            "rss".into(),
            "--instances".into(),
            instances.to_string(),
            "--ttl".into(),
            ttl.to_string(),
            "--concurrency".into(),
            self.plan.concurrency.to_string(),
            "--before-kill".into(),
            secs(interval * 2),
            "--after-kill".into(),
            secs(interval * 12),
        ]);
        let mut v = self.child(&args)?;
        v["measure"] = "liveness".into();
        eprintln!("  liveness: {v}");
        self.results.push(v.clone());
        Ok(v)
    }

    /// Runs a child `twinreg-bench` (its stderr into the run's log), its one JSON report line.
    fn child(&self, args: &[String]) -> Result<Value, SuiteError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join("twinreg-bench.log"))
            .map_err(|e| SuiteError::Measure(e.to_string()))?;
        let out = Command::new(&self.bench)
            .args(args)
            .stderr(log)
            .output()
            .map_err(|e| SuiteError::Measure(format!("twinreg-bench {args:?}: {e}")))?;
        if !out.status.success() {
            return Err(SuiteError::Measure(format!(
                "twinreg-bench {} failed; see {}",
                args.join(" "),
                self.logs.join("twinreg-bench.log").display()
            )));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| SuiteError::Measure(format!("twinreg-bench printed no report: {e}")))
    }

    /// Waits (at most `settle_max`) until no breaker is open and no repair is pending, so one
    /// scenario's recovery does not leak into the next one's numbers.
    fn settle(&self, admin: u16, name: &str) {
        let deadline = Instant::now() + self.plan.settle_max;
        while Instant::now() < deadline {
            if quiet(admin) {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!(
            "bench: {name} did not settle in {} (breakers open or repairs pending)",
            secs(self.plan.settle_max)
        );
    }
}

/// No breaker open and no repair pending on the replica whose admin port is `admin`.
fn quiet(admin: u16) -> bool {
    metric_sum(admin, "twinreg_breaker_state", &[]) == Some(0.0)
        && metric_sum(admin, "twinreg_repairs_pending", &[]).is_none_or(|n| n == 0.0)
}

/// The sum of every series of `name` in a Prometheus text.
fn sum_series(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// The sum of the series of `name` whose labels contain every one of `labels`, from the replica's
/// `/metrics`; `None` when there is no such series (or no answer).
pub fn metric_sum(admin: u16, name: &str, labels: &[&str]) -> Option<f64> {
    let text = http_get(admin, "/metrics")?;
    let mut found = None;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = l.rsplit_once(' ') else {
            continue;
        };
        let metric = series.split('{').next().unwrap_or(series);
        if metric == name && labels.iter().all(|want| series.contains(want)) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    found
}

/// A plain HTTP/1.0 GET on loopback, the body.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut all = String::new();
    s.read_to_string(&mut all).ok()?;
    let (head, body) = all.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_owned())
}

fn num(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.0}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}×", a / b),
        _ => "n/a".into(),
    }
}

fn delta(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:.0}", b - a),
        _ => "n/a".into(),
    }
}
