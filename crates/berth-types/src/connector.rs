//! What a connector is asked and what it answers, as the host works with it: the order
//! model, pages, stock updates, webhook requests and events, the manifest, and
//! [`ConnectorError`]. These mirror the `berth:connector` WIT types of the newest world;
//! berth-runtime converts each WIT version's values to and from them, so a new WIT
//! version changes the runtime and nothing past it.

use serde::{Deserialize, Serialize};

/// Why a connector call failed, as the connector says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ConnectorError {
    /// The platform throttled; retry after this many milliseconds.
    #[error("rate limited: retry after {0} ms")]
    RateLimited(u64),
    #[error("auth: {0}")]
    Auth(String),
    #[error("transient: {0}")]
    Transient(String),
    #[error("permanent: {0}")]
    Permanent(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// An order's normalized status, across platforms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OrderStatus {
    Unpaid,
    Paid,
    PartiallyShipped,
    Shipped,
    Delivered,
    Completed,
    Cancelled,
    Refunded,
    Other,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 9] = [
        OrderStatus::Unpaid,
        OrderStatus::Paid,
        OrderStatus::PartiallyShipped,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Completed,
        OrderStatus::Cancelled,
        OrderStatus::Refunded,
        OrderStatus::Other,
    ];

    /// The name the ERP sees (`partially-shipped`).
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Unpaid => "unpaid",
            OrderStatus::Paid => "paid",
            OrderStatus::PartiallyShipped => "partially-shipped",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Completed => "completed",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Refunded => "refunded",
            OrderStatus::Other => "other",
        }
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of [`OrderStatus::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown order status {0:?}: one of {all}", all = OrderStatus::ALL.map(OrderStatus::as_str).join(", "))]
pub struct UnknownStatus(pub String);

impl std::str::FromStr for OrderStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderStatus::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub line_id: String,
    pub sku: String,
    pub title: String,
    pub quantity: u32,
    pub unit_price_minor: i64,
}

/// An order as a connector maps it from its platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: String,
    pub status: OrderStatus,
    pub platform_status: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub currency: String,
    pub total_minor: i64,
    pub lines: Vec<OrderLine>,
    pub buyer_name_masked: String,
    pub buyer_phone_masked: String,
    /// The platform's own JSON for the order, as text.
    pub raw_json: String,
}

/// Orders modified in `[start_ms, end_ms)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeWindow {
    pub start_ms: i64,
    pub end_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    pub window: TimeWindow,
    pub page_cursor: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPage {
    pub orders: Vec<Order>,
    pub next_page_cursor: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockUpdate {
    pub sku: String,
    pub quantity: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateResult {
    pub sku: String,
    pub accepted: bool,
    pub message: Option<String>,
}

/// One sellable SKU as the platform lists it now (berth:connector 0.4.0 `listings`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub sku: String,
    /// The platform's item id (product, num_iid, item_id).
    pub item_id: String,
    /// The platform's variant id, absent for an item without variants.
    pub variant_id: Option<String>,
    pub title: String,
    /// What the platform holds as sellable (negative where it oversold).
    pub quantity: i64,
    pub price_minor: i64,
    pub currency: String,
}

/// One page of a shop's listings; `next_cursor` is `None` on the last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingPage {
    pub listings: Vec<Listing>,
    pub next_cursor: Option<String>,
}

/// A webhook delivery as the platform sent it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRequest {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What a webhook told the connector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The whole order.
    OrderUpserted(Order),
    /// Only the order's id: pull it.
    OrderChanged(String),
    StockChanged(StockUpdate),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Orders,
    Inventory,
    Products,
    Webhooks,
}

impl Capability {
    pub fn name(self) -> &'static str {
        match self {
            Capability::Orders => "orders",
            Capability::Inventory => "inventory",
            Capability::Products => "products",
            Capability::Webhooks => "webhooks",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub requests_per_minute: u32,
    pub burst: u32,
}

/// What a connector says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub platform: String,
    pub connector_version: String,
    pub wit_version: String,
    pub capabilities: Vec<Capability>,
    pub allowed_hosts: Vec<String>,
    pub default_rate_limit: RateLimit,
    pub max_window_ms: Option<u64>,
    pub required_config: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for s in OrderStatus::ALL {
            assert_eq!(s.as_str().parse::<OrderStatus>().unwrap(), s);
            assert_eq!(serde_json_name(s), s.as_str());
        }
        assert!("sent".parse::<OrderStatus>().unwrap_err().to_string().contains("partially-shipped"));
    }

    fn serde_json_name(s: OrderStatus) -> String {
        // serde's name is the ERP's name: stored orders keep the string.
        serde_json::to_value(s).unwrap().as_str().unwrap().to_string()
    }
}
