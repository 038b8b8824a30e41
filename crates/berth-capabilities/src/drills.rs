//! Faults injected on purpose for one shop (a drill; berth-ops runs and records it).
//! While one is on, that shop's platform requests get the scenario's answer instead of
//! going out — a 503, a 429 with `Retry-After`, a timeout, a refused connection to the
//! primary channel — or its connector calls trap. Everything around them (the
//! connector's error handling, the limiter's holds, retries and parking, the breaker,
//! the standby channel, the alerts) reacts as it would to the real thing.

use berth_types::http::{HttpError, Response};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// The platform answers every request 503.
    #[serde(rename = "platform-5xx")]
    Platform5xx,
    /// The platform answers 429 with `Retry-After`.
    ThrottleStorm,
    /// No answer: every request times out.
    Timeouts,
    /// The primary channel refuses connections (and fails its health checks); the
    /// platform's standby channel should take over.
    PrimaryDown,
    /// The shop's connector calls trap.
    ConnectorTraps,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [Scenario::Platform5xx, Scenario::ThrottleStorm, Scenario::Timeouts, Scenario::PrimaryDown, Scenario::ConnectorTraps];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Platform5xx => "platform-5xx",
            Scenario::ThrottleStorm => "throttle-storm",
            Scenario::Timeouts => "timeouts",
            Scenario::PrimaryDown => "primary-down",
            Scenario::ConnectorTraps => "connector-traps",
        }
    }

    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The wait a throttle storm asks for, seconds.
pub const STORM_RETRY_AFTER_SECS: u64 = 5;

struct Active {
    scenario: Scenario,
    platform: String,
    injected: Arc<AtomicU64>,
}

/// The drills on now, by shop.
#[derive(Default)]
pub struct InjectedFaults {
    on: RwLock<HashMap<String, Active>>,
    /// Whether any is on: the request path looks no further when none is.
    any: AtomicBool,
}

impl InjectedFaults {
    /// Start injecting `scenario` into `shop`'s calls (its connector serves `platform`);
    /// returns the count of faults injected. Refused while a drill runs on the shop.
    pub fn start(&self, shop: &str, platform: &str, scenario: Scenario) -> Result<Arc<AtomicU64>, String> {
        let mut on = self.on.write().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = on.get(shop) {
            return Err(format!("a {} drill runs on shop `{shop}` already", a.scenario.name()));
        }
        let injected = Arc::new(AtomicU64::new(0));
        on.insert(shop.to_string(), Active { scenario, platform: platform.to_string(), injected: injected.clone() });
        self.any.store(true, Ordering::SeqCst);
        Ok(injected)
    }

    pub fn stop(&self, shop: &str) {
        let mut on = self.on.write().unwrap_or_else(|e| e.into_inner());
        on.remove(shop);
        self.any.store(!on.is_empty(), Ordering::SeqCst);
    }

    fn with<T>(&self, shop: &str, f: impl FnOnce(&Active) -> Option<T>) -> Option<T> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let on = self.on.read().unwrap_or_else(|e| e.into_inner());
        let a = on.get(shop)?;
        let out = f(a);
        if out.is_some() {
            a.injected.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    /// What a request of `shop` gets instead of going out, if a drill says so;
    /// `on_primary`: whether it goes to the primary channel of a platform with a standby
    /// (asked only during a primary-down drill).
    pub fn answer(&self, shop: &str, on_primary: impl FnOnce() -> bool) -> Option<Result<Response, HttpError>> {
        self.with(shop, |a| match a.scenario {
            Scenario::Platform5xx => Some(Ok(Response { status: 503, headers: Vec::new(), body: b"drill: service unavailable".to_vec() })),
            Scenario::ThrottleStorm => Some(Ok(Response {
                status: 429,
                headers: vec![("Retry-After".to_string(), STORM_RETRY_AFTER_SECS.to_string())],
                body: b"drill: too many requests".to_vec(),
            })),
            Scenario::Timeouts => Some(Err(HttpError::Timeout)),
            Scenario::PrimaryDown if on_primary() => Some(Err(HttpError::Connection("drill: the primary channel refused the connection".into()))),
            Scenario::PrimaryDown | Scenario::ConnectorTraps => None,
        })
    }

    /// Whether `shop`'s connector calls trap now.
    pub fn traps(&self, shop: &str) -> bool {
        self.with(shop, |a| (a.scenario == Scenario::ConnectorTraps).then_some(())).is_some()
    }

    /// Whether a drill has `platform`'s primary channel down: its health check fails
    /// (counted as injected).
    pub fn primary_down(&self, platform: &str) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let on = self.on.read().unwrap_or_else(|e| e.into_inner());
        let drill = on.values().find(|a| a.scenario == Scenario::PrimaryDown && a.platform == platform);
        if let Some(a) = drill {
            a.injected.fetch_add(1, Ordering::Relaxed);
        }
        drill.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_drilled_shop_gets_the_fault() {
        let f = InjectedFaults::default();
        assert!(f.answer("a", || true).is_none() && !f.traps("a"));
        let n = f.start("a", "shopify", Scenario::ThrottleStorm).unwrap();
        assert!(f.start("a", "shopify", Scenario::Timeouts).unwrap_err().contains("throttle-storm drill runs"));
        let r = f.answer("a", || false).unwrap().unwrap();
        assert_eq!((r.status, r.headers[0].1.as_str()), (429, "5"));
        assert!(f.answer("b", || false).is_none(), "another shop is untouched");
        f.start("b", "woo", Scenario::PrimaryDown).unwrap();
        assert!(f.answer("b", || false).is_none(), "the backup channel answers");
        assert!(matches!(f.answer("b", || true), Some(Err(HttpError::Connection(_)))));
        assert!(f.primary_down("woo") && !f.primary_down("shopify"));
        assert_eq!(n.load(Ordering::Relaxed), 1);
        f.stop("a");
        f.stop("b");
        assert!(f.answer("a", || false).is_none() && !f.primary_down("woo"));
        assert_eq!(Scenario::parse("connector-traps"), Some(Scenario::ConnectorTraps));
        assert_eq!(Scenario::parse("meteor"), None);
    }
}
