//! Write guards on outbound stock, per platform (`[stock.write_guards.PLATFORM]`, `"*"`
//! for every platform without its own), overridable per shop (`.shops.SHOP`):
//!
//! - **Holds.** A submission — or the shop's pending pushes within `window_secs` — that
//!   would set more than `max_zero_percent` of the shop's SKUs to 0 (at least
//!   `min_zeroed` of them), or change more than `max_changed_skus` quantities by more than
//!   `max_change_percent`, is held, not pushed: its SKUs go to state `held` in the ledger
//!   under one hold id (durable, so a restart keeps them held), an alert fires, and an
//!   operator releases the hold (the pusher takes the SKUs up) or discards it (the SKUs
//!   go back to what the platform was last given). A newer quantity for a held SKU
//!   replaces it inside the hold. A change is measured against the quantity the platform
//!   last accepted; a SKU never pushed has nothing to compare with and is not counted.
//! - **Pauses.** When a platform's push calls succeed less often than
//!   `pause_writes_below` over `window_mins` (with at least `min_calls`), its shops'
//!   pushes pause, shop by shop as each pusher comes to push, instead of hammering it;
//!   each shop resumes when an operator says so or when its probes have passed for
//!   `resume_after_mins`. Throttles, berth's own holds and credential errors are not
//!   counted: they are not the platform failing writes. A pause lives in memory: a
//!   restart ends it (the next failures start a new one).

use super::ledger::Submission;
use super::{SkuStock, StockError, StockLedger, StockRequest, Submitted};
use berth_types::clock::now_ms;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

/// The key of the guard for every platform without one of its own.
pub const EVERY_PLATFORM: &str = "*";

/// One platform's guard as written in berth.toml.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    #[serde(default = "d_zero_percent")]
    pub max_zero_percent: f64,
    #[serde(default = "d_min_zeroed")]
    pub min_zeroed: u64,
    #[serde(default = "d_changed_skus")]
    pub max_changed_skus: u64,
    #[serde(default = "d_change_percent")]
    pub max_change_percent: f64,
    #[serde(default = "d_window_secs")]
    pub window_secs: u64,
    /// Pause pushes when the platform's push success rate falls below this (0..1); no
    /// pause when 0.
    #[serde(default = "d_pause_below")]
    pub pause_writes_below: f64,
    /// Minutes (fractions allowed).
    #[serde(default = "d_window_mins")]
    pub window_mins: f64,
    #[serde(default = "d_min_calls")]
    pub min_calls: u64,
    /// Minutes (fractions allowed).
    #[serde(default = "d_resume_mins")]
    pub resume_after_mins: f64,
    /// Per shop: other limits, or `enabled = false`.
    #[serde(default)]
    pub shops: BTreeMap<String, ShopGuard>,
}

fn d_zero_percent() -> f64 {
    20.0
}
fn d_min_zeroed() -> u64 {
    5
}
fn d_changed_skus() -> u64 {
    50
}
fn d_change_percent() -> f64 {
    15.0
}
fn d_window_secs() -> u64 {
    300
}
fn d_pause_below() -> f64 {
    0.98
}
fn d_window_mins() -> f64 {
    5.0
}
fn d_min_calls() -> u64 {
    20
}
fn d_resume_mins() -> f64 {
    10.0
}

/// A shop's own limits (each one unset: the platform's).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShopGuard {
    /// `false`: this shop's submissions are never held.
    pub enabled: Option<bool>,
    pub max_zero_percent: Option<f64>,
    pub min_zeroed: Option<u64>,
    pub max_changed_skus: Option<u64>,
    pub max_change_percent: Option<f64>,
    pub window_secs: Option<u64>,
}

impl GuardConfig {
    pub fn check(&self) -> Result<(), String> {
        let pct = |what: &str, v: f64| {
            if v.is_finite() && (0.0..=100.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{what} must be between 0 and 100"))
            }
        };
        pct("max_zero_percent", self.max_zero_percent)?;
        if !(self.max_change_percent.is_finite() && self.max_change_percent >= 0.0) {
            return Err("max_change_percent must be 0 or more".into());
        }
        if self.window_secs == 0 || self.min_calls == 0 {
            return Err("window_secs and min_calls must be at least 1".into());
        }
        let minutes = |v: f64| v.is_finite() && v > 0.0 && v <= 24.0 * 60.0;
        if !(minutes(self.window_mins) && minutes(self.resume_after_mins)) {
            return Err("window_mins and resume_after_mins must be more than 0 and at most a day (1440)".into());
        }
        if !(0.0..=1.0).contains(&self.pause_writes_below) {
            return Err("pause_writes_below is a success rate between 0 and 1 (0: never pause)".into());
        }
        for (shop, s) in &self.shops {
            if let Some(v) = s.max_zero_percent {
                pct(&format!("shops.{shop}.max_zero_percent"), v)?;
            }
            if s.max_change_percent.is_some_and(|v| !(v.is_finite() && v >= 0.0)) || s.window_secs == Some(0) {
                return Err(format!("shops.{shop}: max_change_percent must be 0 or more and window_secs at least 1"));
            }
        }
        Ok(())
    }

    /// The limits `shop` is held to; none when its guard is turned off.
    pub fn limits(&self, shop: &str) -> Option<Limits> {
        let s = self.shops.get(shop).cloned().unwrap_or_default();
        if s.enabled == Some(false) {
            return None;
        }
        Some(Limits {
            max_zero_percent: s.max_zero_percent.unwrap_or(self.max_zero_percent),
            min_zeroed: s.min_zeroed.unwrap_or(self.min_zeroed),
            max_changed_skus: s.max_changed_skus.unwrap_or(self.max_changed_skus),
            max_change_percent: s.max_change_percent.unwrap_or(self.max_change_percent),
            window_ms: s.window_secs.unwrap_or(self.window_secs) as i64 * 1000,
        })
    }
}

/// A shop's hold limits, resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_zero_percent: f64,
    pub min_zeroed: u64,
    pub max_changed_skus: u64,
    pub max_change_percent: f64,
    pub window_ms: i64,
}

/// What one change of one SKU does, against what the platform was last given.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Flags {
    /// To 0 from a positive quantity.
    pub zero: bool,
    /// By more than `max_change_percent` (a zero is one too).
    pub big: bool,
}

impl Limits {
    pub fn flags(&self, pushed: Option<u32>, quantity: u32) -> Flags {
        let Some(before) = pushed else { return Flags::default() };
        let change = f64::from(before.abs_diff(quantity)) * 100.0 / f64::from(before.max(1));
        Flags { zero: quantity == 0 && before > 0, big: change > self.max_change_percent }
    }

    /// Whether `zeroed` SKUs to 0 and `changed` big changes, of a shop of `skus` SKUs,
    /// are past the limits; why, when they are.
    pub fn tripped(&self, zeroed: u64, changed: u64, skus: u64) -> Option<String> {
        let share = zeroed as f64 * 100.0 / skus.max(1) as f64;
        if zeroed >= self.min_zeroed.max(1) && share > self.max_zero_percent {
            return Some(format!(
                "{zeroed} of the shop's {skus} SKUs would go to 0 ({share:.0}%, more than max_zero_percent {})",
                self.max_zero_percent
            ));
        }
        if changed > self.max_changed_skus {
            return Some(format!(
                "{changed} quantities would change by more than {}% (more than max_changed_skus {})",
                self.max_change_percent, self.max_changed_skus
            ));
        }
        None
    }
}

/// What the guard gives the ledger for one submission: the limits, what the shop's
/// window holds already, and the hold to put the submission in if it trips.
#[derive(Debug, Clone)]
pub struct Check {
    pub limits: Limits,
    /// The shop's flagged changes within the window, still pending.
    pub window: Vec<Flagged>,
    /// The shop's SKUs in the ledger before the submission.
    pub skus: u64,
    pub hold_id: String,
}

/// A SKU change the window remembers.
#[derive(Debug, Clone)]
pub struct Flagged {
    pub at_ms: i64,
    pub sku: String,
    pub version: u64,
    pub flags: Flags,
}

/// A hold as ops see it: the SKUs of one shop held under one id.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HoldView {
    pub id: String,
    pub skus: usize,
    /// Held SKUs going to 0.
    pub zeroed: usize,
    pub since_ms: i64,
    pub reason: String,
    /// The first SKUs (by name): the quantity held and what the platform was last given.
    pub sample: Vec<HeldSku>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HeldSku {
    pub sku: String,
    pub quantity: u32,
    pub pushed_quantity: Option<u32>,
}

/// The SKUs a hold's view lists.
const SAMPLE: usize = 20;

/// Group held records by hold id, oldest hold first.
pub fn hold_views(held: &[SkuStock]) -> Vec<HoldView> {
    let mut by: BTreeMap<&str, HoldView> = BTreeMap::new();
    for r in held {
        let Some(id) = r.hold.as_deref() else { continue };
        let v = by.entry(id).or_insert_with(|| HoldView {
            id: id.to_string(),
            skus: 0,
            zeroed: 0,
            since_ms: r.received_at_ms,
            reason: r.last_error.clone().unwrap_or_default(),
            sample: Vec::new(),
        });
        v.skus += 1;
        v.zeroed += usize::from(r.quantity == 0);
        v.since_ms = v.since_ms.min(r.received_at_ms);
        if v.sample.len() < SAMPLE {
            v.sample.push(HeldSku { sku: r.sku.clone(), quantity: r.quantity, pushed_quantity: r.pushed_quantity });
        }
    }
    let mut out: Vec<HoldView> = by.into_values().collect();
    out.sort_by(|a, b| (a.since_ms, &a.id).cmp(&(b.since_ms, &b.id)));
    out
}

/// A new hold's id: when, and a random part.
pub fn new_hold_id() -> String {
    format!("hold-{}-{:08x}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"), rand::random::<u32>())
}

/// A platform's push pause, as ops see it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PauseView {
    pub platform: String,
    pub since_ms: i64,
    pub reason: String,
    /// Shops whose pushes wait on it now, and since when.
    pub shops: BTreeMap<String, i64>,
    /// Shops resumed since it began (by an operator or their probes).
    pub resumed: Vec<String>,
    pub resume_after_mins: f64,
}

struct Pause {
    since_ms: i64,
    reason: String,
    /// Shops whose pusher found the pause, since when.
    waiting: BTreeMap<String, i64>,
    resumed: Vec<String>,
    /// Per waiting shop: since when its probes have passed (none: the last one failed).
    probes_ok_since: HashMap<String, i64>,
}

/// The guards of every platform: their config, each shop's window of flagged changes,
/// each platform's push outcomes and pauses.
#[derive(Default)]
pub struct WriteGuards {
    config: BTreeMap<String, GuardConfig>,
    windows: Mutex<HashMap<String, VecDeque<Flagged>>>,
    /// One submission of a shop is judged at a time (the window must see the last).
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Per platform: (at_ms, succeeded) of its push calls within its window.
    pushes: Mutex<HashMap<String, VecDeque<(i64, bool)>>>,
    pauses: Mutex<BTreeMap<String, Pause>>,
    /// Told when an operator resumes pushes: parked pushers look again.
    resumed: tokio::sync::Notify,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl WriteGuards {
    pub fn new(config: BTreeMap<String, GuardConfig>) -> WriteGuards {
        WriteGuards { config, ..WriteGuards::default() }
    }

    /// The guard of `platform`: its own, or the one for every platform.
    pub fn config(&self, platform: &str) -> Option<&GuardConfig> {
        self.config.get(platform).or_else(|| self.config.get(EVERY_PLATFORM))
    }

    /// Whether any platform has a guard.
    pub fn any(&self) -> bool {
        !self.config.is_empty()
    }

    /// This shop's turn to be judged (held for the whole submission).
    pub fn turn(&self, shop: &str) -> Arc<tokio::sync::Mutex<()>> {
        locked(&self.turns).entry(shop.to_string()).or_default().clone()
    }

    /// The shop's flagged changes within `window_ms` of now.
    pub fn window(&self, shop: &str, window_ms: i64) -> Vec<Flagged> {
        let now = now_ms();
        let mut all = locked(&self.windows);
        let Some(w) = all.get_mut(shop) else { return Vec::new() };
        while w.front().is_some_and(|f| now - f.at_ms > window_ms) {
            w.pop_front();
        }
        w.iter().cloned().collect()
    }

    /// Remember a submission's flagged changes: a SKU it changed again loses its older one.
    pub fn remember(&self, shop: &str, touched: &HashSet<&str>, flagged: Vec<Flagged>) {
        let mut all = locked(&self.windows);
        if let Some(w) = all.get_mut(shop) {
            w.retain(|f| !touched.contains(f.sku.as_str()));
        }
        if !flagged.is_empty() {
            all.entry(shop.to_string()).or_default().extend(flagged);
        }
    }

    /// Submit the ERP's quantities for `shop` (on `platform`) to the ledger, judged by
    /// the platform's guard when it has one: held when they trip it, with the window's
    /// pending changes (see the module).
    pub async fn submit(&self, ledger: &StockLedger, shop: &str, platform: &str, updates: &[StockRequest]) -> Result<Submission, StockError> {
        let Some(limits) = self.config(platform).and_then(|c| c.limits(shop)) else {
            return ledger.submit_checked(shop, updates, None).await;
        };
        let turn = self.turn(shop);
        let _turn = turn.lock().await;
        let window = self.window(shop, limits.window_ms);
        let skus = ledger.stats(shop)?.skus();
        let check = Check { limits, window: window.clone(), skus, hold_id: new_hold_id() };
        let sub = ledger.submit_checked(shop, updates, Some(check)).await?;
        let touched: HashSet<&str> = updates.iter().map(|u| u.sku.as_str()).collect();
        match &sub.held {
            Some((id, why)) => {
                let earlier: Vec<(String, u64)> =
                    window.iter().filter(|f| !touched.contains(f.sku.as_str())).map(|f| (f.sku.clone(), f.version)).collect();
                let more = ledger.hold_pending(shop, &earlier, id, why).await?;
                self.forget(shop);
                let submitted = sub.results.iter().filter(|r| r.outcome == Submitted::Held).count();
                tracing::warn!(shop, platform, hold = %id, reason = %why, submitted, earlier = more, "stock changes held by a write guard; an operator releases or discards them");
            }
            None => self.remember(shop, &touched, sub.flagged.clone()),
        }
        Ok(sub)
    }

    /// Forget the shop's window (its changes went into a hold, or a person approved them).
    pub fn forget(&self, shop: &str) {
        locked(&self.windows).remove(shop);
    }

    /// A push call to `platform` ended: succeeded, or failed in a way that counts.
    /// Returns the pause it started, if this one took the success rate below the line.
    pub fn record_push(&self, platform: &str, succeeded: bool) -> Option<PauseView> {
        let cfg = self.config(platform)?;
        if cfg.pause_writes_below <= 0.0 {
            return None;
        }
        let now = now_ms();
        let window_ms = (cfg.window_mins * 60_000.0) as i64;
        let mut pushes = locked(&self.pushes);
        let w = pushes.entry(platform.to_string()).or_default();
        w.push_back((now, succeeded));
        while w.front().is_some_and(|(at, _)| now - at > window_ms) {
            w.pop_front();
        }
        let calls = w.len() as u64;
        let ok = w.iter().filter(|(_, s)| *s).count() as u64;
        let rate = ok as f64 / calls as f64;
        if succeeded || calls < cfg.min_calls || rate >= cfg.pause_writes_below {
            return None;
        }
        // Below the line: pause (again), and count afresh from here.
        w.clear();
        drop(pushes);
        let reason = format!(
            "{ok} of the last {calls} push calls succeeded within {} min ({:.1}%, below pause_writes_below {:.1}%)",
            cfg.window_mins,
            rate * 100.0,
            cfg.pause_writes_below * 100.0
        );
        tracing::error!(platform, reason = %reason, "stock pushes to the platform paused");
        let mut pauses = locked(&self.pauses);
        pauses.insert(
            platform.to_string(),
            Pause { since_ms: now, reason, waiting: BTreeMap::new(), resumed: Vec::new(), probes_ok_since: HashMap::new() },
        );
        pauses.get(platform).map(|p| view(platform, p, cfg.resume_after_mins))
    }

    /// Whether `shop`'s pushes to `platform` wait on a pause; its probe (`up`, when it
    /// ran) moves it towards resuming by itself. Returns why it waits.
    pub fn paused(&self, platform: &str, shop: &str, probe: Option<(bool, i64)>) -> Option<String> {
        let resume_ms = (self.config(platform)?.resume_after_mins * 60_000.0) as i64;
        let now = now_ms();
        let mut pauses = locked(&self.pauses);
        let p = pauses.get_mut(platform)?;
        if p.resumed.iter().any(|s| s == shop) {
            return None;
        }
        p.waiting.entry(shop.to_string()).or_insert(now);
        match probe {
            Some((true, at)) if at > p.since_ms => {
                let ok_since = *p.probes_ok_since.entry(shop.to_string()).or_insert(at);
                if now - ok_since >= resume_ms {
                    tracing::info!(platform, shop, "the shop's probes passed for resume_after_mins: its stock pushes resume");
                    resume(p, shop);
                    return None;
                }
            }
            Some((false, _)) => {
                p.probes_ok_since.remove(shop);
            }
            _ => {}
        }
        Some(format!("stock pushes to {platform} paused since {}: {}", p.since_ms, p.reason))
    }

    /// An operator resumes `shop`'s pushes (or every shop's, with `None`) on `platform`.
    /// Returns whether a pause was there.
    pub fn resume(&self, platform: &str, shop: Option<&str>) -> bool {
        let mut pauses = locked(&self.pauses);
        let found = match shop {
            None => pauses.remove(platform).is_some(),
            Some(s) => pauses.get_mut(platform).map(|p| resume(p, s)).is_some(),
        };
        drop(pauses);
        if found {
            locked(&self.pushes).remove(platform);
            self.resumed.notify_waiters();
        }
        found
    }

    /// Every pause, with the shops waiting on it.
    pub fn pauses(&self) -> Vec<PauseView> {
        locked(&self.pauses)
            .iter()
            .map(|(platform, p)| view(platform, p, self.config(platform).map_or(0.0, |c| c.resume_after_mins)))
            .collect()
    }

    /// Wait until an operator resumes something.
    pub async fn resumed(&self) {
        self.resumed.notified().await
    }
}

fn resume(p: &mut Pause, shop: &str) {
    p.waiting.remove(shop);
    p.probes_ok_since.remove(shop);
    if !p.resumed.iter().any(|s| s == shop) {
        p.resumed.push(shop.to_string());
    }
}

fn view(platform: &str, p: &Pause, resume_after_mins: f64) -> PauseView {
    PauseView {
        platform: platform.to_string(),
        since_ms: p.since_ms,
        reason: p.reason.clone(),
        shops: p.waiting.clone(),
        resumed: p.resumed.clone(),
        resume_after_mins,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(text: &str) -> GuardConfig {
        let g: GuardConfig = toml::from_str(text).unwrap();
        g.check().unwrap();
        g
    }

    #[test]
    fn changes_are_measured_against_what_the_platform_was_given() {
        let l = guard("").limits("s").unwrap();
        assert_eq!(l.flags(None, 0), Flags::default(), "never pushed: nothing to compare");
        assert_eq!(l.flags(Some(10), 0), Flags { zero: true, big: true });
        assert_eq!(l.flags(Some(100), 115), Flags::default(), "15% is not more than 15%");
        assert_eq!(l.flags(Some(100), 84), Flags { zero: false, big: true });
        assert_eq!(l.flags(Some(0), 0), Flags::default());
        assert_eq!(l.flags(Some(0), 1), Flags { zero: false, big: true });
        // 5 of 20 to 0 is 25%: held; 4 is too few however large the share.
        assert!(l.tripped(5, 5, 20).unwrap().contains("5 of the shop's 20 SKUs would go to 0 (25%"));
        assert_eq!(l.tripped(4, 4, 8), None);
        assert!(l.tripped(0, 51, 1000).unwrap().contains("51 quantities would change by more than 15%"));
        assert_eq!(l.tripped(0, 50, 1000), None);
    }

    #[test]
    fn a_shop_overrides_its_platform_or_turns_it_off() {
        let g = guard("max_changed_skus = 10\n[shops.big]\nmax_changed_skus = 500\nwindow_secs = 60\n[shops.free]\nenabled = false\n");
        assert_eq!(g.limits("any").unwrap().max_changed_skus, 10);
        let big = g.limits("big").unwrap();
        assert_eq!((big.max_changed_skus, big.window_ms, big.max_change_percent), (500, 60_000, 15.0));
        assert_eq!(g.limits("free"), None);
        let bad: GuardConfig = toml::from_str("pause_writes_below = 98\n").unwrap();
        assert!(bad.check().unwrap_err().contains("between 0 and 1"));
        assert!(toml::from_str::<GuardConfig>("max_zero = 1\n").is_err(), "unknown keys are refused");
    }

    #[tokio::test]
    async fn failing_pushes_pause_the_platform_until_resumed() {
        let guards = WriteGuards::new(BTreeMap::from([("p".to_string(), guard("min_calls = 10\nresume_after_mins = 1\n"))]));
        for _ in 0..9 {
            assert_eq!(guards.record_push("p", true), None);
        }
        // 9 of 10 is 90%: below 98%, with enough calls.
        let pause = guards.record_push("p", false).expect("paused");
        assert!(pause.reason.contains("9 of the last 10 push calls succeeded"), "{}", pause.reason);
        assert_eq!(guards.record_push("other", false), None, "no guard, no pause");
        assert!(guards.paused("p", "a", None).is_some());
        assert!(guards.paused("p", "b", Some((false, now_ms()))).is_some());
        assert_eq!(guards.pauses()[0].shops.keys().collect::<Vec<_>>(), ["a", "b"]);
        // A probe that passed long enough ago resumes its shop alone.
        let since = guards.pauses()[0].since_ms;
        {
            let mut pauses = locked(&guards.pauses);
            pauses.get_mut("p").unwrap().probes_ok_since.insert("a".into(), since - 120_000);
        }
        assert_eq!(guards.paused("p", "a", Some((true, since + 1))), None);
        assert!(guards.paused("p", "b", None).is_some());
        assert_eq!(guards.pauses()[0].resumed, ["a"]);
        // An operator resumes the rest.
        assert!(guards.resume("p", Some("b")));
        assert_eq!(guards.paused("p", "b", None), None);
        assert!(guards.resume("p", None) && !guards.resume("p", None));
        assert!(guards.pauses().is_empty());
    }
}
