//! Onboarding a shop by OAuth, with no config edit and no restart:
//!
//! - `GET /v1/oauth/{connector}/start?shop=NAME` (admin role): hands out a single-use
//!   `state` and redirects (303) to the platform's consent page, which the connector
//!   builds from its `[connectors.NAME.onboarding]` settings. The JSON body has the same
//!   URL, for an admin who sends it to the merchant.
//! - `GET /v1/oauth/{connector}/callback?state=…&code=…` (no token: the platform sends the
//!   merchant's browser here, and the `state` — unguessable, used once, 15 minutes — is
//!   the proof): the connector exchanges the code, the credentials go sealed into the
//!   credential book, the shop is kept and started (or, already running, takes the new
//!   credentials: a merchant authorizing the app again).
//!
//! - `GET /v1/oauth/shops` lists the onboarded shops; `DELETE /v1/oauth/shops/{shop}`
//!   stops one and forgets it (admin role).
//!
//! All but the list are audited: the start and the removal under the admin's name, the
//! callback under the name of the admin who started it.

use super::admin::{Action, AdminState};
use super::error;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use berth_core::onboarding::{OnboardingError, STATE_LIFETIME_MS};
use berth_types::access::Access;
use berth_types::credentials::RefreshError;
use serde::Deserialize;
use std::sync::Arc;

/// The most query parameters a callback may carry.
const MAX_CALLBACK_PARAMS: usize = 32;

pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/v1/oauth/{connector}/start", get(start))
        .route("/v1/oauth/{connector}/callback", get(callback))
        .route("/v1/oauth/shops", get(list))
        .route("/v1/oauth/shops/{shop}", axum::routing::delete(remove))
}

/// The shops onboarded by OAuth (admin role): connector, the settings the platform named,
/// when.
async fn list(State(st): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if let Err(resp) = st.caller(&headers, Access::Onboard, None) {
        return resp;
    }
    match st.onboarding.onboarded() {
        Ok(shops) => Json(serde_json::json!({ "shops": shops })).into_response(),
        Err(e) => error(status_of(&e), e.to_string()),
    }
}

/// Stop an onboarded shop and forget it (admin role, audited). Its orders and stock
/// history stay; onboarding it again starts it again.
async fn remove(State(st): State<Arc<AdminState>>, Path(shop): Path<String>, headers: HeaderMap) -> Response {
    let target = format!("shop:{shop}");
    let action = Action { name: "oauth-remove", target: &target };
    let caller = match st.caller(&headers, Access::Onboard, Some(&action)) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    if st.onboarding.in_config_file(&shop) {
        return st.refuse(&caller, &action, StatusCode::CONFLICT, format!("shop `{shop}` is in the config file: remove it there"));
    }
    match st.onboarding.remove(&shop).await {
        Ok(true) => {}
        Ok(false) => return st.refuse(&caller, &action, StatusCode::NOT_FOUND, format!("no shop `{shop}` was onboarded by OAuth")),
        Err(e) => return st.refuse(&caller, &action, status_of(&e), e.to_string()),
    }
    // In cluster mode every node drops it from the cluster's shops on the change, and the
    // node running it stops it.
    if !st.onboarding.in_cluster() {
        st.shops.stop(&shop).await;
        st.registry.set_shops(st.shops.by_connector());
    }
    if let Err(resp) = st.record(&caller.name, &action, None, "ok", String::new()) {
        return resp;
    }
    tracing::warn!(shop = %shop, by = %caller.name, "onboarded shop removed and stopped");
    Json(serde_json::json!({ "shop": shop, "removed": true })).into_response()
}

#[derive(Deserialize)]
struct StartQuery {
    shop: String,
}

fn valid_shop_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn status_of(e: &OnboardingError) -> StatusCode {
    match e {
        OnboardingError::NotConfigured(_) | OnboardingError::NoCredentialBook | OnboardingError::NoPublicUrl => StatusCode::CONFLICT,
        OnboardingError::TooManyPending => StatusCode::TOO_MANY_REQUESTS,
        OnboardingError::Storage(_) | OnboardingError::Corrupt { .. } | OnboardingError::Cluster(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn start(
    State(st): State<Arc<AdminState>>,
    Path(connector): Path<String>,
    query: Result<Query<StartQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let shop = query.as_ref().map(|q| q.shop.clone()).unwrap_or_default();
    let target = format!("shop:{shop}");
    let action = Action { name: "oauth-start", target: &target };
    let caller = match st.caller(&headers, Access::Onboard, Some(&action)) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let refuse = |status: StatusCode, why: String| st.refuse(&caller, &action, status, why);
    if query.is_err() || !valid_shop_name(&shop) {
        return refuse(StatusCode::BAD_REQUEST, "give the new shop's name as ?shop=NAME (a-z, 0-9, `-` and `_`, at most 64)".into());
    }
    let Some(slot) = st.registry.slot(&connector) else {
        return refuse(StatusCode::NOT_FOUND, format!("no connector `{connector}` is configured"));
    };
    if let Some(other) = st.shops.connector_of(&shop).filter(|c| *c != connector) {
        return refuse(StatusCode::CONFLICT, format!("shop `{shop}` runs on connector `{other}`; pick another name for the new shop"));
    }
    let conn = slot.current();
    match conn.auth_support().await {
        Ok(a) if a.oauth => {}
        Ok(_) => return refuse(StatusCode::CONFLICT, format!("connector `{connector}` does not onboard shops by OAuth (its component says so); configure the shop's credentials instead")),
        Err(e) => return refuse(StatusCode::BAD_GATEWAY, format!("connector `{connector}` did not say how it authorizes shops: {e}")),
    }
    let ob = &st.onboarding;
    let prepared = ob.book().and_then(|_| Ok((ob.template(&connector)?, ob.redirect_uri(&connector)?)));
    let (template, redirect) = match prepared {
        Ok(p) => p,
        Err(e) => return refuse(status_of(&e), e.to_string()),
    };
    let state = match ob.begin(&connector, &shop, &caller.name).await {
        Ok(s) => s,
        Err(e) => return refuse(status_of(&e), e.to_string()),
    };
    let cannot = |why: String| refuse(StatusCode::BAD_GATEWAY, format!("connector `{connector}` could not build the consent page: {why}"));
    let url = match conn.consent_url(&shop, Arc::new(template), &state, &redirect).await {
        Ok(Ok(url)) => url,
        Ok(Err(e)) => return cannot(e.to_string()),
        Err(e) => return cannot(e.to_string()),
    };
    if let Err(resp) = st.record(&caller.name, &action, None, "ok", format!("connector {connector}")) {
        return resp;
    }
    tracing::info!(connector = %connector, shop = %shop, by = %caller.name, "OAuth onboarding started");
    let body = serde_json::json!({
        "shop": shop,
        "connector": connector,
        "consent_url": url,
        "expires_in_secs": STATE_LIFETIME_MS / 1000,
    });
    (StatusCode::SEE_OTHER, [(header::LOCATION, url)], Json(body)).into_response()
}

async fn callback(State(st): State<Arc<AdminState>>, Path(connector): Path<String>, RawQuery(query): RawQuery) -> Response {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()).into_owned().take(MAX_CALLBACK_PARAMS + 1).collect();
    let again = format!("start again from /v1/oauth/{connector}/start?shop=NAME");
    if pairs.len() > MAX_CALLBACK_PARAMS {
        return error(StatusCode::BAD_REQUEST, format!("the callback has more than {MAX_CALLBACK_PARAMS} query parameters"));
    }
    let Some(state) = pairs.iter().find(|(k, _)| k == "state").map(|(_, v)| v.clone()) else {
        return error(StatusCode::BAD_REQUEST, format!("the callback has no `state`; {again}"));
    };
    let pending = match st.onboarding.take(&state).await {
        Ok(Some(p)) if p.connector == connector => p,
        Ok(_) => {
            st.api_metrics.refused("oauth_state", "onboard");
            return error(StatusCode::BAD_REQUEST, format!("this onboarding link is unknown, used or older than {} minutes; {again}", STATE_LIFETIME_MS / 60_000));
        }
        Err(e) => return error(status_of(&e), e.to_string()),
    };
    let (shop, by) = (pending.shop, pending.by);
    let target = format!("shop:{shop}");
    let action = Action { name: "oauth-callback", target: &target };
    let refuse = |status: StatusCode, outcome: &str, why: String| match st.record(&by, &action, None, outcome, why.clone()) {
        Ok(()) => error(status, why),
        Err(resp) => resp,
    };
    // The platform says the merchant did not authorize (OAuth's `error`, if it sends one).
    if let Some((_, e)) = pairs.iter().find(|(k, _)| k == "error") {
        let detail = pairs.iter().find(|(k, _)| k == "error_description").map(|(_, d)| format!(" ({d})")).unwrap_or_default();
        return refuse(StatusCode::BAD_REQUEST, "refused", format!("the platform reports that the shop was not authorized: {e}{detail}; {again}"));
    }
    let Some(slot) = st.registry.slot(&connector) else {
        return refuse(StatusCode::NOT_FOUND, "refused", format!("no connector `{connector}` is configured"));
    };
    let ob = &st.onboarding;
    let prepared = ob.book().and_then(|b| Ok((b.clone(), ob.template(&connector)?, ob.redirect_uri(&connector)?)));
    let (book, template, redirect) = match prepared {
        Ok(p) => p,
        Err(e) => return refuse(status_of(&e), "refused", e.to_string()),
    };
    let params: Vec<(String, String)> = pairs.into_iter().filter(|(k, _)| k != "state").collect();
    let authorized = match slot.current().exchange_code(&shop, Arc::new(template), &params, &redirect).await {
        Ok(Ok(a)) => a,
        Ok(Err(RefreshError::Revoked(why))) => return refuse(StatusCode::BAD_REQUEST, "refused", format!("the platform refused the authorization code: {why}; {again}")),
        Ok(Err(RefreshError::Transient(why))) => {
            return refuse(StatusCode::BAD_GATEWAY, "failed", format!("the platform did not complete the code exchange: {why}; {again}"))
        }
        Err(e) => return refuse(StatusCode::BAD_GATEWAY, "failed", format!("connector `{connector}` failed the code exchange: {e}; {again}")),
    };
    // Durable before the shop runs: the credentials, then the shop.
    let credentials = match book.set(&shop, &authorized.credentials).await {
        Ok(c) => c,
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, "failed", format!("the credentials could not be stored ({e}); {again}")),
    };
    // A shop the config file has keeps its file config and takes the new credentials;
    // another is kept as onboarded and (re)started.
    let run = if ob.in_config_file(&shop) {
        Ok(berth_core::shops::Put::Unchanged)
    } else {
        let onboarded = match ob.record(&shop, &connector, &authorized.settings).await {
            Ok(o) => o,
            Err(e) => return refuse(status_of(&e), "failed", format!("the shop could not be stored ({e}); {again}")),
        };
        match ob.shop_config(&onboarded) {
            Ok(sc) if ob.in_cluster() => berth_core::shops::ShopSet::check(&shop, &sc, &slot).map(|()| berth_core::shops::Put::Shared).map_err(|e| e.to_string()),
            Ok(sc) => st.shops.put(&shop, &sc, slot).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    let run = match run {
        Ok(r) => r,
        Err(why) => return refuse(StatusCode::CONFLICT, "failed", format!("the credentials are kept, but the shop did not start: {why}")),
    };
    st.registry.set_shops(st.shops.by_connector());
    if let Err(resp) = st.record(&by, &action, None, "ok", format!("connector {connector}, shop {run:?}")) {
        return resp;
    }
    tracing::warn!(connector = %connector, shop = %shop, started_by = %by, generation = credentials.generation, "shop authorized by OAuth");
    Json(serde_json::json!({
        "shop": shop,
        "connector": connector,
        "authorized": true,
        "shop_is": run,
        "credentials": credentials,
    }))
    .into_response()
}
