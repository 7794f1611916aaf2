//! Fuzzes the guest's reading of the geometry the host published in a region's header: an
//! arbitrary header and mapping length must be rejected, or give a layout whose every part
//! (header, rings, buffers, staging area) lies inside the mapping, in order.
//!
//! Input: the header as it lies at offset 0 of the region, then the mapping's length (8 bytes,
//! LE).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_channel::layout::{Header, RingId, HEADER_SIZE};
use nexus_channel::Geometry;
use nexus_fuzz::{bytes_of, from_bytes, padded, ring_len};

fuzz_target!(|input: &[u8]| {
    let (header, mapping_len) = input.split_at(size_of::<Header>().min(input.len()));
    let header: Header = from_bytes(header);
    let mapping_len = u64::from_le_bytes(padded(mapping_len, 8).try_into().unwrap());
    let Ok(g) = Geometry::from_header(&header.geometry, mapping_len) else { return };

    // It is the layout the host published, field for field.
    let mut published = header;
    published.geometry._reserved = 0;
    let derived = Header { geometry: g.to_line(), ..Header::default() };
    assert_eq!(bytes_of(&derived)[..64], bytes_of(&published)[..64]);
    // And every part lies inside the mapping, in order, none overlapping the next.
    assert!(g.region_size <= mapping_len);
    assert!(g.guest_buffers >= 1 && g.guest_buffers <= g.buffer_count, "{g:?}");
    let rings_end = g.ring_offset(RingId::Results) + ring_len(&g);
    assert!(g.ring_offset(RingId::Calls) >= HEADER_SIZE && rings_end as u64 <= g.data_offset);
    let (last, len) = g.buffer(g.buffer_count - 1).unwrap();
    assert!((last + len) as u64 <= g.staging_offset(), "{g:?}");
    assert!(g.staging_offset() + g.staging_size == g.region_size);
});
