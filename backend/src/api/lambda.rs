//! Lambda's Invoke REST call (`POST /2015-03-31/functions/{name}/invocations`), so a function
//! that calls others over HTTP with the real boto3 (`AWS_ENDPOINT_URL_LAMBDA` at `api.listen`)
//! reaches the same deployed functions: the baseline for `Invoke` through the channel.
//!
//! `X-Amz-Invocation-Type` is `RequestResponse` (the default: 200 and the result, with
//! `X-Amz-Function-Error: Unhandled` when the handler raised), `Event` (202 at once) or
//! `DryRun` (204). Like the rest of the API on TCP they need the API token (`auth.rs`), which
//! a real boto3 gives as its secret access key: it signs with SigV4, which the backend checks.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{Api, ApiError};

const INVOCATION_TYPE: &str = "x-amz-invocation-type";
const FUNCTION_ERROR: &str = "x-amz-function-error";
const EXECUTED_VERSION: &str = "x-amz-executed-version";

/// The route, for the route table.
pub const ROUTE: &str = "/2015-03-31/functions/{name}/invocations";

/// Whether `path` is one of this route's.
pub fn is_route(path: &str) -> bool {
    let name =
        path.strip_prefix("/2015-03-31/functions/").and_then(|p| p.strip_suffix("/invocations"));
    name.is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

pub async fn invoke(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
    event: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let kind = headers.get(INVOCATION_TYPE).and_then(|v| v.to_str().ok());
    match kind.unwrap_or("RequestResponse") {
        "RequestResponse" => {
            let invoked = api.functions.invoke(&name, &event, &[]).await?;
            let mut response =
                ([(header::CONTENT_TYPE, "application/json")], invoked.outcome.result)
                    .into_response();
            let headers = response.headers_mut();
            headers.insert(EXECUTED_VERSION, HeaderValue::from_static("$LATEST"));
            if !invoked.outcome.ok {
                headers.insert(FUNCTION_ERROR, HeaderValue::from_static("Unhandled"));
            }
            Ok(response)
        }
        "Event" => {
            let functions = api.functions.clone();
            tokio::spawn(async move {
                if let Err(e) = functions.invoke(&name, &event, &[]).await {
                    tracing::warn!(function = %name, "An Event invocation failed: {e}");
                }
            });
            Ok(StatusCode::ACCEPTED.into_response())
        }
        "DryRun" => match api.functions.list().iter().any(|f| f.spec.name == name) {
            true => Ok(StatusCode::NO_CONTENT.into_response()),
            false => Err(ApiError(StatusCode::NOT_FOUND, format!("No function {name}"))),
        },
        other => Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("{INVOCATION_TYPE}: {other:?} is not RequestResponse, Event or DryRun"),
        )),
    }
}
