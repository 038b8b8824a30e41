//! A Shopify-like Admin REST API: `X-Shopify-Access-Token`, cursor paging through the
//! `Link` header (`page_info`), a leaky bucket per app + store answering 429 with
//! `Retry-After`, and `X-Shopify-Shop-Api-Call-Limit` on every answer.

use crate::data::{minor_to_decimal, SimOrder};
use crate::faults::BucketAnswer;
use crate::inventory::StockItem;
use crate::{fault_response, Platform, SimState};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use chrono::{DateTime, FixedOffset, TimeZone};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// (financial_status, fulfillment_status, cancelled, normalized berth status)
pub const STATUSES: &[(&str, Option<&str>, bool, &str)] = &[
    ("pending", None, false, "unpaid"),
    ("paid", None, false, "paid"),
    ("paid", Some("partial"), false, "partially-shipped"),
    ("paid", Some("fulfilled"), false, "shipped"),
    ("refunded", Some("fulfilled"), false, "refunded"),
    ("voided", None, true, "cancelled"),
];

/// Shop-local offset the simulated store reports times in (UTC-5).
const SHOP_OFFSET_S: i32 = -5 * 3600;
const MAX_LIMIT: usize = 250;

pub fn normalized_status(order: &SimOrder) -> &'static str {
    STATUSES[order.status].3
}

#[derive(Serialize, Deserialize)]
struct PageInfo {
    status: String,
    min: Option<i64>,
    max: Option<i64>,
    after_updated: i64,
    after_id: u64,
}

fn errors(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn bad_param(field: &str, msg: &str) -> Response {
    errors(StatusCode::BAD_REQUEST, json!({ "errors": { field: [msg] } }))
}

fn local_time(s: i64) -> String {
    let tz = FixedOffset::east_opt(SHOP_OFFSET_S).expect("valid offset");
    tz.timestamp_opt(s, 0)
        .single()
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

pub fn render(o: &SimOrder) -> Value {
    let (financial, fulfillment, cancelled, _) = STATUSES[o.status];
    let (first, last) = o.buyer_name.split_once(' ').unwrap_or((&o.buyer_name, ""));
    json!({
        "id": o.id,
        "name": format!("#{}", o.id),
        "created_at": local_time(o.created_s),
        "updated_at": local_time(o.updated_s),
        "cancelled_at": if cancelled { Value::String(local_time(o.updated_s)) } else { Value::Null },
        "currency": o.currency,
        "total_price": minor_to_decimal(o.total_minor()),
        "financial_status": financial,
        "fulfillment_status": fulfillment,
        "line_items": o.lines.iter().map(|l| json!({
            "id": l.line_id,
            "sku": l.sku,
            "title": l.title,
            "quantity": l.quantity,
            "price": minor_to_decimal(l.unit_price_minor),
        })).collect::<Vec<_>>(),
        "customer": { "first_name": first, "last_name": last, "phone": o.buyer_phone },
    })
}

fn parse_time(v: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(v).ok().map(|t| t.timestamp())
}

fn status_matches(filter: &str, o: &SimOrder) -> bool {
    let (_, fulfillment, cancelled, _) = STATUSES[o.status];
    match filter {
        "any" => true,
        "cancelled" => cancelled,
        "closed" => fulfillment == Some("fulfilled"),
        _ => !cancelled,
    }
}

pub async fn orders(
    State(state): State<Arc<SimState>>,
    Path((shop, version)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    gated(&state, &shop, &headers, || page(&state, &shop, &version, &q, &headers)).await
}

/// What every Admin API call passes before its handler runs: the shop exists, injected
/// faults, the access token, the leaky bucket. The answer is counted and carries the
/// call-limit header.
async fn gated(state: &SimState, shop: &str, headers: &HeaderMap, handler: impl FnOnce() -> Response) -> Response {
    let cfg = state.config();
    let Some(shop_cfg) = cfg.shopify.shops.iter().find(|s| s.name == shop) else {
        return errors(StatusCode::NOT_FOUND, json!({ "errors": "Not Found" }));
    };
    if let Some(kind) = state.begin(Platform::Shopify) {
        return fault_response(kind, Duration::from_millis(cfg.timeout_hold_ms)).await;
    }
    let token = headers.get("x-shopify-access-token").and_then(|v| v.to_str().ok());
    if token != Some(shop_cfg.access_token.as_str()) {
        state.count(Platform::Shopify, |s| s.rejected += 1);
        return errors(
            StatusCode::UNAUTHORIZED,
            json!({ "errors": "[API] Invalid API key or access token (unrecognized login or wrong password)" }),
        );
    }
    let used = {
        let mut inner = state.lock();
        let now = Instant::now();
        if inner.told_to_wait.early(shop, now) {
            inner.stats.entry(Platform::Shopify).or_default().early_after_throttle += 1;
        }
        let bucket = inner.buckets.get_mut(shop);
        match bucket.map(|b| (b.take(Instant::now()), b.size as u32)) {
            Some((BucketAnswer::Allowed { used }, size)) => format!("{used}/{size}"),
            Some((BucketAnswer::Throttled { retry_after, used }, size)) => {
                inner.stats.entry(Platform::Shopify).or_default().throttled += 1;
                // What the client is told: rounded up to the tenth the header shows.
                let told = Duration::from_secs_f64((retry_after.as_secs_f64() * 10.0).ceil() / 10.0);
                inner.told_to_wait.told(shop, now, now + told);
                drop(inner);
                let mut resp = errors(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({ "errors": "Exceeded 2 calls per second for api client. Reduce request rates to resume uninterrupted service." }),
                );
                let h = resp.headers_mut();
                h.insert("retry-after", hv(&format!("{:.1}", told.as_secs_f64())));
                h.insert("x-shopify-shop-api-call-limit", hv(&format!("{used}/{size}")));
                return resp;
            }
            None => "0/0".to_string(),
        }
    };
    let mut resp = handler();
    if resp.status().is_success() {
        state.count(Platform::Shopify, |s| s.ok += 1);
    } else {
        state.count(Platform::Shopify, |s| s.rejected += 1);
    }
    resp.headers_mut().insert("x-shopify-shop-api-call-limit", hv(&used));
    resp
}

/// The one location every simulated shop stocks from.
pub const LOCATION_ID: u64 = 61_000_000_001;

pub async fn locations(
    State(state): State<Arc<SimState>>,
    Path((shop, _version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    gated(&state, &shop, &headers, || {
        Json(json!({ "locations": [{ "id": LOCATION_ID, "name": "Main warehouse", "active": true }] })).into_response()
    })
    .await
}

/// `GET products.json?limit=N&since_id=ID`: products by ascending id with their variants.
pub async fn products(
    State(state): State<Arc<SimState>>,
    Path((shop, version)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    gated(&state, &shop, &headers, || {
        let limit = match q.get("limit").map(|v| v.parse::<usize>()) {
            None => 50,
            Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
            Some(_) => return bad_param("limit", "must be between 1 and 250"),
        };
        // Paged by `since_id`, or by the `page_info` cursor of the `Link` header (with
        // which only `limit` and `fields` may be passed).
        let since_id = if let Some(pi) = q.get("page_info") {
            if let Some(other) = q.keys().find(|k| !matches!(k.as_str(), "page_info" | "limit" | "fields")) {
                return bad_param(other, &format!("{other} cannot be passed when page_info is present"));
            }
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(pi).ok().and_then(|b| String::from_utf8(b).ok());
            match decoded.as_deref().and_then(|s| s.strip_prefix("after:")).and_then(|n| n.parse::<u64>().ok()) {
                Some(n) => n,
                None => return bad_param("page_info", "Invalid value."),
            }
        } else {
            match q.get("since_id").map(|v| v.parse::<u64>()) {
                None => 0,
                Some(Ok(n)) => n,
                Some(Err(_)) => return bad_param("since_id", "must be an id"),
            }
        };
        let mut by_product: std::collections::BTreeMap<u64, Vec<StockItem>> = Default::default();
        for item in state.stock(Platform::Shopify, &shop) {
            by_product.entry(item.product_id).or_default().push(item);
        }
        let page: Vec<(&u64, &Vec<StockItem>)> = by_product.range(since_id + 1..).take(limit + 1).collect();
        let more = page.len() > limit;
        let products: Vec<Value> = page
            .iter()
            .take(limit)
            .map(|(id, variants)| {
                json!({
                    "id": id,
                    "title": variants[0].title.split(" (").next().unwrap_or_default(),
                    "variants": variants.iter().map(|v| json!({
                        "id": v.variant_id,
                        "product_id": id,
                        "sku": v.sku,
                        "title": v.title,
                        "inventory_item_id": v.inventory_item_id,
                        "inventory_quantity": v.quantity,
                        "price": minor_to_decimal(v.price_minor),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut resp = Json(json!({ "products": products })).into_response();
        if let Some((last, _)) = page.get(limit.saturating_sub(1)).filter(|_| more) {
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("after:{last}"));
            let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
            let link = format!("<http://{host}/shopify/{shop}/admin/api/{version}/products.json?limit={limit}&page_info={token}>; rel=\"next\"");
            resp.headers_mut().insert("link", hv(&link));
        }
        resp
    })
    .await
}

#[derive(Deserialize)]
struct SetLevel {
    location_id: u64,
    inventory_item_id: u64,
    available: i64,
}

/// `POST inventory_levels/set.json`: an absolute quantity for one item at one location.
pub async fn set_inventory_level(
    State(state): State<Arc<SimState>>,
    Path((shop, _version)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    gated(&state, &shop, &headers, || {
        let req: SetLevel = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return errors(StatusCode::BAD_REQUEST, json!({ "errors": { "inventory_level": [e.to_string()] } })),
        };
        if req.location_id != LOCATION_ID {
            return errors(StatusCode::UNPROCESSABLE_ENTITY, json!({ "errors": { "location_id": ["Location does not exist"] } }));
        }
        let Ok(available) = u32::try_from(req.available) else {
            return errors(StatusCode::UNPROCESSABLE_ENTITY, json!({ "errors": { "available": ["must be between 0 and 4294967295"] } }));
        };
        match state.set_stock(Platform::Shopify, &shop, |i| i.inventory_item_id == req.inventory_item_id, |_| available) {
            Some(item) => Json(json!({ "inventory_level": {
                "inventory_item_id": item.inventory_item_id,
                "location_id": LOCATION_ID,
                "available": item.quantity,
                "updated_at": local_time(crate::now_s()),
            } }))
            .into_response(),
            None => errors(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "errors": { "inventory_item_id": ["Inventory item does not exist"] } }),
            ),
        }
    })
    .await
}

/// `GET shop.json`: the store's own settings (the connector reads its currency).
pub async fn shop(
    State(state): State<Arc<SimState>>,
    Path((shop, _version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let name = shop.clone();
    gated(&state, &shop, &headers, || {
        Json(json!({ "shop": { "name": name, "myshopify_domain": format!("{name}.myshopify.com"), "currency": Platform::Shopify.currency(), "iana_timezone": "America/New_York" } })).into_response()
    })
    .await
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn page(state: &SimState, shop: &str, version: &str, q: &HashMap<String, String>, headers: &HeaderMap) -> Response {
    let limit = match q.get("limit").map(|v| v.parse::<usize>()) {
        None => 50,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => return bad_param("limit", "must be between 1 and 250"),
    };
    let cursor = if let Some(pi) = q.get("page_info") {
        if let Some(other) = q.keys().find(|k| !matches!(k.as_str(), "page_info" | "limit" | "fields")) {
            return bad_param(other, &format!("{other} cannot be passed when page_info is present"));
        }
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(pi)
            .ok()
            .and_then(|b| serde_json::from_slice::<PageInfo>(&b).ok());
        match decoded {
            Some(p) => p,
            None => return bad_param("page_info", "Invalid value."),
        }
    } else {
        let bound = |name: &str| -> Result<Option<i64>, Response> {
            match q.get(name) {
                None => Ok(None),
                Some(v) => parse_time(v).map(Some).ok_or_else(|| bad_param(name, "must be an ISO 8601 time")),
            }
        };
        let min = match bound("updated_at_min") {
            Ok(v) => v,
            Err(r) => return r,
        };
        let max = match bound("updated_at_max") {
            Ok(v) => v,
            Err(r) => return r,
        };
        let status = q.get("status").cloned().unwrap_or_else(|| "open".into());
        if !matches!(status.as_str(), "open" | "closed" | "cancelled" | "any") {
            return bad_param("status", "must be open, closed, cancelled or any");
        }
        PageInfo { status, min, max, after_updated: i64::MIN, after_id: 0 }
    };

    let mut matching: Vec<SimOrder> = state
        .orders(Platform::Shopify, shop)
        .into_iter()
        .filter(|o| status_matches(&cursor.status, o))
        .filter(|o| cursor.min.is_none_or(|m| o.updated_s >= m))
        .filter(|o| cursor.max.is_none_or(|m| o.updated_s <= m))
        .filter(|o| (o.updated_s, o.id) > (cursor.after_updated, cursor.after_id))
        .collect();
    matching.sort_by_key(|o| (o.updated_s, o.id));
    let more = matching.len() > limit;
    matching.truncate(limit);

    let body = json!({ "orders": matching.iter().map(render).collect::<Vec<_>>() });
    let mut resp = (StatusCode::OK, Json(body)).into_response();
    if more {
        if let Some(last) = matching.last() {
            let next = PageInfo {
                status: cursor.status.clone(),
                min: cursor.min,
                max: cursor.max,
                after_updated: last.updated_s,
                after_id: last.id,
            };
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(serde_json::to_vec(&next).unwrap_or_default());
            let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
            let link = format!(
                "<http://{host}/shopify/{shop}/admin/api/{version}/orders.json?limit={limit}&page_info={token}>; rel=\"next\""
            );
            resp.headers_mut().insert("link", hv(&link));
        }
    }
    resp
}
