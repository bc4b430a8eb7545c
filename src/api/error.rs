//! The one place errors become answers: every error a request can meet (invalid input, a refusal,
//! a coordinator failure, a watch that lost its registries) becomes an [`ApiError`], which renders
//! as the REST JSON shape with its HTTP status ([`IntoResponse`]) and as a gRPC status with its code
//! ([`into_status`]). Domain and registry layers return their own errors; nothing below `api`
//! builds an answer.

use std::borrow::Cow;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde::Serialize;
use serde_json::Value;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::model::ValidationError;
use crate::replicate::Failure;
use crate::watch::WatchError;

/// The error codes of the API contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

impl From<WatchError> for ApiError {
    fn from(e: WatchError) -> Self {
        match e {
            WatchError::Unavailable(message) => ApiError::unavailable(message, retry_after()),
        }
    }
}

/// An [`ApiError`] as a gRPC status. The message is the REST `message` (for invalid input
/// `"<field>: <rule>"`). The details are google.rpc's, as any gRPC client library reads them
/// (`grpc-status-details-bin`): `ErrorInfo` (reason: the REST error code in capitals, domain
/// `twinreg`, metadata: the REST `error` and `field`, and each registry's outcome as
/// `registry.<name>` = `ok` or its error), `BadRequest` naming the field for invalid input, and
/// `RetryInfo` when a retry should wait. Metadata repeats the REST fields too: `twinreg-error`,
/// `twinreg-field`, and `retry-after` (seconds).
pub fn into_status(e: ApiError) -> Status {
    let code = match e.code {
        ErrorCode::InvalidRequest | ErrorCode::PayloadTooLarge => Code::InvalidArgument,
        ErrorCode::Forbidden => Code::PermissionDenied,
        ErrorCode::UnknownInstance | ErrorCode::NotFound => Code::NotFound,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::RateLimited => Code::ResourceExhausted,
        ErrorCode::RequestTimeout => Code::DeadlineExceeded,
    };
    let rest_code = match serde_json::to_value(e.code) {
        Ok(Value::String(c)) => c,
        _ => String::new(),
    };
    let mut details = ErrorDetails::new();
    let mut info = std::collections::HashMap::new();
    info.insert("error".to_owned(), rest_code.clone());
    if let Some(field) = &e.field {
        info.insert("field".to_owned(), field.to_string());
        details.add_bad_request_violation(field.as_ref(), e.message.as_str());
    }
    if let Some(Value::Object(registries)) = e.details.as_ref().and_then(|d| d.get("registries")) {
        for (name, outcome) in registries {
            let said = match outcome.get("error").and_then(Value::as_str) {
                Some(error) => error.to_owned(),
                None => "ok".to_owned(),
            };
            info.insert(format!("registry.{name}"), said);
        }
    }
    details.set_error_info(rest_code.to_uppercase(), "twinreg", info);
    if let Some(secs) = e.retry_after_secs {
        details.set_retry_info(Some(std::time::Duration::from_secs(secs)));
    }
    let mut md = MetadataMap::new();
    if let Ok(v) = MetadataValue::try_from(rest_code.as_str()) {
        md.insert("twinreg-error", v);
    }
    if let Some(field) = e.field
        && let Ok(v) = MetadataValue::try_from(field.as_ref())
    {
        md.insert("twinreg-field", v);
    }
    if let Some(secs) = e.retry_after_secs {
        md.insert("retry-after", MetadataValue::from(secs));
    }
    Status::with_error_details_and_metadata(code, e.message, details, md)
}

/// Seconds a client should wait before retrying an unavailable answer, jittered so clients
/// spread out.
pub fn retry_after() -> u64 {
    rand::rng().random_range(1..=4)
}

/// A coordinator failure as the client sees it, with every registry's outcome attached.
pub fn failure(f: Failure) -> ApiError {
    let (code, message, outcomes) = match f {
        Failure::Unavailable(o) => (
            ErrorCode::Unavailable,
            "no registry accepted the request; retry after the Retry-After delay",
            o,
        ),
        Failure::UnknownInstance(o) => (
            ErrorCode::UnknownInstance,
            "no registry knows this instance; register it again",
            o,
        ),
    };
    let mut details = serde_json::Map::new();
    details.insert(
        "registries".into(),
        serde_json::to_value(&outcomes).unwrap_or_default(),
    );
    let mut err = ApiError::new(code, message).with_details(details);
    err.outcomes_log = Some(outcomes.log_line().into());
    if code == ErrorCode::Unavailable {
        ApiError {
            retry_after_secs: Some(retry_after()),
            ..err
        }
    } else {
        err
    }
}
