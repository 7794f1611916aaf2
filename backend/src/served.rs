//! The host end of one region: its rings, its doorbell, its open streams and its function's
//! policy. A serving thread pops calls (see [`crate::serve`]); tasks answer them through
//! [`ServedRegion::complete`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexus_channel::layout::{header, host_state, RingId};
use nexus_channel::notify::{Kick, Side};
use nexus_channel::region::RegionError;
use nexus_channel::ring::RingError;
use nexus_channel::wire::Status;
use nexus_channel::{CompletionDesc, Geometry, Notifier, Producer, Region};

use crate::cache::Cached;
use crate::invoke::{Invocations, InvokeError, Outcome};
use crate::policy::{Policy, RateLimiter};
use crate::streams::Streams;

/// The answer to one call, ready to publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Answer {
    pub status: Status,
    pub flags: u16,
    pub meta_len: u32,
    pub body_len: u64,
    pub object_size: u64,
    pub stream: u64,
}

/// One region as the backend serves it.
#[derive(Debug)]
pub struct ServedRegion {
    pub id: String,
    pub function: String,
    pub region: Arc<Region>,
    pub geometry: Geometry,
    pub policy: Policy,
    pub rate: Mutex<Option<RateLimiter>>,
    pub notifier: Notifier,
    pub streams: Streams,
    pub invocations: Invocations,
    completions: Mutex<Producer<CompletionDesc>>,
    /// Objects prefetched for the invocation about to run, by bucket and key.
    staged: Mutex<HashMap<(String, String), Cached>>,
    faulted: AtomicBool,
    epoch: AtomicU64,
}

impl ServedRegion {
    /// The host end of `region` (created, in the `INIT` state), waking its guest by `kick`.
    pub fn new(
        id: String,
        function: String,
        region: Arc<Region>,
        geometry: Geometry,
        policy: Policy,
        spin: Duration,
        kick: Kick,
    ) -> Self {
        Self {
            id,
            function,
            rate: Mutex::new(RateLimiter::new(&policy)),
            policy,
            notifier: Notifier::with_kick(region.clone(), Side::Host, spin, kick),
            streams: Streams::new(geometry.guest_buffers.saturating_mul(2)),
            completions: Mutex::new(Producer::new(region.clone(), &geometry, RingId::Completions)),
            invocations: Invocations::new(region.clone(), geometry),
            staged: Mutex::default(),
            faulted: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            region,
            geometry,
        }
    }

    /// Opens the channel at `epoch` (unique across regions and restarts, so a guest restored
    /// from a snapshot sees a new one) and publishes `READY`; the guest acknowledges the epoch
    /// when it is ready for invocations.
    pub fn open_channel(&self, epoch: u64) -> Result<(), RegionError> {
        self.epoch.store(epoch, Ordering::Release);
        self.region.atomic_u64(header::EPOCH)?.store(epoch, Ordering::Release);
        self.set_state(host_state::READY)
    }

    /// Whether the guest acknowledged the current epoch.
    pub fn guest_ready(&self) -> bool {
        let epoch = self.epoch.load(Ordering::Acquire);
        let acked = self.region.atomic_u64(header::EPOCH_ACK).map(|a| a.load(Ordering::Acquire));
        epoch != 0 && acked.is_ok_and(|acked| acked == epoch)
    }

    /// Runs one invocation: `event` in, the guest's result out.
    pub async fn invoke(&self, event: &[u8], deadline: Duration) -> Result<Outcome, InvokeError> {
        if self.is_faulted() {
            return Err(InvokeError::Gone);
        }
        if !self.guest_ready() {
            return Err(InvokeError::NotReady);
        }
        self.invocations.send(event, deadline, || Ok(self.notifier.notify_peer()?)).await
    }

    /// Keeps `objects` in memory for this region's guest until [`ServedRegion::unstage`]: its
    /// `Get`/`Head` of them are answered without going to storage.
    pub fn stage(&self, objects: Vec<(String, String, Cached)>) {
        let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        staged.extend(objects.into_iter().map(|(bucket, key, object)| ((bucket, key), object)));
    }

    /// Drops every staged object.
    pub fn unstage(&self) {
        self.staged.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// A staged object, if `bucket/key` is one.
    pub fn staged(&self, bucket: &str, key: &str) -> Option<Cached> {
        let staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        staged.get(&(bucket.to_owned(), key.to_owned())).cloned()
    }

    /// Publishes a host state (`READY` to open the channel, `GONE` to close it).
    pub fn set_state(&self, state: u32) -> Result<(), RegionError> {
        self.region.store_u32(header::HOST_STATE, state)
    }

    /// Publishes the completion of call `tag` and wakes the guest.
    pub fn complete(&self, tag: u64, buffer: u32, answer: &Answer) -> Result<(), RingError> {
        let desc = CompletionDesc {
            tag,
            status: answer.status as u16,
            flags: answer.flags,
            buffer,
            meta_len: answer.meta_len,
            _pad: 0,
            body_len: answer.body_len,
            object_size: answer.object_size,
            stream: answer.stream,
            _reserved: [0; 2],
        };
        self.completions.lock().unwrap_or_else(|e| e.into_inner()).push(&desc)?;
        self.notifier.notify_peer()?;
        Ok(())
    }

    /// Writes an error's meta into the call's buffer (when it is a guest buffer) and the answer.
    pub fn error_answer(&self, buffer: u32, status: Status, message: &str) -> Answer {
        let mut answer = Answer { status, ..Answer::default() };
        if let (true, Some((offset, len))) =
            (self.geometry.is_guest_buffer(buffer), self.geometry.buffer(buffer))
        {
            let meta = status.error_meta(&message.chars().take(len / 8).collect::<String>());
            if meta.len() <= len && self.region.copy_in(offset, &meta).is_ok() {
                answer.meta_len = meta.len() as u32;
            }
        }
        answer
    }

    /// Stops serving a region whose guest broke the protocol; returns whether this call did it
    /// (a region is faulted once, however many paths notice).
    pub fn fault(&self) -> bool {
        if self.faulted.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.invocations.abandon();
        let _ = self.set_state(host_state::GONE);
        true
    }

    /// Whether the region was faulted.
    pub fn is_faulted(&self) -> bool {
        self.faulted.load(Ordering::Acquire)
    }
}
