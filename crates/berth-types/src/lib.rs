//! berth-types: the words every other berth crate speaks.
//!
//! Owns: the order model and what a connector is asked and answers ([`connector`]: orders
//! with an [`connector::OrderStatus`] enum, pages, stock updates, webhook requests, the
//! manifest, [`connector::ConnectorError`]), how a failure is classed and retried
//! ([`retry`]: `ErrorKind`, `RetryPolicy`, backoff), shops and their tiers ([`shop`]),
//! API roles ([`access`]), config secrets that never print ([`secret`]), the clock
//! ([`clock`]), outbound requests and answers ([`http`]) and the one HMAC/digest helper
//! ([`digest`]).
//!
//! Must not know: wasmtime or WIT bindings (berth-runtime converts WIT values to these
//! types and back, there and nowhere else), storage, an HTTP client, tokio, or any other berth crate.
//! Dependencies: serde, thiserror, rand (jitter), hmac/sha2/md-5 (digests).

pub mod access;
pub mod backoff;
pub mod clock;
pub mod connector;
pub mod credentials;
pub mod digest;
pub mod http;
pub mod retry;
pub mod secret;
pub mod shop;

pub use secret::Secret;
