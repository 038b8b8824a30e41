//! The `berth deploy | activate | rollback | pause | resume | connectors` commands: a
//! small client of the admin API. The server comes from `--url` or `BERTH_URL`, the
//! bearer token from `BERTH_TOKEN` (never from the command line, where `ps` would show it),
//! a CA certificate for an https:// berth from `--ca-file` or `BERTH_CA_FILE`.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("set BERTH_TOKEN to an admin token from berth.toml [admin] tokens")]
    NoToken,
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a PEM CA certificate: {message}")]
    BadCa { path: String, message: String },
    #[error("cannot reach berth at {url}: {message}; is it running, and is --url (or BERTH_URL) right?")]
    Unreachable { url: String, message: String },
    #[error("berth answered {status}: {message}")]
    Refused { status: u16, message: String },
    /// A tape to send could not be read.
    #[error("{0}")]
    Tape(String),
    /// The command line lacks something the call needs.
    #[error("{0}")]
    Usage(String),
}

pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

pub enum Body {
    Empty,
    Json(serde_json::Value),
    Wasm(Vec<u8>),
}

impl AdminClient {
    pub fn from_env(url: Option<String>, ca_file: Option<std::path::PathBuf>) -> Result<Self, ClientError> {
        let token = std::env::var("BERTH_TOKEN").ok().filter(|t| !t.is_empty()).ok_or(ClientError::NoToken)?;
        let base = url
            .or_else(|| std::env::var("BERTH_URL").ok())
            .unwrap_or_else(|| "http://127.0.0.1:8080".into())
            .trim_end_matches('/')
            .to_string();
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(300)).no_proxy();
        if let Some(path) = ca_file.or_else(|| std::env::var_os("BERTH_CA_FILE").filter(|v| !v.is_empty()).map(Into::into)) {
            let shown = path.display().to_string();
            let pem = std::fs::read(&path).map_err(|source| ClientError::Read { path: shown.clone(), source })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ClientError::BadCa { path: shown.clone(), message: e.to_string() })?;
            if certs.is_empty() {
                return Err(ClientError::BadCa { path: shown, message: "no certificate in it".into() });
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| ClientError::Unreachable {
            url: base.clone(),
            message: e.to_string(),
        })?;
        Ok(AdminClient { base, token, http })
    }

    /// Call `path` and return the JSON answer of a 2xx.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Body) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        req = match body {
            Body::Empty => req,
            Body::Json(v) => req.header("content-type", "application/json").body(v.to_string()),
            Body::Wasm(b) => req.header("content-type", "application/wasm").body(b),
        };
        let resp = req.send().await.map_err(|e| ClientError::Unreachable { url: self.base.clone(), message: e.to_string() })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            let message = value["error"].as_str().map(String::from).unwrap_or_else(|| value.to_string());
            Err(ClientError::Refused { status, message })
        }
    }
}

/// Read a component file for `deploy`.
pub fn read_component(path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read { path: path.display().to_string(), source })
}
