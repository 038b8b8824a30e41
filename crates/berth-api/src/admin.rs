//! The ops API under `/v1/admin`: connectors and their versions, deploy, activate,
//! rollback, shadow runs, canary (start, promote, abort), pause and resume, working a
//! degraded shop by hand (stock CSV export, orders CSV import; see api/degrade.rs), and
//! the audit log. Every call needs a bearer token with a
//! role (`[admin] tokens`); every call that changes something — or tried to — is written
//! to the audit log before it is answered.

use super::error;
use berth_core::audit::{AuditEntry, AuditLog};
use crate::auth::{AdminAuth, AuthError, Caller};
use berth_types::access::Access;
use berth_core::registry::{ConnectorRegistry, DeployError};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;

pub struct AdminState {
    pub registry: Arc<ConnectorRegistry>,
    /// Rate limits, for releasing a hold.
    pub services: Arc<berth_capabilities::services::HostServices>,
    pub auth: Arc<AdminAuth>,
    pub audit: Arc<AuditLog>,
    pub shops: Arc<berth_core::shops::ShopSet>,
    pub degrade: Arc<berth_core::degrade::Degrade>,
    pub api_metrics: Arc<super::metrics::ApiMetrics>,
    /// Shops onboarded by OAuth (api/oauth.rs).
    pub onboarding: Arc<berth_core::onboarding::Onboarding>,
    /// Fault drills (api/drills.rs).
    pub drills: Arc<berth_ops::drills::Drills>,
    /// Reconciliation (api/reconcile.rs).
    pub reconciler: Arc<berth_core::reconcile::Reconciler>,
    /// Snapshots (api/snapshots.rs).
    pub snapshots: Arc<berth_snapshot::Snapshotter>,
}

/// The routes about connectors, versions, pauses, holds and the audit log (the degraded
/// shop's routes are api/degrade.rs's; [`super::admin_router`] puts both together).
pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/v1/admin/connectors", get(list))
        .route("/v1/admin/connectors/{name}", get(one))
        .route("/v1/admin/connectors/{name}/versions", post(deploy).layer(DefaultBodyLimit::disable()))
        .route("/v1/admin/connectors/{name}/activate", post(|s, p, h, b| with_digest(s, p, h, b, DigestOp::Activate)))
        .route("/v1/admin/connectors/{name}/rollback", post(rollback))
        .route("/v1/admin/connectors/{name}/canary", post(canary))
        .route("/v1/admin/connectors/{name}/canary/abort", post(abort_canary))
        .route("/v1/admin/connectors/{name}/promote", post(promote))
        .route(
            "/v1/admin/connectors/{name}/shadow",
            post(|s, p, h, b| with_digest(s, p, h, b, DigestOp::Shadow)).get(shadow_report),
        )
        .route("/v1/admin/connectors/{name}/shadow/stop", post(stop_shadow))
        .route("/v1/admin/connectors/{name}/shadow/tape", post(tape_shadow).layer(DefaultBodyLimit::disable()))
        .route("/v1/admin/connectors/{name}/pause", post(|s, p, h| pause_connector(s, p, h, true)))
        .route("/v1/admin/connectors/{name}/resume", post(|s, p, h| pause_connector(s, p, h, false)))
        .route("/v1/admin/shops/{shop}/pause", post(|s, p, h| pause_shop(s, p, h, true)))
        .route("/v1/admin/shops/{shop}/resume", post(|s, p, h| pause_shop(s, p, h, false)))
        .route("/v1/admin/platforms/{platform}/holds/{key}/release", post(release_hold))
        .route("/v1/admin/audit", get(audit))
}

/// What an audited call was about.
pub(crate) struct Action<'a> {
    pub name: &'static str,
    pub target: &'a str,
}

impl AdminState {
    pub(crate) fn record(&self, who: &str, action: &Action<'_>, digest: Option<&str>, outcome: &str, detail: String) -> Result<(), Response> {
        let entry = AuditEntry::now(who, action.name, action.target, digest, outcome, detail);
        self.audit.append(&entry).map_err(|e| {
            tracing::error!(error = %e, action = action.name, "cannot write the audit log");
            error(StatusCode::INTERNAL_SERVER_ERROR, format!("the audit log cannot be written ({e}); the call was not answered normally"))
        })
    }

    /// Check the caller of a call about connectors, versions, platforms or the audit log:
    /// a token scoped to some shops is refused (403). A refused change is audited too
    /// (`action` is `None` for reads).
    pub(crate) fn caller(&self, headers: &HeaderMap, need: Access, action: Option<&Action<'_>>) -> Result<Caller, Response> {
        let caller = self.any_caller(headers, need, action)?;
        if caller.scope.is_some() {
            let why = format!("token `{}` is scoped to some shops; this call concerns every shop", caller.name);
            return Err(self.refusal(&caller.name, action, "forbidden", StatusCode::FORBIDDEN, why));
        }
        Ok(caller)
    }

    /// Check the caller of a call about one shop: a scoped token that does not see it
    /// gets 404, as for a shop that is not there.
    pub(super) fn caller_for_shop(&self, headers: &HeaderMap, need: Access, action: Option<&Action<'_>>, shop: &str) -> Result<Caller, Response> {
        let caller = self.any_caller(headers, need, action)?;
        if !caller.sees(shop) {
            let why = format!("no shop `{shop}` is configured");
            return Err(self.refusal(&caller.name, action, "refused", StatusCode::NOT_FOUND, why));
        }
        Ok(caller)
    }

    fn any_caller(&self, headers: &HeaderMap, need: Access, action: Option<&Action<'_>>) -> Result<Caller, Response> {
        let header = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        self.auth.authorize(header, need).map_err(|e| {
            let (outcome, who) = match &e {
                AuthError::Unauthenticated(_) => ("unauthorized", "-".to_string()),
                AuthError::Forbidden { name, .. } => ("forbidden", name.clone()),
            };
            if let Some(a) = action {
                if let Err(resp) = self.record(&who, a, None, outcome, e.to_string()) {
                    return resp;
                }
            }
            super::gate::refused(&self.api_metrics, &e, need)
        })
    }

    /// Refuse a change whose input was wrong (a bad query, a body that does not parse,
    /// one too large): audited like any other refusal, then answered `status`.
    pub(crate) fn refuse(&self, caller: &Caller, action: &Action<'_>, status: StatusCode, why: String) -> Response {
        self.refusal(&caller.name, Some(action), "refused", status, why)
    }

    /// Audit a refusal (when the call changes something) and answer it `status`.
    fn refusal(&self, who: &str, action: Option<&Action<'_>>, outcome: &str, status: StatusCode, why: String) -> Response {
        if let Some(a) = action {
            if let Err(resp) = self.record(who, a, None, outcome, why.clone()) {
                return resp;
            }
        }
        error(status, why)
    }

    /// A change's JSON body, or its refusal audited (400, or 413 past the size limit).
    pub(super) fn body<T>(&self, caller: &Caller, action: &Action<'_>, body: super::JsonBody<T>, expected: &str) -> Result<T, Response> {
        body.map(|super::body::JsonIn(b)| b).map_err(|e| {
            let (status, why) = super::body_error(&e, expected);
            self.refuse(caller, action, status, why)
        })
    }

    /// Audit how a change ended and answer it.
    fn answer<T: serde::Serialize>(
        &self,
        caller: &Caller,
        action: &Action<'_>,
        digest: Option<&str>,
        result: Result<(StatusCode, T), DeployError>,
    ) -> Response {
        match result {
            Ok((status, body)) => match self.record(&caller.name, action, digest, "ok", String::new()) {
                Ok(()) => (status, Json(body)).into_response(),
                Err(resp) => resp,
            },
            Err(e) => {
                let status = status_of(&e);
                let outcome = if status.is_server_error() { "failed" } else { "refused" };
                match self.record(&caller.name, action, digest, outcome, e.to_string()) {
                    Ok(()) => error(status, e.to_string()),
                    Err(resp) => resp,
                }
            }
        }
    }
}

fn status_of(e: &DeployError) -> StatusCode {
    match e {
        DeployError::UnknownConnector(_) | DeployError::UnknownVersion { .. } => StatusCode::NOT_FOUND,
        DeployError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        DeployError::Invalid(_) | DeployError::PlatformChanged { .. } | DeployError::HostsNotGranted { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        DeployError::NothingToRollBack(_) | DeployError::NoCanary(_) | DeployError::CanaryRunning(_) => StatusCode::CONFLICT,
        DeployError::BadCanary(_) => StatusCode::UNPROCESSABLE_ENTITY,
        DeployError::NoCandidate(_) | DeployError::ShadowMismatch { .. } | DeployError::ShadowRunning(_) | DeployError::TapeMismatch { .. } => {
            StatusCode::CONFLICT
        }
        DeployError::BadTape(_) => StatusCode::UNPROCESSABLE_ENTITY,
        DeployError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn list(State(st): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if let Err(resp) = st.caller(&headers, Access::Read, None) {
        return resp;
    }
    let views: Result<Vec<_>, _> = st.registry.slots().keys().map(|n| st.registry.view(n)).collect();
    match views {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(status_of(&e), e.to_string()),
    }
}

async fn one(State(st): State<Arc<AdminState>>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if let Err(resp) = st.caller(&headers, Access::Read, None) {
        return resp;
    }
    match st.registry.view(&name) {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(status_of(&e), e.to_string()),
    }
}

#[derive(Deserialize)]
struct DeployQuery {
    /// Make the version active (default); `false` only stores it.
    activate: Option<bool>,
}

async fn deploy(
    State(st): State<Arc<AdminState>>,
    Path(name): Path<String>,
    q: Result<Query<DeployQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let action = Action { name: "deploy", target: &name };
    let caller = match st.caller(&headers, Access::Deploy, Some(&action)) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return st.refuse(&caller, &action, StatusCode::BAD_REQUEST, format!("{e}; expected ?activate=true|false")),
    };
    let max = st.auth.max_component_bytes();
    let bytes = match axum::body::to_bytes(body, max).await {
        Ok(b) => b,
        Err(_) => {
            let why = format!("the upload is larger than {max} bytes (admin.max_component_mb)");
            return st.refuse(&caller, &action, StatusCode::PAYLOAD_TOO_LARGE, why);
        }
    };
    let digest = berth_runtime::digest(&bytes);
    let result = st
        .registry
        .deploy(&name, &bytes, &caller.name, q.activate.unwrap_or(true), max)
        .await
        .map(|d| (if d.known { StatusCode::OK } else { StatusCode::CREATED }, d));
    st.answer(&caller, &action, Some(&digest), result)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DigestRequest {
    digest: String,
}

/// The calls that name a stored version.
#[derive(Clone, Copy)]
enum DigestOp {
    Activate,
    Shadow,
}

async fn with_digest(
    State(st): State<Arc<AdminState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: super::JsonBody<DigestRequest>,
    op: DigestOp,
) -> Response {
    let action = Action { name: if matches!(op, DigestOp::Activate) { "activate" } else { "shadow" }, target: &name };
    let caller = match st.caller(&headers, Access::Deploy, Some(&action)) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let req = match st.body(&caller, &action, body, r#"{"digest": "<sha256 hex of a deployed version>"}"#) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let result = match op {
        DigestOp::Activate => st.registry.activate(&name, &req.digest).await.map(|v| (StatusCode::OK, serde_json::to_value(v))),
        DigestOp::Shadow => st.registry.start_shadow(&name, &req.digest, &caller.name).await.map(|r| (StatusCode::CREATED, serde_json::to_value(r))),
    };
    let result = result.map(|(status, v)| (status, v.unwrap_or_default()));
    st.answer(&caller, &action, Some(&req.digest), result)
}

async fn rollback(State(st): State<Arc<AdminState>>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    let action = Action { name: "rollback", target: &name };
    let caller = match st.caller(&headers, Access::Deploy, Some(&action)) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let result = st.registry.rollback(&name).await;
    let digest = result.as_ref().ok().map(|(_, to)| to.digest.clone());
    let result = result.map(|(from, to)| (StatusCode::OK, serde_json::json!({ "from": from, "to": to })));
    st.answer(&caller, &action, digest.as_deref(), result)
}

async fn canary(
    State(st): State<Arc<AdminState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: super::JsonBody<berth_core::registry::CanaryRequest>,
) -> Response {
    let action = Action { name: "canary", target: &name };
    let caller = match st.caller(&headers, Access::Deploy, Some(&action)) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let expected = r#"{"digest": "<sha256>", "share_percent": 10 | "shops": ["a"], "max_failure_rate": 0.05, "window_secs": 300, "min_calls": 20}"#;
    let req = match st.body(&caller, &action, body, expected) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let result = st.registry.start_canary(&name, &req, &caller.name).await.map(|plan| (StatusCode::CREATED, plan));
    st.answer(&caller, &action, Some(&req.digest), result)
}

async fn abort_canary(State(st): State<Arc<AdminState>>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    let action = Action { name: "canary-abort", target: &name };
    let caller = match st.caller(&headers, Access::Deploy, Some(&action)) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let result = st.registry.abort_canary(&name).await;
    let digest = result.as_ref().ok().map(|e| e.digest.clone());
    st.answer(&caller, &action, digest.as_deref(), result.map(|e| (StatusCode::OK, e)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PromoteRequest {
    /// Promote even though the shadow run found differences.
    #[serde(default)]
    force: bool,
    /// Refuse unless a tape-based shadow run of the candidate matched completely.
    #[serde(default)]
    require_tape: bool,
}

async fn promote(State(st): State<Arc<AdminState>>, Path(name): Path<String>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let action = Action { name: "promote", target: &name };
    let caller = match st.caller(&headers, Access::Deploy, Some(&action)) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let req: PromoteRequest = if body.is_empty() {
        PromoteRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return st.refuse(&caller, &action, StatusCode::BAD_REQUEST, format!("{e}; expected {{\"force\": true}}, {{\"require_tape\": true}} or no body")),
        }
    };
    let result = st.registry.promote(&name, req.force, req.require_tape).await;
    let digest = result.as_ref().ok().map(|e| e.digest.clone());
    st.answer(&caller, &action, digest.as_deref(), result.map(|e| (StatusCode::OK, e)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TapeShadowRequest {
    digest: String,
    tape: berth_core::tape::TapeFile,
}

/// Replay a recorded tape to a stored version and compare its answers with the
/// recorded ones (registry `tape_shadow`); the result is kept for `promote`.
async fn tape_shadow(State(st): State<Arc<AdminState>>, Path(name): Path<String>, headers: HeaderMap, body: Body) -> Response {
    let action = Action { name: "shadow-tape", target: &name };
    let caller = match st.caller(&headers, Access::Deploy, Some(&action)) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let max = st.auth.max_tape_bytes();
    let Ok(bytes) = axum::body::to_bytes(body, max).await else {
        return st.refuse(&caller, &action, StatusCode::PAYLOAD_TOO_LARGE, format!("the tape is larger than {max} bytes (admin.max_tape_mb)"));
    };
    let req: TapeShadowRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            let why = format!("{e}; expected {{\"digest\": \"<sha256 of a deployed version>\", \"tape\": <a tape.json from berth plugin record or a recorded shop>}}");
            return st.refuse(&caller, &action, StatusCode::BAD_REQUEST, why);
        }
    };
    // The shop's own config when it is served here: a recorded webhook's signature can
    // then be checked.
    let shop = st.shops.webhook(&req.tape.shop).filter(|w| w.connector.name == name).map(|w| w.config.clone());
    let result = st.registry.tape_shadow(&name, &req.digest, &req.tape, shop, &caller.name).await.map(|r| (StatusCode::OK, r));
    st.answer(&caller, &action, Some(&req.digest), result)
}

async fn stop_shadow(State(st): State<Arc<AdminState>>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    let action = Action { name: "shadow-stop", target: &name };
    let caller = match st.caller(&headers, Access::Deploy, Some(&action)) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let result = st.registry.stop_shadow(&name).await;
    let digest = result.as_ref().ok().map(|r| r.digest.clone());
    st.answer(&caller, &action, digest.as_deref(), result.map(|r| (StatusCode::OK, r)))
}

async fn shadow_report(State(st): State<Arc<AdminState>>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if let Err(resp) = st.caller(&headers, Access::Read, None) {
        return resp;
    }
    match st.registry.view(&name) {
        Ok(v) => Json(serde_json::json!({ "running": v.shadow, "last": v.last_shadow })).into_response(),
        Err(e) => error(status_of(&e), e.to_string()),
    }
}

async fn pause_connector(State(st): State<Arc<AdminState>>, Path(name): Path<String>, headers: HeaderMap, paused: bool) -> Response {
    let action = Action { name: if paused { "pause" } else { "resume" }, target: &name };
    let caller = match st.caller(&headers, Access::Operate, Some(&action)) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let result = st.registry.set_paused(&name, None, paused).await.map(|()| (StatusCode::OK, serde_json::json!({ "connector": name, "paused": paused })));
    st.answer(&caller, &action, None, result)
}

async fn pause_shop(State(st): State<Arc<AdminState>>, Path(shop): Path<String>, headers: HeaderMap, paused: bool) -> Response {
    let target = format!("shop:{shop}");
    let action = Action { name: if paused { "pause" } else { "resume" }, target: &target };
    let caller = match st.caller_for_shop(&headers, Access::Operate, Some(&action), &shop) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let Some(connector) = st.shops.connector_of(&shop) else {
        let why = format!("no shop `{shop}` is configured");
        return match st.record(&caller.name, &action, None, "refused", why.clone()) {
            Ok(()) => error(StatusCode::NOT_FOUND, why),
            Err(resp) => resp,
        };
    };
    // Resuming also lifts a hold of the shop's order intake (its hourly budget).
    let released = !paused && st.shops.budgets().release(&shop);
    let result = st
        .registry
        .set_paused(&connector, Some(&shop), paused)
        .await
        .map(|()| (StatusCode::OK, serde_json::json!({ "shop": shop, "paused": paused, "intake_released": released })));
    st.answer(&caller, &action, None, result)
}

/// End a hold on a platform quota now (the platform is fine again, or a connector's
/// `rate-limited` was wrong): the quota's shops call again at once.
async fn release_hold(State(st): State<Arc<AdminState>>, Path((platform, key)): Path<(String, String)>, headers: HeaderMap) -> Response {
    let target = format!("hold:{platform}/{key}");
    let action = Action { name: "release-hold", target: &target };
    let caller = match st.caller(&headers, Access::Operate, Some(&action)) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let (status, outcome, body) = match st.services.limits.release(&platform, &key) {
        Some(h) => {
            tracing::warn!(by = %caller.name, platform = %platform, key = %key, caused_by = %h.shop, "quota hold released by an operator");
            (StatusCode::OK, "ok", serde_json::json!({ "released": h }))
        }
        None => {
            let held: Vec<String> = st.services.limits.held().into_iter().filter(|h| h.platform == platform).map(|h| h.key).collect();
            let why = format!(
                "no hold on {platform} quota `{key}`; held now: {}",
                if held.is_empty() { "none".to_string() } else { held.join(", ") }
            );
            (StatusCode::NOT_FOUND, "refused", serde_json::json!({ "error": why }))
        }
    };
    let detail = if outcome == "ok" { String::new() } else { body["error"].as_str().unwrap_or_default().to_string() };
    match st.record(&caller.name, &action, None, outcome, detail) {
        Ok(()) => (status, Json(body)).into_response(),
        Err(resp) => resp,
    }
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(State(st): State<Arc<AdminState>>, q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>, headers: HeaderMap) -> Response {
    if let Err(resp) = st.caller(&headers, Access::Audit, None) {
        return resp;
    }
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}; expected ?limit=1..=10000 (the newest entries to show)")),
    };
    match st.audit.read(q.limit.unwrap_or(100).clamp(1, 10_000)).await {
        Ok(entries) => Json(serde_json::json!({ "entries": entries })).into_response(),
        Err(e @ berth_core::audit::AuditReadError::Cluster(_)) => {
            let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, format!("cannot read the audit log now: {e}; try again"));
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
            resp
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the audit log: {e}")),
    }
}
