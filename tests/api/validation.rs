//! Every rule of docs/api.md's "Names and limits" table: 400 naming the field (or 413), and nothing written anywhere.

use serde_json::{Value, json};

use crate::{Env, path};

async fn assert_nothing_written(env: &Env) {
    assert!(env.etcd.instances().await.is_empty(), "etcd was written to");
    assert!(
        env.consul.instances().await.is_empty(),
        "consul was written to"
    );
}

#[tokio::test]
async fn every_validation_rule_names_its_field_and_writes_nothing() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    let ok = json!({"address": "10.0.0.5", "port": 8080});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let cases: Vec<(String, Value, &str)> = vec![
        (path("payments", "bad*id"), ok.clone(), "id"),
        (path("payments", &"x".repeat(129)), ok.clone(), "id"),
        (path("payments", "pay%2F1"), ok.clone(), "id"),
        (path("payments", "a"), json!({"port": 1}), "address"),
        (
            path("payments", "a"),
            with("address", json!("not a host!")),
            "address",
        ),
        (
            path("payments", "a"),
            with("address", json!(format!("{}.com", "a".repeat(250)))),
            "address",
        ),
        (path("payments", "a"), with("address", json!(5)), "address"),
        (
            path("payments", "a"),
            json!({"address": "10.0.0.5"}),
            "port",
        ),
        (path("payments", "a"), with("port", json!(0)), "port"),
        (path("payments", "a"), with("port", json!(65536)), "port"),
        (path("payments", "a"), with("port", json!(-1)), "port"),
        (path("payments", "a"), with("port", json!(80.5)), "port"),
        (
            path("payments", "a"),
            with(
                "tags",
                json!((0..33).map(|i| format!("t{i}")).collect::<Vec<_>>()),
            ),
            "tags",
        ),
        (path("payments", "a"), with("tags", json!([""])), "tags"),
        (
            path("payments", "a"),
            with("tags", json!(["x".repeat(129)])),
            "tags",
        ),
        (path("payments", "a"), with("tags", json!(["a\nb"])), "tags"),
        (path("payments", "a"), with("tags", json!("v1")), "tags"),
        (
            path("payments", "a"),
            with(
                "meta",
                json!(
                    (0..65)
                        .map(|i| (format!("k{i}"), json!("v")))
                        .collect::<serde_json::Map<_, _>>()
                ),
            ),
            "meta",
        ),
        (
            path("payments", "a"),
            with("meta", json!({"bad key": "v"})),
            "meta",
        ),
        (
            path("payments", "a"),
            with("meta", json!({"k".repeat(129): "v"})),
            "meta",
        ),
        (
            path("payments", "a"),
            with("meta", json!({"k": "v".repeat(513)})),
            "meta",
        ),
        (path("payments", "a"), with("meta", json!({"k": 1})), "meta"),
        (
            path("payments", "a"),
            with("ttl_seconds", json!(4)),
            "ttl_seconds",
        ),
        (
            path("payments", "a"),
            with("ttl_seconds", json!(3601)),
            "ttl_seconds",
        ),
        (
            path("payments", "a"),
            with("ttl_seconds", json!("30")),
            "ttl_seconds",
        ),
        (path("payments", "a"), with("weight", json!(1)), "weight"),
        (path("payments", "a"), json!([1, 2]), "body"),
    ];
    for (p, b, field) in &cases {
        let r = c.put_json(p, b).await;
        assert_eq!(r.status, 400, "{p} {b}: {}", r.text);
        assert_eq!(r.json["error"], "invalid_request", "{}", r.text);
        assert_eq!(r.json["field"], *field, "{p} {b}: {}", r.text);
        assert!(r.json["message"].as_str().unwrap().len() > 5);
    }
    let r = c
        .request("PUT", &path("payments", "a"), Some(b"{not json".to_vec()))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["field"], "body");
    assert_nothing_written(&env).await;

    // Bad service names: the caller may be anyone, the name is still checked first.
    for bad in ["Payments", "1pay", "pay-", "pay_ments", &"a".repeat(64)] {
        let r = env.gw.client(bad).put_json(&path(bad, "a"), &ok).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert_eq!(r.json["field"], "service", "{bad}: {}", r.text);
    }
    assert_nothing_written(&env).await;

    // The limits themselves are allowed.
    let edge = json!({
        "address": "10.0.0.5", "port": 65535, "ttl_seconds": 3600,
        "tags": (0..32).map(|i| format!("t{i}")).collect::<Vec<_>>(),
        "meta": (0..64).map(|i| (format!("k{i}"), json!("v".repeat(512)))).collect::<serde_json::Map<_, _>>(),
    });
    let r = c.put_json(&path("payments", &"x".repeat(128)), &edge).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["degraded"], false, "{}", r.text);
}

#[tokio::test]
async fn oversized_body_is_413_and_writes_nothing() {
    let env = Env::start().await;
    let c = env.gw.client("payments");
    let big = json!({"address": "10.0.0.5", "port": 8080, "meta": {"k": "v"}, "tags": ["x".repeat(70 * 1024)]});
    let r = c.put_json(&path("payments", "a"), &big).await;
    assert_eq!(r.status, 413, "{}", &r.text[..r.text.len().min(200)]);
    assert_eq!(r.json["error"], "payload_too_large");
    assert_nothing_written(&env).await;
}

#[tokio::test]
async fn unknown_routes_are_404_in_the_error_shape() {
    let env = Env::start().await;
    let r = env.gw.client("payments").get("/v1/nope").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json["error"], "not_found");
}
