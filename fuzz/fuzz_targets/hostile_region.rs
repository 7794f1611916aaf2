//! Fuzzes the host's ring consumer and call parser against a region a hostile guest has
//! scribbled over: arbitrary indices, descriptors and buffer bytes must yield calls or errors,
//! never a panic or an access outside the region.
//!
//! Input: the calls ring as the guest leaves it (producer line, consumer line — which the host
//! never reads — and 16 descriptors: `ring_len` bytes), then the bytes the guest wrote at the
//! start of every guest buffer (up to `WINDOW`).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nexus_channel::layout::RingId;
use nexus_channel::wire::Envelope;
use nexus_channel::{CallDesc, Consumer};
use nexus_fuzz::{calls_geometry, padded, ring_len, Scratch};

fn scratch() -> &'static Scratch {
    static SCRATCH: OnceLock<Scratch> = OnceLock::new();
    SCRATCH.get_or_init(|| Scratch::new(calls_geometry()))
}

fuzz_target!(|input: &[u8]| {
    let Scratch { region, geometry, .. } = scratch();
    let (ring, window) = input.split_at(ring_len(geometry).min(input.len()));
    region.copy_in(geometry.ring_offset(RingId::Calls), &padded(ring, ring_len(geometry))).unwrap();
    scratch().fill(0..geometry.guest_buffers, window);
    let mut calls = Consumer::<CallDesc>::new(region.clone(), geometry, RingId::Calls);
    for _ in 0..64 {
        match calls.pop() {
            Ok(Some(desc)) => {
                if let Ok(envelope) = Envelope::open(&desc, geometry) {
                    let mut args = vec![0; envelope.args_len];
                    region.copy_out(envelope.buffer_offset, &mut args).unwrap();
                    let _ = envelope.parse(&args);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
});
