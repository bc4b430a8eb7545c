//! Every error rule of docs/consul.md: strict decoding, validation texts, 404/405/500 shapes.

use serde_json::json;

use crate::support::Server;

const REGISTER: &str = "/v1/agent/service/register";

async fn register_error(s: &Server, body: &str, status: u16, text: &str) {
    s.put(REGISTER, Some(body)).await.assert_error(status, text);
}

#[tokio::test]
async fn strict_decoding() {
    let s = Server::start(&[]).await;
    register_error(&s, "", 400, "Request decode failed: EOF").await;
    register_error(&s, "  \n", 400, "Request decode failed: EOF").await;
    register_error(
        &s,
        r#"{"Name":"web","Bogus":1}"#,
        400,
        "Request decode failed: json: unknown field \"Bogus\"",
    )
    .await;
    register_error(
        &s,
        r#"{"Name":"web","Check":{"TTL":"10s","Nope":true}}"#,
        400,
        "Request decode failed: json: unknown field \"Nope\"",
    )
    .await;
    register_error(
        &s,
        r#"{"Name":"web","#,
        400,
        "Request decode failed: unexpected EOF",
    )
    .await;
    register_error(
        &s,
        "{x}",
        400,
        "Request decode failed: invalid character 'x' looking for beginning of object key string",
    )
    .await;
    register_error(
        &s,
        r#"{"Name":5}"#,
        400,
        "Request decode failed: json: cannot unmarshal number into Go struct field .Name of type string",
    )
    .await;
    register_error(
        &s,
        r#"{"Name":"web","Check":{"TTL":"abc"}}"#,
        400,
        "Request decode failed: time: invalid duration \"abc\"",
    )
    .await;
    register_error(
        &s,
        r#"{"Name":"web","Check":{"TTL":"10"}}"#,
        400,
        "Request decode failed: time: missing unit in duration \"10\"",
    )
    .await;
    // Nothing was registered by any of those.
    assert_eq!(s.get_json("/v1/agent/services").await, json!({}));

    // Keys match case-insensitively; a bare number is nanoseconds; snake_case aliases work.
    s.register(json!({"name": "web", "id": "w", "PORT": 80, "check": {"ttl": 10_000_000_000u64, "status": "passing"}}))
        .await;
    let svc = &s.get_json("/v1/agent/services").await["w"];
    assert_eq!(
        (svc["Service"].as_str(), svc["Port"].as_u64()),
        (Some("web"), Some(80))
    );
    assert_eq!(s.check("service:w").await["Status"], "passing");
    s.register(json!({"Name": "db", "Check": {"TTL": "1m30s", "deregister_critical_service_after": "1.5h"}}))
        .await;
    assert_eq!(s.check("service:db").await["Type"], "ttl");
}

#[tokio::test]
async fn service_validation() {
    let s = Server::start(&[]).await;
    register_error(&s, r#"{"ID":"x"}"#, 400, "Missing service name").await;
    register_error(&s, "null", 400, "Missing service name").await;
    for addr in ["0.0.0.0", "::", "[::]"] {
        let body = json!({"Name": "web", "Address": addr}).to_string();
        register_error(&s, &body, 400, "Invalid service address").await;
    }
    register_error(
        &s,
        r#"{"Name":"web","Weights":{"Passing":0,"Warning":1}}"#,
        400,
        "Invalid Weights: Passing must be greater than 0",
    )
    .await;

    let meta_error = |k: &str, v: &str, reason: &str| {
        format!("Invalid Service Meta: Couldn't load metadata pair ('{k}', '{v}'): {reason}")
    };
    let cases = [
        ("", "v", "Key cannot be blank".to_owned()),
        (
            "bad key!",
            "v",
            "Key contains invalid characters".to_owned(),
        ),
        (
            "consul-x",
            "v",
            "Key prefix 'consul-' is reserved for internal use".to_owned(),
        ),
        (
            &*"k".repeat(129),
            "v",
            "Key is too long (limit: 128 characters)".to_owned(),
        ),
        (
            "k",
            &*"v".repeat(513),
            "Value is too long (limit: 512 characters)".to_owned(),
        ),
    ];
    for (k, v, reason) in cases {
        let body = json!({"Name": "web", "Meta": {k: v}}).to_string();
        register_error(&s, &body, 400, &meta_error(k, v, &reason)).await;
    }
    let many: serde_json::Map<String, serde_json::Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    register_error(
        &s,
        &json!({"Name": "web", "Meta": many}).to_string(),
        400,
        "Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs",
    )
    .await;
    // The limits themselves are fine.
    let ok: serde_json::Map<String, serde_json::Value> =
        (0..64).map(|i| (format!("k{i}"), json!("v"))).collect();
    s.register(json!({"Name": "web", "Meta": ok})).await;
    s.register(json!({"Name": "web2", "Meta": {"k".repeat(128): "v".repeat(512), "a-b_C9": ""}}))
        .await;
}

#[tokio::test]
async fn check_validation() {
    let s = Server::start(&[]).await;
    register_error(
        &s,
        r#"{"Name":"web","Check":{"TTL":"10s","Interval":"10s"}}"#,
        400,
        "Invalid check: Interval and TTL cannot both be specified",
    )
    .await;
    for ttl in [r#""0s""#, r#""-5s""#, "0"] {
        let body = format!(r#"{{"Name":"web","Check":{{"TTL":{ttl},"Notes":"x"}}}}"#);
        register_error(
            &s,
            &body,
            400,
            "Invalid check: TTL must be > 0 for TTL checks",
        )
        .await;
    }
    register_error(
        &s,
        r#"{"Name":"web","Checks":[{"TTL":"10s"},{"Name":"no type"}]}"#,
        400,
        "Invalid check: TTL must be > 0 for TTL checks",
    )
    .await;
    register_error(
        &s,
        r#"{"Name":"web","Check":{"TTL":"10s","Status":"bogus"}}"#,
        400,
        "Status for checks must 'passing', 'warning', 'critical'",
    )
    .await;
    register_error(
        &s,
        r#"{"Name":"web","Check":{"TCP":"127.0.0.1:1"}}"#,
        400,
        "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks",
    )
    .await;
    // The docs' script-check example: a dev agent refuses remote script checks.
    register_error(
        &s,
        r#"{"Name":"redis","Check":{"Args":["/usr/local/bin/check_redis.py"],"Interval":"10s","Timeout":"5s"}}"#,
        500,
        "Scripts are disabled on this agent from remote calls; to enable, configure 'enable_script_checks' to true",
    )
    .await;
    assert_eq!(s.get_json("/v1/agent/services").await, json!({}));
}

#[tokio::test]
async fn check_update_errors() {
    let s = Server::start(&[]).await;
    s.register(json!({"Name": "web", "Check": {"TTL": "30s"}}))
        .await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp = listener.local_addr().unwrap().to_string();
    s.register(
        json!({"Name": "tcp", "Check": {"TCP": tcp, "Interval": "10s", "CheckID": "tcp-check"}}),
    )
    .await;

    for verb in ["pass", "warn", "fail"] {
        s.put(&format!("/v1/agent/check/{verb}/nope"), None).await.assert_error(
            404,
            "Unknown check ID \"nope\". Ensure that the check ID is passed, not the check name.",
        );
    }
    // The check's name is not its ID.
    s.put("/v1/agent/check/pass/Service%20'web'%20check", None).await.assert_error(
        404,
        "Unknown check ID \"Service 'web' check\". Ensure that the check ID is passed, not the check name.",
    );
    let update = "/v1/agent/check/update/service:web";
    s.put(update, Some(r#"{"Status":"bogus"}"#))
        .await
        .assert_error(400, "Invalid check status: 'bogus'");
    s.put(update, Some("{}"))
        .await
        .assert_error(400, "Invalid check status: ''");
    s.put(update, None)
        .await
        .assert_error(400, "Request decode failed: EOF");
    s.put(update, Some(r#"{"Status":"passing","Extra":1}"#))
        .await
        .assert_error(400, "Request decode failed: json: unknown field \"Extra\"");
    s.put(
        "/v1/agent/check/update/nope",
        Some(r#"{"Status":"passing"}"#),
    )
    .await
    .assert_error(
        404,
        "Unknown check ID \"nope\". Ensure that the check ID is passed, not the check name.",
    );
    s.put("/v1/agent/check/pass/tcp-check", None)
        .await
        .assert_error(500, "CheckID \"tcp-check\" does not have associated TTL");
    assert_eq!(
        s.check("service:web").await["Status"],
        "critical",
        "no error changed anything"
    );
    drop(listener);
}

#[tokio::test]
async fn methods_paths_and_write_shapes() {
    let s = Server::start(&[]).await;
    for (method, path, allow) in [
        ("GET", REGISTER, "OPTIONS,PUT"),
        ("POST", "/v1/agent/service/deregister/x", "OPTIONS,PUT"),
        ("GET", "/v1/agent/check/pass/x", "OPTIONS,PUT"),
        ("PUT", "/v1/agent/services", "OPTIONS,GET"),
        ("DELETE", "/v1/health/service/web", "OPTIONS,GET"),
        ("PUT", "/v1/catalog/services", "OPTIONS,GET"),
    ] {
        let r = s.req(method, path, None).await;
        r.assert_error(405, &format!("method {method} not allowed"));
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
    let r = s.req("OPTIONS", "/v1/agent/services", None).await;
    assert_eq!((r.status, r.header("allow")), (200, Some("OPTIONS,GET")));

    s.get("/v1/agent/nope").await.assert_error(
        404,
        "Invalid URL path: not a recognized HTTP API endpoint\n",
    );
    s.req("PUT", "/v1/kv/x", Some("v")).await.assert_error(
        404,
        "Invalid URL path: not a recognized HTTP API endpoint\n",
    );
    s.get("/nope").await.assert_error(
        404,
        "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n",
    );
    s.get("/v1/health/service/")
        .await
        .assert_error(400, "Missing service name");

    let r = s.get("/v1/status/leader").await;
    assert_eq!((r.status, r.json()), (200, json!("127.0.0.1:8300")));
    assert_eq!(r.header("content-type"), Some("application/json"));

    // Successful writes: 200, empty body, no Content-Type (not {} or true).
    s.put(REGISTER, Some(r#"{"Name":"web","Check":{"TTL":"30s"}}"#))
        .await
        .assert_write_ok();
    s.put("/v1/agent/check/pass/service:web", None)
        .await
        .assert_write_ok();
    s.put(
        "/v1/agent/check/update/service:web",
        Some(r#"{"Status":"warning"}"#),
    )
    .await
    .assert_write_ok();
    s.put("/v1/agent/service/deregister/web", None)
        .await
        .assert_write_ok();
}
