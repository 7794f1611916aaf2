//! `List`: ListObjectsV2 over any store.
//!
//! S3 prefixes are plain string prefixes and listings are sorted by key; object_store lists by
//! path segment and a local directory lists unsorted. So the listing starts at the last `/` of
//! the prefix, keeps keys that really start with it, sorts, folds keys into `CommonPrefixes`
//! at the delimiter, and pages. The continuation token is the last key (or common prefix) of
//! the previous page.
//!
//! With write-back on, a listing first waits (up to `spool::LIST_PATIENCE`) for the spooled
//! puts and deletes under its prefix to reach the store, then lists the store.

use std::collections::BTreeSet;

use chrono::SecondsFormat;
use futures::TryStreamExt;
use nexus_channel::wire::{ListParams, Status};
use object_store::path::Path;
use object_store::ObjectMeta;
use serde_json::{json, Value};

use super::get::quoted;
use super::{Context, OpError, Out};
use crate::policy::Access;
use crate::served::{Answer, ServedRegion};
use crate::storage::key_path;

/// Keys per page unless the guest asks for fewer (S3's limit too).
const MAX_KEYS: u32 = 1000;

/// One entry of a page: an object or a common prefix.
enum Entry {
    Object(ObjectMeta),
    Prefix(String),
}

/// `List`.
pub async fn list(
    ctx: &Context,
    served: &ServedRegion,
    bucket: &str,
    params: &ListParams,
    out: Out<'_>,
) -> Result<Answer, OpError> {
    served.policy.check(Access::List, bucket, &params.prefix)?;
    let store = ctx.storage.bucket(bucket)?;
    if let Some(spool) = &ctx.spool {
        // The guest's own puts and deletes under the prefix show once they are in the store.
        spool.settle(bucket, &params.prefix).await;
    }
    let prefix = params.prefix.as_str();
    let dir = match prefix.rfind('/') {
        Some(i) if i > 0 => Some(key_path(&prefix[..i])?),
        _ => None,
    };
    let after = params.continuation_token.as_deref().or(params.start_after.as_deref());
    let listing = match after {
        Some(after) => store.list_with_offset(dir.as_ref(), &Path::from_iter(after.split('/'))),
        None => store.list(dir.as_ref()),
    };
    let mut objects: Vec<ObjectMeta> = match listing.try_collect().await {
        Ok(objects) => objects,
        Err(object_store::Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    objects.retain(|o| {
        let key = o.location.as_ref();
        key.starts_with(prefix) && after.is_none_or(|a| key > a)
    });
    objects.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
    let entries = fold(objects, prefix, params.delimiter.as_deref(), after);
    let max_keys = params.max_keys.unwrap_or(MAX_KEYS).min(MAX_KEYS);
    let truncated = entries.len() > max_keys as usize;
    let page = &entries[..entries.len().min(max_keys as usize)];
    let meta = page_meta(bucket, params, max_keys, page, truncated);
    let meta_len = out.meta(&meta).map_err(|_| {
        OpError::new(Status::InvalidArgument, "Listing does not fit a buffer; lower MaxKeys")
    })?;
    Ok(Answer { meta_len, ..Answer::default() })
}

/// Folds sorted keys into entries, grouping keys that continue past the delimiter.
fn fold(
    objects: Vec<ObjectMeta>,
    prefix: &str,
    delimiter: Option<&str>,
    after: Option<&str>,
) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut seen = BTreeSet::new();
    for object in objects {
        let key = object.location.as_ref();
        let common = delimiter.filter(|d| !d.is_empty()).and_then(|d| {
            let rest = &key[prefix.len()..];
            rest.find(d).map(|i| key[..prefix.len() + i + d.len()].to_owned())
        });
        match common {
            // A page that ended on a common prefix continues after all of its keys.
            Some(common) if after == Some(common.as_str()) => {}
            Some(common) => {
                if seen.insert(common.clone()) {
                    entries.push(Entry::Prefix(common));
                }
            }
            None => entries.push(Entry::Object(object)),
        }
    }
    entries
}

fn page_meta(
    bucket: &str,
    params: &ListParams,
    max_keys: u32,
    page: &[Entry],
    truncated: bool,
) -> Value {
    let mut contents = Vec::new();
    let mut prefixes = Vec::new();
    for entry in page {
        match entry {
            Entry::Object(o) => contents.push(json!({
                "Key": o.location.as_ref(),
                "LastModified": o.last_modified.to_rfc3339_opts(SecondsFormat::Millis, true),
                "ETag": o.e_tag.as_deref().map(quoted),
                "Size": o.size,
                "StorageClass": "STANDARD",
            })),
            Entry::Prefix(p) => prefixes.push(json!({ "Prefix": p })),
        }
    }
    let mut meta = json!({
        "IsTruncated": truncated,
        "Name": bucket,
        "Prefix": params.prefix,
        "MaxKeys": max_keys,
        "KeyCount": page.len(),
    });
    if !contents.is_empty() {
        meta["Contents"] = Value::from(contents);
    }
    if !prefixes.is_empty() {
        meta["CommonPrefixes"] = Value::from(prefixes);
    }
    if let Some(d) = &params.delimiter {
        meta["Delimiter"] = Value::from(d.as_str());
    }
    if let Some(t) = &params.continuation_token {
        meta["ContinuationToken"] = Value::from(t.as_str());
    }
    if let Some(s) = &params.start_after {
        meta["StartAfter"] = Value::from(s.as_str());
    }
    if truncated {
        let last = match page.last() {
            Some(Entry::Object(o)) => o.location.as_ref().to_owned(),
            Some(Entry::Prefix(p)) => p.clone(),
            None => String::new(),
        };
        meta["NextContinuationToken"] = Value::from(last);
    }
    meta
}
