//! The catalog-backed, blocking endpoints: `/v1/health/service/:service`,
//! `/v1/health/checks/:service` and `/v1/catalog/services`. All send `X-Consul-Index` (never 0)
//! and the other query-meta headers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::acl;
use crate::agent::{apply_filter, mark_filtered, parse_filter};
use crate::http::{ApiError, Req, Resp, json, parse_bool};
use crate::model::PASSING;
use crate::state::State;
use crate::{blocking, views};

/// `GET /v1/health/service/:service[?passing][&tag=..][&filter=..][&index=..&wait=..]`.
pub async fn health_service(state: &Arc<State>, req: &Req, name: &str) -> Result<Resp, ApiError> {
    let b = blocking::parse(req)?;
    if name.is_empty() {
        return Err(ApiError::bad_request("Missing service name"));
    }
    let passing = match req.query("passing") {
        None => false,
        Some("") => true,
        Some(v) => {
            parse_bool(v).ok_or_else(|| ApiError::bad_request("Invalid value for ?passing"))?
        }
    };
    let tags: Vec<String> = req
        .query_all("tag")
        .iter()
        .map(|t| t.to_lowercase())
        .collect();
    let expr = parse_filter(req)?;
    let token = acl::request_token(req);
    let authz = acl::resolve(state.cfg.acl_token.as_deref(), &token)?;

    let (mut entries, index) = blocking::run(
        state,
        b,
        |inner| inner.health_index(name),
        |inner| views::health_entries(inner, &state.cfg, name),
    )
    .await;
    let filtered = drop_unreadable(authz, &mut entries);
    entries.retain(|e| {
        tags.iter()
            .all(|want| e.service.tags.iter().any(|t| t.to_lowercase() == *want))
    });
    apply_filter(&mut entries, expr.as_ref());
    if passing {
        entries.retain(|e| e.checks.iter().all(|c| c.status == PASSING));
    }
    Ok(list_answer(&entries, index, &b, &token, filtered))
}

/// `GET /v1/health/checks/:service[?filter=..][&index=..&wait=..]`: the checks of every instance
/// of the service (name matched case-insensitively, as `/v1/health/service`), without the node's
/// own checks. Unknown service: `200 []`. Blocking, with the same index as `/v1/health/service`.
pub async fn health_checks(state: &Arc<State>, req: &Req, name: &str) -> Result<Resp, ApiError> {
    let b = blocking::parse(req)?;
    if name.is_empty() {
        return Err(ApiError::bad_request("Missing service name"));
    }
    let expr = parse_filter(req)?;
    let token = acl::request_token(req);
    let authz = acl::resolve(state.cfg.acl_token.as_deref(), &token)?;

    let (mut checks, index) = blocking::run(
        state,
        b,
        |inner| inner.health_index(name),
        |inner| views::service_checks(inner, &state.cfg, name),
    )
    .await;
    let filtered = drop_unreadable(authz, &mut checks);
    apply_filter(&mut checks, expr.as_ref());
    Ok(list_answer(&checks, index, &b, &token, filtered))
}

/// A list the caller's token may not read is answered empty (Consul's default deny filters
/// reads, it does not refuse them); whether anything was dropped.
fn drop_unreadable<T>(authz: acl::Authz, items: &mut Vec<T>) -> bool {
    if authz.can_read() || items.is_empty() {
        return false;
    }
    items.clear();
    true
}

/// A blocking list query's answer: the items, the query-meta headers, and the ACL-filtered mark.
fn list_answer<T: serde::Serialize>(
    items: &[T],
    index: u64,
    b: &blocking::Blocking,
    token: &str,
    filtered: bool,
) -> Resp {
    let mut resp = json(items);
    blocking::set_meta(&mut resp, index, b);
    mark_filtered(&mut resp, token, filtered);
    resp
}

/// `GET /v1/catalog/services`: service name → the union of its instances' tags.
pub async fn services(state: &Arc<State>, req: &Req) -> Result<Resp, ApiError> {
    let b = blocking::parse(req)?;
    let expr = parse_filter(req)?;
    let token = acl::request_token(req);
    let authz = acl::resolve(state.cfg.acl_token.as_deref(), &token)?;

    let (nodes, index) = blocking::run(
        state,
        b,
        |inner| inner.services_index,
        |inner| views::service_nodes(inner, &state.cfg),
    )
    .await;
    let readable = authz.can_read();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, tags, value) in &nodes {
        if !readable || expr.as_ref().is_some_and(|e| !e.eval(value)) {
            continue;
        }
        out.entry(name.clone())
            .or_default()
            .extend(tags.iter().cloned());
    }
    let out: BTreeMap<String, Vec<String>> = out
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().collect()))
        .collect();
    let mut resp = json(&out);
    blocking::set_meta(&mut resp, index, &b);
    mark_filtered(&mut resp, &token, !readable);
    Ok(resp)
}
