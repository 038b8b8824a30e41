//! Request bodies: JSON, also when the client did not label it so.
//!
//! `curl -d '{…}'` labels its body `application/x-www-form-urlencoded`, and many HTTP
//! clients send none at all; refusing those for a missing `application/json` only made
//! the first call of every newcomer fail. A request carrying an `Authorization` header
//! has its body read as JSON whatever it is labelled (a browser cannot send that header
//! to another site without asking first, so no web page can forge such a call). Without
//! one — the API left open on loopback — the body must be labelled JSON: a web page can
//! post plain text or a form to 127.0.0.1, but not JSON, without the browser asking the
//! API first.

use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use serde::de::DeserializeOwned;

/// A JSON request body (see the module docs for the labels taken).
pub struct JsonIn<T>(pub T);

/// Why a body was refused: 400 (not the JSON expected), 413 (too large), 415 (labelled
/// as something else on an unauthenticated call).
#[derive(Debug)]
pub struct BodyRejection {
    pub status: StatusCode,
    pub why: String,
}

/// Handlers take the body as `Result<JsonIn<T>, BodyRejection>` and answer the refusal
/// themselves (with the shape they expected); this is for any that does not.
impl axum::response::IntoResponse for BodyRejection {
    fn into_response(self) -> axum::response::Response {
        crate::error(self.status, self.why)
    }
}

impl std::fmt::Display for BodyRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// How a request's body is labelled, as far as reading it as JSON goes.
#[derive(Debug, PartialEq)]
enum Label {
    Json,
    /// No label, plain text or a form: JSON when the call is authenticated.
    Loose,
    Other(String),
}

fn label(content_type: Option<&HeaderValue>) -> Label {
    let Some(value) = content_type else { return Label::Loose };
    let essence = value.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match essence.as_str() {
        "" | "text/plain" | "application/x-www-form-urlencoded" => Label::Loose,
        e if e == "application/json" || (e.starts_with("application/") && e.ends_with("+json")) => Label::Json,
        e => Label::Other(e.to_string()),
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonIn<T> {
    type Rejection = BodyRejection;

    async fn from_request(mut req: Request, state: &S) -> Result<Self, BodyRejection> {
        let authenticated = req.headers().contains_key(header::AUTHORIZATION);
        match label(req.headers().get(header::CONTENT_TYPE)) {
            Label::Json => {}
            Label::Loose if authenticated => {
                req.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            Label::Loose => {
                return Err(BodyRejection {
                    status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    why: "a call without an Authorization header must label its JSON body `Content-Type: application/json` (a web page could send plain text or a form here)".into(),
                })
            }
            Label::Other(other) => {
                return Err(BodyRejection {
                    status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    why: format!("the body is labelled `{other}`; send JSON (Content-Type: application/json)"),
                })
            }
        }
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonIn(v)),
            Err(e) => Err(BodyRejection { status: e.status(), why: e.body_text() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_json_unless_labelled_as_something_else() {
        let of = |v: &'static str| label(Some(&HeaderValue::from_static(v)));
        assert_eq!(label(None), Label::Loose);
        assert_eq!(of("application/x-www-form-urlencoded"), Label::Loose, "curl -d");
        assert_eq!(of("text/plain;charset=UTF-8"), Label::Loose);
        assert_eq!(of("application/json; charset=utf-8"), Label::Json);
        assert_eq!(of("Application/JSON"), Label::Json);
        assert_eq!(of("application/merge-patch+json"), Label::Json);
        assert_eq!(of("text/xml"), Label::Other("text/xml".into()));
        assert_eq!(of("multipart/form-data; boundary=x"), Label::Other("multipart/form-data".into()));
    }
}
