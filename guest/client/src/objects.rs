//! Object calls for Rust guests over a [`Client`]: whole-object puts, streamed gets, deletes
//! and listings, and objects the host staged for the running invocation, read without a call.

use nexus_channel::staging;
use nexus_channel::wire::{flags, Op, Status};

use crate::client::{Client, ClientError, Reply, Request};

/// An object the host staged in the region for the running invocation.
#[derive(Debug)]
pub struct StagedObject {
    /// The meta JSON a `Get` reply would carry.
    pub meta: Vec<u8>,
    /// Its bytes, in the region: valid while the client lives and never written again.
    pub ptr: *const u8,
    pub len: usize,
}

impl Client {
    /// `bucket/key` if the host staged it for the running invocation (see
    /// [`nexus_channel::staging`]): found without a call, its bytes read in place.
    pub fn staged(&self, bucket: &str, key: &str) -> Result<Option<StagedObject>, ClientError> {
        let Some(found) = staging::lookup(self.region(), self.geometry(), bucket, key)? else {
            return Ok(None);
        };
        let ptr = self.region().span(found.region_offset, found.size)?;
        let meta = found.meta.to_string().into_bytes();
        Ok(Some(StagedObject { meta, ptr: ptr.cast_const(), len: found.size }))
    }

    /// Stores `body` as `bucket/key`, in chunks when it is larger than a buffer. Returns the
    /// object's ETag.
    pub fn put_object(&self, bucket: &str, key: &str, body: &[u8]) -> Result<String, ClientError> {
        let (buffer, _) = self.lease()?;
        let result = self.put_in(buffer, bucket, key, body);
        self.release(buffer)?;
        result
    }

    fn put_in(
        &self,
        buffer: u32,
        bucket: &str,
        key: &str,
        body: &[u8],
    ) -> Result<String, ClientError> {
        let args_len = bucket.len() + key.len();
        let first_room = (self.geometry().buffer_size as usize).saturating_sub(args_len);
        let (first, mut rest) = body.split_at(body.len().min(first_room));
        self.write(buffer, 0, bucket.as_bytes())?;
        self.write(buffer, bucket.len(), key.as_bytes())?;
        self.write(buffer, args_len, first)?;
        let mut request = Request {
            op: Op::Put as u16,
            flags: if rest.is_empty() { 0 } else { flags::MORE },
            buffer,
            bucket_len: len16(bucket)?,
            key_len: len16(key)?,
            body_len: first.len() as u64,
            ..Request::default()
        };
        let mut reply = self.checked_call(&request)?;
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(self.geometry().buffer_size as usize));
            rest = tail;
            self.write(buffer, 0, chunk)?;
            request = Request {
                op: Op::Write as u16,
                flags: if rest.is_empty() { 0 } else { flags::MORE },
                buffer,
                body_len: chunk.len() as u64,
                stream: reply.stream,
                ..Request::default()
            };
            reply = self.checked_call(&request)?;
        }
        let meta = self.meta(buffer, &reply)?;
        Ok(meta["ETag"].as_str().unwrap_or_default().to_owned())
    }

    /// Streams `bucket/key` through `consume`, one chunk at a time, each read in place (all
    /// at once when the host staged it). Returns the object's size.
    pub fn get_object(
        &self,
        bucket: &str,
        key: &str,
        mut consume: impl FnMut(&[u8]),
    ) -> Result<u64, ClientError> {
        if let Some(staged) = self.staged(bucket, key)? {
            // SAFETY: `staged` checked the bytes lie inside this client's mapping, which
            // outlives the borrow; the host never writes them again (nexus_channel::staging).
            consume(unsafe { std::slice::from_raw_parts(staged.ptr, staged.len) });
            return Ok(staged.len as u64);
        }
        let (buffer, _) = self.lease()?;
        let result = (|| {
            self.write(buffer, 0, bucket.as_bytes())?;
            self.write(buffer, bucket.len(), key.as_bytes())?;
            let mut request = Request {
                op: Op::Get as u16,
                buffer,
                bucket_len: len16(bucket)?,
                key_len: len16(key)?,
                ..Request::default()
            };
            let mut reply = self.checked_call(&request)?;
            let size = reply.object_size;
            self.read_in_place(
                buffer,
                reply.meta_len as usize,
                reply.body_len as usize,
                &mut consume,
            )?;
            while reply.flags & u32::from(flags::MORE) != 0 {
                request = Request {
                    op: Op::Read as u16,
                    buffer,
                    stream: reply.stream,
                    ..Request::default()
                };
                reply = self.checked_call(&request)?;
                self.read_in_place(buffer, 0, reply.body_len as usize, &mut consume)?;
            }
            Ok(size)
        })();
        self.release(buffer)?;
        result
    }

    /// Deletes `bucket/key` (S3 succeeds for a key that does not exist).
    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<(), ClientError> {
        self.with_args(Op::Delete, &[bucket, key, ""]).map(drop)
    }

    /// One page of ListObjectsV2 under `prefix`, at most `max_keys` keys: the answer's JSON
    /// (`Contents`, `KeyCount`, `IsTruncated`, ...).
    pub fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        max_keys: u32,
    ) -> Result<serde_json::Value, ClientError> {
        let params = serde_json::json!({ "Prefix": prefix, "MaxKeys": max_keys }).to_string();
        self.with_args(Op::List, &[bucket, "", &params])
    }

    /// A call of `op` whose arguments are bucket, key and params, with no body; returns the
    /// reply's meta JSON.
    fn with_args(
        &self,
        op: Op,
        [bucket, key, params]: &[&str; 3],
    ) -> Result<serde_json::Value, ClientError> {
        let (buffer, _) = self.lease()?;
        let result = (|| {
            self.write(buffer, 0, bucket.as_bytes())?;
            self.write(buffer, bucket.len(), key.as_bytes())?;
            self.write(buffer, bucket.len() + key.len(), params.as_bytes())?;
            let request = Request {
                op: op as u16,
                buffer,
                bucket_len: len16(bucket)?,
                key_len: len16(key)?,
                params_len: u32::try_from(params.len())
                    .map_err(|_| ClientError::Protocol("params too long"))?,
                ..Request::default()
            };
            let reply = self.checked_call(&request)?;
            self.meta(buffer, &reply)
        })();
        self.release(buffer)?;
        result
    }

    /// A call whose error status becomes [`ClientError::Status`].
    fn checked_call(&self, request: &Request) -> Result<Reply, ClientError> {
        let reply = self.call(request)?;
        if reply.status != Status::Ok as u32 {
            let meta = self.meta(request.buffer, &reply)?;
            return Err(ClientError::Status {
                code: meta["Code"].as_str().unwrap_or("InternalError").to_owned(),
                message: meta["Message"].as_str().unwrap_or_default().to_owned(),
            });
        }
        Ok(reply)
    }

    fn meta(&self, buffer: u32, reply: &Reply) -> Result<serde_json::Value, ClientError> {
        if reply.meta_len == 0 {
            return Ok(serde_json::Value::Null);
        }
        self.read_in_place(buffer, 0, reply.meta_len as usize, |bytes| {
            serde_json::from_slice(bytes)
                .map_err(|_| ClientError::Protocol("reply meta is not JSON"))
        })?
    }
}

fn len16(text: &str) -> Result<u16, ClientError> {
    u16::try_from(text.len()).map_err(|_| ClientError::Protocol("bucket or key too long"))
}
