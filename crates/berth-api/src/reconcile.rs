//! Reconciliation by hand (see berth-core reconcile.rs), under `/v1/admin`:
//! - `POST shops/{shop}/reconcile[?repair=true][&format=csv]`  compare now (and repair)   operator
//! - `GET  shops/{shop}/reconcile[?format=csv]`                the shop's last report      viewer
//!
//! A run reads the shop's listings from the platform (under its rate limits) and compares
//! them with the ERP's newest quantities; the answer is the report, or its drifts as
//! CSV. `repair` puts the drifting SKUs back to the pusher. Runs are audited.

use super::admin::{Action, AdminState};
use super::error;
use axum::extract::{Path, Query, State};
use super::listings::{csv_attachment, csv_wanted};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use berth_core::reconcile::{ReconcileError, Report};
use berth_types::access::Access;
use serde::Deserialize;
use std::sync::Arc;

pub fn routes() -> Router<Arc<AdminState>> {
    Router::new().route("/v1/admin/shops/{shop}/reconcile", get(last).post(run))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunQuery {
    repair: Option<bool>,
    format: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    format: Option<String>,
}

fn answer(report: &Report, csv: bool) -> Response {
    if !csv {
        return Json(report).into_response();
    }
    match report.csv_text() {
        Ok(body) => csv_attachment(body, &format!("{}-drift-{}.csv", report.shop, report.at_ms)),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot write the drifts as CSV: {e}")),
    }
}

async fn last(State(st): State<Arc<AdminState>>, Path(shop): Path<String>, Query(q): Query<ReadQuery>, headers: HeaderMap) -> Response {
    if let Err(resp) = st.caller_for_shop(&headers, Access::Read, None, &shop) {
        return resp;
    }
    let csv = match csv_wanted(q.format.as_deref()) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    match st.reconciler.last(&shop) {
        Some(report) => answer(&report, csv),
        None => error(StatusCode::NOT_FOUND, format!("shop `{shop}` was not reconciled yet; run `berth reconcile --shop {shop}`")),
    }
}

async fn run(State(st): State<Arc<AdminState>>, Path(shop): Path<String>, Query(q): Query<RunQuery>, headers: HeaderMap) -> Response {
    let repair = q.repair.unwrap_or(false);
    let action = Action { name: if repair { "reconcile-repair" } else { "reconcile" }, target: &shop };
    let caller = match st.caller_for_shop(&headers, Access::Operate, Some(&action), &shop) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let csv = match csv_wanted(q.format.as_deref()) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let target = st.shops.webhook(&shop);
    if target.is_none() {
        return st.refuse(&caller, &action, StatusCode::NOT_FOUND, format!("no shop `{shop}` is configured"));
    }
    match st.reconciler.run(&shop, target.as_deref(), repair, &caller.name).await {
        Ok(report) => {
            if report.repaired > 0 {
                st.shops.wake_pusher(&shop);
            }
            let detail = format!("{} drifting, {} missing, {} repaired", report.drifting, report.missing, report.repaired);
            match st.record(&caller.name, &action, None, "ok", detail) {
                Ok(()) => answer(&report, csv),
                Err(resp) => resp,
            }
        }
        Err(e) => {
            let resp = match &e {
                ReconcileError::Listing(l) => super::listings::listing_error(l),
                ReconcileError::Stock(_) | ReconcileError::Storage(_) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            };
            let outcome = if resp.status().is_server_error() && resp.status() != StatusCode::BAD_GATEWAY { "failed" } else { "refused" };
            match st.record(&caller.name, &action, None, outcome, e.to_string()) {
                Ok(()) => resp,
                Err(audit) => audit,
            }
        }
    }
}
