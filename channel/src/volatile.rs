//! Bulk copies between shared memory and private memory with volatile accesses on the shared
//! side: the peer may write those bytes at any moment, so the compiler must neither assume
//! they hold still (elide, merge, re-read) nor let a plain `memcpy` race with the peer.
//!
//! ```text
//!  shared ptr   ..│head│ 16-byte aligned volatile vector words ... │tail│..
//!                  bytes  (SSE2 on x86_64, 8-byte words elsewhere)   bytes
//!  private ptr  any alignment: plain unaligned loads and stores
//! ```
//!
//! Each shared byte is read or written exactly once, by a volatile access of at most one
//! vector word; callers check bounds ([`crate::Region`] does, with its `span`).

use std::ptr;

#[cfg(target_arch = "x86_64")]
type Word = std::arch::x86_64::__m128i;
#[cfg(not(target_arch = "x86_64"))]
type Word = u64;

const WORD: usize = size_of::<Word>();

/// Copies `len` bytes from shared memory at `src` to private memory at `dst`.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes, and they must not
/// overlap; no Rust reference may point into the shared bytes.
pub unsafe fn copy_from_shared(dst: *mut u8, src: *const u8, len: usize) {
    let head = src.align_offset(WORD).min(len);
    let words = (len - head) / WORD;
    for i in (0..head).chain(head + words * WORD..len) {
        // SAFETY: `i < len`: inside the shared span (the caller's contract).
        let byte = unsafe { src.wrapping_add(i).read_volatile() };
        // SAFETY: `i < len`: inside the private span.
        unsafe { dst.wrapping_add(i).write(byte) };
    }
    for at in (head..head + words * WORD).step_by(WORD) {
        // SAFETY: `at + WORD <= len`, and `src + at` is WORD-aligned (`head` aligned it): an
        // aligned volatile load inside the shared span.
        let word = unsafe { src.wrapping_add(at).cast::<Word>().read_volatile() };
        // SAFETY: `at + WORD <= len`: inside the private span, at any alignment.
        unsafe { ptr::write_unaligned(dst.wrapping_add(at).cast::<Word>(), word) };
    }
}

/// Copies `len` bytes from private memory at `src` to shared memory at `dst`.
///
/// # Safety
/// As [`copy_from_shared`], with `dst` the shared span.
pub unsafe fn copy_to_shared(dst: *mut u8, src: *const u8, len: usize) {
    let head = dst.align_offset(WORD).min(len);
    let words = (len - head) / WORD;
    for i in (0..head).chain(head + words * WORD..len) {
        // SAFETY: `i < len`: inside the private span (the caller's contract).
        let byte = unsafe { src.wrapping_add(i).read() };
        // SAFETY: `i < len`: inside the shared span.
        unsafe { dst.wrapping_add(i).write_volatile(byte) };
    }
    for at in (head..head + words * WORD).step_by(WORD) {
        // SAFETY: `at + WORD <= len`: inside the private span, at any alignment.
        let word = unsafe { ptr::read_unaligned(src.wrapping_add(at).cast::<Word>()) };
        // SAFETY: `at + WORD <= len`, and `dst + at` is WORD-aligned (`head` aligned it): an
        // aligned volatile store inside the shared span.
        unsafe { dst.wrapping_add(at).cast::<Word>().write_volatile(word) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_length_at_every_alignment_both_ways() {
        let source: Vec<u8> = (0..200u8).collect();
        for len in 0..100 {
            for from in 0..WORD {
                for to in 0..WORD {
                    let mut shared = vec![0xee; 160];
                    // SAFETY: both spans lie inside their vectors, which do not overlap.
                    unsafe {
                        copy_to_shared(
                            shared.as_mut_ptr().wrapping_add(to),
                            source[from..].as_ptr(),
                            len,
                        )
                    };
                    assert_eq!(&shared[to..to + len], &source[from..from + len]);
                    assert!(shared[..to].iter().chain(&shared[to + len..]).all(|&b| b == 0xee));
                    let mut back = vec![0xdd; 160];
                    // SAFETY: as above.
                    unsafe {
                        copy_from_shared(
                            back.as_mut_ptr().wrapping_add(from),
                            shared.as_ptr().wrapping_add(to),
                            len,
                        )
                    };
                    assert_eq!(&back[from..from + len], &source[from..from + len]);
                    assert!(back[..from].iter().chain(&back[from + len..]).all(|&b| b == 0xdd));
                }
            }
        }
    }

    /// `cargo test --release -p nexus-channel copy_rate -- --ignored --nocapture`: the rate of
    /// volatile copies against `memcpy`, for docs/BENCHMARKS.md.
    #[test]
    #[ignore = "a measurement, not a check: run it in release mode"]
    fn copy_rate() {
        for size in [4 << 10, 1 << 20, 64 << 20] {
            let rounds = (256 << 20) / size;
            let (mut shared, private) = (vec![0u8; size], vec![7u8; size]);
            let mut out = vec![0u8; size];
            let time = |f: &mut dyn FnMut()| {
                f();
                let start = std::time::Instant::now();
                for _ in 0..rounds {
                    f();
                }
                (size * rounds) as f64 / start.elapsed().as_secs_f64() / 1e9
            };
            // SAFETY: every span is a whole vector of `size` bytes; none overlap.
            let to = time(&mut || unsafe {
                copy_to_shared(shared.as_mut_ptr(), private.as_ptr(), size)
            });
            // SAFETY: as above.
            let from =
                time(&mut || unsafe { copy_from_shared(out.as_mut_ptr(), shared.as_ptr(), size) });
            let memcpy = time(&mut || shared.copy_from_slice(std::hint::black_box(&private)));
            println!("{size:>9} B: to shared {to:.1} GB/s, from shared {from:.1} GB/s, memcpy {memcpy:.1} GB/s");
        }
    }
}
