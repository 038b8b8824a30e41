//! Platform webhooks: `POST /v1/webhooks/{shop}` hands the raw request to the shop's
//! connector, which verifies the platform's signature and turns it into events. Orders
//! it carries go the same way as pulled ones — queued for the ERP (idempotent per
//! version), then into the store, both durably — before berth answers 200, so a platform
//! that sees an error delivers again and nothing is lost or queued twice. An event that
//! only names a changed order wakes the shop's pull.

use berth_types::shop::ShopConfig;
use crate::inbox::{OrderInbox, QueuedOrder};
use berth_types::connector::{Event, WebhookRequest};
use berth_types::retry::ErrorKind;
use crate::failure::Failure;
use crate::registry::ConnectorSlot;
use crate::store::{OrderData, OrderStore, PageOutcome, PageSource};
use crate::sync::to_record;
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::Notify;
use tracing::Instrument;

/// Headers handed to a connector: at most this many, each at most this long.
const MAX_HEADERS: usize = 64;
const MAX_HEADER_LEN: usize = 4096;

/// What the ingest path needs per shop.
pub struct WebhookShop {
    pub connector: Arc<ConnectorSlot>,
    pub config: Arc<ShopConfig>,
    /// The shop's pull worker.
    pub wake_sync: Arc<Notify>,
    /// New orders per shop per hour, shared with the pull worker.
    pub budgets: Arc<crate::order_budget::OrderBudgets>,
    /// The shop's webhook calls running at once (`max_webhook_calls_per_shop`).
    pub running: Arc<tokio::sync::Semaphore>,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Ingested {
    /// Order versions new to berth (queued for the ERP and stored).
    pub orders_new: usize,
    /// Order versions berth already had.
    pub orders_known: usize,
    /// Orders the platform only named; the shop's pull was woken for them.
    pub orders_changed: usize,
    pub stock_events: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The platform's signature or credentials did not check out: 401.
    #[error("webhook refused: {0}")]
    Unauthorized(String),
    /// The request cannot be taken as it is: 400 (the platform should not retry it).
    #[error("webhook refused: {0}")]
    Invalid(String),
    /// The push was read, but what it carries cannot be an order berth keeps (an id past
    /// its bound, too many events): 422, not to be sent again.
    #[error("webhook refused: {0}")]
    Unprocessable(String),
    /// Could not be handled now: 503, the platform retries.
    #[error("webhook not handled, retry: {0}")]
    Unavailable(String),
    /// A bound of berth's is reached for this shop (its order budget, its webhook
    /// calls running): 429, the platform retries after `retry_after_secs`.
    #[error("webhook not handled, retry later: {why}")]
    TooMany { why: String, retry_after_secs: u64 },
}

/// Take orders that did not come from a pull (a webhook, a CSV import): queue the
/// versions berth has not seen for the ERP, then store them, both durably — the same
/// order as pulls (see inbox.rs), so nothing is lost or queued twice. With `intake`, the
/// new versions must fit the shop's order budget, or nothing is taken.
pub async fn accept_orders(
    src: &PageSource<'_>,
    orders: &[OrderData],
    inbox: &OrderInbox,
    store: &OrderStore,
    intake: Option<&crate::sync::Intake<'_>>,
) -> Result<PageOutcome, crate::sync::PageError> {
    let fresh = QueuedOrder::new_versions(src, orders, store).await?;
    if let Some(i) = intake {
        i.budgets.take(src.shop, i.connector, fresh.len(), i.limit, berth_types::clock::now_ms()).map_err(crate::sync::PageError::Held)?;
    }
    inbox.deliver(fresh).await?;
    Ok(store.commit_pushed(src, orders).await?)
}

pub async fn ingest(
    shop: &str,
    target: &WebhookShop,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    inbox: &OrderInbox,
    store: &OrderStore,
) -> Result<Ingested, IngestError> {
    if target.connector.is_paused(shop) {
        return Err(IngestError::Unavailable(format!("the shop's connector `{}` is paused by ops", target.connector.name)));
    }
    let conn = target.connector.for_shop(shop);
    // A flood of webhooks for one shop is answered at once, never queued: the platform
    // sends them again, and the shop's pulls and other shops keep their instances.
    let Ok(_running) = target.running.clone().try_acquire_owned() else {
        conn.limit_hit("webhook_busy", 1);
        return Err(IngestError::TooMany {
            why: format!("{} webhook calls of this shop are running (max_webhook_calls_per_shop)", conn.limits.max_webhook_calls_per_shop),
            retry_after_secs: 1,
        });
    };
    let span = tracing::info_span!("webhook", shop = %shop, connector = %conn.name, version = %conn.version());
    async move {
        let headers = headers
            .into_iter()
            .filter(|(k, v)| k.len() + v.len() <= MAX_HEADER_LEN)
            .take(MAX_HEADERS)
            .collect();
        let req = WebhookRequest { headers, body };
        let events = match target.connector.handle_webhook(&conn, shop, target.config.clone(), &req).await {
            Err(call @ (berth_runtime::CallError::Busy { .. } | berth_runtime::CallError::NoInstance { .. })) => {
                conn.limit_hit("webhook_busy", 1);
                return Err(IngestError::TooMany { why: call.to_string(), retry_after_secs: 1 });
            }
            Err(call @ (berth_runtime::CallError::OutputTooLarge { .. } | berth_runtime::CallError::BadOutput { .. })) => {
                // What the push turned into cannot be taken (an id past its bound, a time
                // of year 10000): sent again it would be refused again, so the platform
                // is told not to (422), and berth logs what it was.
                tracing::warn!(error = %call, "a webhook's events cannot be taken as orders");
                return Err(IngestError::Unprocessable(call.to_string()));
            }
            Err(call) => {
                // The platform gets what happened, not the guest's trap text: that is
                // for the log.
                tracing::warn!(error = %call, "the connector failed on a webhook");
                return Err(IngestError::Unavailable(format!(
                    "the shop's connector failed ({}); berth logged the details",
                    berth_runtime::call_error_outcome(&call)
                )));
            }
            // The platform sent it; what it should do next is the answer (nothing here is
            // retried by berth: the platform redelivers what was not taken).
            Ok(Err(e)) => {
                return Err(match Failure::of_connector(e) {
                    Failure::Failed { kind: ErrorKind::Auth, why } => IngestError::Unauthorized(why),
                    Failure::Failed { kind: ErrorKind::InvalidInput | ErrorKind::Permanent, why } => IngestError::Invalid(why),
                    Failure::Throttled(wait) => IngestError::Unavailable(format!("the connector asked to wait {} ms", wait.as_millis())),
                    Failure::Failed { why, .. } | Failure::Isolated { why, .. } => IngestError::Unavailable(why),
                    Failure::HeldBack(wait) => IngestError::Unavailable(format!("the quota is held for {} ms", wait.as_millis())),
                })
            }
            Ok(Ok(events)) => events,
        };
        let mut out = Ingested::default();
        let mut orders = Vec::new();
        for e in events {
            match e {
                Event::OrderUpserted(o) => orders.push(to_record(o)),
                Event::OrderChanged(_) => out.orders_changed += 1,
                Event::StockChanged(_) => out.stock_events += 1,
            }
        }
        let src = PageSource { shop, platform: &conn.manifest.platform, connector_version: conn.version() };
        let intake = crate::sync::Intake { budgets: &target.budgets, connector: &conn.name, limit: conn.limits.max_orders_per_shop_per_hour };
        let outcome = match accept_orders(&src, &orders, inbox, store, Some(&intake)).await {
            Ok(outcome) => outcome,
            Err(crate::sync::PageError::Held(held)) => {
                conn.limit_hit("order_budget", 1);
                let retry_after_secs = ((held.until_ms - berth_types::clock::now_ms()) / 1000).clamp(1, 3600) as u64;
                return Err(IngestError::TooMany { why: held.reason(), retry_after_secs });
            }
            Err(e) => return Err(IngestError::Unavailable(e.to_string())),
        };
        out.orders_new = outcome.added;
        out.orders_known = outcome.duplicates;
        if out.orders_changed > 0 {
            target.wake_sync.notify_one();
        }
        tracing::info!(new = out.orders_new, known = out.orders_known, changed = out.orders_changed, "webhook ingested");
        Ok(out)
    }
    .instrument(span)
    .await
}
