//! One stock pusher per shop: takes the SKUs that are due, makes sure what it read is on
//! disk, pushes the newest quantities through the connector's `push-inventory` and
//! settles each SKU with the result. Throttling parks the shop for the time the platform
//! asked without spending attempts; failures back off per SKU by the platform's retry
//! policy and end in the dead letters after `max_attempts` (at once for errors the
//! policy does not retry); SKUs a connector did not get to stay due.

use super::{PushOutcome, SkuStock, StockLedger};
use berth_types::clock::now_ms;
use berth_types::shop::ShopConfig;
use berth_types::retry::{ErrorKind, Job};
use berth_types::connector::{StockUpdate, UpdateResult};
use crate::failure::Failure;
use crate::registry::ConnectorSlot;
use berth_runtime::LoadedConnector;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use crate::worker::Wait;
use tokio::sync::{watch, Notify};
use tracing::Instrument;

/// What ops see about one shop's stock pushes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PushStatus {
    /// `push-inventory` calls made.
    pub calls: u64,
    pub skus_accepted: u64,
    pub skus_rejected: u64,
    pub throttled: u64,
    pub errors: u64,
    pub last_push_ms: Option<i64>,
    pub last_error: Option<String>,
}

pub type SharedPushStatus = Arc<Mutex<PushStatus>>;

pub struct ShopPusher {
    pub shop: String,
    pub config: Arc<ShopConfig>,
    /// Resolved per batch, so a newly activated version pushes the next batch.
    pub connector: Arc<ConnectorSlot>,
    pub ledger: Arc<StockLedger>,
    /// Notified when the ERP submits new quantities for this shop.
    pub wake: Arc<Notify>,
    pub batch_size: usize,
    /// How long to hold off after an auth error (credentials need a person).
    pub error_pause: Duration,
    pub status: SharedPushStatus,
    /// Cluster mode: whether this node may change the platform right now (its leases
    /// are sound: `Leases::fresh`). Fencing refuses a stale owner's durable writes, not
    /// its HTTP calls: a node that wakes from a pause must not push what the shop's new
    /// owner has superseded.
    pub gate: Option<PlatformGate>,
    /// The platform its connector serves, its write guards (a pause of its pushes) and
    /// the shop's probes (which end a pause for the shop).
    pub platform: String,
    pub guards: Arc<super::guard::WriteGuards>,
    pub health: Arc<crate::health::HealthBook>,
}

/// How often a paused shop looks at its probes again.
const PAUSE_LOOK: Duration = Duration::from_secs(5);

/// Asked right before each call that changes a platform.
pub type PlatformGate = Arc<dyn Fn() -> bool + Send + Sync>;

/// How long a push waits when the platform gate is closed (the lease loop stops the
/// shop's workers, or the next heartbeat makes the leases sound again).
const GATE_WAIT: Duration = Duration::from_millis(500);

/// Longest idle wait; the ledger is checked again after it even without a wake-up.
const MAX_IDLE: Duration = Duration::from_secs(30);

/// Match the connector's answer to the batch: one outcome per SKU it answered for.
pub fn outcomes(batch: &[SkuStock], results: Vec<UpdateResult>) -> Vec<(String, u64, u32, PushOutcome)> {
    let mut by_sku: HashMap<String, UpdateResult> = HashMap::new();
    for r in results {
        by_sku.entry(r.sku.clone()).or_insert(r);
    }
    batch
        .iter()
        .filter_map(|rec| {
            let r = by_sku.remove(&rec.sku)?;
            let outcome = if r.accepted {
                PushOutcome::Accepted
            } else {
                PushOutcome::Rejected(berth_runtime::state::bounded(r.message.as_deref().unwrap_or("refused by the platform"), 512).to_string())
            };
            Some((rec.sku.clone(), rec.version, rec.quantity, outcome))
        })
        .collect()
}

impl ShopPusher {
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let span = tracing::info_span!(
            "stock_push",
            shop = %self.shop,
            connector = %self.connector.name,
        );
        crate::worker::run(self, shutdown).instrument(span).await
    }

    fn update(&self, f: impl FnOnce(&mut PushStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn note_error(&self, why: String) {
        self.update(|s| {
            s.errors += 1;
            s.last_error = Some(why);
        });
    }

    /// A push call answered (or failed as the platform's failure) for the platform's
    /// success rate; a pause it starts is said in the shop's status.
    fn count_push(&self, succeeded: bool) {
        if let Some(pause) = self.guards.record_push(&self.platform, succeeded) {
            self.note_error(format!("stock pushes to {} paused: {}", pause.platform, pause.reason));
        }
    }

    /// The whole batch failed with `kind`: back off per the platform's retry policy, or
    /// move straight to the dead letters when the policy does not retry `kind`.
    async fn fail_all(&self, conn: &LoadedConnector, batch: &[SkuStock], kind: ErrorKind, why: String) -> Result<Wait, String> {
        let policy = conn.retry_policy(Job::Push);
        let retried = policy.retries(kind, 0);
        let outcome = if retried {
            tracing::warn!(skus = batch.len(), kind = kind.name(), error = %why, "stock push failed; SKUs back off");
            PushOutcome::Failed(why.clone())
        } else {
            tracing::error!(skus = batch.len(), kind = kind.name(), error = %why, "stock push failed with an error the platform's policy does not retry; SKUs moved to the dead letters");
            PushOutcome::GaveUp(policy.gave_up(kind, 0, &why))
        };
        let failed: Vec<_> = batch.iter().map(|r| (r.sku.clone(), r.version, r.quantity, outcome.clone())).collect();
        self.note_error(why);
        self.ledger.settle_with(&self.shop, &failed, &policy).await.map_err(|e| e.to_string())?;
        Ok(Wait::Now)
    }

    /// Push one batch of due SKUs and settle them.
    async fn push_batch(&self, conn: &Arc<LoadedConnector>) -> Result<Wait, String> {
        let now = now_ms();
        let batch = self.ledger.due(&self.shop, now, self.batch_size).map_err(|e| e.to_string())?;
        if batch.is_empty() {
            let next = self.ledger.next_due(&self.shop).map_err(|e| e.to_string())?;
            let wait = next.map_or(MAX_IDLE, |t| Duration::from_millis((t - now).max(1) as u64).min(MAX_IDLE));
            return Ok(Wait::Idle(wait));
        }
        // The platform failing writes: wait for an operator or the shop's probes.
        let probe = self.health.shop(&self.shop).and_then(|h| h.last_probe).map(|p| (p.up, p.at_ms));
        if let Some(why) = self.guards.paused(&self.platform, &self.shop, probe) {
            self.update(|s| s.last_error = Some(why));
            return Ok(Wait::Park(PAUSE_LOOK));
        }
        // Never push a quantity a crash could still take back (see mod.rs).
        self.ledger.durable().await.map_err(|e| e.to_string())?;
        let updates: Vec<StockUpdate> = batch.iter().map(|r| StockUpdate { sku: r.sku.clone(), quantity: r.quantity }).collect();
        if self.gate.as_ref().is_some_and(|may| !may()) {
            tracing::info!(skus = batch.len(), "this node's leases are not sound right now (cut off or just woken); the push waits");
            return Ok(Wait::Park(GATE_WAIT));
        }
        self.update(|s| s.calls += 1);
        let answer = self.connector.push_inventory(conn, &self.shop, self.config.clone(), &updates).await;
        let results = match Failure::check(answer) {
            Ok(results) => results,
            Err(Failure::HeldBack(wait)) => {
                // berth's own limiter: the SKUs stay due and spend no attempt.
                self.update(|s| s.throttled += 1);
                return Ok(Wait::Park(wait));
            }
            Err(Failure::Isolated { wait, why }) => {
                // The SKUs stay due and spend no attempt: push once the connector serves.
                tracing::warn!(wait_ms = wait.as_millis() as u64, "connector isolated by its circuit breaker; stock pushes wait");
                self.update(|s| s.last_error = Some(why));
                return Ok(Wait::Park(wait));
            }
            Err(Failure::Throttled(wait)) => {
                tracing::info!(wait_ms = wait.as_millis() as u64, "platform throttled stock pushes; parking the shop");
                self.update(|s| s.throttled += 1);
                // Held and bounded by the runtime (see LoadedConnector::hold_for_throttle).
                return Ok(Wait::Park(wait));
            }
            Err(Failure::Failed { kind: ErrorKind::Auth, why }) => {
                // Credentials need a person; the SKUs stay due and spend no attempt.
                tracing::error!(error = %why, "platform refused the shop's credentials; stock pushes paused");
                self.note_error(format!("auth: {why}"));
                return Ok(Wait::Park(self.error_pause));
            }
            Err(Failure::Failed { kind, why }) => {
                self.count_push(false);
                return self.fail_all(conn, &batch, kind, why).await;
            }
        };
        self.count_push(true);
        let settled = outcomes(&batch, results);
        if settled.is_empty() {
            // Without this a connector that answers for nothing would be called in a loop.
            let why = "the connector answered for none of the SKUs it was given".to_string();
            return self.fail_all(conn, &batch, ErrorKind::Transient, why).await;
        }
        let accepted = settled.iter().filter(|o| o.3 == PushOutcome::Accepted).count() as u64;
        let rejected = settled.len() as u64 - accepted;
        let skipped = batch.len() - settled.len();
        tracing::debug!(accepted, rejected, skipped, "stock pushed");
        self.ledger.settle(&self.shop, &settled).await.map_err(|e| e.to_string())?;
        self.update(|s| {
            s.skus_accepted += accepted;
            s.skus_rejected += rejected;
            s.last_push_ms = Some(now_ms());
            if skipped == 0 {
                s.last_error = None;
            }
        });
        Ok(Wait::Now)
    }
}

/// A shop's pushes as a [`crate::worker::Worker`]: new quantities from the ERP end an
/// idle wait; a throttle parks the shop until its hold ends or is released.
impl crate::worker::Worker for ShopPusher {
    async fn step(&mut self) -> Wait {
        let conn = self.connector.for_shop(&self.shop);
        match self.push_batch(&conn).instrument(tracing::info_span!("push", version = %conn.version())).await {
            Ok(wait) => wait,
            Err(why) => {
                tracing::error!(error = %why, "stock ledger failed; retrying shortly");
                self.note_error(why);
                Wait::Park(Duration::from_secs(1))
            }
        }
    }

    fn pause_gate(&self) -> Option<(&ConnectorSlot, &str)> {
        Some((&self.connector, &self.shop))
    }

    fn work_signal(&self) -> Option<Arc<Notify>> {
        Some(self.wake.clone())
    }

    fn released(&self) -> impl std::future::Future<Output = ()> + Send {
        let conn = self.connector.for_shop(&self.shop);
        let guards = self.guards.clone();
        async move {
            // A quota hold released, or a push pause resumed by an operator.
            tokio::select! {
                () = conn.quota_released() => {}
                () = guards.resumed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stock::SkuState;

    fn rec(sku: &str, version: u64, quantity: u32) -> SkuStock {
        SkuStock {
            sku: sku.into(),
            quantity,
            seq: None,
            version,
            received_at_ms: 0,
            state: SkuState::Pending,
            attempts: 0,
            due_at_ms: Some(0),
            last_error: None,
            pushed_quantity: None,
            pushed_version: None,
            pushed_at_ms: None,
            export_batch: None,
            hold: None,
        }
    }

    #[test]
    fn outcomes_follow_the_batch_and_ignore_strangers() {
        let batch = [rec("A", 1, 5), rec("B", 2, 6), rec("C", 3, 7)];
        let results = vec![
            UpdateResult { sku: "B".into(), accepted: false, message: Some("unknown".into()) },
            UpdateResult { sku: "A".into(), accepted: true, message: None },
            UpdateResult { sku: "Z".into(), accepted: true, message: None },
        ];
        let out = outcomes(&batch, results);
        assert_eq!(out.len(), 2, "C was not answered and stays due; Z was not asked");
        assert_eq!(out[0], ("A".into(), 1, 5, PushOutcome::Accepted));
        assert_eq!(out[1], ("B".into(), 2, 6, PushOutcome::Rejected("unknown".into())));
    }
}
