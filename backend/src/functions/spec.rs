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
//!
//! What the backend's config sets bounds a deploy ([`FunctionSpec::confine`]): `code` must lie
//! inside `api.code_root` (when set), and a function listed in `functions:` may bring a policy
//! only as narrow as the one given there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// The code directory is not inside `api.code_root` (or does not exist).
    #[error("code: {code} is not a directory inside api.code_root {root}")]
    OutsideCodeRoot { code: PathBuf, root: PathBuf },
    /// The policy allows more than the config's policy for the function.
    #[error("policy: {widening} is beyond functions.{name}.policy of the backend's config, which a deploy may only narrow")]
    Widens { name: String, widening: String },
}

impl SpecError {
    /// Whether the spec asks for what the backend's config forbids (rather than being wrong).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, SpecError::OutsideCodeRoot { .. } | SpecError::Widens { .. })
    }
}

impl FunctionSpec {
    /// The function's policy: its own, or the one the backend's config gives it.
    pub fn policy_in(&self, config: &Config) -> Policy {
        self.policy.clone().unwrap_or_else(|| config.policy_for(&self.name).clone())
    }

    /// Checks the spec against what `config` allows: its code must be inside `api.code_root`
    /// (the spec then names it by its canonical path, so a symlink changed later cannot move
    /// it out), and its policy must be at most the config's own for a function listed there.
    pub fn confine(mut self, config: &Config) -> Result<Self, SpecError> {
        if let Some(root) = &config.api.code_root {
            self.code = inside(&self.code, root)?;
        }
        let ceiling = config.functions.get(&self.name).map(|f| &f.policy);
        if let (Some(own), Some(ceiling)) = (&self.policy, ceiling) {
            if let Some(widening) = own.widening_of(ceiling) {
                return Err(SpecError::Widens { name: self.name.clone(), widening });
            }
        }
        Ok(self)
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

/// The canonical path of directory `code` if it lies inside `root`. A missing directory gets
/// the same answer as one outside, so a deploy cannot probe the host's files.
fn inside(code: &Path, root: &Path) -> Result<PathBuf, SpecError> {
    let outside = || SpecError::OutsideCodeRoot { code: code.to_owned(), root: root.to_owned() };
    let root = root.canonicalize().map_err(|_| outside())?;
    let code = code.canonicalize().map_err(|_| outside())?;
    if !code.starts_with(&root) || !code.is_dir() {
        return Err(outside());
    }
    Ok(code)
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
    fn code_must_lie_inside_the_code_root() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let code = root.path().join("fns/compress");
        std::fs::create_dir_all(&code).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("escape")).unwrap();
        let config =
            Config::parse(&format!("api: {{ code_root: {} }}", root.path().display()), "t")
                .unwrap();
        let confined = spec(&root.path().join("fns/./compress")).confine(&config).unwrap();
        assert_eq!(confined.code, code.canonicalize().unwrap(), "named by its canonical path");
        for outside in [
            elsewhere.path().to_owned(),
            root.path().join("fns/../../"),
            root.path().join("escape"),
            root.path().join("missing"),
        ] {
            let error = spec(&outside).confine(&config).unwrap_err();
            assert!(matches!(error, SpecError::OutsideCodeRoot { .. }), "{outside:?}: {error}");
            assert!(error.is_forbidden());
        }
        // Without a code root, any directory.
        assert!(spec(elsewhere.path()).confine(&Config::default()).is_ok());
    }

    #[test]
    fn a_deploy_only_narrows_the_policy_the_config_sets() {
        let code = tempfile::tempdir().unwrap();
        let config = Config::parse(
            "functions:\n  compress:\n    policy: { grants: [{ bucket: b, prefix: in/, access: [read] }] }",
            "t",
        )
        .unwrap();
        let with_policy = |policy: serde_json::Value| {
            let mut s = spec(code.path());
            s.policy = Some(serde_json::from_value(policy).unwrap());
            s
        };
        let narrower = with_policy(serde_json::json!({
            "grants": [{ "bucket": "b", "prefix": "in/x/", "access": ["read"] }]
        }));
        let kept = narrower.clone().confine(&config).unwrap();
        assert_eq!(kept.policy_in(&config), narrower.policy.unwrap());
        let wider = with_policy(serde_json::json!({
            "grants": [{ "bucket": "b", "prefix": "in/", "access": ["read", "write"] }]
        }));
        let error = wider.clone().confine(&config).unwrap_err();
        assert_eq!(
            error.to_string(),
            "policy: Write access to b/in/ is beyond functions.compress.policy of the backend's \
             config, which a deploy may only narrow"
        );
        // No policy of its own: the config's.
        let plain = spec(code.path()).confine(&config).unwrap();
        assert_eq!(&plain.policy_in(&config), config.policy_for("compress"));
        // A function the config does not list brings its own.
        let mut other = wider;
        other.name = "other".into();
        assert!(other.confine(&config).is_ok());
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
