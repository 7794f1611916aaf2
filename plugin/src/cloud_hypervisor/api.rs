//! Cloud Hypervisor's REST API on its unix socket, with hyper.
//!
//! ```text
//!  any thread (blocking)              "ch-api" runtime (one tokio worker per adapter)
//!  Api::put("vm.boot", body) ──────►  connect SOCKET, HTTP/1.1 handshake,
//!                                     PUT /api/v1/vm.boot, collect the body
//!        ◄──────────────────────────  200/204: the JSON body (or nothing); else ApiError::Refused
//! ```
//! Every request opens its own connection (CH serves one request at a time anyway). The
//! requests run on a runtime the adapter owns, so a caller may block on them from any thread,
//! even one that drives another runtime, without nesting runtimes. CH answers an error with a
//! JSON array of messages, outermost first: `["Error from API", "The VM could not boot", ...]`.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

/// Errors of one API request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be reached.
    #[error("Cannot connect to {}", .0.display())]
    Connect(PathBuf, #[source] std::io::Error),
    /// The HTTP exchange failed.
    #[error("HTTP exchange failed")]
    Http(#[from] hyper::Error),
    /// No answer in time.
    #[error("No answer within {0:?}")]
    Timeout(Duration),
    /// Cloud Hypervisor answered with an error.
    #[error("Cloud Hypervisor answered {status}: {message}")]
    Refused { status: u16, message: String },
    /// The answer was not the JSON expected.
    #[error("Unexpected answer: {0}")]
    Answer(String),
    /// The adapter's runtime has shut down.
    #[error("The ch-api runtime is gone")]
    Gone,
}

/// The tokio runtime the API requests of one adapter run on; shut down without blocking when
/// the last handle goes (possibly inside another runtime).
#[derive(Debug)]
pub struct ApiRuntime {
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
}

impl ApiRuntime {
    pub fn start() -> std::io::Result<Arc<ApiRuntime>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ch-api")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(Arc::new(ApiRuntime { runtime: Mutex::new(Some(runtime)), handle }))
    }
}

impl Drop for ApiRuntime {
    fn drop(&mut self) {
        let runtime = self.runtime.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(runtime) = runtime {
            runtime.shutdown_background();
        }
    }
}

/// A client of one VMM's API socket.
#[derive(Debug, Clone)]
pub struct Api {
    socket: PathBuf,
    timeout: Duration,
    runtime: Arc<ApiRuntime>,
}

impl Api {
    pub fn new(socket: &Path, timeout: Duration, runtime: Arc<ApiRuntime>) -> Api {
        Api { socket: socket.to_owned(), timeout, runtime }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `PUT /api/v1/<endpoint>` with an optional JSON body; the JSON answer, `Null` if empty.
    pub fn put(&self, endpoint: &str, body: Option<&Value>) -> Result<Value, ApiError> {
        self.request(Method::PUT, endpoint, body.map(Value::to_string))
    }

    /// `GET /api/v1/<endpoint>`.
    pub fn get(&self, endpoint: &str) -> Result<Value, ApiError> {
        self.request(Method::GET, endpoint, None)
    }

    fn request(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<String>,
    ) -> Result<Value, ApiError> {
        let (reply, answer) = mpsc::channel();
        let (socket, path) = (self.socket.clone(), format!("/api/v1/{endpoint}"));
        let timeout = self.timeout;
        self.runtime.handle.spawn(async move {
            let exchange = exchange(&socket, method, &path, body);
            let result = match tokio::time::timeout(timeout, exchange).await {
                Ok(result) => result,
                Err(_) => Err(ApiError::Timeout(timeout)),
            };
            // The caller may have given up waiting; nothing to do then.
            let _ = reply.send(result);
        });
        answer.recv().map_err(|_| ApiError::Gone)?
    }
}

/// One request on a fresh connection.
async fn exchange(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<Value, ApiError> {
    let stream =
        UnixStream::connect(socket).await.map_err(|e| ApiError::Connect(socket.to_owned(), e))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends with the exchange; an error here surfaces as the request's own.
        let _ = connection.await;
    });
    let mut request = Request::builder().method(method).uri(path).header("host", "localhost");
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ApiError::Answer(e.to_string()))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        return Err(ApiError::Refused { status: status.as_u16(), message: error_message(&bytes) });
    }
    if bytes.is_empty() || status == StatusCode::NO_CONTENT {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Answer(format!("{e}: {}", String::from_utf8_lossy(&bytes))))
}

/// CH's error body (a JSON array of messages) as one line; any other body as it is.
pub(crate) fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<Vec<String>>(body) {
        Ok(messages) if !messages.is_empty() => messages.join(": "),
        _ => String::from_utf8_lossy(body).trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_chs_error_messages() {
        let body = br#"["Error from API","The VM could not boot","VM config is missing"]"#;
        assert_eq!(
            error_message(body),
            "Error from API: The VM could not boot: VM config is missing"
        );
        assert_eq!(error_message(b"plain text\n"), "plain text");
    }

    #[test]
    fn a_missing_socket_is_a_connect_error_not_a_hang() {
        let runtime = ApiRuntime::start().unwrap();
        let api = Api::new(Path::new("/nonexistent/ch.sock"), Duration::from_secs(5), runtime);
        assert!(matches!(api.get("vmm.ping"), Err(ApiError::Connect(..))));
    }
}
