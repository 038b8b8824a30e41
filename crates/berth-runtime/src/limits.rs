//! What one connector may use per call: `[runtime]` sets the defaults, each
//! `[connectors.X.limits]` may tighten (or, within the engine's pool, widen) them.
//! Enforced per call: wall-clock deadline (epoch interruption), linear memory (the
//! store's limiter), fuel, turns (calls of one loaded version running at once), log
//! volume (the log import and stdout/stderr together) and output (orders per page,
//! bytes returned).

use crate::config::{LimitOverrides, RuntimeConfig};
use berth_types::connector::{Event, Order};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConnectorLimits {
    #[serde(serialize_with = "millis")]
    pub call_timeout: Duration,
    /// A webhook call's deadline.
    #[serde(serialize_with = "millis")]
    pub webhook_timeout: Duration,
    /// Instance slots kept for this connector; an even share of the rest when `None`.
    pub reserved_instances: Option<usize>,
    /// Webhook calls of one shop running at once; more are answered 429.
    pub max_webhook_calls_per_shop: usize,
    pub max_memory_bytes: usize,
    /// `u64::MAX`: metered, no limit.
    pub fuel_per_call: u64,
    pub max_concurrent_calls: usize,
    pub max_log_bytes_per_call: usize,
    pub max_log_bytes_per_minute: usize,
    pub max_orders_per_page: usize,
    pub max_output_bytes: usize,
    pub max_raw_json_bytes: usize,
    pub max_lines_per_order: usize,
    pub max_events_per_webhook: usize,
    pub max_orders_per_shop_per_hour: u32,
    pub max_kv_write_bytes_per_minute: usize,
    pub breaker: super::breaker::BreakerPolicy,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl ConnectorLimits {
    pub fn resolve(rt: &RuntimeConfig, o: &LimitOverrides) -> ConnectorLimits {
        ConnectorLimits {
            call_timeout: Duration::from_millis(o.call_timeout_ms.unwrap_or(rt.call_timeout_ms)),
            webhook_timeout: Duration::from_millis(o.webhook_timeout_ms.unwrap_or(rt.webhook_timeout_ms)),
            reserved_instances: o.reserved_instances.map(|n| n as usize),
            max_webhook_calls_per_shop: o.max_webhook_calls_per_shop.unwrap_or(rt.max_webhook_calls_per_shop) as usize,
            max_memory_bytes: o.max_memory_mb.unwrap_or(rt.max_memory_mb) as usize * 1024 * 1024,
            fuel_per_call: o.fuel_per_call.or(rt.fuel_per_call).unwrap_or(u64::MAX),
            max_concurrent_calls: o.max_concurrent_calls.unwrap_or(rt.max_concurrent_calls) as usize,
            max_log_bytes_per_call: o.max_log_bytes_per_call.unwrap_or(rt.max_log_bytes_per_call) as usize,
            max_log_bytes_per_minute: o.max_log_bytes_per_minute.unwrap_or(rt.max_log_bytes_per_minute) as usize,
            max_orders_per_page: o.max_orders_per_page.unwrap_or(rt.max_orders_per_page) as usize,
            max_output_bytes: o.max_output_bytes.unwrap_or(rt.max_output_bytes) as usize,
            max_raw_json_bytes: o.max_raw_json_bytes.unwrap_or(rt.max_raw_json_bytes) as usize,
            max_lines_per_order: o.max_lines_per_order.unwrap_or(rt.max_lines_per_order) as usize,
            max_events_per_webhook: o.max_events_per_webhook.unwrap_or(rt.max_events_per_webhook) as usize,
            max_orders_per_shop_per_hour: o.max_orders_per_shop_per_hour.unwrap_or(rt.max_orders_per_shop_per_hour),
            max_kv_write_bytes_per_minute: o.max_kv_write_bytes_per_minute.unwrap_or(rt.max_kv_write_bytes_per_minute) as usize,
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

/// Longest identifier a connector may hand back — order and line ids, SKUs, platform
/// statuses, currencies: they become storage keys, CSV columns and API fields.
pub const MAX_ID_BYTES: usize = 256;
/// Longest free text in an order: a line's title, a masked buyer field.
pub const MAX_TEXT_BYTES: usize = 2048;
/// Longest page cursor (kept with the shop's sync position).
pub const MAX_CURSOR_BYTES: usize = 4096;

/// The start of a guest string, for naming it in an error.
fn head(s: &str) -> &str {
    crate::state::bounded(s, 64)
}

/// The earliest time an order may carry: 2000-01-01T00:00:00Z. Anything before is a
/// connector's mistake (a zero, a negative, seconds taken for milliseconds).
pub const EARLIEST_ORDER_MS: i64 = 946_684_800_000;
/// How far past the host's clock an order's time may lie (clocks drift; a day does not).
pub const MAX_AHEAD_MS: i64 = 24 * 3_600_000;

/// Why an answer is refused: too big for the limits, or not a sane answer at all.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    TooLarge(String),
    Bad(String),
}

/// Whether every string of an order keeps to its bound, its lines to their number and
/// its times to sane bounds: why not, if it does not.
fn check_order(o: &Order, l: &ConnectorLimits, now_ms: i64) -> Result<(), Refusal> {
    let too_long = |field: &str, value: &str, max: usize| {
        (value.len() > max).then(|| format!("order `{}`: {field} is {} bytes, more than {max}", head(&o.order_id), value.len()))
    };
    let first = too_long("order_id", &o.order_id, MAX_ID_BYTES)
        .or_else(|| too_long("platform_status", &o.platform_status, MAX_ID_BYTES))
        .or_else(|| too_long("currency", &o.currency, MAX_ID_BYTES))
        .or_else(|| too_long("buyer_name_masked", &o.buyer_name_masked, MAX_TEXT_BYTES))
        .or_else(|| too_long("buyer_phone_masked", &o.buyer_phone_masked, MAX_TEXT_BYTES))
        .or_else(|| {
            (o.lines.len() > l.max_lines_per_order).then(|| {
                format!("order `{}` has {} lines, more than max_lines_per_order ({})", head(&o.order_id), o.lines.len(), l.max_lines_per_order)
            })
        })
        .or_else(|| {
            o.lines.iter().find_map(|l| {
                too_long("a line's line_id", &l.line_id, MAX_ID_BYTES)
                    .or_else(|| too_long("a line's sku", &l.sku, MAX_ID_BYTES))
                    .or_else(|| too_long("a line's title", &l.title, MAX_TEXT_BYTES))
            })
        });
    if let Some(why) = first {
        return Err(Refusal::TooLarge(why));
    }
    for (field, t) in [("created_at_ms", o.created_at_ms), ("updated_at_ms", o.updated_at_ms)] {
        if t < EARLIEST_ORDER_MS {
            return Err(Refusal::Bad(format!("order `{}`: {field} {t} is before 2000-01-01; times are Unix milliseconds", head(&o.order_id))));
        }
        if t > now_ms.saturating_add(MAX_AHEAD_MS) {
            return Err(Refusal::Bad(format!(
                "order `{}`: {field} {t} is more than a day ahead of the host's clock ({now_ms}); times are Unix milliseconds",
                head(&o.order_id)
            )));
        }
    }
    Ok(())
}

/// About how many bytes an order takes once the host holds it.
pub fn order_bytes(o: &Order) -> usize {
    let lines: usize = o.lines.iter().map(|l| 48 + l.line_id.len() + l.sku.len() + l.title.len()).sum();
    96 + o.order_id.len() + o.platform_status.len() + o.currency.len() + o.raw_json.len() + o.buyer_name_masked.len() + o.buyer_phone_masked.len() + lines
}

/// Check a page of orders against the limits and the contract: why it is refused, if it is.
pub fn check_orders(orders: &[Order], limits: &ConnectorLimits, now_ms: i64) -> Result<(), Refusal> {
    if orders.len() > limits.max_orders_per_page {
        return Err(Refusal::TooLarge(format!(
            "returned {} orders in one page, more than max_orders_per_page ({})",
            orders.len(),
            limits.max_orders_per_page
        )));
    }
    orders.iter().try_for_each(|o| check_order(o, limits, now_ms))?;
    let bytes: usize = orders.iter().map(order_bytes).sum();
    if bytes > limits.max_output_bytes {
        return Err(Refusal::TooLarge(format!("returned about {bytes} bytes, more than max_output_bytes ({})", limits.max_output_bytes)));
    }
    Ok(())
}

/// Check webhook events the same way (orders in them count against the page limits).
pub fn check_events(events: &[Event], limits: &ConnectorLimits, now_ms: i64) -> Result<(), Refusal> {
    let orders: Vec<&Order> = events.iter().filter_map(|e| if let Event::OrderUpserted(o) = e { Some(o) } else { None }).collect();
    let max = limits.max_events_per_webhook.min(limits.max_orders_per_page);
    if events.len() > max {
        return Err(Refusal::TooLarge(format!(
            "returned {} events, more than max_events_per_webhook ({})",
            events.len(),
            limits.max_events_per_webhook
        )));
    }
    for e in events {
        match e {
            Event::OrderUpserted(o) => check_order(o, limits, now_ms)?,
            Event::OrderChanged(id) if id.len() > MAX_ID_BYTES => {
                return Err(Refusal::TooLarge(format!("an order-changed event names an order id of {} bytes, more than {MAX_ID_BYTES}", id.len())))
            }
            Event::StockChanged(u) if u.sku.len() > MAX_ID_BYTES => {
                return Err(Refusal::TooLarge(format!("a stock-changed event names a SKU of {} bytes, more than {MAX_ID_BYTES}", u.sku.len())))
            }
            _ => {}
        }
    }
    let bytes: usize = orders.iter().map(|o| order_bytes(o)).sum::<usize>() + 64 * events.len();
    if bytes > limits.max_output_bytes {
        return Err(Refusal::TooLarge(format!("returned about {bytes} bytes, more than max_output_bytes ({})", limits.max_output_bytes)));
    }
    Ok(())
}

/// What ends a free-text field berth cut to its bound.
pub const CUT_MARK: &str = " …(cut)";

/// Cut free text longer than its bound — a line's title, masked buyer fields — to the
/// bound, ending in [`CUT_MARK`]: an order with a long title is still an order (a
/// platform allows what it allows), and refusing it would hold the shop's pulls, or a
/// webhook, forever. Returns how many fields were cut. Ids are not cut: a cut id would
/// name another order.
pub fn cut_free_text<'a>(orders: impl Iterator<Item = &'a mut Order>) -> usize {
    fn cut(s: &mut String) -> usize {
        if s.len() <= MAX_TEXT_BYTES {
            return 0;
        }
        let keep = crate::state::bounded(s, MAX_TEXT_BYTES - CUT_MARK.len()).len();
        s.truncate(keep);
        s.push_str(CUT_MARK);
        1
    }
    let mut n = 0;
    for o in orders {
        n += cut(&mut o.buyer_name_masked) + cut(&mut o.buyer_phone_masked);
        for l in &mut o.lines {
            n += cut(&mut l.title);
        }
    }
    n
}

/// Replace raw platform JSON longer than `max_raw_json_bytes` with a note of its size:
/// the order is kept, its raw copy is not. Returns how many were replaced.
pub fn cap_raw_json<'a>(orders: impl Iterator<Item = &'a mut Order>, limits: &ConnectorLimits) -> usize {
    let mut capped = 0;
    for o in orders.filter(|o| o.raw_json.len() > limits.max_raw_json_bytes) {
        o.raw_json = serde_json::json!({
            "berth_raw_json_dropped": { "bytes": o.raw_json.len(), "max_raw_json_bytes": limits.max_raw_json_bytes }
        })
        .to_string();
        capped += 1;
    }
    capped
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

    fn order(id: &str, sku: &str, title: &str) -> Order {
        use berth_types::connector::{OrderLine, OrderStatus};
        Order {
            order_id: id.into(),
            status: OrderStatus::Paid,
            platform_status: "paid".into(),
            created_at_ms: NOW - 60_000,
            updated_at_ms: NOW,
            currency: "USD".into(),
            total_minor: 1,
            lines: vec![OrderLine { line_id: "1".into(), sku: sku.into(), title: title.into(), quantity: 1, unit_price_minor: 1 }],
            buyer_name_masked: String::new(),
            buyer_phone_masked: String::new(),
            raw_json: "{}".into(),
        }
    }

    const NOW: i64 = 1_800_000_000_000;

    fn too_large(r: Result<(), Refusal>) -> String {
        match r {
            Err(Refusal::TooLarge(why)) => why,
            other => panic!("expected too large, got {other:?}"),
        }
    }

    fn bad(r: Result<(), Refusal>) -> String {
        match r {
            Err(Refusal::Bad(why)) => why,
            other => panic!("expected a bad answer, got {other:?}"),
        }
    }

    #[test]
    fn every_guest_string_in_an_order_is_bounded() {
        use berth_types::connector::StockUpdate;
        let l = ConnectorLimits::resolve(&RuntimeConfig::default(), &LimitOverrides::default());
        assert!(check_orders(&[order("A-1", "S", "t")], &l, NOW).is_ok());
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let err = too_large(check_orders(&[order(&long, "S", "t")], &l, NOW));
        assert!(err.starts_with(&format!("order `{}`: order_id is 257 bytes, more than 256", "x".repeat(64))), "{err}");
        let err = too_large(check_orders(&[order("A-1", &long, "t")], &l, NOW));
        assert_eq!(err, "order `A-1`: a line's sku is 257 bytes, more than 256");
        let err = too_large(check_orders(&[order("A-1", "S", &"t".repeat(MAX_TEXT_BYTES + 1))], &l, NOW));
        assert_eq!(err, "order `A-1`: a line's title is 2049 bytes, more than 2048");
        let err = too_large(check_events(&[Event::OrderChanged(long.clone())], &l, NOW));
        assert!(err.contains("order id of 257 bytes"), "{err}");
        let err = too_large(check_events(&[Event::StockChanged(StockUpdate { sku: long, quantity: 1 })], &l, NOW));
        assert!(err.contains("SKU of 257 bytes"), "{err}");
        assert!(check_events(&[Event::OrderUpserted(order("A-1", "S", "t"))], &l, NOW).is_ok());
    }

    #[test]
    fn lines_events_and_times_are_bounded() {
        let l = ConnectorLimits::resolve(&RuntimeConfig::default(), &LimitOverrides::default());
        let mut many = order("M-1", "S", "t");
        many.lines = (0..=l.max_lines_per_order).map(|_| many.lines[0].clone()).collect();
        assert_eq!(too_large(check_orders(&[many], &l, NOW)), "order `M-1` has 1001 lines, more than max_lines_per_order (1000)");
        let events: Vec<Event> = (0..101).map(|i| Event::OrderChanged(format!("o{i}"))).collect();
        assert_eq!(too_large(check_events(&events, &l, NOW)), "returned 101 events, more than max_events_per_webhook (100)");
        assert!(check_events(&events[..100], &l, NOW).is_ok());
        for t in [i64::MIN, -1, 0, EARLIEST_ORDER_MS - 1] {
            let mut o = order("T-1", "S", "t");
            o.updated_at_ms = t;
            assert!(bad(check_orders(&[o], &l, NOW)).contains("updated_at_ms") , "{t}");
        }
        for t in [i64::MAX, NOW + MAX_AHEAD_MS + 1, 253_402_300_800_000 /* year 10000 */] {
            let mut o = order("T-1", "S", "t");
            o.created_at_ms = t;
            let why = bad(check_events(&[Event::OrderUpserted(o)], &l, NOW));
            assert!(why.contains("created_at_ms") && why.contains("more than a day ahead"), "{why}");
        }
        let mut o = order("T-1", "S", "t");
        o.updated_at_ms = NOW + MAX_AHEAD_MS;
        assert!(check_orders(&[o], &l, NOW).is_ok(), "a day ahead is still taken");
    }

    #[test]
    fn free_text_past_its_bound_is_cut_and_marked() {
        let mut orders = vec![order("A", "S", &"é".repeat(MAX_TEXT_BYTES)), order("B", "S", "short")];
        assert_eq!(cut_free_text(orders.iter_mut()), 1);
        let title = &orders[0].lines[0].title;
        assert!(title.len() <= MAX_TEXT_BYTES && title.ends_with(CUT_MARK), "{}", title.len());
        assert_eq!(orders[1].lines[0].title, "short");
        let l = ConnectorLimits::resolve(&RuntimeConfig::default(), &LimitOverrides::default());
        assert!(check_orders(&orders, &l, NOW).is_ok(), "a cut order passes");
    }

    #[test]
    fn raw_json_past_its_bound_is_replaced_by_a_note() {
        let l = ConnectorLimits::resolve(&RuntimeConfig::default(), &LimitOverrides { max_raw_json_bytes: Some(10), ..Default::default() });
        let mut orders = vec![order("A", "S", "t"), order("B", "S", "t")];
        orders[1].raw_json = "x".repeat(11);
        assert_eq!(cap_raw_json(orders.iter_mut(), &l), 1);
        assert_eq!(orders[0].raw_json, "{}");
        let note: serde_json::Value = serde_json::from_str(&orders[1].raw_json).unwrap();
        assert_eq!(note["berth_raw_json_dropped"]["bytes"], 11);
    }
}
