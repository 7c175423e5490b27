//! Extractors that answer bad input with the JSON error shape instead of axum's plain text.

use super::error::ApiError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use twopc::wire::TransactionId;

/// `axum::Json` with JSON errors: 400 `invalid_json`, 415, 413.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let message = rejection.body_text();
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected a body with Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(_) if rejection_is_too_large(&message) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message)
        }
        _ => ApiError::bad_request("invalid_json", message),
    }
}

fn rejection_is_too_large(message: &str) -> bool {
    message.contains("length limit")
}

/// `axum::Query` with JSON errors.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(e @ QueryRejection::FailedToDeserializeQueryString(_)) => {
                Err(ApiError::bad_request("invalid_query", e.body_text()))
            }
            Err(e) => Err(ApiError::bad_request("invalid_query", e.body_text())),
        }
    }
}

/// The `{id}` path segment as a transaction id: 400 `invalid_transaction_id` (JSON) if it is
/// not a UUID or not even valid UTF-8.
#[derive(Debug)]
pub struct TxPath(pub TransactionId);

impl<S: Send + Sync> FromRequestParts<S> for TxPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(raw)) => transaction_id(&raw).map(Self),
            Err(e) => Err(ApiError::bad_request(
                "invalid_transaction_id",
                e.body_text(),
            )),
        }
    }
}

/// Parses a transaction id: 400 `invalid_transaction_id` if it is not a UUID.
pub fn transaction_id(raw: &str) -> Result<TransactionId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_transaction_id",
            format!(
                "'{}' is not a transaction id (a UUID)",
                raw.chars().take(64).collect::<String>()
            ),
        )
    })
}
