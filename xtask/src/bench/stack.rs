//! What the VM benchmarks share: a Garage S3 server with the `bench` bucket, by default behind a
//! link at cloud distance (`nexus_tests::Link`), a release backend whose function VMs boot the
//! guest images and reach that server the same way (Nexus VMs through the backend, baseline VMs
//! through their NIC), deploying a function in either flavour, invoking it, and finding its
//! VM's process; and the conventional platform (`nexus_tests::Conventional`) for a function,
//! its baseline VMs on taps reaching the same server through the same link model.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use nexus_backend::api::{COLD_START, FUNCTION_ERROR, PREFETCH};
use nexus_backend::client::exchange_with;
use nexus_backend::functions::FunctionSpec;
use nexus_plugin::AccelChoice;
use nexus_tests::conventional::Platform;
use nexus_tests::{Backend, Conventional, Garage, Link, LinkProfile};
use serde_json::{json, Value};

use crate::image::{self, Flavour};
use crate::setup::Tools;
use crate::{cmd, workspace_root};

/// The bucket every VM benchmark reads and writes.
pub const BUCKET: &str = "bench";

/// Where the object store is, seen from the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Storage {
    /// Garage on loopback: a 64 MiB object arrives in ≈ 0.1 s.
    Local,
    /// Garage behind [`LinkProfile::S3`]: first bytes after a sampled latency (median 30 ms,
    /// p99 150 ms), each connection paced to 88 MB/s, as cloud object storage is.
    #[default]
    Remote,
}

/// TCG's translation cache per VM, both flavours alike: without a bound it dominates QEMU's RSS
/// (≈ 300 MiB for a guest using 40–65 MiB), memory a KVM host does not spend.
pub const TCG_CACHE_MIB: u32 = 64;

/// The seed of the remote link's latency draws.
const LINK_SEED: u64 = 1;
/// How long a function VM may take to boot until its runtime is ready (TCG is slow).
const BOOT_TIMEOUT_SECS: u64 = 240;
/// The prefix of the conventional platform's network namespaces (`nexus-bench-PID-N`).
const NETNS_PREFIX: &str = "nexus-bench";

impl Storage {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Storage::Local => "local",
            Storage::Remote => "remote",
        }
    }

    /// What the benchmark notes say about it.
    pub fn note(self) -> String {
        match self {
            Storage::Local => {
                "Storage: Garage on loopback (`--storage local`), far closer than cloud \
                               object storage: an input arrives almost at once."
                    .to_owned()
            }
            Storage::Remote => {
                let p = LinkProfile::S3;
                format!(
                    "Storage at cloud distance (`--storage remote`, the default): every request to \
                     Garage, from the backend and from baseline guests alike, crosses a proxy that \
                     holds each answer's first byte for a log-normal latency (median {} ms, p99 {} \
                     ms) and paces each connection to {} MB/s each way, the published figures for \
                     S3 within a region (tens of ms for small requests, 100–200 ms at the tail, \
                     ≈ 85–90 MB/s per connection).",
                    p.median_latency.as_millis(),
                    p.p99_latency.as_millis(),
                    p.bytes_per_second / 1_000_000
                )
            }
        }
    }
}

/// A Garage server, maybe behind a link, and a backend using it; the backend stops first
/// (field order).
#[derive(Debug)]
pub struct Stack {
    pub backend: Backend,
    /// The proxy in front of Garage with [`Storage::Remote`].
    pub link: Option<Link>,
    pub garage: Garage,
}

/// One invocation at the API.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The handler's result.
    pub result: Value,
    /// End to end at the API.
    pub seconds: f64,
    /// A cold start's VM start (boot or restore), from the backend's header.
    pub start_seconds: Option<f64>,
}

/// A function's warm VM.
#[derive(Debug, Clone)]
pub struct WarmVm {
    /// The VMM process.
    pub pid: u32,
    /// Its region (the `vm` label of the probes' series).
    pub region: String,
    /// The accelerator, upper case (`TCG`, `KVM`).
    pub accel: String,
    /// The VM's console output.
    pub serial_log: PathBuf,
}

/// `cargo build --release` of `packages`.
pub fn build_release(packages: &[&str]) -> Result<()> {
    println!("bench: building release binaries");
    let mut build = cmd::cargo();
    build.current_dir(workspace_root()).args(["build", "--release"]);
    for package in packages {
        build.args(["-p", package]);
    }
    cmd::run(&mut build)
}

impl Stack {
    /// Makes sure the guest images of `flavours` are built, then starts Garage (with the
    /// `bench` bucket) at the `storage` distance and the release backend (built first) with its
    /// object cache off, the region geometry `region` (YAML flow fields) and `extra` settings.
    pub fn start(
        tools: &Tools,
        flavours: &[Flavour],
        storage: Storage,
        region: &str,
        extra: &str,
    ) -> Result<Self> {
        let mut images = None;
        for &flavour in flavours {
            images = Some(image::ensure(flavour, false)?);
        }
        let images = images.context("no image flavour")?;
        let root = images.dir.parent().context("images dir")?;
        Self::start_on(tools, root, "", storage, region, extra)
    }

    /// [`Stack::start`] with the images under `images` (a folder per flavour) as they are, and
    /// `vm` more `vm:` settings (YAML flow fields, e.g. `"vmm: cloud-hypervisor"`).
    pub fn start_on(
        tools: &Tools,
        images: &Path,
        vm: &str,
        storage: Storage,
        region: &str,
        extra: &str,
    ) -> Result<Self> {
        build_release(&["nexus-backend"])?;
        std::env::set_var("NEXUS_GARAGE", &tools.garage);
        let garage = Garage::start()?;
        garage.create_bucket(BUCKET)?;
        let link = match storage {
            Storage::Local => None,
            Storage::Remote => {
                let server = garage.endpoint.trim_start_matches("http://").parse()?;
                Some(Link::start(server, LinkProfile::S3, LINK_SEED)?)
            }
        };
        let endpoint = endpoint(&garage, link.as_ref());
        let settings = format!(
            "{storage}cache: {{ max_bytes: 0, max_object_bytes: 0 }}\n\
             default_policy: {{ grants: [{{ bucket: {BUCKET}, access: [read, write] }}], max_object_size: 1GiB }}\n\
             vm: {{ images: {images}, state_dir: \"{{dir}}\", boot_timeout_secs: {BOOT_TIMEOUT_SECS}, tcg_cache_mib: {TCG_CACHE_MIB}{vm} }}\n{extra}",
            storage = garage.storage_settings_at(&endpoint),
            images = images.display(),
            vm = if vm.is_empty() { String::new() } else { format!(", {vm}") },
        );
        let backend = Backend::start_with(
            &workspace_root().join("target/release/nexus"),
            region,
            &settings,
            &[],
        )?;
        Ok(Self { backend, link, garage })
    }

    /// Where clients reach Garage: the link's address, or Garage's own.
    pub fn storage_endpoint(&self) -> String {
        endpoint(&self.garage, self.link.as_ref())
    }

    /// Runs `script` in the tests' venv with real boto3, `s3` a client of Garage: puts the
    /// inputs straight into the store.
    pub fn seed(&self, python: &Path, script: &str) -> Result<()> {
        let garage = &self.garage;
        let script = format!("import boto3\ns3 = boto3.client('s3')\n{script}");
        cmd::run(
            Command::new(python)
                .args(["-c", &script])
                .env("AWS_ENDPOINT_URL", &garage.endpoint)
                .env("AWS_ACCESS_KEY_ID", &garage.access_key)
                .env("AWS_SECRET_ACCESS_KEY", &garage.secret_key)
                .env("AWS_DEFAULT_REGION", &garage.region),
        )
    }

    /// Deploys `handler` (`file.py:function`) of the code folder `code` as `name` in a
    /// `flavour` VM; `extra` fields (e.g. `memory_mib`) go into the spec. A baseline VM's
    /// real boto3 reaches Garage through QEMU's user network (the host is 10.0.2.2).
    pub fn deploy(
        &self,
        name: &str,
        code: &Path,
        handler: &str,
        flavour: Flavour,
        extra: Value,
    ) -> Result<()> {
        let environment = (flavour == Flavour::Baseline).then(|| {
            let endpoint = self.storage_endpoint().replace("127.0.0.1", "10.0.2.2");
            self.storage_environment(Some(&endpoint))
        });
        let spec = function_spec(name, code, handler, flavour, environment, extra);
        self.backend.api("POST", "/v1/functions", Some(&spec))?;
        Ok(())
    }

    /// The conventional platform for `handler` of `code` as `name` (`extra` fields go into the
    /// spec, as for [`Stack::deploy`]), no VM started yet: baseline VMs on taps in a network
    /// namespace of their own, whose real boto3 reaches this Garage through the same link model
    /// as the backend (a plain forwarder with [`Storage::Local`]).
    pub fn conventional(
        &self,
        name: &str,
        code: &Path,
        handler: &str,
        extra: Value,
    ) -> Result<Conventional> {
        self.conventional_calling(name, code, handler, extra, None)
    }

    /// [`Stack::conventional`], whose VMs call other functions through the Lambda endpoint
    /// `lambda` (a [`nexus_tests::LambdaFront`]'s address) when given.
    pub fn conventional_calling(
        &self,
        name: &str,
        code: &Path,
        handler: &str,
        extra: Value,
        lambda: Option<SocketAddr>,
    ) -> Result<Conventional> {
        let images = image::ensure(Flavour::Baseline, false)?;
        let environment = Some(self.storage_environment(None));
        let spec = function_spec(name, code, handler, Flavour::Baseline, environment, extra);
        let spec: FunctionSpec = serde_json::from_value(spec).context("the function's spec")?;
        let platform = Platform {
            kernel: images.vmlinuz,
            initrd: images.initrd,
            rootfs: images.rootfs,
            work_dir: self.backend.dir.join("conventional").join(name),
            netns_prefix: NETNS_PREFIX.into(),
            accel: AccelChoice::Auto,
            tcg_cache_mib: Some(TCG_CACHE_MIB),
            storage: self.garage.endpoint.trim_start_matches("http://").parse()?,
            link: self.link.as_ref().map_or(LinkProfile::DIRECT, |link| link.profile),
            link_seed: LINK_SEED,
            lambda,
            boot_timeout: Duration::from_secs(BOOT_TIMEOUT_SECS),
        };
        Ok(Conventional::start(spec, platform)?)
    }

    /// A baseline function's environment for reaching Garage with the real boto3: its keys and
    /// region, and `endpoint` when given (the conventional platform sets its own).
    fn storage_environment(&self, endpoint: Option<&str>) -> Value {
        let garage = &self.garage;
        let mut environment = json!({
            "AWS_ACCESS_KEY_ID": garage.access_key, "AWS_SECRET_ACCESS_KEY": garage.secret_key,
            "AWS_DEFAULT_REGION": garage.region, "AWS_EC2_METADATA_DISABLED": "true",
        });
        if let Some(endpoint) = endpoint {
            environment["AWS_ENDPOINT_URL"] = json!(endpoint);
        }
        environment
    }

    /// Invokes `name` with `event`; `prefetch` names the objects a cold start fetches while
    /// the VM starts. Fails if the handler raised.
    pub fn invoke(
        &self,
        name: &str,
        event: &Value,
        prefetch: &[(&str, &str)],
    ) -> Result<Invocation> {
        let hints: Vec<Value> =
            prefetch.iter().map(|(bucket, key)| json!({ "bucket": bucket, "key": key })).collect();
        let hints = Value::from(hints).to_string();
        let headers: Vec<(&str, &str)> =
            if prefetch.is_empty() { Vec::new() } else { vec![(PREFETCH, &hints)] };
        let started = Instant::now();
        let answer = exchange_with(
            &self.backend.socket,
            "POST",
            &format!("/v1/functions/{name}/invoke"),
            &headers,
            event.to_string().as_bytes(),
        )
        .with_context(|| format!("invoke {name}\n{}", self.backend.log_tail()))?;
        let seconds = started.elapsed().as_secs_f64();
        ensure!(answer.header(FUNCTION_ERROR).is_none(), "{name} failed: {}", answer.body);
        Ok(Invocation {
            result: serde_json::from_str(&answer.body)?,
            seconds,
            start_seconds: answer
                .header(COLD_START)
                .and_then(|ms| ms.parse::<f64>().ok())
                .map(|ms| ms / 1e3),
        })
    }

    /// `name`'s first warm VM.
    pub fn warm_vm(&self, name: &str) -> Result<WarmVm> {
        self.warm_vms(name)?.into_iter().next().with_context(|| format!("{name} has no warm VM"))
    }

    /// `name`'s warm VMs.
    pub fn warm_vms(&self, name: &str) -> Result<Vec<WarmVm>> {
        let listed = self.backend.api("GET", "/v1/functions", None)?;
        let function = listed.as_array().into_iter().flatten().find(|f| f["spec"]["name"] == name);
        let vms = function.with_context(|| format!("{name} is not listed"))?["vms"].as_array();
        vms.into_iter()
            .flatten()
            .map(|vm| {
                Ok(WarmVm {
                    pid: vm["pid"]
                        .as_u64()
                        .and_then(|p| u32::try_from(p).ok())
                        .with_context(|| format!("a VM of {name} has no process: {vm}"))?,
                    region: vm["region"].as_str().unwrap_or_default().to_owned(),
                    accel: vm["accel"].as_str().unwrap_or("?").to_uppercase(),
                    serial_log: vm["serial_log"].as_str().unwrap_or_default().into(),
                })
            })
            .collect()
    }
}

/// A function spec: `handler` of `code` as `name` in a `flavour` VM with `environment`, then
/// `extra` fields (which may replace it).
fn function_spec(
    name: &str,
    code: &Path,
    handler: &str,
    flavour: Flavour,
    environment: Option<Value>,
    extra: Value,
) -> Value {
    let mut spec = json!({
        "name": name, "code": code, "handler": handler, "flavour": flavour.name(),
    });
    if let Some(environment) = environment {
        spec["environment"] = environment;
    }
    for (key, value) in extra.as_object().into_iter().flatten() {
        spec[key] = value.clone();
    }
    spec
}

/// Where clients reach `garage`: through `link` if there is one.
fn endpoint(garage: &Garage, link: Option<&Link>) -> String {
    link.map_or(garage.endpoint.clone(), |l| format!("http://{}", l.addr))
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Fails, saying why, unless this process runs as root: `what` needs it.
pub fn ensure_root(what: &str) -> Result<()> {
    ensure!(is_root(), "{what} needs root: run it with sudo (or as root)");
    Ok(())
}

/// For a table measured under `accel`: what TCG means for its figures (none under KVM).
pub fn accel_note(accel: &str) -> Option<String> {
    (accel == "TCG").then(|| {
        format!(
            "Every VM figure here was measured under TCG (QEMU software emulation: this host has \
             no hardware virtualization); guest code runs ≈ 10× slower than under KVM, so \
             latencies are inflated and dominated by emulated CPU work. QEMU's RSS includes TCG's \
             translation cache, bounded to {TCG_CACHE_MIB} MiB per VM for both flavours \
             (`vm.tcg_cache_mib`), which a KVM host does not have."
        )
    })
}
