//! The merged view of one service: the union of what the registries hold, one entry per id, the
//! primary's record winning where they differ, each entry naming the registries that hold it; and
//! its content index. `ListInstances`, the REST list and long poll, and the watch view are all
//! built here, so their answers and indexes agree on every replica.

use std::collections::BTreeMap;

use crate::model::{Instance, InstanceId};
use crate::registry::RegistryKind;

/// One instance of a merged view and the registries holding it (primary first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced {
    pub instance: Instance,
    pub sources: Vec<RegistryKind>,
}

/// The union of the registries' sets, one entry per id: the first registry's record wins where
/// they differ (pass the primary first), and each entry lists every registry holding it. The
/// list answer and the watch view are both built here, so they agree.
pub fn merge<I>(sets: impl IntoIterator<Item = (RegistryKind, I)>) -> BTreeMap<InstanceId, Sourced>
where
    I: IntoIterator<Item = Instance>,
{
    let mut merged: BTreeMap<InstanceId, Sourced> = BTreeMap::new();
    for (kind, set) in sets {
        for inst in set {
            merged
                .entry(inst.key.id.clone())
                .and_modify(|s| s.sources.push(kind))
                .or_insert_with(|| Sourced {
                    instance: inst,
                    sources: vec![kind],
                });
        }
    }
    merged
}

/// A content index for a service's instance set: equal sets give equal indexes on every replica,
/// any change gives a different one. Never 0, and below 2^53 so JSON clients read it exactly.
/// Entries must come in id order (as [`merge`] gives them).
pub fn view_index<'a>(view: impl IntoIterator<Item = &'a Sourced>) -> u64 {
    // FNV-1a over a canonical rendering: stable across processes and releases.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    for Sourced {
        instance: i,
        sources,
    } in view
    {
        eat(i.key.id.as_str().as_bytes());
        eat(i.address.as_bytes());
        eat(&i.port.to_be_bytes());
        eat(&i.ttl_seconds.to_be_bytes());
        if i.drained {
            // Only when drained: the index of an undrained set is what it always was.
            eat(b"drained");
        }
        for t in &i.tags {
            eat(t.as_bytes());
        }
        for (k, v) in &i.meta {
            eat(k.as_bytes());
            eat(v.as_bytes());
        }
        for s in sources {
            eat(s.as_str().as_bytes());
        }
    }
    (h & ((1 << 53) - 1)).max(1)
}
