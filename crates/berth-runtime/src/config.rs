//! `[runtime]` and `[connectors.X.limits]`: the sandbox's bounds, owned here.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Wall-clock deadline of one connector call.
    pub call_timeout_ms: u64,
    /// Deadline of a webhook call (the platform waits seconds for its answer; a call
    /// past it counts against the connector's circuit breaker).
    pub webhook_timeout_ms: u64,
    /// Webhook calls of one shop running at once; more are answered 429 at once.
    pub max_webhook_calls_per_shop: u32,
    /// Linear-memory cap per instance.
    pub max_memory_mb: u32,
    /// Instances alive at once across all connectors (pooling allocator slots).
    pub max_instances: u32,
    /// Memory of each pooled instance slot kept mapped between calls: only the pages the
    /// last call dirtied, reset with memset, so the next call does not page-fault them
    /// back in (a fresh Rust instance costs about a third as much). Costs up to this
    /// much RSS per slot in use; 0 hands every slot back with madvise after each call.
    pub keep_resident_kb: u32,
    /// Count fuel (about one unit per WebAssembly instruction) on every call and export
    /// it. Costs CPU in guest code (10–35% in the languages bench) and compile time;
    /// off, `fuel_per_call` cannot be set.
    pub meter_fuel: bool,
    /// Fuel one call may burn before it traps (`out_of_fuel`); no limit when absent.
    pub fuel_per_call: Option<u64>,
    /// Calls of one connector version running at once; more wait their turn within
    /// their deadline.
    pub max_concurrent_calls: u32,
    /// Log output one call may write (the log import and stdout/stderr together); the
    /// rest is dropped and counted.
    pub max_log_bytes_per_call: u64,
    /// Log output a connector may write per minute, all its calls together; the rest
    /// of the minute is dropped and counted.
    pub max_log_bytes_per_minute: u64,
    /// Orders (or webhook events) one call may return.
    pub max_orders_per_page: u32,
    /// Bytes of orders one call may return.
    pub max_output_bytes: u64,
    /// An order's raw platform JSON kept at most this long; a longer one is replaced by
    /// a note of its size (the order itself is kept) and counted.
    pub max_raw_json_bytes: u64,
    /// Lines one order may have; a page with a longer order is refused.
    pub max_lines_per_order: u32,
    /// Events one webhook call may return; more and the call is refused (503).
    pub max_events_per_webhook: u32,
    /// New order versions stored per shop in any hour (pulls and webhooks together);
    /// past it the shop's intake pauses until the hour has room, and an alert names it.
    pub max_orders_per_shop_per_hour: u32,
    /// State bytes (keys and values, overwrites included) one connector may write per
    /// shop per minute.
    pub max_kv_write_bytes_per_minute: u64,
    /// Isolate a connector version whose calls keep failing in the sandbox (see
    /// runtime/breaker.rs): at least `breaker_failure_percent` of at least
    /// `breaker_min_calls` calls within `breaker_window_secs`. Isolated for
    /// `breaker_open_secs`, then one trial call; each failed trial doubles the wait up
    /// to `breaker_max_open_secs`.
    pub breaker: bool,
    pub breaker_window_secs: u64,
    pub breaker_min_calls: u32,
    pub breaker_failure_percent: u8,
    pub breaker_open_secs: u64,
    pub breaker_max_open_secs: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            call_timeout_ms: 30_000,
            webhook_timeout_ms: 5_000,
            max_webhook_calls_per_shop: 4,
            max_memory_mb: 64,
            max_instances: 64,
            keep_resident_kb: 1024,
            meter_fuel: true,
            fuel_per_call: None,
            max_concurrent_calls: 32,
            max_log_bytes_per_call: 64 * 1024,
            max_log_bytes_per_minute: 1024 * 1024,
            max_orders_per_page: 1000,
            max_output_bytes: 16 * 1024 * 1024,
            max_raw_json_bytes: 256 * 1024,
            max_lines_per_order: 1000,
            max_events_per_webhook: 100,
            max_orders_per_shop_per_hour: 50_000,
            max_kv_write_bytes_per_minute: 4 * 1024 * 1024,
            breaker: true,
            breaker_window_secs: 60,
            breaker_min_calls: 5,
            breaker_failure_percent: 50,
            breaker_open_secs: 30,
            breaker_max_open_secs: 600,
        }
    }
}

/// `[connectors.X.limits]`: this connector's own limits; `[runtime]`'s where absent.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    pub call_timeout_ms: Option<u64>,
    pub webhook_timeout_ms: Option<u64>,
    pub max_webhook_calls_per_shop: Option<u32>,
    /// Instance slots kept for this connector alone; by default an even share of the
    /// slots no connector reserved. All reservations together fit `runtime.max_instances`.
    pub reserved_instances: Option<u32>,
    /// At most `runtime.max_memory_mb` (the engine's pool is sized by it).
    pub max_memory_mb: Option<u32>,
    pub fuel_per_call: Option<u64>,
    pub max_concurrent_calls: Option<u32>,
    pub max_log_bytes_per_call: Option<u64>,
    pub max_log_bytes_per_minute: Option<u64>,
    pub max_orders_per_page: Option<u32>,
    pub max_output_bytes: Option<u64>,
    pub max_raw_json_bytes: Option<u64>,
    pub max_lines_per_order: Option<u32>,
    pub max_events_per_webhook: Option<u32>,
    pub max_orders_per_shop_per_hour: Option<u32>,
    pub max_kv_write_bytes_per_minute: Option<u64>,
    pub breaker: Option<bool>,
    pub breaker_window_secs: Option<u64>,
    pub breaker_min_calls: Option<u32>,
    pub breaker_failure_percent: Option<u8>,
    pub breaker_open_secs: Option<u64>,
    pub breaker_max_open_secs: Option<u64>,
}

impl LimitOverrides {
    pub fn check(&self, rt: &RuntimeConfig) -> Result<(), String> {
        let zero = [
            ("call_timeout_ms", self.call_timeout_ms == Some(0)),
            ("webhook_timeout_ms", self.webhook_timeout_ms == Some(0)),
            ("max_webhook_calls_per_shop", self.max_webhook_calls_per_shop == Some(0)),
            ("max_memory_mb", self.max_memory_mb == Some(0)),
            ("fuel_per_call", self.fuel_per_call == Some(0)),
            ("max_concurrent_calls", self.max_concurrent_calls == Some(0)),
            ("max_orders_per_page", self.max_orders_per_page == Some(0)),
            ("max_output_bytes", self.max_output_bytes == Some(0)),
            ("max_lines_per_order", self.max_lines_per_order == Some(0)),
            ("max_events_per_webhook", self.max_events_per_webhook == Some(0)),
            ("max_orders_per_shop_per_hour", self.max_orders_per_shop_per_hour == Some(0)),
            ("max_kv_write_bytes_per_minute", self.max_kv_write_bytes_per_minute == Some(0)),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, z)| *z) {
            return Err(format!("{name} must be at least 1"));
        }
        if let Some(mb) = self.max_memory_mb.filter(|mb| *mb > rt.max_memory_mb) {
            return Err(format!("max_memory_mb {mb} is above runtime.max_memory_mb ({}), which sizes the engine's memory pool; raise that too", rt.max_memory_mb));
        }
        Ok(())
    }
}

impl RuntimeConfig {
    /// `[runtime]` on its own: every bound positive, the breaker's settings sane, fuel
    /// limits only where fuel is metered, the resident memory within an instance's.
    pub fn check(&self) -> Result<(), String> {
        if self.call_timeout_ms == 0 {
            return Err("runtime.call_timeout_ms must be positive".into());
        }
        if self.fuel_per_call == Some(0) {
            return Err("runtime.fuel_per_call must be at least 1 (leave it out for no limit)".into());
        }
        if self.max_concurrent_calls == 0
            || self.max_orders_per_page == 0
            || self.max_output_bytes == 0
            || self.max_lines_per_order == 0
            || self.max_events_per_webhook == 0
            || self.max_orders_per_shop_per_hour == 0
            || self.max_kv_write_bytes_per_minute == 0
        {
            return Err("runtime.max_concurrent_calls, max_orders_per_page, max_output_bytes, max_lines_per_order, max_events_per_webhook, max_orders_per_shop_per_hour and max_kv_write_bytes_per_minute must be at least 1".into());
        }
        super::limits::ConnectorLimits::resolve(self, &LimitOverrides::default()).breaker.check().map_err(|e| format!("runtime: {e}"))?;
        if self.webhook_timeout_ms == 0 || self.max_webhook_calls_per_shop == 0 {
            return Err("runtime.webhook_timeout_ms and runtime.max_webhook_calls_per_shop must be at least 1".into());
        }
        if !self.meter_fuel && self.fuel_per_call.is_some() {
            return Err("runtime.fuel_per_call needs runtime.meter_fuel = true".into());
        }
        if self.max_instances == 0 || self.max_memory_mb == 0 {
            return Err("runtime.max_instances and runtime.max_memory_mb must be positive".into());
        }
        if u64::from(self.keep_resident_kb) > u64::from(self.max_memory_mb) * 1024 {
            return Err(format!(
                "runtime.keep_resident_kb ({}) is more than an instance's memory (max_memory_mb = {}); set it at most {}",
                self.keep_resident_kb,
                self.max_memory_mb,
                u64::from(self.max_memory_mb) * 1024
            ));
        }
        Ok(())
    }

    /// One connector's `[connectors.X.limits]` against `[runtime]`.
    pub fn check_connector(&self, name: &str, limits: &LimitOverrides) -> Result<(), String> {
        limits.check(self).map_err(|e| format!("connectors.{name}.limits: {e}"))?;
        super::limits::ConnectorLimits::resolve(self, limits).breaker.check().map_err(|e| format!("connectors.{name}.limits: {e}"))?;
        if !self.meter_fuel && limits.fuel_per_call.is_some() {
            return Err(format!("connectors.{name}.limits.fuel_per_call needs runtime.meter_fuel = true"));
        }
        Ok(())
    }
}

/// Reserved instance slots must fit the pool, leave every other connector at least one
/// and not exceed what the connector may use at once.
pub fn check_reservations<'a>(rt: &RuntimeConfig, connectors: impl ExactSizeIterator<Item = (&'a str, &'a LimitOverrides)>) -> Result<(), String> {
    let count = connectors.len();
    let mut reserved = Vec::new();
    for (name, limits) in connectors {
        let Some(n) = limits.reserved_instances else { continue };
        let max = limits.max_concurrent_calls.unwrap_or(rt.max_concurrent_calls);
        if n > max {
            return Err(format!("connectors.{name}.limits.reserved_instances ({n}) is more than its max_concurrent_calls ({max}) lets it use"));
        }
        reserved.push((name, n));
    }
    let sum: u64 = reserved.iter().map(|(_, n)| u64::from(*n)).sum();
    let others = count - reserved.len();
    let need = sum + others as u64;
    if need > u64::from(rt.max_instances) {
        let parts: Vec<String> = reserved.iter().map(|(name, n)| format!("{name} {n}")).collect();
        return Err(format!(
            "connectors reserve {sum} instance slots ({}){}, more than runtime.max_instances ({}) holds; lower reserved_instances or raise max_instances",
            parts.join(", "),
            if others > 0 { format!(" and the {others} connectors without a reservation need at least one each") } else { String::new() },
            rt.max_instances
        ));
    }
    Ok(())
}
