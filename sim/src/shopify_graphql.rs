//! Shopify's GraphQL Admin API (`POST /admin/api/{version}/graphql.json`) and the client
//! credentials grant (`POST /admin/oauth/access_token`), over the same shops, orders and
//! stock as the REST API.
//!
//! **Costs.** Every query has a calculated cost, checked against a bucket of points per
//! app + store before it runs (Shopify: maximum 1,000 on standard plans — Advanced and
//! Plus more — restored at 100 points a second; both configurable). The model follows
//! Shopify's rules for connections: an object costs 1, a connection 2 plus the objects
//! it asks for (`first`), and a connection inside a connection is multiplied by the
//! outer `first`; a mutation costs 10. The requested cost is taken before the query
//! runs; what it did not use (fewer objects came back) is given back. Every answer
//! carries `extensions.cost { requestedQueryCost, actualQueryCost, throttleStatus
//! { maximumAvailable, currentlyAvailable, restoreRate } }`. A query costing more than
//! is available is answered HTTP 200 with `errors[{message: "Throttled", extensions:
//! {code: "THROTTLED"}}]` and `actualQueryCost: null`; one costing more than 1,000 with
//! `MAX_COST_EXCEEDED`.
//!
//! **Operations.** The simulator does not parse GraphQL: it recognises the operation by
//! its root field (`orders`, `productVariants`, `locations`, `shop`,
//! `inventorySetQuantities`) and answers the fields berth's connector selects, reading
//! the arguments from `variables` (`first`, `after`, `query`, `lines`, `input`). Orders
//! are filtered by the search syntax `updated_at:>='…'` / `updated_at:<'…'`, sorted by
//! `UPDATED_AT` with opaque cursors. `inventorySetQuantities` checks every quantity first
//! and changes nothing when one is wrong (`userErrors` with the index in `field`).
//!
//! **Tokens.** The configured static token always works. With `[shopify] apps`, the
//! client credentials grant (`grant_type=client_credentials`, `client_id`,
//! `client_secret`, form-encoded) mints tokens that live `token_secs` (Shopify: 24 h);
//! an expired one is answered 401 like any unknown token (Shopify does not say why).

use crate::data::{minor_to_decimal, SimOrder};
use crate::inventory::StockItem;
use crate::{fault_response, now_ms, Platform, SimState};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The GraphQL cost bucket per app + store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GraphqlLimits {
    pub maximum: f64,
    pub restore_per_second: f64,
    /// The most one query may cost.
    pub max_query_cost: f64,
}

impl Default for GraphqlLimits {
    fn default() -> Self {
        GraphqlLimits { maximum: 1000.0, restore_per_second: 100.0, max_query_cost: 1000.0 }
    }
}

/// An app that gets tokens by the client credentials grant.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShopifyApp {
    pub client_id: String,
    pub client_secret: String,
}

/// One store's bucket and the tokens minted for it.
#[derive(Default)]
pub(crate) struct GraphqlState {
    /// Points available at the instant, per shop.
    buckets: std::collections::HashMap<String, (f64, Instant)>,
    /// Minted tokens per shop, with when they end (ms).
    tokens: std::collections::HashMap<String, Vec<(String, i64)>>,
    minted: u64,
}

const MUTATION_COST: f64 = 10.0;
const MAX_FIRST: u64 = 250;

fn gql_error(message: &str, code: &str) -> Value {
    json!({ "message": message, "extensions": { "code": code } })
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, Json(json!({ "errors": "[API] Invalid API key or access token (unrecognized login or wrong password)" }))).into_response()
}

/// `POST /shopify/{shop}/admin/oauth/access_token` with the client credentials grant.
pub async fn access_token(State(state): State<Arc<SimState>>, Path(shop): Path<String>, body: axum::body::Bytes) -> Response {
    let cfg = state.config();
    if !cfg.shopify.shops.iter().any(|s| s.name == shop) {
        return (StatusCode::NOT_FOUND, Json(json!({ "errors": "Not Found" }))).into_response();
    }
    if let Some(kind) = state.begin(Platform::Shopify) {
        return fault_response(kind, Duration::from_millis(cfg.timeout_hold_ms)).await;
    }
    let form: std::collections::HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if get("grant_type") != "client_credentials" {
        state.count(Platform::Shopify, |s| s.rejected += 1);
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": "unsupported_grant_type" }))).into_response();
    }
    if !cfg.shopify.apps.iter().any(|a| a.client_id == get("client_id") && a.client_secret == get("client_secret")) {
        state.count(Platform::Shopify, |s| s.rejected += 1);
        return (StatusCode::UNAUTHORIZED, Json(json!({ "error": "invalid_client", "error_description": "Client authentication failed" }))).into_response();
    }
    let token = {
        let mut g = state.shopify_graphql();
        g.minted += 1;
        let token = format!("shpat_minted_{shop}_{}", g.minted);
        let ends = now_ms() + cfg.shopify.token_secs as i64 * 1000;
        let list = g.tokens.entry(shop.clone()).or_default();
        list.retain(|(_, e)| *e > now_ms());
        list.push((token.clone(), ends));
        token
    };
    state.count(Platform::Shopify, |s| {
        s.ok += 1;
        s.refreshes += 1;
    });
    Json(json!({ "access_token": token, "scope": "read_orders,write_inventory,read_products", "expires_in": cfg.shopify.token_secs })).into_response()
}

/// Whether `token` works for `shop`: its static token, or a minted one still alive.
fn token_ok(state: &SimState, shop: &str, configured: &str, token: &str) -> bool {
    if token == configured {
        return true;
    }
    let g = state.shopify_graphql();
    match g.tokens.get(shop).and_then(|l| l.iter().find(|(t, _)| t == token)) {
        Some((_, ends)) if *ends > now_ms() => true,
        Some(_) => {
            drop(g);
            state.count(Platform::Shopify, |s| s.expired_token_calls += 1);
            false
        }
        None => false,
    }
}

#[derive(Deserialize)]
struct GraphqlBody {
    query: String,
    #[serde(default)]
    variables: Value,
}

/// `POST /shopify/{shop}/admin/api/{version}/graphql.json`.
pub async fn graphql(State(state): State<Arc<SimState>>, Path((shop, _version)): Path<(String, String)>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let cfg = state.config();
    let Some(shop_cfg) = cfg.shopify.shops.iter().find(|s| s.name == shop) else {
        return (StatusCode::NOT_FOUND, Json(json!({ "errors": "Not Found" }))).into_response();
    };
    if let Some(kind) = state.begin(Platform::Shopify) {
        return fault_response(kind, Duration::from_millis(cfg.timeout_hold_ms)).await;
    }
    let token = headers.get("x-shopify-access-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !token_ok(&state, &shop, &shop_cfg.access_token, token) {
        state.count(Platform::Shopify, |s| s.rejected += 1);
        return unauthorized();
    }
    let req: GraphqlBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            state.count(Platform::Shopify, |s| s.rejected += 1);
            return (StatusCode::BAD_REQUEST, Json(json!({ "errors": { "query": format!("Required parameter missing or invalid: {e}") } }))).into_response();
        }
    };
    let limits = cfg.shopify.graphql.clone();
    let op = match Operation::of(&req.query, &req.variables) {
        Ok(op) => op,
        Err(message) => {
            state.count(Platform::Shopify, |s| s.rejected += 1);
            return Json(json!({ "errors": [gql_error(&message, "BAD_REQUEST")] })).into_response();
        }
    };
    let requested = op.requested_cost();
    // The bucket: restored since last time, then the requested cost taken.
    let available = {
        let mut g = state.shopify_graphql();
        let now = Instant::now();
        let (level, at) = g.buckets.get(&shop).copied().unwrap_or((limits.maximum, now));
        let level = (level + limits.restore_per_second * now.saturating_duration_since(at).as_secs_f64()).min(limits.maximum);
        if requested > limits.max_query_cost || requested > level {
            g.buckets.insert(shop.clone(), (level, now));
            Err(level)
        } else {
            g.buckets.insert(shop.clone(), (level - requested, now));
            Ok(level - requested)
        }
    };
    let throttle_status = |available: f64| json!({ "maximumAvailable": limits.maximum, "currentlyAvailable": available.floor(), "restoreRate": limits.restore_per_second });
    let level = match available {
        Ok(level) => level,
        Err(level) => {
            let (message, code) = if requested > limits.max_query_cost {
                (format!("Query cost is {requested}, which exceeds the single query max cost limit ({}).", limits.max_query_cost), "MAX_COST_EXCEEDED")
            } else {
                ("Throttled".to_string(), "THROTTLED")
            };
            state.count(Platform::Shopify, |s| if code == "THROTTLED" { s.throttled += 1 } else { s.rejected += 1 });
            let cost = json!({ "requestedQueryCost": requested, "actualQueryCost": Value::Null, "throttleStatus": throttle_status(level) });
            return Json(json!({ "errors": [gql_error(&message, code)], "extensions": { "cost": cost } })).into_response();
        }
    };
    let (data, actual) = op.run(&state, &shop);
    // What the query did not use comes back.
    let after = {
        let mut g = state.shopify_graphql();
        let entry = g.buckets.entry(shop.clone()).or_insert((level, Instant::now()));
        entry.0 = (entry.0 + (requested - actual).max(0.0)).min(limits.maximum);
        entry.0
    };
    state.count(Platform::Shopify, |s| s.ok += 1);
    let cost = json!({ "requestedQueryCost": requested, "actualQueryCost": actual, "throttleStatus": throttle_status(after) });
    Json(json!({ "data": data, "extensions": { "cost": cost } })).into_response()
}

/// A query berth's connector sends, by its root field, with its arguments.
enum Operation {
    Shop,
    Orders { first: u64, lines: u64, after: Option<(i64, u64)>, min_s: Option<i64>, before_s: Option<i64> },
    Variants { first: u64, after: u64 },
    Locations { first: u64 },
    SetQuantities { input: Value },
}

fn first_of(v: &Value, key: &str, default: u64) -> Result<u64, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(n) => n.as_u64().filter(|n| (1..=MAX_FIRST).contains(n)).ok_or_else(|| format!("`{key}` must be 1..={MAX_FIRST}")),
    }
}

/// The time after `field:>=` / `field:<` in a search query, quoted or not.
fn search_bound(query: &str, op: &str) -> Result<Option<i64>, String> {
    let needle = format!("updated_at:{op}");
    let Some(i) = query.find(&needle) else { return Ok(None) };
    let rest = query[i + needle.len()..].trim_start_matches(['\'', '"']);
    let end = rest.find(['\'', '"', ' ']).unwrap_or(rest.len());
    chrono::DateTime::parse_from_rfc3339(&rest[..end]).map(|t| Some(t.timestamp())).map_err(|_| format!("invalid date in search query: {}", &rest[..end]))
}

fn decode_cursor(c: &str) -> Option<(i64, u64)> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(c).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (u, id) = text.split_once(':')?;
    Some((u.parse().ok()?, id.parse().ok()?))
}

fn encode_cursor(updated: i64, id: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{updated}:{id}"))
}

impl Operation {
    fn of(query: &str, vars: &Value) -> Result<Operation, String> {
        if query.contains("inventorySetQuantities") {
            return Ok(Operation::SetQuantities { input: vars.get("input").cloned().unwrap_or(Value::Null) });
        }
        if query.contains("orders(") {
            let search = vars.get("query").and_then(Value::as_str).unwrap_or("");
            let after = match vars.get("after").and_then(Value::as_str) {
                None => None,
                Some(c) => Some(decode_cursor(c).ok_or("Invalid cursor for current pagination sort.")?),
            };
            return Ok(Operation::Orders {
                first: first_of(vars, "first", 50)?,
                lines: first_of(vars, "lines", 10)?,
                after,
                min_s: search_bound(search, ">=")?,
                before_s: search_bound(search, "<")?,
            });
        }
        if query.contains("productVariants(") {
            let after = match vars.get("after").and_then(Value::as_str) {
                None => 0,
                Some(c) => decode_cursor(c).map(|(_, id)| id).ok_or("Invalid cursor")?,
            };
            return Ok(Operation::Variants { first: first_of(vars, "first", 50)?, after });
        }
        if query.contains("locations(") {
            return Ok(Operation::Locations { first: first_of(vars, "first", 10)? });
        }
        if query.contains("shop") {
            return Ok(Operation::Shop);
        }
        Err("Field doesn't exist on type 'QueryRoot'".into())
    }

    fn requested_cost(&self) -> f64 {
        match self {
            Operation::Shop => 1.0,
            Operation::Orders { first, lines, .. } => (2 + first + first * (2 + lines)) as f64,
            // Each variant with its inventory item.
            Operation::Variants { first, .. } => (2 + first * 2) as f64,
            Operation::Locations { first } => (2 + first) as f64,
            Operation::SetQuantities { .. } => MUTATION_COST,
        }
    }

    /// The answer's `data` and what it cost.
    fn run(self, state: &SimState, shop: &str) -> (Value, f64) {
        match self {
            Operation::Shop => (json!({ "shop": { "name": shop, "currencyCode": Platform::Shopify.currency() } }), 1.0),
            Operation::Locations { .. } => {
                let id = format!("gid://shopify/Location/{}", crate::shopify::LOCATION_ID);
                (json!({ "locations": { "nodes": [{ "id": id, "name": "Main warehouse", "isActive": true }] } }), 3.0)
            }
            Operation::Orders { first, after, min_s, before_s, .. } => {
                let mut matching: Vec<SimOrder> = state
                    .orders(Platform::Shopify, shop)
                    .into_iter()
                    .filter(|o| min_s.is_none_or(|m| o.updated_s >= m))
                    .filter(|o| before_s.is_none_or(|b| o.updated_s < b))
                    .filter(|o| after.is_none_or(|a| (o.updated_s, o.id) > a))
                    .collect();
                matching.sort_by_key(|o| (o.updated_s, o.id));
                let more = matching.len() as u64 > first;
                matching.truncate(first as usize);
                let actual = 2 + matching.len() as u64 + matching.iter().map(|o| 2 + o.lines.len() as u64).sum::<u64>();
                let end = matching.last().map(|o| encode_cursor(o.updated_s, o.id));
                let data = json!({ "orders": {
                    "nodes": matching.iter().map(render_order).collect::<Vec<_>>(),
                    "pageInfo": { "hasNextPage": more, "endCursor": end },
                } });
                (data, actual as f64)
            }
            Operation::Variants { first, after } => {
                let all = state.stock(Platform::Shopify, shop);
                let variants_of = |product: u64| all.iter().filter(|i| i.product_id == product).count();
                let mut items: Vec<StockItem> = all.iter().filter(|i| i.variant_id > after).cloned().collect();
                items.sort_by_key(|i| i.variant_id);
                let more = items.len() as u64 > first;
                items.truncate(first as usize);
                let end = items.last().map(|i| encode_cursor(0, i.variant_id));
                let data = json!({ "productVariants": {
                    // The fields berth's connector asks for (the item map and the listings).
                    "nodes": items.iter().map(|i| json!({
                        "id": format!("gid://shopify/ProductVariant/{}", i.variant_id),
                        "legacyResourceId": i.variant_id.to_string(),
                        "sku": i.sku,
                        "title": i.title,
                        "price": crate::data::minor_to_decimal(i.price_minor),
                        "inventoryQuantity": i.quantity,
                        "inventoryItem": { "id": format!("gid://shopify/InventoryItem/{}", i.inventory_item_id) },
                        "product": {
                            "id": format!("gid://shopify/Product/{}", i.product_id),
                            "legacyResourceId": i.product_id.to_string(),
                            "title": i.title.split(" (").next().unwrap_or_default(),
                            "hasOnlyDefaultVariant": variants_of(i.product_id) == 1,
                        },
                    })).collect::<Vec<_>>(),
                    "pageInfo": { "hasNextPage": more, "endCursor": end },
                } });
                (data, (2 + items.len() * 2) as f64)
            }
            Operation::SetQuantities { input } => (set_quantities(state, shop, &input), MUTATION_COST),
        }
    }
}

fn gid_number(v: Option<&Value>, kind: &str) -> Option<u64> {
    v?.as_str()?.strip_prefix(&format!("gid://shopify/{kind}/"))?.parse().ok()
}

/// `inventorySetQuantities`: every quantity checked first; one wrong, nothing changes.
fn set_quantities(state: &SimState, shop: &str, input: &Value) -> Value {
    let user_error = |field: Vec<String>, message: &str, code: &str| json!({ "field": field, "message": message, "code": code });
    let answer = |errors: Vec<Value>, changes: Vec<Value>| {
        let group = if errors.is_empty() { json!({ "reason": "correction", "changes": changes }) } else { Value::Null };
        json!({ "inventorySetQuantities": { "inventoryAdjustmentGroup": group, "userErrors": errors } })
    };
    if input.get("name").and_then(Value::as_str) != Some("available") {
        return answer(vec![user_error(vec!["input".into(), "name".into()], "The quantity name must be available.", "INVALID_NAME")], vec![]);
    }
    let Some(quantities) = input.get("quantities").and_then(Value::as_array).filter(|q| !q.is_empty() && q.len() <= 250) else {
        return answer(vec![user_error(vec!["input".into(), "quantities".into()], "Between 1 and 250 quantities are required.", "INVALID_QUANTITY")], vec![]);
    };
    let stock = state.stock(Platform::Shopify, shop);
    let mut errors = Vec::new();
    let mut wanted = Vec::new();
    for (i, q) in quantities.iter().enumerate() {
        let field = |f: &str| vec!["input".to_string(), "quantities".to_string(), i.to_string(), f.to_string()];
        let item = gid_number(q.get("inventoryItemId"), "InventoryItem");
        let Some(item) = item.filter(|id| stock.iter().any(|s| s.inventory_item_id == *id)) else {
            errors.push(user_error(field("inventoryItemId"), "The specified inventory item could not be found.", "INVALID_INVENTORY_ITEM"));
            continue;
        };
        if gid_number(q.get("locationId"), "Location") != Some(crate::shopify::LOCATION_ID) {
            errors.push(user_error(field("locationId"), "The specified location could not be found.", "INVALID_LOCATION"));
            continue;
        }
        match q.get("quantity").and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok()) {
            Some(n) => wanted.push((item, n)),
            None => errors.push(user_error(field("quantity"), "The quantity must be a whole number from 0.", "INVALID_QUANTITY_NEGATIVE")),
        }
    }
    if !errors.is_empty() {
        return answer(errors, vec![]);
    }
    let changes = wanted
        .into_iter()
        .filter_map(|(item, n)| {
            let before = stock.iter().find(|s| s.inventory_item_id == item)?.quantity;
            let after = state.set_stock(Platform::Shopify, shop, |i| i.inventory_item_id == item, |_| n)?;
            Some(json!({ "name": "available", "delta": after.quantity as i64 - before as i64, "quantityAfterChange": after.quantity }))
        })
        .collect();
    answer(vec![], changes)
}

fn iso(s: i64) -> String {
    chrono::DateTime::from_timestamp(s, 0).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default()
}

/// An order in the fields the connector selects.
fn render_order(o: &SimOrder) -> Value {
    let (financial, fulfillment, cancelled, _) = crate::shopify::STATUSES[o.status];
    let (first, last) = o.buyer_name.split_once(' ').unwrap_or((&o.buyer_name, ""));
    let money = |minor: i64| json!({ "shopMoney": { "amount": minor_to_decimal(minor), "currencyCode": o.currency } });
    json!({
        "id": format!("gid://shopify/Order/{}", o.id),
        "legacyResourceId": o.id.to_string(),
        "name": format!("#{}", o.id),
        "createdAt": iso(o.created_s),
        "updatedAt": iso(o.updated_s),
        "cancelledAt": if cancelled { Value::String(iso(o.updated_s)) } else { Value::Null },
        "currencyCode": o.currency,
        "displayFinancialStatus": financial.to_uppercase(),
        "displayFulfillmentStatus": match fulfillment { Some("fulfilled") => "FULFILLED", Some("partial") => "PARTIALLY_FULFILLED", _ => "UNFULFILLED" },
        "totalPriceSet": money(o.total_minor()),
        "customer": { "firstName": first, "lastName": last, "phone": o.buyer_phone },
        "lineItems": { "nodes": o.lines.iter().map(|l| json!({
            "id": format!("gid://shopify/LineItem/{}", l.line_id),
            "sku": l.sku,
            "title": l.title,
            "quantity": l.quantity,
            "originalUnitPriceSet": money(l.unit_price_minor),
        })).collect::<Vec<_>>() },
    })
}

impl SimState {
    pub(crate) fn shopify_graphql(&self) -> std::sync::MutexGuard<'_, GraphqlState> {
        self.shopify_graphql.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Another app of the store spends `points` of its GraphQL bucket (what berth cannot
    /// know of until Shopify's next answer says so).
    pub fn spend_shopify_points(&self, shop: &str, points: f64) {
        let limits = self.config().shopify.graphql;
        let level = self.shopify_points(shop);
        self.shopify_graphql().buckets.insert(shop.to_string(), ((level - points).max(0.0).min(limits.maximum), Instant::now()));
    }

    /// Points the shop's GraphQL bucket holds now.
    pub fn shopify_points(&self, shop: &str) -> f64 {
        let limits = self.config().shopify.graphql;
        let g = self.shopify_graphql();
        match g.buckets.get(shop) {
            Some((level, at)) => (level + limits.restore_per_second * at.elapsed().as_secs_f64()).min(limits.maximum),
            None => limits.maximum,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_follow_the_connection_rules() {
        let op = Operation::of("query($first:Int!){ orders(first:$first) { nodes { id lineItems(first:$lines) { nodes { sku } } } } }", &json!({"first": 25, "lines": 10})).unwrap();
        assert_eq!(op.requested_cost(), (2 + 25 + 25 * 12) as f64);
        assert!(Operation::of("{ orders(first: 1) { nodes { id } } }", &json!({"first": 251})).is_err());
        assert_eq!(Operation::of("mutation { inventorySetQuantities(input: $input) { userErrors { code } } }", &json!({})).unwrap().requested_cost(), 10.0);
        assert_eq!(search_bound("updated_at:>='2024-01-01T00:00:00Z' AND updated_at:<'2024-01-02T00:00:00Z'", ">=").unwrap(), Some(1_704_067_200));
        assert_eq!(search_bound("updated_at:>='2024-01-01T00:00:00Z' AND updated_at:<'2024-01-02T00:00:00Z'", "<").unwrap(), Some(1_704_153_600));
        assert_eq!(decode_cursor(&encode_cursor(5, 7)), Some((5, 7)));
    }
}
