//! berth connector for Shopify's Admin REST API — the legacy one: REST Admin has been
//! legacy since October 2024 and new public apps must use GraphQL
//! (`plugins/shopify-graphql`). Kept for shops on existing custom apps, and as berth's
//! reference connector in benchmarks and many host tests.
//!
//! Orders come from `GET /admin/api/{version}/orders.json` filtered by `updated_at` and
//! paged with the `page_info` cursor from the `Link` header (when `page_info` is present
//! only `limit` may accompany it). HTTP 429 becomes `rate-limited` with `Retry-After`.
//!
//! Stock goes out through `POST inventory_levels/set.json` (absolute `available` at one
//! location). Shopify addresses stock by inventory item, not SKU: the connector maps
//! SKU -> `inventory_item_id` by reading `products.json` (paged by `since_id`) and keeps
//! the map in host kv, refreshing it when a SKU is missing or Shopify no longer knows
//! the item.
//!
//! Listings (0.4.0) come from the same `products.json`, paged by the `page_info` cursor
//! of its `Link` header: one listing per variant (SKU, product and variant ids,
//! `inventory_quantity`, `price`) in the store's currency (`shop.json`, remembered in kv;
//! shop config `currency` overrides it).
//!
//! Webhooks (`orders/create`, `orders/updated`, `orders/cancelled`, ...) are verified
//! against `X-Shopify-Hmac-Sha256` = base64 HMAC-SHA256 of the raw body with the app's
//! client secret (shop secret `webhook_secret`), compared in constant time; an order
//! topic becomes `order-upserted`, other topics are acknowledged without events.
//!
//! Shop config: `base_url` (e.g. `https://acme.myshopify.com`), secret `access_token`,
//! optional `api_version` (default 2024-07), `page_size` (default 250, at most 250) and
//! `location_id` (default: the shop's first active location).

mod rest_order;

use berth_sdk::host::{self, Response};
use rest_order::{garbled, map_order, webhook_events, ShopifyOrder};
use berth_sdk::stock::{accepted, is_per_sku, rejected, rejected_by, stop_batch};
use berth_sdk::text::{parse_minor, query_param};
use berth_sdk::time::format_rfc3339_utc;
use berth_sdk::{
    Capability, Connector, ConnectorError, Health, Listing, ListingPage, ListingRequest, Manifest, OrderPage,
    Event, PullRequest, RateLimit, StockUpdate, UpdateResult, WebhookRequest,
};
use serde::Deserialize;
use serde_json::json;

/// The connector. Built natively (the end-to-end benchmark compiles this file into the
/// host), its [`Connector`] functions run with a host installed by
/// `berth_sdk::native::with_host`.
pub struct Shopify;

const DEFAULT_API_VERSION: &str = "2024-07";
const MAX_PAGE: u32 = 250;

#[derive(Deserialize)]
struct OrdersBody {
    orders: Vec<ShopifyOrder>,
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
        self.url(&format!("orders.json?{query}"))
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("{}/admin/api/{}/{path_and_query}", self.base_url, self.api_version)
    }

    fn get(&self, url: &str) -> Result<Response, ConnectorError> {
        let resp = host::get(url, &[("x-shopify-access-token", &self.token), ("accept", "application/json")])?;
        check_status(&resp)?;
        Ok(resp)
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str, what: &str) -> Result<T, ConnectorError> {
        let resp = self.get(url)?;
        serde_json::from_slice(&resp.body).map_err(|e| garbled(what, e))
    }

    /// The location stock is set at: configured, else remembered, else the first active one.
    fn location_id(&self) -> Result<u64, ConnectorError> {
        if let Some(v) = host::config("location_id") {
            return v.parse().map_err(|_| ConnectorError::Permanent(format!("location_id `{v}` is not a number")));
        }
        if let Some(id) = host::state::get(LOCATION_KEY)?.and_then(|b| String::from_utf8(b).ok()?.parse().ok()) {
            return Ok(id);
        }
        let body: LocationsBody = self.get_json(&self.url("locations.json"), "locations list")?;
        let id = body
            .locations
            .iter()
            .find(|l| l.active)
            .map(|l| l.id)
            .ok_or_else(|| ConnectorError::Permanent("the shop has no active location to hold stock".into()))?;
        host::state::set(LOCATION_KEY, id.to_string().as_bytes())?;
        Ok(id)
    }

    /// Read every product's variants and remember SKU -> inventory item id.
    fn refresh_item_map(&self) -> Result<(), ConnectorError> {
        let mut since_id = 0u64;
        loop {
            let url = self.url(&format!("products.json?limit={MAX_PAGE}&since_id={since_id}&fields=id,variants"));
            let body: ProductsBody = self.get_json(&url, "products list")?;
            for v in body.products.iter().flat_map(|p| &p.variants) {
                if let Some(sku) = v.sku.as_deref().filter(|s| !s.is_empty()) {
                    host::state::set(&item_key(sku), v.inventory_item_id.to_string().as_bytes())?;
                }
            }
            match body.products.last() {
                Some(last) if body.products.len() == MAX_PAGE as usize => since_id = last.id,
                _ => return Ok(()),
            }
        }
    }

    fn remembered_item(sku: &str) -> Result<Option<u64>, ConnectorError> {
        Ok(host::state::get(&item_key(sku))?.and_then(|b| String::from_utf8(b).ok()?.parse().ok()))
    }

    /// Set one SKU's available quantity; `Ok(false)` when Shopify does not know the item.
    fn set_level(&self, location_id: u64, item: u64, quantity: u32) -> Result<bool, ConnectorError> {
        let body = json!({ "location_id": location_id, "inventory_item_id": item, "available": quantity });
        let resp = host::post_json(
            &self.url("inventory_levels/set.json"),
            &body,
            &[("x-shopify-access-token", &self.token), ("accept", "application/json")],
        )?;
        if matches!(resp.status, 404 | 422) {
            let text = String::from_utf8_lossy(&resp.body[..resp.body.len().min(300)]).into_owned();
            if text.contains("location_id") {
                return Err(ConnectorError::Permanent(format!("Shopify refused location {location_id}: {text}")));
            }
            return Ok(false);
        }
        check_status(&resp)?;
        Ok(true)
    }
}

const LOCATION_KEY: &str = "stock/location";
const CURRENCY_KEY: &str = "shop/currency";

impl ShopSettings {
    /// The store's currency: configured, else remembered, else `shop.json`'s.
    fn currency(&self) -> Result<String, ConnectorError> {
        if let Some(c) = host::config("currency") {
            return Ok(c);
        }
        if let Some(c) = host::state::get(CURRENCY_KEY)?.and_then(|b| String::from_utf8(b).ok()) {
            return Ok(c);
        }
        let body: ShopBody = self.get_json(&self.url("shop.json"), "shop")?;
        host::state::set(CURRENCY_KEY, body.shop.currency.as_bytes())?;
        Ok(body.shop.currency)
    }
}

#[derive(Deserialize)]
struct ShopBody {
    shop: ShopInfo,
}

#[derive(Deserialize)]
struct ShopInfo {
    currency: String,
}

#[derive(Deserialize)]
struct ListedProducts {
    products: Vec<ListedProduct>,
}

#[derive(Deserialize)]
struct ListedProduct {
    id: u64,
    #[serde(default)]
    title: String,
    #[serde(default)]
    variants: Vec<ListedVariant>,
}

#[derive(Deserialize)]
struct ListedVariant {
    id: u64,
    sku: Option<String>,
    #[serde(default)]
    title: String,
    #[serde(default)]
    inventory_quantity: i64,
    price: String,
}

/// One listing per variant of each product; a product's only variant ("Default Title")
/// takes the product's title.
fn listed(products: Vec<ListedProduct>, currency: &str) -> Result<Vec<Listing>, ConnectorError> {
    let mut out = Vec::new();
    for p in products {
        let single = p.variants.len() == 1;
        for v in p.variants {
            let price_minor = parse_minor(&v.price, 2).map_err(|e| garbled("variant price", e))?;
            let title = if single || v.title.is_empty() || v.title == "Default Title" { p.title.clone() } else { v.title };
            out.push(Listing {
                sku: v.sku.unwrap_or_default(),
                item_id: p.id.to_string(),
                variant_id: Some(v.id.to_string()),
                title,
                quantity: v.inventory_quantity,
                price_minor,
                currency: currency.to_string(),
            });
        }
    }
    Ok(out)
}

fn item_key(sku: &str) -> String {
    format!("stock/item/{sku}")
}

#[derive(Deserialize)]
struct LocationsBody {
    locations: Vec<Location>,
}

#[derive(Deserialize)]
struct Location {
    id: u64,
    #[serde(default)]
    active: bool,
}

#[derive(Deserialize)]
struct ProductsBody {
    products: Vec<Product>,
}

#[derive(Deserialize)]
struct Product {
    id: u64,
    #[serde(default)]
    variants: Vec<Variant>,
}

#[derive(Deserialize)]
struct Variant {
    sku: Option<String>,
    inventory_item_id: u64,
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

impl Connector for Shopify {
    fn manifest() -> Manifest {
        Manifest {
            platform: "shopify".into(),
            connector_version: env!("CARGO_PKG_VERSION").into(),
            wit_version: berth_sdk::WIT_VERSION.into(),
            capabilities: vec![Capability::Orders, Capability::Inventory, Capability::Webhooks, Capability::Products],
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

    fn push_inventory(_shop: String, updates: Vec<StockUpdate>) -> Result<Vec<UpdateResult>, ConnectorError> {
        let s = ShopSettings::load()?;
        let location = s.location_id()?;
        let mut done = Vec::with_capacity(updates.len());
        let mut refreshed = false;
        for u in &updates {
            match push_one(&s, location, u, &mut refreshed) {
                Ok(r) => done.push(r),
                Err(e) if is_per_sku(&e) => done.push(rejected_by(&u.sku, e)),
                Err(e) => return stop_batch(done, e),
            }
        }
        host::counter_add("stock_pushed", &[], done.iter().filter(|r| r.accepted).count() as u64);
        Ok(done)
    }

    fn handle_webhook(_shop: String, req: WebhookRequest) -> Result<Vec<Event>, ConnectorError> {
        webhook_events(&req)
    }

    fn listings(_shop: String, req: ListingRequest) -> Result<ListingPage, ConnectorError> {
        let s = ShopSettings::load()?;
        let currency = s.currency()?;
        let limit = req.limit.clamp(1, MAX_PAGE);
        const FIELDS: &str = "id,title,variants";
        let url = match &req.cursor {
            Some(page_info) => s.url(&format!("products.json?limit={limit}&page_info={}&fields={FIELDS}", berth_sdk::text::url_encode(page_info))),
            None => s.url(&format!("products.json?limit={limit}&fields={FIELDS}")),
        };
        let resp = s.get(&url)?;
        let body: ListedProducts = serde_json::from_slice(&resp.body).map_err(|e| garbled("products list", e))?;
        Ok(ListingPage { listings: listed(body.products, &currency)?, next_cursor: next_page_info(&resp) })
    }
}

/// Push one SKU, refreshing the SKU map at most once per batch when it is stale.
fn push_one(s: &ShopSettings, location: u64, u: &StockUpdate, refreshed: &mut bool) -> Result<UpdateResult, ConnectorError> {
    loop {
        let item = match ShopSettings::remembered_item(&u.sku)? {
            Some(item) => item,
            None if !*refreshed => {
                s.refresh_item_map()?;
                *refreshed = true;
                continue;
            }
            None => return Ok(rejected(&u.sku, "no Shopify variant has this SKU")),
        };
        if s.set_level(location, item, u.quantity)? {
            return Ok(accepted(&u.sku));
        }
        // Shopify no longer knows the item: the product was changed; read the map again.
        host::state::delete(&item_key(&u.sku))?;
        if *refreshed {
            return Ok(rejected(&u.sku, format!("Shopify does not know inventory item {item}")));
        }
        s.refresh_item_map()?;
        *refreshed = true;
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
    fn lists_one_listing_per_variant() {
        let body: ListedProducts = serde_json::from_value(serde_json::json!({"products": [
            {"id": 1, "title": "Cup", "variants": [
                {"id": 11, "sku": "CUP-S", "title": "S", "inventory_quantity": 4, "price": "10.50"},
                {"id": 12, "sku": null, "title": "M", "inventory_quantity": -2, "price": "11"}]},
            {"id": 2, "title": "Lamp", "variants": [{"id": 21, "sku": "LAMP", "title": "Default Title", "inventory_quantity": 0, "price": "0.99"}]}
        ]})).unwrap();
        let l = listed(body.products, "USD").unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!((l[0].sku.as_str(), l[0].item_id.as_str(), l[0].variant_id.as_deref(), l[0].price_minor, l[0].quantity), ("CUP-S", "1", Some("11"), 1050, 4));
        assert_eq!((l[1].sku.as_str(), l[1].quantity, l[1].price_minor), ("", -2, 1100));
        assert_eq!((l[2].title.as_str(), l[2].price_minor, l[2].currency.as_str()), ("Lamp", 99, "USD"));
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
        assert!(matches!(order.status, berth_sdk::OrderStatus::PartiallyShipped));
        assert_eq!(order.created_at_ms, 1_704_110_400_000);
        assert_eq!(order.total_minor, 1230);
        assert_eq!(order.lines[0].unit_price_minor, 410);
        assert_eq!(order.buyer_name_masked, "M***********");
        assert_eq!(order.buyer_phone_masked, "*******8000");
    }
}
