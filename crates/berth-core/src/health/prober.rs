//! One shop's probe loop: the connector's `check` on the tier's interval.

use super::{HealthBook, ProbeResult, MAX_MESSAGE};
use berth_types::shop::{ShopConfig, Tier};
use crate::registry::ConnectorSlot;
use berth_runtime::{call_error_outcome, error_outcome};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

pub struct Prober {
    pub shop: String,
    pub tier: Tier,
    pub config: Arc<ShopConfig>,
    pub connector: Arc<ConnectorSlot>,
    pub book: Arc<HealthBook>,
}

impl Prober {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let span = tracing::info_span!("probe", shop = %self.shop, connector = %self.connector.name, tier = ?self.tier);
        async move {
            let every = self.book.probe_interval(self.tier);
            // Spread first probes so a thousand shops starting together do not probe at once.
            let mut next = Duration::from_millis(rand::random::<u64>() % every.min(Duration::from_secs(5)).as_millis().max(1) as u64);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(next) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                next = every;
                if self.connector.is_paused(&self.shop) {
                    self.book.set_paused(&self.shop, true);
                    continue;
                }
                let result = self.probe().await;
                if !result.up {
                    tracing::warn!(outcome = %result.outcome, message = %result.message, "probe failed");
                }
                self.book.record(&self.shop, result);
            }
        }
        .instrument(span)
        .await
    }

    async fn probe(&self) -> ProbeResult {
        let started = Instant::now();
        let version = self.connector.for_shop(&self.shop);
        let r = self.connector.check(&version, &self.shop, self.config.clone()).await;
        let (up, outcome, message) = match r {
            Ok(Ok(h)) if h.ok => (true, "ok", h.message),
            Ok(Ok(h)) => (false, "unhealthy", h.message),
            Ok(Err(e)) => {
                let outcome = error_outcome(&e);
                // A throttle is the platform answering: up, just not for more calls now.
                (outcome == "rate_limited", outcome, format!("{e:?}"))
            }
            Err(e) => (false, call_error_outcome(&e), e.to_string()),
        };
        ProbeResult {
            at_ms: berth_types::clock::now_ms(),
            up,
            outcome: outcome.to_string(),
            message: berth_runtime::state::bounded(&message, MAX_MESSAGE).to_string(),
            latency_ms: started.elapsed().as_millis() as u64,
        }
    }
}
