//! The connector registry in cluster mode (issue 25) against a real 3-server JetStream
//! cluster: three registries, each in a host of its own with the real Shopify
//! components, share one registry. A version deployed on node 1 is compiled ahead on
//! nodes 2 and 3; activating it on node 1 is in force on nodes 2 and 3 within a second;
//! a pause, a canary and a rollback made on one node are in force on the others.

#[path = "../../crates/berth-cluster/tests/common/mod.rs"]
mod nats;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

use berth_core::registry::{CanaryRequest, ConnectorConfig, ConnectorRegistry, RegistryStore};
use nats::{wait_for, NatsCluster};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Node {
    registry: Arc<ConnectorRegistry>,
    _host: berth_kit::ScratchHost,
    _dir: tempfile::TempDir,
}

impl Node {
    fn active(&self) -> String {
        self.registry.slot("shopify").expect("slot").current().digest.clone()
    }
}

async fn node(nats: &NatsCluster, name: &str) -> Node {
    let host = berth_kit::ScratchHost::new().expect("scratch host");
    let dir = tempfile::tempdir().expect("dir");
    let conn = nats::connect(nats, name).await;
    let (store, changes) = RegistryStore::open_cluster(&conn, &dir.path().join("components")).await.expect("the cluster's registry");
    let config = ConnectorConfig {
        component: plugins::SHOPIFY_REST.into(),
        platform: None,
        grant_hosts: None,
        extra_hosts: Vec::new(),
        allow_private_addresses: false,
        limits: Default::default(),
        onboarding: None,
        record: None,
    };
    let registry = Arc::new(ConnectorRegistry::open(store, host.runtime.clone(), &BTreeMap::from([("shopify".to_string(), config)]), None).await.expect("open the registry"));
    registry.set_shops(BTreeMap::from([("shopify".to_string(), vec!["s1".to_string(), "s2".to_string()])]));
    tokio::spawn(registry.clone().follow(changes));
    Node { registry, _host: host, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_on_one_node_is_in_force_on_the_others() {
    let nats = NatsCluster::start(3, true).await;
    let n1 = node(&nats, "n1").await;
    let (n2, n3) = (node(&nats, "n2").await, node(&nats, "n3").await);
    let rest = berth_runtime::digest(&std::fs::read(plugins::SHOPIFY_REST).expect("component"));
    for n in [&n1, &n2, &n3] {
        assert_eq!(n.active(), rest, "the configured component is active everywhere");
    }

    // Deployed on node 1 without activating: every node learns the version and
    // compiles it ahead; then activated on node 1.
    let graphql = std::fs::read(plugins::SHOPIFY_GRAPHQL).expect("component");
    let deployed = n1.registry.deploy("shopify", &graphql, "ops", false, 64 << 20).await.expect("deploy");
    let digest = deployed.version.digest.clone();
    wait_for("nodes 2 and 3 have compiled the new version ahead", 120, || [&n2, &n3].iter().all(|n| n.registry.prepared("shopify", &digest))).await;
    for n in [&n2, &n3] {
        assert!(n.registry.view("shopify").expect("view").versions.iter().any(|v| v.digest == digest), "the version's record is on every node");
        assert_eq!(n.active(), rest, "deployed, not active");
    }
    let started = Instant::now();
    n1.registry.activate("shopify", &digest).await.expect("activate on node 1");
    assert_eq!(n1.active(), digest);
    let mut seen = Vec::new();
    for n in [&n2, &n3] {
        wait_for("the activation in force on the other nodes", 30, || n.active() == digest).await;
        seen.push(started.elapsed());
    }
    println!("activation on node 1 in force on nodes 2 and 3 after {seen:?}");

    // A pause made on node 2 holds on nodes 1 and 3; the resume too.
    n2.registry.set_paused("shopify", Some("s1"), true).await.expect("pause");
    for n in [&n1, &n3] {
        wait_for("the pause on every node", 10, || n.registry.slot("shopify").is_some_and(|s| s.is_paused("s1") && !s.is_paused("s2"))).await;
    }
    n2.registry.set_paused("shopify", Some("s1"), false).await.expect("resume");
    for n in [&n1, &n3] {
        wait_for("the resume on every node", 10, || n.registry.slot("shopify").is_some_and(|s| !s.is_paused("s1"))).await;
    }

    // A canary started on node 3 routes its shop to the candidate on every node, and a
    // second one started on node 1 meanwhile is refused.
    let req = CanaryRequest { digest: rest.clone(), share_percent: None, shops: Some(vec!["s2".into()]), max_failure_rate: 0.05, window_secs: 300, min_calls: 20 };
    n3.registry.start_canary("shopify", &req, "ops").await.expect("canary on node 3");
    for n in [&n1, &n2] {
        wait_for("the canary on every node", 10, || n.registry.slot("shopify").is_some_and(|s| s.for_shop("s2").digest == rest && s.for_shop("s1").digest == digest)).await;
    }
    assert!(n1.registry.start_canary("shopify", &req, "ops").await.is_err(), "one canary at a time, cluster-wide");
    n1.registry.abort_canary("shopify").await.expect("abort on node 1");
    for n in [&n2, &n3] {
        wait_for("the canary's end on every node", 10, || n.registry.slot("shopify").is_some_and(|s| s.canary().is_none())).await;
    }

    // A rollback on node 3 goes back to the configured component everywhere.
    n3.registry.rollback("shopify").await.expect("rollback on node 3");
    for n in [&n1, &n2, &n3] {
        wait_for("the rollback on every node", 10, || n.active() == rest).await;
    }

    // A node started later takes the registry's state as it is.
    let n4 = node(&nats, "n4").await;
    assert_eq!(n4.active(), rest);
    assert_eq!(n4.registry.view("shopify").expect("view").versions.len(), 2);
    for s in seen {
        assert!(s < Duration::from_secs(1), "an activation took {s:?} to be in force on another node");
    }
}
