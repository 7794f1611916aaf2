//! The control API: HTTP/1.1 over a unix socket (and optionally TCP, behind a token).
//!
//! One route table; `openapi.yaml` beside this file describes it and a test keeps the two in
//! step. `lambda` serves Lambda's own Invoke call for functions that call others over HTTP.
//! `auth` guards the TCP listener (`sigv4` checks the signatures of Lambda's callers).

mod auth;
mod lambda;
mod sigv4;

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
use crate::functions::{ColdStart, FunctionError, FunctionSpec, Functions};
use crate::invoke::{InvokeError, Outcome};
use crate::metrics::CONTENT_TYPE;
use crate::storage::error_chain;
pub use auth::{Token, TokenError};
use nexus_channel::wire::ObjectRef;

/// The route table: (method, path) pairs, also checked against `openapi.yaml`.
pub const ROUTES: [(&str, &str); 15] = [
    ("get", "/v1/status"),
    ("get", "/v1/regions"),
    ("post", "/v1/regions"),
    ("delete", "/v1/regions/{id}"),
    ("post", "/v1/regions/{id}/invoke"),
    ("get", "/v1/functions"),
    ("post", "/v1/functions"),
    ("delete", "/v1/functions/{name}"),
    ("post", "/v1/functions/{name}/invoke"),
    ("post", "/v1/functions/{name}/snapshot"),
    ("post", "/v1/functions/{name}/stop"),
    ("post", "/v1/libvirt/domains"),
    ("delete", "/v1/libvirt/domains/{name}"),
    ("post", lambda::ROUTE),
    ("get", "/metrics"),
];

/// Header giving the milliseconds a cold invocation spent starting the function's VM.
pub const COLD_START: &str = "x-nexus-cold-start-ms";
/// Header saying how a cold invocation's VM started: `boot` or `restore`.
pub const COLD_START_FROM: &str = "x-nexus-cold-start-from";
/// Request header naming objects the invocation will read, as a JSON array of
/// `{"bucket", "key"}`: on a cold start they are fetched while the VM starts.
pub const PREFETCH: &str = "x-nexus-prefetch";
/// Header giving how many hinted objects were staged before the handler ran.
pub const PREFETCHED: &str = "x-nexus-prefetched";

/// What every handler reaches.
#[derive(Debug, Clone)]
pub struct Api {
    pub backend: Arc<Backend>,
    pub functions: Arc<Functions>,
}

/// Header set on an invocation whose handler raised (the body is Lambda's error shape).
pub const FUNCTION_ERROR: &str = "x-nexus-function-error";

/// The API's router.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/regions", get(list_regions).post(create_region))
        .route("/v1/regions/{id}", delete(remove_region))
        .route("/v1/regions/{id}/invoke", post(invoke_region))
        .route("/v1/functions", get(list_functions).post(deploy_function))
        .route("/v1/functions/{name}", delete(remove_function))
        .route("/v1/functions/{name}/invoke", post(invoke_function))
        .route("/v1/functions/{name}/snapshot", post(snapshot_function))
        .route("/v1/functions/{name}/stop", post(stop_function))
        .route("/v1/libvirt/domains", post(attach_domain))
        .route("/v1/libvirt/domains/{name}", delete(release_domain))
        .route(lambda::ROUTE, post(lambda::invoke))
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .with_state(api)
}

/// The API's router for TCP: every request but `GET /metrics` needs `token`.
pub fn tcp_router(api: Api, token: Arc<Token>) -> Router {
    router(api).layer(axum::middleware::from_fn_with_state(token, auth::require_token))
}

/// An error answer: `{"error": message}` with a status code.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        let message = error_chain(&e);
        Self::from_backend(&e, message)
    }
}

impl ApiError {
    fn from_backend(e: &BackendError, message: String) -> Self {
        let code = match e {
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
        Self(code, message)
    }
}

impl From<FunctionError> for ApiError {
    fn from(e: FunctionError) -> Self {
        let code = match &e {
            FunctionError::Backend(inner) => return ApiError::from_backend(inner, error_chain(&e)),
            FunctionError::Spec(spec) if spec.is_forbidden() => StatusCode::FORBIDDEN,
            FunctionError::Spec(_) => StatusCode::BAD_REQUEST,
            FunctionError::Disk(disk) if disk.is_the_functions() => StatusCode::BAD_REQUEST,
            FunctionError::NoFunction(_) => StatusCode::NOT_FOUND,
            FunctionError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            FunctionError::Boot { .. } => StatusCode::BAD_GATEWAY,
            FunctionError::Domain(_) => StatusCode::BAD_REQUEST,
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

/// A path no route matches: say so (axum's own answer has no body).
async fn no_route(uri: axum::http::Uri) -> ApiError {
    let message = format!("No such API path {}: see openapi.yaml for the routes", uri.path());
    ApiError(StatusCode::NOT_FOUND, message)
}

async fn no_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    let message = format!("{} does not take {method}: see openapi.yaml", uri.path());
    ApiError(StatusCode::METHOD_NOT_ALLOWED, message)
}

async fn status(State(api): State<Api>) -> Json<serde_json::Value> {
    let backend = &api.backend;
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "regions": backend.regions().len(),
        "storage": backend.config().storage.url,
        "cache_bytes": backend.cache_bytes(),
        "probes": backend.probe_status(),
    }))
}

async fn list_regions(State(api): State<Api>) -> Response {
    Json(api.backend.regions()).into_response()
}

/// The body of `POST /v1/regions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRegion {
    pub function: String,
}

async fn create_region(
    State(api): State<Api>,
    Json(body): Json<CreateRegion>,
) -> Result<Response, ApiError> {
    let info = api.backend.create_region(&body.function)?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn remove_region(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let backend = api.backend.clone();
    // Joining the serving thread blocks; keep it off the async workers.
    tokio::task::spawn_blocking(move || backend.remove_region(&id))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}

/// The query of `POST /v1/regions/{id}/invoke`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeQuery {
    /// Seconds to wait for the result.
    pub timeout: Option<f64>,
}

impl InvokeQuery {
    /// How long the invocation may take: `timeout`, within 1 ms and an hour.
    pub fn deadline(&self) -> Result<Duration, ApiError> {
        let seconds = self.timeout.unwrap_or(DEFAULT_TIMEOUT_S);
        if seconds.is_nan() {
            let message = "timeout: NaN is not a number of seconds".to_owned();
            return Err(ApiError(StatusCode::BAD_REQUEST, message));
        }
        Ok(Duration::from_secs_f64(seconds.clamp(0.001, 3600.0)))
    }
}

/// The body is the event JSON; the answer is the handler's result JSON.
/// Objects named in `x-nexus-prefetch` are fetched first and staged for the invocation.
async fn invoke_region(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(query): Query<InvokeQuery>,
    headers: axum::http::HeaderMap,
    event: axum::body::Bytes,
) -> Result<Response, ApiError> {
    serde_json::from_slice::<serde_json::Value>(&event)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("The event is not JSON: {e}")))?;
    let deadline = query.deadline()?;
    let hints = prefetch_hints(&headers)?;
    let mut staged = api.backend.prefetch(&api.backend.region_policy(&id)?, &hints);
    futures::future::join_all(staged.iter().map(|object| object.ended())).await;
    staged.retain(|object| object.is_whole());
    let prefetched = staged.len();
    let outcome = api.backend.invoke_region(&id, &event, deadline, staged).await?;
    let mut response = outcome_response(outcome);
    if headers.contains_key(PREFETCH) {
        response.headers_mut().insert(PREFETCHED, header::HeaderValue::from(prefetched));
    }
    Ok(response)
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

async fn list_functions(State(api): State<Api>) -> Response {
    Json(api.functions.list()).into_response()
}

async fn deploy_function(
    State(api): State<Api>,
    Json(spec): Json<FunctionSpec>,
) -> Result<Response, ApiError> {
    // Building the code disk runs mkfs.
    let info = blocking(move || api.functions.deploy(spec)).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn remove_function(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    blocking(move || api.functions.remove(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs `work` (seconds of blocking: mkfs, stopping VMMs) off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, FunctionError> + Send + 'static,
) -> Result<T, ApiError> {
    let done = tokio::task::spawn_blocking(work).await;
    Ok(done.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??)
}

/// The body is the event JSON; the answer is the handler's result JSON.
async fn invoke_function(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    event: axum::body::Bytes,
) -> Result<Response, ApiError> {
    serde_json::from_slice::<serde_json::Value>(&event)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("The event is not JSON: {e}")))?;
    let hints = prefetch_hints(&headers)?;
    let invoked = api.functions.invoke(&name, &event, &hints).await?;
    let mut response = outcome_response(invoked.outcome);
    let (took, from) = match invoked.cold_start {
        Some(ColdStart::Booted(took)) => (took, "boot"),
        Some(ColdStart::Restored(took)) => (took, "restore"),
        None => return Ok(response),
    };
    let headers = response.headers_mut();
    headers.insert(COLD_START, header::HeaderValue::from(took.as_millis() as u64));
    headers.insert(COLD_START_FROM, header::HeaderValue::from_static(from));
    headers.insert(PREFETCHED, header::HeaderValue::from(invoked.prefetched));
    Ok(response)
}

/// The objects named by the prefetch header.
pub fn prefetch_hints(headers: &axum::http::HeaderMap) -> Result<Vec<ObjectRef>, ApiError> {
    let Some(value) = headers.get(PREFETCH) else { return Ok(Vec::new()) };
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Hint {
        bucket: String,
        key: String,
    }
    let bad = |e: String| ApiError(StatusCode::BAD_REQUEST, format!("{PREFETCH}: {e}"));
    let hints: Vec<Hint> =
        serde_json::from_slice(value.as_bytes()).map_err(|e| bad(e.to_string()))?;
    Ok(hints.into_iter().map(|h| ObjectRef { bucket: h.bucket, key: h.key }).collect())
}

async fn snapshot_function(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let snapshot = api.functions.snapshot(&name).await?;
    Ok(Json(json!({ "snapshot": snapshot.dir, "vmm": snapshot.vmm })).into_response())
}

async fn stop_function(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    blocking(move || api.functions.stop_vms(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The body is the XML of an operator's libvirt domain, as libvirt's hook script gets it.
async fn attach_domain(State(api): State<Api>, xml: String) -> Result<Response, ApiError> {
    // Creating the region and its doorbell blocks briefly.
    let attached = blocking(move || api.functions.attach_domain(&xml)).await?;
    Ok((StatusCode::CREATED, Json(attached)).into_response())
}

async fn release_domain(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let domain = name.clone();
    match blocking(move || Ok(api.functions.release_domain(&name))).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => {
            let message = format!("No operator's domain {domain} has a Nexus region");
            Err(ApiError(StatusCode::NOT_FOUND, message))
        }
    }
}

async fn metrics(State(api): State<Api>) -> Response {
    api.functions.refresh_metrics();
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], api.backend.metrics().encode()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_is_a_number_of_seconds() {
        let deadline = |query: &str| {
            let uri: axum::http::Uri = format!("/v1/regions/r/invoke?{query}").parse().unwrap();
            let Query(query) = Query::<InvokeQuery>::try_from_uri(&uri).unwrap();
            query.deadline().map_err(|ApiError(code, _)| code)
        };
        assert_eq!(deadline(""), Ok(Duration::from_secs(900)));
        assert_eq!(deadline("timeout=2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(deadline("timeout=inf"), Ok(Duration::from_secs(3600)));
        assert_eq!(deadline("timeout=-1"), Ok(Duration::from_millis(1)));
        // `timeout=NaN` reached Duration::from_secs_f64, which panicked.
        assert_eq!(deadline("timeout=NaN"), Err(StatusCode::BAD_REQUEST));
    }

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
