//! Routing and Consul's shared HTTP rules: `405 method X not allowed` with `Allow`, `OPTIONS`,
//! `404 Invalid URL path`, plain-text errors, bodiless `200` writes, JSON answers.
//!
//! Routes follow Go's `ServeMux`: a pattern ending in `/` matches a subtree, the longest pattern
//! wins, and a subtree's path without its trailing slash is redirected to it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;

use crate::state::State;
use crate::{agent, catalog};

pub type Resp = Response<Full<Bytes>>;

/// An error answered as Consul does: a status and a plain-text body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub msg: String,
}

impl ApiError {
    pub fn new(status: StatusCode, msg: impl Into<String>) -> ApiError {
        ApiError {
            status,
            msg: msg.into(),
        }
    }
    pub fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, msg)
    }
    pub fn forbidden(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, msg)
    }
    pub fn not_found(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, msg)
    }
    pub fn internal(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg)
    }
    fn into_response(self) -> Resp {
        text(self.status, self.msg)
    }
}

/// A plain-text answer (Go's content sniffing gives `text/plain; charset=utf-8`).
pub fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A successful write: `200`, no body, no Content-Type.
pub fn empty_ok() -> Resp {
    Response::new(Full::new(Bytes::new()))
}

/// A JSON answer, pretty-printed as a dev agent does.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(crate::json::encode(value))));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A request, read in full, with its parsed query.
pub struct Req {
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Req {
    /// The first value of a query parameter (Go's `Query().Get`).
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    pub fn has_query(&self, key: &str) -> bool {
        self.query.iter().any(|(k, _)| k == key)
    }
    pub fn query_all(&self, key: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers.get(key).and_then(|v| v.to_str().ok())
    }
}

/// Go's `strconv.ParseBool`: exactly these spellings, nothing else.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn unhex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Percent-decoding; `plus` also turns `+` into a space (query strings). Bad escapes are errors.
pub fn percent_decode(s: &str, plus: bool) -> Result<String, ()> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = b.get(i + 1).copied().and_then(unhex).ok_or(())?;
                let lo = b.get(i + 2).copied().and_then(unhex).ok_or(())?;
                out.push(hi * 16 + lo);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Go's `url.ParseQuery` (semicolons and bad escapes are errors).
fn parse_query(raw: &str) -> Result<Vec<(String, String)>, ()> {
    let mut out = Vec::new();
    for part in raw.split('&').filter(|p| !p.is_empty()) {
        if part.contains(';') {
            return Err(());
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((percent_decode(k, true)?, percent_decode(v, true)?));
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Register,
    Deregister,
    ServiceMaintenance,
    AgentService,
    AgentServices,
    AgentChecks,
    CheckPass,
    CheckWarn,
    CheckFail,
    CheckUpdate,
    HealthService,
    HealthChecks,
    CatalogServices,
    StatusLeader,
    StatusPeers,
    Metrics,
    AgentHealthServiceById,
}

const ROUTES: &[(&str, &str, Endpoint)] = &[
    ("/v1/agent/service/register", "PUT", Endpoint::Register),
    ("/v1/agent/service/deregister/", "PUT", Endpoint::Deregister),
    (
        "/v1/agent/service/maintenance/",
        "PUT",
        Endpoint::ServiceMaintenance,
    ),
    ("/v1/agent/service/", "GET", Endpoint::AgentService),
    ("/v1/agent/services", "GET", Endpoint::AgentServices),
    ("/v1/agent/checks", "GET", Endpoint::AgentChecks),
    ("/v1/agent/check/pass/", "PUT", Endpoint::CheckPass),
    ("/v1/agent/check/warn/", "PUT", Endpoint::CheckWarn),
    ("/v1/agent/check/fail/", "PUT", Endpoint::CheckFail),
    ("/v1/agent/check/update/", "PUT", Endpoint::CheckUpdate),
    ("/v1/health/service/", "GET", Endpoint::HealthService),
    ("/v1/health/checks/", "GET", Endpoint::HealthChecks),
    ("/v1/catalog/services", "GET", Endpoint::CatalogServices),
    ("/v1/status/leader", "GET", Endpoint::StatusLeader),
    ("/v1/status/peers", "GET", Endpoint::StatusPeers),
    ("/v1/agent/metrics", "GET", Endpoint::Metrics),
    (
        "/v1/agent/health/service/id/",
        "GET",
        Endpoint::AgentHealthServiceById,
    ),
];

/// The longest matching pattern, its method and endpoint, and the rest of the path after it.
/// None for a subtree's root without its slash (`/v1/agent/service/maintenance`): Go's
/// `ServeMux` redirects it to the subtree before matching, so a shorter subtree
/// (`/v1/agent/service/`) does not take it.
fn route(path: &str) -> Option<(&'static str, &'static str, Endpoint, &str)> {
    if subtree_root(path) {
        return None;
    }
    ROUTES
        .iter()
        .filter(|(p, _, _)| {
            if p.ends_with('/') {
                path.starts_with(p)
            } else {
                path == *p
            }
        })
        .max_by_key(|(p, _, _)| p.len())
        .map(|(p, m, e)| (*p, *m, *e, &path[p.len()..]))
}

const MAX_BODY: usize = 8 << 20;

/// Serves one request; logs it at debug level (never the query string, which may hold a token).
pub async fn serve(state: Arc<State>, req: hyper::Request<Incoming>) -> Result<Resp, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let raw_path = req.uri().path().to_owned();
    let resp = dispatch(&state, req).await;
    tracing::debug!(%method, path = %raw_path, status = resp.status().as_u16(),
        latency_ms = started.elapsed().as_millis() as u64, "request");
    Ok(resp)
}

async fn dispatch(state: &Arc<State>, req: hyper::Request<Incoming>) -> Resp {
    let raw_query = req.uri().query().unwrap_or_default().to_owned();
    let path =
        percent_decode(req.uri().path(), false).unwrap_or_else(|_| req.uri().path().to_owned());
    let Some((pattern, method, endpoint, rest)) = route(&path) else {
        state.requests.count(req.method().as_str(), "other");
        return not_routed(&path, &raw_query);
    };
    state.requests.count(req.method().as_str(), pattern);
    let rest = rest.to_owned();
    let policy = if state.cfg.acl_token.is_some() {
        "deny"
    } else {
        "allow"
    };
    let mut resp = handle(state, req, &raw_query, method, endpoint, &rest).await;
    resp.headers_mut().insert(
        "X-Consul-Default-Acl-Policy",
        HeaderValue::from_static(policy),
    );
    resp
}

async fn handle(
    state: &Arc<State>,
    req: hyper::Request<Incoming>,
    raw_query: &str,
    method: &'static str,
    endpoint: Endpoint,
    rest: &str,
) -> Resp {
    let Ok(query) = parse_query(raw_query) else {
        let mut r = empty_ok();
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return r;
    };
    let allow = HeaderValue::from_str(&format!("OPTIONS,{method}")).expect("static text");
    if req.method() == Method::OPTIONS {
        let mut r = empty_ok();
        r.headers_mut().insert(header::ALLOW, allow);
        return r;
    }
    if req.method().as_str() != method {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {} not allowed", req.method()),
        );
        r.headers_mut().insert(header::ALLOW, allow);
        return r;
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return text(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
    };
    let r = Req {
        query,
        headers: parts.headers,
        body,
    };
    let result = match endpoint {
        Endpoint::Register => agent::register(state, &r).await,
        Endpoint::Deregister => agent::deregister(state, &r, rest),
        Endpoint::ServiceMaintenance => agent::service_maintenance(state, &r, rest),
        Endpoint::AgentService => agent::service(state, &r, rest).await,
        Endpoint::AgentServices => agent::services(state, &r),
        Endpoint::AgentChecks => agent::checks(state, &r),
        Endpoint::CheckPass => agent::check_update(state, &r, rest, Some(crate::model::PASSING)),
        Endpoint::CheckWarn => agent::check_update(state, &r, rest, Some(crate::model::WARNING)),
        Endpoint::CheckFail => agent::check_update(state, &r, rest, Some(crate::model::CRITICAL)),
        Endpoint::CheckUpdate => agent::check_update(state, &r, rest, None),
        Endpoint::HealthService => catalog::health_service(state, &r, rest).await,
        Endpoint::HealthChecks => catalog::health_checks(state, &r, rest).await,
        Endpoint::CatalogServices => catalog::services(state, &r).await,
        Endpoint::StatusLeader => Ok(json("127.0.0.1:8300")),
        Endpoint::StatusPeers => Ok(json(&["127.0.0.1:8300"])),
        Endpoint::Metrics => Ok(crate::metrics::serve(&state.requests, &r)),
        Endpoint::AgentHealthServiceById => agent::health_service_by_id(state, &r, rest),
    };
    result.unwrap_or_else(ApiError::into_response)
}

/// Whether `path` names a subtree (a pattern ending in `/`) without its trailing slash, and is no
/// pattern itself.
fn subtree_root(path: &str) -> bool {
    !path.ends_with('/')
        && !ROUTES.iter().any(|(p, _, _)| *p == path)
        && ROUTES
            .iter()
            .any(|(p, _, _)| p.strip_suffix('/') == Some(path))
}

/// Paths no endpoint serves: Go's subtree redirect, the index page, or Consul's 404 texts.
fn not_routed(path: &str, raw_query: &str) -> Resp {
    if subtree_root(path) {
        let with_slash = format!("{path}/");
        let location = if raw_query.is_empty() {
            with_slash
        } else {
            format!("{with_slash}?{raw_query}")
        };
        let mut r = Response::new(Full::new(Bytes::from(format!(
            "<a href=\"{location}\">Moved Permanently</a>.\n\n"
        ))));
        *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }
    if path == "/" {
        return text(
            StatusCode::OK,
            "Consul Agent: UI disabled. To enable, set ui_config.enabled=true in the agent configuration and restart.",
        );
    }
    if path.contains("/v1/") {
        text(
            StatusCode::NOT_FOUND,
            "Invalid URL path: not a recognized HTTP API endpoint\n",
        )
    } else {
        text(
            StatusCode::NOT_FOUND,
            "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n",
        )
    }
}
