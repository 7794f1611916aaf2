//! `nexus-agent`: started by the guest's init (as PID 1) in every function VM.
//!
//! ```text
//!  /proc/cmdline ── nexus.handler=… nexus.function=… [nexus.serve=http:PORT] ──► settings
//!  find the region (ivshmem BAR2) and the doorbell port (not when serving over HTTP)
//!  loop:
//!    spawn python3 -m nexus_runtime --serve | --serve-http PORT
//!      (the handler is imported once, then serves)
//!    reap every child (PID 1 duty) until the runtime exits
//!    answer the invocation it left in flight with Lambda's exit error (region only)
//!    restart it, backing off while it keeps crashing
//! ```

mod settings;
mod supervise;

use std::process::ExitCode;

fn main() -> ExitCode {
    let error = match settings::Settings::from_kernel() {
        Ok(settings) => {
            eprintln!("nexus-agent: function {} handler {}", settings.function, settings.handler);
            match supervise::run(&settings) {
                Ok(never) => match never {},
                Err(e) => e.to_string(),
            }
        }
        Err(e) => e.to_string(),
    };
    eprintln!("nexus-agent: {error}");
    if std::process::id() == 1 {
        // PID 1 must not exit (the kernel would panic): power the VM off, so the VMM exits and
        // the backend reports this console.
        // SAFETY: sync(2) takes no arguments.
        unsafe { libc::sync() };
        // SAFETY: reboot(2) with a plain command takes no pointers.
        unsafe { libc::reboot(libc::RB_POWER_OFF) };
    }
    ExitCode::FAILURE
}
