//! Write guards by hand (see berth-core stock/guard.rs), under `/v1/admin`:
//! - `GET  shops/{shop}/stock/holds`                the shop's holds: SKUs, why, a sample   viewer
//! - `POST shops/{shop}/stock/holds/{id}/release`   push the held quantities                operator
//! - `POST shops/{shop}/stock/holds/{id}/discard`   keep what the platform was last given   operator
//! - `GET  stock/pauses`                            platforms whose pushes are paused       viewer
//! - `POST shops/{shop}/stock/resume`               resume one shop's paused pushes         operator
//! - `POST platforms/{platform}/writes/resume`      resume every shop's on the platform     operator
//!
//! Every change is audited with the shop (or platform) and the hold.

use super::admin::{Action, AdminState};
use super::error;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_core::stock::guard::hold_views;
use berth_core::stock::StockError;
use berth_types::access::Access;
use std::sync::Arc;

pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/v1/admin/shops/{shop}/stock/holds", get(holds))
        .route("/v1/admin/shops/{shop}/stock/holds/{id}/release", post(|s, p, h| end(s, p, h, true)))
        .route("/v1/admin/shops/{shop}/stock/holds/{id}/discard", post(|s, p, h| end(s, p, h, false)))
        .route("/v1/admin/stock/pauses", get(pauses))
        .route("/v1/admin/shops/{shop}/stock/resume", post(resume_shop))
        .route("/v1/admin/platforms/{platform}/writes/resume", post(resume_platform))
}

fn stock_status(e: &StockError) -> StatusCode {
    match e {
        StockError::UnknownHold { .. } => StatusCode::NOT_FOUND,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn holds(State(st): State<Arc<AdminState>>, Path(shop): Path<String>, headers: HeaderMap) -> Response {
    if let Err(resp) = st.caller_for_shop(&headers, Access::Read, None, &shop) {
        return resp;
    }
    if st.shops.stock(&shop).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no shop `{shop}` is configured"));
    }
    match st.shops.ledger().held(&shop) {
        Ok(held) => Json(serde_json::json!({ "shop": shop, "holds": hold_views(&held) })).into_response(),
        Err(e) => error(stock_status(&e), e.to_string()),
    }
}

async fn end(State(st): State<Arc<AdminState>>, Path((shop, id)): Path<(String, String)>, headers: HeaderMap, release: bool) -> Response {
    let target = format!("{shop}/{id}");
    let action = Action { name: if release { "release-stock-hold" } else { "discard-stock-hold" }, target: &target };
    let caller = match st.caller_for_shop(&headers, Access::Operate, Some(&action), &shop) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let Some(entry) = st.shops.stock(&shop) else {
        return st.refuse(&caller, &action, StatusCode::NOT_FOUND, format!("no shop `{shop}` is configured"));
    };
    match st.shops.ledger().end_hold(&shop, &id, release).await {
        Ok(skus) => {
            // What the window saw went through a person: it counts no more.
            st.shops.guards().forget(&shop);
            if let (true, Some((wake, _))) = (release, &entry.pusher) {
                wake.notify_one();
            }
            let verb = if release { "released" } else { "discarded" };
            tracing::warn!(by = %caller.name, shop = %shop, hold = %id, skus, "write-guard hold {verb} by an operator");
            match st.record(&caller.name, &action, None, "ok", format!("{skus} SKUs {verb}")) {
                Ok(()) => Json(serde_json::json!({ "shop": shop, "hold": id, verb: skus })).into_response(),
                Err(resp) => resp,
            }
        }
        Err(e) => {
            let status = stock_status(&e);
            let outcome = if status.is_server_error() { "failed" } else { "refused" };
            match st.record(&caller.name, &action, None, outcome, e.to_string()) {
                Ok(()) => error(status, e.to_string()),
                Err(resp) => resp,
            }
        }
    }
}

async fn pauses(State(st): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if let Err(resp) = st.caller(&headers, Access::Read, None) {
        return resp;
    }
    Json(serde_json::json!({ "pauses": st.shops.guards().pauses() })).into_response()
}

async fn resume_shop(State(st): State<Arc<AdminState>>, Path(shop): Path<String>, headers: HeaderMap) -> Response {
    let action = Action { name: "resume-writes", target: &shop };
    let caller = match st.caller_for_shop(&headers, Access::Operate, Some(&action), &shop) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let Some(entry) = st.shops.stock(&shop) else {
        return st.refuse(&caller, &action, StatusCode::NOT_FOUND, format!("no shop `{shop}` is configured"));
    };
    resumed(&st, &caller.name, &action, &entry.platform, Some(&shop))
}

async fn resume_platform(State(st): State<Arc<AdminState>>, Path(platform): Path<String>, headers: HeaderMap) -> Response {
    let target = format!("platform:{platform}");
    let action = Action { name: "resume-writes", target: &target };
    let caller = match st.caller(&headers, Access::Operate, Some(&action)) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    resumed(&st, &caller.name, &action, &platform, None)
}

fn resumed(st: &AdminState, who: &str, action: &Action<'_>, platform: &str, shop: Option<&str>) -> Response {
    if !st.shops.guards().resume(platform, shop) {
        let paused: Vec<String> = st.shops.guards().pauses().into_iter().map(|p| p.platform).collect();
        let why = format!(
            "stock pushes to {platform} are not paused; paused now: {}",
            if paused.is_empty() { "none".to_string() } else { paused.join(", ") }
        );
        return match st.record(who, action, None, "refused", why.clone()) {
            Ok(()) => error(StatusCode::NOT_FOUND, why),
            Err(resp) => resp,
        };
    }
    tracing::warn!(by = %who, platform, shop = shop.unwrap_or("*"), "paused stock pushes resumed by an operator");
    match st.record(who, action, None, "ok", String::new()) {
        Ok(()) => Json(serde_json::json!({ "platform": platform, "shop": shop, "resumed": true })).into_response(),
        Err(resp) => resp,
    }
}
