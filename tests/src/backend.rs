//! A real `nexus backend` process with its own config, socket, regions, write-back spool and
//! log in a tempdir. It can be killed (SIGKILL, nothing cleaned up) and restarted on the same
//! tempdir, as after a crash. A random API token is in `{dir}/api.token`, for an `api.listen`.

use std::fs::{self, File};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nexus_backend::client::{request, Endpoint};
use tempfile::TempDir;

use crate::error::tail;
use crate::garage::free_ports;
use crate::HarnessError;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_LINES: usize = 40;

/// A running backend, stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Backend {
    pub socket: PathBuf,
    /// Where it serves the API and `/metrics` over TCP, if asked to ([`Backend::start_on_tcp`]).
    pub listen: Option<SocketAddr>,
    /// The API token (in `token_file`), for a TCP listener.
    pub token: String,
    /// `{dir}/api.token`, mode 0600: what `api.token_file` names.
    pub token_file: PathBuf,
    /// The tempdir holding config, socket, spool, log (and a local store, if used).
    pub dir: PathBuf,
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    _dir: TempDir,
    /// The region files: on tmpfs as in production (`/dev/shm`), where there is one.
    _regions: TempDir,
}

impl Backend {
    /// Starts `binary` with `settings` (YAML for `storage`, `cache`, `default_policy`,
    /// `functions`, ...; `{dir}` stands for the backend's tempdir). `local_buckets` are created
    /// as directories under `{dir}/objects`, the local store's buckets. Unless `settings` has a
    /// `writeback:` section, the write-back spool is `{dir}/spool`; unless it has an `api:`
    /// section (whose socket must then be `{dir}/nexus.sock`), the API is that socket alone.
    pub fn start(
        binary: &Path,
        settings: &str,
        local_buckets: &[&str],
    ) -> Result<Self, HarnessError> {
        Self::start_with(binary, "size: 32MiB, buffer_size: 1MiB", settings, local_buckets)
    }

    /// [`Backend::start`] with the region geometry given as YAML flow fields (`size: 64MiB, …`).
    pub fn start_with(
        binary: &Path,
        region: &str,
        settings: &str,
        local_buckets: &[&str],
    ) -> Result<Self, HarnessError> {
        Self::start_inner(binary, region, settings, local_buckets, None)
    }

    /// [`Backend::start`], also serving the API and `/metrics` on a free loopback TCP port
    /// (`listen`), e.g. for a Prometheus server to scrape; deploys' code must be in the
    /// workspace (`api.code_root`).
    pub fn start_on_tcp(binary: &Path, settings: &str) -> Result<Self, HarnessError> {
        let [port] = free_ports()?;
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        Self::start_inner(binary, "size: 32MiB, buffer_size: 1MiB", settings, &[], Some(listen))
    }

    fn start_inner(
        binary: &Path,
        region: &str,
        settings: &str,
        local_buckets: &[&str],
        listen: Option<SocketAddr>,
    ) -> Result<Self, HarnessError> {
        let tmp = tempfile::tempdir().map_err(HarnessError::io("create a backend tempdir"))?;
        let dir = tmp.path().to_owned();
        let shm = Path::new("/dev/shm");
        let regions = tempfile::Builder::new()
            .prefix("nexus-test-regions-")
            .tempdir_in(if shm.is_dir() { shm } else { &dir })
            .map_err(HarnessError::io("create a regions tempdir"))?;
        // The backend refuses a region directory others may read.
        fs::set_permissions(regions.path(), fs::Permissions::from_mode(0o700))
            .map_err(HarnessError::io("make the regions tempdir private"))?;
        for bucket in local_buckets {
            fs::create_dir_all(dir.join("objects").join(bucket))
                .map_err(HarnessError::io("create a local bucket"))?;
        }
        let socket = dir.join("nexus.sock");
        let (token, token_file) = write_token(&dir)?;
        let mut config = format!(
            "region: {{ dir: {regions}, {region} }}\n{settings}",
            regions = regions.path().display(),
            settings = settings.replace("{dir}", &dir.display().to_string()),
        );
        if !settings.contains("api:") {
            let listen = listen.map(|addr| {
                let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(&dir);
                format!(
                    ", listen: \"{addr}\", token_file: {}, code_root: {}",
                    token_file.display(),
                    workspace.display()
                )
            });
            let listen = listen.unwrap_or_default();
            config += &format!("\napi: {{ socket: {}{listen} }}\n", socket.display());
        }
        if !settings.contains("writeback:") {
            config += &format!("\nwriteback: {{ dir: {}/spool }}\n", dir.display());
        }
        let config_path = dir.join("nexus.yaml");
        fs::write(&config_path, config).map_err(HarnessError::io("write the backend config"))?;
        let log = dir.join("backend.log");
        let mut backend = Self {
            socket,
            listen,
            token,
            token_file,
            dir,
            binary: binary.to_owned(),
            config: config_path,
            log,
            child: None,
            _dir: tmp,
            _regions: regions,
        };
        backend.launch()?;
        Ok(backend)
    }

    /// Starts the process on the tempdir's config, appending to its log, and waits until it
    /// answers.
    fn launch(&mut self) -> Result<(), HarnessError> {
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(HarnessError::io("open the backend log"))?;
        let child = Command::new(&self.binary)
            .args(["backend", "--config"])
            .arg(&self.config)
            .env("NEXUS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(HarnessError::io("open the backend log"))?)
            .stderr(log_file)
            .spawn()
            .map_err(HarnessError::io(format!("start {}", self.binary.display())))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Kills the backend with SIGKILL, as a crash would: no clean-up, the spool stays as it is.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean it has already exited; `wait` reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the backend again on the same tempdir, config, spool and log (after
    /// [`Backend::kill`] or [`Backend::stop`]); regions are the new process's own.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        self.launch()
    }

    /// The whole log, across restarts.
    pub fn log(&self) -> String {
        fs::read(&self.log).map(|l| String::from_utf8_lossy(&l).into_owned()).unwrap_or_default()
    }

    fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let start = Instant::now();
        loop {
            if request(&self.socket, "GET", "/v1/status", None).is_ok() {
                return Ok(());
            }
            let why = match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(format!("exited ({status})")),
                _ if start.elapsed() > READY_TIMEOUT => Some("no answer on its socket".into()),
                _ => None,
            };
            if let Some(why) = why {
                return Err(HarnessError::BackendNotReady { why, log: self.log_tail() });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The TCP endpoint with the token, if it listens on TCP ([`Backend::start_on_tcp`]).
    pub fn tcp(&self) -> Option<Endpoint> {
        let addr = self.listen?.to_string();
        Some(Endpoint::Tcp { addr, token: self.token.clone() })
    }

    /// Creates a region for `function`; returns its file.
    pub fn create_region(&self, function: &str) -> Result<PathBuf, HarnessError> {
        let body = serde_json::json!({ "function": function });
        let answer = self.api("POST", "/v1/regions", Some(&body))?;
        answer["path"]
            .as_str()
            .map(PathBuf::from)
            .ok_or_else(|| HarnessError::Api(format!("no path in {answer}")))
    }

    /// Calls the control API; the JSON answer (`null` for an empty one).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, HarnessError> {
        let text = request(&self.socket, method, path, body)
            .map_err(|e| HarnessError::Api(e.to_string()))?;
        if text.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| HarnessError::Api(format!("{e}: {text}")))
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> Result<String, HarnessError> {
        request(&self.socket, "GET", "/metrics", None).map_err(|e| HarnessError::Api(e.to_string()))
    }

    /// The sum of every sample of `name` whose labels contain all of `labels`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> Result<f64, HarnessError> {
        Ok(self
            .metrics()?
            .lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Waits until the write-back spool has uploaded everything acknowledged so far
    /// (`nexus_writeback_backlog_objects` is 0): a put completes before its upload, so a test
    /// that reads the store after a put waits for this first.
    pub fn wait_uploaded(&self, timeout: Duration) -> Result<(), HarnessError> {
        let start = Instant::now();
        loop {
            let backlog = self.metric("nexus_writeback_backlog_objects", &[])?;
            if backlog == 0.0 {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(HarnessError::BackendTimeout {
                    what: format!("{backlog} write-back entries still to upload"),
                    secs: timeout.as_secs(),
                    log: self.log_tail(),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The backend's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last lines of the backend's log.
    pub fn log_tail(&self) -> String {
        match fs::read(&self.log) {
            Ok(log) => tail(&String::from_utf8_lossy(&log), LOG_LINES),
            Err(e) => format!("(cannot read {}: {e})", self.log.display()),
        }
    }

    /// Stops the backend gracefully (SIGTERM), killing it if it does not exit in time; returns
    /// whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return false };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let start = Instant::now();
        while start.elapsed() < STOP_TIMEOUT {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

/// Writes a random API token into `{dir}/api.token` (mode 0600); the token and the file.
fn write_token(dir: &Path) -> Result<(String, PathBuf), HarnessError> {
    let mut random = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(HarnessError::io("read /dev/urandom"))?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join("api.token");
    File::options()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, token.as_bytes()))
        .map_err(HarnessError::io("write the API token"))?;
    Ok((token, path))
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}
