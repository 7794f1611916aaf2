//! Operators' libvirt domains: a VM an operator defines and starts with virsh, with a Nexus
//! region, served under the policy of the function its metadata names, and invoked through
//! that function (it joins the function's pool).
//!
//! ```text
//!  virsh start D ─► libvirtd ─► hook `prepare` (XML on stdin) ─► POST /v1/libvirt/domains
//!                     attach_domain: check the XML (plugin libvirt::operator), the function
//!                     deployed; region created, linked as /dev/shm/nexus-D.region and owned
//!                     by QEMU's user, doorbell relay on <state_dir>/libvirt/D.sock; served
//!               ◄─ 201 (else the hook's message fails the start)
//!  QEMU starts, the guest boots ─► its runtime acks the epoch ─► the VM joins the pool (idle)
//!  nexus fn invoke F ─► an idle VM of F, this one included
//!  the domain stops ─► hook `release` ─► DELETE /v1/libvirt/domains/D: out of the pool,
//!                     region, link and relay released
//! ```
//!
//! The backend never stops, saves or undefines such a domain: keep-alive and `fn stop` leave
//! it; `fn rm`, a redeploy and a backend that stops take its region away (the guest sees the
//! backend gone) and leave the domain to the operator. Nothing here calls libvirtd: the hook
//! holds the domain's start (or stop), and libvirtd would wait for the hook.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexus_channel::notify::Kick;
use nexus_plugin::libvirt::{DomainXml, Expected, Kind};
use nexus_plugin::{Vm, VmmError};
use serde::Serialize;

use super::warm::{self, Warm};
use super::{lock, FunctionError, Functions};
use crate::backend::RegionInfo;

/// An operator's domain given a region.
#[derive(Debug, Clone, Serialize)]
pub struct DomainAttached {
    pub domain: String,
    pub function: String,
    pub region: RegionInfo,
}

impl Functions {
    /// Gives the operator's domain described by `xml` (libvirt's domain XML, as its hook
    /// receives it) a region under its function's policy; the VM joins the function's pool
    /// once its runtime is ready.
    pub fn attach_domain(&self, xml: &str) -> Result<DomainAttached, FunctionError> {
        let refused = |reason: String| FunctionError::Domain(reason);
        let parsed = DomainXml::parse(xml).map_err(|e| refused(e.to_string()))?;
        if parsed.kind() != Kind::Operator {
            let reason = format!("Domain {} has no Nexus region to attach", parsed.name);
            return Err(refused(reason));
        }
        let config = self.backend.config();
        let doorbell_dir = config.vm.state_dir.join("libvirt");
        let expected = Expected { region_size: config.region.size, doorbell_dir: &doorbell_dir };
        let domain = parsed.check(&expected).map_err(|e| refused(e.to_string()))?;
        let deployed = self.get(&domain.function).map_err(|_| {
            refused(format!(
                "Domain {}: its Nexus metadata names function {}, which is not deployed \
                 (nexus fn deploy)",
                domain.name, domain.function
            ))
        })?;
        if let Some((_, warm)) = lock(&self.domains).get(&domain.name) {
            let reason =
                format!("Domain {} is served already (region {})", domain.name, warm.region);
            return Err(refused(reason));
        }
        let libvirt = self.libvirt()?;
        let policy = deployed.spec.policy_in(config);
        let mut attached: Option<Box<dyn Vm>> = None;
        let region = self.backend.create_region_with(&domain.function, policy, |region| {
            let mut vm = libvirt.attach_operator(&domain, region.path())?;
            let stream = vm.doorbell()?;
            attached = Some(Box::new(vm));
            Ok::<_, VmmError>(Kick::Stream(stream.into()))
        })?;
        let vm = attached.ok_or_else(|| refused("The domain's VM was not attached".into()))?;
        let warm = Arc::new(Warm {
            region: region.id.clone(),
            vm: Mutex::new(vm),
            booted_in: Duration::ZERO,
            operator: Some(domain.name.clone()),
        });
        lock(&self.domains).insert(domain.name.clone(), (domain.function.clone(), warm.clone()));
        tracing::info!(domain = domain.name, function = domain.function, region = %region.id, "An operator's domain has its region");
        let backend = self.backend.clone();
        let joined = std::thread::Builder::new().name(format!("join-{}", domain.name)).spawn(
            move || {
                let started = Instant::now();
                match warm::wait_ready(&backend, &warm, &backend.config().vm) {
                    Ok(()) => {
                        if let Some(pid) = warm.vm().info().pid {
                            backend.vm_started(&warm.region, pid);
                        }
                        let ms = started.elapsed().as_millis() as u64;
                        tracing::info!(region = %warm.region, ms, "An operator's VM joins its function's pool");
                        if let Err(closed) = deployed.vms.adopt(warm) {
                            closed.stop(&backend);
                        }
                    }
                    Err(reason) => {
                        tracing::warn!(region = %warm.region, "An operator's VM is not served: {reason}")
                    }
                }
            },
        );
        if let Err(error) = joined {
            tracing::warn!("Cannot wait for the operator's VM: {error}");
        }
        Ok(DomainAttached { domain: domain.name, function: domain.function, region })
    }

    /// Releases the region of operator's domain `name` (the domain stopped); whether it had
    /// one.
    pub fn release_domain(&self, name: &str) -> bool {
        let Some((function, warm)) = lock(&self.domains).remove(name) else { return false };
        let deployed = self.get(&function).ok();
        // Listed as stopping until its region is gone.
        let leaving = deployed.as_ref().and_then(|deployed| deployed.vms.remove(&warm));
        warm.stop(&self.backend);
        drop(leaving);
        tracing::info!(domain = name, region = %warm.region, "An operator's domain stopped: region released");
        true
    }
}
