//! Per-function access policy: which buckets and prefixes a function may touch, and how.

use serde::Deserialize;

/// What a call does to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    List,
    Delete,
}

/// Why a call was denied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Denied {
    /// No grant covers the bucket, prefix and access.
    #[error("{access:?} access to {bucket}/{key} is not allowed for this function")]
    NotGranted { access: Access, bucket: String, key: String },
    /// The object is larger than the policy allows.
    #[error("Object of {size} bytes exceeds the {max}-byte limit for this function")]
    TooLarge { size: u64, max: u64 },
}

/// A function's policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub grants: Vec<Grant>,
    pub max_object_size: u64,
}

/// Access to the keys of one bucket that start with `prefix`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    pub access: Vec<Access>,
}

impl Policy {
    /// Checks `access` to `key` (a list prefix for `Access::List`) in `bucket`.
    pub fn check(&self, access: Access, bucket: &str, key: &str) -> Result<(), Denied> {
        let granted = self.grants.iter().any(|g| {
            g.bucket == bucket && key.starts_with(&g.prefix) && g.access.contains(&access)
        });
        if granted {
            Ok(())
        } else {
            Err(Denied::NotGranted { access, bucket: bucket.into(), key: key.into() })
        }
    }

    /// Checks an object size against the limit.
    pub fn check_size(&self, size: u64) -> Result<(), Denied> {
        if size > self.max_object_size {
            return Err(Denied::TooLarge { size, max: self.max_object_size });
        }
        Ok(())
    }
}
