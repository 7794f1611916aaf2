//! Nexus's eBPF observability: probes in the host kernel that see each VM the way the kernel
//! does, whatever Nexus itself believes.
//!
//! ```text
//!  probes/*.bpf.c ──clang -target bpf (build.rs, CO-RE vs vmlinux.h)──► *.bpf.o (embedded)
//!                                                                          │ aya: load, attach
//!  kernel: sched:sched_switch ─► thread_cpu{tid → on-CPU ns} for tracked_tgids, single tids
//!          kvm:kvm_exit       ─► kvm_exits{(isa, reason) → count}
//!  user space: probes (maps) · procfs (thread names, RSS, ksm_stat) · ksm (node counters)
//!              census (full page-hash scan, the reference for KSM's figures)
//! ```
//! The probes are C, not Rust: Rust eBPF programs need rust-src for the bpf target, which these
//! machines lack. So aya-log (which needs Rust probes) is not used; the probes report through
//! maps that user space reads on each scrape.

pub mod census;
pub mod ksm;
pub mod maps;
pub mod probes;
pub mod procfs;

pub use census::Census;
pub use ksm::{ksmd_cpu_time, Ksm, KsmScanning, Settled};
pub use maps::{ExitKey, ThreadCpu};
pub use probes::{has_cycles_pmu, loaded_sched_cost, CostStats, ProbeError, Probes, ProgramCost};
pub use procfs::{ProcError, Resident, ThreadKind};
