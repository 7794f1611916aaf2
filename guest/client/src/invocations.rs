//! Serving invocations (rings 2 and 3): the guest's runtime takes an event the host put in a
//! host buffer, runs the handler, and writes the result into the same buffer.
//!
//! ```text
//!  host                                   guest
//!  epoch = e, state READY                 map region, load handler
//!                                         epoch_ack = e            (ready)
//!  event → host buffer b
//!  InvocationDesc {id, b, len} ─ring 2──► next_invocation
//!                                         handler(event) → result in b
//!  wait for id ◄──────────────── ring 3── ResultDesc {id, b, status, len}
//! ```
//!
//! While a handler runs, the invocation it serves is recorded in the file named by
//! `$NEXUS_INFLIGHT` (if set), so that a supervisor can answer it with an error if the runtime
//! dies: see [`Client::fail_inflight`].

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nexus_channel::layout::header;
use nexus_channel::ResultDesc;

use crate::client::{Client, ClientError};

/// An invocation taken from the host: its event sits at `ptr` for `len` bytes, in a buffer of
/// `capacity` bytes where the result is to be written.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct Invocation {
    pub id: u64,
    pub buffer: u32,
    pub _pad: u32,
    pub ptr: *mut u8,
    pub len: u64,
    pub capacity: u64,
}

impl Client {
    /// Tells the host this guest is ready for invocations of the current epoch.
    pub fn ready(&self) -> Result<(), ClientError> {
        let epoch = self.host_epoch()?;
        self.epoch.store(epoch, Ordering::Release);
        self.region().atomic_u64(header::EPOCH_ACK)?.store(epoch, Ordering::Release);
        self.notifier.notify_peer()?;
        Ok(())
    }

    fn host_epoch(&self) -> Result<u64, ClientError> {
        Ok(self.region().atomic_u64(header::EPOCH)?.load(Ordering::Acquire))
    }

    /// Waits up to `timeout` for the next invocation. A new host epoch (this VM was restored
    /// from a snapshot into a fresh region) is synced to on the way: rings re-attached, the
    /// epoch acknowledged.
    pub fn next_invocation(&self, timeout: Duration) -> Result<Option<Invocation>, ClientError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut rings = self.invocations.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let moved = || -> Result<bool, ClientError> {
                Ok(self.host_epoch()? != self.epoch.load(Ordering::Acquire))
            };
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            // The epoch first: after a restore the rings were reset under our stale indices,
            // which the ring check would (rightly) call corrupt.
            let incoming = &rings.incoming;
            let ready = self.notifier.wait(left, || -> Result<bool, ClientError> {
                Ok(moved()? || incoming.ready()?)
            })?;
            if moved()? {
                self.reattach(&mut rings)?;
                self.ready()?;
                continue;
            }
            if !ready {
                return Ok(None);
            }
            break;
        }
        let Some(desc) = rings.incoming.pop()? else { return Ok(None) };
        let geometry = self.geometry();
        let (offset, capacity) = match geometry.buffer(desc.buffer) {
            Some(buffer) if !geometry.is_guest_buffer(desc.buffer) => buffer,
            _ => return Err(ClientError::Protocol("invocation names no host buffer")),
        };
        if desc.len > capacity as u64 {
            return Err(ClientError::Protocol("invocation event larger than its buffer"));
        }
        let invocation = Invocation {
            id: desc.id,
            buffer: desc.buffer,
            _pad: 0,
            ptr: self.region().span(offset, capacity)?,
            len: desc.len,
            capacity: capacity as u64,
        };
        if let Some(file) = inflight_file() {
            // Best effort: without the record a crash costs a timeout instead of an error.
            let _ = std::fs::write(file, format!("{} {}\n", invocation.id, invocation.buffer));
        }
        Ok(Some(invocation))
    }

    /// Answers the invocation a dead runtime left in flight (recorded in `$NEXUS_INFLIGHT`)
    /// with `error` (Lambda's error JSON); returns whether there was one.
    pub fn fail_inflight(&self, error: &[u8]) -> Result<bool, ClientError> {
        let Some(file) = inflight_file() else { return Ok(false) };
        let Ok(record) = std::fs::read_to_string(&file) else { return Ok(false) };
        let mut fields = record.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(id)), Some(Ok(buffer))) = (fields.next(), fields.next()) else {
            return Ok(false);
        };
        let buffer =
            u32::try_from(buffer).map_err(|_| ClientError::Protocol("bad in-flight record"))?;
        let (offset, capacity) =
            self.geometry().buffer(buffer).ok_or(ClientError::Protocol("bad in-flight record"))?;
        let len = error.len().min(capacity);
        self.region().copy_in(offset, &error[..len])?;
        let invocation = Invocation {
            id,
            buffer,
            _pad: 0,
            ptr: self.region().span(offset, capacity)?,
            len: 0,
            capacity: capacity as u64,
        };
        self.finish_invocation(
            &invocation,
            nexus_channel::layout::result_status::HANDLER_ERROR,
            len as u64,
        )?;
        Ok(true)
    }

    /// Publishes the result of `invocation`: `len` bytes already written at its `ptr`.
    pub fn finish_invocation(
        &self,
        invocation: &Invocation,
        status: u32,
        len: u64,
    ) -> Result<(), ClientError> {
        if len > invocation.capacity {
            return Err(ClientError::Protocol("result larger than its buffer"));
        }
        let result = ResultDesc {
            id: invocation.id,
            buffer: invocation.buffer,
            status,
            len,
            _reserved: [0; 5],
        };
        self.invocations.lock().unwrap_or_else(|e| e.into_inner()).results.push(&result)?;
        if let Some(file) = inflight_file() {
            let _ = std::fs::remove_file(file);
        }
        self.notifier.notify_peer()?;
        Ok(())
    }
}

/// Environment variable naming the file that records the invocation in flight.
pub const INFLIGHT_ENV: &str = "NEXUS_INFLIGHT";

fn inflight_file() -> Option<PathBuf> {
    std::env::var_os(INFLIGHT_ENV).map(PathBuf::from)
}
