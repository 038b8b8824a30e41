//! The HTTP API: ERP-facing order reads, shop and connector status, health.

use crate::store::{OrderRecord, OrderStore};
use crate::sync::{SharedStatus, ShopStatus};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Largest page `GET /v1/orders` returns.
pub const MAX_ORDERS_PAGE: usize = 1000;

#[derive(Clone, Debug, Serialize)]
pub struct ConnectorInfo {
    pub name: String,
    pub platform: String,
    pub version: String,
    pub wit_version: String,
    pub digest: String,
    pub allowed_hosts: Vec<String>,
}

pub struct ApiState {
    pub store: Arc<OrderStore>,
    pub shops: Vec<SharedStatus>,
    pub connectors: Vec<ConnectorInfo>,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/v1/orders", get(list_orders))
        .route("/v1/orders/feed", get(feed_info))
        .route("/v1/shops", get(list_shops))
        .route("/v1/connectors", get(list_connectors))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

#[derive(Serialize)]
struct ApiError {
    error: String,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ApiError { error: msg.into() })).into_response()
}

async fn index() -> &'static str {
    "berth connector host\n\
     GET /v1/orders?after=SEQ&limit=N[&shop=NAME]  orders in arrival order; pass next_after back as after\n\
     GET /v1/shops                                  per-shop pull status\n\
     GET /v1/connectors                             loaded connectors\n\
     GET /healthz  GET /readyz\n"
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrdersQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    shop: Option<String>,
}

#[derive(Serialize)]
struct OrdersPage {
    orders: Vec<OrderRecord>,
    /// Pass as `after` to read on; equals the request's `after` when nothing is new.
    next_after: u64,
}

async fn list_orders(State(st): State<Arc<ApiState>>, q: Result<Query<OrdersQuery>, axum::extract::rejection::QueryRejection>) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}; expected ?after=SEQ&limit=1..={MAX_ORDERS_PAGE}&shop=NAME")),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_ORDERS_PAGE).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, format!("limit must be 1..={MAX_ORDERS_PAGE}"));
    }
    match st.store.list(q.after, limit, q.shop.as_deref()) {
        Ok(orders) => {
            let next_after = orders.last().map(|o| o.seq).unwrap_or(q.after);
            Json(OrdersPage { orders, next_after }).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "listing orders failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}"))
        }
    }
}

#[derive(Serialize)]
struct FeedInfo {
    entries: usize,
    committed_seq: u64,
    /// Readers see entries up to here: flushed to disk.
    durable_seq: u64,
}

async fn feed_info(State(st): State<Arc<ApiState>>) -> Json<FeedInfo> {
    let (committed_seq, durable_seq) = st.store.sequences();
    Json(FeedInfo { entries: st.store.feed_len(), committed_seq, durable_seq })
}

async fn list_shops(State(st): State<Arc<ApiState>>) -> Json<Vec<ShopStatus>> {
    Json(st.shops.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone()).collect())
}

async fn list_connectors(State(st): State<Arc<ApiState>>) -> Json<Vec<ConnectorInfo>> {
    Json(st.connectors.clone())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<Arc<ApiState>>) -> Response {
    if st.connectors.is_empty() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no connectors loaded");
    }
    match st.store.probe_writable().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("storage is not writable: {e}")),
    }
}
