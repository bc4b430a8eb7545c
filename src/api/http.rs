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
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;
use utoipa::ToSchema;

use super::error::{failure, retry_after};
use super::layers::{Edge, Rules, Seen};
use super::openapi::{
    InstanceErrors, InstancePath, LongPoll, ReadErrors, RegisterBody, RegisterErrors,
    RegistryOutcome, ServicePath,
};
use super::{AppState, front};
use crate::api::error::{ApiError, ErrorCode, OutcomesLog};
use crate::authz::Peer;
use crate::merge::{Sourced, view_index};
use crate::metrics::Answered;
use crate::model::ValidationError;
use crate::model::{InstanceKey, MAX_BODY_BYTES, ServiceName, parse_register_body};
use crate::registry::RegistryKind;
use crate::replicate::Outcomes;
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
        now: Instant,
    ) -> Option<(&'static str, Response)> {
        owner_heartbeat(st, method, uri, peer, now).map(|resp| ("heartbeat", resp))
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
pub(crate) struct RawParams {
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

/// [`writable`], then the body ([`read_body`]). A request refused before its body (a bad name,
/// no right to the service) still has its body read, up to the same limits, so the client's
/// keep-alive connection stays usable: a body left unread makes the server close the connection
/// without saying so, and a client that sends its next request on it sees a reset.
async fn writable_with_body(
    st: &AppState,
    params: &RawParams,
    p: Option<Extension<Arc<Peer>>>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(InstanceKey, Arc<Peer>, bytes::Bytes), ApiError> {
    match writable(st, params, p) {
        Ok((key, peer)) => {
            let bytes = read_body(headers, body, st.limits.body_read_timeout).await?;
            Ok((key, peer, bytes))
        }
        Err(refused) => {
            // What the body holds changes nothing: the refusal is the answer.
            let _ = read_body(headers, body, st.limits.body_read_timeout).await;
            Err(refused)
        }
    }
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

/// A register's answer.
#[derive(Serialize, ToSchema)]
pub struct Registered<'a> {
    /// Always `true` in an answer.
    registered: bool,
    #[schema(value_type = String)]
    service: &'a ServiceName,
    #[schema(value_type = String)]
    id: &'a crate::model::InstanceId,
    ttl_seconds: u32,
    /// A registry did not accept it; twinreg keeps writing it there in the background.
    degraded: bool,
    #[schema(value_type = BTreeMap<String, RegistryOutcome>)]
    registries: &'a Outcomes,
}

/// Registers an instance (an idempotent upsert) in both registries at once.
///
/// 200 when at least one registry accepted it (`degraded` when one did not: that registry is
/// written again in the background until it accepts, the instance is deregistered, or its TTL
/// lapses). The same request again changes nothing; a changed address, port, tags or meta
/// replaces the record. A new registration of a drained instance puts it back in rotation.
#[utoipa::path(
    put,
    path = "/v1/services/{service}/instances/{id}",
    tag = "instances",
    operation_id = "register",
    params(InstancePath),
    request_body = RegisterBody,
    responses((status = 200, description = "registered", body = Registered), RegisterErrors),
)]
pub(crate) async fn register(
    State(st): State<AppState>,
    params: RawParams,
    p: Option<Extension<Arc<Peer>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (key, peer, bytes) = writable_with_body(&st, &params, p, &headers, body).await?;
    let instance = parse_register_body(key, &bytes)?;
    let (key, ttl) = (instance.key.clone(), instance.ttl_seconds);
    let report = st
        .coordinator
        .register(instance, &peer.identity)
        .await
        .map_err(failure)?;
    let resp = Json(Registered {
        registered: true,
        service: &key.service,
        id: &key.id,
        ttl_seconds: ttl,
        degraded: report.outcomes.degraded(),
        registries: &report.outcomes,
    })
    .into_response();
    Ok(logged(resp, &report.outcomes))
}

/// A drain's or an undrain's answer.
#[derive(Serialize, ToSchema)]
pub struct Drained<'a> {
    /// Whether the instance is drained now.
    drained: bool,
    #[schema(value_type = String)]
    service: &'a ServiceName,
    #[schema(value_type = String)]
    id: &'a crate::model::InstanceId,
    /// A registry did not accept it; twinreg keeps writing it there in the background.
    degraded: bool,
    #[schema(value_type = BTreeMap<String, RegistryOutcome>)]
    registries: &'a Outcomes,
}

/// Drains an instance: out of native discovery, still registered and heartbeating.
///
/// etcd's gRPC resolver drops it, Consul's passing queries and DNS leave it out (maintenance
/// mode); lists and watches show `drained: true`. Idempotent. Takes no body (none, or `{}`).
#[utoipa::path(
    put,
    path = "/v1/services/{service}/instances/{id}/drain",
    tag = "instances",
    operation_id = "drain",
    params(InstancePath),
    responses((status = 200, description = "drained", body = Drained), InstanceErrors),
)]
pub(crate) async fn drain(
    State(st): State<AppState>,
    params: RawParams,
    p: Option<Extension<Arc<Peer>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    set_drained(st, params, p, headers, body, true).await
}

/// Undrains an instance: back in native discovery.
///
/// Idempotent. Takes no body (none, or `{}`).
#[utoipa::path(
    delete,
    path = "/v1/services/{service}/instances/{id}/drain",
    tag = "instances",
    operation_id = "undrain",
    params(InstancePath),
    responses((status = 200, description = "undrained", body = Drained), InstanceErrors),
)]
pub(crate) async fn undrain(
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
    let (key, peer, bytes) = writable_with_body(&st, &params, p, &headers, body).await?;
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
    let resp = Json(Drained {
        drained,
        service: &key.service,
        id: &key.id,
        degraded: report.outcomes.degraded(),
        registries: &report.outcomes,
    })
    .into_response();
    Ok(logged(resp, &report.outcomes))
}

/// Renews an instance's TTL (every ttl/3).
///
/// To the replica that owns it, answered from memory (`coalesced`); to another, the instance is
/// taken over. 404 when no registry knows it: register again.
#[utoipa::path(
    put,
    path = "/v1/services/{service}/instances/{id}/heartbeat",
    tag = "instances",
    operation_id = "heartbeat",
    params(InstancePath),
    responses((status = 200, description = "renewed", body = HeartbeatAnswer), InstanceErrors),
)]
pub(crate) async fn heartbeat(
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
    now: Instant,
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
    // Looked up as the request's own strings: no key is built, and none is checked either: a
    // key found among the owned instances was checked when it was registered, and one not
    // found goes through the router, which checks it and says what is wrong. The caller's
    // right to the name comes first: a heartbeat it may not send does not count.
    if !st.authz.can_write_name(peer, service) {
        return None;
    }
    match st
        .coordinator
        .owner_beat(&(service, id), &peer.identity, now)?
    {
        OwnerBeat::InPlace => Some(in_place_answer(st)),
        OwnerBeat::Report(report) => Some(heartbeat_answer(st, &report.ok()?)),
    }
}

/// A heartbeat's answer (a struct, not a `json!` map: the hot path builds no intermediate JSON
/// tree).
#[derive(Serialize, ToSchema)]
pub struct HeartbeatAnswer<'a> {
    /// Always `true` in an answer.
    ok: bool,
    /// A registry does not hold its copy now (it is being written again) or is not answering.
    degraded: bool,
    #[schema(value_type = BTreeMap<String, RegistryOutcome>)]
    registries: &'a Outcomes,
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

/// A deregister's answer.
#[derive(Serialize, ToSchema)]
pub struct Deregistered<'a> {
    /// Always `true` in an answer.
    deregistered: bool,
    /// Whether a registry held the instance.
    existed: bool,
    /// A registry missed the delete; twinreg re-drives it in the background.
    degraded: bool,
    #[schema(value_type = BTreeMap<String, RegistryOutcome>)]
    registries: &'a Outcomes,
}

/// Deregisters an instance from both registries.
///
/// Idempotent: `existed` says whether a registry held it. A registry that missed the delete is
/// re-driven in the background.
#[utoipa::path(
    delete,
    path = "/v1/services/{service}/instances/{id}",
    tag = "instances",
    operation_id = "deregister",
    params(InstancePath),
    responses((status = 200, description = "deregistered", body = Deregistered), InstanceErrors),
)]
pub(crate) async fn deregister(
    State(st): State<AppState>,
    params: RawParams,
    p: Option<Extension<Arc<Peer>>>,
) -> Result<Response, ApiError> {
    let key = writable_key(&st, &params, p)?;
    let report = st.coordinator.deregister(&key).await.map_err(failure)?;
    let resp = Json(Deregistered {
        deregistered: true,
        existed: report.existed,
        degraded: report.outcomes.degraded(),
        registries: &report.outcomes,
    })
    .into_response();
    Ok(logged(resp, &report.outcomes))
}

/// The services and how many instances each has.
#[derive(Serialize, ToSchema)]
pub struct ServicesAnswer {
    services: Vec<ServiceCount>,
    #[schema(value_type = BTreeMap<String, RegistryOutcome>)]
    registries: Outcomes,
}

#[derive(Serialize, ToSchema)]
pub struct ServiceCount {
    #[schema(value_type = String)]
    name: ServiceName,
    instances: usize,
}

/// Lists the services and their instance counts.
///
/// Only the services the caller may read.
#[utoipa::path(
    get,
    path = "/v1/services",
    tag = "instances",
    operation_id = "services",
    responses((status = 200, description = "the services", body = ServicesAnswer), ReadErrors),
)]
pub(crate) async fn services(
    State(st): State<AppState>,
    p: Option<Extension<Arc<Peer>>>,
) -> Result<Response, ApiError> {
    let peer = peer(p)?;
    let (names, outcomes) = st.coordinator.services().await.map_err(failure)?;
    let services = names
        .into_iter()
        .filter(|(name, _)| st.authz.can_read(&peer, name))
        .map(|(name, instances)| ServiceCount { name, instances })
        .collect();
    Ok(Json(ServicesAnswer {
        services,
        registries: outcomes,
    })
    .into_response())
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    index: Option<String>,
    wait: Option<String>,
}

/// A `wait`: one or more `<digits><unit>` with unit `ms`, `s`, `m` or `h` (Go's and Consul's
/// forms: `30s`, `2m`, `1m30s`), at most nine digits each; `None` for anything else.
fn parse_wait(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else {
            return None;
        };
        total = total.saturating_add(unit.saturating_mul(u32::try_from(n).ok()?));
        rest = &rest[len..];
    }
    Some(total)
}

fn parse_long_poll(q: &ListQuery) -> Result<Option<(u64, Duration)>, ValidationError> {
    // A `wait` is read whether or not an `index` comes with it: one that is not a duration is
    // refused, never ignored.
    let wait = match &q.wait {
        None => MAX_WAIT,
        Some(w) => parse_wait(w)
            .ok_or_else(|| {
                ValidationError::new(
                    "wait",
                    "must be a duration of numbers with units ms, s, m or h, e.g. 30s, 2m or 1m30s",
                )
            })?
            .min(MAX_WAIT),
    };
    let Some(index) = &q.index else {
        return Ok(None);
    };
    let index: u64 = index.parse().map_err(|_| {
        ValidationError::new(
            "index",
            "must be a non-negative integer from a previous answer",
        )
    })?;
    Ok((index != 0).then_some((index, wait)))
}

/// A list's answer.
#[derive(Serialize, ToSchema)]
pub struct InstancesAnswer<'a> {
    #[schema(value_type = String)]
    service: &'a ServiceName,
    /// The set's content index: the same set gives the same index on every replica. Pass it
    /// back as `?index=` to wait for a change.
    #[schema(schema_with = super::openapi::index_schema)]
    index: u64,
    instances: Vec<InstanceView<'a>>,
    /// Each registry's part in this answer.
    #[schema(value_type = BTreeMap<String, RegistryOutcome>)]
    registries: Value,
}

/// One instance of a list: the union of both registries, the primary's (etcd's) record winning.
#[derive(Serialize, ToSchema)]
pub struct InstanceView<'a> {
    #[schema(value_type = String)]
    id: &'a crate::model::InstanceId,
    address: &'a str,
    port: u16,
    tags: &'a [String],
    #[schema(value_type = BTreeMap<String, String>)]
    meta: &'a crate::model::Meta,
    ttl_seconds: u32,
    /// Out of native discovery (drained), still registered.
    drained: bool,
    /// The registries holding it.
    sources: &'a [RegistryKind],
}

fn render<'a>(
    service: &ServiceName,
    instances: impl IntoIterator<Item = &'a Sourced>,
    index: u64,
    registries: Value,
) -> Response {
    let instances = instances
        .into_iter()
        .map(
            |Sourced {
                 instance: i,
                 sources,
             }| InstanceView {
                id: &i.key.id,
                address: &i.address,
                port: i.port,
                tags: &i.tags,
                meta: &i.meta,
                ttl_seconds: i.ttl_seconds,
                drained: i.drained,
                sources,
            },
        )
        .collect();
    let mut resp = Json(InstancesAnswer {
        service,
        index,
        instances,
        registries,
    })
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

/// Lists a service's instances.
///
/// The union of both registries, one entry per id, the primary's (etcd's) record winning, with
/// `sources` saying where each was found; it answers from one registry when the other is down.
/// With `?index=N`, waits (at most `wait`) until the set differs from the one that produced `N`
/// (an instance added, changed or removed), else answers the same index after `wait`.
#[utoipa::path(
    get,
    path = "/v1/services/{service}/instances",
    tag = "instances",
    operation_id = "list",
    params(ServicePath, LongPoll),
    responses(
        (status = 200, description = "the instances", body = InstancesAnswer,
         headers(("X-Twinreg-Index" = u64, description = "the answer's index"))),
        ReadErrors,
    ),
)]
// The long poll watches the registries through the service's shared watch hub.
pub(crate) async fn list(
    State(st): State<AppState>,
    params: RawParams,
    p: Option<Extension<Arc<Peer>>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    // A query axum cannot read (a parameter given twice, bytes that are not UTF-8) is the API's
    // 400, in its JSON shape.
    let Query(q) = q.map_err(|e| ValidationError::new("query", e.body_text()))?;
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
    fn a_wait_is_numbers_with_units_and_nothing_else() {
        use super::parse_wait;
        use std::time::Duration;
        assert_eq!(parse_wait("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_wait("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_wait("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_wait("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_wait("1h"), Some(Duration::from_secs(3600)));
        for bad in [
            "",
            "0",
            "30",
            "s",
            "1 m",
            "1min",
            "-1s",
            "1.5s",
            "1000000000s",
            "5d",
            "1s ",
        ] {
            assert_eq!(parse_wait(bad), None, "{bad:?}");
        }
    }

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
