//! Every part's metrics in one registry: the runtime's, the HTTP gateway's, the API's and
//! ops' own (queues, health, alerts), which renders them all at `/metrics`.

use berth_ops::metrics::Metrics;
use prometheus_client::registry::Registry;

/// Every part's metrics, registered in one registry.
#[derive(Clone)]
pub struct AllMetrics {
    pub ops: std::sync::Arc<Metrics>,
    pub runtime: std::sync::Arc<berth_runtime::metrics::RuntimeMetrics>,
    pub http: std::sync::Arc<berth_capabilities::metrics::HttpMetrics>,
    pub api: std::sync::Arc<berth_api::metrics::ApiMetrics>,
}

impl AllMetrics {
    /// A fresh registry with every family berth exports.
    pub fn new() -> AllMetrics {
        Self::for_node(None)
    }

    /// The same, every series labelled `node="NAME"` (cluster mode: one scrape config for
    /// every node, and the series of each node told apart).
    pub fn for_node(node: Option<&str>) -> AllMetrics {
        let labels = node.map(|n| (std::borrow::Cow::Borrowed("node"), std::borrow::Cow::Owned(n.to_string())));
        let mut registry = Registry::with_prefix_and_labels("berth", labels.into_iter());
        let runtime = std::sync::Arc::new(berth_runtime::metrics::RuntimeMetrics::register(&mut registry));
        let http = std::sync::Arc::new(berth_capabilities::metrics::HttpMetrics::register(&mut registry));
        let api = std::sync::Arc::new(berth_api::metrics::ApiMetrics::register(&mut registry));
        AllMetrics { ops: std::sync::Arc::new(Metrics::new(registry)), runtime, http, api }
    }
}

impl Default for AllMetrics {
    fn default() -> Self {
        AllMetrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn text_has_help_type_and_bounded_labels() {
        let all = AllMetrics::new();
        let meters = all.runtime.meters("shopify", "1.0.0");
        meters.call("pull-orders", "ok", Duration::from_millis(3));
        meters.call("pull-orders", "ok", Duration::from_millis(4));
        all.http.http("shopify", berth_capabilities::metrics::status_class(429), Some(Duration::from_millis(20)));
        all.ops.queue("orders", 3, 1, 0, Some(Duration::from_secs(2)));
        let text = all.ops.render();
        assert!(text.contains("# TYPE berth_connector_calls_total counter"), "{text}");
        assert!(text.contains("# HELP berth_connector_calls_total Connector export calls"), "{text}");
        assert!(text.contains("# TYPE berth_connector_call_seconds histogram"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(text.contains("berth_connector_calls_total{connector=\"shopify\",version=\"1.0.0\",call=\"pull-orders\",outcome=\"ok\"} 2"), "{text}");
        assert!(text.contains("berth_http_requests_total{platform=\"shopify\",status=\"429\"} 1"), "{text}");
        assert!(text.contains("berth_queue_ready{queue=\"orders\"} 3"), "{text}");
        assert!(text.contains("berth_connector_call_seconds_bucket{"), "{text}");
        assert_eq!(berth_capabilities::metrics::status_class(503), "5xx");
    }

    #[test]
    fn a_cluster_node_labels_every_series_with_its_name() {
        let all = AllMetrics::for_node(Some("berth-2"));
        all.runtime.meters("shopify", "1.0.0").call("pull-orders", "ok", Duration::from_millis(3));
        all.ops.queue("orders", 3, 1, 0, None);
        let text = all.ops.render();
        assert!(text.contains("berth_connector_calls_total{node=\"berth-2\",connector=\"shopify\",version=\"1.0.0\",call=\"pull-orders\",outcome=\"ok\"} 1"), "{text}");
        assert!(text.contains("berth_queue_ready{node=\"berth-2\",queue=\"orders\"} 3"), "{text}");
    }

}
