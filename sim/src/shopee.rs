//! A Shopee-Open-Platform-v2-like API under `/shopee/api/v2/`: every call carries
//! `partner_id`, `timestamp` (valid five minutes), `access_token`, `shop_id` and `sign` =
//! lower-case hex HMAC-SHA256(partner_key, partner_id + api_path + timestamp +
//! access_token + shop_id); the envelope is `{"error","message","request_id","response"}`
//! with `error` empty on success. `get_order_list` takes an update-time range of at most
//! 15 days and pages with an opaque `cursor` (`more` / `next_cursor`); details come from
//! `get_order_detail` (at most 50 order numbers). Stock is set per item and model with
//! `update_stock`. A call over the shop's per-second budget gets HTTP 429
//! `error_too_many_request` without a Retry-After, as community reports describe.

use crate::data::SimOrder;
use crate::{fault_response, now_s, Platform, SimState};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// (Shopee order_status, normalized berth status)
pub const STATUSES: &[(&str, &str)] = &[
    ("UNPAID", "unpaid"),
    ("READY_TO_SHIP", "paid"),
    ("SHIPPED", "shipped"),
    ("TO_CONFIRM_RECEIVE", "delivered"),
    ("COMPLETED", "completed"),
    ("CANCELLED", "cancelled"),
    ("TO_RETURN", "refunded"),
];

const MAX_WINDOW_S: i64 = 15 * 86_400;
pub(crate) const TIMESTAMP_VALID_S: i64 = 300;
const MAX_DETAIL: usize = 50;

pub fn normalized_status(order: &SimOrder) -> &'static str {
    STATUSES[order.status].1
}

/// The order number Shopee shows for a simulated order.
pub fn order_sn(o: &SimOrder) -> String {
    format!("SP{}", o.id)
}

pub(crate) fn hmac_hex(key: &str, data: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(data.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The Shop API signature: hex HMAC-SHA256(partner_key, partner_id + path + timestamp +
/// access_token + shop_id).
pub fn sign(partner_key: &str, partner_id: u64, api_path: &str, timestamp: i64, access_token: &str, shop_id: u64) -> String {
    hmac_hex(partner_key, &format!("{partner_id}{api_path}{timestamp}{access_token}{shop_id}"))
}

/// The push `Authorization` header: hex HMAC-SHA256(partner_key, callback_url + "|" + body).
pub fn push_authorization(partner_key: &str, callback_url: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(partner_key.as_bytes()).expect("HMAC takes any key length");
    mac.update(callback_url.as_bytes());
    mac.update(b"|");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// An order-status push (code 3) as Shopee sends it for `o`.
pub fn order_push(shop_id: u64, o: &SimOrder) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "shop_id": shop_id,
        "code": 3,
        "timestamp": now_s(),
        "data": { "ordersn": order_sn(o), "status": STATUSES[o.status].0, "update_time": o.updated_s },
    }))
    .unwrap_or_default()
}

fn envelope(status: StatusCode, error: &str, message: &str, response: Value) -> Response {
    let body = json!({
        "request_id": format!("sim{:x}", now_s()),
        "error": error,
        "message": message,
        "warning": "",
        "response": response,
    });
    (status, Json(body)).into_response()
}

/// Why a call was refused: (HTTP status, error code, message).
#[derive(Debug)]
pub(crate) struct Refusal(pub StatusCode, pub &'static str, pub String);

fn param_error(message: impl Into<String>) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, "error_param", message.into())
}

fn query_map(query: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect()
}

/// Every Shop API call passes here: injected faults, the signature, the timestamp, the
/// token, the per-shop budget. Returns the shop id.
fn authenticate(state: &SimState, api_path: &str, q: &HashMap<String, String>) -> Result<u64, Refusal> {
    let cfg = state.config();
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    for required in ["partner_id", "timestamp", "sign", "access_token", "shop_id"] {
        if get(required).is_empty() {
            return Err(param_error(format!("{required} is required")));
        }
    }
    let partner_id: u64 = get("partner_id").parse().map_err(|_| param_error("partner_id must be a number"))?;
    let Some(partner) = cfg.shopee.partners.iter().find(|p| p.partner_id == partner_id) else {
        return Err(Refusal(StatusCode::FORBIDDEN, "error_partner_id", "No partner_id or partner_id is invalid.".into()));
    };
    let timestamp: i64 = get("timestamp").parse().map_err(|_| param_error("timestamp must be Unix seconds"))?;
    let shop_id: u64 = get("shop_id").parse().map_err(|_| param_error("shop_id must be a number"))?;
    let expected = sign(&partner.partner_key, partner_id, api_path, timestamp, get("access_token"), shop_id);
    if expected != get("sign") {
        return Err(Refusal(StatusCode::FORBIDDEN, "error_sign", "Wrong sign.".into()));
    }
    if (now_s() - timestamp).abs() > TIMESTAMP_VALID_S {
        return Err(Refusal(StatusCode::FORBIDDEN, "error_timestamp", "Your timestamp has expired.".into()));
    }
    let Some(shop) = cfg.shopee.shops.iter().find(|s| s.shop_id == shop_id && s.partner_id == partner_id) else {
        return Err(Refusal(StatusCode::FORBIDDEN, "error_shop_id", "Invalid shop_id.".into()));
    };
    crate::shopee_auth::check_access(state, shop_id, &shop.access_token, get("access_token"))?;
    if state.spend(Platform::Shopee, &format!("shopee:{shop_id}"), |left| left).is_err() {
        return Err(Refusal(StatusCode::TOO_MANY_REQUESTS, "error_too_many_request", "Too many requests, please slow down.".into()));
    }
    Ok(shop_id)
}

async fn answer(
    state: &SimState,
    api_path: &str,
    query: Option<&str>,
    handler: impl FnOnce(&SimState, u64, &HashMap<String, String>) -> Result<Value, Refusal>,
) -> Response {
    let cfg = state.config();
    if let Some(kind) = state.begin(Platform::Shopee) {
        return fault_response(kind, Duration::from_millis(cfg.timeout_hold_ms)).await;
    }
    let q = query_map(query);
    match authenticate(state, api_path, &q).and_then(|shop_id| handler(state, shop_id, &q)) {
        Ok(v) => {
            state.count(Platform::Shopee, |s| s.ok += 1);
            envelope(StatusCode::OK, "", "", v)
        }
        Err(Refusal(status, code, message)) => {
            // Throttles were counted where the budget was spent.
            if status != StatusCode::TOO_MANY_REQUESTS {
                state.count(Platform::Shopee, |s| s.rejected += 1);
            }
            envelope(status, code, &message, Value::Null)
        }
    }
}

/// `GET /shopee/api/v2/{module}/{call}` and `POST` for `update_stock`.
pub async fn api(
    State(state): State<Arc<SimState>>,
    Path((module, call)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let api_path = format!("/api/v2/{module}/{call}");
    match (module.as_str(), call.as_str()) {
        ("order", "get_order_list") => answer(&state, &api_path, query.as_deref(), order_list).await,
        ("order", "get_order_detail") => answer(&state, &api_path, query.as_deref(), order_detail).await,
        ("product", "get_item_list") => answer(&state, &api_path, query.as_deref(), item_list).await,
        ("product", "get_model_list") => answer(&state, &api_path, query.as_deref(), model_list).await,
        ("product", "get_item_base_info") => answer(&state, &api_path, query.as_deref(), item_base_info).await,
        ("product", "update_stock") => {
            answer(&state, &api_path, query.as_deref(), |s, shop, _| update_stock(s, shop, &body)).await
        }
        _ => envelope(StatusCode::NOT_FOUND, "error_not_found", "Wrong api path.", Value::Null),
    }
}

/// `POST /shopee/api/v2/auth/access_token/get`: a refresh (see shopee_auth.rs).
pub async fn refresh_token(State(state): State<Arc<SimState>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let delay = state.config().shopee.tokens.map_or(0, |t| t.answer_delay_ms);
    token_call(&state, |s| crate::shopee_auth::refresh(s, &query_map(query.as_deref()), &body), delay).await
}

/// `POST /shopee/api/v2/auth/token/get`: a consent page's code becomes the shop's first
/// tokens (see shopee_auth.rs).
pub async fn code_token(State(state): State<Arc<SimState>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    token_call(&state, |s| crate::shopee_auth::exchange(s, &query_map(query.as_deref()), &body), 0).await
}

/// A token call's answer: its fields at the top level beside `error`, as Shopee's token
/// calls answer, after `delay_ms` (a held answer) once it has taken effect.
async fn token_call(state: &SimState, call: impl FnOnce(&SimState) -> Result<Value, Refusal>, delay_ms: u64) -> Response {
    if let Some(kind) = state.begin(Platform::Shopee) {
        return fault_response(kind, Duration::from_millis(state.config().timeout_hold_ms)).await;
    }
    match call(state) {
        Ok(mut v) => {
            if delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            state.count(Platform::Shopee, |s| s.ok += 1);
            v["error"] = json!("");
            v["message"] = json!("");
            v["request_id"] = json!(format!("sim-{}", crate::now_ms()));
            (StatusCode::OK, Json(v)).into_response()
        }
        Err(Refusal(status, code, message)) => {
            state.count(Platform::Shopee, |s| s.rejected += 1);
            envelope(status, code, &message, Value::Null)
        }
    }
}

/// `GET /shopee/api/v2/shop/auth_partner`: the consent page, where the merchant logged
/// in authorizes the app at once: a redirect back with `code` and `shop_id`.
pub async fn consent_page(State(state): State<Arc<SimState>>, RawQuery(query): RawQuery) -> Response {
    match crate::shopee_auth::consent(&state, &query_map(query.as_deref())) {
        Ok(back) => (StatusCode::FOUND, [(axum::http::header::LOCATION, back)]).into_response(),
        Err(Refusal(status, code, message)) => {
            state.count(Platform::Shopee, |s| s.rejected += 1);
            envelope(status, code, &message, Value::Null)
        }
    }
}

fn number<T: std::str::FromStr>(q: &HashMap<String, String>, key: &str) -> Result<T, Refusal> {
    q.get(key)
        .ok_or_else(|| param_error(format!("{key} is required")))?
        .parse()
        .map_err(|_| param_error(format!("{key} must be a number")))
}

#[derive(serde::Serialize, Deserialize)]
struct Cursor {
    after_updated: i64,
    after_id: u64,
}

fn order_list(state: &SimState, shop_id: u64, q: &HashMap<String, String>) -> Result<Value, Refusal> {
    match q.get("time_range_field").map(String::as_str) {
        Some("update_time") | Some("create_time") => {}
        _ => return Err(param_error("time_range_field must be create_time or update_time")),
    }
    let by_update = q.get("time_range_field").map(String::as_str) == Some("update_time");
    let from: i64 = number(q, "time_from")?;
    let to: i64 = number(q, "time_to")?;
    if to < from || to - from > MAX_WINDOW_S {
        return Err(param_error("time_to must be after time_from and within 15 days of it"));
    }
    let page_size: usize = number(q, "page_size")?;
    if !(1..=100).contains(&page_size) {
        return Err(param_error("page_size must be between 1 and 100"));
    }
    let after = match q.get("cursor").map(String::as_str) {
        None | Some("") => Cursor { after_updated: i64::MIN, after_id: 0 },
        Some(c) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice::<Cursor>(&b).ok())
            .ok_or_else(|| param_error("cursor is invalid"))?,
    };
    let key = |o: &SimOrder| if by_update { o.updated_s } else { o.created_s };
    let mut matching: Vec<SimOrder> = state
        .orders(Platform::Shopee, &shop_id.to_string())
        .into_iter()
        .filter(|o| key(o) >= from && key(o) <= to)
        .filter(|o| (key(o), o.id) > (after.after_updated, after.after_id))
        .collect();
    matching.sort_by_key(|o| (key(o), o.id));
    let more = matching.len() > page_size;
    matching.truncate(page_size);
    let next_cursor = match (more, matching.last()) {
        (true, Some(last)) => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Cursor { after_updated: key(last), after_id: last.id }).unwrap_or_default(),
        ),
        _ => String::new(),
    };
    let with_status = q.get("response_optional_fields").is_some_and(|f| f.split(',').any(|f| f == "order_status"));
    let list: Vec<Value> = matching
        .iter()
        .map(|o| {
            let mut v = json!({ "order_sn": order_sn(o) });
            if with_status {
                v["order_status"] = json!(STATUSES[o.status].0);
            }
            v
        })
        .collect();
    Ok(json!({ "more": more, "next_cursor": next_cursor, "order_list": list }))
}

/// Shopee amounts are decimal numbers in currency units.
fn amount(minor: i64) -> Value {
    json!(minor as f64 / 100.0)
}

fn render_detail(o: &SimOrder) -> Value {
    json!({
        "order_sn": order_sn(o),
        "order_status": STATUSES[o.status].0,
        "create_time": o.created_s,
        "update_time": o.updated_s,
        "currency": o.currency,
        "total_amount": amount(o.total_minor()),
        "buyer_username": o.buyer_name.to_lowercase().replace(' ', "_"),
        "recipient_address": { "name": o.buyer_name, "phone": o.buyer_phone },
        "item_list": o.lines.iter().map(|l| json!({
            "order_item_id": l.line_id,
            "item_name": l.title,
            "model_sku": l.sku,
            "model_quantity_purchased": l.quantity,
            "model_discounted_price": amount(l.unit_price_minor),
        })).collect::<Vec<_>>(),
    })
}

fn order_detail(state: &SimState, shop_id: u64, q: &HashMap<String, String>) -> Result<Value, Refusal> {
    let list = q.get("order_sn_list").filter(|v| !v.is_empty()).ok_or_else(|| param_error("order_sn_list is required"))?;
    let wanted: Vec<&str> = list.split(',').collect();
    if wanted.len() > MAX_DETAIL {
        return Err(param_error(format!("order_sn_list takes at most {MAX_DETAIL} order numbers")));
    }
    let orders: Vec<Value> = state
        .orders(Platform::Shopee, &shop_id.to_string())
        .iter()
        .filter(|o| wanted.contains(&order_sn(o).as_str()))
        .map(render_detail)
        .collect();
    Ok(json!({ "order_list": orders }))
}

/// `get_item_list`: item ids by offset, as Shopee pages its catalogue.
fn item_list(state: &SimState, shop_id: u64, q: &HashMap<String, String>) -> Result<Value, Refusal> {
    let offset: usize = number(q, "offset")?;
    let page_size: usize = number(q, "page_size")?;
    if !(1..=100).contains(&page_size) {
        return Err(param_error("page_size must be between 1 and 100"));
    }
    let mut items: Vec<u64> = state.stock(Platform::Shopee, &shop_id.to_string()).iter().map(|i| i.product_id).collect();
    items.dedup();
    let page: Vec<Value> = items.iter().skip(offset).take(page_size).map(|id| json!({ "item_id": id, "item_status": "NORMAL" })).collect();
    let has_next = offset + page.len() < items.len();
    Ok(json!({ "item": page, "total_count": items.len(), "has_next_page": has_next, "next_offset": offset + page.len() }))
}

/// A price in currency units, as Shopee's JSON numbers carry it.
fn decimal(minor: i64) -> f64 {
    minor as f64 / 100.0
}

/// At most this many items per `get_item_base_info`.
const MAX_BASE_INFO: usize = 50;

/// `get_item_base_info`: name, SKU, status and whether it has models, for up to 50 items.
fn item_base_info(state: &SimState, shop_id: u64, q: &HashMap<String, String>) -> Result<Value, Refusal> {
    let list = q.get("item_id_list").filter(|v| !v.is_empty()).ok_or_else(|| param_error("item_id_list is required"))?;
    let wanted: Vec<u64> = list.split(',').map(|v| v.trim().parse::<u64>()).collect::<Result<_, _>>().map_err(|_| param_error("item_id_list must be item ids"))?;
    if wanted.len() > MAX_BASE_INFO {
        return Err(param_error(format!("item_id_list takes at most {MAX_BASE_INFO} items")));
    }
    let stock = state.stock(Platform::Shopee, &shop_id.to_string());
    let items: Vec<Value> = wanted
        .iter()
        .filter_map(|id| stock.iter().find(|i| i.product_id == *id))
        .map(|i| json!({
            "item_id": i.product_id,
            "item_name": i.title.split(" (").next().unwrap_or_default(),
            "item_status": "NORMAL",
            "item_sku": "",
            "has_model": true,
        }))
        .collect();
    Ok(json!({ "item_list": items }))
}

/// `get_model_list`: an item's models (variants) with their SKU codes and stock.
fn model_list(state: &SimState, shop_id: u64, q: &HashMap<String, String>) -> Result<Value, Refusal> {
    let item_id: u64 = number(q, "item_id")?;
    let models: Vec<Value> = state
        .stock(Platform::Shopee, &shop_id.to_string())
        .iter()
        .filter(|i| i.product_id == item_id)
        .map(|i| json!({
            "model_id": i.variant_id,
            "model_sku": i.sku,
            "model_name": i.title.rsplit_once('(').map(|(_, t)| t.trim_end_matches(')')).unwrap_or(""),
            "price_info": [{ "currency": Platform::Shopee.currency(), "current_price": decimal(i.price_minor), "original_price": decimal(i.price_minor) }],
            "stock_info_v2": {
                "summary_info": { "total_reserved_stock": 0, "total_available_stock": i.quantity },
                "seller_stock": [{ "location_id": "SGZ", "stock": i.quantity }],
            },
        }))
        .collect();
    if models.is_empty() {
        return Err(param_error(format!("item {item_id} does not exist")));
    }
    Ok(json!({ "model": models }))
}

#[derive(Deserialize)]
struct UpdateStock {
    item_id: u64,
    stock_list: Vec<ModelStock>,
}

#[derive(Deserialize)]
struct ModelStock {
    model_id: u64,
    seller_stock: Vec<SellerStock>,
}

#[derive(Deserialize)]
struct SellerStock {
    stock: i64,
}

/// `POST update_stock`: absolute seller stock per model; one answer per model in
/// `success_list` or `failure_list`.
fn update_stock(state: &SimState, shop_id: u64, body: &[u8]) -> Result<Value, Refusal> {
    let req: UpdateStock = serde_json::from_slice(body).map_err(|e| param_error(format!("body: {e}")))?;
    let shop = shop_id.to_string();
    let mut success = Vec::new();
    let mut failure = Vec::new();
    for m in req.stock_list {
        let Some(stock) = m.seller_stock.first().map(|s| s.stock) else {
            failure.push(json!({ "model_id": m.model_id, "failed_reason": "seller_stock is empty" }));
            continue;
        };
        let Ok(stock) = u32::try_from(stock) else {
            failure.push(json!({ "model_id": m.model_id, "failed_reason": "stock must not be negative" }));
            continue;
        };
        let found = |i: &crate::inventory::StockItem| i.product_id == req.item_id && i.variant_id == m.model_id;
        match state.set_stock(Platform::Shopee, &shop, found, |_| stock) {
            Some(item) => success.push(json!({ "model_id": item.variant_id, "stock": item.quantity })),
            None => failure.push(json!({ "model_id": m.model_id, "failed_reason": "model does not exist" })),
        }
    }
    Ok(json!({ "success_list": success, "failure_list": failure }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_matches_reference_example() {
        // platforms.md §7.1: partner_key test_secret, base
        // 2001887/api/v2/order/get_order_list1704110400tok14701711.
        assert_eq!(
            sign("test_secret", 2001887, "/api/v2/order/get_order_list", 1704110400, "tok", 14701711),
            "eb67a204df271bf4d8ba6d5ec60f2c5a6f956468952fd596cb953afa18c4a5e1"
        );
    }
}
