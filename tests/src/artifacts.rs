//! Workspace artifacts the integration tests run: the backend binary and the guest library.
//!
//! Each is built with `cargo build` on first use and at most once per test process; its path
//! comes from cargo's own artifact messages, so a custom target directory is honoured.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use crate::HarnessError;

/// How many lines of cargo's output a build error keeps.
const BUILD_LOG_LINES: usize = 60;

/// The backend binary, `target/debug/nexus`, built on first use.
///
/// # Panics
/// If the build fails; the message carries the tail of cargo's output.
pub fn nexus_binary() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let artifact = Artifact { package: "nexus-backend", target: "nexus", kind: Kind::Bin };
    PATH.get_or_init(|| artifact.build().unwrap_or_else(|e| panic!("{e}"))).clone()
}

/// The guest library, `target/debug/libnexus_guest.so`, built on first use.
///
/// # Panics
/// If the build fails; the message carries the tail of cargo's output.
pub fn guest_lib() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let artifact = Artifact { package: "nexus-guest", target: "nexus_guest", kind: Kind::Cdylib };
    PATH.get_or_init(|| artifact.build().unwrap_or_else(|e| panic!("{e}"))).clone()
}

/// One build target of a workspace package.
struct Artifact {
    package: &'static str,
    /// The target's name as cargo reports it (a library's name uses `_`).
    target: &'static str,
    kind: Kind,
}

enum Kind {
    Bin,
    Cdylib,
}

impl Artifact {
    fn build(&self) -> Result<PathBuf, HarnessError> {
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root()).args([
            "build",
            "--message-format=json-render-diagnostics",
            "-p",
            self.package,
        ]);
        match self.kind {
            Kind::Bin => cmd.args(["--bin", self.target]),
            Kind::Cdylib => cmd.arg("--lib"),
        };
        let what = format!("{} ({})", self.package, self.target);
        let output =
            cmd.output().map_err(HarnessError::io(format!("run cargo to build {what}")))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail = crate::error::tail(&stderr, BUILD_LOG_LINES);
            let detail = format!("cargo exited with {}:\n{tail}", output.status);
            return Err(HarnessError::Build { what, detail });
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == self.target)
            .find_map(|m| self.path_in(&m))
            .ok_or_else(|| {
                let detail = "cargo reported no such artifact".to_owned();
                HarnessError::Build { what, detail }
            })
    }

    /// The artifact's file in one of cargo's `compiler-artifact` messages.
    fn path_in(&self, message: &Value) -> Option<PathBuf> {
        match self.kind {
            Kind::Bin => message["executable"].as_str().map(PathBuf::from),
            Kind::Cdylib => message["filenames"]
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .find(|f| f.ends_with(".so"))
                .map(PathBuf::from),
        }
    }
}

/// The workspace root: the parent of this crate's folder.
pub(crate) fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives inside the workspace")
}
