//! What one connector may use per call: `[runtime]` sets the defaults, each
//! `[connectors.X.limits]` may tighten (or, within the engine's pool, widen) them.
//! Enforced per call: wall-clock deadline (epoch interruption), linear memory (the
//! store's limiter), fuel, turns (calls of one loaded version running at once), log
//! volume (the log import and stdout/stderr together) and output (orders per page,
//! bytes returned).

use crate::config::{LimitOverrides, RuntimeConfig};
use crate::runtime::bindings::berth::connector::types::{Event, Order};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConnectorLimits {
    #[serde(serialize_with = "millis")]
    pub call_timeout: Duration,
    pub max_memory_bytes: usize,
    /// `u64::MAX`: metered, no limit.
    pub fuel_per_call: u64,
    pub max_concurrent_calls: usize,
    pub max_log_bytes_per_call: usize,
    pub max_orders_per_page: usize,
    pub max_output_bytes: usize,
    pub breaker: super::breaker::BreakerPolicy,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl ConnectorLimits {
    pub fn resolve(rt: &RuntimeConfig, o: &LimitOverrides) -> ConnectorLimits {
        ConnectorLimits {
            call_timeout: Duration::from_millis(o.call_timeout_ms.unwrap_or(rt.call_timeout_ms)),
            max_memory_bytes: o.max_memory_mb.unwrap_or(rt.max_memory_mb) as usize * 1024 * 1024,
            fuel_per_call: o.fuel_per_call.or(rt.fuel_per_call).unwrap_or(u64::MAX),
            max_concurrent_calls: o.max_concurrent_calls.unwrap_or(rt.max_concurrent_calls) as usize,
            max_log_bytes_per_call: o.max_log_bytes_per_call.unwrap_or(rt.max_log_bytes_per_call) as usize,
            max_orders_per_page: o.max_orders_per_page.unwrap_or(rt.max_orders_per_page) as usize,
            max_output_bytes: o.max_output_bytes.unwrap_or(rt.max_output_bytes) as usize,
            breaker: super::breaker::BreakerPolicy {
                enabled: o.breaker.unwrap_or(rt.breaker),
                window_secs: o.breaker_window_secs.unwrap_or(rt.breaker_window_secs),
                min_calls: o.breaker_min_calls.unwrap_or(rt.breaker_min_calls),
                failure_percent: o.breaker_failure_percent.unwrap_or(rt.breaker_failure_percent),
                open_secs: o.breaker_open_secs.unwrap_or(rt.breaker_open_secs),
                max_open_secs: o.breaker_max_open_secs.unwrap_or(rt.breaker_max_open_secs),
            },
        }
    }
}

/// A call's log allowance, shared by the `log` import and the guest's stdout/stderr.
/// Past it, output is dropped and counted; one line says so.
#[derive(Clone)]
pub struct LogBudget {
    shared: Arc<Allowance>,
    connector: Arc<str>,
}

/// What a call may still log, and whether it has been told it ran out.
struct Allowance {
    left: AtomicUsize,
    told: AtomicBool,
}

impl LogBudget {
    pub fn new(connector: Arc<str>, bytes: usize) -> LogBudget {
        LogBudget { shared: Arc::new(Allowance { left: AtomicUsize::new(bytes), told: AtomicBool::new(false) }), connector }
    }

    /// Whether `n` more bytes may be logged; when not, they are counted as dropped.
    pub fn take(&self, n: usize) -> bool {
        let ok = self.shared.left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(n)).is_ok();
        if !ok {
            crate::metrics::Metrics::get().log_dropped(&self.connector, n);
            if !self.shared.told.swap(true, Ordering::Relaxed) {
                tracing::warn!(connector = %self.connector, "the connector's log output for this call passed max_log_bytes_per_call; the rest is dropped");
            }
        }
        ok
    }
}

/// Longest identifier a connector may hand back — order and line ids, SKUs, platform
/// statuses, currencies: they become storage keys, CSV columns and API fields.
pub const MAX_ID_BYTES: usize = 256;
/// Longest free text in an order: a line's title, a masked buyer field.
pub const MAX_TEXT_BYTES: usize = 2048;
/// Longest page cursor (kept with the shop's sync position).
pub const MAX_CURSOR_BYTES: usize = 4096;

/// The start of a guest string, for naming it in an error.
fn head(s: &str) -> &str {
    crate::runtime::state::bounded(s, 64)
}

/// Whether every string of an order keeps to its bound: why not, if it does not.
fn check_order_fields(o: &Order) -> Result<(), String> {
    let too_long = |field: &str, value: &str, max: usize| {
        (value.len() > max).then(|| format!("order `{}`: {field} is {} bytes, more than {max}", head(&o.order_id), value.len()))
    };
    let first = too_long("order_id", &o.order_id, MAX_ID_BYTES)
        .or_else(|| too_long("platform_status", &o.platform_status, MAX_ID_BYTES))
        .or_else(|| too_long("currency", &o.currency, MAX_ID_BYTES))
        .or_else(|| too_long("buyer_name_masked", &o.buyer_name_masked, MAX_TEXT_BYTES))
        .or_else(|| too_long("buyer_phone_masked", &o.buyer_phone_masked, MAX_TEXT_BYTES))
        .or_else(|| {
            o.lines.iter().find_map(|l| {
                too_long("a line's line_id", &l.line_id, MAX_ID_BYTES)
                    .or_else(|| too_long("a line's sku", &l.sku, MAX_ID_BYTES))
                    .or_else(|| too_long("a line's title", &l.title, MAX_TEXT_BYTES))
            })
        });
    match first {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// About how many bytes an order takes once the host holds it.
pub fn order_bytes(o: &Order) -> usize {
    let lines: usize = o.lines.iter().map(|l| 48 + l.line_id.len() + l.sku.len() + l.title.len()).sum();
    96 + o.order_id.len() + o.platform_status.len() + o.currency.len() + o.raw_json.len() + o.buyer_name_masked.len() + o.buyer_phone_masked.len() + lines
}

/// Check a page of orders against the limits: why it is refused, if it is.
pub fn check_orders(orders: &[Order], limits: &ConnectorLimits) -> Result<(), String> {
    if orders.len() > limits.max_orders_per_page {
        return Err(format!("returned {} orders in one page, more than max_orders_per_page ({})", orders.len(), limits.max_orders_per_page));
    }
    orders.iter().try_for_each(check_order_fields)?;
    let bytes: usize = orders.iter().map(order_bytes).sum();
    if bytes > limits.max_output_bytes {
        return Err(format!("returned about {bytes} bytes, more than max_output_bytes ({})", limits.max_output_bytes));
    }
    Ok(())
}

/// Check webhook events the same way (orders in them count against the page limits).
pub fn check_events(events: &[Event], limits: &ConnectorLimits) -> Result<(), String> {
    let orders: Vec<&Order> = events.iter().filter_map(|e| if let Event::OrderUpserted(o) = e { Some(o) } else { None }).collect();
    if events.len() > limits.max_orders_per_page {
        return Err(format!("returned {} events, more than max_orders_per_page ({})", events.len(), limits.max_orders_per_page));
    }
    for e in events {
        match e {
            Event::OrderUpserted(o) => check_order_fields(o)?,
            Event::OrderChanged(id) if id.len() > MAX_ID_BYTES => {
                return Err(format!("an order-changed event names an order id of {} bytes, more than {MAX_ID_BYTES}", id.len()))
            }
            Event::StockChanged(u) if u.sku.len() > MAX_ID_BYTES => {
                return Err(format!("a stock-changed event names a SKU of {} bytes, more than {MAX_ID_BYTES}", u.sku.len()))
            }
            _ => {}
        }
    }
    let bytes: usize = orders.iter().map(|o| order_bytes(o)).sum::<usize>() + 64 * events.len();
    if bytes > limits.max_output_bytes {
        return Err(format!("returned about {bytes} bytes, more than max_output_bytes ({})", limits.max_output_bytes));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_and_the_rest_comes_from_runtime() {
        let rt = RuntimeConfig::default();
        let o = LimitOverrides { max_memory_mb: Some(16), fuel_per_call: Some(1_000_000), ..LimitOverrides::default() };
        let l = ConnectorLimits::resolve(&rt, &o);
        assert_eq!((l.max_memory_bytes, l.fuel_per_call), (16 << 20, 1_000_000));
        assert_eq!(l.call_timeout, Duration::from_millis(rt.call_timeout_ms));
        assert_eq!(ConnectorLimits::resolve(&rt, &LimitOverrides::default()).fuel_per_call, u64::MAX);
    }

    #[test]
    fn every_guest_string_in_an_order_is_bounded() {
        use crate::runtime::bindings::berth::connector::types::{OrderLine, OrderStatus, StockUpdate};
        let l = ConnectorLimits::resolve(&RuntimeConfig::default(), &LimitOverrides::default());
        let order = |id: &str, sku: &str, title: &str| Order {
            order_id: id.into(),
            status: OrderStatus::Paid,
            platform_status: "paid".into(),
            created_at_ms: 0,
            updated_at_ms: 0,
            currency: "USD".into(),
            total_minor: 1,
            lines: vec![OrderLine { line_id: "1".into(), sku: sku.into(), title: title.into(), quantity: 1, unit_price_minor: 1 }],
            buyer_name_masked: String::new(),
            buyer_phone_masked: String::new(),
            raw_json: "{}".into(),
        };
        assert!(check_orders(&[order("A-1", "S", "t")], &l).is_ok());
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let err = check_orders(&[order(&long, "S", "t")], &l).unwrap_err();
        assert!(err.starts_with(&format!("order `{}`: order_id is 257 bytes, more than 256", "x".repeat(64))), "{err}");
        let err = check_orders(&[order("A-1", &long, "t")], &l).unwrap_err();
        assert_eq!(err, "order `A-1`: a line's sku is 257 bytes, more than 256");
        let err = check_orders(&[order("A-1", "S", &"t".repeat(MAX_TEXT_BYTES + 1))], &l).unwrap_err();
        assert_eq!(err, "order `A-1`: a line's title is 2049 bytes, more than 2048");
        let err = check_events(&[Event::OrderChanged(long.clone())], &l).unwrap_err();
        assert!(err.contains("order id of 257 bytes"), "{err}");
        let err = check_events(&[Event::StockChanged(StockUpdate { sku: long, quantity: 1 })], &l).unwrap_err();
        assert!(err.contains("SKU of 257 bytes"), "{err}");
        assert!(check_events(&[Event::OrderUpserted(order("A-1", "S", "t"))], &l).is_ok());
    }

    #[test]
    fn log_budget_is_shared_and_stops_at_the_limit() {
        let b = LogBudget::new("c".into(), 10);
        let stdout = b.clone();
        assert!(b.take(6));
        assert!(!stdout.take(6), "the clone spends the same budget");
        assert!(stdout.take(4));
        assert!(!b.take(1));
    }
}
