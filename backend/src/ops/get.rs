//! `Head`, `Get` and `Read`: object attributes and bytes, straight into the guest's buffer.
//!
//! An object with a put or delete waiting in the write-back spool is answered from the spool
//! (read-your-writes), never from the cache or the store.

use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use chrono::SecondsFormat;
use futures::{FutureExt, StreamExt};
use nexus_channel::wire::{flags, ByteRange, ObjectRef, Status};
use object_store::{Attribute, GetOptions, GetRange, GetResult, ObjectStoreExt};
use serde_json::{json, Map, Value};

use super::{no_stream, Context, OpError, Out};
use crate::arriving::Arriving;
use crate::cache::{Cached, ObjectInfo};
use crate::policy::{Access, Denied};
use crate::served::{Answer, ServedRegion};
use crate::spool::Spooled;
use crate::storage::key_path;
use crate::streams::{CacheFill, Download, Source, Stream};

/// `Head`: attributes only.
pub async fn head(
    ctx: &Context,
    served: &ServedRegion,
    object: &ObjectRef,
    out: Out<'_>,
) -> Result<Answer, OpError> {
    if let Some(answer) = head_cached(ctx, served, object, out) {
        return answer;
    }
    if let Some((info, _)) = spooled(ctx, object)? {
        return head_answer(&info, out);
    }
    let store = ctx.storage.bucket(&object.bucket)?;
    let options = GetOptions { head: true, ..GetOptions::default() };
    let attributes = attributes(&store.get_opts(&key_path(&object.key)?, options).await?);
    head_answer(&attributes, out)
}

/// `Head` answered from the cache, if the object is there (no I/O).
pub fn head_cached(
    ctx: &Context,
    served: &ServedRegion,
    object: &ObjectRef,
    out: Out<'_>,
) -> Option<Result<Answer, OpError>> {
    if let Err(denied) = served.policy.check(Access::Read, &object.bucket, &object.key) {
        return Some(Err(denied.into()));
    }
    let cached = cached(ctx, served, object)?;
    Some(head_answer(&cached.info, out))
}

fn head_answer(attributes: &ObjectInfo, out: Out<'_>) -> Result<Answer, OpError> {
    let meta = object_meta(attributes, attributes.size, None);
    Ok(Answer { meta_len: out.meta(&meta)?, object_size: attributes.size, ..Answer::default() })
}

/// `Get`: attributes and the first chunk; a stream for the rest.
pub async fn get(
    ctx: &Context,
    served: &ServedRegion,
    object: &ObjectRef,
    range: Option<ByteRange>,
    out: Out<'_>,
) -> Result<Answer, OpError> {
    if let Some(answer) = get_cached(ctx, served, object, range, out) {
        return answer;
    }
    if let Some((info, body)) = spooled(ctx, object)? {
        let selected = resolve(range, info.size)?;
        let bytes = body.slice(selected.0 as usize..selected.1 as usize);
        let download = Download { source: Source::Memory(bytes), remaining: 0, fill: None };
        return respond(ctx, served, download, &info, selected, range, out).await;
    }
    if let Some((info, source)) = still_arriving(ctx, served, object, range).await {
        ctx.metrics.prefetch_streamed(&served.function);
        let download = Download { source, remaining: 0, fill: None };
        return respond(ctx, served, download, &info, (0, info.size), None, out).await;
    }
    let (attributes, selected, source, fill) = fetch(ctx, object, range).await?;
    respond(ctx, served, Download { source, remaining: 0, fill }, &attributes, selected, range, out)
        .await
}

/// `Get` answered from the cache, if the object is there (no I/O: the bytes are in memory).
pub fn get_cached(
    ctx: &Context,
    served: &ServedRegion,
    object: &ObjectRef,
    range: Option<ByteRange>,
    out: Out<'_>,
) -> Option<Result<Answer, OpError>> {
    if let Err(denied) = served.policy.check(Access::Read, &object.bucket, &object.key) {
        return Some(Err(denied.into()));
    }
    let cached = cached(ctx, served, object)?;
    let selected = match resolve(range, cached.info.size) {
        Ok(selected) => selected,
        Err(e) => return Some(Err(e)),
    };
    let bytes = cached.bytes.slice(selected.0 as usize..selected.1 as usize);
    let download = Download { source: Source::Memory(bytes), remaining: 0, fill: None };
    let answer = respond(ctx, served, download, &cached.info, selected, range, out);
    Some(in_memory(answer))
}

/// The whole copy of `object` in memory — prefetched for this region's invocation, or
/// cached — unless the spool holds a newer state of it.
fn cached(ctx: &Context, served: &ServedRegion, object: &ObjectRef) -> Option<Cached> {
    if spool_has_newer(ctx, object) {
        return None;
    }
    served
        .staged(&object.bucket, &object.key)
        .and_then(|arriving| arriving.whole())
        .or_else(|| ctx.cache.get(&object.bucket, &object.key, Instant::now()))
}

/// Whether a write or delete of `object` waits in the spool: it is newer than any copy.
fn spool_has_newer(ctx: &Context, object: &ObjectRef) -> bool {
    ctx.spool.as_ref().is_some_and(|spool| spool.has_pending(&object.bucket, &object.key))
}

/// Fetches a whole object of at most `max_bytes` from storage into `object` as its bytes
/// arrive (a prefetch: see [`Arriving`]); the caller ends it with the result.
pub async fn fetch_into(ctx: &Context, object: &Arriving, max_bytes: u64) -> Result<(), OpError> {
    let store = ctx.storage.bucket(&object.bucket)?;
    let result = store.get_opts(&key_path(&object.key)?, GetOptions::default()).await?;
    if result.meta.size > max_bytes {
        return Err(Denied::TooLarge { size: result.meta.size, max: max_bytes }.into());
    }
    object.begin(attributes(&result));
    let mut body = result.into_stream();
    while let Some(chunk) = body.next().await {
        object.push(chunk?);
    }
    Ok(())
}

/// A whole-object `Get` of an object prefetched for this invocation and still arriving: its
/// attributes (once storage answered) and its body as it arrives, so that it is not fetched
/// twice. `None` for anything else, and for a prefetch that failed.
async fn still_arriving(
    ctx: &Context,
    served: &ServedRegion,
    object: &ObjectRef,
    range: Option<ByteRange>,
) -> Option<(ObjectInfo, Source)> {
    if range.is_some() || spool_has_newer(ctx, object) {
        return None;
    }
    let arriving = served.staged(&object.bucket, &object.key)?;
    let info = arriving.attributes().await?;
    let stream = arriving
        .body()
        .map(|chunk| {
            chunk.map_err(|e| object_store::Error::Generic {
                store: "prefetch",
                source: Box::new(e),
            })
        })
        .boxed();
    Some((info, Source::Remote { stream, pending: Bytes::new() }))
}

/// `object` as the write-back spool holds it: its attributes and bytes, or NoSuchKey for a
/// spooled delete; `None` when nothing of it waits for upload.
fn spooled(ctx: &Context, object: &ObjectRef) -> Result<Option<(ObjectInfo, Bytes)>, OpError> {
    let Some(spool) = &ctx.spool else { return Ok(None) };
    match spool.view(&object.bucket, &object.key)? {
        None => Ok(None),
        Some(Spooled::Deleted) => Err(no_such_key()),
        Some(Spooled::Object { record, body }) => {
            // What the store will answer once it has the object.
            let keeps = ctx.storage.keeps_attributes();
            let mut metadata: Vec<(String, String)> = if keeps {
                // S3 user metadata names are HTTP headers: they come back in lower case.
                record.metadata.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect()
            } else {
                Vec::new()
            };
            metadata.sort();
            let info = ObjectInfo {
                size: record.size,
                etag: Some(quoted(&record.md5)),
                last_modified: record.written_at,
                content_type: record.content_type.filter(|_| keeps),
                metadata,
            };
            Ok(Some((info, body)))
        }
    }
}

fn no_such_key() -> OpError {
    OpError::new(Status::NoSuchKey, "The specified key does not exist.")
}

/// Writes the meta and the first chunk of `download`; opens a stream for the rest.
async fn respond(
    ctx: &Context,
    served: &ServedRegion,
    mut download: Download,
    attributes: &ObjectInfo,
    selected: (u64, u64),
    range: Option<ByteRange>,
    out: Out<'_>,
) -> Result<Answer, OpError> {
    served.policy.check_size(attributes.size)?;
    let length = selected.1 - selected.0;
    download.remaining = length;
    let meta_len = out.meta(&object_meta(attributes, length, range.map(|_| selected)))?;
    let body_len = fill_buffer(&mut download, &out, meta_len as usize).await?;
    let mut answer =
        Answer { meta_len, body_len: body_len as u64, object_size: length, ..Answer::default() };
    if download.remaining > 0 {
        answer.stream = served.streams.open(Stream::Download(download), Instant::now())?;
        answer.flags = flags::MORE;
    } else {
        finish_fill(ctx, download.fill);
    }
    Ok(answer)
}

/// `Read`: the next chunk of a download.
pub async fn read(
    ctx: &Context,
    served: &ServedRegion,
    stream: u64,
    out: Out<'_>,
) -> Result<Answer, OpError> {
    let Some(Stream::Download(download)) = served.streams.take(stream) else {
        return Err(no_stream(stream));
    };
    next_chunk(ctx, served, stream, download, out).await
}

/// `Read` of a download whose bytes are in memory (no I/O); `None` for any other stream.
pub fn read_in_memory(
    ctx: &Context,
    served: &ServedRegion,
    stream: u64,
    out: Out<'_>,
) -> Option<Result<Answer, OpError>> {
    let from_memory =
        |s: &Stream| matches!(s, Stream::Download(Download { source: Source::Memory(_), .. }));
    let Some(Stream::Download(download)) = served.streams.take_if(stream, from_memory) else {
        return None;
    };
    Some(in_memory(next_chunk(ctx, served, stream, download, out)))
}

async fn next_chunk(
    ctx: &Context,
    served: &ServedRegion,
    stream: u64,
    mut download: Download,
    out: Out<'_>,
) -> Result<Answer, OpError> {
    let body_len = fill_buffer(&mut download, &out, 0).await?;
    let mut answer = Answer { body_len: body_len as u64, stream, ..Answer::default() };
    if download.remaining > 0 {
        answer.flags = flags::MORE;
        served.streams.put_back(stream, Stream::Download(download), Instant::now());
    } else {
        finish_fill(ctx, download.fill);
    }
    Ok(answer)
}

/// Runs an answer whose download reads only memory: it completes on its first poll.
fn in_memory(
    answer: impl std::future::Future<Output = Result<Answer, OpError>>,
) -> Result<Answer, OpError> {
    answer
        .now_or_never()
        .unwrap_or_else(|| Err(OpError::new(Status::InternalError, "in-memory read had to wait")))
}

/// Fetches from storage: attributes, the selected range, the byte stream and, for a whole
/// object the cache admits, a collector.
async fn fetch(
    ctx: &Context,
    object: &ObjectRef,
    range: Option<ByteRange>,
) -> Result<(ObjectInfo, (u64, u64), Source, Option<CacheFill>), OpError> {
    let store = ctx.storage.bucket(&object.bucket)?;
    let path = key_path(&object.key)?;
    let options = GetOptions { range: range.map(get_range), ..GetOptions::default() };
    let result = match store.get_opts(&path, options).await {
        Ok(result) => result,
        Err(object_store::Error::NotFound { .. }) => return Err(no_such_key()),
        Err(e) => {
            // A range the object cannot satisfy is S3's InvalidRange, whatever the store said.
            if let Some(range) = range {
                let size = store.head(&path).await?.size;
                resolve(Some(range), size)?;
            }
            return Err(e.into());
        }
    };
    let attributes = attributes(&result);
    let selected = (result.range.start, result.range.end);
    let fill = (range.is_none() && ctx.cache.admits(attributes.size)).then(|| CacheFill {
        bucket: object.bucket.clone(),
        key: object.key.clone(),
        info: attributes.clone(),
        bytes: BytesMut::with_capacity(attributes.size as usize),
    });
    let source = Source::Remote { stream: result.into_stream(), pending: Bytes::new() };
    Ok((attributes, selected, source, fill))
}

/// Copies the download's next bytes into the buffer from position `at`; returns how many.
async fn fill_buffer(download: &mut Download, out: &Out<'_>, at: usize) -> Result<usize, OpError> {
    let room = out.len().saturating_sub(at) as u64;
    let want = download.remaining.min(room) as usize;
    let mut written = 0;
    while written < want {
        let chunk = match &mut download.source {
            Source::Memory(bytes) => bytes,
            Source::Remote { stream, pending } => {
                if pending.is_empty() {
                    *pending = match stream.next().await {
                        Some(chunk) => chunk?,
                        None => {
                            return Err(OpError::new(Status::InternalError, "object ended early"))
                        }
                    };
                }
                pending
            }
        };
        let n = chunk.len().min(want - written);
        if n == 0 {
            return Err(OpError::new(Status::InternalError, "object ended early"));
        }
        out.write(at + written, &chunk[..n])?;
        if let Some(fill) = &mut download.fill {
            fill.bytes.extend_from_slice(&chunk[..n]);
        }
        chunk.advance(n);
        written += n;
    }
    download.remaining -= written as u64;
    Ok(written)
}

fn finish_fill(ctx: &Context, fill: Option<CacheFill>) {
    if let Some(fill) = fill {
        let object = Cached { info: fill.info, bytes: fill.bytes.freeze() };
        ctx.cache.insert(&fill.bucket, &fill.key, object, Instant::now());
    }
}

/// The byte span `[start, end)` a range selects in an object of `size` bytes, as S3 decides.
pub fn resolve(range: Option<ByteRange>, size: u64) -> Result<(u64, u64), OpError> {
    let invalid = || OpError::new(Status::InvalidRange, "The requested range is not satisfiable");
    match range {
        None => Ok((0, size)),
        Some(ByteRange::Bounded { first, last }) if first < size => {
            Ok((first, last.saturating_add(1).min(size)))
        }
        Some(ByteRange::From(first)) if first < size => Ok((first, size)),
        Some(ByteRange::Suffix(n)) if n > 0 => Ok((size.saturating_sub(n), size)),
        Some(_) => Err(invalid()),
    }
}

fn get_range(range: ByteRange) -> GetRange {
    match range {
        ByteRange::Bounded { first, last } => GetRange::Bounded(first..last.saturating_add(1)),
        ByteRange::From(first) => GetRange::Offset(first),
        ByteRange::Suffix(n) => GetRange::Suffix(n),
    }
}

fn attributes(result: &GetResult) -> ObjectInfo {
    let mut content_type = None;
    let mut metadata = Vec::new();
    for (attribute, value) in result.attributes.iter() {
        match attribute {
            Attribute::ContentType => content_type = Some(value.to_string()),
            Attribute::Metadata(key) => metadata.push((key.to_string(), value.to_string())),
            _ => {}
        }
    }
    metadata.sort();
    ObjectInfo {
        size: result.meta.size,
        etag: result.meta.e_tag.as_deref().map(quoted),
        last_modified: result.meta.last_modified.to_rfc3339_opts(SecondsFormat::Millis, true),
        content_type,
        metadata,
    }
}

/// S3 ETags are quoted; some stores hand them over bare.
pub fn quoted(etag: &str) -> String {
    if etag.starts_with('"') {
        etag.to_owned()
    } else {
        format!("\"{etag}\"")
    }
}

/// The `Head`/`Get` meta of an object; `ranged` is the selected span of a ranged `Get`.
/// The meta of a `Get`/`Head` reply for an object (for `length` bytes of it, `ranged` when a
/// range was selected).
pub(crate) fn object_meta(
    attributes: &ObjectInfo,
    length: u64,
    ranged: Option<(u64, u64)>,
) -> Value {
    let metadata: Map<String, Value> =
        attributes.metadata.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
    let mut meta = json!({
        "ContentLength": length,
        "LastModified": attributes.last_modified,
        "Metadata": metadata,
        "AcceptRanges": "bytes",
    });
    if let Some(content_type) = &attributes.content_type {
        meta["ContentType"] = Value::from(content_type.as_str());
    }
    if let Some(etag) = &attributes.etag {
        meta["ETag"] = Value::from(etag.as_str());
    }
    if let Some((start, end)) = ranged {
        let last = end.saturating_sub(1);
        meta["ContentRange"] = Value::from(format!("bytes {start}-{last}/{}", attributes.size));
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_like_s3() {
        let r = |range| resolve(Some(range), 10).map_err(|e| e.status);
        assert_eq!(r(ByteRange::Bounded { first: 2, last: 5 }), Ok((2, 6)));
        assert_eq!(r(ByteRange::Bounded { first: 2, last: 500 }), Ok((2, 10)));
        assert_eq!(r(ByteRange::From(9)), Ok((9, 10)));
        assert_eq!(r(ByteRange::Suffix(3)), Ok((7, 10)));
        assert_eq!(r(ByteRange::Suffix(30)), Ok((0, 10)));
        assert_eq!(r(ByteRange::From(10)), Err(Status::InvalidRange));
        assert_eq!(r(ByteRange::Suffix(0)), Err(Status::InvalidRange));
        assert_eq!(resolve(None, 0).map_err(|e| e.status), Ok((0, 0)));
    }
}
