//! Cluster mode: a shop's workers run on the node holding its lease. The lease loop
//! (`berth_cluster::Leases`) calls [`ClusterShops`] to start a shop it took and to stop
//! one it gives up; every other shop of the cluster is known here as run elsewhere, so
//! this node still takes its ERP calls and webhooks.

use super::ShopSet;
use crate::registry::ConnectorRegistry;
use berth_cluster::{Fence, ShopWorkers};
use berth_types::shop::ShopConfig;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

pub struct ClusterShops {
    set: Arc<ShopSet>,
    registry: Arc<ConnectorRegistry>,
    /// Every shop of the cluster (config and onboarded), wherever it runs.
    configs: RwLock<BTreeMap<String, ShopConfig>>,
}

impl ClusterShops {
    /// `configs`: the cluster's shops; each is known as run elsewhere until this node
    /// takes its lease.
    pub fn new(set: Arc<ShopSet>, registry: Arc<ConnectorRegistry>, configs: BTreeMap<String, ShopConfig>) -> Arc<ClusterShops> {
        let shops = Arc::new(ClusterShops { set, registry, configs: RwLock::new(BTreeMap::new()) });
        shops.set_configs(configs);
        shops
    }

    /// The cluster's shops are now `configs` (a reload): new ones are known, removed ones
    /// forgotten here (a removed shop this node runs is stopped by the lease loop, which
    /// gives its lease up). A changed shop running here restarts with its new settings.
    pub fn set_configs(&self, configs: BTreeMap<String, ShopConfig>) -> Vec<String> {
        let mut problems = Vec::new();
        let old = std::mem::replace(&mut *self.configs.write().unwrap_or_else(|p| p.into_inner()), configs.clone());
        for shop in old.keys().filter(|s| !configs.contains_key(*s)) {
            self.set.forget_elsewhere(shop);
        }
        for (shop, sc) in &configs {
            if self.set.runs(shop) {
                continue;
            }
            match self.registry.slot(&sc.connector) {
                Some(slot) => self.set.run_elsewhere(shop, sc, slot),
                None => problems.push(format!("shop `{shop}`: connector `{}` is not loaded", sc.connector)),
            }
        }
        problems
    }

    /// The names the lease loop shares out.
    pub fn names(&self) -> BTreeSet<String> {
        self.configs.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    pub fn shop_set(&self) -> &Arc<ShopSet> {
        &self.set
    }
}

impl ShopWorkers for ClusterShops {
    async fn start(&self, fence: Fence) {
        let shop = fence.shop;
        let Some(sc) = self.configs.read().unwrap_or_else(|p| p.into_inner()).get(&shop).cloned() else {
            tracing::warn!(shop = %shop, "leased a shop this node's config does not have; not started");
            return;
        };
        let Some(slot) = self.registry.slot(&sc.connector) else {
            tracing::error!(shop = %shop, connector = %sc.connector, "leased a shop whose connector is not loaded here; not started");
            return;
        };
        // Said before anything of the shop runs: the lease's revision is the fence of
        // every durable write the shop's workers make here.
        tracing::info!(shop = %shop, revision = fence.revision, "this node took the shop's lease and runs it");
        // The previous owner's last push results first (see StockLedger::catch_up_shop).
        match self.set.ledger().catch_up_shop(&shop).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(shop = %shop, records = n, "this node's copy of the shop's stock caught up with the cluster"),
            Err(e) => tracing::warn!(shop = %shop, error = %e, "cannot read the shop's stock from the cluster; its pusher starts on this node's copy"),
        }
        // And its credentials: the last renewal, or those of a shop just onboarded on
        // another node (its record may reach this node's copy after the shop's).
        slot.catch_up_credentials(&shop).await;
        if let Err(e) = self.set.start(&shop, &sc, slot) {
            tracing::error!(shop = %shop, error = %e, "leased shop not started");
        }
        self.registry.set_shops(self.set.by_connector());
    }

    async fn stop(&self, shop: &str) {
        self.set.stop(shop).await;
        // The shop's last probe counts, while this node still holds its lease.
        if let Some(shared) = self.set.health().shared() {
            shared.flush_leaving(shop).await;
        }
        let sc = self.configs.read().unwrap_or_else(|p| p.into_inner()).get(shop).cloned();
        if let Some(sc) = sc {
            if let Some(slot) = self.registry.slot(&sc.connector) {
                self.set.run_elsewhere(shop, &sc, slot);
            }
        }
        self.registry.set_shops(self.set.by_connector());
        tracing::info!(shop, "this node no longer runs the shop");
    }
}
