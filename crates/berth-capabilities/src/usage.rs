//! Quota usage: how much of each platform quota berth's calls are spending, watched
//! before the platform throttles rather than learnt after it did.
//!
//! Three kinds of numbers, one row shape ([`QuotaUsage`]):
//! - `counted`: calls the host let through a bucket of its own (`requests`, the
//!   platform's bucket; `endpoint:CLASS`, an endpoint class's) over a sliding window
//!   (`[platforms.ID] usage_window_secs`), against what the bucket refills over that
//!   window. A quota spent at exactly its rate reads 1.0; the burst after a quiet spell
//!   may take it briefly above.
//! - `reported`: the platform's own count — the call-limit header's `used/size`
//!   (drained at the bucket's leak rate since it was read), or the points a GraphQL cost
//!   report says are spent.
//! - `configured`: a points quota still on ops' guess (nothing reported yet).
//!
//! A window is counted with two counters per quota key — this window's calls and the
//! last one's, the last weighted by how much of it still overlaps the sliding window —
//! so the memory per key is fixed whatever the window or the call rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The sliding window calls are counted over, by default.
pub const DEFAULT_WINDOW_SECS: u64 = 60;
/// The longest window ops may set.
pub const MAX_WINDOW_SECS: u64 = 300;

/// One quota's usage, as the API, the dashboard, the gauge and the alert rule see it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct QuotaUsage {
    pub platform: String,
    /// `requests`, `endpoint:CLASS`, `call-limit` or `points:NAME`.
    pub quota: String,
    /// Whose quota: `shop:NAME`, or the quota key's setting and value (a secret by digest).
    pub key: String,
    pub used: f64,
    pub capacity: f64,
    /// `used / capacity`.
    pub ratio: f64,
    /// `counted`, `reported` or `configured` (see the module).
    pub source: &'static str,
    /// The window a `counted` row is counted over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u64>,
}

impl QuotaUsage {
    pub fn new(platform: &str, quota: String, key: String, used: f64, capacity: f64, source: &'static str) -> QuotaUsage {
        let ratio = if capacity > 0.0 { used / capacity } else { 0.0 };
        QuotaUsage { platform: platform.to_string(), quota, key, used, capacity, ratio, source, window_secs: None }
    }
}

/// The busiest key of each (platform, quota), busiest first: what the gauge and the
/// status page show (keys are shops or app keys, too many to be metric labels).
pub fn busiest(rows: &[QuotaUsage]) -> Vec<QuotaUsage> {
    let mut top: HashMap<(&str, &str), &QuotaUsage> = HashMap::new();
    for r in rows {
        let e = top.entry((&r.platform, &r.quota)).or_insert(r);
        if r.ratio > e.ratio {
            *e = r;
        }
    }
    let mut out: Vec<QuotaUsage> = top.into_values().cloned().collect();
    by_ratio(&mut out);
    out
}

/// Busiest first; ties by platform, quota and key (a stable order for pages).
pub fn by_ratio(rows: &mut [QuotaUsage]) {
    rows.sort_by(|a, b| b.ratio.total_cmp(&a.ratio).then_with(|| (&a.platform, &a.quota, &a.key).cmp(&(&b.platform, &b.quota, &b.key))));
}

/// Calls of one key: the current window's and the previous one's.
#[derive(Clone, Copy)]
struct Counts {
    /// Which window `current` counts (time since the meter started, in windows).
    window: u64,
    current: u64,
    previous: u64,
}

impl Counts {
    fn roll(&mut self, window: u64) {
        if window != self.window {
            self.previous = if window == self.window + 1 { self.current } else { 0 };
            self.current = 0;
            self.window = window;
        }
    }
}

/// Calls per key over a sliding window (see the module).
pub struct UsageMeter {
    window: Duration,
    started: Instant,
    counts: Mutex<HashMap<String, Counts>>,
}

impl UsageMeter {
    pub fn new(window_secs: u64) -> UsageMeter {
        UsageMeter { window: Duration::from_secs(window_secs.max(1)), started: Instant::now(), counts: Mutex::new(HashMap::new()) }
    }

    pub fn window_secs(&self) -> u64 {
        self.window.as_secs()
    }

    /// (window number, how far into it) at `at`.
    fn position(&self, at: Instant) -> (u64, f64) {
        let since = at.saturating_duration_since(self.started).as_nanos();
        let window = self.window.as_nanos();
        ((since / window) as u64, (since % window) as f64 / window as f64)
    }

    /// One call of `key`, now.
    pub fn count(&self, key: &str) {
        self.count_at(key, Instant::now());
    }

    fn count_at(&self, key: &str, at: Instant) {
        let (window, _) = self.position(at);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        match counts.get_mut(key) {
            Some(c) => {
                c.roll(window);
                c.current += 1;
            }
            None => {
                counts.insert(key.to_string(), Counts { window, current: 1, previous: 0 });
            }
        }
    }

    /// Calls per key over the window ending now; keys idle for two windows are forgotten.
    pub fn used(&self) -> Vec<(String, f64)> {
        self.used_at(Instant::now())
    }

    fn used_at(&self, at: Instant) -> Vec<(String, f64)> {
        let (window, into) = self.position(at);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.retain(|_, c| window <= c.window + 1);
        counts
            .iter()
            .map(|(key, c)| {
                let mut c = *c;
                c.roll(window);
                (key.clone(), c.previous as f64 * (1.0 - into) + c.current as f64)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(m: &UsageMeter, at: Instant) -> Vec<(String, f64)> {
        let mut v = m.used_at(at);
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn counts_slide_with_the_window_and_idle_keys_are_forgotten() {
        let m = UsageMeter::new(10);
        let t0 = m.started;
        let s = |secs: f64| t0 + Duration::from_secs_f64(secs);
        for _ in 0..20 {
            m.count_at("a", s(1.0));
        }
        m.count_at("b", s(2.0));
        assert_eq!(used(&m, s(5.0)), vec![("a".to_string(), 20.0), ("b".to_string(), 1.0)]);
        // Half way through the next window, half of the last one still counts.
        for _ in 0..4 {
            m.count_at("a", s(12.0));
        }
        assert_eq!(used(&m, s(15.0)), vec![("a".to_string(), 14.0), ("b".to_string(), 0.5)]);
        // Two windows later nothing of it is left, and idle keys go.
        assert_eq!(used(&m, s(25.0)), vec![("a".to_string(), 2.0)]);
        assert!(used(&m, s(40.0)).is_empty());
        // A key counted again after a gap starts from nothing.
        m.count_at("a", s(41.0));
        assert_eq!(used(&m, s(41.0)), vec![("a".to_string(), 1.0)]);
    }

    #[test]
    fn the_busiest_key_stands_for_its_quota() {
        let row = |p: &str, q: &str, k: &str, used: f64| QuotaUsage::new(p, q.into(), k.into(), used, 10.0, "counted");
        let rows = vec![row("p", "requests", "shop:a", 2.0), row("p", "requests", "shop:b", 9.0), row("q", "requests", "shop:a", 5.0), row("p", "endpoint:stock", "shop:a", 1.0)];
        let top = busiest(&rows);
        let got: Vec<(&str, &str, &str, f64)> = top.iter().map(|r| (r.platform.as_str(), r.quota.as_str(), r.key.as_str(), r.ratio)).collect();
        assert_eq!(got, vec![("p", "requests", "shop:b", 0.9), ("q", "requests", "shop:a", 0.5), ("p", "endpoint:stock", "shop:a", 0.1)]);
        assert_eq!(QuotaUsage::new("p", "x".into(), "k".into(), 3.0, 0.0, "counted").ratio, 0.0);
    }
}
