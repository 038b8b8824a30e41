//! `berth:connector/http`: the connector's only way out.
//!
//! A request is refused unless its host is one the connector's manifest declares or ops
//! granted in config, and unless every address the name resolves to is public (loopback,
//! private, link-local and cloud-metadata ranges are refused unless
//! `http.allow_private_addresses` is set, as tests against a local simulator need).
//! Redirects are not followed: a connector sees the 3xx and decides. Bodies above the cap
//! are cut off with `too-large`.

use crate::config::HttpConfig;
use crate::runtime::bindings::berth::connector::http::{HttpError, Method, Request, Response};
use std::net::IpAddr;
use std::time::Duration;

/// The hosts one connector may reach: exact names or `*.suffix` patterns.
#[derive(Clone, Debug, Default)]
pub struct HostAllowlist {
    patterns: Vec<String>,
}

impl HostAllowlist {
    pub fn new(patterns: impl IntoIterator<Item = String>) -> Self {
        HostAllowlist { patterns: patterns.into_iter().map(|p| p.to_ascii_lowercase()).collect() }
    }

    pub fn allows(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.patterns.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.'),
            None => *p == host,
        })
    }
}

/// Addresses a connector must not reach without an explicit grant.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local() // includes 169.254.169.254, the cloud metadata service
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // carrier-grade NAT
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

pub struct HttpGateway {
    client: reqwest::Client,
    config: HttpConfig,
}

impl HttpGateway {
    pub fn new(config: HttpConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpGateway { client, config })
    }

    /// Check the URL against policy; return the parsed URL when it may be called.
    async fn admit(&self, allow: &HostAllowlist, raw: &str) -> Result<url::Url, HttpError> {
        let url = url::Url::parse(raw).map_err(|e| HttpError::InvalidRequest(format!("bad URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HttpError::Denied(format!("scheme `{}` is not allowed; use http or https", url.scheme())));
        }
        let host = url.host_str().ok_or_else(|| HttpError::InvalidRequest("URL has no host".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !allow.allows(host) {
            return Err(HttpError::Denied(format!(
                "host `{host}` is not in the connector's allowed hosts; declare it in the manifest and grant it in config"
            )));
        }
        if !self.config.allow_private_addresses {
            let port = url.port_or_known_default().unwrap_or(443);
            let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| HttpError::Connection(format!("cannot resolve `{host}`: {e}")))?
                    .map(|a| a.ip())
                    .collect(),
            };
            if let Some(ip) = addrs.into_iter().find(|ip| is_private(*ip)) {
                return Err(HttpError::Denied(format!(
                    "`{host}` resolves to non-public address {ip}; refused (set http.allow_private_addresses only for local testing)"
                )));
            }
        }
        Ok(url)
    }

    pub async fn send(&self, allow: &HostAllowlist, req: Request) -> Result<Response, HttpError> {
        let url = self.admit(allow, &req.url).await?;
        let timeout = Duration::from_millis(
            req.timeout_ms.map(u64::from).unwrap_or(self.config.timeout_ms).min(self.config.timeout_ms),
        );
        let method = match req.method {
            Method::Get => reqwest::Method::GET,
            Method::Head => reqwest::Method::HEAD,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut builder = self.client.request(method, url).timeout(timeout);
        for (k, v) in &req.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        if !req.body.is_empty() {
            builder = builder.body(req.body);
        }
        let mut resp = builder.send().await.map_err(classify)?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let cap = self.config.max_response_bytes;
        if resp.content_length().is_some_and(|len| len > cap) {
            return Err(HttpError::TooLarge(cap));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            if body.len() as u64 + chunk.len() as u64 > cap {
                return Err(HttpError::TooLarge(cap));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response { status, headers, body })
    }
}

fn classify(e: reqwest::Error) -> HttpError {
    if e.is_timeout() {
        HttpError::Timeout
    } else if e.is_builder() {
        HttpError::InvalidRequest(e.to_string())
    } else {
        HttpError::Connection(e.to_string())
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
    fn private_ranges() {
        for ip in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1"] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }
}
