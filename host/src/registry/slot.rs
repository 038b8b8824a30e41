//! The live handle workers call a connector through. Activating a version swaps the
//! `Arc` under a lock, so the swap is atomic; a call holds the `Arc` it started with and
//! finishes on that version even when another becomes active meanwhile.

use crate::runtime::LoadedConnector;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::Notify;

pub struct ConnectorSlot {
    pub name: String,
    /// Fixed for the slot's life: shops' settings are written for this platform.
    pub platform: String,
    active: RwLock<Arc<LoadedConnector>>,
    paused: AtomicBool,
    paused_shops: RwLock<BTreeSet<String>>,
    resumed: Notify,
}

impl ConnectorSlot {
    pub fn new(active: Arc<LoadedConnector>, paused: bool, paused_shops: BTreeSet<String>) -> Self {
        ConnectorSlot {
            name: active.name.to_string(),
            platform: active.manifest.platform.clone(),
            active: RwLock::new(active),
            paused: AtomicBool::new(paused),
            paused_shops: RwLock::new(paused_shops),
            resumed: Notify::new(),
        }
    }

    /// The active version.
    pub fn current(&self) -> Arc<LoadedConnector> {
        self.active.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The version a call for `shop` uses.
    pub fn for_shop(&self, _shop: &str) -> Arc<LoadedConnector> {
        self.current()
    }

    /// Make `next` active; returns the version it replaced.
    pub(crate) fn swap(&self, next: Arc<LoadedConnector>) -> Arc<LoadedConnector> {
        std::mem::replace(&mut *self.active.write().unwrap_or_else(|e| e.into_inner()), next)
    }

    pub fn is_paused(&self, shop: &str) -> bool {
        self.paused.load(Ordering::Acquire) || self.paused_shops.read().unwrap_or_else(|e| e.into_inner()).contains(shop)
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    pub fn paused_shops(&self) -> BTreeSet<String> {
        self.paused_shops.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_paused(&self, shop: Option<&str>, paused: bool) {
        match shop {
            None => self.paused.store(paused, Ordering::Release),
            Some(s) => {
                let mut shops = self.paused_shops.write().unwrap_or_else(|e| e.into_inner());
                if paused {
                    shops.insert(s.to_string());
                } else {
                    shops.remove(s);
                }
            }
        }
        if !paused {
            self.resumed.notify_waiters();
        }
    }

    /// Resolves when the connector or a shop is resumed (callers re-check `is_paused`).
    pub async fn resumed(&self) {
        self.resumed.notified().await
    }
}
