//! The write-back spool: a put or delete completes once it is durable on this host, and
//! reaches the store in the background.
//!
//! ```text
//!  put ──► Writer: chunks into <n>.tmp (MD5 as they come)
//!          admit: wait while the backlog is over writeback.max_backlog_bytes
//!          seal: number it, append the record, fsync, rename to <seq>.entry, fsync the dir
//!          queue ──► acknowledge (strict: once the uploader stored it)
//!  delete ─► the same, as a tombstone with no body
//!  uploaders (tokio tasks): oldest eligible entry ─► PUT / DELETE on the store, retried with
//!          backoff until it succeeds ─► remove the files it superseded, then its own, fsync
//!  start:  lock the dir, check it belongs to this storage, remove *.tmp (never acknowledged),
//!          queue every *.entry in sequence order
//! ```
//!
//! A `Get` or `Head` of an object with a queued entry is answered from the newest acknowledged
//! one (a tombstone answers NoSuchKey); a `List` first waits, up to [`LIST_PATIENCE`], for the
//! entries under its prefix to reach the store. The ordering rules are in [`queue`], the file
//! format in [`entry`], the retry policy in [`uploader`].

pub(crate) mod entry;
mod metrics;
mod queue;
mod quota;
mod uploader;
mod writer;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use nexus_channel::wire::{ObjectRef, PutParams, Status};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use entry::Record;
pub use writer::Writer;

use self::entry::Kind;
use self::metrics::SpoolMetrics;
use self::queue::{Pending, Queue};
pub use self::quota::QuotaError;
use self::quota::Quotas;
use crate::cache::ObjectCache;
use crate::config::{Config, WriteBack};
use crate::metrics::Metrics;
use crate::storage::{error_chain, Storage};

/// Uploads in flight at once (each on its own object).
const UPLOADERS: usize = 8;
/// How long a listing waits for the queued entries under its prefix.
pub const LIST_PATIENCE: Duration = Duration::from_secs(30);
/// How long a stopping backend keeps uploading; what is left waits for the next start.
const STOP_PATIENCE: Duration = Duration::from_secs(5);
/// The lock file: one backend per spool.
const LOCK_FILE: &str = "LOCK";
/// Names the storage the entries are for.
const STORE_FILE: &str = "STORE";

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("Cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Another backend holds the spool.
    #[error(
        "Spool {} is in use by another Nexus backend: give each its own writeback.dir",
        .0.display()
    )]
    Locked(PathBuf),
    /// The spool holds entries for another storage configuration.
    #[error(
        "Spool {} holds {entries} uploads for storage {store:?}: start the backend with that \
         storage to upload them, or move the spool away", dir.display()
    )]
    OtherStore { dir: PathBuf, entries: usize, store: String },
    /// The store refused a strict put or delete for good.
    #[error("{message}")]
    Refused { status: Status, message: String },
    /// The function is over its share of the spool.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// The spool's disk is full: new puts are refused until uploads make room.
    #[error("The write-back spool's disk is full; retry once uploads have made room")]
    Full,
    /// The spool stopped before a strict put or delete was stored.
    #[error("The backend is stopping; the upload will complete after it restarts")]
    Stopped,
}

impl SpoolError {
    /// An I/O error of `action` on `path`; a full disk is [`SpoolError::Full`].
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_owned();
        move |source| match source.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Self::Full,
            _ => Self::Io { action, path, source },
        }
    }
}

/// What the spool holds for an object.
#[derive(Debug)]
pub enum Spooled {
    /// A put: its record and body (mapped from the entry file).
    Object { record: Record, body: Bytes },
    /// A delete.
    Deleted,
}

/// The spool and its uploaders.
#[derive(Debug)]
pub struct Spool {
    inner: Arc<Inner>,
    uploaders: Mutex<Vec<JoinHandle<()>>>,
}

/// What the spool's users, writers and uploaders share.
#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    /// Held (flock) while the spool is open.
    _lock: File,
    max_backlog_bytes: u64,
    /// Each function's share of the spool.
    quotas: Arc<Quotas>,
    /// Functions whose puts and deletes wait for the upload.
    strict_functions: BTreeSet<String>,
    /// Every function waits: the store's ETags are not the MD5 a put answers.
    all_strict: bool,
    storage: Arc<Storage>,
    cache: Arc<ObjectCache>,
    queue: Mutex<Queue>,
    /// Numbers temp files.
    next_temp: AtomicU64,
    /// Rung when an entry becomes eligible for upload.
    work: Notify,
    /// Rung when an entry leaves the queue.
    progress: Notify,
    metrics: SpoolMetrics,
    /// The last upload attempt failed (for logging the failure and the recovery once).
    failing: AtomicBool,
    /// A put is waiting for backlog room (for logging it once).
    full: AtomicBool,
}

impl Spool {
    /// Opens the spool of `config.writeback`, queues what a previous run left and starts the
    /// uploaders on `runtime`.
    pub fn start(
        config: &Config,
        storage: Arc<Storage>,
        cache: Arc<ObjectCache>,
        metrics: &Metrics,
        runtime: &Handle,
    ) -> Result<Self, SpoolError> {
        let spool = Self::open(config, storage, cache, metrics)?;
        let uploaders =
            (0..UPLOADERS).map(|_| runtime.spawn(uploader::run(spool.inner.clone()))).collect();
        *spool.uploaders() = uploaders;
        Ok(spool)
    }

    /// Opens the spool without uploaders.
    fn open(
        config: &Config,
        storage: Arc<Storage>,
        cache: Arc<ObjectCache>,
        metrics: &Metrics,
    ) -> Result<Self, SpoolError> {
        let all_strict = !storage.etags_are_md5();
        if all_strict {
            tracing::info!(
                "The store's ETags are not MD5s: every put waits for its upload \
                 (write_back: strict)"
            );
        }
        Self::open_as(config, storage, cache, metrics, all_strict)
    }

    /// [`Spool::open`], every function strict or not as `all_strict` says.
    fn open_as(
        config: &Config,
        storage: Arc<Storage>,
        cache: Arc<ObjectCache>,
        metrics: &Metrics,
        all_strict: bool,
    ) -> Result<Self, SpoolError> {
        let dir = config.writeback.dir.clone();
        fs::create_dir_all(&dir).map_err(SpoolError::io("create the spool", &dir))?;
        let lock = lock(&dir)?;
        let found = scan(&dir)?;
        claim(&dir, &store_identity(config), found.len())?;
        let start = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_micros());
        let mut queue = Queue::new(u64::try_from(start).unwrap_or(u64::MAX / 2));
        for record in found {
            let path = dir.join(entry::entry_name(record.seq));
            let pending = Pending {
                record,
                path,
                strict: false,
                waiters: vec![],
                doomed: vec![],
                _charge: None,
            };
            queue.restore(pending);
        }
        let (objects, bytes) = queue.backlog();
        if objects > 0 {
            tracing::info!(
                dir = %dir.display(),
                "Write-back spool: {objects} entries ({bytes} bytes) left to upload"
            );
        }
        let strict_functions = config
            .functions
            .keys()
            .filter(|name| config.write_back_for(name) == WriteBack::Strict)
            .cloned()
            .collect();
        let next_temp = queue.next_seq();
        let inner = Inner {
            dir,
            _lock: lock,
            max_backlog_bytes: config.writeback.max_backlog_bytes,
            quotas: Quotas::new(
                config.writeback.max_function_uploads,
                config.writeback.max_function_bytes,
            ),
            strict_functions,
            all_strict,
            storage,
            cache,
            queue: Mutex::new(queue),
            next_temp: AtomicU64::new(next_temp),
            work: Notify::new(),
            progress: Notify::new(),
            metrics: SpoolMetrics::register(metrics),
            failing: AtomicBool::new(false),
            full: AtomicBool::new(false),
        };
        inner.metrics.backlog(objects, bytes);
        Ok(Self { inner: Arc::new(inner), uploaders: Mutex::default() })
    }

    /// Whether `function`'s puts and deletes wait for their upload.
    pub fn is_strict(&self, function: &str) -> bool {
        self.inner.all_strict || self.inner.strict_functions.contains(function)
    }

    /// Starts spooling a put of `object` by `function`; the body follows in
    /// [`Writer::append`] and [`Writer::commit`] makes it durable.
    pub fn writer(
        &self,
        object: &ObjectRef,
        params: &PutParams,
        function: &str,
    ) -> Result<Writer, SpoolError> {
        let charge = self.inner.quotas.open(function)?;
        let strict = self.is_strict(function);
        Writer::create(self.inner.clone(), object, Kind::Put, params, strict, charge)
    }

    /// Spools a delete of `object` by `function`; returns once it is durable (strict: stored).
    pub async fn delete(&self, object: &ObjectRef, function: &str) -> Result<(), SpoolError> {
        let params = PutParams::default();
        let charge = self.inner.quotas.open(function)?;
        let strict = self.is_strict(function);
        let tombstone =
            Writer::create(self.inner.clone(), object, Kind::Delete, &params, strict, charge)?;
        tombstone.commit().await.map(drop)
    }

    /// Whether `bucket/key` has an entry waiting for upload (a read must not use the cache).
    pub fn has_pending(&self, bucket: &str, key: &str) -> bool {
        self.inner.queue().has_queued(&(bucket.to_owned(), key.to_owned()))
    }

    /// The newest acknowledged entry of `bucket/key`, if one waits for upload.
    pub fn view(&self, bucket: &str, key: &str) -> Result<Option<Spooled>, SpoolError> {
        let (record, file) = {
            let queue = self.inner.queue();
            let Some(pending) = queue.view(&(bucket.to_owned(), key.to_owned())) else {
                return Ok(None);
            };
            if pending.record.kind == Kind::Delete {
                return Ok(Some(Spooled::Deleted));
            }
            // Opened under the lock: the uploader removes the file only before it takes the
            // entry out of the queue, so a missing file means the store has the object.
            match File::open(&pending.path) {
                Ok(file) => (pending.record.clone(), file),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(SpoolError::io("open", &pending.path)(e)),
            }
        };
        let body =
            writer::map_body(&file, record.size).map_err(SpoolError::io("map", &self.inner.dir))?;
        Ok(Some(Spooled::Object { record, body }))
    }

    /// Waits until the entries under `prefix` of `bucket` queued now are stored (or
    /// superseded), or [`LIST_PATIENCE`] passed.
    pub async fn settle(&self, bucket: &str, prefix: &str) {
        let waiting = self.inner.queue().queued_under(bucket, prefix);
        let mut waiting = waiting.into_iter().peekable();
        let deadline = tokio::time::Instant::now() + LIST_PATIENCE;
        loop {
            let progress = self.inner.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            {
                // Each entry is looked at until it is gone, then never again.
                let queue = self.inner.queue();
                while waiting.next_if(|&seq| !queue.is_queued(seq)).is_some() {}
            }
            if waiting.peek().is_none() {
                return;
            }
            if tokio::time::timeout_at(deadline, progress).await.is_err() {
                tracing::warn!(
                    bucket,
                    prefix,
                    "Listing without waiting longer for write-back uploads under the prefix"
                );
                return;
            }
        }
    }

    /// Entries waiting for upload, and their bytes.
    pub fn backlog(&self) -> (usize, u64) {
        self.inner.queue().backlog()
    }

    /// Keeps uploading for up to [`STOP_PATIENCE`] while entries are queued, then stops the
    /// uploaders; what is left is uploaded after the next start.
    pub fn stop(&self) {
        let uploaders = std::mem::take(&mut *self.uploaders());
        if uploaders.is_empty() {
            return;
        }
        let deadline = Instant::now() + STOP_PATIENCE;
        while self.backlog().0 > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for uploader in uploaders {
            uploader.abort();
        }
        let (objects, bytes) = self.backlog();
        if objects > 0 {
            tracing::info!(
                "Write-back: {objects} entries ({bytes} bytes) left in the spool for the next start"
            );
        }
    }

    fn uploaders(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.uploaders.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        for uploader in self.uploaders().drain(..) {
            uploader.abort();
        }
    }
}

impl Inner {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes the backlog of `queue` (held by the caller).
    fn refresh(&self, queue: &Queue) {
        let (objects, bytes) = queue.backlog();
        self.metrics.backlog(objects, bytes);
    }

    /// Waits until `size` more bytes fit the backlog, and reserves them.
    async fn admit(&self, size: u64) {
        loop {
            let progress = self.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if self.queue().reserve(size, self.max_backlog_bytes) {
                self.full.store(false, Ordering::Relaxed);
                return;
            }
            if !self.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max_backlog_bytes = self.max_backlog_bytes,
                    "Write-back backlog full: puts wait for uploads to make room"
                );
            }
            progress.await;
        }
    }
}

/// Takes the spool's lock file, or fails if another backend holds it.
fn lock(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(SpoolError::io("open", &path))?;
    // SAFETY: flock(2) on a descriptor this function owns; it touches no memory.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        let error = io::Error::last_os_error();
        return Err(match error.kind() {
            io::ErrorKind::WouldBlock => SpoolError::Locked(dir.to_owned()),
            _ => SpoolError::io("lock", &path)(error),
        });
    }
    Ok(file)
}

/// Removes the temp files of `dir` and reads the records of its entries, in sequence order;
/// damaged entries are set aside.
fn scan(dir: &Path) -> Result<Vec<Record>, SpoolError> {
    let mut records = Vec::new();
    let mut removed = false;
    for item in fs::read_dir(dir).map_err(SpoolError::io("read", dir))? {
        let item = item.map_err(SpoolError::io("read", dir))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = item.path();
        if entry::is_temp(name) {
            fs::remove_file(&path).map_err(SpoolError::io("remove", &path))?;
            removed = true;
        } else if entry::entry_seq(name).is_some() {
            match entry::read_record(&path) {
                Ok(record) => records.push(record),
                Err(e) => {
                    let aside = entry::corrupt_path(&path);
                    tracing::error!(
                        entry = %path.display(),
                        "Damaged write-back entry set aside as {}: {}",
                        aside.display(),
                        error_chain(&e)
                    );
                    fs::rename(&path, &aside).map_err(SpoolError::io("set aside", &path))?;
                    removed = true;
                }
            }
        }
    }
    if removed {
        entry::sync_dir(dir).map_err(SpoolError::io("sync", dir))?;
    }
    records.sort_by_key(|r| r.seq);
    Ok(records)
}

/// What the entries of a spool are for: the storage URL and endpoints (never credentials).
fn store_identity(config: &Config) -> String {
    let mut identity = config.storage.url.clone();
    for (key, value) in &config.storage.options {
        if key.to_ascii_lowercase().contains("endpoint") {
            identity.push_str(&format!(" {key}={value}"));
        }
    }
    identity
}

/// Records that the spool's entries are for `identity`; refuses a spool whose `entries` are for
/// another storage.
fn claim(dir: &Path, identity: &str, entries: usize) -> Result<(), SpoolError> {
    let path = dir.join(STORE_FILE);
    let previous = match fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(SpoolError::io("read", &path)(e)),
    };
    match previous {
        Some(store) if store == identity => return Ok(()),
        Some(store) if entries > 0 => {
            return Err(SpoolError::OtherStore { dir: dir.to_owned(), entries, store })
        }
        _ => {}
    }
    let temp = dir.join(format!("{STORE_FILE}.tmp"));
    let written = (|| {
        let mut file = File::create(&temp)?;
        io::Write::write_all(&mut file, identity.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        entry::sync_dir(dir)
    })();
    written.map_err(SpoolError::io("write", &path))
}

#[cfg(test)]
mod tests;
