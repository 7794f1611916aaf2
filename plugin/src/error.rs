//! The one error type of every VMM adapter.

use std::error::Error;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::vm::VmState;

/// Why a VMM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The spec cannot describe a VM.
    #[error("Invalid spec for VM {vm}: {reason}")]
    InvalidSpec { vm: String, reason: String },
    /// The VMM process could not be started, or exited before it was ready.
    #[error("Cannot start the {vmm} process of VM {vm}: {reason}{}", block("VMM stderr", .stderr_tail))]
    Spawn { vm: String, vmm: &'static str, reason: String, stderr_tail: String },
    /// The VMM refused or failed a control request (QMP for QEMU, the REST API for Cloud
    /// Hypervisor); the source says how.
    #[error("VM {vm}: {command} failed")]
    Control {
        vm: String,
        command: String,
        #[source]
        source: Box<dyn Error + Send + Sync>,
    },
    /// An operation of the VMM did not finish in time.
    #[error("VM {vm}: {what} did not finish within {after:?}")]
    Timeout { vm: String, what: String, after: Duration },
    /// The guest died, or did not reach an expected point in time.
    #[error("Guest of VM {vm} failed: {reason}{}", block("serial console", .serial_tail))]
    GuestFailed { vm: String, reason: String, serial_tail: String },
    /// The operation needs the VM in another state (a snapshot needs it paused).
    #[error("Cannot {op} VM {vm} while it is {state}")]
    WrongState { vm: String, op: &'static str, state: VmState },
    /// A snapshot is unreadable, or does not fit the VMM or the spec it is restored with.
    #[error("Snapshot {} cannot be restored: {reason}", .dir.display())]
    BadSnapshot { dir: PathBuf, reason: String },
    /// A file operation failed.
    #[error("Cannot {what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl VmmError {
    /// An [`VmmError::Io`] error for the operation `what` ("create work dir /x").
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> VmmError {
        let what = what.into();
        move |source| VmmError::Io { what, source }
    }
}

/// A titled block of log lines appended to a message, or nothing if there are none.
fn block(title: &str, lines: &str) -> String {
    if lines.trim().is_empty() {
        format!(" (no {title} output)")
    } else {
        format!("\n--- {title} (last lines) ---\n{}", lines.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_log_tail() {
        let error = VmmError::GuestFailed {
            vm: "f1".into(),
            reason: "the VMM exited".into(),
            serial_tail: "Kernel panic\n".into(),
        };
        let expected =
            "Guest of VM f1 failed: the VMM exited\n--- serial console (last lines) ---\nKernel panic";
        assert_eq!(error.to_string(), expected);
        let error = VmmError::Spawn {
            vm: "f1".into(),
            vmm: "qemu",
            reason: "exited".into(),
            stderr_tail: String::new(),
        };
        assert_eq!(
            error.to_string(),
            "Cannot start the qemu process of VM f1: exited (no VMM stderr output)"
        );
    }
}
