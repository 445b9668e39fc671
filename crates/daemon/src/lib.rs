//! `berth daemon`: the executor's requests ([`berth_host::executor::Executor`]) served as REST
//! under `/1.0`, modelled on Incus's API, over a unix socket in the data dir. The CLI's
//! in-process path and this one perform the same requests with the same checks and errors;
//! here they arrive as JSON, are read field by field ([`body`]) and answer in the API's
//! envelope ([`berth_api::Response`]).
//!
//! Reads run on a blocking thread with an executor of their own (the state database's
//! connection is not shared between threads); changes run in a single-threaded worker process
//! ([`worker`]). The per-instance locks keep a CLI command and a daemon request on one instance
//! apart.

pub mod body;
mod exec;
pub mod https;
pub mod logging;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub(crate) mod routes;
pub mod trust;
pub mod worker;

use berth_host::dirs::Dirs;
use std::path::{Path, PathBuf};

pub use routes::router;

/// Errors of the daemon itself (not of a request).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon answers on the socket.
    #[error("a berth daemon already listens on {0}")]
    Running(PathBuf),
    /// The socket could not be made.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path at fault.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where the daemon listens in a data dir.
pub fn socket_path(dirs: &Dirs) -> PathBuf {
    dirs.root.join("berth.sock")
}

/// Bind the unix socket at `path` with mode 0660 (root and the data dir's group), replacing a
/// stale one that no daemon answers on.
pub fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what, source| DaemonError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::Running(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(|e| io("removing the stale socket", e))?;
    }
    // Bound under a umask that leaves others out, then set to exactly 0660.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o117));
    let bound = std::os::unix::net::UnixListener::bind(path);
    rustix::process::umask(old);
    let l = bound.map_err(|e| io("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| io("setting the mode of", e))?;
    l.set_nonblocking(true).map_err(|e| io("setting up", e))?;
    tokio::net::UnixListener::from_std(l).map_err(|e| io("setting up", e))
}

/// Serve `dirs` on its unix socket, and over HTTPS on `listen` (`ADDR:PORT`) when given, until
/// SIGINT or SIGTERM, then remove the socket. Guests keep running: they are QEMU and container
/// processes of their own.
pub fn serve(dirs: &Dirs, listen: Option<&str>) -> Result<(), DaemonError> {
    let path = socket_path(dirs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| DaemonError::Io {
            what: "starting the runtime for",
            path: path.clone(),
            source: e,
        })?;
    let result = rt.block_on(async {
        let listener = bind_unix(&path)?;
        tracing::info!(socket = %path.display(), "berth daemon listening");
        let worker = std::env::current_exe().map_err(|e| DaemonError::Io {
            what: "finding berth's own binary for",
            path: path.clone(),
            source: e,
        })?;
        let app = router(dirs.clone(), worker);
        if let Some(addr) = listen {
            let bad = |source| DaemonError::Io {
                what: "listening for HTTPS as",
                path: PathBuf::from(addr),
                source,
            };
            let id = trust::server_identity(dirs).map_err(|e| bad(std::io::Error::other(e)))?;
            let fingerprint = id.fingerprint();
            let config = berth_tls::server_config(id).map_err(|e| bad(std::io::Error::other(e)))?;
            let tcp = tokio::net::TcpListener::bind(addr).await.map_err(bad)?;
            let bound = tcp.local_addr().map_err(bad)?.to_string();
            trust::set_addresses(dirs, vec![bound.clone()])
                .map_err(|e| bad(std::io::Error::other(e)))?;
            tracing::info!(address = %bound, %fingerprint, "berth daemon listening for HTTPS");
            tokio::spawn(https::serve(
                tcp,
                app.clone(),
                dirs.clone(),
                config,
                fingerprint,
            ));
        }
        axum::serve(
            listener,
            app.layer(axum::extract::Extension(https::Peer::Unix)),
        )
        .with_graceful_shutdown(shutdown())
        .await
        .map_err(|e| DaemonError::Io {
            what: "serving",
            path: path.clone(),
            source: e,
        })
    });
    let _ = std::fs::remove_file(&path);
    result
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
