//! Fault drills: a failure injected on purpose into one shop (berth-capabilities
//! `drills`: platform 5xx, a throttle storm, timeouts, the primary channel down, connector
//! traps) for a set time, and a record of what berth did about it — which alerts fired
//! and when, how long detection and recovery took, whether the quota was held, the
//! breaker opened, the standby took over, and whether anything was lost (dead letters).
//! Records are kept in the store (the last [`KEEP`]); `GET /v1/drills` lists them and the
//! dashboard shows the last three: evidence an ERP vendor shows its customers.
//!
//! A drill ends its fault after `duration_secs`, then watches the shop recover: a probe
//! passing after the fault ended, no alert about the shop still firing, the connector's breaker
//! closed and the shop's stock backlog back to where it was — at most [`MAX_RECOVERY`].
//! It passes when the shop recovered and nothing went to the dead letters.

use berth_capabilities::drills::Scenario;
use berth_types::clock::now_ms;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Drill records kept.
pub const KEEP: usize = 100;
/// The longest fault a drill injects.
pub const MAX_DURATION_SECS: u64 = 3600;
/// How long a drill waits for the shop to recover after its fault ends.
pub const MAX_RECOVERY: Duration = Duration::from_secs(600);
/// How often a running drill looks.
const LOOK: Duration = Duration::from_millis(500);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DrillRecord {
    pub id: String,
    pub scenario: Scenario,
    pub shop: String,
    pub connector: String,
    pub platform: String,
    /// Who started it (token name).
    pub by: String,
    /// `running` (the fault is on), `recovering`, `done`, or `interrupted` (berth stopped).
    pub state: String,
    pub started_ms: i64,
    pub duration_secs: u64,
    pub fault_ended_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    /// Requests answered and calls trapped by the drill.
    pub injected: u64,
    /// Alerts about the shop, its connector or platform, or the queues, that began during
    /// the drill.
    pub alerts: Vec<DrillAlert>,
    /// From the start to the first of those alerts.
    pub detected_after_ms: Option<i64>,
    /// From the end of the fault to the shop's recovery.
    pub recovered_after_ms: Option<i64>,
    pub seen: Seen,
    pub loss: Loss,
    /// `passed`, or `failed: why`.
    pub verdict: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DrillAlert {
    pub fingerprint: String,
    pub severity: String,
    pub summary: String,
    /// After the drill's start.
    pub fired_after_ms: i64,
    pub resolved_after_ms: Option<i64>,
}

/// What berth's defences did, as seen during the drill.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Seen {
    /// The shop's health states (`down`, `throttled`, ...) while it ran.
    pub shop_states: Vec<String>,
    /// The shop's platform quota held (a throttle parked its calls).
    pub quota_held: bool,
    /// The connector's circuit breaker isolated it.
    pub breaker_opened: bool,
    /// The platform's calls moved to the standby channel.
    pub standby_switched: bool,
}

/// Dead letters before and after: what would need a person.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Loss {
    pub orders_dead_before: u64,
    pub orders_dead_after: u64,
    pub stock_dead_before: u64,
    pub stock_dead_after: u64,
    pub stock_pending_before: u64,
    pub stock_pending_after: u64,
    pub lost: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("no shop `{0}` runs on this node")]
    UnknownShop(String),
    #[error("duration_secs must be 1..={MAX_DURATION_SECS}")]
    BadDuration,
    #[error("platform `{0}` has no standby channel ([platforms.{0}.standby]): a primary-down drill has nothing to fail over to")]
    NoStandby(String),
    #[error("{0}")]
    Running(String),
    #[error(transparent)]
    Storage(#[from] berth_storage::StoreError),
}

/// What a drill reads and injects into.
pub struct DrillDeps {
    pub shops: Arc<berth_core::shops::ShopSet>,
    pub registry: Arc<berth_core::registry::ConnectorRegistry>,
    pub inbox: berth_core::inbox::OrderInbox,
    pub stock: Arc<berth_core::stock::StockLedger>,
    pub alerts: Arc<crate::alerts::Alerts>,
}

pub struct Drills {
    deps: DrillDeps,
    store: berth_storage::Store,
    tree: berth_storage::store::Keyspace,
    records: Mutex<BTreeMap<String, DrillRecord>>,
}

fn key(r: &DrillRecord) -> Vec<u8> {
    format!("{:020}/{}", r.started_ms, r.id).into_bytes()
}

impl Drills {
    /// The kept records; a drill that was running when berth stopped is `interrupted`.
    pub fn open(store: &berth_storage::Store, deps: DrillDeps) -> Result<Drills, DrillError> {
        let tree = store.keyspace("drills")?;
        let mut records = BTreeMap::new();
        for item in tree.iter() {
            let (_, v) = item?;
            match serde_json::from_slice::<DrillRecord>(&v) {
                Ok(mut r) => {
                    if r.ended_ms.is_none() {
                        r.state = "interrupted".into();
                        r.verdict = Some("failed: berth stopped during the drill".into());
                    }
                    records.insert(String::from_utf8_lossy(&key(&r)).into_owned(), r);
                }
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable drill record"),
            }
        }
        Ok(Drills { deps, store: store.clone(), tree, records: Mutex::new(records) })
    }

    fn save(&self, r: &DrillRecord) {
        let k = key(r);
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.insert(String::from_utf8_lossy(&k).into_owned(), r.clone());
        let stale: Vec<String> = records.keys().rev().skip(KEEP).cloned().collect();
        for s in &stale {
            records.remove(s);
        }
        drop(records);
        let value = serde_json::to_vec(r).unwrap_or_default();
        let tree = self.tree.clone();
        self.store.write_detached("drill", move |ctx| {
            ctx.insert(&tree, &k, value);
            for s in &stale {
                ctx.remove(&tree, s.as_bytes());
            }
            Ok(())
        });
    }

    /// Every kept record, newest first.
    pub fn list(&self) -> Vec<DrillRecord> {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).values().rev().cloned().collect()
    }

    pub fn get(&self, id: &str) -> Option<DrillRecord> {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).values().find(|r| r.id == id).cloned()
    }

    /// Start a drill on `shop`; it runs in the background. Returns its first record.
    pub fn start(self: &Arc<Self>, shop: &str, scenario: Scenario, duration_secs: u64, by: &str) -> Result<DrillRecord, DrillError> {
        if !(1..=MAX_DURATION_SECS).contains(&duration_secs) {
            return Err(DrillError::BadDuration);
        }
        let d = &self.deps;
        let entry = d.shops.stock(shop).filter(|_| d.shops.health().shop(shop).is_some()).ok_or_else(|| DrillError::UnknownShop(shop.to_string()))?;
        let services = d.shops.services();
        if scenario == Scenario::PrimaryDown && !services.standby.has(&entry.platform) {
            return Err(DrillError::NoStandby(entry.platform.clone()));
        }
        let injected = services.faults.start(shop, &entry.platform, scenario).map_err(DrillError::Running)?;
        let started_ms = now_ms();
        let (orders_dead, stock) = self.levels(shop);
        let rec = DrillRecord {
            id: format!("drill-{started_ms}-{shop}"),
            scenario,
            shop: shop.to_string(),
            connector: entry.connector.clone(),
            platform: entry.platform.clone(),
            by: by.to_string(),
            state: "running".into(),
            started_ms,
            duration_secs,
            fault_ended_ms: None,
            ended_ms: None,
            injected: 0,
            alerts: Vec::new(),
            detected_after_ms: None,
            recovered_after_ms: None,
            seen: Seen::default(),
            loss: Loss { orders_dead_before: orders_dead, stock_dead_before: stock.dead + stock.rejected, stock_pending_before: stock.pending, ..Loss::default() },
            verdict: None,
        };
        tracing::warn!(drill = %rec.id, shop, scenario = scenario.name(), duration_secs, by, "drill started: a fault is injected into the shop's calls");
        self.save(&rec);
        let this = self.clone();
        let first = rec.clone();
        tokio::spawn(async move { this.run(rec, injected).await });
        Ok(first)
    }

    /// The orders queue's dead letters and the shop's stock counts.
    fn levels(&self, shop: &str) -> (u64, berth_core::stock::StockStats) {
        let d = &self.deps;
        let orders_dead = berth_core::levels::queue_levels(&d.inbox, &d.stock, &d.shops).iter().filter(|q| q.queue == "orders").map(|q| q.dead).sum();
        (orders_dead, d.stock.stats(shop).unwrap_or_default())
    }

    /// Take in what berth shows now.
    fn look(&self, r: &mut DrillRecord, injected: &AtomicU64) {
        let d = &self.deps;
        r.injected = injected.load(Ordering::Relaxed);
        let now = now_ms();
        let related = |subject: &str| {
            subject == r.shop
                || subject == r.connector
                || subject == r.platform
                || subject.starts_with(&format!("{}:", r.platform))
                || subject == "orders"
                || subject == "stock"
        };
        let firing = d.alerts.firing();
        for a in firing.iter().filter(|a| a.started_ms >= r.started_ms && related(&a.subject)) {
            if !r.alerts.iter().any(|x| x.fingerprint == a.fingerprint) {
                r.alerts.push(DrillAlert {
                    fingerprint: a.fingerprint.clone(),
                    severity: a.severity.name().to_string(),
                    summary: a.summary.clone(),
                    fired_after_ms: a.started_ms - r.started_ms,
                    resolved_after_ms: None,
                });
            }
        }
        for a in r.alerts.iter_mut().filter(|a| a.resolved_after_ms.is_none()) {
            if !firing.iter().any(|f| f.fingerprint == a.fingerprint) {
                a.resolved_after_ms = Some(now - r.started_ms);
            }
        }
        r.detected_after_ms = r.alerts.iter().map(|a| a.fired_after_ms).min();
        if let Some(h) = d.shops.health().shop(&r.shop) {
            let state = h.state.as_str().to_string();
            if !r.seen.shop_states.contains(&state) {
                r.seen.shop_states.push(state);
            }
        }
        let services = d.shops.services();
        r.seen.quota_held |= services.limits.held().iter().any(|h| h.platform == r.platform && h.shop == r.shop);
        if let Some(slot) = d.registry.slots().get(&r.connector) {
            r.seen.breaker_opened |= slot.current().breaker.isolated();
        }
        r.seen.standby_switched |= services.standby.status().get(&r.platform).is_some_and(|s| s.active == "backup");
    }

    /// Whether the shop is back: a probe passed after the fault ended, no alert about the
    /// shop itself fires, the breaker is closed and the stock backlog is back where it
    /// was. (An alert over a window — a connector's success rate — may fire on past its
    /// recovery; the record says when, or that it still did at the end.)
    fn recovered(&self, r: &DrillRecord) -> bool {
        let d = &self.deps;
        let Some(ended) = r.fault_ended_ms else { return false };
        let probed = d.shops.health().shop(&r.shop).and_then(|h| h.last_probe).is_some_and(|p| p.up && p.at_ms > ended);
        let about_shop = format!("/{}", r.shop);
        let calm = r.alerts.iter().filter(|a| a.fingerprint.ends_with(&about_shop)).all(|a| a.resolved_after_ms.is_some());
        let closed = d.registry.slots().get(&r.connector).is_none_or(|s| !s.current().breaker.isolated());
        let (_, stock) = self.levels(&r.shop);
        probed && calm && closed && stock.pending <= r.loss.stock_pending_before
    }

    async fn run(self: Arc<Self>, mut r: DrillRecord, injected: Arc<AtomicU64>) {
        let fault_ends = tokio::time::Instant::now() + Duration::from_secs(r.duration_secs);
        while tokio::time::Instant::now() < fault_ends {
            tokio::time::sleep(LOOK.min(fault_ends.saturating_duration_since(tokio::time::Instant::now()))).await;
            self.look(&mut r, &injected);
            self.save(&r);
        }
        let services = self.deps.shops.services();
        services.faults.stop(&r.shop);
        r.fault_ended_ms = Some(now_ms());
        r.state = "recovering".into();
        tracing::info!(drill = %r.id, shop = %r.shop, injected = r.injected, "drill fault ended; watching the shop recover");
        self.save(&r);
        let give_up = tokio::time::Instant::now() + MAX_RECOVERY;
        loop {
            self.look(&mut r, &injected);
            if self.recovered(&r) {
                r.recovered_after_ms = r.fault_ended_ms.map(|e| now_ms() - e);
                break;
            }
            if tokio::time::Instant::now() >= give_up {
                break;
            }
            self.save(&r);
            tokio::time::sleep(LOOK).await;
        }
        let (orders_dead, stock) = self.levels(&r.shop);
        r.loss.orders_dead_after = orders_dead;
        r.loss.stock_dead_after = stock.dead + stock.rejected;
        r.loss.stock_pending_after = stock.pending;
        r.loss.lost = r.loss.orders_dead_after > r.loss.orders_dead_before || r.loss.stock_dead_after > r.loss.stock_dead_before;
        r.verdict = Some(match (r.recovered_after_ms, r.loss.lost) {
            (Some(_), false) => "passed".into(),
            (None, _) => format!("failed: the shop did not recover within {} s of the fault's end", MAX_RECOVERY.as_secs()),
            (Some(_), true) => format!(
                "failed: dead letters grew (orders {} → {}, stock {} → {})",
                r.loss.orders_dead_before, r.loss.orders_dead_after, r.loss.stock_dead_before, r.loss.stock_dead_after
            ),
        });
        r.state = "done".into();
        r.ended_ms = Some(now_ms());
        tracing::warn!(
            drill = %r.id, shop = %r.shop, scenario = r.scenario.name(), verdict = r.verdict.as_deref().unwrap_or(""),
            detected_after_ms = r.detected_after_ms, recovered_after_ms = r.recovered_after_ms, "drill done"
        );
        self.save(&r);
    }
}
