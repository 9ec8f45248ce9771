//! The socket serves only the extension's own user. Its mode (0600) keeps other users out at the
//! file system; the peer-credentials check (`SO_PEERCRED`, in extension/src/server.rs) still
//! refuses them when the mode has been widened.

use std::fs::{self, Permissions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use warmpool_tests::{Extension, PgServer};

/// `nobody` on Debian: a user other than the extension's.
const OTHER_UID: u32 = 65534;

/// Runs the probe as the test's own user, or as `uid`.
fn probe(socket: &Path, uid: Option<u32>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer_probe"));
    cmd.arg(socket);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    cmd.output().expect("run peer_probe")
}

fn shown(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn a_client_of_another_user_is_refused() {
    let me = fs::metadata("/proc/self").expect("/proc/self").uid();
    assert_eq!(
        me, 0,
        "this test runs a client as uid {OTHER_UID} to act as another user, which needs root: \
         run the tests as root"
    );
    let pg = PgServer::start();
    let mut ext = Extension::start(&pg, &[]);
    let socket = ext.socket().to_owned();

    // The probe itself works: run as the extension's user, it is served.
    let own = probe(&socket, None);
    assert!(own.status.success(), "{}", shown(&own));

    // Let another user reach the socket's directory, so only the socket decides.
    let dir = socket.parent().expect("socket directory");
    fs::set_permissions(dir, Permissions::from_mode(0o711)).expect("chmod directory");

    // Mode 0600: the file system refuses the other user.
    let out = probe(&socket, Some(OTHER_UID));
    assert!(!out.status.success(), "{}", shown(&out));
    assert!(
        shown(&out).to_lowercase().contains("permission denied"),
        "{}",
        shown(&out)
    );

    // With the mode widened, the extension refuses it by its peer credentials.
    fs::set_permissions(&socket, Permissions::from_mode(0o666)).expect("chmod socket");
    let out = probe(&socket, Some(OTHER_UID));
    assert!(!out.status.success(), "{}", shown(&out));
    let line = ext.wait_for_log("refused a client of another user", Duration::from_secs(20));
    assert!(line.contains(&format!("peer_uid={OTHER_UID}")), "{line}");

    // The extension's own user is still served.
    let again = probe(&socket, None);
    assert!(again.status.success(), "{}", shown(&again));
}
