//! The QEMU command line for a spec.
//!
//! ```text
//!  qemu-system-x86_64 -nodefaults -no-user-config -nographic -no-reboot -name NAME
//!    -M q35 -accel tcg[,tb-size=MIB] -cpu max | -accel kvm -cpu host   -m MIB -smp N
//!    -kernel K [-initrd I] -append CMDLINE                     direct kernel boot
//!    -chardev file,…,path=WORK/serial.log -serial chardev:ser0 guest console
//!    -chardev socket,…,path=WORK/qmp.sock -mon …,mode=control  QMP
//!    -pidfile WORK/qemu.pid
//!    [-drive …,if=none,id=diskI -device virtio-blk-pci,…]       per disk
//!    [-object memory-backend-file,…,share=on,mem-path=REGION   the region, as BAR2 of an
//!     -device ivshmem-plain,memdev=nexus-region,master=on]      ivshmem-plain device
//!    [-device virtio-serial-pci -chardev socket,…,server=on,wait=off
//!     -device virtserialport,…,name=org.nexus.doorbell]         doorbell
//!    [-netdev user,id=net0 | tap,id=net0,ifname=TAP,script=no,downscript=no[,vhost=on]
//!     -device virtio-net-pci,netdev=net0[,mac=MAC]]          baseline NIC
//!    -S [-incoming defer]                                      paused; restore waits for a stream
//! ```
//!
//! Values inside `key=value,…` options escape a comma by doubling it, so any path works there.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::accel::Accel;
use crate::spec::{Network, VmSpec};

/// The machine type: the one place to change it. `microvm,pcie=on` (with a PVH `vmlinux` and
/// `tsc_early_khz=` on the command line) boots faster under TCG; whether ivshmem and snapshots
/// work there is being measured.
pub const MACHINE: &str = "q35";

/// The CPU model under TCG: everything TCG emulates except the fast `rep movsb/stosb` flags.
/// TCG runs a `rep` string instruction one element per step, so with ERMS/FSRM advertised the
/// guest kernel clears pages and glibc copies bytes a byte per step; without them the kernel
/// uses `rep stosq` and glibc its vector loops (measured: boot to ready ≈ 15 % faster, a 64 MiB
/// copy into fresh guest memory 185 → 108 ms).
const TCG_CPU: &str = "max,-erms,-fsrm";

/// The name of the guest's virtio-serial doorbell port.
pub const DOORBELL_PORT: &str = "org.nexus.doorbell";

/// The files QEMU keeps in a spec's work dir.
#[derive(Clone, Debug)]
pub struct WorkPaths {
    pub qmp: PathBuf,
    pub serial: PathBuf,
    pub pid_file: PathBuf,
    /// QEMU's own stdout and stderr.
    pub log: PathBuf,
    /// The doorbell's host end: a socket QEMU listens on, relayed to the guest's
    /// virtio-serial port [`DOORBELL_PORT`].
    pub doorbell: PathBuf,
}

impl WorkPaths {
    pub fn new(work_dir: &Path) -> Self {
        WorkPaths {
            qmp: work_dir.join("qmp.sock"),
            serial: work_dir.join("serial.log"),
            pid_file: work_dir.join("qemu.pid"),
            log: work_dir.join("qemu.log"),
            doorbell: work_dir.join("doorbell.sock"),
        }
    }
}

/// How the guest starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Boots the kernel once `cont` is sent.
    Fresh,
    /// Waits for a `migrate-incoming` stream, then stays paused.
    Incoming,
}

/// What the host offers a VM beyond the spec.
#[derive(Clone, Copy, Debug)]
pub struct Host {
    pub accel: Accel,
    /// TCG's translation cache, MiB (QEMU's own default if `None`).
    pub tcg_cache_mib: Option<u32>,
    /// Whether `/dev/vhost-net` exists: a tap NIC then moves its packets in the kernel under
    /// KVM (vhost needs KVM's ioeventfds; TCG guests use QEMU's own virtio-net).
    pub vhost_net: bool,
}

/// The arguments (after the program name) that run `spec` on `host`.
pub fn qemu_args(spec: &VmSpec, host: Host, paths: &WorkPaths, start: Start) -> Vec<OsString> {
    let Host { accel, tcg_cache_mib, vhost_net } = host;
    let mut args = Args::default();
    args.add(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    args.add(["-name", &spec.name, "-M", MACHINE]);
    match (accel, tcg_cache_mib) {
        (Accel::Kvm, _) => args.add(["-accel", "kvm", "-cpu", "host"]),
        (Accel::Tcg, None) => args.add(["-accel", "tcg", "-cpu", TCG_CPU]),
        (Accel::Tcg, Some(mib)) => {
            args.add(["-accel", &format!("tcg,tb-size={mib}"), "-cpu", TCG_CPU])
        }
    };
    args.add(["-m", &format!("{}M", spec.memory_mib), "-smp", &spec.vcpus.to_string()]);

    args.add(["-kernel"]).push(&spec.kernel);
    if let Some(initrd) = &spec.initrd {
        args.add(["-initrd"]).push(initrd);
    }
    args.add(["-append", &spec.cmdline]);

    args.add(["-chardev"]).push(option("file,id=ser0,path=", &paths.serial, ""));
    args.add(["-serial", "chardev:ser0"]);
    args.add(["-chardev"]).push(option("socket,id=qmp,path=", &paths.qmp, ",server=on,wait=off"));
    args.add(["-mon", "chardev=qmp,mode=control"]);
    args.add(["-pidfile"]).push(&paths.pid_file);
    // Named threads (`CPU 0/TCG`, `CPU 0/KVM`): the eBPF probes tell vCPU threads by their
    // names. QEMU merges this `-name` with the one above.
    args.add(["-name", "debug-threads=on"]);

    for (i, disk) in spec.disks.iter().enumerate() {
        let read_only = if disk.read_only { ",readonly=on" } else { "" };
        let drive = format!(",if=none,id=disk{i},format=raw{read_only}");
        args.add(["-drive"]).push(option("file=", &disk.path, &drive));
        args.add(["-device", &format!("virtio-blk-pci,drive=disk{i}")]);
    }
    if let Some(region) = &spec.region {
        let backend = option(
            "memory-backend-file,id=nexus-region,share=on,mem-path=",
            &region.path,
            &format!(",size={}", region.size),
        );
        args.add(["-object"]).push(backend);
        // master=on: this VM owns the region's contents, which lets QEMU migrate (snapshot) it.
        args.add(["-device", "ivshmem-plain,memdev=nexus-region,master=on"]);
    }
    if spec.doorbell {
        args.add(["-device", "virtio-serial-pci", "-chardev"]);
        args.push(option("socket,id=nexus-doorbell,path=", &paths.doorbell, ",server=on,wait=off"));
        let port = format!("virtserialport,chardev=nexus-doorbell,name={DOORBELL_PORT}");
        args.add(["-device", &port]);
    }
    match &spec.network {
        None => {}
        Some(Network::User) => {
            args.add(["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0"]);
        }
        Some(Network::Tap { ifname, mac }) => {
            let vhost = if vhost_net && accel == Accel::Kvm { ",vhost=on" } else { "" };
            let netdev = format!("tap,id=net0,ifname={ifname},script=no,downscript=no{vhost}");
            args.add(["-netdev", &netdev]);
            args.add(["-device", &format!("virtio-net-pci,netdev=net0,mac={mac}")]);
        }
    }

    args.add(["-S"]);
    if start == Start::Incoming {
        args.add(["-incoming", "defer"]);
    }
    args.0
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn add<const N: usize>(&mut self, words: [&str; N]) -> &mut Self {
        self.0.extend(words.map(OsString::from));
        self
    }

    fn push(&mut self, word: impl AsRef<OsStr>) -> &mut Self {
        self.0.push(word.as_ref().to_owned());
        self
    }
}

/// `prefix` + `path` with commas doubled + `suffix`: one `key=value,…` option word.
fn option(prefix: &str, path: &Path, suffix: &str) -> OsString {
    let mut bytes = prefix.as_bytes().to_vec();
    for &b in path.as_os_str().as_bytes() {
        bytes.push(b);
        if b == b',' {
            bytes.push(b',');
        }
    }
    bytes.extend_from_slice(suffix.as_bytes());
    OsString::from_vec(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Disk, RegionSpec};

    fn spec() -> VmSpec {
        VmSpec {
            initrd: Some("/img/initrd.img".into()),
            cmdline: "console=ttyS0 root=/dev/vda ro".into(),
            disks: vec![Disk { path: "/img/rootfs.ext4".into(), read_only: true }],
            ..VmSpec::new("fn-1", "/img/vmlinuz", "/run/vm/fn-1")
        }
    }

    fn argv(spec: &VmSpec, accel: Accel, start: Start) -> Vec<String> {
        let paths = WorkPaths::new(&spec.work_dir);
        let host = Host { accel, tcg_cache_mib: None, vhost_net: true };
        qemu_args(spec, host, &paths, start).into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    /// Whether `words` appear in `args`, in order and next to each other.
    fn has(args: &[String], words: &[&str]) -> bool {
        args.windows(words.len()).any(|w| w == words)
    }

    #[test]
    fn a_plain_tcg_vm_boots_its_kernel_paused_with_console_and_qmp_in_the_work_dir() {
        let args = argv(&spec(), Accel::Tcg, Start::Fresh);
        for words in [
            &["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"][..],
            &[
                "-name",
                "fn-1",
                "-M",
                "q35",
                "-accel",
                "tcg",
                "-cpu",
                "max,-erms,-fsrm",
                "-m",
                "256M",
            ],
            &["-smp", "1", "-kernel", "/img/vmlinuz", "-initrd", "/img/initrd.img"],
            &["-append", "console=ttyS0 root=/dev/vda ro"],
            &["-chardev", "file,id=ser0,path=/run/vm/fn-1/serial.log", "-serial", "chardev:ser0"],
            &["-chardev", "socket,id=qmp,path=/run/vm/fn-1/qmp.sock,server=on,wait=off"],
            &["-mon", "chardev=qmp,mode=control", "-pidfile", "/run/vm/fn-1/qemu.pid"],
            &["-name", "debug-threads=on"],
            &["-drive", "file=/img/rootfs.ext4,if=none,id=disk0,format=raw,readonly=on"],
            &["-device", "virtio-blk-pci,drive=disk0"],
        ] {
            assert!(has(&args, words), "{words:?} missing from {args:?}");
        }
        assert_eq!(args.last().unwrap(), "-S");
        for absent in
            ["ivshmem-plain,memdev=nexus-region,master=on", "virtio-serial-pci", "-netdev"]
        {
            assert!(!args.iter().any(|a| a == absent), "{absent} in {args:?}");
        }
    }

    #[test]
    fn the_translation_cache_is_bounded_under_tcg_only() {
        let paths = WorkPaths::new(&spec().work_dir);
        let bounded = |accel| {
            let host = Host { accel, tcg_cache_mib: Some(64), vhost_net: false };
            let args = qemu_args(&spec(), host, &paths, Start::Fresh);
            args.into_iter().map(|a| a.into_string().unwrap()).collect::<Vec<_>>()
        };
        assert!(has(&bounded(Accel::Tcg), &["-accel", "tcg,tb-size=64"]));
        assert!(has(&bounded(Accel::Kvm), &["-accel", "kvm"]));
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let args = argv(&spec(), Accel::Kvm, Start::Fresh);
        assert!(has(&args, &["-accel", "kvm", "-cpu", "host"]), "{args:?}");
        assert!(!args.iter().any(|a| a == "tcg"));
    }

    #[test]
    fn attaches_region_doorbell_and_network() {
        let spec = VmSpec {
            region: Some(RegionSpec { path: "/dev/shm/nexus/fn-1.region".into(), size: 16 << 20 }),
            doorbell: true,
            network: Some(Network::User),
            ..spec()
        };
        let args = argv(&spec, Accel::Tcg, Start::Fresh);
        for words in [
            &[
                "-object",
                "memory-backend-file,id=nexus-region,share=on,mem-path=/dev/shm/nexus/fn-1.region,size=16777216",
                "-device",
                "ivshmem-plain,memdev=nexus-region,master=on",
            ][..],
            &[
                "-device",
                "virtio-serial-pci",
                "-chardev",
                "socket,id=nexus-doorbell,path=/run/vm/fn-1/doorbell.sock,server=on,wait=off",
                "-device",
                "virtserialport,chardev=nexus-doorbell,name=org.nexus.doorbell",
            ],
            &["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0"],
        ] {
            assert!(has(&args, words), "{words:?} missing from {args:?}");
        }
    }

    #[test]
    fn a_tap_nic_uses_vhost_under_kvm_only_and_needs_no_region_or_doorbell() {
        let tap = Network::Tap { ifname: "nx-tap0".into(), mac: "52:54:00:00:00:05".into() };
        let spec = VmSpec { network: Some(tap), ..spec() };
        let device = ["-device", "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:05"];
        let tcg = argv(&spec, Accel::Tcg, Start::Fresh);
        let plain = "tap,id=net0,ifname=nx-tap0,script=no,downscript=no";
        assert!(has(&tcg, &["-netdev", plain]) && has(&tcg, &device), "{tcg:?}");
        let kvm = argv(&spec, Accel::Kvm, Start::Fresh);
        assert!(has(&kvm, &["-netdev", &format!("{plain},vhost=on")]), "{kvm:?}");
        let no_vhost = Host { accel: Accel::Kvm, tcg_cache_mib: None, vhost_net: false };
        let kvm = qemu_args(&spec, no_vhost, &WorkPaths::new(&spec.work_dir), Start::Fresh);
        assert!(kvm.iter().any(|a| a == plain), "{kvm:?}");
        for absent in ["ivshmem", "virtio-serial", "nexus-doorbell"] {
            assert!(!tcg.iter().any(|a| a.contains(absent)), "{absent} in {tcg:?}");
        }
    }

    #[test]
    fn a_restore_waits_for_its_stream_and_writable_disks_stay_writable() {
        let spec = VmSpec {
            disks: vec![Disk { path: "/data/a,b.img".into(), read_only: false }],
            ..spec()
        };
        let args = argv(&spec, Accel::Tcg, Start::Incoming);
        assert!(args.ends_with(&["-S".into(), "-incoming".into(), "defer".into()]), "{args:?}");
        assert!(has(&args, &["-drive", "file=/data/a,,b.img,if=none,id=disk0,format=raw"]));
    }
}
