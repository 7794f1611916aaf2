//! Log files a VM leaves behind (its guest console, its VMM's stderr): reading their last lines,
//! and waiting for a line to appear in the console.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::VmmError;
use crate::vm::{Vm, VmState};

/// How much of a log's end [`tail_lines`] reads: enough for any sensible number of lines.
const TAIL_BYTES: u64 = 64 * 1024;
/// How often [`wait_for_serial`] looks at the console log.
const POLL: Duration = Duration::from_millis(20);
/// Console lines carried by the error of a failed wait.
const FAILURE_TAIL_LINES: usize = 40;

/// Waits until the guest console of `vm` prints `marker`. Fails with
/// [`VmmError::GuestFailed`], carrying the console's last lines, if the VMM exits or is stopped
/// first, or if `timeout` passes.
pub fn wait_for_serial(vm: &dyn Vm, marker: &str, timeout: Duration) -> Result<(), VmmError> {
    let info = vm.info();
    let mut scanner = Scanner::new(marker.as_bytes());
    let deadline = Instant::now() + timeout;
    loop {
        // The state is read before the log, so a VMM seen as gone has written all it will.
        let state = vm.info().state;
        let found = scanner
            .scan(&info.serial_log)
            .map_err(VmmError::io(format!("read {}", info.serial_log.display())))?;
        if found {
            return Ok(());
        }
        let reason = match state {
            VmState::Exited | VmState::Stopped => {
                format!("its VMM {state} before the console printed {marker:?}")
            }
            _ if Instant::now() >= deadline => {
                format!("the console did not print {marker:?} within {timeout:?}")
            }
            _ => {
                thread::sleep(POLL);
                continue;
            }
        };
        let serial_tail = vm.serial_tail(FAILURE_TAIL_LINES);
        return Err(VmmError::GuestFailed { vm: info.name, reason, serial_tail });
    }
}

/// Finds a marker in a growing file, reading each byte once; a marker split across two reads
/// is found through the bytes carried over from the first.
struct Scanner<'a> {
    marker: &'a [u8],
    offset: u64,
    carry: Vec<u8>,
}

impl<'a> Scanner<'a> {
    fn new(marker: &'a [u8]) -> Self {
        Scanner { marker, offset: 0, carry: Vec::new() }
    }

    /// Reads what was appended since the last call; whether the marker has appeared. A missing
    /// file is one the VMM has not created yet.
    fn scan(&mut self, path: &Path) -> io::Result<bool> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut window = std::mem::take(&mut self.carry);
        let carried = window.len();
        self.offset += file.read_to_end(&mut window)? as u64;
        if window.len() == carried {
            self.carry = window;
            return Ok(false);
        }
        if self.marker.is_empty() || window.windows(self.marker.len()).any(|w| w == self.marker) {
            return Ok(true);
        }
        let keep = self.marker.len().saturating_sub(1).min(window.len());
        self.carry = window.split_off(window.len() - keep);
        Ok(false)
    }
}

/// The last `lines` lines of the log at `path` (at most its last 64 KiB), with carriage
/// returns dropped and invalid UTF-8 replaced; empty if the file cannot be read.
pub(crate) fn tail_lines(path: &Path, lines: usize) -> String {
    let read_tail = || -> io::Result<Vec<u8>> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let bytes = read_tail().unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).replace('\r', "");
    let all: Vec<&str> = text.lines().collect();
    let mut tail = all[all.len().saturating_sub(lines)..].join("\n");
    if !tail.is_empty() {
        tail.push('\n');
    }
    tail
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;

    use super::*;

    #[test]
    fn finds_a_marker_split_across_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let mut scanner = Scanner::new(b"nexus-init: starting agent");
        assert!(!scanner.scan(&path).unwrap(), "a missing log has no marker");
        let mut log = OpenOptions::new().create(true).append(true).open(&path).unwrap();
        log.write_all(b"[    0.1] booting\r\nnexus-init: sta").unwrap();
        assert!(!scanner.scan(&path).unwrap());
        assert!(!scanner.scan(&path).unwrap(), "nothing new");
        log.write_all(b"rting agent\r\n").unwrap();
        assert!(scanner.scan(&path).unwrap());
    }

    /// A VM that is only a console log and a state.
    #[derive(Debug)]
    struct FakeVm {
        log: std::path::PathBuf,
        state: VmState,
    }

    impl FakeVm {
        /// What every lifecycle call answers: a fake VM only has a console and a state.
        fn refuse(&self, op: &'static str) -> VmmError {
            VmmError::WrongState { vm: "fake".into(), op, state: self.state }
        }
    }

    impl Vm for FakeVm {
        fn boot(&mut self) -> Result<(), VmmError> {
            Err(self.refuse("boot"))
        }
        fn pause(&mut self) -> Result<(), VmmError> {
            Err(self.refuse("pause"))
        }
        fn resume(&mut self) -> Result<(), VmmError> {
            Err(self.refuse("resume"))
        }
        fn snapshot(&mut self, _: &Path) -> Result<crate::vm::Snapshot, VmmError> {
            Err(self.refuse("snapshot"))
        }
        fn stop(&mut self) -> Result<(), VmmError> {
            Err(self.refuse("stop"))
        }
        fn info(&self) -> crate::vm::VmInfo {
            crate::vm::VmInfo {
                name: "fake".into(),
                vmm: "fake",
                accel: crate::accel::Accel::Tcg,
                state: self.state,
                pid: None,
                serial_log: self.log.clone(),
            }
        }
        fn serial_tail(&self, lines: usize) -> String {
            tail_lines(&self.log, lines)
        }
        fn doorbell(&mut self) -> Result<std::os::unix::net::UnixStream, VmmError> {
            Err(self.refuse("connect the doorbell of"))
        }
    }

    #[test]
    fn a_wait_ends_with_the_marker_the_timeout_or_the_vmms_exit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        std::fs::write(&log, "booting\nready\n").unwrap();
        let mut vm = FakeVm { log, state: VmState::Running };
        wait_for_serial(&vm, "ready", Duration::from_secs(5)).unwrap();

        let error = wait_for_serial(&vm, "never", Duration::from_millis(50)).unwrap_err();
        let expected = "Guest of VM fake failed: the console did not print \"never\" within 50ms\n\
                        --- serial console (last lines) ---\nbooting\nready";
        assert_eq!(error.to_string(), expected);

        vm.state = VmState::Exited;
        let started = Instant::now();
        let error = wait_for_serial(&vm, "never", Duration::from_secs(60)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "an exited VMM ends the wait at once");
        assert!(error.to_string().contains("its VMM exited before the console printed"), "{error}");
    }

    #[test]
    fn tails_the_last_lines_without_carriage_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, b"one\r\ntwo\r\nthree\xff\r\n").unwrap();
        assert_eq!(tail_lines(&path, 2), "two\nthree\u{fffd}\n");
        assert_eq!(tail_lines(&path, 10), "one\ntwo\nthree\u{fffd}\n");
        assert_eq!(tail_lines(&dir.path().join("missing"), 3), "");
    }
}
