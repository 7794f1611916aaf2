//! The doorbell over Cloud Hypervisor's hybrid vsock: a connected stream for the backend before
//! the guest runs, relayed to whichever guest connection is current.
//!
//! CH's vsock device is a unix socket on the host (`vsock.sock`); a guest connection to host
//! port P arrives as a connection to the unix socket `vsock.sock_P`, which the host must be
//! listening on. The agent connects to [`VSOCK_DOORBELL_PORT`] once it runs, and again after a
//! restore (the new VMM has none of the old connections), so the backend cannot be handed the
//! guest's stream itself. It gets one end of a socket pair; a relay thread carries bytes
//! between the other end and the current guest connection:
//!
//! ```text
//!  backend ◄──socketpair──► relay thread ◄──accept── vsock.sock_20056 ◄── CH ◄── guest agent
//!                             (newest connection wins; bytes with no guest are dropped)
//! ```
//! The bytes are wake-ups, so dropping some while no guest is connected is harmless: every wait
//! is bounded. The relay ends when the backend drops its end or [`VsockDoorbell`] is dropped.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use nexus_channel::notify::VSOCK_DOORBELL_PORT;

/// A listening doorbell for one VM.
#[derive(Debug)]
pub struct VsockDoorbell {
    listener_path: PathBuf,
    host_end: Option<UnixStream>,
    /// Shut down to stop the relay.
    stop: UnixStream,
    thread: Option<JoinHandle<()>>,
    connections: Arc<AtomicU64>,
}

impl VsockDoorbell {
    /// Listens on `<vsock_socket>_<port>` and starts the relay; call before the guest runs.
    pub fn listen(vsock_socket: &Path) -> io::Result<VsockDoorbell> {
        let listener_path = guest_port_path(vsock_socket, VSOCK_DOORBELL_PORT);
        match std::fs::remove_file(&listener_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&listener_path)?;
        let (host_end, relay_end) = UnixStream::pair()?;
        let (stop, stopped) = UnixStream::pair()?;
        let connections = Arc::new(AtomicU64::new(0));
        let thread = thread::Builder::new().name("ch-doorbell".into()).spawn({
            let connections = connections.clone();
            move || relay(&listener, relay_end, &stopped, &connections)
        })?;
        Ok(VsockDoorbell {
            listener_path,
            host_end: Some(host_end),
            stop,
            thread: Some(thread),
            connections,
        })
    }

    /// The backend's end; `None` once taken.
    pub fn take_host_end(&mut self) -> Option<UnixStream> {
        self.host_end.take()
    }

    /// How many guest connections have arrived so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for VsockDoorbell {
    fn drop(&mut self) {
        let _ = self.stop.shutdown(std::net::Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.listener_path);
    }
}

/// Where CH delivers a guest's connection to host port `port`.
pub fn guest_port_path(vsock_socket: &Path, port: u32) -> PathBuf {
    let mut path = vsock_socket.as_os_str().to_owned();
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

/// Carries bytes between `relay_end` and the newest guest connection until `stopped` or the
/// backend's end closes.
fn relay(
    listener: &UnixListener,
    mut relay_end: UnixStream,
    stopped: &UnixStream,
    connections: &AtomicU64,
) {
    let mut guest: Option<UnixStream> = None;
    let mut buffer = [0u8; 256];
    loop {
        let mut fds = vec![
            pollin(stopped.as_raw_fd()),
            pollin(listener.as_raw_fd()),
            pollin(relay_end.as_raw_fd()),
        ];
        if let Some(stream) = &guest {
            fds.push(pollin(stream.as_raw_fd()));
        }
        // SAFETY: `fds` is a live array of valid pollfds whose length is passed with it.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ready < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::warn!("Doorbell relay: poll failed: {}", io::Error::last_os_error());
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        if fds[1].revents != 0 {
            if let Ok((stream, _)) = listener.accept() {
                connections.fetch_add(1, Ordering::Relaxed);
                guest = Some(stream);
                continue;
            }
        }
        if fds[2].revents != 0 {
            match relay_end.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if let Some(stream) = &mut guest {
                        if stream.write_all(&buffer[..n]).is_err() {
                            guest = None;
                        }
                    }
                }
            }
        }
        if fds.get(3).is_some_and(|fd| fd.revents != 0) {
            let stream = guest.as_mut().expect("polled only with a guest connection");
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => guest = None,
                // A full socket buffer already holds wake-ups; one more changes nothing.
                Ok(n) => {
                    let _ = relay_end.write(&buffer[..n]);
                }
            }
        }
    }
}

fn pollin(fd: RawFd) -> libc::pollfd {
    libc::pollfd { fd, events: libc::POLLIN, revents: 0 }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn read_byte(stream: &mut UnixStream) -> u8 {
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut byte = [0u8];
        stream.read_exact(&mut byte).unwrap();
        byte[0]
    }

    #[test]
    fn relays_both_ways_to_the_newest_guest_connection() {
        let dir = tempfile::tempdir().unwrap();
        let vsock = dir.path().join("vsock.sock");
        let mut doorbell = VsockDoorbell::listen(&vsock).unwrap();
        let mut host = doorbell.take_host_end().unwrap();
        assert!(doorbell.take_host_end().is_none());

        let port = guest_port_path(&vsock, VSOCK_DOORBELL_PORT);
        assert!(port.to_string_lossy().ends_with("vsock.sock_20056"));
        let mut first = UnixStream::connect(&port).unwrap();
        first.write_all(&[1]).unwrap();
        assert_eq!(read_byte(&mut host), 1);
        host.write_all(&[2]).unwrap();
        assert_eq!(read_byte(&mut first), 2);

        // A restored guest reconnects: the relay follows it.
        let mut second = UnixStream::connect(&port).unwrap();
        second.write_all(&[3]).unwrap();
        assert_eq!(read_byte(&mut host), 3);
        host.write_all(&[4]).unwrap();
        assert_eq!(read_byte(&mut second), 4);
        assert_eq!(doorbell.connections(), 2);

        drop(doorbell);
        assert!(!port.exists(), "the listener is removed");
    }

    #[test]
    fn the_relay_ends_when_the_backend_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut doorbell = VsockDoorbell::listen(&dir.path().join("v.sock")).unwrap();
        drop(doorbell.take_host_end());
        let thread = doorbell.thread.take().unwrap();
        thread.join().unwrap();
    }
}
