//! Stock endpoints: the ERP submits absolute quantities per SKU and reads per-SKU results.
//!
//! `POST /v1/shops/{shop}/stock`        {"updates": [{"sku", "quantity", "seq"?}]}
//! `GET  /v1/shops/{shop}/stock`        ?state=pending|pushed|rejected|dead|exported|held&after=SKU&limit=N
//! `GET  /v1/shops/{shop}/stock/{sku}`  one SKU's record
//! `POST /v1/shops/{shop}/stock/dead-letters/replay` {"skus": [...]}: rejected/dead SKUs back to pending
//! `POST /v1/shops/{shop}/stock/dead-letters/purge` {"skus": [...]}: forget rejected/dead SKUs
//! `GET  /v1/stock/queue`               per shop: counts, oldest pending age, pusher status

use super::{body_or_400, error, ApiState, JsonBody};
use berth_core::stock::pusher::PushStatus;
use berth_core::stock::{StockShop, SkuState, SkuStock, StockError, StockRequest, StockStats, SubmitResult};
use crate::auth::Caller;
use axum::extract::{Path, Query, State};
use axum::Extension;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Largest batch one stock request may carry, and the largest listing page.
pub const MAX_STOCK_BATCH: usize = 1000;


fn stock_error(e: StockError) -> Response {
    match e {
        StockError::BadSku(_) => error(StatusCode::BAD_REQUEST, e.to_string()),
        StockError::Storage(e) => super::storage_error(&e),
        StockError::TooManySkus { .. } => error(StatusCode::BAD_REQUEST, e.to_string()),
        // The cluster could not take the change now (unreachable, or other nodes kept
        // changing the same SKUs): nothing was written, the same request may be sent again.
        StockError::Cluster(berth_cluster::ClusterError::Nats(_) | berth_cluster::ClusterError::Conflict(_)) => {
            tracing::warn!(error = %e, "stock change not taken by the cluster");
            let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; nothing was written, send the request again"));
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
            resp
        }
        e => {
            tracing::error!(error = %e, "stock ledger failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// The shop's entry, or the response saying why it cannot take stock (404 also for a
/// shop the caller's token does not see).
fn shop_entry(st: &ApiState, caller: &Caller, shop: &str) -> Result<StockShop, Response> {
    st.shops.stock(shop).filter(|_| caller.sees(shop)).ok_or_else(|| super::no_such_shop(st, caller, shop))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    updates: Vec<StockRequest>,
}

#[derive(Serialize)]
struct SubmitResponse {
    results: Vec<SubmitResult>,
    /// A write guard held the submission: the hold's id and why (an operator releases
    /// or discards it).
    #[serde(skip_serializing_if = "Option::is_none")]
    held: Option<HeldBy>,
}

#[derive(Serialize)]
struct HeldBy {
    hold: String,
    reason: String,
}

pub async fn submit(State(st): State<Arc<ApiState>>, Extension(caller): Extension<Caller>, Path(shop): Path<String>, body: JsonBody<SubmitBody>) -> Response {
    let entry = match shop_entry(&st, &caller, &shop) {
        Ok(e) => e,
        Err(resp) => return resp,
    };
    let Some((wake, _)) = &entry.pusher else {
        return error(
            StatusCode::CONFLICT,
            format!("shop `{shop}` uses connector `{}`, which does not offer inventory; nothing was stored", entry.connector),
        );
    };
    let req = match body_or_400(body, r#"{"updates": [{"sku": "A-1", "quantity": 5, "seq": 17}]} (seq optional)"#) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if req.updates.is_empty() || req.updates.len() > MAX_STOCK_BATCH {
        return error(StatusCode::BAD_REQUEST, format!("send 1..={MAX_STOCK_BATCH} updates per request"));
    }
    match st.shops.guards().submit(&st.stock, &shop, &entry.platform, &req.updates).await {
        Ok(sub) => {
            wake.notify_one();
            let held = sub.held.map(|(hold, reason)| HeldBy { hold, reason });
            (StatusCode::ACCEPTED, Json(SubmitResponse { results: sub.results, held })).into_response()
        }
        Err(e) => stock_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<SkuState>,
    after: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct ListResponse {
    skus: Vec<SkuStock>,
    /// Pass as `after` for the next page; absent at the end.
    next_after: Option<String>,
}

pub async fn list(
    State(st): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(shop): Path<String>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(resp) = shop_entry(&st, &caller, &shop) {
        return resp;
    }
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, format!("{e}; expected ?state=pending|pushed|rejected|dead|exported|held&after=SKU&limit=1..={MAX_STOCK_BATCH}"))
        }
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_STOCK_BATCH).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, format!("limit must be 1..={MAX_STOCK_BATCH}"));
    }
    match st.stock.list(&shop, q.state, q.after.as_deref(), limit) {
        Ok(skus) => {
            let next_after = (skus.len() == limit).then(|| skus.last().map(|r| r.sku.clone())).flatten();
            Json(ListResponse { skus, next_after }).into_response()
        }
        Err(e) => stock_error(e),
    }
}

pub async fn one(State(st): State<Arc<ApiState>>, Extension(caller): Extension<Caller>, Path((shop, sku)): Path<(String, String)>) -> Response {
    if let Err(resp) = shop_entry(&st, &caller, &shop) {
        return resp;
    }
    match st.stock.get(&shop, &sku) {
        Ok(Some(rec)) => Json(rec).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no stock update was ever submitted for SKU `{sku}` of shop `{shop}`")),
        Err(e) => stock_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    skus: Vec<String>,
}

#[derive(Serialize)]
struct ReplayResponse {
    count: usize,
}

async fn dead_letter_op(st: &ApiState, caller: &Caller, shop: &str, body: JsonBody<ReplayBody>, replay: bool) -> Response {
    let entry = match shop_entry(st, caller, shop) {
        Ok(e) => e,
        Err(resp) => return resp,
    };
    let req = match body_or_400(body, r#"{"skus": ["A-1", ...]} from GET /v1/shops/{shop}/stock?state=dead (or rejected)"#) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let result = if replay { st.stock.replay(shop, &req.skus).await } else { st.stock.purge(shop, &req.skus).await };
    match result {
        Ok(count) => {
            if let (true, Some((wake, _))) = (replay, &entry.pusher) {
                wake.notify_one();
            }
            Json(ReplayResponse { count }).into_response()
        }
        Err(e) => stock_error(e),
    }
}

pub async fn replay(State(st): State<Arc<ApiState>>, Extension(caller): Extension<Caller>, Path(shop): Path<String>, body: JsonBody<ReplayBody>) -> Response {
    dead_letter_op(&st, &caller, &shop, body, true).await
}

pub async fn purge(State(st): State<Arc<ApiState>>, Extension(caller): Extension<Caller>, Path(shop): Path<String>, body: JsonBody<ReplayBody>) -> Response {
    dead_letter_op(&st, &caller, &shop, body, false).await
}

#[derive(Serialize)]
struct ShopStockView {
    connector: String,
    pushes_enabled: bool,
    #[serde(flatten)]
    stats: StockStats,
    pusher: Option<PushStatus>,
}

pub async fn queue(State(st): State<Arc<ApiState>>, Extension(caller): Extension<Caller>) -> Response {
    let mut out = BTreeMap::new();
    for (shop, entry) in st.shops.stock_shops().iter().filter(|(shop, _)| caller.sees(shop)) {
        let stats = match st.stock.stats(shop) {
            Ok(s) => s,
            Err(e) => return stock_error(e),
        };
        let pusher = entry.pusher.as_ref().map(|(_, s)| s.lock().unwrap_or_else(|e| e.into_inner()).clone());
        out.insert(
            shop.clone(),
            ShopStockView { connector: entry.connector.clone(), pushes_enabled: entry.pusher.is_some(), stats, pusher },
        );
    }
    Json(out).into_response()
}
