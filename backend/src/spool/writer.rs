//! One put (or delete) on its way into the spool: chunks into a temp file, then the durable
//! commit that acknowledges it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use md5::{Digest, Md5};
use memmap2::Mmap;
use nexus_channel::wire::{ObjectRef, PutParams};
use tokio::sync::oneshot;

use super::entry::{self, Kind, Record};
use super::queue::{Commit, ObjectId, Outcome, Pending};
use super::quota::Charge;
use super::{Inner, SpoolError};

/// A put being spooled. Dropped before [`Writer::commit`] finished, it leaves nothing behind.
#[derive(Debug)]
pub struct Writer {
    inner: Arc<Inner>,
    object: ObjectId,
    kind: Kind,
    content_type: Option<String>,
    metadata: BTreeMap<String, String>,
    strict: bool,
    temp: PathBuf,
    /// The temp file, while no blocking task holds it.
    open: Option<Open>,
    /// The temp file exists (it is renamed when sealed).
    temp_exists: bool,
    /// Backlog bytes reserved and not handed to the queue yet.
    reserved: Option<u64>,
    /// Sequence number given and not queued yet.
    sealing: Option<u64>,
    /// This put's share of its function's quota; handed to the queued entry.
    charge: Option<Charge>,
}

#[derive(Debug)]
struct Open {
    file: File,
    md5: Md5,
    size: u64,
}

/// The acknowledgement of a committed put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// The ETag to answer, unquoted: the body's MD5, or what the store answered (strict).
    pub etag: String,
}

impl Writer {
    pub(super) fn create(
        inner: Arc<Inner>,
        object: &ObjectRef,
        kind: Kind,
        params: &PutParams,
        strict: bool,
        charge: Charge,
    ) -> Result<Self, SpoolError> {
        let n = inner.next_temp.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temp = inner.dir.join(entry::temp_name(n));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(SpoolError::io("create", &temp))?;
        Ok(Self {
            inner,
            object: (object.bucket.clone(), object.key.clone()),
            kind,
            content_type: params.content_type.clone(),
            metadata: params.metadata.clone(),
            strict,
            temp,
            open: Some(Open { file, md5: Md5::new(), size: 0 }),
            temp_exists: true,
            reserved: None,
            sealing: None,
            charge: Some(charge),
        })
    }

    /// Appends body bytes, charged to the function's share first.
    pub async fn append(&mut self, bytes: Vec<u8>) -> Result<(), SpoolError> {
        if let Some(charge) = &mut self.charge {
            charge.add(bytes.len() as u64)?;
        }
        let mut open = self.take_open()?;
        let (open, written) = blocking(move || {
            let written = open.file.write_all(&bytes);
            if written.is_ok() {
                open.md5.update(&bytes);
                open.size += bytes.len() as u64;
            }
            (open, written)
        })
        .await
        .map_err(SpoolError::io("write", &self.temp))?;
        self.open = Some(open);
        written.map_err(SpoolError::io("write", &self.temp))
    }

    /// Makes the entry durable (see the module doc of [`super`]) and queues it; a strict one
    /// returns once the store has it.
    pub async fn commit(mut self) -> Result<Acked, SpoolError> {
        let Open { mut file, md5, size } = self.take_open()?;
        let md5 = entry::hex(&md5.finalize());
        self.inner.admit(size).await;
        self.reserved = Some(size);
        let seq = {
            let mut queue = self.inner.queue();
            queue.seal(&self.object)
        };
        self.sealing = Some(seq);
        let record = Record {
            seq,
            kind: self.kind,
            bucket: self.object.0.clone(),
            key: self.object.1.clone(),
            content_type: self.content_type.take(),
            metadata: std::mem::take(&mut self.metadata),
            size,
            md5: md5.clone(),
            written_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        };
        let path = self.inner.dir.join(entry::entry_name(seq));
        let sealed = {
            let (temp, path, dir, record) =
                (self.temp.clone(), path.clone(), self.inner.dir.clone(), record.clone());
            blocking(move || -> io::Result<()> {
                entry::seal(&mut file, &record)?;
                drop(file);
                fs::rename(&temp, &path)?;
                entry::sync_dir(&dir)
            })
            .await
            .and_then(|sealed| sealed)
        };
        if let Err(e) = sealed {
            // Not acknowledged: whatever reached the disk must not be uploaded.
            let _ = fs::remove_file(&path);
            return Err(SpoolError::io("seal", &path)(e));
        }
        self.temp_exists = false;
        let (waiter, answer) = if self.strict {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let mut charge = self.charge.take();
        if let Some(charge) = &mut charge {
            charge.close();
        }
        let pending = Pending {
            record,
            path,
            strict: self.strict,
            waiters: waiter.into_iter().collect(),
            doomed: Vec::new(),
            _charge: charge,
        };
        {
            let mut queue = self.inner.queue();
            if let Commit::Superseded { by } = queue.commit(pending) {
                tracing::debug!(seq, by, "A newer entry of the object was queued first");
            }
            self.reserved = None;
            self.sealing = None;
            self.inner.refresh(&queue);
        }
        self.inner.work.notify_waiters();
        let Some(answer) = answer else { return Ok(Acked { etag: md5 }) };
        match answer.await {
            Ok(Outcome::Stored { seq: stored, etag: Some(etag) }) if stored == seq => {
                Ok(Acked { etag })
            }
            Ok(Outcome::Stored { .. }) => Ok(Acked { etag: md5 }),
            Ok(Outcome::Refused { status, message }) => {
                Err(SpoolError::Refused { status, message })
            }
            Err(_) => Err(SpoolError::Stopped),
        }
    }

    fn take_open(&mut self) -> Result<Open, SpoolError> {
        self.open.take().ok_or_else(|| {
            let gone = io::Error::other("an earlier write of this upload failed");
            SpoolError::io("write", &self.temp)(gone)
        })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.reserved.is_some() || self.sealing.is_some() {
            let mut queue = self.inner.queue();
            if let Some(size) = self.reserved {
                queue.release(size);
            }
            if let Some(seq) = self.sealing {
                queue.unseal(&self.object, seq);
            }
        }
        if self.sealing.is_some() {
            self.inner.work.notify_waiters();
            self.inner.progress.notify_waiters();
        }
        if self.temp_exists {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Runs blocking file I/O off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)
}

/// The first `size` bytes of an entry file, mapped.
pub(super) fn map_body(file: &File, size: u64) -> io::Result<Bytes> {
    let size = usize::try_from(size).map_err(io::Error::other)?;
    if size == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: entry files are never written after they are sealed and renamed, and only this
    // process (holding the spool's lock) touches the spool, so the mapped bytes cannot change;
    // removing the file leaves the mapping valid.
    let map = unsafe { Mmap::map(file)? };
    if map.len() < size {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "entry shorter than its body"));
    }
    Ok(Bytes::from_owner(map).slice(..size))
}
