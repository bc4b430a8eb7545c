//! The status page on the admin listener: `GET /` for a person (server-rendered HTML with inline
//! CSS; no script, font, image or stylesheet from anywhere) and `GET /status.json`, the same data
//! for scripts.
//!
//! It shows the overall state (ready, degraded, unavailable, draining); per registry its state,
//! breaker, the latency of a probe made while rendering, and the repair backlog; per service the
//! live instances in each registry, the merged count and the ids only one registry holds; and
//! how long each certificate in use has left.
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
pub use render::render;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::join_all;
use tokio::sync::Mutex;

use super::AppState;

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
        .with_state(page)
}

async fn html(State(page): State<Page>) -> Response {
    let status = page.gather().await;
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // Belt and braces: even a string that escaped escaping could load nothing.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; \
                 form-action 'none'; frame-ancestors 'none'",
            ),
        ],
        render(&status),
    )
        .into_response()
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
        let (probes, services) = tokio::join!(probes, self.table());
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
            })
            .collect();
        let (state, summary) = overall(app.shutdown.is_cancelled(), &registries);
        let now = unix_now();
        Status {
            state,
            summary,
            generated_at: rfc3339(now),
            repairs_pending: repairer.pending(),
            registries,
            services,
            certificates: app
                .certs
                .expiries()
                .into_iter()
                .map(|(label, not_after)| cert_status(label, not_after, now))
                .collect(),
        }
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
