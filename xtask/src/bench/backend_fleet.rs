//! [`Fleet`] of a function deployed on the bench's backend (`stack.rs`): Nexus's VMs. The
//! function is the compress example (`vm.rs`); its input must be seeded.
//!
//! ```text
//!  start    deploy `density-nexus` with max_vms 256 (no snapshot: every VM boots, as the
//!           conventional platform's must, so that both flavours' VMs hold what a boot leaves)
//!  add      first, admit the backend into the cgroup: the VMMs it forks are born there, and
//!           what it allocates serving them is charged there too; then n + 1 invocations at
//!           once on the n VMs: n take the idle VMs, the last finds none idle and starts one
//!           more (the backend's pool: an idle VM, else a start below max_vms); the new VM is
//!           the one the backend lists that was not there before
//!  drop     `DELETE` the function: its VMs stop
//! ```

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::fleet::Fleet;
use super::memory_cgroup::MemoryCgroup;
use super::stack::Stack;
use super::vm;
use crate::image::Flavour;
use crate::workspace_root;

/// The function's `max_vms`: the backend's largest, so the search, not the spec, bounds it.
const MAX_VMS: u32 = 256;
/// Bursts tried for one added VM (one is enough unless an invocation ends before the last of
/// the burst arrives).
const ADD_ATTEMPTS: usize = 3;

/// Nexus's VMs of the compress function on the bench's backend.
#[derive(Debug)]
pub struct BackendFleet<'a> {
    stack: &'a Stack,
    name: String,
    event: Value,
    pids: Vec<u32>,
}

impl<'a> BackendFleet<'a> {
    /// Deploys the function; see the module doc.
    pub fn start(stack: &'a Stack) -> Result<Self> {
        let (flavour, name) = (Flavour::Nexus, "density-nexus".to_owned());
        let code = workspace_root().join(vm::CODE);
        stack.deploy(&name, &code, vm::HANDLER, flavour, json!({ "max_vms": MAX_VMS }))?;
        Ok(Self { stack, event: vm::event(&format!("out/{name}.gz")), name, pids: Vec::new() })
    }

    /// `count` invocations at once.
    fn burst(&self, count: usize) -> Result<()> {
        std::thread::scope(|scope| {
            let calls: Vec<_> =
                (0..count).map(|_| scope.spawn(|| self.invoke(&self.event))).collect();
            calls.into_iter().try_for_each(|call| call.join().expect("burst thread").map(drop))
        })
    }

    /// The VMMs the backend lists that this fleet has not seen, after checking that none it has
    /// seen is gone.
    fn new_pids(&self) -> Result<Vec<u32>> {
        let listed: Vec<u32> = self.stack.warm_vms(&self.name)?.iter().map(|vm| vm.pid).collect();
        if let Some(gone) = self.pids.iter().find(|pid| !listed.contains(pid)) {
            bail!("VM {gone} of {} is gone", self.name);
        }
        Ok(listed.into_iter().filter(|pid| !self.pids.contains(pid)).collect())
    }
}

impl Fleet for BackendFleet<'_> {
    fn add(&mut self, cgroup: &MemoryCgroup) -> Result<u32> {
        if self.pids.is_empty() {
            cgroup.admit(self.stack.backend.pid().context("the backend is not running")?)?;
        }
        for _ in 0..ADD_ATTEMPTS {
            self.burst(self.pids.len() + 1)?;
            match self.new_pids()?[..] {
                [] => continue,
                [pid] => {
                    self.pids.push(pid);
                    return Ok(pid);
                }
                ref more => bail!("{} VMs started at once: {more:?}", more.len()),
            }
        }
        bail!("{ADD_ATTEMPTS} bursts of {} invocations started no VM", self.pids.len() + 1)
    }

    fn invoke(&self, event: &Value) -> Result<Value> {
        Ok(self.stack.invoke(&self.name, event, &[])?.result)
    }

    fn pids(&self) -> Vec<u32> {
        self.pids.clone()
    }
}

impl Drop for BackendFleet<'_> {
    fn drop(&mut self) {
        let removed =
            self.stack.backend.api("DELETE", &format!("/v1/functions/{}", self.name), None);
        if let Err(e) = removed {
            eprintln!("bench: cannot remove {}: {e:#}", self.name);
        }
    }
}

/// What the density notes say about these fleets: what the cgroup charges them, and the
/// baseline's stand-in.
pub fn note() -> String {
    "Nexus's VMs are forked by the backend: it is moved into the cgroup before the first VM \
     starts and back out after the search. Its memory serves the VMs (their regions, its \
     buffers): what it allocates while in the cgroup is charged to the Nexus budget; what it \
     held before (its footprint with no VM) is not, so the figure is the VMs' marginal memory. \
     Each Nexus VM boots, as each baseline VM does: a restored VM would hold only its \
     snapshot's pages, a booted one what the boot touched (guest RAM is in transparent huge \
     pages, so scattered touches fill it), and the comparison must not mix the two."
        .to_owned()
}
