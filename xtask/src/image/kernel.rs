//! The guest kernel: Debian's current cloud kernel, as a bzImage (`vmlinuz`) and as the PVH ELF
//! (`vmlinux`) that `-M microvm` boots directly.
//!
//! `linux-image-cloud-amd64` names the versioned package; it is downloaded once per version into
//! `work/debs/`, with `depmod` run over its modules (the .deb ships no `modules.dep`). The bzImage
//! carries an LZ4 (legacy frame) payload: cutting it at the frame magic and `lz4 -dc` gives the
//! uncompressed vmlinux, which must hold the Xen PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use super::debian::{self, Package};
use super::{link_or_copy, output, Log};
use crate::cmd;

/// The meta package that depends on the current cloud kernel.
const META: &str = "linux-image-cloud-amd64";

/// Start of an LZ4 legacy frame, as the kernel's bzImage embeds it.
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];

/// An unpacked kernel package.
#[derive(Debug)]
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-48-cloud-amd64`.
    pub version: String,
    pub package: Package,
    /// The unpacked package.
    root: PathBuf,
}

impl Kernel {
    /// Resolves the current cloud kernel and makes sure it is unpacked under `work/debs/`.
    pub fn fetch(work: &Path) -> Result<Kernel> {
        let name = debian::depends(META)?
            .into_iter()
            .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
            .with_context(|| format!("`{META}` depends on no linux-image-*-cloud-amd64"))?;
        let version = name["linux-image-".len()..].to_owned();
        let package = Package::candidate(&name)?;
        let root = package.fetch(&work.join("debs"))?;
        let kernel = Kernel { version, package, root };
        if !kernel.modules_dir().join("modules.dep").is_file() {
            cmd::run(Command::new("depmod").arg("-b").arg(&kernel.root).arg(&kernel.version))?;
        }
        Ok(kernel)
    }

    /// `lib/modules/<version>` of the unpacked package.
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.version)
    }

    /// Puts the bzImage at `vmlinuz` and the PVH ELF at `vmlinux` (extracted once per version).
    pub fn install(&self, log: &Log, vmlinuz: &Path, vmlinux: &Path) -> Result<()> {
        let bzimage = self.root.join("boot").join(format!("vmlinuz-{}", self.version));
        let elf = self.root.parent().context("Package root has a parent")?.join("vmlinux");
        if !elf.is_file() {
            let step = log.step("extracting the PVH vmlinux from the bzImage");
            extract_vmlinux(&bzimage, &elf)?;
            step.done("vmlinux");
        }
        link_or_copy(&bzimage, vmlinuz)?;
        link_or_copy(&elf, vmlinux)
    }
}

/// Decompresses the LZ4 payload of `bzimage` into `dest`; checks that it is a PVH ELF.
fn extract_vmlinux(bzimage: &Path, dest: &Path) -> Result<()> {
    let image = fs::read(bzimage).with_context(|| format!("Cannot read {}", bzimage.display()))?;
    let start = image
        .windows(LZ4_LEGACY_MAGIC.len())
        .position(|w| w == LZ4_LEGACY_MAGIC)
        .with_context(|| format!("No LZ4 payload in {} (not an LZ4 kernel?)", bzimage.display()))?;
    let payload = dest.with_extension("lz4");
    let partial = dest.with_extension("partial");
    fs::write(&payload, &image[start..])?;
    // lz4 stops with an error at the bzImage's trailer after the frame, having written
    // everything before it: judge the output, not the exit status.
    cmd::status(Command::new("lz4").arg("-dc").arg(&payload).stdout(File::create(&partial)?))?;
    fs::remove_file(&payload)?;
    let head = fs::read(&partial).map(|b| b.get(..4).map(<[u8]>::to_vec))?;
    ensure!(head.as_deref() == Some(b"\x7fELF"), "The LZ4 payload of the bzImage is not an ELF");
    let notes = output(Command::new("readelf").arg("-n").arg(&partial))?;
    if !has_pvh_note(&notes) {
        bail!("{} has no PVH entry note: -M microvm cannot boot it", partial.display());
    }
    fs::rename(&partial, dest)?;
    Ok(())
}

/// Whether `readelf -n` output lists a Xen note of type 0x12 (`XEN_ELFNOTE_PHYS32_ENTRY`).
fn has_pvh_note(readelf: &str) -> bool {
    readelf.lines().any(|l| {
        l.trim_start().starts_with("Xen")
            && (l.contains("(0x00000012)") || l.contains("PHYS32_ENTRY"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_note_is_found_in_readelf_output() {
        let notes = "\
Displaying notes found in: .notes
  Owner                Data size \tDescription
  Xen                  0x00000008\tUnknown note type: (0x00000003)
  Xen                  0x00000008\tUnknown note type: (0x00000012)
   description data: 50 08 00 01 00 00 00 00
";
        assert!(has_pvh_note(notes));
        assert!(!has_pvh_note(&notes.replace("(0x00000012)", "(0x00000011)")));
    }
}
