//! A function's VMs: up to `max_vms` of them, each serving one invocation at a time.
//!
//! ```text
//!  acquire ──► an idle VM? ──yes──► lease it (busy)
//!                 │ no
//!                 ▼
//!         fewer than max_vms? ──yes──► reserve a start (starting) ──► the caller starts one
//!                 │ no                                                 ├─ ok: started(vm) → busy
//!                 ▼                                                    └─ failed: start_failed()
//!         wait for a release (bounded) and look again
//!
//!  release(lease) ──► idle again (a waiter wakes)      retire(lease) ──► leaving (a waiter wakes)
//!  take_all() (fn stop / rm / shutdown): every VM, idle or busy, leaving at once; a busy
//!            VM's invocation then fails, and its release finds it gone. (fn stop leaves the
//!            VMs that are not the pool's to dispose of: an operator's.)
//!  take_idle_since(t): the idle VMs unused since t (keep-alive; not an operator's), and those
//!            that died or left (an operator's `virsh destroy` or `virsh save`, a crashed
//!            VMM), leaving, so that their regions go at once.
//!  adopt(vm): a VM started elsewhere joins as idle (an operator's, or one restored by virsh);
//!  remove(vm): it is leaving (its domain stopped).
//!
//!  leaving ──► listed as stopping ──(the caller stopped it or set it aside: Leaving dropped)──► gone
//! ```
//!
//! The pool only counts and hands out; starting and stopping VMs (seconds of blocking work)
//! happens outside its lock. A VM being stopped stays listed (`vms`, `counts`) until its
//! [`Leaving`] is dropped, so that whoever reads the list, the metrics and the processes finds
//! them agreeing: a VM leaves the list only once its VMM and region are gone. It no longer
//! counts towards `max_vms`.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// What a pool holds: a VM that may die on its own.
pub trait Vital {
    fn alive(&self) -> bool;
    /// Whether keep-alive and `fn stop` may stop it; an operator's VM stays until its domain
    /// stops.
    fn disposable(&self) -> bool {
        true
    }
}

/// What [`Pool::acquire`] hands out.
#[derive(Debug)]
pub enum Acquired<V> {
    /// An idle VM, now leased to the caller.
    Warm(Lease<V>),
    /// Room for one more VM: the caller starts it, then calls [`Pool::started`] or
    /// [`Pool::start_failed`].
    Start,
}

/// Why [`Pool::acquire`] handed out nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every VM stayed busy, and no more may start, for the whole wait.
    Busy { max_vms: u32, waited: Duration },
    /// The function was removed.
    Closed,
}

/// One VM leased to one invocation (or snapshot).
#[derive(Debug)]
pub struct Lease<V> {
    pub vm: Arc<V>,
    number: u64,
}

/// A VM out of service, listed as stopping until this is dropped: once the caller stopped
/// it, or set it aside.
#[derive(Debug)]
pub struct Leaving<'a, V> {
    pool: &'a Pool<V>,
    vm: Arc<V>,
}

impl<V> Deref for Leaving<'_, V> {
    type Target = Arc<V>;

    fn deref(&self) -> &Arc<V> {
        &self.vm
    }
}

impl<V> Drop for Leaving<'_, V> {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        if let Some(at) = state.stopping.iter().position(|vm| Arc::ptr_eq(vm, &self.vm)) {
            state.stopping.swap_remove(at);
        }
    }
}

/// What a VM of the pool is doing, as [`Pool::vms`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Idle,
    /// Serving an invocation (or being snapshotted).
    Busy,
    /// Out of service, its VMM and region being stopped.
    Stopping,
}

#[derive(Debug)]
struct State<V> {
    idle: Vec<(Arc<V>, Instant)>,
    busy: BTreeMap<u64, Arc<V>>,
    /// Listed only: see [`Leaving`].
    stopping: Vec<Arc<V>>,
    starting: u32,
    next_number: u64,
    closed: bool,
}

impl<V> Default for State<V> {
    fn default() -> Self {
        State {
            idle: Vec::new(),
            busy: BTreeMap::new(),
            stopping: Vec::new(),
            starting: 0,
            next_number: 0,
            closed: false,
        }
    }
}

impl<V> State<V> {
    fn total(&self) -> u32 {
        (self.idle.len() + self.busy.len()) as u32 + self.starting
    }

    fn lease(&mut self, vm: Arc<V>) -> Lease<V> {
        self.next_number += 1;
        self.busy.insert(self.next_number, vm.clone());
        Lease { vm, number: self.next_number }
    }
}

/// How many VMs of a function are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub idle: u32,
    pub busy: u32,
    pub starting: u32,
    pub stopping: u32,
}

/// The VMs of one function.
#[derive(Debug)]
pub struct Pool<V> {
    state: Mutex<State<V>>,
    /// Woken when a VM is released or retired, or a start fails: room may have appeared.
    changed: Notify,
}

impl<V> Default for Pool<V> {
    fn default() -> Self {
        Pool { state: Mutex::default(), changed: Notify::new() }
    }
}

impl<V: Vital> Pool<V> {
    /// Leases an idle VM, or reserves a start if fewer than `max_vms` exist, else waits up to
    /// `wait` for either. Idle VMs that died are handed back for stopping through `dead`.
    pub async fn acquire<'a>(
        &'a self,
        max_vms: u32,
        wait: Duration,
        dead: &mut Vec<Leaving<'a, V>>,
    ) -> Result<Acquired<V>, Refused> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the look, so a release between the look and the wait wakes it.
            changed.as_mut().enable();
            {
                let mut state = self.lock();
                if state.closed {
                    return Err(Refused::Closed);
                }
                while let Some((vm, _)) = state.idle.pop() {
                    if vm.alive() {
                        return Ok(Acquired::Warm(state.lease(vm)));
                    }
                    dead.push(self.leave(&mut state, vm));
                }
                if state.total() < max_vms {
                    state.starting += 1;
                    return Ok(Acquired::Start);
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(Refused::Busy { max_vms, waited: wait });
            }
        }
    }

    /// A VM the caller started after [`Acquired::Start`], leased to it; handed back for
    /// stopping if the pool was closed meanwhile.
    pub fn started(&self, vm: V) -> Result<Lease<V>, V> {
        let mut state = self.lock();
        state.starting -= 1;
        if state.closed {
            drop(state);
            self.changed.notify_one();
            return Err(vm);
        }
        Ok(state.lease(Arc::new(vm)))
    }

    /// The start reserved by [`Acquired::Start`] failed.
    pub fn start_failed(&self) {
        self.lock().starting -= 1;
        self.changed.notify_one();
    }

    /// The leased VM is idle again; `false` if it left the pool meanwhile (then the caller
    /// need not stop it: whoever took it does).
    pub fn release(&self, lease: Lease<V>) -> bool {
        let mut state = self.lock();
        let Some(vm) = state.busy.remove(&lease.number) else { return false };
        state.idle.push((vm, Instant::now()));
        drop(state);
        self.changed.notify_one();
        true
    }

    /// Takes the leased VM out of service (the caller stops it); `None` if it already left.
    pub fn retire(&self, lease: Lease<V>) -> Option<Leaving<'_, V>> {
        let mut state = self.lock();
        let leaving = state.busy.remove(&lease.number).map(|vm| self.leave(&mut state, vm));
        drop(state);
        self.changed.notify_one();
        leaving
    }

    /// Every VM, idle and busy, for stopping; with `close`, the pool refuses every later
    /// acquire (the function is gone), else the VMs that are not disposable stay.
    pub fn take_all(&self, close: bool) -> Vec<Leaving<'_, V>> {
        let mut state = self.lock();
        state.closed |= close;
        let taken = |vm: &Arc<V>| close || vm.disposable();
        let (mut all, idle): (Vec<_>, Vec<_>) =
            std::mem::take(&mut state.idle).into_iter().partition(|(vm, _)| taken(vm));
        state.idle = idle;
        let (busy, kept) =
            std::mem::take(&mut state.busy).into_iter().partition(|(_, vm)| taken(vm));
        state.busy = kept;
        let all = all.drain(..).map(|(vm, _)| vm).chain(busy.into_values());
        let leaving = all.map(|vm| self.leave(&mut state, vm)).collect();
        drop(state);
        self.changed.notify_waiters();
        leaving
    }

    /// A VM started outside [`Pool::acquire`], idle from now on; handed back if the pool was
    /// closed.
    pub fn adopt(&self, vm: Arc<V>) -> Result<(), Arc<V>> {
        let mut state = self.lock();
        if state.closed {
            return Err(vm);
        }
        state.idle.push((vm, Instant::now()));
        drop(state);
        self.changed.notify_one();
        Ok(())
    }

    /// Takes `vm` out of service, idle or busy (a busy VM's release then finds it gone);
    /// `None` if it was not there.
    pub fn remove(&self, vm: &Arc<V>) -> Option<Leaving<'_, V>> {
        let mut state = self.lock();
        let before = state.idle.len() + state.busy.len();
        state.idle.retain(|(held, _)| !Arc::ptr_eq(held, vm));
        state.busy.retain(|_, held| !Arc::ptr_eq(held, vm));
        let removed = state.idle.len() + state.busy.len() < before;
        let leaving = removed.then(|| self.leave(&mut state, vm.clone()));
        drop(state);
        self.changed.notify_one();
        leaving
    }

    /// The idle VMs last released before `since` (disposable ones), and the idle VMs that
    /// are not alive, for stopping.
    pub fn take_idle_since(&self, since: Instant) -> Vec<Leaving<'_, V>> {
        let mut state = self.lock();
        let (old, fresh): (Vec<_>, Vec<_>) = std::mem::take(&mut state.idle)
            .into_iter()
            .partition(|(vm, at)| (*at < since && vm.disposable()) || !vm.alive());
        state.idle = fresh;
        let leaving = old.into_iter().map(|(vm, _)| self.leave(&mut state, vm)).collect();
        drop(state);
        self.changed.notify_one();
        leaving
    }

    /// Every VM with what it is doing.
    pub fn vms(&self) -> Vec<(Arc<V>, Use)> {
        let state = self.lock();
        let idle = state.idle.iter().map(|(vm, _)| (vm.clone(), Use::Idle));
        let busy = state.busy.values().map(|vm| (vm.clone(), Use::Busy));
        let stopping = state.stopping.iter().map(|vm| (vm.clone(), Use::Stopping));
        idle.chain(busy).chain(stopping).collect()
    }

    pub fn counts(&self) -> Counts {
        let state = self.lock();
        Counts {
            idle: state.idle.len() as u32,
            busy: state.busy.len() as u32,
            starting: state.starting,
            stopping: state.stopping.len() as u32,
        }
    }
}

impl<V> Pool<V> {
    /// Lists `vm` as stopping until the returned [`Leaving`] is dropped.
    fn leave(&self, state: &mut State<V>, vm: Arc<V>) -> Leaving<'_, V> {
        state.stopping.push(vm.clone());
        Leaving { pool: self, vm }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<V>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[derive(Debug, Default)]
    struct FakeVm {
        dead: AtomicBool,
        /// An operator's.
        kept: bool,
    }

    impl Vital for FakeVm {
        fn alive(&self) -> bool {
            !self.dead.load(Ordering::Relaxed)
        }

        fn disposable(&self) -> bool {
            !self.kept
        }
    }

    const NO_WAIT: Duration = Duration::ZERO;

    async fn acquire(
        pool: &Pool<FakeVm>,
        max_vms: u32,
        wait: Duration,
    ) -> Result<Acquired<FakeVm>, Refused> {
        pool.acquire(max_vms, wait, &mut Vec::new()).await
    }

    fn leased(acquired: Result<Acquired<FakeVm>, Refused>) -> Lease<FakeVm> {
        match acquired {
            Ok(Acquired::Warm(lease)) => lease,
            other => panic!("expected a warm VM, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn starts_up_to_the_limit_then_reuses_idle_vms() {
        let pool = Pool::default();
        assert!(matches!(acquire(&pool, 2, NO_WAIT).await, Ok(Acquired::Start)));
        let first = pool.started(FakeVm::default()).unwrap();
        assert!(matches!(acquire(&pool, 2, NO_WAIT).await, Ok(Acquired::Start)));
        let second = pool.started(FakeVm::default()).unwrap();
        assert_eq!(pool.counts(), Counts { idle: 0, busy: 2, ..Counts::default() });
        let refused = acquire(&pool, 2, NO_WAIT).await.unwrap_err();
        assert_eq!(refused, Refused::Busy { max_vms: 2, waited: NO_WAIT });

        let first_vm = first.vm.clone();
        assert!(pool.release(first));
        let again = leased(acquire(&pool, 2, NO_WAIT).await);
        assert!(Arc::ptr_eq(&again.vm, &first_vm), "the idle VM is reused, not a new one started");
        assert!(pool.retire(second).is_some());
        assert!(matches!(acquire(&pool, 2, NO_WAIT).await, Ok(Acquired::Start)), "room again");
        pool.start_failed();
        assert_eq!(pool.counts(), Counts { idle: 0, busy: 1, ..Counts::default() });
    }

    #[tokio::test]
    async fn a_waiter_gets_the_vm_released_while_it_waits() {
        let pool = Arc::new(Pool::default());
        assert!(matches!(acquire(&pool, 1, NO_WAIT).await, Ok(Acquired::Start)));
        let lease = pool.started(FakeVm::default()).unwrap();
        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move { leased(acquire(&pool, 1, Duration::from_secs(10)).await).vm }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let vm = lease.vm.clone();
        pool.release(lease);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&got, &vm));
    }

    #[tokio::test]
    async fn dead_idle_vms_are_handed_back_and_replaced() {
        let pool = Pool::default();
        assert!(matches!(acquire(&pool, 1, NO_WAIT).await, Ok(Acquired::Start)));
        let lease = pool.started(FakeVm::default()).unwrap();
        lease.vm.dead.store(true, Ordering::Relaxed);
        pool.release(lease);
        let mut dead = Vec::new();
        assert!(matches!(pool.acquire(1, NO_WAIT, &mut dead).await, Ok(Acquired::Start)));
        assert_eq!(dead.len(), 1);
        assert_eq!(pool.counts(), Counts { starting: 1, stopping: 1, ..Counts::default() });
    }

    #[tokio::test]
    async fn a_leaving_vm_is_listed_as_stopping_until_dropped_and_leaves_room_at_once() {
        let pool = Pool::default();
        assert!(matches!(acquire(&pool, 1, NO_WAIT).await, Ok(Acquired::Start)));
        let lease = pool.started(FakeVm::default()).unwrap();
        let vm = lease.vm.clone();
        pool.release(lease);
        let leaving = pool.take_idle_since(Instant::now());
        assert_eq!(leaving.len(), 1);
        let listed = pool.vms();
        assert!(listed.len() == 1 && Arc::ptr_eq(&listed[0].0, &vm), "{listed:?}");
        assert_eq!(listed[0].1, Use::Stopping);
        assert_eq!(pool.counts(), Counts { stopping: 1, ..Counts::default() });
        assert!(matches!(acquire(&pool, 1, NO_WAIT).await, Ok(Acquired::Start)), "room at once");
        drop(leaving);
        assert!(pool.vms().is_empty(), "gone once stopped");
        assert_eq!(pool.counts(), Counts { starting: 1, ..Counts::default() });
    }

    #[tokio::test]
    async fn take_all_empties_busy_and_idle_vms_and_closing_refuses_later_acquires() {
        let pool = Pool::default();
        assert!(matches!(acquire(&pool, 3, NO_WAIT).await, Ok(Acquired::Start)));
        let busy = pool.started(FakeVm::default()).unwrap();
        assert!(matches!(acquire(&pool, 3, NO_WAIT).await, Ok(Acquired::Start)));
        let idle = pool.started(FakeVm::default()).unwrap();
        assert!(matches!(acquire(&pool, 3, NO_WAIT).await, Ok(Acquired::Start)));
        pool.release(idle);

        assert_eq!(pool.take_all(false).len(), 2);
        assert!(!pool.release(busy), "a VM taken while busy does not come back");
        assert!(pool.started(FakeVm::default()).is_ok(), "an open pool takes a started VM");
        assert_eq!(pool.take_all(true).len(), 1);
        assert!(matches!(acquire(&pool, 3, NO_WAIT).await, Err(Refused::Closed)));
        assert!(matches!(acquire(&pool, 3, NO_WAIT).await, Err(Refused::Closed)));
    }

    #[tokio::test]
    async fn only_vms_idle_since_before_the_cut_are_taken() {
        let pool = Pool::default();
        for _ in 0..2 {
            assert!(matches!(acquire(&pool, 2, NO_WAIT).await, Ok(Acquired::Start)));
        }
        let old = pool.started(FakeVm::default()).unwrap();
        let fresh = pool.started(FakeVm::default()).unwrap();
        pool.release(old);
        let cut = Instant::now();
        pool.release(fresh);
        assert_eq!(pool.take_idle_since(cut).len(), 1);
        assert_eq!(pool.counts(), Counts { idle: 1, busy: 0, ..Counts::default() });
    }

    #[tokio::test]
    async fn idle_vms_that_died_are_taken_at_once() {
        let pool = Pool::default();
        assert!(matches!(acquire(&pool, 1, NO_WAIT).await, Ok(Acquired::Start)));
        let lease = pool.started(FakeVm::default()).unwrap();
        let cut = Instant::now();
        lease.vm.dead.store(true, Ordering::Relaxed);
        pool.release(lease);
        assert_eq!(pool.take_idle_since(cut).len(), 1, "dead, though released after the cut");
        assert_eq!(pool.counts(), Counts::default());
    }

    #[tokio::test]
    async fn adopted_operator_vms_outlive_keep_alive_and_fn_stop_but_not_removal() {
        let pool = Pool::default();
        let operator = Arc::new(FakeVm { kept: true, ..FakeVm::default() });
        pool.adopt(operator.clone()).unwrap();
        let leased = leased(acquire(&pool, 1, NO_WAIT).await);
        assert!(Arc::ptr_eq(&leased.vm, &operator), "an adopted VM serves invocations");
        pool.release(leased);
        assert!(pool.take_idle_since(Instant::now()).is_empty(), "no keep-alive for it");
        assert!(pool.take_all(false).is_empty(), "fn stop leaves it");
        assert!(pool.remove(&operator).is_some(), "its domain stopped");
        assert!(pool.remove(&operator).is_none());
        pool.adopt(operator.clone()).unwrap();
        assert_eq!(pool.take_all(true).len(), 1, "fn rm takes it");
        assert!(pool.adopt(operator).is_err(), "a closed pool adopts nothing");
    }
}
