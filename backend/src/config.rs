//! The backend's YAML configuration (`configs/nexus.yaml` documents every field).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::policy::Policy;

/// Errors loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("Cannot read config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A field is wrong; the message names it and says why.
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub api: ApiConfig,
    pub storage: StorageConfig,
    pub region: RegionConfig,
    pub limits: Limits,
    pub cache: CacheConfig,
    pub default_policy: Policy,
    pub functions: BTreeMap<String, FunctionConfig>,
}

/// Where the control API and metrics listen.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub socket: PathBuf,
    pub listen: Option<SocketAddr>,
}

/// The object store behind every bucket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub url: String,
    pub options: BTreeMap<String, String>,
}

/// Shape of each VM's region.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    pub dir: PathBuf,
    pub size: u64,
    pub buffer_size: u64,
    pub ring_capacity: u32,
    pub host_buffers: u32,
    pub spin_us: u64,
}

/// Concurrency bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_inflight: usize,
    pub max_inflight_per_region: usize,
}

/// The backend's in-memory object cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    pub max_bytes: u64,
    pub max_object_bytes: u64,
    pub ttl_secs: u64,
}

/// Per-function settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    pub policy: Policy,
}

impl Config {
    /// Loads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates YAML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        serde_norway::from_str(text)
            .map_err(|e| ConfigError::Invalid { origin: origin.into(), message: e.to_string() })
    }

    /// The policy for `function`: its own, or the default.
    pub fn policy_for(&self, function: &str) -> &Policy {
        self.functions.get(function).map_or(&self.default_policy, |f| &f.policy)
    }
}
