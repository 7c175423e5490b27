//! API errors and their mapping to status codes and the JSON error shape.

use crate::machine::TransitionError;
use crate::service::ServiceError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tracing::error;
use twopc::wire::ErrorBody;

/// An error answer: a status, a stable code and a message.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// snake_case code.
    pub code: &'static str,
    /// Message for people.
    pub message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// A 400 with this code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let message = e.to_string();
        match e {
            ServiceError::NotFound(_) => Self::new(
                StatusCode::NOT_FOUND,
                twopc::wire::TRANSACTION_NOT_FOUND,
                message,
            ),
            ServiceError::Invalid(invalid) => Self::bad_request(invalid.code(), message),
            ServiceError::IdempotencyKeyReused(_) => {
                Self::new(StatusCode::CONFLICT, "idempotency_key_reused", message)
            }
            ServiceError::State(t) => match t {
                TransitionError::NotActive(_) => {
                    Self::new(StatusCode::CONFLICT, "transaction_not_active", message)
                }
                TransitionError::DuplicateParticipant(_) => {
                    Self::bad_request("duplicate_participant", message)
                }
                TransitionError::NoParticipants => {
                    Self::new(StatusCode::CONFLICT, "no_participants", message)
                }
                TransitionError::AlreadyCommitted => {
                    Self::new(StatusCode::CONFLICT, "already_committed", message)
                }
                TransitionError::Delegated => {
                    Self::new(StatusCode::CONFLICT, "transaction_delegated", message)
                }
                TransitionError::UnknownParticipant(_) | TransitionError::Invalid { .. } => {
                    error!(error = %message, "state machine refused an internal event");
                    Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
                }
            },
            ServiceError::Log(e) => {
                error!(error = %e, "decision log failure");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "log_unavailable",
                    format!("the decision log failed; retry later ({e})"),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}
