//! What a loaded version may reach: the hosts of its manifest that ops granted, plus
//! the ones ops add, and whether non-public addresses are allowed. Computed when the
//! version loads; enforced by the HTTP gateway (capabilities) on every request.

/// The hosts one connector may reach: exact names or `*.suffix` patterns.
#[derive(Clone, Debug, Default)]
pub struct HostAllowlist {
    patterns: Vec<String>,
    /// Ops let this connector reach non-public addresses.
    private: bool,
}

impl HostAllowlist {
    pub fn new(patterns: impl IntoIterator<Item = String>) -> Self {
        HostAllowlist { patterns: patterns.into_iter().map(|p| p.to_ascii_lowercase()).collect(), private: false }
    }

    /// Let (or not) this connector reach loopback, private and link-local addresses.
    pub fn with_private(mut self, private: bool) -> Self {
        self.private = private;
        self
    }

    /// Whether ops let this connector reach non-public addresses.
    pub fn private(&self) -> bool {
        self.private
    }

    pub fn allows(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.patterns.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.'),
            None => *p == host,
        })
    }
}

/// Whether grant pattern `grant` covers host or pattern `m` (both lower-case): equal,
/// or a `*.suffix` grant over a name or pattern strictly under the suffix.
fn covers(grant: &str, m: &str) -> bool {
    if grant == m {
        return true;
    }
    let Some(suffix) = grant.strip_prefix("*.") else { return false };
    let name = m.strip_prefix("*.").unwrap_or(m);
    name.len() > suffix.len() && name.ends_with(suffix) && name[..name.len() - suffix.len()].ends_with('.')
}

impl HostAllowlist {
    /// The manifest's patterns that ops granted; with no grants configured, all of them.
    pub fn granted(manifest: &[String], grants: Option<&[String]>) -> Vec<String> {
        let Some(grants) = grants else { return manifest.to_vec() };
        manifest
            .iter()
            .filter(|m| {
                let m = m.to_ascii_lowercase();
                grants.iter().any(|g| covers(&g.to_ascii_lowercase(), &m))
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_matches_exact_and_wildcards() {
        let a = HostAllowlist::new(["*.myshopify.com".to_string(), "eco.taobao.com".to_string()]);
        assert!(a.allows("acme.myshopify.com"));
        assert!(a.allows("ACME.myshopify.com"));
        assert!(!a.allows("myshopify.com"));
        assert!(!a.allows("evilmyshopify.com"));
        assert!(!a.allows("myshopify.com.evil.io"));
        assert!(a.allows("eco.taobao.com"));
        assert!(!a.allows("x.eco.taobao.com"));
    }

    #[test]
    fn grants_narrow_the_manifest() {
        let manifest = vec!["*.myshopify.com".to_string(), "eco.taobao.com".to_string(), "*.cdn.example".to_string()];
        assert_eq!(HostAllowlist::granted(&manifest, None), manifest);
        let grants = vec!["*.myshopify.com".to_string(), "*.example".to_string()];
        assert_eq!(HostAllowlist::granted(&manifest, Some(&grants)), vec!["*.myshopify.com".to_string(), "*.cdn.example".to_string()]);
        assert!(HostAllowlist::granted(&manifest, Some(&["myshopify.com".to_string()])).is_empty());
        assert!(covers("*.taobao.com", "eco.taobao.com"));
        assert!(!covers("*.taobao.com", "taobao.com"));
        assert!(!covers("*.taobao.com", "eviltaobao.com"));
    }
}
