//! What the fuzz targets share: the layout of their inputs, decoded by the targets and encoded
//! by `src/bin/seeds.rs` for the seed corpora in `seeds/`, and the regions they scribble on.
//!
//! Inputs that stand for what a guest writes into a region are that region's bytes (a ring as
//! it lies in the region, a descriptor as it lies in its slot); only `call_ops`, which drives a
//! whole backend, frames a sequence of calls ([`calls`]).

use std::path::Path;
use std::sync::Arc;

use nexus_channel::layout::{Plain, RingId};
use nexus_channel::{Geometry, Region};

/// Bytes of every argument window: what a target copies into the start of each buffer a
/// descriptor may name, so that the parser behind the descriptor reads fuzzer bytes.
pub const WINDOW: usize = 4096;

/// The geometry of the region `hostile_region` scribbles on: 16 call slots, 64 KiB buffers.
pub fn calls_geometry() -> Geometry {
    Geometry::new(1 << 20, 64 << 10, 16, 2).expect("a valid geometry")
}

/// The geometry of the region `invocation_results` scribbles on: 4 host buffers, 4 result
/// slots, so that every invocation in flight can be answered at once.
pub fn results_geometry() -> Geometry {
    Geometry::new(1 << 20, 64 << 10, 4, 4).expect("a valid geometry")
}

/// Bytes of each ring in a region of `geometry`: its producer line, its consumer line, its slots.
pub fn ring_len(geometry: &Geometry) -> usize {
    geometry.ring_offset(RingId::Completions) - geometry.ring_offset(RingId::Calls)
}

/// A ring of a region of `geometry` as a guest producing on it leaves it: `producer`
/// published, `descs` in the first slots, zeros elsewhere.
pub fn ring_image<T: Plain>(geometry: &Geometry, producer: u32, descs: &[T]) -> Vec<u8> {
    let mut image = vec![0; ring_len(geometry)];
    image[..4].copy_from_slice(&producer.to_le_bytes());
    let slots = &mut image[2 * nexus_channel::layout::CACHE_LINE..];
    for (slot, desc) in slots.chunks_mut(size_of::<T>()).zip(descs) {
        slot.copy_from_slice(bytes_of(desc));
    }
    image
}

/// The bytes of a plain value, as it lies in a region.
pub fn bytes_of<T: Plain>(value: &T) -> &[u8] {
    // SAFETY: `T: Plain` has no padding, so its `size_of::<T>()` bytes are all initialized; the
    // slice borrows `value` and so cannot outlive it.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

/// A plain value read from the start of `bytes`; zeros where `bytes` is shorter.
pub fn from_bytes<T: Plain>(bytes: &[u8]) -> T {
    let mut value = T::default();
    let n = bytes.len().min(size_of::<T>());
    // SAFETY: `T: Plain` accepts any bit pattern; the `n` bytes copied lie inside both `bytes`
    // and `value`, which are distinct objects.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&raw mut value).cast::<u8>(), n);
    }
    value
}

/// `bytes` cut or padded with zeros to exactly `len` bytes.
pub fn padded(bytes: &[u8], len: usize) -> Vec<u8> {
    let mut out = bytes[..bytes.len().min(len)].to_vec();
    out.resize(len, 0);
    out
}

/// A region that lives for the whole fuzzing run (creating one per input would dominate the
/// run time), in `/dev/shm` where there is one.
#[derive(Debug)]
pub struct Scratch {
    _dir: tempfile::TempDir,
    pub region: Arc<Region>,
    pub geometry: Geometry,
}

impl Scratch {
    pub fn new(geometry: Geometry) -> Self {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
        let dir = dir.expect("a scratch directory");
        let region = Region::create(&dir.path().join("region"), &geometry).expect("a region");
        Self { _dir: dir, region: Arc::new(region), geometry }
    }

    /// Copies `window` (cut or padded to [`WINDOW`] bytes) into the start of every buffer in
    /// `buffers`.
    pub fn fill(&self, buffers: std::ops::Range<u32>, window: &[u8]) {
        let window = padded(window, WINDOW);
        for index in buffers {
            let (offset, _) = self.geometry.buffer(index).expect("a buffer of the geometry");
            self.region.copy_in(offset, &window).expect("a buffer inside the region");
        }
    }
}

/// The input of `call_ops`: calls one after another, each a 12-byte header and its bytes.
///
/// ```text
///  0 op   1 flags   2 buffer   3 stream   4 bucket_len   5 key_len   6..8 params_len (LE)
///  8..12 body_len (LE)   then bucket · key · params · body, as much of them as the input holds
/// ```
/// The call is made as a guest makes it: the bytes go to the start of the buffer (if it is a
/// guest buffer), the descriptor carries the lengths as given.
pub mod calls {
    /// Bytes of a call's header.
    pub const HEADER: usize = 12;

    /// One call of a `call_ops` input.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Call<'a> {
        pub op: u8,
        pub flags: u8,
        pub buffer: u8,
        pub stream: u8,
        pub bucket_len: u8,
        pub key_len: u8,
        pub params_len: u16,
        pub body_len: u32,
        /// What the input holds of bucket, key, params and body.
        pub bytes: &'a [u8],
    }

    /// The calls of `input`, in order; a header cut short ends them.
    pub fn decode(mut input: &[u8]) -> impl Iterator<Item = Call<'_>> {
        std::iter::from_fn(move || {
            let (header, rest) = input.split_first_chunk::<HEADER>()?;
            let mut call = Call {
                op: header[0],
                flags: header[1],
                buffer: header[2],
                stream: header[3],
                bucket_len: header[4],
                key_len: header[5],
                params_len: u16::from_le_bytes([header[6], header[7]]),
                body_len: u32::from_le_bytes([header[8], header[9], header[10], header[11]]),
                bytes: &[],
            };
            let len = usize::from(call.bucket_len)
                + usize::from(call.key_len)
                + usize::from(call.params_len)
                + call.body_len as usize;
            let (bytes, rest) = rest.split_at(len.min(rest.len()));
            call.bytes = bytes;
            input = rest;
            Some(call)
        })
    }

    /// The input bytes of `call` (its op, flags, buffer and stream) with `parts` (bucket, key,
    /// params, body) as its bytes and their lengths.
    pub fn encode(call: Call<'_>, parts: [&[u8]; 4]) -> Vec<u8> {
        let [bucket, key, params, body] = parts;
        let mut out = vec![call.op, call.flags, call.buffer, call.stream];
        out.extend_from_slice(&[bucket.len() as u8, key.len() as u8]);
        out.extend_from_slice(&(params.len() as u16).to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        for part in parts {
            out.extend_from_slice(part);
        }
        out
    }
}
