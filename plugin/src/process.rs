//! VMM processes that cannot outlive the process that started them.
//!
//! Each child is started with `PR_SET_PDEATHSIG(SIGKILL)`: the kernel kills it when its parent
//! goes, even if the parent is itself SIGKILLed. The signal fires when the *thread* that forked
//! the child exits, not the whole process, so a child forked from a short-lived thread (a tokio
//! blocking-pool thread, a request handler) would be killed when that thread is retired. Every
//! VMM process is therefore forked by one dedicated thread:
//!
//! ```text
//!  any thread                        "vmm-spawner" (lives while the adapter or any VM does)
//!  Spawner::spawn(command) ──────►   fork; in the child: prctl(PDEATHSIG, SIGKILL),
//!                                    getppid() check; exec
//!        ◄──────────────────────     Child
//! ```

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::VmmError;
use crate::serial::tail_lines;

/// How often [`Process::wait_timeout`] checks whether the process has exited.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// A handle on the spawner thread; the thread ends when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct Spawner {
    requests: mpsc::Sender<SpawnRequest>,
}

#[derive(Debug)]
struct SpawnRequest {
    command: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

impl Spawner {
    /// Starts the spawner thread.
    pub fn start() -> io::Result<Spawner> {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new().name("vmm-spawner".into()).spawn(move || {
            for SpawnRequest { mut command, reply } in incoming {
                // The requester may have given up; the child then dies with its handle's owner.
                let _ = reply.send(spawn_tied(&mut command));
            }
        })?;
        Ok(Spawner { requests })
    }

    /// Spawns `command` on the spawner thread, tied to this process's life.
    pub fn spawn(&self, command: Command) -> io::Result<Child> {
        let gone = || io::Error::other("the vmm-spawner thread is gone");
        let (reply, response) = mpsc::channel();
        self.requests.send(SpawnRequest { command, reply }).map_err(|_| gone())?;
        response.recv().map_err(|_| gone())?
    }
}

/// Spawns `command` so that the kernel SIGKILLs it when the calling thread exits.
fn spawn_tied(command: &mut Command) -> io::Result<Child> {
    // The pid of this process, as the child will see it through getppid().
    let parent = std::process::id() as libc::pid_t;
    let tie = move || -> io::Result<()> {
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number, no pointers.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            // The parent died before the death signal was armed: nobody would ever kill us.
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: `tie` runs in the forked child before exec, where only async-signal-safe work is
    // allowed: it makes two system calls, allocates nothing and takes no lock.
    unsafe { command.pre_exec(tie) };
    command.spawn()
}

/// A VMM process, its stdout and stderr going to a log file.
#[derive(Debug)]
pub struct Process {
    child: Mutex<Child>,
    pid: u32,
    log: PathBuf,
}

impl Process {
    /// Starts `command` through `spawner` with stdin closed and stdout and stderr appended to
    /// `log` (truncated first).
    pub fn start(spawner: &Spawner, mut command: Command, log: &Path) -> io::Result<Process> {
        let out = File::create(log)?;
        command.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        let child = spawner.spawn(command)?;
        Ok(Process { pid: child.id(), child: Mutex::new(child), log: log.to_owned() })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status once the process has exited (reaping it), `None` while it runs.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        // An error here means the process was already reaped elsewhere: it has exited.
        self.child().try_wait().unwrap_or_else(|_| Some(ExitStatus::default()))
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(EXIT_POLL);
        }
    }

    /// SIGKILLs the process (if it still runs) and reaps it.
    pub fn kill(&self) -> io::Result<ExitStatus> {
        let mut child = self.child();
        child.kill()?;
        child.wait()
    }

    /// The last `lines` lines the process wrote to stdout and stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_lines(&self.log, lines)
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes a file an earlier VMM left in a work dir (a socket it did not clean up).
pub fn remove_stale(path: &Path) -> Result<(), VmmError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(VmmError::io(format!("remove stale {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
    }

    #[test]
    fn children_die_with_the_spawner_thread_not_with_the_requesting_thread() {
        let dir = tempfile::tempdir().unwrap();
        let spawner = Spawner::start().unwrap();
        let log = dir.path().join("sleep.log");
        // Spawned on behalf of a thread that exits at once.
        let process = thread::scope(|s| {
            let start = || {
                let mut command = Command::new("sleep");
                command.arg("30");
                Process::start(&spawner, command, &log).unwrap()
            };
            s.spawn(start).join().unwrap()
        });
        thread::sleep(Duration::from_millis(100));
        assert!(process.exit_status().is_none(), "the child outlived its requesting thread");

        drop(spawner);
        let status = process.wait_timeout(Duration::from_secs(5)).expect("killed with the spawner");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
        assert!(!alive(process.pid()), "reaped");
    }

    #[test]
    fn logs_output_and_kills_and_reaps() {
        let dir = tempfile::tempdir().unwrap();
        let spawner = Spawner::start().unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "echo out; echo err >&2; exec sleep 30"]);
        let process = Process::start(&spawner, command, &dir.path().join("sh.log")).unwrap();
        assert!(process.wait_timeout(Duration::from_millis(200)).is_none());
        assert_eq!(process.log_tail(5), "out\nerr\n");
        process.kill().unwrap();
        assert!(!alive(process.pid()));
        process.kill().unwrap();
    }
}
