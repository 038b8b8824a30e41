//! berth-ops: what ops watch berth with.
//!
//! Owns the Prometheus families of the whole service ([`metrics`]: queues, health, alert
//! counts, rendered with every other crate's families), the alert rules and their
//! notifiers ([`alerts`]), fault drills and their records ([`drills`]) and the watchdog
//! that ends a stalled process ([`watchdog`]).
//!
//! It reads core's state snapshots (levels, health, registry slots) and hears core's
//! [`berth_core::events`]; it never changes core's state (a drill injects its faults
//! through the capabilities, as a failing platform would), and knows nothing of HTTP
//! routes or the config file.

pub mod alerts;
pub mod drills;
pub mod metrics;
pub mod watchdog;
