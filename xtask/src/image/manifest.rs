//! `manifest.json` of an image, written last so that its presence means the image is complete:
//!
//! ```json
//! {"flavour": "nexus", "kernel_version": "6.1.0-48-cloud-amd64", "inputs": "<16 hex digits>",
//!  "built_at": "2025-01-31T12:00:00Z",
//!  "sizes": {"vmlinuz": 1, "vmlinux": 2, "initrd": 3, "rootfs": 4}}
//! ```
//!
//! Sizes are bytes; `inputs` is the fingerprint of everything that went into the image.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use super::{Flavour, ImagePaths};

const FILE: &str = "manifest.json";

/// Writes the manifest of the image at `paths`.
pub fn write(paths: &ImagePaths, flavour: Flavour, kernel: &str, inputs: &str) -> Result<()> {
    let mut sizes = Vec::new();
    for (name, path) in paths.files() {
        sizes.push(format!("\"{name}\": {}", fs::metadata(path)?.len()));
    }
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let text = format!(
        "{{\n  \"flavour\": \"{}\",\n  \"kernel_version\": \"{kernel}\",\n  \"inputs\": \"{inputs}\",\n  \"built_at\": \"{}\",\n  \"sizes\": {{{}}}\n}}\n",
        flavour.name(),
        utc(seconds),
        sizes.join(", "),
    );
    let path = paths.dir.join(FILE);
    fs::write(&path, text).with_context(|| format!("Cannot write {}", path.display()))
}

/// The `inputs` fingerprint recorded in `dir`'s manifest, if there is one.
pub fn inputs(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join(FILE)).ok()?;
    let (_, rest) = text.split_once("\"inputs\": \"")?;
    Some(rest.split_once('"')?.0.to_owned())
}

/// Removes `dir`'s manifest: the image is being rebuilt.
pub fn remove(dir: &Path) -> Result<()> {
    match fs::remove_file(dir.join(FILE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// `seconds` since the Unix epoch as an RFC 3339 UTC time.
fn utc(seconds: u64) -> String {
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (non-negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let (hour, minute, second) = (rest / 3600, rest % 3600 / 60, rest % 60);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_767_225_599), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn written_inputs_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let paths = ImagePaths::new(dir.path().to_path_buf());
        for (_, path) in paths.files() {
            fs::write(path, "12345").unwrap();
        }
        write(&paths, Flavour::Baseline, "6.1.0-48-cloud-amd64", "00ff").unwrap();
        let text = fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(text.contains("\"flavour\": \"baseline\""), "{text}");
        assert!(text.contains("\"rootfs\": 5"), "{text}");
        assert_eq!(inputs(dir.path()).as_deref(), Some("00ff"));
        remove(dir.path()).unwrap();
        assert_eq!(inputs(dir.path()), None);
    }
}
