//! Fuzzes the host's ring consumer against a calls ring a hostile guest has scribbled over:
//! arbitrary indices and descriptors must yield descriptors or errors, never a panic or
//! an access outside the region.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use nexus_channel::layout::RingId;
use nexus_channel::wire::Envelope;
use nexus_channel::{CallDesc, Consumer, Geometry, Region};

/// One region for the whole run (creating a file per input would dominate the run time).
fn region() -> &'static (tempfile::TempDir, Arc<Region>, Geometry) {
    static REGION: OnceLock<(tempfile::TempDir, Arc<Region>, Geometry)> = OnceLock::new();
    REGION.get_or_init(|| {
        let geometry = Geometry::new(1 << 20, 64 << 10, 16, 2).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let region = Arc::new(Region::create(&dir.path().join("r"), &geometry).unwrap());
        (dir, region, geometry)
    })
}

fuzz_target!(|input: &[u8]| {
    let (_, region, geometry) = region();
    let geometry = *geometry;
    // The input is what the guest wrote over the calls ring: its producer index (bytes 0..4),
    // its consumer line (which the host never reads) and its descriptors.
    let ring = geometry.ring_offset(RingId::Calls);
    let mut scribble = vec![0; geometry.ring_offset(RingId::Completions) - ring];
    let span = input.len().min(scribble.len());
    scribble[..span].copy_from_slice(&input[..span]);
    region.copy_in(ring, &scribble).unwrap();
    let mut calls = Consumer::<CallDesc>::new(region.clone(), &geometry, RingId::Calls);
    for _ in 0..64 {
        match calls.pop() {
            Ok(Some(desc)) => {
                if let Ok(envelope) = Envelope::open(&desc, &geometry) {
                    let mut args = vec![0; envelope.args_len];
                    region.copy_out(envelope.buffer_offset, &mut args).unwrap();
                    let _ = envelope.parse(&args);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
});
