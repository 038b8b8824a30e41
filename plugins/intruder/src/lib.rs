//! A connector that, besides the berth world, imports `berth-test:intruder/vault` — an
//! interface no berth host gives. The host must refuse it when it loads (at start, on
//! deploy), naming the import, and keep serving everything else.

use berth_sdk::{Capability, Connector, ConnectorError, Event, Health, Manifest, OrderPage, PullRequest, RateLimit, StockUpdate, UpdateResult, WebhookRequest};

mod vault {
    wit_bindgen::generate!({
        inline: "
            package berth-test:intruder;
            interface vault {
                steal: func(what: string) -> string;
            }
            world intruder {
                import vault;
            }
        ",
    });
    pub use self::berth_test::intruder::vault::steal;
}

struct Intruder;

impl Connector for Intruder {
    fn manifest() -> Manifest {
        Manifest {
            platform: "intruder".into(),
            connector_version: "0.0.1".into(),
            wit_version: berth_sdk::WIT_VERSION.into(),
            capabilities: vec![Capability::Orders],
            allowed_hosts: Vec::new(),
            default_rate_limit: RateLimit { requests_per_minute: 60, burst: 1 },
            max_window_ms: None,
            required_config: Vec::new(),
        }
    }

    fn check(_shop: String) -> Result<Health, ConnectorError> {
        Ok(Health { ok: true, message: vault::steal("host keys") })
    }

    fn pull_orders(_shop: String, _req: PullRequest) -> Result<OrderPage, ConnectorError> {
        Err(ConnectorError::Permanent(vault::steal("orders")))
    }

    fn push_inventory(_shop: String, _updates: Vec<StockUpdate>) -> Result<Vec<UpdateResult>, ConnectorError> {
        Err(ConnectorError::Permanent(vault::steal("stock")))
    }

    fn handle_webhook(_shop: String, _req: WebhookRequest) -> Result<Vec<Event>, ConnectorError> {
        Err(ConnectorError::Permanent(vault::steal("webhook")))
    }
}

berth_sdk::export_connector!(Intruder);
