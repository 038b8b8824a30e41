//! `GET /v1/shops/{shop}/listings[?format=csv]`: every listing the shop's platform holds
//! now — SKU, the platform's item and variant ids, title, quantity, price in minor units
//! and currency — read through the connector's `listings` export (berth:connector
//! 0.4.0), page by page, throttled by the platform's limits like any of its calls.
//!
//! One read per shop at a time (409 while one runs); a version built for an older world
//! cannot list (422, naming it); a platform refusing or failing answers 502, or 503 with
//! `Retry-After` when it may work later; a read past its bounds 422 (too many) or 504.

use super::{error, ApiState};
use crate::auth::Caller;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use berth_core::listings::{ListingError, ReadBounds, ShopListings};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListingQuery {
    /// `json` (the default) or `csv`.
    format: Option<String>,
}

pub async fn get(State(st): State<Arc<ApiState>>, Extension(caller): Extension<Caller>, Path(shop): Path<String>, Query(q): Query<ListingQuery>) -> Response {
    let csv = match csv_wanted(q.format.as_deref()) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    if !caller.sees(&shop) {
        return super::no_such_shop(&st, &caller, &shop);
    }
    let target = st.shops.webhook(&shop);
    if target.is_none() {
        return super::no_such_shop(&st, &caller, &shop);
    }
    match st.listings.read(&shop, target.as_deref(), ReadBounds::default()).await {
        Ok(read) if csv => csv_answer(&read),
        Ok(read) => (StatusCode::OK, Json(read)).into_response(),
        Err(e) => listing_error(&e),
    }
}

/// The status a failed read answers with.
pub fn listing_error(e: &ListingError) -> Response {
    let status = match e {
        ListingError::UnknownShop(_) => StatusCode::NOT_FOUND,
        ListingError::Running(_) => StatusCode::CONFLICT,
        ListingError::NotSupported { .. } | ListingError::NoProducts { .. } | ListingError::TooMany { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        ListingError::Deadline { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    };
    let mut resp = error(status, e.to_string());
    if matches!(status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::CONFLICT) {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    }
    resp
}

fn csv_answer(read: &ShopListings) -> Response {
    let body = match read.csv_text() {
        Ok(b) => b,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot write the listings as CSV: {e}")),
    };
    let mut resp = csv_attachment(body, &format!("{}-listings.csv", read.shop));
    resp.headers_mut().insert("x-berth-listings", HeaderValue::from(read.listings.len()));
    resp
}

/// Whether a `format` query asks for CSV (`json`, the default, or `csv`), or the 400.
pub(crate) fn csv_wanted(format: Option<&str>) -> Result<bool, Response> {
    match format {
        None | Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(other) => Err(error(StatusCode::BAD_REQUEST, format!("format `{other}`: give json or csv"))),
    }
}

/// A 200 with `body` as a CSV file named `filename`.
pub(crate) fn csv_attachment(body: String, filename: &str) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}
