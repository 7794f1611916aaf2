//! A hostile guest scribbles random bytes and indices over its region while the backend also
//! serves two well-behaved guests: the backend stays up, the good guests get every answer
//! right, and the backend's metrics show it refused the hostile traffic.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nexus_channel::layout::{header, RingId, CACHE_LINE};
use nexus_channel::notify::Side;
use nexus_channel::{CallDesc, Notifier, Region};
use nexus_guest::Client;
use nexus_tests::{nexus_binary, Backend, Rng};

const SETTINGS: &str = r#"
storage: { url: "file://{dir}/objects" }
default_policy:
  grants: [{ bucket: good, access: [read, write, list, delete] }]
"#;

/// Calls the hostile guest makes before it starts forging indices.
const BAD_CALLS: u32 = 3000;
/// Scribbles it makes, at least, once it forges indices.
const CHAOS_ROUNDS: u64 = 20_000;

/// Phase 1: malformed calls through a well-kept ring (random ops, buffers, lengths, bytes),
/// draining its completions, so every one reaches the parser. Phase 2: chaos — forged ring
/// indices and random bytes anywhere past the geometry line, with doorbell spam.
fn scribble(path: &Path, stop: &AtomicBool, seed: u64) -> u64 {
    let (region, geometry) = Region::open(path).expect("hostile guest maps its region");
    let region = Arc::new(region);
    let doorbell = Notifier::new(region.clone(), Side::Guest, Duration::ZERO);
    let mut rng = Rng(seed);
    let calls = geometry.ring_offset(RingId::Calls);
    let completions = geometry.ring_offset(RingId::Completions);
    for tail in 1..=BAD_CALLS {
        let desc = CallDesc {
            tag: rng.next_u64(),
            op: (rng.next_u64() % 12) as u16,
            flags: rng.next_u64() as u16,
            buffer: (rng.next_u64() % u64::from(geometry.buffer_count + 2)) as u32,
            bucket_len: (rng.next_u64() % 80) as u16,
            key_len: (rng.next_u64() % 2000) as u16,
            params_len: (rng.next_u64() % 70_000) as u32,
            body_len: rng.next_u64() % (3 << 20),
            stream: rng.next_u64() % 4,
            _reserved: [0; 3],
        };
        let (offset, len) = geometry.buffer(desc.buffer % geometry.guest_buffers).unwrap();
        region.copy_in(offset, &rng.bytes(len.min(256))).unwrap();
        let slot = calls + 2 * CACHE_LINE + ((tail - 1) % geometry.ring_capacity) as usize * 64;
        region.write(slot, &desc).unwrap();
        region.store_u32(calls, tail).unwrap();
        doorbell.notify_peer().unwrap();
        // Keep the ring from overflowing (and let the host take every call before phase 2),
        // draining whatever the host answered.
        let room = if tail == BAD_CALLS { 1 } else { geometry.ring_capacity };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tail.wrapping_sub(region.load_u32(calls + CACHE_LINE).unwrap()) >= room {
            assert!(
                Instant::now() < deadline,
                "the backend stopped taking calls at {tail}: host state {}",
                region.load_u32(header::HOST_STATE).unwrap()
            );
            let answered = region.load_u32(completions).unwrap();
            region.store_u32(completions + CACHE_LINE, answered).unwrap();
            thread::yield_now();
        }
    }
    let mut rounds = 0;
    while rounds < CHAOS_ROUNDS || !stop.load(Ordering::Relaxed) {
        rounds += 1;
        if rng.next_u64() % 2 == 0 {
            let ring = calls
                + (rng.next_u64() % 4) as usize
                    * (2 * CACHE_LINE + 64 * geometry.ring_capacity as usize);
            region
                .store_u32(ring + (rng.next_u64() % 2) as usize * CACHE_LINE, rng.next_u64() as u32)
                .unwrap();
        } else {
            let at = CACHE_LINE + (rng.next_u64() % (region.len() as u64 - 4096)) as usize;
            region.copy_in(at, &rng.bytes(64)).unwrap();
        }
        region.atomic_u32(header::HOST_WAKE).unwrap().fetch_add(1, Ordering::Release);
        doorbell.notify_peer().unwrap();
    }
    rounds
}

/// Puts and gets objects of several sizes (one larger than a buffer) and checks every byte.
fn behave(path: &Path, name: &str, seed: u64, rounds: usize) {
    let client = Client::open(path).expect("good guest maps its region");
    let mut rng = Rng(seed);
    for round in 0..rounds {
        let len = [0, 1, 4096, 100_000, (1 << 20) + 12345][round % 5];
        let body = rng.bytes(len);
        let key = format!("{name}/{round}");
        client.put_object("good", &key, &body).unwrap_or_else(|e| panic!("{name} put {key}: {e}"));
        let mut back = Vec::with_capacity(len);
        let size = client
            .get_object("good", &key, |chunk| back.extend_from_slice(chunk))
            .unwrap_or_else(|e| panic!("{name} get {key}: {e}"));
        assert_eq!(size, len as u64, "{name} {key}: size");
        assert!(back == body, "{name} {key}: bytes differ");
    }
}

#[test]
fn a_hostile_guest_cannot_hurt_the_backend_or_other_guests() {
    let mut backend = Backend::start(&nexus_binary(), SETTINGS, &["good"]).unwrap();
    let hostile = backend.create_region("hostile").unwrap();
    let good = [backend.create_region("good-a").unwrap(), backend.create_region("good-b").unwrap()];
    let stop = Arc::new(AtomicBool::new(false));

    let scribbler = {
        let stop = stop.clone();
        thread::spawn(move || scribble(&hostile, &stop, 0x9e37_79b9_7f4a_7c15))
    };
    let started = Instant::now();
    let guests: Vec<_> = good
        .into_iter()
        .enumerate()
        .map(|(i, path)| {
            thread::spawn(move || behave(&path, &format!("good-{i}"), 17 + i as u64, 60))
        })
        .collect();
    for guest in guests {
        guest.join().expect("a good guest saw a wrong answer");
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = scribbler
        .join()
        .unwrap_or_else(|_| panic!("hostile guest failed; backend log:\n{}", backend.log_tail()));
    eprintln!("hostile guest: {rounds} scribbles in {:?}", started.elapsed());
    for line in backend.metrics().unwrap().lines().filter(|l| l.contains("hostile")) {
        eprintln!("{line}");
    }

    assert!(backend.is_running(), "backend died:\n{}", backend.log_tail());
    let status = backend.api("GET", "/v1/status", None).unwrap();
    assert_eq!(status["regions"], 3);
    let hostile = ["function=\"hostile\""];
    let refused = backend.metric("nexus_rejected_calls_total", &hostile).unwrap();
    let answered = backend.metric("nexus_calls_total", &hostile).unwrap();
    assert!(
        refused + answered >= f64::from(BAD_CALLS),
        "only {refused} refused + {answered} answered of {BAD_CALLS} hostile calls"
    );
    assert!(refused > f64::from(BAD_CALLS) / 2.0, "most random calls must be refused: {refused}");
    let faulted = backend.metric("nexus_regions_faulted_total", &hostile).unwrap();
    assert_eq!(faulted, 1.0, "forged ring indices must fault the hostile region");
    let regions = backend.api("GET", "/v1/regions", None).unwrap();
    let states: Vec<_> = regions
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["function"].clone(), r["state"].clone()))
        .collect();
    for (function, state) in states {
        let expected = if function == "hostile" { "faulted" } else { "serving" };
        assert_eq!(state, expected, "{function}");
    }
    let good_calls =
        backend.metric("nexus_calls_total", &["function=\"good-a\"", "status=\"OK\""]).unwrap();
    assert!(good_calls >= 120.0, "good-a made {good_calls} successful calls");
    assert!(backend.stop(), "backend did not stop cleanly:\n{}", backend.log_tail());
}
