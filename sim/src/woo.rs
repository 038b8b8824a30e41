//! A WooCommerce-REST-like long-tail store under `/woo/{site}/wp-json/wc/v3/`: HTTP Basic
//! auth with the consumer key and secret, `orders?modified_after&modified_before&
//! dates_are_gmt=true&orderby=modified&order=asc&page&per_page` with page numbers and the
//! `X-WP-Total` / `X-WP-TotalPages` headers (per_page at most 100), prices as decimal
//! strings, `products?sku=a,b` and `products/batch` for stock (at most 100 updates). Its
//! quirks are the ones small self-hosted shops have: the host's WAF answers HTTP 429 with
//! `Retry-After` in whole seconds, and a PHP fatal error is an HTML page with HTTP 500.
//! Webhooks carry `X-WC-Webhook-Signature` = base64 HMAC-SHA256(webhook secret, body).

use crate::data::{minor_to_decimal, SimOrder};
use crate::{fault_response, now_s, Platform, SimState};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// (WooCommerce order status, normalized berth status)
pub const STATUSES: &[(&str, &str)] = &[
    ("pending", "unpaid"),
    ("processing", "paid"),
    ("on-hold", "other"),
    ("completed", "completed"),
    ("cancelled", "cancelled"),
    ("refunded", "refunded"),
];

const MAX_PER_PAGE: usize = 100;
const MAX_BATCH: usize = 100;

pub fn normalized_status(order: &SimOrder) -> &'static str {
    STATUSES[order.status].1
}

/// `X-WC-Webhook-Signature`: base64 HMAC-SHA256(secret, raw body).
pub fn webhook_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn gmt(s: i64) -> String {
    Utc.timestamp_opt(s, 0).single().map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string()).unwrap_or_default()
}

/// WooCommerce's ISO 8601 without an offset (`dates_are_gmt=true` makes it GMT), or with one.
fn parse_time(v: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp())
        .ok()
        .or_else(|| NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S").ok().map(|t| t.and_utc().timestamp()))
}

pub fn render(o: &SimOrder) -> Value {
    let (first, last) = o.buyer_name.split_once(' ').unwrap_or((&o.buyer_name, ""));
    json!({
        "id": o.id,
        "number": o.id.to_string(),
        "status": STATUSES[o.status].0,
        "currency": o.currency,
        "date_created_gmt": gmt(o.created_s),
        "date_modified_gmt": gmt(o.updated_s),
        "total": minor_to_decimal(o.total_minor()),
        "billing": { "first_name": first, "last_name": last, "phone": o.buyer_phone },
        "line_items": o.lines.iter().map(|l| json!({
            "id": l.line_id,
            "name": l.title,
            "sku": l.sku,
            "quantity": l.quantity,
            "price": l.unit_price_minor as f64 / 100.0,
            "total": minor_to_decimal(l.unit_price_minor * l.quantity as i64),
        })).collect::<Vec<_>>(),
    })
}

/// A webhook delivery for `order.updated` as WooCommerce sends it: (headers, body).
pub fn order_webhook(secret: &str, site_url: &str, o: &SimOrder) -> (Vec<(String, String)>, Vec<u8>) {
    let body = serde_json::to_vec(&render(o)).unwrap_or_default();
    let headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("x-wc-webhook-topic".to_string(), "order.updated".to_string()),
        ("x-wc-webhook-resource".to_string(), "order".to_string()),
        ("x-wc-webhook-event".to_string(), "updated".to_string()),
        ("x-wc-webhook-source".to_string(), format!("{site_url}/")),
        ("x-wc-webhook-signature".to_string(), webhook_signature(secret, &body)),
    ];
    (headers, body)
}

fn rest_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "code": code, "message": message, "data": { "status": status.as_u16() } }))).into_response()
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Faults, Basic auth and the WAF's per-site budget, then the handler.
async fn gated(state: &SimState, site: &str, headers: &HeaderMap, handler: impl FnOnce() -> Response) -> Response {
    let cfg = state.config();
    let Some(site_cfg) = cfg.woo.sites.iter().find(|s| s.name == site) else {
        return (StatusCode::NOT_FOUND, "<html><body><h1>Not Found</h1></body></html>").into_response();
    };
    if let Some(kind) = state.begin(Platform::Woo) {
        return match kind {
            // A PHP fatal error: WordPress's HTML error page.
            crate::faults::FaultKind::Http500 => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "<html><body><p>There has been a critical error on this website.</p></body></html>",
            )
                .into_response(),
            other => fault_response(other, Duration::from_millis(cfg.timeout_hold_ms)).await,
        };
    }
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", site_cfg.consumer_key, site_cfg.consumer_secret))
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        state.count(Platform::Woo, |s| s.rejected += 1);
        return rest_error(StatusCode::UNAUTHORIZED, "woocommerce_rest_authentication_error", "Consumer key is invalid.");
    }
    // The WAF tells whole seconds.
    let whole_seconds = |left: Duration| Duration::from_secs(left.as_secs_f64().ceil().max(1.0) as u64);
    if let Err(wait) = state.spend(Platform::Woo, &format!("woo:{site}"), whole_seconds) {
        let mut resp = (StatusCode::TOO_MANY_REQUESTS, "<html><body>429 Too Many Requests</body></html>").into_response();
        resp.headers_mut().insert("retry-after", hv(&wait.as_secs().to_string()));
        return resp;
    }
    let resp = handler();
    if resp.status().is_success() {
        state.count(Platform::Woo, |s| s.ok += 1);
    } else {
        state.count(Platform::Woo, |s| s.rejected += 1);
    }
    resp
}

pub async fn orders(
    State(state): State<Arc<SimState>>,
    Path(site): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    gated(&state, &site, &headers, || order_page(&state, &site, &q)).await
}

fn order_page(state: &SimState, site: &str, q: &HashMap<String, String>) -> Response {
    let bad = |param: &str, msg: &str| rest_error(StatusCode::BAD_REQUEST, "rest_invalid_param", &format!("Invalid parameter(s): {param} ({msg})"));
    let per_page = match q.get("per_page").map(|v| v.parse::<usize>()) {
        None => 10,
        Some(Ok(n)) if (1..=MAX_PER_PAGE).contains(&n) => n,
        Some(_) => return bad("per_page", "must be between 1 and 100"),
    };
    let page = match q.get("page").map(|v| v.parse::<usize>()) {
        None => 1,
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => return bad("page", "must be 1 or more"),
    };
    let gmt_dates = q.get("dates_are_gmt").map(String::as_str) == Some("true");
    let bound = |name: &str| -> Result<Option<i64>, Response> {
        match q.get(name) {
            None => Ok(None),
            Some(v) => parse_time(v).map(Some).ok_or_else(|| bad(name, "must be an ISO 8601 date")),
        }
    };
    let after = match bound("modified_after") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let before = match bound("modified_before") {
        Ok(v) => v,
        Err(r) => return r,
    };
    if (after.is_some() || before.is_some()) && !gmt_dates {
        // The site's local time is what WooCommerce assumes without the flag; the
        // simulated site runs on UTC+2, so a GMT-minded client that forgets it is 2 h off.
        let shift = 2 * 3600;
        return order_list(state, site, after.map(|a| a - shift), before.map(|b| b - shift), q, page, per_page);
    }
    order_list(state, site, after, before, q, page, per_page)
}

fn order_list(
    state: &SimState,
    site: &str,
    after: Option<i64>,
    before: Option<i64>,
    q: &HashMap<String, String>,
    page: usize,
    per_page: usize,
) -> Response {
    let mut matching: Vec<SimOrder> = state
        .orders(Platform::Woo, site)
        .into_iter()
        .filter(|o| after.is_none_or(|a| o.updated_s > a))
        .filter(|o| before.is_none_or(|b| o.updated_s < b))
        .collect();
    let by_modified = q.get("orderby").map(String::as_str) == Some("modified");
    if by_modified {
        matching.sort_by_key(|o| (o.updated_s, o.id));
    } else {
        matching.sort_by_key(|o| (o.created_s, o.id));
    }
    if q.get("order").map(String::as_str) != Some("asc") {
        matching.reverse();
    }
    let total = matching.len();
    let pages = total.div_ceil(per_page);
    let body: Vec<Value> = matching.iter().skip((page - 1) * per_page).take(per_page).map(render).collect();
    let mut resp = Json(Value::Array(body)).into_response();
    resp.headers_mut().insert("x-wp-total", hv(&total.to_string()));
    resp.headers_mut().insert("x-wp-totalpages", hv(&pages.to_string()));
    resp
}

/// `GET products?sku=a,b,c`: simple products carrying the seller's SKU codes.
pub async fn products(
    State(state): State<Arc<SimState>>,
    Path(site): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    gated(&state, &site, &headers, || {
        let wanted: Option<Vec<&str>> = q.get("sku").map(|s| s.split(',').collect());
        // Paged by number: `per_page` (1..=100, default 10) and `page`, with the totals
        // in `X-WP-Total` and `X-WP-TotalPages`.
        let per_page = match q.get("per_page").map(|v| v.parse::<usize>()) {
            None => 10,
            Some(Ok(n)) if (1..=MAX_PER_PAGE).contains(&n) => n,
            Some(_) => return rest_error(StatusCode::BAD_REQUEST, "rest_invalid_param", "Invalid parameter(s): per_page"),
        };
        let page = match q.get("page").map(|v| v.parse::<usize>()) {
            None => 1,
            Some(Ok(n)) if n >= 1 => n,
            Some(_) => return rest_error(StatusCode::BAD_REQUEST, "rest_invalid_param", "Invalid parameter(s): page"),
        };
        let mut matching: Vec<crate::inventory::StockItem> =
            state.stock(Platform::Woo, &site).into_iter().filter(|i| wanted.as_ref().is_none_or(|w| w.contains(&i.sku.as_str()))).collect();
        matching.sort_by_key(|i| i.variant_id);
        let total = matching.len();
        let items: Vec<Value> = matching
            .iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .map(|i| {
                let price = crate::data::minor_to_decimal(i.price_minor);
                json!({ "id": i.variant_id, "name": i.title, "sku": i.sku, "type": "simple", "price": price, "regular_price": price, "manage_stock": true, "stock_quantity": i.quantity })
            })
            .collect();
        let mut resp = Json(Value::Array(items)).into_response();
        let h = resp.headers_mut();
        h.insert("x-wp-total", total.into());
        h.insert("x-wp-totalpages", total.div_ceil(per_page).into());
        resp
    })
    .await
}

/// `GET data/currencies/current`: the store's currency.
pub async fn current_currency(State(state): State<Arc<SimState>>, Path(site): Path<String>, headers: HeaderMap) -> Response {
    gated(&state, &site, &headers, || Json(json!({ "code": Platform::Woo.currency(), "name": "Euro", "symbol": "&euro;" })).into_response()).await
}

#[derive(Deserialize)]
struct Batch {
    #[serde(default)]
    update: Vec<Value>,
}

/// `POST products/batch` with `update: [{id, stock_quantity}]`: each entry answers with
/// the product or with an `error` object, in order.
pub async fn products_batch(
    State(state): State<Arc<SimState>>,
    Path(site): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    gated(&state, &site, &headers, || {
        let batch: Batch = match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return rest_error(StatusCode::BAD_REQUEST, "rest_invalid_json", &format!("Invalid JSON body: {e}")),
        };
        if batch.update.len() > MAX_BATCH {
            return rest_error(StatusCode::PAYLOAD_TOO_LARGE, "woocommerce_rest_request_entity_too_large", "Unable to accept more than 100 items for this request.");
        }
        let answers: Vec<Value> = batch
            .update
            .iter()
            .map(|u| {
                let id = u.get("id").and_then(Value::as_u64).unwrap_or(0);
                let Some(quantity) = u.get("stock_quantity").and_then(Value::as_i64).and_then(|q| u32::try_from(q).ok()) else {
                    return json!({ "id": id, "error": { "code": "rest_invalid_param", "message": "stock_quantity must be a whole number 0 or more", "data": { "status": 400 } } });
                };
                match state.set_stock(Platform::Woo, &site, |i| i.variant_id == id, |_| quantity) {
                    Some(item) => json!({ "id": item.variant_id, "sku": item.sku, "stock_quantity": item.quantity, "date_modified_gmt": gmt(now_s()) }),
                    None => json!({ "id": id, "error": { "code": "woocommerce_rest_product_invalid_id", "message": "Invalid ID.", "data": { "status": 404 } } }),
                }
            })
            .collect();
        Json(json!({ "update": answers })).into_response()
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_with_and_without_offset() {
        assert_eq!(parse_time("2024-01-01T00:00:00"), Some(1_704_067_200));
        assert_eq!(parse_time("2024-01-01T02:00:00+02:00"), Some(1_704_067_200));
        assert_eq!(gmt(1_704_067_200), "2024-01-01T00:00:00");
    }

    #[test]
    fn signature_is_base64_hmac_sha256() {
        // RFC 4231 test case 2, base64 instead of hex.
        assert_eq!(webhook_signature("Jefe", b"what do ya want for nothing?"), "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM=");
    }
}
