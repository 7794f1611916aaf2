//! A real Prometheus server (Debian's `prometheus`, or `$NEXUS_PROMETHEUS`) on a free loopback
//! port, with a temp config that scrapes one target every second and a temp data dir; killed
//! on drop. Its HTTP query API answers [`Prometheus::query`].

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::error::tail;
use crate::garage::free_ports;
use crate::HarnessError;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_LINES: usize = 30;

/// A running Prometheus server.
#[derive(Debug)]
pub struct Prometheus {
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl Prometheus {
    /// The binary: `$NEXUS_PROMETHEUS`, else `prometheus` on the PATH.
    pub fn binary() -> Result<PathBuf, HarnessError> {
        let binary =
            std::env::var_os("NEXUS_PROMETHEUS").map_or("prometheus".into(), PathBuf::from);
        match Command::new(&binary)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(status) if status.success() => Ok(binary),
            Ok(status) => Err(HarnessError::PrometheusMissing(format!(
                "{} --version: {status}",
                binary.display()
            ))),
            Err(e) => Err(HarnessError::PrometheusMissing(format!("{}: {e}", binary.display()))),
        }
    }

    /// Starts a server scraping `target`'s `/metrics` every second, and waits until it is ready.
    pub fn start(target: SocketAddr) -> Result<Self, HarnessError> {
        let binary = Self::binary()?;
        let dir = tempfile::Builder::new()
            .prefix("nexus-prometheus-")
            .tempdir()
            .map_err(HarnessError::io("create a temp dir for Prometheus"))?;
        let [port] = free_ports()?;
        let config = dir.path().join("prometheus.yml");
        let yaml = format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             scrape_configs:\n  - job_name: nexus\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        fs::write(&config, yaml).map_err(HarnessError::io("write the Prometheus config"))?;
        let log = dir.path().join("prometheus.log");
        let log_file = File::create(&log).map_err(HarnessError::io("create the Prometheus log"))?;
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(HarnessError::io("open the Prometheus log"))?)
            .stderr(log_file)
            .spawn()
            .map_err(HarnessError::io(format!("start {}", binary.display())))?;
        let mut prometheus =
            Self { addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)), child, log, _dir: dir };
        prometheus.wait_ready()?;
        Ok(prometheus)
    }

    /// The `data.result` of an instant query of `expr` (an array of `{metric, value}`).
    pub fn query(&self, expr: &str) -> Result<Vec<Value>, HarnessError> {
        let failed = |why: String| HarnessError::PrometheusQuery { query: expr.to_owned(), why };
        let encoded: String = url::form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        let (status, body) = self.get(&format!("/api/v1/query?query={encoded}")).map_err(failed)?;
        let answer: Value = serde_json::from_str(&body)
            .map_err(|e| failed(format!("HTTP {status}, {e}: {body}")))?;
        match answer["data"]["result"].as_array() {
            Some(result) if status == 200 => Ok(result.clone()),
            _ => Err(failed(format!("HTTP {status}: {body}"))),
        }
    }

    /// Polls `expr` until `done` accepts its result, or `timeout` passes (then the last result
    /// is returned, for the test's assertion to show).
    pub fn query_until(
        &self,
        expr: &str,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>, HarnessError> {
        let start = Instant::now();
        loop {
            let result = self.query(expr)?;
            if done(&result) || start.elapsed() > timeout {
                return Ok(result);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The tail of its log.
    pub fn log_tail(&self) -> String {
        let log = fs::read(&self.log).unwrap_or_default();
        tail(&String::from_utf8_lossy(&log), LOG_LINES)
    }

    fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let start = Instant::now();
        loop {
            let last = match self.get("/-/ready") {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("HTTP {status}: {body}"),
                Err(e) => e,
            };
            let why = match self.child.try_wait() {
                Ok(Some(status)) => Some(format!("exited ({status})")),
                _ if start.elapsed() > READY_TIMEOUT => Some(format!("not ready: {last}")),
                _ => None,
            };
            if let Some(why) = why {
                return Err(HarnessError::PrometheusNotReady { why, log: self.log_tail() });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A plain HTTP/1.0 GET (the answer is not chunked, and ends when the server closes).
    fn get(&self, path: &str) -> Result<(u16, String), String> {
        let timeout = Duration::from_secs(10);
        let mut stream =
            TcpStream::connect_timeout(&self.addr, timeout).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr)
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).map_err(|e| e.to_string())?;
        let (head, body) = answer.split_once("\r\n\r\n").ok_or("no HTTP header")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line in {head:?}"))?;
        Ok((status, body.to_owned()))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Errors mean it has already exited; `wait` reaps it either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
