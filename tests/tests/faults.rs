//! Database faults, each recovered from without restarting the extension: connections refused
//! for a while (a role's connection limit, as with `too many clients`), a stalled backend, a
//! connection that dies after its statement ran. Connection attempts are retried with backoff,
//! one at a time, within `WARMPOOL_RETRY_BUDGET_MS`; statements never are.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use warmpool_tests::{Extension, PgServer};

/// A guard against a hung test, never a timing assertion.
const GUARD: Duration = Duration::from_secs(30);

fn set_connection_limit(pg: &PgServer, limit: i32) {
    pg.superuser_psql(&format!(
        "ALTER ROLE \"{}\" CONNECTION LIMIT {limit}",
        pg.user()
    ));
}

/// Terminates every connection the extension holds and waits until the server lists none.
/// As the superuser, whom a role's connection limit does not stop.
fn terminate_warmpool_backends(pg: &PgServer) {
    pg.superuser_psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'warmpool'",
    );
    while pg
        .superuser_psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'warmpool'")
        != "0"
    {
        std::thread::yield_now();
    }
}

fn refusals_in_log(pg: &PgServer) -> usize {
    std::fs::read_to_string(pg.log_path())
        .unwrap_or_default()
        .matches("too many connections for role")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_refused_for_a_while_cost_no_error() {
    let pg = PgServer::start();
    let mut ext = Extension::start(&pg, &[("WARMPOOL_RETRY_BUDGET_MS", "20000")]);
    let client = warmpool::Client::connect_to(ext.socket()).await.unwrap();
    client.query("SELECT 1", &[]).await.unwrap();
    set_connection_limit(&pg, 0);
    terminate_warmpool_backends(&pg);
    let query = {
        let client = client.clone();
        tokio::spawn(async move { client.query_one("SELECT 42", &[]).await })
    };
    // The request is now retrying against the refusals; lift the limit once it has been
    // refused at least twice.
    ext.wait_for_log("retrying after a backoff", GUARD);
    ext.wait_for_log("retrying after a backoff", GUARD);
    set_connection_limit(&pg, -1);
    let row = query
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("a brief refusal reached the function: {e}\n{}", ext.logs()));
    assert_eq!(row.get::<_, i32>(0), 42);
    assert!(refusals_in_log(&pg) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_database_gets_one_attempt_per_backoff_step_and_errors_only_while_it_refuses() {
    let pg = PgServer::start();
    let ext = Extension::start(
        &pg,
        &[
            ("WARMPOOL_MAX_SIZE", "4"),
            ("WARMPOOL_RETRY_BASE_MS", "50"),
            ("WARMPOOL_RETRY_MAX_MS", "200"),
            ("WARMPOOL_RETRY_BUDGET_MS", "1000"),
        ],
    );
    let client = warmpool::Client::connect_to(ext.socket()).await.unwrap();
    client.query("SELECT 1", &[]).await.unwrap();
    set_connection_limit(&pg, 0);
    terminate_warmpool_backends(&pg);
    let before = refusals_in_log(&pg);
    let requests = 32;
    let results = futures_util::future::join_all((0..requests).map(|_| {
        let client = client.clone();
        async move { client.query_one("SELECT 1", &[]).await }
    }))
    .await;
    for r in &results {
        let e = r
            .as_ref()
            .expect_err("the database refused every connection");
        let code = e.code().map(|c| c.code().to_owned()).unwrap_or_default();
        assert!(
            code == "53300" || code == "08006",
            "expected the refusal (53300) or 08006, got {e}"
        );
    }
    let attempts = refusals_in_log(&pg) - before;
    // One attempt at a time: every refusal but those of the first concurrent attempts (at
    // most one per pooled connection slot) was its own backoff step, each logged.
    let steps = ext.logs().matches("retrying after a backoff").count();
    assert!(
        attempts >= 2 && attempts <= steps + 4,
        "{attempts} connection attempts in {steps} backoff steps for {requests} requests"
    );
    // The database accepts connections again: so does the extension, without a restart.
    set_connection_limit(&pg, -1);
    let n: i32 = client.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(n, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_with_a_request_waiting_costs_no_error() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_RETRY_BUDGET_MS", "20000")]);
    let client = warmpool::Client::connect_to(ext.socket()).await.unwrap();
    client.query("SELECT 1", &[]).await.unwrap();
    pg.stop();
    let query = {
        let client = client.clone();
        tokio::spawn(async move { client.query_one("SELECT 9", &[]).await })
    };
    let mut ext = ext;
    ext.wait_for_log("retrying after a backoff", GUARD);
    pg.start_again();
    let row = query
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the restart reached the function: {e}\n{}", ext.logs()));
    assert_eq!(row.get::<_, i32>(0), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_backend_is_given_up_at_the_deadline_and_replaced() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_RESET_TIMEOUT_MS", "500")]);
    let client = warmpool::Client::connect_to(ext.socket()).await.unwrap();
    let pid: i32 = backend_pid(&client).await;
    // The backend stops answering, as behind a network stall; its socket stays open.
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let resume = scopeguard(pid);
    let err = client
        .with_deadline(SystemTime::now() + Duration::from_millis(500))
        .query_one("SELECT 1", &[])
        .await
        .expect_err("a stalled backend cannot answer");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    // The stalled connection was closed; the next request gets a new one.
    let other: i32 = backend_pid(&client).await;
    assert_ne!(other, pid);
    drop(resume);
}

/// Resumes a stopped backend when dropped, so a failing test leaves no process stopped.
fn scopeguard(pid: i32) -> impl Drop {
    struct Resume(i32);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
        }
    }
    Resume(pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_connection_dies_after_it_ran_is_not_retried() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let client = warmpool::Client::connect_to(ext.socket()).await.unwrap();
    client
        .batch_execute("CREATE TABLE w (id serial PRIMARY KEY, v text)")
        .await
        .unwrap();
    // The insert commits, then the connection dies before the batch is answered: the outcome
    // is unknown to the extension, so the function gets the error and the write is not repeated.
    let err = client
        .batch_execute(
            "BEGIN; INSERT INTO w (v) VALUES ('once'); COMMIT; \
             SELECT pg_terminate_backend(pg_backend_pid())",
        )
        .await
        .expect_err("the connection died mid-request");
    assert!(
        err.is_closed() || err.code().is_some_and(|c| c.code().starts_with("57P")),
        "{err}"
    );
    let n: i64 = client
        .query_one("SELECT count(*) FROM w WHERE v = 'once'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the write was applied {n} times");
}

/// The backend serving `client`'s next statement (the extension's only connection, where the
/// tests set `WARMPOOL_MAX_SIZE=1`, or the one it reuses).
async fn backend_pid(client: &warmpool::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Waits until `unread` reports bytes waiting in a socket; fails after [`GUARD`] with `what`.
async fn until_unread(unread: impl Fn() -> usize, what: &str) {
    let until = std::time::Instant::now() + GUARD;
    while unread() == 0 {
        assert!(std::time::Instant::now() < until, "{what}");
        tokio::task::yield_now().await;
    }
}

/// The inodes of the sockets process `pid` holds open (from /proc).
fn socket_inodes(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Bytes waiting, unread, in the TCP sockets of process `pid` (from /proc).
fn unread_bytes(pid: i32) -> usize {
    let inodes = socket_inodes(pid);
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let (_, rx) = fields.get(4)?.split_once(':')?;
                    let inode = fields.get(9)?;
                    inodes
                        .iter()
                        .any(|i| i == inode)
                        .then(|| usize::from_str_radix(rx, 16).ok())
                        .flatten()
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_connection_dies_before_its_first_statement_ran_starts_over() {
    let pg = PgServer::start();
    // One connection, so the one the transaction is given is the one killed.
    let mut ext = Extension::start(&pg, &[("WARMPOOL_MAX_SIZE", "1")]);
    let client = warmpool::Client::connect_to(ext.socket()).await.unwrap();
    client
        .batch_execute("CREATE TABLE w (id serial PRIMARY KEY, v text)")
        .await
        .unwrap();
    let pid: i32 = backend_pid(&client).await;
    // The backend is stopped, so the transaction's first statement (with its BEGIN) waits
    // unread in its socket; then the server is told to terminate it, which it does as soon as
    // it runs again, before reading anything: the FATAL answers the statement.
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let resume = scopeguard(pid);
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let tx = client.transaction().await?;
            tx.execute("INSERT INTO w (v) VALUES ('once')", &[]).await?;
            tx.commit().await
        })
    };
    until_unread(
        || unread_bytes(pid),
        "the statement never reached the backend",
    )
    .await;
    pg.superuser_psql(&format!("SELECT pg_terminate_backend({pid})"));
    drop(resume);
    // Nothing of the transaction ran, and the function saw nothing of it: it starts over on
    // a new connection and commits, once.
    tokio::time::timeout(GUARD, writer)
        .await
        .expect("the transaction hung")
        .unwrap()
        .unwrap_or_else(|e| {
            panic!(
                "the transaction must start over on another connection: {e}\n{}",
                ext.logs()
            )
        });
    ext.wait_for_log("running it again on another connection", GUARD);
    let n: i64 = client
        .query_one("SELECT count(*) FROM w WHERE v = 'once'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the write was applied {n} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_while_the_environment_is_frozen_costs_the_next_statement_nothing() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_MAX_SIZE", "1")]);
    let client = warmpool::Client::connect_to(ext.socket()).await.unwrap();
    let before: i32 = backend_pid(&client).await;
    // Frozen, as between invocations; meanwhile the server ends the idle connection, and the
    // function's next statement, outside any transaction, reaches the socket before the thaw.
    let ext_pid = Pid::from_raw(ext.pid() as i32);
    kill(ext_pid, Signal::SIGSTOP).unwrap();
    let resume = scopeguard(ext_pid.as_raw());
    terminate_warmpool_backends(&pg);
    let query = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .map(|r| r.get::<_, i32>(0))
        })
    };
    until_unread(
        || unread_bytes_unix(ext_pid.as_raw()),
        "the statement never reached the extension",
    )
    .await;
    drop(resume);
    let after = tokio::time::timeout(GUARD, query)
        .await
        .expect("the statement hung")
        .unwrap()
        .expect("a connection that died while idle must cost the statement nothing");
    assert_ne!(after, before);
}

/// Bytes waiting, unread, in the Unix sockets of process `pid` (from /proc).
fn unread_bytes_unix(pid: i32) -> usize {
    warmpool_tests::prereq::ss();
    let inodes = socket_inodes(pid);
    let Ok(out) = std::process::Command::new("ss").args(["-xnH"]).output() else {
        panic!("ss (iproute2) is needed: apt-get install iproute2");
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Netid State Recv-Q Send-Q Local Port Peer Port
            let rx: usize = f.get(2)?.parse().ok()?;
            let inode = f.get(5)?;
            inodes.iter().any(|i| i == inode).then_some(rx)
        })
        .sum()
}

/// A database address that accepts TCP connections and never answers, as a host behind a
/// stalled network does: each connection attempt ends at `WARMPOOL_CONNECT_TIMEOUT_MS`.
/// Counts the attempts; the connections are held until the task is dropped.
struct Blackhole {
    port: u16,
    attempts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Blackhole {
    async fn start() -> Blackhole {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let attempts = Arc::new(AtomicUsize::new(0));
        let counted = attempts.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        Blackhole {
            port,
            attempts,
            task,
        }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_to_an_unreachable_database_costs_one_retry_budget() {
    let pg = PgServer::start();
    let blackhole = Blackhole::start().await;
    let port = blackhole.port.to_string();
    // The budget is shorter than one attempt: a request gets exactly one attempt, and a second
    // attempt can only come from the same request being given a second budget.
    let ext = Extension::start(
        &pg,
        &[
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", &port),
            ("WARMPOOL_WARM_SIZE", "0"),
            ("WARMPOOL_CONNECT_TIMEOUT_MS", "500"),
            ("WARMPOOL_RETRY_BUDGET_MS", "200"),
        ],
    );
    let client = warmpool::Client::connect_to(ext.socket()).await.unwrap();
    assert_eq!(blackhole.attempts.load(Ordering::SeqCst), 0);
    // A statement the client has not described yet: Prepare and Execute go out together, and
    // both need a connection.
    let e = tokio::time::timeout(GUARD, client.query_one("SELECT 1", &[]))
        .await
        .expect("the request hung")
        .expect_err("the database cannot be reached");
    // The blackhole accepts and never answers: the connect times out (HYT01).
    assert_eq!(e.code().map(|c| c.code()), Some("HYT01"), "{e}");
    assert_eq!(
        blackhole.attempts.load(Ordering::SeqCst),
        1,
        "one request made more than one connection attempt; log:\n{}",
        ext.logs()
    );
    // A new request gets a budget of its own, and tries again.
    let e = client.query_one("SELECT 2", &[]).await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("HYT01"), "{e}");
    assert_eq!(
        blackhole.attempts.load(Ordering::SeqCst),
        2,
        "{}",
        ext.logs()
    );
}
