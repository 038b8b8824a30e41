//! berth connector for Shopify's Admin REST API.
//!
//! Orders come from `GET /admin/api/{version}/orders.json` filtered by `updated_at` and
//! paged with the `page_info` cursor from the `Link` header (when `page_info` is present
//! only `limit` may accompany it). HTTP 429 becomes `rate-limited` with `Retry-After`.
//!
//! Shop config: `base_url` (e.g. `https://acme.myshopify.com`), secret `access_token`,
//! optional `api_version` (default 2024-07) and `page_size` (default 250, at most 250).

use berth_sdk::host::{self, Response};
use berth_sdk::text::{mask_name, mask_phone, parse_minor, query_param};
use berth_sdk::time::{format_rfc3339_utc, parse_rfc3339};
use berth_sdk::{
    Capability, Connector, ConnectorError, Health, Manifest, Order, OrderLine, OrderPage, OrderStatus,
    PullRequest, RateLimit,
};
use serde::Deserialize;

struct Shopify;

const DEFAULT_API_VERSION: &str = "2024-07";
const MAX_PAGE: u32 = 250;

#[derive(Deserialize)]
struct OrdersBody {
    orders: Vec<ShopifyOrder>,
}

#[derive(Deserialize)]
struct ShopifyOrder {
    id: u64,
    created_at: String,
    updated_at: String,
    cancelled_at: Option<String>,
    currency: String,
    total_price: String,
    financial_status: Option<String>,
    fulfillment_status: Option<String>,
    #[serde(default)]
    line_items: Vec<LineItem>,
    customer: Option<Customer>,
}

#[derive(Deserialize)]
struct LineItem {
    id: u64,
    sku: Option<String>,
    title: String,
    quantity: u32,
    price: String,
}

#[derive(Deserialize)]
struct Customer {
    first_name: Option<String>,
    last_name: Option<String>,
    phone: Option<String>,
}

struct ShopSettings {
    base_url: String,
    token: String,
    api_version: String,
    page_size: u32,
}

impl ShopSettings {
    fn load() -> Result<Self, ConnectorError> {
        let page_size = match host::config("page_size") {
            None => MAX_PAGE,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| ConnectorError::Permanent(format!("page_size `{v}` must be 1..=250")))?,
        };
        Ok(ShopSettings {
            base_url: host::required_config("base_url")?.trim_end_matches('/').to_string(),
            token: host::required_config("access_token")?,
            api_version: host::config("api_version").unwrap_or_else(|| DEFAULT_API_VERSION.into()),
            page_size,
        })
    }

    fn orders_url(&self, query: &str) -> String {
        format!("{}/admin/api/{}/orders.json?{query}", self.base_url, self.api_version)
    }

    fn get(&self, url: &str) -> Result<Response, ConnectorError> {
        let resp = host::get(url, &[("x-shopify-access-token", &self.token), ("accept", "application/json")])?;
        check_status(&resp)?;
        Ok(resp)
    }
}

/// Turn Shopify's HTTP status into the error the host acts on.
fn check_status(resp: &Response) -> Result<(), ConnectorError> {
    let snippet = || String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]).into_owned();
    match resp.status {
        200..=299 => Ok(()),
        429 => {
            let secs = host::header(resp, "retry-after")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .unwrap_or(2.0);
            Err(ConnectorError::RateLimited((secs * 1000.0).ceil() as u64))
        }
        401 | 403 => Err(ConnectorError::Auth(format!("Shopify refused the access token ({}): {}", resp.status, snippet()))),
        500..=599 => Err(ConnectorError::Transient(format!("Shopify answered {}: {}", resp.status, snippet()))),
        s => Err(ConnectorError::Permanent(format!("Shopify answered {s}: {}", snippet()))),
    }
}

/// `page_info` of the `rel="next"` link, if any.
fn next_page_info(resp: &Response) -> Option<String> {
    let link = host::header(resp, "link")?;
    link.split(',').find_map(|part| {
        let (url, rel) = part.split_once(';')?;
        if !rel.contains("rel=\"next\"") {
            return None;
        }
        let url = url.trim().trim_start_matches('<').trim_end_matches('>');
        query_param(url, "page_info")
    })
}

fn status_of(o: &ShopifyOrder) -> OrderStatus {
    if o.cancelled_at.is_some() {
        return OrderStatus::Cancelled;
    }
    match (o.financial_status.as_deref(), o.fulfillment_status.as_deref()) {
        (Some("refunded"), _) => OrderStatus::Refunded,
        (Some("voided"), _) => OrderStatus::Cancelled,
        (_, Some("fulfilled")) => OrderStatus::Shipped,
        (_, Some("partial")) => OrderStatus::PartiallyShipped,
        (Some("paid"), _) | (Some("partially_refunded"), _) => OrderStatus::Paid,
        (Some("pending"), _) | (Some("authorized"), _) => OrderStatus::Unpaid,
        _ => OrderStatus::Other,
    }
}

fn platform_status(o: &ShopifyOrder) -> String {
    format!(
        "{}/{}{}",
        o.financial_status.as_deref().unwrap_or("-"),
        o.fulfillment_status.as_deref().unwrap_or("unfulfilled"),
        if o.cancelled_at.is_some() { "/cancelled" } else { "" }
    )
}

fn garbled(what: &str, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Transient(format!("Shopify sent an unreadable {what}: {e}"))
}

fn map_order(o: ShopifyOrder, raw: serde_json::Value) -> Result<Order, ConnectorError> {
    let lines = o
        .line_items
        .iter()
        .map(|l| {
            Ok(OrderLine {
                line_id: l.id.to_string(),
                sku: l.sku.clone().unwrap_or_default(),
                title: l.title.clone(),
                quantity: l.quantity,
                unit_price_minor: parse_minor(&l.price, 2).map_err(|e| garbled("line price", e))?,
            })
        })
        .collect::<Result<Vec<_>, ConnectorError>>()?;
    let customer = o.customer.as_ref();
    let name = customer
        .map(|c| format!("{} {}", c.first_name.as_deref().unwrap_or(""), c.last_name.as_deref().unwrap_or("")))
        .unwrap_or_default();
    Ok(Order {
        order_id: o.id.to_string(),
        status: status_of(&o),
        platform_status: platform_status(&o),
        created_at_ms: parse_rfc3339(&o.created_at).map_err(|e| garbled("created_at", e))?,
        updated_at_ms: parse_rfc3339(&o.updated_at).map_err(|e| garbled("updated_at", e))?,
        currency: o.currency.clone(),
        total_minor: parse_minor(&o.total_price, 2).map_err(|e| garbled("total_price", e))?,
        lines,
        buyer_name_masked: mask_name(name.trim()),
        buyer_phone_masked: customer.and_then(|c| c.phone.as_deref()).map(mask_phone).unwrap_or_default(),
        raw_json: raw.to_string(),
    })
}

impl Connector for Shopify {
    fn manifest() -> Manifest {
        Manifest {
            platform: "shopify".into(),
            connector_version: env!("CARGO_PKG_VERSION").into(),
            wit_version: berth_sdk::WIT_VERSION.into(),
            capabilities: vec![Capability::Orders],
            allowed_hosts: vec!["*.myshopify.com".into()],
            // Standard plan: 2 requests/s leak, bucket of 40.
            default_rate_limit: RateLimit { requests_per_minute: 120, burst: 40 },
            max_window_ms: None,
            required_config: vec!["base_url".into(), "access_token".into()],
        }
    }

    fn check(_shop: String) -> Result<Health, ConnectorError> {
        let s = ShopSettings::load()?;
        s.get(&s.orders_url("limit=1&status=any&fields=id"))?;
        Ok(Health { ok: true, message: "orders endpoint answered".into() })
    }

    fn pull_orders(_shop: String, req: PullRequest) -> Result<OrderPage, ConnectorError> {
        let s = ShopSettings::load()?;
        let url = match &req.page_cursor {
            Some(page_info) => s.orders_url(&format!(
                "limit={}&page_info={}",
                s.page_size,
                berth_sdk::text::url_encode(page_info)
            )),
            None => {
                if req.window.end_ms <= req.window.start_ms {
                    return Err(ConnectorError::InvalidInput("empty time window".into()));
                }
                // The window is [start, end); Shopify's bounds are inclusive, in seconds.
                let max_ms = (req.window.end_ms - 1).div_euclid(1000) * 1000;
                s.orders_url(&format!(
                    "status=any&limit={}&updated_at_min={}&updated_at_max={}",
                    s.page_size,
                    berth_sdk::text::url_encode(&format_rfc3339_utc(req.window.start_ms)),
                    berth_sdk::text::url_encode(&format_rfc3339_utc(max_ms)),
                ))
            }
        };
        let resp = s.get(&url)?;
        let raw: serde_json::Value = serde_json::from_slice(&resp.body).map_err(|e| garbled("body", e))?;
        let raw_orders = raw.get("orders").and_then(|o| o.as_array()).cloned().unwrap_or_default();
        let body: OrdersBody = serde_json::from_value(raw.clone()).map_err(|e| garbled("orders list", e))?;
        let orders = body
            .orders
            .into_iter()
            .zip(raw_orders)
            .map(|(o, raw)| map_order(o, raw))
            .collect::<Result<Vec<_>, _>>()?;
        host::counter_add("orders_pulled", &[], orders.len() as u64);
        Ok(OrderPage { orders, next_page_cursor: next_page_info(&resp) })
    }
}

berth_sdk::export_connector!(Shopify);

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> Response {
        Response {
            status,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn reads_the_next_link() {
        let r = resp(200, &[(
            "Link",
            "<https://a.myshopify.com/admin/api/2024-07/orders.json?limit=2&page_info=abc>; rel=\"previous\", \
             <https://a.myshopify.com/admin/api/2024-07/orders.json?limit=2&page_info=xyz%3D>; rel=\"next\"",
        )]);
        assert_eq!(next_page_info(&r).as_deref(), Some("xyz="));
        assert_eq!(next_page_info(&resp(200, &[])), None);
    }

    #[test]
    fn maps_statuses_to_host_errors() {
        assert!(matches!(check_status(&resp(429, &[("Retry-After", "2.0")])), Err(ConnectorError::RateLimited(2000))));
        assert!(matches!(check_status(&resp(429, &[])), Err(ConnectorError::RateLimited(2000))));
        assert!(matches!(check_status(&resp(429, &[("retry-after", "0.5")])), Err(ConnectorError::RateLimited(500))));
        assert!(matches!(check_status(&resp(401, &[])), Err(ConnectorError::Auth(_))));
        assert!(matches!(check_status(&resp(503, &[])), Err(ConnectorError::Transient(_))));
        assert!(matches!(check_status(&resp(404, &[])), Err(ConnectorError::Permanent(_))));
        assert!(check_status(&resp(200, &[])).is_ok());
    }

    #[test]
    fn maps_orders() {
        let raw = serde_json::json!({
            "id": 7, "created_at": "2024-01-01T07:00:00-05:00", "updated_at": "2024-01-01T08:00:00-05:00",
            "cancelled_at": null, "currency": "USD", "total_price": "12.30",
            "financial_status": "paid", "fulfillment_status": "partial",
            "line_items": [{"id": 70, "sku": "A-1", "title": "Cup", "quantity": 3, "price": "4.10"}],
            "customer": {"first_name": "Maria", "last_name": "Garcia", "phone": "13800138000"}
        });
        let o: ShopifyOrder = serde_json::from_value(raw.clone()).unwrap();
        let order = map_order(o, raw).unwrap();
        assert_eq!(order.order_id, "7");
        assert!(matches!(order.status, OrderStatus::PartiallyShipped));
        assert_eq!(order.created_at_ms, 1_704_110_400_000);
        assert_eq!(order.total_minor, 1230);
        assert_eq!(order.lines[0].unit_price_minor, 410);
        assert_eq!(order.buyer_name_masked, "M***********");
        assert_eq!(order.buyer_phone_masked, "*******8000");
    }
}
