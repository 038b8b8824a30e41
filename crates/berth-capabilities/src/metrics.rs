//! Outbound HTTP metrics: platform requests by status class, their time, and the time
//! requests waited for the host's rate limits. Registered into the registry the service
//! passes in (no global).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub platform: String,
    /// `2xx`, `3xx`, `4xx`, `429`, `5xx`, or how the request failed without a status
    /// (`denied`, `timeout`, `connection`, `too_large`, `invalid`, `held_back`).
    pub status: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlatformLabels {
    pub platform: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    pub platform: String,
    /// `requests`, `endpoint:CLASS`, `call-limit` or `points:NAME` (see `usage`).
    pub quota: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn http_buckets() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub struct HttpMetrics {
    http_requests: Family<HttpLabels, Counter>,
    http_seconds: HistogramFamily<PlatformLabels>,
    ratelimit_wait_seconds: Family<PlatformLabels, Counter<f64, AtomicU64>>,
    quota_used_ratio: Family<QuotaLabels, Gauge<f64, AtomicU64>>,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> HttpMetrics {
        let m = HttpMetrics {
            http_requests: Family::default(),
            http_seconds: HistogramFamily::new_with_constructor(http_buckets as fn() -> Histogram),
            ratelimit_wait_seconds: Family::default(),
            quota_used_ratio: Family::default(),
        };
        registry.register("http_requests", "Outbound platform requests by status class", m.http_requests.clone());
        registry.register("http_request_seconds", "Outbound platform request time, rate-limit waits excluded", m.http_seconds.clone());
        registry.register("ratelimit_wait_seconds", "Time requests waited for the host's rate limits", m.ratelimit_wait_seconds.clone());
        registry.register(
            "ratelimit_quota_used_ratio",
            "Share of each platform quota in use, its busiest key: calls over the usage window against what the bucket refills in it, or the platform's own report",
            m.quota_used_ratio.clone(),
        );
        m
    }

    /// Set the quota gauges (at scrape time) from [`crate::ratelimit::RateLimits::usage`]:
    /// one per platform and quota, its busiest key (shops are not labels).
    pub fn quota_usage(&self, rows: &[crate::usage::QuotaUsage]) {
        self.quota_used_ratio.clear();
        for r in crate::usage::busiest(rows) {
            self.quota_used_ratio.get_or_create(&QuotaLabels { platform: r.platform, quota: r.quota }).set(r.ratio);
        }
    }

    pub fn http(&self, platform: &str, status: &str, took: Option<Duration>) {
        let labels = HttpLabels { platform: platform.to_string(), status: status.to_string() };
        self.http_requests.get_or_create(&labels).inc();
        if let Some(took) = took {
            self.http_seconds.get_or_create(&PlatformLabels { platform: labels.platform }).observe(took.as_secs_f64());
        }
    }

    pub fn rate_limit_wait(&self, platform: &str, waited: Duration) {
        self.ratelimit_wait_seconds.get_or_create(&PlatformLabels { platform: platform.to_string() }).inc_by(waited.as_secs_f64());
    }

}

/// The status label of an HTTP answer: 429 on its own, else the class.
pub fn status_class(status: u16) -> &'static str {
    match status {
        429 => "429",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

