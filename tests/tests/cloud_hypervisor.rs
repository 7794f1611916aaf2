//! The Cloud Hypervisor adapter against the real `cloud-hypervisor` (built with `ivshmem`;
//! `$NEXUS_CLOUD_HYPERVISOR`, else `PATH`) and the real backend, with the freestanding test
//! guest (`tests/ch-guest/`): create → boot → a call → pause → snapshot → restore into two VMs,
//! each on its own region, at once → a call at the new epoch in each → a prefetched object read
//! in place. A host without the binary or without a KVM that can create VMs skips, saying why.
//!
//! The test guest has no vsock driver and polls, so the host end of the doorbell is exercised
//! from the host side here; the Linux agent's end runs in
//! `linux_image_under_cloud_hypervisor`, which needs a KVM that runs Linux.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nexus_backend::api::PREFETCH;
use nexus_backend::client::exchange_with;
use nexus_plugin::cloud_hypervisor::{
    check_kvm, find_binary, guest_port_path, ChOptions, ChVm, CloudHypervisor, MemoryRestoreMode,
};
use nexus_plugin::{wait_for_serial, RegionSpec, Vm, VmSpec, VmState};
use nexus_tests::{nexus_binary, test_guest, Backend};
use serde_json::{json, Value};

const BUCKET: &str = "nexus-test";
const KEY: &str = "in/greeting.txt";
const OBJECT: &[u8] = b"hello from the object store, read in place\n";
const REGION: &str = "size: 32MiB, buffer_size: 1MiB";
const REGION_SIZE: u64 = 32 << 20;
const SERIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// The adapter, or `None` (with the reason printed) where CH cannot run here.
fn cloud_hypervisor() -> Option<CloudHypervisor> {
    let Some(binary) = find_binary(None) else {
        println!("skipped: no cloud-hypervisor (set NEXUS_CLOUD_HYPERVISOR or put it on PATH)");
        return None;
    };
    if let Err(why) = check_kvm() {
        println!("skipped: KVM cannot run guests here: {why}");
        return None;
    }
    Some(CloudHypervisor::new(ChOptions { binary: Some(binary), ..ChOptions::default() }).unwrap())
}

/// A backend whose local store holds the test object.
fn backend() -> Backend {
    let settings = format!(
        "storage: {{ url: \"file://{{dir}}/objects\" }}\n\
         default_policy: {{ grants: [{{ bucket: {BUCKET}, access: [read] }}] }}\n"
    );
    let backend = Backend::start_with(&nexus_binary(), REGION, &settings, &[BUCKET]).unwrap();
    let object = backend.dir.join("objects").join(BUCKET).join(KEY);
    std::fs::create_dir_all(object.parent().unwrap()).unwrap();
    std::fs::write(object, OBJECT).unwrap();
    backend
}

/// A 64 MiB test-guest VM on `region`, with a doorbell, working in `work`.
fn spec(name: &str, region: &Path, work: &Path) -> VmSpec {
    VmSpec {
        memory_mib: 64,
        region: Some(RegionSpec { path: region.to_owned(), size: REGION_SIZE }),
        doorbell: true,
        ..VmSpec::new(name, test_guest().unwrap(), work.join(name))
    }
}

/// The region id in a region file's name (`<id>.region`).
fn region_id(path: &Path) -> String {
    path.file_stem().unwrap().to_string_lossy().into_owned()
}

/// The guest's answer to an invocation on `region`: a Get of the test object with a call, the
/// same object read in place if staged, `pings` more calls.
fn invoke(backend: &Backend, region: &Path, prefetch: bool, pings: u32) -> Value {
    let event = json!({ "bucket": BUCKET, "key": KEY, "pings": pings }).to_string();
    let hints = json!([{ "bucket": BUCKET, "key": KEY }]).to_string();
    let headers: Vec<(&str, &str)> = if prefetch { vec![(PREFETCH, &hints)] } else { vec![] };
    let path = format!("/v1/regions/{}/invoke?timeout=60", region_id(region));
    let answer = exchange_with(&backend.socket, "POST", &path, &headers, event.as_bytes())
        .unwrap_or_else(|e| panic!("invoke {path}: {e}\n{}", backend.log_tail()));
    serde_json::from_str(&answer.body).unwrap()
}

/// The guest's FNV-1a 64 of `bytes`, as it prints it.
fn fnv(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:x}")
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

#[test]
fn boots_snapshots_and_restores_one_snapshot_into_two_vms_with_their_own_regions() {
    let Some(ch) = cloud_hypervisor() else { return };
    let backend = backend();
    let work = tempfile::tempdir().unwrap();
    let object = json!({ "status": 0, "bytes": OBJECT.len(), "fnv": fnv(OBJECT), "chunks": 1 });

    // Create → boot → a call: the guest pings at the region's epoch and acknowledges it.
    let region = backend.create_region("ch-first").unwrap();
    let mut first = ch.create_vm(&spec("first", &region, work.path())).unwrap();
    assert_eq!(first.info().state, VmState::Created);
    let _doorbell = first.doorbell().unwrap();
    let started = Instant::now();
    first.boot().unwrap();
    wait_for_serial(&first, "ping ok", SERIAL_TIMEOUT).unwrap();
    println!("timing: create+boot to the first answered call {:.1} ms", ms(started));
    assert_eq!(first.vm_info().unwrap()["state"], "Running");
    assert!(first.counters().unwrap().is_object());
    let answer = invoke(&backend, &region, false, 1);
    assert_eq!(answer["get"], object, "{answer}");
    assert_eq!((answer["staged"].clone(), answer["pings"].clone()), (Value::Null, json!(1)));
    let first_epoch = answer["epoch"].as_u64().unwrap();

    // Pause → snapshot; the original goes away.
    first.pause().unwrap();
    let started = Instant::now();
    let snapshot = first.snapshot(&work.path().join("snapshot")).unwrap();
    println!("timing: snapshot {:.1} ms", ms(started));
    assert_eq!(snapshot.vmm, "cloud-hypervisor");
    let first_pid = first.info().pid.unwrap();
    first.stop().unwrap();
    assert!(!alive(first_pid), "stopped and reaped");

    // Restore into two VMs at once, each with its own region, one per memory restore mode.
    let restored: Vec<(ChVm, PathBuf)> = std::thread::scope(|s| {
        let restores: Vec<_> =
            [("copy", MemoryRestoreMode::Copy), ("on-demand", MemoryRestoreMode::OnDemand)]
                .into_iter()
                .map(|(name, mode)| {
                    let region = backend.create_region(&format!("ch-{name}")).unwrap();
                    let (ch, snapshot, work) = (&ch, &snapshot, work.path());
                    s.spawn(move || {
                        let started = Instant::now();
                        let mut vm =
                            ch.restore_with(&spec(name, &region, work), snapshot, mode).unwrap();
                        assert_eq!(vm.info().state, VmState::Paused);
                        let _ = vm.doorbell().unwrap();
                        vm.resume().unwrap();
                        println!("timing: restore ({mode:?}) to running {:.1} ms", ms(started));
                        (vm, region)
                    })
                })
                .collect();
        restores.into_iter().map(|r| r.join().unwrap()).collect()
    });

    // A call at the new epoch in each, and the prefetched object read in place.
    let mut epochs = vec![first_epoch];
    for (vm, region) in &restored {
        wait_for_serial(vm, "ping ok", SERIAL_TIMEOUT).unwrap();
        let answer = invoke(&backend, region, true, 1);
        assert_eq!(answer["get"], object, "{answer}");
        assert_eq!(
            answer["staged"],
            json!({ "bytes": OBJECT.len(), "fnv": fnv(OBJECT) }),
            "{answer}"
        );
        assert_eq!(answer["pings"], 1);
        epochs.push(answer["epoch"].as_u64().unwrap());
        assert!(vm.serial_tail(20).contains("invocation 1 answered"), "{}", vm.serial_tail(20));
    }
    epochs.dedup();
    assert_eq!(epochs.len(), 3, "each region has its own epoch: {epochs:?}");

    let pids: Vec<u32> = restored.iter().map(|(vm, _)| vm.info().pid.unwrap()).collect();
    drop(restored);
    assert!(pids.iter().all(|pid| !alive(*pid)), "every VMM is reaped");
}

#[test]
fn the_vsock_doorbell_listens_before_the_guest_runs_and_ch_carries_the_vsock() {
    let Some(ch) = cloud_hypervisor() else { return };
    let backend = backend();
    let work = tempfile::tempdir().unwrap();
    let region = backend.create_region("ch-vsock").unwrap();
    let mut vm = ch.create_vm(&spec("vsock", &region, work.path())).unwrap();
    let vsock = vm.vsock_socket().unwrap().to_owned();
    assert!(guest_port_path(&vsock, 20056).exists(), "the doorbell listens before boot");
    let _doorbell = vm.doorbell().unwrap();
    assert!(vm.doorbell().is_err(), "the host end is handed out once");
    vm.boot().unwrap();
    wait_for_serial(&vm, "ping ok", SERIAL_TIMEOUT).unwrap();

    // CH's hybrid vsock answers a host connection: CONNECT to a port no guest listens on is
    // refused by closing the stream (a Linux guest listening there would get the connection).
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(&vsock).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(b"CONNECT 4242\n").unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(!String::from_utf8_lossy(&answer).starts_with("OK"), "{answer:?}");
    assert_eq!(vm.doorbell_connections(), 0, "the test guest has no vsock driver");
    vm.stop().unwrap();
    assert!(!vsock.exists(), "sockets are cleaned up");
}

/// Functions on Cloud Hypervisor through the backend (`vm.vmm: cloud-hypervisor`), with an
/// "image" whose kernel is the test guest (it ignores the initramfs and disks, and serves the
/// invocation itself): a cold boot, a snapshot, then a cold start restored from it with the
/// input written into the region while CH restores and read in place by the guest.
#[test]
fn functions_run_on_cloud_hypervisor_and_restore_with_their_input_staged() {
    use nexus_backend::api::{COLD_START_FROM, PREFETCHED};
    let Some(_ch) = cloud_hypervisor() else { return };
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("nexus");
    std::fs::create_dir(&image).unwrap();
    std::fs::copy(test_guest().unwrap(), image.join("vmlinux")).unwrap();
    std::fs::write(image.join("initrd.img"), [0u8; 4096]).unwrap();
    std::fs::write(image.join("rootfs.ext4"), vec![0u8; 1 << 20]).unwrap();
    let settings = format!(
        "storage: {{ url: \"file://{{dir}}/objects\" }}\n\
         default_policy: {{ grants: [{{ bucket: {BUCKET}, access: [read] }}] }}\n\
         vm: {{ images: {}, state_dir: \"{{dir}}/vms\", vmm: cloud-hypervisor, boot_timeout_secs: 60 }}\n",
        images.path().display()
    );
    let mut backend = Backend::start_with(&nexus_binary(), REGION, &settings, &[BUCKET]).unwrap();
    let object = backend.dir.join("objects").join(BUCKET).join(KEY);
    std::fs::create_dir_all(object.parent().unwrap()).unwrap();
    std::fs::write(object, OBJECT).unwrap();
    let code = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let spec =
        json!({ "name": "guest", "code": code, "handler": "echo.py:handler", "memory_mib": 64 });
    backend.api("POST", "/v1/functions", Some(&spec)).unwrap();

    let large_key = "in/large.bin";
    let large: Vec<u8> =
        (0..5u32 << 19).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(backend.dir.join("objects").join(BUCKET).join(large_key), &large).unwrap();
    let event = json!({ "bucket": BUCKET, "key": KEY, "pings": 1 });
    let hints = json!([{ "bucket": BUCKET, "key": KEY }]).to_string();
    let invoke_with = |event: &Value, headers: &[(&str, &str)]| {
        let answer = exchange_with(
            &backend.socket,
            "POST",
            "/v1/functions/guest/invoke",
            headers,
            event.to_string().as_bytes(),
        )
        .unwrap_or_else(|e| panic!("invoke: {e}\n{}", backend.log_tail()));
        let result: Value = serde_json::from_str(&answer.body).unwrap();
        (answer, result)
    };
    let invoke = |headers: &[(&str, &str)]| invoke_with(&event, headers);
    let get = json!({ "status": 0, "bytes": OBJECT.len(), "fnv": fnv(OBJECT), "chunks": 1 });

    let (answer, booted) = invoke(&[]);
    assert_eq!(answer.header(COLD_START_FROM), Some("boot"), "{}", answer.body);
    assert_eq!((booted["get"].clone(), booted["staged"].clone()), (get.clone(), Value::Null));
    let listed = backend.api("GET", "/v1/functions", None).unwrap();
    assert_eq!(listed[0]["vms"][0]["vmm"], "cloud-hypervisor", "{listed}");

    let snapshot = backend.api("POST", "/v1/functions/guest/snapshot", None).unwrap();
    assert_eq!(snapshot["vmm"], "cloud-hypervisor");
    backend.api("POST", "/v1/functions/guest/stop", None).unwrap();
    let (answer, restored) = invoke(&[(PREFETCH, &hints)]);
    assert_eq!(answer.header(COLD_START_FROM), Some("restore"), "{}", answer.body);
    assert_eq!(answer.header(PREFETCHED), Some("1"));
    assert_eq!(restored["get"], get, "{restored}");
    assert_eq!(restored["staged"], json!({ "bytes": OBJECT.len(), "fnv": fnv(OBJECT) }));
    assert_ne!(restored["epoch"], booted["epoch"], "a restore opens a new epoch");
    assert!(backend.log().contains("Staged during the restore"), "{}", backend.log_tail());

    // A guest that prefers a staged input makes no Get for it; a Get of an object larger than
    // a buffer (2.5 MiB in 1 MiB buffers) reads its stream whole.
    let preferring = json!({ "bucket": BUCKET, "key": KEY, "prefer_staged": true });
    backend.api("POST", "/v1/functions/guest/stop", None).unwrap();
    let (answer, cold) = invoke_with(&preferring, &[(PREFETCH, &hints)]);
    assert_eq!(answer.header(PREFETCHED), Some("1"));
    let staged = restored["staged"].clone();
    assert_eq!((cold["get"].clone(), cold["staged"].clone()), (Value::Null, staged), "{cold}");
    let (_, warm) = invoke_with(&json!({ "bucket": BUCKET, "key": large_key }), &[]);
    let whole = json!({ "status": 0, "bytes": large.len(), "fnv": fnv(&large), "chunks": 3 });
    assert_eq!(warm["get"], whole, "{warm}");
    assert!(backend.stop(), "{}", backend.log_tail());
}

/// A process the test started, killed and reaped on drop.
struct Spawned(std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the unix socket at `path` accepts a connection.
fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    // The file appears at bind(), before listen(): a connection is what says it serves.
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(Instant::now() < deadline, "{} never accepted a connection", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A VMM as a user runs it (no VM yet), and `nexus ch-proxy` in front of it; the proxy's socket.
fn vmm_behind_a_proxy(ch: &Path, backend: &Backend, dir: &Path) -> (Spawned, Spawned, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (api, proxy) = (dir.join("ch.sock"), dir.join("nexus-ch.sock"));
    let log = std::fs::File::create(dir.join("ch.log")).unwrap();
    let vmm = std::process::Command::new(ch)
        .arg("--api-socket")
        .arg(format!("path={}", api.display()))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let vmm = Spawned(vmm);
    wait_for(&api);
    let log = std::fs::File::create(dir.join("proxy.log")).unwrap();
    let proxied = std::process::Command::new(nexus_binary())
        .env("NEXUS_LOG", "debug")
        .arg("--socket")
        .arg(&backend.socket)
        .arg("ch-proxy")
        .arg("--listen")
        .arg(&proxy)
        .arg("--ch-socket")
        .arg(&api)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let proxied = Spawned(proxied);
    wait_for(&proxy);
    (vmm, proxied, proxy)
}

/// Runs `ch-remote --api-socket <socket> <args>`; its exit status and output, followed on a
/// failure by the logs of the VMM and proxy beside the socket.
fn ch_remote(binary: &Path, socket: &Path, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(binary)
        .arg("--api-socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        for log in ["ch.log", "proxy.log"].map(|name| socket.with_file_name(name)) {
            let content = std::fs::read_to_string(&log).unwrap_or_default();
            text += &format!("\n--- {}:\n{content}", log.display());
        }
    }
    (output.status.success(), text)
}

/// The regions the backend serves for `function`.
fn regions_of(backend: &Backend, function: &str) -> Vec<Value> {
    let all = backend.api("GET", "/v1/regions", None).unwrap();
    all.as_array().unwrap().iter().filter(|r| r["function"] == function).cloned().collect()
}

/// An invocation (no prefetch) of a region whose guest may still be coming up: retried until
/// the guest is ready for it.
fn invoke_when_ready(backend: &Backend, region: &Path) -> Value {
    let deadline = Instant::now() + SERIAL_TIMEOUT;
    let event = json!({ "bucket": BUCKET, "key": KEY, "pings": 1 }).to_string();
    let path = format!("/v1/regions/{}/invoke?timeout=60", region_id(region));
    loop {
        match exchange_with(&backend.socket, "POST", &path, &[], event.as_bytes()) {
            Ok(answer) => return serde_json::from_str(&answer.body).unwrap(),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("invoke {path}: {e}\n{}", backend.log_tail()),
        }
    }
}

/// Users who run CH themselves: `ch-remote` against `nexus ch-proxy` creates, boots, pauses,
/// snapshots and shuts down a VM on a region the backend made, then restores it in a new VMM,
/// where the proxy gives it a new region (a new epoch) and releases regions as VMs go.
#[test]
fn ch_remote_drives_cloud_hypervisor_through_the_nexus_proxy() {
    let Some(_ch) = cloud_hypervisor() else { return };
    let binary = find_binary(None).unwrap();
    let Some(remote) = binary.parent().map(|d| d.join("ch-remote")).filter(|p| p.is_file()) else {
        println!("skipped: no ch-remote beside {}", binary.display());
        return;
    };
    let backend = backend();
    let work = tempfile::tempdir().unwrap();
    let region = backend.create_region("proxied").unwrap();
    let serial = work.path().join("serial.log");
    let config = json!({
        "payload": { "kernel": test_guest().unwrap() },
        "cpus": { "boot_vcpus": 1, "max_vcpus": 1 },
        "memory": { "size": 64u64 << 20 },
        "serial": { "mode": "File", "file": serial },
        "console": { "mode": "Off" },
        "ivshmem": { "path": region, "size": REGION_SIZE },
    });
    let config_file = work.path().join("vm.json");
    std::fs::write(&config_file, config.to_string()).unwrap();

    let (first_vmm, _first_proxy, proxy) =
        vmm_behind_a_proxy(&binary, &backend, &work.path().join("first"));
    let remote = |socket: &Path, args: &[&str]| ch_remote(&remote, socket, args);
    let ok = |(success, text): (bool, String)| assert!(success, "{text}");
    ok(remote(&proxy, &["ping"]));
    ok(remote(&proxy, &["create", config_file.to_str().unwrap()]));
    ok(remote(&proxy, &["boot"]));
    let first = invoke_when_ready(&backend, &region);
    assert_eq!(first["get"]["fnv"], fnv(OBJECT), "{first}");
    let (_, info) = remote(&proxy, &["info"]);
    assert!(
        info.contains("\"state\": \"Running\"") || info.contains("\"state\":\"Running\""),
        "{info}"
    );
    let (booted_twice, error) = remote(&proxy, &["boot"]);
    assert!(!booted_twice, "CH refuses a second boot, through the proxy too: {error}");

    let snapshot = work.path().join("snapshot");
    std::fs::create_dir(&snapshot).unwrap();
    ok(remote(&proxy, &["pause"]));
    ok(remote(&proxy, &["snapshot", &format!("file://{}", snapshot.display())]));
    ok(remote(&proxy, &["shutdown-vmm"]));
    drop(first_vmm);
    assert!(regions_of(&backend, "proxied").is_empty(), "the proxy released the region");

    let (_second_vmm, _second_proxy, proxy) =
        vmm_behind_a_proxy(&binary, &backend, &work.path().join("second"));
    ok(remote(&proxy, &["restore", &format!("source_url=file://{}", snapshot.display())]));
    let restored = regions_of(&backend, "proxied");
    assert_eq!(restored.len(), 1, "a new region for the restored VM: {restored:?}");
    let restored_region = PathBuf::from(restored[0]["path"].as_str().unwrap());
    assert_ne!(restored_region, region);
    ok(remote(&proxy, &["resume"]));
    // Ready (a failed attempt would use up the region's one staging), then with a prefetch.
    invoke_when_ready(&backend, &restored_region);
    let second = invoke(&backend, &restored_region, true, 1);
    assert_eq!(second["get"]["fnv"], fnv(OBJECT), "{second}");
    assert_eq!(second["staged"], json!({ "bytes": OBJECT.len(), "fnv": fnv(OBJECT) }), "{second}");
    assert_ne!(second["epoch"], first["epoch"], "a new epoch after the restore");
    ok(remote(&proxy, &["shutdown-vmm"]));
    assert!(regions_of(&backend, "proxied").is_empty(), "released again");
}

/// The nexus guest image (Linux, the agent, the shim) as a function VM under Cloud Hypervisor,
/// through the backend: boot, an invocation whose handler reads an object, a snapshot, a cold
/// start restored from it with the object prefetched. Needs a KVM that runs Linux (VT-x or
/// AMD-V) and the image (`cargo xtask guest-image`).
#[test]
fn linux_image_under_cloud_hypervisor() {
    use nexus_backend::api::{COLD_START_FROM, PREFETCHED};
    let Some(_ch) = cloud_hypervisor() else { return };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !cpuinfo.split_whitespace().any(|flag| flag == "vmx" || flag == "svm") {
        println!(
            "skipped: this KVM has no VT-x/AMD-V (a paravirtual KVM such as PVM): it runs the \
             freestanding test guest, not a stock Linux kernel"
        );
        return;
    }
    let images = std::env::var_os("NEXUS_IMAGES").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/nexus/images")
    });
    let image = images.join("nexus");
    let files = ["vmlinux", "initrd.img", "rootfs.ext4"];
    assert!(
        files.iter().all(|f| image.join(f).is_file()),
        "no nexus image in {}: run `cargo xtask guest-image --flavour nexus`",
        image.display()
    );
    let settings = format!(
        "storage: {{ url: \"file://{{dir}}/objects\" }}\n\
         default_policy: {{ grants: [{{ bucket: {BUCKET}, access: [read] }}] }}\n\
         vm: {{ images: {}, state_dir: \"{{dir}}/vms\", vmm: cloud-hypervisor, boot_timeout_secs: 120 }}\n",
        images.display()
    );
    let backend = Backend::start(&nexus_binary(), &settings, &[BUCKET]).unwrap();
    let object = backend.dir.join("objects").join(BUCKET).join(KEY);
    std::fs::create_dir_all(object.parent().unwrap()).unwrap();
    std::fs::write(object, OBJECT).unwrap();
    let code = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let spec = json!({ "name": "echo", "code": code, "handler": "echo.py:handler" });
    backend.api("POST", "/v1/functions", Some(&spec)).unwrap();

    let event = json!({ "get": { "bucket": BUCKET, "key": KEY } }).to_string();
    let hints = json!([{ "bucket": BUCKET, "key": KEY }]).to_string();
    let invoke = |headers: &[(&str, &str)]| {
        exchange_with(
            &backend.socket,
            "POST",
            "/v1/functions/echo/invoke",
            headers,
            event.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("invoke: {e}\n{}", backend.log_tail()))
    };
    let answer = invoke(&[]);
    let result: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(result["got"].as_str(), std::str::from_utf8(OBJECT).ok(), "{result}");
    let listed = backend.api("GET", "/v1/functions", None).unwrap();
    assert_eq!(listed[0]["vms"][0]["vmm"], "cloud-hypervisor", "{listed}");

    backend.api("POST", "/v1/functions/echo/snapshot", None).unwrap();
    backend.api("POST", "/v1/functions/echo/stop", None).unwrap();
    let answer = invoke(&[(PREFETCH, &hints)]);
    assert_eq!(answer.header(COLD_START_FROM), Some("restore"), "{}", answer.body);
    assert_eq!(answer.header(PREFETCHED), Some("1"));
    let result: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(result["got"].as_str(), std::str::from_utf8(OBJECT).ok(), "{result}");
}
