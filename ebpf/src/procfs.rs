//! What the kernel says about a process in /proc: its threads' names (to tell a VMM's vCPU
//! threads from the rest), its resident memory, its KSM-merged pages, and its CPU time (the
//! cross-check of the sched_switch probe).

use std::path::PathBuf;
use std::time::Duration;

/// Errors reading /proc.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read (the process may have exited).
    #[error("Cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The file does not have the line or field expected.
    #[error("{0} has no {1}")]
    Field(PathBuf, &'static str),
}

/// What a VMM's thread does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ThreadKind {
    /// Runs a guest vCPU.
    Vcpu,
    /// Anything else the VMM runs (main loop, I/O, RCU, workers).
    Vmm,
}

impl ThreadKind {
    /// Its label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vcpu => "vcpu",
            Self::Vmm => "vmm",
        }
    }

    /// Classifies a thread by the name its VMM gave it: QEMU names vCPU threads
    /// `CPU 0/KVM` or `CPU 0/TCG`, Cloud Hypervisor `vcpu0`.
    pub fn of_name(comm: &str) -> Self {
        let comm = comm.trim_end();
        let qemu = comm
            .strip_prefix("CPU ")
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let cloud_hypervisor = comm
            .strip_prefix("vcpu")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if qemu || cloud_hypervisor {
            Self::Vcpu
        } else {
            Self::Vmm
        }
    }
}

/// The kind of thread `tid` of process `pid`, from its name; `None` once it has exited.
pub fn thread_kind(pid: u32, tid: u32) -> Option<ThreadKind> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
    Some(ThreadKind::of_name(&comm))
}

/// A process's resident memory by kind, in bytes, as /proc/PID/status reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resident {
    /// Anonymous memory (a VMM's guest RAM, unless it is backed by a file).
    pub anon: u64,
    /// File-backed pages mapped (binaries, libraries, file-backed guest RAM).
    pub file: u64,
    /// Shared memory (shmem, tmpfs: a Nexus region on /dev/shm).
    pub shmem: u64,
}

impl Resident {
    /// Reads `/proc/PID/status`.
    pub fn of(pid: u32) -> Result<Self, ProcError> {
        let path = PathBuf::from(format!("/proc/{pid}/status"));
        let text = read(&path)?;
        let kib = |name: &'static str| -> Result<u64, ProcError> {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
                .map(|k| k * 1024)
                .ok_or_else(|| ProcError::Field(path.clone(), name))
        };
        Ok(Self { anon: kib("RssAnon")?, file: kib("RssFile")?, shmem: kib("RssShmem")? })
    }

    /// Their sum: VmRSS.
    pub fn total(&self) -> u64 {
        self.anon + self.file + self.shmem
    }
}

/// Bytes of process `pid`'s memory that KSM has merged with identical pages (its
/// `ksm_merging_pages`, in /proc/PID/ksm_stat since Linux 6.1).
pub fn ksm_merged_bytes(pid: u32) -> Result<u64, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/ksm_stat"));
    let text = read(&path)?;
    let pages = text
        .lines()
        .find_map(|line| line.strip_prefix("ksm_merging_pages ")?.trim().parse::<u64>().ok())
        .ok_or_else(|| ProcError::Field(path.clone(), "ksm_merging_pages"))?;
    Ok(pages * page_size())
}

/// User plus system CPU time of process `pid`, from /proc/PID/stat (clock-tick resolution).
pub fn cpu_time(pid: u32) -> Result<Duration, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = read(&path)?;
    // The name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state (field 3).
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (Some(utime), Some(stime)) = (ticks(11), ticks(12)) else {
        return Err(ProcError::Field(path, "utime and stime"));
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos((utime + stime) * 1_000_000_000 / hz))
}

/// The size of a base page.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

fn read(path: &PathBuf) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|e| ProcError::Read(path.clone(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_threads_are_told_by_name() {
        for vcpu in ["CPU 0/KVM", "CPU 12/TCG\n", "vcpu0", "vcpu3"] {
            assert_eq!(ThreadKind::of_name(vcpu), ThreadKind::Vcpu, "{vcpu:?}");
        }
        for other in ["qemu-system-x86", "IO mon_iothread", "CPU /KVM", "vcpu", "vcpux", "worker"] {
            assert_eq!(ThreadKind::of_name(other), ThreadKind::Vmm, "{other:?}");
        }
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        let resident = Resident::of(pid).unwrap();
        assert!(resident.total() > 0);
        assert!(cpu_time(pid).is_ok());
        assert_eq!(thread_kind(pid, pid), Some(ThreadKind::Vmm));
    }
}
