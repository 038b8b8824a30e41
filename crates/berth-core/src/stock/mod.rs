//! Outbound stock: the ERP says what each SKU's quantity should be; berth makes the
//! platform say the same, never going backwards.
//!
//! The design keeps "newest wins, never stale" true by construction rather than by
//! ordering messages: the [`ledger`] holds one record per shop + SKU with the newest
//! desired quantity (and the ERP's sequence number, if it sends one) and a due index of
//! SKUs that still need a push. One [`pusher`] per shop reads the newest quantity at push
//! time, so updates that arrive while a SKU waits coalesce into one call, and a push
//! result only settles the record when it is for the version still desired. Nothing is
//! pushed before it is on disk, so a crash cannot make berth push a quantity it then
//! forgets and follow it with an older one.

pub mod cluster;
pub mod guard;
pub mod ledger;
pub mod pusher;

use serde::{Deserialize, Serialize};

pub use ledger::StockLedger;

#[derive(Debug, thiserror::Error)]
pub enum StockError {
    #[error(transparent)]
    Storage(#[from] berth_storage::StoreError),
    #[error("stored stock record for `{key}` is corrupt: {why}")]
    Corrupt { key: String, why: String },
    #[error("SKU `{0}` is not acceptable: use 1..=128 characters without control characters")]
    BadSku(String),
    #[error("no export batch `{batch}` holds SKUs of shop `{shop}` (confirmed or cancelled already, or never made)")]
    UnknownBatch { shop: String, batch: String },
    /// Cluster mode: the cluster refused or failed the change (`Fenced`: this node lost
    /// the shop; `Conflict`: other nodes kept changing the SKUs; `Nats`: try again).
    #[error(transparent)]
    Cluster(#[from] berth_cluster::ClusterError),
    /// Cluster mode: push results are written by the shop's owner, and this node does
    /// not hold the shop's lease.
    #[error("this node does not hold shop `{shop}`'s lease; its owner settles its pushes")]
    NotOwner { shop: String },
    #[error("no write-guard hold `{hold}` holds SKUs of shop `{shop}` (released or discarded already, or never made)")]
    UnknownHold { shop: String, hold: String },
    #[error("{count} SKUs in one change; the cluster takes at most {max} (send smaller batches)")]
    TooManySkus { count: usize, max: usize },
}

/// One requested change from the ERP.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StockRequest {
    pub sku: String,
    /// Absolute quantity the platform should show.
    pub quantity: u32,
    /// The ERP's own sequence number for this SKU; an update with a sequence not above
    /// the last one accepted is stale and ignored.
    #[serde(default)]
    pub seq: Option<u64>,
}

/// Where a SKU stands.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SkuState {
    /// Waiting to be pushed (or to be retried).
    Pending,
    /// The platform accepted the desired quantity.
    Pushed,
    /// The platform refused this SKU (e.g. it does not know it); needs a person.
    Rejected,
    /// Failed `max_attempts` times; needs a person (replay to try again).
    Dead,
    /// Handed to ops in a CSV export for a manual upload while the platform is down;
    /// the pusher leaves it alone until the batch is confirmed (pushed) or cancelled
    /// (pending again). A newer quantity from the ERP makes it pending again.
    Exported,
    /// Held by a write guard (see [`guard`]) until an operator releases the hold (the
    /// pusher takes it up) or discards it; a newer quantity stays in the hold.
    Held,
}

/// The record kept per shop + SKU, as `GET /v1/shops/{shop}/stock` shows it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct SkuStock {
    pub sku: String,
    /// The newest quantity the ERP asked for.
    pub quantity: u32,
    pub seq: Option<u64>,
    /// berth's version of the desired quantity; grows with every accepted change.
    pub version: u64,
    pub received_at_ms: i64,
    pub state: SkuState,
    /// Failed pushes of the current version.
    pub attempts: u32,
    /// When the pusher takes it up (pending only).
    pub due_at_ms: Option<i64>,
    pub last_error: Option<String>,
    /// The last quantity the platform accepted, and which version it was.
    pub pushed_quantity: Option<u32>,
    pub pushed_version: Option<u64>,
    pub pushed_at_ms: Option<i64>,
    /// The CSV export batch holding this SKU (state `exported`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_batch: Option<String>,
    /// The write guard's hold holding this SKU (state `held`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
}

/// What a submitted update did.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Submitted {
    /// A new desired quantity, queued for a push.
    Queued,
    /// Same quantity as already desired and not failed: nothing to do.
    Unchanged,
    /// Its `seq` is not newer than the one already accepted: ignored.
    Stale,
    /// Stored, and held by a write guard for a person to release or discard.
    Held,
}

#[derive(Clone, Debug, Serialize)]
pub struct SubmitResult {
    pub sku: String,
    pub outcome: Submitted,
    pub version: u64,
}

/// How one push of one SKU ended.
#[derive(Clone, Debug, PartialEq)]
pub enum PushOutcome {
    Accepted,
    Rejected(String),
    /// Worth retrying (counts an attempt).
    Failed(String),
    /// Not worth retrying (the retry policy does not retry this error): dead now.
    GaveUp(String),
}

/// Per-shop figures for the queue view.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct StockStats {
    pub pending: u64,
    pub pushed: u64,
    pub rejected: u64,
    pub dead: u64,
    /// Held in CSV export batches.
    #[serde(default)]
    pub exported: u64,
    /// Held by a write guard.
    #[serde(default)]
    pub held: u64,
    /// Age of the oldest desired quantity not yet on the platform.
    pub oldest_pending_age_ms: Option<i64>,
}

impl StockStats {
    /// Every SKU of the shop the ledger holds.
    pub fn skus(&self) -> u64 {
        self.pending + self.pushed + self.rejected + self.dead + self.exported + self.held
    }
}

pub fn check_sku(sku: &str) -> Result<(), StockError> {
    if sku.is_empty() || sku.len() > 128 || sku.chars().any(char::is_control) {
        return Err(StockError::BadSku(sku.chars().take(64).collect()));
    }
    Ok(())
}

/// Outbound stock pushes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StockConfig {
    /// Failed pushes of one quantity before the SKU moves to the dead letters.
    pub max_attempts: u32,
    /// SKUs handed to one `push-inventory` call.
    pub batch_size: usize,
    /// Backoff between failed pushes of a SKU: base doubling up to max, with jitter.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Write guards per platform (`"*"`: every platform without its own); none by default.
    pub write_guards: std::collections::BTreeMap<String, guard::GuardConfig>,
}

impl Default for StockConfig {
    fn default() -> Self {
        StockConfig { max_attempts: 10, batch_size: 50, retry_base_ms: 1_000, retry_max_ms: 300_000, write_guards: Default::default() }
    }
}

impl StockConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.max_attempts == 0 || !(1..=1000).contains(&self.batch_size) {
            return Err("stock.max_attempts must be at least 1 and stock.batch_size 1..=1000".into());
        }
        if self.retry_base_ms == 0 || self.retry_max_ms < self.retry_base_ms {
            return Err("stock.retry_base_ms must be positive and not above stock.retry_max_ms".into());
        }
        for (platform, g) in &self.write_guards {
            g.check().map_err(|e| format!("stock.write_guards.{platform}: {e}"))?;
        }
        Ok(())
    }
}

/// A running shop's stock side, as the API and the alerts read it.
#[derive(Clone)]
pub struct StockShop {
    pub connector: String,
    /// The platform its connector serves (whose write guard applies).
    pub platform: String,
    /// `None` when the shop's connector does not offer inventory.
    pub pusher: Option<(std::sync::Arc<tokio::sync::Notify>, pusher::SharedPushStatus)>,
}
