//! Generation fencing, driven straight through each registry adapter against the real servers:
//! an older write (a late repair, a replayed delete) never undoes a newer one.

use std::sync::Arc;

use twinreg::config::Config;
use twinreg::model::{Instance, InstanceKey};
use twinreg::registry::Registry;
use twinreg::registry::consul::Consul as ConsulRegistry;
use twinreg::registry::etcd::Etcd as EtcdRegistry;

use testkit::consul::Consul;
use testkit::etcd::Etcd;

async fn adapters(etcd: &Etcd, consul: &Consul) -> (Vec<Arc<dyn Registry>>, tempfile::TempDir) {
    adapters_of(etcd, consul, "fencing").await
}

/// The two adapters as replica `replica` builds them.
async fn adapters_of(
    etcd: &Etcd,
    consul: &Consul,
    replica: &str,
) -> (Vec<Arc<dyn Registry>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    twinreg::certs::write_dev(dir.path(), &[]).unwrap();
    let d = dir.path().display();
    let toml = format!(
        "[tls]\ncert = \"{d}/server.pem\"\nkey = \"{d}/server-key.pem\"\nclient_ca = \"{d}/ca.pem\"\n\
         [etcd]\nendpoints = [\"{}\"]\n[consul]\naddress = \"{}\"\n",
        etcd.endpoint(),
        consul.address()
    );
    let settings = Config::from_toml(&toml).unwrap().validate().unwrap();
    let certs = twinreg::tls::Certs::new(twinreg::metrics::Metrics::new());
    let (e, e_pool) =
        EtcdRegistry::new(&settings.etcd, Default::default(), &certs, replica).unwrap();
    let (c, c_pool) =
        ConsulRegistry::new(&settings.consul, Default::default(), &certs, replica).unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    tokio::join!(
        e_pool.clone().warm_up(rx.clone()),
        c_pool.clone().warm_up(rx)
    );
    (vec![Arc::new(e), Arc::new(c)], dir)
}

fn instance(address: &str, generation: u64) -> Instance {
    Instance {
        key: InstanceKey::parse("payments", "pay-1").unwrap(),
        address: address.into(),
        port: 8080,
        tags: vec![],
        meta: Default::default(),
        ttl_seconds: 30,
        generation,
        drained: false,
    }
}

#[tokio::test]
async fn an_older_generation_never_overwrites_or_deletes_a_newer_one() {
    let (etcd, consul) = tokio::join!(Etcd::start(), Consul::start());
    let (registries, _dir) = adapters(&etcd, &consul).await;
    let key = InstanceKey::parse("payments", "pay-1").unwrap();
    for r in &registries {
        let kind = r.kind();
        r.register(&instance("10.0.0.2", 200)).await.unwrap();
        // A stale repair of an older registration arrives late: it must not win.
        r.register(&instance("10.0.0.1", 100)).await.unwrap();
        let got = r
            .get(&key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{kind}: record gone"));
        assert_eq!(
            got.address, "10.0.0.2",
            "{kind}: a stale write replaced a newer one"
        );
        assert_eq!(got.generation, 200, "{kind}");
        // A delete older than the registration (replayed late) leaves it alone.
        assert!(!r.deregister(&key, 150).await.unwrap(), "{kind}");
        assert!(
            r.get(&key).await.unwrap().is_some(),
            "{kind}: a stale delete removed a newer registration"
        );
        // A newer registration replaces; a newer delete removes.
        r.register(&instance("10.0.0.3", 300)).await.unwrap();
        assert_eq!(
            r.get(&key).await.unwrap().unwrap().address,
            "10.0.0.3",
            "{kind}"
        );
        assert!(r.deregister(&key, 400).await.unwrap(), "{kind}");
        assert!(r.get(&key).await.unwrap().is_none(), "{kind}");
        // A re-register after the delete (newer still) lands; the old delete replayed does not undo it.
        r.register(&instance("10.0.0.4", 500)).await.unwrap();
        assert!(!r.deregister(&key, 400).await.unwrap(), "{kind}");
        assert_eq!(
            r.get(&key).await.unwrap().unwrap().address,
            "10.0.0.4",
            "{kind}"
        );
    }
    // Exactly one record after all that, and no lease per write: the class lease, the
    // announcement's and the tombstones' shared one.
    assert_eq!(etcd.instances().await.len(), 1);
    let leases = etcd.client().await.leases().await.unwrap();
    assert_eq!(leases.leases().len(), 3, "{:?}", leases.leases());
}

/// Take-over and expiry through each adapter: a take-over moves only the copy as it was read, and
/// an expiry removes only the copy its replica still holds, so a replica that lost an instance
/// to another can never delete it; an expired registration replayed late stays fenced (etcd).
#[tokio::test]
async fn take_over_and_expiry_touch_only_the_copy_they_read_or_wrote() {
    use twinreg::registry::{Holder, Written};
    let (etcd, consul) = tokio::join!(Etcd::start(), Consul::start());
    let (a, _da) = adapters_of(&etcd, &consul, "replica-a").await;
    let (b, _db) = adapters_of(&etcd, &consul, "replica-b").await;
    let key = InstanceKey::parse("payments", "pay-1").unwrap();
    let i = instance("10.0.0.2", 700);
    for (ra, rb) in a.iter().zip(&b) {
        let kind = ra.kind();
        let Written::At(rev_a) = ra.register_new(&i).await.unwrap() else {
            panic!("{kind}: a new registration was fenced")
        };
        let read = rb.held(&key).await.unwrap().expect("held");
        assert_eq!(read.instance, i, "{kind}");
        let seen_by_a = ra.held(&key).await.unwrap().unwrap();
        assert_eq!(seen_by_a.holder, Holder::Me, "{kind}");
        let rev_b = rb.take_over(std::slice::from_ref(&read)).await.unwrap()[0]
            .unwrap_or_else(|| panic!("{kind}: the take-over did not land"));
        assert_eq!(
            rb.held(&key).await.unwrap().unwrap().holder,
            Holder::Me,
            "{kind}"
        );
        assert_ne!(
            ra.held(&key).await.unwrap().unwrap().holder,
            Holder::Me,
            "{kind}"
        );
        // A's expiry comes late: B's copy stays.
        assert_eq!(
            ra.expire(&[(i.clone(), rev_a)]).await.unwrap(),
            vec![false],
            "{kind}"
        );
        assert!(
            ra.get(&key).await.unwrap().is_some(),
            "{kind}: the old owner removed it"
        );
        if kind == twinreg::registry::RegistryKind::Etcd {
            // A take-over of a stale read does not land either.
            assert_eq!(rb.take_over(&[seen_by_a]).await.unwrap(), vec![None]);
        }
        assert_eq!(
            rb.expire(&[(i.clone(), rev_b)]).await.unwrap(),
            vec![true],
            "{kind}"
        );
        assert!(ra.get(&key).await.unwrap().is_none(), "{kind}");
        if kind == twinreg::registry::RegistryKind::Etcd {
            assert_eq!(
                ra.register(&i).await.unwrap(),
                Written::Fenced,
                "a late repair of an expired registration"
            );
        }
    }
    // Batches: 120 expiries in one call remove exactly the copies still at their revision.
    let e = &a[0];
    let mut copies = Vec::new();
    for k in 0..120 {
        let mut inst = instance("10.0.0.3", 800 + k);
        inst.key = InstanceKey::parse("payments", &format!("p{k}")).unwrap();
        let Written::At(rev) = e.register_new(&inst).await.unwrap() else {
            panic!()
        };
        copies.push((inst, rev));
    }
    // Three of them are written again meanwhile (new revisions): their expiry must not land.
    for (inst, _) in &copies[..3] {
        e.register(inst).await.unwrap();
    }
    let removed = e.expire(&copies).await.unwrap();
    assert_eq!(removed.iter().filter(|r| **r).count(), 117);
    assert!(removed[..3].iter().all(|r| !r));
    assert_eq!(etcd.instances().await.len(), 3);
}
