//! berth-cluster: several berth nodes sharing the shops, on NATS JetStream.
//!
//! Cluster mode runs on an existing distributed engine rather than a consensus of our
//! own: JetStream streams and KV buckets replicated with Raft. This crate owns the
//! connection and what berth requires of the cluster ([`connect`]: credentials, TLS,
//! replicas, `sync_interval: always` checked on every server), which node runs which
//! shop ([`lease`]: heartbeats, [`rendezvous`] assignment, per-shop leases taken by
//! compare-and-set), writes only a shop's lease holder can make ([`fenced`]), and the
//! order feed with the ERP's lease/ack queue over it ([`feed`]), the connector
//! registry every node watches ([`registry`]), and copies of records any node reads and
//! changes by compare-and-set ([`mirror`]: the stock ledger's SKUs, shop health, firing
//! alerts), and append-only records from every node ([`journal`]: the audit log, alert
//! notifications).
//!
//! Must not know: connectors, wasmtime, the HTTP API or the embedded store; the host
//! gives it the shop list and the workers to start and stop ([`lease::ShopWorkers`]).

pub mod classes;
pub mod config;
pub mod connect;
pub mod error;
pub mod feed;
pub mod fenced;
pub mod journal;
pub mod lease;
pub mod mirror;
pub mod queues;
pub mod registry;
pub mod rendezvous;
mod run;
mod visibility;

/// The NATS client berth-cluster is built on (tests and tools read the streams with it).
pub use async_nats;
pub use config::{ClusterConfig, Durability};
pub use connect::{connect, Connection};
pub use error::ClusterError;
pub use lease::{Fence, FenceSource, Leases, ShopWorkers};
