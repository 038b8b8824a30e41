//! Shops onboarded by OAuth: a merchant is sent to the platform's consent page, comes
//! back with a code, and the shop runs — no config edit, no restart.
//!
//! - **Start** ([`Onboarding::begin`]): a random single-use `state` is stored with the
//!   shop and connector it is for; it lives [`STATE_LIFETIME_MS`].
//! - **Callback** ([`Onboarding::take`]): the `state` the platform sent back is looked up
//!   and removed in one write, so a callback replayed, forged or late is refused.
//! - **Record** ([`Onboarding::record`]): after the code exchange the shop's credentials
//!   are in the [`CredentialBook`], and the shop itself is kept here: its connector, tier
//!   and the settings the platform named. Its app-level keys are not copied: they come
//!   from the connector's `[connectors.NAME.onboarding]` template on every start, so a
//!   rotated partner key applies to onboarded shops too.
//!
//! A shop in the config file with the same name wins over an onboarded one.
//!
//! Both are kept in the embedded store, or in cluster mode in the cluster ([`cluster`]):
//! there any node takes the callback and every node knows the onboarded shops.

mod cluster;

use crate::credentials::CredentialBook;
use berth_storage::store::{Keyspace, WriteCtx};
use berth_storage::{Store, StoreError};
use berth_types::shop::{ShopConfig, Tier};
use berth_types::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// How long a merchant has between the start and the callback.
pub const STATE_LIFETIME_MS: i64 = 15 * 60 * 1000;
/// The most onboardings under way at once (each is an admin's start call).
pub const MAX_PENDING: usize = 1_000;

/// `[connectors.NAME.onboarding]`: what every shop onboarded through the connector gets
/// (the app's keys — Shopee's `partner_id` and `partner_key` — and the platform's base
/// URL), before the settings the platform names in the code exchange.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnboardingConfig {
    #[serde(default = "tier_b")]
    pub tier: Tier,
    pub poll_interval_secs: Option<u64>,
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    #[serde(default)]
    pub secrets: BTreeMap<String, Secret>,
}

fn tier_b() -> Tier {
    Tier::B
}

impl OnboardingConfig {
    /// The config a shop of `connector` starts from before the platform names its own
    /// settings.
    pub fn template(&self, connector: &str) -> ShopConfig {
        ShopConfig {
            connector: connector.to_string(),
            tier: self.tier,
            poll_interval_secs: self.poll_interval_secs,
            settings: self.settings.clone(),
            secrets: self.secrets.clone(),
        }
    }
}

/// An onboarding under way: whom the `state` was handed out for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub connector: String,
    pub shop: String,
    pub started_ms: i64,
    /// Who started it (the admin token's name), for the audit log.
    pub by: String,
}

/// A shop onboarded by OAuth, as kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Onboarded {
    pub connector: String,
    /// The settings the platform named in the code exchange.
    pub settings: BTreeMap<String, String>,
    pub onboarded_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum OnboardingError {
    #[error("connector `{0}` has no [connectors.{0}.onboarding] section: add one with the settings and secrets every shop onboarded through it gets")]
    NotConfigured(String),
    #[error("berth keeps no credentials: set [credentials] key_file or key_env to onboard shops by OAuth")]
    NoCredentialBook,
    #[error("[server] public_url is not set: the platform must know where to send the merchant back (public_url/v1/oauth/CONNECTOR/callback)")]
    NoPublicUrl,
    #[error("{MAX_PENDING} onboardings are under way; wait until some finish or expire ({} minutes)", STATE_LIFETIME_MS / 60_000)]
    TooManyPending,
    #[error("onboarding storage: {0}")]
    Storage(#[from] StoreError),
    #[error("stored onboarding record `{key}` cannot be read: {why}")]
    Corrupt { key: String, why: String },
    #[error("the cluster did not take the onboarding's write or read ({0}); try again")]
    Cluster(String),
}

/// Where onboardings and onboarded shops are kept.
enum Kept {
    Local { store: Store, pending: Keyspace, shops: Keyspace },
    Cluster(Box<cluster::ClusterKept>),
}

/// Onboardings under way and the shops they brought.
pub struct Onboarding {
    kept: Kept,
    book: Option<Arc<CredentialBook>>,
    public_url: Option<String>,
    templates: RwLock<BTreeMap<String, OnboardingConfig>>,
    /// The shops the config file has (they keep their file config when authorized), as
    /// of the last [`Onboarding::with_onboarded`].
    in_file: RwLock<BTreeMap<String, ShopConfig>>,
}

fn corrupt(key: &[u8], e: serde_json::Error) -> OnboardingError {
    OnboardingError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), why: e.to_string() }
}

impl Onboarding {
    /// `public_url` is where merchants' browsers reach berth; `templates` the connectors'
    /// onboarding sections.
    pub fn open(
        store: &Store,
        book: Option<Arc<CredentialBook>>,
        public_url: Option<String>,
        templates: BTreeMap<String, OnboardingConfig>,
    ) -> Result<Onboarding, OnboardingError> {
        let kept = Kept::Local { store: store.clone(), pending: store.keyspace("oauth_pending")?, shops: store.keyspace("onboarded_shops")? };
        Ok(Self::with(kept, book, public_url, templates))
    }

    /// Cluster mode: onboardings and onboarded shops are the cluster's.
    pub async fn open_cluster(
        conn: &berth_cluster::Connection,
        book: Option<Arc<CredentialBook>>,
        public_url: Option<String>,
        templates: BTreeMap<String, OnboardingConfig>,
    ) -> Result<Onboarding, OnboardingError> {
        let kept = Kept::Cluster(Box::new(cluster::ClusterKept::open(conn).await?));
        Ok(Self::with(kept, book, public_url, templates))
    }

    fn with(kept: Kept, book: Option<Arc<CredentialBook>>, public_url: Option<String>, templates: BTreeMap<String, OnboardingConfig>) -> Onboarding {
        Onboarding {
            kept,
            book,
            public_url: public_url.map(|u| u.trim_end_matches('/').to_string()),
            templates: RwLock::new(templates),
            in_file: RwLock::default(),
        }
    }

    /// Whether onboarded shops are the cluster's: they run where their lease is, started
    /// and stopped by every node on [`Onboarding::changes`], not by the caller.
    pub fn in_cluster(&self) -> bool {
        matches!(self.kept, Kept::Cluster(_))
    }

    /// Cluster mode: told when the cluster's onboarded shops changed (on any node).
    pub fn changes(&self) -> Option<Arc<tokio::sync::Notify>> {
        match &self.kept {
            Kept::Cluster(c) => Some(c.changes()),
            Kept::Local { .. } => None,
        }
    }

    /// The credential book the exchanged credentials go to.
    pub fn book(&self) -> Result<&Arc<CredentialBook>, OnboardingError> {
        self.book.as_ref().ok_or(OnboardingError::NoCredentialBook)
    }

    /// Where the platform sends the merchant back for `connector`.
    pub fn redirect_uri(&self, connector: &str) -> Result<String, OnboardingError> {
        let base = self.public_url.as_deref().ok_or(OnboardingError::NoPublicUrl)?;
        Ok(format!("{base}/v1/oauth/{connector}/callback"))
    }

    /// The config a new shop of `connector` starts from.
    pub fn template(&self, connector: &str) -> Result<ShopConfig, OnboardingError> {
        let templates = self.templates.read().unwrap_or_else(|e| e.into_inner());
        templates.get(connector).map(|t| t.template(connector)).ok_or_else(|| OnboardingError::NotConfigured(connector.to_string()))
    }

    /// Connectors added by a config reload bring their templates.
    pub fn add_template(&self, connector: &str, t: OnboardingConfig) {
        self.templates.write().unwrap_or_else(|e| e.into_inner()).entry(connector.to_string()).or_insert(t);
    }

    /// Hand out a `state` for onboarding `shop` through `connector`. Expired ones are
    /// dropped first; at most [`MAX_PENDING`] are under way.
    pub async fn begin(&self, connector: &str, shop: &str, by: &str) -> Result<String, OnboardingError> {
        let state = hex::encode(rand::Rng::r#gen::<[u8; 32]>(&mut rand::thread_rng()));
        let now = berth_types::clock::now_ms();
        let pending = Pending { connector: connector.to_string(), shop: shop.to_string(), started_ms: now, by: by.to_string() };
        let (store, tree) = match &self.kept {
            Kept::Cluster(c) => {
                c.begin(&state, &pending).await?;
                return Ok(state);
            }
            Kept::Local { store, pending, .. } => (store, pending.clone()),
        };
        let key = state.clone();
        store
            .write(move |ctx: &mut WriteCtx<'_>| {
                // Decide before writing: an error after a write would fail the batch.
                let (mut live, mut expired) = (0, Vec::new());
                for entry in ctx.prefix(&tree, b"") {
                    let (k, v) = entry?;
                    match serde_json::from_slice::<Pending>(&v) {
                        Ok(p) if now - p.started_ms <= STATE_LIFETIME_MS => live += 1,
                        _ => expired.push(k),
                    }
                }
                if live >= MAX_PENDING {
                    return Err(OnboardingError::TooManyPending);
                }
                for k in expired {
                    ctx.remove(&tree, k);
                }
                ctx.insert(&tree, key.as_bytes(), serde_json::to_vec(&pending).expect("a pending onboarding serializes"));
                Ok(())
            })
            .await?;
        Ok(state)
    }

    /// The onboarding `state` was handed out for, once: it is removed as it is read, and
    /// `None` when it is unknown, used or older than [`STATE_LIFETIME_MS`].
    pub async fn take(&self, state: &str) -> Result<Option<Pending>, OnboardingError> {
        // The callback needs no token: a guessed state costs a read, never a write.
        if state.len() != 64 || !state.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let found = match &self.kept {
            Kept::Cluster(c) => c.take(state).await?.map(|b| b.to_vec()),
            Kept::Local { store, pending, .. } => {
                if pending.get(state.as_bytes())?.is_none() {
                    return Ok(None);
                }
                let (tree, key) = (pending.clone(), state.to_string());
                store
                    .write(move |ctx: &mut WriteCtx<'_>| {
                        let found = ctx.get(&tree, key.as_bytes())?;
                        if found.is_some() {
                            ctx.remove(&tree, key.as_bytes());
                        }
                        Ok::<_, OnboardingError>(found.map(|b| b.to_vec()))
                    })
                    .await?
            }
        };
        let Some(bytes) = found else { return Ok(None) };
        let p: Pending = serde_json::from_slice(&bytes).map_err(|e| corrupt(state.as_bytes(), e))?;
        Ok((berth_types::clock::now_ms() - p.started_ms <= STATE_LIFETIME_MS).then_some(p))
    }

    /// Keep a shop the merchant authorized (its credentials are in the book already).
    pub async fn record(&self, shop: &str, connector: &str, settings: &[(String, String)]) -> Result<Onboarded, OnboardingError> {
        let o = Onboarded {
            connector: connector.to_string(),
            settings: settings.iter().cloned().collect(),
            onboarded_ms: berth_types::clock::now_ms(),
        };
        let (store, tree) = match &self.kept {
            Kept::Cluster(c) => {
                c.record(shop, &o).await?;
                return Ok(o);
            }
            Kept::Local { store, shops, .. } => (store, shops.clone()),
        };
        let (key, value) = (shop.to_string(), serde_json::to_vec(&o).expect("an onboarded shop serializes"));
        store
            .write(move |ctx: &mut WriteCtx<'_>| {
                ctx.insert(&tree, key.as_bytes(), value);
                Ok::<_, StoreError>(())
            })
            .await?;
        Ok(o)
    }

    /// Forget an onboarded shop (its credentials stay in the book until overwritten);
    /// whether it was kept.
    pub async fn remove(&self, shop: &str) -> Result<bool, OnboardingError> {
        let (store, shops) = match &self.kept {
            Kept::Cluster(c) => return c.remove(shop).await,
            Kept::Local { store, shops, .. } => (store, shops),
        };
        if shops.get(shop.as_bytes())?.is_none() {
            return Ok(false);
        }
        let (tree, key) = (shops.clone(), shop.to_string());
        store
            .write(move |ctx: &mut WriteCtx<'_>| {
                ctx.remove(&tree, key.as_bytes());
                Ok::<_, StoreError>(())
            })
            .await?;
        Ok(true)
    }

    /// Every onboarded shop as kept.
    pub fn onboarded(&self) -> Result<BTreeMap<String, Onboarded>, OnboardingError> {
        let shops = match &self.kept {
            Kept::Cluster(c) => return Ok(c.onboarded()),
            Kept::Local { shops, .. } => shops,
        };
        let mut out = BTreeMap::new();
        for entry in shops.iter() {
            let (k, v) = entry?;
            out.insert(String::from_utf8_lossy(&k).into_owned(), serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?);
        }
        Ok(out)
    }

    /// The config an onboarded shop runs on: its connector's template, then the settings
    /// the platform named.
    pub fn shop_config(&self, o: &Onboarded) -> Result<ShopConfig, OnboardingError> {
        let mut sc = self.template(&o.connector)?;
        for (k, v) in &o.settings {
            sc.secrets.remove(k);
            sc.settings.insert(k.clone(), v.clone());
        }
        Ok(sc)
    }

    /// Whether the config file has `shop` (as of the last [`Onboarding::with_onboarded`]).
    pub fn in_config_file(&self, shop: &str) -> bool {
        self.in_file.read().unwrap_or_else(|e| e.into_inner()).contains_key(shop)
    }

    /// [`Onboarding::with_onboarded`] on the config file's shops as last given.
    pub fn all_shops(&self) -> (BTreeMap<String, ShopConfig>, Vec<String>) {
        let configured = self.in_file.read().unwrap_or_else(|e| e.into_inner()).clone();
        self.with_onboarded(&configured)
    }

    /// Every shop to run: the onboarded ones, then `configured` (the config file's) over
    /// them. An onboarded shop whose connector lost its template is left out, with why.
    pub fn with_onboarded(&self, configured: &BTreeMap<String, ShopConfig>) -> (BTreeMap<String, ShopConfig>, Vec<String>) {
        *self.in_file.write().unwrap_or_else(|e| e.into_inner()) = configured.clone();
        let mut all = BTreeMap::new();
        let mut problems = Vec::new();
        match self.onboarded() {
            Ok(shops) => {
                for (name, o) in shops.into_iter().filter(|(n, _)| !configured.contains_key(n)) {
                    match self.shop_config(&o) {
                        Ok(sc) => {
                            all.insert(name, sc);
                        }
                        Err(e) => problems.push(format!("onboarded shop `{name}` is not started: {e}")),
                    }
                }
            }
            Err(e) => problems.push(format!("onboarded shops cannot be read: {e}")),
        }
        all.extend(configured.iter().map(|(k, v)| (k.clone(), v.clone())));
        (all, problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path) -> Onboarding {
        let store = Store::open(dir, berth_storage::StoreConfig { reserve_bytes: 0, ..Default::default() }).unwrap();
        let template = OnboardingConfig {
            tier: Tier::A,
            poll_interval_secs: Some(7),
            settings: [("base_url".to_string(), "http://p".to_string())].into(),
            secrets: [("partner_key".to_string(), Secret::new("pk"))].into(),
        };
        Onboarding::open(&store, None, Some("https://berth.example/".into()), [("shopee".to_string(), template)].into()).unwrap()
    }

    #[tokio::test]
    async fn a_state_works_once_for_what_it_was_handed_out_for() {
        let dir = tempfile::tempdir().unwrap();
        let o = open(dir.path());
        let s = o.begin("shopee", "sg2", "ops").await.unwrap();
        assert_eq!(s.len(), 64);
        assert_ne!(o.begin("shopee", "sg2", "ops").await.unwrap(), s, "each start has its own state");
        let p = o.take(&s).await.unwrap().unwrap();
        assert_eq!((p.connector.as_str(), p.shop.as_str(), p.by.as_str()), ("shopee", "sg2", "ops"));
        assert_eq!(o.take(&s).await.unwrap(), None, "a state is used once");
        assert_eq!(o.take("forged").await.unwrap(), None);
        assert_eq!(o.redirect_uri("shopee").unwrap(), "https://berth.example/v1/oauth/shopee/callback");
        assert!(matches!(o.template("woo"), Err(OnboardingError::NotConfigured(_))));
    }

    #[tokio::test]
    async fn an_onboarded_shop_is_kept_and_the_config_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = open(dir.path());
            o.record("sg2", "shopee", &[("shop_id".into(), "5550001".into())]).await.unwrap();
            o.record("lost", "gone", &[]).await.unwrap();
        }
        let o = open(dir.path());
        let (all, problems) = o.with_onboarded(&BTreeMap::new());
        let sc = &all["sg2"];
        assert_eq!((sc.connector.as_str(), sc.tier, sc.poll_interval_secs), ("shopee", Tier::A, Some(7)));
        assert_eq!(sc.value("shop_id"), Some("5550001"));
        assert_eq!(sc.value("partner_key"), Some("pk"), "app keys come from the template");
        assert!(problems.len() == 1 && problems[0].contains("`lost`"), "{problems:?}");
        let mut file = BTreeMap::new();
        file.insert("sg2".to_string(), ShopConfig { connector: "other".into(), tier: Tier::B, poll_interval_secs: None, settings: Default::default(), secrets: Default::default() });
        assert_eq!(o.with_onboarded(&file).0["sg2"].connector, "other");
        assert!(o.in_config_file("sg2") && !o.in_config_file("lost"));
        assert!(o.remove("lost").await.unwrap() && !o.remove("lost").await.unwrap());
        assert_eq!(o.onboarded().unwrap().keys().collect::<Vec<_>>(), ["sg2"]);
        // A value the store holds is never a token: only the settings the platform named.
        let Kept::Local { shops, .. } = &o.kept else { unreachable!() };
        let raw = shops.get(b"sg2").unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("pk"));
    }

    const OLD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[tokio::test]
    async fn expired_states_are_refused_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let o = open(dir.path());
        let old = Pending { connector: "shopee".into(), shop: "x".into(), started_ms: berth_types::clock::now_ms() - STATE_LIFETIME_MS - 1, by: "ops".into() };
        let Kept::Local { store, pending, .. } = &o.kept else { unreachable!() };
        let tree = pending.clone();
        store
            .write(move |ctx: &mut WriteCtx<'_>| {
                ctx.insert(&tree, OLD.as_bytes(), serde_json::to_vec(&old).unwrap());
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        assert_eq!(o.take(OLD).await.unwrap(), None, "an expired state is refused");
        let tree = pending.clone();
        store
            .write(move |ctx: &mut WriteCtx<'_>| {
                ctx.insert(&tree, b"old-state-2", b"{\"connector\":\"shopee\",\"shop\":\"x\",\"started_ms\":0,\"by\":\"ops\"}");
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        o.begin("shopee", "y", "ops").await.unwrap();
        assert!(pending.get(b"old-state-2").unwrap().is_none(), "a start drops expired states");
    }
}
