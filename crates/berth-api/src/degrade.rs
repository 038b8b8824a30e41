//! Working a degraded shop by hand (see degrade/), under `/v1/admin/shops/{shop}`:
//! - `GET  degrade`                         whether CSV export/import is open, and why (not)   viewer
//! - `POST stock/export`                    pending stock as CSV, held in a new batch          operator
//! - `GET  stock/exports/{batch}`           the batch's CSV again (a lost download)            viewer
//! - `POST stock/exports/{batch}/confirm`   uploaded by hand: the SKUs count as pushed         operator
//! - `POST stock/exports/{batch}/cancel`    not uploaded: berth pushes them itself             operator
//! - `POST orders/import` (text/csv)        orders from the platform's CSV export              operator
//!
//! Every change is audited with the shop and batch or file size.

use super::admin::{Action, AdminState};
use super::error;
use berth_types::access::Access;
use berth_core::degrade::DegradeError;
use berth_core::stock::StockError;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::routing::{get, post};
use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

/// The degraded shop's routes, beside the admin API's own (same state, same audit).
pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/v1/admin/shops/{shop}/degrade", get(status))
        .route("/v1/admin/shops/{shop}/stock/export", post(export))
        .route("/v1/admin/shops/{shop}/stock/exports/{batch}", get(batch))
        .route("/v1/admin/shops/{shop}/stock/exports/{batch}/confirm", post(|s, p, h| end(s, p, h, true)))
        .route("/v1/admin/shops/{shop}/stock/exports/{batch}/cancel", post(|s, p, h| end(s, p, h, false)))
        .route("/v1/admin/shops/{shop}/orders/import", post(import).layer(DefaultBodyLimit::disable()))
}

fn status_of(e: &DegradeError) -> StatusCode {
    match e {
        DegradeError::UnknownShop(_) | DegradeError::Stock(StockError::UnknownBatch { .. }) => StatusCode::NOT_FOUND,
        DegradeError::NotDegraded { .. } => StatusCode::CONFLICT,
        DegradeError::Csv(_) => StatusCode::BAD_REQUEST,
        DegradeError::Stock(_) | DegradeError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn csv_response(batch: &str, skus: usize, body: String) -> Response {
    let mut resp = super::listings::csv_attachment(body, &format!("{batch}.csv"));
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(batch) {
        h.insert("x-berth-export-batch", v);
    }
    h.insert("x-berth-export-skus", HeaderValue::from(skus));
    resp
}

impl AdminState {
    /// Audit how a change ended; the error's answer when it failed.
    fn audited<T>(&self, who: &str, action: &Action<'_>, detail: String, r: Result<T, DegradeError>) -> Result<T, Response> {
        match r {
            Ok(v) => self.record(who, action, None, "ok", detail).map(|()| v),
            Err(e) => {
                let status = status_of(&e);
                let outcome = if status.is_server_error() { "failed" } else { "refused" };
                match self.record(who, action, None, outcome, e.to_string()) {
                    Ok(()) => Err(error(status, e.to_string())),
                    Err(resp) => Err(resp),
                }
            }
        }
    }
}

/// Largest orders CSV one import takes.
pub const MAX_IMPORT_BYTES: usize = 64 << 20;

pub async fn status(State(st): State<Arc<AdminState>>, Path(shop): Path<String>, headers: HeaderMap) -> Response {
    if let Err(resp) = st.caller_for_shop(&headers, Access::Read, None, &shop) {
        return resp;
    }
    match st.degrade.status(&shop) {
        Ok(s) => Json(s).into_response(),
        Err(e) => error(status_of(&e), e.to_string()),
    }
}

pub async fn export(State(st): State<Arc<AdminState>>, Path(shop): Path<String>, headers: HeaderMap) -> Response {
    let target = format!("shop:{shop}");
    let action = Action { name: "stock-export", target: &target };
    let caller = match st.caller_for_shop(&headers, Access::Operate, Some(&action), &shop) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let r = st.degrade.export_stock(&shop).await;
    let detail = r.as_ref().map(|(b, held)| format!("batch {b}: {} SKUs", held.len())).unwrap_or_default();
    match st.audited(&caller.name, &action, detail, r) {
        Ok((batch, held)) => csv_response(&batch, held.len(), berth_core::degrade::stock_csv(&held)),
        Err(resp) => resp,
    }
}

pub async fn batch(State(st): State<Arc<AdminState>>, Path((shop, batch)): Path<(String, String)>, headers: HeaderMap) -> Response {
    if let Err(resp) = st.caller_for_shop(&headers, Access::Read, None, &shop) {
        return resp;
    }
    match st.degrade.stock.export_batch(&shop, &batch) {
        Ok(held) if held.is_empty() => {
            error(StatusCode::NOT_FOUND, StockError::UnknownBatch { shop, batch }.to_string())
        }
        Ok(held) => csv_response(&batch, held.len(), berth_core::degrade::stock_csv(&held)),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

pub async fn end(State(st): State<Arc<AdminState>>, Path((shop, batch)): Path<(String, String)>, headers: HeaderMap, uploaded: bool) -> Response {
    let target = format!("shop:{shop}");
    let action = Action { name: if uploaded { "stock-export-confirm" } else { "stock-export-cancel" }, target: &target };
    let caller = match st.caller_for_shop(&headers, Access::Operate, Some(&action), &shop) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let r = st.degrade.stock.end_export(&shop, &batch, uploaded).await.map_err(DegradeError::from);
    let detail = r.as_ref().map(|n| format!("batch {batch}: {n} SKUs")).unwrap_or_default();
    match st.audited(&caller.name, &action, detail, r) {
        Ok(n) => {
            let key = if uploaded { "confirmed" } else { "returned_to_pusher" };
            Json(serde_json::json!({ "shop": shop, "batch": batch, key: n })).into_response()
        }
        Err(resp) => resp,
    }
}

pub async fn import(State(st): State<Arc<AdminState>>, Path(shop): Path<String>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let target = format!("shop:{shop}");
    let action = Action { name: "orders-import", target: &target };
    let caller = match st.caller_for_shop(&headers, Access::Operate, Some(&action), &shop) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    // Read only once the token is known good, and only up to the bound.
    let body = match axum::body::to_bytes(body, MAX_IMPORT_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            let why = format!("the CSV is larger than {} MB; split it", MAX_IMPORT_BYTES >> 20);
            return st.refuse(&caller, &action, StatusCode::PAYLOAD_TOO_LARGE, why);
        }
    };
    let r = st.degrade.import_orders(&shop, &body).await;
    let detail = match &r {
        Ok(i) => format!("{} bytes: {} orders, {} new, {} known", body.len(), i.orders, i.new, i.known),
        Err(_) => format!("{} bytes", body.len()),
    };
    match st.audited(&caller.name, &action, detail, r) {
        Ok(imported) => Json(imported).into_response(),
        Err(resp) => resp,
    }
}
