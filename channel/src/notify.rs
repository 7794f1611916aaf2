//! Notification: spin briefly, then sleep on a doorbell word so that an idle side costs no CPU.
//!
//! Each side owns one *doorbell* (a counter the peer bumps to wake it) and one *asleep* flag
//! (which it sets before sleeping):
//!
//! ```text
//!  waiter                                   notifier (after publishing to a ring)
//!  seen = my_doorbell                       publish index (Release)
//!  my_asleep = 1                            fence(SeqCst)
//!  fence(SeqCst)                            if peer_asleep != 0:
//!  if ready(): my_asleep = 0; done              peer_doorbell += 1
//!  futex_wait(my_doorbell, seen)                futex_wake(peer_doorbell)
//!  my_asleep = 0
//! ```
//!
//! The two `SeqCst` fences make it impossible for the waiter to miss the work *and* the
//! notifier to miss the flag; a wake that lands between `seen` and `futex_wait` makes the wait
//! return at once. Waits are bounded by a timeout, so a lost wake-up costs latency, never a hang.
//!
//! How the sleeper is woken is the [`Kick`]. With [`Kick::Futex`] both sides map the region on
//! one host and sleep on the doorbell word itself (a shared futex, not `FUTEX_PRIVATE`). A futex
//! cannot be seen across a VM boundary, so a VM uses [`Kick::Stream`]: a byte stream between
//! the sides (in the guest a virtio-serial port, on the host the unix socket QEMU connects it
//! to; a vsock with Cloud Hypervisor). A sleeper polls the stream; a notifier writes one byte.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::layout::header;
use crate::region::{Region, RegionError};

/// The side of the channel a [`Notifier`] acts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Host,
    Guest,
}

/// How a sleeping side is woken.
#[derive(Debug)]
pub enum Kick {
    /// A shared futex on the doorbell word: both sides on one host.
    Futex,
    /// One byte on a stream between the sides wakes the reader (the descriptor is made
    /// non-blocking).
    Stream(OwnedFd),
}

/// Wakes the peer and waits for work, for one side of a region.
#[derive(Debug)]
pub struct Notifier {
    region: Arc<Region>,
    my_doorbell: usize,
    my_asleep: usize,
    peer_doorbell: usize,
    peer_asleep: usize,
    spin: Duration,
    kick: Kick,
}

/// The vsock port of the doorbell where a VMM carries it over virtio-vsock (Cloud Hypervisor):
/// the guest agent connects to this port of the host (CID 2); the VMM hands the connection to
/// the host end the backend holds.
pub const VSOCK_DOORBELL_PORT: u32 = 0x4e58;

/// How long a waiter spins before it sleeps, unless told otherwise.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);
/// Longest single sleep; a waiter re-checks its condition at least this often (a safety net:
/// the protocol loses no wake-up, but a peer that dies mid-handshake must not strand us).
const MAX_SLEEP: Duration = Duration::from_secs(1);

impl Notifier {
    /// A notifier for `side` of `region`, spinning for `spin` before sleeping on a futex.
    pub fn new(region: Arc<Region>, side: Side, spin: Duration) -> Self {
        Self::with_kick(region, side, spin, Kick::Futex)
    }

    /// A notifier that sleeps and wakes through `kick`.
    pub fn with_kick(region: Arc<Region>, side: Side, spin: Duration, kick: Kick) -> Self {
        if let Kick::Stream(fd) = &kick {
            set_nonblocking(fd);
        }
        let (my_doorbell, my_asleep, peer_doorbell, peer_asleep) = match side {
            Side::Host => (
                header::HOST_WAKE,
                header::HOST_SLEEPING,
                header::GUEST_WAKE,
                header::GUEST_SLEEPING,
            ),
            Side::Guest => (
                header::GUEST_WAKE,
                header::GUEST_SLEEPING,
                header::HOST_WAKE,
                header::HOST_SLEEPING,
            ),
        };
        Self { region, my_doorbell, my_asleep, peer_doorbell, peer_asleep, spin, kick }
    }

    /// Wakes the peer if it said it sleeps. Call after publishing to a ring.
    pub fn notify_peer(&self) -> Result<(), RegionError> {
        // SeqCst: orders our ring publication before the read of the peer's flag (see above).
        fence(Ordering::SeqCst);
        if self.region.atomic_u32(self.peer_asleep)?.load(Ordering::Relaxed) != 0 {
            self.kick_peer()?;
        }
        Ok(())
    }

    /// Wakes the peer whether or not it said it sleeps: after the region was re-initialized
    /// under a sleeping peer (a VM restored from a snapshot), its asleep flag is gone.
    pub fn kick_peer(&self) -> Result<(), RegionError> {
        let doorbell = self.region.atomic_u32(self.peer_doorbell)?;
        doorbell.fetch_add(1, Ordering::Release);
        match &self.kick {
            Kick::Futex => futex_wake(doorbell),
            Kick::Stream(fd) => stream_kick(fd),
        }
        Ok(())
    }

    /// Wakes this side's own waiter, to stop it. A stream kick is shut down for good.
    pub fn wake_self(&self) -> Result<(), RegionError> {
        let doorbell = self.region.atomic_u32(self.my_doorbell)?;
        doorbell.fetch_add(1, Ordering::Release);
        match &self.kick {
            Kick::Futex => futex_wake(doorbell),
            Kick::Stream(fd) => {
                // SAFETY: shutdown(2) on a descriptor we own; it only changes socket state.
                unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
            }
        }
        Ok(())
    }

    /// Waits until `ready` returns `Ok(true)` or `timeout` passes; returns whether it became
    /// ready. Spins first, then sleeps on the doorbell.
    pub fn wait<E>(
        &self,
        timeout: Duration,
        mut ready: impl FnMut() -> Result<bool, E>,
    ) -> Result<bool, E>
    where
        E: From<RegionError>,
    {
        let start = Instant::now();
        while start.elapsed() < self.spin.min(timeout) {
            if ready()? {
                return Ok(true);
            }
            std::hint::spin_loop();
        }
        let doorbell = self.region.atomic_u32(self.my_doorbell)?;
        let asleep = self.region.atomic_u32(self.my_asleep)?;
        loop {
            let seen = doorbell.load(Ordering::Acquire);
            asleep.store(1, Ordering::Relaxed);
            // SeqCst: our flag is visible before we look for work (pairs with notify_peer).
            fence(Ordering::SeqCst);
            if ready()? {
                asleep.store(0, Ordering::Relaxed);
                return Ok(true);
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                asleep.store(0, Ordering::Relaxed);
                return Ok(false);
            }
            match &self.kick {
                Kick::Futex => futex_wait(doorbell, seen, left.min(MAX_SLEEP)),
                Kick::Stream(fd) => stream_wait(fd, left.min(MAX_SLEEP)),
            }
            asleep.store(0, Ordering::Relaxed);
            if ready()? {
                return Ok(true);
            }
        }
    }
}

/// Writes one wake-up byte. A full stream already holds wake-ups, so `EAGAIN` is fine; a
/// closed one means the peer is gone, which its state word reports.
fn stream_kick(fd: &OwnedFd) {
    // SAFETY: writes one byte from a live local into a descriptor we own.
    unsafe { libc::write(fd.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
}

/// Sleeps until the stream is readable (or `timeout`), then drains every wake-up byte.
fn stream_wait(fd: &OwnedFd, timeout: Duration) {
    let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX).max(1);
    // SAFETY: polls one valid pollfd that lives across the call.
    let ready = unsafe { libc::poll(&mut poll, 1, millis) };
    if ready > 0 && poll.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
        // The peer hung up: poll would return at once forever; pace the caller instead.
        std::thread::sleep(timeout.min(Duration::from_millis(10)));
        return;
    }
    let mut drain = [0u8; 64];
    // SAFETY: reads into a live local buffer of the length given; the descriptor is
    // non-blocking, so this stops at EAGAIN.
    while unsafe { libc::read(fd.as_raw_fd(), drain.as_mut_ptr().cast(), drain.len()) } > 0 {}
}

fn set_nonblocking(fd: &OwnedFd) {
    // SAFETY: fcntl(F_GETFL) on a descriptor we own only reads its status flags.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: fcntl(F_SETFL) on a descriptor we own only sets its status flags.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `word` is a live, aligned u32 inside a shared mapping and `ts` outlives the call;
    // FUTEX_WAIT only reads both. Spurious returns (EAGAIN, EINTR, timeout) are fine: callers
    // re-check their condition.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, &ts as *const _);
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE does not touch memory.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Geometry;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn a_sleeping_waiter_is_woken_by_the_peer() {
        let dir = tempfile::tempdir().unwrap();
        let geometry = Geometry::new(1 << 20, 64 << 10, 8, 1).unwrap();
        let region = Arc::new(Region::create(&dir.path().join("r"), &geometry).unwrap());
        let host = Notifier::new(region.clone(), Side::Host, Duration::ZERO);
        let guest = Notifier::new(region, Side::Guest, Duration::ZERO);
        let flag = Arc::new(AtomicBool::new(false));
        let seen = flag.clone();
        let waiter = std::thread::spawn(move || {
            let start = Instant::now();
            let ok = host
                .wait::<RegionError>(Duration::from_secs(10), || Ok(seen.load(Ordering::Acquire)))
                .unwrap();
            (ok, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(200));
        flag.store(true, Ordering::Release);
        guest.notify_peer().unwrap();
        let (ok, waited) = waiter.join().unwrap();
        assert!(ok);
        assert!(waited < Duration::from_secs(5), "waiter slept through the wake: {waited:?}");
    }

    #[test]
    fn a_stream_kick_wakes_a_sleeper_across_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let geometry = Geometry::new(1 << 20, 64 << 10, 8, 1).unwrap();
        let region = Arc::new(Region::create(&dir.path().join("r"), &geometry).unwrap());
        let (host_end, guest_end) = std::os::unix::net::UnixStream::pair().unwrap();
        let host = Notifier::with_kick(
            region.clone(),
            Side::Host,
            Duration::ZERO,
            Kick::Stream(host_end.into()),
        );
        let guest = Notifier::with_kick(
            region,
            Side::Guest,
            Duration::ZERO,
            Kick::Stream(guest_end.into()),
        );
        let flag = Arc::new(AtomicBool::new(false));
        let seen = flag.clone();
        let waiter = std::thread::spawn(move || {
            let start = Instant::now();
            let ok = guest
                .wait::<RegionError>(Duration::from_secs(10), || Ok(seen.load(Ordering::Acquire)))
                .unwrap();
            (ok, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(200));
        flag.store(true, Ordering::Release);
        host.notify_peer().unwrap();
        let (ok, waited) = waiter.join().unwrap();
        assert!(ok);
        assert!(waited < Duration::from_millis(900), "sleeper was not kicked: {waited:?}");
    }

    #[test]
    fn wait_times_out_when_nothing_happens() {
        let dir = tempfile::tempdir().unwrap();
        let geometry = Geometry::new(1 << 20, 64 << 10, 8, 1).unwrap();
        let region = Arc::new(Region::create(&dir.path().join("r"), &geometry).unwrap());
        let host = Notifier::new(region, Side::Host, Duration::from_micros(10));
        let ok = host.wait::<RegionError>(Duration::from_millis(30), || Ok(false)).unwrap();
        assert!(!ok);
    }
}
