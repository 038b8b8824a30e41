//! Bearer tokens for the API, with roles. Tokens come from `[admin] tokens` and
//! are reloaded with the config, so a revoked token stops working within a second.
//! `/v1/admin` needs a token always; the rest of the API needs one as soon as any is
//! configured (with none it answers everyone, which config allows on loopback only).
//! Only the SHA-256 digests of the tokens are kept; a presented token's digest is
//! compared with every one of them in constant time (`subtle`), so neither its length
//! nor which token it matched shows in the time taken. A token never reaches a log line.

use berth_types::access::{Access, Role};
use sha2::{Digest, Sha256};
use std::sync::{Arc, RwLock};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use serde::Deserialize;
use berth_types::Secret;

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
    /// The scope's canonical key: its patterns sorted, each once (tokens with the same
    /// shops have the same key; in cluster mode it names the scope in the feed's classes).
    pub fn key(&self) -> String {
        let mut p: Vec<&str> = self.0.iter().map(String::as_str).collect();
        p.sort_unstable();
        p.dedup();
        p.join(",")
    }

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
    max_tape_mb: RwLock<u32>,
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
        Access::Onboard => "onboard",
        Access::Drill => "drill",
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
        *self.max_tape_mb.write().unwrap_or_else(|e| e.into_inner()) = cfg.max_tape_mb;
    }

    pub fn max_tape_bytes(&self) -> usize {
        *self.max_tape_mb.read().unwrap_or_else(|e| e.into_inner()) as usize * 1024 * 1024
    }

    pub fn max_component_bytes(&self) -> usize {
        *self.max_component_mb.read().unwrap_or_else(|e| e.into_inner()) as usize * 1024 * 1024
    }

    /// The shop scopes of the tokens configured now (a scoped token's, each).
    pub fn scopes(&self) -> Vec<Arc<Scope>> {
        self.tokens.read().unwrap_or_else(|e| e.into_inner()).iter().filter_map(|t| t.scope.clone()).collect()
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

/// Who may call the API: the ERP, people reading status, ops under `/v1/admin`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer tokens, each with a role. With none, `/v1/admin` refuses every call and
    /// the rest of the API answers without a token — allowed on a loopback listener
    /// only (or with `[server] insecure = true`). With any, every call but `/healthz`,
    /// `/readyz` and platform webhooks needs one.
    pub tokens: Vec<AdminToken>,
    /// Largest component a deploy takes.
    pub max_component_mb: u32,
    /// Largest tape a tape-based shadow run takes (`POST …/shadow/tape`).
    pub max_tape_mb: u32,
    /// Refused attempts without a valid token written to the audit log one by one per
    /// minute; the rest are counted in one entry (and in `berth_api_refused_total`).
    pub max_unauthenticated_audits_per_minute: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { tokens: Vec::new(), max_component_mb: 32, max_tape_mb: 32, max_unauthenticated_audits_per_minute: 60 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// Who holds it: written to the audit log with every change it makes.
    pub name: String,
    pub token: Secret,
    pub role: Role,
    /// The shops this token may see and change (exact names, or a prefix ending in `*`:
    /// `["acme-*", "globex"]`): one ERP vendor's merchant, in a berth serving many. Its
    /// leases come from those shops' queue partitions only, every call naming another
    /// shop answers 404, and whole-host views (metrics, alerts, the dashboard's status,
    /// platforms, connectors, the feed's counters) are not for it. All shops when absent.
    #[serde(default)]
    pub shops: Option<Vec<String>>,
}

impl AdminConfig {
    /// `[admin]` on its own: tokens named, long enough, unique; shop scopes well formed
    /// and only on roles that concern shops.
    pub fn check(&self) -> Result<(), String> {
        for (i, t) in self.tokens.iter().enumerate() {
            if t.name.is_empty() || t.token.expose().len() < 16 {
                return Err(format!("admin.tokens[{i}]: a token needs a name and at least 16 characters (e.g. `openssl rand -hex 24`)"));
            }
            if self.tokens[..i].iter().any(|o| o.name == t.name || o.token.expose() == t.token.expose()) {
                return Err(format!("admin.tokens[{i}] (`{}`): names and tokens must be unique", t.name));
            }
        }
        for t in &self.tokens {
            let Some(shops) = &t.shops else { continue };
            let pattern_ok = |p: &String| {
                let name = p.strip_suffix('*').unwrap_or(p);
                !p.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
            };
            if shops.is_empty() || !shops.iter().all(pattern_ok) {
                return Err(format!(
                    "admin.tokens `{}`: shops must list shop names or prefixes ending in `*` (e.g. [\"acme-*\", \"globex\"])",
                    t.name
                ));
            }
            if !matches!(t.role, Role::Erp | Role::Viewer | Role::Operator) {
                return Err(format!(
                    "admin.tokens `{}`: a token scoped to shops may have role erp, viewer or operator; deploys and the audit log concern every shop",
                    t.name
                ));
            }
        }
        if self.max_component_mb == 0 {
            return Err("admin.max_component_mb must be at least 1".into());
        }
        if self.max_tape_mb == 0 {
            return Err("admin.max_tape_mb must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> AdminAuth {
        let cfg: AdminConfig = toml::from_str(
            "tokens = [\n { name = \"ops\", token = \"operator-token-0001\", role = \"operator\" },\n { name = \"ci\", token = \"deployer-token-0001\", role = \"deployer\" },\n { name = \"erp\", token = \"erp-token-000001\", role = \"erp\" },\n]\n",
        )
        .unwrap();
        cfg.check().unwrap();
        AdminAuth::new(&cfg)
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
