//! Each shop's platform credentials, renewed by berth before they expire.
//!
//! The rules a refresh must keep, since many platforms hand out a new refresh token on
//! each refresh and kill the old one (Shopee, Lazada, Kuaishou): a refresh token used
//! twice, or a new one lost, means the merchant has to authorize the app again.
//!
//! - **Single flight per shop.** Callers that find the access token ending wait for the
//!   one refresh in progress and take its result; they never start a second.
//! - **Durable before use.** The new credentials are on disk before any caller gets them.
//! - **A lost answer is not a loop.** Before the platform is asked, the book notes on disk
//!   that a refresh is under way. If berth dies before the answer is stored, the next
//!   refresh tries the refresh token it has; if the platform refuses it, the shop is
//!   marked as needing the merchant to authorize again (with why), never retried forever.
//! - **The previous credentials stay** until the new ones have worked once
//!   ([`CredentialBook::worked`]): a platform that takes a moment to honour a new token,
//!   or one whose new access token is refused, still has the old one to fall back on.
//!
//! What a shop's credential state is (expiry times, the last refresh, failures) is public
//! ([`CredentialState`]); the tokens never leave through it, and on disk every record is
//! sealed ([`seal`]). How a refresh is done is the connector's ([`Refresher`]). In
//! cluster mode the records live in the cluster and only the node running a shop
//! refreshes it ([`cluster`]).

pub mod cluster;
pub mod seal;

use berth_storage::store::{Keyspace, WriteCtx};
use berth_storage::{Store, StoreError};
use berth_types::credentials::{Credentials, RefreshError};
use berth_types::Secret;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// `[credentials]`: where the key that seals stored credentials comes from, and how early
/// berth refreshes. Without a key berth keeps no credentials of its own: every shop
/// runs on the static secrets in its config, as connectors built before 0.3.0 do.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsConfig {
    /// A file holding the key: 64 hex digits (`openssl rand -hex 32`), kept outside the
    /// data dir. Relative to the config file.
    pub key_file: Option<std::path::PathBuf>,
    /// Or an environment variable holding it.
    pub key_env: Option<String>,
    /// Keys that sealed records before a rotation: they still open them, never seal.
    pub previous_key_files: Vec<std::path::PathBuf>,
    pub previous_key_envs: Vec<String>,
    /// Refresh an access token this long before it ends.
    pub refresh_margin_secs: u64,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        CredentialsConfig { key_file: None, key_env: None, previous_key_files: Vec::new(), previous_key_envs: Vec::new(), refresh_margin_secs: 600 }
    }
}

impl CredentialsConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.key_file.is_some() && self.key_env.is_some() {
            return Err("credentials: give key_file or key_env, not both".into());
        }
        if self.key_file.is_none() && self.key_env.is_none() && !(self.previous_key_files.is_empty() && self.previous_key_envs.is_empty()) {
            return Err("credentials: previous keys without a current key (key_file or key_env)".into());
        }
        if self.refresh_margin_secs > 86_400 {
            return Err("credentials.refresh_margin_secs must be at most 86400 (a day)".into());
        }
        Ok(())
    }

    /// The sealer from the configured keys; `None` when no key is configured.
    pub fn sealer(&self) -> Result<Option<seal::Sealer>, seal::SealError> {
        let current = match (&self.key_file, &self.key_env) {
            (Some(f), _) => seal::KeySource::File(f.clone()),
            (None, Some(e)) => seal::KeySource::Env(e.clone()),
            (None, None) => return Ok(None),
        };
        let previous: Vec<seal::KeySource> = self
            .previous_key_files
            .iter()
            .cloned()
            .map(seal::KeySource::File)
            .chain(self.previous_key_envs.iter().cloned().map(seal::KeySource::Env))
            .collect();
        seal::Sealer::load(&current, &previous).map(Some)
    }
}

/// Who renews a shop's credentials (the shop's connector).
pub trait Refresher: Send + Sync {
    fn refresh(&self, shop: &str, current: &Credentials) -> impl Future<Output = Result<Credentials, RefreshError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("shop `{0}` has no credentials in berth")]
    Unknown(String),
    /// Only the merchant can bring the shop back: authorize the app again.
    #[error("shop `{shop}` needs the merchant to authorize the app again: {why}")]
    Reauthorize { shop: String, why: String },
    /// The refresh failed in a way that may pass; the current credentials stay.
    #[error("refreshing the credentials of shop `{shop}` failed ({why}); the current ones stay")]
    Transient { shop: String, why: String },
    #[error("credential storage: {0}")]
    Storage(#[from] StoreError),
    #[error("stored credentials of shop `{shop}` cannot be read: {why}")]
    Corrupt { shop: String, why: String },
    #[error("stored credentials of shop `{shop}`: {source}")]
    Sealed { shop: String, source: seal::SealError },
    /// Cluster mode: the cluster did not answer or take the write; it may later.
    #[error("the cluster's credential records: {0}")]
    Cluster(#[from] berth_cluster::ClusterError),
}

/// A shop's credential state as ops see it: when things end and how refreshing goes.
/// Never a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CredentialState {
    /// Counts the credentials a shop has had: 1 for the first, one more per refresh.
    pub generation: u64,
    pub access_expires_ms: Option<i64>,
    pub refresh_expires_ms: Option<i64>,
    pub authorization_expires_ms: Option<i64>,
    /// Whether it has a refresh token (a connector that mints tokens from the app's own
    /// credentials renews them without one).
    pub can_refresh: bool,
    pub last_refresh_ms: Option<i64>,
    /// Refreshes that failed since the last one that worked.
    pub failures: u32,
    pub last_error: Option<String>,
    /// Set when only the merchant can bring the shop back, with why.
    pub needs_authorization: Option<String>,
    /// Whether the previous credentials are still kept (the current ones have not
    /// worked yet).
    pub previous_kept: bool,
    /// After a failed refresh: the next one is not tried before this (backoff).
    pub retry_after_ms: Option<i64>,
}

/// Credentials as stored, inside a record that is sealed as a whole.
#[derive(Clone, Serialize, Deserialize)]
struct StoredCredentials {
    access_token: String,
    refresh_token: Option<String>,
    access_expires_ms: Option<i64>,
    refresh_expires_ms: Option<i64>,
    authorization_expires_ms: Option<i64>,
}

impl From<&Credentials> for StoredCredentials {
    fn from(c: &Credentials) -> Self {
        StoredCredentials {
            access_token: c.access_token.expose().to_string(),
            refresh_token: c.refresh_token.as_ref().map(|t| t.expose().to_string()),
            access_expires_ms: c.access_expires_ms,
            refresh_expires_ms: c.refresh_expires_ms,
            authorization_expires_ms: c.authorization_expires_ms,
        }
    }
}

impl From<&StoredCredentials> for Credentials {
    fn from(s: &StoredCredentials) -> Self {
        Credentials {
            access_token: Secret::new(s.access_token.clone()),
            refresh_token: s.refresh_token.clone().map(Secret::new),
            access_expires_ms: s.access_expires_ms,
            refresh_expires_ms: s.refresh_expires_ms,
            authorization_expires_ms: s.authorization_expires_ms,
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Stored {
    generation: u64,
    current: StoredCredentials,
    /// Kept until `current` has worked once.
    previous: Option<StoredCredentials>,
    /// When a refresh was started whose answer is not stored yet (`Some` after a crash
    /// mid-refresh: the platform may have spent the refresh token).
    refreshing_since_ms: Option<i64>,
    last_refresh_ms: Option<i64>,
    failures: u32,
    last_error: Option<String>,
    needs_authorization: Option<String>,
    /// After a refresh that failed in a way that may pass: no new try before this.
    #[serde(default)]
    retry_after_ms: Option<i64>,
    /// SHA-256 of the tokens last taken from the shop's config: tokens pasted there anew
    /// (the merchant authorized again) are taken again, the same ones are not.
    #[serde(default)]
    seeded_from: Option<String>,
}

/// The first wait after a failed refresh, and the longest.
const RETRY_BASE_MS: u64 = 1_000;
const RETRY_MAX_MS: u64 = 5 * 60_000;

impl Stored {
    fn state(&self) -> CredentialState {
        CredentialState {
            generation: self.generation,
            access_expires_ms: self.current.access_expires_ms,
            refresh_expires_ms: self.current.refresh_expires_ms,
            authorization_expires_ms: self.current.authorization_expires_ms,
            can_refresh: self.current.refresh_token.is_some(),
            last_refresh_ms: self.last_refresh_ms,
            failures: self.failures,
            last_error: self.last_error.clone(),
            needs_authorization: self.needs_authorization.clone(),
            previous_kept: self.previous.is_some(),
            retry_after_ms: self.retry_after_ms,
        }
    }
}

/// Where the sealed records are kept.
enum Records {
    Embedded { store: Store, tree: Keyspace },
    Cluster(Box<cluster::ClusterRecords>),
}

/// A change to a shop's record: the new record, or `None` to leave it as it is (what it
/// was meant to change has changed since). Tried again on a newer record when another
/// node wrote first (cluster mode).
type Change = Box<dyn Fn(Option<&Stored>) -> Option<Stored> + Send + Sync>;

/// Every shop's credentials, on disk (or in the cluster), with one refresh at a time per shop.
pub struct CredentialBook {
    records: Records,
    sealer: Arc<seal::Sealer>,
    /// One lock per shop: held across a refresh, so a second caller waits for it.
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Where each refresh's outcome is told (ops count them).
    events: std::sync::OnceLock<Arc<crate::events::Events>>,
}

/// Open a stored record: whether it was sealed with a previous key too.
fn decode(sealer: &seal::Sealer, shop: &str, bytes: &[u8]) -> Result<(Stored, bool), CredentialError> {
    let opened = sealer.open(shop.as_bytes(), bytes).map_err(|source| CredentialError::Sealed { shop: shop.to_string(), source })?;
    let stored = serde_json::from_slice(&opened.plain).map_err(|e| CredentialError::Corrupt { shop: shop.to_string(), why: e.to_string() })?;
    Ok((stored, opened.stale))
}

/// Open a stored record, if there is one.
fn opened(sealer: &seal::Sealer, shop: &str, bytes: Option<&[u8]>) -> Result<Option<Stored>, CredentialError> {
    bytes.map(|b| decode(sealer, shop, b).map(|(s, _)| s)).transpose()
}

fn encode(sealer: &seal::Sealer, shop: &str, s: &Stored) -> Vec<u8> {
    sealer.seal(shop.as_bytes(), &serde_json::to_vec(s).expect("a credential record always serializes"))
}

impl CredentialBook {
    /// Open the book; `sealer` seals what it writes and opens what it reads.
    pub fn open(store: &Store, sealer: Arc<seal::Sealer>) -> Result<CredentialBook, CredentialError> {
        let records = Records::Embedded { store: store.clone(), tree: store.keyspace("credentials")? };
        Ok(CredentialBook { records, sealer, flights: Mutex::default(), events: Default::default() })
    }

    /// Cluster mode: the records in the cluster; this node refreshes the shops whose
    /// lease `fences` holds.
    pub async fn open_cluster(conn: &berth_cluster::Connection, fences: Arc<dyn berth_cluster::FenceSource>, sealer: Arc<seal::Sealer>) -> Result<CredentialBook, CredentialError> {
        let records = Records::Cluster(Box::new(cluster::ClusterRecords::open(conn, fences).await?));
        Ok(CredentialBook { records, sealer, flights: Mutex::default(), events: Default::default() })
    }

    /// Tell `events` how each refresh ends.
    pub fn tell(&self, events: Arc<crate::events::Events>) {
        let _ = self.events.set(events);
    }

    fn told(&self, shop: &str, outcome: &str) {
        if let Some(e) = self.events.get() {
            e.emit(&crate::events::Event::CredentialsRefreshed { shop, outcome });
        }
    }

    /// The shop's record as this node has it (in cluster mode, its copy).
    fn read(&self, shop: &str) -> Result<Option<Stored>, CredentialError> {
        let bytes = match &self.records {
            Records::Embedded { tree, .. } => tree.get(shop.as_bytes())?.map(bytes::Bytes::from),
            Records::Cluster(c) => c.copy(shop),
        };
        opened(&self.sealer, shop, bytes.as_deref())
    }

    /// Cluster mode: this node's copy of the shop's record brought up to the cluster's
    /// (before the node runs the shop). Nothing to do on one node.
    pub async fn catch_up(&self, shop: &str) -> Result<(), CredentialError> {
        match &self.records {
            Records::Embedded { .. } => Ok(()),
            Records::Cluster(c) => Ok(c.catch_up(shop).await?),
        }
    }

    /// The shop's record to decide on: in cluster mode, the stream leader's.
    async fn read_latest(&self, shop: &str) -> Result<Option<Stored>, CredentialError> {
        match &self.records {
            Records::Embedded { .. } => self.read(shop),
            Records::Cluster(c) => opened(&self.sealer, shop, c.latest(shop).await?.1.as_deref()),
        }
    }

    /// Cluster mode: whether another node runs the shop (and renews its credentials).
    fn renewed_elsewhere(&self, shop: &str) -> bool {
        matches!(&self.records, Records::Cluster(c) if !c.owns(shop))
    }

    /// Every record: (shop, sealed bytes).
    fn all(&self) -> Result<Vec<(String, Vec<u8>)>, CredentialError> {
        match &self.records {
            Records::Embedded { tree, .. } => {
                let mut out = Vec::new();
                for entry in tree.iter() {
                    let (key, value) = entry?;
                    out.push((String::from_utf8_lossy(&key).into_owned(), value.to_vec()));
                }
                Ok(out)
            }
            Records::Cluster(c) => Ok(c.all().into_iter().map(|(s, b)| (s, b.to_vec())).collect()),
        }
    }

    /// Seal every record still sealed with a previous key with the current one; how many
    /// were. Once it has run, the previous keys can leave the config.
    pub async fn reseal(&self) -> Result<usize, CredentialError> {
        let mut stale = Vec::new();
        for (shop, value) in self.all()? {
            if decode(&self.sealer, &shop, &value)?.1 {
                stale.push(shop);
            }
        }
        for shop in &stale {
            let flight = self.flights.lock().unwrap_or_else(|e| e.into_inner()).entry(shop.clone()).or_default().clone();
            let _held = flight.lock().await;
            self.update(shop, false, Box::new(|old| old.cloned())).await?;
        }
        Ok(stale.len())
    }

    /// Write what `change` makes of the shop's record, durably, and hand back the record
    /// as it is then (`change`'s, or the one it left). In cluster mode the record is
    /// read from the leader and written by compare-and-set, `change` deciding again on
    /// a newer record when another node wrote first; `fenced`: only while this node
    /// holds the shop's lease (else [`CredentialError::Transient`]).
    async fn update(&self, shop: &str, fenced: bool, change: Change) -> Result<Option<Stored>, CredentialError> {
        match &self.records {
            Records::Embedded { store, tree } => {
                let (tree, key, sealer) = (tree.clone(), shop.to_string(), self.sealer.clone());
                store
                    .write(move |ctx: &mut WriteCtx<'_>| {
                        let old = opened(&sealer, &key, ctx.get(&tree, key.as_bytes())?.as_deref())?;
                        match change(old.as_ref()) {
                            Some(new) => {
                                ctx.insert(&tree, key.as_bytes(), encode(&sealer, &key, &new));
                                Ok::<_, CredentialError>(Some(new))
                            }
                            None => Ok(old),
                        }
                    })
                    .await
            }
            Records::Cluster(c) => {
                for _ in 0..20 {
                    let (revision, bytes) = c.latest(shop).await?;
                    let old = opened(&self.sealer, shop, bytes.as_deref())?;
                    let Some(new) = change(old.as_ref()) else { return Ok(old) };
                    match c.write(shop, revision, encode(&self.sealer, shop, &new).into(), fenced).await {
                        Ok(()) => return Ok(Some(new)),
                        Err(cluster::WriteRefused::Conflict) => continue,
                        Err(cluster::WriteRefused::NotOwner) => {
                            return Err(CredentialError::Transient { shop: shop.to_string(), why: "another node runs the shop now and renews its credentials".into() })
                        }
                        Err(cluster::WriteRefused::Failed(e)) => return Err(e.into()),
                    }
                }
                Err(CredentialError::Transient { shop: shop.to_string(), why: "the record kept changing on other nodes; try again".into() })
            }
        }
    }

    /// Give a shop credentials (from config, or from the merchant authorizing the app):
    /// they replace whatever it had, clear a needed authorization, and count as a new
    /// generation. Durable when this returns.
    pub async fn set(&self, shop: &str, creds: &Credentials) -> Result<CredentialState, CredentialError> {
        self.put(shop, creds, None).await
    }

    /// Replace the shop's credentials; from config (`seeded_from`: their digest) only
    /// unless those very tokens were taken already (by another node, in cluster mode).
    async fn put(&self, shop: &str, creds: &Credentials, seeded_from: Option<String>) -> Result<CredentialState, CredentialError> {
        let current = StoredCredentials::from(creds);
        let stored = self
            .update(
                shop,
                false,
                Box::new(move |old| {
                    if seeded_from.is_some() && old.is_some_and(|o| o.seeded_from == seeded_from) {
                        return None;
                    }
                    Some(Stored {
                        generation: old.map_or(1, |o| o.generation + 1),
                        current: current.clone(),
                        previous: None,
                        refreshing_since_ms: None,
                        last_refresh_ms: None,
                        failures: 0,
                        last_error: None,
                        needs_authorization: None,
                        retry_after_ms: None,
                        seeded_from: seeded_from.clone().or_else(|| old.and_then(|o| o.seeded_from.clone())),
                    })
                }),
            )
            .await?;
        Ok(stored.expect("a put always leaves a record").state())
    }

    /// Take a shop's tokens from its config: the first time, and again when they differ
    /// from the ones taken last (ops pasted new tokens after the merchant authorized the
    /// app again). The same tokens are never taken twice: a refresh since has spent them.
    /// Whether they were taken.
    pub async fn seed(&self, shop: &str, creds: &Credentials) -> Result<bool, CredentialError> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(creds.access_token.expose().as_bytes());
        h.update([0]);
        h.update(creds.refresh_token.as_ref().map_or("", |t| t.expose()).as_bytes());
        let digest = hex::encode(h.finalize());
        match self.read_latest(shop).await? {
            None => {}
            Some(s) if s.seeded_from.as_deref() == Some(digest.as_str()) => return Ok(false),
            // Kept before berth noted where tokens came from: note it, take nothing.
            Some(s) if s.seeded_from.is_none() => {
                let noted = Box::new(move |old: Option<&Stored>| {
                    old.filter(|o| o.seeded_from.is_none()).map(|o| Stored { seeded_from: Some(digest.clone()), ..o.clone() })
                });
                self.update(shop, false, noted).await?;
                return Ok(false);
            }
            Some(_) => tracing::warn!(shop, "the shop's tokens in config changed: berth takes the new ones"),
        }
        let flight = self.flights.lock().unwrap_or_else(|e| e.into_inner()).entry(shop.to_string()).or_default().clone();
        let _held = flight.lock().await;
        let before = self.read_latest(shop).await?.map(|s| s.generation);
        let after = self.put(shop, creds, Some(digest)).await?;
        Ok(before != Some(after.generation))
    }

    /// The shop's current credentials and their generation.
    pub fn current(&self, shop: &str) -> Result<(Credentials, u64), CredentialError> {
        let s = self.read(shop)?.ok_or_else(|| CredentialError::Unknown(shop.to_string()))?;
        Ok((Credentials::from(&s.current), s.generation))
    }

    /// The credentials before the current ones, while they are kept.
    pub fn previous(&self, shop: &str) -> Result<Option<Credentials>, CredentialError> {
        Ok(self.read(shop)?.and_then(|s| s.previous.as_ref().map(Credentials::from)))
    }

    pub fn state(&self, shop: &str) -> Result<Option<CredentialState>, CredentialError> {
        Ok(self.read(shop)?.map(|s| s.state()))
    }

    /// Every shop the book holds, with its state.
    pub fn states(&self) -> Result<Vec<(String, CredentialState)>, CredentialError> {
        let mut out = Vec::new();
        for (shop, value) in self.all()? {
            let (stored, _) = decode(&self.sealer, &shop, &value)?;
            out.push((shop, stored.state()));
        }
        Ok(out)
    }

    /// Credentials whose access token lasts at least `margin_ms` more: the current ones,
    /// or new ones from a refresh (one per shop at a time; callers arriving meanwhile
    /// wait for it and take its result, whatever their expiry).
    pub async fn fresh<R: Refresher>(&self, shop: &str, margin_ms: i64, refresher: &R) -> Result<(Credentials, u64), CredentialError> {
        let (creds, generation) = self.current(shop)?;
        if !creds.access_ends_within(berth_types::clock::now_ms(), margin_ms) {
            return Ok((creds, generation));
        }
        // Settled when someone else's refresh replaced the credentials while this caller
        // waited (even if the new ones are inside the margin too: a margin longer than the
        // platform's token lifetime must not turn into a refresh per caller).
        self.refresh_unless(shop, refresher, move |s| {
            s.generation != generation || !Credentials::from(&s.current).access_ends_within(berth_types::clock::now_ms(), margin_ms)
        })
        .await
    }

    /// A call with the credentials of `generation` was refused as expired: refresh,
    /// unless a refresh since has already replaced them (then take those).
    pub async fn refused<R: Refresher>(&self, shop: &str, generation: u64, refresher: &R) -> Result<(Credentials, u64), CredentialError> {
        self.refresh_unless(shop, refresher, move |s| s.generation != generation).await
    }

    /// The credentials of `generation` worked: the previous ones are no longer kept.
    pub async fn worked(&self, shop: &str, generation: u64) -> Result<(), CredentialError> {
        match self.read(shop)? {
            Some(s) if s.generation == generation && s.previous.is_some() => {}
            _ => return Ok(()),
        }
        let done = Box::new(move |old: Option<&Stored>| {
            old.filter(|o| o.generation == generation && o.previous.is_some()).map(|o| Stored { previous: None, ..o.clone() })
        });
        self.update(shop, false, done).await?;
        Ok(())
    }

    /// Refresh under the shop's lock, unless `settled` says (after waiting for the lock)
    /// that someone else's refresh already gave what is wanted.
    async fn refresh_unless<R: Refresher>(
        &self,
        shop: &str,
        refresher: &R,
        settled: impl Fn(&Stored) -> bool,
    ) -> Result<(Credentials, u64), CredentialError> {
        let flight = self.flights.lock().unwrap_or_else(|e| e.into_inner()).entry(shop.to_string()).or_default().clone();
        let _held = flight.lock().await;
        let s = self.read_latest(shop).await?.ok_or_else(|| CredentialError::Unknown(shop.to_string()))?;
        if let Some(why) = &s.needs_authorization {
            return Err(CredentialError::Reauthorize { shop: shop.to_string(), why: why.clone() });
        }
        // Cluster mode: the node running the shop renews; the others take what it has.
        if settled(&s) || self.renewed_elsewhere(shop) {
            return Ok((Credentials::from(&s.current), s.generation));
        }
        let now = berth_types::clock::now_ms();
        if let Some(after) = s.retry_after_ms.filter(|t| *t > now) {
            let why = format!("{} (next try in {} s)", s.last_error.as_deref().unwrap_or("the last refresh failed"), (after - now + 999) / 1000);
            return Err(CredentialError::Transient { shop: shop.to_string(), why });
        }
        // Without a refresh token the connector may still mint a token from the app's own
        // credentials (a client credentials grant); one that cannot answers `revoked`.
        // A refresh whose answer a crash lost may have spent the refresh token already.
        let answer_lost = s.refreshing_since_ms.is_some();
        let started = berth_types::clock::now_ms();
        let generation = s.generation;
        // Noted before the platform is asked, under the shop's lease in cluster mode (a
        // node that lost it starts no refresh). Each change below applies only while no
        // other refresh or new tokens landed since this one read the record.
        let noted = Box::new(move |old: Option<&Stored>| {
            old.filter(|o| o.generation == generation).map(|o| Stored { refreshing_since_ms: Some(started), ..o.clone() })
        });
        match self.update(shop, true, noted).await? {
            Some(now) if now.generation == generation => {}
            Some(now) => return Ok((Credentials::from(&now.current), now.generation)),
            None => return Err(CredentialError::Unknown(shop.to_string())),
        }
        let current = Credentials::from(&s.current);
        let answer = refresher.refresh(shop, &current).await;
        let (why, gone) = match answer {
            Ok(new) => {
                let new = StoredCredentials::from(&new);
                // Not fenced: the platform has answered, and these may be the only valid
                // tokens now, whoever runs the shop.
                let kept = Box::new(move |old: Option<&Stored>| {
                    old.filter(|o| o.generation == generation).map(|old| Stored {
                        generation: old.generation + 1,
                        previous: Some(old.current.clone()),
                        current: new.clone(),
                        refreshing_since_ms: None,
                        last_refresh_ms: Some(berth_types::clock::now_ms()),
                        failures: 0,
                        last_error: None,
                        needs_authorization: None,
                        retry_after_ms: None,
                        seeded_from: old.seeded_from.clone(),
                    })
                });
                let stored = self.update(shop, false, kept).await?.ok_or_else(|| CredentialError::Unknown(shop.to_string()))?;
                tracing::info!(shop, generation = stored.generation, "credentials refreshed");
                self.told(shop, "ok");
                return Ok((Credentials::from(&stored.current), stored.generation));
            }
            Err(RefreshError::Revoked(why)) => {
                let why = if answer_lost {
                    format!("{why} (a refresh berth started earlier ended with berth stopping before its answer was stored; the platform may have spent the refresh token then)")
                } else {
                    why
                };
                tracing::error!(shop, reason = %why, "the shop's authorization is gone; the merchant must authorize the app again");
                (why.clone(), Some(why))
            }
            Err(RefreshError::Transient(why)) => {
                tracing::warn!(shop, reason = %why, "refreshing credentials failed; the current ones stay");
                (why, None)
            }
        };
        let gone_too = gone.clone();
        let last = why.clone();
        let transient = gone.is_none();
        let failed = Box::new(move |old: Option<&Stored>| {
            old.filter(|o| o.generation == generation).map(|old| {
                let failures = old.failures + 1;
                let wait = berth_types::backoff::delay(failures, RETRY_BASE_MS, RETRY_MAX_MS).as_millis() as i64;
                Stored {
                    // The platform answered: nothing of this attempt is lost.
                    refreshing_since_ms: None,
                    retry_after_ms: transient.then(|| berth_types::clock::now_ms() + wait),
                    failures,
                    last_error: Some(last.clone()),
                    needs_authorization: gone_too.clone().or(old.needs_authorization.clone()),
                    ..old.clone()
                }
            })
        });
        if let Some(now) = self.update(shop, false, failed).await? {
            if now.generation != generation && now.needs_authorization.is_none() {
                // Another refresh landed meanwhile: its tokens are the shop's.
                return Ok((Credentials::from(&now.current), now.generation));
            }
        }
        self.told(shop, if gone.is_some() { "revoked" } else { "transient" });
        Err(match gone {
            Some(why) => CredentialError::Reauthorize { shop: shop.to_string(), why },
            None => CredentialError::Transient { shop: shop.to_string(), why },
        })
    }
}

/// A connector version renews a shop's credentials (its `refresh-credentials` export).
pub struct ConnectorRefresher {
    pub connector: Arc<berth_runtime::LoadedConnector>,
    /// The shop's config; the credentials the call carries are put in it.
    pub config: Arc<berth_types::shop::ShopConfig>,
}

impl Refresher for ConnectorRefresher {
    async fn refresh(&self, shop: &str, current: &Credentials) -> Result<Credentials, RefreshError> {
        let cfg = with_credentials(&self.config, current);
        match self.connector.refresh_credentials(shop, cfg, current).await {
            Ok(answer) => answer,
            // A trap, a deadline, no instance free: the platform did not answer, so the
            // refresh token is not spent; it may work later.
            Err(e) => Err(RefreshError::Transient(e.to_string())),
        }
    }
}

/// The shop's config as a call sees it: `access_token` and `refresh_token` are the
/// book's current ones (secrets, so the guest's log never shows them).
pub fn with_credentials(cfg: &berth_types::shop::ShopConfig, c: &Credentials) -> Arc<berth_types::shop::ShopConfig> {
    let mut cfg = cfg.clone();
    cfg.secrets.insert("access_token".into(), c.access_token.clone());
    match &c.refresh_token {
        Some(t) => cfg.secrets.insert("refresh_token".into(), t.clone()),
        None => cfg.secrets.remove("refresh_token"),
    };
    Arc::new(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn sealer() -> Arc<seal::Sealer> {
        Arc::new(seal::Sealer::new(&[5u8; 32], &[]))
    }

    fn store(dir: &std::path::Path) -> Store {
        Store::open(dir, berth_storage::StoreConfig { reserve_bytes: 0, ..Default::default() }).unwrap()
    }

    fn creds(access: &str, refresh: &str, access_in_ms: i64) -> Credentials {
        Credentials {
            access_token: Secret::new(access),
            refresh_token: Some(Secret::new(refresh)),
            access_expires_ms: Some(berth_types::clock::now_ms() + access_in_ms),
            refresh_expires_ms: None,
            authorization_expires_ms: None,
        }
    }

    /// A platform's token endpoint in miniature: each refresh token works once and is
    /// replaced by a new one (as Shopee and Lazada do).
    struct Rotating {
        calls: AtomicU32,
        live: Mutex<String>,
        gate: tokio::sync::Notify,
        hold: bool,
    }

    impl Rotating {
        fn new(first_refresh: &str, hold: bool) -> Rotating {
            Rotating { calls: AtomicU32::new(0), live: Mutex::new(first_refresh.into()), gate: tokio::sync::Notify::new(), hold }
        }
    }

    impl Refresher for Rotating {
        async fn refresh(&self, _shop: &str, current: &Credentials) -> Result<Credentials, RefreshError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if self.hold {
                self.gate.notified().await;
            }
            let mut live = self.live.lock().unwrap();
            if current.refresh_token.as_ref().map(Secret::expose) != Some(live.as_str()) {
                return Err(RefreshError::Revoked("refresh token invalid".into()));
            }
            *live = format!("refresh-{n}");
            Ok(creds(&format!("access-{n}"), &live, 3_600_000))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_callers_at_expiry_make_one_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let book = Arc::new(CredentialBook::open(&store(dir.path()), sealer()).unwrap());
        book.set("acme", &creds("access-0", "refresh-0", 1_000)).await.unwrap();
        let platform = Arc::new(Rotating::new("refresh-0", true));
        let mut callers = Vec::new();
        for _ in 0..50 {
            let (book, platform) = (book.clone(), platform.clone());
            callers.push(tokio::spawn(async move { book.fresh("acme", 60_000, &*platform).await.map(|(c, g)| (c.access_token.expose().to_string(), g)) }));
        }
        // Wait until the one refresh is at the platform, then let it answer.
        while platform.calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        platform.gate.notify_one();
        for c in callers {
            assert_eq!(c.await.unwrap().unwrap(), ("access-1".to_string(), 2));
        }
        assert_eq!(platform.calls.load(Ordering::SeqCst), 1, "one refresh for fifty callers");
        let st = book.state("acme").unwrap().unwrap();
        assert_eq!((st.generation, st.failures, st.previous_kept), (2, 0, true));
        // Still fresh: no second refresh.
        assert_eq!(book.fresh("acme", 60_000, &*platform).await.unwrap().1, 2);
        assert_eq!(platform.calls.load(Ordering::SeqCst), 1);
        book.worked("acme", 2).await.unwrap();
        assert!(!book.state("acme").unwrap().unwrap().previous_kept, "the old ones go once the new ones worked");
    }

    /// A platform that is down: every refresh fails as transient.
    struct Down(AtomicU32);

    impl Refresher for Down {
        async fn refresh(&self, _shop: &str, _current: &Credentials) -> Result<Credentials, RefreshError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(RefreshError::Transient("HTTP 503".into()))
        }
    }

    #[tokio::test]
    async fn a_failed_refresh_backs_off_instead_of_retrying_on_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let book = CredentialBook::open(&store(dir.path()), sealer()).unwrap();
        book.set("acme", &creds("access-0", "refresh-0", 1_000)).await.unwrap();
        let down = Down(AtomicU32::new(0));
        for _ in 0..20 {
            let err = book.fresh("acme", 60_000, &down).await.unwrap_err();
            assert!(matches!(err, CredentialError::Transient { .. }), "{err}");
        }
        assert_eq!(down.0.load(Ordering::SeqCst), 1, "calls during the backoff do not reach the platform");
        let st = book.state("acme").unwrap().unwrap();
        assert!(st.failures == 1 && st.retry_after_ms.is_some_and(|t| t > berth_types::clock::now_ms()), "{st:?}");
        assert!(st.needs_authorization.is_none() && st.generation == 1, "an outage is not a lost authorization");
        assert_eq!(book.current("acme").unwrap().0.access_token.expose(), "access-0", "the current ones stay");
        let shown = serde_json::to_string(&st).unwrap();
        assert!(!shown.contains("access-0") && !shown.contains("refresh-0"), "no token in the state: {shown}");
        // Once the wait is over, the next call tries again; success clears the backoff.
        let wait = st.retry_after_ms.unwrap() - berth_types::clock::now_ms();
        tokio::time::sleep(std::time::Duration::from_millis(wait.max(0) as u64 + 20)).await;
        let platform = Rotating::new("refresh-0", false);
        assert_eq!(book.fresh("acme", 60_000, &platform).await.unwrap().1, 2);
        let st = book.state("acme").unwrap().unwrap();
        assert_eq!((st.failures, st.retry_after_ms), (0, None));
    }

    #[tokio::test]
    async fn tokens_from_config_are_taken_once_and_again_only_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let book = CredentialBook::open(&store(dir.path()), sealer()).unwrap();
        let pasted = creds("access-0", "refresh-0", 1_000);
        assert!(book.seed("acme", &pasted).await.unwrap());
        // A refresh since spent them: the same config must not bring them back.
        book.refused("acme", 1, &Rotating::new("refresh-0", false)).await.unwrap();
        assert!(!book.seed("acme", &pasted).await.unwrap());
        assert_eq!(book.current("acme").unwrap().0.access_token.expose(), "access-1");
        // The merchant authorized again and ops pasted the new tokens: taken, and a
        // needed authorization is cleared.
        book.update("acme", false, Box::new(|old| Some(Stored { needs_authorization: Some("revoked".into()), ..old.unwrap().clone() }))).await.unwrap();
        assert!(book.seed("acme", &creds("access-new", "refresh-new", 1_000)).await.unwrap());
        let st = book.state("acme").unwrap().unwrap();
        assert!(st.needs_authorization.is_none() && st.generation == 3, "{st:?}");
        assert_eq!(book.current("acme").unwrap().0.access_token.expose(), "access-new");
        // Credentials given another way (OAuth) keep the note of what config had.
        book.set("acme", &creds("access-oauth", "refresh-oauth", 1_000)).await.unwrap();
        assert!(!book.seed("acme", &creds("access-new", "refresh-new", 1_000)).await.unwrap());
    }

    #[tokio::test]
    async fn a_refusal_refreshes_once_and_late_refusals_take_the_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let book = CredentialBook::open(&store(dir.path()), sealer()).unwrap();
        book.set("acme", &creds("access-0", "refresh-0", 3_600_000)).await.unwrap();
        let platform = Rotating::new("refresh-0", false);
        let (_, g) = book.current("acme").unwrap();
        assert_eq!(book.refused("acme", g, &platform).await.unwrap().1, g + 1);
        // Another call made with the old generation was refused too: it gets the new
        // credentials without a second refresh.
        assert_eq!(book.refused("acme", g, &platform).await.unwrap().1, g + 1);
        assert_eq!(platform.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn stored_before_use_and_a_lost_answer_ends_in_reauthorization_not_a_loop() {
        let dir = tempfile::tempdir().unwrap();
        let platform = Rotating::new("refresh-0", false);
        {
            let book = CredentialBook::open(&store(dir.path()), sealer()).unwrap();
            book.set("acme", &creds("access-0", "refresh-0", 0)).await.unwrap();
            let (c, _) = book.fresh("acme", 60_000, &platform).await.unwrap();
            assert_eq!(c.access_token.expose(), "access-1");
        }
        // What a caller got is what a restart finds.
        let db = store(dir.path());
        let book = CredentialBook::open(&db, sealer()).unwrap();
        assert_eq!(book.current("acme").unwrap().0.access_token.expose(), "access-1");
        // Now a crash between the platform's answer and storing it: the platform rotated
        // to refresh-2, berth kept only its note that a refresh was under way.
        book.update("acme", false, Box::new(|old| Some(Stored { refreshing_since_ms: Some(1), ..old.unwrap().clone() }))).await.unwrap();
        *platform.live.lock().unwrap() = "refresh-2".into();
        book.update(
            "acme",
            false,
            Box::new(|old| {
                let mut s = old.unwrap().clone();
                s.current.access_expires_ms = Some(0);
                Some(s)
            }),
        )
        .await
        .unwrap();
        let err = book.fresh("acme", 60_000, &platform).await.unwrap_err();
        let CredentialError::Reauthorize { why, .. } = &err else { panic!("{err:?}") };
        assert!(why.contains("before its answer was stored"), "{why}");
        let st = book.state("acme").unwrap().unwrap();
        assert!(st.needs_authorization.is_some() && st.failures == 1, "{st:?}");
        // And it stays so: no further calls to the platform until the merchant authorizes.
        let calls = platform.calls.load(Ordering::SeqCst);
        assert!(matches!(book.fresh("acme", 60_000, &platform).await, Err(CredentialError::Reauthorize { .. })));
        assert_eq!(platform.calls.load(Ordering::SeqCst), calls, "no retry loop against a spent token");
        // The merchant authorized again: new credentials, the shop works.
        book.set("acme", &creds("access-new", "refresh-2", 3_600_000)).await.unwrap();
        assert_eq!(book.fresh("acme", 60_000, &platform).await.unwrap().0.access_token.expose(), "access-new");
    }

    #[tokio::test]
    async fn a_copied_data_dir_reveals_no_token_and_keys_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = ([1u8; 32], [2u8; 32]);
        let secret = "access-TOKEN-3f9c2a";
        {
            let db = store(dir.path());
            let book = CredentialBook::open(&db, Arc::new(seal::Sealer::new(&old, &[]))).unwrap();
            book.set("acme", &creds(secret, "refresh-TOKEN-77ab", 3_600_000)).await.unwrap();
            book.set("globex", &creds("access-globex", "refresh-globex", 3_600_000)).await.unwrap();
            // A control: the same kind of value stored unsealed is found by the scan below.
            let plain = db.keyspace("control").unwrap();
            db.write(move |ctx: &mut WriteCtx<'_>| {
                ctx.insert(&plain, b"k", b"control-PLAIN-marker");
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
            db.barrier().await.unwrap();
        }
        let mut files = vec![dir.path().to_path_buf()];
        let mut control_seen = false;
        while let Some(p) = files.pop() {
            // The store compacts in the background: a file listed a moment ago may be gone.
            if p.is_dir() {
                files.extend(std::fs::read_dir(&p).into_iter().flatten().flatten().map(|e| e.path()));
            } else if let Ok(bytes) = std::fs::read(&p) {
                control_seen |= bytes.windows(20).any(|w| w == b"control-PLAIN-marker");
                for token in [secret.as_bytes(), b"refresh-TOKEN-77ab"] {
                    assert!(!bytes.windows(token.len()).any(|w| w == token), "{} holds a token in the clear", p.display());
                }
            }
        }
        assert!(control_seen, "the scan finds a value stored in the clear (else it could not find a token either)");
        // Without the key the data dir is useless; the error names the missing key.
        let db = store(dir.path());
        let stranger = CredentialBook::open(&db, Arc::new(seal::Sealer::new(&new, &[]))).unwrap();
        let err = stranger.current("acme").unwrap_err();
        assert!(matches!(&err, CredentialError::Sealed { source: seal::SealError::UnknownKey { .. }, .. }), "{err}");
        // Rotation: new key current, old key previous; everything still opens, reseal
        // moves both records, then the old key can go.
        let rotated = CredentialBook::open(&db, Arc::new(seal::Sealer::new(&new, &[old]))).unwrap();
        assert_eq!(rotated.current("acme").unwrap().0.access_token.expose(), secret);
        assert_eq!(rotated.reseal().await.unwrap(), 2);
        assert_eq!(rotated.reseal().await.unwrap(), 0, "nothing left on the old key");
        let new_only = CredentialBook::open(&db, Arc::new(seal::Sealer::new(&new, &[]))).unwrap();
        assert_eq!(new_only.current("acme").unwrap().0.access_token.expose(), secret);
        assert_eq!(new_only.current("globex").unwrap().0.access_token.expose(), "access-globex");
    }
}
