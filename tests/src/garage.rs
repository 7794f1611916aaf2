//! A throw-away single-node Garage S3 server for integration tests.
//!
//! Start-up follows FIELD-NOTES "Storage": write a config (`replication_factor = 1`, sqlite
//! metadata, RPC/S3/admin on free loopback ports, a random `rpc_secret`) into a temp dir; run
//! `garage server` with its log in that dir; wait until it answers RPC; give the node a role
//! and apply layout version 1; wait until the cluster is healthy; import a random key; wait
//! until the S3 port answers HTTP. The server is killed by [`Garage::stop`] or on drop;
//! [`Garage::restart`] brings it back on the same data, as after an outage.

use std::env;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use tempfile::TempDir;

use crate::error::tail;
use crate::HarnessError;

/// Where `cargo xtask setup` installs Garage, relative to `$HOME`.
const INSTALLED_BINARY: &str = ".cache/nexus/garage/bin/garage";
/// The S3 region the server answers to (`s3_region` in its config).
const REGION: &str = "garage";
/// The name of the imported access key.
const KEY_NAME: &str = "nexus-tests";
/// How long each start-up stage may take.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How many lines of the server log an error carries.
const LOG_LINES: usize = 40;

/// A running single-node Garage server with one key; see the module doc.
#[derive(Debug)]
pub struct Garage {
    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub region: String,
    /// Access key id: `GK` and 24 hex digits.
    pub access_key: String,
    /// Secret key: 64 hex digits.
    pub secret_key: String,
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    s3_addr: SocketAddr,
    server: Option<Child>,
    /// Holds the config, data and log; removed on drop, after the server is killed.
    _dir: TempDir,
}

impl Garage {
    /// An S3 client on `bucket` of this server.
    pub fn client(&self, bucket: &str) -> AmazonS3 {
        self.client_at(&self.endpoint, bucket)
    }

    /// An S3 client on `bucket` of this server reached at `endpoint` (a link's address, say).
    pub fn client_at(&self, endpoint: &str, bucket: &str) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_region(&self.region)
            .with_bucket_name(bucket)
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .build()
            .expect("a static S3 client configuration")
    }

    /// The backend's `storage:` section for this server (S3, path-style, plain HTTP).
    pub fn storage_settings(&self) -> String {
        self.storage_settings_at(&self.endpoint)
    }

    /// The backend's `storage:` section for this server reached at `endpoint` (a [`Link`]'s
    /// address, say).
    ///
    /// [`Link`]: crate::Link
    pub fn storage_settings_at(&self, endpoint: &str) -> String {
        format!(
            "storage:\n  url: \"s3://\"\n  options: {{ aws_endpoint: \"{}\", aws_access_key_id: \"{}\", \
             aws_secret_access_key: \"{}\", aws_region: \"{}\", aws_allow_http: \"true\", \
             aws_virtual_hosted_style_request: \"false\" }}\n",
            endpoint, self.access_key, self.secret_key, self.region
        )
    }

    /// The Garage binary: `$NEXUS_GARAGE`, else where `cargo xtask setup` installs it.
    pub fn binary() -> Result<PathBuf, HarnessError> {
        let path = match env::var_os("NEXUS_GARAGE").filter(|p| !p.is_empty()) {
            Some(path) => PathBuf::from(path),
            None => PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(INSTALLED_BINARY),
        };
        if path.is_file() {
            Ok(path)
        } else {
            Err(HarnessError::GarageMissing(path))
        }
    }

    /// Starts a fresh server in a temp dir and waits until its S3 API answers.
    pub fn start() -> Result<Garage, HarnessError> {
        let binary = Self::binary()?;
        let dir = tempfile::Builder::new()
            .prefix("nexus-garage-")
            .tempdir()
            .map_err(HarnessError::io("create a temp dir for Garage"))?;
        let [rpc_port, s3_port, admin_port] = free_ports()?;
        let config = dir.path().join("garage.toml");
        let toml = config_toml(dir.path(), rpc_port, s3_port, admin_port, &random_hex(32)?);
        fs::write(&config, toml).map_err(HarnessError::io("write the Garage config"))?;

        let log = dir.path().join("garage.log");
        let server = spawn(&binary, &config, &log)?;

        // From here on, dropping `garage` (on any error) kills the server.
        let mut garage = Garage {
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            region: REGION.to_owned(),
            access_key: format!("GK{}", random_hex(12)?),
            secret_key: random_hex(32)?,
            binary,
            config,
            log,
            s3_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, s3_port)),
            server: Some(server),
            _dir: dir,
        };
        garage.initialise()?;
        Ok(garage)
    }

    /// Creates bucket `name` and gives the key read, write and owner rights on it.
    pub fn create_bucket(&self, name: &str) -> Result<(), HarnessError> {
        self.garage(&["bucket", "create", name])?;
        let key = self.access_key.as_str();
        self.garage(&["bucket", "allow", "--read", "--write", "--owner", name, "--key", key])?;
        Ok(())
    }

    /// Starts the server again (after [`Garage::stop`]) on the same data, ports and key, and
    /// waits until its S3 API answers; does nothing if it is running.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        if self.server.is_some() {
            return Ok(());
        }
        self.server = Some(spawn(&self.binary, &self.config, &self.log)?);
        self.wait_until("the cluster is healthy", |g| g.probe(&["health"]))?;
        self.wait_until("S3 answers", Self::s3_answers)
    }

    /// Kills the server and reaps it; does nothing if it is already stopped.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // Errors mean it has already exited; `wait` reaps it either way.
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    /// Lays out the cluster and imports the key, waiting for each stage.
    fn initialise(&mut self) -> Result<(), HarnessError> {
        self.wait_until("RPC answers", |g| g.probe(&["status"]))?;
        let node = self.garage(&["node", "id", "-q"])?;
        // `node id` prints `<full id>@<rpc address>`.
        let node = node.trim().split('@').next().unwrap_or_default().to_owned();
        self.garage(&["layout", "assign", "-z", "dc1", "-c", "1G", &node])?;
        self.garage(&["layout", "apply", "--version", "1"])?;
        self.wait_until("the cluster is healthy", |g| g.probe(&["health"]))?;
        let (id, secret) = (self.access_key.as_str(), self.secret_key.as_str());
        self.garage(&["key", "import", "--yes", "-n", KEY_NAME, id, secret])?;
        self.wait_until("S3 answers", Self::s3_answers)
    }

    /// Polls `ready` until it succeeds, the server exits, or [`READY_TIMEOUT`] passes.
    fn wait_until(
        &mut self,
        what: &str,
        ready: impl Fn(&Self) -> Result<(), String>,
    ) -> Result<(), HarnessError> {
        let start = Instant::now();
        loop {
            let last = match ready(self) {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if let Some(status) = self.server.as_mut().and_then(|s| s.try_wait().ok().flatten()) {
                return Err(HarnessError::GarageExited { status, log: self.log_tail() });
            }
            if start.elapsed() > READY_TIMEOUT {
                let secs = READY_TIMEOUT.as_secs();
                let last = format!("waiting until {what}: {last}");
                return Err(HarnessError::GarageNotReady { secs, last, log: self.log_tail() });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The server's process id (for measuring it).
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// Runs a `garage` admin command; its stdout.
    fn garage(&self, args: &[&str]) -> Result<String, HarnessError> {
        let output = self
            .command(args)
            .output()
            .map_err(HarnessError::io(format!("run `garage {}`", args.join(" "))))?;
        if !output.status.success() {
            return Err(HarnessError::GarageCommand {
                args: args.join(" "),
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                log: self.log_tail(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs a `garage` admin command as a readiness probe; why it failed, in short.
    fn probe(&self, args: &[&str]) -> Result<(), String> {
        let output = self.command(args).output().map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command.arg("-c").arg(&self.config).args(args).stdin(Stdio::null());
        command
    }

    /// Whether the S3 port answers an HTTP request (with any status: it is unsigned).
    fn s3_answers(&self) -> Result<(), String> {
        let timeout = Duration::from_secs(1);
        let mut stream =
            TcpStream::connect_timeout(&self.s3_addr, timeout).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut head = [0; 7];
        stream.read_exact(&mut head).map_err(|e| e.to_string())?;
        if &head == b"HTTP/1." {
            Ok(())
        } else {
            Err(format!("not an HTTP answer: {:?}", String::from_utf8_lossy(&head)))
        }
    }

    fn log_tail(&self) -> String {
        match fs::read(&self.log) {
            Ok(log) => tail(&String::from_utf8_lossy(&log), LOG_LINES),
            Err(e) => format!("(cannot read {}: {e})", self.log.display()),
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `garage server` on `config`, appending its output to `log`.
fn spawn(binary: &Path, config: &Path, log: &Path) -> Result<Child, HarnessError> {
    let log_file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(HarnessError::io("open the Garage log"))?;
    let log_clone = log_file.try_clone().map_err(HarnessError::io("open the Garage log"))?;
    Command::new(binary)
        .arg("-c")
        .arg(config)
        .arg("server")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log_clone)
        .stderr(log_file)
        .spawn()
        .map_err(HarnessError::io(format!("start {}", binary.display())))
}

fn config_toml(
    dir: &Path,
    rpc_port: u16,
    s3_port: u16,
    admin_port: u16,
    rpc_secret: &str,
) -> String {
    let dir = dir.display();
    format!(
        "metadata_dir = '{dir}/meta'
data_dir = '{dir}/data'
db_engine = 'sqlite'
replication_factor = 1
rpc_bind_addr = '127.0.0.1:{rpc_port}'
rpc_public_addr = '127.0.0.1:{rpc_port}'
rpc_secret = '{rpc_secret}'

[s3_api]
s3_region = '{REGION}'
api_bind_addr = '127.0.0.1:{s3_port}'

[admin]
api_bind_addr = '127.0.0.1:{admin_port}'
"
    )
}

/// Three distinct free loopback ports: all are bound at once, then released for Garage.
pub(crate) fn free_ports<const N: usize>() -> Result<[u16; N], HarnessError> {
    let held: [_; N] = std::array::from_fn(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)));
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(held) {
        let addr = listener.and_then(|l| l.local_addr());
        *port = addr.map_err(HarnessError::io("pick a free loopback port"))?.port();
    }
    Ok(ports)
}

/// `bytes` random bytes from the kernel, as lowercase hex.
fn random_hex(bytes: usize) -> Result<String, HarnessError> {
    let mut buf = vec![0; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(HarnessError::io("read /dev/urandom"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
