//! What `cargo xtask bench cold --vmm` changes: the VMM, the guest that runs as the function,
//! the event it gets and what its answer says it read.
//!
//! ```text
//!  qemu              the Python function (`examples/bench/io.py`) in the Nexus image
//!  cloud-hypervisor  the freestanding test guest (`tests/ch-guest`) as the image's kernel
//!                    (empty initramfs and disks): {"prefer_staged": true, "hash": false}
//! ```

use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use super::stack::BUCKET;

/// The VMM and guest of the cold starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColdVmm {
    /// The Python function in the Nexus image, under QEMU.
    #[default]
    Qemu,
    /// The test guest under Cloud Hypervisor (needs a KVM that runs guests).
    CloudHypervisor,
}

impl ColdVmm {
    pub fn name(self) -> &'static str {
        match self {
            ColdVmm::Qemu => "qemu",
            ColdVmm::CloudHypervisor => "cloud-hypervisor",
        }
    }

    /// The function's code folder, from the workspace root.
    pub fn code(self) -> &'static str {
        match self {
            ColdVmm::Qemu => "guest/python/examples/bench",
            // Any code: the test guest ignores it and serves the invocation itself.
            ColdVmm::CloudHypervisor => "tests/fixtures",
        }
    }

    pub fn handler(self) -> &'static str {
        match self {
            ColdVmm::Qemu => "io.py:handler",
            ColdVmm::CloudHypervisor => "echo.py:handler",
        }
    }

    pub fn memory_mib(self) -> u32 {
        match self {
            ColdVmm::Qemu => 512,
            ColdVmm::CloudHypervisor => 64,
        }
    }

    /// The invocation's event for input `key`.
    pub fn event(self, key: &str) -> Value {
        match self {
            ColdVmm::Qemu => json!({ "bucket": BUCKET, "key": key }),
            // Reading the bytes would measure this machine's KVM (see `function_note`).
            ColdVmm::CloudHypervisor => {
                json!({ "bucket": BUCKET, "key": key, "prefer_staged": true, "hash": false })
            }
        }
    }

    /// The section of docs/BENCHMARKS.md.
    pub fn table(self) -> &'static str {
        match self {
            ColdVmm::Qemu => "cold",
            ColdVmm::CloudHypervisor => "cold-ch",
        }
    }

    /// What the title says of the guest, before the accelerator.
    pub fn guest(self) -> &'static str {
        match self {
            ColdVmm::Qemu => "",
            ColdVmm::CloudHypervisor => "the test guest on Cloud Hypervisor, ",
        }
    }

    /// What the notes say of the function and the baseline column.
    pub fn function_note(self) -> &'static str {
        match self {
            ColdVmm::Qemu => {
                "The \"baseline\" column is (b) for the cold rows and strict for the write-back \
                 row (the spool drained between rounds). The function \
                 (`guest/python/examples/bench/io.py`) reads its input from a Garage S3 server \
                 through the backend (its cache off) and computes its CRC-32; \"input read\" is \
                 its own timing of `get_object(...)[\"Body\"].read()`. In (c) an input that is \
                 in before the VM takes the invocation is copied into the region's staging area \
                 meanwhile and read in place, without a call; one still arriving is streamed to \
                 the handler's `Get` as it arrives, not fetched again."
            }
            ColdVmm::CloudHypervisor => {
                "The \"baseline\" column is (b). The function's kernel is the freestanding test \
                 guest (`tests/ch-guest`, 64 MiB of memory), restored by Cloud Hypervisor on \
                 demand (its memory faulted in as the guest touches it), on KVM: guest code at \
                 hardware speed, as on a production node. Its input comes from a Garage S3 server \
                 through the backend (its cache off): in place if the host staged it, else with a \
                 `Get` and `Read`s of its stream through 4 MiB buffers, as the shim does. In (c) \
                 an input that is in before the restore ends is staged meanwhile; one still \
                 arriving is streamed to the guest's `Get` as it arrives, not fetched again. The \
                 guest does not read the bytes themselves (`\"hash\": false`): on this machine's \
                 paravirtual KVM its loads from the region cost about 9 µs each, where a hardware \
                 KVM reads 64 MiB in milliseconds, the same in (b) and (c). It has no doorbell \
                 driver: it naps on its x2APIC timer between polls, and the backend's serving \
                 thread spins for its calls, one of this machine's two cores."
            }
        }
    }

    /// The bytes of its input the function read, and how long its read took (as the
    /// handler timed it; the test guest has no clock).
    pub fn input_read(self, result: &Value) -> (Option<u64>, Option<f64>) {
        match self {
            ColdVmm::Qemu => (result["input_bytes"].as_u64(), result["read_seconds"].as_f64()),
            ColdVmm::CloudHypervisor => {
                let read = [&result["staged"]["bytes"], &result["get"]["bytes"]];
                (read.iter().find_map(|bytes| bytes.as_u64()), None)
            }
        }
    }
}

/// An image folder whose kernel is the test guest: it ignores the initramfs and disks (empty
/// stand-ins) and serves invocations itself.
pub fn test_guest_image(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::copy(nexus_tests::test_guest()?, dir.join("vmlinux"))?;
    std::fs::write(dir.join("initrd.img"), [0u8; 4096])?;
    std::fs::write(dir.join("rootfs.ext4"), vec![0u8; 1 << 20])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_guest_read_its_input_in_place_or_through_its_get() {
        let vmm = ColdVmm::CloudHypervisor;
        let staged = json!({ "get": null, "staged": { "bytes": 16 } });
        let streamed = json!({ "get": { "status": 0, "bytes": 16, "chunks": 1 }, "staged": null });
        assert_eq!(vmm.input_read(&staged), (Some(16), None));
        assert_eq!(vmm.input_read(&streamed), (Some(16), None));
        assert_eq!(vmm.input_read(&json!({ "get": null, "staged": null })), (None, None));
        let python = json!({ "input_bytes": 16, "read_seconds": 0.5 });
        assert_eq!(ColdVmm::Qemu.input_read(&python), (Some(16), Some(0.5)));
        assert_eq!(vmm.event("k")["prefer_staged"], true, "(c) reads a staged input in place");
    }
}
