//! The exports new in berth:connector 0.3.0: how a connector's platform authorizes shops,
//! refreshing a shop's credentials, and OAuth onboarding (the consent page, the code
//! exchange). A component built for an older world has none of them: it answers
//! [`AuthSupport::NONE`] and its calls fail with [`CallError::NotExported`].
//!
//! The credentials cross the sandbox here, and only here, as `berth_types::credentials`.

use super::bindings::v0_3::berth::connector::types as wit;
use super::bindings::v0_3::Connector as V0_3;
use super::{call_error_outcome, CallError, HostState, LoadedConnector, Running};
use berth_types::connector::ConnectorError;
use berth_types::credentials::{Authorized, Credentials, RefreshError};
use berth_types::shop::ShopConfig;
use berth_types::Secret;
use std::sync::Arc;

/// What a connector's platform needs from the host to keep a shop authorized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuthSupport {
    /// It renews access tokens (`refresh-credentials`).
    pub refreshes: bool,
    /// It onboards shops by OAuth (`consent-url`, `exchange-code`).
    pub oauth: bool,
}

impl AuthSupport {
    /// Static credentials only: what every connector built before 0.3.0 has.
    pub const NONE: AuthSupport = AuthSupport { refreshes: false, oauth: false };
}

/// The longest token or URL the host takes from a connector (bytes).
const MAX_TOKEN_BYTES: usize = 8 * 1024;

fn to_wit(c: &Credentials) -> wit::Credentials {
    wit::Credentials {
        access_token: c.access_token.expose().to_string(),
        refresh_token: c.refresh_token.as_ref().map(|t| t.expose().to_string()),
        access_expires_ms: c.access_expires_ms,
        refresh_expires_ms: c.refresh_expires_ms,
        authorization_expires_ms: c.authorization_expires_ms,
    }
}

/// The connector's credentials, checked: tokens present and bounded.
fn from_wit(call: &'static str, c: wit::Credentials) -> Result<Credentials, CallError> {
    let bad = |why: &str| CallError::BadOutput { call, why: why.to_string() };
    if c.access_token.is_empty() {
        return Err(bad("the credentials have an empty access token"));
    }
    if c.access_token.len() > MAX_TOKEN_BYTES || c.refresh_token.as_ref().is_some_and(|t| t.len() > MAX_TOKEN_BYTES) {
        return Err(bad("a token is longer than 8 KiB"));
    }
    Ok(Credentials {
        access_token: Secret::new(c.access_token),
        refresh_token: c.refresh_token.filter(|t| !t.is_empty()).map(Secret::new),
        access_expires_ms: c.access_expires_ms,
        refresh_expires_ms: c.refresh_expires_ms,
        authorization_expires_ms: c.authorization_expires_ms,
    })
}

/// The most settings an exchange may name, and their longest key and value (bytes).
const MAX_SETTINGS: usize = 32;
const MAX_SETTING_KEY: usize = 64;
const MAX_SETTING_VALUE: usize = 1024;

/// Settings a code exchange named, checked: few, short, keys of letters, digits and `_`.
fn checked_settings(call: &'static str, settings: Vec<(String, String)>) -> Result<Vec<(String, String)>, CallError> {
    let bad = |why: String| CallError::BadOutput { call, why };
    if settings.len() > MAX_SETTINGS {
        return Err(bad(format!("{} settings, at most {MAX_SETTINGS}", settings.len())));
    }
    for (k, v) in &settings {
        if k.is_empty() || k.len() > MAX_SETTING_KEY || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(bad(format!("setting key {:?} is not 1-{MAX_SETTING_KEY} letters, digits or _", super::state::bounded(k, 80))));
        }
        if v.len() > MAX_SETTING_VALUE {
            return Err(bad(format!("setting `{k}` is longer than {MAX_SETTING_VALUE} bytes")));
        }
    }
    Ok(settings)
}

fn refresh_error(e: wit::RefreshError) -> RefreshError {
    match e {
        wit::RefreshError::Revoked(why) => RefreshError::Revoked(super::state::bounded(&why, 512).to_string()),
        wit::RefreshError::Transient(why) => RefreshError::Transient(super::state::bounded(&why, 512).to_string()),
    }
}

fn refresh_answer(call: &'static str, r: Result<wit::Credentials, wit::RefreshError>) -> Result<Result<Credentials, RefreshError>, CallError> {
    Ok(match r {
        Ok(c) => Ok(from_wit(call, c)?),
        Err(e) => Err(refresh_error(e)),
    })
}

super::compat::connector_error_fn!(wit::ConnectorError);

impl LoadedConnector {
    /// Whether this version exports the credential and OAuth calls (0.3.0 or later).
    pub fn has_credential_calls(&self) -> bool {
        self.pre_v0_3.is_some()
    }

    /// How the connector's platform authorizes shops.
    pub async fn auth_support(&self) -> Result<AuthSupport, CallError> {
        if self.pre_v0_3.is_none() {
            return Ok(AuthSupport::NONE);
        }
        let started = std::time::Instant::now();
        let (mut store, inst) = self.start_v0_3("authorization", None, started).await?;
        let r = self.finish("authorization", inst.call_authorization(&mut store)).await;
        self.end_v0_3("authorization", started, &store, r.as_ref().err());
        r.map(|a| AuthSupport { refreshes: a.refreshes, oauth: a.oauth })
    }

    /// Renew `shop`'s credentials from `current`. The caller keeps to one refresh per
    /// shop at a time and stores the answer before using it.
    pub async fn refresh_credentials(&self, shop: &str, cfg: Arc<ShopConfig>, current: &Credentials) -> Result<Result<Credentials, RefreshError>, CallError> {
        const CALL: &str = "refresh-credentials";
        let started = std::time::Instant::now();
        let (mut store, inst) = self.start_v0_3(CALL, Some((shop.to_string(), cfg)), started).await?;
        let r = self.finish(CALL, inst.call_refresh_credentials(&mut store, shop, &to_wit(current))).await.and_then(|r| refresh_answer(CALL, r));
        self.end_v0_3(CALL, started, &store, r.as_ref().err());
        r
    }

    /// The consent page to send a merchant to, to authorize the app for `shop`.
    pub async fn consent_url(&self, shop: &str, cfg: Arc<ShopConfig>, state: &str, redirect_uri: &str) -> Result<Result<String, ConnectorError>, CallError> {
        const CALL: &str = "consent-url";
        let started = std::time::Instant::now();
        let (mut store, inst) = self.start_v0_3(CALL, Some((shop.to_string(), cfg)), started).await?;
        let r = self.finish(CALL, inst.call_consent_url(&mut store, shop, state, redirect_uri)).await.and_then(|r| match r {
            Ok(url) if url.len() > MAX_TOKEN_BYTES || !(url.starts_with("https://") || url.starts_with("http://")) => {
                Err(CallError::BadOutput { call: CALL, why: "the consent URL is not an http(s) URL of at most 8 KiB".into() })
            }
            Ok(url) => Ok(Ok(url)),
            Err(e) => Ok(Err(connector_error(e))),
        });
        self.end_v0_3(CALL, started, &store, r.as_ref().err());
        r
    }

    /// Exchange what a consent page sent back for `shop` (the callback's query
    /// parameters but `state`) for its first credentials and the settings the platform
    /// named.
    pub async fn exchange_code(&self, shop: &str, cfg: Arc<ShopConfig>, callback: &[(String, String)], redirect_uri: &str) -> Result<Result<Authorized, RefreshError>, CallError> {
        const CALL: &str = "exchange-code";
        let started = std::time::Instant::now();
        let (mut store, inst) = self.start_v0_3(CALL, Some((shop.to_string(), cfg)), started).await?;
        let r = self.finish(CALL, inst.call_exchange_code(&mut store, shop, callback, redirect_uri)).await.and_then(|r| match r {
            Ok(a) => Ok(Ok(Authorized { credentials: from_wit(CALL, a.credentials)?, settings: checked_settings(CALL, a.settings)? })),
            Err(e) => Ok(Err(refresh_error(e))),
        });
        self.end_v0_3(CALL, started, &store, r.as_ref().err());
        r
    }

    /// A 0.3.0 instance for `call`, once the breaker, a turn and a pool slot allow it.
    async fn start_v0_3(&self, call: &'static str, shop: Option<(String, Arc<ShopConfig>)>, started: std::time::Instant) -> Result<(Running, V0_3), CallError> {
        let not_exported = || CallError::NotExported { call, wit_version: self.wit_version.clone().unwrap_or_else(|| "none".into()), since: "0.3.0" };
        let pre = self.pre_v0_3.as_ref().ok_or_else(not_exported)?;
        let fail = |e: CallError| {
            self.observe(call, call_error_outcome(&e), started, None);
            e
        };
        let mut running = self.store_for(call, shop).await.map_err(fail)?;
        let inst = pre.instantiate_async(&mut running).await.map_err(|e| fail(CallError::Instantiate(format!("{e}"))))?;
        Ok((running, inst))
    }

    fn end_v0_3(&self, call: &'static str, started: std::time::Instant, store: &wasmtime::Store<HostState>, error: Option<&CallError>) {
        let outcome = error.map_or("ok", call_error_outcome);
        self.observe(call, outcome, started, Some(self.usage(store)));
    }
}
