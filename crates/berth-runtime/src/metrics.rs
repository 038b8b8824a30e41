//! The runtime's metrics: connector calls, their time, memory and fuel, sandbox bounds
//! hit, circuit breakers, dropped guest log output and the connectors' own metrics.
//! Registered into the registry the service passes in (no global).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
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
pub struct ConnectorLabels {
    pub connector: String,
    pub version: String,
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

/// The runtime's metric families.
pub struct RuntimeMetrics {
    calls: Family<CallLabels, Counter>,
    call_seconds: HistogramFamily<LatencyLabels>,
    instance_memory_bytes: HistogramFamily<ConnectorLabels>,
    fuel_used: HistogramFamily<ConnectorLabels>,
    guest_counters: Family<GuestLabels, Counter>,
    guest_gauges: Family<GuestLabels, Gauge<f64, AtomicU64>>,
    guest_histograms: HistogramFamily<GuestLabels>,
    guest_dropped: Family<DroppedLabels, Counter>,
    log_dropped_bytes: Family<LogLabels, Counter>,
    limit_hits: Family<LimitLabels, Counter>,
    connector_isolated: Family<ConnectorLabels, Gauge>,
    breaker_trips: Family<ConnectorLabels, Counter>,
    /// Series each connector has created, to hold it to GUEST_MAX_SERIES.
    guest_series: std::sync::Mutex<std::collections::HashMap<String, std::collections::HashSet<(GuestKind, GuestLabels)>>>,
}

fn call_buckets() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

fn guest_buckets() -> Histogram {
    // 1 ms .. ~33 s, or counts 0.001 .. 32768: connectors mostly time things.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn fuel_buckets() -> Histogram {
    // 1 000 .. ~10^12 units
    Histogram::new(exponential_buckets(1000.0, 4.0, 16))
}

fn memory_buckets() -> Histogram {
    // 64 KiB .. 1 GiB
    Histogram::new(exponential_buckets(65_536.0, 2.0, 15))
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl RuntimeMetrics {
    /// The runtime's families, registered in `registry`.
    pub fn register(registry: &mut Registry) -> RuntimeMetrics {
        let m = RuntimeMetrics {
            calls: Family::default(),
            call_seconds: HistogramFamily::new_with_constructor(call_buckets as fn() -> Histogram),
            instance_memory_bytes: HistogramFamily::new_with_constructor(memory_buckets as fn() -> Histogram),
            fuel_used: HistogramFamily::new_with_constructor(fuel_buckets as fn() -> Histogram),
            guest_counters: Family::default(),
            guest_gauges: Family::default(),
            guest_histograms: HistogramFamily::new_with_constructor(guest_buckets as fn() -> Histogram),
            guest_dropped: Family::default(),
            log_dropped_bytes: Family::default(),
            limit_hits: Family::default(),
            connector_isolated: Family::default(),
            breaker_trips: Family::default(),
            guest_series: Default::default(),
        };
        registry.register("connector_calls", "Connector export calls by how they ended", m.calls.clone());
        registry.register("connector_call_seconds", "Time per connector export call, instance creation included", m.call_seconds.clone());
        registry.register("instance_memory_bytes", "Linear memory a connector instance had grown to when its call ended", m.instance_memory_bytes.clone());
        registry.register("connector_fuel_used", "Fuel (about one unit per WebAssembly instruction) a connector call burned", m.fuel_used.clone());
        registry.register("connector_metric_count", "Counters connectors report through the metrics import", m.guest_counters.clone());
        registry.register("connector_metric_value", "Gauges connectors report through the metrics import", m.guest_gauges.clone());
        registry.register("connector_metric_observations", "Histograms connectors report through the metrics import", m.guest_histograms.clone());
        registry.register("connector_metric_dropped", "Guest metric updates refused for their name, labels, value or series count", m.guest_dropped.clone());
        registry.register("connector_log_dropped_bytes", "Guest log output dropped past max_log_bytes_per_call or max_log_bytes_per_minute", m.log_dropped_bytes.clone());
        registry.register("connector_limit_hits", "Times a host bound stopped something a connector did or returned, by bound", m.limit_hits.clone());
        registry.register("connector_isolated", "1 while the circuit breaker isolates a connector version (its calls are refused)", m.connector_isolated.clone());
        registry.register("connector_breaker_trips", "Times a connector version's circuit breaker opened", m.breaker_trips.clone());
        m
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

    /// Meters that count nothing anyone reads: for a component being loaded, until its
    /// manifest says which version it is (a series under a made-up version would stay on
    /// `/metrics` for good).
    pub fn unregistered(connector: &str) -> CallMeters {
        CallMeters {
            labels: ConnectorLabels { connector: connector.to_string(), version: String::new() },
            calls: Family::default(),
            call_seconds: HistogramFamily::new_with_constructor(call_buckets as fn() -> Histogram),
            memory: memory_buckets(),
            fuel: fuel_buckets(),
            by_call: Default::default(),
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

    pub fn log_dropped(&self, connector: &str, bytes: usize) {
        self.log_dropped_bytes.get_or_create(&LogLabels { connector: connector.to_string() }).inc_by(bytes as u64);
    }


    /// The counter of connector `connector`'s dropped log bytes (kept by its minute budget).
    pub fn log_dropped_counter(&self, connector: &str) -> Counter {
        self.log_dropped_bytes.get_or_create(&LogLabels { connector: connector.to_string() }).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn guest_metrics_are_bounded() {
        let mut registry = Registry::with_prefix("berth");
        let m = RuntimeMetrics::register(&mut registry);
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
        let text = render(&registry);
        assert!(text.contains("berth_connector_metric_count_total{connector=\"c\",metric=\"orders_pulled\",kind=\"full\"} 5"), "{text}");
        assert!(text.contains("berth_connector_metric_dropped_total{connector=\"c\",reason=\"too_many_series\"} 51"), "{text}");
        assert!(!text.contains("evil"), "{text}");
    }
}
