//! The code disk: a function's directory, with its environment, packed into a small ext4
//! image that the VM mounts read-only at `/var/task`.
//!
//! The environment is the spec's plus what Lambda reserves and the runtime cannot know from
//! inside the VM: `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` (the context's `memory_limit_in_mb`). The
//! runtime sets the other reserved variables itself (`nexus_runtime/invoke.py`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::spec::FunctionSpec;

/// File in the code disk the agent reads the runtime's environment from.
const ENV_FILE: &str = ".nexus-env.json";
/// Room for ext4's own structures.
const OVERHEAD: u64 = 8 << 20;

/// Errors building a code disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Copying or writing files failed.
    #[error("Cannot prepare the code of {0}")]
    Io(String, #[source] std::io::Error),
    /// mkfs.ext4 failed.
    #[error("mkfs.ext4 failed for {name}: {stderr} (is e2fsprogs installed?)")]
    Mkfs { name: String, stderr: String },
}

/// Builds `dir/code.ext4` for `spec` and returns its path.
pub fn build(spec: &FunctionSpec, dir: &Path) -> Result<PathBuf, DiskError> {
    let io = |e| DiskError::Io(spec.name.clone(), e);
    let staging = dir.join("code");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io)?;
    let size = copy_tree(&spec.code, &staging).map_err(io)?;
    let env = serde_json::to_vec(&runtime_environment(spec)).map_err(|e| io(e.into()))?;
    std::fs::write(staging.join(ENV_FILE), env).map_err(io)?;
    let image = dir.join("code.ext4");
    let file = std::fs::File::create(&image).map_err(io)?;
    file.set_len((size + size / 4 + OVERHEAD).next_multiple_of(1 << 20)).map_err(io)?;
    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "task", "-d"])
        .arg(&staging)
        .arg(&image)
        .output()
        .map_err(io)?;
    let _ = std::fs::remove_dir_all(&staging);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(DiskError::Mkfs { name: spec.name.clone(), stderr });
    }
    Ok(image)
}

/// The runtime's environment: the spec's, with Lambda's reserved variables winning.
fn runtime_environment(spec: &FunctionSpec) -> BTreeMap<String, String> {
    let mut env = spec.environment.clone();
    env.insert("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(), spec.memory_mib.to_string());
    env
}

/// Copies a directory tree (regular files and folders; caches skipped); returns bytes copied.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "__pycache__" {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::create_dir(to.join(&name))?;
            bytes += copy_tree(&entry.path(), &to.join(&name))?;
        } else if kind.is_file() {
            bytes += std::fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_carries_the_memory_size_lambda_reports() {
        let mut spec: FunctionSpec = serde_json::from_value(serde_json::json!({
            "name": "f", "code": "/tmp", "handler": "h.py:handler", "memory_mib": 512,
            "environment": { "STAGE": "test", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1" }
        }))
        .unwrap();
        let env = runtime_environment(&spec);
        assert_eq!(env["STAGE"], "test");
        assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "512", "reserved: the spec's wins");
        spec.memory_mib = 128;
        assert_eq!(runtime_environment(&spec)["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "128");
    }
}
