//! The status page as HTML: a banner, then registries, etcd members, services and certificates. maud escapes
//! every dynamic string (names, error messages, ids) as it writes it; the stylesheet is
//! `style.css`, inlined (the page loads nothing from anywhere).

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::collect::{Row, ServiceDetail, Status, Table};
use super::{CERT_WARN_DAYS, REFRESH_SECONDS, SHOWN_IDS};
use crate::breaker::BreakerState;
use crate::registry::{RegistryKind, RegistryState};

const CSS: &str = include_str!("style.css");

/// The page.
pub fn render(s: &Status) -> String {
    let state = s.state.as_str();
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(state))
            body {
                header class=(state) id="banner" {
                    h1 { (state) }
                    p { (s.summary) }
                    p class="meta" {
                        "replica " strong id="replica" { (s.replica) }
                        " · twinreg " (env!("CARGO_PKG_VERSION")) " · generated " (s.generated_at)
                        " · refreshes every " (REFRESH_SECONDS) " s"
                    }
                    p class="meta" id="sweep" { (sweep(s)) }
                }
                main {
                    (registries(s))
                    (etcd_members(s))
                    (services(s))
                    (certificates(s))
                }
                footer {
                    "Also: " a href="/status.json" { "/status.json" } " (this page as JSON) · "
                    a href="/readyz" { "/readyz" } " · " a href="/metrics" { "/metrics" }
                }
            }
        }
    }
    .into_string()
}

/// One service's instances (`/services/{service}`): where each is registered, whether this
/// replica owns it, and when its client was last heard from.
pub fn render_service(d: &ServiceDetail) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(&d.service))
            body {
                header class="ready" id="banner" {
                    h1 { (d.service) }
                    p { (count(d.instances.len(), "instance", "instances")) " in the registries" }
                    p class="meta" {
                        "replica " strong id="replica" { (d.replica) } " · generated "
                        (d.generated_at) " · the last heartbeat is known to the owning replica only"
                    }
                }
                main {
                    @for (k, e) in &d.errors.0 {
                        p class="err" id={ "unread-" (k) } {
                            (pill("bad", "not read")) " " (k) ": " (e.0)
                        }
                    }
                    section id="instances" {
                        table {
                            thead { tr {
                                th { "Instance" } th { "Address" } th { "Tags" }
                                th class="n" { "TTL" } th { "Registered in" } th { "Owner" }
                                th class="n" { "Last heartbeat" } th { "Discovery" }
                            } }
                            tbody {
                                @for i in &d.instances {
                                    tr id={ "instance-" (i.id) } {
                                        td { strong { (i.id) } }
                                        td { code { (i.address) ":" (i.port) } }
                                        td { (i.tags.join(", ")) }
                                        td class="n" { (i.ttl_seconds) " s" }
                                        td { @for (n, k) in i.sources.iter().enumerate() {
                                            @if n > 0 { ", " } (k)
                                        } }
                                        td { @if i.owned_here { "this replica" } @else {
                                            span class="muted" { "another replica" }
                                        } }
                                        td class="n" {
                                            @if let Some(ago) = i.last_heartbeat_seconds_ago {
                                                (format!("{ago:.1} s ago"))
                                            } @else { "—" }
                                        }
                                        td { @if i.drained { (pill("warn", "drained")) } @else {
                                            (pill("good", "in rotation"))
                                        } }
                                    }
                                }
                            }
                        }
                    }
                }
                footer {
                    a href="/" { "All services" } " · "
                    a href={ "/status/services/" (d.service) } { "this page as JSON" }
                }
            }
        }
    }
    .into_string()
}

/// Every page's head: self-contained (inline CSS), reloading itself every
/// [`REFRESH_SECONDS`].
fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta http-equiv="refresh" content=(REFRESH_SECONDS);
            title { "twinreg: " (title) }
            style { (PreEscaped(CSS)) }
        }
    }
}

fn pill(class: &str, text: &str) -> Markup {
    html! { span class={ "pill " (class) } { (text) } }
}

fn count(n: usize, one: &str, many: &str) -> String {
    match n {
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    }
}

fn registries(s: &Status) -> Markup {
    let backlog = match s.repairs_pending {
        0 => "no repair pending".to_owned(),
        n => count(n, "repair pending", "repairs pending"),
    };
    html! {
        section id="registries" {
            h2 { "Registries " small { (backlog) } }
            table {
                thead { tr {
                    th { "Registry" } th { "State" } th { "Breaker" } th { "Probe now" }
                    th class="n" { "Repairs pending" } th class="n" { "Oldest repair" }
                } }
                tbody {
                    @for r in &s.registries {
                        tr id={ "registry-" (r.name) } {
                            td { strong { (r.name) } " " span class="muted" { (r.role) } }
                            td { (match r.state {
                                RegistryState::Up => pill("good", "up"),
                                RegistryState::Connecting => pill("warn", "connecting"),
                                RegistryState::Down => pill("bad", "down"),
                            }) }
                            td { (match r.breaker {
                                BreakerState::Closed => pill("good", "closed"),
                                BreakerState::HalfOpen => pill("warn", "half-open"),
                                BreakerState::Open => pill("bad", "open"),
                            }) }
                            td {
                                @if let Some(ms) = r.probe.latency_ms {
                                    (format!("{ms:.1} ms"))
                                } @else if let Some(e) = &r.probe.error {
                                    (pill("bad", "failed")) " " span class="err" { (e) }
                                }
                            }
                            @if r.repairs_pending > 0 {
                                td class="n bad-n" { (r.repairs_pending) }
                                td class="n" { (format!("{:.1} s", r.repair_oldest_seconds)) }
                            } @else {
                                td class="n" { "0" }
                                td class="n" { "—" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Each etcd member: its name and ID, client URLs, role, and what its status says (or why it
/// was not read). Nothing when etcd is not configured.
fn etcd_members(s: &Status) -> Markup {
    let members = &s.etcd_members;
    if members.is_empty() && s.etcd_members_error.is_none() {
        return html! {};
    }
    let unreachable = members
        .iter()
        .filter(|m| m.reachable == Some(false))
        .count();
    let mut headline = vec![count(members.len(), "member", "members")];
    match members.iter().find(|m| m.leader) {
        Some(l) if l.name.is_empty() => headline.push(format!("leader {}", l.id)),
        Some(l) => headline.push(format!("leader {}", l.name)),
        None if !members.is_empty() => headline.push("no leader known".to_owned()),
        None => {}
    }
    if unreachable > 0 {
        headline.push(format!("{unreachable} unreachable"));
    }
    html! {
        section id="etcd-members" {
            h2 { "etcd members " small { (headline.join(", ")) } }
            @if let Some(e) = &s.etcd_members_error {
                p class="note" { "The member list could not be read: " span class="err" { (e) } }
            }
            @if !members.is_empty() {
                table {
                    thead { tr {
                        th { "Member" } th { "Client URLs" } th { "Role" } th { "Version" }
                        th class="n" { "DB size" } th class="n" { "Raft term" } th { "Status" }
                    } }
                    tbody {
                        @for m in members {
                            tr id={ "member-" (m.id) } {
                                td {
                                    @if m.name.is_empty() { span class="muted" { "(not started)" } }
                                    @else { strong { (m.name) } }
                                    " " span class="muted" { (m.id) }
                                }
                                td { @for (i, u) in m.client_urls.iter().enumerate() {
                                    @if i > 0 { ", " } code { (u) }
                                } }
                                td {
                                    @if m.leader { (pill("good", "leader")) }
                                    @else if !m.learner { span class="muted" { "follower" } }
                                    @if m.learner { (pill("warn", "learner")) }
                                }
                                td { (m.version.as_deref().unwrap_or("—")) }
                                td class="n" { @match m.db_size_bytes {
                                    Some(b) => (size(b)),
                                    None => "—",
                                } }
                                td class="n" { @match m.raft_term {
                                    Some(t) => (t),
                                    None => "—",
                                } }
                                td {
                                    @match m.reachable {
                                        Some(true) => (pill("good", "reachable")),
                                        Some(false) => (pill("bad", "unreachable")),
                                        None => (pill("warn", "not asked")),
                                    }
                                    @if let Some(e) = &m.error { " " span class="err" { (e) } }
                                    @for e in &m.reported_errors { " " span class="err" { (e) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A size in bytes in decimal units, as etcdctl shows it: "20.5 kB", "1.5 MB".
fn size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes.max(0) as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 || v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Who sweeps: "anti-entropy sweep: led by this replica", "... led by twinreg-b-1f2e3d4c",
/// "... off here; led by ...", "... no leader (...)".
fn sweep(s: &Status) -> String {
    let w = &s.sweep;
    let who = match (&w.leader, &w.error) {
        (_, _) if w.here => "led by this replica".to_owned(),
        (Some(l), _) => format!("led by {l}"),
        (None, Some(e)) => format!("leader not known ({e})"),
        (None, None) => "no leader".to_owned(),
    };
    if w.enabled {
        format!("anti-entropy sweep: {who}")
    } else {
        format!("anti-entropy sweep: off on this replica; {who}")
    }
}

/// "2 services, 1 disagree", "no live instance anywhere", ...
fn headline(t: &Table) -> String {
    let unknown = t.rows.iter().filter(|r| !r.complete).count();
    if t.rows.is_empty() {
        return "no live instance anywhere".to_owned();
    }
    let mut parts = vec![count(t.rows.len(), "service", "services")];
    if t.disagreements > 0 {
        parts.push(format!("{} disagree", t.disagreements));
    }
    if unknown > 0 {
        parts.push(format!("{unknown} not read from every registry"));
    }
    if t.disagreements == 0 && unknown == 0 {
        parts.push("all agree".to_owned());
    }
    parts.join(", ")
}

/// The first [`SHOWN_IDS`] of `names` as code, and how many more there are.
fn some_of<'a>(names: impl IntoIterator<Item = &'a str>, total: usize) -> Markup {
    let names: Vec<&str> = names.into_iter().take(SHOWN_IDS).collect();
    let more = total.saturating_sub(names.len());
    html! {
        @for (i, n) in names.iter().enumerate() {
            @if i > 0 { ", " }
            code { (n) }
        }
        @if more > 0 { " and " (more) " more" }
    }
}

fn services(s: &Status) -> Markup {
    let t = &s.services;
    let kinds: Vec<RegistryKind> = s.registries.iter().map(|r| r.name).collect();
    let disagreeing: Vec<&str> = t
        .rows
        .iter()
        .filter(|r| r.disagree)
        .map(|r| r.service.as_str())
        .collect();
    html! {
        section id="services" {
            h2 { "Services " small { (headline(t)) } }
            p class="muted" {
                "Live instances in each registry, computed " (t.computed_at)
                " (reused for " (t.cached_for_seconds) " s)."
            }
            @for (kind, e) in &t.unreadable.0 {
                p class="note" {
                    (kind) " could not be read: " span class="err" { (e) } ". Its counts show as ?."
                }
            }
            @if t.truncated {
                p class="note" {
                    "Showing the first " (t.limit) " of " (t.services_seen) " service names (by name)."
                }
            }
            @if !disagreeing.is_empty() {
                p class="note" {
                    "Registries disagree on " (some_of(disagreeing.iter().copied(), disagreeing.len()))
                    ". Differences are normal for a moment while writes are repaired; lasting ones \
                     are fixed by the anti-entropy sweep or the instance's next heartbeat."
                }
            }
            @if !t.rows.is_empty() {
                table {
                    thead { tr {
                        th { "Service" }
                        @for k in &kinds { th class="n" { (k) } }
                        th class="n" { "merged" } th { "Agreement" }
                    } }
                    tbody {
                        @for r in &t.rows { (service_row(r, &kinds, t)) }
                    }
                }
            }
        }
    }
}

fn service_row(r: &Row, kinds: &[RegistryKind], t: &Table) -> Markup {
    html! {
        tr class=[r.disagree.then_some("disagree")] id={ "service-" (r.service) } {
            td { a href={ "/services/" (r.service) } { strong { (r.service) } } }
            @for k in kinds {
                @match r.counts.get(*k).copied().flatten() {
                    Some(n) => td class="n" { (n) },
                    None => td class="n bad-n" { "?" },
                }
            }
            td class="n" { (r.merged) }
            td {
                @if r.disagree {
                    (pill("bad", "DISAGREE"))
                    @for (i, (k, only)) in r.only_in.0.iter().enumerate() {
                        @if i > 0 { ";" }
                        " only in " (k) ": " (some_of(only.ids.iter().map(String::as_str), only.count))
                    }
                } @else if r.complete {
                    (pill("good", "agree"))
                } @else {
                    (pill("warn", "unknown"))
                    @for (k, e) in &r.errors.0 {
                        " " (k) " not read: " span class="err" { (e) }
                    }
                    @for (k, _) in &t.unreadable.0 {
                        " " (k) " not read"
                    }
                }
            }
        }
    }
}

fn certificates(s: &Status) -> Markup {
    html! {
        section id="certificates" {
            h2 { "Certificates " small { "red when fewer than " (CERT_WARN_DAYS) " days are left" } }
            @if s.certificates.is_empty() {
                p class="muted" { "No certificate loaded." }
            } @else {
                table {
                    thead { tr {
                        th { "Certificate" } th { "Expires (UTC)" } th class="n" { "Days left" }
                    } }
                    tbody {
                        @for c in &s.certificates {
                            tr {
                                td { code { (c.label) } }
                                td { (c.expires) }
                                td class="n" {
                                    @if c.days_left < 0 {
                                        (pill("bad", "EXPIRED"))
                                    } @else if c.warning {
                                        (pill("bad", &format!("{} days", c.days_left)))
                                    } @else {
                                        (c.days_left) " days"
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::api::status::collect::{
        CertStatus, InstanceDetail, OnlyIn, Overall, PerRegistry, Probe, RegistryStatus,
        SweepStatus, Unread,
    };
    use crate::registry::ClusterMember;

    /// Every string a registry or a client can put on the page, hostile.
    #[test]
    fn every_dynamic_string_is_escaped() {
        let evil = r#"<script src="x">a & 'b'</script>"#;
        let escaped = "&lt;script src=&quot;x&quot;&gt;a &amp; 'b'&lt;/script&gt;";
        let row = Row {
            service: evil.into(),
            counts: PerRegistry(vec![
                (RegistryKind::Etcd, Some(1)),
                (RegistryKind::Consul, None),
            ]),
            merged: 1,
            complete: false,
            disagree: true,
            only_in: PerRegistry(vec![(
                RegistryKind::Etcd,
                OnlyIn {
                    count: 1,
                    ids: vec![evil.into()],
                },
            )]),
            errors: PerRegistry(vec![(RegistryKind::Consul, evil.into())]),
        };
        let status = Status {
            state: Overall::Degraded,
            summary: evil.into(),
            replica: evil.into(),
            sweep: SweepStatus {
                enabled: true,
                here: false,
                leader: Some(evil.into()),
                error: None,
            },
            generated_at: evil.into(),
            registries: vec![RegistryStatus {
                name: RegistryKind::Consul,
                role: "backup",
                state: RegistryState::Down,
                breaker: BreakerState::Open,
                probe: Probe {
                    ok: false,
                    latency_ms: None,
                    error: Some(evil.into()),
                },
                repairs_pending: 1,
                repair_oldest_seconds: 12.5,
            }],
            etcd_members: vec![
                ClusterMember {
                    name: evil.into(),
                    id: evil.into(),
                    client_urls: vec![evil.into()],
                    peer_urls: vec![evil.into()],
                    leader: true,
                    learner: false,
                    reachable: Some(true),
                    version: Some(evil.into()),
                    db_size_bytes: Some(20_480),
                    raft_term: Some(7),
                    reported_errors: vec![evil.into()],
                    error: None,
                },
                ClusterMember {
                    name: "m1".into(),
                    id: "8e9e05c52164694d".into(),
                    client_urls: vec!["http://10.0.0.2:2379".into()],
                    peer_urls: vec![],
                    leader: false,
                    learner: true,
                    reachable: Some(false),
                    version: None,
                    db_size_bytes: None,
                    raft_term: None,
                    reported_errors: vec![],
                    error: Some(evil.into()),
                },
            ],
            etcd_members_error: Some(evil.into()),
            repairs_pending: 1,
            services: Arc::new(Table::for_test(
                evil,
                vec![row],
                PerRegistry(vec![(RegistryKind::Consul, evil.into())]),
            )),
            certificates: vec![CertStatus {
                label: "server",
                not_after: 0,
                expires: evil.into(),
                days_left: -1,
                warning: true,
            }],
        };
        let page = render(&status);
        assert!(!page.contains("<script"), "markup got through:\n{page}");
        // Summary, generated_at, replica, the sweep's leader, the etcd members' (7, and the
        // headline naming the leader), and those below.
        assert!(page.matches(escaped).count() >= 17, "{page}");
        assert!(page.contains("2 members, leader &lt;script"), "{page}");
        assert!(page.contains("1 unreachable"), "{page}");
        assert!(page.contains("20.5 kB"), "the database size: {page}");
        assert!(
            page.contains(r#"<tr id="member-8e9e05c52164694d"><td><strong>m1</strong>"#),
            "{page}"
        );
        for pill in ["leader", "learner", "unreachable", "reachable"] {
            assert!(page.contains(&format!(">{pill}</span>")), "{pill}: {page}");
        }
        assert!(page.contains("12.5 s"), "the oldest repair's age: {page}");
        assert!(
            page.contains(r#"<header class="degraded" id="banner">"#),
            "{page}"
        );
        assert!(
            page.contains(r#"<span class="pill bad">EXPIRED</span>"#),
            "{page}"
        );

        let detail = ServiceDetail {
            service: "payments".into(),
            generated_at: evil.into(),
            replica: evil.into(),
            errors: PerRegistry(vec![(RegistryKind::Consul, Unread(evil.into()))]),
            instances: vec![InstanceDetail {
                id: "pay-1".into(),
                address: evil.into(),
                port: 80,
                tags: vec![evil.into()],
                ttl_seconds: 30,
                sources: vec![RegistryKind::Etcd],
                owned_here: true,
                last_heartbeat_seconds_ago: Some(1.25),
                drained: true,
            }],
        };
        let page = render_service(&detail);
        assert!(!page.contains("<script"), "markup got through:\n{page}");
        assert_eq!(page.matches(escaped).count(), 5, "{page}");
    }
}
