//! What the density search drives: the warm VMs of one flavour of one function, however that
//! flavour starts and invokes them. The search only adds VMs, invokes the function and asks for
//! the VMMs' processes; it never knows how a flavour works.
//!
//! ```text
//!  add(cgroup)   one more warm VM, its VMM charged to `cgroup` from its first page; its pid
//!  invoke(event) one invocation on an idle VM (waiting for one if all are busy)
//!  pids()        the VMMs, in the order added
//! ```
//! Dropping a fleet stops its VMs.

use anyhow::Result;
use serde_json::Value;

use super::backend_fleet::{self, BackendFleet};
use super::conventional_fleet::{self, ConventionalFleet};
use super::memory_cgroup::MemoryCgroup;
use super::stack::Stack;
use crate::image::Flavour;

/// The warm VMs of one flavour of one function; see the module doc.
pub trait Fleet: Sync {
    /// Starts one more warm VM, ready to answer; returns its VMM's pid. The VMM is born in
    /// `cgroup` (this kernel does not move a process's charges with it, so a VMM moved in after
    /// its start would leave its memory outside), and so is any host process whose memory
    /// serves the VMs: e.g. the process that forks the VMMs is admitted before the first one
    /// starts.
    fn add(&mut self, cgroup: &MemoryCgroup) -> Result<u32>;
    /// Invokes the function once on an idle VM (waits for one if all are busy); fails if the
    /// handler raised.
    fn invoke(&self, event: &Value) -> Result<Value>;
    /// The VMMs' pids, in the order added.
    fn pids(&self) -> Vec<u32>;
}

/// The fleet of `flavour` on `stack`: Nexus's VMs on the backend, the baseline's on the
/// conventional platform.
pub fn start(stack: &Stack, flavour: Flavour) -> Result<Box<dyn Fleet + '_>> {
    Ok(match flavour {
        Flavour::Nexus => Box::new(BackendFleet::start(stack)?),
        Flavour::Baseline => Box::new(ConventionalFleet::new(stack)),
    })
}

/// What the density notes say about how each flavour's fleet starts and is charged.
pub fn notes() -> [String; 2] {
    [conventional_fleet::note(), backend_fleet::note()]
}
