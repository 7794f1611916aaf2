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
//! and one end of a socket pair whose other end the backend holds for the VM's whole life.
//! A byte the backend writes while no QEMU is connected is dropped: the guest is not running
//! then, and the backend kicks a restored guest anyway.

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
    stopped: Arc<AtomicBool>,
    /// The end the relay reads and writes.
    ours: UnixStream,
    /// The QEMU connected now.
    qemu: Arc<Mutex<Option<UnixStream>>>,
    /// The backend's end, until [`Relay::take_host_end`].
    theirs: Option<UnixStream>,
}

impl Relay {
    /// Listens on `path` and starts relaying.
    pub fn start(path: &Path, vm: &str) -> io::Result<Relay> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        let (ours, theirs) = UnixStream::pair()?;
        let relay = Relay {
            path: path.to_owned(),
            stopped: Arc::default(),
            ours,
            qemu: Arc::default(),
            theirs: Some(theirs),
        };
        let (stopped, qemu, ours) =
            (relay.stopped.clone(), relay.qemu.clone(), relay.ours.try_clone()?);
        thread::Builder::new()
            .name(format!("doorbell-{vm}"))
            .spawn(move || accept(listener, stopped, qemu, ours))?;
        let (qemu, mut from_backend) = (relay.qemu.clone(), relay.ours.try_clone()?);
        thread::Builder::new().name(format!("doorbell-out-{vm}")).spawn(move || {
            let mut byte = [0u8; 64];
            while let Ok(n @ 1..) = from_backend.read(&mut byte) {
                if let Some(conn) = lock(&qemu).as_mut() {
                    let _ = conn.write_all(&byte[..n]);
                }
            }
        })?;
        Ok(relay)
    }

    /// The backend's end (once).
    pub fn take_host_end(&mut self) -> Option<UnixStream> {
        self.theirs.take()
    }

    /// Ends the relay's threads and removes the socket.
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wakes the acceptor, which then sees `stopped`.
        let _ = UnixStream::connect(&self.path);
        if let Some(conn) = lock(&self.qemu).take() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        let _ = self.ours.shutdown(Shutdown::Both);
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts each QEMU that connects, making it the current one, and copies what it sends to
/// the backend's end.
fn accept(
    listener: UnixListener,
    stopped: Arc<AtomicBool>,
    qemu: Arc<Mutex<Option<UnixStream>>>,
    to_backend: UnixStream,
) {
    for conn in listener.incoming() {
        if stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let (Ok(mut reader), Ok(mut writer)) = (conn.try_clone(), to_backend.try_clone()) else {
            continue;
        };
        if let Some(old) = lock(&qemu).replace(conn) {
            let _ = old.shutdown(Shutdown::Both);
        }
        let spawned = thread::Builder::new().name("doorbell-in".into()).spawn(move || {
            let _ = io::copy(&mut reader, &mut writer);
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
    fn relays_both_ways_across_a_reconnect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doorbell.sock");
        let mut relay = Relay::start(&path, "t").unwrap();
        let mut host = relay.take_host_end().unwrap();
        for round in 0..2u8 {
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
