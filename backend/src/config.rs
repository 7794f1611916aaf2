//! The backend's YAML configuration (`configs/nexus.yaml` documents every field).
//!
//! Every field has a default, unknown fields are rejected with their line and column, and a
//! parsed configuration is validated as a whole before it is returned, so the rest of the backend
//! can trust it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use nexus_channel::layout::{Geometry, GeometryError};
pub use nexus_channel::wire::is_function_name;
use serde::{Deserialize, Serialize};

use crate::policy::Policy;

const MIB: u64 = 1 << 20;

/// Object-store URL schemes the backend serves; `memory` is for tests.
const SCHEMES: [&str; 5] = ["file", "s3", "gs", "az", "memory"];

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
    /// A field is wrong; the message names it (or its line) and says why.
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub api: ApiConfig,
    pub storage: StorageConfig,
    pub region: RegionConfig,
    pub limits: Limits,
    pub cache: CacheConfig,
    /// The policy of every function not listed in `functions`.
    pub default_policy: Policy,
    pub functions: BTreeMap<String, FunctionConfig>,
    pub vm: VmConfig,
    pub writeback: WritebackConfig,
    pub probes: ProbesConfig,
}

/// Where the control API and metrics listen.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Unix socket of the control API.
    pub socket: PathBuf,
    /// Optional TCP address serving the API and `/metrics`.
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token every TCP request but `GET /metrics` must carry; required
    /// with `listen`.
    pub token_file: Option<PathBuf>,
    /// Directory every deploy's `code` must lie in; required with `listen`. `None`: any.
    pub code_root: Option<PathBuf>,
}

/// The object store behind every bucket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `file://`, `s3://`, `gs://`, `az://` (or `memory://` in tests).
    pub url: String,
    /// Passed to `object_store` as is (endpoint, credentials, region...).
    pub options: BTreeMap<String, String>,
    /// Seconds within which a guest's call to a remote store ends, answered or failed: a slow
    /// or unreachable store becomes an error the handler sees, never a hang.
    pub call_timeout_secs: u64,
}

/// Shape of each VM's region.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegionConfig {
    /// Directory of the region files (a tmpfs or hugetlbfs mount).
    pub dir: PathBuf,
    #[serde(deserialize_with = "byte_size::deserialize")]
    pub size: u64,
    #[serde(deserialize_with = "byte_size::deserialize")]
    pub buffer_size: u64,
    pub ring_capacity: u32,
    pub host_buffers: u32,
    /// Bytes at the end of the region for objects prefetched for an invocation; `None` is
    /// half the region.
    #[serde(deserialize_with = "byte_size::deserialize_some")]
    pub staging_size: Option<u64>,
    /// How long the host polls a ring before sleeping on its futex, in microseconds.
    pub spin_us: u64,
    /// Group of a VMM that runs as another user than the backend: it gets read access to
    /// `dir` and read-write access to the region files. `None`: the backend's user alone.
    pub group: Option<String>,
}

/// Concurrency bounds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_inflight: usize,
    pub max_inflight_per_region: usize,
}

/// The backend's in-memory object cache.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(deserialize_with = "byte_size::deserialize")]
    pub max_bytes: u64,
    #[serde(deserialize_with = "byte_size::deserialize")]
    pub max_object_bytes: u64,
    pub ttl_secs: u64,
}

/// Per-function settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FunctionConfig {
    pub policy: Policy,
    /// When the function's puts and deletes complete, with write-back on.
    pub write_back: WriteBack,
}

/// When a put (or delete) completes for the guest, with write-back on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteBack {
    /// Once the bytes are durable in the spool; the upload follows in the background.
    #[default]
    Async,
    /// Once the bytes are durable in the spool and the upload succeeded.
    Strict,
}

/// The write-back spool: puts are acknowledged once durable on the host and uploaded after.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WritebackConfig {
    /// Off: every put and delete goes to the store before it completes (no spool).
    pub enabled: bool,
    /// Directory of the spool (a persistent local disk, not a tmpfs).
    pub dir: PathBuf,
    /// Bytes waiting for upload beyond which new puts wait for room.
    #[serde(deserialize_with = "byte_size::deserialize")]
    pub max_backlog_bytes: u64,
    /// Uploads one function may have open at once; more are refused (S3's `SlowDown`).
    pub max_function_uploads: u32,
    /// Bytes one function may hold in the spool (open uploads and entries waiting for
    /// upload), charged as they arrive; more are refused (S3's `SlowDown`).
    #[serde(deserialize_with = "byte_size::deserialize")]
    pub max_function_bytes: u64,
}

/// The eBPF probes (per-VM CPU, memory and KVM exits on `/metrics`; see `ebpf/`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbesConfig {
    /// Load them at start; they also need the backend to run as root.
    pub enabled: bool,
}

/// How function VMs run.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmConfig {
    /// Guest images, one folder per flavour (`cargo xtask guest-image` builds them).
    pub images: PathBuf,
    /// Code disks and VM working folders.
    pub state_dir: PathBuf,
    /// `auto` (KVM where /dev/kvm can run a guest, else TCG), `kvm` or `tcg`.
    pub accel: String,
    /// Seconds a VM may take from start to its runtime being ready.
    pub boot_timeout_secs: u64,
    /// The VMM of functions whose spec names none.
    pub vmm: VmmKind,
    /// The `cloud-hypervisor` binary (built with `--features ivshmem`); `None`:
    /// `$NEXUS_CLOUD_HYPERVISOR`, else `PATH`.
    pub cloud_hypervisor: Option<PathBuf>,
    /// Warm VMs a function may have at once, unless its spec says otherwise.
    pub max_vms: u32,
    /// Seconds an invocation waits for one of its function's VMs when all are busy.
    pub queue_wait_secs: u64,
    /// Seconds an idle VM is kept before it is stopped.
    pub keep_alive_secs: u64,
    /// Seconds past a function's timeout that the backend waits for its guest's answer (the
    /// guest enforces the timeout itself) before it gives up on the VM and recycles it.
    pub timeout_grace_secs: u64,
    /// MiB of TCG's translation cache per QEMU VM under emulation; `None`: QEMU's default.
    pub tcg_cache_mib: Option<u32>,
}

/// The most VMs one function may have.
pub const MAX_VMS: u32 = 256;

/// The VMMs function VMs can run on; each is an adapter of `nexus-plugin`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmmKind {
    #[default]
    Qemu,
    CloudHypervisor,
    /// A libvirt domain per VM (`qemu:///system`), which operators also manage with virsh.
    Libvirt,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            images: "/var/lib/nexus/images".into(),
            state_dir: "/var/lib/nexus/vms".into(),
            accel: "auto".into(),
            boot_timeout_secs: 120,
            vmm: VmmKind::default(),
            cloud_hypervisor: None,
            max_vms: 1,
            queue_wait_secs: 30,
            keep_alive_secs: 600,
            timeout_grace_secs: 5,
            tcg_cache_mib: None,
        }
    }
}

impl Default for WritebackConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: "/var/lib/nexus/spool".into(),
            max_backlog_bytes: 4 << 30,
            max_function_uploads: 32,
            max_function_bytes: 1 << 30,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            socket: "/run/nexus/nexus.sock".into(),
            listen: None,
            token_file: None,
            code_root: None,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: "file:///var/lib/nexus/objects".into(),
            options: BTreeMap::new(),
            call_timeout_secs: 60,
        }
    }
}

impl Default for RegionConfig {
    fn default() -> Self {
        Self {
            dir: "/dev/shm/nexus".into(),
            size: 128 * MIB,
            buffer_size: 2 * MIB,
            ring_capacity: 64,
            host_buffers: 4,
            staging_size: None,
            spin_us: 50,
            group: None,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_inflight: 256, max_inflight_per_region: 16 }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { max_bytes: 256 * MIB, max_object_bytes: 64 * MIB, ttl_secs: 30 }
    }
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
        let invalid = |message| ConfigError::Invalid { origin: origin.into(), message };
        let config: Self = serde_norway::from_str(text).map_err(|e| invalid(syntax_message(&e)))?;
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// The policy for `function`: its own, or the default.
    pub fn policy_for(&self, function: &str) -> &Policy {
        self.functions.get(function).map_or(&self.default_policy, |f| &f.policy)
    }

    /// The write-back mode of `function`: its own, or `async`.
    pub fn write_back_for(&self, function: &str) -> WriteBack {
        self.functions.get(function).map_or(WriteBack::Async, |f| f.write_back)
    }

    /// Checks what the types cannot; the error is `field: reason`.
    fn validate(&self) -> Result<(), String> {
        self.region.checked_geometry().map_err(|e| self.region.explain(e))?;
        self.api.check()?;
        if self.limits.max_inflight == 0 {
            return Err("limits.max_inflight: must be at least 1".into());
        }
        if self.limits.max_inflight_per_region == 0 {
            return Err("limits.max_inflight_per_region: must be at least 1".into());
        }
        let url = &self.storage.url;
        match url.split_once("://") {
            // A bucket there would mislead: every bucket a function names is the store's
            // bucket of that name.
            Some((scheme @ ("s3" | "gs" | "az"), rest)) if !rest.is_empty() => {
                return Err(format!(
                    "storage.url: {url:?}: {rest:?} is not used, buckets map to {scheme} buckets \
                     of the same name; write \"{scheme}://\""
                ))
            }
            Some((scheme, _)) if SCHEMES.contains(&scheme) => {}
            _ => {
                return Err(format!(
                    "storage.url: {url:?} has no supported scheme ({})",
                    SCHEMES.join(", ")
                ))
            }
        }
        if self.cache.max_bytes > 0 && self.cache.max_object_bytes > self.cache.max_bytes {
            return Err(format!(
                "cache.max_object_bytes: {} exceeds cache.max_bytes ({})",
                self.cache.max_object_bytes, self.cache.max_bytes
            ));
        }
        if !(1..=MAX_VMS).contains(&self.vm.max_vms) {
            return Err(format!("vm.max_vms: {} is not between 1 and {MAX_VMS}", self.vm.max_vms));
        }
        if !["auto", "kvm", "tcg"].contains(&self.vm.accel.as_str()) {
            return Err(format!("vm.accel: {:?} is not auto, kvm or tcg", self.vm.accel));
        }
        if self.storage.call_timeout_secs < 2 {
            return Err("storage.call_timeout_secs: must be at least 2".into());
        }
        if self.vm.boot_timeout_secs == 0 {
            return Err("vm.boot_timeout_secs: must be at least 1".into());
        }
        if self.writeback.max_backlog_bytes == 0 {
            return Err("writeback.max_backlog_bytes: must be at least 1 (to turn write-back \
                        off, set writeback.enabled: false)"
                .into());
        }
        if self.writeback.max_function_uploads == 0 || self.writeback.max_function_bytes == 0 {
            return Err(
                "writeback.max_function_uploads, max_function_bytes: must be at least 1".into()
            );
        }
        if self.writeback.enabled && self.writeback.dir.as_os_str().is_empty() {
            return Err("writeback.dir: must not be empty".into());
        }
        check_policy("default_policy", &self.default_policy)?;
        for (name, function) in &self.functions {
            if !is_function_name(name) {
                return Err(format!(
                    "functions: {name:?} is not a function name (a-z, 0-9, _ and -, at most 64)"
                ));
            }
            check_policy(&format!("functions.{name}.policy"), &function.policy)?;
        }
        Ok(())
    }
}

impl ApiConfig {
    /// A TCP listener reaches more than the socket's owner: it needs a token and a code root.
    fn check(&self) -> Result<(), String> {
        if let Some(root) = self.code_root.as_ref().filter(|root| !root.is_absolute()) {
            return Err(format!("api.code_root: {} is not an absolute path", root.display()));
        }
        let Some(listen) = self.listen else { return Ok(()) };
        if self.token_file.is_none() {
            return Err(format!(
                "api.token_file: must be set when api.listen is ({listen}): every request on \
                 TCP but GET /metrics needs the token it holds"
            ));
        }
        if self.code_root.is_none() {
            return Err(format!(
                "api.code_root: must be set when api.listen is ({listen}): a deploy names a \
                 host directory as its code, which must lie inside it"
            ));
        }
        Ok(())
    }
}

impl RegionConfig {
    /// The region layout.
    ///
    /// # Panics
    /// If the geometry is invalid, which [`Config::parse`] rejects.
    pub fn geometry(&self) -> Geometry {
        self.checked_geometry().expect("region geometry is validated by Config::parse")
    }

    fn checked_geometry(&self) -> Result<Geometry, GeometryError> {
        Geometry::with_staging(
            self.size,
            self.buffer_size,
            self.ring_capacity,
            self.host_buffers,
            self.staging_size.unwrap_or(self.size / 2),
        )
    }

    /// Names the field behind a geometry error.
    fn explain(&self, error: GeometryError) -> String {
        match error {
            GeometryError::RegionSize(size) => {
                format!("region.size: {size} is not a power of two of at least 1 MiB")
            }
            GeometryError::BufferSize(size) => {
                format!("region.buffer_size: {size} is not a power of two from 4 KiB to 1 GiB")
            }
            GeometryError::RingCapacity(capacity) => {
                format!("region.ring_capacity: {capacity} is not a power of two from 2 to 4096")
            }
            GeometryError::StagingSize(size) => format!(
                "region.staging_size: {size} is not a multiple of 4 KiB smaller than region.size"
            ),
            GeometryError::TooFewBuffers { fits, host } => format!(
                "region.host_buffers: {host} leaves no guest buffer; only {fits} buffers of {} \
                 bytes fit in the region beside its staging area",
                self.buffer_size
            ),
            other => format!("region: {other}"),
        }
    }
}

/// Checks a policy whose path in the file is `at`.
fn check_policy(at: &str, policy: &Policy) -> Result<(), String> {
    for (i, grant) in policy.grants.iter().enumerate() {
        if grant.bucket.is_empty() {
            return Err(format!("{at}.grants[{i}].bucket: must not be empty"));
        }
    }
    if let Some(bad) = policy.invoke.iter().find(|f| !is_function_name(f)) {
        return Err(format!("{at}.invoke: {bad:?} is not a function name"));
    }
    if policy.requests_per_second == Some(0) {
        return Err(format!("{at}.requests_per_second: must be at least 1"));
    }
    match (policy.burst, policy.requests_per_second) {
        (Some(0), _) => Err(format!("{at}.burst: must be at least 1")),
        (Some(_), None) => Err(format!("{at}.burst: is set without requests_per_second")),
        _ => Ok(()),
    }
}

/// A YAML error with its position. serde_norway leaves out "line 1 column 1", so it is added.
fn syntax_message(error: &serde_norway::Error) -> String {
    let message = error.to_string();
    match error.location() {
        Some(at) if at.line() == 1 && at.column() == 1 => format!("{message} at line 1 column 1"),
        _ => message,
    }
}

/// Byte sizes written as an integer or as a string with a binary unit: `4096`, `"4096 B"`,
/// `512KiB`, `2 MiB`, `5GiB`, `1TiB`.
pub(crate) mod byte_size {
    use std::fmt;

    use serde::de::{self, Deserializer, Unexpected, Visitor};

    /// Deserializes a byte size; use with `#[serde(deserialize_with)]`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_any(ByteSize)
    }

    /// As [`deserialize`], for an optional field (absent: `None`, with `#[serde(default)]`).
    pub fn deserialize_some<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<u64>, D::Error> {
        deserialize(deserializer).map(Some)
    }

    /// Parses `4096`, `4096B`, `512KiB`, `2 MiB`...; `None` if malformed or above `u64::MAX`.
    pub fn parse(text: &str) -> Option<u64> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let shift = match unit.trim_start() {
            "" | "B" => 0,
            "KiB" => 10,
            "MiB" => 20,
            "GiB" => 30,
            "TiB" => 40,
            _ => return None,
        };
        digits.parse::<u64>().ok()?.checked_mul(1 << shift)
    }

    struct ByteSize;

    impl Visitor<'_> for ByteSize {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a byte size such as 4096, 512KiB, 2 MiB or 5GiB")
        }

        fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<u64, E> {
            Ok(bytes)
        }

        fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<u64, E> {
            u64::try_from(bytes).map_err(|_| E::invalid_value(Unexpected::Signed(bytes), &self))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
            parse(text).ok_or_else(|| E::invalid_value(Unexpected::Str(text), &self))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Access, Grant};

    const KIB: u64 = 1 << 10;
    const GIB: u64 = 1 << 30;

    const MINIMAL: &str = r#"
api: { socket: /tmp/x/nexus.sock }
storage: { url: "file:///tmp/x/objects" }
region: { dir: /tmp/x/regions }
default_policy:
  grants: [{ bucket: test-bucket, access: [read, write, list, delete] }]
"#;

    fn error(text: &str) -> String {
        Config::parse(text, "configs/x.yaml").unwrap_err().to_string()
    }

    #[test]
    fn minimal_file_takes_defaults() {
        let config = Config::parse(MINIMAL, "minimal").unwrap();
        let expected = Config {
            api: ApiConfig { socket: "/tmp/x/nexus.sock".into(), ..Default::default() },
            storage: StorageConfig { url: "file:///tmp/x/objects".into(), ..Default::default() },
            region: RegionConfig { dir: "/tmp/x/regions".into(), ..Default::default() },
            default_policy: Policy {
                grants: vec![Grant {
                    bucket: "test-bucket".into(),
                    prefix: String::new(),
                    access: vec![Access::Read, Access::Write, Access::List, Access::Delete],
                }],
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(config, expected);
        assert_eq!(config.default_policy.max_object_size, 5 * GIB);
        assert_eq!(
            config.region.geometry(),
            Geometry::with_staging(128 * MIB, 2 * MIB, 64, 4, 64 * MIB).unwrap()
        );
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert!(Config::default().default_policy.grants.is_empty());
    }

    #[test]
    fn example_config_documents_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/nexus.yaml");
        let config = Config::load(&path).unwrap();
        let thumbnailer = config.functions.get("thumbnailer").expect("example function");
        assert_eq!(thumbnailer.policy.requests_per_second, Some(200));
        assert_eq!(thumbnailer.policy.burst, Some(400));
        assert_eq!(thumbnailer.policy.max_object_size, 512 * MIB);
        assert_eq!(thumbnailer.policy.grants.len(), 2);
        assert_eq!(thumbnailer.write_back, WriteBack::Async);
        // Everything else in the example is the default, as its comments say.
        assert_eq!(Config { functions: BTreeMap::new(), ..config }, Config::default());
    }

    #[test]
    fn byte_sizes() {
        for (text, bytes) in [
            ("4096", 4096),
            ("4096B", 4096),
            ("512KiB", 512 * KIB),
            ("2 MiB", 2 * MIB),
            ("64MiB", 64 * MIB),
            ("5GiB", 5 * GIB),
            ("1TiB", 1 << 40),
        ] {
            let yaml = format!("max_bytes: {text}\nmax_object_bytes: \"{text}\"");
            let cache: CacheConfig = serde_norway::from_str(&yaml).unwrap();
            assert_eq!((cache.max_bytes, cache.max_object_bytes), (bytes, bytes), "{text}");
        }
        for bad in ["", "MiB", "2 MB", "2mib", "1.5GiB", "-1", "99999999999TiB"] {
            assert_eq!(byte_size::parse(bad), None, "{bad}");
        }
        let message = error("cache: { max_bytes: 2MB }");
        assert!(message.contains("invalid value: string \"2MB\""), "{message}");
        assert!(message.contains("line 1 column 21"), "{message}");
        assert!(error("cache: { max_bytes: -1 }").contains("invalid value: integer `-1`"));
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_line() {
        let message = error("api: { socket: /tmp/s }\nregion:\n  dir: /tmp\n  sise: 1MiB\n");
        assert!(message.starts_with("configs/x.yaml: "), "{message}");
        assert!(message.contains("unknown field `sise`"), "{message}");
        assert!(message.contains("line 4 column 3"), "{message}");

        let message = error("apii: {}\n");
        assert!(message.contains("unknown field `apii`"), "{message}");
        assert!(message.contains("line 1 column 1"), "{message}");

        let message = error("default_policy: { grants: [{ bucket: b, acess: [read] }] }");
        assert!(message.contains("unknown field `acess`"), "{message}");
        assert!(message.contains("line 1"), "{message}");
    }

    #[test]
    fn invalid_values_name_their_field() {
        for (yaml, expected) in [
            (
                "region: { size: 3000000 }",
                "region.size: 3000000 is not a power of two of at least 1 MiB",
            ),
            ("region: { buffer_size: 5000 }", "region.buffer_size: 5000 is not a power of two"),
            ("region: { ring_capacity: 3 }", "region.ring_capacity: 3 is not a power of two"),
            (
                "region: { size: 4MiB, staging_size: 0, host_buffers: 2 }",
                "region.host_buffers: 2 leaves no guest buffer",
            ),
            (
                "region: { staging_size: 5000 }",
                "region.staging_size: 5000 is not a multiple of 4 KiB",
            ),
            ("limits: { max_inflight: 0 }", "limits.max_inflight: must be at least 1"),
            ("limits: { max_inflight_per_region: 0 }", "limits.max_inflight_per_region: must be"),
            ("storage: { url: /var/objects }", "storage.url: \"/var/objects\" has no supported"),
            ("storage: { url: \"ftp://x\" }", "storage.url: \"ftp://x\" has no supported"),
            ("storage: { call_timeout_secs: 1 }", "storage.call_timeout_secs: must be at least 2"),
            (
                "storage: { url: \"s3://nexus-objects\" }",
                "storage.url: \"s3://nexus-objects\": \"nexus-objects\" is not used, buckets map",
            ),
            (
                "cache: { max_bytes: 1MiB }",
                "cache.max_object_bytes: 67108864 exceeds cache.max_bytes",
            ),
            ("functions: { Thumb: {} }", "functions: \"Thumb\" is not a function name"),
            ("functions: { \"\": {} }", "functions: \"\" is not a function name"),
            (
                "functions: { f: { policy: { grants: [{ bucket: '', access: [] }] } } }",
                "functions.f.policy.grants[0].bucket: must not be empty",
            ),
            (
                "default_policy: { requests_per_second: 0 }",
                "default_policy.requests_per_second: must",
            ),
            ("default_policy: { requests_per_second: 5, burst: 0 }", "default_policy.burst: must"),
            (
                "default_policy: { requests_per_second: null, burst: 5 }",
                "default_policy.burst: is set without",
            ),
            ("writeback: { max_backlog_bytes: 0 }", "writeback.max_backlog_bytes: must be"),
            ("writeback: { dir: '' }", "writeback.dir: must not be empty"),
            (
                "api: { listen: \"127.0.0.1:9464\", code_root: /srv }",
                "api.token_file: must be set when api.listen is (127.0.0.1:9464)",
            ),
            (
                "api: { listen: \"127.0.0.1:9464\", token_file: /etc/nexus/token }",
                "api.code_root: must be set when api.listen is (127.0.0.1:9464)",
            ),
            (
                "api: { code_root: srv/functions }",
                "api.code_root: srv/functions is not an absolute path",
            ),
        ] {
            let message = error(yaml);
            assert!(message.starts_with(&format!("configs/x.yaml: {expected}")), "{message}");
        }
    }

    #[test]
    fn storage_schemes() {
        for url in ["file:///srv", "s3://", "gs://", "az://", "memory://"] {
            Config::parse(&format!("storage: {{ url: \"{url}\" }}"), "t").unwrap();
        }
    }

    #[test]
    fn functions_get_their_own_policy() {
        let yaml = "functions: { f: { policy: { grants: [{ bucket: b, access: [read] }] } } }";
        let config = Config::parse(yaml, "t").unwrap();
        assert_eq!(config.policy_for("f").grants.len(), 1);
        assert!(config.policy_for("other").grants.is_empty());
    }

    #[test]
    fn functions_choose_their_write_back() {
        let yaml = "writeback: { dir: /tmp/spool, max_backlog_bytes: 1GiB }\n\
                    functions: { f: { write_back: strict }, g: { write_back: async }, h: {} }";
        let config = Config::parse(yaml, "t").unwrap();
        assert_eq!(config.writeback.max_backlog_bytes, GIB);
        assert!(config.writeback.enabled);
        assert_eq!(config.write_back_for("f"), WriteBack::Strict);
        assert_eq!(config.write_back_for("g"), WriteBack::Async);
        assert_eq!(config.write_back_for("h"), WriteBack::Async);
        assert_eq!(config.write_back_for("unlisted"), WriteBack::Async);
        let message = error("functions: { f: { write_back: later } }");
        assert!(message.contains("unknown variant `later`"), "{message}");
    }

    #[test]
    fn unreadable_file() {
        let error = Config::load(Path::new("/nonexistent/nexus.yaml")).unwrap_err();
        assert_eq!(error.to_string(), "Cannot read config /nonexistent/nexus.yaml");
    }
}
