//! What a connector call that did not give what was asked means to the worker that made
//! it — decided here once for sync, the stock pusher and webhook ingest. The kinds come
//! from `berth_types::retry::ErrorKind::of` (the connector's error) and
//! `berth_runtime::CallError::kind` (a call that did not return); whether a kind is tried
//! again is the platform's `RetryPolicy`'s to say (`decide`, `retries`, `gave_up`).

use berth_runtime::CallError;
use berth_types::connector::ConnectorError;
use berth_types::retry::ErrorKind;
use std::time::Duration;

/// A connector call's failure, as a worker acts on it.
#[derive(Debug)]
pub enum Failure {
    /// berth's own limiter held the call (a held quota, a full bucket): wait this long;
    /// no attempt is spent and no hold is added, since the platform said nothing.
    HeldBack(Duration),
    /// The connector is isolated by its circuit breaker: wait for its trial; not this
    /// shop's failure, no attempt spent.
    Isolated { wait: Duration, why: String },
    /// The platform throttled: the runtime already held the quota (bounded by the
    /// platform's max hold); park this long without spending an attempt.
    Throttled(Duration),
    /// A failure the retry policy judges.
    Failed { kind: ErrorKind, why: String },
}

/// The shortest wait a throttle or a held-back call parks for (a zero would spin).
const MIN_WAIT: Duration = Duration::from_millis(50);

impl Failure {
    /// A call that did not return an answer.
    pub fn of_call(call: &CallError) -> Failure {
        if let Some(wait) = call.held_back_for() {
            return Failure::HeldBack(wait.max(MIN_WAIT));
        }
        if let Some(wait) = call.isolated_for() {
            return Failure::Isolated { wait, why: call.to_string() };
        }
        Failure::Failed { kind: call.kind(), why: call.to_string() }
    }

    /// The connector's own error.
    pub fn of_connector(e: ConnectorError) -> Failure {
        match ErrorKind::of(&e) {
            None => match e {
                ConnectorError::RateLimited(ms) => Failure::Throttled(Duration::from_millis(ms).max(MIN_WAIT)),
                other => unreachable!("ErrorKind::of classes every error but a throttle: {other:?}"),
            },
            Some(kind) => {
                let why = match e {
                    ConnectorError::Auth(w) | ConnectorError::Transient(w) | ConnectorError::Permanent(w) | ConnectorError::InvalidInput(w) => w,
                    ConnectorError::RateLimited(_) => unreachable!("a throttle has no kind"),
                };
                Failure::Failed { kind, why }
            }
        }
    }

    /// A connector call's whole answer: what it returned, or its failure.
    pub fn check<T>(answer: Result<Result<T, ConnectorError>, CallError>) -> Result<T, Failure> {
        match answer {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Failure::of_connector(e)),
            Err(call) => Err(Failure::of_call(&call)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_connector_error_has_one_meaning() {
        let failed = |e| match Failure::of_connector(e) {
            Failure::Failed { kind, why } => (kind, why),
            other => panic!("{other:?}"),
        };
        assert_eq!(failed(ConnectorError::Transient("502".into())), (ErrorKind::Transient, "502".into()));
        assert_eq!(failed(ConnectorError::Permanent("gone".into())), (ErrorKind::Permanent, "gone".into()));
        assert_eq!(failed(ConnectorError::InvalidInput("cursor".into())), (ErrorKind::InvalidInput, "cursor".into()));
        assert_eq!(failed(ConnectorError::Auth("expired".into())), (ErrorKind::Auth, "expired".into()));
        assert!(matches!(Failure::of_connector(ConnectorError::RateLimited(2000)), Failure::Throttled(d) if d == Duration::from_secs(2)));
        assert!(matches!(Failure::of_connector(ConnectorError::RateLimited(0)), Failure::Throttled(d) if d == MIN_WAIT), "never a zero wait");
        let held = Failure::of_call(&CallError::HeldBack { call: "push-inventory", wait: Duration::ZERO });
        assert!(matches!(held, Failure::HeldBack(d) if d == MIN_WAIT), "{held:?}");
        let isolated = Failure::of_call(&CallError::Isolated { call: "pull-orders", retry_in: Duration::from_secs(3), reason: "traps".into() });
        assert!(matches!(isolated, Failure::Isolated { wait, .. } if wait == Duration::from_secs(3)), "{isolated:?}");
        let ok: Result<u8, Failure> = Failure::check(Ok(Ok(7)));
        assert_eq!(ok.unwrap(), 7);
    }
}
