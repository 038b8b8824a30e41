//! Nightly snapshots of each shop: its listings as the platform holds them, the orders
//! updated in the last days and the ERP's desired stock with push state, as Parquet files
//! with a manifest (row counts, checksums, when, which connector version) under
//! `DIR/SHOP/DATE/` (see [`files`]). `[snapshots] at` takes them every night for the
//! shops chosen; `berth snapshot --shop S` takes one now. A failed snapshot leaves
//! nothing visible, is tried again `retries` times `retry_after_secs` apart, and stays
//! failed (the `snapshot-failed` alert) until one succeeds.
//!
//! When a shop's platform has been unreachable for `fallback_after_mins`, the last
//! snapshot's listed quantities are served as the shop's sellable stock, marked stale
//! ([`fallback`]); probes passing again end it.

pub mod fallback;
pub mod files;
pub mod table;
pub mod tables;

use berth_core::schedule::Zone;
use berth_core::ingest::WebhookShop;
use berth_core::listings::{ListingError, ListingReads, OnePerShop, ReadBounds, ShopListings};
use berth_core::reconcile::{ReconcileConfig, Reconciler};
use berth_core::stock::{StockError, StockLedger};
use berth_core::store::OrderStore;
pub use files::{FileEntry, Manifest, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A clock (Unix ms): the wall clock, or a fixed one in tests.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// `[snapshots]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Time of day of the nightly snapshots, `HH:MM[:SS]`; without it snapshots are taken
    /// only when asked (`berth snapshot`).
    pub at: Option<String>,
    /// `at`'s zone (IANA name or offset; UTC by default); also names the snapshot's day.
    pub timezone: Option<String>,
    /// The shops' tiers to snapshot every night (all when neither this nor `shops`).
    pub tiers: Option<Vec<berth_types::shop::Tier>>,
    pub shops: Option<Vec<String>>,
    /// Snapshots older than this many days are removed after each night's.
    pub keep_days: u32,
    /// Where snapshots go (`DATA_DIR/snapshots` by default).
    pub dir: Option<PathBuf>,
    /// Orders updated within this many days are in the orders file.
    pub orders_days: u32,
    /// A snapshot with more orders than this fails (and says so).
    pub max_orders: usize,
    /// A failed nightly snapshot is tried again this many times, this far apart.
    pub retries: u32,
    pub retry_after_secs: u64,
    /// A shop whose platform has been unreachable this long is served its last
    /// snapshot's quantities at `GET /v1/shops/{shop}/stock/fallback`.
    pub fallback_after_mins: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            at: None,
            timezone: None,
            tiers: None,
            shops: None,
            keep_days: 14,
            dir: None,
            orders_days: 30,
            max_orders: 1_000_000,
            retries: 3,
            retry_after_secs: 300,
            fallback_after_mins: 30,
        }
    }
}

impl SnapshotConfig {
    /// The nightly schedule, when there is one; what is wrong with the section otherwise.
    pub fn schedule(&self) -> Result<Option<berth_core::schedule::Daily>, String> {
        self.check()?;
        match &self.at {
            None if self.tiers.is_some() || self.shops.is_some() => Err("[snapshots] sets tiers or shops but no `at`: give the time of day of the nightly snapshots".into()),
            None => Ok(None),
            Some(at) => berth_core::schedule::Daily::parse(at, self.timezone.as_deref()).map(Some).map_err(|e| format!("[snapshots] {e}")),
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.keep_days == 0 {
            return Err("[snapshots] keep_days must be at least 1 (the fallback stock reads the last snapshot)".into());
        }
        if !(1..=3650).contains(&self.orders_days) {
            return Err("[snapshots] orders_days must be within 1..=3650".into());
        }
        if self.max_orders == 0 || self.retry_after_secs == 0 || self.fallback_after_mins == 0 {
            return Err("[snapshots] max_orders, retry_after_secs and fallback_after_mins must be at least 1".into());
        }
        if self.retries > 100 {
            return Err("[snapshots] retries must be at most 100".into());
        }
        Ok(())
    }

    /// The zone of the snapshots' days.
    pub fn zone(&self) -> Result<Zone, String> {
        self.timezone.as_deref().map(berth_core::schedule::parse_zone).transpose().map(|z| z.unwrap_or(Zone::UTC)).map_err(|e| format!("[snapshots] {e}"))
    }

    /// Whether the nightly run takes `shop` (of `tier`).
    pub fn takes(&self, shop: &str, tier: berth_types::shop::Tier) -> bool {
        match (&self.shops, &self.tiers) {
            (None, None) => true,
            (shops, tiers) => shops.as_ref().is_some_and(|s| s.iter().any(|x| x == shop)) || tiers.as_ref().is_some_and(|t| t.contains(&tier)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no shop `{0}` runs here")]
    UnknownShop(String),
    #[error("a snapshot of shop `{0}` is being taken; wait for it")]
    Running(String),
    #[error("reading the listings: {0}")]
    Listings(#[from] ListingError),
    #[error("reading the desired stock: {0}")]
    Stock(#[from] StockError),
    #[error("reading the orders: {0}")]
    Orders(#[from] berth_storage::StoreError),
    #[error("the shop has more than {max} orders updated in the last {days} days; raise [snapshots] max_orders or lower orders_days")]
    TooManyOrders { max: usize, days: u32 },
    #[error("{0}")]
    Files(#[from] files::FilesError),
}

/// A failed snapshot (kept until one succeeds); once no try is left, the
/// `snapshot-failed` alert.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Failure {
    pub shop: String,
    pub at_ms: i64,
    /// Tries of this snapshot so far.
    pub attempts: u32,
    /// Whether it will be tried again (the nightly run's retries); a snapshot asked for by
    /// hand is not.
    pub retrying: bool,
    pub error: String,
}

/// Takes the snapshots and keeps what happened.
pub struct Snapshotter {
    cfg: SnapshotConfig,
    root: PathBuf,
    zone: Zone,
    reads: Arc<ListingReads>,
    orders: Arc<OrderStore>,
    ledger: Arc<StockLedger>,
    clock: Clock,
    /// One snapshot per shop at a time (two would race for the day's directory).
    running: OnePerShop,
    failed: Mutex<BTreeMap<String, Failure>>,
    /// Each shop's last snapshot's time (read from disk at start, kept after each).
    taken: Mutex<BTreeMap<String, i64>>,
    fallback: fallback::Cache,
}

impl Snapshotter {
    /// Snapshots under `cfg.dir` (or `data_dir/snapshots`), the wall clock.
    pub fn new(cfg: SnapshotConfig, data_dir: &Path, reads: Arc<ListingReads>, orders: Arc<OrderStore>, ledger: Arc<StockLedger>) -> Result<Snapshotter, String> {
        let zone = cfg.zone()?;
        let root = cfg.dir.clone().unwrap_or_else(|| data_dir.join("snapshots"));
        let clock: Clock = Arc::new(berth_types::clock::now_ms);
        Ok(Snapshotter { cfg, root, zone, reads, orders, ledger, clock, running: Default::default(), failed: Default::default(), taken: Default::default(), fallback: Default::default() })
    }

    /// The same with another clock (tests take snapshots at a fixed time).
    pub fn with_clock(mut self, clock: Clock) -> Snapshotter {
        self.clock = clock;
        self
    }

    pub fn config(&self) -> &SnapshotConfig {
        &self.cfg
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The shop's snapshots, newest first.
    pub fn list(&self, shop: &str) -> Vec<Snapshot> {
        files::list(&self.root, shop)
    }

    /// When each shop's last snapshot was taken (Unix ms), by shop.
    pub fn taken(&self) -> BTreeMap<String, i64> {
        self.taken.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The shops whose last snapshot failed.
    pub fn failures(&self) -> Vec<Failure> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Take a snapshot of `shop` now: read its listings through the connector, then
    /// write it. A failure is kept (alerted) until a snapshot of the shop succeeds.
    pub async fn take(&self, shop: &str, target: Option<&WebhookShop>, by: &str) -> Result<Snapshot, SnapshotError> {
        self.take_reading(shop, target, by, 1, false).await.map(|(s, _)| s)
    }

    /// [`Snapshotter::take`], also handing back the listings read (the nightly
    /// reconciliation compares them). `attempt` counts the tries of this snapshot;
    /// `retrying`: another follows if this one fails.
    async fn take_reading(&self, shop: &str, target: Option<&WebhookShop>, by: &str, attempt: u32, retrying: bool) -> Result<(Snapshot, ShopListings), SnapshotError> {
        let target = target.ok_or_else(|| SnapshotError::UnknownShop(shop.to_string()))?;
        let Some(busy) = self.running.enter(shop) else {
            return Err(SnapshotError::Running(shop.to_string()));
        };
        let result = self.attempt(shop, target, by).await;
        drop(busy);
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Ok((snap, _)) => {
                failed.remove(shop);
                self.taken.lock().unwrap_or_else(|e| e.into_inner()).insert(shop.to_string(), snap.manifest.at_ms);
            }
            Err(SnapshotError::Running(_)) => {}
            Err(e) => {
                tracing::warn!(shop, attempt, retrying, error = %e, "the shop's snapshot failed");
                failed.insert(shop.to_string(), Failure { shop: shop.to_string(), at_ms: (self.clock)(), attempts: attempt, retrying, error: e.to_string() });
            }
        }
        result
    }

    async fn attempt(&self, shop: &str, target: &WebhookShop, by: &str) -> Result<(Snapshot, ShopListings), SnapshotError> {
        let started = Instant::now();
        let read = self.reads.read(shop, Some(target), ReadBounds::default()).await?;
        let snap = self.write_from(shop, &target.connector.platform, &read, by, started).await?;
        Ok((snap, read))
    }

    /// Write `shop`'s snapshot from listings read already (begun at `started`), with its
    /// desired stock and recent orders as they are now, at the clock's time.
    pub async fn write_from(&self, shop: &str, platform: &str, read: &ShopListings, by: &str, started: Instant) -> Result<Snapshot, SnapshotError> {
        let at_ms = (self.clock)();
        let stock = self.ledger.all(shop)?;
        let (orders, since) = (self.orders.clone(), at_ms - i64::from(self.cfg.orders_days) * 86_400_000);
        let (owned, max) = (shop.to_string(), self.cfg.max_orders);
        let orders = tokio::task::spawn_blocking(move || orders.updated_since(&owned, since, max))
            .await
            .map_err(|e| berth_storage::StoreError::Corrupt(format!("order read stopped: {e}")))??
            .ok_or(SnapshotError::TooManyOrders { max, days: self.cfg.orders_days })?;
        let manifest = Manifest {
            format: files::FORMAT,
            shop: shop.to_string(),
            platform: platform.to_string(),
            connector: read.connector.clone(),
            version: read.version.clone(),
            date: local_date(self.zone, at_ms),
            timezone: self.cfg.timezone.clone().unwrap_or_else(|| "UTC".into()),
            at_ms,
            listings_read_at_ms: read.read_at_ms,
            orders_days: self.cfg.orders_days,
            took_ms: 0,
            by: by.to_string(),
            files: Vec::new(),
        };
        let (root, keep_days, name) = (self.root.clone(), self.cfg.keep_days, shop.to_string());
        let tables = vec![tables::listings(read), tables::orders(&orders), tables::order_lines(&orders), tables::stock(&stock)];
        let snap = tokio::task::spawn_blocking(move || {
            // The time to read and gather it (the manifest cannot hold its own write's).
            let mut m = manifest;
            m.took_ms = started.elapsed().as_millis() as u64;
            let written = files::write(&root, m, &tables);
            if written.is_ok() {
                let gone = files::prune(&root, &name, keep_days, at_ms);
                if gone > 0 {
                    tracing::info!(removed = gone, keep_days, "removed snapshots past keep_days");
                }
            }
            written
        })
        .await
        .map_err(|e| berth_storage::StoreError::Corrupt(format!("snapshot write stopped: {e}")))??;
        tracing::info!(
            shop,
            connector = %snap.manifest.connector,
            version = %snap.manifest.version,
            dir = %snap.dir.display(),
            listings = read.listings.len(),
            orders = snap.manifest.file(tables::ORDERS).map_or(0, |f| f.rows),
            stock = stock.len(),
            "snapshot taken"
        );
        Ok(snap)
    }

    /// Clear what interrupted writes left (at start), and learn when each shop's last
    /// snapshot was taken.
    pub fn tidy(&self, shops: &[String]) {
        for shop in shops {
            if let Ok(dir) = files::shop_dir(&self.root, shop) {
                files::tidy(&dir);
            }
            if let Some(last) = self.list(shop).into_iter().next() {
                self.taken.lock().unwrap_or_else(|e| e.into_inner()).insert(shop.clone(), last.manifest.at_ms);
            }
        }
    }

    /// The shop's last snapshot's quantities, when its platform has been down since
    /// `down_since_ms` for `fallback_after_mins` (see [`fallback`]).
    pub fn fallback(&self, shop: &str, down_since_ms: Option<i64>) -> Result<fallback::Fallback, fallback::FallbackError> {
        fallback::serve(self, shop, down_since_ms)
    }

    /// Whether `shop` is in fallback (its platform down since `down_since_ms` for
    /// `fallback_after_mins`), and with which snapshot: for the alerts.
    pub fn fallback_view(&self, shop: &str, down_since_ms: Option<i64>) -> Option<fallback::FallbackView> {
        fallback::view(self, shop, down_since_ms)
    }
}

/// `ms`'s day in `zone`, `YYYY-MM-DD`.
pub fn local_date(zone: Zone, ms: i64) -> String {
    let t = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).unwrap_or_default();
    match zone {
        Zone::Fixed(o) => t.with_timezone(&o).format("%Y-%m-%d").to_string(),
        Zone::Named(tz) => t.with_timezone(&tz).format("%Y-%m-%d").to_string(),
    }
}

/// Snapshot the shops `cfg` names every night at its time, until shutdown: every shop
/// once, then the ones that failed again `retries` times `retry_after_secs` apart (a
/// platform that is down delays only its own shops). Unless `[reconcile]` has a time of
/// its own (or `after_snapshot = false`), each shop the reconciliation takes is
/// reconciled right after its snapshot lands, on the listings the snapshot read.
pub async fn run_nightly(
    snapshots: Arc<Snapshotter>,
    shops: Arc<berth_core::shops::ShopSet>,
    reconcile: Option<(Arc<Reconciler>, ReconcileConfig)>,
    schedule: berth_core::schedule::Daily,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let retries = snapshots.cfg.retries;
    loop {
        let now = berth_types::clock::now_ms();
        let next = schedule.next_after(now);
        tracing::info!(in_secs = (next - now) / 1000, "next nightly snapshots");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis((next - now).max(0) as u64)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let mut due: Vec<String> = shops.names();
        for attempt in 1..=retries + 1 {
            let mut failed = Vec::new();
            for shop in due {
                let Some(target) = shops.webhook(&shop) else { continue };
                let tier = target.config.tier;
                if !snapshots.cfg.takes(&shop, tier) || !target.connector.current().has_listings() {
                    continue;
                }
                let started = Instant::now();
                match snapshots.take_reading(&shop, Some(&target), "nightly", attempt, attempt <= retries).await {
                    Ok((_, read)) => {
                        if let Some((reconciler, rc)) = reconcile.as_ref().filter(|(_, rc)| rc.takes(&shop, tier)) {
                            match reconciler.compare(&shop, &read, started, rc.repair, "nightly").await {
                                Ok(r) if r.repaired > 0 => shops.wake_pusher(&shop),
                                Ok(_) => {}
                                Err(e) => tracing::error!(shop = %shop, error = %e, "the reconciliation after the shop's snapshot failed"),
                            }
                        }
                    }
                    Err(_) => failed.push(shop),
                }
                if *shutdown.borrow() {
                    return;
                }
            }
            if failed.is_empty() {
                break;
            }
            if attempt > retries {
                tracing::error!(shops = ?failed, attempts = attempt, "snapshots failed every try tonight; the snapshot-failed alert stays until one succeeds");
                break;
            }
            due = failed;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(snapshots.cfg.retry_after_secs)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}
