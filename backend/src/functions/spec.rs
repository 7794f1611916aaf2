//! A function as it is deployed: its code, handler, image flavour, VM size and policy.
//!
//! ```yaml
//! name: compress
//! code: examples/compress          # a directory; relative to the spec file for `nexus fn deploy`
//! handler: handler.py:handler      # module file (relative to code) and function
//! flavour: nexus                   # nexus (no NIC, the shim) | baseline (NIC, real boto3)
//! vmm: qemu                        # qemu | cloud-hypervisor; optional, else the config's vm.vmm
//! max_vms: 4                       # optional; else the backend config's vm.max_vms
//! memory_mib: 256
//! vcpus: 1
//! timeout_secs: 60
//! environment: {}                  # the runtime's environment (baseline: its S3 settings)
//! policy: { grants: [...] }        # optional; else the backend config's policy for the name
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{is_function_name, Config, VmmKind, MAX_VMS};
use crate::policy::Policy;

/// The guest image a function runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    /// No NIC; boto3 is the Nexus shim.
    #[default]
    Nexus,
    /// The conventional setup: a virtio NIC and the real boto3.
    Baseline,
}

impl Flavour {
    /// The image folder's name.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Nexus => "nexus",
            Flavour::Baseline => "baseline",
        }
    }
}

/// A deployable function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    pub name: String,
    pub code: PathBuf,
    pub handler: String,
    #[serde(default)]
    pub flavour: Flavour,
    /// The VMM its VMs run on; `None`: the config's `vm.vmm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<VmmKind>,
    /// Warm VMs it may have at once; `None`: the config's `vm.max_vms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vms: Option<u32>,
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default)]
    pub policy: Option<Policy>,
}

fn default_memory() -> u32 {
    256
}

fn default_vcpus() -> u8 {
    1
}

fn default_timeout() -> u64 {
    60
}

/// What is wrong with a spec.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// The name cannot name a function.
    #[error("name: {0:?} is not a function name (a-z, 0-9, _ and -, at most 64)")]
    Name(String),
    /// The code directory is missing.
    #[error("code: {0} is not a directory")]
    Code(PathBuf),
    /// The handler is not `file.py:function` inside the code directory.
    #[error("handler: {0:?} must be module.py:function with the module inside `code`")]
    Handler(String),
    /// A size out of range.
    #[error("{0}")]
    Range(&'static str),
}

impl FunctionSpec {
    /// The function's policy: its own, or the one the backend's config gives it.
    pub fn policy_in(&self, config: &Config) -> Policy {
        self.policy.clone().unwrap_or_else(|| config.policy_for(&self.name).clone())
    }

    /// How many warm VMs it may have: its own limit, or the config's default.
    pub fn max_vms_in(&self, config: &Config) -> u32 {
        self.max_vms.unwrap_or(config.vm.max_vms)
    }

    /// The VMM its VMs run on: its own choice, or the config's default.
    pub fn vmm_in(&self, config: &Config) -> VmmKind {
        self.vmm.unwrap_or(config.vm.vmm)
    }

    /// Checks the spec against the files it names.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !is_function_name(&self.name) {
            return Err(SpecError::Name(self.name.clone()));
        }
        if !self.code.is_dir() {
            return Err(SpecError::Code(self.code.clone()));
        }
        let module = self.handler.rsplit_once(':').map(|(module, _)| module);
        let inside = module.filter(|m| !m.starts_with('/') && !m.split('/').any(|p| p == ".."));
        if !inside.is_some_and(|m| m.ends_with(".py") && self.code.join(m).is_file()) {
            return Err(SpecError::Handler(self.handler.clone()));
        }
        if !(64..=65536).contains(&self.memory_mib) {
            return Err(SpecError::Range("memory_mib: must be from 64 to 65536"));
        }
        if !(1..=64).contains(&self.vcpus) {
            return Err(SpecError::Range("vcpus: must be from 1 to 64"));
        }
        if self.timeout_secs == 0 {
            return Err(SpecError::Range("timeout_secs: must be at least 1"));
        }
        if self.max_vms.is_some_and(|n| !(1..=MAX_VMS).contains(&n)) {
            return Err(SpecError::Range("max_vms: must be from 1 to 256"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(code: &std::path::Path) -> FunctionSpec {
        serde_json::from_value(serde_json::json!({
            "name": "compress", "code": code, "handler": "handler.py:handler"
        }))
        .unwrap()
    }

    #[test]
    fn defaults_and_validation() {
        let code = tempfile::tempdir().unwrap();
        std::fs::write(code.path().join("handler.py"), "def handler(e, c): pass\n").unwrap();
        let good = spec(code.path());
        assert_eq!((good.flavour, good.memory_mib, good.vcpus), (Flavour::Nexus, 256, 1));
        assert_eq!(good.validate(), Ok(()));
        let bad = |f: fn(&mut FunctionSpec)| {
            let mut s = spec(code.path());
            f(&mut s);
            s.validate().unwrap_err()
        };
        assert!(matches!(bad(|s| s.name = "Bad Name".into()), SpecError::Name(_)));
        assert!(matches!(bad(|s| s.handler = "missing.py:handler".into()), SpecError::Handler(_)));
        assert!(matches!(
            bad(|s| s.handler = "../handler.py:handler".into()),
            SpecError::Handler(_)
        ));
        assert!(matches!(bad(|s| s.handler = "handler.py".into()), SpecError::Handler(_)));
        assert!(matches!(bad(|s| s.memory_mib = 1), SpecError::Range(_)));
        assert!(matches!(bad(|s| s.code = "/nonexistent".into()), SpecError::Code(_)));
        assert!(matches!(bad(|s| s.max_vms = Some(0)), SpecError::Range(_)));
        assert!(matches!(bad(|s| s.max_vms = Some(MAX_VMS + 1)), SpecError::Range(_)));
        assert_eq!(spec(code.path()).max_vms_in(&Config::default()), 1);
    }

    #[test]
    fn the_vmm_is_the_specs_own_or_the_configs() {
        let code = tempfile::tempdir().unwrap();
        let config = Config::default();
        assert_eq!(spec(code.path()).vmm_in(&config), config.vm.vmm);
        let named = serde_json::json!({
            "name": "f", "code": code.path(), "handler": "h.py:handler", "vmm": "qemu"
        });
        let named: FunctionSpec = serde_json::from_value(named).unwrap();
        assert_eq!(named.vmm, Some(VmmKind::Qemu));
        let unknown = serde_json::json!({
            "name": "f", "code": code.path(), "handler": "h.py:handler", "vmm": "firecracker"
        });
        let error = serde_json::from_value::<FunctionSpec>(unknown).unwrap_err().to_string();
        assert!(error.contains("unknown variant `firecracker`"), "{error}");
    }
}
