//! The README's demo command runs end to end and shows what it promises: the database time
//! through warmpool beside the same transaction over a fresh connection, measured in one run, one
//! server connection for all invocations, and none left after SHUTDOWN.

use std::process::Command;

#[test]
fn the_demo_shows_database_time_beside_a_fresh_connection() {
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    for line in [
        "database time in the function, through warmpool:",
        "the rest of the invocation (local Lambda, debug build):",
        "the same transaction over a fresh TLS + SCRAM connection each time, median:",
        "warmpool's database time is",
        "connections warmpool opened: 1;",
        "warmpool connections left after SHUTDOWN: 0",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
}
