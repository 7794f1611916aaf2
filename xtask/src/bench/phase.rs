//! One flavour of one function under load, for `cargo xtask bench`: measure the node's idle
//! floor, deploy the function with `max_vms` N, boot its N VMs (N invocations at once), warm
//! them up, load the function at a fixed rate for a fixed time with up to N invocations in
//! flight (so the backend spreads them over its VMs) while the node's CPU, every host process
//! serving them and (as root) the probes are counted, read their memory (and, with the probes,
//! what KSM finds duplicated), time cold starts from a snapshot, remove it, and measure the
//! idle floor again.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::load;
use super::measure::{cpu_time, rss_kib, VmmMemory};
use super::node_cpu::{NodeCpu, NodeMeter};
use super::probes::{self, CpuReading, Seen};
use super::stack::{Stack, BUCKET};
use super::stats::mean;
use super::vm;
use crate::image::Flavour;
use crate::workspace_root;

/// The example functions the benchmark can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Function {
    /// Mostly moves data: reads a 256 KiB text object, gzips it, writes the result
    /// (`guest/python/examples/bench/handler.py`, the compress example plus a memory report).
    Compress,
    /// Computes on its input: reads a 12-megapixel JPEG, makes a 128×128 thumbnail with
    /// Pillow, writes it (`guest/python/examples/thumbnail/handler.py`).
    Thumbnail,
}

/// What the guest's agent writes on the console when it restarts the function's runtime.
const RUNTIME_RESTARTED: &str = "nexus-agent: runtime exited";

/// The thumbnail's input object.
const PHOTO_KEY: &str = "in/photo.jpg";
/// The photo's size and the seed of what is drawn on it.
const PHOTO: (u32, u32, u64) = (4032, 3024, 1);

impl Function {
    pub fn name(self) -> &'static str {
        match self {
            Function::Compress => "compress",
            Function::Thumbnail => "thumbnail",
        }
    }

    fn code(self) -> &'static str {
        match self {
            Function::Compress => vm::CODE,
            Function::Thumbnail => "guest/python/examples/thumbnail",
        }
    }

    fn handler(self) -> &'static str {
        match self {
            Function::Compress => vm::HANDLER,
            Function::Thumbnail => "handler.py:handler",
        }
    }

    fn input_key(self) -> &'static str {
        match self {
            Function::Compress => vm::INPUT_KEY,
            Function::Thumbnail => PHOTO_KEY,
        }
    }

    /// The event of invocation `seq` of the function deployed as `name`.
    fn event(self, name: &str, seq: &str) -> Value {
        match self {
            Function::Compress => vm::event(&format!("out/{name}-{seq}.gz")),
            Function::Thumbnail => json!({
                "bucket": BUCKET, "key": PHOTO_KEY, "output_key": format!("out/{name}-{seq}.jpg"),
            }),
        }
    }

    /// Puts the function's input into the bucket, generated from fixed seeds.
    pub fn seed(self, stack: &Stack, python: &Path) -> Result<()> {
        match self {
            Function::Compress => vm::seed_input(stack, python),
            Function::Thumbnail => {
                let (w, h, seed) = PHOTO;
                // Colour ramps and a few hundred discs: a photo-sized JPEG that compresses like
                // one (≈ 0.7 MB), the same bytes on every run.
                stack.seed(
                    python,
                    &format!(
                        r#"import io, random
from PIL import Image, ImageDraw
rng = random.Random({seed})
w, h = {w}, {h}
ramp = Image.linear_gradient('L')
image = Image.merge('RGB', [ramp.resize((w, h)), Image.radial_gradient('L').resize((w, h)), ramp.rotate(90).resize((w, h))])
draw = ImageDraw.Draw(image)
for _ in range(400):
    x, y, r = rng.randrange(w), rng.randrange(h), rng.randrange(16, 320)
    draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
out = io.BytesIO()
image.save(out, 'JPEG', quality=90)
s3.put_object(Bucket='{BUCKET}', Key='{PHOTO_KEY}', Body=out.getvalue(), ContentType='image/jpeg')
"#
                    ),
                )
            }
        }
    }
}

/// How to load a phase.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub vms: usize,
    /// Invocations per second over all the VMs.
    pub rate: f64,
    pub warm_up: Duration,
    pub duration: Duration,
    pub cold_rounds: usize,
    pub seed: u64,
    /// How long the node's idle floor is measured, before the VMs start and once they are
    /// gone.
    pub floor: Duration,
}

/// What one flavour of one function measured.
#[derive(Debug, Clone)]
pub struct Phase {
    pub function: Function,
    pub flavour: Flavour,
    pub accel: String,
    /// Latencies of the measured invocations, seconds from their planned arrival.
    pub warm: Vec<f64>,
    /// The latest any measured invocation was sent (its VM still busy), seconds.
    pub max_lag: f64,
    /// The measured window: from the first measured arrival's start until the last answer
    /// (and, for Nexus, until its writes were uploaded), seconds.
    pub window: f64,
    /// The whole machine's CPU over the window and over the idle floors without the VMs.
    pub node: NodeCpu,
    /// CPU seconds of the VMs' QEMU processes over the window.
    pub qemu_cpu: f64,
    /// CPU seconds of the backend over the window.
    pub backend_cpu: f64,
    /// Per VM, after the load: its VMM's memory, and the guest's own view.
    pub qemu_memory: Vec<VmmMemory>,
    pub guest_used_kib: Vec<f64>,
    /// The backend's RSS with these VMs running, after the load.
    pub backend_rss_kib: f64,
    /// Cold starts: restore + first invocation, end to end, and the VM start alone; seconds.
    pub cold: Vec<f64>,
    pub cold_start: Vec<f64>,
    /// Cold starts after which the VM's console shows that the guest's runtime exited and was
    /// restarted by the agent (so the start included a fresh runtime start).
    pub cold_runtime_restarts: usize,
    /// What the probes saw, when they ran.
    pub seen: Option<Seen>,
}

impl Phase {
    /// Invocations in the measured window.
    pub fn invocations(&self) -> usize {
        self.warm.len()
    }

    pub fn nexus(&self) -> bool {
        self.flavour == Flavour::Nexus
    }

    /// `seconds` of CPU over the window, per invocation.
    pub fn per_invocation(&self, seconds: f64) -> f64 {
        seconds / self.invocations() as f64
    }

    /// The node's CPU per invocation: the whole machine beyond its idle floor.
    pub fn node_cpu_per_invocation(&self) -> f64 {
        self.per_invocation(self.node.beyond_floor())
    }

    /// The CPU seconds counted per process for the flavour: its QEMU processes, and the
    /// backend for Nexus.
    pub fn process_cpu(&self) -> f64 {
        self.qemu_cpu + if self.nexus() { self.backend_cpu } else { 0.0 }
    }

    /// The backend's memory charged to each VM: its RSS over the Nexus VMs (none for the
    /// baseline, whose I/O does not go through it).
    pub fn backend_share_kib(&self) -> f64 {
        if self.nexus() {
            self.backend_rss_kib / self.qemu_memory.len() as f64
        } else {
            0.0
        }
    }

    /// The mean over the VMs of one figure of their VMM's memory, KiB.
    pub fn vmm_kib(&self, figure: fn(&VmmMemory) -> f64) -> f64 {
        mean(&self.qemu_memory.iter().map(figure).collect::<Vec<_>>())
    }

    /// The memory a VM costs the host, the density's figure: its QEMU's PSS without TCG's
    /// translation cache (memory a KVM host does not spend), and for Nexus its share of the
    /// backend.
    pub fn host_memory_per_vm_kib(&self) -> f64 {
        self.vmm_kib(|m| m.without_translation_cache().pss_kib) + self.backend_share_kib()
    }
}

/// The node and its counters, for [`run`].
#[derive(Debug, Clone, Copy)]
pub struct Meters<'a> {
    pub stack: &'a Stack,
    pub node: &'a NodeMeter,
    /// The backend's probes are on.
    pub probes: bool,
}

/// Runs `function` in `load.vms` VMs of `flavour`; see the module doc.
pub fn run(meters: Meters, function: Function, flavour: Flavour, load: &Load) -> Result<Phase> {
    let stack = meters.stack;
    let name = format!("{}-{}", function.name(), flavour.name());
    let name = name.as_str();
    let say = |what: &str| println!("bench: {} {}: {what}", function.name(), flavour.name());
    say(&format!("the node's idle floor for {} s", load.floor.as_secs()));
    let floor = meters.node.floor(load.floor)?;
    let code = workspace_root().join(function.code());
    stack.deploy(name, &code, function.handler(), flavour, json!({ "max_vms": load.vms }))?;
    say(&format!("booting {} VMs", load.vms));
    std::thread::scope(|scope| {
        let boots: Vec<_> = (0..load.vms)
            .map(|i| {
                scope.spawn(move || {
                    stack.invoke(name, &function.event(name, &format!("boot-{i}")), &[])
                })
            })
            .collect();
        boots.into_iter().try_for_each(|boot| boot.join().expect("boot thread").map(drop))
    })?;
    let invoke = |planned: &load::Planned| {
        stack.invoke(name, &function.event(name, &planned.seq.to_string()), &[])
    };
    say(&format!("warming up for {} s at {}/s", load.warm_up.as_secs(), load.rate));
    let warm_up = load::plan(load.rate, load.warm_up, load.vms, load.seed.wrapping_add(1));
    load::run(&warm_up, load.vms, |p| invoke(p).map(drop))?;

    let vms = stack.warm_vms(name)?;
    anyhow::ensure!(vms.len() == load.vms, "{name} has {} VMs, not {}", vms.len(), load.vms);
    let backend = stack.backend.pid().context("backend pid")?;
    let cpu = |pids: &[u32]| -> Result<f64> {
        pids.iter().map(|&pid| Ok(cpu_time(pid)?.as_secs_f64())).sum()
    };
    let qemu: Vec<u32> = vms.iter().map(|vm| vm.pid).collect();
    let probe = || CpuReading::take(&stack.backend, &vms);
    let probed = meters.probes.then(probe).transpose()?;
    let before = (cpu(&qemu)?, cpu(&[backend])?, meters.node.read()?);
    let plan = load::plan(load.rate, load.duration, load.vms, load.seed);
    say(&format!("{} invocations over {} s", plan.len(), load.duration.as_secs()));
    let started = Instant::now();
    let done = load::run(&plan, load.vms, invoke)?;
    stack.backend.wait_uploaded(Duration::from_secs(120))?;
    let window = started.elapsed().as_secs_f64();
    let after = (cpu(&qemu)?, cpu(&[backend])?, meters.node.since(&before.2)?);
    let probe_cpu = probed.map(|from| Ok::<_, anyhow::Error>(from.until(&probe()?))).transpose()?;

    // The last invocations' reports, one per VM when the load spread them evenly.
    let guest_used_kib: Vec<f64> = done
        .iter()
        .rev()
        .take(load.vms)
        .map(|d| d.output.result["guest_used_kib"].as_f64().unwrap_or(f64::NAN))
        .collect();
    let qemu_memory = qemu.iter().map(|&pid| VmmMemory::of(pid)).collect::<Result<_>>()?;
    // After the memory is read: KSM's merging would change it.
    let seen = match probe_cpu {
        Some(cpu) => Some(Seen { cpu, merged: probes::merged_after_ksm(&stack.backend, &vms)? }),
        None => None,
    };
    let mut phase = Phase {
        function,
        flavour,
        accel: vms[0].accel.clone(),
        warm: done.iter().map(|d| d.latency.as_secs_f64()).collect(),
        max_lag: done.iter().map(|d| d.lag.as_secs_f64()).fold(0.0, f64::max),
        window,
        node: NodeCpu { window: after.2, before: floor, ..NodeCpu::default() },
        qemu_cpu: after.0 - before.0,
        backend_cpu: after.1 - before.1,
        qemu_memory,
        guest_used_kib,
        backend_rss_kib: rss_kib(backend)?,
        cold: Vec::new(),
        cold_start: Vec::new(),
        cold_runtime_restarts: 0,
        seen,
    };

    say(&format!("snapshot, then {} cold starts", load.cold_rounds));
    let first = name;
    stack.backend.api("POST", &format!("/v1/functions/{first}/snapshot"), None)?;
    // Nexus names the input so the backend fetches it while the VM restores; the baseline's
    // boto3 fetches it itself once the handler runs.
    let input = [(BUCKET, function.input_key())];
    let hints: &[(&str, &str)] = if flavour == Flavour::Nexus { &input } else { &[] };
    for round in 0..load.cold_rounds {
        stack.backend.api("POST", &format!("/v1/functions/{first}/stop"), None)?;
        let cold = stack.invoke(first, &function.event(first, &format!("cold-{round}")), hints)?;
        phase.cold.push(cold.seconds);
        phase.cold_start.push(cold.start_seconds.unwrap_or(f64::NAN));
        let console = std::fs::read_to_string(stack.warm_vm(first)?.serial_log).unwrap_or_default();
        phase.cold_runtime_restarts += usize::from(console.contains(RUNTIME_RESTARTED));
    }
    stack.backend.api("DELETE", &format!("/v1/functions/{name}"), None)?;
    say(&format!("the node's idle floor again for {} s", load.floor.as_secs()));
    phase.node.after = meters.node.floor(load.floor)?;
    Ok(phase)
}
