//! The engine's instance slots (`runtime.max_instances`, the size of wasmtime's pool),
//! shared fairly between connectors: each has a reserved minimum no other connector can
//! take (`reserved_instances`; by default an even share of what ops did not reserve)
//! and never holds more than its `max_concurrent_calls`. The slots nobody reserved are
//! shared, first come first served. A connector whose calls hang — webhooks that sleep,
//! pulls that wait on a slow platform — fills its reserve and the shared slots, never
//! another connector's reserve, so the others keep calling.
//!
//! A call waits for a slot within its deadline; a webhook call does not wait at all (the
//! platform is answered 429 at once and sends it again), so a webhook flood never queues
//! ahead of the pulls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone, Copy, Debug, Default)]
struct Share {
    /// Slots kept for this connector; `None`: an even share of the unreserved slots.
    explicit: Option<usize>,
    /// What that comes to now.
    reserved: usize,
    max: usize,
    in_use: usize,
}

#[derive(Debug, Default)]
struct State {
    shares: HashMap<Arc<str>, Share>,
    /// Slots in use beyond their connector's reserve.
    over: usize,
    /// Slots nobody reserved.
    shared: usize,
}

/// The slots of one engine.
#[derive(Debug)]
pub struct InstancePool {
    total: usize,
    state: Mutex<State>,
    freed: tokio::sync::Notify,
}

/// How a connector stands in the pool (for `GET /v1/connectors`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PoolShare {
    pub reserved: usize,
    pub max: usize,
    pub in_use: usize,
}

/// Why a slot was not given.
#[derive(Debug, PartialEq, Eq)]
pub struct NoSlot {
    pub in_use: usize,
    pub reserved: usize,
    /// The connector is at its own `max_concurrent_calls` (else the pool is full).
    pub at_max: bool,
}

/// A slot in use; given back when dropped.
#[derive(Debug)]
pub struct PoolSlot {
    pool: Arc<InstancePool>,
    connector: Arc<str>,
}

impl Drop for PoolSlot {
    fn drop(&mut self) {
        {
            let mut guard = self.pool.state.lock().unwrap_or_else(|e| e.into_inner());
            let st = &mut *guard;
            if let Some(s) = st.shares.get_mut(&self.connector) {
                if s.in_use > s.reserved {
                    st.over = st.over.saturating_sub(1);
                }
                s.in_use = s.in_use.saturating_sub(1);
            }
        }
        self.pool.freed.notify_waiters();
    }
}

impl InstancePool {
    pub fn new(total: usize) -> Arc<InstancePool> {
        Arc::new(InstancePool { total, state: Mutex::new(State { shared: total, ..State::default() }), freed: tokio::sync::Notify::new() })
    }

    /// Add a connector (or change its share); the even shares of the others follow.
    pub fn register(&self, connector: &str, explicit: Option<usize>, max: usize) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let e = st.shares.entry(Arc::from(connector)).or_default();
        e.explicit = explicit;
        e.max = max.max(1);
        self.rebalance(&mut st);
    }

    /// Give every connector without an explicit reserve an even share of what the
    /// explicit ones left (at least one slot while any is left), capped at its max.
    fn rebalance(&self, st: &mut State) {
        let explicit: usize = st.shares.values().filter_map(|s| s.explicit).sum();
        let evens = st.shares.values().filter(|s| s.explicit.is_none()).count();
        let left = self.total.saturating_sub(explicit);
        let even = if evens == 0 { 0 } else { left / evens };
        let mut reserved_total = 0;
        for s in st.shares.values_mut() {
            s.reserved = s.explicit.unwrap_or(even).min(s.max);
            reserved_total += s.reserved;
        }
        st.shared = self.total.saturating_sub(reserved_total);
        st.over = st.shares.values().map(|s| s.in_use.saturating_sub(s.reserved)).sum();
    }

    /// A slot for `connector` now, if one is free to it.
    pub fn try_take(self: &Arc<Self>, connector: &Arc<str>) -> Result<PoolSlot, NoSlot> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *guard;
        let (over, shared) = (st.over, st.shared);
        let Some(s) = st.shares.get_mut(connector) else {
            return Err(NoSlot { in_use: 0, reserved: 0, at_max: false });
        };
        if s.in_use >= s.max {
            return Err(NoSlot { in_use: s.in_use, reserved: s.reserved, at_max: true });
        }
        let from_shared = s.in_use >= s.reserved;
        if from_shared && over >= shared {
            return Err(NoSlot { in_use: s.in_use, reserved: s.reserved, at_max: false });
        }
        s.in_use += 1;
        if from_shared {
            st.over += 1;
        }
        Ok(PoolSlot { pool: self.clone(), connector: connector.clone() })
    }

    /// A slot for `connector`, waiting for one until `deadline`.
    pub async fn take(self: &Arc<Self>, connector: &Arc<str>, deadline: Instant) -> Result<PoolSlot, NoSlot> {
        loop {
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            // Registered before looking, so a slot freed in between wakes this waiter.
            freed.as_mut().enable();
            let refused = match self.try_take(connector) {
                Ok(slot) => return Ok(slot),
                Err(no) => no,
            };
            if tokio::time::timeout_at(deadline.into(), freed).await.is_err() {
                return Err(refused);
            }
        }
    }

    pub fn share(&self, connector: &str) -> Option<PoolShare> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.shares.get(connector).map(|s| PoolShare { reserved: s.reserved, max: s.max, in_use: s.in_use })
    }

    pub fn total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connector_keeps_its_reserve_whatever_another_takes() {
        let pool = InstancePool::new(10);
        let (hostile, real): (Arc<str>, Arc<str>) = ("hostile".into(), "taobao".into());
        pool.register(&hostile, None, 32);
        pool.register(&real, Some(3), 32);
        assert_eq!(pool.share("hostile").unwrap().reserved, 7, "an even share of what taobao left");
        let held: Vec<PoolSlot> = std::iter::from_fn(|| pool.try_take(&hostile).ok()).collect();
        assert_eq!(held.len(), 7, "its reserve; nothing is left over to share");
        let real_slots: Vec<PoolSlot> = (0..3).map(|_| pool.try_take(&real).expect("taobao's reserve")).collect();
        assert_eq!(pool.try_take(&real).unwrap_err(), NoSlot { in_use: 3, reserved: 3, at_max: false });
        drop(real_slots);
        drop(held);
        assert_eq!(pool.share("hostile").unwrap().in_use, 0);
    }

    #[test]
    fn shared_slots_go_to_whoever_asks_and_max_caps_each() {
        let pool = InstancePool::new(10);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        pool.register(&a, Some(2), 6);
        pool.register(&b, Some(2), 32);
        let a_slots: Vec<PoolSlot> = std::iter::from_fn(|| pool.try_take(&a).ok()).collect();
        assert_eq!(a_slots.len(), 6, "2 reserved + 4 of the 6 shared, then its max");
        assert!(pool.try_take(&a).unwrap_err().at_max);
        let b_slots: Vec<PoolSlot> = std::iter::from_fn(|| pool.try_take(&b).ok()).collect();
        assert_eq!(b_slots.len(), 4, "its 2 + the 2 shared a left");
        drop(a_slots);
        assert!(pool.try_take(&b).is_ok(), "shared slots come back");
    }

    #[tokio::test]
    async fn a_waiter_gets_the_next_free_slot_within_its_deadline() {
        let pool = InstancePool::new(1);
        let a: Arc<str> = "a".into();
        pool.register(&a, None, 4);
        let first = pool.try_take(&a).unwrap();
        let soon = Instant::now() + std::time::Duration::from_millis(50);
        assert!(pool.take(&a, soon).await.is_err(), "none freed in time");
        let (p, a2) = (pool.clone(), a.clone());
        let waiter = tokio::spawn(async move { p.take(&a2, Instant::now() + std::time::Duration::from_secs(10)).await.is_ok() });
        tokio::task::yield_now().await;
        drop(first);
        assert!(waiter.await.unwrap());
    }

    #[test]
    fn shares_follow_new_connectors() {
        let pool = InstancePool::new(64);
        pool.register("a", None, 32);
        assert_eq!(pool.share("a").unwrap().reserved, 32, "capped at its max");
        pool.register("b", None, 32);
        pool.register("c", None, 32);
        assert_eq!(pool.share("a").unwrap().reserved, 21);
        pool.register("d", Some(40), 64);
        assert_eq!(pool.share("a").unwrap().reserved, 8, "(64 - 40) / 3");
    }
}
