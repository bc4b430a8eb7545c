//! Errors, and the one place they are mapped to what a client sees.
//!
//! Registry errors carry which registry and whether a retry can help; the coordinator reads that.
//! [`ApiError`] is the edge type: one code, one HTTP status, one JSON shape.

use std::borrow::Cow;
use std::fmt;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::registry::RegistryKind;

/// A client sent something the API's rules do not allow.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: Cow<'static, str>,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a registry operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryErrorKind {
    /// Could not reach it, or it is not connected yet: a retry later can help.
    Unavailable,
    /// It did not answer within the deadline: a retry later can help.
    Timeout,
    /// Not tried: its circuit breaker is open after repeated failures.
    CircuitOpen,
    /// It answered and refused (bad credentials, a permission, a value it will not store): a retry
    /// with the same input will not help until an operator acts.
    Rejected,
}

#[derive(Debug, Clone, thiserror::Error)]
pub struct RegistryError {
    pub registry: RegistryKind,
    pub kind: RegistryErrorKind,
    pub message: String,
    /// The request could not reach the registry (connection refused or reset, member down):
    /// another member of the same registry may do.
    pub unreachable: bool,
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl RegistryError {
    pub fn unavailable(registry: RegistryKind, message: impl Into<String>) -> Self {
        Self {
            registry,
            kind: RegistryErrorKind::Unavailable,
            message: message.into(),
            unreachable: false,
        }
    }

    pub fn circuit_open(registry: RegistryKind, message: impl Into<String>) -> Self {
        Self {
            kind: RegistryErrorKind::CircuitOpen,
            ..Self::unavailable(registry, message)
        }
    }

    pub fn unreachable(registry: RegistryKind, message: impl Into<String>) -> Self {
        Self {
            unreachable: true,
            ..Self::unavailable(registry, message)
        }
    }

    pub fn rejected(registry: RegistryKind, message: impl Into<String>) -> Self {
        Self {
            registry,
            kind: RegistryErrorKind::Rejected,
            message: message.into(),
            unreachable: false,
        }
    }

    pub fn timeout(registry: RegistryKind, after: std::time::Duration) -> Self {
        Self {
            registry,
            kind: RegistryErrorKind::Timeout,
            message: format!("timed out after {} ms", after.as_millis()),
            unreachable: false,
        }
    }

    pub fn retryable(&self) -> bool {
        self.kind != RegistryErrorKind::Rejected
    }
}

/// The error codes of the API contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    Forbidden,
    UnknownInstance,
    PayloadTooLarge,
    Unavailable,
    NotFound,
    /// 429: the caller's identity is over `limits.requests_per_second` (not in the contract, which is
    /// silent on rate limits; see docs/api.md).
    RateLimited,
    /// 408: the request body did not arrive within `limits.body_read_timeout`.
    RequestTimeout,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::UnknownInstance | Self::NotFound => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

/// An error as the client sees it. `details` carries extra JSON (e.g. per-registry outcomes of a
/// 503), merged into the body beside `error` and `message`.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<Cow<'static, str>>,
    pub retry_after_secs: Option<u64>,
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
    /// Each registry's outcome in one line, for the request log (not sent to the client).
    pub outcomes_log: Option<Box<str>>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
            retry_after_secs: None,
            details: None,
            outcomes_log: None,
        }
    }

    pub fn forbidden(identity: &str, service: &str) -> Self {
        Self::new(
            ErrorCode::Forbidden,
            format!(
                "identity '{identity}' may not act on service '{service}'; ask an operator for a grant in authz.grants"
            ),
        )
    }

    pub fn unavailable(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(ErrorCode::Unavailable, message)
        }
    }

    pub fn with_details(mut self, details: serde_json::Map<String, serde_json::Value>) -> Self {
        self.details = Some(details);
        self
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self {
            field: Some(e.field.clone()),
            ..Self::new(ErrorCode::InvalidRequest, e.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.details.unwrap_or_default();
        body.insert(
            "error".into(),
            serde_json::to_value(self.code).unwrap_or_default(),
        );
        body.insert("message".into(), self.message.into());
        if let Some(field) = self.field {
            body.insert("field".into(), field.into_owned().into());
        }
        let mut resp = (self.code.status(), Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(line) = self.outcomes_log {
            resp.extensions_mut().insert(OutcomesLog(line.into()));
        }
        resp
    }
}

/// Each registry's outcome of a request in one line (`etcd=ok/3ms consul=error: timed out`),
/// attached to the response for the request log line.
#[derive(Debug, Clone)]
pub struct OutcomesLog(pub String);
