//! Order pull workers: one per shop.
//!
//! Each worker walks modification-time windows no wider than the connector's
//! `max-window-ms`, starting `overlap` before the last window's end so late updates are
//! caught, and pages through each window with the connector's own cursor. Every page is
//! committed together with the new position, so a restart resumes mid-window. Errors are
//! handled on the platform's terms: `rate-limited` parks the shop for the time the
//! platform asked without counting an attempt; errors the platform's retry policy
//! retries (by default `transient`, traps and timeouts) back off exponentially with
//! jitter; the others, and a pull that used up `max_attempts`, pause for longer and are
//! shown on the shop's status.

use berth_types::clock::now_ms;
use berth_types::shop::ShopConfig;
use berth_types::connector::{
    Order, PullRequest, TimeWindow,
};
use crate::inbox::{OrderInbox, QueuedOrder};
use berth_types::retry::{Decision, ErrorKind, Job};
use crate::registry::ConnectorSlot;
use berth_runtime::LoadedConnector;
use crate::queue::QueueError;
use crate::failure::Failure;
use crate::worker::Wait;
use crate::store::{OrderData, OrderLineRecord, OrderStore, PageOutcome, PageSource, StoreError, SyncState, WindowProgress};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;
use serde::Deserialize;

/// What ops and tests see about one shop's pulls.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ShopStatus {
    pub shop: String,
    pub connector: String,
    pub platform: String,
    pub tier: String,
    /// Windows read to the end.
    pub windows_completed: u64,
    pub pages: u64,
    pub orders_added: u64,
    pub duplicates_skipped: u64,
    pub throttled: u64,
    pub errors: u64,
    /// Orders the connector returned outside the window it was asked for: dropped.
    pub outside_window: u64,
    /// Why the shop's intake is held by a host bound (its order budget), while it is.
    pub held: Option<String>,
    /// Paused by ops (the connector or this shop).
    pub paused: bool,
    pub watermark_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
    pub last_error: Option<String>,
}

pub type SharedStatus = Arc<Mutex<ShopStatus>>;

pub struct ShopWorker {
    pub shop: String,
    pub config: Arc<ShopConfig>,
    /// Resolved per step, so a newly activated version is used from the next page on.
    pub connector: Arc<ConnectorSlot>,
    pub store: Arc<OrderStore>,
    pub inbox: OrderInbox,
    pub defaults: SyncDefaults,
    pub status: SharedStatus,
    /// Notified when the platform says an order changed (a webhook): pull now.
    pub wake: Arc<tokio::sync::Notify>,
    /// New orders per shop per hour (see order_budget.rs).
    pub budgets: Arc<crate::order_budget::OrderBudgets>,
}

/// A shop's sync as a [`crate::worker::Worker`]: the retry count and the chase after a
/// webhook's wake-up live between steps.
struct SyncLoop {
    worker: ShopWorker,
    poll: Duration,
    attempt: u32,
    /// Until when idle waits are kept short after a wake-up (see `wait_after`).
    chase_until: Option<std::time::Instant>,
}

impl crate::worker::Worker for SyncLoop {
    async fn step(&mut self) -> Wait {
        let w = &self.worker;
        let conn = w.connector.for_shop(&w.shop);
        let step = w.step(&conn).instrument(tracing::info_span!("pull", version = %conn.version())).await;
        w.wait_after(step, &conn, self.poll, &mut self.attempt, self.chase_until)
    }

    fn pause_gate(&self) -> Option<(&ConnectorSlot, &str)> {
        Some((&self.worker.connector, &self.worker.shop))
    }

    fn set_paused(&mut self, paused: bool) {
        self.worker.update(|s| s.paused = paused);
    }

    fn work_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.worker.wake.clone())
    }

    fn woken(&mut self) {
        let settle = Duration::from_secs(u64::from(self.worker.defaults.settle_secs) + 2);
        self.chase_until = Some(std::time::Instant::now() + settle);
    }

    fn released(&self) -> impl std::future::Future<Output = ()> + Send {
        let conn = self.worker.connector.for_shop(&self.worker.shop);
        async move { conn.quota_released().await }
    }
}

/// What to do after one step.
enum Next {
    /// More to read now.
    Continue,
    /// Caught up: wait for the poll interval.
    Idle,
    Wait(Duration),
}

pub fn to_record(o: Order) -> OrderData {
    let raw = serde_json::from_str(&o.raw_json).unwrap_or(serde_json::Value::String(o.raw_json));
    OrderData {
        order_id: o.order_id,
        status: o.status,
        platform_status: o.platform_status,
        created_at_ms: o.created_at_ms,
        updated_at_ms: o.updated_at_ms,
        currency: o.currency,
        total_minor: o.total_minor,
        lines: o
            .lines
            .into_iter()
            .map(|l| OrderLineRecord {
                line_id: l.line_id,
                sku: l.sku,
                title: l.title,
                quantity: l.quantity,
                unit_price_minor: l.unit_price_minor,
            })
            .collect(),
        buyer_name_masked: o.buyer_name_masked,
        buyer_phone_masked: o.buyer_phone_masked,
        raw,
    }
}

impl ShopWorker {
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let span = tracing::info_span!(
            "shop_sync",
            shop = %self.shop,
            connector = %self.connector.name,
        );
        let poll = Duration::from_secs(self.config.poll_interval_secs());
        crate::worker::run(SyncLoop { worker: self, poll, attempt: 0, chase_until: None }, shutdown).instrument(span).await
    }

    /// How long to wait after a step: not at all after a page; the poll interval once
    /// caught up (a second while chasing an order a push named); what the platform or
    /// the retry policy says after a failure; the error pause once the policy gives up.
    fn wait_after(
        &self,
        step: Result<Next, StepError>,
        conn: &LoadedConnector,
        poll: Duration,
        attempt: &mut u32,
        chase_until: Option<std::time::Instant>,
    ) -> Wait {
        match step {
            Ok(Next::Continue) => {
                *attempt = 0;
                Wait::Now
            }
            Ok(Next::Idle) => {
                *attempt = 0;
                // After a push named a changed order, look again each second
                // until the settled edge has passed the time of the push.
                Wait::Idle(match chase_until {
                    Some(t) if std::time::Instant::now() < t => poll.min(Duration::from_secs(1)),
                    _ => poll,
                })
            }
            Ok(Next::Wait(d)) => Wait::Park(d),
            Err(StepError::Failed(kind, why)) => {
                *attempt = attempt.saturating_add(1);
                let policy = conn.retry_policy(Job::Pull);
                if let Decision::Retry(d) = policy.decide(kind, *attempt) {
                    tracing::warn!(attempt = *attempt, ?kind, retry_in_ms = d.as_millis() as u64, error = %why, "pull failed; retrying");
                    self.note_error(why);
                    Wait::Park(d)
                } else {
                    let pause = Duration::from_secs(self.defaults.error_pause_secs).max(poll);
                    let why = policy.gave_up(kind, *attempt, &why);
                    tracing::error!(error = %why, pause_secs = pause.as_secs(), "pull failed and needs attention; pausing");
                    self.note_error(why);
                    *attempt = 0;
                    Wait::Park(pause)
                }
            }
            Err(StepError::Pause(why)) => {
                tracing::error!(error = %why, "pull failed and needs attention; pausing");
                self.note_error(why);
                Wait::Park(Duration::from_secs(self.defaults.error_pause_secs).max(poll))
            }
        }
    }

    fn note_error(&self, why: String) {
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        st.errors += 1;
        st.last_error = Some(why);
    }

    fn update(&self, f: impl FnOnce(&mut ShopStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The window to read next, or `None` when caught up.
    fn next_window(&self, conn: &LoadedConnector, state: &SyncState, now: i64) -> Option<WindowProgress> {
        if let Some(cur) = &state.current {
            return Some(cur.clone());
        }
        // Whole seconds: platforms filter on second-granular times.
        let edge = (now - self.defaults.settle_secs as i64 * 1000).div_euclid(1000) * 1000;
        let start = match state.watermark_ms {
            Some(w) => {
                if w >= edge {
                    return None;
                }
                w - self.defaults.overlap_secs as i64 * 1000
            }
            None => edge - self.defaults.initial_lookback_hours as i64 * 3_600_000,
        };
        let width = conn.manifest.max_window_ms.map(|w| w as i64).unwrap_or(i64::MAX);
        let end = edge.min(start.saturating_add(width));
        (end > start).then_some(WindowProgress { start_ms: start, end_ms: end, cursor: None, pages: 0 })
    }

    async fn step(&self, conn: &Arc<LoadedConnector>) -> Result<Next, StepError> {
        let state = self.store.sync_state(&self.shop).await.map_err(StepError::store)?;
        let now = now_ms();
        let Some(window) = self.next_window(conn, &state, now) else {
            return Ok(Next::Idle);
        };
        let req = PullRequest {
            window: TimeWindow { start_ms: window.start_ms, end_ms: window.end_ms },
            page_cursor: window.cursor.clone(),
        };
        let page = match Failure::check(self.connector.pull_orders(conn, &self.shop, self.config.clone(), &req).await) {
            Ok(page) => page,
            Err(Failure::HeldBack(wait)) => {
                tracing::debug!(wait_ms = wait.as_millis() as u64, "the quota is held or its bucket is full; waiting");
                self.update(|s| s.throttled += 1);
                return Ok(Next::Wait(wait));
            }
            Err(Failure::Isolated { wait, why }) => {
                tracing::warn!(wait_ms = wait.as_millis() as u64, "connector isolated by its circuit breaker; waiting");
                self.update(|s| s.last_error = Some(why));
                return Ok(Next::Wait(wait));
            }
            Err(Failure::Throttled(wait)) => {
                tracing::info!(wait_ms = wait.as_millis() as u64, "platform throttled; parking the shop");
                self.update(|s| s.throttled += 1);
                return Ok(Next::Wait(wait));
            }
            Err(Failure::Failed { kind: ErrorKind::InvalidInput, why }) => {
                // A cursor the connector no longer understands must not wedge the shop:
                // restart the window from its first page (duplicates are filtered).
                let restart = SyncState {
                    watermark_ms: state.watermark_ms,
                    current: Some(WindowProgress { cursor: None, pages: 0, ..window.clone() }),
                };
                if window.cursor.is_some() {
                    self.store
                        .commit_page(&self.source(conn), &[], &restart)
                        .await
                        .map_err(StepError::store)?;
                }
                return Err(StepError::Failed(ErrorKind::InvalidInput, why));
            }
            Err(Failure::Failed { kind, why }) => return Err(StepError::Failed(kind, why)),
        };
        let mut page = page;
        // The contract: orders updated within the window asked for. One outside it is
        // dropped (a genuinely later version comes with a later window) and counted.
        let asked = page.orders.len();
        page.orders.retain(|o| (window.start_ms..=window.end_ms).contains(&o.updated_at_ms));
        let outside = asked - page.orders.len();
        if outside > 0 {
            tracing::warn!(
                dropped = outside, window_start_ms = window.start_ms, window_end_ms = window.end_ms,
                "the connector returned orders updated outside the window asked for; dropped"
            );
            conn.limit_hit("outside_window", outside as u64);
            self.update(|s| s.outside_window += outside as u64);
        }
        let done = page.next_page_cursor.is_none();
        let pages = window.pages.saturating_add(1);
        if !done && pages >= self.defaults.max_pages_per_window {
            // An endless cursor: the window starts over after the error pause, so a
            // fixed version gets a fresh start and a broken one cannot page forever.
            let restart = SyncState { watermark_ms: state.watermark_ms, current: Some(WindowProgress { cursor: None, pages: 0, ..window.clone() }) };
            self.store.commit_page(&self.source(conn), &[], &restart).await.map_err(StepError::store)?;
            conn.limit_hit("pages_per_window", 1);
            return Err(StepError::Failed(
                ErrorKind::Permanent,
                format!(
                    "the connector paged the window {}..{} {pages} times without its cursor ending (sync.max_pages_per_window = {}); the window starts over after a pause",
                    window.start_ms, window.end_ms, self.defaults.max_pages_per_window
                ),
            ));
        }
        let next_state = if done {
            SyncState { watermark_ms: Some(window.end_ms), current: None }
        } else {
            SyncState {
                watermark_ms: state.watermark_ms,
                current: Some(WindowProgress { cursor: page.next_page_cursor.clone(), pages, ..window.clone() }),
            }
        };
        let orders: Vec<OrderData> = page.orders.into_iter().map(to_record).collect();
        let intake = Intake { budgets: &self.budgets, connector: &conn.name, limit: conn.limits.max_orders_per_shop_per_hour };
        let stored = store_page(&self.store, &self.inbox, &self.source(conn), &orders, &next_state, Some(&intake)).await;
        let outcome = match stored {
            Err(PageError::Held(held)) => {
                let wait = Duration::from_millis((held.until_ms - now_ms()).clamp(1_000, 60_000) as u64);
                if self.status.lock().unwrap_or_else(|e| e.into_inner()).held.is_none() {
                    tracing::error!(reason = %held.reason(), "the shop's order intake is held");
                    conn.limit_hit("order_budget", 1);
                }
                self.update(|s| s.held = Some(held.reason()));
                return Ok(Next::Wait(wait));
            }
            other => other.map_err(|e| match e {
                PageError::Queue(_) => StepError::Failed(ErrorKind::Transient, e.to_string()),
                PageError::Store(StoreError::Unavailable(_)) => StepError::Failed(ErrorKind::Transient, e.to_string()),
                PageError::Store(_) | PageError::Held(_) => StepError::Pause(e.to_string()),
            })?,
        };
        self.update(|s| s.held = None);
        tracing::debug!(added = outcome.added, duplicates = outcome.duplicates, window_done = done, "page stored");
        self.update(|s| {
            s.pages += 1;
            s.orders_added += outcome.added as u64;
            s.duplicates_skipped += outcome.duplicates as u64;
            s.last_success_ms = Some(now_ms());
            s.last_error = None;
            if done {
                s.windows_completed += 1;
                s.watermark_ms = Some(window.end_ms);
            }
        });
        if !done {
            return Ok(Next::Continue);
        }
        // Still catching up when the window ended well before now.
        let behind = now - window.end_ms > (self.defaults.settle_secs as i64 + 1) * 1000;
        Ok(if behind { Next::Continue } else { Next::Idle })
    }

    fn source<'a>(&'a self, conn: &'a LoadedConnector) -> PageSource<'a> {
        PageSource { shop: &self.shop, platform: &conn.manifest.platform, connector_version: conn.version() }
    }
}

/// Why a pulled page was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// Worth retrying the page: nothing was committed.
    #[error("cannot queue orders: {0}")]
    Queue(#[from] QueueError),
    #[error("cannot store orders: {0}")]
    Store(#[from] StoreError),
    /// The shop's order budget is spent: nothing was committed, try again later.
    #[error("{}", .0.reason())]
    Held(crate::order_budget::HeldIntake),
}

/// The shop's order budget a page or webhook spends (none for an operator's import).
pub struct Intake<'a> {
    pub budgets: &'a crate::order_budget::OrderBudgets,
    pub connector: &'a str,
    pub limit: u32,
}

/// Take a pulled page: queue the order versions berth has not seen for the ERP, then
/// commit the page with the shop's next position (see inbox.rs for why in that order),
/// both durably. With `intake`, the new versions must fit the shop's order budget, or
/// nothing is taken.
pub async fn store_page(
    store: &OrderStore,
    inbox: &OrderInbox,
    src: &PageSource<'_>,
    orders: &[OrderData],
    next: &SyncState,
    intake: Option<&Intake<'_>>,
) -> Result<PageOutcome, PageError> {
    let fresh = QueuedOrder::new_versions(src, orders, store).await?;
    if let Some(i) = intake {
        i.budgets.take(src.shop, i.connector, fresh.len(), i.limit, now_ms()).map_err(PageError::Held)?;
    }
    inbox.deliver(fresh).await?;
    Ok(store.commit_page(src, orders, next).await?)
}

impl StepError {
    /// A store failure: the cluster not taking a write now (a NATS server lost, a
    /// leader being elected) is retried like a transient platform failure; anything
    /// else (a full or failed disk) pauses longer.
    fn store(e: StoreError) -> StepError {
        match e {
            StoreError::Unavailable(_) => StepError::Failed(ErrorKind::Transient, e.to_string()),
            e => StepError::Pause(e.to_string()),
        }
    }
}

enum StepError {
    /// The platform's retry policy decides: back off and retry, or pause.
    Failed(ErrorKind, String),
    /// Storage failed; pause longer.
    Pause(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncDefaults {
    /// How far back the first pull of a new shop reaches.
    pub initial_lookback_hours: u32,
    /// Each window starts this far before the last one ended, to catch late updates.
    pub overlap_secs: u32,
    /// The newest edge of a window stays this far behind now, so a platform's own
    /// write lag does not hide an order at the edge.
    pub settle_secs: u32,
    /// Backoff for transient errors: base doubling up to max, with jitter.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Pause after an auth or permanent error before trying again.
    pub error_pause_secs: u64,
    /// Pages one window may take; a connector whose cursor has not ended by then fails
    /// the window (its cursor does not end) and the window starts over after a pause.
    pub max_pages_per_window: u32,
}

impl Default for SyncDefaults {
    fn default() -> Self {
        SyncDefaults {
            initial_lookback_hours: 72,
            overlap_secs: 120,
            settle_secs: 2,
            retry_base_ms: 1_000,
            retry_max_ms: 60_000,
            error_pause_secs: 60,
            max_pages_per_window: 2000,
        }
    }
}

impl SyncDefaults {
    pub fn check(&self) -> Result<(), String> {
        if self.max_pages_per_window == 0 {
            return Err("sync.max_pages_per_window must be at least 1".into());
        }
        if self.retry_base_ms == 0 || self.retry_max_ms < self.retry_base_ms {
            return Err("sync.retry_base_ms must be positive and not above sync.retry_max_ms".into());
        }
        Ok(())
    }
}
