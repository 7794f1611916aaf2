//! [`Fleet`] of the conventional platform (`nexus_tests::Conventional`): the baseline's VMs,
//! each on a tap in the platform's network namespace, invoked over HTTP. The function is the
//! compress example (`vm.rs`); its input must be seeded.
//!
//! ```text
//!  first add  the platform starts with this thread alone in the cgroup: the QEMU adapter's
//!             spawner thread is born there, so every VMM it forks is too, while the bench's
//!             own memory (the load generator, the link to storage) stays outside
//!  add        boots one more VM on a new tap (a boot, not a restore: a snapshot carries its
//!             guest's address, and two VMs on one bridge cannot share it)
//!  drop       the platform stops its VMs and removes its namespace
//! ```

use anyhow::{Context, Result};
use nexus_tests::Conventional;
use serde_json::{json, Value};

use super::fleet::Fleet;
use super::memory_cgroup::MemoryCgroup;
use super::stack::Stack;
use super::vm;
use crate::workspace_root;

/// The baseline's VMs of the compress function on the conventional platform.
pub struct ConventionalFleet<'a> {
    stack: &'a Stack,
    platform: Option<Conventional>,
}

impl<'a> ConventionalFleet<'a> {
    pub fn new(stack: &'a Stack) -> Self {
        Self { stack, platform: None }
    }

    fn platform(&self) -> Result<&Conventional> {
        self.platform.as_ref().context("the conventional fleet has no VM yet")
    }
}

impl Fleet for ConventionalFleet<'_> {
    fn add(&mut self, cgroup: &MemoryCgroup) -> Result<u32> {
        let platform = match &mut self.platform {
            Some(platform) => platform,
            None => {
                let code = workspace_root().join(vm::CODE);
                let start =
                    || self.stack.conventional("density-baseline", &code, vm::HANDLER, json!({}));
                self.platform.insert(cgroup.with_thread(start)?)
            }
        };
        Ok(platform.add()?)
    }

    fn invoke(&self, event: &Value) -> Result<Value> {
        Ok(self.platform()?.invoke(event)?)
    }

    fn pids(&self) -> Vec<u32> {
        self.platform.as_ref().map(Conventional::pids).unwrap_or_default()
    }
}

/// What the density notes say about this fleet.
pub fn note() -> String {
    "The baseline's VMs run on the conventional platform (virtio NIC on a tap in a network \
     namespace, invocations over HTTP, no Nexus device): its QEMU adapter's spawner thread is \
     started in the cgroup, so every VMM is born there, while the bench process stays outside. \
     Each added VM boots (≈ 20 s under TCG; a snapshot carries its guest's network address, \
     which two VMs on one bridge cannot share)."
        .to_owned()
}
