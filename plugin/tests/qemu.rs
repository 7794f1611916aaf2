//! The QEMU adapter against real guests: the nexus guest image booted under TCG here (KVM where
//! the host has hardware virtualization).
//!
//! Needs `qemu-system-x86_64` (`apt-get install -y qemu-system-x86`) and the nexus image in
//! `~/.cache/nexus/images/nexus/` (or `$NEXUS_IMAGES`); a missing image is built first with
//! `cargo xtask guest-image --flavour nexus` (minutes, once), see [`support::image`]. The tests
//! run one at a time and boot four VMs in all; each prints its timings (`--nocapture` shows
//! them).

mod support;

use std::fs;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nexus_plugin::qemu::{Qemu, QemuVm};
use nexus_plugin::{
    detect_accel, wait_for_serial, Accel, Network, Snapshot, Vm, VmSpec, VmState, Vmm, VmmError,
};
use serde_json::{json, Value};
use support::{image, Region};
use tempfile::TempDir;

/// What the nexus image's init prints when the guest is up.
const MARKER: &str = "nexus-init: starting agent";
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn boots_the_nexus_image_with_a_region_then_pauses_resumes_and_stops() {
    let _one_vm_at_a_time = serialize();
    let image = image();
    let dir = TempDir::new().unwrap();
    let region = Region::new(1);
    let qemu = Qemu::new().unwrap();
    let mut vm = qemu.create_vm(&image.spec("boot", dir.path(), Some(&region))).unwrap();

    let info = vm.info();
    assert_eq!((info.vmm, info.state), ("qemu", VmState::Created));
    assert_eq!(info.accel, detect_accel());
    if !host_has_hardware_virtualization() && std::env::var_os("NEXUS_ACCEL").is_none() {
        assert_eq!(info.accel, Accel::Tcg, "no vmx/svm on this host");
    }
    let pid = info.pid.unwrap();
    assert!(alive(pid));
    assert_eq!(status(&mut vm), "prelaunch", "created VMs run no guest code");

    let started = Instant::now();
    vm.boot().unwrap();
    wait_for_serial(&vm, MARKER, BOOT_TIMEOUT).unwrap();
    println!("timing: boot to marker {:.2} s ({})", secs(started), info.accel);
    assert!(alive(pid));

    vm.pause().unwrap();
    assert_eq!((vm.info().state, status(&mut vm)), (VmState::Paused, "paused".into()));
    vm.resume().unwrap();
    assert_eq!((vm.info().state, status(&mut vm)), (VmState::Running, "running".into()));

    let started = Instant::now();
    vm.stop().unwrap();
    println!("timing: stop {:.2} s", secs(started));
    assert_eq!((vm.info().state, vm.info().pid), (VmState::Stopped, None));
    assert!(!alive(pid), "QEMU {pid} is still there after stop");
    vm.stop().unwrap();
    assert!(!dir.path().join("qmp.sock").exists());
    region.assert_holds(1);
}

#[test]
fn a_guest_that_cannot_boot_fails_with_the_log_tail() {
    let _one_vm_at_a_time = serialize();
    let image = image();
    let qemu = Qemu::new().unwrap();

    // Not a kernel: QEMU itself refuses to start, and says why.
    let dir = TempDir::new().unwrap();
    let text = dir.path().join("not-a-kernel");
    fs::write(&text, "just text\n").unwrap();
    let spec = VmSpec { kernel: text, ..image.spec("bad-kernel", dir.path(), None) };
    let error = qemu.create(&spec).unwrap_err();
    assert!(matches!(error, VmmError::Spawn { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("QEMU exited (exit status: 1) during start-up"), "{message}");
    assert!(message.contains("--- VMM stderr (last lines) ---\nqemu: "), "{message}");

    // A kernel that panics (no root disk) and, with -no-reboot, takes QEMU down with it.
    let dir = TempDir::new().unwrap();
    let spec = VmSpec {
        initrd: None,
        disks: Vec::new(),
        cmdline: "console=ttyS0 root=/dev/nonexistent panic=-1".into(),
        ..image.spec("panics", dir.path(), None)
    };
    let mut vm = qemu.create(&spec).unwrap();
    let started = Instant::now();
    vm.boot().unwrap();
    let error = wait_for_serial(&*vm, MARKER, BOOT_TIMEOUT).unwrap_err();
    println!("timing: boot to kernel panic {:.2} s", secs(started));
    let message = error.to_string();
    println!("error of a panicking guest: {message}");
    assert!(matches!(error, VmmError::GuestFailed { .. }), "{message}");
    assert!(message.contains("its VMM exited before the console printed"), "{message}");
    assert!(message.contains("Kernel panic"), "{message}");
    assert_eq!(vm.info().state, VmState::Exited);
    let error = vm.pause().unwrap_err();
    assert_eq!(error.to_string(), "Cannot pause VM panics while it is exited");
    vm.stop().unwrap();
}

#[test]
fn attaches_a_doorbell_port_and_a_user_mode_nic() {
    let _one_vm_at_a_time = serialize();
    let image = image();
    let qemu = Qemu::new().unwrap();
    let dir = TempDir::new().unwrap();
    let spec = VmSpec {
        doorbell: true,
        network: Some(Network::User),
        ..image.spec("devices", dir.path(), None)
    };
    // Not booted: the devices are there from the start.
    let mut vm = qemu.create_vm(&spec).unwrap();
    vm.doorbell().expect("QEMU listens on the doorbell socket");
    let tree = vm.qmp("human-monitor-command", Some(json!({ "command-line": "info qtree" })));
    let tree = tree.unwrap();
    let tree = tree.as_str().unwrap();
    for device in ["virtserialport", "name = \"org.nexus.doorbell\"", "virtio-net-pci"] {
        assert!(tree.contains(device), "{device} missing from the device tree");
    }

    // A QEMU that cannot answer quit is killed after the quit timeout (5 s).
    let pid = vm.info().pid.unwrap();
    // SAFETY: SIGSTOP to a child process this test owns.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) }, 0);
    let started = Instant::now();
    vm.stop().unwrap();
    println!("timing: stop of a hung QEMU {:.2} s", secs(started));
    assert!(!alive(pid));
}

#[test]
fn a_snapshot_restores_into_a_new_process_that_runs() {
    let _one_vm_at_a_time = serialize();
    let image = image();
    let qemu = Qemu::new().unwrap();
    let region = Region::new(2);
    let first = TempDir::new().unwrap();
    let spec = image.spec("snap", first.path(), Some(&region));
    let mut vm = qemu.create_vm(&spec).unwrap();
    let started = Instant::now();
    vm.boot().unwrap();
    wait_for_serial(&vm, MARKER, BOOT_TIMEOUT).unwrap();
    println!("timing: boot to marker {:.2} s", secs(started));

    let saved = TempDir::new().unwrap();
    let error = vm.snapshot(saved.path()).unwrap_err();
    assert_eq!(error.to_string(), "Cannot snapshot VM snap while it is running");
    vm.pause().unwrap();
    let started = Instant::now();
    let snapshot = vm.snapshot(saved.path()).unwrap();
    println!("timing: snapshot {:.2} s", secs(started));
    assert_eq!(status(&mut vm), "postmigrate", "the VM stays paused");
    assert_eq!(vm.info().state, VmState::Paused);
    vm.resume().unwrap();
    assert_eq!(status(&mut vm), "running", "the snapshotted VM can go on");
    vm.stop().unwrap();

    let memory = fs::metadata(saved.path().join("memory")).unwrap().len();
    println!("snapshot: memory stream {} MB", memory >> 20);
    assert!(memory > 10 << 20, "memory stream of {memory} bytes");
    assert_eq!(Snapshot::open(saved.path()).unwrap(), snapshot);

    // A cut stream: QEMU gives up, and its reason comes back.
    let second = TempDir::new().unwrap();
    let spec = VmSpec { work_dir: second.path().to_owned(), ..spec };
    let cut = TempDir::new().unwrap();
    fs::copy(snapshot.manifest(), cut.path().join(Snapshot::MANIFEST)).unwrap();
    let stream = fs::read(saved.path().join("memory")).unwrap();
    fs::write(cut.path().join("memory"), &stream[..1 << 20]).unwrap();
    let started = Instant::now();
    let error = qemu.restore_vm(&spec, &Snapshot::open(cut.path()).unwrap()).unwrap_err();
    println!("timing: failed restore {:.2} s", secs(started));
    let message = error.to_string();
    println!("error of a cut stream: {message}");
    assert!(message.contains("loading snapshot"), "{message}");
    assert!(message.contains("load of migration failed"), "{message}");

    // Whatever is in the region now is replaced by its contents at snapshot time.
    region.fill(3);
    let started = Instant::now();
    let mut vm = qemu.restore_vm(&spec, &snapshot).unwrap();
    println!("timing: restore {:.2} s", secs(started));
    assert_eq!((vm.info().state, status(&mut vm)), (VmState::Paused, "paused".into()));
    region.assert_holds(2);

    let started = Instant::now();
    vm.resume().unwrap();
    thread::sleep(Duration::from_secs(1));
    assert_eq!((vm.info().state, status(&mut vm)), (VmState::Running, "running".into()));
    println!("timing: resume and 1 s of running {:.2} s", secs(started));
    let pid = vm.info().pid.unwrap();
    vm.stop().unwrap();
    assert!(!alive(pid));

    // The same snapshot restored into two VMs at once, each with its own region.
    let started = Instant::now();
    let restored: Vec<(QemuVm, Region, TempDir)> = thread::scope(|scope| {
        let restores: Vec<_> = (0..2)
            .map(|i| {
                let (qemu, snapshot, image) = (&qemu, &snapshot, image);
                scope.spawn(move || {
                    let (region, work) = (Region::new(10 + i), TempDir::new().unwrap());
                    let spec = image.spec("snap", work.path(), Some(&region));
                    (qemu.restore_vm(&spec, snapshot).unwrap(), region, work)
                })
            })
            .collect();
        restores.into_iter().map(|r| r.join().unwrap()).collect()
    });
    println!("timing: two restores at once {:.2} s", secs(started));
    let pids: Vec<u32> = restored.iter().map(|(vm, _, _)| vm.info().pid.unwrap()).collect();
    assert_ne!(pids[0], pids[1]);
    for (mut vm, region, _work) in restored {
        region.assert_holds(2);
        vm.resume().unwrap();
        assert_eq!(status(&mut vm), "running");
        vm.stop().unwrap();
    }
    assert!(pids.iter().all(|pid| !alive(*pid)));
}

/// QEMU's own view of the VM (`query-status`).
fn status(vm: &mut QemuVm) -> String {
    let status = vm.qmp("query-status", None).unwrap();
    status.get("status").and_then(Value::as_str).unwrap().to_owned()
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

fn host_has_hardware_virtualization() -> bool {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo.split_whitespace().any(|word| word == "vmx" || word == "svm")
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// One VM test at a time: TCG guests on two cores slow each other down.
fn serialize() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}
