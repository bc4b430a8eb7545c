//! Certificate rotation: the server certificate, the client-CA bundle and the registry client
//! certificates are replaced on disk (or on SIGHUP) while clients keep working; established
//! connections stay up; new handshakes use the new material; a bad file is rejected and the old
//! certificates stay in service.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use twinreg::certs::{CertAuthority, ClientNames, Issued};

use crate::{Env, body, path};
use testkit::client::h2_get;
use testkit::client::{TestClient, tls_config};
use testkit::consul::Consul;
use testkit::etcd::Etcd;
use testkit::gateway::{Gateway, Options};
use testkit::proxy::Proxy;
use testkit::replace_file;
use testkit::{eventually, metric};

fn fast_reload() -> Options {
    Options {
        tls_extra: "reload_interval = \"200ms\"".into(),
        // The load below is one identity, as fast as it goes.
        extra_toml: "[limits]\nrequests_per_second = 0\n".into(),
        ..Options::default()
    }
}

/// Opens a new TLS connection to the gateway as `identity`, trusting `ca_pem`; the certificate
/// it served, once a request on it was answered (with TLS 1.3 a refused client certificate only
/// shows at the first read).
async fn handshake(gw: &Gateway, ca_pem: &str, identity: &Issued) -> Result<Vec<u8>, String> {
    let mut tls = tls_config(ca_pem, Some(identity));
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(gw.addr)
        .await
        .map_err(|e| e.to_string())?;
    let stream = TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let served = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    h2_get(&mut send).await?;
    Ok(served)
}

/// Registers and heartbeats in a loop, on one pooled client and on a new connection each round,
/// counting failures, until `stop`.
fn load(
    gw: &Gateway,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>, Arc<AtomicU64>) {
    let pooled = gw.client("payments");
    let fresh = {
        let id = gw.issue(&ClientNames::cn("payments"));
        let (base, ca) = (
            format!("https://127.0.0.1:{}", gw.addr.port()),
            gw.ca.cert_pem.clone(),
        );
        move || TestClient::new(base.clone(), tls_config(&ca, Some(&id)))
    };
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (o, f) = (ok.clone(), failed.clone());
    let task = tokio::spawn(async move {
        let mut n = 0u32;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let id = format!("load-{}", n % 8);
            let reg = pooled
                .try_request(
                    "PUT",
                    &path("payments", &id),
                    Some(serde_json::to_vec(&body("10.0.0.1", 80)).unwrap()),
                )
                .await;
            let hb = fresh()
                .try_request("PUT", &format!("{}/heartbeat", path("payments", &id)), None)
                .await;
            for r in [reg, hb] {
                match r {
                    Ok(r) if r.status == 200 => o.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => {
                        eprintln!("load: {} {}", r.status, r.text);
                        f.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("load: {e}");
                        f.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }
    });
    (task, ok, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_and_client_ca_rotate_under_load() {
    let env = Env::start_with(fast_reload()).await;
    let gw = &env.gw;
    let dir = gw.dir.path();
    let me = gw.issue(&ClientNames::cn("payments"));
    let before = handshake(gw, &gw.ca.cert_pem, &me)
        .await
        .expect("first handshake");

    // A connection opened before the rotation, kept open across it.
    let mut tls = tls_config(&gw.ca.cert_pem, Some(&me));
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let stream = TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut kept, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    assert_eq!(h2_get(&mut kept).await, Ok(200));

    // A client whose certificate comes from a CA the gateway does not trust yet.
    let other_ca = CertAuthority::new("second client CA").unwrap();
    let newcomer = other_ca.client(&ClientNames::cn("payments")).unwrap();
    assert!(
        handshake(gw, &gw.ca.cert_pem, &newcomer).await.is_err(),
        "not trusted yet"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (task, ok, failed) = load(gw, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Rotate: a new server key and certificate, and a client-CA bundle that adds the second CA.
    let renewed = gw.ca.server(&["localhost", "127.0.0.1"]).unwrap();
    replace_file(&dir.join("server-key.pem"), &renewed.key_pem);
    replace_file(&dir.join("server.pem"), &renewed.cert_pem);
    replace_file(
        &dir.join("ca.pem"),
        &format!("{}{}", gw.ca.cert_pem, other_ca.cert_pem),
    );
    eventually(
        Duration::from_secs(10),
        "new handshakes to get the new certificate",
        || async {
            let served = handshake(gw, &gw.ca.cert_pem, &me).await.ok()?;
            (served == renewed.der).then_some(())
        },
    )
    .await;
    assert_ne!(before, renewed.der);
    assert!(
        handshake(gw, &gw.ca.cert_pem, &newcomer).await.is_ok(),
        "the new client CA is trusted"
    );
    assert_eq!(
        h2_get(&mut kept).await,
        Ok(200),
        "the connection opened before is still up"
    );

    // A bad file is rejected: the renewed certificate stays in service.
    let rejected = gw.certificate_reloads("rejected").await;
    replace_file(
        &dir.join("server.pem"),
        "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n",
    );
    eventually(
        Duration::from_secs(10),
        "the bad file to be rejected",
        || async { (gw.certificate_reloads("rejected").await > rejected).then_some(()) },
    )
    .await;
    assert_eq!(
        handshake(gw, &gw.ca.cert_pem, &me).await,
        Ok(renewed.der.clone())
    );
    // So is a key that does not match the certificate. The count is read before the files
    // change: the reloader may see the change before this test reads it again, and it reports a
    // bad pair once. In between, the renewed certificate with its own key is a valid pair.
    let stranger = gw.ca.server(&["localhost"]).unwrap();
    let rejected = gw.certificate_reloads("rejected").await;
    replace_file(&dir.join("server.pem"), &renewed.cert_pem);
    replace_file(&dir.join("server-key.pem"), &stranger.key_pem);
    eventually(
        Duration::from_secs(10),
        "the mismatched key to be rejected",
        || async { (gw.certificate_reloads("rejected").await > rejected).then_some(()) },
    )
    .await;
    assert_eq!(
        handshake(gw, &gw.ca.cert_pem, &me).await,
        Ok(renewed.der.clone())
    );

    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed during the rotation"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "the load ran: {}",
        ok.load(Ordering::Relaxed)
    );
    assert!(gw.certificate_reloads("ok").await >= 1.0);
    let (_, text) = gw.admin_get("/metrics").await;
    for cert in ["server", "client_ca"] {
        assert!(
            metric(
                &text,
                "twinreg_certificate_expiry_seconds",
                &[("cert", cert)]
            ) > 1.7e9,
            "{cert} expiry exported"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_server_certificate() {
    // File checks off: only SIGHUP reloads.
    let env = Env::start_with(Options {
        tls_extra: "reload_interval = \"0s\"".into(),
        ..Options::default()
    })
    .await;
    let gw = &env.gw;
    let me = gw.issue(&ClientNames::cn("payments"));
    let before = handshake(gw, &gw.ca.cert_pem, &me).await.unwrap();
    let renewed = gw.ca.server(&["localhost", "127.0.0.1"]).unwrap();
    replace_file(&gw.dir.path().join("server-key.pem"), &renewed.key_pem);
    replace_file(&gw.dir.path().join("server.pem"), &renewed.cert_pem);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        handshake(gw, &gw.ca.cert_pem, &me).await,
        Ok(before),
        "no file checks"
    );
    // The gateway runs in this process: the signal goes to the test process.
    testkit::signal(std::process::id(), nix::sys::signal::Signal::SIGHUP);
    eventually(Duration::from_secs(10), "SIGHUP to reload", || async {
        let served = handshake(gw, &gw.ca.cert_pem, &me).await.ok()?;
        (served == renewed.der).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_client_certificates_rotate_and_reconnects_use_them() {
    let ca = CertAuthority::new("registry CA").unwrap();
    let (etcd, consul) = tokio::join!(Etcd::start_tls(&ca), Consul::start());
    // twinreg reaches etcd through a proxy, so the test can cut its connections.
    let proxy = Proxy::start(format!("127.0.0.1:{}", etcd.client_port).parse().unwrap()).await;
    let mine = tempfile::tempdir().unwrap();
    let p = |n: &str| mine.path().join(n);
    let first = ca.client(&ClientNames::cn("twinreg")).unwrap();
    std::fs::write(p("ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(p("client.pem"), &first.cert_pem).unwrap();
    std::fs::write(p("client-key.pem"), &first.key_pem).unwrap();
    let opts = Options {
        etcd_extra: format!(
            "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            p("ca.pem").display(),
            p("client.pem").display(),
            p("client-key.pem").display()
        ),
        ..fast_reload()
    };
    let gw = Gateway::launch(
        vec![format!("https://{}", proxy.addr())],
        consul.address(),
        opts,
    )
    .await;
    gw.wait_both_up().await;
    let c = gw.client("payments");
    let etcd_ok = |r: &testkit::client::Resp| r.json["registries"]["etcd"]["ok"] == true;
    let r = c
        .put_json(&path("payments", "a"), &body("10.0.0.1", 80))
        .await;
    assert!(etcd_ok(&r), "{}", r.text);

    // A renewed certificate from the same CA: reloaded, and reconnects work with it.
    // Replaces twinreg's etcd client certificate, waits for the reload, and cuts the link so the
    // next calls reconnect.
    let (gw, proxy, p) = (&gw, &proxy, &p);
    let rotate_and_cut = move |issued: Issued| async move {
        let done = gw.certificate_reloads("ok").await;
        replace_file(&p("client-key.pem"), &issued.key_pem);
        replace_file(&p("client.pem"), &issued.cert_pem);
        eventually(
            Duration::from_secs(10),
            "the etcd client certificate to reload",
            || async { (gw.certificate_reloads("ok").await > done).then_some(()) },
        )
        .await;
        proxy.cut();
        proxy.pass();
    };
    rotate_and_cut(ca.client(&ClientNames::cn("twinreg")).unwrap()).await;
    eventually(
        Duration::from_secs(30),
        "etcd reached again with the renewed certificate",
        || async {
            let r = c
                .put_json(&path("payments", "a"), &body("10.0.0.1", 80))
                .await;
            etcd_ok(&r).then_some(())
        },
    )
    .await;

    // A certificate etcd does not trust: once reloaded, new handshakes present it and etcd
    // refuses them — so the reloaded certificate, not the old one, is what reconnects use.
    let foreign = CertAuthority::new("foreign CA")
        .unwrap()
        .client(&ClientNames::cn("twinreg"))
        .unwrap();
    rotate_and_cut(foreign).await;
    let last = std::sync::Mutex::new(String::new());
    let waited = tokio::time::timeout(
        Duration::from_secs(30),
        eventually(Duration::from_secs(3600), "", || async {
            let r = c
                .put_json(&path("payments", "a"), &body("10.0.0.1", 80))
                .await;
            *last.lock().unwrap() = format!("{} {}", r.status, r.text);
            (r.status == 200 && !etcd_ok(&r)).then_some(())
        }),
    )
    .await;
    assert!(
        waited.is_ok(),
        "etcd never refused the foreign certificate within 30s; last answer: {}",
        last.lock().unwrap()
    );
    drop(etcd);
}
