//! Shop health by tier: every shop's connector `check` runs on the tier's probe interval
//! (A 30 s, B 5 min, C 1 h by default), and availability — probes that found the shop
//! up over all probes — is computed over a trailing window and held against the tier's
//! SLA target. Results are kept per minute in the store (keyspace `probe_minutes`), so a restart
//! keeps the window's history. In cluster mode they are kept in the cluster instead
//! ([`cluster`]): a shop's probe history and failure count move with its lease, and
//! every node shows every shop.

pub mod cluster;
pub mod prober;

use berth_types::shop::Tier;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::RwLock;

/// `[health]` in berth.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Availability and SLA are computed over this trailing window.
    pub window_secs: u64,
    /// Per-tier overrides of the probe interval and SLA target.
    #[serde(rename = "A")]
    pub a: TierOverride,
    #[serde(rename = "B")]
    pub b: TierOverride,
    #[serde(rename = "C")]
    pub c: TierOverride,
    /// Shops of these tiers whose probes have failed for `degrade_after_secs` are
    /// degraded: ops may export their pending stock as CSV for a manual upload and
    /// import their orders from the platform's CSV export.
    pub degrade_tiers: Vec<Tier>,
    pub degrade_after_secs: u64,
    /// Export per-shop series (`berth_shop_up`, `berth_shop_availability_ratio`) with a
    /// `shop` label. Off by default: with thousands of shops that is thousands of series.
    pub shop_labels: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            window_secs: 24 * 3600,
            a: TierOverride::default(),
            b: TierOverride::default(),
            c: TierOverride::default(),
            degrade_tiers: vec![Tier::C],
            degrade_after_secs: 3600,
            shop_labels: false,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierOverride {
    pub probe_secs: Option<u64>,
    /// Availability the tier promises, in percent (e.g. 99.9).
    pub sla_percent: Option<f64>,
}

/// How one tier is watched.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TierPolicy {
    pub probe_secs: u64,
    pub sla_percent: f64,
}

impl HealthConfig {
    pub fn policy(&self, tier: Tier) -> TierPolicy {
        let (o, probe_secs, sla_percent) = match tier {
            Tier::A => (&self.a, 30, 99.9),
            Tier::B => (&self.b, 300, 99.5),
            Tier::C => (&self.c, 3600, 99.0),
        };
        TierPolicy { probe_secs: o.probe_secs.unwrap_or(probe_secs), sla_percent: o.sla_percent.unwrap_or(sla_percent) }
    }

    /// Problems with the section, for the config loader.
    pub fn check(&self) -> Result<(), String> {
        if self.window_secs < 60 {
            return Err("health.window_secs must be at least 60".into());
        }
        for (name, o) in [("A", &self.a), ("B", &self.b), ("C", &self.c)] {
            if o.probe_secs == Some(0) {
                return Err(format!("health.{name}.probe_secs must be at least 1"));
            }
            if o.sla_percent.is_some_and(|p| !(p > 0.0 && p <= 100.0)) {
                return Err(format!("health.{name}.sla_percent must be in (0, 100]"));
            }
        }
        Ok(())
    }
}

/// How one probe ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub at_ms: i64,
    /// The shop answered: `check` returned `ok: true`, or the platform throttled (it
    /// answered, just not now).
    pub up: bool,
    /// `ok`, `unhealthy` (check said `ok: false`), a connector-error case, `trap`,
    /// `timeout` or `instantiate`.
    pub outcome: String,
    /// What the connector said (bounded).
    pub message: String,
    pub latency_ms: u64,
}

/// Longest connector message kept with a probe result.
pub const MAX_MESSAGE: usize = 300;

/// Where a shop stands, as its probes and holds say (answered in lower case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShopState {
    /// Its last probe passed.
    Up,
    /// Its last probe failed.
    Down,
    /// Not probed yet.
    Unknown,
    /// An operator paused it.
    Paused,
    /// Its platform quota is held after a throttle.
    Throttled,
    /// A host bound holds it (its order budget).
    Held,
}

impl ShopState {
    pub fn as_str(self) -> &'static str {
        match self {
            ShopState::Up => "up",
            ShopState::Down => "down",
            ShopState::Unknown => "unknown",
            ShopState::Paused => "paused",
            ShopState::Throttled => "throttled",
            ShopState::Held => "held",
        }
    }
}

impl std::fmt::Display for ShopState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One shop's state as ops see it.
#[derive(Clone, Debug, Serialize)]
pub struct ShopHealth {
    pub shop: String,
    pub connector: String,
    pub platform: String,
    pub tier: Tier,
    pub probe_secs: u64,
    /// `up`, `down`, `paused` (ops paused the shop or its connector), `throttled` (its
    /// quota is held: the platform or its connector said stop), `held` (a host bound
    /// holds its order intake) or `unknown` (not probed yet).
    pub state: ShopState,
    /// Why the shop is `throttled` or `held`, and until when.
    pub held: Option<String>,
    pub consecutive_failures: u32,
    /// When the current run of failed probes began.
    pub down_since_ms: Option<i64>,
    /// Down past `degrade_after_secs` in a degrade tier: CSV export and import are open.
    pub degraded: bool,
    pub last_probe: Option<ProbeResult>,
    pub availability: Availability,
}

/// Probes in the window and what they make of the SLA.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Availability {
    pub window_secs: u64,
    pub probes: u64,
    pub up: u64,
    /// `up / probes`; none before the first probe.
    pub ratio: Option<f64>,
    pub sla_percent: f64,
    /// Whether the ratio meets the tier's target; none before the first probe.
    pub sla_met: Option<bool>,
    /// Share of the window's error budget (1 − target) left: 1 untouched, 0 spent,
    /// below 0 overspent.
    pub error_budget_left: Option<f64>,
}

impl Availability {
    fn of(window_secs: u64, probes: u64, up: u64, sla_percent: f64) -> Availability {
        let ratio = (probes > 0).then(|| up as f64 / probes as f64);
        let target = sla_percent / 100.0;
        Availability {
            window_secs,
            probes,
            up,
            ratio,
            sla_percent,
            sla_met: ratio.map(|r| r + 1e-12 >= target),
            error_budget_left: ratio.map(|r| if target >= 1.0 { if r >= 1.0 { 1.0 } else { 0.0 } } else { 1.0 - (1.0 - r) / (1.0 - target) }),
        }
    }
}

/// Shops of one connector and tier, summed.
#[derive(Clone, Debug, Serialize)]
pub struct TierSummary {
    pub connector: String,
    pub tier: Tier,
    pub shops: u64,
    pub up: u64,
    pub down: u64,
    pub paused: u64,
    /// `throttled` or `held` shops.
    pub held: u64,
    pub unknown: u64,
    pub below_sla: u64,
    /// Over every probe of these shops in the window.
    pub availability: Availability,
}

struct Entry {
    connector: String,
    platform: String,
    tier: Tier,
    /// Minute since the epoch → (probes up, probes).
    minutes: BTreeMap<u64, (u32, u32)>,
    last: Option<ProbeResult>,
    consecutive_failures: u32,
    down_since_ms: Option<i64>,
    paused: bool,
}

/// A shop's probe history and standing as the cluster keeps it (cluster mode).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredHealth {
    /// `(minute since the epoch, probes up, probes)`: the last hour minute by minute,
    /// older minutes summed per hour (kept at the hour's first minute), within the window.
    pub minutes: Vec<(u64, u32, u32)>,
    pub last: Option<ProbeResult>,
    pub consecutive_failures: u32,
    pub down_since_ms: Option<i64>,
}

impl Entry {
    fn new(connector: &str, platform: &str, tier: Tier) -> Entry {
        Entry {
            connector: connector.to_string(),
            platform: platform.to_string(),
            tier,
            minutes: BTreeMap::new(),
            last: None,
            consecutive_failures: 0,
            down_since_ms: None,
            paused: false,
        }
    }

    /// Take up what the cluster kept of the shop (minutes older than `oldest` dropped).
    fn resume(&mut self, stored: StoredHealth, oldest: u64) {
        self.minutes = stored.minutes.iter().filter(|m| m.0 >= oldest).map(|&(m, up, all)| (m, (up, all))).collect();
        self.last = stored.last;
        self.consecutive_failures = stored.consecutive_failures;
        self.down_since_ms = stored.down_since_ms;
    }

    /// What the cluster keeps of the shop: the last hour by minute, the rest by hour.
    fn stored(&self, now_ms: i64) -> StoredHealth {
        let this_hour = (now_ms.max(0) as u64 / 60_000).saturating_sub(60);
        let mut minutes: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
        for (&m, &(up, all)) in &self.minutes {
            let at = if m < this_hour { m - m % 60 } else { m };
            let c = minutes.entry(at).or_default();
            c.0 += up;
            c.1 += all;
        }
        StoredHealth {
            minutes: minutes.into_iter().map(|(m, (up, all))| (m, up, all)).collect(),
            last: self.last.clone(),
            consecutive_failures: self.consecutive_failures,
            down_since_ms: self.down_since_ms,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("probe history storage: {0}")]
pub struct HealthStoreError(#[from] berth_storage::StoreError);

/// Where a shop's holds come from (the running shops, which know each one's quota and
/// order budget): `(state, why)` while one is held.
pub trait HoldSource: Send + Sync {
    fn hold(&self, shop: &str) -> Option<(ShopState, String)>;
}

/// Every running shop's probe results.
pub struct HealthBook {
    config: HealthConfig,
    store: berth_storage::Store,
    tree: berth_storage::store::Keyspace,
    shops: RwLock<BTreeMap<String, Entry>>,
    holds: RwLock<Option<std::sync::Weak<dyn HoldSource>>>,
    events: std::sync::Arc<crate::events::Events>,
    /// Cluster mode: where the shops' history is kept, and the shops other nodes run
    /// (connector, platform, tier), shown from it.
    shared: std::sync::OnceLock<std::sync::Arc<cluster::SharedHealth>>,
    elsewhere: RwLock<BTreeMap<String, (String, String, Tier)>>,
}

fn key(shop: &str, minute: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(shop.len() + 9);
    k.extend_from_slice(shop.as_bytes());
    k.push(0);
    k.extend_from_slice(&minute.to_be_bytes());
    k
}

fn counts(v: &[u8]) -> Option<(u32, u32)> {
    let up = u32::from_le_bytes(v.get(0..4)?.try_into().ok()?);
    let all = u32::from_le_bytes(v.get(4..8)?.try_into().ok()?);
    Some((up, all))
}

impl HealthBook {
    pub fn open(store: &berth_storage::Store, config: HealthConfig, events: std::sync::Arc<crate::events::Events>) -> Result<HealthBook, HealthStoreError> {
        Ok(HealthBook {
            config,
            store: store.clone(),
            tree: store.keyspace("probe_minutes")?,
            shops: RwLock::default(),
            holds: RwLock::new(None),
            events,
            shared: std::sync::OnceLock::new(),
            elsewhere: RwLock::default(),
        })
    }

    /// Show shops held by a quota or a host bound as such (`throttled`, `held`).
    pub fn set_holds(&self, source: std::sync::Weak<dyn HoldSource>) {
        *self.holds.write().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    fn oldest_minute(&self, now_ms: i64) -> u64 {
        (now_ms.max(0) as u64 / 1000).saturating_sub(self.config.window_secs) / 60
    }

    /// Start watching a shop; its stored history within the window comes back (in
    /// cluster mode, from the cluster: whatever node probed it before).
    pub fn register(&self, shop: &str, connector: &str, platform: &str, tier: Tier) {
        let oldest = self.oldest_minute(berth_types::clock::now_ms());
        let mut entry = Entry::new(connector, platform, tier);
        if let Some(shared) = self.shared.get() {
            if let Some(stored) = shared.stored(shop) {
                entry.resume(stored, oldest);
            }
        } else {
            entry.minutes = self.load_minutes(shop, oldest);
        }
        self.elsewhere.write().unwrap_or_else(|e| e.into_inner()).remove(shop);
        self.shops.write().unwrap_or_else(|e| e.into_inner()).insert(shop.to_string(), entry);
    }

    /// The shop's probe minutes in the store from `oldest` on; older ones are removed.
    fn load_minutes(&self, shop: &str, oldest: u64) -> BTreeMap<u64, (u32, u32)> {
        let mut minutes = BTreeMap::new();
        let mut prefix = shop.as_bytes().to_vec();
        prefix.push(0);
        let mut expired = Vec::new();
        for (k, v) in self.tree.prefix(&prefix).flatten() {
            let Some(minute) = k.get(prefix.len()..).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes) else { continue };
            if minute < oldest {
                expired.push(k);
            } else if let Some(c) = counts(&v) {
                minutes.insert(minute, c);
            }
        }
        if !expired.is_empty() {
            let tree = self.tree.clone();
            self.store.write_detached("probe history", move |ctx| {
                for k in expired {
                    ctx.remove(&tree, k);
                }
                Ok(())
            });
        }
        minutes
    }

    /// Stop watching a shop (removed from config, or in cluster mode run elsewhere now);
    /// its history stays on disk (in the cluster) for the window.
    pub fn unregister(&self, shop: &str) {
        let gone = self.shops.write().unwrap_or_else(|e| e.into_inner()).remove(shop);
        if let (Some(shared), Some(e)) = (self.shared.get(), gone) {
            shared.leaving(shop, e.stored(berth_types::clock::now_ms()));
        }
    }

    /// Cluster mode: show `shop`, run by another node, from what the cluster keeps of it.
    pub fn watch_elsewhere(&self, shop: &str, connector: &str, platform: &str, tier: Tier) {
        if self.shops.read().unwrap_or_else(|e| e.into_inner()).contains_key(shop) {
            return;
        }
        self.elsewhere.write().unwrap_or_else(|e| e.into_inner()).insert(shop.to_string(), (connector.into(), platform.into(), tier));
    }

    /// Cluster mode: `shop` is no longer one of the cluster's.
    pub fn forget_elsewhere(&self, shop: &str) {
        self.elsewhere.write().unwrap_or_else(|e| e.into_inner()).remove(shop);
    }

    /// Cluster mode: where the shops' health is kept.
    pub fn shared(&self) -> Option<&std::sync::Arc<cluster::SharedHealth>> {
        self.shared.get()
    }

    /// Cluster mode: what the cluster is to keep of a shop this node runs, as of now.
    pub fn stored(&self, shop: &str) -> Option<StoredHealth> {
        let now = berth_types::clock::now_ms();
        self.shops.read().unwrap_or_else(|e| e.into_inner()).get(shop).map(|e| e.stored(now))
    }

    pub fn probe_interval(&self, tier: Tier) -> std::time::Duration {
        std::time::Duration::from_secs(self.config.policy(tier).probe_secs)
    }

    /// Note that ops paused the shop or its connector: no probe ran, none is counted.
    pub fn set_paused(&self, shop: &str, paused: bool) {
        if let Some(e) = self.shops.write().unwrap_or_else(|e| e.into_inner()).get_mut(shop) {
            e.paused = paused;
        }
    }

    /// Count a probe. The minute's counts go to the store's next batch without waiting
    /// for it (a crash may lose the last seconds of probe history, never an order).
    pub fn record(&self, shop: &str, result: ProbeResult) {
        let minute = result.at_ms.max(0) as u64 / 60_000;
        let oldest = self.oldest_minute(result.at_ms);
        let mut shops = self.shops.write().unwrap_or_else(|e| e.into_inner());
        let Some(e) = shops.get_mut(shop) else { return };
        let c = e.minutes.entry(minute).or_insert((0, 0));
        c.0 += result.up as u32;
        c.1 += 1;
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&c.0.to_le_bytes());
        value[4..].copy_from_slice(&c.1.to_le_bytes());
        let mut gone = Vec::new();
        while let Some((&m, _)) = e.minutes.first_key_value() {
            if m >= oldest {
                break;
            }
            e.minutes.remove(&m);
            gone.push(key(shop, m));
        }
        if let Some(shared) = self.shared.get() {
            // The standing changing (up ↔ down) is written at once, the counts with the
            // next round.
            shared.changed(shop, e.last.as_ref().is_none_or(|l| l.up != result.up));
        } else {
            let (tree, k) = (self.tree.clone(), key(shop, minute));
            self.store.write_detached("probe history", move |ctx| {
                ctx.insert(&tree, k, value);
                for k in gone {
                    ctx.remove(&tree, k);
                }
                Ok(())
            });
        }
        e.consecutive_failures = if result.up { 0 } else { e.consecutive_failures + 1 };
        e.down_since_ms = if result.up { None } else { e.down_since_ms.or(Some(result.at_ms)) };
        e.paused = false;
        self.events.emit(&crate::events::Event::Probed { shop, connector: &e.connector, tier: e.tier, outcome: &result.outcome });
        e.last = Some(result);
    }

    fn window(&self, e: &Entry, now_ms: i64) -> (u64, u64) {
        let oldest = self.oldest_minute(now_ms);
        e.minutes.range(oldest..).fold((0, 0), |(up, all), (_, c)| (up + c.0 as u64, all + c.1 as u64))
    }

    /// Every watched shop, by name (in cluster mode, the cluster's: those other nodes run
    /// as the cluster keeps them).
    pub fn shops(&self) -> Vec<ShopHealth> {
        self.list(true)
    }

    /// The shops this node probes (in cluster mode, those it runs): what its metrics
    /// and alert rules count, so no shop is counted by two nodes.
    pub fn shops_here(&self) -> Vec<ShopHealth> {
        self.list(false)
    }

    fn list(&self, everywhere: bool) -> Vec<ShopHealth> {
        let now = berth_types::clock::now_ms();
        let holds = self.holds.read().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(std::sync::Weak::upgrade);
        let shops = self.shops.read().unwrap_or_else(|e| e.into_inner());
        // Cluster mode: the shops other nodes run, as the cluster keeps them.
        let oldest = self.oldest_minute(now);
        let elsewhere: Vec<(String, Entry)> = match self.shared.get().filter(|_| everywhere) {
            Some(shared) => self
                .elsewhere
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(name, _)| !shops.contains_key(*name))
                .map(|(name, (connector, platform, tier))| {
                    let mut e = Entry::new(connector, platform, *tier);
                    if let Some(stored) = shared.stored(name) {
                        e.resume(stored, oldest);
                    }
                    (name.clone(), e)
                })
                .collect(),
            None => Vec::new(),
        };
        let mut out: Vec<ShopHealth> = shops
            .iter()
            .chain(elsewhere.iter().map(|(n, e)| (n, e)))
            .map(|(name, e)| {
                let policy = self.config.policy(e.tier);
                let (up, all) = self.window(e, now);
                ShopHealth {
                    shop: name.clone(),
                    connector: e.connector.clone(),
                    platform: e.platform.clone(),
                    tier: e.tier,
                    probe_secs: policy.probe_secs,
                    state: match (&e.last, e.paused) {
                        (_, true) => ShopState::Paused,
                        (None, false) => ShopState::Unknown,
                        (Some(r), false) if r.up => ShopState::Up,
                        (Some(_), false) => ShopState::Down,
                    },
                    consecutive_failures: e.consecutive_failures,
                    down_since_ms: e.down_since_ms,
                    degraded: self.config.degrade_tiers.contains(&e.tier)
                        && e.down_since_ms.is_some_and(|since| now - since >= self.config.degrade_after_secs as i64 * 1000),
                    last_probe: e.last.clone(),
                    availability: Availability::of(self.config.window_secs, all, up, policy.sla_percent),
                    held: None,
                }
            })
            .collect();
        drop(shops);
        out.sort_by(|a, b| a.shop.cmp(&b.shop));
        if let Some(source) = holds {
            for s in out.iter_mut().filter(|s| s.state != ShopState::Paused) {
                if let Some((state, why)) = source.hold(&s.shop) {
                    s.state = state;
                    s.held = Some(why);
                }
            }
        }
        out
    }

    /// One shop's health, if it is watched.
    pub fn shop(&self, shop: &str) -> Option<ShopHealth> {
        self.shops().into_iter().find(|s| s.shop == shop)
    }

    /// `shops` (from [`HealthBook::shops`]) summed per connector and tier.
    pub fn summary(&self, shops: &[ShopHealth]) -> Vec<TierSummary> {
        let mut out: BTreeMap<(String, String), (TierSummary, u64, u64)> = BTreeMap::new();
        for s in shops {
            let (t, probes, up) = out.entry((s.connector.clone(), format!("{:?}", s.tier))).or_insert_with(|| {
                (
                    TierSummary {
                        connector: s.connector.clone(),
                        tier: s.tier,
                        shops: 0,
                        up: 0,
                        down: 0,
                        paused: 0,
                        held: 0,
                        unknown: 0,
                        below_sla: 0,
                        availability: Availability::default(),
                    },
                    0,
                    0,
                )
            });
            t.shops += 1;
            match s.state {
                ShopState::Up => t.up += 1,
                ShopState::Down => t.down += 1,
                ShopState::Paused => t.paused += 1,
                ShopState::Throttled | ShopState::Held => t.held += 1,
                ShopState::Unknown => t.unknown += 1,
            }
            t.below_sla += (s.availability.sla_met == Some(false)) as u64;
            *probes += s.availability.probes;
            *up += s.availability.up;
        }
        out.into_values()
            .map(|(mut t, probes, up)| {
                t.availability = Availability::of(self.config.window_secs, probes, up, self.config.policy(t.tier).sla_percent);
                t
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(at_ms: i64, up: bool) -> ProbeResult {
        ProbeResult { at_ms, up, outcome: if up { "ok" } else { "transient" }.into(), message: String::new(), latency_ms: 1 }
    }

    #[test]
    fn availability_counts_the_window_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = berth_storage::Store::open(dir.path(), berth_storage::StoreConfig { reserve_bytes: 0, ..Default::default() }).unwrap();
        let cfg = HealthConfig { window_secs: 3600, ..HealthConfig::default() };
        let book = HealthBook::open(&db, cfg.clone(), crate::events::Events::new()).unwrap();
        book.register("acme", "shopify", "shopify", Tier::A);
        let now = berth_types::clock::now_ms();
        // Two hours ago: outside the window, dropped.
        book.record("acme", probe(now - 2 * 3600 * 1000, false));
        for i in 0..999 {
            book.record("acme", probe(now - 1000 * i, true));
        }
        book.record("acme", probe(now, false));
        let s = &book.shops()[0];
        assert_eq!((s.availability.probes, s.availability.up), (1000, 999));
        assert_eq!(s.availability.ratio, Some(0.999));
        assert_eq!(s.availability.sla_met, Some(true), "99.9% meets tier A's 99.9%");
        assert!(s.availability.error_budget_left.unwrap().abs() < 1e-9, "the whole budget is spent");
        assert_eq!((s.state, s.consecutive_failures), (ShopState::Down, 1));
        drop(book);
        // The probe writes did not wait for their batch; this waits for all of them.
        db.write_blocking(|_ctx| Ok::<_, berth_storage::StoreError>(())).unwrap();
        let book = HealthBook::open(&db, cfg, crate::events::Events::new()).unwrap();
        book.register("acme", "shopify", "shopify", Tier::A);
        let s = &book.shops()[0];
        assert_eq!((s.availability.probes, s.availability.up), (1000, 999), "history comes back after a restart");
        assert_eq!(s.state, ShopState::Unknown);
        let sum = &book.summary(&book.shops())[0];
        assert_eq!((sum.shops, sum.unknown, sum.below_sla), (1, 1, 0));
    }

    #[test]
    fn the_clusters_record_keeps_the_last_hour_by_minute_and_older_hours_summed() {
        let hour = 60u64;
        // Minute 0 of some hour, and now 2.5 hours later.
        let base = 480_000 * hour;
        let now_ms = ((base + 150) * 60_000) as i64;
        let mut e = Entry::new("shopify", "shopify", Tier::A);
        for (minute, up, all) in [(base + 5, 1, 2), (base + 40, 2, 2), (base + 70, 0, 3), (base + 125, 1, 1), (base + 149, 2, 2)] {
            e.minutes.insert(minute, (up, all));
        }
        e.consecutive_failures = 4;
        e.down_since_ms = Some(now_ms - 120_000);
        e.last = Some(probe(now_ms, false));
        let stored = e.stored(now_ms);
        assert_eq!(
            stored.minutes,
            [(base, 3, 4), (base + 60, 0, 3), (base + 125, 1, 1), (base + 149, 2, 2)],
            "minutes before the last hour are summed into their hour"
        );
        // What a new owner makes of it: the same counts in the window, the same standing.
        let mut next = Entry::new("shopify", "shopify", Tier::A);
        next.resume(serde_json::from_slice(&serde_json::to_vec(&stored).unwrap()).unwrap(), base + 60);
        assert_eq!(next.minutes.values().fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1)), (3, 6), "the hour before the window's start is left out");
        assert_eq!((next.consecutive_failures, next.down_since_ms), (4, Some(now_ms - 120_000)));
        assert_eq!(next.last, Some(probe(now_ms, false)));
    }

    #[test]
    fn tiers_have_defaults_and_overrides() {
        let cfg: HealthConfig = toml::from_str("[A]\nprobe_secs = 5\n[C]\nsla_percent = 95.0\n").unwrap();
        assert_eq!(cfg.policy(Tier::A), TierPolicy { probe_secs: 5, sla_percent: 99.9 });
        assert_eq!(cfg.policy(Tier::B), TierPolicy { probe_secs: 300, sla_percent: 99.5 });
        assert_eq!(cfg.policy(Tier::C), TierPolicy { probe_secs: 3600, sla_percent: 95.0 });
        let bad: HealthConfig = toml::from_str("[B]\nsla_percent = 120.0\n").unwrap();
        assert_eq!(bad.check().unwrap_err(), "health.B.sla_percent must be in (0, 100]");
        let a = Availability::of(60, 200, 190, 99.0);
        assert_eq!(a.sla_met, Some(false));
        assert!((a.error_budget_left.unwrap() + 4.0).abs() < 1e-9, "5% lost of a 1% budget: 4 budgets overspent");
    }
}
