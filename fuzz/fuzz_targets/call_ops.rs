//! Fuzzes every operation a guest can call, end to end: a real backend (in-memory store, the
//! write-back spool on or off) serves a real region, and a guest end (`nexus_guest::Client`)
//! makes the input's calls one after another — any op code, flags, buffer, stream id and
//! lengths, any bucket, key, params JSON and body. Every call must be answered, within its
//! buffer, with JSON meta (an S3 error's `Code` when it failed); nothing may panic or hang.
//!
//! Input: one byte (bit 0: write-back on), then calls as [`nexus_fuzz::calls`] frames them.
//! Each input gets a backend of its own, so stream ids start at 1 and the store is empty.
#![no_main]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nexus_backend::backend::Backend;
use nexus_backend::config::Config;
use nexus_channel::notify::Kick;
use nexus_channel::wire::Status;
use nexus_fuzz::calls;
use nexus_guest::{Client, Reply, Request};

/// Most calls made for one input.
const MAX_CALLS: usize = 32;

/// What every input shares: the configuration, the runtime, the scratch directory.
struct Setup {
    config: Config,
    runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    spools: AtomicU64,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
        let dir = dir.expect("a scratch directory");
        let yaml = format!(
            r#"
api: {{ socket: {dir}/api.sock }}
storage: {{ url: "memory://" }}
region:
  {{ dir: {dir}/regions, size: 1MiB, buffer_size: 4KiB, ring_capacity: 4, host_buffers: 1,
    staging_size: 0, spin_us: 0 }}
functions:
  fuzz:
    policy:
      grants:
        - {{ bucket: bucket, access: [read, write, list, delete] }}
        - {{ bucket: other, prefix: "in/", access: [read, list] }}
      max_object_size: 64KiB
      requests_per_second: null
      invoke: [callee, fuzz]
"#,
            dir = dir.path().display()
        );
        let config = Config::parse(&yaml, "call_ops").expect("a valid configuration");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        Setup { config, runtime, dir, spools: AtomicU64::new(0) }
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, sequence)) = input.split_first() else { return };
    let setup = setup();
    let mut config = setup.config.clone();
    let spool =
        setup.dir.path().join(format!("spool-{}", setup.spools.fetch_add(1, Ordering::Relaxed)));
    config.writeback.enabled = mode & 1 == 1;
    config.writeback.dir = spool.clone();
    let backend = Backend::new(config, setup.runtime.handle().clone()).expect("a backend");
    let region = backend.create_region("fuzz").expect("a region");
    let client = Client::open_with(&region.path, Kick::Futex).expect("the guest end");
    for call in calls::decode(sequence).take(MAX_CALLS) {
        make(&client, &call);
    }
    drop(client);
    drop(backend);
    remove(spool);
});

/// Makes `call` as a guest would and checks the answer.
fn make(client: &Client, call: &calls::Call<'_>) {
    let geometry = *client.geometry();
    let buffer = u32::from(call.buffer);
    if geometry.is_guest_buffer(buffer) {
        let len = call.bytes.len().min(geometry.buffer_size as usize);
        client.write(buffer, 0, &call.bytes[..len]).expect("a guest buffer");
    }
    let request = Request {
        op: call.op.into(),
        flags: call.flags.into(),
        buffer,
        bucket_len: call.bucket_len.into(),
        key_len: call.key_len.into(),
        params_len: call.params_len.into(),
        body_len: call.body_len.into(),
        stream: call.stream.into(),
    };
    // The client checks that the completion is this call's and fits its buffer.
    let reply = client.call(&request).expect("an answer to every call");
    if geometry.is_guest_buffer(buffer) && reply.meta_len > 0 {
        check_meta(client, buffer, &reply);
    }
}

/// The meta of a reply is a JSON object; a failed call's names its S3 error code.
fn check_meta(client: &Client, buffer: u32, reply: &Reply) {
    let meta = client
        .read_in_place(buffer, 0, reply.meta_len as usize, |bytes| {
            serde_json::from_slice::<serde_json::Value>(bytes)
        })
        .expect("meta inside the buffer")
        .expect("JSON meta");
    assert!(meta.is_object(), "{meta}");
    if reply.status != Status::Ok as u32 {
        assert!(meta["Code"].as_str().is_some_and(|code| code != "OK"), "{meta}");
    }
}

/// Removes a spool directory once its backend is gone.
fn remove(spool: PathBuf) {
    if spool.exists() {
        std::fs::remove_dir_all(&spool).expect("the spool removed");
    }
}
