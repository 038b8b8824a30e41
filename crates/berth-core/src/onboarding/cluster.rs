//! Onboarding in cluster mode: the states handed out and the shops onboarded are the
//! cluster's (keys of the shops bucket), so a merchant's callback may reach any node, a
//! state works once whichever node it reaches, and every node knows every onboarded
//! shop — the node holding a shop's lease runs it.
//!
//! - `oauth.<state>`: an onboarding under way, created once; taken by a purge that
//!   expects its revision, so two nodes given the same callback cannot both take it.
//! - `onboarded.<shop>`: a shop as kept (an empty value once removed), watched by every
//!   node ([`Mirror`]); a change wakes the host, which shares the cluster's shops out
//!   again ([`super::Onboarding::changes`]).

use super::{Onboarded, OnboardingError, Pending, MAX_PENDING, STATE_LIFETIME_MS};
use berth_cluster::mirror::{Json, Mirror};
use berth_cluster::{ClusterError, Connection};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;

const STATES: &str = "oauth.";
const SHOPS: &str = "onboarded.";

impl From<ClusterError> for OnboardingError {
    fn from(e: ClusterError) -> OnboardingError {
        OnboardingError::Cluster(e.to_string())
    }
}

fn cluster(e: impl std::fmt::Display) -> OnboardingError {
    OnboardingError::Cluster(e.to_string())
}

pub(super) struct ClusterKept {
    conn: Connection,
    shops: Mirror<Json<Onboarded>>,
    changed: Arc<tokio::sync::Notify>,
}

impl ClusterKept {
    pub async fn open(conn: &Connection) -> Result<ClusterKept, OnboardingError> {
        let changed = Arc::new(tokio::sync::Notify::new());
        let wake = changed.clone();
        let on_change = Box::new(move |_key: &str, before: Option<&Onboarded>, after: Option<&Onboarded>| {
            if before != after {
                wake.notify_one();
            }
        });
        let shops = Mirror::open(conn, SHOPS, on_change).await?;
        Ok(ClusterKept { conn: conn.clone(), shops, changed })
    }

    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// Keep `pending` under `state`, once at most [`MAX_PENDING`] are under way
    /// (expired ones are dropped first).
    pub async fn begin(&self, state: &str, pending: &Pending) -> Result<(), OnboardingError> {
        let now = berth_types::clock::now_ms();
        let mut live = 0;
        for s in berth_cluster::fenced::scan(&self.conn, STATES).await? {
            match serde_json::from_slice::<Pending>(&s.value) {
                Ok(p) if now - p.started_ms <= STATE_LIFETIME_MS => live += 1,
                _ => {
                    if let Err(e) = self.conn.shops.purge_expect_revision(&s.key, Some(s.revision)).await {
                        tracing::debug!(error = %e, "an expired onboarding state was not dropped (taken or dropped elsewhere)");
                    }
                }
            }
        }
        if live >= MAX_PENDING {
            return Err(OnboardingError::TooManyPending);
        }
        let value = Bytes::from(serde_json::to_vec(pending).expect("a pending onboarding serializes"));
        self.conn.shops.create(format!("{STATES}{state}"), value).await.map_err(cluster)?;
        Ok(())
    }

    /// The onboarding under `state`, taken: `None` when there is none (never handed
    /// out, or taken already, here or on another node).
    pub async fn take(&self, state: &str) -> Result<Option<Bytes>, OnboardingError> {
        let key = format!("{STATES}{state}");
        let Some(latest) = self.conn.latest_shop_key(&key).await? else { return Ok(None) };
        let Some(value) = latest.value.filter(|v| !v.is_empty()) else { return Ok(None) };
        match self.conn.shops.purge_expect_revision(&key, Some(latest.revision)).await {
            Ok(()) => Ok(Some(value)),
            Err(e) => match self.conn.latest_shop_key(&key).await? {
                // Another node took it between the read and the purge.
                Some(l) if l.revision != latest.revision => Ok(None),
                _ => Err(cluster(e)),
            },
        }
    }

    pub async fn record(&self, shop: &str, o: &Onboarded) -> Result<(), OnboardingError> {
        self.write(shop, Some(o)).await
    }

    /// Whether `shop` was kept (it is not any more).
    pub async fn remove(&self, shop: &str) -> Result<bool, OnboardingError> {
        let key = format!("{SHOPS}{shop}");
        let kept = self.conn.latest_shop_key(&key).await?.and_then(|l| l.value).is_some_and(|v| !v.is_empty());
        if kept {
            self.write(shop, None).await?;
        }
        Ok(kept)
    }

    async fn write(&self, shop: &str, o: Option<&Onboarded>) -> Result<(), OnboardingError> {
        use berth_cluster::mirror::Codec;
        let key = format!("{SHOPS}{shop}");
        let revision = self.conn.shops.put(&key, Json::<Onboarded>::encode(o)).await.map_err(cluster)?;
        // Read back at once on this node (the watch brings it moments later).
        self.shops.applied_writes(&[(key, revision, o.cloned())]);
        Ok(())
    }

    /// Every onboarded shop, as this node's copy has them.
    pub fn onboarded(&self) -> BTreeMap<String, Onboarded> {
        let mut out = BTreeMap::new();
        self.shops.walk(SHOPS, SHOPS, |key, o| {
            out.insert(key.trim_start_matches(SHOPS).to_string(), o.clone());
            true
        });
        out
    }
}
