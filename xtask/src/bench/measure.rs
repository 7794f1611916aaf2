//! Measuring processes from the kernel's own accounting: CPU time from `/proc/<pid>/stat` and
//! `wait4`'s rusage, peak RSS from rusage, resident memory (RSS) of a live process from
//! `/proc/<pid>/status`, and a VMM's resident and proportional (PSS) memory split by what it
//! holds from `/proc/<pid>/smaps`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// CPU time (user + system) a live process has used so far, all its threads, without its
/// children (a backend's VMMs are its children: they are counted on their own).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at state; utime and
    // stime are fields 14 and 15 of the whole line.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).context("malformed stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> { Ok(fields.get(i).context("short stat")?.parse()?) };
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos((ticks(11)? + ticks(12)?) * 1_000_000_000 / hz))
}

/// Resident memory of a live process (`VmRSS`), in KiB.
pub fn rss_kib(pid: u32) -> Result<f64> {
    proc_kib(&format!("/proc/{pid}/status"), "VmRSS")
}

/// Resident and proportional memory, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Held {
    pub rss_kib: f64,
    pub pss_kib: f64,
}

/// A VMM process's memory by what it holds:
/// - `guest`: the guest's RAM, the mappings QEMU marks mergeable for KSM (`mg` in `VmFlags`;
///   QEMU marks every guest RAM block so, and nothing else);
/// - `translation_cache`: TCG's generated code, anonymous mappings both writable and
///   executable (none under KVM);
/// - `rest`: everything else the VMM holds (its heap, libraries, device state, the Nexus region
///   it shares with the backend).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VmmMemory {
    pub guest: Held,
    pub translation_cache: Held,
    pub rest: Held,
}

impl VmmMemory {
    /// Reads `/proc/<pid>/smaps`.
    pub fn of(pid: u32) -> Result<Self> {
        let file = format!("/proc/{pid}/smaps");
        let text = std::fs::read_to_string(&file).with_context(|| format!("read {file}"))?;
        let memory = Self::parse(&text);
        if memory.guest.rss_kib == 0.0 {
            bail!("no mapping of process {pid} is marked mergeable: is it a QEMU whose guest ran?");
        }
        Ok(memory)
    }

    /// Sums the mappings of `smaps` text by what they hold. A mapping is a header line
    /// (`start-end perms offset dev inode [path]`), `Name: N kB` lines, and `VmFlags:` last.
    fn parse(smaps: &str) -> Self {
        let mut memory = Self::default();
        let (mut code, mut held) = (false, Held::default());
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let Some(first) = words.next() else { continue };
            match first {
                "Rss:" => held.rss_kib = kib_field(line, "Rss").unwrap_or(0.0),
                "Pss:" => held.pss_kib = kib_field(line, "Pss").unwrap_or(0.0),
                "VmFlags:" => {
                    let kind = if words.any(|flag| flag == "mg") {
                        &mut memory.guest
                    } else if code {
                        &mut memory.translation_cache
                    } else {
                        &mut memory.rest
                    };
                    kind.rss_kib += held.rss_kib;
                    kind.pss_kib += held.pss_kib;
                    held = Held::default();
                }
                range if !range.ends_with(':') && range.contains('-') => {
                    let perms = words.next().unwrap_or_default();
                    let anonymous = words.nth(3).is_none();
                    code = anonymous && perms.contains('w') && perms.contains('x');
                }
                _ => {}
            }
        }
        memory
    }

    /// What the VMM holds but TCG's cache: the memory a KVM host spends on the VM.
    pub fn without_translation_cache(&self) -> Held {
        Held {
            rss_kib: self.guest.rss_kib + self.rest.rss_kib,
            pss_kib: self.guest.pss_kib + self.rest.pss_kib,
        }
    }
}

/// The value of the `field:  N kB` line of a `/proc` file.
fn proc_kib(file: &str, field: &str) -> Result<f64> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {file}"))?;
    kib_field(&text, field).with_context(|| format!("no {field} in {file}"))
}

fn kib_field(text: &str, field: &str) -> Option<f64> {
    let value = text.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    value.split_whitespace().next()?.parse().ok()
}

/// What a finished child process used.
#[derive(Debug, Clone)]
pub struct Usage {
    pub stdout: String,
    pub wall: Duration,
    pub cpu: Duration,
    pub peak_rss_bytes: u64,
}

/// Runs `command` to completion, feeding it `stdin`; returns its output and resource usage.
pub fn run_measured(command: &mut Command, stdin: &str) -> Result<Usage> {
    let start = Instant::now();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {command:?}"))?;
    {
        use std::io::Write;
        let mut input = child.stdin.take().context("child stdin")?;
        input.write_all(stdin.as_bytes())?;
    }
    let mut stdout = String::new();
    child.stdout.take().context("child stdout")?.read_to_string(&mut stdout)?;
    let pid = libc::pid_t::try_from(child.id())?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: we reap our own child exactly once; `status` and `usage` are valid out-pointers.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    if reaped != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{command:?} failed (wait status {status}); output:\n{stdout}");
    }
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(Usage {
        stdout,
        wall,
        cpu: time(usage.ru_utime) + time(usage.ru_stime),
        peak_rss_bytes: usage.ru_maxrss as u64 * 1024,
    })
}

/// A short description of this machine for reports.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim())
        })
        .unwrap_or("unknown CPU")
        .to_owned();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib / (1024 * 1024));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cores} cores, {mem_gib} GiB, Linux {}", kernel.trim())
}

/// The machine's load average over the last minute (`/proc/loadavg`), as written there.
pub fn load_average() -> String {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    loadavg.split_whitespace().next().unwrap_or("?").to_owned()
}

/// Today's date (UTC) from the system clock, without a date crate.
pub fn today() -> String {
    let output = Command::new("date").args(["-u", "+%Y-%m-%d"]).output();
    output.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
}

/// The accelerator QEMU `pid` runs on, from its command line (`-accel kvm|tcg[,…]`), upper
/// case as the tables show it.
pub fn accel_of(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut args = cmdline.split(|&b| b == 0).map(String::from_utf8_lossy);
    args.find(|a| a == "-accel")
        .and(args.next())
        .map_or("?".into(), |a| a.split(',').next().unwrap_or("?").to_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_fields() {
        let text = "Rss:  120 kB\nPss:   80 kB\nPss_Anon: 5 kB\n";
        assert_eq!(kib_field(text, "Pss"), Some(80.0));
        assert_eq!(kib_field(text, "Rss"), Some(120.0));
        assert_eq!(kib_field(text, "Swap"), None);
    }

    #[test]
    fn splits_a_vmm_by_what_it_holds() {
        let smaps = "\
7f00-7f10 rw-p 00000000 00:00 0 
Size:             262144 kB
Rss:               40000 kB
Pss:               39000 kB
VmFlags: rd wr mr mw me ac hg mg 
7f20-7f30 rwxp 00000000 00:00 0 
Rss:                9000 kB
Pss:                9000 kB
VmFlags: rd wr ex mr mw me ac hg 
5600-5700 r-xp 00000000 fe:01 1234                       /usr/bin/qemu-system-x86_64
Rss:                3000 kB
Pss:                1000 kB
VmFlags: rd ex mr mw me 
7f40-7f50 rw-s 00000000 00:1a 77                         /dev/shm/nexus/r-1.region
Rss:                 512 kB
Pss:                 256 kB
VmFlags: rd wr sh mr mw me ms 
7f60-7f70 rw-p 00000000 00:00 0                          [heap]
Rss:                1000 kB
Pss:                1000 kB
VmFlags: rd wr mr mw me ac 
";
        let memory = VmmMemory::parse(smaps);
        assert_eq!(memory.guest, Held { rss_kib: 40000.0, pss_kib: 39000.0 });
        assert_eq!(memory.translation_cache, Held { rss_kib: 9000.0, pss_kib: 9000.0 });
        // The binary's code is executable but file-backed; the heap and the region are not code.
        assert_eq!(memory.rest, Held { rss_kib: 4512.0, pss_kib: 2256.0 });
        assert_eq!(memory.without_translation_cache().pss_kib, 41256.0);
        assert!(VmmMemory::of(std::process::id()).is_err(), "this process has no guest RAM");
    }

    #[test]
    fn measures_a_child_and_this_process() {
        let usage = run_measured(
            Command::new("sh")
                .args(["-c", "cat; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"]),
            "hi",
        )
        .unwrap();
        assert_eq!(usage.stdout, "hi");
        assert!(usage.cpu > Duration::ZERO && usage.cpu <= usage.wall + Duration::from_millis(20));
        assert!(usage.peak_rss_bytes > 100 * 1024);
        assert!(cpu_time(std::process::id()).is_ok());
        let me = std::process::id();
        let rss = rss_kib(me).unwrap();
        // Its mappings, summed, are its RSS (up to what changed between the two reads).
        let own = VmmMemory::parse(&std::fs::read_to_string("/proc/self/smaps").unwrap());
        let (summed, pss) = (own.rest.rss_kib, own.rest.pss_kib);
        assert!(rss > 100.0 && (summed - rss).abs() < rss * 0.1, "rss {rss} summed {summed}");
        assert!(pss > 10.0 && pss <= summed, "pss {pss}");
        assert!(run_measured(&mut Command::new("false"), "").is_err());
    }
}
