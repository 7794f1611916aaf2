//! Fuzzes the host-side parser of guest calls: an arbitrary descriptor and arbitrary buffer
//! bytes must be accepted or rejected, never panic, and never name bytes outside the buffer.
//!
//! Input: a `CallDesc` as it lies in its ring slot (64 bytes), then the buffer's first bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_channel::layout::DESC_SIZE;
use nexus_channel::wire::Envelope;
use nexus_channel::{CallDesc, Geometry};
use nexus_fuzz::{from_bytes, padded};

fuzz_target!(|input: &[u8]| {
    let Some((desc, buffer)) = input.split_at_checked(DESC_SIZE) else { return };
    let desc: CallDesc = from_bytes(desc);
    let geometry = Geometry::new(1 << 20, 64 << 10, 16, 2).unwrap();
    if let Ok(envelope) = Envelope::open(&desc, &geometry) {
        assert!(envelope.args_len + envelope.body_len <= envelope.buffer_len);
        assert!((envelope.buffer_offset + envelope.buffer_len) as u64 <= geometry.region_size);
        let _ = envelope.parse(&padded(buffer, envelope.args_len));
    }
});
