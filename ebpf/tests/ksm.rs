//! KSM's count of duplicated memory against a full census, on memory whose duplicates are
//! known: two mergeable areas that share half their pages. Root only (KSM's knobs, pagemap);
//! skipped, saying so, otherwise. KSM is turned on for the test and restored after.

use std::time::{Duration, Instant};

use nexus_ebpf::{ksmd_cpu_time, procfs, Census, KsmScanning};

/// Pages per area: half shared with the other area, half unique.
const PAGES: usize = 8192;

/// A private anonymous mapping marked mergeable, unmapped on drop.
struct Area {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Area {
    fn new(len: usize) -> Self {
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        // SAFETY: `ptr` is the mapping of `len` bytes made above.
        assert_eq!(unsafe { libc::madvise(ptr, len, libc::MADV_MERGEABLE) }, 0);
        Self { ptr, len }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, and only `self` refers to it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `new`; no slice of it outlives `self`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Fills `page` with bytes derived from `seed` (distinct seeds give distinct pages).
fn fill(page: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in page.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
}

#[test]
fn ksm_and_the_census_find_the_known_duplicates() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: KSM's knobs and /proc/PID/pagemap need root");
        return;
    }
    let page = procfs::page_size() as usize;
    let (mut a, mut b) = (Area::new(PAGES * page), Area::new(PAGES * page));
    let half = PAGES / 2;
    for (i, p) in a.bytes().chunks_exact_mut(page).enumerate() {
        fill(p, if i < half { i as u64 } else { 1_000_000 + i as u64 });
    }
    for (i, p) in b.bytes().chunks_exact_mut(page).enumerate() {
        fill(p, if i < half { i as u64 } else { 2_000_000 + i as u64 });
    }
    let pid = std::process::id();

    let started = Instant::now();
    let census = Census::take(&[pid]).unwrap();
    let census_took = started.elapsed();
    // Other mergeable memory of this process (none expected) would only add to these.
    assert!(census.duplicate_pages >= half as u64, "{census:?}");
    assert!(census.pages_in_duplicates >= PAGES as u64, "{census:?}");

    let cpu_before = ksmd_cpu_time();
    let scanning = KsmScanning::start(4000, 10).unwrap();
    let settled = scanning.settle(&[pid], 3, 20, Duration::from_secs(300)).unwrap();
    let merged = settled.merged[0] / page as u64;
    let cpu = ksmd_cpu_time().zip(cpu_before).map(|(after, before)| after - before);
    drop(scanning);
    eprintln!(
        "known: {PAGES} pages in duplicates ({half} duplicate); census: {census:?} in \
         {census_took:?} ({:.0} MiB/s); KSM: {merged} pages merged after {} passes in \
         {:?}, ksmd CPU {cpu:?}",
        (2 * PAGES * page) as f64 / census_took.as_secs_f64() / (1 << 20) as f64,
        settled.passes,
        settled.took
    );
    assert_eq!(merged, PAGES as u64, "KSM merged exactly the duplicated pages");
}
