//! The spool's queue in memory: which entries wait for upload, in what order, and which are
//! superseded. No I/O here; [`super::Spool`] does the files around it.
//!
//! For each object (bucket and key):
//! - An entry gets its sequence number when it is sealed, just before it is acknowledged, so
//!   numbers follow acknowledgement order.
//! - Entries are uploaded one at a time, oldest first; the oldest is eligible only once every
//!   older entry still being sealed has been queued (or given up).
//! - An acknowledged entry supersedes the older entries that are not in flight: they are never
//!   uploaded. So does it supersede an older entry sealed after it (a concurrent put that lost
//!   the race). A superseded entry's file is *doomed*: removed just before the file of the
//!   entry that superseded it, so the spool never holds an older entry of an object without
//!   the newer one (a replay would upload the older one last).
//! - A strict entry (not acknowledged until it is uploaded) supersedes nothing: the store may
//!   still refuse it, and then it is dropped. Its waiter moves to whichever acknowledged entry
//!   supersedes it and is answered when that one is stored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use nexus_channel::wire::Status;
use tokio::sync::oneshot;

use super::entry::Record;
use super::quota::Charge;

/// An object: bucket and key.
pub type ObjectId = (String, String);

/// What a waiting put or delete learns about its entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Entry `seq` of the object reached the store, which answered `etag`. When `seq` is not
    /// the waiter's own entry, a newer one superseded it.
    Stored { seq: u64, etag: Option<String> },
    /// The store refused the entry for good, and it was dropped.
    Refused { status: Status, message: String },
}

/// A sealed entry waiting for upload.
#[derive(Debug)]
pub struct Pending {
    pub record: Record,
    pub path: PathBuf,
    /// Not acknowledged yet: its put or delete completes once the entry is stored.
    pub strict: bool,
    pub waiters: Vec<oneshot::Sender<Outcome>>,
    /// Files of the entries this one superseded.
    pub doomed: Vec<PathBuf>,
    /// Its bytes, charged to its function until it leaves the queue and this is dropped
    /// (`None`: found at start).
    pub _charge: Option<Charge>,
}

/// An upload to perform.
#[derive(Debug, Clone)]
pub struct Job {
    pub record: Record,
    pub path: PathBuf,
    pub strict: bool,
    /// Removed (and made durable) before `path`.
    pub doomed: Vec<PathBuf>,
}

#[derive(Debug, Default)]
struct Object {
    /// Entries numbered but not yet queued.
    sealing: BTreeSet<u64>,
    queued: BTreeSet<u64>,
    /// The entry being uploaded.
    busy: Option<u64>,
}

impl Object {
    fn is_idle(&self) -> bool {
        self.sealing.is_empty() && self.queued.is_empty() && self.busy.is_none()
    }
}

/// Whether a committed entry was queued or superseded at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    Queued,
    /// A newer acknowledged entry, `by`, was already queued.
    Superseded {
        by: u64,
    },
}

/// The queue.
#[derive(Debug)]
pub struct Queue {
    next_seq: u64,
    objects: HashMap<ObjectId, Object>,
    entries: BTreeMap<u64, Pending>,
    /// Body bytes of the queued entries.
    queued_bytes: u64,
    /// Body bytes admitted but not queued yet.
    reserved_bytes: u64,
}

fn id(record: &Record) -> ObjectId {
    (record.bucket.clone(), record.key.clone())
}

impl Queue {
    /// An empty queue numbering entries from `next_seq`.
    pub fn new(next_seq: u64) -> Self {
        Self {
            next_seq,
            objects: HashMap::new(),
            entries: BTreeMap::new(),
            queued_bytes: 0,
            reserved_bytes: 0,
        }
    }

    /// Reserves room for `size` more bytes if the backlog stays within `max` (or is empty).
    pub fn reserve(&mut self, size: u64, max: u64) -> bool {
        let used = self.queued_bytes + self.reserved_bytes;
        let fits = used == 0 || used.saturating_add(size) <= max;
        if fits {
            self.reserved_bytes += size;
        }
        fits
    }

    /// Gives back a reservation that will not be committed.
    pub fn release(&mut self, size: u64) {
        self.reserved_bytes = self.reserved_bytes.saturating_sub(size);
    }

    /// Numbers an entry of `object` about to be sealed.
    pub fn seal(&mut self, object: &ObjectId) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.objects.entry(object.clone()).or_default().sealing.insert(seq);
        seq
    }

    /// Forgets entry `seq`, which could not be sealed.
    pub fn unseal(&mut self, object: &ObjectId, seq: u64) {
        if let Some(o) = self.objects.get_mut(object) {
            o.sealing.remove(&seq);
        }
        self.tidy(object);
    }

    /// Queues a sealed entry whose reservation it takes over.
    pub fn commit(&mut self, pending: Pending) -> Commit {
        self.release(pending.record.size);
        if let Some(o) = self.objects.get_mut(&id(&pending.record)) {
            o.sealing.remove(&pending.record.seq);
        }
        self.insert(pending)
    }

    /// Queues an entry found on disk at start (all of them are acknowledged: any waiter is
    /// gone with the previous process).
    pub fn restore(&mut self, pending: Pending) -> Commit {
        self.next_seq = self.next_seq.max(pending.record.seq + 1);
        self.insert(pending)
    }

    fn insert(&mut self, mut pending: Pending) -> Commit {
        let object = id(&pending.record);
        let seq = pending.record.seq;
        let o = self.objects.entry(object.clone()).or_default();
        let newer = o.queued.range(seq + 1..).copied().find(|s| !self.entries[s].strict);
        if let Some(by) = newer {
            let superseder = self.entries.get_mut(&by).expect("queued entries are in the map");
            superseder.waiters.append(&mut pending.waiters);
            superseder.doomed.push(pending.path);
            return Commit::Superseded { by };
        }
        if !pending.strict {
            let older: Vec<u64> =
                o.queued.range(..seq).copied().filter(|&s| o.busy != Some(s)).collect();
            for s in older {
                o.queued.remove(&s);
                let old = self.entries.remove(&s).expect("queued entries are in the map");
                self.queued_bytes -= old.record.size;
                pending.waiters.extend(old.waiters);
                pending.doomed.extend(old.doomed);
                pending.doomed.push(old.path);
            }
        }
        o.queued.insert(seq);
        self.queued_bytes += pending.record.size;
        self.entries.insert(seq, pending);
        Commit::Queued
    }

    /// The oldest eligible entry, now in flight.
    pub fn next(&mut self) -> Option<Job> {
        let (seq, object) = self.entries.iter().find_map(|(&seq, p)| {
            let o = &self.objects[&id(&p.record)];
            let eligible = o.busy.is_none()
                && o.queued.first() == Some(&seq)
                && o.sealing.first().is_none_or(|&s| s > seq);
            eligible.then(|| (seq, id(&p.record)))
        })?;
        self.objects.get_mut(&object).expect("an entry's object is known").busy = Some(seq);
        let p = &self.entries[&seq];
        Some(Job {
            record: p.record.clone(),
            path: p.path.clone(),
            strict: p.strict,
            doomed: p.doomed.clone(),
        })
    }

    /// Takes entry `seq` (in flight) out of the queue: stored, or refused for good.
    pub fn finish(&mut self, seq: u64) -> Option<Pending> {
        let pending = self.entries.remove(&seq)?;
        self.queued_bytes -= pending.record.size;
        let object = id(&pending.record);
        if let Some(o) = self.objects.get_mut(&object) {
            o.queued.remove(&seq);
            o.busy = None;
        }
        self.tidy(&object);
        Some(pending)
    }

    /// The newest acknowledged entry of `object`, if one is queued.
    pub fn view(&self, object: &ObjectId) -> Option<&Pending> {
        let o = self.objects.get(object)?;
        o.queued.iter().rev().map(|s| &self.entries[s]).find(|p| !p.strict)
    }

    /// Whether `object` has an entry queued.
    pub fn has_queued(&self, object: &ObjectId) -> bool {
        self.objects.get(object).is_some_and(|o| !o.queued.is_empty())
    }

    /// The entries queued under `prefix` of `bucket`, oldest first.
    pub fn queued_under(&self, bucket: &str, prefix: &str) -> Vec<u64> {
        let under = |p: &Pending| p.record.bucket == bucket && p.record.key.starts_with(prefix);
        self.entries.iter().filter(|(_, p)| under(p)).map(|(&seq, _)| seq).collect()
    }

    /// Whether entry `seq` is still queued.
    pub fn is_queued(&self, seq: u64) -> bool {
        self.entries.contains_key(&seq)
    }

    /// The number the next sealed entry gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Entries queued and their body bytes.
    pub fn backlog(&self) -> (usize, u64) {
        (self.entries.len(), self.queued_bytes)
    }

    /// What entry `seq` does.
    #[cfg(test)]
    pub fn kind(&self, seq: u64) -> Option<super::entry::Kind> {
        self.entries.get(&seq).map(|p| p.record.kind)
    }

    fn tidy(&mut self, object: &ObjectId) {
        if self.objects.get(object).is_some_and(Object::is_idle) {
            self.objects.remove(object);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::entry::Kind;

    const MAX: u64 = 1 << 30;

    fn object() -> ObjectId {
        ("b".into(), "k".into())
    }

    fn pending(seq: u64, kind: Kind, strict: bool) -> Pending {
        let size = if kind == Kind::Put { 10 } else { 0 };
        let record = Record {
            seq,
            kind,
            bucket: "b".into(),
            key: "k".into(),
            content_type: None,
            metadata: Default::default(),
            size,
            md5: String::new(),
            written_at: String::new(),
        };
        Pending {
            record,
            path: format!("/spool/{seq}").into(),
            strict,
            waiters: vec![],
            doomed: vec![],
            _charge: None,
        }
    }

    /// Seals and commits one entry; its number.
    fn put(queue: &mut Queue, kind: Kind, strict: bool) -> u64 {
        assert!(queue.reserve(10, MAX));
        let seq = queue.seal(&object());
        assert_eq!(queue.commit(pending(seq, kind, strict)), Commit::Queued);
        seq
    }

    #[test]
    fn put_put_delete_leaves_the_tombstone_dooming_both_puts() {
        let mut queue = Queue::new(1);
        let first = put(&mut queue, Kind::Put, false);
        let second = put(&mut queue, Kind::Put, false);
        assert_eq!(queue.backlog(), (1, 10), "the second put supersedes the first");
        let delete = put(&mut queue, Kind::Delete, false);
        assert_eq!(queue.backlog(), (1, 0));
        assert_eq!(queue.kind(delete), Some(Kind::Delete));
        assert_eq!(queue.view(&object()).map(|p| p.record.kind), Some(Kind::Delete));
        let job = queue.next().unwrap();
        assert_eq!(job.record.seq, delete);
        let doomed: Vec<PathBuf> =
            [first, second].iter().map(|s| format!("/spool/{s}").into()).collect();
        assert_eq!(job.doomed, doomed, "older files go first, oldest first");
        assert!(queue.next().is_none());
        assert!(queue.finish(delete).is_some());
        assert!(!queue.has_queued(&object()));
        assert!(queue.objects.is_empty());
    }

    #[test]
    fn an_entry_in_flight_is_never_overtaken() {
        let mut queue = Queue::new(1);
        let first = put(&mut queue, Kind::Put, false);
        assert_eq!(queue.next().unwrap().record.seq, first);
        let second = put(&mut queue, Kind::Put, false);
        let third = put(&mut queue, Kind::Delete, false);
        assert!(queue.next().is_none(), "the object is busy");
        assert_eq!(queue.backlog(), (2, 10), "the third supersedes the second, not the first");
        queue.finish(first);
        let job = queue.next().unwrap();
        assert_eq!(job.record.seq, third);
        assert_eq!(job.doomed, vec![PathBuf::from(format!("/spool/{second}"))]);
    }

    #[test]
    fn an_entry_sealing_holds_back_newer_ones_and_then_loses() {
        let mut queue = Queue::new(1);
        assert!(queue.reserve(10, MAX) && queue.reserve(10, MAX));
        let older = queue.seal(&object());
        let newer = queue.seal(&object());
        assert_eq!(queue.commit(pending(newer, Kind::Put, false)), Commit::Queued);
        assert!(queue.next().is_none(), "an older entry is still being sealed");
        let (tx, mut rx) = oneshot::channel();
        let mut late = pending(older, Kind::Put, true);
        late.waiters.push(tx);
        assert_eq!(queue.commit(late), Commit::Superseded { by: newer });
        let job = queue.next().unwrap();
        assert_eq!(job.record.seq, newer);
        assert_eq!(job.doomed, vec![PathBuf::from(format!("/spool/{older}"))]);
        let done = queue.finish(newer).unwrap();
        assert_eq!(done.waiters.len(), 1, "the late strict put waits for the newer one");
        for waiter in done.waiters {
            waiter.send(Outcome::Stored { seq: newer, etag: None }).unwrap();
        }
        assert_eq!(rx.try_recv().unwrap(), Outcome::Stored { seq: newer, etag: None });
    }

    #[test]
    fn strict_entries_supersede_nothing_and_are_not_read_before_stored() {
        let mut queue = Queue::new(1);
        let first = put(&mut queue, Kind::Put, false);
        let strict = put(&mut queue, Kind::Delete, true);
        assert_eq!(queue.backlog(), (2, 10));
        assert_eq!(queue.view(&object()).unwrap().record.seq, first);
        assert_eq!(queue.next().unwrap().record.seq, first);
        queue.finish(first);
        assert!(queue.view(&object()).is_none(), "only a strict entry is left");
        assert!(queue.has_queued(&object()));
        assert_eq!(queue.next().unwrap().record.seq, strict);
        // An acknowledged put now queues behind the strict delete in flight.
        let third = put(&mut queue, Kind::Put, false);
        assert!(queue.next().is_none());
        queue.finish(strict);
        assert_eq!(queue.next().unwrap().record.seq, third);
    }

    #[test]
    fn the_backlog_limit_admits_one_object_when_empty() {
        let mut queue = Queue::new(1);
        assert!(queue.reserve(100, 10), "an empty backlog admits anything");
        assert!(!queue.reserve(1, 10));
        queue.release(100);
        assert!(queue.reserve(6, 10) && !queue.reserve(6, 10) && queue.reserve(4, 10));
    }

    #[test]
    fn restored_entries_renumber_the_queue_and_collapse() {
        let mut queue = Queue::new(1);
        queue.restore(pending(40, Kind::Put, false));
        queue.restore(pending(41, Kind::Put, false));
        assert_eq!(queue.next_seq(), 42);
        assert_eq!(queue.backlog(), (1, 10));
        assert_eq!(queue.queued_under("b", ""), vec![41], "entry 40 was superseded");
        assert!(queue.is_queued(41) && !queue.is_queued(40));
        assert!(queue.queued_under("b", "x").is_empty());
        assert!(queue.queued_under("c", "").is_empty());
    }
}
