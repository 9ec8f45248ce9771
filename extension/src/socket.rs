//! The Unix socket function code connects to, in `/tmp`: the one directory a Lambda function and
//! its extensions share (<https://docs.aws.amazon.com/lambda/latest/dg/lambda-extensions.html>).

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

/// How long the probe of an existing socket file waits for its connect. A live warmpool
/// answers at once; a process that listens but never accepts can make a connect wait without
/// end once its backlog is full, and start-up must neither hang nor ignore SIGTERM meanwhile.
/// One second is far beyond a local connect and short against Lambda's 10 s Init.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Binds the socket with mode 0600, replacing a stale socket file left by a process that died.
/// Returns the listener and the uid that owns it, the only uid whose clients are served.
///
/// A path held by a live server, or by anything but a socket, is an error: neither is ours to
/// delete. Whether a socket file is stale is found by connecting to it, within a second
/// (`PROBE_TIMEOUT`); what was found is logged.
pub async fn bind(path: &Path) -> io::Result<(UnixListener, u32)> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if let Some(found) = probe(path).await {
                tracing::error!(
                    socket = %path.display(),
                    found,
                    "refusing to start: another process holds the socket (WARMPOOL_SOCKET)"
                );
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{} (WARMPOOL_SOCKET) is in use: {found}; is another warmpool running?",
                        path.display()
                    ),
                ));
            }
            tracing::info!(
                socket = %path.display(),
                found = "nothing listens on it",
                "replacing a stale socket file"
            );
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path).map_err(|e| match path.parent() {
        Some(dir) if e.kind() == io::ErrorKind::NotFound => io::Error::new(
            e.kind(),
            format!("its directory {} does not exist ({e})", dir.display()),
        ),
        _ => e,
    })?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    let uid = fs::metadata(path)?.uid();
    Ok((listener, uid))
}

/// Connects to the socket file at `path` to learn whether a live process holds it. `None`: nothing
/// listens (the connect was refused, or the file went away), so the file is stale. Otherwise,
/// what was found, for the refusal.
///
/// The connect is non-blocking (tokio's), so a full backlog is an immediate `WouldBlock` on
/// Linux rather than a wait, and [`PROBE_TIMEOUT`] bounds it wherever a connect can still wait.
async fn probe(path: &Path) -> Option<String> {
    match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await {
        Ok(Ok(_)) => Some("a process listens on it".into()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => None,
        Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => None,
        Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
            Some("a process listens on it but accepts no connection (its backlog is full)".into())
        }
        // Permission denied, most likely: a socket this process may not use is not its to delete.
        Ok(Err(e)) => Some(format!("connecting to it failed ({e})")),
        Err(_) => Some(format!(
            "a process listens on it but did not answer within {} ms",
            PROBE_TIMEOUT.as_millis()
        )),
    }
}

/// Removes the socket file, if it is still the one this process bound.
pub fn remove(path: &Path) {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = fs::remove_file(path);
        }
    }
}
