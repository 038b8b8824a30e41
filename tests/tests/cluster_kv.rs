//! Connector state in cluster mode (issue 25) against a real 3-server JetStream cluster:
//! the node running a shop reads and writes its connector's state, held to the same
//! quota; another node reads it but cannot write; a node that lost the shop's lease
//! cannot overwrite what the new owner wrote.

#[path = "../../crates/berth-cluster/tests/common/mod.rs"]
mod nats;

use berth_capabilities::kv::{KvStore, WriteRefused, MAX_SCOPE_BYTES, MAX_VALUE_BYTES};
use berth_cluster::lease::FenceSource;
use berth_cluster::Fence;
use nats::{claim, connect, NatsCluster};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Fences(Mutex<HashMap<String, Fence>>);

impl FenceSource for Fences {
    fn fence(&self, shop: &str) -> Option<Fence> {
        self.0.lock().unwrap().get(shop).cloned()
    }
}

async fn node(nats: &NatsCluster, name: &str) -> (KvStore, Arc<Fences>) {
    let fences = Arc::new(Fences::default());
    (KvStore::cluster(connect(nats, name).await, fences.clone()), fences)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shops_node_keeps_its_state_and_no_other_node_writes_it() {
    let nats = NatsCluster::start(3, true).await;
    let (kv1, fences1) = node(&nats, "n1").await;
    let (kv2, fences2) = node(&nats, "n2").await;
    let admin = connect(&nats, "admin").await;
    fences1.0.lock().unwrap().insert("s".into(), claim(&admin, "s", "n1").await);

    let a = kv1.scope("shopify", "s");
    a.set("cursor", b"1").unwrap();
    a.set("cursor:2", b"2").unwrap();
    a.set("token.with dots/and spaces", b"t").unwrap();
    kv1.scope("taobao", "s").set("cursor", b"other connector").unwrap();
    assert_eq!(a.get("cursor").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(a.list_prefix("cursor").unwrap(), vec!["cursor", "cursor:2"]);
    a.delete("cursor:2").unwrap();
    assert_eq!(a.get("cursor:2").unwrap(), None);
    assert_eq!(a.list_prefix("").unwrap(), vec!["cursor", "token.with dots/and spaces"]);

    // Another node (a webhook arrives anywhere) reads the state from the cluster...
    let b = kv2.scope("shopify", "s");
    assert_eq!(b.get("cursor").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(b.get("cursor:2").unwrap(), None, "a deleted key reads as absent elsewhere too");
    assert_eq!(b.list_prefix("").unwrap(), vec!["cursor", "token.with dots/and spaces"]);
    // ...and cannot write it.
    let err = b.set("cursor", b"9").unwrap_err();
    assert!(err.contains("does not run shop s"), "{err}");

    // The quota holds in the cluster as on one node; a refused write writes nothing.
    let q = kv1.scope("hostile", "s");
    let chunk = vec![7u8; MAX_VALUE_BYTES];
    let fit = (MAX_SCOPE_BYTES / (MAX_VALUE_BYTES as u64 + 8)) as usize;
    for i in 0..fit {
        q.set(&format!("k{i:06}"), &chunk).unwrap();
    }
    assert!(matches!(q.set_within("one-more", &chunk, u64::MAX, 0), Err(WriteRefused::Quota { .. })));
    assert_eq!(kv2.scope("hostile", "s").get("one-more").unwrap(), None, "the refused write is nowhere");
    q.set("k000000", &chunk).expect("overwriting in place does not grow it");

    // Node 2 takes the shop over while node 1 is paused: node 2 reads the state as
    // node 1 left it; node 1's late write is refused by the fence.
    fences2.0.lock().unwrap().insert("s".into(), claim(&admin, "s", "n2").await);
    assert_eq!(b.get("cursor").unwrap().as_deref(), Some(&b"1"[..]));
    b.set("cursor", b"2").unwrap();
    let err = a.set("cursor", b"stale").unwrap_err();
    assert!(err.contains("no longer runs shop s"), "{err}");
    let latest = admin.latest_shop_key(&format!("{}{}", berth_capabilities::kv_cluster::scope_prefix("shopify", "s"), hex::encode("cursor"))).await.unwrap().unwrap();
    assert_eq!(latest.value.as_deref(), Some(&b"2"[..]), "the stale owner's write did not land");
    // A node started later reads the new owner's state.
    let (kv3, _) = node(&nats, "n3").await;
    assert_eq!(kv3.scope("shopify", "s").get("cursor").unwrap().as_deref(), Some(&b"2"[..]));
}
