//! berth connector for Shopify's GraphQL Admin API (`POST /admin/api/{version}/graphql.json`),
//! the API new Shopify apps must use (REST Admin has been legacy since October 2024).
//!
//! **Orders**: `orders(first, after, query: "updated_at:>='…' AND updated_at:<'…'",
//! sortKey: UPDATED_AT)` with cursor paging (`pageInfo.endCursor`). Orders keep the REST
//! numeric id (`legacyResourceId`), so a shop moved from the REST connector keeps its
//! order ids.
//!
//! **Stock**: `inventorySetQuantities` (name `available`, reason `correction`, each
//! quantity with `changeFromQuantity: null` — an absolute set, as Shopify requires the
//! field from API version 2026-04). Shopify addresses stock by inventory item: the SKU ->
//! item map comes from `productVariants` and is kept in host kv, read again once per
//! batch when Shopify says an item is unknown. The location is the `location_id` setting
//! or the shop's first active location.
//!
//! **Cost**: every query is sent with its requested cost (`http.send-costed`, quota
//! `graphql`, computed like Shopify does: 2 per connection plus the objects asked for,
//! nested connections multiplied), and every answer's `extensions.cost.throttleStatus` is
//! reported to the host (`quota.report`): berth's bucket for the shop follows Shopify's
//! and holds a query back until the points are there, instead of being told `THROTTLED`.
//! A `THROTTLED` answer all the same becomes `rate-limited(ms)`, the wait computed from
//! the restore rate.
//!
//! **Credentials**: a static `access_token`, or — for apps made in the Dev Dashboard,
//! whose tokens live 24 hours — `client_id` and `client_secret`: the connector mints
//! tokens with the client credentials grant when berth asks it to refresh (berth does so
//! ahead of expiry, and at once when Shopify answers 401).
//!
//! **Listings** (0.4.0): `productVariants` again, with each variant's title, price,
//! `inventoryQuantity` and product (`legacyResourceId`s for the ids, so a shop moved from
//! the REST connector lists the same ids), cursor-paged; the currency is the shop's
//! `currencyCode` (read once, kept in kv; or the `currency` setting).
//!
//! **Webhooks** carry REST-format JSON whatever API the app uses: verified and mapped as
//! the REST connector does (`plugins/shopify-rest/src/rest_order.rs`).
//!
//! Shop config: `base_url` (e.g. `https://acme.myshopify.com`); secret `access_token`, or
//! `client_id` + secret `client_secret`; optional `api_version` (default 2026-01),
//! `page_size` (orders per page, default 25, at most 100), `line_items` (per order,
//! default 20, at most 100), `location_id`, secret `webhook_secret`.

#[path = "../../shopify-rest/src/rest_order.rs"]
mod rest_order;

use berth_sdk::host::{self, Method, Request, Response};
use berth_sdk::stock::{accepted, is_per_sku, rejected, stop_batch};
use berth_sdk::text::{mask_name, mask_phone, parse_minor, url_encode};
use berth_sdk::time::{format_rfc3339_utc, now_ms, parse_rfc3339};
use berth_sdk::{
    AuthSupport, Capability, Connector, ConnectorError, Credentials, Event, Health, Listing, ListingPage, ListingRequest, Manifest, Order, OrderLine,
    OrderPage, OrderStatus, PullRequest, RateLimit, RefreshError, StockUpdate, UpdateResult, WebhookRequest,
};
use serde_json::{json, Value};

pub struct ShopifyGraphql;

const DEFAULT_API_VERSION: &str = "2026-01";
/// The name berth's points bucket for the shop goes by.
const QUOTA: &str = "graphql";
const MUTATION_COST: f64 = 10.0;
/// The most one query may cost.
const MAX_QUERY_COST: f64 = 1000.0;
const MAX_QUANTITIES: usize = 250;
const LOCATION_KEY: &str = "stock/location";

fn item_key(sku: &str) -> String {
    format!("stock/item/{sku}")
}

const ORDERS_QUERY: &str = "query Orders($first: Int!, $after: String, $query: String, $lines: Int!) { \
  orders(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) { \
    nodes { id legacyResourceId name createdAt updatedAt cancelledAt currencyCode \
      displayFinancialStatus displayFulfillmentStatus \
      totalPriceSet { shopMoney { amount currencyCode } } \
      customer { firstName lastName phone } \
      lineItems(first: $lines) { nodes { id sku title quantity originalUnitPriceSet { shopMoney { amount } } } } } \
    pageInfo { hasNextPage endCursor } } }";

const VARIANTS_QUERY: &str = "query Variants($first: Int!, $after: String) { \
  productVariants(first: $first, after: $after) { nodes { id sku inventoryItem { id } } pageInfo { hasNextPage endCursor } } }";

const LISTINGS_QUERY: &str = "query Listings($first: Int!, $after: String) { \
  productVariants(first: $first, after: $after) { nodes { legacyResourceId sku title price inventoryQuantity \
    product { legacyResourceId title hasOnlyDefaultVariant } } pageInfo { hasNextPage endCursor } } }";

const CURRENCY_QUERY: &str = "query Currency { shop { currencyCode } }";
const CURRENCY_KEY: &str = "shop/currency";

const LOCATIONS_QUERY: &str = "query Locations($first: Int!) { locations(first: $first) { nodes { id isActive } } }";

const SET_QUANTITIES: &str = "mutation Set($input: InventorySetQuantitiesInput!) { \
  inventorySetQuantities(input: $input) { inventoryAdjustmentGroup { reason } userErrors { field message code } } }";

struct Settings {
    base_url: String,
    api_version: String,
    page_size: u64,
    line_items: u64,
}

fn bounded_setting(key: &str, default: u64, max: u64) -> Result<u64, ConnectorError> {
    match host::config(key) {
        None => Ok(default),
        Some(v) => v.parse::<u64>().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| ConnectorError::Permanent(format!("{key} `{v}` must be 1..={max}"))),
    }
}

/// What a query asks for, by Shopify's rules: a connection costs 2 plus the objects it
/// asks for, a connection inside it is multiplied by the outer `first`.
pub fn orders_cost(first: u64, lines: u64) -> f64 {
    (2 + first + first * (2 + lines)) as f64
}

fn variants_cost(first: u64) -> f64 {
    (2 + first * 2) as f64
}

impl Settings {
    fn load() -> Result<Settings, ConnectorError> {
        let s = Settings {
            base_url: host::required_config("base_url")?.trim_end_matches('/').to_string(),
            api_version: host::config("api_version").unwrap_or_else(|| DEFAULT_API_VERSION.into()),
            page_size: bounded_setting("page_size", 25, 100)?,
            line_items: bounded_setting("line_items", 20, 100)?,
        };
        let cost = orders_cost(s.page_size, s.line_items);
        if cost > MAX_QUERY_COST {
            return Err(ConnectorError::Permanent(format!(
                "page_size {} with line_items {} makes an orders query cost {cost} points, over Shopify's {MAX_QUERY_COST} per query; lower them",
                s.page_size, s.line_items
            )));
        }
        Ok(s)
    }

    /// Run a GraphQL document expected to cost `cost`: its `data`, once the host's view
    /// of the shop's bucket has the points; the answer's bucket state goes to the host.
    fn query(&self, document: &str, variables: Value, cost: f64) -> Result<Value, ConnectorError> {
        let token = host::required_config("access_token")?;
        let req = Request {
            method: Method::Post,
            url: format!("{}/admin/api/{}/graphql.json", self.base_url, self.api_version),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("accept".into(), "application/json".into()),
                ("x-shopify-access-token".into(), token),
            ],
            body: json!({ "query": document, "variables": variables }).to_string().into_bytes(),
            timeout_ms: None,
        };
        let resp = host::send_costed(&req, QUOTA, cost)?;
        answer(&resp, cost)
    }
}

/// The `data` of a GraphQL answer, or the error the host acts on; the bucket state the
/// answer reports goes to the host first.
fn answer(resp: &Response, requested: f64) -> Result<Value, ConnectorError> {
    let snippet = || String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]).into_owned();
    match resp.status {
        200 | 429 => {}
        // Shopify does not say whether a token expired or is wrong: berth refreshes once
        // per token, and a refresh that fails marks the shop for the merchant.
        401 | 403 => return Err(ConnectorError::Auth(format!("Shopify refused the access token, expired or revoked ({}): {}", resp.status, snippet()))),
        500..=599 => return Err(ConnectorError::Transient(format!("Shopify answered {}: {}", resp.status, snippet()))),
        s => return Err(ConnectorError::Permanent(format!("Shopify answered {s}: {}", snippet()))),
    }
    let body: Value = serde_json::from_slice(&resp.body).map_err(|e| garbled("answer", e))?;
    let cost = &body["extensions"]["cost"];
    let status = &cost["throttleStatus"];
    let (available, maximum, restore) = (status["currentlyAvailable"].as_f64(), status["maximumAvailable"].as_f64(), status["restoreRate"].as_f64());
    if let (Some(available), Some(maximum), Some(restore)) = (available, maximum, restore) {
        if let Err(e) = host::report_quota(QUOTA, available, maximum, restore) {
            host::warn(&format!("the host refused Shopify's throttle status: {e}"));
        }
    }
    if let Some(errors) = body["errors"].as_array().filter(|e| !e.is_empty()) {
        let code = errors[0]["extensions"]["code"].as_str().unwrap_or("");
        let message = errors[0]["message"].as_str().unwrap_or("").chars().take(200).collect::<String>();
        return Err(match code {
            "THROTTLED" => {
                let needed = cost["requestedQueryCost"].as_f64().unwrap_or(requested);
                let wait_s = match (available, restore) {
                    (Some(a), Some(r)) if r > 0.0 => ((needed - a).max(0.0) / r).max(0.05),
                    _ => 1.0,
                };
                ConnectorError::RateLimited((wait_s * 1000.0).ceil() as u64)
            }
            "ACCESS_DENIED" => ConnectorError::Auth(format!("Shopify denied access: {message}")),
            "MAX_COST_EXCEEDED" => ConnectorError::Permanent(format!("query too costly for Shopify (lower page_size or line_items): {message}")),
            "INTERNAL_SERVER_ERROR" => ConnectorError::Transient(format!("Shopify: {message}")),
            _ => ConnectorError::Permanent(format!("Shopify refused the query ({code}): {message}")),
        });
    }
    if resp.status == 429 {
        return Err(ConnectorError::RateLimited(1000));
    }
    body.get("data").cloned().filter(|d| !d.is_null()).ok_or_else(|| garbled("answer", "no data"))
}

fn garbled(what: &str, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Transient(format!("Shopify sent an unreadable {what}: {e}"))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Result<&'a str, ConnectorError> {
    let mut at = v;
    for p in path {
        at = &at[*p];
    }
    at.as_str().ok_or_else(|| garbled(&path.join("."), "missing"))
}

fn status_of(financial: &str, fulfillment: &str, cancelled: bool) -> OrderStatus {
    if cancelled {
        return OrderStatus::Cancelled;
    }
    match (financial, fulfillment) {
        ("REFUNDED", _) => OrderStatus::Refunded,
        ("VOIDED", _) => OrderStatus::Cancelled,
        (_, "FULFILLED") => OrderStatus::Shipped,
        (_, "PARTIALLY_FULFILLED") => OrderStatus::PartiallyShipped,
        ("PAID", _) | ("PARTIALLY_REFUNDED", _) | ("PARTIALLY_PAID", _) => OrderStatus::Paid,
        ("PENDING", _) | ("AUTHORIZED", _) | ("EXPIRED", _) => OrderStatus::Unpaid,
        _ => OrderStatus::Other,
    }
}

/// An order node as berth's order.
pub fn map_order(n: &Value) -> Result<Order, ConnectorError> {
    let currency = str_at(n, &["currencyCode"])?.to_string();
    let financial = n["displayFinancialStatus"].as_str().unwrap_or("");
    let fulfillment = n["displayFulfillmentStatus"].as_str().unwrap_or("");
    let cancelled = !n["cancelledAt"].is_null();
    let lines = n["lineItems"]["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|l| {
            let id = str_at(l, &["id"])?;
            Ok(OrderLine {
                line_id: id.rsplit('/').next().unwrap_or(id).to_string(),
                sku: l["sku"].as_str().unwrap_or("").to_string(),
                title: l["title"].as_str().unwrap_or("").to_string(),
                quantity: l["quantity"].as_u64().and_then(|q| u32::try_from(q).ok()).ok_or_else(|| garbled("line quantity", "not a count"))?,
                unit_price_minor: parse_minor(str_at(l, &["originalUnitPriceSet", "shopMoney", "amount"])?, 2).map_err(|e| garbled("line price", e))?,
            })
        })
        .collect::<Result<Vec<_>, ConnectorError>>()?;
    let customer = &n["customer"];
    let name = format!("{} {}", customer["firstName"].as_str().unwrap_or(""), customer["lastName"].as_str().unwrap_or(""));
    Ok(Order {
        order_id: str_at(n, &["legacyResourceId"])?.to_string(),
        status: status_of(financial, fulfillment, cancelled),
        platform_status: format!("{}/{}{}", financial.to_lowercase(), fulfillment.to_lowercase(), if cancelled { "/cancelled" } else { "" }),
        created_at_ms: parse_rfc3339(str_at(n, &["createdAt"])?).map_err(|e| garbled("createdAt", e))?,
        updated_at_ms: parse_rfc3339(str_at(n, &["updatedAt"])?).map_err(|e| garbled("updatedAt", e))?,
        currency,
        total_minor: parse_minor(str_at(n, &["totalPriceSet", "shopMoney", "amount"])?, 2).map_err(|e| garbled("total", e))?,
        lines,
        buyer_name_masked: mask_name(name.trim()),
        buyer_phone_masked: customer["phone"].as_str().map(mask_phone).unwrap_or_default(),
        raw_json: n.to_string(),
    })
}

/// The search query for the window [start, end): Shopify compares whole seconds.
pub fn window_query(start_ms: i64, end_ms: i64) -> String {
    let start = start_ms.div_euclid(1000) * 1000;
    let end = ((end_ms - 1).div_euclid(1000) + 1) * 1000;
    format!("updated_at:>='{}' AND updated_at:<'{}'", format_rfc3339_utc(start), format_rfc3339_utc(end))
}

fn location_gid(s: &Settings) -> Result<String, ConnectorError> {
    if let Some(v) = host::config("location_id") {
        let n: u64 = v.parse().map_err(|_| ConnectorError::Permanent(format!("location_id `{v}` is not a number")))?;
        return Ok(format!("gid://shopify/Location/{n}"));
    }
    if let Some(id) = host::state::get(LOCATION_KEY)?.and_then(|b| String::from_utf8(b).ok()) {
        return Ok(id);
    }
    let data = s.query(LOCATIONS_QUERY, json!({ "first": 10 }), 12.0)?;
    let id = data["locations"]["nodes"]
        .as_array()
        .and_then(|l| l.iter().find(|n| n["isActive"].as_bool() == Some(true)))
        .and_then(|n| n["id"].as_str())
        .ok_or_else(|| ConnectorError::Permanent("the shop has no active location to hold stock".into()))?
        .to_string();
    host::state::set(LOCATION_KEY, id.as_bytes())?;
    Ok(id)
}

/// Read every variant and remember SKU -> inventory item.
fn refresh_item_map(s: &Settings) -> Result<(), ConnectorError> {
    let mut after: Option<String> = None;
    loop {
        let data = s.query(VARIANTS_QUERY, json!({ "first": 250, "after": after }), variants_cost(250))?;
        let page = &data["productVariants"];
        for v in page["nodes"].as_array().map(Vec::as_slice).unwrap_or_default() {
            if let (Some(sku), Some(item)) = (v["sku"].as_str().filter(|s| !s.is_empty()), v["inventoryItem"]["id"].as_str()) {
                host::state::set(&item_key(sku), item.as_bytes())?;
            }
        }
        match (page["pageInfo"]["hasNextPage"].as_bool(), page["pageInfo"]["endCursor"].as_str()) {
            (Some(true), Some(c)) => after = Some(c.to_string()),
            _ => return Ok(()),
        }
    }
}

/// The shop's currency: the `currency` setting, or `shop.currencyCode` (kept in kv).
fn currency(s: &Settings) -> Result<String, ConnectorError> {
    if let Some(c) = host::config("currency") {
        return Ok(c);
    }
    if let Some(c) = host::state::get(CURRENCY_KEY)?.and_then(|b| String::from_utf8(b).ok()) {
        return Ok(c);
    }
    let data = s.query(CURRENCY_QUERY, json!({}), 1.0)?;
    let code = str_at(&data, &["shop", "currencyCode"])?.to_string();
    host::state::set(CURRENCY_KEY, code.as_bytes())?;
    Ok(code)
}

/// One listing of a `productVariants` node; a product's only ("Default Title") variant
/// takes the product's title.
pub fn map_listing(v: &Value, currency: &str) -> Result<Listing, ConnectorError> {
    let product = &v["product"];
    let title = match v["title"].as_str() {
        Some(t) if !t.is_empty() && t != "Default Title" && product["hasOnlyDefaultVariant"].as_bool() != Some(true) => t,
        _ => product["title"].as_str().unwrap_or_default(),
    };
    Ok(Listing {
        sku: v["sku"].as_str().unwrap_or_default().to_string(),
        item_id: str_at(product, &["legacyResourceId"])?.to_string(),
        variant_id: Some(str_at(v, &["legacyResourceId"])?.to_string()),
        title: title.to_string(),
        quantity: v["inventoryQuantity"].as_i64().unwrap_or(0),
        price_minor: parse_minor(str_at(v, &["price"])?, 2).map_err(|e| garbled("variant price", e))?,
        currency: currency.to_string(),
    })
}

fn remembered_item(sku: &str) -> Result<Option<String>, ConnectorError> {
    Ok(host::state::get(&item_key(sku))?.and_then(|b| String::from_utf8(b).ok()))
}

/// One `inventorySetQuantities` for `batch` (SKU, item, quantity): the indices Shopify
/// refused, with why (nothing changed then), or none.
fn set_quantities(s: &Settings, location: &str, batch: &[(&StockUpdate, String)]) -> Result<Vec<(usize, String, String)>, ConnectorError> {
    let quantities: Vec<Value> = batch
        .iter()
        .map(|(u, item)| json!({ "inventoryItemId": item, "locationId": location, "quantity": u.quantity, "changeFromQuantity": Value::Null }))
        .collect();
    let input = json!({ "name": "available", "reason": "correction", "referenceDocumentUri": "gid://berth/StockSync/1", "quantities": quantities });
    let data = s.query(SET_QUANTITIES, json!({ "input": input }), MUTATION_COST)?;
    let errors = data["inventorySetQuantities"]["userErrors"].as_array().cloned().unwrap_or_default();
    let mut refused = Vec::new();
    for e in &errors {
        let code = e["code"].as_str().unwrap_or("").to_string();
        let message = e["message"].as_str().unwrap_or("").to_string();
        // `field` = ["input", "quantities", INDEX, FIELD].
        match e["field"].as_array().and_then(|f| f.get(2)).and_then(Value::as_str).and_then(|i| i.parse::<usize>().ok()) {
            Some(i) if i < batch.len() => refused.push((i, code, message)),
            _ => return Err(ConnectorError::Permanent(format!("Shopify refused the stock update ({code}): {message}"))),
        }
    }
    Ok(refused)
}

impl Connector for ShopifyGraphql {
    fn manifest() -> Manifest {
        Manifest {
            platform: "shopify".into(),
            connector_version: env!("CARGO_PKG_VERSION").into(),
            wit_version: berth_sdk::WIT_VERSION.into(),
            capabilities: vec![Capability::Orders, Capability::Inventory, Capability::Webhooks, Capability::Products],
            allowed_hosts: vec!["*.myshopify.com".into()],
            // The points bucket does the pacing; this only bounds requests.
            default_rate_limit: RateLimit { requests_per_minute: 600, burst: 10 },
            max_window_ms: None,
            required_config: vec!["base_url".into()],
        }
    }

    fn check(_shop: String) -> Result<Health, ConnectorError> {
        let s = Settings::load()?;
        let data = s.query("query { shop { name } }", json!({}), 1.0)?;
        Ok(Health { ok: true, message: format!("shop {} answered", data["shop"]["name"].as_str().unwrap_or("?")) })
    }

    fn pull_orders(_shop: String, req: PullRequest) -> Result<OrderPage, ConnectorError> {
        let s = Settings::load()?;
        if req.page_cursor.is_none() && req.window.end_ms <= req.window.start_ms {
            return Err(ConnectorError::InvalidInput("empty time window".into()));
        }
        let variables = json!({
            "first": s.page_size,
            "after": req.page_cursor,
            "query": window_query(req.window.start_ms, req.window.end_ms),
            "lines": s.line_items,
        });
        let data = s.query(ORDERS_QUERY, variables, orders_cost(s.page_size, s.line_items))?;
        let page = &data["orders"];
        let orders = page["nodes"].as_array().map(Vec::as_slice).unwrap_or_default().iter().map(map_order).collect::<Result<Vec<_>, _>>()?;
        let next = match (page["pageInfo"]["hasNextPage"].as_bool(), page["pageInfo"]["endCursor"].as_str()) {
            (Some(true), Some(c)) => Some(c.to_string()),
            _ => None,
        };
        host::counter_add("orders_pulled", &[], orders.len() as u64);
        Ok(OrderPage { orders, next_page_cursor: next })
    }

    fn push_inventory(_shop: String, updates: Vec<StockUpdate>) -> Result<Vec<UpdateResult>, ConnectorError> {
        let s = Settings::load()?;
        let location = location_gid(&s)?;
        let mut done = Vec::with_capacity(updates.len());
        let mut refreshed = false;
        let mut pending: Vec<&StockUpdate> = updates.iter().collect();
        while !pending.is_empty() {
            // SKUs with a known item go in one mutation; unknown ones wait for one map read.
            let mut batch = Vec::new();
            let mut unknown = Vec::new();
            for u in pending.drain(..) {
                match remembered_item(&u.sku) {
                    Ok(Some(item)) if batch.len() < MAX_QUANTITIES => batch.push((u, item)),
                    Ok(Some(_)) => unknown.push(u),
                    Ok(None) if !refreshed => unknown.push(u),
                    Ok(None) => done.push(rejected(&u.sku, "no Shopify variant has this SKU")),
                    Err(e) => return stop_batch(done, e),
                }
            }
            if batch.is_empty() {
                if let Err(e) = refresh_item_map(&s) {
                    return stop_batch(done, e);
                }
                refreshed = true;
                pending = unknown;
                continue;
            }
            let refused = match set_quantities(&s, &location, &batch) {
                Ok(r) => r,
                Err(e) if is_per_sku(&e) && batch.len() == 1 => {
                    done.push(berth_sdk::stock::rejected_by(&batch[0].0.sku, e));
                    pending = unknown;
                    continue;
                }
                Err(e) => return stop_batch(done, e),
            };
            if refused.is_empty() {
                done.extend(batch.iter().map(|(u, _)| accepted(&u.sku)));
            } else {
                // Nothing changed: the refused SKUs are out (or their items read again once),
                // the others go again.
                for (i, (u, _)) in batch.iter().enumerate() {
                    match refused.iter().find(|(r, _, _)| *r == i) {
                        Some((_, code, _)) if code == "INVALID_INVENTORY_ITEM" && !refreshed => {
                            host::state::delete(&item_key(&u.sku))?;
                            unknown.push(u);
                        }
                        Some((_, code, message)) => done.push(rejected(&u.sku, format!("Shopify refused it ({code}): {message}"))),
                        None => unknown.push(u),
                    }
                }
            }
            pending = unknown;
        }
        host::counter_add("stock_pushed", &[], done.iter().filter(|r| r.accepted).count() as u64);
        Ok(done)
    }

    fn handle_webhook(_shop: String, req: WebhookRequest) -> Result<Vec<Event>, ConnectorError> {
        rest_order::webhook_events(&req)
    }

    fn listings(_shop: String, req: ListingRequest) -> Result<ListingPage, ConnectorError> {
        let s = Settings::load()?;
        let currency = currency(&s)?;
        let first = u64::from(req.limit.clamp(1, 250));
        let data = s.query(LISTINGS_QUERY, json!({ "first": first, "after": req.cursor }), variants_cost(first))?;
        let page = &data["productVariants"];
        let listings = page["nodes"].as_array().map(Vec::as_slice).unwrap_or_default().iter().map(|v| map_listing(v, &currency)).collect::<Result<Vec<_>, _>>()?;
        let next_cursor = match (page["pageInfo"]["hasNextPage"].as_bool(), page["pageInfo"]["endCursor"].as_str()) {
            (Some(true), Some(c)) => Some(c.to_string()),
            _ => None,
        };
        Ok(ListingPage { listings, next_cursor })
    }

    fn authorization() -> AuthSupport {
        AuthSupport { refreshes: true, oauth: false }
    }

    /// A new token from the client credentials grant (no refresh token involved).
    fn refresh_credentials(_shop: String, _current: Credentials) -> Result<Credentials, RefreshError> {
        let base = host::config("base_url").ok_or_else(|| RefreshError::Revoked("no base_url configured".into()))?;
        let (Some(id), Some(secret)) = (host::config("client_id"), host::config("client_secret")) else {
            return Err(RefreshError::Revoked("the shop's static access token was refused and no client_id/client_secret is configured to get a new one".into()));
        };
        let form = format!("grant_type=client_credentials&client_id={}&client_secret={}", url_encode(&id), url_encode(&secret));
        let resp = host::post_form(&format!("{}/admin/oauth/access_token", base.trim_end_matches('/')), &form, &[("accept", "application/json")])
            .map_err(|e| RefreshError::Transient(format!("token request not answered: {e:?}")))?;
        match resp.status {
            200 => {}
            400 | 401 | 403 => return Err(RefreshError::Revoked(format!("Shopify refused the app's client credentials ({})", resp.status))),
            s => return Err(RefreshError::Transient(format!("Shopify answered {s} to the token request"))),
        }
        let body: Value = serde_json::from_slice(&resp.body).map_err(|e| RefreshError::Transient(format!("unreadable token answer: {e}")))?;
        let token = body["access_token"].as_str().filter(|t| !t.is_empty()).ok_or_else(|| RefreshError::Transient("the token answer has no access_token".into()))?;
        let expires_in = body["expires_in"].as_i64().unwrap_or(86_399);
        Ok(Credentials {
            access_token: token.to_string(),
            refresh_token: None,
            access_expires_ms: Some(now_ms() + expires_in * 1000),
            refresh_expires_ms: None,
            authorization_expires_ms: None,
        })
    }
}

berth_sdk::export_connector!(ShopifyGraphql);

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: Value) -> Response {
        Response { status, headers: vec![], body: body.to_string().into_bytes() }
    }

    #[test]
    fn costs_and_windows() {
        assert_eq!(orders_cost(25, 20), 577.0);
        assert_eq!(variants_cost(250), 502.0);
        // [1.5 s, 10.5 s) -> [1 s, 11 s): Shopify compares whole seconds.
        assert_eq!(window_query(1_500, 10_500), "updated_at:>='1970-01-01T00:00:01Z' AND updated_at:<'1970-01-01T00:00:11Z'");
        assert_eq!(window_query(0, 10_000), "updated_at:>='1970-01-01T00:00:00Z' AND updated_at:<'1970-01-01T00:00:10Z'");
    }

    #[test]
    fn throttled_is_rate_limited_for_the_points_missing() {
        let throttled = json!({
            "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
            "extensions": {"cost": {"requestedQueryCost": 577, "actualQueryCost": null,
                "throttleStatus": {"maximumAvailable": 1000.0, "currentlyAvailable": 77, "restoreRate": 100.0}}}
        });
        let got = berth_sdk::native::with_host(Quiet, || answer(&resp(200, throttled), 577.0));
        assert!(matches!(got, Err(ConnectorError::RateLimited(5000))), "{got:?}");
        let denied = json!({"errors": [{"message": "no", "extensions": {"code": "ACCESS_DENIED"}}]});
        assert!(matches!(berth_sdk::native::with_host(Quiet, || answer(&resp(200, denied), 1.0)), Err(ConnectorError::Auth(_))));
        assert!(matches!(answer(&resp(401, json!({})), 1.0), Err(ConnectorError::Auth(m)) if m.contains("expired")));
        assert!(matches!(answer(&resp(503, json!({})), 1.0), Err(ConnectorError::Transient(_))));
    }

    #[test]
    fn maps_a_variant_node_to_a_listing() {
        let node = |title: &str, only: bool| {
            json!({ "legacyResourceId": "42", "sku": "TEE-S", "title": title, "price": "19.90", "inventoryQuantity": -2,
                    "product": { "legacyResourceId": "7", "title": "Tee", "hasOnlyDefaultVariant": only } })
        };
        let l = map_listing(&node("Small", false), "USD").unwrap();
        assert_eq!((l.sku.as_str(), l.item_id.as_str(), l.variant_id.as_deref(), l.title.as_str()), ("TEE-S", "7", Some("42"), "Small"));
        assert_eq!((l.quantity, l.price_minor, l.currency.as_str()), (-2, 1990, "USD"));
        assert_eq!(map_listing(&node("Default Title", true), "USD").unwrap().title, "Tee");
        let mut bad = node("Small", false);
        bad["price"] = json!("nineteen");
        assert!(matches!(map_listing(&bad, "USD"), Err(ConnectorError::Transient(m)) if m.contains("variant price")));
    }

    #[test]
    fn maps_an_order_node() {
        let n = json!({
            "id": "gid://shopify/Order/7", "legacyResourceId": "7", "name": "#7",
            "createdAt": "2024-01-01T12:00:00Z", "updatedAt": "2024-01-01T13:00:00Z", "cancelledAt": null,
            "currencyCode": "USD", "displayFinancialStatus": "PAID", "displayFulfillmentStatus": "PARTIALLY_FULFILLED",
            "totalPriceSet": {"shopMoney": {"amount": "12.30", "currencyCode": "USD"}},
            "customer": {"firstName": "Maria", "lastName": "Garcia", "phone": "13800138000"},
            "lineItems": {"nodes": [{"id": "gid://shopify/LineItem/70", "sku": "A-1", "title": "Cup", "quantity": 3,
                "originalUnitPriceSet": {"shopMoney": {"amount": "4.10"}}}]}
        });
        let o = map_order(&n).unwrap();
        assert_eq!((o.order_id.as_str(), o.total_minor, o.lines[0].line_id.as_str(), o.lines[0].unit_price_minor), ("7", 1230, "70", 410));
        assert!(matches!(o.status, OrderStatus::PartiallyShipped));
        assert_eq!(o.created_at_ms, 1_704_110_400_000);
        assert_eq!(o.buyer_phone_masked, "*******8000");
        assert!(map_order(&json!({"legacyResourceId": "1"})).is_err(), "garbage is an error, not an order");
    }

    /// A host that answers nothing but takes reports and logs.
    struct Quiet;

    impl berth_sdk::native::Host for Quiet {
        fn send(&mut self, _: &Request) -> Result<Response, host::HttpError> {
            unreachable!("no request in these tests")
        }
        fn kv_get(&mut self, _: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(None)
        }
        fn kv_set(&mut self, _: &str, _: &[u8]) -> Result<(), String> {
            Ok(())
        }
        fn kv_delete(&mut self, _: &str) -> Result<(), String> {
            Ok(())
        }
        fn kv_list_prefix(&mut self, _: &str) -> Result<Vec<String>, String> {
            Ok(vec![])
        }
        fn config(&mut self, _: &str) -> Option<String> {
            None
        }
        fn log(&mut self, _: host::Level, _: &str) {}
        fn metric(&mut self, _: berth_sdk::native::MetricKind, _: &str, _: &[(String, String)], _: f64) {}
        fn md5(&mut self, _: &[u8]) -> Vec<u8> {
            vec![]
        }
        fn sha256(&mut self, _: &[u8]) -> Vec<u8> {
            vec![]
        }
        fn hmac_md5(&mut self, _: &[u8], _: &[u8]) -> Vec<u8> {
            vec![]
        }
        fn hmac_sha256(&mut self, _: &[u8], _: &[u8]) -> Vec<u8> {
            vec![]
        }
        fn base64_encode(&mut self, _: &[u8]) -> String {
            String::new()
        }
        fn base64_decode(&mut self, _: &str) -> Result<Vec<u8>, String> {
            Ok(vec![])
        }
        fn hex_encode(&mut self, _: &[u8], _: bool) -> String {
            String::new()
        }
    }
}
