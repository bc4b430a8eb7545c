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
//! which the adapters keep free of credentials; every dynamic string is HTML-escaped.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use futures::future::join_all;
use serde::Serialize;
use serde::ser::SerializeMap;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::AppState;
use crate::breaker::BreakerState;
use crate::merge::{Sourced, merge};
use crate::model::{Instance, ServiceName};
use crate::registry::RegistryError;
use crate::registry::{Registry, RegistryKind, RegistryState};

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
/// Ids listed per registry in a disagreeing row of `/status.json`, and on the page.
const MAX_IDS: usize = 100;
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

// === the data ===

/// The state the banner shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Overall {
    /// Every registry answers and no breaker is open.
    Ready,
    /// At least one registry answers, another does not (or its breaker is not closed).
    Degraded,
    /// No registry answers: writes fail with 503.
    Unavailable,
    /// Shutdown started: `/readyz` answers 503.
    Draining,
}

impl Overall {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Degraded => "degraded",
            Self::Unavailable => "unavailable",
            Self::Draining => "draining",
        }
    }
}

/// Everything the page shows (and `/status.json` returns).
#[derive(Debug, Serialize)]
pub struct Status {
    pub state: Overall,
    pub summary: String,
    /// RFC 3339, UTC.
    pub generated_at: String,
    pub registries: Vec<RegistryStatus>,
    /// Writes being re-driven into any registry.
    pub repairs_pending: usize,
    #[serde(serialize_with = "through_arc")]
    pub services: Arc<Table>,
    pub certificates: Vec<CertStatus>,
}

fn through_arc<S: serde::Serializer>(t: &Arc<Table>, s: S) -> Result<S::Ok, S::Error> {
    t.as_ref().serialize(s)
}

#[derive(Debug, Serialize)]
pub struct RegistryStatus {
    pub name: RegistryKind,
    /// `primary` (its record wins) or `backup`.
    pub role: &'static str,
    /// The state the probe loop and client calls last saw (as `/readyz` reports it).
    pub state: RegistryState,
    pub breaker: BreakerState,
    /// A probe made while rendering.
    pub probe: Probe,
    /// Writes being re-driven into this registry.
    pub repairs_pending: usize,
}

#[derive(Debug, Serialize)]
pub struct Probe {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CertStatus {
    pub label: &'static str,
    /// `notAfter`, Unix seconds, and as RFC 3339 (UTC).
    pub not_after: i64,
    pub expires: String,
    /// Whole days left; negative once expired.
    pub days_left: i64,
    /// Fewer than [`CERT_WARN_DAYS`] days left.
    pub warning: bool,
}

/// One value per registry, primary first; serialized as `{"etcd": ..., "consul": ...}`.
#[derive(Debug, Clone)]
pub struct PerRegistry<T>(pub Vec<(RegistryKind, T)>);

impl<T> Default for PerRegistry<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> PerRegistry<T> {
    pub fn get(&self, kind: RegistryKind) -> Option<&T> {
        self.0.iter().find(|(k, _)| *k == kind).map(|(_, v)| v)
    }
}

impl<T: Serialize> Serialize for PerRegistry<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k.as_str(), v)?;
        }
        m.end()
    }
}

/// Instance counts per service in each registry.
#[derive(Debug, Serialize)]
pub struct Table {
    /// RFC 3339, UTC.
    pub computed_at: String,
    #[serde(skip)]
    computed: Instant,
    pub cached_for_seconds: u64,
    /// Service names found in any registry; rows are kept for the first `limit` of them.
    pub services_seen: usize,
    pub limit: usize,
    pub truncated: bool,
    /// Registries whose service names could not be read, and why.
    pub unreadable: PerRegistry<String>,
    /// Rows whose registries disagree.
    pub disagreements: usize,
    /// Services with a live instance somewhere (or that could not be read everywhere), by name.
    pub rows: Vec<Row>,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub service: String,
    /// Live instances in each registry; `null` where it could not be read.
    pub counts: PerRegistry<Option<usize>>,
    /// Distinct ids across the registries read.
    pub merged: usize,
    /// Every registry was read for this service.
    pub complete: bool,
    /// Some id is held by one registry and not another (only said when `complete`).
    pub disagree: bool,
    /// The ids only this registry holds, for registries holding any.
    pub only_in: PerRegistry<OnlyIn>,
    /// Why a registry could not be read for this service.
    pub errors: PerRegistry<String>,
}

/// Ids one registry holds and another does not.
#[derive(Debug, Default, Serialize)]
pub struct OnlyIn {
    pub count: usize,
    /// The first [`MAX_IDS`] of them, by id.
    pub ids: Vec<String>,
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

fn overall(draining: bool, registries: &[RegistryStatus]) -> (Overall, String) {
    if draining {
        return (
            Overall::Draining,
            "Shutdown started: /readyz answers 503 so the load balancer drains this replica."
                .into(),
        );
    }
    let up: Vec<&str> = registries
        .iter()
        .filter(|r| r.state == RegistryState::Up)
        .map(|r| r.name.as_str())
        .collect();
    let (healthy, troubled): (Vec<&RegistryStatus>, Vec<&RegistryStatus>) = registries
        .iter()
        .partition(|r| r.state == RegistryState::Up && r.breaker == BreakerState::Closed);
    let what: Vec<String> = troubled
        .iter()
        .map(|r| match r.state {
            RegistryState::Up => format!("{}: breaker {}", r.name, breaker_text(r.breaker)),
            s => format!("{} {}", r.name, state_text(s)),
        })
        .collect();
    if up.is_empty() {
        let why = if what.is_empty() {
            "no registry configured".to_owned()
        } else {
            what.join(", ")
        };
        return (
            Overall::Unavailable,
            format!("No registry answers ({why}): writes fail with 503 until one is back."),
        );
    }
    if troubled.is_empty() {
        return (Overall::Ready, "Every registry answers.".into());
    }
    let through = if healthy.is_empty() {
        up.join(" and ")
    } else {
        let names: Vec<&str> = healthy.iter().map(|r| r.name.as_str()).collect();
        names.join(" and ")
    };
    let missed = match troubled.as_slice() {
        [one] => format!("what {} misses is repaired once it is back", one.name),
        _ => "what they miss is repaired once they are back".to_owned(),
    };
    (
        Overall::Degraded,
        format!(
            "{}. Writes succeed through {through}; {missed}.",
            capitalize(&what.join(", "))
        ),
    )
}

async fn probe(registry: Arc<dyn Registry>) -> Probe {
    let start = Instant::now();
    let result = tokio::time::timeout(PROBE_TIMEOUT, registry.probe()).await;
    let took = start.elapsed();
    match result {
        Ok(Ok(())) => Probe {
            ok: true,
            latency_ms: Some((took.as_secs_f64() * 10_000.0).round() / 10.0),
            error: None,
        },
        Ok(Err(e)) => Probe {
            ok: false,
            latency_ms: None,
            error: Some(e.to_string()),
        },
        Err(_) => Probe {
            ok: false,
            latency_ms: None,
            error: Some(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
        },
    }
}

/// Why a registry's part of the table could not be read, as the page shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Unread(pub String);

/// Runs one read within [`READ_TIMEOUT`] and what is left of the table's budget.
async fn read<T>(
    deadline: Instant,
    f: impl Future<Output = Result<T, RegistryError>>,
) -> Result<T, Unread> {
    let budget = || {
        Unread(format!(
            "not read: the table's {} s budget ran out",
            TABLE_BUDGET.as_secs()
        ))
    };
    let now = Instant::now();
    if now >= deadline {
        return Err(budget());
    }
    let until = deadline.min(now + READ_TIMEOUT);
    match tokio::time::timeout_at(until, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Unread(e.to_string())),
        Err(_) if until == deadline => Err(budget()),
        Err(_) => Err(Unread(format!(
            "timed out after {} ms",
            READ_TIMEOUT.as_millis()
        ))),
    }
}

/// Reads each registry's service names, then the live instances of the first `limit` names in
/// every registry whose names could be read.
pub async fn compute(registries: &[Arc<dyn Registry>], limit: usize) -> Table {
    let deadline = Instant::now() + TABLE_BUDGET;
    let names = join_all(registries.iter().map(|r| read(deadline, r.services()))).await;
    let mut unreadable = PerRegistry::default();
    let mut all = BTreeSet::new();
    let mut readable = Vec::new();
    for (r, got) in registries.iter().zip(names) {
        match got {
            Ok(n) => {
                all.extend(n);
                readable.push(true);
            }
            Err(e) => {
                unreadable.0.push((r.kind(), e.0));
                readable.push(false);
            }
        }
    }
    let services_seen = all.len();
    let readable = &readable;
    let rows: Vec<Row> = futures::stream::iter(all.into_iter().take(limit))
        .map(|service| row(registries, readable, service, deadline))
        .buffered(READ_CONCURRENCY)
        .filter_map(|r| async move { r })
        .collect()
        .await;
    Table {
        computed_at: rfc3339(unix_now()),
        computed: Instant::now(),
        cached_for_seconds: TABLE_TTL.as_secs(),
        services_seen,
        limit,
        truncated: services_seen > limit,
        unreadable,
        disagreements: rows.iter().filter(|r| r.disagree).count(),
        rows,
    }
}

/// One registry's live instances of a service, why they could not be read, or `None` when its
/// service names could not be read (it is not asked again per service).
type Lists = Option<Result<Vec<Instance>, Unread>>;

/// One service's row; `None` when no registry holds a live instance of it and none failed.
async fn row(
    registries: &[Arc<dyn Registry>],
    readable: &[bool],
    service: ServiceName,
    deadline: Instant,
) -> Option<Row> {
    let service = &service;
    let sets: Vec<(RegistryKind, Lists)> =
        join_all(registries.iter().zip(readable).map(|(r, ok)| async move {
            let got = if *ok {
                Some(read(deadline, r.list(service)).await)
            } else {
                None
            };
            (r.kind(), got)
        }))
        .await;
    let errors = PerRegistry(
        sets.iter()
            .filter_map(|(k, s)| match s {
                Some(Err(e)) => Some((*k, e.0.clone())),
                _ => None,
            })
            .collect(),
    );
    let read: Vec<RegistryKind> = sets
        .iter()
        .filter(|(_, s)| matches!(s, Some(Ok(_))))
        .map(|(k, _)| *k)
        .collect();
    let complete = read.len() == sets.len();
    let merged = merge(sets.into_iter().filter_map(|(k, s)| Some((k, s?.ok()?))));
    if merged.is_empty() && errors.0.is_empty() {
        return None;
    }
    let counts = registries
        .iter()
        .map(|r| {
            let k = r.kind();
            let n = read
                .contains(&k)
                .then(|| merged.values().filter(|s| s.sources.contains(&k)).count());
            (k, n)
        })
        .collect();
    // Where every registry was read, an id some registry lacks is "only in" those holding it.
    let mut only_in: PerRegistry<OnlyIn> = PerRegistry::default();
    if complete {
        for (id, Sourced { sources, .. }) in &merged {
            if sources.len() == read.len() {
                continue;
            }
            for k in sources {
                let i = match only_in.0.iter().position(|(o, _)| o == k) {
                    Some(i) => i,
                    None => {
                        only_in.0.push((*k, OnlyIn::default()));
                        only_in.0.len() - 1
                    }
                };
                let entry = &mut only_in.0[i].1;
                entry.count += 1;
                if entry.ids.len() < MAX_IDS {
                    entry.ids.push(id.to_string());
                }
            }
        }
        // Primary first, as everywhere else.
        only_in
            .0
            .sort_by_key(|(k, _)| read.iter().position(|r| r == k));
    }
    Some(Row {
        service: service.as_str().to_owned(),
        counts: PerRegistry(counts),
        merged: merged.len(),
        complete,
        disagree: !only_in.0.is_empty(),
        only_in,
        errors,
    })
}

fn cert_status(label: &'static str, not_after: i64, now: i64) -> CertStatus {
    let days_left = (not_after - now).div_euclid(86_400);
    CertStatus {
        label,
        not_after,
        expires: rfc3339(not_after),
        days_left,
        warning: days_left < CERT_WARN_DAYS,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn rfc3339(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn state_text(s: RegistryState) -> &'static str {
    match s {
        RegistryState::Up => "up",
        RegistryState::Down => "down",
        RegistryState::Connecting => "connecting",
    }
}

fn breaker_text(b: BreakerState) -> &'static str {
    match b {
        BreakerState::Closed => "closed",
        BreakerState::HalfOpen => "half-open",
        BreakerState::Open => "open",
    }
}

// === the page ===

/// Displays a string HTML-escaped (text and attribute values alike).
pub struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

const CSS: &str = r#"
:root{color-scheme:light}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1f2328;background:#f3f4f6}
header{padding:18px 28px;color:#fff}
header h1{margin:0;font-size:30px;letter-spacing:.05em;text-transform:uppercase}
header p{margin:4px 0 0;font-size:17px}
header .meta{font-size:13px;opacity:.85}
.ready{background:#1a7f37}.degraded{background:#b45309}.unavailable{background:#b91c1c}.draining{background:#475569}
main{padding:4px 28px 12px;max-width:1400px}
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;margin:16px 0;padding:12px 16px}
h2{font-size:18px;margin:0 0 8px}
h2 small{font-weight:normal;color:#57606a;font-size:14px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e5e7eb;vertical-align:top}
th{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#57606a}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.pill{display:inline-block;padding:1px 9px;border-radius:10px;font-weight:600;font-size:13px;white-space:nowrap}
.good{background:#dafbe1;color:#116329}.warn{background:#fff1c2;color:#7d4e00}.bad{background:#ffe0e0;color:#a40e26}
tr.disagree td{background:#fff5f5}
td.bad-n{color:#a40e26;font-weight:700}
.err{color:#a40e26;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;word-break:break-word}
.note{background:#fff8e1;border-left:4px solid #b45309;padding:6px 10px;margin:8px 0}
.muted{color:#57606a}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
footer{color:#57606a;font-size:13px;padding:0 28px 20px}
a{color:#0969da}
"#;

fn pill(class: &str, text: &str) -> String {
    format!(r#"<span class="pill {class}">{}</span>"#, Esc(text))
}

/// The page: a banner, then registries, services and certificates.
pub fn render(s: &Status) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let state = s.state.as_str();
    // Writing into a String cannot fail.
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>twinreg: {state}</title>
<style>{CSS}</style>
</head>
<body>
<header class="{state}" id="banner">
<h1>{state}</h1>
<p>{summary}</p>
<p class="meta">twinreg {version} &middot; generated {at} &middot; refreshes every {REFRESH_SECONDS} s</p>
</header>
<main>
"#,
        summary = Esc(&s.summary),
        version = env!("CARGO_PKG_VERSION"),
        at = Esc(&s.generated_at),
    );
    registries(&mut h, s);
    services(&mut h, s);
    certificates(&mut h, s);
    let _ = write!(
        h,
        r#"</main>
<footer>Also: <a href="/status.json">/status.json</a> (this page as JSON) &middot; <a href="/readyz">/readyz</a> &middot; <a href="/metrics">/metrics</a></footer>
</body>
</html>
"#
    );
    h
}

fn registries(h: &mut String, s: &Status) {
    let backlog = match s.repairs_pending {
        0 => "no repair pending".to_owned(),
        1 => "1 repair pending".to_owned(),
        n => format!("{n} repairs pending"),
    };
    let _ = write!(
        h,
        r#"<section id="registries">
<h2>Registries <small>{}</small></h2>
<table>
<thead><tr><th>Registry</th><th>State</th><th>Breaker</th><th>Probe now</th><th class="n">Repairs pending</th></tr></thead>
<tbody>
"#,
        Esc(&backlog)
    );
    for r in &s.registries {
        let state = match r.state {
            RegistryState::Up => pill("good", "up"),
            RegistryState::Connecting => pill("warn", "connecting"),
            RegistryState::Down => pill("bad", "down"),
        };
        let breaker = match r.breaker {
            BreakerState::Closed => pill("good", "closed"),
            BreakerState::HalfOpen => pill("warn", "half-open"),
            BreakerState::Open => pill("bad", "open"),
        };
        let probe = match (&r.probe.latency_ms, &r.probe.error) {
            (Some(ms), _) => format!("{ms:.1} ms"),
            (None, Some(e)) => format!(
                r#"{} <span class="err">{}</span>"#,
                pill("bad", "failed"),
                Esc(e)
            ),
            (None, None) => String::new(),
        };
        let pending = if r.repairs_pending > 0 {
            format!(r#"<td class="n bad-n">{}</td>"#, r.repairs_pending)
        } else {
            r#"<td class="n">0</td>"#.to_owned()
        };
        let _ = writeln!(
            h,
            r#"<tr id="registry-{name}"><td><strong>{name}</strong> <span class="muted">{role}</span></td><td>{state}</td><td>{breaker}</td><td>{probe}</td>{pending}</tr>"#,
            name = Esc(r.name.as_str()),
            role = Esc(r.role),
        );
    }
    h.push_str("</tbody>\n</table>\n</section>\n");
}

fn services(h: &mut String, s: &Status) {
    let t = &s.services;
    let unknown = t.rows.iter().filter(|r| !r.complete).count();
    let headline = match (t.rows.len(), t.disagreements, unknown) {
        (0, _, _) => "no live instance anywhere".to_owned(),
        (n, d, u) => {
            let mut parts = vec![match n {
                1 => "1 service".to_owned(),
                n => format!("{n} services"),
            }];
            if d > 0 {
                parts.push(format!("{d} disagree"));
            }
            if u > 0 {
                parts.push(format!("{u} not read from every registry"));
            }
            if d == 0 && u == 0 {
                parts.push("all agree".to_owned());
            }
            parts.join(", ")
        }
    };
    let _ = write!(
        h,
        r#"<section id="services">
<h2>Services <small>{}</small></h2>
<p class="muted">Live instances in each registry, computed {} (reused for {} s).</p>
"#,
        Esc(&headline),
        Esc(&t.computed_at),
        t.cached_for_seconds
    );
    for (kind, e) in &t.unreadable.0 {
        let _ = writeln!(
            h,
            r#"<p class="note">{} could not be read: <span class="err">{}</span>. Its counts show as ?.</p>"#,
            kind,
            Esc(e)
        );
    }
    if t.truncated {
        let _ = writeln!(
            h,
            r#"<p class="note">Showing the first {} of {} service names (by name).</p>"#,
            t.limit, t.services_seen
        );
    }
    if t.disagreements > 0 {
        let names: Vec<&str> = t
            .rows
            .iter()
            .filter(|r| r.disagree)
            .map(|r| r.service.as_str())
            .collect();
        let more = names.len().saturating_sub(SHOWN_IDS);
        let shown: Vec<String> = names
            .iter()
            .take(SHOWN_IDS)
            .map(|n| format!("<code>{}</code>", Esc(n)))
            .collect();
        let _ = writeln!(
            h,
            r#"<p class="note">Registries disagree on {}{}. Differences are normal for a moment while writes are repaired; lasting ones are fixed by the anti-entropy sweep or the instance&#39;s next heartbeat.</p>"#,
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    if t.rows.is_empty() {
        h.push_str("</section>\n");
        return;
    }
    let kinds: Vec<RegistryKind> = s.registries.iter().map(|r| r.name).collect();
    h.push_str("<table>\n<thead><tr><th>Service</th>");
    for k in &kinds {
        let _ = write!(h, r#"<th class="n">{k}</th>"#);
    }
    h.push_str(r#"<th class="n">merged</th><th>Agreement</th></tr></thead>"#);
    h.push_str("\n<tbody>\n");
    for r in &t.rows {
        let class = if r.disagree {
            r#" class="disagree""#
        } else {
            ""
        };
        let _ = write!(
            h,
            r#"<tr{class} id="service-{name}"><td><strong>{name}</strong></td>"#,
            name = Esc(&r.service)
        );
        for k in &kinds {
            match r.counts.get(*k).copied().flatten() {
                Some(n) => {
                    let _ = write!(h, r#"<td class="n">{n}</td>"#);
                }
                None => h.push_str(r#"<td class="n bad-n">?</td>"#),
            }
        }
        let _ = write!(h, r#"<td class="n">{}</td><td>"#, r.merged);
        if r.disagree {
            h.push_str(&pill("bad", "DISAGREE"));
            let parts: Vec<String> = r
                .only_in
                .0
                .iter()
                .map(|(k, only)| {
                    let shown: Vec<String> = only
                        .ids
                        .iter()
                        .take(SHOWN_IDS)
                        .map(|id| format!("<code>{}</code>", Esc(id)))
                        .collect();
                    let more = only.count - shown.len();
                    let more = if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    };
                    format!(" only in {k}: {}{more}", shown.join(", "))
                })
                .collect();
            h.push_str(&parts.join(";"));
        } else if r.complete {
            h.push_str(&pill("good", "agree"));
        } else {
            h.push_str(&pill("warn", "unknown"));
            for (k, e) in &r.errors.0 {
                let _ = write!(h, r#" {k} not read: <span class="err">{}</span>"#, Esc(e));
            }
            for (k, _) in &t.unreadable.0 {
                let _ = write!(h, " {k} not read");
            }
        }
        h.push_str("</td></tr>\n");
    }
    h.push_str("</tbody>\n</table>\n</section>\n");
}

fn certificates(h: &mut String, s: &Status) {
    let _ = write!(
        h,
        r#"<section id="certificates">
<h2>Certificates <small>red when fewer than {CERT_WARN_DAYS} days are left</small></h2>
"#
    );
    if s.certificates.is_empty() {
        h.push_str("<p class=\"muted\">No certificate loaded.</p>\n</section>\n");
        return;
    }
    h.push_str(
        "<table>\n<thead><tr><th>Certificate</th><th>Expires (UTC)</th><th class=\"n\">Days left</th></tr></thead>\n<tbody>\n",
    );
    for c in &s.certificates {
        let left = if c.days_left < 0 {
            pill("bad", "EXPIRED")
        } else if c.warning {
            pill("bad", &format!("{} days", c.days_left))
        } else {
            format!("{} days", c.days_left)
        };
        let _ = writeln!(
            h,
            r#"<tr><td><code>{}</code></td><td>{}</td><td class="n">{left}</td></tr>"#,
            Esc(c.label),
            Esc(&c.expires)
        );
    }
    h.push_str("</tbody>\n</table>\n</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::memory::{Memory, Mode};

    fn instance(service: &str, id: &str) -> Instance {
        Instance::for_test(service, id)
    }

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            Esc(r#"<script src="x">a & 'b'</script>"#).to_string(),
            "&lt;script src=&quot;x&quot;&gt;a &amp; &#39;b&#39;&lt;/script&gt;"
        );
        assert_eq!(Esc("plain").to_string(), "plain");
    }

    #[tokio::test]
    async fn the_table_counts_each_registry_and_names_the_ids_only_one_holds() {
        let etcd = Arc::new(Memory::new(RegistryKind::Etcd));
        let consul = Arc::new(Memory::new(RegistryKind::Consul));
        for i in ["a", "b"] {
            etcd.register(&instance("payments", i)).await.unwrap();
            consul.register(&instance("payments", i)).await.unwrap();
        }
        consul
            .register(&instance("payments", "stray"))
            .await
            .unwrap();
        etcd.register(&instance("web", "w1")).await.unwrap();
        consul.register(&instance("web", "w1")).await.unwrap();
        let regs: Vec<Arc<dyn Registry>> = vec![etcd.clone(), consul.clone()];

        let t = compute(&regs, 10).await;
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.disagreements, 1);
        let p = &t.rows[0];
        assert_eq!(p.service, "payments");
        assert_eq!(p.counts.get(RegistryKind::Etcd), Some(&Some(2)));
        assert_eq!(p.counts.get(RegistryKind::Consul), Some(&Some(3)));
        assert_eq!(p.merged, 3);
        assert!(p.disagree && p.complete);
        let only = p.only_in.get(RegistryKind::Consul).unwrap();
        assert_eq!((only.count, &only.ids[..]), (1, &["stray".to_owned()][..]));
        assert!(p.only_in.get(RegistryKind::Etcd).is_none());
        assert!(!t.rows[1].disagree);

        let t = compute(&regs, 1).await;
        assert!(t.truncated);
        assert_eq!((t.services_seen, t.rows.len()), (2, 1));

        consul.set_mode(Mode::Down);
        let t = compute(&regs, 10).await;
        assert!(t.unreadable.get(RegistryKind::Consul).is_some());
        assert_eq!(t.disagreements, 0, "no verdict without both registries");
        assert!(t.rows.iter().all(|r| !r.complete));
        assert_eq!(t.rows[0].counts.get(RegistryKind::Consul), Some(&None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_registry_costs_the_table_its_budget_and_no_more() {
        let etcd = Arc::new(Memory::new(RegistryKind::Etcd));
        let consul = Arc::new(Memory::new(RegistryKind::Consul));
        etcd.register(&instance("payments", "a")).await.unwrap();
        consul.set_mode(Mode::Hang);
        let regs: Vec<Arc<dyn Registry>> = vec![etcd, consul];
        let start = Instant::now();
        let t = compute(&regs, 10).await;
        assert!(start.elapsed() <= TABLE_BUDGET);
        assert_eq!(
            t.unreadable.get(RegistryKind::Consul).map(String::as_str),
            Some("timed out after 1000 ms")
        );
        assert_eq!(t.rows[0].counts.get(RegistryKind::Etcd), Some(&Some(1)));
    }

    #[test]
    fn the_banner_names_what_is_wrong() {
        let reg = |name: RegistryKind, state, breaker| RegistryStatus {
            name,
            role: "primary",
            state,
            breaker,
            probe: Probe {
                ok: true,
                latency_ms: Some(1.0),
                error: None,
            },
            repairs_pending: 0,
        };
        let up = |n| reg(n, RegistryState::Up, BreakerState::Closed);
        assert_eq!(
            overall(false, &[up(RegistryKind::Etcd), up(RegistryKind::Consul)]).0,
            Overall::Ready
        );
        let (s, why) = overall(
            false,
            &[
                up(RegistryKind::Etcd),
                reg(
                    RegistryKind::Consul,
                    RegistryState::Down,
                    BreakerState::Open,
                ),
            ],
        );
        assert_eq!(s, Overall::Degraded);
        assert_eq!(
            why,
            "Consul down. Writes succeed through etcd; what consul misses is repaired once it \
             is back."
        );
        let down = |n| reg(n, RegistryState::Down, BreakerState::Open);
        assert_eq!(
            overall(
                false,
                &[down(RegistryKind::Etcd), down(RegistryKind::Consul)]
            )
            .0,
            Overall::Unavailable
        );
        assert_eq!(
            overall(true, &[up(RegistryKind::Etcd)]).0,
            Overall::Draining
        );
        assert_eq!(cert_status("server", 10 * 86_400, 0).days_left, 10);
        assert!(cert_status("server", 10 * 86_400, 0).warning);
        assert_eq!(cert_status("server", -1, 0).days_left, -1);
    }
}
