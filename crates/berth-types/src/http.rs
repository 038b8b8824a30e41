//! An outbound HTTP request a connector makes and what came of it, as the host's
//! gateway sees it (mirrors the `http` interface of the `berth:connector` world).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Shorter than the host's own timeout, if the connector wants it.
    pub timeout_ms: Option<u32>,
}

/// What a request is expected to cost of one of the platform's quotas (a bucket of
/// points the platform reports, such as a GraphQL API's query cost).
#[derive(Clone, Debug, PartialEq)]
pub struct Cost {
    /// The quota's name, as the connector reports it.
    pub quota: String,
    pub points: f64,
}

/// What the platform said about one of its quotas, read from an answer by the connector.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaReport {
    pub name: String,
    /// Points available now, after the answered request.
    pub available: f64,
    pub maximum: f64,
    pub restore_per_second: f64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a request got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Refused by policy (host not granted, private address, port, scheme).
    #[error("denied: {0}")]
    Denied(String),
    #[error("timed out")]
    Timeout,
    #[error("connection: {0}")]
    Connection(String),
    /// The answer was longer than this many bytes.
    #[error("answer larger than {0} bytes")]
    TooLarge(u64),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The host's rate limiter held the request back; the quota needs this many ms.
    #[error("held back by the rate limiter for {0} ms")]
    Throttled(u64),
}
