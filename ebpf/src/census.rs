//! A full census of the resident mergeable memory of some processes: every present page is read
//! and hashed, and pages whose contents occur more than once are counted. It is the reference
//! that KSM's figures are checked against (exact, up to hash collisions, but it reads every
//! byte: see docs/observability.md for its cost).
//!
//! ```text
//!  /proc/PID/smaps  ─► areas with VmFlags `mg` (madvise(MADV_MERGEABLE): QEMU's guest RAM)
//!  /proc/PID/pagemap ─► which pages of them are present (bit 63)
//!  /proc/PID/mem    ─► their bytes, hashed page by page
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::hash::{DefaultHasher, Hasher};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::procfs::{page_size, ProcError};

const PRESENT: u64 = 1 << 63;
/// Pages read per system call.
const CHUNK_PAGES: u64 = 256;

/// What a census found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Present pages in mergeable areas.
    pub pages: u64,
    /// Of those, pages holding only zeros.
    pub zero_pages: u64,
    /// Pages that duplicate another page's contents: for each contents found n ≥ 2 times,
    /// n − 1 (what merging would save; KSM's `pages_sharing` + `ksm_zero_pages`).
    pub duplicate_pages: u64,
    /// Pages whose contents occur more than once: for each such contents, n (what KSM would
    /// count in the processes' `ksm_merging_pages`).
    pub pages_in_duplicates: u64,
}

impl Census {
    /// Pages in duplicates that are not all zeros: what KSM merges of guest memory (the zero
    /// pages of a guest's RAM sit mostly in transparent huge pages, which it leaves alone).
    pub fn nonzero_pages_in_duplicates(&self) -> u64 {
        let zeros_in_duplicates = if self.zero_pages > 1 { self.zero_pages } else { 0 };
        self.pages_in_duplicates - zeros_in_duplicates
    }

    /// Reads and hashes every present page of the mergeable areas of `pids` (needs root).
    pub fn take(pids: &[u32]) -> Result<Self, ProcError> {
        let page = page_size();
        let mut seen: HashMap<u64, u64> = HashMap::new();
        let mut census = Self::default();
        let mut buffer = vec![0u8; (CHUNK_PAGES * page) as usize];
        for &pid in pids {
            let mem = open(pid, "mem")?;
            let pagemap = open(pid, "pagemap")?;
            for (start, end) in mergeable_areas(pid)? {
                let mut address = start;
                while address < end {
                    let pages = ((end - address) / page).min(CHUNK_PAGES);
                    let present = present_pages(&pagemap, pid, address / page, pages)?;
                    let bytes = &mut buffer[..(pages * page) as usize];
                    if mem.read_exact_at(bytes, address).is_err() {
                        // Unmapped meanwhile (the VM changed its layout): skip the chunk.
                        address += pages * page;
                        continue;
                    }
                    for (i, contents) in bytes.chunks_exact(page as usize).enumerate() {
                        if !present[i] {
                            continue;
                        }
                        census.pages += 1;
                        if contents.iter().all(|&b| b == 0) {
                            census.zero_pages += 1;
                        }
                        let mut hasher = DefaultHasher::new();
                        hasher.write(contents);
                        let copies = seen.entry(hasher.finish()).or_default();
                        *copies += 1;
                        if *copies > 1 {
                            census.duplicate_pages += 1;
                            census.pages_in_duplicates += if *copies == 2 { 2 } else { 1 };
                        }
                    }
                    address += pages * page;
                }
            }
        }
        Ok(census)
    }
}

fn open(pid: u32, file: &str) -> Result<File, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/{file}"));
    File::open(&path).map_err(|e| ProcError::Read(path, e))
}

/// The [start, end) of each area of `pid` marked mergeable.
fn mergeable_areas(pid: u32) -> Result<Vec<(u64, u64)>, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/smaps"));
    let text = std::fs::read_to_string(&path).map_err(|e| ProcError::Read(path.clone(), e))?;
    let mut areas = Vec::new();
    let mut current = None;
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(area) = current.take() {
                if flags.split_whitespace().any(|f| f == "mg") {
                    areas.push(area);
                }
            }
        } else if let Some((range, _)) = line.split_once(' ') {
            if let Some((start, end)) = range.split_once('-') {
                if let (Ok(start), Ok(end)) =
                    (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
                {
                    current = Some((start, end));
                }
            }
        }
    }
    Ok(areas)
}

/// Whether each of `count` pages from page number `first` is present in RAM.
fn present_pages(pagemap: &File, pid: u32, first: u64, count: u64) -> Result<Vec<bool>, ProcError> {
    let mut entries = vec![0u8; (count * 8) as usize];
    pagemap
        .read_exact_at(&mut entries, first * 8)
        .map_err(|e| ProcError::Read(format!("/proc/{pid}/pagemap").into(), e))?;
    Ok(entries
        .chunks_exact(8)
        .map(|e| u64::from_le_bytes(e.try_into().unwrap_or_default()) & PRESENT != 0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root only (pagemap's present bits and other processes' memory): a mergeable area of
    /// this process with known duplicates.
    #[test]
    fn counts_duplicates_in_a_mergeable_area() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: reading /proc/self/pagemap's present bits needs root");
            return;
        }
        let page = page_size() as usize;
        let len = 8 * page;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let area = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(area, libc::MAP_FAILED);
        // SAFETY: `area` is the mapping of `len` bytes made above.
        assert_eq!(unsafe { libc::madvise(area, len, libc::MADV_MERGEABLE) }, 0);
        // SAFETY: as above, and nothing else refers to it.
        let bytes = unsafe { std::slice::from_raw_parts_mut(area.cast::<u8>(), len) };
        // Pages 0-2 hold 'a', 3-4 'b', 5 'c', 6 zeros, 7 untouched (not present).
        for (i, fill) in [b'a', b'a', b'a', b'b', b'b', b'c', 0].into_iter().enumerate() {
            bytes[i * page..(i + 1) * page].fill(fill);
        }
        let census = Census::take(&[std::process::id()]).unwrap();
        // SAFETY: unmaps the mapping made above; `bytes` is not used after.
        unsafe { libc::munmap(area, len) };
        assert!(census.pages >= 7, "{census:?}");
        assert!(census.duplicate_pages >= 3, "{census:?}");
        assert!(census.pages_in_duplicates >= 5, "{census:?}");
        assert!(census.zero_pages >= 1, "{census:?}");
    }
}
