//! Fuzzes how the host reads a guest's invocation results (ring 3): with up to four
//! invocations in flight, whatever the guest writes over the results ring and the host buffers
//! must hand each invocation at most one outcome — exactly the bytes the guest left in that
//! invocation's buffer — or an error, and never panic or read outside the region.
//!
//! Input: how many invocations to send (first byte, modulo 5), the results ring as the guest
//! leaves it (`ring_len` bytes: producer line, consumer line, 4 descriptors), then the bytes
//! the guest wrote at the start of every host buffer (up to `WINDOW`).
#![no_main]

use std::sync::OnceLock;
use std::task::Poll;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nexus_backend::invoke::Invocations;
use nexus_channel::layout::RingId;
use nexus_fuzz::{padded, results_geometry, ring_len, Scratch, WINDOW};

fn scratch() -> &'static Scratch {
    static SCRATCH: OnceLock<Scratch> = OnceLock::new();
    SCRATCH.get_or_init(|| Scratch::new(results_geometry()))
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime")
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&sends, rest)) = input.split_first() else { return };
    let scratch = scratch();
    let (region, geometry) = (&scratch.region, &scratch.geometry);
    let (ring, window) = rest.split_at(ring_len(geometry).min(rest.len()));
    region.initialize(geometry).unwrap();
    let invocations = Invocations::new(region.clone(), *geometry);
    runtime().block_on(async {
        let sends = usize::from(sends) % (geometry.host_buffers().len() + 1);
        let mut waiting: Vec<_> = (0..sends)
            .map(|_| Box::pin(invocations.send(b"{}", Duration::from_secs(3600), || Ok(()))))
            .collect();
        for invocation in &mut waiting {
            assert!(futures::poll!(invocation).is_pending(), "sent, and waiting for its result");
        }
        // The guest's turn: it scribbles over the results ring and the host buffers.
        let results = geometry.ring_offset(RingId::Results);
        region.copy_in(results, &padded(ring, ring_len(geometry))).unwrap();
        scratch.fill(geometry.host_buffers(), window);
        let _ = invocations.drain();
        let mut answered = 0;
        for invocation in &mut waiting {
            if let Poll::Ready(outcome) = futures::poll!(invocation) {
                answered += 1;
                if let Ok(outcome) = outcome {
                    assert!(outcome.result.len() <= geometry.buffer_size as usize);
                    let written = padded(window, WINDOW);
                    let shown = outcome.result.len().min(WINDOW);
                    assert_eq!(outcome.result[..shown], written[..shown], "the guest's bytes");
                }
            }
        }
        assert_eq!(answered + invocations.in_flight(), sends, "each answered at most once");
    });
});
