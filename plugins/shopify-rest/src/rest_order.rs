//! Shopify orders in the REST Admin API's JSON — what `orders.json` answers and what
//! every webhook carries, whichever API a connector pulls with — and webhook
//! verification. Shared by the REST connector (this crate) and the GraphQL one
//! (`plugins/shopify-graphql`, which includes this file).

use berth_sdk::host;
use berth_sdk::text::{mask_name, mask_phone, parse_minor};
use berth_sdk::time::parse_rfc3339;
use berth_sdk::{ConnectorError, Event, Order, OrderLine, OrderStatus, WebhookRequest};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct ShopifyOrder {
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
pub struct LineItem {
    id: u64,
    sku: Option<String>,
    title: String,
    quantity: u32,
    price: String,
}

#[derive(Deserialize)]
pub struct Customer {
    first_name: Option<String>,
    last_name: Option<String>,
    phone: Option<String>,
}

pub fn status_of(o: &ShopifyOrder) -> OrderStatus {
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

pub fn platform_status(o: &ShopifyOrder) -> String {
    format!(
        "{}/{}{}",
        o.financial_status.as_deref().unwrap_or("-"),
        o.fulfillment_status.as_deref().unwrap_or("unfulfilled"),
        if o.cancelled_at.is_some() { "/cancelled" } else { "" }
    )
}

pub fn garbled(what: &str, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Transient(format!("Shopify sent an unreadable {what}: {e}"))
}

pub fn map_order(o: ShopifyOrder, raw: serde_json::Value) -> Result<Order, ConnectorError> {
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

/// Whether `signature` (base64) is the HMAC-SHA256 of `body` under `secret`, compared
/// in constant time.
pub fn signature_ok(secret: &str, body: &[u8], signature: &str) -> bool {
    let expected = host::hash::base64(&host::hash::hmac_sha256(secret.as_bytes(), body));
    let (a, b) = (expected.as_bytes(), signature.trim().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn webhook_events(req: &WebhookRequest) -> Result<Vec<Event>, ConnectorError> {
    let header = |name: &str| req.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let secret = host::config("webhook_secret").ok_or_else(|| {
        ConnectorError::Permanent("no `webhook_secret` (the app's client secret) is configured for this shop".into())
    })?;
    let signature = header("x-shopify-hmac-sha256")
        .ok_or_else(|| ConnectorError::Auth("the request has no X-Shopify-Hmac-Sha256 header".into()))?;
    if !signature_ok(&secret, &req.body, signature) {
        return Err(ConnectorError::Auth("X-Shopify-Hmac-Sha256 does not match the body".into()));
    }
    let topic = header("x-shopify-topic").unwrap_or("");
    if !topic.starts_with("orders/") {
        return Ok(Vec::new());
    }
    let raw: serde_json::Value = serde_json::from_slice(&req.body)
        .map_err(|e| ConnectorError::InvalidInput(format!("webhook body is not JSON: {e}")))?;
    let order: ShopifyOrder = serde_json::from_value(raw.clone())
        .map_err(|e| ConnectorError::InvalidInput(format!("webhook body is not a Shopify order: {e}")))?;
    let order = map_order(order, raw).map_err(|e| match e {
        ConnectorError::Transient(m) => ConnectorError::InvalidInput(m),
        other => other,
    })?;
    Ok(vec![Event::OrderUpserted(order)])
}

