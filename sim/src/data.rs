//! Seeded, deterministic order data. Times are whole seconds relative to the moment the
//! simulator starts, so a host with a few days of look-back always finds them.

use crate::inventory::{sku_code, PRODUCTS, SIZES};
use serde::{Deserialize, Serialize};

/// SplitMix64: tiny, deterministic, good enough to spread seed data.
#[derive(Clone)]
pub struct SeedRng(u64);

impl SeedRng {
    pub fn new(seed: u64) -> Self {
        SeedRng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SimLine {
    pub line_id: u64,
    pub sku: String,
    pub title: String,
    pub quantity: u32,
    pub unit_price_minor: i64,
}

/// An order as the simulator keeps it; each platform module renders it in its own format.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SimOrder {
    pub id: u64,
    pub shop: String,
    pub created_s: i64,
    pub updated_s: i64,
    /// Index into the platform's status list (see each platform's `STATUSES`).
    pub status: usize,
    pub currency: String,
    pub lines: Vec<SimLine>,
    pub buyer_name: String,
    pub buyer_phone: String,
}

impl SimOrder {
    pub fn total_minor(&self) -> i64 {
        self.lines.iter().map(|l| l.unit_price_minor * l.quantity as i64).sum()
    }
}

const FIRST: &[&str] = &["Li", "Wang", "Zhang", "Chen", "Maria", "John", "Aiko", "Priya", "Tom", "Nguyen"];
const LAST: &[&str] = &["Wei", "Fang", "Smith", "Garcia", "Tanaka", "Patel", "Brown", "Lin", "Kim", "Rossi"];

/// Generate `count` orders for one shop. `now_s` anchors the times; orders spread over
/// the last `history_s` seconds. `id_base` keeps ids distinct across shops.
pub fn seed_orders(
    rng: &mut SeedRng,
    shop: &str,
    count: usize,
    now_s: i64,
    history_s: i64,
    id_base: u64,
    currency: &str,
    status_count: usize,
) -> Vec<SimOrder> {
    (0..count)
        .map(|i| {
            let age = 60 + rng.below(history_s.max(61) as u64 - 60) as i64;
            let created_s = now_s - age;
            let updated_s = created_s + rng.below((age - 30).max(1) as u64) as i64;
            new_order(rng, shop, id_base + i as u64, created_s, updated_s, currency, status_count)
        })
        .collect()
}

pub fn new_order(
    rng: &mut SeedRng,
    shop: &str,
    id: u64,
    created_s: i64,
    updated_s: i64,
    currency: &str,
    status_count: usize,
) -> SimOrder {
    let line_count = 1 + rng.below(3) as usize;
    let lines = (0..line_count)
        .map(|j| {
            let p = rng.below(PRODUCTS.len() as u64) as usize;
            SimLine {
                line_id: id * 10 + j as u64,
                sku: sku_code(p, rng.below(SIZES.len() as u64) as usize),
                title: PRODUCTS[p].to_string(),
                quantity: 1 + rng.below(4) as u32,
                unit_price_minor: 100 + rng.below(20_000) as i64,
            }
        })
        .collect();
    SimOrder {
        id,
        shop: shop.to_string(),
        created_s,
        updated_s,
        status: rng.below(status_count as u64) as usize,
        currency: currency.to_string(),
        lines,
        buyer_name: format!(
            "{} {}",
            FIRST[rng.below(FIRST.len() as u64) as usize],
            LAST[rng.below(LAST.len() as u64) as usize]
        ),
        buyer_phone: format!("138{:08}", rng.below(100_000_000)),
    }
}

/// Minor units as a decimal string with two fraction digits ("12.30").
pub fn minor_to_decimal(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let m = minor.abs();
    format!("{sign}{}.{:02}", m / 100, m % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeding_is_deterministic() {
        let a = seed_orders(&mut SeedRng::new(7), "s", 20, 1_700_000_000, 86_400, 1000, "USD", 5);
        let b = seed_orders(&mut SeedRng::new(7), "s", 20, 1_700_000_000, 86_400, 1000, "USD", 5);
        assert_eq!(a, b);
        let c = seed_orders(&mut SeedRng::new(8), "s", 20, 1_700_000_000, 86_400, 1000, "USD", 5);
        assert_ne!(a, c);
        for o in &a {
            assert!(o.created_s <= o.updated_s && o.updated_s < 1_700_000_000);
            assert!(o.created_s >= 1_700_000_000 - 86_400);
        }
    }

    #[test]
    fn decimals() {
        assert_eq!(minor_to_decimal(1230), "12.30");
        assert_eq!(minor_to_decimal(5), "0.05");
        assert_eq!(minor_to_decimal(-150), "-1.50");
    }
}
