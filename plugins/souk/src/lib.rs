//! A connector for "Souk", an open platform berth's simulator does not model, shaped
//! like the long tail's (Kuaishou-like): one gateway, every call signed with
//! HMAC-SHA256 over its sorted parameters, the business parameters a JSON string in
//! `param`, answers `{"result": 1, "data": …}` with other `result` codes for errors —
//! throttling too (`result` 24, HTTP 200) — orders listed by update time in windows of
//! at most 7 days, both bounds inclusive, paged by an opaque cursor ending in "nomore".
//!
//! It is a fixture for the vendor kit (`berth plugin record` / `test --tape`); the test
//! server in tests/tests/vendor_kit_e2e.rs plays the platform. Built with the `wrong`
//! feature it makes three mistakes on purpose (see Cargo.toml).
//!
//! Shop config: `base_url`, `app_key`; secrets `sign_secret`, `access_token`,
//! `webhook_secret`.

use berth_sdk::host::{self, hash};
use berth_sdk::stock::{accepted, rejected, stop_batch};
use berth_sdk::text::{mask_name, mask_phone, url_encode};
use berth_sdk::{
    Capability, Connector, ConnectorError, Event, Health, Manifest, Order, OrderLine, OrderPage, OrderStatus, PullRequest,
    RateLimit, StockUpdate, UpdateResult, WebhookRequest,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

struct Souk;

const SEVEN_DAYS_MS: u64 = 7 * 86_400_000;
/// Souk's "call frequency exceeded" result code.
const THROTTLED: i64 = 24;
const SKU_NOT_FOUND: i64 = 802;
const PAGE_SIZE: u32 = 20;

struct Shop {
    base_url: String,
    app_key: String,
    sign_secret: String,
    access_token: String,
}

impl Shop {
    fn load() -> Result<Shop, ConnectorError> {
        Ok(Shop {
            base_url: host::required_config("base_url")?,
            app_key: host::required_config("app_key")?,
            sign_secret: host::required_config("sign_secret")?,
            access_token: host::required_config("access_token")?,
        })
    }

    /// `k1=v1&k2=v2…` over the sorted parameters, HMAC-SHA256 with the sign secret, hex.
    fn sign(&self, params: &BTreeMap<&str, String>) -> String {
        let text: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        hash::hex_lower(&hash::hmac_sha256(self.sign_secret.as_bytes(), text.join("&").as_bytes()))
    }

    /// Call one API method; the answer's `data`.
    fn call(&self, method: &str, param: Value) -> Result<Value, ConnectorError> {
        let mut params: BTreeMap<&str, String> = BTreeMap::new();
        params.insert("appkey", self.app_key.clone());
        params.insert("access_token", self.access_token.clone());
        params.insert("method", method.to_string());
        params.insert("param", param.to_string());
        params.insert("signMethod", "HMAC_SHA256".into());
        params.insert("timestamp", host_now_ms().to_string());
        params.insert("version", "1".into());
        let sign = self.sign(&params);
        params.insert("sign", sign);
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", url_encode(v))).collect();
        let url = format!("{}/open/{}?{}", self.base_url.trim_end_matches('/'), method.replace('.', "/"), query.join("&"));
        let resp = host::get(&url, &[])?;
        match resp.status {
            200 => {}
            429 => {
                let secs = host::header(&resp, "retry-after").and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(1);
                return Err(ConnectorError::RateLimited(secs.max(1) * 1000));
            }
            500..=599 => return Err(ConnectorError::Transient(format!("Souk answered HTTP {}", resp.status))),
            401 | 403 => return Err(ConnectorError::Auth(format!("Souk answered HTTP {}", resp.status))),
            s => return Err(ConnectorError::Permanent(format!("Souk answered HTTP {s}"))),
        }
        if cfg!(feature = "wrong") && resp.body.first() == Some(&b'<') {
            panic!("Souk answered HTML");
        }
        let body: Value = serde_json::from_slice(&resp.body)
            .map_err(|e| ConnectorError::Transient(format!("Souk sent a body that is not JSON: {e}")))?;
        let Some(result) = body.get("result").and_then(Value::as_i64) else {
            return Err(ConnectorError::Transient("Souk's answer has no `result` code".into()));
        };
        if cfg!(feature = "wrong") {
            // Wrong on purpose: any code is taken for success.
            return Ok(body.get("data").cloned().unwrap_or_else(|| json!({})));
        }
        let message = body.get("error_msg").and_then(Value::as_str).unwrap_or("").to_string();
        match result {
            1 => body.get("data").cloned().ok_or_else(|| ConnectorError::Transient("Souk's answer has no `data`".into())),
            THROTTLED => {
                let ms = body.get("retry_after_ms").and_then(Value::as_u64).unwrap_or(1000);
                Err(ConnectorError::RateLimited(ms.max(1)))
            }
            SKU_NOT_FOUND => Err(ConnectorError::InvalidInput(format!("Souk result {result}: {message}"))),
            17 | 18 | 28 => Err(ConnectorError::Auth(format!("Souk result {result}: {message}"))),
            500..=599 => Err(ConnectorError::Transient(format!("Souk result {result}: {message}"))),
            _ => Err(ConnectorError::Permanent(format!("Souk result {result}: {message}"))),
        }
    }
}

/// The clock only feeds the `timestamp` parameter, as the platform asks.
fn host_now_ms() -> i64 {
    berth_sdk::time::now_ms()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SoukOrder {
    oid: String,
    create_time: i64,
    update_time: i64,
    status: i64,
    /// Fen (minor units), as an integer.
    total_fee: i64,
    #[serde(default)]
    buyer_name: String,
    #[serde(default)]
    buyer_phone: String,
    items: Vec<SoukItem>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SoukItem {
    item_id: String,
    sku_code: String,
    title: String,
    num: u32,
    price: i64,
}

fn status_of(code: i64) -> OrderStatus {
    match code {
        10 => OrderStatus::Unpaid,
        30 => OrderStatus::Paid,
        40 => OrderStatus::Shipped,
        50 => OrderStatus::Delivered,
        70 => OrderStatus::Completed,
        80 => OrderStatus::Cancelled,
        _ => OrderStatus::Other,
    }
}

fn map_order(raw: Value) -> Result<Order, ConnectorError> {
    let o: SoukOrder = serde_json::from_value(raw.clone())
        .map_err(|e| ConnectorError::Transient(format!("Souk sent an unreadable order: {e}")))?;
    Ok(Order {
        order_id: o.oid,
        status: status_of(o.status),
        platform_status: o.status.to_string(),
        created_at_ms: o.create_time,
        updated_at_ms: o.update_time,
        currency: "CNY".into(),
        total_minor: o.total_fee,
        lines: o
            .items
            .into_iter()
            .map(|i| OrderLine { line_id: i.item_id, sku: i.sku_code, title: i.title, quantity: i.num, unit_price_minor: i.price })
            .collect(),
        buyer_name_masked: mask_name(&o.buyer_name),
        buyer_phone_masked: mask_phone(&o.buyer_phone),
        raw_json: raw.to_string(),
    })
}

impl Connector for Souk {
    fn manifest() -> Manifest {
        Manifest {
            platform: "souk".into(),
            connector_version: env!("CARGO_PKG_VERSION").into(),
            wit_version: berth_sdk::WIT_VERSION.into(),
            capabilities: vec![Capability::Orders, Capability::Inventory, Capability::Webhooks],
            allowed_hosts: vec!["openapi.souk.example".into()],
            default_rate_limit: RateLimit { requests_per_minute: 300, burst: 5 },
            max_window_ms: Some(SEVEN_DAYS_MS),
            required_config: vec!["base_url".into(), "app_key".into(), "sign_secret".into(), "access_token".into(), "webhook_secret".into()],
        }
    }

    fn check(_shop: String) -> Result<Health, ConnectorError> {
        let s = Shop::load()?;
        let data = s.call("open.shop.info.get", json!({}))?;
        let name = data.get("shopName").and_then(Value::as_str).unwrap_or("?");
        Ok(Health { ok: true, message: format!("shop {name} answered") })
    }

    fn pull_orders(_shop: String, req: PullRequest) -> Result<OrderPage, ConnectorError> {
        let s = Shop::load()?;
        let w = req.window;
        if w.end_ms <= w.start_ms || (w.end_ms - w.start_ms) as u64 > SEVEN_DAYS_MS {
            return Err(ConnectorError::InvalidInput(format!("window [{}, {}) must be non-empty and at most 7 days", w.start_ms, w.end_ms)));
        }
        // Both of Souk's bounds are inclusive; berth's end is not.
        let param = json!({
            "queryType": 2,
            "beginTime": w.start_ms,
            "endTime": w.end_ms,
            "cursor": req.page_cursor.clone().unwrap_or_default(),
            "pageSize": PAGE_SIZE,
        });
        let data = s.call("open.order.cursor.list", param)?;
        let list = data.get("orderList").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut orders = Vec::with_capacity(list.len());
        for raw in list {
            let o = map_order(raw)?;
            if cfg!(feature = "wrong") || (o.updated_at_ms >= w.start_ms && o.updated_at_ms < w.end_ms) {
                orders.push(o);
            }
        }
        let next = data.get("cursor").and_then(Value::as_str).unwrap_or("nomore");
        let next_page_cursor = (next != "nomore" && !next.is_empty()).then(|| next.to_string());
        Ok(OrderPage { orders, next_page_cursor })
    }

    fn push_inventory(_shop: String, updates: Vec<StockUpdate>) -> Result<Vec<UpdateResult>, ConnectorError> {
        let s = Shop::load()?;
        let mut done = Vec::with_capacity(updates.len());
        for u in &updates {
            match s.call("open.item.sku.stock.update", json!({"skuCode": u.sku, "stock": u.quantity})) {
                Ok(_) => done.push(accepted(&u.sku)),
                Err(ConnectorError::InvalidInput(why)) => done.push(rejected(&u.sku, why)),
                Err(e) => return stop_batch(done, e),
            }
        }
        Ok(done)
    }

    fn handle_webhook(_shop: String, req: WebhookRequest) -> Result<Vec<Event>, ConnectorError> {
        let secret = host::required_config("webhook_secret")?;
        let header = |name: &str| req.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string());
        let Some(signature) = header("x-souk-sign") else {
            return Err(ConnectorError::Auth("the push has no X-Souk-Sign header".into()));
        };
        let expected = hash::hex_lower(&hash::hmac_sha256(secret.as_bytes(), &req.body));
        let (a, b) = (expected.as_bytes(), signature.as_bytes());
        if a.len() != b.len() || a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) != 0 {
            return Err(ConnectorError::Auth("X-Souk-Sign does not match the body".into()));
        }
        let body: Value = serde_json::from_slice(&req.body).map_err(|e| ConnectorError::InvalidInput(format!("push body is not JSON: {e}")))?;
        match body.get("event").and_then(Value::as_str) {
            Some("ORDER_UPDATE") => {
                let oid = body.get("oid").and_then(Value::as_str).ok_or_else(|| ConnectorError::InvalidInput("ORDER_UPDATE push without `oid`".into()))?;
                Ok(vec![Event::OrderChanged(oid.to_string())])
            }
            _ => Ok(Vec::new()),
        }
    }
}

berth_sdk::export_connector!(Souk);
