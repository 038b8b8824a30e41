//! berth-sim: a marketplace simulator for tests and demos.
//!
//! It serves platform APIs on loopback the way the platforms behave (see
//! `shared/reference/platforms.md`): a Shopify-like REST API (access-token header, cursor
//! paging through `Link`, leaky-bucket throttling with 429 + `Retry-After` +
//! `X-Shopify-Shop-Api-Call-Limit`) and a Taobao-TOP-like router (MD5/HMAC signing over
//! sorted params checked strictly, `page_no` paging, one-day windows, HTTP 200 with error
//! code 7 when throttled), a Shopee-v2-like API (HMAC-SHA256 partner signing, 15-day
//! windows, cursor paging, list + detail calls, HTTP 429 without a wait) and a
//! WooCommerce-like long-tail store (Basic auth, page numbers with `X-WP-TotalPages`, a
//! WAF's 429 + `Retry-After`, HTML error pages). Order data is seeded deterministically. A control API under
//! `/_sim/` injects faults (5xx, timeouts, garbage bodies), changes limits, mutates orders
//! and reports what the simulator saw, so tests can assert on it.

pub mod data;
pub mod faults;
pub mod inventory;
pub mod profiles;
pub mod shopee;
pub mod shopee_auth;
pub mod shopify_graphql;
pub mod shopify;
pub mod taobao;
pub mod woo;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use data::{SeedRng, SimOrder};
use faults::{CallWindow, FaultKind, FaultQueue, LeakyBucket};
use inventory::StockItem;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Shopify,
    Taobao,
    Shopee,
    Woo,
}

impl Platform {
    /// The currency the platform's simulated shops sell and take orders in.
    pub fn currency(self) -> &'static str {
        match self {
            Platform::Shopify => "USD",
            Platform::Taobao => "CNY",
            Platform::Shopee => "SGD",
            Platform::Woo => "EUR",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    pub seed: u64,
    /// Seeded orders spread over this many hours before start.
    pub history_hours: u32,
    /// How long a `timeout` fault holds a request before answering 504.
    pub timeout_hold_ms: u64,
    pub shopify: ShopifyConfig,
    pub taobao: TaobaoConfig,
    pub shopee: ShopeeConfig,
    pub woo: WooConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShopeeConfig {
    pub partners: Vec<ShopeePartner>,
    pub shops: Vec<ShopeeShop>,
    /// Per shop: at most this many calls per `window_ms`; more get HTTP 429 until the
    /// window has passed again.
    pub calls_per_window: u32,
    pub window_ms: u64,
    /// Expiring access tokens and rotating refresh tokens (see shopee_auth.rs); without
    /// it a shop's configured access token never expires.
    pub tokens: Option<shopee_auth::ShopeeTokens>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShopeePartner {
    pub partner_id: u64,
    pub partner_key: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShopeeShop {
    pub shop_id: u64,
    pub partner_id: u64,
    pub access_token: String,
    pub orders: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WooConfig {
    pub sites: Vec<WooSite>,
    /// The site's WAF: at most this many requests per `window_ms`, then 429 with
    /// `Retry-After` until the window has passed again.
    pub requests_per_window: u32,
    pub window_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WooSite {
    pub name: String,
    pub consumer_key: String,
    pub consumer_secret: String,
    pub orders: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShopifyConfig {
    pub shops: Vec<ShopifyShop>,
    /// Leaky bucket per app + store (Shopify standard: 40, leaking 2/s).
    pub bucket_size: u32,
    pub leak_per_sec: f64,
    /// The GraphQL Admin API's cost bucket per app + store (see shopify_graphql.rs).
    pub graphql: shopify_graphql::GraphqlLimits,
    /// Apps whose tokens come from the client credentials grant.
    pub apps: Vec<shopify_graphql::ShopifyApp>,
    /// How long a token from the client credentials grant lives (Shopify: 24 h).
    pub token_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShopifyShop {
    pub name: String,
    pub access_token: String,
    pub orders: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaobaoConfig {
    pub apps: Vec<TaobaoApp>,
    pub shops: Vec<TaobaoShop>,
    /// Flow control per app: `calls_per_window` calls per `window_ms`, then a ban.
    pub calls_per_window: u32,
    pub window_ms: u64,
    pub ban_secs: u64,
    /// Allowed clock skew of the `timestamp` parameter.
    pub max_skew_secs: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaobaoApp {
    pub app_key: String,
    pub secret: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaobaoShop {
    pub nick: String,
    pub app_key: String,
    pub session: String,
    pub orders: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            history_hours: 72,
            timeout_hold_ms: 30_000,
            shopify: ShopifyConfig::default(),
            taobao: TaobaoConfig::default(),
            shopee: ShopeeConfig::default(),
            woo: WooConfig::default(),
        }
    }
}

impl Default for ShopifyConfig {
    fn default() -> Self {
        ShopifyConfig {
            shops: vec![ShopifyShop {
                name: "demo-shop".into(),
                access_token: "shpat_demo_token".into(),
                orders: 180,
            }],
            bucket_size: 40,
            leak_per_sec: 2.0,
            graphql: shopify_graphql::GraphqlLimits::default(),
            apps: Vec::new(),
            token_secs: 86_399,
        }
    }
}

impl Default for TaobaoConfig {
    fn default() -> Self {
        TaobaoConfig {
            apps: vec![TaobaoApp { app_key: "12345678".into(), secret: "demo_secret".into() }],
            shops: vec![TaobaoShop {
                nick: "demo-tmall".into(),
                app_key: "12345678".into(),
                session: "sess-demo".into(),
                orders: 240,
            }],
            calls_per_window: 10,
            window_ms: 1000,
            ban_secs: 2,
            max_skew_secs: 600,
        }
    }
}

impl Default for ShopeeConfig {
    fn default() -> Self {
        ShopeeConfig {
            partners: vec![ShopeePartner { partner_id: 2001887, partner_key: "demo_partner_key".into() }],
            shops: vec![ShopeeShop { shop_id: 14701711, partner_id: 2001887, access_token: "demo-shopee-token".into(), orders: 150 }],
            calls_per_window: 10,
            window_ms: 1000,
            tokens: None,
        }
    }
}

impl Default for WooConfig {
    fn default() -> Self {
        WooConfig {
            sites: vec![
                WooSite { name: "demo-woo".into(), consumer_key: "ck_demo".into(), consumer_secret: "cs_demo".into(), orders: 120 },
                WooSite {
                    name: "demo-woo-c".into(),
                    consumer_key: "ck_demo_c".into(),
                    consumer_secret: "cs_demo_c".into(),
                    orders: 90,
                },
            ],
            requests_per_window: 10,
            window_ms: 1000,
        }
    }
}

impl SimConfig {
    /// Every configured shop: (platform, the name the simulator keys it by).
    pub fn shops(&self) -> Vec<(Platform, String)> {
        self.shopify
            .shops
            .iter()
            .map(|s| (Platform::Shopify, s.name.clone()))
            .chain(self.taobao.shops.iter().map(|s| (Platform::Taobao, s.nick.clone())))
            .chain(self.shopee.shops.iter().map(|s| (Platform::Shopee, s.shop_id.to_string())))
            .chain(self.woo.sites.iter().map(|s| (Platform::Woo, s.name.clone())))
            .collect()
    }
}

/// What the simulator saw, per platform.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PlatformStats {
    pub requests: u64,
    pub ok: u64,
    pub throttled: u64,
    pub faults: u64,
    /// Refused for auth, signature or parameter errors.
    pub rejected: u64,
    /// Stock quantities written.
    pub stock_writes: u64,
    /// Requests that came before the wait a throttling answer asked for had passed
    /// (past [`ON_THE_WAY`] after the throttle: earlier ones may have been sent before
    /// the client had the answer).
    pub early_after_throttle: u64,
    /// Shopee: token refreshes answered.
    pub refreshes: u64,
    /// Shopee: calls made with an access token past its expiry.
    pub expired_token_calls: u64,
    /// Shopee: refreshes tried with a refresh token an earlier refresh had spent.
    pub spent_refresh_tokens: u64,
    /// Shopee: merchants sent back from the consent page with a code.
    pub consents: u64,
    /// Shopee: codes exchanged for a shop's first tokens.
    pub code_exchanges: u64,
}

/// How long after a throttling answer a request may still arrive that the client sent
/// before it had that answer (another call of the same shop already on its way, on a
/// busy machine). Those are not counted as early; a client that ignores the wait and
/// keeps retrying is, because a throttle answered while one is in force does not start
/// a new window.
pub const ON_THE_WAY: std::time::Duration = std::time::Duration::from_millis(250);

/// Per shop or quota: the wait a throttling answer asked for.
#[derive(Default)]
pub(crate) struct ToldToWait(HashMap<String, (std::time::Instant, std::time::Instant)>);

impl ToldToWait {
    /// Whether a request of `key` arriving `now` comes early: after the first throttle of
    /// the window in force plus [`ON_THE_WAY`], before its end.
    pub(crate) fn early(&self, key: &str, now: std::time::Instant) -> bool {
        self.0.get(key).is_some_and(|(since, until)| now < *until && now >= *since + ON_THE_WAY)
    }

    /// A throttle answered `now` asked to wait until `until`. While a window is in force
    /// it keeps its start and ends at the later of the two.
    pub(crate) fn told(&mut self, key: &str, now: std::time::Instant, until: std::time::Instant) {
        match self.0.get_mut(key) {
            Some((_, end)) if now < *end => *end = (*end).max(until),
            _ => {
                self.0.insert(key.to_string(), (now, until));
            }
        }
    }
}

pub(crate) struct Inner {
    pub rng: SeedRng,
    pub orders: HashMap<(Platform, String), BTreeMap<u64, SimOrder>>,
    /// Catalogue and stock per shop, by SKU code.
    pub inventory: HashMap<(Platform, String), BTreeMap<String, StockItem>>,
    pub faults: HashMap<Platform, FaultQueue>,
    pub buckets: HashMap<String, LeakyBucket>,
    /// Per shop or quota: the wait throttling answers asked for.
    pub told_to_wait: ToldToWait,
    pub windows: HashMap<String, CallWindow>,
    pub stats: BTreeMap<Platform, PlatformStats>,
    pub next_id: u64,
}

pub struct SimState {
    pub config: Mutex<SimConfig>,
    inner: Mutex<Inner>,
    /// Listeners serving this platform state (channel 0 is the one `start` opened).
    channels: Mutex<Vec<ChannelStats>>,
    /// Shopee shops' tokens, with `[shopee.tokens]`.
    shopee_tokens: Mutex<HashMap<u64, shopee_auth::ShopTokens>>,
    /// Codes the Shopee consent page handed out and no exchange has used yet.
    shopee_codes: Mutex<HashMap<String, shopee_auth::Code>>,
    /// The shop a merchant on the Shopee consent page is logged in as.
    shopee_login: Mutex<Option<u64>>,
    /// Shopify GraphQL cost buckets and minted tokens.
    shopify_graphql: Mutex<shopify_graphql::GraphqlState>,
}

/// One listener ("channel") of the simulator, as a platform's second gateway would be.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChannelStats {
    pub addr: String,
    /// While down, every platform and health request gets 503.
    pub down: bool,
    /// Platform API requests answered (not counting health checks or refusals while down).
    pub requests: u64,
    pub health_checks: u64,
}

impl SimState {
    pub fn new(config: SimConfig) -> Arc<Self> {
        let now_s = now_s();
        let mut rng = SeedRng::new(config.seed);
        let history_s = config.history_hours as i64 * 3600;
        let mut orders = HashMap::new();
        let mut inventory = HashMap::new();
        for (index, key) in config.shops().into_iter().enumerate() {
            let items = inventory::catalogue(index as u64).into_iter().map(|i| (i.sku.clone(), i)).collect();
            inventory.insert(key, items);
        }
        let mut id_base = 1_000_000u64;
        for shop in &config.shopify.shops {
            let seeded = data::seed_orders(&mut rng, &shop.name, shop.orders, now_s, history_s, id_base, "USD", shopify::STATUSES.len());
            orders.insert((Platform::Shopify, shop.name.clone()), seeded.into_iter().map(|o| (o.id, o)).collect());
            id_base += 1_000_000;
        }
        for shop in &config.taobao.shops {
            let seeded = data::seed_orders(&mut rng, &shop.nick, shop.orders, now_s, history_s, id_base, "CNY", taobao::STATUSES.len());
            orders.insert((Platform::Taobao, shop.nick.clone()), seeded.into_iter().map(|o| (o.id, o)).collect());
            id_base += 1_000_000;
        }
        for shop in &config.shopee.shops {
            let name = shop.shop_id.to_string();
            let seeded = data::seed_orders(&mut rng, &name, shop.orders, now_s, history_s, id_base, "SGD", shopee::STATUSES.len());
            orders.insert((Platform::Shopee, name), seeded.into_iter().map(|o| (o.id, o)).collect());
            id_base += 1_000_000;
        }
        for site in &config.woo.sites {
            let seeded = data::seed_orders(&mut rng, &site.name, site.orders, now_s, history_s, id_base, "EUR", woo::STATUSES.len());
            orders.insert((Platform::Woo, site.name.clone()), seeded.into_iter().map(|o| (o.id, o)).collect());
            id_base += 1_000_000;
        }
        let windows = budget_windows(&config);
        let buckets = config
            .shopify
            .shops
            .iter()
            .map(|s| (s.name.clone(), LeakyBucket::new(config.shopify.bucket_size, config.shopify.leak_per_sec)))
            .collect();
        Arc::new(SimState {
            inner: Mutex::new(Inner {
                rng,
                orders,
                inventory,
                faults: HashMap::new(),
                buckets,
                told_to_wait: ToldToWait::default(),
                windows,
                stats: BTreeMap::new(),
                next_id: id_base,
            }),
            shopee_tokens: Mutex::new(
                config
                    .shopee
                    .tokens
                    .iter()
                    .flat_map(|t| config.shopee.shops.iter().map(move |s| (s.shop_id, shopee_auth::ShopTokens::first(&s.access_token, s.shop_id, t, now_ms()))))
                    .collect(),
            ),
            config: Mutex::new(config),
            channels: Mutex::new(Vec::new()),
            shopee_codes: Mutex::new(HashMap::new()),
            shopee_login: Mutex::new(None),
            shopify_graphql: Mutex::new(Default::default()),
        })
    }

    fn channels(&self) -> MutexGuard<'_, Vec<ChannelStats>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take channel `index` down (every request 503) or bring it back.
    pub fn set_channel_down(&self, index: usize, down: bool) {
        if let Some(c) = self.channels().get_mut(index) {
            c.down = down;
        }
    }

    pub fn channel_stats(&self) -> Vec<ChannelStats> {
        self.channels().clone()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock only happens in a bug; keep serving the data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn config(&self) -> SimConfig {
        self.config.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every order of one shop, as the platform holds it now.
    pub fn orders(&self, platform: Platform, shop: &str) -> Vec<SimOrder> {
        self.lock()
            .orders
            .get(&(platform, shop.to_string()))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The shop's catalogue with current stock and every quantity written so far.
    pub fn stock(&self, platform: Platform, shop: &str) -> Vec<StockItem> {
        self.lock()
            .inventory
            .get(&(platform, shop.to_string()))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Write a quantity through a platform API; `find` picks the item. `None` when the
    /// shop has no such item.
    pub(crate) fn set_stock(
        &self,
        platform: Platform,
        shop: &str,
        find: impl Fn(&StockItem) -> bool,
        quantity: impl FnOnce(u32) -> u32,
    ) -> Option<StockItem> {
        let mut inner = self.lock();
        let item = inner.inventory.get_mut(&(platform, shop.to_string()))?.values_mut().find(|i| find(i))?;
        let q = quantity(item.quantity);
        item.set(q);
        let item = item.clone();
        inner.stats.entry(platform).or_default().stock_writes += 1;
        Some(item)
    }

    /// A seller changing a SKU's quantity by hand in the platform's own back office,
    /// outside any API: not an API write (not in the item's `history`, not counted). What
    /// reconciliation is there to find. `None` when the shop has no such SKU.
    pub fn edit_stock(&self, platform: Platform, shop: &str, sku: &str, quantity: u32) -> Option<StockItem> {
        let mut inner = self.lock();
        let item = inner.inventory.get_mut(&(platform, shop.to_string()))?.values_mut().find(|i| i.sku == sku)?;
        item.quantity = quantity;
        Some(item.clone())
    }

    pub fn stats(&self) -> BTreeMap<Platform, PlatformStats> {
        self.lock().stats.clone()
    }

    pub fn inject(&self, platform: Platform, kind: FaultKind, count: usize) {
        self.lock().faults.entry(platform).or_default().push(kind, count);
    }

    /// Drop the platform's pending injected faults.
    pub fn clear_faults(&self, platform: Platform) {
        self.lock().faults.remove(&platform);
    }

    /// Move an order to its next status and stamp it as modified now.
    pub fn touch(&self, platform: Platform, shop: &str, id: u64) -> Option<SimOrder> {
        let statuses = status_count(platform);
        let mut inner = self.lock();
        let order = inner.orders.get_mut(&(platform, shop.to_string()))?.get_mut(&id)?;
        order.status = (order.status + 1) % statuses;
        order.updated_s = now_s().max(order.updated_s + 1);
        Some(order.clone())
    }

    /// Change an order again within the second it last changed in: its status moves on,
    /// its modification time (whole seconds, as the platforms stamp it) stays the same.
    /// What a paid-then-shipped order looks like when both happen in one second.
    pub fn change_within_second(&self, platform: Platform, shop: &str, id: u64) -> Option<SimOrder> {
        let statuses = status_count(platform);
        let mut inner = self.lock();
        let order = inner.orders.get_mut(&(platform, shop.to_string()))?.get_mut(&id)?;
        order.status = (order.status + 1) % statuses;
        Some(order.clone())
    }

    /// A new order created now.
    pub fn create(&self, platform: Platform, shop: &str) -> Option<SimOrder> {
        let now = now_s();
        let currency = platform.currency();
        let mut inner = self.lock();
        let key = (platform, shop.to_string());
        if !inner.orders.contains_key(&key) {
            return None;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let order = data::new_order(&mut inner.rng, shop, id, now, now, currency, status_count(platform));
        inner.orders.get_mut(&key)?.insert(id, order.clone());
        Some(order)
    }

    /// Count a request and decide whether an injected fault answers it.
    pub(crate) fn begin(&self, platform: Platform) -> Option<FaultKind> {
        let mut inner = self.lock();
        inner.stats.entry(platform).or_default().requests += 1;
        let fault = inner.faults.get_mut(&platform).and_then(|q| q.next());
        if fault.is_some() {
            inner.stats.entry(platform).or_default().faults += 1;
        }
        fault
    }

    /// Spend one call of the budget window `key` (see `budget_windows`). Over budget:
    /// counts a throttle, remembers until when the client was told to wait (`told`
    /// turns the time left into what the platform tells), and returns that wait. A call
    /// arriving before an earlier wait has passed is counted as early.
    pub(crate) fn spend(&self, platform: Platform, key: &str, told: impl FnOnce(Duration) -> Duration) -> Result<(), Duration> {
        let mut inner = self.lock();
        let now = std::time::Instant::now();
        if inner.told_to_wait.early(key, now) {
            inner.stats.entry(platform).or_default().early_after_throttle += 1;
        }
        let Some(window) = inner.windows.get_mut(key) else { return Ok(()) };
        match window.take(now) {
            Ok(()) => Ok(()),
            Err(left) => {
                let wait = told(left);
                inner.told_to_wait.told(key, now, now + wait);
                inner.stats.entry(platform).or_default().throttled += 1;
                Err(wait)
            }
        }
    }

    pub(crate) fn count(&self, platform: Platform, f: impl FnOnce(&mut PlatformStats)) {
        f(self.lock().stats.entry(platform).or_default())
    }

    pub fn set_limits(&self, limits: LimitsUpdate) {
        let mut cfg = self.config.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = limits.shopify_bucket_size {
            cfg.shopify.bucket_size = v;
        }
        if let Some(v) = limits.shopify_leak_per_sec {
            cfg.shopify.leak_per_sec = v;
        }
        if let Some(v) = limits.taobao_calls_per_window {
            cfg.taobao.calls_per_window = v;
        }
        if let Some(v) = limits.taobao_window_ms {
            cfg.taobao.window_ms = v;
        }
        if let Some(v) = limits.taobao_ban_secs {
            cfg.taobao.ban_secs = v;
        }
        if let Some(v) = limits.shopee_calls_per_window {
            cfg.shopee.calls_per_window = v;
        }
        if let Some(v) = limits.woo_requests_per_window {
            cfg.woo.requests_per_window = v;
        }
        let mut inner = self.lock();
        for b in inner.buckets.values_mut() {
            *b = LeakyBucket::new(cfg.shopify.bucket_size, cfg.shopify.leak_per_sec);
        }
        inner.windows = budget_windows(&cfg);
    }
}

fn taobao_window(cfg: &TaobaoConfig) -> CallWindow {
    CallWindow::new(cfg.calls_per_window, Duration::from_millis(cfg.window_ms), Duration::from_secs(cfg.ban_secs))
}

/// The call budgets: per Taobao app (by app key), per Shopee shop (`shopee:{id}`), per
/// WooCommerce site (`woo:{name}`).
fn budget_windows(config: &SimConfig) -> HashMap<String, CallWindow> {
    let per = |calls: u32, ms: u64| CallWindow::new(calls, Duration::from_millis(ms), Duration::from_millis(ms));
    let taobao = config.taobao.apps.iter().map(|a| (a.app_key.clone(), taobao_window(&config.taobao)));
    let shopee = config
        .shopee
        .shops
        .iter()
        .map(|s| (format!("shopee:{}", s.shop_id), per(config.shopee.calls_per_window, config.shopee.window_ms)));
    let woo = config
        .woo
        .sites
        .iter()
        .map(|s| (format!("woo:{}", s.name), per(config.woo.requests_per_window, config.woo.window_ms)));
    taobao.chain(shopee).chain(woo).collect()
}

fn status_count(platform: Platform) -> usize {
    match platform {
        Platform::Shopify => shopify::STATUSES.len(),
        Platform::Taobao => taobao::STATUSES.len(),
        Platform::Shopee => shopee::STATUSES.len(),
        Platform::Woo => woo::STATUSES.len(),
    }
}

/// `POST /_sim/shopee/{shop_id}/revoke`: the merchant revoked the app's authorization.
async fn control_shopee_revoke(State(state): State<Arc<SimState>>, Path(shop_id): Path<u64>) -> StatusCode {
    if state.revoke_shopee(shop_id) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

/// The shop a merchant on the Shopee consent page is logged in as.
async fn control_shopee_login(State(state): State<Arc<SimState>>, Path(shop_id): Path<u64>) -> StatusCode {
    if state.config().shopee.shops.iter().any(|s| s.shop_id == shop_id) {
        state.shopee_login(shop_id);
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A running simulator.
pub struct SimHandle {
    pub addr: SocketAddr,
    pub state: Arc<SimState>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SimHandle {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serve the same platforms on one more listener (another channel to the same API,
    /// as a standby gateway is); returns its channel index and address.
    pub async fn open_channel(&mut self, addr: SocketAddr) -> std::io::Result<(usize, SocketAddr)> {
        let (index, addr, task) = serve_channel(self.state.clone(), addr).await?;
        self.tasks.push(task);
        Ok((index, addr))
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn serve_channel(
    state: Arc<SimState>,
    addr: SocketAddr,
) -> std::io::Result<(usize, SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let index = {
        let mut channels = state.channels();
        channels.push(ChannelStats { addr: addr.to_string(), ..Default::default() });
        channels.len() - 1
    };
    let app = router(state.clone()).layer(axum::middleware::from_fn_with_state((state, index), channel_gate));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "simulator server stopped");
        }
    });
    Ok((index, addr, task))
}

/// Count a channel's requests and refuse them while it is down (the control API stays up).
async fn channel_gate(
    State((state, index)): State<(Arc<SimState>, usize)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path().to_string();
    if path.starts_with("/_sim/") {
        return next.run(req).await;
    }
    let down = {
        let mut channels = state.channels();
        match channels.get_mut(index) {
            Some(c) if c.down => true,
            Some(c) => {
                if path == "/health" {
                    c.health_checks += 1;
                } else {
                    c.requests += 1;
                }
                false
            }
            None => false,
        }
    };
    if down {
        return (StatusCode::SERVICE_UNAVAILABLE, "<html>503 channel down</html>").into_response();
    }
    next.run(req).await
}

pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/shopify/{shop}/admin/api/{version}/orders.json", get(shopify::orders))
        .route("/shopify/{shop}/admin/api/{version}/products.json", get(shopify::products))
        .route("/shopify/{shop}/admin/api/{version}/locations.json", get(shopify::locations))
        .route("/shopify/{shop}/admin/api/{version}/shop.json", get(shopify::shop))
        .route("/shopify/{shop}/admin/api/{version}/inventory_levels/set.json", post(shopify::set_inventory_level))
        .route("/shopify/{shop}/admin/api/{version}/graphql.json", post(shopify_graphql::graphql))
        .route("/shopify/{shop}/admin/oauth/access_token", post(shopify_graphql::access_token))
        .route("/taobao/router/rest", get(taobao::router).post(taobao::router))
        .route("/shopee/api/v2/auth/access_token/get", post(shopee::refresh_token))
        .route("/shopee/api/v2/auth/token/get", post(shopee::code_token))
        .route("/shopee/api/v2/shop/auth_partner", get(shopee::consent_page))
        .route("/shopee/api/v2/{module}/{call}", get(shopee::api).post(shopee::api))
        .route("/_sim/shopee/{shop_id}/revoke", post(control_shopee_revoke))
        .route("/_sim/shopee/login/{shop_id}", post(control_shopee_login))
        .route("/woo/{site}/wp-json/wc/v3/orders", get(woo::orders))
        .route("/woo/{site}/wp-json/wc/v3/products", get(woo::products))
        .route("/woo/{site}/wp-json/wc/v3/products/batch", post(woo::products_batch))
        .route("/woo/{site}/wp-json/wc/v3/data/currencies/current", get(woo::current_currency))
        .route("/health", get(|| async { "ok" }))
        .route("/_sim/stats", get(control_stats))
        .route("/_sim/channels", get(control_channels))
        .route("/_sim/channels/{index}", post(control_channel))
        .route("/_sim/faults", post(control_faults))
        .route("/_sim/limits", post(control_limits))
        .route("/_sim/orders", get(control_orders))
        .route("/_sim/stock", get(control_stock))
        .route("/_sim/orders/touch", post(control_touch))
        .route("/_sim/orders/create", post(control_create))
        .with_state(state)
}

/// Serve on `addr` (use port 0 for any free port); this is channel 0.
pub async fn start(config: SimConfig, addr: SocketAddr) -> std::io::Result<SimHandle> {
    let state = SimState::new(config);
    let (_, addr, task) = serve_channel(state.clone(), addr).await?;
    Ok(SimHandle { addr, state, tasks: vec![task] })
}

async fn control_channels(State(state): State<Arc<SimState>>) -> Json<Vec<ChannelStats>> {
    Json(state.channel_stats())
}

#[derive(Deserialize)]
struct ChannelUpdate {
    down: bool,
}

async fn control_channel(
    State(state): State<Arc<SimState>>,
    axum::extract::Path(index): axum::extract::Path<usize>,
    Json(req): Json<ChannelUpdate>,
) -> StatusCode {
    if index >= state.channel_stats().len() {
        return StatusCode::NOT_FOUND;
    }
    state.set_channel_down(index, req.down);
    StatusCode::NO_CONTENT
}

async fn control_stats(State(state): State<Arc<SimState>>) -> Json<BTreeMap<Platform, PlatformStats>> {
    Json(state.stats())
}

#[derive(Deserialize)]
struct FaultRequest {
    platform: Platform,
    kind: FaultKind,
    #[serde(default = "one")]
    count: usize,
}

fn one() -> usize {
    1
}

async fn control_faults(State(state): State<Arc<SimState>>, Json(req): Json<FaultRequest>) -> StatusCode {
    state.inject(req.platform, req.kind, req.count);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitsUpdate {
    pub shopify_bucket_size: Option<u32>,
    pub shopify_leak_per_sec: Option<f64>,
    pub taobao_calls_per_window: Option<u32>,
    pub taobao_window_ms: Option<u64>,
    pub taobao_ban_secs: Option<u64>,
    pub shopee_calls_per_window: Option<u32>,
    pub woo_requests_per_window: Option<u32>,
}

async fn control_limits(State(state): State<Arc<SimState>>, Json(req): Json<LimitsUpdate>) -> StatusCode {
    state.set_limits(req);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct ShopQuery {
    platform: Platform,
    shop: String,
}

async fn control_orders(State(state): State<Arc<SimState>>, Query(q): Query<ShopQuery>) -> Json<Vec<SimOrder>> {
    Json(state.orders(q.platform, &q.shop))
}

async fn control_stock(State(state): State<Arc<SimState>>, Query(q): Query<ShopQuery>) -> Json<Vec<StockItem>> {
    Json(state.stock(q.platform, &q.shop))
}

#[derive(Deserialize)]
struct TouchRequest {
    platform: Platform,
    shop: String,
    id: u64,
    /// Change it again within the second of its last change (same modification time).
    #[serde(default)]
    same_second: bool,
}

async fn control_touch(State(state): State<Arc<SimState>>, Json(req): Json<TouchRequest>) -> Response {
    let changed = if req.same_second {
        state.change_within_second(req.platform, &req.shop, req.id)
    } else {
        state.touch(req.platform, &req.shop, req.id)
    };
    match changed {
        Some(o) => Json(o).into_response(),
        None => (StatusCode::NOT_FOUND, "no such order").into_response(),
    }
}

async fn control_create(State(state): State<Arc<SimState>>, Json(q): Json<ShopQuery>) -> Response {
    match state.create(q.platform, &q.shop) {
        Some(o) => Json(o).into_response(),
        None => (StatusCode::NOT_FOUND, "no such shop").into_response(),
    }
}

/// Answer an injected fault the way a failing platform or its load balancer would.
pub(crate) async fn fault_response(kind: FaultKind, hold: Duration) -> Response {
    match kind {
        FaultKind::Http500 => (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
        FaultKind::Http503 => (StatusCode::SERVICE_UNAVAILABLE, "<html>503 Service Unavailable</html>").into_response(),
        FaultKind::Timeout => {
            tokio::time::sleep(hold).await;
            (StatusCode::GATEWAY_TIMEOUT, "gateway timeout").into_response()
        }
        FaultKind::Garbage => (StatusCode::OK, "<html><body>Sorry, something went wr").into_response(),
    }
}

#[cfg(test)]
mod told_to_wait_tests {
    use super::{ToldToWait, ON_THE_WAY};
    use std::time::{Duration, Instant};

    #[test]
    fn a_call_already_on_its_way_is_not_early_a_retrying_client_is() {
        let t0 = Instant::now();
        let mut told = ToldToWait::default();
        told.told("acme", t0, t0 + Duration::from_millis(500));
        // Sent before the client had the 429: arrives just after it.
        assert!(!told.early("acme", t0 + Duration::from_millis(5)));
        // A client retrying at once is throttled again and again; the window keeps its
        // start, so its retries past the grace count.
        for ms in [1u64, 2, 3] {
            told.told("acme", t0 + Duration::from_millis(ms), t0 + Duration::from_millis(500 + ms));
        }
        assert!(told.early("acme", t0 + ON_THE_WAY + Duration::from_millis(1)));
        // After the wait has passed nothing is early, and a new throttle starts anew.
        let later = t0 + Duration::from_secs(1);
        assert!(!told.early("acme", later));
        told.told("acme", later, later + Duration::from_millis(500));
        assert!(!told.early("acme", later + Duration::from_millis(5)));
        assert!(!told.early("other", later + ON_THE_WAY));
    }
}
