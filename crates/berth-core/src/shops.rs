//! The shops berth serves, each with its order pull worker and (when its connector
//! offers inventory) its stock pusher. Shops can be added, changed and removed while
//! berth runs: a config reload starts new shops, restarts changed ones with their new
//! settings and stops removed ones (their stored orders and stock records stay).

use crate::stock::StockShop;
use berth_types::shop::ShopConfig;
use crate::sync::SyncDefaults;
use crate::inbox::OrderInbox;
use crate::ingest::WebhookShop;
use crate::registry::ConnectorSlot;
use berth_types::connector::Capability;
use crate::stock::pusher::ShopPusher;
use crate::stock::StockLedger;
use crate::store::OrderStore;
use crate::sync::{SharedStatus, ShopStatus, ShopWorker};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

pub mod cluster;

/// What every shop's workers share.
pub struct ShopDeps {
    pub store: Arc<OrderStore>,
    pub inbox: OrderInbox,
    pub ledger: Arc<StockLedger>,
    pub sync: SyncDefaults,
    pub stock_batch_size: usize,
    pub error_pause: Duration,
    pub health: Arc<crate::health::HealthBook>,
    /// New orders per shop per hour, pulls and webhooks together.
    pub budgets: Arc<crate::order_budget::OrderBudgets>,
    /// Rate limits and their holds (a shop whose quota is held shows `throttled`).
    pub services: Arc<berth_capabilities::services::HostServices>,
    /// Cluster mode: asked before each stock push (see [`ShopPusher::gate`]).
    pub platform_gate: Option<crate::stock::pusher::PlatformGate>,
    /// Write guards: holds on suspicious submissions, pauses of failing platforms.
    pub guards: Arc<crate::stock::guard::WriteGuards>,
}

struct RunningShop {
    config: ShopConfig,
    /// The platform its connector serves.
    platform: String,
    status: SharedStatus,
    webhook: Arc<WebhookShop>,
    stock: StockShop,
    stop: Arc<watch::Sender<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub struct ShopSet {
    deps: ShopDeps,
    shops: RwLock<BTreeMap<String, RunningShop>>,
    /// Cluster mode: the cluster's shops another node runs. This node takes their ERP
    /// calls (stock posts, webhooks) and writes what any node may write; their pulls and
    /// pushes run on the node holding their lease.
    elsewhere: RwLock<BTreeMap<String, RemoteShop>>,
    /// berth's own shutdown: stops every shop.
    shutdown: watch::Receiver<bool>,
}

/// A shop of the cluster run by another node.
struct RemoteShop {
    connector: String,
    webhook: Arc<WebhookShop>,
    stock: StockShop,
}

/// Why a shop was not started.
#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    #[error("shop `{shop}`: connector `{connector}` is not loaded")]
    NoConnector { shop: String, connector: String },
    #[error("shop `{shop}`: connector `{connector}` needs config key `{key}`; add it under [shops.{shop}.settings] or [shops.{shop}.secrets]")]
    MissingKey { shop: String, connector: String, key: String },
}

/// What [`ShopSet::put`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Put {
    Started,
    Restarted,
    Unchanged,
    /// Cluster mode: the cluster's shops include it; the node holding its lease runs it.
    #[serde(rename = "shared_in_cluster")]
    Shared,
}

/// Settings compared as written (secrets included, never printed).
impl ShopSet {
    pub fn new(deps: ShopDeps, shutdown: watch::Receiver<bool>) -> Self {
        ShopSet { deps, shops: RwLock::default(), elsewhere: RwLock::default(), shutdown }
    }

    /// Check a shop against its connector's manifest (required keys; the tokens of a shop
    /// whose credentials berth keeps are in the credential book).
    pub fn check(shop: &str, sc: &ShopConfig, slot: &ConnectorSlot) -> Result<(), ShopError> {
        let conn = slot.current();
        let from_book = |k: &str| matches!(k, "access_token" | "refresh_token") && slot.holds_credentials(shop);
        match conn.manifest.required_config.iter().find(|k| sc.value(k).is_none() && !from_book(k)) {
            Some(key) => Err(ShopError::MissingKey { shop: shop.into(), connector: sc.connector.clone(), key: key.clone() }),
            None => Ok(()),
        }
    }

    /// Start a shop's workers.
    pub fn start(&self, shop: &str, sc: &ShopConfig, slot: Arc<ConnectorSlot>) -> Result<(), ShopError> {
        Self::check(shop, sc, &slot)?;
        let d = &self.deps;
        let (stop, stop_rx) = watch::channel(false);
        let stop = Arc::new(stop);
        // berth's shutdown stops the shop too; the forwarder ends when the shop does.
        let (fwd_stop, mut global) = (stop.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = global.wait_for(|s| *s) => { let _ = fwd_stop.send(true); }
                _ = fwd_stop.closed() => {}
            }
        });
        let config = Arc::new(sc.clone());
        let status = Arc::new(Mutex::new(ShopStatus {
            shop: shop.to_string(),
            connector: sc.connector.clone(),
            platform: slot.platform.clone(),
            tier: format!("{:?}", sc.tier),
            ..Default::default()
        }));
        let wake = Arc::new(tokio::sync::Notify::new());
        let worker = ShopWorker {
            wake: wake.clone(),
            shop: shop.to_string(),
            config: config.clone(),
            connector: slot.clone(),
            store: d.store.clone(),
            inbox: d.inbox.clone(),
            defaults: d.sync.clone(),
            status: status.clone(),
            budgets: d.budgets.clone(),
        };
        let mut tasks = vec![tokio::spawn(worker.run(stop_rx.clone()))];
        d.health.register(shop, &sc.connector, &slot.platform, sc.tier);
        let prober = crate::health::prober::Prober {
            shop: shop.to_string(),
            tier: sc.tier,
            config: config.clone(),
            connector: slot.clone(),
            book: d.health.clone(),
        };
        tasks.push(tokio::spawn(prober.run(stop_rx.clone())));
        let pusher = if slot.current().offers(Capability::Inventory) {
            let wake = Arc::new(tokio::sync::Notify::new());
            let push_status = Arc::new(Mutex::new(Default::default()));
            let pusher = ShopPusher {
                shop: shop.to_string(),
                config: config.clone(),
                connector: slot.clone(),
                ledger: d.ledger.clone(),
                wake: wake.clone(),
                batch_size: d.stock_batch_size,
                error_pause: d.error_pause,
                status: push_status.clone(),
                gate: d.platform_gate.clone(),
                platform: slot.platform.clone(),
                guards: d.guards.clone(),
                health: d.health.clone(),
            };
            tasks.push(tokio::spawn(pusher.run(stop_rx)));
            Some((wake.clone(), push_status))
        } else {
            None
        };
        let platform = slot.platform.clone();
        let running = RunningShop {
            config: sc.clone(),
            platform: platform.clone(),
            status,
            webhook: Arc::new(WebhookShop {
                running: Arc::new(tokio::sync::Semaphore::new(slot.current().limits.max_webhook_calls_per_shop)),
                connector: slot,
                config,
                wake_sync: wake,
                budgets: d.budgets.clone(),
            }),
            stock: StockShop { connector: sc.connector.clone(), platform: platform.clone(), pusher },
            stop,
            tasks,
        };
        self.shops.write().unwrap_or_else(|e| e.into_inner()).insert(shop.to_string(), running);
        self.elsewhere.write().unwrap_or_else(|e| e.into_inner()).remove(shop);
        Ok(())
    }

    /// Cluster mode: `shop` is one of the cluster's, run by another node (or by none at
    /// the moment). Its webhooks and stock posts are taken here; nothing of it runs here.
    pub fn run_elsewhere(&self, shop: &str, sc: &ShopConfig, slot: Arc<ConnectorSlot>) {
        let d = &self.deps;
        let inventory = slot.current().offers(Capability::Inventory);
        let platform = slot.platform.clone();
        let remote = RemoteShop {
            connector: sc.connector.clone(),
            webhook: Arc::new(WebhookShop {
                running: Arc::new(tokio::sync::Semaphore::new(slot.current().limits.max_webhook_calls_per_shop)),
                connector: slot,
                config: Arc::new(sc.clone()),
                // The shop's puller runs on its owner, on its own timer.
                wake_sync: Arc::new(tokio::sync::Notify::new()),
                budgets: d.budgets.clone(),
            }),
            stock: StockShop {
                connector: sc.connector.clone(),
                platform: platform.clone(),
                // The owner's pusher is woken by the change reaching its copy of the ledger.
                pusher: inventory.then(|| (Arc::new(tokio::sync::Notify::new()), Arc::new(Mutex::new(Default::default())))),
            },
        };
        self.elsewhere.write().unwrap_or_else(|e| e.into_inner()).insert(shop.to_string(), remote);
        d.health.watch_elsewhere(shop, &sc.connector, &platform, sc.tier);
    }

    /// Cluster mode: `shop` is no longer one of the cluster's.
    pub fn forget_elsewhere(&self, shop: &str) {
        self.elsewhere.write().unwrap_or_else(|e| e.into_inner()).remove(shop);
        self.deps.health.forget_elsewhere(shop);
    }

    /// The shops' probe results.
    pub fn health(&self) -> &Arc<crate::health::HealthBook> {
        &self.deps.health
    }

    /// Whether `shop` is one of the shops this node knows: run here, or (cluster mode)
    /// elsewhere.
    pub fn knows(&self, shop: &str) -> bool {
        self.runs(shop) || self.remote().contains_key(shop)
    }

    /// Whether this node runs `shop`'s workers.
    pub fn runs(&self, shop: &str) -> bool {
        self.shops.read().unwrap_or_else(|e| e.into_inner()).contains_key(shop)
    }

    /// Wake the running shop's pusher (cluster mode: a stock change made on another node
    /// reached this node's copy of the ledger).
    pub fn wake_pusher(&self, shop: &str) {
        if let Some((wake, _)) = self.shops.read().unwrap_or_else(|e| e.into_inner()).get(shop).and_then(|r| r.stock.pusher.as_ref()) {
            wake.notify_one();
        }
    }

    /// Stop a shop's workers and wait for them (a call in flight finishes first).
    pub async fn stop(&self, shop: &str) {
        let running = self.shops.write().unwrap_or_else(|e| e.into_inner()).remove(shop);
        if let Some(r) = running {
            let _ = r.stop.send(true);
            for t in r.tasks {
                let _ = t.await;
            }
            self.deps.health.unregister(shop);
        }
    }

    /// Wait for every shop's workers after berth's shutdown was signalled.
    pub async fn join_all(&self) {
        let names: Vec<String> = self.shops.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        for n in names {
            self.stop(&n).await;
        }
    }

    /// Bring the running shops in line with `shops` (a reloaded config). Returns what
    /// changed, one line per shop.
    pub async fn apply(&self, shops: &BTreeMap<String, ShopConfig>, slot: impl Fn(&str) -> Option<Arc<ConnectorSlot>>) -> Vec<String> {
        let mut changes = Vec::new();
        let running: Vec<String> = self.shops.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        for name in running.iter().filter(|n| !shops.contains_key(*n)) {
            self.stop(name).await;
            changes.push(format!("shop `{name}` removed and stopped"));
        }
        for (name, sc) in shops {
            let Some(s) = slot(&sc.connector) else {
                changes.push(ShopError::NoConnector { shop: name.clone(), connector: sc.connector.clone() }.to_string());
                continue;
            };
            match self.put(name, sc, s).await {
                Ok(Put::Unchanged | Put::Shared) => {}
                Ok(Put::Started) => changes.push(format!("shop `{name}` added and started")),
                Ok(Put::Restarted) => changes.push(format!("shop `{name}` restarted with its new settings")),
                Err(e) => changes.push(format!("{e}; the shop was not (re)started")),
            }
        }
        changes
    }

    /// Run `shop` on `sc`: start it, restart it when its config changed, or leave it.
    /// Checked before the old one stops, so a bad change keeps the shop running.
    pub async fn put(&self, shop: &str, sc: &ShopConfig, slot: Arc<ConnectorSlot>) -> Result<Put, ShopError> {
        let old = self.shops.read().unwrap_or_else(|e| e.into_inner()).get(shop).map(|r| r.config.clone());
        if old.as_ref() == Some(sc) {
            return Ok(Put::Unchanged);
        }
        Self::check(shop, sc, &slot)?;
        if old.is_some() {
            self.stop(shop).await;
        }
        self.start(shop, sc, slot)?;
        Ok(if old.is_some() { Put::Restarted } else { Put::Started })
    }

    /// The write guards the shops' submissions and pushes go through.
    pub fn guards(&self) -> &Arc<crate::stock::guard::WriteGuards> {
        &self.deps.guards
    }

    /// The stock ledger the shops' pushers settle in.
    pub fn ledger(&self) -> &Arc<StockLedger> {
        &self.deps.ledger
    }

    /// The host's services (rate limits and their holds).
    pub fn services(&self) -> &Arc<berth_capabilities::services::HostServices> {
        &self.deps.services
    }

    /// Every shop's order budget (see order_budget.rs).
    pub fn budgets(&self) -> &Arc<crate::order_budget::OrderBudgets> {
        &self.deps.budgets
    }

    pub fn statuses(&self) -> Vec<ShopStatus> {
        self.shops
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|r| r.status.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    fn remote(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, RemoteShop>> {
        self.elsewhere.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The shop's webhook target, whether it runs here or (cluster mode) elsewhere.
    pub fn webhook(&self, shop: &str) -> Option<Arc<WebhookShop>> {
        let running = self.shops.read().unwrap_or_else(|e| e.into_inner()).get(shop).map(|r| r.webhook.clone());
        running.or_else(|| self.remote().get(shop).map(|r| r.webhook.clone()))
    }

    pub fn stock(&self, shop: &str) -> Option<StockShop> {
        let running = self.shops.read().unwrap_or_else(|e| e.into_inner()).get(shop).map(|r| r.stock.clone());
        running.or_else(|| self.remote().get(shop).map(|r| r.stock.clone()))
    }

    /// Every shop's stock side, by name (cluster mode: the cluster's shops).
    pub fn stock_shops(&self) -> BTreeMap<String, StockShop> {
        let mut all: BTreeMap<String, StockShop> = self.remote().iter().map(|(k, r)| (k.clone(), r.stock.clone())).collect();
        all.extend(self.shops.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, r)| (k.clone(), r.stock.clone())));
        all
    }

    pub fn connector_of(&self, shop: &str) -> Option<String> {
        let running = self.shops.read().unwrap_or_else(|e| e.into_inner()).get(shop).map(|r| r.config.connector.clone());
        running.or_else(|| self.remote().get(shop).map(|r| r.connector.clone()))
    }

    /// The shops berth serves (cluster mode: the cluster's, wherever they run).
    pub fn names(&self) -> Vec<String> {
        let mut all: std::collections::BTreeSet<String> = self.remote().keys().cloned().collect();
        all.extend(self.shops.read().unwrap_or_else(|e| e.into_inner()).keys().cloned());
        all.into_iter().collect()
    }

    /// Each connector's shops.
    pub fn by_connector(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (shop, r) in self.shops.read().unwrap_or_else(|e| e.into_inner()).iter() {
            out.entry(r.config.connector.clone()).or_default().push(shop.clone());
        }
        out
    }
}

impl crate::health::HoldSource for ShopSet {
    /// `throttled` while the shop's quota is held by a throttle, `held` while its order
    /// intake is; the reason names who caused it and for how long.
    fn hold(&self, shop: &str) -> Option<(crate::health::ShopState, String)> {
        let (platform, config) = {
            let shops = self.shops.read().unwrap_or_else(|e| e.into_inner());
            let r = shops.get(shop)?;
            (r.platform.clone(), r.config.clone())
        };
        if let Some(h) = self.deps.services.limits.throttle_on(&platform, shop, Some(&config)) {
            let by = if h.shop == shop { "its own call".to_string() } else { format!("a call of shop `{}`", h.shop) };
            return Some((
                crate::health::ShopState::Throttled,
                format!("quota {} of {platform} held {} s more ({} s in all) after {by}: {}", h.key, h.remaining_ms.div_ceil(1000), h.held_ms / 1000, h.reason),
            ));
        }
        self.deps.budgets.held_shop(shop, berth_types::clock::now_ms()).map(|h| (crate::health::ShopState::Held, h.reason()))
    }
}
