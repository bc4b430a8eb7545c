//! The agent endpoints: service register/deregister, maintenance mode, TTL check updates, and the
//! agent's own view of its services and checks (no blocking index, no `X-Consul-Index`).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderValue, StatusCode};

use crate::acl::{self, Authz};
use crate::http::{ApiError, Req, Resp, empty_ok, json};
use crate::model::{CRITICAL, PASSING, WARNING};
use crate::state::{State, UpdateError};
use crate::{blocking, filter, register, views};

fn authorize(state: &State, req: &Req) -> Result<(Authz, String), ApiError> {
    let token = acl::request_token(req);
    Ok((acl::resolve(state.cfg.acl_token.as_deref(), &token)?, token))
}

/// `PUT /v1/agent/service/register[?replace-existing-checks]`.
pub async fn register(state: &Arc<State>, req: &Req) -> Result<Resp, ApiError> {
    let def = crate::decode::decode(&req.body)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
    if def.name.is_empty() {
        return Err(ApiError::bad_request("Missing service name"));
    }
    if register::is_any_address(&def.address) {
        return Err(ApiError::bad_request("Invalid service address"));
    }
    let (authz, _) = authorize(state, req)?;
    let reg = register::validate(def)?;
    authz.service_write(&reg.service.name)?;
    let existing = state
        .lock()
        .services
        .get(&reg.service.id)
        .map(|s| s.name.clone());
    if let Some(name) = existing {
        authz.service_write(&name)?;
    }
    if let Some(e) = reg.deferred {
        return Err(e);
    }
    let replace = matches!(req.query("replace-existing-checks"), Some("" | "true"));
    state.register(reg.service, reg.checks, replace);
    Ok(empty_ok())
}

/// Consul's `vetServiceUpdateWithAuthorizer`: service `id` must exist (`404` naming it, before any
/// permission check) and the token needs `service:write` on its name.
fn vet_service_update(state: &State, authz: Authz, id: &str) -> Result<(), ApiError> {
    let name = state.lock().services.get(id).map(|s| s.name.clone());
    let Some(name) = name else {
        return Err(ApiError::not_found(format!(
            "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
        )));
    };
    authz.service_write(&name)
}

/// `PUT /v1/agent/service/deregister/:service_id`.
pub fn deregister(state: &State, req: &Req, id: &str) -> Result<Resp, ApiError> {
    let (authz, _) = authorize(state, req)?;
    vet_service_update(state, authz, id)?;
    state.deregister(id);
    Ok(empty_ok())
}

/// `PUT /v1/agent/service/maintenance/:service_id?enable=<bool>[&reason=...]`, in Consul's order:
/// the ID, then `enable` (present, a Go bool), then the token, the service and `service:write`.
/// Enabling adds the critical `_service_maintenance:<id>` check (nothing when it exists),
/// disabling removes it (nothing when it does not).
pub fn service_maintenance(state: &State, req: &Req, id: &str) -> Result<Resp, ApiError> {
    if id.is_empty() {
        return Err(ApiError::bad_request("Missing service ID"));
    }
    if !req.has_query("enable") {
        return Err(ApiError::bad_request("Missing value for enable"));
    }
    let raw = req.query("enable").unwrap_or_default();
    let enable = crate::http::parse_bool(raw)
        .ok_or_else(|| ApiError::bad_request(format!("Invalid value for enable: {raw:?}")))?;
    let (authz, _) = authorize(state, req)?;
    vet_service_update(state, authz, id)?;
    let found = if enable {
        state.enable_maintenance(id, req.query("reason").unwrap_or_default())
    } else {
        state.disable_maintenance(id)
    };
    if !found {
        // Deregistered since the check above.
        return Err(ApiError::not_found(format!(
            "No service registered with ID {id:?}"
        )));
    }
    Ok(empty_ok())
}

/// `PUT /v1/agent/check/{pass,warn,fail}/:check_id?note=` (`status` given) and
/// `PUT /v1/agent/check/update/:check_id` (`{"Status", "Output"}` body).
pub fn check_update(
    state: &State,
    req: &Req,
    id: &str,
    status: Option<&str>,
) -> Result<Resp, ApiError> {
    let (status, output) = match status {
        Some(s) => (
            s.to_owned(),
            req.query("note").unwrap_or_default().to_owned(),
        ),
        None => decode_update(&req.body)?,
    };
    let (authz, _) = authorize(state, req)?;
    let owner = state.lock().checks.get(id).map(|c| c.service_id.clone());
    let Some(service_id) = owner else {
        return Err(unknown_check(id));
    };
    let service_name = state
        .lock()
        .services
        .get(&service_id)
        .map(|s| s.name.clone());
    match service_name {
        Some(name) => authz.service_write(&name)?,
        None => authz.node_write(&state.cfg.node_name)?,
    }
    match state.update_ttl(id, &status, &output) {
        Ok(()) => Ok(empty_ok()),
        Err(UpdateError::UnknownCheck) => Err(unknown_check(id)),
        Err(UpdateError::NotTtl) => Err(ApiError::internal(format!(
            "CheckID {id:?} does not have associated TTL"
        ))),
    }
}

fn unknown_check(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."
    ))
}

fn decode_update(body: &[u8]) -> Result<(String, String), ApiError> {
    let decode = || -> Result<(String, String), String> {
        let v = crate::json::read_body(body)?;
        let (mut status, mut output) = (String::new(), String::new());
        for (field, value) in crate::json::fields(&v, &["Status", "Output"], "agent.checkUpdate")? {
            let text =
                crate::json::string(value, &format!("checkUpdate.{field}"))?.unwrap_or_default();
            if field == "Status" {
                status = text;
            } else {
                output = text;
            }
        }
        Ok((status, output))
    };
    let (status, output) =
        decode().map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
    if ![PASSING, WARNING, CRITICAL].contains(&status.as_str()) {
        return Err(ApiError::bad_request(format!(
            "Invalid check status: '{status}'"
        )));
    }
    Ok((status, output))
}

/// Parses `?filter=` (errors are 500s, as bexpr errors are in Consul).
pub fn parse_filter(req: &Req) -> Result<Option<filter::Expr>, ApiError> {
    match req.query("filter").filter(|f| !f.is_empty()) {
        Some(f) => filter::parse(f).map(Some).map_err(ApiError::internal),
        None => Ok(None),
    }
}

/// Keeps the items the expression accepts.
pub fn apply_filter<T: serde::Serialize>(items: &mut Vec<T>, expr: Option<&filter::Expr>) {
    if let Some(expr) = expr {
        items.retain(|i| expr.eval(&serde_json::to_value(i).expect("serializable")));
    }
}

/// `X-Consul-Results-Filtered-By-ACLs`, only for requests that carried a token.
pub fn mark_filtered(resp: &mut Resp, token: &str, filtered: bool) {
    if !token.is_empty() && filtered {
        resp.headers_mut().insert(
            "X-Consul-Results-Filtered-By-ACLs",
            HeaderValue::from_static("true"),
        );
    }
}

/// `GET /v1/agent/services`: object keyed by service ID.
pub fn services(state: &State, req: &Req) -> Result<Resp, ApiError> {
    let (authz, token) = authorize(state, req)?;
    let expr = parse_filter(req)?;
    let g = state.lock();
    let total = g.services.len();
    let mut items: Vec<views::AgentService> = g
        .services
        .values()
        .filter(|_| authz.can_read())
        .map(|s| views::agent_service(s, &state.cfg))
        .collect();
    drop(g);
    let filtered = items.len() != total;
    apply_filter(&mut items, expr.as_ref());
    let out: BTreeMap<String, views::AgentService> =
        items.into_iter().map(|s| (s.id.clone(), s)).collect();
    let mut resp = json(&out);
    mark_filtered(&mut resp, &token, filtered);
    Ok(resp)
}

/// `GET /v1/agent/service/:service_id` (with `ContentHash`, and `?hash=` blocking).
pub async fn service(state: &Arc<State>, req: &Req, id: &str) -> Result<Resp, ApiError> {
    let b = blocking::parse(req)?;
    let (authz, _) = authorize(state, req)?;
    let hash = req.query("hash").unwrap_or_default();
    let (svc, hash) = blocking::run_hash(state, hash, b.wait, |inner| {
        let s = inner
            .services
            .get(id)
            .ok_or_else(|| ApiError::not_found(format!("unknown service ID: {id}")))?;
        authz.service_read(&s.name)?;
        let mut view = views::agent_service(s, &state.cfg);
        view.content_hash = views::content_hash(&view);
        let h = view.content_hash.clone();
        Ok((view, h))
    })
    .await?;
    let mut resp = json(&svc);
    if let Ok(v) = HeaderValue::from_str(&hash) {
        resp.headers_mut().insert("X-Consul-ContentHash", v);
    }
    Ok(resp)
}

/// `GET /v1/agent/checks`: object keyed by check ID.
pub fn checks(state: &State, req: &Req) -> Result<Resp, ApiError> {
    let (authz, token) = authorize(state, req)?;
    let expr = parse_filter(req)?;
    let g = state.lock();
    let total = g.checks.len();
    let mut items: Vec<views::HealthCheck> = g
        .checks
        .values()
        .filter(|_| authz.can_read())
        .map(|c| views::health_check(c, &g, &state.cfg, false))
        .collect();
    drop(g);
    let filtered = items.len() != total;
    apply_filter(&mut items, expr.as_ref());
    let out: BTreeMap<String, views::HealthCheck> =
        items.into_iter().map(|c| (c.check_id.clone(), c)).collect();
    let mut resp = json(&out);
    mark_filtered(&mut resp, &token, filtered);
    Ok(resp)
}

/// `GET /v1/agent/health/service/id/:service_id`: the service, its checks and the node's, and
/// their aggregate (critical over warning over passing) as the status code: `200` passing,
/// `429` warning, `503` critical. An unknown ID is `404` with `AggregatedStatus: critical` and
/// null `Service` and `Checks` (`?format=text`: the status, or `ServiceId <id> not found`, as
/// plain text). One service's worth of work, however many the agent holds.
pub fn health_service_by_id(state: &State, req: &Req, id: &str) -> Result<Resp, ApiError> {
    let (authz, _) = authorize(state, req)?;
    let text = req.query("format") == Some("text");
    let g = state.lock();
    let Some(s) = g.services.get(id) else {
        drop(g);
        let reason = format!("ServiceId {id} not found");
        if text {
            return Ok(crate::http::text(StatusCode::NOT_FOUND, reason));
        }
        let mut r = json(&serde_json::json!({
            "AggregatedStatus": CRITICAL, "Service": null, "Checks": null
        }));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return Ok(r);
    };
    authz.service_read(&s.name)?;
    let service = views::agent_service(s, &state.cfg);
    let mut ids = g.check_ids_of(id);
    ids.extend(g.check_ids_of(""));
    let checks: Vec<views::HealthCheck> = ids
        .iter()
        .filter_map(|c| g.checks.get(c))
        .map(|c| views::health_check(c, &g, &state.cfg, false))
        .collect();
    drop(g);
    let status = if checks.iter().any(|c| c.status == CRITICAL) {
        CRITICAL
    } else if checks.iter().any(|c| c.status == WARNING) {
        WARNING
    } else {
        PASSING
    };
    let code = match status {
        CRITICAL => StatusCode::SERVICE_UNAVAILABLE,
        WARNING => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::OK,
    };
    if text {
        return Ok(crate::http::text(code, status));
    }
    let mut r = json(&serde_json::json!({
        "AggregatedStatus": status, "Service": service, "Checks": checks
    }));
    *r.status_mut() = code;
    Ok(r)
}
