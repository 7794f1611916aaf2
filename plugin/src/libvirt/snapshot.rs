//! libvirt snapshots: a domain's save image and a manifest.
//!
//! ```text
//!  take (domain paused)                        DIR/               restore
//!  virDomainSaveFlags(domain.save, PAUSED) ──► domain.save   ──► the saved host paths made
//!    (ends the QEMU process: the domain is     snapshot.json      again (the new region under
//!     saved, then restored from the image)                        the saved name), then
//!                                                                 virDomainRestoreFlags(PAUSED)
//! ```
//!
//! The save image holds the domain XML, guest RAM and (role='master') the region's bytes,
//! which a restore writes back into the region file. libvirt restores a domain only under its
//! saved name and UUID; and giving it new host paths (`virDomainRestoreFlags` with an XML)
//! cost ≈ 90 s here against ≈ 10 s without. So a restored domain is the saved one, host side
//! included: the adapter re-creates its work dir, doorbell socket and region name
//! ([`HostPaths`], recorded in the manifest) for the new VM's region.

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

use super::{api, NAME};
use crate::accel::Accel;
use crate::error::VmmError;
use crate::spec::VmSpec;
use crate::vm::Snapshot;

/// The save image's file name in a snapshot directory.
const IMAGE: &str = "domain.save";

/// The host-side names a domain uses, which its restore uses again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPaths {
    pub work_dir: PathBuf,
    /// The region's name under `/dev/shm`.
    pub shmem: Option<String>,
}

/// `snapshot.json` of a libvirt snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `"libvirt"`.
    vmm: String,
    /// The domain saved: a restore brings it back under this name.
    pub domain: String,
    accel: Accel,
    /// The saved domain's host paths.
    pub host: HostPaths,
}

impl Manifest {
    pub fn new(domain: &str, accel: Accel, host: HostPaths) -> Manifest {
        Manifest { vmm: NAME.to_owned(), domain: domain.to_owned(), accel, host }
    }
}

/// Saves the paused `domain` into `dir` and restores it from there, paused.
pub fn take(
    conn: &Connect,
    domain: &Domain,
    dir: &Path,
    manifest: Manifest,
) -> Result<Snapshot, VmmError> {
    fs::create_dir_all(dir).map_err(VmmError::io(format!("create {}", dir.display())))?;
    let image = image_path(dir)?;
    let vm = manifest.domain.clone();
    // SAFETY: the domain pointer is valid while `domain` lives; `image` is a NUL-terminated
    // string that outlives the call; a null XML keeps the domain's own.
    let saved = unsafe {
        sys::virDomainSaveFlags(
            domain.as_ptr(),
            image.as_ptr(),
            std::ptr::null(),
            sys::VIR_DOMAIN_SAVE_PAUSED,
        )
    };
    if saved < 0 {
        return Err(api(&vm, "save the domain")(virt::error::Error::last_error()));
    }
    let path = dir.join(IMAGE).to_string_lossy().into_owned();
    Domain::domain_restore_flags(conn, &path, None, sys::VIR_DOMAIN_SAVE_PAUSED)
        .map_err(api(&vm, "restore the domain from its save image"))?;

    Snapshot::write(dir, NAME, &manifest)
}

/// Reads the manifest of `snapshot` and checks that libvirt took it on `accel`.
pub fn check(snapshot: &Snapshot, spec: &VmSpec, accel: Accel) -> Result<Manifest, VmmError> {
    let bad = |reason: String| snapshot.bad(reason);
    let manifest: Manifest = snapshot.read_manifest(NAME)?;
    if manifest.accel != accel {
        return Err(bad(format!("it ran on {}, {} asks for {accel}", manifest.accel, spec.name)));
    }
    if !snapshot.dir.join(IMAGE).is_file() {
        return Err(bad(format!("{IMAGE} is missing")));
    }
    Ok(manifest)
}

/// Restores the save image of `snapshot` as it was saved, paused.
pub fn restore(conn: &Connect, snapshot: &Snapshot) -> Result<(), virt::error::Error> {
    let image = snapshot.dir.join(IMAGE).to_string_lossy().into_owned();
    Domain::domain_restore_flags(conn, &image, None, sys::VIR_DOMAIN_SAVE_PAUSED)
}

/// The save image's path in `dir`, for libvirt's C API.
fn image_path(dir: &Path) -> Result<CString, VmmError> {
    CString::new(dir.join(IMAGE).into_os_string().into_encoded_bytes()).map_err(|_| {
        VmmError::BadSnapshot { dir: dir.to_owned(), reason: "its path holds a NUL byte".into() }
    })
}
