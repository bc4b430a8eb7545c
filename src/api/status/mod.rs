//! The status page on the admin listener: `GET /` for a person (server-rendered HTML with inline
//! CSS; no script, font, image or stylesheet from anywhere) and `GET /status.json`, the same data
//! for scripts.
//!
//! It shows the overall state (ready, degraded, unavailable, draining); per registry its state,
//! breaker, the latency of a probe made while rendering, and the repair backlog; per service the
//! live instances in each registry, the merged count and the ids only one registry holds, each
//! service drilling down to its instances (`/services/{service}`); how long each certificate in
//! use has left; which replica this is and which one runs the anti-entropy sweep; and each etcd
//! member (leader or learner, its version and database size, or why its status was not read).
//!
//! The page only looks: its reads go to the registries directly, not through the breakers, each
//! bounded in time, and change no registry's health or breaker. The service table costs a read
//! per service and registry, so it is computed at most every [`TABLE_TTL`] (concurrent requests
//! wait for one computation), for the first [`MAX_SERVICES`] service names, within
//! [`TABLE_BUDGET`]. Nothing secret is shown: names, counts, states, and registry error messages,
//! which the adapters keep free of credentials; every dynamic string is HTML-escaped by the template engine.

//!
//! Two halves: [`collect`] gathers the data (the types `/status.json` serializes), [`render`] turns
//! it into HTML with maud, which escapes every dynamic string; the stylesheet is `style.css`
//! beside them.

mod collect;
mod render;

pub use collect::*;
pub use render::{render, render_service};

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::join_all;
use tokio::sync::Mutex;

use super::AppState;
use crate::model::ServiceName;
use crate::registry::RegistryKind;

/// The probe made per registry while rendering gives up after this long.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Each read behind the service table gives up after this long...
pub const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// ...and the whole table after this long (what is not read by then is shown as not read).
pub const TABLE_BUDGET: Duration = Duration::from_secs(3);
/// The service table is reused for this long, so refreshes do not hammer the registries.
pub const TABLE_TTL: Duration = Duration::from_secs(5);
/// At most this many service names (the first, by name) get a row.
pub const MAX_SERVICES: usize = 500;
/// A certificate with fewer days left than this is shown in red.
pub const CERT_WARN_DAYS: i64 = 14;
/// The page reloads itself this often (seconds).
pub const REFRESH_SECONDS: u32 = 10;
/// Services read at once while computing the table.
const READ_CONCURRENCY: usize = 8;
/// Ids listed per registry in a disagreeing row of `/status.json`...
const MAX_IDS: usize = 100;
/// ...and on the page.
const SHOWN_IDS: usize = 10;

#[derive(Clone)]
struct Page {
    app: AppState,
    table: Arc<Mutex<Option<Arc<Table>>>>,
}

/// `GET /` and `GET /status.json`, merged into the admin router.
pub fn router(app: AppState) -> Router {
    let page = Page {
        app,
        table: Arc::default(),
    };
    Router::new()
        .route("/", get(html))
        .route("/status.json", get(json))
        .route("/services/{service}", get(service_html))
        .route("/status/services/{service}", get(service_json))
        .with_state(page)
}

/// The headers of every HTML answer of the page.
const HTML_HEADERS: [(header::HeaderName, &str); 4] = [
    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
    (header::CACHE_CONTROL, "no-store"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    // Belt and braces: even a string that escaped escaping could load nothing.
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'",
    ),
];

async fn service_html(State(page): State<Page>, Path(service): Path<String>) -> Response {
    match page.service(&service).await {
        Ok(detail) => (HTML_HEADERS, render_service(&detail)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn service_json(State(page): State<Page>, Path(service): Path<String>) -> Response {
    match page.service(&service).await {
        Ok(detail) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(detail)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn html(State(page): State<Page>) -> Response {
    let status = page.gather().await;
    (HTML_HEADERS, render(&status)).into_response()
}

async fn json(State(page): State<Page>) -> Response {
    let status = page.gather().await;
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(status)).into_response()
}

impl Page {
    async fn gather(&self) -> Status {
        let app = &self.app;
        let members = app.coordinator.members();
        let probes = join_all(members.iter().map(|m| probe(m.registry.clone())));
        let leader = tokio::time::timeout(PROBE_TIMEOUT, members[0].registry.leader());
        let etcd = members
            .iter()
            .find(|m| m.registry.kind() == RegistryKind::Etcd)
            .map(|m| m.registry.clone());
        let (probes, services, leader, (etcd_members, etcd_members_error)) =
            tokio::join!(probes, self.table(), leader, cluster(etcd));
        let repairer = app.coordinator.repairer();
        let registries: Vec<RegistryStatus> = members
            .iter()
            .zip(probes)
            .enumerate()
            .map(|(i, (m, probe))| RegistryStatus {
                name: m.registry.kind(),
                role: if i == 0 { "primary" } else { "backup" },
                state: m.health.get(),
                breaker: m.breaker.state(),
                probe,
                repairs_pending: repairer.pending_for(m.registry.kind()),
                repair_oldest_seconds: (repairer.oldest(m.registry.kind()).as_secs_f64() * 10.0)
                    .round()
                    / 10.0,
            })
            .collect();
        let (leader, error) = match leader {
            Ok(Ok(holder)) => (holder, None),
            Ok(Err(e)) => (None, Some(e.to_string())),
            Err(_) => (
                None,
                Some(format!("not read within {} ms", PROBE_TIMEOUT.as_millis())),
            ),
        };
        let sweep = SweepStatus {
            enabled: app.sweep_enabled,
            here: app.coordinator.metrics().sweeper_leader.get() == 1,
            leader,
            error,
        };
        let (state, summary) = overall(app.shutdown.is_cancelled(), &registries);
        let now = unix_now();
        Status {
            state,
            summary,
            replica: app.coordinator.replica().to_owned(),
            sweep,
            generated_at: rfc3339(now),
            repairs_pending: repairer.pending(),
            registries,
            etcd_members,
            etcd_members_error,
            services,
            certificates: app
                .certs
                .expiries()
                .into_iter()
                .map(|(label, not_after)| cert_status(label, not_after, now))
                .collect(),
        }
    }

    /// One service's instances; 400 naming the field for a name no service can have.
    async fn service(&self, name: &str) -> Result<ServiceDetail, crate::api::error::ApiError> {
        let service = ServiceName::parse(name)?;
        let app = &self.app;
        let (errors, instances) = service_detail(
            &app.coordinator.registries(),
            app.coordinator.owned(),
            &service,
        )
        .await;
        Ok(ServiceDetail {
            service: service.to_string(),
            generated_at: rfc3339(unix_now()),
            replica: app.coordinator.replica().to_owned(),
            errors,
            instances,
        })
    }

    /// The cached table while fresh; else computes it (others asking meanwhile wait for it).
    async fn table(&self) -> Arc<Table> {
        let mut cached = self.table.lock().await;
        if let Some(t) = cached.as_ref()
            && t.computed.elapsed() < TABLE_TTL
        {
            return t.clone();
        }
        let t = Arc::new(compute(&self.app.coordinator.registries(), MAX_SERVICES).await);
        *cached = Some(t.clone());
        t
    }
}
