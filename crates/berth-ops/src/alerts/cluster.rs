//! Alerts in cluster mode: one firing set for the cluster, kept in the shops bucket
//! (`alert.<hex of the fingerprint>`, every node's copy watched), and one notification
//! log (the `<prefix>_alerts` stream).
//!
//! Every node evaluates the rules on what it sees, but decides only the alerts that are
//! its to decide:
//! - the order queue's age and dead letters — the same queue for every node — by the
//!   node on the `alerts` duty (rendezvous over the live nodes);
//! - a shop's alerts (probes failing, order intake held, credentials) by the node
//!   running the shop: it alone probes and pulls it, and its probe history and failure
//!   count come with the shop's lease (shop health is the cluster's too), so a shop
//!   moving to another node neither resolves nor repeats its alert (the duty node
//!   resolves the alerts of a shop no longer in the cluster);
//! - what each node sees of its own (a connector's success rate and circuit breaker, a
//!   quota held, a canary it rolled back) by every node seeing it: the alert names the
//!   nodes (`seen_by`), fires when the first one sees it and resolves when the last one
//!   stops (the duty node removes nodes that left the cluster).
//!
//! Each change is a compare-and-set on the alert's key, and only the node whose write
//! landed notifies: two nodes deciding at once (the duty moving) notify once.

use super::rules::RuleKind;
use super::{AlertRecord, LogEntry};
use berth_cluster::journal::Journal;
use berth_cluster::mirror::{self, Json, Mirror};
use berth_cluster::{ClusterError, Connection, Leases};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A firing alert as the cluster keeps it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SharedAlert {
    pub alert: AlertRecord,
    pub notified_ms: i64,
    /// The nodes that see it (alerts each node sees of its own); the deciding node's
    /// name otherwise.
    pub seen_by: BTreeSet<String>,
}

/// Who decides an alert, by its rule kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Decider {
    /// The node on the `alerts` duty.
    Duty,
    /// The node running the shop the alert is about.
    ShopOwner,
    /// Every node that sees it.
    EachNode,
}

pub(super) fn decider(kind: RuleKind) -> Decider {
    match kind {
        // The ledger is the cluster's: one node judges its holds.
        RuleKind::QueueAge | RuleKind::DeadLetters | RuleKind::StockHeld => Decider::Duty,
        RuleKind::ProbeFailing | RuleKind::OrderFlood | RuleKind::Credentials => Decider::ShopOwner,
        // Reconciliation reports are each node's own.
        RuleKind::SuccessRate
        | RuleKind::ConnectorIsolated
        | RuleKind::QuotaHeld
        | RuleKind::QuotaUsage
        | RuleKind::CanaryRollback
        | RuleKind::WritesPaused
        | RuleKind::StockDrift
        // Snapshots are written and read on the node that takes them.
        | RuleKind::SnapshotFailed
        | RuleKind::StockFallback => {
            Decider::EachNode
        }
    }
}

/// Who decides a stored alert (its kind by name); one of a kind this berth does not
/// know (written by a newer node) is left to every node that sees it.
fn decider_of(alert: &AlertRecord) -> Decider {
    let named = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(&alert.kind);
    RuleKind::deserialize(named).map_or(Decider::EachNode, decider)
}

/// Alert notifications the cluster's log keeps.
const LOG_KEEP: i64 = super::LOG_KEEP as i64;

/// The cluster's firing set and notification log, as one node uses them.
pub struct Board {
    conn: Connection,
    leases: Arc<Leases>,
    firing: Mirror<Json<SharedAlert>>,
    log: Journal,
    /// The log's last sequence when this node last read it.
    log_seen: std::sync::atomic::AtomicU64,
}

fn key(fingerprint: &str) -> String {
    format!("alert.{}", hex::encode(fingerprint))
}

/// The shops as this node sees them, for deciding shop alerts.
pub(super) struct ShopsHere<'a> {
    pub runs: &'a (dyn Fn(&str) -> bool + Sync),
    pub knows: &'a (dyn Fn(&str) -> bool + Sync),
    /// Whether this node is on the `alerts` duty ([`Board::on_duty`], asked once for
    /// the evaluation).
    pub on_duty: bool,
}

/// What one evaluation changed, for this node to notify.
pub(super) struct Decided {
    pub notices: Vec<(super::notify::NoticeStatus, AlertRecord)>,
}

impl Board {
    pub async fn open(conn: &Connection, prefix: &str, leases: Arc<Leases>) -> Result<Board, ClusterError> {
        let firing = Mirror::open(conn, "alert.", Box::new(|_, _, _| {})).await?;
        let log = Journal::open(conn, prefix, "alerts", LOG_KEEP).await?;
        Ok(Board { conn: conn.clone(), leases, firing, log, log_seen: std::sync::atomic::AtomicU64::new(0) })
    }

    pub fn node(&self) -> &str {
        self.leases.node()
    }

    /// Whether this node raises the queue alerts now.
    pub(super) fn on_duty(&self) -> bool {
        self.leases.leads("alerts")
    }

    /// Every alert firing in the cluster.
    pub fn firing(&self) -> Vec<SharedAlert> {
        let mut out = Vec::new();
        self.firing.walk("alert.", "alert.", |_, rec| {
            out.push(rec.clone());
            true
        });
        out
    }

    /// Apply one evaluation: `holding` is what this node's rules found (queue rules only
    /// when on duty); `shops` says which shops this node runs and which it knows at all.
    /// Writes what changed and returns what this node must notify (its writes landed).
    pub(super) async fn decide(&self, holding: BTreeMap<String, AlertRecord>, shops: &ShopsHere<'_>, repeat_ms: i64, now: i64) -> Decided {
        use super::notify::NoticeStatus;
        let me = self.node().to_string();
        let on_duty = shops.on_duty;
        let live: BTreeSet<String> = self.leases.view().live_nodes.iter().map(|n| n.node.clone()).collect();
        // A shop's alert is decided by the node running it; one for a shop no longer in
        // the cluster, by the duty node (it resolves it).
        let mine = |a: &AlertRecord| match decider_of(a) {
            Decider::Duty => on_duty,
            Decider::ShopOwner => (shops.runs)(&a.subject) || (on_duty && !(shops.knows)(&a.subject)),
            Decider::EachNode => true,
        };
        let mut notices = Vec::new();
        let mut held = BTreeMap::new();
        self.firing.walk("alert.", "alert.", |k, rec| {
            held.insert(rec.alert.fingerprint.clone(), (k.to_string(), rec.clone()));
            true
        });
        let revision = |k: &str| self.firing.get(k).revision;
        // What stopped holding, or whose nodes left.
        for (fp, (k, rec)) in &held {
            if holding.contains_key(fp) {
                continue;
            }
            let next = match decider_of(&rec.alert) {
                Decider::Duty | Decider::ShopOwner if mine(&rec.alert) => None,
                Decider::Duty | Decider::ShopOwner => continue,
                Decider::EachNode => {
                    let mut seen = rec.seen_by.clone();
                    seen.remove(&me);
                    if on_duty && !live.is_empty() {
                        seen.retain(|n| live.contains(n));
                    }
                    if seen == rec.seen_by {
                        continue;
                    }
                    (!seen.is_empty()).then(|| SharedAlert { seen_by: seen, ..rec.clone() })
                }
            };
            let resolved = next.is_none();
            if self.write(k, revision(k), next).await && resolved {
                let mut alert = rec.alert.clone();
                alert.resolved_ms = Some(now);
                tracing::info!(alert = %alert.rule, subject = %alert.subject, "alert resolved");
                notices.push((NoticeStatus::Resolved, alert));
            }
        }
        // What holds: new ones fire, known ones gain this node, reminders are due.
        for (fp, alert) in holding {
            if !mine(&alert) {
                continue;
            }
            let k = key(&fp);
            match held.get(&fp) {
                None => {
                    let rec = SharedAlert { alert: alert.clone(), notified_ms: now, seen_by: BTreeSet::from([me.clone()]) };
                    if self.write(&k, 0, Some(rec)).await {
                        super::log_firing(&alert);
                        notices.push((NoticeStatus::Firing, alert));
                    }
                }
                Some((_, rec)) => {
                    let mut next = rec.clone();
                    match decider_of(&alert) {
                        Decider::EachNode => {
                            next.seen_by.insert(me.clone());
                        }
                        // One decider: this node now (a duty or a shop that moved here).
                        Decider::Duty | Decider::ShopOwner => next.seen_by = BTreeSet::from([me.clone()]),
                    }
                    // One node reminds: the first that sees it.
                    let reminds = next.seen_by.first() == Some(&me) && repeat_ms > 0 && now - rec.notified_ms >= repeat_ms;
                    if reminds {
                        next.notified_ms = now;
                        next.alert.summary = alert.summary;
                        next.alert.value = alert.value;
                    }
                    if next != *rec && self.write(&k, revision(&k), Some(next.clone())).await && reminds {
                        notices.push((NoticeStatus::Firing, next.alert));
                    }
                }
            }
        }
        Decided { notices }
    }

    /// Compare-and-set one alert's key; false when another node changed it first (the
    /// next evaluation decides again on the new value) or the cluster did not take it.
    async fn write(&self, key: &str, revision: u64, record: Option<SharedAlert>) -> bool {
        let value = <Json<SharedAlert> as mirror::Codec>::encode(record.as_ref());
        match mirror::write_cas(&self.conn, None, vec![(key.to_string(), value, revision)]).await {
            Ok(revs) => {
                self.firing.applied_writes(&[(key.to_string(), revs[0], record)]);
                true
            }
            Err(ClusterError::Conflict(_)) => false,
            Err(e) => {
                tracing::warn!(key, error = %e, "the cluster did not take an alert's change; deciding again at the next evaluation");
                false
            }
        }
    }

    /// Keep a sent notification in the cluster's log.
    pub(super) async fn log(&self, entry: &LogEntry) {
        let id = format!("{}-{}-{}", self.node(), entry.at_ms, hex::encode(&entry.alert.fingerprint));
        let body = bytes::Bytes::from(serde_json::to_vec(entry).unwrap_or_default());
        if let Err(e) = self.log.append(&id, body).await {
            tracing::warn!(error = %e, "cannot keep an alert notification in the cluster's log");
        }
    }

    /// The cluster's last `n` notifications, oldest first; `None` when the log has not
    /// grown since the last call.
    pub(super) async fn recent(&self, n: usize) -> Result<Option<Vec<LogEntry>>, ClusterError> {
        let last = self.log.last_seq().await?;
        if self.log_seen.swap(last, std::sync::atomic::Ordering::Relaxed) == last && last != 0 {
            return Ok(None);
        }
        Ok(Some(self.log.tail(n).await?.into_iter().filter_map(|e| serde_json::from_slice(&e.payload).ok()).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(kind: &str) -> AlertRecord {
        AlertRecord {
            fingerprint: "r/s".into(),
            rule: "r".into(),
            kind: kind.into(),
            severity: super::super::Severity::Warning,
            subject: "s".into(),
            summary: String::new(),
            value: 0.0,
            threshold: 0.0,
            started_ms: 0,
            resolved_ms: None,
        }
    }

    #[test]
    fn a_stored_alert_is_decided_as_its_rule_kind_says() {
        use RuleKind as K;
        for kind in [K::SuccessRate, K::QueueAge, K::DeadLetters, K::ProbeFailing, K::CanaryRollback, K::ConnectorIsolated, K::OrderFlood, K::QuotaHeld, K::QuotaUsage, K::Credentials, K::StockHeld, K::WritesPaused, K::StockDrift, K::SnapshotFailed, K::StockFallback] {
            assert_eq!(decider_of(&alert(kind.name())), decider(kind), "{}", kind.name());
        }
        assert_eq!(decider_of(&alert("from-a-newer-node")), Decider::EachNode);
    }
}
