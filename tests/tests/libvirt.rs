//! Function VMs as libvirt domains, against a real libvirtd (started by the harness if absent)
//! running QEMU under TCG (KVM where it can run the guest), each lifecycle driven with the
//! `virsh` binary as an operator would and checked from the backend's side (`fn ls`,
//! /metrics, an invocation).
//!
//! Operators' own domains go through libvirt's hook script, installed with `nexus libvirt
//! install-hook` (libvirtd is restarted to see it, and again once it is removed).
//!
//! Needs libvirt-daemon-system and libvirt-clients (`cargo xtask setup`), root, and the nexus
//! guest image (`$NEXUS_IMAGES` or `~/.cache/nexus/images`). The tests take one libvirtd, so
//! they run one at a time; every domain they make is removed, also when they fail.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nexus_backend::api::COLD_START;
use nexus_backend::client::exchange;
use nexus_plugin::libvirt::Libvirt;
use nexus_plugin::{wait_for_serial, Disk, RegionSpec, Snapshot, Vm, VmSpec, VmState};
use nexus_tests::libvirtd::{domains, ensure_libvirtd, restart_libvirtd, virsh, Domains};
use nexus_tests::{nexus_binary, Backend};
use serde_json::{json, Value};

/// What the nexus image's init prints when the guest is up.
const MARKER: &str = "nexus-init: starting agent";
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// How long the backend may take to follow a virsh command (events, then its 1 s reaper).
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(20);

fn images() -> PathBuf {
    let dir = std::env::var_os("NEXUS_IMAGES").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/nexus/images")
    });
    assert!(
        dir.join("nexus/rootfs.ext4").is_file(),
        "no nexus guest image in {}: run `cargo xtask guest-image` (or set NEXUS_IMAGES)",
        dir.display()
    );
    dir
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// One test at a time: they share libvirtd, and each boots VMs under TCG.
fn serialize() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    let guard = ONE.lock().unwrap_or_else(PoisonError::into_inner);
    ensure_libvirtd().unwrap();
    guard
}

/// Polls `check` until it holds or `timeout` passes; panics with `what` and the last value.
fn wait_until<T: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> (bool, T),
) {
    let deadline = Instant::now() + timeout;
    loop {
        let (done, seen) = check();
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "{what} within {timeout:?}; last seen {seen:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_adapter_runs_a_domain_that_virsh_sees_and_follows_what_virsh_does() {
    let _one = serialize();
    let _cleanup = Domains("lvtest-".into());
    let image = images().join("nexus");
    let dir = tempfile::tempdir().unwrap();
    let shm = tempfile::Builder::new().prefix("nexus-lvtest").tempdir_in("/dev/shm").unwrap();
    let region = shm.path().join("r.region");
    std::fs::write(&region, vec![7u8; 1 << 20]).unwrap();
    let spec = |name: &str| VmSpec {
        initrd: Some(image.join("initrd.img")),
        cmdline: "console=ttyS0 nexus.function=lvtest nexus.handler=/none.py:handler".into(),
        disks: vec![Disk { path: image.join("rootfs.ext4"), read_only: true }],
        region: Some(RegionSpec { path: region.clone(), size: 1 << 20 }),
        doorbell: true,
        ..VmSpec::new(name, image.join("vmlinuz"), dir.path().join(name))
    };
    let libvirt = Libvirt::new().unwrap();
    let mut vm = libvirt.create_vm(&spec("lvtest-1")).unwrap();
    let _doorbell = vm.doorbell().unwrap();
    assert_eq!(vm.info().state, VmState::Created);
    assert_eq!(virsh(&["domstate", "lvtest-1"]).unwrap().trim(), "paused");
    let linked = Path::new("/dev/shm/nexus-lvtest-1.region");
    assert!(linked.exists(), "the region is named in /dev/shm for libvirt");

    let started = Instant::now();
    vm.boot().unwrap();
    wait_for_serial(&vm, MARKER, BOOT_TIMEOUT).unwrap();
    println!("timing: libvirt boot to marker {:.2} s", started.elapsed().as_secs_f64());
    assert!(vm.info().pid.is_some());
    assert!(virsh(&["list", "--name"]).unwrap().lines().any(|l| l.trim() == "lvtest-1"));

    // An operator's suspend and resume show in the VM's state (lifecycle events).
    virsh(&["suspend", "lvtest-1"]).unwrap();
    wait_until("suspend seen", FOLLOW_TIMEOUT, || {
        let state = vm.info().state;
        (state == VmState::Paused, state)
    });
    virsh(&["resume", "lvtest-1"]).unwrap();
    wait_until("resume seen", FOLLOW_TIMEOUT, || {
        let state = vm.info().state;
        (state == VmState::Running, state)
    });

    // A snapshot leaves the domain paused; restored after the VM stops, it comes back under
    // its saved name with the new VM's host paths.
    vm.pause().unwrap();
    let started = Instant::now();
    let snapshot = vm.snapshot(&dir.path().join("snapshot")).unwrap();
    println!("timing: libvirt snapshot {:.2} s", started.elapsed().as_secs_f64());
    assert_eq!(Snapshot::open(&snapshot.dir).unwrap().vmm, "libvirt");
    assert_eq!(vm.info().state, VmState::Paused);
    assert_eq!(virsh(&["domstate", "lvtest-1"]).unwrap().trim(), "paused");
    vm.stop().unwrap();
    assert_eq!(vm.info().state, VmState::Stopped);
    assert!(domains("lvtest-1").unwrap().is_empty(), "stop undefines the domain");
    assert!(!linked.exists(), "stop unlinks the region's /dev/shm name");

    let started = Instant::now();
    let mut restored = libvirt.restore_vm(&spec("lvtest-2"), &snapshot).unwrap();
    println!("timing: libvirt restore {:.2} s", started.elapsed().as_secs_f64());
    assert_eq!(restored.domain_name(), "lvtest-1", "libvirt keeps the saved name");
    assert_eq!(restored.info().state, VmState::Paused);
    restored.resume().unwrap();
    assert_eq!(virsh(&["domstate", "lvtest-1"]).unwrap().trim(), "running");

    // An operator's destroy ends the VM for Nexus too.
    virsh(&["destroy", "lvtest-1"]).unwrap();
    wait_until("destroy seen", FOLLOW_TIMEOUT, || {
        let state = restored.info().state;
        (state == VmState::Exited, state)
    });
    restored.stop().unwrap();
    assert!(domains("lvtest-").unwrap().is_empty());
}

fn settings(images: &Path) -> String {
    format!(
        "storage: {{ url: \"file://{{dir}}/objects\" }}\n\
         default_policy: {{ grants: [{{ bucket: out, access: [read, write] }}] }}\n\
         vm: {{ images: {}, state_dir: \"{{dir}}/vms\", boot_timeout_secs: 240, vmm: libvirt, \
         keep_alive_secs: 3600 }}\n",
        images.display()
    )
}

/// Invokes `name` with `event`; returns the result and whether it was a cold start.
fn invoke(backend: &Backend, name: &str, event: &Value) -> (Value, bool) {
    let answer = exchange(
        &backend.socket,
        "POST",
        &format!("/v1/functions/{name}/invoke"),
        event.to_string().as_bytes(),
    )
    .unwrap_or_else(|e| panic!("invoke {name}: {e}\n{}", backend.log_tail()));
    (serde_json::from_str(&answer.body).unwrap(), answer.header(COLD_START).is_some())
}

/// The states of `name`'s VMs as `nexus fn ls` shows them.
fn vm_states(backend: &Backend, name: &str) -> Vec<String> {
    let functions = backend.api("GET", "/v1/functions", None).unwrap();
    let function = functions.as_array().unwrap().iter().find(|f| f["spec"]["name"] == name);
    let vms = function.map(|f| f["vms"].as_array().unwrap().clone()).unwrap_or_default();
    vms.iter().map(|vm| vm["state"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn a_libvirt_function_serves_and_follows_virsh() {
    let _one = serialize();
    let _cleanup = Domains("lvfn-".into());
    let mut backend = Backend::start(&nexus_binary(), &settings(&images()), &["out"]).unwrap();
    let code = workspace().join("tests/fixtures");
    let spec = json!({ "name": "lvfn", "code": code, "handler": "echo.py:handler" });
    backend.api("POST", "/v1/functions", Some(&spec)).unwrap();

    let (result, cold) = invoke(&backend, "lvfn", &json!({ "n": 1 }));
    assert!(cold, "the first invocation starts the VM");
    assert_eq!(result["echo"]["n"], 1, "{result}");
    let listed = virsh(&["list", "--name"]).unwrap();
    assert!(listed.lines().any(|l| l.trim() == "lvfn-1"), "virsh list shows the VM: {listed}");
    assert_eq!(vm_states(&backend, "lvfn"), ["running"]);

    // virsh suspend / resume show in fn ls.
    virsh(&["suspend", "lvfn-1"]).unwrap();
    wait_until("fn ls shows paused", FOLLOW_TIMEOUT, || {
        let states = vm_states(&backend, "lvfn");
        (states == ["paused"], states)
    });
    virsh(&["resume", "lvfn-1"]).unwrap();
    wait_until("fn ls shows running", FOLLOW_TIMEOUT, || {
        let states = vm_states(&backend, "lvfn");
        (states == ["running"], states)
    });
    let (result, cold) = invoke(&backend, "lvfn", &json!({ "n": 2 }));
    assert!(!cold, "the resumed VM serves warm");
    assert_eq!(result["echo"]["n"], 2);

    // virsh destroy: the function goes cold, its region released; the next invocation starts
    // a new VM.
    virsh(&["destroy", "lvfn-1"]).unwrap();
    wait_until("the destroyed VM dropped", FOLLOW_TIMEOUT, || {
        let states = vm_states(&backend, "lvfn");
        (states.is_empty(), states)
    });
    assert_eq!(backend.metric("nexus_regions", &[]).unwrap(), 0.0, "its region is released");
    assert!(domains("lvfn-1").unwrap().is_empty(), "the destroyed domain is undefined");
    let (result, cold) = invoke(&backend, "lvfn", &json!({ "n": 3 }));
    assert!(cold, "a new VM after the destroy");
    assert_eq!(result["echo"]["n"], 3);
    assert_eq!(domains("lvfn-").unwrap(), ["lvfn-2"]);

    // A snapshot (virDomainSave, then a restore in place) leaves the VM serving; after a stop
    // the next cold start restores it, under the saved domain's name.
    backend.api("POST", "/v1/functions/lvfn/snapshot", None).unwrap();
    let (result, cold) = invoke(&backend, "lvfn", &json!({ "n": 31 }));
    assert!(!cold && result["echo"]["n"] == 31, "the snapshotted VM serves on: {result}");
    backend.api("POST", "/v1/functions/lvfn/stop", None).unwrap();
    assert!(domains("lvfn-").unwrap().is_empty(), "fn stop removes the domain");
    let (result, cold) = invoke(&backend, "lvfn", &json!({ "n": 32 }));
    assert!(cold, "a cold start after the stop");
    assert_eq!(result["echo"]["n"], 32, "the restored VM serves at its new epoch");
    assert_eq!(domains("lvfn-").unwrap(), ["lvfn-2"], "restored under the saved name");

    // Nothing left behind by fn rm, nor by a backend that stops.
    backend.api("DELETE", "/v1/functions/lvfn", None).unwrap();
    assert!(domains("lvfn-").unwrap().is_empty(), "fn rm removes the domains");
    let _ = invoke_cold_then_stop(&mut backend, &spec);
    assert!(domains("lvfn-").unwrap().is_empty(), "a stopped backend leaves no domain");
    assert!(no_region_names(), "no region name left in /dev/shm");

    // A backend killed outright leaves its VM running (libvirtd's child, not the backend's);
    // restarted, it removes that domain before it starts its first libvirt VM.
    backend.restart().unwrap();
    backend.api("POST", "/v1/functions", Some(&spec)).unwrap();
    invoke(&backend, "lvfn", &json!({ "n": 5 }));
    let uuid = virsh(&["domuuid", "lvfn-1"]).unwrap();
    backend.kill();
    assert_eq!(domains("lvfn-").unwrap(), ["lvfn-1"], "the killed backend's VM runs on");
    backend.restart().unwrap();
    backend.api("POST", "/v1/functions", Some(&spec)).unwrap();
    let (result, cold) = invoke(&backend, "lvfn", &json!({ "n": 6 }));
    assert!(cold && result["echo"]["n"] == 6, "{result}");
    assert_eq!(domains("lvfn-").unwrap(), ["lvfn-1"]);
    assert_ne!(virsh(&["domuuid", "lvfn-1"]).unwrap(), uuid, "a new domain, the old one removed");
    assert!(backend.stop());
    assert!(domains("lvfn-").unwrap().is_empty() && no_region_names());
}

/// Deploys `spec` again, starts a VM, and stops the backend.
fn invoke_cold_then_stop(backend: &mut Backend, spec: &Value) -> Value {
    backend.api("POST", "/v1/functions", Some(spec)).unwrap();
    let (result, _) = invoke(backend, "lvfn", &json!({ "n": 4 }));
    assert_eq!(domains("lvfn-").unwrap().len(), 1);
    assert!(backend.stop(), "the backend stops cleanly");
    result
}

fn no_region_names() -> bool {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().starts_with("nexus-lvfn-"))
}

/// The epochs of the backend's regions.
fn epochs(backend: &Backend) -> Vec<u64> {
    let regions = backend.api("GET", "/v1/regions", None).unwrap();
    regions.as_array().unwrap().iter().map(|r| r["epoch"].as_u64().unwrap()).collect()
}

/// The names in /dev/shm that start with `prefix`.
fn shm_names(prefix: &str) -> Vec<String> {
    let names = std::fs::read_dir("/dev/shm").unwrap().flatten();
    let names = names.map(|e| e.file_name().to_string_lossy().into_owned());
    names.filter(|n| n.starts_with(prefix)).collect()
}

#[test]
fn virsh_save_then_restore_serves_the_function_vm_again_at_a_new_epoch() {
    let _one = serialize();
    let _cleanup = Domains("lvsave-".into());
    let saved = tempfile::tempdir().unwrap();
    let backend = Backend::start(&nexus_binary(), &settings(&images()), &["out"]).unwrap();
    let code = workspace().join("tests/fixtures");
    let spec = json!({ "name": "lvsave", "code": code, "handler": "echo.py:handler" });
    backend.api("POST", "/v1/functions", Some(&spec)).unwrap();
    let (result, cold) = invoke(&backend, "lvsave", &json!({ "n": 1 }));
    assert!(cold && result["echo"]["n"] == 1, "{result}");
    let [epoch] = epochs(&backend)[..] else { panic!("one region") };

    // virsh save ends the QEMU process: the VM leaves the pool, its region stays.
    let image = saved.path().join("lvsave-1.save");
    let started = Instant::now();
    virsh(&["save", "lvsave-1", image.to_str().unwrap()]).unwrap();
    println!("timing: virsh save {:.2} s", started.elapsed().as_secs_f64());
    wait_until("fn ls shows the VM saved", FOLLOW_TIMEOUT, || {
        let states = vm_states(&backend, "lvsave");
        (states == ["saved"], states)
    });
    assert_eq!(epochs(&backend), [epoch], "the saved VM keeps its region");

    // virsh restore brings it back with the region as saved: served afresh, it answers warm.
    let started = Instant::now();
    virsh(&["restore", image.to_str().unwrap()]).unwrap();
    wait_until("fn ls shows the VM running again", FOLLOW_TIMEOUT, || {
        let states = vm_states(&backend, "lvsave");
        (states == ["running"], states)
    });
    let (result, cold) = invoke(&backend, "lvsave", &json!({ "n": 2 }));
    println!("timing: virsh restore to the next answer {:.2} s", started.elapsed().as_secs_f64());
    assert!(!cold, "the restored VM serves, no new one started");
    assert_eq!(result["echo"]["n"], 2, "{result}");
    let [new_epoch] = epochs(&backend)[..] else { panic!("one region") };
    assert!(new_epoch > epoch, "a new epoch: {new_epoch} after {epoch}");
    assert_eq!(domains("lvsave-").unwrap(), ["lvsave-1"]);

    backend.api("DELETE", "/v1/functions/lvsave", None).unwrap();
    assert!(domains("lvsave-").unwrap().is_empty(), "fn rm removes the restored domain");
    assert!(epochs(&backend).is_empty() && shm_names("nexus-lvsave-").is_empty());
}

/// libvirt's hook script for the backend at `socket`, installed and seen by libvirtd until
/// dropped.
struct Hook;

impl Hook {
    fn install(socket: &Path) -> Hook {
        let output = std::process::Command::new(nexus_binary())
            .args(["--socket", socket.to_str().unwrap(), "libvirt", "install-hook"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        restart_libvirtd().unwrap();
        Hook
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        let _ =
            std::process::Command::new(nexus_binary()).args(["libvirt", "remove-hook"]).status();
        let _ = restart_libvirtd();
    }
}

/// An operator's domain `name` serving `function` with the nexus image and `code_disk`; its
/// region `shmem` of `size` bytes. QEMU runs as root (the images are root's); the hook hands
/// the region to that user.
fn operator_xml(
    name: &str,
    function: &str,
    shmem: &str,
    size: u64,
    code_disk: &str,
    state: &Path,
    log: &Path,
) -> String {
    let image = images().join("nexus");
    let image = image.display();
    let doorbell = state.join("libvirt").join(format!("{name}.sock"));
    format!(
        "<domain type='qemu'><name>{name}</name>
  <metadata><nexus:vm xmlns:nexus='https://nexus.dev/libvirt/1' function='{function}'/></metadata>
  <memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <cpu mode='maximum'><feature policy='disable' name='erms'/><feature policy='disable' name='fsrm'/></cpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>{image}/vmlinuz</kernel><initrd>{image}/initrd.img</initrd>
    <cmdline>console=ttyS0 root=/dev/vda ro panic=-1 quiet nexus.function={function} nexus.handler=/var/task/echo.py:handler nexus.timeout=60</cmdline></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'><source path='{log}'/><target port='0'/></serial>
    <memballoon model='none'/>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{image}/rootfs.ext4'/><target dev='vda' bus='virtio'/><readonly/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{code_disk}'/><target dev='vdb' bus='virtio'/><readonly/></disk>
    <shmem name='{shmem}' role='master'><model type='ivshmem-plain'/><size unit='b'>{size}</size></shmem>
    <channel type='unix'><source mode='connect' path='{doorbell}'><reconnect enabled='yes' timeout='1'/></source><target type='virtio' name='org.nexus.doorbell'/></channel>
  </devices></domain>",
        log = log.display(),
        doorbell = doorbell.display(),
    )
}

/// Defines the domain of `xml` and starts it with virsh; virsh's error if it fails.
fn define_and_start(dir: &Path, name: &str, xml: &str) -> Result<(), String> {
    let file = dir.join(format!("{name}.xml"));
    std::fs::write(&file, xml).unwrap();
    virsh(&["define", file.to_str().unwrap()]).unwrap();
    virsh(&["start", name]).map(|_| ()).map_err(|e| e.to_string())
}

#[test]
fn an_operators_domain_serves_its_function_and_wrong_domains_are_refused_with_the_reason() {
    let _one = serialize();
    let _cleanup = Domains("lvop-".into());
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(&nexus_binary(), &settings(&images()), &["out"]).unwrap();
    let _hook = Hook::install(&backend.socket);
    let code = workspace().join("tests/fixtures");
    let spec = json!({ "name": "lvop", "code": code, "handler": "echo.py:handler" });
    let deployed = backend.api("POST", "/v1/functions", Some(&spec)).unwrap();
    let code_disk = deployed["code_disk"].as_str().unwrap().to_owned();
    let state = backend.dir.join("vms");
    // The harness's region.size.
    let size = 32 << 20;
    let xml = |name: &str, function: &str, shmem: &str, size: u64| {
        operator_xml(
            name,
            function,
            shmem,
            size,
            &code_disk,
            &state,
            &dir.path().join(format!("{name}.log")),
        )
    };

    // A wrong domain fails virsh start with the reason, in libvirt's error.
    for (name, function, shmem, size, reason) in [
        ("lvop-nofn", "nosuch", "nexus-lvop-nofn.region", size, "names function nosuch, which is not deployed"),
        ("lvop-thief", "lvop", "nexus-lvop-web.region", size, "<shmem name='nexus-lvop-web.region'> is not its region: a domain is given only its own, named nexus-lvop-thief.region"),
        ("lvop-small", "lvop", "nexus-lvop-small.region", 16 << 20, "its <shmem> is 16777216 bytes; this backend's regions are 33554432 bytes"),
    ] {
        let error = define_and_start(dir.path(), name, &xml(name, function, shmem, size)).unwrap_err();
        assert!(error.contains("Hook script execution failed") && error.contains(reason), "{name}: {error}");
        assert_eq!(virsh(&["domstate", name]).unwrap().trim(), "shut off", "{name} did not start");
    }
    assert!(
        epochs(&backend).is_empty() && shm_names("nexus-lvop-").is_empty(),
        "refused: no region"
    );

    // The operator's domain: its region is served under the function's policy, and once its
    // runtime is ready the function's invocations reach it.
    let started = Instant::now();
    define_and_start(
        dir.path(),
        "lvop-web",
        &xml("lvop-web", "lvop", "nexus-lvop-web.region", size),
    )
    .unwrap();
    assert_eq!(shm_names("nexus-lvop-"), ["nexus-lvop-web.region"]);
    let operators = || -> Vec<String> {
        let functions = backend.api("GET", "/v1/functions", None).unwrap();
        let vms = functions[0]["vms"].as_array().unwrap().clone();
        vms.iter()
            .filter_map(|vm| Some(format!("{} {}", vm["operator"].as_str()?, vm["state"])))
            .collect()
    };
    wait_until("the operator's VM joins the pool", BOOT_TIMEOUT, || {
        let vms = operators();
        (vms == ["lvop-web \"running\""], vms)
    });
    println!("timing: operator's domain start to served {:.2} s", started.elapsed().as_secs_f64());
    let (result, cold) = invoke(&backend, "lvop", &json!({ "n": 7 }));
    assert!(!cold, "the operator's VM served it, none was started");
    assert_eq!(result["echo"]["n"], 7, "{result}");
    assert_eq!(domains("lvop-").unwrap().len(), 4, "no function VM of Nexus's was defined");

    // A save stops the domain: the hook's release takes its region away, and the hook refuses
    // the restore (a region does not survive the save); started afresh, it serves again.
    let image = dir.path().join("lvop-web.save");
    virsh(&["save", "lvop-web", image.to_str().unwrap()]).unwrap();
    assert!(operators().is_empty(), "released by the time virsh returns");
    assert!(epochs(&backend).is_empty() && shm_names("nexus-lvop-").is_empty());
    let error = virsh(&["restore", image.to_str().unwrap()]).unwrap_err().to_string();
    assert!(error.contains("whose region does not survive a save: start it afresh"), "{error}");
    virsh(&["start", "lvop-web"]).unwrap();
    wait_until("the restarted operator's VM joins the pool", BOOT_TIMEOUT, || {
        let vms = operators();
        (vms == ["lvop-web \"running\""], vms)
    });
    let (result, cold) = invoke(&backend, "lvop", &json!({ "n": 8 }));
    assert!(!cold && result["echo"]["n"] == 8, "{result}");

    // The domain stops: the hook's release takes its region away.
    virsh(&["destroy", "lvop-web"]).unwrap();
    assert!(operators().is_empty(), "released by the time virsh returns");
    assert!(epochs(&backend).is_empty() && shm_names("nexus-lvop-").is_empty());
    backend.api("DELETE", "/v1/functions/lvop", None).unwrap();
    assert!(epochs(&backend).is_empty() && shm_names("nexus-lvop").is_empty(), "nothing left");
    let running = virsh(&["list", "--name"]).unwrap();
    assert!(!running.contains("lvop-"), "no domain runs: {running}");
}
