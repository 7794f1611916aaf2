//! `Put` and `Write`: object bytes from the guest's buffer to storage (or the write-back
//! spool), whole or in chunks.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use nexus_channel::wire::{Envelope, ObjectRef, PutParams, Status};
use object_store::{PutMultipartOptions, PutOptions, PutPayload, WriteMultipart};
use serde_json::json;

use super::get::quoted;
use super::{no_stream, Context, OpError, Out};
use crate::policy::Access;
use crate::served::{Answer, ServedRegion};
use crate::storage::key_path;
use crate::streams::{Sink, Stream, Upload};

/// Objects from this size on go up in parts of this size: boto3's multipart threshold and
/// part size, so an upload gets the same ETag either way. S3 needs at least 5 MiB a part.
const PART_SIZE: usize = 8 << 20;
/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 2;

/// `Put`: a whole object, or the first chunk of one (`more`). With write-back on, the bytes go
/// to the spool and the put completes once they are durable there.
pub async fn put(
    ctx: &Context,
    served: &ServedRegion,
    object: &ObjectRef,
    params: &PutParams,
    envelope: &Envelope,
    more: bool,
    out: Out<'_>,
) -> Result<Answer, OpError> {
    served.policy.check(Access::Write, &object.bucket, &object.key)?;
    served.policy.check_size(envelope.body_len as u64)?;
    let store = ctx.storage.bucket(&object.bucket)?;
    let path = key_path(&object.key)?;
    let body = out.read(envelope.args_len, envelope.body_len)?;
    ctx.cache.invalidate(&object.bucket, &object.key);
    let sink = if let Some(spool) = &ctx.spool {
        let mut writer = spool.writer(object, params, &served.function)?;
        writer.append(body).await?;
        if !more {
            return etag_answer(Some(writer.commit().await?.etag), out);
        }
        Sink::Spooled(writer)
    } else {
        let attributes = ctx.storage.attributes(params.content_type.as_deref(), &params.metadata);
        if !more {
            let options = PutOptions { attributes, ..PutOptions::default() };
            let result = store.put_opts(&path, PutPayload::from(body), options).await?;
            return etag_answer(result.e_tag, out);
        }
        Sink::Held { store, path, attributes, bytes: BytesMut::from(&body[..]) }
    };
    let upload = Upload {
        bucket: object.bucket.clone(),
        key: object.key.clone(),
        written: envelope.body_len as u64,
        sink,
    };
    let stream = served.streams.open(Stream::Upload(upload), Instant::now())?;
    Ok(Answer { meta_len: out.meta(&json!({}))?, stream, ..Answer::default() })
}

/// `Write`: the next chunk of an upload; the last one (`!more`) completes it.
pub async fn write(
    ctx: &Context,
    served: &ServedRegion,
    stream: u64,
    envelope: &Envelope,
    more: bool,
    out: Out<'_>,
) -> Result<Answer, OpError> {
    let Some(Stream::Upload(mut upload)) = served.streams.take(stream) else {
        return Err(no_stream(stream));
    };
    if let Err(e) = append(served, &mut upload, envelope, out).await {
        let _ = abort(upload).await;
        return Err(e);
    }
    if more {
        served.streams.put_back(stream, Stream::Upload(upload), Instant::now());
        return Ok(Answer { meta_len: out.meta(&json!({}))?, stream, ..Answer::default() });
    }
    let etag = match upload.sink {
        Sink::Held { store, path, attributes, bytes } => {
            let options = PutOptions { attributes, ..PutOptions::default() };
            store.put_opts(&path, PutPayload::from(bytes.freeze()), options).await?.e_tag
        }
        Sink::Multipart(writer) => writer.finish().await?.e_tag,
        Sink::Spooled(writer) => Some(writer.commit().await?.etag),
    };
    ctx.cache.invalidate(&upload.bucket, &upload.key);
    etag_answer(etag, out)
}

/// Abandons an upload (a spooled one leaves nothing behind when dropped).
pub async fn abort(upload: Upload) -> Result<(), OpError> {
    if let Sink::Multipart(writer) = upload.sink {
        writer.abort().await?;
    }
    Ok(())
}

async fn append(
    served: &ServedRegion,
    upload: &mut Upload,
    envelope: &Envelope,
    out: Out<'_>,
) -> Result<(), OpError> {
    let written = upload
        .written
        .checked_add(envelope.body_len as u64)
        .ok_or_else(|| OpError::new(Status::EntityTooLarge, "object too large"))?;
    served.policy.check_size(written)?;
    let chunk = out.read(envelope.args_len, envelope.body_len)?;
    upload.written = written;
    match &mut upload.sink {
        Sink::Held { bytes, .. } if bytes.len() + chunk.len() < PART_SIZE => {
            bytes.extend_from_slice(&chunk);
        }
        Sink::Held { store, path, attributes, bytes } => {
            let options = PutMultipartOptions {
                attributes: std::mem::take(attributes),
                ..PutMultipartOptions::default()
            };
            let parts = store.put_multipart_opts(path, options).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(parts, PART_SIZE);
            writer.put(std::mem::take(bytes).freeze());
            writer.put(Bytes::from(chunk));
            upload.sink = Sink::Multipart(writer);
        }
        Sink::Multipart(writer) => {
            writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
            writer.put(Bytes::from(chunk));
        }
        Sink::Spooled(writer) => writer.append(chunk).await?,
    }
    Ok(())
}

fn etag_answer(etag: Option<String>, out: Out<'_>) -> Result<Answer, OpError> {
    let meta = match etag {
        Some(etag) => json!({ "ETag": quoted(&etag) }),
        None => json!({}),
    };
    Ok(Answer { meta_len: out.meta(&meta)?, ..Answer::default() })
}
