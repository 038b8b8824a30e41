//! Snapshots (see berth-snapshot) and the fallback stock served from them:
//! - `POST /v1/admin/shops/{shop}/snapshots`   take one now (`berth snapshot --shop S`)   operator, audited
//! - `GET  /v1/admin/shops/{shop}/snapshots`   the shop's snapshots, newest first, and its last failure   viewer
//! - `GET  /v1/shops/{shop}/stock/fallback`    the last snapshot's quantities, stale, while the
//!   shop's platform has been unreachable for `fallback_after_mins`   ERP
//!
//! A snapshot reads the listings from the platform (under its limits), so it answers like
//! a listing read when that fails (409 one running, 422 a world that cannot list, 502/503
//! the platform); 507 when the snapshot could not be written (the disk).

use super::admin::{Action, AdminState};
use super::{error, ApiState};
use crate::auth::Caller;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use berth_snapshot::fallback::FallbackError;
use berth_snapshot::{Snapshot, SnapshotError};
use berth_types::access::Access;
use serde::Serialize;
use std::sync::Arc;

pub fn routes() -> Router<Arc<AdminState>> {
    Router::new().route("/v1/admin/shops/{shop}/snapshots", get(list).post(take))
}

#[derive(Serialize)]
struct Listed {
    shop: String,
    snapshots: Vec<Snapshot>,
    /// The last snapshot's failure, while no snapshot succeeded since.
    failed: Option<berth_snapshot::Failure>,
}

async fn list(State(st): State<Arc<AdminState>>, Path(shop): Path<String>, headers: HeaderMap) -> Response {
    if let Err(resp) = st.caller_for_shop(&headers, Access::Read, None, &shop) {
        return resp;
    }
    if st.shops.webhook(&shop).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no shop `{shop}` is configured"));
    }
    let snapshots = st.snapshots.list(&shop);
    let failed = st.snapshots.failures().into_iter().find(|f| f.shop == shop);
    Json(Listed { shop, snapshots, failed }).into_response()
}

async fn take(State(st): State<Arc<AdminState>>, Path(shop): Path<String>, headers: HeaderMap) -> Response {
    let action = Action { name: "snapshot", target: &shop };
    let caller = match st.caller_for_shop(&headers, Access::Operate, Some(&action), &shop) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let target = st.shops.webhook(&shop);
    if target.is_none() {
        return st.refuse(&caller, &action, StatusCode::NOT_FOUND, format!("no shop `{shop}` is configured"));
    }
    match st.snapshots.take(&shop, target.as_deref(), &caller.name).await {
        Ok(snap) => {
            let rows: Vec<String> = snap.manifest.files.iter().map(|f| format!("{} {}", f.name, f.rows)).collect();
            match st.record(&caller.name, &action, None, "ok", format!("{} ({})", snap.manifest.date, rows.join(", "))) {
                Ok(()) => Json(snap).into_response(),
                Err(resp) => resp,
            }
        }
        Err(e) => {
            let resp = match &e {
                SnapshotError::UnknownShop(_) => error(StatusCode::NOT_FOUND, e.to_string()),
                SnapshotError::Running(_) => error(StatusCode::CONFLICT, e.to_string()),
                SnapshotError::Listings(l) => super::listings::listing_error(l),
                SnapshotError::TooManyOrders { .. } => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
                SnapshotError::Stock(_) | SnapshotError::Orders(_) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                SnapshotError::Files(_) => error(StatusCode::INSUFFICIENT_STORAGE, format!("{e}; nothing of this snapshot is visible, the last one stays")),
            };
            let outcome = if resp.status().is_server_error() && resp.status() != StatusCode::BAD_GATEWAY { "failed" } else { "refused" };
            match st.record(&caller.name, &action, None, outcome, e.to_string()) {
                Ok(()) => resp,
                Err(audit) => audit,
            }
        }
    }
}

/// `GET /v1/shops/{shop}/stock/fallback`.
pub async fn fallback(State(st): State<Arc<ApiState>>, Extension(caller): Extension<Caller>, Path(shop): Path<String>) -> Response {
    if !caller.sees(&shop) || st.shops.webhook(&shop).is_none() {
        return super::no_such_shop(&st, &caller, &shop);
    }
    let down_since = st.health.shop(&shop).and_then(|h| h.down_since_ms);
    match st.snapshots.fallback(&shop, down_since) {
        Ok(fb) => {
            let mut resp = Json(fb).into_response();
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => {
            let status = match e {
                FallbackError::Reachable(_) | FallbackError::NotYet { .. } => StatusCode::CONFLICT,
                FallbackError::NoSnapshot(_) => StatusCode::NOT_FOUND,
                FallbackError::Unreadable { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, e.to_string())
        }
    }
}
