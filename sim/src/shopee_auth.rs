//! Shopee's token lifecycle, when `[shopee.tokens]` is set: an access token lives
//! `access_secs` (Shopee: 4 h), a refresh token `refresh_secs` (30 days), and each refresh
//! (`POST /api/v2/auth/access_token/get`, body `refresh_token`, `partner_id`, `shop_id`,
//! signed as a public call: partner_id + api_path + timestamp) answers a new access token
//! *and a new refresh token*; the old refresh token is spent at once. A call with an
//! access token past its expiry is answered `invalid_acceess_token` (Shopee's own
//! spelling, which clients match on); a token the shop never had, `error_auth`. A shop's
//! authorization can be revoked (`/_sim/shopee/{shop_id}/revoke`): then neither its
//! tokens nor its refresh token work. Without `[shopee.tokens]` the configured access
//! token never expires, as before.
//!
//! A shop's first refresh token is `refresh-{shop_id}-0`; the tokens a refresh hands out
//! are `access-{shop_id}-{n}` and `refresh-{shop_id}-{n}`.
//!
//! Uncertain (docs not at hand): the exact error code and message for a spent or unknown
//! refresh token; `error_auth` "Invalid refresh_token." is used.

use crate::shopee::{hmac_hex, Refusal};
use crate::{now_ms, Platform, SimState};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Token lifetimes; see the module doc.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShopeeTokens {
    pub access_secs: u64,
    pub refresh_secs: u64,
    /// Hold each refresh's answer this long after the refresh took effect (the old
    /// refresh token is already spent): a client killed meanwhile loses the answer.
    #[serde(default)]
    pub answer_delay_ms: u64,
}

/// One shop's tokens as the platform keeps them.
#[derive(Clone, Debug, Serialize)]
pub struct ShopTokens {
    pub access: String,
    pub access_expires_ms: i64,
    pub refresh: String,
    pub refresh_expires_ms: i64,
    /// Access tokens handed out before the current one (each valid until its expiry).
    #[serde(skip)]
    older_access: Vec<(String, i64)>,
    /// Refresh tokens spent by a refresh.
    #[serde(skip)]
    spent_refresh: Vec<String>,
    pub refreshes: u64,
    pub revoked: bool,
}

impl ShopTokens {
    pub(crate) fn first(access: &str, shop_id: u64, t: &ShopeeTokens, now_ms: i64) -> ShopTokens {
        ShopTokens {
            access: access.to_string(),
            access_expires_ms: now_ms + t.access_secs as i64 * 1000,
            refresh: format!("refresh-{shop_id}-0"),
            refresh_expires_ms: now_ms + t.refresh_secs as i64 * 1000,
            older_access: Vec::new(),
            spent_refresh: Vec::new(),
            refreshes: 0,
            revoked: false,
        }
    }
}

/// Check a Shop API call's access token. `Ok` when it may go on.
pub(crate) fn check_access(state: &SimState, shop_id: u64, configured: &str, token: &str) -> Result<(), Refusal> {
    let invalid = || Refusal(StatusCode::FORBIDDEN, "error_auth", "Invalid access_token.".into());
    let mut tokens = state.shopee_tokens();
    let Some(t) = tokens.get_mut(&shop_id) else {
        // No lifecycle: the configured token, forever.
        return if token == configured { Ok(()) } else { Err(invalid()) };
    };
    let now = now_ms();
    let expiry = if t.access == token { Some(t.access_expires_ms) } else { t.older_access.iter().find(|(a, _)| a == token).map(|(_, e)| *e) };
    match expiry {
        None => Err(invalid()),
        Some(_) if t.revoked => Err(Refusal(StatusCode::FORBIDDEN, "invalid_acceess_token", "Invalid access_token.".into())),
        Some(e) if e <= now => {
            drop(tokens);
            state.count(Platform::Shopee, |s| s.expired_token_calls += 1);
            Err(Refusal(StatusCode::FORBIDDEN, "invalid_acceess_token", "Invalid access_token.".into()))
        }
        Some(_) => Ok(()),
    }
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
    partner_id: u64,
    shop_id: u64,
}

/// `POST /shopee/api/v2/auth/access_token/get`.
pub(crate) fn refresh(state: &SimState, q: &std::collections::HashMap<String, String>, body: &[u8]) -> Result<Value, Refusal> {
    let cfg = state.config();
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let param = |m: &str| Refusal(StatusCode::BAD_REQUEST, "error_param", m.to_string());
    let partner_id: u64 = get("partner_id").parse().map_err(|_| param("partner_id is required"))?;
    let Some(partner) = cfg.shopee.partners.iter().find(|p| p.partner_id == partner_id) else {
        return Err(Refusal(StatusCode::FORBIDDEN, "error_partner_id", "No partner_id or partner_id is invalid.".into()));
    };
    let timestamp: i64 = get("timestamp").parse().map_err(|_| param("timestamp must be Unix seconds"))?;
    let path = "/api/v2/auth/access_token/get";
    if hmac_hex(&partner.partner_key, &format!("{partner_id}{path}{timestamp}")) != get("sign") {
        return Err(Refusal(StatusCode::FORBIDDEN, "error_sign", "Wrong sign.".into()));
    }
    if (crate::now_s() - timestamp).abs() > crate::shopee::TIMESTAMP_VALID_S {
        return Err(Refusal(StatusCode::FORBIDDEN, "error_timestamp", "Your timestamp has expired.".into()));
    }
    let body: RefreshBody = serde_json::from_slice(body).map_err(|e| param(&format!("body: {e}")))?;
    if body.partner_id != partner_id {
        return Err(param("partner_id in the body differs from the query"));
    }
    let Some(life) = cfg.shopee.tokens.clone() else {
        return Err(param("this simulator does not expire Shopee tokens ([shopee.tokens] is not set)"));
    };
    let mut tokens = state.shopee_tokens();
    let Some(t) = tokens.get_mut(&body.shop_id) else {
        return Err(Refusal(StatusCode::FORBIDDEN, "error_shop_id", "Invalid shop_id.".into()));
    };
    let now = now_ms();
    if t.revoked || t.refresh != body.refresh_token || t.refresh_expires_ms <= now {
        let spent = t.spent_refresh.contains(&body.refresh_token);
        drop(tokens);
        if spent {
            state.count(Platform::Shopee, |s| s.spent_refresh_tokens += 1);
        }
        return Err(Refusal(StatusCode::FORBIDDEN, "error_auth", "Invalid refresh_token.".into()));
    }
    t.refreshes += 1;
    let n = t.refreshes;
    let old_access = std::mem::replace(&mut t.access, format!("access-{}-{n}", body.shop_id));
    t.older_access.push((old_access, t.access_expires_ms));
    let old_refresh = std::mem::replace(&mut t.refresh, format!("refresh-{}-{n}", body.shop_id));
    t.spent_refresh.push(old_refresh);
    t.access_expires_ms = now + life.access_secs as i64 * 1000;
    t.refresh_expires_ms = now + life.refresh_secs as i64 * 1000;
    let answer = json!({
        "refresh_token": t.refresh,
        "access_token": t.access,
        "expire_in": life.access_secs,
        "partner_id": partner_id,
        "shop_id": body.shop_id,
    });
    drop(tokens);
    state.count(Platform::Shopee, |s| s.refreshes += 1);
    Ok(answer)
}

impl SimState {
    pub(crate) fn shopee_tokens(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, ShopTokens>> {
        self.shopee_tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A shop's tokens as the platform has them now (`None` without `[shopee.tokens]`).
    pub fn shopee_token_state(&self, shop_id: u64) -> Option<ShopTokens> {
        self.shopee_tokens().get(&shop_id).cloned()
    }

    /// Whether `token` is a refresh token of the shop that a refresh has spent.
    pub fn shopee_refresh_spent(&self, shop_id: u64, token: &str) -> bool {
        self.shopee_tokens().get(&shop_id).is_some_and(|t| t.spent_refresh.iter().any(|s| s == token))
    }

    /// The merchant revoked the app's authorization of the shop.
    pub fn revoke_shopee(&self, shop_id: u64) -> bool {
        self.shopee_tokens().get_mut(&shop_id).map(|t| t.revoked = true).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ShopeeConfig, SimConfig};

    fn sim(access_secs: u64) -> std::sync::Arc<SimState> {
        let shopee = ShopeeConfig { tokens: Some(ShopeeTokens { access_secs, refresh_secs: 3600, answer_delay_ms: 0 }), ..ShopeeConfig::default() };
        SimState::new(SimConfig { shopee, ..SimConfig::default() })
    }

    fn refresh_with(state: &SimState, token: &str) -> Result<Value, Refusal> {
        let (pid, key) = (2001887u64, "demo_partner_key");
        let ts = crate::now_s();
        let sign = hmac_hex(key, &format!("{pid}/api/v2/auth/access_token/get{ts}"));
        let q = [("partner_id", pid.to_string()), ("timestamp", ts.to_string()), ("sign", sign)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let body = json!({"refresh_token": token, "partner_id": pid, "shop_id": 14701711});
        refresh(state, &q, body.to_string().as_bytes())
    }

    #[test]
    fn tokens_expire_rotate_and_spent_refresh_tokens_fail() {
        let state = sim(0);
        let shop = 14701711;
        // Expired at once (a lifetime of 0 s): the configured token is refused as expired.
        let e = check_access(&state, shop, "demo-shopee-token", "demo-shopee-token").unwrap_err();
        assert_eq!(e.1, "invalid_acceess_token");
        assert_eq!(check_access(&state, shop, "demo-shopee-token", "never-issued").unwrap_err().1, "error_auth");
        let first = refresh_with(&state, &format!("refresh-{shop}-0")).unwrap();
        assert_eq!((first["access_token"].as_str(), first["refresh_token"].as_str()), (Some("access-14701711-1"), Some("refresh-14701711-1")));
        // The old refresh token is spent: it fails, and is counted as such.
        assert_eq!(refresh_with(&state, &format!("refresh-{shop}-0")).unwrap_err().1, "error_auth");
        assert_eq!(state.stats()[&Platform::Shopee].spent_refresh_tokens, 1);
        assert!(refresh_with(&state, "refresh-14701711-1").is_ok());
        assert_eq!(state.stats()[&Platform::Shopee].refreshes, 2);
        assert_eq!(state.stats()[&Platform::Shopee].expired_token_calls, 1);
        // Revoked: nothing works any more.
        assert!(state.revoke_shopee(shop));
        assert!(refresh_with(&state, "refresh-14701711-2").is_err());
    }

    #[test]
    fn a_living_token_works_until_it_ends() {
        let state = sim(3600);
        let shop = 14701711;
        assert!(check_access(&state, shop, "demo-shopee-token", "demo-shopee-token").is_ok());
        refresh_with(&state, "refresh-14701711-0").unwrap();
        // The older access token still works until its own expiry; the new one too.
        assert!(check_access(&state, shop, "demo-shopee-token", "demo-shopee-token").is_ok());
        assert!(check_access(&state, shop, "demo-shopee-token", "access-14701711-1").is_ok());
        let t = state.shopee_token_state(shop).unwrap();
        assert_eq!((t.refreshes, t.refresh.as_str()), (1, "refresh-14701711-1"));
    }
}
