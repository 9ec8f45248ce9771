//! The Unix socket function code connects to, in `/tmp`: the one directory a Lambda function and
//! its extensions share (<https://docs.aws.amazon.com/lambda/latest/dg/lambda-extensions.html>).

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;

/// Binds the socket with mode 0600, replacing a stale socket file left by a process that died.
/// Returns the listener and the uid that owns it, the only uid whose clients are served.
///
/// A path held by a live server, or by anything but a socket, is an error: neither is ours to
/// delete.
pub fn bind(path: &Path) -> io::Result<(UnixListener, u32)> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{} is in use by a running server (is another warmpool running?)",
                        path.display()
                    ),
                ));
            }
            tracing::info!(path = %path.display(), "replacing a stale socket file");
            fs::remove_file(path)?;
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

/// Removes the socket file, if it is still the one this process bound.
pub fn remove(path: &Path) {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = fs::remove_file(path);
        }
    }
}
