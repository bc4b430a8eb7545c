//! What the REST and gRPC fronts share: who the caller is, whether it may act on a service, and
//! how a coordinator failure reads to a client. One copy, so the two fronts cannot drift.

use std::sync::Arc;

use super::AppState;
use crate::api::error::{ApiError, ErrorCode};
use crate::authz::Peer;
use crate::model::{InstanceKey, ServiceName};

/// 429 with Retry-After when the caller's identity is over its rate.
pub fn rate_limit(st: &AppState, peer: Option<&Peer>) -> Result<(), ApiError> {
    let Some(peer) = peer.filter(|_| st.requests.enabled()) else {
        return Ok(());
    };
    let fleet = st.coordinator.owned().budget(&peer.identity);
    st.requests.check(&peer.identity, fleet).map_err(|wait| {
        let secs = crate::limits::retry_after_secs(wait);
        ApiError {
            retry_after_secs: Some(secs),
            ..ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "identity '{}' is over its limit of {:.0} requests per second ({} plus {:.0} for the instances it registered on this replica); retry after {secs} s",
                    peer.identity,
                    f64::from(st.limits.requests_per_second) + fleet,
                    st.limits.requests_per_second,
                    fleet
                ),
            )
        }
    })
}

/// Each registry's outcome, as a handler attached it to the answer (empty when none did).
pub fn outcomes_logged(resp: &axum::response::Response) -> &str {
    resp.extensions()
        .get::<crate::api::error::OutcomesLog>()
        .map_or("", |o| o.0.as_str())
}

/// The caller's identity, read from its client certificate when the connection was accepted.
pub fn peer(p: Option<&Arc<Peer>>) -> Result<Arc<Peer>, ApiError> {
    p.cloned().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Forbidden,
            "no client certificate identity on this connection",
        )
    })
}

pub fn authorize_write(st: &AppState, peer: &Peer, service: &ServiceName) -> Result<(), ApiError> {
    if st.authz.can_write(peer, service) {
        Ok(())
    } else {
        Err(ApiError::forbidden(&peer.identity, service.as_str()))
    }
}

pub fn authorize_read(st: &AppState, peer: &Peer, service: &ServiceName) -> Result<(), ApiError> {
    if st.authz.can_read(peer, service) {
        Ok(())
    } else {
        Err(ApiError::forbidden(&peer.identity, service.as_str()))
    }
}

/// Parses the instance a write names and checks the caller may write it.
pub fn writable_key(
    st: &AppState,
    peer: &Peer,
    service: &str,
    id: &str,
) -> Result<InstanceKey, ApiError> {
    let key = InstanceKey::parse(service, id)?;
    authorize_write(st, peer, &key.service)?;
    Ok(key)
}

/// Parses the service a read names and checks the caller may read it.
pub fn readable_service(
    st: &AppState,
    peer: &Peer,
    service: &str,
) -> Result<ServiceName, ApiError> {
    let service = ServiceName::parse(service)?;
    authorize_read(st, peer, &service)?;
    Ok(service)
}

/// Logs a request line: at debug for a heartbeat answered OK (`quiet`), which is most of the
/// traffic of a large fleet and says nothing new, at info for everything else.
macro_rules! request_line {
    ($quiet:expr, $($field:tt)*) => {
        if $quiet {
            tracing::debug!($($field)*)
        } else {
            tracing::info!($($field)*)
        }
    };
}
pub(crate) use request_line;
