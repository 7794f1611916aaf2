//! Measuring processes from the kernel's own accounting: CPU time from `/proc/<pid>/stat` and
//! `wait4`'s rusage, peak RSS from rusage, resident (RSS) and proportional (PSS) memory of a
//! live process from `/proc/<pid>/status` and `/proc/<pid>/smaps_rollup`.

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

/// Proportional memory of a live process (`Pss`: each shared page divided among the processes
/// that map it), in KiB.
pub fn pss_kib(pid: u32) -> Result<f64> {
    proc_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss")
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

/// Today's date (UTC) from the system clock, without a date crate.
pub fn today() -> String {
    let output = Command::new("date").args(["-u", "+%Y-%m-%d"]).output();
    output.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
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
        let (rss, pss) = (rss_kib(me).unwrap(), pss_kib(me).unwrap());
        assert!(rss > 100.0 && pss > 10.0 && pss <= rss, "rss {rss} pss {pss}");
        assert!(run_measured(&mut Command::new("false"), "").is_err());
    }
}
