//! Who may call what outside `/v1/admin`: a middleware in front of each group of routes
//! checks the bearer token against the access the group needs before any extractor
//! reads the query or the body, and puts the `Caller` in the request's extensions.
//! Operator calls here (dead-letter replay and purge) are audited like admin calls, and
//! so is every refused attempt at one.

use super::error;
use berth_core::audit::{AuditEntry, AuditLog};
use crate::auth::{access_name, AdminAuth, AuthError};
use berth_types::access::Access;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;

pub struct Gate {
    pub auth: Arc<AdminAuth>,
    pub audit: Arc<AuditLog>,
    pub metrics: Arc<super::metrics::ApiMetrics>,
}

impl Gate {
    fn audit(&self, who: &str, action: &str, target: &str, outcome: &str, detail: String) {
        if let Err(e) = self.audit.append(&AuditEntry::now(who, action, target, None, outcome, detail)) {
            tracing::error!(error = %e, action, "cannot write the audit log");
        }
    }
}

fn count_refusal(metrics: &super::metrics::ApiMetrics, reason: &'static str, need: Access) {
    metrics.refused(reason, access_name(need));
}

/// The answer to a refused call: 401 (with `WWW-Authenticate`) or 403, counted.
pub(super) fn refused(metrics: &super::metrics::ApiMetrics, e: &AuthError, need: Access) -> Response {
    let (status, reason) = match e {
        AuthError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
        AuthError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
    };
    count_refusal(metrics, reason, need);
    let mut resp = error(status, e.to_string());
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// The middleware: `need` is what the routes behind it require; `whole_host` routes
/// show every shop's data and are refused to a token scoped to some shops.
pub async fn check(State((gate, need, whole_host)): State<(Arc<Gate>, Access, bool)>, mut req: Request, next: Next) -> Response {
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let audited = need == Access::Operate && req.method() != Method::GET && req.method() != Method::HEAD;
    let target = req.uri().path().to_string();
    let action = if target.contains("/stock/") { "stock-dead-letters" } else { "order-dead-letters" };
    let action = format!("{action}-{}", target.rsplit('/').next().unwrap_or_default());
    match gate.auth.authorize_api(header, need) {
        Ok(caller) if whole_host && caller.scope.is_some() => {
            count_refusal(&gate.metrics, "forbidden", need);
            error(
                StatusCode::FORBIDDEN,
                format!("token `{}` is scoped to some shops; {} covers every shop (read /v1/shops and /v1/orders/queue instead)", caller.name, target),
            )
        }
        Ok(caller) => {
            let who = caller.name.clone();
            req.extensions_mut().insert(caller);
            let resp = next.run(req).await;
            if audited {
                let status = resp.status();
                let outcome = if status.is_success() {
                    "ok"
                } else if status.is_server_error() {
                    "failed"
                } else {
                    "refused"
                };
                gate.audit(&who, &action, &target, outcome, if status.is_success() { String::new() } else { format!("HTTP {}", status.as_u16()) });
            }
            resp
        }
        Err(e) => {
            if audited {
                let (who, outcome) = match &e {
                    AuthError::Unauthenticated(_) => ("-".to_string(), "unauthorized"),
                    AuthError::Forbidden { name, .. } => (name.clone(), "forbidden"),
                };
                gate.audit(&who, &action, &target, outcome, e.to_string());
            }
            refused(&gate.metrics, &e, need)
        }
    }
}
