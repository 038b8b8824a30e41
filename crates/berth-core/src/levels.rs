//! Queue levels now: the order queue (to the ERP) and the stock backlog (to the
//! platforms), as `/metrics`, the alert rules and the dashboard read them.

use crate::inbox::OrderInbox;
use crate::shops::ShopSet;
use crate::stock::StockLedger;
use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct QueueLevel {
    /// `orders` or `stock`.
    pub queue: &'static str,
    pub ready: u64,
    pub in_flight: u64,
    pub dead: u64,
    pub oldest_age_ms: Option<i64>,
}

/// Both queues; a queue whose storage cannot be read is left out (and logged).
pub fn queue_levels(inbox: &OrderInbox, stock: &StockLedger, shops: &ShopSet) -> Vec<QueueLevel> {
    let mut out = Vec::with_capacity(2);
    match inbox.stats() {
        Ok(q) => out.push(QueueLevel { queue: "orders", ready: q.ready, in_flight: q.in_flight, dead: q.dead, oldest_age_ms: q.oldest_age_ms }),
        Err(e) => tracing::warn!(error = %e, "cannot read the order queue's levels"),
    }
    let mut level = QueueLevel { queue: "stock", ..QueueLevel::default() };
    for shop in shops.stock_shops().keys() {
        match stock.stats(shop) {
            Ok(s) => {
                level.ready += s.pending;
                level.dead += s.dead;
                level.oldest_age_ms = level.oldest_age_ms.max(s.oldest_pending_age_ms);
            }
            Err(e) => tracing::warn!(shop, error = %e, "cannot read a shop's stock levels"),
        }
    }
    out.push(level);
    out
}
