//! The doorbell's host end, kept across QEMU processes.
//!
//! ```text
//!  backend ◄══ socketpair ══► relay ◄── WORK/doorbell.sock ◄── QEMU (chardev client,
//!  (Vm::doorbell)             (accepts each QEMU         virtio-serial org.nexus.doorbell)
//!                              that connects)
//! ```
//!
//! Under libvirt a VM's QEMU process changes while the VM lives on: `virsh save` ends it and
//! `virsh restore` starts another, as does the adapter's own snapshot. So QEMU connects to a
//! socket the adapter listens on, and a relay copies bytes between the current QEMU connection
//! and one end of a socket pair whose other end the backend holds. A byte the backend writes
//! while no QEMU is connected is dropped: the guest is not running then, and the backend kicks
//! a restored guest anyway. [`Relay::host_end`] hands out a new pair's end each time (the
//! backend serves a restored VM's region afresh, with a new doorbell); the old pair stops.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// The relay of one VM.
#[derive(Debug)]
pub struct Relay {
    path: PathBuf,
    vm: String,
    stopped: Arc<AtomicBool>,
    /// The relay's end of the backend's current pair.
    ours: Arc<Mutex<Option<UnixStream>>>,
    /// The QEMU connected now.
    qemu: Arc<Mutex<Option<UnixStream>>>,
}

impl Relay {
    /// Listens on `path` (replacing a stale socket) and starts relaying.
    pub fn start(path: &Path, vm: &str) -> io::Result<Relay> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        let relay = Relay {
            path: path.to_owned(),
            vm: vm.to_owned(),
            stopped: Arc::default(),
            ours: Arc::default(),
            qemu: Arc::default(),
        };
        let (stopped, qemu, ours) = (relay.stopped.clone(), relay.qemu.clone(), relay.ours.clone());
        thread::Builder::new()
            .name(format!("doorbell-{vm}"))
            .spawn(move || accept(listener, stopped, qemu, ours))?;
        Ok(relay)
    }

    /// A new host end for the backend: a byte written to it reaches the current QEMU, and
    /// what QEMU sends arrives on it. The end handed out before stops relaying.
    pub fn host_end(&self) -> io::Result<UnixStream> {
        let (ours, theirs) = UnixStream::pair()?;
        let (qemu, mut from_backend) = (self.qemu.clone(), ours.try_clone()?);
        thread::Builder::new().name(format!("doorbell-out-{}", self.vm)).spawn(move || {
            let mut bytes = [0u8; 64];
            while let Ok(n @ 1..) = from_backend.read(&mut bytes) {
                if let Some(conn) = lock(&qemu).as_mut() {
                    let _ = conn.write_all(&bytes[..n]);
                }
            }
        })?;
        if let Some(old) = lock(&self.ours).replace(ours) {
            let _ = old.shutdown(Shutdown::Both);
        }
        Ok(theirs)
    }

    /// Ends the relay's threads and removes the socket.
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wakes the acceptor, which then sees `stopped`.
        let _ = UnixStream::connect(&self.path);
        for end in [&self.qemu, &self.ours] {
            if let Some(conn) = lock(end).take() {
                let _ = conn.shutdown(Shutdown::Both);
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts each QEMU that connects, making it the current one, and copies what it sends to
/// the backend's current end.
fn accept(
    listener: UnixListener,
    stopped: Arc<AtomicBool>,
    qemu: Arc<Mutex<Option<UnixStream>>>,
    ours: Arc<Mutex<Option<UnixStream>>>,
) {
    for conn in listener.incoming() {
        if stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let Ok(mut reader) = conn.try_clone() else { continue };
        if let Some(old) = lock(&qemu).replace(conn) {
            let _ = old.shutdown(Shutdown::Both);
        }
        let ours = ours.clone();
        let spawned = thread::Builder::new().name("doorbell-in".into()).spawn(move || {
            let mut bytes = [0u8; 64];
            while let Ok(n @ 1..) = reader.read(&mut bytes) {
                if let Some(end) = lock(&ours).as_mut() {
                    let _ = end.write_all(&bytes[..n]);
                }
            }
        });
        if let Err(error) = spawned {
            tracing::warn!("Cannot relay a doorbell connection: {error}");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_both_ways_across_a_reconnect_and_a_new_host_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doorbell.sock");
        let relay = Relay::start(&path, "t").unwrap();
        for round in 0..2u8 {
            // Each round a new QEMU process and a new host end (a restored VM served afresh).
            let mut host = relay.host_end().unwrap();
            let mut qemu = UnixStream::connect(&path).unwrap();
            qemu.write_all(&[round]).unwrap();
            let mut got = [0u8];
            host.read_exact(&mut got).unwrap();
            assert_eq!(got, [round]);
            // The relay may not have taken this connection as current yet: retry the write.
            let mut echoed = [0u8];
            qemu.set_read_timeout(Some(std::time::Duration::from_millis(50))).unwrap();
            for _ in 0..100 {
                host.write_all(&[round + 10]).unwrap();
                if qemu.read_exact(&mut echoed).is_ok() {
                    break;
                }
            }
            assert_eq!(echoed, [round + 10]);
        }
        relay.stop();
        assert!(!path.exists());
    }
}
