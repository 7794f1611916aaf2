//! A minimal blocking client of the control API over its unix socket, for the CLI and tests.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

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
    /// The exchange failed midway.
    #[error("Request to the Nexus backend failed")]
    Io(#[from] std::io::Error),
    /// The answer is not HTTP.
    #[error("Malformed answer from the Nexus backend")]
    Malformed,
    /// The backend refused the request.
    #[error("Nexus backend answered {status}: {message}")]
    Status { status: u16, message: String },
}

/// A 2xx answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Header lines, names lower-cased.
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
    let mut stream = UnixStream::connect(socket)
        .map_err(|source| ClientError::Connect { path: socket.to_owned(), source })?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: nexus\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    )?;
    for (name, value) in headers {
        write!(stream, "{name}: {value}\r\n")?;
    }
    write!(stream, "\r\n")?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, rest) = text.split_once("\r\n\r\n").ok_or(ClientError::Malformed)?;
    let status_line = head.lines().next().unwrap_or_default();
    let mut status_fields = status_line.splitn(3, ' ');
    let status: u16 =
        status_fields.nth(1).and_then(|s| s.parse().ok()).ok_or(ClientError::Malformed)?;
    let reason = status_fields.next().unwrap_or_default().trim();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(rest)? } else { rest.to_owned() };
    if !(200..300).contains(&status) {
        return Err(ClientError::Status { status, message: error_message(&body, reason) });
    }
    Ok(Answer { headers, body })
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

fn dechunk(mut rest: &str) -> Result<String, ClientError> {
    let mut body = String::new();
    loop {
        let (size, tail) = rest.split_once("\r\n").ok_or(ClientError::Malformed)?;
        let size = usize::from_str_radix(size.trim(), 16).map_err(|_| ClientError::Malformed)?;
        if size == 0 {
            return Ok(body);
        }
        body.push_str(tail.get(..size).ok_or(ClientError::Malformed)?);
        rest = tail.get(size + 2..).ok_or(ClientError::Malformed)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_chunked_bodies() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(), "abcde");
        assert!(dechunk("zz\r\n").is_err());
    }

    #[test]
    fn error_messages_are_never_empty() {
        assert_eq!(error_message(r#"{"error": "No region x"}"#, "Not Found"), "No region x");
        assert_eq!(error_message("Failed to parse\n", "Bad Request"), "Failed to parse");
        assert_eq!(error_message("", "Not Found"), "Not Found");
        assert_eq!(error_message("", ""), "(the answer carried no message)");
    }
}
