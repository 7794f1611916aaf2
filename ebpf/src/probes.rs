//! Loading the probe objects into the kernel, attaching them, and reading their maps.
//!
//! ```text
//!  sched.bpf.o ── nexus_sched_switch ─► tracepoint sched:sched_switch (always)
//!     maps: tracked_tgids (user space writes) · thread_cpu (the probe adds threads of tracked
//!     processes, user space single threads; the probe counts, user space reads and retires)
//!  kvm.bpf.o   ── nexus_kvm_exit     ─► tracepoint kvm:kvm_exit (where the host has it)
//!     maps: kvm_exits (probe writes, user space reads)
//! ```
//! The programs stay attached while [`Probes`] lives; dropping it detaches and unloads them.
//! Loading needs root (CAP_BPF, CAP_PERFMON) and tracefs, which is mounted if it is not.

use std::ffi::CStr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use aya::maps::{HashMap, MapData, MapError};
use aya::programs::{loaded_programs, ProgramError, TracePoint};
use aya::sys::{enable_stats, Stats};
use aya::{include_bytes_aligned, Ebpf, EbpfError};

use crate::maps::{ExitKey, ThreadCpu};

static SCHED_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sched.bpf.o"));
static KVM_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kvm.bpf.o"));

const TRACEFS: &str = "/sys/kernel/tracing";

/// Errors loading, attaching or reading the probes.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Not running as root.
    #[error("Loading eBPF probes needs root (CAP_BPF and CAP_PERFMON); run the backend as root")]
    NotRoot,
    /// tracefs is neither mounted nor mountable.
    #[error("Cannot mount tracefs on {TRACEFS}")]
    Tracefs(#[source] std::io::Error),
    /// The object file was refused before any program was loaded (maps, BTF, relocations).
    #[error("Cannot load the {object} probe object")]
    Object {
        object: &'static str,
        #[source]
        source: EbpfError,
    },
    /// The verifier refused a program; the message carries its log.
    #[error(
        "The kernel's verifier refused probe {program}: {source}\n--- verifier log ---\n{log}"
    )]
    Verifier { program: &'static str, source: std::io::Error, log: String },
    /// A program could not be loaded or attached for another reason.
    #[error("Cannot {action} probe {program}")]
    Program {
        program: &'static str,
        action: &'static str,
        #[source]
        source: ProgramError,
    },
    /// A map is missing from its object or could not be read or written.
    #[error("Probe map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    /// Per-program run-time statistics could not be switched on.
    #[error("Cannot enable BPF run-time statistics")]
    Stats(#[source] aya::sys::SyscallError),
}

/// The loaded and attached probes.
#[derive(Debug)]
pub struct Probes {
    /// Owns the attached sched_switch program.
    sched: Ebpf,
    tracked: HashMap<MapData, u32, u32>,
    threads: HashMap<MapData, u32, ThreadCpu>,
    kvm: Result<Kvm, String>,
}

#[derive(Debug)]
struct Kvm {
    /// Owns the attached kvm_exit program.
    _object: Ebpf,
    exits: HashMap<MapData, ExitKey, u64>,
}

/// What a probe program has cost so far (while run-time statistics are on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramCost {
    pub run_time: Duration,
    pub runs: u64,
}

/// Keeps the kernel's per-program run-time statistics on while it lives.
#[derive(Debug)]
pub struct CostStats {
    _enabled: OwnedFd,
}

impl Probes {
    /// Loads the probes and attaches them: sched_switch always, kvm_exit where the host has
    /// that tracepoint (see [`Probes::kvm_exits`] for why it may not).
    pub fn load() -> Result<Self, ProbeError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(ProbeError::NotRoot);
        }
        mount_tracefs()?;
        let mut sched = Ebpf::load(SCHED_OBJECT)
            .map_err(|source| ProbeError::Object { object: "sched", source })?;
        attach(&mut sched, "nexus_sched_switch", "sched", "sched_switch")?;
        let tracked = take_map(&mut sched, "tracked_tgids")?;
        let threads = take_map(&mut sched, "thread_cpu")?;
        Ok(Self { sched, tracked, threads, kvm: Kvm::load() })
    }

    /// Starts accounting the threads of process `tgid`.
    pub fn track(&mut self, tgid: u32) -> Result<(), ProbeError> {
        self.tracked
            .insert(tgid, 1, 0)
            .map_err(|source| ProbeError::Map { map: "tracked_tgids", source })
    }

    /// Stops accounting process `tgid` and forgets its threads.
    pub fn untrack(&mut self, tgid: u32) -> Result<(), ProbeError> {
        match self.tracked.remove(&tgid) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(ProbeError::Map { map: "tracked_tgids", source }),
        }
        let gone: Vec<u32> = self
            .threads()?
            .into_iter()
            .filter(|(_, thread)| thread.tgid == tgid)
            .map(|(tid, _)| tid)
            .collect();
        gone.into_iter().try_for_each(|tid| self.forget_thread(tid))
    }

    /// Starts accounting the single thread `tid` of process `tgid` (whose other threads are
    /// not tracked), from zero.
    pub fn track_thread(&mut self, tid: u32, tgid: u32) -> Result<(), ProbeError> {
        let fresh = ThreadCpu { tgid, ..ThreadCpu::default() };
        self.threads
            .insert(tid, fresh, 0)
            .map_err(|source| ProbeError::Map { map: "thread_cpu", source })
    }

    /// Forgets thread `tid` (it exited, or served something that is gone).
    pub fn forget_thread(&mut self, tid: u32) -> Result<(), ProbeError> {
        match self.threads.remove(&tid) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(ProbeError::Map { map: "thread_cpu", source }),
        }
    }

    /// Every accounted thread: (tid, its on-CPU time and process).
    pub fn threads(&self) -> Result<Vec<(u32, ThreadCpu)>, ProbeError> {
        let mut threads = Vec::new();
        for entry in self.threads.iter() {
            match entry {
                Ok(entry) => threads.push(entry),
                // Removed between listing its key and reading it.
                Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(ProbeError::Map { map: "thread_cpu", source }),
            }
        }
        Ok(threads)
    }

    /// KVM exits by reason since loading; `Err` says why they are not observed (no kvm_exit
    /// tracepoint, or it could not be attached).
    pub fn kvm_exits(&self) -> Result<Vec<(ExitKey, u64)>, &str> {
        let kvm = self.kvm.as_ref().map_err(String::as_str)?;
        Ok(kvm.exits.iter().filter_map(Result::ok).collect())
    }

    /// Switches on the kernel's run-time statistics of every BPF program (needed by
    /// [`Probes::sched_cost`]) until the returned guard drops.
    pub fn cost_stats() -> Result<CostStats, ProbeError> {
        enable_stats(Stats::RunTime)
            .map(|enabled| CostStats { _enabled: enabled })
            .map_err(ProbeError::Stats)
    }

    /// What the sched_switch probe has cost while run-time statistics were on.
    pub fn sched_cost(&self) -> Result<ProgramCost, ProbeError> {
        let program = "nexus_sched_switch";
        let query_err = |source| ProbeError::Program { program, action: "query", source };
        let loaded =
            self.sched.program(program).ok_or(ProgramError::NotLoaded).map_err(query_err)?;
        let info = loaded.info().map_err(query_err)?;
        Ok(ProgramCost { run_time: info.run_time(), runs: info.run_count() })
    }
}

/// What the sched_switch probe loaded by any process (e.g. a running backend) has cost while
/// run-time statistics were on; `None` if no such probe is loaded.
pub fn loaded_sched_cost() -> Result<Option<ProgramCost>, ProbeError> {
    const PROGRAM: &str = "nexus_sched_switch";
    for info in loaded_programs() {
        let info = info.map_err(|source| ProbeError::Program {
            program: PROGRAM,
            action: "list",
            source,
        })?;
        // The kernel keeps the first 15 bytes of a program's name.
        if info.name_as_str().is_some_and(|name| !name.is_empty() && PROGRAM.starts_with(name)) {
            return Ok(Some(ProgramCost { run_time: info.run_time(), runs: info.run_count() }));
        }
    }
    Ok(None)
}

impl Kvm {
    fn load() -> Result<Self, String> {
        if !Path::new(TRACEFS).join("events/kvm/kvm_exit").exists() {
            return Err("this kernel has no kvm:kvm_exit tracepoint (KVM not loaded)".into());
        }
        let mut object = Ebpf::load(KVM_OBJECT)
            .map_err(|source| ProbeError::Object { object: "kvm", source }.to_string())?;
        attach(&mut object, "nexus_kvm_exit", "kvm", "kvm_exit").map_err(|e| e.to_string())?;
        let exits = take_map(&mut object, "kvm_exits").map_err(|e| e.to_string())?;
        Ok(Self { _object: object, exits })
    }
}

/// Loads program `program` of `object` and attaches it to tracepoint `category:name`.
fn attach(
    object: &mut Ebpf,
    program: &'static str,
    category: &str,
    name: &str,
) -> Result<(), ProbeError> {
    let not_tracepoint = |source| ProbeError::Program { program, action: "find", source };
    let tracepoint: &mut TracePoint = object
        .program_mut(program)
        .ok_or(ProgramError::NotLoaded)
        .map_err(not_tracepoint)?
        .try_into()
        .map_err(not_tracepoint)?;
    tracepoint.load().map_err(|e| match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            ProbeError::Verifier { program, source: io_error, log: verifier_log.to_string() }
        }
        source => ProbeError::Program { program, action: "load", source },
    })?;
    tracepoint.attach(category, name).map_err(|source| ProbeError::Program {
        program,
        action: "attach",
        source,
    })?;
    Ok(())
}

fn take_map<K: aya::Pod, V: aya::Pod>(
    object: &mut Ebpf,
    map: &'static str,
) -> Result<HashMap<MapData, K, V>, ProbeError> {
    let found = object
        .take_map(map)
        .ok_or(MapError::InvalidName { name: map.into() })
        .map_err(|source| ProbeError::Map { map, source })?;
    HashMap::try_from(found).map_err(|source| ProbeError::Map { map, source })
}

/// Mounts tracefs where the kernel expects it, unless it is there already.
fn mount_tracefs() -> Result<(), ProbeError> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    const FS: &CStr = c"tracefs";
    const TARGET: &CStr = c"/sys/kernel/tracing";
    // SAFETY: every pointer is a NUL-terminated constant; a null `data` is allowed.
    let mounted =
        unsafe { libc::mount(FS.as_ptr(), TARGET.as_ptr(), FS.as_ptr(), 0, std::ptr::null()) };
    if mounted != 0 {
        return Err(ProbeError::Tracefs(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether the host has a hardware PMU that counts CPU cycles (perf's `cpu` event source).
/// Without one (VMs, PVM), the CPU the probes report is on-CPU time only.
pub fn has_cycles_pmu() -> bool {
    ["cpu", "cpu_core"].iter().any(|source| {
        Path::new("/sys/bus/event_source/devices").join(source).join("events/cpu-cycles").exists()
    })
}
