//! Bearer tokens for the admin API, with roles. Tokens come from `[admin] tokens` and
//! are reloaded with the config, so a revoked token stops working within a second.
//! Only the SHA-256 digests of the tokens are kept; a presented token's digest is
//! compared with every one of them in constant time (`subtle`), so neither its length
//! nor which token it matched shows in the time taken. A token never reaches a log line.

use crate::config::{AdminConfig, Role};
use sha2::{Digest, Sha256};
use std::sync::RwLock;
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Who made a call.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    /// No token, or not one berth knows: 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known token whose role is too low: 403.
    #[error("token `{name}` has role {have:?}; this call needs {need:?} or above")]
    Forbidden { name: String, have: Role, need: Role },
}

/// A configured token, as kept: its holder, role and digest.
struct KnownToken {
    name: String,
    role: Role,
    digest: [u8; 32],
}

#[derive(Default)]
pub struct AdminAuth {
    tokens: RwLock<Vec<KnownToken>>,
    max_component_mb: RwLock<u32>,
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
        let known = cfg.tokens.iter().map(|t| KnownToken { name: t.name.clone(), role: t.role, digest: digest(t.token.expose()) }).collect();
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = known;
        *self.max_component_mb.write().unwrap_or_else(|e| e.into_inner()) = cfg.max_component_mb;
    }

    pub fn max_component_bytes(&self) -> usize {
        *self.max_component_mb.read().unwrap_or_else(|e| e.into_inner()) as usize * 1024 * 1024
    }

    /// Check an `Authorization` header value against the tokens and the role `need`.
    pub fn authorize(&self, header: Option<&str>, need: Role) -> Result<Caller, AuthError> {
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
        if t.role < need {
            return Err(AuthError::Forbidden { name: t.name.clone(), have: t.role, need });
        }
        Ok(Caller { name: t.name.clone(), role: t.role })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> AdminAuth {
        let cfg: crate::config::Config = crate::config::Config::parse(
            "[admin]\ntokens = [\n { name = \"ops\", token = \"operator-token-0001\", role = \"operator\" },\n { name = \"ci\", token = \"deployer-token-0001\", role = \"deployer\" },\n]\n",
            std::path::Path::new("/b.toml"),
        )
        .unwrap();
        AdminAuth::new(&cfg.admin)
    }

    #[test]
    fn roles_are_ordered_and_tokens_checked() {
        let a = auth();
        let ci = a.authorize(Some("Bearer deployer-token-0001"), Role::Deployer).unwrap();
        assert_eq!((ci.name.as_str(), ci.role), ("ci", Role::Deployer));
        assert!(a.authorize(Some("Bearer deployer-token-0001"), Role::Viewer).is_ok());
        assert_eq!(
            a.authorize(Some("Bearer operator-token-0001"), Role::Deployer).unwrap_err(),
            AuthError::Forbidden { name: "ops".into(), have: Role::Operator, need: Role::Deployer }
        );
        assert!(matches!(a.authorize(Some("Bearer nope"), Role::Viewer), Err(AuthError::Unauthenticated(_))));
        assert!(matches!(a.authorize(None, Role::Viewer), Err(AuthError::Unauthenticated(_))));
        assert!(matches!(a.authorize(Some("deployer-token-0001"), Role::Viewer), Err(AuthError::Unauthenticated(_))));
        // Revoked by a reload.
        a.reconfigure(&AdminConfig::default());
        let err = a.authorize(Some("Bearer deployer-token-0001"), Role::Viewer).unwrap_err();
        assert!(err.to_string().contains("no [admin] tokens"), "{err}");
    }
}
