//! A network namespace the harness owns: a private network for conventional function VMs, torn
//! down with everything in it when dropped (also while a panic unwinds).
//!
//! ```text
//!  host namespace                    namespace NAME (`ip netns add`)
//!                                    lo up
//!  NetNs::run(f): a thread that      br0 10.200.0.1/24 ── tap0 ── VM 10.200.0.2
//!  setns()es into NAME runs f;           (the gateway)  └─ tap1 ── VM 10.200.0.3 …
//!  processes it spawns and sockets
//!  it opens live in NAME             nothing routes between NAME and the host
//! ```
//!
//! Taps are persistent (`ip tuntap add`), attached to the bridge and up; a VMM started from a
//! thread inside the namespace opens one by name. Dropping the `NetNs` runs `ip netns del`:
//! the namespace and its devices go once nothing inside holds it any more (the VMMs stopped,
//! the sockets closed). Namespaces are named `PREFIX-PID-N` ([`NetNs::for_this_run`]): those of
//! runs whose process is gone (killed before their drop) are removed when the next one starts.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// The bridge inside the namespace.
const BRIDGE: &str = "br0";
/// The bridge's address, the guests' gateway.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// The length of the namespace's network prefix.
pub const PREFIX_LEN: u8 = 24;
/// Where `ip netns` keeps the named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Errors setting up or entering the namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {stderr} (network namespaces need root and iproute2)")]
    Ip { args: String, stderr: String },
    /// A system call or file operation failed.
    #[error("Cannot {0}")]
    Io(String, #[source] io::Error),
    /// The namespace has no room for more guests.
    #[error("No address left in {GATEWAY}/{PREFIX_LEN} for tap {0}")]
    Full(usize),
}

/// A named network namespace with a bridge; removed on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    /// `/run/netns/NAME`, which threads join with setns(2).
    handle: File,
    taps: usize,
}

/// A tap device inside the namespace and the guest address that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    pub name: String,
    /// The MAC the guest's NIC gets (`52:54:00:c8:00:NN`, QEMU's prefix).
    pub mac: String,
    /// The guest's address, in the bridge's network.
    pub guest: Ipv4Addr,
}

impl Tap {
    /// `nexus.ip=` of the guest's kernel command line: its address and gateway.
    pub fn kernel_param(&self) -> String {
        format!("nexus.ip={}/{PREFIX_LEN},{GATEWAY}", self.guest)
    }
}

impl NetNs {
    /// Creates a namespace named `prefix-PID-N` for this process (its `N`th), after removing
    /// the `prefix-…` namespaces of processes that no longer exist.
    pub fn for_this_run(prefix: &str) -> Result<NetNs, NetnsError> {
        static CREATED: AtomicUsize = AtomicUsize::new(0);
        remove_stale(prefix)?;
        let n = CREATED.fetch_add(1, Ordering::Relaxed);
        NetNs::create(&format!("{prefix}-{}-{n}", std::process::id()))
    }

    /// Creates namespace `name` (removing a stale one of that name first) with `lo` up and the
    /// bridge at [`GATEWAY`].
    pub fn create(name: &str) -> Result<NetNs, NetnsError> {
        if NetNs::exists(name) {
            remove(name)?;
        }
        ip(&["netns", "add", name])?;
        // From here on, a failure removes the namespace through Drop.
        let path = Path::new(NETNS_DIR).join(name);
        let handle =
            File::open(&path).map_err(|e| NetnsError::Io(format!("open {}", path.display()), e))?;
        let netns = NetNs { name: name.to_owned(), handle, taps: 0 };
        netns.ip(&["link", "set", "lo", "up"])?;
        netns.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        netns.ip(&["addr", "add", &format!("{GATEWAY}/{PREFIX_LEN}"), "dev", BRIDGE])?;
        netns.ip(&["link", "set", BRIDGE, "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a namespace called `name` exists.
    pub fn exists(name: &str) -> bool {
        Path::new(NETNS_DIR).join(name).exists()
    }

    /// Adds a persistent tap on the bridge, up, with the next guest address.
    pub fn add_tap(&mut self) -> Result<Tap, NetnsError> {
        let index = self.taps;
        // .1 is the gateway; .255 the broadcast address.
        let host =
            u8::try_from(index + 2).ok().filter(|&h| h < 255).ok_or(NetnsError::Full(index))?;
        let tap = Tap {
            name: format!("tap{index}"),
            mac: format!("52:54:00:c8:00:{host:02x}"),
            guest: Ipv4Addr::new(10, 200, 0, host),
        };
        self.ip(&["tuntap", "add", "dev", &tap.name, "mode", "tap"])?;
        self.ip(&["link", "set", &tap.name, "master", BRIDGE, "up"])?;
        self.taps += 1;
        Ok(tap)
    }

    /// Runs `f` on a thread inside the namespace and returns what it returns: the processes it
    /// spawns, the threads it starts and the sockets it opens belong to the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        thread::scope(|scope| {
            let inside = scope.spawn(|| {
                // SAFETY: setns(2) on an open namespace file; it only moves this thread, which
                // ends when `f` returns.
                let entered = unsafe { libc::setns(self.handle.as_raw_fd(), libc::CLONE_NEWNET) };
                if entered != 0 {
                    let error = io::Error::last_os_error();
                    return Err(NetnsError::Io(
                        format!("enter network namespace {}", self.name),
                        error,
                    ));
                }
                Ok(f())
            });
            inside.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// `ip -n NAME ARGS…`.
    fn ip(&self, args: &[&str]) -> Result<(), NetnsError> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(error) = remove(&self.name) {
            eprintln!("netns: {error}");
        }
    }
}

/// Removes the namespaces `prefix-PID-…` whose process PID is gone.
fn remove_stale(prefix: &str) -> Result<(), NetnsError> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else { return Ok(()) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('-'));
        let pid = pid.and_then(|rest| rest.split('-').next()).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            remove(&name)?;
        }
    }
    Ok(())
}

/// `ip netns del NAME`; a namespace that another run's clean-up removed first is gone as asked
/// (tests of one binary start their platforms in parallel, each removing stale namespaces).
fn remove(name: &str) -> Result<(), NetnsError> {
    match ip(&["netns", "del", name]) {
        Err(_) if !NetNs::exists(name) => Ok(()),
        removed => removed,
    }
}

/// Runs `ip ARGS…`.
fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let failed = |stderr: String| NetnsError::Ip { args: args.join(" "), stderr };
    let output = Command::new("ip").args(args).output().map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        return Err(failed(String::from_utf8_lossy(&output.stderr).trim().to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn a_namespace_holds_its_bridge_taps_and_sockets_and_goes_on_drop() {
        if !is_root() {
            eprintln!("skipped: network namespaces need root");
            return;
        }
        // A namespace left by a killed run (no process has pid 2^22 + 1, above pid_max's
        // ceiling), one of the same name, and one of a live process.
        let prefix = "nexus-test-netns";
        let (stale, live) = (format!("{prefix}-4194305-0"), format!("{prefix}-1-0"));
        ip(&["netns", "add", &stale]).unwrap();
        ip(&["netns", "add", &live]).unwrap();
        let first = NetNs::for_this_run(prefix).unwrap();
        assert!(!NetNs::exists(&stale) && NetNs::exists(&live));
        ip(&["netns", "del", &live]).unwrap();
        let name = format!("{prefix}-{}-1", std::process::id());
        ip(&["netns", "add", &name]).unwrap();
        let mut netns = NetNs::for_this_run(prefix).unwrap();
        assert_eq!(
            (first.name(), netns.name()),
            (&*format!("{prefix}-{}-0", std::process::id()), &*name)
        );
        drop(first);
        let tap = netns.add_tap().unwrap();
        assert_eq!(tap.kernel_param(), "nexus.ip=10.200.0.2/24,10.200.0.1");
        assert_eq!(netns.add_tap().unwrap().guest, Ipv4Addr::new(10, 200, 0, 3));

        let listener = netns.run(|| TcpListener::bind((GATEWAY, 0))).unwrap().unwrap();
        let addr = listener.local_addr().unwrap();
        netns.run(|| TcpStream::connect(addr)).unwrap().expect("reachable inside");
        let outside = TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200));
        assert!(outside.is_err(), "the gateway is not reachable from the host");
        let links = Command::new("ip").args(["-n", &name, "-o", "link"]).output().unwrap();
        let links = String::from_utf8_lossy(&links.stdout);
        assert!(links.contains("tap0") && links.contains("master br0"), "{links}");

        drop(listener);
        drop(netns);
        assert!(!NetNs::exists(&name));
        assert!(ip(&["netns", "del", &name]).is_err());
        remove(&name).expect("removing a namespace that another clean-up removed first is done");
    }
}
