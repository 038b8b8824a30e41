//! What a connector's imports reach outside the sandbox, as the runtime asks for it:
//! outbound HTTP through the gateway and the platform's rate limits, the shop's stored
//! state, quota holds and retry policies. The runtime defines this trait and calls
//! through it; the capabilities implement it (`capabilities::services::HostServices`).
//! The runtime never sees how a request is admitted, limited or routed, nor where state
//! is kept.

use super::state::CallContext;
use berth_types::connector::RateLimit;
use berth_types::http::{Cost, HttpError, QuotaReport, Request, Response};
use berth_types::retry::{Job, RetryPolicy};
use berth_types::shop::ShopConfig;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A future an import returns.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What became of a request beyond its answer, for the call's outcome.
#[derive(Clone, Debug, Default)]
pub struct SendNotes {
    /// The host's rate limiter held the request back: the quota needs this long.
    pub held_back: Option<Duration>,
    /// The connector's own platform answered it.
    pub platform_answered: bool,
    /// The newest request of this call that took points of a quota: the quota's name
    /// and the request's number there (a report read from its answer is ordered by it).
    pub points_sent: Option<(String, u64)>,
}

/// Why a state write was refused.
#[derive(Debug, thiserror::Error)]
pub enum KvRefusal {
    /// The shop's state is as large as the quota allows (`limit` names the bound).
    #[error("{0}")]
    Quota(String),
    /// Written too much this minute.
    #[error("{0}")]
    Rate(String),
    #[error("{0}")]
    Failed(String),
}

impl KvRefusal {
    /// The `limit` label a refusal counts under, if a bound refused it.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            KvRefusal::Quota(_) => Some("kv_quota"),
            KvRefusal::Rate(_) => Some("kv_rate"),
            KvRefusal::Failed(_) => None,
        }
    }
}

pub trait HostImports: Send + Sync + 'static {
    /// A loading version's manifest declares `hosts` for `platform`: calls to them count
    /// against that platform whoever makes them. Refused when another platform has them.
    fn claim_hosts(&self, platform: &str, hosts: &[String]) -> Result<(), String>;

    /// A loading version of `connector` declares what one quota of `platform` may take
    /// (the manifest's `default-rate-limit`, checked): the host's bucket may follow it.
    fn declare_rate(&self, platform: &str, connector: &str, rate: RateLimit);

    /// Whether a drill makes `shop`'s connector calls trap now (checked before each call).
    fn injected_trap(&self, _shop: &str) -> bool {
        false
    }

    /// Send a connector's request, within the call's allowlist and its platform's limits;
    /// with a `cost`, once the shop's quota of that name has the points.
    fn send<'a>(&'a self, call: &'a CallContext, req: Request, cost: Option<Cost>, notes: &'a mut SendNotes) -> Pending<'a, Result<Response, HttpError>>;

    /// The connector read what its platform says of one of the calling shop's quotas:
    /// the host's bucket follows it. Refused, with why, when the report is not sane.
    /// `sent`: the number of this call's newest request that took points of the quota
    /// (see `SendNotes::points_sent`), when it names the reported quota.
    fn report_quota(&self, call: &CallContext, report: QuotaReport, sent: Option<u64>) -> Result<(), String>;

    /// The calling shop's state (keys are the connector's, per shop).
    fn kv_get(&self, call: &CallContext, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn kv_set(&self, call: &CallContext, key: &str, value: &[u8]) -> Result<(), KvRefusal>;
    fn kv_delete(&self, call: &CallContext, key: &str) -> Result<(), String>;
    fn kv_list(&self, call: &CallContext, prefix: &str) -> Result<Vec<String>, String>;

    /// The connector said its platform throttled `shop` and asked for `wait`: hold the
    /// quota `shop` shares (within the platform's bounds). Returns the hold.
    fn hold_quota(&self, platform: &str, shop: &str, cfg: &ShopConfig, wait: Duration, connector: &str, reason: String) -> Duration;

    /// The longest hold the platform allows.
    fn max_hold(&self, platform: &str) -> Duration;

    /// Resolves when an operator releases a quota hold.
    fn quota_released(&self) -> Pending<'_, ()>;

    /// The retry policy in force now for `platform`'s `job`.
    fn retry_policy(&self, platform: &str, job: Job) -> RetryPolicy;
}
