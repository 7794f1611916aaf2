//! A cgroup the bench makes for processes it measures: created empty, processes moved in by
//! pid (`cgroup.procs`), its files read and written by name; when dropped, every process still
//! in it goes back where the bench found it and the cgroup is removed.
//!
//! ```text
//!  /proc/PID/cgroup   ID:CONTROLLERS:PATH per hierarchy, e.g. `4:memory:/jobs/a`, `0::/x` (v2)
//!  create(dir, home)  mkdir dir                 (home: where its processes go back to)
//!  admit(pid)         echo PID > dir/cgroup.procs (all the process's threads; its children
//!                     forked afterwards start in it)
//!  with_thread(f)     echo TID > dir/tasks, f(), echo TID > home/tasks (v1 only: this thread
//!                     alone; the threads it starts meanwhile, and their children, stay in)
//!  drop               echo PID > home/cgroup.procs for each, then rmdir dir (retried while
//!                     a process forked meanwhile still holds it)
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How long dropping a cgroup keeps trying to empty and remove it.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A cgroup made for the bench; see the module doc.
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
    /// Where its processes go when it is dropped.
    home: PathBuf,
}

impl Cgroup {
    /// Makes the cgroup `dir`, whose processes go back to `home` when it is dropped.
    pub fn create(dir: PathBuf, home: PathBuf) -> Result<Self> {
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Self { dir, home })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves process `pid` (all its threads) in.
    pub fn admit(&self, pid: u32) -> Result<()> {
        self.write("cgroup.procs", &pid.to_string())
            .with_context(|| format!("move process {pid} into {}", self.dir.display()))
    }

    /// Runs `f` with the calling thread alone in the cgroup (cgroup v1 places threads one by
    /// one): the threads `f` starts are born in it and stay, and so are the processes they
    /// fork, while the rest of this process stays where it is. The thread goes back home
    /// afterwards, also when `f` fails.
    pub fn with_thread<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        // SAFETY: gettid has no preconditions and only returns the caller's thread id.
        let tid = unsafe { libc::gettid() }.to_string();
        self.write("tasks", &tid).with_context(|| format!("move thread {tid} in"))?;
        let result = f();
        let home = self.home.join("tasks");
        std::fs::write(&home, &tid)
            .with_context(|| format!("move thread {tid} back to {}", home.display()))?;
        result
    }

    /// The processes in it.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let procs = self.read("cgroup.procs")?;
        procs.split_whitespace().map(|pid| Ok(pid.parse()?)).collect()
    }

    /// The text of its file `name`.
    pub fn read(&self, name: &str) -> Result<String> {
        let path = self.dir.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
    }

    /// Writes `value` to its file `name`.
    pub fn write(&self, name: &str, value: &str) -> Result<()> {
        let path = self.dir.join(name);
        std::fs::write(&path, value).with_context(|| format!("write {value} to {}", path.display()))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let started = Instant::now();
        loop {
            for pid in self.pids().unwrap_or_default() {
                // A process that exited meanwhile cannot move; the next look no longer lists it.
                let _ = std::fs::write(self.home.join("cgroup.procs"), pid.to_string());
            }
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                // EBUSY: a process forked into it before its parent left, or one still exiting.
                Err(_) if started.elapsed() < REMOVE_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    eprintln!("bench: cannot remove {}: {e}", self.dir.display());
                    return;
                }
            }
        }
    }
}

/// The path of a process's cgroup, from its `/proc/PID/cgroup` (`ID:CONTROLLERS:PATH` lines):
/// in cgroup v1's hierarchy of `Some(controller)`, or in cgroup v2 (`None`: the `0::PATH` line).
pub fn membership_path<'a>(membership: &'a str, v1_controller: Option<&str>) -> Option<&'a str> {
    membership.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let ours = match v1_controller {
            Some(controller) => controllers.split(',').any(|c| c == controller),
            None => id == "0" && controllers.is_empty(),
        };
        ours.then_some(path)
    })
}

/// Where process `pid` is in the hierarchy mounted at `root`: the directory of its cgroup.
pub fn home_of(pid: u32, root: &Path, v1_controller: Option<&str>) -> Result<PathBuf> {
    let file = format!("/proc/{pid}/cgroup");
    let membership = std::fs::read_to_string(&file).with_context(|| format!("read {file}"))?;
    let path = membership_path(&membership, v1_controller).with_context(|| {
        format!("no line of {} in {file}", v1_controller.unwrap_or("cgroup v2"))
    })?;
    Ok(root.join(path.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_process_in_each_hierarchy() {
        let membership = "9:name=systemd:/\n4:memory:/jobs/b\n2:cpu,cpuacct:/jobs/a\n1:cpu:/\n\
                          0::/user.slice\n";
        assert_eq!(membership_path(membership, Some("cpuacct")), Some("/jobs/a"));
        assert_eq!(membership_path(membership, Some("memory")), Some("/jobs/b"));
        assert_eq!(membership_path(membership, None), Some("/user.slice"));
        assert_eq!(membership_path("1:cpu:/\n", Some("cpuacct")), None);
        assert_eq!(membership_path("1:cpu:/\n", None), None);
        let me = std::process::id();
        assert!(home_of(me, Path::new("/sys/fs/cgroup/x"), Some("no-such")).is_err());
    }

    /// Root only: a process moved in is listed, and goes home when the cgroup is dropped.
    #[test]
    fn processes_go_home_when_it_drops() {
        let root = Path::new("/sys/fs/cgroup/pids");
        if !crate::bench::stack::is_root() || !root.join("cgroup.procs").exists() {
            eprintln!("skipped: needs root and cgroup v1's pids controller");
            return;
        }
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let home = home_of(pid, root, Some("pids")).unwrap();
        let dir = home.join(format!("nexus-bench-test-{}", std::process::id()));
        let cgroup = Cgroup::create(dir.clone(), home.clone()).unwrap();
        cgroup.admit(pid).unwrap();
        assert_eq!(cgroup.pids().unwrap(), [pid]);
        assert_eq!(home_of(pid, root, Some("pids")).unwrap(), dir);
        drop(cgroup);
        assert_eq!(home_of(pid, root, Some("pids")).unwrap(), home);
        assert!(!dir.exists());
        let _ = child.kill();
        let _ = child.wait();
    }
}
