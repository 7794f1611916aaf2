//! The code disk: a function's directory, its packages and its environment, packed into a
//! small ext4 image that the VM mounts read-only at `/var/task`.
//!
//! ```text
//!  /var/task/                    the function's directory (caches skipped)
//!  /var/task/.python/            its requirements.txt, installed (requirements.rs); the
//!                                runtime puts it on sys.path after the handler's folder
//!  /var/task/.nexus-env.json     the runtime's environment, read by the agent
//! ```
//! The image is named by the digest of all of that (`code-<md5>.ext4`): deploying unchanged
//! code finds its image and builds nothing, and the caller can tell an unchanged function by
//! the image's path.
//!
//! The environment is the spec's plus what Lambda reserves and the runtime cannot know from
//! inside the VM: `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` (the context's `memory_limit_in_mb`). The
//! runtime sets the other reserved variables itself (`nexus_runtime/invoke.py`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use md5::{Digest, Md5};

use super::requirements::{self, RequirementsError};
use super::spec::FunctionSpec;

/// File in the code disk the agent reads the runtime's environment from.
const ENV_FILE: &str = ".nexus-env.json";
/// Where the VM mounts the code disk.
const TASK_DIR: &str = "/var/task";
/// The runtime's variable naming the packages folder.
const PACKAGES_ENV: &str = "NEXUS_PACKAGES";
/// Room for ext4's own structures.
const OVERHEAD: u64 = 8 << 20;

/// Errors building a code disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Copying or writing files failed.
    #[error("Cannot prepare the code of {0}")]
    Io(String, #[source] std::io::Error),
    /// The function's requirements could not be installed.
    #[error(transparent)]
    Requirements(#[from] RequirementsError),
    /// mkfs.ext4 failed.
    #[error("mkfs.ext4 failed for {name}: {stderr} (is e2fsprogs installed?)")]
    Mkfs { name: String, stderr: String },
}

impl DiskError {
    /// Whether the function's own files are at fault (not the host).
    pub fn is_the_functions(&self) -> bool {
        matches!(
            self,
            DiskError::Requirements(
                RequirementsError::NoWheel { .. } | RequirementsError::Pip { .. }
            )
        )
    }
}

/// Builds `dir/code-<digest>.ext4` for `spec` unless it exists (its packages installed through
/// `packages`, a cache) and returns its path; removes the function's older images.
pub fn build(spec: &FunctionSpec, dir: &Path, packages: &Path) -> Result<PathBuf, DiskError> {
    let io = |e| DiskError::Io(spec.name.clone(), e);
    let installed = requirements::install(&spec.code, packages, &packages_in_guest())?;
    let env = runtime_environment(spec, installed.is_some());
    let env = serde_json::to_vec(&env).map_err(|e| io(e.into()))?;
    let files = files(&spec.code).map_err(io)?;
    let digest = digest(&spec.code, &files, &env, &installed).map_err(io)?;
    let image = dir.join(format!("code-{digest}.ext4"));
    if !image.is_file() {
        pack(spec, &files, &env, installed.as_deref(), &image)?;
    }
    for entry in std::fs::read_dir(dir).map_err(io)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("code") && name.ends_with(".ext4") && entry.path() != image {
            // A running VM keeps the file it opened; new VMs get the new image.
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(image)
}

/// Copies everything into a staging folder and makes the image from it.
fn pack(
    spec: &FunctionSpec,
    files: &[PathBuf],
    env: &[u8],
    packages: Option<&Path>,
    image: &Path,
) -> Result<(), DiskError> {
    let io = |e| DiskError::Io(spec.name.clone(), e);
    let staging = image.with_extension("staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io)?;
    let mut size = 0;
    if let Some(packages) = packages {
        let into = staging.join(requirements::DIR_IN_DISK);
        size += copy_files(packages, &regular_files(packages, false).map_err(io)?, &into)
            .map_err(io)?;
    }
    size += copy_files(&spec.code, files, &staging).map_err(io)?;
    std::fs::write(staging.join(ENV_FILE), env).map_err(io)?;
    let partial = image.with_extension("partial");
    let file = std::fs::File::create(&partial).map_err(io)?;
    file.set_len((size + size / 4 + OVERHEAD).next_multiple_of(1 << 20)).map_err(io)?;
    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "task", "-d"])
        .arg(&staging)
        .arg(&partial)
        .output()
        .map_err(io)?;
    let _ = std::fs::remove_dir_all(&staging);
    if !output.status.success() {
        let _ = std::fs::remove_file(&partial);
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(DiskError::Mkfs { name: spec.name.clone(), stderr });
    }
    std::fs::rename(&partial, image).map_err(io)
}

/// The runtime's environment: the spec's, with Lambda's reserved variables winning, and the
/// packages folder when there is one.
fn runtime_environment(spec: &FunctionSpec, has_packages: bool) -> BTreeMap<String, String> {
    let mut env = spec.environment.clone();
    env.insert("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(), spec.memory_mib.to_string());
    if has_packages {
        env.insert(PACKAGES_ENV.into(), packages_in_guest());
    }
    env
}

/// Where the guest finds the packages.
fn packages_in_guest() -> String {
    format!("{TASK_DIR}/{}", requirements::DIR_IN_DISK)
}

/// The digest of what the image holds: the code's files (names, modes, bytes), the
/// environment and the packages (named by their cache folder, itself a digest).
fn digest(
    code: &Path,
    files: &[PathBuf],
    env: &[u8],
    packages: &Option<PathBuf>,
) -> std::io::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut hash = Md5::new();
    let mut buffer = vec![0; 1 << 16];
    for file in files {
        let path = code.join(file);
        let metadata = std::fs::metadata(&path)?;
        hash.update(file.as_os_str().as_encoded_bytes());
        hash.update(metadata.permissions().mode().to_le_bytes());
        hash.update(metadata.len().to_le_bytes());
        let mut reader = std::fs::File::open(&path)?;
        loop {
            let n = reader.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            hash.update(&buffer[..n]);
        }
    }
    hash.update(env);
    if let Some(packages) = packages {
        hash.update(packages.as_os_str().as_encoded_bytes());
    }
    Ok(crate::spool::entry::hex(&hash.finalize()))
}

/// The code's regular files, relative to `code`, sorted; Python caches skipped (the host's
/// .pyc files are checked against times the copy changes).
fn files(code: &Path) -> std::io::Result<Vec<PathBuf>> {
    regular_files(code, true)
}

/// The regular files under `root`, relative to it, sorted; `__pycache__` folders skipped if
/// `skip_caches`.
fn regular_files(root: &Path, skip_caches: bool) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut folders = vec![PathBuf::new()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(root.join(&folder))? {
            let entry = entry?;
            let path = folder.join(entry.file_name());
            let kind = entry.file_type()?;
            if kind.is_dir() && !(skip_caches && entry.file_name() == "__pycache__") {
                folders.push(path);
            } else if kind.is_file() {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Copies `files` (relative to `from`) under `to`; returns the bytes copied.
fn copy_files(from: &Path, files: &[PathBuf], to: &Path) -> std::io::Result<u64> {
    let mut bytes = 0;
    for file in files {
        let target = to.join(file);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        bytes += std::fs::copy(from.join(file), target)?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(code: &Path) -> FunctionSpec {
        serde_json::from_value(serde_json::json!({
            "name": "f", "code": code, "handler": "h.py:handler", "memory_mib": 512,
            "environment": { "STAGE": "test", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1" }
        }))
        .unwrap()
    }

    #[test]
    fn the_environment_carries_the_memory_size_lambda_reports() {
        let mut spec = spec(Path::new("/tmp"));
        let env = runtime_environment(&spec, false);
        assert_eq!(env["STAGE"], "test");
        assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "512", "reserved: the spec's wins");
        assert!(!env.contains_key(PACKAGES_ENV));
        spec.memory_mib = 128;
        let env = runtime_environment(&spec, true);
        assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "128");
        assert_eq!(env[PACKAGES_ENV], "/var/task/.python");
    }

    #[test]
    fn unchanged_code_finds_its_image_and_changed_code_gets_a_new_one() {
        let code = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        std::fs::write(code.path().join("h.py"), "def handler(e, c): pass\n").unwrap();
        std::fs::create_dir_all(code.path().join("lib/__pycache__")).unwrap();
        std::fs::write(code.path().join("lib/util.py"), "X = 1\n").unwrap();
        let (spec, packages) = (spec(code.path()), state.path().join("packages"));
        let first = build(&spec, state.path(), &packages).unwrap();
        let built = std::fs::metadata(&first).unwrap().modified().unwrap();
        std::fs::write(code.path().join("lib/__pycache__/util.cpython-311.pyc"), "x").unwrap();
        let again = build(&spec, state.path(), &packages).unwrap();
        assert_eq!(again, first, "same code and caches aside: the same image");
        assert_eq!(std::fs::metadata(&again).unwrap().modified().unwrap(), built, "not rebuilt");

        std::fs::write(code.path().join("lib/util.py"), "X = 2\n").unwrap();
        let changed = build(&spec, state.path(), &packages).unwrap();
        assert_ne!(changed, first);
        assert!(!first.exists(), "the older image is removed");
        let mut other_env = spec.clone();
        other_env.environment.insert("STAGE".into(), "prod".into());
        assert_ne!(build(&other_env, state.path(), &packages).unwrap(), changed);
    }
}
