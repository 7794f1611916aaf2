//! What libvirt says happened to each domain: its lifecycle events, received on a thread that
//! runs libvirt's default event loop, folded into the last state seen per domain name.
//!
//! ```text
//!  libvirtd ──lifecycle event (domain, event, detail)──► nexus-libvirt-events thread
//!     started / resumed ─► Running      suspended ─► Paused      stopped (saved) ─► Saved
//!     stopped / shutdown / crashed / undefined ─► Gone(why)               (virsh destroy…)
//!     started: the domain id of the new QEMU process is recorded too
//!  LibvirtVm::info() reads the map: a domain Gone that the adapter did not stop is Exited;
//!  a QEMU process the adapter did not start (virsh restore of a saved VM) is Restored.
//! ```
//!
//! Events arrive after the call that caused them returns, in the order libvirt emitted them.
//! So the adapter records what its own calls brought about at once ([`Lifecycle::set`]), and
//! after a call that starts a QEMU process waits for that process's `started` event
//! ([`Lifecycle::wait_started`]): the events before it can then no longer arrive late.
//!
//! The event loop is process-wide (libvirt has one): registered once, before the adapter's
//! connection is opened, and run forever by one thread.

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::raw::{c_int, c_void};
use std::sync::{Arc, Condvar, Mutex, Once, OnceLock};
use std::time::Duration;

use virt::connect::Connect;
use virt::sys;

use super::LibvirtError;

/// The last lifecycle state libvirt reported for a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Running,
    Paused,
    /// Stopped by a save (`virsh save`): a restore may bring it back.
    Saved,
    /// Not running any more; the reason in libvirt's words.
    Gone(&'static str),
}

/// What is known of one domain.
#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    seen: Option<Seen>,
    /// The domain id of the QEMU process of the last `started` event.
    started: Option<u32>,
}

/// The states seen, by domain name.
#[derive(Debug, Default)]
pub struct Lifecycle {
    domains: Mutex<HashMap<String, Entry>>,
    /// Signalled on every `started` event.
    started: Condvar,
}

impl Lifecycle {
    pub fn get(&self, domain: &str) -> Option<Seen> {
        self.lock().get(domain).and_then(|e| e.seen)
    }

    /// The domain id of the QEMU process libvirt last reported started for `domain`.
    pub fn started(&self, domain: &str) -> Option<u32> {
        self.lock().get(domain).and_then(|e| e.started)
    }

    /// Records a state the adapter itself brought about (its events follow).
    pub fn set(&self, domain: &str, seen: Seen) {
        self.lock().entry(domain.to_owned()).or_default().seen = Some(seen);
    }

    /// Waits up to `timeout` for the `started` event of the QEMU process `id` of `domain`;
    /// whether it came.
    pub fn wait_started(&self, domain: &str, id: u32, timeout: Duration) -> bool {
        let domains = self.lock();
        let (domains, waited) = self
            .started
            .wait_timeout_while(domains, timeout, |d| {
                d.get(domain).and_then(|e| e.started) != Some(id)
            })
            .unwrap_or_else(|e| e.into_inner());
        drop(domains);
        !waited.timed_out()
    }

    pub fn forget(&self, domain: &str) {
        self.lock().remove(domain);
    }

    /// Folds in an event: `seen`, and for a `started` event the new process's domain id.
    fn record(&self, domain: &str, seen: Seen, started: Option<u32>) {
        let mut domains = self.lock();
        let entry = domains.entry(domain.to_owned()).or_default();
        // An undefine after a stop or a save adds nothing: the stop's reason is the one to
        // keep, and a saved domain can still be restored from its image.
        let ended = matches!(entry.seen, Some(Seen::Gone(_) | Seen::Saved));
        if seen != Seen::Gone("undefined") || !ended {
            entry.seen = Some(seen);
        }
        if started.is_some() {
            entry.started = started;
            self.started.notify_all();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.domains.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Registers libvirt's default event loop (once per process) and starts the thread that runs
/// it. Must happen before a connection that receives events is opened.
pub fn start_event_loop() -> Result<(), LibvirtError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    static RUNNING: Once = Once::new();
    REGISTERED
        .get_or_init(|| virt::event::event_register_default_impl().map_err(|e| e.to_string()))
        .clone()
        .map_err(LibvirtError::EventLoop)?;
    RUNNING.call_once(|| {
        // libvirt prints every error to stderr by default; the adapter returns them instead.
        virt::error::clear_error_callback();
        let spawned =
            std::thread::Builder::new().name("nexus-libvirt-events".into()).spawn(|| loop {
                if let Err(error) = virt::event::event_run_default_impl() {
                    tracing::warn!("libvirt event loop: {error}");
                }
            });
        if let Err(error) = spawned {
            tracing::error!("Cannot start the libvirt event thread: {error}");
        }
    });
    Ok(())
}

/// Subscribes `lifecycle` to the lifecycle events of every domain of `conn`, for as long as
/// the connection lives.
pub fn subscribe(conn: &Connect, lifecycle: Arc<Lifecycle>) -> Result<(), LibvirtError> {
    let opaque = Box::into_raw(Box::new(lifecycle)).cast::<c_void>();
    type LifecycleFn = unsafe extern "C" fn(
        sys::virConnectPtr,
        sys::virDomainPtr,
        c_int,
        c_int,
        *mut c_void,
    ) -> c_int;
    type Generic = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);
    // SAFETY: libvirt declares every domain event callback as the generic type and calls it
    // with the signature of the event ID (VIR_DOMAIN_EVENT_CALLBACK in libvirt's headers), so
    // a lifecycle callback is passed cast to the generic type.
    let callback = unsafe { std::mem::transmute::<LifecycleFn, Generic>(on_lifecycle) };
    // SAFETY: `callback` has the lifecycle signature; `opaque` is a leaked Box<Arc<Lifecycle>>
    // that `free_lifecycle` frees when libvirt drops the registration; the connection pointer
    // is valid while `conn` is.
    let id = unsafe {
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(callback),
            opaque,
            Some(free_lifecycle),
        )
    };
    if id < 0 {
        // SAFETY: libvirt did not take `opaque`, so it is still ours to free, once.
        drop(unsafe { Box::from_raw(opaque.cast::<Arc<Lifecycle>>()) });
        return Err(LibvirtError::Api {
            what: "subscribe to domain lifecycle events".into(),
            source: virt::error::Error::last_error(),
        });
    }
    Ok(())
}

/// What a lifecycle event means for the domain's state.
fn seen(event: u32, detail: u32) -> Option<Seen> {
    Some(match event {
        sys::VIR_DOMAIN_EVENT_STARTED | sys::VIR_DOMAIN_EVENT_RESUMED => Seen::Running,
        sys::VIR_DOMAIN_EVENT_SUSPENDED => Seen::Paused,
        sys::VIR_DOMAIN_EVENT_STOPPED if detail == sys::VIR_DOMAIN_EVENT_STOPPED_SAVED => {
            Seen::Saved
        }
        sys::VIR_DOMAIN_EVENT_STOPPED => Seen::Gone(match detail {
            sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN => "shut down",
            sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED => "destroyed",
            sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED => "crashed",
            sys::VIR_DOMAIN_EVENT_STOPPED_MIGRATED => "migrated away",
            sys::VIR_DOMAIN_EVENT_STOPPED_FAILED => "failed",
            _ => "stopped",
        }),
        sys::VIR_DOMAIN_EVENT_CRASHED => Seen::Gone("crashed"),
        sys::VIR_DOMAIN_EVENT_UNDEFINED => Seen::Gone("undefined"),
        _ => return None,
    })
}

unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: `dom` is valid for the duration of the call.
    let name = unsafe { sys::virDomainGetName(dom) };
    if name.is_null() {
        return 0;
    }
    // SAFETY: a non-null name is a NUL-terminated string the domain owns, valid for the call.
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
    // SAFETY: `opaque` is the Box<Arc<Lifecycle>> registered in `subscribe`, alive until
    // `free_lifecycle`, which libvirt calls only after the last callback.
    let lifecycle = unsafe { &*opaque.cast::<Arc<Lifecycle>>() };
    if let Some(seen) = seen(event as u32, detail as u32) {
        let started = (event as u32 == sys::VIR_DOMAIN_EVENT_STARTED)
            // SAFETY: `dom` is valid for the call; the id comes with the event (no call to
            // libvirtd), that of the process just started.
            .then(|| unsafe { sys::virDomainGetID(dom) })
            .filter(|&id| id != u32::MAX);
        tracing::debug!(domain = name, ?seen, ?started, "libvirt lifecycle event");
        lifecycle.record(&name, seen, started);
    }
    0
}

unsafe extern "C" fn free_lifecycle(opaque: *mut c_void) {
    // SAFETY: called once by libvirt with the pointer `subscribe` leaked.
    drop(unsafe { Box::from_raw(opaque.cast::<Arc<Lifecycle>>()) });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_map_to_states() {
        assert_eq!(seen(sys::VIR_DOMAIN_EVENT_SUSPENDED, 0), Some(Seen::Paused));
        assert_eq!(seen(sys::VIR_DOMAIN_EVENT_RESUMED, 0), Some(Seen::Running));
        let destroyed =
            seen(sys::VIR_DOMAIN_EVENT_STOPPED, sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED);
        assert_eq!(destroyed, Some(Seen::Gone("destroyed")));
        let saved = seen(sys::VIR_DOMAIN_EVENT_STOPPED, sys::VIR_DOMAIN_EVENT_STOPPED_SAVED);
        assert_eq!(saved, Some(Seen::Saved));
        assert_eq!(seen(sys::VIR_DOMAIN_EVENT_DEFINED, 0), None);
    }

    #[test]
    fn an_undefine_keeps_why_the_domain_stopped_and_starts_record_their_process() {
        let lifecycle = Lifecycle::default();
        lifecycle.record("d", Seen::Running, Some(7));
        lifecycle.record("d", Seen::Saved, None);
        lifecycle.record("d", Seen::Gone("undefined"), None);
        assert_eq!(lifecycle.get("d"), Some(Seen::Saved), "a saved image can still be restored");
        assert_eq!(lifecycle.started("d"), Some(7));
        assert!(lifecycle.wait_started("d", 7, Duration::ZERO));
        assert!(!lifecycle.wait_started("d", 8, Duration::from_millis(10)));
        lifecycle.record("d", Seen::Running, Some(8));
        assert!(lifecycle.wait_started("d", 8, Duration::ZERO));
    }
}
