//! The operations a guest can call, each performed with the real storage client.
//!
//! An operation receives a decoded [`Call`] and the guest buffer it came in; it writes the
//! reply (`[meta JSON][body]`) into that buffer through [`Out`], which refuses any write
//! beyond the buffer, and returns the [`Answer`] to publish.
//!
//! With write-back on, puts and deletes go to the [`Spool`], and a `Get`/`Head` of an object
//! the spool holds is answered from it.

pub mod get;
pub mod invoke;
mod list;
mod put;

use std::sync::Arc;

use nexus_channel::region::RegionError;
use nexus_channel::wire::{Call, Envelope, ObjectRef, Status};
use nexus_channel::Region;
use object_store::ObjectStoreExt;

use crate::cache::ObjectCache;
use crate::metrics::Metrics;
use crate::policy::{Access, Denied};
use crate::served::{Answer, ServedRegion};
use crate::spool::{Spool, SpoolError};
use crate::storage::{error_chain, key_path, Storage, StorageError};
use crate::streams::{Stream, StreamError};

/// What every operation needs besides its region.
#[derive(Debug)]
pub struct Context {
    pub storage: Arc<Storage>,
    pub cache: Arc<ObjectCache>,
    pub metrics: Metrics,
    /// The write-back spool; `None` when `writeback.enabled` is off.
    pub spool: Option<Spool>,
    /// What runs functions for `Invoke` calls; unset in a backend without functions.
    pub invoker: invoke::InvokerSlot,
}

/// A failed operation: the status and message the guest receives.
#[derive(Debug)]
pub struct OpError {
    pub status: Status,
    pub message: String,
    /// Metrics label when the call was refused before reaching storage.
    pub rejected: Option<&'static str>,
}

impl OpError {
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), rejected: None }
    }
}

impl From<StorageError> for OpError {
    fn from(e: StorageError) -> Self {
        Self::new(e.status(), e.guest_message())
    }
}

impl From<object_store::Error> for OpError {
    fn from(e: object_store::Error) -> Self {
        StorageError::from(e).into()
    }
}

impl From<SpoolError> for OpError {
    fn from(e: SpoolError) -> Self {
        match e {
            SpoolError::Refused { status, message } => Self::new(status, message),
            SpoolError::Stopped | SpoolError::Full => {
                Self::new(Status::ServiceUnavailable, e.to_string())
            }
            SpoolError::Quota(_) => Self::new(Status::SlowDown, e.to_string()),
            e => {
                // The guest gets no host paths; the log gets the detail.
                tracing::warn!("Write-back spool: {}", error_chain(&e));
                Self::new(Status::InternalError, "The host could not spool the object")
            }
        }
    }
}

impl From<Denied> for OpError {
    fn from(e: Denied) -> Self {
        let status = match e {
            Denied::NotGranted { .. } | Denied::NotInvocable { .. } => Status::AccessDenied,
            Denied::TooLarge { .. } => Status::EntityTooLarge,
            Denied::RateLimited { .. } => Status::SlowDown,
        };
        Self { status, message: e.to_string(), rejected: Some(e.reason()) }
    }
}

impl From<RegionError> for OpError {
    fn from(e: RegionError) -> Self {
        Self::new(Status::InternalError, error_chain(&e))
    }
}

impl From<StreamError> for OpError {
    fn from(e: StreamError) -> Self {
        Self { status: Status::SlowDown, message: e.to_string(), rejected: Some("streams") }
    }
}

/// The guest buffer a reply is written into.
#[derive(Debug, Clone, Copy)]
pub struct Out<'a> {
    region: &'a Region,
    offset: usize,
    len: usize,
}

impl<'a> Out<'a> {
    pub fn new(region: &'a Region, envelope: &Envelope) -> Self {
        Self { region, offset: envelope.buffer_offset, len: envelope.buffer_len }
    }

    /// Capacity in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Copies `bytes` to position `at` of the buffer.
    pub fn write(&self, at: usize, bytes: &[u8]) -> Result<(), OpError> {
        match at.checked_add(bytes.len()) {
            Some(end) if end <= self.len => Ok(self.region.copy_in(self.offset + at, bytes)?),
            _ => Err(OpError::new(Status::InternalError, "reply larger than the buffer")),
        }
    }

    /// Copies `len` bytes at position `at` of the buffer out (a request body).
    pub fn read(&self, at: usize, len: usize) -> Result<Vec<u8>, OpError> {
        match at.checked_add(len) {
            Some(end) if end <= self.len => {
                let mut bytes = vec![0; len];
                self.region.copy_out(self.offset + at, &mut bytes)?;
                Ok(bytes)
            }
            _ => Err(OpError::new(Status::InvalidRequest, "body outside the buffer")),
        }
    }

    /// Writes `meta` at the start of the buffer; returns its length.
    pub fn meta(&self, meta: &serde_json::Value) -> Result<u32, OpError> {
        let bytes = meta.to_string().into_bytes();
        self.write(0, &bytes)?;
        Ok(bytes.len() as u32)
    }
}

/// Performs `call` for `served`.
pub async fn run(
    ctx: &Context,
    served: &ServedRegion,
    envelope: &Envelope,
    call: Call,
) -> Result<Answer, OpError> {
    let out = Out::new(&served.region, envelope);
    match call {
        Call::Ping => Ok(Answer::default()),
        Call::Head(object) => get::head(ctx, served, &object, out).await,
        Call::Get { object, range } => get::get(ctx, served, &object, range, out).await,
        Call::Read { stream } => get::read(ctx, served, stream, out).await,
        Call::Put { object, params, more } => {
            served.forget_staged(&object.bucket, &object.key);
            put::put(ctx, served, &object, &params, envelope, more, out).await
        }
        Call::Write { stream, more } => put::write(ctx, served, stream, envelope, more, out).await,
        Call::Close { stream } => close(served, stream).await,
        Call::Delete(object) => {
            served.forget_staged(&object.bucket, &object.key);
            delete(ctx, served, &object, out).await
        }
        Call::List { bucket, params } => list::list(ctx, served, &bucket, &params, out).await,
        Call::Invoke { function, kind } => {
            invoke::invoke(ctx, served, &function, kind, envelope, out).await
        }
    }
}

/// `Delete`: through the spool, as a tombstone ordered after the object's pending puts, when
/// write-back is on.
async fn delete(
    ctx: &Context,
    served: &ServedRegion,
    object: &ObjectRef,
    out: Out<'_>,
) -> Result<Answer, OpError> {
    served.policy.check(Access::Delete, &object.bucket, &object.key)?;
    let store = ctx.storage.bucket(&object.bucket)?;
    let path = key_path(&object.key)?;
    if let Some(spool) = &ctx.spool {
        spool.delete(object, &served.function).await?;
    } else {
        match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    ctx.cache.invalidate(&object.bucket, &object.key);
    Ok(Answer { meta_len: out.meta(&serde_json::json!({}))?, ..Answer::default() })
}

/// Answers, on the serving thread, the calls that need no I/O: `Ping`, a `Head`/`Get` of a
/// cached object, the next chunk of a download from memory. `None`: the call needs I/O and
/// goes to [`run`].
pub fn run_inline(
    ctx: &Context,
    served: &ServedRegion,
    envelope: &Envelope,
    call: &Call,
) -> Option<Result<Answer, OpError>> {
    let out = Out::new(&served.region, envelope);
    match call {
        Call::Ping => Some(Ok(Answer::default())),
        Call::Head(object) => get::head_cached(ctx, served, object, out),
        Call::Get { object, range } => get::get_cached(ctx, served, object, *range, out),
        Call::Read { stream } => get::read_in_memory(ctx, served, *stream, out),
        _ => None,
    }
}

/// Abandons a stream: drops a download, aborts an upload.
async fn close(served: &ServedRegion, stream: u64) -> Result<Answer, OpError> {
    match served.streams.take(stream) {
        Some(Stream::Upload(upload)) => put::abort(upload).await?,
        Some(Stream::Download(_)) => {}
        None => return Err(no_stream(stream)),
    }
    Ok(Answer::default())
}

fn no_stream(stream: u64) -> OpError {
    OpError::new(Status::NoSuchUpload, format!("No open stream {stream}"))
}
