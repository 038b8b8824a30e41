//! A local HTTP receiver that records every request (for webhooks berth sends: alert
//! notifications, ERP deliveries) and can refuse the first few.

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub query: String,
    pub headers: BTreeMap<String, String>,
    pub body: Bytes,
    /// The status the recorder answered with.
    pub answered: u16,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Default)]
struct Inner {
    got: Mutex<Vec<Received>>,
    /// Per path: requests still to refuse with a 500.
    refuse: Mutex<BTreeMap<String, usize>>,
}

#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
}

async fn record(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let refuse = match inner.refuse.lock().unwrap().get_mut(parts.uri.path()) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    };
    let answered = if refuse { 500 } else { 200 };
    inner.got.lock().unwrap().push(Received {
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts.headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect(),
        body,
        answered,
    });
    if refuse {
        return (StatusCode::INTERNAL_SERVER_ERROR, "receiver down").into_response();
    }
    // What chat robots answer when they take a message.
    axum::Json(serde_json::json!({"errcode": 0, "errmsg": "ok"})).into_response()
}

impl Recorder {
    pub async fn start() -> Recorder {
        let inner = Arc::new(Inner::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(record).with_state(inner.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Recorder { inner, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answer the next `n` requests to `path` with 500.
    pub fn refuse_next(&self, path: &str, n: usize) {
        self.inner.refuse.lock().unwrap().insert(path.to_string(), n);
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.inner.got.lock().unwrap().clone()
    }

    /// Requests to `path` the recorder took (answered 200).
    pub fn taken(&self, path: &str) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.path == path && r.answered == 200).collect()
    }
}
