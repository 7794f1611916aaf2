//! Single-producer/single-consumer rings of 64-byte descriptors.
//!
//! ```text
//!  ring offset  +0    producer index (u32, written only by the producer)  ── own cache line
//!               +64   consumer index (u32, written only by the consumer)  ── own cache line
//!               +128  slot[0] · slot[1] · … · slot[capacity-1]            64 bytes each
//! ```
//!
//! Indices run free and wrap at `u32::MAX`; a slot is `index & (capacity - 1)`. Each side keeps
//! its own index in private memory and only *publishes* it to the region: it never reads its own
//! index back, so a peer that scribbles over it cannot steer this side. The peer's index is
//! observed with `Acquire` and validated: `producer - consumer` must never exceed the capacity.
//! A violation is [`RingError::Corrupt`], never a panic or an access outside the ring.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::layout::{Geometry, Plain, RingId, CACHE_LINE, DESC_SIZE};
use crate::region::{Region, RegionError};

/// Errors of a ring operation.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The ring has no free slot.
    #[error("Ring is full")]
    Full,
    /// The peer published an index that cannot be right.
    #[error(
        "Ring indices are corrupt: producer {producer}, consumer {consumer}, capacity {capacity}"
    )]
    Corrupt { producer: u32, consumer: u32, capacity: u32 },
    /// The ring does not fit the region.
    #[error(transparent)]
    Region(#[from] RegionError),
}

#[derive(Debug, Clone, Copy)]
struct RingLayout {
    producer: usize,
    consumer: usize,
    slots: usize,
    capacity: u32,
}

impl RingLayout {
    fn new(geometry: &Geometry, ring: RingId) -> Self {
        let base = geometry.ring_offset(ring);
        Self {
            producer: base,
            consumer: base + CACHE_LINE,
            slots: base + 2 * CACHE_LINE,
            capacity: geometry.ring_capacity,
        }
    }

    fn slot(&self, index: u32) -> usize {
        self.slots + (index & (self.capacity - 1)) as usize * DESC_SIZE
    }

    fn check(&self, producer: u32, consumer: u32) -> Result<u32, RingError> {
        let used = producer.wrapping_sub(consumer);
        if used > self.capacity {
            return Err(RingError::Corrupt { producer, consumer, capacity: self.capacity });
        }
        Ok(used)
    }
}

/// The producing end of a ring.
#[derive(Debug)]
pub struct Producer<T> {
    region: Arc<Region>,
    layout: RingLayout,
    tail: u32,
    _desc: PhantomData<T>,
}

impl<T: Plain> Producer<T> {
    /// A producer for a freshly created region, starting at index 0 (host side).
    pub fn new(region: Arc<Region>, geometry: &Geometry, ring: RingId) -> Self {
        Self { region, layout: RingLayout::new(geometry, ring), tail: 0, _desc: PhantomData }
    }

    /// A producer that continues from the index already published in the region (used by a
    /// guest attaching to a region the host created; the guest trusts the host's initial state).
    pub fn attach(
        region: Arc<Region>,
        geometry: &Geometry,
        ring: RingId,
    ) -> Result<Self, RingError> {
        let layout = RingLayout::new(geometry, ring);
        let tail = region.atomic_u32(layout.producer)?.load(Ordering::Acquire);
        Ok(Self { region, layout, tail, _desc: PhantomData })
    }

    /// Appends `desc` and publishes it.
    pub fn push(&mut self, desc: &T) -> Result<(), RingError> {
        // Acquire pairs with the consumer's Release store: the slot it freed is ours to reuse.
        let head = self.region.atomic_u32(self.layout.consumer)?.load(Ordering::Acquire);
        if self.layout.check(self.tail, head)? == self.layout.capacity {
            return Err(RingError::Full);
        }
        self.region.write(self.layout.slot(self.tail), desc)?;
        self.tail = self.tail.wrapping_add(1);
        // Release: the descriptor bytes are visible before the index that announces them.
        self.region.atomic_u32(self.layout.producer)?.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Number of published descriptors the consumer has not taken yet.
    pub fn pending(&self) -> Result<u32, RingError> {
        let head = self.region.atomic_u32(self.layout.consumer)?.load(Ordering::Acquire);
        self.layout.check(self.tail, head)
    }
}

/// The consuming end of a ring.
#[derive(Debug)]
pub struct Consumer<T> {
    region: Arc<Region>,
    layout: RingLayout,
    head: u32,
    _desc: PhantomData<T>,
}

impl<T: Plain> Consumer<T> {
    /// A consumer for a freshly created region, starting at index 0 (host side).
    pub fn new(region: Arc<Region>, geometry: &Geometry, ring: RingId) -> Self {
        Self { region, layout: RingLayout::new(geometry, ring), head: 0, _desc: PhantomData }
    }

    /// A consumer that continues from the index already published in the region (guest side).
    pub fn attach(
        region: Arc<Region>,
        geometry: &Geometry,
        ring: RingId,
    ) -> Result<Self, RingError> {
        let layout = RingLayout::new(geometry, ring);
        let head = region.atomic_u32(layout.consumer)?.load(Ordering::Acquire);
        Ok(Self { region, layout, head, _desc: PhantomData })
    }

    /// Whether a descriptor is waiting (validating the producer's index).
    pub fn ready(&self) -> Result<bool, RingError> {
        Ok(self.available()? > 0)
    }

    fn available(&self) -> Result<u32, RingError> {
        // Acquire pairs with the producer's Release store of its index: once we see the index,
        // the descriptor bytes behind it are visible too.
        let tail = self.region.atomic_u32(self.layout.producer)?.load(Ordering::Acquire);
        self.layout.check(tail, self.head)
    }

    /// Takes the next descriptor, copied out of the region, or `None` when the ring is empty.
    pub fn pop(&mut self) -> Result<Option<T>, RingError> {
        if self.available()? == 0 {
            return Ok(None);
        }
        let desc = self.region.read(self.layout.slot(self.head))?;
        self.head = self.head.wrapping_add(1);
        // Release: our copy of the slot is complete before the producer may overwrite it.
        self.region.atomic_u32(self.layout.consumer)?.store(self.head, Ordering::Release);
        Ok(Some(desc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::CallDesc;
    use proptest::prelude::*;

    fn pair(
        capacity: u32,
    ) -> (tempfile::TempDir, Producer<CallDesc>, Consumer<CallDesc>, Arc<Region>) {
        let dir = tempfile::tempdir().unwrap();
        let geometry = Geometry::new(1 << 20, 64 << 10, capacity, 1).unwrap();
        let region = Arc::new(Region::create(&dir.path().join("r"), &geometry).unwrap());
        let producer = Producer::new(region.clone(), &geometry, RingId::Calls);
        let consumer = Consumer::new(region.clone(), &geometry, RingId::Calls);
        (dir, producer, consumer, region)
    }

    fn desc(tag: u64) -> CallDesc {
        CallDesc { tag, ..CallDesc::default() }
    }

    #[test]
    fn full_ring_refuses_then_accepts_after_pop() {
        let (_dir, mut p, mut c, _) = pair(4);
        for tag in 0..4 {
            p.push(&desc(tag)).unwrap();
        }
        assert!(matches!(p.push(&desc(9)), Err(RingError::Full)));
        assert_eq!(c.pop().unwrap().unwrap().tag, 0);
        p.push(&desc(4)).unwrap();
        let tags: Vec<u64> = std::iter::from_fn(|| c.pop().unwrap()).map(|d| d.tag).collect();
        assert_eq!(tags, [1, 2, 3, 4]);
    }

    #[test]
    fn a_forged_producer_index_is_reported_not_followed() {
        let (_dir, _p, mut c, region) = pair(8);
        let geometry = Geometry::new(1 << 20, 64 << 10, 8, 1).unwrap();
        let producer = geometry.ring_offset(RingId::Calls);
        region.store_u32(producer, 1000).unwrap();
        assert!(matches!(c.pop(), Err(RingError::Corrupt { producer: 1000, consumer: 0, .. })));
        region.store_u32(producer, u32::MAX).unwrap();
        assert!(matches!(c.pop(), Err(RingError::Corrupt { .. })));
    }

    #[test]
    fn a_forged_consumer_index_is_reported_not_followed() {
        let (_dir, mut p, _c, region) = pair(8);
        let geometry = Geometry::new(1 << 20, 64 << 10, 8, 1).unwrap();
        region.store_u32(geometry.ring_offset(RingId::Calls) + CACHE_LINE, 77).unwrap();
        assert!(matches!(p.push(&desc(1)), Err(RingError::Corrupt { .. })));
    }

    #[test]
    fn works_across_threads() {
        let (_dir, mut p, mut c, _) = pair(16);
        const N: u64 = 100_000;
        let producer = std::thread::spawn(move || {
            let mut tag = 0;
            while tag < N {
                match p.push(&desc(tag)) {
                    Ok(()) => tag += 1,
                    Err(RingError::Full) => std::hint::spin_loop(),
                    Err(e) => panic!("{e}"),
                }
            }
        });
        let mut expected = 0;
        while expected < N {
            if let Some(d) = c.pop().unwrap() {
                assert_eq!(d.tag, expected);
                expected += 1;
            }
        }
        producer.join().unwrap();
    }

    proptest! {
        /// Any interleaving of pushes and pops behaves like a bounded FIFO queue, including
        /// across index wrap-around.
        #[test]
        fn behaves_like_a_bounded_queue(
            start in prop_oneof![Just(0u32), Just(u32::MAX - 5), any::<u32>()],
            ops in proptest::collection::vec(any::<bool>(), 0..200),
        ) {
            let (_dir, _, _, region) = pair(4);
            let geometry = Geometry::new(1 << 20, 64 << 10, 4, 1).unwrap();
            let base = geometry.ring_offset(RingId::Calls);
            region.store_u32(base, start).unwrap();
            region.store_u32(base + CACHE_LINE, start).unwrap();
            let mut p = Producer::<CallDesc>::attach(region.clone(), &geometry, RingId::Calls).unwrap();
            let mut c = Consumer::<CallDesc>::attach(region.clone(), &geometry, RingId::Calls).unwrap();
            let mut model = std::collections::VecDeque::new();
            let mut next = 0u64;
            for push in ops {
                if push {
                    let result = p.push(&desc(next));
                    if model.len() == 4 {
                        prop_assert!(matches!(result, Err(RingError::Full)));
                    } else {
                        prop_assert!(result.is_ok());
                        model.push_back(next);
                    }
                    next += 1;
                } else {
                    prop_assert_eq!(c.pop().unwrap().map(|d| d.tag), model.pop_front());
                }
                prop_assert_eq!(p.pending().unwrap() as usize, model.len());
            }
        }
    }
}
