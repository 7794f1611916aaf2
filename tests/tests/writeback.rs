//! Write-back against a real Garage and real backend processes: a put is acknowledged once it
//! is durable in the backend's spool, reaches Garage in the background, and is never lost —
//! not when the backend is killed (SIGKILL) before the upload, not when Garage is down.
//!
//! The guests are Rust guests (`nexus_guest::Client`) on regions of the backend. A backend
//! killed with SIGKILL never tells its guests; the test does it for the dead host (host state
//! `GONE` and a doorbell ring), as the VMM adapter would.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use nexus_channel::layout::{header, host_state};
use nexus_channel::notify::Side;
use nexus_channel::wire::{Op, Status};
use nexus_channel::{Notifier, Region};
use nexus_guest::{Client, ClientError, Request};
use nexus_tests::{nexus_binary, Backend, Garage, Rng};
use object_store::aws::AmazonS3;
use object_store::path::Path as StorePath;
use object_store::{Attribute, ObjectStoreExt};
use serde_json::Value;

const BUCKET: &str = "writeback";
/// How long the backend may take to get a backlog into a Garage that is up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Backend settings: S3 storage on `garage`, no cache (every read is a real read), full access
/// to the bucket for every function, `careful` in strict mode.
fn settings(garage: &Garage) -> String {
    format!(
        r#"
{storage}cache: {{ max_bytes: 0, max_object_bytes: 0 }}
default_policy:
  grants: [{{ bucket: {BUCKET}, access: [read, write, list, delete] }}]
functions:
  careful:
    write_back: strict
    policy:
      grants: [{{ bucket: {BUCKET}, access: [read, write, list, delete] }}]
"#,
        storage = garage.storage_settings(),
    )
}

fn garage_with_bucket() -> Garage {
    let garage = Garage::start().unwrap_or_else(|e| panic!("{e}"));
    garage.create_bucket(BUCKET).unwrap_or_else(|e| panic!("{e}"));
    garage
}

fn start_backend(garage: &Garage) -> Backend {
    Backend::start(&nexus_binary(), &settings(garage), &[]).unwrap_or_else(|e| panic!("{e}"))
}

/// Garage seen by a plain S3 client.
struct Store {
    client: AmazonS3,
    runtime: tokio::runtime::Runtime,
}

/// An object as Garage holds it.
#[derive(Debug, PartialEq)]
struct Stored {
    bytes: Vec<u8>,
    etag: Option<String>,
    content_type: Option<String>,
    metadata: Vec<(String, String)>,
}

impl Store {
    fn new(garage: &Garage) -> Self {
        let client = garage.client(BUCKET);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Self { client, runtime }
    }

    /// `key` in Garage, or `None`.
    fn get(&self, key: &str) -> Option<Stored> {
        self.runtime.block_on(async {
            let got = match self.client.get(&StorePath::from(key)).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return None,
                Err(e) => panic!("GET {key} from Garage: {e}"),
            };
            let mut content_type = None;
            let mut metadata = Vec::new();
            for (attribute, value) in got.attributes.iter() {
                match attribute {
                    Attribute::ContentType => content_type = Some(value.to_string()),
                    Attribute::Metadata(name) => {
                        metadata.push((name.to_string(), value.to_string()))
                    }
                    _ => {}
                }
            }
            metadata.sort();
            let etag = got.meta.e_tag.clone().map(|e| e.trim_matches('"').to_owned());
            let bytes = got.bytes().await.expect("object body").to_vec();
            Some(Stored { bytes, etag, content_type, metadata })
        })
    }

    /// Polls until `key` is in Garage.
    fn wait_for(&self, key: &str, backend: &Backend) -> Stored {
        let start = Instant::now();
        loop {
            if let Some(stored) = self.get(key) {
                return stored;
            }
            assert!(
                start.elapsed() < DRAIN_TIMEOUT,
                "{key} never reached Garage; backend log:\n{}",
                backend.log_tail()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// MD5 of `bytes` in hex: what S3 makes the ETag of a single-part PUT.
fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `len` deterministic bytes for object `n` (a period of 251, a prime, shifted by `n`).
fn contents(n: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i + n * 7) % 251) as u8).collect()
}

/// What a kill leaves undone: tells the guests of `region` that their host is gone.
fn host_died(region: &Path) {
    let (region, _) = Region::open(region).expect("map the dead backend's region");
    let region = Arc::new(region);
    region.store_u32(header::HOST_STATE, host_state::GONE).expect("host state");
    Notifier::new(region, Side::Host, Duration::ZERO).notify_peer().expect("ring the guest");
}

/// A call whose request and reply fit one buffer: `(status, meta, body)`.
fn call(
    client: &Client,
    op: Op,
    key: &str,
    params: &str,
    body: &[u8],
) -> Result<(Status, Value, Vec<u8>), ClientError> {
    let (buffer, _) = client.lease()?;
    let result = (|| {
        let mut at = 0;
        for part in [BUCKET.as_bytes(), key.as_bytes(), params.as_bytes(), body] {
            client.write(buffer, at, part)?;
            at += part.len();
        }
        let request = Request {
            op: op as u16,
            buffer,
            bucket_len: BUCKET.len() as u16,
            key_len: key.len() as u16,
            params_len: params.len() as u32,
            body_len: body.len() as u64,
            ..Request::default()
        };
        let reply = client.call(&request)?;
        let meta_len = reply.meta_len as usize;
        let meta = client.read_in_place(buffer, 0, meta_len, |m| {
            if m.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(m).expect("meta JSON")
            }
        })?;
        let body =
            client.read_in_place(buffer, meta_len, reply.body_len as usize, <[u8]>::to_vec)?;
        let status = [Status::Ok, Status::NoSuchKey, Status::InternalError, Status::AccessDenied]
            .into_iter()
            .find(|s| *s as u32 == reply.status)
            .unwrap_or(Status::InvalidRequest);
        Ok((status, meta, body))
    })();
    client.release(buffer)?;
    result
}

/// Reads `key` through the backend, whole.
fn read(client: &Client, key: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    client
        .get_object(BUCKET, key, |chunk| bytes.extend_from_slice(chunk))
        .unwrap_or_else(|e| panic!("get {key}: {e}"));
    bytes
}

/// Polls the backend's metric `name{labels}` until `done` holds for its value.
fn wait_metric(backend: &Backend, name: &str, labels: &[&str], done: impl Fn(f64) -> bool) -> f64 {
    let start = Instant::now();
    loop {
        let value = backend.metric(name, labels).unwrap_or_else(|e| panic!("{e}"));
        if done(value) {
            return value;
        }
        assert!(
            start.elapsed() < DRAIN_TIMEOUT,
            "{name}{labels:?} stuck at {value}; backend log:\n{}",
            backend.log_tail()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Kill -9 between a put's acknowledgement and its upload (Garage is down, so the upload
/// cannot happen first): the restarted backend replays its spool and the object arrives.
#[test]
fn a_put_acknowledged_before_a_kill_reaches_the_store_after_a_restart() {
    let mut garage = garage_with_bucket();
    let store = Store::new(&garage);
    let mut backend = start_backend(&garage);
    let region = backend.create_region("writer").unwrap();
    let client = Client::open(&region).unwrap();
    garage.stop();

    let body = contents(1, 1_500_000); // more than a 1 MiB buffer: a chunked put
    let etag = client.put_object(BUCKET, "survivor.bin", &body).expect("acknowledged");
    assert_eq!(etag, format!("\"{}\"", md5_hex(&body)), "a single-part PUT's ETag");
    assert!(read(&client, "survivor.bin") == body, "read-your-writes from the spool");

    backend.kill();
    host_died(&region);
    garage.restart().unwrap_or_else(|e| panic!("{e}"));
    assert!(store.get("survivor.bin").is_none(), "uploaded before the backend died?");

    backend.restart().unwrap_or_else(|e| panic!("{e}"));
    let stored = store.wait_for("survivor.bin", &backend);
    assert!(stored.bytes == body, "stored bytes differ");
    assert_eq!(stored.etag.as_deref(), Some(md5_hex(&body).as_str()), "stored ETag");
    let log = backend.log();
    assert!(log.contains("entries ("), "no replay in the log:\n{log}");
    backend.wait_uploaded(DRAIN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
}

/// The store down during write-back: puts are acknowledged, uploads retry with backoff, the
/// backlog shows in /metrics and the log, survives a clean restart, and drains once the store
/// is back.
#[test]
fn uploads_retry_while_the_store_is_down_and_drain_when_it_returns() {
    const OBJECTS: usize = 20;
    let mut garage = garage_with_bucket();
    let store = Store::new(&garage);
    let mut backend = start_backend(&garage);
    let client = Client::open(&backend.create_region("writer").unwrap()).unwrap();
    garage.stop();

    let bodies: Vec<Vec<u8>> = (0..OBJECTS).map(|n| contents(n, 1000 + n * 4000)).collect();
    for (n, body) in bodies.iter().enumerate() {
        client.put_object(BUCKET, &format!("down/{n}"), body).expect("acknowledged");
    }
    let total: usize = bodies.iter().map(Vec::len).sum();
    wait_metric(&backend, "nexus_writeback_uploads_total", &["outcome=\"retry\""], |n| n >= 3.0);
    let objects = backend.metric("nexus_writeback_backlog_objects", &[]).unwrap();
    let bytes = backend.metric("nexus_writeback_backlog_bytes", &[]).unwrap();
    assert_eq!(objects, OBJECTS as f64, "backlog objects");
    assert_eq!(bytes, total as f64, "backlog bytes");
    assert!(backend.log().contains("Store failed"), "no warning:\n{}", backend.log_tail());
    for (n, body) in bodies.iter().enumerate() {
        assert!(read(&client, &format!("down/{n}")) == *body, "down/{n} from the spool");
    }
    // A clean stop while the store is down leaves the backlog for the next start.
    drop(client);
    assert!(backend.stop(), "the backend did not stop cleanly:\n{}", backend.log_tail());
    backend.restart().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(backend.metric("nexus_writeback_backlog_objects", &[]).unwrap(), OBJECTS as f64);
    let client = Client::open(&backend.create_region("reader").unwrap()).unwrap();
    assert!(read(&client, "down/7") == bodies[7], "down/7 from the spool after a restart");

    garage.restart().unwrap_or_else(|e| panic!("{e}"));
    backend.wait_uploaded(DRAIN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(backend.metric("nexus_writeback_backlog_bytes", &[]).unwrap(), 0.0);
    let ok = backend.metric("nexus_writeback_uploads_total", &["outcome=\"ok\""]).unwrap();
    assert_eq!(ok, OBJECTS as f64, "each object uploaded once");
    for (n, body) in bodies.iter().enumerate() {
        let stored = store.get(&format!("down/{n}")).expect("in Garage");
        assert!(stored.bytes == *body, "down/{n}: stored bytes differ");
    }
    assert!(backend.log().contains("Store recovered"), "no recovery:\n{}", backend.log_tail());
}

/// Puts acknowledged before the test stops the writer.
const ACKNOWLEDGED: usize = 200;
/// Backend kills, at random moments while the writer puts.
const KILLS: usize = 6;

/// Object `n`'s size: mostly small, every seventh larger than a buffer (a chunked put).
fn size_of(n: usize) -> usize {
    if n % 7 == 3 {
        1_200_000 + n * 10
    } else {
        (n * 997) % 20_000
    }
}

/// Puts objects `kill/0`, `kill/1`, ... until `stop`, moving to the next region whenever the
/// backend dies; returns the numbers of the acknowledged puts.
fn writer(
    regions: mpsc::Receiver<std::path::PathBuf>,
    stop: &AtomicBool,
    acked: &Mutex<Vec<usize>>,
) {
    let Ok(first) = regions.recv() else { return };
    let mut client = Client::open(&first).expect("map the region");
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let body = contents(n, size_of(n));
        match client.put_object(BUCKET, &format!("kill/{n}"), &body) {
            Ok(etag) => {
                assert_eq!(etag, format!("\"{}\"", md5_hex(&body)), "kill/{n}");
                acked.lock().unwrap().push(n);
            }
            Err(ClientError::BackendGone(_)) => {
                // Not acknowledged: it may or may not be stored. On to the restarted backend.
                let Ok(next) = regions.recv() else { return };
                client = Client::open(&next).expect("map the new region");
            }
            Err(e) => panic!("kill/{n}: {e}"),
        }
    }
}

/// At least 200 acknowledged puts with the backend killed (SIGKILL) at random moments:
/// every acknowledged put ends up in Garage with its bytes.
#[test]
fn every_acknowledged_put_survives_random_kills() {
    let garage = garage_with_bucket();
    let store = Store::new(&garage);
    let mut backend = start_backend(&garage);
    let mut rng = Rng(0x5eed_0fc0_ffee);
    let (regions, incoming) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writing = {
        let (stop, acked) = (stop.clone(), acked.clone());
        thread::spawn(move || writer(incoming, &stop, &acked))
    };
    let started = Instant::now();
    let mut region = backend.create_region("writer-0").unwrap();
    regions.send(region.clone()).unwrap();
    for round in 1..=KILLS {
        let target = ACKNOWLEDGED * round / (KILLS + 1);
        while acked.lock().unwrap().len() < target {
            assert!(!writing.is_finished(), "the writer stopped");
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(Duration::from_millis(rng.below(300)));
        backend.kill();
        host_died(&region);
        backend.restart().unwrap_or_else(|e| panic!("{e}"));
        region = backend.create_region(&format!("writer-{round}")).unwrap();
        regions.send(region.clone()).unwrap();
    }
    while acked.lock().unwrap().len() < ACKNOWLEDGED {
        assert!(!writing.is_finished(), "the writer stopped");
        thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    writing.join().expect("the writer saw a wrong answer");
    let acked = acked.lock().unwrap().clone();
    let replays = backend.log().lines().filter(|l| l.contains("left to upload")).count();
    eprintln!(
        "{} puts acknowledged across {KILLS} kills in {:?}; {replays} restarts had a backlog",
        acked.len(),
        started.elapsed()
    );

    backend.wait_uploaded(DRAIN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let mut missing = Vec::new();
    for &n in &acked {
        match store.get(&format!("kill/{n}")) {
            Some(stored) if stored.bytes == contents(n, size_of(n)) => {}
            Some(_) => missing.push(format!("kill/{n} (wrong bytes)")),
            None => missing.push(format!("kill/{n}")),
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged puts lost: {missing:?}\nbackend log:\n{}",
        missing.len(),
        backend.log_tail()
    );
}

/// A `Head`, `Get` and ranged `Get` answered from the spool say what the store says once it
/// has the object; a spooled delete answers NoSuchKey; puts and deletes of one key keep
/// their order; a strict function's put completes only once the object is in the store.
#[test]
fn the_spool_answers_reads_as_the_store_will_and_strict_puts_wait() {
    let mut garage = garage_with_bucket();
    let store = Store::new(&garage);
    let backend = start_backend(&garage);
    let client = Client::open(&backend.create_region("reader").unwrap()).unwrap();
    let careful = Client::open(&backend.create_region("careful").unwrap()).unwrap();
    garage.stop();

    let params = r#"{"ContentType":"text/plain; charset=utf-8","Metadata":{"Author":"probe"}}"#;
    let body = contents(3, 5000);
    for (key, params) in [("attrs.txt", params), ("plain.bin", "{}")] {
        let (status, _, _) = call(&client, Op::Put, key, params, &body).unwrap();
        assert_eq!(status, Status::Ok, "put {key}");
    }
    let reads = |key: &str| {
        let head = call(&client, Op::Head, key, "", &[]).unwrap();
        let ranged = call(&client, Op::Get, key, r#"{"Range":"bytes=10-99"}"#, &[]).unwrap();
        (head, ranged)
    };
    let spooled = [reads("attrs.txt"), reads("plain.bin")];

    // Ordering: put, put, delete of one key; and delete then put of another.
    client.put_object(BUCKET, "gone", b"one").unwrap();
    client.put_object(BUCKET, "gone", b"two").unwrap();
    let (status, _, _) = call(&client, Op::Delete, "gone", "", &[]).unwrap();
    assert_eq!(status, Status::Ok);
    let (status, meta, _) = call(&client, Op::Get, "gone", "{}", &[]).unwrap();
    assert_eq!((status, meta["Code"].as_str()), (Status::NoSuchKey, Some("NoSuchKey")));
    let (status, _, _) = call(&client, Op::Delete, "back", "", &[]).unwrap();
    assert_eq!(status, Status::Ok);
    client.put_object(BUCKET, "back", b"again").unwrap();

    // A strict put waits for the store.
    let strict = thread::spawn(move || careful.put_object(BUCKET, "strict.bin", b"careful"));
    thread::sleep(Duration::from_millis(1500));
    assert!(!strict.is_finished(), "a strict put completed while the store was down");

    garage.restart().unwrap_or_else(|e| panic!("{e}"));
    let etag = strict.join().unwrap().expect("strict put");
    let stored = store.get("strict.bin").expect("a completed strict put is in the store");
    assert_eq!(etag, format!("\"{}\"", stored.etag.unwrap()));
    backend.wait_uploaded(DRAIN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(store.get("gone").is_none(), "an older put undid the delete");
    assert_eq!(store.get("back").map(|s| s.bytes), Some(b"again".to_vec()));

    let uploaded = [reads("attrs.txt"), reads("plain.bin")];
    for ((before, after), key) in spooled.iter().zip(&uploaded).zip(["attrs.txt", "plain.bin"]) {
        let strip = |(status, mut meta, body): (Status, Value, Vec<u8>)| {
            meta.as_object_mut().unwrap().remove("LastModified");
            (status, meta, body)
        };
        assert_eq!(strip(before.0.clone()), strip(after.0.clone()), "Head {key}");
        assert_eq!(strip(before.1.clone()), strip(after.1.clone()), "ranged Get {key}");
    }
    let stored = store.get("attrs.txt").unwrap();
    assert_eq!(stored.content_type.as_deref(), Some("text/plain; charset=utf-8"));
    assert_eq!(stored.metadata, vec![("author".to_owned(), "probe".to_owned())]);
    assert_eq!(stored.etag, Some(md5_hex(&body)));
}
