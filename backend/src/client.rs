//! A blocking client of the control API over its unix socket, for the CLI and tests: one
//! HTTP/1.1 exchange (hyper) per call, on a small runtime of its own, so any thread may call
//! it, a blocking task of another runtime included.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Errors talking to the backend.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("Cannot reach the Nexus backend at {path}; is `nexus backend` running?")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The client's own runtime could not start.
    #[error("Cannot start the client's runtime")]
    Runtime(#[source] std::io::Error),
    /// The request could not be formed (a bad method, path or header).
    #[error("Invalid request to the Nexus backend")]
    Request(#[from] hyper::http::Error),
    /// The HTTP exchange failed midway.
    #[error("Request to the Nexus backend failed")]
    Http(#[from] hyper::Error),
    /// The answer's body is not UTF-8 text (the API answers JSON).
    #[error("The Nexus backend answered {0} bytes that are not UTF-8 text")]
    NotText(usize),
    /// The backend refused the request.
    #[error("Nexus backend answered {status}: {message}")]
    Status { status: u16, message: String },
}

/// A 2xx answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` with an optional JSON body; returns the body of a 2xx answer.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<String, ClientError> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    exchange(socket, method, path, body.as_bytes()).map(|answer| answer.body)
}

/// Sends `method path` with `body` as JSON; returns the whole 2xx answer.
pub fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Answer, ClientError> {
    exchange_with(socket, method, path, &[], body)
}

/// [`exchange`] with extra request headers.
pub fn exchange_with(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer, ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(ClientError::Runtime)?;
    runtime.block_on(send(socket, method, path, headers, body))
}

async fn send(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect { path: socket.to_owned(), source })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let mut request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).map_err(hyper::http::Error::from)?)
        .uri(path)
        .header(HOST, "nexus")
        .header(CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response =
        sender.send_request(request.body(Full::new(Bytes::copy_from_slice(body)))?).await?;
    let status = response.status().as_u16();
    let headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned())
        })
        .collect();
    let bytes = response.into_body().collect().await?.to_bytes();
    connection.abort();
    let body =
        String::from_utf8(bytes.to_vec()).map_err(|e| ClientError::NotText(e.as_bytes().len()))?;
    if !(200..300).contains(&status) {
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(body);
        return Err(ClientError::Status { status, message });
    }
    Ok(Answer { headers, body })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A socket that answers one request with `answer`, as raw bytes.
    fn answering(answer: &'static [u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0; 4096];
            let _ = stream.read(&mut request).unwrap();
            stream.write_all(answer).unwrap();
        });
        (dir, socket)
    }

    #[test]
    fn reads_chunked_answers_and_their_headers() {
        let (_dir, socket) = answering(
            b"HTTP/1.1 200 OK\r\nX-Nexus-Cold-Start-Ms: 12\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        );
        let answer = exchange(&socket, "POST", "/v1/x", b"{}").unwrap();
        assert_eq!(answer.body, "abcde");
        assert_eq!(answer.header("x-nexus-cold-start-ms"), Some("12"));
    }

    #[test]
    fn an_answer_that_is_not_text_is_an_error_not_a_lossy_string() {
        let (_dir, socket) = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n\xff\xfe");
        let error = exchange(&socket, "GET", "/v1/x", b"").unwrap_err();
        assert!(matches!(error, ClientError::NotText(2)), "{error}");
    }

    #[test]
    fn an_error_answer_carries_the_backends_message() {
        let (_dir, socket) = answering(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 28\r\n\r\n{\"error\":\"No function echo\"}",
        );
        let error = exchange(&socket, "GET", "/v1/x", b"").unwrap_err();
        assert_eq!(error.to_string(), "Nexus backend answered 404: No function echo");
    }
}
