//! `nexus`: the host binary. `nexus backend` runs the daemon; the other subcommands talk to a
//! running backend over its control socket, or over TCP with `--tcp` and the API token.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nexus_backend::api::{COLD_START, COLD_START_FROM, FUNCTION_ERROR, PREFETCH, PREFETCHED};
use nexus_backend::client::Endpoint;
use nexus_backend::config::Config;
use nexus_backend::functions::FunctionSpec;
use nexus_backend::hook;
use nexus_backend::storage::error_chain;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "nexus", version, about = "Nexus: transparent I/O offloading for function VMs")]
struct Cli {
    /// Control socket of the backend.
    #[arg(long, global = true, env = "NEXUS_SOCKET", default_value = "/run/nexus/nexus.sock")]
    socket: PathBuf,
    /// Talk to the backend's TCP listener (its api.listen, HOST:PORT) instead of the socket
    /// (not ch-proxy, which uses the socket).
    #[arg(long, global = true, env = "NEXUS_TCP", value_name = "ADDR")]
    tcp: Option<String>,
    /// File holding the API token (the backend's api.token_file), for --tcp.
    #[arg(long, global = true, env = "NEXUS_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the backend daemon.
    Backend {
        /// Configuration file (see configs/nexus.yaml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Manage regions (one per function VM or function process).
    #[command(subcommand)]
    Region(RegionCommand),
    /// Manage functions (each runs in its own VM).
    #[command(subcommand)]
    Fn(FnCommand),
    /// Show the backend's status.
    Status,
    /// Serve a Nexus API socket in front of a Cloud Hypervisor's own: its REST API forwarded
    /// as is (ch-remote works through it), with the backend's hooks (region registration,
    /// quiesce before pause/snapshot, a new region on restore, release on delete/shutdown).
    ChProxy {
        /// The socket to serve (give it to ch-remote --api-socket).
        #[arg(long)]
        listen: PathBuf,
        /// Cloud Hypervisor's own API socket (its --api-socket).
        #[arg(long)]
        ch_socket: PathBuf,
        /// Where restore copies of snapshots are kept. Default: a folder beside --listen.
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
    /// libvirt: the hook script that gives operators' own domains their Nexus regions.
    #[command(subcommand)]
    Libvirt(LibvirtCommand),
}

#[derive(Debug, Subcommand)]
enum LibvirtCommand {
    /// Install libvirt's QEMU hook script, which runs this binary against --socket; restart
    /// libvirtd afterwards (it looks for hooks when it starts).
    InstallHook {
        #[arg(long, default_value = hook::HOOK)]
        path: PathBuf,
    },
    /// Remove the hook script install-hook installed; restart libvirtd afterwards.
    RemoveHook {
        #[arg(long, default_value = hook::HOOK)]
        path: PathBuf,
    },
    /// What the hook script runs: libvirtd's arguments, the domain XML on standard input.
    #[command(hide = true)]
    Hook {
        domain: String,
        operation: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum FnCommand {
    /// Deploy (or replace) the function described by a YAML spec; its `code` is relative to
    /// the spec file.
    Deploy { spec: PathBuf },
    /// Invoke a function with an event; prints the result JSON (exit status 1 if the handler
    /// raised).
    Invoke {
        name: String,
        /// Event JSON file, or - for standard input.
        #[arg(long, default_value = "-")]
        event: PathBuf,
        /// An object the handler will read, as BUCKET/KEY: on a cold start it is fetched while
        /// the VM starts (repeatable).
        #[arg(long)]
        prefetch: Vec<String>,
    },
    /// List functions and their VMs.
    Ls,
    /// Snapshot the function's warm VM: later cold starts restore it instead of booting.
    Snapshot { name: String },
    /// Stop the function's warm VM (the next invocation is a cold start).
    Stop { name: String },
    /// Remove a function and stop its VM.
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
enum RegionCommand {
    /// Create a region for FUNCTION; prints the region file's path.
    Create { function: String },
    /// List regions.
    Ls,
    /// Remove a region, named by its id or by the file `region create` printed.
    Rm { id: String },
    /// Invoke whatever serves region ID (its id or file) with an event; prints the result JSON
    /// (exit status 1 if the handler raised).
    Invoke {
        id: String,
        /// Event JSON file, or - for standard input.
        #[arg(long, default_value = "-")]
        event: PathBuf,
        /// Seconds to wait for the result.
        #[arg(long, default_value_t = 900.0)]
        timeout: f64,
    },
}

fn main() -> ExitCode {
    let Cli { socket, tcp, token_file, command } = Cli::parse();
    let endpoint = || endpoint(&socket, tcp.as_deref(), token_file.as_deref());
    let result = match command {
        Command::Backend { config } => backend(&config),
        Command::Region(command) => endpoint().and_then(|e| region(&e, command)),
        Command::Fn(command) => endpoint().and_then(|e| function(&e, command)),
        Command::Status => endpoint().and_then(|e| print(&e, "GET", "/v1/status", None)),
        Command::ChProxy { listen, ch_socket, work_dir } => {
            let work_dir = work_dir.unwrap_or_else(|| listen.with_extension("restores"));
            ch_proxy(&listen, &ch_socket, &socket, &work_dir)
        }
        Command::Libvirt(command) => libvirt(&socket, command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("nexus: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Where the API is: the socket, or `--tcp` with the token of `--token-file`.
fn endpoint(
    socket: &Path,
    tcp: Option<&str>,
    token_file: Option<&Path>,
) -> Result<Endpoint, String> {
    let Some(addr) = tcp else { return Ok(Endpoint::Unix(socket.to_owned())) };
    let file = token_file.ok_or("--tcp needs --token-file (or NEXUS_TOKEN_FILE)")?;
    let token = std::fs::read_to_string(file)
        .map_err(|e| format!("Cannot read the token file {}: {e}", file.display()))?;
    Ok(Endpoint::Tcp { addr: addr.to_owned(), token: token.trim().to_owned() })
}

fn backend(config: &Path) -> Result<(), String> {
    init_logging();
    let config = Config::load(config).map_err(|e| error_chain(&e))?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(nexus_backend::daemon::run(config)).map_err(|e| error_chain(&e))
}

fn ch_proxy(listen: &Path, ch: &Path, backend: &Path, work_dir: &Path) -> Result<(), String> {
    init_logging();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime
        .block_on(nexus_backend::ch_proxy::run(listen, ch, backend, work_dir))
        .map_err(|e| error_chain(&e))
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NEXUS_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn libvirt(socket: &Path, command: LibvirtCommand) -> Result<(), String> {
    match command {
        LibvirtCommand::InstallHook { path } => {
            let nexus = std::env::current_exe().map_err(|e| e.to_string())?;
            let socket = std::path::absolute(socket).map_err(|e| e.to_string())?;
            hook::install(&path, &nexus, &socket).map_err(|e| error_chain(&e))?;
            println!("Installed {}: restart libvirtd for it to take effect", path.display());
            Ok(())
        }
        LibvirtCommand::RemoveHook { path } => {
            match hook::remove(&path).map_err(|e| error_chain(&e))? {
                true => println!("Removed {}: restart libvirtd", path.display()),
                false => println!("No hook script at {}", path.display()),
            }
            Ok(())
        }
        LibvirtCommand::Hook { operation, .. } => {
            let xml = std::io::read_to_string(std::io::stdin())
                .map_err(|e| format!("Cannot read the domain XML: {e}"))?;
            // libvirt shows the hook's standard error in the error of the refused operation.
            hook::run(socket, &operation, &xml)
        }
    }
}

fn region(api: &Endpoint, command: RegionCommand) -> Result<(), String> {
    match command {
        RegionCommand::Create { function } => {
            let body = api
                .request("POST", "/v1/regions", Some(&json!({ "function": function })))
                .map_err(|e| error_chain(&e))?;
            let info: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            println!("{}", info["path"].as_str().unwrap_or_default());
            Ok(())
        }
        RegionCommand::Ls => print(api, "GET", "/v1/regions", None),
        RegionCommand::Rm { id } => {
            print(api, "DELETE", &format!("/v1/regions/{}", region_id(&id)), None)
        }
        RegionCommand::Invoke { id, event, timeout } => {
            let path = format!("/v1/regions/{}/invoke?timeout={timeout}", region_id(&id));
            invoke(api, &path, &[], &event)
        }
    }
}

fn function(api: &Endpoint, command: FnCommand) -> Result<(), String> {
    match command {
        FnCommand::Deploy { spec } => {
            let text = std::fs::read_to_string(&spec)
                .map_err(|e| format!("Cannot read {}: {e}", spec.display()))?;
            let mut parsed: FunctionSpec =
                serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", spec.display()))?;
            let base = spec.parent().unwrap_or(Path::new("."));
            parsed.code =
                std::path::absolute(base.join(&parsed.code)).map_err(|e| e.to_string())?;
            let body = serde_json::to_value(&parsed).map_err(|e| e.to_string())?;
            print(api, "POST", "/v1/functions", Some(&body))
        }
        FnCommand::Invoke { name, event, prefetch } => {
            let hints: Result<Vec<_>, String> = prefetch
                .iter()
                .map(|object| match object.split_once('/') {
                    Some((bucket, key)) => Ok(json!({ "bucket": bucket, "key": key })),
                    None => Err(format!("--prefetch {object:?} is not BUCKET/KEY")),
                })
                .collect();
            let hints = serde_json::Value::from(hints?).to_string();
            let headers: Vec<(&str, &str)> =
                if prefetch.is_empty() { Vec::new() } else { vec![(PREFETCH, hints.as_str())] };
            invoke(api, &format!("/v1/functions/{name}/invoke"), &headers, &event)
        }
        FnCommand::Snapshot { name } => {
            print(api, "POST", &format!("/v1/functions/{name}/snapshot"), None)
        }
        FnCommand::Stop { name } => print(api, "POST", &format!("/v1/functions/{name}/stop"), None),
        FnCommand::Ls => print(api, "GET", "/v1/functions", None),
        FnCommand::Rm { name } => print(api, "DELETE", &format!("/v1/functions/{name}"), None),
    }
}

/// The region id in `given`: an id, or a region file (`DIR/ID.region`, what `region create`
/// prints).
fn region_id(given: &str) -> &str {
    let name = given.rsplit('/').next().unwrap_or(given);
    name.strip_suffix(".region").unwrap_or(name)
}

/// Posts an event read from `event` (`-`: stdin) and prints the result.
fn invoke(
    api: &Endpoint,
    path: &str,
    headers: &[(&str, &str)],
    event: &Path,
) -> Result<(), String> {
    let text = if event == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| format!("Cannot read the event: {e}"))?
    } else {
        std::fs::read_to_string(event)
            .map_err(|e| format!("Cannot read {}: {e}", event.display()))?
    };
    let answer =
        api.exchange("POST", path, headers, text.as_bytes()).map_err(|e| error_chain(&e))?;
    println!("{}", answer.body);
    if let Some(ms) = answer.header(COLD_START) {
        let from = answer.header(COLD_START_FROM).unwrap_or("boot");
        let staged = answer.header(PREFETCHED).unwrap_or("0");
        eprintln!("nexus: cold start ({from}): the VM was ready after {ms} ms; {staged} objects prefetched");
    }
    match answer.header(FUNCTION_ERROR) {
        Some(kind) => Err(format!("The handler raised ({kind})")),
        None => Ok(()),
    }
}

fn print(
    api: &Endpoint,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(), String> {
    let answer = api.request(method, path, body).map_err(|e| error_chain(&e))?;
    if !answer.is_empty() {
        println!("{answer}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_named_by_id_or_by_file() {
        assert_eq!(region_id("thumbnailer-1"), "thumbnailer-1");
        assert_eq!(region_id("/dev/shm/nexus/thumbnailer-1.region"), "thumbnailer-1");
        assert_eq!(region_id("thumbnailer-1.region"), "thumbnailer-1");
    }
}
