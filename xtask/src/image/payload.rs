//! What Nexus adds on top of the base tree, built from this workspace:
//!
//! ```text
//! /sbin/nexus-init                  guest/image/nexus-init (PID 1 after the initramfs)
//! /usr/local/bin/nexus-agent        nexus-agent, built static (if the crate exists)
//! /usr/lib/nexus/libnexus_guest.so  target/release/libnexus_guest.so
//! /opt/nexus/python/                guest/python without tests, caches, pyproject.toml and
//!                                   README.md, compiled; the baseline also without the boto3/
//!                                   and botocore/ shims (it has Debian's real boto3)
//! /etc/nexus-flavour                the flavour's name, read by nexus-init
//! /etc/hosts, /etc/resolv.conf      localhost; the baseline's DNS is QEMU user-net's 10.0.2.3
//! /var/task/                        mount point of the function's code disk
//! ```

use std::env;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::cache::Fingerprint;
use super::{guest_image_dir, output, Flavour, Log};
use crate::{cmd, workspace_root};

const AGENT_CRATE: &str = "nexus-agent";
/// The guest's target: x86_64 Linux, whatever the host.
const AGENT_TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// Top-level entries of guest/python left out of every image.
const PYTHON_SKIP: &[&str] = &["tests", "pyproject.toml", "README.md"];
/// Left out of the baseline image too: it uses the real SDK.
const PYTHON_SHIMS: &[&str] = &["boto3", "botocore"];

/// The workspace's contributions, built and located.
#[derive(Debug)]
pub struct Payload {
    init: PathBuf,
    agent: Option<PathBuf>,
    library: PathBuf,
    python: PathBuf,
}

impl Payload {
    /// Builds the guest library and, if the workspace has it, the static agent (release).
    pub fn build(log: &Log) -> Result<Payload> {
        let root = workspace_root();
        let target =
            env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |t| root.join(t));
        let agent = if agent_in_workspace()? {
            build_agent(log, &target)
        } else {
            log.say(&format!("no `{AGENT_CRATE}` crate yet: the image boots to a 'no agent' line"));
            None
        };
        cmd::run(cmd::cargo().args(["build", "--release", "-p", "nexus-guest"]).current_dir(root))?;
        Ok(Payload {
            init: guest_image_dir().join("nexus-init"),
            agent,
            library: target.join("release/libnexus_guest.so"),
            python: root.join("guest/python"),
        })
    }

    /// Adds everything this payload puts into `flavour`'s image to `fingerprint`.
    pub fn fingerprint(&self, flavour: Flavour, fingerprint: &mut Fingerprint) -> Result<()> {
        fingerprint.file(&self.init)?;
        fingerprint.file(&self.library)?;
        match &self.agent {
            Some(agent) => fingerprint.file(agent)?,
            None => fingerprint.add("agent", b"none"),
        }
        for file in python_files(&self.python, flavour)? {
            fingerprint.add("python", file.to_string_lossy().as_bytes());
            fingerprint.file(&self.python.join(&file))?;
        }
        Ok(())
    }

    /// Installs the payload into the tree at `root`.
    pub fn install(&self, flavour: Flavour, root: &Path) -> Result<()> {
        put(&self.init, &root.join("sbin/nexus-init"), 0o755)?;
        if let Some(agent) = &self.agent {
            put(agent, &root.join("usr/local/bin/nexus-agent"), 0o755)?;
        }
        put(&self.library, &root.join("usr/lib/nexus/libnexus_guest.so"), 0o644)?;
        for file in python_files(&self.python, flavour)? {
            put(&self.python.join(&file), &root.join("opt/nexus/python").join(&file), 0o644)?;
        }
        // Byte code now: the guest's root is read-only (see `base`).
        cmd::run(Command::new("chroot").arg(root).args([
            "python3",
            "-m",
            "compileall",
            "-q",
            "/opt/nexus/python",
        ]))?;
        fs::write(root.join("etc/nexus-flavour"), format!("{}\n", flavour.name()))?;
        fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n::1 localhost\n")?;
        let resolv = match flavour {
            Flavour::Nexus => "",
            Flavour::Baseline => "nameserver 10.0.2.3\n",
        };
        fs::write(root.join("etc/resolv.conf"), resolv)?;
        fs::create_dir_all(root.join("var/task"))?;
        Ok(())
    }
}

/// Whether the workspace has the agent crate yet (another part of the project writes it).
fn agent_in_workspace() -> Result<bool> {
    let metadata = output(
        cmd::cargo()
            .args(["metadata", "--no-deps", "--format-version", "1", "--offline", "-q"])
            .current_dir(workspace_root()),
    )?;
    Ok(metadata.contains(&format!("\"name\":\"{AGENT_CRATE}\"")))
}

/// Builds the agent as a static binary; `None` (with a warning) if it does not build.
///
/// `--target` is explicit so that `+crt-static` reaches the agent but not the build scripts and
/// proc macros (which cannot be static); the binary lands in `target/<triple>/release/`.
fn build_agent(log: &Log, target: &Path) -> Option<PathBuf> {
    let mut rustflags = env::var("RUSTFLAGS").unwrap_or_default();
    rustflags.push_str(" -C target-feature=+crt-static");
    let built = cmd::run(
        cmd::cargo()
            .args(["build", "--release", "-p", AGENT_CRATE, "--target", AGENT_TRIPLE])
            .env("RUSTFLAGS", rustflags.trim())
            .current_dir(workspace_root()),
    );
    let binary = target.join(AGENT_TRIPLE).join("release").join(AGENT_CRATE);
    match built {
        Ok(()) if binary.is_file() => Some(binary),
        Ok(()) => {
            log.say(&format!("WARNING: no {} after the build: no agent", binary.display()));
            None
        }
        Err(error) => {
            log.say(&format!("WARNING: {error:#}: the image has no agent"));
            None
        }
    }
}

/// The files of guest/python that go into `flavour`'s image, relative to it, sorted.
fn python_files(dir: &Path, flavour: Flavour) -> Result<Vec<PathBuf>> {
    let mut skip = PYTHON_SKIP.to_vec();
    if flavour == Flavour::Baseline {
        skip.extend(PYTHON_SHIMS);
    }
    let mut files = Vec::new();
    walk(dir, Path::new(""), &skip, &mut files)?;
    files.sort();
    Ok(files)
}

fn walk(dir: &Path, relative: &Path, top_skip: &[&str], files: &mut Vec<PathBuf>) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("Cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let cache = name.starts_with('.') || name == "__pycache__" || name.ends_with(".pyc");
        if cache || (relative.as_os_str().is_empty() && top_skip.contains(&name.as_str())) {
            continue;
        }
        let path = relative.join(&name);
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), &path, top_skip, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

/// Copies `source` to `dest` (creating its folder) with `mode`.
fn put(source: &Path, dest: &Path, mode: u32) -> Result<()> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(source, dest)
        .with_context(|| format!("Cannot copy {} to {}", source.display(), dest.display()))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_copy_leaves_out_tests_caches_and_for_the_baseline_the_shims() {
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "README.md",
            "pyproject.toml",
            ".gitignore",
            "tests/test_x.py",
            "boto3/__init__.py",
            "boto3/__pycache__/__init__.cpython-311.pyc",
            "nexus_shim/channel.py",
            "examples/compress/handler.py",
            "examples/compress/README.md",
        ] {
            let path = dir.path().join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, "x").unwrap();
        }
        let strings = |flavour| {
            let files = python_files(dir.path(), flavour).unwrap();
            files.iter().map(|f| f.to_string_lossy().into_owned()).collect::<Vec<_>>()
        };
        assert_eq!(
            strings(Flavour::Nexus),
            [
                "boto3/__init__.py",
                "examples/compress/README.md",
                "examples/compress/handler.py",
                "nexus_shim/channel.py"
            ]
        );
        assert_eq!(
            strings(Flavour::Baseline),
            [
                "examples/compress/README.md",
                "examples/compress/handler.py",
                "nexus_shim/channel.py"
            ]
        );
    }
}
