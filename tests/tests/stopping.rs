//! Every way the extension can be stopped in Lambda mode is the same orderly stop as a
//! SHUTDOWN event: a Terminate to every idle database connection, the pending metrics record
//! written, a log line saying why, the socket file removed, and exit status 0 for a requested
//! stop. Driven through the local Lambda: SIGTERM and SIGINT (as container runtimes and
//! emulators send), the Extensions API going away, and a SHUTDOWN whose deadline is 0 (as
//! cargo-lambda sends it).

use std::time::{Duration, Instant};

use local_lambda::{EventKind, Role};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use warmpool_tests::{logs, LambdaEnv, PgServer};

/// A guard against a hung test, never a timing assertion.
const GUARD: Duration = Duration::from_secs(30);

/// A server that logs each backend's exit with its PID, so a missing Terminate shows.
fn server_logging_disconnections() -> PgServer {
    let pg = PgServer::start();
    pg.set_config("log_line_prefix", "%m [%p] ");
    pg.set_config("log_disconnections", "on");
    pg
}

/// Waits until the server has logged the disconnection of every backend in `pids`, then says
/// whether any of them went away without a Terminate message.
fn assert_closed_with_terminate(pg: &PgServer, pids: &[i32]) {
    assert!(!pids.is_empty(), "the extension held no connection");
    let deadline = Instant::now() + GUARD;
    let log = loop {
        let log = std::fs::read_to_string(pg.log_path()).unwrap_or_default();
        let gone = pids.iter().all(|pid| {
            log.lines()
                .any(|l| l.contains(&format!("[{pid}] ")) && l.contains("disconnection:"))
        });
        if gone {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "backends {pids:?} were not closed; server log:\n{}",
            pg.log_tail(40)
        );
        // The server log is a file with no change notification: poll it.
        std::thread::sleep(Duration::from_millis(20));
    };
    let unclean: Vec<&str> = log
        .lines()
        .filter(|l| pids.iter().any(|pid| l.contains(&format!("[{pid}] "))))
        .filter(|l| {
            l.contains("unexpected EOF on client connection")
                || l.contains("could not receive data from client")
                || l.contains("SSL error")
        })
        .collect();
    assert!(
        unclean.is_empty(),
        "closed without a Terminate: {unclean:?}"
    );
}

fn extension_pid(env: &LambdaEnv) -> u32 {
    env.lambda
        .processes()
        .iter()
        .find(|p| p.role == Role::Extension)
        .map(|p| p.pid)
        .expect("the environment runs the warmpool extension")
}

/// Waits for the extension to exit; its exit status as the local Lambda reports it.
async fn extension_exit(env: &LambdaEnv, pid: u32) -> String {
    let event = env
        .lambda
        .wait_for_event(
            move |e| matches!(&e.kind, EventKind::ProcessExited { pid: p, .. } if *p == pid),
            GUARD,
        )
        .await
        .unwrap_or_else(|| panic!("the extension did not exit; output:\n{}", env.output()));
    match event.kind {
        EventKind::ProcessExited { status, .. } => status,
        _ => unreachable!("matched above"),
    }
}

/// The extension's stdout: JSON log lines and metrics records.
fn extension_stdout(env: &LambdaEnv) -> String {
    env.lambda
        .output()
        .iter()
        .filter(|l| l.process.starts_with("extension:"))
        .map(|l| l.line.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

fn stop_line(out: &str) -> Value {
    logs::json_lines(out)
        .into_iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("stopping:"))
        })
        .unwrap_or_else(|| panic!("no line says why the extension stopped:\n{out}"))
}

/// On Managed Instances a record is written per metrics interval (60 s by default, longer than
/// these tests): a record at all is the one the stop wrote for the last window.
fn assert_last_record_written(out: &str) {
    assert!(
        !logs::metric_records(out).is_empty(),
        "no metrics record of the last window:\n{out}"
    );
}

async fn signal_stops_in_order(signal: Signal, name: &str) {
    let pg = server_logging_disconnections();
    // Managed Instances: never frozen, so the signal is handled as it arrives.
    let env = LambdaEnv::managed_instances(&pg, &[("WARMPOOL_WARM_SIZE", "2")], 2);
    env.call(json!({"action": "backend"})).await;
    let backends = pg.warmpool_backends().await;
    let pid = extension_pid(&env);
    kill(Pid::from_raw(pid as i32), signal).expect("signal the extension");
    let status = extension_exit(&env, pid).await;
    assert_eq!(
        status,
        "exit code 0",
        "a requested stop exits 0; output:\n{}",
        env.output()
    );
    assert_closed_with_terminate(&pg, &backends);
    let out = extension_stdout(&env);
    assert_eq!(stop_line(&out)["signal"], name);
    assert_last_record_written(&out);
    assert!(!env.socket().exists(), "the socket file was left behind");
}

#[tokio::test]
async fn sigterm_in_lambda_mode_stops_in_order() {
    signal_stops_in_order(Signal::SIGTERM, "SIGTERM").await;
}

#[tokio::test]
async fn sigint_in_lambda_mode_stops_in_order() {
    signal_stops_in_order(Signal::SIGINT, "SIGINT").await;
}

#[tokio::test]
async fn the_extensions_api_going_away_stops_in_order() {
    let pg = server_logging_disconnections();
    let env = LambdaEnv::managed_instances(&pg, &[("WARMPOOL_WARM_SIZE", "2")], 2);
    env.call(json!({"action": "backend"})).await;
    let backends = pg.warmpool_backends().await;
    let pid = extension_pid(&env);
    env.lambda.break_api();
    let status = extension_exit(&env, pid).await;
    assert_eq!(
        status, "exit code 1",
        "not a requested stop, but the extension exits on its own"
    );
    assert_closed_with_terminate(&pg, &backends);
    let out = extension_stdout(&env);
    let line = stop_line(&out);
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_last_record_written(&out);
    assert!(!env.socket().exists(), "the socket file was left behind");
}

#[tokio::test]
async fn a_shutdown_with_no_deadline_still_closes_connections() {
    let pg = server_logging_disconnections();
    let env = LambdaEnv::classic_with_zero_deadlines(&pg, &[("WARMPOOL_WARM_SIZE", "2")]);
    env.call(json!({"action": "setup"})).await;
    // An INVOKE whose deadline is 0 is no deadline: statements are not cancelled for it.
    let created = env
        .call(json!({"action": "create", "customer": "ada", "item": "widget", "qty": 1}))
        .await;
    assert_eq!(created["customer_orders"], 1, "{created}");
    let backends = pg.warmpool_backends().await;
    let report = env.lambda.shutdown().await;
    let ext = report
        .extension("warmpool")
        .expect("the extension's report");
    assert!(!ext.killed, "{report}");
    assert_eq!(ext.exit_status, "exit code 0", "{report}");
    assert_closed_with_terminate(&pg, &backends);
    let out = extension_stdout(&env);
    assert!(
        logs::json_lines(&out)
            .iter()
            .any(|l| l["message"] == "SHUTDOWN: connections closed" && l["closed"] == 2),
        "both connections closed:\n{out}"
    );
    assert!(!env.socket().exists(), "the socket file was left behind");
}

/// Emulators send `deadlineMs` 0, which a function passes on as the Unix epoch: that is no
/// deadline, not one that cancels every statement.
#[tokio::test]
async fn a_deadline_at_the_epoch_is_no_deadline() {
    let pg = PgServer::start();
    let ext = warmpool_tests::Extension::start(&pg, &[]);
    let db = ext
        .client()
        .await
        .with_deadline(std::time::UNIX_EPOCH + Duration::from_millis(0));
    // Long enough for a cancel sent at a deadline already past to land inside it.
    let n: i32 = db
        .query_one("SELECT 7 FROM pg_sleep(0.5)", &[])
        .await
        .unwrap_or_else(|e| panic!("a deadline of 0 cancelled the statement: {e}"))
        .get(0);
    assert_eq!(n, 7);
}
