//! REST endpoints of the API contract (`docs/api.md`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Extension, Json};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{failure, retry_after};
use super::layers::{Edge, Rules, Seen};
use super::{AppState, front};
use crate::api::error::{ApiError, ErrorCode, OutcomesLog};
use crate::authz::Peer;
use crate::merge::{Sourced, view_index};
use crate::metrics::Answered;
use crate::model::ValidationError;
use crate::model::{InstanceKey, MAX_BODY_BYTES, ServiceName, parse_register_body};
use crate::replicate::OwnerBeat;
use crate::watch::view::View;

/// Longest a long poll may wait, and its default when `index` is given without `wait`.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

pub fn router(state: AppState) -> Edge<Rest> {
    let router = Router::new()
        .route(
            "/v1/services/{service}/instances/{id}",
            put(register).delete(deregister),
        )
        .route(
            "/v1/services/{service}/instances/{id}/heartbeat",
            put(heartbeat),
        )
        .route(
            "/v1/services/{service}/instances/{id}/drain",
            put(drain).delete(undrain),
        )
        .route("/v1/services", get(services))
        .route("/v1/services/{service}/instances", get(list))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone());
    Edge::new(router, state)
}

/// The route a path matches, as the `route` label of `twinreg_http_requests_total`: the routes of
/// [`router`], read from the path's segments (each parameter is one non-empty segment).
fn route_label(path: &str) -> &'static str {
    let mut parts = [""; 8];
    let mut n = 0;
    for segment in path.split('/') {
        if n == parts.len() {
            return "other";
        }
        parts[n] = segment;
        n += 1;
    }
    match &parts[..n] {
        ["", "v1", "services"] => "services",
        ["", "v1", "services", s, "instances"] if !s.is_empty() => "instances",
        ["", "v1", "services", s, "instances", i] if !s.is_empty() && !i.is_empty() => "instance",
        ["", "v1", "services", s, "instances", i, "heartbeat"]
            if !s.is_empty() && !i.is_empty() =>
        {
            "heartbeat"
        }
        ["", "v1", "services", s, "instances", i, "drain"] if !s.is_empty() && !i.is_empty() => {
            "drain"
        }
        _ => "other",
    }
}

/// The REST edge: long polls wait by design, errors are the API's JSON.
pub struct Rest;

impl Rules for Rest {
    fn answer_now(
        st: &AppState,
        method: &Method,
        uri: &Uri,
        peer: Option<&Arc<Peer>>,
    ) -> Option<(&'static str, Response)> {
        owner_heartbeat(st, method, uri, peer).map(|resp| ("heartbeat", resp))
    }

    /// A long poll waits by design; everything else is answered within the request timeout.
    fn waits(req: &Request) -> bool {
        req.uri().query().is_some_and(|q| q.contains("index="))
            && route_label(req.uri().path()) == "instances"
    }

    fn timed_out(limit: Duration) -> Response {
        ApiError::unavailable(
            format!(
                "not answered within {} ms; retry after the Retry-After delay",
                limit.as_millis()
            ),
            retry_after(),
        )
        .into_response()
    }

    fn refused(e: ApiError) -> Response {
        e.into_response()
    }

    /// Counts every answer by route and status, and logs it.
    fn finish(st: &AppState, seen: &Seen, resp: Response) -> Response {
        let path = seen.uri.path();
        let route = seen.route.unwrap_or_else(|| route_label(path));
        let status = resp.status().as_u16();
        // A long poll waits by design: counted, not timed.
        let long_poll =
            route == "instances" && seen.uri.query().is_some_and(|q| q.contains("index="));
        st.metrics.observe_request(
            &seen.method,
            Answered {
                route,
                status,
                grpc_code: None,
                took: (!long_poll).then(|| seen.start.elapsed()),
            },
        );
        let quiet = route == "heartbeat" && resp.status().is_success();
        if quiet && !tracing::enabled!(tracing::Level::DEBUG) {
            return resp;
        }
        // `/v1/services/{service}/instances/{id}...`, as sent (the log shows what was asked).
        let mut segments = path.split('/').skip(3);
        let service = segments.next().unwrap_or("");
        let instance = segments.nth(1).unwrap_or("");
        let registries = front::outcomes_logged(&resp);
        front::request_line!(
            quiet,
            request_id = seen.request_id(),
            method = %seen.method,
            path,
            status,
            identity = seen.identity(),
            service,
            instance,
            registries,
            took_ms = seen.took_ms(),
            "request"
        );
        resp
    }
}

/// Attaches each registry's outcome to the response, for the request log line.
fn logged(mut resp: Response, outcomes: &crate::replicate::Outcomes) -> Response {
    resp.extensions_mut()
        .insert(OutcomesLog(outcomes.log_line()));
    resp
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint; see docs/api.md")
}

async fn method_not_allowed() -> Response {
    let mut resp = ApiError::new(
        ErrorCode::InvalidRequest,
        "method not allowed on this endpoint; see docs/api.md",
    )
    .into_response();
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    resp
}

/// The path parameters exactly as sent, read from the request's path (axum's extractors,
/// `RawPathParams` included, percent-decode them): an encoded character can never be valid, so
/// `pay%6Dents` is rejected rather than silently taken for `payments`.
struct RawParams {
    route: MatchedPath,
    uri: Uri,
}

impl<S: Send + Sync> FromRequestParts<S> for RawParams {
    type Rejection = <MatchedPath as FromRequestParts<S>>::Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            route: MatchedPath::from_request_parts(parts, state).await?,
            uri: parts.uri.clone(),
        })
    }
}

/// The segment of the path where the route has `{name}` (each parameter is a whole segment).
fn path_param<'a>(params: &'a RawParams, name: &str) -> &'a str {
    params
        .route
        .as_str()
        .split('/')
        .zip(params.uri.path().split('/'))
        .find(|(template, _)| {
            template.strip_prefix('{').and_then(|t| t.strip_suffix('}')) == Some(name)
        })
        .map_or("", |(_, sent)| sent)
}

fn peer(p: Option<Extension<Arc<Peer>>>) -> Result<Arc<Peer>, ApiError> {
    front::peer(p.as_ref().map(|Extension(p)| p))
}

/// The instance a write names, once the caller is known to be allowed to write it.
fn writable_key(
    st: &AppState,
    params: &RawParams,
    p: Option<Extension<Arc<Peer>>>,
) -> Result<InstanceKey, ApiError> {
    Ok(writable(st, params, p)?.0)
}

/// The key a write names and the caller, who may write it.
fn writable(
    st: &AppState,
    params: &RawParams,
    p: Option<Extension<Arc<Peer>>>,
) -> Result<(InstanceKey, Arc<Peer>), ApiError> {
    let peer = peer(p)?;
    let key = front::writable_key(
        st,
        &peer,
        path_param(params, "service"),
        path_param(params, "id"),
    )?;
    Ok((key, peer))
}

/// Reads a body of at most [`MAX_BODY_BYTES`] within `limit`; larger ones get 413 before being
/// read whole, slower ones 408.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: Duration,
) -> Result<bytes::Bytes, ApiError> {
    tokio::time::timeout(limit, read_body_now(headers, body))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the request body did not arrive within {} ms",
                    limit.as_millis()
                ),
            ))
        })
}

async fn read_body_now(headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body exceeds {} KiB", MAX_BODY_BYTES / 1024),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("could not read the request body: {e}"),
        )),
    }
}

async fn register(
    State(st): State<AppState>,
    params: RawParams,
    p: Option<Extension<Arc<Peer>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (key, peer) = writable(&st, &params, p)?;
    let bytes = read_body(&headers, body, st.limits.body_read_timeout).await?;
    let instance = parse_register_body(key, &bytes)?;
    let (service, id, ttl) = (
        instance.key.service.clone(),
        instance.key.id.clone(),
        instance.ttl_seconds,
    );
    let report = st
        .coordinator
        .register(instance, &peer.identity)
        .await
        .map_err(failure)?;
    let resp = Json(json!({
        "registered": true,
        "service": service,
        "id": id,
        "ttl_seconds": ttl,
        "degraded": report.outcomes.degraded(),
        "registries": report.outcomes,
    }))
    .into_response();
    Ok(logged(resp, &report.outcomes))
}

async fn drain(
    State(st): State<AppState>,
    params: RawParams,
    p: Option<Extension<Arc<Peer>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    set_drained(st, params, p, headers, body, true).await
}

async fn undrain(
    State(st): State<AppState>,
    params: RawParams,
    p: Option<Extension<Arc<Peer>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    set_drained(st, params, p, headers, body, false).await
}

/// `PUT …/drain` (`drained`) and `DELETE …/drain`: authorized as a write, no body (an empty
/// JSON object is taken as none; anything else is refused, not ignored).
async fn set_drained(
    st: AppState,
    params: RawParams,
    p: Option<Extension<Arc<Peer>>>,
    headers: HeaderMap,
    body: Body,
    drained: bool,
) -> Result<Response, ApiError> {
    let (key, peer) = writable(&st, &params, p)?;
    let bytes = read_body(&headers, body, st.limits.body_read_timeout).await?;
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if !text.is_empty()
        && serde_json::from_str::<serde_json::Map<String, Value>>(text)
            .map_or(true, |m| !m.is_empty())
    {
        return Err(ValidationError::new(
            "body",
            "a drain takes no body (send none, or {}); nothing was changed",
        )
        .into());
    }
    let report = st
        .coordinator
        .drain(&key, drained, &peer.identity)
        .await
        .map_err(failure)?;
    let resp = Json(json!({
        "drained": drained,
        "service": key.service,
        "id": key.id,
        "degraded": report.outcomes.degraded(),
        "registries": report.outcomes,
    }))
    .into_response();
    Ok(logged(resp, &report.outcomes))
}

async fn heartbeat(
    State(st): State<AppState>,
    params: RawParams,
    p: Option<Extension<Arc<Peer>>>,
) -> Result<Response, ApiError> {
    let (key, peer) = writable(&st, &params, p)?;
    let report = st
        .coordinator
        .heartbeat(&key, &peer.identity)
        .await
        .map_err(failure)?;
    Ok(heartbeat_answer(&st, &report))
}

/// The owner's heartbeat, answered from memory before the router (see [`Rules::answer_now`]):
/// `PUT /v1/services/{service}/instances/{id}/heartbeat`, exactly, from a caller allowed to
/// write the service, for an instance this replica owns, answered OK. Anything else (a path
/// that is not exactly that, a refusal, a take-over, an error) goes through the router, which
/// gives it the same answer it always had.
fn owner_heartbeat(
    st: &AppState,
    method: &Method,
    uri: &Uri,
    peer: Option<&Arc<Peer>>,
) -> Option<Response> {
    if method != Method::PUT || uri.query().is_some() {
        return None;
    }
    let rest = uri.path().strip_prefix("/v1/services/")?;
    let (service, rest) = rest.split_once('/')?;
    let id = rest
        .strip_prefix("instances/")?
        .strip_suffix("/heartbeat")?;
    let peer = peer?;
    // Checked and looked up as the request's own strings: no key is built (a refusal goes
    // through the router, which builds it and says what is wrong).
    InstanceKey::check(service, id).ok()?;
    if !st.authz.can_write_name(peer, service) {
        return None;
    }
    match st.coordinator.owner_beat(&(service, id), &peer.identity)? {
        OwnerBeat::InPlace => Some(in_place_answer(st)),
        OwnerBeat::Report(report) => Some(heartbeat_answer(st, &report.ok()?)),
    }
}

/// A heartbeat's answer (a struct, not a `json!` map: the hot path builds no intermediate JSON
/// tree).
#[derive(serde::Serialize)]
struct HeartbeatAnswer<'a> {
    ok: bool,
    degraded: bool,
    registries: &'a crate::replicate::Outcomes,
}

/// The owner's answer when every copy is in place: most heartbeats, the same answer every
/// time, serialized once.
fn in_place_answer(st: &AppState) -> Response {
    let body = *st.heartbeat_answer.get_or_init(|| {
        let answer = HeartbeatAnswer {
            ok: true,
            degraded: false,
            registries: &st.coordinator.in_place_outcomes(),
        };
        let json = serde_json::to_vec(&answer).expect("a heartbeat answer serializes");
        // Once per server: a few dozen bytes.
        Box::leak(json.into_boxed_slice())
    });
    // Built by hand: axum's (headers, body) conversion goes through its generic header
    // conversions: 711 instructions a heartbeat under callgrind, against about 450 this way.
    let mut resp = Response::new(Body::from(bytes::Bytes::from_static(body)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Logged at debug only: its registries' part is not even built unless that line is wanted.
    if tracing::enabled!(tracing::Level::DEBUG) {
        return logged(resp, &st.coordinator.in_place_outcomes());
    }
    resp
}

fn heartbeat_answer(st: &AppState, report: &crate::replicate::WriteReport) -> Response {
    if report.outcomes.from_memory() {
        return in_place_answer(st);
    }
    let degraded = report.outcomes.degraded();
    let resp = Json(HeartbeatAnswer {
        ok: true,
        degraded,
        registries: &report.outcomes,
    })
    .into_response();
    // A heartbeat answered OK is logged at debug only: its registries' part is not even
    // formatted unless that line is wanted (or something is degraded).
    if degraded || tracing::enabled!(tracing::Level::DEBUG) {
        return logged(resp, &report.outcomes);
    }
    resp
}

async fn deregister(
    State(st): State<AppState>,
    params: RawParams,
    p: Option<Extension<Arc<Peer>>>,
) -> Result<Response, ApiError> {
    let key = writable_key(&st, &params, p)?;
    let report = st.coordinator.deregister(&key).await.map_err(failure)?;
    let resp = Json(json!({
        "deregistered": true,
        "existed": report.existed,
        "degraded": report.outcomes.degraded(),
        "registries": report.outcomes,
    }))
    .into_response();
    Ok(logged(resp, &report.outcomes))
}

async fn services(
    State(st): State<AppState>,
    p: Option<Extension<Arc<Peer>>>,
) -> Result<Response, ApiError> {
    let peer = peer(p)?;
    let (names, outcomes) = st.coordinator.services().await.map_err(failure)?;
    let services: Vec<Value> = names
        .into_iter()
        .filter(|(name, _)| st.authz.can_read(&peer, name))
        .map(|(name, n)| json!({"name": name, "instances": n}))
        .collect();
    Ok(Json(json!({"services": services, "registries": outcomes})).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    index: Option<String>,
    wait: Option<String>,
}

fn parse_long_poll(q: &ListQuery) -> Result<Option<(u64, Duration)>, ValidationError> {
    let Some(index) = &q.index else {
        return Ok(None);
    };
    let index: u64 = index.parse().map_err(|_| {
        ValidationError::new(
            "index",
            "must be a non-negative integer from a previous answer",
        )
    })?;
    let wait = match &q.wait {
        None => MAX_WAIT,
        Some(w) => humantime::parse_duration(w)
            .map_err(|_| {
                ValidationError::new("wait", "must be a duration with a unit, e.g. 30s or 2m")
            })?
            .min(MAX_WAIT),
    };
    Ok((index != 0).then_some((index, wait)))
}

fn render<'a>(
    service: &ServiceName,
    instances: impl IntoIterator<Item = &'a Sourced>,
    index: u64,
    registries: Value,
) -> Response {
    let instances: Vec<Value> = instances
        .into_iter()
        .map(
            |Sourced {
                 instance: i,
                 sources,
             }| {
                json!({
                    "id": i.key.id,
                    "address": i.address,
                    "port": i.port,
                    "tags": i.tags,
                    "meta": i.meta,
                    "ttl_seconds": i.ttl_seconds,
                    "drained": i.drained,
                    "sources": sources,
                })
            },
        )
        .collect();
    let mut resp = Json(json!({
        "service": service,
        "index": index,
        "instances": instances,
        "registries": registries,
    }))
    .into_response();
    resp.headers_mut().insert("X-Twinreg-Index", index.into());
    resp
}

/// The registries' part of a long-poll answer: which ones feed the watched view.
fn feeding(view: &View) -> Value {
    let mut m = serde_json::Map::new();
    for r in &view.registries {
        m.insert(r.as_str().into(), json!({"ok": true}));
    }
    for (r, e) in &view.errors {
        m.insert(r.as_str().into(), json!({"ok": false, "error": e}));
    }
    Value::Object(m)
}

/// Lists a service; with `?index=N` waits (up to `wait`) until the set differs from the one that
/// produced `N`, watching the registries through the service's shared watch hub.
async fn list(
    State(st): State<AppState>,
    params: RawParams,
    p: Option<Extension<Arc<Peer>>>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let service = front::readable_service(&st, &*peer(p)?, path_param(&params, "service"))?;
    match parse_long_poll(&q)? {
        None => {
            let view = st.coordinator.list(&service).await.map_err(failure)?;
            let index = view_index(&view.instances);
            let registries = serde_json::to_value(&view.outcomes).unwrap_or_default();
            Ok(render(&service, &view.instances, index, registries))
        }
        Some((index, wait)) => {
            let deadline = tokio::time::Instant::now() + wait;
            let view = st
                .watches
                .wait_change(&service, index, deadline, &st.shutdown)
                .await?;
            Ok(render(
                &service,
                view.instances.values(),
                view.index,
                feeding(&view),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::route_label;

    #[test]
    fn route_labels_follow_the_routes_and_nothing_else() {
        assert_eq!(route_label("/v1/services"), "services");
        assert_eq!(route_label("/v1/services/pay/instances"), "instances");
        assert_eq!(route_label("/v1/services/pay/instances/a-1"), "instance");
        assert_eq!(
            route_label("/v1/services/pay/instances/a-1/heartbeat"),
            "heartbeat"
        );
        // Empty parameters, trailing separators and longer paths match no route.
        assert_eq!(route_label("/v1/services//instances"), "other");
        assert_eq!(route_label("/v1/services/pay/instances/"), "other");
        assert_eq!(
            route_label("/v1/services/pay/instances/a/heartbeat/x"),
            "other"
        );
        assert_eq!(route_label("/v1/services/pay/other"), "other");
        assert_eq!(route_label("/a/b/c/d/e/f/g/h/i"), "other");
    }
}
