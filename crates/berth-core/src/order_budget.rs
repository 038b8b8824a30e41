//! How many new order versions one shop may bring in per hour (`max_orders_per_shop_per_hour`),
//! pulls and webhooks together. A connector that invents orders — an endless cursor of
//! fresh ids, webhooks answering a thousand orders each — fills the order store and the
//! ERP's queue at the speed of its loop; this bound stops the shop's intake instead:
//! the page or webhook that would pass it is not taken (the platform keeps the orders:
//! the pull resumes from the same position, the webhook gets 429 and is sent again), the
//! shop shows `held` with the reason and the `order-flood` alert names it, until the
//! trailing hour has room again or an operator resumes the shop.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// A shop whose intake is held.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct HeldIntake {
    pub shop: String,
    pub connector: String,
    /// New order versions taken in the trailing hour.
    pub taken: u64,
    /// What the page or webhook that was refused would have added.
    pub refused: u64,
    pub limit: u32,
    pub since_ms: i64,
    /// When the trailing hour will have room for that again, at the earliest.
    pub until_ms: i64,
}

impl HeldIntake {
    pub fn reason(&self) -> String {
        format!(
            "order intake held: {} new orders in the last hour and {} more offered, over max_orders_per_shop_per_hour ({}); resumes by itself when the hour has room or when an operator resumes the shop",
            self.taken, self.refused, self.limit
        )
    }
}

#[derive(Default)]
struct ShopCount {
    /// (minute since the epoch, orders taken in it), oldest first, within the last hour.
    minutes: VecDeque<(i64, u64)>,
    held: Option<HeldIntake>,
}

impl ShopCount {
    fn expire(&mut self, now_ms: i64) {
        let oldest = now_ms.div_euclid(60_000) - 59;
        while self.minutes.front().is_some_and(|(m, _)| *m < oldest) {
            self.minutes.pop_front();
        }
    }

    fn taken(&self) -> u64 {
        self.minutes.iter().map(|(_, n)| n).sum()
    }
}

#[derive(Default)]
pub struct OrderBudgets {
    shops: Mutex<BTreeMap<String, ShopCount>>,
}

impl OrderBudgets {
    /// Take `n` new orders for `shop` at `now_ms`, or refuse them when the trailing hour
    /// would pass `limit` (an hour with nothing taken always takes one page, however large).
    pub fn take(&self, shop: &str, connector: &str, n: usize, limit: u32, now_ms: i64) -> Result<(), HeldIntake> {
        if n == 0 {
            return Ok(());
        }
        let n = n as u64;
        let mut shops = self.shops.lock().unwrap_or_else(|e| e.into_inner());
        let c = shops.entry(shop.to_string()).or_default();
        c.expire(now_ms);
        let taken = c.taken();
        if taken > 0 && taken + n > u64::from(limit) {
            // Room comes back as minutes leave the hour: when enough of them have.
            let mut freed = 0;
            let mut until_ms = now_ms + 60_000;
            for (m, k) in &c.minutes {
                freed += k;
                until_ms = (m + 60) * 60_000;
                if taken - freed + n <= u64::from(limit) {
                    break;
                }
            }
            let since_ms = c.held.as_ref().map_or(now_ms, |h| h.since_ms);
            let held = HeldIntake { shop: shop.to_string(), connector: connector.to_string(), taken, refused: n, limit, since_ms, until_ms };
            c.held = Some(held.clone());
            return Err(held);
        }
        c.held = None;
        let minute = now_ms.div_euclid(60_000);
        match c.minutes.back_mut() {
            Some((m, k)) if *m == minute => *k += n,
            _ => c.minutes.push_back((minute, n)),
        }
        Ok(())
    }

    /// An operator resumed the shop: forget its hour, so its intake starts afresh.
    pub fn release(&self, shop: &str) -> bool {
        let mut shops = self.shops.lock().unwrap_or_else(|e| e.into_inner());
        shops.remove(shop).is_some_and(|c| c.held.is_some())
    }

    /// Shops held now (a hold whose hour has room again is over).
    pub fn held(&self, now_ms: i64) -> Vec<HeldIntake> {
        let shops = self.shops.lock().unwrap_or_else(|e| e.into_inner());
        shops.values().filter_map(|c| c.held.clone()).filter(|h| h.until_ms > now_ms).collect()
    }

    /// Whether `shop`'s intake is held now, and why.
    pub fn held_shop(&self, shop: &str, now_ms: i64) -> Option<HeldIntake> {
        let shops = self.shops.lock().unwrap_or_else(|e| e.into_inner());
        shops.get(shop).and_then(|c| c.held.clone()).filter(|h| h.until_ms > now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_800_000_000_000 - 1_800_000_000_000 % 60_000;

    #[test]
    fn an_hour_takes_its_limit_then_holds_until_minutes_leave_it() {
        let b = OrderBudgets::default();
        b.take("a", "c", 600, 1000, T).unwrap();
        b.take("a", "c", 400, 1000, T + 30 * 60_000).unwrap();
        let held = b.take("a", "c", 1, 1000, T + 40 * 60_000).unwrap_err();
        assert_eq!((held.taken, held.refused, held.limit), (1000, 1, 1000));
        assert_eq!(held.until_ms, T + 60 * 60_000, "the first minute's 600 leave the hour then");
        assert!(held.reason().contains("max_orders_per_shop_per_hour (1000)"), "{}", held.reason());
        assert_eq!(b.held(T + 40 * 60_000).len(), 1);
        b.take("b", "c", 1000, 1000, T + 40 * 60_000).expect("another shop has its own hour");
        b.take("a", "c", 600, 1000, T + 60 * 60_000).expect("the first minute has left the hour");
        assert!(b.held(T + 60 * 60_000).is_empty());
    }

    #[test]
    fn one_page_always_fits_an_empty_hour_and_an_operator_can_release() {
        let b = OrderBudgets::default();
        b.take("a", "c", 5000, 1000, T).expect("a page bigger than the limit still moves the shop on");
        assert!(b.take("a", "c", 1, 1000, T + 1).is_err());
        assert!(b.held_shop("a", T + 1).is_some());
        assert!(b.release("a"));
        b.take("a", "c", 1, 1000, T + 2).expect("released");
        assert!(b.held_shop("a", T + 2).is_none());
    }
}
