//! Running the runtime worker and keeping it running.

use std::convert::Infallible;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nexus_guest::{find_region, Client, INFLIGHT_ENV};

use crate::settings::{Serve, Settings};

const PYTHON: &str = "/usr/bin/python3";
const PYTHONPATH: &str = "/opt/nexus/python";
const GUEST_LIB: &str = "/usr/lib/nexus/libnexus_guest.so";
const INFLIGHT: &str = "/run/nexus-inflight";
/// How long the agent waits for the ivshmem device to appear.
const DEVICE_WAIT: Duration = Duration::from_secs(10);
/// A runtime that lived this long was healthy: restart it at once.
const HEALTHY: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// No region device.
    #[error("No Nexus region after {0:?}: is the ivshmem device attached?")]
    NoRegion(Duration),
    /// The runtime could not be started at all.
    #[error("Cannot start {PYTHON}")]
    Spawn(#[source] std::io::Error),
}

/// Runs the runtime forever.
pub fn run(settings: &Settings) -> Result<Infallible, SuperviseError> {
    let region = match settings.serve {
        Serve::Region => Some(wait_for_region()?),
        Serve::Http(_) => None,
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let mut command = Command::new(PYTHON);
        command.args(["-m", "nexus_runtime", "--handler", &settings.handler]);
        match settings.serve {
            Serve::Http(port) => command.args(["--serve-http", &port.to_string()]),
            Serve::Region => command.arg("--serve"),
        };
        if let Some(region) = &region {
            command
                .env("NEXUS_REGION", region)
                .env("NEXUS_GUEST_LIB", GUEST_LIB)
                .env(INFLIGHT_ENV, INFLIGHT);
        }
        command
            .args(["--function-name", &settings.function, "--timeout", &settings.timeout])
            .envs(&settings.env)
            .env("PYTHONPATH", PYTHONPATH)
            .env("HOME", "/tmp")
            .current_dir(crate::settings::TASK_DIR)
            .stdin(Stdio::null());
        if !std::path::Path::new(crate::settings::TASK_DIR).is_dir() {
            command.current_dir("/");
        }
        let child = command.spawn().map_err(SuperviseError::Spawn)?;
        let status = reap_until(child.id());
        eprintln!("nexus-agent: runtime exited ({status}); restarting");
        // Over HTTP the caller sees its connection close instead.
        if region.is_some() {
            fail_inflight(&status);
        }
        if started.elapsed() > HEALTHY {
            backoff = Duration::from_millis(100);
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn wait_for_region() -> Result<std::path::PathBuf, SuperviseError> {
    let start = Instant::now();
    loop {
        match find_region() {
            Ok(path) if path.exists() => return Ok(path),
            _ if start.elapsed() > DEVICE_WAIT => {
                return Err(SuperviseError::NoRegion(DEVICE_WAIT))
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Reaps every child (the agent is PID 1, so orphans land here) until `pid` exits; returns
/// how it ended.
fn reap_until(pid: u32) -> String {
    loop {
        let mut status = 0;
        // SAFETY: waitpid(-1) with a valid out-pointer; it only reaps our own children.
        let reaped = unsafe { libc::waitpid(-1, &mut status, 0) };
        if reaped < 0 {
            return format!("wait failed: {}", std::io::Error::last_os_error());
        }
        if u32::try_from(reaped) == Ok(pid) {
            return match (libc::WIFEXITED(status), libc::WIFSIGNALED(status)) {
                (true, _) => format!("exit status {}", libc::WEXITSTATUS(status)),
                (_, true) => format!("signal {}", libc::WTERMSIG(status)),
                _ => format!("wait status {status}"),
            };
        }
    }
}

/// Answers the invocation the dead runtime left in flight, as Lambda reports a runtime exit.
fn fail_inflight(status: &str) {
    let error = serde_json::json!({
        "errorType": "Runtime.ExitError",
        "errorMessage": format!("Runtime exited: {status}"),
        "stackTrace": [],
    });
    let answered = find_region()
        .ok()
        .and_then(|path| Client::open(&path).ok())
        .map(|client| client.fail_inflight(error.to_string().as_bytes()));
    match answered {
        Some(Ok(true)) => {
            eprintln!("nexus-agent: answered the interrupted invocation with an error")
        }
        Some(Err(e)) => eprintln!("nexus-agent: cannot answer the interrupted invocation: {e}"),
        _ => {}
    }
}
