//! The machine's own speed while a window runs: a small fixed piece of host work, timed four
//! times a second on a thread of its own in that thread's CPU time. Waiting for a CPU does not
//! count, only how fast the CPU ran the work once it had one.
//!
//! ```text
//!  window   ├────────────────────────────────────────────┤
//!  thread    ▮ ▮ ▮ ▮ ▮ ▮ ▮ ▮ ▮ ▮ ▮ ▮ ▮ ▮ ▮ …   ▮ = sort the same 2^11 numbers, thread CPU time
//!  figure    the mean ▮ of the window (a sample is fast or about twice as slow: a median
//!            would jump between the two)
//! ```
//!
//! This machine's physical CPUs are shared. The same work takes between 1× and 2× as long from
//! one second to the next, and a stretch of minutes can be slower throughout. A flavour whose
//! windows fall in a slow stretch looks worse than it is. The table shows each flavour's
//! reference beside the ratios and flags the pairs whose references differ. The thread is
//! this process's, so its CPU is left out of the node's figure like the load generator's; it
//! takes well under 1 % of a CPU, so it displaces next to nothing.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Result};
use nexus_tests::Rng;

use super::stats::mean;

/// How much work one measurement is: numbers sorted.
const NUMBERS: usize = 1 << 11;
/// How often it runs: often enough that even a 10 s window holds 40 samples.
const EVERY: Duration = Duration::from_millis(250);

/// The reference running beside a window.
#[derive(Debug)]
pub struct Reference {
    stop: Sender<()>,
    thread: JoinHandle<Result<Vec<f64>>>,
}

impl Reference {
    /// Starts timing the reference work, once now and then every [`EVERY`].
    pub fn start() -> Self {
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let numbers: Vec<u64> = {
                let mut rng = Rng(1);
                (0..NUMBERS).map(|_| rng.next_u64()).collect()
            };
            let mut seconds = Vec::new();
            loop {
                seconds.push(time_one(&numbers)?);
                match stopped.recv_timeout(EVERY) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return Ok(seconds),
                }
            }
        });
        Self { stop, thread }
    }

    /// Stops it; the mean CPU seconds of one piece of work over the window.
    pub fn stop(self) -> Result<f64> {
        // The thread may have ended on an error already: its result says so below.
        let _ = self.stop.send(());
        let seconds =
            self.thread.join().map_err(|_| anyhow!("the reference thread panicked"))??;
        Ok(mean(&seconds))
    }
}

/// The thread CPU time of sorting a copy of `numbers`, seconds.
fn time_one(numbers: &[u64]) -> Result<f64> {
    let mut copy = numbers.to_vec();
    let start = thread_cpu()?;
    copy.sort_unstable();
    std::hint::black_box(&copy);
    Ok((thread_cpu()? - start).as_secs_f64())
}

/// The calling thread's CPU time so far.
fn thread_cpu() -> Result<Duration> {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable timespec for the call to fill in.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let nanos = u64::try_from(now.tv_nsec)?;
    Ok(Duration::from_secs(u64::try_from(now.tv_sec)?) + Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_times_real_work_in_cpu_time() {
        let reference = Reference::start();
        std::thread::sleep(Duration::from_millis(600));
        let seconds = reference.stop().unwrap();
        // Sorting 2^11 numbers takes CPU time, far less than the time between two runs.
        assert!(seconds > 0.0 && seconds < 0.05, "{seconds}");
    }
}
