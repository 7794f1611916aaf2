//! An open-loop load generator: invocations arrive at a fixed mean rate (Poisson arrivals drawn
//! from a seeded generator, so a run is repeatable) and are spread round-robin over N targets,
//! each of which serves one invocation at a time (one function VM each).
//!
//! An invocation is sent at its planned time, or as soon as its target is free if it is still
//! busy; its latency counts from the *planned* time, so a target that falls behind shows in the
//! latencies instead of slowing the arrivals down (no coordinated omission).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use nexus_tests::Rng;

/// One invocation of the plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Planned {
    /// Its number in the plan, from 0.
    pub seq: usize,
    /// When to send it, from the start of the run.
    pub at: Duration,
    /// Which target serves it.
    pub target: usize,
}

/// What one invocation did.
#[derive(Debug, Clone)]
pub struct Done<T> {
    pub planned: Planned,
    /// From the planned time until the answer.
    pub latency: Duration,
    /// How late it was sent (its target was still busy).
    pub lag: Duration,
    pub output: T,
}

/// The arrivals of `duration` at `rate` per second over `targets` targets, from `seed`.
pub fn plan(rate: f64, duration: Duration, targets: usize, seed: u64) -> Vec<Planned> {
    let mut rng = Rng(seed);
    let mut planned = Vec::new();
    let mut at = rng.exponential(rate);
    while at < duration.as_secs_f64() {
        let seq = planned.len();
        planned.push(Planned { seq, at: Duration::from_secs_f64(at), target: seq % targets });
        at += rng.exponential(rate);
    }
    planned
}

/// Runs `plan` with one thread per target, each calling `call` for its invocations in order;
/// returns them in plan order. Stops at the first error.
pub fn run<T, F>(plan: &[Planned], targets: usize, call: F) -> Result<Vec<Done<T>>>
where
    T: Send,
    F: Fn(&Planned) -> Result<T> + Sync,
{
    let start = Instant::now();
    let failed = AtomicBool::new(false);
    let per_target: Vec<Result<Vec<Done<T>>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..targets)
            .map(|target| {
                let (call, failed) = (&call, &failed);
                scope.spawn(move || -> Result<Vec<Done<T>>> {
                    let mut done = Vec::new();
                    for planned in plan.iter().filter(|p| p.target == target) {
                        if failed.load(Ordering::Relaxed) {
                            break;
                        }
                        std::thread::sleep(planned.at.saturating_sub(start.elapsed()));
                        let sent = start.elapsed();
                        let output = call(planned).inspect_err(|_| {
                            failed.store(true, Ordering::Relaxed);
                        })?;
                        done.push(Done {
                            planned: *planned,
                            latency: start.elapsed() - planned.at,
                            lag: sent.saturating_sub(planned.at),
                            output,
                        });
                    }
                    Ok(done)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(anyhow!("a load thread panicked"))))
            .collect()
    });
    let mut all = Vec::new();
    for done in per_target {
        all.extend(done?);
    }
    all.sort_by_key(|d| d.planned.seq);
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_repeatable_round_robin_and_at_the_rate() {
        let a = plan(20.0, Duration::from_secs(50), 3, 7);
        assert_eq!(a, plan(20.0, Duration::from_secs(50), 3, 7));
        assert_ne!(a, plan(20.0, Duration::from_secs(50), 3, 8));
        assert!((900..1100).contains(&a.len()), "{} arrivals", a.len());
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(a.iter().all(|p| p.target == p.seq % 3 && p.at < Duration::from_secs(50)));
    }

    #[test]
    fn runs_each_target_in_order_and_counts_latency_from_the_plan() {
        let planned: Vec<Planned> = (0..6)
            .map(|seq| Planned { seq, at: Duration::from_millis(5), target: seq % 2 })
            .collect();
        let busy = Duration::from_millis(60);
        let done = run(&planned, 2, |p| {
            std::thread::sleep(busy);
            Ok(p.seq * 10)
        })
        .unwrap();
        assert_eq!(done.iter().map(|d| d.output).collect::<Vec<_>>(), [0, 10, 20, 30, 40, 50]);
        // Each target serves three back to back: the third waits for two before it.
        let last = &done[4];
        assert!(last.lag >= busy * 2 && last.latency >= busy * 3, "{last:?}");
        assert!(done[0].latency >= busy && done[0].lag < busy);
    }

    #[test]
    fn stops_at_the_first_error() {
        let planned: Vec<Planned> =
            (0..4).map(|seq| Planned { seq, at: Duration::ZERO, target: 0 }).collect();
        let result = run(&planned, 1, |p| if p.seq == 1 { Err(anyhow!("no")) } else { Ok(()) });
        assert_eq!(result.unwrap_err().to_string(), "no");
    }
}
