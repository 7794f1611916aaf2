//! A memory cgroup (cgroup v1) for the density search: a limit, what its processes are charged,
//! its peak, how often it hit the limit and how many processes its OOM killer killed. It is
//! made a child of this process's own memory cgroup, so whatever limits the machine sets for
//! the bench hold for it too, and removed when dropped (its processes moved back first).
//!
//! ```text
//!  /sys/fs/cgroup/memory/<this process's cgroup>/nexus-bench-density-<name>-<pid>/
//!    memory.limit_in_bytes      the limit
//!    memory.usage_in_bytes      all that is charged: anonymous, shmem, page cache, kernel
//!    memory.max_usage_in_bytes  its peak; writing 0 resets it
//!    memory.failcnt             how often a charge hit the limit (reclaim ran); 0 resets it
//!    memory.oom_control         `oom_kill N`: the processes its OOM killer killed
//!    memory.stat                `total_rss` (anonymous) + `total_shmem`: what cannot be
//!                               reclaimed without swap (this machine has none);
//!                               `total_rss_huge`: the anonymous memory in transparent huge
//!                               pages (QEMU asks for them for guest RAM)
//! ```
//! A page stays charged where it was first charged: this kernel no longer moves charges with a
//! process (v1's `memory.move_charge_at_immigrate` is gone, writing it fails), so a process
//! admitted late brings none of its memory, only what it allocates afterwards. A process that
//! must be counted whole is born inside: its parent is admitted before it starts.

use std::path::Path;

use anyhow::{Context, Result};

use super::cgroup::{home_of, Cgroup};

/// Where cgroup v1's memory controller is mounted on Debian.
const MEMORY_V1: &str = "/sys/fs/cgroup/memory";

/// What the cgroup was charged, bytes, and what happened at its limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Charged {
    pub limit: u64,
    /// Everything charged now.
    pub usage: u64,
    /// The peak of `usage` since the last [`MemoryCgroup::reset_peak`].
    pub peak: u64,
    /// Anonymous and shared memory now: what reclaim cannot take back without swap.
    pub resident: u64,
    /// The part of `resident` in transparent huge pages.
    pub huge: u64,
    /// How often a charge hit the limit since the last reset.
    pub failcnt: u64,
    /// Processes its OOM killer killed since it was made.
    pub oom_kills: u64,
}

/// A memory cgroup made for the bench; see the module doc.
#[derive(Debug)]
pub struct MemoryCgroup {
    cgroup: Cgroup,
}

impl MemoryCgroup {
    /// Makes `nexus-bench-density-<name>-<pid>` under this process's memory cgroup, without a
    /// limit yet.
    pub fn create(name: &str) -> Result<Self> {
        let root = Path::new(MEMORY_V1);
        anyhow::ensure!(
            root.join("memory.limit_in_bytes").exists(),
            "cgroup v1's memory controller is not mounted at {MEMORY_V1}: the density search \
             needs it (run as root on a host with the v1 memory controller)"
        );
        let home = home_of(std::process::id(), root, Some("memory"))?;
        let dir = home.join(format!("nexus-bench-density-{name}-{}", std::process::id()));
        Ok(Self { cgroup: Cgroup::create(dir, home)? })
    }

    /// Moves process `pid` in: what it allocates from now on is charged here, and so is all
    /// the memory of the children it starts from now on.
    pub fn admit(&self, pid: u32) -> Result<()> {
        self.cgroup.admit(pid)
    }

    /// Runs `f` with the calling thread in the cgroup: the threads it starts meanwhile, and
    /// every process they fork, are born inside ([`Cgroup::with_thread`]).
    pub fn with_thread<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.cgroup.with_thread(f)
    }

    /// Sets the limit; raising it always works, lowering it below the usage makes the kernel
    /// reclaim first (and fail if it cannot).
    pub fn set_limit(&self, bytes: u64) -> Result<()> {
        self.cgroup.write("memory.limit_in_bytes", &bytes.to_string())
    }

    /// Starts a new peak and failure count.
    pub fn reset_peak(&self) -> Result<()> {
        self.cgroup.write("memory.max_usage_in_bytes", "0")?;
        self.cgroup.write("memory.failcnt", "0")
    }

    pub fn read(&self) -> Result<Charged> {
        let number = |file: &str| -> Result<u64> {
            let text = self.cgroup.read(file)?;
            text.trim().parse().with_context(|| format!("malformed {file}: {text}"))
        };
        let stat = self.cgroup.read("memory.stat")?;
        let stat_field = |name: &str| {
            stat_field(&stat, name).with_context(|| format!("no {name} in memory.stat"))
        };
        let oom_control = self.cgroup.read("memory.oom_control")?;
        Ok(Charged {
            limit: number("memory.limit_in_bytes")?,
            usage: number("memory.usage_in_bytes")?,
            peak: number("memory.max_usage_in_bytes")?,
            resident: stat_field("total_rss")? + stat_field("total_shmem")?,
            huge: stat_field("total_rss_huge")?,
            failcnt: number("memory.failcnt")?,
            oom_kills: oom_kills(&oom_control).context("no oom_kill in memory.oom_control")?,
        })
    }
}

/// The value of the `name value` line of `memory.stat`.
fn stat_field(stat: &str, name: &str) -> Option<u64> {
    stat.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The `oom_kill` count of `memory.oom_control` (Linux ≥ 4.13).
fn oom_kills(oom_control: &str) -> Option<u64> {
    stat_field(oom_control, "oom_kill")
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use super::*;

    #[test]
    fn reads_memory_stat_and_oom_control() {
        let stat = "cache 8192\nrss 4096\nshmem 0\ntotal_cache 16384\ntotal_rss 40960\n\
                    total_rss_huge 0\ntotal_shmem 8192\n";
        assert_eq!(stat_field(stat, "total_rss"), Some(40960));
        assert_eq!(stat_field(stat, "total_shmem"), Some(8192));
        assert_eq!(stat_field(stat, "total_rss_huge"), Some(0));
        assert_eq!(stat_field(stat, "rss"), Some(4096), "not total_rss, nor rss_huge");
        assert_eq!(stat_field(stat, "swap"), None);
        assert_eq!(oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"), Some(3));
        assert_eq!(oom_kills("oom_kill_disable 0\nunder_oom 0\n"), None);
    }

    /// Root only: a child born inside is charged, the peak and limit read back, and the cgroup
    /// is gone once dropped.
    #[test]
    fn charges_a_child_born_inside() {
        if !crate::bench::stack::is_root() || !Path::new(MEMORY_V1).exists() {
            eprintln!("skipped: needs root and cgroup v1's memory controller");
            return;
        }
        let file = format!("/dev/shm/nexus-bench-test-{}", std::process::id());
        // The shell waits for a line, then writes 40 MiB to tmpfs (shmem) from a child.
        let mut shell = Command::new("sh")
            .args(["-c", &format!("read go; head -c 41943040 /dev/zero > {file}; read done")])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let cgroup = MemoryCgroup::create("test").unwrap();
        let dir = cgroup.cgroup.dir().to_owned();
        cgroup.set_limit(1 << 30).unwrap();
        cgroup.admit(shell.id()).unwrap();
        cgroup.reset_peak().unwrap();
        let mut stdin = shell.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        let started = std::time::Instant::now();
        while std::fs::metadata(&file).map_or(0, |m| m.len()) < 40 << 20
            && started.elapsed().as_secs() < 20
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let charged = cgroup.read().unwrap();
        stdin.write_all(b"done\n").unwrap();
        shell.wait().unwrap();
        let _ = std::fs::remove_file(&file);
        drop(cgroup);
        assert_eq!(charged.limit, 1 << 30);
        assert!(charged.resident >= 40 << 20, "{charged:?}");
        assert!(charged.peak >= charged.resident && charged.usage >= charged.resident);
        assert_eq!(charged.oom_kills, 0);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
