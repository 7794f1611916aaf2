//! The harness's one error type.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

/// Why the harness could not set up what a test needs.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The Garage binary is not installed.
    #[error("Garage not found at {0}: run `cargo xtask setup` (or set NEXUS_GARAGE)")]
    GarageMissing(PathBuf),
    /// A file, port or process operation failed.
    #[error("Cannot {action}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },
    /// A `garage` admin command exited with an error.
    #[error("`garage {args}` failed ({status}): {stderr}\n--- garage log (tail) ---\n{log}")]
    GarageCommand { args: String, status: ExitStatus, stderr: String, log: String },
    /// The Garage server exited on its own.
    #[error("Garage exited during start-up ({status})\n--- garage log (tail) ---\n{log}")]
    GarageExited { status: ExitStatus, log: String },
    /// The Garage server did not become ready in time.
    #[error("Garage not ready after {secs} s: {last}\n--- garage log (tail) ---\n{log}")]
    GarageNotReady { secs: u64, last: String, log: String },
    /// The Nexus backend exited or never opened its socket.
    #[error("Nexus backend did not come up: {why}\n--- backend log (tail) ---\n{log}")]
    BackendNotReady { why: String, log: String },
    /// The backend did not get something done in time.
    #[error("Nexus backend: {what} after {secs} s\n--- backend log (tail) ---\n{log}")]
    BackendTimeout { what: String, secs: u64, log: String },
    /// The backend's control API refused a request.
    #[error("Nexus control API: {0}")]
    Api(String),
    /// The Prometheus server is not installed.
    #[error("Prometheus not found ({0}): install the Debian package `prometheus` (or run `cargo xtask setup`)")]
    PrometheusMissing(String),
    /// The Prometheus server exited or did not become ready in time.
    #[error("Prometheus did not come up: {why}\n--- prometheus log (tail) ---\n{log}")]
    PrometheusNotReady { why: String, log: String },
    /// A Prometheus query failed.
    #[error("Prometheus query {query:?}: {why}")]
    PrometheusQuery { query: String, why: String },
    /// libvirtd is not there, or `virsh` failed.
    #[error("libvirt: {0}")]
    Libvirt(String),
    /// `cargo build` of a workspace artifact failed.
    #[error("Cannot build {what}: {detail}")]
    Build { what: String, detail: String },
}

impl HarnessError {
    /// An [`HarnessError::Io`] for the failed `action` ("read the garage log", ...).
    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let action = action.into();
        move |source| Self::Io { action, source }
    }
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
