//! What the host gives a connector, one module per WIT import.

pub mod config;
pub mod crypto;
pub mod http;
pub mod kv;
pub mod metrics;
pub mod ratelimit;
pub mod standby;
pub mod windows;
