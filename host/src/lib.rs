//! berth-host: the service that runs e-commerce connectors compiled to WebAssembly
//! components.
//!
//! An ERP talks to berth over HTTP ([`api`]); berth talks to marketplaces through
//! connectors ([`runtime`]) that get only what the host gives them ([`capabilities`]):
//! checked outbound HTTP, scoped key-value state, their shop's config, logging, metrics
//! and signing primitives. [`sync`] pulls orders per shop on an interval into the
//! durable [`store`]; [`stock`] pushes the ERP's quantities out, newest first; [`config`] is `berth.toml`; [`service`] wires it all together.

pub mod admin_client;
pub mod alerts;
pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod degrade;
pub mod delivery;
pub mod health;
pub mod inbox;
pub mod ingest;
pub mod levels;
pub mod metrics;
pub mod order_budget;
pub mod queue;
pub mod registry;
pub mod reload;
pub mod service;
pub mod shops;
pub mod stock;
pub mod store;
pub mod sync;
pub mod watchdog;
