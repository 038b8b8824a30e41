//! A bad release of a Shopify connector, for the canary tests: it loads and passes
//! deploy checks (same platform, hosts and world), then fails every call the way a
//! regression would — as a transient error the host retries and counts.

use berth_sdk::{
    Capability, Connector, ConnectorError, Manifest, OrderPage, PullRequest, RateLimit, StockUpdate,
    UpdateResult,
};

struct Regressed;

impl Connector for Regressed {
    fn manifest() -> Manifest {
        Manifest {
            platform: "shopify".into(),
            connector_version: "9.9.9-regressed".into(),
            wit_version: berth_sdk::WIT_VERSION.into(),
            capabilities: vec![Capability::Orders, Capability::Inventory],
            allowed_hosts: vec!["*.myshopify.com".into()],
            default_rate_limit: RateLimit { requests_per_minute: 120, burst: 40 },
            max_window_ms: None,
            required_config: vec!["base_url".into(), "access_token".into()],
        }
    }

    fn pull_orders(_shop: String, _req: PullRequest) -> Result<OrderPage, ConnectorError> {
        Err(ConnectorError::Transient("regression: cannot parse the orders page".into()))
    }

    fn push_inventory(_shop: String, _updates: Vec<StockUpdate>) -> Result<Vec<UpdateResult>, ConnectorError> {
        Err(ConnectorError::Transient("regression: cannot build the inventory request".into()))
    }
}

berth_sdk::export_connector!(Regressed);
