//! The harness builds the backend binary and the guest library from inside a test run.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use nexus_tests::{guest_lib, nexus_binary};

const ELF_MAGIC: &[u8] = b"\x7fELF";

#[test]
fn nexus_binary_is_an_executable() {
    let path = nexus_binary();
    assert_eq!(path.file_name().and_then(|n| n.to_str()), Some("nexus"));
    let mode = fs::metadata(&path).expect("stat nexus").permissions().mode();
    assert_ne!(mode & 0o111, 0, "{} is not executable", path.display());
    assert!(fs::read(&path).expect("read nexus").starts_with(ELF_MAGIC));
    assert_eq!(nexus_binary(), path, "a second call gives another path");
}

#[test]
fn guest_lib_is_a_shared_object() {
    let path = guest_lib();
    assert_eq!(path.file_name().and_then(|n| n.to_str()), Some("libnexus_guest.so"));
    assert!(fs::read(&path).expect("read guest lib").starts_with(ELF_MAGIC));
}
