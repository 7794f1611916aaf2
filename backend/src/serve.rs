//! The serving loop of one region.
//!
//! ```text
//!  serving thread (one per region)                tokio tasks
//!  wait for calls (spin, then sleep on doorbell)
//!  pop descriptor (copied) ─ Envelope::open ─╴bad╶─► error completion
//!  copy args out ─ parse ─ rate limit ───────╴bad╶─► error completion
//!  no I/O needed (Ping, cached Get/Head, read ───► completion, inline
//!  from memory)
//!  acquire region permit (blocks: backpressure)
//!  spawn ────────────────────────────────────────► acquire global permit
//!                                                  ops::run (storage I/O)
//!                                                  completion + metrics
//! ```
//!
//! A corrupt ring faults the region: it stops being served, the guest sees the host state
//! `GONE`, and every other region goes on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_channel::layout::RingId;
use nexus_channel::ring::RingError;
use nexus_channel::wire::{Call, Envelope, Status};
use nexus_channel::{CallDesc, Consumer};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::ops::{self, Context, OpError};
use crate::served::{Answer, ServedRegion};
use crate::storage::error_chain;

/// How long a task retries publishing into a full completion ring before faulting the region.
const COMPLETION_PATIENCE: Duration = Duration::from_secs(5);

/// Everything a serving loop shares with the rest of the backend.
#[derive(Debug)]
pub struct Shared {
    pub context: Context,
    pub runtime: Handle,
    /// Calls in flight across all regions.
    pub inflight: Arc<Semaphore>,
    pub per_region: usize,
}

/// Serves `served` until `stop` is set (and the loop woken) or the guest corrupts the region.
pub fn serve(served: Arc<ServedRegion>, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let mut calls =
        Consumer::<CallDesc>::new(served.region.clone(), &served.geometry, RingId::Calls);
    let region_permits = Arc::new(Semaphore::new(shared.per_region));
    let result = loop {
        let ready = served.notifier.wait(Duration::from_secs(60), || {
            Ok::<_, RingError>(
                stop.load(Ordering::Acquire)
                    || calls.ready()?
                    || served.invocations.has_results()?,
            )
        });
        if let Err(e) = ready {
            break Err(e);
        }
        if stop.load(Ordering::Acquire) {
            break Ok(());
        }
        match served.invocations.drain() {
            Ok(0) => {}
            Ok(strays) => {
                for _ in 0..strays {
                    shared.context.metrics.rejected(&served.function, "stray_result");
                }
            }
            Err(e) => break Err(e),
        }
        match drain(&served, &shared, &mut calls, &region_permits) {
            Ok(()) => {}
            Err(e) => break Err(e),
        }
    };
    if let Err(e) = result {
        tracing::warn!(region = %served.id, function = %served.function, "Region faulted: {e}");
        if served.fault() {
            shared.context.metrics.region_faulted(&served.function);
        }
    }
}

/// Handles every call waiting in the ring.
fn drain(
    served: &Arc<ServedRegion>,
    shared: &Arc<Shared>,
    calls: &mut Consumer<CallDesc>,
    permits: &Arc<Semaphore>,
) -> Result<(), RingError> {
    while let Some(desc) = calls.pop()? {
        let envelope = match Envelope::open(&desc, &served.geometry) {
            Ok(envelope) => envelope,
            Err(e) => {
                reject(
                    served,
                    shared,
                    desc.tag,
                    desc.buffer,
                    e.status(),
                    &e.to_string(),
                    "malformed",
                )?;
                continue;
            }
        };
        let call = match parse(served, &envelope) {
            Ok(call) => call,
            Err(e) => {
                let reason = e.rejected.unwrap_or("malformed");
                reject(
                    served,
                    shared,
                    envelope.tag,
                    envelope.buffer,
                    e.status,
                    &e.message,
                    reason,
                )?;
                continue;
            }
        };
        let started = Instant::now();
        if let Some(result) = ops::run_inline(&shared.context, served, &envelope, &call) {
            let answer = account(served, shared, &envelope, result, started);
            publish_now(served, envelope.tag, envelope.buffer, &answer)?;
            continue;
        }
        // Blocks this region's thread, and so its ring, when it has too many calls in flight.
        let Ok(permit) = shared.runtime.block_on(permits.clone().acquire_owned()) else {
            return Ok(());
        };
        let (served, shared) = (served.clone(), shared.clone());
        shared.runtime.clone().spawn(async move {
            let _global = shared.inflight.acquire().await;
            shared.context.metrics.call_started();
            let result = ops::run(&shared.context, &served, &envelope, call).await;
            let answer = account(&served, &shared, &envelope, result, started);
            publish(&served, &shared, envelope.tag, envelope.buffer, answer).await;
            shared.context.metrics.call_answered();
            drop(permit);
        });
    }
    Ok(())
}

/// Turns an operation's result into the answer to publish, and counts it.
fn account(
    served: &ServedRegion,
    shared: &Shared,
    envelope: &Envelope,
    result: Result<Answer, OpError>,
    started: Instant,
) -> Answer {
    let answer = match result {
        Ok(answer) => answer,
        Err(e) => {
            if let Some(reason) = e.rejected {
                shared.context.metrics.rejected(&served.function, reason);
            }
            served.error_answer(envelope.buffer, e.status, &e.message)
        }
    };
    shared.context.metrics.call(
        &served.function,
        envelope.op,
        answer.status,
        started.elapsed(),
        answer.body_len + u64::from(answer.meta_len),
        envelope.body_len as u64,
    );
    answer
}

/// Copies the call's arguments out of the buffer, decodes them and applies the rate limit.
fn parse(served: &ServedRegion, envelope: &Envelope) -> Result<Call, OpError> {
    let mut args = vec![0; envelope.args_len];
    served.region.copy_out(envelope.buffer_offset, &mut args)?;
    let call = envelope.parse(&args).map_err(|e| OpError::new(e.status(), e.to_string()))?;
    if !matches!(call, Call::Ping) {
        if let Some(rate) = served.rate.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            rate.try_acquire(Instant::now())?;
        }
    }
    Ok(call)
}

fn reject(
    served: &ServedRegion,
    shared: &Shared,
    tag: u64,
    buffer: u32,
    status: Status,
    message: &str,
    reason: &'static str,
) -> Result<(), RingError> {
    shared.context.metrics.rejected(&served.function, reason);
    publish_now(served, tag, buffer, &served.error_answer(buffer, status, message))
}

/// Publishes from the serving thread, waiting a while for a guest that is slow to drain its
/// completions; a guest that never does faults its region (the caller's error path).
fn publish_now(
    served: &ServedRegion,
    tag: u64,
    buffer: u32,
    answer: &Answer,
) -> Result<(), RingError> {
    let deadline = Instant::now() + COMPLETION_PATIENCE;
    loop {
        match served.complete(tag, buffer, answer) {
            Err(RingError::Full) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(100));
            }
            done => return done,
        }
    }
}

/// Publishes a completion, waiting a while for a guest that is slow to drain its ring.
async fn publish(served: &ServedRegion, shared: &Shared, tag: u64, buffer: u32, answer: Answer) {
    let deadline = Instant::now() + COMPLETION_PATIENCE;
    loop {
        match served.complete(tag, buffer, &answer) {
            Ok(()) => return,
            Err(RingError::Full) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => {
                tracing::warn!(region = %served.id, "Cannot complete call: {}", error_chain(&e));
                if served.fault() {
                    shared.context.metrics.region_faulted(&served.function);
                }
                return;
            }
        }
    }
}
