//! HTTPS with verified client certificates (certificates generated at test time with rcgen).

use bytes::Bytes;
use http_body_util::Full;

use crate::support::{HttpsClient, Pki, Resp, Server, https_client, path_str, send};

async fn get(client: &HttpsClient, url: &str) -> Result<Resp, String> {
    send(
        client,
        http::Request::get(url)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn mutual_tls() {
    let pki = Pki::new("mini-consul test CA");
    let server_cert = pki.issue("server", true);
    let good_client = pki.issue("client", false);
    let other = Pki::new("another CA");
    let stranger = other.issue("stranger", false);

    let s = Server::start(&[
        "--tls-cert",
        path_str(&server_cert.cert_path),
        "--tls-key",
        path_str(&server_cert.key_path),
        "--tls-client-ca",
        path_str(&pki.ca_path()),
    ])
    .await;
    let url = format!("https://localhost:{}", s.addr.port());

    // HTTP/1.1 and h2 (ALPN) with a certificate from the trusted CA.
    for h2 in [false, true] {
        let client = https_client(&pki.ca_der, Some(&good_client), h2);
        let body = r#"{"Name":"web","Check":{"TTL":"60s","Status":"passing"}}"#;
        let req = http::Request::put(format!("{url}/v1/agent/service/register"))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        send(&client, req)
            .await
            .expect("registering over mTLS")
            .assert_write_ok();
        let r = get(&client, &format!("{url}/v1/health/service/web?passing"))
            .await
            .expect("mTLS GET");
        assert_eq!(r.status, 200);
        assert_eq!(r.json().as_array().unwrap().len(), 1);
        let want = if h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        assert_eq!(r.version, want);
        r.index();
    }

    // No client certificate, or one from another CA: refused.
    let anonymous = https_client(&pki.ca_der, None, false);
    let err = get(&anonymous, &format!("{url}/v1/status/leader")).await;
    assert!(
        err.is_err(),
        "a client without a certificate got an answer: {err:?}"
    );
    let foreign = https_client(&pki.ca_der, Some(&stranger), false);
    let err = get(&foreign, &format!("{url}/v1/status/leader")).await;
    assert!(
        err.is_err(),
        "a certificate from another CA was accepted: {err:?}"
    );
    // Plain HTTP to the TLS port gets no Consul answer.
    let plain = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let client = crate::support::http_client();
        let req = http::Request::get(format!(
            "http://127.0.0.1:{}/v1/status/leader",
            s.addr.port()
        ))
        .body(Full::new(Bytes::new()))
        .unwrap();
        send(&client, req).await
    })
    .await;
    assert!(
        !matches!(plain, Ok(Ok(ref r)) if r.status == 200),
        "plain HTTP was served: {plain:?}"
    );

    // The server still serves trusted clients after the refusals.
    let client = https_client(&pki.ca_der, Some(&good_client), false);
    assert_eq!(
        get(&client, &format!("{url}/v1/status/leader"))
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test]
async fn tls_without_client_verification() {
    let pki = Pki::new("mini-consul test CA");
    let server_cert = pki.issue("server", true);
    let s = Server::start(&[
        "--tls-cert",
        path_str(&server_cert.cert_path),
        "--tls-key",
        path_str(&server_cert.key_path),
    ])
    .await;
    let client = https_client(&pki.ca_der, None, false);
    let r = get(
        &client,
        &format!("https://127.0.0.1:{}/v1/catalog/services", s.addr.port()),
    )
    .await
    .expect("HTTPS without a client certificate");
    assert_eq!(r.json(), serde_json::json!({"consul": []}));
    // A client that does not trust the server's CA refuses it.
    let other = Pki::new("another CA");
    let distrustful = https_client(&other.ca_der, None, false);
    assert!(
        get(
            &distrustful,
            &format!("https://127.0.0.1:{}/v1/catalog/services", s.addr.port())
        )
        .await
        .is_err()
    );
}
