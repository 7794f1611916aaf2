//! Invocations, host side (rings 2 and 3): an event goes into a free host buffer and out on
//! ring 2; the guest's result comes back on ring 3 in the same buffer.
//!
//! Only the region's serving thread reads ring 3 (it is the one waiter on the guest's
//! doorbell): it hands each result to the invocation waiting for it. A host buffer is free
//! again only once its result has come back, so an invocation that timed out keeps its buffer
//! until the guest answers it (or the region goes away); the guest can never be handed a
//! buffer it may still write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexus_channel::layout::{result_status, RingId};
use nexus_channel::ring::RingError;
use nexus_channel::{Consumer, Geometry, InvocationDesc, Producer, Region, ResultDesc};
use tokio::sync::{oneshot, Semaphore};

/// Errors of an invocation.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The event does not fit a host buffer.
    #[error("Event of {len} bytes exceeds the {max}-byte invocation buffer")]
    TooLarge { len: usize, max: usize },
    /// The guest has not said it is ready.
    #[error("The function is not ready for invocations")]
    NotReady,
    /// No result in time.
    #[error("No result within {0:?}")]
    Timeout(Duration),
    /// The guest answered against the protocol.
    #[error("Protocol error: {0}")]
    Protocol(&'static str),
    /// The region stopped being served.
    #[error("The region is no longer served")]
    Gone,
    /// The rings failed.
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// A result from the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the handler returned (else `result` is Lambda's error shape).
    pub ok: bool,
    /// The result JSON.
    pub result: Vec<u8>,
}

#[derive(Debug)]
struct Pending {
    buffer: u32,
    /// `None` once the caller gave up waiting.
    reply: Option<oneshot::Sender<Result<Outcome, InvokeError>>>,
}

/// The invocation rings of one region.
#[derive(Debug)]
pub struct Invocations {
    region: Arc<Region>,
    geometry: Geometry,
    outgoing: Mutex<Producer<InvocationDesc>>,
    results: Mutex<Consumer<ResultDesc>>,
    free: Mutex<Vec<u32>>,
    slots: Semaphore,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
}

impl Invocations {
    pub fn new(region: Arc<Region>, geometry: Geometry) -> Self {
        let free: Vec<u32> = geometry.host_buffers().collect();
        Self {
            outgoing: Mutex::new(Producer::new(region.clone(), &geometry, RingId::Invocations)),
            results: Mutex::new(Consumer::new(region.clone(), &geometry, RingId::Results)),
            slots: Semaphore::new(free.len()),
            free: Mutex::new(free),
            pending: Mutex::default(),
            next_id: AtomicU64::new(1),
            region,
            geometry,
        }
    }

    /// Sends `event`; `wake` kicks the guest. Returns the receiver of its outcome.
    pub async fn send(
        &self,
        event: &[u8],
        deadline: Duration,
        wake: impl FnOnce() -> Result<(), RingError>,
    ) -> Result<Outcome, InvokeError> {
        let max = self.geometry.buffer_size as usize;
        if event.len() > max {
            return Err(InvokeError::TooLarge { len: event.len(), max });
        }
        let permit = self.slots.acquire().await.map_err(|_| InvokeError::Gone)?;
        let buffer = lock(&self.free).pop().ok_or(InvokeError::Protocol("no free host buffer"))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let sent = self.publish(id, buffer, event, deadline, tx);
        if let Err(e) = sent.and_then(|()| Ok(wake()?)) {
            lock(&self.pending).remove(&id);
            lock(&self.free).push(buffer);
            return Err(e);
        }
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(InvokeError::Gone),
            Err(_) => {
                // The guest may still answer into the buffer: keep it (and its permit) until then.
                if let Some(pending) = lock(&self.pending).get_mut(&id) {
                    pending.reply = None;
                    permit.forget();
                }
                Err(InvokeError::Timeout(deadline))
            }
        }
    }

    fn publish(
        &self,
        id: u64,
        buffer: u32,
        event: &[u8],
        deadline: Duration,
        reply: oneshot::Sender<Result<Outcome, InvokeError>>,
    ) -> Result<(), InvokeError> {
        let (offset, _) =
            self.geometry.buffer(buffer).ok_or(InvokeError::Protocol("no such host buffer"))?;
        self.region.copy_in(offset, event).map_err(RingError::from)?;
        lock(&self.pending).insert(id, Pending { buffer, reply: Some(reply) });
        let desc = InvocationDesc {
            id,
            buffer,
            flags: 0,
            len: event.len() as u64,
            deadline_ms: deadline.as_millis() as u64,
            _reserved: [0; 4],
        };
        Ok(lock(&self.outgoing).push(&desc)?)
    }

    /// Whether a result is waiting (serving thread).
    /// Invocations sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        lock(&self.pending).len()
    }

    pub fn has_results(&self) -> Result<bool, RingError> {
        lock(&self.results).ready()
    }

    /// Hands every waiting result to its invocation (serving thread). Returns how many results
    /// named no invocation of ours (a misbehaving guest).
    pub fn drain(&self) -> Result<u32, RingError> {
        let mut strays = 0;
        while let Some(desc) = lock(&self.results).pop()? {
            let Some(pending) = lock(&self.pending).remove(&desc.id) else {
                strays += 1;
                continue;
            };
            let outcome = self.read_result(&desc, pending.buffer);
            lock(&self.free).push(pending.buffer);
            match pending.reply {
                Some(reply) => {
                    let _ = reply.send(outcome);
                }
                None => self.slots.add_permits(1),
            }
        }
        Ok(strays)
    }

    fn read_result(&self, desc: &ResultDesc, buffer: u32) -> Result<Outcome, InvokeError> {
        if desc.buffer != buffer {
            return Err(InvokeError::Protocol("result in another buffer than its event"));
        }
        let (offset, capacity) = self.geometry.buffer(buffer).ok_or(InvokeError::Gone)?;
        let len = usize::try_from(desc.len).unwrap_or(usize::MAX);
        if len > capacity {
            return Err(InvokeError::Protocol("result larger than its buffer"));
        }
        let mut result = vec![0; len];
        self.region.copy_out(offset, &mut result).map_err(RingError::from)?;
        Ok(Outcome { ok: desc.status == result_status::OK, result })
    }

    /// Fails every waiting invocation (the region is going away).
    pub fn abandon(&self) {
        self.slots.close();
        lock(&self.pending).clear();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
