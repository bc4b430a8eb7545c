//! twinreg: a registration gateway that writes every service instance to two registries at once.
//!
//! # Layout
//!
//! A request flows top to bottom through these modules:
//!
//! - [`tls`] terminates mutual TLS on the one public listener; [`server`] accepts connections,
//!   reads the caller's identity from its certificate once per connection and hands each request
//!   to the router; [`conn_guard`] keeps each connection's header and idle deadlines.
//! - [`api`] is the front: [`api::layers`] is the edge of every request (ID, rate limit, timeout, count and log line);
//!   [`api::http`] (REST with axum) and [`api::grpc`] (gRPC with tonic, the same operations
//!   through the same [`api::front`] code) turn requests into validated [`model`] types (parse,
//!   don't validate twice), [`authz`] decides whether the caller may act on the service, and
//!   [`api::error`] is the one place errors become HTTP and gRPC answers; [`api::admin`] serves
//!   `/healthz`, `/readyz`, `/metrics` and the status page ([`api::status`]).
//! - [`replicate`] is the coordinator: the one place that fans a write out to both registries
//!   concurrently, bounds each by its own deadline, consults each registry's [`breaker`], merges
//!   the outcomes and hands a registry that missed a write to [`repair`]; [`merge`] builds the
//!   merged view of a service and its index, for lists and watches alike.
//! - [`watch`] serves reads that wait: one merged, resumable view per watched service, fed by one
//!   upstream watch per registry ([`registry::Registry::watch`]) and shared by every gRPC `Watch`
//!   and REST long poll of that service.
//! - [`liveness`] is twinreg's own keeping of time: the instances this replica owns (a heartbeat
//!   to the owner touches only that table), their expiry when heartbeats stop, and the tasks that
//!   keep the replica's shared leases and Consul check alive and follow both registries.
//! - [`registry`] holds the trait every registry implements, its error type, and one adapter per
//!   registry: [`registry::etcd`] (primary) and [`registry::consul`] (backup); [`pool`] keeps
//!   their connections open and warm.
//!
//! Beside the request path: [`antientropy`] (the periodic sweep that makes the registries
//! agree), [`backoff`] (the one retry backoff), [`config`] (TOML + environment, validated at
//! start-up, composing each module's own settings type), [`secret`] (values never shown),
//! [`metrics`] (Prometheus), [`certs`] (development certificates), [`shutdown`] (signals and
//! draining).

pub mod antientropy;
pub mod api;
pub mod authz;
pub mod backoff;
pub mod breaker;
pub mod certs;
pub mod config;
pub mod conn_guard;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod liveness;
pub mod merge;
pub mod metrics;
pub mod model;
pub mod pool;
pub mod registry;
pub mod repair;
pub mod replicate;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod tls;
pub mod watch;

pub use server::{Listeners, run};
