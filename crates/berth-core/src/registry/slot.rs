//! The live handle workers call a connector through. Activating a version swaps the
//! `Arc` under a lock, so the swap is atomic; a call holds the `Arc` it started with and
//! finishes on that version even when another becomes active meanwhile.

use super::shadow::{Shadow, ShadowReport};
use berth_types::shop::ShopConfig;
use berth_types::connector::{ConnectorError, Event, OrderPage, PullRequest, StockUpdate, UpdateResult, WebhookRequest};
use berth_runtime::tape::Tape;
use berth_runtime::{Call, CallError, LoadedConnector, Output};
use crate::credentials::{with_credentials, ConnectorRefresher, CredentialBook, CredentialError};
use crate::tape::journal::{RecordConfig, ShopJournal};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::Notify;

pub struct ConnectorSlot {
    pub name: String,
    /// Fixed for the slot's life: shops' settings are written for this platform.
    pub platform: String,
    active: RwLock<Arc<LoadedConnector>>,
    paused: AtomicBool,
    paused_shops: RwLock<BTreeSet<String>>,
    resumed: Notify,
    canary: RwLock<Option<Canary>>,
    shadow: RwLock<Option<Arc<Shadow>>>,
    /// The report of the last shadow run that ended.
    last_shadow: RwLock<Option<ShadowReport>>,
    /// Where the shops' renewed credentials are kept, when berth keeps them.
    credentials: std::sync::OnceLock<SlotCredentials>,
    /// The shops whose calls are recorded to tapes.
    journals: RwLock<BTreeMap<String, Arc<ShopJournal>>>,
}

/// The credential book the slot's calls take their tokens from, and how early they
/// refresh them.
struct SlotCredentials {
    book: Arc<CredentialBook>,
    margin_ms: i64,
}

/// A connector says an access token ran out with an `auth` error whose message says
/// `expired`; other auth errors (a wrong key, a revoked app) are not fixed by a refresh.
fn expired(e: &ConnectorError) -> bool {
    matches!(e, ConnectorError::Auth(why) if why.to_ascii_lowercase().contains("expired"))
}

fn token_expired(out: &Result<Output, CallError>) -> bool {
    match out {
        Ok(Output::Pull(Err(e)) | Output::Push(Err(e)) | Output::Webhook(Err(e))) => expired(e),
        _ => false,
    }
}

/// A candidate version serving some shops.
#[derive(Clone)]
pub struct Canary {
    pub version: Arc<LoadedConnector>,
    pub shops: BTreeSet<String>,
}

impl ConnectorSlot {
    pub fn new(active: Arc<LoadedConnector>, paused: bool, paused_shops: BTreeSet<String>) -> Self {
        ConnectorSlot {
            name: active.name.to_string(),
            platform: active.manifest.platform.clone(),
            active: RwLock::new(active),
            paused: AtomicBool::new(paused),
            paused_shops: RwLock::new(paused_shops),
            resumed: Notify::new(),
            canary: RwLock::new(None),
            shadow: RwLock::new(None),
            last_shadow: RwLock::new(None),
            credentials: std::sync::OnceLock::new(),
            journals: RwLock::default(),
        }
    }

    /// Record the calls of `rec.shops` to tapes under `dir/<shop>/`.
    pub fn record(&self, dir: &std::path::Path, rec: &RecordConfig) {
        let journals = rec.shops.iter().map(|shop| (shop.clone(), Arc::new(ShopJournal::new(&self.name, shop, dir.join(shop), rec)))).collect();
        *self.journals.write().unwrap_or_else(|e| e.into_inner()) = journals;
    }

    fn journal(&self, shop: &str) -> Option<Arc<ShopJournal>> {
        self.journals.read().unwrap_or_else(|e| e.into_inner()).get(shop).cloned()
    }

    /// Take shops' tokens from `book` (for the shops it holds), refreshing them
    /// `margin_ms` before they end and once when a call finds one expired.
    pub fn use_credentials(&self, book: Arc<CredentialBook>, margin_ms: i64) {
        let _ = self.credentials.set(SlotCredentials { book, margin_ms });
    }

    /// Whether the credential book holds `shop`'s tokens (then `access_token` and
    /// `refresh_token` come from it, not from the shop's config).
    /// Cluster mode, a node about to run `shop`: its copy of the shop's credentials
    /// brought up to the cluster's.
    pub async fn catch_up_credentials(&self, shop: &str) {
        if let Some(c) = self.credentials.get() {
            if let Err(e) = c.book.catch_up(shop).await {
                tracing::warn!(shop, error = %e, "cannot read the shop's credentials from the cluster; it starts on this node's copy");
            }
        }
    }

    pub fn holds_credentials(&self, shop: &str) -> bool {
        self.credentials.get().is_some_and(|c| matches!(c.book.state(shop), Ok(Some(_))))
    }

    /// `cfg` with the book's current tokens for `shop` (refreshed first when they end
    /// within the margin), and their generation; `cfg` itself for a shop the book does
    /// not hold. A refresh that fails leaves the current tokens: the call shows whether
    /// they still work. A shop that needs the merchant to authorize the app again makes
    /// no call: the platform refused its credentials already, so it fails here as `auth`.
    async fn credentialed(&self, conn: &Arc<LoadedConnector>, shop: &str, cfg: &Arc<ShopConfig>) -> Result<(Arc<ShopConfig>, Option<u64>), ConnectorError> {
        let Some(c) = self.credentials.get() else { return Ok((cfg.clone(), None)) };
        let refresher = ConnectorRefresher { connector: conn.clone(), config: cfg.clone() };
        let held = match c.book.fresh(shop, c.margin_ms, &refresher).await {
            Ok(held) => Some(held),
            // A shop whose credentials the book does not hold runs on its config.
            Err(CredentialError::Unknown(_)) => return Ok((cfg.clone(), None)),
            Err(e @ CredentialError::Reauthorize { .. }) => return Err(ConnectorError::Auth(format!("{e}; no call is made until then"))),
            Err(e) => {
                tracing::warn!(shop, error = %e, "the shop's credentials could not be refreshed; calling with the current ones");
                c.book.current(shop).ok()
            }
        };
        Ok(match held {
            Some((creds, generation)) => (with_credentials(cfg, &creds), Some(generation)),
            None => (cfg.clone(), None),
        })
    }

    /// After a call made with the credentials of `generation`: an expired token is
    /// refreshed (once per generation, whoever asks) and the config to retry with comes
    /// back; otherwise the credentials worked, and the previous ones can go.
    async fn after_call(&self, conn: &Arc<LoadedConnector>, shop: &str, cfg: &Arc<ShopConfig>, generation: u64, expired: bool, answered: bool) -> Option<Arc<ShopConfig>> {
        let c = self.credentials.get()?;
        if !expired {
            if answered {
                if let Err(e) = c.book.worked(shop, generation).await {
                    tracing::warn!(shop, error = %e, "cannot note that the shop's new credentials worked");
                }
            }
            return None;
        }
        let refresher = ConnectorRefresher { connector: conn.clone(), config: cfg.clone() };
        match c.book.refused(shop, generation, &refresher).await {
            Ok((creds, g)) if g != generation => Some(with_credentials(cfg, &creds)),
            Ok(_) => None,
            Err(e) => {
                tracing::error!(shop, error = %e, "the shop's access token expired and could not be renewed");
                None
            }
        }
    }

    /// The connector's health check for `shop`, with the shop's current credentials.
    pub async fn check(&self, conn: &Arc<LoadedConnector>, shop: &str, cfg: Arc<ShopConfig>) -> Result<Result<berth_types::connector::Health, ConnectorError>, CallError> {
        let (with, generation) = match self.credentialed(conn, shop, &cfg).await {
            Ok(held) => held,
            Err(e) => return Ok(Err(e)),
        };
        let out = conn.check(shop, with).await;
        let Some(generation) = generation else { return out };
        let expired = matches!(&out, Ok(Err(e)) if expired(e));
        match self.after_call(conn, shop, &cfg, generation, expired, out.is_ok()).await {
            Some(retry) => conn.check(shop, retry).await,
            None => out,
        }
    }

    /// One page of `shop`'s listings (0.4.0 `listings`), with the shop's current
    /// credentials (renewed and called again once when the token had expired).
    pub async fn listings(
        &self,
        conn: &Arc<LoadedConnector>,
        shop: &str,
        cfg: Arc<ShopConfig>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Result<berth_types::connector::ListingPage, ConnectorError>, CallError> {
        let (with, generation) = match self.credentialed(conn, shop, &cfg).await {
            Ok(held) => held,
            Err(e) => return Ok(Err(e)),
        };
        let out = conn.listings(shop, with, cursor, limit).await;
        let Some(generation) = generation else { return out };
        let expired = matches!(&out, Ok(Err(e)) if expired(e));
        match self.after_call(conn, shop, &cfg, generation, expired, out.is_ok()).await {
            Some(retry) => conn.listings(shop, retry, cursor, limit).await,
            None => out,
        }
    }

    /// Calls and failures over `window` of the versions serving now: the active one
    /// and a canary candidate.
    pub fn tally(&self, window: std::time::Duration) -> berth_runtime::call_stats::Tally {
        let mut t = self.current().calls.tally(window);
        if let Some(c) = self.canary() {
            let ct = c.version.calls.tally(window);
            t.calls += ct.calls;
            t.failures += ct.failures;
        }
        t
    }

    /// The active version.
    pub fn current(&self) -> Arc<LoadedConnector> {
        self.active.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The version a call for `shop` uses: the canary candidate for its shops, else the
    /// active one.
    pub fn for_shop(&self, shop: &str) -> Arc<LoadedConnector> {
        if let Some(c) = self.canary.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            if c.shops.contains(shop) {
                return c.version.clone();
            }
        }
        self.current()
    }

    pub fn canary(&self) -> Option<Canary> {
        self.canary.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_canary(&self, canary: Option<Canary>) {
        *self.canary.write().unwrap_or_else(|e| e.into_inner()) = canary;
    }

    /// Make `next` active; returns the version it replaced.
    pub(crate) fn swap(&self, next: Arc<LoadedConnector>) -> Arc<LoadedConnector> {
        std::mem::replace(&mut *self.active.write().unwrap_or_else(|e| e.into_inner()), next)
    }

    pub fn is_paused(&self, shop: &str) -> bool {
        self.paused.load(Ordering::Acquire) || self.paused_shops.read().unwrap_or_else(|e| e.into_inner()).contains(shop)
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    pub fn paused_shops(&self) -> BTreeSet<String> {
        self.paused_shops.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_paused(&self, shop: Option<&str>, paused: bool) {
        match shop {
            None => self.paused.store(paused, Ordering::Release),
            Some(s) => {
                let mut shops = self.paused_shops.write().unwrap_or_else(|e| e.into_inner());
                if paused {
                    shops.insert(s.to_string());
                } else {
                    shops.remove(s);
                }
            }
        }
        if !paused {
            self.resumed.notify_waiters();
        }
    }

    /// Take the pauses as a whole (a state another node wrote, in a cluster).
    pub(crate) fn set_pauses(&self, paused: bool, shops: BTreeSet<String>) {
        let was = self.paused.swap(paused, Ordering::AcqRel);
        let old = std::mem::replace(&mut *self.paused_shops.write().unwrap_or_else(|e| e.into_inner()), shops.clone());
        if (was && !paused) || old.iter().any(|s| !shops.contains(s)) {
            self.resumed.notify_waiters();
        }
    }

    pub fn shadow(&self) -> Option<Arc<Shadow>> {
        self.shadow.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_shadow(&self, shadow: Option<Arc<Shadow>>) {
        let old = std::mem::replace(&mut *self.shadow.write().unwrap_or_else(|e| e.into_inner()), shadow);
        if let Some(old) = old {
            *self.last_shadow.write().unwrap_or_else(|e| e.into_inner()) = Some(old.stop());
        }
    }

    pub fn last_shadow(&self) -> Option<ShadowReport> {
        self.last_shadow.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Run an export on `conn` (a version from [`ConnectorSlot::for_shop`]); while a
    /// shadow runs, the active version's calls are recorded and replayed to it.
    async fn run(&self, conn: &Arc<LoadedConnector>, shop: &str, cfg: Arc<ShopConfig>, call: Call) -> Result<Output, CallError> {
        let (with, generation) = match self.credentialed(conn, shop, &cfg).await {
            Ok(held) => held,
            Err(e) => return Ok(call.failed(e)),
        };
        let Some(generation) = generation else { return self.run_once(conn, shop, cfg, call).await };
        let out = self.run_once(conn, shop, with, call.clone()).await;
        match self.after_call(conn, shop, &cfg, generation, token_expired(&out), out.is_ok()).await {
            Some(retry) => self.run_once(conn, shop, retry, call).await,
            None => out,
        }
    }

    /// One call of an export, recorded while a shadow runs (and replayed to it) or while
    /// the shop's calls are recorded to a tape.
    async fn run_once(&self, conn: &Arc<LoadedConnector>, shop: &str, cfg: Arc<ShopConfig>, call: Call) -> Result<Output, CallError> {
        let shadow = self.shadow().filter(|_| conn.digest == self.current().digest);
        let journal = self.journal(shop);
        if shadow.is_none() && journal.is_none() {
            let (out, _) = conn.call(shop, cfg, call, Tape::Off).await;
            conn.note_outcome(&out);
            return out;
        }
        let (out, tape) = conn.call(shop, cfg.clone(), call.clone(), Tape::recording()).await;
        conn.note_outcome(&out);
        if let Some(journal) = journal {
            journal.append(conn, &cfg, &call, &out, &tape);
        }
        if let Some(shadow) = shadow {
            shadow.compare(shop, cfg, call, &out, tape);
        }
        out
    }

    pub async fn pull_orders(
        &self,
        conn: &Arc<LoadedConnector>,
        shop: &str,
        cfg: Arc<ShopConfig>,
        req: &PullRequest,
    ) -> Result<Result<OrderPage, ConnectorError>, CallError> {
        self.run(conn, shop, cfg, Call::Pull(req.clone())).await.map(Output::into_pull)
    }

    pub async fn push_inventory(
        &self,
        conn: &Arc<LoadedConnector>,
        shop: &str,
        cfg: Arc<ShopConfig>,
        updates: &[StockUpdate],
    ) -> Result<Result<Vec<UpdateResult>, ConnectorError>, CallError> {
        self.run(conn, shop, cfg, Call::Push(updates.to_vec())).await.map(Output::into_push)
    }

    pub async fn handle_webhook(
        &self,
        conn: &Arc<LoadedConnector>,
        shop: &str,
        cfg: Arc<ShopConfig>,
        req: &WebhookRequest,
    ) -> Result<Result<Vec<Event>, ConnectorError>, CallError> {
        self.run(conn, shop, cfg, Call::Webhook(req.clone())).await.map(Output::into_webhook)
    }

    /// Resolves when the connector or a shop is resumed (callers re-check `is_paused`).
    pub async fn resumed(&self) {
        self.resumed.notified().await
    }
}
