//! `cargo xtask guest-image`: builds the function-VM images from Debian packages.
//!
//! One image per [`Flavour`], in `~/.cache/nexus/images/<flavour>/`:
//!
//! ```text
//! vmlinuz        Debian's cloud kernel (bzImage), for q35/pc
//! vmlinux        the same kernel as a PVH ELF, for `-M microvm`
//! initrd.img     busybox-static + virtio modules + guest/image/initramfs-init (gzip'd newc cpio)
//! rootfs.ext4    bookworm minbase + guest/image/packages-<flavour>.txt + the Nexus payload
//! manifest.json  {flavour, kernel_version, inputs, built_at, sizes}; written last
//! ```
//!
//! Work files live in `~/.cache/nexus/images/work/`: downloaded packages by version, and the
//! slow part of the rootfs (debootstrap + apt, minutes) as a base tree per flavour, keyed by its
//! package list and the code that builds it ([`base`]). An image is rebuilt when the `inputs`
//! fingerprint of everything that goes into it changes; a change to the payload only (nexus-init,
//! the agent, guest/python, the guest library) re-packs the rootfs in seconds.
//!
//! Needs root (debootstrap, chroot, mknod) and the apt packages of `cargo xtask setup`. Builds
//! from several processes (a test run and a bench, say) take turns on `images/.lock`.

mod base;
mod cache;
mod debian;
mod initramfs;
mod kernel;
mod manifest;
mod modules;
mod payload;
mod rootfs;

use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::ValueEnum;

use crate::{cmd, workspace_root};
use cache::Fingerprint;

/// The sources of this module: part of every image's inputs, so a change to how images are
/// built rebuilds them (`base.rs` counts through the base tree's key).
const RECIPE: &[&str] = &[
    include_str!("mod.rs"),
    include_str!("cache.rs"),
    include_str!("debian.rs"),
    include_str!("initramfs.rs"),
    include_str!("kernel.rs"),
    include_str!("manifest.rs"),
    include_str!("modules.rs"),
    include_str!("payload.rs"),
    include_str!("rootfs.rs"),
];

/// What runs in the VM next to the function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// No NIC; boto3 calls go through the shared-memory channel (the shim).
    Nexus,
    /// The conventional set-up: Debian's real boto3 and a virtio NIC.
    Baseline,
}

impl Flavour {
    pub const ALL: [Flavour; 2] = [Flavour::Nexus, Flavour::Baseline];

    pub fn name(self) -> &'static str {
        match self {
            Flavour::Nexus => "nexus",
            Flavour::Baseline => "baseline",
        }
    }

    /// Kernel modules the initramfs loads; their dependencies come from `modules.dep`, and
    /// those built into the kernel are skipped. virtio_mmio serves `-M microvm` without PCI;
    /// the doorbell is a virtio-serial port under QEMU and a vsock under Cloud Hypervisor.
    fn modules(self) -> &'static [&'static str] {
        match self {
            Flavour::Nexus => &[
                "virtio_pci",
                "virtio_mmio",
                "virtio_blk",
                "ext4",
                "virtio_console",
                "vmw_vsock_virtio_transport",
            ],
            Flavour::Baseline => {
                &["virtio_pci", "virtio_mmio", "virtio_blk", "ext4", "virtio_console", "virtio_net"]
            }
        }
    }
}

/// `--flavour` of the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Choice {
    Nexus,
    Baseline,
    All,
}

impl Choice {
    fn flavours(self) -> &'static [Flavour] {
        match self {
            Choice::Nexus => &[Flavour::Nexus],
            Choice::Baseline => &[Flavour::Baseline],
            Choice::All => &Flavour::ALL,
        }
    }
}

/// The files of a built image.
#[derive(Debug, Clone)]
pub struct ImagePaths {
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    pub vmlinux: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
}

impl ImagePaths {
    fn new(dir: PathBuf) -> Self {
        ImagePaths {
            vmlinuz: dir.join("vmlinuz"),
            vmlinux: dir.join("vmlinux"),
            initrd: dir.join("initrd.img"),
            rootfs: dir.join("rootfs.ext4"),
            dir,
        }
    }

    /// The image files with their names in the manifest.
    fn files(&self) -> [(&'static str, &Path); 4] {
        [
            ("vmlinuz", &self.vmlinuz),
            ("vmlinux", &self.vmlinux),
            ("initrd", &self.initrd),
            ("rootfs", &self.rootfs),
        ]
    }
}

/// `cargo xtask guest-image`: makes sure each chosen flavour is built, then prints its files.
pub fn run(choice: Choice, force: bool) -> Result<()> {
    let mut built = Vec::new();
    for &flavour in choice.flavours() {
        built.push((flavour, ensure(flavour, force)?));
    }
    for (flavour, paths) in built {
        println!("image[{}]: {}", flavour.name(), paths.dir.display());
        for (_, path) in paths.files() {
            let size = fs::metadata(path)?.len();
            println!("  {:>9}  {}", human_size(size), path.display());
        }
    }
    Ok(())
}

/// Builds the image of `flavour` unless it is up to date (or `force`); returns its files.
pub fn ensure(flavour: Flavour, force: bool) -> Result<ImagePaths> {
    let images = images_dir()?;
    let log = Log { flavour };
    fs::create_dir_all(&images)?;
    let _lock = BuildLock::take(&images.join(".lock"), &log)?;
    let work = images.join("work");
    let paths = ImagePaths::new(images.join(flavour.name()));

    let kernel = kernel::Kernel::fetch(&work)?;
    let busybox = debian::Package::candidate("busybox-static")?;
    let payload = payload::Payload::build(&log)?;
    let base_key = base::key(flavour)?;
    let init = guest_image_dir().join("initramfs-init");

    let mut inputs = Fingerprint::new();
    inputs.add("flavour", flavour.name().as_bytes());
    RECIPE.iter().for_each(|source| inputs.add("recipe", source.as_bytes()));
    inputs.add("kernel", kernel.package.file_stem().as_bytes());
    inputs.add("busybox", busybox.file_stem().as_bytes());
    inputs.add("base", base_key.as_bytes());
    inputs.file(&init)?;
    payload.fingerprint(flavour, &mut inputs)?;
    let inputs = inputs.finish();

    let present = paths.files().iter().all(|(_, path)| path.is_file());
    if !force && present && manifest::inputs(&paths.dir).as_deref() == Some(inputs.as_str()) {
        log.say(&format!("up to date ({})", paths.dir.display()));
        return Ok(paths);
    }

    ensure!(is_root()?, "Building guest images needs root (debootstrap, chroot, mknod)");
    let started = Instant::now();
    log.say(&format!("building into {} (kernel {})", paths.dir.display(), kernel.version));
    fs::create_dir_all(&paths.dir)?;
    manifest::remove(&paths.dir)?;
    kernel.install(&log, &paths.vmlinuz, &paths.vmlinux)?;
    let busybox = busybox.fetch(&work.join("debs"))?;
    initramfs::build(&log, flavour, &kernel, &busybox, &init, &work, &paths.initrd)?;
    let base = base::ensure(&log, flavour, &base_key, &work, force)?;
    rootfs::pack(&log, flavour, &base, &payload, &work, &paths.rootfs)?;
    manifest::write(&paths, flavour, &kernel.version, &inputs)?;
    log.say(&format!("built in {} s", started.elapsed().as_secs()));
    Ok(paths)
}

/// An exclusive `flock` on a file, held by a `flock(1)` child that waits on a pipe from this
/// process: it is released when the lock is dropped or this process ends, however it ends.
#[derive(Debug)]
struct BuildLock {
    holder: Child,
}

impl BuildLock {
    fn take(path: &Path, log: &Log) -> Result<BuildLock> {
        if let Some(lock) = BuildLock::try_take(path, false)? {
            return Ok(lock);
        }
        log.say(&format!("waiting for another image build ({} is locked)", path.display()));
        BuildLock::try_take(path, true)?.context("`flock` ended without the lock")
    }

    /// The lock, or `None` if it is busy and `wait` is false.
    fn try_take(path: &Path, wait: bool) -> Result<Option<BuildLock>> {
        let mut holder = Command::new("flock")
            .args(if wait { &[][..] } else { &["--nonblock"][..] })
            .arg(path)
            .args(["sh", "-c", "echo locked; exec cat >/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("Cannot run `flock` (util-linux)")?;
        let mut line = String::new();
        BufReader::new(holder.stdout.take().context("No pipe from flock")?).read_line(&mut line)?;
        if line.trim() == "locked" {
            return Ok(Some(BuildLock { holder }));
        }
        holder.wait()?;
        Ok(None)
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        drop(self.holder.stdin.take());
        let _ = self.holder.wait();
    }
}

/// Progress lines: `image[<flavour>]: ...`.
#[derive(Debug, Clone, Copy)]
struct Log {
    flavour: Flavour,
}

impl Log {
    fn say(&self, message: &str) {
        println!("image[{}]: {message}", self.flavour.name());
    }

    /// Announces a long step; [`Step::done`] prints its elapsed time.
    fn step(&self, message: &str) -> Step {
        self.say(message);
        Step { log: *self, started: Instant::now() }
    }
}

/// A long step under way.
#[derive(Debug)]
struct Step {
    log: Log,
    started: Instant,
}

impl Step {
    fn done(self, what: &str) {
        let seconds = self.started.elapsed().as_secs_f64();
        self.log.say(&format!("{what} done ({seconds:.1} s)"));
    }
}

/// `~/.cache/nexus/images`.
fn images_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/nexus/images"))
}

/// `guest/image/` of the workspace: init scripts and package lists.
fn guest_image_dir() -> PathBuf {
    workspace_root().join("guest/image")
}

/// Runs a query (echoed like every command) and returns its standard output.
fn output(command: &mut Command) -> Result<String> {
    println!("$ {}", cmd::show(command));
    let output =
        command.output().with_context(|| format!("Cannot run `{}`", cmd::show(command)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            cmd::show(command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).context("Output is not UTF-8")
}

/// Whether this process runs as root (uid 0), from `/proc/self/status`.
fn is_root() -> Result<bool> {
    let status = fs::read_to_string("/proc/self/status")?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).context("No Uid in status")?;
    Ok(uid.split_whitespace().next() == Some("0"))
}

/// Removes `dir` and everything in it, after unmounting whatever is mounted below it (a chroot
/// left behind by an interrupted build), so the removal never reaches into a mounted tree.
fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let dir = dir.canonicalize()?;
    let mounts = fs::read_to_string("/proc/mounts")?;
    let mut below: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| Path::new(m).starts_with(&dir))
        .collect();
    below.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in below {
        cmd::run(Command::new("umount").arg("--lazy").arg(mount))?;
    }
    fs::remove_dir_all(&dir).with_context(|| format!("Cannot remove {}", dir.display()))
}

/// Puts `source` at `dest` as a hard link (a copy across file systems), replacing `dest`.
fn link_or_copy(source: &Path, dest: &Path) -> Result<()> {
    match fs::remove_file(dest) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    if fs::hard_link(source, dest).is_err() {
        fs::copy(source, dest)
            .with_context(|| format!("Cannot copy {} to {}", source.display(), dest.display()))?;
    }
    Ok(())
}

/// `bytes` for people: KiB below a MiB, else MiB with one decimal.
fn human_size(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes < 1024 * 1024 {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB)
    }
}
