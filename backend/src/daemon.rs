//! Running the backend as a daemon: bind the API, serve until SIGINT/SIGTERM, clean up.
//!
//! The API socket is created mode 0600: only the backend's user (and root) can connect, which
//! is all the authentication it has. The TCP listener (`api.listen`) asks for the token of
//! `api.token_file` (see `api/auth.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};

use crate::api::{self, Api, Token, TokenError};
use crate::backend::{Backend, BackendError};
use crate::config::Config;
use crate::functions::Functions;

/// Errors starting or running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another backend answers on the socket.
    #[error("Another Nexus backend is already serving {0}")]
    AlreadyRunning(PathBuf),
    /// A listener could not be bound.
    #[error("Cannot listen on {0}")]
    Listen(String, #[source] std::io::Error),
    /// The backend could not start.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The TCP listener's token cannot be used.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The API server failed.
    #[error("Control API failed")]
    Serve(#[source] std::io::Error),
}

/// How often idle VMs are checked against `vm.keep_alive_secs`, and what libvirt's events
/// said of VMs is acted on.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Stops VMs idle past their keep-alive and follows what operators did to VMs (see
/// `Functions::follow_vms`), for as long as the backend runs.
async fn follow_vms(functions: Arc<Functions>) {
    let mut every = tokio::time::interval(FOLLOW_EVERY);
    loop {
        every.tick().await;
        let functions = functions.clone();
        let _ = tokio::task::spawn_blocking(move || functions.follow_vms()).await;
    }
}

/// Runs the backend until a termination signal.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let socket = config.api.socket.clone();
    // Config::parse requires a token file with api.listen.
    let token =
        config.api.token_file.as_deref().map(Token::load_or_create).transpose()?.map(Arc::new);
    let unix = bind_unix(&socket)?;
    let backend = Arc::new(Backend::new(config, tokio::runtime::Handle::current())?);
    let functions = Arc::new(Functions::new(backend.clone()));
    let invoker: Arc<dyn crate::ops::invoke::Invoker> = functions.clone();
    backend.set_invoker(Arc::downgrade(&invoker));
    let app = api::router(Api { backend: backend.clone(), functions: functions.clone() });
    tokio::spawn(follow_vms(functions.clone()));
    if let (Some(addr), Some(token)) = (backend.config().api.listen, token) {
        let tcp =
            TcpListener::bind(addr).await.map_err(|e| DaemonError::Listen(addr.to_string(), e))?;
        let app =
            api::tcp_router(Api { backend: backend.clone(), functions: functions.clone() }, token);
        tokio::spawn(async move { axum::serve(tcp, app).await });
        tracing::info!("Control API (with the token) and /metrics on http://{addr}");
    }
    tracing::info!(
        socket = %socket.display(),
        storage = %backend.config().storage.url,
        regions = %backend.config().region.dir.display(),
        "Nexus backend ready"
    );
    let served = axum::serve(unix, app).with_graceful_shutdown(terminated()).await;
    let backend_for_stop = backend.clone();
    let _ = tokio::task::spawn_blocking(move || {
        functions.shutdown();
        backend_for_stop.shutdown();
    })
    .await;
    let _ = std::fs::remove_file(&socket);
    tracing::info!("Nexus backend stopped");
    served.map_err(DaemonError::Serve)
}

/// Binds the API socket (mode 0600), replacing a stale socket file but never a live backend.
fn bind_unix(socket: &Path) -> Result<UnixListener, DaemonError> {
    let listen_err = |e| DaemonError::Listen(socket.display().to_string(), e);
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(DaemonError::AlreadyRunning(socket.to_owned()));
    }
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(listen_err)?;
    }
    let _ = std::fs::remove_file(socket);
    // bind creates the socket file with the umask's mode, and a client may connect the moment
    // it exists: the umask leaves the owner alone, here at start-up before any other thread
    // creates files.
    // SAFETY: umask has no preconditions; the old mask is put back right after the bind.
    let umask = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(socket);
    // SAFETY: as above.
    unsafe { libc::umask(umask) };
    bound.map_err(listen_err)
}

async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
