//! A function's `requirements.txt`, installed at deploy for the guest's Python.
//!
//! The guest images run Debian 12's CPython 3.11 on x86_64 (glibc 2.36), whatever the host
//! runs, so pip on the host installs for that target: binary wheels only (nothing is compiled
//! on the host for a guest), manylinux tags up to glibc 2.36. The result is cached by the
//! content of the file:
//!
//! ```text
//!  state_dir/packages/<md5 of requirements.txt + target>/   installed packages (+ .pyc)
//!  state_dir/packages/<...>.partial-<n>/                     while pip runs; renamed when done
//! ```
//! so an unchanged `requirements.txt` costs nothing on the next deploy, and two functions with
//! the same file share one install.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use md5::{Digest, Md5};

/// The file beside a function's code that names its packages.
pub const FILE: &str = "requirements.txt";
/// Where the packages are in the code disk, relative to its root.
pub const DIR_IN_DISK: &str = ".python";
/// The guest's Python, as pip names it.
const PYTHON_VERSION: &str = "3.11";
const IMPLEMENTATION: &str = "cp";
const ABI: &str = "cp311";
/// The guest's glibc (Debian 12): manylinux wheels built for it or older run there.
const GLIBC_MINOR: u32 = 36;
/// Byte-compiles the packages (argv 1), naming their files as the guest sees them (argv 2) in
/// tracebacks, with hash-checked .pyc files (the code disk is read-only and its files' times
/// change in the copy, so timestamp-checked ones would be recompiled at every import), when
/// the host's Python writes the guest's bytecode (3.11).
const COMPILE: &str = "import compileall, py_compile, sys\n\
if sys.version_info[:2] == (3, 11):\n    \
compileall.compile_dir(sys.argv[1], ddir=sys.argv[2], quiet=2, \
invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)\n";

/// Errors installing a function's requirements.
#[derive(Debug, thiserror::Error)]
pub enum RequirementsError {
    /// A package has no wheel for the guest.
    #[error(
        "{FILE}: no binary wheel of {package} for the guest's Python (CPython {PYTHON_VERSION}, \
         manylinux x86_64); Nexus installs wheels only: pick a version that has one"
    )]
    NoWheel { package: String },
    /// pip failed otherwise.
    #[error("{FILE}: pip failed: {stderr}")]
    Pip { stderr: String },
    /// pip could not be run.
    #[error("Installing {FILE} needs pip on the host (apt-get install python3-pip)")]
    NoPip(#[source] std::io::Error),
    /// A file operation failed.
    #[error("Cannot install {FILE} into {0}")]
    Io(PathBuf, #[source] std::io::Error),
}

/// The installed packages of `code`'s requirements file, or `None` when it has none.
/// Installs them into `cache` unless they are there already, for the guest to find at
/// `guest_dir`.
pub fn install(
    code: &Path,
    cache: &Path,
    guest_dir: &str,
) -> Result<Option<PathBuf>, RequirementsError> {
    let file = code.join(FILE);
    let Ok(requirements) = std::fs::read(&file) else { return Ok(None) };
    let key = cache_key(&requirements, guest_dir);
    let target = cache.join(&key);
    if target.is_dir() {
        return Ok(Some(target));
    }
    // Two deploys may install the same file at once: each into its own folder, the first
    // rename wins and the other's copy is dropped.
    static INSTALLS: AtomicU64 = AtomicU64::new(0);
    let n = INSTALLS.fetch_add(1, Ordering::Relaxed);
    let partial = cache.join(format!("{key}.partial-{n}"));
    let io = |path: &Path| {
        let path = path.to_owned();
        move |e| RequirementsError::Io(path, e)
    };
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(io(&partial))?;
    tracing::info!(requirements = %file.display(), into = %target.display(), "Installing packages");
    let output = Command::new(python())
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input"])
        .args(["--no-compile", "--only-binary=:all:", "--target"])
        .arg(&partial)
        .args(pip_target())
        .arg("-r")
        .arg(&file)
        .output()
        .map_err(RequirementsError::NoPip)?;
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(pip_error(&String::from_utf8_lossy(&output.stderr)));
    }
    // Best effort: without .pyc files the packages still import, only slower.
    let _ = Command::new(python()).args(["-c", COMPILE]).arg(&partial).arg(guest_dir).output();
    if let Err(e) = std::fs::rename(&partial, &target) {
        let _ = std::fs::remove_dir_all(&partial);
        if !target.is_dir() {
            return Err(io(&target)(e));
        }
    }
    Ok(Some(target))
}

/// pip's options naming the guest: its Python and every manylinux tag its glibc runs.
fn pip_target() -> Vec<String> {
    let mut args: Vec<String> = ["--python-version", PYTHON_VERSION]
        .into_iter()
        .chain(["--implementation", IMPLEMENTATION, "--abi", ABI])
        .map(str::to_owned)
        .collect();
    // pip 23 (Debian 12's) does not widen a manylinux tag to older glibcs: name them all,
    // with the legacy aliases wheels may carry alone.
    let tags = (5..=GLIBC_MINOR).rev().map(|minor| format!("manylinux_2_{minor}_x86_64"));
    let legacy = ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"];
    for tag in tags.chain(legacy.map(str::to_owned)) {
        args.extend(["--platform".to_owned(), tag]);
    }
    args
}

/// Where the packages for this file go: its content, the target and the guest's folder decide.
fn cache_key(requirements: &[u8], guest_dir: &str) -> String {
    let mut hash = Md5::new();
    hash.update(requirements);
    hash.update(pip_target().join(" "));
    hash.update(guest_dir);
    crate::spool::entry::hex(&hash.finalize())
}

/// The error for pip's stderr: a package without a wheel named, else pip's own words.
fn pip_error(stderr: &str) -> RequirementsError {
    const NO_MATCH: &str = "No matching distribution found for ";
    if let Some(package) = stderr.lines().find_map(|l| l.split_once(NO_MATCH).map(|(_, p)| p)) {
        return RequirementsError::NoWheel { package: package.trim().to_owned() };
    }
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("ERROR")).collect();
    let stderr = if errors.is_empty() { stderr.trim().to_owned() } else { errors.join("\n") };
    RequirementsError::Pip { stderr }
}

/// The host's Python to run pip with: Debian's, else whichever `python3` is on `PATH`.
fn python() -> &'static str {
    const DEBIAN: &str = "/usr/bin/python3";
    if Path::new(DEBIAN).is_file() {
        DEBIAN
    } else {
        "python3"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pip_errors_name_the_package_without_a_wheel() {
        let stderr = "ERROR: Could not find a version that satisfies the requirement \
                      antlr4-python3-runtime==4.9.3 (from versions: 4.11.0)\n\
                      ERROR: No matching distribution found for antlr4-python3-runtime==4.9.3\n";
        let error = pip_error(stderr);
        assert!(
            matches!(&error, RequirementsError::NoWheel { package } if package == "antlr4-python3-runtime==4.9.3")
        );
        assert!(error.to_string().contains("no binary wheel of antlr4-python3-runtime==4.9.3"));
        let other = pip_error("WARNING: x\nERROR: Invalid requirement: '!!'\n");
        assert_eq!(
            other.to_string(),
            "requirements.txt: pip failed: ERROR: Invalid requirement: '!!'"
        );
    }

    #[test]
    fn the_target_is_the_guests_python_and_every_glibc_up_to_its_own() {
        let args = pip_target().join(" ");
        assert!(args.starts_with("--python-version 3.11 --implementation cp --abi cp311"));
        for tag in ["manylinux_2_36_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"] {
            assert!(args.contains(&format!("--platform {tag}")), "{args}");
        }
        assert!(!args.contains("manylinux_2_37"));
        assert_ne!(cache_key(b"numpy\n", "/g"), cache_key(b"numpy==2.0\n", "/g"));
        assert_ne!(cache_key(b"six\n", "/g"), cache_key(b"six\n", "/h"));
        assert_eq!(cache_key(b"six\n", "/g"), cache_key(b"six\n", "/g"));
    }

    #[test]
    fn no_requirements_file_installs_nothing() {
        let code = tempfile::tempdir().unwrap();
        assert!(install(code.path(), &code.path().join("cache"), "/g").unwrap().is_none());
    }
}
