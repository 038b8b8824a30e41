//! The export new in berth:connector 0.4.0: one page of a shop's current listings (SKU,
//! the platform's item and variant ids, title, quantity, price). A component built for an
//! older world has none: [`LoadedConnector::has_listings`] says so and the call fails
//! with [`CallError::NotExported`].
//!
//! A page is checked here, the only place it crosses the sandbox: at most
//! [`MAX_LISTINGS_PER_PAGE`] listings, ids and currencies within [`MAX_ID_BYTES`], titles
//! cut to [`MAX_TEXT_BYTES`], a cursor within [`MAX_CURSOR_BYTES`] and the whole page
//! within the version's `max_output_bytes`.

use super::bindings::v0_4::berth::connector::types as wit;
use super::limits::{CUT_MARK, MAX_CURSOR_BYTES, MAX_ID_BYTES, MAX_TEXT_BYTES};
use super::{call_error_outcome, CallError, LoadedConnector};
use berth_types::connector::{ConnectorError, Listing, ListingPage};
use berth_types::shop::ShopConfig;
use std::sync::Arc;

/// The call's name in metrics, errors and the breaker.
pub const CALL: &str = "listings";
/// The most items the host asks for in one page.
pub const MAX_PAGE_LIMIT: u32 = 250;
/// The most listings one page may hold (a page of 250 items may carry their variants).
pub const MAX_LISTINGS_PER_PAGE: u32 = 10_000;

impl LoadedConnector {
    /// Whether this version exports `listings` (built for berth:connector 0.4.0 or later).
    pub fn has_listings(&self) -> bool {
        self.pre_v0_4.is_some()
    }

    /// One page of `shop`'s listings after `cursor` (`None`: the first), at most `limit`
    /// (1..=250) items. The connector's own error is the inner `Err`; a call that did
    /// not return (trap, timeout, refused answer, no export) the outer one.
    pub async fn listings(&self, shop: &str, cfg: Arc<ShopConfig>, cursor: Option<&str>, limit: u32) -> Result<Result<ListingPage, ConnectorError>, CallError> {
        let started = std::time::Instant::now();
        let limit = limit.clamp(1, MAX_PAGE_LIMIT);
        let wit_version = || self.wit_version.clone().unwrap_or_else(|| "none".into());
        let Some(pre) = self.pre_v0_4.as_ref() else {
            let e = CallError::NotExported { call: CALL, wit_version: wit_version(), since: "0.4.0" };
            self.observe(CALL, call_error_outcome(&e), started, None);
            return Err(e);
        };
        let (mut running, ticket) = self.admitted(CALL, shop, cfg, started).await?;
        let r = match pre.instantiate_async(&mut running).await {
            Err(e) => Err(CallError::Instantiate(format!("{e}"))),
            Ok(inst) => {
                let req = wit::ListingRequest { cursor: cursor.map(str::to_string), limit };
                let out = self.finish(CALL, inst.call_listings(&mut running, shop, &req)).await;
                out.and_then(|r| match r {
                    Ok(page) => checked(page, self.limits.max_output_bytes).map(Ok),
                    Err(e) => Ok(Err(connector_error(e))),
                })
            }
        };
        let outcome = match &r {
            Ok(Ok(_)) => "ok",
            Ok(Err(e)) => super::error_outcome(e),
            Err(e) => call_error_outcome(e),
        };
        self.observe(CALL, outcome, started, Some(self.usage(&running)));
        self.judge(ticket, r.as_ref().err());
        r
    }
}

super::compat::connector_error_fn!(wit::ConnectorError);

/// The page as berth takes it, or why it is refused.
fn checked(page: wit::ListingPage, max_output_bytes: usize) -> Result<ListingPage, CallError> {
    let bad = |why: String| CallError::BadOutput { call: CALL, why };
    if page.listings.len() > MAX_LISTINGS_PER_PAGE as usize {
        return Err(CallError::OutputTooLarge {
            call: CALL,
            why: format!("returned {} listings in one page, more than {MAX_LISTINGS_PER_PAGE}", page.listings.len()),
        });
    }
    if page.next_cursor.as_ref().is_some_and(|c| c.len() > MAX_CURSOR_BYTES || c.is_empty()) {
        return Err(bad(format!("next-cursor is empty or longer than {MAX_CURSOR_BYTES} bytes; give `none` on the last page")));
    }
    let mut bytes = 0usize;
    let mut listings = Vec::with_capacity(page.listings.len());
    for l in page.listings {
        let head = super::state::bounded(&l.sku, 64).to_string();
        for (field, value) in [("sku", &l.sku), ("item-id", &l.item_id), ("currency", &l.currency)] {
            if value.len() > MAX_ID_BYTES {
                return Err(bad(format!("listing `{head}`: {field} is {} bytes, more than {MAX_ID_BYTES}", value.len())));
            }
        }
        if l.variant_id.as_ref().is_some_and(|v| v.len() > MAX_ID_BYTES) {
            return Err(bad(format!("listing `{head}`: variant-id is longer than {MAX_ID_BYTES} bytes")));
        }
        if l.item_id.is_empty() {
            return Err(bad(format!("listing `{head}` has an empty item-id")));
        }
        let title = if l.title.len() > MAX_TEXT_BYTES {
            let keep = super::state::bounded(&l.title, MAX_TEXT_BYTES - CUT_MARK.len());
            format!("{keep}{CUT_MARK}")
        } else {
            l.title
        };
        bytes += 64 + l.sku.len() + l.item_id.len() + l.variant_id.as_ref().map_or(0, String::len) + title.len() + l.currency.len();
        listings.push(Listing { sku: l.sku, item_id: l.item_id, variant_id: l.variant_id, title, quantity: l.quantity, price_minor: l.price_minor, currency: l.currency });
    }
    if bytes > max_output_bytes {
        return Err(CallError::OutputTooLarge { call: CALL, why: format!("returned about {bytes} bytes, more than max_output_bytes ({max_output_bytes})") });
    }
    Ok(ListingPage { listings, next_cursor: page.next_cursor })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(sku: &str, title: &str) -> wit::Listing {
        wit::Listing { sku: sku.into(), item_id: "1".into(), variant_id: Some("11".into()), title: title.into(), quantity: 3, price_minor: 1250, currency: "USD".into() }
    }

    #[test]
    fn pages_keep_to_their_bounds() {
        let page = |listings, next_cursor| wit::ListingPage { listings, next_cursor };
        let ok = checked(page(vec![listing("A", "Tea Cup")], Some("2".into())), 1 << 20).unwrap();
        assert_eq!(ok.listings[0].price_minor, 1250);
        assert_eq!(ok.next_cursor.as_deref(), Some("2"));
        // A long title is cut, not refused; a long SKU, an empty cursor, too many are.
        let long = checked(page(vec![listing("A", &"t".repeat(5000))], None), 1 << 20).unwrap();
        assert!(long.listings[0].title.ends_with(CUT_MARK) && long.listings[0].title.len() <= MAX_TEXT_BYTES);
        assert!(matches!(checked(page(vec![listing(&"s".repeat(300), "x")], None), 1 << 20), Err(CallError::BadOutput { .. })));
        assert!(matches!(checked(page(vec![], Some(String::new())), 1 << 20), Err(CallError::BadOutput { .. })));
        let many = (0..10_001).map(|i| listing(&format!("S{i}"), "x")).collect();
        assert!(matches!(checked(page(many, None), 1 << 30), Err(CallError::OutputTooLarge { .. })));
        assert!(matches!(checked(page(vec![listing("A", "x")], None), 10), Err(CallError::OutputTooLarge { .. })));
    }
}
