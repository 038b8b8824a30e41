//! The files of a snapshot, built from what berth holds:
//! - `listings.parquet`: the platform's listings as the connector read them;
//! - `orders.parquet` and `order_lines.parquet`: the newest version of each order updated
//!   in the last `orders_days` days, and its lines (joined on `order_id`);
//! - `stock.parquet`: the ERP's desired quantities with their push state.

use crate::table::Column;
use berth_core::listings::ShopListings;
use berth_core::stock::SkuStock;
use berth_core::store::OrderRecord;

pub const LISTINGS: &str = "listings.parquet";
pub const ORDERS: &str = "orders.parquet";
pub const ORDER_LINES: &str = "order_lines.parquet";
pub const STOCK: &str = "stock.parquet";

/// A file's name and columns.
pub struct Table {
    pub file: &'static str,
    pub columns: Vec<Column>,
}

fn col<T, U>(rows: &[T], f: impl Fn(&T) -> U) -> Vec<U> {
    rows.iter().map(f).collect()
}

pub fn listings(read: &ShopListings) -> Table {
    let l = &read.listings;
    Table {
        file: LISTINGS,
        columns: vec![
            Column::text("sku", col(l, |x| x.sku.clone())),
            Column::text("item_id", col(l, |x| x.item_id.clone())),
            Column::opt_text("variant_id", col(l, |x| x.variant_id.clone())),
            Column::text("title", col(l, |x| x.title.clone())),
            Column::int("quantity", col(l, |x| x.quantity)),
            Column::int("price_minor", col(l, |x| x.price_minor)),
            Column::text("currency", col(l, |x| x.currency.clone())),
        ],
    }
}

pub fn orders(orders: &[OrderRecord]) -> Table {
    let o = orders;
    Table {
        file: ORDERS,
        columns: vec![
            Column::text("order_id", col(o, |r| r.order.order_id.clone())),
            Column::text("status", col(o, |r| serde_json::to_value(r.order.status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default())),
            Column::text("platform_status", col(o, |r| r.order.platform_status.clone())),
            Column::time("created_at", col(o, |r| r.order.created_at_ms)),
            Column::time("updated_at", col(o, |r| r.order.updated_at_ms)),
            Column::text("currency", col(o, |r| r.order.currency.clone())),
            Column::int("total_minor", col(o, |r| r.order.total_minor)),
            Column::int("lines", col(o, |r| r.order.lines.len() as i64)),
            Column::text("buyer_name_masked", col(o, |r| r.order.buyer_name_masked.clone())),
            Column::int("feed_seq", col(o, |r| r.seq as i64)),
            Column::time("received_at", col(o, |r| r.received_at_ms)),
            Column::text("connector_version", col(o, |r| r.connector_version.clone())),
        ],
    }
}

pub fn order_lines(orders: &[OrderRecord]) -> Table {
    let lines: Vec<(&str, &berth_core::store::OrderLineRecord)> = orders.iter().flat_map(|r| r.order.lines.iter().map(|l| (r.order.order_id.as_str(), l))).collect();
    Table {
        file: ORDER_LINES,
        columns: vec![
            Column::text("order_id", col(&lines, |(id, _)| id.to_string())),
            Column::text("line_id", col(&lines, |(_, l)| l.line_id.clone())),
            Column::text("sku", col(&lines, |(_, l)| l.sku.clone())),
            Column::text("title", col(&lines, |(_, l)| l.title.clone())),
            Column::int("quantity", col(&lines, |(_, l)| i64::from(l.quantity))),
            Column::int("unit_price_minor", col(&lines, |(_, l)| l.unit_price_minor)),
        ],
    }
}

pub fn stock(stock: &[SkuStock]) -> Table {
    let s = stock;
    let seq = |v: Option<u64>| v.map(|x| x as i64);
    Table {
        file: STOCK,
        columns: vec![
            Column::text("sku", col(s, |r| r.sku.clone())),
            Column::int("desired_quantity", col(s, |r| i64::from(r.quantity))),
            Column::opt_int("desired_seq", col(s, |r| seq(r.seq))),
            Column::time("received_at", col(s, |r| r.received_at_ms)),
            Column::text("state", col(s, |r| serde_json::to_value(r.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default())),
            Column::int("attempts", col(s, |r| i64::from(r.attempts))),
            Column::opt_text("last_error", col(s, |r| r.last_error.clone())),
            Column::opt_int("pushed_quantity", col(s, |r| r.pushed_quantity.map(i64::from))),
            Column::opt_time("pushed_at", col(s, |r| r.pushed_at_ms)),
            Column::opt_text("hold", col(s, |r| r.hold.clone())),
        ],
    }
}
