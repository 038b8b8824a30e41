//! What a client needs to talk to one simulated shop of each platform: the shop config a
//! connector gets (settings and secrets matching the simulator's credentials), how the
//! platform names and normalizes an order, and a correctly signed push for an order.
//! The conformance kit (`berth plugin test --sim`) and the tests build on it.

use crate::data::SimOrder;
use crate::{shopee, shopify, taobao, woo, Platform, SimConfig};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The push secret the simulated Shopify and WooCommerce shops sign webhooks with.
pub const WEBHOOK_SECRET: &str = "sim-webhook-secret";
/// The callback URL the simulated Shopee partner registered (part of what it signs).
pub const SHOPEE_CALLBACK_URL: &str = "https://berth.example/webhooks/shopee";

/// One simulated shop as a connector sees it.
#[derive(Clone, Debug)]
pub struct ShopProfile {
    pub platform: Platform,
    /// The simulator's key for the shop (its orders and stock live under it).
    pub shop: String,
    pub settings: Vec<(String, String)>,
    pub secrets: Vec<(String, String)>,
}

fn pairs(items: &[(&str, String)]) -> Vec<(String, String)> {
    items.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

impl Platform {
    pub fn parse(name: &str) -> Option<Platform> {
        match name {
            "shopify" => Some(Platform::Shopify),
            "taobao" => Some(Platform::Taobao),
            "shopee" => Some(Platform::Shopee),
            "woo" | "woocommerce" => Some(Platform::Woo),
            _ => None,
        }
    }

    pub const ALL: [Platform; 4] = [Platform::Shopify, Platform::Taobao, Platform::Shopee, Platform::Woo];

    pub fn name(self) -> &'static str {
        match self {
            Platform::Shopify => "shopify",
            Platform::Taobao => "taobao",
            Platform::Shopee => "shopee",
            Platform::Woo => "woo",
        }
    }
}

/// The first configured shop of `platform`, reached at `base_url` (the simulator's).
pub fn shop_profile(config: &SimConfig, platform: Platform, base_url: &str) -> Option<ShopProfile> {
    let base = base_url.trim_end_matches('/');
    let (shop, settings, secrets) = match platform {
        Platform::Shopify => {
            let s = config.shopify.shops.first()?;
            (
                s.name.clone(),
                pairs(&[("base_url", format!("{base}/shopify/{}", s.name))]),
                pairs(&[("access_token", s.access_token.clone()), ("webhook_secret", WEBHOOK_SECRET.into())]),
            )
        }
        Platform::Taobao => {
            let s = config.taobao.shops.first()?;
            let app = config.taobao.apps.iter().find(|a| a.app_key == s.app_key)?;
            (
                s.nick.clone(),
                pairs(&[
                    ("gateway", format!("{base}/taobao/router/rest")),
                    ("app_key", app.app_key.clone()),
                    ("sign_method", "hmac-sha256".into()),
                ]),
                pairs(&[("app_secret", app.secret.clone()), ("session", s.session.clone())]),
            )
        }
        Platform::Shopee => {
            let s = config.shopee.shops.first()?;
            let partner = config.shopee.partners.iter().find(|p| p.partner_id == s.partner_id)?;
            (
                s.shop_id.to_string(),
                pairs(&[
                    ("base_url", format!("{base}/shopee")),
                    ("partner_id", partner.partner_id.to_string()),
                    ("shop_id", s.shop_id.to_string()),
                    ("webhook_url", SHOPEE_CALLBACK_URL.into()),
                ]),
                pairs(&[("partner_key", partner.partner_key.clone()), ("access_token", s.access_token.clone())]),
            )
        }
        Platform::Woo => {
            let s = config.woo.sites.first()?;
            (
                s.name.clone(),
                pairs(&[("base_url", format!("{base}/woo/{}", s.name))]),
                pairs(&[
                    ("consumer_key", s.consumer_key.clone()),
                    ("consumer_secret", s.consumer_secret.clone()),
                    ("webhook_secret", WEBHOOK_SECRET.into()),
                ]),
            )
        }
    };
    Some(ShopProfile { platform, shop, settings, secrets })
}

/// The id the platform gives a simulated order (what a connector reports as `order-id`).
pub fn order_id(platform: Platform, o: &SimOrder) -> String {
    match platform {
        Platform::Shopee => shopee::order_sn(o),
        Platform::Shopify | Platform::Taobao | Platform::Woo => o.id.to_string(),
    }
}

/// The berth status the order's platform status normalizes to (WIT `order-status` name).
pub fn normalized_status(platform: Platform, o: &SimOrder) -> &'static str {
    match platform {
        Platform::Shopify => shopify::normalized_status(o),
        Platform::Taobao => taobao::normalized_status(o),
        Platform::Shopee => shopee::normalized_status(o),
        Platform::Woo => woo::normalized_status(o),
    }
}

/// An order-update push for `o`, signed as the platform signs it: (headers, body).
/// `None` for a platform that does not push over HTTP (TOP uses its message service).
pub fn signed_push(config: &SimConfig, platform: Platform, o: &SimOrder) -> Option<(Vec<(String, String)>, Vec<u8>)> {
    match platform {
        Platform::Shopify => {
            let body = serde_json::to_vec(&shopify::render(o)).ok()?;
            let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).ok()?;
            mac.update(&body);
            let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            let headers = vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("x-shopify-topic".to_string(), "orders/updated".to_string()),
                ("x-shopify-shop-domain".to_string(), format!("{}.myshopify.com", o.shop)),
                ("x-shopify-hmac-sha256".to_string(), signature),
            ];
            Some((headers, body))
        }
        Platform::Taobao => None,
        Platform::Shopee => {
            let shop = config.shopee.shops.iter().find(|s| s.shop_id.to_string() == o.shop)?;
            let partner = config.shopee.partners.iter().find(|p| p.partner_id == shop.partner_id)?;
            let body = shopee::order_push(shop.shop_id, o);
            let auth = shopee::push_authorization(&partner.partner_key, SHOPEE_CALLBACK_URL, &body);
            Some((
                vec![("content-type".to_string(), "application/json".to_string()), ("authorization".to_string(), auth)],
                body,
            ))
        }
        Platform::Woo => Some(woo::order_webhook(WEBHOOK_SECRET, "https://shop.example", o)),
    }
}
