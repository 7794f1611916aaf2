//! The uploaders: tokio tasks applying queued entries to the store, oldest first.
//!
//! An attempt that fails is tried again after an exponential backoff (100 ms doubling to
//! [`MAX_BACKOFF`], with jitter), for as long as it takes: an entry leaves the spool only once
//! the store took it. The one exception is a strict entry the store refuses for good (access
//! denied, no such bucket...): nobody was told it succeeded, so it is dropped and its put
//! answered with the refusal. The store's client is built to try each request once, so these
//! retries are the only ones and a failing store shows at once in the log and the metrics.

use std::hash::{BuildHasher, RandomState};
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use md5::{Digest, Md5};
use nexus_channel::wire::Status;
use object_store::{ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, WriteMultipart};

use super::entry::{self, Kind};
use super::queue::{Job, Outcome};
use super::{writer, Inner};
use crate::storage::{error_chain, key_path, StorageError};

/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How long an idle uploader sleeps before looking at the queue again anyway.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Largest object S3 takes in one PUT; larger ones go up in parts (and get a multipart ETag).
const SINGLE_PUT_MAX: u64 = 5 << 30;
/// Smallest part of a multipart upload, and the most parts S3 allows.
const MIN_PART: u64 = 64 << 20;
const MAX_PARTS: u64 = 10_000;

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The store (or opening it) failed.
    #[error(transparent)]
    Store(#[from] StorageError),
    /// The entry file could not be read.
    #[error("Cannot read the entry")]
    Read(#[source] io::Error),
    /// The entry file does not hold what was acknowledged.
    #[error("{0}")]
    Corrupt(String),
}

impl From<object_store::Error> for Failure {
    fn from(e: object_store::Error) -> Self {
        Self::Store(e.into())
    }
}

/// One uploader: takes the oldest eligible entry, applies it, and so on.
pub(super) async fn run(inner: Arc<Inner>) {
    loop {
        let work = inner.work.notified();
        tokio::pin!(work);
        work.as_mut().enable();
        let job = inner.queue().next();
        match job {
            Some(job) => upload(&inner, job).await,
            None => {
                let _ = tokio::time::timeout(IDLE_POLL, work).await;
            }
        }
    }
}

/// Applies `job` to the store, retrying until it is stored (or, strict, refused for good).
pub(super) async fn upload(inner: &Inner, job: Job) {
    let mut body = None;
    let mut failures = 0;
    loop {
        match attempt(inner, &job, &mut body).await {
            Ok(etag) => {
                inner.metrics.uploaded();
                if inner.failing.swap(false, Ordering::Relaxed) {
                    let (objects, bytes) = inner.queue().backlog();
                    tracing::warn!(
                        "Store recovered: write-back uploads go on ({objects} entries, {bytes} \
                         bytes queued)"
                    );
                }
                inner.stored(&job, etag).await;
                return;
            }
            Err(Failure::Corrupt(why)) => {
                inner.set_aside(&job, &why).await;
                return;
            }
            Err(Failure::Store(e)) if job.strict && refused_for_good(e.status()) => {
                tracing::warn!(
                    bucket = job.record.bucket,
                    key = job.record.key,
                    "Store refused a strict write-back entry: {}",
                    error_chain(&e)
                );
                inner.refused(&job, e.status(), e.guest_message()).await;
                return;
            }
            Err(e) => {
                inner.metrics.retry();
                if !inner.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        bucket = job.record.bucket,
                        key = job.record.key,
                        "Store failed; write-back uploads will be retried until it takes them: {}",
                        error_chain(&e)
                    );
                } else {
                    tracing::debug!(key = job.record.key, failures, "Upload failed again: {e}");
                }
                tokio::time::sleep(backoff(failures)).await;
                failures = failures.saturating_add(1);
            }
        }
    }
}

/// One attempt; `body` keeps the checked body between attempts.
async fn attempt(
    inner: &Inner,
    job: &Job,
    body: &mut Option<Bytes>,
) -> Result<Option<String>, Failure> {
    let record = &job.record;
    let store = inner.storage.bucket_tried_once(&record.bucket)?;
    let path = key_path(&record.key)?;
    if record.kind == Kind::Delete {
        return match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        };
    }
    let bytes = match body {
        Some(bytes) => bytes.clone(),
        None => body.insert(load(job).await?).clone(),
    };
    let attributes = inner.storage.attributes(record.content_type.as_deref(), &record.metadata);
    if record.size <= SINGLE_PUT_MAX {
        let options = PutOptions { attributes, ..PutOptions::default() };
        return Ok(store.put_opts(&path, PutPayload::from(bytes), options).await?.e_tag);
    }
    let options = PutMultipartOptions { attributes, ..PutMultipartOptions::default() };
    let part = MIN_PART.max(record.size.div_ceil(MAX_PARTS)) as usize;
    let mut writer =
        WriteMultipart::new_with_chunk_size(store.put_multipart_opts(&path, options).await?, part);
    for start in (0..bytes.len()).step_by(part) {
        writer.wait_for_capacity(2).await?;
        writer.put(bytes.slice(start..bytes.len().min(start + part)));
    }
    Ok(writer.finish().await?.e_tag)
}

/// Maps the entry's body and checks it against the MD5 that was acknowledged.
async fn load(job: &Job) -> Result<Bytes, Failure> {
    let (path, size, md5) = (job.path.clone(), job.record.size, job.record.md5.clone());
    let loaded = tokio::task::spawn_blocking(move || -> Result<Bytes, Failure> {
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Failure::Corrupt("entry file missing".into()))
            }
            Err(e) => return Err(Failure::Read(e)),
        };
        let body = writer::map_body(&file, size).map_err(Failure::Read)?;
        let actual = entry::hex(&Md5::digest(&body));
        if actual != md5 {
            return Err(Failure::Corrupt(format!("body MD5 {actual}, acknowledged {md5}")));
        }
        Ok(body)
    })
    .await;
    loaded.map_err(|e| Failure::Read(io::Error::other(e)))?
}

/// Whether a store error will not go away by trying again.
fn refused_for_good(status: Status) -> bool {
    matches!(
        status,
        Status::NoSuchBucket
            | Status::NoSuchKey
            | Status::AccessDenied
            | Status::InvalidArgument
            | Status::InvalidBucketName
            | Status::EntityTooLarge
            | Status::PreconditionFailed
            | Status::NotImplemented
    )
}

/// The wait after `failures` failed attempts: exponential, capped, half of it random.
fn backoff(failures: u32) -> Duration {
    let full = FIRST_BACKOFF.saturating_mul(1 << failures.min(16)).min(MAX_BACKOFF);
    let half = full / 2;
    let random = RandomState::new().hash_one(failures);
    half + half.mul_f64((random % 1000) as f64 / 1000.0)
}

impl Inner {
    /// `job` reached the store: its files go (superseded ones first), then it leaves the
    /// queue and its waiters are answered.
    async fn stored(&self, job: &Job, etag: Option<String>) {
        self.remove(job, true).await;
        let seq = job.record.seq;
        self.finish(job, Outcome::Stored { seq, etag });
    }

    /// The store refused strict `job` for good: it is dropped and its put answered.
    async fn refused(&self, job: &Job, status: Status, message: String) {
        self.remove(job, false).await;
        self.finish(job, Outcome::Refused { status, message });
    }

    /// `job`'s file is damaged: it is set aside for inspection and dropped.
    async fn set_aside(&self, job: &Job, why: &str) {
        tracing::error!(
            entry = %job.path.display(),
            bucket = job.record.bucket,
            key = job.record.key,
            "Write-back entry damaged, set aside and not uploaded: {why}"
        );
        // The files it superseded go too: replayed later, they could overwrite newer puts.
        let (path, dir, doomed) = (job.path.clone(), self.dir.clone(), job.doomed.clone());
        let _ = tokio::task::spawn_blocking(move || {
            for old in &doomed {
                let _ = remove_file(old);
            }
            let _ = std::fs::rename(&path, entry::corrupt_path(&path));
            entry::sync_dir(&dir)
        })
        .await;
        let message = format!("The spooled object was damaged: {why}");
        self.finish(job, Outcome::Refused { status: Status::InternalError, message });
    }

    /// Removes `job`'s file, after the files it superseded (`doomed`) are durably gone. A
    /// failure is retried (with backoff, the object staying busy): an entry file left behind
    /// while a newer entry of its object is stored and removed would be replayed over it.
    async fn remove(&self, job: &Job, doomed: bool) {
        let doomed = if doomed { job.doomed.clone() } else { Vec::new() };
        let mut failures = 0;
        loop {
            let (doomed, path, dir) = (doomed.clone(), job.path.clone(), self.dir.clone());
            let removed = tokio::task::spawn_blocking(move || {
                if !doomed.is_empty() {
                    for old in &doomed {
                        remove_file(old)?;
                    }
                    entry::sync_dir(&dir)?;
                }
                remove_file(&path)?;
                entry::sync_dir(&dir)
            })
            .await
            .map_err(io::Error::other)
            .and_then(|removed| removed);
            match removed {
                Ok(()) => return,
                Err(e) if failures == 0 => {
                    tracing::warn!(entry = %job.path.display(), "Cannot remove a spool entry: {e}");
                }
                Err(_) => {}
            }
            tokio::time::sleep(backoff(failures)).await;
            failures = failures.saturating_add(1);
        }
    }

    /// Takes `job` out of the queue and answers its waiters with `outcome`.
    fn finish(&self, job: &Job, outcome: Outcome) {
        let done = {
            let mut queue = self.queue();
            let done = queue.finish(job.record.seq);
            self.refresh(&queue);
            done
        };
        self.cache.invalidate(&job.record.bucket, &job.record.key);
        self.progress.notify_waiters();
        self.work.notify_waiters();
        for waiter in done.into_iter().flat_map(|d| d.waiters) {
            let _ = waiter.send(outcome.clone());
        }
    }
}

fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        for failures in 0..40 {
            let full = FIRST_BACKOFF.saturating_mul(1 << failures.min(16)).min(MAX_BACKOFF);
            let wait = backoff(failures);
            assert!(wait >= full / 2 && wait <= full, "{failures}: {wait:?} of {full:?}");
        }
        let waits: std::collections::BTreeSet<_> = (0..20).map(|_| backoff(5)).collect();
        assert!(waits.len() > 1, "no jitter");
    }

    #[test]
    fn only_refusals_are_final() {
        assert!(refused_for_good(Status::AccessDenied));
        assert!(!refused_for_good(Status::InternalError));
        assert!(!refused_for_good(Status::ServiceUnavailable));
        assert!(!refused_for_good(Status::SlowDown));
    }
}
