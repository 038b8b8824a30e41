//! A shop's listings as its platform holds them now, read page by page through the
//! connector's `listings` export (berth:connector 0.4.0): what snapshots keep and
//! reconciliation compares with the ERP's quantities.
//!
//! A read keeps to bounds ops can see: one read per shop at a time, at most
//! `max_listings`, within `deadline`. A throttled page (`rate-limited(ms)`) is asked again
//! after the wait; a transient failure up to [`TRANSIENT_TRIES`] times with backoff; any
//! other error ends the read and says why. A cursor that does not move ends it too (a
//! connector looping on one page would otherwise read forever).

use crate::ingest::WebhookShop;
use berth_runtime::CallError;
use berth_types::connector::{ConnectorError, Listing};
use serde::Serialize;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How often a page failing as `transient` (or a call timing out) is tried.
pub const TRANSIENT_TRIES: u32 = 3;
/// Items asked for per page.
pub const PAGE_LIMIT: u32 = 250;

/// Bounds of one read.
#[derive(Clone, Copy, Debug)]
pub struct ReadBounds {
    /// The most listings a read takes; past it, it fails.
    pub max_listings: usize,
    /// The longest a read may take, throttled waits included.
    pub deadline: Duration,
}

impl Default for ReadBounds {
    fn default() -> Self {
        ReadBounds { max_listings: 100_000, deadline: Duration::from_secs(600) }
    }
}

/// Every listing of a shop, read now.
#[derive(Clone, Debug, Serialize)]
pub struct ShopListings {
    pub shop: String,
    pub connector: String,
    pub version: String,
    /// When the read began (Unix ms).
    pub read_at_ms: i64,
    pub pages: u32,
    /// Pages asked again after a throttle or a transient failure.
    pub retries: u32,
    pub listings: Vec<Listing>,
}

impl ShopListings {
    /// The listings as CSV: a header row, then one row per listing.
    pub fn csv_text(&self) -> Result<String, csv::Error> {
        let rows = self.listings.iter().map(|l| {
            [&l.sku, &l.item_id, l.variant_id.as_deref().unwrap_or(""), &l.title, &l.quantity.to_string(), &l.price_minor.to_string(), &l.currency].map(str::to_string)
        });
        csv_of(&["sku", "item_id", "variant_id", "title", "quantity", "price_minor", "currency"], rows)
    }
}

/// A header row and the rows, as CSV text.
pub(crate) fn csv_of<R: AsRef<[String]>>(header: &[&str], rows: impl IntoIterator<Item = R>) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header)?;
    for row in rows {
        w.write_record(row.as_ref())?;
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8(bytes).unwrap_or_default())
}

#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    #[error("no shop `{0}` runs here")]
    UnknownShop(String),
    #[error("a listing read of shop `{0}` runs already; wait for it")]
    Running(String),
    #[error("connector `{connector}` {version} was built for berth:connector {wit_version}, which cannot list listings (new in 0.4.0); deploy a version built with a newer SDK")]
    NotSupported { connector: String, version: String, wit_version: String },
    #[error("connector `{connector}` {version} does not declare the `products` capability: it does not list the shop's listings")]
    NoProducts { connector: String, version: String },
    #[error("the platform refused page {page} of the listings: {error}")]
    Connector { page: u32, error: ConnectorError },
    #[error("page {page} of the listings: {error}")]
    Call { page: u32, error: CallError },
    #[error("the shop lists more than {max} listings (max_listings); raise the bound to read it")]
    TooMany { max: usize },
    #[error("the listings were not read within {secs} s ({pages} pages read)")]
    Deadline { secs: u64, pages: u32 },
    #[error("the connector answered page {page} with the cursor it was given; the read stopped")]
    Stuck { page: u32 },
}

impl ListingError {
    /// Whether asking again later may work (the platform or the connector's call failed
    /// for now, or another read was running).
    pub fn is_transient(&self) -> bool {
        match self {
            ListingError::Running(_) | ListingError::Deadline { .. } => true,
            ListingError::Connector { error, .. } => matches!(error, ConnectorError::RateLimited(_) | ConnectorError::Transient(_)),
            ListingError::Call { error, .. } => matches!(error.kind(), berth_types::retry::ErrorKind::Timeout),
            _ => false,
        }
    }
}

/// The reads running now, one per shop.
#[derive(Default)]
pub struct ListingReads {
    running: OnePerShop,
}

/// Work of which one runs per shop at a time (a listing read, a snapshot): `enter` marks
/// the shop busy until the guard it returns drops — a call cancelled midway frees it too.
#[derive(Default)]
pub struct OnePerShop(Mutex<HashSet<String>>);

/// A shop marked busy by [`OnePerShop::enter`].
pub struct Busy<'a> {
    set: &'a OnePerShop,
    shop: String,
}

impl OnePerShop {
    /// The shop marked busy, or `None` when it is already.
    pub fn enter(&self, shop: &str) -> Option<Busy<'_>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(shop.to_string()).then(|| Busy { set: self, shop: shop.to_string() })
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.set.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.shop);
    }
}

impl ListingReads {
    /// Read every listing of `shop` (`target`: its connector and config).
    pub async fn read(&self, shop: &str, target: Option<&WebhookShop>, bounds: ReadBounds) -> Result<ShopListings, ListingError> {
        let target = target.ok_or_else(|| ListingError::UnknownShop(shop.to_string()))?;
        let Some(_busy) = self.running.enter(shop) else {
            return Err(ListingError::Running(shop.to_string()));
        };
        read_all(shop, target, bounds).await
    }
}

async fn read_all(shop: &str, target: &WebhookShop, bounds: ReadBounds) -> Result<ShopListings, ListingError> {
    let conn = target.connector.for_shop(shop);
    if !conn.has_listings() {
        return Err(ListingError::NotSupported {
            connector: conn.name.to_string(),
            version: conn.manifest.connector_version.clone(),
            wit_version: conn.manifest.wit_version.clone(),
        });
    }
    if !conn.manifest.capabilities.contains(&berth_types::connector::Capability::Products) {
        return Err(ListingError::NoProducts { connector: conn.name.to_string(), version: conn.manifest.connector_version.clone() });
    }
    let started = Instant::now();
    let out = ShopListings {
        shop: shop.to_string(),
        connector: conn.name.to_string(),
        version: conn.manifest.connector_version.clone(),
        read_at_ms: berth_types::clock::now_ms(),
        pages: 0,
        retries: 0,
        listings: Vec::new(),
    };
    let span = tracing::info_span!("listings", connector = %conn.name, version = %out.version, shop);
    pages(shop, target, &conn, bounds, started, out).instrument(span).await
}

/// Page after page until the last, a bound, or an error that ends the read.
async fn pages(
    shop: &str,
    target: &WebhookShop,
    conn: &std::sync::Arc<berth_runtime::LoadedConnector>,
    bounds: ReadBounds,
    started: Instant,
    mut out: ShopListings,
) -> Result<ShopListings, ListingError> {
    let end = started + bounds.deadline;
    let mut cursor: Option<String> = None;
    let mut transient = 0u32;
    loop {
        let page_no = out.pages + 1;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ListingError::Deadline { secs: bounds.deadline.as_secs(), pages: out.pages });
        }
        let answer = target.connector.listings(conn, shop, target.config.clone(), cursor.as_deref(), PAGE_LIMIT).await;
        let wait = match answer {
            Ok(Ok(page)) => {
                transient = 0;
                out.pages = page_no;
                out.listings.extend(page.listings);
                if out.listings.len() > bounds.max_listings {
                    return Err(ListingError::TooMany { max: bounds.max_listings });
                }
                match page.next_cursor {
                    None => break,
                    Some(next) if cursor.as_deref() == Some(next.as_str()) => return Err(ListingError::Stuck { page: page_no }),
                    Some(next) => cursor = Some(next),
                }
                continue;
            }
            Ok(Err(ConnectorError::RateLimited(ms))) => Duration::from_millis(ms.max(100)),
            Ok(Err(error @ ConnectorError::Transient(_))) => {
                transient += 1;
                if transient >= TRANSIENT_TRIES {
                    return Err(ListingError::Connector { page: page_no, error });
                }
                Duration::from_millis(500 << (transient - 1))
            }
            Ok(Err(error)) => return Err(ListingError::Connector { page: page_no, error }),
            Err(CallError::Isolated { retry_in, .. }) if retry_in < left => retry_in,
            Err(error) if matches!(error.kind(), berth_types::retry::ErrorKind::Timeout) => {
                transient += 1;
                if transient >= TRANSIENT_TRIES {
                    return Err(ListingError::Call { page: page_no, error });
                }
                Duration::from_millis(500 << (transient - 1))
            }
            Err(error) => return Err(ListingError::Call { page: page_no, error }),
        };
        out.retries += 1;
        if wait >= end.saturating_duration_since(Instant::now()) {
            return Err(ListingError::Deadline { secs: bounds.deadline.as_secs(), pages: out.pages });
        }
        tracing::debug!(page = page_no, wait_ms = wait.as_millis() as u64, "listing page asked again after a wait");
        tokio::time::sleep(wait).await;
    }
    tracing::info!(pages = out.pages, listings = out.listings.len(), retries = out.retries, took_ms = started.elapsed().as_millis() as u64, "listings read");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_per_shop_frees_the_shop_when_the_work_ends_or_is_cancelled() {
        let set = OnePerShop::default();
        let a = set.enter("a").expect("a is free");
        assert!(set.enter("a").is_none(), "a is busy");
        assert!(set.enter("b").is_some(), "another shop is not");
        drop(a);
        assert!(set.enter("a").is_some(), "a is free again");
        // Work dropped before it finished (a client gone mid-call) frees the shop too.
        let work = async {
            let _busy = set.enter("c");
            std::future::pending::<()>().await;
        };
        assert!(tokio::time::timeout(Duration::from_millis(10), work).await.is_err());
        assert!(set.enter("c").is_some(), "a cancelled call left the shop busy");
    }
}
