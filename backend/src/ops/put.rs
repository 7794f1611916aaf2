//! `Put` and `Write`: object bytes from the guest's buffer to storage, whole or in chunks.

use std::time::Instant;

use bytes::Bytes;
use nexus_channel::wire::{Envelope, ObjectRef, PutParams, Status};
use object_store::{
    Attribute, Attributes, PutMultipartOptions, PutOptions, PutPayload, WriteMultipart,
};
use serde_json::json;

use super::get::quoted;
use super::{no_stream, Context, OpError, Out};
use crate::policy::Access;
use crate::served::{Answer, ServedRegion};
use crate::storage::key_path;
use crate::streams::{Stream, Upload};

/// Size of the parts a chunked upload sends (S3 needs at least 5 MiB but for the last).
const PART_SIZE: usize = 8 << 20;
/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 2;

/// `Put`: a whole object, or the first chunk of one (`more`).
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
    let body = Bytes::from(out.read(envelope.args_len, envelope.body_len)?);
    let attributes = attributes(ctx, params);
    ctx.cache.invalidate(&object.bucket, &object.key);
    if !more {
        let options = PutOptions { attributes, ..PutOptions::default() };
        let result = store.put_opts(&path, PutPayload::from(body), options).await?;
        return etag_answer(result.e_tag, out);
    }
    let options = PutMultipartOptions { attributes, ..PutMultipartOptions::default() };
    let upload = store.put_multipart_opts(&path, options).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let written = body.len() as u64;
    writer.put(body);
    let upload = Upload { bucket: object.bucket.clone(), key: object.key.clone(), writer, written };
    let stream = match served.streams.open(Stream::Upload(upload), Instant::now()) {
        Ok(stream) => stream,
        Err(e) => return Err(e.into()),
    };
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
        let _ = upload.writer.abort().await;
        return Err(e);
    }
    if more {
        served.streams.put_back(stream, Stream::Upload(upload), Instant::now());
        return Ok(Answer { meta_len: out.meta(&json!({}))?, stream, ..Answer::default() });
    }
    let result = upload.writer.finish().await?;
    ctx.cache.invalidate(&upload.bucket, &upload.key);
    etag_answer(result.e_tag, out)
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
    upload.writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
    upload.writer.put(Bytes::from(out.read(envelope.args_len, envelope.body_len)?));
    upload.written = written;
    Ok(())
}

fn etag_answer(etag: Option<String>, out: Out<'_>) -> Result<Answer, OpError> {
    let meta = match etag {
        Some(etag) => json!({ "ETag": quoted(&etag) }),
        None => json!({}),
    };
    Ok(Answer { meta_len: out.meta(&meta)?, ..Answer::default() })
}

/// The object attributes a put sets, where the store keeps them.
fn attributes(ctx: &Context, params: &PutParams) -> Attributes {
    let mut attributes = Attributes::new();
    if !ctx.storage.keeps_attributes() {
        return attributes;
    }
    if let Some(content_type) = &params.content_type {
        attributes.insert(Attribute::ContentType, content_type.clone().into());
    }
    for (key, value) in &params.metadata {
        attributes.insert(Attribute::Metadata(key.clone().into()), value.clone().into());
    }
    attributes
}
