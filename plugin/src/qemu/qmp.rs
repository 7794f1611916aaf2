//! A minimal blocking client for QMP, QEMU's JSON control protocol, over its unix socket.
//!
//! ```text
//!  QEMU                                                   client
//!  {"QMP": {"version": …, "capabilities": […]}}     ──►   greeting, on connect
//!                         ◄──  {"execute": "qmp_capabilities", "id": 1}
//!  {"return": {}, "id": 1}                          ──►   command mode from here on
//!                         ◄──  {"execute": "stop", "id": 2}
//!  {"event": "STOP", "timestamp": {…}}              ──►   events come at any time: skipped
//!  {"return": {}, "id": 2}                          ──►   or {"error": {"class", "desc"}, "id": 2}
//! ```
//!
//! One JSON object per line each way. Every command carries a fresh id and waits for the reply
//! with that id, so a reply that arrives after its command timed out is skipped as well.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// QEMU answered the command with an error.
    #[error("QEMU refused {command}: {desc} ({class})")]
    Command { command: String, class: String, desc: String },
    /// No reply came in time.
    #[error("No QMP reply within {0:?}")]
    Timeout(Duration),
    /// QEMU closed the socket (it exited, or another client holds the monitor).
    #[error("QEMU closed the QMP connection")]
    Closed,
    /// QEMU sent something that is not QMP.
    #[error("Unexpected QMP message: {0}")]
    Protocol(String),
    #[error("QMP socket I/O failed")]
    Io(#[from] io::Error),
}

/// A QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Bytes of a line whose end has not arrived yet (kept across a timeout).
    partial: Vec<u8>,
    next_id: u64,
    timeout: Duration,
    /// QEMU's version from the greeting (`7.2.22`).
    version: String,
}

impl Qmp {
    /// Connects to the socket at `path`, reads the greeting and enters command mode; every
    /// later reply is awaited for at most `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let writer = UnixStream::connect(path)?;
        writer.set_write_timeout(Some(timeout))?;
        let reader = BufReader::new(writer.try_clone()?);
        let mut qmp = Qmp {
            reader,
            writer,
            partial: Vec::new(),
            next_id: 1,
            timeout,
            version: String::new(),
        };
        let greeting = qmp.read_message(Instant::now() + timeout)?;
        let version = greeting
            .pointer("/QMP/version/qemu")
            .ok_or_else(|| QmpError::Protocol(format!("not a QMP greeting: {greeting}")))?;
        let part = |key: &str| version.get(key).and_then(Value::as_u64).unwrap_or_default();
        qmp.version = format!("{}.{}.{}", part("major"), part("minor"), part("micro"));
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Sets how long later commands wait for their reply.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// QEMU's version, as its greeting gave it (`major.minor.micro`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Runs `command` and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        self.exchange(command, arguments, None)
    }

    /// Runs `command` with `fd` passed along (SCM_RIGHTS), as `getfd` and `add-fd` take one.
    pub fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fd: BorrowedFd<'_>,
    ) -> Result<Value, QmpError> {
        self.exchange(command, arguments, Some(fd))
    }

    fn exchange(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        match fd {
            Some(fd) => send_with_fd(&self.writer, line.as_bytes(), fd)?,
            None => self.writer.write_all(line.as_bytes())?,
        }

        let deadline = Instant::now() + self.timeout;
        loop {
            let mut message = self.read_message(deadline)?;
            if message.get("id").and_then(Value::as_u64) != Some(id) {
                tracing::debug!(%message, "QMP: skipping an event or a stale reply");
                continue;
            }
            if let Some(value) = message.get_mut("return") {
                return Ok(value.take());
            }
            let field = |key: &str| message.pointer(key).and_then(Value::as_str).map(String::from);
            return match (field("/error/class"), field("/error/desc")) {
                (Some(class), Some(desc)) => {
                    Err(QmpError::Command { command: command.to_owned(), class, desc })
                }
                _ => Err(QmpError::Protocol(format!("reply without return or error: {message}"))),
            };
        }
    }

    /// Reads the next JSON object, waiting until `deadline` at most.
    fn read_message(&mut self, deadline: Instant) -> Result<Value, QmpError> {
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(QmpError::Timeout(self.timeout));
            }
            self.reader.get_ref().set_read_timeout(Some(remaining))?;
            match self.reader.read_until(b'\n', &mut self.partial) {
                Ok(_) if self.partial.last() == Some(&b'\n') => {
                    let line = std::mem::take(&mut self.partial);
                    return serde_json::from_slice(&line).map_err(|e| {
                        QmpError::Protocol(format!("{e}: {}", String::from_utf8_lossy(&line)))
                    });
                }
                Ok(_) => return Err(QmpError::Closed),
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
                {
                    continue
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Sends `bytes` on `socket` in one message carrying `fd` as SCM_RIGHTS ancillary data (QEMU
/// takes the descriptor with the first byte of the command); the rest, if the message was
/// cut short, goes as plain bytes.
fn send_with_fd(mut socket: &UnixStream, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(&raw) as u32) } as usize;
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov =
        libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    // SAFETY: an all-zero msghdr is a valid empty message; every pointer set below outlives
    // the sendmsg call.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = space as _;
    // SAFETY: CMSG_FIRSTHDR reads only the message's control fields, set above.
    let header = unsafe { libc::CMSG_FIRSTHDR(&message) };
    // SAFETY: msg_control points at `space` zeroed bytes, room for one header and one int, so
    // the first header is non-null and lies inside `control`.
    let header = unsafe { &mut *header };
    header.cmsg_level = libc::SOL_SOCKET;
    header.cmsg_type = libc::SCM_RIGHTS;
    // SAFETY: CMSG_LEN only computes a size.
    header.cmsg_len = unsafe { libc::CMSG_LEN(std::mem::size_of_val(&raw) as u32) } as _;
    // SAFETY: the header's data is inside `control`, with room for one int.
    let data = unsafe { libc::CMSG_DATA(header) }.cast::<libc::c_int>();
    // SAFETY: `data` points at an int's room in `control` (maybe unaligned).
    unsafe { std::ptr::write_unaligned(data, raw) };
    // SAFETY: sendmsg on our socket, with a message whose pointers are all live.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &message, libc::MSG_NOSIGNAL) };
    let sent = usize::try_from(sent).map_err(|_| io::Error::last_os_error())?;
    socket.write_all(&bytes[sent.min(bytes.len())..])
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::thread;

    use super::*;

    #[test]
    fn a_descriptor_travels_with_the_command() {
        use std::io::Read;
        use std::os::fd::{AsFd, FromRawFd};

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory"), b"the stream").unwrap();
        let file = std::fs::File::open(dir.path().join("memory")).unwrap();
        let (sender, receiver) = UnixStream::pair().unwrap();
        let command = br#"{"execute": "getfd"}"#;
        send_with_fd(&sender, command, file.as_fd()).unwrap();

        let mut bytes = [0u8; 64];
        let mut control = [0u64; 8];
        let mut iov = libc::iovec { iov_base: bytes.as_mut_ptr().cast(), iov_len: bytes.len() };
        // SAFETY: an all-zero msghdr is a valid empty message; the buffers it points at
        // outlive recvmsg.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: recvmsg into the buffers above, on a socket this test owns.
        let received = unsafe { libc::recvmsg(receiver.as_raw_fd(), &mut message, 0) };
        assert_eq!(&bytes[..usize::try_from(received).unwrap()], command);
        // SAFETY: the kernel filled the control buffer; CMSG_FIRSTHDR checks its length.
        let header = unsafe { libc::CMSG_FIRSTHDR(&message) };
        assert!(!header.is_null(), "no descriptor came");
        // SAFETY: a non-null header lies inside the control buffer.
        let header = unsafe { &*header };
        assert_eq!((header.cmsg_level, header.cmsg_type), (libc::SOL_SOCKET, libc::SCM_RIGHTS));
        // SAFETY: an SCM_RIGHTS header's data is inside the control buffer, one int here.
        let data = unsafe { libc::CMSG_DATA(header) }.cast::<libc::c_int>();
        // SAFETY: `data` points at that int (maybe unaligned).
        let fd = unsafe { std::ptr::read_unaligned(data) };
        // SAFETY: SCM_RIGHTS gave this process a new descriptor, owned by nobody else.
        let mut passed = unsafe { std::fs::File::from_raw_fd(fd) };
        let mut content = String::new();
        passed.read_to_string(&mut content).unwrap();
        assert_eq!(content, "the stream", "the receiver reads the sender's file");
    }

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}"#;

    /// A fake QEMU: sends `greeting`, then answers each request line with `reply(request)`
    /// (several lines, or none); ends when the client hangs up or `reply` returns `None`.
    fn fake_qemu(
        greeting: &'static str,
        mut reply: impl FnMut(Value) -> Option<Vec<String>> + Send + 'static,
    ) -> (tempfile::TempDir, thread::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("qmp.sock")).unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut out = stream.try_clone().unwrap();
            writeln!(out, "{greeting}").unwrap();
            for line in BufReader::new(stream).lines() {
                let Some(lines) = reply(serde_json::from_str(&line.unwrap()).unwrap()) else {
                    return;
                };
                for line in lines {
                    writeln!(out, "{line}").unwrap();
                }
            }
        });
        (dir, server)
    }

    fn ok(request: &Value, value: Value) -> String {
        json!({ "return": value, "id": request["id"] }).to_string()
    }

    #[test]
    fn negotiates_then_skips_events_and_stale_replies() {
        let (dir, server) = fake_qemu(GREETING, |request| {
            Some(match request["execute"].as_str().unwrap() {
                "qmp_capabilities" => vec![ok(&request, json!({}))],
                "query-status" => vec![
                    r#"{"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 2}}"#.into(),
                    json!({ "return": {"status": "stale"}, "id": 999 }).to_string(),
                    ok(&request, json!({ "status": "running", "echo": request["arguments"] })),
                ],
                other => panic!("unexpected {other}"),
            })
        });
        let mut qmp = Qmp::connect(&dir.path().join("qmp.sock"), Duration::from_secs(5)).unwrap();
        assert_eq!(qmp.version(), "7.2.22");
        let status = qmp.execute("query-status", Some(json!({ "x": 1 }))).unwrap();
        assert_eq!(status, json!({ "status": "running", "echo": { "x": 1 } }));
        drop(qmp);
        server.join().unwrap();
    }

    #[test]
    fn an_error_reply_names_the_command_and_qemus_reason() {
        let (dir, server) = fake_qemu(GREETING, |request| {
            Some(vec![match request["execute"].as_str().unwrap() {
                "qmp_capabilities" => ok(&request, json!({})),
                _ => json!({
                    "error": { "class": "GenericError", "desc": "State blocked by non-migratable device" },
                    "id": request["id"],
                })
                .to_string(),
            }])
        });
        let mut qmp = Qmp::connect(&dir.path().join("qmp.sock"), Duration::from_secs(5)).unwrap();
        let error = qmp.execute("migrate", Some(json!({ "uri": "exec:cat" }))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "QEMU refused migrate: State blocked by non-migratable device (GenericError)"
        );
        drop(qmp);
        server.join().unwrap();
    }

    #[test]
    fn times_out_then_skips_the_late_reply() {
        let mut held = None;
        let (dir, server) = fake_qemu(GREETING, move |request| {
            Some(match request["execute"].as_str().unwrap() {
                "qmp_capabilities" => vec![ok(&request, json!({}))],
                // Hold the first command's reply back and send it before the second's.
                "slow" => {
                    held = Some(ok(&request, json!("late")));
                    vec![]
                }
                _ => vec![held.take().unwrap(), ok(&request, json!("fast"))],
            })
        });
        let mut qmp =
            Qmp::connect(&dir.path().join("qmp.sock"), Duration::from_millis(200)).unwrap();
        assert!(matches!(qmp.execute("slow", None), Err(QmpError::Timeout(_))));
        assert_eq!(qmp.execute("fast", None).unwrap(), json!("fast"));
        drop(qmp);
        server.join().unwrap();
    }

    #[test]
    fn reports_a_closed_socket_and_a_bad_greeting() {
        let (dir, server) = fake_qemu(GREETING, |request| {
            (request["execute"] == "qmp_capabilities").then(|| vec![ok(&request, json!({}))])
        });
        let mut qmp = Qmp::connect(&dir.path().join("qmp.sock"), Duration::from_secs(5)).unwrap();
        assert!(matches!(qmp.execute("quit", None), Err(QmpError::Closed)));
        server.join().unwrap();

        let (dir, server) = fake_qemu(r#"{"hello": 1}"#, |_| None);
        let error = Qmp::connect(&dir.path().join("qmp.sock"), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(error, QmpError::Protocol(_)), "{error}");
        server.join().unwrap();
    }
}
