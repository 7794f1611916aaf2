//! Compiles the C probes in `probes/` into BPF objects in `OUT_DIR`, which `src/probes.rs`
//! embeds. CO-RE: the kernel's types come from a `vmlinux.h` that bpftool writes from this
//! machine's `/sys/kernel/btf/vmlinux` (or `$NEXUS_VMLINUX_BTF`); aya relocates field accesses
//! against the BTF of the kernel the probes load on.

use std::path::{Path, PathBuf};
use std::process::Command;

const PROBES: [&str; 2] = ["sched", "kvm"];
const DEFAULT_BTF: &str = "/sys/kernel/btf/vmlinux";

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let btf =
        std::env::var_os("NEXUS_VMLINUX_BTF").map_or(PathBuf::from(DEFAULT_BTF), PathBuf::from);
    println!("cargo:rerun-if-changed=probes");
    println!("cargo:rerun-if-env-changed=NEXUS_VMLINUX_BTF");
    if let Err(message) = build(&out, &btf) {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn build(out: &Path, btf: &Path) -> Result<(), String> {
    if !btf.exists() {
        return Err(format!(
            "{} is missing: the eBPF probes need a kernel built with CONFIG_DEBUG_INFO_BTF \
             (or set NEXUS_VMLINUX_BTF to a BTF file of the target kernel)",
            btf.display()
        ));
    }
    let header = run(
        "bpftool",
        "bpftool",
        Command::new("bpftool").arg("btf").arg("dump").arg("file").arg(btf).args(["format", "c"]),
    )?;
    std::fs::write(out.join("vmlinux.h"), header).map_err(|e| format!("write vmlinux.h: {e}"))?;
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        return Err(missing("libbpf headers (bpf/bpf_helpers.h)", "libbpf-dev"));
    }
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86",
        Ok("aarch64") => "arm64",
        Ok(other) => return Err(format!("no eBPF probes for target architecture {other}")),
        Err(_) => return Err("cargo did not set CARGO_CFG_TARGET_ARCH".into()),
    };
    for probe in PROBES {
        let source = Path::new("probes").join(format!("{probe}.bpf.c"));
        run(
            "clang",
            "clang",
            Command::new("clang")
                .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
                .arg(format!("-D__TARGET_ARCH_{arch}"))
                .arg("-I")
                .arg(out)
                .args(["-I", "probes", "-c"])
                .arg(&source)
                .arg("-o")
                .arg(out.join(format!("{probe}.bpf.o"))),
        )?;
    }
    Ok(())
}

/// Runs `command`; its stdout, or an error naming the Debian package that provides `tool`.
fn run(tool: &str, package: &str, command: &mut Command) -> Result<Vec<u8>, String> {
    let output = command.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => missing(tool, package),
        _ => format!("cannot run {tool}: {e}"),
    })?;
    if !output.status.success() {
        return Err(format!(
            "{tool} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(output.stdout)
}

fn missing(tool: &str, package: &str) -> String {
    format!(
        "{tool} is missing: building the eBPF probes needs it; install the Debian package \
         `{package}` (apt-get install clang bpftool libbpf-dev, or `cargo xtask setup`)"
    )
}
