//! Shadow runs: a candidate version runs beside the active one on the same inputs. The
//! active call is recorded (platform answers, stored state it read); the candidate is
//! replayed that recording afterwards, off the request path, so it sends nothing to the
//! platform and changes no state. Both outputs are compared field by field; the report
//! lists every difference (the first 200 in full) and promotion waits for a complete match.
//!
//! In cluster mode every node runs the shadow (the run is in the registry's state) on
//! the calls of the shops it owns, and shares its report; the run's report is the sum of
//! the nodes' ([`ShadowReport::sum`]).

use berth_types::clock::now_ms;
use berth_types::shop::ShopConfig;
use berth_runtime::tape::Tape;
use berth_runtime::{Call, CallError, LoadedConnector, Output};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Differences kept in full; later ones are only counted.
const MAX_DIFFERENCES: usize = 200;
/// Replays running at once; beyond that a call is not compared (and counted as skipped),
/// so a slow candidate cannot pile up work.
const MAX_IN_FLIGHT: usize = 8;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ShadowReport {
    pub digest: String,
    pub version: String,
    pub started_ms: i64,
    pub stopped_ms: Option<i64>,
    /// Calls replayed to the candidate and compared.
    pub compared: u64,
    pub matched: u64,
    pub differing: u64,
    /// Calls not compared because too many replays were running.
    pub skipped: u64,
    /// Differences found, across all compared calls.
    pub difference_count: u64,
    pub differences: Vec<Difference>,
    /// Cluster mode: the calls each node compared (a node compares its own shops' calls).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, u64>,
}

impl ShadowReport {
    /// Whether this is a report of the run of `digest` started at `started_ms`.
    pub fn of_run(&self, digest: &str, started_ms: i64) -> bool {
        self.digest == digest && self.started_ms == started_ms
    }

    /// The run's report over the nodes' reports of it (others are left out): counts
    /// added, differences in the order found (the first [`MAX_DIFFERENCES`]), stopped
    /// when every node's part is. None when no node reported the run yet.
    pub fn sum(digest: &str, started_ms: i64, parts: impl IntoIterator<Item = (String, ShadowReport)>) -> Option<ShadowReport> {
        let parts: Vec<(String, ShadowReport)> = parts.into_iter().filter(|(_, r)| r.of_run(digest, started_ms)).collect();
        let first = parts.first()?.1.clone();
        let mut out = ShadowReport { digest: first.digest, version: first.version, started_ms, ..Default::default() };
        out.stopped_ms = parts.iter().map(|(_, r)| r.stopped_ms).collect::<Option<Vec<i64>>>().and_then(|s| s.into_iter().max());
        for (node, r) in parts {
            out.compared += r.compared;
            out.matched += r.matched;
            out.differing += r.differing;
            out.skipped += r.skipped;
            out.difference_count += r.difference_count;
            out.differences.extend(r.differences);
            out.nodes.insert(node, r.compared);
        }
        out.differences.sort_by_key(|d| d.at_ms);
        out.differences.truncate(MAX_DIFFERENCES);
        Some(out)
    }

    /// Whether the candidate may be promoted on this report.
    pub fn complete_match(&self) -> Result<(), String> {
        if self.compared == 0 {
            return Err("no call has been compared yet".into());
        }
        if self.differing > 0 {
            return Err(format!(
                "{} of {} compared calls differ ({} differences); see GET /v1/admin/connectors/NAME/shadow",
                self.differing, self.compared, self.difference_count
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Difference {
    pub call: String,
    pub shop: String,
    pub at_ms: i64,
    /// Where the outputs differ, e.g. `Pull.Ok.orders[3].total_minor`, or `http[2]` for
    /// a request the candidate made differently.
    pub path: String,
    pub active: Value,
    pub candidate: Value,
}

pub struct Shadow {
    pub version: Arc<LoadedConnector>,
    report: Mutex<ShadowReport>,
    in_flight: AtomicUsize,
}

/// A call's answer as JSON, as shadow reports and the vendor kit's tapes hold it.
pub fn json_of<T: Serialize>(out: Result<&T, &CallError>) -> Value {
    match out {
        Ok(o) => serde_json::to_value(o).unwrap_or(Value::Null),
        Err(e) => serde_json::json!({ "call-error": e.to_string() }),
    }
}

/// Every place where `a` and `b` differ, as (path, a, b).
pub fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<(String, Value, Value)>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                diff(&p, x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), out);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                diff(&format!("{path}[{i}]"), x.get(i).unwrap_or(&Value::Null), y.get(i).unwrap_or(&Value::Null), out);
            }
        }
        _ if a != b => out.push((path.to_string(), a.clone(), b.clone())),
        _ => {}
    }
}

impl Shadow {
    /// A run of `version` started at `started_ms` (the run's plan's time, the same on
    /// every node).
    pub fn new(version: Arc<LoadedConnector>, started_ms: i64) -> Self {
        let report = ShadowReport { digest: version.digest.clone(), version: version.version().to_string(), started_ms, ..Default::default() };
        Shadow::resume(version, report)
    }

    /// Go on with a run this node reported before (it restarted): its counts continue.
    pub fn resume(version: Arc<LoadedConnector>, mut report: ShadowReport) -> Self {
        report.stopped_ms = None;
        report.nodes.clear();
        Shadow { version, report: Mutex::new(report), in_flight: AtomicUsize::new(0) }
    }

    /// The run's start (with the candidate's digest, its identity).
    pub fn started_ms(&self) -> i64 {
        self.report.lock().unwrap_or_else(|e| e.into_inner()).started_ms
    }

    pub fn report(&self) -> ShadowReport {
        self.report.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The report, marked stopped.
    pub fn stop(&self) -> ShadowReport {
        let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
        r.stopped_ms = Some(now_ms());
        r.clone()
    }

    /// Replay `call` to the candidate with the active call's recording and compare.
    /// Runs in the background; the active call's caller does not wait.
    pub fn compare(self: &Arc<Self>, shop: &str, cfg: Arc<ShopConfig>, call: Call, active: &Result<Output, CallError>, tape: Tape) {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.report.lock().unwrap_or_else(|e| e.into_inner()).skipped += 1;
            return;
        }
        let (me, shop, active) = (self.clone(), shop.to_string(), json_of(active.as_ref()));
        tokio::spawn(async move {
            let name = call.name();
            let (out, tape) = me.version.call(&shop, cfg, call, tape.into_replay()).await;
            let mut found = Vec::new();
            diff("", &active, &json_of(out.as_ref()), &mut found);
            for (i, m) in tape.mismatches().iter().enumerate() {
                found.push((format!("http[{i}]"), Value::String("as recorded".into()), Value::String(m.clone())));
            }
            if tape.unused() > 0 && tape.mismatches().is_empty() {
                found.push(("http".into(), Value::from(format!("{} more requests", tape.unused())), Value::String("not made".into())));
            }
            me.note(name, &shop, found);
            me.in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }

    fn note(&self, call: &str, shop: &str, found: Vec<(String, Value, Value)>) {
        let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
        r.compared += 1;
        if found.is_empty() {
            r.matched += 1;
            return;
        }
        r.differing += 1;
        r.difference_count += found.len() as u64;
        let at_ms = now_ms();
        for (path, active, candidate) in found {
            if r.differences.len() >= MAX_DIFFERENCES {
                break;
            }
            r.differences.push(Difference { call: call.to_string(), shop: shop.to_string(), at_ms, path, active, candidate });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_every_differing_field() {
        let a = json!({"Pull": {"Ok": {"orders": [{"id": "1", "total": 5}, {"id": "2", "total": 7}], "next": null}}});
        let b = json!({"Pull": {"Ok": {"orders": [{"id": "1", "total": 6}], "next": "c2"}}});
        let mut out = Vec::new();
        diff("", &a, &b, &mut out);
        let paths: Vec<&str> = out.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(paths, ["Pull.Ok.next", "Pull.Ok.orders[0].total", "Pull.Ok.orders[1]"]);
        assert_eq!(out[1].1, json!(5));
        assert_eq!(out[1].2, json!(6));
        let mut none = Vec::new();
        diff("", &a, &a.clone(), &mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn a_cluster_run_sums_the_nodes_reports_of_that_run_only() {
        let part = |compared: u64, differing: u64, at_ms: i64, stopped_ms: Option<i64>| ShadowReport {
            digest: "d1".into(),
            version: "2.0".into(),
            started_ms: 100,
            stopped_ms,
            compared,
            matched: compared - differing,
            differing,
            difference_count: differing,
            differences: (0..differing)
                .map(|i| Difference { call: "pull".into(), shop: "s".into(), at_ms: at_ms + i as i64, path: "Pull.Ok".into(), active: json!(1), candidate: json!(2) })
                .collect(),
            ..Default::default()
        };
        let earlier_run = ShadowReport { started_ms: 50, compared: 1000, ..part(1000, 0, 0, None) };
        let parts = vec![("b1".to_string(), part(10, 0, 0, None)), ("b2".to_string(), part(5, 2, 300, Some(400))), ("b3".to_string(), earlier_run)];
        let sum = ShadowReport::sum("d1", 100, parts.clone()).expect("two nodes reported the run");
        assert_eq!((sum.compared, sum.matched, sum.differing, sum.difference_count), (15, 13, 2, 2));
        assert_eq!(sum.nodes, BTreeMap::from([("b1".to_string(), 10), ("b2".to_string(), 5)]));
        assert_eq!(sum.differences.iter().map(|d| d.at_ms).collect::<Vec<_>>(), [300, 301]);
        assert_eq!(sum.stopped_ms, None, "b1 still runs it");
        assert!(sum.complete_match().unwrap_err().contains("2 of 15 compared calls differ"), "a difference on another node stops promotion");
        let stopped: Vec<_> = parts.into_iter().map(|(n, mut r)| {
            r.stopped_ms = r.stopped_ms.or(Some(350));
            (n, r)
        }).collect();
        assert_eq!(ShadowReport::sum("d1", 100, stopped).unwrap().stopped_ms, Some(400));
        assert!(ShadowReport::sum("d2", 100, vec![("b1".to_string(), part(1, 0, 0, None))]).is_none());
    }

    #[test]
    fn promotion_needs_a_complete_match() {
        let mut r = ShadowReport::default();
        assert!(r.complete_match().unwrap_err().contains("no call has been compared"));
        r.compared = 3;
        r.matched = 3;
        assert!(r.complete_match().is_ok());
        r.differing = 1;
        r.difference_count = 2;
        assert!(r.complete_match().unwrap_err().contains("1 of 3 compared calls differ (2 differences)"));
    }
}
