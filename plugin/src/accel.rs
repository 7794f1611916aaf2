//! Which accelerator a VM runs on: KVM where the host can really run a guest on it, TCG (QEMU's
//! binary translator) otherwise.
//!
//! `/dev/kvm` existing is not enough: a host without VT-x/AMD-V may expose a paravirtual KVM
//! (KVM-PVM) on which only PVM-patched guest kernels run. So KVM is chosen only when `/dev/kvm`
//! opens read-write *and* the CPU flags in `/proc/cpuinfo` include `vmx` or `svm`.
//! `NEXUS_ACCEL=kvm|tcg` overrides the detection.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The environment variable that overrides [`detect_accel`].
const ACCEL_ENV: &str = "NEXUS_ACCEL";

/// How guest code is executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through `/dev/kvm`.
    Kvm,
    /// Binary translation in the VMM (QEMU TCG): ~10× slower guest code, works anywhere.
    Tcg,
}

impl Accel {
    /// The lowercase name (`kvm`, `tcg`).
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An accelerator name that is neither `kvm` nor `tcg`.
#[derive(Debug, thiserror::Error)]
#[error("Unknown accelerator {0:?}: use kvm or tcg")]
pub struct AccelError(String);

impl FromStr for Accel {
    type Err = AccelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(AccelError(s.to_owned())),
        }
    }
}

/// The accelerator to use on this host: `NEXUS_ACCEL` if it is set to a valid name, else KVM if
/// `/dev/kvm` opens read-write and the CPU has `vmx` or `svm`, else TCG.
pub fn detect_accel() -> Accel {
    choose(std::env::var(ACCEL_ENV).ok().as_deref(), host_accel)
}

/// Applies an override (the value of `NEXUS_ACCEL`) to the host's own answer.
fn choose(override_value: Option<&str>, host: impl FnOnce() -> Accel) -> Accel {
    match override_value.map(str::parse) {
        Some(Ok(accel)) => accel,
        Some(Err(error)) => {
            tracing::warn!("Ignoring {ACCEL_ENV}: {error}");
            host()
        }
        None => host(),
    }
}

fn host_accel() -> Accel {
    let kvm_opens = OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if kvm_opens && has_virtualization_flag(&cpuinfo) {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// Whether a `flags` line of `/proc/cpuinfo` names `vmx` (Intel VT-x) or `svm` (AMD-V).
fn has_virtualization_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| key.trim() == "flags")
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_case_and_space_insensitively() {
        assert_eq!("kvm".parse::<Accel>().unwrap(), Accel::Kvm);
        assert_eq!(" TCG\n".parse::<Accel>().unwrap(), Accel::Tcg);
        let error = "xen".parse::<Accel>().unwrap_err();
        assert_eq!(error.to_string(), "Unknown accelerator \"xen\": use kvm or tcg");
    }

    #[test]
    fn override_wins_and_a_bad_one_falls_back_to_the_host() {
        assert_eq!(choose(Some("tcg"), || Accel::Kvm), Accel::Tcg);
        assert_eq!(choose(Some("kvm"), || Accel::Tcg), Accel::Kvm);
        assert_eq!(choose(Some("fast"), || Accel::Kvm), Accel::Kvm);
        assert_eq!(choose(None, || Accel::Tcg), Accel::Tcg);
    }

    #[test]
    fn finds_virtualization_flags_only_in_flags_lines() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme vmx sse\nbugs\t\t: spectre\n";
        let amd = "flags\t\t: fpu svm\n";
        let pvm = "model name\t: vmx-like cpu\nflags\t\t: fpu vme sse hypervisor\n";
        assert!(has_virtualization_flag(intel));
        assert!(has_virtualization_flag(amd));
        assert!(!has_virtualization_flag(pvm));
        assert!(!has_virtualization_flag("flags\t: vmxnet\n"));
    }
}
