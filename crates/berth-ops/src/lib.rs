//! berth-ops: what ops watch berth with.
//!
//! Owns the Prometheus families of the whole service ([`metrics`]: queues, health, alert
//! counts, rendered with every other crate's families), the alert rules and their
//! notifiers ([`alerts`]) and the watchdog that ends a stalled process ([`watchdog`]).
//!
//! It reads core's state snapshots (levels, health, registry slots) and hears core's
//! [`berth_core::events`]; it never changes core's state, and knows nothing of HTTP
//! routes or the config file.

pub mod alerts;
pub mod metrics;
pub mod watchdog;
