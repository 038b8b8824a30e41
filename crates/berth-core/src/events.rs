//! What core tells the rest of berth as it happens: a probe ended, a canary was rolled
//! back. Ops (metrics, alerts) subscribe a [`Listener`]; core never names them. Events
//! are delivered synchronously on the thread that emits them, so a listener must only
//! count or note (never block, never call back into core).

use berth_types::shop::Tier;
use std::sync::{Arc, RwLock};

/// One thing that happened in core.
#[derive(Debug)]
pub enum Event<'a> {
    /// A health probe of `shop` ended; `outcome` is `ok`, `unhealthy`, a connector-error
    /// case, `trap`, `timeout` or `instantiate`.
    Probed { shop: &'a str, connector: &'a str, tier: Tier, outcome: &'a str },
    /// A canary failed too often and was rolled back automatically.
    CanaryRolledBack { connector: &'a str, digest: &'a str, reason: &'a str },
    /// A refresh of `shop`'s credentials ended: `outcome` is `ok`, `transient` (the
    /// current ones stay, tried again after a backoff) or `revoked` (the merchant must
    /// authorize the app again).
    CredentialsRefreshed { shop: &'a str, outcome: &'a str },
}

/// Something that wants to hear of core's events.
pub trait Listener: Send + Sync {
    fn on(&self, event: &Event<'_>);
}

/// Where core emits its events: every subscribed listener hears each one, in order.
#[derive(Default)]
pub struct Events {
    listeners: RwLock<Vec<Arc<dyn Listener>>>,
}

impl Events {
    pub fn new() -> Arc<Events> {
        Arc::new(Events::default())
    }

    pub fn subscribe(&self, listener: Arc<dyn Listener>) {
        self.listeners.write().unwrap_or_else(|e| e.into_inner()).push(listener);
    }

    pub fn emit(&self, event: &Event<'_>) {
        for l in self.listeners.read().unwrap_or_else(|e| e.into_inner()).iter() {
            l.on(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Note(Mutex<Vec<String>>);
    impl Listener for Note {
        fn on(&self, event: &Event<'_>) {
            self.0.lock().unwrap().push(format!("{event:?}"));
        }
    }

    #[test]
    fn every_listener_hears_every_event_in_order() {
        let events = Events::new();
        let (a, b) = (Arc::new(Note(Mutex::default())), Arc::new(Note(Mutex::default())));
        events.emit(&Event::CanaryRolledBack { connector: "early", digest: "d", reason: "r" });
        events.subscribe(a.clone());
        events.subscribe(b.clone());
        events.emit(&Event::Probed { shop: "acme", connector: "shopify", tier: Tier::A, outcome: "ok" });
        events.emit(&Event::CanaryRolledBack { connector: "shopify", digest: "d", reason: "r" });
        for l in [a, b] {
            let seen = l.0.lock().unwrap();
            assert_eq!(seen.len(), 2, "{seen:?}");
            assert!(seen[0].starts_with("Probed") && seen[1].contains("shopify"), "{seen:?}");
        }
    }
}
