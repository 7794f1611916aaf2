//! What the VM tests boot: the nexus guest image (built if missing) and region files.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use nexus_plugin::{Disk, RegionSpec, VmSpec};
use tempfile::TempDir;

/// The kernel parameters the backend gives a function VM: the agent needs them, and keeps the
/// guest up while it retries a runtime that finds no served region.
const CMDLINE: &str = "console=ttyS0 nexus.function=plugin-test \
                       nexus.handler=/opt/nexus/python/examples/compress/handler.py:handler";

/// The nexus guest image.
#[derive(Debug)]
pub struct Image {
    vmlinuz: PathBuf,
    initrd: PathBuf,
    rootfs: PathBuf,
}

impl Image {
    /// A 256 MiB VM booting the image from its read-only root disk, `region` attached.
    pub fn spec(&self, name: &str, work_dir: &Path, region: Option<&Region>) -> VmSpec {
        VmSpec {
            initrd: Some(self.initrd.clone()),
            cmdline: CMDLINE.into(),
            disks: vec![Disk { path: self.rootfs.clone(), read_only: true }],
            region: region.map(|r| RegionSpec { path: r.path.clone(), size: Region::SIZE }),
            ..VmSpec::new(name, &self.vmlinuz, work_dir)
        }
    }
}

/// The image in `$NEXUS_IMAGES`, else in `~/.cache/nexus/images/nexus` (built there first by
/// `cargo xtask guest-image --flavour nexus` unless complete: its `manifest.json` is written
/// last).
pub fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let (dir, given) = match std::env::var_os("NEXUS_IMAGES") {
            Some(dir) => (PathBuf::from(dir), true),
            None => (home().join(".cache/nexus/images/nexus"), false),
        };
        let image = Image {
            vmlinuz: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            rootfs: dir.join("rootfs.ext4"),
        };
        let complete = |with_manifest: bool| {
            [&image.vmlinuz, &image.initrd, &image.rootfs].iter().all(|p| p.is_file())
                && (!with_manifest || dir.join("manifest.json").is_file())
        };
        if given {
            let dir = dir.display();
            assert!(complete(false), "NEXUS_IMAGES={dir} lacks vmlinuz, initrd.img or rootfs.ext4");
        } else if !complete(true) {
            build_image();
            assert!(complete(true), "`cargo xtask guest-image` left no image in {}", dir.display());
        }
        image
    })
}

fn build_image() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("building the nexus guest image (minutes, once)");
    let status = Command::new(cargo)
        .args(["xtask", "guest-image", "--flavour", "nexus"])
        .current_dir(workspace)
        .status()
        .expect("cannot run cargo xtask guest-image");
    assert!(status.success(), "`cargo xtask guest-image --flavour nexus` failed: {status}");
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
}

/// A region file in /dev/shm filled with a pattern.
#[derive(Debug)]
pub struct Region {
    _dir: TempDir,
    path: PathBuf,
}

impl Region {
    pub const SIZE: u64 = 1 << 20;

    pub fn new(seed: u8) -> Region {
        let dir = tempfile::Builder::new().prefix("nexus-plugin-test").tempdir_in("/dev/shm");
        let dir = dir.unwrap();
        let region = Region { path: dir.path().join("test.region"), _dir: dir };
        region.fill(seed);
        region
    }

    fn pattern(seed: u8) -> Vec<u8> {
        (0..Self::SIZE).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    pub fn fill(&self, seed: u8) {
        fs::write(&self.path, Self::pattern(seed)).unwrap();
    }

    pub fn assert_holds(&self, seed: u8) {
        let bytes = fs::read(&self.path).unwrap();
        assert_eq!(bytes.len() as u64, Self::SIZE);
        assert!(bytes == Self::pattern(seed), "the region does not hold pattern {seed}");
    }
}
