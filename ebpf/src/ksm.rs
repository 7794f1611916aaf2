//! The node's duplicated memory as KSM (kernel samepage merging) finds it.
//!
//! KSM scans memory that processes marked mergeable (QEMU marks guest RAM so), merges pages
//! with the same contents into one and counts them in /sys/kernel/mm/ksm: `pages_shared` kept
//! copies, `pages_sharing` further mappings of them (the bytes saved), `ksm_zero_pages` pages
//! merged into the zero page (with `use_zero_pages`). Their sum times the page size is memory
//! that was duplicated on the node. KSM must run (`run` = 1) to find anything; it is the
//! operator's choice, as it costs ksmd CPU time (docs/observability.md has the numbers).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::procfs::{cpu_time, ksm_merged_bytes, page_size, ProcError};

const KSM: &str = "/sys/kernel/mm/ksm";

/// KSM's node-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ksm {
    /// `run` is 1: ksmd scans.
    pub running: bool,
    pub pages_shared: u64,
    pub pages_sharing: u64,
    /// Pages merged into the zero page (0 where the kernel does not count them).
    pub zero_pages: u64,
    /// Full passes over mergeable memory since boot.
    pub full_scans: u64,
}

impl Ksm {
    /// Reads the counters; an error where the kernel has no KSM.
    pub fn read() -> Result<Self, ProcError> {
        Ok(Self {
            running: read_u64("run")? == 1,
            pages_shared: read_u64("pages_shared")?,
            pages_sharing: read_u64("pages_sharing")?,
            zero_pages: read_u64("ksm_zero_pages").unwrap_or(0),
            full_scans: read_u64("full_scans")?,
        })
    }

    /// Bytes of memory that duplicated other memory (and that KSM merged away).
    pub fn duplicated_bytes(&self) -> u64 {
        (self.pages_sharing + self.zero_pages) * page_size()
    }
}

/// Where KSM's merging of some processes settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Bytes of each process merged (`ksm_merging_pages`).
    pub merged: Vec<u64>,
    /// Full passes made, and how long they took.
    pub passes: u64,
    pub took: Duration,
}

/// KSM scanning at a given pace until dropped, when the previous settings come back.
#[derive(Debug)]
pub struct KsmScanning {
    previous: Vec<(&'static str, String)>,
}

impl KsmScanning {
    /// Starts ksmd scanning `pages_to_scan` pages every `sleep_millisecs` (needs root), every
    /// page at every pass (`smart_scan` off, where the kernel has it: it skips pages that did
    /// not merge before, which makes a measurement converge later).
    pub fn start(pages_to_scan: u64, sleep_millisecs: u64) -> Result<Self, ProcError> {
        let mut scanning = Self { previous: Vec::new() };
        let smart_scan = Path::new(KSM).join("smart_scan").exists().then_some(("smart_scan", 0));
        let knobs =
            [("pages_to_scan", pages_to_scan), ("sleep_millisecs", sleep_millisecs), ("run", 1)];
        for (knob, value) in smart_scan.into_iter().chain(knobs) {
            let path = Path::new(KSM).join(knob);
            let old =
                std::fs::read_to_string(&path).map_err(|e| ProcError::Read(path.clone(), e))?;
            std::fs::write(&path, value.to_string()).map_err(|e| ProcError::Read(path, e))?;
            scanning.previous.push((knob, old.trim().to_owned()));
        }
        Ok(scanning)
    }
}

impl KsmScanning {
    /// Waits until KSM's merging of `pids` settles: at least `min_passes` full passes, then
    /// until a pass adds less than 1 % (KSM needs two passes to merge a page, more while
    /// pages change), and at most `max_passes` or `patience`.
    pub fn settle(
        &self,
        pids: &[u32],
        min_passes: u64,
        max_passes: u64,
        patience: Duration,
    ) -> Result<Settled, ProcError> {
        let started = Instant::now();
        let first = Ksm::read()?.full_scans;
        let merged =
            || pids.iter().map(|pid| ksm_merged_bytes(*pid)).collect::<Result<Vec<_>, _>>();
        let (mut last_pass, mut last_sum) = (first, 0);
        loop {
            let pass = Ksm::read()?.full_scans;
            if pass > last_pass {
                let now = merged()?;
                let sum: u64 = now.iter().sum();
                let passes = pass - first;
                let settled = passes >= min_passes && sum <= last_sum + last_sum / 100;
                if settled || passes >= max_passes || started.elapsed() > patience {
                    return Ok(Settled { merged: now, passes, took: started.elapsed() });
                }
                (last_pass, last_sum) = (pass, sum);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for KsmScanning {
    fn drop(&mut self) {
        for (knob, value) in self.previous.iter().rev() {
            let _ = std::fs::write(Path::new(KSM).join(knob), value);
        }
    }
}

/// CPU time the ksmd kernel thread has used since boot (KSM's cost); `None` without one.
pub fn ksmd_cpu_time() -> Option<Duration> {
    let pid = std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        (comm.trim() == "ksmd").then_some(pid)
    })?;
    cpu_time(pid).ok()
}

fn read_u64(knob: &'static str) -> Result<u64, ProcError> {
    let path = PathBuf::from(KSM).join(knob);
    let text = std::fs::read_to_string(&path).map_err(|e| ProcError::Read(path.clone(), e))?;
    text.trim().parse().map_err(|_| ProcError::Field(path, "number"))
}
