//! berth-core: what berth does with orders and stock, between the connectors and the ERP.
//!
//! Owns the connector registry ([`registry`]: deploy, activate, canary, shadow), the
//! running shops ([`shops`]) with their order sync ([`sync`]), webhook intake
//! ([`ingest`]), the order store and the ERP's feed and queue ([`store`], [`inbox`],
//! [`queue`], [`delivery`]), the stock ledger and pusher ([`stock`]), each shop's health
//! ([`health`]), working a degraded shop by hand ([`degrade`]), the shops' platform
//! credentials and their refresh ([`credentials`]), shops onboarded by OAuth
//! ([`onboarding`]) and the audit log ([`audit`]). It tells the rest of berth what happens through [`events`] and lets it
//! read state snapshots (levels, health, registry slots).
//!
//! It must not know metrics, alerts, HTTP routing or the config file: ops
//! (`berth-ops`) hear its events and read its snapshots, the API (`berth-api`) calls
//! its methods, and the binary hands it its config sections. It reaches connectors only
//! through `berth-runtime`, and the outside world only through `berth-capabilities`.

pub mod audit;
pub mod credentials;
pub mod degrade;
pub mod delivery;
pub mod events;
pub mod failure;
pub mod health;
pub mod inbox;
pub mod ingest;
pub mod levels;
pub mod listings;
pub mod onboarding;
pub mod order_budget;
pub mod queue;
pub mod reconcile;
pub mod registry;
pub mod schedule;
pub mod shops;
pub mod stock;
pub mod store;
pub mod sync;
pub mod tape;
pub mod worker;
