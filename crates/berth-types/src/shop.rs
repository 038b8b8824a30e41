//! Shops: their tier and the config a connector sees for one.

use crate::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// How closely a shop is watched: its default poll interval and probe schedule.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
pub enum Tier {
    A,
    B,
    C,
}

impl Tier {
    /// Default order poll interval by tier.
    pub fn default_poll_secs(self) -> u64 {
        match self {
            Tier::A => 30,
            Tier::B => 300,
            Tier::C => 3600,
        }
    }
}

#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShopConfig {
    pub connector: String,
    #[serde(default = "tier_b")]
    pub tier: Tier,
    /// Order poll interval; the tier's default when absent.
    pub poll_interval_secs: Option<u64>,
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    #[serde(default)]
    pub secrets: BTreeMap<String, Secret>,
}

fn tier_b() -> Tier {
    Tier::B
}

impl ShopConfig {
    pub fn poll_interval_secs(&self) -> u64 {
        self.poll_interval_secs.unwrap_or_else(|| self.tier.default_poll_secs())
    }

    /// A setting or secret by key, as the connector's `config.get` sees it.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str).or_else(|| self.secrets.get(key).map(Secret::expose))
    }
}

impl fmt::Debug for ShopConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShopConfig")
            .field("connector", &self.connector)
            .field("tier", &self.tier)
            .field("poll_interval_secs", &self.poll_interval_secs)
            .field("settings", &self.settings)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_differing_in_a_secret_alone_differ() {
        let a = ShopConfig {
            connector: "shopify".into(),
            tier: Tier::A,
            poll_interval_secs: None,
            settings: BTreeMap::from([("base_url".to_string(), "https://a".to_string())]),
            secrets: BTreeMap::from([("token".to_string(), Secret::new("one"))]),
        };
        let b = ShopConfig { secrets: BTreeMap::from([("token".to_string(), Secret::new("two"))]), ..a.clone() };
        assert_eq!(format!("{a:?}"), format!("{b:?}"), "Debug never shows secrets");
        assert!(a != b && a == a.clone());
        assert_eq!(a.poll_interval_secs(), 30);
    }
}
