//! The base tree of a rootfs: `debootstrap --variant=minbase bookworm`, then the packages of
//! `guest/image/packages-<flavour>.txt` installed with apt inside a chroot (after the stand-ins
//! of `guest/image/stubs/`, see [`stubs`]), then stripped of what a function never reads (apt
//! lists and caches, docs, man pages, locales).
//!
//! The byte code Debian compiled (`__pycache__`) stays: the root is read-only, so without it
//! every Python process compiles each module it imports. Under TCG that made `import boto3` take
//! 7.6 s instead of 1.3-2 s and `import PIL.Image` 1.5 s instead of 0.6 s, for ~20 MB.
//!
//! This takes minutes, so both steps are cached in `work/base/`: the plain debootstrap in
//! `minbase-<code key>/` (shared by the flavours), each flavour's tree in `<flavour>-<key>/`,
//! where the key is a fingerprint of this file, the package list and the stubs. A new key builds
//! a new tree (and drops the old one); `--force` rebuilds the flavour's tree from the cached
//! minbase, upgrading its packages (delete `work/base/` to redo debootstrap). Everything Nexus
//! adds on top is [`super::payload`]'s, packed per build. A package list is one name per line;
//! `#` starts a comment.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

use super::cache::Fingerprint;
use super::debian::{self, SUITE};
use super::{guest_image_dir, remove_tree, Flavour, Log};
use crate::{cmd, python, setup};

/// Below the tree root: removed after installing. `*` matches the contents of a folder.
const STRIP: &[&str] = &[
    "var/lib/apt/lists/*",
    "var/cache/apt/*",
    "var/log/*",
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
    "usr/share/lintian",
    "etc/resolv.conf",
];

/// The fingerprint of this file: how trees are built.
fn code_key() -> Fingerprint {
    let mut key = Fingerprint::new();
    key.add("code", include_str!("base.rs").as_bytes());
    key
}

/// The cache key of `flavour`'s base tree.
pub fn key(flavour: Flavour) -> Result<String> {
    let mut key = code_key();
    key.file(&packages_file(flavour))?;
    for stub in stubs()? {
        key.file(&stub)?;
    }
    Ok(key.finish())
}

/// The base tree for `flavour` and `key`, built unless it is cached (or `force`).
pub fn ensure(log: &Log, flavour: Flavour, key: &str, work: &Path, force: bool) -> Result<PathBuf> {
    let bases = work.join("base");
    let tree = bases.join(format!("{}-{key}", flavour.name()));
    if tree.is_dir() && !force {
        log.say(&format!("base tree cached ({})", tree.display()));
        return Ok(tree);
    }
    let packages = packages(flavour)?;
    let minbase = minbase(log, &bases)?;
    let partial = tree.with_extension("partial");
    remove_tree(&partial)?;
    cmd::run(Command::new("cp").args(["-a", "--reflink=auto"]).arg(&minbase).arg(&partial))?;
    let step = log.step(&format!("apt-get install {} (≈20 s-2 min)…", packages.join(" ")));
    install(&partial, &packages)?;
    step.done("apt-get install");
    if flavour == Flavour::Baseline {
        let step = log.step(&format!("pip install {} (≈10 s)…", python::BOTO3));
        install_boto3(&partial)?;
        step.done("pip install");
    }
    strip(&partial)?;
    replace_older(&bases, flavour.name(), &partial, &tree)?;
    Ok(tree)
}

/// The plain debootstrap'd tree, made unless cached.
fn minbase(log: &Log, bases: &Path) -> Result<PathBuf> {
    let tree = bases.join(format!("minbase-{}", code_key().finish()));
    if tree.is_dir() {
        return Ok(tree);
    }
    let partial = tree.with_extension("partial");
    remove_tree(&partial)?;
    fs::create_dir_all(bases)?;
    let mirror = debian::mirror()?;
    let step = log.step(&format!("debootstrap {SUITE} minbase (≈1-3 min)…"));
    cmd::run(
        Command::new("debootstrap")
            .args(["--variant=minbase", SUITE])
            .arg(&partial)
            .arg(&mirror)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    step.done("debootstrap");
    replace_older(bases, "minbase", &partial, &tree)?;
    Ok(tree)
}

/// Renames `partial` to `tree`, first removing the other trees named `<prefix>-*` in `bases`:
/// one tree per flavour (and one minbase) is kept.
fn replace_older(bases: &Path, prefix: &str, partial: &Path, tree: &Path) -> Result<()> {
    let prefix = format!("{prefix}-");
    for entry in fs::read_dir(bases)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&prefix) && !name.ends_with(".partial") {
            remove_tree(&path)?;
        }
    }
    fs::rename(partial, tree)?;
    Ok(())
}

fn packages_file(flavour: Flavour) -> PathBuf {
    guest_image_dir().join(format!("packages-{}.txt", flavour.name()))
}

/// The package names of `flavour`'s list.
fn packages(flavour: Flavour) -> Result<Vec<String>> {
    let path = packages_file(flavour);
    let text =
        fs::read_to_string(&path).with_context(|| format!("Cannot read {}", path.display()))?;
    let names: Vec<String> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    ensure!(!names.is_empty(), "{} lists no packages", path.display());
    Ok(names)
}

/// In a chroot at `tree`: `apt-get upgrade`, then `apt-get install --no-install-recommends` of
/// the stand-in packages and `packages`; /proc is mounted for the maintainer scripts (and
/// unmounted again even on failure).
fn install(tree: &Path, packages: &[String]) -> Result<()> {
    let proc = tree.join("proc");
    cmd::run(Command::new("mount").args(["-t", "proc", "proc"]).arg(&proc))?;
    let apt = |args: &[&str]| {
        let mut command = Command::new("chroot");
        command.arg(tree).arg("apt-get").args(["-q", "-y"]).args(args);
        command.env("DEBIAN_FRONTEND", "noninteractive").env("LC_ALL", "C.UTF-8");
        command
    };
    let result = cmd::run(&mut apt(&["update"]))
        .and_then(|()| cmd::run(&mut apt(&["upgrade"])))
        .and_then(|()| build_stubs(tree))
        .and_then(|stubs| {
            let debs = stubs.iter().map(|(_, deb)| format!("/{deb}"));
            cmd::run(apt(&["install", "--no-install-recommends"]).args(debs).args(packages))?;
            for (name, deb) in stubs {
                cmd::run(Command::new("chroot").arg(tree).args(["apt-mark", "hold", &name]))?;
                fs::remove_file(tree.join(deb))?;
            }
            Ok(())
        })
        .and_then(|()| cmd::run(&mut apt(&["clean"])));
    let unmounted = cmd::run(Command::new("umount").arg(&proc));
    result.and(unmounted)
}

/// Installs PyPI's boto3 (pure Python) into the tree's site-packages with the tests' venv, and
/// byte-compiles it with the guest's own Python (the root is read-only at run time).
fn install_boto3(tree: &Path) -> Result<()> {
    let venv = python::ensure_venv(&setup::cache_dir()?.join("venv"))?;
    let guest_python = fs::read_link(tree.join("usr/bin/python3"))
        .context("the tree has no /usr/bin/python3 link")?;
    let site = Path::new("/usr/local/lib").join(&guest_python).join("dist-packages");
    cmd::run(
        Command::new(venv)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-compile",
            ])
            .arg("--target")
            .arg(tree.join(site.strip_prefix("/")?))
            .arg(python::BOTO3),
    )?;
    cmd::run(
        Command::new("chroot").arg(tree).args(["python3", "-m", "compileall", "-q"]).arg(&site),
    )
}

/// The stand-in packages: `guest/image/stubs/<name>.control`, each the control file of an empty
/// package that satisfies a dependency without the real, heavier package. Sorted by name.
fn stubs() -> Result<Vec<PathBuf>> {
    let dir = guest_image_dir().join("stubs");
    let mut stubs = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("Cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "control") {
            stubs.push(path);
        }
    }
    stubs.sort();
    Ok(stubs)
}

/// Builds each stub with `dpkg-deb` into `tree`'s /tmp; returns (name, .deb relative to `tree`).
fn build_stubs(tree: &Path) -> Result<Vec<(String, String)>> {
    let mut debs = Vec::new();
    for control in stubs()? {
        let name = control.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let build = tree.join(format!("tmp/stub-{name}"));
        let deb = format!("tmp/stub-{name}.deb");
        fs::create_dir_all(build.join("DEBIAN"))?;
        fs::copy(&control, build.join("DEBIAN/control"))?;
        cmd::run(
            Command::new("dpkg-deb")
                .args(["--build", "--root-owner-group"])
                .arg(&build)
                .arg(tree.join(&deb)),
        )?;
        fs::remove_dir_all(&build)?;
        debs.push((name, deb));
    }
    Ok(debs)
}

/// Removes [`STRIP`] from `tree`.
fn strip(tree: &Path) -> Result<()> {
    for pattern in STRIP {
        let (dir, contents) = match pattern.strip_suffix("/*") {
            Some(dir) => (tree.join(dir), true),
            None => (tree.join(pattern), false),
        };
        if contents {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries {
                remove_path(&entry?.path())?;
            }
        } else if dir.symlink_metadata().is_ok() {
            remove_path(&dir)?;
        }
    }
    Ok(())
}

fn remove_path(path: &Path) -> Result<()> {
    let removed = if path.symlink_metadata()?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    removed.with_context(|| format!("Cannot remove {}", path.display()))
}
