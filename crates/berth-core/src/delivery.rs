//! Delivering inbound orders to the ERP's webhook.
//!
//! One deliverer leases a batch from the order queue, posts it as JSON and acks it on a
//! 2xx answer. Anything else (a non-2xx status, a timeout, a refused connection) nacks
//! the batch with a backoff delay and pauses the deliverer for the same time, so an ERP
//! that is down is not hammered and its backlog waits in the durable queue. An order
//! that fails `[erp] max_attempts` deliveries moves to the dead letters
//! (`GET /v1/orders/queue`, replay with `POST /v1/orders/dead-letters/replay`).
//!
//! Delivery is at least once: a crash between the ERP's 2xx and the ack delivers the
//! batch again. Each order carries its queue token (`token.id` is stable across
//! redeliveries) for the ERP to drop repeats. Each request is signed when a secret is
//! configured: `X-Berth-Timestamp` (Unix ms) and
//! `X-Berth-Signature: sha256=HEX(HMAC-SHA256(secret, "{timestamp}.{body}"))`.

use crate::worker::Wait;
use berth_types::clock::now_ms;
use berth_types::Secret;
use crate::inbox::{LeasedOrder, OrderInbox};
use crate::queue::QueueError;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;
use serde::Deserialize;

/// What ops see about webhook delivery.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeliveryStatus {
    pub url_host: String,
    pub batches_delivered: u64,
    pub orders_delivered: u64,
    pub failures: u64,
    pub consecutive_failures: u32,
    pub last_success_ms: Option<i64>,
    pub last_error: Option<String>,
}

pub type SharedDeliveryStatus = Arc<Mutex<DeliveryStatus>>;

#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("the ERP webhook answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the ERP webhook could not be reached: {0}")]
    Transport(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

#[derive(Serialize)]
struct Delivery<'a> {
    orders: &'a [LeasedOrder],
}

pub struct ErpDeliverer {
    url: String,
    secret: Option<Secret>,
    batch: usize,
    /// `[erp] max_response_bytes`: one delivery carries at most this much (at least one order).
    max_bytes: usize,
    timeout: Duration,
    retry_base_ms: u64,
    retry_max_ms: u64,
    inbox: OrderInbox,
    client: reqwest::Client,
    pub status: SharedDeliveryStatus,
}

/// The signature header value for `body` sent at `timestamp_ms`.
pub fn signature(secret: &str, timestamp_ms: i64, body: &[u8]) -> String {
    let mac = berth_types::digest::hmac_sha256_parts(secret.as_bytes(), &[timestamp_ms.to_string().as_bytes(), b".", body]);
    format!("sha256={}", hex::encode(mac))
}

impl ErpDeliverer {
    /// `None` when no webhook is configured.
    pub fn from_config(cfg: &ErpConfig, inbox: OrderInbox) -> Result<Option<Self>, String> {
        let Some(url) = cfg.webhook_url.clone() else { return Ok(None) };
        let timeout = Duration::from_millis(cfg.webhook_timeout_ms);
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the webhook client: {e}"))?;
        let url_host = url::Url::parse(&url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
        Ok(Some(ErpDeliverer {
            url,
            secret: cfg.webhook_secret.clone(),
            batch: cfg.webhook_batch,
            max_bytes: cfg.max_response_bytes as usize,
            timeout,
            retry_base_ms: cfg.webhook_retry_base_ms,
            retry_max_ms: cfg.webhook_retry_max_ms,
            inbox,
            client,
            status: Arc::new(Mutex::new(DeliveryStatus { url_host, ..Default::default() })),
        }))
    }

    fn update(&self, f: impl FnOnce(&mut DeliveryStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let host = self.status.lock().unwrap_or_else(|e| e.into_inner()).url_host.clone();
        crate::worker::run(DeliveryLoop { deliverer: self, failures: 0 }, shutdown)
            .instrument(tracing::info_span!("erp_delivery", webhook_host = %host))
            .await
    }

    /// Deliver one batch; the number of orders delivered.
    async fn deliver_batch(&self, failures: u32) -> Result<usize, DeliveryError> {
        // The lease outlives one request with room to spare; an expired one only means
        // the batch may go out again (at least once).
        let leases = self.inbox.lease_within(self.batch, self.max_bytes, self.timeout + Duration::from_secs(30)).await?;
        if leases.is_empty() {
            return Ok(0);
        }
        match self.post(&leases).await {
            Ok(()) => {
                for l in &leases {
                    if let Err(e) = self.inbox.ack(&l.token).await {
                        tracing::warn!(id = l.token.id, error = %e, "delivered order could not be acked; it may be delivered again");
                    }
                }
                self.update(|s| {
                    s.batches_delivered += 1;
                    s.orders_delivered += leases.len() as u64;
                    s.consecutive_failures = 0;
                    s.last_success_ms = Some(now_ms());
                    s.last_error = None;
                });
                tracing::debug!(orders = leases.len(), "orders delivered to the ERP");
                Ok(leases.len())
            }
            Err(e) => {
                // Back in the queue after the same pause the deliverer takes.
                let delay = berth_types::backoff::delay(failures.saturating_add(1), self.retry_base_ms, self.retry_max_ms);
                let reason = e.to_string();
                for l in &leases {
                    self.inbox.nack(&l.token, delay, &reason).await.or_else(|e| match e {
                        QueueError::LeaseLost { .. } => Ok(()),
                        e => Err(e),
                    })?;
                }
                Err(e)
            }
        }
    }

    async fn post(&self, leases: &[LeasedOrder]) -> Result<(), DeliveryError> {
        let body = serde_json::to_vec(&Delivery { orders: leases }).expect("orders serialize");
        let ts = now_ms();
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-berth-timestamp", ts.to_string());
        if let Some(secret) = &self.secret {
            req = req.header("x-berth-signature", signature(secret.expose(), ts, &body));
        }
        let resp = req.body(body).send().await.map_err(|e| DeliveryError::Transport(e.without_url().to_string()))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        Err(DeliveryError::Status { status: status.as_u16(), body: berth_runtime::state::bounded(&text, 300).to_string() })
    }
}

/// How the ERP receives orders from the inbound queue: it leases them over HTTP, and/or
/// berth posts them to `webhook_url`. Each queued order goes to one of the two.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErpConfig {
    /// Leases (or webhook deliveries) of one order before it moves to the dead letters.
    pub max_attempts: u32,
    /// Idempotency keys of the order queue are forgotten after this long.
    pub idempotency_ttl_hours: u64,
    /// Post new orders here (JSON `{"orders": [...]}`); 2xx acknowledges the batch.
    pub webhook_url: Option<String>,
    /// Signs each delivery: `X-Berth-Signature: sha256=HEX(HMAC-SHA256(secret, "{X-Berth-Timestamp}.{body}"))`.
    pub webhook_secret: Option<Secret>,
    /// Orders per delivery.
    pub webhook_batch: usize,
    pub webhook_timeout_ms: u64,
    /// Backoff after a failed delivery: base doubling up to max, with jitter.
    pub webhook_retry_base_ms: u64,
    pub webhook_retry_max_ms: u64,
    /// Bytes of orders one answer carries (`GET /v1/orders`, a lease, a webhook
    /// delivery), at least one order; read on with `next_after` or another lease.
    pub max_response_bytes: u64,
}

impl Default for ErpConfig {
    fn default() -> Self {
        ErpConfig {
            max_attempts: 20,
            idempotency_ttl_hours: 168,
            webhook_url: None,
            webhook_secret: None,
            webhook_batch: 50,
            webhook_timeout_ms: 10_000,
            webhook_retry_base_ms: 1_000,
            webhook_retry_max_ms: 300_000,
            max_response_bytes: 8 * 1024 * 1024,
        }
    }
}

impl ErpConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("erp.max_attempts must be at least 1".into());
        }
        if let Some(u) = &self.webhook_url {
            let ok = url::Url::parse(u).is_ok_and(|p| matches!(p.scheme(), "http" | "https") && p.host().is_some());
            if !ok {
                return Err(format!("erp.webhook_url `{u}` must be an http:// or https:// URL"));
            }
        }
        if self.max_response_bytes < 1024 {
            return Err("erp.max_response_bytes must be at least 1024".into());
        }
        if self.idempotency_ttl_hours == 0 {
            return Err("erp.idempotency_ttl_hours must be at least 1".into());
        }
        if !(1..=1000).contains(&self.webhook_batch) || self.webhook_timeout_ms == 0 {
            return Err("erp.webhook_batch must be 1..=1000 and erp.webhook_timeout_ms positive".into());
        }
        if self.webhook_retry_base_ms == 0 || self.webhook_retry_max_ms < self.webhook_retry_base_ms {
            return Err("erp.webhook_retry_base_ms must be positive and not above erp.webhook_retry_max_ms".into());
        }
        Ok(())
    }
}

/// Delivery as a [`crate::worker::Worker`]: batches back to back while the queue has
/// orders, a short look every 200 ms when empty, backoff after a failed post.
struct DeliveryLoop {
    deliverer: ErpDeliverer,
    /// Failed posts in a row.
    failures: u32,
}

impl crate::worker::Worker for DeliveryLoop {
    async fn step(&mut self) -> Wait {
        let d = &self.deliverer;
        match d.deliver_batch(self.failures).await {
            Ok(0) => Wait::Idle(Duration::from_millis(200)),
            Ok(_) => {
                self.failures = 0;
                Wait::Now
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                let failures = self.failures;
                let wait = berth_types::backoff::delay(failures, d.retry_base_ms, d.retry_max_ms);
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "order delivery to the ERP failed");
                d.update(|s| {
                    s.failures += 1;
                    s.consecutive_failures = failures;
                    s.last_error = Some(e.to_string());
                });
                Wait::Park(wait)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_over_timestamp_and_body() {
        // Computed independently: printf '1700000000000.{"orders":[]}' | openssl dgst -sha256 -hmac s3cret
        assert_eq!(
            signature("s3cret", 1_700_000_000_000, br#"{"orders":[]}"#),
            "sha256=d798d6b979c06213a3071aebc2305ee07d8f237ce14884beb58792f16fa4bd59"
        );
    }
}
