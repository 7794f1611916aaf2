//! The host end of one region: its rings, its doorbell, its open streams and its function's
//! policy. A serving thread pops calls (see [`crate::serve`]); tasks answer them through
//! [`ServedRegion::complete`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexus_channel::layout::{header, host_state, RingId};
use nexus_channel::notify::{Kick, Side};
use nexus_channel::region::RegionError;
use nexus_channel::ring::RingError;
use nexus_channel::staging::{self, Stager};
use nexus_channel::wire::Status;
use nexus_channel::{CompletionDesc, Geometry, Notifier, Producer, Region};

use crate::arriving::Arriving;
use crate::invoke::{Invocations, InvokeError, Outcome};
use crate::ops::get::object_meta;
use crate::policy::{Access, Policy, RateLimiter};
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

/// Objects staged for the invocation about to run.
#[derive(Debug, Default)]
struct Staged {
    /// Every staged object, for the calls that still come (a `Head`, a range, one that did
    /// not fit the staging area, one still arriving).
    in_memory: HashMap<(String, String), Arc<Arriving>>,
    /// Those published in the region's staging area, which the guest reads without a call.
    in_region: HashSet<(String, String)>,
    /// Whether the staging area was ever written: it is written once per region.
    area_used: bool,
}

/// Prefetched objects copied into a region's staging area, not yet published. The backend
/// places them while it serves the region ([`ServedRegion::stage`]), or while its VM starts:
/// beside the restore when the VMM keeps the region's contents across one (Cloud
/// Hypervisor), right after it when the restore rewrites the region (QEMU), beside the boot
/// otherwise; [`ServedRegion::adopt`] publishes them before the first invocation.
#[derive(Debug)]
pub struct Placed {
    stager: Stager,
    names: HashSet<(String, String)>,
}

impl Placed {
    /// Copies those of `objects` that arrived whole, that `policy` lets the function read,
    /// and that fit, into the staging area of `region`.
    pub fn place<'a>(
        region: &Region,
        geometry: &Geometry,
        policy: &Policy,
        objects: impl IntoIterator<Item = &'a Arc<Arriving>>,
    ) -> Result<Placed, RegionError> {
        let mut placed = Placed { stager: Stager::new(geometry), names: HashSet::new() };
        for arriving in objects {
            let (bucket, key) = (&arriving.bucket, &arriving.key);
            let Some(object) = arriving.whole() else { continue };
            if policy.check(Access::Read, bucket, key).is_err() {
                continue;
            }
            let meta = object_meta(&object.info, object.info.size, None);
            let size = object.bytes.len() as u64;
            if let Some(at) = placed.stager.place(bucket, key, size, meta) {
                region.copy_in(at, &object.bytes)?;
                placed.names.insert((bucket.clone(), key.clone()));
            }
        }
        Ok(placed)
    }
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
    staged: Mutex<Staged>,
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

    /// The epoch the channel was opened at.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
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

    /// Stages prefetched `objects` for the invocation about to run. The first time, those that
    /// arrived whole, that the function may read and that fit are copied into the region's
    /// staging area, where the guest reads them without a call; all are kept until
    /// [`ServedRegion::unstage`] so that `Get`/`Head` calls of them need no storage (a `Get`
    /// of one still arriving streams it as it comes). Returns how many the guest can read in
    /// place.
    pub fn stage(&self, objects: Vec<Arc<Arriving>>) -> Result<usize, RegionError> {
        let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        let mut published = 0;
        if !staged.area_used && self.geometry.staging_size > 0 {
            let placed = Placed::place(&self.region, &self.geometry, &self.policy, &objects)?;
            published = self.publish(&mut staged, placed)?;
        }
        let in_memory = objects.into_iter().map(|o| ((o.bucket.clone(), o.key.clone()), o));
        staged.in_memory.extend(in_memory);
        Ok(published)
    }

    /// Publishes objects copied into the staging area before the region was served (see
    /// [`Placed`]); the area then counts as written. Returns how many the guest can read.
    pub fn adopt(&self, placed: Placed) -> Result<usize, RegionError> {
        let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        if staged.area_used {
            return Ok(0);
        }
        self.publish(&mut staged, placed)
    }

    fn publish(&self, staged: &mut Staged, placed: Placed) -> Result<usize, RegionError> {
        staged.area_used = true;
        staged.in_region.extend(placed.names);
        placed.stager.publish(&self.region)
    }

    /// Drops every staged object (the invocation they were staged for ended).
    pub fn unstage(&self) {
        let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        staged.in_memory.clear();
        self.retract(&mut staged);
    }

    /// Drops `bucket/key` from what is staged: the guest is about to write or delete it. When
    /// the guest could read it in place, the whole staging area is withdrawn before the call
    /// completes, so the guest's next read of it is a call that sees the write.
    pub fn forget_staged(&self, bucket: &str, key: &str) {
        let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        if staged.in_memory.is_empty() {
            return; // nothing staged (every in-region object is in memory too)
        }
        let name = (bucket.to_owned(), key.to_owned());
        staged.in_memory.remove(&name);
        if staged.in_region.contains(&name) {
            self.retract(&mut staged);
        }
    }

    fn retract(&self, staged: &mut Staged) {
        if staged.in_region.is_empty() {
            return;
        }
        staged.in_region.clear();
        if let Err(e) = staging::retract(&self.region) {
            tracing::warn!(region = %self.id, "Cannot withdraw the staging area: {e}");
        }
    }

    /// A staged object, whole or still arriving, if `bucket/key` is one.
    pub fn staged(&self, bucket: &str, key: &str) -> Option<Arc<Arriving>> {
        let staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        staged.in_memory.get(&(bucket.to_owned(), key.to_owned())).cloned()
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use nexus_channel::staging::lookup;

    use super::*;
    use crate::cache::ObjectInfo;
    use crate::policy::Grant;

    fn served(dir: &std::path::Path, staging: u64) -> ServedRegion {
        let geometry = Geometry::with_staging(4 << 20, 64 << 10, 8, 1, staging).unwrap();
        let region = Arc::new(Region::create(&dir.join("r"), &geometry).unwrap());
        let grant =
            Grant { bucket: "in".into(), prefix: String::new(), access: vec![Access::Read] };
        let policy = Policy { grants: vec![grant], ..Policy::default() };
        ServedRegion::new(
            "r".into(),
            "f".into(),
            region,
            geometry,
            policy,
            Duration::ZERO,
            Kick::Futex,
        )
    }

    fn object(bucket: &str, key: &str, body: &'static [u8]) -> Arc<Arriving> {
        let object = Arriving::new(bucket, key);
        object.begin(ObjectInfo { size: body.len() as u64, ..ObjectInfo::default() });
        object.push(Bytes::from_static(body));
        object.finish(Ok(()));
        object
    }

    fn in_place(served: &ServedRegion, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let found = lookup(&served.region, &served.geometry, bucket, key).unwrap()?;
        let mut bytes = vec![0; found.size];
        served.region.copy_out(found.region_offset, &mut bytes).unwrap();
        Some(bytes)
    }

    #[test]
    fn readable_objects_are_staged_in_place_once_and_withdrawn() {
        let dir = tempfile::tempdir().unwrap();
        let served = served(dir.path(), 1 << 20);
        let objects = vec![object("in", "a", b"alpha"), object("secret", "s", b"no")];
        assert_eq!(served.stage(objects).unwrap(), 1, "only what the policy lets it read");
        assert_eq!(in_place(&served, "in", "a").as_deref(), Some(&b"alpha"[..]));
        assert_eq!(in_place(&served, "secret", "s"), None);
        assert!(served.staged("secret", "s").is_some(), "kept in memory, behind the policy check");

        served.unstage();
        assert_eq!(in_place(&served, "in", "a"), None);
        assert!(served.staged("in", "a").is_none());
        assert_eq!(served.stage(vec![object("in", "b", b"beta")]).unwrap(), 0, "written once");
        assert!(served.staged("in", "b").is_some());
    }

    #[test]
    fn a_write_to_a_staged_key_withdraws_the_area() {
        let dir = tempfile::tempdir().unwrap();
        let served = served(dir.path(), 1 << 20);
        served.stage(vec![object("in", "a", b"alpha"), object("in", "b", b"beta")]).unwrap();
        served.forget_staged("in", "other");
        assert!(in_place(&served, "in", "a").is_some(), "an unrelated write changes nothing");
        served.forget_staged("in", "b");
        assert_eq!((in_place(&served, "in", "a"), in_place(&served, "in", "b")), (None, None));
        assert!(served.staged("in", "b").is_none());
        assert!(served.staged("in", "a").is_some());
    }

    #[test]
    fn objects_placed_before_the_region_is_served_are_published_once_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let served = served(dir.path(), 1 << 20);
        let objects = vec![object("in", "a", b"alpha"), object("secret", "s", b"no")];
        let placed =
            Placed::place(&served.region, &served.geometry, &served.policy, &objects).unwrap();
        // What a restore's new epoch does to the header: the placed bytes survive it.
        served.region.initialize(&served.geometry).unwrap();
        assert_eq!(in_place(&served, "in", "a"), None, "not published yet");
        assert_eq!(served.adopt(placed).unwrap(), 1, "only what the policy lets it read");
        assert_eq!(in_place(&served, "in", "a").as_deref(), Some(&b"alpha"[..]));
        assert_eq!(served.stage(objects).unwrap(), 0, "the area was written once");
        assert!(served.staged("in", "a").is_some(), "and the objects are kept for calls");
        served.forget_staged("in", "a");
        assert_eq!(in_place(&served, "in", "a"), None, "a write withdraws adopted objects too");
    }

    #[test]
    fn without_a_staging_area_objects_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let served = served(dir.path(), 0);
        assert_eq!(served.stage(vec![object("in", "a", b"alpha")]).unwrap(), 0);
        assert!(served.staged("in", "a").is_some());
    }
}
