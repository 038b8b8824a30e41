//! Alert rules: `[[alerts.rules]]` in berth.toml, checked when the config loads, and
//! what each one makes of an [`Observation`] of the host.

use berth_types::shop::Tier;
use berth_runtime::call_stats::Tally;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RuleKind {
    /// A connector's calls (probes included) succeed less often than `below_percent`
    /// over `window_secs` (with at least `min_calls`); throttles count as successes.
    SuccessRate,
    /// The oldest item of a queue is older than `above_secs`.
    QueueAge,
    /// A queue's dead letters grew within `window_secs`.
    DeadLetters,
    /// A shop's last `failures` probes failed.
    ProbeFailing,
    /// A canary was rolled back automatically; fires for `hold_secs`.
    CanaryRollback,
    /// A connector version's circuit breaker isolates it (its calls are refused).
    ConnectorIsolated,
    /// A shop's order intake is held: it brought in more new orders in an hour than
    /// `max_orders_per_shop_per_hour`.
    OrderFlood,
    /// A platform quota is held by a throttle hold set for longer than `above_secs`
    /// (every shop on it makes no call meanwhile).
    QuotaHeld,
    /// A shop whose credentials berth renews needs the merchant: its authorization is
    /// gone, or its refresh token or authorization ends within `within_days`.
    Credentials,
    /// A platform quota's busiest key has used more than `above_percent` of it (see
    /// `berth_ratelimit_quota_used_ratio`) at every look for `for_secs`: the platform
    /// will throttle soon.
    QuotaUsage,
    /// A write guard holds some of a shop's stock changes for a person to release or
    /// discard.
    StockHeld,
    /// A shop's stock pushes are paused: its platform's push success rate fell below the
    /// write guard's `pause_writes_below`.
    WritesPaused,
    /// Reconciliation found SKUs whose platform quantity differs from the ERP's in two
    /// runs in a row.
    StockDrift,
    /// A shop's last snapshot failed (every try of the night, or the one asked for).
    SnapshotFailed,
    /// A shop's platform has been unreachable past `fallback_after_mins`: its last
    /// snapshot's quantities are served as its stock (or there is none to serve).
    StockFallback,
}

impl RuleKind {
    pub fn name(self) -> &'static str {
        match self {
            RuleKind::SuccessRate => "success-rate",
            RuleKind::QueueAge => "queue-age",
            RuleKind::DeadLetters => "dead-letters",
            RuleKind::ProbeFailing => "probe-failing",
            RuleKind::CanaryRollback => "canary-rollback",
            RuleKind::ConnectorIsolated => "connector-isolated",
            RuleKind::OrderFlood => "order-flood",
            RuleKind::QuotaHeld => "quota-held",
            RuleKind::Credentials => "credentials",
            RuleKind::QuotaUsage => "quota-usage",
            RuleKind::StockHeld => "stock-held",
            RuleKind::WritesPaused => "writes-paused",
            RuleKind::StockDrift => "stock-drift",
            RuleKind::SnapshotFailed => "snapshot-failed",
            RuleKind::StockFallback => "stock-fallback",
        }
    }
}

/// One `[[alerts.rules]]` entry as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    pub kind: RuleKind,
    #[serde(default = "warning")]
    pub severity: Severity,
    pub below_percent: Option<f64>,
    pub window_secs: Option<u64>,
    pub min_calls: Option<u64>,
    /// `orders` or `stock`; both when absent.
    pub queue: Option<String>,
    pub above_secs: Option<u64>,
    pub failures: Option<u32>,
    pub tiers: Option<Vec<Tier>>,
    pub connectors: Option<Vec<String>>,
    pub hold_secs: Option<u64>,
    pub within_days: Option<u64>,
    pub above_percent: Option<f64>,
    pub for_secs: Option<u64>,
}

fn warning() -> Severity {
    Severity::Warning
}

/// A checked rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    pub severity: Severity,
    pub check: Check,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    SuccessRate { below: f64, window_secs: u64, min_calls: u64, connectors: Option<Vec<String>> },
    QueueAge { queue: Option<String>, above_secs: u64 },
    DeadLetters { queue: Option<String>, window_secs: u64 },
    ProbeFailing { failures: u32, tiers: Option<Vec<Tier>> },
    CanaryRollback { hold_secs: u64 },
    ConnectorIsolated { connectors: Option<Vec<String>> },
    OrderFlood { connectors: Option<Vec<String>> },
    QuotaHeld { above_secs: u64 },
    Credentials { within_days: u64 },
    /// `above` is a ratio (the config's percent / 100).
    QuotaUsage { above: f64, for_secs: u64 },
    StockHeld,
    WritesPaused,
    StockDrift,
    SnapshotFailed,
    StockFallback,
}

impl Check {
    pub fn kind(&self) -> RuleKind {
        match self {
            Check::SuccessRate { .. } => RuleKind::SuccessRate,
            Check::QueueAge { .. } => RuleKind::QueueAge,
            Check::DeadLetters { .. } => RuleKind::DeadLetters,
            Check::ProbeFailing { .. } => RuleKind::ProbeFailing,
            Check::CanaryRollback { .. } => RuleKind::CanaryRollback,
            Check::ConnectorIsolated { .. } => RuleKind::ConnectorIsolated,
            Check::OrderFlood { .. } => RuleKind::OrderFlood,
            Check::QuotaHeld { .. } => RuleKind::QuotaHeld,
            Check::Credentials { .. } => RuleKind::Credentials,
            Check::QuotaUsage { .. } => RuleKind::QuotaUsage,
            Check::StockHeld => RuleKind::StockHeld,
            Check::WritesPaused => RuleKind::WritesPaused,
            Check::StockDrift => RuleKind::StockDrift,
            Check::SnapshotFailed => RuleKind::SnapshotFailed,
            Check::StockFallback => RuleKind::StockFallback,
        }
    }
}

impl Rule {
    pub fn from_config(c: &RuleConfig) -> Result<Rule, String> {
        let kind = c.kind.name();
        let given: Vec<&str> = [
            ("below_percent", c.below_percent.is_some()),
            ("window_secs", c.window_secs.is_some()),
            ("min_calls", c.min_calls.is_some()),
            ("queue", c.queue.is_some()),
            ("above_secs", c.above_secs.is_some()),
            ("failures", c.failures.is_some()),
            ("tiers", c.tiers.is_some()),
            ("connectors", c.connectors.is_some()),
            ("hold_secs", c.hold_secs.is_some()),
            ("within_days", c.within_days.is_some()),
            ("above_percent", c.above_percent.is_some()),
            ("for_secs", c.for_secs.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        let allowed: &[&str] = match c.kind {
            RuleKind::SuccessRate => &["below_percent", "window_secs", "min_calls", "connectors"],
            RuleKind::QueueAge => &["queue", "above_secs"],
            RuleKind::DeadLetters => &["queue", "window_secs"],
            RuleKind::ProbeFailing => &["failures", "tiers"],
            RuleKind::CanaryRollback => &["hold_secs"],
            RuleKind::ConnectorIsolated | RuleKind::OrderFlood => &["connectors"],
            RuleKind::QuotaHeld => &["above_secs"],
            RuleKind::Credentials => &["within_days"],
            RuleKind::QuotaUsage => &["above_percent", "for_secs"],
            RuleKind::StockHeld | RuleKind::WritesPaused | RuleKind::StockDrift | RuleKind::SnapshotFailed | RuleKind::StockFallback => &[],
        };
        if let Some(extra) = given.iter().find(|k| !allowed.contains(k)) {
            let takes = if allowed.is_empty() { "nothing else".to_string() } else { allowed.join(", ") };
            return Err(format!("`{extra}` does not apply to a {kind} rule (it takes: {takes})"));
        }
        if let Some(q) = &c.queue {
            if q != "orders" && q != "stock" {
                return Err(format!("queue `{q}` is not one berth has; use `orders` or `stock`, or leave it out for both"));
            }
        }
        let positive = |what: &str, v: Option<u64>, default: u64| match v {
            Some(0) => Err(format!("{what} must be at least 1")),
            v => Ok(v.unwrap_or(default)),
        };
        let check = match c.kind {
            RuleKind::SuccessRate => {
                let below = c.below_percent.unwrap_or(98.0);
                if !(below > 0.0 && below <= 100.0) {
                    return Err("below_percent must be in (0, 100]".into());
                }
                Check::SuccessRate {
                    below: below / 100.0,
                    window_secs: positive("window_secs", c.window_secs, 300)?,
                    min_calls: positive("min_calls", c.min_calls, 10)?,
                    connectors: c.connectors.clone(),
                }
            }
            RuleKind::QueueAge => Check::QueueAge {
                queue: c.queue.clone(),
                above_secs: c.above_secs.ok_or("a queue-age rule needs above_secs (how old the oldest item may get)")?,
            },
            RuleKind::DeadLetters => Check::DeadLetters { queue: c.queue.clone(), window_secs: positive("window_secs", c.window_secs, 900)? },
            RuleKind::ProbeFailing => {
                Check::ProbeFailing { failures: positive("failures", c.failures.map(u64::from), 2)? as u32, tiers: c.tiers.clone() }
            }
            RuleKind::CanaryRollback => Check::CanaryRollback { hold_secs: positive("hold_secs", c.hold_secs, 3600)? },
            RuleKind::ConnectorIsolated => Check::ConnectorIsolated { connectors: c.connectors.clone() },
            RuleKind::OrderFlood => Check::OrderFlood { connectors: c.connectors.clone() },
            RuleKind::QuotaHeld => Check::QuotaHeld { above_secs: positive("above_secs", c.above_secs, 120)? },
            RuleKind::Credentials => Check::Credentials { within_days: positive("within_days", c.within_days, 14)? },
            RuleKind::QuotaUsage => {
                let above = c.above_percent.unwrap_or(90.0);
                if !(above > 0.0 && above <= 1000.0) {
                    return Err("above_percent must be in (0, 1000] (a quota's burst may take it past 100%)".into());
                }
                Check::QuotaUsage { above: above / 100.0, for_secs: positive("for_secs", c.for_secs, 300)? }
            }
            RuleKind::StockHeld => Check::StockHeld,
            RuleKind::WritesPaused => Check::WritesPaused,
            RuleKind::StockDrift => Check::StockDrift,
            RuleKind::SnapshotFailed => Check::SnapshotFailed,
            RuleKind::StockFallback => Check::StockFallback,
        };
        Ok(Rule { name: c.name.clone(), severity: c.severity, check })
    }

    /// The rules berth runs when `[alerts]` names none.
    pub fn defaults() -> Vec<Rule> {
        let rule = |name: &str, severity, check| Rule { name: name.into(), severity, check };
        vec![
            rule("success-rate", Severity::Critical, Check::SuccessRate { below: 0.98, window_secs: 300, min_calls: 10, connectors: None }),
            rule("queue-age", Severity::Warning, Check::QueueAge { queue: None, above_secs: 900 }),
            rule("dead-letters", Severity::Warning, Check::DeadLetters { queue: None, window_secs: 900 }),
            rule("probe-failing-tier-a", Severity::Critical, Check::ProbeFailing { failures: 2, tiers: Some(vec![Tier::A]) }),
            rule("probe-failing", Severity::Warning, Check::ProbeFailing { failures: 2, tiers: Some(vec![Tier::B, Tier::C]) }),
            rule("canary-rollback", Severity::Critical, Check::CanaryRollback { hold_secs: 3600 }),
            rule("connector-isolated", Severity::Critical, Check::ConnectorIsolated { connectors: None }),
            rule("order-flood", Severity::Critical, Check::OrderFlood { connectors: None }),
            rule("quota-held", Severity::Warning, Check::QuotaHeld { above_secs: 120 }),
            rule("credentials", Severity::Critical, Check::Credentials { within_days: 14 }),
            rule("quota-usage", Severity::Warning, Check::QuotaUsage { above: 0.9, for_secs: 300 }),
            rule("stock-held", Severity::Critical, Check::StockHeld),
            rule("writes-paused", Severity::Critical, Check::WritesPaused),
            rule("stock-drift", Severity::Warning, Check::StockDrift),
            rule("snapshot-failed", Severity::Warning, Check::SnapshotFailed),
            rule("stock-fallback", Severity::Critical, Check::StockFallback),
        ]
    }
}

/// What the host looks like now, as the rules read it.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    pub now_ms: i64,
    /// Per window length (seconds): each connector's calls in that window.
    pub calls: BTreeMap<u64, BTreeMap<String, Tally>>,
    pub queues: Vec<berth_core::levels::QueueLevel>,
    /// Earlier dead-letter counts per queue, oldest first: (at_ms, count).
    pub dead_history: BTreeMap<String, VecDeque<(i64, u64)>>,
    pub shops: Vec<ShopProbe>,
    /// Canaries rolled back: (connector, at_ms, reason).
    pub rollbacks: Vec<(String, i64, String)>,
    /// Connector versions their circuit breaker isolates now.
    pub isolated: Vec<Isolated>,
    /// Shops whose order intake is held by their hourly budget.
    pub held_intake: Vec<berth_core::order_budget::HeldIntake>,
    /// Platform quotas held now.
    pub holds: Vec<berth_capabilities::ratelimit::HeldQuota>,
    /// The credential state of every shop whose credentials berth renews.
    pub credentials: Vec<(String, berth_core::credentials::CredentialState)>,
    /// Each platform quota's busiest key at the earlier looks, oldest first, by
    /// (platform, quota); a quota no longer in use has no history.
    pub quota_history: BTreeMap<(String, String), VecDeque<QuotaSample>>,
    /// Per shop with stock held by a write guard: its holds.
    pub stock_holds: BTreeMap<String, Vec<berth_core::stock::guard::HoldView>>,
    /// Platforms whose stock pushes a write guard paused.
    pub write_pauses: Vec<berth_core::stock::guard::PauseView>,
    /// Each reconciled shop's drift at its last run.
    pub drift: Vec<berth_core::reconcile::DriftView>,
    /// Shops whose last snapshot failed.
    pub snapshot_failures: Vec<berth_snapshot::Failure>,
    /// Shops served their fallback stock (platform down past `fallback_after_mins`).
    pub fallbacks: Vec<berth_snapshot::fallback::FallbackView>,
}

/// A quota's busiest key at one look.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaSample {
    pub at_ms: i64,
    pub usage: berth_capabilities::usage::QuotaUsage,
}

#[derive(Clone, Debug)]
pub struct Isolated {
    pub connector: String,
    pub version: String,
    pub breaker: berth_runtime::breaker::BreakerView,
}

#[derive(Clone, Debug)]
pub struct ShopProbe {
    pub shop: String,
    pub connector: String,
    pub tier: Tier,
    pub consecutive_failures: u32,
    pub last_message: String,
}

/// A rule's condition holding for one subject (a connector, queue or shop).
#[derive(Clone, Debug, PartialEq)]
pub struct Breach {
    pub subject: String,
    pub summary: String,
    pub value: f64,
    pub threshold: f64,
}

fn wanted(filter: &Option<Vec<String>>, queue: &str) -> bool {
    filter.as_ref().is_none_or(|f| f.iter().any(|q| q == queue))
}

impl Rule {
    /// Where the rule's condition holds now.
    pub fn evaluate(&self, obs: &Observation) -> Vec<Breach> {
        match &self.check {
            Check::SuccessRate { below, window_secs, min_calls, connectors } => success_rate(obs, below, window_secs, min_calls, connectors),
            Check::QueueAge { queue, above_secs } => queue_age(obs, queue, above_secs),
            Check::DeadLetters { queue, window_secs } => dead_letters(obs, queue, window_secs),
            Check::ProbeFailing { failures, tiers } => probe_failing(obs, failures, tiers),
            Check::CanaryRollback { hold_secs } => canary_rollback(obs, hold_secs),
            Check::ConnectorIsolated { connectors } => connector_isolated(obs, connectors),
            Check::OrderFlood { connectors } => order_flood(obs, connectors),
            Check::QuotaHeld { above_secs } => quota_held(obs, above_secs),
            Check::Credentials { within_days } => credentials(obs, within_days),
            Check::QuotaUsage { above, for_secs } => quota_usage(obs, *above, *for_secs),
            Check::StockHeld => stock_held(obs),
            Check::WritesPaused => writes_paused(obs),
            Check::StockDrift => stock_drift(obs),
            Check::SnapshotFailed => snapshot_failed(obs),
            Check::StockFallback => stock_fallback(obs),
        }
    }
}

/// Connectors whose calls succeeded less often than `below` in the window.
fn success_rate(obs: &Observation, below: &f64, window_secs: &u64, min_calls: &u64, connectors: &Option<Vec<String>>) -> Vec<Breach> {
    obs
        .calls
        .get(window_secs)
        .into_iter()
        .flatten()
        .filter(|(c, t)| t.calls >= *min_calls && wanted(connectors, c))
        .filter_map(|(c, t)| {
            let rate = 1.0 - t.failure_rate();
            (rate < *below).then(|| Breach {
                subject: c.clone(),
                summary: format!(
                    "connector {c}: {:.1}% of {} calls succeeded in the last {} s (threshold {:.1}%)",
                    rate * 100.0,
                    t.calls,
                    window_secs,
                    below * 100.0
                ),
                value: rate,
                threshold: *below,
            })
        })
        .collect()
}

/// Queues whose oldest item has waited longer than `above_secs`.
fn queue_age(obs: &Observation, queue: &Option<String>, above_secs: &u64) -> Vec<Breach> {
    obs
        .queues
        .iter()
        .filter(|q| queue_matches(q, queue))
        .filter_map(|q| {
            let age = q.oldest_age_ms? as f64 / 1000.0;
            (age > *above_secs as f64).then(|| Breach {
                subject: q.queue.to_string(),
                summary: format!(
                    "{} queue: the oldest item has waited {:.0} s (threshold {} s); {} ready, {} in flight",
                    q.queue, age, above_secs, q.ready, q.in_flight
                ),
                value: age,
                threshold: *above_secs as f64,
            })
        })
        .collect()
}

/// Queues whose dead letters grew within the window.
fn dead_letters(obs: &Observation, queue: &Option<String>, window_secs: &u64) -> Vec<Breach> {
    obs
        .queues
        .iter()
        .filter(|q| queue_matches(q, queue))
        .filter_map(|q| {
            let since = obs.now_ms - *window_secs as i64 * 1000;
            let before = obs.dead_history.get(q.queue)?.iter().find(|(at, _)| *at >= since)?.1;
            (q.dead > before).then(|| Breach {
                subject: q.queue.to_string(),
                summary: format!(
                    "{} queue: dead letters grew from {before} to {} in the last {window_secs} s; they wait for a person (replay or purge)",
                    q.queue, q.dead
                ),
                value: q.dead as f64,
                threshold: before as f64,
            })
        })
        .collect()
}

/// Shops whose last `failures` probes failed.
fn probe_failing(obs: &Observation, failures: &u32, tiers: &Option<Vec<Tier>>) -> Vec<Breach> {
    obs
        .shops
        .iter()
        .filter(|s| s.consecutive_failures >= *failures && tiers.as_ref().is_none_or(|t| t.contains(&s.tier)))
        .map(|s| Breach {
            subject: s.shop.clone(),
            summary: format!(
                "shop {} ({}, tier {:?}): the last {} probes failed: {}",
                s.shop, s.connector, s.tier, s.consecutive_failures, s.last_message
            ),
            value: s.consecutive_failures as f64,
            threshold: *failures as f64,
        })
        .collect()
}

/// Connectors whose canary was rolled back within `hold_secs`.
fn canary_rollback(obs: &Observation, hold_secs: &u64) -> Vec<Breach> {
        let mut latest: BTreeMap<&str, (i64, &str)> = BTreeMap::new();
        for (c, at, reason) in &obs.rollbacks {
            if obs.now_ms - at < *hold_secs as i64 * 1000 {
                latest.insert(c, (*at, reason));
            }
        }
        latest
            .into_iter()
            .map(|(c, (_, reason))| Breach {
                subject: c.to_string(),
                summary: format!("connector {c}: the canary was rolled back automatically: {reason}"),
                value: 1.0,
                threshold: 0.0,
            })
            .collect()
    }

/// Connectors with a version isolated by its circuit breaker.
fn connector_isolated(obs: &Observation, connectors: &Option<Vec<String>>) -> Vec<Breach> {
        let mut per: BTreeMap<&str, Vec<&Isolated>> = BTreeMap::new();
        for i in obs.isolated.iter().filter(|i| wanted(connectors, &i.connector)) {
            per.entry(&i.connector).or_default().push(i);
        }
        per.into_iter()
            .map(|(c, versions)| {
                let what = versions
                    .iter()
                    .map(|i| format!("version {} {} ({})", i.version, i.breaker.state, i.breaker.reason.as_deref().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join("; ");
                Breach {
                    subject: c.to_string(),
                    summary: format!("connector {c}: isolated by its circuit breaker, its calls are refused until a trial call passes: {what}"),
                    value: versions.len() as f64,
                    threshold: 0.0,
                }
            })
            .collect()
    }

/// Platform quotas held by a throttle for longer than `above_secs`.
fn quota_held(obs: &Observation, above_secs: &u64) -> Vec<Breach> {
    obs
        .holds
        .iter()
        .filter(|h| h.kind == "throttle" && h.held_ms > above_secs * 1000)
        .map(|h| Breach {
            subject: format!("{}:{}", h.platform, h.key),
            summary: format!(
                "platform {} quota {} is held for {} s ({} s left) after a call of shop {} ({}): {}; every shop on it waits. Release it with `berth release-hold {} {}` if the platform is fine",
                h.platform,
                h.key,
                h.held_ms / 1000,
                h.remaining_ms.div_ceil(1000),
                h.shop,
                h.connector,
                h.reason,
                h.platform,
                h.key
            ),
            value: h.held_ms as f64 / 1000.0,
            threshold: *above_secs as f64,
        })
        .collect()
}

/// Quotas above `above` at every look for `for_secs`: the last look at or before the
/// span's start and every one since.
fn quota_usage(obs: &Observation, above: f64, for_secs: u64) -> Vec<Breach> {
    let since = obs.now_ms - for_secs as i64 * 1000;
    obs.quota_history
        .iter()
        .filter_map(|((platform, quota), h)| {
            let start = h.iter().rposition(|s| s.at_ms <= since)?;
            if !h.iter().skip(start).all(|s| s.usage.ratio > above) {
                return None;
            }
            let now = &h.back()?.usage;
            let over = match now.window_secs {
                Some(w) => format!("{:.0} of {:.0} calls in {w} s", now.used, now.capacity),
                None => format!("{:.0} of {:.0} as the platform reports ({})", now.used, now.capacity, now.source),
            };
            Some(Breach {
                subject: format!("{platform}:{quota}"),
                summary: format!(
                    "platform {platform} quota {quota}: {} used by {} ({over}), above {:.0}% for over {for_secs} s; the platform throttles when it is spent: spread the calls (fewer shops per key, a lower rate in [platforms.{platform}]) or ask the platform for more",
                    percent(now.ratio),
                    now.key,
                    above * 100.0,
                ),
                value: now.ratio,
                threshold: above,
            })
        })
        .collect()
}

/// Shops with stock changes a write guard holds.
fn stock_held(obs: &Observation) -> Vec<Breach> {
    obs.stock_holds
        .iter()
        .filter(|(_, holds)| !holds.is_empty())
        .map(|(shop, holds)| {
            let skus: usize = holds.iter().map(|h| h.skus).sum();
            let first = &holds[0];
            Breach {
                subject: shop.clone(),
                summary: format!(
                    "shop {shop}: {skus} stock changes held in {} hold(s), the first {}: {}; look at them (`berth stock-holds {shop}`) and release or discard (`berth stock-holds {shop} release|discard ID`)",
                    holds.len(),
                    first.id,
                    first.reason
                ),
                value: skus as f64,
                threshold: 0.0,
            }
        })
        .collect()
}

/// Shops whose pushes wait on a platform's pause.
fn writes_paused(obs: &Observation) -> Vec<Breach> {
    obs.write_pauses
        .iter()
        .flat_map(|p| {
            p.shops.keys().map(move |shop| Breach {
                subject: shop.clone(),
                summary: format!(
                    "shop {shop}: stock pushes to {} paused ({}); they resume when the shop's probes pass for {} min, or `berth resume-writes --shop {shop}`",
                    p.platform, p.reason, p.resume_after_mins
                ),
                value: 1.0,
                threshold: 0.0,
            })
        })
        .collect()
}

/// Shops whose platform quantities kept differing from the ERP's across two runs.
fn stock_drift(obs: &Observation) -> Vec<Breach> {
    obs.drift
        .iter()
        .filter(|d| d.persistent > 0)
        .map(|d| Breach {
            subject: d.shop.clone(),
            summary: format!(
                "shop {}: {} SKUs differ from the ERP's quantities at the platform, {} of them in the run before too; see `berth reconcile --shop {}` and repair with `--repair`",
                d.shop, d.drifting, d.persistent, d.shop
            ),
            value: d.persistent as f64,
            threshold: 0.0,
        })
        .collect()
}

/// Shops whose last snapshot failed with no try left.
fn snapshot_failed(obs: &Observation) -> Vec<Breach> {
    obs.snapshot_failures
        .iter()
        .filter(|f| !f.retrying)
        .map(|f| Breach {
            subject: f.shop.clone(),
            summary: format!("shop {}: its snapshot failed after {} tries: {}; take one with `berth snapshot --shop {}` once fixed", f.shop, f.attempts, f.error, f.shop),
            value: f64::from(f.attempts),
            threshold: 0.0,
        })
        .collect()
}

/// Shops whose platform is down past the fallback threshold.
fn stock_fallback(obs: &Observation) -> Vec<Breach> {
    obs.fallbacks
        .iter()
        .map(|f| {
            let mins = (obs.now_ms - f.down_since_ms).max(0) / 60_000;
            let serving = match f.snapshot_at_ms {
                Some(at) => format!("GET /v1/shops/{}/stock/fallback serves the quantities of its snapshot taken {} min ago, marked stale", f.shop, (obs.now_ms - at).max(0) / 60_000),
                None => "it has no snapshot to serve as fallback stock".to_string(),
            };
            Breach { subject: f.shop.clone(), summary: format!("shop {}: its platform has been unreachable for {mins} min; {serving}", f.shop), value: mins as f64, threshold: 0.0 }
        })
        .collect()
}

fn percent(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

fn order_flood(obs: &Observation, connectors: &Option<Vec<String>>) -> Vec<Breach> {
    obs.held_intake
        .iter()
        .filter(|h| wanted(connectors, &h.connector))
        .map(|h| Breach {
            subject: h.shop.clone(),
            summary: format!("shop {} ({}): {}", h.shop, h.connector, h.reason()),
            value: (h.taken + h.refused) as f64,
            threshold: f64::from(h.limit),
        })
        .collect()
}

/// Whether a rule's `queue` filter (none: every queue) takes this queue.
fn queue_matches(level: &berth_core::levels::QueueLevel, filter: &Option<String>) -> bool {
    filter.as_deref().is_none_or(|q| q == level.queue)
}

/// Shops whose credentials need the merchant: gone now, or ending within `within_days`.
fn credentials(obs: &Observation, within_days: &u64) -> Vec<Breach> {
    let within_ms = *within_days as i64 * 86_400_000;
    obs.credentials
        .iter()
        .filter_map(|(shop, st)| {
            if let Some(why) = &st.needs_authorization {
                return Some(Breach {
                    subject: shop.clone(),
                    summary: format!(
                        "shop {shop}: the platform no longer takes berth's credentials ({why}); the merchant must authorize the app again: an admin opens /v1/oauth/CONNECTOR/start?shop={shop} where the connector onboards by OAuth, else the new tokens go into the shop's config"
                    ),
                    value: 0.0,
                    threshold: *within_days as f64,
                });
            }
            let ends = [("refresh token", st.refresh_expires_ms), ("authorization", st.authorization_expires_ms)]
                .into_iter()
                .filter_map(|(what, at)| Some((what, at?)))
                .min_by_key(|(_, at)| *at)?;
            let left_ms = ends.1 - obs.now_ms;
            (left_ms < within_ms).then(|| Breach {
                subject: shop.clone(),
                summary: format!(
                    "shop {shop}: its {} ends in {:.1} days; the merchant must authorize the app again before then",
                    ends.0,
                    left_ms.max(0) as f64 / 86_400_000.0
                ),
                value: left_ms.max(0) as f64 / 86_400_000.0,
                threshold: *within_days as f64,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::levels::QueueLevel;

    fn parse(text: &str) -> Result<Rule, String> {
        Rule::from_config(&toml::from_str::<RuleConfig>(text).map_err(|e| e.to_string())?)
    }

    #[test]
    fn rules_are_checked_with_reasons() {
        let r = parse("name = \"x\"\nkind = \"success-rate\"\nseverity = \"critical\"\n").unwrap();
        assert_eq!(r.check, Check::SuccessRate { below: 0.98, window_secs: 300, min_calls: 10, connectors: None });
        let err = parse("name = \"x\"\nkind = \"queue-age\"\n").unwrap_err();
        assert!(err.contains("needs above_secs"), "{err}");
        let err = parse("name = \"x\"\nkind = \"queue-age\"\nabove_secs = 5\nfailures = 2\n").unwrap_err();
        assert!(err.contains("`failures` does not apply to a queue-age rule (it takes: queue, above_secs)"), "{err}");
        let err = parse("name = \"x\"\nkind = \"dead-letters\"\nqueue = \"refunds\"\n").unwrap_err();
        assert!(err.contains("queue `refunds` is not one berth has"), "{err}");
        let err = parse("name = \"x\"\nkind = \"flaky\"\n").unwrap_err();
        assert!(err.contains("unknown variant `flaky`"), "{err}");
    }

    #[test]
    fn credentials_that_need_the_merchant_fire_with_what_to_do() {
        use berth_core::credentials::CredentialState;
        let day = 86_400_000i64;
        let state = |refresh_in: Option<i64>, gone: Option<&str>| CredentialState {
            generation: 3,
            access_expires_ms: Some(1),
            refresh_expires_ms: refresh_in.map(|d| 1_000 * day + d * day),
            authorization_expires_ms: None,
            can_refresh: true,
            last_refresh_ms: None,
            failures: 0,
            last_error: None,
            needs_authorization: gone.map(str::to_string),
            previous_kept: false,
            retry_after_ms: None,
        };
        let obs = Observation {
            now_ms: 1_000 * day,
            credentials: vec![
                ("fine".into(), state(Some(30), None)),
                ("soon".into(), state(Some(3), None)),
                ("gone".into(), state(Some(30), Some("Invalid refresh_token."))),
                ("static".into(), state(None, None)),
            ],
            ..Observation::default()
        };
        let rule = Rule::defaults().into_iter().find(|r| r.check.kind() == RuleKind::Credentials).expect("a default credentials rule");
        let breaches = rule.evaluate(&obs);
        let subjects: Vec<&str> = breaches.iter().map(|b| b.subject.as_str()).collect();
        assert_eq!(subjects, ["soon", "gone"]);
        assert!(breaches[0].summary.contains("refresh token ends in 3.0 days"), "{}", breaches[0].summary);
        assert!(breaches[1].summary.contains("the merchant must authorize the app again"), "{}", breaches[1].summary);
        let cfg: RuleConfig = toml::from_str("name = \"c\"\nkind = \"credentials\"\nwithin_days = 0\n").unwrap();
        assert_eq!(Rule::from_config(&cfg).unwrap_err(), "within_days must be at least 1");
    }

    #[test]
    fn a_quota_fires_once_it_has_stayed_above_the_threshold_for_the_whole_span() {
        use berth_capabilities::usage::QuotaUsage;
        let rule = parse("name = \"q\"\nkind = \"quota-usage\"\nabove_percent = 80\nfor_secs = 60\n").unwrap();
        assert_eq!(rule.check, Check::QuotaUsage { above: 0.8, for_secs: 60 });
        let sample = |at_s: i64, used: f64| QuotaSample {
            at_ms: at_s * 1000,
            usage: QuotaUsage { window_secs: Some(60), ..QuotaUsage::new("shopify", "requests".into(), "shop:a".into(), used, 120.0, "counted") },
        };
        let obs = |now_s: i64, samples: Vec<QuotaSample>| Observation {
            now_ms: now_s * 1000,
            quota_history: BTreeMap::from([(("shopify".to_string(), "requests".to_string()), samples.into())]),
            ..Observation::default()
        };
        // Above since 0 s, looked at until 70 s: fires, naming the busiest key.
        let above: Vec<QuotaSample> = (0..=7).map(|i| sample(i * 10, 110.0)).collect();
        let b = rule.evaluate(&obs(70, above.clone()));
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].subject, "shopify:requests");
        assert!(b[0].summary.contains("91.7% used by shop:a (110 of 120 calls in 60 s), above 80% for over 60 s"), "{}", b[0].summary);
        // Not yet a whole span of looks; or one look below inside it.
        assert!(rule.evaluate(&obs(70, above[3..].to_vec())).is_empty());
        let mut dipped = above.clone();
        dipped[5] = sample(50, 90.0);
        assert!(rule.evaluate(&obs(70, dipped.clone())).is_empty());
        // A dip before the span does not count.
        assert_eq!(subjects_of(&rule, &obs(120, [dipped, (8..=12).map(|i| sample(i * 10, 110.0)).collect()].concat())), ["shopify:requests"]);
        let err = parse("name = \"q\"\nkind = \"quota-usage\"\nabove_percent = 0\n").unwrap_err();
        assert!(err.contains("above_percent must be in (0, 1000]"), "{err}");
        let err = parse("name = \"q\"\nkind = \"quota-usage\"\nabove_secs = 5\n").unwrap_err();
        assert!(err.contains("(it takes: above_percent, for_secs)"), "{err}");
    }

    fn subjects_of(r: &Rule, obs: &Observation) -> Vec<String> {
        r.evaluate(obs).into_iter().map(|b| b.subject).collect()
    }

    #[test]
    fn each_kind_finds_its_breaches() {
        let mut obs = Observation { now_ms: 5_000_000, ..Observation::default() };
        obs.calls.insert(300, BTreeMap::from([
            ("good".to_string(), Tally { calls: 100, failures: 1 }),
            ("bad".to_string(), Tally { calls: 100, failures: 5 }),
            ("quiet".to_string(), Tally { calls: 3, failures: 3 }),
        ]));
        obs.queues = vec![
            QueueLevel { queue: "orders", ready: 4, in_flight: 0, dead: 3, oldest_age_ms: Some(120_000) },
            QueueLevel { queue: "stock", ready: 0, in_flight: 0, dead: 1, oldest_age_ms: None },
        ];
        obs.dead_history.insert("orders".into(), VecDeque::from([(0, 0), (4_200_000, 1), (4_990_000, 3)]));
        obs.dead_history.insert("stock".into(), VecDeque::from([(4_950_000, 1)]));
        obs.shops = vec![
            ShopProbe { shop: "a".into(), connector: "c".into(), tier: Tier::A, consecutive_failures: 2, last_message: "503".into() },
            ShopProbe { shop: "b".into(), connector: "c".into(), tier: Tier::B, consecutive_failures: 5, last_message: "503".into() },
        ];
        obs.rollbacks = vec![("old".into(), 0, "r".into()), ("new".into(), 4_999_000, "too many traps".into())];
        let view = |state| berth_runtime::breaker::BreakerView { state, since_ms: Some(1), reason: Some("5 of 5 calls failed".into()), trial_at_ms: None, trips: 1, window_failures: 0, window_calls: 0 };
        obs.isolated = vec![Isolated { connector: "hostile".into(), version: "6.6.6".into(), breaker: view(berth_runtime::breaker::BreakerState::Open) }];
        let subjects = |r: Rule| r.evaluate(&obs).into_iter().map(|b| b.subject).collect::<Vec<_>>();
        let d = Rule::defaults();
        assert_eq!(subjects(d[0].clone()), ["bad"], "95% < 98%; 99% is fine; 3 calls are too few to judge");
        assert_eq!(subjects(d[1].clone()), Vec::<String>::new(), "120 s is under 900 s");
        let young = Rule { name: "q".into(), severity: Severity::Warning, check: Check::QueueAge { queue: None, above_secs: 60 } };
        assert_eq!(subjects(young), ["orders"]);
        assert_eq!(subjects(d[2].clone()), ["orders"], "orders grew 1 → 3 in the window; stock stayed at 1");
        assert_eq!(subjects(d[3].clone()), ["a"]);
        assert_eq!(subjects(d[4].clone()), ["b"]);
        assert_eq!(subjects(d[5].clone()), ["new"], "the old rollback's hold has passed");
        assert_eq!(subjects(d[6].clone()), ["hostile"]);
        assert_eq!(
            d[6].evaluate(&obs)[0].summary,
            "connector hostile: isolated by its circuit breaker, its calls are refused until a trial call passes: version 6.6.6 open (5 of 5 calls failed)"
        );
        let only = Rule { name: "i".into(), severity: Severity::Critical, check: Check::ConnectorIsolated { connectors: Some(vec!["shopify".into()]) } };
        assert!(subjects(only).is_empty(), "filtered by connector");
        let b = &d[0].evaluate(&obs)[0];
        assert_eq!(b.summary, "connector bad: 95.0% of 100 calls succeeded in the last 300 s (threshold 98.0%)");
        obs.held_intake = vec![berth_core::order_budget::HeldIntake {
            shop: "h-flood".into(),
            connector: "hostile".into(),
            taken: 50_000,
            refused: 1000,
            limit: 50_000,
            since_ms: 0,
            until_ms: 1,
        }];
        assert_eq!(subjects_of(&d[7], &obs), ["h-flood"]);
        assert!(d[7].evaluate(&obs)[0].summary.starts_with("shop h-flood (hostile): order intake held: 50000 new orders in the last hour"));
        let hold = |kind, held_ms| berth_capabilities::ratelimit::HeldQuota {
            platform: "taobao".into(),
            key: "app_key:K".into(),
            remaining_ms: 100_000,
            held_ms,
            since_ms: 0,
            kind,
            shop: "h-throttle".into(),
            connector: "hostile".into(),
            reason: "the connector returned rate-limited(3600000 ms)".into(),
        };
        obs.holds = vec![hold("throttle", 300_000), hold("pacing", 900_000)];
        assert_eq!(subjects_of(&d[8], &obs), ["taobao:app_key:K"], "pacing is not a throttle");
        let summary = &d[8].evaluate(&obs)[0].summary;
        assert!(summary.contains("after a call of shop h-throttle (hostile)") && summary.contains("berth release-hold taobao app_key:K"), "{summary}");
        obs.holds = vec![hold("throttle", 60_000)];
        assert!(subjects_of(&d[8], &obs).is_empty(), "a minute is under the threshold");
        let by_kind = |k: RuleKind| d.iter().find(|r| r.check.kind() == k).cloned().unwrap();
        let hold = berth_core::stock::guard::HoldView {
            id: "hold-1".into(),
            skus: 30,
            zeroed: 30,
            since_ms: 0,
            reason: "held by a write guard: 30 of the shop's 40 SKUs would go to 0".into(),
            sample: Vec::new(),
        };
        obs.stock_holds = BTreeMap::from([("z".to_string(), vec![hold]), ("none".to_string(), Vec::new())]);
        let held = by_kind(RuleKind::StockHeld).evaluate(&obs);
        assert_eq!(held.len(), 1);
        assert!(held[0].summary.contains("shop z: 30 stock changes held in 1 hold(s), the first hold-1") && held[0].summary.contains("berth stock-holds z"), "{}", held[0].summary);
        obs.write_pauses = vec![berth_core::stock::guard::PauseView {
            platform: "woo".into(),
            since_ms: 0,
            reason: "10 of the last 20 push calls succeeded".into(),
            shops: BTreeMap::from([("w1".to_string(), 0), ("w2".to_string(), 0)]),
            resumed: vec!["w3".into()],
            resume_after_mins: 10.0,
        }];
        assert_eq!(subjects_of(&by_kind(RuleKind::WritesPaused), &obs), ["w1", "w2"], "a resumed shop is not paused");
        assert!(parse("name = \"h\"\nkind = \"stock-held\"\nfor_secs = 1\n").unwrap_err().contains("it takes: nothing else"));
        // Drift alerts only once it persisted across two reconciliation runs.
        let view = |shop: &str, drifting, persistent| berth_core::reconcile::DriftView { shop: shop.into(), at_ms: 0, drifting, persistent };
        obs.drift = vec![view("new", 4, 0), view("old", 5, 2), view("clean", 0, 0)];
        let drift = by_kind(RuleKind::StockDrift).evaluate(&obs);
        assert_eq!(drift.len(), 1);
        assert!(drift[0].summary.contains("shop old: 5 SKUs differ") && drift[0].summary.contains("2 of them in the run before") && drift[0].summary.contains("berth reconcile --shop old"), "{}", drift[0].summary);
    }

    #[test]
    fn failed_snapshots_and_fallback_stock_alert_per_shop() {
        let d = Rule::defaults();
        let by_kind = |k: RuleKind| d.iter().find(|r| r.check.kind() == k).cloned().unwrap();
        let mut obs = Observation { now_ms: 100 * 60_000, ..Default::default() };
        assert!(by_kind(RuleKind::SnapshotFailed).evaluate(&obs).is_empty() && by_kind(RuleKind::StockFallback).evaluate(&obs).is_empty());
        let failure = |shop: &str, retrying| berth_snapshot::Failure { shop: shop.into(), at_ms: 0, attempts: 4, retrying, error: "reading the listings: boom".into() };
        // One still to be tried again is not yet an alert.
        obs.snapshot_failures = vec![failure("s1", false), failure("s2", true)];
        let failed = by_kind(RuleKind::SnapshotFailed).evaluate(&obs);
        assert_eq!(failed.len(), 1);
        assert!(failed[0].summary.contains("shop s1: its snapshot failed after 4 tries: reading the listings: boom") && failed[0].summary.contains("berth snapshot --shop s1"), "{}", failed[0].summary);
        let view = |shop: &str, at| berth_snapshot::fallback::FallbackView { shop: shop.into(), down_since_ms: 60 * 60_000, snapshot_at_ms: at };
        obs.fallbacks = vec![view("with", Some(10 * 60_000)), view("without", None)];
        let fb = by_kind(RuleKind::StockFallback).evaluate(&obs);
        assert_eq!(fb.len(), 2);
        assert!(fb[0].summary.contains("unreachable for 40 min") && fb[0].summary.contains("/v1/shops/with/stock/fallback serves the quantities of its snapshot taken 90 min ago"), "{}", fb[0].summary);
        assert!(fb[1].summary.contains("no snapshot to serve"), "{}", fb[1].summary);
        assert_eq!(Rule::defaults().iter().find(|r| r.check.kind() == RuleKind::StockFallback).map(|r| r.severity), Some(Severity::Critical));
    }
}
