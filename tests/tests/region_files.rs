//! Region files of a real backend: private to the backend's user in a directory it owns, and
//! those a killed backend left behind are removed when the next one starts, never reused.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nexus_tests::{nexus_binary, Backend};

const SETTINGS: &str = "storage: { url: \"file://{dir}/objects\" }\n";

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn region_files_are_private_and_what_a_crash_left_is_removed_at_start() {
    let mut backend = Backend::start(&nexus_binary(), SETTINGS, &[]).unwrap();
    let left = backend.create_region("thumbnailer").unwrap();
    let dir = left.parent().unwrap().to_owned();
    assert_eq!((mode(&dir), mode(&left)), (0o700, 0o600), "{}", left.display());

    backend.kill();
    assert!(left.exists(), "a killed backend leaves its region file");
    let planted = dir.join("thumbnailer-2.region");
    std::fs::write(&planted, b"not a region").unwrap();
    std::fs::write(dir.join("notes.txt"), b"kept").unwrap();
    backend.restart().unwrap();
    assert!(!left.exists() && !planted.exists(), "stale region files are removed at start");
    assert!(dir.join("notes.txt").exists(), "other files are left alone");
    assert!(
        backend.log().contains("Removed 2 region files an earlier backend left in"),
        "{}",
        backend.log_tail()
    );

    // The new backend numbers its regions from 1 again: a fresh file, not the old one.
    let again = backend.create_region("thumbnailer").unwrap();
    assert_eq!(again, left);
    assert_eq!(mode(&again), 0o600);
    assert!(backend.stop(), "{}", backend.log_tail());
}
