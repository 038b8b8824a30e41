//! Alerts: rules from `[alerts]` are evaluated every `evaluate_secs` against what the
//! host sees (call success per connector, queue age and dead letters, probe results,
//! canary rollbacks). A rule holding for a subject fires once — one notification to
//! each receiver — and resolves once when it stops holding; firing alerts are kept in
//! the store, so a restart neither repeats them nor forgets to resolve them. The last
//! notifications are kept for the API and the dashboard. In cluster mode the firing set
//! and the log are the cluster's ([`cluster`]).

pub mod cluster;
pub mod notify;
pub mod rules;

pub use rules::{Rule, Severity};

use notify::{Notice, Notifier, ReceiverConfig, ReceiverStatus};
use rules::{Observation, RuleConfig, ShopProbe};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// `[alerts]` in berth.toml.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    pub evaluate_secs: u64,
    /// Send a firing alert again this often while it holds; 0: once only.
    pub repeat_secs: u64,
    /// Names this berth in notifications (e.g. `berth-prod-sh1`).
    pub source: String,
    pub receivers: BTreeMap<String, ReceiverConfig>,
    /// The rules; berth's defaults (see [`Rule::defaults`]) when absent.
    pub rules: Option<Vec<RuleConfig>>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig { evaluate_secs: 10, repeat_secs: 0, source: "berth".into(), receivers: BTreeMap::new(), rules: None }
    }
}

impl AlertsConfig {
    /// The checked rules, or what is wrong with the section.
    pub fn rules(&self) -> Result<Vec<Rule>, String> {
        if self.evaluate_secs == 0 {
            return Err("alerts.evaluate_secs must be at least 1".into());
        }
        for (name, r) in &self.receivers {
            r.check().map_err(|e| format!("alerts.receivers.{name}: {e}"))?;
        }
        let Some(rules) = &self.rules else { return Ok(Rule::defaults()) };
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (i, c) in rules.iter().enumerate() {
            let at = format!("alerts.rules[{i}] (`{}`)", c.name);
            if c.name.is_empty() || c.name.contains('/') || c.name.len() > 64 {
                return Err(format!("{at}: a rule needs a name of 1 to 64 characters without `/`"));
            }
            if !seen.insert(c.name.clone()) {
                return Err(format!("{at}: another rule has this name; names must be unique"));
            }
            out.push(Rule::from_config(c).map_err(|e| format!("{at}: {e}"))?);
        }
        Ok(out)
    }
}

/// One alert: a rule holding for a subject.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AlertRecord {
    /// `RULE/SUBJECT`: what deduplicates notifications.
    pub fingerprint: String,
    pub rule: String,
    pub kind: String,
    pub severity: Severity,
    /// The connector, queue or shop the rule holds for.
    pub subject: String,
    pub summary: String,
    pub value: f64,
    pub threshold: f64,
    pub started_ms: i64,
    pub resolved_ms: Option<i64>,
}

/// A notification as it was sent, for the recent-alerts list.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogEntry {
    pub at_ms: i64,
    pub status: notify::NoticeStatus,
    pub alert: AlertRecord,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Firing {
    alert: AlertRecord,
    notified_ms: i64,
}

/// Notifications kept for the API and the dashboard.
const LOG_KEEP: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error("alert storage: {0}")]
    Storage(#[from] berth_storage::StoreError),
    #[error("{0}")]
    Setup(String),
}

/// What the rules read: the host's parts.
#[derive(Clone)]
pub struct Sources {
    pub registry: Arc<berth_core::registry::ConnectorRegistry>,
    pub inbox: berth_core::inbox::OrderInbox,
    pub stock: Arc<berth_core::stock::StockLedger>,
    pub shops: Arc<berth_core::shops::ShopSet>,
    pub health: Arc<berth_core::health::HealthBook>,
    /// The credentials berth renews for shops, when it does.
    pub credentials: Option<Arc<berth_core::credentials::CredentialBook>>,
    /// Reconciliation's last reports.
    pub reconciler: Arc<berth_core::reconcile::Reconciler>,
    /// Snapshots: failures, and the fallback stock of shops whose platform is down.
    pub snapshots: Arc<berth_snapshot::Snapshotter>,
}

#[derive(Default)]
struct State {
    firing: BTreeMap<String, Firing>,
    dead_history: BTreeMap<String, VecDeque<(i64, u64)>>,
    rollbacks: Vec<(String, i64, String)>,
    quota_history: BTreeMap<(String, String), VecDeque<rules::QuotaSample>>,
    next_seq: u64,
    /// The stored log's last `LOG_KEEP` entries, oldest first.
    log: VecDeque<LogEntry>,
}

pub struct Alerts {
    rules: Vec<Rule>,
    /// Fixed by the rules at load: the success-rate windows to tally (s), how long
    /// dead-letter counts are kept and canary rollbacks held (ms).
    windows: BTreeSet<u64>,
    dead_keep_ms: i64,
    rollback_hold_ms: i64,
    /// How long quota usage looks are kept: the longest quota-usage `for_secs` (0: none
    /// taken).
    quota_keep_ms: i64,
    config: AlertsConfig,
    notifier: Notifier,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Cluster mode: the cluster's firing set and log, and which alerts are this node's
    /// to decide ([`cluster`]).
    board: std::sync::OnceLock<cluster::Board>,
    store: berth_storage::Store,
    firing_tree: berth_storage::store::Keyspace,
    log_tree: berth_storage::store::Keyspace,
    state: Mutex<State>,
}

impl Alerts {
    /// Load the firing alerts and start the receivers' workers (inside a tokio runtime).
    pub fn open(store: &berth_storage::Store, config: &AlertsConfig, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Result<Alerts, AlertsError> {
        let rules = config.rules().map_err(AlertsError::Setup)?;
        let notifier = Notifier::start(&config.receivers, metrics.clone()).map_err(AlertsError::Setup)?;
        let firing_tree = store.keyspace("alerts_firing")?;
        let log_tree = store.keyspace("alerts_log")?;
        let mut state = State::default();
        for item in firing_tree.iter() {
            let (_, v) = item?;
            match serde_json::from_slice::<Firing>(&v) {
                Ok(f) => {
                    if f.alert.kind == rules::RuleKind::CanaryRollback.name() {
                        state.rollbacks.push((f.alert.subject.clone(), f.alert.started_ms, f.alert.summary.clone()));
                    }
                    state.firing.insert(f.alert.fingerprint.clone(), f);
                }
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable stored alert"),
            }
        }
        state.next_seq = match log_tree.last()? {
            Some((k, _)) => k.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0) + 1,
            None => 0,
        };
        for item in log_tree.iter().rev().take(LOG_KEEP) {
            let (_, v) = item?;
            if let Ok(e) = serde_json::from_slice(&v) {
                state.log.push_front(e);
            }
        }
        let windows = rules
            .iter()
            .filter_map(|r| match r.check {
                rules::Check::SuccessRate { window_secs, .. } => Some(window_secs),
                _ => None,
            })
            .collect();
        let longest = |f: fn(&rules::Check) -> Option<u64>| rules.iter().filter_map(|r| f(&r.check)).max().unwrap_or(0) as i64 * 1000;
        let dead_keep_ms = longest(|c| match c {
            rules::Check::DeadLetters { window_secs, .. } => Some(*window_secs),
            _ => None,
        });
        let rollback_hold_ms = longest(|c| match c {
            rules::Check::CanaryRollback { hold_secs } => Some(*hold_secs),
            _ => None,
        });
        let quota_keep_ms = longest(|c| match c {
            rules::Check::QuotaUsage { for_secs, .. } => Some(*for_secs),
            _ => None,
        });
        Ok(Alerts {
            rules,
            windows,
            dead_keep_ms,
            rollback_hold_ms,
            quota_keep_ms,
            config: config.clone(),
            notifier,
            metrics,
            board: std::sync::OnceLock::new(),
            store: store.clone(),
            firing_tree,
            log_tree,
            state: Mutex::new(state),
        })
    }

    /// Cluster mode: keep the firing set and the log in the cluster, and decide only this
    /// node's alerts (see [`cluster`]). Set before [`Alerts::run`] starts.
    pub fn share(&self, board: cluster::Board) {
        let _ = self.board.set(board);
    }

    /// Whether a rule of `kind` is this node's to evaluate now: the cluster's own alerts
    /// only on duty.
    fn evaluates(&self, kind: rules::RuleKind, on_duty: bool) -> bool {
        on_duty || cluster::decider(kind) != cluster::Decider::Duty
    }

    /// What notifications call this berth (`[alerts] source`).
    pub fn source(&self) -> &str {
        &self.config.source
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// A canary was rolled back: the canary-rollback rules fire for the connector.
    fn canary_rolled_back(&self, connector: &str, reason: &str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.rollbacks.push((connector.to_string(), berth_types::clock::now_ms(), reason.to_string()));
    }

    /// Read what the rules need from the host.
    pub fn observe(&self, src: &Sources) -> Observation {
        let now_ms = berth_types::clock::now_ms();
        let mut obs = Observation { now_ms, ..Observation::default() };
        let slots = src.registry.slots();
        for &w in &self.windows {
            let per: BTreeMap<String, _> = slots.iter().map(|(name, slot)| (name.clone(), slot.tally(Duration::from_secs(w)))).collect();
            obs.calls.insert(w, per);
        }
        for (name, slot) in &slots {
            let versions = std::iter::once(slot.current()).chain(slot.canary().map(|c| c.version));
            for v in versions.filter(|v| v.breaker.isolated()) {
                obs.isolated.push(rules::Isolated { connector: name.clone(), version: v.version().to_string(), breaker: v.breaker.view() });
            }
        }
        obs.queues = berth_core::levels::queue_levels(&src.inbox, &src.stock, &src.shops);
        obs.held_intake = src.shops.budgets().held(now_ms);
        obs.holds = src.shops.services().limits.held();
        for (shop, _) in src.shops.stock_shops() {
            // Counters first: a shop without held stock costs no scan.
            if src.stock.stats(&shop).is_ok_and(|s| s.held > 0) {
                match src.stock.held(&shop) {
                    Ok(held) => {
                        obs.stock_holds.insert(shop, berth_core::stock::guard::hold_views(&held));
                    }
                    Err(e) => tracing::error!(shop = %shop, error = %e, "cannot read the shop's held stock"),
                }
            }
        }
        obs.write_pauses = src.shops.guards().pauses();
        obs.drift = src.reconciler.drift();
        obs.snapshot_failures = src.snapshots.failures();
        if let Some(book) = &src.credentials {
            match book.states() {
                Ok(states) => obs.credentials = states,
                Err(e) => tracing::error!(error = %e, "cannot read the shops' credential state"),
            }
        }
        let here = src.health.shops_here();
        obs.fallbacks = here.iter().filter_map(|s| src.snapshots.fallback_view(&s.shop, s.down_since_ms)).collect();
        obs.shops = here
            .into_iter()
            .map(|s| ShopProbe {
                last_message: s.last_probe.map(|p| format!("{}: {}", p.outcome, p.message)).unwrap_or_default(),
                shop: s.shop,
                connector: s.connector,
                tier: s.tier,
                consecutive_failures: s.consecutive_failures,
            })
            .collect();
        let (longest, hold) = (self.dead_keep_ms, self.rollback_hold_ms);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for q in &obs.queues {
            let h = st.dead_history.entry(q.queue.to_string()).or_default();
            h.push_back((now_ms, q.dead));
            while h.front().is_some_and(|(at, _)| now_ms - at > longest) {
                h.pop_front();
            }
        }
        st.rollbacks.retain(|(_, at, _)| now_ms - at < hold);
        if self.quota_keep_ms > 0 {
            let usage = berth_capabilities::usage::busiest(&src.shops.services().limits.usage());
            sample_quotas(&mut st.quota_history, now_ms, usage, self.quota_keep_ms);
            obs.quota_history = st.quota_history.clone();
        }
        obs.dead_history = st.dead_history.clone();
        obs.rollbacks = st.rollbacks.clone();
        obs
    }

    /// What the rules find holding in `obs` (the queue rules only when `on_duty`), by
    /// fingerprint.
    fn holding(&self, obs: &Observation, on_duty: bool) -> BTreeMap<String, AlertRecord> {
        let now = obs.now_ms;
        let mut holding: BTreeMap<String, AlertRecord> = BTreeMap::new();
        let rollbacks = self.state.lock().unwrap_or_else(|e| e.into_inner()).rollbacks.clone();
        for rule in self.rules.iter().filter(|r| self.evaluates(r.check.kind(), on_duty)) {
            for b in rule.evaluate(obs) {
                let fingerprint = format!("{}/{}", rule.name, b.subject);
                let kind = rule.check.kind();
                // A canary-rollback alert starts when the rollback happened, not when seen.
                let started_ms = if kind == rules::RuleKind::CanaryRollback {
                    rollbacks.iter().filter(|r| r.0 == b.subject).map(|r| r.1).max().unwrap_or(now)
                } else {
                    now
                };
                holding.insert(
                    fingerprint.clone(),
                    AlertRecord {
                        fingerprint,
                        rule: rule.name.clone(),
                        kind: kind.name().to_string(),
                        severity: rule.severity,
                        subject: b.subject,
                        summary: b.summary,
                        value: b.value,
                        threshold: b.threshold,
                        started_ms,
                        resolved_ms: None,
                    },
                );
            }
        }
        holding
    }

    /// Apply the rules to `obs`: fire what newly holds, resolve what stopped holding,
    /// remind of what still holds when `repeat_secs` says so.
    pub fn evaluate(&self, obs: &Observation) {
        let now = obs.now_ms;
        let holding = self.holding(obs, true);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut notices = Vec::new();
        let gone: Vec<String> = st.firing.keys().filter(|k| !holding.contains_key(*k)).cloned().collect();
        for key in gone {
            let Some(mut f) = st.firing.remove(&key) else { continue };
            f.alert.resolved_ms = Some(now);
            tracing::info!(alert = %f.alert.rule, subject = %f.alert.subject, "alert resolved");
            notices.push((notify::NoticeStatus::Resolved, f.alert));
        }
        for (key, alert) in holding {
            match st.firing.get_mut(&key) {
                Some(f) => {
                    f.alert.summary = alert.summary;
                    f.alert.value = alert.value;
                    if self.config.repeat_secs > 0 && now - f.notified_ms >= self.config.repeat_secs as i64 * 1000 {
                        f.notified_ms = now;
                        notices.push((notify::NoticeStatus::Firing, f.alert.clone()));
                    }
                }
                None => {
                    log_firing(&alert);
                    st.firing.insert(key, Firing { alert: alert.clone(), notified_ms: now });
                    notices.push((notify::NoticeStatus::Firing, alert));
                }
            }
        }
        self.count_firing(st.firing.values().map(|f| &f.alert));
        for (status, alert) in notices {
            self.persist(&mut st, status, &alert);
            self.notifier.send(&Notice { status, source: self.config.source.clone(), alert });
        }
    }

    /// Keep the firing set and the log in the store (the next batch, not waited for: an
    /// alert is not an order) and the log's tail in memory.
    fn persist(&self, st: &mut State, status: notify::NoticeStatus, alert: &AlertRecord) {
        let firing = st.firing.get(&alert.fingerprint).map(|f| serde_json::to_vec(f).unwrap_or_default());
        let entry = LogEntry { at_ms: berth_types::clock::now_ms(), status, alert: alert.clone() };
        let logged = serde_json::to_vec(&entry).unwrap_or_default();
        let seq = st.next_seq;
        st.next_seq += 1;
        st.log.push_back(entry);
        if st.log.len() > LOG_KEEP {
            st.log.pop_front();
        }
        let (firing_tree, log_tree, fingerprint) = (self.firing_tree.clone(), self.log_tree.clone(), alert.fingerprint.clone());
        self.store.write_detached("alert", move |ctx| {
            match firing {
                Some(f) => ctx.insert(&firing_tree, fingerprint.as_bytes(), f),
                None => ctx.remove(&firing_tree, fingerprint.as_bytes()),
            }
            ctx.insert(&log_tree, seq.to_be_bytes(), logged);
            if let Some(old) = seq.checked_sub(LOG_KEEP as u64) {
                ctx.remove(&log_tree, old.to_be_bytes());
            }
            Ok(())
        });
    }

    /// Alerts firing now (in cluster mode, the cluster's), most severe and oldest first.
    pub fn firing(&self) -> Vec<AlertRecord> {
        let mut out: Vec<AlertRecord> = match self.board.get() {
            Some(board) => board.firing().into_iter().map(|f| f.alert).collect(),
            None => self.state.lock().unwrap_or_else(|e| e.into_inner()).firing.values().map(|f| f.alert.clone()).collect(),
        };
        out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.started_ms.cmp(&b.started_ms)));
        out
    }

    /// The last `n` notifications, newest first (in cluster mode, the cluster's as of the
    /// last evaluation).
    pub fn recent(&self, n: usize) -> Vec<LogEntry> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.log.iter().rev().take(n).cloned().collect()
    }

    pub fn receivers(&self) -> Vec<ReceiverStatus> {
        self.notifier.statuses()
    }

    /// Evaluate every `evaluate_secs` until shutdown.
    pub async fn run(self: Arc<Self>, src: Sources, mut shutdown: watch::Receiver<bool>) {
        let every = Duration::from_secs(self.config.evaluate_secs);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            let alerts = self.clone();
            let sources = src.clone();
            let obs = match tokio::task::spawn_blocking(move || alerts.observe(&sources)).await {
                Ok(obs) => obs,
                Err(e) => {
                    tracing::error!(error = %e, "alert evaluation failed");
                    continue;
                }
            };
            match self.board.get() {
                Some(board) => self.evaluate_shared(board, &obs, &src).await,
                None => self.evaluate(&obs),
            }
        }
    }

    /// Cluster mode: decide this node's alerts against the cluster's firing set, notify
    /// what this node's writes changed, and take the cluster's log for the API.
    async fn evaluate_shared(&self, board: &cluster::Board, obs: &Observation, src: &Sources) {
        // Asked once: the rules run and the decisions are made on the same answer.
        let on_duty = board.on_duty();
        let holding = self.holding(obs, on_duty);
        let (runs, knows) = (|shop: &str| src.shops.runs(shop), |shop: &str| src.shops.knows(shop));
        let shops = cluster::ShopsHere { runs: &runs, knows: &knows, on_duty };
        let decided = board.decide(holding, &shops, self.config.repeat_secs as i64 * 1000, obs.now_ms).await;
        let firing = board.firing();
        self.count_firing(firing.iter().filter(|f| f.seen_by.contains(board.node())).map(|f| &f.alert));
        for (status, alert) in decided.notices {
            let entry = LogEntry { at_ms: berth_types::clock::now_ms(), status, alert: alert.clone() };
            board.log(&entry).await;
            self.notifier.send(&Notice { status, source: self.config.source.clone(), alert });
        }
        match board.recent(LOG_KEEP).await {
            Ok(Some(log)) => self.state.lock().unwrap_or_else(|e| e.into_inner()).log = log.into(),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the cluster's alert log; the API shows the last one read"),
        }
    }
}

impl Alerts {
    /// Set the firing-alert gauges from `firing`, by rule and severity.
    fn count_firing<'a>(&self, firing: impl Iterator<Item = &'a AlertRecord>) {
        let mut counts: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
        for a in firing {
            *counts.entry((a.rule.clone(), a.severity.name())).or_default() += 1;
        }
        self.metrics.alerts(&counts);
    }
}

/// Say in the log that an alert fires.
fn log_firing(alert: &AlertRecord) {
    match alert.severity {
        Severity::Critical => tracing::error!(alert = %alert.rule, subject = %alert.subject, summary = %alert.summary, "ALERT firing"),
        Severity::Warning => tracing::warn!(alert = %alert.rule, subject = %alert.subject, summary = %alert.summary, "ALERT firing"),
    }
}

/// Core's events that raise alerts: an automatic canary rollback.
impl berth_core::events::Listener for Alerts {
    fn on(&self, event: &berth_core::events::Event<'_>) {
        if let berth_core::events::Event::CanaryRolledBack { connector, reason, .. } = event {
            self.canary_rolled_back(connector, reason);
        }
    }
}

/// Add this look at the quotas in use to their history: a quota not in use any more
/// loses its history (its usage must hold again from the start); looks older than
/// `keep_ms` go, all but the newest of them (the span's start).
fn sample_quotas(
    history: &mut BTreeMap<(String, String), VecDeque<rules::QuotaSample>>,
    now_ms: i64,
    busiest: Vec<berth_capabilities::usage::QuotaUsage>,
    keep_ms: i64,
) {
    let mut seen = BTreeSet::new();
    for usage in busiest {
        let id = (usage.platform.clone(), usage.quota.clone());
        let h = history.entry(id.clone()).or_default();
        h.push_back(rules::QuotaSample { at_ms: now_ms, usage });
        while h.len() > 1 && h.get(1).is_some_and(|s| now_ms - s.at_ms > keep_ms) {
            h.pop_front();
        }
        seen.insert(id);
    }
    history.retain(|id, _| seen.contains(id));
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::levels::QueueLevel;

    fn config(rules: &str) -> AlertsConfig {
        toml::from_str(rules).unwrap()
    }

    #[tokio::test]
    async fn an_alert_fires_once_and_resolves_once_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let db = berth_storage::Store::open(dir.path(), berth_storage::StoreConfig { reserve_bytes: 0, ..Default::default() }).unwrap();
        let cfg = config("[[rules]]\nname = \"old-orders\"\nkind = \"queue-age\"\nqueue = \"orders\"\nabove_secs = 60\n");
        let alerts = Alerts::open(&db, &cfg, std::sync::Arc::new(crate::metrics::Metrics::new(prometheus_client::registry::Registry::default()))).unwrap();
        let obs = |age_ms: i64| Observation {
            now_ms: berth_types::clock::now_ms(),
            queues: vec![QueueLevel { queue: "orders", ready: 1, in_flight: 0, dead: 0, oldest_age_ms: Some(age_ms) }],
            ..Observation::default()
        };
        alerts.evaluate(&obs(61_000));
        alerts.evaluate(&obs(71_000));
        assert_eq!(alerts.firing().len(), 1);
        assert_eq!(alerts.firing()[0].summary, "orders queue: the oldest item has waited 71 s (threshold 60 s); 1 ready, 0 in flight");
        let log = alerts.recent(10);
        assert_eq!(log.len(), 1, "one notification while it keeps holding");
        drop(alerts);
        // The alert writes did not wait for their batch; this waits for them.
        db.barrier().await.unwrap();
        let alerts = Alerts::open(&db, &cfg, std::sync::Arc::new(crate::metrics::Metrics::new(prometheus_client::registry::Registry::default()))).unwrap();
        assert_eq!(alerts.firing().len(), 1, "still firing after a restart");
        alerts.evaluate(&obs(81_000));
        assert_eq!(alerts.recent(10).len(), 1, "and not sent again");
        alerts.evaluate(&obs(1_000));
        let log = alerts.recent(10);
        assert_eq!(log.iter().map(|e| e.status.as_str()).collect::<Vec<_>>(), ["resolved", "firing"]);
        assert!(log[0].alert.resolved_ms.is_some());
        assert!(alerts.firing().is_empty());
    }

    #[test]
    fn bad_sections_are_refused_with_the_place() {
        let err = config("[[rules]]\nname = \"a\"\nkind = \"queue-age\"\nabove_secs = 1\n[[rules]]\nname = \"a\"\nkind = \"dead-letters\"\n").rules().unwrap_err();
        assert_eq!(err, "alerts.rules[1] (`a`): another rule has this name; names must be unique");
        let err = config("[receivers.ops]\nurl = \"ftp://x\"\n").rules().unwrap_err();
        assert_eq!(err, "alerts.receivers.ops: url `ftp://x` must be an http:// or https:// URL");
        let err = config("[receivers.ops]\nurl = \"https://hooks.slack.com/x\"\nformat = \"slack\"\nsecret = \"s\"\n").rules().unwrap_err();
        assert!(err.contains("a secret applies to the json and dingtalk formats only"), "{err}");
        assert_eq!(config("").rules().unwrap(), Rule::defaults());
    }
}
