//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, and the status page (`/` and
//! `/status.json`, see [`super::status`]). Plain HTTP, meant for the load balancer, Prometheus and
//! the people on call.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .with_state(state.clone())
        .merge(super::status::router(state))
}

/// The REST API's OpenAPI description (also `docs/openapi.json` and `twinreg openapi`).
async fn openapi() -> Response {
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    (
        [(header::CONTENT_TYPE, "application/json")],
        JSON.get_or_init(super::openapi::json).as_str(),
    )
        .into_response()
}

async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

/// 200 once a registry has a warm pool and answered; 503 before that and from the moment
/// shutdown starts, so the load balancer drains this replica first.
async fn readyz(State(st): State<AppState>) -> Response {
    let draining = st.shutdown.is_cancelled();
    let registries: serde_json::Map<String, serde_json::Value> = st
        .coordinator
        .members()
        .iter()
        .map(|m| {
            let state = m.health.get();
            let breaker = m.breaker.state();
            (
                m.registry.kind().as_str().to_owned(),
                json!({"state": state, "breaker": breaker}),
            )
        })
        .collect();
    let ready = st.coordinator.ready() && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "draining": draining,
        "registries": registries,
    });
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        st.metrics.encode(),
    )
        .into_response()
}
