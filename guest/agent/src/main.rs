//! `nexus-agent`: started by the guest's init (as PID 1) in every function VM.
//!
//! ```text
//!  /proc/cmdline ── nexus.handler=… nexus.function=… ──► settings
//!  find the region (ivshmem BAR2) and the doorbell port
//!  loop:
//!    spawn python3 -m nexus_runtime --serve (the handler is imported once, then serves)
//!    reap every child (PID 1 duty) until the runtime exits
//!    answer the invocation it left in flight with Lambda's exit error
//!    restart it, backing off while it keeps crashing
//! ```

mod settings;
mod supervise;

use std::process::ExitCode;

fn main() -> ExitCode {
    let settings = match settings::Settings::from_kernel() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("nexus-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("nexus-agent: function {} handler {}", settings.function, settings.handler);
    match supervise::run(&settings) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("nexus-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
