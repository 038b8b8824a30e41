//! The API's listener: accepts TCP connections (TLS when `[server] tls_cert` and
//! `tls_key` are set) and serves them over HTTP/1.1, bounded so that no client can take
//! the port away from the others:
//!
//! - at most `max_connections` at once. A connection accepted past it closes the one
//!   that has been idle longest (no request in flight, a keep-alive waiting or headers
//!   not yet complete), so idle and slow-header connections cannot lock out a health
//!   probe or the ERP; when every connection is busy the new one is closed at once.
//!   Out of file descriptors (EMFILE), the longest-idle one is closed too;
//! - `header_read_timeout_secs` for a request's headers, which also bounds how long a
//!   kept-alive connection may sit idle and how long a TLS handshake may take.
//!
//! Counted in `berth_api_connections` and `berth_api_connections_closed_total{reason}`.
//! Certificate and key files are read again when they change, so a renewed certificate
//! is served without a restart.

use axum::Router;
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

/// How the listener bounds its clients (from `[server]`).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// Counts open connections and the ones closed.
    pub metrics: Arc<super::metrics::ApiMetrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {why}")]
    NoKey { path: PathBuf, why: String },
    #[error("the certificate in {cert} and the key in {key} do not make a TLS server: {why}")]
    Mismatch { cert: PathBuf, key: PathBuf, why: String },
}

/// The certificate and key in use, read again when either file changes.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<rustls::ServerConfig>, Option<std::time::SystemTime>)>,
}

fn modified(cert: &Path, key: &Path) -> Option<std::time::SystemTime> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    m(cert).max(m(key))
}

fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |what, path: &Path| std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source });
    let cert_pem = read("certificate", cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem).filter_map(Result::ok).collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.to_path_buf() });
    }
    let key_pem = read("key", key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey { path: key.to_path_buf(), why: e.to_string() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|e| TlsError::Mismatch { cert: cert.to_path_buf(), key: key.to_path_buf(), why: e.to_string() })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Tls {
    /// Read both files now: a bad certificate or key stops start-up.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Tls>, TlsError> {
        let config = server_config(cert, key)?;
        let stamp = modified(cert, key);
        Ok(Arc::new(Tls { cert: cert.to_path_buf(), key: key.to_path_buf(), current: RwLock::new((config, stamp)) }))
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().unwrap_or_else(|e| e.into_inner()).0.clone())
    }

    /// Read the files again if they changed; a pair that does not load is logged and the
    /// one in use stays (a renewal written in two steps loads once both are in place).
    pub fn refresh(&self) {
        let stamp = modified(&self.cert, &self.key);
        if stamp == self.current.read().unwrap_or_else(|e| e.into_inner()).1 {
            return;
        }
        match server_config(&self.cert, &self.key) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = (config, stamp);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => tracing::error!(error = %e, "the changed TLS certificate or key does not load; still serving the previous one"),
        }
    }
}

/// One open connection, as the accept loop sees it.
struct Conn {
    /// Requests in flight, answers still being written included.
    busy: AtomicUsize,
    /// Milliseconds since the listener started, when it last finished or began a request.
    last_active_ms: AtomicU64,
    close: Notify,
}

#[derive(Default)]
struct Table {
    next: u64,
    open: HashMap<u64, Arc<Conn>>,
}

impl Table {
    /// The connection idle longest, taken out of the table.
    fn take_idlest(&mut self) -> Option<Arc<Conn>> {
        let id = self
            .open
            .iter()
            .filter(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, c)| c.last_active_ms.load(Ordering::Acquire))
            .map(|(id, _)| *id)?;
        self.open.remove(&id)
    }
}

/// Resolves once shutdown is asked for (or the sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn closed(limits: &Limits, reason: &'static str) {
    limits.metrics.connection_closed(reason);
}

/// Serve `app` on `listener` until `shutdown` turns true, then let the requests in
/// flight finish.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, tls: Option<Arc<Tls>>, mut shutdown: watch::Receiver<bool>) {
    let started = Instant::now();
    let table = Arc::new(Mutex::new(Table::default()));
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(tls) = &tls {
        let (tls, mut stop) = (tls.clone(), shutdown.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => tls.refresh(),
                    _ = stopped(&mut stop) => return,
                }
            }
        });
    }
    let mut last_emfile_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut shutdown) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors: free the idlest connection's; otherwise a short pause.
                let freed = table.lock().unwrap_or_else(|e| e.into_inner()).take_idlest();
                if let Some(c) = &freed {
                    c.close.notify_one();
                    closed(&limits, "evicted");
                }
                if last_emfile_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(error = %e, freed = freed.is_some(), "accepting a connection failed (logged once per 10 s)");
                    last_emfile_log = Some(Instant::now());
                }
                if freed.is_none() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                continue;
            }
        };
        let conn = Arc::new(Conn { busy: AtomicUsize::new(0), last_active_ms: AtomicU64::new(started.elapsed().as_millis() as u64), close: Notify::new() });
        let id = {
            let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
            if t.open.len() >= limits.max_connections {
                match t.take_idlest() {
                    Some(victim) => {
                        victim.close.notify_one();
                        closed(&limits, "evicted");
                    }
                    None => {
                        drop(t);
                        drop(stream);
                        closed(&limits, "refused");
                        continue;
                    }
                }
            }
            t.next += 1;
            let id = t.next;
            t.open.insert(id, conn.clone());
            limits.metrics.connections.set(t.open.len() as i64);
            id
        };
        let _ = stream.set_nodelay(true);
        let (app, table, limits, tls, stop) = (app.clone(), table.clone(), limits.clone(), tls.clone(), shutdown.clone());
        tasks.spawn(async move {
            match tls {
                None => serve_conn(stream, app, conn, &limits, started, stop).await,
                Some(tls) => {
                    let handshake = tokio::time::timeout(limits.header_read_timeout, tls.acceptor().accept(stream));
                    tokio::select! {
                        r = handshake => match r {
                            Ok(Ok(stream)) => serve_conn(stream, app, conn, &limits, started, stop).await,
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => closed(&limits, "timeout"),
                        },
                        _ = conn.close.notified() => {}
                    }
                }
            }
            let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
            t.open.remove(&id);
            limits.metrics.connections.set(t.open.len() as i64);
        });
        // Reap finished connection tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

async fn serve_conn<IO>(io: IO, app: Router, conn: Arc<Conn>, limits: &Limits, started: Instant, mut stop: watch::Receiver<bool>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tracker = conn.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (app, tracker) = (app.clone(), tracker.clone());
        tracker.busy.fetch_add(1, Ordering::AcqRel);
        tracker.last_active_ms.store(started.elapsed().as_millis() as u64, Ordering::Release);
        async move {
            let guard = BusyGuard { conn: tracker, started };
            let resp = app.oneshot(req.map(axum::body::Body::new)).await.unwrap_or_else(|never| match never {});
            // The connection stays busy until the answer is written (or dropped).
            Ok::<_, std::convert::Infallible>(resp.map(|body| axum::body::Body::new(Guarded { body, _guard: guard })))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    let served = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    tokio::select! {
        r = served.as_mut() => {
            if let Err(e) = r {
                if e.is_timeout() {
                    closed(&limits, "timeout");
                } else {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
        }
        _ = conn.close.notified() => {}
        _ = stopped(&mut stop) => {
            served.as_mut().graceful_shutdown();
            let _ = served.await;
        }
    }
}

/// Marks a connection idle again when its answer is done.
struct BusyGuard {
    conn: Arc<Conn>,
    started: Instant,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.conn.last_active_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Release);
        self.conn.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body that keeps its connection marked busy until it is written.
struct Guarded {
    body: axum::body::Body,
    _guard: BusyGuard,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
