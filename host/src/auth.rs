//! Bearer tokens for the API, with roles. Tokens come from `[admin] tokens` and
//! are reloaded with the config, so a revoked token stops working within a second.
//! `/v1/admin` needs a token always; the rest of the API needs one as soon as any is
//! configured (with none it answers everyone, which config allows on loopback only).
//! Only the SHA-256 digests of the tokens are kept; a presented token's digest is
//! compared with every one of them in constant time (`subtle`), so neither its length
//! nor which token it matched shows in the time taken. A token never reaches a log line.

use crate::config::{Access, AdminConfig, Role};
use sha2::{Digest, Sha256};
use std::sync::{Arc, RwLock};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Who made a call: a token's holder and role, or nobody (`role: None`) on an API
/// without tokens; `scope` when the token sees only some shops.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub role: Option<Role>,
    pub scope: Option<Arc<Scope>>,
}

/// The shops a token may see: exact names, or prefixes ending in `*`.
#[derive(Clone, Debug)]
pub struct Scope(Vec<String>);

impl Scope {
    pub fn sees(&self, shop: &str) -> bool {
        self.0.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => shop.starts_with(prefix),
            None => p == shop,
        })
    }
}

impl Caller {
    /// Whether this caller may see and change `shop`.
    pub fn sees(&self, shop: &str) -> bool {
        self.scope.as_ref().is_none_or(|s| s.sees(shop))
    }

    /// Of `shops`, the ones this caller sees.
    pub fn visible<'a>(&self, shops: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        shops.into_iter().filter(|s| self.sees(s)).cloned().collect()
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    /// No token, or not one berth knows: 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known token whose role does not grant the call: 403.
    #[error("token `{name}` has role {}; this call needs one of {} ({} access)", role_name(*have), Role::granting(*need).into_iter().map(role_name).collect::<Vec<_>>().join(", "), access_name(*need))]
    Forbidden { name: String, have: Role, need: Access },
}

/// A configured token, as kept: its holder, role and digest.
struct KnownToken {
    name: String,
    role: Role,
    digest: [u8; 32],
    scope: Option<Arc<Scope>>,
}

#[derive(Default)]
pub struct AdminAuth {
    tokens: RwLock<Vec<KnownToken>>,
    max_component_mb: RwLock<u32>,
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Viewer => "viewer",
        Role::Erp => "erp",
        Role::Operator => "operator",
        Role::Deployer => "deployer",
        Role::Admin => "admin",
    }
}

pub fn access_name(a: Access) -> &'static str {
    match a {
        Access::Read => "read",
        Access::Erp => "erp",
        Access::Operate => "operate",
        Access::Deploy => "deploy",
        Access::Audit => "audit",
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl AdminAuth {
    pub fn new(cfg: &AdminConfig) -> Self {
        let auth = AdminAuth::default();
        auth.reconfigure(cfg);
        auth
    }

    pub fn reconfigure(&self, cfg: &AdminConfig) {
        let known = cfg
            .tokens
            .iter()
            .map(|t| KnownToken {
                name: t.name.clone(),
                role: t.role,
                digest: digest(t.token.expose()),
                scope: t.shops.clone().map(|s| Arc::new(Scope(s))),
            })
            .collect();
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = known;
        *self.max_component_mb.write().unwrap_or_else(|e| e.into_inner()) = cfg.max_component_mb;
    }

    pub fn max_component_bytes(&self) -> usize {
        *self.max_component_mb.read().unwrap_or_else(|e| e.into_inner()) as usize * 1024 * 1024
    }

    /// Whether any token is configured (without, the API outside `/v1/admin` is open).
    pub fn has_tokens(&self) -> bool {
        !self.tokens.read().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Check a call outside `/v1/admin`: with no tokens configured anyone may make it
    /// (config allows that on loopback only); otherwise as `authorize`.
    pub fn authorize_api(&self, header: Option<&str>, need: Access) -> Result<Caller, AuthError> {
        if !self.has_tokens() {
            return Ok(Caller { name: "-".into(), role: None, scope: None });
        }
        self.authorize(header, need)
    }

    /// Check an `Authorization` header value against the tokens and the access `need`.
    pub fn authorize(&self, header: Option<&str>, need: Access) -> Result<Caller, AuthError> {
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        if tokens.is_empty() {
            return Err(AuthError::Unauthenticated(
                "the admin API is off: no [admin] tokens are configured in berth.toml".into(),
            ));
        }
        let presented = header
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| AuthError::Unauthenticated("send `Authorization: Bearer <token>`".into()))?;
        // Every token's digest is compared and the match selected without a branch, so
        // the time taken says neither the token's length nor which one matched.
        let presented = digest(presented);
        let mut found = u32::MAX;
        for (i, t) in tokens.iter().enumerate() {
            found = u32::conditional_select(&found, &(i as u32), t.digest.ct_eq(&presented));
        }
        let t = tokens.get(found as usize).ok_or_else(|| AuthError::Unauthenticated("unknown token".into()))?;
        if !t.role.grants(need) {
            return Err(AuthError::Forbidden { name: t.name.clone(), have: t.role, need });
        }
        Ok(Caller { name: t.name.clone(), role: Some(t.role), scope: t.scope.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> AdminAuth {
        let cfg: crate::config::Config = crate::config::Config::parse(
            "[admin]\ntokens = [\n { name = \"ops\", token = \"operator-token-0001\", role = \"operator\" },\n { name = \"ci\", token = \"deployer-token-0001\", role = \"deployer\" },\n { name = \"erp\", token = \"erp-token-000001\", role = \"erp\" },\n]\n",
            std::path::Path::new("/b.toml"),
        )
        .unwrap();
        AdminAuth::new(&cfg.admin)
    }

    #[test]
    fn roles_are_ordered_and_tokens_checked() {
        let a = auth();
        let ci = a.authorize(Some("Bearer deployer-token-0001"), Access::Deploy).unwrap();
        assert_eq!((ci.name.as_str(), ci.role), ("ci", Some(Role::Deployer)));
        assert!(a.authorize(Some("Bearer deployer-token-0001"), Access::Read).is_ok());
        let err = a.authorize(Some("Bearer operator-token-0001"), Access::Deploy).unwrap_err();
        assert_eq!(err, AuthError::Forbidden { name: "ops".into(), have: Role::Operator, need: Access::Deploy });
        assert_eq!(err.to_string(), "token `ops` has role operator; this call needs one of deployer, admin (deploy access)");
        // The ERP's token leases and reads status, but neither replays dead letters nor deploys;
        // an operator's does not lease orders.
        assert!(a.authorize(Some("Bearer erp-token-000001"), Access::Erp).is_ok());
        assert!(a.authorize(Some("Bearer erp-token-000001"), Access::Read).is_ok());
        assert!(a.authorize(Some("Bearer erp-token-000001"), Access::Operate).is_err());
        assert!(a.authorize(Some("Bearer operator-token-0001"), Access::Erp).is_err());
        assert!(a.authorize_api(None, Access::Read).is_err(), "with tokens configured the API needs one");
        assert!(matches!(a.authorize(Some("Bearer nope"), Access::Read), Err(AuthError::Unauthenticated(_))));
        assert!(matches!(a.authorize(None, Access::Read), Err(AuthError::Unauthenticated(_))));
        assert!(matches!(a.authorize(Some("deployer-token-0001"), Access::Read), Err(AuthError::Unauthenticated(_))));
        // Revoked by a reload.
        a.reconfigure(&AdminConfig::default());
        let err = a.authorize(Some("Bearer deployer-token-0001"), Access::Read).unwrap_err();
        assert!(err.to_string().contains("no [admin] tokens"), "{err}");
        // With no tokens at all the API outside /v1/admin is open (config allows it on loopback only).
        assert!(a.authorize_api(None, Access::Erp).is_ok());
    }
}
