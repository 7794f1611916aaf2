//! Fingerprints of what goes into an image, to tell whether a cached build is still current.
//!
//! FNV-1a (64 bit) over labelled, length-prefixed fields: cheap, stable across Rust versions and
//! machines, and plenty for telling builds apart (it is a cache key, not a security check).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// A running fingerprint; [`Fingerprint::finish`] gives it as 16 hex digits.
#[derive(Debug, Clone)]
pub struct Fingerprint(u64);

impl Fingerprint {
    pub fn new() -> Self {
        Fingerprint(OFFSET)
    }

    /// Adds `bytes` under `label`; lengths are included, so fields cannot run into each other.
    pub fn add(&mut self, label: &str, bytes: &[u8]) {
        for field in [label.as_bytes(), bytes] {
            self.bytes(&(field.len() as u64).to_le_bytes());
            self.bytes(field);
        }
    }

    /// Adds the contents of `path`, labelled with its file name.
    pub fn file(&mut self, path: &Path) -> Result<()> {
        let bytes = fs::read(path).with_context(|| format!("Cannot read {}", path.display()))?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        self.add(&name, &bytes);
        Ok(())
    }

    pub fn finish(&self) -> String {
        format!("{:016x}", self.0)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(PRIME);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_do_not_run_into_each_other() {
        let mut a = Fingerprint::new();
        a.add("x", b"ab");
        a.add("y", b"c");
        let mut b = Fingerprint::new();
        b.add("x", b"a");
        b.add("y", b"bc");
        assert_ne!(a.finish(), b.finish());
    }

    #[test]
    fn fnv1a_reference_values() {
        // FNV-1a 64 of "" and "a" (from the FNV reference), so stored keys stay valid.
        assert_eq!(Fingerprint::new().finish(), "cbf29ce484222325");
        let mut a = Fingerprint::new();
        a.bytes(b"a");
        assert_eq!(a.finish(), "af63dc4c8601ec8c");
    }
}
