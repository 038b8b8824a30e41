//! berth: the service that runs e-commerce connectors compiled to WebAssembly
//! components — the binary's own part.
//!
//! Owns `berth.toml` ([`config`], composed of the sections the crates below define),
//! reloading it ([`reload`]), wiring storage, connectors, core, ops and the API into one
//! running service ([`service`]) — in cluster mode on a NATS cluster ([`cluster`]) —, the registry of every metric family ([`metrics`]) and
//! the CLI's admin client ([`admin_client`]). Nothing below depends on it.

pub mod admin_client;
pub mod cluster;
pub mod config;
pub mod metrics;
pub mod reload;
pub mod service;
