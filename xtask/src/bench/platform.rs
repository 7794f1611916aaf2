//! How a phase of `cargo xtask bench` runs a flavour's VMs, each the way its platform would:
//!
//! ```text
//!            VMs                       an invocation                 a cold start
//!  nexus     the backend's, max_vms N  API → backend → channel →     stop; invoke with the input
//!            (no NIC)                  runtime; I/O through the shim  named: restore + prefetch
//!  baseline  the conventional          HTTP over the VM's tap to its  restore into a new QEMU on
//!            platform's (tap in a      runtime; I/O with the real     the same tap; invoke; the
//!            netns, no Nexus device)   boto3 over the same NIC        handler fetches its input
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use nexus_tests::{Conventional, Saved};
use serde_json::{json, Value};

use super::stack::{Stack, WarmVm, BUCKET};
use super::workload::Function;
use crate::image::Flavour;
use crate::workspace_root;

/// What the guest's agent writes on the console when it restarts the function's runtime.
const RUNTIME_RESTARTED: &str = "nexus-agent: runtime exited";

/// The VMs of one flavour of one function.
pub enum Vms<'a> {
    Nexus { stack: &'a Stack, name: String, snapshotted: bool },
    Baseline { platform: Box<Conventional>, saved: Option<Saved>, snapshots: PathBuf },
}

/// One cold start: restore + first invocation end to end, the VM start alone, seconds, and
/// whether the guest's runtime had to start afresh.
#[derive(Debug, Clone, Copy)]
pub struct Cold {
    pub seconds: f64,
    pub start_seconds: f64,
    pub runtime_restarted: bool,
}

impl<'a> Vms<'a> {
    /// Deploys `function` in `flavour` as `name` and starts `count` warm VMs of it.
    pub fn start(
        stack: &'a Stack,
        function: Function,
        flavour: Flavour,
        name: &str,
        count: usize,
    ) -> Result<Self> {
        let name = name.to_owned();
        let code = workspace_root().join(function.code());
        match flavour {
            Flavour::Nexus => {
                stack.deploy(
                    &name,
                    &code,
                    function.handler(),
                    flavour,
                    json!({ "max_vms": count }),
                )?;
                // All at once: the backend starts one more VM for each that finds none idle.
                let name_ref = name.as_str();
                std::thread::scope(|scope| {
                    let boots: Vec<_> = (0..count)
                        .map(|i| {
                            let event = function.event(name_ref, &format!("boot-{i}"));
                            scope.spawn(move || stack.invoke(name_ref, &event, &[]))
                        })
                        .collect();
                    boots
                        .into_iter()
                        .try_for_each(|boot| boot.join().expect("boot thread").map(drop))
                })?;
                Ok(Vms::Nexus { stack, name, snapshotted: false })
            }
            Flavour::Baseline => {
                let mut platform =
                    stack.conventional(&name, &code, function.handler(), json!({}))?;
                for _ in 0..count {
                    platform.add()?;
                }
                let snapshots = stack.backend.dir.join("conventional-snapshots").join(&name);
                Ok(Vms::Baseline { platform: Box::new(platform), saved: None, snapshots })
            }
        }
    }

    /// Invokes the function with `event` on an idle VM; its result. Fails if the handler
    /// raised.
    pub fn invoke(&self, event: &Value) -> Result<Value> {
        match self {
            Vms::Nexus { stack, name, .. } => Ok(stack.invoke(name, event, &[])?.result),
            Vms::Baseline { platform, .. } => Ok(platform.invoke(event)?),
        }
    }

    /// The VMMs' processes.
    pub fn pids(&self) -> Result<Vec<u32>> {
        Ok(match self {
            Vms::Nexus { .. } => self.backend_vms()?.iter().map(|vm| vm.pid).collect(),
            Vms::Baseline { platform, .. } => platform.pids(),
        })
    }

    /// The VMs as the backend lists them: the probes attribute these (none for the baseline,
    /// whose VMs are not the backend's).
    pub fn backend_vms(&self) -> Result<Vec<WarmVm>> {
        match self {
            Vms::Nexus { stack, name, .. } => stack.warm_vms(name),
            Vms::Baseline { .. } => Ok(Vec::new()),
        }
    }

    /// Waits until the flavour's writes are in storage (Nexus's write-back spool drained).
    pub fn settle(&self) -> Result<()> {
        match self {
            Vms::Nexus { stack, .. } => {
                Ok(stack.backend.wait_uploaded(Duration::from_secs(120))?)
            }
            Vms::Baseline { .. } => Ok(()),
        }
    }

    /// One cold start of invocation `event`, whose input is `function`'s: the first time, a
    /// warm VM is snapshotted; then the VM is stopped and invoked again from the snapshot.
    pub fn cold(&mut self, function: Function, event: &Value) -> Result<Cold> {
        match self {
            Vms::Nexus { stack, name, snapshotted } => {
                let api = |what: &str| {
                    stack.backend.api("POST", &format!("/v1/functions/{name}/{what}"), None)
                };
                if !*snapshotted {
                    api("snapshot")?;
                    *snapshotted = true;
                }
                api("stop")?;
                // The input is named, so the backend fetches it while the VM restores.
                let cold = stack.invoke(name, event, &[(BUCKET, function.input_key())])?;
                let console =
                    std::fs::read_to_string(stack.warm_vm(name)?.serial_log).unwrap_or_default();
                Ok(Cold {
                    seconds: cold.seconds,
                    start_seconds: cold.start_seconds.unwrap_or(f64::NAN),
                    runtime_restarted: console.contains(RUNTIME_RESTARTED),
                })
            }
            Vms::Baseline { platform, saved, snapshots } => {
                let saved = match saved {
                    Some(saved) => saved,
                    None => saved.insert(platform.snapshot(snapshots)?),
                };
                let started = Instant::now();
                let restored = platform.restore(saved)?;
                platform.invoke(event)?;
                Ok(Cold {
                    seconds: started.elapsed().as_secs_f64(),
                    start_seconds: restored.ready_in.as_secs_f64(),
                    runtime_restarted: false,
                })
            }
        }
    }
}

impl Drop for Vms<'_> {
    fn drop(&mut self) {
        if let Vms::Nexus { stack, name, .. } = self {
            if let Err(e) = stack.backend.api("DELETE", &format!("/v1/functions/{name}"), None) {
                eprintln!("bench: cannot remove {name}: {e:#}");
            }
        }
    }
}
