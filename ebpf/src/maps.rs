//! The keys and values of the probes' maps, as `probes/nexus.h` declares them.
//!
//! ```text
//!  struct nexus_thread_cpu (24 bytes)         struct nexus_exit_key (8 bytes)
//!  0        8          16      20        24   0     4        8
//!  │oncpu_ns│ switches │ tgid  │reserved │    │ isa │ reason │
//! ```
//! Plain `#[repr(C)]` data with no implicit padding; the sizes are pinned by a test so that a
//! change on one side only fails here rather than in the kernel's map checks.

/// On-CPU time of one thread of a tracked process (value of `thread_cpu`, keyed by tid).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadCpu {
    /// Nanoseconds on a CPU, summed at each switch away from it.
    pub oncpu_ns: u64,
    /// Times switched away from a CPU.
    pub switches: u64,
    /// The thread's process.
    pub tgid: u32,
    pub reserved: u32,
}

/// Which KVM exit (key of `kvm_exits`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExitKey {
    /// 1: VMX (Intel), 2: SVM (AMD).
    pub isa: u32,
    /// The exit reason code of that ISA.
    pub reason: u32,
}

// SAFETY: plain integers with no padding (sizes pinned below): every bit pattern is valid.
unsafe impl aya::Pod for ThreadCpu {}
// SAFETY: as above.
unsafe impl aya::Pod for ExitKey {}

impl ExitKey {
    /// A bounded label for the exit: `vmx_12`, `svm_0x7b` (the codes the kernel's kvm_exit
    /// format prints by name).
    pub fn label(&self) -> String {
        match self.isa {
            1 => format!("vmx_{}", self.reason & 0xffff),
            2 => format!("svm_{:#x}", self.reason),
            isa => format!("isa{isa}_{}", self.reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_c_header() {
        assert_eq!(std::mem::size_of::<ThreadCpu>(), 24);
        assert_eq!(std::mem::align_of::<ThreadCpu>(), 8);
        assert_eq!(std::mem::offset_of!(ThreadCpu, tgid), 16);
        assert_eq!(std::mem::size_of::<ExitKey>(), 8);
        assert_eq!(std::mem::offset_of!(ExitKey, reason), 4);
    }

    #[test]
    fn exit_labels_name_the_isa() {
        assert_eq!(ExitKey { isa: 1, reason: 12 }.label(), "vmx_12");
        assert_eq!(ExitKey { isa: 1, reason: 0x8000_0021 }.label(), "vmx_33");
        assert_eq!(ExitKey { isa: 2, reason: 0x7b }.label(), "svm_0x7b");
    }
}
