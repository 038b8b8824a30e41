//! Fault drills (berth-ops drills.rs):
//! - `POST /v1/admin/shops/{shop}/drills` `{"scenario": "platform-5xx", "duration_secs": 60}`
//!   starts one (admin role, audited); 202 with its record, which it keeps updating
//! - `GET  /v1/drills`, `GET /v1/drills/{id}`: the kept records, newest first  (viewer)

use super::admin::{Action, AdminState};
use super::{error, ApiState};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use berth_capabilities::drills::Scenario;
use berth_ops::drills::DrillError;
use berth_types::access::Access;
use serde::Deserialize;
use std::sync::Arc;

pub fn routes() -> Router<Arc<AdminState>> {
    Router::new().route("/v1/admin/shops/{shop}/drills", post(start))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    scenario: String,
    #[serde(default = "sixty")]
    duration_secs: u64,
}

fn sixty() -> u64 {
    60
}

async fn start(State(st): State<Arc<AdminState>>, Path(shop): Path<String>, headers: HeaderMap, body: super::JsonBody<StartBody>) -> Response {
    let action = Action { name: "drill", target: &shop };
    let caller = match st.caller_for_shop(&headers, Access::Drill, Some(&action), &shop) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
    let expected = format!(r#"{{"scenario": "{}", "duration_secs": 60}}"#, names.join("|"));
    let req = match st.body(&caller, &action, body, &expected) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let Some(scenario) = Scenario::parse(&req.scenario) else {
        let why = format!("no drill scenario `{}`; berth has: {}", req.scenario, names.join(", "));
        return st.refuse(&caller, &action, StatusCode::BAD_REQUEST, why);
    };
    let (status, outcome, answer) = match st.drills.start(&shop, scenario, req.duration_secs, &caller.name) {
        Ok(rec) => (StatusCode::ACCEPTED, "ok", Json(serde_json::to_value(&rec).unwrap_or_default()).into_response()),
        Err(e) => {
            let status = match e {
                DrillError::UnknownShop(_) => StatusCode::NOT_FOUND,
                DrillError::BadDuration => StatusCode::BAD_REQUEST,
                DrillError::NoStandby(_) => StatusCode::UNPROCESSABLE_ENTITY,
                DrillError::Running(_) => StatusCode::CONFLICT,
                DrillError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            let outcome = if status.is_server_error() { "failed" } else { "refused" };
            (status, outcome, error(status, e.to_string()))
        }
    };
    let detail = format!("{} for {} s", scenario.name(), req.duration_secs);
    match st.record(&caller.name, &action, None, outcome, detail) {
        Ok(()) => (status, answer).into_response(),
        Err(resp) => resp,
    }
}

pub async fn list(State(st): State<Arc<ApiState>>) -> Response {
    Json(serde_json::json!({ "drills": st.drills.list() })).into_response()
}

pub async fn one(State(st): State<Arc<ApiState>>, Path(id): Path<String>) -> Response {
    match st.drills.get(&id) {
        Some(r) => Json(r).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no drill `{id}` is kept (the last {} are)", berth_ops::drills::KEEP)),
    }
}
