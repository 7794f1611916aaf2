//! A blocking client of the control API, for the CLI and tests: over the unix socket, or
//! over TCP (`api.listen`) with the API token. One HTTP/1.1 exchange (hyper) per call, on a
//! small runtime of its own, so any thread may call it, a blocking task of another runtime
//! included.

use std::fmt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

/// Where the backend's API is.
#[derive(Clone)]
pub enum Endpoint {
    /// Its unix socket (`api.socket`).
    Unix(PathBuf),
    /// Its TCP listener (`api.listen`, `HOST:PORT`) and the token it asks for.
    Tcp { addr: String, token: String },
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Tcp { addr, .. } => write!(f, "http://{addr}"),
        }
    }
}

/// Errors talking to the backend.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint could not be reached.
    #[error("Cannot reach the Nexus backend at {endpoint}; is `nexus backend` running?")]
    Connect {
        endpoint: String,
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

impl Endpoint {
    /// Sends `method path` with an optional JSON body; returns the body of a 2xx answer.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<String, ClientError> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.exchange(method, path, &[], body.as_bytes()).map(|answer| answer.body)
    }

    /// Sends `method path` with extra request headers and `body` as JSON; returns the whole
    /// 2xx answer.
    pub fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(ClientError::Runtime)?;
        runtime.block_on(async {
            let connect_err = |source| ClientError::Connect { endpoint: self.to_string(), source };
            let request = Exchange { method, path, headers, body };
            match self {
                Endpoint::Unix(socket) => {
                    let stream = UnixStream::connect(socket).await.map_err(connect_err)?;
                    request.send(stream, "nexus", None).await
                }
                Endpoint::Tcp { addr, token } => {
                    let stream = TcpStream::connect(addr.as_str()).await.map_err(connect_err)?;
                    request.send(stream, addr, Some(token)).await
                }
            }
        })
    }
}

/// [`Endpoint::request`] on the unix socket `socket`.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<String, ClientError> {
    Endpoint::Unix(socket.to_owned()).request(method, path, body)
}

/// [`Endpoint::exchange`] on the unix socket `socket`, without extra headers.
pub fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Answer, ClientError> {
    Endpoint::Unix(socket.to_owned()).exchange(method, path, &[], body)
}

/// [`Endpoint::exchange`] on the unix socket `socket`.
pub fn exchange_with(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer, ClientError> {
    Endpoint::Unix(socket.to_owned()).exchange(method, path, headers, body)
}

/// One request.
struct Exchange<'a> {
    method: &'a str,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
    body: &'a [u8],
}

impl Exchange<'_> {
    /// Sends the request over `stream` (naming `host`, with `token` as bearer token if given)
    /// and reads the answer.
    async fn send<S>(
        self,
        stream: S,
        host: &str,
        token: Option<&str>,
    ) -> Result<Answer, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        let method =
            Method::from_bytes(self.method.as_bytes()).map_err(hyper::http::Error::from)?;
        let mut request = Request::builder()
            .method(method)
            .uri(self.path)
            .header(HOST, host)
            .header(CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in self.headers {
            request = request.header(*name, *value);
        }
        let body = Full::new(Bytes::copy_from_slice(self.body));
        let response = sender.send_request(request.body(body)?).await?;
        let status = response.status().as_u16();
        let reason = response.status().canonical_reason().unwrap_or_default();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(name, value)| {
                (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned())
            })
            .collect();
        let bytes = response.into_body().collect().await?.to_bytes();
        connection.abort();
        let body = String::from_utf8(bytes.to_vec())
            .map_err(|e| ClientError::NotText(e.as_bytes().len()))?;
        if !(200..300).contains(&status) {
            return Err(ClientError::Status { status, message: error_message(&body, reason) });
        }
        Ok(Answer { headers, body })
    }
}

/// The message of an error answer: its JSON `error`, else its text, else the status's reason
/// (an answer with no body still says something).
fn error_message(body: &str, reason: &str) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned));
    let message = from_json.unwrap_or_else(|| body.trim().to_owned());
    match (message.is_empty(), reason.is_empty()) {
        (false, _) => message,
        (true, false) => reason.to_owned(),
        (true, true) => "(the answer carried no message)".to_owned(),
    }
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

    #[test]
    fn over_tcp_the_token_goes_as_a_bearer_token() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0; 4096];
            let n = stream.read(&mut request).unwrap();
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
            String::from_utf8_lossy(&request[..n]).to_lowercase()
        });
        let endpoint = Endpoint::Tcp { addr: addr.clone(), token: "s3cr3t-t0ken".into() };
        assert_eq!(endpoint.request("GET", "/v1/status", None).unwrap(), "{}");
        let request = server.join().unwrap();
        assert!(request.contains("authorization: bearer s3cr3t-t0ken\r\n"), "{request}");
        assert!(request.contains(&format!("host: {addr}\r\n")), "{request}");
        assert_eq!(format!("{endpoint:?}"), format!("http://{addr}"), "the token is not shown");
    }

    #[test]
    fn error_messages_are_never_empty() {
        assert_eq!(error_message(r#"{"error": "No region x"}"#, "Not Found"), "No region x");
        assert_eq!(error_message("Failed to parse\n", "Bad Request"), "Failed to parse");
        assert_eq!(error_message("", "Not Found"), "Not Found");
        assert_eq!(error_message("", ""), "(the answer carried no message)");
    }
}
