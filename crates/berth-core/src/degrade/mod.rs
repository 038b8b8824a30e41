//! Working by hand while a platform is down. A shop whose tier is in
//! `[health] degrade_tiers` (C by default) and whose probes have failed for
//! `degrade_after_secs` is degraded; then ops may
//! - export its pending stock updates as CSV to upload on the platform's back office:
//!   the exported SKUs are held in a batch the pusher leaves alone, until ops confirm
//!   the upload (the SKUs count as pushed) or cancel it (berth pushes them itself) —
//!   a newer quantity from the ERP meanwhile is pushed as usual, never overwritten by
//!   the batch;
//! - import orders from the platform's CSV export: they go the way webhook orders do,
//!   queued for the ERP and stored, once per order version, so importing the same file
//!   twice, or pulling the same orders when the platform is back, adds nothing twice.

pub mod orders_csv;

use crate::health::HealthBook;
use crate::inbox::OrderInbox;
use crate::stock::{SkuStock, StockError, StockLedger};
use crate::store::{OrderStore, PageSource};
use serde::Serialize;
use std::sync::Arc;

/// Marks orders that came from a CSV import (as the connector version would).
pub const IMPORT_SOURCE: &str = "csv-import";

#[derive(Debug, thiserror::Error)]
pub enum DegradeError {
    #[error("no shop `{0}` is configured")]
    UnknownShop(String),
    #[error("shop `{shop}` is not degraded: {why}. CSV export and import open when a {tiers} shop has been down for {after_secs} s ([health] degrade_tiers, degrade_after_secs)")]
    NotDegraded { shop: String, why: String, tiers: String, after_secs: u64 },
    #[error(transparent)]
    Stock(#[from] StockError),
    #[error(transparent)]
    Csv(#[from] orders_csv::CsvError),
    #[error("orders not imported, try again: {0}")]
    Storage(String),
}

/// Whether a shop may be worked by hand now, and why (not).
#[derive(Clone, Debug, Serialize)]
pub struct DegradeStatus {
    pub shop: String,
    pub tier: berth_types::shop::Tier,
    pub state: crate::health::ShopState,
    pub down_since_ms: Option<i64>,
    pub degraded: bool,
    pub degrade_after_secs: u64,
    /// Pending stock updates an export would take, and SKUs held in export batches.
    pub pending_stock: u64,
    pub exported_stock: u64,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Imported {
    pub orders: usize,
    pub lines: usize,
    /// Order versions new to berth: queued for the ERP and stored.
    pub new: usize,
    /// Order versions berth already had (an earlier import, a pull or a webhook).
    pub known: usize,
}

pub struct Degrade {
    pub health: Arc<HealthBook>,
    pub stock: Arc<StockLedger>,
    pub inbox: OrderInbox,
    pub store: Arc<OrderStore>,
}

/// The stock CSV ops upload: `sku,quantity` first, as back offices read them.
pub fn stock_csv(skus: &[SkuStock]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(["sku", "quantity", "erp_seq", "berth_version", "received_at"]);
    for r in skus {
        let at = chrono::DateTime::from_timestamp_millis(r.received_at_ms).map(|t| t.to_rfc3339()).unwrap_or_default();
        let _ = w.write_record([r.sku.clone(), r.quantity.to_string(), r.seq.map(|s| s.to_string()).unwrap_or_default(), r.version.to_string(), at]);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

impl Degrade {
    pub fn status(&self, shop: &str) -> Result<DegradeStatus, DegradeError> {
        let h = self.health.shop(shop).ok_or_else(|| DegradeError::UnknownShop(shop.to_string()))?;
        let stats = self.stock.stats(shop)?;
        Ok(DegradeStatus {
            shop: h.shop,
            tier: h.tier,
            state: h.state,
            down_since_ms: h.down_since_ms,
            degraded: h.degraded,
            degrade_after_secs: self.health.config().degrade_after_secs,
            pending_stock: stats.pending,
            exported_stock: stats.exported,
        })
    }

    /// The shop's platform, when the shop may be worked by hand now.
    fn open(&self, shop: &str) -> Result<String, DegradeError> {
        let h = self.health.shop(shop).ok_or_else(|| DegradeError::UnknownShop(shop.to_string()))?;
        if h.degraded {
            return Ok(h.platform);
        }
        let cfg = self.health.config();
        let why = if !cfg.degrade_tiers.contains(&h.tier) {
            format!("it is tier {:?}", h.tier)
        } else {
            match h.down_since_ms {
                None if h.state == crate::health::ShopState::Unknown => "it has not been probed yet".to_string(),
                None if h.state == crate::health::ShopState::Paused => "it is paused".to_string(),
                None => format!("its last probe found it {}", h.state),
                Some(since) => format!("it has been down for {} s", (berth_types::clock::now_ms() - since) / 1000),
            }
        };
        let tiers: Vec<String> = cfg.degrade_tiers.iter().map(|t| format!("{t:?}")).collect();
        Err(DegradeError::NotDegraded { shop: shop.to_string(), why, tiers: tiers.join("/"), after_secs: cfg.degrade_after_secs })
    }

    /// Hold the shop's pending stock in a new batch; its name and CSV.
    pub async fn export_stock(&self, shop: &str) -> Result<(String, Vec<SkuStock>), DegradeError> {
        self.open(shop)?;
        let (batch, held) = self.stock.export(shop).await?;
        tracing::warn!(shop, batch = %batch, skus = held.len(), "pending stock exported for a manual upload; the pusher holds these SKUs until the batch is confirmed or cancelled");
        Ok((batch, held))
    }

    /// Take orders from the platform's CSV export.
    pub async fn import_orders(&self, shop: &str, body: &[u8]) -> Result<Imported, DegradeError> {
        let platform = self.open(shop)?;
        let orders = orders_csv::parse(body)?;
        let src = PageSource { shop, platform: &platform, connector_version: IMPORT_SOURCE };
        let outcome = crate::ingest::accept_orders(&src, &orders, &self.inbox, &self.store, None).await.map_err(|e| DegradeError::Storage(e.to_string()))?;
        let imported = Imported { orders: orders.len(), lines: orders.iter().map(|o| o.lines.len()).sum(), new: outcome.added, known: outcome.duplicates };
        tracing::warn!(shop, orders = imported.orders, new = imported.new, known = imported.known, "orders imported from CSV");
        Ok(imported)
    }
}
