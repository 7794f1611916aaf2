//! The eBPF probes end to end, as root: a backend with `probes.enabled`, function VMs booted
//! under it (QEMU; TCG here), and a real Prometheus server scraping its `/metrics`. Skipped,
//! saying why, when not root or when Prometheus or the guest images are missing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nexus_ebpf::{ksmd_cpu_time, procfs, Census, KsmScanning};
use nexus_tests::{nexus_binary, Backend, Prometheus};
use serde_json::{json, Value};

/// How far the probe's CPU of a VM may be from /proc/PID/stat's (ticks of 10 ms; the slice a
/// thread is running when read is counted only at its next switch).
const CPU_TOLERANCE: f64 = 0.03;
const CPU_SLACK: Duration = Duration::from_millis(60);

/// Why the probes cannot be scraped here, if they cannot.
fn no_probes() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("loading eBPF probes needs root".into());
    }
    Prometheus::binary().err().map(|e| e.to_string())
}

/// Why VMs cannot be observed here, if they cannot.
fn skip_reason() -> Option<String> {
    if let Some(why) = no_probes() {
        return Some(why);
    }
    let images = images();
    for flavour in ["nexus", "baseline"] {
        if !images.join(flavour).join("rootfs.ext4").is_file() {
            return Some(format!(
                "no {flavour} guest image in {}: run `cargo xtask guest-image`",
                images.display()
            ));
        }
    }
    None
}

fn images() -> PathBuf {
    std::env::var_os("NEXUS_IMAGES").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/nexus/images")
    })
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn backend() -> Backend {
    let settings = format!(
        "storage: {{ url: \"file://{{dir}}/objects\" }}\nprobes: {{ enabled: true }}\n\
         vm: {{ images: {}, state_dir: \"{{dir}}/vms\", boot_timeout_secs: 240 }}\n",
        images().display()
    );
    let backend = Backend::start_on_tcp(&nexus_binary(), &settings).unwrap();
    let status = backend.api("GET", "/v1/status", None).unwrap();
    assert_eq!(status["probes"]["state"], "on", "{status}");
    backend
}

/// Deploys the spin fixture as `name` and boots its VM; returns its region (the `vm` label)
/// and its VMM's pid.
fn boot_spinner(backend: &Backend, name: &str, flavour: &str) -> (String, u32) {
    let spec = json!({ "name": name, "code": fixtures(), "handler": "spin.py:handler", "flavour": flavour });
    backend.api("POST", "/v1/functions", Some(&spec)).unwrap();
    spin(backend, name, 0.0);
    let listed = backend.api("GET", "/v1/functions", None).unwrap();
    let warm = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["spec"]["name"] == name)
        .map(|f| f["vms"][0].clone())
        .unwrap();
    (warm["region"].as_str().unwrap().to_owned(), warm["pid"].as_u64().unwrap() as u32)
}

fn spin(backend: &Backend, name: &str, seconds: f64) -> Value {
    let path = format!("/v1/functions/{name}/invoke");
    backend.api("POST", &path, Some(&json!({ "seconds": seconds }))).unwrap_or_else(|e| {
        panic!("invoke {name}: {e}\n--- backend log ---\n{}", backend.log_tail())
    })
}

/// The VM's VMM CPU (vCPU and other threads) as the probe reports it on /metrics.
fn probe_cpu(backend: &Backend, region: &str) -> Duration {
    let vm = format!("vm=\"{region}\"");
    let seconds = ["vcpu", "vmm"]
        .iter()
        .map(|kind| {
            let kind = format!("kind=\"{kind}\"");
            backend.metric("nexus_vm_cpu_seconds_total", &[&vm, &kind]).unwrap()
        })
        .sum::<f64>();
    Duration::from_secs_f64(seconds)
}

fn value(sample: &Value) -> f64 {
    sample["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

#[test]
fn prometheus_scrapes_the_node_series_and_status_says_probes_are_on() {
    if let Some(why) = no_probes() {
        eprintln!("skipped: {why}");
        return;
    }
    let backend = backend();
    let prometheus = Prometheus::start(backend.listen.unwrap()).unwrap();
    let series = prometheus
        .query_until("nexus_node_duplicated_memory_bytes", Duration::from_secs(30), |r| {
            !r.is_empty()
        })
        .unwrap();
    assert_eq!(series.len(), 1, "{series:?}\n{}", prometheus.log_tail());
    assert_eq!(series[0]["metric"]["job"], "nexus", "{series:?}");
    let up = prometheus.query("up{job=\"nexus\"}").unwrap();
    assert_eq!(up.first().map(value), Some(1.0), "{up:?}");

    // Every query of the Grafana dashboard is one this Prometheus accepts.
    let dashboard =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/grafana-nexus-node.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    for target in panels.iter().flat_map(|p| p["targets"].as_array().unwrap()) {
        let expr = target["expr"].as_str().unwrap();
        let expr = expr.replace("$function", ".*").replace("$__rate_interval", "1m");
        prometheus.query(&expr).unwrap_or_else(|e| panic!("dashboard query: {e}"));
    }
}

#[test]
fn prometheus_scrapes_per_vm_cpu_that_matches_proc() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let backend = backend();
    let (region, pid) = boot_spinner(&backend, "spin", "nexus");

    // A known busy loop in the guest: the probe's CPU of the VM against the kernel's.
    std::thread::sleep(Duration::from_secs(1));
    let (probe_before, proc_before) =
        (probe_cpu(&backend, &region), procfs::cpu_time(pid).unwrap());
    spin(&backend, "spin", 5.0);
    std::thread::sleep(Duration::from_millis(500));
    let (probe_after, proc_after) = (probe_cpu(&backend, &region), procfs::cpu_time(pid).unwrap());
    let (probe, proc) = (probe_after - probe_before, proc_after - proc_before);
    eprintln!("VM running a 5 s busy loop: probe {probe:?}, /proc/PID/stat {proc:?}");
    // A shared machine gives the vCPU only part of the 5 s.
    assert!(proc > Duration::from_millis(500), "the busy loop barely ran: {proc:?}");
    let allowed = proc.mul_f64(CPU_TOLERANCE) + CPU_SLACK;
    assert!(probe.abs_diff(proc) <= allowed, "probe {probe:?} vs /proc {proc:?} (±{allowed:?})");

    // A real Prometheus scrapes the series, per VM, function and kind.
    let prometheus = Prometheus::start(backend.listen.unwrap()).unwrap();
    let cpu = format!("nexus_vm_cpu_seconds_total{{vm=\"{region}\"}}");
    let series = prometheus.query_until(&cpu, Duration::from_secs(30), |r| r.len() == 3).unwrap();
    let mut kinds: Vec<&str> = series.iter().filter_map(|s| s["metric"]["kind"].as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["backend", "vcpu", "vmm"], "{series:?}\n{}", prometheus.log_tail());
    assert!(series.iter().all(|s| s["metric"]["function"] == "spin"), "{series:?}");
    let vcpu = series.iter().find(|s| s["metric"]["kind"] == "vcpu").map(value).unwrap();
    assert!(vcpu >= 1.0, "the vCPU thread ran the busy loop: {series:?}");
    let anon = format!("nexus_vm_memory_bytes{{vm=\"{region}\",kind=\"anon\"}}");
    let memory = prometheus.query_until(&anon, Duration::from_secs(10), |r| !r.is_empty()).unwrap();
    let resident = procfs::Resident::of(pid).unwrap();
    let scraped = memory.first().map(value).unwrap_or_default();
    eprintln!("VM anon memory: scraped {scraped}, /proc now {}", resident.anon);
    assert!(scraped > 16e6, "a booted VM holds its guest's memory: {memory:?}");

    // A stopped VM's series go: from /metrics at once, from Prometheus at its next scrape.
    backend.api("POST", "/v1/functions/spin/stop", None).unwrap();
    let text = backend.metrics().unwrap();
    assert!(!text.contains(&format!("vm=\"{region}\"")), "{text}");
    let gone = prometheus.query_until(&cpu, Duration::from_secs(15), <[Value]>::is_empty).unwrap();
    assert!(gone.is_empty(), "stale series still answered: {gone:?}");
}

#[test]
fn vms_from_one_image_show_duplicated_memory() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let backend = backend();
    let vms = [("dup-a", "nexus"), ("dup-b", "nexus"), ("dup-base", "baseline")]
        .map(|(name, flavour)| boot_spinner(&backend, name, flavour));
    let pids: Vec<u32> = vms.iter().map(|(_, pid)| *pid).collect();

    // KSM, scanning fast, until its merging of the VMs settles.
    let ksmd_before = ksmd_cpu_time();
    let scanning = KsmScanning::start(4000, 10).unwrap();
    let settled = scanning.settle(&pids, 3, 20, Duration::from_secs(240)).unwrap();
    let ksmd_cpu = ksmd_cpu_time().zip(ksmd_before).map(|(a, b)| a - b);
    let merged = settled.merged.clone();
    let census_started = Instant::now();
    let census = Census::take(&pids).unwrap();
    let census_took = census_started.elapsed();
    drop(scanning);

    let page = procfs::page_size();
    let ksm_pages: u64 = merged.iter().sum::<u64>() / page;
    eprintln!(
        "KSM: {ksm_pages} pages of the 3 VMs merged ({:?} per VM, bytes), {} passes in {:?}, \
         ksmd CPU {ksmd_cpu:?}\ncensus: {census:?} in {census_took:?}",
        merged, settled.passes, settled.took
    );
    for ((name, _), bytes) in vms.iter().zip(&merged) {
        assert!(*bytes > 1 << 20, "{name}: no memory merged ({bytes} bytes)");
    }
    let text = backend.metrics().unwrap();
    let duplicated = backend.metric("nexus_node_duplicated_memory_bytes", &[]).unwrap();
    assert!(duplicated > 0.0, "{text}");
    for (region, _) in &vms {
        let series = format!("nexus_vm_memory_merged_bytes{{vm=\"{region}\"");
        assert!(text.contains(&series), "missing {series} in\n{text}");
    }
    // KSM against the census: the pages it merged vs the non-zero pages whose contents occur
    // more than once (KSM leaves the guests' zero pages, held in huge pages, alone; it may
    // also merge with other processes' pages, and pages change between the two counts).
    let ratio = ksm_pages as f64 / census.nonzero_pages_in_duplicates().max(1) as f64;
    eprintln!("KSM / census (non-zero pages in duplicates): {ratio:.3}");
    assert!((0.9..=1.1).contains(&ratio), "KSM {ksm_pages} pages vs census {census:?}");

    // What each VM costs the node once merged: its anon memory less what KSM shares.
    let resident: Vec<u64> =
        pids.iter().map(|pid| procfs::Resident::of(*pid).unwrap().anon).collect();
    eprintln!("anon bytes: nexus {} / {}, baseline {}", resident[0], resident[1], resident[2]);
    eprintln!(
        "unshared bytes: nexus {} / {}, baseline {}",
        resident[0].saturating_sub(merged[0]),
        resident[1].saturating_sub(merged[1]),
        resident[2].saturating_sub(merged[2])
    );
    // The paper's claim, as the host kernel sees it: a Nexus VM (no NIC, no network stack
    // or SDK doing I/O in the guest) holds less memory than a baseline VM running the same code.
    for (nexus, name) in resident[..2].iter().zip(["dup-a", "dup-b"]) {
        assert!(*nexus < resident[2], "{name}: {nexus} anon bytes vs baseline {}", resident[2]);
    }
}
