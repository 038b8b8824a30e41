//! `[cluster]`: where the NATS servers are, how berth authenticates to them, and what
//! berth requires of them.

use berth_types::Secret;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// What berth relies on for an acknowledged write to survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Every server fsyncs each write before it acknowledges (`jetstream { sync_interval:
    /// always }`), and every bucket has `replicas` copies. Checked at start through each
    /// server's monitoring endpoint (`monitor`).
    #[default]
    SyncAlways,
    /// Writes are acknowledged once a majority of `replicas` (at least 3) hold them in
    /// memory; servers sync on their timer. An acknowledged write is lost only if a
    /// majority of the replicas crash within one sync interval (NATS' default 2 min).
    Replicated,
}

impl Durability {
    pub fn name(self) -> &'static str {
        match self {
            Durability::SyncAlways => "sync-always",
            Durability::Replicated => "replicated",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The NATS servers' client URLs (`nats://host:4222`); one is enough to connect, the
    /// client learns the rest from the cluster.
    pub nats: Vec<String>,
    /// This node's name: unique in the cluster, stable across restarts (it names the
    /// node in `GET /v1/cluster`, leases and metrics). Lowercase letters, digits, `-`, `_`.
    pub node: String,
    /// A NATS `.creds` file (JWT + nkey seed), as `nsc` writes it.
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub token: Option<Secret>,
    #[serde(default)]
    pub tls: Option<ClusterTls>,
    /// Copies of every bucket and stream (JetStream replicas, an odd number ≤ 5).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    #[serde(default)]
    pub durability: Durability,
    /// The servers' monitoring URLs (`http://host:8222`), read at start to check
    /// `sync_interval: always` when `durability = "sync-always"`.
    #[serde(default)]
    pub monitor: Vec<String>,
    /// How long a node's claim on its shops outlives its last heartbeat: a node that
    /// dies or stalls loses its shops to the others after this long.
    #[serde(default = "default_lease_ttl_secs")]
    pub lease_ttl_secs: u64,
    /// Prefix of every bucket and stream berth creates, so several berth installations
    /// can share one NATS account.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The order queue's ack wait. A lease asking another visibility is given back or
    /// renewed by the node that leased it, so this is also the longest a lease outlives
    /// that node's death (and what an extension gets when its node is gone).
    #[serde(default = "default_erp_lease_secs")]
    pub erp_lease_secs: u64,
    /// Audit entries the cluster's audit stream keeps (every node's; the oldest go
    /// first). Each node's own `audit.log` keeps all of its own.
    #[serde(default = "default_audit_keep")]
    pub audit_keep: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// CA certificates (PEM) the servers' certificates are checked against.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM) for servers that verify clients.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

fn default_replicas() -> usize {
    3
}
fn default_lease_ttl_secs() -> u64 {
    15
}
fn default_prefix() -> String {
    "berth".into()
}
fn default_erp_lease_secs() -> u64 {
    60
}
fn default_audit_keep() -> i64 {
    1_000_000
}

impl ClusterConfig {
    /// `node` on the servers at `nats`, everything else at its default: 3 replicas,
    /// `sync-always` (which needs `monitor`), a 15 s lease, prefix `berth`, no auth.
    pub fn new(nats: Vec<String>, node: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            nats,
            node: node.into(),
            creds_file: None,
            user: None,
            password: None,
            token: None,
            tls: None,
            replicas: default_replicas(),
            durability: Durability::default(),
            monitor: Vec::new(),
            lease_ttl_secs: default_lease_ttl_secs(),
            prefix: default_prefix(),
            erp_lease_secs: default_erp_lease_secs(),
            audit_keep: default_audit_keep(),
        }
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs)
    }

    /// Every problem with the section, each saying what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.nats.is_empty() {
            return Err("[cluster] nats is empty: list the NATS servers' client URLs, e.g. nats = [\"nats://10.0.0.1:4222\"]".into());
        }
        for url in &self.nats {
            if !(url.starts_with("nats://") || url.starts_with("tls://")) {
                return Err(format!("[cluster] nats: `{url}` is not a nats:// or tls:// URL"));
            }
        }
        if !valid_name(&self.node) {
            return Err(format!(
                "[cluster] node `{}` is not a node name: 1-64 lowercase letters, digits, `-` or `_`, unique in the cluster",
                self.node
            ));
        }
        if !valid_name(&self.prefix) {
            return Err(format!("[cluster] prefix `{}`: 1-64 lowercase letters, digits, `-` or `_`", self.prefix));
        }
        if !matches!(self.replicas, 1 | 3 | 5) {
            return Err(format!("[cluster] replicas = {}: JetStream keeps 1, 3 or 5 copies (3 tolerates one server lost)", self.replicas));
        }
        if self.durability == Durability::Replicated && self.replicas < 3 {
            return Err(format!(
                "[cluster] durability = \"replicated\" relies on a majority of replicas holding each write, and replicas = {} has no \
                 majority to lose: set replicas = 3, or durability = \"sync-always\" with sync_interval: always on every server",
                self.replicas
            ));
        }
        if self.durability == Durability::SyncAlways && self.monitor.is_empty() {
            return Err("[cluster] durability = \"sync-always\" (the default) is checked on every server's monitoring endpoint, and \
                        [cluster] monitor lists none: add them (monitor = [\"http://10.0.0.1:8222\", …], the servers' `http:` port), \
                        or set durability = \"replicated\" to rely on replicas = 3 instead"
                .into());
        }
        if !(3..=600).contains(&self.lease_ttl_secs) {
            return Err(format!("[cluster] lease_ttl_secs = {}: between 3 and 600", self.lease_ttl_secs));
        }
        if !(1..=86_400).contains(&self.erp_lease_secs) {
            return Err(format!("[cluster] erp_lease_secs = {}: between 1 and 86400", self.erp_lease_secs));
        }
        if !(1_000..=100_000_000).contains(&self.audit_keep) {
            return Err(format!("[cluster] audit_keep = {}: between 1000 and 100000000 entries", self.audit_keep));
        }
        let auth = [self.creds_file.is_some(), self.user.is_some() || self.password.is_some(), self.token.is_some()];
        if auth.iter().filter(|a| **a).count() > 1 {
            return Err("[cluster]: give one way to authenticate to NATS (creds_file, user + password, or token), not several".into());
        }
        if self.user.is_some() != self.password.is_some() {
            return Err("[cluster]: user and password go together".into());
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err("[cluster.tls]: cert_file and key_file go together".into());
            }
        }
        Ok(())
    }
}

/// Node names and prefixes become KV keys and subject tokens.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ClusterConfig {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn defaults_are_three_replicas_synced_writes_and_a_15_s_lease() {
        let c = parse("nats = [\"nats://127.0.0.1:4222\"]\nnode = \"a\"\nmonitor = [\"http://127.0.0.1:8222\"]\n");
        assert_eq!((c.replicas, c.durability, c.lease_ttl_secs, c.prefix.as_str()), (3, Durability::SyncAlways, 15, "berth"));
        c.validate().expect("valid");
    }

    #[test]
    fn weak_or_unverifiable_durability_is_refused_with_what_to_do() {
        let no_monitor = parse("nats = [\"nats://127.0.0.1:4222\"]\nnode = \"a\"\n").validate().unwrap_err();
        assert!(no_monitor.contains("monitor") && no_monitor.contains("replicated"), "{no_monitor}");
        let single = parse("nats = [\"nats://h:4222\"]\nnode = \"a\"\ndurability = \"replicated\"\nreplicas = 1\n").validate().unwrap_err();
        assert!(single.contains("replicas = 3"), "{single}");
        let even = parse("nats = [\"nats://h:4222\"]\nnode = \"a\"\ndurability = \"replicated\"\nreplicas = 2\n").validate().unwrap_err();
        assert!(even.contains("1, 3 or 5"), "{even}");
    }

    #[test]
    fn names_urls_and_auth_are_checked() {
        let base = "durability = \"replicated\"\n";
        for (text, needle) in [
            ("nats = []\nnode = \"a\"\n", "is empty"),
            ("nats = [\"http://h:4222\"]\nnode = \"a\"\n", "not a nats://"),
            ("nats = [\"nats://h:4222\"]\nnode = \"Node A\"\n", "not a node name"),
            ("nats = [\"nats://h:4222\"]\nnode = \"a\"\ntoken = \"t\"\nuser = \"u\"\npassword = \"p\"\n", "one way"),
            ("nats = [\"nats://h:4222\"]\nnode = \"a\"\nuser = \"u\"\n", "go together"),
            ("nats = [\"nats://h:4222\"]\nnode = \"a\"\nlease_ttl_secs = 1\n", "between 3 and 600"),
        ] {
            let err = parse(&format!("{base}{text}")).validate().unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let c = parse("nats = [\"nats://h:4222\"]\nnode = \"a\"\ndurability = \"replicated\"\ntoken = \"s3cret-token\"\n");
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
