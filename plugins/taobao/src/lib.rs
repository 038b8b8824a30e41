//! berth connector for the Taobao / Tmall Open Platform (TOP).
//!
//! Calls go to the single router endpoint, signed over the sorted parameters with the
//! app secret (`md5`, `hmac` or `hmac-sha256`, computed by the host's crypto import).
//! Orders come from `taobao.trades.sold.increment.get`, whose window is at most one day
//! (declared in the manifest so the host never asks for more). TOP returns newest first
//! and advises paging from the last page backwards so rows shifting during the scan are
//! seen twice rather than missed; this connector does that. Throttling arrives as HTTP
//! 200 with code 7 and "This ban will last for N more seconds", mapped to `rate-limited`.
//!
//! Stock goes out through `taobao.item.quantity.update` with `type=1` (a full overwrite,
//! naturally idempotent; `type=2` deltas are never used, a retried delta would count
//! twice). TOP addresses a SKU by item (`num_iid`) and `sku_id`; the connector finds both
//! from the seller's SKU code with `taobao.skus.custom.get` and remembers them in kv.
//!
//! Listings (0.4.0): `taobao.items.onsale.get` pages through the items on sale (20 per
//! page, the cursor is the page number), and `taobao.items.seller.list.get` gives those
//! items' SKUs (`sku_id`, `outer_id`, quantity, price) in one call: one listing per SKU,
//! or per item for an item without SKUs, priced in CNY.
//!
//! Shop config: `gateway` (e.g. `https://eco.taobao.com/router/rest`), `app_key`,
//! secrets `app_secret` and `session`; optional `sign_method` (md5 | hmac | hmac-sha256,
//! default md5) and `page_size` (1..=100, default 40).

use berth_sdk::host::{self, hash};
use berth_sdk::stock::{accepted, is_per_sku, rejected, rejected_by, stop_batch};
use berth_sdk::text::{form_encode, mask_name, mask_phone, parse_minor};
use berth_sdk::time::{format_ymd_hms, now_ms, parse_ymd_hms};
use berth_sdk::{
    Capability, Connector, ConnectorError, Health, Listing, ListingPage, ListingRequest, Manifest, Order, OrderLine, OrderPage, OrderStatus,
    PullRequest, RateLimit, StockUpdate, UpdateResult,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

struct Taobao;

const GMT8_MINUTES: i32 = 8 * 60;
const ONE_DAY_MS: u64 = 86_400_000;
const TRADE_FIELDS: &str = "tid,status,created,modified,payment,receiver_name,receiver_mobile,orders";

struct ShopSettings {
    gateway: String,
    app_key: String,
    secret: String,
    session: String,
    sign_method: String,
    page_size: u32,
}

impl ShopSettings {
    fn load() -> Result<Self, ConnectorError> {
        let sign_method = host::config("sign_method").unwrap_or_else(|| "md5".into());
        if !matches!(sign_method.as_str(), "md5" | "hmac" | "hmac-sha256") {
            return Err(ConnectorError::Permanent(format!(
                "sign_method `{sign_method}` is not one of md5, hmac, hmac-sha256"
            )));
        }
        let page_size = match host::config("page_size") {
            None => 40,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| ConnectorError::Permanent(format!("page_size `{v}` must be 1..=100")))?,
        };
        Ok(ShopSettings {
            gateway: host::required_config("gateway")?,
            app_key: host::required_config("app_key")?,
            secret: host::required_config("app_secret")?,
            session: host::required_config("session")?,
            sign_method,
            page_size,
        })
    }

    /// TOP signature: sorted params (no `sign`, no empty values) as k1v1k2v2…
    fn sign(&self, params: &BTreeMap<String, String>) -> String {
        let payload: String = params
            .iter()
            .filter(|(k, v)| k.as_str() != "sign" && !v.is_empty())
            .map(|(k, v)| format!("{k}{v}"))
            .collect();
        let digest = match self.sign_method.as_str() {
            "hmac" => hash::hmac_md5(self.secret.as_bytes(), payload.as_bytes()),
            "hmac-sha256" => hash::hmac_sha256(self.secret.as_bytes(), payload.as_bytes()),
            _ => hash::md5(format!("{0}{payload}{0}", self.secret).as_bytes()),
        };
        hash::hex_upper(&digest)
    }

    /// Call one TOP method and return the `<method>_response` object.
    fn call(&self, method: &str, business: &[(&str, String)]) -> Result<Value, ConnectorError> {
        let mut params: BTreeMap<String, String> = BTreeMap::new();
        params.insert("method".into(), method.into());
        params.insert("app_key".into(), self.app_key.clone());
        params.insert("session".into(), self.session.clone());
        params.insert("timestamp".into(), format_ymd_hms(now_ms(), GMT8_MINUTES));
        params.insert("format".into(), "json".into());
        params.insert("v".into(), "2.0".into());
        params.insert("sign_method".into(), self.sign_method.clone());
        for (k, v) in business {
            params.insert((*k).into(), v.clone());
        }
        let sign = self.sign(&params);
        params.insert("sign".into(), sign);
        let form: Vec<(String, String)> = params.into_iter().collect();
        let resp = host::post_form(&self.gateway, &form_encode(&form), &[])?;
        match resp.status {
            200 => {}
            500..=599 => {
                return Err(ConnectorError::Transient(format!("TOP gateway answered HTTP {}", resp.status)))
            }
            s => return Err(ConnectorError::Permanent(format!("TOP gateway answered HTTP {s}"))),
        }
        let body: Value = serde_json::from_slice(&resp.body)
            .map_err(|e| ConnectorError::Transient(format!("TOP sent a body that is not JSON: {e}")))?;
        if let Some(err) = body.get("error_response") {
            return Err(map_error(err));
        }
        let key = format!("{}_response", method.trim_start_matches("taobao.").replace('.', "_"));
        body.get(&key)
            .cloned()
            .ok_or_else(|| ConnectorError::Transient(format!("TOP answer lacks `{key}`")))
    }
}

/// A SKU's place in TOP: item and SKU ids.
#[derive(Serialize, Deserialize, Clone, Copy)]
struct SkuRef {
    num_iid: u64,
    sku_id: u64,
}

fn sku_key(sku: &str) -> String {
    format!("stock/sku/{sku}")
}

impl ShopSettings {
    /// Find a SKU code's item and SKU ids, remembered in kv after the first lookup.
    fn sku_ref(&self, sku: &str) -> Result<Option<SkuRef>, ConnectorError> {
        if let Some(r) = host::state::get(&sku_key(sku))?.and_then(|b| serde_json::from_slice(&b).ok()) {
            return Ok(Some(r));
        }
        let resp = self.call("taobao.skus.custom.get", &[("outer_id", sku.to_string()), ("fields", "sku_id,num_iid,outer_id".into())])?;
        let found = resp
            .pointer("/skus/sku")
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
            .filter(|s| s.get("outer_id").and_then(|o| o.as_str()) == Some(sku))
            .find_map(|s| Some(SkuRef { num_iid: s.get("num_iid")?.as_u64()?, sku_id: s.get("sku_id")?.as_u64()? }));
        if let Some(r) = found {
            host::state::set(&sku_key(sku), &serde_json::to_vec(&r).unwrap_or_default())?;
        }
        Ok(found)
    }

    fn push_one(&self, u: &StockUpdate) -> Result<UpdateResult, ConnectorError> {
        let Some(r) = self.sku_ref(&u.sku)? else {
            return Ok(rejected(&u.sku, "no Taobao SKU has this merchant code (outer_id)"));
        };
        let result = self.call(
            "taobao.item.quantity.update",
            &[
                ("num_iid", r.num_iid.to_string()),
                ("sku_id", r.sku_id.to_string()),
                ("quantity", u.quantity.to_string()),
                ("type", "1".into()),
            ],
        );
        match result {
            Ok(_) => Ok(accepted(&u.sku)),
            Err(e) if is_per_sku(&e) => {
                // The item may have been relisted under new ids: look them up next time.
                host::state::delete(&sku_key(&u.sku))?;
                Ok(rejected_by(&u.sku, e))
            }
            Err(e) => Err(e),
        }
    }
}

/// TOP error codes to the errors the host acts on (platforms.md §1.5).
fn map_error(err: &Value) -> ConnectorError {
    let code = err.get("code").and_then(|c| c.as_i64().or_else(|| c.as_str()?.parse().ok())).unwrap_or(-1);
    let text = |k: &str| err.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let sub_code = text("sub_code");
    let sub_msg = text("sub_msg");
    let what = format!("TOP error {code} {} {sub_code} {sub_msg}", text("msg"));
    match code {
        7 => ConnectorError::RateLimited(ban_seconds(sub_msg).unwrap_or(1) * 1000),
        25 | 26 | 27 | 28 | 29 | 53 => ConnectorError::Auth(what),
        40 | 41 => ConnectorError::InvalidInput(what),
        _ if sub_code.starts_with("isp.") => ConnectorError::Transient(what),
        15 if sub_code.contains("timeout") || sub_code.contains("unavailable") => ConnectorError::Transient(what),
        _ => ConnectorError::Permanent(what),
    }
}

/// "This ban will last for 41 more seconds" -> 41
fn ban_seconds(sub_msg: &str) -> Option<u64> {
    let after = sub_msg.split("last for").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

#[derive(Deserialize)]
struct Trade {
    tid: u64,
    status: String,
    created: String,
    modified: String,
    payment: String,
    receiver_name: Option<String>,
    receiver_mobile: Option<String>,
    orders: Option<SubOrders>,
}

#[derive(Deserialize)]
struct SubOrders {
    order: Vec<SubOrder>,
}

#[derive(Deserialize)]
struct SubOrder {
    oid: u64,
    outer_sku_id: Option<String>,
    title: String,
    num: u32,
    price: String,
}

/// Where we are in one window: pages are read from `total_pages` down to 1.
#[derive(Serialize, Deserialize)]
struct PageCursor {
    next_page: u32,
}

fn status_of(s: &str) -> OrderStatus {
    match s {
        "WAIT_BUYER_PAY" | "TRADE_NO_CREATE_PAY" | "PAY_PENDING" => OrderStatus::Unpaid,
        "WAIT_SELLER_SEND_GOODS" => OrderStatus::Paid,
        "SELLER_CONSIGNED_PART" => OrderStatus::PartiallyShipped,
        "WAIT_BUYER_CONFIRM_GOODS" => OrderStatus::Shipped,
        "TRADE_BUYER_SIGNED" => OrderStatus::Delivered,
        "TRADE_FINISHED" => OrderStatus::Completed,
        "TRADE_CLOSED" | "TRADE_CLOSED_BY_TAOBAO" => OrderStatus::Cancelled,
        _ => OrderStatus::Other,
    }
}

fn garbled(what: &str, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Transient(format!("TOP sent an unreadable {what}: {e}"))
}

fn map_trade(raw: Value) -> Result<Order, ConnectorError> {
    let t: Trade = serde_json::from_value(raw.clone()).map_err(|e| garbled("trade", e))?;
    let lines = t
        .orders
        .map(|o| o.order)
        .unwrap_or_default()
        .into_iter()
        .map(|o| {
            Ok(OrderLine {
                line_id: o.oid.to_string(),
                sku: o.outer_sku_id.unwrap_or_default(),
                title: o.title,
                quantity: o.num,
                unit_price_minor: parse_minor(&o.price, 2).map_err(|e| garbled("price", e))?,
            })
        })
        .collect::<Result<Vec<_>, ConnectorError>>()?;
    Ok(Order {
        order_id: t.tid.to_string(),
        status: status_of(&t.status),
        platform_status: t.status,
        created_at_ms: parse_ymd_hms(&t.created, GMT8_MINUTES).map_err(|e| garbled("created", e))?,
        updated_at_ms: parse_ymd_hms(&t.modified, GMT8_MINUTES).map_err(|e| garbled("modified", e))?,
        currency: "CNY".into(),
        total_minor: parse_minor(&t.payment, 2).map_err(|e| garbled("payment", e))?,
        lines,
        buyer_name_masked: t.receiver_name.as_deref().map(mask_name).unwrap_or_default(),
        buyer_phone_masked: t.receiver_mobile.as_deref().map(mask_phone).unwrap_or_default(),
        raw_json: raw.to_string(),
    })
}

/// Items per listing page: `items.seller.list.get` takes at most 20 `num_iids`.
const LISTING_PAGE: u32 = 20;

/// A TOP price ("12.50" yuan) in fen.
fn fen(v: Option<&Value>, what: &str) -> Result<i64, ConnectorError> {
    let text = match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(garbled(what, "no price")),
    };
    parse_minor(&text, 2).map_err(|e| garbled(what, e))
}

/// One listing per SKU of each item the seller-list answer holds (per item for an item
/// without SKUs).
fn listings_of(items: &Value) -> Result<Vec<Listing>, ConnectorError> {
    let mut out = Vec::new();
    for item in items.pointer("/items/item").and_then(Value::as_array).into_iter().flatten() {
        let num_iid = item.get("num_iid").and_then(Value::as_u64).ok_or_else(|| garbled("item", "no num_iid"))?;
        let title = item.get("title").and_then(Value::as_str).unwrap_or_default().to_string();
        let skus = item.pointer("/skus/sku").and_then(Value::as_array).cloned().unwrap_or_default();
        if skus.is_empty() {
            out.push(Listing {
                sku: item.get("outer_id").and_then(Value::as_str).unwrap_or_default().to_string(),
                item_id: num_iid.to_string(),
                variant_id: None,
                title,
                quantity: item.get("num").and_then(Value::as_i64).unwrap_or(0),
                price_minor: fen(item.get("price"), "item price")?,
                currency: "CNY".into(),
            });
            continue;
        }
        for sku in skus {
            let sku_id = sku.get("sku_id").and_then(Value::as_u64).ok_or_else(|| garbled("sku", "no sku_id"))?;
            // `pid:vid:name:value;…`: the values name the SKU ("S", "Red").
            let name = sku
                .get("properties_name")
                .and_then(Value::as_str)
                .map(|n| n.split(';').filter_map(|p| p.splitn(4, ':').nth(3)).collect::<Vec<_>>().join(" "))
                .filter(|n| !n.is_empty());
            out.push(Listing {
                sku: sku.get("outer_id").and_then(Value::as_str).unwrap_or_default().to_string(),
                item_id: num_iid.to_string(),
                variant_id: Some(sku_id.to_string()),
                title: name.map_or_else(|| title.clone(), |n| format!("{title} {n}")),
                quantity: sku.get("quantity").and_then(Value::as_i64).unwrap_or(0),
                price_minor: fen(sku.get("price"), "sku price")?,
                currency: "CNY".into(),
            });
        }
    }
    Ok(out)
}

fn trades_of(resp: &Value) -> Result<Vec<Order>, ConnectorError> {
    let list = resp.pointer("/trades/trade").and_then(|t| t.as_array()).cloned().unwrap_or_default();
    list.into_iter().map(map_trade).collect()
}

impl Connector for Taobao {
    fn manifest() -> Manifest {
        Manifest {
            platform: "taobao".into(),
            connector_version: env!("CARGO_PKG_VERSION").into(),
            wit_version: berth_sdk::WIT_VERSION.into(),
            capabilities: vec![Capability::Orders, Capability::Inventory, Capability::Products],
            allowed_hosts: vec!["eco.taobao.com".into(), "gw.api.taobao.com".into(), "gw.api.tbsandbox.com".into()],
            default_rate_limit: RateLimit { requests_per_minute: 600, burst: 10 },
            max_window_ms: Some(ONE_DAY_MS),
            required_config: vec!["gateway".into(), "app_key".into(), "app_secret".into(), "session".into()],
        }
    }

    fn check(_shop: String) -> Result<Health, ConnectorError> {
        let s = ShopSettings::load()?;
        let now = now_ms();
        s.call(
            "taobao.trades.sold.increment.get",
            &[
                ("fields", "tid".into()),
                ("start_modified", format_ymd_hms(now - 60_000, GMT8_MINUTES)),
                ("end_modified", format_ymd_hms(now, GMT8_MINUTES)),
                ("page_size", "1".into()),
            ],
        )?;
        Ok(Health { ok: true, message: "router answered".into() })
    }

    fn pull_orders(_shop: String, req: PullRequest) -> Result<OrderPage, ConnectorError> {
        let s = ShopSettings::load()?;
        let w = req.window;
        if w.end_ms <= w.start_ms || (w.end_ms - w.start_ms) as u64 > ONE_DAY_MS {
            return Err(ConnectorError::InvalidInput(format!(
                "window [{}, {}) must be non-empty and at most one day",
                w.start_ms, w.end_ms
            )));
        }
        // [start, end) in ms to TOP's inclusive whole seconds.
        let start = format_ymd_hms(w.start_ms + 999, GMT8_MINUTES);
        let end = format_ymd_hms(w.end_ms - 1, GMT8_MINUTES);
        let page = |page_no: u32| {
            s.call(
                "taobao.trades.sold.increment.get",
                &[
                    ("fields", TRADE_FIELDS.into()),
                    ("start_modified", start.clone()),
                    ("end_modified", end.clone()),
                    ("page_no", page_no.to_string()),
                    ("page_size", s.page_size.to_string()),
                ],
            )
        };
        let cursor: Option<PageCursor> = match &req.page_cursor {
            None => None,
            Some(c) => Some(serde_json::from_str(c).map_err(|e| {
                ConnectorError::InvalidInput(format!("page cursor `{c}` is not this connector's: {e}"))
            })?),
        };
        let (resp, page_no) = match cursor {
            Some(c) => (page(c.next_page)?, c.next_page),
            None => {
                let first = page(1)?;
                let total = first.get("total_results").and_then(|t| t.as_u64()).unwrap_or(0);
                let pages = total.div_ceil(s.page_size as u64) as u32;
                if pages <= 1 {
                    (first, 1)
                } else {
                    // Several pages: start again from the last and walk back to 1.
                    (page(pages)?, pages)
                }
            }
        };
        let orders = trades_of(&resp)?;
        host::counter_add("orders_pulled", &[], orders.len() as u64);
        let next_page_cursor = (page_no > 1).then(|| {
            serde_json::to_string(&PageCursor { next_page: page_no - 1 }).unwrap_or_default()
        });
        Ok(OrderPage { orders, next_page_cursor })
    }

    fn push_inventory(_shop: String, updates: Vec<StockUpdate>) -> Result<Vec<UpdateResult>, ConnectorError> {
        let s = ShopSettings::load()?;
        let mut done = Vec::with_capacity(updates.len());
        for u in &updates {
            match s.push_one(u) {
                Ok(r) => done.push(r),
                Err(e) => return stop_batch(done, e),
            }
        }
        host::counter_add("stock_pushed", &[], done.iter().filter(|r| r.accepted).count() as u64);
        Ok(done)
    }

    fn listings(_shop: String, req: ListingRequest) -> Result<ListingPage, ConnectorError> {
        let s = ShopSettings::load()?;
        let page_no: u64 = match &req.cursor {
            None => 1,
            Some(c) => c.parse().ok().filter(|n| *n >= 1).ok_or_else(|| ConnectorError::InvalidInput(format!("listing cursor `{c}` is not a page number")))?,
        };
        let page_size = req.limit.clamp(1, LISTING_PAGE);
        let onsale = s.call(
            "taobao.items.onsale.get",
            &[("fields", "num_iid".into()), ("page_no", page_no.to_string()), ("page_size", page_size.to_string())],
        )?;
        let ids: Vec<String> = onsale
            .pointer("/items/item")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|i| i.get("num_iid").and_then(Value::as_u64))
            .map(|id| id.to_string())
            .collect();
        let total = onsale.get("total_results").and_then(Value::as_u64).unwrap_or(0);
        let listings = if ids.is_empty() {
            Vec::new()
        } else {
            let detail = s.call(
                "taobao.items.seller.list.get",
                &[("num_iids", ids.join(",")), ("fields", "num_iid,title,price,num,outer_id,sku".into())],
            )?;
            listings_of(&detail)?
        };
        let more = !ids.is_empty() && page_no * u64::from(page_size) < total;
        Ok(ListingPage { listings, next_cursor: more.then(|| (page_no + 1).to_string()) })
    }
}

berth_sdk::export_connector!(Taobao);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_each_sku_of_each_item() {
        let detail = serde_json::json!({"items": {"item": [
            {"num_iid": 7, "title": "Tea Cup", "price": "12.50", "num": 9, "skus": {"sku": [
                {"sku_id": 70, "outer_id": "CUP-S", "quantity": 4, "price": "12.50", "properties_name": "1627207:28341:Size:S"},
                {"sku_id": 71, "outer_id": "CUP-M", "quantity": 5, "price": 13}]}},
            {"num_iid": 8, "title": "Lamp", "price": "0.99", "num": 2, "outer_id": "LAMP"}
        ]}});
        let l = listings_of(&detail).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!((l[0].sku.as_str(), l[0].item_id.as_str(), l[0].variant_id.as_deref(), l[0].quantity, l[0].price_minor), ("CUP-S", "7", Some("70"), 4, 1250));
        assert_eq!(l[0].title, "Tea Cup S");
        assert_eq!((l[1].price_minor, l[1].title.as_str()), (1300, "Tea Cup"));
        assert_eq!((l[2].sku.as_str(), l[2].variant_id.as_deref(), l[2].quantity, l[2].price_minor, l[2].currency.as_str()), ("LAMP", None, 2, 99, "CNY"));
        assert!(listings_of(&serde_json::json!({"items": {"item": [{"num_iid": 1, "price": "x"}]}})).is_err());
    }

    #[test]
    fn parses_ban_seconds() {
        assert_eq!(ban_seconds("This ban will last for 41 more seconds"), Some(41));
        assert_eq!(ban_seconds("something else"), None);
    }

    #[test]
    fn maps_top_errors() {
        let e = |v: Value| map_error(&v);
        let throttled = serde_json::json!({"code": 7, "msg": "App Call Limited",
            "sub_code": "accesscontrol.limited-by-app-access-count", "sub_msg": "This ban will last for 41 more seconds"});
        assert!(matches!(e(throttled), ConnectorError::RateLimited(41_000)));
        assert!(matches!(e(serde_json::json!({"code": 7})), ConnectorError::RateLimited(1000)));
        assert!(matches!(e(serde_json::json!({"code": 25, "msg": "Invalid signature"})), ConnectorError::Auth(_)));
        assert!(matches!(e(serde_json::json!({"code": "27"})), ConnectorError::Auth(_)));
        assert!(matches!(e(serde_json::json!({"code": 15, "sub_code": "isp.remote-service-timeout"})), ConnectorError::Transient(_)));
        assert!(matches!(e(serde_json::json!({"code": 41})), ConnectorError::InvalidInput(_)));
        assert!(matches!(e(serde_json::json!({"code": 11, "sub_code": "isv.permission-api-package-limit"})), ConnectorError::Permanent(_)));
    }

    #[test]
    fn maps_trades() {
        let raw = serde_json::json!({
            "tid": 99, "status": "WAIT_BUYER_CONFIRM_GOODS", "created": "2024-01-01 12:00:00",
            "modified": "2024-01-01 13:00:00", "payment": "158.00", "receiver_name": "王小明",
            "receiver_mobile": "13800138000",
            "orders": {"order": [{"oid": 990, "outer_sku_id": "SKU-1", "title": "Tea", "num": 2, "price": "79.00"}]}
        });
        let o = map_trade(raw).unwrap();
        assert_eq!(o.order_id, "99");
        assert!(matches!(o.status, OrderStatus::Shipped));
        assert_eq!(o.created_at_ms, 1_704_081_600_000);
        assert_eq!(o.updated_at_ms, 1_704_085_200_000);
        assert_eq!(o.total_minor, 15_800);
        assert_eq!(o.lines[0].unit_price_minor, 7_900);
        assert_eq!(o.buyer_name_masked, "王**");
        assert!(map_trade(serde_json::json!({"tid": "x"})).is_err());
    }
}
