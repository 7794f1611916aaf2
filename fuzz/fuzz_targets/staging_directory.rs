//! Fuzzes the guest's lookup in the staging area against whatever the header and the
//! directory hold: it must find an object lying inside the area, or nothing, or an error,
//! never panic or read outside the region.
//!
//! Input: the published directory length (8 bytes, LE), then the directory's bytes.
#![no_main]

use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nexus_channel::layout::header;
use nexus_channel::staging::{lookup, DIRECTORY_SIZE};
use nexus_channel::Geometry;
use nexus_fuzz::{padded, Scratch};

fn scratch() -> &'static Scratch {
    static SCRATCH: OnceLock<Scratch> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        Scratch::new(Geometry::with_staging(1 << 20, 64 << 10, 16, 2, 256 << 10).unwrap())
    })
}

fuzz_target!(|input: &[u8]| {
    let Scratch { region, geometry, .. } = scratch();
    let Some((len, directory)) = input.split_first_chunk::<8>() else { return };
    let len = u64::from_le_bytes(*len);
    // The lookup reads at most `len` bytes of the directory: those are the input's (or zeros).
    let staging = geometry.staging_offset() as usize;
    let read = len.min(DIRECTORY_SIZE) as usize;
    region.copy_in(staging, &padded(directory, read)).unwrap();
    region.atomic_u64(header::DIRECTORY_LEN).unwrap().store(len, Ordering::Release);
    if let Ok(Some(found)) = lookup(region, geometry, "b", "k") {
        let end = found.region_offset + found.size;
        assert!(found.region_offset >= staging && end <= geometry.region_size as usize);
    }
});
