//! `rootfs.ext4`: a copy of the base tree plus the payload, packed with `mkfs.ext4 -d` into a
//! file sized to its contents plus about 20 % (the guest mounts it read-only). `-T default`
//! keeps 4 KiB blocks: below 512 MiB mkfs would otherwise pick 1 KiB ones.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use anyhow::Result;

use super::payload::Payload;
use super::{remove_tree, Flavour, Log};
use crate::cmd;

const MIB: u64 = 1024 * 1024;
const BLOCK: u64 = 4096;
/// Bytes of inode table per inode (mkfs.ext4's default inode size).
const INODE: u64 = 256;
/// mkfs.ext4's journal on a file system of 128 MiB to 1 GiB.
const JOURNAL: u64 = 16 * MIB;

/// Packs `base` + `payload` for `flavour` into `dest` (via `dest.partial`).
pub fn pack(
    log: &Log,
    flavour: Flavour,
    base: &Path,
    payload: &Payload,
    work: &Path,
    dest: &Path,
) -> Result<()> {
    let tree = work.join(format!("rootfs-{}", flavour.name()));
    remove_tree(&tree)?;
    cmd::run(Command::new("cp").args(["-a", "--reflink=auto"]).arg(base).arg(&tree))?;
    payload.install(flavour, &tree)?;

    let usage = Usage::of(&tree)?;
    // 20 % over data and inode tables (bitmaps, descriptors, directories' growth, free space),
    // plus the journal.
    let inodes = usage.entries + usage.entries / 4 + 1024;
    let size = (usage.bytes + inodes * INODE) * 6 / 5 + JOURNAL;
    let size = size.div_ceil(MIB) * MIB;
    let step = log.step(&format!("packing rootfs.ext4 ({} MiB)", size / MIB));
    let partial = dest.with_extension("partial");
    let _ = fs::remove_file(&partial);
    fs::File::create(&partial)?.set_len(size)?;
    cmd::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-d"])
            .arg(&tree)
            .args(["-L", "nexus-root", "-T", "default", "-N", &inodes.to_string()])
            .arg(&partial),
    )?;
    fs::rename(&partial, dest)?;
    remove_tree(&tree)?;
    step.done("rootfs.ext4");
    Ok(())
}

/// What a tree needs on an ext4 file system with 4 KiB blocks.
#[derive(Debug, Default)]
struct Usage {
    /// Data blocks of files and folders, in bytes (short symlinks live in the inode).
    bytes: u64,
    /// Files, folders, links: one inode each.
    entries: u64,
}

impl Usage {
    fn of(root: &Path) -> Result<Usage> {
        let mut usage = Usage::default();
        let mut seen = HashSet::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            usage.bytes += BLOCK;
            usage.entries += 1;
            for entry in fs::read_dir(&dir)? {
                let path = entry?.path();
                let meta = path.symlink_metadata()?;
                if meta.is_dir() {
                    dirs.push(path);
                    continue;
                }
                usage.entries += 1;
                // Hard links share an inode and its blocks; short symlinks live in the inode.
                let new = seen.insert((meta.dev(), meta.ino()));
                if new && !(meta.is_symlink() && meta.len() < 60) {
                    usage.bytes += meta.len().div_ceil(BLOCK) * BLOCK;
                }
            }
        }
        Ok(usage)
    }
}
