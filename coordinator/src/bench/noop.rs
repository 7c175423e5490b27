//! A participant that answers every call at once and keeps nothing: BENCHMARK USE ONLY.
//!
//! It votes `commit` without preparing anything and forgets every transaction, so it breaks
//! the protocol's promises on purpose; it exists to measure the coordinator's own cost.

use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// The no-op participant's router: `/prepare` and `/commit-one-phase` (answered after
/// `prepare_delay`), `/commit`, `/abort`.
pub fn router(prepare_delay: Duration) -> Router {
    Router::new()
        .route(
            "/prepare",
            post(move || async move {
                if !prepare_delay.is_zero() {
                    tokio::time::sleep(prepare_delay).await;
                }
                Json(json!({"vote": "commit"}))
            }),
        )
        .route(
            "/commit",
            post(|| async { Json(json!({"state": "committed"})) }),
        )
        .route(
            "/abort",
            post(|| async { Json(json!({"state": "aborted"})) }),
        )
        .route(
            "/commit-one-phase",
            post(move || async move {
                if !prepare_delay.is_zero() {
                    tokio::time::sleep(prepare_delay).await;
                }
                Json(json!({"state": "committed"}))
            }),
        )
        .fallback(|| async {
            (
                axum::http::StatusCode::NOT_FOUND,
                Json(json!({"error": {"code": "not_found", "message": "no such route"}})),
            )
        })
}

/// Serves the no-op participant until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    prepare_delay: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(prepare_delay))
        .with_graceful_shutdown(shutdown)
        .await
}
