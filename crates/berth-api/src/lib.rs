//! berth-api: berth's HTTP API.
//!
//! Owns the routes — the ERP's (order feed, leases, acks, stock submissions), status and
//! the dashboard, `/metrics`, the admin API ([`admin`], [`degrade`]), OAuth onboarding
//! ([`oauth`]) — the one auth gate every route passes ([`auth`], [`gate`]), the request
//! and answer types, and the listener that bounds connections and header time
//! ([`listener`]).
//!
//! It calls core's public methods and reads ops' renderings; it holds no state of its own
//! beyond tokens, and must not be needed by core or ops (they never name a route or a
//! status code).

pub mod admin;
pub mod auth;
pub mod body;
pub mod degrade;
pub mod drills;
pub mod gate;
pub mod guards;
pub mod listener;
pub mod listings;
pub mod metrics;
pub mod oauth;
pub mod reconcile;
pub mod snapshots;
pub mod status;
pub mod stock;

use berth_core::inbox::OrderInbox;
use berth_core::queue::{LeaseToken, QueueError, QueueStats};
use berth_core::store::OrderStore;
use berth_core::sync::ShopStatus;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use crate::auth::Caller;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    /// Outbound requests refused by policy (host not granted, non-public address).
    pub http_refusals: u64,
    /// What each call of the active version may use.
    pub limits: berth_runtime::limits::ConnectorLimits,
    /// The active version's circuit breaker.
    pub breaker: berth_runtime::breaker::BreakerView,
    /// A canary candidate's, while one runs.
    pub canary_breaker: Option<berth_runtime::breaker::BreakerView>,
    /// Its instance slots: reserved for it, its max, in use now.
    pub instances: Option<berth_runtime::pool::PoolShare>,
    /// What the active version's world lets berth ask of it beyond orders, stock and
    /// webhooks, and what it cannot (a version built for an older world).
    pub features: Features,
}

/// The calls newer worlds added, for one version.
#[derive(Clone, Debug, Serialize)]
pub struct Features {
    /// `refresh-credentials`, `consent-url`, `exchange-code` (0.3.0).
    pub credentials: bool,
    /// `listings` (0.4.0, with the `products` capability): snapshots and reconciliation
    /// read the platform's listings.
    pub listings: bool,
    /// Each feature absent and why.
    pub absent: Vec<String>,
}

impl Features {
    fn of(c: &berth_runtime::LoadedConnector) -> Features {
        let credentials = c.has_credential_calls();
        let products = c.manifest.capabilities.contains(&berth_types::connector::Capability::Products);
        let listings = c.has_listings() && products;
        let world = &c.manifest.wit_version;
        let mut absent = Vec::new();
        if !credentials {
            absent.push(format!("credentials: built for berth:connector {world}; refresh and OAuth onboarding need 0.3.0 or later"));
        }
        if !c.has_listings() {
            absent.push(format!("listings: built for berth:connector {world}; listings, snapshots of them and reconciliation need 0.4.0"));
        } else if !products {
            absent.push("listings: the connector does not declare the `products` capability".to_string());
        }
        Features { credentials, listings, absent }
    }
}

pub struct ApiState {
    pub store: Arc<OrderStore>,
    pub inbox: OrderInbox,
    pub stock: Arc<berth_core::stock::StockLedger>,
    pub delivery: Option<berth_core::delivery::SharedDeliveryStatus>,
    /// The shops served now (a config reload adds and removes them).
    pub shops: Arc<berth_core::shops::ShopSet>,
    pub registry: Arc<berth_core::registry::ConnectorRegistry>,
    pub services: Arc<berth_capabilities::services::HostServices>,
    pub health: Arc<berth_core::health::HealthBook>,
    pub alerts: Arc<berth_ops::alerts::Alerts>,
    /// Fault drills and their records.
    pub drills: Arc<berth_ops::drills::Drills>,
    /// Listing reads running now (one per shop), shared with reconciliation.
    pub listings: Arc<berth_core::listings::ListingReads>,
    /// Reconciliation and its last reports.
    pub reconciler: Arc<berth_core::reconcile::Reconciler>,
    /// Snapshots, and the fallback stock served from them.
    pub snapshots: Arc<berth_snapshot::Snapshotter>,
    /// `[erp] max_response_bytes`: orders one read or lease answers with (at least one).
    pub max_response_bytes: usize,
    /// Rendered at `/metrics` (queue gauges are set just before).
    pub metrics: Arc<berth_ops::metrics::Metrics>,
    /// The credentials berth renews for shops (`[credentials]` with a key).
    pub credentials: Option<Arc<berth_core::credentials::CredentialBook>>,
    /// Cluster mode: this node's lease loop (`GET /v1/cluster`).
    pub cluster: Option<Arc<berth_cluster::Leases>>,
}

/// The admin API: connectors, versions and the audit log (admin.rs) beside working a
/// degraded shop by hand (degrade.rs), on one state.
pub fn admin_router(state: Arc<admin::AdminState>) -> Router {
    admin::routes()
        .merge(degrade::routes())
        .merge(guards::routes())
        .merge(drills::routes())
        .merge(reconcile::routes())
        .merge(snapshots::routes())
        .merge(oauth::routes())
        .with_state(state)
}

/// The API outside `/v1/admin`, each group of routes behind the access it needs (see
/// gate.rs): health probes, the index, the dashboard's page and platform webhooks (which
/// carry the platform's signature) need no token.
pub fn router(state: Arc<ApiState>, gate: Arc<gate::Gate>, metrics_public: bool) -> Router {
    use berth_types::access::Access;
    let behind = |need: Access, whole_host: bool, routes: Router<Arc<ApiState>>| {
        routes.route_layer(axum::middleware::from_fn_with_state((gate.clone(), need, whole_host), gate::check))
    };
    let erp = Router::new()
        .route("/v1/orders", get(list_orders))
        .route("/v1/orders/lease", post(lease_orders))
        .route("/v1/orders/ack", post(ack_orders))
        .route("/v1/orders/nack", post(nack_orders))
        .route("/v1/orders/extend", post(extend_orders))
        .route("/v1/shops/{shop}/stock", get(stock::list).post(stock::submit))
        .route("/v1/shops/{shop}/stock/fallback", get(snapshots::fallback))
        .route("/v1/shops/{shop}/stock/{sku}", get(stock::one))
        .route("/v1/shops/{shop}/listings", get(listings::get));
    let operate = Router::new()
        .route("/v1/orders/dead-letters/replay", post(replay_dead))
        .route("/v1/orders/dead-letters/purge", post(purge_dead))
        .route("/v1/shops/{shop}/stock/dead-letters/replay", post(stock::replay))
        .route("/v1/shops/{shop}/stock/dead-letters/purge", post(stock::purge));
    let read = Router::new()
        .route("/v1/orders/queue", get(queue_info))
        .route("/v1/shops", get(list_shops))
        .route("/v1/stock/queue", get(stock::queue));
    // What covers every shop: not for a token scoped to some.
    let erp_host = Router::new().route("/v1/orders/feed", get(feed_info));
    let mut read_host = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/alerts", get(alerts))
        .route("/v1/status", get(status::get_status))
        .route("/v1/connectors", get(list_connectors))
        .route("/v1/platforms", get(list_platforms))
        .route("/v1/drills", get(drills::list))
        .route("/v1/drills/{id}", get(drills::one))
        .route("/v1/cluster", get(cluster_info));
    let mut public = Router::new()
        .route("/", get(index))
        .route("/dashboard", get(status::dashboard))
        .route("/v1/webhooks/{shop}", post(platform_webhook))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if metrics_public {
        public = public.route("/metrics", get(metrics));
    } else {
        read_host = read_host.route("/metrics", get(metrics));
    }
    public
        .merge(behind(Access::Erp, false, erp))
        .merge(behind(Access::Erp, true, erp_host))
        .merge(behind(Access::Operate, false, operate))
        .merge(behind(Access::Read, false, read))
        .merge(behind(Access::Read, true, read_host))
        .with_state(state)
}

#[derive(Serialize)]
struct ApiError {
    error: String,
}

pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ApiError { error: msg.into() })).into_response()
}

async fn index() -> &'static str {
    "berth connector host\n\
     GET /v1/orders?after=SEQ&limit=N[&shop=NAME]  orders in arrival order; pass next_after back as after\n\
     POST /v1/orders/lease {max, visibility_secs}   lease orders from the durable queue\n\
     POST /v1/orders/ack {tokens: [...]}            acknowledge leased orders (nack: retry later)\n\
     POST /v1/orders/extend {tokens, visibility_secs} keep leases longer\n\
     GET /v1/orders/queue                           queue depth, age (also per shop), dead letters, webhook delivery\n\
     POST /v1/orders/dead-letters/replay {ids}      back to the queue (purge: drop them)\n\
     POST /v1/shops/{shop}/stock {updates: [{sku, quantity, seq?}]}  absolute stock, pushed newest-first\n\
     GET /v1/shops/{shop}/stock[/{sku}]             per-SKU push results (?state=pending|pushed|rejected|dead)\n\
     POST /v1/shops/{shop}/stock/dead-letters/replay {skus}  retry rejected or dead SKUs (purge: forget them)\n\
     GET /v1/stock/queue                            stock push backlog per shop\n\
     GET /v1/shops/{shop}/stock/fallback            the last snapshot's quantities (stale) while the platform is down\n\
     POST /v1/webhooks/{shop}                       a platform's webhook for the shop (signature checked by its connector)\n\
     GET /v1/shops                                  per-shop pull status\n\
     GET /v1/health                                 per-shop probes, availability and SLA; per connector and tier\n\
     GET /v1/alerts                                 alerts firing, recent notifications, receivers\n\
     GET /dashboard                                 status page (refreshes itself; ?refresh=SECONDS); its data: GET /v1/status\n\
     GET /v1/platforms                              per platform: endpoint classes, held quotas, retry policies, standby channel\n\
     GET /v1/connectors                             loaded connectors\n\
     GET /metrics  GET /healthz  GET /readyz\n"
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrdersQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    shop: Option<String>,
}

/// A JSON answer written as it is read: `chunks` arrive from a reader thread, so an
/// answer of many large orders is never built whole in memory.
fn streamed(chunks: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>) -> Response {
    let stream = futures_util::stream::unfold(chunks, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    ([(axum::http::header::CONTENT_TYPE, "application/json")], axum::body::Body::from_stream(stream)).into_response()
}

/// `{"orders":[...],"next_after":N}`: feed entries after `after` (as stored, not parsed
/// again), stopping at `limit` entries or `[erp] max_response_bytes` of them.
async fn list_orders(
    State(st): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<OrdersQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}; expected ?after=SEQ&limit=1..={MAX_ORDERS_PAGE}&shop=NAME")),
    };
    if let Some(shop) = q.shop.as_deref().filter(|s| !caller.sees(s)) {
        return no_such_shop(&st, &caller, shop);
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_ORDERS_PAGE).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, format!("limit must be 1..={MAX_ORDERS_PAGE}"));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let (store, max_bytes) = (st.store.clone(), st.max_response_bytes);
    tokio::task::spawn_blocking(move || {
        if tx.blocking_send(Ok(bytes::Bytes::from_static(b"{\"orders\":["))).is_err() {
            return;
        }
        let mut first = true;
        // One shop asked for, or the caller's shops when its token is scoped, or all.
        let wanted = |s: &str| q.shop.as_deref().is_none_or(|want| want == s) && caller.sees(s);
        let filter: Option<&dyn Fn(&str) -> bool> = (q.shop.is_some() || caller.scope.is_some()).then_some(&wanted);
        let read = store.scan(q.after, limit, max_bytes, filter, q.shop.as_deref(), |entry| {
            if !std::mem::take(&mut first) && tx.blocking_send(Ok(bytes::Bytes::from_static(b","))).is_err() {
                return false;
            }
            tx.blocking_send(Ok(bytes::Bytes::from_owner(entry))).is_ok()
        });
        let end = match read {
            Ok(next_after) => Ok(bytes::Bytes::from(format!("],\"next_after\":{next_after}}}"))),
            Err(e) => {
                // The status line is gone; cutting the answer short is how the client learns.
                tracing::error!(error = %e, "listing orders failed part way; the answer was cut short");
                Err(std::io::Error::other(e.to_string()))
            }
        };
        let _ = tx.blocking_send(end);
    });
    streamed(rx)
}

async fn feed_info(State(st): State<Arc<ApiState>>) -> Response {
    match st.store.feed_info().await {
        Ok(info) => Json(info).into_response(),
        Err(e) => storage_error(&e),
    }
}

/// 404 for a shop that is not configured or that the caller's token does not see; the
/// names listed are the ones it sees.
pub(crate) fn no_such_shop(st: &ApiState, caller: &Caller, shop: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("no shop `{shop}`; shops: {}", caller.visible(st.shops.names().iter()).join(", ")))
}

pub type JsonBody<T> = Result<body::JsonIn<T>, body::BodyRejection>;

/// What was wrong with a JSON body and what shape was `expected`: 400, 413 for a body
/// over the size limit, 415 for one labelled as something else ([`body`]).
pub(crate) fn body_error(e: &body::BodyRejection, expected: &str) -> (StatusCode, String) {
    match e.status {
        StatusCode::PAYLOAD_TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, format!("{e}; the body is larger than this call takes")),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("{e}; expected {expected}")),
        _ => (StatusCode::BAD_REQUEST, format!("{e}; expected {expected}")),
    }
}

/// The request body, or a 400 saying what was wrong and what shape was `expected` (413
/// for a body over the size limit).
pub(crate) fn body_or_400<T>(body: JsonBody<T>, expected: &str) -> Result<T, Response> {
    body.map(|body::JsonIn(b)| b).map_err(|e| {
        let (status, why) = body_error(&e, expected);
        error(status, why)
    })
}

fn queue_error(e: QueueError) -> Response {
    match e {
        QueueError::Store(e) => storage_error(&e),
        e => {
            tracing::error!(error = %e, "order queue failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// Seconds a client is told to wait when the disk is full or read-only.
const NO_SPACE_RETRY_SECS: u16 = 30;

/// A store failure as the client should see it: a full or read-only disk is 507 with
/// `Retry-After` (nothing was written; it clears by itself once space is freed), a
/// store that stopped writing 503 (an operator restarts berth), anything else 500.
pub(crate) fn storage_error(e: &berth_core::store::StoreError) -> Response {
    use berth_core::store::StoreError;
    let (status, retry) = match e {
        StoreError::DiskFull { .. } | StoreError::ReadOnly { .. } => (StatusCode::INSUFFICIENT_STORAGE, Some(NO_SPACE_RETRY_SECS)),
        StoreError::Failed(_) | StoreError::Closed => (StatusCode::SERVICE_UNAVAILABLE, None),
        StoreError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, Some(1)),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, None),
    };
    // The store logs a full disk itself, once a minute; a line per refused request
    // would let retrying clients fill the log too.
    if retry.is_none() {
        tracing::warn!(error = %e, status = status.as_u16(), "a write was not stored");
    }
    let mut resp = error(status, e.to_string());
    if let Some(secs) = retry {
        resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
    }
    resp
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseRequest {
    #[serde(default = "default_lease_max")]
    max: usize,
    #[serde(default = "default_visibility")]
    visibility_secs: u64,
}

fn default_lease_max() -> usize {
    100
}

fn default_visibility() -> u64 {
    60
}

/// `{"leases":[{"token":..,"expires_at_ms":..,<the queued order's fields>},...]}`, at
/// most `max` orders and `[erp] max_response_bytes` of them (at least one).
async fn lease_orders(State(st): State<Arc<ApiState>>, Extension(caller): Extension<Caller>, body: JsonBody<LeaseRequest>) -> Response {
    let req = match body_or_400(body, &format!("{{\"max\": 1..={MAX_ORDERS_PAGE}, \"visibility_secs\": 1..=86400}}")) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if !(1..=MAX_ORDERS_PAGE).contains(&req.max) || !(1..=86_400).contains(&req.visibility_secs) {
        return error(StatusCode::BAD_REQUEST, format!("max must be 1..={MAX_ORDERS_PAGE} and visibility_secs 1..=86400"));
    }
    let visibility = std::time::Duration::from_secs(req.visibility_secs);
    let leased = match &caller.scope {
        // A tenant leases from its shops' partitions only: another's backlog is not in its way.
        Some(scope) => st.inbox.lease_raw_scoped(&scope.key(), &caller.visible(st.shops.names().iter()), req.max, st.max_response_bytes, visibility).await,
        None => st.inbox.lease_raw(req.max, st.max_response_bytes, visibility).await,
    };
    let leases = match leased {
        Ok(leases) => leases,
        Err(e) => return queue_error(e),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let _ = tx.send(Ok(bytes::Bytes::from_static(b"{\"leases\":["))).await;
        for (i, lease) in leases.into_iter().enumerate() {
            for chunk in berth_core::inbox::lease_json(i > 0, lease) {
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        }
        let _ = tx.send(Ok(bytes::Bytes::from_static(b"]}"))).await;
    });
    streamed(rx)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckRequest {
    tokens: Vec<LeaseToken>,
    /// For nack: seconds before the order is offered again.
    #[serde(default)]
    delay_secs: u64,
    #[serde(default)]
    reason: Option<String>,
    /// For extend: seconds from now the lease lasts.
    #[serde(default)]
    visibility_secs: Option<u64>,
}

/// A token refused, and why.
#[derive(Serialize)]
struct Refused {
    id: u64,
    reason: String,
}

#[derive(Serialize)]
struct AckResponse {
    done: usize,
    /// Ids whose token is not their current lease (expired and leased again, settled
    /// already, or never issued): nothing changed for them.
    lease_lost: Vec<u64>,
    refused: Vec<Refused>,
    /// For extend: each extended lease's new expiry, by id.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<BTreeMap<u64, i64>>,
}

/// Of queue `items` (each with a message `id`), those the caller may act on —
/// `allowed(scope, item)` for a scoped caller —, and the ids of the rest. An unscoped
/// caller keeps them all without a lookup.
fn in_scope<T>(
    caller: &Caller,
    items: Vec<T>,
    id: impl Fn(&T) -> u64,
    allowed: impl Fn(&crate::auth::Scope, &T) -> Result<bool, QueueError>,
) -> Result<(Vec<T>, Vec<u64>), QueueError> {
    let Some(scope) = &caller.scope else { return Ok((items, Vec::new())) };
    let (mut mine, mut others) = (Vec::with_capacity(items.len()), Vec::new());
    for item in items {
        match allowed(scope, &item)? {
            true => mine.push(item),
            false => others.push(id(&item)),
        }
    }
    Ok((mine, others))
}

/// Most tokens one ack, nack or extend takes.
const MAX_TOKENS: usize = 1000;

#[derive(Clone, Copy, PartialEq)]
enum Settle {
    Ack,
    Nack,
    Extend,
}

async fn settle(st: &ApiState, caller: &Caller, body: JsonBody<AckRequest>, how: Settle) -> Response {
    let req = match body_or_400(body, r#"{"tokens": [{"id": N, "attempt": N, "lease": "..."}]} as the lease answered them"#) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if req.tokens.len() > MAX_TOKENS {
        return error(StatusCode::BAD_REQUEST, format!("tokens: {} given, at most {MAX_TOKENS} a call", req.tokens.len()));
    }
    let max_delay = berth_core::queue::MAX_DELAY.as_secs();
    if req.delay_secs > max_delay {
        return error(StatusCode::BAD_REQUEST, format!("delay_secs must be 0..={max_delay} (a week), not {}", req.delay_secs));
    }
    let visibility = match (how, req.visibility_secs) {
        (Settle::Extend, Some(v)) if (1..=86_400).contains(&v) => std::time::Duration::from_secs(v),
        (Settle::Extend, v) => {
            return error(StatusCode::BAD_REQUEST, format!("visibility_secs must be 1..=86400 for an extend, not {}", v.map_or("missing".into(), |v| v.to_string())))
        }
        (_, Some(_)) => return error(StatusCode::BAD_REQUEST, "visibility_secs belongs to /v1/orders/extend"),
        (_, None) => std::time::Duration::ZERO,
    };
    let mut resp = AckResponse { done: 0, lease_lost: Vec::new(), refused: Vec::new(), expires_at_ms: (how == Settle::Extend).then(BTreeMap::new) };
    // A scoped token settles only its shops' orders; another's is refused like a token
    // that is not the current lease, and nothing changes for it.
    let mut req = req;
    let others;
    let settles = |scope: &crate::auth::Scope, token: &LeaseToken| st.inbox.may_settle(token, &scope.key(), |shop| scope.sees(shop));
    (req.tokens, others) = match in_scope(caller, req.tokens, |t| t.id, settles) {
        Ok(split) => split,
        Err(e) => return queue_error(e),
    };
    for id in others {
        resp.lease_lost.push(id);
        resp.refused.push(Refused { id, reason: QueueError::LeaseLost { id }.to_string() });
    }
    let reason = req.reason.as_deref().map(|r| berth_runtime::state::bounded(r, 2048)).unwrap_or("nacked by the ERP");
    // Acks share one fsync; a nack or an extend is rare and each is its own.
    let results: Vec<Result<Option<i64>, QueueError>> = match how {
        Settle::Ack => match st.inbox.ack_many(&req.tokens).await {
            Ok(results) => results.into_iter().map(|r| r.map(|()| None)).collect(),
            Err(e) => return queue_error(e),
        },
        Settle::Nack => {
            let mut results = Vec::with_capacity(req.tokens.len());
            for token in &req.tokens {
                results.push(st.inbox.nack(token, std::time::Duration::from_secs(req.delay_secs), reason).await.map(|()| None));
            }
            results
        }
        Settle::Extend => {
            let mut results = Vec::with_capacity(req.tokens.len());
            for token in &req.tokens {
                results.push(st.inbox.extend(token, visibility).await.map(Some));
            }
            results
        }
    };
    for (token, result) in req.tokens.iter().zip(results) {
        match result {
            Ok(expiry) => {
                resp.done += 1;
                if let (Some(map), Some(at)) = (resp.expires_at_ms.as_mut(), expiry) {
                    map.insert(token.id, at);
                }
            }
            Err(e @ QueueError::LeaseLost { .. }) => {
                resp.lease_lost.push(token.id);
                resp.refused.push(Refused { id: token.id, reason: e.to_string() });
            }
            Err(e) => return queue_error(e),
        }
    }
    // A token that is not its message's current lease changes nothing: 409 says so.
    let status = if resp.lease_lost.is_empty() { StatusCode::OK } else { StatusCode::CONFLICT };
    (status, Json(resp)).into_response()
}

async fn ack_orders(State(st): State<Arc<ApiState>>, Extension(caller): Extension<Caller>, body: JsonBody<AckRequest>) -> Response {
    settle(&st, &caller, body, Settle::Ack).await
}

async fn nack_orders(State(st): State<Arc<ApiState>>, Extension(caller): Extension<Caller>, body: JsonBody<AckRequest>) -> Response {
    settle(&st, &caller, body, Settle::Nack).await
}

async fn extend_orders(State(st): State<Arc<ApiState>>, Extension(caller): Extension<Caller>, body: JsonBody<AckRequest>) -> Response {
    settle(&st, &caller, body, Settle::Extend).await
}

#[derive(Serialize)]
struct QueueInfo {
    #[serde(flatten)]
    stats: QueueStats,
    /// The same figures per shop.
    partitions: std::collections::BTreeMap<String, QueueStats>,
    /// Where the per-shop figures are not exact (cluster mode), how.
    #[serde(skip_serializing_if = "Option::is_none")]
    partitions_note: Option<String>,
    dead_letters: Vec<berth_core::queue::DeadLetter>,
    /// Present when orders are also posted to an ERP webhook.
    webhook: Option<berth_core::delivery::DeliveryStatus>,
}

async fn queue_info(State(st): State<Arc<ApiState>>, Extension(caller): Extension<Caller>) -> Response {
    let webhook = st.delivery.as_ref().map(|d| d.lock().unwrap_or_else(|e| e.into_inner()).clone());
    match (st.inbox.stats(), st.inbox.partition_stats().await, st.inbox.dead_letters(100)) {
        (Ok(_), Ok(counts), Ok(dead_letters)) if caller.scope.is_some() => {
            // The caller's shops only, their totals summed.
            let partitions: BTreeMap<String, QueueStats> = counts.shops.into_iter().filter(|(shop, _)| caller.sees(shop)).collect();
            let mut stats = QueueStats::default();
            for p in partitions.values() {
                stats.ready += p.ready;
                stats.in_flight += p.in_flight;
                stats.dead += p.dead;
                stats.oldest_age_ms = stats.oldest_age_ms.max(p.oldest_age_ms);
            }
            let dead_letters: Vec<_> = dead_letters.into_iter().filter(|d| caller.sees(&d.partition)).collect();
            // In cluster mode: the counts of the classes of shops its scope leases from.
            if let Some(scoped) = caller.scope.as_ref().and_then(|s| st.inbox.scoped_stats(&s.key())) {
                match scoped {
                    Ok(s) => stats = QueueStats { dead: dead_letters.len() as u64, ..s },
                    Err(e) => return queue_error(e),
                }
            }
            Json(QueueInfo { stats, partitions, partitions_note: counts.note, dead_letters, webhook: None }).into_response()
        }
        (Ok(stats), Ok(counts), Ok(dead_letters)) => {
            Json(QueueInfo { stats, partitions: counts.shops, partitions_note: counts.note, dead_letters, webhook }).into_response()
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => queue_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdsRequest {
    ids: Vec<u64>,
}

#[derive(Serialize)]
struct CountResponse {
    count: usize,
}

async fn dead_letter_op(st: &ApiState, caller: &Caller, body: JsonBody<IdsRequest>, replay: bool) -> Response {
    let mut req = match body_or_400(body, r#"{"ids": [N, ...]} from GET /v1/orders/queue"#) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if req.ids.len() > MAX_TOKENS {
        return error(StatusCode::BAD_REQUEST, format!("ids: {} given, at most {MAX_TOKENS} a call", req.ids.len()));
    }
    // Another shop's dead letter is, for this token, not there.
    let shops = match caller.scope {
        Some(_) => match st.inbox.dead_shops_of(&req.ids).await {
            Ok(shops) => shops,
            Err(e) => return queue_error(e),
        },
        None => Default::default(),
    };
    let sees = |scope: &crate::auth::Scope, id: &u64| Ok(shops.get(id).cloned().flatten().is_some_and(|shop| scope.sees(&shop)));
    req.ids = match in_scope(caller, req.ids, |id| *id, sees) {
        Ok((mine, _)) => mine,
        Err(e) => return queue_error(e),
    };
    let result = if replay { st.inbox.replay(&req.ids).await } else { st.inbox.purge(&req.ids).await };
    match result {
        Ok(count) => Json(CountResponse { count }).into_response(),
        Err(e) => queue_error(e),
    }
}

async fn replay_dead(State(st): State<Arc<ApiState>>, Extension(caller): Extension<Caller>, body: JsonBody<IdsRequest>) -> Response {
    dead_letter_op(&st, &caller, body, true).await
}

async fn purge_dead(State(st): State<Arc<ApiState>>, Extension(caller): Extension<Caller>, body: JsonBody<IdsRequest>) -> Response {
    dead_letter_op(&st, &caller, body, false).await
}

async fn platform_webhook(
    State(st): State<Arc<ApiState>>,
    axum::extract::Path(shop): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    use berth_core::ingest::IngestError;
    let Some(target) = st.shops.webhook(&shop) else {
        return error(StatusCode::NOT_FOUND, format!("no shop `{shop}`; point the platform's webhook at /v1/webhooks/SHOP for a configured shop"));
    };
    let headers = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    match berth_core::ingest::ingest(&shop, &target, headers, body.to_vec(), &st.inbox, &st.store).await {
        Ok(done) => Json(done).into_response(),
        Err(e @ IngestError::Unauthorized(_)) => error(StatusCode::UNAUTHORIZED, e.to_string()),
        Err(e @ IngestError::Invalid(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ IngestError::Unprocessable(_)) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(e @ IngestError::Unavailable(_)) => {
            tracing::warn!(shop = %shop, error = %e, "webhook not handled; the platform will retry");
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(e @ IngestError::TooMany { retry_after_secs, .. }) => {
            tracing::debug!(shop = %shop, error = %e, "webhook refused for now; the platform will retry");
            let mut resp = error(StatusCode::TOO_MANY_REQUESTS, e.to_string());
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(retry_after_secs));
            resp
        }
    }
}

/// A shop as `GET /v1/shops` shows it: its sync status and, when berth renews its
/// credentials, their state (expiry times, the last refresh, failures; never a token).
#[derive(Serialize)]
struct ShopView {
    #[serde(flatten)]
    status: ShopStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    credentials: Option<berth_core::credentials::CredentialState>,
}

async fn list_shops(State(st): State<Arc<ApiState>>, Extension(caller): Extension<Caller>) -> Json<Vec<ShopView>> {
    let credentials = |shop: &str| {
        let book = st.credentials.as_ref()?;
        book.state(shop).unwrap_or_else(|e| {
            tracing::error!(shop, error = %e, "cannot read the shop's credential state");
            None
        })
    };
    Json(
        st.shops
            .statuses()
            .into_iter()
            .filter(|s| caller.sees(&s.shop))
            .map(|status| ShopView { credentials: credentials(&status.shop), status })
            .collect(),
    )
}

#[derive(Serialize)]
struct HealthView {
    window_secs: u64,
    tiers: BTreeMap<String, berth_core::health::TierPolicy>,
    summary: Vec<berth_core::health::TierSummary>,
    shops: Vec<berth_core::health::ShopHealth>,
}

async fn health(State(st): State<Arc<ApiState>>) -> Json<HealthView> {
    let cfg = st.health.config();
    let shops = st.health.shops();
    Json(HealthView {
        window_secs: cfg.window_secs,
        tiers: [berth_types::shop::Tier::A, berth_types::shop::Tier::B, berth_types::shop::Tier::C].into_iter().map(|t| (format!("{t:?}"), cfg.policy(t))).collect(),
        summary: st.health.summary(&shops),
        shops,
    })
}

#[derive(Serialize)]
struct AlertsView {
    firing: Vec<berth_ops::alerts::AlertRecord>,
    recent: Vec<berth_ops::alerts::LogEntry>,
    receivers: Vec<berth_ops::alerts::notify::ReceiverStatus>,
    rules: Vec<String>,
}

async fn alerts(State(st): State<Arc<ApiState>>) -> Json<AlertsView> {
    Json(AlertsView {
        firing: st.alerts.firing(),
        recent: st.alerts.recent(50),
        receivers: st.alerts.receivers(),
        rules: st.alerts.rules().iter().map(|r| format!("{} ({}, {})", r.name, r.check.kind().name(), r.severity.name())).collect(),
    })
}

async fn list_connectors(State(st): State<Arc<ApiState>>) -> Json<Vec<ConnectorInfo>> {
    Json(
        st.registry
            .slots()
            .iter()
            .map(|(name, slot)| {
                let c = slot.current();
                ConnectorInfo {
                    name: name.clone(),
                    platform: c.manifest.platform.clone(),
                    version: c.version().to_string(),
                    wit_version: c.manifest.wit_version.clone(),
                    digest: c.digest.clone(),
                    allowed_hosts: c.manifest.allowed_hosts.clone(),
                    http_refusals: st.services.http.refusals(name),
                    limits: c.limits,
                    breaker: c.breaker.view(),
                    canary_breaker: slot.canary().map(|k| k.version.breaker.view()),
                    instances: c.pool_share(),
                    features: Features::of(&c),
                }
            })
            .collect(),
    )
}

/// How berth calls one platform right now.
#[derive(Serialize)]
struct PlatformView {
    /// Its buckets, quota key, hold bounds and the destinations that count against it.
    limits: berth_capabilities::ratelimit::PlatformLimitsView,
    endpoint_classes: Vec<String>,
    /// Quotas held after a throttle or a nearly full call bucket: key, time left, and
    /// the shop whose call caused it.
    held_quotas: Vec<berth_capabilities::ratelimit::HeldQuota>,
    retry_pull: berth_types::retry::RetryPolicy,
    retry_push: berth_types::retry::RetryPolicy,
    standby: Option<berth_capabilities::standby::ChannelStatus>,
    /// How much of each quota is in use, busiest first (at most
    /// [`MAX_USAGE_ROWS`]; the gauge has every quota's busiest key).
    quota_usage: Vec<berth_capabilities::usage::QuotaUsage>,
}

/// The most quota usage rows `GET /v1/platforms` shows per platform.
const MAX_USAGE_ROWS: usize = 50;

/// `GET /v1/cluster`: the nodes, which shops each runs, this node's leases and how
/// current its view is.
#[derive(Serialize)]
struct ClusterInfo {
    /// The node answering.
    node: String,
    /// Live nodes, from their heartbeats.
    nodes: Vec<ClusterNode>,
    /// Shops whose lease is released or not taken yet (a handover under way).
    unowned: Vec<String>,
    /// This node's leases and the revision each fences its writes with.
    held: Vec<berth_cluster::lease::HeldLease>,
    /// How old this node's last acknowledged heartbeat is (its lag behind the cluster).
    heartbeat_age_ms: Option<u64>,
    /// True while this node is cut off and has stopped its shops.
    fenced_off: bool,
    last_round_ms: Option<u64>,
    /// The ERP leases this node keeps a timer for (a visibility other than the order
    /// queue's ack wait): they end, or are renewed, on this node's clock.
    erp_lease_timers: Option<usize>,
}

#[derive(Serialize)]
struct ClusterNode {
    node: String,
    started_ms: i64,
    /// The shops whose lease names it.
    shops: Vec<String>,
}

async fn cluster_info(State(st): State<Arc<ApiState>>) -> Response {
    let Some(leases) = &st.cluster else {
        return error(StatusCode::NOT_FOUND, "berth runs single-node: [cluster] is not set (docs/cluster.md)".to_string());
    };
    let view = leases.view();
    let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut unowned = Vec::new();
    let served: std::collections::BTreeSet<String> = st.shops.names().into_iter().collect();
    for (shop, owner) in leases.owners().into_iter().filter(|(shop, _)| served.contains(shop)) {
        match owner {
            Some(node) => by_node.entry(node).or_default().push(shop),
            None => unowned.push(shop),
        }
    }
    let leased: std::collections::BTreeSet<&String> = by_node.values().flatten().chain(unowned.iter()).collect();
    let never: Vec<String> = served.iter().filter(|s| !leased.contains(s)).cloned().collect();
    let nodes = view
        .live_nodes
        .iter()
        .map(|n| ClusterNode { node: n.node.clone(), started_ms: n.started_ms, shops: by_node.remove(&n.node).unwrap_or_default() })
        .collect();
    // Leases naming a node that is gone: free for the others to take.
    unowned.extend(by_node.into_values().flatten().chain(never));
    unowned.sort();
    Json(ClusterInfo {
        node: view.node,
        nodes,
        unowned,
        held: view.held,
        heartbeat_age_ms: view.heartbeat_age_ms,
        fenced_off: view.fenced_off,
        last_round_ms: view.last_round_ms,
        erp_lease_timers: st.inbox.timed_leases(),
    })
    .into_response()
}

async fn list_platforms(State(st): State<Arc<ApiState>>) -> Json<BTreeMap<String, PlatformView>> {
    use berth_types::retry::Job;
    let services = &st.services;
    let held = services.limits.held();
    let mut standby = services.standby.status();
    let mut usage = services.limits.usage();
    berth_capabilities::usage::by_ratio(&mut usage);
    let names: std::collections::BTreeSet<String> = st
        .registry
        .slots()
        .values()
        .map(|c| c.platform.clone())
        .chain(held.iter().map(|h| h.platform.clone()))
        .chain(standby.keys().cloned())
        .chain(usage.iter().map(|u| u.platform.clone()))
        .collect();
    Json(
        names
            .into_iter()
            .map(|name| {
                let view = PlatformView {
                    limits: services.limits.limits_view(&name),
                    endpoint_classes: services.limits.classes(&name),
                    held_quotas: held.iter().filter(|h| h.platform == name).cloned().collect(),
                    retry_pull: services.retry.get(&name, Job::Pull),
                    retry_push: services.retry.get(&name, Job::Push),
                    standby: standby.remove(&name),
                    quota_usage: usage.iter().filter(|u| u.platform == name).take(MAX_USAGE_ROWS).cloned().collect(),
                };
                (name, view)
            })
            .collect(),
    )
}

/// Prometheus text format. Queue gauges are read at scrape time; stock queues are
/// summed over shops (shops are not a label).
async fn metrics(State(st): State<Arc<ApiState>>) -> Response {
    let m = &st.metrics;
    let ms = |v: Option<i64>| v.map(|ms| std::time::Duration::from_millis(ms.max(0) as u64));
    for q in berth_core::levels::queue_levels(&st.inbox, &st.stock, &st.shops) {
        m.queue(q.queue, q.ready, q.in_flight, q.dead, ms(q.oldest_age_ms));
    }
    st.metrics.export_health(&st.health);
    st.metrics.export_drift(&st.reconciler.drift());
    st.metrics.export_snapshots(&st.snapshots.taken());
    st.services.http_metrics.quota_usage(&st.services.limits.usage());
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.render()).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when storage confirms a durable write within 5 s and connectors are loaded;
/// the body says which check failed.
async fn readyz(State(st): State<Arc<ApiState>>) -> Response {
    let connectors = st.registry.slots().len();
    let started = std::time::Instant::now();
    let storage = match tokio::time::timeout(std::time::Duration::from_secs(5), st.store.probe_writable()).await {
        Ok(Ok(())) => Ok(format!("a durable write took {} ms", started.elapsed().as_millis())),
        Ok(Err(e)) => Err(format!("storage is not writable: {e}")),
        Err(_) => Err("storage did not confirm a write within 5 s".to_string()),
    };
    let loaded = if connectors == 0 { Err("no connectors loaded".to_string()) } else { Ok(format!("{connectors} loaded")) };
    let ready = storage.is_ok() && loaded.is_ok();
    let show = |r: Result<String, String>| r.unwrap_or_else(|e| e);
    let body = serde_json::json!({ "ready": ready, "storage": show(storage), "connectors": show(loaded), "shops": st.shops.names().len() });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}
