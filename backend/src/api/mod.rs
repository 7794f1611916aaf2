//! The control API: HTTP/1.1 over a unix socket (and optionally loopback TCP).
//!
//! One route table; `openapi.yaml` beside this file describes it and a test keeps the two in
//! step.

use std::sync::Arc;

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::backend::{Backend, BackendError};
use crate::invoke::{InvokeError, Outcome};
use crate::metrics::CONTENT_TYPE;
use crate::storage::error_chain;

/// The route table: (method, path) pairs, also checked against `openapi.yaml`.
pub const ROUTES: [(&str, &str); 6] = [
    ("get", "/v1/status"),
    ("get", "/v1/regions"),
    ("post", "/v1/regions"),
    ("delete", "/v1/regions/{id}"),
    ("post", "/v1/regions/{id}/invoke"),
    ("get", "/metrics"),
];

/// Header set on an invocation whose handler raised (the body is Lambda's error shape).
pub const FUNCTION_ERROR: &str = "x-nexus-function-error";

/// The API's router over `backend`.
pub fn router(backend: Arc<Backend>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/regions", get(list_regions).post(create_region))
        .route("/v1/regions/{id}", delete(remove_region))
        .route("/v1/regions/{id}/invoke", post(invoke_region))
        .route("/metrics", get(metrics))
        .with_state(backend)
}

/// An error answer: `{"error": message}` with a status code.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        let code = match &e {
            BackendError::NoRegion(_) => StatusCode::NOT_FOUND,
            BackendError::FunctionName(_) => StatusCode::BAD_REQUEST,
            BackendError::Invoke { source, .. } => match source {
                InvokeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                InvokeError::NotReady => StatusCode::CONFLICT,
                InvokeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                InvokeError::Gone => StatusCode::GONE,
                _ => StatusCode::BAD_GATEWAY,
            },
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(code, error_chain(&e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

async fn status(State(backend): State<Arc<Backend>>) -> Json<serde_json::Value> {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "regions": backend.regions().len(),
        "storage": backend.config().storage.url,
        "cache_bytes": backend.cache_bytes(),
    }))
}

async fn list_regions(State(backend): State<Arc<Backend>>) -> Response {
    Json(backend.regions()).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRegion {
    function: String,
}

async fn create_region(
    State(backend): State<Arc<Backend>>,
    Json(body): Json<CreateRegion>,
) -> Result<Response, ApiError> {
    let info = backend.create_region(&body.function)?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn remove_region(
    State(backend): State<Arc<Backend>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let backend = backend.clone();
    // Joining the serving thread blocks; keep it off the async workers.
    tokio::task::spawn_blocking(move || backend.remove_region(&id))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvokeQuery {
    /// Seconds to wait for the result.
    timeout: Option<f64>,
}

/// The body is the event JSON; the answer is the handler's result JSON.
async fn invoke_region(
    State(backend): State<Arc<Backend>>,
    Path(id): Path<String>,
    Query(query): Query<InvokeQuery>,
    event: axum::body::Bytes,
) -> Result<Response, ApiError> {
    serde_json::from_slice::<serde_json::Value>(&event)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("The event is not JSON: {e}")))?;
    let deadline =
        Duration::from_secs_f64(query.timeout.unwrap_or(DEFAULT_TIMEOUT_S).clamp(0.001, 3600.0));
    let outcome = backend.invoke_region(&id, &event, deadline).await?;
    Ok(outcome_response(outcome))
}

/// Default seconds an invocation may take.
const DEFAULT_TIMEOUT_S: f64 = 900.0;

fn outcome_response(outcome: Outcome) -> Response {
    let mut response =
        ([(header::CONTENT_TYPE, "application/json")], outcome.result).into_response();
    if !outcome.ok {
        response
            .headers_mut()
            .insert(FUNCTION_ERROR, header::HeaderValue::from_static("Unhandled"));
    }
    response
}

async fn metrics(State(backend): State<Arc<Backend>>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], backend.metrics().encode()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_describes_every_route() {
        let spec: serde_json::Value =
            serde_norway::from_str(include_str!("openapi.yaml")).expect("openapi.yaml parses");
        for (method, path) in ROUTES {
            assert!(spec["paths"][path][method].is_object(), "openapi.yaml lacks {method} {path}");
        }
        let documented: usize = spec["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|ops| ops.as_object().unwrap().len())
            .sum();
        assert_eq!(documented, ROUTES.len(), "openapi.yaml documents routes the API lacks");
    }
}
