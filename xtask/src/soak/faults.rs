//! Storage faults: slow (latency under the call timeout), stuck (latency past it), down and
//! back. A backend of its own per fault, with write-back off so that every put reaches
//! storage while the guest waits, on a Garage of its own that can be stopped.

use std::time::Duration;

use anyhow::Result;
use nexus_tests::{Backend, Garage, Link, LinkProfile};

use super::native::{backend, collect, spawn_probe, Probed};
use super::{row, Outcome, BUCKET};
use crate::bench::report::seconds;

/// Each fault's clients, and how long they run.
const REGIONS: usize = 2;
const SECONDS: u64 = 20;
/// The backend's `storage.call_timeout_secs` in these phases.
const CALL_TIMEOUT: Duration = Duration::from_secs(4);
/// What a failed call may take past the call timeout (the last retry's back-off, scheduling).
const SLACK: Duration = Duration::from_secs(1);
/// Slow: a tenth of a second at the median, half a second at the tail: well under the half of
/// the call timeout that bounds one request (a draw past it is a few in a million).
const SLOW: LinkProfile = LinkProfile {
    median_latency: Duration::from_millis(100),
    p99_latency: Duration::from_millis(500),
    bytes_per_second: 88_000_000,
};
/// Stuck: every answer later than the call timeout.
const STUCK: LinkProfile = LinkProfile {
    median_latency: Duration::from_secs(30),
    p99_latency: Duration::from_secs(30),
    bytes_per_second: 88_000_000,
};

pub fn run(garage: &mut Garage) -> Result<Outcome> {
    garage.create_bucket(BUCKET)?;
    let server = garage.endpoint.trim_start_matches("http://").parse()?;
    let mut rows = Vec::new();
    let within = CALL_TIMEOUT + SLACK;

    let slow = behind(garage, Link::start(server, SLOW, 1)?, "slow")?;
    rows.push(row(
        "storage slow (answers after p50 0.1 s, p99 0.5 s): mixed calls",
        format!("{}; p50 / p99 {}", slow.summary(), slow.latency()),
        "0 errors",
    ));
    let stuck = behind(garage, Link::start(server, STUCK, 1)?, "stuck")?;
    rows.push(row(
        format!("storage stuck (answers after 30 s), call timeout {} s", CALL_TIMEOUT.as_secs()),
        failed_within(&stuck),
        "every call fails within the timeout",
    ));

    let direct = backend(&garage.endpoint, garage, CALL_TIMEOUT, WRITE_THROUGH)?;
    garage.stop();
    let down = probe(&direct, "down")?;
    rows.push(row(
        "storage down (server stopped)",
        failed_within(&down),
        "every call fails within the timeout",
    ));
    garage.restart()?;
    let back = probe(&direct, "back")?;
    rows.push(row("storage back (server started again)", back.summary(), "0 errors"));

    let failed_in_time =
        |p: &Probed| p.calls > 0 && p.error_count() == p.calls && p.max_s <= within.as_secs_f64();
    let held = slow.error_count() == 0
        && slow.mismatches == 0
        && failed_in_time(&stuck)
        && failed_in_time(&down)
        && back.error_count() == 0
        && back.mismatches == 0;
    Ok(Outcome { rows, held })
}

/// Every put reaches storage before it is answered.
const WRITE_THROUGH: &str = "writeback: { enabled: false }\n";

/// A backend whose storage is `garage` behind `link`, probed for [`SECONDS`].
fn behind(garage: &Garage, link: Link, phase: &str) -> Result<Probed> {
    let backend = backend(&format!("http://{}", link.addr), garage, CALL_TIMEOUT, WRITE_THROUGH)?;
    probe(&backend, phase)
}

fn probe(backend: &Backend, phase: &str) -> Result<Probed> {
    println!("soak: storage {phase}: {REGIONS} regions for {SECONDS} s");
    let mut probes = Vec::new();
    for i in 0..REGIONS {
        let region = backend.create_region("soak")?;
        probes.push(spawn_probe(&region, &format!("{phase}/r{i}"), SECONDS, None)?);
    }
    collect(probes, phase)
}

/// "N of M calls failed, the slowest after T".
fn failed_within(probed: &Probed) -> String {
    format!(
        "{} of {} calls failed, the slowest after {}",
        probed.error_count(),
        probed.calls,
        seconds(probed.slowest_error_s)
    )
}
