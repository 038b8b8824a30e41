//! WIT values ↔ berth-types: the one place a `berth:connector` binding type is turned
//! into the host's own and back. Everything past the runtime works with
//! `berth_types::connector`, so a new WIT version changes the bindings and this file.

use super::bindings::berth::connector::types as wit;
use berth_types::connector as t;

impl From<wit::ConnectorError> for t::ConnectorError {
    fn from(e: wit::ConnectorError) -> Self {
        match e {
            wit::ConnectorError::RateLimited(ms) => t::ConnectorError::RateLimited(ms),
            wit::ConnectorError::Auth(m) => t::ConnectorError::Auth(m),
            wit::ConnectorError::Transient(m) => t::ConnectorError::Transient(m),
            wit::ConnectorError::Permanent(m) => t::ConnectorError::Permanent(m),
            wit::ConnectorError::InvalidInput(m) => t::ConnectorError::InvalidInput(m),
        }
    }
}

impl From<wit::OrderStatus> for t::OrderStatus {
    fn from(s: wit::OrderStatus) -> Self {
        match s {
            wit::OrderStatus::Unpaid => t::OrderStatus::Unpaid,
            wit::OrderStatus::Paid => t::OrderStatus::Paid,
            wit::OrderStatus::PartiallyShipped => t::OrderStatus::PartiallyShipped,
            wit::OrderStatus::Shipped => t::OrderStatus::Shipped,
            wit::OrderStatus::Delivered => t::OrderStatus::Delivered,
            wit::OrderStatus::Completed => t::OrderStatus::Completed,
            wit::OrderStatus::Cancelled => t::OrderStatus::Cancelled,
            wit::OrderStatus::Refunded => t::OrderStatus::Refunded,
            wit::OrderStatus::Other => t::OrderStatus::Other,
        }
    }
}

impl From<wit::OrderLine> for t::OrderLine {
    fn from(l: wit::OrderLine) -> Self {
        t::OrderLine { line_id: l.line_id, sku: l.sku, title: l.title, quantity: l.quantity, unit_price_minor: l.unit_price_minor }
    }
}

impl From<wit::Order> for t::Order {
    fn from(o: wit::Order) -> Self {
        t::Order {
            order_id: o.order_id,
            status: o.status.into(),
            platform_status: o.platform_status,
            created_at_ms: o.created_at_ms,
            updated_at_ms: o.updated_at_ms,
            currency: o.currency,
            total_minor: o.total_minor,
            lines: o.lines.into_iter().map(Into::into).collect(),
            buyer_name_masked: o.buyer_name_masked,
            buyer_phone_masked: o.buyer_phone_masked,
            raw_json: o.raw_json,
        }
    }
}

impl From<wit::OrderPage> for t::OrderPage {
    fn from(p: wit::OrderPage) -> Self {
        t::OrderPage { orders: p.orders.into_iter().map(Into::into).collect(), next_page_cursor: p.next_page_cursor }
    }
}

impl From<wit::StockUpdate> for t::StockUpdate {
    fn from(u: wit::StockUpdate) -> Self {
        t::StockUpdate { sku: u.sku, quantity: u.quantity }
    }
}

impl From<wit::UpdateResult> for t::UpdateResult {
    fn from(r: wit::UpdateResult) -> Self {
        t::UpdateResult { sku: r.sku, accepted: r.accepted, message: r.message }
    }
}

impl From<wit::Event> for t::Event {
    fn from(e: wit::Event) -> Self {
        match e {
            wit::Event::OrderUpserted(o) => t::Event::OrderUpserted(o.into()),
            wit::Event::OrderChanged(id) => t::Event::OrderChanged(id),
            wit::Event::StockChanged(u) => t::Event::StockChanged(u.into()),
        }
    }
}

impl From<wit::Capability> for t::Capability {
    fn from(c: wit::Capability) -> Self {
        match c {
            wit::Capability::Orders => t::Capability::Orders,
            wit::Capability::Inventory => t::Capability::Inventory,
            wit::Capability::Products => t::Capability::Products,
            wit::Capability::Webhooks => t::Capability::Webhooks,
        }
    }
}

impl From<wit::Manifest> for t::Manifest {
    fn from(m: wit::Manifest) -> Self {
        t::Manifest {
            platform: m.platform,
            connector_version: m.connector_version,
            wit_version: m.wit_version,
            capabilities: m.capabilities.into_iter().map(Into::into).collect(),
            allowed_hosts: m.allowed_hosts,
            default_rate_limit: t::RateLimit {
                requests_per_minute: m.default_rate_limit.requests_per_minute,
                burst: m.default_rate_limit.burst,
            },
            max_window_ms: m.max_window_ms,
            required_config: m.required_config,
        }
    }
}

impl From<wit::Health> for t::Health {
    fn from(h: wit::Health) -> Self {
        t::Health { ok: h.ok, message: h.message }
    }
}

// What the host hands a connector.

pub fn pull_request(r: &t::PullRequest) -> wit::PullRequest {
    wit::PullRequest {
        window: wit::TimeWindow { start_ms: r.window.start_ms, end_ms: r.window.end_ms },
        page_cursor: r.page_cursor.clone(),
    }
}

pub fn stock_updates(u: &[t::StockUpdate]) -> Vec<wit::StockUpdate> {
    u.iter().map(|u| wit::StockUpdate { sku: u.sku.clone(), quantity: u.quantity }).collect()
}

pub fn webhook_request(r: &t::WebhookRequest) -> wit::WebhookRequest {
    wit::WebhookRequest { headers: r.headers.clone(), body: r.body.clone() }
}

/// A connector's answer, in the host's types.
pub fn answer<W, T: From<W>>(r: Result<W, wit::ConnectorError>) -> Result<T, t::ConnectorError> {
    r.map(T::from).map_err(Into::into)
}

/// A connector's list answer, in the host's types.
pub fn answers<W, T: From<W>>(r: Result<Vec<W>, wit::ConnectorError>) -> Result<Vec<T>, t::ConnectorError> {
    r.map(|v| v.into_iter().map(T::from).collect()).map_err(Into::into)
}

// Outbound HTTP, in the current world.

pub mod http {
    use crate::bindings::berth::connector::http as wit;
    use berth_types::http as t;

    pub fn request(r: wit::Request) -> t::Request {
        let method = match r.method {
            wit::Method::Get => t::Method::Get,
            wit::Method::Head => t::Method::Head,
            wit::Method::Post => t::Method::Post,
            wit::Method::Put => t::Method::Put,
            wit::Method::Patch => t::Method::Patch,
            wit::Method::Delete => t::Method::Delete,
        };
        t::Request { method, url: r.url, headers: r.headers, body: r.body, timeout_ms: r.timeout_ms }
    }

    pub fn answer(r: Result<t::Response, t::HttpError>) -> Result<wit::Response, wit::HttpError> {
        match r {
            Ok(r) => Ok(wit::Response { status: r.status, headers: r.headers, body: r.body }),
            Err(e) => Err(match e {
                t::HttpError::Denied(why) => wit::HttpError::Denied(why),
                t::HttpError::Timeout => wit::HttpError::Timeout,
                t::HttpError::Connection(why) => wit::HttpError::Connection(why),
                t::HttpError::TooLarge(cap) => wit::HttpError::TooLarge(cap),
                t::HttpError::InvalidRequest(why) => wit::HttpError::InvalidRequest(why),
                t::HttpError::Throttled(ms) => wit::HttpError::Throttled(ms),
            }),
        }
    }
}
