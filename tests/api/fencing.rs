//! Generation fencing, driven straight through each registry adapter against the real servers:
//! an older write (a late repair, a replayed delete) never undoes a newer one.

use std::sync::Arc;
use std::time::Duration;

use twinreg::config::Config;
use twinreg::model::{Instance, InstanceKey};
use twinreg::registry::Registry;
use twinreg::registry::consul::Consul as ConsulRegistry;
use twinreg::registry::etcd::Etcd as EtcdRegistry;

use testkit::consul::Consul;
use testkit::etcd::Etcd;
use testkit::eventually;

async fn adapters(etcd: &Etcd, consul: &Consul) -> (Vec<Arc<dyn Registry>>, tempfile::TempDir) {
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
    let (e, e_pool) = EtcdRegistry::new(&settings.etcd, Default::default(), &certs).unwrap();
    let (c, c_pool) = ConsulRegistry::new(&settings.consul, Default::default(), &certs).unwrap();
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
    // Exactly one record and one live lease in etcd after all that.
    assert_eq!(etcd.dump("/services/").await.len(), 1);
    // Replaced leases are revoked in the background, right after each write.
    eventually(Duration::from_secs(5), "no lease left behind", || async {
        let leases = etcd.client().await.leases().await.unwrap();
        (leases.leases().len() == 1).then_some(())
    })
    .await;
}
