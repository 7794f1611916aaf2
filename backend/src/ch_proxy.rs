//! `nexus ch-proxy`: a Nexus API socket in front of a Cloud Hypervisor that users run and
//! drive themselves. CH's REST API is forwarded as it is, so `ch-remote --api-socket <proxy>`
//! and orchestrators keep working; a few requests get the backend's hooks around them:
//!
//! ```text
//!  ch-remote ──► proxy socket ─────────────────────────────────────────► CH --api-socket
//!  PUT vm.create      forwarded; the region its `ivshmem.path` names is this VM's (registered)
//!  PUT vm.pause,      first wait until the region has no invocation in flight (quiesce),
//!      vm.snapshot    else answer 503 without forwarding
//!  PUT vm.restore     a new region for the saved region's function, and a copy of the snapshot
//!                     whose config.json names it: CH restores from the copy and the guest
//!                     finds a fresh region at a new epoch
//!  PUT vm.delete,     forwarded; once CH accepted it, the region is released
//!      vmm.shutdown   (CH may exit before its answer to vmm.shutdown is out: a connection
//!                     closed without one, then a socket nobody listens on, is its 204)
//!  anything else      forwarded untouched; CH's answer, errors included, comes back untouched
//! ```
//! The proxy's own refusals use CH's error format, a JSON array of messages. One proxy fronts
//! one VMM (one VM); the backend is reached through its control socket.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{UnixListener, UnixStream};

use crate::client::request;
use crate::storage::error_chain;

/// How long a quiesce waits for the invocations in flight.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(30);
const QUIESCE_POLL: Duration = Duration::from_millis(20);
/// How long a `vmm.shutdown` that got no answer waits for CH's socket to go quiet.
const EXIT_WAIT: Duration = Duration::from_secs(2);
const EXIT_POLL: Duration = Duration::from_millis(20);

/// Errors that stop the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The proxy socket could not be opened.
    #[error("Cannot listen on {}", .0.display())]
    Listen(PathBuf, #[source] std::io::Error),
}

/// The region of the VM behind the proxy.
#[derive(Debug, Clone)]
struct Registered {
    id: String,
}

/// The proxy's state: where CH and the backend are, and the VM's region.
#[derive(Debug)]
pub struct ChProxy {
    ch_socket: PathBuf,
    backend_socket: PathBuf,
    /// Where restore copies of snapshots go.
    work_dir: PathBuf,
    region: Mutex<Option<Registered>>,
}

/// Serves the proxy on `listen` until the process ends.
pub async fn run(
    listen: &Path,
    ch_socket: &Path,
    backend_socket: &Path,
    work_dir: &Path,
) -> Result<(), ProxyError> {
    let listen_error = |e| ProxyError::Listen(listen.to_owned(), e);
    match std::fs::remove_file(listen) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(listen_error(e)),
        _ => {}
    }
    std::fs::create_dir_all(work_dir).map_err(listen_error)?;
    let listener = UnixListener::bind(listen).map_err(listen_error)?;
    let proxy = Arc::new(ChProxy {
        ch_socket: ch_socket.to_owned(),
        backend_socket: backend_socket.to_owned(),
        work_dir: work_dir.to_owned(),
        region: Mutex::new(None),
    });
    tracing::info!(listen = %listen.display(), ch = %ch_socket.display(), "Cloud Hypervisor proxy ready");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("Accept failed: {e}");
                continue;
            }
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| proxy.clone().handle(req));
            // ch-remote reads `Content-Length` case-sensitively, as CH writes it.
            let connection = hyper::server::conn::http1::Builder::new()
                .title_case_headers(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!("Proxy connection ended: {e}");
            }
        });
    }
}

impl ChProxy {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return Ok(ch_error(StatusCode::BAD_REQUEST, &format!("Bad request body: {e}")))
            }
        };
        let endpoint = parts.uri.path().strip_prefix("/api/v1/").unwrap_or_default().to_owned();
        let mut body = body;
        match endpoint.as_str() {
            "vm.create" => self.register(&body).await,
            "vm.pause" | "vm.snapshot" => {
                if let Err(message) = self.quiesce().await {
                    return Ok(ch_error(StatusCode::SERVICE_UNAVAILABLE, &message));
                }
            }
            "vm.restore" => match self.prepare_restore(&body).await {
                Ok(rewritten) => body = rewritten,
                Err(message) => return Ok(ch_error(StatusCode::BAD_REQUEST, &message)),
            },
            _ => {}
        }
        let mut response = match self.forward(&parts, body).await {
            Ok(response) => response,
            Err(_) if endpoint == "vmm.shutdown" && self.ch_exited().await => {
                tracing::info!("Cloud Hypervisor exited before its answer to vmm.shutdown");
                let mut done = Response::new(Full::new(Bytes::new()));
                *done.status_mut() = StatusCode::NO_CONTENT;
                done
            }
            Err(e) => {
                let message =
                    format!("Cannot reach Cloud Hypervisor at {}: {e}", self.ch_socket.display());
                ch_error(StatusCode::BAD_GATEWAY, &message)
            }
        };
        let accepted = response.status().is_success();
        match endpoint.as_str() {
            "vm.delete" | "vmm.shutdown" if accepted => self.release().await,
            "vm.restore" if !accepted => self.release().await,
            _ => {}
        }
        tracing::debug!(endpoint, status = response.status().as_u16(), "Answered");
        without_reason_phrase(&mut response);
        Ok(response)
    }

    /// Sends the request to CH as it came and returns CH's answer as it is, or why no answer
    /// came (the caller decides what that means for the request).
    async fn forward(
        &self,
        parts: &hyper::http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Full<Bytes>>, String> {
        let stream = UnixStream::connect(&self.ch_socket).await.map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut request = Request::builder().method(parts.method.clone()).uri(path);
        for (name, value) in &parts.headers {
            if name != hyper::header::CONTENT_LENGTH {
                request = request.header(name, value);
            }
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Response::from_parts(parts, Full::new(bytes)))
    }

    /// Whether CH's API socket stops taking connections within [`EXIT_WAIT`]: its process is
    /// gone.
    async fn ch_exited(&self) -> bool {
        let deadline = Instant::now() + EXIT_WAIT;
        while Instant::now() < deadline {
            if UnixStream::connect(&self.ch_socket).await.is_err() {
                return true;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
        false
    }

    /// Notes the region a `vm.create` body's `ivshmem.path` names, if the backend serves it.
    async fn register(&self, body: &[u8]) {
        let Some(path) = ivshmem_path(body) else { return };
        match self.region_by_path(&path).await {
            Some(region) => {
                tracing::info!(region = %region["id"], "VM registered with its region");
                let id = region["id"].as_str().unwrap_or_default().to_owned();
                *self.lock() = Some(Registered { id });
            }
            None => {
                tracing::info!(path = %path, "The VM's ivshmem is not a region of this backend")
            }
        }
    }

    /// Waits until the VM's region has no invocation in flight.
    async fn quiesce(&self) -> Result<(), String> {
        let Some(region) = self.lock().clone() else { return Ok(()) };
        let deadline = Instant::now() + QUIESCE_TIMEOUT;
        loop {
            let regions = self.backend("GET", "/v1/regions", None).await?;
            let in_flight = regions
                .as_array()
                .and_then(|all| all.iter().find(|r| r["id"] == region.id.as_str()))
                .and_then(|r| r["invocations_in_flight"].as_u64())
                .unwrap_or(0);
            if in_flight == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "Nexus region {} still has {in_flight} invocations in flight after {QUIESCE_TIMEOUT:?}",
                    region.id
                ));
            }
            tokio::time::sleep(QUIESCE_POLL).await;
        }
    }

    /// A new region for the saved region's function and a copy of the snapshot naming it;
    /// the `vm.restore` body pointed at the copy.
    async fn prepare_restore(&self, body: &[u8]) -> Result<Bytes, String> {
        let mut request: Value =
            serde_json::from_slice(body).map_err(|e| format!("Invalid vm.restore body: {e}"))?;
        let source = request["source_url"].as_str().unwrap_or_default().to_owned();
        let Some(dir) = source.strip_prefix("file://").map(PathBuf::from) else {
            return Ok(Bytes::copy_from_slice(body)); // CH's own error for it
        };
        let config = std::fs::read(dir.join("config.json"))
            .map_err(|e| format!("Cannot read {}/config.json: {e}", dir.display()))?;
        let Some(saved) = ivshmem_path(&config) else { return Ok(Bytes::copy_from_slice(body)) };
        let function = match self.region_by_path(&saved).await {
            Some(region) => region["function"].as_str().unwrap_or_default().to_owned(),
            None => function_of(Path::new(&saved))
                .ok_or_else(|| format!("{saved} is not a Nexus region file"))?,
        };
        let created =
            self.backend("POST", "/v1/regions", Some(&json!({ "function": function }))).await?;
        let (id, path) = (created["id"].as_str(), created["path"].as_str());
        let (Some(id), Some(path)) = (id, path) else {
            return Err(format!("The backend answered {created}"));
        };
        *self.lock() = Some(Registered { id: id.to_owned() });
        let copy = self.work_dir.join(format!("restore-{id}"));
        let path = path.to_owned();
        nexus_plugin::cloud_hypervisor::copy_for_restore(&dir, &copy, |config| {
            config["ivshmem"]["path"] = json!(path);
            Ok(())
        })
        .map_err(|e| error_chain(&e))?;
        request["source_url"] = json!(format!("file://{}", copy.display()));
        tracing::info!(region = id, snapshot = %dir.display(), "Restoring onto a new region");
        Ok(Bytes::from(request.to_string()))
    }

    /// Releases the VM's region (the VM is gone).
    async fn release(&self) {
        let Some(region) = self.lock().take() else { return };
        match self.backend("DELETE", &format!("/v1/regions/{}", region.id), None).await {
            Ok(_) => tracing::info!(region = %region.id, "Region released"),
            Err(e) => tracing::warn!(region = %region.id, "Cannot release the region: {e}"),
        }
    }

    /// The backend's description of the region whose file is `path`.
    async fn region_by_path(&self, path: &str) -> Option<Value> {
        let regions = self.backend("GET", "/v1/regions", None).await.ok()?;
        regions.as_array()?.iter().find(|r| r["path"] == path).cloned()
    }

    /// A control API request to the backend; its JSON answer (`null` when empty).
    async fn backend(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let (socket, method, path, body) =
            (self.backend_socket.clone(), method.to_owned(), path.to_owned(), body.cloned());
        let answer =
            tokio::task::spawn_blocking(move || request(&socket, &method, &path, body.as_ref()))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| error_chain(&e))?;
        if answer.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&answer).map_err(|e| format!("{e}: {answer}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Registered>> {
        self.region.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `ivshmem.path` of a VM config (a `vm.create` body or a snapshot's config.json).
fn ivshmem_path(config: &[u8]) -> Option<String> {
    let config: Value = serde_json::from_slice(config).ok()?;
    config["ivshmem"]["path"].as_str().map(str::to_owned)
}

/// The function of a region file the backend named `<function>-<n>.region`.
fn function_of(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    let (function, n) = stem.rsplit_once('-')?;
    (path.extension()? == "region" && n.parse::<u64>().is_ok()).then(|| function.to_owned())
}

/// Makes `response`'s status line carry no reason phrase, as CH's own server writes it:
/// ch-remote reads everything between the code and the CR as the code (`502 Bad Gateway`,
/// or hyper's default `204 No Content`, fails to parse and hides the answer).
fn without_reason_phrase(response: &mut Response<Full<Bytes>>) {
    response.extensions_mut().insert(hyper::ext::ReasonPhrase::from_static(b""));
}

/// An answer in CH's error format: a JSON array of messages.
fn ch_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = json!(["Error from the Nexus proxy", message]).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// What the fake CH of [`through_the_proxy`] does with the one request it reads.
    enum FakeCh {
        /// Writes this answer.
        Answers(&'static str),
        /// Closes the connection without an answer and stops listening (its process ends).
        Exits,
        /// Closes the connection without an answer, still listening.
        DropsTheAnswer,
    }

    /// The proxy's status line for `PUT /api/v1/<endpoint>` sent to a fake CH.
    async fn through_the_proxy(endpoint: &str, ch: FakeCh) -> String {
        let dir = tempfile::tempdir().unwrap();
        let (ch_socket, listen) = (dir.path().join("ch.sock"), dir.path().join("proxy.sock"));
        let listener = UnixListener::bind(&ch_socket).unwrap();
        let ch_task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = stream.read(&mut [0; 4096]).await.unwrap();
            match ch {
                FakeCh::Answers(answer) => stream.write_all(answer.as_bytes()).await.unwrap(),
                FakeCh::Exits => {
                    drop(listener);
                    return None;
                }
                FakeCh::DropsTheAnswer => {}
            }
            drop(stream);
            Some(listener)
        });
        let (backend, work) = (dir.path().join("no-backend.sock"), dir.path().join("work"));
        let (l, c) = (listen.clone(), ch_socket.clone());
        tokio::spawn(async move { run(&l, &c, &backend, &work).await });
        let mut client = loop {
            match UnixStream::connect(&listen).await {
                Ok(stream) => break stream,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let request = format!(
            "PUT /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        client.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        let _still_listening = ch_task.await.unwrap();
        answer.lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn a_ch_that_exits_before_answering_vmm_shutdown_has_shut_down() {
        // No reason phrase (hyper's default is "No Content"): ch-remote parses the code.
        assert_eq!(through_the_proxy("vmm.shutdown", FakeCh::Exits).await, "HTTP/1.1 204 ");
    }

    #[tokio::test]
    async fn a_ch_that_drops_the_answer_but_still_listens_is_an_error() {
        let status = through_the_proxy("vmm.shutdown", FakeCh::DropsTheAnswer).await;
        assert_eq!(status, "HTTP/1.1 502 ", "an error without a reason phrase, as CH writes it");
    }

    #[tokio::test]
    async fn answers_reach_ch_remote_without_a_reason_phrase() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(through_the_proxy("vmm.ping", FakeCh::Answers(ok)).await, "HTTP/1.1 200 ");
    }

    #[test]
    fn reads_the_region_of_a_config_and_its_function() {
        let body = br#"{"ivshmem": {"path": "/dev/shm/nexus/thumb-nailer-12.region", "size": 1}}"#;
        assert_eq!(ivshmem_path(body).as_deref(), Some("/dev/shm/nexus/thumb-nailer-12.region"));
        assert_eq!(ivshmem_path(b"{}"), None);
        assert_eq!(ivshmem_path(b"not json"), None);
        let function = |p: &str| function_of(Path::new(p));
        assert_eq!(
            function("/dev/shm/nexus/thumb-nailer-12.region").as_deref(),
            Some("thumb-nailer")
        );
        assert_eq!(function("/dev/shm/other.img"), None);
        assert_eq!(function("/dev/shm/nexus/f-x.region"), None);
    }
}
