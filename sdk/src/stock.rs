//! Building `push-inventory` answers.
//!
//! A connector pushes SKUs one call at a time on most platforms. A failure that is
//! about one SKU (unknown SKU, a value the platform refuses) becomes a rejected result
//! and the batch goes on; a failure about the platform or the shop (throttled, auth,
//! 5xx) stops the batch. [`stop_batch`] then returns what was already done, so the host
//! records those and retries only the rest; with nothing done it returns the error
//! itself, so `rate-limited` still parks the shop for the time the platform asked.

use crate::{ConnectorError, UpdateResult};

pub fn accepted(sku: &str) -> UpdateResult {
    UpdateResult { sku: sku.to_string(), accepted: true, message: None }
}

pub fn rejected(sku: &str, why: impl Into<String>) -> UpdateResult {
    UpdateResult { sku: sku.to_string(), accepted: false, message: Some(why.into()) }
}

/// A rejected result carrying a per-SKU error's text.
pub fn rejected_by(sku: &str, e: ConnectorError) -> UpdateResult {
    let why = match e {
        ConnectorError::Permanent(m) | ConnectorError::InvalidInput(m) | ConnectorError::Auth(m) | ConnectorError::Transient(m) => m,
        ConnectorError::RateLimited(ms) => format!("throttled for {ms} ms"),
    };
    rejected(sku, why)
}

/// Whether an error concerns only the SKU being pushed, so the batch can go on.
pub fn is_per_sku(e: &ConnectorError) -> bool {
    matches!(e, ConnectorError::Permanent(_) | ConnectorError::InvalidInput(_))
}

/// End a batch at a platform-level error: the results so far, or the error when none.
pub fn stop_batch(done: Vec<UpdateResult>, err: ConnectorError) -> Result<Vec<UpdateResult>, ConnectorError> {
    if done.is_empty() {
        Err(err)
    } else {
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_stops_with_what_was_done() {
        let err = || ConnectorError::RateLimited(1000);
        assert!(matches!(stop_batch(Vec::new(), err()), Err(ConnectorError::RateLimited(1000))));
        let done = stop_batch(vec![accepted("A"), rejected("B", "unknown")], err()).unwrap();
        assert_eq!(done.len(), 2);
        assert!(done[0].accepted && !done[1].accepted);
        assert!(is_per_sku(&ConnectorError::Permanent("x".into())));
        assert!(!is_per_sku(&ConnectorError::Transient("x".into())));
    }
}
