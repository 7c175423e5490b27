//! The coordinator's HTTP API (base path `/v1`), a thin shell over [`Coordinator`].

mod error;
mod extract;
mod metrics;
pub mod openapi;

pub use error::ApiError;
pub use metrics::Metrics;

use crate::log::DecisionLog;
use crate::service::{Coordinator, MAX_LIST_LIMIT};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use extract::{ApiJson, ApiQuery, TxPath};
use serde::Deserialize;
use std::sync::Arc;
use twopc::wire::{CreateTransaction, ParticipantSpec, TransactionList, TransactionState};

/// Largest request body accepted (participant payloads included).
pub const BODY_LIMIT: usize = 1024 * 1024;
/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// Records listed when `limit` is absent.
pub const DEFAULT_LIST_LIMIT: u32 = 100;

/// Shared state of the handlers.
#[derive(Debug)]
pub struct AppState<L> {
    /// The coordinator.
    pub coordinator: Arc<Coordinator<L>>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
}

/// One route of the API: its method, its path (axum and OpenAPI write `{id}` alike) and its
/// handler. The router is built from [`routes`] alone, so a test can compare them with the
/// OpenAPI document.
struct ApiRoute<L> {
    /// The HTTP method.
    method: Method,
    /// The path pattern.
    path: &'static str,
    /// The handler for that method.
    handler: MethodRouter<Arc<AppState<L>>>,
}

/// Every route the API serves.
fn routes<L: DecisionLog>() -> Vec<ApiRoute<L>> {
    let route = |method, path, handler| ApiRoute {
        method,
        path,
        handler,
    };
    vec![
        route(Method::POST, "/v1/transactions", post(create::<L>)),
        route(Method::GET, "/v1/transactions", get(list::<L>)),
        route(Method::GET, "/v1/transactions/{id}", get(show::<L>)),
        route(
            Method::POST,
            "/v1/transactions/{id}/participants",
            post(enlist::<L>),
        ),
        route(
            Method::POST,
            "/v1/transactions/{id}/commit",
            post(commit::<L>),
        ),
        route(
            Method::POST,
            "/v1/transactions/{id}/abort",
            post(abort::<L>),
        ),
        route(Method::GET, "/healthz", get(healthz)),
        route(Method::GET, "/metrics", get(metrics::<L>)),
        route(
            Method::GET,
            openapi::COORDINATOR_PATH,
            get(openapi::coordinator_document),
        ),
        route(
            Method::GET,
            openapi::PARTICIPANT_PATH,
            get(openapi::participant_document),
        ),
    ]
}

/// Method and path of every route the API serves, in the order they are registered.
pub fn route_list() -> Vec<(Method, &'static str)> {
    routes::<crate::log::AnyLog>()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect()
}

/// The API's router.
pub fn router<L: DecisionLog>(state: Arc<AppState<L>>) -> Router {
    // Routes on one path merge into one method router, as `post(a).get(b)` would.
    routes::<L>()
        .into_iter()
        .fold(Router::new(), |router, r| router.route(r.path, r.handler))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn create<L: DecisionLog>(
    State(app): State<Arc<AppState<L>>>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateTransaction>,
) -> Result<impl IntoResponse, ApiError> {
    let key = idempotency_key(&headers)?;
    let outcome = app.coordinator.create(request, key).await?;
    app.metrics.observe(&outcome.record);
    let status = if outcome.created {
        app.metrics.created();
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(outcome.record.view())))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_LEN)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"),
            )
        })?;
    Ok(Some(key.to_owned()))
}

async fn enlist<L: DecisionLog>(
    State(app): State<Arc<AppState<L>>>,
    TxPath(id): TxPath,
    ApiJson(spec): ApiJson<ParticipantSpec>,
) -> Result<impl IntoResponse, ApiError> {
    let record = app.coordinator.enlist(id, spec).await?;
    Ok((StatusCode::CREATED, Json(record.view())))
}

async fn commit<L: DecisionLog>(
    State(app): State<Arc<AppState<L>>>,
    TxPath(id): TxPath,
) -> Result<impl IntoResponse, ApiError> {
    let record = app.coordinator.commit(id).await?;
    app.metrics.observe(&record);
    Ok(Json(record.view()))
}

async fn abort<L: DecisionLog>(
    State(app): State<Arc<AppState<L>>>,
    TxPath(id): TxPath,
) -> Result<impl IntoResponse, ApiError> {
    let record = app.coordinator.abort(id).await?;
    app.metrics.observe(&record);
    Ok(Json(record.view()))
}

async fn show<L: DecisionLog>(
    State(app): State<Arc<AppState<L>>>,
    TxPath(id): TxPath,
) -> Result<impl IntoResponse, ApiError> {
    let record = app.coordinator.get(id).await?;
    Ok(Json(record.view()))
}

/// Query of the list call.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    limit: Option<u32>,
}

async fn list<L: DecisionLog>(
    State(app): State<Arc<AppState<L>>>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let state = query
        .state
        .map(|s| s.parse::<TransactionState>())
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_state", e.to_string()))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_LIST_LIMIT}"),
        ));
    }
    let records = app.coordinator.list(state, limit).await?;
    Ok(Json(TransactionList {
        transactions: records.iter().map(|r| r.view()).collect(),
    }))
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

async fn metrics<L: DecisionLog>(State(app): State<Arc<AppState<L>>>) -> impl IntoResponse {
    let body = app.metrics.render(
        app.coordinator.inflight().len(),
        app.coordinator.log().write_stats(),
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

#[cfg(test)]
mod tests;
