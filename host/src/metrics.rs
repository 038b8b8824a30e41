//! Prometheus metrics, served at `/metrics` in the text format.
//!
//! Labels are bounded by construction: connector and version names come from config and
//! the registry (ops choose them), `call` and `outcome` are fixed sets, platforms come
//! from loaded manifests, HTTP statuses are kept as exact codes only for the few that
//! mean something to ops (429) and as classes otherwise. No shop, order id, SKU or URL
//! is ever a label.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub connector: String,
    pub version: String,
    /// `manifest`, `check`, `pull-orders`, `push-inventory`, `handle-webhook`.
    pub call: String,
    /// `ok`, a connector-error case, or `trap` / `timeout` / `instantiate`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub connector: String,
    pub version: String,
    pub call: String,
}

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
pub struct QueueLabels {
    /// `orders` (to the ERP) or `stock` (to the platforms).
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectorLabels {
    pub connector: String,
    pub version: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric berth exports.
pub struct Metrics {
    registry: Registry,
    pub calls: Family<CallLabels, Counter>,
    pub call_seconds: HistogramFamily<LatencyLabels>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_seconds: HistogramFamily<PlatformLabels>,
    pub ratelimit_wait_seconds: Family<PlatformLabels, Counter<f64, AtomicU64>>,
    pub queue_depth: Family<QueueLabels, Gauge>,
    pub queue_in_flight: Family<QueueLabels, Gauge>,
    pub queue_oldest_age_seconds: Family<QueueLabels, Gauge<f64, AtomicU64>>,
    pub queue_dead_letters: Family<QueueLabels, Gauge>,
    pub instance_memory_bytes: HistogramFamily<ConnectorLabels>,
}

fn call_buckets() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

fn http_buckets() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn memory_buckets() -> Histogram {
    // 64 KiB .. 1 GiB
    Histogram::new(exponential_buckets(65_536.0, 2.0, 15))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("berth");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register("connector_calls", "Connector export calls by how they ended", calls.clone());
        let call_seconds = HistogramFamily::<LatencyLabels>::new_with_constructor(call_buckets as fn() -> Histogram);
        registry.register("connector_call_seconds", "Time per connector export call, instance creation included", call_seconds.clone());
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register("http_requests", "Outbound platform requests by status class", http_requests.clone());
        let http_seconds = HistogramFamily::<PlatformLabels>::new_with_constructor(http_buckets as fn() -> Histogram);
        registry.register("http_request_seconds", "Outbound platform request time, rate-limit waits excluded", http_seconds.clone());
        let ratelimit_wait_seconds = Family::<PlatformLabels, Counter<f64, AtomicU64>>::default();
        registry.register("ratelimit_wait_seconds", "Time requests waited for the host's rate limits", ratelimit_wait_seconds.clone());
        let queue_depth = Family::<QueueLabels, Gauge>::default();
        registry.register("queue_ready", "Items waiting to be taken (orders for the ERP, SKUs due for a push)", queue_depth.clone());
        let queue_in_flight = Family::<QueueLabels, Gauge>::default();
        registry.register("queue_in_flight", "Items leased or waiting for a retry", queue_in_flight.clone());
        let queue_oldest_age_seconds = Family::<QueueLabels, Gauge<f64, AtomicU64>>::default();
        registry.register("queue_oldest_age_seconds", "Age of the oldest item not yet done", queue_oldest_age_seconds.clone());
        let queue_dead_letters = Family::<QueueLabels, Gauge>::default();
        registry.register("queue_dead_letters", "Items that ran out of attempts and wait for a person", queue_dead_letters.clone());
        let instance_memory_bytes = HistogramFamily::<ConnectorLabels>::new_with_constructor(memory_buckets as fn() -> Histogram);
        registry.register("instance_memory_bytes", "Linear memory a connector instance had grown to when its call ended", instance_memory_bytes.clone());
        Metrics {
            registry,
            calls,
            call_seconds,
            http_requests,
            http_seconds,
            ratelimit_wait_seconds,
            queue_depth,
            queue_in_flight,
            queue_oldest_age_seconds,
            queue_dead_letters,
            instance_memory_bytes,
        }
    }

    /// The process's metrics.
    pub fn get() -> &'static Metrics {
        static METRICS: OnceLock<Metrics> = OnceLock::new();
        METRICS.get_or_init(Metrics::new)
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render(&self) -> String {
        let mut open_metrics = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        to_prometheus_text(&open_metrics)
    }

    pub fn call(&self, connector: &str, version: &str, call: &str, outcome: &str, took: Duration) {
        let labels = CallLabels {
            connector: connector.to_string(),
            version: version.to_string(),
            call: call.to_string(),
            outcome: outcome.to_string(),
        };
        self.calls.get_or_create(&labels).inc();
        let latency = LatencyLabels { connector: labels.connector, version: labels.version, call: labels.call };
        self.call_seconds.get_or_create(&latency).observe(took.as_secs_f64());
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

    pub fn memory(&self, connector: &str, version: &str, bytes: usize) {
        let labels = ConnectorLabels { connector: connector.to_string(), version: version.to_string() };
        self.instance_memory_bytes.get_or_create(&labels).observe(bytes as f64);
    }

    /// Set one queue's gauges (read at scrape time).
    pub fn queue(&self, queue: &str, ready: u64, in_flight: u64, dead: u64, oldest_age: Option<Duration>) {
        let labels = QueueLabels { queue: queue.to_string() };
        self.queue_depth.get_or_create(&labels).set(ready as i64);
        self.queue_in_flight.get_or_create(&labels).set(in_flight as i64);
        self.queue_dead_letters.get_or_create(&labels).set(dead as i64);
        self.queue_oldest_age_seconds.get_or_create(&labels).set(oldest_age.map_or(0.0, |d| d.as_secs_f64()));
    }
}

/// The encoder writes OpenMetrics, where a counter family `x` has samples `x_total`;
/// in the Prometheus text format Prometheus and promtool read, HELP and TYPE name the
/// sample (`x_total`). Rename those, and drop the OpenMetrics `# EOF` terminator.
fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 16 * counters.len());
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{tag}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_help_type_and_bounded_labels() {
        let m = Metrics::new();
        m.call("shopify", "1.0.0", "pull-orders", "ok", Duration::from_millis(3));
        m.http("shopify", status_class(429), Some(Duration::from_millis(20)));
        m.queue("orders", 3, 1, 0, Some(Duration::from_secs(2)));
        let text = m.render();
        assert!(text.contains("# TYPE berth_connector_calls_total counter"), "{text}");
        assert!(text.contains("# HELP berth_connector_calls_total Connector export calls"), "{text}");
        assert!(text.contains("# TYPE berth_connector_call_seconds histogram"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(text.contains("berth_connector_calls_total{connector=\"shopify\",version=\"1.0.0\",call=\"pull-orders\",outcome=\"ok\"} 1"), "{text}");
        assert!(text.contains("berth_http_requests_total{platform=\"shopify\",status=\"429\"} 1"), "{text}");
        assert!(text.contains("berth_queue_ready{queue=\"orders\"} 3"), "{text}");
        assert!(text.contains("berth_connector_call_seconds_bucket{"), "{text}");
        assert_eq!(status_class(503), "5xx");
    }
}
