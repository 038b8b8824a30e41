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
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;





#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// `orders` (to the ERP) or `stock` (to the platforms).
    pub queue: String,
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

/// One reconciled shop, or one with a snapshot (as many as configured shops, never more).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    pub shop: String,
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


/// A refused API call: `reason` is `unauthorized` or `forbidden`, `access` what the
/// call needed (never the token or who held it).




/// The service's metrics: the registry every part of berth registers its families in
/// (the runtime's, the HTTP gateway's, the API's), plus the ones read from the state of
/// the whole (queues, shop health, alerts). Built once by the service and passed to what
/// needs it; there is no global.
pub struct Metrics {
    registry: Registry,
    queue_depth: Family<QueueLabels, Gauge>,
    queue_in_flight: Family<QueueLabels, Gauge>,
    queue_oldest_age_seconds: Family<QueueLabels, Gauge<f64, AtomicU64>>,
    queue_dead_letters: Family<QueueLabels, Gauge>,
    probes: Family<ProbeLabels, Counter>,
    shops: Family<ShopStateLabels, Gauge>,
    availability: Family<TierLabels, Gauge<f64, AtomicU64>>,
    shops_below_sla: Family<TierLabels, Gauge>,
    sla_target: Family<SlaLabels, Gauge<f64, AtomicU64>>,
    shop_up: Family<ShopLabels, Gauge>,
    shop_availability: Family<ShopLabels, Gauge<f64, AtomicU64>>,
    alerts_firing: Family<AlertLabels, Gauge>,
    alert_notifications: Family<ReceiverLabels, Counter>,
    credential_refreshes: Family<OutcomeLabels, Counter>,
    stock_drift: Family<DriftLabels, Gauge>,
    snapshot_taken: Family<DriftLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

impl Metrics {
    /// Register the whole-service families in `registry` and keep it for rendering.
    pub fn new(registry: Registry) -> Metrics {
        let mut m = Metrics {
            registry,
            queue_depth: Family::default(),
            queue_in_flight: Family::default(),
            queue_oldest_age_seconds: Family::default(),
            queue_dead_letters: Family::default(),
            probes: Family::default(),
            shops: Family::default(),
            availability: Family::default(),
            shops_below_sla: Family::default(),
            sla_target: Family::default(),
            shop_up: Family::default(),
            shop_availability: Family::default(),
            alerts_firing: Family::default(),
            alert_notifications: Family::default(),
            credential_refreshes: Family::default(),
            stock_drift: Family::default(),
            snapshot_taken: Family::default(),
        };
        m.registry.register(
            "stock_drift_skus",
            "SKUs whose platform quantity differed from the ERP's at the shop's last reconciliation (missing ones included)",
            m.stock_drift.clone(),
        );
        m.registry.register(
            "snapshot_taken_timestamp_seconds",
            "When the shop's last snapshot was taken (Unix seconds): alert on its age to catch nights without one",
            m.snapshot_taken.clone(),
        );
        m.registry.register("queue_ready", "Items waiting to be taken (orders for the ERP, SKUs due for a push)", m.queue_depth.clone());
        m.registry.register("queue_in_flight", "Items leased or waiting for a retry", m.queue_in_flight.clone());
        m.registry.register("queue_oldest_age_seconds", "Age of the oldest item not yet done", m.queue_oldest_age_seconds.clone());
        m.registry.register("queue_dead_letters", "Items that ran out of attempts and wait for a person", m.queue_dead_letters.clone());
        m.registry.register("probes", "Health probes (the connector's check) by how they ended", m.probes.clone());
        m.registry.register("shops", "Shops by connector, tier and probe state", m.shops.clone());
        m.registry.register("availability_ratio", "Probes that found shops up over all probes in the health window", m.availability.clone());
        m.registry.register("shops_below_sla", "Shops whose availability in the window is below their tier's SLA", m.shops_below_sla.clone());
        m.registry.register("sla_target_ratio", "Availability each tier promises", m.sla_target.clone());
        m.registry.register("shop_up", "1 when the shop's last probe found it up (only with health.shop_labels)", m.shop_up.clone());
        m.registry.register("shop_availability_ratio", "A shop's availability in the window (only with health.shop_labels)", m.shop_availability.clone());
        m.registry.register("alerts_firing", "Alerts firing now, by rule and severity", m.alerts_firing.clone());
        m.registry.register("alert_notifications", "Alert notifications per receiver: delivered, or given up after retries", m.alert_notifications.clone());
        m.registry.register(
            "credential_refreshes",
            "Refreshes of shops' credentials by outcome: ok, transient (retried after a backoff), revoked (the merchant must authorize again)",
            m.credential_refreshes.clone(),
        );
        m
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render(&self) -> String {
        let mut open_metrics = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        to_prometheus_text(&open_metrics)
    }

    fn probe(&self, connector: &str, tier: berth_types::shop::Tier, outcome: &str) {
        let labels = ProbeLabels { connector: connector.to_string(), tier: format!("{tier:?}"), outcome: outcome.to_string() };
        self.probes.get_or_create(&labels).inc();
    }

    /// Set the drift gauge (at scrape time): one series per reconciled shop.
    pub fn export_drift(&self, drift: &[berth_core::reconcile::DriftView]) {
        self.stock_drift.clear();
        for d in drift {
            self.stock_drift.get_or_create(&DriftLabels { shop: d.shop.clone() }).set(d.drifting as i64);
        }
    }

    /// Set the snapshot gauge (at scrape time): one series per shop with a snapshot.
    pub fn export_snapshots(&self, taken: &std::collections::BTreeMap<String, i64>) {
        self.snapshot_taken.clear();
        for (shop, at_ms) in taken {
            self.snapshot_taken.get_or_create(&DriftLabels { shop: shop.clone() }).set(at_ms / 1000);
        }
    }

    /// Set the health gauges (at scrape time) from the book's tier summaries and, when
    /// shop labels are configured, each shop (in cluster mode, the shops this node runs).
    pub fn export_health(&self, book: &berth_core::health::HealthBook) {
        let shops = book.shops_here();
        let labelled = book.config().shop_labels.then_some(shops.as_slice());
        self.health(&book.summary(&shops), labelled, |t| book.config().policy(t).sla_percent);
    }

    fn health(&self, tiers: &[berth_core::health::TierSummary], shops: Option<&[berth_core::health::ShopHealth]>, sla: impl Fn(berth_types::shop::Tier) -> f64) {
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
            self.shop_up.get_or_create(&labels).set((s.state == berth_core::health::ShopState::Up) as i64);
            if let Some(r) = s.availability.ratio {
                self.shop_availability.get_or_create(&labels).set(r);
            }
        }
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

/// Core's events that are counted: probes and credential refreshes, by outcome.
impl berth_core::events::Listener for Metrics {
    fn on(&self, event: &berth_core::events::Event<'_>) {
        match event {
            berth_core::events::Event::Probed { connector, tier, outcome, .. } => self.probe(connector, *tier, outcome),
            berth_core::events::Event::CredentialsRefreshed { outcome, .. } => {
                self.credential_refreshes.get_or_create(&OutcomeLabels { outcome: outcome.to_string() }).inc();
            }
            _ => {}
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_counted_and_shop_series_only_when_configured() {
        use berth_core::health::{HealthBook, HealthConfig, ProbeResult};
        use berth_types::shop::Tier;
        let dir = tempfile::tempdir().unwrap();
        let db = berth_storage::Store::open(dir.path(), berth_storage::StoreConfig { reserve_bytes: 0, ..Default::default() }).unwrap();
        let metrics = std::sync::Arc::new(Metrics::new(Registry::with_prefix("berth")));
        let events = berth_core::events::Events::new();
        events.subscribe(metrics.clone());
        let cfg = HealthConfig { shop_labels: true, ..HealthConfig::default() };
        let book = HealthBook::open(&db, cfg, events.clone()).unwrap();
        book.register("labelled-shop", "shopify", "shopify", Tier::B);
        let up = ProbeResult { at_ms: berth_types::clock::now_ms(), up: true, outcome: "ok".into(), message: String::new(), latency_ms: 1 };
        book.record("labelled-shop", up);
        metrics.export_health(&book);
        let text = metrics.render();
        assert!(text.contains("berth_probes_total{connector=\"shopify\",tier=\"B\",outcome=\"ok\"} 1"), "{text}");
        assert!(text.contains("berth_shop_up{shop=\"labelled-shop\",connector=\"shopify\",tier=\"B\"} 1"), "{text}");
        assert!(text.contains("berth_shop_availability_ratio{shop=\"labelled-shop\",connector=\"shopify\",tier=\"B\"} 1"), "{text}");
        let book = HealthBook::open(&db, HealthConfig::default(), events).unwrap();
        book.register("labelled-shop", "shopify", "shopify", Tier::B);
        metrics.export_health(&book);
        assert!(!metrics.render().contains("shop=\"labelled-shop\""), "off by default");
    }
}
