//! The spool against real files and an in-memory store: durability across a restart, replay,
//! ordering of puts and deletes, strict puts.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use nexus_channel::wire::{ObjectRef, PutParams};
use object_store::path::Path as StorePath;
use object_store::ObjectStoreExt;

use super::*;
use crate::cache::ObjectCache;
use crate::config::{CacheConfig, FunctionConfig, StorageConfig, WritebackConfig};

/// A spool in `dir` over `storage`, without uploaders; every function async but `careful`.
fn open(dir: &Path, storage: &Arc<Storage>) -> Result<Spool, SpoolError> {
    open_with(&config(dir, "memory://"), storage)
}

fn open_with(config: &Config, storage: &Arc<Storage>) -> Result<Spool, SpoolError> {
    let cache = Arc::new(ObjectCache::new(&CacheConfig::default()));
    Spool::open_as(config, storage.clone(), cache, &Metrics::new(), false)
}

fn config(dir: &Path, url: &str) -> Config {
    let strict = FunctionConfig { write_back: WriteBack::Strict, ..FunctionConfig::default() };
    Config {
        storage: StorageConfig { url: url.into(), ..Default::default() },
        writeback: WritebackConfig { dir: dir.to_owned(), ..WritebackConfig::default() },
        functions: [("careful".to_owned(), strict)].into(),
        ..Config::default()
    }
}

fn memory() -> Arc<Storage> {
    let config = StorageConfig { url: "memory://".into(), ..Default::default() };
    Arc::new(Storage::new(&config).unwrap())
}

fn object(key: &str) -> ObjectRef {
    ObjectRef { bucket: "b".into(), key: key.into() }
}

/// Puts `body` as `key` through the spool, in chunks of 3 bytes; the ETag.
async fn put(spool: &Spool, key: &str, body: &[u8], function: &str) -> String {
    let params = PutParams {
        content_type: Some("text/plain".into()),
        metadata: [("Owner".to_owned(), "tests".to_owned())].into(),
    };
    let mut writer = spool.writer(&object(key), &params, function).unwrap();
    for chunk in body.chunks(3) {
        writer.append(chunk.to_vec()).await.unwrap();
    }
    writer.commit().await.unwrap().etag
}

/// Uploads everything queued, one entry at a time.
async fn drain(spool: &Spool) {
    loop {
        let job = spool.inner.queue().next();
        match job {
            Some(job) => uploader::upload(&spool.inner, job).await,
            None => return,
        }
    }
}

async fn stored(storage: &Storage, key: &str) -> Option<Bytes> {
    let store = storage.bucket("b").unwrap();
    match store.get(&StorePath::from(key)).await {
        Ok(got) => Some(got.bytes().await.unwrap()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("{e}"),
    }
}

fn files(dir: &Path, suffix: &str) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .filter(|f| f.as_ref().unwrap().file_name().to_string_lossy().ends_with(suffix))
        .count()
}

fn body(spooled: Option<Spooled>) -> Option<Bytes> {
    match spooled? {
        Spooled::Object { body, .. } => Some(body),
        Spooled::Deleted => None,
    }
}

#[tokio::test]
async fn acknowledged_puts_survive_a_restart_and_torn_temp_files_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let storage = memory();
    let spool = open(dir.path(), &storage).unwrap();
    assert!(matches!(open(dir.path(), &storage), Err(SpoolError::Locked(_))));
    let etag = put(&spool, "a/one", b"hello, spool", "f").await;
    assert_eq!(etag, entry::hex(&<md5::Md5 as md5::Digest>::digest(b"hello, spool")));
    put(&spool, "a/two", b"", "f").await;
    // A put cut short (the process died while it was written) leaves a temp file.
    fs::write(dir.path().join(entry::temp_name(1)), b"half a bo").unwrap();
    let aborted = spool.writer(&object("a/three"), &PutParams::default(), "f").unwrap();
    drop(aborted);
    assert_eq!(files(dir.path(), ".tmp"), 1, "a dropped writer cleans up");
    drop(spool);

    let spool = open(dir.path(), &storage).unwrap();
    assert_eq!(files(dir.path(), ".tmp"), 0, "temp files are never acknowledged");
    assert_eq!(spool.backlog(), (2, 12));
    let read = spool.view("b", "a/one").unwrap();
    let Some(Spooled::Object { record, body }) = read else { panic!("{read:?}") };
    assert_eq!(&body[..], b"hello, spool");
    assert_eq!(record.md5, etag);
    assert_eq!(record.content_type.as_deref(), Some("text/plain"));
    assert!(stored(&storage, "a/one").await.is_none(), "nothing uploaded yet");

    drain(&spool).await;
    assert_eq!(stored(&storage, "a/one").await.as_deref(), Some(&b"hello, spool"[..]));
    assert_eq!(stored(&storage, "a/two").await.as_deref(), Some(&b""[..]));
    assert_eq!(spool.backlog(), (0, 0));
    assert!(spool.view("b", "a/one").unwrap().is_none());
    assert_eq!(files(dir.path(), ".entry"), 0);
}

#[tokio::test]
async fn put_put_delete_of_one_key_ends_deleted_and_put_put_ends_with_the_second() {
    let dir = tempfile::tempdir().unwrap();
    let storage = memory();
    let spool = open(dir.path(), &storage).unwrap();
    put(&spool, "k", b"first", "f").await;
    drain(&spool).await;
    put(&spool, "k", b"second", "f").await;
    put(&spool, "k", b"third", "f").await;
    assert_eq!(body(spool.view("b", "k").unwrap()).as_deref(), Some(&b"third"[..]));
    spool.delete(&object("k"), "f").await.unwrap();
    assert!(matches!(spool.view("b", "k").unwrap(), Some(Spooled::Deleted)));
    assert_eq!(spool.backlog(), (1, 0), "the tombstone supersedes both puts");
    assert_eq!(files(dir.path(), ".entry"), 3, "superseded files go only with the tombstone");
    assert_eq!(stored(&storage, "k").await.as_deref(), Some(&b"first"[..]));
    drain(&spool).await;
    assert!(stored(&storage, "k").await.is_none());
    assert_eq!(files(dir.path(), ".entry"), 0);

    put(&spool, "k", b"again", "f").await;
    put(&spool, "k", b"and again", "f").await;
    drop(spool);
    // A replay sees both entries and uploads only the newer one.
    let spool = open(dir.path(), &storage).unwrap();
    assert_eq!(spool.backlog(), (1, 9));
    drain(&spool).await;
    assert_eq!(stored(&storage, "k").await.as_deref(), Some(&b"and again"[..]));
    assert_eq!(files(dir.path(), ".entry"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_put_completes_once_stored() {
    let dir = tempfile::tempdir().unwrap();
    let storage = memory();
    let cache = Arc::new(ObjectCache::new(&CacheConfig::default()));
    let config = config(dir.path(), "memory://");
    let spool =
        Spool::start(&config, storage.clone(), cache, &Metrics::new(), &Handle::current()).unwrap();
    assert!(spool.is_strict("careful") && spool.is_strict("anyone"), "memory ETags: all strict");
    put(&spool, "s", b"strict", "careful").await;
    assert_eq!(stored(&storage, "s").await.as_deref(), Some(&b"strict"[..]));
    assert_eq!(spool.backlog(), (0, 0));
    spool.delete(&object("s"), "careful").await.unwrap();
    assert!(stored(&storage, "s").await.is_none());
    spool.stop();
}

#[tokio::test]
async fn a_spool_with_entries_for_another_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let storage = memory();
    let spool = open(dir.path(), &storage).unwrap();
    put(&spool, "k", b"for memory", "f").await;
    drop(spool);
    let cache = Arc::new(ObjectCache::new(&CacheConfig::default()));
    let other = config(dir.path(), "memory://elsewhere");
    let refused = Spool::open_as(&other, storage.clone(), cache.clone(), &Metrics::new(), false);
    let Err(SpoolError::OtherStore { entries: 1, store, .. }) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(store, "memory://");
    // Once drained, the spool can serve another store.
    let spool = open(dir.path(), &storage).unwrap();
    drain(&spool).await;
    drop(spool);
    Spool::open_as(&other, storage, cache, &Metrics::new(), false).unwrap();
}

#[tokio::test]
async fn a_damaged_entry_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let storage = memory();
    let spool = open(dir.path(), &storage).unwrap();
    put(&spool, "k", b"fine", "f").await;
    drop(spool);
    let entry = dir.path().join(
        fs::read_dir(dir.path())
            .unwrap()
            .find_map(|f| {
                let name = f.unwrap().file_name().into_string().unwrap();
                name.ends_with(".entry").then_some(name)
            })
            .unwrap(),
    );
    let mut bytes = fs::read(&entry).unwrap();
    bytes[0] = b'F';
    fs::write(&entry, &bytes).unwrap();
    let spool = open(dir.path(), &storage).unwrap();
    drain(&spool).await;
    assert!(stored(&storage, "k").await.is_none(), "bytes that differ are never uploaded");
    assert_eq!(files(dir.path(), ".corrupt"), 1);
    bytes.truncate(3);
    fs::write(&entry, &bytes).unwrap();
    drop(spool);
    open(dir.path(), &storage).unwrap();
    assert_eq!(files(dir.path(), ".corrupt"), 1, "a torn entry is set aside at start");
    assert_eq!(files(dir.path(), ".entry"), 0);
}

#[tokio::test]
async fn puts_wait_for_room_in_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let storage = memory();
    let mut config = config(dir.path(), "memory://");
    config.writeback.max_backlog_bytes = 10;
    let spool = open_with(&config, &storage).unwrap();
    put(&spool, "first", b"12345678", "f").await;
    let second = put(&spool, "second", b"87654321", "f");
    tokio::pin!(second);
    let waited = tokio::time::timeout(Duration::from_millis(200), second.as_mut()).await;
    assert!(waited.is_err(), "a put over the backlog limit was acknowledged");
    assert_eq!(spool.backlog(), (1, 8));
    let (_, etag) = tokio::join!(drain(&spool), second);
    assert_eq!(etag, entry::hex(&<md5::Md5 as md5::Digest>::digest(b"87654321")));
}

#[tokio::test]
async fn a_strict_put_the_store_refuses_is_dropped_and_answered() {
    let dir = tempfile::tempdir().unwrap();
    let objects = tempfile::tempdir().unwrap();
    let url = format!("file://{}", objects.path().display());
    let storage =
        Arc::new(Storage::new(&StorageConfig { url: url.clone(), ..Default::default() }).unwrap());
    let spool = open_with(&config(dir.path(), &url), &storage).unwrap();
    let mut writer = spool.writer(&object("k"), &PutParams::default(), "careful").unwrap();
    writer.append(b"never stored".to_vec()).await.unwrap();
    let upload = async {
        while spool.backlog().0 == 0 {
            tokio::task::yield_now().await;
        }
        drain(&spool).await;
    };
    let (refused, ()) = tokio::join!(writer.commit(), upload);
    let Err(SpoolError::Refused { status, .. }) = refused else { panic!("{refused:?}") };
    assert_eq!(status, nexus_channel::wire::Status::NoSuchBucket);
    assert_eq!(spool.backlog(), (0, 0));
    assert_eq!(files(dir.path(), ".entry"), 0);
}

#[tokio::test]
async fn a_listing_waits_for_the_entries_under_its_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let storage = memory();
    let spool = open(dir.path(), &storage).unwrap();
    put(&spool, "elsewhere/x", b"x", "f").await;
    spool.settle("b", "p/").await;
    put(&spool, "p/a", b"a", "f").await;
    let settled = spool.settle("b", "p/");
    tokio::pin!(settled);
    let early = tokio::time::timeout(Duration::from_millis(100), settled.as_mut()).await;
    assert!(early.is_err(), "listed before p/a reached the store");
    tokio::join!(drain(&spool), settled);
    assert_eq!(stored(&storage, "p/a").await.as_deref(), Some(&b"a"[..]));
}

/// A config whose functions may each hold `bytes` in the spool with `uploads` open at once.
fn with_quota(dir: &Path, uploads: u32, bytes: u64) -> Config {
    let mut config = config(dir, "memory://");
    config.writeback.max_function_uploads = uploads;
    config.writeback.max_function_bytes = bytes;
    config
}

#[tokio::test]
async fn a_function_over_its_share_is_refused_as_bytes_arrive_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let storage = memory();
    let spool = open_with(&with_quota(dir.path(), 2, 1000), &storage).unwrap();
    let params = PutParams::default();
    let mut flood = spool.writer(&object("flood/1"), &params, "flood").unwrap();
    flood.append(vec![1; 600]).await.unwrap();
    let mut second = spool.writer(&object("flood/2"), &params, "flood").unwrap();
    let refused = second.append(vec![2; 600]).await.unwrap_err();
    assert!(matches!(refused, SpoolError::Quota(QuotaError::Bytes { .. })), "{refused}");
    assert!(matches!(
        spool.writer(&object("flood/3"), &params, "flood"),
        Err(SpoolError::Quota(QuotaError::Uploads { max: 2, .. }))
    ));
    assert_eq!(files(dir.path(), ".tmp"), 2, "the refused chunk never reached the disk");

    // Another function is unaffected.
    put(&spool, "calm/1", &[3; 900], "calm").await;

    // Committed bytes stay charged until uploaded.
    drop(second);
    flood.commit().await.unwrap();
    let mut third = spool.writer(&object("flood/3"), &params, "flood").unwrap();
    assert!(third.append(vec![4; 600]).await.is_err(), "600 bytes wait for upload");
    drain(&spool).await;
    third.append(vec![4; 600]).await.unwrap();
    third.commit().await.unwrap();
    drain(&spool).await;
    assert_eq!(stored(&storage, "flood/1").await.unwrap().len(), 600);
    assert_eq!(stored(&storage, "flood/3").await.unwrap().len(), 600);
    assert_eq!(spool.inner.quotas.bytes("flood"), 0);
}

#[tokio::test]
async fn a_full_spool_disk_refuses_new_puts_and_keeps_every_acknowledged_one() {
    let mount = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(mount.path())
        .status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("skipped: mounting an 8 MiB tmpfs needs root");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(mount.path());
    let storage = memory();
    let spool = open(mount.path(), &storage).unwrap();
    let mut acked = Vec::new();
    let full = loop {
        let key = format!("k/{}", acked.len());
        let body = vec![acked.len() as u8; 1 << 20];
        let mut writer = spool.writer(&object(&key), &PutParams::default(), "f").unwrap();
        let written = match writer.append(body.clone()).await {
            Ok(()) => writer.commit().await.map(drop),
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => acked.push((key, body)),
            Err(e) => break e,
        }
        assert!(acked.len() < 16, "an 8 MiB disk took 16 MiB");
    };
    assert!(matches!(full, SpoolError::Full), "{full}");
    assert!(full.to_string().contains("disk is full"), "{full}");
    assert!(acked.len() >= 4, "only {} puts fit", acked.len());
    assert_eq!(files(mount.path(), ".tmp"), 0, "the refused put left nothing behind");

    // After a restart every acknowledged put is uploaded intact.
    drop(spool);
    let spool = open(mount.path(), &storage).unwrap();
    drain(&spool).await;
    for (key, body) in &acked {
        assert_eq!(stored(&storage, key).await.as_deref(), Some(&body[..]), "{key}");
    }
}
