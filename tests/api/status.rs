//! The status page on the admin listener (`/` and `/status.json`), against real etcd and
//! mini-consul, and rendered by headless Chromium.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{Env, body, path};
use testkit::cluster::Cluster;
use testkit::consul::Consul;
use testkit::eventually;
use testkit::gateway::{Gateway, Options};

/// No anti-entropy sweep: it would copy the Consul-only instance into etcd and end the
/// disagreement these tests look for.
fn no_sweep() -> Options {
    Options {
        extra_toml: "[anti_entropy]\nenabled = false\n".into(),
        ..Default::default()
    }
}

/// `payments` with `pay-1` and `pay-2` and `orders` with `ord-1` through the gateway, and
/// `payments.consul-only` registered in Consul behind the gateway's back.
async fn populate(env: &Env) {
    let pay = env.gw.client("payments");
    for (id, port) in [("pay-1", 8080), ("pay-2", 8081)] {
        let r = pay
            .put_json(&path("payments", id), &body("10.0.0.5", port))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["degraded"], false, "{}", r.text);
    }
    let r = env
        .gw
        .client("orders")
        .put_json(&path("orders", "ord-1"), &body("10.0.0.7", 9000))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    env.consul
        .register_direct("payments", "consul-only", "10.0.0.3", 82, "60s")
        .await;
}

async fn status_json(env: &Env) -> Value {
    gateway_status(&env.gw).await
}

async fn gateway_status(gw: &Gateway) -> Value {
    let (s, b) = gw.admin_get("/status.json").await;
    assert_eq!(s, 200, "{b}");
    serde_json::from_str(&b).unwrap_or_else(|e| panic!("/status.json is not JSON ({e}): {b}"))
}

fn etcd_members(status: &Value) -> &Vec<Value> {
    status["etcd_members"]
        .as_array()
        .unwrap_or_else(|| panic!("etcd_members is a list: {status}"))
}

fn registry<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["registries"]
        .as_array()
        .expect("registries is a list")
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no registry {name}: {status}"))
}

fn service_row<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["services"]["rows"]
        .as_array()
        .expect("rows is a list")
        .iter()
        .find(|r| r["service"] == name)
}

/// `/status.json` once its (cached) table shows the populated counts.
async fn populated_status(env: &Env) -> Value {
    eventually(
        Duration::from_secs(20),
        "the status table to show the populated counts",
        || async {
            let s = status_json(env).await;
            let p = service_row(&s, "payments")?;
            (p["counts"]["consul"] == 3 && service_row(&s, "orders").is_some()).then_some(s)
        },
    )
    .await
}

/// What a page must never hold: anything that makes the browser fetch from elsewhere. (A URL as
/// text, such as an etcd member's client URL in a `<code>`, fetches nothing; one in an attribute
/// would be a link or a resource.)
fn assert_self_contained(html: &str) {
    let lower = html.to_ascii_lowercase();
    for needle in [
        "<script",
        "<link",
        "<img",
        "<iframe",
        "@import",
        "url(",
        "src=",
        "=\"http:",
        "=\"https:",
        "='http:",
        "='https:",
        "=\"//",
        "=http:",
        "=https:",
    ] {
        assert!(
            !lower.contains(needle),
            "the page references an external asset ({needle}):\n{html}"
        );
    }
}

#[tokio::test]
async fn status_shows_counts_per_registry_and_where_they_disagree() {
    let env = Env::start_with(no_sweep()).await;
    populate(&env).await;

    let s = populated_status(&env).await;
    assert_eq!(s["state"], "ready", "{s}");
    for name in ["etcd", "consul"] {
        let r = registry(&s, name);
        assert_eq!(r["state"], "up", "{r}");
        assert_eq!(r["breaker"], "closed", "{r}");
        assert_eq!(r["probe"]["ok"], true, "{r}");
        assert!(r["probe"]["latency_ms"].is_number(), "{r}");
        assert_eq!(r["repairs_pending"], 0, "{r}");
    }
    assert_eq!(registry(&s, "etcd")["role"], "primary");
    assert_eq!(s["repairs_pending"], 0);
    assert_eq!(registry(&s, "etcd")["repair_oldest_seconds"], 0.0);
    // The page names the replica; this one takes no part in the sweep, and nobody leads it.
    let replica = s["replica"].as_str().expect("the replica's id");
    assert!(replica.len() > 9, "{s}");
    assert_eq!(
        s["sweep"],
        json!({"enabled": false, "here": false, "leader": null}),
        "{s}"
    );

    // The one etcd member: the test's etcd, leader of itself, its status read.
    let members = etcd_members(&s);
    assert_eq!(members.len(), 1, "{s}");
    let m = &members[0];
    assert_eq!(m["name"], "t", "{m}");
    assert_eq!(m["client_urls"], json!([env.etcd.endpoint()]), "{m}");
    assert_eq!(m["leader"], true, "{m}");
    assert_eq!(m["learner"], false, "{m}");
    assert_eq!(m["reachable"], true, "{m}");
    assert_eq!(m["error"], Value::Null, "{m}");
    assert!(
        m["version"].as_str().is_some_and(|v| v.starts_with('3')),
        "{m}"
    );
    assert!(m["db_size_bytes"].as_i64().is_some_and(|b| b > 0), "{m}");
    let member_id = m["id"].as_str().unwrap().to_owned();
    assert!(
        !member_id.is_empty() && member_id.chars().all(|c| c.is_ascii_hexdigit()),
        "{m}"
    );
    assert!(s.get("etcd_members_error").is_none(), "{s}");

    let t = &s["services"];
    assert_eq!(t["truncated"], false, "{t}");
    assert_eq!(t["unreadable"], json!({}), "{t}");
    assert_eq!(t["disagreements"], 1, "{t}");
    let names: Vec<&str> = t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["service"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["orders", "payments"], "sorted by name: {t}");
    let p = service_row(&s, "payments").unwrap();
    assert_eq!(p["counts"], json!({"etcd": 2, "consul": 3}), "{p}");
    assert_eq!(p["merged"], 3, "{p}");
    assert_eq!(p["complete"], true, "{p}");
    assert_eq!(p["disagree"], true, "{p}");
    assert_eq!(
        p["only_in"],
        json!({"consul": {"count": 1, "ids": ["consul-only"]}}),
        "{p}"
    );
    let o = service_row(&s, "orders").unwrap();
    assert_eq!(o["counts"], json!({"etcd": 1, "consul": 1}), "{o}");
    assert_eq!(o["merged"], 1);
    assert_eq!(o["disagree"], false);
    assert_eq!(o["only_in"], json!({}));

    let certs = s["certificates"].as_array().unwrap();
    let labels: Vec<&str> = certs.iter().map(|c| c["label"].as_str().unwrap()).collect();
    assert!(labels.contains(&"server"), "{labels:?}");
    for c in certs {
        assert!(c["days_left"].as_i64().unwrap() > 14, "{c}");
        assert_eq!(c["warning"], false, "{c}");
    }

    let (status, html) = env.gw.admin_get("/").await;
    assert_eq!(status, 200, "{html}");
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(html.contains(r#"<meta http-equiv="refresh" content="10">"#));
    assert!(
        html.contains(r#"<header class="ready" id="banner">"#),
        "{html}"
    );
    for needle in [
        r#"<tr class="disagree" id="service-payments"><td><a href="/services/payments"><strong>payments</strong></a></td><td class="n">2</td><td class="n">3</td><td class="n">3</td>"#,
        r#"<tr id="service-orders"><td><a href="/services/orders"><strong>orders</strong></a></td><td class="n">1</td><td class="n">1</td><td class="n">1</td>"#,
        "DISAGREE",
        "only in consul: <code>consul-only</code>",
        "2 services, 1 disagree",
        r#"<tr id="registry-etcd">"#,
        r#"<tr id="registry-consul">"#,
        "no repair pending",
        "<code>server</code>",
        "anti-entropy sweep: off on this replica; no leader",
    ] {
        assert!(html.contains(needle), "the page lacks {needle}:\n{html}");
    }
    assert_self_contained(&html);
    assert!(
        html.contains(&format!(r#"<strong id="replica">{replica}</strong>"#)),
        "{html}"
    );
    for needle in [
        format!(r#"<tr id="member-{member_id}"><td><strong>t</strong>"#),
        format!("<code>{}</code>", env.etcd.endpoint()),
        "1 member, leader t".to_owned(),
        r#"<span class="pill good">leader</span>"#.to_owned(),
    ] {
        assert!(html.contains(&needle), "the page lacks {needle}:\n{html}");
    }
}

/// How long the page may take with a member dead: the service table's budget, and some slack.
const PAGE_BOUND: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_each_member_of_a_three_member_cluster_and_one_dead_or_frozen() {
    let (mut cluster, consul) = tokio::join!(Cluster::start(), Consul::start());
    let gw = Gateway::launch(cluster.endpoints(), consul.address(), no_sweep()).await;
    gw.wait_both_up().await;

    let s = eventually(
        Duration::from_secs(20),
        "three members, each with its status, one of them leader",
        || async {
            let s = gateway_status(&gw).await;
            let m = etcd_members(&s);
            (m.len() == 3
                && m.iter().all(|m| m["reachable"] == true)
                && m.iter().filter(|m| m["leader"] == true).count() == 1)
                .then_some(s)
        },
    )
    .await;
    let members = etcd_members(&s);
    let names: Vec<&str> = members
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["m0", "m1", "m2"], "by name: {s}");
    for (m, endpoint) in members.iter().zip(cluster.endpoints()) {
        assert_eq!(m["client_urls"], json!([endpoint]), "{m}");
        assert_eq!(m["learner"], false, "{m}");
        assert!(
            m["version"].is_string() && m["db_size_bytes"].is_i64(),
            "{m}"
        );
    }
    let leader = cluster.leader().await.expect("the cluster has a leader");
    assert_eq!(
        members[leader]["leader"], true,
        "the page names the leader the members report: {s}"
    );

    // A follower dies: the page still answers in time, listing it as unreachable.
    let dead = (leader + 1) % 3;
    cluster.kill(dead);
    let (s, html) = eventually(
        Duration::from_secs(20),
        "the dead member shown as unreachable",
        || async {
            let start = std::time::Instant::now();
            let s = gateway_status(&gw).await;
            let (_, html) = gw.admin_get("/").await;
            let took = start.elapsed();
            assert!(
                took < 2 * PAGE_BOUND,
                "/status.json and / took {took:?} with a member dead"
            );
            (etcd_members(&s)[dead]["reachable"] == false).then_some((s, html))
        },
    )
    .await;
    let members = etcd_members(&s);
    assert_eq!(
        members.len(),
        3,
        "a dead member is listed, not dropped: {s}"
    );
    let d = &members[dead];
    assert_eq!(d["name"], format!("m{dead}"), "{d}");
    assert!(d["error"].as_str().is_some_and(|e| !e.is_empty()), "{d}");
    assert_eq!(d["version"], Value::Null, "{d}");
    assert_eq!(d["leader"], false, "{d}");
    assert_eq!(members[leader]["leader"], true, "{s}");
    assert_eq!(members[leader]["reachable"], true, "{s}");
    assert!(html.contains("3 members, leader m"), "{html}");
    assert!(html.contains("1 unreachable"), "{html}");
    assert!(
        html.contains(r#"<span class="pill bad">unreachable</span>"#),
        "{html}"
    );
    assert_self_contained(&html);
    // Each request, timed alone.
    for path in ["/status.json", "/"] {
        let start = std::time::Instant::now();
        let (status, _) = gw.admin_get(path).await;
        assert_eq!(status, 200);
        assert!(
            start.elapsed() < PAGE_BOUND,
            "{path} took {:?} with a member dead",
            start.elapsed()
        );
    }

    // Back, then frozen (SIGSTOP: its sockets accept, nothing answers): its status read gives up
    // at the page's deadline, and the page still answers in time.
    cluster.restart(dead).await;
    eventually(Duration::from_secs(30), "the member back", || async {
        (etcd_members(&gateway_status(&gw).await)[dead]["reachable"] == true).then_some(())
    })
    .await;
    cluster.freeze(dead);
    let s = eventually(
        Duration::from_secs(20),
        "the frozen member shown as unreachable",
        || async {
            let start = std::time::Instant::now();
            let s = gateway_status(&gw).await;
            let took = start.elapsed();
            assert!(
                took < PAGE_BOUND,
                "/status.json took {took:?} with a member frozen"
            );
            (etcd_members(&s)[dead]["reachable"] == false).then_some(s)
        },
    )
    .await;
    let members = etcd_members(&s);
    assert_eq!(members.len(), 3, "{s}");
    assert_eq!(
        members[dead]["error"], "timed out after 1000 ms",
        "{}",
        members[dead]
    );
    cluster.thaw(dead);
}

#[tokio::test]
async fn a_service_drills_down_to_its_instances() {
    let env = Env::start_with(no_sweep()).await;
    populate(&env).await;
    let (s, b) = env.gw.admin_get("/status/services/payments").await;
    assert_eq!(s, 200, "{b}");
    let d: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(d["service"], "payments");
    assert_eq!(d["errors"], json!({}), "{d}");
    let ids: Vec<&str> = d["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["consul-only", "pay-1", "pay-2"], "{d}");
    let by_id = |id: &str| {
        d["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
            .unwrap()
            .clone()
    };
    // Registered through this replica: owned here, heard from moments ago, in both registries.
    let p1 = by_id("pay-1");
    assert_eq!(p1["address"], "10.0.0.5");
    assert_eq!(p1["port"], 8080);
    assert_eq!(p1["sources"], json!(["etcd", "consul"]), "{p1}");
    assert_eq!(p1["owned_here"], true, "{p1}");
    let ago = p1["last_heartbeat_seconds_ago"]
        .as_f64()
        .expect("known here");
    assert!((0.0..60.0).contains(&ago), "{p1}");
    // Written into Consul behind twinreg's back: nobody here knows its heartbeats.
    let c = by_id("consul-only");
    assert_eq!(c["sources"], json!(["consul"]), "{c}");
    assert_eq!(c["owned_here"], false, "{c}");
    assert_eq!(c["last_heartbeat_seconds_ago"], Value::Null, "{c}");

    let (s, html) = env.gw.admin_get("/services/payments").await;
    assert_eq!(s, 200, "{html}");
    for needle in [
        r#"<tr id="instance-pay-1"><td><strong>pay-1</strong></td><td><code>10.0.0.5:8080</code></td>"#,
        r#"<tr id="instance-consul-only">"#,
        "this replica",
        "another replica",
        "3 instances in the registries",
    ] {
        assert!(html.contains(needle), "the page lacks {needle}:\n{html}");
    }
    assert_self_contained(&html);

    // A name no service can have is the API's 400, naming the field.
    let (s, b) = env.gw.admin_get("/status/services/Not_A_Service").await;
    assert_eq!(s, 400, "{b}");
    let e: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(e["error"], "invalid_request", "{e}");
    assert_eq!(e["field"], "service", "{e}");
    // A service nobody registered has no instance, and says so.
    let (s, b) = env.gw.admin_get("/status/services/nobody").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        serde_json::from_str::<Value>(&b).unwrap()["instances"],
        json!([])
    );
}

#[tokio::test]
async fn status_names_the_sweep_leader_and_the_oldest_repairs_age() {
    let mut env = Env::start_with(Options {
        extra_toml: "[anti_entropy]\ninterval = \"1s\"\n".into(),
        ..Default::default()
    })
    .await;
    let s = eventually(Duration::from_secs(20), "a sweep leader", || async {
        let s = status_json(&env).await;
        (s["sweep"]["here"] == true).then_some(s)
    })
    .await;
    // The one replica leads, under the name it holds the election's key with.
    let replica = s["replica"].as_str().unwrap();
    assert_eq!(s["sweep"]["enabled"], true, "{s}");
    assert_eq!(s["sweep"]["leader"], format!("twinreg-{replica}"), "{s}");
    let (_, html) = env.gw.admin_get("/").await;
    assert!(
        html.contains("anti-entropy sweep: led by this replica"),
        "{html}"
    );

    // A write Consul misses waits in the repair queue, and the page says for how long.
    env.consul.kill();
    let r = env
        .gw
        .client("payments")
        .put_json(&path("payments", "late"), &body("10.0.0.9", 80))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["degraded"], true, "{}", r.text);
    let s = eventually(Duration::from_secs(20), "an aging repair", || async {
        let s = status_json(&env).await;
        (registry(&s, "consul")["repair_oldest_seconds"].as_f64()? >= 1.0).then_some(s)
    })
    .await;
    assert!(
        registry(&s, "consul")["repairs_pending"].as_u64().unwrap() >= 1,
        "{s}"
    );
    assert_eq!(registry(&s, "etcd")["repair_oldest_seconds"], 0.0, "{s}");
}

#[tokio::test]
async fn status_shows_a_registry_down_and_the_banner_degraded() {
    let mut env = Env::start_with(no_sweep()).await;
    let pay = env.gw.client("payments");
    let r = pay
        .put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(status_json(&env).await["state"], "ready");

    env.consul.kill();
    // A write while Consul is gone succeeds through etcd and leaves a repair for Consul.
    let r = pay
        .put_json(&path("payments", "pay-2"), &body("10.0.0.5", 8081))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["degraded"], true, "{}", r.text);

    let s = eventually(
        Duration::from_secs(20),
        "the probe to notice Consul is down",
        || async {
            let s = status_json(&env).await;
            (registry(&s, "consul")["state"] == "down").then_some(s)
        },
    )
    .await;
    assert_eq!(s["state"], "degraded", "{s}");
    assert!(
        s["summary"].as_str().unwrap().starts_with("Consul down"),
        "{s}"
    );
    let consul = registry(&s, "consul");
    assert_eq!(consul["probe"]["ok"], false, "{consul}");
    assert!(
        consul["probe"]["error"].as_str().unwrap().len() > 3,
        "{consul}"
    );
    assert_eq!(consul["repairs_pending"], 1, "{consul}");
    assert_eq!(s["repairs_pending"], 1, "{s}");
    let etcd = registry(&s, "etcd");
    assert_eq!(etcd["state"], "up", "{etcd}");
    assert_eq!(etcd["probe"]["ok"], true, "{etcd}");

    // Once the cached table is recomputed, Consul's counts are unknown, not zero.
    let s = eventually(
        Duration::from_secs(20),
        "the table to say Consul could not be read",
        || async {
            let s = status_json(&env).await;
            s["services"]["unreadable"]["consul"]
                .is_string()
                .then_some(s)
        },
    )
    .await;
    let p = service_row(&s, "payments").expect("payments row");
    assert_eq!(p["counts"], json!({"etcd": 2, "consul": null}), "{p}");
    assert_eq!(p["complete"], false, "{p}");
    assert_eq!(p["disagree"], false, "{p}");

    let (status, html) = env.gw.admin_get("/").await;
    assert_eq!(status, 200);
    assert!(
        html.contains(r#"<header class="degraded" id="banner">"#),
        "{html}"
    );
    assert!(html.contains("<title>twinreg: degraded</title>"));
    assert!(
        html.contains(r#"<span class="pill bad">down</span>"#),
        "{html}"
    );
    assert!(
        html.contains(r#"<span class="pill bad">failed</span>"#),
        "{html}"
    );
    assert!(html.contains("consul could not be read"), "{html}");
    assert!(
        html.contains("1 service, 1 not read from every registry"),
        "{html}"
    );
    assert!(html.contains("1 repair pending"), "{html}");
    assert_self_contained(&html);
}

#[tokio::test]
async fn status_never_shows_the_consul_token() {
    // Consul requires TLS and an ACL token; twinreg is given a wrong token, so Consul's refusals
    // (whose messages the page shows) are about that very token.
    let wrong = "0badc0de-5ec2-4e7a-9d1f-70ce11ab1e00";
    let env = crate::tls::secure_env_with(wrong, no_sweep()).await;
    eventually(Duration::from_secs(30), "etcd up", || async {
        (env.gw.readyz().await.1["registries"]["etcd"]["state"] == "up").then_some(())
    })
    .await;
    let r = env
        .gw
        .client("payments")
        .put_json(&path("payments", "pay-1"), &body("10.0.0.5", 8080))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let (s, json_text) = env.gw.admin_get("/status.json").await;
    assert_eq!(s, 200, "{json_text}");
    let status: Value = serde_json::from_str(&json_text).unwrap();
    assert!(
        status["services"]["unreadable"]["consul"].is_string(),
        "Consul refuses the wrong token: {status}"
    );
    let (s, html) = env.gw.admin_get("/").await;
    assert_eq!(s, 200);
    assert!(html.contains("<strong>payments</strong>"), "{html}");
    for text in [&json_text, &html] {
        assert!(!text.contains(wrong), "the token leaked: {text}");
        assert!(
            !text.contains("0badc0de"),
            "part of the token leaked: {text}"
        );
        assert!(!text.contains("PRIVATE KEY"), "a key leaked: {text}");
    }
    assert_self_contained(&html);
}

/// Chromium from `CHROMIUM_BIN`, else `chromium` or `chromium-browser` on PATH.
fn chromium() -> PathBuf {
    testkit::find_binary("CHROMIUM_BIN", "chromium")
        .or_else(|| testkit::find_binary("CHROMIUM_BIN", "chromium-browser"))
        .unwrap_or_else(|| {
            panic!(
                "headless Chromium is needed to test the status page and none was found \
                 (looked for CHROMIUM_BIN, then `chromium` and `chromium-browser` on PATH): \
                 run scripts/setup.sh, which installs Debian's `chromium`"
            )
        })
}

/// Runs headless Chromium on `url` with `args`; its stdout. Killed (its whole process group)
/// after 60 s.
async fn headless(bin: &Path, args: &[String], url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        "--window-size=1280,900",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0)
    .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let pid = child.id().expect("chromium started");
    match tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await {
        Ok(Ok(out)) => {
            assert!(
                out.status.success(),
                "chromium {args:?} exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
        Ok(Err(e)) => panic!("waiting for chromium: {e}"),
        Err(_) => {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("chromium {args:?} did not finish within 60 s; killed");
        }
    }
}

#[tokio::test]
async fn headless_chromium_renders_the_status_page_and_saves_a_screenshot() {
    let bin = chromium();
    let env = Env::start_with(no_sweep()).await;
    populate(&env).await;
    populated_status(&env).await;
    let url = format!("http://{}/", env.gw.admin);

    let dom = headless(&bin, &["--dump-dom".into()], &url).await;
    for needle in [
        r#"<header class="ready" id="banner">"#,
        "<strong>payments</strong>",
        "<strong>orders</strong>",
        "DISAGREE",
        "<code>consul-only</code>",
        "Registries",
        "etcd members",
        "Certificates",
    ] {
        assert!(
            dom.contains(needle),
            "the rendered DOM lacks {needle}:\n{dom}"
        );
    }

    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    headless(&bin, &[format!("--screenshot={}", shot.display())], &url).await;
    let png =
        std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        shot.display()
    );
    assert!(
        png.len() > 10 * 1024,
        "the screenshot is only {} bytes: a blank page?",
        png.len()
    );
    eprintln!("status page screenshot: {}", shot.display());
}
