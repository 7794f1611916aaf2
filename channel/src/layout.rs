//! Byte layout of a region: the header, the four rings, the data buffers and the staging area.
//!
//! Every type here is `#[repr(C)]` plain data made only of integers, so any bit pattern a guest
//! writes is a valid value; sizes and offsets are pinned by the tests at the bottom.

use std::mem::{offset_of, size_of};

/// `"NEXUSRG1"` in little endian: the first 8 bytes of every region.
pub const MAGIC: u64 = u64::from_le_bytes(*b"NEXUSRG1");
/// Bumped on any incompatible change of this layout or of the wire format.
pub const VERSION: u32 = 2;
/// Cache line size used to keep host- and guest-written words apart.
pub const CACHE_LINE: usize = 64;
/// Size of the header page.
pub const HEADER_SIZE: usize = 4096;
/// Size of every ring descriptor.
pub const DESC_SIZE: usize = 64;
/// Number of rings in a region.
pub const RING_COUNT: usize = 4;
/// Smallest region the layout accepts.
pub const MIN_REGION_SIZE: u64 = 1 << 20;
/// Smallest data buffer the layout accepts (one page).
pub const MIN_BUFFER_SIZE: u32 = 4096;

/// Host states published in [`HostLine::state`].
pub mod host_state {
    /// Region created, not yet serving.
    pub const INIT: u32 = 0;
    /// The backend serves this region.
    pub const READY: u32 = 1;
    /// The backend has detached; calls will not be answered.
    pub const GONE: u32 = 2;
}

/// Line 0: written once by the host when it creates the region.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default)]
pub struct GeometryLine {
    pub magic: u64,
    pub version: u32,
    pub ring_capacity: u32,
    pub region_size: u64,
    pub data_offset: u64,
    pub buffer_size: u32,
    pub buffer_count: u32,
    pub guest_buffers: u32,
    pub _reserved: u32,
    /// Where the staging area starts (`region_size - staging_size`).
    pub staging_offset: u64,
    /// Bytes of the staging area at the end of the region; 0 when there is none.
    pub staging_size: u64,
}

/// Line 1: written by the host while it serves the region.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default)]
pub struct HostLine {
    /// Bumped when the host (re)opens the channel, e.g. after a snapshot restore.
    pub epoch: u64,
    /// One of [`host_state`].
    pub state: u32,
    /// Doorbell the guest sleeps on; the host bumps it to wake the guest.
    pub guest_wake: u32,
    /// Non-zero while the host is about to sleep or sleeping.
    pub host_sleeping: u32,
    pub _reserved: u32,
    /// Length of the staging directory; 0 while nothing is staged (see [`crate::staging`]).
    pub directory_len: u64,
}

/// Line 2: written by the guest.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestLine {
    /// The host epoch the guest has synced to.
    pub epoch_ack: u64,
    /// Free for the guest agent's own use (reported, never trusted).
    pub state: u32,
    /// Doorbell the host sleeps on; the guest bumps it to wake the host.
    pub host_wake: u32,
    /// Non-zero while the guest is about to sleep or sleeping.
    pub guest_sleeping: u32,
    pub _reserved: u32,
}

/// The first bytes of a region; the rest of the header page is reserved.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Header {
    pub geometry: GeometryLine,
    pub host: HostLine,
    pub guest: GuestLine,
}

/// Offsets of the header words that change at run time.
pub mod header {
    use super::*;
    pub const EPOCH: usize = offset_of!(Header, host) + offset_of!(HostLine, epoch);
    pub const HOST_STATE: usize = offset_of!(Header, host) + offset_of!(HostLine, state);
    pub const GUEST_WAKE: usize = offset_of!(Header, host) + offset_of!(HostLine, guest_wake);
    pub const HOST_SLEEPING: usize = offset_of!(Header, host) + offset_of!(HostLine, host_sleeping);
    pub const DIRECTORY_LEN: usize = offset_of!(Header, host) + offset_of!(HostLine, directory_len);
    pub const EPOCH_ACK: usize = offset_of!(Header, guest) + offset_of!(GuestLine, epoch_ack);
    pub const GUEST_STATE: usize = offset_of!(Header, guest) + offset_of!(GuestLine, state);
    pub const HOST_WAKE: usize = offset_of!(Header, guest) + offset_of!(GuestLine, host_wake);
    pub const GUEST_SLEEPING: usize =
        offset_of!(Header, guest) + offset_of!(GuestLine, guest_sleeping);
}

/// A call from the guest (ring 0). The request bytes sit at the start of `buffer`:
/// `[bucket: bucket_len][key: key_len][params JSON: params_len][body: body_len]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallDesc {
    /// Chosen by the guest, echoed in the completion.
    pub tag: u64,
    /// A [`crate::wire::Op`] code.
    pub op: u16,
    /// [`crate::wire::flags`].
    pub flags: u16,
    /// Index of the guest buffer holding the request.
    pub buffer: u32,
    pub bucket_len: u16,
    pub key_len: u16,
    pub params_len: u32,
    pub body_len: u64,
    /// Operation-specific: the stream a `Read`/`Write`/`Close` continues.
    pub stream: u64,
    pub _reserved: [u64; 3],
}

/// A completion from the host (ring 1). The reply sits at the start of the call's buffer:
/// `[meta JSON: meta_len][body: body_len]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompletionDesc {
    /// The tag of the call this completes.
    pub tag: u64,
    /// A [`crate::wire::Status`] code.
    pub status: u16,
    /// [`crate::wire::flags`]: `MORE` when the stream has further chunks.
    pub flags: u16,
    pub buffer: u32,
    pub meta_len: u32,
    pub _pad: u32,
    pub body_len: u64,
    /// Total size of the object (or of the selected range) a `Head`/`Get` delivers; set in
    /// the first reply of a stream only.
    pub object_size: u64,
    /// Stream to continue with `Read`/`Write`/`Close`; 0 when there is none.
    pub stream: u64,
    pub _reserved: [u64; 2],
}

/// An invocation from the host (ring 2): the event JSON sits in host buffer `buffer`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InvocationDesc {
    pub id: u64,
    pub buffer: u32,
    pub flags: u32,
    pub len: u64,
    pub deadline_ms: u64,
    pub _reserved: [u64; 4],
}

/// Statuses of [`ResultDesc::status`].
pub mod result_status {
    /// The handler returned; the buffer holds its JSON result.
    pub const OK: u32 = 0;
    /// The handler raised; the buffer holds `{"errorType", "errorMessage", "stackTrace"}`.
    pub const HANDLER_ERROR: u32 = 1;
}

/// A result from the guest (ring 3): the result JSON sits in the invocation's buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResultDesc {
    pub id: u64,
    pub buffer: u32,
    pub status: u32,
    pub len: u64,
    pub _reserved: [u64; 5],
}

/// Marker for types that are plain old data: `#[repr(C)]`, integers only, no padding.
///
/// # Safety
/// Every bit pattern must be a valid value and the type must contain no implicit padding, so
/// that it can be copied to and from shared memory byte for byte.
pub unsafe trait Plain: Copy + Default {}
// SAFETY: these structs are `#[repr(C)]`, made only of integer fields, and their explicit
// `_pad`/`_reserved` fields fill every gap; `test_sizes` pins their sizes.
unsafe impl Plain for CallDesc {}
// SAFETY: as above.
unsafe impl Plain for CompletionDesc {}
// SAFETY: as above.
unsafe impl Plain for InvocationDesc {}
// SAFETY: as above.
unsafe impl Plain for ResultDesc {}
// SAFETY: as above; alignment padding sits only at the end of each 64-byte line.
unsafe impl Plain for Header {}

/// The rings, in region order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingId {
    Calls = 0,
    Completions = 1,
    Invocations = 2,
    Results = 3,
}

/// Errors in a requested geometry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GeometryError {
    /// Region size must be a power of two of at least 1 MiB.
    #[error("Region size {0} is not a power of two of at least 1 MiB")]
    RegionSize(u64),
    /// Buffer size must be a power of two of at least 4 KiB.
    #[error("Buffer size {0} is not a power of two of at least 4 KiB")]
    BufferSize(u64),
    /// Ring capacity must be a power of two from 2 to 4096.
    #[error("Ring capacity {0} is not a power of two from 2 to 4096")]
    RingCapacity(u32),
    /// The staging area must be whole pages and leave room for the rest.
    #[error(
        "Staging area of {0} bytes is not a multiple of 4 KiB that leaves room for the buffers"
    )]
    StagingSize(u64),
    /// Not enough data buffers for both sides.
    #[error("Region fits {fits} buffers; at least {host} host and 1 guest buffer are needed")]
    TooFewBuffers { fits: u64, host: u32 },
    /// The header does not describe a region of this version.
    #[error("Not a Nexus v{VERSION} region (magic {magic:#x}, version {version})")]
    Foreign { magic: u64, version: u32 },
    /// The header's geometry does not match the mapping.
    #[error("Region header does not match its {0}-byte mapping")]
    Mismatch(u64),
}

/// The shape of a region. The host computes it and keeps its own copy; it never re-reads it
/// from shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub region_size: u64,
    pub ring_capacity: u32,
    pub buffer_size: u32,
    pub buffer_count: u32,
    pub guest_buffers: u32,
    pub data_offset: u64,
    pub staging_size: u64,
}

impl Geometry {
    /// Computes the layout of a region of `region_size` bytes cut into `buffer_size` buffers,
    /// `host_buffers` of which belong to the host, with no staging area.
    pub fn new(
        region_size: u64,
        buffer_size: u64,
        ring_capacity: u32,
        host_buffers: u32,
    ) -> Result<Self, GeometryError> {
        Self::with_staging(region_size, buffer_size, ring_capacity, host_buffers, 0)
    }

    /// As [`Geometry::new`], with the last `staging_size` bytes of the region set apart for
    /// objects the host stages for the guest ([`crate::staging`]).
    pub fn with_staging(
        region_size: u64,
        buffer_size: u64,
        ring_capacity: u32,
        host_buffers: u32,
        staging_size: u64,
    ) -> Result<Self, GeometryError> {
        if !region_size.is_power_of_two() || region_size < MIN_REGION_SIZE {
            return Err(GeometryError::RegionSize(region_size));
        }
        if !buffer_size.is_power_of_two()
            || buffer_size < u64::from(MIN_BUFFER_SIZE)
            || buffer_size > u64::from(u32::MAX >> 1)
        {
            return Err(GeometryError::BufferSize(buffer_size));
        }
        if !ring_capacity.is_power_of_two() || !(2..=4096).contains(&ring_capacity) {
            return Err(GeometryError::RingCapacity(ring_capacity));
        }
        let rings_end = HEADER_SIZE as u64 + RING_COUNT as u64 * ring_bytes(ring_capacity);
        let data_offset = rings_end.next_multiple_of(HEADER_SIZE as u64);
        if staging_size % HEADER_SIZE as u64 != 0 || staging_size >= region_size {
            return Err(GeometryError::StagingSize(staging_size));
        }
        let buffers_end = region_size - staging_size;
        let fits = buffers_end.saturating_sub(data_offset) / buffer_size;
        // Buffers are counted in a u32: those past u32::MAX stay unused.
        let buffer_count = u32::try_from(fits).unwrap_or(u32::MAX);
        if buffer_count <= host_buffers {
            return Err(GeometryError::TooFewBuffers { fits, host: host_buffers });
        }
        Ok(Self {
            region_size,
            ring_capacity,
            buffer_size: buffer_size as u32,
            buffer_count,
            guest_buffers: buffer_count - host_buffers,
            data_offset,
            staging_size,
        })
    }

    /// Reads and validates the geometry a host wrote into a header (guest side).
    pub fn from_header(line: &GeometryLine, mapping_len: u64) -> Result<Self, GeometryError> {
        if line.magic != MAGIC || line.version != VERSION {
            return Err(GeometryError::Foreign { magic: line.magic, version: line.version });
        }
        let host_buffers = line.buffer_count.wrapping_sub(line.guest_buffers);
        let geometry = Self::with_staging(
            line.region_size,
            u64::from(line.buffer_size),
            line.ring_capacity,
            host_buffers,
            line.staging_size,
        )?;
        if geometry.region_size > mapping_len
            || geometry.buffer_count != line.buffer_count
            || geometry.data_offset != line.data_offset
            || geometry.staging_offset() != line.staging_offset
        {
            return Err(GeometryError::Mismatch(mapping_len));
        }
        Ok(geometry)
    }

    /// The header line that publishes this geometry.
    pub fn to_line(&self) -> GeometryLine {
        GeometryLine {
            magic: MAGIC,
            version: VERSION,
            ring_capacity: self.ring_capacity,
            region_size: self.region_size,
            data_offset: self.data_offset,
            buffer_size: self.buffer_size,
            buffer_count: self.buffer_count,
            guest_buffers: self.guest_buffers,
            _reserved: 0,
            staging_offset: self.staging_offset(),
            staging_size: self.staging_size,
        }
    }

    /// Byte offset of the staging area (the region's end when there is none).
    pub fn staging_offset(&self) -> u64 {
        self.region_size - self.staging_size
    }

    /// Byte offset of a ring's control block (producer index line).
    pub fn ring_offset(&self, ring: RingId) -> usize {
        HEADER_SIZE + ring as usize * ring_bytes(self.ring_capacity) as usize
    }

    /// Byte offset and length of buffer `index`, or `None` when there is no such buffer.
    pub fn buffer(&self, index: u32) -> Option<(usize, usize)> {
        if index >= self.buffer_count {
            return None;
        }
        let offset = self.data_offset + u64::from(index) * u64::from(self.buffer_size);
        Some((usize::try_from(offset).ok()?, self.buffer_size as usize))
    }

    /// Whether `index` names a buffer the guest owns.
    pub fn is_guest_buffer(&self, index: u32) -> bool {
        index < self.guest_buffers
    }

    /// The host-owned buffer indices.
    pub fn host_buffers(&self) -> std::ops::Range<u32> {
        self.guest_buffers..self.buffer_count
    }
}

/// Bytes taken by one ring: two index lines plus its descriptors.
fn ring_bytes(capacity: u32) -> u64 {
    2 * CACHE_LINE as u64 + u64::from(capacity) * DESC_SIZE as u64
}

// Every descriptor is exactly one ring slot.
const _: () = assert!(size_of::<CallDesc>() == DESC_SIZE);
const _: () = assert!(size_of::<CompletionDesc>() == DESC_SIZE);
const _: () = assert!(size_of::<InvocationDesc>() == DESC_SIZE);
const _: () = assert!(size_of::<ResultDesc>() == DESC_SIZE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_sizes() {
        assert_eq!(size_of::<GeometryLine>(), CACHE_LINE);
        assert_eq!(size_of::<HostLine>(), CACHE_LINE);
        assert_eq!(size_of::<GuestLine>(), CACHE_LINE);
        assert_eq!(size_of::<Header>(), 3 * CACHE_LINE);
        assert_eq!(offset_of!(CallDesc, body_len), 24);
        assert_eq!(offset_of!(CallDesc, stream), 32);
        assert_eq!(offset_of!(CompletionDesc, body_len), 24);
        assert_eq!(offset_of!(CompletionDesc, stream), 40);
    }

    #[test]
    fn host_and_guest_words_sit_on_separate_lines() {
        let host = [
            header::EPOCH,
            header::HOST_STATE,
            header::GUEST_WAKE,
            header::HOST_SLEEPING,
            header::DIRECTORY_LEN,
        ];
        let guest =
            [header::EPOCH_ACK, header::GUEST_STATE, header::HOST_WAKE, header::GUEST_SLEEPING];
        for h in host {
            assert_eq!(h / CACHE_LINE, 1);
        }
        for g in guest {
            assert_eq!(g / CACHE_LINE, 2);
        }
    }

    #[test]
    fn default_geometry() {
        let g = Geometry::new(64 << 20, 2 << 20, 64, 4).unwrap();
        assert_eq!(g.data_offset, 24 * 1024);
        assert_eq!(g.buffer_count, 31);
        assert_eq!(g.guest_buffers, 27);
        let (last, len) = g.buffer(30).unwrap();
        assert!(last as u64 + len as u64 <= g.region_size);
        assert_eq!(g.buffer(31), None);
    }

    #[test]
    fn rejects_bad_geometry() {
        assert_eq!(Geometry::new(3 << 20, 4096, 64, 1), Err(GeometryError::RegionSize(3 << 20)));
        assert_eq!(Geometry::new(1 << 20, 5000, 64, 1), Err(GeometryError::BufferSize(5000)));
        assert_eq!(Geometry::new(1 << 20, 4096, 3, 1), Err(GeometryError::RingCapacity(3)));
        assert!(matches!(
            Geometry::new(1 << 20, 1 << 19, 64, 1),
            Err(GeometryError::TooFewBuffers { fits: 1, host: 1 })
        ));
    }

    #[test]
    fn staging_takes_the_end_of_the_region() {
        let g = Geometry::with_staging(64 << 20, 2 << 20, 64, 4, 16 << 20).unwrap();
        assert_eq!((g.buffer_count, g.staging_offset()), (23, 48 << 20));
        let (last, len) = g.buffer(22).unwrap();
        assert!(last as u64 + len as u64 <= g.staging_offset());
        for bad in [4095, 64 << 20] {
            assert_eq!(
                Geometry::with_staging(64 << 20, 2 << 20, 64, 4, bad),
                Err(GeometryError::StagingSize(bad))
            );
        }
    }

    #[test]
    fn a_header_leaves_the_guest_a_buffer() {
        // Found by fuzz/geometry_header: more buffers fit than a u32 counts, and a header that
        // gave all u32::MAX of them to the host left the guest none.
        let mut line = Geometry::new(1 << 45, 4096, 2, 1).unwrap().to_line();
        assert_eq!(line.buffer_count, u32::MAX);
        line.guest_buffers = 0;
        assert!(matches!(
            Geometry::from_header(&line, 1 << 45),
            Err(GeometryError::TooFewBuffers { host: u32::MAX, .. })
        ));
    }

    #[test]
    fn header_round_trip() {
        let g = Geometry::with_staging(16 << 20, 1 << 20, 32, 2, 4 << 20).unwrap();
        assert_eq!(Geometry::from_header(&g.to_line(), 16 << 20), Ok(g));
        assert_eq!(
            Geometry::from_header(&g.to_line(), 8 << 20),
            Err(GeometryError::Mismatch(8 << 20))
        );
        let mut moved = g.to_line();
        moved.staging_offset -= 4096;
        assert_eq!(Geometry::from_header(&moved, 16 << 20), Err(GeometryError::Mismatch(16 << 20)));
        let mut bad = g.to_line();
        bad.magic = 7;
        assert!(matches!(
            Geometry::from_header(&bad, 16 << 20),
            Err(GeometryError::Foreign { .. })
        ));
    }
}
