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
    let param = |m: &str| Refusal(StatusCode::BAD_REQUEST, "error_param", m.to_string());
    let partner_id = signed_partner(state, q, "/api/v2/auth/access_token/get")?;
    let body: RefreshBody = serde_json::from_slice(body).map_err(|e| param(&format!("body: {e}")))?;
    if body.partner_id != partner_id {
        return Err(param("partner_id in the body differs from the query"));
    }
    let life = cfg.shopee.tokens.clone().unwrap_or(SHOPEE_TOKENS);
    let mut tokens = state.shopee_tokens();
    let Some(t) = tokens.get_mut(&body.shop_id) else {
        if cfg.shopee.tokens.is_none() {
            return Err(param("this shop has no expiring tokens: set [shopee.tokens], or authorize it by OAuth first"));
        }
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

/// How long an authorization code works (Shopee: 10 minutes, once).
const CODE_LIFETIME_MS: i64 = 10 * 60 * 1000;

/// Shopee's own lifetimes, for a shop authorized by OAuth without `[shopee.tokens]`.
const SHOPEE_TOKENS: ShopeeTokens = ShopeeTokens { access_secs: 4 * 3600, refresh_secs: 30 * 86_400, answer_delay_ms: 0 };

/// A code the consent page handed out.
#[derive(Clone, Debug)]
pub(crate) struct Code {
    shop_id: u64,
    partner_id: u64,
    issued_ms: i64,
}

/// The partner named by a public call's query, once its signature (partner_id +
/// api_path + timestamp) and timestamp check out.
fn signed_partner(state: &SimState, q: &std::collections::HashMap<String, String>, path: &str) -> Result<u64, Refusal> {
    let cfg = state.config();
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let param = |m: &str| Refusal(StatusCode::BAD_REQUEST, "error_param", m.to_string());
    let partner_id: u64 = get("partner_id").parse().map_err(|_| param("partner_id is required"))?;
    let Some(partner) = cfg.shopee.partners.iter().find(|p| p.partner_id == partner_id) else {
        return Err(Refusal(StatusCode::FORBIDDEN, "error_partner_id", "No partner_id or partner_id is invalid.".into()));
    };
    let timestamp: i64 = get("timestamp").parse().map_err(|_| param("timestamp must be Unix seconds"))?;
    if hmac_hex(&partner.partner_key, &format!("{partner_id}{path}{timestamp}")) != get("sign") {
        return Err(Refusal(StatusCode::FORBIDDEN, "error_sign", "Wrong sign.".into()));
    }
    if (crate::now_s() - timestamp).abs() > crate::shopee::TIMESTAMP_VALID_S {
        return Err(Refusal(StatusCode::FORBIDDEN, "error_timestamp", "Your timestamp has expired.".into()));
    }
    Ok(partner_id)
}

/// `GET /shopee/api/v2/shop/auth_partner?partner_id&timestamp&sign&redirect`: the consent
/// page. The merchant logged in (the shop [`SimState::shopee_login`] named, else the first
/// configured shop) authorizes the app at once: the answer is the redirect to `redirect`
/// with `code` and `shop_id` added, its own query kept. Returns that URL.
pub(crate) fn consent(state: &SimState, q: &std::collections::HashMap<String, String>) -> Result<String, Refusal> {
    let partner_id = signed_partner(state, q, "/api/v2/shop/auth_partner")?;
    let redirect = q.get("redirect").filter(|r| r.starts_with("http://") || r.starts_with("https://"));
    let Some(redirect) = redirect else {
        return Err(Refusal(StatusCode::BAD_REQUEST, "error_param", "redirect must be an http(s) URL".into()));
    };
    let shop_id = match *state.shopee_login.lock().unwrap_or_else(|e| e.into_inner()) {
        Some(id) => id,
        None => state.config().shopee.shops.first().map(|s| s.shop_id).ok_or_else(|| Refusal(StatusCode::BAD_REQUEST, "error_param", "no shop to log in as".into()))?,
    };
    let code = {
        let mut codes = state.shopee_codes.lock().unwrap_or_else(|e| e.into_inner());
        let code = format!("code-{shop_id}-{}-{}", codes.len(), now_ms());
        codes.insert(code.clone(), Code { shop_id, partner_id, issued_ms: now_ms() });
        code
    };
    state.count(Platform::Shopee, |s| s.consents += 1);
    let joiner = if redirect.contains('?') { '&' } else { '?' };
    Ok(format!("{redirect}{joiner}code={code}&shop_id={shop_id}"))
}

#[derive(Deserialize)]
struct CodeBody {
    code: String,
    shop_id: u64,
    partner_id: u64,
}

/// `POST /shopee/api/v2/auth/token/get`: a code from the consent page, once, within ten
/// minutes, for the shop and partner it was given to, becomes the shop's tokens. Earlier
/// tokens of the shop stop (their refresh tokens count as spent) and a revocation ends.
pub(crate) fn exchange(state: &SimState, q: &std::collections::HashMap<String, String>, body: &[u8]) -> Result<Value, Refusal> {
    let partner_id = signed_partner(state, q, "/api/v2/auth/token/get")?;
    let param = |m: &str| Refusal(StatusCode::BAD_REQUEST, "error_param", m.to_string());
    let body: CodeBody = serde_json::from_slice(body).map_err(|e| param(&format!("body: {e}")))?;
    if body.partner_id != partner_id {
        return Err(param("partner_id in the body differs from the query"));
    }
    let code = state.shopee_codes.lock().unwrap_or_else(|e| e.into_inner()).remove(&body.code);
    let fits = code.is_some_and(|c| c.shop_id == body.shop_id && c.partner_id == partner_id && now_ms() - c.issued_ms <= CODE_LIFETIME_MS);
    if !fits {
        return Err(Refusal(StatusCode::FORBIDDEN, "error_auth", "Invalid code.".into()));
    }
    let life = state.config().shopee.tokens.unwrap_or(SHOPEE_TOKENS);
    let now = now_ms();
    let mut tokens = state.shopee_tokens();
    let t = tokens.entry(body.shop_id).or_insert_with(|| ShopTokens::first("", body.shop_id, &life, now));
    t.refreshes += 1;
    let n = t.refreshes;
    t.spent_refresh.push(std::mem::replace(&mut t.refresh, format!("refresh-{}-{n}", body.shop_id)));
    t.older_access.clear();
    t.access = format!("access-{}-{n}", body.shop_id);
    t.access_expires_ms = now + life.access_secs as i64 * 1000;
    t.refresh_expires_ms = now + life.refresh_secs as i64 * 1000;
    t.revoked = false;
    let answer = json!({
        "refresh_token": t.refresh,
        "access_token": t.access,
        "expire_in": life.access_secs,
        "shop_id_list": [body.shop_id],
        "merchant_id_list": [],
    });
    drop(tokens);
    state.count(Platform::Shopee, |s| s.code_exchanges += 1);
    Ok(answer)
}

impl SimState {
    /// The shop a merchant on the consent page is logged in as (the one the next
    /// authorization is for).
    pub fn shopee_login(&self, shop_id: u64) {
        *self.shopee_login.lock().unwrap_or_else(|e| e.into_inner()) = Some(shop_id);
    }

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

    fn signed(path: &str, extra: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        let (pid, key) = (2001887u64, "demo_partner_key");
        let ts = crate::now_s();
        let sign = hmac_hex(key, &format!("{pid}{path}{ts}"));
        let mut q: std::collections::HashMap<String, String> =
            [("partner_id", pid.to_string()), ("timestamp", ts.to_string()), ("sign", sign)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        q.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        q
    }

    #[test]
    fn a_consent_gives_a_code_that_works_once_for_its_shop() {
        let state = sim(3600);
        let shop = 14701711u64;
        state.shopee_login(shop);
        let back = consent(&state, &signed("/api/v2/shop/auth_partner", &[("redirect", "https://berth.example/cb?state=s1")])).unwrap();
        let (base, query) = back.split_once('?').unwrap();
        assert_eq!(base, "https://berth.example/cb");
        let q: std::collections::HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        assert_eq!((q["state"].as_str(), q["shop_id"].as_str()), ("s1", "14701711"), "{back}");
        // A wrong signature gets no code.
        let mut forged = signed("/api/v2/shop/auth_partner", &[("redirect", "https://evil.example/")]);
        forged.insert("sign".into(), "00".into());
        assert_eq!(consent(&state, &forged).unwrap_err().1, "error_sign");
        let exchange_with = |code: &str, shop_id: u64| {
            let body = json!({"code": code, "shop_id": shop_id, "partner_id": 2001887});
            exchange(&state, &signed("/api/v2/auth/token/get", &[]), body.to_string().as_bytes())
        };
        assert_eq!(exchange_with(&q["code"], 999).unwrap_err().1, "error_auth", "the code is for its own shop only");
        // The failed try used the code up, as a single-use code is; a new consent, then once.
        let back = consent(&state, &signed("/api/v2/shop/auth_partner", &[("redirect", "https://berth.example/cb")])).unwrap();
        let code = back.split("code=").nth(1).unwrap().split('&').next().unwrap().to_string();
        assert!(state.revoke_shopee(shop));
        let tokens = exchange_with(&code, shop).unwrap();
        assert!(exchange_with(&code, shop).is_err(), "a code works once");
        let t = state.shopee_token_state(shop).unwrap();
        assert!(!t.revoked, "authorizing again ends the revocation");
        assert_eq!((tokens["access_token"].as_str().unwrap(), tokens["refresh_token"].as_str().unwrap()), (t.access.as_str(), t.refresh.as_str()));
        assert!(state.shopee_refresh_spent(shop, "refresh-14701711-0"), "the tokens before the authorization stop");
        assert_eq!(check_access(&state, shop, "demo-shopee-token", "demo-shopee-token").unwrap_err().1, "error_auth");
        assert!(check_access(&state, shop, "demo-shopee-token", &t.access).is_ok());
        assert_eq!((state.stats()[&Platform::Shopee].consents, state.stats()[&Platform::Shopee].code_exchanges), (2, 1));
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
