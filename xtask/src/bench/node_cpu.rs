//! Node CPU as the node sees it, for `cargo xtask bench`: the busy time of the whole machine
//! from `/proc/stat`, so that work the kernel does for a process elsewhere (packets in softirq,
//! kworkers writing pages back) counts for whichever side caused it, less the harness's own
//! parts — the storage server (Garage, moved into a cgroup of its own) and this process (the
//! load generator and the link to storage) — and less the idle floor: the same figure measured
//! just before the VMs start and again once they are gone, scaled to the window's length.
//!
//! ```text
//!  /proc/stat  cpu  user nice system idle iowait irq softirq steal guest guest_nice  (ticks)
//!  busy     = user + nice + system + irq + softirq    (guest time is inside user and nice;
//!  capacity = busy + idle + iowait + steal              idle, iowait and steal are not busy)
//!  node(span)       = busy − storage cgroup − this process
//!  rate(floor)      = node(floor) / wall(floor)
//!  node CPU(window) = node(window) − mean rate of the floors before and after × wall(window)
//!  drift            = |rate(before) − rate(after)| / 2 × wall(window)
//! ```
//! The storage cgroup is cgroup v1's `cpuacct` (`cpuacct.usage`, ns) where that controller is
//! mounted, else cgroup v2 (`cpu.stat` `usage_usec`); without either (not root), the server's
//! process alone (`/proc/PID/stat`). On a machine that other work keeps busy, the floors carry
//! that work: the figure is only as good as that work was steady (the drift says how steady),
//! and once the window's busy time nears the capacity the bench's work only displaces it
//! ([`NodeCpu::saturated`]). [`NodeCpu::usable`] says whether the figure means something.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::cgroup::{home_of, Cgroup};
use super::measure::cpu_time;

/// Where cgroup v1's cpuacct controller is mounted on Debian.
const CPUACCT_V1: &str = "/sys/fs/cgroup/cpuacct";
/// Where cgroup v2 is mounted: alone, or beside v1 (the hybrid layout).
const UNIFIED_V2: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];
/// A window whose busy time is at least this share of the capacity is saturated.
const SATURATED: f64 = 0.95;
/// The largest drift of the floor, as a share of the figure, that leaves the figure usable.
const USABLE_DRIFT: f64 = 0.25;

/// The whole machine's CPU time since boot, in clock ticks, from `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineTicks {
    pub busy: u64,
    pub capacity: u64,
}

impl MachineTicks {
    pub fn read() -> Result<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").context("read /proc/stat")?)
    }

    /// Reads the first (all CPUs) line of `/proc/stat` text.
    fn parse(stat: &str) -> Result<Self> {
        let line = stat.lines().find_map(|l| l.strip_prefix("cpu ")).context("no cpu line")?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("malformed cpu line: {line}"))?;
        let field = |i: usize| ticks.get(i).copied().unwrap_or(0);
        if ticks.len() < 4 {
            bail!("short cpu line: {line}");
        }
        let (user, nice, system, idle) = (field(0), field(1), field(2), field(3));
        let (iowait, irq, softirq, steal) = (field(4), field(5), field(6), field(7));
        let busy = user + nice + system + irq + softirq;
        Ok(Self { busy, capacity: busy + idle + iowait + steal })
    }
}

/// Everything the meter counts, at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    machine: MachineTicks,
    storage: Duration,
    harness: Duration,
    at: Instant,
}

/// What the machine did between two readings, in seconds (CPU seconds but for `wall`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Span {
    pub wall: f64,
    /// Busy time of all CPUs, and all CPUs' time (busy or not).
    pub busy: f64,
    pub capacity: f64,
    /// The storage server's CPU, and this process's.
    pub storage: f64,
    pub harness: f64,
}

impl Span {
    fn between(from: &Reading, to: &Reading, ticks_per_second: f64) -> Self {
        let ticks = |to: u64, from: u64| to.saturating_sub(from) as f64 / ticks_per_second;
        Self {
            wall: (to.at - from.at).as_secs_f64(),
            busy: ticks(to.machine.busy, from.machine.busy),
            capacity: ticks(to.machine.capacity, from.machine.capacity),
            storage: to.storage.saturating_sub(from.storage).as_secs_f64(),
            harness: to.harness.saturating_sub(from.harness).as_secs_f64(),
        }
    }

    /// The busy time less the harness's parts.
    pub fn node(&self) -> f64 {
        self.busy - self.storage - self.harness
    }

    /// The share of the machine's capacity that was busy.
    pub fn busy_share(&self) -> f64 {
        self.busy / self.capacity
    }
}

/// A measured window and the idle floors measured before and after it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NodeCpu {
    pub window: Span,
    pub before: Span,
    pub after: Span,
}

impl NodeCpu {
    /// CPU seconds the node spent over the window beyond the floors' mean rate.
    pub fn beyond_floor(&self) -> f64 {
        let rate = (self.before.node() + self.after.node()) / (self.before.wall + self.after.wall);
        self.window.node() - rate * self.window.wall
    }

    /// How far the floor moved, as CPU seconds over the window: half the difference of the two
    /// floors' rates. Other work that changed between them blurs the figure by about this much.
    pub fn drift(&self) -> f64 {
        let rate = |floor: &Span| floor.node() / floor.wall;
        (rate(&self.before) - rate(&self.after)).abs() / 2.0 * self.window.wall
    }

    /// Whether the window kept the machine so busy that the bench's work displaced other
    /// work instead of adding to it.
    pub fn saturated(&self) -> bool {
        self.window.busy_share() >= SATURATED
    }

    /// Whether the figure means something: the machine had room, the window rose above the
    /// floor, and the floor's drift is small beside it.
    pub fn usable(&self) -> bool {
        let beyond = self.beyond_floor();
        !self.saturated() && beyond > 0.0 && self.drift() <= beyond * USABLE_DRIFT
    }
}

/// Counts the node's CPU; owns the storage server's cgroup, which it removes when dropped.
#[derive(Debug)]
pub struct NodeMeter {
    storage: StorageAccount,
    ticks_per_second: f64,
}

#[derive(Debug)]
enum StorageAccount {
    Cgroup(StorageCgroup),
    /// No cgroup could be made: the server's process alone.
    Process(u32),
}

impl NodeMeter {
    /// Starts counting, with the storage server `storage_pid` in a cgroup of its own if one
    /// can be made.
    pub fn start(storage_pid: u32) -> Self {
        let storage = match StorageCgroup::create(storage_pid) {
            Ok(cgroup) => StorageAccount::Cgroup(cgroup),
            Err(e) => {
                println!("bench: no cgroup for the storage server ({e:#}): its process alone");
                StorageAccount::Process(storage_pid)
            }
        };
        // SAFETY: sysconf only reads a configuration value.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
        Self { storage, ticks_per_second: hz as f64 }
    }

    /// How the storage server's CPU is counted, for the notes.
    pub fn storage_accounting(&self) -> String {
        match &self.storage {
            StorageAccount::Cgroup(cgroup) => cgroup.describe(),
            StorageAccount::Process(_) => "its process's `/proc/PID/stat` (no cgroup)".into(),
        }
    }

    pub fn read(&self) -> Result<Reading> {
        let storage = match &self.storage {
            StorageAccount::Cgroup(cgroup) => cgroup.usage()?,
            StorageAccount::Process(pid) => cpu_time(*pid)?,
        };
        Ok(Reading {
            machine: MachineTicks::read()?,
            storage,
            harness: cpu_time(std::process::id())?,
            at: Instant::now(),
        })
    }

    /// What the machine did from `from` until now.
    pub fn since(&self, from: &Reading) -> Result<Span> {
        Ok(Span::between(from, &self.read()?, self.ticks_per_second))
    }

    /// The idle floor: what the machine does over `length` while the bench waits.
    pub fn floor(&self, length: Duration) -> Result<Span> {
        let from = self.read()?;
        std::thread::sleep(length);
        self.since(&from)
    }
}

/// Which cgroup hierarchy counts the CPU, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hierarchy {
    /// v1's cpuacct controller: `cpuacct.usage`, nanoseconds.
    V1,
    /// v2: `cpu.stat`'s `usage_usec`.
    V2,
}

impl Hierarchy {
    /// The controller whose v1 hierarchy it is; `None` for v2.
    fn v1_controller(self) -> Option<&'static str> {
        match self {
            Hierarchy::V1 => Some("cpuacct"),
            Hierarchy::V2 => None,
        }
    }
}

/// A cgroup holding the storage server alone, which goes back where it came from when this
/// drops.
#[derive(Debug)]
struct StorageCgroup {
    cgroup: Cgroup,
    hierarchy: Hierarchy,
}

impl StorageCgroup {
    fn create(pid: u32) -> Result<Self> {
        let v2_root = UNIFIED_V2.iter().map(Path::new).find(|r| r.join("cgroup.procs").exists());
        let (root, hierarchy) = if Path::new(CPUACCT_V1).join("cpuacct.usage").exists() {
            (Path::new(CPUACCT_V1), Hierarchy::V1)
        } else {
            (
                v2_root.context("neither cgroup v1's cpuacct nor cgroup v2 is mounted")?,
                Hierarchy::V2,
            )
        };
        let home = home_of(pid, root, hierarchy.v1_controller())?;
        let dir = root.join(format!("nexus-bench-storage-{}", std::process::id()));
        let cgroup = Cgroup::create(dir, home)?;
        cgroup.admit(pid)?;
        Ok(Self { cgroup, hierarchy })
    }

    fn describe(&self) -> String {
        let counter = match self.hierarchy {
            Hierarchy::V1 => "cgroup v1 `cpuacct.usage`",
            Hierarchy::V2 => "cgroup v2 `cpu.stat` `usage_usec`",
        };
        format!("a cgroup of its own ({counter})")
    }

    /// The CPU time of every process that has been in the cgroup, while in it.
    fn usage(&self) -> Result<Duration> {
        let (file, parse): (&str, fn(&str) -> Option<Duration>) = match self.hierarchy {
            Hierarchy::V1 => {
                ("cpuacct.usage", |t| Some(Duration::from_nanos(t.trim().parse().ok()?)))
            }
            Hierarchy::V2 => ("cpu.stat", v2_usage),
        };
        let text = self.cgroup.read(file)?;
        parse(&text).with_context(|| format!("malformed {file} in {}", self.cgroup.dir().display()))
    }
}

/// `usage_usec` of a cgroup v2 `cpu.stat`.
fn v2_usage(stat: &str) -> Option<Duration> {
    let usec = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?;
    Some(Duration::from_micros(usec.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    const STAT: &str = "cpu  100 50 30 800 20 5 15 7 40 10\n\
                        cpu0 50 25 15 400 10 3 7 4 20 5\nintr 12345\n";

    #[test]
    fn busy_is_user_nice_system_irq_softirq() {
        let ticks = MachineTicks::parse(STAT).unwrap();
        // Guest (40) and guest_nice (10) are already inside user and nice.
        assert_eq!(ticks.busy, 100 + 50 + 30 + 5 + 15);
        assert_eq!(ticks.capacity, ticks.busy + 800 + 20 + 7);
        // Kernels before 2.6.33 stop after steal; the first four fields are required.
        let old = MachineTicks::parse("cpu 1 2 3 4 5 6 7\n").unwrap();
        assert_eq!((old.busy, old.capacity), (1 + 2 + 3 + 6 + 7, 28));
        assert!(MachineTicks::parse("cpu 1 2 3\n").is_err());
        assert!(MachineTicks::parse("cpu 1 x 3 4\n").is_err());
        assert!(MachineTicks::parse("cpu0 1 2 3 4\n").is_err());
        let live = MachineTicks::read().unwrap();
        assert!(live.capacity > live.busy && live.busy > 0, "{live:?}");
    }

    fn reading(busy: u64, capacity: u64, storage_ms: u64, harness_ms: u64, at: Instant) -> Reading {
        Reading {
            machine: MachineTicks { busy, capacity },
            storage: Duration::from_millis(storage_ms),
            harness: Duration::from_millis(harness_ms),
            at,
        }
    }

    #[test]
    fn spans_subtract_the_harness_and_scale_the_floor() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // 100 ticks a second; two CPUs: 200 ticks of capacity a second.
        let floor = Span::between(
            &reading(1_000, 5_000, 100, 50, at(0)),
            &reading(1_500, 9_000, 300, 150, at(20)),
            100.0,
        );
        assert_eq!(floor.wall, 20.0);
        assert_eq!((floor.busy, floor.capacity), (5.0, 40.0));
        assert!((floor.node() - 4.7).abs() < 1e-9, "{floor:?}");
        let window = Span::between(
            &reading(2_000, 10_000, 400, 200, at(30)),
            &reading(9_000, 28_000, 2_400, 1_200, at(120)),
            100.0,
        );
        assert_eq!((window.wall, window.busy, window.capacity), (90.0, 70.0, 180.0));
        assert!((window.node() - 67.0).abs() < 1e-9);
        let node = NodeCpu { window, before: floor, after: floor };
        // The floor's 4.7 s over 20 s is 21.15 s over 90 s.
        assert!((node.beyond_floor() - (67.0 - 21.15)).abs() < 1e-9, "{}", node.beyond_floor());
        assert_eq!(node.drift(), 0.0);
        assert!(!node.saturated() && node.usable());
        // A floor after of 6.7 s over 10 s: the mean rate is 11.4 s / 30 s, 34.2 s over 90 s;
        // the rates 0.235 and 0.67 s/s are 39.15 s apart over 90 s, half of it the drift.
        let after = Span { wall: 10.0, busy: 8.0, capacity: 20.0, storage: 1.0, harness: 0.3 };
        let drifting = NodeCpu { window, before: floor, after };
        assert!((drifting.beyond_floor() - (67.0 - 34.2)).abs() < 1e-9);
        assert!((drifting.drift() - 19.575).abs() < 1e-9, "{}", drifting.drift());
        assert!(!drifting.usable(), "a drift of 60 % of the figure");
        let full = Span { busy: 176.0, ..window };
        let saturated = NodeCpu { window: full, ..node };
        assert!(saturated.saturated() && !saturated.usable());
        let below = NodeCpu { window: Span { busy: 20.0, ..window }, ..node };
        assert!(below.beyond_floor() < 0.0 && !below.usable());
        // Counters never run backwards; a bogus reading gives zero, not a wrap.
        let back = Span::between(&reading(10, 10, 5, 5, at(0)), &reading(5, 5, 1, 1, at(1)), 100.0);
        assert_eq!((back.busy, back.capacity, back.storage, back.harness), (0.0, 0.0, 0.0, 0.0));
    }

    #[test]
    fn v2_counters() {
        let stat = "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n";
        assert_eq!(v2_usage(stat), Some(Duration::from_millis(1500)));
        assert_eq!(v2_usage("user_usec 1\n"), None);
    }

    /// Root only: a busy process moved into the storage cgroup has its CPU counted there, and
    /// goes back home when the cgroup is removed.
    #[test]
    fn the_storage_cgroup_counts_its_process() {
        if !crate::bench::stack::is_root() {
            eprintln!("skipped: creating a cgroup needs root");
            return;
        }
        let mut busy = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = busy.id();
        let meter = NodeMeter::start(pid);
        let StorageAccount::Cgroup(cgroup) = &meter.storage else {
            panic!("no cgroup made: {}", meter.storage_accounting());
        };
        let dir = cgroup.cgroup.dir().to_owned();
        let from = meter.read().unwrap();
        let (cpu_before, started) = (cpu_time(pid).unwrap(), Instant::now());
        // Until the loop has had some CPU on a busy machine.
        while cpu_time(pid).unwrap() < cpu_before + Duration::from_millis(300)
            && started.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let span = meter.since(&from).unwrap();
        let by_proc = (cpu_time(pid).unwrap() - cpu_before).as_secs_f64();
        drop(meter);
        let home = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let _ = busy.kill();
        let _ = busy.wait();
        // /proc counts in 10 ms ticks, the cgroup in ns.
        assert!((span.storage - by_proc).abs() < 0.05 + by_proc * 0.05, "{span:?} vs {by_proc}");
        assert!(span.busy >= span.storage * 0.9, "{span:?}");
        assert!(!dir.exists(), "{} left behind", dir.display());
        assert!(!home.contains("nexus-bench-storage"), "{home}");
    }
}
