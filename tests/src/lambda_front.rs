//! The conventional platform's Lambda Invoke endpoint: function-to-function calls served the
//! way a Lambda-style platform serves them, over HTTP from VM to VM, without the backend.
//!
//! ```text
//!  VM of a (namespace A)                           host loopback
//!  boto3 lambda.invoke(FunctionName="b")
//!   POST /2015-03-31/functions/b/invocations ─► link in A (Platform::lambda) ─► LambdaFront
//!                                                   functions["b"].invoke(event) ─► b's VM (HTTP
//!                                                   over its tap, in namespace B)
//!   ◄─ 200 + result │ 200 + X-Amz-Function-Error: Unhandled │ 202 (Event) │ 404 │ 400 │ 500
//! ```
//!
//! One thread per connection, one request per connection (`Connection: close`). Requests are
//! not checked for a signature: the platform trusts its private network, as a worker's internal
//! API does. Heads are bounded at 16 KiB and bodies at Lambda's 6 MiB synchronous payload.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread;

use serde_json::{json, Value};

use crate::conventional::{Conventional, ConventionalError};
use crate::HarnessError;

/// The largest request head and body the front reads.
const MAX_HEAD: usize = 16 << 10;
const MAX_BODY: usize = 6 << 20;
/// The path of Lambda's Invoke API: `/2015-03-31/functions/NAME/invocations`.
const PATH_PREFIX: &str = "/2015-03-31/functions/";
const PATH_SUFFIX: &str = "/invocations";

type Functions = Arc<RwLock<HashMap<String, Arc<Conventional>>>>;

/// The endpoint on host loopback; stops accepting when dropped.
#[derive(Debug)]
pub struct LambdaFront {
    pub addr: SocketAddr,
    functions: Functions,
    stopping: Arc<AtomicBool>,
}

/// One parsed Invoke request.
#[derive(Debug, PartialEq)]
struct Invoke {
    function: String,
    asynchronous: bool,
    payload: Vec<u8>,
}

/// An HTTP answer: status, Lambda's error type (`x-amzn-ErrorType`) or function error, body.
#[derive(Debug, PartialEq)]
struct Reply {
    status: u16,
    header: Option<(&'static str, &'static str)>,
    body: String,
}

impl LambdaFront {
    /// Listens on a free loopback port.
    pub fn start() -> Result<Self, HarnessError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(HarnessError::io("bind the Lambda endpoint".to_owned()))?;
        let addr = listener.local_addr().map_err(HarnessError::io("its address".to_owned()))?;
        let functions = Functions::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let (serving, stop) = (functions.clone(), stopping.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let functions = serving.clone();
                thread::spawn(move || answer(stream, &functions));
            }
        });
        Ok(LambdaFront { addr, functions, stopping })
    }

    /// Serves invocations of `name` with `platform`'s VMs from now on.
    pub fn serve(&self, name: &str, platform: Arc<Conventional>) {
        let mut functions = self.functions.write().unwrap_or_else(PoisonError::into_inner);
        functions.insert(name.to_owned(), platform);
    }

    /// The platform serving `name`.
    pub fn platform(&self, name: &str) -> Option<Arc<Conventional>> {
        self.functions.read().unwrap_or_else(PoisonError::into_inner).get(name).cloned()
    }
}

impl Drop for LambdaFront {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        // Wakes the accepting thread so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads one request from `stream`, runs it, writes the reply.
fn answer(mut stream: TcpStream, functions: &Functions) {
    let reply = match read_request(&mut BufReader::new(&stream)) {
        Ok(invoke) => dispatch(invoke, functions),
        Err(reason) => Reply::error(400, "InvalidRequestContentException", &reason),
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\
         Connection: close\r\n\r\n",
        reply.status,
        reason_phrase(reply.status),
        reply.body.len(),
        reply.header.map_or(String::new(), |(name, value)| format!("{name}: {value}\r\n")),
    );
    let _ =
        stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(reply.body.as_bytes()));
}

/// Runs `invoke` on its function's platform: synchronously, or in the background for an
/// `Event`.
fn dispatch(invoke: Invoke, functions: &Functions) -> Reply {
    let found = functions.read().unwrap_or_else(PoisonError::into_inner);
    let Some(platform) = found.get(&invoke.function).cloned() else {
        let message = format!("Function not found: {}", invoke.function);
        return Reply::error(404, "ResourceNotFoundException", &message);
    };
    drop(found);
    let event: Value = match serde_json::from_slice(&invoke.payload) {
        Ok(event) => event,
        Err(e) => return Reply::error(400, "InvalidRequestContentException", &e.to_string()),
    };
    if invoke.asynchronous {
        thread::spawn(move || {
            if let Err(e) = platform.invoke(&event) {
                eprintln!("lambda front: event for {} failed: {e}", invoke.function);
            }
        });
        return Reply { status: 202, header: None, body: String::new() };
    }
    match platform.invoke(&event) {
        Ok(result) => Reply { status: 200, header: None, body: result.to_string() },
        Err(ConventionalError::Handler(body)) => {
            Reply { status: 200, header: Some(("X-Amz-Function-Error", "Unhandled")), body }
        }
        Err(e) => Reply::error(500, "ServiceException", &e.to_string()),
    }
}

impl Reply {
    fn error(status: u16, kind: &'static str, message: &str) -> Reply {
        // Lambda's error body says whose fault it was: the caller's (4xx) or the service's.
        let fault = if status >= 500 { "Service" } else { "User" };
        let body = json!({ "Type": fault, "message": message }).to_string();
        Reply { status, header: Some(("x-amzn-ErrorType", kind)), body }
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Internal Server Error",
    }
}

/// Parses one Invoke request: its function, invocation type and payload.
fn read_request(reader: &mut impl BufRead) -> Result<Invoke, String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let before = head.len();
        let limit = (MAX_HEAD + 1 - head.len()) as u64;
        reader.by_ref().take(limit).read_until(b'\n', &mut head).map_err(|e| e.to_string())?;
        if head.len() == before {
            return Err("the request ended inside its head".into());
        }
        if head.len() > MAX_HEAD {
            return Err(format!("request head over {MAX_HEAD} bytes"));
        }
    }
    let head = String::from_utf8(head).map_err(|_| "the request head is not UTF-8".to_owned())?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (method, path) = (request_line.next(), request_line.next().unwrap_or_default());
    let path = path.split('?').next().unwrap_or_default();
    let function = match (method, path.strip_prefix(PATH_PREFIX)) {
        (Some("POST"), Some(rest)) => rest.strip_suffix(PATH_SUFFIX).unwrap_or_default(),
        _ => "",
    };
    if function.is_empty() || function.contains('/') {
        return Err(format!("not a Lambda Invoke request: {method:?} {path}"));
    }
    let headers: Vec<(String, &str)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim()))
        .collect();
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let length: usize = match header("content-length") {
        Some(value) => value.parse().map_err(|_| format!("bad Content-Length {value:?}"))?,
        None => 0,
    };
    if length > MAX_BODY {
        return Err(format!("payload of {length} bytes is over Lambda's {MAX_BODY}"));
    }
    let mut payload = vec![0; length];
    reader.read_exact(&mut payload).map_err(|e: io::Error| e.to_string())?;
    let asynchronous = match header("x-amz-invocation-type").unwrap_or("RequestResponse") {
        "RequestResponse" => false,
        "Event" => true,
        other => return Err(format!("invocation type {other:?} is not supported")),
    };
    Ok(Invoke { function: function.to_owned(), asynchronous, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(request: &str) -> Result<Invoke, String> {
        read_request(&mut request.as_bytes())
    }

    #[test]
    fn parses_a_synchronous_and_an_event_invoke() {
        let sync = "POST /2015-03-31/functions/b/invocations HTTP/1.1\r\nHost: x\r\n\
                    Content-Length: 2\r\n\r\n{}";
        let expected =
            Invoke { function: "b".into(), asynchronous: false, payload: b"{}".to_vec() };
        assert_eq!(parse(sync), Ok(expected));
        let event = "POST /2015-03-31/functions/c/invocations?Qualifier=1 HTTP/1.1\r\n\
                     X-Amz-Invocation-Type: Event\r\ncontent-length: 0\r\n\r\n";
        assert!(parse(event).unwrap().asynchronous);
    }

    #[test]
    fn rejects_what_is_not_an_invoke_or_too_large() {
        let not_invoke = "GET /2015-03-31/functions/b/invocations HTTP/1.1\r\n\r\n";
        assert!(parse(not_invoke).unwrap_err().starts_with("not a Lambda Invoke request"));
        let nested = "POST /2015-03-31/functions/a/b/invocations HTTP/1.1\r\n\r\n";
        assert!(parse(nested).is_err());
        let dry = "POST /2015-03-31/functions/b/invocations HTTP/1.1\r\n\
                   X-Amz-Invocation-Type: DryRun\r\n\r\n";
        assert!(parse(dry).unwrap_err().contains("DryRun"));
        let huge = format!(
            "POST /2015-03-31/functions/b/invocations HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(parse(&huge).unwrap_err().contains("over Lambda's"));
        let endless = format!("POST /x HTTP/1.1\r\nX: {}", "y".repeat(MAX_HEAD));
        assert!(parse(&endless).unwrap_err().contains("head over"));
        let short =
            "POST /2015-03-31/functions/b/invocations HTTP/1.1\r\nContent-Length: 9\r\n\r\n{}";
        assert!(parse(short).is_err());
    }
}
