//! A mapped region and the only ways to touch it: bounds-checked atomic words, volatile copies
//! of plain data and of byte runs in and out ([`crate::volatile`]), and raw spans for zero-copy
//! readers. No `&`/`&mut` to region bytes is ever handed out, because the peer may change them
//! at any moment.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicU32, AtomicU64};

use memmap2::{MmapOptions, MmapRaw};

use crate::layout::{
    header, host_state, Geometry, GeometryError, Header, Plain, RingId, CACHE_LINE, HEADER_SIZE,
};
use crate::volatile;

/// Errors from creating, opening or accessing a region.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// The region file could not be created, opened, sized or mapped.
    #[error("Cannot map region {path}")]
    Map {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The region's header is not a valid Nexus header.
    #[error("Invalid region {path}")]
    Header {
        path: PathBuf,
        #[source]
        source: GeometryError,
    },
    /// An access would leave the mapping.
    #[error("Access of {len} bytes at offset {offset} is outside the {size}-byte region")]
    OutOfBounds { offset: usize, len: usize, size: usize },
    /// An atomic word is not naturally aligned.
    #[error("Atomic access at offset {0} is misaligned")]
    Misaligned(usize),
    /// Pages of the region could not be freed.
    #[error("Cannot free {len} bytes at offset {offset} of region {path}")]
    Discard {
        path: PathBuf,
        offset: usize,
        len: usize,
        #[source]
        source: io::Error,
    },
}

/// A shared-memory region mapped into this process.
#[derive(Debug)]
pub struct Region {
    map: MmapRaw,
    path: PathBuf,
}

impl Region {
    /// Creates the region file at `path` (mode 0600; it must not exist yet, and a symlink
    /// there is not followed), sizes it, maps it and writes a fresh header for `geometry` in the
    /// `INIT` host state (host side). The backend creates its regions with
    /// [`Region::create_in_file`] in the directory it owns.
    pub fn create(path: &Path, geometry: &Geometry) -> Result<Self, RegionError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| RegionError::Map { path: path.to_owned(), source })?;
        Self::create_in_file(&file, path, geometry)
    }

    /// Makes the region in `file`, which the caller has just created empty at `path`: sizes,
    /// maps and initializes it as [`Region::create`] does.
    pub fn create_in_file(
        file: &File,
        path: &Path,
        geometry: &Geometry,
    ) -> Result<Self, RegionError> {
        let map_err = |source| RegionError::Map { path: path.to_owned(), source };
        file.set_len(geometry.region_size).map_err(map_err)?;
        let region = Self::map(file, path, geometry.region_size)?;
        region.initialize(geometry)?;
        Ok(region)
    }

    /// Writes a fresh header for `geometry` (host state `INIT`, epoch 0) and zeroes every ring's
    /// indices, whatever the region held (e.g. a snapshot's old contents after a VM restore).
    pub fn initialize(&self, geometry: &Geometry) -> Result<(), RegionError> {
        let header = Header { geometry: geometry.to_line(), ..Header::default() };
        self.write(0, &header)?;
        for ring in [RingId::Calls, RingId::Completions, RingId::Invocations, RingId::Results] {
            let base = geometry.ring_offset(ring);
            self.store_u32(base, 0)?;
            self.store_u32(base + CACHE_LINE, 0)?;
        }
        self.store_u32(header::HOST_STATE, host_state::INIT)
    }

    /// Maps an existing region (guest side: a `/dev/shm` file or a PCI `resource2`) and
    /// validates the geometry the host published in its header.
    pub fn open(path: &Path) -> Result<(Self, Geometry), RegionError> {
        let map_err = |source| RegionError::Map { path: path.to_owned(), source };
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(map_err)?;
        let len = file.metadata().map_err(map_err)?.len();
        let region = Self::map(&file, path, len)?;
        let header: Header = region.read(0)?;
        let geometry = Geometry::from_header(&header.geometry, len)
            .map_err(|source| RegionError::Header { path: path.to_owned(), source })?;
        Ok((region, geometry))
    }

    fn map(file: &File, path: &Path, len: u64) -> Result<Self, RegionError> {
        let map_err = |source| RegionError::Map { path: path.to_owned(), source };
        let len = usize::try_from(len)
            .map_err(|_| map_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
        let map = MmapOptions::new().len(len).map_raw(file).map_err(map_err)?;
        Ok(Self { map, path: path.to_owned() })
    }

    /// The file this region was mapped from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Mapped length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the mapping is empty (never true for a valid region).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Frees the pages among `len` bytes at `offset` (whole pages) that hold only zeros: what
    /// anyone reads does not change, and they cost nothing until written again. A VMM restoring
    /// a snapshot writes every page of the region, zeros included. Returns the bytes freed.
    pub fn discard_zero_pages(&self, offset: usize, len: usize) -> Result<usize, RegionError> {
        let end = offset.checked_add(len).filter(|&end| end <= self.map.len());
        let Some(end) = end.filter(|_| offset % HEADER_SIZE == 0 && len % HEADER_SIZE == 0) else {
            let source = io::Error::from(io::ErrorKind::InvalidInput);
            return Err(RegionError::Discard { path: self.path.clone(), offset, len, source });
        };
        let (mut page, mut run_start, mut freed) = ([0u8; HEADER_SIZE], None, 0);
        for at in (offset..end).step_by(HEADER_SIZE).chain([end]) {
            let zero = at < end && {
                self.copy_out(at, &mut page)?;
                page.iter().fold(0, |any, &b| any | b) == 0
            };
            match (zero, run_start) {
                (true, None) => run_start = Some(at),
                (false, Some(start)) => {
                    self.discard(start, at - start)?;
                    freed += at - start;
                    run_start = None;
                }
                _ => {}
            }
        }
        Ok(freed)
    }

    /// Frees the memory behind `len` bytes at `offset` (whole pages): they read as zeros again.
    fn discard(&self, offset: usize, len: usize) -> Result<(), RegionError> {
        let error = |source| RegionError::Discard { path: self.path.clone(), offset, len, source };
        if offset % HEADER_SIZE != 0 || len % HEADER_SIZE != 0 {
            return Err(error(io::Error::from(io::ErrorKind::InvalidInput)));
        }
        let p = self.span(offset, len)?;
        // SAFETY: `span` checked the range lies inside this shared mapping, and the range is
        // page-aligned; MADV_REMOVE frees its backing pages (a hole in the file), after which
        // reads see zeros: no Rust reference into the mapping outlives such a change (every
        // access goes through volatile copies or atomics).
        let rc = unsafe { libc::madvise(p.cast(), len, libc::MADV_REMOVE) };
        if rc != 0 {
            return Err(error(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Returns a pointer to `len` bytes at `offset` after checking they lie inside the mapping.
    pub fn span(&self, offset: usize, len: usize) -> Result<*mut u8, RegionError> {
        let size = self.map.len();
        match offset.checked_add(len) {
            Some(end) if end <= size => {
                // SAFETY: `offset + len <= size`, so the result stays inside the mapping.
                Ok(unsafe { self.map.as_mut_ptr().add(offset) })
            }
            _ => Err(RegionError::OutOfBounds { offset, len, size }),
        }
    }

    /// The atomic 32-bit word at `offset`.
    pub fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, RegionError> {
        let p = self.typed_span::<AtomicU32>(offset)?;
        // SAFETY: `p` is in bounds and aligned for `AtomicU32`; the mapping lives as long as
        // `self`, and an atomic may be shared with other processes, which only race on it
        // through atomic operations of their own.
        Ok(unsafe { &*p })
    }

    /// The atomic 64-bit word at `offset`.
    pub fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64, RegionError> {
        let p = self.typed_span::<AtomicU64>(offset)?;
        // SAFETY: as in `atomic_u32`, for an aligned, in-bounds 8-byte word.
        Ok(unsafe { &*p })
    }

    /// Stores a 32-bit word with `Release` ordering.
    pub fn store_u32(&self, offset: usize, value: u32) -> Result<(), RegionError> {
        self.atomic_u32(offset)?.store(value, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Loads a 32-bit word with `Acquire` ordering.
    pub fn load_u32(&self, offset: usize) -> Result<u32, RegionError> {
        Ok(self.atomic_u32(offset)?.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Copies a plain value out of the region (the peer may be writing it: the copy is what
    /// the caller validates).
    pub fn read<T: Plain>(&self, offset: usize) -> Result<T, RegionError> {
        let p = self.typed_span::<T>(offset)?;
        // SAFETY: the span is in bounds and aligned for `T`, and `T: Plain` accepts any bit
        // pattern the peer may have written.
        Ok(unsafe { ptr::read_volatile(p.cast_const()) })
    }

    /// Copies a plain value into the region.
    pub fn write<T: Plain>(&self, offset: usize, value: &T) -> Result<(), RegionError> {
        let p = self.typed_span::<T>(offset)?;
        // SAFETY: the span is in bounds and aligned for `T`, and `T: Plain` has no padding to
        // leak; no Rust reference points into the region.
        unsafe { ptr::write_volatile(p.cast::<T>(), *value) };
        Ok(())
    }

    fn typed_span<T>(&self, offset: usize) -> Result<*mut T, RegionError> {
        let p = self.span(offset, size_of::<T>())?.cast::<T>();
        if !p.is_aligned() {
            return Err(RegionError::Misaligned(offset));
        }
        Ok(p)
    }

    /// Copies `dst.len()` bytes at `offset` out of the region (volatile reads: the peer may be
    /// writing them; the copy is what the caller validates).
    pub fn copy_out(&self, offset: usize, dst: &mut [u8]) -> Result<(), RegionError> {
        let p = self.span(offset, dst.len())?;
        // SAFETY: the source span is in bounds of the mapping, which no Rust reference points
        // into, and cannot overlap the private `dst`.
        unsafe { volatile::copy_from_shared(dst.as_mut_ptr(), p.cast_const(), dst.len()) };
        Ok(())
    }

    /// Copies `src` into the region at `offset` (volatile writes).
    pub fn copy_in(&self, offset: usize, src: &[u8]) -> Result<(), RegionError> {
        let p = self.span(offset, src.len())?;
        // SAFETY: the destination span is in bounds of the mapping, which no Rust reference
        // points into, and cannot overlap the private `src`.
        unsafe { volatile::copy_to_shared(p, src.as_ptr(), src.len()) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::CallDesc;

    fn geometry() -> Geometry {
        Geometry::new(1 << 20, 64 << 10, 16, 2).unwrap()
    }

    #[test]
    fn zero_pages_are_freed_and_nothing_reads_differently() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        let region = Region::create(&path, &geometry()).unwrap();
        let data = geometry().data_offset as usize;
        let len = region.len() - data;
        region.copy_in(data, &vec![0; len]).unwrap(); // as a restore does: every page written
        region.copy_in(data + 4096, &[7; 8192]).unwrap();
        region.copy_in(data + 5 * 4096 + 100, &[9]).unwrap();
        let allocated = || std::fs::metadata(&path).map(|m| m.blocks() * 512).unwrap();
        let before = allocated();

        assert_eq!(region.discard_zero_pages(data, len).unwrap(), len - 3 * 4096);
        assert!(allocated() < before, "{} bytes still allocated", allocated());
        let mut bytes = vec![1; 6 * 4096];
        region.copy_out(data, &mut bytes).unwrap();
        let mut expected = vec![0; 6 * 4096];
        expected[4096..3 * 4096].fill(7);
        expected[5 * 4096 + 100] = 9;
        assert!(bytes == expected, "contents changed");
        assert!(region.discard_zero_pages(data + 1, 4096).is_err(), "whole pages only");
        assert!(region.discard_zero_pages(data, 1 << 20).is_err(), "inside the region only");
    }

    #[test]
    fn create_then_open_sees_the_same_geometry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.region");
        let host = Region::create(&path, &geometry()).unwrap();
        let (guest, seen) = Region::open(&path).unwrap();
        assert_eq!(seen, geometry());
        host.store_u32(header::GUEST_WAKE, 7).unwrap();
        assert_eq!(guest.load_u32(header::GUEST_WAKE).unwrap(), 7);
    }

    #[test]
    fn accesses_outside_the_mapping_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let region = Region::create(&dir.path().join("r"), &geometry()).unwrap();
        let end = region.len();
        assert!(region.span(end, 0).is_ok());
        assert!(matches!(region.span(end, 1), Err(RegionError::OutOfBounds { .. })));
        assert!(region.span(usize::MAX, 2).is_err());
        assert!(region.read::<CallDesc>(end - 63).is_err());
        assert!(matches!(region.read::<CallDesc>(4), Err(RegionError::Misaligned(4))));
        assert!(matches!(region.atomic_u32(2), Err(RegionError::Misaligned(2))));
        assert!(region.copy_in(end - 1, &[1, 2]).is_err());
    }

    #[test]
    fn create_never_reuses_a_file_or_follows_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.region");
        let first = Region::create(&path, &geometry()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only the owner may map it");
        first.store_u32(header::GUEST_WAKE, 7).unwrap();
        let again = Region::create(&path, &geometry()).unwrap_err();
        assert!(
            matches!(&again, RegionError::Map { source, .. }
            if source.kind() == io::ErrorKind::AlreadyExists),
            "{again:?}"
        );
        assert_eq!(first.load_u32(header::GUEST_WAKE).unwrap(), 7, "the region is untouched");

        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"keep").unwrap();
        let planted = dir.path().join("planted.region");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        assert!(Region::create(&planted, &geometry()).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep", "the symlink was not followed");
    }

    #[test]
    fn open_rejects_a_file_that_is_not_a_region() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk");
        std::fs::write(&path, vec![0xa5; 1 << 20]).unwrap();
        assert!(matches!(Region::open(&path), Err(RegionError::Header { .. })));
    }
}
