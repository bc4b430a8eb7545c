//! ACLs: the configured token is a management token, others are `ACL not found`, no token is
//! the anonymous token (writes denied, reads filtered to empty).

use serde_json::json;

use crate::support::Server;

const TOKEN: &str = "5ecre7-t0ken";

fn denied(access: &str, name: &str) -> String {
    format!(
        "Permission denied: token with AccessorID '00000000-0000-0000-0000-000000000002' lacks permission '{access}' on \"{name}\""
    )
}

#[tokio::test]
async fn management_token_in_every_position() {
    let s = Server::with_acl(TOKEN).await;
    s.register(json!({"Name": "web", "Check": {"TTL": "60s"}}))
        .await;
    let bearer = format!("Bearer {TOKEN}");
    for (path, headers) in [
        (format!("/v1/agent/services?token={TOKEN}"), vec![]),
        (
            "/v1/agent/services".to_owned(),
            vec![("X-Consul-Token", TOKEN)],
        ),
        (
            "/v1/agent/services".to_owned(),
            vec![("Authorization", bearer.as_str())],
        ),
    ] {
        let r = s.raw("GET", &path, None, &headers).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.json().get("web").is_some(), "{path} {headers:?}");
        assert_eq!(r.header("x-consul-default-acl-policy"), Some("deny"));
    }
    // ?token= wins over the header.
    let r = s
        .raw(
            "GET",
            &format!("/v1/agent/checks?token={TOKEN}"),
            None,
            &[("X-Consul-Token", "wrong")],
        )
        .await;
    assert_eq!(r.status, 200);
    let r = s
        .raw(
            "PUT",
            "/v1/agent/check/pass/service:web",
            None,
            &[("Authorization", &bearer)],
        )
        .await;
    r.assert_write_ok();
    assert_eq!(
        s.get_json("/v1/catalog/services").await,
        json!({"consul": [], "web": []})
    );
    assert_eq!(
        s.get_json("/v1/health/service/web?passing")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn unknown_token_is_acl_not_found() {
    let s = Server::with_acl(TOKEN).await;
    for (method, path, body) in [
        (
            "PUT",
            "/v1/agent/service/register",
            Some(r#"{"Name":"web"}"#),
        ),
        ("PUT", "/v1/agent/service/deregister/web", None),
        ("PUT", "/v1/agent/check/pass/service:web", None),
        ("GET", "/v1/agent/services", None),
        ("GET", "/v1/agent/checks", None),
        ("GET", "/v1/agent/service/web", None),
        ("GET", "/v1/health/service/web", None),
        ("GET", "/v1/catalog/services", None),
    ] {
        s.raw(method, path, body, &[("X-Consul-Token", "not-the-token")])
            .await
            .assert_error(403, "ACL not found");
    }
    assert_eq!(
        s.get_json("/v1/agent/services").await,
        json!({}),
        "nothing was written"
    );
}

#[tokio::test]
async fn anonymous_writes_are_denied_reads_filtered() {
    let s = Server::with_acl(TOKEN).await;
    s.register(json!({"Name": "web", "ID": "web-1", "Check": {"TTL": "60s"}}))
        .await;
    let anon = |method: &'static str, path: &'static str, body: Option<&'static str>| {
        let s = &s;
        async move { s.raw(method, path, body, &[]).await }
    };
    anon(
        "PUT",
        "/v1/agent/service/register",
        Some(r#"{"Name":"db"}"#),
    )
    .await
    .assert_error(403, &denied("service:write", "db"));
    anon("PUT", "/v1/agent/check/pass/service:web-1", None)
        .await
        .assert_error(403, &denied("service:write", "web"));
    anon("PUT", "/v1/agent/service/deregister/web-1", None)
        .await
        .assert_error(403, &denied("service:write", "web"));
    // Unknown IDs are still 404s; validation still comes before the permission check.
    anon("PUT", "/v1/agent/service/deregister/nope", None).await.assert_error(
        404,
        "Unknown service ID \"nope\". Ensure that the service ID is passed, not the service name.",
    );
    anon("PUT", "/v1/agent/service/register", Some("{}"))
        .await
        .assert_error(400, "Missing service name");
    anon("GET", "/v1/agent/service/web-1", None)
        .await
        .assert_error(403, &denied("service:read", "web"));

    for (path, empty) in [
        ("/v1/agent/services", json!({})),
        ("/v1/agent/checks", json!({})),
        ("/v1/health/service/web", json!([])),
        ("/v1/catalog/services", json!({})),
    ] {
        let r = anon("GET", path, None).await;
        assert_eq!((r.status, r.json()), (200, empty), "{path}");
        if path.contains("health") || path.contains("catalog") {
            r.index();
        }
    }
    // status/leader needs no token.
    assert_eq!(anon("GET", "/v1/status/leader", None).await.status, 200);
    // The service is untouched.
    assert_eq!(s.check("service:web-1").await["Status"], "critical");
    assert!(
        s.get_json("/v1/agent/services")
            .await
            .get("web-1")
            .is_some()
    );
}

#[tokio::test]
async fn without_acl_token_acls_are_off() {
    let s = Server::start(&[]).await;
    let r = s
        .raw(
            "PUT",
            "/v1/agent/service/register",
            Some(r#"{"Name":"web"}"#),
            &[("X-Consul-Token", "anything")],
        )
        .await;
    r.assert_write_ok();
    assert_eq!(r.header("x-consul-default-acl-policy"), Some("allow"));
    let r = s.raw("GET", "/v1/health/service/web", None, &[]).await;
    assert_eq!(r.json().as_array().unwrap().len(), 1);
}
