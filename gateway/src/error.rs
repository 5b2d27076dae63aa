//! The API's errors: a JSON body `{"error": {"code": CODE, "message": TEXT}}` whose code is
//! stable (scripts match on it) and an HTTP status that fits.
//!
//! | code | status | when |
//! |---|---|---|
//! | `bad_request` | 400 | a malformed request: query, body, cursor, transaction |
//! | `not_found` | 404 | no such key, lease or endpoint |
//! | `method_not_allowed` | 405 | the endpoint has no such method |
//! | `compare_failed` | 409 | a `?cas=` write whose key changed meanwhile |
//! | `change_refused` | 409 | the cluster refused a change (and said why) |
//! | `compacted` | 410 | a watch cursor older than the history the cluster keeps: list again |
//! | `too_large` | 413 | a key, value or body over its limit |
//! | `permission_denied` | 403 | the user may not do this (or no user was shown) |
//! | `unavailable` | 503 | no leader, nodes down, the gateway at its limits (`Retry-After`) |
//! | `indeterminate` | 504 | a write was sent and its outcome is unknown: read before retrying |
//! | `cluster_error` | 502 | the gateway could not talk to the cluster (TLS, handshake, protocol) |

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use corekv_client::Error;
use serde_json::json;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code.
    pub code: &'static str,
    /// What happened, for a person.
    pub message: String,
}

impl ApiError {
    /// A 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A 413 `too_large`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// A 503 `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// An error with this status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        let (status, code) = match &error {
            Error::InvalidArgument(_) | Error::InvalidRequest(_) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            Error::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Error::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Error::Indeterminate(_) => (StatusCode::GATEWAY_TIMEOUT, "indeterminate"),
            Error::PermissionDenied(_) => (StatusCode::FORBIDDEN, "permission_denied"),
            Error::LeaseNotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::Compacted { .. } => (StatusCode::GONE, "compacted"),
            Error::ChangeRefused(_) => (StatusCode::CONFLICT, "change_refused"),
            Error::Registry(_)
            | Error::WrongShard { .. }
            | Error::Protocol(_)
            | Error::Output(_)
            | Error::Handshake { .. }
            | Error::Tls(_) => (StatusCode::BAD_GATEWAY, "cluster_error"),
        };
        ApiError { status, code, message }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A handler's result.
pub type ApiResult<T> = Result<T, ApiError>;
