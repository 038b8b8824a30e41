//! A Taobao-TOP-like router (`/taobao/router/rest`): system params, MD5 / HMAC-MD5 /
//! HMAC-SHA256 signatures over sorted params checked strictly, timestamps in GMT+8 with
//! a skew limit, `taobao.trades.sold.increment.get` with a window of at most one day,
//! newest-first `page_no` paging, and flow control answered with HTTP 200 and code 7.

use crate::data::{minor_to_decimal, SimOrder};
use crate::{fault_response, now_s, Platform, SimState};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{FixedOffset, NaiveDateTime, TimeZone};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// (TOP trade status, normalized berth status)
pub const STATUSES: &[(&str, &str)] = &[
    ("WAIT_BUYER_PAY", "unpaid"),
    ("WAIT_SELLER_SEND_GOODS", "paid"),
    ("SELLER_CONSIGNED_PART", "partially-shipped"),
    ("WAIT_BUYER_CONFIRM_GOODS", "shipped"),
    ("TRADE_BUYER_SIGNED", "delivered"),
    ("TRADE_FINISHED", "completed"),
    ("TRADE_CLOSED", "cancelled"),
    ("TRADE_CLOSED_BY_TAOBAO", "cancelled"),
    ("PAID_FORBID_CONSIGN", "other"),
];

const GMT8: i32 = 8 * 3600;
const MAX_WINDOW_S: i64 = 86_400;

pub fn normalized_status(order: &SimOrder) -> &'static str {
    STATUSES[order.status].1
}

/// TOP's signature over every param but `sign`, empty values skipped, sorted by key:
/// `md5` = MD5(secret + k1v1k2v2… + secret), `hmac` = HMAC-MD5(secret, k1v1…),
/// `hmac-sha256` = HMAC-SHA256(secret, k1v1…); upper-case hex. `None` for an unknown method.
pub fn sign(params: &BTreeMap<String, String>, secret: &str, method: &str) -> Option<String> {
    let mut payload = String::new();
    for (k, v) in params {
        if k != "sign" && !v.is_empty() {
            payload.push_str(k);
            payload.push_str(v);
        }
    }
    let digest = match method {
        "md5" => Md5::digest(format!("{secret}{payload}{secret}").as_bytes()).to_vec(),
        "hmac" => {
            let mut mac = Hmac::<Md5>::new_from_slice(secret.as_bytes()).ok()?;
            mac.update(payload.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        "hmac-sha256" => {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
            mac.update(payload.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        _ => return None,
    };
    Some(hex::encode_upper(digest))
}

pub fn format_time(s: i64) -> String {
    let tz = FixedOffset::east_opt(GMT8).expect("valid offset");
    tz.timestamp_opt(s, 0)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

pub fn parse_time(v: &str) -> Option<i64> {
    let naive = NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S").ok()?;
    let tz = FixedOffset::east_opt(GMT8)?;
    tz.from_local_datetime(&naive).single().map(|t| t.timestamp())
}

pub fn render(o: &SimOrder) -> Value {
    json!({
        "tid": o.id,
        "status": STATUSES[o.status].0,
        "created": format_time(o.created_s),
        "modified": format_time(o.updated_s),
        "payment": minor_to_decimal(o.total_minor()),
        "receiver_name": o.buyer_name,
        "receiver_mobile": o.buyer_phone,
        "orders": { "order": o.lines.iter().map(|l| json!({
            "oid": l.line_id,
            "outer_sku_id": l.sku,
            "title": l.title,
            "num": l.quantity,
            "price": minor_to_decimal(l.unit_price_minor),
        })).collect::<Vec<_>>() },
    })
}

fn error(code: u32, msg: &str, sub_code: Option<&str>, sub_msg: Option<&str>) -> Response {
    let mut e = json!({ "code": code, "msg": msg, "request_id": request_id() });
    if let Some(sc) = sub_code {
        e["sub_code"] = json!(sc);
    }
    if let Some(sm) = sub_msg {
        e["sub_msg"] = json!(sm);
    }
    // TOP answers errors with HTTP 200.
    Json(json!({ "error_response": e })).into_response()
}

fn request_id() -> String {
    format!("sim{:x}", now_s())
}

fn parse_params(query: Option<&str>, body: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let mut params = BTreeMap::new();
    let pairs = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .chain(url::form_urlencoded::parse(body));
    for (k, v) in pairs {
        if params.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("parameter {k} given twice"));
        }
    }
    Ok(params)
}

pub async fn router(State(state): State<Arc<SimState>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let cfg = state.config();
    if let Some(kind) = state.begin(Platform::Taobao) {
        return fault_response(kind, Duration::from_millis(cfg.timeout_hold_ms)).await;
    }
    match handle(&state, query.as_deref(), &body) {
        Ok(v) => {
            state.count(Platform::Taobao, |s| s.ok += 1);
            Json(v).into_response()
        }
        Err(Refusal::Throttled(left)) => {
            state.count(Platform::Taobao, |s| s.throttled += 1);
            let secs = left.as_secs_f64().ceil().max(1.0) as u64;
            error(
                7,
                "App Call Limited",
                Some("accesscontrol.limited-by-app-access-count"),
                Some(&format!("This ban will last for {secs} more seconds")),
            )
        }
        Err(Refusal::Error(code, msg, sub_code, sub_msg)) => {
            state.count(Platform::Taobao, |s| s.rejected += 1);
            error(code, msg, sub_code, sub_msg.as_deref())
        }
    }
}

enum Refusal {
    Throttled(Duration),
    Error(u32, &'static str, Option<&'static str>, Option<String>),
}

fn invalid(sub_code: &'static str, sub_msg: String) -> Refusal {
    Refusal::Error(41, "Invalid arguments", Some(sub_code), Some(sub_msg))
}

fn handle(state: &SimState, query: Option<&str>, body: &[u8]) -> Result<Value, Refusal> {
    let cfg = state.config();
    let params = parse_params(query, body).map_err(|m| invalid("isv.invalid-parameter", m))?;
    for required in ["method", "app_key", "timestamp", "v", "sign_method", "sign", "format"] {
        if params.get(required).is_none_or(|v| v.is_empty()) {
            return Err(Refusal::Error(40, "Missing required arguments", None, Some(format!("missing {required}"))));
        }
    }
    let p = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    let app = cfg
        .taobao
        .apps
        .iter()
        .find(|a| a.app_key == p("app_key"))
        .ok_or(Refusal::Error(29, "Invalid app Key", None, None))?;
    if p("format") != "json" || p("v") != "2.0" {
        return Err(invalid("isv.invalid-parameter", "format must be json and v must be 2.0".into()));
    }
    let expected = sign(&params, &app.secret, p("sign_method")).ok_or_else(|| {
        invalid("isv.invalid-parameter", format!("unknown sign_method {}", p("sign_method")))
    })?;
    if expected != p("sign") {
        return Err(Refusal::Error(25, "Invalid signature", None, None));
    }
    let ts = parse_time(p("timestamp"))
        .ok_or_else(|| invalid("isv.invalid-parameter", "timestamp must be yyyy-MM-dd HH:mm:ss".into()))?;
    if (ts - now_s()).abs() > cfg.taobao.max_skew_secs {
        return Err(invalid("isv.invalid-timestamp", "timestamp is too far from server time".into()));
    }
    {
        let mut inner = state.lock();
        if let Some(window) = inner.windows.get_mut(&app.app_key) {
            window.take(Instant::now()).map_err(Refusal::Throttled)?;
        }
    }
    let shop = cfg
        .taobao
        .shops
        .iter()
        .find(|s| s.app_key == app.app_key && Some(s.session.as_str()) == params.get("session").map(String::as_str))
        .ok_or(Refusal::Error(27, "Invalid session", Some("session-expired"), None))?;
    match p("method") {
        "taobao.trades.sold.increment.get" => increment_get(state, &shop.nick, &params),
        "taobao.skus.custom.get" => skus_custom_get(state, &shop.nick, &params),
        "taobao.item.quantity.update" => item_quantity_update(state, &shop.nick, &params),
        "taobao.items.onsale.get" => items_onsale_get(state, &shop.nick, &params),
        "taobao.items.seller.list.get" => items_seller_list_get(state, &shop.nick, &params),
        _ => Err(Refusal::Error(22, "Invalid method", None, None)),
    }
}

fn increment_get(state: &SimState, shop: &str, params: &BTreeMap<String, String>) -> Result<Value, Refusal> {
    let p = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    if p("fields").is_empty() {
        return Err(Refusal::Error(40, "Missing required arguments", None, Some("missing fields".into())));
    }
    let start = parse_time(p("start_modified"))
        .ok_or_else(|| invalid("isv.invalid-parameter", "start_modified must be yyyy-MM-dd HH:mm:ss".into()))?;
    let end = parse_time(p("end_modified"))
        .ok_or_else(|| invalid("isv.invalid-parameter", "end_modified must be yyyy-MM-dd HH:mm:ss".into()))?;
    if end < start || end - start > MAX_WINDOW_S {
        return Err(invalid(
            "isv.invalid-parameter",
            "end_modified must be after start_modified and within one day of it".into(),
        ));
    }
    let page_no: usize = match p("page_no") {
        "" => 1,
        v => v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| invalid("isv.invalid-parameter", "page_no must be >= 1".into()))?,
    };
    let page_size: usize = match p("page_size") {
        "" => 40,
        v => v
            .parse()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| invalid("isv.invalid-parameter", "page_size must be 1..100".into()))?,
    };
    let mut matching: Vec<SimOrder> = state
        .orders(Platform::Taobao, shop)
        .into_iter()
        .filter(|o| o.updated_s >= start && o.updated_s <= end)
        .collect();
    // Newest first, as TOP returns them.
    matching.sort_by_key(|o| std::cmp::Reverse((o.updated_s, o.id)));
    let total = matching.len();
    let page: Vec<Value> = matching.iter().skip((page_no - 1) * page_size).take(page_size).map(render).collect();
    let mut resp = json!({ "trades": { "trade": page }, "request_id": request_id() });
    if p("use_has_next") == "true" {
        resp["has_next"] = json!(page_no * page_size < total);
    } else {
        resp["total_results"] = json!(total);
    }
    Ok(json!({ "trades_sold_increment_get_response": resp }))
}

/// `taobao.skus.custom.get`: the SKUs whose merchant code (`outer_id`) is given.
fn skus_custom_get(state: &SimState, shop: &str, params: &BTreeMap<String, String>) -> Result<Value, Refusal> {
    let outer_id = params.get("outer_id").filter(|v| !v.is_empty()).ok_or_else(|| {
        Refusal::Error(40, "Missing required arguments", None, Some("missing outer_id".into()))
    })?;
    if params.get("fields").is_none_or(|f| f.is_empty()) {
        return Err(Refusal::Error(40, "Missing required arguments", None, Some("missing fields".into())));
    }
    let wanted: Vec<&str> = outer_id.split(',').collect();
    let skus: Vec<Value> = state
        .stock(Platform::Taobao, shop)
        .into_iter()
        .filter(|i| wanted.contains(&i.sku.as_str()))
        .map(|i| json!({ "sku_id": i.variant_id, "num_iid": i.product_id, "outer_id": i.sku, "quantity": i.quantity }))
        .collect();
    let mut resp = json!({ "request_id": request_id() });
    if !skus.is_empty() {
        resp["skus"] = json!({ "sku": skus });
    }
    Ok(json!({ "skus_custom_get_response": resp }))
}

/// The shop's items (`num_iid`) with their SKUs, by ascending id.
fn items_of(state: &SimState, shop: &str) -> std::collections::BTreeMap<u64, Vec<crate::inventory::StockItem>> {
    let mut items: std::collections::BTreeMap<u64, Vec<crate::inventory::StockItem>> = Default::default();
    for i in state.stock(Platform::Taobao, shop) {
        items.entry(i.product_id).or_default().push(i);
    }
    items.values_mut().for_each(|skus| skus.sort_by_key(|s| s.variant_id));
    items
}

fn yuan(fen: i64) -> String {
    crate::data::minor_to_decimal(fen)
}

/// An item as both listing methods answer it: its title, its lowest SKU's price and the
/// sum of its SKUs' quantities.
fn item_json(id: u64, skus: &[crate::inventory::StockItem]) -> Value {
    json!({
        "num_iid": id,
        "title": skus[0].title.split(" (").next().unwrap_or_default(),
        "price": yuan(skus.iter().map(|s| s.price_minor).min().unwrap_or(0)),
        "num": skus.iter().map(|s| u64::from(s.quantity)).sum::<u64>(),
    })
}

/// `taobao.items.onsale.get`: the items on sale, `page_size` (1..=200, default 40) per
/// page from `page_no`, with `total_results`; an item's `price` is its lowest SKU's and
/// `num` the sum of its SKUs' quantities.
fn items_onsale_get(state: &SimState, shop: &str, params: &BTreeMap<String, String>) -> Result<Value, Refusal> {
    let p = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    if p("fields").is_empty() {
        return Err(Refusal::Error(40, "Missing required arguments", None, Some("missing fields".into())));
    }
    let page_no: usize = match p("page_no") {
        "" => 1,
        v => v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| invalid("isv.invalid-parameter", "page_no must be >= 1".into()))?,
    };
    let page_size: usize = match p("page_size") {
        "" => 40,
        v => v.parse().ok().filter(|n| (1..=200).contains(n)).ok_or_else(|| invalid("isv.invalid-parameter", "page_size must be 1..200".into()))?,
    };
    let items = items_of(state, shop);
    let page: Vec<Value> = items
        .iter()
        .skip((page_no - 1) * page_size)
        .take(page_size)
        .map(|(id, skus)| item_json(*id, skus))
        .collect();
    let mut resp = json!({ "total_results": items.len(), "request_id": request_id() });
    if !page.is_empty() {
        resp["items"] = json!({ "item": page });
    }
    Ok(json!({ "items_onsale_get_response": resp }))
}

/// `taobao.items.seller.list.get`: up to 20 of the seller's items by `num_iids`, with
/// their SKUs (`sku_id`, `outer_id`, `quantity`, `price`, `properties_name`).
fn items_seller_list_get(state: &SimState, shop: &str, params: &BTreeMap<String, String>) -> Result<Value, Refusal> {
    let p = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    if p("fields").is_empty() || p("num_iids").is_empty() {
        return Err(Refusal::Error(40, "Missing required arguments", None, Some("missing fields or num_iids".into())));
    }
    let ids: Vec<u64> = p("num_iids").split(',').map(|v| v.trim().parse::<u64>()).collect::<Result<_, _>>().map_err(|_| invalid("isv.invalid-parameter", "num_iids must be item ids".into()))?;
    if ids.len() > 20 {
        return Err(invalid("isv.invalid-parameter", "num_iids takes at most 20 ids".into()));
    }
    let items = items_of(state, shop);
    let found: Vec<Value> = ids
        .iter()
        .filter_map(|id| items.get(id).map(|skus| (id, skus)))
        .map(|(id, skus)| {
            let mut item = item_json(*id, skus);
            item["skus"] = json!({ "sku": skus.iter().map(|s| json!({
                    "sku_id": s.variant_id,
                    "outer_id": s.sku,
                    "quantity": s.quantity,
                    "price": yuan(s.price_minor),
                "properties_name": format!("20509:{}:尺码:{}", s.variant_id % 10, s.title.rsplit_once('(').map(|(_, t)| t.trim_end_matches(')')).unwrap_or("")),
            })).collect::<Vec<_>>() });
            item
        })
        .collect();
    Ok(json!({ "items_seller_list_get_response": { "items": { "item": found }, "request_id": request_id() } }))
}

/// `taobao.item.quantity.update`: `type` 1 sets the quantity, 2 adds to it (never below 0).
fn item_quantity_update(state: &SimState, shop: &str, params: &BTreeMap<String, String>) -> Result<Value, Refusal> {
    let p = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    let num_iid: u64 = p("num_iid")
        .parse()
        .map_err(|_| Refusal::Error(40, "Missing required arguments", None, Some("num_iid must be given".into())))?;
    let quantity: i64 = p("quantity")
        .parse()
        .map_err(|_| invalid("isv.invalid-parameter", "quantity must be an integer".into()))?;
    let incremental = match p("type") {
        "" | "1" => false,
        "2" => true,
        _ => return Err(invalid("isv.invalid-parameter", "type must be 1 (full) or 2 (incremental)".into())),
    };
    if !incremental && quantity < 0 {
        return Err(invalid("isv.invalid-parameter", "quantity must be >= 0 for a full update".into()));
    }
    let sku_id: Option<u64> = p("sku_id").parse().ok();
    let outer_id = p("outer_id");
    let matches = |i: &crate::inventory::StockItem| {
        i.product_id == num_iid && sku_id.map_or(i.sku == outer_id, |id| i.variant_id == id)
    };
    let new_quantity = |old: u32| {
        if incremental {
            (old as i64 + quantity).clamp(0, u32::MAX as i64) as u32
        } else {
            quantity.min(u32::MAX as i64) as u32
        }
    };
    let item = state.set_stock(Platform::Taobao, shop, matches, new_quantity).ok_or_else(|| {
        Refusal::Error(15, "Remote service error", Some("isv.item-not-exist"), Some(format!("item {num_iid} has no such sku")))
    })?;
    Ok(json!({ "item_quantity_update_response": { "item": {
        "num_iid": item.product_id,
        "sku_id": item.variant_id,
        "num": item.quantity,
        "modified": format_time(now_s()),
    }, "request_id": request_id() } }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn md5_sign_matches_reference_example() {
        // The worked example in shared/reference/platforms.md §1.1.
        let p = params(&[
            ("app_key", "12345678"),
            ("method", "taobao.trades.sold.increment.get"),
            ("session", "sess"),
            ("timestamp", "2024-01-01 12:00:00"),
            ("format", "json"),
            ("v", "2.0"),
            ("sign_method", "md5"),
            ("start_modified", "2024-01-01 11:30:00"),
            ("end_modified", "2024-01-01 12:00:00"),
            ("fields", "tid,status"),
        ]);
        assert_eq!(sign(&p, "test_secret", "md5").as_deref(), Some("A20499571531B354EE36F66BF84C182D"));
    }

    #[test]
    fn sign_skips_sign_and_empty_values() {
        let a = params(&[("a", "1"), ("b", "")]);
        let b = params(&[("a", "1"), ("sign", "XYZ")]);
        for m in ["md5", "hmac", "hmac-sha256"] {
            assert_eq!(sign(&a, "s", m), sign(&b, "s", m));
        }
        assert_eq!(sign(&a, "s", "sha1"), None);
        assert_ne!(sign(&a, "s", "hmac"), sign(&a, "s", "hmac-sha256"));
    }

    #[test]
    fn times_are_gmt8() {
        assert_eq!(format_time(1_704_081_600), "2024-01-01 12:00:00");
        assert_eq!(parse_time("2024-01-01 12:00:00"), Some(1_704_081_600));
        assert_eq!(parse_time("2024-01-01T12:00:00"), None);
    }
}
