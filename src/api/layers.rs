//! The plumbing every request on the public listener goes through, REST and gRPC alike, from
//! tower-http:
//!
//! - a request ID: the caller's `X-Request-Id` when it is a sane token (at most 64 of
//!   `[A-Za-z0-9._:-]`, so logs cannot be forged or flooded through it), else a new random one;
//!   sent back on the answer;
//! - the request timeout (`limits.request_timeout`) for every request that does not wait by
//!   design (a long poll, a watch stream), answered as the API's own `unavailable` error.
//!
//! The one log line per request stays the fronts' own (`api::http`, `api::grpc`): it carries
//! fields (identity, target, each registry's outcome) a generic trace layer cannot know, in the
//! flat shape operators already parse.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;

/// The header carrying a request's ID, both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// A caller's ID kept as it is: short, and of characters that cannot break a log line.
fn sane(v: &HeaderValue) -> bool {
    let v = v.as_bytes();
    !v.is_empty()
        && v.len() <= 64
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b))
}

/// New IDs: 64 random bits in hex.
#[derive(Clone, Copy, Default)]
struct RandomId;

impl MakeRequestId for RandomId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&format!("{:016x}", rand::random::<u64>()))
            .ok()
            .map(RequestId::new)
    }
}

/// Every request gets a sane `X-Request-Id` (the caller's, or a new one in place of a missing or
/// unsafe one) before anything else sees it, and its answer carries the same.
pub fn with_request_id(router: Router) -> Router {
    router
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(RandomId))
        .layer(axum::middleware::map_request(
            |mut req: Request| async move {
                if req.headers().get(REQUEST_ID).is_some_and(|v| !sane(v)) {
                    req.headers_mut().remove(REQUEST_ID);
                }
                req
            },
        ))
}

/// The request's ID (set by [`with_request_id`]).
pub fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Requests for which `waits` is false are answered within `timeout`, else with `on_timeout`.
#[derive(Clone, Copy)]
pub struct Bounded {
    pub timeout: Duration,
    pub waits: fn(&Request) -> bool,
    pub on_timeout: fn(Duration) -> Response,
}

type Boxed = BoxCloneSyncService<Request, Response, Infallible>;

impl<S> Layer<S> for Bounded
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Service = BoundedService;

    fn layer(&self, inner: S) -> Self::Service {
        let on_timeout = self.on_timeout;
        let timeout = self.timeout;
        // tower-http answers a timeout with a bare status; the API's error replaces it (the
        // handlers' own 503s always carry a body with a content type).
        let timed = ServiceBuilder::new()
            .map_response(move |resp: Response| {
                let bare = resp.status() == StatusCode::SERVICE_UNAVAILABLE
                    && !resp.headers().contains_key(header::CONTENT_TYPE);
                if bare { on_timeout(timeout) } else { resp }
            })
            .layer(TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                timeout,
            ))
            .service(inner.clone());
        BoundedService {
            timed: BoxCloneSyncService::new(timed),
            untimed: BoxCloneSyncService::new(inner),
            waits: self.waits,
        }
    }
}

/// [`Bounded`] applied: a request that waits by design goes to the untimed service.
#[derive(Clone)]
pub struct BoundedService {
    timed: Boxed,
    untimed: Boxed,
    waits: fn(&Request) -> bool,
}

impl Service<Request> for BoundedService {
    type Response = Response;
    type Error = Infallible;
    type Future = <Boxed as Service<Request>>::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both wrap axum routes, which are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if (self.waits)(&req) {
            self.untimed.call(req)
        } else {
            self.timed.call(req)
        }
    }
}
