//! The participant's HTTP endpoints: `POST /prepare`, `POST /commit`, `POST /abort`.

use super::{Handler, Participant};
use crate::error::ParticipantError;
use crate::store::StateStore;
use crate::wire::{
    ErrorBody, ONE_PHASE_PATH, OnePhaseOutcome, OutcomeRequest, OutcomeResponse, PrepareRequest,
    Vote,
};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use std::sync::Arc;

impl<S: StateStore, H: Handler<S::Db>> Participant<S, H> {
    /// The endpoints at `/prepare`, `/commit`, `/abort` and `/commit-one-phase`; nest or merge
    /// it where the coordinator should find them.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/prepare", post(prepare::<S, H>))
            .route("/commit", post(commit::<S, H>))
            .route("/abort", post(abort::<S, H>))
            .route(
                &format!("/{ONE_PHASE_PATH}"),
                post(commit_one_phase::<S, H>),
            )
            .with_state(self)
    }

    /// The three endpoints under `base` (e.g. `/twopc` serves `/twopc/prepare`); `""` or `"/"`
    /// serves them at the root.
    pub fn router_at(self: Arc<Self>, base: &str) -> Router {
        let base = base.trim_end_matches('/');
        if base.is_empty() {
            return self.router();
        }
        let base = if base.starts_with('/') {
            base.to_owned()
        } else {
            format!("/{base}")
        };
        Router::new().nest(&base, self.router())
    }
}

async fn prepare<S: StateStore, H: Handler<S::Db>>(
    State(p): State<Arc<Participant<S, H>>>,
    WireJson(req): WireJson<PrepareRequest>,
) -> Result<Json<Vote>, ApiError> {
    Ok(Json(p.prepare(&req).await?))
}

async fn commit_one_phase<S: StateStore, H: Handler<S::Db>>(
    State(p): State<Arc<Participant<S, H>>>,
    WireJson(req): WireJson<PrepareRequest>,
) -> Result<Json<OnePhaseOutcome>, ApiError> {
    Ok(Json(p.commit_one_phase(&req).await?))
}

async fn commit<S: StateStore, H: Handler<S::Db>>(
    State(p): State<Arc<Participant<S, H>>>,
    WireJson(req): WireJson<OutcomeRequest>,
) -> Result<Json<OutcomeResponse>, ApiError> {
    p.commit(&req).await?;
    Ok(Json(OutcomeResponse {
        state: "committed".to_owned(),
    }))
}

async fn abort<S: StateStore, H: Handler<S::Db>>(
    State(p): State<Arc<Participant<S, H>>>,
    WireJson(req): WireJson<OutcomeRequest>,
) -> Result<Json<OutcomeResponse>, ApiError> {
    p.abort(&req).await?;
    Ok(Json(OutcomeResponse {
        state: "aborted".to_owned(),
    }))
}

/// A JSON request body whose rejections are answered in the wire's error shape, not as axum's
/// plain text.
pub struct WireJson<T>(pub T);

impl<T: DeserializeOwned, St: Send + Sync> FromRequest<St> for WireJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &St) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::from_rejection(&rejection)),
        }
    }
}

/// An error answer: a status and `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: ErrorBody,
}

impl ApiError {
    /// An error answer with this status, code and message.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody::new(code, message),
        }
    }

    /// The answer for a body axum's `Json` refused: malformed JSON and missing or mistyped
    /// fields are 400, a missing `Content-Type: application/json` is 415.
    fn from_rejection(rejection: &JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(_) => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                rejection.body_text(),
            ),
            JsonRejection::JsonDataError(_) => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                rejection.body_text(),
            ),
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                rejection.body_text(),
            ),
            _ => Self::new(rejection.status(), "invalid_request", rejection.body_text()),
        }
    }
}

impl From<ParticipantError> for ApiError {
    fn from(err: ParticipantError) -> Self {
        let status =
            StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            // The cause stays in the participant's log; the coordinator learns only that it failed.
            tracing::error!(error = %err, source = ?std::error::Error::source(&err), "participant call failed");
            let message = match &err {
                ParticipantError::Handler { op, .. } => {
                    format!("the participant's {op} handler failed; see the participant's log")
                }
                _ => "the participant failed internally; see its log".to_owned(),
            };
            return Self::new(status, err.code(), message);
        }
        Self::new(status, err.code(), err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}
