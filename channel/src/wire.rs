//! The call protocol carried by rings 0 and 1.
//!
//! ```text
//!  guest buffer, request:  [bucket][key][params JSON][body]      lengths in the CallDesc
//!  guest buffer, reply:    [meta JSON][body]                     lengths in the CompletionDesc
//! ```
//!
//! | op     | request                                  | reply meta / body                   |
//! |--------|------------------------------------------|-------------------------------------|
//! | Ping   | –                                        | –                                   |
//! | Head   | bucket, key                              | object attributes                   |
//! | Get    | bucket, key, params `{Range}`            | attributes; first chunk, `MORE` + stream if longer |
//! | Read   | stream                                   | next chunk, `MORE` while more follow |
//! | Put    | bucket, key, params `{ContentType, Metadata}`, body; `MORE` when more chunks follow | `{ETag}` when complete, else a stream |
//! | Write  | stream, body; `MORE` unless last         | `{ETag}` after the last chunk       |
//! | Close  | stream                                   | – (abandons a read or an upload)    |
//! | Delete | bucket, key                              | –                                   |
//! | List   | bucket, params `{Prefix, Delimiter, MaxKeys, ContinuationToken, StartAfter}` | a `ListObjectsV2` result |
//! | Invoke | key = function name, params `{InvocationType}`, body = event JSON | `{StatusCode, FunctionError?}`; the result JSON |
//!
//! Params and meta use boto3's own field names and shapes, so the shim passes them through:
//!
//! ```text
//!  Head/Get meta  {"ContentLength", "ContentType", "ETag", "LastModified" (RFC 3339),
//!                  "Metadata": {..}, "AcceptRanges": "bytes", "ContentRange" (ranged Get only)}
//!                 ContentLength is the length of what the stream delivers (the range if any).
//!  Put meta       {"ETag"} once the object is complete; {} for an accepted non-final chunk
//!  Delete meta    {}
//!  List meta      a ListObjectsV2 response: {"IsTruncated", "Name", "Prefix", "MaxKeys",
//!                  "KeyCount", "Contents": [{"Key", "LastModified", "ETag", "Size",
//!                  "StorageClass"}], "CommonPrefixes": [{"Prefix"}], "Delimiter",
//!                  "ContinuationToken", "NextContinuationToken", "StartAfter"}
//!                 (optional keys are omitted when unset, as S3 does; Contents when empty)
//!  Invoke meta    {"StatusCode": 200 (RequestResponse) | 202 (Event) | 204 (DryRun),
//!                  "FunctionError": "Unhandled" when the handler raised}; the body is the
//!                  handler's result (or Lambda's error JSON), empty unless RequestResponse
//!  error meta     {"Code", "Message", "HTTPStatusCode"}, Code being the S3 code of [`Status`]
//! ```
//!
//! Streams: a reply with `MORE` names a stream; the guest continues it with `Read` (or `Write`)
//! in the same buffer, each reply/chunk starting at offset 0, until a reply without `MORE`
//! (the host then forgets the stream) or a `Close`. The first reply's `object_size` is the
//! total the stream delivers. An error reply ends its stream (an upload is aborted), and a
//! stream left untouched for 5 minutes is dropped: the next call on it gets `NoSuchUpload`.
//!
//! Parsing is two steps so the host copies only what it needs out of shared memory:
//! [`Envelope::open`] checks the descriptor against the host's geometry; the host copies
//! `args_len` bytes of the buffer; [`Envelope::parse`] decodes them. Neither can panic.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::layout::{CallDesc, Geometry};

/// Descriptor flags.
pub mod flags {
    /// Put/Write: more chunks follow. Completion: the stream has more to read.
    pub const MORE: u16 = 1;
}

/// Longest object key S3 accepts.
pub const MAX_KEY_LEN: usize = 1024;
/// Longest params JSON the host accepts.
pub const MAX_PARAMS_LEN: usize = 64 * 1024;

/// Operation codes of [`CallDesc::op`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    Ping = 1,
    Head = 2,
    Get = 3,
    Read = 4,
    Put = 5,
    Write = 6,
    Close = 7,
    Delete = 8,
    List = 9,
    Invoke = 10,
}

impl Op {
    /// Every operation, for metrics labels and tests.
    pub const ALL: [Op; 10] = [
        Op::Ping,
        Op::Head,
        Op::Get,
        Op::Read,
        Op::Put,
        Op::Write,
        Op::Close,
        Op::Delete,
        Op::List,
        Op::Invoke,
    ];

    /// Decodes an op code written by the guest.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|op| *op as u16 == code)
    }

    /// Lower-case name, used as a metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Op::Ping => "ping",
            Op::Head => "head",
            Op::Get => "get",
            Op::Read => "read",
            Op::Put => "put",
            Op::Write => "write",
            Op::Close => "close",
            Op::Delete => "delete",
            Op::List => "list",
            Op::Invoke => "invoke",
        }
    }
}

/// Completion status codes of [`crate::CompletionDesc::status`], each an S3 error code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u16)]
pub enum Status {
    #[default]
    Ok = 0,
    NoSuchKey = 1,
    NoSuchBucket = 2,
    AccessDenied = 3,
    InvalidRange = 4,
    InvalidArgument = 5,
    EntityTooLarge = 6,
    SlowDown = 7,
    InternalError = 8,
    NotImplemented = 9,
    InvalidRequest = 10,
    NoSuchUpload = 11,
    ServiceUnavailable = 12,
    InvalidBucketName = 13,
    PreconditionFailed = 14,
}

impl Status {
    /// The S3 error code string.
    pub fn code(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::NoSuchKey => "NoSuchKey",
            Status::NoSuchBucket => "NoSuchBucket",
            Status::AccessDenied => "AccessDenied",
            Status::InvalidRange => "InvalidRange",
            Status::InvalidArgument => "InvalidArgument",
            Status::EntityTooLarge => "EntityTooLarge",
            Status::SlowDown => "SlowDown",
            Status::InternalError => "InternalError",
            Status::NotImplemented => "NotImplemented",
            Status::InvalidRequest => "InvalidRequest",
            Status::NoSuchUpload => "NoSuchUpload",
            Status::ServiceUnavailable => "ServiceUnavailable",
            Status::InvalidBucketName => "InvalidBucketName",
            Status::PreconditionFailed => "PreconditionFailed",
        }
    }

    /// The HTTP status S3 answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::NoSuchKey | Status::NoSuchBucket | Status::NoSuchUpload => 404,
            Status::AccessDenied => 403,
            Status::InvalidRange => 416,
            Status::InvalidArgument
            | Status::EntityTooLarge
            | Status::InvalidRequest
            | Status::InvalidBucketName => 400,
            Status::SlowDown => 503,
            Status::ServiceUnavailable => 503,
            Status::InternalError => 500,
            Status::NotImplemented => 501,
            Status::PreconditionFailed => 412,
        }
    }

    /// The meta JSON of an error completion.
    pub fn error_meta(self, message: &str) -> Vec<u8> {
        serde_json::json!({
            "Code": self.code(),
            "Message": message,
            "HTTPStatusCode": self.http_status(),
        })
        .to_string()
        .into_bytes()
    }
}

/// Why a call was rejected before it reached storage. Each maps to a [`Status`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Unknown op code.
    #[error("Unknown operation code {0}")]
    UnknownOp(u16),
    /// The buffer index is not a guest buffer.
    #[error("Buffer {0} is not a guest buffer")]
    Buffer(u32),
    /// The request's parts do not fit its buffer.
    #[error("Request of {len} bytes does not fit a {capacity}-byte buffer")]
    Overflow { len: u64, capacity: u64 },
    /// A field is longer than the protocol allows.
    #[error("{field} is {len} bytes, more than the {max} allowed")]
    TooLong { field: &'static str, len: usize, max: usize },
    /// A text field is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
    /// Not a valid S3 bucket name.
    #[error("Invalid bucket name {0:?}")]
    Bucket(String),
    /// An empty object key.
    #[error("Object key is empty")]
    EmptyKey,
    /// Not a function name (1 to 64 of a-z, 0-9, `_` and `-`).
    #[error("Invalid function name {0:?}")]
    Function(String),
    /// The params JSON does not match the operation.
    #[error("Invalid parameters: {0}")]
    Params(String),
    /// A Range header that is not `bytes=a-b`, `bytes=a-` or `bytes=-n`.
    #[error("Unsupported range {0:?}")]
    Range(String),
    /// A stream operation without a stream.
    #[error("Operation needs a stream id")]
    NoStream,
    /// An operation that takes no body got one.
    #[error("Operation takes no body")]
    UnexpectedBody,
}

impl WireError {
    /// The status the guest receives for this rejection.
    pub fn status(&self) -> Status {
        match self {
            WireError::UnknownOp(_) => Status::NotImplemented,
            WireError::Bucket(_) => Status::InvalidBucketName,
            WireError::Params(_)
            | WireError::Range(_)
            | WireError::EmptyKey
            | WireError::Function(_) => Status::InvalidArgument,
            _ => Status::InvalidRequest,
        }
    }
}

/// A descriptor checked against the host's geometry, before any buffer byte is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub tag: u64,
    pub op: Op,
    pub more: bool,
    pub buffer: u32,
    /// Absolute offset of the buffer in the region.
    pub buffer_offset: usize,
    /// Capacity of the buffer.
    pub buffer_len: usize,
    /// Bytes of bucket, key and params at the start of the buffer.
    pub args_len: usize,
    pub bucket_len: usize,
    pub key_len: usize,
    /// Body length; the body starts at `args_len` in the buffer.
    pub body_len: usize,
    pub stream: u64,
}

impl Envelope {
    /// Checks a descriptor copied out of the calls ring.
    pub fn open(desc: &CallDesc, geometry: &Geometry) -> Result<Self, WireError> {
        let op = Op::from_code(desc.op).ok_or(WireError::UnknownOp(desc.op))?;
        if !geometry.is_guest_buffer(desc.buffer) {
            return Err(WireError::Buffer(desc.buffer));
        }
        let (buffer_offset, buffer_len) =
            geometry.buffer(desc.buffer).ok_or(WireError::Buffer(desc.buffer))?;
        let params_len = desc.params_len as usize;
        if params_len > MAX_PARAMS_LEN {
            return Err(WireError::TooLong {
                field: "params",
                len: params_len,
                max: MAX_PARAMS_LEN,
            });
        }
        let key_len = usize::from(desc.key_len);
        if key_len > MAX_KEY_LEN {
            return Err(WireError::TooLong { field: "key", len: key_len, max: MAX_KEY_LEN });
        }
        let bucket_len = usize::from(desc.bucket_len);
        let overflow = WireError::Overflow { len: u64::MAX, capacity: buffer_len as u64 };
        let total = (bucket_len as u64)
            .checked_add(key_len as u64)
            .and_then(|n| n.checked_add(params_len as u64))
            .and_then(|n| n.checked_add(desc.body_len))
            .ok_or(overflow)?;
        if total > buffer_len as u64 {
            return Err(WireError::Overflow { len: total, capacity: buffer_len as u64 });
        }
        let more = desc.flags & flags::MORE != 0;
        let stream_op = matches!(op, Op::Read | Op::Write | Op::Close);
        if stream_op && desc.stream == 0 {
            return Err(WireError::NoStream);
        }
        if desc.body_len != 0 && !matches!(op, Op::Put | Op::Write | Op::Invoke) {
            return Err(WireError::UnexpectedBody);
        }
        Ok(Self {
            tag: desc.tag,
            op,
            more,
            buffer: desc.buffer,
            buffer_offset,
            buffer_len,
            // Cannot overflow: each part was summed into `total <= buffer_len` above.
            args_len: bucket_len + key_len + params_len,
            bucket_len,
            key_len,
            body_len: desc.body_len as usize,
            stream: desc.stream,
        })
    }

    /// Decodes the `args_len` bytes the host copied from the start of the buffer.
    pub fn parse(&self, args: &[u8]) -> Result<Call, WireError> {
        if args.len() != self.args_len {
            return Err(WireError::Overflow {
                len: args.len() as u64,
                capacity: self.args_len as u64,
            });
        }
        let (bucket, rest) = args.split_at(self.bucket_len);
        let (key, params) = rest.split_at(self.key_len);
        let object = || -> Result<ObjectRef, WireError> {
            let key = text(key, "key")?;
            if key.is_empty() {
                return Err(WireError::EmptyKey);
            }
            Ok(ObjectRef { bucket: bucket_name(bucket)?, key })
        };
        Ok(match self.op {
            Op::Ping => Call::Ping,
            Op::Head => Call::Head(object()?),
            Op::Get => {
                let params: GetParams = json(params)?;
                let range = params.range.map(|r| ByteRange::parse(&r)).transpose()?;
                Call::Get { object: object()?, range }
            }
            Op::Read => Call::Read { stream: self.stream },
            Op::Put => Call::Put { object: object()?, params: json(params)?, more: self.more },
            Op::Write => Call::Write { stream: self.stream, more: self.more },
            Op::Close => Call::Close { stream: self.stream },
            Op::Delete => Call::Delete(object()?),
            Op::List => Call::List { bucket: bucket_name(bucket)?, params: json(params)? },
            Op::Invoke => {
                if !bucket.is_empty() {
                    return Err(WireError::Params("Invoke takes no bucket".into()));
                }
                let params: InvokeParams = json(params)?;
                Call::Invoke { function: function_name(key)?, kind: params.invocation_type }
            }
        })
    }
}

/// A bucket and key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    pub bucket: String,
    pub key: String,
}

/// A decoded call. Bodies stay in the region until the handler copies them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Ping,
    Head(ObjectRef),
    Get {
        object: ObjectRef,
        range: Option<ByteRange>,
    },
    Read {
        stream: u64,
    },
    Put {
        object: ObjectRef,
        params: PutParams,
        more: bool,
    },
    Write {
        stream: u64,
        more: bool,
    },
    Close {
        stream: u64,
    },
    Delete(ObjectRef),
    List {
        bucket: String,
        params: ListParams,
    },
    /// Another function, with the event in the body.
    Invoke {
        function: String,
        kind: InvocationType,
    },
}

/// How the caller waits for an `Invoke`, in Lambda's words.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum InvocationType {
    /// For the result.
    #[default]
    RequestResponse,
    /// Not at all: the invocation is queued (fire and forget).
    Event,
    /// Only for the policy's answer: nothing runs.
    DryRun,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct InvokeParams {
    #[serde(default)]
    invocation_type: InvocationType,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct GetParams {
    range: Option<String>,
}

/// Parameters of a `Put`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct PutParams {
    pub content_type: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Parameters of a `List` (ListObjectsV2).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ListParams {
    #[serde(default)]
    pub prefix: String,
    pub delimiter: Option<String>,
    pub max_keys: Option<u32>,
    pub continuation_token: Option<String>,
    pub start_after: Option<String>,
}

/// An HTTP byte range as S3 accepts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=first-last`, both inclusive.
    Bounded { first: u64, last: u64 },
    /// `bytes=first-`.
    From(u64),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parses a `Range` header value.
    pub fn parse(value: &str) -> Result<Self, WireError> {
        let bad = || WireError::Range(value.chars().take(64).collect());
        let spec = value.trim().strip_prefix("bytes=").ok_or_else(bad)?;
        let (first, last) = spec.split_once('-').ok_or_else(bad)?;
        let number = |s: &str| s.trim().parse::<u64>().map_err(|_| bad());
        match (first.trim().is_empty(), last.trim().is_empty()) {
            (true, false) => Ok(ByteRange::Suffix(number(last)?)),
            (false, true) => Ok(ByteRange::From(number(first)?)),
            (false, false) => {
                let (first, last) = (number(first)?, number(last)?);
                if last < first {
                    return Err(bad());
                }
                Ok(ByteRange::Bounded { first, last })
            }
            (true, true) => Err(bad()),
        }
    }
}

fn text(bytes: &[u8], field: &'static str) -> Result<String, WireError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Utf8(field))
}

/// Whether `name` can name a function: 1 to 64 of a-z, 0-9, `_` and `-` (it names region
/// files and VM folders too, so nothing else is allowed).
pub fn is_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn function_name(bytes: &[u8]) -> Result<String, WireError> {
    let name = text(bytes, "function")?;
    if !is_function_name(&name) {
        return Err(WireError::Function(name.chars().take(64).collect()));
    }
    Ok(name)
}

/// Checks S3's bucket naming rules, which also keeps names safe as directory names.
fn bucket_name(bytes: &[u8]) -> Result<String, WireError> {
    let name = text(bytes, "bucket")?;
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let edges_ok = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if !(3..=63).contains(&name.len()) || !valid_chars || !edges_ok || name.contains("..") {
        return Err(WireError::Bucket(name.chars().take(64).collect()));
    }
    Ok(name)
}

fn json<T: for<'de> Deserialize<'de> + Default>(bytes: &[u8]) -> Result<T, WireError> {
    if bytes.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| WireError::Params(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn geometry() -> Geometry {
        Geometry::new(1 << 20, 64 << 10, 8, 2).unwrap()
    }

    fn request(
        op: Op,
        bucket: &str,
        key: &str,
        params: &str,
        body_len: u64,
    ) -> (CallDesc, Vec<u8>) {
        let desc = CallDesc {
            tag: 42,
            op: op as u16,
            buffer: 1,
            bucket_len: bucket.len() as u16,
            key_len: key.len() as u16,
            params_len: params.len() as u32,
            body_len,
            ..CallDesc::default()
        };
        (desc, [bucket, key, params].concat().into_bytes())
    }

    fn parse(desc: &CallDesc, args: &[u8]) -> Result<Call, WireError> {
        let envelope = Envelope::open(desc, &geometry())?;
        envelope.parse(&args[..envelope.args_len.min(args.len())])
    }

    #[test]
    fn parses_a_ranged_get() {
        let (desc, args) =
            request(Op::Get, "photos", "in/cat.jpg", r#"{"Range":"bytes=10-19"}"#, 0);
        assert_eq!(
            parse(&desc, &args),
            Ok(Call::Get {
                object: ObjectRef { bucket: "photos".into(), key: "in/cat.jpg".into() },
                range: Some(ByteRange::Bounded { first: 10, last: 19 }),
            })
        );
    }

    #[test]
    fn parses_a_list() {
        let (desc, args) = request(Op::List, "photos", "", r#"{"Prefix":"in/","MaxKeys":2}"#, 0);
        let Ok(Call::List { bucket, params }) = parse(&desc, &args) else { panic!() };
        assert_eq!(bucket, "photos");
        assert_eq!(params.prefix, "in/");
        assert_eq!(params.max_keys, Some(2));
    }

    #[test]
    fn parses_an_invoke() {
        let (desc, args) = request(Op::Invoke, "", "resize", r#"{"InvocationType":"Event"}"#, 9);
        let call = parse(&desc, &args).unwrap();
        assert_eq!(call, Call::Invoke { function: "resize".into(), kind: InvocationType::Event });
        let (desc, args) = request(Op::Invoke, "", "resize", "", 0);
        let call = parse(&desc, &args).unwrap();
        let sync =
            Call::Invoke { function: "resize".into(), kind: InvocationType::RequestResponse };
        assert_eq!(call, sync);
        for (bucket, function, params) in [
            ("", "../resize", ""),
            ("", "", ""),
            ("photos", "resize", ""),
            ("", "resize", r#"{"InvocationType":"Later"}"#),
            ("", "resize", r#"{"Qualifier":"2"}"#),
        ] {
            let (desc, args) = request(Op::Invoke, bucket, function, params, 0);
            let rejected = parse(&desc, &args).unwrap_err();
            assert_eq!(rejected.status(), Status::InvalidArgument, "{bucket} {function} {params}");
        }
    }

    #[test]
    fn rejects_what_a_guest_must_not_send() {
        let g = geometry();
        let (mut desc, args) = request(Op::Get, "photos", "k", "", 0);
        desc.op = 99;
        assert_eq!(parse(&desc, &args), Err(WireError::UnknownOp(99)));
        desc.op = Op::Get as u16;
        desc.buffer = g.guest_buffers;
        assert_eq!(parse(&desc, &args), Err(WireError::Buffer(g.guest_buffers)));
        desc.buffer = u32::MAX;
        assert_eq!(parse(&desc, &args), Err(WireError::Buffer(u32::MAX)));
        let (mut desc, args) = request(Op::Put, "photos", "k", "", 0);
        desc.body_len = u64::MAX;
        assert!(matches!(parse(&desc, &args), Err(WireError::Overflow { .. })));
        desc.body_len = g.buffer_size as u64;
        assert!(matches!(parse(&desc, &args), Err(WireError::Overflow { .. })));
        let (desc, args) = request(Op::Get, "../etc", "k", "", 0);
        assert!(matches!(parse(&desc, &args), Err(WireError::Bucket(_))));
        let (desc, args) = request(Op::Get, "photos", "k", r#"{"VersionId":"1"}"#, 0);
        assert!(matches!(parse(&desc, &args), Err(WireError::Params(_))));
        let (desc, args) = request(Op::Get, "photos", "", "", 0);
        assert_eq!(parse(&desc, &args), Err(WireError::EmptyKey));
        let (desc, args) = request(Op::Head, "photos", "k", "", 5);
        assert_eq!(parse(&desc, &args), Err(WireError::UnexpectedBody));
        let (desc, args) = request(Op::Read, "", "", "", 0);
        assert_eq!(parse(&desc, &args), Err(WireError::NoStream));
    }

    #[test]
    fn ranges() {
        assert_eq!(ByteRange::parse("bytes=5-"), Ok(ByteRange::From(5)));
        assert_eq!(ByteRange::parse("bytes=-5"), Ok(ByteRange::Suffix(5)));
        assert_eq!(ByteRange::parse("bytes=0-0"), Ok(ByteRange::Bounded { first: 0, last: 0 }));
        for bad in ["bytes=5-4", "bytes=-", "items=0-1", "bytes=a-b", "bytes=0-1,3-4"] {
            assert!(ByteRange::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_status_has_an_s3_code() {
        let meta = Status::NoSuchKey.error_meta("gone");
        let value: serde_json::Value = serde_json::from_slice(&meta).unwrap();
        assert_eq!(value["Code"], "NoSuchKey");
        assert_eq!(value["HTTPStatusCode"], 404);
    }

    proptest! {
        /// Arbitrary descriptors and bytes never panic and never name bytes outside the buffer.
        #[test]
        fn arbitrary_input_is_parsed_or_rejected(
            words in proptest::array::uniform8(any::<u64>()),
            args in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let desc = CallDesc {
                tag: words[0], op: (words[1] % 12) as u16, flags: (words[1] >> 16) as u16,
                buffer: (words[1] >> 32) as u32 % 8, bucket_len: words[2] as u16 % 64,
                key_len: (words[2] >> 16) as u16 % 64, params_len: (words[2] >> 32) as u32 % 64,
                body_len: words[3] % (1 << 17), stream: words[4], _reserved: [0; 3],
            };
            if let Ok(envelope) = Envelope::open(&desc, &geometry()) {
                prop_assert!(envelope.args_len + envelope.body_len <= envelope.buffer_len);
                let end = envelope.buffer_offset + envelope.buffer_len;
                prop_assert!(end as u64 <= geometry().region_size);
                let mut bytes = args.clone();
                bytes.resize(envelope.args_len, b'a');
                let _ = envelope.parse(&bytes);
            }
        }
    }
}
