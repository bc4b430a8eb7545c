//! Limits against hostile or broken clients: slow headers (slowloris), slow bodies, a flood of
//! connections from one address, a flooding identity, HTTP/2 streams per connection. In each case
//! other clients keep registering.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use twinreg::certs::ClientNames;

use crate::{Env, body, path};
use testkit::client::tls_config;
use testkit::gateway::{Gateway, Options};
use testkit::{eventually, metric};

fn limits(toml: &str) -> Options {
    Options {
        extra_toml: format!("[limits]\n{toml}\n"),
        ..Options::default()
    }
}

/// A TLS connection as `cn`, offering `alpn`.
async fn tls(gw: &Gateway, cn: &str, alpn: &[u8]) -> TlsStream<TcpStream> {
    let mut cfg = tls_config(&gw.ca.cert_pem, Some(&gw.issue(&ClientNames::cn(cn))));
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// Reads until the peer closes (or `limit`); what was read, and whether it closed.
async fn read_until_closed(s: &mut TlsStream<TcpStream>, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

async fn registers(gw: &Gateway, id: &str) {
    let r = gw
        .client("payments")
        .put_json(&path("payments", id), &body("10.0.0.1", 80))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_slow_bodies_are_cut_off_while_others_register() {
    let env = Env::start_with(limits(
        "header_read_timeout = \"1s\"\nbody_read_timeout = \"1s\"",
    ))
    .await;
    let gw = &env.gw;
    // Twenty slowloris clients: headers started, never finished.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = tls(gw, "payments", b"http/1.1").await;
        s.write_all(b"PUT /v1/services/payments/instances/slow HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // And one that completed its handshake and says nothing at all.
    slow.push(tls(gw, "payments", b"http/1.1").await);
    let start = Instant::now();
    registers(gw, "meanwhile").await;
    for s in &mut slow {
        let (_, closed) = read_until_closed(s, Duration::from_secs(10)).await;
        assert!(
            closed,
            "a client that never finishes its headers is disconnected"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(10));

    // A body announced and never sent in full: 408, and nothing is written.
    let mut s = tls(gw, "payments", b"http/1.1").await;
    s.write_all(
        b"PUT /v1/services/payments/instances/half HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"address\":",
    )
    .await
    .unwrap();
    let (answer, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(env.etcd_record("payments", "half").await.is_none());
    registers(gw, "after").await;
}

/// Reads one HTTP/1 answer with a `Content-Length` body.
async fn read_answer(s: &mut TlsStream<TcpStream>) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        assert!(
            n > 0,
            "closed before the answer: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_outlives_the_header_timeout_and_closes_once_idle() {
    let env = Env::start_with(limits(
        "header_read_timeout = \"1s\"\nidle_timeout = \"4s\"",
    ))
    .await;
    let gw = &env.gw;
    registers(gw, "kept").await;
    let mut s = tls(gw, "payments", b"http/1.1").await;
    let beat = b"PUT /v1/services/payments/instances/kept/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    // A client beating less often than the header timeout keeps its connection: waiting for
    // the next request is not a slow request.
    for n in 0..3 {
        s.write_all(beat).await.unwrap();
        let answer = read_answer(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "beat {n}: {answer}");
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    // Past the idle timeout the server closes it, gracefully (TLS close_notify, then EOF).
    let (rest, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(
        closed,
        "an idle keep-alive connection is closed after limits.idle_timeout"
    );
    assert_eq!(
        rest, "",
        "nothing is sent on an idle connection before it closes"
    );
    registers(gw, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_before_its_body_keeps_the_connection_usable() {
    let env = Env::start_with(Options::default()).await;
    let gw = &env.gw;
    // `orders` may not write `payments` (403), and `Bad_Name` is no service name (400); each
    // body arrives after its headers, so it is still unread when the refusal is decided.
    let mut s = tls(gw, "orders", b"http/1.1").await;
    let body = serde_json::to_vec(&body("10.0.0.1", 80)).unwrap();
    for (target, status) in [
        ("/v1/services/payments/instances/p-1", "403"),
        ("/v1/services/Bad_Name/instances/p-1", "400"),
    ] {
        let head = format!(
            "PUT {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(&body).await.unwrap();
        let answer = read_answer(&mut s).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{target}: {answer}"
        );
        assert!(
            !answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
    // The same connection still answers.
    s.write_all(b"GET /v1/services/orders/instances HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(env.etcd_record("payments", "p-1").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_from_one_address_does_not_lock_others_out() {
    let env = Env::start_with(limits("max_connections_per_ip = 20")).await;
    let gw = &env.gw;
    // From 127.0.0.2: raw TCP connections that never start TLS.
    let mut flood = Vec::new();
    for _ in 0..60 {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        flood.push(sock.connect(gw.addr).await.unwrap());
    }
    // The ones over the cap are closed at once; the first twenty wait for their handshake.
    let mut closed = 0;
    for s in &mut flood {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) | Ok(Err(_)) =
            tokio::time::timeout(Duration::from_millis(300), s.read(&mut b)).await
        {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 40,
        "connections over the per-address cap are closed"
    );
    // A client from 127.0.0.1 is not affected.
    registers(gw, "unaffected").await;
    let (_, text) = gw.admin_get("/metrics").await;
    assert_eq!(
        metric(
            &text,
            "twinreg_connections_refused_total",
            &[("reason", "max_connections_per_ip")]
        ),
        40.0
    );
    // Slots come back as flood connections go.
    drop(flood);
    eventually(
        Duration::from_secs(5),
        "the flood's slots freed",
        || async {
            let (_, text) = gw.admin_get("/metrics").await;
            (metric(&text, "twinreg_connections_open", &[]) <= 2.0).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_identity_gets_429_with_retry_after_and_others_do_not() {
    let env = Env::start_with(limits("requests_per_second = 5\nburst = 5")).await;
    let gw = &env.gw;
    let flooder = gw.client("billing");
    let mut limited = None;
    for _ in 0..30 {
        let r = flooder.get("/v1/services").await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = limited.expect("the flooding identity is limited");
    assert_eq!(r.json["error"], "rate_limited", "{}", r.text);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // Another identity is not affected.
    registers(gw, "other-identity").await;
    // The flooder's budget comes back.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(flooder.get("/v1/services").await.status, 200);

    // gRPC: RESOURCE_EXHAUSTED for the same identity.
    let mut grpc = testkit::grpc::registry(gw, "billing").await;
    let mut exhausted = None;
    for _ in 0..30 {
        match grpc
            .list_instances(twinreg::api::grpc::pb::ListInstancesRequest {
                service: "billing".into(),
            })
            .await
        {
            Ok(_) => {}
            Err(s) => {
                exhausted = Some(s);
                break;
            }
        }
    }
    let s = exhausted.expect("gRPC calls are limited too");
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    assert!(s.metadata().get("retry-after").is_some());
    let (_, text) = gw.admin_get("/metrics").await;
    assert!(metric(&text, "twinreg_rate_limited_total", &[]) >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_get_a_cap_on_concurrent_streams() {
    let env = Env::start_with(limits("max_concurrent_streams = 8")).await;
    let s = tls(&env.gw, "payments", b"h2").await;
    let (client, conn) = h2::client::handshake(s).await.expect("h2 handshake");
    let mut conn = Box::pin(conn);
    // The server's SETTINGS arrive with the first exchange.
    let (resp, _) = client
        .ready()
        .await
        .unwrap()
        .send_request(
            http::Request::get("https://localhost/v1/services")
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    let drive = async {
        let _ = (&mut conn).await;
    };
    tokio::select! {
        r = resp => assert_eq!(r.unwrap().status(), 200),
        _ = drive => panic!("connection closed"),
    }
    assert_eq!(conn.max_concurrent_send_streams(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_not_answered_within_the_request_timeout_gets_503_at_once() {
    let env = Env::start_with(limits("request_timeout = \"300ms\"")).await;
    registers(&env.gw, "before").await;
    // Both registries frozen: each call would wait out its 1.5 s deadline.
    env.etcd.freeze();
    env.consul.freeze();
    let asked = Instant::now();
    let r = env
        .gw
        .client("payments")
        .put_json(&path("payments", "frozen"), &body("10.0.0.1", 80))
        .await;
    let took = asked.elapsed();
    env.etcd.thaw();
    env.consul.thaw();
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.text.contains("not answered within 300 ms"), "{}", r.text);
    assert!(r.headers.contains_key("retry-after"));
    assert!(
        took < Duration::from_millis(1400),
        "answered after {took:?}"
    );
}
