//! The host end of one region: its rings, its doorbell, its open streams and its function's
//! policy. A serving thread pops calls (see [`crate::serve`]); tasks answer them through
//! [`ServedRegion::complete`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexus_channel::layout::{header, host_state, RingId};
use nexus_channel::notify::Side;
use nexus_channel::region::RegionError;
use nexus_channel::ring::RingError;
use nexus_channel::wire::Status;
use nexus_channel::{CompletionDesc, Geometry, Notifier, Producer, Region};

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
    completions: Mutex<Producer<CompletionDesc>>,
    faulted: AtomicBool,
}

impl ServedRegion {
    /// Creates the region file and its host end, in the `INIT` state.
    pub fn create(
        id: String,
        function: String,
        path: &std::path::Path,
        geometry: Geometry,
        policy: Policy,
        spin: Duration,
    ) -> Result<Self, RegionError> {
        let region = Arc::new(Region::create(path, &geometry)?);
        Ok(Self {
            id,
            function,
            rate: Mutex::new(RateLimiter::new(&policy)),
            policy,
            notifier: Notifier::new(region.clone(), Side::Host, spin),
            streams: Streams::new(geometry.guest_buffers.saturating_mul(2)),
            completions: Mutex::new(Producer::new(region.clone(), &geometry, RingId::Completions)),
            faulted: AtomicBool::new(false),
            region,
            geometry,
        })
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

    /// Stops serving a region whose guest broke the protocol.
    pub fn fault(&self) {
        self.faulted.store(true, Ordering::Release);
        let _ = self.set_state(host_state::GONE);
    }

    /// Whether the region was faulted.
    pub fn is_faulted(&self) -> bool {
        self.faulted.load(Ordering::Acquire)
    }
}
