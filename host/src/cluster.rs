//! Cluster mode at start-up: connect to the NATS cluster, join it (heartbeats, leases)
//! and open what lives there — the order feed and the ERP's queue, the stock ledger,
//! connector state, the registry, shop health, firing alerts, onboarding and the audit
//! log. What stays on the node's own disk: the compiled-component cache, and each node's
//! own audit file, forwarded to the cluster (docs/cluster.md).

use berth_cluster::classes::Classes;
use berth_cluster::feed::QueueSettings;
use berth_cluster::queues::OrderQueues;
use berth_cluster::{ClusterConfig, Connection, Leases};
use berth_types::shop::ShopConfig;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The ERP's queue: one durable consumer per class of the feed, for every node.
pub const ERP_QUEUE: &str = "erp";

/// This node's place in the cluster.
pub struct Node {
    pub conn: Connection,
    pub leases: Arc<Leases>,
    /// Which class of the feed (and so which of the ERP queue's consumers) each shop's
    /// orders go to: the shops the same token scopes see.
    pub classes: Arc<Classes>,
    /// The shops the cluster shares out (a reload sends a new set).
    pub shops: watch::Sender<BTreeSet<String>>,
}

/// Connect and join; the lease loop starts later, once the shops can run.
pub async fn join(config: &ClusterConfig, shops: &BTreeMap<String, ShopConfig>) -> Result<Node, berth_cluster::ClusterError> {
    let conn = berth_cluster::connect(config).await?;
    if config.durability == berth_cluster::Durability::Replicated {
        tracing::warn!(
            replicas = config.replicas,
            "[cluster] durability = \"replicated\": a write is acknowledged once a majority of replicas hold it in memory; it is lost if a majority crashes within one sync interval"
        );
    }
    let (tx, rx) = watch::channel(shops.keys().cloned().collect());
    let leases = Leases::new(conn.clone(), config.node.clone(), config.lease_ttl(), rx);
    tracing::info!(node = %config.node, servers = config.nats.len(), replicas = config.replicas, "joined the NATS cluster");
    let classes = Classes::open(&conn).await?;
    Ok(Node { conn, leases, shops: tx, classes })
}

/// The ERP's order queue on the cluster's feed.
/// Its consumers' ack wait is `[cluster] erp_lease_secs`.
pub async fn erp_queue(node: &Node, config: &ClusterConfig, max_attempts: u32) -> Result<OrderQueues, berth_cluster::ClusterError> {
    let visibility = Duration::from_secs(config.erp_lease_secs);
    OrderQueues::open(&node.conn, ERP_QUEUE, QueueSettings { visibility, max_attempts }, node.classes.clone()).await
}

/// The cluster's audit stream, and this node's audit file forwarded to it.
pub async fn forward_audit(
    conn: &Connection,
    config: &ClusterConfig,
    audit: Arc<berth_core::audit::AuditLog>,
    shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, berth_cluster::ClusterError> {
    let journal = berth_cluster::journal::Journal::open(conn, &config.prefix, "audit", config.audit_keep).await?;
    audit.attach(journal.clone());
    Ok(tokio::spawn(audit.forward(journal, shutdown)))
}
