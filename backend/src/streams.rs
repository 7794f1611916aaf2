//! Open streams of one region: downloads larger than a buffer and chunked uploads.
//!
//! A stream is *taken* out of the table while a call works on it and put back if it goes on,
//! so two calls can never drive the same stream at once (the second finds nothing:
//! `NoSuchUpload`). The table is bounded; idle streams are dropped after [`IDLE`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{Attributes, ObjectStore, WriteMultipart};

use crate::cache::ObjectInfo;
use crate::spool::Writer;

/// How long an untouched stream is kept.
const IDLE: Duration = Duration::from_secs(300);

/// The remaining bytes of a `Get`.
pub struct Download {
    pub source: Source,
    /// Bytes still to deliver.
    pub remaining: u64,
    /// Whole-object bytes collected for the cache, with their attributes and bucket/key.
    pub fill: Option<CacheFill>,
}

/// Where a download's bytes come from.
pub enum Source {
    Memory(Bytes),
    Remote { stream: BoxStream<'static, object_store::Result<Bytes>>, pending: Bytes },
}

/// An object being collected for the cache while it streams to the guest.
#[derive(Debug)]
pub struct CacheFill {
    pub bucket: String,
    pub key: String,
    pub info: ObjectInfo,
    pub bytes: BytesMut,
}

/// A chunked `Put` in progress.
pub struct Upload {
    pub bucket: String,
    pub key: String,
    pub written: u64,
    pub sink: Sink,
}

/// Where an upload's bytes go: held until they reach the multipart threshold (so smaller
/// objects are one plain PUT, as boto3 sends them), then parts of a multipart upload; or, with
/// write-back on, the spool.
pub enum Sink {
    Held { store: Arc<dyn ObjectStore>, path: Path, attributes: Attributes, bytes: BytesMut },
    Multipart(WriteMultipart),
    Spooled(Writer),
}

/// A stream of either kind.
pub enum Stream {
    Download(Download),
    Upload(Upload),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stream::Download(d) => write!(f, "Download({} bytes left)", d.remaining),
            Stream::Upload(u) => write!(f, "Upload({}/{}, {} bytes)", u.bucket, u.key, u.written),
        }
    }
}

/// Errors of the stream table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    /// Too many open streams.
    #[error("Too many open streams ({0}); close response bodies that are no longer needed")]
    TooMany(usize),
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    open: HashMap<u64, (Stream, Instant)>,
}

/// The streams of one region.
#[derive(Debug)]
pub struct Streams {
    max: usize,
    table: Mutex<Table>,
}

impl Streams {
    /// A table holding at most `max` streams.
    pub fn new(max: u32) -> Self {
        Self { max: max.max(1) as usize, table: Mutex::default() }
    }

    /// Registers a new stream and returns its id (never 0).
    pub fn open(&self, stream: Stream, now: Instant) -> Result<u64, StreamError> {
        let mut table = self.lock();
        table.open.retain(|_, (_, touched)| now.duration_since(*touched) < IDLE);
        if table.open.len() >= self.max {
            return Err(StreamError::TooMany(self.max));
        }
        table.next += 1;
        let id = table.next;
        table.open.insert(id, (stream, now));
        Ok(id)
    }

    /// Takes stream `id` out of the table.
    pub fn take(&self, id: u64) -> Option<Stream> {
        self.lock().open.remove(&id).map(|(stream, _)| stream)
    }

    /// Takes stream `id` out of the table if `wanted` says so.
    pub fn take_if(&self, id: u64, wanted: impl FnOnce(&Stream) -> bool) -> Option<Stream> {
        let mut table = self.lock();
        if !wanted(&table.open.get(&id)?.0) {
            return None;
        }
        table.open.remove(&id).map(|(stream, _)| stream)
    }

    /// Puts a stream taken with [`Streams::take`] back.
    pub fn put_back(&self, id: u64, stream: Stream, now: Instant) {
        self.lock().open.insert(id, (stream, now));
    }

    /// Number of open streams.
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn download() -> Stream {
        Stream::Download(Download {
            source: Source::Memory(Bytes::from_static(b"abc")),
            remaining: 3,
            fill: None,
        })
    }

    #[test]
    fn bounded_and_idle_streams_expire() {
        let streams = Streams::new(2);
        let now = Instant::now();
        let a = streams.open(download(), now).unwrap();
        streams.open(download(), now).unwrap();
        assert_eq!(streams.open(download(), now), Err(StreamError::TooMany(2)));
        assert!(streams.take(a).is_some());
        assert!(streams.take(a).is_none(), "a taken stream cannot be taken twice");
        streams.open(download(), now).unwrap();
        assert!(streams.open(download(), now + IDLE).is_ok(), "idle streams were dropped");
        assert_eq!(streams.len(), 1);
    }
}
