//! A guest's connection to the backend over one region.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexus_channel::layout::{header, host_state, RingId};
use nexus_channel::notify::{Kick, Side, DEFAULT_SPIN};
use nexus_channel::region::RegionError;
use nexus_channel::ring::RingError;
use nexus_channel::staging::StagingError;
use nexus_channel::wire::{Op, Status};
use nexus_channel::{
    CallDesc, CompletionDesc, Consumer, Geometry, InvocationDesc, Notifier, Producer, Region,
    ResultDesc,
};

use crate::locate::{find_doorbell, replace_stream, Doorbell};

/// How long a call may wait for its completion before the client gives up.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Errors of the guest client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The region could not be mapped or is not a Nexus region.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// The rings are in a state the protocol does not allow.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The staging area's directory is unreadable.
    #[error(transparent)]
    Staging(#[from] StagingError),
    /// Every guest buffer is leased.
    #[error("All {0} channel buffers are in use; close response bodies that are no longer needed")]
    NoBuffer(u32),
    /// A buffer index that is not a leased guest buffer.
    #[error("Buffer {0} is not leased by this client")]
    NotLeased(u32),
    /// The backend does not serve this region.
    #[error("The Nexus backend is not serving this region (state {0})")]
    BackendGone(u32),
    /// No completion arrived in time.
    #[error("No answer from the Nexus backend within {0:?}")]
    Timeout(Duration),
    /// The host answered something that does not belong to the call.
    #[error("Protocol error: {0}")]
    Protocol(&'static str),
    /// The doorbell could not be opened.
    #[error("Cannot open the doorbell {doorbell:?}")]
    Doorbell {
        doorbell: Doorbell,
        #[source]
        source: std::io::Error,
    },
    /// The backend answered with an S3 error.
    #[error("{code}: {message}")]
    Status { code: String, message: String },
}

/// One call: the request bytes are already in `buffer` (see `nexus_channel::wire`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Request {
    pub op: u16,
    pub flags: u16,
    pub buffer: u32,
    pub bucket_len: u16,
    pub key_len: u16,
    pub params_len: u32,
    pub body_len: u64,
    pub stream: u64,
}

/// The answer to a call; meta and body sit at the start of the call's buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Reply {
    pub status: u32,
    pub flags: u32,
    pub meta_len: u64,
    pub body_len: u64,
    pub object_size: u64,
    pub stream: u64,
}

#[derive(Debug)]
pub(crate) struct InvocationRings {
    pub(crate) incoming: Consumer<InvocationDesc>,
    pub(crate) results: Producer<ResultDesc>,
}

#[derive(Debug)]
struct Rings {
    calls: Producer<CallDesc>,
    completions: Consumer<CompletionDesc>,
    next_tag: u64,
}

/// The guest end of a region.
#[derive(Debug)]
pub struct Client {
    region: Arc<Region>,
    geometry: Geometry,
    pub(crate) notifier: Notifier,
    rings: Mutex<Rings>,
    pub(crate) invocations: Mutex<InvocationRings>,
    free: Mutex<Vec<u32>>,
    /// The host epoch this client last synced to.
    pub(crate) epoch: AtomicU64,
    /// A vsock doorbell and the descriptor the notifier polls: a restored VM's VMM has none of
    /// the old connections, so it is dialled again at a new epoch.
    redial: Option<(Doorbell, RawFd)>,
}

impl Client {
    /// Maps the region at `path` and attaches to its rings, sleeping on the doorbell stream
    /// [`find_doorbell`] finds, or on a shared futex when there is none.
    pub fn open(path: &Path) -> Result<Self, ClientError> {
        let doorbell = find_doorbell(path);
        let (kick, redial) = match doorbell {
            Some(doorbell) => {
                let stream = doorbell.connect().map_err(|source| ClientError::Doorbell {
                    doorbell: doorbell.clone(),
                    source,
                })?;
                let fd = stream.as_raw_fd();
                let redial = matches!(doorbell, Doorbell::Vsock { .. }).then_some((doorbell, fd));
                (Kick::Stream(stream), redial)
            }
            None => (Kick::Futex, None),
        };
        Ok(Self { redial, ..Self::open_with(path, kick)? })
    }

    /// Maps the region at `path`, sleeping and waking through `kick`.
    pub fn open_with(path: &Path, kick: Kick) -> Result<Self, ClientError> {
        let (region, geometry) = Region::open(path)?;
        let region = Arc::new(region);
        let state = region.load_u32(header::HOST_STATE)?;
        if state != host_state::READY {
            return Err(ClientError::BackendGone(state));
        }
        let rings = Rings {
            calls: Producer::attach(region.clone(), &geometry, RingId::Calls)?,
            completions: Consumer::attach(region.clone(), &geometry, RingId::Completions)?,
            next_tag: 1,
        };
        let invocations = InvocationRings {
            incoming: Consumer::attach(region.clone(), &geometry, RingId::Invocations)?,
            results: Producer::attach(region.clone(), &geometry, RingId::Results)?,
        };
        Ok(Self {
            notifier: Notifier::with_kick(region.clone(), Side::Guest, DEFAULT_SPIN, kick),
            invocations: Mutex::new(invocations),
            free: Mutex::new((0..geometry.guest_buffers).rev().collect()),
            region,
            geometry,
            rings: Mutex::new(rings),
            epoch: AtomicU64::new(0),
            redial: None,
        })
    }

    /// Re-attaches every ring to the indices the host published: after the host opened a new
    /// epoch (e.g. this VM was restored from a snapshot and the region started afresh).
    pub(crate) fn reattach(&self, invocations: &mut InvocationRings) -> Result<(), ClientError> {
        let (region, geometry) = (&self.region, &self.geometry);
        *invocations = InvocationRings {
            incoming: Consumer::attach(region.clone(), geometry, RingId::Invocations)?,
            results: Producer::attach(region.clone(), geometry, RingId::Results)?,
        };
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        rings.calls = Producer::attach(region.clone(), geometry, RingId::Calls)?;
        rings.completions = Consumer::attach(region.clone(), geometry, RingId::Completions)?;
        if let Some((doorbell, fd)) = &self.redial {
            // Best effort: without it the notifier's bounded waits still see every change.
            let _ = doorbell.connect().and_then(|stream| replace_stream(*fd, stream));
        }
        Ok(())
    }

    /// The mapped region.
    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    /// The region's geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Leases a free guest buffer; returns its index and a pointer to its first byte. The
    /// pointer stays valid for `geometry().buffer_size` bytes while the client lives.
    pub fn lease(&self) -> Result<(u32, *mut u8), ClientError> {
        let index = self
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .ok_or(ClientError::NoBuffer(self.geometry.guest_buffers))?;
        Ok((index, self.buffer_ptr(index)?))
    }

    /// Returns a leased buffer.
    pub fn release(&self, index: u32) -> Result<(), ClientError> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if !self.geometry.is_guest_buffer(index) || free.contains(&index) {
            return Err(ClientError::NotLeased(index));
        }
        free.push(index);
        Ok(())
    }

    /// Copies `bytes` into leased buffer `index` at position `at`.
    pub fn write(&self, index: u32, at: usize, bytes: &[u8]) -> Result<(), ClientError> {
        let offset = self.span(index, at, bytes.len())?;
        Ok(self.region.copy_in(offset, bytes)?)
    }

    /// Runs `f` over `len` bytes of buffer `index` at position `at`, in place (no copy).
    ///
    /// Only for a buffer whose call has completed: the host writes a buffer only between
    /// receiving a call on it and publishing the completion, so the bytes are stable now.
    pub fn read_in_place<R>(
        &self,
        index: u32,
        at: usize,
        len: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, ClientError> {
        let offset = self.span(index, at, len)?;
        let ptr = self.region.span(offset, len)?;
        // SAFETY: `span` checked the bytes lie inside this client's mapping, which outlives
        // the borrow; per the protocol (above) nobody writes them while `f` runs.
        let bytes = unsafe { std::slice::from_raw_parts(ptr.cast_const(), len) };
        Ok(f(bytes))
    }

    /// Region offset of `len` bytes at `at` inside guest buffer `index`.
    fn span(&self, index: u32, at: usize, len: usize) -> Result<usize, ClientError> {
        let (offset, size) = match self.geometry.buffer(index) {
            Some(buffer) if self.geometry.is_guest_buffer(index) => buffer,
            _ => return Err(ClientError::NotLeased(index)),
        };
        match at.checked_add(len) {
            Some(end) if end <= size => Ok(offset + at),
            _ => Err(ClientError::Protocol("access beyond the buffer")),
        }
    }

    fn buffer_ptr(&self, index: u32) -> Result<*mut u8, ClientError> {
        let (offset, len) = self.geometry.buffer(index).ok_or(ClientError::NotLeased(index))?;
        Ok(self.region.span(offset, len)?)
    }

    /// Sends a call and waits for its completion.
    pub fn call(&self, request: &Request) -> Result<Reply, ClientError> {
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        let tag = rings.next_tag;
        rings.next_tag = tag.wrapping_add(1);
        let desc = CallDesc {
            tag,
            op: request.op,
            flags: request.flags,
            buffer: request.buffer,
            bucket_len: request.bucket_len,
            key_len: request.key_len,
            params_len: request.params_len,
            body_len: request.body_len,
            stream: request.stream,
            _reserved: [0; 3],
        };
        // The ring is private to this (serialised) client, so it is never full here: every call
        // is answered before the next is sent.
        rings.calls.push(&desc)?;
        self.notifier.notify_peer()?;
        let region = &self.region;
        let completions = &rings.completions;
        let ready = self.notifier.wait(CALL_TIMEOUT, || -> Result<bool, ClientError> {
            if completions.ready()? {
                return Ok(true);
            }
            let state = region.atomic_u32(header::HOST_STATE)?.load(Ordering::Acquire);
            if state != host_state::READY {
                return Err(ClientError::BackendGone(state));
            }
            Ok(false)
        })?;
        if !ready {
            return Err(ClientError::Timeout(CALL_TIMEOUT));
        }
        let done = rings.completions.pop()?.ok_or(ClientError::Protocol("completion vanished"))?;
        if done.tag != tag || done.buffer != request.buffer {
            return Err(ClientError::Protocol("completion does not match the call"));
        }
        let reply_len = u64::from(done.meta_len).checked_add(done.body_len);
        if reply_len.is_none_or(|n| n > u64::from(self.geometry.buffer_size)) {
            return Err(ClientError::Protocol("reply larger than its buffer"));
        }
        Ok(Reply {
            status: u32::from(done.status),
            flags: u32::from(done.flags),
            meta_len: u64::from(done.meta_len),
            body_len: done.body_len,
            object_size: done.object_size,
            stream: done.stream,
        })
    }

    /// A round trip with no payload; answers whether the backend serves this region.
    pub fn ping(&self) -> Result<(), ClientError> {
        let (buffer, _) = self.lease()?;
        let reply = self.call(&Request { op: Op::Ping as u16, buffer, ..Request::default() });
        self.release(buffer)?;
        match reply?.status {
            s if s == Status::Ok as u32 => Ok(()),
            _ => Err(ClientError::Protocol("ping refused")),
        }
    }
}
