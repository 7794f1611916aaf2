//! `List`: ListObjectsV2 over any store.
//!
//! S3 prefixes are plain string prefixes and listings are sorted by key; object_store lists by
//! path segment and a local directory lists unsorted. So the listing starts at the last `/` of
//! the prefix (after the continuation token, if any), keeps keys that really start with it,
//! folds keys into `CommonPrefixes` at the delimiter, and keeps only the first `MaxKeys + 1`
//! entries in key order while the listing streams by: memory is bounded by the page, not by
//! the prefix. A store that lists in key order (S3, GCS, Azure) is read only until the page
//! is known; a local directory is walked to its end. The continuation token is the last key
//! (or common prefix) of the previous page.
//!
//! With write-back on, a listing first waits (up to `spool::LIST_PATIENCE`) for the spooled
//! puts and deletes under its prefix to reach the store, then lists the store.

use std::collections::BTreeMap;

use chrono::SecondsFormat;
use futures::stream::BoxStream;
use futures::StreamExt;
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
    let max_keys = params.max_keys.unwrap_or(MAX_KEYS).min(MAX_KEYS);
    let scope = Scope { prefix, delimiter: params.delimiter.as_deref(), after };
    let in_order = ctx.storage.lists_in_order();
    let mut entries = first_entries(listing, &scope, max_keys as usize + 1, in_order).await?;
    let truncated = entries.len() > max_keys as usize;
    entries.truncate(max_keys as usize);
    let page = &entries[..];
    let meta = page_meta(bucket, params, max_keys, page, truncated);
    let meta_len = out.meta(&meta).map_err(|_| {
        OpError::new(Status::InvalidArgument, "Listing does not fit a buffer; lower MaxKeys")
    })?;
    Ok(Answer { meta_len, ..Answer::default() })
}

/// What a listing keeps: keys under `prefix` after `after`, folded at `delimiter`.
struct Scope<'a> {
    prefix: &'a str,
    delimiter: Option<&'a str>,
    after: Option<&'a str>,
}

impl Scope<'_> {
    /// The entry `object` belongs to, by name (its key, or the common prefix it folds into),
    /// or `None` if the listing skips it.
    fn entry(&self, object: ObjectMeta) -> Option<(String, Entry)> {
        let key = object.location.as_ref();
        if !key.starts_with(self.prefix) || self.after.is_some_and(|a| key <= a) {
            return None;
        }
        let common = self.delimiter.filter(|d| !d.is_empty()).and_then(|d| {
            let rest = &key[self.prefix.len()..];
            rest.find(d).map(|i| key[..self.prefix.len() + i + d.len()].to_owned())
        });
        match common {
            // A page that ended on a common prefix continues after all of its keys.
            Some(common) if self.after == Some(common.as_str()) => None,
            Some(common) => Some((common.clone(), Entry::Prefix(common))),
            None => Some((key.to_owned(), Entry::Object(object))),
        }
    }
}

/// The first `want` entries of `listing` in key order, never holding more than `want + 1`.
/// With `in_order` (the store lists by key), the listing is dropped as soon as they are known:
/// an entry's name never sorts before that of an earlier key.
async fn first_entries(
    mut listing: BoxStream<'_, object_store::Result<ObjectMeta>>,
    scope: &Scope<'_>,
    want: usize,
    in_order: bool,
) -> Result<Vec<Entry>, OpError> {
    let mut kept = BTreeMap::new();
    while let Some(object) = listing.next().await {
        let object = match object {
            Ok(object) => object,
            Err(object_store::Error::NotFound { .. }) => break,
            Err(e) => return Err(e.into()),
        };
        let past_prefix = in_order && object.location.as_ref() > scope.prefix;
        if past_prefix && !object.location.as_ref().starts_with(scope.prefix) {
            break;
        }
        let Some((name, entry)) = scope.entry(object) else { continue };
        if kept.contains_key(&name) {
            continue;
        }
        if in_order && kept.len() == want {
            break;
        }
        kept.insert(name, entry);
        if kept.len() > want {
            kept.pop_last();
        }
    }
    Ok(kept.into_values().collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

    /// Keys a local directory can hold too (no key is another's directory), in key order.
    const KEYS: [&str; 13] = [
        "a-", "a/b/c", "a/c", "a0", "ab/x", "b/1", "b/2", "b/3/x", "b/3/y", "b/4", "c/d/e", "c0",
        "z",
    ];

    /// The page as the whole sorted listing gives it.
    fn reference(scope: &Scope<'_>, want: usize) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for key in KEYS {
            let meta = ObjectMeta {
                location: Path::from(key),
                last_modified: chrono::Utc::now(),
                size: 0,
                e_tag: None,
                version: None,
            };
            if let Some((name, _)) = scope.entry(meta) {
                if names.last() != Some(&name) {
                    names.push(name);
                }
            }
        }
        names.truncate(want);
        names
    }

    fn name(entry: &Entry) -> String {
        match entry {
            Entry::Object(o) => o.location.to_string(),
            Entry::Prefix(p) => p.clone(),
        }
    }

    #[tokio::test]
    async fn pages_match_a_sorted_listing_in_any_store_order() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let memory = InMemory::new();
        for key in KEYS {
            local.put(&Path::from(key), PutPayload::new()).await.unwrap();
            memory.put(&Path::from(key), PutPayload::new()).await.unwrap();
        }
        let stores: [(&dyn ObjectStore, bool); 2] = [(&memory, true), (&local, false)];
        for (store, in_order) in stores {
            for prefix in ["", "a", "a/", "b/", "b/3", "c/d/e", "q"] {
                for delimiter in [None, Some("/")] {
                    for after in [None, Some("a/b"), Some("b/3/"), Some("b/3/x")] {
                        for want in [1, 2, 3, 100] {
                            let scope = Scope { prefix, delimiter, after };
                            let listing = match after {
                                Some(a) => store.list_with_offset(None, &Path::from(a)),
                                None => store.list(None),
                            };
                            let got: Vec<String> = first_entries(listing, &scope, want, in_order)
                                .await
                                .unwrap()
                                .iter()
                                .map(name)
                                .collect();
                            let expected = reference(&scope, want);
                            assert_eq!(got, expected, "{prefix:?} {delimiter:?} {after:?} {want}");
                        }
                    }
                }
            }
        }
    }
}
