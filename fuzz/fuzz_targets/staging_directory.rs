//! Fuzzes the guest's lookup in the staging area against whatever the header and the
//! directory hold: it must find an object lying inside the area, or nothing, or an error,
//! never panic or read outside the region.
#![no_main]

use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nexus_channel::layout::header;
use nexus_channel::staging::{lookup, DIRECTORY_SIZE};
use nexus_channel::{Geometry, Region};

/// One region for the whole run (creating a file per input would dominate the run time).
fn region() -> &'static (tempfile::TempDir, Region, Geometry) {
    static REGION: OnceLock<(tempfile::TempDir, Region, Geometry)> = OnceLock::new();
    REGION.get_or_init(|| {
        let geometry = Geometry::with_staging(1 << 20, 64 << 10, 16, 2, 256 << 10).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let region = Region::create(&dir.path().join("r"), &geometry).unwrap();
        (dir, region, geometry)
    })
}

fuzz_target!(|input: &[u8]| {
    let (_, region, geometry) = region();
    // The first 8 bytes are the published directory length, the rest the directory bytes.
    let Some((len, directory)) = input.split_first_chunk::<8>() else { return };
    let directory = &directory[..directory.len().min(DIRECTORY_SIZE as usize)];
    let staging = geometry.staging_offset() as usize;
    region.copy_in(staging, directory).unwrap();
    let len = u64::from_le_bytes(*len);
    region.atomic_u64(header::DIRECTORY_LEN).unwrap().store(len, Ordering::Release);
    if let Ok(Some(found)) = lookup(region, geometry, "b", "k") {
        let end = found.region_offset + found.size;
        assert!(found.region_offset >= staging && end <= geometry.region_size as usize);
    }
});
