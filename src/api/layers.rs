//! The edge every request on the public listener goes through, REST and gRPC alike, in one
//! service wrapped around each front's router:
//!
//! - a request ID: the caller's `X-Request-Id` when it is a sane token (at most 64 of
//!   `[A-Za-z0-9._:-]`, so logs cannot be forged or flooded through it), else a new random one;
//!   sent back on the answer;
//! - the per-identity rate limit (429 with Retry-After, in the front's own error envelope);
//! - the request timeout (`limits.request_timeout`) for every request that does not wait by
//!   design (a long poll, a watch stream), answered as the API's own `unavailable` error;
//! - the request count and the one log line per request, which stay the fronts' own
//!   ([`Rules::finish`]): they carry fields (identity, target, each registry's outcome) a
//!   generic trace layer cannot know, in the flat shape operators already parse.
//!
//! One service, not a stack of `Router::layer`s: axum boxes every route again for each layer it
//! is given, and a heartbeat through five boxed layers cost twinreg more than the heartbeat itself
//! (BENCHMARKS.md). Here the router is called once, with one boxed future per request.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, Uri};
use axum::response::Response;
use futures::future::{BoxFuture, Either, Ready, ready};
use tower::ServiceExt;

use super::{AppState, front};
use crate::api::error::ApiError;
use crate::authz::Peer;

/// The header carrying a request's ID, both ways (a `HeaderName` made once: a `&str` name is
/// parsed again on every use).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A caller's ID kept as it is: short, and of characters that cannot break a log line.
fn sane(v: &HeaderValue) -> bool {
    let v = v.as_bytes();
    !v.is_empty()
        && v.len() <= 64
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b))
}

/// 64 random bits, from a per-thread wyrand generator seeded from the OS once per thread: a
/// request ID must not repeat, not be secret, and is made for every answer (`rand`'s
/// cryptographic generator cost three times as much a heartbeat).
fn id_bits() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(rand::random());
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        (t as u64) ^ ((t >> 64) as u64)
    })
}

/// A new ID: 64 random bits in hex.
fn new_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = id_bits();
    let mut id = [0u8; 16];
    for (i, c) in id.iter_mut().enumerate() {
        *c = HEX[((bits >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
}

/// What the edge saw of a request before the router took it, for the front's log line.
pub struct Seen {
    /// The route, when the edge answered at once from memory and so knows it already.
    pub route: Option<&'static str>,
    pub method: Method,
    pub uri: Uri,
    pub peer: Option<Arc<Peer>>,
    pub request_id: HeaderValue,
    pub start: Instant,
}

impl Seen {
    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or_default()
    }

    pub fn identity(&self) -> &str {
        self.peer.as_deref().map_or("", |p| p.identity.as_str())
    }

    pub fn took_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// What differs between the REST and the gRPC edge.
pub trait Rules: Send + Sync + 'static {
    /// Whether the request waits by design (no request timeout).
    fn waits(req: &Request) -> bool;
    /// The answer to a request the front can give at once, from memory, without the router
    /// (REST: the owner's heartbeat, most of a fleet's traffic: the router, its extractors and
    /// the request timer cost more than the heartbeat), with its route label; `None` sends it
    /// through the router.
    fn answer_now(
        _st: &AppState,
        _method: &Method,
        _uri: &Uri,
        _peer: Option<&Arc<Peer>>,
        _now: Instant,
    ) -> Option<(&'static str, Response)> {
        None
    }
    /// The answer to a request the router did not answer within `limit`.
    fn timed_out(limit: Duration) -> Response;
    /// The answer to a request refused before the router (the rate limit).
    fn refused(e: ApiError) -> Response;
    /// Counts and logs the answer; may replace it (gRPC's own errors become the API's).
    fn finish(st: &AppState, seen: &Seen, resp: Response) -> Response;
}

/// A front's router behind the edge.
pub struct Edge<R> {
    router: Router,
    st: AppState,
    rules: PhantomData<fn() -> R>,
}

impl<R> Clone for Edge<R> {
    fn clone(&self) -> Self {
        Self {
            router: self.router.clone(),
            st: self.st.clone(),
            rules: PhantomData,
        }
    }
}

impl<R: Rules> Edge<R> {
    pub fn new(router: Router, st: AppState) -> Self {
        Self {
            router,
            st,
            rules: PhantomData,
        }
    }
}

/// The edge's answer: at once (the rate limit's refusal, the owner's heartbeat), or the
/// router's, in a box.
pub type Answer =
    Either<Ready<Result<Response, Infallible>>, BoxFuture<'static, Result<Response, Infallible>>>;

impl<R: Rules> Edge<R> {
    /// Serves one request from `peer` (the connection's client certificate, read once when it
    /// was accepted). An answer given at once costs no allocation of its own: the request is
    /// not boxed, nothing is added to it, and the answer is not a boxed future.
    pub fn serve<B>(&self, req: axum::http::Request<B>, peer: Option<&Arc<Peer>>) -> Answer
    where
        B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let start = Instant::now();
        let given = match req.headers().get(&REQUEST_ID) {
            Some(v) if sane(v) => Some(v.clone()),
            _ => None,
        };
        let seen = |req: &axum::http::Request<B>, route, request_id| Seen {
            route,
            method: req.method().clone(),
            // Cheap to keep: shared bytes, no copy per request.
            uri: req.uri().clone(),
            peer: peer.cloned(),
            request_id,
            start,
        };
        // Answered here without the router: refused by the rate limit, or answered from memory.
        let early = match front::rate_limit(&self.st, peer.map(|p| &**p)) {
            Err(e) => Some((None, R::refused(e))),
            Ok(()) => R::answer_now(&self.st, req.method(), req.uri(), peer, start)
                .map(|(route, resp)| (Some(route), resp)),
        };
        if let Some((route, resp)) = early {
            let seen = seen(&req, route, given.unwrap_or_else(new_id));
            return Either::Left(ready(Ok(Self::finish(&self.st, seen, resp))));
        }
        let (request_id, fresh) = match given {
            Some(id) => (id, false),
            None => (new_id(), true),
        };
        let seen = seen(&req, None, request_id.clone());
        let mut req = req.map(Body::new);
        if fresh {
            req.headers_mut().insert(REQUEST_ID, request_id);
        }
        if let Some(p) = peer {
            req.extensions_mut().insert(p.clone());
        }
        let waits = R::waits(&req);
        let router = self.router.clone();
        let st = self.st.clone();
        Either::Right(Box::pin(async move {
            let resp = if waits {
                router.oneshot(req).await?
            } else {
                let limit = st.limits.request_timeout;
                match tokio::time::timeout(limit, router.oneshot(req)).await {
                    Ok(resp) => resp?,
                    Err(_) => R::timed_out(limit),
                }
            };
            Ok(Self::finish(&st, seen, resp))
        }))
    }

    fn finish(st: &AppState, seen: Seen, resp: Response) -> Response {
        let mut resp = R::finish(st, &seen, resp);
        resp.headers_mut().insert(REQUEST_ID, seen.request_id);
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept_and_others_are_not() {
        assert!(sane(&HeaderValue::from_static("req-1.a:b_c")));
        assert!(!sane(&HeaderValue::from_static("")));
        assert!(!sane(&HeaderValue::from_static("a b")));
        assert!(!sane(&HeaderValue::from_str(&"x".repeat(65)).unwrap()));
        assert!(sane(&new_id()));
        assert_eq!(new_id().len(), 16);
        assert_ne!(new_id(), new_id());
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 10_000, "request IDs do not repeat");
        assert!(
            ids.iter().all(sane),
            "every new ID is one a caller could send"
        );
    }
}
