//! Storage watchdog, a safety net: the store on sled 0.34 deadlocked under load
//! (upstream spacejam/sled#1412, see docs/storage.md), which is why berth moved off it.
//! The store now has one writer thread and no storage call runs on an async worker, so
//! a stall can only come from the disk itself (a sync that never returns) or from a
//! blocked runtime — and then nothing berth does will bring it back.
//!
//! Everything berth acknowledged is already on disk, so the safe answer is to exit and
//! let the supervisor restart berth. An OS thread (not a tokio task, which would be stuck
//! too) watches two things: a heartbeat the tokio runtime must keep ticking, and how long
//! the writer's running batch has taken. Past the limit it logs why and exits with
//! status 3.

use berth_types::clock::now_ms;
use berth_storage::Store;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Exit status when storage stalled.
pub const STALL_EXIT_CODE: i32 = 3;

/// Why the watchdog fired, or `None` when all is well.
pub fn stall(now: i64, last_beat: i64, batch_running_ms: Option<i64>, limit_ms: i64) -> Option<String> {
    if now - last_beat > limit_ms {
        return Some(format!("the async runtime has not run for {} ms (its workers are blocked)", now - last_beat));
    }
    match batch_running_ms {
        Some(ms) if ms > limit_ms => Some(format!("a write batch (its sync to disk) has not finished in {ms} ms")),
        _ => None,
    }
}

/// Start watching. `on_stall` runs once, on the watchdog thread, with the reason; the
/// service passes one that exits the process.
pub fn start(store: &Store, limit: Duration, on_stall: impl FnOnce(String) + Send + 'static) {
    let beat = Arc::new(AtomicI64::new(now_ms()));
    let tick = beat.clone();
    let period = (limit / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    tokio::spawn(async move {
        let mut every = tokio::time::interval(period);
        loop {
            every.tick().await;
            tick.store(now_ms(), Ordering::SeqCst);
        }
    });
    let limit_ms = limit.as_millis() as i64;
    let weak = store.downgrade();
    std::thread::Builder::new()
        .name("berth-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(period);
            // The store is gone: berth is shutting down.
            let Some(store) = weak.upgrade() else { return };
            let now = now_ms();
            let running = store.stats().batch_running_for_ms(now);
            drop(store);
            if let Some(why) = stall(now, beat.load(Ordering::SeqCst), running, limit_ms) {
                on_stall(why);
                return;
            }
        })
        .expect("spawn the watchdog thread");
}

/// What the service does on a stall: say so on stderr and in the log, then exit.
pub fn exit_on_stall(why: String) {
    let msg = format!(
        "storage stalled: {why}; exiting with status {STALL_EXIT_CODE} so the supervisor restarts berth \
         (everything acknowledged is on disk). Set [server] stall_exit_secs = 0 to disable."
    );
    tracing::error!("{msg}");
    eprintln!("berth: {msg}");
    std::process::exit(STALL_EXIT_CODE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_on_heartbeat_and_flush_time() {
        assert_eq!(stall(10_000, 9_000, None, 5_000), None);
        assert_eq!(stall(10_000, 9_000, Some(4_000), 5_000), None);
        assert!(stall(10_000, 4_000, None, 5_000).unwrap().contains("has not run for 6000 ms"));
        assert!(stall(10_000, 9_900, Some(5_001), 5_000).unwrap().contains("write batch"));
    }

    #[test]
    fn fires_when_the_runtime_is_blocked() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        rt.block_on(async {
            let store = Store::open(dir.path(), berth_storage::StoreConfig { reserve_bytes: 0, ..Default::default() }).unwrap();
            start(&store, Duration::from_millis(200), move |why| tx.send(why).unwrap());
            // Let the heartbeat run; then the blocking recv below holds the only worker the
            // way a blocked runtime does.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(rx.try_recv().is_err(), "fired while healthy");
            let why = rx.recv_timeout(Duration::from_secs(5)).expect("the watchdog did not fire");
            assert!(why.contains("async runtime has not run"), "{why}");
            drop(store);
        });
    }
}
