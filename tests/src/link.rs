//! A storage server at cloud distance: a TCP proxy (on loopback, or on any listener, such as
//! one inside a network namespace) that delays the first byte of each answer and paces each
//! connection's bytes, so that object storage behaves as it does across a data centre rather
//! than on loopback. (This kernel has no netem; `tbf` could pace bytes but not delay them.)
//! [`LinkProfile::DIRECT`] adds nothing: a plain forwarder.
//!
//! ```text
//!  client ──► proxy ──────────────────────────────► server        requests: paced
//!  client ◄── proxy ◄── hold first byte (sampled) ◄── server      answers: delayed, then paced
//! ```
//!
//! An *answer* is what the server sends after the client last sent something: its first chunk
//! waits for a latency drawn from a log-normal distribution (median and p99 of the profile);
//! every byte in either direction is paced to the profile's bandwidth per connection. HTTP/1.1
//! without pipelining (what S3 clients speak) makes that one delay per request. Each
//! connection's draws come from a seeded generator, so runs are comparable.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::HarnessError;
use crate::rng::Rng;

/// How far the server is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkProfile {
    /// Median time to an answer's first byte.
    pub median_latency: Duration,
    /// 99th percentile of that time.
    pub p99_latency: Duration,
    /// Bytes per second per connection, each direction.
    pub bytes_per_second: u64,
}

impl LinkProfile {
    /// Cloud object storage from a compute node in the same region, as published for S3:
    /// small requests answer in tens of ms at the median (AWS, "Best Practices Design Patterns:
    /// Optimizing Amazon S3 Performance", timeouts and retries) and 100–200 ms at the tail, and
    /// one connection carries about 85–90 MB/s (the same paper's guidance to parallelize, and
    /// single-connection measurements from EC2).
    pub const S3: LinkProfile = LinkProfile {
        median_latency: Duration::from_millis(30),
        p99_latency: Duration::from_millis(150),
        bytes_per_second: 88_000_000,
    };

    /// No latency and no pacing: the bytes go through as they come.
    pub const DIRECT: LinkProfile = LinkProfile {
        median_latency: Duration::ZERO,
        p99_latency: Duration::ZERO,
        bytes_per_second: u64::MAX,
    };

    /// One first-byte latency drawn from the log-normal distribution with this median and p99.
    fn sample_latency(&self, rng: &mut Rng) -> Duration {
        /// The standard normal quantile of 0.99.
        const Z99: f64 = 2.326_347_874;
        if self.median_latency.is_zero() {
            return Duration::ZERO;
        }
        let median = self.median_latency.as_secs_f64();
        let sigma = (self.p99_latency.as_secs_f64() / median).ln().max(0.0) / Z99;
        Duration::from_secs_f64(median * (sigma * rng.normal()).exp())
    }
}

/// A running proxy; when dropped it stops accepting and cuts the connections still open (a
/// client VM that was killed never closes its own).
#[derive(Debug)]
pub struct Link {
    /// Where clients connect instead of the server.
    pub addr: SocketAddr,
    pub profile: LinkProfile,
    stop: Arc<AtomicBool>,
    /// While set, answers wait before their next chunk ([`Link::hold`]).
    held: Arc<AtomicBool>,
    /// The listening socket, shut down to wake the accept loop.
    listener: TcpListener,
    open: Connections,
}

/// The client ends of the open connections, by number.
type Connections = Arc<Mutex<HashMap<usize, TcpStream>>>;

impl Link {
    /// Starts a proxy to `server` with `profile` on a loopback port; draws start from `seed`.
    pub fn start(
        server: SocketAddr,
        profile: LinkProfile,
        seed: u64,
    ) -> Result<Link, HarnessError> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(HarnessError::io("bind the link"))?;
        Link::start_on(listener, server, profile, seed)
    }

    /// Starts a proxy to `server` on `listener`, which may live in another network namespace:
    /// connections to `server` are made from the calling thread's.
    pub fn start_on(
        listener: TcpListener,
        server: SocketAddr,
        profile: LinkProfile,
        seed: u64,
    ) -> Result<Link, HarnessError> {
        let addr = listener.local_addr().map_err(HarnessError::io("read the link's address"))?;
        let (stop, held) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let open = Connections::default();
        let (accepting, registry, holding) = (stop.clone(), open.clone(), held.clone());
        let incoming = listener.try_clone().map_err(HarnessError::io("share the link's socket"))?;
        thread::Builder::new()
            .name("link-accept".into())
            .spawn(move || {
                for (n, client) in incoming.incoming().enumerate() {
                    if accepting.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let seed = seed.wrapping_add(n as u64);
                    let answers = Answers { profile, seed, held: holding.clone() };
                    if let Err(e) = Connection::spawn(client, server, answers, n, &registry) {
                        eprintln!("link: cannot reach {server}: {e}");
                    }
                }
            })
            .map_err(HarnessError::io("start the link"))?;
        Ok(Link { addr, profile, stop, held, listener, open })
    }

    /// Holds every answer back, from its next chunk on, until [`Link::release`]: storage that
    /// stalls, so that a test can see what waits for it.
    pub fn hold(&self) {
        self.held.store(true, Ordering::Release);
    }

    /// Lets held answers go on.
    pub fn release(&self) {
        self.held.store(false, Ordering::Release);
    }
}

/// How answers go on one connection: the link's profile, the connection's seed for its draws,
/// and whether the link holds them.
struct Answers {
    profile: LinkProfile,
    seed: u64,
    held: Arc<AtomicBool>,
}

/// How often a held answer looks whether it was released.
const HOLD_POLL: Duration = Duration::from_millis(5);

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // SAFETY: shutdown(2) on a socket this Link owns; it wakes the accept loop (EINVAL),
        // which then sees the flag.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        for stream in self.open.lock().unwrap_or_else(PoisonError::into_inner).values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// One proxied connection: a thread per direction.
struct Connection;

impl Connection {
    fn spawn(
        client: TcpStream,
        server: SocketAddr,
        answers: Answers,
        number: usize,
        open: &Connections,
    ) -> io::Result<()> {
        let Answers { profile, seed, held } = answers;
        let upstream = TcpStream::connect(server)?;
        for stream in [&client, &upstream] {
            stream.set_nodelay(true)?;
        }
        open.lock().unwrap_or_else(PoisonError::into_inner).insert(number, client.try_clone()?);
        let open = open.clone();
        // Bumped by each request chunk; an answer chunk that sees it moved starts an answer.
        let requests = Arc::new(AtomicU64::new(0));
        let (client_in, upstream_out) = (client.try_clone()?, upstream.try_clone()?);
        let sent = requests.clone();
        thread::spawn(move || {
            let mut pace = Pacer::new(profile.bytes_per_second);
            copy(
                client_in,
                upstream_out,
                |_| {
                    sent.fetch_add(1, Ordering::Release);
                    None
                },
                &mut pace,
            );
        });
        thread::spawn(move || {
            let mut rng = Rng(seed);
            let mut pace = Pacer::new(profile.bytes_per_second);
            let mut answered = 0;
            copy(
                upstream,
                client,
                |pace: &mut Pacer| {
                    while held.load(Ordering::Acquire) {
                        thread::sleep(HOLD_POLL);
                    }
                    let now = requests.load(Ordering::Acquire);
                    if now == answered {
                        return None;
                    }
                    answered = now;
                    let hold = profile.sample_latency(&mut rng);
                    pace.restart_after(hold);
                    Some(hold)
                },
                &mut pace,
            );
            // The server is gone: so is the client's request direction (a client that died
            // silently would hold it open forever).
            let client = open.lock().unwrap_or_else(PoisonError::into_inner).remove(&number);
            if let Some(client) = client {
                let _ = client.shutdown(Shutdown::Both);
            }
        });
        Ok(())
    }
}

/// Copies `from` to `to` until either ends; `before_chunk` may ask to hold a chunk back first.
fn copy(
    mut from: TcpStream,
    mut to: TcpStream,
    mut before_chunk: impl FnMut(&mut Pacer) -> Option<Duration>,
    pace: &mut Pacer,
) {
    let mut chunk = vec![0; 64 << 10];
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(hold) = before_chunk(pace) {
            thread::sleep(hold);
        }
        // Paced in slices so that a large chunk does not arrive in one burst.
        for slice in chunk[..n].chunks(PACE_SLICE) {
            pace.wait_for(slice.len());
            if to.write_all(slice).is_err() {
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Bytes written at a time between pacing waits.
const PACE_SLICE: usize = 16 << 10;

/// Paces a byte stream to a rate: a burst starts on the clock, and each write waits until the
/// bytes sent so far in the burst are due.
struct Pacer {
    bytes_per_second: f64,
    burst_start: Instant,
    burst_bytes: u64,
}

impl Pacer {
    fn new(bytes_per_second: u64) -> Self {
        Pacer {
            bytes_per_second: bytes_per_second as f64,
            burst_start: Instant::now(),
            burst_bytes: 0,
        }
    }

    /// A new burst starts once `hold` has passed (the first byte of an answer).
    fn restart_after(&mut self, hold: Duration) {
        self.burst_start = Instant::now() + hold;
        self.burst_bytes = 0;
    }

    /// Waits until `len` more bytes may go. An idle stream does not bank credit: a burst that
    /// fell behind the clock by more than a slice's time restarts from now.
    fn wait_for(&mut self, len: usize) {
        let due = self.burst_start
            + Duration::from_secs_f64(self.burst_bytes as f64 / self.bytes_per_second);
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        } else if now - due > Duration::from_secs_f64(PACE_SLICE as f64 / self.bytes_per_second) {
            self.burst_start = now;
            self.burst_bytes = 0;
        }
        self.burst_bytes += len as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers each byte it reads with `answer` bytes.
    fn server(answer: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0; 1];
            while stream.read_exact(&mut request).is_ok() {
                stream.write_all(&vec![request[0]; answer]).unwrap();
            }
        });
        addr
    }

    #[test]
    fn every_answer_waits_for_its_latency_and_arrives_at_the_link_rate() {
        let fixed = Duration::from_millis(50);
        let profile =
            LinkProfile { median_latency: fixed, p99_latency: fixed, bytes_per_second: 10_000_000 };
        let answer = 1_000_000;
        let link = Link::start(server(answer), profile, 1).unwrap();
        let mut client = TcpStream::connect(link.addr).unwrap();
        // At least the latency, then the bytes at 10 MB/s, for each answer: 50 ms + 100 ms, less
        // the last slice's 1.6 ms (a slice waits for the bytes before it, then goes at once).
        let paced = (answer - PACE_SLICE) as f64 / profile.bytes_per_second as f64;
        let least = fixed + Duration::from_secs_f64(paced);
        for request in [b'a', b'b'] {
            let started = Instant::now();
            client.write_all(&[request]).unwrap();
            let mut body = vec![0; answer];
            client.read_exact(&mut body).unwrap();
            let took = started.elapsed();
            assert!(body.iter().all(|&b| b == request), "the bytes arrive intact");
            assert!(took >= least, "answer {} came in {took:?}", request as char);
        }
    }

    #[test]
    fn a_direct_link_forwards_at_once_and_a_dropped_link_cuts_its_connections() {
        let link = Link::start(server(3), LinkProfile::DIRECT, 1).unwrap();
        let mut client = TcpStream::connect(link.addr).unwrap();
        let started = Instant::now();
        client.write_all(b"x").unwrap();
        let mut answer = [0; 3];
        client.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"xxx");
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
        drop(link);
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(client.read(&mut answer).unwrap(), 0, "cut: end of stream");
    }

    #[test]
    fn a_held_link_answers_only_once_released() {
        let link = Link::start(server(2), LinkProfile::DIRECT, 1).unwrap();
        let mut client = TcpStream::connect(link.addr).unwrap();
        link.hold();
        client.write_all(b"h").unwrap();
        client.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut answer = [0; 2];
        let held = client.read(&mut answer).unwrap_err();
        assert_eq!(held.kind(), io::ErrorKind::WouldBlock, "nothing comes while held");
        link.release();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        client.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"hh");
    }

    #[test]
    fn latencies_follow_the_profile() {
        let mut rng = Rng(7);
        let mut samples: Vec<f64> =
            (0..20_000).map(|_| LinkProfile::S3.sample_latency(&mut rng).as_secs_f64()).collect();
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[(q * samples.len() as f64) as usize];
        assert!((at(0.5) - 0.030).abs() < 0.002, "median {}", at(0.5));
        assert!((at(0.99) - 0.150).abs() < 0.015, "p99 {}", at(0.99));
    }
}
