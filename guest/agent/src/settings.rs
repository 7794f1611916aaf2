//! What the agent runs, from the kernel command line the VMM adapter writes:
//! `nexus.handler=/var/task/handler.py:handler nexus.function=compress nexus.timeout=900`,
//! and optionally `nexus.serve=http:PORT`: invocations arrive over HTTP on that port (a
//! conventional platform's VM, on a NIC) instead of through the region.
//! The function's environment comes from `/var/task/.nexus-env.json` when present.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the function's code disk is mounted.
pub const TASK_DIR: &str = "/var/task";
const ENV_FILE: &str = ".nexus-env.json";

/// Errors reading the settings.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The kernel command line could not be read.
    #[error("Cannot read /proc/cmdline")]
    Cmdline(#[source] std::io::Error),
    /// A required parameter is missing.
    #[error("Kernel parameter nexus.{0}= is missing")]
    Missing(&'static str),
    /// The environment file is not a JSON object of strings.
    #[error("{0}: not a JSON object of strings")]
    Env(PathBuf),
    /// `nexus.serve=` names no way of serving.
    #[error("Kernel parameter nexus.serve={0} is not region or http:PORT")]
    Serve(String),
}

/// Where invocations come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// The shared-memory region (the default).
    Region,
    /// HTTP on this TCP port (`POST /invoke`), as a conventional platform's runtime.
    Http(u16),
}

/// The agent's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub handler: String,
    pub function: String,
    pub timeout: String,
    pub serve: Serve,
    pub env: BTreeMap<String, String>,
}

impl Settings {
    /// Reads `/proc/cmdline` and the task's environment file.
    pub fn from_kernel() -> Result<Self, SettingsError> {
        let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(SettingsError::Cmdline)?;
        Self::parse(&cmdline, Path::new(TASK_DIR))
    }

    fn parse(cmdline: &str, task: &Path) -> Result<Self, SettingsError> {
        let param = |name: &str| {
            cmdline
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("nexus.{name}=")))
                .map(str::to_owned)
        };
        let handler = param("handler").ok_or(SettingsError::Missing("handler"))?;
        let function = param("function").ok_or(SettingsError::Missing("function"))?;
        let serve = match param("serve") {
            None => Serve::Region,
            Some(value) if value == "region" => Serve::Region,
            Some(value) => value
                .strip_prefix("http:")
                .and_then(|port| port.parse().ok())
                .map(Serve::Http)
                .ok_or(SettingsError::Serve(value))?,
        };
        let env_file = task.join(ENV_FILE);
        let env = match std::fs::read(&env_file) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|_| SettingsError::Env(env_file))?
            }
            Err(_) => BTreeMap::new(),
        };
        Ok(Self {
            handler,
            function,
            timeout: param("timeout").unwrap_or_else(|| "900".into()),
            serve,
            env,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_parameters_and_the_environment_file() {
        let task = tempfile::tempdir().unwrap();
        let line =
            "console=ttyS0 nexus.handler=/var/task/h.py:handler nexus.function=compress quiet";
        let settings = Settings::parse(line, task.path()).unwrap();
        assert_eq!(settings.handler, "/var/task/h.py:handler");
        assert_eq!(settings.function, "compress");
        assert_eq!(settings.timeout, "900");
        assert!(settings.env.is_empty());
        assert_eq!(settings.serve, Serve::Region);
        std::fs::write(task.path().join(ENV_FILE), r#"{"AWS_REGION": "garage"}"#).unwrap();
        let settings = Settings::parse(line, task.path()).unwrap();
        assert_eq!(settings.env["AWS_REGION"], "garage");
        std::fs::write(task.path().join(ENV_FILE), "[1]").unwrap();
        assert!(matches!(Settings::parse(line, task.path()), Err(SettingsError::Env(_))));
        assert!(matches!(
            Settings::parse("quiet", task.path()),
            Err(SettingsError::Missing("handler"))
        ));
    }

    #[test]
    fn serves_over_http_when_asked() {
        let task = tempfile::tempdir().unwrap();
        let line = |serve: &str| format!("nexus.handler=h.py:handler nexus.function=f {serve}");
        let serve = |word: &str| Settings::parse(&line(word), task.path()).map(|s| s.serve);
        assert_eq!(serve("nexus.serve=http:8080").unwrap(), Serve::Http(8080));
        assert_eq!(serve("nexus.serve=region").unwrap(), Serve::Region);
        for bad in ["nexus.serve=http:", "nexus.serve=http:99999", "nexus.serve=tcp:1"] {
            assert!(matches!(serve(bad), Err(SettingsError::Serve(_))), "{bad}");
        }
    }
}
