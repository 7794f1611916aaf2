//! The directory of the region files (`region.dir`), which the backend owns.
//!
//! A region holds a VM's object data, and its file name is predictable (`<function>-<n>.region`,
//! which the CLI, `ch-proxy` and the libvirt adapter parse), so the names are made safe by the
//! directory instead:
//!
//! ```text
//!  region.dir   created if missing; refused if it is a symlink, not a directory, owned by
//!               another user, or open to others:
//!                 no region.group   drwx------  owner: the backend's user
//!                 region.group: G   drwxr-x---  group G (a VMM running under G, not as the
//!                                               backend's user, reaches the files; G may not
//!                                               write the directory)
//!               held open and locked (flock) while the backend runs: one backend per directory
//!  <id>.region  created through that open directory with O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC:
//!                 -rw-------  (region.group G: -rw-rw---- group G: the VMM maps it shared)
//!               never an existing file, never through a symlink; at start-up the files an
//!               earlier backend left behind (a crash) are removed
//! ```

use std::ffi::CString;
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The suffix of region files.
const SUFFIX: &str = ".region";

/// Why the region directory, or a file in it, cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RegionDirError {
    /// The path is a symlink, which could point anywhere.
    #[error("Region directory {0} is a symlink: set region.dir to a real directory")]
    Symlink(PathBuf),
    /// The path is not a directory.
    #[error("Region directory {0} is not a directory")]
    NotDirectory(PathBuf),
    /// Another user owns the directory, and could read or replace the region files.
    #[error("Region directory {path} is owned by uid {owner}, not by the backend's uid {uid}: remove it or use another region.dir")]
    Owner { path: PathBuf, owner: u32, uid: u32 },
    /// The directory is open to users it should not be.
    #[error("Region directory {path} has mode {mode:04o}, open to others: allowed is at most {allowed:04o} (chmod it, or remove it and the backend creates it)")]
    Mode { path: PathBuf, mode: u32, allowed: u32 },
    /// The directory's group is not `region.group`.
    #[error(
        "Region directory {path} has group {gid}, not region.group {group} ({expected}): chgrp it"
    )]
    Group { path: PathBuf, gid: u32, group: String, expected: u32 },
    /// `region.group` names no group.
    #[error("region.group: no group {0} on this host")]
    NoGroup(String),
    /// Another backend holds the directory.
    #[error(
        "Another Nexus backend uses region directory {0}: give each backend its own region.dir"
    )]
    Busy(PathBuf),
    /// A file already exists at a new region's name (it is neither reused nor followed).
    #[error("Region file {0} already exists")]
    Exists(PathBuf),
    /// A file system operation failed.
    #[error("Cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The region directory, open, checked and locked for this backend.
#[derive(Debug)]
pub struct RegionDir {
    path: PathBuf,
    /// The directory itself: every file is created and removed through it, so renaming the
    /// path after the checks changes nothing.
    dir: File,
    /// The group that may map the files (`region.group`), by id.
    gid: Option<u32>,
}

impl RegionDir {
    /// Opens `path` as the region directory (creating it if missing), checks it, locks it and
    /// removes the region files an earlier backend left in it. `group` is `region.group`.
    pub fn open(path: &Path, group: Option<&str>) -> Result<Self, RegionDirError> {
        let io = |what, source| RegionDirError::Io { what, path: path.to_owned(), source };
        let gid = group.map(group_id).transpose()?;
        let dir_mode = if gid.is_some() { 0o750 } else { 0o700 };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("create the parent of", e))?;
        }
        let created = match DirBuilder::new().mode(dir_mode).create(path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io("create", e)),
        };
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                // Linux says ENOTDIR for a symlink opened with both flags.
                Some(libc::ELOOP | libc::ENOTDIR) if path.is_symlink() => {
                    RegionDirError::Symlink(path.to_owned())
                }
                Some(libc::ENOTDIR) => RegionDirError::NotDirectory(path.to_owned()),
                _ => io("open", e),
            })?;
        let region_dir = Self { path: path.to_owned(), dir, gid };
        region_dir.check_owner()?;
        if created {
            // The umask may have taken bits the group needs; the owner is checked first, so
            // this never changes a directory someone else slipped in.
            std::os::unix::fs::fchown(&region_dir.dir, None, gid).map_err(|e| io("chgrp", e))?;
            region_dir
                .dir
                .set_permissions(Permissions::from_mode(dir_mode))
                .map_err(|e| io("chmod", e))?;
        }
        region_dir.check_access(group.unwrap_or_default())?;
        region_dir.lock()?;
        Ok(region_dir)
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn metadata(&self) -> Result<std::fs::Metadata, RegionDirError> {
        let path = self.path.clone();
        self.dir.metadata().map_err(|source| RegionDirError::Io { what: "stat", path, source })
    }

    fn check_owner(&self) -> Result<(), RegionDirError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        let owner = self.metadata()?.uid();
        if owner != uid {
            return Err(RegionDirError::Owner { path: self.path.clone(), owner, uid });
        }
        Ok(())
    }

    /// Others may do nothing; the group (only `region.group`) may read and enter.
    fn check_access(&self, group: &str) -> Result<(), RegionDirError> {
        let metadata = self.metadata()?;
        let mode = metadata.mode() & 0o777;
        let allowed = if self.gid.is_some() { 0o750 } else { 0o700 };
        if mode & !allowed != 0 {
            return Err(RegionDirError::Mode { path: self.path.clone(), mode, allowed });
        }
        match self.gid {
            Some(expected) if metadata.gid() != expected => Err(RegionDirError::Group {
                path: self.path.clone(),
                gid: metadata.gid(),
                group: group.to_owned(),
                expected,
            }),
            _ => Ok(()),
        }
    }

    fn lock(&self) -> Result<(), RegionDirError> {
        // SAFETY: flock on a descriptor this value owns; it touches no memory.
        let rc = unsafe { libc::flock(self.dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        match rc {
            0 => Ok(()),
            _ => match io::Error::last_os_error() {
                e if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                    Err(RegionDirError::Busy(self.path.clone()))
                }
                source => Err(RegionDirError::Io { what: "lock", path: self.path.clone(), source }),
            },
        }
    }

    /// Removes the region files in the directory (those a backend that died left behind);
    /// returns their names. Anything else in it is left alone.
    pub fn remove_stale(&self) -> Result<Vec<String>, RegionDirError> {
        let io = |what, source| RegionDirError::Io { what, path: self.path.clone(), source };
        // The open directory's entries, whatever its path names now.
        let listing = format!("/proc/self/fd/{}", self.dir.as_raw_fd());
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(listing).map_err(|e| io("list", e))? {
            let name = entry.map_err(|e| io("list", e))?.file_name();
            if !name.as_bytes().ends_with(SUFFIX.as_bytes()) {
                continue;
            }
            let c_name = CString::new(name.as_bytes()).map_err(|e| io("remove in", e.into()))?;
            // SAFETY: unlinkat on a directory descriptor this value owns, with a NUL-terminated
            // name that outlives the call; it removes the entry itself, never a symlink's target.
            let rc = unsafe { libc::unlinkat(self.dir.as_raw_fd(), c_name.as_ptr(), 0) };
            if rc != 0 {
                return Err(io("remove a stale region file in", io::Error::last_os_error()));
            }
            removed.push(name.to_string_lossy().into_owned());
        }
        Ok(removed)
    }

    /// Creates the empty region file `name` (`<id>.region`): exclusively, never through a
    /// symlink, readable and writable by the owner (and `region.group`) only.
    pub fn create(&self, name: &str) -> Result<(File, PathBuf), RegionDirError> {
        let path = self.path.join(name);
        let io = |what, source| RegionDirError::Io { what, path: path.clone(), source };
        let c_name = CString::new(name).map_err(|e| io("create", e.into()))?;
        let flags =
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let mode = if self.gid.is_some() { 0o660 } else { 0o600 };
        // SAFETY: openat on a directory descriptor this value owns, with a NUL-terminated name
        // that outlives the call; the result is checked before use.
        let fd = unsafe { libc::openat(self.dir.as_raw_fd(), c_name.as_ptr(), flags, mode) };
        if fd < 0 {
            return match io::Error::last_os_error() {
                e if e.raw_os_error() == Some(libc::EEXIST) => Err(RegionDirError::Exists(path)),
                source => Err(io("create", source)),
            };
        }
        // SAFETY: `fd` is a descriptor openat just returned, owned by nothing else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if let Some(gid) = self.gid {
            // The umask may have taken the group's bits.
            std::os::unix::fs::fchown(&file, None, Some(gid)).map_err(|e| io("chgrp", e))?;
            file.set_permissions(Permissions::from_mode(mode)).map_err(|e| io("chmod", e))?;
        }
        Ok((file, path))
    }
}

/// The id of group `name`.
fn group_id(name: &str) -> Result<u32, RegionDirError> {
    let missing = || RegionDirError::NoGroup(name.to_owned());
    let c_name = CString::new(name).map_err(|_| missing())?;
    let mut buffer = vec![0u8; 4096];
    loop {
        // SAFETY: an all-zero `group` is a valid value to be overwritten.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the name is NUL-terminated, `group` and
        // `found` are locals, and `buffer` is writable for the length given.
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut group,
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => return Err(missing()),
            0 => return Ok(group.gr_gid),
            libc::ERANGE if buffer.len() < 1 << 20 => buffer.resize(buffer.len() * 2, 0),
            _ => return Err(missing()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// The uid the directory's owner is changed to in the attack tests: someone else.
    const OTHER_UID: u32 = 65534;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn a_missing_directory_is_created_for_the_owner_alone() {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("a/regions");
        let dir = RegionDir::open(&path, None).unwrap();
        assert_eq!(mode(&path), 0o700);
        let (_file, file) = dir.create("f-1.region").unwrap();
        assert_eq!(file, path.join("f-1.region"));
        assert_eq!(mode(&file), 0o600);
    }

    #[test]
    fn a_symlinked_directory_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let real = parent.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, Permissions::from_mode(0o700)).unwrap();
        let link = parent.path().join("regions");
        symlink(&real, &link).unwrap();
        let error = RegionDir::open(&link, None).unwrap_err();
        assert!(matches!(error, RegionDirError::Symlink(_)), "{error}");
        assert!(error.to_string().contains(&link.display().to_string()), "{error}");
        let file = parent.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(RegionDir::open(&file, None), Err(RegionDirError::NotDirectory(_))));
    }

    #[test]
    fn a_directory_open_to_others_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("regions");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o777)).unwrap();
        let error = RegionDir::open(&path, None).unwrap_err();
        assert!(
            matches!(error, RegionDirError::Mode { mode: 0o777, allowed: 0o700, .. }),
            "{error}"
        );
        assert_eq!(mode(&path), 0o777, "an existing directory is not changed");
        // Readable by the group, without region.group: refused too.
        std::fs::set_permissions(&path, Permissions::from_mode(0o750)).unwrap();
        assert!(matches!(RegionDir::open(&path, None), Err(RegionDirError::Mode { .. })));
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        if !is_root() {
            eprintln!("SKIPPED: changing a directory's owner needs root");
            return;
        }
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("regions");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&path, Some(OTHER_UID), None).unwrap();
        let error = RegionDir::open(&path, None).unwrap_err();
        assert!(matches!(error, RegionDirError::Owner { owner: OTHER_UID, .. }), "{error}");
    }

    #[test]
    fn a_symlink_planted_at_a_region_name_is_not_followed() {
        let parent = tempfile::tempdir().unwrap();
        let dir = RegionDir::open(&parent.path().join("regions"), None).unwrap();
        let target = parent.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        std::fs::set_permissions(&target, Permissions::from_mode(0o644)).unwrap();
        symlink(&target, dir.path().join("f-1.region")).unwrap();
        let error = dir.create("f-1.region").unwrap_err();
        assert!(matches!(error, RegionDirError::Exists(_)), "{error}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert_eq!(mode(&target), 0o644, "the target's mode is untouched");
    }

    #[test]
    fn a_file_precreated_at_a_region_name_is_not_reused() {
        let parent = tempfile::tempdir().unwrap();
        let dir = RegionDir::open(&parent.path().join("regions"), None).unwrap();
        let planted = dir.path().join("f-1.region");
        std::fs::write(&planted, b"someone's").unwrap();
        std::fs::set_permissions(&planted, Permissions::from_mode(0o666)).unwrap();
        let error = dir.create("f-1.region").unwrap_err();
        assert!(matches!(error, RegionDirError::Exists(_)), "{error}");
        assert_eq!(std::fs::read(&planted).unwrap(), b"someone's");
    }

    #[test]
    fn stale_region_files_are_removed_and_nothing_else() {
        let parent = tempfile::tempdir().unwrap();
        let dir = RegionDir::open(&parent.path().join("regions"), None).unwrap();
        let target = parent.path().join("victim.region");
        std::fs::write(&target, b"keep").unwrap();
        std::fs::write(dir.path().join("f-1.region"), b"old").unwrap();
        symlink(&target, dir.path().join("f-2.region")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        let mut removed = dir.remove_stale().unwrap();
        removed.sort();
        assert_eq!(removed, ["f-1.region", "f-2.region"]);
        assert!(std::fs::exists(dir.path().join("notes.txt")).unwrap());
        assert_eq!(
            std::fs::read(&target).unwrap(),
            b"keep",
            "a symlink is removed, not its target"
        );
        dir.create("f-1.region").unwrap();
    }

    #[test]
    fn one_backend_per_directory() {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("regions");
        let first = RegionDir::open(&path, None).unwrap();
        let error = RegionDir::open(&path, None).unwrap_err();
        assert!(matches!(error, RegionDirError::Busy(_)), "{error}");
        drop(first);
        RegionDir::open(&path, None).unwrap();
    }

    #[test]
    fn region_group_opens_the_directory_and_files_to_that_group_only() {
        if !is_root() {
            eprintln!("SKIPPED: giving a directory to another group needs root");
            return;
        }
        let (group, gid) = ("nogroup", group_id("nogroup").unwrap());
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("regions");
        let dir = RegionDir::open(&path, Some(group)).unwrap();
        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!((metadata.mode() & 0o777, metadata.gid()), (0o750, gid));
        let (_file, file) = dir.create("f-1.region").unwrap();
        let metadata = std::fs::metadata(&file).unwrap();
        assert_eq!((metadata.mode() & 0o777, metadata.gid()), (0o660, gid));
        drop(dir);
        // Writable by the group: refused.
        std::fs::set_permissions(&path, Permissions::from_mode(0o770)).unwrap();
        let error = RegionDir::open(&path, Some(group)).unwrap_err();
        assert!(matches!(error, RegionDirError::Mode { allowed: 0o750, .. }), "{error}");
        // Another group: refused.
        std::fs::set_permissions(&path, Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::chown(&path, None, Some(0)).unwrap();
        let error = RegionDir::open(&path, Some(group)).unwrap_err();
        assert!(matches!(error, RegionDirError::Group { gid: 0, .. }), "{error}");
        let missing = RegionDir::open(&path, Some("no-such-group-here")).unwrap_err();
        assert!(matches!(missing, RegionDirError::NoGroup(_)), "{missing}");
    }
}
