//! A small async client for the coordinator API (`/v1/transactions`).

use crate::error::ClientError;
use crate::wire::{
    CreateTransaction, ErrorBody, ParticipantSpec, TransactionId, TransactionList,
    TransactionState, TransactionView,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Default time one call may take. A one-shot create-and-commit answers only once the
/// prepares are in, which the transaction's own deadline bounds, so this is generous.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How much of an unexpected error body is kept in [`ClientError::Api`].
const BODY_EXCERPT: usize = 200;

/// A client of one coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorClient {
    /// The HTTP client (connection pool), shareable between clients.
    http: reqwest::Client,
    /// The coordinator's base URL, without a trailing slash; `/v1/...` is appended.
    base: String,
    /// Time limit of each call.
    timeout: Duration,
}

impl CoordinatorClient {
    /// A client of the coordinator at `base_url` (e.g. `http://127.0.0.1:7800`).
    pub fn new(base_url: impl Into<String>) -> Self {
        Self::with_http(reqwest::Client::new(), base_url)
    }

    /// A client that uses an existing HTTP client.
    pub fn with_http(http: reqwest::Client, base_url: impl Into<String>) -> Self {
        let base = base_url.into().trim_end_matches('/').to_owned();
        Self {
            http,
            base,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another time limit per call.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The coordinator's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /v1/transactions`: creates a transaction (and commits it at once with
    /// `"commit": true`). The same `idempotency_key` again gives the same transaction.
    pub async fn create(
        &self,
        body: &CreateTransaction,
        idempotency_key: Option<&str>,
    ) -> Result<TransactionView, ClientError> {
        let mut req = self.http.post(self.url("/v1/transactions")).json(body);
        if let Some(key) = idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        self.send(req).await
    }

    /// `POST /v1/transactions/{id}/participants`: enlists a participant.
    pub async fn enlist(
        &self,
        id: TransactionId,
        participant: &ParticipantSpec,
    ) -> Result<TransactionView, ClientError> {
        let url = self.url(&format!("/v1/transactions/{id}/participants"));
        self.send(self.http.post(url).json(participant)).await
    }

    /// `POST /v1/transactions/{id}/commit`: asks for commit; answers the resulting state.
    pub async fn commit(&self, id: TransactionId) -> Result<TransactionView, ClientError> {
        let url = self.url(&format!("/v1/transactions/{id}/commit"));
        self.send(self.http.post(url)).await
    }

    /// `POST /v1/transactions/{id}/abort`: asks for abort.
    pub async fn abort(&self, id: TransactionId) -> Result<TransactionView, ClientError> {
        let url = self.url(&format!("/v1/transactions/{id}/abort"));
        self.send(self.http.post(url)).await
    }

    /// `GET /v1/transactions/{id}`: the transaction, or `None` when the coordinator answers
    /// `404 transaction_not_found` (it has no record: presumed abort).
    ///
    /// Any other 404 (a wrong base URL, a proxy, the coordinator's `not_found` for an unknown
    /// route) is a [`ClientError::Api`] error, not `None`: the in-doubt resolver aborts on
    /// `None`, and must not do so because a URL was mistyped.
    pub async fn get(&self, id: TransactionId) -> Result<Option<TransactionView>, ClientError> {
        let url = self.url(&format!("/v1/transactions/{id}"));
        let resp = self.http.get(url).timeout(self.timeout).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if status == StatusCode::NOT_FOUND
            && serde_json::from_slice::<ErrorBody>(&body)
                .is_ok_and(|e| e.error.code == crate::wire::TRANSACTION_NOT_FOUND)
        {
            return Ok(None);
        }
        decode(status, &body).map(Some)
    }

    /// `GET /v1/transactions?state=S&limit=N`: recent transactions, optionally in one state.
    pub async fn list(
        &self,
        state: Option<TransactionState>,
        limit: Option<u32>,
    ) -> Result<Vec<TransactionView>, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(state) = state {
            query.push(("state", state.as_str().to_owned()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        let req = self.http.get(self.url("/v1/transactions")).query(&query);
        let list: TransactionList = self.send(req).await?;
        Ok(list.transactions)
    }

    /// The full URL of `path`.
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `req` and decodes a success body as `T` or an error body as [`ClientError::Api`].
    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = req.timeout(self.timeout).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        decode(status, &body)
    }
}

/// Decodes an answer: `T` on success, the error shape otherwise.
fn decode<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T, ClientError> {
    if status.is_success() {
        return serde_json::from_slice(body).map_err(|e| ClientError::InvalidResponse {
            status: status.as_u16(),
            message: e.to_string(),
        });
    }
    Err(match serde_json::from_slice::<ErrorBody>(body) {
        Ok(err) => ClientError::Api {
            status: status.as_u16(),
            code: err.error.code,
            message: err.error.message,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: "unexpected_response".to_owned(),
            message: String::from_utf8_lossy(body)
                .chars()
                .take(BODY_EXCERPT)
                .collect(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_become_api_errors() {
        let body = br#"{"error":{"code":"not_active","message":"already decided"}}"#;
        let err = decode::<TransactionView>(StatusCode::CONFLICT, body).unwrap_err();
        match err {
            ClientError::Api {
                status,
                code,
                message,
            } => {
                assert_eq!(status, 409);
                assert_eq!(code, "not_active");
                assert_eq!(message, "already decided");
            }
            other => panic!("expected an API error, got {other:?}"),
        }
    }

    #[test]
    fn other_bodies_are_kept_as_unexpected() {
        let err = decode::<TransactionView>(StatusCode::BAD_GATEWAY, b"upstream down").unwrap_err();
        assert!(
            matches!(err, ClientError::Api { status: 502, ref code, ref message }
                if code == "unexpected_response" && message == "upstream down"),
            "{err:?}"
        );
    }

    #[test]
    fn base_urls_lose_their_trailing_slash() {
        let c = CoordinatorClient::new("http://127.0.0.1:7800/");
        assert_eq!(
            c.url("/v1/transactions"),
            "http://127.0.0.1:7800/v1/transactions"
        );
    }
}
