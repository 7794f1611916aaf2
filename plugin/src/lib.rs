//! VMM adapters: one pair of traits, [`Vmm`] and [`Vm`], for running a function VM with its
//! shared-memory region attached, and the adapters that implement them: [`qemu`] (a QEMU process
//! per VM), [`cloud_hypervisor`] (a Cloud Hypervisor process per VM, driven over its REST API)
//! and [`libvirt`] (a libvirt domain per VM, managed with `virsh` too).
//!
//! A VM's life, whatever the VMM:
//!
//! ```text
//!  Vmm::create(spec) ──► Created ──boot()──► Running ◄───────────┐
//!                        (VMM up, guest      │                    │
//!                         not started)       pause()           resume()
//!                                            ▼                    │
//!  Vmm::restore(spec, snapshot) ───────────► Paused ──────────────┘
//!                                            │ ▲
//!                                snapshot(dir) │  (stays Paused; dir/snapshot.json names the VMM)
//!                                            └─┘
//!  any state ──stop()──► Stopped        the VMM process dying on its own ──► Exited
//! ```
//!
//! Every VMM process an adapter starts dies with the process that started it, and [`Vm::stop`]
//! (also run on drop) reaps it, so a VM cannot outlive its owner. [`wait_for_serial`] waits for a
//! line of the guest console and turns a guest that dies or hangs first into
//! [`VmmError::GuestFailed`] carrying the console's last lines.

mod accel;
pub mod cloud_hypervisor;
mod error;
pub mod libvirt;
mod process;
pub mod qemu;
mod serial;
mod spec;
mod vm;

pub use accel::{detect_accel, Accel, AccelError};
pub use error::VmmError;
pub use serial::wait_for_serial;
pub use spec::{AccelChoice, Disk, Network, RegionSpec, VmSpec};
pub use vm::{RegionOnRestore, Snapshot, Vm, VmInfo, VmState, Vmm};
