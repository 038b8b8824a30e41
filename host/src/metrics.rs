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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub connector: String,
    pub tier: String,
    /// `ok`, `unhealthy`, a connector-error case, `trap`, `timeout`, `instantiate`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    pub connector: String,
    pub tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShopStateLabels {
    pub connector: String,
    pub tier: String,
    /// `up`, `down`, `paused`, `unknown`.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlaLabels {
    pub tier: String,
}

/// Only with `[health] shop_labels = true`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShopLabels {
    pub shop: String,
    pub connector: String,
    pub tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// The rule's name from config.
    pub rule: String,
    pub severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiverLabels {
    /// The receiver's name from config.
    pub receiver: String,
    /// `sent` or `failed` (gave up after its retries).
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    pub reason: &'static str,
}

/// A refused API call: `reason` is `unauthorized` or `forbidden`, `access` what the
/// call needed (never the token or who held it).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub reason: &'static str,
    pub access: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LogLabels {
    pub connector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub connector: String,
    /// Which bound: `raw_json_dropped`, `outside_window`, `kv_quota`, `kv_rate`,
    /// `order_budget`, `pages_per_window`, `webhook_busy`, `instances`.
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DroppedLabels {
    pub connector: String,
    /// `bad_name`, `bad_label`, `too_many_series`, `bad_value`, `secret`.
    pub reason: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Guest metrics: `connector`, `metric` and the guest's own (checked) labels.
type GuestLabels = Vec<(String, String)>;

/// What a connector may export through the `metrics` import: names `[a-z][a-z0-9_]*`
/// up to 64 characters, at most 4 labels with names like that (up to 32, not one of
/// the host's own) and values up to 64 characters, at most 100 series per connector.
/// Anything else is dropped and counted in `berth_connector_metric_dropped_total`.
pub const GUEST_MAX_SERIES: usize = 100;
const GUEST_MAX_LABELS: usize = 4;
const GUEST_MAX_VALUE: usize = 64;
const RESERVED_LABELS: &[&str] = &["connector", "metric", "le", "quantile", "version"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuestKind {
    Counter,
    Gauge,
    Histogram,
}

/// One connector version's call metrics. Label sets are built once per call and
/// outcome, not on every call: a call's count and time go to handles looked up here.
pub struct CallMeters {
    labels: ConnectorLabels,
    calls: Family<CallLabels, Counter>,
    call_seconds: HistogramFamily<LatencyLabels>,
    memory: Histogram,
    fuel: Histogram,
    /// (call, outcome) → its counter and the call's latency histogram.
    by_call: std::sync::RwLock<std::collections::HashMap<(&'static str, &'static str), (Counter, Histogram)>>,
}

impl CallMeters {
    /// Count a finished call: how it ended and how long it took.
    pub fn call(&self, call: &'static str, outcome: &'static str, took: Duration) {
        let known = self.by_call.read().unwrap_or_else(|e| e.into_inner()).get(&(call, outcome)).cloned();
        let (count, seconds) = known.unwrap_or_else(|| {
            let (connector, version) = (self.labels.connector.clone(), self.labels.version.clone());
            let latency = LatencyLabels { connector: connector.clone(), version: version.clone(), call: call.to_string() };
            let labels = CallLabels { connector, version, call: call.to_string(), outcome: outcome.to_string() };
            let handles = (self.calls.get_or_create(&labels).clone(), self.call_seconds.get_or_create(&latency).clone());
            self.by_call.write().unwrap_or_else(|e| e.into_inner()).insert((call, outcome), handles.clone());
            handles
        });
        count.inc();
        seconds.observe(took.as_secs_f64());
    }

    /// What one call's instance used: the memory it grew to, the fuel it burned.
    pub fn usage(&self, peak_memory: usize, fuel: Option<u64>) {
        self.memory.observe(peak_memory as f64);
        if let Some(fuel) = fuel {
            self.fuel.observe(fuel as f64);
        }
    }
}

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
    pub fuel_used: HistogramFamily<ConnectorLabels>,
    pub guest_counters: Family<GuestLabels, Counter>,
    pub guest_gauges: Family<GuestLabels, Gauge<f64, AtomicU64>>,
    pub guest_histograms: HistogramFamily<GuestLabels>,
    pub guest_dropped: Family<DroppedLabels, Counter>,
    pub log_dropped_bytes: Family<LogLabels, Counter>,
    pub limit_hits: Family<LimitLabels, Counter>,
    pub probes: Family<ProbeLabels, Counter>,
    pub shops: Family<ShopStateLabels, Gauge>,
    pub availability: Family<TierLabels, Gauge<f64, AtomicU64>>,
    pub shops_below_sla: Family<TierLabels, Gauge>,
    pub sla_target: Family<SlaLabels, Gauge<f64, AtomicU64>>,
    pub shop_up: Family<ShopLabels, Gauge>,
    pub shop_availability: Family<ShopLabels, Gauge<f64, AtomicU64>>,
    pub alerts_firing: Family<AlertLabels, Gauge>,
    pub alert_notifications: Family<ReceiverLabels, Counter>,
    pub connector_isolated: Family<ConnectorLabels, Gauge>,
    pub breaker_trips: Family<ConnectorLabels, Counter>,
    pub api_refused: Family<RefusedLabels, Counter>,
    pub api_connections: Gauge,
    pub api_connections_closed: Family<ClosedLabels, Counter>,
    /// Series each connector has created, to hold it to GUEST_MAX_SERIES.
    guest_series: std::sync::Mutex<std::collections::HashMap<String, std::collections::HashSet<(GuestKind, GuestLabels)>>>,
}

fn call_buckets() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

fn http_buckets() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn guest_buckets() -> Histogram {
    // 1 ms .. ~33 s, or counts 0.001 .. 32768: connectors mostly time things.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn fuel_buckets() -> Histogram {
    // 1 000 .. ~10^12 units
    Histogram::new(exponential_buckets(1000.0, 4.0, 16))
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
        let fuel_used = HistogramFamily::<ConnectorLabels>::new_with_constructor(fuel_buckets as fn() -> Histogram);
        registry.register("connector_fuel_used", "Fuel (about one unit per WebAssembly instruction) a connector call burned", fuel_used.clone());
        let guest_counters = Family::<GuestLabels, Counter>::default();
        registry.register("connector_metric_count", "Counters connectors report through the metrics import", guest_counters.clone());
        let guest_gauges = Family::<GuestLabels, Gauge<f64, AtomicU64>>::default();
        registry.register("connector_metric_value", "Gauges connectors report through the metrics import", guest_gauges.clone());
        let guest_histograms = HistogramFamily::<GuestLabels>::new_with_constructor(guest_buckets as fn() -> Histogram);
        registry.register("connector_metric_observations", "Histograms connectors report through the metrics import", guest_histograms.clone());
        let guest_dropped = Family::<DroppedLabels, Counter>::default();
        registry.register("connector_metric_dropped", "Guest metric updates refused for their name, labels, value or series count", guest_dropped.clone());
        let log_dropped_bytes = Family::<LogLabels, Counter>::default();
        registry.register("connector_log_dropped_bytes", "Guest log output dropped past max_log_bytes_per_call or max_log_bytes_per_minute", log_dropped_bytes.clone());
        let limit_hits = Family::<LimitLabels, Counter>::default();
        registry.register("connector_limit_hits", "Times a host bound stopped something a connector did or returned, by bound", limit_hits.clone());
        let probes = Family::<ProbeLabels, Counter>::default();
        registry.register("probes", "Health probes (the connector's check) by how they ended", probes.clone());
        let shops = Family::<ShopStateLabels, Gauge>::default();
        registry.register("shops", "Shops by connector, tier and probe state", shops.clone());
        let availability = Family::<TierLabels, Gauge<f64, AtomicU64>>::default();
        registry.register("availability_ratio", "Probes that found shops up over all probes in the health window", availability.clone());
        let shops_below_sla = Family::<TierLabels, Gauge>::default();
        registry.register("shops_below_sla", "Shops whose availability in the window is below their tier's SLA", shops_below_sla.clone());
        let sla_target = Family::<SlaLabels, Gauge<f64, AtomicU64>>::default();
        registry.register("sla_target_ratio", "Availability each tier promises", sla_target.clone());
        let shop_up = Family::<ShopLabels, Gauge>::default();
        registry.register("shop_up", "1 when the shop's last probe found it up (only with health.shop_labels)", shop_up.clone());
        let shop_availability = Family::<ShopLabels, Gauge<f64, AtomicU64>>::default();
        registry.register("shop_availability_ratio", "A shop's availability in the window (only with health.shop_labels)", shop_availability.clone());
        let alerts_firing = Family::<AlertLabels, Gauge>::default();
        registry.register("alerts_firing", "Alerts firing now, by rule and severity", alerts_firing.clone());
        let alert_notifications = Family::<ReceiverLabels, Counter>::default();
        registry.register("alert_notifications", "Alert notifications per receiver: delivered, or given up after retries", alert_notifications.clone());
        let connector_isolated = Family::<ConnectorLabels, Gauge>::default();
        registry.register("connector_isolated", "1 while the circuit breaker isolates a connector version (its calls are refused)", connector_isolated.clone());
        let breaker_trips = Family::<ConnectorLabels, Counter>::default();
        registry.register("connector_breaker_trips", "Times a connector version's circuit breaker opened", breaker_trips.clone());
        let api_refused = Family::<RefusedLabels, Counter>::default();
        registry.register("api_refused", "API calls refused for a missing, unknown or too weak token", api_refused.clone());
        let api_connections = Gauge::default();
        registry.register("api_connections", "API connections open now", api_connections.clone());
        let api_connections_closed = Family::<ClosedLabels, Counter>::default();
        registry.register(
            "api_connections_closed",
            "API connections berth closed: evicted (idle longest when max_connections was reached), refused (all busy), timeout (headers or TLS handshake too slow, idle too long)",
            api_connections_closed.clone(),
        );
        Metrics {
            registry,
            connector_isolated,
            breaker_trips,
            api_refused,
            api_connections,
            api_connections_closed,
            probes,
            shops,
            availability,
            shops_below_sla,
            sla_target,
            shop_up,
            shop_availability,
            alerts_firing,
            alert_notifications,
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
            fuel_used,
            guest_counters,
            guest_gauges,
            guest_histograms,
            guest_dropped,
            log_dropped_bytes,
            limit_hits,
            guest_series: Default::default(),
        }
    }

    /// A connector's own metric update, kept within bounds (see [`GUEST_MAX_SERIES`]).
    /// Returns why it was dropped, if it was.
    pub fn guest(&self, connector: &str, kind: GuestKind, name: &str, labels: &[(String, String)], value: f64) -> Result<(), &'static str> {
        let checked = (|| {
            if !valid_name(name, 64) {
                return Err("bad_name");
            }
            if labels.len() > GUEST_MAX_LABELS
                || labels.iter().any(|(k, v)| !valid_name(k, 32) || RESERVED_LABELS.contains(&k.as_str()) || v.len() > GUEST_MAX_VALUE)
            {
                return Err("bad_label");
            }
            if !value.is_finite() || (kind == GuestKind::Counter && value < 0.0) {
                return Err("bad_value");
            }
            let mut own: Vec<(String, String)> = labels.to_vec();
            own.sort();
            own.dedup_by(|a, b| a.0 == b.0);
            let mut set = vec![("connector".to_string(), connector.to_string()), ("metric".to_string(), name.to_string())];
            set.extend(own);
            let mut series = self.guest_series.lock().unwrap_or_else(|e| e.into_inner());
            let known = series.entry(connector.to_string()).or_default();
            if !known.contains(&(kind, set.clone())) {
                if known.len() >= GUEST_MAX_SERIES {
                    return Err("too_many_series");
                }
                known.insert((kind, set.clone()));
            }
            Ok(set)
        })();
        match checked {
            Ok(set) => {
                match kind {
                    GuestKind::Counter => {
                        self.guest_counters.get_or_create(&set).inc_by(value as u64);
                    }
                    GuestKind::Gauge => {
                        self.guest_gauges.get_or_create(&set).set(value);
                    }
                    GuestKind::Histogram => self.guest_histograms.get_or_create(&set).observe(value),
                }
                Ok(())
            }
            Err(reason) => {
                self.guest_refused(connector, reason);
                Err(reason)
            }
        }
    }

    /// Count a guest metric update that was not taken.
    pub fn guest_refused(&self, connector: &str, reason: &'static str) {
        let labels = DroppedLabels { connector: connector.to_string(), reason: reason.to_string() };
        self.guest_dropped.get_or_create(&labels).inc();
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

    /// The call metrics of one connector version, for [`CallMeters::call`].
    pub fn meters(&self, connector: &str, version: &str) -> CallMeters {
        let labels = ConnectorLabels { connector: connector.to_string(), version: version.to_string() };
        CallMeters {
            memory: self.instance_memory_bytes.get_or_create(&labels).clone(),
            fuel: self.fuel_used.get_or_create(&labels).clone(),
            labels,
            calls: self.calls.clone(),
            call_seconds: self.call_seconds.clone(),
            by_call: Default::default(),
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

    pub fn probe(&self, connector: &str, tier: &str, outcome: &str) {
        let labels = ProbeLabels { connector: connector.to_string(), tier: tier.to_string(), outcome: outcome.to_string() };
        self.probes.get_or_create(&labels).inc();
    }

    /// Set the health gauges (at scrape time) from the tier summaries and, when shop
    /// labels are configured, each shop.
    pub fn health(&self, tiers: &[crate::health::TierSummary], shops: Option<&[crate::health::ShopHealth]>, sla: impl Fn(berth_types::shop::Tier) -> f64) {
        self.shops.clear();
        self.availability.clear();
        self.shops_below_sla.clear();
        for t in tiers {
            let tier = format!("{:?}", t.tier);
            for (state, n) in [("up", t.up), ("down", t.down), ("paused", t.paused), ("held", t.held), ("unknown", t.unknown)] {
                let labels = ShopStateLabels { connector: t.connector.clone(), tier: tier.clone(), state: state.into() };
                self.shops.get_or_create(&labels).set(n as i64);
            }
            let labels = TierLabels { connector: t.connector.clone(), tier };
            if let Some(r) = t.availability.ratio {
                self.availability.get_or_create(&labels).set(r);
            }
            self.shops_below_sla.get_or_create(&labels).set(t.below_sla as i64);
        }
        for tier in [berth_types::shop::Tier::A, berth_types::shop::Tier::B, berth_types::shop::Tier::C] {
            self.sla_target.get_or_create(&SlaLabels { tier: format!("{tier:?}") }).set(sla(tier) / 100.0);
        }
        self.shop_up.clear();
        self.shop_availability.clear();
        for s in shops.unwrap_or_default() {
            let labels = ShopLabels { shop: s.shop.clone(), connector: s.connector.clone(), tier: format!("{:?}", s.tier) };
            self.shop_up.get_or_create(&labels).set((s.state == "up") as i64);
            if let Some(r) = s.availability.ratio {
                self.shop_availability.get_or_create(&labels).set(r);
            }
        }
    }

    /// A connector version's circuit breaker opened (`tripped`) or closed.
    pub fn breaker(&self, connector: &str, version: &str, isolated: bool, tripped: bool) {
        let labels = ConnectorLabels { connector: connector.to_string(), version: version.to_string() };
        self.connector_isolated.get_or_create(&labels).set(isolated as i64);
        if tripped {
            self.breaker_trips.get_or_create(&labels).inc();
        }
    }

    /// A host bound stopped `n` things connector `connector` did or returned.
    pub fn limit_hit(&self, connector: &str, limit: &str, n: u64) {
        self.limit_hits.get_or_create(&LimitLabels { connector: connector.to_string(), limit: limit.to_string() }).inc_by(n);
    }

    /// The listener closed an API connection itself (see api/listener.rs).
    pub fn api_connection_closed(&self, reason: &'static str) {
        self.api_connections_closed.get_or_create(&ClosedLabels { reason }).inc();
    }

    pub fn log_dropped(&self, connector: &str, bytes: usize) {
        self.log_dropped_bytes.get_or_create(&LogLabels { connector: connector.to_string() }).inc_by(bytes as u64);
    }

    pub fn alert_notification(&self, receiver: &str, result: &str) {
        self.alert_notifications.get_or_create(&ReceiverLabels { receiver: receiver.to_string(), result: result.to_string() }).inc();
    }

    /// Set the firing-alert gauges: (rule, severity) → alerts firing.
    pub fn alerts(&self, firing: &std::collections::BTreeMap<(String, &'static str), i64>) {
        self.alerts_firing.clear();
        for ((rule, severity), n) in firing {
            self.alerts_firing.get_or_create(&AlertLabels { rule: rule.clone(), severity: severity.to_string() }).set(*n);
        }
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
        let meters = m.meters("shopify", "1.0.0");
        meters.call("pull-orders", "ok", Duration::from_millis(3));
        meters.call("pull-orders", "ok", Duration::from_millis(4));
        m.http("shopify", status_class(429), Some(Duration::from_millis(20)));
        m.queue("orders", 3, 1, 0, Some(Duration::from_secs(2)));
        let text = m.render();
        assert!(text.contains("# TYPE berth_connector_calls_total counter"), "{text}");
        assert!(text.contains("# HELP berth_connector_calls_total Connector export calls"), "{text}");
        assert!(text.contains("# TYPE berth_connector_call_seconds histogram"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(text.contains("berth_connector_calls_total{connector=\"shopify\",version=\"1.0.0\",call=\"pull-orders\",outcome=\"ok\"} 2"), "{text}");
        assert!(text.contains("berth_http_requests_total{platform=\"shopify\",status=\"429\"} 1"), "{text}");
        assert!(text.contains("berth_queue_ready{queue=\"orders\"} 3"), "{text}");
        assert!(text.contains("berth_connector_call_seconds_bucket{"), "{text}");
        assert_eq!(status_class(503), "5xx");
    }

    #[test]
    fn guest_metrics_are_bounded() {
        let m = Metrics::new();
        let l = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        assert_eq!(m.guest("c", GuestKind::Counter, "orders_pulled", &l(&[("kind", "full")]), 3.0), Ok(()));
        assert_eq!(m.guest("c", GuestKind::Counter, "Orders-Pulled", &[], 1.0), Err("bad_name"));
        assert_eq!(m.guest("c", GuestKind::Counter, &"x".repeat(65), &[], 1.0), Err("bad_name"));
        assert_eq!(m.guest("c", GuestKind::Gauge, "g", &l(&[("connector", "evil")]), 1.0), Err("bad_label"));
        assert_eq!(m.guest("c", GuestKind::Gauge, "g", &l(&[("order", &"9".repeat(65))]), 1.0), Err("bad_label"));
        assert_eq!(m.guest("c", GuestKind::Gauge, "g", &l(&[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1"), ("e", "1")]), 1.0), Err("bad_label"));
        assert_eq!(m.guest("c", GuestKind::Counter, "n", &[], -1.0), Err("bad_value"));
        assert_eq!(m.guest("c", GuestKind::Histogram, "t", &[], f64::NAN), Err("bad_value"));
        // One label per order id would grow without end: the 101st series is refused.
        let mut refused = 0;
        for i in 0..150 {
            if m.guest("c", GuestKind::Counter, "per_order", &l(&[("order", &i.to_string())]), 1.0).is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, 150 - (GUEST_MAX_SERIES - 1));
        // Another connector has its own budget; known series keep counting.
        assert_eq!(m.guest("other", GuestKind::Counter, "per_order", &l(&[("order", "1")]), 1.0), Ok(()));
        assert_eq!(m.guest("c", GuestKind::Counter, "orders_pulled", &l(&[("kind", "full")]), 2.0), Ok(()));
        let text = m.render();
        assert!(text.contains("berth_connector_metric_count_total{connector=\"c\",metric=\"orders_pulled\",kind=\"full\"} 5"), "{text}");
        assert!(text.contains("berth_connector_metric_dropped_total{connector=\"c\",reason=\"too_many_series\"} 51"), "{text}");
        assert!(!text.contains("evil"), "{text}");
    }
}
