//! The one loop every background worker runs: sync (a shop's order pulls), the stock
//! pusher (a shop's pushes) and ERP delivery (the order webhook). A worker says what one
//! step did as a [`Wait`]; the loop does the waiting, the pausing and the shutdown, so
//! each of those works the same in all three.

use crate::registry::ConnectorSlot;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// What to do after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Step again at once: there is more to do.
    Now,
    /// Nothing to do: wait this long, or less when new work is announced.
    Idle(Duration),
    /// Hold off this long even when new work comes (throttled, backing off, an error that
    /// needs a person); an operator releasing a quota hold ends it early.
    Park(Duration),
}

/// A background worker: one step at a time, run by [`run`].
pub trait Worker: Send {
    /// One step of work, and what to do after it.
    fn step(&mut self) -> impl Future<Output = Wait> + Send;

    /// The connector slot and shop whose pause (by ops) stops this worker; `None` for a
    /// worker ops cannot pause.
    fn pause_gate(&self) -> Option<(&ConnectorSlot, &str)> {
        None
    }

    /// Told whether the worker is paused, each time the loop looks.
    fn set_paused(&mut self, _paused: bool) {}

    /// What announces new work (ends an idle wait).
    fn work_signal(&self) -> Option<Arc<Notify>> {
        None
    }

    /// An idle wait was ended by new work.
    fn woken(&mut self) {}

    /// Ends a park early: a released quota hold. Never, by default.
    fn released(&self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// Run `worker` until `shutdown` turns true: while paused, wait for the resume (looking
/// again each second); otherwise step, then wait as the step said.
pub async fn run<W: Worker>(mut worker: W, mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            break;
        }
        let paused = worker.pause_gate().is_some_and(|(slot, shop)| slot.is_paused(shop));
        worker.set_paused(paused);
        if let Some((slot, _)) = worker.pause_gate().filter(|_| paused) {
            tokio::select! {
                _ = slot.resumed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        match worker.step().await {
            Wait::Now => continue,
            Wait::Idle(d) => {
                let signal = worker.work_signal();
                let announced = async {
                    match &signal {
                        Some(n) => n.notified().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = announced => worker.woken(),
                    _ = shutdown.changed() => {}
                }
            }
            Wait::Park(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = worker.released() => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its steps; answers from a script, then parks for long.
    struct Scripted {
        script: Vec<Wait>,
        steps: Arc<std::sync::atomic::AtomicUsize>,
        signal: Arc<Notify>,
        woken: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Worker for Scripted {
        async fn step(&mut self) -> Wait {
            self.steps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.script.is_empty() {
                Wait::Park(Duration::from_secs(3600))
            } else {
                self.script.remove(0)
            }
        }
        fn work_signal(&self) -> Option<Arc<Notify>> {
            Some(self.signal.clone())
        }
        fn woken(&mut self) {
            self.woken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    async fn until(what: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !what() {
            assert!(tokio::time::Instant::now() < deadline, "the loop did not get there within 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn steps_as_told_is_woken_from_idle_only_and_stops_on_shutdown() {
        use std::sync::atomic::Ordering::SeqCst;
        let steps = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let signal = Arc::new(Notify::new());
        let script = vec![Wait::Now, Wait::Now, Wait::Idle(Duration::from_secs(3600))];
        let worker = Scripted { script, steps: steps.clone(), signal: signal.clone(), woken: woken.clone() };
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(worker, stopped));
        // Two steps said "now", the third went idle for an hour.
        until(|| steps.load(SeqCst) == 3).await;
        signal.notify_one();
        // The announcement ended the idle wait; the fourth step parks for an hour.
        until(|| steps.load(SeqCst) == 4).await;
        assert_eq!(woken.load(SeqCst), 1);
        signal.notify_one();
        tokio::task::yield_now().await;
        assert_eq!(steps.load(SeqCst), 4, "new work does not end a park");
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("the loop ends on shutdown").unwrap();
        assert_eq!(steps.load(SeqCst), 4);
    }
}
