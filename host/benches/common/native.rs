//! The Shopify connector as native Rust linked into the host: its source compiled into
//! the bench, its host calls answered by the same per-call [`HostState`] the component's
//! imports reach (allowlist, rate limits, the HTTP client, kv, metrics, log), run on a
//! blocking thread the way a synchronous native connector would be. What it skips is
//! what a native connector cannot have: the sandbox (instance, memory and fuel limits,
//! the deadline interrupt) and the host's checks of the answer (size limits, redaction).

use berth_types::shop::ShopConfig;
use berth_runtime::bindings::berth::connector as hb;
use berth_runtime::guest_log::LogBudget;
use berth_runtime::limits::ConnectorLimits;
use berth_runtime::redact::Redactor;
use berth_runtime::ConnectorRuntime;
use berth_runtime::state::{CallContext, HostState};
use berth_sdk::bindings::berth::connector as sb;
use berth_sdk::native::MetricKind;
use berth_sdk::Connector;
use berth_types::connector::{ConnectorError, OrderPage, PullRequest};
use std::sync::Arc;
use tokio::runtime::Handle;

// Its own crate build checks it for dead code; here its #[test]s have no harness.
#[allow(dead_code)]
#[path = "../../../plugins/shopify-rest/src/lib.rs"]
mod shopify;

pub struct NativeShopify {
    runtime: Arc<ConnectorRuntime>,
    allow: Arc<berth_runtime::allowlist::HostAllowlist>,
    limits: ConnectorLimits,
    turns: Arc<tokio::sync::Semaphore>,
}

impl NativeShopify {
    pub fn new(runtime: Arc<ConnectorRuntime>, hosts: &[String], limits: ConnectorLimits) -> Self {
        let allow = Arc::new(berth_runtime::allowlist::HostAllowlist::new(hosts.iter().cloned()));
        let turns = Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_calls));
        NativeShopify { runtime, allow, limits, turns }
    }

    /// One `pull-orders` call for `shop`.
    pub async fn pull(&self, shop: &str, cfg: Arc<ShopConfig>, req: &PullRequest) -> Result<OrderPage, ConnectorError> {
        let turn = self.turns.clone().acquire_owned().await.expect("the semaphore is never closed");
        let ctx = CallContext {
            redact: Redactor::for_shop(Some(&cfg)),
            connector: "shopify-native".into(),
            version: "native".into(),
            shop: Some((shop.to_string(), cfg)),
            allow: self.allow.clone(),
            platform: "shopify".into(),
            deadline: std::time::Instant::now() + self.limits.call_timeout,
            kv_write_per_minute: self.limits.max_kv_write_bytes_per_minute as u64,
        };
        let minute = self.runtime.log_minute(&ctx.connector, self.limits.max_log_bytes_per_minute);
        let log = LogBudget::new(ctx.connector.clone(), self.limits.max_log_bytes_per_call, minute);
        let state = HostState::new(ctx, self.runtime.imports(), self.runtime.metrics.clone(), self.limits.max_memory_bytes, log, turn);
        let host = Calls { state, rt: Handle::current() };
        let (shop, req) = (shop.to_string(), sdk_request(req));
        tokio::task::spawn_blocking(move || {
            berth_sdk::native::with_host(host, || <shopify::Shopify as Connector>::pull_orders(shop, req))
        })
        .await
        .expect("the native call's thread")
        .map(host_page)
        .map_err(host_error)
    }
}

/// One call's host: the host's own import implementations, awaited from the connector's
/// blocking thread.
struct Calls {
    state: HostState,
    rt: Handle,
}

impl berth_sdk::native::Host for Calls {
    fn send(&mut self, req: &sb::http::Request) -> Result<sb::http::Response, sb::http::HttpError> {
        use hb::http::Host as _;
        let method = match req.method {
            sb::http::Method::Get => hb::http::Method::Get,
            sb::http::Method::Head => hb::http::Method::Head,
            sb::http::Method::Post => hb::http::Method::Post,
            sb::http::Method::Put => hb::http::Method::Put,
            sb::http::Method::Patch => hb::http::Method::Patch,
            sb::http::Method::Delete => hb::http::Method::Delete,
        };
        let req = hb::http::Request {
            method,
            url: req.url.clone(),
            headers: req.headers.clone(),
            body: req.body.clone(),
            timeout_ms: req.timeout_ms,
        };
        match self.rt.block_on(self.state.send(req)) {
            Ok(r) => Ok(sb::http::Response { status: r.status, headers: r.headers, body: r.body }),
            Err(e) => Err(match e {
                hb::http::HttpError::Denied(s) => sb::http::HttpError::Denied(s),
                hb::http::HttpError::Timeout => sb::http::HttpError::Timeout,
                hb::http::HttpError::Connection(s) => sb::http::HttpError::Connection(s),
                hb::http::HttpError::TooLarge(n) => sb::http::HttpError::TooLarge(n),
                hb::http::HttpError::InvalidRequest(s) => sb::http::HttpError::InvalidRequest(s),
                hb::http::HttpError::Throttled(ms) => sb::http::HttpError::Throttled(ms),
            }),
        }
    }
    fn kv_get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        hb::kv::Host::get(&mut self.state, key.to_string())
    }
    fn kv_set(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        hb::kv::Host::set(&mut self.state, key.to_string(), value.to_vec())
    }
    fn kv_delete(&mut self, key: &str) -> Result<(), String> {
        hb::kv::Host::delete(&mut self.state, key.to_string())
    }
    fn kv_list_prefix(&mut self, prefix: &str) -> Result<Vec<String>, String> {
        hb::kv::Host::list_prefix(&mut self.state, prefix.to_string())
    }
    fn config(&mut self, key: &str) -> Option<String> {
        hb::config::Host::get(&mut self.state, key.to_string())
    }
    fn log(&mut self, level: sb::log::Level, message: &str) {
        let level = match level {
            sb::log::Level::Trace => hb::log::Level::Trace,
            sb::log::Level::Debug => hb::log::Level::Debug,
            sb::log::Level::Info => hb::log::Level::Info,
            sb::log::Level::Warn => hb::log::Level::Warn,
            sb::log::Level::Error => hb::log::Level::Error,
        };
        hb::log::Host::log(&mut self.state, level, message.to_string())
    }
    fn metric(&mut self, kind: MetricKind, name: &str, labels: &[(String, String)], value: f64) {
        use hb::metrics::Host as M;
        let (name, labels) = (name.to_string(), labels.to_vec());
        match kind {
            MetricKind::Counter => M::counter_add(&mut self.state, name, labels, value as u64),
            MetricKind::Gauge => M::gauge_set(&mut self.state, name, labels, value),
            MetricKind::Histogram => M::histogram_observe(&mut self.state, name, labels, value),
        }
    }
    fn md5(&mut self, data: &[u8]) -> Vec<u8> {
        hb::crypto::Host::md5(&mut self.state, data.to_vec())
    }
    fn sha256(&mut self, data: &[u8]) -> Vec<u8> {
        hb::crypto::Host::sha256(&mut self.state, data.to_vec())
    }
    fn hmac_md5(&mut self, key: &[u8], data: &[u8]) -> Vec<u8> {
        hb::crypto::Host::hmac_md5(&mut self.state, key.to_vec(), data.to_vec())
    }
    fn hmac_sha256(&mut self, key: &[u8], data: &[u8]) -> Vec<u8> {
        hb::crypto::Host::hmac_sha256(&mut self.state, key.to_vec(), data.to_vec())
    }
    fn base64_encode(&mut self, data: &[u8]) -> String {
        hb::crypto::Host::base64_encode(&mut self.state, data.to_vec())
    }
    fn base64_decode(&mut self, text: &str) -> Result<Vec<u8>, String> {
        hb::crypto::Host::base64_decode(&mut self.state, text.to_string())
    }
    fn hex_encode(&mut self, data: &[u8], upper: bool) -> String {
        hb::crypto::Host::hex_encode(&mut self.state, data.to_vec(), upper)
    }
}

fn sdk_request(r: &PullRequest) -> berth_sdk::PullRequest {
    berth_sdk::PullRequest {
        window: sb::types::TimeWindow { start_ms: r.window.start_ms, end_ms: r.window.end_ms },
        page_cursor: r.page_cursor.clone(),
    }
}

/// The connector's page in the host's types (the component's answer is lifted into
/// these by wasmtime; the native one is moved field by field).
fn host_page(p: berth_sdk::OrderPage) -> OrderPage {
    use berth_sdk::OrderStatus as S;
    use berth_types::connector::OrderStatus as H;
    let orders = p
        .orders
        .into_iter()
        .map(|o| berth_types::connector::Order {
            order_id: o.order_id,
            status: match o.status {
                S::Unpaid => H::Unpaid,
                S::Paid => H::Paid,
                S::PartiallyShipped => H::PartiallyShipped,
                S::Shipped => H::Shipped,
                S::Delivered => H::Delivered,
                S::Completed => H::Completed,
                S::Cancelled => H::Cancelled,
                S::Refunded => H::Refunded,
                S::Other => H::Other,
            },
            platform_status: o.platform_status,
            created_at_ms: o.created_at_ms,
            updated_at_ms: o.updated_at_ms,
            currency: o.currency,
            total_minor: o.total_minor,
            lines: o
                .lines
                .into_iter()
                .map(|l| berth_types::connector::OrderLine {
                    line_id: l.line_id,
                    sku: l.sku,
                    title: l.title,
                    quantity: l.quantity,
                    unit_price_minor: l.unit_price_minor,
                })
                .collect(),
            buyer_name_masked: o.buyer_name_masked,
            buyer_phone_masked: o.buyer_phone_masked,
            raw_json: o.raw_json,
        })
        .collect();
    OrderPage { orders, next_page_cursor: p.next_page_cursor }
}

fn host_error(e: berth_sdk::ConnectorError) -> ConnectorError {
    use berth_sdk::ConnectorError as S;
    match e {
        S::RateLimited(ms) => ConnectorError::RateLimited(ms),
        S::Auth(s) => ConnectorError::Auth(s),
        S::Transient(s) => ConnectorError::Transient(s),
        S::Permanent(s) => ConnectorError::Permanent(s),
        S::InvalidInput(s) => ConnectorError::InvalidInput(s),
    }
}
