//! Quotas of points, as platforms report them: a GraphQL API's query-cost bucket
//! (available, maximum, restore rate), a remaining-quota header, a body field. A connector
//! reads them from an answer and reports them (`quota.report`, berth:connector 0.3.0);
//! a request it sends with an expected cost (`http.send-costed`) waits here until the
//! shop's quota has the points, then spends them. Nothing here knows any platform: the
//! connector names the quota and says what it costs.
//!
//! A bucket is the calling shop's platform quota (see `RateLimits::quota_of`) and the
//! quota's name. Before the platform has reported anything it follows ops' guess
//! (`[platforms.ID.points.NAME]`), or does not hold requests back at all. After a report
//! it follows the platform: what it said was available, less the points of requests on
//! their way (which the platform may not have counted yet), restored at its rate.
//! Waiters take their turns in arrival order.

use crate::ratelimit::NoSlot;
use berth_types::http::{Cost, QuotaReport};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most quota names one shop's quota may report (each is a bucket kept in memory).
pub const MAX_NAMES_PER_QUOTA: usize = 8;
/// The longest quota name.
pub const MAX_NAME_BYTES: usize = 64;
/// The largest number of points a report may give.
const MAX_POINTS: f64 = 1e12;

/// Ops' guess of a points quota, used until the platform reports it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointsGuess {
    pub maximum: f64,
    pub restore_per_second: f64,
}

impl PointsGuess {
    pub fn check(&self) -> Result<(), String> {
        let ok = |v: f64| v.is_finite() && v > 0.0 && v <= MAX_POINTS;
        if !(ok(self.maximum) && ok(self.restore_per_second)) {
            return Err("maximum and restore_per_second must be positive numbers".into());
        }
        Ok(())
    }
}

struct Bucket {
    /// Points at `at` (negative after a request costlier than the whole bucket).
    level: f64,
    at: Instant,
    maximum: f64,
    restore: f64,
    /// Points of requests sent and not answered yet.
    in_flight: f64,
    /// When the platform last reported it; `None`: ops' guess.
    reported_ms: Option<i64>,
    /// Requests that took points, numbered in the order they were sent.
    sent: u64,
    /// The number of the request whose answer gave the report the bucket follows: an
    /// answer to an earlier request, processed later (two requests in flight, answered
    /// out of order), tells of an older state of the platform's bucket and is not taken.
    reported_sent: u64,
}

impl Bucket {
    fn now(&self, now: Instant) -> f64 {
        (self.level + self.restore * now.saturating_duration_since(self.at).as_secs_f64()).min(self.maximum)
    }
}

/// (platform, quota key, name).
type BucketKey = (String, String, String);

/// A points quota as status pages show it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PointsView {
    /// The shop quota it belongs to (`shop:NAME` or the platform's quota_key value).
    pub key: String,
    pub name: String,
    pub available: f64,
    pub maximum: f64,
    pub restore_per_second: f64,
    pub in_flight: f64,
    /// `reported` (the platform's numbers) or `configured` (ops' guess, nothing reported yet).
    pub source: &'static str,
    pub reported_ms: Option<i64>,
}

/// Points a request took; given back to the in-flight count when it is answered.
pub struct Spent {
    buckets: Arc<Mutex<HashMap<BucketKey, Bucket>>>,
    key: BucketKey,
    points: f64,
    /// This request's number among the bucket's (see [`PointsBuckets::report_after`]).
    pub sent: u64,
}

impl Drop for Spent {
    fn drop(&mut self) {
        if let Some(b) = self.buckets.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&self.key) {
            b.in_flight = (b.in_flight - self.points).max(0.0);
        }
    }
}

#[derive(Default)]
pub struct PointsBuckets {
    buckets: Arc<Mutex<HashMap<BucketKey, Bucket>>>,
    /// Ops' guesses per platform and name; swapped whole on a config reload.
    guesses: Mutex<Arc<BTreeMap<String, BTreeMap<String, PointsGuess>>>>,
    /// One turn queue per bucket: waiters go in arrival order.
    queues: Mutex<HashMap<BucketKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Requests sent with an expected cost, per platform (the conformance kit asks).
    costed: Mutex<HashMap<String, u64>>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_BYTES && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl PointsBuckets {
    /// Ops' guesses (config load or reload). Buckets the platform reported keep its numbers.
    pub fn configure(&self, guesses: BTreeMap<String, BTreeMap<String, PointsGuess>>) {
        *self.guesses.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(guesses);
    }

    fn guess(&self, platform: &str, name: &str) -> Option<PointsGuess> {
        self.guesses.lock().unwrap_or_else(|e| e.into_inner()).get(platform)?.get(name).cloned()
    }

    fn queue(&self, key: &BucketKey) -> Arc<tokio::sync::Mutex<()>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone()
    }

    /// Wait until the bucket has `cost.points`, at most `budget`, then spend them. A quota
    /// nothing is known of (not reported, no guess) holds nothing back; nor does a
    /// request costlier than the whole bucket (the platform will say so, and no wait
    /// would help). Returns how long it waited.
    pub async fn take(&self, platform: &str, key: &str, cost: &Cost, budget: Duration) -> Result<(Duration, Option<Spent>), NoSlot> {
        let points = if cost.points.is_finite() { cost.points.max(0.0) } else { 0.0 };
        *self.costed.lock().unwrap_or_else(|e| e.into_inner()).entry(platform.to_string()).or_default() += 1;
        let bk: BucketKey = (platform.to_string(), key.to_string(), cost.quota.clone());
        let known = self.buckets.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&bk);
        if !known {
            let Some(g) = self.guess(platform, &cost.quota) else { return Ok((Duration::ZERO, None)) };
            let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
            let names = buckets.keys().filter(|(p, k, _)| p == platform && k == key).count();
            if names >= MAX_NAMES_PER_QUOTA {
                return Ok((Duration::ZERO, None));
            }
            buckets.entry(bk.clone()).or_insert(Bucket {
                level: g.maximum,
                at: Instant::now(),
                maximum: g.maximum,
                restore: g.restore_per_second,
                in_flight: 0.0,
                reported_ms: None,
                sent: 0,
                reported_sent: 0,
            });
        }
        let queue = self.queue(&bk);
        let started = Instant::now();
        let _turn = match tokio::time::timeout(budget, queue.lock()).await {
            Ok(turn) => turn,
            Err(_) => return Err(NoSlot { platform: platform.to_string(), wait_ms: budget.as_millis() as u64 }),
        };
        loop {
            let wait = {
                let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
                let Some(b) = buckets.get_mut(&bk) else { return Ok((started.elapsed(), None)) };
                let now = Instant::now();
                let level = b.now(now);
                if level >= points || points > b.maximum {
                    b.level = level - points;
                    b.at = now;
                    b.in_flight += points;
                    b.sent += 1;
                    return Ok((started.elapsed(), Some(Spent { buckets: self.buckets.clone(), key: bk, points, sent: b.sent })));
                }
                if b.restore <= 0.0 {
                    budget + Duration::from_secs(1)
                } else {
                    Duration::from_secs_f64(((points - level) / b.restore).min(86_400.0))
                }
            };
            let waited = started.elapsed();
            if waited + wait > budget {
                return Err(NoSlot { platform: platform.to_string(), wait_ms: (wait.as_millis() as u64).max(1) });
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// What the platform said of the quota `key`'s `report.name`: the bucket follows it,
    /// less the points of the requests still on their way.
    pub fn report(&self, platform: &str, key: &str, r: &QuotaReport) -> Result<(), String> {
        self.report_after(platform, key, r, None)
    }

    /// [`PointsBuckets::report`], read from the answer to the request numbered `sent`
    /// (its [`Spent::sent`]; `None`: not known). A report from an earlier request than
    /// the one the bucket follows is dropped: its answer was processed late, and the
    /// platform has counted later requests since.
    pub fn report_after(&self, platform: &str, key: &str, r: &QuotaReport, sent: Option<u64>) -> Result<(), String> {
        if !valid_name(&r.name) {
            return Err(format!("quota name must be 1-{MAX_NAME_BYTES} letters, digits, `-` or `_`"));
        }
        let sane = |v: f64| v.is_finite() && (0.0..=MAX_POINTS).contains(&v);
        if !(sane(r.available) && sane(r.maximum) && sane(r.restore_per_second)) || r.maximum == 0.0 {
            return Err(format!(
                "quota `{}`: available {}, maximum {}, restore_per_second {} must be finite, not negative, at most {MAX_POINTS}, with a positive maximum",
                r.name, r.available, r.maximum, r.restore_per_second
            ));
        }
        let bk: BucketKey = (platform.to_string(), key.to_string(), r.name.clone());
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(&bk) && buckets.keys().filter(|(p, k, _)| p == platform && k == key).count() >= MAX_NAMES_PER_QUOTA {
            return Err(format!("this quota has {MAX_NAMES_PER_QUOTA} names already; report fewer quotas"));
        }
        let b = buckets.entry(bk).or_insert(Bucket {
            level: 0.0,
            at: Instant::now(),
            maximum: r.maximum,
            restore: 0.0,
            in_flight: 0.0,
            reported_ms: None,
            sent: 0,
            reported_sent: 0,
        });
        if let Some(sent) = sent {
            if sent < b.reported_sent {
                return Ok(());
            }
            b.reported_sent = sent;
        }
        b.level = r.available.min(r.maximum) - b.in_flight;
        b.at = Instant::now();
        b.maximum = r.maximum;
        b.restore = r.restore_per_second;
        b.reported_ms = Some(berth_types::clock::now_ms());
        Ok(())
    }

    /// How many requests to `platform` were sent with an expected cost.
    pub fn costed(&self, platform: &str) -> u64 {
        self.costed.lock().unwrap_or_else(|e| e.into_inner()).get(platform).copied().unwrap_or(0)
    }

    /// The platforms with a points bucket.
    pub fn platforms(&self) -> Vec<String> {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let names: std::collections::BTreeSet<&String> = buckets.keys().map(|(p, _, _)| p).collect();
        names.into_iter().cloned().collect()
    }

    /// Every points quota of `platform`, by key and name.
    pub fn views(&self, platform: &str) -> Vec<PointsView> {
        let now = Instant::now();
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<PointsView> = buckets
            .iter()
            .filter(|((p, _, _), _)| p == platform)
            .map(|((_, key, name), b)| PointsView {
                key: key.clone(),
                name: name.clone(),
                available: b.now(now),
                maximum: b.maximum,
                restore_per_second: b.restore,
                in_flight: b.in_flight,
                source: if b.reported_ms.is_some() { "reported" } else { "configured" },
                reported_ms: b.reported_ms,
            })
            .collect();
        out.sort_by(|a, b| (&a.key, &a.name).cmp(&(&b.key, &b.name)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(points: f64) -> Cost {
        Cost { quota: "graphql".into(), points }
    }

    fn report(available: f64, maximum: f64, restore: f64) -> QuotaReport {
        QuotaReport { name: "graphql".into(), available, maximum, restore_per_second: restore }
    }

    #[tokio::test]
    async fn an_unknown_quota_holds_nothing_back_and_a_guess_is_followed_until_a_report() {
        let p = PointsBuckets::default();
        let (waited, spent) = p.take("shopify", "shop:a", &cost(500.0), Duration::ZERO).await.unwrap();
        assert!(waited.is_zero() && spent.is_none(), "nothing known: no wait");
        p.configure([("shopify".to_string(), [("graphql".to_string(), PointsGuess { maximum: 100.0, restore_per_second: 1000.0 })].into())].into());
        let _a = p.take("shopify", "shop:a", &cost(80.0), Duration::ZERO).await.unwrap().1.unwrap();
        // 20 left; 80 more come back in 80 ms at 1000/s.
        let err = p.take("shopify", "shop:a", &cost(80.0), Duration::ZERO).await.err().unwrap();
        assert!((50..=80).contains(&err.wait_ms), "{err:?}");
        let (waited, _) = p.take("shopify", "shop:a", &cost(80.0), Duration::from_secs(2)).await.unwrap();
        assert!(waited >= Duration::from_millis(40), "{waited:?}");
        assert_eq!(p.views("shopify")[0].source, "configured");
    }

    #[tokio::test]
    async fn a_report_from_an_answer_processed_out_of_order_is_not_taken() {
        let p = PointsBuckets::default();
        p.report("shopify", "shop:a", &report(600.0, 600.0, 0.001)).unwrap();
        let first = p.take("shopify", "shop:a", &cost(100.0), Duration::ZERO).await.unwrap().1.unwrap();
        let second = p.take("shopify", "shop:a", &cost(100.0), Duration::ZERO).await.unwrap().1.unwrap();
        assert!(second.sent > first.sent);
        let (first_sent, second_sent) = (first.sent, second.sent);
        drop((first, second));
        // The platform counted both: 400 left. The second's answer is processed first,
        // then the first's (which tells of 500 left): the bucket stays at 400.
        p.report_after("shopify", "shop:a", &report(400.0, 600.0, 0.001), Some(second_sent)).unwrap();
        p.report_after("shopify", "shop:a", &report(500.0, 600.0, 0.001), Some(first_sent)).unwrap();
        let left = p.views("shopify")[0].available;
        assert!((399.0..401.0).contains(&left), "{left}");
    }

    #[tokio::test]
    async fn a_report_sets_the_bucket_less_what_is_on_its_way() {
        let p = PointsBuckets::default();
        p.report("shopify", "shop:a", &report(1000.0, 1000.0, 50.0)).unwrap();
        let on_its_way = p.take("shopify", "shop:a", &cost(300.0), Duration::ZERO).await.unwrap().1.unwrap();
        let answered = p.take("shopify", "shop:a", &cost(100.0), Duration::ZERO).await.unwrap().1.unwrap();
        drop(answered);
        // The platform answered the second request: 600 left by its count; the first
        // one (300) is still on its way, so berth counts 300.
        p.report("shopify", "shop:a", &report(600.0, 1000.0, 50.0)).unwrap();
        let v = &p.views("shopify")[0];
        assert!((v.available - 300.0).abs() < 5.0 && v.in_flight == 300.0 && v.source == "reported", "{v:?}");
        // 400 points need (400-300)/50 = 2 s: more than this call may wait.
        let err = p.take("shopify", "shop:a", &cost(400.0), Duration::from_millis(100)).await.err().unwrap();
        assert!((1_800..=2_000).contains(&err.wait_ms), "{err:?}");
        drop(on_its_way);
        assert_eq!(p.views("shopify")[0].in_flight, 0.0);
        // Another shop's quota is its own.
        assert!(p.take("shopify", "shop:b", &cost(400.0), Duration::ZERO).await.unwrap().1.is_none());
    }

    #[tokio::test]
    async fn a_request_costlier_than_the_bucket_goes_and_the_platform_says_so() {
        let p = PointsBuckets::default();
        p.report("shopify", "shop:a", &report(1000.0, 1000.0, 50.0)).unwrap();
        assert!(p.take("shopify", "shop:a", &cost(5000.0), Duration::ZERO).await.is_ok());
    }

    #[test]
    fn reports_are_checked_and_names_bounded() {
        let p = PointsBuckets::default();
        for bad in [report(f64::NAN, 1.0, 1.0), report(-1.0, 1.0, 1.0), report(1.0, 0.0, 1.0), report(1.0, 1.0, f64::INFINITY)] {
            assert!(p.report("x", "shop:a", &bad).is_err(), "{bad:?}");
        }
        let named = |n: &str| QuotaReport { name: n.into(), available: 1.0, maximum: 1.0, restore_per_second: 1.0 };
        assert!(p.report("x", "shop:a", &named("a b")).is_err());
        assert!(p.report("x", "shop:a", &named(&"n".repeat(65))).is_err());
        for i in 0..MAX_NAMES_PER_QUOTA {
            p.report("x", "shop:a", &named(&format!("q{i}"))).unwrap();
        }
        let err = p.report("x", "shop:a", &named("one-more")).unwrap_err();
        assert!(err.contains("names already"), "{err}");
        assert!(p.report("x", "shop:a", &named("q0")).is_ok(), "a known name is updated");
        assert!(p.report("x", "shop:b", &named("one-more")).is_ok(), "per quota");
    }
}
