//! Fallback stock: once a shop's platform has been unreachable (its probes failing) for
//! `fallback_after_mins`, the quantities its last snapshot listed serve as its sellable
//! stock, marked stale with the snapshot's time, so an ERP keeps selling and shipping
//! from them. It ends as soon as a probe passes (the health book clears `down_since`);
//! the nightly reconciliation then finds what moved meanwhile.

use crate::files::Snapshot;
use crate::table::Value;
use crate::{tables, Snapshotter};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// One SKU's fallback quantity.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FallbackItem {
    pub sku: String,
    pub quantity: i64,
    pub item_id: String,
    pub variant_id: Option<String>,
}

/// The fallback stock of a shop.
#[derive(Clone, Debug, Serialize)]
pub struct Fallback {
    pub shop: String,
    /// Always true: these are the platform's quantities at `snapshot_at_ms`, not now.
    pub stale: bool,
    pub snapshot_at_ms: i64,
    pub snapshot_date: String,
    pub connector: String,
    pub version: String,
    /// When the platform's probes began failing.
    pub down_since_ms: i64,
    pub fallback_after_mins: u64,
    pub items: Arc<Vec<FallbackItem>>,
}

/// Whether a shop is in fallback, as the alerts see it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FallbackView {
    pub shop: String,
    pub down_since_ms: i64,
    /// The snapshot served; `None`: there is none to serve.
    pub snapshot_at_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    #[error("shop `{0}`'s platform is reachable (its probes pass): read its live stock; the fallback serves only while the platform is down")]
    Reachable(String),
    #[error("shop `{shop}`'s platform has been down for {down_secs} s; the fallback serves after {after_mins} min (fallback_after_mins)")]
    NotYet { shop: String, down_secs: i64, after_mins: u64 },
    #[error("shop `{0}` has no snapshot to fall back on; take one with `berth snapshot --shop {0}` once its platform answers")]
    NoSnapshot(String),
    #[error("the snapshot {path} cannot be read: {error}")]
    Unreadable { path: PathBuf, error: String },
}

/// The last snapshot read back (its directory and listings), kept until a newer one.
#[derive(Default)]
pub(crate) struct Cache(Mutex<Option<(PathBuf, i64, Arc<Vec<FallbackItem>>)>>);

/// Whether `down_since_ms` is long enough ago for the fallback.
fn due(s: &Snapshotter, down_since_ms: Option<i64>) -> Option<i64> {
    let since = down_since_ms?;
    ((s.clock)() - since >= s.cfg.fallback_after_mins as i64 * 60_000).then_some(since)
}

/// The shop's fallback state (for alerts): `None` unless its platform is down long enough.
pub fn view(s: &Snapshotter, shop: &str, down_since_ms: Option<i64>) -> Option<FallbackView> {
    let since = due(s, down_since_ms)?;
    Some(FallbackView { shop: shop.to_string(), down_since_ms: since, snapshot_at_ms: s.list(shop).first().map(|last| last.manifest.at_ms) })
}

pub(crate) fn serve(s: &Snapshotter, shop: &str, down_since_ms: Option<i64>) -> Result<Fallback, FallbackError> {
    let Some(since) = due(s, down_since_ms) else {
        return Err(match down_since_ms {
            None => FallbackError::Reachable(shop.to_string()),
            Some(t) => FallbackError::NotYet { shop: shop.to_string(), down_secs: ((s.clock)() - t) / 1000, after_mins: s.cfg.fallback_after_mins },
        });
    };
    let Snapshot { manifest, dir } = s.list(shop).into_iter().next().ok_or_else(|| FallbackError::NoSnapshot(shop.to_string()))?;
    let items = {
        let mut cache = s.fallback.0.lock().unwrap_or_else(|e| e.into_inner());
        match cache.as_ref() {
            Some((d, at, items)) if *d == dir && *at == manifest.at_ms => items.clone(),
            _ => {
                let items = Arc::new(read_items(&dir)?);
                *cache = Some((dir.clone(), manifest.at_ms, items.clone()));
                items
            }
        }
    };
    Ok(Fallback {
        shop: shop.to_string(),
        stale: true,
        snapshot_at_ms: manifest.at_ms,
        snapshot_date: manifest.date,
        connector: manifest.connector,
        version: manifest.version,
        down_since_ms: since,
        fallback_after_mins: s.cfg.fallback_after_mins,
        items,
    })
}

fn read_items(dir: &std::path::Path) -> Result<Vec<FallbackItem>, FallbackError> {
    let path = dir.join(tables::LISTINGS);
    let rows = crate::table::read(&path).map_err(|e| FallbackError::Unreadable { path: path.clone(), error: e.to_string() })?;
    let get = |row: &crate::table::Row, name: &str| row.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or(Value::Null);
    Ok(rows
        .iter()
        .filter_map(|row| {
            Some(FallbackItem {
                sku: get(row, "sku").text()?.to_string(),
                quantity: get(row, "quantity").int()?,
                item_id: get(row, "item_id").text().unwrap_or_default().to_string(),
                variant_id: get(row, "variant_id").text().map(str::to_string),
            })
        })
        .filter(|i| !i.sku.is_empty())
        .collect())
}
