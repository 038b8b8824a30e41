//! The API's own metrics: refused calls, open connections and the ones it closed.
//! Registered into the registry the service passes in (no global).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    pub reason: &'static str,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub reason: &'static str,
    pub access: &'static str,
}

#[derive(Debug)]
pub struct ApiMetrics {
    refused: Family<RefusedLabels, Counter>,
    pub connections: Gauge,
    closed: Family<ClosedLabels, Counter>,
}

impl ApiMetrics {
    pub fn register(registry: &mut Registry) -> ApiMetrics {
        let m = ApiMetrics { refused: Family::default(), connections: Gauge::default(), closed: Family::default() };
        registry.register("api_refused", "API calls refused for a missing, unknown or too weak token", m.refused.clone());
        registry.register("api_connections", "API connections open now", m.connections.clone());
        registry.register(
            "api_connections_closed",
            "API connections berth closed: evicted (idle longest when max_connections was reached), refused (all busy), timeout (headers or TLS handshake too slow, idle too long)",
            m.closed.clone(),
        );
        m
    }

    /// A call refused for its token (`reason`) and what it needed (`access`).
    pub fn refused(&self, reason: &'static str, access: &'static str) {
        self.refused.get_or_create(&RefusedLabels { reason, access }).inc();
    }

    /// The listener closed an API connection itself (see listener.rs).
    pub fn connection_closed(&self, reason: &'static str) {
        self.closed.get_or_create(&ClosedLabels { reason }).inc();
    }
}
