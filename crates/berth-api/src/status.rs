//! The status dashboard: `GET /dashboard` (a self-refreshing page) and `GET /v1/status`,
//! everything it shows in one read: connectors and versions, shops with their pulls and
//! probes, health per tier, queue levels, platform quotas and throttles, and alerts.

use berth_runtime::breaker::BreakerState;
use super::ApiState;
use berth_ops::alerts::{AlertRecord, LogEntry};
use berth_core::health::{ShopHealth, TierSummary};
use berth_core::levels::QueueLevel;
use berth_runtime::call_stats::Tally;
use berth_capabilities::ratelimit::HeldQuota;
use berth_capabilities::usage::QuotaUsage;
use berth_core::sync::ShopStatus;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const PAGE: &str = include_str!("dashboard.html");

/// Recent notifications the dashboard lists.
const RECENT: usize = 20;
/// Quotas the dashboard lists (the busiest).
const QUOTAS: usize = 50;

#[derive(Serialize)]
pub struct StatusView {
    pub generated_at_ms: i64,
    pub source: String,
    pub connectors: Vec<ConnectorRow>,
    pub tiers: Vec<TierSummary>,
    pub shops: Vec<ShopRow>,
    pub queues: Vec<QueueLevel>,
    /// Each platform quota's busiest key, busiest first (at most [`QUOTAS`]).
    pub quotas: Vec<QuotaUsage>,
    /// Quotas held now: the platform throttled, a connector said `rate-limited`, or a
    /// call bucket is nearly full.
    pub throttles: Vec<HeldQuota>,
    /// The last three fault drills.
    pub drills: Vec<berth_ops::drills::DrillRecord>,
    pub firing: Vec<AlertRecord>,
    pub recent: Vec<LogEntry>,
}

#[derive(Serialize)]
pub struct ConnectorRow {
    pub name: String,
    pub platform: String,
    pub version: String,
    pub digest: String,
    pub wit_version: String,
    /// The candidate's version and shops while a canary runs.
    pub canary: Option<CanaryRow>,
    pub paused: bool,
    pub shops: usize,
    /// Calls of the active version (and candidate) in the last 5 minutes.
    pub calls_5m: Tally,
    /// `closed`, or `open` / `half-open` while the circuit breaker isolates the active
    /// version or the candidate.
    pub breaker: BreakerState,
    pub breaker_reason: Option<String>,
}

#[derive(Serialize)]
pub struct CanaryRow {
    pub version: String,
    pub shops: Vec<String>,
}

#[derive(Serialize)]
pub struct ShopRow {
    #[serde(flatten)]
    pub health: ShopHealth,
    pub pull: Option<ShopStatus>,
}

pub fn status(st: &ApiState) -> StatusView {
    let by_connector = st.shops.by_connector();
    let connectors = st
        .registry
        .slots()
        .iter()
        .map(|(name, slot)| {
            let c = slot.current();
            let candidate = slot.canary();
            let canary = candidate.as_ref().map(|k| CanaryRow { version: k.version.version().to_string(), shops: k.shops.iter().cloned().collect() });
            // The active version's breaker, unless only the canary's is not closed.
            let active = c.breaker.view();
            let breaker = match candidate.map(|k| k.version.breaker.view()) {
                Some(canary) if active.state == BreakerState::Closed && canary.state != BreakerState::Closed => canary,
                _ => active,
            };
            ConnectorRow {
                name: name.clone(),
                platform: c.manifest.platform.clone(),
                version: c.version().to_string(),
                digest: c.digest.clone(),
                wit_version: c.manifest.wit_version.clone(),
                canary,
                paused: slot.paused(),
                shops: by_connector.get(name).map_or(0, Vec::len),
                calls_5m: slot.tally(Duration::from_secs(300)),
                breaker: breaker.state,
                breaker_reason: breaker.reason,
            }
        })
        .collect();
    let mut pulls: BTreeMap<String, ShopStatus> = st.shops.statuses().into_iter().map(|s| (s.shop.clone(), s)).collect();
    let health = st.health.shops();
    let tiers = st.health.summary(&health);
    let shops = health.into_iter().map(|h| ShopRow { pull: pulls.remove(&h.shop), health: h }).collect();
    StatusView {
        generated_at_ms: berth_types::clock::now_ms(),
        source: st.alerts.source().to_string(),
        connectors,
        tiers,
        shops,
        queues: berth_core::levels::queue_levels(&st.inbox, &st.stock, &st.shops),
        quotas: berth_capabilities::usage::busiest(&st.services.limits.usage()).into_iter().take(QUOTAS).collect(),
        throttles: st.services.limits.held(),
        drills: st.drills.list().into_iter().take(3).collect(),
        firing: st.alerts.firing(),
        recent: st.alerts.recent(RECENT),
    }
}

pub async fn get_status(State(st): State<Arc<ApiState>>) -> axum::response::Response {
    // Queue and stock levels are the store's counters: no scan, no disk.
    Json(status(&st)).into_response()
}

pub async fn dashboard() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // The page runs only its own inline script and reads only this origin.
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"),
        ],
        PAGE,
    )
}
