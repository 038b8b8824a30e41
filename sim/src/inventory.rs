//! The simulated catalogue and its stock: every shop sells the same eight products in
//! three sizes (the SKUs seeded orders use), each with platform ids the connectors have
//! to look up. Every stock write is recorded in order, so a test can check that a newer
//! quantity was never followed by an older one.

use serde::{Deserialize, Serialize};

pub const PRODUCTS: &[&str] = &["Tea Cup", "Rice Cooker", "Phone Case", "Sneakers", "Desk Lamp", "Backpack", "Umbrella", "Notebook"];
pub const SIZES: &[&str] = &["S", "M", "L"];

/// One sellable SKU as a platform holds it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StockItem {
    /// The seller's SKU code (Shopify `sku`, TOP `outer_id`).
    pub sku: String,
    pub title: String,
    /// Shopify product id / TOP `num_iid`.
    pub product_id: u64,
    /// Shopify variant id / TOP `sku_id`.
    pub variant_id: u64,
    /// Shopify `inventory_item_id`.
    pub inventory_item_id: u64,
    pub quantity: u32,
    /// The price, in minor units of the platform's currency (`Platform::currency`).
    #[serde(default)]
    pub price_minor: i64,
    /// Every quantity written, oldest first.
    pub history: Vec<u32>,
}

pub fn sku_code(product: usize, size: usize) -> String {
    format!("SKU-{product:03}-{}", SIZES[size])
}

/// The catalogue of the shop with index `shop_index` (ids differ across shops).
pub fn catalogue(shop_index: u64) -> Vec<StockItem> {
    let mut items = Vec::new();
    for (p, title) in PRODUCTS.iter().enumerate() {
        let product_id = 7_000_000 + shop_index * 1_000 + p as u64;
        for (s, size) in SIZES.iter().enumerate() {
            let variant_id = product_id * 10 + s as u64;
            items.push(StockItem {
                sku: sku_code(p, s),
                title: format!("{title} ({size})"),
                product_id,
                variant_id,
                inventory_item_id: 40_000_000_000 + variant_id,
                quantity: 0,
                price_minor: price_minor(p, s),
                history: Vec::new(),
            });
        }
    }
    items
}

/// A product's price: 10.00 for the first, 2.50 more per product, 1.50 more per size.
pub fn price_minor(product: usize, size: usize) -> i64 {
    1_000 + 250 * product as i64 + 150 * size as i64
}

impl StockItem {
    pub fn set(&mut self, quantity: u32) {
        self.quantity = quantity;
        self.history.push(quantity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogues_have_distinct_ids_per_shop() {
        let a = catalogue(0);
        let b = catalogue(1);
        assert_eq!(a.len(), PRODUCTS.len() * SIZES.len());
        assert_eq!(a[0].sku, "SKU-000-S");
        assert_eq!(a[0].sku, b[0].sku);
        assert_ne!(a[0].inventory_item_id, b[0].inventory_item_id);
        let mut ids: Vec<u64> = a.iter().map(|i| i.variant_id).collect();
        ids.dedup();
        assert_eq!(ids.len(), a.len());
    }
}
