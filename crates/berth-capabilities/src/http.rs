//! `berth:connector/http`: the connector's only way out.
//!
//! A request is refused unless its host is one the connector's manifest declares and ops
//! granted (`[connectors.X] grant_hosts`, all of the manifest when absent; `extra_hosts`
//! adds ops-only hosts such as a simulator), and unless the address it connects to is
//! public: loopback, private, link-local and cloud-metadata ranges are refused unless
//! `http.allow_private_addresses` is set, as tests against a local simulator need, or
//! the connector's own `[connectors.X] allow_private_addresses` (a connector ops run
//! against a local sandbox while the others stay public-only). Names
//! are resolved by [`PublicResolver`], which drops non-public addresses before the
//! connection is made, so the address checked is the address used: a name that
//! resolves to a public address at check time and a private one later (DNS rebinding)
//! gets nowhere.
//! The port must be 80 or 443 or one ops list in `[http] allowed_ports` (any port for a
//! connector allowed private addresses: a local sandbox or simulator).
//! Redirects are not followed: a connector sees the 3xx and decides. Bodies above the cap
//! are cut off with `too-large`.

use crate::config::HttpConfig;
use berth_runtime::allowlist::HostAllowlist;
use berth_types::http::{HttpError, Method, Request, Response};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Why the resolver refused a name: surfaces to the guest as `denied`.
#[derive(Debug, thiserror::Error)]
#[error("`{host}` resolves only to non-public addresses ({addrs}); refused (set http.allow_private_addresses only for local testing)")]
pub struct NonPublicAddress {
    host: String,
    addrs: String,
}

/// DNS for connector traffic: resolves, then keeps only public addresses (unless private
/// ones are allowed). The connection is made to what this returns, so the check cannot
/// be raced by a second lookup.
pub struct PublicResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all.iter().copied().filter(|a| allow_private || !is_private(a.ip())).collect();
            if public.is_empty() && !all.is_empty() {
                let addrs = all.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ");
                return Err(Box::new(NonPublicAddress { host, addrs }) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Addresses a connector must not reach without an explicit grant: every IANA
/// special-purpose range that is not globally reachable (loopback, private, link-local
/// and the cloud metadata address, CGNAT, documentation and benchmarking nets, reserved
/// and multicast, "this network"), and the IPv6 forms that carry an IPv4 address or
/// tunnel to one (mapped, compatible, NAT64, 6to4, Teredo), judged by what they carry or
/// refused whole.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local() // includes 169.254.169.254, the cloud metadata service
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast() // 224.0.0.0/4
                || o[0] == 0 // "this network"
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24, IETF protocol assignments
                || (o[0] == 192 && o[1] == 0 && o[2] == 2) // 192.0.2.0/24, TEST-NET-1
                || (o[0] == 192 && o[1] == 88 && o[2] == 99) // 192.88.99.0/24, 6to4 relay anycast
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
                || (o[0] == 198 && o[1] == 51 && o[2] == 100) // TEST-NET-2
                || (o[0] == 203 && o[1] == 0 && o[2] == 113) // TEST-NET-3
                || o[0] >= 240 // 240.0.0.0/4, reserved (and the broadcast address)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast() // ff00::/8
                || (s[0] & 0xfe00) == 0xfc00 // fc00::/7, unique local
                || (s[0] & 0xffc0) == 0xfe80 // fe80::/10, link-local
                || (s[0] & 0xffc0) == 0xfec0 // fec0::/10, site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // 2001:db8::/32, documentation
                || (s[0] == 0x2001 && s[1] == 0) // 2001::/32, Teredo (tunnels to IPv4)
                || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0010) // 2001:10::/28, ORCHID
                || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0020) // 2001:20::/28, ORCHIDv2
                || (s[0] == 0x2001 && s[1] < 0x0200 && s[1] != 0x0db8) // 2001::/23, IETF protocol assignments
                || s[0] == 0x2002 // 2002::/16, 6to4 (tunnels to the IPv4 address inside)
                || (s[0] == 0x0064 && s[1] == 0xff9b) // 64:ff9b::/96 and 64:ff9b:1::/48, NAT64
                || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // 100::/64, discard
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(IpAddr::V4(v4))) // ::ffff:a.b.c.d
                || (s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified()) // ::a.b.c.d, IPv4-compatible (deprecated)
        }
    }
}

pub struct HttpGateway {
    client: reqwest::Client,
    /// For connectors ops let reach non-public addresses.
    open_client: reqwest::Client,
    config: HttpConfig,
    /// Requests refused by policy, per connector.
    refusals: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl HttpGateway {
    pub fn new(config: HttpConfig) -> Result<Self, reqwest::Error> {
        let build = |allow_private| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                // Never through a proxy from the environment (HTTP(S)_PROXY): a proxy
                // resolves names itself, and the address check would never run.
                .no_proxy()
                .dns_resolver(Arc::new(PublicResolver { allow_private }))
                .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
                .build()
        };
        let client = build(config.allow_private_addresses)?;
        let open_client = build(true)?;
        Ok(HttpGateway { client, open_client, config, refusals: Default::default() })
    }

    /// Count a policy refusal for `connector`.
    pub fn note_refusal(&self, connector: &str) {
        *self.refusals.lock().unwrap_or_else(|e| e.into_inner()).entry(connector.to_string()).or_default() += 1;
    }

    /// Policy refusals so far for `connector`.
    pub fn refusals(&self, connector: &str) -> u64 {
        self.refusals.lock().unwrap_or_else(|e| e.into_inner()).get(connector).copied().unwrap_or(0)
    }

    /// The client connector traffic uses (private addresses refused by its resolver
    /// unless allowed); health probes of standby channels go through it too.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Check the URL against policy; return the parsed URL when it may be called.
    pub fn admit(&self, allow: &HostAllowlist, raw: &str) -> Result<url::Url, HttpError> {
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
        self.check_literal(allow, host)?;
        self.check_port(allow, &url)?;
        Ok(url)
    }

    fn check_port(&self, allow: &HostAllowlist, url: &url::Url) -> Result<(), HttpError> {
        let port = url.port_or_known_default().unwrap_or(0);
        if matches!(port, 80 | 443) || self.config.allowed_ports.contains(&port) || self.config.allow_private_addresses || allow.private() {
            return Ok(());
        }
        Err(HttpError::Denied(format!("port {port} is not allowed; connectors call 80 and 443, and ports ops list in [http] allowed_ports")))
    }

    /// Names are checked by the resolver as they are connected to; IP literals here.
    fn check_literal(&self, allow: &HostAllowlist, host: &str) -> Result<(), HttpError> {
        match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) if !self.config.allow_private_addresses && !allow.private() && is_private(ip) => Err(HttpError::Denied(format!(
                "{ip} is not a public address; refused (set http.allow_private_addresses only for local testing)"
            ))),
            _ => Ok(()),
        }
    }

    pub async fn send(&self, allow: &HostAllowlist, req: Request) -> Result<Response, HttpError> {
        let url = self.admit(allow, &req.url)?;
        self.send_to(allow, url, req).await
    }

    /// Send `req` to `url`, which [`HttpGateway::admit`] passed (possibly moved to a
    /// standby channel since).
    pub async fn send_to(&self, allow: &HostAllowlist, url: url::Url, req: Request) -> Result<Response, HttpError> {
        self.check_literal(allow, url.host_str().unwrap_or(""))?;
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
        let client = if allow.private() { &self.open_client } else { &self.client };
        let mut builder = client.request(method, url).timeout(timeout);
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
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<NonPublicAddress>() {
            return HttpError::Denied(refused.to_string());
        }
        source = err.source();
    }
    // reqwest's text names the whole URL — query (tokens) and userinfo included — and it
    // reaches shop status and logs through the connector: the guest knows its own URL.
    let e = e.without_url();
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

    fn gateway(allow_private: bool) -> HttpGateway {
        HttpGateway::new(HttpConfig { allow_private_addresses: allow_private, timeout_ms: 2000, ..HttpConfig::default() }).unwrap()
    }

    fn get(url: String) -> Request {
        Request { method: Method::Get, url, headers: Vec::new(), body: Vec::new(), timeout_ms: None }
    }

    async fn local_server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    #[tokio::test]
    async fn non_public_addresses_are_refused_by_literal_and_by_name() {
        let addr = local_server().await;
        let gw = gateway(false);
        let allow = HostAllowlist::new(["localhost", "127.0.0.1", "169.254.169.254", "[::1]", "::1"].map(String::from));
        for url in [
            format!("http://127.0.0.1:{}/", addr.port()),
            "http://169.254.169.254/latest/meta-data/".to_string(),
            format!("http://[::1]:{}/", addr.port()),
            // A name that resolves to loopback: refused at connect time, by the resolver.
            format!("http://localhost:{}/", addr.port()),
        ] {
            match gw.send(&allow, get(url.clone())).await {
                Err(HttpError::Denied(why)) => assert!(why.contains("public") || why.contains("port"), "{url}: {why}"),
                other => panic!("{url}: expected a refusal, got {other:?}"),
            }
        }
        match gw.send(&allow, get("http://example.org/".into())).await {
            Err(HttpError::Denied(why)) => assert!(why.contains("not in the connector's allowed hosts"), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // With private addresses allowed (tests, demos), the same name connects.
        let open = gateway(true);
        let resp = open.send(&allow, get(format!("http://localhost:{}/", addr.port()))).await.unwrap();
        assert_eq!((resp.status, resp.body.as_slice()), (200, b"hello".as_slice()));
        // Or for one connector only: the same gateway still refuses the others.
        let one = allow.clone().with_private(true);
        for url in [format!("http://localhost:{}/", addr.port()), format!("http://127.0.0.1:{}/", addr.port())] {
            let resp = gw.send(&one, get(url)).await.unwrap();
            assert_eq!(resp.status, 200);
        }
        assert!(matches!(gw.send(&allow, get(format!("http://localhost:{}/", addr.port()))).await, Err(HttpError::Denied(_))));
    }

    #[test]
    fn ports_beyond_80_and_443_need_ops() {
        let allow = HostAllowlist::new(["api.example.com".to_string()]);
        for url in ["https://api.example.com/", "http://api.example.com/", "https://api.example.com:443/x", "http://api.example.com:80/"] {
            assert!(gateway(false).admit(&allow, url).is_ok(), "{url}");
        }
        for url in ["https://api.example.com:8443/", "http://api.example.com:22/", "https://api.example.com:6379/"] {
            match gateway(false).admit(&allow, url) {
                Err(HttpError::Denied(why)) => assert!(why.contains("[http] allowed_ports"), "{url}: {why}"),
                other => panic!("{url}: expected a refusal, got {other:?}"),
            }
        }
        let granted = HttpGateway::new(HttpConfig { allowed_ports: vec![8443], ..HttpConfig::default() }).unwrap();
        assert!(granted.admit(&allow, "https://api.example.com:8443/").is_ok());
        assert!(granted.admit(&allow, "https://api.example.com:8444/").is_err());
        // A sandbox connector (private addresses allowed) calls any port.
        assert!(gateway(false).admit(&allow.clone().with_private(true), "http://api.example.com:9100/").is_ok());
    }

    #[test]
    fn private_ranges() {
        for ip in [
            "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fd00::1",
            "::ffff:127.0.0.1", "::ffff:169.254.169.254", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255", "192.0.0.8",
            "192.0.2.1", "198.18.0.1", "198.51.100.7", "203.0.113.9", "64:ff9b::a9fe:a9fe", "64:ff9b:1::1", "2002:a9fe:a9fe::1",
            "::a9fe:a9fe", "::127.0.0.1", "2001::1", "2001:db8::1", "ff02::1", "fec0::1", "100::1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111", "100.128.0.1", "1.1.1.1", "2a00:1450:4001::200e", "::ffff:8.8.8.8", "223.5.5.5"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }
}
