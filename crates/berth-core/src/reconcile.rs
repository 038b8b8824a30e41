//! Reconciliation: the quantities a shop's platform holds (its listings, read through
//! the connector) against the ERP's newest desired quantities (the stock ledger). Every
//! SKU the platform holds at another quantity than the one berth last pushed there is a
//! drift — a seller edited it by hand, another tool wrote it, the platform lost a write.
//!
//! Only SKUs berth has pushed and not touched since the listing began are compared: a
//! pending, held or exported SKU is on its way (its push will set it), and a push that
//! landed during the read may not be in the listing yet. A desired SKU the platform does
//! not list at all is reported as missing.
//!
//! With `repair`, the drifting SKUs go back to pending with their newest desired quantity
//! and the normal pusher sets them (its coalescing, throttling and ordering unchanged: a
//! newer quantity submitted meanwhile wins as always).
//!
//! `[reconcile] at` runs it every night for the chosen shops (`run_nightly`); otherwise
//! it runs when an operator asks.
//!
//! Each shop's last report is kept in the store (`reconcile` keyspace), with when each
//! SKU was first seen drifting, so a drift that persists across runs is told apart (the
//! `stock-drift` alert) and its age is known.

use crate::ingest::WebhookShop;
use crate::listings::{ListingError, ListingReads, ReadBounds, ShopListings};
use crate::stock::{SkuState, StockError, StockLedger};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// The most drift rows one report keeps (the counts cover them all).
pub const MAX_ROWS: usize = 10_000;

/// `[reconcile]`: the nightly run.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Time of day of the nightly run, `HH:MM` or `HH:MM:SS`; without it reconciliation
    /// runs only when asked (`berth reconcile`).
    pub at: Option<String>,
    /// `at`'s time zone: an IANA name (`Asia/Shanghai`), an offset (`+08:00`) or UTC (the
    /// default).
    pub timezone: Option<String>,
    /// The shops' tiers to reconcile (all when absent).
    pub tiers: Option<Vec<berth_types::shop::Tier>>,
    /// The shops to reconcile (all when absent); with `tiers`, a shop named here or of
    /// one of the tiers.
    pub shops: Option<Vec<String>>,
    /// Queue the drifting SKUs' desired quantities again after the nightly run.
    #[serde(default)]
    pub repair: bool,
    /// Reconcile each shop right after its nightly snapshot (`[snapshots] at`), on the
    /// listings the snapshot read: the default when `at` is not given; `false` turns it
    /// off.
    pub after_snapshot: Option<bool>,
}

impl ReconcileConfig {
    /// The schedule, when there is one; why the section is wrong otherwise.
    pub fn schedule(&self) -> Result<Option<crate::schedule::Daily>, String> {
        match &self.at {
            Some(_) if self.after_snapshot == Some(true) => {
                Err("[reconcile] sets both `at` and `after_snapshot = true`: the nightly run is at its own time or right after the snapshot, not both".into())
            }
            None if self.timezone.is_some() => Err("[reconcile] sets timezone but no `at`: the zone is for `at` (after a snapshot, [snapshots] timezone decides)".into()),
            None if self.after_snapshot == Some(false) && (self.tiers.is_some() || self.shops.is_some() || self.repair) => {
                Err("[reconcile] sets tiers, shops or repair but neither `at` nor the run after the snapshot (after_snapshot = false): give the time of day of the nightly run".into())
            }
            None => Ok(None),
            Some(at) => crate::schedule::Daily::parse(at, self.timezone.as_deref()).map(Some).map_err(|e| format!("[reconcile] {e}")),
        }
    }

    /// Whether the reconciliation runs right after each nightly snapshot: asked for, or
    /// no time of its own and not turned off.
    pub fn after_snapshot(&self) -> bool {
        self.at.is_none() && self.after_snapshot != Some(false)
    }

    /// Whether the nightly run takes `shop` (of `tier`).
    pub fn takes(&self, shop: &str, tier: berth_types::shop::Tier) -> bool {
        match (&self.shops, &self.tiers) {
            (None, None) => true,
            (shops, tiers) => shops.as_ref().is_some_and(|s| s.iter().any(|x| x == shop)) || tiers.as_ref().is_some_and(|t| t.contains(&tier)),
        }
    }
}

/// One SKU whose platform quantity is not the ERP's.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Drift {
    pub sku: String,
    /// What the platform lists; `None` when it does not list the SKU at all.
    pub platform_quantity: Option<i64>,
    pub desired_quantity: u32,
    /// The ERP's sequence number of that quantity, when it gave one.
    pub desired_seq: Option<u64>,
    /// When berth pushed the desired quantity.
    pub pushed_at_ms: Option<i64>,
    /// When a run first saw this SKU drifting (kept while it keeps drifting).
    pub since_ms: i64,
    /// Runs in a row that found it drifting, this one included.
    pub runs: u32,
}

/// What one reconciliation found and did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub shop: String,
    pub connector: String,
    pub version: String,
    /// When the listing read began (Unix ms).
    pub at_ms: i64,
    pub took_ms: u64,
    /// Listings the platform holds.
    pub listed: usize,
    /// SKUs the ERP wants that were compared.
    pub compared: usize,
    /// SKUs the ERP wants that were on their way (pending, held, exported, pushed during
    /// the read) and so not compared.
    pub in_flight: usize,
    /// SKUs drifting (quantity differs) and missing (not listed), all of them.
    pub drifting: usize,
    pub missing: usize,
    /// Of those, drifting in the previous run too.
    pub persistent: usize,
    /// The first [`MAX_ROWS`] drifts, SKU order.
    pub drifts: Vec<Drift>,
    /// Whether the run put the drifting SKUs back to the pusher, and how many moved.
    pub repair: bool,
    pub repaired: usize,
    /// Who asked: `nightly`, or the operator's token name.
    #[serde(default)]
    pub by: String,
}

impl Report {
    /// The drifts as CSV: a header row, then one row per drift.
    pub fn csv_text(&self) -> Result<String, csv::Error> {
        let opt = |v: Option<String>| v.unwrap_or_default();
        let rows = self.drifts.iter().map(|d| {
            [
                d.sku.clone(),
                opt(d.platform_quantity.map(|q| q.to_string())),
                d.desired_quantity.to_string(),
                opt(d.desired_seq.map(|s| s.to_string())),
                d.since_ms.to_string(),
                d.runs.to_string(),
            ]
        });
        crate::listings::csv_of(&["sku", "platform_quantity", "desired_quantity", "desired_seq", "since_ms", "runs"], rows)
    }
}

/// A shop's drift as the alerts and the gauge see it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DriftView {
    pub shop: String,
    pub at_ms: i64,
    pub drifting: usize,
    pub persistent: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{0}")]
    Listing(#[from] ListingError),
    #[error("{0}")]
    Stock(#[from] StockError),
    #[error("storage: {0}")]
    Storage(#[from] berth_storage::StoreError),
}

pub struct Reconciler {
    store: berth_storage::Store,
    tree: berth_storage::store::Keyspace,
    ledger: Arc<StockLedger>,
    reads: Arc<ListingReads>,
    last: Mutex<BTreeMap<String, Report>>,
}

impl Reconciler {
    /// The reports kept in the store, read back.
    pub fn open(store: &berth_storage::Store, ledger: Arc<StockLedger>, reads: Arc<ListingReads>) -> Result<Reconciler, ReconcileError> {
        let tree = store.keyspace("reconcile")?;
        let mut last = BTreeMap::new();
        for item in tree.iter() {
            let (_, v) = item?;
            match serde_json::from_slice::<Report>(&v) {
                Ok(r) => {
                    last.insert(r.shop.clone(), r);
                }
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable reconciliation report"),
            }
        }
        Ok(Reconciler { store: store.clone(), tree, ledger, reads, last: Mutex::new(last) })
    }

    /// The listing reads, shared with `GET /v1/shops/{shop}/listings` (one per shop).
    pub fn reads(&self) -> &Arc<ListingReads> {
        &self.reads
    }

    /// The shop's last report.
    pub fn last(&self, shop: &str) -> Option<Report> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).get(shop).cloned()
    }

    /// Every reconciled shop's drift, by shop.
    pub fn drift(&self) -> Vec<DriftView> {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|r| DriftView { shop: r.shop.clone(), at_ms: r.at_ms, drifting: r.drifting + r.missing, persistent: r.persistent })
            .collect()
    }

    /// Compare `shop`'s platform with the ERP's quantities now; with `repair`, push the
    /// drifting SKUs again. The report is kept (and returned).
    pub async fn run(&self, shop: &str, target: Option<&WebhookShop>, repair: bool, by: &str) -> Result<Report, ReconcileError> {
        let started = std::time::Instant::now();
        let read = self.reads.read(shop, target, ReadBounds::default()).await?;
        self.compare(shop, &read, started, repair, by).await
    }

    /// Compare listings read already (the nightly snapshot's, read at `started`) with the
    /// ERP's quantities; with `repair`, push the drifting SKUs again. The report is kept.
    pub async fn compare(&self, shop: &str, read: &ShopListings, started: std::time::Instant, repair: bool, by: &str) -> Result<Report, ReconcileError> {
        let desired = self.ledger.all(shop)?;
        let listed: HashMap<&str, i64> = read.listings.iter().filter(|l| !l.sku.is_empty()).map(|l| (l.sku.as_str(), l.quantity)).collect();
        let before = self.last(shop);
        let seen_before: HashMap<&str, &Drift> = before.as_ref().map(|r| r.drifts.iter().map(|d| (d.sku.as_str(), d)).collect()).unwrap_or_default();
        let mut report = Report {
            shop: shop.to_string(),
            connector: read.connector.clone(),
            version: read.version.clone(),
            at_ms: read.read_at_ms,
            took_ms: 0,
            listed: read.listings.len(),
            compared: 0,
            in_flight: 0,
            drifting: 0,
            missing: 0,
            persistent: 0,
            drifts: Vec::new(),
            repair,
            repaired: 0,
            by: by.to_string(),
        };
        let mut to_repair = Vec::new();
        for rec in &desired {
            // On its way, or pushed while the listing was read: its push decides.
            let settled = rec.state == SkuState::Pushed && rec.pushed_at_ms.is_some_and(|t| t < read.read_at_ms);
            if !settled {
                if !matches!(rec.state, SkuState::Rejected | SkuState::Dead) {
                    report.in_flight += 1;
                }
                continue;
            }
            report.compared += 1;
            let on_platform = listed.get(rec.sku.as_str()).copied();
            if on_platform == Some(i64::from(rec.quantity)) {
                continue;
            }
            match on_platform {
                Some(_) => report.drifting += 1,
                None => report.missing += 1,
            }
            let earlier = seen_before.get(rec.sku.as_str());
            if earlier.is_some() {
                report.persistent += 1;
            }
            if on_platform.is_some() {
                to_repair.push(rec.sku.clone());
            }
            if report.drifts.len() < MAX_ROWS {
                report.drifts.push(Drift {
                    sku: rec.sku.clone(),
                    platform_quantity: on_platform,
                    desired_quantity: rec.quantity,
                    desired_seq: rec.seq,
                    pushed_at_ms: rec.pushed_at_ms,
                    since_ms: earlier.map_or(read.read_at_ms, |d| d.since_ms),
                    runs: earlier.map_or(1, |d| d.runs + 1),
                });
            }
        }
        if repair && !to_repair.is_empty() {
            report.repaired = self.ledger.repush(shop, &to_repair).await?;
        }
        report.took_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            shop,
            connector = %report.connector,
            version = %report.version,
            listed = report.listed,
            compared = report.compared,
            drifting = report.drifting,
            missing = report.missing,
            persistent = report.persistent,
            repaired = report.repaired,
            "reconciled the platform's quantities with the ERP's"
        );
        self.keep(&report);
        Ok(report)
    }

    fn keep(&self, report: &Report) {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).insert(report.shop.clone(), report.clone());
        let (tree, key, value) = (self.tree.clone(), report.shop.as_bytes().to_vec(), serde_json::to_vec(report).unwrap_or_default());
        self.store.write_detached("reconcile", move |ctx| {
            ctx.insert(&tree, &key, value);
            Ok(())
        });
    }
}

/// Reconcile the shops `cfg` names every night at its time, until shutdown; each shop's
/// failure is logged and the others go on. Repaired shops' pushers are woken.
pub async fn run_nightly(
    reconciler: Arc<Reconciler>,
    shops: Arc<crate::shops::ShopSet>,
    cfg: ReconcileConfig,
    schedule: crate::schedule::Daily,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let now = berth_types::clock::now_ms();
        let next = schedule.next_after(now);
        tracing::info!(in_secs = (next - now) / 1000, "next nightly reconciliation");
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis((next - now).max(0) as u64)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        for shop in shops.names() {
            let Some(target) = shops.webhook(&shop) else { continue };
            if !cfg.takes(&shop, target.config.tier) || !target.connector.current().has_listings() {
                continue;
            }
            match reconciler.run(&shop, Some(&target), cfg.repair, "nightly").await {
                Ok(r) if r.repaired > 0 => shops.wake_pusher(&shop),
                Ok(_) => {}
                Err(e) => tracing::error!(shop = %shop, error = %e, "the nightly reconciliation of the shop failed"),
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}
