//! Fuzzes the host-side parser of guest calls: an arbitrary descriptor and arbitrary buffer
//! bytes must be accepted or rejected, never panic, and never name bytes outside the buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_channel::wire::Envelope;
use nexus_channel::{CallDesc, Geometry};

fuzz_target!(|input: &[u8]| {
    let Some((desc_bytes, args)) = input.split_first_chunk::<64>() else { return };
    let desc = CallDesc {
        tag: word(desc_bytes, 0),
        op: u16::from_le_bytes([desc_bytes[8], desc_bytes[9]]),
        flags: u16::from_le_bytes([desc_bytes[10], desc_bytes[11]]),
        buffer: u32::from_le_bytes(desc_bytes[12..16].try_into().unwrap()),
        bucket_len: u16::from_le_bytes([desc_bytes[16], desc_bytes[17]]),
        key_len: u16::from_le_bytes([desc_bytes[18], desc_bytes[19]]),
        params_len: u32::from_le_bytes(desc_bytes[20..24].try_into().unwrap()),
        body_len: word(desc_bytes, 24),
        stream: word(desc_bytes, 32),
        _reserved: [0; 3],
    };
    let geometry = Geometry::new(1 << 20, 64 << 10, 16, 2).unwrap();
    if let Ok(envelope) = Envelope::open(&desc, &geometry) {
        assert!(envelope.args_len + envelope.body_len <= envelope.buffer_len);
        assert!((envelope.buffer_offset + envelope.buffer_len) as u64 <= geometry.region_size);
        let mut bytes = args.to_vec();
        bytes.resize(envelope.args_len, 0);
        let _ = envelope.parse(&bytes);
    }
});

fn word(bytes: &[u8; 64], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}
