//! Which kernel module files the initramfs loads, and in what order, from the kernel's own
//! `modules.dep` (written by `depmod`) and `modules.builtin`.
//!
//! A `modules.dep` line is `path/of/mod.ko: path/of/dep.ko ...`, listing every module `mod`
//! needs, directly or not. A module is loaded after all of its dependencies; one built into the
//! kernel needs no loading. Module names treat `-` and `_` alike, as the kernel does.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The kernel's modules: each loadable one with its file and dependencies, and the built-ins.
#[derive(Debug)]
pub struct Modules {
    /// Name → (file relative to `lib/modules/<version>`, names of its dependencies).
    loadable: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
}

impl Modules {
    /// Reads `modules.dep` and `modules.builtin` of `dir` (`lib/modules/<version>`).
    pub fn load(dir: &Path) -> Result<Modules> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).with_context(|| format!("Cannot read {}", path.display()))
        };
        Ok(Modules::parse(&read("modules.dep")?, &read("modules.builtin")?))
    }

    pub fn parse(dep: &str, builtin: &str) -> Modules {
        let loadable = dep
            .lines()
            .filter_map(|line| {
                let (file, deps) = line.split_once(':')?;
                let deps = deps.split_whitespace().map(name_of).collect();
                Some((name_of(file.trim()), (file.trim().to_owned(), deps)))
            })
            .collect();
        let builtin = builtin.lines().filter(|l| !l.trim().is_empty()).map(name_of).collect();
        Modules { loadable, builtin }
    }

    /// The files to load for `wanted`, each after its dependencies and once; built-in modules
    /// are left out. Fails on a module the kernel knows neither as loadable nor built in.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        for name in wanted {
            let name = name.replace('-', "_");
            if self.builtin.contains(&name) && !self.loadable.contains_key(&name) {
                continue;
            }
            self.visit(&name, &mut done, &mut Vec::new(), &mut order)?;
        }
        Ok(order)
    }

    /// Depth-first: dependencies (in the reverse of their listed order, as modprobe loads them)
    /// before `name`. `path` holds the modules being visited, to report a cycle instead of
    /// recursing forever on a corrupt file.
    fn visit(
        &self,
        name: &str,
        done: &mut HashSet<String>,
        path: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            bail!("modules.dep has a dependency cycle: {} -> {name}", path.join(" -> "));
        }
        let Some((file, deps)) = self.loadable.get(name) else {
            bail!("Kernel module `{name}` is neither in modules.dep nor built in");
        };
        path.push(name.to_owned());
        for dep in deps.iter().rev() {
            self.visit(dep, done, path, order)?;
        }
        path.pop();
        done.insert(name.to_owned());
        order.push(file.clone());
        Ok(())
    }
}

/// `kernel/drivers/virtio/virtio-pci.ko[.xz]` → `virtio_pci`.
fn name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split_once(".ko").map_or(file, |(stem, _)| stem);
    stem.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Excerpt of the Debian 6.1 cloud kernel's files.
    const DEP: &str = "\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
";
    const BUILTIN: &str = "kernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\n";

    fn names(files: &[String]) -> Vec<String> {
        files.iter().map(|f| name_of(f)).collect()
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let modules = Modules::parse(DEP, BUILTIN);
        let order =
            modules.load_order(&["virtio_pci", "virtio_blk", "ext4", "virtio_net"]).unwrap();
        assert_eq!(
            names(&order),
            [
                "virtio",
                "virtio_ring",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci",
                "virtio_blk",
                "failover",
                "net_failover",
                "virtio_net",
            ]
        );
        assert_eq!(order[4], "kernel/drivers/virtio/virtio_pci.ko");
    }

    #[test]
    fn dashes_and_underscores_are_the_same_name() {
        let modules = Modules::parse(DEP, BUILTIN);
        let order = modules.load_order(&["virtio_rng"]).unwrap();
        assert_eq!(order.last().unwrap(), "kernel/drivers/char/hw_random/virtio-rng.ko");
    }

    #[test]
    fn unknown_modules_and_cycles_are_errors() {
        let modules = Modules::parse(DEP, BUILTIN);
        let error = modules.load_order(&["virtio_console"]).unwrap_err();
        assert!(error.to_string().contains("virtio_console"), "{error}");
        let cyclic = Modules::parse("a.ko: b.ko\nb.ko: a.ko\n", "");
        assert!(cyclic.load_order(&["a"]).unwrap_err().to_string().contains("cycle"));
    }
}
