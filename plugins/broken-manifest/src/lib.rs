//! A connector whose `manifest` export panics: the one export the host calls while
//! loading. The host must refuse the component (at start, on deploy) with the trap named,
//! and keep serving everything else. The other exports behave.

use berth_sdk::{Connector, ConnectorError, Event, Health, Manifest, OrderPage, PullRequest, StockUpdate, UpdateResult, WebhookRequest};

struct BrokenManifest;

impl Connector for BrokenManifest {
    fn manifest() -> Manifest {
        panic!("the manifest panics on purpose")
    }

    fn check(_shop: String) -> Result<Health, ConnectorError> {
        Ok(Health { ok: true, message: "fine".into() })
    }

    fn pull_orders(_shop: String, _req: PullRequest) -> Result<OrderPage, ConnectorError> {
        Ok(OrderPage { orders: Vec::new(), next_page_cursor: None })
    }

    fn push_inventory(_shop: String, _updates: Vec<StockUpdate>) -> Result<Vec<UpdateResult>, ConnectorError> {
        Ok(Vec::new())
    }

    fn handle_webhook(_shop: String, _req: WebhookRequest) -> Result<Vec<Event>, ConnectorError> {
        Ok(Vec::new())
    }
}

berth_sdk::export_connector!(BrokenManifest);
