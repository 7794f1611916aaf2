//! The staging area: objects the host put in the region before an invocation, which the guest
//! reads in place without a call.
//!
//! On a cold start the backend fetches the objects an invocation's hints name while the VM
//! restores, then copies them here; the guest's `get_object` of one of them finds it in the
//! directory and reads the bytes where they lie: no call, no round trip.
//!
//! ```text
//!  staging_offset ┌────────────────────────────────────────────────────────────┐
//!                 │ directory (DIRECTORY_SIZE bytes): JSON, directory_len long │
//!                 │   {"objects": [{"bucket", "key", "offset", "size", "meta"}]}│
//!                 ├────────────────────────────────────────────────────────────┤
//!                 │ object bytes, each at its entry's `offset` (from the start │
//!                 │ of the area, 64-byte aligned), `size` long                 │
//!  region_size    └────────────────────────────────────────────────────────────┘
//! ```
//! `meta` is what a `Get` reply's meta would hold (see [`crate::wire`]).
//!
//! Protocol: the host writes the objects and the directory, then stores the directory's length
//! in the header (release); a guest that loads a non-zero length (acquire) may read them. The
//! host stores 0 when the invocation they were staged for ends, after which the guest calls
//! the host as usual. The host writes a region's staging area at most once, so bytes a guest
//! is still reading never change under it. The guest checks every offset it is given against
//! the area: a host bug cannot make it read outside the region.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::layout::{header, Geometry};
use crate::region::{Region, RegionError};

/// Bytes at the start of the staging area kept for the directory.
pub const DIRECTORY_SIZE: u64 = 64 << 10;
/// Alignment of each staged object.
const OBJECT_ALIGN: u64 = 64;

/// Errors reading the staging area.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// The region could not be accessed.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// The directory is not one the host could have written.
    #[error("Staging directory is invalid: {0}")]
    Directory(String),
}

/// One staged object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub bucket: String,
    pub key: String,
    /// Where its bytes start, from the start of the staging area.
    pub offset: u64,
    pub size: u64,
    /// The meta of a `Get` reply for it.
    pub meta: Value,
}

/// The directory at the start of the staging area.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Directory {
    pub objects: Vec<Entry>,
}

/// A staged object as the guest finds it: its meta, and where its bytes lie in the region.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    pub meta: Value,
    pub region_offset: usize,
    pub size: usize,
}

/// Host side: places objects in the staging area of a region with geometry `geometry`.
#[derive(Debug)]
pub struct Stager {
    directory: Directory,
    directory_len: u64,
    next: u64,
    end: u64,
    base: u64,
}

impl Stager {
    pub fn new(geometry: &Geometry) -> Self {
        Self {
            directory: Directory::default(),
            directory_len: serde_json::to_vec(&Directory::default()).map_or(0, |d| d.len() as u64),
            next: DIRECTORY_SIZE,
            end: geometry.staging_size,
            base: geometry.staging_offset(),
        }
    }

    /// Finds room for an object of `size` bytes; returns the region offset to copy it to, or
    /// `None` when the area (or its directory) has no room left for it.
    pub fn place(&mut self, bucket: &str, key: &str, size: u64, meta: Value) -> Option<usize> {
        let end = self.next.checked_add(size)?;
        if end > self.end {
            return None;
        }
        let entry = Entry { bucket: bucket.into(), key: key.into(), offset: self.next, size, meta };
        let entry_len = serde_json::to_vec(&entry).ok()?.len() as u64 + 1;
        if self.directory_len + entry_len > DIRECTORY_SIZE {
            return None;
        }
        let at = usize::try_from(self.base + self.next).ok()?;
        self.directory_len += entry_len;
        self.directory.objects.push(entry);
        self.next = end.next_multiple_of(OBJECT_ALIGN);
        Some(at)
    }

    /// Writes the directory of what was placed and publishes it; call once the objects' bytes
    /// are in place. Returns how many objects were published.
    pub fn publish(self, region: &Region) -> Result<usize, RegionError> {
        if self.directory.objects.is_empty() {
            return Ok(0);
        }
        let json = serde_json::to_vec(&self.directory).expect("a directory serializes");
        region.copy_in(self.base as usize, &json)?;
        region.atomic_u64(header::DIRECTORY_LEN)?.store(json.len() as u64, Ordering::Release);
        Ok(self.directory.objects.len())
    }
}

/// Host side: withdraws whatever was staged; the guest's later reads are calls again.
pub fn retract(region: &Region) -> Result<(), RegionError> {
    region.atomic_u64(header::DIRECTORY_LEN)?.store(0, Ordering::Release);
    Ok(())
}

/// Guest side: the staged object `bucket/key`, if the host staged it.
pub fn lookup(
    region: &Region,
    geometry: &Geometry,
    bucket: &str,
    key: &str,
) -> Result<Option<Found>, StagingError> {
    let len = region.atomic_u64(header::DIRECTORY_LEN)?.load(Ordering::Acquire);
    if len == 0 {
        return Ok(None);
    }
    if len > DIRECTORY_SIZE || len > geometry.staging_size {
        return Err(StagingError::Directory(format!("{len} bytes long")));
    }
    let mut json = vec![0; len as usize];
    region.copy_out(geometry.staging_offset() as usize, &mut json)?;
    let directory: Directory =
        serde_json::from_slice(&json).map_err(|e| StagingError::Directory(e.to_string()))?;
    let Some(entry) = directory.objects.into_iter().find(|e| e.bucket == bucket && e.key == key)
    else {
        return Ok(None);
    };
    match entry.offset.checked_add(entry.size) {
        Some(end) if entry.offset >= DIRECTORY_SIZE && end <= geometry.staging_size => {
            Ok(Some(Found {
                meta: entry.meta,
                region_offset: (geometry.staging_offset() + entry.offset) as usize,
                size: entry.size as usize,
            }))
        }
        _ => Err(StagingError::Directory(format!(
            "{bucket}/{key} at {} + {} lies outside the area",
            entry.offset, entry.size
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn region(staging: u64) -> (tempfile::TempDir, Region, Geometry) {
        let dir = tempfile::tempdir().unwrap();
        let geometry = Geometry::with_staging(4 << 20, 64 << 10, 8, 1, staging).unwrap();
        let region = Region::create(&dir.path().join("r"), &geometry).unwrap();
        (dir, region, geometry)
    }

    #[test]
    fn staged_objects_are_found_in_place_until_retracted() {
        let (_dir, region, geometry) = region(1 << 20);
        let mut stager = Stager::new(&geometry);
        let a = stager.place("b", "a", 3, json!({ "ETag": "\"1\"" })).unwrap();
        let c = stager.place("b", "c", 5, json!({})).unwrap();
        assert_eq!(c - a, OBJECT_ALIGN as usize, "objects are 64-byte aligned");
        region.copy_in(a, b"abc").unwrap();
        region.copy_in(c, b"hello").unwrap();
        assert_eq!(lookup(&region, &geometry, "b", "a").unwrap(), None, "not yet published");
        assert_eq!(stager.publish(&region).unwrap(), 2);

        let found = lookup(&region, &geometry, "b", "c").unwrap().unwrap();
        let mut bytes = vec![0; found.size];
        region.copy_out(found.region_offset, &mut bytes).unwrap();
        assert_eq!(bytes, b"hello");
        assert_eq!(lookup(&region, &geometry, "b", "a").unwrap().unwrap().meta["ETag"], "\"1\"");
        assert_eq!(lookup(&region, &geometry, "b", "nope").unwrap(), None);
        retract(&region).unwrap();
        assert_eq!(lookup(&region, &geometry, "b", "c").unwrap(), None);
    }

    #[test]
    fn objects_that_do_not_fit_are_not_placed() {
        let (_dir, _region, geometry) = region(128 << 10);
        let mut stager = Stager::new(&geometry);
        assert_eq!(stager.place("b", "big", (64 << 10) + 1, json!({})), None);
        assert!(stager.place("b", "fits", 64 << 10, json!({})).is_some());
        assert_eq!(stager.place("b", "one more", 1, json!({})), None);
        let (_dir, _region, none) = region(0);
        assert_eq!(Stager::new(&none).place("b", "k", 0, json!({})), None);
    }

    #[test]
    fn a_directory_pointing_outside_the_area_is_an_error() {
        let (_dir, region, geometry) = region(128 << 10);
        for (offset, size) in [(DIRECTORY_SIZE, 1 << 20), (0, 4), (u64::MAX, 2)] {
            let entry =
                Entry { bucket: "b".into(), key: "k".into(), offset, size, meta: json!({}) };
            let json = serde_json::to_vec(&Directory { objects: vec![entry] }).unwrap();
            region.copy_in(geometry.staging_offset() as usize, &json).unwrap();
            region
                .atomic_u64(header::DIRECTORY_LEN)
                .unwrap()
                .store(json.len() as u64, Ordering::Release);
            let error = lookup(&region, &geometry, "b", "k").unwrap_err();
            assert!(error.to_string().contains("outside the area"), "{error}");
        }
        region
            .atomic_u64(header::DIRECTORY_LEN)
            .unwrap()
            .store(DIRECTORY_SIZE + 1, Ordering::Release);
        assert!(lookup(&region, &geometry, "b", "k").is_err());
        region.atomic_u64(header::DIRECTORY_LEN).unwrap().store(3, Ordering::Release);
        assert!(lookup(&region, &geometry, "b", "k").is_err(), "not JSON");
    }
}
