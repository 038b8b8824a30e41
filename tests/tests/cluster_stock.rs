//! The stock ledger in cluster mode (issue 25) against a real 3-server JetStream
//! cluster: the single-node ledger's rules kept, two nodes posting the same SKUs at once
//! ending at the newest quantity on both, and push results refused from a node that lost
//! the shop's lease.

#[path = "../../crates/berth-cluster/tests/common/mod.rs"]
mod nats;

use berth_cluster::lease::FenceSource;
use berth_cluster::{ClusterError, Fence};
use berth_core::stock::{PushOutcome, SkuState, StockError, StockLedger, StockRequest, Submitted};
use berth_types::clock::now_ms;
use berth_types::retry::RetryPolicy;
use nats::{claim, connect, wait_for, NatsCluster};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The fences a test hands a node's ledger (a node's `Leases` in the host).
#[derive(Default)]
struct Fences(Mutex<HashMap<String, Fence>>);

impl Fences {
    fn hold(&self, fence: Fence) {
        self.0.lock().unwrap().insert(fence.shop.clone(), fence);
    }
}

impl FenceSource for Fences {
    fn fence(&self, shop: &str) -> Option<Fence> {
        self.0.lock().unwrap().get(shop).cloned()
    }
}

fn req(sku: &str, quantity: u32, seq: Option<u64>) -> StockRequest {
    StockRequest { sku: sku.into(), quantity, seq }
}

async fn ledger(nats: &NatsCluster, node: &str, max_attempts: u32) -> (StockLedger, Arc<Fences>) {
    let fences = Arc::new(Fences::default());
    let conn = connect(nats, node).await;
    let l = StockLedger::open_cluster(&conn, RetryPolicy::new(1, 2, max_attempts), fences.clone()).await.expect("open the cluster ledger");
    (l, fences)
}

/// The SKU's record as the stream leader has it (not any node's copy).
async fn at_leader(conn: &berth_cluster::Connection, shop: &str, sku: &str) -> Option<berth_core::stock::SkuStock> {
    let latest = conn.latest_shop_key(&berth_core::stock::cluster::sku_key(shop, sku)).await.expect("leader read")?;
    latest.value.filter(|v| !v.is_empty()).map(|v| serde_json::from_slice(&v).expect("a stock record"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_ledger_keeps_the_single_node_rules() {
    let nats = NatsCluster::start(3, true).await;
    let (l, fences) = ledger(&nats, "n1", 2).await;
    let conn = connect(&nats, "n1").await;
    fences.hold(claim(&conn, "s", "n1").await);

    // Newest wins; a stale ERP sequence is ignored; the same quantity is unchanged.
    let r = l.submit("s", &[req("A", 5, Some(1)), req("A", 7, Some(2)), req("B", 1, None)]).await.unwrap();
    assert_eq!(r.iter().map(|r| r.outcome).collect::<Vec<_>>(), [Submitted::Queued, Submitted::Queued, Submitted::Queued]);
    assert_eq!(l.submit("s", &[req("A", 6, Some(2))]).await.unwrap()[0].outcome, Submitted::Stale);
    assert_eq!(l.submit("s", &[req("A", 7, Some(3))]).await.unwrap()[0].outcome, Submitted::Unchanged);
    let due = l.due("s", now_ms(), 10).unwrap();
    assert_eq!(due.len(), 2, "A coalesced into one pending record");
    let a = due.iter().find(|r| r.sku == "A").unwrap().clone();
    assert_eq!((a.quantity, a.seq), (7, Some(3)));

    // A result for a version no longer desired keeps the newer quantity pending.
    l.submit("s", &[req("A", 9, None)]).await.unwrap();
    l.settle("s", &[("A".into(), a.version, 7, PushOutcome::Accepted)]).await.unwrap();
    let rec = l.get("s", "A").unwrap().unwrap();
    assert_eq!((rec.state, rec.quantity, rec.pushed_quantity), (SkuState::Pending, 9, Some(7)));
    assert!(rec.version > a.version, "versions grow per SKU");
    l.settle("s", &[("A".into(), rec.version, 9, PushOutcome::Accepted)]).await.unwrap();
    assert_eq!(l.get("s", "A").unwrap().unwrap().state, SkuState::Pushed);

    // Failures back off then die; replay revives, purge forgets.
    let vb = l.get("s", "B").unwrap().unwrap().version;
    l.settle("s", &[("B".into(), vb, 1, PushOutcome::Failed("503".into()))]).await.unwrap();
    l.settle("s", &[("B".into(), vb, 1, PushOutcome::Failed("503 again".into()))]).await.unwrap();
    let b = l.get("s", "B").unwrap().unwrap();
    assert_eq!((b.state, b.attempts, b.last_error.as_deref()), (SkuState::Dead, 2, Some("503 again")));
    assert_eq!(l.stats("s").unwrap().dead, 1);
    assert_eq!(l.replay("s", &["B".into(), "nope".into()]).await.unwrap(), 1);
    assert_eq!(l.get("s", "B").unwrap().unwrap().state, SkuState::Pending);
    l.settle("s", &[("B".into(), vb, 1, PushOutcome::Rejected("unknown SKU".into()))]).await.unwrap();
    assert_eq!(l.purge("s", &["B".into()]).await.unwrap(), 1);
    assert_eq!(l.get("s", "B").unwrap(), None);
    assert_eq!(l.submit("s", &[req("B", 1, None)]).await.unwrap()[0].outcome, Submitted::Queued, "a purged SKU starts afresh");

    // Any SKU a platform has (dots, spaces, slashes, non-ASCII) is a key, listed in SKU order.
    let odd = ["a.b", "a b", "a/b>*", "é-1", "Z"];
    l.submit("s", &odd.iter().map(|s| req(s, 3, None)).collect::<Vec<_>>()).await.unwrap();
    let mut want: Vec<String> = odd.iter().map(|s| s.to_string()).chain(["A".into(), "B".into()]).collect();
    want.sort();
    let listed: Vec<String> = l.list("s", None, None, 100).unwrap().into_iter().map(|r| r.sku).collect();
    assert_eq!(listed, want);
    let page: Vec<String> = l.list("s", None, Some(&want[1]), 2).unwrap().into_iter().map(|r| r.sku).collect();
    assert_eq!(page, want[2..4], "a page starts after the cursor");
    assert_eq!(l.list("s", Some(SkuState::Pushed), None, 100).unwrap().len(), 1);

    // An export holds pending SKUs until confirmed.
    let (batch, held) = l.export("s").await.unwrap();
    assert_eq!(held.len(), 6);
    assert!(l.due("s", now_ms(), 100).unwrap().is_empty(), "the pusher leaves exported SKUs alone");
    assert_eq!(l.export_batch("s", &batch).unwrap().len(), 6);
    assert_eq!(l.end_export("s", &batch, true).await.unwrap(), 6);
    assert!(matches!(l.end_export("s", &batch, true).await, Err(StockError::UnknownBatch { .. })));

    // A node started later sees the same records and counts.
    let (again, _) = ledger(&nats, "n2", 2).await;
    for sku in &want {
        assert_eq!(again.get("s", sku).unwrap(), l.get("s", sku).unwrap(), "{sku}");
    }
    let (s1, s2) = (l.stats("s").unwrap(), again.stats("s").unwrap());
    assert_eq!((s1.pending, s1.pushed, s1.dead, s1.exported), (s2.pending, s2.pushed, s2.dead, s2.exported));
    assert_eq!(s2.pushed, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_posting_the_same_skus_end_at_the_newest_quantity() {
    let nats = NatsCluster::start(3, true).await;
    let (a, _) = ledger(&nats, "n1", 3).await;
    let (b, _) = ledger(&nats, "n2", 3).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let skus: Vec<String> = (0..20).map(|i| format!("SKU-{i}")).collect();
    // Node 1 posts the even sequences, node 2 the odd ones, of the same SKUs at once;
    // quantity = sequence, so the newest quantity is the highest sequence sent.
    let rounds = 40u64;
    let post = |l: Arc<StockLedger>, parity: u64, skus: Vec<String>| {
        tokio::spawn(async move {
            for r in 0..rounds {
                let seq = 2 * r + parity + 1;
                let updates: Vec<_> = skus.iter().map(|s| req(s, seq as u32, Some(seq))).collect();
                let out = l.submit("s", &updates).await.expect("a post is taken");
                assert!(out.iter().all(|o| matches!(o.outcome, Submitted::Queued | Submitted::Stale)));
                // Read your own write: this node's copy shows it, or something newer.
                for s in &skus {
                    assert!(l.get("s", s).unwrap().unwrap().seq.unwrap() >= seq);
                }
            }
        })
    };
    let (ta, tb) = (post(a.clone(), 0, skus.clone()), post(b.clone(), 1, skus.clone()));
    ta.await.unwrap();
    tb.await.unwrap();
    let newest = 2 * rounds;
    for l in [&a, &b] {
        wait_for("both copies at the newest quantity", 10, || skus.iter().all(|s| l.get("s", s).unwrap().is_some_and(|r| r.seq == Some(newest)))).await;
        for s in &skus {
            let r = l.get("s", s).unwrap().unwrap();
            assert_eq!((r.quantity, r.state), (newest as u32, SkuState::Pending), "{s}");
        }
        assert_eq!(l.stats("s").unwrap().pending, 20, "counted once each on both nodes");
        assert_eq!(l.due("s", now_ms(), 100).unwrap().len(), 20);
    }
    eprintln!("changes decided again after a lost race: node 1 {}, node 2 {}", a.cluster().unwrap().retries(), b.cluster().unwrap().retries());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_results_land_only_from_the_shops_owner() {
    let nats = NatsCluster::start(3, true).await;
    let (a, fences_a) = ledger(&nats, "n1", 3).await;
    let (b, fences_b) = ledger(&nats, "n2", 3).await;
    let conn = connect(&nats, "n1").await;

    // Node 2 takes a post for a shop node 1 owns; node 1's pusher sees it due.
    fences_a.hold(claim(&conn, "s", "n1").await);
    b.submit("s", &[req("A", 5, Some(1))]).await.unwrap();
    wait_for("node 1 sees node 2's post", 10, || a.due("s", now_ms(), 10).unwrap().len() == 1).await;
    let taken = a.due("s", now_ms(), 10).unwrap().remove(0);

    // Not the owner: refused before anything is sent.
    let err = b.settle("s", &[("A".into(), taken.version, 5, PushOutcome::Accepted)]).await.unwrap_err();
    assert!(matches!(err, StockError::NotOwner { .. }), "{err}");

    // Node 2 takes the shop over while node 1 is paused; node 1's late result is fenced.
    fences_b.hold(claim(&conn, "s", "n2").await);
    let err = a.settle("s", &[("A".into(), taken.version, 5, PushOutcome::Accepted)]).await.unwrap_err();
    assert!(matches!(err, StockError::Cluster(ClusterError::Fenced { .. })), "{err}");
    let rec = at_leader(&conn, "s", "A").await.unwrap();
    assert_eq!((rec.state, rec.pushed_quantity), (SkuState::Pending, None), "the stale owner's result did not land");

    // The new owner settles it.
    b.settle("s", &[("A".into(), rec.version, 5, PushOutcome::Accepted)]).await.unwrap();
    wait_for("node 1 sees the new owner's result", 10, || a.get("s", "A").unwrap().is_some_and(|r| r.state == SkuState::Pushed)).await;
    assert_eq!(a.stats("s").unwrap().pushed, 1);
}
