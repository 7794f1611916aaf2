//! The freestanding test guest (`tests/ch-guest/`, see its README): its C header of the region
//! layout, generated from the channel crate, and its build with gcc and ld, cached by content.
//!
//! ```text
//!  nexus_channel constants ──layout_header()──► nexus_layout.h ─┐
//!  tests/ch-guest/{entry.S, guest.c, guest.ld} ─────────────────┴─► gcc -c, ld -T
//!      ──► <target>/nexus-test-guest/<hash of all inputs>/guest.elf   (a PVH ELF)
//! ```
//! The header holds only numbers taken from the Rust definitions (`offset_of!`, the layout
//! constants), so the C side cannot drift from them; the test at the bottom compiles it on the
//! host and checks the ring arithmetic it adds against a real region.

use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::mem::offset_of;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::{env, fs};

use nexus_channel::layout::{
    header, host_state, result_status, CallDesc, CompletionDesc, GeometryLine, Header,
    InvocationDesc, ResultDesc, RingId, CACHE_LINE, DESC_SIZE, HEADER_SIZE, MAGIC, VERSION,
};
use nexus_channel::staging::DIRECTORY_SIZE;
use nexus_channel::wire::{flags, Op, Status};

use crate::HarnessError;

/// The guest's sources, relative to the workspace root.
const SOURCES: [&str; 3] =
    ["tests/ch-guest/entry.S", "tests/ch-guest/guest.c", "tests/ch-guest/guest.ld"];
/// How gcc compiles the guest: freestanding, no SSE (see FIELD-NOTES: SSE kills the vCPU under
/// this machine's KVM), no red zone (no interrupts here, but no surprises), absolute addresses.
const CFLAGS: [&str; 11] = [
    "-ffreestanding",
    "-mgeneral-regs-only",
    "-fno-pie",
    "-mno-red-zone",
    "-fno-stack-protector",
    "-fno-builtin",
    "-fno-asynchronous-unwind-tables",
    "-fno-tree-loop-distribute-patterns",
    "-O2",
    "-Wall",
    "-Werror",
];

/// The C header of the region layout, generated from the channel crate.
pub fn layout_header() -> String {
    let geometry = |field: usize| offset_of!(Header, geometry) + field;
    let defines: Vec<(&str, String)> = vec![
        ("NX_MAGIC", format!("{MAGIC:#x}ull")),
        ("NX_VERSION", VERSION.to_string()),
        ("NX_DESC_SIZE", DESC_SIZE.to_string()),
        ("NX_GEO_MAGIC", geometry(offset_of!(GeometryLine, magic)).to_string()),
        ("NX_GEO_VERSION", geometry(offset_of!(GeometryLine, version)).to_string()),
        ("NX_GEO_RING_CAPACITY", geometry(offset_of!(GeometryLine, ring_capacity)).to_string()),
        ("NX_GEO_REGION_SIZE", geometry(offset_of!(GeometryLine, region_size)).to_string()),
        ("NX_GEO_DATA_OFFSET", geometry(offset_of!(GeometryLine, data_offset)).to_string()),
        ("NX_GEO_BUFFER_SIZE", geometry(offset_of!(GeometryLine, buffer_size)).to_string()),
        ("NX_GEO_BUFFER_COUNT", geometry(offset_of!(GeometryLine, buffer_count)).to_string()),
        ("NX_GEO_GUEST_BUFFERS", geometry(offset_of!(GeometryLine, guest_buffers)).to_string()),
        ("NX_GEO_STAGING_OFFSET", geometry(offset_of!(GeometryLine, staging_offset)).to_string()),
        ("NX_GEO_STAGING_SIZE", geometry(offset_of!(GeometryLine, staging_size)).to_string()),
        ("NX_EPOCH", header::EPOCH.to_string()),
        ("NX_HOST_STATE", header::HOST_STATE.to_string()),
        ("NX_DIRECTORY_LEN", header::DIRECTORY_LEN.to_string()),
        ("NX_EPOCH_ACK", header::EPOCH_ACK.to_string()),
        ("NX_HOST_READY", host_state::READY.to_string()),
        ("NX_RING_CALLS", (RingId::Calls as u32).to_string()),
        ("NX_RING_COMPLETIONS", (RingId::Completions as u32).to_string()),
        ("NX_RING_INVOCATIONS", (RingId::Invocations as u32).to_string()),
        ("NX_RING_RESULTS", (RingId::Results as u32).to_string()),
        // channel/src/ring.rs: producer index line, consumer index line, then the slots.
        ("NX_RING_PRODUCER", "0".into()),
        ("NX_RING_CONSUMER", CACHE_LINE.to_string()),
        ("NX_RING_SLOTS", (2 * CACHE_LINE).to_string()),
        (
            "NX_RING_OFFSET(capacity, ring)",
            format!(
                "({HEADER_SIZE}ull + (unsigned long long)(ring) * ({}ull + (unsigned long long)(capacity) * {DESC_SIZE}ull))",
                2 * CACHE_LINE
            ),
        ),
        ("NX_CALL_TAG", offset_of!(CallDesc, tag).to_string()),
        ("NX_CALL_OP", offset_of!(CallDesc, op).to_string()),
        ("NX_CALL_BUFFER", offset_of!(CallDesc, buffer).to_string()),
        ("NX_CALL_BUCKET_LEN", offset_of!(CallDesc, bucket_len).to_string()),
        ("NX_CALL_KEY_LEN", offset_of!(CallDesc, key_len).to_string()),
        ("NX_CALL_STREAM", offset_of!(CallDesc, stream).to_string()),
        ("NX_COMPLETION_TAG", offset_of!(CompletionDesc, tag).to_string()),
        ("NX_COMPLETION_STATUS", offset_of!(CompletionDesc, status).to_string()),
        ("NX_COMPLETION_FLAGS", offset_of!(CompletionDesc, flags).to_string()),
        ("NX_COMPLETION_META_LEN", offset_of!(CompletionDesc, meta_len).to_string()),
        ("NX_COMPLETION_BODY_LEN", offset_of!(CompletionDesc, body_len).to_string()),
        ("NX_COMPLETION_STREAM", offset_of!(CompletionDesc, stream).to_string()),
        ("NX_INVOCATION_ID", offset_of!(InvocationDesc, id).to_string()),
        ("NX_INVOCATION_BUFFER", offset_of!(InvocationDesc, buffer).to_string()),
        ("NX_INVOCATION_LEN", offset_of!(InvocationDesc, len).to_string()),
        ("NX_RESULT_ID", offset_of!(ResultDesc, id).to_string()),
        ("NX_RESULT_BUFFER", offset_of!(ResultDesc, buffer).to_string()),
        ("NX_RESULT_STATUS", offset_of!(ResultDesc, status).to_string()),
        ("NX_RESULT_LEN", offset_of!(ResultDesc, len).to_string()),
        ("NX_RESULT_OK", result_status::OK.to_string()),
        ("NX_OP_PING", (Op::Ping as u16).to_string()),
        ("NX_OP_GET", (Op::Get as u16).to_string()),
        ("NX_OP_READ", (Op::Read as u16).to_string()),
        ("NX_STATUS_OK", (Status::Ok as u16).to_string()),
        ("NX_FLAG_MORE", flags::MORE.to_string()),
        ("NX_STAGING_DIRECTORY_SIZE", format!("{DIRECTORY_SIZE}ull")),
    ];
    let mut text = String::from(
        "/* Generated by nexus-tests (tests/src/test_guest.rs) from the channel crate: do not edit. */\n\
         #ifndef NEXUS_LAYOUT_H\n#define NEXUS_LAYOUT_H\n",
    );
    for (name, value) in defines {
        let _ = writeln!(text, "#define {name} {value}");
    }
    text + "#endif\n"
}

/// The test guest's ELF, built on first use (at most once per process; an unchanged build is
/// reused from the target directory).
pub fn test_guest() -> Result<PathBuf, HarnessError> {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PATH.get_or_init(|| build().map_err(|e| e.to_string()))
        .clone()
        .map_err(|detail| HarnessError::Build { what: "the test guest".into(), detail })
}

fn build() -> Result<PathBuf, HarnessError> {
    let root = crate::artifacts::workspace_root();
    let header = layout_header();
    let mut hasher = DefaultHasher::new();
    (header.as_str(), CFLAGS).hash(&mut hasher);
    for source in SOURCES {
        let text =
            fs::read(root.join(source)).map_err(HarnessError::io(format!("read {source}")))?;
        (source, text).hash(&mut hasher);
    }
    let target = env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let dir = target.join("nexus-test-guest").join(format!("{:016x}", hasher.finish()));
    let elf = dir.join("guest.elf");
    if elf.is_file() {
        return Ok(elf);
    }
    let work = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(HarnessError::io(format!("create {}", work.display())))?;
    fs::write(work.join("nexus_layout.h"), header)
        .map_err(HarnessError::io("write nexus_layout.h"))?;
    for (source, object) in [(SOURCES[0], "entry.o"), (SOURCES[1], "guest.o")] {
        let mut gcc = Command::new("gcc");
        gcc.args(CFLAGS).arg("-I").arg(&work).arg("-c").arg(root.join(source));
        gcc.arg("-o").arg(work.join(object));
        run(gcc)?;
    }
    let mut ld = Command::new("ld");
    ld.args(["-nostdlib", "-static", "-no-pie", "--no-warn-rwx-segments", "-T"]);
    ld.arg(root.join(SOURCES[2]))
        .args(["entry.o", "guest.o", "-o", "guest.elf"])
        .current_dir(&work);
    run(ld)?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&work, &dir)
        .map_err(HarnessError::io(format!("move {} into place", work.display())))?;
    Ok(elf)
}

/// Runs a build step; its output becomes the error if it fails.
fn run(mut command: Command) -> Result<(), HarnessError> {
    let what = format!("{command:?}");
    let output = command.output().map_err(HarnessError::io(format!("run {what}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(HarnessError::Build {
        what: "the test guest".into(),
        detail: format!(
            "{what} exited with {}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nexus_channel::{Consumer, Geometry, Producer, Region};

    use super::*;

    /// Compiles a host program with the generated header that prints the ring offsets it
    /// computes, and checks them against where the channel crate's rings really write.
    #[test]
    fn the_c_ring_arithmetic_matches_the_channel_crate() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("nexus_layout.h"), layout_header()).unwrap();
        let program = r#"
            #include <stdio.h>
            #include "nexus_layout.h"
            int main(void) {
                unsigned capacities[] = {2, 64, 4096};
                for (int c = 0; c < 3; c++)
                    for (int r = 0; r < 4; r++)
                        printf("%u %d %llu\n", capacities[c], r, NX_RING_OFFSET(capacities[c], r));
                printf("%d %d %d\n", NX_RING_PRODUCER, NX_RING_CONSUMER, NX_RING_SLOTS);
                return 0;
            }"#;
        fs::write(dir.path().join("check.c"), program).unwrap();
        let status = Command::new("gcc")
            .current_dir(dir.path())
            .args(["-Wall", "-Werror", "-o", "check", "check.c"])
            .status()
            .expect("gcc runs");
        assert!(status.success());
        let output = Command::new(dir.path().join("check")).output().unwrap();
        let text = String::from_utf8(output.stdout).unwrap();
        let mut lines = text.lines();
        for capacity in [2u32, 64, 4096] {
            let geometry = Geometry::new(64 << 20, 4096, capacity, 1).unwrap();
            for ring in [RingId::Calls, RingId::Completions, RingId::Invocations, RingId::Results] {
                let expected = format!("{capacity} {} {}", ring as u32, geometry.ring_offset(ring));
                assert_eq!(lines.next(), Some(expected.as_str()));
            }
        }
        let words: Vec<usize> =
            lines.next().unwrap().split(' ').map(|w| w.parse().unwrap()).collect();
        let (producer, consumer, slots) = (words[0], words[1], words[2]);

        // A real ring writes its indices and slots where the C side looks for them.
        let geometry = Geometry::new(1 << 20, 4096, 8, 1).unwrap();
        let region = Arc::new(Region::create(&dir.path().join("r"), &geometry).unwrap());
        let base = geometry.ring_offset(RingId::Calls);
        let mut calls = Producer::<CallDesc>::new(region.clone(), &geometry, RingId::Calls);
        let mut taker = Consumer::<CallDesc>::new(region.clone(), &geometry, RingId::Calls);
        calls.push(&CallDesc { tag: 0xfeed, op: Op::Get as u16, ..CallDesc::default() }).unwrap();
        assert_eq!(region.load_u32(base + producer).unwrap(), 1);
        let slot: CallDesc = region.read(base + slots).unwrap();
        assert_eq!((slot.tag, slot.op), (0xfeed, Op::Get as u16));
        taker.pop().unwrap().unwrap();
        assert_eq!(region.load_u32(base + consumer).unwrap(), 1);
    }
}
