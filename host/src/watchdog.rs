//! Storage watchdog: sled 0.34 can deadlock under heavy concurrent writes (seen in the
//! queue benchmark: its IO threads, its flusher and our transactions all parked on its
//! internal locks; upstream spacejam/sled#1412). A deadlocked store never comes back,
//! and because sled is called from the async workers, the whole API stops with it.
//!
//! Everything berth acknowledged is already on disk, so the safe answer is to exit and
//! let the supervisor restart berth. An OS thread (not a tokio task, which would be stuck
//! too) watches two things: a heartbeat the tokio runtime must keep ticking, and how long
//! the running group-commit flush has taken. Past the limit it logs why and exits with
//! status 3.

use crate::clock::now_ms;
use crate::queue::group_commit::GroupCommit;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Exit status when storage stalled.
pub const STALL_EXIT_CODE: i32 = 3;

/// Why the watchdog fired, or `None` when all is well.
pub fn stall(now: i64, last_beat: i64, flush_running_ms: Option<i64>, limit_ms: i64) -> Option<String> {
    if now - last_beat > limit_ms {
        return Some(format!(
            "the async runtime has not run for {} ms (its workers are blocked, most likely inside the storage engine)",
            now - last_beat
        ));
    }
    match flush_running_ms {
        Some(ms) if ms > limit_ms => Some(format!("a flush to disk has not finished in {ms} ms")),
        _ => None,
    }
}

/// Start watching. `on_stall` runs once, on the watchdog thread, with the reason; the
/// service passes one that exits the process.
pub fn start(commit: Arc<GroupCommit>, limit: Duration, on_stall: impl FnOnce(String) + Send + 'static) {
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
    let weak = Arc::downgrade(&commit);
    drop(commit);
    std::thread::Builder::new()
        .name("berth-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(period);
            // The store is gone: berth is shutting down.
            let Some(commit) = weak.upgrade() else { return };
            let now = now_ms();
            if let Some(why) = stall(now, beat.load(Ordering::SeqCst), commit.flush_running_for_ms(now), limit_ms) {
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
        assert!(stall(10_000, 9_900, Some(5_001), 5_000).unwrap().contains("flush"));
    }

    #[test]
    fn fires_when_the_runtime_is_blocked() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        rt.block_on(async {
            let commit = GroupCommit::start(sled::open(dir.path()).unwrap());
            start(commit.clone(), Duration::from_millis(200), move |why| tx.send(why).unwrap());
            // Let the heartbeat run; then the blocking recv below holds the only worker the
            // way a sled deadlock does.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(rx.try_recv().is_err(), "fired while healthy");
            let why = rx.recv_timeout(Duration::from_secs(5)).expect("the watchdog did not fire");
            assert!(why.contains("async runtime has not run"), "{why}");
            drop(commit);
        });
    }
}
