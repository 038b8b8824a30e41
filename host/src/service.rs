//! Start-up and shutdown: config, storage, connectors, workers and the API, in that
//! order, each failure reported with what to fix.

use berth_api::{self as api, ApiState};
use berth_capabilities::kv::KvStore;
use crate::config::{Config, ConfigError};
use berth_core::delivery::ErpDeliverer;
use berth_core::inbox::OrderInbox;
use berth_core::queue::{QueueError, QueuePolicy, StoreQueues};
use berth_core::stock::{StockError, StockLedger};
use berth_capabilities::services::HostServices;
use berth_runtime::{ConnectorRuntime, LoadError};
use berth_core::store::{OrderStore, StoreError};
use berth_core::shops::ShopSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Stock(#[from] StockError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Migrate(#[from] berth_storage::migrate::MigrateError),
    #[error("connector `{connector}`: {source}")]
    Connector { connector: String, source: LoadError },
    #[error("shop `{shop}`: connector `{connector}` needs config key `{key}`; add it under [shops.{shop}.settings] or [shops.{shop}.secrets]")]
    MissingShopKey { shop: String, connector: String, key: String },
    #[error("cannot create data dir {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("cannot set up outbound HTTP: {0}")]
    Http(String),
    #[error("cannot listen on {addr}: {source}; is another process using the port?")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Registry(berth_core::registry::RegistryStoreError),
    #[error("{0}")]
    Shop(String),
    #[error(transparent)]
    Health(#[from] berth_core::health::HealthStoreError),
    #[error(transparent)]
    Alerts(#[from] berth_ops::alerts::AlertsError),
    #[error("drill records: {0}")]
    Drills(#[from] berth_ops::drills::DrillError),
    #[error("cannot open the reconciliation reports: {0}")]
    Reconcile(#[from] berth_core::reconcile::ReconcileError),
    #[error("{0}")]
    Snapshots(String),
    #[error("TLS: {0}; check [server] tls_cert and tls_key")]
    Tls(#[from] berth_api::listener::TlsError),
    #[error("credentials: {0}; check [credentials] key_file / key_env")]
    CredentialKey(#[from] berth_core::credentials::seal::SealError),
    #[error(transparent)]
    Credentials(#[from] berth_core::credentials::CredentialError),
    #[error(transparent)]
    Onboarding(#[from] berth_core::onboarding::OnboardingError),
    #[error("cluster mode: {0} (`berth cluster-check --config FILE` checks the NATS cluster; docs/cluster.md)")]
    Cluster(#[from] berth_cluster::ClusterError),
}

/// A started service; dropping it does not stop it, call [`Running::shutdown`].
pub struct Running {
    /// Whether the API speaks HTTPS.
    pub tls: bool,
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    server: tokio::task::JoinHandle<()>,
    storage: berth_storage::Store,
    shops: Arc<ShopSet>,
    /// Cluster mode: the lease loop, awaited first at shutdown (it stops this node's
    /// shops and hands their leases over).
    leases: Option<tokio::task::JoinHandle<()>>,
}

pub async fn start(config_path: &Path) -> Result<Running, StartError> {
    let cfg = Config::load(config_path)?;
    let storage = open_storage(&cfg).await?;
    tracing::debug!("start: the store is open");
    let node = match &cfg.cluster {
        Some(c) => Some(crate::cluster::join(c, &cfg.shops).await?),
        None => None,
    };
    let durable = match &node {
        Some(node) => Durable::cluster(&storage, &cfg, node).await?,
        None => Durable::open(&storage, &cfg)?,
    };
    tracing::debug!("start: orders, queues and the stock ledger are loaded");
    let metrics = crate::metrics::AllMetrics::for_node(cfg.cluster.as_ref().map(|c| c.node.as_str()));
    let (services, registry) = load_connectors(&cfg, &storage, &metrics, node.as_ref()).await?;
    let credentials = open_credentials(&cfg, &storage, &registry, node.as_ref()).await?;
    let onboarding = open_onboarding(&cfg, &storage, credentials.clone(), node.as_ref()).await?;
    let audit = open_audit(&cfg)?;
    let (listener, addr, tls) = bind(&cfg).await?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    // Core tells what happens as events; ops count them (metrics) and raise alerts.
    let events = berth_core::events::Events::new();
    events.subscribe(metrics.ops.clone());
    if let Some(book) = &credentials {
        book.tell(events.clone());
    }
    let health = Arc::new(berth_core::health::HealthBook::open(&storage, cfg.health.clone(), events.clone())?);
    let shared_health = match &node {
        Some(node) => Some(berth_core::health::cluster::SharedHealth::attach(&node.conn, node.leases.clone(), &health, shutdown_rx.clone()).await?),
        None => None,
    };
    let admin_auth = Arc::new(berth_api::auth::AdminAuth::new(&cfg.admin));
    let (shops, leases) = match &node {
        Some(node) => {
            let (shops, leases, cluster_shops) = start_cluster_shops(&cfg, &durable, &services, &registry, &health, &onboarding, &admin_auth, node, shutdown_rx.clone()).await;
            (shops, Some((leases, cluster_shops)))
        }
        None => (start_shops(&cfg, &durable, &services, &registry, &health, &onboarding, shutdown_rx.clone())?, None),
    };
    let (leases, cluster_shops) = leases.unzip();
    let mut workers: Vec<_> = shared_health.into_iter().collect();
    let delivery = match ErpDeliverer::from_config(&cfg.erp, durable.inbox.clone()).map_err(StartError::Http)? {
        Some(d) => {
            let status = d.status.clone();
            workers.push(tokio::spawn(d.run(shutdown_rx.clone())));
            Some(status)
        }
        None => None,
    };
    if let Some(cluster) = &cluster_shops {
        workers.push(tokio::spawn(cluster.clone().follow_onboarding(onboarding.clone(), shutdown_rx.clone())));
    }
    workers.push(tokio::spawn(services.standby.clone().run(services.http.client().clone(), shutdown_rx.clone())));
    workers.push(tokio::spawn(crate::reload::watch_config(
        config_path.to_path_buf(),
        crate::reload::Reloadable {
            services: services.clone(),
            admin: admin_auth.clone(),
            audit: audit.clone(),
            registry: registry.clone(),
            shops: shops.clone(),
            cluster: cluster_shops.clone(),
            onboarding: onboarding.clone(),
            credentials: credentials.clone().map(|b| (b, cfg.credentials.refresh_margin_secs as i64 * 1000)),
        },
        shutdown_rx.clone(),
    )));
    workers.push(tokio::spawn(sweep_idempotency_keys(
        durable.inbox.clone(),
        std::time::Duration::from_secs(cfg.erp.idempotency_ttl_hours * 3600),
        shutdown_rx.clone(),
    )));
    let alerts = Arc::new(berth_ops::alerts::Alerts::open(&storage, &cfg.alerts, metrics.ops.clone())?);
    if let (Some(node), Some(c)) = (&node, &cfg.cluster) {
        alerts.share(berth_ops::alerts::cluster::Board::open(&node.conn, &c.prefix, node.leases.clone()).await?);
    }
    events.subscribe(alerts.clone());
    let reconciler = Arc::new(berth_core::reconcile::Reconciler::open(&storage, durable.ledger.clone(), Default::default())?);
    let snapshots = Arc::new(
        berth_snapshot::Snapshotter::new(cfg.snapshots.clone(), &cfg.server.data_dir, reconciler.reads().clone(), durable.store.clone(), durable.ledger.clone())
            .map_err(StartError::Snapshots)?,
    );
    snapshots.tidy(&shops.names());
    let sources = berth_ops::alerts::Sources {
        reconciler: reconciler.clone(),
        snapshots: snapshots.clone(),
        registry: registry.clone(),
        inbox: durable.inbox.clone(),
        stock: durable.ledger.clone(),
        shops: shops.clone(),
        health: health.clone(),
        credentials: credentials.clone(),
    };
    workers.push(tokio::spawn(alerts.clone().run(sources, shutdown_rx.clone())));
    let drills = Arc::new(berth_ops::drills::Drills::open(
        &storage,
        berth_ops::drills::DrillDeps {
            shops: shops.clone(),
            registry: registry.clone(),
            inbox: durable.inbox.clone(),
            stock: durable.ledger.clone(),
            alerts: alerts.clone(),
        },
    )?);
    if let (Some(node), Some(c)) = (&node, &cfg.cluster) {
        workers.push(crate::cluster::forward_audit(&node.conn, c, audit.clone(), shutdown_rx.clone()).await?);
    }
    if let Ok(Some(schedule)) = cfg.reconcile.schedule() {
        workers.push(tokio::spawn(berth_core::reconcile::run_nightly(reconciler.clone(), shops.clone(), cfg.reconcile.clone(), schedule, shutdown_rx.clone())));
    }
    if let Ok(Some(schedule)) = cfg.snapshots.schedule() {
        let reconcile = cfg.reconcile.after_snapshot().then(|| (reconciler.clone(), cfg.reconcile.clone()));
        workers.push(tokio::spawn(berth_snapshot::run_nightly(snapshots.clone(), shops.clone(), reconcile, schedule, shutdown_rx.clone())));
    }
    workers.push(tokio::spawn(berth_core::registry::watch_canaries(registry.clone(), audit.clone(), events, shutdown_rx.clone())));
    workers.push(tokio::spawn(registry.clone().share_shadow_reports(shutdown_rx.clone())));

    let connectors = registry.slots().len();
    let cluster = node.as_ref().map(|n| n.leases.clone());
    let app = router(&cfg, Routed { durable: &durable, services, registry, shops: shops.clone(), health, alerts, drills, reconciler, snapshots, delivery, admin_auth, audit, metrics: &metrics, credentials, onboarding, cluster });
    let limits = api::listener::Limits {
        max_connections: cfg.server.max_connections as usize,
        header_read_timeout: std::time::Duration::from_secs(cfg.server.header_read_timeout_secs),
        metrics: metrics.api.clone(),
    };
    let tls_on = tls.is_some();
    let server = tokio::spawn(api::listener::serve(listener, app, limits, tls, shutdown_rx.clone()));
    tracing::info!(%addr, shops = cfg.shops.len(), connectors, "berth is serving; orders at /v1/orders");
    Ok(Running { tls: tls_on, addr, shutdown, workers, server, storage, shops, leases })
}

/// The data dir and the store in it (a sled data dir is migrated first), with the
/// watchdog that ends a stalled process.
async fn open_storage(cfg: &Config) -> Result<berth_storage::Store, StartError> {
    let data_dir = &cfg.server.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|source| StartError::DataDir { path: data_dir.display().to_string(), source })?;
    let store_config = berth_storage::StoreConfig { reserve_bytes: cfg.server.disk_reserve_mb.saturating_mul(1024 * 1024), ..Default::default() };
    let (storage, migrated) = berth_storage::migrate::open(data_dir, &data_dir.join("components"), store_config).await?;
    if let Some(m) = migrated {
        tracing::warn!(
            backup = %m.backup.display(),
            entries = ?m.trees,
            components = m.components,
            "migrated the sled data dir into the store; the old one is kept as the backup named here (remove it once this release runs well)"
        );
    }
    if cfg.server.stall_exit_secs > 0 {
        berth_ops::watchdog::start(&storage, std::time::Duration::from_secs(cfg.server.stall_exit_secs), berth_ops::watchdog::exit_on_stall);
    }
    Ok(storage)
}

/// What orders and stock updates are kept in: one writer for everything durable, so
/// orders, queues and stock share its batches.
struct Durable {
    store: Arc<OrderStore>,
    inbox: OrderInbox,
    ledger: Arc<StockLedger>,
}

impl Durable {
    fn open(storage: &berth_storage::Store, cfg: &Config) -> Result<Durable, StartError> {
        let store = Arc::new(OrderStore::on(storage)?);
        let inbox = OrderInbox::new(Arc::new(StoreQueues::open(storage, QueuePolicy { max_attempts: cfg.erp.max_attempts })?));
        // The push policy's job defaults: the same ones the pusher's platforms fall back to.
        let ledger = Arc::new(StockLedger::open(storage, cfg.retry_defaults().push)?);
        Ok(Durable { store, inbox, ledger })
    }

    /// Cluster mode: orders, the ERP's queue and the stock ledger in the NATS cluster,
    /// a shop's writes fenced by this node's lease on it.
    async fn cluster(storage: &berth_storage::Store, cfg: &Config, node: &crate::cluster::Node) -> Result<Durable, StartError> {
        let fences = node.leases.clone() as Arc<dyn berth_cluster::FenceSource>;
        let store = Arc::new(OrderStore::open_cluster(node.conn.clone(), fences.clone(), node.classes.clone()));
        let cluster = cfg.cluster.as_ref().expect("a node joined from [cluster]");
        let queue = crate::cluster::erp_queue(node, cluster, cfg.erp.max_attempts).await?;
        let local = Arc::new(StoreQueues::open(storage, QueuePolicy { max_attempts: cfg.erp.max_attempts })?);
        let inbox = OrderInbox::cluster(local, queue);
        let ledger = Arc::new(StockLedger::open_cluster(&node.conn, cfg.retry_defaults().push, fences).await?);
        Ok(Durable { store, inbox, ledger })
    }
}

/// The capabilities, the runtime over them and the registry with every configured
/// connector loaded; each shop has the keys its connector's manifest requires.
async fn load_connectors(
    cfg: &Config,
    storage: &berth_storage::Store,
    metrics: &crate::metrics::AllMetrics,
    node: Option<&crate::cluster::Node>,
) -> Result<(Arc<HostServices>, Arc<berth_core::registry::ConnectorRegistry>), StartError> {
    let data_dir = &cfg.server.data_dir;
    let kv = match node {
        Some(node) => KvStore::cluster(node.conn.clone(), node.leases.clone()),
        None => KvStore::open(storage)?,
    };
    let services = HostServices::new(&cfg.http, &cfg.platforms, cfg.retry_defaults(), kv, metrics.http.clone());
    let services = Arc::new(services.map_err(|e| StartError::Http(e.to_string()))?);
    let runtime = ConnectorRuntime::new(&cfg.runtime, services.clone(), metrics.runtime.clone(), data_dir.join("compiled"))?;
    let components = data_dir.join("components");
    let (registry_store, changes) = match node {
        Some(node) => {
            let (store, changes) = berth_core::registry::RegistryStore::open_cluster(&node.conn, &components).await.map_err(StartError::Registry)?;
            (store, Some(changes))
        }
        None => (berth_core::registry::RegistryStore::open(storage, &components).map_err(StartError::Registry)?, None),
    };
    let registry = berth_core::registry::ConnectorRegistry::open(registry_store, runtime, &cfg.connectors, Some(data_dir.join("tapes"))).await.map_err(|e| match e {
        berth_core::registry::RegistryOpenError::Load { connector, source } => StartError::Connector { connector, source },
        berth_core::registry::RegistryOpenError::Storage(e) => StartError::Registry(e),
    })?;
    let registry = Arc::new(registry);
    if let Some(changes) = changes {
        // Another node's deploy, activation, pause, canary or rollback, put in force here.
        tokio::spawn(registry.clone().follow(changes));
    }
    let connectors = registry.slots();
    for (shop, sc) in &cfg.shops {
        if let Err(berth_core::shops::ShopError::MissingKey { shop, connector, key }) = ShopSet::check(shop, sc, &connectors[&sc.connector]) {
            return Err(StartError::MissingShopKey { shop, connector, key });
        }
    }
    Ok((services, registry))
}

/// With a key configured: the credential book, seeded with the refresh tokens in config
/// of shops whose connector refreshes (a shop it already holds keeps what it holds: a
/// refresh since has spent the configured token), and every connector's calls take their
/// tokens from it.
async fn open_credentials(
    cfg: &Config,
    storage: &berth_storage::Store,
    registry: &berth_core::registry::ConnectorRegistry,
    node: Option<&crate::cluster::Node>,
) -> Result<Option<Arc<berth_core::credentials::CredentialBook>>, StartError> {
    use berth_core::credentials::CredentialBook;
    let Some(sealer) = cfg.credentials.sealer()? else { return Ok(None) };
    tracing::info!(key = %sealer.key_id(), "credentials are kept sealed with this key");
    let book = Arc::new(match node {
        // Every node must hold the same key: each opens what the others sealed.
        Some(node) => CredentialBook::open_cluster(&node.conn, node.leases.clone(), Arc::new(sealer)).await?,
        None => CredentialBook::open(storage, Arc::new(sealer))?,
    });
    let resealed = book.reseal().await?;
    if resealed > 0 {
        tracing::info!(records = resealed, "credentials sealed with a previous key were sealed again with the current one; the previous keys can leave the config");
    }
    let slots = registry.slots();
    for (shop, sc) in &cfg.shops {
        if let Some(slot) = slots.get(&sc.connector) {
            seed_credentials(&book, shop, sc, slot).await?;
        }
    }
    let margin_ms = cfg.credentials.refresh_margin_secs as i64 * 1000;
    for slot in slots.values() {
        slot.use_credentials(book.clone(), margin_ms);
    }
    Ok(Some(book))
}

/// Put a shop's tokens from config into the book, when its connector refreshes them: the
/// first time, and again when ops pasted new ones (the same tokens are never taken twice:
/// a refresh since has spent them). A shop with no token at all is kept with an ended
/// empty one, so its first call has the connector mint one. Whether it did.
pub(crate) async fn seed_credentials(
    book: &berth_core::credentials::CredentialBook,
    shop: &str,
    sc: &berth_types::shop::ShopConfig,
    slot: &berth_core::registry::ConnectorSlot,
) -> Result<bool, berth_core::credentials::CredentialError> {
    use berth_types::credentials::Credentials;
    if !slot.current().auth_support().await.map(|a| a.refreshes).unwrap_or(false) {
        return Ok(false);
    }
    let first = match (sc.value("access_token"), sc.secrets.get("refresh_token")) {
        (Some(access), Some(refresh)) => Credentials {
            access_token: berth_types::Secret::new(access),
            refresh_token: Some(refresh.clone()),
            access_expires_ms: None,
            refresh_expires_ms: None,
            authorization_expires_ms: None,
        },
        // No token at all: the connector mints the first one from the app's own
        // credentials (a client credentials grant) at the shop's first call.
        (None, None) => Credentials { access_expires_ms: Some(0), ..Credentials::lasting(berth_types::Secret::new(String::new())) },
        _ => return Ok(false),
    };
    let taken = book.seed(shop, &first).await?;
    if taken {
        tracing::info!(shop, "the shop's credentials from config are now kept and renewed by berth");
    }
    Ok(taken)
}

/// Onboardings by OAuth under way and the shops they brought, with each connector's
/// `[connectors.NAME.onboarding]` template.
/// In cluster mode both are the cluster's.
async fn open_onboarding(
    cfg: &Config,
    storage: &berth_storage::Store,
    credentials: Option<Arc<berth_core::credentials::CredentialBook>>,
    node: Option<&crate::cluster::Node>,
) -> Result<Arc<berth_core::onboarding::Onboarding>, StartError> {
    use berth_core::onboarding::Onboarding;
    let templates = cfg.connectors.iter().filter_map(|(name, c)| c.onboarding.clone().map(|t| (name.clone(), t))).collect();
    let ob = match node {
        Some(node) => Onboarding::open_cluster(&node.conn, credentials, cfg.server.public_url.clone(), templates).await?,
        None => Onboarding::open(storage, credentials, cfg.server.public_url.clone(), templates)?,
    };
    Ok(Arc::new(ob))
}

fn open_audit(cfg: &Config) -> Result<Arc<berth_core::audit::AuditLog>, StartError> {
    let path = cfg.server.data_dir.join("audit.log");
    let audit = berth_core::audit::AuditLog::open(&path).map_err(|source| StartError::DataDir { path: path.display().to_string(), source })?;
    audit.set_max_unauthenticated_per_minute(cfg.admin.max_unauthenticated_audits_per_minute);
    Ok(Arc::new(audit))
}

/// The API's socket, and its certificate when it speaks HTTPS.
async fn bind(cfg: &Config) -> Result<(tokio::net::TcpListener, SocketAddr, Option<Arc<api::listener::Tls>>), StartError> {
    let tls = match (&cfg.server.tls_cert, &cfg.server.tls_key) {
        (Some(cert), Some(key)) => Some(api::listener::Tls::load(cert, key)?),
        _ => None,
    };
    let bind_error = |source| StartError::Bind { addr: cfg.server.listen, source };
    let listener = tokio::net::TcpListener::bind(cfg.server.listen).await.map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    Ok((listener, addr, tls))
}

/// Every configured shop's workers (pulls, pushes, probes), started, and every shop
/// onboarded by OAuth (one that cannot start is named in the log; the others run).
fn start_shops(
    cfg: &Config,
    durable: &Durable,
    services: &Arc<HostServices>,
    registry: &Arc<berth_core::registry::ConnectorRegistry>,
    health: &Arc<berth_core::health::HealthBook>,
    onboarding: &berth_core::onboarding::Onboarding,
    shutdown: watch::Receiver<bool>,
) -> Result<Arc<ShopSet>, StartError> {
    let shops = Arc::new(ShopSet::new(shop_deps(cfg, durable, services, health), shutdown));
    health.set_holds(Arc::downgrade(&shops) as std::sync::Weak<dyn berth_core::health::HoldSource>);
    let connectors = registry.slots();
    let (all, problems) = onboarding.with_onboarded(&cfg.shops);
    for why in problems {
        tracing::error!("{why}");
    }
    for (shop, sc) in &all {
        let Some(slot) = connectors.get(&sc.connector) else {
            tracing::error!(shop, connector = %sc.connector, "onboarded shop not started: its connector is no longer configured");
            continue;
        };
        match shops.start(shop, sc, slot.clone()) {
            Ok(()) => {}
            Err(e) if cfg.shops.contains_key(shop) => return Err(StartError::Shop(e.to_string())),
            Err(e) => tracing::error!(shop, error = %e, "onboarded shop not started"),
        }
    }
    registry.set_shops(shops.by_connector());
    Ok(shops)
}

/// Cluster mode: every configured shop, and every shop onboarded by OAuth on any node, is
/// the cluster's; this node runs those whose lease it takes (the lease loop starts and
/// stops them) and takes the ERP's calls and webhooks for all. A stock change reaching
/// this node's copy of the ledger wakes the shop's pusher if it runs here.
#[allow(clippy::too_many_arguments)]
async fn start_cluster_shops(
    cfg: &Config,
    durable: &Durable,
    services: &Arc<HostServices>,
    registry: &Arc<berth_core::registry::ConnectorRegistry>,
    health: &Arc<berth_core::health::HealthBook>,
    onboarding: &berth_core::onboarding::Onboarding,
    admin: &Arc<berth_api::auth::AdminAuth>,
    node: &crate::cluster::Node,
    shutdown: watch::Receiver<bool>,
) -> (Arc<ShopSet>, tokio::task::JoinHandle<()>, Arc<crate::reload::ClusterShopSet>) {
    let leases = node.leases.clone();
    let deps = berth_core::shops::ShopDeps { platform_gate: Some(Arc::new(move || leases.fresh())), ..shop_deps(cfg, durable, services, health) };
    // And at the gateway, right before a request leaves (the pusher's own check comes
    // before the connector call, which takes a while).
    let leases = node.leases.clone();
    services.gate_platforms(Arc::new(move || leases.fresh()));
    let set = Arc::new(ShopSet::new(deps, shutdown.clone()));
    health.set_holds(Arc::downgrade(&set) as std::sync::Weak<dyn berth_core::health::HoldSource>);
    let (all, problems) = onboarding.with_onboarded(&cfg.shops);
    for why in problems {
        tracing::error!("{why}");
    }
    let cluster_shops = berth_core::shops::cluster::ClusterShops::new(set.clone(), registry.clone(), all.clone());
    node.shops.send_replace(cluster_shops.names());
    if let Some(stock) = durable.ledger.cluster() {
        let woken = Arc::downgrade(&set);
        stock.on_change(Arc::new(move |shop: &str| {
            if let Some(set) = woken.upgrade() {
                set.wake_pusher(shop);
            }
        }));
    }
    registry.set_shops(set.by_connector());
    let shared = crate::reload::ClusterShopSet::new(cluster_shops.clone(), node, set.clone(), registry.clone(), admin.clone());
    // Each shop's class of the feed before any of its orders is appended here.
    for line in shared.assign_classes(&all).await {
        tracing::warn!("{line}");
    }
    let leases = tokio::spawn(node.leases.clone().run(cluster_shops, shutdown));
    (set, leases, Arc::new(shared))
}

fn shop_deps(cfg: &Config, durable: &Durable, services: &Arc<HostServices>, health: &Arc<berth_core::health::HealthBook>) -> berth_core::shops::ShopDeps {
    berth_core::shops::ShopDeps {
        store: durable.store.clone(),
        inbox: durable.inbox.clone(),
        ledger: durable.ledger.clone(),
        sync: cfg.sync.clone(),
        stock_batch_size: cfg.stock.batch_size,
        error_pause: std::time::Duration::from_secs(cfg.sync.error_pause_secs),
        health: health.clone(),
        budgets: Default::default(),
        services: services.clone(),
        platform_gate: None,
        guards: Arc::new(berth_core::stock::guard::WriteGuards::new(cfg.stock.write_guards.clone())),
    }
}

/// What the API's routes read and change.
struct Routed<'a> {
    durable: &'a Durable,
    services: Arc<HostServices>,
    registry: Arc<berth_core::registry::ConnectorRegistry>,
    shops: Arc<ShopSet>,
    health: Arc<berth_core::health::HealthBook>,
    alerts: Arc<berth_ops::alerts::Alerts>,
    drills: Arc<berth_ops::drills::Drills>,
    reconciler: Arc<berth_core::reconcile::Reconciler>,
    snapshots: Arc<berth_snapshot::Snapshotter>,
    delivery: Option<berth_core::delivery::SharedDeliveryStatus>,
    admin_auth: Arc<berth_api::auth::AdminAuth>,
    audit: Arc<berth_core::audit::AuditLog>,
    metrics: &'a crate::metrics::AllMetrics,
    credentials: Option<Arc<berth_core::credentials::CredentialBook>>,
    onboarding: Arc<berth_core::onboarding::Onboarding>,
    cluster: Option<Arc<berth_cluster::Leases>>,
}

/// The whole API: ERP, status and admin routes behind the one auth gate.
fn router(cfg: &Config, r: Routed<'_>) -> axum::Router {
    let gate = Arc::new(api::gate::Gate { auth: r.admin_auth.clone(), audit: r.audit.clone(), metrics: r.metrics.api.clone() });
    if !r.admin_auth.has_tokens() {
        if cfg.server.listen.ip().is_loopback() {
            tracing::info!(listen = %cfg.server.listen, "no [admin] tokens: the API answers without a token on this loopback address, /v1/admin is off");
        } else {
            tracing::warn!(listen = %cfg.server.listen, "[server] insecure = true: the API answers anyone who reaches this address without a token");
        }
    }
    let admin = api::admin_router(Arc::new(api::admin::AdminState {
        registry: r.registry.clone(),
        services: r.services.clone(),
        auth: r.admin_auth,
        audit: r.audit,
        shops: r.shops.clone(),
        degrade: Arc::new(berth_core::degrade::Degrade {
            health: r.health.clone(),
            stock: r.durable.ledger.clone(),
            inbox: r.durable.inbox.clone(),
            store: r.durable.store.clone(),
        }),
        api_metrics: r.metrics.api.clone(),
        onboarding: r.onboarding,
        drills: r.drills.clone(),
        reconciler: r.reconciler.clone(),
        snapshots: r.snapshots.clone(),
    }));
    let state = Arc::new(ApiState {
        store: r.durable.store.clone(),
        inbox: r.durable.inbox.clone(),
        stock: r.durable.ledger.clone(),
        delivery: r.delivery,
        shops: r.shops,
        registry: r.registry,
        services: r.services,
        health: r.health,
        alerts: r.alerts,
        drills: r.drills,
        listings: r.reconciler.reads().clone(),
        reconciler: r.reconciler,
        snapshots: r.snapshots,
        max_response_bytes: cfg.erp.max_response_bytes as usize,
        metrics: r.metrics.ops.clone(),
        credentials: r.credentials,
        cluster: r.cluster,
    });
    api::router(state, gate, cfg.server.metrics_public).merge(admin)
}

/// Forget old idempotency keys of the order queue: at start, then hourly.
async fn sweep_idempotency_keys(inbox: OrderInbox, ttl: std::time::Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        match inbox.expire_keys(ttl).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "forgot old idempotency keys"),
            Err(e) => tracing::warn!(error = %e, "idempotency key sweep failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            _ = shutdown.changed() => break,
        }
    }
}

impl Running {
    /// Stop workers and the API, then flush storage.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        // Cluster mode: the lease loop stops this node's shops, then releases their
        // leases, so the other nodes take them over at once.
        if let Some(leases) = self.leases {
            let _ = leases.await;
        }
        self.shops.join_all().await;
        for w in self.workers {
            let _ = w.await;
        }
        let _ = self.server.await;
        if let Err(e) = self.storage.barrier().await {
            tracing::error!(error = %e, "final sync failed");
        }
    }
}
