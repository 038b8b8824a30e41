//! A shop's platform credentials as they live and expire: an access token, the refresh
//! token that renews it (many platforms hand out a new one on each refresh and let the
//! old one die), and when each — and the merchant's authorization itself — ends.

use crate::Secret;

/// A shop's credentials, as a connector's refresh or code exchange returns them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub access_token: Secret,
    /// `None` where the platform has no refresh grant (the access token is renewed by
    /// authorizing again, or not at all).
    pub refresh_token: Option<Secret>,
    /// When the access token stops working, ms since the epoch; `None`: it does not expire.
    pub access_expires_ms: Option<i64>,
    /// When the refresh token stops working; `None`: unknown or never.
    pub refresh_expires_ms: Option<i64>,
    /// When the merchant's authorization of the app ends (Shopee: at most 365 days after
    /// it was given); `None`: unknown or never.
    pub authorization_expires_ms: Option<i64>,
}

impl Credentials {
    /// Credentials that never expire (a static key from config).
    pub fn lasting(access_token: Secret) -> Credentials {
        Credentials { access_token, refresh_token: None, access_expires_ms: None, refresh_expires_ms: None, authorization_expires_ms: None }
    }

    /// Whether the access token ends within `margin_ms` of `now_ms` (or has ended).
    pub fn access_ends_within(&self, now_ms: i64, margin_ms: i64) -> bool {
        self.access_expires_ms.is_some_and(|t| t - now_ms <= margin_ms)
    }
}

/// What a code exchange gives a shop onboarded by OAuth: its first credentials and the
/// shop settings the platform named (Shopee: `shop_id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorized {
    pub credentials: Credentials,
    pub settings: Vec<(String, String)>,
}

/// Why a refresh (or a code exchange) gave no new credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// The authorization is gone (revoked, expired, the refresh token spent or refused):
    /// only the merchant authorizing the app again brings the shop back.
    #[error("the authorization is gone: {0}")]
    Revoked(String),
    /// It may work later (the platform is down, throttled, answered garbage).
    #[error("refresh failed: {0}")]
    Transient(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_margin_and_no_expiry() {
        let mut c = Credentials::lasting(Secret::new("t"));
        assert!(!c.access_ends_within(1_000, 10_000), "a lasting token never ends");
        c.access_expires_ms = Some(20_000);
        assert!(!c.access_ends_within(1_000, 10_000));
        assert!(c.access_ends_within(10_000, 10_000));
        assert!(c.access_ends_within(30_000, 0), "already ended");
        assert_eq!(format!("{c:?}").matches("<secret>").count(), 1, "the token never prints: {c:?}");
    }
}
