//! [`ApiError`]: every refusal of the HTTP API, as one JSON object naming the field.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::spec::field_name;
use crate::Error;

/// An HTTP error answer: `{"error": {"field": "bbox", "message": "..."}}` with a status.
/// `field` is `null` when no single field is at fault (a body that is not JSON at all).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The request field at fault (JSON field or path/query parameter name).
    pub field: Option<String>,
    /// What is wrong, in one sentence.
    pub message: String,
}

impl ApiError {
    /// A 400 naming `field`.
    pub fn bad(field: &str, message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, field: Some(field.into()), message: message.into() }
    }

    /// Any status, naming `field` when there is one.
    pub fn new(status: StatusCode, field: Option<&str>, message: impl Into<String>) -> Self {
        ApiError { status, field: field.map(str::to_string), message: message.into() }
    }
}

impl From<Error> for ApiError {
    /// Bad input → 400 naming the field (a CLI flag becomes its JSON name); a missing record
    /// → 404; the rest are the server's fault → 500.
    fn from(e: Error) -> Self {
        match &e {
            Error::InvalidInput { at, detail } => ApiError::bad(&field_name(at), detail.clone()),
            Error::UnknownSpace(_) => ApiError::bad("space", e.to_string()),
            Error::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, None, e.to_string()),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, None, e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"field": self.field, "message": self.message, "status": self.status.as_u16()}});
        (self.status, Json(body)).into_response()
    }
}
