//! What the host gives a connector, one module per WIT import.

pub mod config;
pub mod http;
pub mod kv;
pub mod metrics;
pub mod ratelimit;
pub mod retry;
pub mod services;
pub mod standby;
pub mod windows;
