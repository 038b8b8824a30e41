//! The one wasmtime [`Engine`] the host runs every connector on: pooling allocator,
//! epoch interruption driven by a ticker thread, fuel metering, async support.

use crate::config::RuntimeConfig;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; call deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

pub struct ConnectorEngine {
    pub engine: Engine,
    stop: Arc<AtomicBool>,
}

impl ConnectorEngine {
    pub fn new(cfg: &RuntimeConfig) -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // Metered fuel is exported per call; `fuel_per_call` sets a limit on it.
        config.consume_fuel(cfg.meter_fuel);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(cfg.max_instances);
        pool.total_core_instances(cfg.max_instances * 8);
        pool.total_memories(cfg.max_instances * 2);
        pool.total_tables(cfg.max_instances * 4);
        pool.total_stacks(cfg.max_instances);
        pool.max_memory_size(cfg.max_memory_mb as usize * 1024 * 1024);
        // Every call gets a fresh instance from the pool. Resetting a slot with madvise
        // makes the next instance page-fault its memory back in; resetting only the
        // pages the last one dirtied (PAGEMAP_SCAN, Linux 6.7+) with memset keeps them.
        let keep = cfg.keep_resident_kb as usize * 1024;
        pool.linear_memory_keep_resident(keep);
        pool.table_keep_resident(keep.min(64 * 1024));
        pool.pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.weak();
        let ticker_stop = stop.clone();
        std::thread::Builder::new()
            .name("berth-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker_engine.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| wasmtime::format_err!("cannot start the epoch ticker thread: {e}"))?;
        Ok(ConnectorEngine { engine, stop })
    }
}

impl Drop for ConnectorEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
