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
//! the same file share one install. The file must be a regular file that names packages from
//! the index, nothing else: pip runs on the host, and an option (`-r`, `-e`, `--index-url`), a
//! path or a URL would let a deploy read host files or reach other servers through it.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
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
    /// The file is not a plain list of packages: an option line (`-r`, `-c`, `-e`,
    /// `--index-url`, ...), a path or a URL would make the host's pip read host files or reach
    /// other servers for a deploy.
    #[error(
        "{FILE}: line {line}: {text:?} is refused: name packages (with versions, extras, markers) \
         from the package index; options, paths and URLs are not allowed"
    )]
    Refused { line: usize, text: String },
    /// The file is a symlink, which could point anywhere on the host.
    #[error("{FILE} is a symlink: deploy a regular file")]
    Symlink,
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
    let Some(requirements) = read_plain(&file)? else { return Ok(None) };
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
    // pip reads the checked copy, never the deployed file (which could change meanwhile).
    let checked = cache.join(format!("{key}.partial-{n}.txt"));
    std::fs::write(&checked, &requirements).map_err(io(&checked))?;
    tracing::info!(requirements = %file.display(), into = %target.display(), "Installing packages");
    let output = Command::new(python())
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input"])
        .args(["--no-compile", "--only-binary=:all:", "--target"])
        .arg(&partial)
        .args(pip_target())
        .arg("-r")
        .arg(&checked)
        .output()
        .map_err(RequirementsError::NoPip);
    let _ = std::fs::remove_file(&checked);
    let output = output?;
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

/// The requirements file's bytes if there is one, refused if it is a symlink or holds
/// anything but package requirements.
fn read_plain(file: &Path) -> Result<Option<Vec<u8>>, RequirementsError> {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(file);
    let mut opened = match opened {
        Ok(opened) => opened,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(RequirementsError::Symlink),
        Err(e) => return Err(RequirementsError::Io(file.to_owned(), e)),
    };
    let mut bytes = Vec::new();
    opened.read_to_end(&mut bytes).map_err(|e| RequirementsError::Io(file.to_owned(), e))?;
    for (i, line) in String::from_utf8_lossy(&bytes).lines().enumerate() {
        let text = line.split('#').next().unwrap_or_default().trim();
        let refused = text.starts_with(['-', '.', '/', '~']) || text.contains("://");
        if refused {
            return Err(RequirementsError::Refused { line: i + 1, text: text.to_owned() });
        }
    }
    Ok(Some(bytes))
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
    fn only_package_requirements_are_read_never_options_paths_urls_or_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE);
        std::fs::write(
            &file,
            "numpy==1.26.4  # arrays\n\nrequests[socks]>=2; python_version>'3'\n",
        )
        .unwrap();
        assert!(read_plain(&file).unwrap().is_some());
        for (line, bad) in [
            (1, "-r /etc/shadow"),
            (1, "--index-url http://10.0.0.1/simple"),
            (1, "-e ."),
            (1, "./local-package"),
            (1, "/root/secret.whl"),
            (1, "pkg @ file:///root/pkg"),
            (1, "pkg @ https://example.com/pkg.whl"),
        ] {
            std::fs::write(&file, format!("{bad}\n")).unwrap();
            let refused = read_plain(&file).unwrap_err();
            assert!(
                matches!(&refused, RequirementsError::Refused { line: l, .. } if *l == line),
                "{bad}: {refused}"
            );
            assert!(refused.to_string().contains("options, paths and URLs"), "{refused}");
        }
        std::fs::remove_file(&file).unwrap();
        assert!(read_plain(&file).unwrap().is_none());
        let elsewhere = dir.path().join("elsewhere.txt");
        std::fs::write(&elsewhere, "numpy\n").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
        assert!(matches!(read_plain(&file), Err(RequirementsError::Symlink)));
    }

    #[test]
    fn no_requirements_file_installs_nothing() {
        let code = tempfile::tempdir().unwrap();
        assert!(install(code.path(), &code.path().join("cache"), "/g").unwrap().is_none());
    }
}
