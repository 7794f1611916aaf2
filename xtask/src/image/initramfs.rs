//! The initramfs: just enough to mount the root disk and hand over to `/sbin/nexus-init`.
//!
//! ```text
//! /init                  guest/image/initramfs-init
//! /bin/busybox           from Debian's busybox-static, with a symlink per applet
//! /dev/console           so the kernel can give /init a console before devtmpfs is mounted
//! /lib/modules/*.ko      the flavour's modules and their dependencies
//! /etc/nexus-modules     their file names, in load order
//! ```
//!
//! Packed as a gzip'd newc cpio, owned by root.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use super::kernel::Kernel;
use super::modules::Modules;
use super::{output, remove_tree, Flavour, Log};
use crate::cmd;

/// Builds the initramfs of `flavour` into `dest`; `busybox` is the unpacked busybox-static.
pub fn build(
    log: &Log,
    flavour: Flavour,
    kernel: &Kernel,
    busybox: &Path,
    init: &Path,
    work: &Path,
    dest: &Path,
) -> Result<()> {
    let step = log.step("building initrd.img");
    let tree = work.join(format!("initramfs-{}", flavour.name()));
    remove_tree(&tree)?;
    for dir in ["bin", "dev", "etc", "lib/modules", "newroot", "proc", "sys"] {
        fs::create_dir_all(tree.join(dir))?;
    }

    let bin = tree.join("bin/busybox");
    fs::copy(busybox.join("bin/busybox"), &bin).context("busybox-static has no bin/busybox")?;
    for applet in output(Command::new(&bin).arg("--list"))?.split_whitespace() {
        if applet != "busybox" {
            symlink("busybox", tree.join("bin").join(applet))?;
        }
    }
    cmd::run(
        Command::new("mknod")
            .args(["-m", "600"])
            .arg(tree.join("dev/console"))
            .args(["c", "5", "1"]),
    )?;

    let order = Modules::load(&kernel.modules_dir())?.load_order(flavour.modules())?;
    let mut list = String::new();
    for file in &order {
        let name = Path::new(file).file_name().context("Module path has a file name")?;
        fs::copy(kernel.modules_dir().join(file), tree.join("lib/modules").join(name))?;
        list.push_str(&format!("{}\n", name.to_string_lossy()));
    }
    fs::write(tree.join("etc/nexus-modules"), &list)?;
    log.say(&format!("initramfs modules: {}", list.trim().replace('\n', " ")));

    let init_dest = tree.join("init");
    fs::copy(init, &init_dest).with_context(|| format!("Cannot copy {}", init.display()))?;
    fs::set_permissions(&init_dest, fs::Permissions::from_mode(0o755))?;

    pack(&tree, dest)?;
    remove_tree(&tree)?;
    step.done("initrd.img");
    Ok(())
}

/// Packs `tree` as a gzip'd newc cpio at `dest` (via `dest.cpio`, renamed when complete).
fn pack(tree: &Path, dest: &Path) -> Result<()> {
    let list = output(Command::new("find").arg(".").current_dir(tree))?;
    let mut names: Vec<&str> = list.lines().filter(|n| *n != ".").collect();
    names.sort_unstable();
    let names_file = tree.with_extension("list");
    fs::write(&names_file, names.join("\n") + "\n")?;
    let cpio = dest.with_extension("cpio");
    cmd::run(
        Command::new("cpio")
            .args(["--create", "--format=newc", "--owner=0:0", "--quiet", "-O"])
            .arg(&cpio)
            .current_dir(tree)
            .stdin(fs::File::open(&names_file)?),
    )?;
    fs::remove_file(&names_file)?;
    cmd::run(Command::new("gzip").args(["-9", "-n", "-f"]).arg(&cpio))?;
    fs::rename(cpio.with_extension("cpio.gz"), dest)?;
    Ok(())
}
